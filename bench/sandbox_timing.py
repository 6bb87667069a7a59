#!/usr/bin/python3
"""bench/sandbox_timing.py — the timing loops of bench/sandbox.sh (issue 4 "Performance").

  run   --bin B --state-dir S --config C [--runs N]
        wall time of `B sandbox run --config C --state-dir S -- true`, end to end (process start
        to exit: the proxy's start inside it, the sandbox, the command, the teardown); and of
        `... -- echo up` to the first byte of its output (the command's result) and from there
        to exit (the teardown); and of `... -- date +%s%N` to the time the command itself
        prints (process start to first command).
  api   --control URL --key K [--runs N] [--daemon-log FILE]
        against a running daemon: POST /v2/sandboxes/boxes (timed), then the first
        POST {dataplane_url}/execute {"command": "true"} (timed), DELETE (timed); and then N
        executes of `true` on one running box (execute alone). With the daemon's log, also the
        runtime start times it logged.
  box   --control URL --key K --name NAME [--body JSON]
        creates a box and prints its id and dataplane_url (for the throughput runs).
  exec  --control URL --key K --name NAME --command CMD [--timeout S]
        runs one command in box NAME and prints its stdout, its stderr to stderr, exits with its
        exit code.

Every timing line is "STAT <name> n=.. median_ms=.. p90_ms=.. min_ms=.. max_ms=.. mean_ms=.."
(nearest-rank percentiles), preceded by "SAMPLES <name> v1 v2 ..." with every sample. Talks to
127.0.0.1 only. Uses http.client over one keep-alive connection, so the client's own cost per
call is a fraction of a millisecond.
"""
import argparse
import http.client
import json
import math
import re
import subprocess
import sys
import time
import urllib.parse


def stat(name, xs):
    xs = sorted(xs)
    n = len(xs)

    def pct(q):
        return xs[max(1, min(n, math.ceil(q * n))) - 1]

    print("SAMPLES %s %s" % (name, " ".join("%.2f" % x for x in xs)))
    print("STAT %s n=%d median_ms=%.2f p90_ms=%.2f min_ms=%.2f max_ms=%.2f mean_ms=%.2f" % (
        name, n, pct(0.5), pct(0.9), xs[0], xs[-1], sum(xs) / n))
    sys.stdout.flush()


class Control:
    def __init__(self, url, key):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.key = key
        self.c = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def call(self, method, path, body=None):
        h = {"x-api-key": self.key}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.c.request(method, path, body=data, headers=h)
        r = self.c.getresponse()
        payload = r.read()
        return r.status, (json.loads(payload) if payload else None)

    def path_of(self, dataplane_url):
        return urllib.parse.urlsplit(dataplane_url).path

    def create(self, body):
        st, j = self.call("POST", "/v2/sandboxes/boxes", body)
        if st != 201:
            raise SystemExit("create %s: %d %s" % (body.get("name"), st, j))
        return j

    def execute(self, box, body):
        st, j = self.call("POST", self.path_of(box["dataplane_url"]) + "/execute", body)
        if st != 200:
            raise SystemExit("execute: %d %s" % (st, j))
        return j

    def delete(self, name):
        st, j = self.call("DELETE", "/v2/sandboxes/boxes/" + name)
        if st != 204:
            raise SystemExit("delete %s: %d %s" % (name, st, j))


def ms(t0, t1):
    return (t1 - t0) * 1000.0


