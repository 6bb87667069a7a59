"""The seed documents' examples work against authproxy verbatim but for endpoint and key
(issue 3; SPEC §6), under /api/v2/... and /v2/..., and their policy is then what the explicit
proxy applies for the box's credential at a TLS origin.

Sources of the examples:
  * template form: the two curl commands of seed 002 (legacy inject_headers), read from the
    seed file and run with bash exactly as written, LANGSMITH_ENDPOINT/LANGSMITH_API_KEY set;
  * box form: seed 004 describes it but its code blocks were lost when it was captured; its
    "Single API example" in the current format is the curl of issue 3, quoted below, and its
    header object is seed 001's (read from the seed file);
  * PATCH form: seed 004's GitHub example (two opaque rules patched onto a sandbox).
"""
import base64
import json
import subprocess

import pytest

from conftest import SESSION_SECRETS, client_env
from helpers.control import (PREFIXES, curl_json_payload, find_headers, injected, ok, proxy_config,
                             header_rule, run_shell, seed_header_object, seed_template_curls)

# Issue 3, "What a user can do when this is done" (the endpoint is the only thing replaced).
ISSUE_PUT_SECRET = """curl -X PUT  localhost:8081/api/v1/workspaces/current/secrets/OPENAI_API_KEY -H "x-api-key: $KEY" \\
     -H 'Content-Type: application/json' -d '{"value":"sk-..."}'"""
ISSUE_CREATE_BOX = """curl -X POST localhost:8081/v2/sandboxes/boxes -H "x-api-key: $KEY" -H 'Content-Type: application/json' \\
     -d '{"name":"demo","proxy_config":{"rules":[{"name":"openai","match_hosts":["api.openai.com"],
          "headers":[{"name":"Authorization","type":"workspace_secret","value":"Bearer {OPENAI_API_KEY}"}]}]}}'"""

TEMPLATE_FIELD = "template_name"  # box created from a template (SPEC §6 "snapshot / template name")


def endpoint_form(cmd, prefix, control_url):
    """The command with only its endpoint changed: localhost:8081 -> the test daemon, and for
    prefix "" the /api/v2/ path form -> /v2/ (or the reverse)."""
    cmd = cmd.replace("localhost:8081", control_url)
    if prefix == "":
        return cmd.replace("/api/v2/", "/v2/")
    return cmd.replace(control_url + "/v2/", control_url + "/api/v2/")


