#!/usr/bin/env python3
"""Helpers of bench/callbacks.sh (dynamic-credential benchmarks, issue 5).

  callbacks_helper.py server PORTFILE ANSWER_HEADER SLOW_PATH SLOW_DELAY
      A credential callback endpoint (SPEC §4) on a free loopback port, written to PORTFILE.
      Every POST answers {"headers": {"Authorization": ANSWER_HEADER}}; a POST to SLOW_PATH
      answers after SLOW_DELAY seconds. It counts calls by the "host" of the callback body;
      GET /count returns those counts as JSON. It is called once per cache key and TTL, so a
      threaded http.server is fast enough; what it must get right is the count.

  callbacks_helper.py storm --proxy PORT --host NAME:PORT -n N [--tls --cafile CA]
      A cold-cache storm: opens N connections to the proxy (for --tls: CONNECT NAME:PORT, then
      TLS to the proxy's minted certificate), and only when all N are open sends one request
      on each, all at once, so every request reaches the proxy while the first callback is still
      unanswered. Prints one line "RESULT key=value ..." (statuses, errors, latencies from the
      moment the requests were sent).

  callbacks_helper.py report RESULTS_FILE
      Markdown tables from the RESULT/META lines callbacks.sh collected.
"""
import asyncio
import http.server
import json
import math
import os
import ssl
import statistics
import sys
import threading
import time


# --- callback endpoint ---------------------------------------------------------------------------

def serve(portfile, answer, slow_path, slow_delay):
    lock = threading.Lock()
    counts = {}
    body_out = json.dumps({"headers": {"Authorization": answer}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock:
                out = json.dumps(counts).encode()
            self._answer(200, out)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            try:
                host = json.loads(self.rfile.read(n)).get("host", "?")
            except ValueError:
                host = "?"
            with lock:
                counts[host] = counts.get(host, 0) + 1
            if self.path == slow_path:
                time.sleep(slow_delay)
            self._answer(200, body_out)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 1024
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % httpd.server_address[1])
    os.rename(portfile + ".tmp", portfile)
    httpd.serve_forever()


# --- storm client --------------------------------------------------------------------------------

async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, length


async def open_one(args, sslctx, sem):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.proxy)
        if args.tls:
            writer.write(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (args.host, args.host)).encode())
            status, _ = await read_head(reader)
            if status != 200:
                raise RuntimeError("CONNECT answered %d" % status)
            await writer.start_tls(sslctx, server_hostname=args.host.rsplit(":", 1)[0])
        return reader, writer


async def exchange(reader, writer, request, t0):
    writer.write(request)
    await writer.drain()
    status, length = await read_head(reader)
    if length:
        await reader.readexactly(length)
    return status, time.monotonic() - t0


async def storm(args):
    sslctx = None
    if args.tls:
        sslctx = ssl.create_default_context(cafile=args.cafile)
    target = args.host if args.tls else "http://%s" % args.host
    if args.tls:
        request = "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % args.host
    else:
        request = "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            args.host, args.host)
    request = request.encode()
    sem = asyncio.Semaphore(args.open_concurrency)
    t_open = time.monotonic()
    opened = await asyncio.gather(*(open_one(args, sslctx, sem) for _ in range(args.n)),
                                  return_exceptions=True)
    conns = [c for c in opened if not isinstance(c, BaseException)]
    open_failed = len(opened) - len(conns)
    open_s = time.monotonic() - t_open
    t0 = time.monotonic()
    tasks = [asyncio.wait_for(exchange(r, w, request, t0), args.timeout) for r, w in conns]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.monotonic() - t0
    statuses = {}
    errors = 0
    lat = []
    for d in done:
        if isinstance(d, BaseException):
            errors += 1
            continue
        statuses[d[0]] = statuses.get(d[0], 0) + 1
        lat.append(d[1])
    for _, w in conns:
        w.close()
    lat.sort()

    def q(p):
        if not lat:
            return 0.0
        return lat[min(len(lat) - 1, max(0, math.ceil(p * len(lat)) - 1))] * 1000

    print("RESULT id=storm tls=%d target=%s n=%d opened=%d open_failed=%d open_s=%.2f "
          "ok=%d statuses=%s errors=%d min_ms=%.1f p50_ms=%.1f p99_ms=%.1f max_ms=%.1f wall_s=%.2f"
          % (1 if args.tls else 0, target, args.n, len(conns), open_failed, open_s,
             statuses.get(200, 0),
             ",".join("%d:%d" % kv for kv in sorted(statuses.items())) or "none", errors,
             lat[0] * 1000 if lat else 0.0, q(0.5), q(0.99), q(1.0), wall))


