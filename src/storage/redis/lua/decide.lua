--[[
  decide: one rate-limit decision, atomically, in Redis (docs/semantics.md).
  The same arithmetic as src/node/engine.ts, step for step; test/vectors runs both.

  KEYS[1]  bucket "debt at version graceDay graceAt" (debt in units, times in ms; graceDay is
           the start of the day window grace began in, -1 if none)
  KEYS[2]  minute counter of the window containing ARGV now
  KEYS[3]  hour counter of the window containing now
  KEYS[4]  day (quota) counter of the window containing now

  ARGV  1 now (ms, from the deciding node)   2 cost (0 = peek)
        3 burst  4 perMinute  5 perHour  6 perDay  7 throttlePerMinute
        8 quotaEnabled (1/0)  9 overage (0 block, 1 allow, 2 throttle)  10 graceMs
        11 minuteMs  12 hourMs  13 dayMs  14 slackMs (keys outlive their window by this)

  Returns an array of integers:
    1 allowed (1/0)  2 code (1 OK, 2 GRACE, 3 OVERAGE, 4 RATE_LIMITED, 5 QUOTA_EXCEEDED)
    3 limitedBy (0 none, 1 burst, 2 minute, 3 hour, 4 day)  4 retryAfterMs (-1 = never)
    5-8 remaining burst/minute/hour/day   9-12 reset_at burst/minute/hour/day
    13 quotaUsed  14 charged  15 graceStarted (1/0)  16 minute limit in force
    17 bucket version after the decision
]]

local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local L = {
  burst = tonumber(ARGV[3]), perMinute = tonumber(ARGV[4]), perHour = tonumber(ARGV[5]),
  perDay = tonumber(ARGV[6]), throttlePerMinute = tonumber(ARGV[7]), quotaEnabled = ARGV[8] == '1',
  overage = tonumber(ARGV[9]), graceMs = tonumber(ARGV[10]), minuteMs = tonumber(ARGV[11]),
  hourMs = tonumber(ARGV[12]), dayMs = tonumber(ARGV[13]),
}
local slack = tonumber(ARGV[14])

local NORMAL, GRACE, OVERAGE = 0, 1, 2
local BLOCK, THROTTLE = 0, 2
local NEVER = math.huge

local function fmt(x) return string.format('%.0f', x) end

