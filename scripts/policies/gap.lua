-- policies/gap.lua: Graph-based Agent Planning. Renders the planning prompt,
-- parses the model's <plan> (both GAP dialects) into tasks with dependencies,
-- decides whether a request is planned at all, and renders the per-task and
-- synthesis prompts. Uses routing.complexity for the plan-or-not default.

local PLAN_WORDS = 60          -- a request longer than this many words is planned
local PLAN_TIERS = { strong = true }   -- complexity tiers that are always planned
local MIN_LIST_ITEMS = 2       -- a request listing this many items is planned
local MULTIPART = { "and then", ", then", "after that", "afterwards",
                    "followed by", "once that is done", "then finally",
                    "step by step" }  -- multi-part asks: planned
local MAX_TASKS = 500          -- a plan with more tasks is refused
local MAX_RESULT_BYTES = 8000  -- a result is cut to this size inside a prompt
local MAX_QUOTE = 120          -- error messages quote at most this much of a line
local MAX_LINE = 4096          -- a longer task line is refused

local PLAN_PROMPT = [[
You are the planner of a team of AI agents. Break the request below into a
plan: a dependency graph of small tasks that agents carry out, every
independent task at the same time.

First think briefly inside <think></think>, in under 100 words.
Then write the plan inside <plan></plan>, one task per line, exactly like this:
<plan>
Task 1: <what to do> | Dependencies: none
Task 2: <what to do> | Dependencies: none
Task 3: <what to do> | Dependencies: Task 1, Task 2
</plan>

Rules:
- Each task is atomic: one tool call or one analysis.
- Make tasks independent wherever you can, so that they run in parallel; a
  task depends only on the tasks whose results it needs.
- List dependencies by task id, or write "none".
- Number the tasks 1, 2, 3, ... and write nothing but task lines in <plan>.

Request:
{request}
]]

local REASK = [[

Your previous answer could not be read as a plan: {error}
Write it again: <think>...</think>, then <plan>...</plan> with one line per
task, exactly in the form shown above.
]]

local TASK_PROMPT = [[
You are one agent of a team working on this request:
{request}

Your task (Task {id}): {description}
{context}
Do this task only. Reply with its result alone, complete and concise: the
results of all tasks are combined into the final answer afterwards.
]]

local SYNTHESIS_PROMPT = [[
You are writing the final answer to this request:
{request}

A team of agents worked on it in these tasks; their results are the
observation:

<observation>
{results}
</observation>
{failures}Write the final answer to the request from these results, inside
<answer></answer>. Answer the request directly; do not describe the tasks.
]]

local FAILURES = [[
Not every task succeeded: {names}. Say in the answer what is missing because
of that, answer as well as the other results allow, and do not invent what
the failed tasks would have found.

]]

local complexity = require "routing.complexity"

local M = {
  PLAN_WORDS = PLAN_WORDS, PLAN_TIERS = PLAN_TIERS,
  MIN_LIST_ITEMS = MIN_LIST_ITEMS, MULTIPART = MULTIPART,
  MAX_TASKS = MAX_TASKS, MAX_RESULT_BYTES = MAX_RESULT_BYTES,
  PLAN_PROMPT = PLAN_PROMPT, REASK = REASK, TASK_PROMPT = TASK_PROMPT,
  SYNTHESIS_PROMPT = SYNTHESIS_PROMPT, FAILURES = FAILURES,
}

---------------------------------------------------------------- helpers

-- Strips a trailing run of characters of class cls ("%s", "%s|;"), in
-- linear time (a "[cls]+$" pattern is quadratic on a long run).
local function rstrip(s, cls)
  local last = s:find("[^" .. cls .. "][" .. cls .. "]*$")
  if not last then return "" end
  return s:sub(1, last)
end

local function trim(s)
  local first = s:find("%S")
  if not first then return "" end
  return rstrip(s:sub(first), "%s")
end

-- Fills {name} placeholders from vars in one pass (values are not rescanned).
local function fill(template, vars)
  return (template:gsub("{(%a+)}", function(k)
    local v = vars[k]
    if v == nil then return nil end
    return tostring(v)
  end))
