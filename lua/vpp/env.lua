--- vpp.new_from_env: credentials from the environment, picked as Azure
-- Identity's DefaultAzureCredential picks them, so that what a server,
-- a pod or a CI runner already has just works.
local M = {}

local credentials = { "access_token", "client_secret", "client_certificate", "client_assertion_file",
  "managed_identity" }

--- The kinds, in the order they are tried; opts.credential (the command's
-- --credential) names one to use alone.
M.kinds = { "token", "env", "workload", "managed-identity" }

M.variables = "GRAPH_ACCESS_TOKEN; or AZURE_TENANT_ID and AZURE_CLIENT_ID with AZURE_CLIENT_SECRET,"
  .. " AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE; or run where a managed identity is"
  .. " (App Service, Azure Arc: IDENTITY_ENDPOINT; an Azure VM: credential managed-identity)"

local function truthy(v)
  return v ~= nil and (v:lower() == "true" or v == "1")
end

-- Each kind: whether its variables are there, and the settings they make
-- (or nil, what is missing).
local function kinds(env)
  local function app(o, what)
    o.tenant_id, o.client_id = env("AZURE_TENANT_ID"), env("AZURE_CLIENT_ID")
    if not o.tenant_id or not o.client_id then return nil, "set AZURE_TENANT_ID and AZURE_CLIENT_ID with " .. what end
    return o
  end
  return {
    token = {
      present = function() return env("GRAPH_ACCESS_TOKEN") ~= nil end,
      settings = function()
        if not env("GRAPH_ACCESS_TOKEN") then return nil, "set GRAPH_ACCESS_TOKEN" end
        return { access_token = env("GRAPH_ACCESS_TOKEN") }
      end,
    },
    env = {
      present = function() return env("AZURE_CLIENT_SECRET") ~= nil or env("AZURE_CLIENT_CERTIFICATE_PATH") ~= nil end,
      settings = function()
        if env("AZURE_CLIENT_SECRET") then
          return app({ client_secret = env("AZURE_CLIENT_SECRET") }, "AZURE_CLIENT_SECRET")
        elseif env("AZURE_CLIENT_CERTIFICATE_PATH") then
          return app({ client_certificate = env("AZURE_CLIENT_CERTIFICATE_PATH"),
            client_key_password = env("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            send_certificate_chain = truthy(env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")) or nil },
            "AZURE_CLIENT_CERTIFICATE_PATH")
        end
        return nil, "set AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, with AZURE_TENANT_ID and AZURE_CLIENT_ID"
      end,
    },
    workload = {
      present = function() return env("AZURE_FEDERATED_TOKEN_FILE") ~= nil end,
      settings = function()
        if not env("AZURE_FEDERATED_TOKEN_FILE") then
          return nil, "set AZURE_FEDERATED_TOKEN_FILE, with AZURE_TENANT_ID and AZURE_CLIENT_ID"
        end
        return app({ client_assertion_file = env("AZURE_FEDERATED_TOKEN_FILE") }, "AZURE_FEDERATED_TOKEN_FILE")
      end,
    },
    ["managed-identity"] = {
      -- The Azure VM's metadata endpoint has no variable: only asked for.
      present = function() return env("IDENTITY_ENDPOINT") ~= nil end,
      settings = function()
        local endpoint, client_id = env("IDENTITY_ENDPOINT"), env("AZURE_CLIENT_ID")
        local mi = {}
        if endpoint and env("IDENTITY_HEADER") then
          mi = { source = "app_service", endpoint = endpoint, identity_header = env("IDENTITY_HEADER"),
            client_id = client_id }
        elseif endpoint and env("IMDS_ENDPOINT") then
          if client_id then
            return nil, "Azure Arc has only the system-assigned identity: unset AZURE_CLIENT_ID"
          end
          mi = { source = "arc", endpoint = endpoint, arc_key_dir = env("VPP_ARC_KEY_DIR") }
        elseif endpoint then
          return nil, "IDENTITY_ENDPOINT needs IDENTITY_HEADER (App Service) or IMDS_ENDPOINT (Azure Arc)"
        else
          mi.client_id = client_id
        end
        return { managed_identity = next(mi) and mi or true }
      end,
    },
  }
end

--- Settings from opts (which win) completed from the environment: with
-- no credential in opts, the first kind of M.kinds whose variables are
-- set (or opts.credential's kind alone); AZURE_AUTHORITY_HOST for the
-- authority.  Raises, naming the variables, when there is no credential.
function M.settings(opts, getenv)
  getenv = getenv or os.getenv
  local function env(name)
    local v = getenv(name)
    if v ~= nil and v ~= "" then return v end
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  local wanted = o.credential
  o.credential = nil
  local explicit = false
  for _, k in ipairs(credentials) do
    if o[k] ~= nil and o[k] ~= false then explicit = true end
  end
  local all = kinds(env)
  if wanted ~= nil and not all[wanted] then
    error(("vpp: opts.credential must be one of %s, got %s"):format(table.concat(M.kinds, ", "), tostring(wanted)), 0)
  end
  if not explicit then
    local kind = wanted
    if not kind then
      for _, k in ipairs(M.kinds) do
        if all[k].present() then
          kind = k
          break
        end
      end
    end
    if not kind then error("vpp: no credentials: set " .. M.variables, 0) end
    local got, missing = all[kind].settings()
    if not got then error(("vpp: credential %s: %s"):format(kind, missing), 0) end
    for k, v in pairs(got) do
      if o[k] == nil then o[k] = v end
    end
  end
  -- An app's credential given without its ids takes them from the environment.
  if o.client_secret or o.client_certificate or o.client_assertion_file then
    if o.tenant_id == nil then o.tenant_id = env("AZURE_TENANT_ID") end
    if o.client_id == nil then o.client_id = env("AZURE_CLIENT_ID") end
  end
  if o.authority == nil and o.access_token == nil and o.managed_identity == nil then
    o.authority = env("AZURE_AUTHORITY_HOST")
  end
  return o
end

function M.new_from_env(new, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'new_from_env' (opts must be a table, got " .. type(opts) .. ")", 3)
  end
  return new(M.settings(opts))
end

return M
