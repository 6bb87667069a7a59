"""Every bad input gets a 400 (or 422) whose `detail` names the field, 413 for an oversize body;
nothing is half-applied (issue 3 "Validation"; SPEC §2, §4 ttl_seconds, §6 errors)."""
import json
import socket
import time

import pytest

from helpers.control import BOXES, detail, header_rule, injected, ok, proxy_config


def hrule(headers=None, hosts=("api.example.test",), paths=()):
    return header_rule("r", hosts, headers or [("X-Plain", "plaintext", "p")], paths)


def callback(**kw):
    cb = {"match_hosts": ["*.internal.example.test"], "url": "https://auth.example.test/cb",
          "ttl_seconds": 300, "full_request": False,
          "request_headers": [{"name": "X-Shared-Secret", "type": "opaque", "value": "cb-shared"}]}
    cb.update(kw)
    return cb


# (id, proxy_config, text the detail must contain)
BAD_CONFIGS = [
    ("unknown-header-type", proxy_config(hrule([("X-A", "secretish", "v")])), "type"),
    ("workspace-secret-in-callback-request-headers",
     proxy_config(callbacks=[callback(request_headers=[
         {"name": "X-Key", "type": "workspace_secret", "value": "{CB_SECRET}"}])]), "request_headers"),
    ("ttl-59", proxy_config(callbacks=[callback(ttl_seconds=59)]), "ttl_seconds"),
    ("ttl-3601", proxy_config(callbacks=[callback(ttl_seconds=3601)]), "ttl_seconds"),
    ("ttl-0", proxy_config(callbacks=[callback(ttl_seconds=0)]), "ttl_seconds"),
    ("ttl-negative", proxy_config(callbacks=[callback(ttl_seconds=-300)]), "ttl_seconds"),
    ("ttl-string", proxy_config(callbacks=[callback(ttl_seconds="300")]), "ttl_seconds"),
    ("empty-match-hosts-rule", proxy_config(hrule(hosts=[])), "match_hosts"),
    ("empty-match-hosts-callback", proxy_config(callbacks=[callback(match_hosts=[])]), "match_hosts"),
    ("glob-star-inside", proxy_config(hrule(hosts=["api.*.com"])), "match_hosts"),
    ("glob-trailing-star", proxy_config(hrule(hosts=["api.openai.*"])), "match_hosts"),
    ("glob-with-port", proxy_config(hrule(hosts=["api.example.test:443"])), "match_hosts"),
    ("glob-bad-characters", proxy_config(hrule(hosts=["bad host!"])), "match_hosts"),
    ("glob-empty-string", proxy_config(hrule(hosts=[""])), "match_hosts"),
    ("callback-glob", proxy_config(callbacks=[callback(match_hosts=["*.*.example.test"])]), "match_hosts"),
    ("path-without-slash", proxy_config(hrule(paths=["v1/models"])), "match_paths"),
    ("path-with-query", proxy_config(hrule(paths=["/v1/models?x=1"])), "match_paths"),
    ("allow-list-glob", proxy_config(access_control={"allow_list": ["exa*mple.test"]}), "allow_list"),
    ("deny-list-glob", proxy_config(access_control={"deny_list": ["*evil*"]}), "deny_list"),
    ("no-proxy-glob", proxy_config(no_proxy=["local*host"]), "no_proxy"),
    ("match-hosts-not-a-list", proxy_config(hrule(hosts="api.example.test")), "match_hosts"),
    ("rules-not-a-list", {"rules": {"name": "r"}}, "rules"),
    ("header-without-name", {"rules": [{"name": "r", "match_hosts": ["api.example.test"],
                                        "headers": [{"type": "plaintext", "value": "v"}]}]}, "name"),
    ("plaintext-without-value", {"rules": [{"name": "r", "match_hosts": ["api.example.test"],
                                            "headers": [{"name": "X", "type": "plaintext"}]}]}, "value"),
    ("callback-url-not-http", proxy_config(callbacks=[callback(url="ftp://auth.example.test/cb")]), "url"),
    ("provider-credential-plaintext",
     {"rules": [{"name": "aws", "type": "aws", "aws": {
         "access_key_id": {"type": "plaintext", "value": "AKIA"},
         "secret_access_key": {"type": "opaque", "value": "s"}}}]}, "access_key_id"),
    ("unknown-rule-type", {"rules": [{"name": "r", "type": "kerberos", "match_hosts": ["a.example.test"]}]},
     "type"),
]


