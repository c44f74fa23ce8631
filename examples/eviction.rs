//! The eviction benchmark: synthetic request traces replayed through the store's eviction
//! policy and admission (the ones its index runs, over sizes instead of files), for LRU and S3-FIFO, each
//! with and without `min_uses(2)`, at several store sizes. Prints object and byte miss
//! ratios and the bytes written to disk, and with a path, draws the byte miss-ratio curves
//! as an SVG.
//!
//! `cargo run --release --features replay --example eviction -- [objects] [requests] [svg]`
//!
//! Traces, over `objects` objects (a million by default) of heavy-tailed sizes (log-normal,
//! median 8 KiB, mean ≈ 40 KiB, 64 B to 256 MiB), `requests` requests each (four per object
//! by default):
//! - `zipf-0.8+scans`, `zipf-1.0+scans`: Zipf popularity with α 0.8 or 1.0, one request in
//!   five going to a scan of objects requested once (a crawler, a backup);
//! - `recency`: each request asks again for one of the last 100 000 objects asked for,
//!   the more recent the likelier, or (one in four) for a new object: LRU's best case.
//!
//! Store sizes are shares of the bytes of all distinct objects a trace asks for. The first
//! fifth of each trace warms the store up and is not counted. For the Zipf traces the table
//! and the curves also show the best fixed set of objects (the most requested ones of the
//! counted part, as many as fit): on independent requests no policy that does not see the
//! future does better on average, and this one is told the counts. Beside it, an LFU that
//! remembers how often every object was asked for (memory no store spends): what learning
//! the popularity from the requests seen so far reaches on these traces.

use std::time::Instant;

use http_cache_streaming::Eviction;
use http_cache_streaming::replay::Replay;

/// splitmix64: a small, good, deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An object's size: log-normal (median 8 KiB, σ 1.8), fixed by its id.
fn size_of(id: u64) -> u64 {
    let mut rng = Rng(id ^ 0x5eed);
    let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let size = (8192f64.ln() + 1.8 * normal).exp();
    (size as u64).clamp(64, 256 << 20)
}

struct Trace {
    name: &'static str,
    ids: Vec<u64>,
    unique_bytes: u64,
    /// Whether requests are drawn independently (Zipf), so that a fixed set of objects is
    /// the best a store can hold.
    independent: bool,
}

impl Trace {
    fn new(name: &'static str, ids: Vec<u64>, independent: bool) -> Self {
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let unique_bytes = distinct.iter().map(|&id| size_of(id)).sum();
        Trace {
            name,
            ids,
            unique_bytes,
            independent,
        }
    }

    /// The requests counted (after the warm-up).
    fn counted(&self) -> &[u64] {
        &self.ids[self.ids.len() / 5..]
    }
}

/// The best fixed set of objects for a trace of independent requests: knowing how often
/// each object is asked for in the counted part, the store holds the most requested ones
/// that fit from its start. For the byte miss ratio (every byte of an object is asked for
/// as often as the object) no policy that does not see the future does better on average,
/// up to the last object that does not fit; a policy has to learn online what this one is
/// told.
fn best_fixed_set(trace: &Trace, percent: f64) -> Outcome {
    let max_bytes = (trace.unique_bytes as f64 * percent / 100.0) as u64;
    let counted = trace.counted();
    let mut counts = std::collections::HashMap::<u64, u64>::new();
    for &id in counted {
        *counts.entry(id).or_default() += 1;
    }
    let mut by_count: Vec<(u64, u64)> = counts.into_iter().collect();
    by_count.sort_unstable_by_key(|&(id, count)| (std::cmp::Reverse(count), id));
    let (mut stored, mut hits, mut hit_bytes) = (0u64, 0u64, 0u64);
    for (id, count) in by_count {
        let size = size_of(id);
        if stored + size <= max_bytes {
            stored += size;
            hits += count;
            hit_bytes += count * size;
        }
    }
    let bytes: u64 = counted.iter().map(|&id| size_of(id)).sum();
    Outcome {
        object_miss: 1.0 - hits as f64 / counted.len() as f64,
        byte_miss: 1.0 - hit_bytes as f64 / bytes as f64,
        written: 0,
    }
}

