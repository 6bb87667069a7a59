"""TLS tricks: ClientHellos shaped to make the proxy pick the wrong name, speak something it does
not police (h2, old TLS), or skip its name check (a hello split so a parser that looks at one
segment or one record sees no SNI), and bytes that do not belong after a CONNECT.

Explicit-port probes hand-build their ClientHello where no TLS library would send it (attacklib.
client_hello) and look only at the first bytes the proxy answers: a ServerHello, an alert, or
nothing. Transparent-path probes run inside a real sandbox, where the SNI alone names the
destination. Every probe asserts refusal (or, for legitimate spellings, that only the named host
is reached) and that the refused host's origin received nothing.

How we know these can fail: each refusal has a control beside it that is served (the same hello
with TLS 1.2, the same split with an allowed name, ALPN with http/1.1), so the probe sees a
difference the proxy makes, not a broken hello; and with the expected answers inverted every
probe failed.
"""
import os
import socket
import ssl
from types import SimpleNamespace

import pytest

from e2e_conftest import header_rule
from helpers import client
from attacklib import (ROOT_ONLY_REASON, TLS10, TLS11, TLS12, begin_probe, client_hello, end_probe,
                       run_python, sandbox_script, secrets_in, server_answer_kind)

API = "api.example.test"
OTHER = "other.example.test"
DENY = "deny.example.test"
PINNED_IP = "203.0.113.7"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)


def api_rule():
    return header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {K}")])


@pytest.fixture(scope="module")
def env(shared_stack):
    st = shared_stack
    e = SimpleNamespace()
    e.api = st.tls_origin(API)
    e.other = st.tls_origin(OTHER)
    e.deny = st.tls_origin(DENY)
    e.origins = [e.api, e.other, e.deny]
    e.key = st.secret()
    e.d = st.start({"rules": [api_rule()], "access_control": {"deny_list": [DENY]}},
                   secrets={"K": e.key}, limits={"header_timeout_ms": 2000})
    e.ca = st.ca
    return e


@pytest.fixture
def tt(env, shared_stack, request):
    begin_probe(env, shared_stack, request)
    yield env
    end_probe(env)
    # still serving after whatever the probe sent
    assert client.https_request(env.d.port, API, env.ca, "/alive").status == 200


def hello_through_connect(e, hello, target=API, wait=2.0):
    """CONNECT target:443, send the raw hello, return the proxy's first bytes (until it closes,
    or what arrived within `wait`)."""
    raw, resp = client.connect(e.d.port, "%s:443" % target)
    if resp.status != 200:
        raw.close()
        return b"HTTP/1.1 %d" % resp.status
    raw.sendall(hello)
    raw.settimeout(wait)
    got = b""
    try:
        while True:
            b = raw.recv(65536)
            if not b:
                break
            got += b
            if len(got) > 5 and got[0] == 0x16:
                break  # a ServerHello: enough to know
    except (socket.timeout, ConnectionResetError):
        pass
    raw.close()
    return got


def nothing_forwarded(e):
    got = {o.name: o.bytes_received for o in e.origins if o.bytes_received}
    assert not got, got


# -- versions, ciphers: refused before a ServerHello -------------------------------------------------

def test_tls12_and_tls13_hellos_get_a_server_hello(tt):
    """The control for the refusals below: this hand-built hello is good enough otherwise."""
    assert server_answer_kind(hello_through_connect(tt, client_hello(API))) == "server_hello"
    assert server_answer_kind(hello_through_connect(tt, client_hello(API, versions=(TLS12,)))) == \
        "server_hello"


@pytest.mark.parametrize("versions", [(TLS10,), (TLS11,), (TLS11, TLS10)], ids=["tls1.0", "tls1.1", "tls1.1+1.0"])
def test_tls10_and_tls11_are_refused(tt, versions):
    got = hello_through_connect(tt, client_hello(API, versions=versions))
    assert server_answer_kind(got) in ("alert", "nothing"), got[:40]
    nothing_forwarded(tt)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_with_a_library_client_is_refused(tt):
    """The same with OpenSSL as the client (security level lowered so that it offers TLS 1.1)."""
    raw, resp = client.connect(tt.d.port, "%s:443" % API)
    assert resp.status == 200
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tt.ca)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(raw, server_hostname=API)
    raw.close()
    nothing_forwarded(tt)


