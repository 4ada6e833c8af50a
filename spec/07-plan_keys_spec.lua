-- Plan steps: a key no kind reads is an error naming it (with the key it
-- was probably meant to be), not a setting silently dropped; a byte order
-- mark does not change how a plan is read.
local h = require("helpers")

local function plan_error(steps)
  local code, _, err = h.cli("plan " .. h.plan(steps))
  return code, err
end

describe("a plan step", function()
  it("with a misspelt common key names it and suggests the right one", function()
    local code, err = plan_error({ { id = "a", kind = "shell", run = "true", timeout = 200 } })
    assert.are.equal(65, code)
    assert.matches("step 1 ('a'): unknown key \"timeout\" for kind shell (did you mean \"timeout_ms\"?)", err, 1, true)
  end)

  it("with a misspelt key of its kind suggests the kind's key", function()
    local code, err = plan_error({ { id = "x", kind = "sleep", ms = 1 },
                                   { id = "q", kind = "llm", prompt = "hi", tire = "fast" } })
    assert.are.equal(65, code)
    assert.matches("step 2 ('q'): unknown key \"tire\" for kind llm (did you mean \"tier\"?)", err, 1, true)
  end)

  it("with another tool's word for a key suggests ours, not the nearest spelling", function()
    local cases = {
      { { id = "a", kind = "shell", cmd = "true" }, "cmd", "shell", "command" },
      { { id = "a", kind = "shell", run = "true", depends_on = {} }, "depends_on", "shell", "deps" },
      { { id = "a", kind = "llm", text = "hi" }, "text", "llm", "prompt" },
      { { id = "a", kind = "lua", script = "return 1" }, "script", "lua", "code" },
      { { id = "a", kind = "shell", run = "true", dir = "/tmp" }, "dir", "shell", "cwd" },
    }
    for _, c in ipairs(cases) do
      local code, err = plan_error({ c[1] })
      assert.are.equal(65, code, err)
      assert.matches(("unknown key %q for kind %s (did you mean %q?)"):format(c[2], c[3], c[4]), err, 1, true)
    end
  end)

  it("with an unknown kind suggests the kind it was probably meant to be", function()
    for _, c in ipairs({ { "shel", "shell" }, { "bash", "shell" }, { "prompt", "llm" }, { "wait", "sleep" } }) do
      local code, err = plan_error({ { id = "a", kind = c[1], run = "true" } })
      assert.are.equal(65, code, err)
      assert.matches(("step 'a' has unknown kind '%s' (did you mean '%s'?) (shell, sleep, lua, llm, edit)"):format(
        c[1], c[2]), err, 1, true)
    end
    local code, err = plan_error({ { id = "a", kind = "frobnicate", run = "true" } })
    assert.are.equal(65, code)
    assert.matches("unknown kind 'frobnicate' (shell, sleep, lua, llm, edit)", err, 1, true)
  end)

  it("with a key of another kind lists its own keys", function()
    local code, err = plan_error({ { id = "a", kind = "sleep", ms = 5, code = "return 1" } })
    assert.are.equal(65, code)
    assert.matches("unknown key \"code\" for kind sleep", err, 1, true)
    assert.matches("its keys: ms;", err, 1, true)
  end)

  it("may carry notes under keys that start with _", function()
    local code, out, err = h.cli("plan " .. h.plan({ { id = "a", kind = "sleep", ms = 5, _note = "why" } }))
    assert.are.equal(0, code, err)
    assert.matches("a", out, 1, true)
  end)

  it("in a JSON plan after a UTF-8 byte order mark is read as JSON", function()
    local path = h.write("\239\187\191" .. '{"steps":[{"id":"a","kind":"sleep","ms":1}]}', ".json")
    local code, out, err = h.cli("plan " .. path .. " --json")
    assert.are.equal(0, code, err)
    assert.matches('"a"', out, 1, true)
  end)

  it("file that is a directory says so", function()
    local code, _, err = h.cli("plan " .. h.tmpdir())
    assert.are.equal(65, code)
    assert.matches("is a directory, not a file", err, 1, true)
  end)

  it("with a timeout or cost past 30 days (or infinite) is refused", function()
    for _, k in ipairs({ "timeout_ms", "cost_ms" }) do
      local code, err = plan_error({ { id = "a", kind = "shell", run = "true", [k] = 1e300 } })
      assert.are.equal(65, code)
      assert.matches('"' .. k .. '" must be a number from 0 to 2592000000', err, 1, true)
    end
  end)
end)
