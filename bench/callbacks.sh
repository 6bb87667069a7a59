#!/usr/bin/env bash
# bench/callbacks.sh — dynamic credentials (issue 5 "Performance (benchmark)"):
#
#   1. Requests served from the callback cache cost no more than 5 % throughput over a static
#      header rule in the same run (target: callback/static req/s >= 0.95).
#   2. A cold-cache storm of 1000 concurrent requests produces one callback.
#
# One authproxy (--workers 2, as in run.sh) with two hosts to the same nginx origin: static.test
# served by a header rule (Authorization from a workspace_secret), cb.test by a callback
# (ttl 3600) whose endpoint answers an Authorization header of the same length, so both sides
# send nginx the same bytes. The callback cache is warmed with one request; then the two hosts
# are measured in alternating slices — pairs (static, callback), (callback, static), ... — so
# drift on the shared 2-core machine hits both sides alike: plain HTTP keep-alive with wrk, and
# intercepted HTTPS keep-alive (CONNECT, TLS to the minted certificate) with bench/loadgen (wrk
# cannot tunnel). Each pair gives one ratio; the report gives the ratio over all slices and the
# spread over pairs, with the proxy's CPU per request on each side. The same pairs are then run
# paced at a fixed BENCH_CB_RATE req/s (bench/loadgen --rate): at an equal request rate both
# sides batch alike, so the difference in the proxy's CPU time per request (schedstat, ns) is
# the cost of the callback path itself, the number least moved by other load on the machine.
#
# The storm: a fresh host under *.storm.test (a callback whose endpoint answers after
# BENCH_STORM_DELAY s), N connections opened first (for HTTPS: CONNECT and TLS too), then one
# request on each, all at once; the endpoint counts its calls per host.
#
# It reports (table on stdout, also build/bench/callbacks.md, raw lines build/bench/callbacks.txt)
# and exits 0; non-zero only when the harness cannot run. Targets are judged by reading.
#
# Knobs (environment): BENCH_CONNS (32), BENCH_CB_SLICE (s per slice, 3), BENCH_CB_PAIRS (10),
# BENCH_CB_WARMUP (loadgen warm-up per slice, s, 1), BENCH_CB_RATE (req/s of the paced runs,
# 4000), BENCH_CB_PACED_PAIRS (6), BENCH_STORM_N (1000), BENCH_STORM_DELAY
# (s, 1), BENCH_STORM_TLS (1: also an intercepted HTTPS storm), BENCH_QUIET_WAIT (s, 60),
# BENCH_KEEP=1 (keep the work dir), AUTHPROXY_BIN, BENCH_TREE (what the report names as the
# binary's source tree; default: git describe of this checkout).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
LOG_TAG=bench-callbacks
# shellcheck source=bench/lib.sh # die, note, the origin and proxy setup shared by the benches
. "$ROOT/bench/lib.sh"
BIN=${AUTHPROXY_BIN:-$ROOT/build/authproxy}
OUT=$ROOT/build/bench
CONNS=${BENCH_CONNS:-32}
SLICE=${BENCH_CB_SLICE:-3}
PAIRS=${BENCH_CB_PAIRS:-10}
LG_WARM=${BENCH_CB_WARMUP:-1}
RATE=${BENCH_CB_RATE:-4000}
PACED_PAIRS=${BENCH_CB_PACED_PAIRS:-6}
STORM_N=${BENCH_STORM_N:-1000}
STORM_DELAY=${BENCH_STORM_DELAY:-1}
STORM_TLS=${BENCH_STORM_TLS:-1}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
HELPER=$ROOT/bench/callbacks_helper.py
LG=$OUT/loadgen
STATIC_SECRET=bench-static-secret
CB_SECRET=bench-callbk-secret # same length as STATIC_SECRET: the same bytes reach nginx

require_tools "" nginx wrk openssl python3 curl cc pkg-config
[ -x "$BIN" ] || die "$BIN not found (run make)"

# 1000 concurrent connections: the client, the proxy (two fds each) and nginx need the room.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((3 * STORM_N + 256)) ] ||
    note "WARNING: open-file limit $(ulimit -n) is low for a storm of $STORM_N"

mkdir -p "$OUT"
make_work /tmp/authproxy-bench-cb.XXXXXX pki logs nginx/tmp state
RESULTS=$WORK/results.txt
: > "$RESULTS"

