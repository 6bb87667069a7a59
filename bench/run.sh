#!/usr/bin/env bash
# bench/run.sh — authproxy's data-plane benchmarks, end to end (`make bench`).
#
# Starts an nginx origin (HTTP and HTTPS on loopback, bench PKI made here), authproxy and
# mitmproxy on free loopback ports, runs the same client workloads directly against nginx and
# through each proxy, and prints a table of ratios. It reports; it does not assert targets, and
# exits 0 once it has reported (non-zero only when the harness itself cannot run: no nginx,
# no wrk, loadgen does not compile). bench/README.md says what each run measures.
#
# Knobs (environment): BENCH_DURATION (s per run, default 6), BENCH_WARMUP (s, default 2),
# BENCH_CONNS (32), BENCH_RATE (total req/s of the paced latency runs, 2000), BENCH_IDLE
# (idle intercepted connections for the memory run, 2000), BENCH_MITM_IDLE (500),
# BENCH_PACED_SLICES (3) and BENCH_PACED_SLICE (s, 3) for the paced runs, BENCH_QUIET_WAIT (s, 60),
# BENCH_WORKLOADS (the run ids to do, default all: plain_ka plain_ka_lg tls_ka_wrk tls_ka tls_new
# tls_new_noreuse plain_paced tls_paced idle), BENCH_MITM=0 (skip mitmproxy),
# BENCH_NGINX_PROXY=0 (skip the nginx reverse-proxy reference), BENCH_RELAY=0 (skip the byte
# relay floors),
# BENCH_KEEP=1 (keep the work dir), AUTHPROXY_BIN.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_TAG=bench
# shellcheck source=bench/lib.sh # die, note, the origin and proxy setup shared by the benches
. "$ROOT/bench/lib.sh"
BIN=${AUTHPROXY_BIN:-$ROOT/build/authproxy}
OUT=$ROOT/build/bench
DUR=${BENCH_DURATION:-6}
WARM=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNS:-32}
RATE=${BENCH_RATE:-2000}
SLICES=${BENCH_PACED_SLICES:-3}
SLICE=${BENCH_PACED_SLICE:-3}
IDLE=${BENCH_IDLE:-2000}
MITM_IDLE=${BENCH_MITM_IDLE:-500}
MITM=${BENCH_MITM:-1}
NGP=${BENCH_NGINX_PROXY:-1}
RLY=${BENCH_RELAY:-1}
WORKLOADS=${BENCH_WORKLOADS:-plain_ka plain_ka_lg tls_ka_wrk tls_ka tls_new tls_new_noreuse plain_paced tls_paced idle}
NAME=origin.test
SECRET=bench-secret

require_tools "Debian: nginx-light wrk openssl python3 curl gcc pkg-config" \
    nginx wrk openssl python3 curl cc pkg-config

mkdir -p "$OUT"
make_work /tmp/authproxy-bench.XXXXXX pki logs nginx/tmp state mitm
RESULTS=$WORK/results.txt
: > "$RESULTS"

# shellcheck disable=SC2016 # expanded at exit
trap_exit 'cleanup "${BENCH_KEEP:-0}"' # BENCH_KEEP=1 keeps the work dir

# --- helpers (the common ones are in bench/lib.sh) ----------------------------------------------

# rss_kib PID: the process's resident set size in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# now_s: the wall clock in seconds, with nanoseconds.
now_s() { date +%s.%N; }

# The machine is shared (other sessions build, test and fuzz on it). The harness waits for it to
# be quiet (less than 0.25 cores of load) before the runs and before each workload, at most
# BENCH_QUIET_WAIT seconds in all (default 60), so the whole run stays near five minutes.
QUIET_BUDGET=${BENCH_QUIET_WAIT:-60}

# wait_quiet: before the first run; waits up to half the budget and says what it saw.
wait_quiet() {
    local limit=$((QUIET_BUDGET / 2)) waited=0 load
    while :; do
        load=$(machine_load 2)
        if is_quiet "$load"; then
            note "machine load before the runs: $load cores"
            LOAD_BEFORE=$load
            return
        fi
        if [ "$waited" -ge "$limit" ]; then
            note "WARNING: the machine is busy ($load cores used by other processes); results will be low and noisy"
            LOAD_BEFORE=$load
            return
        fi
        [ "$waited" = 0 ] && note "machine busy ($load cores in use by other processes); waiting up to ${limit}s for it to calm down"
        waited=$((waited + 2))
        QUIET_BUDGET=$((QUIET_BUDGET - 2))
    done
}

