-- The store's migrations: both dialects define the same tables and columns,
-- with the names operators already query; and `orchestrate migrate` applies
-- them once (when the CLI has the subcommand).

local function read(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

local function migrations(dialect)
  local p = io.popen("ls sql/" .. dialect .. "/*.sql 2>/dev/null")
  local files = {}
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  table.sort(files)
  return files
end

-- { table = { column = true, ... }, ... } from CREATE TABLE statements
local function schema(dialect)
  local t = {}
  for _, f in ipairs(migrations(dialect)) do
    local sql = read(f):gsub("%-%-[^\n]*", "")
    for name, body in sql:gmatch("CREATE TABLE IF NOT EXISTS ([%w_]+) (%b())") do
      local cols = {}
      for line in body:sub(2, -2):gmatch("[^\n]+") do
        local col = line:match("^%s*([%a_][%w_]*)%s+%a")
        if col and col ~= "UNIQUE" and col ~= "PRIMARY" then cols[col] = true end
      end
      t[name] = cols
    end
  end
  return t
end

describe("the store's migrations", function()
  it("exist for PostgreSQL and SQLite with the same numbers", function()
    local pg, sq = migrations("pg"), migrations("sqlite")
    assert.is_true(#pg >= 1)
    assert.are.equal(#pg, #sq)
    for i = 1, #pg do
      assert.are.equal(pg[i]:match("[^/]+$"), sq[i]:match("[^/]+$"))
    end
  end)

  it("define the same tables and columns in both dialects", function()
    local pg, sq = schema("pg"), schema("sqlite")
    for name, cols in pairs(pg) do
      assert.is_truthy(sq[name], "sqlite lacks table " .. name)
      for c in pairs(cols) do
        assert.is_truthy(sq[name][c], "sqlite " .. name .. " lacks " .. c)
      end
    end
    for name, cols in pairs(sq) do
      assert.is_truthy(pg[name], "postgresql lacks table " .. name)
      for c in pairs(cols) do
        assert.is_truthy(pg[name][c], "postgresql " .. name .. " lacks " .. c)
      end
    end
  end)

  it("keep the table and column names operators query", function()
    local want = {
      jr_execution_sessions = { "session_id", "task_id", "jr_name", "model_tier",
        "status", "steps", "total_tokens", "created_at", "updated_at" },
      jr_step_rewards = { "id", "task_id", "step_number", "step_type", "target_file",
        "step_content_hash", "execution_result", "implicit_reward", "verified_outcome",
        "retry_decision", "execution_time_ms", "error_detail", "created_at", "updated_at" },
      jr_exploration_log = { "id", "jr_type", "task_type", "novelty_score",
        "curiosity_bonus", "task_outcome", "created_at" },
      magrpo_task_participation = { "id", "task_id", "jr_type", "joined_at",
        "contribution_score", "handoff_from", "handoff_to", "context_preserved_score",
        "created_at" },
      magrpo_cooperation_metrics = { "id", "jr_type", "period_start", "period_end",
        "tasks_participated", "handoffs_sent", "handoffs_received",
        "avg_context_preservation", "cooperation_score", "group_reward_total",
        "created_at" },
    }
    for _, dialect in ipairs({ "pg", "sqlite" }) do
      local s = schema(dialect)
      for name, cols in pairs(want) do
        assert.is_truthy(s[name], dialect .. " lacks " .. name)
        for _, c in ipairs(cols) do
          assert.is_truthy(s[name][c], dialect .. " " .. name .. " lacks " .. c)
        end
      end
      assert.is_truthy(read(migrations(dialect)[1]):find("v_jr_active_sessions", 1, true))
    end
  end)
end)

describe("orchestrate migrate", function()
  local bin = os.getenv("ORCH_BIN")
  local function has_migrate()
    if not bin then return false end
    local p = io.popen(bin .. " migrate --status --db sqlite:/nonexistent-dir/x.db 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    return not out:find("unknown command", 1, true) and not out:find("usage", 1, true)
      and not out:find("not found", 1, true)
  end

  it("applies pending migrations once, then reports them applied", function()
    if not has_migrate() then
      pending("the CLI has no migrate subcommand yet")
      return
    end
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local db = "sqlite:" .. dir .. "/m.db"
    local function run(args)
      local p = io.popen(bin .. " migrate --db " .. db .. " " .. args .. " 2>&1; echo rc=$?")
      local out = p:read("a")
      p:close()
      return out
    end
    local first = run("")
    assert.is_truthy(first:find("rc=0", 1, true), first)
    assert.is_truthy(first:find("001_init", 1, true), first)
    local second = run("")
    assert.is_truthy(second:find("rc=0", 1, true), second)
    assert.is_falsy(second:find("applied now", 1, true), second)
    local status = run("--status")
    assert.is_truthy(status:find("001_init", 1, true), status)
    assert.is_falsy(status:find("pending", 1, true), status)
    os.execute("rm -rf " .. dir)
  end)
end)
