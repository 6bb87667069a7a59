"""Helpers of the attack suite that tests/e2e does not have: running an attacker's script inside
a real sandbox (`authproxy sandbox run`), a hand-built TLS ClientHello (for what no TLS library
sends: an IP literal or a trailing dot in SNI, TLS 1.0 only, a hello split over records), DNS
messages built byte by byte, a scripted raw TLS origin, and process measurements.

Everything talks to loopback or to network namespaces the tests create.
"""
import json
import os
import socket
import ssl
import struct
import subprocess
import threading

from e2e_conftest import SESSION_SECRETS, _read
from helpers.daemon import SANITIZER_MARKERS, sanitizer_env

ROOT_ONLY_REASON = "sandboxes need root (network namespaces, cgroups)"


# -- the sandbox ----------------------------------------------------------------------------------

class SandboxRun:
    """One `authproxy sandbox run`: its output, its state dir and its audit log. It joins
    stack.daemons, so e2e's teardown scans its audit log, stderr and stdout (the command's
    output) for every session secret and checks each audit line; proc is None, so the
    exit-status check of Stack.teardown skips it (the embedded proxy's exit is the command's)."""

    proc = None

    def __init__(self, directory):
        self.dir = directory
        self.state_dir = os.path.join(directory, "state")
        self.audit_path = os.path.join(self.state_dir, "audit.log")
        self.stdout_path = os.path.join(directory, "stdout.log")
        self.stderr_path = os.path.join(directory, "stderr.log")
        self.returncode = None
        self.stdout = b""
        self.stderr = b""

    def audit_text(self):
        return _read(self.audit_path)

    def stderr_text(self):
        return _read(self.stderr_path)

    def audit_records(self):
        return [json.loads(line) for line in self.audit_text().splitlines()]

    def results(self):
        """The JSON object the attacker script printed on its last stdout line."""
        lines = self.stdout.decode("utf-8", "replace").strip().splitlines()
        assert lines, "the sandboxed script printed nothing; stderr:\n%s" % self.stderr.decode(
            "utf-8", "replace")[-3000:]
        return json.loads(lines[-1])


def run_sandbox(stack, cmd, proxy_config=None, secrets=None, timeout=60):
    """Runs cmd (argv) in a fresh sandbox under proxy_config (rules, access_control, ...), with
    the stack's dns_remap and test roots, and the e2e DNS server as the upstream resolver.
    Returns the SandboxRun; fails the test on a sanitizer report from the embedded proxy."""
    d = os.path.join(stack.tmp, "sandbox%d" % len(stack.daemons))
    run = SandboxRun(d)
    os.makedirs(d)
    cfg = stack.config(proxy_config, secrets)
    path = os.path.join(d, "sandbox.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(cfg, f)
    argv = [stack.binary, "sandbox", "run", "--config", path, "--state-dir", run.state_dir,
            "--upstream-dns", stack.dns.addr, "--timeout", str(timeout), "--"] + list(cmd)
    stack.daemons.append(run)
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 30, env=sanitizer_env())
    run.returncode, run.stdout, run.stderr = p.returncode, p.stdout, p.stderr
    with open(run.stdout_path, "wb") as f:
        f.write(p.stdout)
    with open(run.stderr_path, "wb") as f:
        f.write(p.stderr)
    err = p.stderr.decode("utf-8", "replace")
    hits = [m for m in SANITIZER_MARKERS if m in err]
    assert not hits, "sanitizer report from sandbox run:\n%s" % err[-8000:]
    return run


def run_python(stack, script, proxy_config=None, secrets=None, timeout=60):
    """run_sandbox with `python3 -c script`; the script reports by printing one JSON line."""
    return run_sandbox(stack, ["/usr/bin/python3", "-c", script], proxy_config, secrets, timeout)


# Prepended to every attacker script: small tools the probes share inside the sandbox.
SANDBOX_PRELUDE = r'''
import json, os, socket, ssl, struct, sys, time
OUT = {}
def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
def err(e):
    return "%s: %s" % (type(e).__name__, e)
def tcp_exchange(addr, data, timeout=5.0, chunks=None, pause=0.0):
    """Connects, sends data (in pieces of `chunks` bytes with `pause` between them if given),
    returns everything received until the peer closes or goes quiet, or an error string."""
    try:
        s = socket.create_connection(addr, timeout=timeout)
    except OSError as e:
        return {"connect": err(e)}
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    try:
        if chunks:
            for i in range(0, len(data), chunks):
                s.sendall(data[i:i + chunks])
                time.sleep(pause)
        else:
            s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except ConnectionResetError as e:
        return {"received": got.hex(), "closed": True, "reset": True}
    except OSError as e:
        return {"received": got.hex(), "error": err(e)}
    finally:
        s.close()
    return {"received": got.hex(), "closed": True}
'''