/// A reference for learning popularity online: LFU that remembers how often every object
/// was asked for since the trace began, holds the most asked-for ones, and stores an object
/// it misses only when each entry that would make room for it was asked for less often
/// (ties stay). Not in the store: it evicts exactly, not in batches, and its counts take
/// memory for every object ever seen.
fn lfu_every_count(trace: &Trace, percent: f64) -> Outcome {
    let max_bytes = (trace.unique_bytes as f64 * percent / 100.0) as u64;
    let mut counts = std::collections::HashMap::<u64, u64>::new();
    // (count, id) of each stored object, the least asked-for first.
    let mut stored = std::collections::BTreeSet::<(u64, u64)>::new();
    let mut count_of_stored = std::collections::HashMap::<u64, u64>::new();
    let mut stored_bytes = 0u64;
    let warm = trace.ids.len() / 5;
    let mut tally = Tally::default();
    for (n, &id) in trace.ids.iter().enumerate() {
        let count = counts.entry(id).or_default();
        *count += 1;
        let count = *count;
        let size = size_of(id);
        let hit = if let Some(was) = count_of_stored.get_mut(&id) {
            stored.remove(&(*was, id));
            stored.insert((count, id));
            *was = count;
            true
        } else {
            let mut free = max_bytes - stored_bytes;
            let mut victims = Vec::new();
            for &(victim_count, victim) in &stored {
                if free >= size || victim_count >= count {
                    break;
                }
                free += size_of(victim);
                victims.push((victim_count, victim));
            }
            if free >= size {
                for victim in victims {
                    stored.remove(&victim);
                    count_of_stored.remove(&victim.1);
                    stored_bytes -= size_of(victim.1);
                }
                stored.insert((count, id));
                count_of_stored.insert(id, count);
                stored_bytes += size;
                if n >= warm {
                    tally.written += size;
                }
            }
            false
        };
        if n >= warm {
            tally.count(size, hit);
        }
    }
    tally.outcome()
}

/// Misses and bytes of the counted requests.
#[derive(Default)]
struct Tally {
    requests: u64,
    misses: u64,
    bytes: u64,
    missed_bytes: u64,
    written: u64,
}

impl Tally {
    fn count(&mut self, size: u64, hit: bool) {
        self.requests += 1;
        self.bytes += size;
        if !hit {
            self.misses += 1;
            self.missed_bytes += size;
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            object_miss: self.misses as f64 / self.requests as f64,
            byte_miss: self.missed_bytes as f64 / self.bytes as f64,
            written: self.written,
        }
    }
}

/// Zipf(α) over `objects`, one request in five to a scan of new objects.
fn zipf_with_scans(name: &'static str, alpha: f64, objects: u64, requests: usize) -> Trace {
    let mut cumulative = Vec::with_capacity(objects as usize);
    let mut total = 0.0;
    for rank in 1..=objects {
        total += 1.0 / (rank as f64).powf(alpha);
        cumulative.push(total);
    }
    let mut rng = Rng(alpha.to_bits());
    let mut scanned = 1u64 << 40;
    let ids = (0..requests)
        .map(|_| {
            if rng.next().is_multiple_of(5) {
                scanned += 1;
                scanned
            } else {
                let u = rng.unit() * total;
                cumulative.partition_point(|&c| c < u) as u64
            }
        })
        .collect();
    Trace::new(name, ids, true)
}

/// Requests again for recent objects (stack depth ~ 100 000 · u³), or a new object.
fn recency(objects: u64, requests: usize) -> Trace {
    const HISTORY: usize = 100_000;
    let mut rng = Rng(7);
    let mut recent = std::collections::VecDeque::with_capacity(HISTORY);
    let mut next = 0u64;
    let mut ids = Vec::with_capacity(requests);
    for _ in 0..requests {
        let id = if recent.is_empty() || rng.next().is_multiple_of(4) || next < objects / 100 {
            next += 1;
            next
        } else {
            let depth = ((rng.unit().powi(3)) * recent.len() as f64) as usize;
            recent[recent.len() - 1 - depth]
        };
        if recent.len() == HISTORY {
            recent.pop_front();
        }
        recent.push_back(id);
        ids.push(id);
    }
    Trace::new("recency", ids, false)
}

#[derive(Clone, Copy)]
struct Policy {
    name: &'static str,
    eviction: Eviction,
    min_uses: u8,
}

const POLICIES: [Policy; 4] = [
    Policy {
        name: "LRU",
        eviction: Eviction::Lru,
        min_uses: 1,
    },
    Policy {
        name: "S3-FIFO",
        eviction: Eviction::S3Fifo,
        min_uses: 1,
    },
    Policy {
        name: "LRU, min_uses 2",
        eviction: Eviction::Lru,
        min_uses: 2,
    },
    Policy {
        name: "S3-FIFO, min_uses 2",
        eviction: Eviction::S3Fifo,
        min_uses: 2,
    },
];

/// Store sizes, in percent of a trace's distinct bytes: the curves', and the table's.
const SIZES: [f64; 6] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0];
const TABLE_SIZES: [f64; 3] = [1.0, 5.0, 10.0];

struct Outcome {
    object_miss: f64,
    byte_miss: f64,
    written: u64,
}

