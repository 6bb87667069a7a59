"""Raw HTTP/1.1 client pieces for talking to the proxy byte-exactly.

The tests use real clients (curl, requests, git, websockets) for the happy
paths and these helpers where they need to send what no real client would
(smuggling attempts, duplicate headers) or observe framing and timing.
Every socket operation has a timeout so a misbehaving proxy fails a test
instead of hanging the suite.
"""
import socket
import ssl
import time

TIMEOUT = 5.0


class Response:
    def __init__(self, status, reason, headers, body, stage="request"):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.stage = stage  # "connect": the proxy answered the CONNECT itself

    def values(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name):
        v = self.values(name)
        return v[0] if v else None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Response %d %r stage=%s headers=%r body=%r>" % (
            self.status, self.reason, self.stage, self.headers, self.body[:200])


class Closed(Exception):
    """The peer closed the connection before a complete message arrived."""


class Conn:
    """A buffered reader/writer over a plain or TLS socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.received = b""  # every byte ever received, for leak checks

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            raise Closed("connection closed; buffered %r" % self.buf[:200])
        self.received += data
        self.buf += data

    def read_until(self, marker, limit=1 << 20):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out, self.buf = self.buf[:i + len(marker)], self.buf[i + len(marker):]
                return out
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (marker, limit))
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_close(self):
        while True:
            try:
                self._fill()
            except Closed:
                out, self.buf = self.buf, b""
                return out

    def read_head(self):
        """Reads one response head; returns (status, reason, headers)."""
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n, v.strip()))
        return int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def read_chunked_body(self, on_chunk=None):
        body = b""
        while True:
            line = self.read_until(b"\r\n")[:-2]
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while self.read_until(b"\r\n") != b"\r\n":
                    pass
                return body
            data = self.read_exact(size)
            if on_chunk:
                on_chunk(data)
            body += data
            if self.read_exact(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    def read_body_stream(self, headers, on_data):
        """Reads a response body of any framing, calling on_data for each piece as it arrives."""
        resp = Response(0, "", headers, b"")
        if "chunked" in ",".join(resp.values("Transfer-Encoding")).lower():
            return self.read_chunked_body(on_chunk=on_data)
        remaining = resp.header("Content-Length")
        remaining = int(remaining) if remaining is not None else None
        body = b""
        while remaining is None or len(body) < remaining:
            if not self.buf:
                try:
                    self._fill()
                except Closed:
                    if remaining is None:
                        return body
                    raise
            take = self.buf if remaining is None else self.buf[:remaining - len(body)]
            self.buf = self.buf[len(take):]
            on_data(take)
            body += take
        return body

    def read_response(self, method="GET", interim=False):
        """Reads one complete response. 1xx responses are skipped unless interim=True."""
        while True:
            status, reason, headers = self.read_head()
            resp = Response(status, reason, headers, b"")
            if 100 <= status < 200 and status != 101:
                if interim:
                    return resp
                continue
            break
        te = ",".join(resp.values("Transfer-Encoding")).lower()
        if method == "HEAD" or status in (101, 204, 304) or (method == "CONNECT" and status // 100 == 2):
            return resp
        if "chunked" in te:
            resp.body = self.read_chunked_body()
        elif resp.header("Content-Length") is not None:
            resp.body = self.read_exact(int(resp.header("Content-Length")))
        else:
            resp.body = self.read_to_close()
        return resp

    def closed_within(self, timeout=3.0):
        """True if the peer closes (EOF or reset) within timeout, with no further bytes."""
        self.sock.settimeout(timeout)
        try:
            self._fill()
        except Closed:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def proxy_socket(proxy_port):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect(proxy_port, authority, extra=b"", sock=None):
    """Sends CONNECT authority (on sock, an already connected socket, else a new one to
    proxy_port); returns (raw socket, Response). The socket is positioned just after the CONNECT
    response head (read byte by byte, so nothing of the tunnel is consumed)."""
    s = sock if sock is not None else proxy_socket(proxy_port)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (authority.encode(), authority.encode(), extra))
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise Closed("proxy closed during CONNECT; got %r" % head)
        head += b
        if len(head) > 65536:
            raise ValueError("CONNECT response head too large")
    c = Conn(s)
    c.buf = head
    status, reason, headers = c.read_head()
    resp = Response(status, reason, headers, b"", stage="connect")
    if status // 100 != 2:
        te = resp.header("Content-Length")
        if te is not None:
            resp.body = c.read_exact(int(te))
        else:
            s.settimeout(2)
            try:
                resp.body = c.read_to_close()
            except socket.timeout:
                resp.body = c.buf
    return s, resp


def client_tls_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tunnel(proxy_port, host, cafile, port=443, sni=None):
    """CONNECT host:port, then TLS with SNI host verified against cafile.
    Returns (Conn, None) or (None, Response) if the proxy refused the CONNECT."""
    s, resp = connect(proxy_port, "%s:%d" % (host, port))
    if resp.status // 100 != 2:
        s.close()
        return None, resp
    ctx = client_tls_context(cafile)
    ts = ctx.wrap_socket(s, server_hostname=sni or host)
    ts.settimeout(TIMEOUT)
    return Conn(ts), None


class RecordTLS:
    """A TLS client over a socket through ssl.SSLObject, for tests that decide how TLS records
    meet TCP segments: send_records puts each message in a TLS record of its own and hands
    them to the kernel in one sendall. Socket-like enough for Conn (sendall, recv, settimeout,
    close)."""

    def __init__(self, sock, cafile, host):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = client_tls_context(cafile).wrap_bio(self.incoming, self.outgoing,
                                                       server_hostname=host)

    def handshake(self, flush=True):
        """Runs the handshake. With flush=False the client's last flight (its Finished) stays
        unsent, so that the next send_records puts application data in the same segment."""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()
        if flush:
            self._flush()

    def send_records(self, messages):
        for m in messages:
            self.obj.write(m)
        self._flush()

    def sendall(self, data):
        self.send_records([data])

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if not self._feed():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        self.sock.close()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _feed(self):
        data = self.sock.recv(65536)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True


def record_tunnel(proxy_port, host, cafile, flush_handshake=True):
    """CONNECT host:443 and a RecordTLS handshake over it; returns (Conn, RecordTLS)."""
    s, resp = connect(proxy_port, "%s:443" % host)
    if resp.status // 100 != 2:
        s.close()
        raise AssertionError("CONNECT refused: %r" % resp)
    s.settimeout(TIMEOUT)
    t = RecordTLS(s, cafile, host)
    t.handshake(flush=flush_handshake)
    return Conn(t), t


def request_bytes(method, target, host, headers=(), body=None):
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % host]
    lines += ["%s: %s" % h for h in headers]
    if body is not None and not any(h[0].lower() in ("content-length", "transfer-encoding")
                                     for h in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def https_request(proxy_port, host, cafile, path="/", method="GET", headers=(), body=None,
                  port=443):
    """One request through a fresh CONNECT tunnel. A refused CONNECT is returned as the
    response (stage "connect"), so a test can assert on the refusal wherever the proxy
    chose to answer it."""
    conn, refused = tunnel(proxy_port, host, cafile, port)
    if refused is not None:
        return refused
    try:
        conn.send(request_bytes(method, path, host if port == 443 else "%s:%d" % (host, port),
                                headers, body))
        resp = conn.read_response(method)
        resp.received = conn.received
        return resp
    finally:
        conn.close()


def http_request(proxy_port, url, host, method="GET", headers=(), body=None):
    """One absolute-form plain-HTTP request to the proxy."""
    c = Conn(proxy_socket(proxy_port))
    try:
        c.send(request_bytes(method, url, host, headers, body))
        resp = c.read_response(method)
        resp.received = c.received
        return resp
    finally:
        c.close()


def wait_for(pred, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
