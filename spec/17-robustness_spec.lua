-- Hostile and random input for the scripts that read text from models and
-- tools: the GAP parser and the scrubber never raise on any text, always
-- give a valid graph or an error, and stay linear on pathological input
-- (the core runs them under an instruction budget).
package.path = "scripts/?.lua;" .. package.path
local gap = require "policies.gap"
local scrub = require "policies.scrub"

local FRAGMENTS = { "Task", "task ", "T", "Taks", "TASK", "- ", "* ", "1. ", "2) ", "**",
  "Dependencies:", "dependencies", "depends on", " | ", "|", "none", "None", "-", ",", ";",
  "Task 1", "Task 2", "T3", "1", "2", "3", "99", "07", " and ", "&", "(", ")", "[", "]",
  "<plan>", "</plan>", "<think>", "</think>", "\r\n", "\n", "\n", "\n", " ", "\t", ":",
  "Fetch data", "report", "\u{00e9}", "\u{2014}", "\u{2022}", "%", "%1", "`", "\0", "\255",
  "Tasks 1-3", "1-999999", "sk-", "@", "." }

local function random_text(rng_len)
  local parts = {}
  for i = 1, rng_len do parts[i] = FRAGMENTS[math.random(#FRAGMENTS)] end
  return table.concat(parts)
end

-- The parse result is a valid graph: unique ids, descriptions, known deps,
-- no self-dependency, no cycle.
local function valid(plan)
  local ids = {}
  for _, t in ipairs(plan.tasks) do
    assert.is_string(t.id); assert.is_nil(ids[t.id]); ids[t.id] = t
    assert.is_true(#t.description > 0)
  end
  for _, t in ipairs(plan.tasks) do
    for _, d in ipairs(t.deps) do assert.is_not_nil(ids[d]); assert.are_not.equal(t.id, d) end
  end
  local state = {}
  local function visit(id)
    assert.are_not.equal(1, state[id])
    if state[id] == 2 then return end
    state[id] = 1
    for _, d in ipairs(ids[id].deps) do visit(d) end
    state[id] = 2
  end
  for id in pairs(ids) do visit(id) end
end

describe("the GAP parser on random text", function()
  it("gives a valid graph or a one-line error, never a crash", function()
    math.randomseed(2026)
    local graphs, errors = 0, 0
    for _ = 1, 3000 do
      local text = random_text(math.random(1, 60))
      local ok, plan, err = pcall(gap.parse, text)
      assert(ok, "raised on " .. ("%q"):format(text) .. ": " .. tostring(plan))
      if plan then
        valid(plan); graphs = graphs + 1
      else
        assert.is_string(err); assert.is_true(#err > 0); assert.is_nil(err:find("\n"))
        errors = errors + 1
      end
    end
    assert.is_true(graphs > 50 and errors > 50)
  end)

  it("gives a valid graph for random well-formed plans", function()
    math.randomseed(7)
    for _ = 1, 300 do
      local n, lines = math.random(1, 40), { "<plan>" }
      for i = 1, n do
        local deps = {}
        for j = 1, i - 1 do if math.random() < 0.2 then deps[#deps + 1] = "Task " .. j end end
        lines[#lines + 1] = ("Task %d: step %d | Dependencies: %s"):format(i, i,
          #deps > 0 and table.concat(deps, ", ") or "none")
      end
      lines[#lines + 1] = "</plan>"
      local plan = assert(gap.parse(table.concat(lines, "\n")))
      assert.equal(n, #plan.tasks)
      valid(plan)
    end
  end)
end)

describe("pathological input", function()
  local function quick(f, limit)
    local t0 = os.clock()
    f()
    local dt = os.clock() - t0
    assert.is_true(dt < limit, ("took %.0f ms"):format(dt * 1000))
  end

  it("parses long runs of blanks and separators in linear time", function()
    quick(function()
      gap.parse("<plan>\nTask 1: a" .. (" "):rep(4000) .. "x | Dependencies: none\n</plan>")
      gap.parse("<plan>\nTask 1: a" .. ("-"):rep(4000) .. " | Dependencies: none\n</plan>")
      gap.parse(("<plan></plan>"):rep(5000))
      gap.parse(("x"):rep(200000))
      gap.parse(("\n"):rep(200000))
    end, 0.5)
  end)

  it("refuses a task line longer than its limit", function()
    local _, err = gap.parse("<plan>\nTask 1: " .. ("a"):rep(5000) .. "\n</plan>")
    assert.equal("line 2: a task line longer than 4096 bytes", err)
  end)

  it("scrubs a 200 KB blob, a long number and a long phone-like run in linear time", function()
    quick(function()
      scrub.scrub(("QUJDRA"):rep(200000 // 6))
      scrub.scrub(("1"):rep(200000))
      scrub.scrub("+" .. ("1 "):rep(100000))
      scrub.scrub(("a."):rep(100000) .. "@")
    end, 1.0)
  end)

  it("scrubs random text without raising, and reaches a fixed point", function()
    math.randomseed(99)
    for _ = 1, 2000 do
      local text = random_text(math.random(1, 40))
      local out = scrub.scrub(text)
      local again, n = scrub.scrub(out)
      assert.equal(out, again); assert.equal(0, n)
    end
  end)
end)
