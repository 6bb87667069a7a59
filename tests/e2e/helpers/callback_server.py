"""A credential callback endpoint for the e2e suite (SPEC §4): records every call (headers and
the exact body bytes) and answers as the test sets it — headers, a non-2xx status, malformed
JSON, a wrong shape, slowly, or not at all."""
import http.server
import json
import threading
import time


class Call:
    def __init__(self, path, headers, body):
        self.path = path
        self.headers = headers  # dict, lower-case names
        self.body = body        # bytes, exactly as received

    @property
    def json(self):
        return json.loads(self.body)


class CallbackServer:
    """mode: "ok" (answer {"headers": self.headers}), "status" (self.status, JSON body),
    "malformed" (not JSON), "shape" (self.raw as the JSON answer), "hang" (never answer
    within the test), with an optional self.delay before answering."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []
        self.mode = "ok"
        self.headers = {"Authorization": "Bearer from-callback"}
        self.status = 500
        self.raw = None
        self.delay = 0.0
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with server.lock:
                    server.calls.append(Call(self.path, {k.lower(): v for k, v in self.headers.items()},
                                             body))
                    mode, delay = server.mode, server.delay
                if delay:
                    time.sleep(delay)
                if mode == "hang":
                    server._release.wait(30)
                    return
                if mode == "ok":
                    self._answer(200, json.dumps({"headers": server.headers}).encode())
                elif mode == "status":
                    self._answer(server.status, b'{"error": "no"}')
                elif mode == "malformed":
                    self._answer(200, b'{"headers": {"Authorization": "Bearer x"')
                elif mode == "shape":
                    self._answer(200, json.dumps(server.raw).encode())

            def _answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/creds"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def count(self):
        with self.lock:
            return len(self.calls)

    def close(self):
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
