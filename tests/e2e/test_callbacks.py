"""Credential callbacks (SPEC §3 step 4, §4; issue 5): the proxy asks a user's endpoint for the
headers of a request, signs the question, caches the answer for ttl_seconds with one call per
key however many requests miss at once, and fails closed — 502 "callback resolution failed",
nothing injected, nothing cached — on any answer but a well-formed 2xx.

The callback endpoint is a real HTTP server on loopback (helpers/callback_server.py) that counts
its calls; the signature is checked with the hosted product's own SDK verifier (npm langsmith,
SandboxTokenVerifier.verifyCallback) against authproxy's JWKS endpoint."""
import base64
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest
import requests

from conftest import SESSION_SECRETS, client_env, header_rule
from helpers.callback_server import CallbackServer
from helpers.control import ControlDaemon

HOST = "api.example.test"


@pytest.fixture
def cbs():
    server = CallbackServer()
    yield server
    server.close()


def callback(url, hosts=(HOST,), ttl=60, full_request=False, request_headers=(), **extra):
    cb = {"match_hosts": list(hosts), "url": url, "ttl_seconds": ttl,
          "full_request": full_request,
          "request_headers": [{"name": n, "type": t, "value": v} for n, t, v in request_headers]}
    cb.update(extra)
    return cb


def start(stack, proxy_config, limits=None, workers=2):
    """A daemon with the config file's policy and its control API (for the JWKS)."""
    cfg = stack.config(proxy_config, limits=limits)
    d = ControlDaemon(stack.binary, os.path.join(stack.tmp, "daemon%d" % len(stack.daemons)),
                      stack.dns.addr, cfg, workers=workers)
    stack.daemons.append(d)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    stack.ca = d.ca_path()
    return d


def get(stack, d, path="/v1/x", method="GET", data=None, headers=None, host=HOST):
    with requests.Session() as s:
        s.trust_env = False
        return s.request(method, "https://%s%s" % (host, path), data=data, headers=headers,
                         proxies=d.proxies, verify=stack.ca, timeout=30)


def test_callback_headers_are_injected_and_the_client_never_sees_them(stack, cbs):
    origin = stack.tls_origin(HOST)
    token = stack.secret("cb-token")
    cbs.headers = {"Authorization": "Bearer " + token, "X-Tenant": "t-1"}
    d = start(stack, {"callbacks": [callback(cbs.url())]})
    r = get(stack, d, "/v1/models?limit=2")
    assert r.status_code == 200, r.text
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + token]
    assert req.values("X-Tenant") == ["t-1"]
    assert token not in r.text and all(token not in v for v in r.headers.values())
    [call] = cbs.snapshot()
    assert call.path == "/creds"
    body = call.json
    assert body == {"host": HOST, "port": 443, "identity": {"tenant_id": "", "sandbox_id": ""}}
    assert call.headers["content-type"] == "application/json"
    [rec] = d.wait_audit(lambda r: r.get("host") == HOST and r.get("status") == 200)
    assert rec["decided_by"] == "callback" and rec["decision"] == "allowed"
    assert sorted(rec["injected_headers"]) == ["Authorization", "X-Tenant"]


def test_injected_callback_header_replaces_what_the_sandbox_sent(stack, cbs):
    origin = stack.tls_origin(HOST)
    token = stack.secret("cb-token")
    cbs.headers = {"Authorization": "Bearer " + token}
    d = start(stack, {"callbacks": [callback(cbs.url())]})
    r = get(stack, d, headers={"authorization": "Bearer sandbox-forged"})
    assert r.status_code == 200
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + token]


def test_answers_are_cached_per_host_and_port_and_sandbox(stack, cbs):
    origin = stack.tls_origin(HOST, "other.example.test")
    cbs.headers = {"X-Cred": "c1"}
    d = start(stack, {"callbacks": [callback(cbs.url(), hosts=[HOST, "other.example.test"])]})
    for _ in range(5):
        assert get(stack, d, "/a").status_code == 200
    assert cbs.count() == 1
    assert get(stack, d, "/b", host="other.example.test").status_code == 200
    assert cbs.count() == 2, "another host is another key"
    assert [c.json["host"] for c in cbs.snapshot()] == [HOST, "other.example.test"]
    assert all(r.values("X-Cred") == ["c1"] for r in origin.snapshot())


