"""The hosted product's official SDK (npm `langsmith`, SandboxClient; version pinned in
tests/e2e/sdk/package.json) works against authproxy with only the endpoint changed (issue 3).

Each test runs tests/e2e/sdk/sandbox_client.mjs for SDK operations (the script asserts what the
SDK returns and prints every HTTP exchange) and checks the effect through the explicit proxy.
When the SDK cannot work against authproxy the test fails with the SDK's error and authproxy's
answers, which is the bug report."""
import json
import os
import subprocess

import pytest

from helpers.control import PREFIXES, find_headers, header_rule, injected, ok, proxy_config


def run_sdk(sdk_dir, d, op, args=None, prefix="/api", key=None):
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("LANGSMITH_") and k != "NODE_OPTIONS"}
    env["AUTHPROXY_SDK_ENDPOINT"] = "%s%s/v2/sandboxes" % (d.control_url, prefix)
    env["AUTHPROXY_SDK_KEY"] = key or d.bootstrap_key()
    p = subprocess.run(["node", "sandbox_client.mjs", op, json.dumps(args or {})], cwd=sdk_dir,
                       capture_output=True, timeout=60, env=env)
    lines = p.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError("sdk %s produced no result (exit %d):\n%s\n%s" % (
            op, p.returncode, p.stdout.decode()[-3000:], p.stderr.decode()[-3000:]))
    if p.returncode != 0 or not out.get("ok"):
        raise AssertionError("SDK %s failed: %s\n%s\nHTTP exchanges:\n%s" % (
            op, (out.get("error") or {}).get("name"), (out.get("error") or {}).get("message"),
            "\n".join("%s %s -> %s %s" % (h.get("method"), h.get("url"), h.get("status"), h.get("body", "")[:1500])
                      for h in out.get("http", []))))
    return out["result"]


def sdk_rules(opaque):
    return proxy_config(
        header_rule("openai", ["api.openai.com"], [("Authorization", "workspace_secret", "Bearer {OPENAI_API_KEY}")]),
        header_rule("example", ["api.example.test"], [("X-Opaque", "opaque", opaque)]))


@pytest.fixture
def sdk_env(ctl, sdk_dir):
    """A daemon with OPENAI_API_KEY set, origins for api.openai.com and api.example.test."""
    openai_o = ctl.origin("api.openai.com")
    example_o = ctl.origin("api.example.test")
    d = ctl.start()
    v = ctl.secret("sk-openai")
    ok(d.api().put_secret("OPENAI_API_KEY", v))
    return d, openai_o, example_o, v


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_sdk_create_sandbox_with_proxy_config_is_applied_by_the_proxy(ctl, sdk_dir, sdk_env, prefix):
    d, openai_o, example_o, v = sdk_env
    o = ctl.secret("opaque")
    created = run_sdk(sdk_dir, d, "create", {"name": "sdk-box", "proxyConfig": sdk_rules(o), "opaque": o}, prefix)
    cred = ctl.credential(created)
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred, "X-Opaque") == (200, [o])


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_sdk_get_and_list_return_the_box_with_opaque_values_masked(ctl, sdk_dir, sdk_env, prefix):
    d, _oo, _eo, _v = sdk_env
    o = ctl.secret("opaque")
    created = run_sdk(sdk_dir, d, "create", {"name": "sdk-read", "proxyConfig": sdk_rules(o), "opaque": o}, prefix)
    ctl.credential(created)
    got = run_sdk(sdk_dir, d, "get", {"name": "sdk-read", "id": created["id"], "opaque": o}, prefix)
    assert find_headers(got["proxy_config"], "X-Opaque") == [{"name": "X-Opaque", "type": "opaque", "is_set": True}]
    ok(d.api().create_box({"name": "made-by-curl", "proxy_config": proxy_config()}))
    names = run_sdk(sdk_dir, d, "list", {"names": ["sdk-read", "made-by-curl"], "opaque": o}, prefix)
    assert sorted(names) == ["made-by-curl", "sdk-read"]


