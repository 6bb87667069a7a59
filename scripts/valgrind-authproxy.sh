#!/bin/sh
# Runs authproxy under valgrind memcheck with the given arguments: a drop-in AUTHPROXY_BIN for
# the e2e suite (`make valgrind`), so every daemon and every fast-exit command (`ca cert`, ...)
# the tests start is checked. One log per process in AUTHPROXY_VALGRIND_LOGDIR (default
# build/valgrind), named <ns-timestamp>.<pid>.log so that pid reuse over a long run cannot make
# two processes share a file; scripts/valgrind-scan.py reads them afterwards.
#
#   AUTHPROXY_VALGRIND_BIN     the binary to run (default build/authproxy); point it at a private
#                              copy for long runs while others may rebuild build/
#   AUTHPROXY_VALGRIND_LOGDIR  where the logs go
#   AUTHPROXY_VALGRIND_OPTS    extra valgrind options, e.g. --track-origins=yes
#
# Leaks of kind definite/indirect count as errors and make the process exit 99, so the e2e
# teardown's "exit status 0 after SIGTERM" check also fails on them. Children forked by the jail
# are silenced: between their clone and exec they run in other namespaces (pid 1, a pivoted
# root) and _exit with the parent's heap still mapped, so a leak report from them means nothing;
# what they exec runs natively (no --trace-children).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${AUTHPROXY_VALGRIND_BIN:-$root/build/authproxy}
logdir=${AUTHPROXY_VALGRIND_LOGDIR:-$root/build/valgrind}
mkdir -p "$logdir"
exec valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --track-fds=no \
    --num-callers=40 --fullpath-after= --child-silent-after-fork=yes --vgdb=no \
    --suppressions="$root/scripts/valgrind.supp" ${AUTHPROXY_VALGRIND_OPTS:-} \
    --log-file="$logdir/$(date +%s%N).%p.log" "$bin" "$@"
