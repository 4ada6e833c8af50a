-- routing/agents.lua: which agent takes a task, by the task name's prefix
-- (find_users -> find), with the backup that takes over when the primary
-- times out or fails, the task's phase, and how many steps of a phase run
-- at once. Data first; an operator edits the tables below.

local DEFAULT = { primary = "general-purpose", backup = "general-purpose",
                  phase = "implementation" }
local PATTERNS = {  -- prefix of the task name -> agents and phase
  find      = { "code-archaeologist",       "project-analyst",         "discovery" },
  analyze   = { "code-archaeologist",       "performance-optimizer",   "discovery" },
  audit     = { "test-automator",           "code-reviewer",           "discovery" },
  create    = { "backend-developer",        "python-pro",              "implementation" },
  fix       = { "backend-developer",        "debugger",                "implementation" },
  connect   = { "integration-engineer",     "backend-developer",       "implementation" },
  implement = { "backend-developer",        "ml-engineer",             "implementation" },
  optimize  = { "performance-optimizer",    "database-administrator",  "implementation" },
  document  = { "documentation-specialist", "technical-writer",        "implementation" },
  test      = { "test-automator",           "qa-expert",               "validation" },
  review    = { "code-reviewer",            "security-auditor",        "validation" },
}
local PARALLEL = { discovery = 5, implementation = 4, validation = 1,
                   emergency = math.huge }  -- math.huge: no limit
-- What may follow the prefix: end of name or one of these separators.
local SEPARATORS = "[_%-%s%.:/]"

local M = { DEFAULT = DEFAULT, PATTERNS = PATTERNS, PARALLEL = PARALLEL }

local function name_of(task)
  local t = type(task)
  if t == "string" then return task end
  if t ~= "table" then
    error("agents.route: expected a task table, got " .. t, 3)
  end
  local n = task.name
  if n == nil then return "" end
  if type(n) ~= "string" then
    error("agents.route: task.name must be a string, got " .. type(n), 3)
  end
  return n
end

-- route{name=} -> {primary=, backup=, phase=, pattern=} (pattern: "find_*",
-- or "default" when no prefix matched). A bare string is taken as the name.
function M.route(task)
  local name = name_of(task):lower():gsub("^%s+", "")
  local best, best_len = nil, 0
  for prefix, row in pairs(M.PATTERNS) do
    local n = #prefix
    if n > best_len and name:sub(1, n) == prefix then
      local after = name:sub(n + 1, n + 1)
      if after == "" or after:find(SEPARATORS) then best, best_len = prefix, n end
    end
  end
  if not best then
    local d = M.DEFAULT
    return { primary = d.primary, backup = d.backup, phase = d.phase,
             pattern = "default" }
  end
  local row = M.PATTERNS[best]
  return { primary = row[1], backup = row[2], phase = row[3],
           pattern = best .. "_*" }
end

-- parallel_limit(phase) -> number (math.huge = unlimited), or nil, message
-- for a phase the table does not know (the core then keeps its own limit).
function M.parallel_limit(phase)
  if type(phase) ~= "string" then
    error("agents.parallel_limit: phase must be a string, got " .. type(phase), 2)
  end
  local n = M.PARALLEL[phase:lower()]
  if n == nil then return nil, "unknown phase '" .. phase .. "'" end
  return n
end

-- Checks the mechanism against the tables above (so editing them never
-- fails it); the documented defaults are checked in spec/10-routing_spec.lua.
function M.selftest()
  local function check(name, p, b, ph)
    local r = M.route({ name = name })
    if r.primary ~= p or r.backup ~= b or r.phase ~= ph then
      error(("agents selftest %q: expected %s/%s/%s, got %s/%s/%s"):format(
        name, p, b, ph, tostring(r.primary), tostring(r.backup), tostring(r.phase)))
    end
  end
  for prefix, row in pairs(M.PATTERNS) do
    if type(row[1]) ~= "string" or type(row[2]) ~= "string" then
      error("agents selftest: pattern " .. prefix .. " needs a primary and a backup")
    end
    if M.PARALLEL[row[3]] == nil then
      error("agents selftest: pattern " .. prefix .. " has unknown phase " .. tostring(row[3]))
    end
    check(prefix .. "_thing", row[1], row[2], row[3])
    check(prefix:upper() .. "-thing", row[1], row[2], row[3])
    check(prefix, row[1], row[2], row[3])
  end
  local d = M.DEFAULT
  check("zzz_unknown", d.primary, d.backup, d.phase)
  check("", d.primary, d.backup, d.phase)
  for phase, n in pairs(M.PARALLEL) do
    if type(n) ~= "number" or not (n >= 1) then
      error("agents selftest: parallel limit of " .. phase .. " must be a number >= 1")
    end
    if M.parallel_limit(phase) ~= n then
      error("agents selftest: parallel_limit(" .. phase .. ") ~= " .. tostring(n))
    end
  end
  if M.parallel_limit("no such phase") ~= nil then
    error("agents selftest: an unknown phase must give nil")
  end
  return true
end

return M
