#!/usr/bin/env bash
# Runs the README's test command on a fresh clone of this repository RUNS times (5 by
# default) with a CPU hog on every core beside it, then once with --test-threads=1 and no
# hog, and says how each ended. A test that fails here on a busy machine is a bug.
#
#   contrib/flakiness.sh [RUNS] [CLONE_DIR]
set -u
runs="${1:-5}"
clone="${2:-${TMPDIR:-/tmp}/http-cache-streaming-flakiness}"
logs="$clone.logs"
repo="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$clone" "$logs" && mkdir -p "$logs"
git clone -q "$repo" "$clone" && cd "$clone" || exit 1

hogs=()
for _ in $(seq "$(nproc)"); do
    yes >/dev/null &
    hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

failed=0
for i in $(seq "$runs"); do
    start=$(date +%s)
    cargo test --all-features --no-fail-fast >"$logs/run$i.log" 2>&1
    status=$?
    note=""
    [ "$i" = 1 ] && note=" (this one builds from scratch)"
    echo "run $i of $runs, every core hogged: exit $status in $(($(date +%s) - start)) s$note"
    [ "$status" = 0 ] || { failed=1; grep -E '^test .+ \.\.\. FAILED$' "$logs/run$i.log"; }
done
kill "${hogs[@]}" 2>/dev/null
start=$(date +%s)
cargo test --all-features --no-fail-fast -- --test-threads=1 >"$logs/single.log" 2>&1
status=$?
echo "one test at a time: exit $status in $(($(date +%s) - start)) s"
[ "$status" = 0 ] || { failed=1; grep -E '^test .+ \.\.\. FAILED$' "$logs/single.log"; }
echo "logs in $logs"
exit "$failed"
