"""Recording HTTP/1.1 origin servers (plain or TLS) for the end-to-end tests.

Hand-written on top of socket/ssl/threading rather than http.server so that a
test can see exactly what the proxy forwarded: header names in their original
case and order, duplicates, the raw head bytes, every TCP accept (to prove
upstream keep-alive) and the number of application bytes received (to prove a
refused request never reached the origin).

A request is recorded in `heads` as soon as its head is parsed and in
`requests` only once its body has been read completely and validly, so a
body-level smuggling attempt that the proxy aborts mid-body never shows up in
`requests`.
"""
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
MAX_HEAD = 1 << 20


class Request:
    def __init__(self, conn_id, method, target, version, headers, raw_head):
        self.conn_id = conn_id
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value) as received
        self.raw_head = raw_head
        self.body = b""
        self.time = time.monotonic()
        split = urllib.parse.urlsplit(target)
        self.path = split.path
        self.query = split.query

    def values(self, name):
        """All values of a header, case-insensitively, in arrival order."""
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name):
        vals = self.values(name)
        return vals[0] if vals else None

    def __repr__(self):
        return "<Request %s %s conn=%d headers=%r>" % (self.method, self.target, self.conn_id,
                                                        self.headers)


class BadMessage(Exception):
    pass


class _Stream:
    """Buffered reads on a (TLS) socket, counting application bytes. The buffer is a bytearray
    so that many small TLS records add up in linear time (bytes += bytes is quadratic)."""

    def __init__(self, sock, origin):
        self.sock = sock
        self.origin = origin
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        with self.origin.lock:
            self.origin.bytes_received += len(data)
        self.buf += data

    def _take(self, n, skip=0):
        data = bytes(self.buf[:n])
        del self.buf[:n + skip]
        return data

    def read_head(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                return self._take(i + 4)
            if len(self.buf) > MAX_HEAD:
                raise BadMessage("head too large")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        return self._take(n)

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i, 2)
            if len(self.buf) > 65536:
                raise BadMessage("line too long")
            self._fill()

    def read_chunked(self):
        body = b""
        while True:
            line = self.read_line()
            size_s = line.split(b";", 1)[0].strip()
            if not size_s or len(size_s) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
                raise BadMessage("bad chunk size %r" % line)
            size = int(size_s, 16)
            if size == 0:
                while self.read_line() != b"":
                    pass  # trailers
                return body
            body += self.read_exact(size)
            if self.read_exact(2) != b"\r\n":
                raise BadMessage("missing CRLF after chunk")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class Origin:
    """An HTTP/1.1 origin on 127.0.0.1:<ephemeral>, TLS if cert/key are given."""

    def __init__(self, cert=None, key=None, git_root=None, name="origin"):
        self.name = name
        self.git_root = git_root
        self.ctx = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
            self.ctx.set_alpn_protocols(["http/1.1"])
        self.lock = threading.Lock()
        self.accepts = 0
        self.tls_failures = 0
        self.bytes_received = 0
        self.heads = []
        self.requests = []
        self.events = {}
        self.routes = {}
        self._conns = set()
        self._closing = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self.thread.start()

    @property
    def tls(self):
        return self.ctx is not None

    def route(self, path, fn):
        """fn(origin, conn, req) writes the whole response with conn.sendall."""
        self.routes[path] = fn

    def wait_requests(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        with self.lock:
            return list(self.requests)

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    # -- server internals -------------------------------------------------------------------

    def _accept_loop(self):
        while not self._closing:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
                conn_id = self.accepts
                self._conns.add(sock)
            t = threading.Thread(target=self._serve_conn, args=(sock, conn_id),
                                 name="%s-conn%d" % (self.name, conn_id), daemon=True)
            t.start()

    def _serve_conn(self, sock, conn_id):
        conn = sock
        try:
            sock.settimeout(15)
            if self.ctx:
                try:
                    conn = self.ctx.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    with self.lock:
                        self.tls_failures += 1
                    return
            stream = _Stream(conn, self)
            while not self._closing:
                if not self._serve_one(conn, stream, conn_id):
                    return
        except (EOFError, BadMessage, OSError, ssl.SSLError):
            return
        finally:
            with self.lock:
                self._conns.discard(sock)
            try:
                conn.close()
            except OSError:
                pass

    def _serve_one(self, conn, stream, conn_id):
        head = stream.read_head()
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadMessage("bad request line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadMessage("bad header line %r" % line)
            headers.append((name, value.strip(" \t")))
        req = Request(conn_id, method, target, version, headers, head)
        with self.lock:
            self.heads.append(req)
        te = ",".join(req.values("Transfer-Encoding")).lower()
        if req.header("Expect") and req.header("Expect").lower() == "100-continue" \
                and req.path != "/no-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in te:
            req.body = stream.read_chunked()
        elif req.header("Content-Length") is not None:
            req.body = stream.read_exact(int(req.header("Content-Length")))
        with self.lock:
            self.requests.append(req)
        conn_hdr = (req.header("Connection") or "").lower()
        keep = (version == "HTTP/1.1" and "close" not in conn_hdr) or \
               (version == "HTTP/1.0" and "keep-alive" in conn_hdr)
        fn = self.routes.get(req.path)
        if fn is None and req.path.startswith("/git/") and self.git_root:
            fn = Origin._git
        if fn is None:
            fn = _BUILTIN.get(req.path, Origin._ok)
        result = fn(self, conn, req, keep)
        return keep and result is not False

    # -- built-in routes (each returns False to close the connection) -------------------------

    @staticmethod
    def send(conn, status, headers=(), body=b"", keep=True, reason="X"):
        out = ["HTTP/1.1 %d %s" % (status, reason)]
        out += ["%s: %s" % h for h in headers]
        if not keep:
            out.append("Connection: close")
        conn.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        return keep

    def _ok(self, conn, req, keep):
        body = b"ok from %s\n" % self.name.encode()
        return Origin.send(conn, 200, [("Content-Type", "text/plain"),
                                       ("Content-Length", str(len(body)))], body, keep, "OK")

    def _body_digest(self, conn, req, keep):
        body = ("%d %s\n" % (len(req.body), hashlib.sha256(req.body).hexdigest())).encode()
        return Origin.send(conn, 200, [("Content-Type", "text/plain"),
                                       ("Content-Length", str(len(body)))], body, keep, "OK")

    def _chunked(self, conn, req, keep):
        Origin.send(conn, 200, [("Content-Type", "text/plain"),
                                ("Transfer-Encoding", "chunked")], b"", keep, "OK")
        for part in CHUNKED_PARTS:
            conn.sendall(chunk(part))
            time.sleep(0.02)
        conn.sendall(b"0\r\nX-Trailer: done\r\n\r\n")
        return keep

    def _sse(self, conn, req, keep):
        Origin.send(conn, 200, [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                ("Transfer-Encoding", "chunked")], b"", keep, "OK")
        sent = self.events.setdefault("sse_sent", [])
        for i in range(1, 4):
            if i > 1:
                time.sleep(0.3)
            conn.sendall(chunk(b"id: %d\ndata: event-%d\n\n" % (i, i)))
            sent.append(time.monotonic())
        conn.sendall(b"0\r\n\r\n")
        return keep

    def _head(self, conn, req, keep):
        body = b"x" * 1234
        return Origin.send(conn, 200, [("Content-Type", "text/plain"), ("Content-Length", "1234")],
                           b"" if req.method == "HEAD" else body, keep, "OK")

    def _204(self, conn, req, keep):
        return Origin.send(conn, 204, [("X-Status", "204")], b"", keep, "No Content")

    def _304(self, conn, req, keep):
        return Origin.send(conn, 304, [("ETag", '"v1"'), ("Content-Length", "50")], b"", keep,
                           "Not Modified")

    def _big(self, conn, req, keep):
        return Origin.send(conn, 200, [("Content-Type", "application/octet-stream"),
                                       ("Content-Length", str(len(BIG_BODY)))], BIG_BODY, keep, "OK")

    def _close(self, conn, req, keep):
        body = b"closing\n"
        Origin.send(conn, 200, [("Content-Length", str(len(body)))], body, False, "OK")
        return False

    def _git(self, conn, req, keep):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": req.method,
            "PATH_INFO": req.path[len("/git"):],
            "QUERY_STRING": req.query,
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(req.body)),
        }
        for n, v in req.headers:
            key = "HTTP_" + n.upper().replace("-", "_")
            if key in env:
                env[key] += ", " + v
            else:
                env[key] = v
        if req.header("Content-Type"):
            env["CONTENT_TYPE"] = req.header("Content-Type")
        p = subprocess.run([GIT_HTTP_BACKEND], input=req.body, env=env, capture_output=True,
                           timeout=30)
        out = p.stdout
        sep = out.find(b"\r\n\r\n")
        seplen = 4
        if sep < 0 or (out.find(b"\n\n") >= 0 and out.find(b"\n\n") < sep):
            sep, seplen = out.find(b"\n\n"), 2
        head, body = out[:sep].decode("latin-1"), out[sep + seplen:]
        status, headers = 200, []
        for line in head.replace("\r\n", "\n").split("\n"):
            n, _, v = line.partition(":")
            if n.lower() == "status":
                status = int(v.strip().split(" ")[0])
            elif n:
                headers.append((n, v.strip()))
        headers.append(("Content-Length", str(len(body))))
        return Origin.send(conn, status, headers, body, keep, "CGI")

    def close(self):
        self._closing = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2)


BIG_BODY = bytes(range(256)) * (5 * 4096)  # 5 MiB
CHUNKED_PARTS = [b"alpha-", b"beta-" * 100, b"gamma-" * 3000, b"omega"]

_BUILTIN = {
    "/digest": Origin._body_digest,
    "/chunked": Origin._chunked,
    "/sse": Origin._sse,
    "/head": Origin._head,
    "/status/204": Origin._204,
    "/status/304": Origin._304,
    "/close": Origin._close,
    "/big": Origin._big,
}
