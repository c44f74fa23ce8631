#!/usr/bin/env bash
# Over loopback, http-cache-proxy (this crate's layer in a hyper server) against nginx
# proxy_cache and Varnish (malloc storage), all three in front of the same nginx origin and
# serving a cached 4 KiB and a cached 1 MiB object to wrk. Each server runs pinned to core 0
# with taskset (nginx one worker process, the proxy one Tokio worker thread, Varnish one
# thread pool), wrk pinned to core 1; runs alternate between the servers, round after
# round, and medians are shown. Needs nginx, wrk and varnish (Debian packages); installs
# them with apt-get when missing.
#   benches/loopback.sh [seconds per run, default 4] [rounds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-4}"
rounds="${2:-5}"
for tool in nginx wrk varnishd; do
    command -v "$tool" >/dev/null || apt-get install -y nginx-light wrk varnish >/dev/null
done
cargo build --release --features proxy --bin http-cache-proxy

work="$(mktemp -d)"
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    [ -n "${proxy:-}" ] && kill "$proxy" 2>/dev/null || true
    [ -n "${varnish:-}" ] && kill "$varnish" 2>/dev/null || true
    # The proxy writes its index snapshot as it shuts down: let it finish before its
    # directory goes.
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www"
head -c 4096 /dev/urandom > "$work/www/4k"
head -c 1048576 /dev/urandom > "$work/www/1m"
sed "s|WORK|$work|g" benches/nginx/nginx.conf > "$work/nginx.conf"
taskset -c 0 nginx -c "$work/nginx.conf" &
# Hot bodies in memory as Varnish's are (--memory-size 256M as its -s malloc,256m), up to
# 2 MiB each, beside the disk.
TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/http-cache-proxy \
    --upstream http://127.0.0.1:18080 --listen 127.0.0.1:18082 --cache-dir "$work/ours" \
    --memory-size 256M --memory-max-body 2M --quiet > /dev/null &
proxy=$!
# Varnish with its default VCL (it caches what max-age allows), in memory.
taskset -c 0 varnishd -F -j none -n "$work/varnish" -a 127.0.0.1:18083 -b 127.0.0.1:18080 \
    -s malloc,256m -p thread_pools=1 > "$work/varnish.log" 2>&1 &
varnish=$!
sleep 2

# Warm both caches, and check that they serve hits.
for port in 18081 18082 18083; do
    for object in 4k 1m; do
        curl -s -o /dev/null "http://127.0.0.1:$port/$object"
        curl -s -o /dev/null "http://127.0.0.1:$port/$object"
    done
done
curl -s -D - -o /dev/null http://127.0.0.1:18081/4k | grep -i "^x-cache-status" || { echo "nginx serves no hits"; cat "$work/error.log"; exit 1; }
curl -s -D - -o /dev/null http://127.0.0.1:18082/4k | grep -i "^cache-status" || { echo "the proxy serves no hits"; exit 1; }
curl -s -D - -o /dev/null http://127.0.0.1:18083/4k | grep -i "^age: [1-9]\|^x-varnish: [0-9]* [0-9]" || { echo "varnish serves no hits"; cat "$work/varnish.log"; exit 1; }

run() { # port object -> "requests/s bytes/s"
    taskset -c 1 wrk -t1 -c32 -d"${secs}s" "http://127.0.0.1:$1/$2" |
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
        for port in 18081 18082 18083; do
            read -r r t < <(run "$port" "$object")
            reqs[$port]+="$r "; bytes[$port]+="$t "
        done
    done
    for port in 18081 18082 18083; do
        case "$port" in
            18081) name="nginx proxy_cache" ;;
            18082) name="http-cache-streaming" ;;
            *) name="Varnish (malloc)" ;;
        esac
        r=$(tr ' ' '\n' <<<"${reqs[$port]}" | grep . | median)
        t=$(tr ' ' '\n' <<<"${bytes[$port]}" | grep . | median)
        echo "| $object | $name | ${reqs[$port]% } | $r | $(awk -v t="$t" 'BEGIN {printf "%.2f", t / 1e9}') |"
    done
    unset reqs bytes
done
