"""Workspace secrets (SPEC §2 workspace_secret, §6 secrets API; issue 3 "Secrets API"): write-only
values, host binding enforced when a config is applied, re-resolution when a secret changes."""
import json

import pytest

from helpers.control import (detail, header_rule, injected, ok, openai_rule, proxy_config,
                             secret_items, secret_name, via_proxy)


def rule_for(hosts, key="OPENAI_API_KEY", name="r"):
    return header_rule(name, hosts, [("Authorization", "workspace_secret", "Bearer {%s}" % key)])


def test_secrets_are_listed_with_hosts_and_times_but_never_values(ctl):
    d = ctl.start()
    api = d.api()
    openai, custom = ctl.secret("openai"), ctl.secret("custom")
    ok(api.put_secret("OPENAI_API_KEY", openai))
    ok(api.put_secret("CUSTOM_TOKEN", custom, configs=[{"host": "*.example.test"}]))
    r = api.list_secrets()
    items = {secret_name(i): i for i in secret_items(ok(r))}
    assert sorted(items) == ["CUSTOM_TOKEN", "OPENAI_API_KEY"]
    assert openai not in r.text and custom not in r.text
    for i in items.values():
        assert "created_at" in i and "updated_at" in i, i
        assert "value" not in i, i
    assert "api.openai.com" in json.dumps(items["OPENAI_API_KEY"]), \
        "the well-known default binding is not listed: %r" % items["OPENAI_API_KEY"]
    assert "*.example.test" in json.dumps(items["CUSTOM_TOKEN"]), items["CUSTOM_TOKEN"]


def test_deleted_secret_is_gone_from_the_list_and_a_second_delete_is_404(ctl):
    d = ctl.start()
    api = d.api()
    ok(api.put_secret("TO_DELETE", ctl.secret()))
    ok(api.delete_secret("TO_DELETE"))
    assert [secret_name(i) for i in secret_items(ok(api.list_secrets()))] == []
    r = api.delete_secret("TO_DELETE")
    assert r.status_code == 404, (r.status_code, r.text)
    detail(r)


@pytest.mark.parametrize("hosts", [["api.example.test"], ["api.openai.com", "api.example.test"],
                                   ["*.openai.com"], ["*"]],
                         ids=["other-host", "one-of-two-outside", "wider-glob", "any-host"])
def test_secret_bound_to_api_openai_com_cannot_be_used_for_another_host(ctl, hosts):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    r = api.create_box({"name": "steal", "proxy_config": proxy_config(rule_for(hosts))})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "OPENAI_API_KEY" in detail(r)
    assert api.get_box("steal").status_code == 404, "a refused box was created"
    assert origin.snapshot() == []


def test_explicit_host_binding_allows_hosts_within_it_and_refuses_others(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("CUSTOM_TOKEN", v, configs=[{"host": "*.example.test"}]))
    r = api.create_box({"name": "bad", "proxy_config": proxy_config(rule_for(["api.openai.com"], "CUSTOM_TOKEN"))})
    assert r.status_code == 400 and "CUSTOM_TOKEN" in detail(r), (r.status_code, r.text)
    cred = ctl.credential(ok(api.create_box(
        {"name": "good", "proxy_config": proxy_config(rule_for(["api.example.test"], "CUSTOM_TOKEN"))})))
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred) == (200, ["Bearer " + v])


def test_patch_pointing_a_bound_secret_at_another_host_is_refused_and_the_old_policy_stays(ctl):
    openai_o = ctl.origin("api.openai.com")
    other_o = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    cred = ctl.credential(ok(api.create_box({"name": "b", "proxy_config": proxy_config(openai_rule())})))
    r = api.patch_box("b", {"proxy_config": proxy_config(rule_for(["api.example.test"]))})
    assert r.status_code == 400 and "OPENAI_API_KEY" in detail(r), (r.status_code, r.text)
    assert injected(d.port, other_o, "api.example.test", ctl.ca, cred) == (200, [])
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
    assert ok(api.get_box("b"))["proxy_config"]["rules"][0]["match_hosts"] == ["api.openai.com"]


