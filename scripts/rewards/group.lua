-- rewards/group.lua: the multi-agent group reward of one task.
-- base = SUCCESS_BASE on success, FAILURE_BASE on failure, split equally over
-- the participation entries (an agent listed twice gets two shares); each
-- handoff adds context * SENDER_WEIGHT to the sender and
-- context * SENDER_WEIGHT * RECEIVER_FACTOR to the receiver, with context
-- clamped to [0, 1]. Rewards are summed per agent.

local SUCCESS_BASE = 1.0
local FAILURE_BASE = -0.3
local SENDER_WEIGHT = 0.2     -- a handoff's sender gains context * 0.2
local RECEIVER_FACTOR = 0.5   -- the receiver gains half of the sender's bonus
local MISSING_CONTEXT = 0.0   -- context when a handoff has none

local M = { SUCCESS_BASE = SUCCESS_BASE, FAILURE_BASE = FAILURE_BASE,
            SENDER_WEIGHT = SENDER_WEIGHT, RECEIVER_FACTOR = RECEIVER_FACTOR,
            MISSING_CONTEXT = MISSING_CONTEXT }

local function clamp01(x)
  if x ~= x then return 0 end          -- NaN
  if x < 0 then return 0 elseif x > 1 then return 1 end
  return x
end

local function agent_name(v, what)
  if type(v) ~= "string" or v == "" then
    error("group.reward: " .. what .. " must be a non-empty string, got " .. type(v), 3)
  end
  return v
end

-- reward{success=bool, participants={names...}, handoffs={{from=, to=, context=}}}
-- -> {agent = reward, ...}; no participants -> {} (handoffs then ignored).
-- A handoff whose agents are not participants still credits them.
function M.reward(t)
  if type(t) ~= "table" then
    error("group.reward: expected a table, got " .. type(t), 2)
  end
  if type(t.success) ~= "boolean" then
    error("group.reward: success must be a boolean, got " .. type(t.success), 2)
  end
  local parts = t.participants or {}
  local handoffs = t.handoffs or {}
  if type(parts) ~= "table" then error("group.reward: participants must be a list", 2) end
  if type(handoffs) ~= "table" then error("group.reward: handoffs must be a list", 2) end
  local out = {}
  local n = #parts
  if n == 0 then return out end
  local share = (t.success and M.SUCCESS_BASE or M.FAILURE_BASE) / n
  for i = 1, n do
    local a = agent_name(parts[i], "participants[" .. i .. "]")
    out[a] = (out[a] or 0) + share
  end
  for i, h in ipairs(handoffs) do
    if type(h) ~= "table" then error("group.reward: handoffs[" .. i .. "] must be a table", 2) end
    local from = agent_name(h.from, "handoffs[" .. i .. "].from")
    local to = agent_name(h.to, "handoffs[" .. i .. "].to")
    local ctx = h.context
    if ctx == nil then ctx = M.MISSING_CONTEXT end
    if type(ctx) ~= "number" then
      error("group.reward: handoffs[" .. i .. "].context must be a number", 2)
    end
    local bonus = clamp01(ctx) * M.SENDER_WEIGHT
    out[from] = (out[from] or 0) + bonus
    out[to] = (out[to] or 0) + bonus * M.RECEIVER_FACTOR
  end
  return out
end

-- Checks the mechanism with the weights above; the documented 0.67 / 0.585
-- case with the default weights is in spec/11-rewards_spec.lua.
function M.selftest()
  local function near(a, b) return math.abs(a - b) < 1e-9 end
  local function check(cond, what)
    if not cond then error("group selftest: " .. what) end
  end
  local r = M.reward({ success = true, participants = { "se", "research" },
                       handoffs = { { from = "se", to = "research", context = 0.85 } } })
  local bonus = 0.85 * M.SENDER_WEIGHT
  check(near(r.se, M.SUCCESS_BASE / 2 + bonus), "sender of a handoff")
  check(near(r.research, M.SUCCESS_BASE / 2 + bonus * M.RECEIVER_FACTOR), "receiver")
  r = M.reward({ success = false, participants = { "a", "a", "b" } })
  check(near(r.a, 2 * M.FAILURE_BASE / 3) and near(r.b, M.FAILURE_BASE / 3), "repeat shares")
  r = M.reward({ success = true, participants = { "a" },
                 handoffs = { { from = "a", to = "b", context = 7 } } })
  check(near(r.b, M.SENDER_WEIGHT * M.RECEIVER_FACTOR), "context clamped to 1")
  check(next(M.reward({ success = true, participants = {} })) == nil, "empty")
  return true
end

return M
