"""Live apply (issue 3 "Live apply"; SPEC §6 PATCH): while 32 clients hammer the explicit proxy
with one box's credential, PATCHes swap its policy. Every request is served wholly by one
version (the origin sees exactly one consistent pair of injected values), none fails, and every
request that starts after a PATCH returned carries that PATCH's version."""
import threading
import time

import requests

from helpers.control import header_rule, ok, proxy_config

CLIENTS = 32


def policy(version, key):
    return proxy_config(header_rule("live", ["api.example.test"], [
        ("Authorization", "workspace_secret", "Bearer {%s}" % key),
        ("X-Policy", "plaintext", version)]))


def test_patch_under_32_clients_is_atomic_per_request_and_live_once_returned(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start(workers=4)
    api = d.api()
    s1, s2 = ctl.secret("v1"), ctl.secret("v2")
    for k, v in (("LIVE_V1", s1), ("LIVE_V2", s2)):
        ok(api.put_secret(k, v, configs=[{"host": "api.example.test"}]))
    cred = ctl.credential(ok(api.create_box({"name": "hammer", "proxy_config": policy("v1", "LIVE_V1")})))
    expect = {"v1": (["Bearer " + s1], ["v1"]), "v2": (["Bearer " + s2], ["v2"])}

    stop = threading.Event()
    lock = threading.Lock()
    sent = []      # (tag, t_start, t_end)
    failures = []  # (tag, status or exception)

    def client(i):
        with requests.Session() as s:  # keep-alive tunnels that outlive the PATCHes
            s.trust_env = False
            n = 0
            while not stop.is_set():
                n += 1
                tag = "c%d-%d" % (i, n)
                t0 = time.monotonic()
                try:
                    r = s.get("https://api.example.test/load", headers={"X-Req": tag},
                              proxies=cred.proxies(d.port), verify=ctl.ca, timeout=10)
                    status = r.status_code
                except requests.RequestException as e:
                    status = repr(e)
                with lock:
                    sent.append((tag, t0, time.monotonic()))
                    if status != 200:
                        failures.append((tag, status))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # (version, PATCH sent at, PATCH returned at)
    patches = [("v1", 0.0, 0.0)]
    for version in ("v2", "v1", "v2", "v1", "v2"):
        t0 = time.monotonic()
        r = api.patch_box("hammer", {"proxy_config": policy(version, "LIVE_" + version.upper())})
        t1 = time.monotonic()
        ok(r)
        patches.append((version, t0, t1))
        time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "client threads hung"

    latencies = [t1 - t0 for _v, t0, t1 in patches[1:]]  # in order
    print("%d requests, PATCH latencies %s ms" % (len(sent), ["%.1f" % (x * 1000) for x in latencies]))
    assert failures == [], "%d of %d requests failed: %r" % (len(failures), len(sent), failures[:10])
    assert len(sent) >= CLIENTS * 10, "too little load to mean anything: %d requests" % len(sent)

    recs = {}
    for rec in origin.snapshot():
        [tag] = rec.values("X-Req")
        assert tag not in recs, "request %s reached the origin twice" % tag
        recs[tag] = (rec.values("Authorization"), rec.values("X-Policy"))
    seen, stale = set(), []
    for tag, t_start, t_end in sent:
        assert tag in recs, "request %s never reached the origin" % tag
        got = recs[tag]
        version = [v for v, pair in expect.items() if pair == got]
        assert version, "request %s was not served wholly by one policy: %r" % (tag, got)
        seen.add(version[0])
        # Allowed: the version of the last PATCH that returned before the request began, and that
        # of any PATCH under way at some point while the request was (the proxy may have seen the
        # request only after such a PATCH took effect).
        current = [p for p in patches if p[2] <= t_start][-1]
        allowed = {current[0]} | {p[0] for p in patches[1:] if p[1] < t_end and p[2] > t_start}
        if version[0] not in allowed:
            stale.append((tag, version[0], "started %.1f ms after the PATCH to %s returned"
                          % ((t_start - current[2]) * 1000, current[0])))
    assert stale == [], "%d requests started after a PATCH returned but were served by the old " \
                        "policy: %r" % (len(stale), stale[:10])
    assert seen == {"v1", "v2"}
