-- rewards/trajectory.lua: the reward of one whole trajectory (an episode).
-- r = (correct and CORRECT or INCORRECT)
--   + FEW_TURNS_BONUS if turns <= FEW_TURNS
--   + FAST_BONUS if latency_ms < FAST_MS
--   - TOOL_ERROR_PENALTY * tool_errors
-- Not clamped: with the defaults r is in [-0.5 - 0.2 * tool_errors, 1.15].

local CORRECT = 1.0
local INCORRECT = -0.5
local FEW_TURNS, FEW_TURNS_BONUS = 3, 0.1       -- turns <= 3 earns +0.1
local FAST_MS, FAST_BONUS = 2000, 0.05          -- latency < 2000 ms earns +0.05
local TOOL_ERROR_PENALTY = 0.2                  -- per tool error

local M = { CORRECT = CORRECT, INCORRECT = INCORRECT, FEW_TURNS = FEW_TURNS,
            FEW_TURNS_BONUS = FEW_TURNS_BONUS, FAST_MS = FAST_MS,
            FAST_BONUS = FAST_BONUS, TOOL_ERROR_PENALTY = TOOL_ERROR_PENALTY }

local function count(t, k)
  local v = t[k]
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge then
    error("trajectory.reward: " .. k .. " must be a finite number >= 0, got " .. tostring(v), 3)
  end
  return v
end

-- reward{correct=bool, turns=n, latency_ms=n, tool_errors=n} -> number.
-- A missing turns or latency_ms earns no bonus; missing tool_errors is 0.
function M.reward(t)
  if type(t) ~= "table" then
    error("trajectory.reward: expected a table, got " .. type(t), 2)
  end
  if type(t.correct) ~= "boolean" then
    error("trajectory.reward: correct must be a boolean, got " .. type(t.correct), 2)
  end
  local turns, latency = count(t, "turns"), count(t, "latency_ms")
  local errors = count(t, "tool_errors") or 0
  local r = t.correct and M.CORRECT or M.INCORRECT
  if turns and turns <= M.FEW_TURNS then r = r + M.FEW_TURNS_BONUS end
  if latency and latency < M.FAST_MS then r = r + M.FAST_BONUS end
  return r - M.TOOL_ERROR_PENALTY * errors
end

function M.selftest()
  local function check(t, want)
    local got = M.reward(t)
    if math.abs(got - want) > 1e-9 then
      error(("trajectory selftest: expected %.6g, got %.6g"):format(want, got))
    end
  end
  check({ correct = true, turns = M.FEW_TURNS, latency_ms = M.FAST_MS - 1, tool_errors = 0 },
        M.CORRECT + M.FEW_TURNS_BONUS + M.FAST_BONUS)
  check({ correct = false, turns = M.FEW_TURNS + 1, latency_ms = M.FAST_MS, tool_errors = 2 },
        M.INCORRECT - 2 * M.TOOL_ERROR_PENALTY)
  check({ correct = true }, M.CORRECT)
  if pcall(M.reward, { correct = true, tool_errors = math.huge }) then
    error("trajectory selftest: an infinite tool_errors was accepted")
  end
  return true
end

return M
