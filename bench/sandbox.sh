#!/usr/bin/env bash
# bench/sandbox.sh — sandbox benchmarks (issue 4 "Performance"), recorded in docs/BENCHMARKS.md
# ("Sandboxes").
#
#   1. Start to first command, SB_RUNS times each (default 30), median and p90:
#      a. `authproxy sandbox run -- true`, process start to exit;
#      b. against a running daemon: POST /v2/sandboxes/boxes, then the first
#         POST {dataplane_url}/execute {"command": "true"} returning; DELETE; and execute alone on
#         a running box;
#      c. the host-side phases one by one (bench/sandbox_phases.c: netns + veth + nft, cgroup,
#         jail clone/mounts/seccomp/exec, the box's ext4 disk, teardown);
#      d. the same phases while SB_BACKGROUND (20) other sandbox networks are up, as on a host
#         running that many boxes.
#   2. Intercepted HTTPS keep-alive from inside a sandbox vs the same client direct, requests/s:
#      nginx (HTTPS, origin.test, bench PKI as in bench/run.sh) listens on 127.0.0.1 and on the
#      host end of a second network namespace, "sbbench-direct", shaped like a sandbox's (a veth
#      pair, a /30, a default route via the host end) but without any nft capture. loadgen
#      (32 keep-alive connections, one thread) runs
#        direct:      `ip netns exec sbbench-direct` → nginx at the host end of that veth;
#        intercepted: `ip netns exec <the box's netns>` → any address (203.0.113.7); the box's
#                     host table DNATs it to authproxy's transparent listener, which reads the
#                     SNI, applies the box's rule (injects Authorization) and forwards over a
#                     pooled keep-alive connection to nginx (dns_remap origin.test → 127.0.0.1);
#        jailed:      the same client run by POST /execute inside the box (its mount/PID
#                     namespaces, seccomp, cgroup, uid 65534): the full sandbox.
#        relay:       the floor, `ip netns exec sbbench-direct` → bench/relay.c --tls on the host
#                     end of that veth (2 threads, like authproxy's workers): it terminates TLS
#                     with the origin's certificate and re-encrypts to nginx on 127.0.0.1,
#                     parsing nothing, injecting nothing, with no nft capture in front. What it
#                     reaches is what this machine leaves for any TLS-terminating proxy on this
#                     path (SB_RELAY=0 skips it).
#      All client paths cross one veth pair; the difference is the proxy. Rounds alternate
#      direct / intercepted / jailed / relay (SB_ROUNDS, default 3) so background load hits all
#      alike.
#
# Needs root, nginx, openssl, ip, python3, cc. Reports; asserts nothing; exits 0 once it has
# reported (as root; without root it says so and exits 0). Knobs: SB_RUNS (30), SB_ROUNDS (3),
# SB_DURATION (s per throughput run, 6), SB_WARMUP (2), SB_CONNS (32), SB_BACKGROUND (20),
# SB_BACKGROUND_RUNS (10), SB_QUIET_WAIT (s to wait for a quiet machine in all, 30), SB_KEEP=1
# (keep the work dir), SB_SKIP_TPUT=1, SB_SKIP_START=1, SB_RELAY=0, AUTHPROXY_BIN, AUTHPROXY_LIB.
# Output: build/bench/sandbox.txt (raw lines), a summary on stderr.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOG_TAG="sandbox bench"
# shellcheck source=bench/lib.sh # die, note, the origin and proxy setup shared by the benches
. "$ROOT/bench/lib.sh"
BIN=${AUTHPROXY_BIN:-$ROOT/build/authproxy}
LIB=${AUTHPROXY_LIB:-$(dirname "$BIN")/libauthproxy.a}
OUT=$ROOT/build/bench
RUNS=${SB_RUNS:-30}
ROUNDS=${SB_ROUNDS:-3}
BG=${SB_BACKGROUND:-20}
BG_RUNS=${SB_BACKGROUND_RUNS:-10}
DUR=${SB_DURATION:-6}
WARM=${SB_WARMUP:-2}
CONNS=${SB_CONNS:-32}
NAME=origin.test
DIRECT_NS=sbbench-direct
DIRECT_LINK=sbbd-host

if [ "$(id -u)" != 0 ]; then
    note "skipped: needs root (network namespaces, nftables, cgroups)"
    exit 0
