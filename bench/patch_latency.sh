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
LOG_TAG="patch bench"
DIE_STATUS=2
# shellcheck source=bench/lib.sh # die, note, the origin and proxy setup shared by the benches
. "$ROOT/bench/lib.sh"
BIN=${AUTHPROXY_BIN:-$ROOT/build/authproxy}
OUT=$ROOT/build/bench
NAME=origin.test

require_tools "Debian: nginx-light python3 gcc" nginx python3 cc
[ -x "$BIN" ] || die "$BIN not found (run make)"

mkdir -p "$OUT"
LOADGEN=$OUT/patch_load
if needs_build "$LOADGEN" "$ROOT/bench/patch_load.c"; then
    bench_cc "$ROOT/bench/patch_load.c" -o "$LOADGEN" || die "patch_load does not compile"
fi

make_work /tmp/authproxy-patch-bench.XXXXXX nginx/tmp logs state

# shellcheck disable=SC2016 # expanded at exit
trap_exit 'cleanup "${BENCH_KEEP:-0}"' # BENCH_KEEP=1 keeps the work dir

read -r NG_HTTP AP_PORT AP_CTL <<<"$(free_ports 3)"

# 4096 connections per worker and the default open-file limit are enough here.
write_nginx_conf 4096 "" <<EOF
    server {
        listen 127.0.0.1:$NG_HTTP;
        server_name $NAME;
        location = / { return 200 "ok\n"; }
        location = /check { return 200 "policy=\$http_x_policy auth=\$http_authorization\n"; }
    }
EOF
start_nginx "$NG_HTTP" || die "nginx did not start: $(cat "$WORK/logs/nginx-error.log")"

# No proxy_config: only box credentials are served (anything else 407).
printf '{"dns_remap": {"%s": "127.0.0.1"}}\n' "$NAME" > "$WORK/authproxy.json"
start_serve "$AP_CTL" --no-sandboxes || die "authproxy did not start: $(tail -5 "$WORK/logs/authproxy.out")"

# The machine may be shared: wait (up to BENCH_QUIET_WAIT s, default 60) for other processes to
# use less than 0.25 cores, as bench/run.sh does; the driver reports the other load per phase.
waited=0
while :; do
    load=$(machine_load 2)
    is_quiet "$load" && break
    if [ "$waited" -ge "${BENCH_QUIET_WAIT:-60}" ]; then
        note "WARNING: the machine is busy ($load cores used by other processes); tails will be noisy"
        break
    fi
    waited=$((waited + 2))
done

note "$("$BIN" version 2>/dev/null | head -1), tree $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+changes'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$ROOT/bench/patch_latency.py" --control-port "$AP_CTL" --proxy-port "$AP_PORT" \
    --origin-host "$NAME:$NG_HTTP" --key-file "$WORK/state/bootstrap.key" --daemon-pid "$AP_PID" \
    --nginx-pid "$NGINX_PID" \
    --loadgen "$LOADGEN" --work "$WORK" --boxes "${BENCH_BOXES:-50}" \
    --patches "${BENCH_PATCHES:-200}" --conns "${BENCH_CONNS:-32}" --gap-ms "${BENCH_GAP_MS:-20}"
rc=$?
if grep -qi 'error' "$WORK/logs/authproxy.out"; then
    note "the daemon logged errors:"
    grep -i 'error' "$WORK/logs/authproxy.out" | head -5 >&2
fi
exit $rc
