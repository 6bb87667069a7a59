"""Fail closed, always (issue 6): when a part authproxy depends on is broken — the store, the
master key, the CA key, a callback, the config, the resolver — the request is refused (or the
daemon does not start); it is never forwarded without its policy or without its credential.
(Out of memory: every allocation goes through util.h's x* wrappers, which abort the process, so
nothing half-built is ever forwarded — tests/unit/test_oom.c checks that they abort.)"""
import os
import socket
import ssl
import time

import requests

from e2e_conftest import SESSION_SECRETS, header_rule
from helpers import client
from helpers.control import ControlDaemon, Credential
from helpers.daemon import free_port

HOST = "api.example.test"


def control_daemon(stack, name="ctl", config=None):
    d = ControlDaemon(stack.binary, os.path.join(stack.tmp, name), stack.dns.addr,
                      stack.config({}) if config is None else config)
    stack.daemons.append(d)
    return d


def box_with_secret(stack, d):
    api = d.api()
    key = stack.secret("fc")
    assert api.put_secret("TOK", key).status_code in (200, 201)
    created = api.create_box({"name": "fc", "proxy_config": {"rules": [header_rule(
        "r", [HOST], [("Authorization", "workspace_secret", "Bearer {TOK}")])]}})
    assert created.status_code in (200, 201), created.text
    cred = Credential.of(created.json())
    SESSION_SECRETS.add(cred.token)
    return cred, key


def via_box(stack, d, cred):
    with requests.Session() as s:
        s.trust_env = False
        url = "http://%s:%s@127.0.0.1:%d" % (cred.name, cred.token, d.port)
        return s.get("https://%s/x" % HOST, proxies={"https": url}, verify=d.ca_path(),
                     timeout=20)


def test_a_master_key_that_cannot_unseal_the_secrets_refuses_the_box(stack):
    origin = stack.tls_origin(HOST)
    d = control_daemon(stack)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    cred, key = box_with_secret(stack, d)
    assert via_box(stack, d, cred).status_code == 200
    assert d.stop(10) == 0
    with open(os.path.join(d.state_dir, "master.key"), "w") as f:
        f.write(os.urandom(32).hex() + "\n")  # another key: the sealed values cannot be opened
    d.start()
    try:
        r = via_box(stack, d, cred)
        refused = r.status_code == 403 and "cannot be applied" in r.text
    except requests.exceptions.ProxyError as e:  # the CONNECT itself is refused
        refused = "403" in str(e)
    assert refused
    assert len(origin.snapshot()) == 1, "nothing forwarded without its credential"
    assert "cannot be unsealed" in d.stderr_text()


def test_a_corrupt_store_stops_the_start(stack):
    d = control_daemon(stack)
    d.start()
    SESSION_SECRETS.add(d.bootstrap_key())
    assert d.stop(10) == 0
    with open(os.path.join(d.state_dir, "authproxy.db"), "wb") as f:
        f.write(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(os.path.join(d.state_dir, "authproxy.db" + suffix))
        except FileNotFoundError:
            pass
    try:
        d.start()
        started = True
    except AssertionError:
        started = False
    assert not started
    assert d.proc.returncode not in (0, None)
    assert "not a database" in d.stderr_text()
    d.proc = None  # it did not start: nothing for the teardown to stop
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", d.port)) != 0, "nothing listens"


def test_a_lost_ca_key_means_a_new_ca_that_old_clients_refuse(stack):
    """The CA key is the commit point: without it the daemon makes a new CA, and a sandbox
    trusting the old one refuses the new certificates — no request reaches the origin."""
    origin = stack.tls_origin(HOST)
    d = stack.start({"rules": [header_rule("r", [HOST], [("X-A", "plaintext", "1")])]})
    old_ca = open(d.ca_path(), "rb").read()
    assert client.https_request(d.port, HOST, d.ca_path()).status == 200
    assert d.stop(10) == 0
    os.unlink(os.path.join(d.state_dir, "ca.key"))
    d.start()
    d._ca_path = None
    assert open(d.ca_path(), "rb").read() != old_ca
    old = os.path.join(stack.tmp, "old-ca.pem")
    with open(old, "wb") as f:
        f.write(old_ca)
    try:
        client.https_request(d.port, HOST, old)
        verified = True
    except ssl.SSLError:
        verified = False
    assert not verified
    assert len(origin.snapshot()) == 1


def test_an_invalid_config_stops_the_start(stack, tmp_path):
    cfg = stack.config({"rules": [{"name": "bad", "match_hosts": ["*bad*"], "headers": []}]})
    from helpers.daemon import Daemon, DaemonStartError
    daemon = Daemon(stack.binary, str(tmp_path / "bad"), cfg, stack.dns.addr)
    try:
        daemon.start()
        started = True
    except DaemonStartError:
        started = False
    assert not started and daemon.returncode not in (0, None)
    assert "match_hosts" in daemon.stderr_text()


def test_a_dead_resolver_gives_502_and_forwards_nothing(stack):
    """Names not in dns_remap go to --upstream-dns; with nothing answering there the request is
    refused, never sent elsewhere."""
    from helpers.daemon import Daemon
    cfg = stack.config({}, limits={"connect_timeout_ms": 3000})
    dead = "127.0.0.1:%d" % free_port()
    d = Daemon(stack.binary, os.path.join(stack.tmp, "deaddns"), cfg, dead)
    stack.daemons.append(d)
    d.start()
    t0 = time.monotonic()
    r = client.http_request(d.port, "http://unmapped.example.test/x", "unmapped.example.test")
    assert r.status == 502 and b"DNS" in r.body, r
    assert time.monotonic() - t0 < 10


def test_a_callback_that_is_down_gives_502_and_forwards_nothing(stack):
    origin = stack.tls_origin(HOST)
    d = stack.start({"callbacks": [{"match_hosts": [HOST],
                                    "url": "http://127.0.0.1:%d/creds" % free_port(),
                                    "ttl_seconds": 60}]})
    r = client.https_request(d.port, HOST, d.ca_path())
    assert r.status == 502 and r.text.strip() == "callback resolution failed"
    assert origin.snapshot() == []
