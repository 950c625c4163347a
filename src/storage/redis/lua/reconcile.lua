--[==[
  reconcile: apply owners' pending changes for a batch of users, and report where Redis
  holds something the owners do not know.

  Counters are additive, so flushes from any writer merge exactly (INCRBY). The owner also
  sends what it believes each total to be (`full`): if Redis has lost a key (restart
  without persistence, eviction, failover) the total is re-seeded from it, so an empty
  Redis never resets anyone's counters: total = max(stored + delta, full).

  The bucket is versioned. If Redis still holds the version the owner last saw (or lost
  the key), the owner's state is written as is, as version base + 1. Otherwise another
  writer charged it in between (a Redis-authoritative decision while the owner was
  suspected): the other writers' net debt is added to the owner's. The earliest grace
  start of a day window wins.

  KEYS     one per user: its bucket key. A user's window counters are the same key with the
           final "b" replaced by "<kind>:<start>", so every key of a user is in one slot.
  ARGV[1]  the users, as one string of space-separated integers, per user:
             writeBucket (1/0), ownerDebt, ownerAt, baseVersion (-1 unknown), baseDebt,
             baseAt, perMinute, dayStart (the owner's current day window), graceAt (when
             grace began in it as far as the owner knows, -1 none), dayMs, windowCount,
             then per window: kind (1 minute, 2 hour, 3 day), start, delta,
             full (-1 unknown), lengthMs
  ARGV[2]  slack ms: how long keys outlive their window (and a bucket the time it is full)

  Returns only the users Redis surprised (a writer other than the owner, lost keys, grace
  the owner did not start), as a flat array of 9 numbers each: user index (1-based),
  debt, debtAt, version, graceDay, graceAt, minute, hour and day totals (-1 where the
  owner sent no current count). Everyone else is exactly as the owner believes.
]==]
local function fmt(x) return string.format('%.0f', x) end

local function decayed(debt, at, now, perMinute)
  if debt <= 0 then return 0 end
  local elapsed = now - at
  if elapsed <= 0 then return debt end
  local repaid = elapsed * perMinute
  if repaid >= debt then return 0 end
  return debt - repaid
end

local KIND = { 'm:', 'h:', 'd:' }
local slack = tonumber(ARGV[2])
local token = string.gmatch(ARGV[1], '%S+')
local function int() return tonumber(token()) end

local out = {}
for index = 1, #KEYS do
  local bucket = KEYS[index]
  local prefix = string.sub(bucket, 1, -2)
  local writeBucket, ownerDebt, ownerAt = int() == 1, int(), int()
  local baseVersion, baseDebt, baseAt, perMinute = int(), int(), int(), int()
  local ownerDay, ownerGrace, dayMs, windows = int(), int(), int(), int()

  local surprised = false
  local debt, at, version, graceDay, graceAt = 0, 0, 0, -1, -1
  local stored = redis.call('GET', bucket)
  if stored then
    local d, t, v, gd, ga = string.match(stored, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
    debt, at, version, graceDay, graceAt = tonumber(d), tonumber(t), tonumber(v), tonumber(gd), tonumber(ga)
  elseif baseVersion >= 0 then
    surprised = true -- Redis lost the bucket (re-seeded below if the owner writes it)
  end
  local changed = false
  if writeBucket then
    if not stored or version == baseVersion then
      debt, at, version = ownerDebt, ownerAt, baseVersion + 1
    else
      local t = math.max(at, ownerAt)
      local others = decayed(debt, at, t, perMinute)
      if baseVersion >= 0 and version > baseVersion then
        others = math.max(0, others - decayed(baseDebt, baseAt, t, perMinute))
      end
      debt, at, version = decayed(ownerDebt, ownerAt, t, perMinute) + others, t, version + 1
      surprised = true
    end
    changed = true
  elseif stored and version ~= baseVersion then
    surprised = true
  end
  local graceHere = graceAt >= 0 and graceDay == ownerDay
  if ownerGrace >= 0 and (not graceHere or ownerGrace < graceAt) then
    graceDay, graceAt = ownerDay, ownerGrace
    changed = true
  elseif graceHere and (ownerGrace < 0 or graceAt < ownerGrace) then
    surprised = true
  end
  if changed then
    local expireAt = at + math.ceil(debt / perMinute)
    if graceAt >= 0 then expireAt = math.max(expireAt, graceDay + dayMs) end
    redis.call('SET', bucket, fmt(debt) .. ' ' .. fmt(at) .. ' ' .. fmt(version) .. ' ' .. fmt(graceDay) .. ' ' .. fmt(graceAt),
      'PXAT', fmt(expireAt + slack))
  end

  local totals = { -1, -1, -1 }
  for _ = 1, windows do
    local kind, start, delta, full, length = int(), int(), int(), int(), int()
    local key = prefix .. KIND[kind] .. fmt(start)
    local total = redis.call('INCRBY', key, delta)
    local created = total == delta
    if total < full then
      redis.call('SET', key, fmt(full))
      total, created = full, true
    end
    if created then redis.call('PEXPIREAT', key, fmt(start + length + slack)) end
    if full >= 0 then
      totals[kind] = total
      if total ~= full then surprised = true end
    end
  end

  if surprised then
    out[#out + 1] = index
    out[#out + 1] = debt
    out[#out + 1] = at
    out[#out + 1] = version
    out[#out + 1] = graceDay
    out[#out + 1] = graceAt
    out[#out + 1] = totals[1]
    out[#out + 1] = totals[2]
    out[#out + 1] = totals[3]
  end
end
return out
