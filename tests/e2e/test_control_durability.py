"""State at rest (issue 3 "Store", "Encryption at rest"; SPEC §1, §2 opaque): nothing secret in
the state dir in plaintext, everything survives restart and kill -9, and `keys rotate` re-seals
every value under the new key while keeping it readable."""
import json
import os
import sqlite3
import threading
import time

import requests

from helpers.control import (all_files, files_containing, header_rule, injected, keyring_ids, ok,
                             openai_rule, proxy_config, sealed_key_ids, secret_items, secret_name,
                             template_items)


def populated(ctl, d):
    """A workspace with a secret, a box using it plus an opaque and a plaintext header and an
    opaque callback header, and a template with an opaque header. Returns the values."""
    api = d.api()
    v = {"secret": ctl.secret("sk-openai"), "opaque": ctl.secret("opaque"),
         "cb": ctl.secret("cb"), "tpl": ctl.secret("tpl-opaque"), "other": ctl.secret("other")}
    ok(api.put_secret("OPENAI_API_KEY", v["secret"]))
    ok(api.put_secret("OTHER_TOKEN", v["other"], configs=[{"host": "api.example.test"}]))
    pc = proxy_config(
        openai_rule(),
        header_rule("example", ["api.example.test"], [("X-Opaque", "opaque", v["opaque"]),
                                                      ("Authorization", "workspace_secret", "Bearer {OTHER_TOKEN}"),
                                                      ("X-Plain", "plaintext", "plain-value")]),
        callbacks=[{"match_hosts": ["*.internal.example.test"], "url": "https://auth.example.test/cb",
                    "ttl_seconds": 300, "request_headers": [{"name": "X-Shared", "type": "opaque", "value": v["cb"]}]}])
    box = ok(api.create_box({"name": "persist", "proxy_config": pc}))
    ok(api.create_template({"name": "tpl", "proxy_config": proxy_config(
        header_rule("t", ["api.example.test"], [("X-Tpl", "opaque", v["tpl"])]))}))
    return v, ctl.credential(box)


def check_policy(d, ctl, cred, openai_o, example_o, v):
    assert injected(d.port, openai_o, "api.openai.com", ctl.ca, cred) == (200, ["Bearer " + v["secret"]])
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred, "X-Opaque") == (200, [v["opaque"]])
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred) == (200, ["Bearer " + v["other"]])


def test_state_dir_holds_no_plaintext_secret_or_opaque_value(ctl):
    d = ctl.start()
    api = d.api()
    v, _cred = populated(ctl, d)
    newer = ctl.secret("opaque-2")
    pc = ok(api.get_box("persist"))["proxy_config"]
    for h in pc["rules"][1]["headers"]:
        if h["name"] == "X-Opaque":
            h.pop("is_set", None)
            h["value"] = newer
    ok(api.patch_box("persist", {"proxy_config": pc}))
    values = [x.encode() for x in list(v.values()) + [newer]]
    running = files_containing(all_files(d.state_dir), values)
    assert d.db_files(), "no database in %s: %r" % (d.state_dir, os.listdir(d.state_dir))
    assert running == [], "plaintext found at rest while running: %r" % [(p, n[:12]) for p, n in running]
    assert d.stop() == 0
    stopped = files_containing(all_files(d.state_dir), values)
    assert stopped == [], "plaintext found at rest after stop: %r" % [(p, n[:12]) for p, n in stopped]


def test_api_keys_and_proxy_tokens_are_stored_hashed(ctl):
    d = ctl.start()
    api = d.api()
    _v, cred = populated(ctl, d)
    key_b = ctl.api_key(d.create_workspace("hashed-b"))
    needles = [d.bootstrap_key().encode(), key_b.encode(), cred.token.encode()]
    files = [p for p in all_files(d.state_dir) if os.path.basename(p) != "bootstrap.key"]
    assert files_containing(files, needles) == []
    ok(api.list_boxes())


