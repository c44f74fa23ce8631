#!/usr/bin/env bash
# Runs the HTTP working group's cache test suite (github.com/http-tests/cache-tests, a
# checkout of it with `npm install` done) through `http-cache-proxy` with its defaults, and
# judges the results with summary.mjs: exit status 1 when a required test fails that the
# HTTP stack could pass.
#
#   tests/cache-tests/run.sh SUITE_DIR [PROXY_BINARY] [PROXY_FLAGS...]
#
# The package on npm (0.4.5) is an older suite whose Age tests contradict RFC 9111 §5.1:
# use a checkout of the repository, whose runner is test-engine/cli.mjs.
set -euo pipefail
suite="$(cd "$1" && pwd)"
proxy="${2:-target/release/http-cache-proxy}"
shift $(($# < 2 ? $# : 2))
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
origin_port="$(free_port)"
proxy_port="$(free_port)"

(cd "$suite" && npm_config_port="$origin_port" npm_config_protocol=http \
    npm_config_pidfile="$work/server.pid" node test-engine/server/server.mjs >"$work/server.log" 2>&1) &
server=$!
"$proxy" --upstream "http://127.0.0.1:$origin_port" --listen "127.0.0.1:$proxy_port" \
    --cache-dir "$work/cache" "$@" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
trap 'kill "$server" "$proxy_pid" 2>/dev/null || true; pkill -F "$work/server.pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$proxy_port/" && curl -s -o /dev/null "http://127.0.0.1:$origin_port/"; then
        break
    fi
    sleep 0.1
done

(cd "$suite" && npm_config_base="http://127.0.0.1:$proxy_port" npm_config_id= npm_package_config_id= \
    node --no-warnings test-engine/cli.mjs >"$work/results.json")
echo "results: $work/results.json (proxy log: $work/proxy.log)"
node "$here/summary.mjs" "$suite" "$work/results.json"
