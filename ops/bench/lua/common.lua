-- Shared by load.lua and preload.lua (used by ops/bench/compare-etcd.sh).
-- Keys are 16 bytes: "k" and 15 decimal digits; values are 128 bytes.
-- Environment: BENCH_KEYS (size of the key space), BENCH_MODE (see M.request).
local M = {}

M.keys = tonumber(os.getenv("BENCH_KEYS") or "100000")
M.mode = os.getenv("BENCH_MODE") or "nginx"
M.value = string.rep("0123456789abcdef", 8) -- 128 bytes

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local sym = {}
for i = 1, 64 do sym[i - 1] = alphabet:sub(i, i) end

function M.b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = sym[math.floor(n / 262144) % 64] .. sym[math.floor(n / 4096) % 64]
      .. (b and sym[math.floor(n / 64) % 64] or "=") .. (c and sym[n % 64] or "=")
  end
  return table.concat(out)
end

function M.key(i)
  return string.format("k%015d", i)
end

local value64 = M.b64(M.value)
local json = { ["Content-Type"] = "application/json" }
local none = {}

-- The request for key index i in the current mode.
function M.request(i)
  local m = M.mode
  if m == "mf-put" then
    return wrk.format("PUT", "/v1/kv/" .. M.key(i), none, M.value)
  elseif m == "mf-get" then
    return wrk.format("GET", "/v1/kv/" .. M.key(i), none)
  elseif m == "mf-stale" then
    return wrk.format("GET", "/v1/kv/" .. M.key(i) .. "?consistency=stale", none)
  elseif m == "etcd-put" then
    return wrk.format("POST", "/v3/kv/put", json,
      '{"key":"' .. M.b64(M.key(i)) .. '","value":"' .. value64 .. '"}')
  elseif m == "etcd-get" then
    -- serializable defaults to false: a linearizable read (ReadIndex through the leader)
    return wrk.format("POST", "/v3/kv/range", json, '{"key":"' .. M.b64(M.key(i)) .. '"}')
  elseif m == "etcd-serializable" then
    return wrk.format("POST", "/v3/kv/range", json,
      '{"key":"' .. M.b64(M.key(i)) .. '","serializable":true}')
  elseif m == "nginx" then
    return wrk.format("GET", "/", none)
  end
  error("unknown BENCH_MODE " .. tostring(m))
end

-- One line the shell script parses: "WRKJSON {...}". Latencies in microseconds.
-- wrk counts a response with status > 399 in errors.status (it is also in requests).
function M.report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end

return M
