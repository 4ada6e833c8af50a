-- policies/limits.lua: per-run limits an operator tunes. limits(run_info)
-- returns the numbers the core applies to one run; math.huge means "no
-- limit". Parallelism per phase comes from routing/agents.lua.

local MAX_TOKENS_PER_RUN = 2000000  -- prompt + completion tokens, all steps
local MAX_STEPS_PER_RUN = 500       -- steps in one graph (planned or given)
local MAX_COST_USD = math.huge      -- spend per run, from the tiers' prices
local STEP_TIMEOUT_MS = 300000      -- one step (an LLM call with its retries)
local DEFAULT_PHASE = "implementation"

local agents = require "routing.agents"

local M = { MAX_TOKENS_PER_RUN = MAX_TOKENS_PER_RUN,
            MAX_STEPS_PER_RUN = MAX_STEPS_PER_RUN, MAX_COST_USD = MAX_COST_USD,
            STEP_TIMEOUT_MS = STEP_TIMEOUT_MS, DEFAULT_PHASE = DEFAULT_PHASE }

-- limits{phase=nil|string, emergency=nil|bool, ...} ->
--   {max_parallel=n, max_parallel_by_phase={phase=n...}, max_tokens=n,
--    max_steps=n, max_cost_usd=n, step_timeout_ms=n}
-- max_parallel is the limit of run_info.phase (DEFAULT_PHASE when absent or
-- unknown); an emergency run has no parallel limit.
function M.limits(run_info)
  run_info = run_info or {}
  if type(run_info) ~= "table" then
    error("limits.limits: expected a table or nil, got " .. type(run_info), 2)
  end
  local by_phase = {}
  for phase, n in pairs(agents.PARALLEL) do by_phase[phase] = n end
  local phase = run_info.phase
  if type(phase) ~= "string" or by_phase[phase] == nil then phase = M.DEFAULT_PHASE end
  local max_parallel = by_phase[phase] or math.huge
  if run_info.emergency == true then max_parallel = math.huge end
  return { max_parallel = max_parallel, max_parallel_by_phase = by_phase,
           max_tokens = M.MAX_TOKENS_PER_RUN, max_steps = M.MAX_STEPS_PER_RUN,
           max_cost_usd = M.MAX_COST_USD, step_timeout_ms = M.STEP_TIMEOUT_MS }
end

function M.selftest()
  local l = M.limits()
  for _, k in ipairs({ "max_parallel", "max_tokens", "max_steps", "max_cost_usd",
                       "step_timeout_ms" }) do
    if type(l[k]) ~= "number" or not (l[k] > 0) then
      error("limits selftest: " .. k .. " must be a number > 0")
    end
  end
  if M.limits({ emergency = true }).max_parallel ~= math.huge then
    error("limits selftest: an emergency run must have no parallel limit")
  end
  for phase, n in pairs(agents.PARALLEL) do
    if M.limits({ phase = phase }).max_parallel ~= n then
      error("limits selftest: phase " .. phase)
    end
  end
  return true
end

return M
