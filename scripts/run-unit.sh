#!/bin/sh
# Runs each cmocka unit-test binary given as an argument; prints one summary line.
# Exit status is non-zero if any binary failed.
set -u
total=0; failed=0; failed_names=""
for t in "$@"; do
    total=$((total + 1))
    if ! "$t"; then
        failed=$((failed + 1)); failed_names="$failed_names $(basename "$t")"
    fi
done
echo "unit: $((total - failed)) of $total test programs passed${failed_names:+ (failed:$failed_names)}"
[ "$failed" -eq 0 ]
