"""Templates (SPEC §2 legacy format, §6; issue 3 "Templates"): the legacy inject_headers/${KEY}
form of seed 002 is accepted and stored in the current format; boxes are created from templates."""
import pytest

from helpers.control import (PREFIXES, curl_json_payload, detail, find_headers, header_rule, injected,
                             ok, proxy_config, seed_template_curls, template_items)

TEMPLATE_FIELD = "template_name"


def test_legacy_single_api_template_is_stored_in_the_current_format(ctl):
    d = ctl.start()
    api = d.api()
    ok(api.put_secret("OPENAI_API_KEY", ctl.secret()))
    payload = curl_json_payload(seed_template_curls()[0])
    ok(api.create_template(payload))
    tpl = ok(api.get_template("openai-sandbox"))
    [rule] = tpl["proxy_config"]["rules"]
    assert "inject_headers" not in rule, rule
    assert rule["name"] == "openai-api" and rule["match_hosts"] == ["api.openai.com"]
    assert rule["headers"] == [{"name": "Authorization", "type": "workspace_secret",
                                "value": "Bearer {OPENAI_API_KEY}"}]


def test_legacy_multiple_api_template_converts_references_and_literals(ctl):
    d = ctl.start()
    api = d.api()
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"):
        ok(api.put_secret(k, ctl.secret()))
    ok(api.create_template(curl_json_payload(seed_template_curls()[1])))
    pc = ok(api.get_template("multi-api-sandbox"))["proxy_config"]
    rules = {r["name"]: r for r in pc["rules"]}
    assert sorted(rules) == ["anthropic-api", "github-api", "openai-api"]
    for r in rules.values():
        assert "inject_headers" not in r, r
    assert sorted(rules["anthropic-api"]["headers"], key=lambda h: h["name"]) == [
        {"name": "anthropic-version", "type": "plaintext", "value": "2023-06-01"},
        {"name": "x-api-key", "type": "workspace_secret", "value": "{ANTHROPIC_API_KEY}"}]
    assert rules["github-api"]["match_paths"] == ["/repos/*", "/user"]
    assert rules["github-api"]["headers"] == [
        {"name": "Authorization", "type": "workspace_secret", "value": "Bearer {GITHUB_TOKEN}"}]
    assert pc["no_proxy"] == ["localhost", "127.0.0.1"]


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_template_get_list_delete(ctl, prefix):
    d = ctl.start()
    api = d.api(prefix=prefix)
    for n in ("t-one", "t-two"):
        ok(api.create_template({"name": n, "image": "python:3.12-slim", "proxy_config": proxy_config()}))
    got = ok(api.get_template("t-one"))
    assert got["name"] == "t-one"
    assert sorted(t["name"] for t in template_items(ok(api.list_templates()))) == ["t-one", "t-two"]
    ok(api.delete_template("t-one"))
    assert api.get_template("t-one").status_code == 404
    assert [t["name"] for t in template_items(ok(api.list_templates()))] == ["t-two"]
    r = api.delete_template("t-one")
    assert r.status_code == 404
    detail(r)


def test_template_name_taken_is_409(ctl):
    d = ctl.start()
    api = d.api()
    ok(api.create_template({"name": "same", "proxy_config": proxy_config()}))
    r = api.create_template({"name": "same", "proxy_config": proxy_config()})
    assert r.status_code == 409, (r.status_code, r.text)
    detail(r)


def test_box_from_template_gets_the_templates_policy_with_its_opaque_values(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    o = ctl.secret("tpl-opaque")
    pc = proxy_config(header_rule("r", ["api.example.test"], [("X-Opaque", "opaque", o),
                                                             ("X-Plain", "plaintext", "from-template")]))
    r = api.create_template({"name": "with-opaque", "proxy_config": pc})
    ok(r)
    assert o not in r.text
    got = api.get_template("with-opaque")
    assert o not in got.text
    assert find_headers(ok(got)["proxy_config"], "X-Opaque") == [{"name": "X-Opaque", "type": "opaque", "is_set": True}]
    r = api.create_box({"name": "from-tpl", TEMPLATE_FIELD: "with-opaque"})
    box = ok(r)
    assert o not in r.text
    cred = ctl.credential(box)
    assert find_headers(box["proxy_config"], "X-Plain") == [
        {"name": "X-Plain", "type": "plaintext", "value": "from-template"}]
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred, "X-Opaque") == (200, [o])


def test_box_from_a_missing_template_is_refused(ctl):
    d = ctl.start()
    api = d.api()
    r = api.create_box({"name": "orphan", TEMPLATE_FIELD: "no-such-template"})
    assert r.status_code in (400, 404), (r.status_code, r.text)
    assert "no-such-template" in detail(r)
    assert api.get_box("orphan").status_code == 404


def test_deleting_a_template_keeps_boxes_made_from_it(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    pc = proxy_config(header_rule("r", ["api.example.test"], [("X-Plain", "plaintext", "kept")]))
    ok(api.create_template({"name": "short-lived", "proxy_config": pc}))
    cred = ctl.credential(ok(api.create_box({"name": "survivor", TEMPLATE_FIELD: "short-lived"})))
    ok(api.delete_template("short-lived"))
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred, "X-Plain") == (200, ["kept"])
    ok(api.get_box("survivor"))
