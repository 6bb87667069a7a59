"""The seeds' GitHub worked example (issue 5), end to end with the real `git` and `gh`.

Two rules, as in README.md "Worked example: GitHub" (the tests read the rules and the PATCH
command from there, so the documentation is what is tested):
  api.github.com            Authorization: Bearer <token>                       (gh, REST)
  github.com, *.github.com  Authorization: Basic base64("x-access-token:<token>") (git)
with opaque values replaced as the token rotates, and GH_TOKEN only a placeholder inside.

GitHub is a local stand-in (helpers/github.py) reached through dns_remap with a leaf of the test
root; nothing leaves loopback. The stand-in refuses every request that does not carry the
current token, so a missing, wrong or stale credential fails the git or gh command itself.

* sandbox tests (root): `authproxy sandbox run --config FILE` with the README's proxy_config;
  clone, commit, push and `gh api /user` inside, and rotation by rewriting the file + SIGHUP
  while the sandboxed command is paused half way.
* control-API tests: a box created over the API, the README's PATCH run verbatim with bash for
  each new token; git and gh inside the running box through /execute (root), and on the
  explicit proxy with the box's credential (the path for hosts without network namespaces).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import SESSION_SECRETS, client_env
from helpers.control import ControlDaemon, find_headers, ok
from helpers.daemon import SANITIZER_MARKERS, write_json_atomically
from helpers.github import REPO, USER, GitHub, basic

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(ROOT, "README.md")
SECTION = "## Worked example: GitHub"
CLONE_URL = "https://github.com/%s.git" % REPO
SYNC_HOST = "other.example.test"  # where the sandboxed script waits while the test rotates

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")


# -- the README section -----------------------------------------------------------------------

def readme_section():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.find("\n" + SECTION + "\n")
    assert start >= 0, "README.md has no section %r" % SECTION
    end = text.find("\n## ", start + len(SECTION) + 2)
    return text[start:end if end >= 0 else len(text)]


def readme_patch_command():
    """The README's sh block that PATCHes the box with a fresh token (run verbatim)."""
    blocks = re.findall(r"```sh\n(.*?)```", readme_section(), re.S)
    found = [b for b in blocks if "PATCH" in b]
    assert len(found) == 1, "expected one sh block with the PATCH in %r" % SECTION
    return found[0]


def readme_proxy_config(token):
    """The proxy_config of the README's PATCH body with $TOKEN and $BASIC filled in as the
    shell does (BASIC is base64 of x-access-token:$TOKEN)."""
    m = re.search(r"<<EOF\n(.*?)\nEOF", readme_patch_command(), re.S)
    assert m, "the README's PATCH block has no <<EOF body"
    body = m.group(1).replace("$BASIC", basic(token)[len("Basic "):]).replace("$TOKEN", token)
    return json.loads(body)["proxy_config"]


def test_the_readme_rules_are_the_worked_example():
    pc = readme_proxy_config("TOKEN-X")
    api, git = pc["rules"]
    assert api["match_hosts"] == ["api.github.com"]
    assert api["headers"] == [{"name": "Authorization", "type": "opaque",
                               "value": "Bearer TOKEN-X"}]
    assert api["env_vars"] == {"GH_TOKEN": "placeholder"}
    assert git["match_hosts"] == ["github.com", "*.github.com"]
    assert git["headers"] == [{"name": "Authorization", "type": "opaque",
                               "value": basic("TOKEN-X")}]


# -- fixtures ---------------------------------------------------------------------------------

def new_token(stack):
    """A token and its git form, both scanned for in every daemon log by conftest."""
    token = stack.secret("ghs")
    SESSION_SECRETS.add(basic(token)[len("Basic "):])
    return token


@pytest.fixture
def github(stack, provider_leaf, tmp_path):
    assert shutil.which("gh"), "gh is not installed (scripts/install-deps.sh installs it)"
    gh = GitHub(str(tmp_path / "github"), provider_leaf[0], provider_leaf[1], new_token(stack))
    stack.servers += gh.servers()
    stack.remap("github.com", "127.0.0.1:%d" % gh.git.port)
    stack.remap("api.github.com", "127.0.0.1:%d" % gh.api.port)
    return gh


