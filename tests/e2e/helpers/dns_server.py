"""A tiny authoritative-for-everything UDP DNS server on loopback.

It answers NXDOMAIN for every name except those a test registered with
add_a(); those get an A record (and an empty NOERROR answer for other types,
so resolvers asking AAAA in parallel do not turn the A answer into a failure).
It never forwards anything: with it as the daemon's --upstream-dns no query
can leave the machine, and a test can assert DNS failure deterministically.
"""
import socket
import struct
import threading


def _parse_qname(data, off):
    labels = []
    while True:
        n = data[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compression in question")
        labels.append(data[off:off + n].decode("ascii", "replace"))
        off += n
    return ".".join(labels).lower(), off


class DNSServer:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.records = {}
        self.queries = []  # (name, qtype) in arrival order
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def add_a(self, name, ip="127.0.0.1"):
        with self.lock:
            self.records[name.lower().rstrip(".")] = ip

    def remove(self, name):
        with self.lock:
            self.records.pop(name.lower().rstrip("."), None)

    def queried(self, name):
        name = name.lower().rstrip(".")
        with self.lock:
            return [q for q in self.queries if q[0] == name]

    def _answer(self, data):
        if len(data) < 12:
            return None
        qid, flags, qd, _an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
        if flags & 0x8000 or qd != 1:
            return None
        name, off = _parse_qname(data, 12)
        qtype, qclass = struct.unpack("!HH", data[off:off + 4])
        question = data[12:off + 4]
        with self.lock:
            self.queries.append((name, qtype))
            ip = self.records.get(name)
        rd = flags & 0x0100
        if ip is None:
            hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | 3, 1, 0, 0, 0)
            return hdr + question
        if qtype == 1 and qclass == 1:
            hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, 1, 0, 0)
            rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip)
            return hdr + question + rr
        hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080, 1, 0, 0, 0)
        return hdr + question

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                resp = self._answer(data)
            except (ValueError, IndexError, struct.error):
                resp = None
            if resp is not None:
                try:
                    self.sock.sendto(resp, peer)
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()
