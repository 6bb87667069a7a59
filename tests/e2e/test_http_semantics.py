"""HTTP/1.1 relaying through the intercepted tunnel: keep-alive, framing, interim responses,
bodiless responses and streaming (RFC 9112 / 9110)."""
import hashlib
import os
import subprocess
import time

import pytest
import requests

from conftest import client_env
from helpers import client
from helpers.origin import BIG_BODY, CHUNKED_PARTS


def open_tunnel(stack, d):
    conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
    assert refused is None, refused
    return conn


def test_two_requests_on_one_client_connection_reuse_one_upstream_connection(stack, api):
    origin, d, key = api
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes("GET", "/one", "api.example.test"))
    r1 = conn.read_response()
    conn.send(client.request_bytes("GET", "/two", "api.example.test"))
    r2 = conn.read_response()
    conn.close()
    assert (r1.status, r2.status) == (200, 200), (r1, r2)
    one, two = origin.snapshot()
    assert one.values("Authorization") == two.values("Authorization") == ["Bearer " + key]
    assert origin.accepts == 1, "the upstream connection was not reused"
    assert one.conn_id == two.conn_id


def test_plain_http_keep_alive_reuses_the_upstream_connection(stack):
    origin = stack.plain_origin("plain.example.test")
    d = stack.start()
    conn = client.Conn(client.proxy_socket(d.port))
    rs = []
    for path in ("/a", "/b", "/c"):
        conn.send(client.request_bytes("GET", "http://plain.example.test" + path, "plain.example.test"))
        rs.append(conn.read_response())
    conn.close()
    assert [r.status for r in rs] == [200, 200, 200], rs
    assert [r.path for r in origin.snapshot()] == ["/a", "/b", "/c"]
    assert origin.accepts == 1


def test_pipelined_requests_are_answered_in_order(stack, api):
    origin, d, _ = api
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes("GET", "/p1", "api.example.test") +
              client.request_bytes("POST", "/digest", "api.example.test", body=b"pipelined") +
              client.request_bytes("GET", "/p3", "api.example.test"))
    r1, r2, r3 = conn.read_response(), conn.read_response(), conn.read_response()
    conn.close()
    assert [r.status for r in (r1, r2, r3)] == [200, 200, 200]
    assert r2.body == b"9 %s\n" % hashlib.sha256(b"pipelined").hexdigest().encode()
    assert [r.path for r in origin.snapshot()] == ["/p1", "/digest", "/p3"]


def test_chunked_request_body_arrives_intact(stack, api):
    origin, d, _ = api
    parts = [b"first-", os.urandom(70000), b"", b"last"]
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes("POST", "/digest", "api.example.test",
                                   headers=[("Transfer-Encoding", "chunked")]))
    for p in parts[:2]:
        conn.send(b"%x;ext=1\r\n%s\r\n" % (len(p), p))
        time.sleep(0.05)
    conn.send(b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(parts[3]), parts[3]))
    resp = conn.read_response()
    conn.close()
    body = b"".join(parts)
    assert resp.status == 200, resp
    assert resp.body == b"%d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode())
    assert origin.snapshot()[0].body == body


def test_chunked_response_is_relayed_intact(stack, api):
    _, d, _ = api
    with requests.Session() as s:
        s.trust_env = False
        r = s.get("https://api.example.test/chunked", proxies=d.proxies, verify=stack.ca, timeout=10)
    assert r.status_code == 200
    assert r.content == b"".join(CHUNKED_PARTS)


def test_large_response_is_relayed_intact(stack, api):
    _, d, _ = api
    with requests.Session() as s:
        s.trust_env = False
        r = s.get("https://api.example.test/big", proxies=d.proxies, verify=stack.ca, timeout=30)
    assert r.status_code == 200
    assert len(r.content) == len(BIG_BODY) and r.content == BIG_BODY


