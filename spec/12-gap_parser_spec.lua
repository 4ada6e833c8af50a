-- The GAP plan parser (scripts/policies/gap.lua): from clean to messy model
-- output, each case with the graph it must give or the error it must name.
package.path = "scripts/?.lua;" .. package.path
local gap = require "policies.gap"

-- The graph as {{id, description, {deps...}}, ...}.
local function graph(text)
  local plan, err = gap.parse(text)
  if not plan then return nil, err end
  local out = {}
  for i, t in ipairs(plan.tasks) do out[i] = { t.id, t.description, t.deps } end
  return out, plan
end

local DIAMOND = {
  { "1", "Fetch user data", {} },
  { "2", "Fetch order history", {} },
  { "3", "Generate report", { "1", "2" } },
}

local CASES = {
  { "a clean plan in the one-line dialect", [[
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2
</plan>]], DIAMOND },

  { "a clean plan in the published T1 / - Dependencies dialect", [[
<plan>
T1: Fetch user data
- Dependencies: none
T2: Fetch order history
- Dependencies: none
T3: Generate report
- Dependencies: T1, T2
</plan>]], DIAMOND },

  { "prose before and after the plan block", [[
Sure! Here is how I would approach this request.

<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2
</plan>

Let me know if you want me to change anything.
Task 9: this line is outside the block and ignored]], DIAMOND },

  { "a missing </plan>", [[
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2]], DIAMOND },

  { "no <plan> tags at all, with prose around", [[
Here is the plan:
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2
Tasks 1 and 2 can run at the same time.]], DIAMOND },

  { "bullets before Task", "<plan>\n- Task 1: Fetch user data | Dependencies: none\n"
    .. "* Task 2: Fetch order history | Dependencies: none\n"
    .. "\u{2022} Task 3: Generate report | Dependencies: Task 1, Task 2\n</plan>", DIAMOND },

  { "numbering before Task", [[
<plan>
1. Task 1: Fetch user data | Dependencies: none
2) Task 2: Fetch order history | Dependencies: none
(3) Task 3: Generate report | Dependencies: Task 1, Task 2
</plan>]], DIAMOND },

  { "any case", [[
<PLAN>
TASK 1: Fetch user data | DEPENDENCIES: NONE
task 2: Fetch order history | dependencies: none
Task 3: Generate report | Dependencies: TASK 1, task 2
</Plan>]], DIAMOND },

  { "None, none, - and empty for no dependencies", [[
<plan>
Task 1: A | Dependencies: None
Task 2: B | Dependencies: -
Task 3: C | Dependencies:
Task 4: D | Dependencies: n/a
Task 5: E | Dependencies: none.
Task 6: F | Dependencies: []
</plan>]], { { "1", "A", {} }, { "2", "B", {} }, { "3", "C", {} }, { "4", "D", {} },
             { "5", "E", {} }, { "6", "F", {} } } },

  { "Task 1,Task 2 without a blank", [[
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1,Task 2
</plan>]], DIAMOND },

  { "bare ids: 1, 2", [[
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: 1, 2
</plan>]], DIAMOND },

  { "T ids in the one-line dialect", [[
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: T1, T2
</plan>]], DIAMOND },

  { "blank lines between tasks", "<plan>\n\nTask 1: Fetch user data | Dependencies: none\n\n\n"
    .. "Task 2: Fetch order history | Dependencies: none\n\n"
    .. "Task 3: Generate report | Dependencies: Task 1, Task 2\n\n</plan>", DIAMOND },

  { "trailing spaces and tabs", "<plan>  \nTask 1: Fetch user data   | Dependencies: none   \t\n"
    .. "  Task 2: Fetch order history | Dependencies: none \n"
    .. "\tTask 3: Generate report |   Dependencies:   Task 1 ,  Task 2  \t\n</plan>  ", DIAMOND },

  { "CRLF line endings", "<plan>\r\nTask 1: Fetch user data | Dependencies: none\r\n"
    .. "Task 2: Fetch order history | Dependencies: none\r\n"
    .. "Task 3: Generate report | Dependencies: Task 1, Task 2\r\n</plan>\r\n", DIAMOND },

  { "the published dialect with CRLF and blank lines", "<plan>\r\nT1: Fetch user data\r\n"
    .. "- Dependencies: none\r\n\r\nT2: Fetch order history\r\n- Dependencies: none\r\n\r\n"
    .. "T3: Generate report\r\n- Dependencies: T1, T2\r\n</plan>", DIAMOND },

  { "markdown bold around the labels", [[
<plan>
**Task 1:** Fetch user data | **Dependencies:** none
**Task 2:** Fetch order history | **Dependencies:** none
**Task 3:** Generate report | **Dependencies:** Task 1, Task 2
</plan>]], DIAMOND },

  { "a code fence around the plan", [[
```
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2
```]], DIAMOND },

  { "dependencies in parentheses", [[
<plan>
Task 1: Fetch user data (Dependencies: none)
Task 2: Fetch order history (depends on Task 1)
Task 3: Generate report [dependencies: Task 1, Task 2]
</plan>]], { { "1", "Fetch user data", {} }, { "2", "Fetch order history", { "1" } },
             { "3", "Generate report", { "1", "2" } } } },

  { "'and', '&' and ranges in dependency lists", [[
<plan>
Task 1: A | Dependencies: none
Task 2: B | Dependencies: none
Task 3: C | Dependencies: none
Task 4: D | Dependencies: Task 1 and Task 2 & Task 3
Task 5: E | Dependencies: Tasks 1-3
</plan>]], { { "1", "A", {} }, { "2", "B", {} }, { "3", "C", {} },
             { "4", "D", { "1", "2", "3" } }, { "5", "E", { "1", "2", "3" } } } },

  { "the published dialect with 'Dependencies:' not bulleted and indented", [[
<plan>
T1: Fetch user data
Dependencies: none
T2: Fetch order history
    - Dependencies: none
T3: Generate report
   * Dependencies: T1 and T2
</plan>]], DIAMOND },

  { "leading zeros in ids", [[
<plan>
Task 01: Fetch user data | Dependencies: none
T02: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 01, 002
</plan>]], DIAMOND },

  { "a task that depends on one written later", [[
<plan>
Task 1: Write summary | Dependencies: Task 2
Task 2: Collect facts | Dependencies: none
</plan>]], { { "1", "Write summary", { "2" } }, { "2", "Collect facts", {} } } },

  { "dashes and em dashes as separators", "<plan>\nTask 1 \u{2014} Fetch user data | Dependencies: none\n"
    .. "Task 2 - Fetch order history | Dependencies: none\n"
    .. "Task 3. Generate report | Dependencies: Task 1, Task 2\n</plan>", DIAMOND },

  { "a pipe inside the description", [[
<plan>
Task 1: Count lines with `grep x | wc -l` | Dependencies: none
Task 2: Report the count | Dependencies: Task 1
</plan>]], { { "1", "Count lines with `grep x | wc -l`", {} },
             { "2", "Report the count", { "1" } } } },

  { "the published dialect with a task missing its dependency line", [[
<plan>
T1: Fetch user data
T2: Fetch order history
- Dependencies: none
T3: Generate report
- Dependencies: T1, T2
</plan>]], DIAMOND },

  { "a first <plan> block without tasks (prose naming the format)", [[
I will answer with a <plan></plan> block as asked.
<plan>
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1, Task 2
</plan>]], DIAMOND },

  { "a trailing period after the dependency list", [[
<plan>
Task 1: Fetch user data | Dependencies: none.
Task 2: Fetch order history | Dependencies: none.
Task 3: Generate report | Dependencies: Task 1, Task 2.
</plan>]], DIAMOND },

  { "a blank as the only separator inside <plan>", [[
<plan>
Task 1 Fetch user data | Dependencies: none
Task 2 Fetch order history | Dependencies: none
T3 Generate report | Dependencies: Task 1, Task 2
</plan>]], DIAMOND },

  { "a single task", "<plan>Task 1: Answer the question | Dependencies: none</plan>",
    { { "1", "Answer the question", {} } } },

  { "repeated dependencies counted once", [[
<plan>
Task 1: A | Dependencies: none
Task 2: B | Dependencies: Task 1, T1, 1
</plan>]], { { "1", "A", {} }, { "2", "B", { "1" } } } },

  { "the dependency line adding to inline dependencies", [[
<plan>
T1: A
T2: B
T3: C | Dependencies: T1
- Dependencies: T2
</plan>]], { { "1", "A", {} }, { "2", "B", {} }, { "3", "C", { "1", "2" } } } },

  { "extra columns after the dependencies and notes in parentheses", [[
<plan>
Task 1: Fetch user data | Dependencies: None | Tool: search
Task 2: Fetch order history | Dependencies: Task 1 (for the user ids) | Tool: sql
Task 3: Generate report | Dependencies: (Task 1, Task 2)
</plan>]], { { "1", "Fetch user data", {} }, { "2", "Fetch order history", { "1" } },
             { "3", "Generate report", { "1", "2" } } } },

  { "Step ids, #ids and 'Depends on:'", [[
<plan>
Step 1: Fetch user data | Depends on: nothing
Step 2: Fetch order history | Depends on: nothing
Step 3: Generate report | Depends on: #1, #2
</plan>]], DIAMOND },

  { "Task lines with the dependencies on the next line", [[
<plan>
Task 1: Fetch user data
Dependencies: none
Task 2: Fetch order history
Dependencies: none
Task 3: Generate report
Dependencies: Task 1, Task 2
</plan>]], DIAMOND },

  { "a Tasks: heading, colons inside descriptions, and 'after' / 'requires' notes", [[
<plan>
Tasks:
Task 1: Identify needs: budget and timeline | Dependencies: none
Task 2: Fetch prices - after Task 1
Task 3: Compare (requires: Task 2)
</plan>]], { { "1", "Identify needs: budget and timeline", {} }, { "2", "Fetch prices", { "1" } },
             { "3", "Compare", { "2" } } } },

  { "dependency words inside descriptions", [[
<plan>
Task 1: List deps: npm packages | Dependencies: none
Task 2: Check what the build depends on | Dependencies: Task 1
Task 3: Summarize dependencies | Dependencies: Task 1, after Task 2
</plan>]], { { "1", "List deps: npm packages", {} },
             { "2", "Check what the build depends on", { "1" } },
             { "3", "Summarize dependencies", { "1", "2" } } } },

  { "a dependency line without a colon", [[
<plan>
T1: Fetch user data
- Dependencies none
T2: Fetch order history
- Dependencies - none
T3: Generate report
- Dependencies T1, T2
</plan>]], DIAMOND },

  { "single * and _ emphasis around dependency labels", [[
<plan>
Task 1: Fetch user data | *Dependencies*: none
Task 2: Fetch order history | _Dependencies_: Task 1
Task 3: Generate report (*depends on Task 1, Task 2*)
</plan>]], { { "1", "Fetch user data", {} }, { "2", "Fetch order history", { "1" } },
             { "3", "Generate report", { "1", "2" } } } },

  { "emphasis only around whole words, not inside names or products", [[
<plan>
Task 1: Rename find_user_ids to *lookup* and compute 2*3*4 | Dependencies: none
</plan>]], { { "1", "Rename find_user_ids to lookup and compute 2*3*4", {} } } },

  { "Dep:, Prereqs:, Prerequisite: and '=' for the colon", [[
<plan>
Task 1: Fetch user data | Dep: none
Task 2: Fetch order history | Prereqs: Task 1
Task 3: Generate report | Dependencies = Task 1, Task 2
Task 4: Mail it | Prerequisite: Task 3
T5: Archive it
- Dep: T4
</plan>]], { { "1", "Fetch user data", {} }, { "2", "Fetch order history", { "1" } },
             { "3", "Generate report", { "1", "2" } }, { "4", "Mail it", { "3" } },
             { "5", "Archive it", { "4" } } } },

  { "a dependency list going on over '|', and several labels merged", [[
<plan>
Task 1: Fetch user data | Dependencies: none | high priority
Task 2: Fetch order history | Dependencies: none
Task 3: Generate report | Dependencies: Task 1 | Task 2 | Tool: writer
Task 4: Check it | Depends on: Task 1 | Dependencies: Task 3
</plan>]], { { "1", "Fetch user data", {} }, { "2", "Fetch order history", {} },
             { "3", "Generate report", { "1", "2" } }, { "4", "Check it", { "1", "3" } } } },

  { "prose lines inside the block", [[
<plan>
Phase one, in parallel:
Task 1: Fetch user data | Dependencies: none
Task 2: Fetch order history | Dependencies: none
Then:
Task 3: Generate report | Dependencies: Task 1, Task 2
</plan>]], DIAMOND },
}

