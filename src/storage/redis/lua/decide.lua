--[[
  decide: one rate-limit decision, atomically, in Redis (docs/semantics.md).
  The same arithmetic as src/node/engine.ts, step for step; test/vectors runs both.

  KEYS[1]  the user's state (keys.ts): 10 little-endian doubles
           debt, debtAt, version, graceAt, minuteStart, minuteCount, hourStart, hourCount,
           dayStart, dayCount — the engine's UserState plus the bucket's version

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

-- The stored state: the engine's UserState.
local STATE = '<dddddddddd'
local S = { debt = 0, debtAt = 0, version = 0, graceAt = -1, minuteStart = -1, minuteCount = 0, hourStart = -1, hourCount = 0, dayStart = -1, dayCount = 0 }
local stored = redis.call('GET', KEYS[1])
if stored and #stored == 80 then
  S.debt, S.debtAt, S.version, S.graceAt, S.minuteStart, S.minuteCount, S.hourStart, S.hourCount, S.dayStart, S.dayCount =
    struct.unpack(STATE, stored)
end

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
  -- The charged windows; a newer one already stored (a writer with a later clock) keeps
  -- its start and takes the charge, so no writer's count is lost.
  local starts = { A.minuteStart, A.hourStart, A.dayStart }
  local counts = { minuteUsed, hourUsed, dayUsed }
  local graceAt = A.graceAt
  if graceStarted then graceAt = now end
  local previous = { { S.minuteStart, S.minuteCount }, { S.hourStart, S.hourCount }, { S.dayStart, S.dayCount } }
  for i = 1, 3 do
    if previous[i][1] > starts[i] then
      starts[i], counts[i] = previous[i][1], previous[i][2] + charged
      if i == 3 then graceAt = S.graceAt end
    end
  end
  local lengths = { L.minuteMs, L.hourMs, L.dayMs }
  local expireAt = debtAt + math.ceil(debtAfter / L.perMinute)
  for i = 1, 3 do expireAt = math.max(expireAt, starts[i] + lengths[i]) end
  local value = struct.pack(STATE, debtAfter, debtAt, version, graceAt, starts[1], counts[1], starts[2], counts[2], starts[3], counts[3])
  -- The key outlives its stored windows by at least a slack (every write keeps that true):
  -- if nothing ends later now, its expiry stays (as reconcile.lua).
  local keptUntil = -1
  for i = 1, 3 do
    local start = previous[i][1]
    if stored and start >= 0 then keptUntil = math.max(keptUntil, start + lengths[i]) end
  end
  if expireAt <= keptUntil then
    redis.call('SET', KEYS[1], value, 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], value, 'PXAT', fmt(expireAt + slack))
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
