-- Reward scripts: group (multi-agent), step, trajectory, group-relative
-- advantages.
package.path = "scripts/?.lua;" .. package.path
local group = require "rewards.group"
local step = require "rewards.step"
local trajectory = require "rewards.trajectory"
local advantage = require "rewards.advantage"

local function near(want, got, tol)
  assert.is_number(got)
  assert.is_true(math.abs(want - got) <= (tol or 1e-9),
    ("expected %.12g, got %.12g"):format(want, got))
end

describe("rewards.group", function()
  it("gives 0.67 to the sender and 0.585 to the receiver of a 0.85 handoff", function()
    local r = group.reward({ success = true, participants = { "se", "research" },
      handoffs = { { from = "se", to = "research", context = 0.85 } } })
    near(0.67, r.se)
    near(0.585, r.research)
  end)

  it("splits -0.3 over the participants on failure", function()
    local r = group.reward({ success = false, participants = { "a", "b", "c" } })
    near(-0.1, r.a); near(-0.1, r.b); near(-0.1, r.c)
  end)

  it("gives an agent that joined twice two shares", function()
    local r = group.reward({ success = true, participants = { "a", "b", "a", "c" } })
    near(0.5, r.a); near(0.25, r.b); near(0.25, r.c)
  end)

  it("clamps the context of a handoff to [0, 1]", function()
    local r = group.reward({ success = true, participants = { "a", "b" },
      handoffs = { { from = "a", to = "b", context = 3 }, { from = "b", to = "a", context = -2 } } })
    near(0.5 + 0.2, r.a)
    near(0.5 + 0.1, r.b)
  end)

  it("sums several handoffs per agent", function()
    local r = group.reward({ success = true, participants = { "a", "b" }, handoffs = {
      { from = "a", to = "b", context = 0.5 }, { from = "a", to = "b", context = 0.5 },
      { from = "b", to = "a", context = 1 } } })
    near(0.5 + 0.1 + 0.1 + 0.1, r.a)
    near(0.5 + 0.05 + 0.05 + 0.2, r.b)
  end)

  it("credits a handoff's agents even when they are not participants", function()
    local r = group.reward({ success = true, participants = { "a" },
      handoffs = { { from = "a", to = "z", context = 1 } } })
    near(1.2, r.a); near(0.1, r.z)
  end)

  it("takes a handoff without context as context 0", function()
    local r = group.reward({ success = true, participants = { "a", "b" },
      handoffs = { { from = "a", to = "b" } } })
    near(0.5, r.a); near(0.5, r.b)
  end)

  it("gives an empty result, not an error, without participants", function()
    assert.same({}, group.reward({ success = true, participants = {} }))
    assert.same({}, group.reward({ success = false }))
    assert.same({}, group.reward({ success = true, participants = {},
      handoffs = { { from = "a", to = "b", context = 1 } } }))
  end)

  it("raises on misuse", function()
    assert.has_error(function() group.reward(nil) end, "group.reward: expected a table, got nil")
    assert.has_error(function() group.reward({ participants = { "a" } }) end,
      "group.reward: success must be a boolean, got nil")
    assert.has_error(function() group.reward({ success = true, participants = { 1 } }) end,
      "group.reward: participants[1] must be a non-empty string, got number")
    assert.has_error(function() group.reward({ success = true, participants = { "a" },
      handoffs = { { from = "a", to = "b", context = "high" } } }) end,
      "group.reward: handoffs[1].context must be a number")
  end)

  it("passes its selftest", function() assert.is_true(group.selftest()) end)
end)