end

-- Cuts s to at most max bytes on a UTF-8 character boundary.
local function cut(s, max)
  if #s <= max then return s end
  local n = max
  while n > 0 and ((s:byte(n + 1) or 0) & 0xC0) == 0x80 do n = n - 1 end
  return s:sub(1, n) .. ("\n[... %d more bytes cut]"):format(#s - n)
end

local function quote(line)
  line = trim(line)
  if #line > MAX_QUOTE then line = cut(line, MAX_QUOTE):gsub("\n.*", "") .. "..." end
  return '"' .. line .. '"'
end

local function str_arg(v, fname, what)
  if type(v) ~= "string" then
    error(("gap.%s: %s must be a string, got %s"):format(fname, what, type(v)), 3)
  end
  return v
end

---------------------------------------------------------------- the parser

-- Blanks every byte of s but newlines, so offsets and line numbers hold.
local function blank(s) return (s:gsub("[^\n]", " ")) end

local function mask(text, a, b)
  if b < a then return text end
  return text:sub(1, a - 1) .. blank(text:sub(a, b)) .. text:sub(b + 1)
end

-- "007" -> "7"
local function norm_id(digits) return (digits:gsub("^0+(%d)", "%1")) end

-- Drops single emphasis marks around words ("*Deps*:", "_Dependencies_",
-- "(*depends on Task 1*)"): the marks must not touch a letter, digit or
-- mark outside ("find_user_ids" and "2*3*4" stay) and the emphasised text
-- must start and end with a non-blank ("* Task 1 *" stays). Linear: a try
-- at one mark never looks past the next mark.
local function unemphasize(line)
  if not line:find("[%*_]") then return line end
  local out, from, i = {}, 1, 1
  while true do
    local a = line:find("[%*_]", i)
    if not a then break end
    local inner, b = line:match("^[%*_]([^%s%*_][^%*_\n]-)" .. "%" .. line:sub(a, a) .. "()", a)
    if inner and not inner:find("%s$") and not line:sub(a - 1, a - 1):find("[%w_%*]")
       and not line:sub(b, b):find("[%w_%*]") then
      out[#out + 1] = line:sub(from, a - 1)
      out[#out + 1] = inner
      from, i = b, b
    else
      i = a + 1
    end
  end
  out[#out + 1] = line:sub(from)
  return table.concat(out)
end

-- Strips list markers, emphasis and code marks; maps unicode dashes.
local function clean(line)
  line = line:gsub("\u{2014}", "-"):gsub("\u{2013}", "-"):gsub("\u{2212}", "-")
  line = trim(line:gsub("%*%*", ""))
  if line:find("^`[^`]*`$") or line:find("^__.*__$") then  -- `Task 1: ...`
    line = trim(line:sub(2, -2):gsub("^_", ""):gsub("_$", ""))
  end
  line = unemphasize(line)
  while true do
    local before = line
    line = line:gsub("^[%-%*%+>]+%s*", "")
    line = line:gsub("^\u{2022}%s*", ""):gsub("^\u{00B7}%s*", "")
    line = line:gsub("^%d+[%.%)]%s+", ""):gsub("^%(%d+%)%s*", "")
    line = line:gsub("^#+%s*", ""):gsub("^%[[ xX]?%]%s*", "")
    if line == before then break end
  end
  return line
end

local NONE = { [""] = true, ["-"] = true, none = true, ["n/a"] = true,
               na = true, ["nil"] = true, null = true, no = true,
               nothing = true, independent = true, ["--"] = true }
local FILLER = { task = true, tasks = true, step = true, steps = true,
                 ["and"] = true, ["+"] = true, on = true, after = true }
local MAX_RANGE = 1000

-- Reads a dependency list ("Task 1, Task 2", "1, 2", "T1 and T2", "none",
-- "Tasks 1-3") -> {ids...} or nil, the token it could not read.
local function parse_deps(s)
  s = rstrip(trim(s:lower()), "%.;,")
  if NONE[s] or s:find("^none%f[%A]") or s:find("^no dependenc")
     or s:find("^n/a%f[%A]") then
    return {}
  end
  -- A note in parentheses after the ids ("Task 1 (the user list)") is
  -- dropped; brackets around the ids themselves ("(Task 1, Task 2)") are not.
  local outside = s:gsub("%b()", " ")
  if outside:find("%d") then s = outside end
  s = s:gsub("[%[%]%(%){}\"']", " ")
  if NONE[trim(s)] then return {} end
  local ids, seen = {}, {}
  local function add(id)
    id = norm_id(id)
    if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
  end
  for tok in s:gmatch("[^,;&/|%s]+") do
    if not FILLER[tok] then
      local id = tok:match("^t(%d+)$") or tok:match("^#?(%d+)$")
              or tok:match("^task[#%-_]?(%d+)$") or tok:match("^step[#%-_]?(%d+)$")
      if id then
        add(id)
      else
        local a, b = tok:match("^t?(%d+)%-t?(%d+)$")
        local na, nb = tonumber(a), tonumber(b)
        if not (na and nb and na <= nb and nb - na <= MAX_RANGE) then
          return nil, tok
        end
        for i = na, nb do add(tostring(i)) end
      end
    end
  end
  if #ids == 0 then return nil, trim(s) end
  return ids
end

-- Labels that introduce dependencies on a task line. A strong label counts
-- when a colon (or "=") follows it; any label counts after a separator ("|",
-- "(", "[", ";", ",", "-") when a readable dependency list follows.
local LABELS = { "dependencies", "dependency", "depends on", "depend on",
                 "dependent on", "depends", "deps", "dep", "prerequisites",
                 "prerequisite", "prereqs", "prereq", "requires", "needs", "after" }
local WEAK = { requires = true, needs = true, after = true }

-- The end (at most stop) of a dependency list starting at init of low: the
-- list runs on over a "|" followed by more ids ("Task 1 | Task 2") and ends
-- before one followed by anything else (" | Tool: search", " | high").
local function list_end(low, init, stop)
  local p = low:find("|", init, true)
  while p and p <= stop do
    local q = low:find("|", p + 1, true)
    local seg_end = (q and q <= stop) and q - 1 or stop
    if not parse_deps(low:sub(p + 1, seg_end)) then return p - 1 end
    p = q
  end
  return stop
end

-- Splits the rest of a task line into description and dependencies ->
-- desc, {ids...}|nil, or desc, nil, bad token (a list that cannot be read).
-- The last strong label wins ("List deps: npm | Dependencies: none" keeps
-- "List deps: npm" as the description), else the last weak one; labels
-- opening columns right before it add their lists ("| Depends on: Task 1 |
-- Dependencies: Task 2" gives 1 and 2). A bare trailing "| 1, 2" is a list.
local function split_deps(rest)
  local low = rest:lower()
  local cands, at = {}, {}    -- {a=, from=, strong=, sep=} by position
  for _, label in ipairs(LABELS) do
    local init = 1
    while true do
      local a, b = low:find(label, init, true)
      if not a then break end
      init = a + 1
      local okb = a == 1 or not low:sub(a - 1, a - 1):find("[%w_]")
      local oka = not low:sub(b + 1, b + 1):find("[%w_]")
      if okb and oka and not at[a] then  -- the longest label at a comes first
        local strong = not WEAK[label]
        local colon = low:match("^%s*[:=]()", b + 1)
        local before = low:sub(1, a - 1)
        local sep = before:find("[|%(%[;,%-]%s*$") ~= nil or not before:find("%S")
        local from
        if colon and (strong or sep) then
          from = colon
        elseif sep and parse_deps(low:sub(b + 1)) then
          from = b + 1
        end
        if from then
          at[a] = true
          cands[#cands + 1] = { a = a, from = from, strong = strong, sep = sep }
        end
      end
    end
  end
  table.sort(cands, function(x, y) return x.a < y.a end)
  local k
  for i = #cands, 1, -1 do
    if cands[i].strong then k = i; break end
  end
  k = k or #cands
  if k > 0 then
    local anchor = cands[k]
    local list, bad = parse_deps(rest:sub(anchor.from, list_end(low, anchor.from, #low)))
    if not list then return nil, nil, bad end
    local first = k
    -- earlier labels opening a column just before the anchor add their lists
    for i = k - 1, 1, -1 do
      local c, stop = cands[i], cands[i + 1].a - 1
      local more = c.sep and parse_deps(rest:sub(c.from, list_end(low, c.from, stop)))
      if not more then break end
      first = i
      local seen = {}
      for _, d in ipairs(more) do seen[d] = true end
      for _, d in ipairs(list) do
        if not seen[d] then seen[d] = true; more[#more + 1] = d end
      end
      list = more
    end
    return trim(rstrip(rest:sub(1, cands[first].a - 1), "%s|;,%(%[%-")), list
  end
  local pipe = low:match(".*()|")
  if pipe then
    local deps = parse_deps(rest:sub(pipe + 1))
    if deps then return trim(rest:sub(1, pipe - 1)), deps end
  end
  return trim(rest), nil
end

local TASK_PATTERNS = {
  "^task%s*[#%-_]?%s*(%d+)%s*[:%.%)%-|]%s*()",
  "^t(%d+)%s*[:%.%)%-|]%s*()",
  "^step%s*[#%-_]?%s*(%d+)%s*[:%.%)%-|]%s*()",
}
-- "Task 1.5: ..." would read as task 1 described "5: ...": refused.
local DECIMAL_PATTERNS = {
  "^task%s*[#%-_]?%s*(%d+%.%d+)", "^t(%d+%.%d+)", "^step%s*[#%-_]?%s*(%d+%.%d+)",
}
-- Inside <plan> a blank may be the only separator: "Task 1 Fetch data".
local STRICT_PATTERNS = {
  "^task%s*[#%-_]?%s*(%d+)%s+()%S",
  "^t%s?(%d+)%s+()%S",
}
local DEP_LINE = { "^dependencies%s*[:=]()", "^dependency%s*[:=]()", "^deps?%s*[:=]()",
                   "^depends on%s*:?()", "^depend on%s*:?()", "^requires%s*:()",
                   "^prerequisites?%s*[:=]()", "^prereqs?%s*[:=]()" }

-- Does the description left of a task line still name dependencies in a
-- column ("| Dependencies -> Task 1", "(prereq tasks 1)")? Inside <plan>
-- such a line is an error, so the planner is asked again, rather than a
-- task that silently depends on nothing.
local function names_deps(desc)
  for w in desc:lower():gmatch("[|%(%[;]%s*(%a+)") do
    if w:find("^depend") or w:find("^prereq") or w == "dep" or w == "deps" then
      return true
    end
  end
  return false
end

-- One edit (substitution, deletion, insertion, swap) from "task"?
local function near_task(w)
  local n = #w
  if n < 3 or n > 5 then return false end
  local t = "task"
  if n == 4 then
    local diff = 0
    for i = 1, 4 do if w:sub(i, i) ~= t:sub(i, i) then diff = diff + 1 end end
    if diff <= 1 then return true end
    for i = 1, 3 do
      if w:sub(1, i - 1) .. w:sub(i + 1, i + 1) .. w:sub(i, i) .. w:sub(i + 2) == t then
        return true
      end
    end
  elseif n == 5 then
    for i = 1, 5 do if w:sub(1, i - 1) .. w:sub(i + 1) == t then return true end end
  else
    for i = 1, 4 do if t:sub(1, i - 1) .. t:sub(i + 1) == w then return true end end
  end
  return false
end

-- Does a line that is neither a task nor a dependency line look like a
-- failed attempt at one (so that it must be reported, not skipped)?
local function looks_like_task(l, strict)
  local word = l:match("^(%a+)")
  local marked = l:find("[:|]") ~= nil
  if word == "task" then   -- in a plan: "Task: Fetch", "Task A: Fetch", ...
    return strict or (marked and l:find("^task%s*[#%-_]?%s*%d") ~= nil)
  end
  if word == "tasks" then   -- "Tasks:" is a heading; "Tasks 1: ..." is not
    return marked and l:find("^tasks%s*#?%d") ~= nil
  end
  if word and near_task(word) and l:find("^%a+%s*#?%d") then
    return strict or marked
  end
  return strict and marked and l:find("%f[%a]depend") ~= nil
end

-- Parses the lines of text, the first being line first_line of the reply.
-- Returns tasks (maybe empty) or nil, message.
local function parse_region(text, strict, first_line)
  local tasks, by_id, last = {}, {}, nil
  local unread              -- {task, message}: dependencies named, none read
  local lineno = first_line - 1
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    local line
    if #raw > MAX_LINE then
      line = clean(raw:sub(1, 64))
      local l = line:lower()
      for _, p in ipairs(TASK_PATTERNS) do
        if l:find(p) then
          return nil, ("line %d: a task line longer than %d bytes"):format(lineno, MAX_LINE)
        end
      end
      line = ""
    else
      line = clean(raw)
    end
    if line ~= "" then
      local l = line:lower()
      for _, p in ipairs(DECIMAL_PATTERNS) do
        local num = l:match(p)
        if num then
          return nil, ("line %d: task number %s is not a whole number in %s "
            .. "(number the tasks 1, 2, 3, ...)"):format(lineno, num, quote(raw))
        end
      end
      local id, pos
      for _, p in ipairs(TASK_PATTERNS) do
        id, pos = l:match(p)
        if id then break end
      end
      if not id and strict then
        for _, p in ipairs(STRICT_PATTERNS) do
          id, pos = l:match(p)
          if id then break end
        end
      end
      local dep_pos
      if not id then
        for _, p in ipairs(DEP_LINE) do
          dep_pos = l:match(p)
          if dep_pos then break end
        end
        -- "- Dependencies T1, T2", without a colon: only when readable
        local bare = not dep_pos and l:match("^dependencies%s*%-?%s*()")
        if bare and parse_deps(l:sub(bare)) then dep_pos = bare end
      end
      if id and unread then return nil, unread[2] end
      if id then
        id = norm_id(id)
        if by_id[id] then
          return nil, ("line %d: duplicate task id %s (first on line %d)"):format(
            lineno, id, by_id[id].line)
        end
        local desc, deps, bad = split_deps(line:sub(pos))
        if bad then
          return nil, ("line %d: cannot read dependency %q in %s"):format(
            lineno, bad, quote(raw))
        end
        if desc == "" then
          return nil, ("line %d: task %s has no description in %s"):format(
            lineno, id, quote(raw))
        end
        last = { id = id, description = desc, deps = deps or {}, line = lineno }
        if strict and not deps and names_deps(desc) then
          unread = { last, ("line %d: cannot read the dependencies of task %s in %s "
            .. '(write "| Dependencies: Task 1, Task 2" or "| Dependencies: none")'):format(
            lineno, id, quote(raw)) }
        end
        tasks[#tasks + 1] = last
        by_id[id] = last
        if #tasks > M.MAX_TASKS then
          return nil, ("line %d: more than %d tasks in the plan"):format(lineno, M.MAX_TASKS)
        end
      elseif dep_pos then
        if not last then
          return nil, ("line %d: dependencies before any task in %s"):format(
            lineno, quote(raw))
        end
        local list, bad = parse_deps(line:sub(dep_pos))
        if not list then
          return nil, ("line %d: cannot read dependency %q in %s"):format(
            lineno, bad, quote(raw))
        end
        local seen = {}
        for _, d in ipairs(last.deps) do seen[d] = true end
        for _, d in ipairs(list) do
          if not seen[d] then seen[d] = true; last.deps[#last.deps + 1] = d end
        end
        if unread and unread[1] == last then unread = nil end
      elseif looks_like_task(l, strict) then
        return nil, ("line %d: cannot read a task in %s"):format(lineno, quote(raw))
      end
    end
  end
  if unread then return nil, unread[2] end
  return tasks
end

-- Unknown dependencies, self-dependencies, then cycles (named a -> b -> a).
local function check_graph(tasks)
  local by_id = {}
  for _, t in ipairs(tasks) do by_id[t.id] = t end
  for _, t in ipairs(tasks) do
    for _, d in ipairs(t.deps) do
      if d == t.id then return nil, ("task %s depends on itself"):format(t.id) end
      if not by_id[d] then
        return nil, ("task %s depends on unknown task %s"):format(t.id, d)
      end
    end
  end
  local state = {}          -- nil: new, 1: on the stack, 2: done
  for _, root in ipairs(tasks) do
    if not state[root.id] then
      local stack = { { task = root, i = 0 } }
      state[root.id] = 1
      while #stack > 0 do
        local top = stack[#stack]
        top.i = top.i + 1
        local d = top.task.deps[top.i]
        if d == nil then
          state[top.task.id] = 2
          stack[#stack] = nil
        elseif state[d] == 1 then
          local path, on = {}, false
          for _, f in ipairs(stack) do
            if f.task.id == d then on = true end
            if on then path[#path + 1] = f.task.id end
          end
          path[#path + 1] = d
          return nil, "cycle: " .. table.concat(path, " -> ")
        elseif not state[d] then
          state[d] = 1
          stack[#stack + 1] = { task = by_id[d], i = 0 }
        end
      end
    end
  end
  return true
end

local EXPECTED = 'expected lines like "Task 1: description | Dependencies: none"'

-- parse(text) -> {tasks={{id=, description=, deps={...}, line=}, ...},
--                 think=string|nil}  or nil, message.
function M.parse(text)
  str_arg(text, "parse", "text")
  text = text:gsub("^\239\187\191", ""):gsub("\r\n?", "\n")
  local low = text:lower()
  local think
  local ta, tb = low:find("<think>", 1, true)
  local ca, cb = low:find("</think>", (tb or 0) + 1, true)
  if ta and not ca then
    local pa = low:find("<plan>", tb + 1, true)
    if pa then ca, cb = pa, pa - 1 end
  end
  if ca then
    local from = ta and tb + 1 or 1
    think = trim(text:sub(from, ca - 1))
    if think == "" then think = nil end
    text = mask(text, ta or 1, cb)
    low = text:lower()
  end
  local regions, init = {}, 1
  while true do
    local a, b = low:find("<plan>", init, true)
    if not a then break end
    local c, d = low:find("</plan>", b + 1, true)
    regions[#regions + 1] = { b + 1, (c or #text + 1) - 1 }
    if not c then break end
    init = d + 1
  end
  if #regions == 0 then
    local c = low:find("</plan>", 1, true)
    if c then regions[1] = { 1, c - 1 } end
  end
  local tasks, err
  if #regions == 0 then
    tasks, err = parse_region(text, false, 1)
    if not tasks then return nil, err end
    if #tasks == 0 then return nil, "no plan found: " .. EXPECTED end
  else
    local line, counted = 1, 1      -- line number at offset counted
    for _, r in ipairs(regions) do
      line = line + select(2, text:sub(counted, r[1] - 1):gsub("\n", ""))
      counted = r[1]
      tasks, err = parse_region(text:sub(r[1], r[2]), true, line)
      if not tasks then return nil, err end
      if #tasks > 0 then break end
    end
    if #tasks == 0 then return nil, "the <plan> block holds no tasks: " .. EXPECTED end
  end
  local ok, gerr = check_graph(tasks)
  if not ok then return nil, gerr end
  return { tasks = tasks, think = think }
end

---------------------------------------------------------------- prompts

-- prompt{request=, error=nil|string} -> the planning prompt.
function M.prompt(t)
  if type(t) ~= "table" then error("gap.prompt: expected a table", 2) end
  local request = str_arg(t.request, "prompt", "request")
  local p = fill(M.PLAN_PROMPT, { request = trim(request) })
  if t.error ~= nil then
    p = p .. fill(M.REASK, { error = str_arg(t.error, "prompt", "error") })
  end
  return p
end

-- should_plan{request=, tier=nil|string} -> boolean, reason.
function M.should_plan(t)
  if type(t) ~= "table" then error("gap.should_plan: expected a table", 2) end
  local request = str_arg(t.request, "should_plan", "request")
  local tier = t.tier
  if tier == nil then tier = complexity.classify({ title = request }) end
  str_arg(tier, "should_plan", "tier")
  if M.PLAN_TIERS[tier] then return true, "complexity tier " .. tier end
  local words = select(2, request:gsub("%S+", ""))
  if words > M.PLAN_WORDS then
    return true, ("request has %d words (more than %d)"):format(words, M.PLAN_WORDS)
  end
  local items = 0
  for line in (request .. "\n"):gmatch("([^\n]*)\n") do
    if line:find("^%s*[%-%*%+]%s+%S") or line:find("^%s*%d+[%.%)]%s+%S")
       or line:find("^%s*\u{2022}") then
      items = items + 1
    end
  end
  if items < M.MIN_LIST_ITEMS then
    local inline = select(2, request:gsub("%f[%w]%d%)%s", ""))
                 + select(2, request:gsub("%(%d%)", ""))
    if inline >= M.MIN_LIST_ITEMS then items = inline end
  end
  if items >= M.MIN_LIST_ITEMS then
    return true, ("request lists %d items"):format(items)
  end
  local low = " " .. request:lower():gsub("%s+", " ") .. " "
  for _, phrase in ipairs(M.MULTIPART) do
    if low:find(phrase, 1, true) then
      return true, ("multi-part request (%q)"):format(phrase)
    end
  end
  return false, ("one call: %d words, tier %s, no list or multi-part ask"):format(words, tier)
end

-- task_prompt{request=, task={id=, description=}, deps={{id=, description=,
-- result=}, ...}} -> the prompt of one task's LLM call.
function M.task_prompt(t)
  if type(t) ~= "table" or type(t.task) ~= "table" then
    error("gap.task_prompt: expected {request=, task={id=, description=}}", 2)
  end
  local request = str_arg(t.request, "task_prompt", "request")
  local id = tostring(t.task.id)
  local desc = str_arg(t.task.description, "task_prompt", "task.description")
  local context = ""
  local deps = t.deps or {}
  if #deps > 0 then
    local parts = { "\nResults of the tasks it depends on:\n" }
    for _, d in ipairs(deps) do
      local r = d.result
      if r == nil then r = "(no result)" end
      parts[#parts + 1] = ("\n[Task %s: %s]\n%s\n"):format(tostring(d.id),
        tostring(d.description or ""), cut(trim(tostring(r)), M.MAX_RESULT_BYTES))
    end
    context = table.concat(parts)
  end
  return fill(M.TASK_PROMPT, { request = trim(request), id = id,
                               description = desc, context = context })
end

-- synthesis_prompt{request=, results={{id=, description=, status=,
-- result=|error=}, ...}} -> the prompt asking for the final answer. Failed
-- and skipped tasks are named ("Task 2 failed: ...").
function M.synthesis_prompt(t)
  if type(t) ~= "table" or type(t.results) ~= "table" then
    error("gap.synthesis_prompt: expected {request=, results={...}}", 2)
  end
  local request = str_arg(t.request, "synthesis_prompt", "request")
  local parts, missing = {}, {}
  for _, r in ipairs(t.results) do
    local id, desc = tostring(r.id), tostring(r.description or "")
    local status = r.status or "passed"
    if status == "passed" then
      local res = r.result
      if res == nil then res = "(no result)" end
      parts[#parts + 1] = ("Task %s (passed): %s\nResult:\n%s\n"):format(
        id, desc, cut(trim(tostring(res)), M.MAX_RESULT_BYTES))
    else
      local why = r.error
      if why == nil then
        why = status == "skipped" and "not run: a task it depends on failed" or "no error given"
      end
      parts[#parts + 1] = ("Task %s %s: %s\nError: %s\n"):format(
        id, status, desc, cut(trim(tostring(why)), M.MAX_RESULT_BYTES))
      missing[#missing + 1] = ("Task %s %s"):format(id, status)
    end
  end
  local failures = ""
  if #missing > 0 then
    failures = fill(M.FAILURES, { names = table.concat(missing, ", ") })
  end
  return fill(M.SYNTHESIS_PROMPT, { request = trim(request),
    results = table.concat(parts, "\n"), failures = failures })
end

-- answer(text) -> the answer in a model's reply: the <answer> block when
-- there is one, without a <think> block that starts before it (a
-- "</think>" inside the answer is text); an unmatched "</answer>" at the
-- end is dropped; trimmed.
function M.answer(text)
  str_arg(text, "answer", "text")
  local low = text:lower()
  local aa = low:find("<answer>", 1, true) or math.huge
  local ta = low:find("<think>", 1, true)
  local tc, tb = low:find("</think>", ta or 1, true)
  -- a block with its opener before <answer>, or a missing opener with the
  -- "</think>" before <answer>
  if tc and ((ta and ta < aa) or (not ta and tc < aa)) then
    text, low = text:sub(tb + 1), low:sub(tb + 1)
  end
  local _, ab = low:find("<answer>", 1, true)
  if ab then
    local c = low:find("</answer>", ab + 1, true)
    text = text:sub(ab + 1, (c or #text + 1) - 1)
  else
    text = trim(text)
    if text:lower():sub(-9) == "</answer>" then text = text:sub(1, -10) end
  end
  return trim(text)
end

---------------------------------------------------------------- selftest

function M.selftest()
  local function check(cond, what) if not cond then error("gap selftest: " .. what, 2) end end
  local p = M.parse("<think>two fetches, then a report</think>\n<plan>\n"
    .. "Task 1: Fetch user data | Dependencies: none\n"
    .. "Task 2: Fetch orders | Dependencies: none\n"
    .. "Task 3: Generate report | Dependencies: Task 1, Task 2\n</plan>")
  check(p and #p.tasks == 3 and p.tasks[3].deps[2] == "2", "dialect 1")
  check(p.think == "two fetches, then a report", "think")
  local q = M.parse("<plan>\nT1: Search for X\n- Dependencies: none\nT2: Search for Y\n"
    .. "- Dependencies: none\nT3: Compare them\n- Dependencies: T1, T2\n</plan>")
  check(q and q.tasks[3].id == "3" and q.tasks[3].deps[1] == "1", "dialect 2")
  local r = M.parse("<plan>\nTask 1: A | *Deps*: none\nTask 2: B | Dep: none\n"
    .. "Task 3: C | Dependencies: Task 1 | Task 2 | Tool: x\n</plan>")
  check(r and r.tasks[3].description == "C" and #r.tasks[3].deps == 2, "labels, lists over |")
  local _, e = M.parse("<plan>\nTask 1: A | Dependencies: none\nTaks 2 Fetch\n</plan>")
  check(e == 'line 3: cannot read a task in "Taks 2 Fetch"', "bad line: " .. tostring(e))
  _, e = M.parse("Task 1: A | Dependencies: none\nTask 3: B | Dependencies: 9")
  check(e == "task 3 depends on unknown task 9", "unknown dep: " .. tostring(e))
  check(M.prompt({ request = "R" }):find("<plan>", 1, true), "prompt")
  check(M.prompt({ request = "R", error = "E1" }):find("E1", 1, true), "re-ask")
  local s = M.synthesis_prompt({ request = "R", results = {
    { id = "1", description = "a", status = "passed", result = "x" },
    { id = "2", description = "b", status = "failed", error = "timeout" } } })
  check(s:find("Task 2 failed: b", 1, true), "synthesis names the failure")
  check(type(M.should_plan({ request = "hi", tier = "local" })) == "boolean", "should_plan")
  return true
end

return M
