"""Header tricks (SPEC §3: an injected header replaces every header of that name the sandbox
sent; RFC 9112 §5): the attacker sends its own spelling of the credential headers, hoping the
origin sees two credentials (and uses the attacker's), or smuggles a header line inside a value,
or overwhelms the head. Requests are written byte by byte on raw sockets.

Two credentials are injected for api.example.test (TLS) and plain.example.test (allow_plaintext):
`Authorization: Bearer <K>` and `X-Api-Key: <K2>`. Every probe asserts one of:
  * refused (400, or 431 for size) and closed, with nothing forwarded;
  * forwarded with each credential header present exactly once, holding the injected value, and
    no other field that an origin could take for it (any letter case, `_` for `-`, as CGI/WSGI
    servers map names to HTTP_X_API_KEY).
And never a credential in what the attacker receives.

How we know these can fail: against a scratch build whose http1_write_request_head compared
names case-sensitively, the case and duplicate probes failed (the origin saw the sandbox's
fields beside the injected ones); with the 400/431 expectations changed to 200 every refusal
probe failed. The underscore probes failed before 5a89b24 (the weakness they found: the
sandbox's `X_Api_Key` was forwarded beside the injected `X-Api-Key`).
"""
import json
import time
from types import SimpleNamespace

import pytest

from e2e_conftest import header_rule
from helpers import client
from attacklib import begin_probe, end_probe, reset_origin, secrets_in

API = "api.example.test"
PLAIN = "plain.example.test"
MAX_HEAD = 8192
CRED_NAMES = ("authorization", "x-api-key")


@pytest.fixture(scope="module")
def env(shared_stack):
    st = shared_stack
    e = SimpleNamespace()
    e.api = st.tls_origin(API)
    e.plain = st.plain_origin(PLAIN)
    e.origins = [e.api, e.plain]
    e.k, e.k2 = st.secret(), st.secret()
    hdrs = [("Authorization", "workspace_secret", "Bearer {K}"), ("X-Api-Key", "workspace_secret", "{K2}")]
    e.d = st.start({"rules": [header_rule("api", [API], hdrs),
                              header_rule("plain", [PLAIN], hdrs, allow_plaintext=True)]},
                   secrets={"K": e.k, "K2": e.k2},
                   limits={"max_header_bytes": MAX_HEAD, "header_timeout_ms": 2000})
    e.ca = st.ca
    return e


@pytest.fixture(params=["tls_tunnel", "plain_http"])
def tgt(request, env, shared_stack):
    """(origin, open_conn, request-target, host) for one of the two paths."""
    begin_probe(env, shared_stack, request)
    if request.param == "tls_tunnel":
        def open_conn():
            conn, refused = client.tunnel(env.d.port, API, env.ca)
            assert refused is None, refused
            return conn
        yield env.api, open_conn, "/h", API
    else:
        yield env.plain, lambda: client.Conn(client.proxy_socket(env.d.port)), \
            "http://%s/h" % PLAIN, PLAIN
    end_probe(env)


def exchange(open_conn, raw):
    conn = open_conn()
    conn.sock.settimeout(5)
    conn.send(raw)
    try:
        resp = conn.read_response()
        closed = resp.status < 400 or conn.closed_within(3.0)
    except client.Closed:
        resp, closed = None, True
    finally:
        conn.close()
    return resp, closed, conn.received


def assert_credentials_exactly_once(env, req):
    """Each credential header once, with the injected value, and no look-alike field."""
    assert req.values("Authorization") == ["Bearer " + env.k], req.headers
    assert req.values("X-Api-Key") == [env.k2], req.headers
    lookalikes = [(n, v) for n, v in req.headers
                  if n.lower().replace("_", "-") in CRED_NAMES and n not in ("Authorization", "X-Api-Key")]
    assert not lookalikes, "fields an origin may take for a credential: %r" % lookalikes


# -- spellings of the credential headers: replaced, never doubled -----------------------------------

