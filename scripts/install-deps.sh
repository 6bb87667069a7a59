#!/bin/sh
# Installs the Debian packages authproxy needs to build, run and test, if any is missing.
# Idempotent: when everything is present it only checks (dpkg -s) and prints nothing.
set -eu
PKGS="build-essential pkg-config libssl-dev libevent-dev libjansson-dev libsqlite3-dev libpq-dev
      libnftables-dev libcmocka-dev python3 python3-pytest python3-requests python3-cryptography
      python3-websockets python3-botocore curl git ca-certificates openssl clang nginx-light wrk iproute2 nftables gh valgrind"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