def test_restart_keeps_every_workspace_secret_box_template_key_and_credential(ctl):
    openai_o = ctl.origin("api.openai.com")
    example_o = ctl.origin("api.example.test")
    d = ctl.start()
    api = d.api()
    v, cred = populated(ctl, d)
    key_b = ctl.api_key(d.create_workspace("restart-b"))
    ok(d.api(key_b).create_box({"name": "b-box", "proxy_config": proxy_config()}))
    check_policy(d, ctl, cred, openai_o, example_o, v)
    before = {"box": ok(api.get_box("persist")), "secrets": sorted(secret_name(s) for s in secret_items(ok(api.list_secrets()))),
              "templates": [t["name"] for t in template_items(ok(api.list_templates()))]}

    d.restart()

    box = ok(api.get_box("persist"))
    for k in ("id", "name", "proxy_config", "status"):
        assert box.get(k) == before["box"].get(k), (k, before["box"].get(k), box.get(k))
    assert sorted(secret_name(s) for s in secret_items(ok(api.list_secrets()))) == before["secrets"]
    assert [t["name"] for t in template_items(ok(api.list_templates()))] == before["templates"]
    assert ok(d.api(key_b).get_box("b-box"))["name"] == "b-box"
    check_policy(d, ctl, cred, openai_o, example_o, v)
    # A box made from the template after the restart still gets the template's opaque value.
    cred2 = ctl.credential(ok(api.create_box({"name": "after", "template_name": "tpl"})))
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred2, "X-Tpl") == (200, [v["tpl"]])


def test_kill_9_during_a_burst_of_writes_loses_no_acknowledged_write(ctl):
    origin = ctl.origin("api.example.test")
    d = ctl.start(workers=2)
    key = d.bootstrap_key()
    base = d.api()
    acked_secrets, acked_boxes, errors = [], {}, []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(t):
        s = requests.Session()
        s.trust_env = False
        h = {"x-api-key": key, "Content-Type": "application/json"}
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 2:
                    name = "K_%d_%d" % (t, i)
                    r = s.put(d.control_url + "/api/v1/workspaces/current/secrets/" + name,
                              data=json.dumps({"value": "burst-value-%d-%d" % (t, i)}), headers=h, timeout=5)
                    if r.status_code // 100 == 2:
                        with lock:
                            acked_secrets.append(name)
                else:
                    name = "b-%d-%d" % (t, i)
                    pc = proxy_config(header_rule("r", ["api.example.test"], [("X-Box", "plaintext", name)]))
                    r = s.post(d.control_url + "/api/v2/sandboxes/boxes",
                               data=json.dumps({"name": name, "proxy_config": pc}), headers=h, timeout=5)
                    if r.status_code // 100 == 2:
                        with lock:
                            acked_boxes[name] = r.json()["proxy_token"]
                if r.status_code // 100 != 2:
                    with lock:
                        errors.append((name, r.status_code, r.text[:200]))
            except requests.RequestException:
                return  # the daemon died under us: this write was not acknowledged

    threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(acked_secrets) + len(acked_boxes) < 60:
        time.sleep(0.01)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        secrets_done, boxes_done = list(acked_secrets), dict(acked_boxes)
    print("acknowledged before kill -9: %d secrets, %d boxes" % (len(secrets_done), len(boxes_done)))
    assert errors == [], errors[:5]
    assert len(secrets_done) + len(boxes_done) >= 20, "too few writes before kill -9 to mean anything"

    d.start()
    listed = {secret_name(s) for s in secret_items(ok(base.list_secrets()))}
    lost = [n for n in secrets_done if n not in listed]
    assert lost == [], "%d acknowledged secrets lost after kill -9: %r" % (len(lost), lost[:10])
    lost = [n for n in boxes_done if base.get_box(n).status_code != 200]
    assert lost == [], "%d acknowledged boxes lost after kill -9: %r" % (len(lost), lost[:10])
    from helpers.control import Credential
    for name, token in boxes_done.items():
        assert injected(d.port, origin, "api.example.test", ctl.ca, Credential(name, token), "X-Box") == \
            (200, [name]), name


def rotate(d):
    p = d.cli("keys", "rotate")
    assert p.returncode == 0, "keys rotate failed (%d): %s %s" % (p.returncode, p.stdout.decode(), p.stderr.decode())


