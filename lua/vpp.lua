--- lua-vpp: the Microsoft Graph (Intune) Apple VPP token actions for Lua.
-- The HTTP work, the concurrency and the JSON mirroring are in C
-- (vpp.core); the helpers on token tables are pure Lua (vpp.tokens,
-- vpp.sync).  This module is the public face.
local core = require "vpp.core"
local tokens = require "vpp.tokens"
local env = require "vpp.env"
require "vpp.sync" -- adds sync_all and wait_for_sync to every client

local vpp = {
  _VERSION = core._VERSION,
  null = core.null,
  new = core.new,
  sync_licenses = core.sync_licenses,
  sync_apps = core.sync_apps,
  revoke_licenses = core.revoke_licenses,
  sync_license_counts = core.sync_license_counts,
  licenses_for_app = core.licenses_for_app,
  update_token = core.update_token,
  filter = tokens.filter,
  count_by = tokens.count_by,
  parse_time = tokens.parse_time,
  clouds = core.clouds,
  codes = core.codes,
}

--- A client whose credentials come from the environment (AZURE_*,
-- GRAPH_ACCESS_TOKEN) where opts gives none.
function vpp.new_from_env(opts)
  return env.new_from_env(core.new, opts)
end

--- A fleet of tenants, from a table shaped as the tenants file is
-- ({ defaults = {...}, tenants = { { name, tenant_id, ... }, ... } }); opts
-- are client settings every tenant starts from.  Raises for a bad table.
function vpp.fleet(spec, opts)
  local fleet = require "vpp.fleet"
  return fleet.new(fleet.normalize(spec, { name = "vpp.fleet", private = true }), opts)
end

--- A fleet from a YAML tenants file; raises one clear error for a bad file.
function vpp.fleet_from_file(path, opts)
  local fleet = require "vpp.fleet"
  return fleet.new(fleet.read_file(path), opts, function(t)
    return ("tenants file %s, tenant '%s'%s"):format(path, t.name, t.line and (" (line %d)"):format(t.line) or "")
  end)
end

--- True when `v` is an error table returned by a vpp call.
function vpp.is_error(v)
  return type(v) == "table" and getmetatable(v) == core.error_mt
end

return vpp
