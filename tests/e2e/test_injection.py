"""Credential injection with real clients (SPEC §2, §3 step 3, §5 TLS).

The origin records every request's headers. The credential must arrive there exactly once,
and the client must never see the secret in anything it receives.
"""
import os
import subprocess

import requests

from conftest import client_env, header_rule
from helpers import client


def api_rule(hosts=("api.example.test",), **kw):
    return header_rule("api", hosts, [("Authorization", "workspace_secret", "Bearer {TEST_API_KEY}")],
                       **kw)


def test_curl_https_request_gets_the_credential_injected(stack, tmp_path):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule()]}, secrets={"TEST_API_KEY": key})
    p = subprocess.run(["curl", "-sS", "-i", "-v", "--max-time", "10", "--proxy", d.url,
                        "--cacert", stack.ca, "https://api.example.test/v1/models?limit=1"],
                       capture_output=True, env=client_env(str(tmp_path)), timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    assert b"HTTP/1.1 200" in p.stdout and b"ok from api.example.test" in p.stdout
    [req] = origin.snapshot()
    assert req.path == "/v1/models" and req.query == "limit=1"
    assert req.values("Authorization") == ["Bearer " + key]
    assert key.encode() not in p.stdout + p.stderr


def test_python_requests_gets_the_credential_injected(stack):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule()]}, secrets={"TEST_API_KEY": key})
    with requests.Session() as s:
        s.trust_env = False
        r = s.post("https://api.example.test/v1/chat", json={"q": "hi"}, proxies=d.proxies,
                   verify=stack.ca, timeout=10)
    assert r.status_code == 200
    assert r.text == "ok from api.example.test\n"
    [req] = origin.snapshot()
    assert req.method == "POST" and req.body == b'{"q": "hi"}'
    assert req.values("Authorization") == ["Bearer " + key]
    assert key not in r.text and all(key not in v for v in r.headers.values())


def test_git_clone_over_https_gets_the_credential_on_every_request(stack, tmp_path, git_repo):
    origin = stack.tls_origin("git.example.test", git=True)
    token = stack.secret("ghp-e2e")
    rule = header_rule("git", ["git.example.test"],
                       [("Authorization", "workspace_secret", "Bearer {GIT_TOKEN}")])
    d = stack.start({"rules": [rule]}, secrets={"GIT_TOKEN": token})
    env = client_env(str(tmp_path))
    env["GIT_SSL_CAINFO"] = stack.ca
    env["GIT_TRACE_CURL"] = "1"  # everything git receives goes to stderr: scanned below
    dest = tmp_path / "clone"
    p = subprocess.run(["git", "-c", "http.proxy=" + d.url, "clone",
                        "https://git.example.test/git/repo.git", str(dest)],
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode()[-4000:]
    assert (dest / "README").read_text() == git_repo.readme
    assert (dest / "blob.bin").stat().st_size == 300 * 1024
    reqs = origin.snapshot()
    assert any(r.method == "POST" and r.path.endswith("/git-upload-pack") for r in reqs), reqs
    for r in reqs:
        assert r.values("Authorization") == ["Bearer " + token], r
    assert token.encode() not in p.stdout + p.stderr


def test_sandbox_authorization_headers_are_replaced_by_exactly_one_credential(stack):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule()]}, secrets={"TEST_API_KEY": key})
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/v1/x",
                                headers=[("authorization", "Bearer sandbox-fake-1"),
                                         ("AUTHORIZATION", "Bearer sandbox-fake-2"),
                                         ("AuThOrIzAtIoN", "Basic c2FuZGJveDpmYWtl")])
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert "sandbox-fake" not in req.raw_head.decode("latin-1")
    assert key.encode() not in resp.received


def test_every_header_type_is_injected(stack):
    origin = stack.tls_origin("api.example.test")
    key, opaque = stack.secret(), stack.secret("opaque")
    rule = header_rule("api", ["api.example.test"], [
        ("Authorization", "workspace_secret", "Bearer {TEST_API_KEY}"),
        ("OpenAI-Organization", "plaintext", "org-123"),
        ("X-Extra", "opaque", opaque)])
    d = stack.start({"rules": [rule]}, secrets={"TEST_API_KEY": key})
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/",
                                headers=[("x-extra", "from-sandbox")])
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert req.values("OpenAI-Organization") == ["org-123"]
    assert req.values("X-Extra") == [opaque]


def test_match_paths_limits_injection_to_matching_paths(stack):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule(paths=["/v1/*"])]}, secrets={"TEST_API_KEY": key})
    a = client.https_request(d.port, "api.example.test", stack.ca, "/v1/deep/path?x=/v2/")
    b = client.https_request(d.port, "api.example.test", stack.ca, "/v2/other?x=/v1/",
                             headers=[("Authorization", "Bearer sandbox-own")])
    assert (a.status, b.status) == (200, 200), (a, b)
    ra, rb = origin.wait_requests(2)
    assert ra.values("Authorization") == ["Bearer " + key]
    # No rule matched: forwarded unchanged, the sandbox's own header included.
    assert rb.values("Authorization") == ["Bearer sandbox-own"]