-- The stored state, as the engine's UserState for the windows of `now`.
local debt0, debtAt0, version0, graceDay0, graceAt0 = 0, 0, 0, -1, -1
local stored = redis.call('GET', KEYS[1])
if stored then
  local d, a, v, gd, ga = string.match(stored, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  debt0, debtAt0, version0, graceDay0, graceAt0 = tonumber(d), tonumber(a), tonumber(v), tonumber(gd), tonumber(ga)
end
local S = {
  debt = debt0, debtAt = debtAt0, version = version0,
  minuteStart = now - (now % L.minuteMs), minuteCount = tonumber(redis.call('GET', KEYS[2])) or 0,
  hourStart = now - (now % L.hourMs), hourCount = tonumber(redis.call('GET', KEYS[3])) or 0,
  dayStart = now - (now % L.dayMs), dayCount = tonumber(redis.call('GET', KEYS[4])) or 0, graceAt = -1,
}
if graceDay0 == S.dayStart then S.graceAt = graceAt0 end

local function decayedDebt(debt, debtAt, at, perMinute)
  if debt <= 0 then return 0 end
  local elapsed = at - debtAt
  if elapsed <= 0 then return debt end
  local repaid = elapsed * perMinute
  if repaid >= debt then return 0 end
  return debt - repaid
end

-- What the limits say about a request of cost c at time `at` (engine.ts assess).
local function assess(c, at)
  local A = {}
  local unit = L.minuteMs
  local perMinute = L.perMinute
  A.minuteStart = at - (at % L.minuteMs)
  A.hourStart = at - (at % L.hourMs)
  A.dayStart = at - (at % L.dayMs)
  A.minuteCount = (S.minuteStart == A.minuteStart) and S.minuteCount or 0
  A.hourCount = (S.hourStart == A.hourStart) and S.hourCount or 0
  A.dayCount = (S.dayStart == A.dayStart) and S.dayCount or 0
  A.graceAt = (S.dayStart == A.dayStart) and S.graceAt or -1
  A.debt = decayedDebt(S.debt, S.debtAt, at, perMinute)
  local capacity = L.burst * unit
  local nextDay = A.dayStart + L.dayMs

  A.phase = NORMAL
  if L.quotaEnabled and A.dayCount + c > L.perDay then
    if L.graceMs > 0 and (A.graceAt < 0 or at < A.graceAt + L.graceMs) then A.phase = GRACE else A.phase = OVERAGE end
  end
  local throttled = A.phase == OVERAGE and L.overage == THROTTLE
  A.minuteLimit = throttled and math.min(perMinute, L.throttlePerMinute) or perMinute
  local dayNeverPasses = c > L.perDay and L.graceMs == 0

  A.limitedBy = 0
  A.liftsAt = at
  if A.debt + c * unit > capacity then
    local lift
    if c * unit > capacity then lift = NEVER else lift = at + math.ceil((A.debt + c * unit - capacity) / perMinute) end
    if lift >= A.liftsAt then A.liftsAt = lift; A.limitedBy = 1 end
  end
  if A.minuteCount + c > A.minuteLimit then
    local lift
    if c > perMinute then lift = NEVER
    elseif c <= A.minuteLimit then lift = A.minuteStart + L.minuteMs
    elseif dayNeverPasses then lift = NEVER
    else lift = nextDay end
    local name = 2
    if throttled and c <= perMinute then name = 4 end
    if lift >= A.liftsAt then A.liftsAt = lift; A.limitedBy = name end
  end
  if A.hourCount + c > L.perHour then
    local lift
    if c > L.perHour then lift = NEVER else lift = A.hourStart + L.hourMs end
    if lift >= A.liftsAt then A.liftsAt = lift; A.limitedBy = 3 end
  end
  if A.phase == OVERAGE and L.overage == BLOCK then
    local lift
    if dayNeverPasses then lift = NEVER else lift = nextDay end
    if lift >= A.liftsAt then A.liftsAt = lift; A.limitedBy = 4 end
  end
  return A
end

local MAX_RETRY_STEPS = 8
local function passesAt(c, from)
  local at = from
  for _ = 1, MAX_RETRY_STEPS do
    if at == NEVER then return at end
    local P = assess(c, at)
    if P.limitedBy == 0 then return at end
    at = P.liftsAt
  end
  return at
end

local peek = cost == 0
local c = cost
if peek then c = 1 end
local A = assess(c, now)
local unit = L.minuteMs
local allowed = A.limitedBy == 0
local charged = 0
if allowed and not peek then charged = c end
local graceStarted = charged > 0 and A.phase == GRACE and A.graceAt < 0
local debtAfter = A.debt + charged * unit
local minuteUsed = A.minuteCount + charged
local hourUsed = A.hourCount + charged
local dayUsed = A.dayCount + charged
local retryAt = now
if not allowed then retryAt = passesAt(c, A.liftsAt) end
local version = S.version

if charged > 0 then
  version = version + 1
  local debtAt = math.max(S.debtAt, now)
  local graceDay, graceAt = graceDay0, graceAt0
  if graceStarted then graceDay, graceAt = A.dayStart, now end
  local expireAt = debtAt + math.ceil(debtAfter / L.perMinute)
  if graceAt >= 0 then expireAt = math.max(expireAt, graceDay + L.dayMs) end
  redis.call('SET', KEYS[1], fmt(debtAfter) .. ' ' .. fmt(debtAt) .. ' ' .. fmt(version) .. ' ' .. fmt(graceDay) .. ' ' .. fmt(graceAt),
    'PXAT', fmt(expireAt + slack))
  local keys = { KEYS[2], KEYS[3], KEYS[4] }
  local ends = { A.minuteStart + L.minuteMs, A.hourStart + L.hourMs, A.dayStart + L.dayMs }
  for i = 1, 3 do
    if redis.call('INCRBY', keys[i], charged) == charged then redis.call('PEXPIREAT', keys[i], fmt(ends[i] + slack)) end
  end
end

local code
if allowed then
  if A.phase == NORMAL then code = 1 elseif A.phase == GRACE then code = 2 else code = 3 end
else
  if A.limitedBy == 4 then code = 5 else code = 4 end
end
local retryAfter = 0
if not allowed then
  if retryAt == NEVER then retryAfter = -1 else retryAfter = retryAt - now end
end

return {
  allowed and 1 or 0, code, A.limitedBy, retryAfter,
  math.max(0, math.floor((L.burst * unit - debtAfter) / unit)),
  math.max(0, A.minuteLimit - minuteUsed),
  math.max(0, L.perHour - hourUsed),
  math.max(0, L.perDay - dayUsed),
  now + math.ceil(debtAfter / L.perMinute),
  A.minuteStart + L.minuteMs,
  A.hourStart + L.hourMs,
  A.dayStart + L.dayMs,
  dayUsed, charged, graceStarted and 1 or 0, A.minuteLimit, version,
}
