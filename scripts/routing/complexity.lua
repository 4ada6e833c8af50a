-- routing/complexity.lua: which model tier a task goes to, from keywords.
-- Text = title .. " " .. instructions, lower-cased. Any COMPLEX keyword ->
-- "strong"; else SIMPLE_NEEDED or more distinct SIMPLE keywords -> "fast";
-- else "local". Which provider/model a tier means lives in the config.

local COMPLEX = { "architect", "security", "refactor", "multi-file",
                  "database schema", "api design", "critical" }
local SIMPLE = { "format", "summarize", "list", "simple", "quick", "lookup",
                 "convert", "basic", "template" }
local SIMPLE_NEEDED = 2        -- distinct simple keywords needed for "fast"
local TIER_COMPLEX, TIER_SIMPLE, TIER_DEFAULT = "strong", "fast", "local"
-- A keyword matches where a word starts ("format" matches "formatting",
-- not "information"); set false to require whole words only.
local PREFIX_MATCH = true

local M = {
  COMPLEX = COMPLEX, SIMPLE = SIMPLE, SIMPLE_NEEDED = SIMPLE_NEEDED,
  TIER_COMPLEX = TIER_COMPLEX, TIER_SIMPLE = TIER_SIMPLE,
  TIER_DEFAULT = TIER_DEFAULT,
}

local function field(task, name)
  local v = task[name]
  if v == nil then return "" end
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  error("complexity.classify: task." .. name .. " must be a string, got " .. t, 3)
end

-- The normalised text: lower-cased, every run of white space one blank,
-- with a blank at each end so word boundaries are simple to test.
local function text_of(task)
  if type(task) ~= "table" then
    error("complexity.classify: expected a task table, got " .. type(task), 3)
  end
  local s = field(task, "title") .. " " .. field(task, "instructions")
  return " " .. s:lower():gsub("%s+", " ") .. " "
end

-- Does kw (lower-case, may hold blanks and '-') occur at a word start?
local function has(text, kw)
  local init = 1
  while true do
    local a, b = text:find(kw, init, true)
    if not a then return false end
    local before = text:sub(a - 1, a - 1)
    local after = text:sub(b + 1, b + 1)
    if not before:find("[%w]") and (PREFIX_MATCH or not after:find("[%w]")) then
      return true
    end
    init = a + 1
  end
end

local function matches(text, list)
  local found = {}
  for _, kw in ipairs(list) do
    if has(text, kw:lower()) then found[#found + 1] = kw end
  end
  return found
end

-- explain(task) -> {tier=, complex={matched...}, simple={matched...}}
function M.explain(task)
  local text = text_of(task)
  local complex = matches(text, M.COMPLEX)
  local simple = matches(text, M.SIMPLE)
  local tier
  if #complex > 0 then tier = M.TIER_COMPLEX
  elseif #simple >= M.SIMPLE_NEEDED then tier = M.TIER_SIMPLE
  else tier = M.TIER_DEFAULT end
  return { tier = tier, complex = complex, simple = simple }
end

-- classify{title=, instructions=} -> "strong" | "fast" | "local"
function M.classify(task)
  return M.explain(task).tier
end

-- Checks the mechanism with whatever lists are configured above, so an
-- operator's new keyword never fails the check; the documented default
-- cases are in spec/10-routing_spec.lua.
function M.selftest()
  local function expect(task, want, what)
    local got = M.classify(task)
    if got ~= want then
      error(("complexity selftest: %s: expected %s, got %s"):format(what, want, got))
    end
  end
  for _, kw in ipairs(M.COMPLEX) do
    expect({ title = "Please " .. kw:upper() .. "." }, M.TIER_COMPLEX, kw)
    expect({ instructions = kw:gsub(" ", "\n  ") }, M.TIER_COMPLEX, kw .. " across lines")
  end
  if #M.SIMPLE >= M.SIMPLE_NEEDED then
    local words = {}
    for i = 1, M.SIMPLE_NEEDED do words[i] = M.SIMPLE[i] end
    expect({ title = table.concat(words, " ", 1, M.SIMPLE_NEEDED - 1),
             instructions = words[M.SIMPLE_NEEDED] }, M.TIER_SIMPLE, "simple words")
  end
  if M.SIMPLE_NEEDED > 1 and M.SIMPLE[1] then
    expect({ title = M.SIMPLE[1] }, M.TIER_DEFAULT, "one simple word")
    expect({ title = "x" .. M.SIMPLE[1] }, M.TIER_DEFAULT, "keyword inside a word")
  end
  expect({}, M.TIER_DEFAULT, "empty task")
  return true
end

return M