@pytest.mark.parametrize("pc,needle", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_invalid_proxy_config_is_400_naming_the_field_and_creates_nothing(ctl, pc, needle):
    d = ctl.start()
    api = d.api()
    r = api.create_box({"name": "invalid", "proxy_config": pc})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert needle in detail(r), "detail does not name %r: %r" % (needle, r.text)
    assert api.get_box("invalid").status_code == 404, "a rejected box was stored"


@pytest.mark.parametrize("ttl", [60, 3600])
def test_callback_ttl_bounds_are_accepted(ctl, ttl):
    d = ctl.start()
    body = ok(d.api().create_box({"name": "ttl", "proxy_config": proxy_config(callbacks=[callback(ttl_seconds=ttl)])}))
    assert body["proxy_config"]["callbacks"][0]["ttl_seconds"] == ttl


def test_unknown_secret_key_is_400_naming_it(ctl):
    d = ctl.start()
    api = d.api()
    ok(api.put_secret("KNOWN_KEY", ctl.secret(), configs=[{"host": "api.example.test"}]))
    pc = proxy_config(hrule([("Authorization", "workspace_secret", "Bearer {KNOWN_KEY} {NO_SUCH_KEY_42}")]))
    r = api.create_box({"name": "unknown-key", "proxy_config": pc})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "NO_SUCH_KEY_42" in detail(r)
    assert api.get_box("unknown-key").status_code == 404


def test_legacy_inject_headers_with_an_unknown_key_is_400_naming_it(ctl):
    d = ctl.start()
    r = d.api().create_template({"name": "legacy-bad", "proxy_config": {"rules": [
        {"name": "x", "match_hosts": ["api.example.test"],
         "inject_headers": {"Authorization": "Bearer ${MISSING_LEGACY_KEY}"}}]}})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "MISSING_LEGACY_KEY" in detail(r)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b'"a string"', b'{"name": "x", "proxy_config": ',
                                  b'{"name": "x"}\x00', b'\xff\xfe{"name": "x"}'],
                         ids=["garbage", "empty", "array", "string", "truncated", "trailing-nul", "not-utf8"])
def test_body_that_is_not_a_json_object_is_400(ctl, body):
    d = ctl.start()
    api = d.api()
    r = api.request("POST", api.boxes(), data=body)
    assert r.status_code in (400, 422), (r.status_code, r.text)
    detail(r)
    assert ok(api.list_boxes()) is not None


@pytest.mark.parametrize("field,value", [("name", ""), ("name", 17), ("name", "a/b"), ("name", "x" * 300),
                                         ("proxy_config", "rules"), ("proxy_config", [])])
def test_invalid_box_fields_are_400_naming_the_field(ctl, field, value):
    d = ctl.start()
    api = d.api()
    body = {"name": "fine", "proxy_config": proxy_config()}
    body[field] = value
    r = api.create_box(body)
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert field in detail(r), r.text


def test_plaintext_value_that_looks_sealed_is_refused_or_returned_as_is(ctl):
    """store.h treats strings starting "apseal:" as sealed values; a user's plaintext value must not
    be able to reach that path (it would be a 500 or, worse, unsealed)."""
    d = ctl.start()
    api = d.api()
    v = "apseal:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    r = api.create_box({"name": "looks-sealed", "proxy_config": proxy_config(hrule([("X-P", "plaintext", v)]))})
    assert r.status_code in (200, 201, 400, 422), (r.status_code, r.text)
    if r.status_code // 100 == 2:
        h = ok(api.get_box("looks-sealed"))["proxy_config"]["rules"][0]["headers"][0]
        assert h == {"name": "X-P", "type": "plaintext", "value": v}
    else:
        detail(r)


