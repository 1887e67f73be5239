-- Helpers for the specs: the fake server, clients pointed at it, and
-- checks that a secret appears nowhere in a value.
local launcher = require "launcher"
local sys = require "sys"
local vpp = require "vpp"

local M = {}

--- The Lua under test: as the Makefile names it (5.1 ... 5.4, or jit), its
-- module ABI (install paths: 5.1 for LuaJIT) and its interpreter.
M.LUA_ABI = _VERSION:match("%d+%.%d+")
M.LUA_VERSION = type(jit) == "table" and "jit" or M.LUA_ABI
M.LUA = type(jit) == "table" and "luajit" or "lua" .. M.LUA_ABI

M.TOKEN = "eyJ0eXAi.SECRET-bearer-token-d41d8cd9"

--- How much slower than plain the module runs here: under valgrind
-- (make valgrind) or ASan (make asan), timing bounds of specs are widened
-- by it; the plain suite (make test) keeps the bounds as written.
M.SLOWDOWN = os.getenv("VPP_VALGRIND") and 5 or os.getenv("VPP_BUILD") and 3 or 1

function M.start(opts)
  return launcher.start(opts)
end

--- A copy of settings with extra's keys put over it.
function M.merged(settings, extra)
  local o = {}
  for k, v in pairs(settings) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

function M.client(server, opts)
  return vpp.new(M.merged({ access_token = M.TOKEN, base_url = server.url, timeout = 10 }, opts))
end

-- The usual fixture: one fake Graph for a describe block, reset before each
-- test with its request log emptied, and a fresh client per test.  Busted's
-- hooks live in the spec file's environment, so the spec registers them:
--   setup(f.start) teardown(f.stop) before_each(f.fresh) after_each(f.done)
function M.fake_graph(opts, client_opts)
  local f = {}
  function f.start() f.server = M.start(opts) end
  function f.stop() f.server:stop() end
  function f.fresh()
    f.server:reset()
    f.server:log()
    f.client = M.client(f.server, client_opts)
  end
  function f.done() f.client:close() end
  return f
end

