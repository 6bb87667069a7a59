"""Domain fronting (SPEC §5): the CONNECT target (or, transparently, the address dialled), the TLS
SNI, the request's absolute URI and its Host must all name the same host and port. The attacker
opens a connection for a name the policy allows (and credentials) and then names another one in
a later layer, hoping the proxy decides on one name and forwards to, or injects for, another.

Each probe asserts 421 (or an earlier refusal: 400 for a Host that is no host, a failed
handshake) and that no origin received a single byte: neither the fronted host (OTHER, which has
its own credential rule, or DENY, on the deny_list) nor the allowed one. Credentials never
appear in what the attacker receives.

tests/e2e/test_misdirected.py covers the basic forms once each; this file adds Host port and
syntax tricks, IP literals against names, the denied host as the fronted one, and the
transparent path inside a real sandbox (where the SNI alone names the destination).

How we know these can fail: against a scratch build whose conn.c skips host_header_agrees(), 23
of these probes failed (the proxy forwarded to the CONNECT target's or URI's host, or answered 502
after trying an IP literal); with the SNI comparison removed instead, the probe where only the SNI
differs (sni_differs_host_follows_target) failed.
"""
import os
import ssl
from types import SimpleNamespace

import pytest

from e2e_conftest import header_rule
from helpers import client
from attacklib import (ROOT_ONLY_REASON, begin_probe, end_probe, run_python, sandbox_script,
                       secrets_in)

API = "api.example.test"
OTHER = "other.example.test"
DENY = "deny.example.test"
PLAIN = "plain.example.test"
PINNED_IP = "203.0.113.7"  # TEST-NET-3: never routed; a sandbox dials it, capture does the rest
# The IP literal of the explicit-port probes: on loopback, with nothing listening, so that even a
# proxy that wrongly forwarded would send nothing off the machine (and fail the probe with 502).
IP_LITERAL = "127.0.0.9"


def rules(api_key, other_key):
    return [header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {A}")]),
            header_rule("other", [OTHER], [("Authorization", "workspace_secret", "Bearer {O}")]),
            header_rule("plain", [PLAIN], [("Authorization", "workspace_secret", "Bearer {A}")],
                        allow_plaintext=True)]


@pytest.fixture(scope="module")
def env(shared_stack):
    st = shared_stack
    e = SimpleNamespace()
    e.api = st.tls_origin(API)
    e.other = st.tls_origin(OTHER)
    e.deny = st.tls_origin(DENY)
    e.plain = st.plain_origin(PLAIN)
    e.plain_other = st.plain_origin("plain-other.example.test")
    e.origins = [e.api, e.other, e.deny, e.plain, e.plain_other]
    e.api_key, e.other_key = st.secret(), st.secret()
    e.d = st.start({"rules": rules(e.api_key, e.other_key),
                    "access_control": {"deny_list": [DENY]}},
                   secrets={"A": e.api_key, "O": e.other_key})
    e.ca = st.ca
    return e


@pytest.fixture
def fr(env, shared_stack, request):
    begin_probe(env, shared_stack, request)
    yield env
    end_probe(env)


def nothing_forwarded(e):
    got = {o.name: o.bytes_received for o in e.origins if o.bytes_received}
    assert not got, "origins received bytes: %r" % got


def request_in_tunnel(e, connect_host, sni, host, target="/", port=443):
    """CONNECT connect_host:port, TLS with this SNI (None: no SNI extension, no verification),
    one request with this Host. Returns (status or "handshake refused"/"closed", bytes
    received)."""
    raw, resp = client.connect(e.d.port, "%s:%d" % (connect_host, port))
    if resp.status != 200:
        raw.close()
        return resp.status, resp.body
    ctx = client.client_tls_context(e.ca)
    if sni is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = False  # the leaf is minted for the SNI; fronting names may not match
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni)
    except (ssl.SSLError, OSError):
        raw.close()
        return "handshake refused", b""
    tls.settimeout(5)
    conn = client.Conn(tls)
    try:
        conn.send(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)).encode("latin-1"))
        return conn.read_response().status, conn.received
    except client.Closed:
        return "closed", conn.received
    finally:
        conn.close()


# -- SNI, CONNECT target and Host ------------------------------------------------------------------

