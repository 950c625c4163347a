--[[
  reset: an admin reset of a user's quota window: the day count goes back to 0 and a
  grace period begun in that window is forgotten. Run by the user's owner, in line with
  its flushes, so no flush can put the old count back.

  KEYS[1] the user's state (keys.ts: 10 little-endian doubles)
  ARGV[1] start of the day window

  Returns 1.
]]
local STATE = '<dddddddddd'
local stored = redis.call('GET', KEYS[1])
if stored and #stored == 80 then
  local debt, at, version, graceAt, ms, mc, hs, hc, ds, dc = struct.unpack(STATE, stored)
  if ds == tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], struct.pack(STATE, debt, at, version, -1, ms, mc, hs, hc, ds, 0), 'KEEPTTL')
  end
end
return 1
