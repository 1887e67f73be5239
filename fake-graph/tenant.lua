-- A realistic, deterministic Intune tenant for the fake Graph server: VPP
-- tokens in mixed states, some expiring soon, some already expired.
-- Runs inside nginx (LuaJIT) and under plain Lua alike.
local M = {}

local function lcg(seed)
  local s = seed % 2147483647
  if s <= 0 then s = s + 2147483646 end
  return function(n)
    s = (s * 16807) % 2147483647
    return s % n
  end
end

-- Graph's timestamp style: seven fractional digits and a Z.
function M.timestamp(t)
  local frac = math.floor((t % 1) * 1e7)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%07dZ", frac)
end

local function uuid(rand)
  local hex = "0123456789abcdef"
  local out = {}
  for i = 1, 32 do
    local k = rand(16) + 1
    out[#out + 1] = hex:sub(k, k)
    if i == 8 or i == 12 or i == 16 or i == 20 then out[#out + 1] = "-" end
  end
  return table.concat(out)
end

local cities = { "Lisbon", "Oslo", "Denver", "Osaka", "Lyon", "Austin", "Leeds", "Perth",
  "Quito", "Turku", "Graz", "Cork", "Porto", "Malmo", "Tempe", "Hilo" }
local orgs = { "Northwind Schools", "Contoso Retail", "Fabrikam Health", "Tailspin Labs" }

-- Weighted choices, so a tenant of a few dozen tokens shows every case.
local states = { "valid", "valid", "valid", "valid", "valid", "valid", "valid", "expired",
  "invalid", "assignedToExternalMDM", "duplicateLocationId" }
local statuses = { "completed", "completed", "completed", "completed", "failed", "inProgress", "none" }

function M.generate(n, seed, now)
  local rand = lcg(seed or 1)
  now = now or os.time()
  local tokens = {}
  for i = 1, n do
    local state = states[rand(#states) + 1]
    local days
    if state == "expired" then
      days = -(rand(60) + 1)
    else
      local r = rand(10)
      if r == 0 then days = rand(7) + 0.5        -- critical soon
      elseif r == 1 then days = rand(23) + 7.5   -- warning soon
      else days = rand(300) + 31 end
    end
    local expires = now + days * 86400 + rand(86400)
    -- Intune syncs each token about daily; every eighth is days behind.
    local behind = rand(7 * 86400)
    local synced = now - (i % 8 == 0 and behind + 3 * 86400 or behind / 7) - 60
    local city = cities[(i - 1) % #cities + 1]
    tokens[i] = {
      ["@odata.type"] = "#microsoft.graph.vppToken",
      id = uuid(rand),
      organizationName = orgs[(i - 1) % #orgs + 1],
      vppTokenAccountType = (i % 3 == 0) and "education" or "business",
      appleId = string.format("vpp-%03d@%s.example.com", i, city:lower()),
      expirationDateTime = M.timestamp(expires),
      lastSyncDateTime = M.timestamp(synced),
      token = "",
      lastModifiedDateTime = M.timestamp(synced - 3600),
      state = state,
      tokenActionResults = { {
        ["@odata.type"] = "#microsoft.graph.vppTokenActionResult",
        actionName = "syncLicenses", actionState = "done",
        startDateTime = M.timestamp(synced), lastUpdatedDateTime = M.timestamp(synced + 42),
      } },
      lastSyncStatus = statuses[rand(#statuses) + 1],
      automaticallyUpdateApps = (i % 2 == 0),
      countryOrRegion = "us",
      dataSharingConsentGranted = true,
      displayName = string.format("%s %s", city, (i > #cities) and tostring(math.ceil(i / #cities)) or "HQ"),
      locationName = city .. " campus",
      claimTokenManagementFromExternalMdm = false,
      roleScopeTagIds = { "0" },
      lastAppCount = (i * 7) % 41, -- not from rand: the ids stay as before
      appleDeviceAppDeliveryProtocolType = "mobileDeviceManagement",
    }
  end
  return tokens
end

return M