# --- report --------------------------------------------------------------------------------------

def parse(path):
    slices, storms, meta = {}, [], {}
    with open(path) as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            if words[0] == "META":
                meta.update(kv)
            elif words[0] == "RESULT" and kv.get("id") == "storm":
                storms.append(kv)
            elif words[0] == "RESULT" and "side" in kv:
                slices.setdefault(kv["run"], []).append(kv)
    return slices, storms, meta


def fnum(s, key):
    try:
        return float(s.get(key, "nan"))
    except ValueError:
        return float("nan")


def per_request(slices, key):
    """CPU seconds of one kind summed over slices, in µs per request (warm-up included)."""
    n = sum(fnum(s, "requests_all") for s in slices)
    return sum(fnum(s, key) for s in slices) / n * 1e6 if n > 0 else float("nan")


# two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom
T975 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04]


def ratio_ci(ratios):
    """Geometric mean of the pair ratios and its 95 % confidence interval (t on the logs)."""
    m, lo, hi = mean_ci([math.log(r) for r in ratios])
    return math.exp(m), math.exp(lo), math.exp(hi)


def mean_ci(values):
    """Mean of values and its 95 % confidence interval (Student's t)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    m = statistics.mean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = T975[min(len(values) - 2, len(T975) - 1)] * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def cpu_us(s, key):
    n = fnum(s, "requests_all")
    return fnum(s, key) / n * 1e6 if n > 0 else float("nan")


def report(path):
    slices, storms, meta = parse(path)
    names = {"plain_ka": "plain HTTP keep-alive (wrk)", "tls_ka": "intercepted HTTPS keep-alive (loadgen)",
             "plain_paced": "plain HTTP keep-alive, paced (loadgen)",
             "tls_paced": "intercepted HTTPS keep-alive, paced (loadgen)"}
    out = []
    out.append("Run %s, tree %s, on %s cores; %s connections, %s s slices, %s pairs per workload "
               "(static, callback | callback, static, alternating); other load before the runs: "
               "%s cores." % (meta.get("date", "?"), meta.get("commit", "?"), meta.get("nproc", "?"),
                              meta.get("conns", "?"), meta.get("slice", "?"), meta.get("pairs", "?"),
                              meta.get("load_before", "?")))
    out.append("")
    out.append("| workload | static rule req/s | callback req/s | ratio callback/static (all slices) "
               "| pair ratios: geometric mean [95 % CI] (min–max) | target | verdict "
               "| proxy CPU/req static → callback | ratio from CPU/req | errors | other load (max) |")
    out.append("|---|---:|---:|---:|---|---|---|---|---:|---:|---:|")
    for run in ("plain_ka", "tls_ka"):
        ss = slices.get(run)
        if not ss:
            continue
        st = [s for s in ss if s["side"] == "static"]
        cb = [s for s in ss if s["side"] == "callback"]
        pairs = {}
        for s in ss:
            pairs.setdefault(s["pair"], {})[s["side"]] = fnum(s, "rps")
        ratios = sorted(p["callback"] / p["static"] for p in pairs.values()
                        if p.get("static") and p.get("callback") is not None)
        tot_st = sum(fnum(s, "requests") for s in st) / max(1e-9, sum(fnum(s, "secs") for s in st))
        tot_cb = sum(fnum(s, "requests") for s in cb) / max(1e-9, sum(fnum(s, "secs") for s in cb))
        ratio = tot_cb / tot_st if tot_st else float("nan")
        cpu_st, cpu_cb = per_request(st, "proxy_cpu_s"), per_request(cb, "proxy_cpu_s")
        all_st = sum(per_request(st, k) for k in ("proxy_cpu_s", "nginx_cpu_s", "client_cpu_s"))
        all_cb = sum(per_request(cb, k) for k in ("proxy_cpu_s", "nginx_cpu_s", "client_cpu_s"))
        errs = sum(int(fnum(s, "errors")) for s in ss)
        other = max(fnum(s, "other_cores") for s in ss)
        gm, lo, hi = ratio_ci(ratios)
        # The verdict needs the noise on its side too: a ratio of sums near 0.95 with pairs
        # scattered over ±15 % decides nothing.
        if math.isnan(lo):
            verdict = "not decided (fewer than two pairs: no interval)"
        elif lo >= 0.95:
            verdict = "meets"
        elif hi < 0.95:
            verdict = "**misses**"
        else:
            verdict = "not decided (noise: the interval straddles 0.95)"
        spread = ("%.3f× [%.3f–%.3f] (%.3f–%.3f)" % (gm, lo, hi, ratios[0], ratios[-1])
                  if ratios else "n/a")
        out.append("| %s | %s | %s | %.3f× | %s | ≥ 0.95× | %s | %.1f → %.1f µs (%+.1f) | %.3f× | %d "
                   "| %.2f |"
                   % (names.get(run, run), "{:,.0f}".format(tot_st), "{:,.0f}".format(tot_cb), ratio,
                      spread, verdict, cpu_st, cpu_cb, cpu_cb - cpu_st, all_st / all_cb, errs, other))
    out.append("")
    out.append("Verdict: meets when the whole 95 % interval of the pair ratios lies at or above 0.95, "
               "misses when it lies wholly below, otherwise not decided. Ratio from CPU/req: (client + "
               "nginx + proxy CPU per static request) / (the same per callback request), the ratio the "
               "CPU cost alone predicts when the two cores are the only limit.")
    out.append("")
    paced = [(run, slices[run]) for run in ("plain_paced", "tls_paced") if slices.get(run)]
    if paced:
        out.append("Paced at %s req/s (same connections, %s pairs): the proxy's CPU time per request "
                   "(schedstat, warm-up included) when both sides serve the same request rate. "
                   "The last column turns the difference into the throughput ratio it implies when "
                   "the two cores are the only limit: (client + nginx + proxy CPU per static request "
                   "in the keep-alive run) / (the same + the difference)."
                   % (meta.get("rate", "?"), meta.get("paced_pairs", "?")))
        out.append("")
        out.append("| workload | proxy CPU/req static | proxy CPU/req callback | difference per pair: "
                   "mean [95 % CI] | relative | p50 / p99 static | p50 / p99 callback | errors "
                   "| other load (max) | implied throughput ratio |")
        out.append("|---|---:|---:|---|---:|---|---|---:|---:|---:|")
        for run, ss in paced:
            st = [s for s in ss if s["side"] == "static"]
            cb = [s for s in ss if s["side"] == "callback"]
            pairs = {}
            for s in ss:
                pairs.setdefault(s["pair"], {})[s["side"]] = cpu_us(s, "proxy_cpu_s")
            diffs = [p["callback"] - p["static"] for p in pairs.values()
                     if "static" in p and "callback" in p]
            m, lo, hi = mean_ci(diffs)
            cpu_st, cpu_cb = per_request(st, "proxy_cpu_s"), per_request(cb, "proxy_cpu_s")
            ka = slices.get(run.replace("_paced", "_ka"), [])
            ka_st = [s for s in ka if s["side"] == "static"]
            total = sum(per_request(ka_st, k) for k in ("proxy_cpu_s", "nginx_cpu_s", "client_cpu_s"))
            implied = total / (total + m) if ka_st else float("nan")

            def lat(side_slices):
                return "%.2f / %.2f ms" % (statistics.median(fnum(s, "p50_us") for s in side_slices) / 1000,
                                           statistics.median(fnum(s, "p99_us") for s in side_slices) / 1000)
            out.append("| %s | %.1f µs | %.1f µs | %+.2f µs [%+.2f, %+.2f] | %+.1f %% | %s | %s | %d | %.2f "
                       "| %.3f× |"
                       % (names.get(run, run), cpu_st, cpu_cb, m, lo, hi, (cpu_cb / cpu_st - 1) * 100,
                          lat(st), lat(cb), sum(int(fnum(s, "errors")) for s in ss),
                          max(fnum(s, "other_cores") for s in ss), implied))
        out.append("")
    calls = meta.get("ka_callback_calls", "?")
    out.append("Callback calls for cb.test over the whole run (one warm-up request per origin port — "
               "the port is part of the cache key — then every slice): %s (expected 2: every "
               "measured request was a cache hit)." % calls)
    out.append("")
    if storms:
        out.append("| cold-cache storm | connections | requests sent | answered 200 | other answers "
                   "| errors | callback calls | target | verdict | latency min / p50 / max |")
        out.append("|---|---:|---:|---:|---|---:|---:|---|---|---|")
        for s in storms:
            ok = int(fnum(s, "ok"))
            n = int(fnum(s, "n"))
            calls = s.get("callback_calls", "?")
            others = ",".join(kv for kv in s.get("statuses", "none").split(",")
                              if not kv.startswith("200:")) or "none"
            verdict = "meets" if calls == "1" and ok == n else "**misses**"
            out.append("| %s, endpoint answers after %s s | %d | %s | %d | %s | %s | %s | 1 call, %d × 200 "
                       "| %s | %s / %s / %s ms |"
                       % ("intercepted HTTPS" if s.get("tls") == "1" else "plain HTTP",
                          s.get("delay", "?"), n, s.get("opened", "?"), ok, others, s.get("errors", "?"),
                          calls, n, verdict, s.get("min_ms"), s.get("p50_ms"), s.get("max_ms")))
        out.append("")
        out.append("Storm latency counts from the moment the requests were sent. Beyond the endpoint's "
                   "delay it is the proxy opening one new upstream connection per request (a TLS "
                   "handshake each for HTTPS) once the answer is in, all at once.")
        out.append("")
    out.append("Every slice (proxy / nginx CPU per request, warm-up included; other load: cores used "
               "meanwhile by processes outside the benchmark):")
    out.append("")
    out.append("| run | pair | side | req/s | p50 | p99 | errors | proxy CPU/req | nginx CPU/req | other load |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in ("plain_ka", "tls_ka", "plain_paced", "tls_paced"):
        for s in slices.get(run, []):
            out.append("| %s | %s | %s | %s | %.2f ms | %.2f ms | %s | %.1f µs | %.1f µs | %s |"
                       % (run, s["pair"], s["side"], "{:,.0f}".format(fnum(s, "rps")),
                          fnum(s, "p50_us") / 1000, fnum(s, "p99_us") / 1000, s.get("errors", "?"),
                          cpu_us(s, "proxy_cpu_s"), cpu_us(s, "nginx_cpu_s"), s.get("other_cores", "?")))
    print("\n".join(out))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "storm":
        import argparse
        p = argparse.ArgumentParser(prog="callbacks_helper.py storm")
        p.add_argument("--proxy", type=int, required=True)
        p.add_argument("--host", required=True)
        p.add_argument("-n", type=int, default=1000)
        p.add_argument("--tls", action="store_true")
        p.add_argument("--cafile")
        p.add_argument("--timeout", type=float, default=60)
        p.add_argument("--open-concurrency", type=int, default=100)
        args = p.parse_args(sys.argv[2:])
        asyncio.run(storm(args))
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
