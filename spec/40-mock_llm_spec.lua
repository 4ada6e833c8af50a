-- 40-mock_llm_spec.lua: `orchestrate mock-llm` as a user runs it: it says
-- where it listens, answers both APIs over HTTP (checked with curl),
-- injects the faults it is asked for, and stops cleanly on SIGTERM.
local cjson = require "cjson"

local bin = os.getenv("ORCH_BIN") or "build/orchestrate"

local function sh(cmd)
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  f:close()
  return out
end

local have_curl = sh("command -v curl") ~= ""

-- Starts the mock on a free port; returns {pid, port, proc, errfile} or
-- nil and the first line it printed.
local function start()
  local errfile = os.tmpname()
  local proc = assert(io.popen(("sh -c 'echo $$; exec %s mock-llm --port 0 2>%s'")
    :format(bin, errfile)))
  local pid = proc:read("l")
  local line = proc:read("l") or ""
  local port = line:match("listening on http://127%.0%.0%.1:(%d+)")
  if not port then
    os.execute("kill " .. pid .. " 2>/dev/null")
    proc:close()
    os.remove(errfile)
    return nil, line
  end
  return { pid = pid, port = tonumber(port), proc = proc, errfile = errfile }
end

local function stop(m)
  os.execute("kill -TERM " .. m.pid)
  local ok, how, code = m.proc:close()
  local f = io.open(m.errfile)
  local err = f and f:read("a") or ""
  if f then f:close() end
  os.remove(m.errfile)
  return ok, how, code, err
end

-- POSTs a body; returns status, body.
local function post(m, path, body, headers)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(cjson.encode(body))
  f:close()
  local h = ""
  for _, v in ipairs(headers or {}) do h = h .. " -H '" .. v .. "'" end
  local out = sh(("curl -s -m 10 -w '\\n%%{http_code}' -H 'Content-Type: application/json'%s --data-binary @%s http://127.0.0.1:%d%s")
    :format(h, tmp, m.port, path))
  os.remove(tmp)
  local text, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), text
end

describe("orchestrate mock-llm", function()
  local m, first

  setup(function()
    if have_curl then m, first = start() end
  end)

  teardown(function()
    if m then stop(m) end
  end)

  local function need()
    if not have_curl then pending("curl is not installed") return false end
    if not m then pending("mock-llm is not wired into the CLI yet: " .. tostring(first)) return false end
    return true
  end

  it("prints the address it listens on and answers /health", function()
    if not need() then return end
    assert.is_true(m.port > 0)
    assert.are.equal("ok", sh(("curl -s http://127.0.0.1:%d/health"):format(m.port)))
  end)

  it("answers an OpenAI chat completion deterministically", function()
    if not need() then return end
    local status, body = post(m, "/v1/chat/completions",
      { model = "gpt-x", messages = { { role = "user", content = "hello mock" } } })
    assert.are.equal(200, status)
    local j = cjson.decode(body)
    assert.are.equal("Result for: hello mock", j.choices[1].message.content)
    assert.are.equal(2, j.usage.prompt_tokens)
  end)

  it("answers an Anthropic message with a plan when asked for one", function()
    if not need() then return end
    local status, body = post(m, "/v1/messages",
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
    local status, body = post(m, "/v1/chat/completions", { model = "m", messages = msg },
      { "X-Mock-Fault: 429-quota" })
    assert.are.equal(429, status)
    assert.matches("insufficient_quota", body, 1, true)
    status = post(m, "/v1/chat/completions", { model = "gpt-x+fault=503", messages = msg })
    assert.are.equal(503, status)
  end)

  it("stops cleanly on SIGTERM", function()
    if not need() then return end
    local ok, how, code = stop(m)
    m = nil
    assert.is_true(ok)
    assert.are.equal("exit", how)
    assert.are.equal(0, code)
  end)
end)