describe("rewards.step", function()
  local CASES = {  -- {step, reward} with the default weights
    { { status = "passed", duration_ms = 0, attempts = 1, verified = true }, 1.0 },
    { { status = "passed", duration_ms = 0, attempts = 1 }, 0.9 },
    { { status = "passed", duration_ms = 30000, attempts = 1 }, 0.85 },
    { { status = "passed", duration_ms = 60000 }, 0.8 },
    { { status = "passed", duration_ms = 120000 }, 0.8 },
    { { status = "passed" }, 0.8 },
    { { status = "passed", duration_ms = 500, budget_ms = 1000, attempts = 3 }, 0.75 },
    { { status = "passed", duration_ms = 0, verified = false }, -0.8 },
    { { status = "failed", attempts = 1 }, -0.8 },
    { { status = "failed", attempts = 3 }, -0.9 },
    { { status = "failed", attempts = 50 }, -1.0 },
    { { status = "failed", verified = true, duration_ms = 0 }, 1.0 },
    { { status = "skipped", attempts = 0 }, 0.0 },
  }

  it("follows the documented formula", function()
    for i, c in ipairs(CASES) do
      local ok, err = pcall(near, c[2], step.reward(c[1]))
      assert(ok, "case " .. i .. ": " .. tostring(err))
    end
  end)

  it("stays in [-1, 1] for any input", function()
    math.randomseed(7)
    local statuses = { "passed", "failed", "skipped" }
    local verified = { true, false }
    for _ = 1, 2000 do
      local r = step.reward({ status = statuses[math.random(3)], verified = verified[math.random(3)],
        duration_ms = math.random() * 1e6, attempts = math.random(0, 20),
        budget_ms = math.random() < 0.5 and math.random(1, 1e5) or nil })
      assert.is_true(r >= -1 and r <= 1)
    end
  end)

  it("raises on misuse", function()
    assert.has_error(function() step.reward({ status = "ok" }) end,
      "step.reward: status must be passed, failed or skipped, got ok")
    assert.has_error(function() step.reward({ status = "passed", duration_ms = -1 }) end,
      "step.reward: duration_ms must be a finite number >= 0, got -1")
    assert.has_error(function() step.reward({ status = "passed", verified = "yes" }) end,
      "step.reward: verified must be a boolean or nil")
  end)

  it("passes its selftest", function() assert.is_true(step.selftest()) end)
end)

describe("rewards.trajectory", function()
  it("gives +1.0 if correct, -0.5 if not", function()
    near(1.0, trajectory.reward({ correct = true, turns = 10, latency_ms = 5000, tool_errors = 0 }))
    near(-0.5, trajectory.reward({ correct = false, turns = 10, latency_ms = 5000, tool_errors = 0 }))
  end)

  it("adds 0.1 for at most 3 turns", function()
    near(1.1, trajectory.reward({ correct = true, turns = 3, latency_ms = 5000 }))
    near(1.0, trajectory.reward({ correct = true, turns = 4, latency_ms = 5000 }))
  end)

  it("adds 0.05 under 2000 ms", function()
    near(1.05, trajectory.reward({ correct = true, turns = 9, latency_ms = 1999 }))
    near(1.0, trajectory.reward({ correct = true, turns = 9, latency_ms = 2000 }))
  end)

  it("takes 0.2 per tool error", function()
    near(-0.5 + 0.1 + 0.05 - 0.6,
      trajectory.reward({ correct = false, turns = 1, latency_ms = 10, tool_errors = 3 }))
  end)

  it("gives all bonuses together", function()
    near(1.15, trajectory.reward({ correct = true, turns = 1, latency_ms = 100, tool_errors = 0 }))
  end)

  it("raises on misuse", function()
    assert.has_error(function() trajectory.reward({ correct = 1 }) end,
      "trajectory.reward: correct must be a boolean, got number")
    assert.has_error(function() trajectory.reward({ correct = true, turns = -1 }) end,
      "trajectory.reward: turns must be a finite number >= 0, got -1")
  end)

  it("refuses an infinite count rather than give -inf", function()
    assert.has_error(function() trajectory.reward({ correct = true, tool_errors = math.huge }) end,
      "trajectory.reward: tool_errors must be a finite number >= 0, got inf")
    assert.has_error(function() trajectory.reward({ correct = true, latency_ms = math.huge }) end,
      "trajectory.reward: latency_ms must be a finite number >= 0, got inf")
  end)

  it("passes its selftest", function() assert.is_true(trajectory.selftest()) end)
end)

