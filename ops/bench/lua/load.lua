-- wrk script: one request per call, key uniformly random over [0, BENCH_KEYS).
-- BENCH_MODE: mf-put | mf-get | mf-stale | etcd-put | etcd-get | etcd-serializable | nginx.
-- No response() hook (it would make wrk parse every body); errors come from wrk's counters.
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local common = require("common")

local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local id = wrk.thread:get("id") or 0
  math.randomseed(os.time() * 1000 + id * 7919 + math.floor(os.clock() * 1e6))
  for _ = 1, 10 do math.random() end
end

function request()
  return common.request(math.random(0, common.keys - 1))
end

function done(summary, latency, requests)
  common.report(summary, latency)
end
