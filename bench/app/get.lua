-- GET /v1/bench/d<i>, i random over $IDS ids (written by put.lua first).
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local doc = require("doc")
local hdrs = { ["X-Api-Key"] = doc.token }
if os.getenv("CLOSE") == "1" then hdrs["Connection"] = "close" end
if os.getenv("STALE") == "1" then hdrs["X-Citadel-Read"] = "stale" end
request = function()
  return wrk.format("GET", "/v1/bench/d" .. math.random(0, doc.ids - 1), hdrs)
end
