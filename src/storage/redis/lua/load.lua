--[[
  load: one user's full state for the windows of the given time, to seed an owner's memory.

  KEYS[1] bucket "debt at version graceDay graceAt"   KEYS[2..4] minute, hour, day counters
  ARGV[1] start of the day window the counters belong to

  Returns {debt, debtAt, version, minuteCount, hourCount, dayCount, graceAt}; absent values
  are 0 (graceAt: -1, also when grace began in another day window).
]]
local debt, at, version, graceDay, graceAt = 0, 0, 0, -1, -1
local b = redis.call('GET', KEYS[1])
if b then
  local d, a, v, gd, ga = string.match(b, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  debt, at, version, graceDay, graceAt = tonumber(d), tonumber(a), tonumber(v), tonumber(gd), tonumber(ga)
end
if graceDay ~= tonumber(ARGV[1]) then graceAt = -1 end
return {
  debt, at, version,
  tonumber(redis.call('GET', KEYS[2])) or 0, tonumber(redis.call('GET', KEYS[3])) or 0,
  tonumber(redis.call('GET', KEYS[4])) or 0, graceAt,
}
