-- wrk script for authproxy's benchmarks.
--
-- Plain HTTP through an explicit proxy: wrk connects to the address on its command line (the
-- proxy) while every request carries the absolute-form target and the origin's Host, which is
-- what an HTTP client configured with http_proxy sends. Direct runs use the same script with an
-- origin-form target, so both sides send the same bytes apart from the request-target.
--
-- Environment: BENCH_TARGET (request-target, e.g. "http://origin.test:8080/" or "/"),
-- BENCH_HOST (Host header value), BENCH_LABEL (copied into the result line).
-- At the end it prints one machine-readable line, "RESULT key=value ...", like bench/loadgen.

local target = os.getenv("BENCH_TARGET")
local host = os.getenv("BENCH_HOST")
if target then
    wrk.path = target
end
if host then
    wrk.headers["Host"] = host
end
wrk.headers["User-Agent"] = "authproxy-bench/1"

done = function(summary, latency, requests)
    local secs = summary.duration / 1e6
    local e = summary.errors
    local errors = e.connect + e.read + e.write + e.status + e.timeout
    io.write(string.format(
        "RESULT label=%s mode=keep-alive tool=wrk secs=%.1f requests=%d rps=%.1f errors=%d " ..
        "error_kinds=connect:%d,read:%d,write:%d,status:%d,timeout:%d " ..
        "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f requests_all=%d\n",
        os.getenv("BENCH_LABEL") or "wrk", secs, summary.requests, summary.requests / secs, errors,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, summary.requests))
end