def assert_no_secret(data, tokens, where):
    for i, t in enumerate(tokens):
        assert t.encode() not in data, "token %d appears in %s" % (i + 1, where)
        assert basic(t)[len("Basic "):].encode() not in data, \
            "token %d, base64 x-access-token form, appears in %s" % (i + 1, where)


def assert_every_git_request_carries(reqs, token):
    assert reqs, "no request reached the github.com stand-in"
    bad = [(r.method, r.target, r.values("Authorization")) for r in reqs
           if r.values("Authorization") != [basic(token)]]
    assert not bad, "requests without exactly the injected Basic credential: %r" % bad[:5]


def pushes(reqs):
    return [r for r in reqs if r.method == "POST" and r.path.endswith("/git-receive-pack")]


# -- sandbox run ------------------------------------------------------------------------------

class Sandbox:
    """`authproxy sandbox run --config FILE` with the README's proxy_config; stderr goes to a
    file so the test can wait for the embedded proxy's reload line while the command runs."""

    def __init__(self, stack, tmp_path, token):
        self.stack = stack
        self.config_path = str(tmp_path / "sandbox.json")
        self.state = str(tmp_path / "state")
        self.stderr_path = str(tmp_path / "sandbox.stderr")
        self.write(token)

    def write(self, token):
        write_json_atomically(self.config_path, self.stack.config(readme_proxy_config(token)))

    def start(self, script):
        argv = [self.stack.binary, "sandbox", "run", "--config", self.config_path,
                "--state-dir", self.state, "--upstream-dns", self.stack.dns.addr,
                "--timeout", "120", "--", "/bin/sh", "-c", script]
        self.err = open(self.stderr_path, "wb")
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err,
                                stdin=subprocess.DEVNULL, env=client_env(str(self.stack.tmp)))

    def finish(self, proc, timeout=150):
        out, _ = proc.communicate(timeout=timeout)
        self.err.close()
        with open(self.stderr_path, "rb") as f:
            err = f.read()
        text = err.decode("utf-8", "replace")
        assert not any(m in text for m in SANITIZER_MARKERS), "sanitizer report:\n" + text[-8000:]
        return proc.returncode, out, err

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def audit_records(self):
        path = os.path.join(self.state, "audit.log")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def audit_bytes(self):
        with open(os.path.join(self.state, "audit.log"), "rb") as f:
            return f.read()


# What the sandboxed scripts do, as an agent would. git's own Authorization (the placeholder,
# sent the way actions/checkout configures it) must be replaced, never sent alongside.
GIT_IDENTITY = "-c user.name=agent -c user.email=agent@example.test"
PLACEHOLDER_AUTH = ('-c http.extraHeader="Authorization: Basic '
                    '$(printf x-access-token:%s "$GH_TOKEN" | base64 -w0)"')
DUMP = ("echo '--- env'; env; echo '--- /proc/self/environ'; "
        "tr '\\000' '\\n' < /proc/self/environ; "
        "echo '--- files'; find /workspace /tmp -type f -exec cat {} + 2>/dev/null; true")


def commit_and_push(message, extra=""):
    return ("cd /workspace/repo && echo '%s' >> CHANGES && git add CHANGES && "
            "git %s commit -q -m '%s' && git %s push -q origin main && cd /workspace\n"
            % (message, GIT_IDENTITY, message, extra))


