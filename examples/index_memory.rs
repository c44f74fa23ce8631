//! What a store's index costs after a restart: stores `entries` small responses of distinct
//! content (a million by default) and closes the store (writing its index snapshot), then
//! opens it again in a fresh process and reports its resident memory before and after the
//! whole index is in, per entry, and how long that took: once from the snapshot, then once
//! more without one (every record file read in).
//!
//! `cargo run --release --example index_memory -- [entries] [dir]`
//!
//! With `dir`, a store already there of that many entries is reused (the writing takes a
//! while at a million).

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

/// Stores entries `0..entries`, 256 at a time.
async fn fill(manager: &StreamingManager, entries: u64) -> Result<(), Error> {
    let started = Instant::now();
    let mut i = 0;
    while i < entries {
        let batch: Vec<_> = (i..entries.min(i + 256))
            .map(|n| {
                let manager = manager.clone();
                tokio::spawn(async move {
                    let url = format!("https://example.com/item/{n}");
                    let request = Request::get(&url).body(())?;
                    let response = Response::builder()
                        .header("cache-control", "max-age=86400")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(format!("{{\"item\":{n}}}"))))?;
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

/// In a fresh process: opens the store in `dir`, reads every record in, and reports.
async fn reopen(dir: &str) -> Result<(), Error> {
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
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--reopen") {
        let dir = args.next().ok_or("--reopen DIR")?;
        return reopen(&dir).await;
    }
    let mut args = std::env::args().skip(1);
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
        fill(&manager, entries).await?;
    }
    let closing = Instant::now();
    manager.close().await?;
    eprintln!(
        "index snapshot written in {:.2} s",
        closing.elapsed().as_secs_f64()
    );
    drop(manager);
    // The first reopening uses the snapshot (and removes it); the second has none.
    for how in ["from the snapshot", "without a snapshot"] {
        print!("{how}: ");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["--reopen", &dir])
            .status()?;
        if !status.success() {
            return Err(format!("the reopening process failed: {status}").into());
        }
    }
    Ok(())
}
