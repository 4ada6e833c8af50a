/* pattern_harness.h: the Lua chunk that test_policy.c's differential test
 * and fuzz/fuzz_pattern.c run in the sandbox and in a plain lua_State. */
#ifndef ORCH_PATTERN_HARNESS_H
#define ORCH_PATTERN_HARNESS_H

/* Both states run this: (op, s, p, a, b, r) -> one string that shows
 * whether the call raised and each value it gave, typed. */
static const char DIFF_HARNESS[] =
    "local op, s, p, a, b, r = ...\n"
    "local function show(ok, ...)\n"
    "  local t = {tostring(ok)}\n"
    "  for i = 1, select('#', ...) do\n"
    "    local v = select(i, ...)\n"
    "    t[#t + 1] = type(v) .. ':' .. tostring(v)\n"
    "  end\n"
    "  return table.concat(t, '\\1')\n"
    "end\n"
    "local function fn(...)\n" /* keeps some matches, refuses one */
    "  local n, first = select('#', ...), ...\n"
    "  if first == 'b' then return false end\n"
    "  if n == 2 then return nil end\n"
    "  if first == 'c' then return {} end\n"
    "  if first == 'd' then return 4.5 end\n"
    "  local t = {}\n"
    "  for i = 1, n do t[i] = tostring((select(i, ...))) end\n"
    "  return '[' .. table.concat(t, ',') .. ']'\n"
    "end\n"
    "local tbl = {a = 'A', b = false, ab = 7, [1] = 'one', [3] = 'three',\n"
    "             aa = 'AA', x = true, [' '] = '_'}\n"
    "local function packed(...) return {n = select('#', ...), ...} end\n"
    "if op == 'find' then\n"
    "  return show(pcall(function()\n"
    "    local t = packed(string.find(s, p, a, b))\n"
    "    return table.unpack(t, 1, t.n)\n"
    "  end))\n"
    "elseif op == 'match' then\n"
    "  return show(pcall(function()\n"
    "    local t = packed(s:match(p, a))\n"
    "    return table.unpack(t, 1, t.n)\n"
    "  end))\n"
    "elseif op == 'gmatch' then\n"
    "  return show(pcall(function()\n"
    "    local out, it = {}, string.gmatch(s, p, a)\n"
    "    for _ = 1, 40 do\n"
    "      local t = packed(it())\n"
    "      if t.n == 0 then break end\n"
    "      for i = 1, t.n do\n"
    "        out[#out + 1] = type(t[i]) .. ':' .. tostring(t[i])\n"
    "      end\n"
    "      out[#out + 1] = '|'\n"
    "    end\n"
    "    return table.concat(out, ',')\n"
    "  end))\n"
    "else\n"
    "  local repl = r\n"
    "  if r == 'fn()' then repl = fn elseif r == 'tbl()' then repl = tbl end\n"
    "  return show(pcall(function()\n"
    "    local t = packed(string.gsub(s, p, repl, a))\n"
    "    return table.unpack(t, 1, t.n)\n"
    "  end))\n"
    "end\n";

#endif
