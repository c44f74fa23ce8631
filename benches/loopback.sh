#!/usr/bin/env bash
# Over loopback, http-cache-proxy (this crate's layer in a hyper server) against
# nginx proxy_cache, both in front of the same nginx origin and both serving a cached 4 KiB
# and a cached 1 MiB object to wrk. Each server gets one core's worth of threads: nginx one
# worker process, the proxy one Tokio worker thread. Needs nginx and wrk (Debian packages);
# installs them with apt-get when missing.
#   benches/loopback.sh [seconds per run, default 4] [rounds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-4}"
rounds="${2:-5}"
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || apt-get install -y nginx-light wrk >/dev/null
done
cargo build --release --features proxy --bin http-cache-proxy

work="$(mktemp -d)"
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    [ -n "${proxy:-}" ] && kill "$proxy" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www"
head -c 4096 /dev/urandom > "$work/www/4k"
head -c 1048576 /dev/urandom > "$work/www/1m"
sed "s|WORK|$work|g" benches/nginx/nginx.conf > "$work/nginx.conf"
nginx -c "$work/nginx.conf" &
TOKIO_WORKER_THREADS=1 target/release/http-cache-proxy --upstream http://127.0.0.1:18080 \
    --listen 127.0.0.1:18082 --cache-dir "$work/ours" --quiet > /dev/null &
proxy=$!
sleep 1

# Warm both caches, and check that they serve hits.
for port in 18081 18082; do
    for object in 4k 1m; do
        curl -s -o /dev/null "http://127.0.0.1:$port/$object"
        curl -s -o /dev/null "http://127.0.0.1:$port/$object"
    done
done
curl -s -D - -o /dev/null http://127.0.0.1:18081/4k | grep -i "^x-cache-status" || { echo "nginx serves no hits"; cat "$work/error.log"; exit 1; }
curl -s -D - -o /dev/null http://127.0.0.1:18082/4k | grep -i "^cache-status" || { echo "the proxy serves no hits"; exit 1; }

run() { # port object -> "requests/s bytes/s"
    wrk -t1 -c32 -d"${secs}s" "http://127.0.0.1:$1/$2" |
        awk '/^Requests\/sec/ {r=$2}
             /^Transfer\/sec/ {t=$2; u=substr(t, length(t)-1); t=substr(t, 1, length(t)-2)
                              t*=(u=="GB" ? 2^30 : u=="MB" ? 2^20 : u=="KB" ? 2^10 : 1)}
             END {printf "%.0f %.0f\n", r, t}'
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo
echo "Alternating runs of ${secs} s, ${rounds} rounds per server and object:"
echo "| object | server | requests/s (each round) | median requests/s | median GB/s |"
echo "|---|---|---|---|---|"
for object in 4k 1m; do
    declare -A reqs=() bytes=()
    for round in $(seq "$rounds"); do
        for port in 18081 18082; do
            read -r r t < <(run "$port" "$object")
            reqs[$port]+="$r "; bytes[$port]+="$t "
        done
    done
    for port in 18081 18082; do
        name="nginx proxy_cache"; [ "$port" = 18082 ] && name="http-cache-streaming"
        r=$(tr ' ' '\n' <<<"${reqs[$port]}" | grep . | median)
        t=$(tr ' ' '\n' <<<"${bytes[$port]}" | grep . | median)
        echo "| $object | $name | ${reqs[$port]% } | $r | $(awk -v t="$t" 'BEGIN {printf "%.2f", t / 1e9}') |"
    done
    unset reqs bytes
done
