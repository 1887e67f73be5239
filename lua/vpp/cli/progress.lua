--- A live progress line on stderr (done/total, failures, rate, ETA) for long
-- batch runs; only on a terminal, so logs and cron mail stay clean.
local core = require "vpp.core"
local format = require "vpp.cli.format"
local output = require "vpp.cli.output"

local M = {}
M.__index = M

local MIN_INTERVAL = 0.1 -- redraws per second are capped: a terminal is slow

--- A progress reporter for `total` items, or a no-op one when stderr is
-- not a terminal (or `enabled` is false).
function M.new(label, total, enabled)
  local self = setmetatable({ label = label, total = total, done = 0, failed = 0,
    started = core._clock(), drawn = 0, active = enabled and core._isatty(2) }, M)
  return self
end

local function duration(s)
  if s >= 3600 then return ("%dh%02dm"):format(math.floor(s / 3600), math.floor(s % 3600 / 60)) end
  if s >= 60 then return ("%dm%02ds"):format(math.floor(s / 60), math.floor(s % 60)) end
  return ("%ds"):format(math.ceil(s))
end

function M:line()
  local elapsed = core._clock() - self.started
  -- No rate from the first instants: one item in a millisecond is no rate.
  local rate = elapsed >= 0.25 and self.done / elapsed or nil
  local parts = { ("%s %d/%d"):format(self.label, self.done, self.total) }
  if self.extra then parts[#parts + 1] = self.extra end
  if self.failed > 0 then parts[#parts + 1] = ("%d failed"):format(self.failed) end
  if rate then parts[#parts + 1] = ("%.1f/s"):format(rate) end
  if rate and rate > 0 and self.done < self.total then
    parts[#parts + 1] = "ETA " .. duration(math.floor((self.total - self.done) / rate))
  end
  return table.concat(parts, " · ")
end

--- Counts one finished item; redraws at most every MIN_INTERVAL seconds.
function M:step(failed)
  self.done = self.done + 1
  if failed then self.failed = self.failed + 1 end
  if not self.active then return end
  local now = core._clock()
  if now - self.drawn >= MIN_INTERVAL or self.done == self.total then
    self.drawn = now
    self:draw("")
  end
end

-- Over the last line, padded with spaces where it was longer: a carriage
-- return and no escape sequence, so NO_COLOR terminals get none either.
function M:draw(tail)
  local line = self:line()
  local width = format.width(line)
  -- A progress line that cannot be written is a lost diagnostic (output
  -- counts it); the run goes on without it.
  if not output.err("\r", line, string.rep(" ", (self.width or 0) - width), tail) then self.active = false end
  self.width = width
end

--- Ends the line, leaving the final counts on screen.
function M:finish()
  if self.active and self.drawn > 0 then self:draw("\n") end
end

return M
