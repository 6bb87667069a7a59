"""Shared fixtures of the end-to-end suite: a real authproxy daemon, a test PKI, recording
origins (plain, TLS, WebSocket, git smart-HTTP), a loopback-only DNS server, and the checks
every test gets for free at teardown:

  * each daemon exits with status 0 within 10 s of SIGTERM, and its stderr has no sanitizer
    report (the suite also runs against build/asan/authproxy);
  * no secret value used anywhere in the session appears in any daemon's audit log, stderr
    or stdout, and every audit line is a JSON object with the SPEC §7 fields whose
    injected_headers are header names only.

Run:  AUTHPROXY_BIN=build/authproxy /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e
"""
import os
import secrets as _secrets
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers.daemon import SANITIZER_MARKERS, Daemon, sanitizer_env  # noqa: E402
from helpers.dns_server import DNSServer  # noqa: E402
from helpers.origin import Origin  # noqa: E402
from helpers.pki import CA  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN = os.path.join(ROOT, "build", "authproxy")

# Names the good test leaf certificate is valid for. Tests map them to local origins with
# dns_remap; clients always use port 443 / 80 in URLs, the remap supplies the real port.
TEST_NAMES = ["api.example.test", "other.example.test", "git.example.test", "ws.example.test",
              "np.example.test", "plain.example.test", "dns.example.test", "deny.example.test",
              "allowed.example.test", "*.example.test"]

# Every secret value handed to a daemon in this session; scanned for in every log.
SESSION_SECRETS = set()


# -- session-wide infrastructure ---------------------------------------------------------------

@pytest.fixture(scope="session")
def authproxy_bin():
    path = os.path.abspath(os.environ.get("AUTHPROXY_BIN", DEFAULT_BIN))
    if not os.access(path, os.X_OK):
        pytest.fail("authproxy binary not found at %s (set AUTHPROXY_BIN or run make)" % path,
                    pytrace=False)
    return path


class PKI:
    def __init__(self, base):
        self.root = CA(os.path.join(base, "root"), "authproxy e2e test root")
        self.root_path = self.root.cert_path
        self.good = self.root.issue("good", TEST_NAMES)
        self.wrong_name = self.root.issue("wrongname", ["wrong-name.invalid.test"])
        self.rogue = CA(os.path.join(base, "rogue"), "an untrusted root")
        self.untrusted = self.rogue.issue("untrusted", TEST_NAMES)

    def leaf(self, kind):
        return {"good": self.good, "wrong_name": self.wrong_name, "untrusted": self.untrusted}[kind]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def dns():
    server = DNSServer()
    yield server
    server.close()


def _git(*args, cwd=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd or "/nonexistent",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@test",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@test"}
    subprocess.run(["git"] + list(args), cwd=cwd, env=env, check=True, capture_output=True,
                   timeout=30)


class GitRepo:
    def __init__(self, base):
        self.root = base
        work = os.path.join(base, "work")
        os.makedirs(work)
        _git("init", "-q", "-b", "main", cwd=work)
        self.readme = "authproxy e2e repository %s\n" % _secrets.token_hex(8)
        with open(os.path.join(work, "README"), "w") as f:
            f.write(self.readme)
        with open(os.path.join(work, "blob.bin"), "wb") as f:
            f.write(os.urandom(300 * 1024))  # big enough for a real pack transfer
        _git("add", "README", "blob.bin", cwd=work)
        _git("commit", "-q", "-m", "initial", cwd=work)
        _git("clone", "-q", "--bare", work, os.path.join(base, "repo.git"), cwd=base)


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory):
    return GitRepo(str(tmp_path_factory.mktemp("gitroot")))


# -- per-test checks ---------------------------------------------------------------------------

AUDIT_FIELDS = {"ts", "sandbox", "workspace", "client", "method", "scheme", "host", "port", "path",
                "decision", "decided_by", "injected_headers", "status", "upstream_status",
                "bytes_in", "bytes_out", "duration_ms", "error", "policy_version"}
HEADER_NAME_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def audit_line_problems(line):
    """What is wrong with one audit line (SPEC §7), as a list of strings."""
    import json
    try:
        rec = json.loads(line)
    except ValueError as e:
        return ["not JSON (%s): %r" % (e, line[:300])]
    if not isinstance(rec, dict):
        return ["not a JSON object: %r" % line[:300]]
    problems = []
    missing = AUDIT_FIELDS - set(rec)
    if missing:
        problems.append("missing %s: %r" % (sorted(missing), line[:300]))
    if rec.get("decision") not in ("allowed", "denied", "bypassed", "error"):
        problems.append("decision %r: %r" % (rec.get("decision"), line[:300]))
    names = rec.get("injected_headers")
    if not isinstance(names, list) or not all(
            isinstance(n, str) and n and set(n) <= HEADER_NAME_CHARS for n in names):
        problems.append("injected_headers must list header names only: %r" % (names,))
    return problems


