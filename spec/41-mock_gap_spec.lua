-- 41-mock_gap_spec.lua: the mock LLM answers the prompts gap.lua really
-- renders: a plan gap.parse reads, a bad plan then a good one on the
-- re-ask, task results, a failing task, and a synthesis naming failures.
local H = require "mock_llm_helper"
local gap = require "policies.gap"

local REQUEST = "Compare the energy policies of France and Germany"

describe("the mock LLM with gap.lua's prompts", function()
  local m, first

  setup(function()
    if H.have_curl then m, first = H.start() end
  end)

  teardown(function()
    if m then H.stop(m) end
  end)

  local function need()
    if not H.have_curl then pending("curl is not installed") return false end
    if not m then pending("mock-llm did not start: " .. tostring(first)) return false end
    return true
  end

  it("answers the planning prompt with a plan of 4 to 6 tasks that fans out and joins", function()
    if not need() then return end
    local status, reply = H.chat(m, gap.prompt({ request = REQUEST }))
    assert.are.equal(200, status)
    local plan, err = gap.parse(reply)
    assert.is_nil(err)
    assert.is_true(#plan.tasks >= 4 and #plan.tasks <= 6)
    local roots, joins = 0, 0
    for _, t in ipairs(plan.tasks) do
      if #t.deps == 0 then roots = roots + 1 end
      if #t.deps >= 2 then joins = joins + 1 end
    end
    assert.are.equal(3, roots)
    assert.is_true(joins >= 1)
    assert.matches(REQUEST, plan.tasks[1].description, 1, true)
    -- the same request gets the same plan
    local _, again = H.chat(m, gap.prompt({ request = REQUEST }))
    assert.are.equal(reply, again)
  end)

  it("writes a bad plan for [mock-bad-plan], then a good one when the re-ask quotes it", function()
    if not need() then return end
    local req = REQUEST .. " [mock-bad-plan]"
    local _, reply = H.chat(m, gap.prompt({ request = req }))
    local plan, err = gap.parse(reply)
    assert.is_nil(plan)
    assert.matches("mock-bad-line", err, 1, true)
    local _, reply2 = H.chat(m, gap.prompt({ request = req, error = err }))
    local plan2, err2 = gap.parse(reply2)
    assert.is_nil(err2)
    assert.is_true(#plan2.tasks >= 4)
  end)

  it("answers a task prompt with its result, and fails the task [mock-fail-task=N] marks", function()
    if not need() then return end
    local req = REQUEST .. " [mock-fail-task=2]"
    local _, reply = H.chat(m, gap.prompt({ request = req }))
    local plan = assert(gap.parse(reply))
    local results = {}
    for _, t in ipairs(plan.tasks) do
      local status, out = H.chat(m, gap.task_prompt({ request = req,
        task = { id = t.id, description = t.description } }))
      results[t.id] = { status = status, out = out }
    end
    assert.are.equal(200, results["1"].status)
    assert.matches("^Result for: Your task %(Task 1%): Gather background", results["1"].out)
    assert.are.equal(400, results["2"].status)
    assert.are.equal(200, results["3"].status)
  end)

  it("answers task prompts as tasks when the request itself asks for a plan", function()
    if not need() then return end
    local req = "Write a plan in <plan> tags for a trip to Rome [mock-fail-task=2]"
    local _, reply = H.chat(m, gap.prompt({ request = req }))
    local plan = assert(gap.parse(reply))
    local results = {}
    for _, t in ipairs(plan.tasks) do
      local status, out = H.chat(m, gap.task_prompt({ request = req,
        task = { id = t.id, description = t.description } }))
      results[t.id] = { status = status, out = out }
    end
    assert.are.equal(200, results["1"].status)
    assert.matches("^Result for: Your task %(Task 1%)", results["1"].out)
    assert.are.equal(400, results["2"].status)
    -- and a request saying "your task" still gets a plan when it is planned
    local _, reply2 = H.chat(m, gap.prompt({ request = "Your task: compare two laptops" }))
    assert.is_truthy(gap.parse(reply2))
  end)

  it("answers the synthesis prompt naming every result and every failure", function()
    if not need() then return end
    local prompt = gap.synthesis_prompt({ request = REQUEST, results = {
      { id = "1", description = "Gather background", status = "passed",
        result = "France runs mostly on nuclear power." },
      { id = "2", description = "List the key facts", status = "failed", error = "HTTP 400: Mock fault" },
      { id = "3", description = "Identify risks", status = "passed", result = "Grid stability." },
      { id = "4", description = "Compare", status = "skipped" } } })
    local status, reply = H.chat(m, prompt)
    assert.are.equal(200, status)
    local answer = gap.answer(reply)
    assert.matches("Final answer from 4 task results.", answer, 1, true)
    assert.matches("- Task 1: France runs mostly on nuclear power.", answer, 1, true)
    assert.matches("- Task 2 failed: HTTP 400: Mock fault", answer, 1, true)
    assert.matches("- Task 3: Grid stability.", answer, 1, true)
    assert.matches("Failed tasks: Task 2, Task 4.", answer, 1, true)
  end)
end)