def test_sslv2_compatible_hello_is_refused(tt):
    # An SSLv2-format CLIENT-HELLO (high bit length header, msg type 1, version 3.1)
    body = b"\x01\x03\x01\x00\x03\x00\x00\x00\x10" + b"\x00\x00\x2f" + os.urandom(16)
    got = hello_through_connect(tt, bytes([0x80 | (len(body) >> 8), len(body) & 0xff]) + body)
    assert server_answer_kind(got) in ("alert", "nothing", "http"), got[:40]
    if server_answer_kind(got) == "http":
        assert got.startswith(b"HTTP/1.1 400"), got[:60]
    nothing_forwarded(tt)


def test_only_weak_cipher_suites_are_refused(tt):
    """3DES, RC4, NULL and export suites only: no ServerHello."""
    weak = (0x000a, 0x0005, 0x0004, 0x0002, 0x0001, 0x0003)
    got = hello_through_connect(tt, client_hello(API, versions=(TLS12,), suites=weak))
    assert server_answer_kind(got) in ("alert", "nothing"), got[:40]
    nothing_forwarded(tt)


# -- SNI spellings on the explicit port --------------------------------------------------------------

def test_no_sni_gets_the_connect_targets_certificate_and_name(tt):
    """Without SNI the proxy presents the CONNECT target's name (not a default or another name)
    and requests must name that host."""
    raw, resp = client.connect(tt.d.port, "%s:443" % API)
    ctx = client.client_tls_context(tt.ca)
    ctx.check_hostname = False
    tls = ctx.wrap_socket(raw, server_hostname=None)
    cert = tls.getpeercert()
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    conn = client.Conn(tls)
    conn.send(client.request_bytes("GET", "/nosni", OTHER))
    r = conn.read_response()
    conn.close()
    assert names == [API], cert
    assert r.status == 421, r
    nothing_forwarded(tt)


@pytest.mark.parametrize("sni", ["127.0.0.1", "203.0.113.7", "[::1]", "::1", "2130706433", "0x7f000001"])
def test_ip_literal_sni_is_not_taken_as_a_name(tt, sni):
    """RFC 6066 forbids literal addresses in SNI. The proxy treats one as absent (presents the
    CONNECT target's certificate) or refuses the handshake; it never mints a certificate for it."""
    got = hello_through_connect(tt, client_hello(sni))
    kind = server_answer_kind(got)
    assert kind in ("server_hello", "alert", "nothing"), got[:40]
    nothing_forwarded(tt)


@pytest.mark.parametrize("sni,host,served", [
    ("API.EXAMPLE.TEST", API, True),
    ("api.example.test.", API, True),
    ("Api.Example.Test.", API, True),
    ("OTHER.EXAMPLE.TEST", API, False),
    ("other.example.test.", API, False),
    ("DENY.EXAMPLE.TEST.", DENY, False),
])
def test_sni_case_and_trailing_dot_name_the_same_host_only(tt, sni, host, served):
    """Letter case and a trailing dot do not make another name: SNI API in capitals or with a dot
    is API (served, or refused); any spelling of another host in a tunnel for API is refused."""
    raw, resp = client.connect(tt.d.port, "%s:443" % API)
    assert resp.status == 200
    ctx = client.client_tls_context(tt.ca)
    ctx.check_hostname = False
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni)
    except (ssl.SSLError, OSError):
        raw.close()
        status = "handshake refused"
    else:
        conn = client.Conn(tls)
        conn.send(client.request_bytes("GET", "/sni", host))
        try:
            status = conn.read_response().status
        except client.Closed:
            status = "closed"
        conn.close()
    if served:
        assert status in (200, 421, "handshake refused"), status
    else:
        assert status in (421, "handshake refused", "closed"), status
    assert tt.other.bytes_received == 0 and tt.deny.bytes_received == 0
    if status != 200:
        assert tt.api.bytes_received == 0


