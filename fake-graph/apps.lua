-- The tenant's mobile apps as beta deviceAppManagement/mobileApps serves
-- them: the VPP apps (iOS and macOS) with their licence counts and the VPP
-- token each uses, among apps of other kinds, as in a real tenant.
--
-- Sources (Graph's metadata as the docs give it):
--   microsoft-graph-docs-contrib api-reference/beta/resources/intune-shared-mobileapp.md
--     (the base type's properties),
--   .../beta/resources/intune-apps-iosvppapp.md and intune-apps-macosvppapp.md
--     (usedLicenseCount, totalLicenseCount, vppTokenId, vppTokenAppleId,
--     vppTokenOrganizationName, vppTokenAccountType, vppTokenDisplayName,
--     bundleId, ...; macOS has no applicableDeviceType),
--   .../beta/api/intune-apps-iosvppapp-list.md (filtered with isof()).
-- Graph's $select on mobileApps names the base type's properties; a derived
-- type's (usedLicenseCount) is 400 there, so clients read whole VPP apps.
-- Runs inside nginx (LuaJIT) and under plain Lua alike.
local M = {}

local base = { "id", "displayName", "description", "publisher", "largeIcon", "createdDateTime",
  "lastModifiedDateTime", "isFeatured", "privacyInformationUrl", "informationUrl", "owner", "developer",
  "notes", "uploadState", "publishingState", "isAssigned", "roleScopeTagIds", "dependentAppCount",
  "supersedingAppCount", "supersededAppCount" }

local vpp_common = { "usedLicenseCount", "totalLicenseCount", "releaseDateTime", "appStoreUrl", "licensingType",
  "vppTokenOrganizationName", "vppTokenAccountType", "vppTokenAppleId", "vppTokenDisplayName", "bundleId",
  "vppTokenId", "revokeLicenseActionResults" }

local function with(list, extra)
  local out = {}
  for _, p in ipairs(list) do out[#out + 1] = p end
  for _, p in ipairs(extra) do out[#out + 1] = p end
  return out
end

-- Properties per type (without the namespace).
M.types = {
  iosVppApp = with(with(base, vpp_common), { "applicableDeviceType" }),
  macOsVppApp = with(base, vpp_common),
  iosStoreApp = with(base, { "bundleId", "appStoreUrl", "applicableDeviceType", "minimumSupportedOperatingSystem" }),
  win32LobApp = with(base, { "committedContentVersion", "fileName", "size", "installCommandLine" }),
}

local function set(list)
  local s = {}
  for _, p in ipairs(list) do s[p] = true end
  return s
end
M.base_known = set(base)
local known = {}
for name, props in pairs(M.types) do known[name] = set(props) end

--- The app as Graph serves it: its type's properties only.
function M.project(app, select)
  local t = app.type
  local out = { ["@odata.type"] = "#microsoft.graph." .. t }
  for _, p in ipairs(select or M.types[t]) do
    if known[t][p] then out[p] = app[p] end
  end
  out.id = app.id
  return out
end

-- ---- $filter: isof('microsoft.graph.T'), p eq 'v', or, and, parentheses --

local function tokenize(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif c == "(" or c == ")" or c == "," then
      out[#out + 1] = c
      i = i + 1
    elseif c == "'" then
      local j, value = i + 1, {}
      while true do
        local d = s:sub(j, j)
        if d == "" then return nil end
        if d == "'" then
          if s:sub(j + 1, j + 1) ~= "'" then break end
          j = j + 1
        end
        value[#value + 1] = d
        j = j + 1
      end
      out[#out + 1] = { str = table.concat(value) }
      i = j + 1
    else
      local word = s:match("^[%w_.@/]+", i)
      if not word then return nil end
      out[#out + 1] = word
      i = i + #word
    end
  end
  return out
end

--- A predicate on stored apps for the filter, or nil, Graph's message.
function M.parse_filter(s)
  local toks = tokenize(s)
  if not toks then return nil, "Syntax error in $filter." end
  local pos = 1
  local function peek() return toks[pos] end
  local function take() pos = pos + 1 return toks[pos - 1] end
  local expr
  local function primary()
    local t = take()
    if t == "(" then
      local e, err = expr()
      if not e then return nil, err end
      if take() ~= ")" then return nil, "Syntax error in $filter: ')' expected." end
      return e
    elseif t == "isof" then
      if take() ~= "(" then return nil, "Syntax error in $filter." end
      local name = take()
      if take() ~= ")" or type(name) ~= "table" then return nil, "Syntax error in $filter." end
      local typ = name.str:match("^microsoft%.graph%.(%w+)$")
      if not typ or not M.types[typ] then
        return nil, ("The type '%s' is not defined."):format(name.str)
      end
      return function(app) return app.type == typ end
    elseif type(t) == "string" and t:match("^%a") then
      if take() ~= "eq" then return nil, "Syntax error in $filter: only eq is supported." end
      local v = take()
      if not M.base_known[t] and t ~= "bundleId" and t ~= "vppTokenId" then
        return nil, ("Could not find a property named '%s' on type 'microsoft.graph.mobileApp'."):format(t)
      end
      local want
      if type(v) == "table" then want = v.str
      elseif v == "true" or v == "false" then want = v
      else return nil, "Syntax error in $filter." end
      return function(app) return tostring(app[t]) == want end
    end
    return nil, "Syntax error in $filter."
  end
  local function conj()
    local left, err = primary()
    if not left then return nil, err end
    while peek() == "and" do
      take()
      local right, e2 = primary()
      if not right then return nil, e2 end
      local l = left
      left = function(app) return l(app) and right(app) end
    end
    return left
  end
  expr = function()
    local left, err = conj()
    if not left then return nil, err end
    while peek() == "or" do
      take()
      local right, e2 = conj()
      if not right then return nil, e2 end
      local l = left
      left = function(app) return l(app) or right(app) end
    end
    return left
  end
  local e, err = expr()
  if not e then return nil, err end
  if pos <= #toks then return nil, "Syntax error in $filter: unexpected '" .. tostring(toks[pos]) .. "'." end
  return e
end

-- ---- the seeded tenant's apps -----------------------------------------------

local names = { { "Notes", "com.example.notes" }, { "Maps Pro", "com.example.maps" },
  { "Keynote", "com.apple.iwork.keynote" }, { "Slack", "com.tinyspeck.chatlyio" },
  { "Outlook", "com.microsoft.Office.Outlook" }, { "Xcode", "com.apple.dt.Xcode" } }

--- A stored VPP app for token tok (fields given override the defaults).
function M.vpp_app(tok, fields, n, stamp)
  local app = {
    type = "iosVppApp", id = fields.id or ("%08x-0000-4000-8000-%012x"):format(n, n),
    displayName = "App " .. n, description = "", publisher = "Example Inc.",
    createdDateTime = stamp, lastModifiedDateTime = stamp, isFeatured = false, owner = "", developer = "",
    notes = "", uploadState = 1, publishingState = "published", isAssigned = true, roleScopeTagIds = { "0" },
    dependentAppCount = 0, supersedingAppCount = 0, supersededAppCount = 0,
    usedLicenseCount = 0, totalLicenseCount = 0, releaseDateTime = stamp,
    appStoreUrl = "https://apps.apple.com/app/id" .. (100000 + n),
    licensingType = { supportsUserLicensing = true, supportsDeviceLicensing = true,
      supportUserLicensing = true, supportDeviceLicensing = true },
    applicableDeviceType = { iPad = true, iPhoneAndIPod = true },
    vppTokenOrganizationName = tok and tok.organizationName, vppTokenAccountType = tok and tok.vppTokenAccountType,
    vppTokenAppleId = tok and tok.appleId, vppTokenDisplayName = tok and tok.displayName,
    vppTokenId = tok and tok.id, bundleId = "com.example.app" .. n, revokeLicenseActionResults = {},
  }
  for k, v in pairs(fields) do app[k] = v end
  if app.type == "macOsVppApp" then app.applicableDeviceType = nil end
  return app
end

--- Apps for seeded tokens: up to two VPP apps per token (none over 80 %
-- used, so a seeded tenant's check is quiet about licences), and two apps
-- of other kinds that a VPP filter must leave out.
function M.generate(tokens, stamp)
  local out, n = {}, 0
  for i, tok in ipairs(tokens) do
    for k = 1, i % 3 do
      n = n + 1
      local name = names[(i + k) % #names + 1]
      local total = 20 + (i * 37 + k * 11) % 200
      out[#out + 1] = M.vpp_app(tok, { displayName = name[1], bundleId = name[2],
        type = k == 2 and "macOsVppApp" or "iosVppApp", totalLicenseCount = total,
        usedLicenseCount = math.floor(total * ((i * 13 + k) % 80) / 100) }, n, stamp)
    end
  end
  out[#out + 1] = { type = "iosStoreApp", id = "5707e1a0-0000-4000-8000-000000000001", displayName = "Company Portal",
    bundleId = "com.microsoft.CompanyPortal", publisher = "Microsoft", createdDateTime = stamp }
  out[#out + 1] = { type = "win32LobApp", id = "5707e1a0-0000-4000-8000-000000000002", displayName = "7-Zip",
    publisher = "Igor Pavlov", fileName = "7z.intunewin", createdDateTime = stamp }
  return out
end

return M
