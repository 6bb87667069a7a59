#!/usr/bin/env python3
"""PATCH-to-effect latency of authproxy's control API, driven by bench/patch_latency.sh.

Given a running daemon (control API + explicit proxy) and an nginx origin whose /check echoes
the X-Policy and Authorization headers it received, this:

1. creates the workspace's secrets and BOXES sandboxes with realistic proxy_configs (six rules:
   header rules with workspace_secret, plaintext and opaque values, an aws rule, a callback,
   no_proxy, access_control);
2. without load: PATCHes box-000 PATCHES times, each time a new X-Policy value (opaque values
   repeated without "value", as the SDKs do: the stored ones are kept), measuring from sending
   the PATCH to reading its 200; after every 200 one request through the proxy with box-000's
   credential must show the new value at the origin (the contract: a request that starts after
   the PATCH returned uses the new policy);
3. the same while bench/patch_load keeps CONNS keep-alive connections busy with box-000's
   credential (the box being PATCHed), and compares the load's throughput inside PATCH windows
   (PATCH sent .. 200 read) with its throughput before and after the PATCH phase.

Prints a summary and one machine-readable "RESULT ..." line per phase. Exit status 1 when any
correctness check failed or the load saw errors, 0 otherwise (latency targets are reported,
not asserted). Loopback only.
"""
import argparse
import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time

SECRETS = {
    "OPENAI_API_KEY": ("sk-bench-openai-0123456789", None),  # well-known: api.openai.com
    "ANTHROPIC_API_KEY": ("sk-ant-bench-0123456789", None),  # api.anthropic.com
    "GITHUB_TOKEN": ("ghp_bench0123456789", None),  # github.com, *.github.com
    "ORIGIN_TOKEN": ("origin-bench-token", ["origin.test"]),
    "INTERNAL_TOKEN": ("internal-bench-token", ["*.internal.example.com"]),
    "AWS_ACCESS_KEY_ID": ("AKIABENCH0123456789", ["*.amazonaws.com"]),
}


def box_config(i, version, with_values=True):
    """box i's proxy_config; version goes into origin.test's X-Policy header. Without values,
    opaque headers are repeated without "value" (a PATCH keeps the stored ones)."""
    def opaque(name, value):
        h = {"name": name, "type": "opaque"}
        if with_values:
            h["value"] = value
        return h

    def opaque_cred(value):
        return {"type": "opaque", "value": value} if with_values else {"type": "opaque"}

    hosts = ["api.openai.com", "api.anthropic.com", "github.com", "*.github.com",
             "*.internal.example.com", "*.amazonaws.com", "*.corp.example.com", "origin.test"]
    return {
        "rules": [
            {"name": "openai", "match_hosts": ["api.openai.com"],
             "headers": [{"name": "Authorization", "type": "workspace_secret",
                          "value": "Bearer {OPENAI_API_KEY}"},
                         {"name": "OpenAI-Organization", "type": "plaintext",
                          "value": "org-%03d" % i}],
             "env_vars": {"OPENAI_API_KEY": "placeholder"}},
            {"name": "anthropic", "match_hosts": ["api.anthropic.com"],
             "headers": [{"name": "x-api-key", "type": "workspace_secret",
                          "value": "{ANTHROPIC_API_KEY}"},
                         {"name": "anthropic-version", "type": "plaintext",
                          "value": "2023-06-01"}]},
            {"name": "github", "match_hosts": ["github.com", "*.github.com"],
             "headers": [{"name": "Authorization", "type": "workspace_secret",
                          "value": "token {GITHUB_TOKEN}"}],
             "env_vars": {"GH_TOKEN": "placeholder"}},
            {"name": "internal", "match_hosts": ["*.internal.example.com"],
             "match_paths": ["/api/*", "/v2/*"],
             "headers": [{"name": "X-Internal-Key", "type": "workspace_secret",
                          "value": "{INTERNAL_TOKEN}"},
                         opaque("X-Internal-Tenant", "tenant-%03d" % i)]},
            {"name": "aws", "type": "aws",
             "aws": {"access_key_id": {"type": "workspace_secret", "value": "{AWS_ACCESS_KEY_ID}"},
                     "secret_access_key": opaque_cred("bench/secret/access/key/%03d" % i)}},
            {"name": "origin", "match_hosts": ["origin.test"], "allow_plaintext": True,
             "headers": [{"name": "Authorization", "type": "workspace_secret",
                          "value": "Bearer {ORIGIN_TOKEN}"},
                         {"name": "X-Policy", "type": "plaintext", "value": version},
                         opaque("X-Origin-Opaque", "opaque-%03d" % i)]},
        ],
        "callbacks": [
            {"match_hosts": ["*.corp.example.com"], "url": "https://auth.example.com/creds",
             "ttl_seconds": 300,
             "request_headers": [opaque("X-Shared-Secret", "cb-secret-%03d" % i)]},
        ],
        "no_proxy": ["localhost", "127.0.0.1"],
        "access_control": {"allow_list": hosts, "deny_list": ["evil.example.com"]},
    }