local ERRORS = {
  { "a misspelled task line, quoted with its line number",
    "<plan>\nTask 1: Fetch | Dependencies: none\nTaks 2 Fetch\n</plan>",
    'line 3: cannot read a task in "Taks 2 Fetch"' },
  { "a dependency on a task that is not in the plan",
    "<plan>\nTask 1: A | Dependencies: none\nTask 3: B | Dependencies: Task 1, Task 9\n</plan>",
    "task 3 depends on unknown task 9" },
  { "a duplicate id", "<plan>\nTask 1: A | Dependencies: none\nTask 1: B | Dependencies: none\n</plan>",
    "line 3: duplicate task id 1 (first on line 2)" },
  { "the same id in both dialects", "<plan>\nTask 1: A | Dependencies: none\nT1: B\n</plan>",
    "line 3: duplicate task id 1 (first on line 2)" },
  { "a task depending on itself", "<plan>\nTask 1: A | Dependencies: Task 1\n</plan>",
    "task 1 depends on itself" },
  { "a cycle, named", "<plan>\nTask 1: A | Dependencies: Task 3\nTask 2: B | Dependencies: Task 1\n"
    .. "Task 3: C | Dependencies: Task 2\n</plan>", "cycle: 1 -> 3 -> 2 -> 1" },
  { "prose only", "I think we should just answer directly.",
    'no plan found: expected lines like "Task 1: description | Dependencies: none"' },
  { "an empty plan block", "<plan>\n\n</plan>",
    'the <plan> block holds no tasks: expected lines like "Task 1: description | Dependencies: none"' },
  { "an empty text", "",
    'no plan found: expected lines like "Task 1: description | Dependencies: none"' },
  { "dependencies named by description instead of id",
    "<plan>\nTask 1: A | Dependencies: none\nTask 2: B | Dependencies: the user data\n</plan>",
    'line 3: cannot read dependency "the" in "Task 2: B | Dependencies: the user data"' },
  { "a task without a description", "<plan>\nTask 1: | Dependencies: none\n</plan>",
    'line 2: task 1 has no description in "Task 1: | Dependencies: none"' },
  { "a dependency line before any task", "<plan>\n- Dependencies: none\nT1: A\n</plan>",
    'line 2: dependencies before any task in "- Dependencies: none"' },
  { "a task with a letter for an id", "<plan>\nTask A: Fetch | Dependencies: none\n</plan>",
    'line 2: cannot read a task in "Task A: Fetch | Dependencies: none"' },
  { "a task line without an id", "<plan>\nTask: Fetch the data | Dependencies: none\n</plan>",
    'line 2: cannot read a task in "Task: Fetch the data | Dependencies: none"' },
  { "a line number counted over CRLF", "<plan>\r\nT1: A\r\n- Dependencies: none\r\nTsak 2: B\r\n</plan>",
    'line 4: cannot read a task in "Tsak 2: B"' },
  { "an unreadable dependency line in the published dialect",
    "<plan>\nT1: A\n- Dependencies: none\nT2: B\n- Dependencies: whatever T1 gives\n</plan>",
    'line 5: cannot read dependency "whatever" in "- Dependencies: whatever T1 gives"' },
  { "a task line naming dependencies in a form it cannot read",
    "<plan>\nTask 1: A | Dependencies: none\nTask 2: B | Dependencies -> Task 1\n</plan>",
    'line 3: cannot read the dependencies of task 2 in "Task 2: B | Dependencies -> Task 1"'
    .. ' (write "| Dependencies: Task 1, Task 2" or "| Dependencies: none")' },
  { "a decimal task number",
    "<plan>\nTask 1: A | Dependencies: none\nTask 1.5: B | Dependencies: Task 1\n</plan>",
    'line 3: task number 1.5 is not a whole number in "Task 1.5: B | Dependencies: Task 1"'
    .. " (number the tasks 1, 2, 3, ...)" },
}

