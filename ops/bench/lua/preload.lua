-- wrk script: writes every key of [0, BENCH_KEYS) exactly once, then stops.
-- BENCH_MODE: mf-put | etcd-put. BENCH_THREADS must equal wrk's -t.
-- Thread t of T writes keys t, t+T, t+2T, ... Once it has sent its share, delay() parks
-- its connections (a connection whose delay() ran just before the last key was taken
-- writes the thread's first key again). When every request it sent has its response, it
-- stops its loop and creates the file BENCH_DONE_DIR/done.<t>. Every 1000 responses it
-- rewrites BENCH_DONE_DIR/progress.<t>, so the caller can tell a stall (a request lost
-- to a socket error never gets a response). wrk's main thread sleeps for the whole -d,
-- so the caller sends wrk SIGINT once every done file exists (or progress stalls); wrk
-- then prints its summary.
-- wrk calls request() once on thread 0's state before the run, to check the script;
-- that call is not sent, so it must not use up a key.
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local common = require("common")

local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local done_dir = os.getenv("BENCH_DONE_DIR") or "/tmp"

local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local id, nexti, sent, answered, failed, checked = 0, 0, 0, 0, 0, false

function init(args)
  id = wrk.thread:get("id") or 0
  nexti = id
end

function delay()
  if nexti < common.keys then return 0 end
  return 3600000 -- share sent: park this connection
end

function request()
  if id == 0 and not checked then
    checked = true -- wrk's check call, before the run: not sent
    return common.request(id)
  end
  sent = sent + 1
  if nexti >= common.keys then
    -- delay() said 0 before another connection took the last key: write a key again
    return common.request(id)
  end
  local i = nexti
  nexti = nexti + nthreads
  return common.request(i)
end

local function note(name, text)
  local f = io.open(done_dir .. "/" .. name .. "." .. id, "w")
  if f then f:write(text, "\n"); f:close() end
end

function response(status, headers, body)
  answered = answered + 1
  if status < 200 or status > 299 then failed = failed + 1 end
  if answered % 1000 == 0 then note("progress", answered) end
  if nexti >= common.keys and answered >= sent then
    note("done", answered .. " " .. failed)
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  common.report(summary, latency)
end
