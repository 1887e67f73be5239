-- A real HTTP proxy for the specs: Debian's tinyproxy on a free loopback
-- port, in a private directory, started and stopped by the spec.
--   local proxy = tinyproxy.start { connect_ports = { 8443 }, user = "u", password = "p" }
--   proxy.url, proxy:requests() (the request lines it logged), proxy:stop()
local socket = require "socket"
local sys = require "sys"
local launcher = require "launcher"

local M = {}

local Proxy = {}
Proxy.__index = Proxy

--- Whether tinyproxy is installed (the specs pend without it).
function M.available()
  return sys.execute("command -v tinyproxy >/dev/null 2>&1")
end

--- opts: connect_ports (the ports CONNECT may reach; tinyproxy refuses the
-- others with 403), user and password (Basic authentication required).
function M.start(opts)
  local dir = io.popen("mktemp -d /tmp/lua-vpp-proxy.XXXXXX"):read("*l")
  local port = launcher.free_port()
  local lines = { "Port " .. port, "Listen 127.0.0.1", "Timeout 30", ('LogFile "%s/log"'):format(dir),
    "LogLevel Connect", ('PidFile "%s/pid"'):format(dir), "MaxClients 64", "Allow 127.0.0.1",
    "DisableViaHeader Yes" }
  for _, p in ipairs(opts.connect_ports or {}) do lines[#lines + 1] = "ConnectPort " .. p end
  if opts.user then lines[#lines + 1] = ("BasicAuth %s %s"):format(opts.user, opts.password) end
  sys.write_file(dir .. "/conf", table.concat(lines, "\n") .. "\n")
  local p = io.popen(("tinyproxy -d -c %s/conf >%s/out 2>&1 </dev/null & echo $!"):format(dir, dir))
  local pid = p:read("*l")
  p:close()
  local self = setmetatable({ dir = dir, port = port, pid = tonumber(pid), url = "http://127.0.0.1:" .. port }, Proxy)
  for _ = 1, 200 do
    local c = socket.tcp()
    c:settimeout(0.05)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    if ok then return self end
    socket.sleep(0.025)
  end
  local out = sys.read_file(dir .. "/out") or ""
  self:stop()
  error("tinyproxy did not come up: " .. out)
end

--- The request lines the proxy logged so far ("CONNECT 127.0.0.1:8443 HTTP/1.1").
function Proxy:requests()
  local out = {}
  for line in (sys.read_file(self.dir .. "/log") or ""):gmatch("[^\n]+") do
    local request = line:match("Request %(file descriptor %d+%): (.*)$")
    if request then out[#out + 1] = request end
  end
  return out
end

function Proxy:stop()
  if self.pid then os.execute(("kill %d 2>/dev/null; sleep 0.05; kill -9 %d 2>/dev/null"):format(self.pid, self.pid)) end
  os.execute("rm -rf " .. self.dir)
end

return M