def run_curl(cmd, d, key, tmp_path, extra_env=None):
    env = {"LANGSMITH_ENDPOINT": d.control_url, "LANGSMITH_API_KEY": key, "KEY": key}
    env.update(extra_env or {})
    rc, status, body, err = run_shell(cmd, env, str(tmp_path))
    assert rc == 0, "curl failed (%d): %s" % (rc, err)
    return int(status), body


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_seed_single_api_template_curl_works_and_a_box_from_it_gets_the_key_injected(ctl, tmp_path,
                                                                                      prefix):
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    key = d.bootstrap_key()
    api = d.api(prefix=prefix)
    openai = ctl.secret("sk-openai")
    ok(api.put_secret("OPENAI_API_KEY", openai))
    single = seed_template_curls()[0]
    payload = curl_json_payload(single)
    assert payload["name"] == "openai-sandbox"

    status, body = run_curl(endpoint_form(single, prefix, d.control_url), d, key, tmp_path)
    assert status in (200, 201), (status, body[:2000])
    created = json.loads(body)
    assert created["name"] == "openai-sandbox"

    box = ok(api.create_box({"name": "from-single", TEMPLATE_FIELD: "openai-sandbox"}))
    cred = ctl.credential(box)
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + openai])


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_seed_multiple_api_template_curl_works_and_a_box_from_it_applies_every_rule(ctl, tmp_path,
                                                                                    prefix):
    openai_o = ctl.origin("api.openai.com")
    anthropic_o = ctl.origin("api.anthropic.com")
    github_o = ctl.origin("api.github.com")
    d = ctl.start()
    key = d.bootstrap_key()
    api = d.api(prefix=prefix)
    vals = {k: ctl.secret(k.lower()) for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN")}
    for k, v in vals.items():
        ok(api.put_secret(k, v))
    multi = seed_template_curls()[1]
    assert curl_json_payload(multi)["name"] == "multi-api-sandbox"

    status, body = run_curl(endpoint_form(multi, prefix, d.control_url), d, key, tmp_path)
    assert status in (200, 201), (status, body[:2000])

    cred = ctl.credential(ok(api.create_box({"name": "from-multi", TEMPLATE_FIELD: "multi-api-sandbox"})))
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == \
        (200, ["Bearer " + vals["OPENAI_API_KEY"]])
    assert injected(d.port, anthropic_o, "api.anthropic.com", ctl.ca, cred, "x-api-key") == \
        (200, [vals["ANTHROPIC_API_KEY"]])
    assert injected(d.port, anthropic_o, "api.anthropic.com", ctl.ca, cred, "anthropic-version") == \
        (200, ["2023-06-01"])
    # match_paths ["/repos/*", "/user"]: only those paths get the GitHub token.
    assert injected(d.port, github_o, "api.github.com", ctl.ca, cred, path="/repos/o/r/issues") == \
        (200, ["Bearer " + vals["GITHUB_TOKEN"]])
    assert injected(d.port, github_o, "api.github.com", ctl.ca, cred, path="/user") == \
        (200, ["Bearer " + vals["GITHUB_TOKEN"]])
    assert injected(d.port, github_o, "api.github.com", ctl.ca, cred, path="/orgs/x") == (200, [])


@pytest.mark.parametrize("prefix", PREFIXES, ids=["api-v2", "v2"])
def test_issue_box_curl_works_and_its_proxy_url_gets_the_secret_injected(ctl, tmp_path, prefix):
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    key = d.bootstrap_key()
    openai = ctl.secret("sk-openai")
    put = endpoint_form(ISSUE_PUT_SECRET, "", d.control_url).replace("sk-...", openai)
    status, body = run_curl(put, d, key, tmp_path)
    assert status in (200, 201, 204), (status, body[:2000])

    status, body = run_curl(endpoint_form(ISSUE_CREATE_BOX, prefix, d.control_url), d, key, tmp_path)
    assert status in (200, 201), (status, body[:2000])
    box = json.loads(body)
    cred = ctl.credential(box)
    assert box["name"] == "demo"
    for field in ("id", "status", "dataplane_url", "proxy_config"):
        assert field in box, "create response lacks %s: %r" % (field, sorted(box))
    assert box["proxy_url"] == "http://demo:%s@127.0.0.1:%d" % (cred.token, d.port)
    assert find_headers(box["proxy_config"], "Authorization") == [
        {"name": "Authorization", "type": "workspace_secret", "value": "Bearer {OPENAI_API_KEY}"}]

    # The proxy_url exactly as returned, used by curl as its proxy.
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "--proxy", box["proxy_url"],
                        "--cacert", ctl.ca, "-H", "X-Req: issue-curl",
                        "https://api.openai.com/v1/models"],
                       capture_output=True, env=client_env(str(tmp_path)), timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"ok from api.openai.com\n"
    [rec] = [r for r in origin.snapshot() if r.values("X-Req") == ["issue-curl"]]
    assert rec.values("Authorization") == ["Bearer " + openai]
    assert openai.encode() not in p.stdout + p.stderr


def test_seed_header_object_is_accepted_verbatim_in_a_box(ctl):
    origin = ctl.origin("api.openai.com")
    d = ctl.start()
    api = d.api()
    openai = ctl.secret("sk-openai")
    ok(api.put_secret("OPENAI_API_KEY", openai))
    header = seed_header_object()
    assert header == {"name": "Authorization", "type": "workspace_secret",
                      "value": "Bearer {OPENAI_API_KEY}"}
    rule = {"name": "openai-api", "match_hosts": ["api.openai.com"], "match_paths": [],
            "headers": [header]}
    cred = ctl.credential(ok(api.create_box({"name": "seed-001", "proxy_config": {"rules": [rule]}})))
    assert injected(d.port, origin, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + openai])


def test_seed_github_example_patch_with_opaque_rules_injects_bearer_and_basic(ctl):
    api_o = ctl.origin("api.github.com")
    git_o = ctl.origin("github.com")
    d = ctl.start()
    api = d.api()
    cred = ctl.credential(ok(api.create_box({"name": "open-swe", "proxy_config": {"rules": []}})))
    token = ctl.secret("ghs")
    basic = base64.b64encode(("x-access-token:%s" % token).encode()).decode()
    SESSION_SECRETS.add(basic)  # the Basic form carries the token too: scan logs for it
    pc = proxy_config(
        header_rule("github-api", ["api.github.com"], [("Authorization", "opaque", "Bearer " + token)]),
        header_rule("github-git", ["github.com", "*.github.com"],
                    [("Authorization", "opaque", "Basic " + basic)]))
    r = api.patch_box("open-swe", {"proxy_config": pc})
    body = ok(r)
    assert token not in r.text and basic not in r.text
    assert find_headers(body["proxy_config"], "Authorization") == [
        {"name": "Authorization", "type": "opaque", "is_set": True}] * 2
    assert injected(d.port, api_o, "api.github.com", ctl.ca, cred, path="/repos/o/r") == \
        (200, ["Bearer " + token])
    assert injected(d.port, git_o, "github.com", ctl.ca, cred, path="/o/r.git/info/refs") == \
        (200, ["Basic " + basic])
