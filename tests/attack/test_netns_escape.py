"""Escapes from the sandbox's network namespace (SPEC §5, netns.h, jail.h): the attacker looks for
a path that does not lead through the proxy: raw and packet sockets, a namespace of its own
(network or user), IPv6, UDP (QUIC to 443, DNS to a resolver of its choosing), ICMP, the host's
abstract UNIX sockets, changing its routes or firewall.

Each probe runs as a script inside a real sandbox (`authproxy sandbox run`) and asserts the
attempt fails. Where the attempt would deliver something, a listener on the host (TCP, UDP,
abstract UNIX socket) records what arrives and must have received nothing. Where it makes sense
the same probe runs on the host first as a control (the test runs as root there), so a probe that
"fails" because it is written wrongly is caught.
"""
import os
import secrets
import socket
import subprocess
import threading
import time

import pytest

from e2e_conftest import header_rule
from attacklib import (RCODE_NOERROR, RCODE_REFUSED, ROOT_ONLY_REASON, dns_script, run_python,
                       sandbox_script)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)

API = "api.example.test"


class Listener:
    """A host-side TCP or UDP listener on every address (v4 and v6) that records what arrives."""

    def __init__(self, kind):
        self.kind = kind
        self.events = []
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", 0))
        self.port = self.sock.getsockname()[1]
        if kind == "tcp":
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                if self.kind == "tcp":
                    c, peer = self.sock.accept()
                    self.events.append(("accept", peer[0]))
                    c.close()
                else:
                    data, peer = self.sock.recvfrom(65536)
                    self.events.append(("datagram", peer[0], len(data)))
            except (socket.timeout, OSError):
                continue

    def self_check(self):
        """The control: something sent from the host over IPv4 and IPv6 loopback is recorded
        (then the record is cleared), so an empty record later means nothing arrived."""
        for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            s = socket.socket(fam, socket.SOCK_STREAM if self.kind == "tcp" else socket.SOCK_DGRAM)
            if self.kind == "tcp":
                s.connect((addr, self.port))
            else:
                s.sendto(b"control", (addr, self.port))
            s.close()
        deadline = time.monotonic() + 3
        while len(self.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.events) == 2, self.events
        self.events.clear()

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def tcp_listener():
    l = Listener("tcp")
    l.self_check()
    yield l
    l.close()


@pytest.fixture
def udp_listener():
    l = Listener("udp")
    l.self_check()
    yield l
    l.close()


RAW_SOCKETS = r'''
import socket
kinds = {
    "inet_raw_icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "inet_raw_tcp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    "inet_raw_udp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    "inet_raw_ipproto_raw": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
    "inet6_raw_icmpv6": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    "packet_raw": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
    "packet_dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
    "netlink_route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "netlink_netfilter": (socket.AF_NETLINK, socket.SOCK_RAW, 12),
}
for k, a in kinds.items():
    try:
        socket.socket(*a).close()
        OUT[k] = "created"
    except OSError as e:
        OUT[k] = "refused: %s" % e
'''


def test_raw_packet_and_netlink_sockets_cannot_be_opened(stack):
    # Control: as root on the host every one of these is created (nothing is sent).
    host = {}
    exec(RAW_SOCKETS.replace("OUT[", "host["), {"OUT": host, "host": host})
    assert all(v == "created" for v in host.values()), host
    out = run_python(stack, sandbox_script(RAW_SOCKETS)).results()
    assert all(v.startswith("refused") for v in out.values()), out


NAMESPACES = r'''
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
def call(fn, *args):
    rc = fn(*args)
    return "ok" if rc == 0 else "refused: errno %d" % ctypes.get_errno()
OUT["unshare_net"] = call(libc.unshare, CLONE_NEWNET)
OUT["unshare_user"] = call(libc.unshare, CLONE_NEWUSER)
OUT["unshare_user_net"] = call(libc.unshare, CLONE_NEWUSER | CLONE_NEWNET)
OUT["unshare_mount"] = call(libc.unshare, CLONE_NEWNS)
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
OUT["setns_net"] = call(libc.setns, fd, CLONE_NEWNET)
for argv in (["unshare", "-n", "true"], ["unshare", "-U", "-r", "true"],
             ["unshare", "-U", "-r", "-n", "true"], ["unshare", "--fork", "-p", "-U", "-r", "true"]):
    p = subprocess.run(argv, capture_output=True)
    OUT[" ".join(argv)] = "ok" if p.returncode == 0 else "refused: %s" % p.stderr.decode().strip()
OUT["run_netns"] = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
'''


