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

  KEYS     one per user: its state key; or none, and ARGV[3] holds them (below).
  ARGV[1]  the users, packed as little-endian doubles (struct '<d'), 24 per user
           (scripts.ts FLUSH): writeBucket (1/0), ownerDebt, ownerAt, baseVersion
           (-1 unknown), baseDebt, baseAt, perMinute, dayStart (the owner's current day
           window), graceAt (when grace began in it as far as the owner knows, -1 none),
           minuteMs, hourMs, dayMs, then for the minute, hour and day windows in turn:
           sent (1/0), start, delta, full (-1 unknown)
  ARGV[2]  slack ms: how long a key outlives its last window (and the time its bucket is full)
  ARGV[3]  (only without KEYS) the users' state keys, each followed by a newline. Outside
           Redis Cluster, where one call may touch any keys, this spares the caller and
           Redis an argument per user; on a cluster every call has one user in KEYS.

  Returns only the users Redis surprised (a writer other than the owner, lost keys, grace
  the owner did not start), as a flat array of 9 numbers each: user index (1-based),
  debt, debtAt, version, graceDay, graceAt, minute, hour and day totals (-1 where the
  owner sent no current count). Everyone else is exactly as the owner believes.
]==]
local STATE = '<dddddddddd'
local USER = '<dddddddddddddddddddddddd'
local STATE_BYTES = 80

local function decayed(debt, at, now, perMinute)
  if debt <= 0 then return 0 end
  local elapsed = now - at
  if elapsed <= 0 then return debt end
  local repaid = elapsed * perMinute
  if repaid >= debt then return 0 end
  return debt - repaid
end

-- One window of one user, stored as (storedStart, storedCount), and what the owner sent
-- for it. A newer window replaces the stored one; a delta for an older one is ignored.
-- Returns the new start and count, whether they changed, the total to report (-1: the
-- owner claimed none) and whether it differs from the owner's claim.
local function window(storedStart, storedCount, sent, start, delta, full)
  if sent ~= 1 then return storedStart, storedCount, false, -1, false end
  local changed = false
  if start > storedStart then storedStart, storedCount, changed = start, 0, true end
  if start ~= storedStart then return storedStart, storedCount, changed, -1, false end
  local total = storedCount + delta
  if total < full then total = full end
  if total ~= storedCount then changed = true end
  if full < 0 then return storedStart, total, changed, -1, false end
  return storedStart, total, changed, total, total ~= full
end

-- The latest end of the windows that are set (start >= 0); -1 if none is.
local function windowsEnd(m0, h0, d0, minuteMs, hourMs, dayMs)
  local e = -1
  if m0 >= 0 then e = m0 + minuteMs end
  if h0 >= 0 and h0 + hourMs > e then e = h0 + hourMs end
  if d0 >= 0 and d0 + dayMs > e then e = d0 + dayMs end
  return e
end

local packed = ARGV[1]
local slack = tonumber(ARGV[2])
local pos = 1
local unpack = struct.unpack
local call = redis.call

local names = ARGV[3]
local count, at = #KEYS, 1
if names then count = #packed / 192 end
local find, sub = string.find, string.sub

local out = {}
local n = 0
for index = 1, count do
  local key
  if names then
    local nl = find(names, '\n', at, true)
    key, at = sub(names, at, nl - 1), nl + 1
  else
    key = KEYS[index]
  end
  local wb, ownerDebt, ownerAt, baseVersion, baseDebt, baseAt, perMinute, ownerDay, ownerGrace, minuteMs, hourMs, dayMs,
    mSent, mStart, mDelta, mFull, hSent, hStart, hDelta, hFull, dSent, dStart, dDelta, dFull
  wb, ownerDebt, ownerAt, baseVersion, baseDebt, baseAt, perMinute, ownerDay, ownerGrace, minuteMs, hourMs, dayMs,
    mSent, mStart, mDelta, mFull, hSent, hStart, hDelta, hFull, dSent, dStart, dDelta, dFull, pos = unpack(USER, packed, pos)

  local surprised = false
  local changed = false
  local debt, at, version, graceAt = 0, 0, 0, -1
  local m0, mc, h0, hc, d0, dc = -1, 0, -1, 0, -1, 0
  local stored = call('GET', key)
  -- The key outlives its stored windows by at least a slack (every write keeps that true).
  local keptUntil = -1
  if stored and #stored == STATE_BYTES then
    debt, at, version, graceAt, m0, mc, h0, hc, d0, dc = unpack(STATE, stored)
    keptUntil = windowsEnd(m0, h0, d0, minuteMs, hourMs, dayMs)
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

  local mTotal, hTotal, dTotal, c, s
  m0, mc, c, mTotal, s = window(m0, mc, mSent, mStart, mDelta, mFull)
  changed, surprised = changed or c, surprised or s
  h0, hc, c, hTotal, s = window(h0, hc, hSent, hStart, hDelta, hFull)
  changed, surprised = changed or c, surprised or s
  local previousDay = d0
  d0, dc, c, dTotal, s = window(d0, dc, dSent, dStart, dDelta, dFull)
  changed, surprised = changed or c, surprised or s
  if d0 ~= previousDay then graceAt = -1 end -- grace belongs to its day window

  local graceHere = graceAt >= 0 and d0 == ownerDay
  if ownerGrace >= 0 and ownerDay >= d0 and (not graceHere or ownerGrace < graceAt) then
    if ownerDay > d0 then d0, dc = ownerDay, 0 end
    graceAt, changed = ownerGrace, true
  elseif graceHere and (ownerGrace < 0 or graceAt < ownerGrace) then
    surprised = true
  end

  if changed then
    local value = struct.pack(STATE, debt, at, version, graceAt, m0, mc, h0, hc, d0, dc)
    local expireAt = windowsEnd(m0, h0, d0, minuteMs, hourMs, dayMs)
    local full = at + math.ceil(debt / perMinute)
    if full > expireAt then expireAt = full end
    -- Mostly the day window's end is the latest, and the key's expiry stays as it is
    -- (KEEPTTL spares Redis turning a number into an argument, a third of a flush's cost).
    if expireAt <= keptUntil then
      call('SET', key, value, 'KEEPTTL')
    else
      call('SET', key, value, 'PXAT', math.ceil(expireAt + slack))
    end
  end

  if surprised then
    local graceDay = -1
    if graceAt >= 0 then graceDay = d0 end
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6], out[n + 7], out[n + 8], out[n + 9] =
      index, debt, at, version, graceDay, graceAt, mTotal, hTotal, dTotal
    n = n + 9
  end
end
return out