def raw_post(port, path, key, head_extra, body, chunk=1 << 16):
    """POST a large body over a raw socket; returns (status, body) of the response, reading an
    early response (before the body is sent) when the server answers on Content-Length alone."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: %s\r\n"
                   "Content-Type: application/json\r\n%s\r\n" % (path, key, head_extra)).encode())
        s.settimeout(0.3)
        early = b""
        try:
            early = s.recv(65536)
        except socket.timeout:
            pass
        s.settimeout(10)
        if not early:
            try:
                for i in range(0, len(body), chunk):
                    s.sendall(body[i:i + chunk])
            except (BrokenPipeError, ConnectionResetError):
                pass
        data = early
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            data += b
        assert data.startswith(b"HTTP/1."), "no response to an oversize body: %r" % data[:200]
        return int(data.split(b" ")[1]), data
    finally:
        s.close()


def test_oversize_body_is_413(ctl):
    d = ctl.start()
    api = d.api()
    big = json.dumps({"name": "big", "proxy_config": proxy_config(
        hrule([("X-Big", "plaintext", "x" * (8 << 20))]))}).encode()
    status, raw = raw_post(d.control_port, "/api" + BOXES, d.bootstrap_key(),
                           "Content-Length: %d\r\n" % len(big), big)
    assert status == 413, raw[:500]
    assert api.get_box("big").status_code == 404
    ok(api.list_boxes())  # the daemon still serves


def test_oversize_chunked_body_is_413(ctl):
    d = ctl.start()
    api = d.api()
    piece = b"x" * (1 << 16)
    body = b'{"name": "bigc", "proxy_config": {"rules": [{"name": "r", "match_hosts": ["a.example.test"], ' \
           b'"headers": [{"name": "X", "type": "plaintext", "value": "'
    chunks = [b"%x\r\n%s\r\n" % (len(body), body)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 128
    status, raw = raw_post(d.control_port, "/api" + BOXES, d.bootstrap_key(),
                           "Transfer-Encoding: chunked\r\n", b"".join(chunks) + b"0\r\n\r\n")
    assert status == 413, raw[:500]
    assert api.get_box("bigc").status_code == 404


def test_rejected_patch_changes_nothing(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("CUSTOM_TOKEN", v, configs=[{"host": "api.example.test"}]))
    good = proxy_config(header_rule("r", ["api.example.test"], [("Authorization", "workspace_secret", "Bearer {CUSTOM_TOKEN}")]))
    cred = ctl.credential(ok(api.create_box({"name": "atomic", "idle_ttl_seconds": 600, "proxy_config": good})))
    before = ok(api.get_box("atomic"))
    bad = proxy_config(
        header_rule("r", ["api.example.test"], [("Authorization", "plaintext", "Bearer replaced")]),
        header_rule("broken", ["api.example.test"], [("X-A", "nonsense", "v")]))
    r = api.patch_box("atomic", {"name": "renamed", "idle_ttl_seconds": 1200, "proxy_config": bad})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert api.get_box("renamed").status_code == 404
    after = ok(api.get_box("atomic"))
    for k in ("name", "idle_ttl_seconds", "proxy_config", "id"):
        assert after.get(k) == before.get(k), (k, before.get(k), after.get(k))
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred) == (200, ["Bearer " + v])


def test_invalid_template_is_400_and_not_stored(ctl):
    d = ctl.start()
    api = d.api()
    r = api.create_template({"name": "bad-tpl", "proxy_config": proxy_config(hrule(hosts=[]))})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert "match_hosts" in detail(r)
    assert api.get_template("bad-tpl").status_code == 404