def test_new_network_and_user_namespaces_cannot_be_made_or_joined(stack):
    """unshare(2) of a network or user namespace (a user namespace would give CAP_NET_ADMIN over a
    new network namespace), setns(2), the unshare(1) tool; and the host's named namespaces are
    not visible. Control: `unshare -U -r -n true` works on the host."""
    assert subprocess.run(["unshare", "-U", "-r", "-n", "true"]).returncode == 0
    out = run_python(stack, sandbox_script(NAMESPACES)).results()
    for k, v in out.items():
        if k == "run_netns":
            assert v == [], "host namespaces visible: %r" % v
        else:
            assert v.startswith("refused"), (k, v)


def test_ipv6_egress_fails_and_reaches_no_host_service(stack, tcp_listener, udp_listener):
    """IPv6 is disabled inside: TCP and UDP to global, loopback and link-local v6 addresses fail;
    nothing reaches host listeners bound on [::] (v4 and v6)."""
    script = sandbox_script(r'''
tp, up = %d, %d
def v6_tcp(addr):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(addr)
        s.close()
        return "connected"
    except OSError as e:
        return "failed: " + err(e)
def v6_udp(addr):
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.sendto(b"x" * 100, addr)
        s.close()
        return "sent"
    except OSError as e:
        return "failed: " + err(e)
OUT["tcp_global"] = v6_tcp(("2001:db8::1", 443))
OUT["tcp_loopback"] = v6_tcp(("::1", tp))
OUT["tcp_link_local"] = v6_tcp(("fe80::1", tp, 0, 2))
OUT["tcp_mapped_gateway"] = v6_tcp(("::ffff:" + gateway(), 5))
OUT["udp_global"] = v6_udp(("2001:db8::1", 443))
OUT["udp_loopback"] = v6_udp(("::1", up))
OUT["addresses"] = open("/proc/net/if_inet6").read() if os.path.exists("/proc/net/if_inet6") else ""
''' % (tcp_listener.port, udp_listener.port))
    out = run_python(stack, script).results()
    for k in ("tcp_global", "tcp_loopback", "tcp_link_local", "udp_global", "udp_loopback"):
        assert out[k].startswith("failed"), (k, out[k])
    assert out["addresses"] == "", "IPv6 addresses inside: %r" % out["addresses"]
    assert tcp_listener.events == [] and udp_listener.events == []


def test_direct_tcp_to_a_host_service_is_captured_not_delivered(stack, tcp_listener):
    """TCP to the host end of the veth (the only address routed) on the port of a host service
    bound to every address: the capture sends it to the proxy, which refuses a non-HTTP, non-TLS
    stream; the service never sees a connection."""
    script = sandbox_script(r'''
OUT["gw"] = tcp_exchange((gateway(), %d), b"\x00\x01 not http, not tls\r\n", timeout=3)
OUT["gw_http"] = tcp_exchange((gateway(), %d), b"GET / HTTP/1.1\r\nHost: 10.200.0.1\r\n\r\n", timeout=3)
''' % (tcp_listener.port, tcp_listener.port))
    out = run_python(stack, script).results()
    assert bytes.fromhex(out["gw"].get("received", "")) == b"", out
    assert not bytes.fromhex(out["gw_http"].get("received", "")).startswith(b"HTTP/1.1 200"), out
    assert tcp_listener.events == [], tcp_listener.events


def test_udp_to_443_quic_is_dropped(stack, udp_listener):
    """QUIC Initial-shaped datagrams to a public address, to the host end on 443, and to a host UDP
    listener: all dropped. On a connected socket an ICMP port-unreachable from the host would
    show as ECONNREFUSED, so "timed out" means the datagram never reached a host socket layer."""
    quic = bytes([0xc3, 0, 0, 0, 1, 8]) + os.urandom(8) + b"\x00" + os.urandom(1180)
    script = sandbox_script(r'''
def udp(addr, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        s.connect(addr)
        s.send(data)
        s.send(data)
        return "reply: %%r" %% s.recv(100)
    except socket.timeout:
        return "timed out"
    except OSError as e:
        return "failed: " + err(e)
    finally:
        s.close()
data = bytes.fromhex(%r)
OUT["public_443"] = udp(("203.0.113.7", 443), data)
OUT["gateway_443"] = udp((gateway(), 443), data)
OUT["gateway_listener"] = udp((gateway(), %d), data)
OUT["gateway_4433"] = udp((gateway(), 4433), data)
''' % (quic.hex(), udp_listener.port))
    out = run_python(stack, script).results()
    for k, v in out.items():
        assert v == "timed out" or v.startswith("failed"), (k, v)
    assert udp_listener.events == [], udp_listener.events


