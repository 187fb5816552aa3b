-- wrk script for `make bench`: POST JSON-RPC `tools/call` requests to an MCP endpoint.
--
-- Environment (set by bench/run.py):
--   BENCH_TOKEN   bearer token
--   BENCH_BODIES  one or more JSON-RPC bodies separated by "\n"; each connection's requests
--                 cycle through them (e.g. one get_todo per seeded id)
--   BENCH_CHECK   "0" disables the per-response check (faster wrk, no error detection)
--   BENCH_HEADERS "Name: value" lines: the era's headers (Content-Type, Accept,
--                 MCP-Protocol-Version, and on 2026-07-28 Mcp-Method and Mcp-Name)
--
-- Errors counted per thread: non-2xx statuses (`bad_status`) and 2xx bodies that carry a
-- JSON-RPC error, an MCP tool error ("isError":true) or a quickstart-style {"error": ...}
-- result (`rpc_errors`). `done` prints one line, "BENCH_JSON {...}", that bench/run.py parses.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function split(s, sep)
   local out = {}
   for piece in string.gmatch(s, "([^" .. sep .. "]+)") do
      table.insert(out, piece)
   end
   return out
end

local requests = {}
local n = 0
local i = 0

function init(args)
   bad_status = 0
   rpc_errors = 0
   first_error = ""
   local token = os.getenv("BENCH_TOKEN") or ""
   local bodies = split(os.getenv("BENCH_BODIES") or "", "\n")
   local headers = { ["Authorization"] = "Bearer " .. token }
   for _, line in ipairs(split(os.getenv("BENCH_HEADERS") or "", "\n")) do
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      if name then
         headers[name] = value
      end
   end
   for _, body in ipairs(bodies) do
      table.insert(requests, wrk.format("POST", nil, headers, body))
   end
   n = #requests
   -- start each thread at a different body
   i = math.random(0, math.max(n - 1, 0))
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return requests[i]
end

if os.getenv("BENCH_CHECK") ~= "0" then
   function response(status, headers, body)
      if status < 200 or status > 299 then
         bad_status = bad_status + 1
         if first_error == "" then
            first_error = "HTTP " .. status .. ": " .. string.sub(body or "", 1, 300)
         end
      elseif body == nil
         or string.find(body, '"isError":%s*true')
         or string.find(body, '"error"', 1, true) then
         rpc_errors = rpc_errors + 1
         if first_error == "" then
            first_error = string.sub(body or "(no body)", 1, 300)
         end
      end
   end
end

local function esc(s)
   s = string.gsub(s, '\\', '\\\\')
   s = string.gsub(s, '"', '\\"')
   s = string.gsub(s, '[%c]', ' ')
   return s
end

function done(summary, latency, requests_)
   local bad, rpc, first = 0, 0, ""
   for _, t in ipairs(threads) do
      bad = bad + (t:get("bad_status") or 0)
      rpc = rpc + (t:get("rpc_errors") or 0)
      local f = t:get("first_error") or ""
      if first == "" and f ~= "" then
         first = f
      end
   end
   local e = summary.errors
   local parts = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"bad_status":%d', bad),
      string.format('"rpc_errors":%d', rpc),
      string.format('"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}',
         e.connect, e.read, e.write, e.timeout, e.status),
      string.format('"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}',
         latency.min, latency.mean, latency.stdev, latency.max,
         latency:percentile(50), latency:percentile(75), latency:percentile(90),
         latency:percentile(99), latency:percentile(99.9)),
      string.format('"first_error":"%s"', esc(first)),
   }
   io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