def test_large_request_body_arrives_intact(stack, api):
    origin, d, _ = api
    body = os.urandom(3 * 1024 * 1024)
    with requests.Session() as s:
        s.trust_env = False
        r = s.put("https://api.example.test/digest", data=body, proxies=d.proxies,
                  verify=stack.ca, timeout=30)
    assert r.status_code == 200
    assert r.text == "%d %s\n" % (len(body), hashlib.sha256(body).hexdigest())


def test_expect_100_continue_is_answered_before_the_body_is_sent(stack, api):
    origin, d, _ = api
    body = b"b" * 100000
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes("POST", "/digest", "api.example.test",
                                   headers=[("Content-Length", str(len(body))),
                                            ("Expect", "100-continue")]))
    interim = conn.read_response(interim=True)
    assert interim.status == 100, interim
    conn.send(body)
    final = conn.read_response()
    conn.close()
    assert final.status == 200, final
    assert final.body.startswith(b"%d " % len(body))
    assert origin.snapshot()[0].body == body


def test_curl_big_post_with_expect_100_continue(stack, api, tmp_path):
    origin, d, key = api
    data = tmp_path / "upload.bin"
    data.write_bytes(os.urandom(2 * 1024 * 1024))
    t0 = time.monotonic()
    # --expect100-timeout 5: if the proxy never relays "100 Continue", curl waits 5 s.
    p = subprocess.run(["curl", "-sS", "--max-time", "20", "--proxy", d.url, "--cacert", stack.ca,
                        "--expect100-timeout", "5", "-H", "Expect: 100-continue",
                        "--data-binary", "@" + str(data), "https://api.example.test/digest"],
                       capture_output=True, env=client_env(str(tmp_path)), timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.decode()
    content = data.read_bytes()
    assert p.stdout == b"%d %s\n" % (len(content), hashlib.sha256(content).hexdigest().encode())
    assert elapsed < 4.0, "curl waited for 100 Continue (%.1fs)" % elapsed
    assert origin.snapshot()[0].values("Authorization") == ["Bearer " + key]


@pytest.mark.parametrize("method,path,status", [("HEAD", "/head", 200), ("GET", "/status/204", 204),
                                                ("GET", "/status/304", 304)])
def test_bodiless_response_is_relayed_without_a_body(stack, api, method, path, status):
    """The origin's HEAD and 304 answers carry a Content-Length; the proxy must not wait for
    (or invent) a body: the next response on the same connection must parse cleanly."""
    origin, d, _ = api
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes(method, path, "api.example.test"))
    first = conn.read_response(method)
    conn.send(client.request_bytes("GET", "/after", "api.example.test"))
    second = conn.read_response()
    conn.close()
    assert first.status == status, first
    if method == "HEAD":
        assert first.header("Content-Length") == "1234"
    assert first.body == b""
    assert second.status == 200 and second.body == b"ok from api.example.test\n", second
    assert [r.path for r in origin.snapshot()] == [path, "/after"]


def test_server_sent_events_are_relayed_incrementally(stack, api):
    origin, d, _ = api
    conn = open_tunnel(stack, d)
    conn.send(client.request_bytes("GET", "/sse", "api.example.test",
                                   headers=[("Accept", "text/event-stream")]))
    status, _, headers = conn.read_head()
    assert status == 200
    received = []  # (time, data)
    conn.read_body_stream(headers, lambda data: received.append((time.monotonic(), data)))
    conn.close()
    sent = origin.events["sse_sent"]
    text = b"".join(d for _, d in received)
    assert text == b"".join(b"id: %d\ndata: event-%d\n\n" % (i, i) for i in (1, 2, 3))
    first_seen = next(t for t, data in received if b"event-1" in data)
    # The origin sends the events 300 ms apart; a buffering proxy would deliver event 1 only
    # after event 3 was sent. Event 1 must arrive before event 2 is even sent.
    assert first_seen < sent[1], "event 1 arrived %.3fs after it was sent; event 2 was sent " \
        "at %.3fs, event 3 at %.3fs" % (first_seen - sent[0], sent[1] - sent[0], sent[2] - sent[0])