def test_sdk_status_reports_the_boxes_status(ctl, sdk_dir, sdk_env):
    d, _oo, _eo, _v = sdk_env
    ctl.credential(run_sdk(sdk_dir, d, "create", {"name": "sdk-status", "proxyConfig": proxy_config()}))
    st = run_sdk(sdk_dir, d, "status", {"name": "sdk-status"})
    assert st["status"] == ok(d.api().get_box("sdk-status"))["status"]


def test_sdk_wait_for_sandbox_sees_a_created_box_ready(ctl, sdk_dir, sdk_env):
    """The SDK's waitForSandbox polls /status until "ready" (or "failed"); any other status makes
    SDK users time out."""
    d, _oo, _eo, _v = sdk_env
    ctl.credential(run_sdk(sdk_dir, d, "create", {"name": "sdk-ready", "proxyConfig": proxy_config()}))
    assert run_sdk(sdk_dir, d, "wait", {"name": "sdk-ready"})["status"] == "ready"


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_sdk_update_sandbox_proxy_config_takes_effect(ctl, sdk_dir, sdk_env, prefix):
    d, openai_o, example_o, v = sdk_env
    o1, o2 = ctl.secret("o1"), ctl.secret("o2")
    cred = ctl.credential(run_sdk(sdk_dir, d, "create", {"name": "sdk-upd", "proxyConfig": sdk_rules(o1)}, prefix))
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred, "X-Opaque") == (200, [o1])
    run_sdk(sdk_dir, d, "update", {"name": "sdk-upd", "proxyConfig": sdk_rules(o2), "opaque": o2}, prefix)
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred, "X-Opaque") == (200, [o2])
    only_example = proxy_config(header_rule("example", ["api.example.test"], [("X-Opaque", "opaque", o2)]))
    run_sdk(sdk_dir, d, "update", {"name": "sdk-upd", "proxyConfig": only_example}, prefix)
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == (200, [])


def test_sdk_rename_keeps_the_box(ctl, sdk_dir, sdk_env):
    d, _oo, _eo, _v = sdk_env
    created = run_sdk(sdk_dir, d, "create", {"name": "sdk-old", "proxyConfig": proxy_config()})
    ctl.credential(created)
    assert run_sdk(sdk_dir, d, "rename", {"name": "sdk-old", "newName": "sdk-new"})["id"] == created["id"]


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_sdk_delete_sandbox_removes_it_and_its_policy(ctl, sdk_dir, sdk_env, prefix):
    d, openai_o, _eo, v = sdk_env
    cred = ctl.credential(run_sdk(sdk_dir, d, "create", {"name": "sdk-del", "proxyConfig": sdk_rules("x-opaque-del")}, prefix))
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v])
    run_sdk(sdk_dir, d, "delete", {"name": "sdk-del"}, prefix)
    status, got = injected(d.port, openai_o, "api.openai.com", ctl.ca, cred)
    assert got in (None, []), (status, got)  # with --config: the file's empty policy, or 407


def test_sdk_create_sandbox_without_a_name_gets_a_generated_one(ctl, sdk_dir, sdk_env):
    """createSandbox() leaves `name` out unless the caller gives one; the hosted API names it."""
    d, _oo, _eo, _v = sdk_env
    res = run_sdk(sdk_dir, d, "create_unnamed", {"proxyConfig": proxy_config()})
    assert ok(d.api().get_box(res["name"]))["id"] == res["id"]


def test_sdk_surfaces_authproxys_400_detail(ctl, sdk_dir, sdk_env):
    d, _oo, _eo, _v = sdk_env
    pc = proxy_config(header_rule("x", ["api.example.test"], [("Authorization", "workspace_secret", "{SDK_MISSING_KEY}")]))
    err = run_sdk(sdk_dir, d, "create_invalid", {"name": "sdk-bad", "proxyConfig": pc, "includes": "SDK_MISSING_KEY"})
    assert "SDK_MISSING_KEY" in err["message"]
    assert d.api().get_box("sdk-bad").status_code == 404


def test_sdk_wrong_api_key_is_an_authentication_error(ctl, sdk_dir, sdk_env):
    d, _oo, _eo, _v = sdk_env
    run_sdk(sdk_dir, d, "wrong_key")