# nginx_accepts: connections nginx accepted so far (stub_status), i.e. upstream connections made
# by whoever sits in front of it (the status request itself is one).
nginx_accepts() {
    curl -s --max-time 2 "http://127.0.0.1:$NG_HTTP/nginx_status" | awk 'NR == 3 {print $1}'
}
nginx_active() {
    curl -s --max-time 2 "http://127.0.0.1:$NG_HTTP/nginx_status" | awk 'NR == 1 {print $3}'
}

# measure SIDE ID PROXY_PID COMMAND...: runs one client command and appends its RESULT line with
# the CPU the proxy, nginx and the client used, the CPU every other process on the machine used
# meanwhile (other_cores: a shared machine shows here), and the connections nginx accepted.
measure() {
    local side=$1 id=$2 ppid=$3
    shift 3
    local a0 a1 c0 c1 n0 n1 m0 m1 w0 w1 line client
    a0=$(nginx_accepts)
    # shellcheck disable=SC2086 # PROXY_PID may be a list (the nginx reference's processes)
    c0=$( [ "$ppid" = - ] && echo 0 || cpu_ticks $ppid)
    n0=$(cpu_ticks $(nginx_pids))
    m0=$(machine_ticks)
    w0=$(now_s)
    local TIMEFORMAT='%3U %3S'
    { time "$@" > "$WORK/run.out" 2>>"$WORK/logs/client.err"; } 2> "$WORK/run.time"
    w1=$(now_s)
    m1=$(machine_ticks)
    a1=$(nginx_accepts)
    # shellcheck disable=SC2086 # as above
    c1=$( [ "$ppid" = - ] && echo 0 || cpu_ticks $ppid)
    n1=$(cpu_ticks $(nginx_pids))
    line=$(grep '^RESULT' "$WORK/run.out" | tail -1)
    client=$(awk '{printf "%.2f", $1 + $2}' "$WORK/run.time")
    [ -n "$line" ] || line="RESULT label=$id failed=1"
    line="$line id=$id side=$side proxy_cpu_s=$(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}')"
    line="$line nginx_cpu_s=$(awk -v t=$((n1 - n0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}')"
    line="$line client_cpu_s=$client wall_s=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.2f", b - a}')"
    line="$line other_cores=$(awk -v m=$((m1 - m0)) -v o=$((c1 - c0 + n1 - n0)) -v c="$client" \
        -v h="$CLK_TCK" -v a="$w0" -v b="$w1" 'BEGIN {x = ((m - o) / h - c) / (b - a); if (x < 0) x = 0; printf "%.2f", x}')"
    line="$line upstream_accepts=$(( ${a1:-0} - ${a0:-0} - 1 ))"
    echo "$line" >> "$RESULTS"
    echo "$line" | awk '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "  %-10s %-16s %10s req/s  p50 %8s us  p99 %9s us  errors %s  other load %s cores\n",
               v["side"], v["id"], v["rps"], v["p50_us"], v["p99_us"], v["errors"], v["other_cores"] }' >&2
}

LG=$OUT/loadgen
# lg ARGS...: loadgen with the common shape (connections, one client thread, duration, warm-up)
lg() { timeout $((DUR + WARM + 60)) "$LG" -c "$CONNS" -t 1 -d "$DUR" -w "$WARM" "$@"; }
# lg_slice ARGS...: one slice of a paced run (see the driver below)
lg_slice() { timeout $((SLICE + 60)) "$LG" -c "$CONNS" -t 1 -d "$SLICE" -w 1 "$@"; }

