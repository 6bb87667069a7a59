"""SSRF: the sandbox tries to make the proxy reach internal addresses — loopback, link-local
(cloud metadata at 169.254.169.254), private ranges, authproxy's own control API — by IP literal,
by a name that resolves there (DNS rebinding), or by IPv6 forms of those addresses.

The rule (docs/SECURITY.md): an internal address is dialled only for a host the policy names
exactly (an exact allow_list / no_proxy / rule / callback pattern, not a wildcard) or that the
operator's dns_remap maps; checked on the resolved address at connect time. authproxy's own
listeners are refused whatever the policy says. Each probe asserts the refusal (403, decided
by internal_address or self) and that the internal origin saw nothing."""
import socket

import pytest

from helpers import client
from helpers.origin import Origin


@pytest.fixture
def internal(stack):
    """A plain-HTTP origin on 127.0.0.1 that no dns_remap points to: reaching it is the attack."""
    o = Origin(name="internal")
    stack.servers.append(o)
    return o


def get(d, url, host):
    return client.http_request(d.port, url, host)


ALLOW_ALL = {"access_control": {"allow_list": ["*"]}}


@pytest.mark.parametrize("target", ["127.0.0.1", "127.1.2.3", "localhost-literal", "[::1]",
                                    "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_loopback_by_ip_literal_is_refused(stack, internal, target):
    if target == "localhost-literal":
        target = "127.0.0.1"
    d = stack.start(ALLOW_ALL)
    authority = "%s:%d" % (target, internal.port)
    r = get(d, "http://%s/secret" % authority, authority)
    assert r.status == 403, r
    assert b"internal" in r.body
    assert internal.snapshot() == [] and internal.accepts == 0
    [rec] = d.wait_audit(lambda a: a.get("path") == "/secret")
    assert rec["decision"] == "denied" and rec["decided_by"] == "internal_address"


@pytest.mark.parametrize("ip", ["169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                "100.64.0.1", "198.18.0.5", "[fe80::1]", "[fd00::1]"])
def test_metadata_and_private_ranges_are_refused_without_a_connection(stack, ip):
    d = stack.start(ALLOW_ALL)
    r = get(d, "http://%s/latest/meta-data/" % ip, ip)
    assert r.status == 403 and b"internal" in r.body, r


def test_a_name_resolving_to_loopback_is_refused_even_under_an_allowed_wildcard(stack, dns,
                                                                                internal):
    """DNS rebinding: the attacker's name (inside an allowed wildcard) answers 127.0.0.1."""
    dns.add_a("rebind.example.test", "127.0.0.1")
    try:
        d = stack.start({"access_control": {"allow_list": ["*.example.test"]}})
        authority = "rebind.example.test:%d" % internal.port
        r = get(d, "http://%s/x" % authority, authority)
        assert r.status == 403 and b"internal" in r.body, r
        assert internal.accepts == 0
    finally:
        dns.remove("rebind.example.test")


def test_intercepted_https_to_an_internal_name_is_refused(stack, dns, pki):
    cert, key = pki.good
    o = Origin(cert, key, name="internal-tls")
    stack.servers.append(o)
    dns.add_a("api.example.test", "127.0.0.1")
    try:
        d = stack.start(ALLOW_ALL)
        r = client.https_request(d.port, "api.example.test", stack.ca, path="/x",
                                 port=o.port)
        assert r.status == 403 and b"internal" in r.body, r
        assert o.accepts == 0
    finally:
        dns.remove("api.example.test")


def test_the_control_api_is_refused_even_when_the_policy_names_it(stack):
    from helpers.control import ControlDaemon
    cfg = stack.config({"access_control": {"allow_list": ["127.0.0.1"]},
                        "no_proxy": ["127.0.0.1"]})
    import os
    d = ControlDaemon(stack.binary, os.path.join(stack.tmp, "ctl"), stack.dns.addr, cfg)
    stack.daemons.append(d)
    d.start()
    authority = "127.0.0.1:%d" % d.control_port
    r = get(d, "http://%s/healthz" % authority, authority)
    assert r.status == 403 and b"authproxy itself" in r.body, r
    # and through a CONNECT tunnel (no_proxy names it): refused before any byte flows
    s = client.proxy_socket(d.port)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority)).encode())
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head


def test_an_exactly_named_internal_host_is_allowed(stack, internal):
    """The escape hatch: a policy that names 127.0.0.1 exactly may reach it."""
    d = stack.start({"access_control": {"allow_list": ["127.0.0.1"]}})
    authority = "127.0.0.1:%d" % internal.port
    r = get(d, "http://%s/ok" % authority, authority)
    assert r.status == 200, r
    assert [q.path for q in internal.snapshot()] == ["/ok"]


def test_a_rule_naming_an_internal_name_exactly_allows_it(stack, dns, internal):
    dns.add_a("intranet.example.test", "127.0.0.1")
    try:
        rule = {"name": "intranet", "match_hosts": ["intranet.example.test"],
                "allow_plaintext": True,
                "headers": [{"name": "X-Internal", "type": "plaintext", "value": "1"}]}
        d = stack.start({"rules": [rule]})
        authority = "intranet.example.test:%d" % internal.port
        r = get(d, "http://%s/in" % authority, authority)
        assert r.status == 200, r
        assert internal.snapshot()[0].values("X-Internal") == ["1"]
    finally:
        dns.remove("intranet.example.test")


def test_pooled_connections_do_not_carry_permission_across_policies(stack, dns, internal):
    """A connection opened for a request whose policy named the host is not reused for one
    whose policy did not (the pool key includes the permission)."""
    dns.add_a("pool.example.test", "127.0.0.1")
    try:
        d = stack.start({"access_control": {"allow_list": ["pool.example.test"]}})
        authority = "pool.example.test:%d" % internal.port
        assert get(d, "http://%s/1" % authority, authority).status == 200
        d.reload(stack.config({"access_control": {"allow_list": ["*"]}}))
        client.wait_for(lambda: "policy version 3" in d.stderr_text())
        r = get(d, "http://%s/2" % authority, authority)
        assert r.status == 403, r
        assert [q.path for q in internal.snapshot()] == ["/1"]
    finally:
        dns.remove("pool.example.test")