--- The lines of s (each ended by a newline).
function M.lines(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- Every string reachable from v (keys, values, tostring of tables).
function M.strings(v, out, seen)
  out, seen = out or {}, seen or {}
  if type(v) == "string" then
    out[#out + 1] = v
  elseif type(v) == "table" and not seen[v] then
    seen[v] = true
    local ok, s = pcall(tostring, v)
    if ok then out[#out + 1] = s end
    for k, x in pairs(v) do
      M.strings(k, out, seen)
      M.strings(x, out, seen)
    end
  end
  return out
end

function M.contains_secret(v, secret)
  secret = secret or M.TOKEN
  for _, s in ipairs(M.strings(v)) do
    if s:find(secret, 1, true) then return true end
  end
  return false
end

-- Runs a Lua snippet in a child lua process with the module paths set,
-- after env (variables) and under prefix (a command such as valgrind).
function M.run_lua(code, env, prefix)
  local f = os.tmpname()
  sys.write_file(f, code)
  -- The interpreter is the lowest index of arg (busted may run under
  -- "lua5.4 -e ... script", or under valgrind).
  local interp, i = "lua5.4", -1
  while arg and arg[i] do
    interp = arg[i]
    i = i - 1
  end
  local cmd = ("%s LUA_PATH=%q LUA_CPATH=%q %s%s %s"):format(env or "", package.path, package.cpath,
    prefix or "", interp, f)
  local out, ok, code_ = sys.capture(cmd)
  os.remove(f)
  return out, ok, code_
end

local function sh(cmd)
  assert(sys.execute(cmd .. " >/dev/null 2>&1"), "failed: " .. cmd)
end

local write_file = sys.write_file
M.write_file = write_file

local function slurp(path) return assert(sys.read_file(path)) end
M.slurp = slurp

function M.spec_files()
  local files = {}
  for name in io.popen("ls spec/*_spec.lua"):lines() do files[#files + 1] = name end
  return files
end

-- Test credentials made with the openssl command: an RSA certificate and
-- key (apart, together, and with the key encrypted), a key of another
-- certificate, an EC certificate, and the certificate's x5t#S256.
function M.make_certs()
  local dir = io.popen("mktemp -d /tmp/lua-vpp-certs.XXXXXX"):read("*l")
  local c = {
    dir = dir, cert = dir .. "/cert.pem", key = dir .. "/key.pem", combined = dir .. "/combined.pem",
    encrypted_key = dir .. "/key-enc.pem", password = "p@ss word&=+%", other_key = dir .. "/other.pem",
    ec_combined = dir .. "/ec.pem", pubkey = dir .. "/pub.pem",
  }
  sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 -subj /CN=lua-vpp-test-app")
    :format(c.key, c.cert))
  write_file(c.combined, slurp(c.cert), slurp(c.key))
  sh(("openssl pkey -in %s -aes256 -passout 'pass:%s' -out %s"):format(c.key, c.password, c.encrypted_key))
  sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s"):format(c.other_key))
  sh(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s/eckey.pem"
    .. " -out %s/eccert.pem -days 2 -subj /CN=ec"):format(dir, dir))
  write_file(c.ec_combined, slurp(dir .. "/eccert.pem"), slurp(dir .. "/eckey.pem"))
  write_file(c.pubkey, io.popen(("openssl x509 -in %s -pubkey -noout"):format(c.cert)):read("*a"))
  c.thumbprint = io.popen(("openssl x509 -in %s -outform DER | openssl dgst -sha256 -binary | base64 -w0"
    .. " | tr '+/' '-_' | tr -d '='"):format(c.cert)):read("*l")
  c.key_pem = slurp(c.key)
  function c.remove() os.execute("rm -rf " .. dir) end
  return c
end

function M.b64url_decode(s)
  s = s:gsub("-", "+"):gsub("_", "/")
  return (require("mime").unb64(s .. string.rep("=", (4 - #s % 4) % 4)))
end

-- ---- the vpp command ----------------------------------------------------

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = quote

--- The vpp command installed as a user would (make install PREFIX=dir);
-- cli.remove() deletes it.
function M.install_cli()
  local dir = io.popen("mktemp -d /tmp/lua-vpp-cli.XXXXXX"):read("*l")
  sh(("make -s install PREFIX=%s LUA_VERSION=%s"):format(dir, M.LUA_VERSION))
  local cli = { prefix = dir, bin = dir .. "/bin/vpp" }
  function cli.remove() os.execute("rm -rf " .. dir) end

  --- Runs `vpp args...` in a clean environment (only env's variables, no
  -- LUA_PATH: the installed command must find its own modules).  With
  -- opts.pty, under a pseudo-terminal (util-linux script), where stdout
  -- and stderr arrive together in out, and opts.input is typed.  With
  -- opts.shell, a shell line of the caller's (see below).  With opts.signal ("INT", "TERM"),
  -- that signal is sent after opts.after seconds.  Returns { code, out, err }.
  function cli.run(args, env, opts)
    local words = {}
    for i, a in ipairs(args) do words[i] = quote(a) end
    local vars = { "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp" }
    for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. quote(v) end
    local command = cli.bin .. " " .. table.concat(words, " ")
    local out, err = os.tmpname(), os.tmpname()
    local line
    if opts and opts.pty then
      -- opts.input: what is typed on that terminal.
      local stdin = opts.input and ("printf %%s %s |"):format(quote(opts.input)) or ""
      line = ("cd /tmp && %s env -i %s script -qec %s /dev/null %s >%s 2>%s"):format(stdin,
        table.concat(vars, " "), quote(command), opts.input and "" or "</dev/null", out, err)
    elseif opts and opts.shell then
      -- opts.shell: the shell line, with {cmd} (the command and its
      -- environment), {out} and {err} (files read back) in it.
      local subs = { cmd = "env -i " .. table.concat(vars, " ") .. " " .. command, out = out, err = err }
      line = "cd /tmp && " .. opts.shell:gsub("{(%a+)}", subs)
    else
      line = ("cd /tmp && env -i %s %s </dev/null >%s 2>%s"):format(table.concat(vars, " "), command, out, err)
    end
    if opts and opts.signal then
      line = ("%s & pid=$!; sleep %g; kill -%s $pid; wait $pid"):format(line, opts.after or 1, opts.signal)
    end
    local _, code = sys.execute(line)
    local r = { code = code, out = slurp(out), err = slurp(err) }
    os.remove(out)
    os.remove(err)
    return r
  end
  return cli
end

-- The auth specs' fixture: a fake Graph where `app` (plus the test
-- certificate's thumbprint) is the registered application, and test
-- certificates; fresh logs before each test.  Register as with fake_graph:
--   setup(f.start) teardown(f.stop) before_each(f.fresh)
function M.identity_fixture(server_opts, app)
  local f = {}
  function f.start()
    f.server = M.start(server_opts)
    f.certs = M.make_certs()
  end
  function f.stop()
    f.server:stop()
    f.certs.remove()
  end
  function f.fresh()
    f.server:reset()
    local registration = { thumbprint = f.certs.thumbprint }
    for k, v in pairs(app) do registration[k] = v end
    f.server:app(registration)
    f.server:log()
    f.server:tokenlog()
  end
  return f
end

-- The CLI specs' fixture: a fake Graph and the installed command for a
-- describe block, and env (the variables pointing the command at the
-- server) fresh for each test.  Register as with fake_graph:
--   setup(f.start) teardown(f.stop) before_each(f.fresh)
function M.cli_fixture(server_opts)
  local f = {}
  function f.start()
    f.server = M.start(server_opts)
    f.cli = M.install_cli()
  end
  function f.stop()
    f.server:stop()
    f.cli.remove()
  end
  function f.fresh()
    f.server:reset()
    f.server:log()
    f.env = { GRAPH_URL = f.server.url, GRAPH_ACCESS_TOKEN = M.TOKEN }
  end
  return f
end

--- A VPP token as Graph returns it, with the given fields changed; days
-- are from now.
function M.vpp_token(fields)
  local tenant = require "tenant"
  local now = os.time()
  local t = {
    ["@odata.type"] = "#microsoft.graph.vppToken", id = fields.id, organizationName = "Contoso",
    vppTokenAccountType = "business", appleId = "vpp@contoso.example.com",
    expirationDateTime = tenant.timestamp(now + (fields.expires_in_days or 200) * 86400),
    lastSyncDateTime = tenant.timestamp(now - 3600), lastModifiedDateTime = tenant.timestamp(now - 7200),
    token = "", state = "valid", lastSyncStatus = "completed", automaticallyUpdateApps = false,
    countryOrRegion = "us", dataSharingConsentGranted = true, displayName = fields.id,
    locationName = "HQ", claimTokenManagementFromExternalMdm = false, roleScopeTagIds = { "0" },
  }
  for k, v in pairs(fields) do
    if k ~= "expires_in_days" then t[k] = v end
  end
  return t
end

function M.now()
  return require("socket").gettime()
end

return M
