# shellcheck shell=bash
# bench/lib.sh — setup shared by the benchmark scripts (run.sh, callbacks.sh, sandbox.sh,
# patch_latency.sh); sourced, not run: `. "$ROOT/bench/lib.sh"` once the script has set ROOT.
#
# The sourcing script sets LOG_TAG (prefix of die/note messages) and, where it differs from 1,
# DIE_STATUS (die's exit status); OUT, WORK, BIN, LG, AP_PORT and AP_CTL before calling what
# uses them. This file sets CLK_TCK and PIDS (processes to stop at exit) when sourced, PKI
# (make_pki), NGINX_PID (start_nginx) and AP_PID (start_serve).
# Nothing here measures anything: each script keeps its own measuring and reporting.

CLK_TCK=$(getconf CLK_TCK)
PIDS=()

# die MSG...: prints "LOG_TAG: MSG" on stderr and exits with DIE_STATUS (default 1).
die() { echo "$LOG_TAG: $*" >&2; exit "${DIE_STATUS:-1}"; }
# note MSG...: prints "LOG_TAG: MSG" on stderr.
note() { echo "$LOG_TAG: $*" >&2; }

# require_tools HINT TOOL...: dies unless every TOOL is on PATH; HINT (may be empty) is added
# to the message in parentheses.
require_tools() {
    local hint=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed${hint:+ ($hint)}"
    done
}

# make_work TEMPLATE SUBDIR...: makes WORK=mktemp -d TEMPLATE, mode 755 (nginx workers drop to
# nobody when started as root), with the SUBDIRs in it.
make_work() {
    local template=$1 d
    shift
    WORK=$(mktemp -d "$template")
    chmod 755 "$WORK"
    for d in "$@"; do
        mkdir -p "$WORK/$d"
    done
}

