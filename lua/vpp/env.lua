--- vpp.new_from_env: credentials from the environment, by the Azure SDK's
-- conventions, so that the CI secrets people already have just work.
local M = {}

local credentials = { "access_token", "client_secret", "client_certificate", "managed_identity" }

M.variables = "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH),"
  .. " or GRAPH_ACCESS_TOKEN"

--- Settings from opts (which win) completed from the environment:
-- GRAPH_ACCESS_TOKEN first, else AZURE_CLIENT_SECRET or
-- AZURE_CLIENT_CERTIFICATE_PATH (+ AZURE_CLIENT_CERTIFICATE_PASSWORD) with
-- AZURE_TENANT_ID and AZURE_CLIENT_ID; AZURE_AUTHORITY_HOST for the
-- authority.  Raises, naming the variables, when there is no credential.
function M.settings(opts, getenv)
  getenv = getenv or os.getenv
  local function env(name)
    local v = getenv(name)
    if v ~= nil and v ~= "" then return v end
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  local explicit = false
  for _, k in ipairs(credentials) do
    if o[k] ~= nil and o[k] ~= false then explicit = true end
  end
  if not explicit then
    if env("GRAPH_ACCESS_TOKEN") then
      o.access_token = env("GRAPH_ACCESS_TOKEN")
    elseif env("AZURE_CLIENT_SECRET") then
      o.client_secret = env("AZURE_CLIENT_SECRET")
    elseif env("AZURE_CLIENT_CERTIFICATE_PATH") then
      o.client_certificate = env("AZURE_CLIENT_CERTIFICATE_PATH")
      if o.client_key_password == nil then o.client_key_password = env("AZURE_CLIENT_CERTIFICATE_PASSWORD") end
    else
      error("vpp: no credentials: set " .. M.variables, 0)
    end
  end
  if o.client_secret or o.client_certificate then
    if o.tenant_id == nil then o.tenant_id = env("AZURE_TENANT_ID") end
    if o.client_id == nil then o.client_id = env("AZURE_CLIENT_ID") end
    if not o.tenant_id or not o.client_id then
      error("vpp: no credentials: set AZURE_TENANT_ID and AZURE_CLIENT_ID with the client secret or certificate", 0)
    end
  end
  if o.authority == nil and o.access_token == nil then o.authority = env("AZURE_AUTHORITY_HOST") end
  return o
end

function M.new_from_env(new, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new_from_env' (opts must be a table, got " .. type(opts) .. ")", 3)
  end
  return new(M.settings(opts))
end

return M
