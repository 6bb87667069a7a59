"""TLS records that arrive together: several in one TCP segment, or application data in the
segment that ends the handshake. The proxy reads TLS ahead (one read takes everything the
socket holds, src/tls_readahead.h), so a record can be in its memory while the socket has
nothing more to report; each case here stalls until the client's timeout if that record is
not read. Both directions: the client's records into the proxy, the origin's out of it."""
import socket

from helpers import client


def corked(conn, writes):
    """Sends each piece with its own sendall (on a TLS socket: its own record) and releases
    them to the peer in one segment."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    for w in writes:
        conn.sendall(w)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def test_pipelined_requests_in_records_of_one_segment_are_all_answered(stack, api):
    origin, d, key = api
    conn, tls = client.record_tunnel(d.port, "api.example.test", stack.ca)
    paths = ["/r1", "/r2", "/r3", "/r4"]
    for _ in range(5):
        tls.send_records([client.request_bytes("GET", p, "api.example.test") for p in paths])
        rs = [conn.read_response() for _ in paths]
        assert [r.status for r in rs] == [200] * len(paths), rs
    conn.close()
    seen = origin.snapshot()
    assert [r.path for r in seen] == paths * 5
    assert all(r.values("Authorization") == ["Bearer " + key] for r in seen)


def test_request_in_the_segment_that_ends_the_handshake_is_answered(stack, api):
    origin, d, key = api
    for i in range(5):
        conn, tls = client.record_tunnel(d.port, "api.example.test", stack.ca,
                                         flush_handshake=False)
        tls.send_records([client.request_bytes("GET", "/first%d" % i, "api.example.test")])
        r = conn.read_response()
        conn.close()
        assert r.status == 200, r
    assert [r.path for r in origin.snapshot()] == ["/first%d" % i for i in range(5)]


def test_request_body_in_records_of_one_segment_arrives_whole(stack, api):
    origin, d, _ = api
    conn, tls = client.record_tunnel(d.port, "api.example.test", stack.ca)
    pieces = [b"a" * 100, b"b" * 100, b"c" * 100]  # the head and three body records, one segment
    body = b"".join(pieces)
    head = client.request_bytes("POST", "/digest", "api.example.test",
                                headers=[("Content-Length", str(len(body)))])
    tls.send_records([head] + pieces)
    r = conn.read_response()
    big = bytes(range(256)) * 200  # 51200 bytes: more records than one read takes
    head = client.request_bytes("POST", "/digest", "api.example.test",
                                headers=[("Content-Length", str(len(big)))])
    tls.send_records([head] + [big[i:i + 16384] for i in range(0, len(big), 16384)])
    r2 = conn.read_response()
    conn.close()
    assert (r.status, r2.status) == (200, 200), (r, r2)
    assert [q.body for q in origin.snapshot()] == [body, big]


def test_response_in_records_of_one_segment_is_relayed_whole(stack, api):
    origin, d, _ = api
    body = b"0123456789abcdef" * 2500  # 40000 bytes

    def split_response(origin_, conn, req, keep):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        corked(conn, [head, body[:7], body[7:20000], body[20000:]])
        return keep

    def head_then_small_body(origin_, conn, req, keep):
        corked(conn, [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"ok\n"])
        return keep

    origin.route("/split", split_response)
    origin.route("/small", head_then_small_body)
    conn = client.tunnel(d.port, "api.example.test", stack.ca)[0]
    for i in range(10):
        conn.send(client.request_bytes("GET", "/split" if i % 2 else "/small", "api.example.test"))
        r = conn.read_response()
        assert r.status == 200, r
        assert r.body == (body if i % 2 else b"ok\n")
    conn.close()
    assert origin.accepts == 1, "the upstream connection was not kept for the next request"