fi
require_tools "" nginx openssl ip python3 cc pkg-config curl
[ -x "$BIN" ] || die "$BIN not found (run make)"
[ -f "$LIB" ] || die "$LIB not found (run make)"

mkdir -p "$OUT"
make_work /tmp/authproxy-sbbench.XXXXXX pki logs nginx/tmp state run-state
RESULTS=$WORK/results.txt
: > "$RESULTS"

# sb_cleanup: stops every process started here, removes the direct namespace and its veth, and
# the work dir (SB_KEEP=1 keeps it).
sb_cleanup() {
    stop_pids
    ip netns del "$DIRECT_NS" 2>/dev/null || true
    ip link del "$DIRECT_LINK" 2>/dev/null || true
    drop_work "${SB_KEEP:-0}"
}
trap_exit sb_cleanup

# quiet: waits (within SB_QUIET_WAIT seconds in all) until processes use < 0.25 cores; records
# what it saw in LOAD.
QUIET_BUDGET=${SB_QUIET_WAIT:-30}
quiet() {
    local waited=0
    while :; do
        LOAD=$(machine_load 1)
        is_quiet "$LOAD" && return
        if [ "$QUIET_BUDGET" -le 0 ]; then
            [ "$waited" = 0 ] || note "machine still busy ($LOAD cores in use); measuring anyway"
            return
        fi
        [ "$waited" = 0 ] && note "machine busy ($LOAD cores in use); waiting up to ${QUIET_BUDGET}s"
        waited=$((waited + 1))
        QUIET_BUDGET=$((QUIET_BUDGET - 1))
    done
}

# --- tools -------------------------------------------------------------------------------------

LG=$OUT/loadgen
build_loadgen || die "loadgen does not compile"
PHASES=$OUT/sandbox_phases
PKGS="openssl libevent libevent_openssl libevent_pthreads jansson sqlite3 libnftables"
if needs_build "$PHASES" "$ROOT/bench/sandbox_phases.c" "$LIB"; then
    # shellcheck disable=SC2046,SC2086 # pkg-config's flags and PKGS are meant to split
    bench_cc -Isrc -pthread "$ROOT/bench/sandbox_phases.c" "$LIB" -o "$PHASES" \
        $(pkg-config --cflags --libs $PKGS) || die "sandbox_phases does not compile"
fi
TIMING="python3 $ROOT/bench/sandbox_timing.py"
RELAY=$OUT/relay
build_relay || die "relay does not compile"

# --- PKI, the direct namespace, nginx -----------------------------------------------------------

make_pki "authproxy bench origin CA" "$NAME" "subjectAltName=DNS:$NAME" basicConstraints=CA:FALSE \
    extendedKeyUsage=serverAuth

# A /30 for the direct namespace that no host interface uses (10.201.255.0/30 by default).
DIRECT_NET=${SB_DIRECT_NET:-10.201.255}
ip -4 -o addr show | grep -q " $DIRECT_NET\." && die "$DIRECT_NET.0/30 is in use on this host (set SB_DIRECT_NET)"
ip netns del "$DIRECT_NS" 2>/dev/null
ip link del "$DIRECT_LINK" 2>/dev/null
ip netns add "$DIRECT_NS" || die "cannot create the namespace $DIRECT_NS"
ip link add "$DIRECT_LINK" type veth peer name eth0 netns "$DIRECT_NS" || die "cannot create the veth"
ip addr add "$DIRECT_NET.1/30" dev "$DIRECT_LINK" && ip link set "$DIRECT_LINK" up &&
    ip -n "$DIRECT_NS" link set lo up && ip -n "$DIRECT_NS" addr add "$DIRECT_NET.2/30" dev eth0 &&
    ip -n "$DIRECT_NS" link set eth0 up &&
    ip -n "$DIRECT_NS" route add default via "$DIRECT_NET.1" || die "cannot configure $DIRECT_NS"

read -r NG_HTTPS AP_PORT AP_CTL RLY_PORT <<<"$(free_ports 4)"
write_nginx_conf <<EOF
    log_format check "\$http_authorization";
    server {
        listen 127.0.0.1:$NG_HTTPS ssl;
        listen $DIRECT_NET.1:$NG_HTTPS ssl;
        server_name $NAME;
        ssl_certificate $PKI/origin.crt;
        ssl_certificate_key $PKI/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / { return 200 "ok\n"; }
        # What the origin received, logged here: the proxy scrubs a credential echoed back in
        # a response, so the check reads the origin's log instead.
        location = /check { access_log $WORK/logs/check.log check; return 200 "checked\n"; }
    }
