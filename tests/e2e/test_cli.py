"""The command-line tools beside `serve`: version, config check, ca cert (SPEC §8)."""
import json
import os
import stat
import subprocess

from cryptography import x509

from helpers.daemon import free_port, sanitizer_env


def run(binary, *args, timeout=20):
    return subprocess.run([binary] + list(args), capture_output=True, timeout=timeout,
                          env=sanitizer_env(), text=True)


def test_version_names_the_libraries_it_runs_on(authproxy_bin):
    p = run(authproxy_bin, "version")
    assert p.returncode == 0, p.stderr
    out = p.stdout.lower()
    for lib in ("openssl", "libevent", "jansson"):
        assert lib in out, "version output does not mention %s: %r" % (lib, p.stdout)


def test_config_check_accepts_a_valid_file(authproxy_bin, tmp_path, pki):
    cfg = {
        "secrets": {"TEST_KEY": "sk-config-check-good",
                    "BOUND_KEY": {"value": "sk-bound", "configs": [{"host": "api.example.test"}]}},
        "proxy_config": {
            "rules": [{"name": "api", "enabled": True, "match_hosts": ["api.example.test"],
                       "match_paths": ["/v1/*"],
                       "headers": [{"name": "Authorization", "type": "workspace_secret",
                                    "value": "Bearer {TEST_KEY}"},
                                   {"name": "X-Bound", "type": "workspace_secret",
                                    "value": "{BOUND_KEY}"},
                                   {"name": "X-Org", "type": "plaintext", "value": "org-1"}]}],
            "callbacks": [], "no_proxy": ["np.example.test"],
            "access_control": {"allow_list": ["*.example.test"], "deny_list": ["deny.example.test"]},
        },
        "dns_remap": {"api.example.test": "127.0.0.1:9443"},
        "upstream_ca_file": pki.root_path,
        "limits": {"max_header_bytes": 16384, "header_timeout_ms": 5000, "idle_timeout_ms": 60000,
                   "connect_timeout_ms": 2000},
    }
    path = tmp_path / "good.json"
    path.write_text(json.dumps(cfg))
    p = run(authproxy_bin, "config", "check", str(path))
    assert p.returncode == 0, "stdout=%r stderr=%r" % (p.stdout, p.stderr)


def test_config_check_reports_every_error_with_file_and_json_path(authproxy_bin, tmp_path):
    cfg = {
        "secrets": {},
        "proxy_config": {
            "rules": [{"name": "api", "match_hosts": "api.example.test",  # not an array
                       "headers": [{"name": "Authorization", "type": "workspace_secret",
                                    "value": "Bearer {NO_SUCH_KEY}"}]}],
        },
        "dns_remap": {"api.example.test": 42},  # not an address string
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    p = run(authproxy_bin, "config", "check", str(path))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    lines = [l for l in out.splitlines() if str(path) in l]
    assert len(lines) >= 2, "expected one line per error, each naming the file:\n" + out
    assert "match_hosts" in out, out
    assert "dns_remap" in out, out


def test_config_check_rejects_invalid_json(authproxy_bin, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"proxy_config": {"rules": [}')
    p = run(authproxy_bin, "config", "check", str(path))
    assert p.returncode == 1
    assert str(path) in p.stdout + p.stderr


def test_ca_cert_prints_a_ca_certificate_and_keeps_the_key_private(stack):
    d = stack.start()
    p = run(stack.binary, "ca", "cert", "--state-dir", d.state_dir)
    assert p.returncode == 0, p.stderr
    cert = x509.load_pem_x509_certificate(p.stdout.encode())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    key_path = os.path.join(d.state_dir, "ca.key")
    assert os.path.exists(key_path), os.listdir(d.state_dir)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    # Stable across calls: sandboxes keep trusting the same CA.
    assert run(stack.binary, "ca", "cert", "--state-dir", d.state_dir).stdout == p.stdout


def test_serve_refuses_to_start_with_an_invalid_config(authproxy_bin, tmp_path, dns):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"proxy_config": {"rules": [{"name": "x", "match_hosts": 5}]}}))
    port = free_port()
    p = subprocess.run([authproxy_bin, "serve", "--config", str(path), "--state-dir",
                        str(tmp_path / "state"), "--listen-proxy", "127.0.0.1:%d" % port,
                        "--audit-log", str(tmp_path / "audit.jsonl"), "--upstream-dns", dns.addr],
                       capture_output=True, text=True, timeout=20, env=sanitizer_env())
    assert p.returncode != 0
    assert str(path) in p.stderr and "match_hosts" in p.stderr, p.stderr


def _check(binary, tmp_path, cfg, name="cfg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    p = run(binary, "config", "check", str(path))
    return p.returncode, p.stdout + p.stderr


def _rule(hosts, template):
    return {"name": "r", "match_hosts": hosts,
            "headers": [{"name": "Authorization", "type": "workspace_secret", "value": template}]}


def test_config_check_names_an_unknown_secret(authproxy_bin, tmp_path):
    rc, out = _check(authproxy_bin, tmp_path, {"proxy_config": {"rules": [
        _rule(["api.example.test"], "Bearer {NO_SUCH_KEY}")]}})
    assert rc == 1 and "NO_SUCH_KEY" in out, out


def test_secret_bound_to_hosts_cannot_be_sent_elsewhere(authproxy_bin, tmp_path):
    """SPEC §2: a secret bound to hosts may only be used by a rule whose every match_hosts
    pattern lies within them."""
    bound = {"value": "sk-bound-e2e", "configs": [{"host": "api.example.test"}]}
    rc, out = _check(authproxy_bin, tmp_path, {"secrets": {"KEY": bound}, "proxy_config": {"rules": [
        _rule(["api.example.test", "evil.example.test"], "Bearer {KEY}")]}})
    assert rc == 1 and "evil.example.test" in out, out
    assert "sk-bound-e2e" not in out
    rc, out = _check(authproxy_bin, tmp_path, {"secrets": {"KEY": bound}, "proxy_config": {"rules": [
        _rule(["api.example.test"], "Bearer {KEY}")]}}, "ok.json")
    assert rc == 0, out


def test_well_known_provider_key_defaults_to_its_provider_host(authproxy_bin, tmp_path):
    rc, out = _check(authproxy_bin, tmp_path, {"secrets": {"OPENAI_API_KEY": "sk-wk-e2e"},
                                               "proxy_config": {"rules": [
                                                   _rule(["api.example.test"], "Bearer {OPENAI_API_KEY}")]}})
    assert rc == 1 and "OPENAI_API_KEY" in out, out
    assert "sk-wk-e2e" not in out
    rc, out = _check(authproxy_bin, tmp_path, {"secrets": {"OPENAI_API_KEY": "sk-wk-e2e"},
                                               "proxy_config": {"rules": [
                                                   _rule(["api.openai.com"], "Bearer {OPENAI_API_KEY}")]}},
                     "ok.json")
    assert rc == 0, out
