-- The main job end to end against the project's mock LLM over HTTP:
-- request -> plan -> parallel llm steps -> observation -> answer.
local h = require("helpers")
local mock = require("mock_llm_helper")

local tmpdir = h.tmpdir

describe("orchestrate ask", function()
  local m, env, dir
  setup(function()
    m = assert(mock.start())
    dir = tmpdir()
    env = "OPENAI_BASE_URL=http://127.0.0.1:" .. m.port .. "/v1 OPENAI_API_KEY=sk-test-secret-0123456789"
  end)
  teardown(function() mock.stop(m) end)

  local function ask(args, request)
    local code, out, err = h.cli("ask " .. args .. " " .. h.sh_quote(request), { env = env })
    return code, out, err
  end

  it("plans, runs the tasks at once and answers from their results", function()
    local db = "sqlite:" .. dir .. "/a.db"
    local code, out, err = ask("--json --db " .. db,
      "Compare the security advisories with the changed modules and write a release summary")
    assert.are.equal(0, code, err)
    local doc = h.json().decode(out)
    assert.are.equal("completed", doc.status)
    assert.is_true(doc.planned)
    assert.is_true(#doc.plan.tasks >= 4)
    -- a task without dependencies lists none as [] like the others, not {}
    assert.is_nil(out:find('"deps":%s*{}'), out)
    assert.is_truthy(out:find('"deps":%s*%[%]'), out)
    -- the independent tasks share level 0, the answer is last
    assert.is_true(#doc.plan.levels[1] >= 2)
    assert.are.same({ "answer" }, doc.plan.levels[#doc.plan.levels])
    local by = {}
    for _, s in ipairs(doc.steps) do by[s.id] = s end
    assert.are.equal("passed", by.plan.status)
    for _, t in ipairs(doc.plan.tasks) do
      local s = by[t.id]
      assert.are.equal("passed", s.status)
      assert.is_string(s.tier)
      assert.is_string(s.model)
      assert.is_true(s.tokens_in > 0)
      assert.is_number(s.cost)
      assert.is_string(doc.observation["Task " .. t.id])
      for _, d in ipairs(t.deps) do
        assert.is_true(s.started_ms >= by[d].finished_ms)
      end
    end
    assert.matches("Final answer", doc.answer)
    assert.is_true(doc.tokens_in > 0)
    assert.is_false(doc.tokens_unknown)
    assert.is_false(doc.cost_unknown) -- every tier priced (0 on loopback)
    -- one session holds the planning call, the tasks and the answer
    local _, sout = h.cli("status --json --db " .. db .. " " .. doc.session)
    local s = h.json().decode(sout).session
    assert.are.equal(#doc.plan.tasks + 2, s.total)
    assert.are.equal("completed", s.status)
    -- and its tokens: the planning call's, the tasks' and the answer's
    assert.are.equal(doc.tokens_in + doc.tokens_out, s.total_tokens)
    local by_runs = 0
    for _, st in ipairs(doc.steps) do by_runs = by_runs + (st.tokens_in or 0) + (st.tokens_out or 0) end
    assert.are.equal(by_runs, s.total_tokens)
    assert.is_true(by.plan.tokens_in > 0 and by.answer.tokens_in > 0)
    -- the API key never shows
    assert.not_matches("sk%-test%-secret", out)
    assert.not_matches("sk%-test%-secret", err)
  end)

  it("prints the observation and the answer as tagged text", function()
    local code, out = ask("--db none --plan", "List the modules and summarize them")
    assert.are.equal(0, code)
    assert.matches("<observation>{\"Task 1\":", out, 1, true)
    assert.matches("\n<answer>", out, 1, true)
    assert.matches("</answer>\n", out, 1, true)
  end)

  it("asks once more when the plan cannot be read, quoting the bad line", function()
    local code, out = ask("--json --db none --plan", "Design the api design review process [mock-bad-plan]")
    assert.are.equal(0, code)
    local doc = h.json().decode(out)
    assert.matches("mock%-bad%-line", doc.plan_error)
    assert.is_string(doc.replan_text)
    assert.are.equal("completed", doc.status)
  end)

  it("answers from what passed when a task fails mid-plan, naming the failure", function()
    local code, out = ask("--json --db none --plan", "Audit the release and report on it [mock-fail-task=2]")
    assert.are.equal(1, code)
    local doc = h.json().decode(out)
    local by = {}
    for _, s in ipairs(doc.steps) do by[s.id] = s end
    assert.are.equal("failed", by["2"].status)
    assert.are.equal("passed", by["1"].status)
    assert.are.equal("passed", by.answer.status)
    assert.are.equal("failed", doc.observation["Task 2"].status)
    -- the skipped tasks called no model: their tokens are not unknown
    local skipped = 0
    for _, s in ipairs(doc.steps) do
      if s.status == "skipped" then skipped = skipped + 1; assert.are.equal(0, s.attempts) end
    end
    assert.is_true(skipped > 0)
    assert.is_false(doc.tokens_unknown)
    assert.matches("Task 2", doc.answer)
    assert.matches("fail", doc.answer)
    -- dependents of the failed task were skipped, naming it
    for _, t in ipairs(doc.plan.tasks) do
      for _, d in ipairs(t.deps) do
        if d == "2" then
          assert.are.equal("skipped", by[t.id].status)
          assert.matches("dependency '2' failed", by[t.id].error, 1, true)
        end
      end
    end
  end)

  it("repairs a request that is not valid UTF-8 instead of failing on it", function()
    local code, out, err = ask("--json --db none --no-plan", "Format this list \255\254 now")
    assert.are.equal(0, code, err)
    local doc = h.json().decode(out)
    assert.are.equal("Format this list \u{FFFD}\u{FFFD} now", doc.request)
    assert.are.equal("completed", doc.status)
    assert.is_string(doc.answer)
  end)

  it("answers a simple request with one call under --no-plan", function()
    local code, out = ask("--json --db none --no-plan", "Format this list")
    assert.are.equal(0, code)
    local doc = h.json().decode(out)
    assert.is_false(doc.planned)
    assert.are.equal(1, #doc.steps)
    assert.is_string(doc.answer)
  end)

  it("runs a hand-written plan of llm steps, recording tier, model and tokens", function()
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "Summarize the release notes", tier = "fast" },
      { id = "b", kind = "llm", prompt = "List the risks", deps = { "a" } },
    })
    local code, out = h.cli("run --json --db none " .. plan, { env = env })
    assert.are.equal(0, code)
    local doc = h.json().decode(out)
    local a, b = doc.steps[1], doc.steps[2]
    assert.are.equal("fast", a.llm.tier)
    assert.is_string(b.llm.tier)
    assert.is_true(a.llm.tokens_in > 0 and a.llm.tokens_out > 0)
    assert.is_true(b.started_ms >= a.finished_ms)
    assert.not_matches("sk%-test%-secret", out)
  end)

  it("hands a step to its backup agent when the primary times out", function()
    -- fast has no fallback tier here, so the primary agent's last attempt
    -- ends in a timeout; the mock answers the first 4 calls of this key late
    local conf = h.write('return { tiers = { fast = { provider = "openai" } } }', ".lua")
    local key = "agent-" .. os.time() .. "-" .. math.random(1e6)
    local plan = h.plan({ { id = "find", kind = "llm", tier = "fast", name = "find_users",
      timeout_ms = 300, prompt = "Find the users [mock-fault:fail-first=4;slow=3000;key=" .. key .. "]" } })
    local code, out, err = h.cli("run --json --db none --config " .. conf .. " " .. plan, { env = env })
    assert.are.equal(0, code, err)
    local s = h.json().decode(out).steps[1]
    assert.are.equal("passed", s.status)
    assert.are.equal("project-analyst", s.llm.agent)
    assert.is_true(s.llm.backup_took_over)
    assert.matches("code%-archaeologist timed out; project%-analyst takes over", err)
  end)

  it("fails clearly when no model is reachable", function()
    local code, _, err = h.cli("ask --db none --no-plan 'hello'",
      { env = "OPENAI_BASE_URL=http://127.0.0.1:1/v1" })
    assert.are.equal(1, code)
    assert.matches("answer call failed", err)
    -- a base URL is set: no hint about setting one
    assert.is_nil(err:find("hint:", 1, true), err)
  end)

  it("tells every tier's part when the fallbacks fail too, and hints at the mock when nothing is set", function()
    -- nobody listens on port 1; the fallback tier has no key to send
    local conf = h.write([[
return {
  llm = { max_attempts = 1 },
  tiers = {
    fast = { base_url = "http://127.0.0.1:1/v1", model = "m", api_key = "k", fallback = "far" },
    ["local"] = { base_url = "http://127.0.0.1:1/v1", model = "m", api_key = "k", fallback = "far" },
    strong = { base_url = "http://127.0.0.1:1/v1", model = "m", api_key = "k", fallback = "far" },
    far = { provider = "anthropic", model = "c" },
  },
}]], ".lua")
    local code, _, err = h.cli("ask --db none --no-plan --config " .. conf .. " 'hello'",
      { env = "env -u OPENAI_BASE_URL -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u OPENAI_MODEL" })
    assert.are.equal(1, code, err)
    local msg = err:match("answer call failed: ([^\n]*)")
    assert.is_string(msg, err)
    -- in order: the tier tried and why it was left, then the one skipped
    assert.matches("^tier '%a+': transport error %(Failed to connect to 127%.0%.0%.1 port 1 .-%) " ..
                   "after 1 attempts?; tier 'far' has no API key for https://api%.anthropic%.com: " ..
                   "set ANTHROPIC_API_KEY .-; no fallback tier$", msg)
    local _, n = msg:gsub("Couldn't connect to server", "")
    assert.are.equal(1, n, msg)
    assert.matches("hint: OPENAI_BASE_URL, OPENAI_API_KEY and ANTHROPIC_API_KEY are all unset", err, 1, true)
    assert.matches("orchestrate mock-llm --port 8000 &", err, 1, true)
    assert.matches("OPENAI_BASE_URL=http://127.0.0.1:8000/v1 orchestrate ask", err, 1, true)
  end)
end)
