#!/usr/bin/env python3
"""Turns bench/run.sh's raw results (RESULT/META lines of key=value) into Markdown tables.

Usage: report.py RESULTS_FILE   (prints Markdown on stdout)

The headline table compares each proxy with the direct path measured in the same run; ratios,
not absolute numbers, are what the targets are about. It reports, it never fails on a miss.
"""
import math
import sys

HIST_BASE = 1.01  # must match bench/loadgen.c


def hist_quantile_us(hist, q, max_us):
    """Same rule as loadgen's lg_hist_quantile_us: the geometric middle of the bucket."""
    total = sum(hist.values())
    if total == 0:
        return 0.0
    want = max(1, math.ceil(q * total))
    seen = 0
    for idx in sorted(hist):
        seen += hist[idx]
        if seen >= want:
            return min(HIST_BASE ** (idx + 0.5) / 1000.0, max_us)
    return max_us


def combine(slices):
    """Merges the slices of one (side, run): sums counts and CPU, merges histograms."""
    if len(slices) == 1:
        return slices[0]
    if any(s.get("failed") == "1" for s in slices):
        return {"failed": "1"}
    out = dict(slices[0])
    for key in ("requests", "requests_all", "errors", "upstream_accepts"):
        out[key] = str(sum(int(float(s.get(key, 0))) for s in slices))
    for key in ("secs", "proxy_cpu_s", "nginx_cpu_s", "client_cpu_s", "wall_s"):
        out[key] = str(sum(float(s.get(key, 0)) for s in slices))
    wall = float(out["wall_s"]) or 1.0
    out["other_cores"] = "%.2f" % (sum(float(s.get("other_cores", 0)) * float(s.get("wall_s", 0))
                                       for s in slices) / wall)
    out["rps"] = str(float(out["requests"]) / (float(out["secs"]) or 1.0))
    kinds = sorted({s.get("error_kinds", "none") for s in slices} - {"none"})
    out["error_kinds"] = "+".join(kinds) if kinds else "none"
    out["slices"] = str(len(slices))
    hist = {}
    for s in slices:
        h = s.get("hist", "none")
        if h == "none":
            continue
        for pair in h.split(","):
            idx, count = pair.split(":")
            hist[int(idx)] = hist.get(int(idx), 0) + int(count)
    max_us = max(float(s.get("max_us", 0)) for s in slices)
    out["max_us"] = str(max_us)
    if hist:
        for name, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999)):
            out[name] = str(hist_quantile_us(hist, q, max_us))
    return out


def parse(path):
    slices, meta = {}, {}
    with open(path) as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            if words[0] == "META":
                meta.update(kv)
            elif words[0] == "RESULT" and "id" in kv and "side" in kv:
                slices.setdefault((kv["side"], kv["id"]), []).append(kv)
    return {key: combine(v) for key, v in slices.items()}, meta


def num(run, key):
    if run is None or run.get("failed") == "1" or key not in run:
        return None
    try:
        return float(run[key])
    except ValueError:
        return None


def fmt_rate(v):
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f} ms"


def fmt_ratio(a, b, target=None):
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    if target is not None and r < target <= round(r, 2):
        return f"{r:.3f}×"  # do not let rounding show a miss as a meet
    return f"{r:.2f}×"


def verdict(ok):
    return "n/a" if ok is None else ("meets" if ok else "**misses**")


