-- wrk script: POST /api/v2/wg/key/exchange with a fresh valid WireGuard public key every request.
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local last = "AEIMQUYcgkosw480"
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

local function key()
  local t = {}
  for i = 1, 42 do
    local n = math.random(1, 64)
    t[i] = chars:sub(n, n)
  end
  local n = math.random(1, 16)
  t[43] = last:sub(n, n)
  t[44] = "="
  return table.concat(t)
end

request = function()
  local body = '{"domain":"ffmuc_welt","public_key":"' .. key() .. '"}'
  return wrk.format("POST", "/api/v2/wg/key/exchange", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

local non200 = 0
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors %d, req/s %.0f, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
