"""Upstream failures answer 502 with a body saying which (SPEC §3 Refusals).

A refusal may come as the answer to CONNECT or inside the tunnel; client.https_request returns
whichever response the proxy gave."""
from helpers import client
from helpers.daemon import free_port


def test_dns_failure_gets_502(stack, dns):
    d = stack.start()
    resp = client.https_request(d.port, "nx.example.test", stack.ca)
    assert resp.status == 502, resp
    assert resp.text.startswith("upstream DNS resolution failed"), resp
    # The proxy asked the configured resolver (nothing went anywhere else).
    assert dns.queried("nx.example.test")


def test_dns_failure_on_plain_http_gets_502(stack):
    d = stack.start()
    resp = client.http_request(d.port, "http://nx-plain.example.test/", "nx-plain.example.test")
    assert resp.status == 502, resp
    assert resp.text.startswith("upstream DNS resolution failed"), resp


def test_names_outside_dns_remap_are_resolved_with_the_upstream_resolver(stack, dns):
    origin = stack.tls_origin()  # no remap: reached through DNS
    dns.add_a("dns.example.test", "127.0.0.1")
    try:
        # 127.0.0.1 is internal: only a host the policy names exactly may lead there (SSRF guard,
        # tests/attack/test_ssrf.py)
        d = stack.start({"access_control": {"allow_list": ["dns.example.test"]}})
        resp = client.https_request(d.port, "dns.example.test", stack.ca, "/resolved",
                                    port=origin.port)
    finally:
        dns.remove("dns.example.test")
    assert resp.status == 200, resp
    assert [r.path for r in origin.snapshot()] == ["/resolved"]


def test_connection_refused_gets_502(stack):
    stack.remap("api.example.test", "127.0.0.1:%d" % free_port())
    d = stack.start()
    resp = client.https_request(d.port, "api.example.test", stack.ca)
    assert resp.status == 502, resp
    assert resp.text.startswith("upstream connect failed"), resp


def test_upstream_certificate_from_an_untrusted_root_gets_502(stack):
    origin = stack.tls_origin("api.example.test", cert="untrusted")
    d = stack.start()
    resp = client.https_request(d.port, "api.example.test", stack.ca)
    assert resp.status == 502, resp
    assert resp.text.startswith("upstream TLS verification failed"), resp
    assert origin.snapshot() == []


def test_upstream_certificate_for_another_name_gets_502(stack):
    origin = stack.tls_origin("api.example.test", cert="wrong_name")
    d = stack.start()
    resp = client.https_request(d.port, "api.example.test", stack.ca)
    assert resp.status == 502, resp
    assert resp.text.startswith("upstream TLS verification failed"), resp
    assert origin.snapshot() == []


def test_ambiguous_upstream_response_is_not_relayed(stack):
    """A response with both Content-Length and Transfer-Encoding could desynchronise the client
    connection; the proxy answers 502 instead of relaying it (http1.h)."""
    origin = stack.tls_origin("api.example.test")

    def ambiguous(o, conn, req, keep):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        return False
    origin.route("/ambiguous", ambiguous)
    d = stack.start()
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/ambiguous")
    assert resp.status == 502, resp
    assert b"smuggled" not in resp.received