describe("rewards.advantage", function()
  local R = { 1.0, 0.0, 0.5, 0.5 }

  it("subtracts the group mean by default", function()
    local a = advantage.compute({ rewards = R })
    near(0.5, a[1]); near(-0.5, a[2]); near(0, a[3]); near(0, a[4])
  end)

  it("subtracts the leave-one-out mean with rloo", function()
    local a = advantage.compute({ rewards = R, baseline = "rloo" })
    near(1.0 - 1.0 / 3, a[1]); near(0.0 - 2.0 / 3, a[2]); near(0.5 - 1.5 / 3, a[3])
    local m = advantage.compute({ rewards = R, baseline = "mean" })
    for i = 1, #R do near(m[i] * #R / (#R - 1), a[i]) end  -- rloo = K/(K-1) * mean
  end)

  it("subtracts the best reward with max", function()
    local a = advantage.compute({ rewards = R, baseline = "max" })
    near(0, a[1]); near(-1, a[2]); near(-0.5, a[3])
  end)

  it("normalises by the group's std plus eps", function()
    local a = advantage.compute({ rewards = R, normalize = true, eps = 1e-8 })
    local std = math.sqrt((0.25 + 0.25 + 0 + 0) / 4)
    near(0.5 / (std + 1e-8), a[1]); near(-0.5 / (std + 1e-8), a[2])
    local sum, sq = 0, 0
    for i = 1, #a do sum = sum + a[i]; sq = sq + a[i] ^ 2 end
    near(0, sum); near(1, sq / #a, 1e-6)  -- zero mean, unit variance
  end)

  it("gives zeros to a group whose rewards are all equal", function()
    for _, b in ipairs({ "mean", "rloo", "max" }) do
      assert.same({ 0, 0, 0 }, advantage.compute({ rewards = { 0.7, 0.7, 0.7 }, baseline = b,
                                                   normalize = true }))
    end
  end)

  it("refuses fewer than 2 rollouts with a clear error", function()
    local a, err = advantage.compute({ rewards = { 1 } })
    assert.is_nil(a); assert.equal("need at least 2 rollouts, got 1", err)
    a, err = advantage.compute({ rewards = {} })
    assert.is_nil(a); assert.equal("need at least 2 rollouts, got 0", err)
  end)

  it("refuses a reward that is NaN or infinite", function()
    local a, err = advantage.compute({ rewards = { 1, 0 / 0 } })
    assert.is_nil(a); assert.matches("^rewards%[2%] is not a finite number", err)
    a, err = advantage.compute({ rewards = { math.huge, 1 } })
    assert.is_nil(a); assert.matches("^rewards%[1%] is not a finite number", err)
  end)

  it("raises on misuse", function()
    assert.has_error(function() advantage.compute({ rewards = { 1, 2 }, baseline = "median" }) end,
      "advantage.compute: baseline must be mean, rloo or max, got median")
    assert.has_error(function() advantage.compute({ rewards = { 1, "2" } }) end,
      "advantage.compute: rewards[2] must be a number, got string")
    assert.has_error(function() advantage.compute({}) end,
      "advantage.compute: expected {rewards={...}}")
  end)

  it("gives finite advantages for finite rewards near the limits of a double", function()
    local a = assert(advantage.compute({ rewards = { 1e308, 1e308, 0 } }))
    near(1 / 3, a[1] / 1e308); near(1 / 3, a[2] / 1e308); near(-2 / 3, a[3] / 1e308)
    a = assert(advantage.compute({ rewards = { 1e308, 1e308, 0 }, normalize = true }))
    near(math.sqrt(0.5), a[1]); near(-2 * math.sqrt(0.5), a[3])
    a = assert(advantage.compute({ rewards = { 1e308, -1e308, 0 }, baseline = "rloo" }))
    near(1.5, a[1] / 1e308); near(0, a[3])
    a = assert(advantage.compute({ rewards = { 0, 1e-200 }, normalize = true, eps = 0 }))
    near(-1, a[1]); near(1, a[2])
    a = assert(advantage.compute({ rewards = { 0, 1e-200 }, normalize = true }))
    near(0, a[1]); near(0, a[2])
  end)

  it("returns nil and a message when an advantage is beyond a double", function()
    local a, err = advantage.compute({ rewards = { 1.7e308, -1.7e308 }, baseline = "max" })
    assert.is_nil(a)
    assert.equal("the advantage of rollout 2 is not a finite number (-inf)", err)
  end)

  it("passes its selftest", function() assert.is_true(advantage.selftest()) end)
end)
