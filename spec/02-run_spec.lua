-- Running a graph: dependency order, failure propagation, cancellation,
-- shell steps, the in-flight limit, and a wide fan of sleeps.
local h = require("helpers")
local orch = require("orch")

local function run_plan(steps, args)
  local code, out, err = h.cli("run --json " .. (args or "") .. " " .. h.plan(steps))
  local ok, doc = pcall(h.json().decode, out)
  assert.is_true(ok, "no JSON on stdout: " .. out .. err)
  local by = {}
  for _, s in ipairs(doc.steps) do by[s.id] = s end
  return code, doc, by, err
end

describe("over many random DAGs", function()
  it("no step starts before all its dependencies finished", function()
    math.randomseed(42)
    local rt = orch.runtime({ workers = 2 })
    for trial = 1, 25 do
      local g = orch.graph()
      local n = math.random(5, 60)
      local deps = {}
      for i = 1, n do
        local d = {}
        for j = 1, i - 1 do
          if math.random() < 3 / i then d[#d + 1] = "s" .. j end
        end
        deps[i] = d
        local r = math.random(3)
        if r == 1 then
          g:add({ id = "s" .. i, kind = "sleep", ms = math.random(0, 8), deps = d })
        elseif r == 2 then
          g:add({ id = "s" .. i, kind = "lua", code = "local x = 0 for i = 1, 1000 do x = x + i end return x", deps = d })
        else
          g:add({ id = "s" .. i, fn = function() return "ok" end, deps = d })
        end
      end
      local res = g:run(rt)
      assert.are.equal("passed", res.status)
      local by = {}
      for _, s in ipairs(res.steps) do by[s.id] = s end
      for i = 1, n do
        local s = by["s" .. i]
        assert.are.equal("passed", s.status)
        for _, d in ipairs(deps[i]) do
          assert.is_true(s.started_ms >= by[d].finished_ms,
            ("trial %d: %s started at %.3f before %s finished at %.3f"):format(trial, s.id, s.started_ms, d, by[d].finished_ms))
        end
      end
    end
  end)

  it("with an in-flight limit, never more than the limit run at once", function()
    local steps = {}
    for i = 1, 40 do steps[i] = { id = "s" .. i, kind = "sleep", ms = 5 + (i % 7) } end
    local code, doc = run_plan(steps, "--max-parallel 4")
    assert.are.equal(0, code)
    local events = {}
    for _, s in ipairs(doc.steps) do
      events[#events + 1] = { t = s.started_ms, d = 1 }
      events[#events + 1] = { t = s.finished_ms, d = -1 }
    end
    table.sort(events, function(a, b) if a.t == b.t then return a.d < b.d end return a.t < b.t end)
    local cur, peak = 0, 0
    for _, e in ipairs(events) do cur = cur + e.d; if cur > peak then peak = cur end end
    assert.is_true(peak <= 4, "peak in flight " .. peak)
    assert.is_true(peak >= 3)
  end)
end)

describe("a failed step", function()
  it("skips its dependents, naming it, while independent branches run on", function()
    local code, doc, by = run_plan({
      { id = "bad", kind = "shell", run = "echo oops >&2; exit 7" },
      { id = "child", kind = "sleep", ms = 1, deps = { "bad" } },
      { id = "grandchild", kind = "sleep", ms = 1, deps = { "child" } },
      { id = "other", kind = "sleep", ms = 30 },
      { id = "after_other", kind = "shell", run = "echo fine", deps = { "other" } },
    })
    assert.are.equal(1, code)
    assert.are.equal("failed", doc.status)
    assert.are.equal("failed", by.bad.status)
    assert.are.equal(7, by.bad.exit_status)
    assert.matches("exit status 7: oops", by.bad.error, 1, true)
    assert.are.equal("skipped", by.child.status)
    assert.matches("dependency 'bad' failed", by.child.error, 1, true)
    assert.are.equal("skipped", by.grandchild.status)
    assert.matches("dependency 'bad' failed", by.grandchild.error, 1, true)
    assert.are.equal("passed", by.after_other.status)
    assert.are.equal("fine\n", by.after_other.output)
    assert.are.equal(3, doc.passed + doc.failed)
    assert.are.equal(2, doc.skipped)
  end)

  it("a Lua step returning nil, message fails with the message", function()
    local code, _, by = run_plan({ { id = "l", kind = "lua", code = "return nil, 'no good'" } })
    assert.are.equal(1, code)
    assert.are.equal("no good", by.l.error)
  end)
end)

describe("a shell step", function()
  it("captures stdout and the exit status", function()
    local code, _, by = run_plan({ { id = "s", kind = "shell", run = "printf 'a\\nb'; exit 0" } })
    assert.are.equal(0, code)
    assert.are.equal("a\nb", by.s.output)
    assert.are.equal(0, by.s.exit_status)
  end)

  it("that fails shows its message on its one summary line, control bytes escaped", function()
    local plan = h.plan({
      { id = "s", kind = "shell", run = "printf 'one\\nred \\033[31mX\\n' >&2; exit 3" },
      { id = "t", kind = "sleep", ms = 1 },
    })
    local code, out = h.cli("run --db none " .. plan)
    assert.are.equal(1, code)
    local line = out:match("\n?(  failed   s [^\n]*)\n")
    assert.is_truthy(line, out)
    assert.matches("exit status 3: one\\nred \\x1b[31mX", line, 1, true)
    assert.matches("\n  passed   t ", out)
    assert.is_nil(out:find("\27", 1, true))
  end)

  it("whose stderr is not UTF-8 keeps its error in --json, bad bytes as U+FFFD", function()
    local code, _, by = run_plan({ { id = "s", kind = "shell",
                                     run = "printf 'bad \\377 byte\\n' >&2; exit 2" } }, "--db none")
    assert.are.equal(1, code)
    assert.are.equal(2, by.s.exit_status)
    assert.are.equal("exit status 2: bad \u{FFFD} byte\n", by.s.error)
  end)

  it("is killed at its timeout, with its children", function()
    local marker = os.tmpname()
    os.remove(marker)
    local t0 = os.time()
    local code, _, by = run_plan({ { id = "slow", kind = "shell", timeout_ms = 300,
      run = "(sleep 3; touch " .. marker .. ") & sleep 5" } })
    assert.are.equal(1, code)
    assert.matches("timed out after 300 ms", by.slow.error, 1, true)
    assert.is_true(by.slow.finished_ms - by.slow.started_ms < 2000)
    assert.is_true(os.time() - t0 < 3)
    os.execute("sleep 3.2")
    assert.is_nil(io.open(marker), "the background child outlived the step")
  end)
end)

describe("cancel", function()
  it("from the API leaves every step with a true final status", function()
    local rt = orch.runtime({ workers = 2 })
    local g = orch.graph()
    g:add({ id = "long", kind = "shell", run = "sleep 10" })
    g:add({ id = "after", kind = "sleep", ms = 1, deps = { "long" } })
    g:add({ id = "t", kind = "sleep", ms = 10000 })
    g:add({ id = "quick", fn = function() return "done" end })
    g:add({ id = "canceller", fn = function() rt:cancel(); return "sent" end, deps = { "quick" } })
    local t0 = os.time()
    local res = g:run(rt)
    assert.is_true(os.time() - t0 < 5)
    assert.are.equal("canceled", res.status)
    local by = {}
    for _, s in ipairs(res.steps) do by[s.id] = s end
    assert.are.equal("passed", by.quick.status)
    assert.are.equal("failed", by.long.status)
    assert.matches("canceled", by.long.error)
    assert.are.equal("skipped", by.after.status)
    assert.are.equal("failed", by.t.status)
    for _, s in ipairs(res.steps) do
      assert.is_true(s.status == "passed" or s.status == "failed" or s.status == "skipped")
    end
  end)

  it("by SIGINT on the CLI kills children and reports the run canceled #nosan", function()
    local plan = h.plan({
      { id = "long", kind = "shell", run = "sleep 30" },
      { id = "next", kind = "sleep", ms = 1, deps = { "long" } },
    })
    local out = os.tmpname()
    local p = io.popen(h.bin .. " run --json " .. plan .. " > " .. out .. " 2>&1 & echo $!")
    local pid = p:read("l")
    p:close()
    os.execute("sleep 0.5; kill -INT " .. pid)
    local t0 = os.time()
    local doc
    repeat
      os.execute("sleep 0.1")
      local f = io.open(out)
      local txt = f:read("a")
      f:close()
      local ok, d = pcall(h.json().decode, txt)
      if ok then doc = d end
    until doc or os.time() - t0 > 5
    assert.is_not_nil(doc)
    assert.are.equal("canceled", doc.status)
    assert.are.equal("failed", doc.steps[1].status)
    assert.are.equal("skipped", doc.steps[2].status)
    local ps = io.popen("pgrep -xf 'sleep 30' | wc -l")
    local n = tonumber(ps:read("a"))
    ps:close()
    assert.are.equal(0, n)
  end)

  -- A plan whose shell step writes its PID and its child's to pidfile, and
  -- the running CLI's PID.
  local function start_cli(pidfile)
    local plan = h.plan({
      { id = "long", kind = "shell", run = "echo $$ > " .. pidfile .. "; sleep 30 & echo $! >> "
        .. pidfile .. "; wait" },
      { id = "next", kind = "sleep", ms = 1, deps = { "long" } },
    })
    local out = os.tmpname()
    local p = io.popen(h.bin .. " run --db none --json " .. plan .. " > " .. out .. " 2>&1 & echo $!")
    local pid = p:read("l")
    p:close()
    local pids = {}
    local t0 = os.time()
    repeat
      os.execute("sleep 0.05")
      pids = {}
      local f = io.open(pidfile)
      if f then
        for l in f:lines() do pids[#pids + 1] = l end
        f:close()
      end
    until #pids == 2 or os.time() - t0 > 5
    assert.are.equal(2, #pids)
    return pid, pids, out
  end

  -- Alive: a process that is not a zombie (an init may be slow to reap).
  local function alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local st = f:read("a")
    f:close()
    return st:match("%) (%a)") ~= "Z"
  end

  for _, sig in ipairs({ "TERM", "HUP" }) do
  it("by SIG" .. sig .. " on the CLI kills children and reports the run canceled #nosan", function()
    local pidfile = os.tmpname()
    os.remove(pidfile)
    local pid, pids, out = start_cli(pidfile)
    os.execute("kill -" .. sig .. " " .. pid)
    local t0 = os.time()
    local doc
    repeat
      os.execute("sleep 0.1")
      local ok, d = pcall(h.json().decode, h.read(out))
      if ok then doc = d end
    until doc or os.time() - t0 > 5
    for _, p in ipairs(pids) do
      if alive(p) then os.execute("kill -KILL " .. p) end
    end
    assert.is_not_nil(doc)
    assert.are.equal("canceled", doc.status)
    assert.are.equal("failed", doc.steps[1].status)
    assert.matches("canceled", doc.steps[1].error)
    assert.are.equal("skipped", doc.steps[2].status)
    assert.is_false(alive(pids[1]), "the shell outlived the run")
    assert.is_false(alive(pids[2]), "the shell's child outlived the run")
  end)
  end

  it("by a second signal exits at once and leaves no child running #nosan", function()
    local pidfile = os.tmpname()
    os.remove(pidfile)
    local pid, pids = start_cli(pidfile)
    os.execute("kill -TERM " .. pid .. "; kill -TERM " .. pid)
    local t0 = os.time()
    repeat os.execute("sleep 0.05") until not alive(pid) or os.time() - t0 > 5
    local left = {}
    for _, p in ipairs(pids) do
      if alive(p) then left[#left + 1] = p; os.execute("kill -KILL " .. p) end
    end
    assert.is_false(alive(pid), "orchestrate is still running")
    assert.are.same({}, left)
  end)
end)

describe("a 10,000-wide fan of sleep steps", function()
  it("finishes in about one sleep", function()
    local rt = orch.runtime({ workers = 2 })
    local g = orch.graph()
    g:add({ id = "root", kind = "sleep", ms = 0 })
    for i = 1, 10000 do g:add({ id = "s" .. i, kind = "sleep", ms = 200, deps = { "root" } }) end
    local res = g:run(rt)
    assert.are.equal("passed", res.status)
    assert.is_true(res.makespan_ms >= 200)
    assert.is_true(res.makespan_ms < 1000, "makespan " .. res.makespan_ms)
  end)
end)

describe("the run summary", function()
  it("has makespan, bound and sequential sum", function()
    local code, doc = run_plan({
      { id = "a", kind = "sleep", ms = 50 },
      { id = "b", kind = "sleep", ms = 50 },
      { id = "c", kind = "sleep", ms = 50, deps = { "a" } },
    })
    assert.are.equal(0, code)
    assert.are.equal("passed", doc.status)
    assert.is_true(doc.makespan_ms >= 95 and doc.makespan_ms < 1000, doc.makespan_ms)
    assert.is_true(doc.sequential_ms >= 145, doc.sequential_ms)
    assert.is_true(doc.bound_ms >= 95 and doc.bound_ms <= doc.makespan_ms + 1)
    for _, s in ipairs(doc.steps) do
      assert.is_number(s.started_ms)
      assert.is_number(s.finished_ms)
    end
  end)

  it("of a 100,000-step chain comes right after the run, its bound the chain's sum #slow", function()
    -- steps added last to first: index order is not an order of the chain
    local steps, n = {}, 100000
    for i = 1, n do
      steps[i] = { id = "c" .. i, kind = "sleep", ms = 0, deps = i < n and { "c" .. (i + 1) } or nil }
    end
    local plan = h.plan(steps)
    local t0 = os.time()
    local code, out = h.cli("run --db none " .. plan)
    local took = os.time() - t0
    assert.are.equal(0, code)
    assert.matches("passed: 100000 passed, 0 failed, 0 skipped of 100000 steps", out, 1, true)
    assert.is_true(took <= 3, "took " .. took .. " s")
    local _, doc = run_plan({
      { id = "x", kind = "sleep", ms = 20, deps = { "y" } },
      { id = "y", kind = "sleep", ms = 20, deps = { "z" } },
      { id = "z", kind = "sleep", ms = 20 },
      { id = "w", kind = "sleep", ms = 1 },
    }, "--db none --max-parallel 4")
    assert.is_true(math.abs(doc.bound_ms - (doc.sequential_ms - (doc.steps[4].finished_ms
      - doc.steps[4].started_ms))) < 0.01, doc.bound_ms .. " vs " .. doc.sequential_ms)
  end)

  it("prints a readable summary without --json", function()
    local code, out = h.cli("run " .. h.plan({ { id = "only", kind = "shell", run = "true" } }))
    assert.are.equal(0, code)
    assert.matches("passed: 1 passed, 0 failed, 0 skipped of 1 steps", out, 1, true)
    assert.matches("makespan", out)
    assert.not_matches("\r", out)
  end)
end)
