-- Which VPP tokens expire soon?  Apple VPP tokens last a year and are
-- renewed by hand: this lists those expiring within DAYS (default 60),
-- soonest first, and those already expired.
--   lua5.4 examples/expiry_report.lua [DAYS]
local vpp = require "vpp"

local days = tonumber(arg[1] or "60")
local client = vpp.new_from_env { base_url = os.getenv("GRAPH_URL") }

-- appleId names a location token on every API version (displayName is beta's).
local tokens, err = client:list_tokens { select = { "id", "appleId", "state", "expirationDateTime" } }
client:close() -- all that is needed is listed (on Lua 5.4, `local client <close>` also works)
if not tokens then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

local soon = vpp.filter(tokens, { expires_within = days * 86400 })
table.sort(soon, function(a, b)
  return vpp.parse_time(a.expirationDateTime) < vpp.parse_time(b.expirationDateTime)
end)
local now = os.time()
print(("Expiring within %d days:"):format(days))
for _, t in ipairs(soon) do
  local left = (vpp.parse_time(t.expirationDateTime) - now) / 86400
  print(("  %-24s %s  %5.1f days left  (%s)"):format(t.appleId, t.expirationDateTime:sub(1, 10), left, t.state))
end
local expired = vpp.filter(tokens, { expired = true })
print(("Already expired: %d"):format(#expired))
for _, t in ipairs(expired) do
  print(("  %-24s %s"):format(t.appleId, t.expirationDateTime:sub(1, 10)))
end