class KeepAlive:
    """One keep-alive HTTP connection to a loopback port, reopened once when the server closed
    it between requests."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, target, body, headers):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, target, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Api:
    def __init__(self, port, key):
        self.http, self.key = KeepAlive(port), key

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        return self.http.request(method, path, data,
                                 {"x-api-key": self.key, "Content-Type": "application/json"})

    def ok(self, method, path, body=None):
        status, raw = self.call(method, path, body)
        if status // 100 != 2:
            sys.exit("bench: %s %s -> %d %s" % (method, path, status, raw[:300]))
        return json.loads(raw) if raw else None


class Probe:
    """Requests through the explicit proxy with one box's credential on a keep-alive
    connection: what the origin saw (its /check echo)."""

    def __init__(self, proxy_port, origin_host, auth):
        self.http, self.origin_host, self.auth = KeepAlive(proxy_port), origin_host, auth

    def check(self):
        status, raw = self.http.request("GET", "http://%s/check" % self.origin_host, None,
                                        {"Host": self.origin_host,
                                         "Proxy-Authorization": self.auth})
        return status, raw.decode("latin-1").strip()


def cpu_s(pid):
    """CPU time of every thread of pid so far, from schedstat (ns, unlike the tick-sampled
    utime/stime)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that just ended
    return total / 1e9


def ticks(pids):
    """utime + stime clock ticks of pids (all their threads) so far."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return total


def machine_ticks():
    """user + nice + system + steal ticks of the whole machine (as bench/run.sh counts)."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return int(v[1]) + int(v[2]) + int(v[3]) + int(v[8])


class OtherLoad:
    """Cores used by processes outside the benchmark between start() and stop(): the machine is
    shared, and a busy neighbour shows in latency tails."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn

    def start(self):
        self.t0, self.m0, self.o0 = time.monotonic(), machine_ticks(), ticks(self.pids_fn())

    def stop(self):
        dt = time.monotonic() - self.t0
        m, o = machine_ticks() - self.m0, ticks(self.pids_fn()) - self.o0
        return max(0.0, (m - o) / os.sysconf("SC_CLK_TCK") / dt)


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def fsync_probe(directory, n=50):
    """Latencies (ms) of n fdatasync calls after a 16 KiB write in directory: what one durable
    commit costs on this disk now, whatever the daemon does (SQLite syncs its WAL once per
    write, synchronous=FULL)."""
    path = os.path.join(directory, "fsync-probe")
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(n):
            os.pwrite(fd, os.urandom(16384), 0)
            t0 = time.monotonic_ns()
            os.fdatasync(fd)
            lat.append((time.monotonic_ns() - t0) / 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return lat


def pct(xs, p):
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def expected_check(version, origin_token):
    """What /check may answer under the policy with that X-Policy version: the injected
    Authorization as sent, or masked by the proxy's credential scrubbing of responses."""
    auth = "Bearer " + origin_token
    return ("policy=%s auth=%s" % (version, auth), "policy=%s auth=%s" % (version, "*" * len(auth)))


def patch_series(api, probe, n, tag, gap_s, origin_token):
    """n PATCHes of box-000, each checked through the proxy. Returns ([(t0_ns, t1_ns)],
    [latency ms], [failed checks])."""
    windows, lat, bad = [], [], []
    for k in range(n):
        version = "%s-%d" % (tag, k)
        body = {"proxy_config": box_config(0, version, with_values=False)}
        t0 = time.monotonic_ns()
        status, raw = api.call("PATCH", "/v2/sandboxes/boxes/box-000", body)
        t1 = time.monotonic_ns()
        if status != 200:
            bad.append("PATCH %d -> %d %s" % (k, status, raw[:200]))
            continue
        windows.append((t0, t1))
        lat.append((t1 - t0) / 1e6)
        st, text = probe.check()
        want = expected_check(version, origin_token)
        if st != 200 or text not in want:
            bad.append("after PATCH %d returned, the origin saw %d %r, expected %r"
                       % (k, st, text, want))
        time.sleep(gap_s * (0.5 + random.random()))
    return windows, lat, bad


