"""The audit log (SPEC §7): one JSON object per line with the documented fields, header names
but never values (that no secret appears anywhere in the log is checked after every test), and
its hash chain (src/audit.h): each line carries "seq" and the SHA-256 of the line before as
"prev", `authproxy audit verify` checks it, a restarted daemon continues it, and a second
daemon cannot append to the same file."""
import re
import subprocess
import time

import pytest

from conftest import header_rule
from helpers import client
from helpers.daemon import Daemon, DaemonStartError, sanitizer_env

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


def audit_verify(binary, *paths):
    p = subprocess.run([binary, "audit", "verify"] + list(paths), capture_output=True, text=True,
                       timeout=60, env=sanitizer_env())
    return p.returncode, p.stdout, p.stderr


def plain_requests(d, paths):
    for path in paths:
        r = client.http_request(d.port, "http://plain.example.test" + path, "plain.example.test")
        assert r.status == 200, r.status
    last = paths[-1]
    assert d.wait_audit(lambda r: r.get("path") == last), d.audit_text()


def test_audit_chain_verifies_names_an_edited_line_and_continues_after_a_restart(stack, tmp_path):
    stack.plain_origin("plain.example.test")
    d = stack.start()
    plain_requests(d, ["/r%d" % i for i in range(5)])
    records = d.audit_records()
    n = len(records)
    assert n == 5, d.audit_text()
    assert [r["seq"] for r in records] == list(range(1, n + 1))
    assert all(list(r)[-2:] == ["seq", "prev"] for r in records), records  # appended last

    rc, out, err = audit_verify(stack.binary, d.audit_path)
    assert (rc, out.splitlines()[0]) == (0, "OK: %d lines, chain intact" % n), (out, err)

    # A copy edited with python: one byte of line 3's path.
    lines = d.audit_text().splitlines(keepends=True)
    assert '"path":"/r2"' in lines[2]
    edited = tmp_path / "edited.log"
    edited.write_text("".join(lines[:2] + [lines[2].replace('"/r2"', '"/rX"')] + lines[3:]))
    rc, out, err = audit_verify(stack.binary, str(edited))
    assert rc == 1 and out.startswith("FAIL: line 3: edited"), (rc, out, err)
    # ... and one with line 3 removed.
    removed = tmp_path / "removed.log"
    removed.write_text("".join(lines[:2] + lines[3:]))
    rc, out, err = audit_verify(stack.binary, str(removed))
    assert rc == 1 and out.startswith("FAIL: line 3: removed"), (rc, out, err)

    # The daemon logs the chain head when it stops: the anchor verify prints too.
    assert d.stop() == 0
    rc, out, err = audit_verify(stack.binary, d.audit_path)
    head = out.splitlines()[1].split()[-1]
    m = re.search(r"audit log .* closed at seq (\d+), last line sha256 ([0-9a-f]{64})",
                  d.stderr_text())
    assert m and (int(m.group(1)), m.group(2)) == (n, head), d.stderr_text()[-2000:]

    # Restarted on the same file, the daemon continues the chain.
    d.start()
    plain_requests(d, ["/after%d" % i for i in range(2)])
    records = d.audit_records()
    assert [r["seq"] for r in records] == list(range(1, n + 3)), records
    rc, out, err = audit_verify(stack.binary, d.audit_path)
    assert (rc, out.splitlines()[0]) == (0, "OK: %d lines, chain intact" % (n + 2)), (out, err)


def test_a_second_daemon_on_the_same_audit_log_refuses_to_start(stack, tmp_path):
    stack.plain_origin("plain.example.test")
    d = stack.start()
    plain_requests(d, ["/one"])
    other = Daemon(stack.binary, str(tmp_path / "second"), stack.config(), stack.dns.addr)
    other.audit_path = d.audit_path
    with pytest.raises(DaemonStartError):
        other.start()
    assert other.proc.returncode not in (0, None)
    assert "is locked by another process" in other.stderr_text(), other.stderr_text()[-2000:]
    # The first daemon's log is untouched and still verifies, and it keeps writing.
    plain_requests(d, ["/two"])
    rc, out, err = audit_verify(stack.binary, d.audit_path)
    assert (rc, out.splitlines()[0]) == (0, "OK: 2 lines, chain intact"), (out, err)


def test_audit_verify_usage_and_unreadable_file(stack, tmp_path):
    rc, out, err = audit_verify(stack.binary)
    assert rc == 2 and "usage: authproxy audit verify FILE" in err
    rc, out, err = audit_verify(stack.binary, str(tmp_path / "missing.log"))
    assert rc == 1 and "missing.log" in err
