#!/usr/bin/env bash
# bench/patch_latency.sh — PATCH-to-effect latency of the control API (issue 3 "Live apply":
# a PATCH returns only once the data plane uses the new policy; target p99 < 50 ms).
#
# Starts an nginx origin (plain HTTP on loopback; /check echoes the X-Policy and Authorization
# headers it received) and `authproxy serve` with the control API (--workers 2, a config file
# with dns_remap only, so a client without a box credential gets 407), then runs
# bench/patch_latency.py: BENCH_BOXES boxes (50) with realistic proxy_configs, BENCH_PATCHES
# PATCHes (200) of one box without load, and the same while bench/patch_load keeps BENCH_CONNS
# (32) keep-alive connections busy with that box's credential. After every PATCH's 200 a request
# through the proxy must show the new policy at the origin. Prints p50/p95/p99/max per phase,
# the daemon's CPU per PATCH, and the load's throughput inside PATCH windows against before and
# after. Exit status: 0 when every check passed, 1 otherwise, 2 when the harness cannot run.
#
# Knobs (environment): BENCH_BOXES, BENCH_PATCHES, BENCH_CONNS, BENCH_GAP_MS (mean pause between
# PATCHes, 20), BENCH_QUIET_WAIT (s to wait for a quiet machine, 60), BENCH_KEEP=1 (keep the work
# dir), AUTHPROXY_BIN (default build/authproxy).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${AUTHPROXY_BIN:-$ROOT/build/authproxy}
OUT=$ROOT/build/bench
NAME=origin.test

die() { echo "patch bench: $*" >&2; exit 2; }

for tool in nginx python3 cc; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (Debian: nginx-light python3 gcc)"
done
[ -x "$BIN" ] || die "$BIN not found (run make)"

mkdir -p "$OUT"
LOADGEN=$OUT/patch_load
if [ ! -x "$LOADGEN" ] || [ "$ROOT/bench/patch_load.c" -nt "$LOADGEN" ]; then
    cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes "$ROOT/bench/patch_load.c" -o "$LOADGEN" || die "patch_load does not compile"
fi

WORK=$(mktemp -d /tmp/authproxy-patch-bench.XXXXXX)
chmod 755 "$WORK" # nginx workers drop to nobody when started as root
mkdir -p "$WORK/nginx/tmp" "$WORK/logs" "$WORK/state"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "patch bench: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT PID
    local i
    for i in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

read -r NG_HTTP AP_PORT AP_CTL <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"

cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {
        listen 127.0.0.1:$NG_HTTP;
        server_name $NAME;
        location = / { return 200 "ok\n"; }
        location = /check { return 200 "policy=\$http_x_policy auth=\$http_authorization\n"; }
    }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/logs/nginx-error.log" -g 'daemon off;' \
    > "$WORK/logs/nginx.out" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NG_HTTP" "$NGINX_PID" || die "nginx did not start: $(cat "$WORK/logs/nginx-error.log")"

# No proxy_config: only box credentials are served (anything else 407).
printf '{"dns_remap": {"%s": "127.0.0.1"}}\n' "$NAME" > "$WORK/authproxy.json"
"$BIN" serve --config "$WORK/authproxy.json" --state-dir "$WORK/state" \
    --listen-proxy "127.0.0.1:$AP_PORT" --listen-control "127.0.0.1:$AP_CTL" --workers 2 \
    --no-sandboxes --audit-log "$WORK/logs/audit.log" --upstream-dns 127.0.0.1:1 \
    >> "$WORK/logs/authproxy.out" 2>&1 &
AP_PID=$!
PIDS+=("$AP_PID")
wait_port "$AP_CTL" "$AP_PID" || die "authproxy did not start: $(tail -5 "$WORK/logs/authproxy.out")"

# The machine may be shared: wait (up to BENCH_QUIET_WAIT s, default 60) for other processes to
# use less than 0.25 cores, as bench/run.sh does; the driver reports the other load per phase.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $9; exit}' /proc/stat; }
waited=0
while :; do
    t0=$(machine_ticks); sleep 2; t1=$(machine_ticks)
    load=$(awk -v d=$((t1 - t0)) -v h="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", d / h / 2}')
    awk -v l="$load" 'BEGIN {exit !(l < 0.25)}' && break
    if [ "$waited" -ge "${BENCH_QUIET_WAIT:-60}" ]; then
        echo "patch bench: WARNING: the machine is busy ($load cores used by other processes); tails will be noisy" >&2
        break
    fi
    waited=$((waited + 2))
done

echo "patch bench: $("$BIN" version 2>/dev/null | head -1), tree $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+changes'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 "$ROOT/bench/patch_latency.py" --control-port "$AP_CTL" --proxy-port "$AP_PORT" \
    --origin-host "$NAME:$NG_HTTP" --key-file "$WORK/state/bootstrap.key" --daemon-pid "$AP_PID" \
    --nginx-pid "$NGINX_PID" \
    --loadgen "$LOADGEN" --work "$WORK" --boxes "${BENCH_BOXES:-50}" \
    --patches "${BENCH_PATCHES:-200}" --conns "${BENCH_CONNS:-32}" --gap-ms "${BENCH_GAP_MS:-20}"
rc=$?
if grep -qi 'error' "$WORK/logs/authproxy.out"; then
    echo "patch bench: the daemon logged errors:" >&2
    grep -i 'error' "$WORK/logs/authproxy.out" | head -5 >&2
fi
exit $rc