def main():
    runs, meta = parse(sys.argv[1])
    sides = ["authproxy", "mitmproxy", "nginxproxy", "relay"]

    def get(side, rid):
        return runs.get((side, rid))

    out = []
    w = out.append
    w(f"Run {meta.get('date', '?')} on {meta.get('nproc', '?')} cores "
      f"({meta.get('cpu', '?').replace('_', ' ')}); {meta.get('conns', '?')} connections, "
      f"{meta.get('duration', '?')} s per run after {meta.get('warmup', '?')} s warm-up; "
      "load generator, nginx (2 workers) and the proxy (2 workers) share the cores; "
      f"load from other processes just before the runs: {meta.get('load_before', '?')} cores.")
    w("")
    for side in sides:
        why = meta.get(f"{side}_why")
        if why:
            w(f"- {side}: not measured — {why.replace('_', ' ')}")
    if any(meta.get(f"{s}_why") for s in sides):
        w("")

    w("| workload | direct | authproxy | ratio | target | verdict | mitmproxy | ratio | "
      "authproxy ratio from CPU/req |")
    w("|---|---:|---:|---:|---|---|---:|---:|---:|")

    def cpu_per_req(r, with_proxy):
        """CPU µs per request of everything on the path: client, nginx and (proxied) proxy."""
        total = num(r, "requests_all")
        if not total:
            return None
        keys = ["client_cpu_s", "nginx_cpu_s"] + (["proxy_cpu_s"] if with_proxy else [])
        vals = [num(r, k) for k in keys]
        if any(v is None for v in vals):
            return None
        return sum(vals) / total * 1e6

    def cpu_ratio(rid, direct_rid):
        d = cpu_per_req(get("direct", direct_rid), False)
        a = cpu_per_req(get("authproxy", rid), True)
        if not d or not a:
            return "n/a"
        return f"{d / a:.2f}×"

    def rate_row(label, rid, target, direct_rid=None):
        d = num(get("direct", direct_rid or rid), "rps")
        a = num(get("authproxy", rid), "rps")
        m = num(get("mitmproxy", rid), "rps")
        ok = None if a is None or d in (None, 0) else a / d >= target
        w(f"| {label} | {fmt_rate(d)} | {fmt_rate(a)} | {fmt_ratio(a, d, target)} | ≥ {target}× | "
          f"{verdict(ok)} | {fmt_rate(m)} | {fmt_ratio(m, d)} | "
          f"{cpu_ratio(rid, direct_rid or rid)} |")

    rate_row("plain HTTP keep-alive, header injected (wrk), req/s", "plain_ka", 0.6)
    rate_row("the same with loadgen (cross-check of the client), req/s", "plain_ka_lg", 0.6)
    rate_row("intercepted HTTPS keep-alive (loadgen), req/s", "tls_ka", 0.5)
    rate_row("new TLS connections, origin keeps upstream alive (loadgen), conn/s", "tls_new", 0.4)
    rate_row("new TLS connections, origin closes after each response: client + upstream "
             "handshake (loadgen), conn/s", "tls_new_noreuse", 0.4, direct_rid="tls_new")

    def p99_row(label, rid, target_us, key="p99_us"):
        d = num(get("direct", rid), key)
        a = num(get("authproxy", rid), key)
        m = num(get("mitmproxy", rid), key)
        add = None if a is None or d is None else a - d
        madd = None if m is None or d is None else m - d
        ok = None if add is None or target_us is None else add < target_us
        tgt = "added < 1 ms" if target_us is not None else "(info)"
        w(f"| {label} | {fmt_ms(d)} | {fmt_ms(a)} | "
          f"{'n/a' if add is None else f'{add / 1000:+.2f} ms'} | {tgt} | "
          f"{verdict(ok) if target_us is not None else '—'} | {fmt_ms(m)} | "
          f"{'n/a' if madd is None else f'{madd / 1000:+.2f} ms'} | |")

    rate = meta.get("rate", "?")
    p99_row(f"p99 latency, plain HTTP paced at {rate} req/s", "plain_paced", 1000)
    p99_row(f"p99 latency, HTTPS keep-alive paced at {rate} req/s", "tls_paced", 1000)
    p99_row(f"p50 latency, plain HTTP paced at {rate} req/s", "plain_paced", None, "p50_us")
    p99_row(f"p50 latency, HTTPS keep-alive paced at {rate} req/s", "tls_paced", None, "p50_us")
    p99_row("p99 latency at saturation, plain HTTP keep-alive", "plain_ka", None)
    p99_row("p99 latency at saturation, HTTPS keep-alive", "tls_ka", None)

    def idle_kib(side):
        r = get(side, "idle")
        opened = num(r, "open")
        b, a = num(r, "rss_before_kib"), num(r, "rss_after_kib")
        if not opened or b is None or a is None:
            return None, r
        return (a - b) / opened, r

    a_kib, a_run = idle_kib("authproxy")
    m_kib, m_run = idle_kib("mitmproxy")
    ok = None if a_kib is None else a_kib <= 64
    w(f"| RSS per idle intercepted connection | — | "
      f"{'n/a' if a_kib is None else f'{a_kib:.1f} KiB'} | — | ≤ 64 KiB | {verdict(ok)} | "
      f"{'n/a' if m_kib is None else f'{m_kib:.1f} KiB'} | — | |")
    w("")
    w("The last column is the throughput ratio the CPU cost alone predicts when the two cores are "
      "the only limit: (client + nginx CPU per request, direct) / (client + nginx + authproxy CPU "
      "per request, proxied). It is steadier than the measured ratio when other load comes and goes.")
    w("")

    def reference_table(side, name, intro):
        """A reference side (nginxproxy, relay) against direct and authproxy on the keep-alive
        workloads, after the intro line; nothing when the side was not measured."""
        if not any(get(side, rid) for rid in ("plain_ka", "plain_ka_lg", "tls_ka")):
            return
        w(intro)
        w("")
        w(f"| workload | direct | {name} | ratio | authproxy | authproxy / {name} | "
          f"{name}, ratio from CPU/req |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for label, rid in (("plain HTTP keep-alive (wrk), req/s", "plain_ka"),
                           ("plain HTTP keep-alive (loadgen), req/s", "plain_ka_lg"),
                           ("HTTPS keep-alive (loadgen), req/s", "tls_ka")):
            d = num(get("direct", rid), "rps")
            r = num(get(side, rid), "rps")
            a = num(get("authproxy", rid), "rps")
            dc = cpu_per_req(get("direct", rid), False)
            rc = cpu_per_req(get(side, rid), True)
            w(f"| {label} | {fmt_rate(d)} | {fmt_rate(r)} | {fmt_ratio(r, d)} | {fmt_rate(a)} | "
              f"{fmt_ratio(a, r)} | {'n/a' if not dc or not rc else f'{dc / rc:.2f}×'} |")
        w("")

    reference_table(
        "nginxproxy", "nginx as proxy",
        "Reference, same run: nginx as a reverse proxy in front of the same origin (2 workers, "
        "keep-alive upstream pool, Authorization set on every request; for HTTPS it terminates "
        "the client's TLS and re-encrypts to the origin). It does no policy, no audit and no "
        "CONNECT, so it shows what a fast C proxy costs on this machine at the least:")
    reference_table(
        "relay", "relay",
        "Floor, same run: a byte relay (bench/relay.c, 2 threads) between the client and a "
        "keep-alive connection to the origin; for HTTPS it terminates the client's TLS and "
        "re-encrypts to the origin. It parses nothing and injects nothing; it makes "
        "the system calls a keep-alive proxy cannot avoid and no others, so its ratio is what "
        "this machine's kernel and scheduler leave for any user-space proxy:")

    busy = [(s, i) for (s, i), r in runs.items() if (num(r, "other_cores") or 0) > 0.25]
    if busy:
        w(f"**Warning:** other processes used more than 0.25 cores during {len(busy)} run(s) "
          "(column 'other load'); those numbers are low and noisy. The machine is shared.")
        w("")
    w("Every run (CPU columns: process CPU time per completed request, warm-up included; "
      "client: cores the load generator used; other load: cores used meanwhile by processes "
      "outside the benchmark; nginx conns: connections nginx accepted per 1000 requests — "
      "for proxied runs, the proxy's upstream connections):")
    w("")
    w("| side | run | tool | req/s | p50 | p99 | p99.9 | errors | proxy CPU/req | "
      "nginx CPU/req | client | other load | nginx conns /1k req |")
    w("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    order = ["plain_ka", "plain_ka_lg", "tls_ka_wrk", "tls_ka", "tls_new", "tls_new_noreuse", "plain_paced",
             "tls_paced"]
    for side in ["direct"] + sides:
        for rid in order:
            r = get(side, rid)
            if r is None:
                continue
            if r.get("failed") == "1":
                w(f"| {side} | {rid} | | failed | | | | | | | | | |")
                continue
            total = num(r, "requests_all") or 0
            def per_req(key):
                v = num(r, key)
                return "—" if not v or not total else f"{v / total * 1e6:.0f} µs"
            acc = num(r, "upstream_accepts")
            conns_per_k = "n/a" if acc is None or not total else f"{acc / total * 1000:.1f}"
            errors = r.get("errors", "?")
            if errors not in ("0", "?"):
                errors += f" ({r.get('error_kinds', '')})"
            ccpu, wall = num(r, "client_cpu_s"), num(r, "wall_s")
            cpu = None if ccpu is None or not wall else f"{ccpu / wall:.2f}"
            other = r.get("other_cores", "?")
            w(f"| {side} | {rid} | {r.get('tool', 'loadgen')} | {fmt_rate(num(r, 'rps'))} | "
              f"{fmt_ms(num(r, 'p50_us'))} | {fmt_ms(num(r, 'p99_us'))} | "
              f"{fmt_ms(num(r, 'p999_us'))} | {errors} | "
              f"{per_req('proxy_cpu_s') if side != 'direct' else '—'} | {per_req('nginx_cpu_s')} | "
              f"{'—' if cpu is None else cpu} | {other} | {conns_per_k} |")
    for side, r in (("authproxy", a_run), ("mitmproxy", m_run)):
        if r is None:
            continue
        w("")
        w(f"Idle connections, {side}: {r.get('open', '?')} of {r.get('wanted', '?')} opened "
          f"({r.get('failed', '?')} failed, {r.get('closed_by_peer', '?')} closed by the proxy "
          f"while held); VmRSS {r.get('rss_before_kib', '?')} KiB before, "
          f"{r.get('rss_after_kib', '?')} KiB with them open; upstream connections the proxy "
          f"held open meanwhile: {r.get('upstream_open', '?')}.")
    w("")
    w(f"Versions: {meta.get('authproxy', '?').replace('_', ' ')} (tree {meta.get('commit', '?')}); nginx {meta.get('nginx', '?')}; "
      f"OpenSSL {meta.get('openssl', '?')}; wrk {meta.get('wrk', '?')}; "
      f"mitmproxy {meta.get('mitmproxy', '?')}; kernel {meta.get('kernel', '?')}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
