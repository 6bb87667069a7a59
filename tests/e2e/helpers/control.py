"""Control-plane helpers for the end-to-end suite (SPEC §1, §2, §6; issue 3).

* ControlDaemon: `authproxy serve` with a control listener, optionally without --config, that
  can be restarted (SIGTERM or kill -9) on the same ports and state dir, so proxy URLs and API
  keys handed out before a restart are tested as they are.
* API: a thin client of the control API (x-api-key, both path forms).
* Proxy helpers that present a box's credential (Proxy-Authorization: Basic name:token).
* Seed helpers: the curl examples and JSON snippets of ../shared/seeds, read verbatim.
* DB helpers: raw bytes of the state dir, sealed values and their key ids.

Everything here talks to the daemon over loopback only.
"""
import base64
import binascii
import glob
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time

import requests

from helpers import client
from helpers.daemon import START_TIMEOUT, Daemon, free_port, sanitizer_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SEEDS_DIR = os.path.abspath(os.path.join(ROOT, "..", "shared", "seeds"))

BOXES = "/v2/sandboxes/boxes"
TEMPLATES = "/v2/sandboxes/templates"
SECRETS = "/api/v1/workspaces/current/secrets"
PREFIXES = ("/api", "")  # every §6 path is served as written and under /api

# Hosts the provider leaf certificate (conftest) is valid for; origins behind them are reached
# through dns_remap, so the real providers are never contacted.
PROVIDER_NAMES = ["api.openai.com", "api.anthropic.com", "api.github.com", "github.com",
                  "*.github.com", "api.example.test", "other.example.test"]


# -- the daemon -----------------------------------------------------------------------------------

