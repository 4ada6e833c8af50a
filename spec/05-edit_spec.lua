-- Edit steps: SEARCH/REPLACE blocks applied atomically, all or none.
local h = require("helpers")

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function blocks(pairs_)
  local out = {}
  for _, p in ipairs(pairs_) do
    out[#out + 1] = "<<<<<<< SEARCH\n" .. p[1] .. "=======\n" .. p[2] .. ">>>>>>> REPLACE\n"
  end
  return table.concat(out)
end

local function run_edit(file, b, extra)
  local steps = { { id = "e", kind = "edit", file = file, blocks = b } }
  for _, s in ipairs(extra or {}) do steps[#steps + 1] = s end
  local code, out = h.cli("run --json --db none " .. h.plan(steps))
  local doc = h.json().decode(out)
  local by = {}
  for _, s in ipairs(doc.steps) do by[s.id] = s end
  return code, by
end

local original = "local a = 1\nlocal b = 2\nreturn a + b\n"

describe("an edit step", function()
  local file
  before_each(function() file = h.write(original, ".lua") end)

  it("applies one block and keeps a backup", function()
    local code, by = run_edit(file, blocks({ { "local b = 2\n", "local b = 40\n" } }))
    assert.are.equal(0, code)
    assert.are.equal("passed", by.e.status)
    assert.are.equal("local a = 1\nlocal b = 40\nreturn a + b\n", read(file))
    assert.are.equal(original, read(file .. ".orig"))
  end)

  it("keeps the text before the first edit as the backup when two steps edit the file", function()
    local code, by = run_edit(file, blocks({ { "local b = 2\n", "local b = 40\n" } }), {
      { id = "e2", kind = "edit", file = file, deps = { "e" },
        blocks = blocks({ { "local a = 1\n", "local a = 9\n" } }) },
    })
    assert.are.equal(0, code)
    assert.are.equal("passed", by.e2.status)
    assert.are.equal("local a = 9\nlocal b = 40\nreturn a + b\n", read(file))
    assert.are.equal(original, read(file .. ".orig"))
  end)

  it("applies several blocks in order", function()
    local code = run_edit(file, blocks({
      { "local a = 1\n", "local a = 10\n" },
      { "return a + b\n", "return a * b\n" },
    }))
    assert.are.equal(0, code)
    assert.are.equal("local a = 10\nlocal b = 2\nreturn a * b\n", read(file))
  end)

  it("fails when the search text is not found, leaving the file unchanged", function()
    local code, by = run_edit(file, blocks({
      { "local a = 1\n", "local a = 10\n" },
      { "local zzz = 9\n", "x\n" },
    }))
    assert.are.equal(1, code)
    assert.matches("block 2 of 2: search text not found", by.e.error, 1, true)
    assert.are.equal(original, read(file))
    assert.is_nil(read(file .. ".orig"))
  end)

  it("fails when the search text is found twice, leaving the file unchanged", function()
    local twice = "x = 1\nx = 1\n"
    local f2 = h.write(twice, ".txt")
    local code, by = run_edit(f2, blocks({ { "x = 1\n", "x = 2\n" } }))
    assert.are.equal(1, code)
    assert.matches("found more than once", by.e.error, 1, true)
    assert.are.equal(twice, read(f2))
  end)

  it("fails clearly when the file is missing", function()
    local code, by = run_edit("/nonexistent/dir/file.lua", blocks({ { "a\n", "b\n" } }))
    assert.are.equal(1, code)
    assert.matches("/nonexistent/dir/file.lua: No such file", by.e.error, 1, true)
  end)

  it("with no blocks is refused when the plan is read", function()
    local code, _, err = h.cli("plan " .. h.plan({ { id = "e", kind = "edit", file = file, blocks = "just text" } }))
    assert.are.equal(65, code)
    assert.matches("no SEARCH/REPLACE blocks", err, 1, true)
  end)

  it("keeps the file's mode", function()
    os.execute("chmod 750 " .. file)
    run_edit(file, blocks({ { "local b = 2\n", "local b = 3\n" } }))
    local p = io.popen("stat -c %a " .. file)
    local mode = p:read("l")
    p:close()
    assert.are.equal("750", mode)
  end)
end)

describe("two steps that edit the same file", function()
  it("never run at the same time, though the plan lets them", function()
    local file = h.write("one\ntwo\nthree\n", ".txt")
    local log = os.tmpname()
    local steps = {
      { id = "e1", kind = "edit", file = file, blocks = "<<<<<<< SEARCH\none\n=======\nONE\n>>>>>>> REPLACE\n" },
      { id = "e2", kind = "edit", file = file, blocks = "<<<<<<< SEARCH\ntwo\n=======\nTWO\n>>>>>>> REPLACE\n" },
      { id = "w1", kind = "shell", writes = { file }, run = "echo start >> " .. log .. "; sleep 0.2; echo end >> " .. log },
      { id = "w2", kind = "shell", writes = { file }, run = "echo start >> " .. log .. "; sleep 0.2; echo end >> " .. log },
      { id = "free", kind = "shell", run = "sleep 0.2" },
    }
    local code, out = h.cli("run --json --db none " .. h.plan(steps))
    assert.are.equal(0, code, out)
    local doc = h.json().decode(out)
    local by = {}
    for _, s in ipairs(doc.steps) do by[s.id] = s end
    local f = io.open(file)
    assert.are.equal("ONE\nTWO\nthree\n", f:read("a"))
    f:close()
    -- the writers of one file never overlap in time
    local writers = { by.e1, by.e2, by.w1, by.w2 }
    for i = 1, #writers do
      for j = i + 1, #writers do
        local a, b = writers[i], writers[j]
        assert.is_true(a.finished_ms <= b.started_ms or b.finished_ms <= a.started_ms,
          a.id .. " and " .. b.id .. " overlapped")
      end
    end
    local lf = io.open(log)
    assert.are.equal("start\nend\nstart\nend\n", lf:read("a"))
    lf:close()
    -- an unrelated step was not held back
    assert.is_true(by.free.started_ms < 100)
  end)
end)

describe("a step marked always", function()
  it("runs after its dependencies end, even when one failed", function()
    local code, out = h.cli("run --json --db none " .. h.plan({
      { id = "ok", kind = "shell", run = "echo fine" },
      { id = "bad", kind = "shell", run = "exit 1" },
      { id = "mid", kind = "shell", run = "true", deps = { "bad" } },
      { id = "sum", kind = "shell", run = "echo summary", deps = { "ok", "mid" }, always = true },
    }))
    assert.are.equal(1, code)
    local by = {}
    for _, s in ipairs(h.json().decode(out).steps) do by[s.id] = s end
    assert.are.equal("skipped", by.mid.status)
    assert.are.equal("passed", by.sum.status)
    assert.are.equal("summary\n", by.sum.output)
  end)
end)
