"""Request smuggling and malformed requests (RFC 9112; http1.h): every ambiguous or malformed
request is answered 400, the connection is closed, and the origin receives nothing.

Each case is tried inside an intercepted CONNECT tunnel (with a credential rule active) and as an
absolute-form plain-HTTP request. A smuggled follow-up request rides along in most payloads: if
the proxy and a lenient origin disagreed on framing, the origin would see it.
"""
import pytest

from conftest import header_rule
from helpers import client

SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"


def _head(method, target, host, version="HTTP/1.1"):
    return "%s %s %s\r\nHost: %s\r\n" % (method, target, version, host)


# name -> (builder(target, host) -> str, level). "head": refusable from the head alone, so not
# one byte may reach the origin. "body": the framing error is in the body; the origin must never
# receive a complete request.
CASES = {
    "content_length_and_transfer_encoding": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h),
        "head"),
    "two_differing_content_lengths": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 5\r\nContent-Length: 60\r\n\r\nhello" + SMUGGLED.format(host=h), "head"),
    "content_length_list_with_differing_values": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 5, 60\r\n\r\nhello" + SMUGGLED.format(host=h), "head"),
    "transfer_encoding_chunked_twice": (lambda t, h: _head("POST", t, h) +
        "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h), "head"),
    "transfer_encoding_xchunked": (lambda t, h: _head("POST", t, h) +
        "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h), "head"),
    "obs_fold": (lambda t, h: _head("GET", t, h) + "X-Folded: a\r\n b\r\n\r\n", "head"),
    "obs_fold_of_transfer_encoding": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h),
        "head"),
    "bare_lf_line_endings": (lambda t, h: "GET %s HTTP/1.1\nHost: %s\n\n" % (t, h), "head"),
    "bare_lf_inside_the_head": (lambda t, h: _head("GET", t, h) + "X-A: 1\nX-B: 2\r\n\r\n", "head"),
    "nul_in_header_value": (lambda t, h: _head("GET", t, h) + "X-Bad: a\x00b\r\n\r\n", "head"),
    "control_char_in_header_value": (lambda t, h: _head("GET", t, h) + "X-Bad: a\x01b\r\n\r\n",
                                     "head"),
    "space_before_colon": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h),
        "head"),
    "http10_with_transfer_encoding": (lambda t, h: _head("POST", t, h, "HTTP/1.0") +
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED.format(host=h), "head"),
    "invalid_chunk_size": (lambda t, h: _head("POST", t, h) +
        "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + SMUGGLED.format(host=h), "body"),
    "chunk_size_overflow": (lambda t, h: _head("POST", t, h) +
        "Transfer-Encoding: chunked\r\n\r\n" + "f" * 17 + "\r\nhello\r\n0\r\n\r\n" + SMUGGLED.format(host=h),
        "body"),
    "two_host_headers": (lambda t, h: _head("GET", t, h) + "Host: other.example.test\r\n\r\n", "head"),
    "missing_host_in_http11": (lambda t, h: "GET %s HTTP/1.1\r\nX-A: 1\r\n\r\n" % t, "head"),
    "content_length_not_a_number": (lambda t, h: _head("POST", t, h) +
        "Content-Length: 5a\r\n\r\nhello" + SMUGGLED.format(host=h), "head"),
    "negative_content_length": (lambda t, h: _head("POST", t, h) +
        "Content-Length: -1\r\n\r\n" + SMUGGLED.format(host=h), "head"),
    "extra_token_in_request_line": (lambda t, h: "GET %s HTTP/1.1 junk\r\nHost: %s\r\n\r\n" % (t, h),
                                    "head"),
    "invalid_char_in_header_name": (lambda t, h: _head("GET", t, h) + "X(Bad): 1\r\n\r\n", "head"),
    "chunk_data_without_crlf": (lambda t, h: _head("POST", t, h) +
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n" + SMUGGLED.format(host=h), "body"),
}

LIMITS = {"header_timeout_ms": 2000, "max_header_bytes": 8192}


@pytest.fixture
def tls_target(stack):
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    rule = header_rule("api", ["api.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key}, limits=LIMITS)

    def open_conn():
        conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
        assert refused is None, refused
        return conn
    return origin, open_conn, "/", "api.example.test"


@pytest.fixture
def plain_target(stack):
    origin = stack.plain_origin("plain.example.test")
    d = stack.start(limits=LIMITS)
    return origin, lambda: client.Conn(client.proxy_socket(d.port)), \
        "http://plain.example.test/", "plain.example.test"


@pytest.fixture(params=["tls_tunnel", "plain_http"])
def target(request):
    return request.getfixturevalue("tls_target" if request.param == "tls_tunnel" else "plain_target")


def assert_refused_and_closed(conn, status):
    resp = conn.read_response()
    assert resp.status == status, resp
    assert conn.closed_within(3.0), "the proxy kept the connection open after %d" % status
    return resp


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_request_is_refused_with_400_and_closed(target, case):
    origin, open_conn, url, host = target
    build, level = CASES[case]
    conn = open_conn()
    conn.send(build(url, host).encode("latin-1"))
    try:
        assert_refused_and_closed(conn, 400)
    finally:
        conn.close()
    if level == "head":
        assert origin.bytes_received == 0, origin.heads
    else:
        assert origin.wait_requests(1, timeout=0.5) == [], "the origin got a complete request"
    assert not any(r.path == "/smuggled" for r in origin.heads)


def test_header_block_over_max_header_bytes_gets_431(target):
    origin, open_conn, url, host = target
    conn = open_conn()
    conn.send((_head("GET", url, host) + "X-Big: " + "a" * 20000 + "\r\n\r\n").encode())
    try:
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 431, resp
    assert origin.bytes_received == 0


def test_too_many_header_fields_gets_431(target):
    origin, open_conn, url, host = target
    conn = open_conn()
    conn.send((_head("GET", url, host) + "".join("X-F%d: v\r\n" % i for i in range(150)) +
               "\r\n").encode())
    try:
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 431, resp
    assert origin.bytes_received == 0


def test_request_target_longer_than_the_head_limit_is_refused(target):
    origin, open_conn, url, host = target
    conn = open_conn()
    conn.send(_head("GET", url + "a" * 20000, host).encode() + b"\r\n")
    try:
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status in (414, 431), resp
    assert origin.bytes_received == 0


def test_header_block_under_max_header_bytes_is_forwarded(target):
    origin, open_conn, url, host = target
    conn = open_conn()
    conn.send((_head("GET", url, host) + "X-Big: " + "a" * 6000 + "\r\n\r\n").encode())
    try:
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 200, resp
    assert origin.snapshot()[0].values("X-Big") == ["a" * 6000]
