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
local type, error, tostring = type, error, tostring   -- locals: fast in a sandbox

-- Under orchestrate, orch.keywords (C, runtime/keywords.c) does the
-- matching in one pass over the text; a plain lua5.4 uses the Lua below,
-- which matches the same way (selftest compares the two on every load).
local native = type(orch) == "table" and orch.keywords or nil

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

-- The task's title and instructions, as strings.
local function texts(task)
  if type(task) ~= "table" then
    error("complexity.classify: expected a task table, got " .. type(task), 3)
  end
  local title, instructions = task.title, task.instructions
  if type(title) ~= "string" then title = field(task, "title") end
  if type(instructions) ~= "string" then instructions = field(task, "instructions") end
  return title, instructions
end

-- The text to search: title .. " " .. instructions, lower-cased.
local function text_of(task)
  local title, instructions = texts(task)
  return (title .. " " .. instructions):lower()
end

-- The engine's matcher for a list, made on first use; it follows edits to
-- the list by itself.
local matchers = setmetatable({}, { __mode = "k" })
local function matcher(list)
  local m = matchers[list]
  if not m then
    m = native(list, { whole = not PREFIX_MATCH, name = "complexity" })
    matchers[list] = m
  end
  return m
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

-- The same decision by the engine's matcher: the hot path of routing, so
-- one type() and the matcher's calls, nothing else (a text of a wrong type
-- comes back as nil, and texts() then raises the documented error).
local function classify_native(task)
  if type(task) ~= "table" then texts(task) end
  local title, instructions = task.title, task.instructions
  local list = M.COMPLEX
  local m = matchers[list] or matcher(list)
  local n = m.count(1, title, instructions)
  if not n then texts(task) end
  if n > 0 then return M.TIER_COMPLEX end
  local need = M.SIMPLE_NEEDED
  if need <= 0 then return M.TIER_SIMPLE end
  list = M.SIMPLE
  m = matchers[list] or matcher(list)
  if m.count(need, title, instructions) >= need then return M.TIER_SIMPLE end
  return M.TIER_DEFAULT
end

-- The decision in plain Lua.
local function classify_lua(task)
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

-- classify{title=, instructions=} -> "strong" | "fast" | "local"
M.classify = native and classify_native or classify_lua

-- explain(task) -> {tier=, complex={matched...}, simple={matched...}}
function M.explain(task)
  if native then
    local title, instructions = texts(task)
    return { tier = M.classify(task),
             complex = matcher(M.COMPLEX).matched(title, instructions),
             simple = matcher(M.SIMPLE).matched(title, instructions) }
  end
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
  if native then   -- the engine's matcher decides as the Lua one does
    local words = { "x", "the", "-", ".", "\t", "  " }
    for _, list in ipairs({ M.COMPLEX, M.SIMPLE }) do
      for _, kw in ipairs(list) do
        words[#words + 1] = kw
        words[#words + 1] = kw:upper() .. "ing"
        words[#words + 1] = "x" .. kw
      end
    end
    local seed = 7
    for n = 1, 200 do
      local parts = {}
      for j = 1, n % 7 + 1 do
        seed = (seed * 1103515245 + 12345) % 2147483648
        parts[j] = words[seed % #words + 1]
      end
      local task = { title = table.concat(parts, " ", 1, #parts // 2),
                     instructions = table.concat(parts, n % 2 == 0 and " " or "\n", #parts // 2 + 1) }
      local a, b = classify_native(task), classify_lua(task)
      if a ~= b then
        error(("complexity selftest: orch.keywords says %s, the Lua matcher %s, for %q / %q")
              :format(a, b, task.title, task.instructions))
      end
    end
  end
  return true
end

return M
