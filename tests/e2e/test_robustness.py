"""Connections that end badly or never finish: the daemon enforces its limits, survives clients
and origins that vanish mid-message, and keeps serving (under ASan the teardown check catches
memory errors on these paths)."""
import socket
import struct
import time

import pytest

from conftest import header_rule
from helpers import client


@pytest.fixture
def api(stack):
    origin = stack.tls_origin("api.example.test")
    rule = header_rule("api", ["api.example.test"], [("Authorization", "workspace_secret", "Bearer {K}")])
    d = stack.start({"rules": [rule]}, secrets={"K": stack.secret()},
                    limits={"header_timeout_ms": 1000, "idle_timeout_ms": 1500})
    return origin, d


def abort(conn):
    """Closes with RST, the way a killed client disappears."""
    raw = conn.sock
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def still_serves(stack, d):
    resp = client.https_request(d.port, "api.example.test", stack.ca, "/alive")
    return resp.status == 200 and d.alive()


def test_client_aborting_a_large_download_leaves_the_daemon_serving(stack, api):
    origin, d = api
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("GET", "/big", "api.example.test"))
    conn.read_exact(200000)
    abort(conn)
    assert still_serves(stack, d)


def test_client_aborting_an_event_stream_leaves_the_daemon_serving(stack, api):
    origin, d = api
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("GET", "/sse", "api.example.test"))
    conn.read_until(b"event-1")
    abort(conn)
    time.sleep(0.8)  # the origin writes its remaining events into a dead connection
    assert still_serves(stack, d)


def test_client_aborting_an_upload_never_completes_the_request_upstream(stack, api):
    origin, d = api
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("POST", "/digest", "api.example.test",
                                   headers=[("Content-Length", str(1 << 20))]) + b"x" * 20000)
    time.sleep(0.2)
    abort(conn)
    assert still_serves(stack, d)
    assert [r.path for r in origin.snapshot()] == ["/alive"]


def test_incomplete_request_head_is_timed_out(stack, api):
    """limits.header_timeout_ms: a client that never finishes its head is disconnected
    (slowloris), with or without a 408."""
    origin, d = api
    conn = client.Conn(client.proxy_socket(d.port))
    conn.send(b"GET http://api.example.test/ HTTP/1.1\r\nHost: api.exa")
    conn.sock.settimeout(4)
    t0 = time.monotonic()
    try:
        rest = conn.read_to_close()
    except socket.timeout:
        raise AssertionError("connection still open 4 s after a 1 s header timeout")
    finally:
        conn.close()
    assert time.monotonic() - t0 < 4
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest
    assert origin.bytes_received == 0


def test_idle_keep_alive_tunnel_is_closed_after_the_idle_timeout(stack, api):
    origin, d = api
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("GET", "/", "api.example.test"))
    assert conn.read_response().status == 200
    t0 = time.monotonic()
    assert conn.closed_within(5.0), "idle connection still open 5 s after a 1.5 s idle timeout"
    assert time.monotonic() - t0 > 1.0
    conn.close()


def test_upstream_closing_an_idle_pooled_connection_is_handled(stack, api):
    """The origin closes its keep-alive connection shortly after answering; the next request
    must not be lost on the dead pooled connection."""
    origin, d = api

    def answer_then_close(o, sock, req, keep):
        o._ok(sock, req, True)
        time.sleep(0.05)
        return False
    origin.route("/then-close", answer_then_close)
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("GET", "/then-close", "api.example.test"))
    first = conn.read_response()
    time.sleep(0.3)
    conn.send(client.request_bytes("GET", "/next", "api.example.test"))
    second = conn.read_response()
    conn.close()
    assert (first.status, second.status) == (200, 200), (first, second)
    assert [r.path for r in origin.snapshot()] == ["/then-close", "/next"]


def test_upstream_vanishing_mid_response_does_not_hang_the_client(stack, api):
    origin, d = api

    def truncated(o, sock, req, keep):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 1000)
        return False
    origin.route("/truncated", truncated)
    conn, _ = client.tunnel(d.port, "api.example.test", stack.ca)
    conn.send(client.request_bytes("GET", "/truncated", "api.example.test"))
    # The client must learn that the body is incomplete: the connection closes (or a 502 comes,
    # if the proxy had not started relaying), rather than waiting forever.
    conn.sock.settimeout(5)
    try:
        data = conn.read_to_close()
    except socket.timeout:
        raise AssertionError("client left hanging after the upstream vanished")
    finally:
        conn.close()
    assert data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.1 502"), data[:100]
    assert still_serves(stack, d)


def test_sigterm_with_open_connections_exits_cleanly(stack, api):
    """Shutdown while clients are connected: exit status 0 within 10 s, and (under ASan) every
    connection's memory freed. The teardown's sanitizer check reads the stderr."""
    origin, d = api
    idle, _ = client.tunnel(d.port, "api.example.test", stack.ca)  # keep-alive, idle
    idle.send(client.request_bytes("GET", "/", "api.example.test"))
    assert idle.read_response().status == 200
    half = client.Conn(client.proxy_socket(d.port))  # head not finished
    half.send(b"GET http://api.example.test/ HTTP/1.1\r\n")
    streaming, _ = client.tunnel(d.port, "api.example.test", stack.ca)  # response in flight
    streaming.send(client.request_bytes("GET", "/sse", "api.example.test"))
    streaming.read_until(b"event-1")
    t0 = time.monotonic()
    rc = d.stop(10.0)
    assert rc == 0, "exit status %s after SIGTERM with open connections" % rc
    assert time.monotonic() - t0 < 10
    for c in (idle, half, streaming):
        c.close()


def test_sigterm_just_after_clients_disconnect_exits_cleanly(stack):
    """Connections that are being torn down when SIGTERM arrives must be freed too. A race, so
    it is tried in three daemons with 20 clients each, hanging up just before the signal."""
    stack.tls_origin("api.example.test")
    for _round in range(3):
        d = stack.start()
        conns = []
        for _ in range(20):
            c, refused = client.tunnel(d.port, "api.example.test", stack.ca)
            assert refused is None, refused
            c.send(client.request_bytes("GET", "/", "api.example.test"))
            assert c.read_response().status == 200
            conns.append(c)
        for c in conns:
            c.close()
        rc = d.stop(10.0)
        err = d.stderr_text()
        assert rc == 0, "exit status %s after SIGTERM:\n%s" % (rc, err[-3000:])
        assert "Sanitizer" not in err, err[:3000]