describe("the GAP plan parser", function()
  for _, c in ipairs(CASES) do
    it("reads " .. c[1], function()
      local got, err = graph(c[2])
      assert(got, err)
      assert.same(c[3], got)
    end)
  end

  for _, c in ipairs(ERRORS) do
    it("refuses " .. c[1] .. " with a clear error", function()
      local got, err = gap.parse(c[2])
      assert.is_nil(got)
      assert.equal(c[3], err)
    end)
  end

  it("gives the same graph for both dialects", function()
    assert.same(graph(CASES[1][2]), graph(CASES[2][2]))
  end)

  it("has at least 30 cases of model output", function()
    assert.is_true(#CASES + #ERRORS >= 30)
  end)

  it("returns the <think> text, and ignores a <plan> mentioned inside it", function()
    local _, plan = graph("<think>Two fetches can run at once; the <plan> then joins them."
      .. "</think>\n<plan>\nTask 1: A | Dependencies: none\n</plan>")
    assert.equal("Two fetches can run at once; the <plan> then joins them.", plan.think)
    assert.equal(1, #plan.tasks)
  end)

  it("reads a reply whose opening <think> was in the template", function()
    local got, plan = graph("reasoning here\n</think>\n\nTask 1: A | Dependencies: none")
    assert.same({ { "1", "A", {} } }, got)
    assert.equal("reasoning here", plan.think)
  end)

  it("ends an unclosed <think> at <plan>", function()
    local got, plan = graph("<think>hmm\n<plan>\nT1: A\n</plan>")
    assert.same({ { "1", "A", {} } }, got)
    assert.equal("hmm", plan.think)
  end)

  it("gives no think when there is none", function()
    local _, plan = graph(CASES[1][2])
    assert.is_nil(plan.think)
  end)

  it("records the line of each task", function()
    local plan = gap.parse(CASES[1][2])
    assert.same({ 2, 3, 4 }, { plan.tasks[1].line, plan.tasks[2].line, plan.tasks[3].line })
  end)

  it("cuts a long offending line in the error", function()
    local _, err = gap.parse("<plan>\nTask x " .. ("y"):rep(500) .. "\n</plan>")
    assert.matches('^line 2: cannot read a task in "Task x y+%.%.%."$', err)
    assert.is_true(#err < 200)
  end)

  it("refuses a plan with more than MAX_TASKS tasks", function()
    local lines = {}
    for i = 1, gap.MAX_TASKS + 1 do lines[i] = ("Task %d: t | Dependencies: none"):format(i) end
    local got, err = gap.parse(table.concat(lines, "\n"))
    assert.is_nil(got)
    assert.equal(("line %d: more than %d tasks in the plan"):format(gap.MAX_TASKS + 1, gap.MAX_TASKS), err)
  end)

  it("parses a 500-task chain quickly", function()
    local lines = { "<plan>", "Task 1: t | Dependencies: none" }
    for i = 2, 500 do lines[#lines + 1] = ("Task %d: step %d | Dependencies: Task %d"):format(i, i, i - 1) end
    lines[#lines + 1] = "</plan>"
    local t0 = os.clock()
    local plan = assert(gap.parse(table.concat(lines, "\n")))
    assert.equal(500, #plan.tasks)
    assert.is_true(os.clock() - t0 < 0.5)
  end)

  it("raises on misuse: text that is not a string", function()
    assert.has_error(function() gap.parse(nil) end, "gap.parse: text must be a string, got nil")
  end)
end)
