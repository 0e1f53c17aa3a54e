-- bench/soak.py's load: wrk with one connection per thread, so each thread has one request in
-- flight and knows which request a response answers. Each thread sends its share of the total,
-- every Nth one malformed (rotating through MALFORMED), checks every answer against what its
-- request deserved, and stops itself after its share, writing its id to the file FINISHED.
-- wrk itself runs until -d is over or it gets SIGINT, which bench/soak.py sends once every thread
-- has written its line. done() prints the tallies as "soak <name> <count>" lines.
--
--   wrk -t C -c C -d CAP -s bench/soak.lua URL -- TOTAL THREADS MALFORMED_EVERY FINISHED
--
-- wrk's scripting API: https://github.com/wg/wrk/blob/master/SCRIPTING

local CSV, JSON = "text/csv", "application/json"

-- Valid requests for the demo model (iris, 4 numeric features): each must get a 200.
local VALID = {
  {CSV, "5.1,3.5,1.4,0.2"},
  {CSV, "5.1,3.5,1.4,0.2\n6.2,3.4,5.4,2.3\n5.9,3.0,4.2,1.5"},
  {JSON, '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]}'},
  {JSON, "[[5.9, 3.0, 4.2, 1.5]]"},
}

-- Payload-malformed requests: each must get a 4xx, and the connection is kept for the next.
local MALFORMED = {
  {CSV, "5.1,abc,1.4,0.2"},                      -- a cell that is not a number
  {CSV, "5.1,3.5,1.4"},                          -- a row too narrow
  {CSV, "5.1,3.5,1.4,0.2,9.9"},                  -- a row too wide
  {JSON, '{"instances": [[5.1, 3.5'},            -- JSON cut short
  {"application/x-foo", "5.1,3.5,1.4,0.2"},      -- a content type nobody decodes
  {"application/jsonlines", "[5.1,3.5,1.4,0.2]\n[5.1,"},  -- a broken second line
  {CSV, "", nil},                                -- an empty body
  {CSV, "5.1,3.5,1.4,0.2", "application/x-foo"},  -- an answer type nobody encodes (406)
}

local threads = {}
local created = 0

function setup(thread)
  created = created + 1
  thread:set("id", created)
  table.insert(threads, thread)
end

local id, quota, every, sent, answered, finished = 0, 0, 10, 0, 0, nil
local verified = false  -- wrk calls thread 1's request() once before the run, to count pipelining
local pending = nil  -- the kind of the request in flight on this thread's one connection
local tally = {valid_ok = 0, valid_bad = 0, malformed_ok = 0, malformed_bad = 0, lost = 0}
local statuses = {}
local requests = {}

local function build(entry)
  local headers = {["Content-Type"] = entry[1]}
  if entry[3] then
    headers["Accept"] = entry[3]
  end
  return wrk.format("POST", nil, headers, entry[2])
end

function init(args)
  local total, count = tonumber(args[1]), tonumber(args[2])
  every, finished = tonumber(args[3]), args[4]
  id = wrk.thread:get("id")
  quota = math.floor(total / count) + ((id <= total % count) and 1 or 0)
  sent = id % every  -- threads start at different points of the cycle
  for i, entry in ipairs(VALID) do
    requests["valid" .. i] = build(entry)
  end
  for i, entry in ipairs(MALFORMED) do
    requests["malformed" .. i] = build(entry)
  end
end

function request()
  if id == 1 and not verified then  -- wrk's script_verify_request(), not a request sent
    verified = true
    return requests["valid1"]
  end
  if pending then  -- the last request got no answer: the connection was lost and wrk reconnected
    tally.lost = tally.lost + 1
    wrk.thread:set("lost", tally.lost)
  end
  sent = sent + 1
  if sent % every == 0 then
    pending = "malformed"
    return requests["malformed" .. ((sent / every) % #MALFORMED + 1)]
  end
  pending = "valid"
  return requests["valid" .. (sent % #VALID + 1)]
end

local function publish()  -- where done(), in wrk's main thread, can read them
  for name, count in pairs(tally) do
    wrk.thread:set(name, count)
  end
  local codes = {}
  for code, count in pairs(statuses) do
    table.insert(codes, code .. "=" .. count)
  end
  wrk.thread:set("statuses", table.concat(codes, ","))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if pending == "valid" then
    if status == 200 then tally.valid_ok = tally.valid_ok + 1 else tally.valid_bad = tally.valid_bad + 1 end
  elseif pending == "malformed" then
    if status >= 400 and status < 500 then
      tally.malformed_ok = tally.malformed_ok + 1
    else
      tally.malformed_bad = tally.malformed_bad + 1
    end
  end
  pending = nil
  answered = answered + 1
  if answered >= quota then
    publish()
    local file = io.open(finished, "a")
    file:write(id .. "\n")
    file:close()
    wrk.thread:stop()
  elseif answered % 1000 == 0 then  -- so a run cut short by wrk's -d still reports
    publish()
  end
end

function done(summary, latency, requests)
  local totals = {valid_ok = 0, valid_bad = 0, malformed_ok = 0, malformed_bad = 0, lost = 0}
  local statuses = {}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
    for code, count in string.gmatch(thread:get("statuses") or "", "(%d+)=(%d+)") do
      statuses[code] = (statuses[code] or 0) + tonumber(count)
    end
  end
  for name, count in pairs(totals) do
    io.write(string.format("soak %s %d\n", name, count))
  end
  for code, count in pairs(statuses) do
    io.write(string.format("soak status_%s %d\n", code, count))
  end
  local errors = summary.errors
  io.write(string.format("soak connect_errors %d\nsoak read_errors %d\nsoak write_errors %d\n",
    errors.connect, errors.read, errors.write))
  io.write(string.format("soak timeouts %d\nsoak requests %d\nsoak duration_us %d\n",
    errors.timeout, summary.requests, summary.duration))
  io.write(string.format("soak p50_us %d\nsoak p99_us %d\n", latency:percentile(50), latency:percentile(99)))
end