REPLACED = {
    "lower_case": ["authorization: Bearer fake", "x-api-key: fake"],
    "upper_case": ["AUTHORIZATION: Bearer fake", "X-API-KEY: fake"],
    "mixed_case": ["AuThOrIzAtIoN: Bearer fake", "x-ApI-kEy: fake"],
    "duplicated": ["Authorization: Bearer fake1", "Authorization: Bearer fake2",
                   "X-Api-Key: fake1", "x-api-key: fake2"],
    "duplicated_around_other_fields": ["Authorization: Bearer fake1", "Accept: */*",
                                       "authorization: Bearer fake2", "X-A: 1", "AUTHORIZATION: x"],
    "empty_values": ["Authorization:", "X-Api-Key: "],
    "no_space_after_colon": ["Authorization:Bearer fake", "X-Api-Key:fake"],
    "tab_after_colon": ["Authorization:\tBearer fake", "X-Api-Key:\tfake"],
    "list_value": ["Authorization: Bearer fake, Bearer fake2"],
    "connection_names_the_credential": ["Connection: Authorization, X-Api-Key",
                                        "Authorization: Bearer fake"],
    "proxy_authorization": ["Proxy-Authorization: Bearer fake"],
    "many_duplicates": ["Authorization: Bearer fake%d" % i for i in range(60)],
    "obs_text_in_value": ["Authorization: Bearer fake\x85\xa0", "X-A: a\xe2\x80\xa8b"],
}


@pytest.mark.parametrize("case", sorted(REPLACED))
def test_credential_headers_sent_by_the_sandbox_are_replaced_exactly_once(env, tgt, case):
    origin, open_conn, target, host = tgt
    raw = ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n" % (target, host, "\r\n".join(REPLACED[case])))
    resp, closed, received = exchange(open_conn, raw.encode("latin-1"))
    if case == "proxy_authorization" and target.startswith("http://"):
        # On the proxy port this field is the sandbox identity: not an apt_ token, so 407.
        assert resp is not None and resp.status == 407 and closed, resp
        assert origin.bytes_received == 0
        return
    assert resp is not None and resp.status == 200, resp
    [req] = origin.wait_requests(1)
    assert_credentials_exactly_once(env, req)
    assert b"fake" not in req.raw_head, req.raw_head
    assert not secrets_in(received)


@pytest.mark.parametrize("name", ["X_Api_Key", "x_api_key", "X-Api_Key"])
def test_underscore_spellings_of_a_credential_header_are_not_forwarded(env, tgt, name):
    """CGI and WSGI servers turn `X_Api_Key` and `X-Api-Key` into the same HTTP_X_API_KEY (Apache
    httpd drops underscore fields from the CGI environment for this reason; nginx ignores them
    by default). Forwarded beside the injected field, the sandbox's value reaches the origin as a
    second credential that may win. Either refused, or not forwarded."""
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\n%s: fake\r\n\r\n" % (target, host, name)
    resp, closed, received = exchange(open_conn, raw.encode())
    assert resp is not None, "closed without an answer"
    if resp.status == 400:
        assert closed and origin.bytes_received == 0
        return
    assert resp.status == 200, resp
    [req] = origin.wait_requests(1)
    assert_credentials_exactly_once(env, req)


# -- header lines hidden in values, folds, whitespace: refused ---------------------------------------

