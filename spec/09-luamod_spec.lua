-- The Lua module's edges: objects used by a running graph, the shapes of a
-- step table and of orch.runtime's settings, garbage, and the messages.
local orch = require("orch")

-- Runs a Lua chunk in a child lua5.4 (same LUA_CPATH, and LD_PRELOAD under
-- the sanitizers): a crash or a hang there fails the spec, not busted.
-- Returns the exit code and stdout+stderr.
local function child(code)
  local path = os.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local p = io.popen("timeout 20 lua5.4 " .. path .. " 2>&1; echo \"__EXIT:$?\"")
  local out = p:read("a")
  p:close()
  os.remove(path)
  local rc = tonumber(out:match("__EXIT:(%d+)%s*$"))
  return rc, out:gsub("__EXIT:%d+%s*$", "")
end

local function add_error(step)
  local g = orch.graph()
  local ok, err = pcall(g.add, g, step)
  assert.is_false(ok, "no error")
  return err
end

describe("a graph or runtime in use by a run", function()
  for _, what in ipairs({ "g:free()", "rt:close()" }) do
    it("refuses " .. what .. " from a step, and the run ends normally", function()
      local rc, out = child([[
        local orch = require "orch"
        local rt = orch.runtime{ workers = 1 }
        local g = orch.graph()
        g:add{ id = "a", fn = function() ]] .. what .. [[ return "x" end }
        g:add{ id = "b", kind = "sleep", ms = 10, deps = { "a" } }
        local res = g:run(rt)
        print("status", res.status, g:step("a").status, g:step("b").status)
        print("error", g:step("a").error)
        g:free()
        rt:close()
        print("done")
      ]])
      assert.are.equal(0, rc, out)
      assert.matches("status\tfailed\tfailed\tskipped", out, 1, true)
      assert.matches("error\t[^\n]*is running", out)
      assert.matches("done", out, 1, true)
    end)
  end

  it("are freed after the run by either call", function()
    local rt = orch.runtime({ workers = 1 })
    local g = orch.graph()
    g:add({ id = "a", fn = function() return "x" end })
    assert.are.equal("passed", g:run(rt).status)
    g:free()
    rt:close()
    assert.has_error(function() g:size() end, "graph already freed")
    assert.has_error(function() rt:session() end, "runtime already closed")
  end)
end)

describe("deps", function()
  it("given as one string is a one-step list", function()
    local g = orch.graph()
    g:add({ id = "a", ms = 1 })
    g:add({ id = "b", ms = 1, deps = "a" })
    g:add({ id = "c", fn = function(d) return d.a end, deps = "a" })
    assert.are.same({ { "a" }, { "b", "c" } }, g:levels())
  end)

  it("of any other type is refused before the step is added", function()
    for _, bad in ipairs({ 5, true, function() end }) do
      for _, step in ipairs({ { id = "b", ms = 1, deps = bad }, { id = "b", fn = function() end, deps = bad } }) do
        local g = orch.graph()
        local ok, err = pcall(g.add, g, step)
        assert.is_false(ok)
        assert.matches("step 'b': \"deps\" must be a list of step ids", err, 1, true)
        assert.are.equal(0, g:size())
      end
    end
  end)
end)

describe("graphs whose functions capture the graph", function()
  it("are collected", function()
    local alive = setmetatable({}, { __mode = "k" })
    for _ = 1, 1000 do
      local g = orch.graph()
      g:add({ id = "a", fn = function() return g:size() end })
      alive[g] = true
    end
    collectgarbage()
    collectgarbage()
    local n = 0
    for _ in pairs(alive) do n = n + 1 end
    assert.are.equal(0, n)
  end)

  it("still run their functions", function()
    local g = orch.graph()
    g:add({ id = "a", fn = function() return "n=" .. g:size() end })
    g:add({ id = "b", fn = function(d) return d.a .. "!" end, deps = { "a" } })
    collectgarbage()
    assert.are.equal("passed", g:run(orch.runtime({ workers = 1 })).status)
    assert.are.equal("n=2!", g:step("b").output)
  end)
end)

describe("a step table with a key that is not a name", function()
  it("says so for a plan step", function()
    assert.matches("step 'a': key 1 is not a name",
      add_error({ "x", id = "a", kind = "shell", run = "echo" }), 1, true)
  end)

  it("says so for a function step", function()
    assert.matches("step 'a': key 1 is not a name",
      add_error({ "x", id = "a", fn = function() end }), 1, true)
  end)
end)