EOF
start_nginx "$NG_HTTPS" || { cat "$WORK/logs/nginx-error.log" >&2; die "nginx did not start"; }

# --- authproxy: a daemon with the control API (it runs API boxes as root) ----------------------

cat > "$WORK/authproxy.json" <<EOF
{
  "dns_remap": {"$NAME": "127.0.0.1"},
  "upstream_ca_file": "$PKI/ca.crt"
}
EOF
chmod 600 "$WORK/authproxy.json"
start_serve "$AP_CTL" || { tail -5 "$WORK/logs/authproxy.out" >&2; die "authproxy did not start"; }
KEY=$(cat "$WORK/state/bootstrap.key")
CTL="http://127.0.0.1:$AP_CTL"

{
    echo "META date=$(date -u +%Y-%m-%dT%H:%MZ) nproc=$(nproc) runs=$RUNS rounds=$ROUNDS duration=$DUR warmup=$WARM conns=$CONNS"
    echo "META kernel=$(uname -r) cgroup=$(stat -fc %T /sys/fs/cgroup) commit=$(tree_id)"
} >> "$RESULTS"

# --- 1. start to first command ------------------------------------------------------------------

if [ "${SB_SKIP_START:-0}" != 1 ]; then
    quiet
    note "load before the start-up runs: $LOAD cores"
    echo "LOAD start=$LOAD" >> "$RESULTS"
    note "a. sandbox run -- true and -- echo up, $RUNS times each"
    $TIMING run --bin "$BIN" --state-dir "$WORK/run-state" --config "$WORK/authproxy.json" \
        --runs "$RUNS" >> "$RESULTS" || note "sandbox run timing failed"
    note "b. API: create, first execute, delete; execute alone ($RUNS times each)"
    $TIMING api --control "$CTL" --key "$KEY" --runs "$RUNS" --daemon-log "$WORK/logs/authproxy.out" \
        >> "$RESULTS" || note "API timing failed"
    note "c. phases ($RUNS rounds)"
    "$PHASES" -n "$RUNS" >> "$RESULTS" || note "phase timing failed"
    note "d. phases again with $BG other sandbox networks up ($BG_RUNS rounds)"
    "$PHASES" -n "$BG_RUNS" -k "$BG" | sed "s/^PHASE /PHASE with${BG}_/" >> "$RESULTS" ||
        note "phase timing failed"
    quiet
    echo "LOAD start_end=$LOAD" >> "$RESULTS"
fi

# --- 2. intercepted HTTPS keep-alive vs direct ---------------------------------------------------

# lg_run SIDE ROUND CMD...: one loadgen run; appends its RESULT line (histogram left out) with
# side, round, the CPU seconds the proxy (the relay on the relay side) and nginx spent, the
# proxy's and nginx's CPU per request (warm-up included in both), and other_cores: what
# processes outside the benchmark used meanwhile (machine - proxy - nginx - client).
lg_run() {
    local side=$1 round=$2
    shift 2
    local c0 c1 n0 n1 m0 m1 w0 w1 line proxy_pid=$AP_PID
    [ "$side" = relay ] && proxy_pid=$RLY_PID
    c0=$(cpu_ticks "$proxy_pid"); n0=$(cpu_ticks $(nginx_pids)); m0=$(machine_ticks); w0=$(date +%s.%N)
    line=$("$@" 2>>"$WORK/logs/client.err" | grep '^RESULT' | tail -1 | sed 's/ hist=[^ ]*//')
    w1=$(date +%s.%N); m1=$(machine_ticks); n1=$(cpu_ticks $(nginx_pids)); c1=$(cpu_ticks "$proxy_pid")
    [ -n "$line" ] || line="RESULT failed=1"
    line="$line side=$side round=$round"
    line="$line $(echo "$line" | awk -v p=$((c1 - c0)) -v n=$((n1 - n0)) -v m=$((m1 - m0)) \
        -v h="$CLK_TCK" -v a="$w0" -v b="$w1" -v warm="$WARM" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        client = v["client_cpu"] * (v["secs"] + warm); all = v["requests_all"] > 0 ? v["requests_all"] : 1
        other = (m - p - n) / h - client; if (other < 0) other = 0
        printf "proxy_cpu_s=%.2f nginx_cpu_s=%.2f proxy_us_per_req=%.1f nginx_us_per_req=%.1f client_us_per_req=%.1f other_cores=%.2f",
               p / h, n / h, p / h / all * 1e6, n / h / all * 1e6, client / all * 1e6, other / (b - a) }')"
    echo "$line" >> "$RESULTS"
    echo "$line" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "  round %s %-12s %9s req/s  p50 %7s us  p99 %8s us  errors %s  proxy %s us/req  other load %s cores\n",
               v["round"], v["side"], v["rps"], v["p50_us"], v["p99_us"], v["errors"], v["proxy_us_per_req"], v["other_cores"] }' >&2
}