# wrk_run URL TARGET HOST LABEL: the measured wrk run (one thread, like loadgen, so the client's
# share of the two cores is the same for both tools). wrk has no warm-up phase: call wrk_warm
# first, outside `measure`, so CPU per request is not inflated by it.
wrk_run() {
    BENCH_TARGET=$2 BENCH_HOST=$3 BENCH_LABEL=$4 timeout $((DUR + 60)) wrk -t 1 -c "$CONNS" \
        -d "$DUR" --timeout 10s -s "$ROOT/bench/wrk_report.lua" "$1"
}
wrk_warm() {
    BENCH_TARGET=$2 BENCH_HOST=$3 BENCH_LABEL=$4 timeout $((WARM + 30)) wrk -t 1 -c "$CONNS" \
        -d "$WARM" -s "$ROOT/bench/wrk_report.lua" "$1" >/dev/null 2>&1
}

# --- build the load generator -------------------------------------------------------------------

build_loadgen || die "loadgen does not compile"
RELAY=$OUT/relay
build_relay || die "relay does not compile"

# --- bench PKI: a private CA and a P-256 leaf for origin.test ----------------------------------

make_pki "authproxy bench origin CA" "$NAME" "subjectAltName=DNS:$NAME" basicConstraints=CA:FALSE \
    extendedKeyUsage=serverAuth

# --- origin: nginx ----------------------------------------------------------------------------

read -r NG_HTTP NG_HTTPS NG_HTTPS_CLOSE AP_PORT AP_CTL MITM_PORT NGP_HTTP NGP_HTTPS RLY_PORT RLY_TLS_PORT <<<"$(free_ports 10)"
# authproxy bench origin: a tiny fixed response on HTTP and HTTPS, keep-alive without limits.
# /check names the Authorization the origin received instead of echoing it: authproxy redacts
# an injected credential that comes back in a response (scrub), so an echo would read '****'.
write_nginx_conf <<EOF
    map \$http_authorization \$bench_auth { "Bearer $SECRET" "injected"; "" "none"; default "other"; }
    server {
        listen 127.0.0.1:$NG_HTTP;
        listen 127.0.0.1:$NG_HTTPS ssl;
        server_name $NAME;
        ssl_certificate $PKI/origin.crt;
        ssl_certificate_key $PKI/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / { return 200 "ok\n"; }
        location = /check { return 200 "authorization=\$bench_auth\n"; }
        location = /nginx_status { stub_status; }
    }
    # The same origin without keep-alive: a proxy in front of it must open (and handshake) a
    # new upstream connection for every request.
    server {
        listen 127.0.0.1:$NG_HTTPS_CLOSE ssl;
        server_name $NAME;
        ssl_certificate $PKI/origin.crt;
        ssl_certificate_key $PKI/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_timeout 0;
        location = / { return 200 "ok\n"; }
    }
EOF
start_nginx "$NG_HTTPS" || { cat "$WORK/logs/nginx-error.log" >&2; die "nginx did not start"; }

HOST_PLAIN="$NAME:$NG_HTTP"
HOST_TLS="$NAME:$NG_HTTPS"
HOST_TLS_CLOSE="$NAME:$NG_HTTPS_CLOSE"
URL_PLAIN="http://$HOST_PLAIN/"

# --- authproxy ----------------------------------------------------------------------------------

cat > "$WORK/authproxy.json" <<EOF
{
  "secrets": {"TOKEN": "$SECRET"},
  "proxy_config": {"rules": [{"name": "bench", "match_hosts": ["$NAME"], "allow_plaintext": true,
    "headers": [{"name": "Authorization", "type": "workspace_secret", "value": "Bearer {TOKEN}"}]}]},
  "dns_remap": {"$NAME": "127.0.0.1"},
  "upstream_ca_file": "$PKI/ca.crt",
  "limits": {"max_connections_per_sandbox": 0}
}
EOF
# (no per-client connection limit: every load generator here is one client on 127.0.0.1, and the
#  memory run holds $IDLE idle connections)
chmod 600 "$WORK/authproxy.json" # it holds a secret; the daemon warns about looser modes

AP_PID=
# start_authproxy: (re)starts the daemon on AP_PORT; sets AP_PID; false when it does not listen.
start_authproxy() {
    if [ -n "$AP_PID" ]; then
        kill "$AP_PID" 2>/dev/null
        wait "$AP_PID" 2>/dev/null
    fi
    start_serve "$AP_PORT"
}

