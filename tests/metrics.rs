//! The cache's counters as `metrics` counters (the `metrics` feature).
#![cfg(feature = "metrics")]

mod common;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn hits_and_misses_are_metrics_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let stats = common::requests_on_this_thread(dir.path(), 3);
        assert_eq!((stats.hits, stats.misses), (2, 1));
    });
    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().name().to_owned(), n)),
            _ => None,
        })
        .collect();
    let value = |name: &str| counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(
        value("http_cache_streaming_hits_total"),
        Some(2),
        "{counters:?}"
    );
    assert_eq!(
        value("http_cache_streaming_misses_total"),
        Some(1),
        "{counters:?}"
    );
}