REFUSED_HEADS = {
    "bare_cr_in_value": "X-A: foo\rAuthorization: Bearer fake\r\n",
    "bare_lf_in_value": "X-A: foo\nAuthorization: Bearer fake\r\n",
    "cr_cr_lf": "X-A: foo\r\r\nAuthorization: Bearer fake\r\n",
    "obs_fold_of_authorization": "Authorization: Bearer fake\r\n continued\r\n",
    "obs_fold_into_authorization": "X-A: 1\r\n Authorization: Bearer fake\r\n",
    "tab_fold": "X-A: 1\r\n\tAuthorization: Bearer fake\r\n",
    "space_before_colon": "Authorization : Bearer fake\r\n",
    "tab_before_colon": "Authorization\t: Bearer fake\r\n",
    "space_inside_name": "Author ization: Bearer fake\r\n",
    "nul_in_value": "Authorization: Bearer fa\x00ke\r\n",
    "nul_in_name": "Authoriza\x00tion: Bearer fake\r\n",
    "nul_terminated_value": "X-A: 1\x00\r\nAuthorization: Bearer fake\r\n",
    "del_in_value": "X-A: a\x7fb\r\n",
    "escape_in_value": "X-A: a\x1bb\r\n",
    "cr_in_name": "X-A\r: b\r\n",
    "lookalike_name": "Authorizat\xd1\x96on: Bearer fake\r\n",  # Cyrillic i, not a token char
    "empty_name": ": Bearer fake\r\n",
    "colon_only_line": ":\r\n",
    "line_without_colon": "Authorization Bearer fake\r\n",
    "duplicate_host_other_case": "host: %(host)s\r\n",
}


@pytest.mark.parametrize("case", sorted(REFUSED_HEADS))
def test_header_lines_smuggled_in_values_or_folds_are_refused(tgt, case):
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, host, REFUSED_HEADS[case] % {"host": host})
    resp, closed, received = exchange(open_conn, raw.encode("latin-1"))
    assert resp is not None and resp.status == 400 and closed, resp
    assert origin.bytes_received == 0
    assert not secrets_in(received)


@pytest.mark.parametrize("first", [" Authorization: Bearer fake", "\tAuthorization: Bearer fake",
                                   " Host: other.example.test"])
def test_whitespace_before_the_first_field_is_refused_or_the_line_dropped(env, tgt, first):
    """RFC 9112 §2.2: a line starting with whitespace right after the request line must be
    rejected or consumed without further processing, never read as a field (an Authorization
    or Host of the sandbox's choosing)."""
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\n%s\r\nHost: %s\r\n\r\n" % (target, first, host)
    resp, closed, received = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status in (200, 400), resp
    if resp.status == 400:
        assert closed and origin.bytes_received == 0
        return
    [req] = origin.wait_requests(1)
    assert_credentials_exactly_once(env, req)
    assert b"fake" not in req.raw_head and b"other.example.test" not in req.raw_head, req.raw_head


@pytest.mark.parametrize("line", [
    "GET /a\r\nAuthorization: Bearer fake HTTP/1.1",
    "GET /a\rAuthorization: Bearer fake HTTP/1.1",
    "GET /a\nAuthorization: Bearer fake HTTP/1.1",
    "GET /a\x00b HTTP/1.1",
    "GET /a b HTTP/1.1",
    "GET\x0b/a HTTP/1.1",
    "GE\x00T /a HTTP/1.1",
    "GET /a HTTP/1.1\x00",
])
def test_request_lines_carrying_header_lines_or_control_bytes_are_refused(tgt, line):
    origin, open_conn, target, host = tgt
    if target.startswith("http://"):
        line = line.replace(" /a", " http://%s/a" % host, 1).replace("\x0b/a", "\x0bhttp://%s/a" % host)
    raw = "%s\r\nHost: %s\r\n\r\n" % (line, host)
    resp, closed, received = exchange(open_conn, raw.encode("latin-1"))
    assert resp is not None and resp.status == 400 and closed, resp
    assert origin.bytes_received == 0


def test_encoded_crlf_in_the_target_stays_encoded(env, tgt):
    """%0d%0a in the path is data, not a line break: forwarded as sent, no field added."""
    origin, open_conn, target, host = tgt
    raw = "GET %s%%0d%%0aAuthorization:%%20Bearer%%20fake HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)
    resp, _, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 200, resp
    [req] = origin.wait_requests(1)
    assert req.target.endswith("%0d%0aAuthorization:%20Bearer%20fake")
    assert_credentials_exactly_once(env, req)