AP_OK=0
AP_WHY=
if [ ! -x "$BIN" ]; then
    AP_WHY="$BIN not found (run make)"
elif "$BIN" ca cert --state-dir "$WORK/state" > "$WORK/authproxy-ca.crt" 2>>"$WORK/logs/authproxy.out" &&
    start_authproxy; then
    got_plain=$(curl -s --max-time 5 -x "http://127.0.0.1:$AP_PORT" "http://$HOST_PLAIN/check")
    got_tls=$(curl -s --max-time 5 -x "http://127.0.0.1:$AP_PORT" --cacert "$WORK/authproxy-ca.crt" \
        "https://$HOST_TLS/check")
    if [ "$got_plain" = "authorization=injected" ] && [ "$got_tls" = "authorization=injected" ]; then
        AP_OK=1
    else
        AP_WHY="injection check failed (plain: '${got_plain:-no answer}', https: '${got_tls:-no answer}')"
    fi
else
    AP_WHY="the daemon did not start: $(tail -3 "$WORK/logs/authproxy.out" | tr '\n' ' ')"
fi
[ "$AP_OK" = 1 ] && note "authproxy on 127.0.0.1:$AP_PORT injects the header (checked at the origin)" \
    || note "authproxy unusable: $AP_WHY"

# --- mitmproxy ----------------------------------------------------------------------------------

MITM_PID=
MITM_OK=0
MITM_WHY=
# start_mitm: (re)starts mitmdump on MITM_PORT with the injecting addon; sets MITM_PID.
start_mitm() {
    if [ -n "$MITM_PID" ]; then
        kill "$MITM_PID" 2>/dev/null
        wait "$MITM_PID" 2>/dev/null
    fi
    BENCH_ORIGIN_NAME=$NAME BENCH_ORIGIN_ADDR=127.0.0.1 BENCH_SECRET=$SECRET \
        mitmdump --listen-host 127.0.0.1 --listen-port "$MITM_PORT" --set "confdir=$WORK/mitm" \
        -s "$ROOT/bench/mitm_addon.py" --set "ssl_verify_upstream_trusted_ca=$PKI/ca.crt" \
        --set termlog_verbosity=warn --set flow_detail=0 >> "$WORK/logs/mitmdump.out" 2>&1 &
    MITM_PID=$!
    PIDS+=("$MITM_PID")
    wait_port "$MITM_PORT" "$MITM_PID"
}
if [ "$MITM" = 1 ]; then
    if ! command -v mitmdump >/dev/null 2>&1; then
        MITM_WHY="mitmdump not installed (Debian package mitmproxy)"
    elif start_mitm; then
        got=$(curl -s --max-time 5 -x "http://127.0.0.1:$MITM_PORT" --cacert "$WORK/mitm/mitmproxy-ca-cert.pem" \
            "https://$HOST_TLS/check")
        if [ "$got" = "authorization=injected" ]; then
            MITM_OK=1
        else
            MITM_WHY="injection check failed: '${got:-no answer}'"
        fi
    else
        MITM_WHY="mitmdump did not start: $(tail -3 "$WORK/logs/mitmdump.out" | tr '\n' ' ')"
    fi
    [ "$MITM_OK" = 1 ] && note "mitmdump on 127.0.0.1:$MITM_PORT injects the header" || note "mitmproxy skipped: $MITM_WHY"
else
    MITM_WHY="skipped (BENCH_MITM=0)"
fi

# --- reference: nginx as a reverse proxy ------------------------------------------------------
# What the best-known C proxy reaches on this machine doing the least a credential-injecting
# proxy must do: a second nginx (2 workers) in front of the origin, keep-alive upstream pool,
# Authorization set on every request; for HTTPS it terminates the client's TLS and speaks TLS
# (verified, sessions reused) to the origin. No policy, no audit, no CONNECT: a floor under what
# a proxy costs here, not a competitor (bench/README.md).

