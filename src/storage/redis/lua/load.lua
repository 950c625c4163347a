--[[
  load: one user's full state for the windows of the given time, to seed an owner's memory.

  KEYS[1] bucket hash {d, a, v}   KEYS[2] minute counter   KEYS[3] hour counter   KEYS[4] day hash {c, g}

  Returns {debt, debtAt, version, minuteCount, hourCount, dayCount, graceAt}; absent values
  are 0 (version: 0, graceAt: -1).
]]
local b = redis.call('HMGET', KEYS[1], 'd', 'a', 'v')
local day = redis.call('HMGET', KEYS[4], 'c', 'g')
return {
  tonumber(b[1]) or 0, tonumber(b[2]) or 0, tonumber(b[3]) or 0,
  tonumber(redis.call('GET', KEYS[2])) or 0, tonumber(redis.call('GET', KEYS[3])) or 0,
  tonumber(day[1]) or 0, tonumber(day[2]) or -1,
}
