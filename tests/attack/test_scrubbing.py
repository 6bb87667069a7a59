"""Credential echo: the sandbox asks an origin that reflects request headers (httpbin's /headers,
a debug endpoint, an error page) to hand it the credential the proxy injected. The proxy
redacts every injected secret value — and the token after its auth scheme, and the decoded
password of Basic credentials — from the response head and from identity-encoded bodies, with
'*' of the same length so framing stays valid, also when the value is split across reads.

Each probe asserts the secret is absent from everything the client received and that the
response is otherwise intact (same length, parseable)."""
import base64
import json
import time

import requests

from e2e_conftest import header_rule
from helpers.origin import Origin

HOST = "api.example.test"


def echo_json(origin, conn, req, keep):
    body = json.dumps({"headers": dict(req.headers), "path": req.path}).encode()
    return Origin.send(conn, 200, [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(body)))], body, keep)


def echo_in_header(origin, conn, req, keep):
    return Origin.send(conn, 200, [("X-Echo-Authorization", req.header("Authorization")),
                                   ("Content-Length", "2")], b"ok", keep)


def echo_chunked_split(origin, conn, req, keep):
    """The credential split across two TCP writes (and two chunks' worth of time)."""
    auth = req.header("Authorization").encode()
    half = len(auth) // 2
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    part1 = b"you sent: " + auth[:half]
    part2 = auth[half:] + b" (end)"
    data = part1 + part2
    conn.sendall(b"%x\r\n" % len(data) + part1)
    time.sleep(0.2)
    conn.sendall(part2 + b"\r\n0\r\n\r\n")
    return keep


def echo_length_split(origin, conn, req, keep):
    auth = req.header("Authorization").encode()
    body = b"token=" + auth.split(b" ", 1)[1] + b";"
    cut = len(body) // 2
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:cut])
    time.sleep(0.2)
    conn.sendall(body[cut:])
    return keep


def echo_gzip(origin, conn, req, keep):
    import gzip
    body = gzip.compress(req.header("Authorization").encode())
    return Origin.send(conn, 200, [("Content-Encoding", "gzip"),
                                   ("Content-Length", str(len(body)))], body, keep)


def sse_with_secret_prefix(origin, conn, req, keep):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(3):
        ev = b"data: event %d\n\n" % i
        conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        time.sleep(0.3)
    conn.sendall(b"0\r\n\r\n")
    return keep


def origin_with_routes(stack):
    o = stack.tls_origin(HOST)
    for path, fn in (("/headers", echo_json), ("/hdr", echo_in_header),
                     ("/chunked", echo_chunked_split), ("/split", echo_length_split),
                     ("/gzip", echo_gzip), ("/sse", sse_with_secret_prefix)):
        o.route(path, fn)
    return o


def get(stack, d, path):
    with requests.Session() as s:
        s.trust_env = False
        return s.get("https://%s%s" % (HOST, path), proxies=d.proxies, verify=stack.ca,
                     timeout=20)


def secret_stack(stack):
    key = stack.secret("sk-echo")
    origin_with_routes(stack)
    rule = header_rule("api", [HOST], [("Authorization", "workspace_secret", "Bearer {KEY}"),
                                       ("X-Org", "plaintext", "org-visible-123")])
    d = stack.start({"rules": [rule]}, secrets={"KEY": key})
    return d, key


def test_an_echoed_request_header_is_redacted_from_a_json_body(stack):
    d, key = secret_stack(stack)
    r = get(stack, d, "/headers")
    assert r.status_code == 200
    assert key not in r.text
    echoed = r.json()["headers"]
    assert echoed["Authorization"] == "*" * len("Bearer " + key)
    assert echoed["X-Org"] == "org-visible-123", "plaintext values are not credentials"


def test_an_echoed_credential_is_redacted_from_response_headers(stack):
    d, key = secret_stack(stack)
    r = get(stack, d, "/hdr")
    assert r.status_code == 200 and r.text == "ok"
    assert key not in r.headers["X-Echo-Authorization"]
    assert set(r.headers["X-Echo-Authorization"]) == {"*"}


def test_a_credential_split_across_reads_is_still_redacted(stack):
    d, key = secret_stack(stack)
    for path in ("/split", "/chunked"):
        r = get(stack, d, path)
        assert r.status_code == 200, path
        assert key not in r.text and key[:len(key) // 2 + 4] not in r.text, (path, r.text)
    r = get(stack, d, "/split")
    assert r.text == "token=%s;" % ("*" * len(key))


def test_basic_credentials_are_redacted_in_every_form(stack):
    token = stack.secret("ghp_e2e")
    basic = base64.b64encode(("x-access-token:" + token).encode()).decode()
    o = origin_with_routes(stack)
    o.route("/decoded", lambda origin, conn, req, keep: Origin.send(
        conn, 200, [("Content-Length", str(len(token) + 24))],
        ("user x-access-token pw %s" % token).encode(), keep))
    rule = header_rule("git", [HOST], [("Authorization", "opaque", "Basic " + basic)])
    d = stack.start({"rules": [rule]})
    for path in ("/headers", "/decoded"):
        r = get(stack, d, path)
        assert token not in r.text and basic not in r.text, (path, r.text)


def test_compressed_bodies_are_not_inspected_but_headers_are(stack):
    """A documented limit (docs/SECURITY.md): gzip bodies pass unchanged."""
    d, key = secret_stack(stack)
    r = get(stack, d, "/gzip")
    assert r.status_code == 200 and r.text == "Bearer " + key  # requests decompresses


def test_streamed_events_are_not_held_back(stack):
    """Redaction holds back only a tail that could begin a credential, so SSE keeps flowing
    event by event through a rule that injects one."""
    d, key = secret_stack(stack)
    times = []
    with requests.Session() as s:
        s.trust_env = False
        with s.get("https://%s/sse" % HOST, proxies=d.proxies, verify=stack.ca, stream=True,
                   timeout=20) as r:
            start = time.monotonic()
            for line in r.iter_lines():
                if line.startswith(b"data:"):
                    times.append(time.monotonic() - start)
    assert len(times) == 3
    assert times[0] < 0.25 and times[1] > 0.2, times


def test_callback_credentials_are_redacted_too(stack):
    from helpers.callback_server import CallbackServer
    token = stack.secret("cb-echo")
    cbs = CallbackServer()
    try:
        cbs.headers = {"Authorization": "Bearer " + token}
        origin_with_routes(stack)
        d = stack.start({"callbacks": [{"match_hosts": [HOST], "url": cbs.url(),
                                        "ttl_seconds": 60}]})
        r = get(stack, d, "/headers")
        assert r.status_code == 200 and token not in r.text
    finally:
        cbs.close()
