#!/bin/sh
# `make run`: starts a demo origin (api.example.test, on loopback) and authproxy with
# examples/demo.json and the default state dir, and prints how to try it. Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
BIN=build/authproxy
STATE=./var/authproxy
DEMO=./var/demo
mkdir -p "$DEMO"
chmod 700 "$DEMO"
if [ ! -f "$DEMO/origin.crt" ]; then
    # A private CA for the demo origin; authproxy trusts it through upstream_ca_file.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=authproxy demo origin CA" -keyout "$DEMO/ca.key" -out "$DEMO/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api.example.test" \
        -keyout "$DEMO/origin.key" -out "$DEMO/origin.csr" 2>/dev/null
    printf 'subjectAltName=DNS:api.example.test,DNS:uploads.example.test\n' > "$DEMO/ext.cnf"
    openssl x509 -req -in "$DEMO/origin.csr" -CA "$DEMO/ca.crt" -CAkey "$DEMO/ca.key" \
        -CAcreateserial -days 825 -extfile "$DEMO/ext.cnf" -out "$DEMO/origin.crt" 2>/dev/null
fi
/usr/bin/python3 scripts/demo-origin.py --port 9443 --cert "$DEMO/origin.crt" --key "$DEMO/origin.key" &
ORIGIN=$!
trap 'kill $ORIGIN 2>/dev/null || true' EXIT INT TERM
chmod 600 examples/demo.json  # it holds a (demo) secret; the daemon warns otherwise
"$BIN" ca cert --state-dir "$STATE" > var/authproxy-ca.crt
cat <<MSG

authproxy is starting with examples/demo.json (state in $STATE, CA generated there).
A demo origin for api.example.test runs on 127.0.0.1:9443 (dns_remap sends the name there).

Try, in another shell:

  curl --proxy http://127.0.0.1:8080 --cacert var/authproxy-ca.crt https://api.example.test/v1/models
      # the origin reports an Authorization header it received (shown as a fingerprint):
      # authproxy injected it; the client never held the token
  curl --proxy http://127.0.0.1:8080 --cacert var/authproxy-ca.crt https://evil.example.test/
      # 403 denied by deny_list
  tail -f var/authproxy/audit.log
      # one JSON line per request: decision, rule, injected header names (never values)

The control API listens on 127.0.0.1:8081; the default workspace's API key is written to
$STATE/bootstrap.key at first start:

  curl -H "x-api-key: \$(cat $STATE/bootstrap.key)" http://127.0.0.1:8081/v2/sandboxes/boxes
      # see README.md for secrets, sandboxes and their proxy credentials

Edit examples/demo.json and send SIGHUP (kill -HUP \$(pgrep -f 'authproxy serve')) to reload.
Ctrl-C stops everything.

MSG
"$BIN" serve --config examples/demo.json --state-dir "$STATE"
