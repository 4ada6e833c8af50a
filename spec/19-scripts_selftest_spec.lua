-- Every module under scripts/: loads with a plain require, exports the
-- contract's functions, passes its selftest() quickly and deterministically,
-- and runs in an environment built like the core's sandbox (only the
-- allowed globals; reading any other raises), so a new script without a
-- passing selftest, or one that reaches for io or os.getenv, fails here.
local lfs = require "lfs"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local ROOT = here .. "/../scripts"
package.path = ROOT .. "/?.lua;" .. package.path

-- Module names of every .lua file under ROOT ("rewards.group", ...).
local function modules()
  local out = {}
  local function walk(dir, prefix)
    for entry in lfs.dir(dir) do
      if entry:sub(1, 1) ~= "." then
        local path = dir .. "/" .. entry
        local mode = lfs.attributes(path, "mode")
        if mode == "directory" then
          walk(path, prefix .. entry .. ".")
        elseif mode == "file" and entry:match("%.lua$") then
          out[#out + 1] = prefix .. entry:gsub("%.lua$", "")
        end
      end
    end
  end
  walk(ROOT, "")
  table.sort(out)
  return out
end

-- The contract the core calls: module -> functions it must export.
local CONTRACT = {
  ["routing.complexity"] = { "classify" },
  ["routing.agents"] = { "route", "parallel_limit" },
  ["rewards.group"] = { "reward" },
  ["rewards.step"] = { "reward" },
  ["rewards.trajectory"] = { "reward" },
  ["rewards.advantage"] = { "compute" },
  ["policies.gap"] = { "prompt", "parse", "should_plan", "task_prompt", "synthesis_prompt" },
  ["policies.retry"] = { "decide" },
  ["policies.limits"] = { "limits" },
  ["policies.scrub"] = { "scrub" },
}

local ALLOWED = { "pairs", "ipairs", "next", "type", "tostring", "tonumber", "select",
                  "error", "assert", "pcall", "xpcall", "setmetatable", "getmetatable",
                  "rawget", "rawset", "rawequal", "rawlen", "print" }

-- A copy of a library table that raises on a field it does not have
-- (os.getenv, string.dump are not in the sandbox).
local function copy(t, name, drop)
  local c = {}
  for k, v in pairs(t) do
    if not (drop and drop[k]) then c[k] = v end
  end
  return setmetatable(c, { __index = function(_, k)
    error("script attempted to access " .. name .. "." .. tostring(k) .. ", not in the sandbox", 2)
  end })
end

-- An environment like the core's sandbox: the allow-list, os with time,
-- clock and date only, require limited to modules under ROOT, and an error
-- on any read or write of another global.
local function sandbox()
  local env = {}
  for _, k in ipairs(ALLOWED) do env[k] = _G[k] end
  env.string = copy(string, "string", { dump = true })
  env.table, env.math, env.utf8 = copy(table, "table"), copy(math, "math"), copy(utf8, "utf8")
  env.os = copy({ time = os.time, clock = os.clock, date = os.date }, "os")
  -- the engine's helpers (runtime/policy.c); keywords is the same C
  -- function, from the Lua module orch.so
  env.orch = copy({ log = print, now_ms = function() return os.time() * 1000 end,
                    keywords = require("orch").keywords }, "orch")
  local loaded = {}
  env.require = function(name)
    if loaded[name] then return loaded[name] end
    if type(name) ~= "string" or not name:match("^[%w_]+[%w_%.]*$") then
      error("require: bad module name " .. tostring(name), 2)
    end
    local path = ROOT .. "/" .. name:gsub("%.", "/") .. ".lua"
    local f = io.open(path, "r")
    if not f then error("require: no script " .. name, 2) end
    local src = f:read("a")
    f:close()
    local chunk = assert(load(src, "@" .. path, "t", env))
    local m = chunk(name)
    loaded[name] = m
    return m
  end
  return setmetatable(env, {
    __index = function(_, k)
      error("script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 2)
    end,
    __newindex = function(_, k)
      error("script attempted to create global variable '" .. tostring(k) .. "'", 2)
    end,
  })
end

describe("every script under scripts/", function()
  local names = modules()

  it("includes every module of the contract", function()
    local have = {}
    for _, n in ipairs(names) do have[n] = true end
    for n in pairs(CONTRACT) do assert.is_true(have[n], n .. " is missing") end
  end)

  for _, name in ipairs(names) do
    describe(name, function()
      it("loads with a plain require and returns a table", function()
        assert.is_table(require(name))
      end)

      it("exports selftest() and its contract's functions", function()
        local m = require(name)
        assert.is_function(m.selftest)
        for _, fn in ipairs(CONTRACT[name] or {}) do
          assert.is_function(m[fn], name .. "." .. fn)
        end
      end)

      it("passes its selftest", function()
        assert.is_true(require(name).selftest())
      end)

      it("passes its selftest in a sandbox-like environment", function()
        local m = sandbox().require(name)
        assert.is_true(m.selftest())
      end)

      it("runs its selftest in under 5 ms", function()
        local m = require(name)
        local times = {}
        for i = 1, 21 do
          local t0 = os.clock()
          m.selftest()
          times[i] = os.clock() - t0
        end
        table.sort(times)
        assert.is_true(times[11] < 0.005, ("median %.3f ms"):format(times[11] * 1000))
      end)

      it("opens with a comment saying what it provides", function()
        local f = assert(io.open(ROOT .. "/" .. name:gsub("%.", "/") .. ".lua"))
        local first = f:read("l")
        f:close()
        assert.matches("^%-%- " .. name:gsub("%.", "/"):gsub("%p", "%%%0") .. "%.lua: ", first)
      end)
    end)
  end

  it("refuses a global the sandbox does not offer", function()
    local env = sandbox()
    assert.has_error(function() return env.io end,
      "script attempted to access nonexistent global variable 'io'")
    assert.has_error(function() return env.os.getenv end,
      "script attempted to access os.getenv, not in the sandbox")
  end)
end)
