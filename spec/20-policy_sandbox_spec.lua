-- The Lua sandbox and the script checker, through the orchestrate CLI:
-- lua steps run in the same sandbox as the policy scripts (policy.c), and
-- `orchestrate check DIR` compiles and self-checks every script.
local h = require("helpers")

local function run_plan(steps, args)
  local plan = h.plan(steps)
  local code, out, err = h.cli("run " .. plan .. " --json " .. (args or ""))
  os.remove(plan)
  local ok, doc = pcall(h.json().decode, out)
  assert(ok, "no JSON from run: " .. out .. err)
  local by_id = {}
  for _, s in ipairs(doc.steps) do by_id[s.id] = s end
  return code, by_id
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. h.sh_quote(d)))
  return d
end

local function put(dir, rel, text)
  local path = dir .. "/" .. rel
  assert(os.execute("mkdir -p " .. h.sh_quote(path:match("^(.*)/"))))
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

describe("a lua step in the sandbox", function()
  it("cannot open files, run commands, load binary chunks or reach the real globals", function()
    local cases = {
      io = { "return io.open('/etc/passwd')", "nonexistent global variable 'io'" },
      exec = { "return os.execute('true')", "'os.execute' is not available" },
      getenv = { "return os.getenv('HOME')", "'os.getenv' is not available" },
      req = { "return require 'os'", "require: no module 'os'" },
      dump = { "return string.dump(print)", "'string.dump' is not available" },
      binary = { "return assert(load('\\27Lua'))", "binary chunks are not allowed" },
      debug = { "return debug.getinfo(1)", "nonexistent global variable 'debug'" },
      gwrite = { "_G.x = 1", "create global variable 'x'" },
      meta = { "return getmetatable('').__index", "attempt to index a nil value" },
      dofile = { "return dofile('/etc/passwd')", "nonexistent global variable 'dofile'" },
    }
    local steps = {}
    for id, c in pairs(cases) do
      steps[#steps + 1] = { id = id, kind = "lua", code = c[1] }
    end
    local code, by_id = run_plan(steps)
    assert.are_not.equal(0, code)
    for id, c in pairs(cases) do
      assert.are.equal("failed", by_id[id].status, id)
      assert.matches(c[2], by_id[id].error, 1, true)
    end
  end)

  it("stops a loop at the instruction budget even inside pcall, and the worker goes on", function()
    local code, by_id = run_plan({
      { id = "spin", kind = "lua",
        code = "for i = 1, 10 do pcall(function() while true do end end) end return 'escaped'" },
      { id = "after", kind = "lua", deps = { "spin" }, code = "return 'ran'" },
      { id = "other", kind = "lua", code = "return 40 + 2" },
    }, "--workers 1")
    assert.are_not.equal(0, code)
    assert.are.equal("failed", by_id.spin.status)
    assert.matches("instruction budget exceeded", by_id.spin.error, 1, true)
    assert.are.equal("passed", by_id.other.status)
    assert.are.equal("42", by_id.other.output)
  end)

  it("stops a memory bomb at the memory cap with a clear error", function()
    local conf = h.write("return { lua_mem_max = 8 * 1024 * 1024 }", ".lua")
    local code, by_id = run_plan({
      { id = "bomb", kind = "lua",
        code = "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 1000) .. i end" },
      { id = "fine", kind = "lua", code = "return #string.rep('y', 1000)" },
    }, "--workers 1 --config " .. conf)
    os.remove(conf)
    assert.are_not.equal(0, code)
    assert.are.equal("failed", by_id.bomb.status)
    assert.matches("memory cap exceeded (8388608 bytes)", by_id.bomb.error, 1, true)
    assert.are.equal("1000", by_id.fine.output)
  end)
end)

describe("orchestrate check", function()
  it("passes the shipped scripts", function()
    local code, out = h.cli("check scripts")
    assert.are.equal(0, code)
    assert.matches("all scripts compile and pass their self-checks", out, 1, true)
  end)

  it("prints file:line for every failing script and exits non-zero", function()
    local dir = tmpdir()
    put(dir, "routing/complexity.lua", "return {classify = function() return 'local' end}\n")
    put(dir, "rewards/group.lua", "local M = {}\nfunction M.reward(\nreturn M\n")
    put(dir, "policies/retry.lua",
      "local M = {}\nfunction M.selftest()\n  assert(1 == 2, 'one is not two')\nend\nreturn M\n")
    put(dir, "policies/hang.lua",
      "local M = {}\nfunction M.selftest()\n  while true do end\nend\nreturn M\n")
    local code, _, err = h.cli("check " .. dir)
    os.execute("rm -rf " .. h.sh_quote(dir))
    assert.are_not.equal(0, code)
    assert.matches(dir .. "/rewards/group.lua:3: ", err, 1, true)
    assert.matches(dir .. "/policies/retry.lua:3: one is not two", err, 1, true)
    assert.matches(dir .. "/policies/hang.lua:3: instruction budget exceeded", err, 1, true)
    assert.is_nil(err:find("complexity.lua", 1, true))
  end)
end)
