-- wrk script: POST a real Alma webhook with a NEW id on every request (deduplication finds
-- nothing to skip: every request is a first copy, the store's full cost), unsigned (the
-- daemon runs with --insecure-skip-signature: an HMAC per request is beyond wrk's Lua).
--
-- Environment (set by bench/dedupe_bench.py):
--   BENCH_BODY   path of the body (its first "id":"..." is replaced)
--   BENCH_TAG    a prefix making this run's ids unique
--   BENCH_DELAY_MS  if set, each connection waits this long before each request (a paced
--                   load well below the peak: the latency a request sees without queueing)
--
-- done() prints "BENCH_JSON {...}" as post.lua does.

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local s, e = body:find('"id"%s*:%s*"[^"]*"')
assert(s, "unique.lua: no \"id\":\"...\" in the body")
local head, tail = body:sub(1, s - 1), body:sub(e + 1)
local tag = os.getenv("BENCH_TAG") or "1"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause then
  function delay()
    return pause
  end
end

local n = 0
function request()
  n = n + 1
  local b = head .. '"id":"' .. tag .. string.format("%02d%09d", tid, n) .. '"' .. tail
  return wrk.format("POST", "/webhook", {["Content-Type"] = "application/json",
                                         ["Host"] = wrk.host .. ":" .. wrk.port}, b)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"err_status":%d,"err_other":%d,' ..
    '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
