-- llm steps through the command line, against `orchestrate mock-llm` on
-- loopback: answers passed to dependents, providers, fallback, keys kept
-- out of every output, and the one-variable setup (OPENAI_BASE_URL).
local h = require("helpers")
local cjson = h.json()

local KEY = "sk-spec-SECRET-424242"

-- Starts the mock in the background; returns its base URL and a stop().
local function start_mock()
  local portf = os.tmpname()
  local pidf = os.tmpname()
  os.execute("sh -c " .. h.sh_quote("echo $$ > " .. pidf .. "; exec " .. h.bin ..
             " mock-llm --port 0 > " .. portf .. " 2>&1") .. " &")
  local port
  for _ = 1, 200 do
    local f = io.open(portf)
    local line = f and f:read("l")
    if f then f:close() end
    port = line and line:match("127%.0%.0%.1:(%d+)")
    if port then break end
    os.execute("sleep 0.02")
  end
  local f = io.open(pidf)
  local pid = f and f:read("l")
  if f then f:close() end
  assert(port, "the mock did not start")
  return "http://127.0.0.1:" .. port, function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    os.remove(portf)
    os.remove(pidf)
  end
end

local function config(base, extra)
  return h.write(([[
return {
  llm = { max_attempts = 2, backoff_base_ms = 5, cooldown = { failures = 0 } },
  tiers = {
    ["local"] = { base_url = "%s/v1", model = "mock-echo", api_key = "%s",
                  price_in = 1, price_out = 2 },
    claude = { provider = "anthropic", base_url = "%s", model = "mock-echo",
               api_key = "%s" },
    flaky = { base_url = "%s/v1", model = "mock+fault=500", api_key = "%s",
              fallback = "claude" },
    refused = { base_url = "%s/v1", model = "mock+fault=401", api_key = "%s" },
    dead = { base_url = "http://127.0.0.1:1/v1", model = "m" }, -- nobody on port 1
  },
  %s
}]]):format(base, KEY, base, KEY, base, KEY, base, KEY, extra or ""), ".lua")
end

local function run(plan, conf, env)
  local code, out, err = h.cli("run --json --config " .. conf .. " " .. plan,
                               { env = env })
  local ok, doc = pcall(cjson.decode, out)
  return code, ok and doc or nil, out, err
end

local function step(doc, id)
  for _, s in ipairs(doc.steps) do if s.id == id then return s end end
end