# shellcheck disable=SC2016 # expanded at exit
trap_exit 'cleanup "${BENCH_KEEP:-0}"' # BENCH_KEEP=1 keeps the work dir

# cpu_ns PID...: CPU time the processes (all their threads) have run so far, in ns
# (schedstat: exact, where /proc/PID/stat counts 10 ms ticks).
cpu_ns() {
    local p sum=0 t
    for p in "$@"; do
        for t in /proc/"$p"/task/*/schedstat; do
            [ -r "$t" ] && sum=$((sum + $(cut -d' ' -f1 "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$sum"
}

# quiet: waits (at most what is left of BENCH_QUIET_WAIT) for other load under 0.25 cores;
# prints the load it saw last.
quiet() {
    local load
    while :; do
        load=$(machine_load 1)
        if is_quiet "$load" || [ "$QUIET_WAIT" -le 0 ]; then
            echo "$load"
            return
        fi
        QUIET_WAIT=$((QUIET_WAIT - 1))
    done
}

# --- load generator, PKI, origin ---------------------------------------------------------------

build_loadgen || die "loadgen does not compile"

make_pki "authproxy bench-callbacks CA" static.test \
    "subjectAltName=DNS:static.test,DNS:cb.test,DNS:*.storm.test" extendedKeyUsage=serverAuth

read -r NG_HTTP NG_HTTPS AP_PORT AP_CTL <<<"$(free_ports 4)"

# The origin of the dynamic-credential benchmarks: run.sh's, reduced to what is measured here.
# /check names the Authorization the origin received instead of echoing it: authproxy redacts
# an injected credential that comes back in a response (scrub), so an echo would read '****'.
write_nginx_conf <<EOF
    map \$http_authorization \$bench_auth {
        "Bearer $STATIC_SECRET" "static"; "Bearer $CB_SECRET" "callback"; "" "none"; default "other";
    }
    server {
        listen 127.0.0.1:$NG_HTTP;
        listen 127.0.0.1:$NG_HTTPS ssl;
        ssl_certificate $PKI/origin.crt;
        ssl_certificate_key $PKI/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / { return 200 "ok\n"; }
        location = /check { return 200 "authorization=\$bench_auth\n"; }
    }
EOF
start_nginx "$NG_HTTPS" || { cat "$WORK/logs/nginx-error.log" >&2; die "nginx did not start"; }
# nginx_cpu_ns: cpu_ns of the nginx master and its workers.
nginx_cpu_ns() {
    local pids
    read -ra pids <<<"$(nginx_pids)"
    cpu_ns "${pids[@]}"
}

# --- callback endpoint ---------------------------------------------------------------------------

python3 "$HELPER" server "$WORK/cb.port" "Bearer $CB_SECRET" /slow "$STORM_DELAY" \
    > "$WORK/logs/callback.out" 2>&1 &
CB_PID=$!
PIDS+=("$CB_PID")
for _ in $(seq 100); do [ -s "$WORK/cb.port" ] && break; sleep 0.1; done
[ -s "$WORK/cb.port" ] || die "the callback endpoint did not start: $(cat "$WORK/logs/callback.out")"
CB_PORT=$(cat "$WORK/cb.port")
# calls HOST: callback calls the endpoint has had for HOST so far.
calls() {
    curl -s --max-time 5 "http://127.0.0.1:$CB_PORT/count" |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$1"
}

# --- authproxy -----------------------------------------------------------------------------------

ROUNDS=("p1")
[ "$STORM_TLS" = 1 ] && ROUNDS+=("t1")
REMAP='"static.test": "127.0.0.1", "cb.test": "127.0.0.1"'
for r in "${ROUNDS[@]}"; do REMAP="$REMAP, \"$r.storm.test\": \"127.0.0.1\""; done
cat > "$WORK/authproxy.json" <<EOF
{
  "secrets": {"TOKEN": "$STATIC_SECRET"},
  "proxy_config": {
    "rules": [{"name": "static", "match_hosts": ["static.test"], "allow_plaintext": true,
      "headers": [{"name": "Authorization", "type": "workspace_secret", "value": "Bearer {TOKEN}"}]}],
    "callbacks": [
      {"match_hosts": ["cb.test"], "url": "http://127.0.0.1:$CB_PORT/creds", "ttl_seconds": 3600,
       "full_request": false, "request_headers": [], "allow_plaintext": true},
      {"match_hosts": ["*.storm.test"], "url": "http://127.0.0.1:$CB_PORT/slow", "ttl_seconds": 3600,
       "full_request": false, "request_headers": [], "allow_plaintext": true}]},
  "dns_remap": {$REMAP},
  "upstream_ca_file": "$PKI/ca.crt"
}
EOF
chmod 600 "$WORK/authproxy.json"
"$BIN" ca cert --state-dir "$WORK/state" > "$WORK/authproxy-ca.crt" 2>>"$WORK/logs/authproxy.out" ||
    die "authproxy ca cert failed: $(tail -3 "$WORK/logs/authproxy.out")"
start_serve "$AP_PORT" || die "authproxy did not start: $(tail -3 "$WORK/logs/authproxy.out")"

# Check each host's header at the origin (this is also the callback cache's warm-up request),
# over plain HTTP and through the intercepted TLS path.
for h in static.test cb.test; do
    want="authorization=static"
    [ "$h" = cb.test ] && want="authorization=callback"
    got=$(curl -s --max-time 15 -x "http://127.0.0.1:$AP_PORT" "http://$h:$NG_HTTP/check")
    [ "$got" = "$want" ] || die "plain $h: the origin saw '${got:-no answer}', expected '$want'"
    got=$(curl -s --max-time 15 -x "http://127.0.0.1:$AP_PORT" --cacert "$WORK/authproxy-ca.crt" \
        "https://$h:$NG_HTTPS/check")
    [ "$got" = "$want" ] || die "https $h: the origin saw '${got:-no answer}', expected '$want'"
done
# The cache key holds the port (SPEC §4), so the plain and the HTTPS origin port are two keys.
[ "$(calls cb.test)" = 2 ] || note "WARNING: the warm-up made $(calls cb.test) callback calls, expected 2"
note "authproxy on 127.0.0.1:$AP_PORT: static.test by a header rule, cb.test by a callback (checked at the origin)"

# --- throughput: static rule against cached callback, alternating slices ------------------------

# measure RUN PAIR SIDE COMMAND...: runs one slice and appends its RESULT line with the CPU the
# proxy and nginx used, and the cores other processes used meanwhile.
measure() {
    local run=$1 pair=$2 side=$3
    shift 3
    local c0 c1 n0 n1 m0 m1 w0 w1 line client TIMEFORMAT='%3U %3S'
    c0=$(cpu_ns "$AP_PID"); n0=$(nginx_cpu_ns); m0=$(machine_ticks); w0=$(date +%s.%N)
    { time "$@" > "$WORK/run.out" 2>>"$WORK/logs/client.err"; } 2> "$WORK/run.time"
    w1=$(date +%s.%N); m1=$(machine_ticks); c1=$(cpu_ns "$AP_PID"); n1=$(nginx_cpu_ns)
    client=$(awk '{printf "%.2f", $1 + $2}' "$WORK/run.time")
    line=$(grep '^RESULT' "$WORK/run.out" | tail -1)
    [ -n "$line" ] || line="RESULT failed=1 rps=0 requests=0 requests_all=0 secs=1 errors=1"
    line="$line run=$run pair=$pair side=$side"
    line="$line $(awk -v c=$((c1 - c0)) -v n=$((n1 - n0)) -v m=$((m1 - m0)) -v cl="$client" \
        -v h="$CLK_TCK" -v a="$w0" -v b="$w1" 'BEGIN {
            o = (m / h - (c + n) / 1e9 - cl) / (b - a); if (o < 0) o = 0
            printf "proxy_cpu_s=%.4f nginx_cpu_s=%.4f client_cpu_s=%.2f wall_s=%.2f other_cores=%.2f",
                   c / 1e9, n / 1e9, cl, b - a, o }')"
    echo "$line" >> "$RESULTS"
    echo "$line" | awk '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "  %-8s pair %-2s %-8s %10s req/s  p99 %9s us  errors %s  proxy %s s  other load %s\n",
               v["run"], v["pair"], v["side"], v["rps"], v["p99_us"], v["errors"], v["proxy_cpu_s"],
               v["other_cores"] }' >&2
}

host_of() { [ "$1" = static ] && echo static.test || echo cb.test; }

# one_slice RUN PAIR SIDE
one_slice() {
    local run=$1 pair=$2 side=$3 h
    h=$(host_of "$side")
    local lg=(timeout $((SLICE + LG_WARM + 30)) "$LG" --connect "127.0.0.1:$AP_PORT" -c "$CONNS" -t 1
        -d "$SLICE" -w "$LG_WARM" --label "$run")
    local tls=(--tunnel "$h:$NG_HTTPS" --tls --sni "$h" --cafile "$WORK/authproxy-ca.crt" --host "$h:$NG_HTTPS")
    local plain=(--target "http://$h:$NG_HTTP/" --host "$h:$NG_HTTP")
    case $run in
        plain_ka)
            measure "$run" "$pair" "$side" env BENCH_TARGET="http://$h:$NG_HTTP/" BENCH_HOST="$h:$NG_HTTP" \
                BENCH_LABEL="$run" timeout $((SLICE + 30)) wrk -t 1 -c "$CONNS" -d "$SLICE" --timeout 10s \
                -s "$ROOT/bench/wrk_report.lua" "http://127.0.0.1:$AP_PORT/" ;;
        tls_ka) measure "$run" "$pair" "$side" "${lg[@]}" "${tls[@]}" ;;
        plain_paced) measure "$run" "$pair" "$side" "${lg[@]}" "${plain[@]}" --rate "$RATE" ;;
        tls_paced) measure "$run" "$pair" "$side" "${lg[@]}" "${tls[@]}" --rate "$RATE" ;;
    esac
}

LOAD_BEFORE=$(quiet)
note "other load before the runs: $LOAD_BEFORE cores; $CONNS connections, ${SLICE}s slices, $PAIRS pairs"
for run in plain_ka tls_ka plain_paced tls_paced; do
    note "other load before $run: $(quiet) cores"
    n=$PAIRS
    case $run in *_paced) n=$PACED_PAIRS ;; esac
    for pair in $(seq "$n"); do
        quiet > /dev/null # within what is left of the budget: a pair starts on a quiet machine
        if [ $((pair % 2)) = 1 ]; then order="static callback"; else order="callback static"; fi
        for side in $order; do one_slice "$run" "$pair" "$side"; done
    done
done
KA_CALLS=$(calls cb.test)

# --- cold-cache storm ----------------------------------------------------------------------------

for r in "${ROUNDS[@]}"; do
    h=$r.storm.test
    tls=()
    port=$NG_HTTP
    if [ "${r#t}" != "$r" ]; then
        tls=(--tls --cafile "$WORK/authproxy-ca.crt")
        port=$NG_HTTPS
    fi
    note "storm: $STORM_N connections, one request each for $h (callback answers after ${STORM_DELAY}s)"
    timeout 300 python3 "$HELPER" storm --proxy "$AP_PORT" --host "$h:$port" -n "$STORM_N" "${tls[@]}" \
        > "$WORK/storm.out" 2>>"$WORK/logs/client.err"
    line=$(grep '^RESULT' "$WORK/storm.out" | tail -1)
    [ -n "$line" ] || line="RESULT id=storm failed=1 n=$STORM_N ok=0"
    line="$line delay=$STORM_DELAY callback_calls=$(calls "$h")"
    echo "$line" >> "$RESULTS"
    echo "  $line" >&2
done

# --- report --------------------------------------------------------------------------------------

{
    echo "META date=$(date -u +%Y-%m-%dT%H:%MZ) nproc=$(nproc) conns=$CONNS slice=$SLICE pairs=$PAIRS paced_pairs=$PACED_PAIRS rate=$RATE load_before=$LOAD_BEFORE"
    echo "META commit=${BENCH_TREE:-$(tree_id)} ka_callback_calls=$KA_CALLS"
    echo "META authproxy=$("$BIN" version 2>/dev/null | head -1 | tr ' ' '_')"
} >> "$RESULTS"
[ -s "$WORK/logs/client.err" ] && note "client stderr (last lines):" && tail -5 "$WORK/logs/client.err" >&2
cp "$RESULTS" "$OUT/callbacks.txt"
python3 "$HELPER" report "$RESULTS" | tee "$OUT/callbacks.md"
note "raw results: build/bench/callbacks.txt, table: build/bench/callbacks.md"
exit 0