NGP_OK=0
NGP_WHY=
NGP_MASTER=
# ngp_pids: the reference nginx's master and workers.
ngp_pids() { echo "$NGP_MASTER $(ps -o pid= --ppid "$NGP_MASTER" | tr '\n' ' ')"; }
if [ "$NGP" = 1 ]; then
    write_nginx_conf_in "$WORK/ngp" "$WORK/logs/ngp-error.log" <<EOF
    upstream origin_plain { server 127.0.0.1:$NG_HTTP; keepalive 64; keepalive_requests 100000000; }
    upstream origin_tls { server 127.0.0.1:$NG_HTTPS; keepalive 64; keepalive_requests 100000000; }
    proxy_http_version 1.1;
    proxy_buffering off;
    # (a level that sets any proxy_set_header inherits none: all three go in each location)
    server {
        listen 127.0.0.1:$NGP_HTTP;
        location / {
            proxy_pass http://origin_plain;
            proxy_set_header Host $HOST_PLAIN;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $SECRET";
        }
    }
    server {
        listen 127.0.0.1:$NGP_HTTPS ssl;
        ssl_certificate $PKI/origin.crt;
        ssl_certificate_key $PKI/origin.key;
        location / {
            proxy_pass https://origin_tls;
            proxy_set_header Host $HOST_TLS;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $SECRET";
            proxy_ssl_server_name on;
            proxy_ssl_name $NAME;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $PKI/ca.crt;
            proxy_ssl_session_reuse on;
        }
    }
EOF
    nginx -c "$WORK/ngp/nginx.conf" -p "$WORK/ngp" -e "$WORK/logs/ngp-error.log" -g 'daemon off;' \
        > "$WORK/logs/ngp.out" 2>&1 &
    NGP_MASTER=$!
    PIDS+=("$NGP_MASTER")
    if wait_port "$NGP_HTTPS" "$NGP_MASTER"; then
        got_plain=$(curl -s --max-time 5 "http://127.0.0.1:$NGP_HTTP/check")
        got_tls=$(curl -s --max-time 5 --cacert "$PKI/ca.crt" --resolve "$NAME:$NGP_HTTPS:127.0.0.1" \
            "https://$NAME:$NGP_HTTPS/check")
        if [ "$got_plain" = "authorization=injected" ] && [ "$got_tls" = "authorization=injected" ]; then
            NGP_OK=1
        else
            NGP_WHY="injection check failed (plain: '${got_plain:-no answer}', https: '${got_tls:-no answer}')"
        fi
    else
        NGP_WHY="the reference nginx did not start: $(tail -3 "$WORK/logs/ngp-error.log" | tr '\n' ' ')"
    fi
    if [ "$NGP_OK" = 1 ]; then
        note "reference nginx reverse proxy on 127.0.0.1:$NGP_HTTP (plain) and :$NGP_HTTPS (TLS) injects the header"
    else
        note "nginx reference skipped: $NGP_WHY"
    fi
else
    NGP_WHY="skipped (BENCH_NGINX_PROXY=0)"
fi

# --- floor: a byte relay ---------------------------------------------------------------------
# bench/relay.c (2 threads, like authproxy's workers) copies bytes between the client and a
# connection to the origin without reading them: the system calls of a keep-alive proxy and
# nothing else. Its plain-HTTP ratio is what this machine leaves for any user-space proxy. A
# second one terminates TLS (the origin's certificate) and re-encrypts to the origin: the same
# floor for intercepted HTTPS.

RLY_OK=0
RLY_WHY=
RLY_PIDS=
if [ "$RLY" = 1 ]; then
    "$RELAY" --listen "127.0.0.1:$RLY_PORT" --upstream "127.0.0.1:$NG_HTTP" -t 2 \
        > "$WORK/logs/relay.out" 2>&1 &
    RLY_PIDS=$!
    PIDS+=("$!")
    "$RELAY" --listen "127.0.0.1:$RLY_TLS_PORT" --upstream "127.0.0.1:$NG_HTTPS" -t 2 \
        --tls "$PKI/origin.crt" "$PKI/origin.key" --upstream-tls "$NAME" "$PKI/ca.crt" \
        > "$WORK/logs/relay-tls.out" 2>&1 &
    RLY_TLS_PID=$!
    PIDS+=("$!")
    if wait_port "$RLY_PORT" "$RLY_PIDS" && wait_port "$RLY_TLS_PORT" "$RLY_TLS_PID"; then
        got_plain=$(curl -s --max-time 5 -x "http://127.0.0.1:$RLY_PORT" "http://$HOST_PLAIN/check")
        got_tls=$(curl -s --max-time 5 --cacert "$PKI/ca.crt" --resolve "$NAME:$RLY_TLS_PORT:127.0.0.1" \
            "https://$NAME:$RLY_TLS_PORT/check")
        # the relay injects nothing: the origin must see the request as the client sent it
        if [ "$got_plain" = "authorization=none" ] && [ "$got_tls" = "authorization=none" ]; then
            RLY_OK=1
        else
            RLY_WHY="relay check failed (plain: '${got_plain:-no answer}', https: '${got_tls:-no answer}')"
        fi
    else
        RLY_WHY="the relay did not start: $(tail -3 "$WORK/logs/relay.out" "$WORK/logs/relay-tls.out" | tr '\n' ' ')"
    fi
    [ "$RLY_OK" = 1 ] && note "byte relays on 127.0.0.1:$RLY_PORT (plain) and :$RLY_TLS_PORT (TLS) reach the origin" ||
        note "relay skipped: $RLY_WHY"