describe("an llm step", function()
  local base, stop
  setup(function() base, stop = start_mock() end)
  teardown(function() stop() end)

  it("sums the calls' tokens and cost for the run, and says what is unknown", function()
    local conf = h.write(([[
return {
  llm = { cooldown = { failures = 0 } },
  tiers = {
    ["local"] = { base_url = "%s/v1", model = "mock-echo", price_in = 1, price_out = 2 },
    claude = { provider = "anthropic", base_url = "%s", model = "mock-echo", api_key = "k",
               price_in = 3, price_out = 4 },
    bare = { base_url = "%s/v1", model = "mock-echo+fault=no-usage", price_in = 1, price_out = 2 },
  },
}]]):format(base, base, base), ".lua")
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "name a colour" },
      { id = "b", kind = "llm", prompt = "name a shape", tier = "claude" },
      { id = "c", kind = "shell", run = "true", deps = { "a", "b" } },
    })
    local code, doc, out, err = run(plan, conf)
    assert.are.equal(0, code, err .. out)
    local a, b = step(doc, "a").llm, step(doc, "b").llm
    assert.is_true(a.tokens_in > 0 and b.tokens_in > 0)
    assert.are.equal(a.tokens_in + b.tokens_in, doc.tokens_in)
    assert.are.equal(a.tokens_out + b.tokens_out, doc.tokens_out)
    assert.is_false(doc.tokens_unknown)
    assert.is_true(a.cost > 0 and b.cost > 0)
    assert.is_true(math.abs(doc.cost - a.cost - b.cost) < 1e-12)
    assert.is_false(doc.cost_unknown)
    -- a server that leaves usage out: unknown, not zero, and said so
    local plan2 = h.plan({
      { id = "a", kind = "llm", prompt = "name a colour" },
      { id = "n", kind = "llm", prompt = "name a shape", tier = "bare" },
    })
    code, doc, out, err = run(plan2, conf)
    assert.are.equal(0, code, err .. out)
    assert.are.equal(cjson.null, step(doc, "n").llm.tokens_in)
    assert.are.equal(cjson.null, step(doc, "n").llm.cost)
    assert.are.equal(step(doc, "a").llm.tokens_in, doc.tokens_in)
    assert.is_true(doc.tokens_unknown)
    assert.is_true(doc.cost_unknown)
    -- the same on the terminal: each call on its step's line, then the sums
    local code2, txt = h.cli("run --db none --config " .. conf .. " " .. plan2)
    assert.are.equal(0, code2, txt)
    assert.matches("^  passed   a%s+[%d.]+ ms  local mock%-echo, %d+%+%d+ tokens, %$[%d.]+\n", txt)
    assert.matches("\n  passed   n%s+[%d.]+ ms  bare mock%-echo%+fault=no%-usage, %?%+%? tokens, %$%?\n", txt)
    assert.matches(("tokens %d in, %d out %%(some unknown%%); cost %%$[%%d.]+ %%(some unknown%%)"):format(
      doc.tokens_in, doc.tokens_out), txt)
    -- a plan without model calls says nothing of tokens
    local _, txt3 = h.cli("run --db none " .. h.plan({ { id = "s", kind = "shell", run = "true" } }))
    assert.is_nil(txt3:find("tokens", 1, true), txt3)
  end)

  it("gets an answer and hands it to the steps that depend on it", function()
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "name a colour" },
      { id = "b", kind = "llm", prompt = "use it", tier = "claude",
        deps = { "a" }, stream = true },
    })
    local code, doc, out, err = run(plan, config(base))
    assert.are.equal(0, code, err .. out)
    local a, b = step(doc, "a"), step(doc, "b")
    assert.are.equal("passed", a.status)
    assert.are.equal("passed", b.status)
    assert.truthy(#a.output > 0)
    assert.truthy(#b.output > 0)
  end)

  it("falls back to the next tier when one keeps failing, as retry.lua says", function()
    -- a scripts dir whose retry policy retries once at once, then falls back
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir .. "/policies")
    local f = assert(io.open(dir .. "/policies/retry.lua", "w"))
    f:write([[
local M = {}
function M.decide(a)
  if a.status >= 400 and a.status < 500 and a.status ~= 429 then
    return { action = "fail", reason = "client error" }
  end
  if a.attempt < 2 then return { action = "retry", delay_ms = 1 } end
  return { action = "fallback", reason = "two strikes" }
end
return M
]])
    f:close()
    local plan = h.plan({ { id = "a", kind = "llm", prompt = "x", tier = "flaky" } })
    local conf = config(base, "scripts_dir = '" .. dir .. "',")
    local code, doc, out, err = run(plan, conf)
    os.execute("rm -rf " .. dir)
    assert.are.equal(0, code, err .. out)
    assert.are.equal("passed", step(doc, "a").status)
    assert.are.equal(3, step(doc, "a").attempts) -- 2 on flaky, 1 on claude
  end)

  it("keeps to the config's max_attempts and backoff with the shipped retry.lua", function()
    -- the config says 2 attempts a tier, 5 ms of backoff: retry.lua's own
    -- numbers (4, 500 ms) are only its defaults
    local plan = h.plan({ { id = "a", kind = "llm", prompt = "x", tier = "flaky" } })
    local t0 = os.time()
    local code, doc, out, err = run(plan, config(base))
    assert.are.equal(0, code, err .. out)
    local a = step(doc, "a")
    assert.are.equal("passed", a.status)
    assert.are.equal(3, a.attempts) -- 2 on flaky, then claude's answer
    assert.is_true(os.time() - t0 < 5)
  end)

  it("says each thing once in a final error, from retry.lua's reason or a cooldown", function()
    local conf = h.write(([[
return {
  llm = { max_attempts = 2, backoff_base_ms = 1,
          cooldown = { failures = 2, window_ms = 10000, cooldown_ms = 30000 } },
  tiers = { strong = { base_url = "%s/v1", model = "m+fault=529", api_key = "k" } },
}]]):format(base), ".lua")
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "x", tier = "strong" },
      { id = "b", kind = "llm", prompt = "x", tier = "strong", deps = { "a" }, always = true },
    })
    local _, doc, out, err = run(plan, conf)
    assert.is_table(doc, err .. out)
    local ea, eb = step(doc, "a").error, step(doc, "b").error
    assert.matches("^tier 'strong': HTTP 529: overloaded_error", ea)
    assert.matches("after 2 attempts; no fallback tier$", ea)
    local _, n = ea:gsub("HTTP 529", "")
    assert.are.equal(1, n, ea)
    assert.matches("^tier 'strong' endpoint in cooldown for %d+ ms; no fallback tier$", eb)
  end)

  it("goes to the tier routing/complexity.lua names when the step names none", function()
    local conf = h.write(([[
return {
  tiers = {
    ["local"] = { base_url = "%s/v1", model = "mock-echo+fault=401" },
    strong = { provider = "anthropic", base_url = "%s", model = "mock-echo" },
  },
}]]):format(base, base), ".lua")
    local plan = h.plan({
      { id = "hard", kind = "llm", prompt = "review the security architecture" },
      { id = "easy", kind = "llm", prompt = "name a colour" },
    })
    local code, doc, out, err = run(plan, conf)
    assert.are_not.equal(0, code)
    assert.are.equal("passed", step(doc, "hard").status, err .. out)
    assert.are.equal("failed", step(doc, "easy").status)
    assert.matches("tier 'local'", step(doc, "easy").error, 1, true)
  end)

  it("fails with the provider's message and never shows the key", function()
    local plan = h.plan({ { id = "a", kind = "llm", prompt = "x", tier = "refused" } })
    local code, doc, out, err = run(plan, config(base))
    assert.are_not.equal(0, code)
    local a = step(doc, "a")
    assert.are.equal("failed", a.status)
    assert.matches("HTTP 401", a.error, 1, true)
    assert.is_nil(out:find("SECRET", 1, true))
    assert.is_nil(err:find("SECRET", 1, true))
  end)

  it("says why a dead endpoint failed once, with the tier and the attempts", function()
    local plan = h.plan({ { id = "a", kind = "llm", prompt = "x", tier = "dead" } })
    local code, doc = run(plan, config(base))
    assert.are_not.equal(0, code)
    local e = step(doc, "a").error
    assert.matches("^tier 'dead': transport error %(Failed to connect to 127%.0%.0%.1 port 1 .-%) " ..
                   "after %d+ attempts; no fallback tier$", e)
    local _, n = e:gsub("Couldn't connect to server", "")
    assert.are.equal(1, n, e)
  end)

  it("sends a dependency's output that is not UTF-8 with U+FFFD, not an empty request", function()
    local plan = h.plan({
      { id = "s", kind = "shell", run = "printf 'bin \\377\\376 data'" },
      { id = "a", kind = "llm", prompt = "summarise", deps = { "s" } },
    })
    local code, doc, out, err = run(plan, config(base))
    assert.are.equal(0, code, err .. out)
    local a = step(doc, "a")
    assert.are.equal("passed", a.status, a.error)
    assert.matches("bin \u{FFFD}\u{FFFD} data", a.output, 1, true)
  end)

  it("shows a model's answer raw in a pipe and with control bytes escaped on a terminal", function()
    local env = "OPENAI_BASE_URL=" .. base .. "/v1 OPENAI_MODEL=mock-echo ANTHROPIC_API_KEY= " ..
                "ANTHROPIC_BASE_URL= OPENAI_API_KEY="
    local req = h.sh_quote("red \27[31mALERT\27[0m")
    local _, piped = h.cli("ask " .. req .. " --no-plan --db none", { env = env })
    assert.matches("<answer>red \27[31mALERT\27[0m</answer>", piped, 1, true)
    -- script(1) runs it on a pseudo-terminal
    local p = io.popen(env .. " script -qec " ..
      h.sh_quote(h.bin .. " ask " .. req .. " --no-plan --db none") .. " /dev/null")
    local tty = p:read("a")
    p:close()
    assert.matches("<answer>red \\x1b[31mALERT\\x1b[0m</answer>", tty, 1, true)
    assert.is_nil(tty:find("\27[31m", 1, true))
  end)

  it("needs nothing but OPENAI_BASE_URL to reach a local server", function()
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "x", tier = "fast" },
      { id = "b", kind = "llm", prompt = "y", tier = "strong" },
    })
    local empty = h.write("return {}", ".lua")
    local env = "OPENAI_BASE_URL=" .. base .. "/v1 OPENAI_MODEL=mock-echo " ..
                "ANTHROPIC_BASE_URL= ANTHROPIC_API_KEY= OPENAI_API_KEY=" .. KEY
    local code, doc, out, err = run(plan, empty, env)
    assert.are.equal(0, code, err .. out)
    assert.are.equal("passed", step(doc, "a").status)
    assert.are.equal("passed", step(doc, "b").status)
    assert.is_nil(out:find("SECRET", 1, true))
  end)

  it("reports tokens, cost and every attempt in --json", function()
    local plan = h.plan({
      { id = "a", kind = "llm", prompt = "one two three" },
      { id = "b", kind = "llm", prompt = "x", tier = "flaky" },
    })
    local code, doc, out, err = run(plan, config(base))
    assert.are.equal(0, code, err .. out)
    local a, b = step(doc, "a").llm, step(doc, "b").llm
    if not a then
      pending("run --json does not show llm results")
      return
    end
    assert.are.equal("local", a.tier)
    assert.is_true(a.tokens_in > 0 and a.tokens_out > 0)
    assert.is_true(a.cost > 0)
    assert.are.equal("ok", a.attempts[1].action)
    assert.are.equal(500, b.attempts[1].status)
    assert.are.equal("claude", b.tier)
    if doc.llm then -- run totals, when the core prints them
      assert.are.equal(2, doc.llm.calls)
      assert.are.equal(#b.attempts + 1, doc.llm.attempts)
    end
    assert.is_nil(out:find("SECRET", 1, true))
  end)

  it("refuses a bad tier setting, naming it", function()
    local plan = h.plan({ { id = "a", kind = "llm", prompt = "x" } })
    local conf = h.write("return { tiers = { fast = { prize_in = 1 } } }", ".lua")
    local code, doc, out, err = run(plan, conf)
    assert.are_not.equal(0, code)
    assert.matches("tiers.fast.prize_in", (doc and cjson.encode(doc) or "") .. out .. err, 1, true)
  end)
end)
