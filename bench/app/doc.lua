-- Shared by the wrk scripts: a ~200-byte document and the API key from $TOKEN.
local M = {}
M.token = os.getenv("TOKEN") or ""
M.body = '{"name":"Citadel benchmark document","owner":"bench","tags":["alpha","beta","gamma"],'
  .. '"count":12345,"active":true,"ratio":0.75,"note":"two hundred bytes of JSON, give or take a few"}'
M.ids = tonumber(os.getenv("IDS") or "1000")
return M