@needs_root
def test_clone_commit_push_and_gh_api_inside_a_sandbox_with_a_placeholder_token(
        stack, github, tmp_path):
    token = github.current()
    sb = Sandbox(stack, tmp_path, token)
    script = ("set -e\n"
              "export GIT_TRACE_CURL=1 GIT_TRACE_CURL_NO_DATA=1 GH_DEBUG=api\n"
              "echo \"GH_TOKEN is $GH_TOKEN\"\n"
              "gh api /user > /workspace/user.json\n"
              "git clone -q %s %s /workspace/repo\n" % (PLACEHOLDER_AUTH, CLONE_URL) +
              commit_and_push("pushed from the sandbox", PLACEHOLDER_AUTH) +
              "echo '--- user'; cat /workspace/user.json; echo\n" + DUMP)
    rc, out, err = sb.finish(sb.start(script))
    assert rc == 0, "sandboxed git/gh failed (%d):\n%s" % (rc, err.decode(errors="replace")[-6000:])
    text = out.decode("utf-8", "replace")

    # The sandbox held only the placeholder, and the tools saw no token anywhere.
    assert "GH_TOKEN is placeholder" in text
    assert "SSL_CERT_FILE=" in text and "GIT_SSL_CAINFO=" in text
    assert '[remote "origin"]' in text, "the dump did not cover the clone's files"
    assert_no_secret(out + err, [token], "the sandboxed command's environment, files or output")
    assert_no_secret(sb.audit_bytes(), [token], "the audit log")

    # gh: one GET /user with the Bearer token, and its JSON came back.
    user = json.loads(text.split("--- user\n", 1)[1].split("\n", 1)[0])
    assert user["login"] == USER["login"]
    assert [(r.method, r.path, r.values("Authorization")) for r in github.api_requests()] == \
        [("GET", "/user", ["Bearer " + token])]

    # git: every request carried exactly the injected Basic credential; the push landed.
    reqs = github.git_requests()
    assert_every_git_request_carries(reqs, token)
    assert any(r.path.endswith("/git-upload-pack") for r in reqs), "no clone seen"
    assert pushes(reqs), "no push seen"
    assert github.log()[0] == "pushed from the sandbox"
    assert github.refused == []

    # The audit log names the rule and the header, never the value.
    recs = [r for r in sb.audit_records() if r["scheme"] == "https"]
    assert {(r["host"], r["decided_by"]) for r in recs} == \
        {("github.com", "github-git"), ("api.github.com", "github-api")}
    assert all(r["injected_headers"] == ["Authorization"] for r in recs), recs


@needs_root
def test_a_rotated_token_applies_to_the_next_request_of_a_running_sandbox(
        stack, github, tmp_path):
    """The file is rewritten with a new token and the sandbox's proxy gets SIGHUP while the
    sandboxed command waits; the stand-in then refuses the old token, so the second half of
    the command works only if the new one is injected."""
    old, new = github.current(), new_token(stack)
    released = threading.Event()
    sync = stack.tls_origin(SYNC_HOST)

    def wait(origin, conn, req, keep):
        released.wait(60)
        return origin._ok(conn, req, keep)
    sync.route("/wait", wait)

    sb = Sandbox(stack, tmp_path, old)
    script = ("set -e\n"
              "gh api /user --jq .login\n"
              "git clone -q %s /workspace/repo\n" % CLONE_URL +
              commit_and_push("before rotation") +
              "curl -sS -o /dev/null https://%s/wait\n" % SYNC_HOST +
              "gh api /user --jq .login\n" +
              commit_and_push("after rotation"))
    proc = sb.start(script)
    try:
        deadline = time.monotonic() + 90
        while not any(r.path == "/wait" for r in sync.heads):
            assert proc.poll() is None, "the sandboxed command ended early:\n" + sb.stderr_text()
            assert time.monotonic() < deadline, "the sandbox never reached /wait"
            time.sleep(0.05)
        before = len(github.git_requests()), len(github.api_requests())
        reloads = sb.stderr_text().count("reloaded ")
        github.rotate(new)  # GitHub now refuses the old token
        sb.write(new)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sb.stderr_text().count("reloaded ") == reloads:
            assert time.monotonic() < deadline, "no reload after SIGHUP:\n" + sb.stderr_text()
            time.sleep(0.02)
    finally:
        released.set()
    rc, out, err = sb.finish(proc)
    assert rc == 0, "sandboxed git/gh failed (%d):\n%s" % (rc, err.decode(errors="replace")[-6000:])
    assert out.decode().split() == [USER["login"], USER["login"]]

    git_reqs, api_reqs = github.git_requests(), github.api_requests()
    assert_every_git_request_carries(git_reqs[:before[0]], old)
    assert_every_git_request_carries(git_reqs[before[0]:], new)
    assert len(pushes(git_reqs[before[0]:])) == 1
    assert [r.values("Authorization") for r in api_reqs] == [["Bearer " + old], ["Bearer " + new]]
    assert before[1] == 1
    assert github.log()[:2] == ["after rotation", "before rotation"]
    assert github.refused == []
    assert_no_secret(out + err, [old, new], "the sandboxed command's output")
    assert_no_secret(sb.audit_bytes(), [old, new], "the audit log")