# (CONNECT target, SNI, Host): each names the allowed, credentialed API in one layer and
# another host in another.
FRONTS = {
    "host_differs_from_sni_and_target": (API, API, OTHER),
    "host_is_the_denied_host": (API, API, DENY),
    "sni_differs_from_target_host_follows_sni": (API, OTHER, OTHER),
    "sni_is_the_denied_host": (API, DENY, DENY),
    "sni_differs_host_follows_target": (API, OTHER, API),
    "target_is_the_denied_host": (DENY, API, API),
    "target_other_sni_and_host_api": (OTHER, API, API),
    "no_sni_host_differs": (API, None, OTHER),
    "ip_literal_target_name_sni": (IP_LITERAL, API, API),
    "ip_literal_target_no_sni": (IP_LITERAL, None, API),
    "name_target_ip_literal_host": (API, API, IP_LITERAL),
    "loopback_target_name_sni": ("127.0.0.1", API, API),
    "uppercase_sni_other": (API, "OTHER.EXAMPLE.TEST", OTHER),
    "trailing_dot_sni_other": (API, "other.example.test.", OTHER),
}


@pytest.mark.parametrize("case", sorted(FRONTS))
def test_names_disagreeing_across_layers_get_421_and_nothing_is_forwarded(fr, case):
    target, sni, host = FRONTS[case]
    status, received = request_in_tunnel(fr, target, sni, host)
    # 421 from the proxy; 403 where the CONNECT itself was refused (denied host, loopback);
    # a refused handshake is also fine. Never a response from an origin.
    assert status in (421, 403, "handshake refused", "closed"), (status, received[:300])
    nothing_forwarded(fr)
    assert not secrets_in(received)


def test_the_same_names_in_every_layer_are_served(fr):
    """The control for the table above: agreeing names (in any letter case, with the default port
    spelled out) reach the origin with the credential, so the refusals are about the mismatch."""
    for host in (API, "API.Example.Test", API + ":443"):
        status, _ = request_in_tunnel(fr, API, API, host)
        assert status == 200, (host, status)
    reqs = fr.api.snapshot()
    assert len(reqs) == 3 and all(r.values("Authorization") == ["Bearer " + fr.api_key] for r in reqs)


# -- Host syntax and port tricks inside a tunnel for api.example.test:443 ---------------------------

HOST_TRICKS = [
    API + ":8443", API + ":80", API + ":65979",  # 443 + 2^16: a port parser that wraps reads 443
    API + ":-443", API + ":443:443", API + ":4430", API + ":0x1bb",
    API + "@" + OTHER, OTHER + "@" + API, API + ":443@" + OTHER,
    OTHER + "#" + API, OTHER + "/" + API, OTHER + "?" + API, OTHER + "\\" + API,
    API + " " + OTHER, API + "," + OTHER, OTHER + ":443," + API,
    "api%2eexample.test", "api.example.test%00.other.example.test", "[::1]", "[" + API + "]",
    "127.0.0.1", "localhost", "0", "",
    "api.example.test.other.example.test", "other.example.test.api.example.test",
    "xn--api.example.test", "*.example.test",
]


@pytest.mark.parametrize("host", HOST_TRICKS)
def test_host_header_tricks_in_a_tunnel_get_421_or_400(fr, host):
    status, received = request_in_tunnel(fr, API, API, host)
    assert status in (400, 421), (host, status, received[:300])
    nothing_forwarded(fr)
    assert not secrets_in(received)


SAME_HOST_SPELLINGS = [API + ".", API + ":", API + ":0443", API + ".:443"]


@pytest.mark.parametrize("host", SAME_HOST_SPELLINGS)
def test_other_spellings_of_the_tunnel_host_are_refused_or_reach_only_it(fr, host):
    """Spellings that denote api.example.test:443 (trailing dot, empty port, leading zero): the
    proxy may treat them as the same host or refuse, but may not send them anywhere else."""
    status, received = request_in_tunnel(fr, API, API, host)
    assert status in (200, 400, 421), (host, status)
    got = {o.name: o.bytes_received for o in fr.origins if o.bytes_received and o is not fr.api}
    assert not got, got
    if status != 200:
        assert fr.api.bytes_received == 0


# -- absolute-form URIs -----------------------------------------------------------------------------

ABSOLUTE_IN_TUNNEL = ["https://%s/" % OTHER, "https://%s/" % DENY, "http://%s/" % API,
                      "https://%s:8443/" % API, "https://%s@%s/" % (API, OTHER),
                      "https://%s:443/" % OTHER, "HTTPS://%s/" % OTHER]


@pytest.mark.parametrize("uri", ABSOLUTE_IN_TUNNEL)
def test_absolute_uri_in_a_tunnel_naming_another_host_gets_421(fr, uri):
    status, received = request_in_tunnel(fr, API, API, API, target=uri)
    assert status in (400, 421), (uri, status)
    nothing_forwarded(fr)
    assert not secrets_in(received)