class ControlDaemon(Daemon):
    """`authproxy serve` with --listen-control. config=None runs without --config (then every
    request without a box credential gets 407). Ports are chosen at the first start and kept
    across restarts."""

    def __init__(self, binary, workdir, dns_addr, config=None, workers=2, env=None,
                 extra_args=()):
        super().__init__(binary, workdir, config if config is not None else {}, dns_addr,
                         workers=workers, extra_args=extra_args)
        self.with_config = config is not None
        if not self.with_config:
            os.unlink(self.config_path)
        self.control_port = None
        self.extra_env = dict(env or {})

    def argv(self):
        a = [self.binary, "serve"]
        if self.with_config:
            a += ["--config", self.config_path]
        return a + ["--state-dir", self.state_dir,
                    "--listen-proxy", "127.0.0.1:%d" % self.port,
                    "--listen-control", "127.0.0.1:%d" % self.control_port,
                    "--audit-log", self.audit_path, "--workers", str(self.workers),
                    "--upstream-dns", self.dns_addr] + self.extra_args

    def env(self):
        e = sanitizer_env()
        e.update(self.extra_env)
        return e

    def start(self):
        fresh = self.port is None
        last = None
        for _attempt in range(3 if fresh else 1):
            if fresh:
                self.port, self.control_port = free_port(), free_port()
            with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
                self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=err,
                                             stdin=subprocess.DEVNULL, env=self.env(),
                                             cwd=self.dir)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._ready():
                    self.returncode = None
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    "authproxy did not serve GET /healthz on 127.0.0.1:%d and accept on the proxy "
                    "port %d within %.0fs:\n%s" % (self.control_port, self.port, START_TIMEOUT,
                                                   self.stderr_text()[-4000:]))
            last = "authproxy exited with status %s at startup (argv %r):\n%s" % (
                self.proc.returncode, self.argv(), self.stderr_text()[-4000:])
            if "in use" not in self.stderr_text():
                break
        self.returncode = self.proc.returncode
        raise AssertionError(last)

    def _ready(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            s = socket.create_connection(("127.0.0.1", self.control_port), timeout=0.5)
        except OSError:
            return False
        try:
            s.settimeout(2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    break
                head += b
            return head.startswith(b"HTTP/1.") and head.split(b" ")[1:2] == [b"200"]
        except OSError:
            return False
        finally:
            s.close()

    def kill9(self):
        """SIGKILL, reaped; the next start() reuses the ports and the state dir."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        rc = self.stop(10.0)
        assert rc == 0, "exit status after SIGTERM was %r (want 0 within 10 s)" % rc
        return self.start()

    @property
    def control_url(self):
        return "http://127.0.0.1:%d" % self.control_port

    @property
    def bootstrap_key_path(self):
        return os.path.join(self.state_dir, "bootstrap.key")

    def bootstrap_key(self):
        with open(self.bootstrap_key_path) as f:
            return f.read().strip()

    def api(self, key=None, prefix="/api"):
        return API(self.control_url, self.bootstrap_key() if key is None else key, prefix)

    def cli(self, *args, timeout=30):
        """Runs `authproxy ARGS --state-dir <this daemon's state dir>`."""
        return subprocess.run([self.binary] + list(args) + ["--state-dir", self.state_dir],
                              capture_output=True, timeout=timeout, env=self.env(), cwd=self.dir)

    def create_workspace(self, name):
        """`authproxy workspace create NAME`; returns the API key it printed."""
        p = self.cli("workspace", "create", name)
        out = p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, "workspace create %s failed (%d): %s %s" % (
            name, p.returncode, out, p.stderr.decode("utf-8", "replace"))
        m = re.search(r"\bapk_[A-Za-z0-9_-]+", out)
        if m:
            return m.group(0)
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and " " not in lines[0], \
            "cannot find the API key in the output of workspace create: %r" % out
        return lines[0]

    def db_files(self):
        """The SQLite database and its -wal/-shm companions that exist now."""
        base = os.path.join(self.state_dir, "authproxy.db")
        return [p for p in (base, base + "-wal", base + "-shm", base + "-journal")
                if os.path.exists(p)]


# -- the control API ------------------------------------------------------------------------------

class API:
    """requests against the control API with one workspace key. prefix is "/api" or "" for the
    §6 paths (the secrets path is only served as written, /api/v1/...)."""

    def __init__(self, base, key, prefix="/api"):
        self.base = base
        self.key = key
        self.prefix = prefix
        self.s = requests.Session()
        self.s.trust_env = False

    def with_prefix(self, prefix):
        return API(self.base, self.key, prefix)

    def with_key(self, key):
        return API(self.base, key, self.prefix)

    def request(self, method, path, body=None, data=None, headers=None, key=True, timeout=15):
        h = {}
        if key is True and self.key is not None:
            h["x-api-key"] = self.key
        elif isinstance(key, str):
            h["x-api-key"] = key
        if body is not None:
            data = json.dumps(body)
        if data is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return self.s.request(method, self.base + path, data=data, headers=h, timeout=timeout)

    # boxes
    def boxes(self, name=None):
        return self.prefix + BOXES + ("" if name is None else "/" + name)

    def create_box(self, body):
        return self.request("POST", self.boxes(), body)

    def get_box(self, name):
        return self.request("GET", self.boxes(name))

    def list_boxes(self):
        return self.request("GET", self.boxes())

    def patch_box(self, name, body):
        return self.request("PATCH", self.boxes(name), body)

    def delete_box(self, name):
        return self.request("DELETE", self.boxes(name))

    def start_box(self, name):
        return self.request("POST", self.boxes(name) + "/start")

    def stop_box(self, name):
        return self.request("POST", self.boxes(name) + "/stop")

    def execute(self, dataplane_url, body, timeout=90):
        """POST {dataplane_url}/execute (SPEC §6): the box's own URL from its JSON, as the SDKs
        use it."""
        h = {"x-api-key": self.key, "Content-Type": "application/json"}
        return self.s.post(dataplane_url + "/execute", data=json.dumps(body), headers=h,
                           timeout=timeout)

    # templates
    def templates(self, name=None):
        return self.prefix + TEMPLATES + ("" if name is None else "/" + name)

    def create_template(self, body):
        return self.request("POST", self.templates(), body)

    def get_template(self, name):
        return self.request("GET", self.templates(name))

    def list_templates(self):
        return self.request("GET", self.templates())

    def delete_template(self, name):
        return self.request("DELETE", self.templates(name))

    # secrets
    def put_secret(self, key, value=None, configs=None):
        body = {}
        if value is not None:
            body["value"] = value
        if configs is not None:
            body["configs"] = configs
        return self.request("PUT", SECRETS + "/" + key, body)

    def list_secrets(self):
        return self.request("GET", SECRETS)

    def delete_secret(self, key):
        return self.request("DELETE", SECRETS + "/" + key)

    # operations
    def healthz(self):
        return self.request("GET", "/healthz", key=False)

    def metrics(self, key=True):
        return self.request("GET", "/metrics", key=key)


def worker_connections(api):
    """{worker index: client connections open now} from /metrics."""
    r = api.metrics()
    assert r.status_code == 200, (r.status_code, r.text[:500])
    got = {int(m.group(1)): int(m.group(2)) for m in
           re.finditer(r'^authproxy_worker_connections\{worker="(\d+)"\} (\d+)$', r.text, re.M)}
    assert got, "no authproxy_worker_connections in /metrics:\n" + r.text[:2000]
    return got


def ok(resp, *codes):
    """Asserts a 2xx (or one of codes) and returns the parsed JSON body (None if empty)."""
    want = codes or tuple(range(200, 300))
    assert resp.status_code in want, "%s %s -> %d %s" % (
        resp.request.method, resp.request.url, resp.status_code, resp.text[:2000])
    if not resp.content:
        return None
    return resp.json()


def detail(resp):
    """The `detail` of an error response, asserting the JSON {"detail": ...} shape."""
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError("error body is not JSON (%d): %r" % (resp.status_code, resp.text[:500]))
    assert isinstance(body, dict) and "detail" in body, \
        "error body has no detail (%d): %r" % (resp.status_code, body)
    d = body["detail"]
    assert d, "empty detail: %r" % body
    return d if isinstance(d, str) else json.dumps(d)


def box_items(body):
    """Boxes of a list response. The hosted API (and its SDK) use {"sandboxes": [...]};
    test_control_api.py asserts that shape, other tests only need the items."""
    if isinstance(body, dict):
        for k in ("sandboxes", "boxes", "items"):
            if isinstance(body.get(k), list):
                return body[k]
    assert isinstance(body, list), "a box list must be a list or {'sandboxes': [...]}: %r" % body
    return body


def template_items(body):
    if isinstance(body, dict):
        for k in ("templates", "items"):
            if isinstance(body.get(k), list):
                return body[k]
    assert isinstance(body, list), "a template list must be a list or {'templates': [...]}: %r" % body
    return body


def secret_items(body):
    if isinstance(body, dict):
        for k in ("secrets", "items"):
            if isinstance(body.get(k), list):
                return body[k]
    assert isinstance(body, list), "a secret list must be a list or {'secrets': [...]}: %r" % body
    return body


def secret_name(item):
    return item.get("key", item.get("name"))


def header_rule(name, hosts, headers, paths=()):
    """A rule in the current wire format; headers: (name, type, value) and value None = omitted."""
    hs = []
    for n, t, v in headers:
        h = {"name": n, "type": t}
        if v is not None:
            h["value"] = v
        hs.append(h)
    return {"name": name, "match_hosts": list(hosts), "match_paths": list(paths), "headers": hs}


def openai_rule(name="openai"):
    return header_rule(name, ["api.openai.com"],
                       [("Authorization", "workspace_secret", "Bearer {OPENAI_API_KEY}")])


def proxy_config(*rules, **extra):
    pc = {"rules": list(rules)}
    pc.update(extra)
    return pc


def find_headers(doc, name):
    """Every header object named name (case-insensitively) anywhere in a JSON document."""
    out = []
    if isinstance(doc, dict):
        if isinstance(doc.get("name"), str) and doc["name"].lower() == name.lower() and "type" in doc:
            out.append(doc)
        for v in doc.values():
            out += find_headers(v, name)
    elif isinstance(doc, list):
        for v in doc:
            out += find_headers(v, name)
    return out


# -- the explicit proxy with a box credential -----------------------------------------------------

class Credential:
    def __init__(self, name, token):
        self.name = name
        self.token = token

    @classmethod
    def of(cls, created):
        """From a create response: proxy_token, checked against proxy_url."""
        assert isinstance(created.get("proxy_token"), str) and created["proxy_token"], \
            "create response has no proxy_token: %r" % sorted(created)
        return cls(created["name"], created["proxy_token"])

    def header(self):
        raw = ("%s:%s" % (self.name, self.token)).encode()
        return "Basic " + base64.b64encode(raw).decode()

    def url(self, port):
        return "http://%s:%s@127.0.0.1:%d" % (self.name, self.token, port)

    def proxies(self, port):
        return {"http": self.url(port), "https": self.url(port)}


def via_proxy(proxy_port, host, cafile, path="/", cred=None, method="GET", headers=(),
              body=None, port=443, proxy_auth=None):
    """One HTTPS request through a fresh CONNECT tunnel, the CONNECT carrying the box credential
    (cred: Credential, or proxy_auth: a raw Proxy-Authorization value). A refused CONNECT is
    returned as the response (stage "connect")."""
    extra = b""
    auth = proxy_auth if proxy_auth is not None else (cred.header() if cred else None)
    if auth is not None:
        extra = b"Proxy-Authorization: %s\r\n" % auth.encode("latin-1")
    s, resp = client.connect(proxy_port, "%s:%d" % (host, port), extra)
    if resp.status // 100 != 2:
        s.close()
        return resp
    ts = client.client_tls_context(cafile).wrap_socket(s, server_hostname=host)
    ts.settimeout(client.TIMEOUT)
    conn = client.Conn(ts)
    try:
        conn.send(client.request_bytes(method, path, host if port == 443 else "%s:%d" % (host, port),
                                       headers, body))
        r = conn.read_response(method)
        r.received = conn.received
        return r
    finally:
        conn.close()


def http_via_proxy(proxy_port, url, cred=None, method="GET", headers=(), body=None):
    """One absolute-form plain-HTTP request to the explicit proxy with the box credential."""
    split = requests.utils.urlparse(url)
    h = list(headers)
    if cred is not None:
        h.append(("Proxy-Authorization", cred.header()))
    return client.http_request(proxy_port, url, split.netloc, method, h, body)


def tagged_request(proxy_port, origin, host, cafile, cred, tag, path="/v1/models"):
    """A request tagged X-Req: tag; returns (response, the origin's record of it or None)."""
    r = via_proxy(proxy_port, host, cafile, path, cred, headers=[("X-Req", tag)])
    for rec in origin.snapshot():
        if rec.values("X-Req") == [tag]:
            return r, rec
    return r, None


_TAG = [0]


def next_tag(prefix="req"):
    _TAG[0] += 1
    return "%s-%d-%s" % (prefix, _TAG[0], binascii.hexlify(os.urandom(4)).decode())


def injected(proxy_port, origin, host, cafile, cred, header="Authorization", path="/v1/models"):
    """Sends one tagged request with cred; returns (status, values of header at the origin or
    None if the request never reached it)."""
    r, rec = tagged_request(proxy_port, origin, host, cafile, cred, next_tag(), path)
    return r.status, (rec.values(header) if rec is not None else None)


# -- curl -----------------------------------------------------------------------------------------

def run_shell(cmd, env_extra, home, timeout=30):
    """Runs a shell command line (a seed's curl example) with a clean environment plus
    env_extra; curl is told where to write the body and to print the status code. The request
    itself is the command as written."""
    env = sanitizer_env()
    for k in list(env):
        if k.startswith(("CURL_", "LANGSMITH_", "SSL_")):
            del env[k]
    env["HOME"] = home
    env.update(env_extra)
    body_path = os.path.join(home, "curl-body-%d" % time.monotonic_ns())
    full = "%s -sS -o %s -w '%%{http_code}'" % (cmd.rstrip(), body_path)
    p = subprocess.run(["bash", "-c", full], capture_output=True, timeout=timeout, env=env)
    try:
        with open(body_path, "rb") as f:
            body = f.read()
    except FileNotFoundError:
        body = b""
    return p.returncode, p.stdout.decode("utf-8", "replace").strip(), body, \
        p.stderr.decode("utf-8", "replace")


# -- seeds ----------------------------------------------------------------------------------------

def seed_files():
    files = sorted(glob.glob(os.path.join(SEEDS_DIR, "*.txt")))
    assert files, "no seed documents in %s" % SEEDS_DIR
    return files


def seed_text_containing(marker):
    for path in seed_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if marker in text:
            return path, text
    raise AssertionError("no seed document in %s contains %r" % (SEEDS_DIR, marker))


def seed_template_curls():
    """The curl examples of the seed that documents templates, verbatim (seed 002)."""
    path, text = seed_text_containing("/api/v2/sandboxes/templates")
    cmds = re.findall(r"curl -X POST \"\$LANGSMITH_ENDPOINT/api/v2/sandboxes/templates\".*?-d '[^']*'",
                      text, re.S)
    assert len(cmds) >= 2, "expected the single and the multiple API examples in %s" % path
    return cmds


def curl_json_payload(cmd):
    return json.loads(re.search(r"-d '([^']*)'", cmd, re.S).group(1))


def seed_header_object():
    """The header JSON of the blog seed (001): Authorization from workspace secret."""
    path, text = seed_text_containing('"type": "workspace_secret"')
    i = text.index('"type": "workspace_secret"')
    start = text.rindex("{", 0, i)
    obj, _end = json.JSONDecoder().raw_decode(text[start:])
    return obj


# -- state-dir bytes ------------------------------------------------------------------------------

def files_containing(paths, needles):
    """[(path, needle)] for every needle (bytes) found in any of the files."""
    hits = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        for n in needles:
            if n in data:
                hits.append((p, n))
    return hits


def all_files(directory):
    out = []
    for dirpath, _dirs, files in os.walk(directory):
        for fn in files:
            out.append(os.path.join(dirpath, fn))
    return out


SEALED_RE = re.compile(rb"apseal:([A-Za-z0-9+/]+={0,2})")


def sealed_key_ids(data):
    """Key ids (hex) of every sealed text value found in raw bytes (seal.h text form)."""
    ids = []
    for m in SEALED_RE.finditer(data):
        try:
            blob = base64.b64decode(m.group(1) + b"=" * (-len(m.group(1)) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(blob) >= 9 and blob[0] == 1:
            ids.append(blob[1:9].hex())
    return ids


def keyring_ids(state_dir):
    """Key ids (hex, current first) of <state>/master.key: raw 32 bytes or one key a line."""
    with open(os.path.join(state_dir, "master.key"), "rb") as f:
        data = f.read()
    keys = []
    if len(data) == 32:
        keys = [data]
    else:
        for line in data.decode("ascii").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if re.fullmatch(r"[0-9a-fA-F]{64}", line):
                keys.append(bytes.fromhex(line))
            else:
                s = line.replace("-", "+").replace("_", "/")
                keys.append(base64.b64decode(s + "=" * (-len(s) % 4)))
    assert keys, "no key in master.key"
    return [hashlib.sha256(k).digest()[:8].hex() for k in keys]


def tls_ok(cafile):
    """A client TLS context for the interception CA (used by raw socket tests)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