# -- the control API: PATCH with opaque values --------------------------------------------------

def run_readme_patch(d, token):
    """Runs the README's PATCH block with bash: TOKEN, API and KEY in the environment."""
    env = client_env(d.dir)
    env.update({"TOKEN": token, "API": d.control_url, "KEY": d.bootstrap_key()})
    p = subprocess.run(["bash", "-c", "set -e\n" + readme_patch_command()], capture_output=True,
                       env=env, timeout=30)
    assert p.returncode == 0, "the README's PATCH failed: %s %s" % (p.stdout, p.stderr)
    body = json.loads(p.stdout)
    assert_no_secret(p.stdout + p.stderr, [token], "the PATCH response")
    return body


class HostTools:
    """git and gh on the host, through the explicit proxy with the box's credential, holding
    nothing but the placeholder GH_TOKEN, like the sandbox."""

    def __init__(self, tmp, proxy_url, ca):
        self.home = os.path.join(tmp, "home")
        os.makedirs(self.home, exist_ok=True)
        self.env = client_env(self.home)
        self.env.update({"GH_TOKEN": "placeholder", "GH_NO_UPDATE_NOTIFIER": "1",
                         "HTTPS_PROXY": proxy_url, "https_proxy": proxy_url,
                         "SSL_CERT_FILE": ca, "GIT_SSL_CAINFO": ca,
                         "GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.test",
                         "GIT_COMMITTER_NAME": "agent",
                         "GIT_COMMITTER_EMAIL": "agent@example.test"})
        self.repo = os.path.join(self.home, "repo")

    def run(self, *argv, cwd=None):
        p = subprocess.run(list(argv), capture_output=True, env=self.env, cwd=cwd or self.home,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr

    def gh_user(self):
        return self.run("gh", "api", "/user", "--jq", ".login")

    def push(self, message):
        with open(os.path.join(self.repo, "CHANGES"), "a") as f:
            f.write(message + "\n")
        self.run("git", "add", "CHANGES", cwd=self.repo)
        self.run("git", "commit", "-q", "-m", message, cwd=self.repo)
        return self.run("git", "push", "-q", "origin", "main", cwd=self.repo)


def start_control_daemon(ctl):
    """serve with the control API and a --config file holding dns_remap and the test root but
    no proxy_config: a client without a box credential gets 407, which is what makes git (curl
    with CURLAUTH_ANY) send the credential of its proxy URL."""
    st = ctl.stack
    cfg = {"dns_remap": dict(st.remaps), "upstream_ca_file": st.pki.root_path}
    d = ControlDaemon(st.binary, os.path.join(st.tmp, "control%d" % len(st.daemons)),
                      st.dns.addr, cfg)
    st.daemons.append(d)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    st.ca = d.ca_path()
    return d


def test_patching_opaque_tokens_rotates_the_credential_for_git_and_gh(ctl, github):
    d = start_control_daemon(ctl)
    api = d.api()
    cred = ctl.credential(ok(api.create_box({"name": "agent"})))
    t1, t2 = github.current(), new_token(ctl.stack)
    tools = HostTools(ctl.stack.tmp, cred.url(d.port), ctl.ca)

    box = run_readme_patch(d, t1)
    auth = find_headers(box, "Authorization")
    assert len(auth) == 2 and all(h == {"name": "Authorization", "type": "opaque", "is_set": True}
                                  for h in auth), auth
    rc, out = tools.gh_user()
    assert rc == 0 and out.strip() == USER["login"].encode(), out
    rc, out = tools.run("git", "clone", "-q", CLONE_URL, tools.repo)
    assert rc == 0, out
    rc, out = tools.push("with the first token")
    assert rc == 0, out
    assert github.log()[0] == "with the first token"
    assert_every_git_request_carries(github.git_requests(), t1)

    # The installation token is replaced at GitHub: until the box is patched, the proxy still
    # injects the old one and GitHub refuses it (the tools see GitHub's 401, not a token).
    github.rotate(t2)
    rc, out = tools.gh_user()
    assert rc != 0 and b"Bad credentials" in out, out
    assert github.refused[-1] == ("api.github.com", "GET", "/user", ["Bearer " + t1])

    n_git = len(github.git_requests())
    box = run_readme_patch(d, t2)
    assert all(h.get("is_set") is True and "value" not in h
               for h in find_headers(box, "Authorization"))
    rc, out = tools.gh_user()
    assert rc == 0 and out.strip() == USER["login"].encode(), out
    assert github.api_requests()[-1].values("Authorization") == ["Bearer " + t2]
    rc, out = tools.push("with the second token")
    assert rc == 0, out
    assert github.log()[:2] == ["with the second token", "with the first token"]
    assert_every_git_request_carries(github.git_requests()[n_git:], t2)

    # Reads of the box never return a token.
    got = api.get_box("agent")
    assert_no_secret(got.content, [t1, t2], "GET of the box")


@needs_root
def test_the_readme_flow_in_a_box_created_over_the_api(ctl, github):
    """The README's flow end to end: a box created over the API, the PATCH run verbatim for
    each token, git and gh run inside the box with /execute (its /workspace persists between
    commands), and the token replaced at GitHub and then in the box."""
    d = start_control_daemon(ctl)
    api = d.api()
    box = ok(api.create_box({"name": "agent"}), 201)
    ctl.credential(box)
    t1, t2 = github.current(), new_token(ctl.stack)

    def execute(command):
        res = ok(api.execute(box["dataplane_url"], {"command": command, "timeout": 60}), 200)
        assert_no_secret(json.dumps(res).encode(), [t1, t2], "an /execute result")
        return res

    run_readme_patch(d, t1)
    res = execute("echo \"GH_TOKEN is $GH_TOKEN\"; gh api /user --jq .login && "
                  "git clone -q %s /workspace/repo" % CLONE_URL)
    assert res["exit_code"] == 0, res
    assert res["stdout"] == "GH_TOKEN is placeholder\n%s\n" % USER["login"], res
    res = execute(commit_and_push("pushed through /execute"))
    assert res["exit_code"] == 0, res
    assert github.log()[0] == "pushed through /execute"
    assert_every_git_request_carries(github.git_requests(), t1)

    github.rotate(t2)
    res = execute("gh api /user --jq .login")
    assert res["exit_code"] != 0 and "Bad credentials" in res["stderr"], res

    n_git = len(github.git_requests())
    run_readme_patch(d, t2)
    res = execute("gh api /user --jq .login && " + commit_and_push("after the PATCH"))
    assert res["exit_code"] == 0, res
    assert github.api_requests()[-1].values("Authorization") == ["Bearer " + t2]
    assert github.log()[:2] == ["after the PATCH", "pushed through /execute"]
    assert_every_git_request_carries(github.git_requests()[n_git:], t2)
    res = execute(DUMP)
    assert "GH_TOKEN=placeholder" in res["stdout"] and '[remote "origin"]' in res["stdout"]