def test_cold_cache_storm_makes_exactly_one_call(stack, cbs):
    """200 concurrent requests for one key on a cold cache: one callback, all 200 served with
    its answer (the callback answers slowly so every request misses while it runs)."""
    origin = stack.plain_origin(HOST)
    cbs.delay = 1.0
    cbs.headers = {"X-Cred": "storm"}
    d = start(stack, {"callbacks": [callback(cbs.url(), allow_plaintext=True)]})
    n = 200
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        with requests.Session() as s:
            s.trust_env = False
            barrier.wait(10)
            try:
                results[i] = s.get("http://%s/storm/%d" % (HOST, i), proxies=d.proxies,
                                   timeout=60).status_code
            except requests.RequestException as e:
                results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [200] * n
    assert cbs.count() == 1
    reqs = origin.wait_requests(n)
    assert len(reqs) == n and all(r.values("X-Cred") == ["storm"] for r in reqs)


@pytest.mark.parametrize("mode", ["status-500", "status-401", "status-302", "malformed",
                                  "headers-not-object", "header-not-string", "no-headers",
                                  "header-with-crlf", "timeout", "refused"])
def test_every_failure_gives_502_injects_nothing_and_is_not_cached(stack, cbs, mode):
    origin = stack.tls_origin(HOST)
    url = cbs.url()
    if mode.startswith("status-"):
        cbs.mode, cbs.status = "status", int(mode.split("-")[1])
    elif mode == "malformed":
        cbs.mode = "malformed"
    elif mode == "headers-not-object":
        cbs.mode, cbs.raw = "shape", {"headers": [["Authorization", "Bearer x"]]}
    elif mode == "header-not-string":
        cbs.mode, cbs.raw = "shape", {"headers": {"Authorization": 42}}
    elif mode == "no-headers":
        cbs.mode, cbs.raw = "shape", {"Authorization": "Bearer x"}
    elif mode == "header-with-crlf":
        cbs.mode, cbs.raw = "shape", {"headers": {"X-A": "a\r\nX-Injected: 1"}}
    elif mode == "timeout":
        cbs.mode = "hang"
    elif mode == "refused":
        url = "http://127.0.0.1:1/creds"
    d = start(stack, {"callbacks": [callback(url)]}, limits={"callback_timeout_ms": 1000})
    for attempt in range(2):
        r = get(stack, d)
        assert r.status_code == 502, (attempt, r.status_code, r.text)
        assert r.text.strip() == "callback resolution failed"
    assert origin.snapshot() == [], "nothing may be forwarded without its credential"
    if mode != "refused":
        assert cbs.count() == 2, "a failure is not cached: the second request asks again"
    recs = [r for r in d.audit_records() if r.get("host") == HOST]
    assert len(recs) == 2 and all(r["status"] == 502 and r["decided_by"] == "callback"
                                  and r["injected_headers"] == [] for r in recs)


def test_a_rule_for_the_host_suppresses_the_callback_even_on_another_path(stack, cbs):
    origin = stack.tls_origin(HOST)
    rule = header_rule("static", [HOST], [("X-Static", "plaintext", "s")], paths=["/only/*"])
    d = start(stack, {"rules": [rule], "callbacks": [callback(cbs.url())]})
    assert get(stack, d, "/only/here").status_code == 200
    assert get(stack, d, "/elsewhere").status_code == 200
    assert cbs.count() == 0
    a, b = origin.snapshot()
    assert a.values("X-Static") == ["s"] and b.values("X-Static") == []


def test_first_matching_callback_wins(stack, cbs):
    stack.tls_origin(HOST)
    other = CallbackServer()
    try:
        d = start(stack, {"callbacks": [callback(cbs.url("/first"), hosts=["*.example.test"]),
                                        callback(other.url("/second"), hosts=[HOST])]})
        assert get(stack, d).status_code == 200
        assert cbs.count() == 1 and other.count() == 0
    finally:
        other.close()


