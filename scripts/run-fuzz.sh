#!/bin/sh
# Builds and runs the libFuzzer harnesses in fuzz/.
#
#   scripts/run-fuzz.sh            every fuzz/fuzz_*.c
#   scripts/run-fuzz.sh http1 ...  only fuzz/fuzz_http1.c, ...
#
# Convention for a harness fuzz/fuzz_<name>.c:
#   - comment lines "// fuzz-sources: src/a.c src/b.c" near the top list the src/*.c files it
#     links (never src/main.c); several such lines add up, so a long list survives clang-format;
#   - optionally "// fuzz-pkgs: openssl libevent" lists the pkg-config packages it needs
#     (default: openssl libevent jansson);
#   - optionally fuzz/<name>.dict is passed as its libFuzzer dictionary;
#   - its invariants use CHECK from fuzz/fuzz.h (abort with file, line and condition);
#   - its seed corpus is fuzz/corpus/<name>/ (committed). New inputs found while fuzzing go to
#     build/fuzz/corpus-<name>/ (not committed); crashes to build/fuzz/crash-<name>-*.
#
# Environment: FUZZ_SECONDS (default 30) per harness, FUZZ_CC (default clang), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-max_len=8192").
# Exit status is non-zero if any harness failed to build or found a crash.
set -u
cd "$(dirname "$0")/.." || exit 1

SECS=${FUZZ_SECONDS:-30}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
DEFAULT_PKGS="openssl libevent jansson"
mkdir -p "$OUT"

if [ $# -gt 0 ]; then
    harnesses=""
    for n in "$@"; do harnesses="$harnesses fuzz/fuzz_$n.c"; done
else
    harnesses=$(ls fuzz/fuzz_*.c 2>/dev/null)
fi
[ -n "$harnesses" ] || { echo "run-fuzz: no harnesses in fuzz/"; exit 0; }

failed=""
for h in $harnesses; do
    name=$(basename "$h" .c)
    name=${name#fuzz_}
    if [ ! -f "$h" ]; then
        echo "run-fuzz: $h: no such harness"; failed="$failed $name"; continue
    fi
    srcs=$(sed -n "s|^//[[:space:]]*fuzz-sources:[[:space:]]*||p" "$h" | tr "\n" " ")
    pkgs=$(sed -n 's|^//[[:space:]]*fuzz-pkgs:[[:space:]]*||p' "$h" | head -n 1)
    [ -n "$pkgs" ] || pkgs=$DEFAULT_PKGS
    bin="$OUT/fuzz_$name"
    echo "run-fuzz: building $name from $h $srcs"
    # shellcheck disable=SC2086 # word splitting of the source and flag lists is intended
    if ! $CC -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
            -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -Isrc $(pkg-config --cflags $pkgs) "$h" $srcs $(pkg-config --libs $pkgs) -o "$bin"; then
        echo "run-fuzz: $name: build failed"; failed="$failed $name"; continue
    fi
    dict=""
    [ -f "fuzz/$name.dict" ] && dict="-dict=fuzz/$name.dict"
    seeds="fuzz/corpus/$name"
    work="$OUT/corpus-$name"
    mkdir -p "$seeds" "$work"
    echo "run-fuzz: running $name for ${SECS}s"
    # The first directory receives new inputs; the committed seeds are only read.
    # shellcheck disable=SC2086
    if ! "$bin" -max_total_time="$SECS" -print_final_stats=1 \
            -artifact_prefix="$OUT/crash-$name-" $dict ${FUZZ_ARGS:-} "$work" "$seeds"; then
        echo "run-fuzz: $name: FAILED (artifacts: $OUT/crash-$name-*)"
        failed="$failed $name"
    fi
done

if [ -n "$failed" ]; then
    echo "run-fuzz: failed:$failed"
    exit 1
fi
echo "run-fuzz: all harnesses passed"