else
    RLY_WHY="skipped (BENCH_RELAY=0)"
fi

# --- the runs -----------------------------------------------------------------------------------
# Workload by workload, each one direct, then through authproxy, then through mitmproxy, back to
# back: the machine is shared, and load that comes and goes then hits both sides of a ratio
# alike instead of all of one side. Before each workload the harness waits (within a budget) for
# the machine to be quiet.

# quiet_gate: waits up to 15 s, within what is left of the budget, for other load < 0.25 cores.
quiet_gate() {
    local load waited=0
    while :; do
        load=$(machine_load 1)
        is_quiet "$load" && return
        if [ "$waited" -ge 15 ] || [ "$QUIET_BUDGET" -le 0 ]; then
            note "machine still busy ($load cores used by others); measuring anyway"
            return
        fi
        waited=$((waited + 1))
        QUIET_BUDGET=$((QUIET_BUDGET - 1))
    done
}

# run_one SIDE ID: one workload on one side (direct | authproxy | mitmproxy).
run_one() {
    local side=$1 id=$2 pid port ca tls plain url target
    case $side in
        direct) pid=-; ca=$PKI/ca.crt ;;
        authproxy) pid=$AP_PID; port=$AP_PORT; ca=$WORK/authproxy-ca.crt ;;
        mitmproxy) pid=$MITM_PID; port=$MITM_PORT; ca=$WORK/mitm/mitmproxy-ca-cert.pem ;;
        nginxproxy) pid=$(ngp_pids); ca=$PKI/ca.crt ;;
        relay) pid="$RLY_PIDS $RLY_TLS_PID"; port=$RLY_PORT; ca=$PKI/ca.crt ;;
    esac
    if [ "$side" = nginxproxy ]; then # a reverse proxy: the client talks to it as to the origin
        tls=(--connect "127.0.0.1:$NGP_HTTPS" --tls --sni "$NAME" --cafile "$ca" --host "$HOST_TLS")
        plain=(--connect "127.0.0.1:$NGP_HTTP" --host "$HOST_PLAIN")
        url="http://127.0.0.1:$NGP_HTTP/" target=/
    elif [ "$side" = relay ]; then # plain: like a forward proxy; TLS: like a reverse proxy
        tls=(--connect "127.0.0.1:$RLY_TLS_PORT" --tls --sni "$NAME" --cafile "$ca" --host "$HOST_TLS")
        plain=(--connect "127.0.0.1:$port" --target "$URL_PLAIN" --host "$HOST_PLAIN")
        url="http://127.0.0.1:$port/" target=$URL_PLAIN
    elif [ "$side" = direct ]; then
        tls=(--connect "127.0.0.1:$NG_HTTPS" --tls --sni "$NAME" --cafile "$ca" --host "$HOST_TLS")
        plain=(--connect "127.0.0.1:$NG_HTTP" --host "$HOST_PLAIN")
        url="http://127.0.0.1:$NG_HTTP/" target=/
    else
        tls=(--connect "127.0.0.1:$port" --tunnel "$HOST_TLS" --tls --sni "$NAME" --cafile "$ca" --host "$HOST_TLS")
        plain=(--connect "127.0.0.1:$port" --target "$URL_PLAIN" --host "$HOST_PLAIN")
        url="http://127.0.0.1:$port/" target=$URL_PLAIN
    fi
    case $id in
        plain_ka)
            wrk_warm "$url" "$target" "$HOST_PLAIN" "$id"
            measure "$side" "$id" "$pid" wrk_run "$url" "$target" "$HOST_PLAIN" "$id" ;;
        plain_ka_lg) measure "$side" "$id" "$pid" lg "${plain[@]}" --label "$id" ;;
        tls_ka_wrk)
            wrk_warm "https://127.0.0.1:$NG_HTTPS/" / "$HOST_TLS" "$id"
            measure "$side" "$id" "$pid" wrk_run "https://127.0.0.1:$NG_HTTPS/" / "$HOST_TLS" "$id" ;;
        tls_ka) measure "$side" "$id" "$pid" lg "${tls[@]}" --label "$id" ;;
        tls_new) measure "$side" "$id" "$pid" lg "${tls[@]}" --new-conn --label "$id" ;;
        tls_new_noreuse)
            measure "$side" "$id" "$pid" lg --connect "127.0.0.1:$port" --tunnel "$HOST_TLS_CLOSE" --tls \
                --sni "$NAME" --cafile "$ca" --host "$HOST_TLS_CLOSE" --new-conn --label "$id" ;;
        plain_paced) measure "$side" "$id" "$pid" lg_slice "${plain[@]}" --rate "$RATE" --label "$id" ;;
        tls_paced) measure "$side" "$id" "$pid" lg_slice "${tls[@]}" --rate "$RATE" --label "$id" ;;
    esac
}

