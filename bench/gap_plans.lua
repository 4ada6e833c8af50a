-- bench/gap_plans.lua: the plans of the GAP benchmark (issue 6, section 7)
-- and the report of its runs. Run with lua5.4 (needs lua-cjson).
--
--   lua5.4 bench/gap_plans.lua gen DIR [SEED]
--       writes DIR/NN-SHAPE.json: 20 JSON plans of `llm` steps (chains,
--       fans, diamonds, random DAGs; 3 to 50 tasks). Each step's "model" is
--       "mock+fault=latency=MS", MS drawn uniformly in 50..500 from SEED, so
--       the mock LLM answers that step after MS ms. The PRNG is our own
--       (xorshift32), so a seed gives the same plans on every Lua.
--   lua5.4 bench/gap_plans.lua report RESULTS_DIR
--       reads RESULTS_DIR/NN-SHAPE.out (the `orchestrate run --json` output)
--       and RESULTS_DIR/NN-SHAPE.wall (the process's wall time in ms) and
--       prints the markdown table: per plan, the measured makespan against
--       sequential execution (the sum of the measured step durations) and
--       level-by-level execution (each level starts when the slowest step of
--       the previous one is done, no limit in flight, from the same measured
--       durations), and the averages.

local cjson = require "cjson"

local function rng(seed)
  local s = (seed * 2654435761 + 12345) % 4294967296
  if s == 0 then s = 2463534242 end
  local function next32()
    s = s ~ ((s << 13) & 0xffffffff)
    s = s ~ (s >> 17)
    s = s ~ ((s << 5) & 0xffffffff)
    return s
  end
  -- uniform integer in [a, b]
  return function(a, b) return a + next32() % (b - a + 1) end
end

-- shapes: each returns a list of dependency lists (1-based task indices)
local shapes = {}

function shapes.chain(n)
  local d = { {} }
  for i = 2, n do d[i] = { i - 1 } end
  return d
end

-- n-1 independent tasks, then one join over all of them (the GAP fan).
function shapes.fan_in(n)
  local d, all = {}, {}
  for i = 1, n - 1 do d[i] = {}; all[#all + 1] = i end
  d[n] = all
  return d
end

-- one root, n-1 tasks that depend on it.
function shapes.fan_out(n)
  local d = { {} }
  for i = 2, n do d[i] = { 1 } end
  return d
end

-- stages diamonds stacked: a root, then per stage `width` tasks on the
-- previous join and a join over them. 1 + stages * (width + 1) tasks.
function shapes.diamond(stages, width)
  local d = { {} }
  local join = 1
  for _ = 1, stages do
    local mid = {}
    for _ = 1, width do d[#d + 1] = { join }; mid[#mid + 1] = #d end
    d[#d + 1] = mid
    join = #d
  end
  return d
end

-- each task depends on 0..maxdeps distinct earlier tasks chosen uniformly.
function shapes.random(n, maxdeps, r)
  local d = { {} }
  for i = 2, n do
    local k = math.min(r(0, maxdeps), i - 1)
    local set, list = {}, {}
    while #list < k do
      local j = r(1, i - 1)
      if not set[j] then set[j] = true; list[#list + 1] = j end
    end
    table.sort(list)
    d[i] = list
  end
  return d
end

-- `levels` levels of uneven width (as planners write them): each task of
-- level l > 1 depends on one task of level l-1 and 0..2 more of any earlier
-- level.
function shapes.layered(n, levels, r)
  local lvl = {}
  for l = 1, levels do lvl[l] = { l } end -- one task per level at least
  for i = levels + 1, n do local l = r(1, levels); lvl[l][#lvl[l] + 1] = i end
  -- renumber level by level so dependencies point to lower indices
  local order, idx = {}, {}
  for l = 1, levels do for _, t in ipairs(lvl[l]) do order[#order + 1] = { l = l }; idx[#order] = l end end
  local first = {}
  for i = #order, 1, -1 do first[idx[i]] = i end
  local d = {}
  for i, t in ipairs(order) do
    local l = t.l
    if l == 1 then d[i] = {} else
      local set, list = {}, {}
      local lo, hi = first[l - 1], first[l] - 1
      local j = r(lo, hi); set[j] = true; list[1] = j
      local extra = math.min(r(0, 2), first[l] - 1 - 1)
      local tries = 0
      while #list < 1 + extra and tries < 20 do
        tries = tries + 1
        j = r(1, first[l] - 1)
        if not set[j] then set[j] = true; list[#list + 1] = j end
      end
      table.sort(list)
      d[i] = list
    end
  end
  return d
end

-- The 20 plans: name, builder.
local function plan_list(r)
  return {
    { "chain", shapes.chain(3) },
    { "chain", shapes.chain(8) },
    { "chain", shapes.chain(15) },
    { "chain", shapes.chain(25) },
    { "fan-in", shapes.fan_in(5) },
    { "fan-in", shapes.fan_in(20) },
    { "fan-in", shapes.fan_in(50) },
    { "fan-out", shapes.fan_out(12) },
    { "diamond", shapes.diamond(1, 2) },
    { "diamond", shapes.diamond(1, 8) },
    { "diamond", shapes.diamond(3, 4) },
    { "diamond", shapes.diamond(5, 6) },
    { "random", shapes.random(10, 2, r) },
    { "random", shapes.random(20, 3, r) },
    { "random", shapes.random(35, 2, r) },
    { "random", shapes.random(50, 3, r) },
    { "layered", shapes.layered(12, 3, r) },
    { "layered", shapes.layered(24, 4, r) },
    { "layered", shapes.layered(40, 5, r) },
    { "layered", shapes.layered(50, 6, r) },
  }
end

local function gen(dir, seed)
  local r = rng(seed)
  for p, pl in ipairs(plan_list(r)) do
    local name, deps = pl[1], pl[2]
    local steps = {}
    for i, dl in ipairs(deps) do
      local ids = {}
      for _, j in ipairs(dl) do ids[#ids + 1] = string.format("t%d", j) end
      local ms = r(50, 500)
      local st = {
        id = string.format("t%d", i), kind = "llm", tier = "fast",
        prompt = string.format("Your task (Task %d): part %d of the %s plan %d.", i, i, name, p),
        model = string.format("mock+fault=latency=%d", ms),
        max_tokens = 64,
      }
      if #ids > 0 then st.deps = ids end
      steps[#steps + 1] = st
    end
    local doc = { task_id = string.format("gap-bench-%02d-%s", p, name), agent = "gap-bench", steps = steps }
    local path = string.format("%s/%02d-%s.json", dir, p, name)
    local f = assert(io.open(path, "w"))
    -- cjson.encode gives {} for an empty table; deps is left out instead.
    f:write(cjson.encode(doc), "\n")
    f:close()
  end
end

local function readall(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- a percentage with one decimal, never "-0.0"
local function pct(x)
  local s = string.format("%.1f", 100 * x)
  if s == "-0.0" then s = "0.0" end
  return s .. "%"
end

local function report(dir)
  local names = {}
  local p = io.popen("ls " .. dir .. " | grep '\\.out$' | sort")
  for l in p:lines() do names[#names + 1] = l:gsub("%.out$", "") end
  p:close()
  local fam, famorder = {}, {}
  local sum = { n = 0, rs = 0, rl = 0, ob = 0, ms = 0, seq = 0, lvl = 0, cp = 0, failed = 0 }
  print("| # | shape | tasks | edges | levels | sequential (ms) | level by level (ms) | critical path (ms) | measured makespan (ms) | process wall (ms) | less than sequential | less than level by level | over critical path |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for _, nm in ipairs(names) do
    local plan = cjson.decode(assert(readall(string.format("%s/%s.json", dir, nm))))
    local out = readall(string.format("%s/%s.out", dir, nm)) or ""
    local ok, res = pcall(cjson.decode, out)
    local wall = tonumber(readall(string.format("%s/%s.wall", dir, nm)) or "") or 0
    local idx, edges = {}, 0
    for i, st in ipairs(plan.steps) do idx[st.id] = i; edges = edges + (st.deps and #st.deps or 0) end
    if not ok or type(res) ~= "table" or res.status ~= "passed" then
      sum.failed = sum.failed + 1
      print(string.format("| %s | %s | %d | %d | | | | | **run failed** | | | | |", nm:sub(1, 2), nm:sub(4), #plan.steps, edges))
    else
      local dur, level, fin = {}, {}, {}
      local seq, slow, nlev = 0, {}, 0
      for _, st in ipairs(res.steps) do
        local d = st.finished_ms - st.started_ms
        local i = idx[st.id]
        dur[i] = d
        seq = seq + d
      end
      -- levels from the plan (longest path in steps from a source), checked
      -- against the runtime's; critical path from the measured durations
      for i, st in ipairs(plan.steps) do
        local l, f = 0, 0
        for _, dep in ipairs(st.deps or {}) do
          local j = idx[dep]
          if level[j] + 1 > l then l = level[j] + 1 end
          if fin[j] > f then f = fin[j] end
        end
        level[i] = l
        fin[i] = f + dur[i]
        if (slow[l] or 0) < dur[i] then slow[l] = dur[i] end
        if l + 1 > nlev then nlev = l + 1 end
      end
      for _, st in ipairs(res.steps) do
        if st.level ~= nil and st.level ~= level[idx[st.id]] then
          io.stderr:write(string.format("%s: step %s: runtime level %s, ours %d\n", nm, st.id, tostring(st.level), level[idx[st.id]]))
        end
      end
      local lvl, cp = 0, 0
      for l = 0, nlev - 1 do lvl = lvl + slow[l] end
      for i = 1, #fin do if fin[i] > cp then cp = fin[i] end end
      local ms = res.makespan_ms
      local rs, rl, ob = 1 - ms / seq, 1 - ms / lvl, ms / cp - 1
      sum.n = sum.n + 1
      sum.rs, sum.rl, sum.ob = sum.rs + rs, sum.rl + rl, sum.ob + ob
      sum.ms, sum.seq, sum.lvl, sum.cp = sum.ms + ms, sum.seq + seq, sum.lvl + lvl, sum.cp + cp
      local shape = nm:sub(4)
      if not fam[shape] then fam[shape] = { n = 0, rs = 0, rl = 0, lo = #plan.steps, hi = #plan.steps }; famorder[#famorder + 1] = shape end
      local fm = fam[shape]
      fm.n, fm.rs, fm.rl = fm.n + 1, fm.rs + rs, fm.rl + rl
      fm.lo, fm.hi = math.min(fm.lo, #plan.steps), math.max(fm.hi, #plan.steps)
      print(string.format("| %s | %s | %d | %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | +%.2f%% |",
        nm:sub(1, 2), shape, #plan.steps, edges, nlev, seq, lvl, cp, ms, wall, pct(rs), pct(rl), 100 * ob))
    end
  end
  if sum.n > 0 then
    print(string.format("| | **average of the plans** | | | | %.0f | %.0f | %.0f | %.0f | | **%s** | **%s** | +%.2f%% |",
      sum.seq / sum.n, sum.lvl / sum.n, sum.cp / sum.n, sum.ms / sum.n, pct(sum.rs / sum.n), pct(sum.rl / sum.n), 100 * sum.ob / sum.n))
    print(string.format("| | all plans' time together | | | | %.0f | %.0f | %.0f | %.0f | | %s | %s | +%.2f%% |",
      sum.seq, sum.lvl, sum.cp, sum.ms, pct(1 - sum.ms / sum.seq), pct(1 - sum.ms / sum.lvl), 100 * (sum.ms / sum.cp - 1)))
    print("")
    print("By shape (averages of the plans' reductions):")
    print("")
    print("| shape | plans | tasks | less than sequential | less than level by level |")
    print("|---|---:|---|---:|---:|")
    for _, shape in ipairs(famorder) do
      local fm = fam[shape]
      print(string.format("| %s | %d | %d-%d | %s | %s |", shape, fm.n, fm.lo, fm.hi, pct(fm.rs / fm.n), pct(fm.rl / fm.n)))
    end
  end
  -- one machine-readable line for the script
  io.stderr:write(string.format("GAPSUM plans=%d failed=%d red_seq=%.1f red_lvl=%.1f over_cp=%.2f\n",
    sum.n, sum.failed, sum.n > 0 and 100 * sum.rs / sum.n or 0, sum.n > 0 and 100 * sum.rl / sum.n or 0,
    sum.n > 0 and 100 * sum.ob / sum.n or 0))
end

local cmd = arg[1]
if cmd == "gen" and arg[2] then
  gen(arg[2], tonumber(arg[3] or "6"))
elseif cmd == "report" and arg[2] then
  report(arg[2])
else
  io.stderr:write("usage: lua5.4 bench/gap_plans.lua gen DIR [SEED] | report DIR\n")
  os.exit(2)
end