def summarize(label, lat, other, cpu_per_patch=None):
    line = ("RESULT phase=%s patches=%d p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f max_ms=%.2f "
            "other_cores=%.2f"
            % (label, len(lat), pct(lat, 50), pct(lat, 95), pct(lat, 99), max(lat), other))
    if cpu_per_patch is not None:
        line += " daemon_cpu_ms_per_patch=%.2f" % cpu_per_patch
    return line


def read_load(path):
    with open(path) as f:
        head = dict(kv.split("=", 1) for kv in f.readline().split())
        buckets = [int(line.split()[0]) for line in f]
    return int(head["start_ns"]), head, buckets


def load_analysis(path, windows, t_patch_start, t_patch_end, t_stop):
    start_ns, head, ok = read_load(path)

    def ms(t):
        return max(0, min(len(ok), (t - start_ns) // 1000000))

    def rate(a, b):  # completions/s over [a, b) in ns
        i, j = ms(a), ms(b)
        return sum(ok[i:j]) / ((j - i) / 1000.0) if j > i else float("nan")

    warm = start_ns + 1000000000  # the first second: connections and pools warm up
    before = rate(warm, t_patch_start)
    after = rate(t_patch_end + 200000000, t_stop)
    n_before, n_after = ms(t_patch_start) - ms(warm), ms(t_stop) - ms(t_patch_end + 200000000)
    base = (before * n_before + after * n_after) / max(1, n_before + n_after)
    inside = [0, 0]  # completions, ms
    for t0, t1 in windows:
        i, j = ms(t0), max(ms(t0) + 1, ms(t1) + 1)
        inside[0] += sum(ok[i:j])
        inside[1] += j - i
    in_rate = inside[0] / (inside[1] / 1000.0) if inside[1] else float("nan")
    phase = rate(t_patch_start, t_patch_end)
    # The worst 10 ms of the PATCH phase, and of the load-only periods around it (what the
    # machine does anyway: other processes, the load generator's own hiccups).
    def worst10(a, b):
        i0, i1 = ms(a), ms(b)
        return 100.0 * min((sum(ok[i:i + 10]) for i in range(i0, max(i0 + 1, i1 - 10))),
                           default=0)

    worst_phase = worst10(t_patch_start, t_patch_end)
    worst_base = min(worst10(warm, t_patch_start), worst10(t_patch_end + 200000000, t_stop))
    return head, base, in_rate, phase, worst_phase, worst_base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--proxy-port", type=int, required=True)
    ap.add_argument("--origin-host", required=True, help="origin.test:PORT")
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--daemon-pid", type=int, required=True)
    ap.add_argument("--nginx-pid", type=int, required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--gap-ms", type=float, default=20.0)
    a = ap.parse_args()

    with open(a.key_file) as f:
        key = f.read().strip()
    api = Api(a.control_port, key)
    for name, (value, hosts) in SECRETS.items():
        body = {"value": value}
        if hosts is not None:
            body["configs"] = [{"host": h} for h in hosts]
        api.ok("PUT", "/api/v1/workspaces/current/secrets/" + name, body)
    token0 = None
    for i in range(a.boxes):
        created = api.ok("POST", "/v2/sandboxes/boxes",
                         {"name": "box-%03d" % i, "proxy_config": box_config(i, "init")})
        if i == 0:
            token0 = created["proxy_token"]
    auth = "Basic " + base64.b64encode(("box-000:%s" % token0).encode()).decode()
    origin_token = SECRETS["ORIGIN_TOKEN"][0]
    probe = Probe(a.proxy_port, a.origin_host, auth)
    st, text = probe.check()
    if st != 200 or text not in expected_check("init", origin_token):
        sys.exit("bench: the proxy does not apply box-000's policy: %d %r" % (st, text))
    print("bench: %d boxes, %d secrets; box-000 checked at the origin" % (a.boxes, len(SECRETS)),
          file=sys.stderr)

    disk = fsync_probe(a.work)
    # Warm-up (first-use allocations, SQLite page cache), not counted.
    patch_series(api, probe, 10, "warm", a.gap_ms / 1000.0, origin_token)

    lg = None
    other = OtherLoad(lambda: [a.daemon_pid, a.nginx_pid, os.getpid()] + children(a.nginx_pid)
                      + ([lg.pid] if lg else []))
    failures = []
    other.start()
    c0 = cpu_s(a.daemon_pid)
    _w, idle_lat, bad = patch_series(api, probe, a.patches, "idle", a.gap_ms / 1000.0,
                                     origin_token)
    # The probe request after each PATCH costs the daemon too; measured apart below.
    c1 = cpu_s(a.daemon_pid)
    other_idle = other.stop()
    for _ in range(a.patches):
        probe.check()
    c2 = cpu_s(a.daemon_pid)
    cpu_per_patch = max(0.0, (c1 - c0) - (c2 - c1)) * 1000.0 / max(1, len(idle_lat))
    failures += bad
    idle_line = summarize("no_load", idle_lat, other_idle, cpu_per_patch)

    load_out = os.path.join(a.work, "load.txt")
    lg = subprocess.Popen([a.loadgen, "--connect", "127.0.0.1:%d" % a.proxy_port,
                           "--target", "http://%s/" % a.origin_host, "--host", a.origin_host,
                           "--auth", auth, "-c", str(a.conns), "-d", "600", "--out", load_out])
    time.sleep(4.0)
    t_ps = time.monotonic_ns()
    other.start()
    windows, load_lat, bad = patch_series(api, probe, a.patches, "load", a.gap_ms / 1000.0,
                                          origin_token)
    other_load = other.stop()
    t_pe = time.monotonic_ns()
    failures += bad
    time.sleep(3.0)
    t_stop = time.monotonic_ns()
    lg.send_signal(signal.SIGTERM)
    lg.wait(30)
    head, base, in_rate, phase, worst10, worst10_base = load_analysis(load_out, windows, t_ps,
                                                                       t_pe, t_stop)
    load_line = summarize("load", load_lat, other_load) + (
        " conns=%d load_rps_base=%.0f load_rps_in_patch=%.0f load_rps_patch_phase=%.0f "
        "load_rps_worst_10ms=%.0f load_rps_worst_10ms_base=%.0f load_errors=%s "
        "load_error_kinds=%s"
        % (a.conns, base, in_rate, phase, worst10, worst10_base, head["errors"],
           head["error_kinds"]))
    if head["errors"] != "0":
        failures.append("the load saw %s failed requests (%s)" % (head["errors"],
                                                                 head["error_kinds"]))

    print()
    print("PATCH to effect, box-000 of %d boxes, %d PATCHes per phase" % (a.boxes, a.patches))
    print()
    print("| phase | p50 | p95 | p99 | max | daemon CPU per PATCH | other load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, lat, cpu, oth in (("no load", idle_lat, "%.2f ms" % cpu_per_patch, other_idle),
                                 ("%d clients loading the proxy" % a.conns, load_lat, "—",
                                  other_load)):
        print("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %s | %.2f cores |"
              % (label, pct(lat, 50), pct(lat, 95), pct(lat, 99), max(lat), cpu, oth))
    print()
    print("Load (box-000's credential, plain HTTP keep-alive): %.0f req/s before/after the "
          "PATCHes, %.0f req/s inside PATCH windows (%.0f%%), %.0f req/s over the PATCH phase "
          "(%.0f%%); worst 10 ms at %.0f req/s during the PATCH phase, %.0f req/s without "
          "PATCHes; %s failed requests."
          % (base, in_rate, 100.0 * in_rate / base, phase, 100.0 * phase / base, worst10,
             worst10_base, head["errors"]))
    print("The disk: fdatasync of 16 KiB took p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d probes "
          "before the phases; each PATCH waits for one)." % (pct(disk, 50), pct(disk, 99),
                                                              max(disk), len(disk)))
    print("Correctness: %d PATCHes checked through the proxy right after their 200; %d failures."
          % (len(idle_lat) + len(load_lat), len(failures)))
    for f in failures[:10]:
        print("  FAIL: %s" % f)
    print()
    print(idle_line)
    print(load_line)
    print("RESULT phase=disk fsyncs=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f"
          % (len(disk), pct(disk, 50), pct(disk, 99), max(disk)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
