-- Per-run limits (scripts/policies/limits.lua).
package.path = "scripts/?.lua;" .. package.path
local limits = require "policies.limits"
local agents = require "routing.agents"

describe("the run limits", function()
  it("gives every limit with no run info", function()
    local l = limits.limits()
    assert.equal(4, l.max_parallel)
    assert.equal(limits.MAX_TOKENS_PER_RUN, l.max_tokens)
    assert.equal(limits.MAX_STEPS_PER_RUN, l.max_steps)
    assert.equal(limits.STEP_TIMEOUT_MS, l.step_timeout_ms)
    assert.equal(math.huge, l.max_cost_usd)
  end)

  it("reads the parallel limit of each phase from routing/agents", function()
    assert.equal(5, limits.limits({ phase = "discovery" }).max_parallel)
    assert.equal(1, limits.limits({ phase = "validation" }).max_parallel)
    assert.same(agents.PARALLEL, limits.limits().max_parallel_by_phase)
  end)

  it("falls back to the default phase for an unknown one", function()
    assert.equal(4, limits.limits({ phase = "unknown" }).max_parallel)
  end)

  it("lifts the parallel limit in an emergency", function()
    assert.equal(math.huge, limits.limits({ emergency = true, phase = "validation" }).max_parallel)
    assert.equal(math.huge, limits.limits({ phase = "emergency" }).max_parallel)
  end)

  it("raises on misuse", function()
    assert.has_error(function() limits.limits("x") end,
      "limits.limits: expected a table or nil, got string")
  end)

  it("passes its selftest", function() assert.is_true(limits.selftest()) end)
end)