def sandbox_script(body):
    return SANDBOX_PRELUDE + "\n" + body + "\nprint(json.dumps(OUT))\n"


# -- TLS ClientHello by hand ------------------------------------------------------------------------

TLS10, TLS11, TLS12, TLS13 = 0x0301, 0x0302, 0x0303, 0x0304


DEFAULT_SUITES = (0x1301, 0x1302, 0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035)


def client_hello(sni=None, versions=(TLS13, TLS12), alpn=None, record_version=TLS10,
                 record_split=None, suites=DEFAULT_SUITES):
    """A ClientHello as bytes. sni: raw bytes or str put verbatim into server_name (None: no
    extension). versions: offered versions, highest first; with TLS 1.3 a supported_versions
    extension and a key share are sent, otherwise legacy_version is the highest one and no
    supported_versions (how a TLS 1.0-only client looks). alpn: list of protocol names.
    record_split: sizes of the handshake-record fragments (the message split over records).
    suites: the cipher suites offered."""
    exts = b""
    if sni is not None:
        name = sni.encode() if isinstance(sni, str) else sni
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        body = struct.pack("!H", len(entry)) + entry
        exts += struct.pack("!HH", 0, len(body)) + body
    # supported_groups (x25519, secp256r1) and signature_algorithms (ecdsa/rsa-pss/rsa sha256)
    groups = struct.pack("!HHH", 4, 0x001d, 0x0017)
    exts += struct.pack("!HH", 10, len(groups)) + groups
    sigs = struct.pack("!H", 8) + struct.pack("!HHHH", 0x0403, 0x0804, 0x0401, 0x0201)
    exts += struct.pack("!HH", 13, len(sigs)) + sigs
    exts += struct.pack("!HH", 11, 2) + b"\x01\x00"  # ec_point_formats: uncompressed
    if alpn:
        lst = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        body = struct.pack("!H", len(lst)) + lst
        exts += struct.pack("!HH", 16, len(body)) + body
    if TLS13 in versions:
        vs = b"".join(struct.pack("!H", v) for v in versions)
        body = bytes([len(vs)]) + vs
        exts += struct.pack("!HH", 43, len(body)) + body
        share = struct.pack("!HH", 0x001d, 32) + os.urandom(32)
        body = struct.pack("!H", len(share)) + share
        exts += struct.pack("!HH", 51, len(body)) + body
        legacy = TLS12
    else:
        legacy = versions[0]
    cs = b"".join(struct.pack("!H", s) for s in suites)
    hello = (struct.pack("!H", legacy) + os.urandom(32) + b"\x20" + os.urandom(32) +
             struct.pack("!H", len(cs)) + cs + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    msg = b"\x01" + struct.pack("!I", len(hello))[1:] + hello
    pieces = []
    if record_split:
        off = 0
        for n in record_split:
            pieces.append(msg[off:off + n])
            off += n
        if off < len(msg):
            pieces.append(msg[off:])
    else:
        pieces = [msg]
    return b"".join(b"\x16" + struct.pack("!HH", record_version, len(p)) + p for p in pieces)


def server_answer_kind(data):
    """What a server's first bytes to a ClientHello were: "server_hello", "alert", "http" (a
    plain-text answer), "nothing" or "other"."""
    if not data:
        return "nothing"
    if len(data) >= 6 and data[0] == 0x16 and data[5] == 0x02:
        return "server_hello"
    if data[0] == 0x15:
        return "alert"
    if data.startswith(b"HTTP/"):
        return "http"
    return "other"


# -- DNS messages ------------------------------------------------------------------------------------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "MX": 15, "TXT": 16, "AAAA": 28, "SVCB": 64, "HTTPS": 65,
          "ANY": 255}


def dns_query(name, qtype="A", qid=0x1234, labels=None):
    """A standard query. labels: the exact label bytes (to put dots or NULs inside a label)."""
    if labels is None:
        labels = [l.encode() for l in name.rstrip(".").split(".")]
    q = b"".join(bytes([len(l)]) + l for l in labels) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", QTYPES.get(
        qtype, qtype) if isinstance(qtype, str) else qtype, 1)


