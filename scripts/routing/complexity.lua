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

local find, byte = string.find, string.byte

local WORD = {}   -- bytes of a word: ASCII letters and digits
for c = 48, 57 do WORD[c] = true end
for c = 65, 90 do WORD[c] = true; WORD[c + 32] = true end

local function field(task, name)
  local v = task[name]
  if v == nil then return "" end
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  error("complexity.classify: task." .. name .. " must be a string, got " .. t, 4)
end

-- The text to search: title .. " " .. instructions, lower-cased.
local function text_of(task)
  if type(task) ~= "table" then
    error("complexity.classify: expected a task table, got " .. type(task), 3)
  end
  local title, instructions = task.title, task.instructions
  if type(title) ~= "string" then title = field(task, "title") end
  if type(instructions) ~= "string" then instructions = field(task, "instructions") end
  return (title .. " " .. instructions):lower()
end

-- A keyword list compiled once: lower-cased, duplicates dropped, phrases
-- turned into patterns that take any white space between their words.
-- Recompiled when the list is edited (checked entry by entry, cheaply).
local compiled_lists = setmetatable({}, { __mode = "k" })
local function compiled(list)
  local c = compiled_lists[list]
  local n = #list
  if c and c.n == n then
    local src, same = c.src, true
    for i = 1, n do
      if src[i] ~= list[i] then same = false; break end
    end
    if same then return c end
  end
  c = { n = n, src = {}, kw = {}, pat = {}, plain = {}, first = {} }
  local seen = {}
  for i = 1, n do
    local kw = list[i]
    if type(kw) ~= "string" or not find(kw, "%S") then
      error("complexity: keyword " .. i .. " must be a non-empty string", 4)
    end
    c.src[i] = kw
    local low = kw:lower():gsub("^%s+", ""):gsub("%s+$", "")
    if not seen[low] then
      seen[low] = true
      local k = #c.pat + 1
      c.kw[k] = kw
      if find(low, "%s") then
        c.pat[k] = low:gsub("%p", "%%%0"):gsub("%s+", "%%s+")
        c.plain[k] = false
        c.first[k] = low:match("^%S+")   -- a cheap plain find before the pattern
      else
        c.pat[k], c.plain[k], c.first[k] = low, true, low
      end
    end
  end
  compiled_lists[list] = c
  return c
end

-- Does keyword i of c occur in s where a word starts? (The callers first
-- try a cheap plain find of c.first[i], the keyword or a phrase's first word.)
local function has(s, c, i)
  local pat, plain, init = c.pat[i], c.plain[i], 1
  while true do
    local a, b = find(s, pat, init, plain)
    if not a then return false end
    if a == 1 or not WORD[byte(s, a - 1)] then
      if PREFIX_MATCH or not WORD[byte(s, b + 1)] then return true end
    end
    init = a + 1
  end
end

-- classify{title=, instructions=} -> "strong" | "fast" | "local"
function M.classify(task)
  local s = text_of(task)
  local c = compiled(M.COMPLEX)
  local first = c.first
  for i = 1, #first do
    if find(s, first[i], 1, true) and has(s, c, i) then return M.TIER_COMPLEX end
  end
  local need, got = M.SIMPLE_NEEDED, 0
  if need <= 0 then return M.TIER_SIMPLE end
  c = compiled(M.SIMPLE)
  first = c.first
  for i = 1, #first do
    if find(s, first[i], 1, true) and has(s, c, i) then
      got = got + 1
      if got >= need then return M.TIER_SIMPLE end
    end
  end
  return M.TIER_DEFAULT
end

-- explain(task) -> {tier=, complex={matched...}, simple={matched...}}
function M.explain(task)
  local s = text_of(task)
  local out = { complex = {}, simple = {} }
  for key, list in pairs({ complex = M.COMPLEX, simple = M.SIMPLE }) do
    local c = compiled(list)
    for i = 1, #c.pat do
      if find(s, c.first[i], 1, true) and has(s, c, i) then out[key][#out[key] + 1] = c.kw[i] end
    end
  end
  out.tier = M.classify(task)
  return out
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
