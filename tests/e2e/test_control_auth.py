"""Authentication and isolation (SPEC §1, §6; issue 3 "Workspaces and API keys", "Explicit-proxy
identity", "Operations", "The control API listens only where sandboxes cannot reach it")."""
import os
import re
import socket
import stat

import pytest

from helpers import client
from helpers.control import (BOXES, SECRETS, TEMPLATES, box_items, detail, injected,
                             ok, openai_rule, proxy_config, secret_items, secret_name,
                             template_items, via_proxy)

ENDPOINTS = [("GET", "/api" + BOXES), ("GET", BOXES), ("POST", "/api" + BOXES),
             ("GET", BOXES + "/x"), ("PATCH", BOXES + "/x"), ("DELETE", BOXES + "/x"),
             ("GET", "/api" + TEMPLATES + "/x"), ("POST", TEMPLATES), ("DELETE", TEMPLATES + "/x"),
             ("GET", SECRETS), ("PUT", SECRETS + "/K"), ("DELETE", SECRETS + "/K"),
             ("GET", "/metrics")]


def test_bootstrap_key_is_written_0600_at_first_start_and_kept_across_restarts(ctl):
    d = ctl.start()
    st = os.stat(d.bootstrap_key_path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    key = d.bootstrap_key()
    assert key and not re.search(r"\s", key)
    d.restart()
    assert d.bootstrap_key() == key
    ok(d.api(key).list_boxes())


@pytest.mark.parametrize("method,path", ENDPOINTS, ids=["%s %s" % e for e in ENDPOINTS])
def test_missing_api_key_is_401(ctl, method, path):
    d = ctl.start()
    r = d.api().request(method, path, body={} if method in ("POST", "PUT", "PATCH") else None, key=False)
    assert r.status_code == 401, (r.status_code, r.text)
    detail(r)


@pytest.mark.parametrize("method,path", ENDPOINTS, ids=["%s %s" % e for e in ENDPOINTS])
def test_wrong_api_key_is_401(ctl, method, path):
    d = ctl.start()
    key = d.bootstrap_key()
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    r = d.api().request(method, path, body={} if method in ("POST", "PUT", "PATCH") else None, key=wrong)
    assert r.status_code == 401, (r.status_code, r.text)
    detail(r)


def test_healthz_needs_no_key(ctl):
    d = ctl.start()
    r = d.api().healthz()
    assert r.status_code == 200, (r.status_code, r.text)


def test_metrics_are_prometheus_text_with_injections_by_rule(ctl):
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    cred = ctl.credential(ok(api.create_box({"name": "m", "proxy_config": proxy_config(openai_rule("metered-rule"))})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
    r = api.metrics()
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                        r'[-+]?([0-9.eE+-]+|NaN|Inf)( [0-9]+)?$')
    lines = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
    bad = [ln for ln in lines if not sample.match(ln)]
    assert lines and not bad, "not Prometheus text exposition: %r" % bad[:5]
    assert any('"metered-rule"' in ln and not ln.endswith(" 0") for ln in lines), \
        "no non-zero sample labelled with the rule that injected:\n" + r.text[:3000]
    assert v not in r.text


def test_workspace_create_prints_a_key_for_a_new_empty_workspace(ctl):
    d = ctl.start()
    ok(d.api().create_box({"name": "in-default", "proxy_config": proxy_config()}))
    key_b = ctl.api_key(d.create_workspace("team-b"))
    assert key_b != d.bootstrap_key()
    assert box_items(ok(d.api(key_b).list_boxes())) == []


@pytest.fixture
def two_workspaces(ctl):
    """Workspace A (default) with a box, a template and a secret; workspace B's API."""
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    a = d.api()
    va = ctl.secret("a")
    ok(a.put_secret("OPENAI_API_KEY", va))
    box = ok(a.create_box({"name": "a-box", "proxy_config": proxy_config(openai_rule())}))
    ok(a.create_template({"name": "a-tpl", "proxy_config": proxy_config(openai_rule())}))
    b = d.api(ctl.api_key(d.create_workspace("workspace-b")))
    return d, origin, a, b, va, ctl.credential(box)


def test_another_workspaces_box_is_404(two_workspaces):
    d, origin, a, b, va, cred = two_workspaces
    for r in (b.get_box("a-box"), b.patch_box("a-box", {"proxy_config": proxy_config()}),
              b.delete_box("a-box"), b.request("GET", b.boxes("a-box") + "/status")):
        assert r.status_code == 404, (r.request.method, r.status_code, r.text)
        detail(r)
    assert box_items(ok(b.list_boxes())) == []
    assert ok(a.get_box("a-box"))["proxy_config"]["rules"][0]["name"] == "openai"


def test_another_workspaces_template_is_404(two_workspaces):
    d, origin, a, b, va, cred = two_workspaces
    for r in (b.get_template("a-tpl"), b.delete_template("a-tpl")):
        assert r.status_code == 404, (r.request.method, r.status_code, r.text)
    assert template_items(ok(b.list_templates())) == []
    r = b.create_box({"name": "from-a", "template_name": "a-tpl"})
    assert r.status_code in (400, 404), (r.status_code, r.text)
    ok(a.get_template("a-tpl"))


def test_another_workspaces_secret_is_404_and_unusable(two_workspaces):
    d, origin, a, b, va, cred = two_workspaces
    r = b.delete_secret("OPENAI_API_KEY")
    assert r.status_code == 404, (r.status_code, r.text)
    assert secret_items(ok(b.list_secrets())) == []
    # B's config referencing the name resolves in B, where it does not exist.
    r = b.create_box({"name": "b-box", "proxy_config": proxy_config(openai_rule())})
    assert r.status_code == 400 and "OPENAI_API_KEY" in detail(r), (r.status_code, r.text)
    assert [secret_name(i) for i in secret_items(ok(a.list_secrets()))] == ["OPENAI_API_KEY"]


def test_another_workspace_writing_the_same_names_touches_nothing_of_a(ctl, two_workspaces):
    d, origin, a, b, va, cred = two_workspaces
    vb = ctl.secret("b")
    ok(b.put_secret("OPENAI_API_KEY", vb))
    cred_b = ctl.credential(ok(b.create_box({"name": "a-box", "proxy_config": proxy_config(openai_rule())})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + va])
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred_b) == (200, ["Bearer " + vb])


def test_another_workspaces_proxy_token_cannot_use_a_box(ctl, two_workspaces):
    """B's token presented with the name of A's box never gets A's policy (A's secret)."""
    d, origin, a, b, va, cred = two_workspaces
    cred_b = ctl.credential(ok(b.create_box({"name": "b-box", "proxy_config": proxy_config()})))
    from helpers.control import Credential
    status, got = injected(d.port, origin, "api.openai.com", ctl.ca, Credential("a-box", cred_b.token))
    assert got in (None, []), (status, got)
    status, got = injected(d.port, origin, "api.openai.com", ctl.ca, cred_b)
    assert status == 200 and got == [], got
    assert all(("Bearer " + va) not in rec.values("Authorization") for rec in origin.snapshot())


def test_proxy_without_a_credential_is_407_when_no_config_is_given(ctl):
    d = ctl.start(with_config=False)
    api = d.api()
    ok(api.create_box({"name": "exists", "proxy_config": proxy_config()}))
    r = via_proxy(d.port, "api.openai.com", ctl.ca, "/")
    assert r.status == 407 and r.stage == "connect", r
    assert any(n.lower() == "proxy-authenticate" and v.lower().startswith("basic")
               for n, v in r.headers), r.headers
    r = client.http_request(d.port, "http://plain.example.test/x", "plain.example.test")
    assert r.status == 407, r
    r = via_proxy(d.port, "api.openai.com", ctl.ca, "/", proxy_auth="Basic " + "ZXhpc3RzOm5vcGU=")
    assert r.status == 407, r  # exists:nope


def test_a_proxy_credential_in_another_scheme_is_407_even_with_a_config(ctl):
    """A Proxy-Authorization that is not Basic is an unknown sandbox credential: 407, never the
    config file's anonymous policy (fail closed); a Basic user:pass that is not a sandbox
    credential (a client's own proxy login) is anonymous and gets that policy."""
    d = ctl.start()
    r = via_proxy(d.port, "api.openai.com", ctl.ca, "/", proxy_auth="Bearer abc")
    assert r.status == 407 and r.stage == "connect", r
    r = client.http_request(d.port, "http://plain.example.test/x", "plain.example.test",
                            headers=[("Proxy-Authorization", "Negotiate YWJj")])
    assert r.status == 407, r
    r = via_proxy(d.port, "api.openai.com", ctl.ca, "/", proxy_auth="Basic dXNlcjpwYXNz")  # user:pass
    assert r.status != 407, r


def test_proxy_refuses_plain_http_to_the_control_api(ctl):
    d = ctl.start()
    api = d.api()
    cred = ctl.credential(ok(api.create_box({"name": "sbx", "proxy_config": proxy_config()})))
    target = "127.0.0.1:%d" % d.control_port
    key = d.bootstrap_key()
    for extra in ([("Proxy-Authorization", cred.header())], []):  # the box's policy / the file's
        r = client.http_request(d.port, "http://%s%s" % (target, BOXES), target,
                                headers=extra + [("x-api-key", key)])
        assert r.status == 403, r
        assert b"sandboxes" not in r.body and b"sbx" not in r.body
    assert "api: GET %s" % BOXES not in d.stderr_text(), "the control API served a proxied request"


def tunnel_to_control(d, cred):
    target = "127.0.0.1:%d" % d.control_port
    extra = b"Proxy-Authorization: %s\r\n" % cred.header().encode() if cred else b""
    return client.connect(d.port, target, extra)


def test_connect_to_the_control_api_is_refused_with_403(ctl):
    """SPEC §3: on the explicit port a refused CONNECT is answered 403 (the destination alone
    decides here, so there is nothing to wait for)."""
    d = ctl.start()
    cred = ctl.credential(ok(d.api().create_box({"name": "sbx", "proxy_config": proxy_config()})))
    for c in (cred, None):
        s, resp = tunnel_to_control(d, c)
        s.close()
        assert resp.status == 403, resp


def test_nothing_sent_through_a_tunnel_reaches_the_control_api(ctl):
    d = ctl.start()
    cred = ctl.credential(ok(d.api().create_box({"name": "sbx", "proxy_config": proxy_config()})))
    s, resp = tunnel_to_control(d, cred)
    try:
        if resp.status // 100 != 2:
            return  # refused at CONNECT: nothing can be sent
        s.settimeout(5)
        s.sendall(b"GET /api%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nx-api-key: %s\r\nConnection: close\r\n\r\n"
                  % (BOXES.encode(), d.control_port, d.bootstrap_key().encode()))
        data = b""
        while True:
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            data += b
    finally:
        s.close()
    assert b"sbx" not in data and not data.startswith(b"HTTP/1.1 200"), data[:300]
    assert "api: GET /api%s" % BOXES not in d.stderr_text(), "the control API served a tunnelled request"
