-- The vppToken entity and its enums as each Graph API version defines them.
-- The fake stores tokens with beta's properties and serves each version
-- only its own, so a client that reads a beta-only property on v1.0 sees
-- nil, as it would on a real tenant.
--
-- Sources (Graph's own metadata, as generated into the SDKs, and the
-- resource pages):
--   v1.0: microsoftgraph/msgraph-sdk-go models/vpp_token.go, vpp_token_state.go;
--         microsoft-graph-docs-contrib api-reference/v1.0/resources/intune-onboarding-vpptoken.md
--         (12 properties; the state enum has no duplicateLocationId).
--   beta: microsoftgraph/msgraph-beta-sdk-go models/vpp_token.go;
--         microsoft-graph-docs-contrib api-reference/beta/resources/intune-onboarding-vpptoken.md
--         (adds tokenActionResults, dataSharingConsentGranted, displayName,
--         locationName, claimTokenManagementFromExternalMdm, roleScopeTagIds,
--         lastAppCount, appleDeviceAppDeliveryProtocolType).
--   vppTokenLicenseSummary (beta getLicensesForApp):
--         api-reference/beta/resources/intune-onboarding-vpptokenlicensesummary.md
-- Runs inside nginx (LuaJIT) and under plain Lua alike.
local M = {}

local v1 = { "id", "organizationName", "vppTokenAccountType", "appleId", "expirationDateTime",
  "lastSyncDateTime", "token", "lastModifiedDateTime", "state", "lastSyncStatus",
  "automaticallyUpdateApps", "countryOrRegion" }

local beta = { "tokenActionResults", "dataSharingConsentGranted", "displayName", "locationName",
  "claimTokenManagementFromExternalMdm", "roleScopeTagIds", "lastAppCount",
  "appleDeviceAppDeliveryProtocolType" }
for i = #v1, 1, -1 do table.insert(beta, 1, v1[i]) end

M.properties = { ["v1.0"] = v1, beta = beta }

-- Property name -> true, per version.
M.known = {}
for version, list in pairs(M.properties) do
  M.known[version] = {}
  for _, p in ipairs(list) do M.known[version][p] = true end
end

-- Settable by PATCH (Graph computes the others: state, sync times...).
M.writable = { organizationName = true, vppTokenAccountType = true, appleId = true,
  expirationDateTime = true, token = true, automaticallyUpdateApps = true, countryOrRegion = true,
  dataSharingConsentGranted = true, displayName = true, locationName = true,
  claimTokenManagementFromExternalMdm = true, roleScopeTagIds = true,
  appleDeviceAppDeliveryProtocolType = true }

local state_v1 = { "unknown", "valid", "expired", "invalid", "assignedToExternalMDM" }
local state_beta = { "unknown", "valid", "expired", "invalid", "assignedToExternalMDM", "duplicateLocationId" }
local sync_status = { "none", "inProgress", "completed", "failed" }
local account = { "business", "education" }

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

M.enums = {
  ["v1.0"] = { state = set(state_v1), lastSyncStatus = set(sync_status), vppTokenAccountType = set(account) },
  beta = { state = set(state_beta), lastSyncStatus = set(sync_status), vppTokenAccountType = set(account),
    appleDeviceAppDeliveryProtocolType = set { "default", "mobileDeviceManagement", "declarativeDeviceManagement" } },
}

M.booleans = { automaticallyUpdateApps = true, dataSharingConsentGranted = true,
  claimTokenManagementFromExternalMdm = true }

--- The token as `version` serves it: only its properties; an enum member
-- the version does not define is served as "unknown" (a v1.0 client reads
-- a beta-only state as the enum's first member).
function M.project(tok, version)
  local out, enums = { ["@odata.type"] = "#microsoft.graph.vppToken" }, M.enums[version]
  for _, p in ipairs(M.properties[version]) do
    local v = tok[p]
    if enums[p] and v ~= nil and not enums[p][v] then v = "unknown" end
    out[p] = v
  end
  return out
end

return M
