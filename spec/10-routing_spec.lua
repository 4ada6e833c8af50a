-- Routing scripts: keyword complexity -> model tier, task name -> agents.
package.path = "scripts/?.lua;" .. package.path
local agents = require "routing.agents"

-- routing.complexity loaded as a plain lua5.4 loads it, or as the engine
-- does, with the orch.keywords matcher (from the Lua module orch.so, the
-- same C function the sandbox's orch table has).
local function load_complexity(native)
  package.loaded["routing.complexity"] = nil
  local saved = rawget(_G, "orch")
  if native then rawset(_G, "orch", { keywords = require("orch").keywords }) end
  local m = require "routing.complexity"
  rawset(_G, "orch", saved)
  package.loaded["routing.complexity"] = nil
  return m
end

for _, impl in ipairs({ { "in plain Lua", false }, { "with orch.keywords", true } }) do
describe("routing.complexity " .. impl[1], function()
  local complexity = load_complexity(impl[2])
  local classify = complexity.classify

  it("sends the issue's simple document task to the fast tier", function()
    assert.equal("fast", classify({ title = "Format this simple document",
                                    instructions = "Convert to markdown" }))
  end)

  it("sends the issue's security architecture task to the strong tier", function()
    assert.equal("strong", classify({ title = "Architect the security system",
                                      instructions = "Design auth flow" }))
  end)

  it("sends a task to strong on any single complex keyword", function()
    for _, kw in ipairs({ "architect", "security", "refactor", "multi-file",
                          "database schema", "api design", "critical" }) do
      assert.equal("strong", classify({ instructions = "please " .. kw .. " now" }), kw)
    end
  end)

  it("keeps the default keyword lists of the issue as data", function()
    assert.same({ "architect", "security", "refactor", "multi-file", "database schema",
                  "api design", "critical" }, complexity.COMPLEX)
    assert.same({ "format", "summarize", "list", "simple", "quick", "lookup", "convert",
                  "basic", "template" }, complexity.SIMPLE)
  end)

  it("matches multi-word keywords as phrases, across case and white space", function()
    assert.equal("strong", classify({ title = "Review the DATABASE\n   Schema" }))
    assert.equal("strong", classify({ title = "Our API", instructions = "design review" }))
    assert.equal("local", classify({ title = "the database has a schema" }))
    assert.equal("local", classify({ title = "api and design" }))
  end)

  it("matches multi-file literally", function()
    assert.equal("strong", classify({ title = "A Multi-File change" }))
    assert.equal("local", classify({ title = "a multi file change" }))
  end)

  it("needs two distinct simple keywords for fast", function()
    assert.equal("local", classify({ title = "Summarize this" }))
    assert.equal("local", classify({ title = "list, list and list" }))
    assert.equal("fast", classify({ title = "quick", instructions = "lookup" }))
  end)

  it("lets a complex keyword win over simple ones", function()
    assert.equal("strong", classify({ title = "quick simple basic refactor" }))
  end)

  it("matches keywords at a word start, not inside words", function()
    assert.equal("strong", classify({ title = "Refactoring the architecture" }))
    assert.equal("fast", classify({ title = "formatting lists" }))
    assert.equal("local", classify({ title = "information for a specialist" }))
    assert.equal("local", classify({ title = "insecurity" }))
  end)

  it("treats missing fields as empty text", function()
    assert.equal("local", classify({}))
    assert.equal("strong", classify({ instructions = "critical" }))
    assert.equal("strong", classify({ title = "critical" }))
  end)

  it("explains which keywords matched", function()
    local e = complexity.explain({ title = "Quick format", instructions = "security" })
    assert.same({ tier = "strong", complex = { "security" }, simple = { "format", "quick" } }, e)
  end)

  it("raises on misuse", function()
    assert.has_error(function() classify("text") end,
      "complexity.classify: expected a task table, got string")
    assert.has_error(function() classify({ title = {} }) end,
      "complexity.classify: task.title must be a string, got table")
  end)

  it("uses the lists as configured", function()
    table.insert(complexity.COMPLEX, "migration")
    finally(function() table.remove(complexity.COMPLEX) end)
    assert.equal("strong", classify({ title = "Plan the migration" }))
  end)

  it("passes its selftest", function()
    assert.is_true(complexity.selftest())
  end)

  it("follows a keyword list edited in place", function()
    assert.equal("local", classify({ title = "Plan the rollout" }))
    complexity.COMPLEX[1] = "rollout"
    finally(function() complexity.COMPLEX[1] = "architect" end)
    assert.equal("strong", classify({ title = "Plan the rollout" }))
    assert.equal("local", classify({ title = "Architect it" }))
  end)
end)
end

describe("orch.keywords", function()
  local keywords = require("orch").keywords
  local plain, native = load_complexity(false), load_complexity(true)

  it("decides every tier as the plain-Lua matcher does, on 5,000 random tasks", function()
    local words = { "the", "x", "-", ".", ",", "\t", "\n  ", "data", "schema", "api",
                    "design", "multi", "file", "formatting", "insecure", "Á", "\0" }
    for _, list in ipairs({ plain.COMPLEX, plain.SIMPLE }) do
      for _, kw in ipairs(list) do
        words[#words + 1] = kw
        words[#words + 1] = kw:upper()
        words[#words + 1] = kw .. "s"
        words[#words + 1] = "x" .. kw
        words[#words + 1] = kw:gsub(" ", "\n\t ")
      end
    end
    math.randomseed(10)
    for _ = 1, 5000 do
      local parts = {}
      for j = 1, math.random(0, 12) do parts[j] = words[math.random(#words)] end
      local cut = math.random(0, #parts)
      local sep = ({ " ", "", "\n", "-" })[math.random(4)]
      local task = { title = table.concat(parts, sep, 1, cut),
                     instructions = table.concat(parts, sep, cut + 1) }
      assert.equal(plain.classify(task), native.classify(task), task.title .. " | " .. task.instructions)
      assert.same(plain.explain(task), native.explain(task))
    end
  end)

  it("lower-cases every byte as string.lower does", function()
    for c = 0, 255 do
      local ch = string.char(c)
      if not ch:match("%s") then
        local m = keywords({ ch:lower() .. "q" })
        -- 16 bytes: the 8-byte path and the byte path both see the keyword
        local text = ("\0" .. ch .. "Q"):rep(6)
        assert.equal(1, m.count(1, text), "byte " .. c)
        assert.equal(1, m.count(1, text:sub(1, 3)), "byte " .. c)
      end
    end
  end)

  it("counts distinct keywords up to the limit, over several texts joined by spaces", function()
    local m = keywords({ "alpha", "beta", "Beta ", "gamma delta" })
    assert.equal(3, m.count(10, "ALPHA beta alpha gamma", "delta"))
    assert.equal(2, m.count(2, "alpha beta gamma delta"))
    assert.equal(0, m.count(0, "alpha"))
    assert.equal(1, m.count(5, nil, "beta", nil))
    assert.equal(0, m.count(5))
    assert.same({ "alpha", "beta" }, m.matched("beta alpha"))
    local n, bad = m.count(5, "alpha", {})
    assert.is_nil(n)
    assert.equal(2, bad)
    assert.equal(1, keywords({ "1.5" }).count(1, 1.5))
  end)

  it("matches at word starts, or whole words only when asked", function()
    local prefix, whole = keywords({ "form" }), keywords({ "form" }, { whole = true })
    assert.equal(1, prefix.count(1, "formal"))
    assert.equal(0, whole.count(1, "formal"))
    assert.equal(1, whole.count(1, "a form."))
    assert.equal(0, prefix.count(1, "inform"))
  end)

  it("reads long texts", function()
    local m = keywords({ "needle", "hay stack" })
    local long = ("hay "):rep(2000) .. "stack " .. ("x"):rep(5000) .. " NEEDLE"
    assert.equal(2, m.count(5, long))
    assert.equal(1, m.count(5, ("y"):rep(600), "needle"))
  end)

  it("refuses a list with an entry that is not a non-empty string, naming it", function()
    assert.has_error(function() keywords({ "a", "  " }, { name = "tiers" }) end,
      "tiers: keyword 2 must be a non-empty string")
    assert.has_error(function() keywords({ "a", 3 }) end,
      "orch.keywords: keyword 2 must be a non-empty string")
    local list = { "a" }
    local m = keywords(list)
    list[2] = false
    assert.has_error(function() m.count(1, "a") end,
      "orch.keywords: keyword 2 must be a non-empty string")
  end)
end)

describe("routing.agents", function()
  local ISSUE = {
    find = { "code-archaeologist", "project-analyst", "discovery" },
    audit = { "test-automator", "code-reviewer", "discovery" },
    analyze = { "code-archaeologist", "performance-optimizer", "discovery" },
    create = { "backend-developer", "python-pro", "implementation" },
    fix = { "backend-developer", "debugger", "implementation" },
    connect = { "integration-engineer", "backend-developer", "implementation" },
    implement = { "backend-developer", "ml-engineer", "implementation" },
    test = { "test-automator", "qa-expert", "validation" },
    review = { "code-reviewer", "security-auditor", "validation" },
    optimize = { "performance-optimizer", "database-administrator", "implementation" },
    document = { "documentation-specialist", "technical-writer", "implementation" },
  }

  it("routes each task-name pattern of the issue to its primary, backup and phase", function()
    for prefix, want in pairs(ISSUE) do
      local r = agents.route({ name = prefix .. "_users" })
      assert.same({ primary = want[1], backup = want[2], phase = want[3],
                    pattern = prefix .. "_*" }, r)
    end
  end)

  it("knows no pattern beyond the issue's", function()
    local n = 0
    for prefix in pairs(agents.PATTERNS) do
      n = n + 1
      assert.is_not_nil(ISSUE[prefix], prefix)
    end
    assert.equal(11, n)
  end)

  it("routes any other name to the configurable default", function()
    assert.same({ primary = "general-purpose", backup = "general-purpose",
                  phase = "implementation", pattern = "default" },
                agents.route({ name = "summarize_thread" }))
    local old = agents.DEFAULT.primary
    agents.DEFAULT.primary = "generalist"
    finally(function() agents.DEFAULT.primary = old end)
    assert.equal("generalist", agents.route({ name = "x" }).primary)
  end)

  it("needs a separator or the end after the prefix", function()
    assert.equal("default", agents.route({ name = "finder" }).pattern)
    assert.equal("default", agents.route({ name = "testing_api" }).pattern)
    assert.equal("find_*", agents.route({ name = "find" }).pattern)
    assert.equal("find_*", agents.route({ name = "find-users" }).pattern)
    assert.equal("find_*", agents.route({ name = "Find users" }).pattern)
    assert.equal("fix_*", agents.route({ name = "FIX.login" }).pattern)
  end)

  it("takes a missing name or a bare string", function()
    assert.equal("default", agents.route({}).pattern)
    assert.equal("review_*", agents.route("review_pr").pattern)
  end)

  it("gives the parallel limit of each phase", function()
    assert.equal(5, agents.parallel_limit("discovery"))
    assert.equal(4, agents.parallel_limit("implementation"))
    assert.equal(1, agents.parallel_limit("validation"))
    assert.equal(math.huge, agents.parallel_limit("emergency"))
    assert.equal(5, agents.parallel_limit("Discovery"))
  end)

  it("returns nil and a message for an unknown phase", function()
    local n, err = agents.parallel_limit("party")
    assert.is_nil(n)
    assert.equal("unknown phase 'party'", err)
  end)

  it("gives every routed phase a parallel limit", function()
    for prefix in pairs(agents.PATTERNS) do
      assert.is_number(agents.parallel_limit(agents.route({ name = prefix }).phase))
    end
  end)

  it("raises on misuse", function()
    assert.has_error(function() agents.route(42) end,
      "agents.route: expected a task table, got number")
    assert.has_error(function() agents.route({ name = 1 }) end,
      "agents.route: task.name must be a string, got number")
    assert.has_error(function() agents.parallel_limit(nil) end,
      "agents.parallel_limit: phase must be a string, got nil")
  end)

  it("passes its selftest", function()
    assert.is_true(agents.selftest())
  end)
end)