if [ "${SB_SKIP_TPUT:-0}" != 1 ]; then
    RULE='{"name": "bench", "match_hosts": ["'$NAME'"], "headers": [{"name": "Authorization", "type": "workspace_secret", "value": "Bearer {TOKEN}"}]}'
    SECRET=sbbench-$(openssl rand -hex 8)
    curl -s -o /dev/null -w '%{http_code}' -X PUT -H "x-api-key: $KEY" -H 'Content-Type: application/json' \
        --data '{"value": "'$SECRET'", "configs": [{"host": "'$NAME'"}]}' \
        "$CTL/api/v1/workspaces/current/secrets/TOKEN" | grep -q '^20' || die "cannot store the bench secret"
    read -r BOX_ID _ <<<"$($TIMING box --control "$CTL" --key "$KEY" --name tput \
        --body '{"proxy_config": {"rules": ['"$RULE"']}}')" || die "cannot create the box"
    SHORT=$(echo "$BOX_ID" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9' | cut -c1-10)
    BOX_NS=$(ip netns list | awk '{print $1}' | grep -- "^apbox.*-$SHORT\$" | head -1)
    [ -n "$BOX_NS" ] || die "cannot find the box's network namespace"
    note "box $BOX_ID, namespace $BOX_NS"
    got=$($TIMING exec --control "$CTL" --key "$KEY" --name tput --command \
        "curl -s --noproxy '*' --resolve $NAME:$NG_HTTPS:203.0.113.7 https://$NAME:$NG_HTTPS/check")
    [ "$got" = checked ] && grep -qx "Bearer $SECRET" "$WORK/logs/check.log" 2>/dev/null ||
        die "the box's request did not reach the origin with the credential ('$got')"
    note "inside the box, requests to $NAME get the credential (checked at the origin)"

    RLY_PID=
    if [ "${SB_RELAY:-1}" = 1 ]; then
        "$RELAY" --listen "$DIRECT_NET.1:$RLY_PORT" --upstream "127.0.0.1:$NG_HTTPS" -t 2 \
            --tls "$PKI/origin.crt" "$PKI/origin.key" --upstream-tls "$NAME" "$PKI/ca.crt" \
            > "$WORK/logs/relay.out" 2>&1 &
        RLY_PID=$!
        PIDS+=("$RLY_PID")
        got=
        for _ in $(seq 50); do
            got=$(ip netns exec "$DIRECT_NS" curl -s --max-time 5 --cacert "$PKI/ca.crt" \
                --resolve "$NAME:$RLY_PORT:$DIRECT_NET.1" "https://$NAME:$RLY_PORT/") && break
            kill -0 "$RLY_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [ "$got" = ok ]; then
            note "TLS relay on $DIRECT_NET.1:$RLY_PORT reaches the origin from $DIRECT_NS"
        else
            note "relay skipped: it did not answer ('$got'; $(tail -2 "$WORK/logs/relay.out" | tr '\n' ' '))"
            RLY_PID=
        fi
    fi

    common=(-c "$CONNS" -t 1 -d "$DUR" -w "$WARM" --tls --sni "$NAME" --host "$NAME:$NG_HTTPS")
    for round in $(seq "$ROUNDS"); do
        quiet
        lg_run direct "$round" timeout $((DUR + WARM + 60)) ip netns exec "$DIRECT_NS" "$LG" \
            --connect "$DIRECT_NET.1:$NG_HTTPS" --cafile "$PKI/ca.crt" "${common[@]}" --label direct
        quiet
        lg_run intercepted "$round" timeout $((DUR + WARM + 60)) ip netns exec "$BOX_NS" "$LG" \
            --connect "203.0.113.7:$NG_HTTPS" --cafile "$WORK/state/ca.crt" "${common[@]}" --label intercepted
        quiet
        lg_run jailed "$round" $TIMING exec --control "$CTL" --key "$KEY" --name tput \
            --timeout $((DUR + WARM + 60)) --command "$LG --connect 203.0.113.7:$NG_HTTPS \
            --cafile /etc/ssl/certs/ca-certificates.crt ${common[*]} --label jailed"
        [ -n "$RLY_PID" ] || continue
        quiet
        lg_run relay "$round" timeout $((DUR + WARM + 60)) ip netns exec "$DIRECT_NS" "$LG" \
            --connect "$DIRECT_NET.1:$RLY_PORT" --cafile "$PKI/ca.crt" "${common[@]}" --label relay
    done
fi

# --- report -------------------------------------------------------------------------------------

cp "$RESULTS" "$OUT/sandbox.txt"
python3 - "$RESULTS" <<'EOF' >&2
import re, statistics, sys
stats, tput, cpu = {}, {}, {}
for line in open(sys.argv[1]):
    if line.startswith("STAT ") or line.startswith("PHASE "):
        f = line.split()
        kv = dict(x.split("=") for x in f[2:])
        stats[f[1]] = kv
    elif line.startswith("RESULT ") and "side=" in line:
        kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
        if "rps" in kv:
            tput.setdefault(kv["side"], []).append(float(kv["rps"]))
            for k in ("client_us_per_req", "nginx_us_per_req", "proxy_us_per_req", "other_cores"):
                cpu.setdefault((kv["side"], k), []).append(float(kv.get(k, "nan")))
print("\ntimings (ms)                          median      p90      min      max")
for k, v in stats.items():
    print("  %-32s %8s %8s %8s %8s" % (k, v["median_ms"], v["p90_ms"], v["min_ms"], v["max_ms"]))
if tput:
    print("\nHTTPS keep-alive, requests/s per round")
    for side, xs in tput.items():
        print("  %-12s %s  median %.0f" % (side, " ".join("%.0f" % x for x in xs), statistics.median(xs)))
    # Round by round: each side against direct (the target's ratio), and authproxy against the
    # relay (the floor: the share of a do-nothing TLS relay's rate it reaches on the same path).
    for base, sides in (("direct", ("intercepted", "jailed", "relay")),
                        ("relay", ("intercepted", "jailed"))):
        b = tput.get(base)
        for side in sides:
            if b and tput.get(side):
                n = min(len(b), len(tput[side]))
                r = [tput[side][i] / b[i] for i in range(n)]
                print("  ratio %s/%s per round: %s (median %.2fx)" % (
                    side, base, " ".join("%.2f" % x for x in r), statistics.median(r)))
    # The throughput the CPU cost alone predicts when the two cores are the only limit: (client
    # + nginx CPU per request, direct) / (client + nginx + proxy CPU per request). Steadier than
    # the measured ratio when other load comes and goes.
    med = {k: statistics.median(v) for k, v in cpu.items()}
    print("  CPU per request (median of rounds): " + "; ".join(
        "%s client %.1f us, nginx %.1f us, proxy %.1f us, other load %.2f cores" % (
            side, med[(side, "client_us_per_req")], med[(side, "nginx_us_per_req")],
            med[(side, "proxy_us_per_req")], med[(side, "other_cores")])
        for side in tput if (side, "client_us_per_req") in med))
    if ("direct", "client_us_per_req") in med:
        base = med[("direct", "client_us_per_req")] + med[("direct", "nginx_us_per_req")]
        for side in ("intercepted", "jailed", "relay"):
            if (side, "client_us_per_req") in med:
                cost = sum(med[(side, k)] for k in ("client_us_per_req", "nginx_us_per_req",
                                                     "proxy_us_per_req"))
                print("  CPU-derived ratio %s/direct: %.2fx" % (side, base / cost))
EOF
note "raw results: build/bench/sandbox.txt"
exit 0
