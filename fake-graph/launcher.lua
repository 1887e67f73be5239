-- Starts and stops the fake Graph server (nginx + graph.lua) on free loopback
-- ports, in a private temporary directory, and talks to its /_admin/ API.
-- Used by the specs; `lua5.4 fake-graph/launcher.lua` runs it by hand.
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"
local sys = require "sys"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local function sh(cmd)
  return (sys.execute(cmd .. " >/dev/null 2>&1"))
end

local read, write = sys.read_file, sys.write_file

--- A loopback port nothing listens on now (for a server of a spec's).
local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end
M.free_port = free_port

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("cd '" .. path .. "' && pwd")
  local out = p:read("*l")
  p:close()
  return out
end

-- A throwaway CA and a server certificate for 127.0.0.1/localhost.
local function make_certs(dir)
  write(dir .. "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  assert(sh(("openssl req -x509 %s -keyout %s/ca.key -out %s/ca.pem -days 2 -subj '/CN=lua-vpp test CA'")
    :format(ec, dir, dir)), "openssl: cannot make the test CA")
  assert(sh(("openssl req %s -keyout %s/server.key -out %s/server.csr -subj /CN=localhost")
    :format(ec, dir, dir)), "openssl: cannot make the server key")
  assert(sh(("openssl x509 -req -in %s/server.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial"
    .. " -out %s/server.pem -days 2 -extfile %s/san.ext"):format(dir, dir, dir, dir, dir)),
    "openssl: cannot sign the server certificate")
end

local function lua_literal(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format("[%q] = %s", k, type(v) == "string" and string.format("%q", v) or tostring(v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- A zombie counts as gone: in a container, PID 1 may never reap the
-- daemonized master.
local function alive(pid)
  local status = read("/proc/" .. pid .. "/status")
  return status ~= nil and not status:find("\nState:%s+Z")
end

local Server = {}
Server.__index = Server

-- opts: tokens, seed, page_size, latency, sync_seconds, log (server config;
-- sync_answer, patch_answer, forbidden, next_link_origin are set with :config);
-- tls = true adds an HTTPS + HTTP/2 listener.
function M.start(opts)
  opts = opts or {}
  local p = io.popen("mktemp -d /tmp/fake-graph.XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  sh("chmod 755 " .. dir)
  local config = {}
  for _, k in ipairs { "tokens", "seed", "page_size", "latency", "sync_seconds", "log" } do
    config[k] = opts[k]
  end
  if opts.tls then make_certs(dir) end
  local template = assert(read(here .. "/nginx.conf.in"))
  local root = absolute(here)
  for _ = 1, 5 do
    local port, tls_port = free_port(), opts.tls and free_port() or nil
    local fields = {
      DIR = dir, ROOT = root, PORT = tostring(port), CONFIG = lua_literal(config),
      -- As root, nginx would run its worker as nobody, who cannot read a private checkout.
      USER = (read("/proc/self/status") or ""):match("\nUid:%s+0%s") and "user root root;" or "",
      TLS = tls_port and ("listen 127.0.0.1:%d ssl http2; ssl_certificate %s/server.pem; ssl_certificate_key %s/server.key;")
        :format(tls_port, dir, dir) or "",
    }
    local conf = template:gsub("%${(%u+)}", fields)
    write(dir .. "/nginx.conf", conf)
    if sh(("nginx -p %s -c %s/nginx.conf -e %s/error.log"):format(dir, dir, dir)) then
      local self = setmetatable({
        dir = dir, port = port, tls_port = tls_port,
        url = "http://127.0.0.1:" .. port,
        tls_url = tls_port and ("https://127.0.0.1:" .. tls_port) or nil,
        ca_file = tls_port and (dir .. "/ca.pem") or nil,
      }, Server)
      self.pid = tonumber(read(dir .. "/nginx.pid") or "")
      for _ = 1, 200 do
        local c = socket.tcp()
        c:settimeout(0.05)
        local ok = c:connect("127.0.0.1", port)
        c:close()
        if ok and self.pid then return self end
        socket.sleep(0.025)
        self.pid = self.pid or tonumber(read(dir .. "/nginx.pid") or "")
      end
      self:stop()
      error("fake Graph server did not come up: " .. (read(dir .. "/error.log") or ""))
    end
    -- Most likely the port was taken between probing and binding: try another.
  end
  local log = read(dir .. "/error.log") or ""
  sh("rm -rf " .. dir)
  error("could not start nginx for the fake Graph server: " .. log)
end

function Server:stop()
  if self.pid then
    sh("kill " .. self.pid)
    for _ = 1, 200 do
      if not alive(self.pid) then break end
      socket.sleep(0.025)
    end
    self.pid = nil
  end
  if self.dir then
    sh("rm -rf " .. self.dir)
    self.dir = nil
  end
end

-- One call to the /_admin/ API; returns the decoded JSON answer.  tenant:
-- the tenant whose data it is about (a fleet's; default the one tenant).
function Server:admin(name, body, tenant)
  local chunks = {}
  local payload = body and cjson.encode(body)
  local _, code = http.request {
    url = self.url .. "/_admin/" .. name .. (tenant and ("?tenant=" .. tenant) or ""),
    method = payload and "POST" or "GET",
    headers = payload and { ["content-type"] = "application/json", ["content-length"] = #payload } or nil,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(chunks),
  }
  assert(code == 200, "admin call " .. name .. " failed: " .. tostring(code))
  return cjson.decode(table.concat(chunks))
end

function Server:reset() return self:admin("reset", {}) end
function Server:stats() return self:admin("stats") end
function Server:log() return self:admin("log") end
function Server:config(t) return self:admin("config", t) end
function Server:tokens(list, tenant) return self:admin("tokens", list, tenant) end
function Server:app(registration) return self:admin("app", registration) end
function Server:revoke() return self:admin("revoke", {}) end
function Server:tokenlog() return self:admin("tokenlog") end
function Server:syncfail(ids, tenant) return self:admin("syncfail", ids, tenant) end
function Server:apps(list, tenant) return self:admin("apps", list, tenant) end
function Server:licenses(by_bundle, tenant) return self:admin("licenses", by_bundle, tenant) end
function Server:renewed(id, tenant) return self:admin("renewed", { id = id }, tenant).token end
function Server:stored(id, tenant) return self:admin("stored", { id = id }, tenant) end

-- Queue responses for a token id ("@list" for the list endpoint).
function Server:program(key, responses, tenant)
  return self:admin("program", { key = key, responses = responses }, tenant)
end

if arg and arg[0] and arg[0]:match("launcher%.lua$") then
  local s = M.start { tls = true, tokens = tonumber(arg[1]) or 40 }
  print(("fake Graph at %s and %s (CA %s); Enter stops it"):format(s.url, s.tls_url, s.ca_file))
  io.read("*l")
  s:stop()
end

return M
