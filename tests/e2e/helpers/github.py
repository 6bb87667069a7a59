"""A local stand-in for GitHub, for the worked example of the seeds (issue 5): the two hosts a
GitHub token is used on, each behind its own TLS origin (helpers/origin.py) with a leaf of the
test root for github.com / api.github.com, reached only through dns_remap.

* github.com: git smart HTTP (`git http-backend`) for /org/repo.git, push enabled
  (http.receivepack in the bare repo). Every request must carry exactly
  `Authorization: Basic base64("x-access-token:<token>")` for the current token, as GitHub
  accepts an installation token for git over HTTPS; anything else gets 401 with
  `WWW-Authenticate: Basic`, which is what makes git ask for credentials it does not have.
* api.github.com: `GET /user` (what `gh api /user` calls) answers a JSON user when, and only
  when, `Authorization: Bearer <the current token>` arrives; 401 `Bad credentials` otherwise.
  Other paths get Origin's default answer; the tests check which paths were called.

rotate(new) makes the stand-in accept only the new token, as GitHub does once an installation
token is replaced and the old one revoked.
"""
import base64
import copy
import json
import os
import subprocess
import threading

from helpers.origin import Origin

REPO = "org/repo"  # https://github.com/org/repo.git
USER = {"login": "authproxy-e2e[bot]", "id": 4242, "type": "Bot",
        "html_url": "https://github.com/apps/authproxy-e2e"}
DOCS = "https://docs.github.com/rest"


def basic(token):
    """The git-over-HTTPS header value for an installation token."""
    return "Basic " + base64.b64encode(("x-access-token:%s" % token).encode()).decode()


def _git(args, cwd, env_home):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": env_home,
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@test",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@test"}
    return subprocess.run(["git"] + list(args), cwd=cwd, env=env, check=True,
                          capture_output=True, timeout=30).stdout.decode().strip()


def _json(conn, status, doc, keep, reason):
    body = json.dumps(doc).encode()
    return Origin.send(conn, status, [("Content-Type", "application/json; charset=utf-8"),
                                      ("Content-Length", str(len(body)))], body, keep, reason)


class GitHub:
    """Both origins, the bare repository and the token they accept. `refused` lists every
    request (host, method, path, Authorization values) that was answered 401."""

    def __init__(self, base, cert, key, token):
        self.base = base
        self.token = token
        self.lock = threading.Lock()
        self.refused = []
        self.git_root = os.path.join(base, "git")
        self.bare = os.path.join(self.git_root, REPO + ".git")
        self._make_repo()
        self.git = Origin(cert, key, git_root=self.git_root, name="github.com")
        for service in ("info/refs", "git-upload-pack", "git-receive-pack"):
            self.git.route("/%s.git/%s" % (REPO, service), self._git_route)
        self.api = Origin(cert, key, name="api.github.com")
        self.api.route("/user", self._user)

    def _make_repo(self):
        work = os.path.join(self.base, "seed")
        os.makedirs(work)
        _git(["init", "-q", "-b", "main"], work, self.base)
        with open(os.path.join(work, "README.md"), "w") as f:
            f.write("# org/repo\nserved by the authproxy e2e GitHub stand-in\n")
        _git(["add", "README.md"], work, self.base)
        _git(["commit", "-q", "-m", "initial"], work, self.base)
        os.makedirs(os.path.dirname(self.bare))
        _git(["clone", "-q", "--bare", work, self.bare], self.base, self.base)
        # git http-backend serves receive-pack only when enabled (or with REMOTE_USER set).
        _git(["config", "http.receivepack", "true"], self.bare, self.base)

    # -- what the test changes and reads --------------------------------------------------------

    def rotate(self, token):
        """From now on only token is accepted."""
        with self.lock:
            self.token = token

    def current(self):
        with self.lock:
            return self.token

    def log(self, ref="main"):
        """Subjects of the bare repository's history of ref, newest first."""
        return _git(["log", "--format=%s", ref], self.bare, self.base).splitlines()

    def git_requests(self):
        return self.git.snapshot()

    def api_requests(self):
        return self.api.snapshot()

    def servers(self):
        return [self.git, self.api]

    # -- routes ---------------------------------------------------------------------------------

    def _refuse(self, host, req):
        with self.lock:
            self.refused.append((host, req.method, req.path, req.values("Authorization")))

    def _git_route(self, origin, conn, req, keep):
        if req.values("Authorization") != [basic(self.current())]:
            self._refuse("github.com", req)
            body = b"Invalid username or token.\n"
            return Origin.send(conn, 401, [("WWW-Authenticate", 'Basic realm="GitHub"'),
                                           ("Content-Type", "text/plain"),
                                           ("Content-Length", str(len(body)))], body, keep,
                               "Unauthorized")
        # Origin's git route serves /git/<path> from git_root.
        cgi = copy.copy(req)
        cgi.path = "/git" + req.path
        return Origin._git(origin, conn, cgi, keep)

    def _user(self, origin, conn, req, keep):
        if req.values("Authorization") != ["Bearer " + self.current()]:
            self._refuse("api.github.com", req)
            return _json(conn, 401, {"message": "Bad credentials", "documentation_url": DOCS},
                         keep, "Unauthorized")
        return _json(conn, 200, USER, keep, "OK")

    def close(self):
        for o in self.servers():
            o.close()
