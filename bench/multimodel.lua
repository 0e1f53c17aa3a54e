-- bench/multimodel.py: each request goes to one of the paths in PATHS_FILE, chosen at random
-- (a model per request), with the CSV row in BODY.
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do
  paths[#paths + 1] = line
end
local body = os.getenv("BODY")
local headers = { ["Content-Type"] = "text/csv" }

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  return wrk.format("POST", paths[math.random(#paths)], headers, body)
end
