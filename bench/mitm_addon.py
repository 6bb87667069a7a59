"""mitmdump addon for authproxy's benchmarks: the same job authproxy's bench config does.

- remaps the origin's name to a loopback address (like authproxy's dns_remap: the name stays the
  SNI, the certificate name and the Host; only the TCP destination changes, the port is kept);
- injects the Authorization header into every request for that name, replacing what the client
  sent (like an authproxy header rule with a workspace_secret).

Configured by environment: BENCH_ORIGIN_NAME (default origin.test), BENCH_ORIGIN_ADDR (default
127.0.0.1), BENCH_SECRET (default bench-secret).
"""
import os

NAME = os.environ.get("BENCH_ORIGIN_NAME", "origin.test")
ADDR = os.environ.get("BENCH_ORIGIN_ADDR", "127.0.0.1")
VALUE = "Bearer " + os.environ.get("BENCH_SECRET", "bench-secret")


class BenchInject:
    def server_connect(self, data):
        host, port = data.server.address
        if host.lower() == NAME:
            data.server.address = (ADDR, port)

    def request(self, flow):
        req = flow.request
        if req.pretty_host.lower() != NAME:
            return
        req.headers["Authorization"] = VALUE
        if req.scheme == "http" and req.host.lower() == NAME:
            # Plain absolute-form request: point mitmproxy's own target at the address, so its
            # upstream connection is keyed (and reused) by it, and put the name back in Host.
            # Remapping only in server_connect makes mitmproxy see a different server for every
            # request on a keep-alive connection, and it stalls after a few.
            host_header = req.headers.get("Host")
            req.host = ADDR
            if host_header is not None:
                req.headers["Host"] = host_header


addons = [BenchInject()]