def test_rebinding_a_secret_without_its_value_cannot_send_the_stored_value_elsewhere(ctl):
    """SPEC §2: "a stolen control-API key cannot point OPENAI_API_KEY at another host". With
    "omitting value keeps the current one", a PUT of only `configs` must not be a way around it."""
    evil = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    rebind = api.put_secret("OPENAI_API_KEY", configs=[{"host": "api.example.test"}])
    create = api.create_box({"name": "exfil", "proxy_config": proxy_config(rule_for(["api.example.test"]))})
    if create.status_code // 100 == 2:
        cred = ctl.credential(create.json())
        status, got = injected(d.port, evil, "api.example.test", ctl.ca, cred)
        assert got != ["Bearer " + v], (
            "the stored OPENAI_API_KEY value reached another host after a value-less rebind "
            "(PUT configs -> %d %s)" % (rebind.status_code, rebind.text[:300]))
    else:
        assert create.status_code == 400 and "OPENAI_API_KEY" in detail(create), \
            (create.status_code, create.text)
    assert all(("Bearer " + v) not in rec.values("Authorization") for rec in evil.snapshot())


def test_put_without_value_keeps_the_value(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("CUSTOM_TOKEN", v, configs=[{"host": "*.example.test"}]))
    cred = ctl.credential(ok(api.create_box(
        {"name": "k", "proxy_config": proxy_config(rule_for(["api.example.test"], "CUSTOM_TOKEN"))})))
    ok(api.put_secret("CUSTOM_TOKEN", configs=[{"host": "api.example.test"}]))  # narrower: no value needed
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred) == (200, ["Bearer " + v])
    ok(api.request("PUT", "/api/v1/workspaces/current/secrets/CUSTOM_TOKEN", {}))
    assert injected(d.port, origin, "api.example.test", ctl.ca, cred) == (200, ["Bearer " + v])


def test_put_without_value_of_a_new_secret_is_refused(ctl):
    d = ctl.start()
    api = d.api()
    r = api.put_secret("NEVER_SET", configs=[{"host": "api.example.test"}])
    assert r.status_code in (400, 404, 422), (r.status_code, r.text)
    detail(r)
    assert [secret_name(i) for i in secret_items(ok(api.list_secrets()))] == []


def test_changing_a_secret_is_applied_to_boxes_that_use_it_without_reapplying(ctl):
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    api = d.api()
    v1, v2 = ctl.secret("v1"), ctl.secret("v2")
    ok(api.put_secret("OPENAI_API_KEY", v1))
    cred = ctl.credential(ok(api.create_box({"name": "rot", "proxy_config": proxy_config(openai_rule())})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v1])
    ok(api.put_secret("OPENAI_API_KEY", v2))
    # Like a PATCH, the PUT has taken effect for every request that starts after it returned.
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v2])


def test_deleting_a_secret_in_use_is_refused_or_stops_its_injection(ctl):
    """Either outcome is consistent: 409 (the box still needs it: nothing changes) or 2xx (gone:
    the box's requests never carry the deleted value again)."""
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    api = d.api()
    v = ctl.secret()
    ok(api.put_secret("OPENAI_API_KEY", v))
    cred = ctl.credential(ok(api.create_box({"name": "del", "proxy_config": proxy_config(openai_rule())})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
    r = api.delete_secret("OPENAI_API_KEY")
    if r.status_code == 409:
        assert "OPENAI_API_KEY" in detail(r) or "del" in detail(r), r.text
        assert [secret_name(i) for i in secret_items(ok(api.list_secrets()))] == ["OPENAI_API_KEY"]
        assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
        return
    ok(r)
    assert [secret_name(i) for i in secret_items(ok(api.list_secrets()))] == []
    before = len(origin.snapshot())
    r = via_proxy(d.port, "api.openai.com", ctl.ca, "/v1/models", cred)
    after = origin.snapshot()[before:]
    assert all(("Bearer " + v) not in rec.values("Authorization") for rec in after), \
        "the deleted secret was still injected (status %d)" % r.status
