//! What a store's index costs after a restart: stores `entries` small responses of distinct
//! content (a million by default) and closes the store (writing its index snapshot), then
//! opens it again in a fresh process and reports its resident memory before and after the
//! whole index is in, per entry, and how long that took: once from the snapshot, then once
//! more without one (every record file read in).
//!
//! `cargo run --release --example index_memory -- [entries] [dir] [--tags]`
//!
//! With `dir`, a store already there of that many entries is reused (the writing takes a
//! while at a million). With `--tags`, each entry carries three tags in `Surrogate-Key`
//! (`item-<n>`, its own; `group-<n % 10>`, shared by a tenth of the entries; `all`), the
//! tag index's memory is in the figure per entry, and each reopening then purges a group
//! (`group-3`, then `group-4`: a tenth of the entries each; `PURGE_GROUPS="group-5 group-6"` for
//! others on a store reused) while hits of other entries are timed.

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use http_cache_streaming::StreamingManager;
use http_cache_streaming::http_cache_semantics::CachePolicy;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Stores entries `0..entries`, 256 at a time, tagged when `tags`.
async fn fill(manager: &StreamingManager, entries: u64, tags: bool) -> Result<(), Error> {
    let started = Instant::now();
    let mut i = 0;
    while i < entries {
        let batch: Vec<_> = (i..entries.min(i + 256))
            .map(|n| {
                let manager = manager.clone();
                tokio::spawn(async move {
                    let url = format!("https://example.com/item/{n}");
                    let request = Request::get(&url).body(())?;
                    let mut response = Response::builder()
                        .header("cache-control", "max-age=86400")
                        .header("content-type", "application/json");
                    if tags {
                        let tags = format!("item-{n} group-{} all", n % 10);
                        response = response.header("surrogate-key", tags);
                    }
                    let response =
                        response.body(Full::new(Bytes::from(format!("{{\"item\":{n}}}"))))?;
                    let policy = CachePolicy::new(&request, &response);
                    manager
                        .put(format!("GET:{url}"), response, policy, url.parse()?)
                        .await?;
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for task in batch {
            task.await??;
        }
        let before = i;
        i = entries.min(i + 256);
        if i / 100_000 != before / 100_000 {
            eprintln!(
                "  {i} entries stored ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// In a fresh process: opens the store in `dir`, reads every record in, and reports; with
/// tags, purges `group-3` while hits are timed.
async fn reopen(dir: &str, group: &str) -> Result<(), Error> {
    let before = rss_kib();
    let started = Instant::now();
    let manager = StreamingManager::new(dir.into());
    manager.open().await?;
    let opened = started.elapsed();
    let stats = manager.stats().await?;
    let read_in = started.elapsed();
    let after = rss_kib();
    let per_entry = (after.saturating_sub(before) * 1024) / stats.entries.max(1);
    println!(
        "{} entries: resident {} MiB before opening, {} MiB with the whole index: \
         {per_entry} bytes per entry; open {:.2} s, whole index after {:.2} s",
        stats.entries,
        before / 1024,
        after / 1024,
        opened.as_secs_f64(),
        read_in.as_secs_f64()
    );
    if stats.tagged > 0 {
        println!(
            "  {} tags, {} tag-entry pairs: {} bytes per entry, {} per pair beside it",
            stats.tags,
            stats.tagged,
            per_entry,
            per_entry.saturating_sub(UNTAGGED_PER_ENTRY) * stats.entries / stats.tagged.max(1)
        );
        purge_while_hit(&manager, stats.entries, group, dir).await?;
    }
    Ok(())
}

/// Bytes per entry of the same store without tags, as this example measured it (README).
const UNTAGGED_PER_ENTRY: u64 = 115;

/// Times hits of entries outside `group` (of groups 0 to 2, never purged), before, while
/// `group` is purged, and while its files are unlinked after the answer: hot hits (1 000
/// keys asked for again and again, held in memory) and cold ones (each key once, its record
/// read from disk).
async fn purge_while_hit(
    manager: &StreamingManager,
    entries: u64,
    group: &str,
    dir: &str,
) -> Result<(), Error> {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// The `n`th key of groups 0 to 2: hot ones among the first thousand.
    fn key(n: u64, entries: u64, hot: bool) -> String {
        let tens = (entries / 10).max(1);
        let n = if hot {
            n % 1000
        } else {
            1000 + n * 7919 % tens.saturating_sub(1000).max(1)
        };
        format!("GET:https://example.com/item/{}", (n % tens) * 10 + n % 3)
    }
    async fn hit(manager: &StreamingManager, key: &str) -> Option<u64> {
        let started = Instant::now();
        let (response, _) = manager.get(key).await.ok()??;
        drop(response);
        Some(started.elapsed().as_micros() as u64)
    }
    fn summary(took: &mut [u64]) -> String {
        took.sort_unstable();
        let at = |q: f64| took.get(((took.len() as f64 - 1.0) * q) as usize).copied();
        format!(
            "{} hits, median {} µs, p99 {} µs, max {} µs",
            took.len(),
            at(0.5).unwrap_or(0),
            at(0.99).unwrap_or(0),
            at(1.0).unwrap_or(0)
        )
    }
    // Phases: 0 before, 1 while the purge is asked, 2 while its files go, 3 done.
    let phase = std::sync::Arc::new(AtomicU8::new(0));
    let hitting = {
        let (manager, phase) = (manager.clone(), std::sync::Arc::clone(&phase));
        tokio::spawn(async move {
            let mut took: [[Vec<u64>; 2]; 3] = Default::default();
            let mut n = 0;
            loop {
                let now = phase.load(Ordering::Relaxed);
                if now == 3 {
                    return took;
                }
                for (i, hot) in [true, false].into_iter().enumerate() {
                    if let Some(us) = hit(&manager, &key(n, entries, hot)).await {
                        took[now as usize][i].push(us);
                    }
                }
                n += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    phase.store(1, Ordering::Relaxed);
    let started = Instant::now();
    let purged = manager.purge_tags([group]).await?;
    let answered = started.elapsed();
    phase.store(2, Ordering::Relaxed);
    let pending = std::path::Path::new(dir).join("cache-v2/purges-pending");
    while std::fs::read_dir(&pending).is_ok_and(|mut d| d.next().is_some()) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let unlinked = started.elapsed();
    phase.store(3, Ordering::Relaxed);
    let mut took = hitting.await?;
    println!(
        "  purge of {group}: {purged} entries, answered in {:.3} s, files gone after {:.2} s",
        answered.as_secs_f64(),
        unlinked.as_secs_f64()
    );
    for (phase, name) in ["before", "while asked", "while unlinking"]
        .iter()
        .enumerate()
    {
        let [hot, cold] = &mut took[phase];
        println!("    {name}: hot {}; cold {}", summary(hot), summary(cold));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--reopen") {
        let dir = args.next().ok_or("--reopen DIR GROUP")?;
        let group = args.next().ok_or("--reopen DIR GROUP")?;
        return reopen(&dir, &group).await;
    }
    let tags = std::env::args().any(|arg| arg == "--tags");
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--tags");
    let entries: u64 = match args.next() {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("entries is a number, not {arg:?}"))?,
        None => 1_000_000,
    };
    let temp;
    let dir = match args.next() {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().display().to_string()
        }
    };
    let manager = StreamingManager::new(dir.clone().into());
    let stored = manager.stats().await?.entries;
    if stored < entries {
        eprintln!("storing {entries} entries in {dir}");
        fill(&manager, entries, tags).await?;
    }
    let closing = Instant::now();
    manager.close().await?;
    eprintln!(
        "index snapshot written in {:.2} s",
        closing.elapsed().as_secs_f64()
    );
    drop(manager);
    // The first reopening uses the snapshot (and removes it); the second has none.
    let groups = std::env::var("PURGE_GROUPS").unwrap_or_else(|_| "group-3 group-4".into());
    let mut groups = groups.split_whitespace().map(str::to_owned);
    let first = groups.next().unwrap_or_default();
    let second = groups.next().unwrap_or_default();
    for (how, group) in [("from the snapshot", first), ("without a snapshot", second)] {
        print!("{how}: ");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["--reopen", &dir, &group])
            .status()?;
        if !status.success() {
            return Err(format!("the reopening process failed: {status}").into());
        }
    }
    Ok(())
}