# idle_run SIDE START_FN PORT CAFILE N: restarts the proxy (fresh heap), warms it with 32
# connections (leaf certificate minted, pools allocated), then opens N intercepted connections
# (CONNECT, handshake, one request each), holds them and reads VmRSS before and after.
idle_run() {
    local side=$1 start=$2 port=$3 ca=$4 n=$5 pidvar=$6
    "$start" || { echo "RESULT label=idle failed=1 id=idle side=$side" >> "$RESULTS"; return; }
    local pid=${!pidvar}
    local tls=(--connect "127.0.0.1:$port" --tunnel "$HOST_TLS" --tls --sni "$NAME" --cafile "$ca" --host "$HOST_TLS")
    timeout 60 "$LG" "${tls[@]}" -c 32 -t 1 --idle 32 --hold 0 --label warm >/dev/null 2>>"$WORK/logs/client.err"
    sleep 1
    local before after act0 act1 fifo=$WORK/idle.out lgpid line ready=
    before=$(rss_kib "$pid")
    act0=$(nginx_active)
    "$LG" "${tls[@]}" -c 64 -t 1 --idle "$n" --hold 120 --label idle > "$fifo" 2>>"$WORK/logs/client.err" &
    lgpid=$!
    PIDS+=("$lgpid")
    for _ in $(seq 900); do
        if grep -q '^READY' "$fifo"; then ready=1; break; fi
        kill -0 "$lgpid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    after=$(rss_kib "$pid")
    act1=$(nginx_active)
    kill "$lgpid" 2>/dev/null
    wait "$lgpid" 2>/dev/null
    line=$(grep '^RESULT' "$fifo" | tail -1)
    [ -n "$line" ] && [ -n "$ready" ] || line="RESULT label=idle failed=1"
    line="$line id=idle side=$side rss_before_kib=$before rss_after_kib=$after upstream_open=$((act1 - act0))"
    echo "$line" >> "$RESULTS"
    echo "$line" | awk '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "  %-10s %-14s open %s, RSS %s -> %s KiB, upstream connections held %s\n",
               v["side"], v["id"], v["open"], v["rss_before_kib"], v["rss_after_kib"], v["upstream_open"] }' >&2
}

