"""The audit log (SPEC §7): one JSON object per line with the documented fields, header names
but never values. (That no secret appears anywhere in the log is checked after every test.)"""
import time

from conftest import header_rule
from helpers import client

FIELDS = {"ts", "sandbox", "workspace", "client", "method", "scheme", "host", "port", "path",
          "decision", "decided_by", "injected_headers", "status", "upstream_status", "bytes_in",
          "bytes_out", "duration_ms", "error", "policy_version"}
DECISIONS = {"allowed", "denied", "bypassed", "error"}


def test_every_audit_line_is_json_with_the_documented_fields(stack):
    stack.tls_origin("api.example.test", "np.example.test")
    stack.plain_origin("plain.example.test")
    key, opaque = stack.secret(), stack.secret("opaque")
    rule = header_rule("api-rule", ["api.example.test"],
                       [("Authorization", "workspace_secret", "Bearer {K}"),
                        ("X-Opaque", "opaque", opaque), ("X-Org", "plaintext", "org-1")])
    d = stack.start({"rules": [rule], "no_proxy": ["np.example.test"],
                     "access_control": {"deny_list": ["deny.example.test"]}}, secrets={"K": key})
    assert client.https_request(d.port, "api.example.test", stack.ca, "/v1/audited?q=secretquery").status == 200
    assert client.http_request(d.port, "http://plain.example.test/plain", "plain.example.test").status == 200
    s, refused = client.connect(d.port, "deny.example.test:443")
    s.close()
    assert refused.status == 403
    assert client.https_request(d.port, "nx.example.test", stack.ca, "/nx").status == 502
    s, tunnel = client.connect(d.port, "np.example.test:443")
    s.close()
    assert tunnel.status == 200

    assert d.wait_audit(lambda r: r.get("host") == "np.example.test"), d.audit_text()
    time.sleep(0.2)
    text = d.audit_text()
    assert text.endswith("\n")
    records = d.audit_records()  # raises on a line that is not a JSON object
    for r in records:
        missing = FIELDS - set(r)
        assert not missing, "audit line lacks %s: %r" % (sorted(missing), r)
        assert r["decision"] in DECISIONS, r
        assert isinstance(r["injected_headers"], list), r
        assert all(isinstance(n, str) for n in r["injected_headers"]), r
        for k in ("bytes_in", "bytes_out", "policy_version"):
            assert isinstance(r[k], int) and r[k] >= 0, (k, r)
        for k in ("port", "status", "upstream_status"):  # null when there is none
            assert r[k] is None or (isinstance(r[k], int) and r[k] > 0), (k, r)
        assert isinstance(r["duration_ms"], (int, float)) and r["duration_ms"] >= 0, r

    [api] = [r for r in records if r["host"] == "api.example.test" and r.get("path") == "/v1/audited"]
    assert api["decision"] == "allowed" and api["decided_by"] == "api-rule", api
    assert sorted(api["injected_headers"]) == ["Authorization", "X-Opaque", "X-Org"], api
    assert (api["method"], api["scheme"], api["port"]) == ("GET", "https", 443), api
    assert (api["status"], api["upstream_status"]) == (200, 200), api
    assert api["bytes_out"] > 0
    assert "secretquery" not in api["path"]

    [plain] = [r for r in records if r["host"] == "plain.example.test"]
    assert (plain["decision"], plain["scheme"], plain["injected_headers"]) == ("allowed", "http", []), plain

    [deny] = [r for r in records if r["host"] == "deny.example.test"]
    assert (deny["decision"], deny["decided_by"], deny["status"]) == ("denied", "deny_list", 403), deny

    nx = [r for r in records if r["host"] == "nx.example.test"]
    assert nx and all(r["decision"] == "error" for r in nx), nx
    assert any(r["status"] == 502 and r["error"] for r in nx), nx

    np_ = [r for r in records if r["host"] == "np.example.test"]
    assert [r["decision"] for r in np_] == ["bypassed"], np_


def test_request_refused_inside_a_tunnel_is_audited_with_the_tunnel_host(stack):
    """A malformed request in a CONNECT tunnel is a refusal aimed at a known destination: the
    audit line must say which (host and port of the tunnel, scheme https)."""
    origin = stack.tls_origin("api.example.test")
    d = stack.start()
    conn, refused = client.tunnel(d.port, "api.example.test", stack.ca)
    assert refused is None, refused
    conn.send(b"GET / HTTP/1.1\r\nHost: api.example.test\r\nX-Bad : 1\r\n\r\n")
    assert conn.read_response().status == 400
    conn.close()
    recs = d.wait_audit(lambda r: r.get("status") == 400)
    assert recs, d.audit_text()
    assert (recs[0]["host"], recs[0]["port"], recs[0]["scheme"], recs[0]["decision"]) == \
        ("api.example.test", 443, "https", "denied"), recs[0]
    assert origin.bytes_received == 0