ABSOLUTE_PLAIN = [("http://%s/" % PLAIN, "plain-other.example.test"),
                  ("http://plain-other.example.test/", PLAIN),
                  ("http://%s/" % PLAIN, PLAIN + ":8080"),
                  ("http://%s:80/" % PLAIN, PLAIN + ":81"),
                  ("http://%s/" % DENY, PLAIN),
                  ("http://%s/" % PLAIN, DENY),
                  ("http://%s/" % PLAIN, IP_LITERAL),
                  ("http://%s/" % IP_LITERAL, PLAIN),
                  ("http://%s@%s/" % (PLAIN, "plain-other.example.test"), PLAIN),
                  ("http://%s/" % PLAIN, "%s@plain-other.example.test" % PLAIN)]


@pytest.mark.parametrize("uri,host", ABSOLUTE_PLAIN)
def test_absolute_uri_differing_from_host_on_the_plain_port_gets_421(fr, uri, host):
    resp = client.http_request(fr.d.port, uri, host)
    assert resp.status in (400, 403, 421), (uri, host, resp)
    nothing_forwarded(fr)
    assert not secrets_in(resp.received)


# -- the transparent path: a real sandbox, where the SNI or Host is all the proxy learns ------------

SANDBOX_TLS = r'''
def tls_request(sni, host, ip="%s"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    if sni is None:
        ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection((ip, 443), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
    except OSError as e:
        s.close()
        return {"error": err(e)}
    t.settimeout(5)
    t.sendall(("GET /t HTTP/1.1\r\nHost: %%s\r\n\r\n" %% host).encode())
    got = b""
    try:
        while True:
            b = t.recv(65536)
            if not b:
                break
            got += b
    except OSError as e:
        pass
    t.close()
    return {"status": got[9:12].decode() if got.startswith(b"HTTP/1.1 ") else None,
            "data": got.decode("latin-1")}
''' % PINNED_IP


@pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)
def test_transparent_sni_and_host_disagreeing_get_421(stack):
    api = stack.tls_origin(API)
    other = stack.tls_origin(OTHER)
    deny = stack.tls_origin(DENY)
    a, o = stack.secret(), stack.secret()
    script = sandbox_script(SANDBOX_TLS + r'''
OUT["sni_api_host_other"] = tls_request("api.example.test", "other.example.test")
OUT["sni_api_host_deny"] = tls_request("api.example.test", "deny.example.test")
OUT["sni_other_host_api"] = tls_request("other.example.test", "api.example.test")
OUT["no_sni_host_api"] = tls_request(None, "api.example.test")
OUT["control"] = tls_request("api.example.test", "api.example.test")
''')
    run = run_python(stack, script, {"rules": rules(a, o), "access_control": {"deny_list": [DENY]}},
                     secrets={"A": a, "O": o})
    out = run.results()
    for k in ("sni_api_host_other", "sni_api_host_deny", "sni_other_host_api", "no_sni_host_api"):
        assert out[k].get("status") == "421" or "error" in out[k], (k, out[k])
    # The control proves the sandbox can reach API this way at all, with its credential.
    assert out["control"].get("status") == "200", out["control"]
    [req] = api.snapshot()
    assert req.path == "/t" and req.values("Authorization") == ["Bearer " + a]
    assert other.bytes_received == 0 and deny.bytes_received == 0
    assert not secrets_in(run.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)
def test_transparent_plain_http_second_request_for_another_host_gets_421(stack):
    """Transparent plain HTTP: the connection's name is its first request's Host. A second request
    on it naming another host (allowed or denied) is misdirected."""
    plain = stack.plain_origin(PLAIN)
    other = stack.plain_origin("plain-other.example.test")
    deny = stack.plain_origin(DENY)
    a, o = stack.secret(), stack.secret()
    script = sandbox_script(r'''
import re
def two(second):
    req = b"GET /1 HTTP/1.1\r\nHost: plain.example.test\r\n\r\n" + \
          ("GET /2 HTTP/1.1\r\nHost: %s\r\n\r\n" % second).encode()
    r = tcp_exchange(("203.0.113.7", 80), req)
    data = bytes.fromhex(r.get("received", ""))
    return [m.decode() for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
OUT["other"] = two("plain-other.example.test")
OUT["deny"] = two("deny.example.test")
OUT["port"] = two("plain.example.test:8080")
''')
    run = run_python(stack, script, {"rules": rules(a, o), "access_control": {"deny_list": [DENY]}},
                     secrets={"A": a, "O": o})
    out = run.results()
    assert out == {"other": ["200", "421"], "deny": ["200", "421"], "port": ["200", "421"]}, out
    assert [r.path for r in plain.snapshot()] == ["/1", "/1", "/1"]
    assert all(r.values("Authorization") == ["Bearer " + a] for r in plain.snapshot())
    assert other.bytes_received == 0 and deny.bytes_received == 0