def test_a_sandbox_supplied_path_cannot_forge_audit_lines(env, tgt):
    """Quotes, backslashes and JSON fragments in the path land in the audit log as one string
    field of one line (e2e's teardown also parses every line)."""
    origin, open_conn, target, host = tgt
    evil = '/x-%s"},{"decision":"allowed","host":"evil\\u000a\\' % host
    raw = "GET %s%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.rsplit("/h", 1)[0], evil, host)
    resp, _, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status in (200, 400), resp
    recs = env.d.wait_audit(lambda r: r.get("path") == evil)
    assert len(recs) == 1, [r.get("path") for r in env.d.audit_records()][-5:]
    assert recs[0]["host"] == host


def test_proxy_authorization_with_an_embedded_header_line_is_not_honoured(env, shared_stack):
    """The explicit-proxy identity is base64: a decoded value holding CRLF and a header line is an
    unknown sandbox credential (407), and nothing is forwarded."""
    import base64
    reset_origin(env.plain)
    token = base64.b64encode(b"box:apt_x\r\nAuthorization: Bearer fake").decode()
    resp = client.http_request(env.d.port, "http://%s/h" % PLAIN, PLAIN,
                               headers=[("Proxy-Authorization", "Basic " + token)])
    assert resp.status == 407, resp
    assert env.plain.bytes_received == 0


# -- size: huge and many headers --------------------------------------------------------------------

def test_head_over_the_limit_gets_431_and_nothing_forwarded(tgt):
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n" % (target, host, "f" * 20000)
    resp, closed, received = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 431 and closed, resp
    assert origin.bytes_received == 0
    assert not secrets_in(received)


def test_long_header_name_gets_431(tgt):
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\nX-%s: 1\r\n\r\n" % (target, host, "N" * (MAX_HEAD + 100))
    resp, closed, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 431 and closed, resp
    assert origin.bytes_received == 0


def test_head_sent_in_pieces_past_the_limit_gets_431(tgt):
    """The limit holds for a head that arrives over many writes (the proxy must count what it
    buffers, not each read)."""
    origin, open_conn, target, host = tgt
    conn = open_conn()
    conn.send(("GET %s HTTP/1.1\r\nHost: %s\r\n" % (target, host)).encode())
    try:
        for i in range(40):
            conn.send(("X-Pad-%d: %s\r\n" % (i, "p" * 400)).encode())
            time.sleep(0.002)
        conn.send(b"\r\n")
    except OSError:
        pass  # the proxy may close as soon as the limit is passed
    try:
        resp = conn.read_response()
    except client.Closed:
        resp = None
    conn.close()
    assert resp is not None and resp.status == 431, resp
    assert origin.bytes_received == 0


def test_too_many_fields_get_431(tgt):
    origin, open_conn, target, host = tgt
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        target, host, "".join("Authorization: Bearer f%d\r\n" % i for i in range(120)))
    resp, closed, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 431 and closed, resp
    assert origin.bytes_received == 0


def test_just_under_the_limits_is_served_with_credentials_once(env, tgt):
    """The control: the refusals above are about size, not about these fields."""
    origin, open_conn, target, host = tgt
    fields = ["X-F%d: %s" % (i, "v" * 60) for i in range(90)]
    raw = "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n" % (target, host, "\r\n".join(fields))
    assert len(raw) < MAX_HEAD
    resp, _, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 200, resp
    [req] = origin.wait_requests(1)
    assert_credentials_exactly_once(env, req)
    assert len(req.values("X-F89")) == 1


def test_audit_names_injected_headers_once(env, tgt):
    """The audit record lists header names only, each once, even when the sandbox sent them too."""
    origin, open_conn, target, host = tgt
    raw = ("GET %s/audit-once HTTP/1.1\r\nHost: %s\r\nauthorization: x\r\nAuthorization: y\r\n\r\n"
           % (target.rsplit("/h", 1)[0], host))
    resp, _, _ = exchange(open_conn, raw.encode())
    assert resp is not None and resp.status == 200
    recs = env.d.wait_audit(lambda r: r.get("path") == "/audit-once")
    assert recs and sorted(recs[-1]["injected_headers"]) == ["Authorization", "X-Api-Key"], recs
    assert env.k not in json.dumps(recs)
