-- wrk script used by bench/harness.py: the request comes from the environment, the summary is
-- printed as one JSON line (prefixed `BENCH_JSON `) for the harness to parse.
--   WRK_METHOD   GET (default), POST, ...
--   WRK_BODY     request body (optional)
--   WRK_HEADERS  extra headers, one `Name: value` per line (optional)
-- No per-response Lua callback: it would cost the load generator CPU on every response; wrk
-- itself counts non-2xx/3xx responses (summary.errors.status).
wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body ~= nil and body ~= "" then
  wrk.body = body
end
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then
    wrk.headers[k] = v
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