def test_udp_dns_to_another_resolver_is_answered_by_the_proxy_only(stack, udp_listener):
    """Port 53 to any address reaches authproxy's resolver, which applies the policy (REFUSED for
    the denied name, an answer through the configured upstream for the allowed one). A resolver
    on another port of the host gets nothing."""
    nonce = secrets.token_hex(4)
    ok = "ok-%s.example.test" % nonce
    bad = "x-%s.evil.example.test" % nonce
    stack.dns.add_a(ok, "203.0.113.60")
    script = dns_script(r'''
OUT["denied"] = {ip: udp_dns(ip, dns_query(%r, 1)) for ip in ("8.8.8.8", "1.1.1.1", "203.0.113.53", gateway())}
OUT["allowed"] = udp_dns("8.8.4.4", dns_query(%r, 1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
try:
    s.sendto(dns_query(%r, 1), (gateway(), %d))
    OUT["other_port"] = "reply %%d bytes" %% len(s.recv(512))
except OSError as e:  # EPERM: the sandbox's own table rejects it; timeout: dropped on the way
    OUT["other_port"] = "no reply: " + err(e)
''' % (bad, ok, ok, udp_listener.port))
    out = run_python(stack, script, {"access_control": {"deny_list": ["*.evil.example.test"]}}).results()
    for ip, r in out["denied"].items():
        assert r["rcode"] == RCODE_REFUSED, (ip, r)
    assert out["allowed"]["rcode"] == RCODE_NOERROR and out["allowed"]["answers"] == 1, out
    assert out["other_port"].startswith("no reply"), out
    assert udp_listener.events == []
    assert (ok, 1) in stack.dns.queries and not [q for q in stack.dns.queries if q[0] == bad]


def test_icmp_echo_cannot_leave(stack):
    """Neither a raw ICMP socket nor an unprivileged ICMP datagram ("ping") socket can be opened
    (or, if one could, no echo comes back). Control: on the host, as root, the raw one opens."""
    probe = r'''
res = {}
for k, a in {"raw": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
             "dgram": (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)}.items():
    try:
        s = socket.socket(*a)
        s.settimeout(1.0)
        try:
            s.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("203.0.113.7", 0))
            res[k] = "sent; reply %r" % (s.recvfrom(100),)
        except OSError as e:
            res[k] = "opened, no echo: " + str(e)
        s.close()
    except OSError as e:
        res[k] = "refused: %s" % e
OUT.update(res)
'''
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()  # nothing sent
    out = run_python(stack, sandbox_script(probe)).results()
    for k, v in out.items():
        assert v.startswith("refused") or v.startswith("opened, no echo"), (k, v)


def test_host_abstract_unix_sockets_are_unreachable(stack):
    """Abstract UNIX sockets belong to a network namespace: a host service listening on one
    (container runtimes, X11, D-Bus do) must be unreachable from the sandbox. Control: the host
    can connect to it."""
    name = "\0authproxy-attack-%s" % secrets.token_hex(6)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(4)
    srv.settimeout(0.2)
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(name)
        c.close()
        srv.accept()[0].close()  # the control's connection
        script = sandbox_script(r'''
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(%r)
    OUT["abstract"] = "connected"
except OSError as e:
    OUT["abstract"] = "failed: " + err(e)
''' % name)
        out = run_python(stack, script).results()
        assert out["abstract"].startswith("failed"), out
        try:
            srv.accept()
            raise AssertionError("the sandbox reached the host's abstract socket")
        except socket.timeout:
            pass
    finally:
        srv.close()


def test_routes_addresses_and_firewall_cannot_be_changed_and_capture_holds(stack):
    """ip route/addr/link, nft and sysctl from inside all fail (no CAP_NET_ADMIN, netlink refused,
    /proc/sys read-only); afterwards HTTPS still goes through the proxy with its credential (the
    control that the sandbox network works)."""
    origin = stack.tls_origin(API)
    key = stack.secret()
    script = sandbox_script(r'''
import subprocess
cmds = [["ip", "route", "replace", "default", "via", "10.200.0.1"],
        ["ip", "addr", "add", "10.9.9.9/32", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "down"],
        ["nft", "flush", "ruleset"],
        ["sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6"],
        ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]]
for c in cmds:
    try:
        p = subprocess.run(c, capture_output=True, timeout=10)
        OUT[" ".join(c)] = p.returncode
    except FileNotFoundError:
        OUT[" ".join(c)] = "absent"
ctx = ssl.create_default_context()
s = ctx.wrap_socket(socket.create_connection(("203.0.113.7", 443), timeout=5), server_hostname="api.example.test")
s.sendall(b"GET /after HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
OUT["after"] = s.recv(12).decode()
''')
    rule = header_rule("api", [API], [("Authorization", "workspace_secret", "Bearer {K}")])
    out = run_python(stack, script, {"rules": [rule]}, secrets={"K": key}).results()
    after = out.pop("after")
    for k, v in out.items():
        assert v == "absent" or v != 0, (k, v)
    assert after == "HTTP/1.1 200", after
    [req] = origin.snapshot()
    assert req.path == "/after" and req.values("Authorization") == ["Bearer " + key]