def test_request_headers_are_attached_and_never_logged(stack, cbs):
    stack.tls_origin(HOST)
    shared = stack.secret("shared")
    d = start(stack, {"callbacks": [callback(cbs.url(), request_headers=[
        ("X-Shared-Secret", "opaque", shared), ("X-Plain", "plaintext", "p")])]})
    assert get(stack, d).status_code == 200
    [call] = cbs.snapshot()
    assert call.headers["x-shared-secret"] == shared and call.headers["x-plain"] == "p"
    # (the session-wide leak check scans every daemon log for `shared` at teardown)


def test_full_request_describes_the_request_and_keys_the_cache_by_method_and_path(stack, cbs):
    stack.tls_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url(), full_request=True)]})
    body = b'{"prompt": "hello"}'
    r = get(stack, d, "/v1/chat?x=1&y=2", method="POST", data=body,
            headers={"Content-Type": "application/json", "X-Trace": "t1"})
    assert r.status_code == 200
    [call] = cbs.snapshot()
    req = call.json["request"]
    assert req["method"] == "POST" and req["scheme"] == "https" and req["host"] == HOST
    assert req["url"] == "https://%s/v1/chat?x=1&y=2" % HOST
    assert req["path"] == "/v1/chat" and req["query"] == "x=1&y=2"
    assert req["headers"]["content-type"] == ["application/json"]
    assert req["headers"]["x-trace"] == ["t1"]
    assert base64.b64decode(req["body_base64"]) == body and req["body_truncated"] is False
    # Same method and path, another query: cached. Another path or method: asked again.
    assert get(stack, d, "/v1/chat?z=3", method="POST", data=b"{}").status_code == 200
    assert cbs.count() == 1
    assert get(stack, d, "/v1/other", method="POST", data=b"{}").status_code == 200
    assert get(stack, d, "/v1/chat", method="GET").status_code == 200
    assert cbs.count() == 3


def test_full_request_body_is_capped_and_marked_truncated(stack, cbs):
    origin = stack.tls_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url(), full_request=True)]})
    big = os.urandom(100 * 1024)
    r = get(stack, d, "/upload", method="PUT", data=big)
    assert r.status_code == 200
    [call] = cbs.snapshot()
    req = call.json["request"]
    assert req["body_truncated"] is True
    assert base64.b64decode(req["body_base64"]) == big[:64 * 1024]
    [fwd] = origin.snapshot()
    assert fwd.body == big, "the origin still gets the whole body"


def test_plain_http_is_refused_unless_the_callback_allows_it(stack, cbs):
    origin = stack.plain_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url())]})
    with requests.Session() as s:
        s.trust_env = False
        r = s.get("http://%s/x" % HOST, proxies=d.proxies, timeout=10)
    assert r.status_code == 403
    assert cbs.count() == 0 and origin.snapshot() == []


def test_ttl_expiry_makes_a_second_call(stack, cbs):
    """ttl_seconds is at least 60 (SPEC §4), so this test waits a minute."""
    stack.tls_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url(), ttl=60)]})
    assert get(stack, d).status_code == 200
    time.sleep(30)
    assert get(stack, d).status_code == 200
    assert cbs.count() == 1, "still fresh after 30 s"
    time.sleep(31)
    assert get(stack, d).status_code == 200
    assert cbs.count() == 2, "expired after 60 s: asked again"


# -- signatures ---------------------------------------------------------------------------------

def verify_with_sdk(sdk_dir, d, call, aud):
    inp = json.dumps({"jwks_url": d.control_url + "/.well-known/jwks.json",
                      "signature": call.headers.get("x-langsmith-signature-jwt", ""),
                      "body_base64": base64.b64encode(call.body).decode(), "aud": aud})
    p = subprocess.run(["node", "verify_callback.mjs"], cwd=sdk_dir, input=inp.encode(),
                       capture_output=True, timeout=60)
    lines = p.stdout.decode().strip().splitlines()
    assert lines, "verify_callback.mjs printed nothing: %s" % p.stderr.decode()[-2000:]
    return json.loads(lines[-1])


