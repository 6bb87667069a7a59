"""SIGHUP re-reads the config file and swaps the policy atomically (SPEC §8)."""
import threading
import time

import requests

from conftest import header_rule
from helpers import client

THREADS = 8


def policy(value_key):
    return {"rules": [header_rule("api", ["api.example.test"],
                                  [("Authorization", "workspace_secret", "Bearer {%s}" % value_key)])]}


def get(session, d, ca, tag):
    return session.get("https://api.example.test/load", headers={"X-Req": tag},
                       proxies=d.proxies, verify=ca, timeout=10)


def new_session():
    s = requests.Session()
    s.trust_env = False
    return s


def auth_of(origin, tag):
    for r in origin.snapshot():
        if r.values("X-Req") == [tag]:
            return r.values("Authorization")
    return None


def wait_for_value(origin, d, ca, want, timeout=5.0):
    """Polls with fresh requests until one carries want; returns True if it did."""
    deadline = time.monotonic() + timeout
    n = 0
    with new_session() as s:
        while time.monotonic() < deadline:
            n += 1
            tag = "probe-%s-%d-%f" % (want[-6:], n, time.monotonic())
            r = get(s, d, ca, tag)
            if r.status_code == 200 and auth_of(origin, tag) == [want]:
                return True
            time.sleep(0.05)
    return False


def test_sighup_swaps_the_credential_under_load_without_failing_requests(stack):
    origin = stack.tls_origin("api.example.test")
    v1, v2 = stack.secret("v1"), stack.secret("v2")
    cfg = {1: stack.config(policy("KEY"), secrets={"KEY": v1}),
           2: stack.config(policy("KEY"), secrets={"KEY": v2})}
    d = stack.start(config=cfg[1], workers=4)
    ca = stack.ca

    stop = threading.Event()
    settled = threading.Event()
    failures, tags, after = [], [], []
    lock = threading.Lock()

    def one(session, tag, record):
        try:
            r = get(session, d, ca, tag)
            if r.status_code != 200:
                with lock:
                    failures.append((tag, r.status_code, r.text[:200]))
        except requests.RequestException as e:
            with lock:
                failures.append((tag, "exception", repr(e)))
        with lock:
            record.append(tag)

    def worker(i):
        with new_session() as s:  # one keep-alive tunnel per thread, kept across the reloads
            n = 0
            while not stop.is_set():
                n += 1
                one(s, "t%d-%d" % (i, n), tags)
            settled.wait(15)
            for k in range(5):
                one(s, "t%d-after-%d" % (i, k), after)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    for version in (2, 1, 2):
        d.reload(cfg[version])
        time.sleep(0.3)
    stop.set()
    try:
        v2_arrived = wait_for_value(origin, d, ca, "Bearer " + v2)
        time.sleep(0.3)  # let every worker thread pick up the last swap
    finally:
        settled.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "load threads hung"
    assert v2_arrived, "v2 never arrived after the last SIGHUP"

    counts = {}
    for tag in tags:
        v = auth_of(origin, tag)
        counts[repr(v and v[0][:9])] = counts.get(repr(v and v[0][:9]), 0) + 1
    print("load: %d requests during the reloads %r, %d after; %d upstream connections"
          % (len(tags), counts, len(after), origin.accepts))
    assert failures == [], failures[:10]
    assert len(tags) >= THREADS * 3, "too little load to mean anything: %d requests" % len(tags)
    seen = set()
    for tag in tags:
        values = auth_of(origin, tag)
        assert values is not None, "request %s never reached the origin" % tag
        assert values in (["Bearer " + v1], ["Bearer " + v2]), (tag, values)
        seen.add(values[0])
    assert seen == {"Bearer " + v1, "Bearer " + v2}, "the reloads did not take effect under load"
    # After the last reload settled, keep-alive tunnels opened under v1 get v2 as well.
    for tag in after:
        assert auth_of(origin, tag) == ["Bearer " + v2], tag
    assert d.alive()


def test_bad_config_on_sighup_keeps_the_running_policy(stack):
    origin = stack.tls_origin("api.example.test")
    v1, v2 = stack.secret("v1"), stack.secret("v2")
    good = stack.config(policy("KEY"), secrets={"KEY": v1})
    d = stack.start(config=good)
    with new_session() as s:
        assert get(s, d, stack.ca, "before").status_code == 200
        # Valid JSON with a new value but an invalid rule: nothing of it may be applied.
        bad = stack.config(policy("KEY"), secrets={"KEY": v2})
        bad["proxy_config"]["rules"].append({"name": "broken", "match_hosts": 17})
        stderr_before = len(d.stderr_text())
        d.reload(bad)
        assert client.wait_for(lambda: d.config_path in d.stderr_text()[stderr_before:], 5), \
            "no log line naming the rejected file:\n" + d.stderr_text()[stderr_before:]
        r = get(s, d, stack.ca, "after-bad")
        assert r.status_code == 200
        assert auth_of(origin, "after-bad") == ["Bearer " + v1]
        # Truncated JSON likewise.
        d.write_config('{"proxy_config": {"rules": [')
        d.sighup()
        time.sleep(0.5)
        assert get(s, d, stack.ca, "after-truncated").status_code == 200
        assert auth_of(origin, "after-truncated") == ["Bearer " + v1]
    assert d.alive()
    # The daemon still reloads afterwards: the checks above were not vacuous.
    d.reload(stack.config(policy("KEY"), secrets={"KEY": v2}))
    assert wait_for_value(origin, d, stack.ca, "Bearer " + v2)
