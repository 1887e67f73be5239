--- Where the command's output goes, and the proof it got there: every
-- write to stdout, stderr or --output FILE is checked.  Data goes to
-- stdout, or into FILE, replaced atomically only when the run succeeds;
-- diagnostics go to stderr.  A failed write is one line on stderr and a
-- failing exit; EPIPE (the reader went away, as with `| head`) ends
-- quietly, as the shell expects.
local core = require "vpp.core"

local M = {}
M.__index = M

local EPIPE = 32
M.EXIT_PIPE = 128 + 13 -- what the shell shows for a process SIGPIPE ended

-- Which of the standard streams were closed when the command started
-- (they are /dev/null now, so no socket or file became one by chance).
local closed = 0

--- Call first: makes the closed standard streams /dev/null, remembering them.
function M.guard_std_streams()
  closed = core._std_fds()
end

local function has(mask, bit) return math.floor(mask / bit) % 2 == 1 end

--- The output of one run: to FILE (path) or stdout.
function M.new(path)
  local self = setmetatable({ path = path, parts = {} }, M)
  if not path and has(closed, 2) then self.failed = { message = "Bad file descriptor", stream = "stdout" } end
  return self
end

--- Whether stdout can be written at all (it was open, or FILE is used).
function M:usable() return not self.failed end

--- Whether the output is a terminal people read (colour, widths).
function M:terminal() return not self.path and core._isatty(1) end

function M:write(...)
  if self.failed then return end
  if self.path then
    for i = 1, select("#", ...) do self.parts[#self.parts + 1] = select(i, ...) end
    return
  end
  local ok, message, errno = io.stdout:write(...)
  if not ok then self.failed = { message = message, errno = errno, stream = "stdout" } end
end

--- Writes out what stdout holds, so that what follows on stderr comes
-- after it (and is not said at all when stdout failed).
function M:flush()
  if self.failed or self.path then return end
  local ok, message, errno = io.stdout:flush()
  if not ok then self.failed = { message = message, errno = errno, stream = "stdout" } end
end

-- ---- stderr --------------------------------------------------------------

local stderr_failed

--- A diagnostic on stderr (any number of strings); false when it failed.
function M.err(...)
  if stderr_failed then return false end
  if has(closed, 4) then
    stderr_failed = true
    return false
  end
  local ok = io.stderr:write(...)
  if not ok then stderr_failed = true end
  return ok and true or false
end

--- Whether a diagnostic was lost (stderr closed or failing).
function M.stderr_failed() return stderr_failed == true end

function M.reset()
  stderr_failed = nil
end

-- ---- the end of a run ----------------------------------------------------------

local function what(self)
  if self.path then return self.path end
  return self.failed and self.failed.stream or "stdout"
end

--- Ends the run's output: stdout flushed, or FILE replaced when `keep` (the
-- run succeeded; otherwise FILE is left as it was).  The exit code to use
-- instead of the run's, or nil: EXIT_PIPE for EPIPE (nothing said), else
-- failure_code after a line on stderr.
function M:finish(keep, failure_code)
  self:flush()
  if self.failed then
    if self.failed.errno == EPIPE then return M.EXIT_PIPE end
    M.err("vpp: cannot write to ", what(self), ": ", tostring(self.failed.message):gsub("^[^:]*: ", ""), "\n")
    return failure_code
  end
  if self.path then
    if not keep then
      M.err("vpp: ", self.path, " left as it was (the run failed)\n")
      return nil
    end
    local ok, message = core._replace_file(self.path, table.concat(self.parts))
    if not ok then
      M.err("vpp: cannot write ", self.path, ": ", message, " (left as it was)\n")
      return failure_code
    end
  end
  if stderr_failed then return failure_code end
  return nil
end

return M
