"""Running the real authproxy daemon for a test.

A Daemon owns one `authproxy serve` process with its own state dir, config
file, audit log and captured stdout/stderr. stop() sends SIGTERM and reports
the exit status; the fixture asserts on it.
"""
import json
import os
import signal
import socket
import subprocess
import time

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                     "ThreadSanitizer", "UndefinedBehaviorSanitizer")
# Multiplies the harness's own waits (start, ca cert, stop, wait_audit) for slow runs of the
# daemon, e.g. under valgrind (`make valgrind` sets 10). The tests' client-side timeouts stay as
# written: a test that fails only because the daemon is slow there is listed, not loosened.
TIMEOUT_SCALE = float(os.environ.get("AUTHPROXY_E2E_TIMEOUT_SCALE", "1"))
START_TIMEOUT = float(os.environ.get("AUTHPROXY_E2E_START_TIMEOUT", 20 * TIMEOUT_SCALE))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sanitizer_env():
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k.upper() != "NO_PROXY"}
    # For leak reports with full allocation stacks through the system libraries (built without
    # frame pointers) run the suite with ASAN_OPTIONS=fast_unwind_on_malloc=0 (about 4x slower).
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def write_json_atomically(path, obj_or_text):
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text, indent=2)
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:  # holds secrets
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DaemonStartError(Exception):
    pass


class Daemon:
    def __init__(self, binary, workdir, config, dns_addr, workers=2, extra_args=()):
        self.binary = binary
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.state_dir = os.path.join(workdir, "state")
        self.config_path = os.path.join(workdir, "config.json")
        self.audit_path = os.path.join(workdir, "audit.jsonl")
        self.stderr_path = os.path.join(workdir, "stderr.log")
        self.stdout_path = os.path.join(workdir, "stdout.log")
        self.dns_addr = dns_addr
        self.workers = workers
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.returncode = None
        self._ca_path = None
        write_json_atomically(self.config_path, config)

    def argv(self):
        return [self.binary, "serve", "--config", self.config_path, "--state-dir", self.state_dir,
                "--listen-proxy", "127.0.0.1:%d" % self.port, "--audit-log", self.audit_path,
                "--workers", str(self.workers), "--upstream-dns", self.dns_addr,
                # The control API is not what these tests exercise: an ephemeral port keeps
                # daemons from contending for the default 8081.
                "--listen-control", "127.0.0.1:0"] + self.extra_args

    def start(self):
        last = None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = free_port()
            with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
                self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=err,
                                             stdin=subprocess.DEVNULL, env=sanitizer_env(),
                                             cwd=self.dir)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise DaemonStartError("authproxy did not accept on port %d within %.0fs:\n%s"
                                       % (self.port, START_TIMEOUT, self.stderr_text()[-4000:]))
            last = "authproxy exited with status %s at startup:\n%s" % (
                self.proc.returncode, self.stderr_text()[-4000:])
            if "in use" not in self.stderr_text():
                break
        self.returncode = self.proc.returncode
        raise DaemonStartError(last)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def proxies(self):
        return {"http": self.url, "https": self.url}

    def write_config(self, config):
        write_json_atomically(self.config_path, config)

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def reload(self, config):
        self.write_config(config)
        self.sighup()

    def ca_path(self):
        """The interception CA as a PEM file (via `authproxy ca cert`)."""
        if self._ca_path is None:
            p = subprocess.run([self.binary, "ca", "cert", "--state-dir", self.state_dir],
                               capture_output=True, timeout=20 * TIMEOUT_SCALE,
                               env=sanitizer_env())
            if p.returncode != 0 or b"BEGIN CERTIFICATE" not in p.stdout:
                raise AssertionError("authproxy ca cert failed (%d): %r %r"
                                     % (p.returncode, p.stdout, p.stderr))
            path = os.path.join(self.dir, "interception-ca.pem")
            with open(path, "wb") as f:
                f.write(p.stdout)
            self._ca_path = path
        return self._ca_path

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def audit_text(self):
        try:
            with open(self.audit_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def audit_records(self):
        """Every audit line parsed; raises if a line is not a JSON object."""
        out = []
        for i, line in enumerate(self.audit_text().splitlines()):
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("audit line %d is not an object: %r" % (i + 1, line))
            out.append(rec)
        return out

    def wait_audit(self, pred, timeout=5.0):
        """Waits until some audit record satisfies pred; returns the records matching it."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            recs = [r for r in self.audit_records() if pred(r)]
            if recs or time.monotonic() > deadline:
                return recs
            time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM; returns the exit status, or None if it had to be killed (after timeout
        times TIMEOUT_SCALE seconds)."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * TIMEOUT_SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = None
                return None
        self.returncode = self.proc.returncode
        return self.returncode
