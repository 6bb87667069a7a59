#!/bin/sh
# `make valgrind`: the e2e suite with every authproxy process under valgrind memcheck
# (scripts/valgrind-authproxy.sh as AUTHPROXY_BIN), then scripts/valgrind-scan.py over the
# logs. The exit status is the scan's: a leak or memory error in src/ (or a crash) fails.
# Test failures are printed but do not decide it: under valgrind the daemon is 20-50x slower and
# some tests' own client timeouts are too tight for that (docs/SECURITY.md lists them).
#
#   scripts/valgrind-e2e.sh BINARY [pytest args...]   (default args: tests/e2e)
#
# BINARY is copied first, so a rebuild of build/ during the long run changes nothing.
# AUTHPROXY_E2E_TIMEOUT_SCALE (default 10) stretches the harness's own waits.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BINARY [pytest args...]" >&2; exit 2; }
bin=$1; shift
[ $# -ge 1 ] || set -- tests/e2e
out=$(dirname "$(realpath "$bin")")/valgrind
rm -rf "$out"
mkdir -p "$out/logs"
cp "$bin" "$out/authproxy"
start=$(date +%s)
cd "$root"
AUTHPROXY_VALGRIND_BIN="$out/authproxy" AUTHPROXY_VALGRIND_LOGDIR="$out/logs" \
AUTHPROXY_E2E_TIMEOUT_SCALE=${AUTHPROXY_E2E_TIMEOUT_SCALE:-10} \
AUTHPROXY_BIN="$root/scripts/valgrind-authproxy.sh" \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider -rfE "$@"
tests=$?
echo "valgrind: pytest exit status $tests after $(( $(date +%s) - start )) s"
/usr/bin/python3 "$root/scripts/valgrind-scan.py" "$out/logs" "$root/src"