describe("a function step that raises", function()
  local function run_one(fn)
    local g = orch.graph()
    g:add({ id = "a", fn = fn })
    g:run(orch.runtime({ workers = 1 }))
    return g:step("a")
  end

  it("with a table records it as text", function()
    local s = run_one(function() error({ code = 1 }) end)
    assert.are.equal("failed", s.status)
    assert.matches("^table: ", s.error)
  end)

  it("with a table that has __tostring records its text", function()
    local s = run_one(function()
      error(setmetatable({}, { __tostring = function() return "custom failure" end }))
    end)
    assert.are.equal("custom failure", s.error)
  end)

  it("with a table whose __tostring raises still fails the step alone", function()
    local s = run_one(function()
      error(setmetatable({}, { __tostring = function() error("no text") end }))
    end)
    assert.are.equal("failed", s.status)
    assert.matches("no text", s.error, 1, true)
  end)

  it("returning nil and a table records it as text", function()
    local s = run_one(function() return nil, { why = 1 } end)
    assert.are.equal("failed", s.status)
    assert.matches("^table: ", s.error)
  end)
end)

describe("orch.runtime", function()
  it("refuses an unknown key, naming it", function()
    local ok, err = pcall(orch.runtime, { workerz = 3 })
    assert.is_false(ok)
    assert.matches("orch.runtime: unknown setting 'workerz'", err, 1, true)
  end)

  it("forwards every setting, checked by the runtime", function()
    local ok, err = pcall(orch.runtime, { lua_mem_max = 1 })
    assert.is_false(ok)
    assert.matches("lua_mem_max", err, 1, true)
    local rt = orch.runtime({ workers = 1, max_parallel = 2, plan_max_bytes = 1000,
      json_max_depth = 8, output_max_bytes = 100, shell_timeout_ms = 5000,
      dry_run_ms = 1, lua_budget = 10, lua_mem_max = 1 << 20, dry_run = false,
      db = "", db_default = "none" })
    assert.are.equal("orch.runtime", getmetatable(rt).__name)
    local big = os.tmpname()
    local f = io.open(big, "w")
    f:write('{"steps":[{"id":"a","kind":"shell","run":"' .. string.rep("x", 2000) .. '"}]}')
    f:close()
    local g, lerr = orch.load(big, rt)
    os.remove(big)
    assert.is_nil(g)
    assert.matches("over the limit of 1000 bytes", lerr, 1, true)
  end)

  it("refuses a value that is not a string, number or boolean", function()
    local ok, err = pcall(orch.runtime, { workers = {} })
    assert.is_false(ok)
    assert.matches("'workers'", err, 1, true)
  end)
end)

describe("a function step with a key it does not read", function()
  it("is refused with the key and a suggestion, as in plan files", function()
    local err = add_error({ id = "b", fn = function() end, dep = { "x" } })
    assert.matches('step \'b\': unknown key "dep" for a fn step (did you mean "deps"?)', err, 1, true)
    err = add_error({ id = "b", fn = function() end, timout_ms = 5 })
    assert.matches('unknown key "timout_ms" for a fn step (did you mean "timeout_ms"?)', err, 1, true)
    assert.matches("its keys: id, fn, deps, cost_ms, timeout_ms", err, 1, true)
  end)

  it("is refused with another kind", function()
    assert.matches('step \'b\': a step with "fn" takes no "kind"',
      add_error({ id = "b", kind = "shell", fn = function() end }), 1, true)
  end)

  it("accepts the keys it reads, and notes starting with _", function()
    local g = orch.graph()
    assert.truthy(g:add({ id = "a", fn = function() end, cost_ms = 5, timeout_ms = 100, _why = "x" }))
    assert.truthy(g:add({ id = "b", fn = function() end, deps = { "a" }, cost_ms = 7 }))
    local _, cost = g:critical_path()
    assert.are.equal(12, cost)
  end)

  it("refuses a cost or timeout that is not a number >= 0", function()
    assert.matches('step \'a\': "cost_ms" must be a number >= 0',
      add_error({ id = "a", fn = function() end, cost_ms = -1 }), 1, true)
    assert.matches('step \'a\': "timeout_ms" must be a number >= 0',
      add_error({ id = "a", fn = function() end, timeout_ms = "soon" }), 1, true)
  end)

  it("or an fn that is not a function", function()
    assert.matches('step \'a\': "fn" must be a function',
      add_error({ id = "a", kind = "sleep", ms = 1, fn = "print" }), 1, true)
  end)
end)

describe("g:depend", function()
  it("after validation names the edge and the reason", function()
    local g = orch.graph()
    g:add({ id = "a", ms = 1 })
    g:add({ id = "b", ms = 1 })
    assert.is_true(g:validate())
    local ok, err = g:depend("b", "a")
    assert.is_nil(ok)
    assert.matches("cannot make 'b' depend on 'a': the graph already ran (or was validated)", err, 1, true)
  end)
end)