def test_the_official_sdk_verifier_accepts_the_signature_and_rejects_an_altered_body(
        stack, cbs, sdk_dir):
    stack.tls_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url(), full_request=True)]})
    assert get(stack, d, "/v1/x?q=1").status_code == 200
    [call] = cbs.snapshot()
    ok = verify_with_sdk(sdk_dir, d, call, cbs.url())
    assert ok["ok"], ok
    assert ok["payload"]["host"] == HOST and ok["payload"]["request"]["path"] == "/v1/x"
    tampered = json.loads(call.body)
    tampered["host"] = "evil.example.test"
    call.body = json.dumps(tampered).encode()
    bad = verify_with_sdk(sdk_dir, d, call, cbs.url())
    assert not bad["ok"] and "body does not match" in bad["error"]
    wrong_aud = verify_with_sdk(sdk_dir, d, cbs.snapshot()[0], "https://other.example/creds")
    assert not wrong_aud["ok"] and "audience" in wrong_aud["error"]


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def test_signature_claims_and_jwks_shape(stack, cbs):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    stack.tls_origin(HOST)
    d = start(stack, {"callbacks": [callback(cbs.url())]})
    assert get(stack, d).status_code == 200
    [call] = cbs.snapshot()
    token = call.headers["x-langsmith-signature-jwt"]
    h64, c64, s64 = token.split(".")
    header, claims = json.loads(b64url_decode(h64)), json.loads(b64url_decode(c64))
    assert header["alg"] == "EdDSA" and header["typ"] == "JWT"
    assert claims["sub"] == "langsmith-sandbox-callback"
    assert claims["aud"] == cbs.url() and claims["iss"] == d.control_url
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - time.time()) < 30
    assert claims["body_sha256"] == hashlib.sha256(call.body).hexdigest()
    jwks = requests.get(d.control_url + "/.well-known/jwks.json", timeout=10).json()
    [key] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    assert key["use"] == "sig" and set(key) == {"kty", "crv", "kid", "x", "use", "alg"}
    Ed25519PublicKey.from_public_bytes(b64url_decode(key["x"])).verify(
        b64url_decode(s64), ("%s.%s" % (h64, c64)).encode())


def test_signing_key_rotation_keeps_the_old_key_published(stack, cbs, sdk_dir):
    stack.tls_origin(HOST, "other.example.test")
    d = start(stack, {"callbacks": [callback(cbs.url(), hosts=[HOST, "other.example.test"])]})
    assert get(stack, d).status_code == 200
    before = cbs.snapshot()[0]
    p = d.cli("keys", "rotate-signing")
    assert p.returncode == 0, p.stderr.decode()
    assert get(stack, d, host="other.example.test").status_code == 200
    after = cbs.snapshot()[1]
    kid = lambda c: json.loads(b64url_decode(c.headers["x-langsmith-signature-jwt"].split(".")[0]))["kid"]
    assert kid(before) != kid(after), "signed with the new key after the rotation"
    kids = [k["kid"] for k in requests.get(d.control_url + "/.well-known/jwks.json",
                                           timeout=10).json()["keys"]]
    assert kids[0] == kid(after) and kid(before) in kids
    # Both signatures verify with the official SDK against the published set.
    assert verify_with_sdk(sdk_dir, d, before, cbs.url())["ok"]
    assert verify_with_sdk(sdk_dir, d, after, cbs.url())["ok"]


def test_callback_to_an_https_endpoint_is_verified(stack, cbs):
    """The callback client uses the same verified TLS as the data path: an endpoint whose
    certificate is not trusted fails closed."""
    stack.tls_origin(HOST)
    good = stack.tls_origin("other.example.test")
    good.route("/creds", lambda o, conn, req, keep: o.send(
        conn, 200, [("Content-Type", "application/json"), ("Content-Length", "37")],
        b'{"headers": {"X-From": "https-good"}}', keep))
    bad = stack.tls_origin("deny.example.test", cert="untrusted")
    d = start(stack, {"callbacks": [
        callback("https://other.example.test/creds", hosts=[HOST]),
        callback("https://deny.example.test/creds", hosts=["allowed.example.test"])]})
    r = get(stack, d)
    assert r.status_code == 200
    stack.tls_origin("allowed.example.test")
    d2 = start(stack, {"callbacks": [
        callback("https://deny.example.test/creds", hosts=["allowed.example.test"])]})
    r = get(stack, d2, host="allowed.example.test")
    assert r.status_code == 502 and r.text.strip() == "callback resolution failed"
    assert bad.snapshot() == []