# Prepended to sandbox scripts that speak DNS: the same builder, plus a reply decoder.
DNS_PRELUDE = r'''
def dns_query(name, qtype=1, qid=0x1234, labels=None):
    if labels is None:
        labels = [l.encode() for l in name.rstrip(".").split(".")]
    q = b"".join(bytes([len(l)]) + l for l in labels) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)
def dns_reply(data):
    if data is None or len(data) < 12:
        return {"rcode": None, "answers": 0}
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    return {"id": qid, "rcode": flags & 0xF, "answers": an, "qr": bool(flags & 0x8000)}
def udp_dns(server, msg, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(msg, (server, 53))
        data, _ = s.recvfrom(4096)
        return dns_reply(data)
    except OSError as e:
        return {"rcode": None, "error": err(e)}
    finally:
        s.close()
def tcp_dns(server, msgs, timeout=3.0):
    out = []
    try:
        s = socket.create_connection((server, 53), timeout=timeout)
    except OSError as e:
        return [{"rcode": None, "error": err(e)}]
    try:
        s.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
        buf = b""
        while len(out) < len(msgs):
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                b = s.recv(4096)
                if not b:
                    raise EOFError("closed")
                buf += b
            n = struct.unpack("!H", buf[:2])[0]
            out.append(dns_reply(buf[2:2 + n]))
            buf = buf[2 + n:]
    except (OSError, EOFError) as e:
        out.append({"rcode": None, "error": err(e)})
    finally:
        s.close()
    return out
def resolver():
    for line in open("/etc/resolv.conf"):
        if line.startswith("nameserver"):
            return line.split()[1]
'''

RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = \
    0, 1, 2, 3, 4, 5


def dns_script(body):
    return sandbox_script(DNS_PRELUDE + "\n" + body)


# -- a scripted raw TLS origin ----------------------------------------------------------------------

class RawOrigin:
    """A TLS origin whose every connection is handed to handler(origin, conn_index, sock) on its
    own thread; it records accepted connections and every byte received (for leak checks)."""

    def __init__(self, cert, key, handler):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.handler = handler
        self.lock = threading.Lock()
        self.accepts = 0
        self.received = {}  # conn index -> bytes
        self.closed_by_peer = set()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self._socks = []
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._stop:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
                idx = self.accepts
                self.received[idx] = b""
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(idx, s), daemon=True).start()

    def _serve(self, idx, s):
        try:
            s.settimeout(10)
            tls = self.ctx.wrap_socket(s, server_side=True)
            self.handler(self, idx, tls)
        except (OSError, ssl.SSLError, EOFError):
            pass

    def recv(self, idx, sock, n=65536):
        """recv that records what arrived; b"" at EOF."""
        try:
            data = sock.recv(n)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        with self.lock:
            self.received[idx] += data
            if not data:
                self.closed_by_peer.add(idx)
        return data

    def all_received(self):
        with self.lock:
            return b"".join(self.received.values())

    def close(self):
        self._stop = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass


def raw_origin(stack, name, handler):
    """A RawOrigin for name (the good test leaf), registered for teardown and dns_remap."""
    cert, key = stack.pki.good
    o = RawOrigin(cert, key, handler)
    stack.servers.append(o)
    stack.remap(name, "127.0.0.1:%d" % o.port)
    return o


# -- measurements ------------------------------------------------------------------------------------

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def secrets_in(data):
    """The session secrets found in data (bytes or str)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [s for s in SESSION_SECRETS if s in text]


# -- probes sharing one daemon (conftest.shared_stack) ------------------------------------------------

def reset_origin(o):
    """Clears an e2e Origin's records between probes sharing it (accept counts are kept: use
    differences)."""
    with o.lock:
        o.bytes_received = 0
        o.heads.clear()
        o.requests.clear()
        o.tls_failures = 0


def begin_probe(env, stack, request):
    """Before a probe on a module's shared daemon (env: .d, .origins): clears the origins'
    records and attaches the daemon's logs to the probe's failure report."""
    for o in env.origins:
        reset_origin(o)
    request.node._authproxy_daemons = stack.daemons


def end_probe(env):
    """After a probe on a shared daemon: it must still be running."""
    assert env.d.alive(), "the daemon died"
