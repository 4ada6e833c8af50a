-- rewards/step.lua: the reward of one step, in [-1, 1].
--   outcome = status, unless verified is true/false: then the verified
--             outcome wins (passed + verified=false counts as failed)
--   r = PASSED (0.8) | FAILED (-0.8); a skipped step gets SKIPPED (0), always
--     + VERIFIED_BONUS (0.1)            when verified == true
--     + SPEED_WEIGHT (0.1) * max(0, 1 - duration_ms / budget_ms)
--                                       when the outcome is passed
--     - ATTEMPT_PENALTY (0.05) * min(attempts - 1, MAX_EXTRA_ATTEMPTS (4))
--   clamped to [MIN_REWARD, MAX_REWARD].

local PASSED, FAILED, SKIPPED = 0.8, -0.8, 0.0
local VERIFIED_BONUS = 0.1
local SPEED_WEIGHT = 0.1
local DEFAULT_BUDGET_MS = 60000    -- used when the step has no budget_ms
local ATTEMPT_PENALTY = 0.05       -- per attempt after the first
local MAX_EXTRA_ATTEMPTS = 4
local MIN_REWARD, MAX_REWARD = -1.0, 1.0

local M = { PASSED = PASSED, FAILED = FAILED, SKIPPED = SKIPPED,
            VERIFIED_BONUS = VERIFIED_BONUS, SPEED_WEIGHT = SPEED_WEIGHT,
            DEFAULT_BUDGET_MS = DEFAULT_BUDGET_MS,
            ATTEMPT_PENALTY = ATTEMPT_PENALTY,
            MAX_EXTRA_ATTEMPTS = MAX_EXTRA_ATTEMPTS,
            MIN_REWARD = MIN_REWARD, MAX_REWARD = MAX_REWARD }

local STATUSES = { passed = true, failed = true, skipped = true }

local function num(s, k, min)
  local v = s[k]
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v < min or v == math.huge then
    error(("step.reward: %s must be a finite number >= %s, got %s"):format(
      k, tostring(min), tostring(v)), 3)
  end
  return v
end

-- reward{status="passed"|"failed"|"skipped", duration_ms=, attempts=,
--        verified=true|false|nil, budget_ms=} -> number in [-1, 1].
-- A missing duration earns no speed bonus; missing attempts counts as 1.
function M.reward(s)
  if type(s) ~= "table" then
    error("step.reward: expected a table, got " .. type(s), 2)
  end
  if not STATUSES[s.status] then
    error("step.reward: status must be passed, failed or skipped, got " .. tostring(s.status), 2)
  end
  if s.verified ~= nil and type(s.verified) ~= "boolean" then
    error("step.reward: verified must be a boolean or nil", 2)
  end
  local duration = num(s, "duration_ms", 0)
  local attempts = num(s, "attempts", 0) or 1
  local budget = num(s, "budget_ms", 0) or M.DEFAULT_BUDGET_MS
  if s.status == "skipped" then return M.SKIPPED end
  local passed = s.status == "passed"
  if s.verified ~= nil then passed = s.verified end
  local r = passed and M.PASSED or M.FAILED
  if s.verified == true then r = r + M.VERIFIED_BONUS end
  if passed and duration and budget > 0 then
    r = r + M.SPEED_WEIGHT * math.max(0, 1 - duration / budget)
  end
  local extra = math.min(math.max(attempts - 1, 0), M.MAX_EXTRA_ATTEMPTS)
  r = r - M.ATTEMPT_PENALTY * extra
  return math.max(M.MIN_REWARD, math.min(M.MAX_REWARD, r))
end

function M.selftest()
  local function check(s, want)
    local got = M.reward(s)
    if math.abs(got - want) > 1e-9 then
      error(("step selftest: expected %.6g, got %.6g"):format(want, got))
    end
  end
  local clamp = function(x) return math.max(M.MIN_REWARD, math.min(M.MAX_REWARD, x)) end
  check({ status = "passed", duration_ms = 0, attempts = 1, verified = true },
        clamp(M.PASSED + M.VERIFIED_BONUS + M.SPEED_WEIGHT))
  check({ status = "passed", duration_ms = 500, budget_ms = 1000 },
        clamp(M.PASSED + M.SPEED_WEIGHT / 2))
  check({ status = "passed", verified = false, attempts = 2 },
        clamp(M.FAILED - M.ATTEMPT_PENALTY))
  check({ status = "failed", attempts = 100 },
        clamp(M.FAILED - M.ATTEMPT_PENALTY * M.MAX_EXTRA_ATTEMPTS))
  check({ status = "skipped" }, M.SKIPPED)
  return true
end

return M