LOAD_BEFORE=?
wait_quiet
note "$CONNS connections, ${DUR}s per run after ${WARM}s warm-up; authproxy --workers 2, mitmproxy one process"
for id in $WORKLOADS; do
    quiet_gate
    # Paced runs go in alternating slices (direct, proxy, direct, proxy, ...) whose histograms
    # report.py merges: tail latency is what background noise moves most, and alternating
    # exposes both sides to the same noise.
    slices=1
    case $id in *_paced) slices=$SLICES ;; esac
    for _ in $(seq "$slices"); do
    for side in direct authproxy mitmproxy nginxproxy relay; do
        [ "$side" = authproxy ] && [ "$AP_OK" != 1 ] && continue
        [ "$side" = relay ] && [ "$RLY_OK" != 1 ] && continue
        [ "$side" = mitmproxy ] && [ "$MITM_OK" != 1 ] && continue
        [ "$side" = nginxproxy ] && [ "$NGP_OK" != 1 ] && continue
        case "$side:$id" in
            direct:tls_new_noreuse) continue ;; # the direct path has no upstream; compared with tls_new
            authproxy:tls_ka_wrk | mitmproxy:tls_ka_wrk) continue ;; # wrk cannot tunnel
            # mitmproxy saturates far below the paced rate, so its paced latency would only
            # measure its queue; its saturated p99 is on record from the keep-alive runs.
            mitmproxy:plain_paced | mitmproxy:tls_paced | mitmproxy:plain_ka_lg) continue ;;
            # the reference is measured on the keep-alive throughput workloads only
            nginxproxy:tls_ka_wrk | nginxproxy:tls_new* | nginxproxy:*_paced) continue ;;
            relay:plain_ka | relay:plain_ka_lg | relay:tls_ka) ;; # the floor: keep-alive only
            relay:*) continue ;;
        esac
        run_one "$side" "$id"
    done
    done
done
quiet_gate
IDLE_RUN=0
case " $WORKLOADS " in *" idle "*) IDLE_RUN=1 ;; esac
[ "$IDLE_RUN" = 1 ] && [ "$AP_OK" = 1 ] && idle_run authproxy start_authproxy "$AP_PORT" "$WORK/authproxy-ca.crt" "$IDLE" AP_PID
[ "$IDLE_RUN" = 1 ] && [ "$MITM_OK" = 1 ] && idle_run mitmproxy start_mitm "$MITM_PORT" "$WORK/mitm/mitmproxy-ca-cert.pem" "$MITM_IDLE" MITM_PID

# --- report -------------------------------------------------------------------------------------

{
    echo "META date=$(date -u +%Y-%m-%dT%H:%MZ) nproc=$(nproc) duration=$DUR warmup=$WARM conns=$CONNS rate=$RATE load_before=$LOAD_BEFORE"
    echo "META cpu=$(awk -F': ' '/^model name/ {gsub(/ /, "_", $2); print $2; exit}' /proc/cpuinfo)"
    echo "META kernel=$(uname -r) openssl=$(openssl version | awk '{print $2}') nginx=$(nginx -v 2>&1 | sed 's|.*/||') wrk=$(wrk -v 2>&1 | awk 'NR == 1 {print $2}')"
    echo "META commit=$(tree_id)"
    echo "META authproxy=$("$BIN" version 2>/dev/null | head -1 | tr ' ' '_') authproxy_ok=$AP_OK mitmproxy_ok=$MITM_OK mitmproxy=$(mitmdump --version 2>/dev/null | awk '/^Mitmproxy/ {print $2}')"
    [ "$AP_OK" = 1 ] || echo "META authproxy_why=$(echo "$AP_WHY" | tr ' ' '_')"
    [ "$MITM_OK" = 1 ] || echo "META mitmproxy_why=$(echo "$MITM_WHY" | tr ' ' '_')"
    [ "$NGP_OK" = 1 ] || echo "META nginxproxy_why=$(echo "$NGP_WHY" | tr ' ' '_')"
    [ "$RLY_OK" = 1 ] || echo "META relay_why=$(echo "$RLY_WHY" | tr ' ' '_')"
} >> "$RESULTS"
[ -s "$WORK/logs/client.err" ] && note "client stderr (last lines):" && tail -5 "$WORK/logs/client.err" >&2
cp "$RESULTS" "$OUT/results.txt"
python3 "$ROOT/bench/report.py" "$RESULTS" | tee "$OUT/results.md"
note "raw results: build/bench/results.txt, table: build/bench/results.md"
exit 0
