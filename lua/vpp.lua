--- lua-vpp: the Microsoft Graph (Intune) Apple VPP token actions for Lua.
-- The HTTP work and the JSON mirroring are in C (vpp.core); this module is
-- the public face, and the place where pure-Lua helpers join it.
local core = require "vpp.core"

local vpp = {
  _VERSION = core._VERSION,
  null = core.null,
  new = core.new,
  sync_licenses = core.sync_licenses,
  sync_apps = core.sync_apps,
}

--- True when `v` is an error table returned by a vpp call.
function vpp.is_error(v)
  return type(v) == "table" and getmetatable(v) == core.error_mt
end

return vpp