def check_after_rotation(ctl, d, cred, openai_o, example_o, v):
    """Everything sealed before the rotation is usable: injected, copied by a PATCH that keeps an
    opaque value, copied from a template into a new box; new writes succeed."""
    api = d.api()
    check_policy(d, ctl, cred, openai_o, example_o, v)
    keep = ok(api.get_box("persist"))["proxy_config"]
    ok(api.patch_box("persist", {"proxy_config": keep}))
    check_policy(d, ctl, cred, openai_o, example_o, v)
    cred2 = ctl.credential(ok(api.create_box({"name": "rotated-tpl-%d" % time.monotonic_ns(),
                                              "template_name": "tpl"})))
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred2, "X-Tpl") == (200, [v["tpl"]])
    ok(api.put_secret("OTHER_TOKEN", v["other"], configs=[{"host": "api.example.test"}]))
    ok(api.put_secret("WRITTEN_AFTER_ROTATION", ctl.secret()))
    return cred2


def test_keys_rotate_with_the_daemon_stopped_keeps_everything_readable(ctl):
    openai_o = ctl.origin("api.openai.com")
    example_o = ctl.origin("api.example.test")
    d = ctl.start()
    v, cred = populated(ctl, d)
    old = keyring_ids(d.state_dir)[0]
    assert d.stop() == 0
    rotate(d)
    assert keyring_ids(d.state_dir)[0] != old, "keys rotate did not make a new key current"
    d.start()
    check_after_rotation(ctl, d, cred, openai_o, example_o, v)


def test_keys_rotate_while_the_daemon_runs_keeps_everything_readable(ctl):
    """store.h: the change counter moves on re-seal, the daemon's cue to reload its keyring;
    the running daemon must keep working without a restart."""
    openai_o = ctl.origin("api.openai.com")
    example_o = ctl.origin("api.example.test")
    d = ctl.start()
    v, cred = populated(ctl, d)
    old = keyring_ids(d.state_dir)[0]
    rotate(d)
    assert keyring_ids(d.state_dir)[0] != old, "keys rotate did not make a new key current"
    cred2 = check_after_rotation(ctl, d, cred, openai_o, example_o, v)
    d.restart()
    check_policy(d, ctl, cred, openai_o, example_o, v)
    assert injected(d.port, example_o, "api.example.test", ctl.ca, cred2, "X-Tpl") == (200, [v["tpl"]])


def db_sealed_ids(db_path):
    """Key ids of every sealed value in any column of any table, and every key_id column value."""
    ids, key_id_cols = [], []
    con = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            cols = [r[1] for r in con.execute('PRAGMA table_info("%s")' % t)]
            for row in con.execute('SELECT * FROM "%s"' % t):
                for c, val in zip(cols, row):
                    if isinstance(val, str):
                        ids += [(t, c, i) for i in sealed_key_ids(val.encode())]
                    elif isinstance(val, bytes):
                        ids += [(t, c, i) for i in sealed_key_ids(val)]
                    if c == "key_id" and val is not None:
                        key_id_cols.append((t, val))
    finally:
        con.close()
    return ids, key_id_cols


def test_keys_rotate_leaves_no_value_sealed_under_the_old_key(ctl):
    d = ctl.start()
    api = d.api()
    populated(ctl, d)
    old = keyring_ids(d.state_dir)[0]
    db = os.path.join(d.state_dir, "authproxy.db")
    assert d.stop() == 0
    ids, _ = db_sealed_ids(db)
    assert ids and all(i == old for _t, _c, i in ids), "sealed values not found under the first key: %r" % ids
    rotate(d)  # with the daemon stopped: see the test above for a running daemon
    new = keyring_ids(d.state_dir)[0]
    assert new != old
    d.start()
    ok(api.put_secret("WRITTEN_AFTER", ctl.secret()))  # sealed under the new key
    assert d.stop() == 0
    ids, key_id_cols = db_sealed_ids(db)
    stale = [x for x in ids if x[2] != new]
    assert ids and stale == [], "rows still sealed under another key than %s: %r" % (new, stale)
    assert all(v == new for _t, v in key_id_cols), key_id_cols
    # Bytes of the database and its WAL, free pages included: an old ciphertext left there is
    # still decryptable by whoever holds the old key.
    raw_files = {p: open(p, "rb").read() for p in d.db_files()}
    for p, data in raw_files.items():
        assert old not in sealed_key_ids(data), "%s still holds values sealed under %s" % (p, old)
        assert bytes.fromhex(old) not in data, "%s still holds the old key id bytes" % p