@pytest.fixture(autouse=True)
def _no_secret_leaks():
    """Collects the daemons a test starts. After they are stopped (this fixture is torn down
    last) asserts that no secret value of the session appears in their logs and that every
    audit line they wrote is a JSON object with the SPEC §7 fields."""
    daemons = []
    yield daemons
    problems = []
    for d in daemons:
        for label, text in (("audit log", d.audit_text()), ("stderr", d.stderr_text()),
                            ("stdout", _read(d.stdout_path))):
            for s in sorted(SESSION_SECRETS):
                if s in text:
                    problems.append("secret %s... found in %s of %s" % (s[:10], label, d.dir))
        text = d.audit_text()
        if text and not text.endswith("\n"):
            problems.append("%s: audit log does not end with a complete line" % d.dir)
        for i, line in enumerate(text.splitlines()):
            problems += ["%s: audit line %d: %s" % (d.dir, i + 1, p) for p in audit_line_problems(line)]
    assert not problems, "\n".join(problems[:20])


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for d in getattr(item, "_authproxy_daemons", []):
            rep.sections.append(("authproxy stderr (%s)" % d.dir, d.stderr_text()[-8000:]))
            rep.sections.append(("authproxy audit (%s)" % d.dir, d.audit_text()[-4000:]))


# -- the stack a test builds -------------------------------------------------------------------

class Stack:
    """Origins, secrets and daemons of one test, torn down together."""

    def __init__(self, tmp, pki, dns, binary, git_repo_factory, daemons):
        self.tmp = tmp
        self.pki = pki
        self.dns = dns
        self.binary = binary
        self._git_repo_factory = git_repo_factory
        self.remaps = {}
        self.servers = []
        self.daemons = daemons
        self.ca = None  # interception CA path of the last daemon started

    # origins
    def tls_origin(self, *names, cert="good", git=False):
        cert_path, key_path = self.pki.leaf(cert)
        root = self._git_repo_factory().root if git else None
        o = Origin(cert_path, key_path, git_root=root, name=names[0] if names else "origin")
        self.servers.append(o)
        for n in names:
            self.remaps[n] = "127.0.0.1:%d" % o.port
        return o

    def plain_origin(self, *names):
        o = Origin(name=names[0] if names else "plain-origin")
        self.servers.append(o)
        for n in names:
            self.remaps[n] = "127.0.0.1:%d" % o.port
        return o

    def ws_origin(self, *names):
        from helpers.ws_origin import WSOrigin
        cert_path, key_path = self.pki.good
        o = WSOrigin(cert_path, key_path)
        self.servers.append(o)
        for n in names:
            self.remaps[n] = "127.0.0.1:%d" % o.port
        return o

    def remap(self, name, addr):
        self.remaps[name] = addr

    # secrets
    @staticmethod
    def secret(prefix="sk-e2e"):
        value = "%s-%s" % (prefix, _secrets.token_hex(16))
        SESSION_SECRETS.add(value)
        return value

    # daemons
    def config(self, proxy_config=None, secrets=None, limits=None, **extra):
        pc = {"rules": [], "callbacks": [], "no_proxy": [], "access_control": {}}
        pc.update(proxy_config or {})
        cfg = {"secrets": dict(secrets or {}), "proxy_config": pc,
               "dns_remap": dict(self.remaps), "upstream_ca_file": self.pki.root_path}
        if limits:
            cfg["limits"] = limits
        cfg.update(extra)
        return cfg

    def start(self, proxy_config=None, secrets=None, limits=None, workers=2, config=None):
        cfg = config if config is not None else self.config(proxy_config, secrets, limits)
        d = Daemon(self.binary, os.path.join(self.tmp, "daemon%d" % len(self.daemons)), cfg,
                   self.dns.addr, workers=workers)
        self.daemons.append(d)
        d.start()
        self.ca = d.ca_path()
        return d

    def teardown(self):
        problems = []
        for d in self.daemons:
            if d.proc is None:
                continue
            rc = d.stop(10.0)
            if rc != 0:
                problems.append("%s: exit status after SIGTERM was %s (want 0 within 10 s)"
                                % (d.dir, "killed after timeout" if rc is None else rc))
            err = d.stderr_text()
            hits = [err.find(m) for m in SANITIZER_MARKERS if m in err]
            if hits:
                start = err.rfind("\n", 0, min(hits)) + 1
                problems.append("%s: sanitizer report on stderr:\n%s" % (d.dir, err[start:start + 8000]))
        for s in self.servers:
            s.close()
        assert not problems, "\n".join(problems)


