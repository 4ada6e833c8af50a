-- rewards/advantage.lua: group-relative advantages (GRPO, multi-agent GRPO)
-- for K >= 2 rollouts of the same task and turn. In multi-agent GRPO every
-- agent of rollout i shares its joint reward, so each gets advantage A[i].
--   mean: A[i] = r[i] - mean(r)
--   rloo: A[i] = r[i] - mean(r without r[i])     (leave-one-out)
--   max:  A[i] = r[i] - max(r)
--   normalize: A[i] = A[i] / (std(r) + eps)      (std over the K rewards)
-- A group whose rewards are all equal gets zeros (no signal). The sums run
-- over the rewards scaled by a power of two (exact), so that finite rewards
-- near the limits of a double neither overflow nor underflow on the way; a
-- result that is still not finite (r = {1.7e308, -1.7e308} with max) gives
-- nil, message rather than an infinity.

local DEFAULT_BASELINE = "mean"
local DEFAULT_NORMALIZE = false
local DEFAULT_EPS = 1e-8
local STD_DDOF = 0        -- 0: population std (divide by K); 1: sample (K - 1)

local M = { DEFAULT_BASELINE = DEFAULT_BASELINE,
            DEFAULT_NORMALIZE = DEFAULT_NORMALIZE, DEFAULT_EPS = DEFAULT_EPS,
            STD_DDOF = STD_DDOF }

local BASELINES = {
  mean = function(r, i, sum, k, max) return sum / k end,
  rloo = function(r, i, sum, k, max) return (sum - r[i]) / (k - 1) end,
  max = function(r, i, sum, k, max) return max end,
}

-- The power of two p with 1 <= s / p < 2, for a finite s > 0.
local function binade(s)
  local p = 2.0 ^ math.floor(math.log(s, 2))
  while s / p >= 2 do p = p * 2 end
  while s / p < 1 do p = p / 2 end
  return p
end

-- compute{rewards={...}, baseline="mean"|"rloo"|"max", normalize=bool, eps=}
-- -> {A1, ..., AK}; K < 2, a non-finite reward or a non-finite advantage
-- -> nil, message.
function M.compute(t)
  if type(t) ~= "table" or type(t.rewards) ~= "table" then
    error("advantage.compute: expected {rewards={...}}", 2)
  end
  local baseline = t.baseline or M.DEFAULT_BASELINE
  local base_fn = BASELINES[baseline]
  if not base_fn then
    error("advantage.compute: baseline must be mean, rloo or max, got " .. tostring(baseline), 2)
  end
  local normalize = t.normalize
  if normalize == nil then normalize = M.DEFAULT_NORMALIZE end
  local eps = t.eps or M.DEFAULT_EPS
  if type(eps) ~= "number" or not (eps >= 0) then
    error("advantage.compute: eps must be a number >= 0", 2)
  end
  local r = t.rewards
  local k = #r
  if k < 2 then return nil, "need at least 2 rollouts, got " .. k end
  local amax, all_equal = 0, true
  for i = 1, k do
    local v = r[i]
    if type(v) ~= "number" then
      error("advantage.compute: rewards[" .. i .. "] must be a number, got " .. type(v), 2)
    end
    if v ~= v or v == math.huge or v == -math.huge then
      return nil, "rewards[" .. i .. "] is not a finite number (" .. tostring(v) .. ")"
    end
    if math.abs(v) > amax then amax = math.abs(v) end
    if v ~= r[1] then all_equal = false end
  end
  local out = {}
  if all_equal then
    for i = 1, k do out[i] = 0.0 end
    return out
  end
  -- x = r / p lies in (-2, 2): its sums and squares stay finite and, p being
  -- a power of two, every result is the one of the unscaled sums.
  local p = binade(amax)
  local x, sum, max = {}, 0, -math.huge
  for i = 1, k do
    x[i] = r[i] / p
    sum = sum + x[i]
    if x[i] > max then max = x[i] end
  end
  for i = 1, k do out[i] = x[i] - base_fn(x, i, sum, k, max) end
  if normalize then
    local mean, ss = sum / k, 0
    for i = 1, k do ss = ss + (x[i] - mean) ^ 2 end
    local std = math.sqrt(ss / (k - M.STD_DDOF))
    local div = std + eps / p         -- (std * p + eps) / p
    if not (div > 0) then
      return nil, "the rewards' std + eps is 0: cannot normalize"
    end
    for i = 1, k do out[i] = out[i] / div end
  else
    for i = 1, k do out[i] = out[i] * p end
  end
  for i = 1, k do
    local a = out[i]
    if a ~= a or a == math.huge or a == -math.huge then
      return nil, "the advantage of rollout " .. i .. " is not a finite number ("
        .. tostring(a) .. ")"
    end
  end
  return out
end

function M.selftest()
  local function near(a, b) return math.abs(a - b) < 1e-9 end
  local function check(cond, what) if not cond then error("advantage selftest: " .. what) end end
  local a = M.compute({ rewards = { 1, 0, 0, 1 }, baseline = "mean" })
  check(near(a[1], 0.5) and near(a[2], -0.5), "mean")
  a = M.compute({ rewards = { 1, 0, 0, 1 }, baseline = "rloo" })
  check(near(a[1], 1 - 1 / 3) and near(a[2], -2 / 3), "rloo")
  a = M.compute({ rewards = { 1, 0, 0.5 }, baseline = "max" })
  check(near(a[1], 0) and near(a[2], -1) and near(a[3], -0.5), "max")
  a = M.compute({ rewards = { 1, 0 }, baseline = "mean", normalize = true, eps = 0 })
  local std = math.sqrt(0.5 / (2 - M.STD_DDOF))
  check(near(a[1], 0.5 / std) and near(a[2], -0.5 / std), "normalize")
  a = M.compute({ rewards = { 0.3, 0.3, 0.3 }, normalize = true })
  check(a[1] == 0 and a[2] == 0 and a[3] == 0, "all equal gives zeros")
  a = M.compute({ rewards = { 1e308, 1e308, 0 } })
  check(a and near(a[1] / 1e308, 1 / 3) and near(a[3] / 1e308, -2 / 3), "huge rewards")
  a = M.compute({ rewards = { 0, 1e-200 }, normalize = true, eps = 0 })
  check(a and near(a[1], -1) and near(a[2], 1), "tiny rewards, normalized")
  local none, msg = M.compute({ rewards = { 1 } })
  check(none == nil and msg == "need at least 2 rollouts, got 1", "K < 2")
  return true
end

return M
