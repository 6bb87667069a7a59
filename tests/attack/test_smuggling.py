"""Request smuggling (RFC 9112 §6, §7; RFC 9110 §7.6.1): the sandbox sends messages whose
framing a lenient parser could read two ways, hoping that a second request rides along to a host
the policy refuses, or lands on a pooled upstream connection where another sandbox's credentialed
request follows.

Every payload carries a follow-up request for deny.example.test (deny_list). Each probe asserts:
  * the proxy either refuses (400, or 501 for an unknown transfer coding) and closes, or it frames
    the message exactly as RFC 9112 says (the origin gets one request with exactly the expected
    body, its credential exactly once);
  * the follow-up never reaches any origin as a request ("/smuggled" appears in no head), and the
    denied host's origin received no byte at all;
  * the credential appears in nothing the attacker receives.
Each case runs inside an intercepted CONNECT tunnel (credential rule, TLS upstream) and as an
absolute-form plain-HTTP request (credential rule with allow_plaintext).

tests/e2e/test_smuggling.py holds the basic malformed-message table; this file goes further:
TE.TE obfuscations, CL sign/zero/overflow variants, chunk sizes that wrap at 2^64, pipelining
to another host, and pooled-upstream poisoning across two clients.

How we know these can fail: with REFUSED set to (200,), 110 of the 112 table cases failed (the
two left accept either outcome); with the frame cases' expected body changed, every one the
proxy forwards failed on the body comparison (the others it refuses, which is also allowed).
"""
import hashlib
import threading
import time

import pytest

from e2e_conftest import header_rule
from helpers import client
from attacklib import raw_origin, reset_origin, secrets_in

API = "api.example.test"
PLAIN = "plain.example.test"
DENY = "deny.example.test"
OTHER = "other.example.test"
SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: %s\r\n\r\n" % DENY
REFUSED = (400, 501)
LIMITS = {"header_timeout_ms": 2000, "max_header_bytes": 8192}


def _head(method, target, host, extra):
    return "%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (method, target, host, extra)


def post(extra, body):
    """A POST whose extra header lines (CRLF-terminated) and body follow Host."""
    return lambda t, h: _head("POST", t, h, extra) + "\r\n" + body + SMUGGLED


