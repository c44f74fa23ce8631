#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    http_cache_streaming::fuzzing::record(data);
});