# stop_pids: kills every process in PIDS, then reaps each (errors ignored).
stop_pids() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# drop_work KEEP: removes WORK, or with KEEP=1 leaves it and says where it is.
drop_work() {
    if [ "$1" = 1 ]; then note "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}

# cleanup KEEP: stops every process in PIDS and removes WORK (KEEP=1 leaves it, says where).
cleanup() {
    stop_pids
    drop_work "$1"
}

# trap_exit CMD: runs CMD when the script exits; INT and TERM exit 130 (so CMD runs then too).
trap_exit() {
    # shellcheck disable=SC2064 # CMD is the script's text, meant to be evaluated at exit
    trap "$1" EXIT
    trap 'exit 130' INT TERM
}

# free_ports N: prints N distinct free TCP ports on 127.0.0.1 (bound together, then released).
free_ports() {
    python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

# wait_port PORT PID: true once something accepts on 127.0.0.1:PORT; false when PID exits or
# after 15 s.
wait_port() {
    local _
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# cpu_ticks PID...: prints the user+system clock ticks of the processes (all their threads) so
# far; PIDs that are gone count 0.
cpu_ticks() {
    local total=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        # after "pid (comm) ": field 3 is state, so utime/stime (fields 14/15) are 12th/13th here
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

# machine_ticks: prints the user+nice+system+steal clock ticks of the whole machine so far
# (interrupt time left out: loopback traffic puts softirq work there that belongs to no process).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $9; exit}' /proc/stat; }

# machine_load SECS: sleeps SECS seconds and prints the cores all processes used meanwhile
# (two decimals).
machine_load() {
    local t0 t1
    t0=$(machine_ticks)
    sleep "$1"
    t1=$(machine_ticks)
    awk -v d=$((t1 - t0)) -v h="$CLK_TCK" -v s="$1" 'BEGIN {printf "%.2f", d / h / s}'
}

# is_quiet LOAD: true when LOAD (cores) is under 0.25, the benches' bar for a quiet machine.
is_quiet() { awk -v l="$1" 'BEGIN {exit !(l < 0.25)}'; }

# needs_build OUT DEP...: true when OUT is not an executable or any DEP is newer than it.
needs_build() {
    local out=$1 dep
    shift
    [ -x "$out" ] || return 0
    for dep in "$@"; do
        [ "$dep" -nt "$out" ] && return 0
    done
    return 1
}

# bench_cc ARGS...: cc with the flags every bench program is built with (C11, -O2 -g, strict
# warnings as errors).
bench_cc() {
    cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes "$@"
}

# build_loadgen: builds LG from bench/loadgen.c when it is missing or older than its source;
# false when it does not compile.
build_loadgen() {
    needs_build "$LG" "$ROOT/bench/loadgen.c" || return 0
    note "building $LG"
    # shellcheck disable=SC2046 # pkg-config's flags are meant to split
    bench_cc -pthread "$ROOT/bench/loadgen.c" -o "$LG" $(pkg-config --cflags --libs openssl) -lm
}

# build_relay: builds RELAY from bench/relay.c when it is missing or older than its source;
# false when it does not compile.
build_relay() {
    needs_build "$RELAY" "$ROOT/bench/relay.c" || return 0
    note "building $RELAY"
    # shellcheck disable=SC2046 # pkg-config's flags are meant to split
    bench_cc -pthread "$ROOT/bench/relay.c" -o "$RELAY" $(pkg-config --cflags --libs openssl)
}

# make_pki CA_CN LEAF_CN EXT_LINE...: makes PKI=WORK/pki with a P-256 CA (ca.crt, ca.key, CN
# CA_CN) and a P-256 leaf origin.crt/origin.key (CN LEAF_CN, the EXT_LINEs as its extension
# file) signed by it, valid 2 days, files mode 644; dies when openssl fails.
make_pki() {
    local ca_cn=$1 leaf_cn=$2
    shift 2
    PKI=$WORK/pki
    mkdir -p "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=$ca_cn" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null ||
        die "openssl: cannot make the bench CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$leaf_cn" \
        -keyout "$PKI/origin.key" -out "$PKI/origin.csr" 2>/dev/null
    printf '%s\n' "$@" > "$PKI/ext.cnf"
    openssl x509 -req -in "$PKI/origin.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 2 -extfile "$PKI/ext.cnf" -out "$PKI/origin.crt" 2>/dev/null ||
        die "openssl: cannot sign the origin"
    chmod 644 "$PKI"/*
}

# write_nginx_conf_in DIR ERROR_LOG [WORKER_CONNECTIONS [RLIMIT_NOFILE]] < HTTP_BODY: writes
# DIR/nginx.conf: 2 workers (worker_connections default 10000, worker_rlimit_nofile default
# 20000, left out when empty), pid and temp paths under DIR, errors to ERROR_LOG, no access log,
# unlimited keep-alive, text/plain, and then stdin (upstreams, servers) as the rest of the http
# block.
write_nginx_conf_in() {
    local dir=$1 errlog=$2 conns=${3:-10000} nofile=${4-20000}
    mkdir -p "$dir/tmp"
    {
        echo "worker_processes 2;"
        [ -n "$nofile" ] && echo "worker_rlimit_nofile $nofile;"
        cat <<EOF
pid $dir/nginx.pid;
error_log $errlog warn;
events { worker_connections $conns; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
EOF
        cat
        echo "}"
    } > "$dir/nginx.conf"
}

# write_nginx_conf [WORKER_CONNECTIONS [RLIMIT_NOFILE]] < HTTP_BODY: the origin's config,
# WORK/nginx/nginx.conf (write_nginx_conf_in, errors to WORK/logs/nginx-error.log).
# shellcheck disable=SC2120 # both arguments are optional
write_nginx_conf() {
    write_nginx_conf_in "$WORK/nginx" "$WORK/logs/nginx-error.log" "$@"
}

# start_nginx PORT: starts nginx in the foreground on WORK/nginx/nginx.conf (output in
# WORK/logs), sets NGINX_PID, adds it to PIDS; false unless it listens on PORT.
start_nginx() {
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/logs/nginx-error.log" -g 'daemon off;' \
        > "$WORK/logs/nginx.out" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$1" "$NGINX_PID"
}

# nginx_pids: prints the nginx master's pid and its workers'.
nginx_pids() { echo "$NGINX_PID $(ps -o pid= --ppid "$NGINX_PID" | tr '\n' ' ')"; }

# start_serve WAIT_PORT [ARG...]: starts `BIN serve` with WORK/authproxy.json and WORK/state,
# proxy on AP_PORT, control on AP_CTL, --workers 2, the ARGs, an audit log, no upstream DNS
# (output appended to WORK/logs/authproxy.out); sets AP_PID, adds it to PIDS; false unless it
# listens on WAIT_PORT.
start_serve() {
    local port=$1
    shift
    "$BIN" serve --config "$WORK/authproxy.json" --state-dir "$WORK/state" \
        --listen-proxy "127.0.0.1:$AP_PORT" --listen-control "127.0.0.1:$AP_CTL" --workers 2 \
        "$@" --audit-log "$WORK/logs/audit.log" --upstream-dns 127.0.0.1:1 \
        >> "$WORK/logs/authproxy.out" 2>&1 &
    AP_PID=$!
    PIDS+=("$AP_PID")
    wait_port "$port" "$AP_PID"
}

# tree_id: prints `git describe --always --dirty` of ROOT's checkout, or "unknown".
tree_id() { git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown; }
