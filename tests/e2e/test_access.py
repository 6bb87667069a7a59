"""access_control and no_proxy (SPEC §3 steps 1-2)."""
import ssl

from conftest import header_rule
from helpers import client


def test_deny_list_refuses_connect_with_403(stack):
    origin = stack.tls_origin("deny.example.test")
    d = stack.start({"access_control": {"deny_list": ["deny.example.test"]}})
    s, resp = client.connect(d.port, "deny.example.test:443")
    s.close()
    assert resp.status == 403, resp
    assert resp.text.startswith("denied by deny_list"), resp
    assert origin.accepts == 0


def test_deny_list_refuses_plain_http_with_403(stack):
    origin = stack.plain_origin("deny.example.test")
    d = stack.start({"access_control": {"deny_list": ["*.example.test"]}})
    resp = client.http_request(d.port, "http://deny.example.test/", "deny.example.test")
    assert resp.status == 403, resp
    assert resp.text.startswith("denied by deny_list"), resp
    assert origin.accepts == 0


def test_deny_list_wins_over_allow_list(stack):
    origin = stack.tls_origin("deny.example.test")
    d = stack.start({"access_control": {"allow_list": ["*.example.test"],
                                        "deny_list": ["DENY.example.test"]}})
    resp = client.https_request(d.port, "deny.example.test", stack.ca)
    assert resp.status == 403 and resp.text.startswith("denied by deny_list"), resp
    assert origin.accepts == 0


def test_host_not_in_a_non_empty_allow_list_is_refused(stack):
    origin = stack.tls_origin("other.example.test")
    d = stack.start({"access_control": {"allow_list": ["allowed.example.test"]}})
    s, resp = client.connect(d.port, "other.example.test:443")
    s.close()
    assert resp.status == 403, resp
    assert resp.text.startswith("denied by allow_list"), resp
    assert origin.accepts == 0


def test_host_in_the_allow_list_is_let_through(stack):
    origin = stack.tls_origin("allowed.example.test", "api.example.test")
    d = stack.start({"access_control": {"allow_list": ["allowed.example.test"]}})
    ok = client.https_request(d.port, "allowed.example.test", stack.ca, "/")
    assert ok.status == 200, ok
    refused = client.http_request(d.port, "http://api.example.test/", "api.example.test")
    assert refused.status == 403 and refused.text.startswith("denied by allow_list"), refused
    assert len(origin.snapshot()) == 1


def test_access_control_applies_to_no_proxy_hosts_too(stack):
    origin = stack.tls_origin("np.example.test")
    d = stack.start({"no_proxy": ["np.example.test"],
                     "access_control": {"deny_list": ["np.example.test"]}})
    s, resp = client.connect(d.port, "np.example.test:443")
    s.close()
    assert resp.status == 403 and resp.text.startswith("denied by deny_list"), resp
    assert origin.accepts == 0


def test_no_proxy_host_is_tunnelled_without_tls_termination(stack, pki):
    origin = stack.tls_origin("np.example.test")
    key = stack.secret()
    rule = header_rule("np", ["np.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule], "no_proxy": ["np.example.test"]}, secrets={"K": key})
    raw, resp = client.connect(d.port, "np.example.test:443")
    assert resp.status == 200, resp
    # The client trusts only the test PKI root, not the interception CA: the handshake
    # succeeds only if it reaches the origin itself.
    ctx = ssl.create_default_context(cafile=pki.root_path)
    tls = ctx.wrap_socket(raw, server_hostname="np.example.test")
    tls.settimeout(5)
    issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
    assert issuer["commonName"] == "authproxy e2e test root"
    c = client.Conn(tls)
    c.send(client.request_bytes("GET", "/np", "np.example.test"))
    r = c.read_response()
    c.close()
    assert r.status == 200, r
    [req] = origin.snapshot()
    assert req.values("Authorization") == [], "nothing may be injected into a no_proxy tunnel"
    recs = d.wait_audit(lambda a: a.get("host") == "np.example.test")
    assert recs and recs[0]["decision"] == "bypassed", recs



def test_deny_list_is_not_bypassed_by_case_or_a_trailing_dot(stack, dns):
    """deny.example.test. (fully qualified) and DeNy.Example.TEST name the same host. The name
    resolves (through the test DNS server) to the origin, so a proxy that compared names
    literally would connect; it must refuse instead."""
    origin = stack.tls_origin()
    dns.add_a("deny.example.test", "127.0.0.1")
    try:
        d = stack.start({"access_control": {"deny_list": ["deny.example.test"]}})
        for name in ("DeNy.Example.TEST", "deny.example.test.", "DENY.EXAMPLE.TEST."):
            s, resp = client.connect(d.port, "%s:%d" % (name, origin.port))
            s.close()
            assert resp.status == 403 and resp.text.startswith("denied by deny_list"), (name, resp)
            r = client.http_request(d.port, "http://%s:%d/" % (name, origin.port),
                                    "%s:%d" % (name, origin.port))
            assert r.status == 403 and r.text.startswith("denied by deny_list"), (name, r)
    finally:
        dns.remove("deny.example.test")
    assert origin.accepts == 0
