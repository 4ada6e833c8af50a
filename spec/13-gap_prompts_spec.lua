-- GAP prompts (planning, re-ask, task, synthesis) and the plan-or-not hook.
package.path = "scripts/?.lua;" .. package.path
local gap = require "policies.gap"

local function has(s, sub) return s:find(sub, 1, true) ~= nil end

describe("the planning prompt", function()
  local p = gap.prompt({ request = "Compare the prices of A and B" })

  it("carries the request", function()
    assert.is_true(has(p, "Request:\nCompare the prices of A and B\n"))
  end)

  it("asks for a brief <think> under 100 words, then a <plan>", function()
    assert.is_true(has(p, "<think></think>"))
    assert.is_true(has(p, "under 100 words"))
    assert.is_true(has(p, "<plan></plan>"))
  end)

  it("shows the line format with none and with task ids", function()
    assert.is_true(has(p, "Task 1: <what to do> | Dependencies: none"))
    assert.is_true(has(p, "Task 3: <what to do> | Dependencies: Task 1, Task 2"))
  end)

  it("asks for atomic tasks, parallel where possible", function()
    assert.is_true(has(p, "atomic: one tool call or one analysis"))
    assert.is_true(has(p, "parallel"))
  end)

  it("inserts a request with % and braces verbatim", function()
    local q = gap.prompt({ request = "50% of {request} and %1" })
    assert.is_true(has(q, "Request:\n50% of {request} and %1\n"))
  end)

  it("re-asks with the previous parse error", function()
    local q = gap.prompt({ request = "R", error = 'line 3: cannot read a task in "Taks 2 Fetch"' })
    assert.is_true(has(q, 'could not be read as a plan: line 3: cannot read a task in "Taks 2 Fetch"'))
    assert.is_true(has(q, "Write it again"))
    assert.equal(1, select(2, q:gsub("Request:", "")))
    assert.is_false(has(p, "could not be read"))
  end)

  it("gives a prompt whose example plan the parser reads", function()
    local example = p:match("(<plan>\n.-</plan>)")
    local plan = assert(gap.parse(example))
    assert.equal(3, #plan.tasks)
  end)

  it("follows an edited template", function()
    local old = gap.PLAN_PROMPT
    gap.PLAN_PROMPT = "Plan this: {request}"
    finally(function() gap.PLAN_PROMPT = old end)
    assert.equal("Plan this: x", gap.prompt({ request = " x " }))
  end)

  it("raises on misuse", function()
    assert.has_error(function() gap.prompt({}) end,
      "gap.prompt: request must be a string, got nil")
  end)
end)

describe("the plan-or-not hook", function()
  local function plan(request, tier) return gap.should_plan({ request = request, tier = tier }) end

  it("answers a short simple request with one call", function()
    local yes, why = plan("What is the capital of France?")
    assert.is_false(yes)
    assert.equal("one call: 6 words, tier local, no list or multi-part ask", why)
  end)

  it("plans when routing's complexity says strong", function()
    local yes, why = plan("Refactor the login module")
    assert.is_true(yes); assert.equal("complexity tier strong", why)
  end)

  it("takes the tier given by the caller over its own classification", function()
    assert.is_false((plan("Refactor the login module", "fast")))
    assert.is_true((plan("hello", "strong")))
  end)

  it("plans a request longer than PLAN_WORDS words", function()
    local long = ("word "):rep(gap.PLAN_WORDS + 1)
    local yes, why = plan(long)
    assert.is_true(yes)
    assert.equal(("request has %d words (more than %d)"):format(gap.PLAN_WORDS + 1, gap.PLAN_WORDS), why)
    assert.is_false((plan(("word "):rep(gap.PLAN_WORDS))))
  end)

  it("plans a request that lists several items", function()
    local yes, why = plan("Please:\n- fetch the users\n- fetch the orders")
    assert.is_true(yes); assert.equal("request lists 2 items", why)
    assert.is_true((plan("Do this:\n1. fetch\n2. compare\n3. report")))
    assert.is_true((plan("Do 1) fetch 2) compare")))
  end)

  it("plans a multi-part ask", function()
    local yes, why = plan("Fetch the weather and then email it to me")
    assert.is_true(yes); assert.equal('multi-part request ("and then")', why)
    assert.is_true((plan("Find the file, then fix it")))
  end)

  it("does not count a single list item", function()
    assert.is_false((plan("Note:\n- one thing")))
  end)

  it("raises on misuse", function()
    assert.has_error(function() gap.should_plan({ tier = "fast" }) end,
      "gap.should_plan: request must be a string, got nil")
  end)
end)

describe("the prompt of one task", function()
  it("carries the request and the task", function()
    local p = gap.task_prompt({ request = "Make a report", task = { id = "2", description = "Fetch orders" } })
    assert.is_true(has(p, "Make a report"))
    assert.is_true(has(p, "Your task (Task 2): Fetch orders"))
    assert.is_false(has(p, "Results of the tasks"))
  end)

  it("carries each dependency's result", function()
    local p = gap.task_prompt({ request = "R", task = { id = "3", description = "Report" },
      deps = { { id = "1", description = "Users", result = "42 users" },
               { id = "2", description = "Orders", result = "7 orders" } } })
    assert.is_true(has(p, "[Task 1: Users]\n42 users\n"))
    assert.is_true(has(p, "[Task 2: Orders]\n7 orders\n"))
  end)

  it("cuts a long result on a character boundary", function()
    local big = ("\u{00e9}"):rep(gap.MAX_RESULT_BYTES)  -- 2 bytes each
    local p = gap.task_prompt({ request = "R", task = { id = 1, description = "d" },
      deps = { { id = "1", description = "x", result = "a" .. big } } })
    assert.is_true(utf8.len(p) ~= nil)
    assert.is_true(has(p, "more bytes cut]"))
    assert.is_true(#p < gap.MAX_RESULT_BYTES + 1000)
  end)
end)

describe("the synthesis prompt", function()
  local results = {
    { id = "1", description = "Fetch users", status = "passed", result = "42 users" },
    { id = "2", description = "Fetch orders", status = "failed", error = "HTTP 500 after 4 attempts" },
    { id = "3", description = "Join them", status = "skipped" },
  }
  local p = gap.synthesis_prompt({ request = "Make a report", results = results })

  it("carries the request and each passed result", function()
    assert.is_true(has(p, "Make a report"))
    assert.is_true(has(p, "Task 1 (passed): Fetch users\nResult:\n42 users"))
  end)

  it("names a failed task with its error", function()
    assert.is_true(has(p, "Task 2 failed: Fetch orders\nError: HTTP 500 after 4 attempts"))
  end)

  it("names a skipped task", function()
    assert.is_true(has(p, "Task 3 skipped: Join them\nError: not run: a task it depends on failed"))
  end)

  it("asks the answer to say what is missing", function()
    assert.is_true(has(p, "Not every task succeeded: Task 2 failed, Task 3 skipped."))
    assert.is_true(has(p, "do not invent"))
  end)

  it("says nothing of failures when all passed", function()
    local q = gap.synthesis_prompt({ request = "R", results = { results[1] } })
    assert.is_false(has(q, "Not every task"))
  end)
end)

describe("reading the answer from a reply", function()
  it("takes the <answer> block", function()
    assert.equal("Paris.", gap.answer("<observation>{}</observation>\n<answer>\n Paris.\n</answer>"))
  end)
  it("drops a <think> block", function()
    assert.equal("Paris.", gap.answer("<think>capital...</think>\nParis."))
  end)
  it("keeps a plain reply", function()
    assert.equal("Paris.", gap.answer("  Paris.  "))
  end)
  it("keeps a </think> written inside the answer", function()
    assert.equal("Use a </think> tag", gap.answer("<answer>Use a </think> tag</answer>"))
    assert.equal("Use a </think> tag", gap.answer("Sure. <answer>Use a </think> tag</answer>"))
    assert.equal("Close it with </think>.",
      gap.answer("<think>easy</think><answer>Close it with </think>.</answer>"))
  end)
  it("skips a <think> block that mentions <answer> before the real one", function()
  end)
  it("drops an unmatched </answer> at the end", function()
    assert.equal("Here: A", gap.answer("Here: A</answer>"))
    assert.equal("A", gap.answer("<think>x</think> A </ANSWER>\n"))
  end)
end)
