-- wrk script: POST a rotation of signed webhooks (bench/consortium.py writes them).
--
-- Environment:
--   BENCH_MANY  a file of lines "PATH<TAB>SIGNATURE<TAB>BODY-FILE"; request k of each
--               wrk thread is line (k mod N), so every institution is hit in turn
--
-- done() prints "BENCH_JSON {...}" with the counts, as post.lua does.

local list = os.getenv("BENCH_MANY")
if list == nil then
  error("post_many.lua: BENCH_MANY must be set")
end

local reqs = {}
local n = 0

-- wrk adds a Host header in its own init, after this file has run: set it here, since the
-- requests are formatted here (an HTTP/1.1 request without Host is a 400).
local function host_header()
  local host = wrk.host:find(":") and ("[" .. wrk.host .. "]") or wrk.host
  return wrk.port and (host .. ":" .. wrk.port) or host
end

function init(args)
  for line in io.lines(list) do
    local path, sig, file = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
    local f = assert(io.open(file, "rb"))
    local body = f:read("*a")
    f:close()
    reqs[#reqs + 1] = wrk.format("POST", path, {
      ["Host"] = host_header(),
      ["Content-Type"] = "application/json",
      ["X-Exl-Signature"] = sig,
    }, body)
  end
end

function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_p50_us":%d,"lat_p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
