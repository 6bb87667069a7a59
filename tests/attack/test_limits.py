"""Resource limits per sandbox: one sandbox opening connections or sending requests faster
than its limits gets 429 (limits.max_connections_per_sandbox, requests_per_second_per_sandbox),
while another sandbox's requests are still served, and promptly."""
import os
import socket
import threading
import time

from helpers import client
from helpers.control import ControlDaemon, Credential
from e2e_conftest import SESSION_SECRETS

HOST = "api.example.test"


def start_control(stack, limits):
    cfg = stack.config({}, limits=limits)
    d = ControlDaemon(stack.binary, os.path.join(stack.tmp, "ctl%d" % len(stack.daemons)),
                      stack.dns.addr, cfg)
    stack.daemons.append(d)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    return d


def box(d, name):
    created = d.api().create_box({"name": name, "proxy_config": {"rules": []}})
    assert created.status_code in (200, 201), created.text
    cred = Credential.of(created.json())
    SESSION_SECRETS.add(cred.token)
    return cred


def plain_get(d, cred, path):
    return client.http_request(d.port, "http://%s%s" % (HOST, path), HOST,
                               headers=[("Proxy-Authorization", cred.header())])


def test_connection_limit_gives_429_to_that_sandbox_only(stack):
    origin = stack.plain_origin(HOST)
    d = start_control(stack, {"max_connections_per_sandbox": 5})
    a, b = box(d, "flood"), box(d, "quiet")
    held = []
    # five keep-alive connections, each attributed to box a by one request, then kept open
    for i in range(5):
        c = client.Conn(client.proxy_socket(d.port))
        c.send(client.request_bytes("GET", "http://%s/hold%d" % (HOST, i), HOST,
                                    [("Proxy-Authorization", a.header())]))
        assert c.read_response().status == 200
        held.append(c)
    r = plain_get(d, a, "/sixth")
    assert r.status == 429 and r.header("Retry-After") == "1", r
    assert plain_get(d, b, "/other").status == 200, "another sandbox is not affected"
    held.pop().close()
    assert client.wait_for(lambda: plain_get(d, a, "/again").status == 200)
    for c in held:
        c.close()
    assert "/sixth" not in [q.path for q in origin.snapshot()]


def test_request_rate_limit_gives_429_and_others_stay_fast(stack):
    stack.plain_origin(HOST)
    d = start_control(stack, {"requests_per_second_per_sandbox": 20,
                              "request_burst_per_sandbox": 20})
    a, b = box(d, "noisy"), box(d, "calm")
    statuses = []
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            statuses.append(plain_get(d, a, "/flood").status)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        latencies = []
        for _ in range(20):
            t0 = time.monotonic()
            assert plain_get(d, b, "/calm").status == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert 429 in statuses and 200 in statuses
    ok = statuses.count(200)
    assert ok <= 20 + 20 * 3, "about burst + rate x seconds admitted, got %d" % ok
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.2, latencies
