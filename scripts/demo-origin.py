#!/usr/bin/env python3
"""A stand-in for an API origin, for `make run`'s demo (not used by the tests).

Serves HTTPS on 127.0.0.1 and answers every request with JSON describing what it received.
Credential-bearing headers are reported as a SHA-256 fingerprint and a length, never in clear,
so the demo shows that a credential arrived without handing it back to the client.
"""
import argparse
import hashlib
import http.server
import json
import ssl

SENSITIVE = {"authorization", "x-api-key", "proxy-authorization", "cookie"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {}
        for name, value in self.headers.items():
            if name.lower() in SENSITIVE:
                digest = hashlib.sha256(value.encode()).hexdigest()[:16]
                value = f"<{len(value)} bytes, sha256 {digest}...>"
            seen[name] = value
        out = json.dumps({"method": self.command, "path": self.path,
                          "received_headers": seen, "body_bytes": len(body)}, indent=2).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out) + 1))
        self.end_headers()
        self.wfile.write(out + b"\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, fmt, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
