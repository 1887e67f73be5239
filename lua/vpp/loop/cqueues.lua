--- The `loop` setting for a cqueues host: a call made from a cqueues
-- coroutine waits with cqueues.poll, which takes lua-vpp's op as it is (a
-- pollable: pollfd, events, timeout).
--   vpp.new { loop = require "vpp.loop.cqueues", ... }
local cqueues = require "cqueues"

return function(op)
  cqueues.poll(op)
end
