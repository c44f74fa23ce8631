#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with libFuzzer's memory
# limits, and prints what each did. Needs cargo-fuzz (installed here if missing); the
# machine's stable toolchain builds the sanitizer flags through RUSTC_BOOTSTRAP.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
status=0
for target in record record_edits vary_and_range; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    # -rss_limit_mb / -malloc_limit_mb: any input that makes the parsers allocate past
    # 512 MiB is a failure, as is a panic.
    if ! cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=512 \
        -max_len=65536 -print_final_stats=1 2>"$target.log"; then
        status=1
        echo "!! $target failed; see fuzz/$target.log and fuzz/artifacts/$target/"
    fi
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+ *DONE" "$target.log" || true
done
exit "$status"