def test_first_matching_rule_wins(stack):
    origin = stack.tls_origin("api.example.test")
    k1, k2 = stack.secret(), stack.secret()
    rules = [header_rule("disabled", ["api.example.test"], [("X-Key", "opaque", "never-" + k2)],
                         enabled=False),
             header_rule("specific", ["api.example.test"], [("X-Key", "workspace_secret", "{K1}")]),
             header_rule("wildcard", ["*.example.test"], [("X-Key", "workspace_secret", "{K2}")])]
    d = stack.start({"rules": rules}, secrets={"K1": k1, "K2": k2})
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/")
    assert resp.status == 200, resp
    assert origin.snapshot()[0].values("X-Key") == [k1]


def test_plain_http_with_allow_plaintext_gets_the_credential(stack):
    origin = stack.plain_origin("plain.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule(["plain.example.test"], allow_plaintext=True)]},
                    secrets={"TEST_API_KEY": key})
    with requests.Session() as s:
        s.trust_env = False
        r = s.get("http://plain.example.test/v1/x", proxies=d.proxies, timeout=10)
    assert r.status_code == 200
    [req] = origin.snapshot()
    assert req.path == "/v1/x"  # origin-form upstream, not the absolute form
    assert req.values("Authorization") == ["Bearer " + key]
    assert req.values("Host") == ["plain.example.test"]


def test_plain_http_matching_a_rule_without_allow_plaintext_is_refused(stack):
    origin = stack.plain_origin("plain.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule(["plain.example.test"])]}, secrets={"TEST_API_KEY": key})
    resp = client.http_request(d.port, "http://plain.example.test/v1/x", "plain.example.test")
    assert resp.status == 403, resp
    assert resp.text.startswith("refused: credentials are only injected over TLS"), resp
    assert origin.bytes_received == 0 and origin.accepts == 0
    assert key.encode() not in resp.received


def test_plain_http_without_a_matching_rule_is_forwarded_unchanged(stack):
    origin = stack.plain_origin("plain.example.test")
    d = stack.start({"rules": [api_rule(["api.example.test"])]},
                    secrets={"TEST_API_KEY": stack.secret()})
    resp = client.http_request(d.port, "http://plain.example.test/free?q=1", "plain.example.test",
                               headers=[("X-Mine", "kept")])
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.target == "/free?q=1"
    assert req.values("X-Mine") == ["kept"] and req.values("Authorization") == []


def test_connection_header_cannot_strip_the_injected_credential(stack):
    """Fields named in Connection are hop-by-hop and removed, but the injected header is added
    after that: the sandbox cannot make the proxy drop or duplicate the credential."""
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule()]}, secrets={"TEST_API_KEY": key})
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/",
                                headers=[("Connection", "keep-alive, Authorization, X-Hop"),
                                         ("Authorization", "Bearer sandbox-fake"), ("X-Hop", "1")])
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert req.values("X-Hop") == []


def test_proxy_authorization_is_not_forwarded_upstream(stack):
    origin = stack.plain_origin("plain.example.test")
    d = stack.start()
    resp = client.http_request(d.port, "http://plain.example.test/", "plain.example.test",
                               headers=[("Proxy-Authorization", "Basic c2FuZGJveDp0b2tlbg==")])
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.values("Proxy-Authorization") == []


def test_host_matching_is_case_insensitive(stack):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    d = stack.start({"rules": [api_rule(["API.Example.Test"])]}, secrets={"TEST_API_KEY": key})
    resp = client.https_request(d.port, "Api.EXAMPLE.test", stack.ca, "/")
    assert resp.status == 200, resp
    assert origin.snapshot()[0].values("Authorization") == ["Bearer " + key]


def test_legacy_inject_headers_rule_injects(stack):
    """SPEC §2: the legacy template format `"inject_headers": {"Authorization": "Bearer ${KEY}"}`."""
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    rule = {"name": "legacy", "match_hosts": ["api.example.test"],
            "inject_headers": {"Authorization": "Bearer ${TEST_API_KEY}", "X-Static": "plain"}}
    d = stack.start({"rules": [rule]}, secrets={"TEST_API_KEY": key})
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/")
    assert resp.status == 200, resp
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert req.values("X-Static") == ["plain"]


def test_http10_client_without_host_is_served(stack):
    origin = stack.plain_origin("plain.example.test")
    d = stack.start()
    conn = client.Conn(client.proxy_socket(d.port))
    conn.send(b"GET http://plain.example.test/old HTTP/1.0\r\nUser-Agent: ancient\r\n\r\n")
    resp = conn.read_response()
    closed = conn.closed_within(3.0)
    conn.close()
    assert resp.status == 200 and resp.body == b"ok from plain.example.test\n", resp
    assert closed, "an HTTP/1.0 request without keep-alive must end with the connection closed"
    [req] = origin.snapshot()
    assert req.path == "/old" and req.values("Host") == ["plain.example.test"]
