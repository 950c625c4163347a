--[[
  load: one user's full state for the windows of the given time, to seed an owner's memory.

  KEYS[1] the user's state (keys.ts: 10 little-endian doubles)
  ARGV    starts of the minute, hour and day windows the owner is in

  Returns {debt, debtAt, version, minuteCount, hourCount, dayCount, graceAt}: counts of
  other windows are 0, absent values 0 (graceAt: -1, also when grace began in another
  day window).
]]
local stored = redis.call('GET', KEYS[1])
if not stored or #stored ~= 80 then return { 0, 0, 0, 0, 0, 0, -1 } end
local debt, at, version, graceAt, ms, mc, hs, hc, ds, dc = struct.unpack('<dddddddddd', stored)
local function count(start, c, wanted) if start == tonumber(wanted) then return c end return 0 end
if ds ~= tonumber(ARGV[3]) then graceAt = -1 end
return { debt, at, version, count(ms, mc, ARGV[1]), count(hs, hc, ARGV[2]), count(ds, dc, ARGV[3]), graceAt }