# name -> (builder(target, host), expectation). Expectations:
#   ("refuse", "head"): refusable from the head: not one byte may reach the origin;
#   ("refuse", "body"): the framing error is in the body: no complete request may reach it;
#   ("frame", body):    either refused as above, or forwarded with exactly this body;
#   ("incomplete",):    either refused, or forwarded as a request whose body never ends (the
#                       follow-up is body bytes, never a request).
CASES = {
    # CL.TE and TE.CL: both framings present, in either order and however TE is dressed.
    "cl_te": (post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
              ("refuse", "head")),
    "te_cl": (post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "8\r\nSMUGGLED\r\n0\r\n\r\n"),
              ("refuse", "head")),
    "cl_te_xchunked": (post("Content-Length: 6\r\nTransfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
                       ("refuse", "head")),
    "cl_te_tab": (post("Content-Length: 6\r\nTransfer-Encoding:\tchunked\r\n", "0\r\n\r\n"),
                  ("refuse", "head")),
    "cl_te_uppercase_name": (post("Content-Length: 6\r\nTRANSFER-ENCODING: chunked\r\n", "0\r\n\r\n"),
                             ("refuse", "head")),
    "cl_te_chunked_identity": (post("Content-Length: 6\r\nTransfer-Encoding: chunked, identity\r\n",
                                    "0\r\n\r\n"), ("refuse", "head")),
    "cl_te_split_over_two_fields": (post("Transfer-Encoding: identity\r\nContent-Length: 6\r\n"
                                         "Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
                                    ("refuse", "head")),
    # TE.TE: only Transfer-Encoding, obfuscated so one parser sees chunked and another does not.
    "te_xchunked": (post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_chunked_identity": (post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
                            ("refuse", "head")),
    "te_identity_chunked": (post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
                            ("refuse", "head")),
    "te_chunked_twice_in_one_field": (post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
                                      ("refuse", "head")),
    "te_duplicated_field": (post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                 "0\r\n\r\n"), ("refuse", "head")),
    "te_duplicated_field_identity": (post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                          "0\r\n\r\n"), ("refuse", "head")),
    "te_space_before_colon": (post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_tab_before_colon": (post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_line_starting_with_space": (post("X-A: 1\r\n Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
                                    ("refuse", "head")),
    "te_vertical_tab": (post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_form_feed": (post("Transfer-Encoding: \x0cchunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_nul_inside": (post("Transfer-Encoding: chunk\x00ed\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_quoted": (post('Transfer-Encoding: "chunked"\r\n', "0\r\n\r\n"), ("refuse", "head")),
    "te_nbsp_before_value": (post("Transfer-Encoding: \xa0chunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_bare_cr_before": (post("X-A: 1\rTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    "te_bare_lf_before": (post("X-A: 1\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), ("refuse", "head")),
    # Spellings RFC 9112 reads as plain "chunked": accepted only if framed exactly so.
    "te_tab_as_whitespace": (post("Transfer-Encoding:\tchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
                             ("frame", b"hello")),
    "te_trailing_whitespace": (post("Transfer-Encoding: chunked \t\r\n", "5\r\nhello\r\n0\r\n\r\n"),
                               ("frame", b"hello")),
    "te_uppercase_value": (post("Transfer-Encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"),
                           ("frame", b"hello")),
    "te_empty_list_elements": (post("Transfer-Encoding: ,chunked,\r\n", "5\r\nhello\r\n0\r\n\r\n"),
                               ("frame", b"hello")),
    # Content-Length: duplicates, signs, leading zeros, other number syntaxes, 2^64 wrap-around.
    "cl_duplicate_equal": (post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
                           ("frame", b"hello")),
    "cl_list_equal": (post("Content-Length: 5, 5\r\n", "hello"), ("frame", b"hello")),
    "cl_duplicate_differing_case": (post("content-length: 5\r\nCONTENT-LENGTH: 6\r\n", "hello!"),
                                    ("refuse", "head")),
    "cl_plus_sign": (post("Content-Length: +5\r\n", "hello"), ("refuse", "head")),
    "cl_minus_sign": (post("Content-Length: -5\r\n", "hello"), ("refuse", "head")),
    "cl_leading_zeros": (post("Content-Length: 005\r\n", "hello"), ("frame", b"hello")),
    "cl_forty_leading_zeros": (post("Content-Length: %s5\r\n" % ("0" * 40), "hello"),
                               ("frame", b"hello")),
    "cl_hex": (post("Content-Length: 0x5\r\n", "hello"), ("refuse", "head")),
    "cl_decimal_point": (post("Content-Length: 5.0\r\n", "hello"), ("refuse", "head")),
    "cl_exponent": (post("Content-Length: 5e0\r\n", "hello"), ("refuse", "head")),
    "cl_inner_space": (post("Content-Length: 5 5\r\n", "hello"), ("refuse", "head")),
    "cl_empty": (post("Content-Length: \r\n", "hello"), ("refuse", "head")),
    "cl_nbsp": (post("Content-Length: \xa05\r\n", "hello"), ("refuse", "head")),
    "cl_2_pow_64": (post("Content-Length: 18446744073709551616\r\n", "hello"), ("refuse", "head")),
    "cl_2_pow_64_plus_5": (post("Content-Length: 18446744073709551621\r\n", "hello"),
                           ("refuse", "head")),
    "cl_2_pow_63": (post("Content-Length: 9223372036854775808\r\n", "hello"), ("refuse", "head")),
    "cl_2_pow_63_minus_1": (post("Content-Length: 9223372036854775807\r\n", "hello"),
                            ("incomplete",)),
    # Chunk sizes: more than 16 hex digits, values that wrap at 2^64 to a small size, signs.
    "chunk_size_17_digits": (post("Transfer-Encoding: chunked\r\n",
                                  "10000000000000000\r\nhello\r\n0\r\n\r\n"), ("refuse", "body")),
    "chunk_size_2_pow_64_plus_5": (post("Transfer-Encoding: chunked\r\n",
                                        "10000000000000005\r\nhello\r\n0\r\n\r\n"), ("refuse", "body")),
    "chunk_size_2_pow_64_minus_1": (post("Transfer-Encoding: chunked\r\n",
                                         "ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), ("refuse", "body")),
    "chunk_size_leading_zeros": (post("Transfer-Encoding: chunked\r\n",
                                      "0000000000000000005\r\nhello\r\n0\r\n\r\n"), ("frame", b"hello")),
    "chunk_size_negative": (post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
                            ("refuse", "body")),
    "chunk_size_0x": (post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
                      ("refuse", "body")),
    "chunk_size_bare_lf": (post("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"), ("refuse", "body")),
    "chunk_ext_bare_cr": (post("Transfer-Encoding: chunked\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n"),
                          ("refuse", "body")),
    "chunk_longer_than_size": (post("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
                               ("refuse", "body")),
    "last_chunk_then_request_as_trailer": (post("Transfer-Encoding: chunked\r\n", "0\r\n"),
                                           ("refuse", "body")),
    "forbidden_trailer_content_length": (post("Transfer-Encoding: chunked\r\n",
                                              "5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n"),
                                         ("refuse", "body")),
    "uppercase_hex_chunk_size": (post("Transfer-Encoding: chunked\r\n",
                                      "A\r\nhellohello\r\n0\r\n\r\n"), ("frame", b"hellohello")),
}


@pytest.fixture(scope="module")
def tls_env(shared_stack):
    """One daemon for every tunnel case: a credential rule for API, DENY on the deny_list."""
    st = shared_stack
    origin = st.tls_origin(API)
    deny = st.tls_origin(DENY)
    key = st.secret()
    rule = header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = st.start({"rules": [rule], "access_control": {"deny_list": [DENY]}},
                 secrets={"K": key}, limits=LIMITS)
    ca = st.ca

    def open_conn():
        conn, refused = client.tunnel(d.port, API, ca)
        assert refused is None, refused
        return conn
    return origin, deny, open_conn, "/digest", API, key


@pytest.fixture(scope="module")
def plain_env(shared_stack):
    """One daemon for every plain-HTTP case: the same, with allow_plaintext."""
    st = shared_stack
    origin = st.plain_origin(PLAIN)
    deny = st.plain_origin(DENY)
    key = st.secret()
    rule = header_rule("plain", [PLAIN], [("Authorization", "workspace_secret", "Bearer {K}")],
                       allow_plaintext=True)
    d = st.start({"rules": [rule], "access_control": {"deny_list": [DENY]}},
                 secrets={"K": key}, limits=LIMITS)
    return origin, deny, lambda: client.Conn(client.proxy_socket(d.port)), \
        "http://%s/digest" % PLAIN, PLAIN, key


@pytest.fixture(params=["tls_tunnel", "plain_http"])
def target(request, shared_stack):
    env = request.getfixturevalue("tls_env" if request.param == "tls_tunnel" else "plain_env")
    reset_origin(env[0])
    reset_origin(env[1])
    request.node._authproxy_daemons = shared_stack.daemons
    yield env
    assert all(d.alive() for d in shared_stack.daemons), "the daemon died"


def read_all_responses(conn):
    """Every response the proxy sends until it closes (at most a few), and whether it closed."""
    out = []
    while True:
        try:
            out.append(conn.read_response("POST"))
        except client.Closed:
            return out, True
        except OSError:  # timeout: still open
            return out, False


@pytest.mark.parametrize("case", sorted(CASES))
def test_ambiguous_framing_is_refused_or_framed_exactly(target, case):
    origin, deny, open_conn, url, host, key = target
    build, expect = CASES[case]
    conn = open_conn()
    # A request whose body never ends keeps the connection open: wait less for that one.
    conn.sock.settimeout(1 if expect[0] == "incomplete" else 3)
    conn.send(build(url, host).encode("latin-1"))
    try:
        responses, closed = read_all_responses(conn)
    finally:
        conn.close()
    statuses = [r.status for r in responses]
    refused = bool(statuses) and statuses[0] in REFUSED
    if expect[0] == "refuse":
        assert refused and len(statuses) == 1 and closed, \
            "want one %s and close, got %r (closed=%s)" % (REFUSED, responses, closed)
        if expect[1] == "head":
            assert origin.bytes_received == 0, origin.heads
        else:
            assert origin.wait_requests(1, timeout=0.2) == [], "the origin got a complete request"
    elif expect[0] == "frame":
        if not refused:
            assert statuses and statuses[0] == 200, responses
            body = expect[1]
            want = ("%d %s\n" % (len(body), hashlib.sha256(body).hexdigest())).encode()
            assert responses[0].body == want, "the proxy framed the body differently: %r" % responses
            [req] = origin.wait_requests(1)
            assert req.body == body
            assert req.values("Authorization") == ["Bearer " + key]
            # The follow-up for the denied host: 421 in the tunnel (its Host differs from the
            # tunnel's), 400 on the plain port (origin-form), or closed, never forwarded.
            assert statuses[1:] in ([], [421], [400], [403]), responses
        else:
            assert closed and len(statuses) == 1, responses
    else:  # incomplete
        assert refused or not origin.wait_requests(1, timeout=0.2), "a complete request arrived"
    time.sleep(0.02)  # let the origin threads record what they got
    assert not any(r.path == "/smuggled" for r in origin.heads), origin.heads
    assert deny.bytes_received == 0, "the denied host's origin received bytes"
    assert not secrets_in(b"".join(r.body for r in responses)), "the credential came back"


def test_pipelined_request_for_another_host_in_a_tunnel_never_carries_the_credential(stack):
    """Two requests in one TLS write: the first for the tunnel's host (credential injected), the
    second for another allowed host of the same wildcard rule. The second gets 421; the other
    host's origin sees nothing, so the tunnel's credential cannot be steered elsewhere."""
    api = stack.tls_origin(API)
    other = stack.tls_origin(OTHER)
    key = stack.secret()
    rule = header_rule("all", ["*.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key})
    conn, refused = client.tunnel(d.port, API, stack.ca)
    assert refused is None, refused
    conn.send(client.request_bytes("GET", "/first", API) +
              client.request_bytes("GET", "/second", OTHER) +
              client.request_bytes("GET", "/third", API))
    first = conn.read_response()
    second = conn.read_response()
    assert conn.closed_within(3.0), "the tunnel stayed open after the 421"
    conn.close()
    assert first.status == 200 and second.status == 421, (first, second)
    assert [r.path for r in api.snapshot()] == ["/first"], "nothing after the 421 may be forwarded"
    assert other.bytes_received == 0
    assert key.encode() not in conn.received


def test_pipelined_absolute_form_requests_keep_each_hosts_credential(stack):
    """On the plain proxy port one client connection may carry requests for several hosts (a
    forward proxy's normal use). Each is decided on its own: the first host's credential never
    reaches the second host, which has no rule."""
    plain = stack.plain_origin(PLAIN)
    other = stack.plain_origin(OTHER)
    key = stack.secret()
    rule = header_rule("plain", [PLAIN], [("Authorization", "workspace_secret", "Bearer {K}")],
                       allow_plaintext=True)
    d = stack.start({"rules": [rule]}, secrets={"K": key})
    conn = client.Conn(client.proxy_socket(d.port))
    conn.send(client.request_bytes("GET", "http://%s/a" % PLAIN, PLAIN) +
              client.request_bytes("GET", "http://%s/b" % OTHER, OTHER,
                                   headers=[("Authorization", "Bearer from-the-sandbox")]) +
              client.request_bytes("GET", "http://%s/c" % PLAIN, PLAIN))
    resps = [conn.read_response() for _ in range(3)]
    conn.close()
    assert [r.status for r in resps] == [200, 200, 200], resps
    [a, c] = plain.snapshot()
    [b] = other.snapshot()
    assert a.values("Authorization") == c.values("Authorization") == ["Bearer " + key]
    assert b.values("Authorization") == ["Bearer from-the-sandbox"]
    assert key.encode() not in other.heads[0].raw_head and key.encode() not in conn.received


def test_request_inside_a_body_stays_body_on_a_pooled_upstream_connection(stack):
    """Response-queue poisoning: the attacker's body is a complete request (with a Content-Length
    that would swallow the next request). A victim's request then travels on the same pooled
    upstream connection. The origin must parse the attacker's body as body, and the victim must
    get its own response, its request intact with its credential."""
    origin = stack.tls_origin(API)
    key = stack.secret()
    rule = header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key}, workers=1)
    evil = ("GET /poison HTTP/1.1\r\nHost: %s\r\nContent-Length: 400\r\n\r\n" % API).encode()
    attacker, _ = client.tunnel(d.port, API, stack.ca)
    attacker.send(client.request_bytes("POST", "/digest", API, body=evil))
    a = attacker.read_response()
    victim_resp = client.https_request(d.port, API, stack.ca, "/victim")
    attacker.close()
    assert a.status == 200 and a.body == ("%d %s\n" % (len(evil), hashlib.sha256(evil).hexdigest())).encode()
    assert victim_resp.status == 200 and victim_resp.text == "ok from %s\n" % API, victim_resp
    reqs = origin.snapshot()
    assert [r.path for r in reqs] == ["/digest", "/victim"], reqs
    assert origin.accepts == 1, "the test needs both requests on one pooled upstream connection"
    assert reqs[1].values("Authorization") == ["Bearer " + key]
    assert not any(r.path == "/poison" for r in origin.heads)


def test_early_response_does_not_leave_the_unsent_body_on_a_reused_upstream(stack):
    """The origin answers before reading the declared body (e.g. a 401 or 413) and keeps its
    connection open. The attacker then sends the body: a request. If the proxy put that upstream
    connection back in its pool, the origin would read the attacker's bytes as a new request,
    ahead of the next client's. The proxy must not reuse it, and must close the client."""
    key = stack.secret()
    heads = []
    lock = threading.Lock()

    def handler(o, idx, sock):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = o.recv(idx, sock)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            with lock:
                heads.append((idx, head.split(b"\r\n")[0]))
            if head.startswith(b"POST"):
                sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                # keep-alive on purpose, and the unread body stays in buf (as a lenient origin
                # that parses on would treat it)
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    raw_origin(stack, API, handler)
    rule = header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key}, workers=1)
    smuggled = ("GET /smuggled HTTP/1.1\r\nHost: %s\r\n\r\n" % API).encode()
    attacker, _ = client.tunnel(d.port, API, stack.ca)
    attacker.send(client.request_bytes("POST", "/upload", API,
                                       headers=[("Content-Length", str(len(smuggled))),
                                                ("Expect", "100-continue")]))
    first = attacker.read_response()
    try:
        attacker.send(smuggled)
    except OSError:
        pass
    attacker_closed = attacker.closed_within(3.0)
    attacker.close()
    victim = client.https_request(d.port, API, stack.ca, "/victim")
    assert first.status == 413, first
    assert attacker_closed, "the attacker's connection was kept open with its body unread"
    assert victim.status == 200 and victim.body == b"ok\n", victim
    with lock:
        seen = list(heads)
    # This origin reads an unread body as the next request (a lenient one); whether the proxy
    # forwarded those bytes on connection 1 before closing it is not the point: nothing may
    # follow on that connection, and no other connection may carry them.
    assert not any(b"/smuggled" in line for idx, line in seen if idx != 1), seen
    assert [idx for idx, line in seen if b"/victim" in line] != [1], \
        "the victim's request went over the upstream connection holding the attacker's body"
