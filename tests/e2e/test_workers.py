"""Worker threads share the load (issue 2 "Concurrency"): connections that arrive together are
spread over the workers instead of all landing on whichever woke first, and a connection handed
from the accepting worker to another is served like any other."""
import os
import signal
import socket
import time

from helpers import client
from helpers.control import injected, ok, openai_rule, proxy_config, worker_connections

N_CONNS = 8


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.05)


def test_a_burst_of_connections_is_spread_over_the_workers_and_each_is_served(ctl):
    origin = ctl.origin("api.openai.com")
    d = ctl.start(workers=2)
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    cred = ctl.credential(ok(api.create_box({"name": "burst", "proxy_config": proxy_config(openai_rule())})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])

    # The check request's connection must be gone first: a worker still counting it would
    # rightly take one fewer of the burst, and the split would look uneven once it closes.
    assert wait_for(lambda: sum(worker_connections(api).values()) == 0), worker_connections(api)

    # With the daemon stopped, the kernel completes every handshake into the listen backlog;
    # on SIGCONT one worker wakes to all of them at once: the worst case for balance.
    socks, conns = [], []
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(N_CONNS):
            socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=client.TIMEOUT))
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    try:
        # Each connection works, whichever worker serves it: CONNECT with the box credential,
        # TLS to the minted certificate, the credential injected at the origin.
        for i, s in enumerate(socks):
            s, resp = client.connect(d.port, "api.openai.com:443", b"Proxy-Authorization: %s\r\n"
                                     % cred.header().encode("latin-1"), sock=s)
            assert resp.status == 200, (i, resp.status, resp.body)
            ts = client.client_tls_context(ctl.ca).wrap_socket(s, server_hostname="api.openai.com")
            ts.settimeout(client.TIMEOUT)
            c = client.Conn(ts)
            tag = "burst-%d-%s" % (i, os.urandom(4).hex())
            c.send(client.request_bytes("GET", "/v1/models", "api.openai.com", [("X-Req", tag)], None))
            r = c.read_response("GET")
            assert r.status == 200, (i, r.status, r.body[:200])
            recs = [rec for rec in origin.snapshot() if rec.values("X-Req") == [tag]]
            assert len(recs) == 1 and recs[0].values("Authorization") == ["Bearer " + v], (i, recs)
            conns.append(c)

        # All held open: the two workers serve about half each. Ties keep a connection where it
        # was accepted, and when both workers accept at once each may decide on the other's
        # count of a moment before, so one may be ahead by two; without the balance it is 8/0.
        per_worker = wait_for(lambda: (lambda g: g if sum(g.values()) == N_CONNS else None)(
            worker_connections(api)))
        assert per_worker, worker_connections(api)
        assert sorted(per_worker) == [0, 1], per_worker
        assert abs(per_worker[0] - per_worker[1]) <= 2, per_worker

        # A second request on every connection still works (the handed-over ones stay put).
        for i, c in enumerate(conns):
            c.send(client.request_bytes("GET", "/v1/models", "api.openai.com", [], None))
            assert c.read_response("GET").status == 200, i
    finally:
        for c in conns:
            c.close()
        for s in socks[len(conns):]:
            s.close()
    # Closing them gives both workers' counts back.
    assert wait_for(lambda: sum(worker_connections(api).values()) == 0), worker_connections(api)