@pytest.fixture
def stack(request, tmp_path, pki, dns, authproxy_bin, _no_secret_leaks):
    s = Stack(str(tmp_path), pki, dns, authproxy_bin,
              lambda: request.getfixturevalue("git_repo"), _no_secret_leaks)
    request.node._authproxy_daemons = s.daemons
    yield s
    s.teardown()


# -- rule and client helpers used by the tests --------------------------------------------------

def header_rule(name, hosts, headers, paths=(), allow_plaintext=None, enabled=True):
    """A header-injection rule; headers is a list of (name, type, value)."""
    r = {"name": name, "enabled": enabled, "match_hosts": list(hosts), "match_paths": list(paths),
         "headers": [{"name": n, "type": t, "value": v} for n, t, v in headers]}
    if allow_plaintext is not None:
        r["allow_plaintext"] = allow_plaintext
    return r


@pytest.fixture
def api(stack):
    """A TLS origin behind a credential rule; returns (origin, daemon, key). A module may
    define its own `api` (with other limits) instead."""
    origin = stack.tls_origin("api.example.test")
    key = stack.secret()
    rule = header_rule("api", ["api.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": key})
    return origin, d, key


def client_env(home):
    """A clean environment for client subprocesses: no inherited proxies, a private HOME."""
    env = sanitizer_env()
    for k in list(env):
        if k.startswith(("GIT_", "CURL_", "SSL_", "REQUESTS_")):
            del env[k]
    env["HOME"] = home
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


# -- control plane (issue 3): fixtures of tests/e2e/test_control_*.py ---------------------------

@pytest.fixture(scope="session")
def provider_leaf(pki):
    """A leaf of the test root for the provider names the seed examples use (api.openai.com,
    github.com, ...); origins behind them are reached only through dns_remap."""
    from helpers.control import PROVIDER_NAMES
    return pki.root.issue("providers", PROVIDER_NAMES)


class ControlStack:
    """Builds on Stack: origins for provider names and daemons with the control API. Daemons go
    into stack.daemons, so the exit-status, sanitizer and secret-leak checks apply to them."""

    def __init__(self, stack, provider_leaf):
        self.stack = stack
        self.leaf = provider_leaf

    def origin(self, *names):
        o = Origin(self.leaf[0], self.leaf[1], name=names[0])
        self.stack.servers.append(o)
        for n in names:
            self.stack.remaps[n] = "127.0.0.1:%d" % o.port
        return o

    def start(self, with_config=True, workers=2, env=None):
        """A daemon with its control API. with_config: a --config file holding only dns_remap,
        upstream_ca_file and an empty proxy_config (requests without a box credential use it);
        without it, such requests get 407."""
        from helpers.control import ControlDaemon
        cfg = self.stack.config() if with_config else None
        d = ControlDaemon(self.stack.binary,
                          os.path.join(self.stack.tmp, "control%d" % len(self.stack.daemons)),
                          self.stack.dns.addr, cfg, workers=workers, env=env)
        self.stack.daemons.append(d)
        d.start()
        SESSION_SECRETS.add(d.bootstrap_key())
        self.stack.ca = d.ca_path()
        return d

    @property
    def ca(self):
        return self.stack.ca

    @staticmethod
    def secret(prefix="sk-e2e"):
        return Stack.secret(prefix)

    @staticmethod
    def credential(created):
        """The box credential of a create response; its token joins the leak scan."""
        from helpers.control import Credential
        cred = Credential.of(created)
        SESSION_SECRETS.add(cred.token)
        return cred

    @staticmethod
    def api_key(key):
        SESSION_SECRETS.add(key)
        return key


@pytest.fixture
def ctl(stack, provider_leaf):
    return ControlStack(stack, provider_leaf)


@pytest.fixture(scope="session")
def sdk_dir():
    """tests/e2e/sdk with its pinned langsmith installed (npm install once per session)."""
    d = os.path.join(os.path.dirname(__file__), "sdk")
    try:
        p = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=d,
                           capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail("npm install in %s failed: %r" % (d, e), pytrace=False)
    if p.returncode != 0:
        pytest.fail("npm install in %s failed (%d):\n%s" % (d, p.returncode,
                                                            p.stderr.decode()[-4000:]),
                    pytrace=False)
    return d
