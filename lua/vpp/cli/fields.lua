--- The vppToken properties the command asks Graph for ($select), per API
-- version: what each output shows or judges, never `token` (the Apple
-- token itself, a credential that then never leaves Graph).  The lists are
-- Graph's (see fake-graph/schema.lua for the sources): v1.0 has 12
-- properties, beta more.
local M = {}

local v1 = { "id", "organizationName", "vppTokenAccountType", "appleId", "expirationDateTime",
  "lastSyncDateTime", "lastModifiedDateTime", "state", "lastSyncStatus", "automaticallyUpdateApps",
  "countryOrRegion" }
local beta_only = { "tokenActionResults", "dataSharingConsentGranted", "displayName", "locationName",
  "claimTokenManagementFromExternalMdm", "roleScopeTagIds", "lastAppCount", "appleDeviceAppDeliveryProtocolType" }

local known = { ["v1.0"] = {}, beta = {} }
for _, p in ipairs(v1) do known["v1.0"][p], known.beta[p] = true, true end
for _, p in ipairs(beta_only) do known.beta[p] = true end

-- What the table, CSV and check use: names, state, sync, expiry, and
-- (beta) the apps the last sync found.
local shown = { "id", "displayName", "appleId", "organizationName", "vppTokenAccountType", "state",
  "lastSyncStatus", "lastSyncDateTime", "expirationDateTime", "lastAppCount" }

local function of(version, list)
  local k = known[version]
  if not k then return nil end -- another version: whole tokens, redacted
  local out = {}
  for _, p in ipairs(list) do
    if k[p] then out[#out + 1] = p end
  end
  return out
end

--- The $select of a list for `format` ("json": every property but token).
function M.select(version, output)
  if output == "json" then
    local all = {}
    for _, p in ipairs(v1) do all[#all + 1] = p end
    if version == "beta" then
      for _, p in ipairs(beta_only) do all[#all + 1] = p end
    end
    return of(version, all)
  end
  return of(version, shown)
end

return M