# -- ALPN -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offer", [["h2"], ["h2", "http/1.1"], ["http/1.1", "h2"], ["h3", "spdy/3.1"]])
def test_alpn_never_selects_anything_but_http11(tt, offer):
    raw, resp = client.connect(tt.d.port, "%s:443" % API)
    ctx = ssl.create_default_context(cafile=tt.ca)
    ctx.set_alpn_protocols(offer)
    tls = ctx.wrap_socket(raw, server_hostname=API)
    selected = tls.selected_alpn_protocol()
    conn = client.Conn(tls)
    conn.send(client.request_bytes("GET", "/alpn", API))
    r = conn.read_response()
    conn.close()
    assert selected in (None, "http/1.1"), selected
    assert selected == ("http/1.1" if "http/1.1" in offer else None)
    assert r.status == 200
    [req] = tt.api.wait_requests(1)
    assert req.values("Authorization") == ["Bearer " + tt.key]


def test_http2_preface_after_h2_offer_is_refused(tt):
    """A client that ignores the ALPN answer and speaks HTTP/2 anyway gets an HTTP/1.1 refusal."""
    raw, resp = client.connect(tt.d.port, "%s:443" % API)
    ctx = ssl.create_default_context(cafile=tt.ca)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(raw, server_hostname=API)
    conn = client.Conn(tls)
    # preface + an empty SETTINGS frame + a HEADERS frame (garbage HPACK)
    conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" +
              b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x8a")
    try:
        r = conn.read_response()
        status = r.status
    except client.Closed:
        status = "closed"
    closed = conn.closed_within(3.0) if status != "closed" else True
    conn.close()
    assert status in (400, 505, "closed") and closed, status
    nothing_forwarded(tt)


# -- garbage after CONNECT ------------------------------------------------------------------------------

def connect_then(e, data, same_write=False):
    """CONNECT API:443 followed by data (in the CONNECT's own write, or after the 200). Returns
    what the proxy sent back after the CONNECT head, until it closed."""
    s = client.proxy_socket(e.d.port)
    connect = b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (API.encode(), API.encode())
    if same_write:
        s.sendall(connect + data)
    else:
        s.sendall(connect)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = s.recv(1)
            if not b:
                break
            head += b
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(data)
    s.settimeout(4)
    got = b""
    closed = False
    try:
        while True:
            b = s.recv(65536)
            if not b:
                closed = True
                break
            got += b
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    s.close()
    return got, closed


