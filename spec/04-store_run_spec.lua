-- Runs recorded as sessions: status, and resume after a crash.
local h = require("helpers")

local tmpdir = h.tmpdir

local function count_lines(path)
  local f = io.open(path)
  if not f then return 0 end
  local n = 0
  for _ in f:lines() do n = n + 1 end
  f:close()
  return n
end

describe("a run with the embedded store", function()
  it("is a session whose progress orchestrate status reports", function()
    local dir = tmpdir()
    local db = "sqlite:" .. dir .. "/o.db"
    local code, out = h.cli("run --json --db " .. db .. " " .. h.plan({
      { id = "a", kind = "shell", run = "echo a" },
      { id = "b", kind = "shell", run = "exit 1", deps = { "a" } },
      { id = "c", kind = "sleep", ms = 1, deps = { "b" } },
    }))
    assert.are.equal(1, code)
    local sid = h.json().decode(out).session
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", sid)
    local scode, sout = h.cli("status --json --db " .. db .. " " .. sid)
    assert.are.equal(0, scode)
    local s = h.json().decode(sout).session
    assert.are.equal(3, s.total)
    assert.are.equal(1, s.passed)
    assert.are.equal(1, s.failed)
    assert.are.equal("failed", s.status)
    assert.are.equal(100, s.progress_pct)
    local acode, aout = h.cli("status --db " .. db)
    assert.are.equal(0, acode)
    assert.matches("today:", aout)
  end)

  it("an unknown session is a clear error", function()
    local dir = tmpdir()
    local db = "sqlite:" .. dir .. "/o.db"
    h.cli("migrate --db " .. db)
    local code, _, err = h.cli("status --db " .. db .. " 00000000-0000-4000-8000-000000000000")
    assert.are.equal(65, code)
    assert.matches("00000000%-0000%-4000%-8000%-000000000000", err)
  end)
end)