fn replay(trace: &Trace, policy: Policy, percent: f64) -> Outcome {
    let max_bytes = (trace.unique_bytes as f64 * percent / 100.0) as u64;
    let mut store = Replay::new(policy.eviction, policy.min_uses, max_bytes);
    let warm = trace.ids.len() / 5;
    let mut tally = Tally::default();
    let mut written_before = 0;
    for (n, &id) in trace.ids.iter().enumerate() {
        if n == warm {
            written_before = store.bytes_written();
        }
        let size = size_of(id);
        let hit = store.request(id, size);
        if n >= warm {
            tally.count(size, hit);
        }
    }
    assert!(store.stored_bytes() <= max_bytes, "the bound holds");
    tally.written = store.bytes_written() - written_before;
    tally.outcome()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let objects: u64 = args.first().map_or(Ok(1_000_000), |a| a.parse())?;
    let requests: usize = args
        .get(1)
        .map_or(Ok(4 * objects as usize), |a| a.parse())?;
    let svg = args.get(2);
    let started = Instant::now();
    let traces = [
        zipf_with_scans("zipf-0.8+scans", 0.8, objects, requests),
        zipf_with_scans("zipf-1.0+scans", 1.0, objects, requests),
        recency(objects, requests),
    ];
    eprintln!(
        "{} traces of {requests} requests over {objects} objects made in {:.1?}",
        traces.len(),
        started.elapsed()
    );
    // Every (trace, policy, size) replay, and the LFU reference (policy number
    // `POLICIES.len()`) for the traces of independent requests, spread over the cores.
    let jobs: Vec<(usize, usize, f64)> = (0..traces.len())
        .flat_map(|t| {
            let policies = POLICIES.len() + usize::from(traces[t].independent);
            (0..policies).flat_map(move |p| SIZES.map(|s| (t, p, s)))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(t, p, s)) = jobs.get(n) else { break };
                    let outcome = match POLICIES.get(p) {
                        Some(&policy) => replay(&traces[t], policy, s),
                        None => lfu_every_count(&traces[t], s),
                    };
                    results.lock().unwrap().push(((t, p, s.to_bits()), outcome));
                    eprintln!("  {}/{} replays done", n + 1, jobs.len());
                }
            });
        }
    });
    let results: std::collections::HashMap<_, _> =
        results.into_inner().unwrap().into_iter().collect();
    // The bound, for the traces that have one: trace, size → outcome.
    let best: std::collections::HashMap<(usize, u64), Outcome> = traces
        .iter()
        .enumerate()
        .filter(|(_, trace)| trace.independent)
        .flat_map(|(t, trace)| SIZES.map(|s| ((t, s.to_bits()), best_fixed_set(trace, s))))
        .collect();
    let get = |t: usize, p: usize, s: f64| &results[&(t, p, s.to_bits())];
    println!(
        "| trace | store size | policy | object miss ratio | byte miss ratio | byte miss vs LRU | GiB written | written vs LRU |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (t, trace) in traces.iter().enumerate() {
        for s in TABLE_SIZES {
            let lru = get(t, 0, s);
            // The policies, then the LFU reference where there is one.
            let names = POLICIES.iter().map(|policy| policy.name).chain(
                trace
                    .independent
                    .then_some("LFU remembering every count (reference)"),
            );
            for (p, name) in names.enumerate() {
                let o = get(t, p, s);
                println!(
                    "| {} | {s} % | {name} | {:.3} | {:.3} | {:.2}× | {:.1} | {:.2}× |",
                    trace.name,
                    o.object_miss,
                    o.byte_miss,
                    o.byte_miss / lru.byte_miss,
                    o.written as f64 / (1u64 << 30) as f64,
                    o.written as f64 / lru.written.max(1) as f64,
                );
            }
            if let Some(o) = best.get(&(t, s.to_bits())) {
                println!(
                    "| {} | {s} % | best fixed set (told the counts) | {:.3} | {:.3} | {:.2}× | – | – |",
                    trace.name,
                    o.object_miss,
                    o.byte_miss,
                    o.byte_miss / lru.byte_miss,
                );
            }
        }
    }
    eprintln!("done in {:.1?}", started.elapsed());
    if let Some(path) = svg {
        let bound = |t: usize, s: f64| best.get(&(t, s.to_bits()));
        draw(path, &traces, &get, &bound)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// One panel per trace: byte miss ratio against store size, a line per policy.
fn draw<'a>(
    path: &str,
    traces: &[Trace],
    get: &dyn Fn(usize, usize, f64) -> &'a Outcome,
    bound: &dyn Fn(usize, f64) -> Option<&'a Outcome>,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, traces.len()));
    let colors = [RED, BLUE, MAGENTA, GREEN];
    for (t, (trace, panel)) in traces.iter().zip(&panels).enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(trace.name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0.4f64..25.0).log_scale(), 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("store size, % of distinct bytes")
            .y_desc("byte miss ratio")
            .x_label_formatter(&|x| format!("{x}"))
            .draw()?;
        for (p, policy) in POLICIES.iter().enumerate() {
            let color = colors[p % colors.len()];
            let points: Vec<(f64, f64)> =
                SIZES.iter().map(|&s| (s, get(t, p, s).byte_miss)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(policy.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        if trace.independent {
            let grey = RGBColor(128, 128, 128);
            let points: Vec<(f64, f64)> = SIZES
                .iter()
                .map(|&s| (s, get(t, POLICIES.len(), s).byte_miss))
                .collect();
            chart
                .draw_series(LineSeries::new(points, grey.stroke_width(1)))?
                .label("LFU, every count")
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], grey.stroke_width(1))
                });
        }
        let points: Vec<(f64, f64)> = SIZES
            .iter()
            .filter_map(|&s| bound(t, s).map(|o| (s, o.byte_miss)))
            .collect();
        if !points.is_empty() {
            chart
                .draw_series(LineSeries::new(points, BLACK.stroke_width(1)))?
                .label("best fixed set")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
