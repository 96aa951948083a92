-- wrk script of bench/load.py (lua_script() fills in the placeholders): a bounded burst of
-- POST __PATH__; see the docstring of bench/load.py for how the count is bounded.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()  -- CLOCK_REALTIME, as Python's time.time()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

wrk.method = "POST"
wrk.path = "__PATH__"
wrk.body = [==[__BODY__]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"

local threads = {}
local thread_count = 0
function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local req
function init(args)
  local total, nthreads, conns = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  limit = math.floor(total / nthreads) + ((id < total % nthreads) and 1 or 0)
  issued = 0  -- wrk asks delay() before every request, a connection's first one included
  responses = 0
  statuses = {}
  req = wrk.format()
end

function request()
  if first_sent == nil then first_sent = now() end
  return req
end

function delay()
  if issued < limit then
    issued = issued + 1
    return 0
  end
  return 3600000  -- this thread's share is issued: park the connection
end

function response(status, headers, body)
  local t = now()
  responses = responses + 1
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 and first_202 == nil then first_202 = t end
  last_done = t
  if responses == limit then
    io.write(string.format("BENCH_THREAD_DONE %d\n", id))
    io.flush()
    wrk.thread:stop()
  end
end

local function num(x)
  if x == nil then return "null" end
  return string.format("%.6f", x)
end

function done(summary, latency, requests)
  local first_sent_all, first_202_all, last_all, responses_all = nil, nil, nil, 0
  local counts = {}
  for _, t in ipairs(threads) do
    local fs, f2, ld = t:get("first_sent"), t:get("first_202"), t:get("last_done")
    if fs and (first_sent_all == nil or fs < first_sent_all) then first_sent_all = fs end
    if f2 and (first_202_all == nil or f2 < first_202_all) then first_202_all = f2 end
    if ld and (last_all == nil or ld > last_all) then last_all = ld end
    responses_all = responses_all + (t:get("responses") or 0)
    for code, n in pairs(t:get("statuses") or {}) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"responses": %d, "statuses": {%s}, "first_request": %s, "first_202": %s, '
    .. '"last_response": %s, "p50_us": %d, "p99_us": %d, "max_us": %d, "errors": '
    .. '{"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    responses_all, table.concat(parts, ", "), num(first_sent_all), num(first_202_all),
    num(last_all), latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout))
  io.flush()
end
