-- PUT /v1/bench/d<i> with a ~200-byte document, i cycling over $IDS ids.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local doc = require("doc")
local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/bench/d" .. (n % doc.ids),
    { ["X-Api-Key"] = doc.token, ["Content-Type"] = "application/json" }, doc.body)
end