def cmd_run(a):
    base = [a.bin, "sandbox", "run", "--state-dir", a.state_dir]
    if a.config:
        base += ["--config", a.config]
    subprocess.run(base + ["--", "true"], capture_output=True, check=True)  # the CA, made once
    e2e, out, done, start = [], [], [], []
    for _ in range(a.runs):
        # `true`: process start to exit, everything included.
        t0 = time.perf_counter()
        p = subprocess.run(base + ["--", "true"], capture_output=True)
        t1 = time.perf_counter()
        if p.returncode != 0:
            raise SystemExit("sandbox run failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
        e2e.append(ms(t0, t1))
        # `echo up`: sandbox run relays the output once the command has ended and before it
        # tears the sandbox and its proxy down, so the first byte on stdout marks "the first
        # command's result is in", and exit - first byte is the teardown.
        t0 = time.perf_counter()
        p = subprocess.Popen(base + ["--", "echo", "up"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        first = p.stdout.read(1)
        t1 = time.perf_counter()
        rest = p.stdout.read()
        rc = p.wait()
        t2 = time.perf_counter()
        if rc != 0 or first + rest != b"up\n":
            raise SystemExit("sandbox run -- echo up: %d %r" % (rc, first + rest))
        out.append(ms(t0, t1))
        done.append(ms(t1, t2))
        # `date +%s%N`: the command prints the wall clock as it starts, so "process start to
        # first command" is read off the command itself (an upper bound: date's own exec and
        # start-up are in it). Wall clock on both sides: the same machine's CLOCK_REALTIME.
        t0 = time.time_ns()
        p = subprocess.run(base + ["--", "date", "+%s%N"], capture_output=True)
        if p.returncode != 0 or not p.stdout.strip().isdigit():
            raise SystemExit("sandbox run -- date: %d %r" % (p.returncode, p.stdout))
        start.append((int(p.stdout) - t0) / 1e6)
    stat("sandbox_run_to_command_start", start)
    stat("sandbox_run_e2e", e2e)
    stat("sandbox_run_to_result", out)
    stat("sandbox_run_teardown_after_result", done)


def cmd_api(a):
    c = Control(a.control, a.key)
    create, first, both, delete = [], [], [], []
    for i in range(a.runs):
        name = "sbbench-%d" % i
        t0 = time.perf_counter()
        box = c.create({"name": name})
        t1 = time.perf_counter()
        r = c.execute(box, {"command": "true"})
        t2 = time.perf_counter()
        if r.get("exit_code") != 0:
            raise SystemExit("execute of true: %s" % r)
        c.delete(name)
        t3 = time.perf_counter()
        create.append(ms(t0, t1))
        first.append(ms(t1, t2))
        both.append(ms(t0, t2))
        delete.append(ms(t2, t3))
    stat("api_create", create)
    stat("api_first_execute", first)
    stat("api_create_to_first_result", both)
    stat("api_delete", delete)
    box = c.create({"name": "sbbench-exec"})
    c.execute(box, {"command": "true"})
    alone = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        r = c.execute(box, {"command": "true"})
        alone.append(ms(t0, time.perf_counter()))
        if r.get("exit_code") != 0:
            raise SystemExit("execute of true: %s" % r)
    stat("api_execute_alone", alone)
    c.delete("sbbench-exec")
    if a.daemon_log:
        # The daemon's own account of each box's runtime start (box_runtime.c logs it): what
        # of api_create is the sandbox's host side, the rest being the store, the data plane's
        # update and HTTP.
        starts = [float(m.group(1)) for m in
                  re.finditer(r"box runtime: started sandbox \S+ \(address [^)]*\) in (\d+) ms",
                              open(a.daemon_log, errors="replace").read())]
        if starts:
            stat("api_runtime_start_daemon_log", starts[-(a.runs + 1):])


def cmd_box(a):
    c = Control(a.control, a.key)
    body = json.loads(a.body) if a.body else {}
    body["name"] = a.name
    box = c.create(body)
    print(box["id"], box["dataplane_url"])


def cmd_exec(a):
    c = Control(a.control, a.key)
    st, box = c.call("GET", "/v2/sandboxes/boxes/" + a.name)
    if st != 200:
        raise SystemExit("no box %s: %d" % (a.name, st))
    r = c.execute(box, {"command": a.command, "timeout": a.timeout})
    sys.stdout.write(r.get("stdout", ""))
    sys.stderr.write(r.get("stderr", ""))
    sys.exit(r.get("exit_code", 1))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--state-dir", required=True)
    r.add_argument("--config")
    r.add_argument("--runs", type=int, default=30)
    for name in ("api", "box", "exec"):
        s = sub.add_parser(name)
        s.add_argument("--control", required=True)
        s.add_argument("--key", required=True)
        s.add_argument("--runs", type=int, default=30)
        s.add_argument("--name")
        s.add_argument("--body")
        s.add_argument("--command")
        s.add_argument("--timeout", type=int, default=120)
        s.add_argument("--daemon-log")
    a = p.parse_args()
    {"run": cmd_run, "api": cmd_api, "box": cmd_box, "exec": cmd_exec}[a.what](a)


if __name__ == "__main__":
    main()