describe("after kill -9 mid-run, --resume", function()
  it("never runs a recorded success twice and ends every step with one record #slow", function()
    local dir = tmpdir()
    local db = "sqlite:" .. dir .. "/o.db"
    local steps = {}
    for i = 1, 12 do
      local deps = i > 1 and { "s" .. (i - 1) } or {}
      steps[i] = { id = "s" .. i, kind = "shell", deps = deps,
        run = "echo run >> " .. dir .. "/s" .. i .. ".count; sleep 0.15" }
    end
    local plan = h.plan(steps)
    local outf = dir .. "/first.json"
    local p = io.popen(h.bin .. " run --json --db " .. db .. " " .. plan .. " > " .. outf .. " 2>&1 & echo $!")
    local pid = p:read("l")
    p:close()
    os.execute("sleep 1.0; kill -9 " .. pid)
    -- the session id: the only session in the database
    local _, st, serr = h.cli("status --json --db " .. db)
    assert.is_true(#st > 0, serr)
    local doc = h.json().decode(st)
    local sid = doc.active[1] and doc.active[1].session_id
    assert.is_not_nil(sid, st)
    local code, out = h.cli("run --json --db " .. db .. " --resume " .. sid)
    assert.are.equal(0, code, out)
    local res = h.json().decode(out)
    assert.are.equal(sid, res.session)
    local skipped_ahead = 0
    for _, s in ipairs(res.steps) do
      assert.are.equal("passed", s.status)
      local n = count_lines(dir .. "/" .. s.id .. ".count")
      if s.started_ms == h.json().null then
        -- recorded as passed before the crash: not run again
        skipped_ahead = skipped_ahead + 1
        assert.are.equal(1, n, s.id .. " ran twice")
      else
        assert.is_true(n >= 1 and n <= 2, s.id .. " ran " .. n .. " times")
      end
    end
    assert.is_true(skipped_ahead >= 3, "only " .. skipped_ahead .. " steps were recorded before the kill")
    local _, sout = h.cli("status --json --db " .. db .. " " .. sid)
    local s = h.json().decode(sout).session
    assert.are.equal(12, s.total)
    assert.are.equal(12, s.passed)
    assert.are.equal("completed", s.status)
  end)
end)

describe("the Lua module", function()
  it("records a run as a session and reads its progress summary", function()
    local orch = require("orch")
    local dir = h.tmpdir()
    local db = "sqlite:" .. dir .. "/lua.db"
    local rt = orch.runtime({ db = db })
    local g = orch.graph()
    g:add({ id = "a", fn = function() return "x" end })
    g:add({ id = "b", kind = "shell", run = "exit 2", deps = { "a" } })
    g:add({ id = "c", kind = "sleep", ms = 1, deps = { "b" } })
    local res = g:run(rt)
    assert.are.equal("failed", res.status)
    assert.are.equal(rt:session(), res.session)
    rt:close()
    local st = orch.status(db, res.session)
    assert.are.equal(3, st.session.total)
    assert.are.equal(1, st.session.passed)
    assert.are.equal(1, st.session.failed)
    assert.are.equal("failed", st.session.status)
  end)
end)

describe("two runs at once on one SQLite database", function()
  it("both run and both are recorded", function()
    local dir = h.tmpdir()
    local db = "sqlite:" .. dir .. "/shared.db"
    local plan = h.plan({ { id = "a", kind = "sleep", ms = 300 }, { id = "b", kind = "shell", run = "true", deps = { "a" } } })
    local out1 = dir .. "/one.json"
    os.execute(h.bin .. " run --json --db " .. db .. " " .. plan .. " > " .. out1 .. " 2>&1 &")
    os.execute("sleep 0.05")
    local code, out, err = h.cli("run --json --db " .. db .. " " .. plan)
    assert.are.equal(0, code, err)
    os.execute("sleep 0.5")
    local f = io.open(out1)
    local first = h.json().decode(f:read("a"))
    f:close()
    assert.are.equal("passed", first.status)
    local second = h.json().decode(out)
    assert.are_not.equal(first.session, second.session)
    for _, sid in ipairs({ first.session, second.session }) do
      local _, sout = h.cli("status --json --db " .. db .. " " .. sid)
      assert.are.equal(2, h.json().decode(sout).session.passed)
    end
  end)
end)

describe("every finished step", function()
  local function sql(path, q)
    local p = io.popen("sqlite3 " .. path .. " " .. h.sh_quote(q))
    local out = p:read("a")
    p:close()
    return out
  end

  it("gets a reward from rewards/step.lua, with its content hash", function()
    local dir = h.tmpdir()
    local code = h.cli("run --db sqlite:" .. dir .. "/r.db " .. h.plan({
      { id = "ok", kind = "shell", run = "true" },
      { id = "bad", kind = "shell", run = "exit 4" },
    }))
    assert.are.equal(1, code)
    local rows = sql(dir .. "/r.db",
      "select execution_result, implicit_reward, length(step_content_hash) from jr_step_rewards order by step_number")
    local lines = {}
    for l in rows:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(2, #lines)
    local r1, v1, h1 = lines[1]:match("^(%w+)|([%-%d%.e]+)|(%d+)$")
    local r2, v2 = lines[2]:match("^(%w+)|([%-%d%.e]+)|")
    assert.are.equal("passed", r1)
    assert.are.equal("failed", r2)
    assert.is_true(tonumber(v1) > tonumber(v2))
    assert.are.equal("64", h1)
  end)

  it("that failed its reward script has the error recorded, not a number", function()
    local dir = h.tmpdir()
    os.execute("cp -r scripts " .. dir .. "/scripts")
    local f = io.open(dir .. "/scripts/rewards/step.lua", "w")
    f:write("local M = {}\nfunction M.reward(s) return 0/0 end\nreturn M\n")
    f:close()
    local conf = h.write('return { scripts_dir = "' .. dir .. '/scripts" }', ".lua")
    h.cli("run --config " .. conf .. " --db sqlite:" .. dir .. "/r.db " .. h.plan({
      { id = "ok", kind = "shell", run = "true" } }))
    local out = sql(dir .. "/r.db", "select coalesce(implicit_reward, 'null'), error_detail from jr_step_rewards")
    assert.matches("^null|reward: .*step.lua.*NaN", out)
  end)

  it("keeps a refused script's error for orchestrate status, until a fixed version loads", function()
    local dir = h.tmpdir()
    os.execute("cp -r scripts " .. dir .. "/scripts")
    local path = dir .. "/scripts/routing/agents.lua"
    local good = h.read(path)
    local f = io.open(path, "w")
    f:write("local M = {}\nfunction M.route(t)\n  return {\nend\nreturn M\n")
    f:close()
    local conf = h.write('return { scripts_dir = "' .. dir .. '/scripts" }', ".lua")
    local db = "sqlite:" .. dir .. "/r.db"
    local plan = h.plan({ { id = "ok", kind = "shell", run = "true" } })
    local code, _, rerr = h.cli("run --config " .. conf .. " --db " .. db .. " " .. plan)
    assert.are.equal(0, code)
    assert.not_matches("spool", rerr)
    -- another shell, another config: status reads what the runtime recorded
    local _, out = h.cli("status --json --db " .. db)
    local doc = h.json().decode(out)
    local by = {}
    for _, e in ipairs(doc.scripts_refused) do by[e.module] = e end
    -- policies.limits requires routing.agents: refused with it
    assert.is_table(by["policies.limits"])
    local r = by["routing.agents"]
    assert.are.equal("routing.agents", r.module)
    assert.matches("/scripts/routing/agents.lua$", r.file)
    assert.matches("agents.lua:4:", r.error)
    assert.matches(":%d+$", r.runtime)
    local _, text = h.cli("status --db " .. db)
    assert.matches("scripts refused by a runtime", text, 1, true)
    assert.matches("agents.lua:4:", text)
    -- the other modules loaded, and a run with the file fixed clears it
    local loaded = sql(dir .. "/r.db", "select count(*) from orch_script_events where outcome = 'loaded'")
    assert.is_true(tonumber(loaded) >= 8)
    f = io.open(path, "w")
    f:write(good)
    f:close()
    h.cli("run --config " .. conf .. " --db " .. db .. " " .. plan)
    _, out = h.cli("status --json --db " .. db)
    assert.are.same({}, h.json().decode(out).scripts_refused)
    os.remove(plan)
  end)

  it("is shown by orchestrate status one line each, control bytes escaped", function()
    local dir = h.tmpdir()
    local db = dir .. "/r.db"
    h.cli("run --db sqlite:" .. db .. " " .. h.plan({ { id = "ok", kind = "shell", run = "true" } }))
    sql(db, "insert into orch_script_events (runtime, module, file, generation, outcome, error) " ..
            "values ('h:1', 'routing.x', 'x.lua', 2, 'refused', " ..
            "'x.lua:1: line one' || char(10) || 'line two' || char(27) || '[31m red')")
    local code, text = h.cli("status --db sqlite:" .. db)
    assert.are.equal(0, code)
    local line = text:match("[^\n]*x%.lua:1:[^\n]*")
    assert.is_truthy(line, text)
    assert.matches("line one\\nline two\\x1b[31m red", line, 1, true)
    assert.is_nil(text:find("\27", 1, true))
  end)
end)