GARBAGE = {
    "binary": bytes(range(256)) * 4,
    "nul_bytes": b"\x00" * 512,
    "tls_record_header_then_junk": b"\x16\x03\x01\x00\x40" + os.urandom(64),
    "tls_alert_record": b"\x15\x03\x03\x00\x02\x02\x28",
    "change_cipher_spec_first": b"\x14\x03\x03\x00\x01\x01" + client_hello(API),
    "hello_then_application_data": client_hello(API) + b"\x17\x03\x03\x00\x20" + os.urandom(32),
    "second_connect_inside": b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % (DENY.encode(), DENY.encode()),
    "http2_preface_in_clear": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lowercase_method": b"get / HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
@pytest.mark.parametrize("same_write", [False, True], ids=["after_200", "with_connect"])
def test_garbage_after_connect_is_refused_and_closed(tt, case, same_write):
    got, closed = connect_then(tt, GARBAGE[case], same_write)
    if same_write:
        got = got.split(b"\r\n\r\n", 1)[1] if got.startswith(b"HTTP/1.1 200") else got
    kind = server_answer_kind(got)
    # A TLS alert, an HTTP 400, or just a close; a ServerHello only for the hello cases, and then
    # the handshake must still fail (the junk that follows is not a valid continuation).
    assert closed, "the proxy kept the connection open after %r" % case
    assert kind in ("alert", "http", "nothing", "server_hello"), got[:60]
    if kind == "http":  # 400; 505 for HTTP/2.0; 421 for a Host that is not api.example.test:443
        assert got[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 501", b"HTTP/1.1 505", b"HTTP/1.1 421"), got[:80]
    nothing_forwarded(tt)
    assert not secrets_in(got)


@pytest.mark.parametrize("host,status", [(API + ":443", 403), (API, 421)])
def test_plain_http_inside_a_connect_to_443_gets_no_credential(tt, host, status):
    """Plain text inside a CONNECT tunnel to port 443: the proxy would talk plain HTTP upstream,
    so the credential rule (no allow_plaintext) refuses with 403 rather than send the key in
    clear; a Host without the port means port 80 for http, which is not the tunnel's: 421."""
    got, closed = connect_then(tt, client.request_bytes("GET", "/clear", host))
    assert got.startswith(b"HTTP/1.1 %d" % status), got[:100]
    nothing_forwarded(tt)
    assert not secrets_in(got)


def test_connect_with_a_body_is_refused(tt):
    s = client.proxy_socket(tt.d.port)
    s.sendall(b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\nContent-Length: 5\r\n\r\nhello"
              % (API.encode(), API.encode()))
    s.settimeout(4)
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    assert not got.startswith(b"HTTP/1.1 200") or got.count(b"HTTP/1.1") == 1, got[:200]
    nothing_forwarded(tt)


# -- the transparent path (sandbox): the ClientHello is all the proxy has -------------------------------

SPLIT_TLS = r'''
def split_tls(ip, sni, host, seg, pause, path="/split"):
    """A real TLS handshake whose ClientHello goes out `seg` bytes per TCP segment."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        s = socket.create_connection((ip, 443), timeout=5)
    except OSError as e:
        return {"error": err(e)}
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = True
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = out.read()
                if data and first:
                    for i in range(0, len(data), seg):
                        s.sendall(data[i:i + seg])
                        time.sleep(pause)
                    first = False
                elif data:
                    s.sendall(data)
                chunk = s.recv(65536)
                if not chunk:
                    return {"error": "closed during the handshake"}
                inc.write(chunk)
        data = out.read()
        if data:
            s.sendall(data)
        obj.write(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
        s.sendall(out.read())
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            inc.write(chunk)
            try:
                while True:
                    got += obj.read(65536)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
        return {"status": got[9:12].decode() if got.startswith(b"HTTP/1.1 ") else None}
    except (OSError, ssl.SSLError) as e:
        return {"error": err(e)}
    finally:
        s.close()
def raw_hello(ip, hello_hex, seg=None, pause=0.0):
    r = tcp_exchange((ip, 443), bytes.fromhex(hello_hex), timeout=4, chunks=seg, pause=pause)
    data = bytes.fromhex(r.get("received", ""))
    kind = "nothing" if not data else ("server_hello" if data[0] == 0x16 else
                                       "alert" if data[0] == 0x15 else "other")
    return {"kind": kind, "closed": r.get("closed", False), "error": r.get("error")}
'''


@needs_root
def test_transparent_clienthello_split_into_one_byte_segments(stack):
    """A ClientHello dribbled one byte per TCP segment: for an allowed name the handshake and the
    request succeed (the control), with the credential; for the denied name, refused."""
    api = stack.tls_origin(API)
    deny = stack.tls_origin(DENY)
    key = stack.secret()
    deny_hello = client_hello(DENY).hex()
    script = sandbox_script(SPLIT_TLS + r'''
OUT["allowed"] = split_tls("%s", "api.example.test", "api.example.test", 1, 0.001)
OUT["denied"] = raw_hello("%s", "%s", seg=1, pause=0.001)
''' % (PINNED_IP, PINNED_IP, deny_hello))
    run = run_python(stack, script, {"rules": [api_rule()], "access_control": {"deny_list": [DENY]}},
                     secrets={"K": key})
    out = run.results()
    assert out["allowed"] == {"status": "200"}, out
    assert out["denied"]["kind"] in ("nothing", "alert") and out["denied"]["closed"], out
    [req] = api.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert deny.bytes_received == 0


@needs_root
def test_transparent_sni_moved_into_a_later_record_is_still_seen(stack):
    """The ClientHello split over several TLS records, so that the first record (and the first
    segment) holds no server_name: the proxy reassembles and refuses the denied name."""
    deny = stack.tls_origin(DENY)
    hellos = {
        "two_records": client_hello(DENY, record_split=[40]).hex(),
        "many_records": client_hello(DENY, record_split=[8] * 30).hex(),
        "records_and_segments": client_hello(DENY, record_split=[3] * 10).hex(),
    }
    body = "".join('OUT["%s"] = raw_hello("%s", "%s", seg=%s, pause=0.001)\n'
                   % (k, PINNED_IP, v, "7" if k == "records_and_segments" else "None")
                   for k, v in hellos.items())
    run = run_python(stack, sandbox_script(SPLIT_TLS + body),
                     {"access_control": {"deny_list": [DENY]}})
    out = run.results()
    for k, v in out.items():
        assert v["kind"] in ("nothing", "alert") and v["closed"], (k, v)
    assert deny.bytes_received == 0
    denied = [r for r in run.audit_records() if r.get("host") == DENY and r["decision"] == "denied"]
    assert len(denied) == 3, run.audit_text()


@needs_root
def test_transparent_sni_spellings_of_a_denied_name_are_refused(stack):
    deny = stack.tls_origin(DENY)
    api = stack.tls_origin(API)
    names = ["DENY.EXAMPLE.TEST", "deny.example.test.", "Deny.Example.Test."]
    body = "".join('OUT["%s"] = raw_hello("%s", "%s")\n' % (n, PINNED_IP, client_hello(n).hex())
                   for n in names)
    body += 'OUT["control"] = raw_hello("%s", "%s")\n' % (PINNED_IP, client_hello(API).hex())
    run = run_python(stack, sandbox_script(SPLIT_TLS + body), {"access_control": {"deny_list": [DENY]}})
    out = run.results()
    for n in names:
        assert out[n]["kind"] in ("nothing", "alert"), (n, out[n])
    assert out["control"]["kind"] == "server_hello", out
    assert deny.bytes_received == 0 and api.bytes_received == 0


@needs_root
def test_transparent_ip_literal_sni_does_not_choose_the_destination(stack):
    """Under an allow_list, an SNI holding an IP literal (of an allowed-looking address or of
    loopback) is no name: the destination is the address dialled, which the list does not allow."""
    api = stack.tls_origin(API)
    body = "".join('OUT["%s"] = raw_hello("%s", "%s")\n' % (n, PINNED_IP, client_hello(n).hex())
                   for n in ("127.0.0.1", "10.0.0.1", "[::1]"))
    body += 'OUT["no_sni"] = raw_hello("%s", "%s")\n' % (PINNED_IP, client_hello(None).hex())
    body += 'OUT["control"] = raw_hello("%s", "%s")\n' % (PINNED_IP, client_hello(API).hex())
    run = run_python(stack, sandbox_script(SPLIT_TLS + body),
                     {"access_control": {"allow_list": [API]}})
    out = run.results()
    for k in ("127.0.0.1", "10.0.0.1", "[::1]", "no_sni"):
        assert out[k]["kind"] in ("nothing", "alert"), (k, out[k])
    assert out["control"]["kind"] == "server_hello", out
    assert api.bytes_received == 0


@needs_root
def test_transparent_old_tls_h2_and_oversized_hellos_are_refused(stack):
    api = stack.tls_origin(API)
    hellos = {
        "tls1.0": client_hello(API, versions=(TLS10,)),
        "tls1.1": client_hello(API, versions=(TLS11,)),
        "too_many_records": client_hello(API, record_split=[2] * 200),  # > 64 records
    }
    body = "".join('OUT["%s"] = raw_hello("%s", "%s")\n' % (k, PINNED_IP, v.hex())
                   for k, v in hellos.items())
    body += r'''
def alpn(offer):
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(offer)
    s = socket.create_connection(("%s", 443), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname="api.example.test")
        p = t.selected_alpn_protocol()
        t.close()
        return p
    except OSError as e:
        return err(e)
OUT["alpn_h2"] = alpn(["h2"])
OUT["alpn_h2_http11"] = alpn(["h2", "http/1.1"])
''' % PINNED_IP
    run = run_python(stack, sandbox_script(SPLIT_TLS + body), {"rules": [api_rule()]},
                     secrets={"K": stack.secret()})
    out = run.results()
    for k in hellos:
        assert out[k]["kind"] in ("nothing", "alert"), (k, out[k])
    assert out["alpn_h2"] is None and out["alpn_h2_http11"] == "http/1.1", out
    assert api.bytes_received == 0
