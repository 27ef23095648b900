-- wrk script: POST one real Alma webhook, signed the way Alma signs it.
--
-- Environment (set by bench/run.py):
--   BENCH_BODY  path of the body to send (e.g. tests/fixtures/alma/loan_created.json)
--   BENCH_SIG   base64 HMAC-SHA256 of exactly those bytes with the daemon's secret
--   BENCH_PATH  request path (default /webhook)
--
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles
-- (microseconds), which run.py parses.

local body_path = os.getenv("BENCH_BODY")
local sig = os.getenv("BENCH_SIG")
if body_path == nil or sig == nil then
  error("post.lua: BENCH_BODY and BENCH_SIG must be set")
end

local f = assert(io.open(body_path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/webhook"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Exl-Signature"] = sig
-- wrk adds a Host header in its own init, after this file has run: a request formatted here
-- would have none, and an HTTP/1.1 request without Host is a 400 (RFC 9112 section 3.2).
if wrk.headers["Host"] == nil then
  local host = wrk.host:find(":") and ("[" .. wrk.host .. "]") or wrk.host
  wrk.headers["Host"] = wrk.port and (host .. ":" .. wrk.port) or host
end

-- Pre-format the request once; wrk reuses it for every request on every connection.
local req = wrk.format()
function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,' ..
    '"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
