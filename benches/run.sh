#!/usr/bin/env bash
# Every benchmark, one after the other: the criterion benches of the store and the layer,
# the side-by-side comparison with http-cache-tower and a plain file read, and the loopback
# comparison with nginx proxy_cache (which installs nginx and wrk when they are missing).
#   benches/run.sh [--mib 1024] [--small 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p http-cache-streaming-benches --bench store --bench layer -- --warm-up-time 1 --measurement-time 3
(cd benches/compare && cargo run --release -- "$@")
benches/loopback.sh
