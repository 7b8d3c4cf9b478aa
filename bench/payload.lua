-- wrk script for the payload benchmark.
--   wrk -t2 -c32 -d10s --latency -s bench/payload.lua http://127.0.0.1:PORT -- REQUESTS_FILE
-- REQUESTS_FILE (written by bench/run.py) holds tab-separated lines:
--   H <tab> header name <tab> value        a header sent with every request
--   R <tab> path <tab> etag (may be empty)  one request; with an etag it carries If-None-Match
-- The requests are pre-formatted once per thread and sent round-robin, each thread starting at a
-- different offset, so the load spreads over every symbol. `done` prints one line of JSON.

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local index = 1

function init(args)
  local headers, entries = {}, {}
  for line in io.lines(args[1]) do
    local kind, a, b = line:match("^(%a)\t([^\t]*)\t?(.*)$")
    if kind == "H" then
      headers[a] = b
    elseif kind == "R" then
      table.insert(entries, {a, b})
    end
  end
  for _, entry in ipairs(entries) do
    local h = {}
    for k, v in pairs(headers) do h[k] = v end
    if entry[2] ~= "" then h["If-None-Match"] = entry[2] end
    table.insert(requests, wrk.format("GET", entry[1], h))
  end
  index = ((id or 0) * 7919) % #requests + 1
end

function request()
  local r = requests[index]
  index = index % #requests + 1
  return r
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
