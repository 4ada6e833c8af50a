-- 40-mock_llm_spec.lua: `orchestrate mock-llm` as a user runs it: it says
-- where it listens, answers both APIs over HTTP (checked with curl),
-- injects the faults it is asked for, and stops cleanly on SIGTERM.
local cjson = require "cjson"
local H = require "mock_llm_helper"

describe("orchestrate mock-llm", function()
  local m, first

  setup(function()
    if H.have_curl then m, first = H.start() end
  end)

  teardown(function()
    if m then H.stop(m) end
  end)

  local function need()
    if not H.have_curl then pending("curl is not installed") return false end
    if not m then pending("mock-llm did not start: " .. tostring(first)) return false end
    return true
  end

  it("prints the address it listens on and answers /health", function()
    if not need() then return end
    assert.is_true(m.port > 0)
    assert.are.equal("ok", H.sh((H.curl .. " -s -m 10 http://127.0.0.1:%d/health"):format(m.port)))
  end)

  it("answers an OpenAI chat completion deterministically", function()
    if not need() then return end
    local status, body = H.post(m, "/v1/chat/completions",
      { model = "gpt-x", messages = { { role = "user", content = "hello mock" } } })
    assert.are.equal(200, status)
    local j = cjson.decode(body)
    assert.are.equal("Result for: hello mock", j.choices[1].message.content)
    assert.are.equal(2, j.usage.prompt_tokens)
  end)

  it("answers an Anthropic message with a plan when asked for one", function()
    if not need() then return end
    local status, body = H.post(m, "/v1/messages",
      { model = "claude-x", max_tokens = 1000, messages = { { role = "user",
        content = "Write a <plan>.\nRequest: Compare two databases" } } },
      { "anthropic-version: 2023-06-01", "x-api-key: test" })
    assert.are.equal(200, status)
    local text = cjson.decode(body).content[1].text
    assert.matches("<plan>", text, 1, true)
    assert.matches("Task 1: Gather background on Compare two databases | Dependencies: none", text, 1, true)
    assert.matches("| Dependencies: Task 1, Task 2", text, 1, true)
  end)

  it("injects the fault named in the header or the model", function()
    if not need() then return end
    local msg = { { role = "user", content = "hi" } }
    local status, body = H.post(m, "/v1/chat/completions", { model = "m", messages = msg },
      { "X-Mock-Fault: 429-quota" })
    assert.are.equal(429, status)
    assert.matches("insufficient_quota", body, 1, true)
    status = H.post(m, "/v1/chat/completions", { model = "gpt-x+fault=503", messages = msg })
    assert.are.equal(503, status)
  end)

  it("stops cleanly on SIGTERM", function()
    if not need() then return end
    local ok, how, code = H.stop(m)
    m = nil
    assert.is_true(ok)
    assert.are.equal("exit", how)
    assert.are.equal(0, code)
  end)
end)
