-- PATCH /v1/bench/d<i> (JSON merge patch: read, merge, WATCH/MULTI/EXEC compare-and-set).
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local doc = require("doc")
local n = 0
local hdrs = { ["X-Api-Key"] = doc.token, ["Content-Type"] = "application/merge-patch+json" }
request = function()
  n = n + 1
  return wrk.format("PATCH", "/v1/bench/d" .. math.random(0, doc.ids - 1), hdrs,
    '{"count":' .. n .. '}')
end
