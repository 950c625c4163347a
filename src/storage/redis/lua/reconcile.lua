--[==[
  reconcile: apply owners' pending changes for a batch of users, and report where Redis
  holds something the owners do not know.

  A user's state is one key (keys.ts): 10 little-endian doubles
    debt, debtAt, version, graceAt, minuteStart, minuteCount, hourStart, hourCount,
    dayStart, dayCount
  read with one GET and written with one SET, atomically with the rest of the script.

  Counters are additive, so flushes from any writer merge exactly: a delta is added to the
  stored count of its window. The owner also sends what it believes each total to be
  (`full`): if Redis has lost the key (restart without persistence, eviction, failover)
  the total is re-seeded from it, so an empty Redis never resets anyone's counters:
  total = max(stored + delta, full). A newer window replaces the stored one; a delta for a
  window older than the stored one has no effect (that window has ended).

  The bucket is versioned. If Redis still holds the version the owner last saw (or lost
  the key), the owner's state is written as is, as version base + 1. Otherwise another
  writer charged it in between (a Redis-authoritative decision while the owner was
  suspected): the other writers' net debt is added to the owner's. The earliest grace
  start of a day window wins.

  KEYS     one per user: its state key.
  ARGV[1]  the users, packed as little-endian doubles (struct '<d'), 24 per user
           (scripts.ts FLUSH): writeBucket (1/0), ownerDebt, ownerAt, baseVersion
           (-1 unknown), baseDebt, baseAt, perMinute, dayStart (the owner's current day
           window), graceAt (when grace began in it as far as the owner knows, -1 none),
           minuteMs, hourMs, dayMs, then for the minute, hour and day windows in turn:
           sent (1/0), start, delta, full (-1 unknown)
  ARGV[2]  slack ms: how long a key outlives its last window (and the time its bucket is full)

  Returns only the users Redis surprised (a writer other than the owner, lost keys, grace
  the owner did not start), as a flat array of 9 numbers each: user index (1-based),
  debt, debtAt, version, graceDay, graceAt, minute, hour and day totals (-1 where the
  owner sent no current count). Everyone else is exactly as the owner believes.
]==]
local STATE = '<dddddddddd'
local USER = '<dddddddddddd'
local WINDOW = '<dddd'
local STATE_BYTES = 80

local function decayed(debt, at, now, perMinute)
  if debt <= 0 then return 0 end
  local elapsed = now - at
  if elapsed <= 0 then return debt end
  local repaid = elapsed * perMinute
  if repaid >= debt then return 0 end
  return debt - repaid
end

local packed = ARGV[1]
local slack = tonumber(ARGV[2])
local pos = 1

local out = {}
for index = 1, #KEYS do
  local key = KEYS[index]
  local wb, ownerDebt, ownerAt, baseVersion, baseDebt, baseAt, perMinute, ownerDay, ownerGrace, minuteMs, hourMs, dayMs
  wb, ownerDebt, ownerAt, baseVersion, baseDebt, baseAt, perMinute, ownerDay, ownerGrace, minuteMs, hourMs, dayMs, pos =
    struct.unpack(USER, packed, pos)

  local surprised = false
  local changed = false
  local debt, at, version, graceAt = 0, 0, 0, -1
  local starts, counts = { -1, -1, -1 }, { 0, 0, 0 }
  local stored = redis.call('GET', key)
  if stored and #stored == STATE_BYTES then
    debt, at, version, graceAt, starts[1], counts[1], starts[2], counts[2], starts[3], counts[3] = struct.unpack(STATE, stored)
  else
    stored = nil
    if baseVersion >= 0 then surprised = true end -- Redis lost the key (re-seeded below)
  end

  if wb == 1 then
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

  local totals = { -1, -1, -1 }
  for kind = 1, 3 do
    local sent, start, delta, full
    sent, start, delta, full, pos = struct.unpack(WINDOW, packed, pos)
    if sent == 1 and start > starts[kind] then
      -- A newer window replaces the stored one (grace belongs to its day window).
      starts[kind], counts[kind] = start, 0
      if kind == 3 then graceAt = -1 end
      changed = true
    end
    if sent == 1 and start == starts[kind] then
      local total = counts[kind] + delta
      if total < full then total = full end
      if total ~= counts[kind] then counts[kind], changed = total, true end
      if full >= 0 then
        totals[kind] = total
        if total ~= full then surprised = true end
      end
    end
  end

  local graceHere = graceAt >= 0 and starts[3] == ownerDay
  if ownerGrace >= 0 and ownerDay >= starts[3] and (not graceHere or ownerGrace < graceAt) then
    if ownerDay > starts[3] then starts[3], counts[3] = ownerDay, 0 end
    graceAt, changed = ownerGrace, true
  elseif graceHere and (ownerGrace < 0 or graceAt < ownerGrace) then
    surprised = true
  end

  if changed then
    local expireAt = at + math.ceil(debt / perMinute)
    local lengths = { minuteMs, hourMs, dayMs }
    for kind = 1, 3 do
      if starts[kind] >= 0 then expireAt = math.max(expireAt, starts[kind] + lengths[kind]) end
    end
    redis.call('SET', key, struct.pack(STATE, debt, at, version, graceAt, starts[1], counts[1], starts[2], counts[2], starts[3], counts[3]),
      'PXAT', string.format('%.0f', expireAt + slack))
  end

  if surprised then
    local graceDay = -1
    if graceAt >= 0 then graceDay = starts[3] end
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
