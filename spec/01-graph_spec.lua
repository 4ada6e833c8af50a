-- The graph: validation errors that name the problem, levels, critical
-- path, and hostile plan files refused quickly.
local h = require("helpers")
local orch = require("orch")

local function plan_error(steps)
  local code, _, err = h.cli("plan " .. h.plan(steps))
  return code, err
end

describe("a plan with", function()
  it("an unknown dependency names the step and the missing id", function()
    local code, err = plan_error({ { id = "a", kind = "sleep", ms = 1, deps = { "ghost" } } })
    assert.are.equal(65, code)
    assert.matches("step 'a' depends on unknown step 'ghost'", err, 1, true)
  end)

  it("a duplicate id names it", function()
    local code, err = plan_error({ { id = "a", kind = "sleep", ms = 1 }, { id = "a", kind = "sleep", ms = 2 } })
    assert.are.equal(65, code)
    assert.matches("duplicate step id 'a'", err, 1, true)
  end)

  it("a step depending on itself says so", function()
    local code, err = plan_error({ { id = "me", kind = "sleep", ms = 1, deps = { "me" } } })
    assert.are.equal(65, code)
    assert.matches("step 'me' depends on itself", err, 1, true)
  end)

  it("a cycle prints it as a -> b -> c -> a", function()
    local code, err = plan_error({
      { id = "a", kind = "sleep", ms = 1, deps = { "c" } },
      { id = "b", kind = "sleep", ms = 1, deps = { "a" } },
      { id = "c", kind = "sleep", ms = 1, deps = { "b" } },
      { id = "x", kind = "sleep", ms = 1 },
    })
    assert.are.equal(65, code)
    local cyc = err:match("dependency cycle: ([^%(]+)")
    assert.is_not_nil(cyc, err)
    -- the cycle closes on its first step and has the three members
    local first = cyc:match("^(%w+)")
    assert.matches(" %-> " .. first .. "%s*$", cyc)
    for _, id in ipairs({ "a", "b", "c" }) do assert.matches(id, cyc) end
    assert.not_matches("x", cyc)
  end)

  it("no steps is an empty graph", function()
    local code, err = plan_error({})
    assert.are.equal(65, code)
    assert.matches("empty graph", err, 1, true)
  end)

  it("an unknown kind names it", function()
    local code, err = plan_error({ { id = "a", kind = "teleport" } })
    assert.are.equal(65, code)
    assert.matches("unknown kind 'teleport'", err, 1, true)
  end)
end)

describe("levels and the critical path", function()
  it("come from the dependencies and the cost estimates", function()
    local code, out = h.cli("plan --json " .. h.plan({
      { id = "a", kind = "sleep", ms = 10 },
      { id = "b", kind = "sleep", ms = 100, deps = { "a" } },
      { id = "c", kind = "sleep", ms = 20, deps = { "a" } },
      { id = "d", kind = "shell", run = "true", cost_ms = 5, deps = { "b", "c" } },
      { id = "e", kind = "sleep", ms = 30 },
    }))
    assert.are.equal(0, code)
    local doc = h.json().decode(out)
    assert.are.same({ { "a", "e" }, { "b", "c" }, { "d" } }, doc.levels)
    assert.are.same({ "a", "b", "d" }, doc.critical_path)
    assert.are.equal(115, doc.critical_path_ms)
    assert.are.equal(2, doc.steps[4].level)
    assert.are.same({ "b", "c" }, doc.steps[4].deps)
  end)

  it("are the same from the Lua module", function()
    local g = orch.graph()
    g:add({ id = "a", ms = 5 })
    g:add({ id = "b", ms = 50, deps = { "a" } })
    g:add({ id = "c", ms = 7, deps = { "a" } })
    local levels = g:levels()
    assert.are.same({ "a" }, levels[1])
    local path, cost = g:critical_path()
    assert.are.same({ "a", "b" }, path)
    assert.are.equal(55, cost)
  end)

  it("name the problem from the Lua module for function steps too", function()
    local g = orch.graph()
    assert.truthy(g:add({ id = "x", fn = function() end }))
    local ok, err = g:add({ id = "x", fn = function() end })
    assert.is_nil(ok)
    assert.are.equal("duplicate step id 'x'", err)
    ok, err = g:add({ id = "bad\1id", fn = function() end })
    assert.is_nil(ok)
    assert.matches("is not valid: 1 to 256 bytes of UTF-8, no control bytes", err, 1, true)
    local g2 = orch.graph()
    g2:add({ id = "a", fn = function() return 1 end })
    g2:run(orch.runtime({}))
    ok, err = g2:add({ id = "b", fn = function() end })
    assert.is_nil(ok)
    assert.matches("the graph already ran", err, 1, true)
  end)
end)

