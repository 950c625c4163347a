--[[
  reconcile: apply one owner's pending changes for one user and return the totals.

  Counters are additive, so flushes from any writer merge exactly (INCRBY). The owner also
  sends what it believes each total to be (`full`): if Redis has lost a key (restart
  without persistence, eviction, failover) the total is re-seeded from it, so an empty
  Redis never resets anyone's counters: total = max(stored + delta, full).

  The bucket is versioned. If Redis still holds the version the owner last saw (or lost
  the key), the owner's state is written as is. Otherwise another writer charged it in
  between (a Redis-authoritative decision while the owner was suspected): the other
  writers' net debt is added to the owner's.

  KEYS[1]     bucket hash {d, a, v}
  KEYS[2..]   window keys: counters (minute, hour) or day hashes {c, g}

  ARGV  1 writeBucket (1/0)  2 ownerDebt  3 ownerAt  4 baseVersion (-1 = unknown)
        5 baseDebt  6 baseAt  7 perMinute  8 slackMs
        then 5 per window key, in KEYS order: kind ('c' counter, 'd' day hash), delta,
        full (-1 = unknown), expireAt ms, graceAt (-1 = none; day hashes only)

  Returns {debt, debtAt, version, then per window: total, graceAt (-1 = none)}
]]
local function fmt(x) return string.format('%.0f', x) end

local function decayed(debt, at, now, perMinute)
  if debt <= 0 then return 0 end
  local elapsed = now - at
  if elapsed <= 0 then return debt end
  local repaid = elapsed * perMinute
  if repaid >= debt then return 0 end
  return debt - repaid
end

local writeBucket = ARGV[1] == '1'
local ownerDebt, ownerAt = tonumber(ARGV[2]), tonumber(ARGV[3])
local baseVersion, baseDebt, baseAt = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local perMinute, slack = tonumber(ARGV[7]), tonumber(ARGV[8])

local b = redis.call('HMGET', KEYS[1], 'd', 'a', 'v')
local missing = b[3] == false
local debt, at, version = tonumber(b[1]) or 0, tonumber(b[2]) or 0, tonumber(b[3]) or 0

if writeBucket then
  if missing or version == baseVersion then
    debt, at = ownerDebt, ownerAt
    version = math.max(version, baseVersion) + 1
  else
    local t = math.max(at, ownerAt)
    local others = decayed(debt, at, t, perMinute)
    if baseVersion >= 0 and version > baseVersion then
      others = math.max(0, others - decayed(baseDebt, baseAt, t, perMinute))
    end
    debt, at, version = decayed(ownerDebt, ownerAt, t, perMinute) + others, t, version + 1
  end
  redis.call('HSET', KEYS[1], 'd', fmt(debt), 'a', fmt(at), 'v', fmt(version))
  redis.call('PEXPIREAT', KEYS[1], fmt(at + math.ceil(debt / perMinute) + slack))
end

local out = { debt, at, version }
for i = 2, #KEYS do
  local base = 8 + (i - 2) * 5
  local kind, delta, full = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local expireAt, graceAt = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local key = KEYS[i]
  if kind == 'c' then
    local stored = tonumber(redis.call('GET', key)) or 0
    local total = math.max(stored + delta, full)
    if total ~= stored then redis.call('SET', key, fmt(total)) end
    redis.call('PEXPIREAT', key, fmt(expireAt))
    out[#out + 1] = total
    out[#out + 1] = -1
  else
    local day = redis.call('HMGET', key, 'c', 'g')
    local stored = tonumber(day[1]) or 0
    local total = math.max(stored + delta, full)
    local grace = tonumber(day[2]) or -1
    if graceAt >= 0 and (grace < 0 or graceAt < grace) then grace = graceAt end
    if grace >= 0 then
      redis.call('HSET', key, 'c', fmt(total), 'g', fmt(grace))
    else
      redis.call('HSET', key, 'c', fmt(total))
    end
    redis.call('PEXPIREAT', key, fmt(expireAt))
    out[#out + 1] = total
    out[#out + 1] = grace
  end
end
return out
