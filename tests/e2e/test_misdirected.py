"""The TLS name, the Host header and the CONNECT target must agree (SPEC §5): otherwise 421,
and the request is never sent, with or without credentials."""
import ssl

from conftest import header_rule
from helpers import client


def wildcard_rule():
    return header_rule("all", ["*.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])


def test_host_header_differing_from_the_connect_target_gets_421(stack):
    origin = stack.tls_origin("api.example.test", "other.example.test")
    key = stack.secret()
    d = stack.start({"rules": [wildcard_rule()]}, secrets={"K": key})
    conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
    assert refused is None, refused
    conn.send(client.request_bytes("GET", "/", "other.example.test"))
    resp = conn.read_response()
    conn.close()
    assert resp.status == 421, resp
    assert resp.text.startswith("misdirected request"), resp
    assert origin.bytes_received == 0
    assert key.encode() not in conn.received


def test_second_request_with_another_host_on_a_tunnel_gets_421(stack):
    origin = stack.tls_origin("api.example.test", "other.example.test")
    d = stack.start({"rules": [wildcard_rule()]}, secrets={"K": stack.secret()})
    conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
    assert refused is None, refused
    conn.send(client.request_bytes("GET", "/first", "api.example.test"))
    first = conn.read_response()
    conn.send(client.request_bytes("GET", "/second", "other.example.test"))
    second = conn.read_response()
    conn.close()
    assert first.status == 200, first
    assert second.status == 421 and second.text.startswith("misdirected request"), second
    assert [r.path for r in origin.snapshot()] == ["/first"]


def test_sni_differing_from_the_connect_target_is_never_forwarded(stack):
    origin = stack.tls_origin("api.example.test", "other.example.test")
    d = stack.start({"rules": [wildcard_rule()]}, secrets={"K": stack.secret()})
    raw, resp = client.connect(d.port, "api.example.test:443")
    assert resp.status == 200, resp
    ctx = client.client_tls_context(stack.ca)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="other.example.test")
    except (ssl.SSLError, OSError):
        pass  # refusing the handshake is a correct answer too
    else:
        conn = client.Conn(tls)
        tls.settimeout(5)
        conn.send(client.request_bytes("GET", "/", "other.example.test"))
        try:
            r = conn.read_response()
            assert r.status == 421, r
        except client.Closed:
            pass
        conn.close()
    assert origin.bytes_received == 0


def test_absolute_uri_authority_differing_from_host_gets_421(stack):
    origin = stack.plain_origin("plain.example.test", "other.example.test")
    d = stack.start()
    resp = client.http_request(d.port, "http://plain.example.test/x", "other.example.test")
    assert resp.status == 421, resp
    assert resp.text.startswith("misdirected request"), resp
    assert origin.bytes_received == 0


def test_absolute_form_inside_a_tunnel_naming_another_host_gets_421(stack):
    origin = stack.tls_origin("api.example.test", "other.example.test")
    d = stack.start({"rules": [wildcard_rule()]}, secrets={"K": stack.secret()})
    conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
    assert refused is None, refused
    conn.send(client.request_bytes("GET", "https://other.example.test/", "api.example.test"))
    resp = conn.read_response()
    conn.close()
    assert resp.status == 421 and resp.text.startswith("misdirected request"), resp
    assert origin.bytes_received == 0