describe("hostile input", function()
  it("a plan over the size limit is refused with the limit named", function()
    local conf = h.write("return { plan_max_bytes = 1000 }", ".lua")
    local big = h.plan({ { id = "a", kind = "shell", run = string.rep("x", 2000) } })
    local code, _, err = h.cli("plan --config " .. conf .. " " .. big)
    assert.are.equal(65, code)
    assert.matches("over the limit of 1000 bytes", err, 1, true)
  end)

  it("JSON nested past the depth limit is refused at its position", function()
    local deep = '{"steps":[{"id":"a","kind":"sleep","ms":1,"x":' ..
        string.rep("[", 100000) .. string.rep("]", 100000) .. "}]}"
    local t0 = os.clock()
    local code, _, err = h.cli("plan " .. h.write(deep, ".json"))
    assert.are.equal(65, code)
    assert.matches("nested deeper than the limit of 64", err, 1, true)
    assert.matches(":1:%d+:", err)
    assert.is_true(os.clock() - t0 < 1)
  end)

  it("an id with a NUL byte is refused", function()
    local code, _, err = h.cli("plan " .. h.write('{"steps":[{"id":"a\\u0000b","kind":"sleep","ms":1}]}', ".json"))
    assert.are.equal(65, code)
    assert.matches("NUL", err)
  end)

  it("invalid UTF-8 is refused with its position", function()
    local code, _, err = h.cli("plan " .. h.write('{"steps":[{"id":"a\xff\xfeb","kind":"sleep","ms":1}]}', ".json"))
    assert.are.equal(65, code)
    assert.matches("UTF%-8", err)
    assert.matches("byte %d+", err)
  end)

  it("an id over 256 bytes is refused with the limit", function()
    local code, _, err = h.cli("plan " .. h.plan({ { id = string.rep("x", 300), kind = "sleep", ms = 1 } }))
    assert.are.equal(65, code)
    assert.matches("300 bytes is over the limit of 256 bytes", err, 1, true)
  end)

  it("a dependency id over 256 bytes is refused too", function()
    local code, _, err = h.cli("plan " .. h.plan({ { id = "a", kind = "sleep", ms = 1, deps = { string.rep("y", 257) } } }))
    assert.are.equal(65, code)
    assert.matches("over the limit of 256 bytes", err, 1, true)
  end)

  it("malformed JSON names line and column", function()
    local code, _, err = h.cli("plan " .. h.write('{"steps":[\n{"id":"a",,}]}', ".json"))
    assert.are.equal(65, code)
    assert.matches(":2:%d+:", err)
  end)
end)

describe("a Lua plan file", function()
  it("returns the same table as the JSON form", function()
    local path = h.write([[
      local steps = {}
      for i = 1, 3 do steps[#steps + 1] = { id = "s" .. i, kind = "sleep", ms = i } end
      steps[#steps + 1] = { id = "join", kind = "shell", run = "true", deps = { "s1", "s2", "s3" } }
      return { steps = steps }
    ]], ".lua")
    local code, out = h.cli("plan --json " .. path)
    assert.are.equal(0, code)
    local doc = h.json().decode(out)
    assert.are.same({ { "s1", "s2", "s3" }, { "join" } }, doc.levels)
  end)

  it("cannot reach io or os.execute", function()
    local path = h.write('io.open("/tmp/x", "w") return { steps = {} }', ".lua")
    local code, _, err = h.cli("plan " .. path)
    assert.are.equal(65, code)
    assert.matches("io", err)
  end)
end)
