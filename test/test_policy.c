/* test_policy.c: the Lua policy engine (policy.c): sandbox escapes, limits,
 * typed hook results, hot reload (with and without the file watch), reload
 * under load, and `orchestrate check`. Each test writes its scripts into a
 * fresh temporary directory. */
#include "orch_int.h"
#include "test.h"

#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* ---- helpers ------------------------------------------------------------ */

static char *tmpdir_new(void) {
  char tmpl[] = "/tmp/orch-policy-XXXXXX";
  char *d = mkdtemp(tmpl);
  return d ? strdup(d) : NULL;
}

static void rm_rf(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *de;
    while ((de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      char *p = orch__asprintf("%s/%s", path, de->d_name);
      rm_rf(p);
      free(p);
    }
    closedir(d);
    rmdir(path);
  } else {
    unlink(path);
  }
}

/* Writes dir/rel the way editors do: a temporary file renamed over it. */
static int put(const char *dir, const char *rel, const char *text) {
  char *path = orch__asprintf("%s/%s", dir, rel);
  char *tmp = orch__asprintf("%s/.%s.tmp", dir, strchr(rel, '/') ? "x" : rel);
  char *slash = strrchr(path, '/');
  *slash = '\0';
  mkdir(path, 0755);
  *slash = '/';
  FILE *f = fopen(tmp, "w");
  int rc = -1;
  if (f) {
    fputs(text, f);
    fclose(f);
    rc = rename(tmp, path);
  }
  free(path);
  free(tmp);
  return rc;
}

static orch__config test_cfg(const char *dir) {
  orch__config c;
  orch__config_defaults(&c);
  free(c.scripts_dir);
  c.scripts_dir = orch__strdup(dir);
  return c;
}

static double now_ms(void) { return (double)orch__now_ns() / 1e6; }

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
    fclose(f);
  }
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Runs code as a chunk in s's state; returns the orch code, the first
 * result (tostring'd) or the error in out. */
static int run_chunk(lua_State *L, const char *code, char *out, size_t n) {
  char err[1024];
  out[0] = '\0';
  int rc = orch__lua_load(L, code, strlen(code), "snippet", err, sizeof err);
  if (rc) {
    snprintf(out, n, "%s", err);
    return rc;
  }
  rc = orch__lua_pcall(L, 0, 1, err, sizeof err);
  if (rc) {
    snprintf(out, n, "%s", err);
    return rc;
  }
  const char *v = lua_tostring(L, -1);
  snprintf(out, n, "%s", v ? v : luaL_typename(L, -1));
  lua_pop(L, 1);
  return ORCH_OK;
}

static const char *COMPLEXITY =
    "local M = {}\n"
    "local complex = {'architect', 'security', 'refactor'}\n"
    "local simple = {'format', 'simple', 'convert', 'summarize'}\n"
    "function M.classify(task)\n"
    "  local text = ((task.title or '') .. ' ' .. (task.instructions or ''))"
    ":lower()\n"
    "  for _, k in ipairs(complex) do\n"
    "    if text:find(k, 1, true) then return 'strong' end\n"
    "  end\n"
    "  local n = 0\n"
    "  for _, k in ipairs(simple) do\n"
    "    if text:find(k, 1, true) then n = n + 1 end\n"
    "  end\n"
    "  return n >= 2 and 'fast' or 'local'\n"
    "end\n"
    "function M.selftest()\n"
    "  assert(M.classify{title='Format this simple document'} == 'fast')\n"
    "end\n"
    "return M\n";

/* ---- loading and calling ------------------------------------------------ */

TEST(policy_calls_routing_hook_fast_path_and_json) {
  char *dir = tmpdir_new(), err[512], tier[32];
  ASSERT(dir);
  put(dir, "routing/complexity.lua", COMPLEXITY);
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 1);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT(s);
  ASSERT_EQ(orch__lstate_generation(s), 1);
  const char *keys[] = {"title", "instructions", "name", "phase", "agent"};
  const char *vals[] = {"Format this simple document", "Convert to markdown",
                        "format_doc", "implementation", NULL};
  ASSERT_EQ(orch__policy_call_fields(s, "routing.complexity", "classify",
                                     keys, vals, 5, tier, sizeof tier, err,
                                     sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(tier, "fast");
  json_t *arg = json_pack("{s:s, s:s}", "title", "Architect the security "
                          "system", "instructions", "Design auth flow");
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify", arg,
                                     tier, sizeof tier, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(tier, "strong");
  json_t *out = NULL;
  ASSERT_EQ(orch__policy_call(s, "routing.complexity", "classify", arg, &out,
                              err, sizeof err),
            ORCH_OK);
  ASSERT(json_is_string(out));
  ASSERT_STR_EQ(json_string_value(out), "strong");
  json_decref(out);
  json_decref(arg);
  /* missing module and function: ENOTFOUND, the caller's fallback */
  ASSERT_EQ(orch__policy_call_string(s, "routing.nope", "classify", NULL,
                                     tier, sizeof tier, err, sizeof err),
            ORCH_ENOTFOUND);
  ASSERT_CONTAINS(err, "routing.nope");
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "nofn", NULL,
                                     tier, sizeof tier, err, sizeof err),
            ORCH_ENOTFOUND);
  ASSERT_CONTAINS(err, "has no function 'nofn'");
  char mods[256];
  ASSERT_EQ(orch__policy_modules(p, mods, sizeof mods), 1);
  ASSERT_STR_EQ(mods, "routing.complexity");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(policy_without_scripts_dir_falls_back) {
  char err[512], tier[32];
  orch__config c = test_cfg("/nonexistent/orch-scripts");
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 1);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT(s);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, tier, sizeof tier, err,
                                     sizeof err),
            ORCH_ENOTFOUND);
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 1);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
}

TEST(policy_runtime_error_names_file_line_and_hook) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "rewards/group.lua",
      "local M = {}\n"
      "function M.reward(t)\n"
      "  return t.missing.field\n"
      "end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  json_t *arg = json_object(), *out = NULL;
  ASSERT_EQ(orch__policy_call(s, "rewards.group", "reward", arg, &out, err,
                              sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "rewards/group.lua:3:");
  ASSERT_CONTAINS(err, "(in group.reward())");
  json_decref(arg);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- the sandbox -------------------------------------------------------- */

TEST(sandbox_refuses_every_escape_with_a_clear_error) {
  static const struct {
    const char *code, *want;
  } cases[] = {
      {"return io.open('/etc/passwd')",
       "nonexistent global variable 'io'"},
      {"return os.execute('true')",
       "'os.execute' is not available in the script sandbox"},
      {"return os.remove('/tmp/x')", "'os.remove' is not available"},
      {"return os.exit(1)", "'os.exit' is not available"},
      {"return os.getenv('HOME')", "'os.getenv' is not available"},
      {"return require 'os'", "require: no module 'os'"},
      {"return require 'io'", "require: no module 'io'"},
      {"return require '../../etc/passwd'", "require: no module"},
      {"return assert(load('\\27LuaT\\0\\25\\147\\r\\n\\26\\n'))",
       "binary chunks are not allowed"},
      {"return load(string.dump(function() end))",
       "'string.dump' is not available"},
      {"return ('').dump", "'string.dump' is not available"},
      {"return debug.getinfo(1)", "nonexistent global variable 'debug'"},
      {"return debug.sethook()", "nonexistent global variable 'debug'"},
      {"_G.x = 1", "create global variable 'x'"},
      {"x = 1", "create global variable 'x'"},
      {"rawset(_G, 'x', 1)", "write the global table"},
      {"rawset(_ENV, 'y', 1)", "write the global table"},
      {"return dofile('/etc/passwd')",
       "nonexistent global variable 'dofile'"},
      {"return loadfile('/etc/passwd')",
       "nonexistent global variable 'loadfile'"},
      {"return collectgarbage('count')",
       "nonexistent global variable 'collectgarbage'"},
      {"return package.loaded", "nonexistent global variable 'package'"},
      {"return coroutine.create(print)",
       "nonexistent global variable 'coroutine'"},
      {"return load('return io')()", "nonexistent global variable 'io'"},
      {"return getmetatable('').__index",
       "attempt to index a nil value"},
      {"return getmetatable(_G).__index", "attempt to index a boolean"},
      {"setmetatable(_G, nil)", "cannot change a protected metatable"},
      {"setmetatable({}, {__gc = function() end})",
       "__gc metamethods are not allowed"},
      {"return string.rep('x', 1 << 30)", "memory cap exceeded"},
      {"pcall(function() while true do end end) return 'escaped'",
       "instruction budget exceeded"},
  };
  char *dir = tmpdir_new(), err[512], out[1024];
  put(dir, "routing/complexity.lua", COMPLEXITY);
  orch__config c = test_cfg(dir);
  c.lua_budget = 1000;
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  lua_State *L = orch__lstate_L(s);
  for (size_t i = 0; i < ORCH__ARRAY_LEN(cases); i++) {
    int rc = run_chunk(L, cases[i].code, out, sizeof out);
    if (rc == ORCH_OK || !strstr(out, cases[i].want)) {
      orch_test_fail(__FILE__, __LINE__, "%s: want error '%s', got %s '%s'",
                     cases[i].code, cases[i].want, rc ? "error" : "result",
                     out);
    }
  }
  /* a module required by a step is read-only */
  ASSERT(run_chunk(L, "require('routing.complexity').classify = nil", out,
                   sizeof out) != ORCH_OK);
  ASSERT_CONTAINS(out, "module tables are read-only");
  ASSERT(run_chunk(L, "return getmetatable(require('routing.complexity'))",
                   out, sizeof out) == ORCH_OK);
  ASSERT_STR_EQ(out, "boolean");
  /* what is allowed works */
  ASSERT_EQ(run_chunk(L,
                      "local t = json.decode(json.encode({a = {1, 2, 3}, b "
                      "= 'x\"y'}))\n"
                      "return t.a[3] .. t.b .. #orch.sha256('abc') .. "
                      "orch.sha256('abc'):sub(1, 8) .. "
                      "tostring(orch.now_ms() > 0) .. "
                      "tostring(os.time() > 0) .. math.floor(2.5) .. "
                      "utf8.char(72) .. table.concat({'a', 'b'}, ',') .. "
                      "select('#', 1, 2) .. string.format('%d', 7) .. "
                      "require('routing.complexity').classify{title = "
                      "'quick simple convert'}",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "3x\"y64ba7816bftruetrue2Ha,b27fast");
  ASSERT_EQ(run_chunk(L, "return json.encode(json.null) .. "
                         "json.encode(json.decode('[1,null,2]'))",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "null[1,null,2]");
  ASSERT(run_chunk(L, "return json.encode(0/0)", out, sizeof out));
  ASSERT_CONTAINS(out, "cannot encode NaN");
  ASSERT(run_chunk(L, "local t = {} t.t = t return json.encode(t)", out,
                   sizeof out));
  ASSERT_CONTAINS(out, "nesting deeper than");
  /* the host globals a plain luaL_loadbuffer chunk sees are sandboxed */
  ASSERT_EQ(luaL_loadstring(L, "return io"), LUA_OK);
  ASSERT(orch__lua_pcall(L, 0, 1, err, sizeof err) != ORCH_OK);
  ASSERT_CONTAINS(err, "nonexistent global variable 'io'");
  ASSERT_EQ(luaL_loadstring(L, "return type(dofile)"), LUA_OK);
  ASSERT(orch__lua_pcall(L, 0, 1, err, sizeof err) != ORCH_OK);
  ASSERT_CONTAINS(err, "'dofile'");
  /* still usable */
  ASSERT_EQ(run_chunk(L, "return 1 + 1", out, sizeof out), ORCH_OK);
  ASSERT_STR_EQ(out, "2");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(sandbox_lua_new_sandbox_state_for_plans_and_steps) {
  char err[512], out[512];
  orch__config c;
  orch__config_defaults(&c);
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  ASSERT_EQ(run_chunk(L, "return #string.rep('ab', 3)", out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "6");
  ASSERT(run_chunk(L, "return require 'routing.complexity'", out,
                   sizeof out) != ORCH_OK);
  ASSERT_CONTAINS(out, "no module 'routing.complexity'");
  ASSERT(run_chunk(L, "error('boom')", out, sizeof out) == ORCH_ESCRIPT);
  ASSERT_STR_EQ(out, "snippet:1: boom");
  ASSERT(run_chunk(L, "assert(false, 'no')", out, sizeof out));
  ASSERT_STR_EQ(out, "snippet:1: no");
  /* the global table: C may set names before a chunk runs, Lua may not */
  lua_pushinteger(L, 7);
  lua_setglobal(L, "seven");
  ASSERT_EQ(luaL_loadstring(L, "return seven * 6"), LUA_OK);
  ASSERT_EQ(orch__lua_pcall(L, 0, 1, err, sizeof err), ORCH_OK);
  ASSERT_EQ(lua_tointeger(L, -1), 42);
  lua_pop(L, 1);
  ASSERT_EQ(luaL_loadstring(L, "x = 1"), LUA_OK);
  ASSERT_EQ(orch__lua_pcall(L, 0, 0, err, sizeof err), ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "create global variable 'x'");
  ASSERT_EQ(luaL_loadstring(L, "table.insert(_G, 1)"), LUA_OK);
  ASSERT_EQ(orch__lua_pcall(L, 0, 0, err, sizeof err), ORCH_ESCRIPT);
  ASSERT_EQ(lua_gettop(L), 0);
  orch__lua_close(L);
  orch__lua_close(NULL);
  orch__config_deinit(&c);
}

TEST(sandbox_memory_bomb_stops_at_the_cap) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_mem_max = 16u << 20;
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  long before = rss_kb();
  /* one huge string */
  ASSERT_EQ(run_chunk(L, "return #string.rep('x', 1e9)", out, sizeof out),
            ORCH_ELIMIT);
  ASSERT_CONTAINS(out, "memory cap exceeded (16777216 bytes)");
  /* doubling, inside pcall */
  ASSERT_EQ(run_chunk(L,
                      "local s = 'x' pcall(function() while true do s = s "
                      ".. s end end) return #s",
                      out, sizeof out),
            ORCH_OK);
  /* many live strings, so the cap is really reached by live data */
  ASSERT_EQ(run_chunk(L,
                      "local t = {} for i = 1, 1e8 do t[i] = "
                      "string.rep('y', 1000) .. i end",
                      out, sizeof out),
            ORCH_ELIMIT);
  ASSERT_CONTAINS(out, "memory cap exceeded");
  ASSERT_EQ(run_chunk(L, "return table.concat({string.rep('z', 1e6), "
                         "string.rep('z', 1e6)}) .. string.rep('w', 5e7)",
                      out, sizeof out),
            ORCH_ELIMIT);
  long grew_kb = rss_kb() - before;
  if (!UNDER_ASAN) {
    /* the process grew by no more than the cap (plus malloc slack) */
    if (grew_kb > (16 << 10) + (4 << 10))
      orch_test_fail(__FILE__, __LINE__, "RSS grew by %ld kB", grew_kb);
  }
  ASSERT_EQ(run_chunk(L, "return 40 + 2", out, sizeof out), ORCH_OK);
  ASSERT_STR_EQ(out, "42");
  orch__lua_close(L);
  orch__config_deinit(&c);
}

TEST(sandbox_budget_stops_infinite_loops_even_inside_pcall) {
  char *dir = tmpdir_new(), err[512], out[64];
  put(dir, "routing/loop.lua",
      "local M = {}\n"
      "function M.spin() while true do end end\n"
      "function M.sneaky()\n"
      "  for i = 1, 100 do\n"
      "    pcall(function() while true do end end)\n"
      "  end\n"
      "  return 'escaped'\n"
      "end\n"
      "function M.xp()\n"
      "  local ok = xpcall(function() while true do end end,\n"
      "                    function(m) while true do end end)\n"
      "  return 'escaped'\n"
      "end\n"
      "function M.ok() return 'fine' end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  c.lua_budget = 2000; /* 2M instructions */
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  const char *fns[] = {"spin", "sneaky", "xp"};
  for (size_t i = 0; i < 3; i++) {
    double t0 = now_ms();
    ASSERT_EQ(orch__policy_call_string(s, "routing.loop", fns[i], NULL, out,
                                       sizeof out, err, sizeof err),
              ORCH_ELIMIT);
    ASSERT(now_ms() - t0 < 1000);
    ASSERT_CONTAINS(err, "routing/loop.lua:");
    ASSERT_CONTAINS(err, "instruction budget exceeded (2000000 "
                         "instructions) in loop.");
  }
  ASSERT_EQ(orch__policy_call_string(s, "routing.loop", "ok", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "fine");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* The budget is armed by a watchdog signal once a call has run a couple of
 * milliseconds; a host thread that blocked every signal still gets it (the
 * engine unblocks its one signal), and no hook is left set after a call. */
typedef struct spin_ctx {
  orch__policy *p;
  int rc_spin, rc_ok, rc_work;
  double spin_ms;
  char err[512], out[64];
  bool hook_left;
} spin_ctx;

static void *spin_thread(void *arg) {
  spin_ctx *c = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  char err[512];
  orch__lstate *s = orch__lstate_new(c->p, err, sizeof err);
  if (!s) return NULL;
  double t0 = now_ms();
  c->rc_spin = orch__policy_call_string(s, "routing.loop", "spin", NULL,
                                        c->out, sizeof c->out, c->err,
                                        sizeof c->err);
  c->spin_ms = now_ms() - t0;
  c->hook_left = lua_gethook(orch__lstate_L(s)) != NULL;
  /* about 3M instructions, some ms: more than a tick, less than the budget */
  c->rc_work = orch__policy_call_string(s, "routing.loop", "work", NULL,
                                        c->out, sizeof c->out, err,
                                        sizeof err);
  c->hook_left |= lua_gethook(orch__lstate_L(s)) != NULL;
  c->rc_ok = orch__policy_call_string(s, "routing.loop", "ok", NULL, c->out,
                                      sizeof c->out, err, sizeof err);
  orch__lstate_free(s);
  return NULL;
}

TEST(budget_arms_late_even_on_a_thread_that_blocked_signals) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "routing/loop.lua",
      "local M = {}\n"
      "function M.spin() while true do end end\n"
      "function M.work() local n = 0 for i = 1, 1000000 do n = n + i end\n"
      "  return tostring(n) end\n"
      "function M.ok() return 'fine' end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  c.lua_budget = 5000; /* 5M instructions */
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  spin_ctx ctx = {.p = p, .rc_spin = -1, .rc_ok = -1, .rc_work = -1};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, spin_thread, &ctx), 0);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  if (pthread_timedjoin_np(t, NULL, &until) != 0) {
    /* still spinning: the budget never armed; the thread keeps ctx and p */
    orch_test_fail(__FILE__, __LINE__, "the loop was not stopped in 10 s");
    return;
  }
  ASSERT_EQ(ctx.rc_spin, ORCH_ELIMIT);
  ASSERT_CONTAINS(ctx.err, "instruction budget exceeded (5000000 "
                           "instructions) in loop.spin()");
  ASSERT(ctx.spin_ms < 2000);
  ASSERT_EQ(ctx.rc_work, ORCH_OK);
  ASSERT_EQ(ctx.rc_ok, ORCH_OK);
  ASSERT_STR_EQ(ctx.out, "fine");
  ASSERT(!ctx.hook_left);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- typed rewards ------------------------------------------------------ */

TEST(reward_hook_results_are_typed) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "rewards/bad.lua",
      "local M = {}\n"
      "function M.none() end\n"
      "function M.nan() return 0/0 end\n"
      "function M.inf() return 1/0 end\n"
      "function M.ninf() return -1/0 end\n"
      "function M.str() return '0.5' end\n"
      "function M.tbl() return {} end\n"
      "function M.good() return 0.25 end\n"
      "function M.group() return {se = 0.67, research = 0.585} end\n"
      "function M.group_nan() return {se = 0.67, research = 0/0} end\n"
      "function M.group_str() return {se = '1'} end\n"
      "function M.adv() return {0.5, -0.5} end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  static const struct {
    const char *fn, *want;
  } cases[] = {{"none", "bad.none() returned nil, expected a finite number"},
               {"nan", "bad.nan() returned NaN"},
               {"inf", "bad.inf() returned inf"},
               {"ninf", "bad.ninf() returned -inf"},
               {"str", "bad.str() returned a string"},
               {"tbl", "bad.tbl() returned a table"}};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(cases); i++) {
    double v = 123;
    int rc = orch__policy_call_number(s, "rewards.bad", cases[i].fn, NULL,
                                      &v, err, sizeof err);
    if (rc != ORCH_ESCRIPT || !strstr(err, cases[i].want) ||
        !strstr(err, "rewards/bad.lua: ") || v != 0)
      orch_test_fail(__FILE__, __LINE__, "%s: rc %d v %g '%s'", cases[i].fn,
                     rc, v, err);
  }
  double v = 0;
  ASSERT_EQ(orch__policy_call_number(s, "rewards.bad", "good", NULL, &v, err,
                                     sizeof err),
            ORCH_OK);
  ASSERT(v == 0.25);
  json_t *out = NULL;
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.bad", "group", NULL, &out,
                                      err, sizeof err),
            ORCH_OK);
  ASSERT(fabs(json_real_value(json_object_get(out, "se")) - 0.67) < 1e-9);
  ASSERT(fabs(json_real_value(json_object_get(out, "research")) - 0.585) <
         1e-9);
  json_decref(out);
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.bad", "adv", NULL, &out,
                                      err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(json_array_size(out), 2);
  json_decref(out);
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.bad", "group_nan", NULL,
                                      &out, err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT(out == NULL);
  ASSERT_CONTAINS(err, "bad.group_nan() returned NaN for 'research'");
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.bad", "group_str", NULL,
                                      &out, err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "returned a string for 'se'");
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.bad", "none", NULL, &out,
                                      err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "returned nil");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- reload ------------------------------------------------------------- */

static const char *version_src(int v, int broken) {
  static char buf[512];
  if (broken == 1) /* does not compile */
    snprintf(buf, sizeof buf,
             "local M = {}\nfunction M.classify(t)\n  return 'v%d'\n"
             "end end\nreturn M\n", v);
  else if (broken == 2) /* compiles, fails its selftest */
    snprintf(buf, sizeof buf,
             "local M = {}\nfunction M.classify(t) return 'broken' end\n"
             "function M.selftest()\n  assert(M.classify{} ~= 'broken', "
             "'serves broken')\nend\nreturn M\n");
  else
    snprintf(buf, sizeof buf,
             "local M = {}\nfunction M.classify(t) return 'v%d' end\n"
             "function M.selftest() assert(M.classify{} == 'v%d') end\n"
             "return M\n", v, v);
  return buf;
}

TEST(reload_picks_up_rewrites_and_refuses_broken_ones) {
  char *dir = tmpdir_new(), err[512], out[64], last[1024];
  put(dir, "routing/complexity.lua", version_src(1, 0));
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v1");
  ASSERT(!orch__lstate_sync(s));
  /* a good rewrite: a new generation, seen after the step boundary */
  put(dir, "routing/complexity.lua", version_src(2, 0));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 2);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v1"); /* not mid-step */
  ASSERT(orch__lstate_sync(s));
  ASSERT_EQ(orch__lstate_generation(s), 2);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v2");
  /* a syntax error: refused with file:line, v2 keeps serving */
  put(dir, "routing/complexity.lua", version_src(3, 1));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 2);
  ASSERT_CONTAINS(last, "routing/complexity.lua:4:");
  ASSERT_CONTAINS(last, "<eof> expected near 'end'");
  ASSERT(!orch__lstate_sync(s));
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v2");
  /* a failing selftest: refused too */
  put(dir, "routing/complexity.lua", version_src(4, 2));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 2);
  ASSERT_CONTAINS(last, "routing/complexity.lua:4: serves broken");
  ASSERT_CONTAINS(last, "complexity.selftest()");
  /* fixed: published, error cleared */
  put(dir, "routing/complexity.lua", version_src(5, 0));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 3);
  ASSERT_STR_EQ(last, "");
  ASSERT(orch__lstate_sync(s));
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v5");
  /* a new module appears; a removed one goes */
  put(dir, "rewards/step.lua", "return {reward = function() return 1 end}");
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 4);
  orch__lstate_sync(s);
  double v;
  ASSERT_EQ(orch__policy_call_number(s, "rewards.step", "reward", NULL, &v,
                                     err, sizeof err),
            ORCH_OK);
  char *path = orch__asprintf("%s/rewards/step.lua", dir);
  unlink(path);
  free(path);
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 5);
  orch__lstate_sync(s);
  ASSERT_EQ(orch__policy_call_number(s, "rewards.step", "reward", NULL, &v,
                                     err, sizeof err),
            ORCH_ENOTFOUND);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(reload_rejects_selftest_that_loops_forever_within_100ms) {
  char *dir = tmpdir_new(), err[512], out[64], last[1024];
  put(dir, "routing/complexity.lua", version_src(1, 0));
  orch__config c = test_cfg(dir); /* the default budget */
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  put(dir, "routing/complexity.lua",
      "local M = {}\nfunction M.classify() return 'hang' end\n"
      "function M.selftest()\n  while true do end\nend\nreturn M\n");
  /* The check runs on this thread: its CPU time is what the budget bounds
   * (wall time also counts other processes on a shared machine). */
  struct timespec c0, c1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  double t0 = now_ms();
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  double took = now_ms() - t0;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  double cpu = (double)(c1.tv_sec - c0.tv_sec) * 1e3 +
               (double)(c1.tv_nsec - c0.tv_nsec) / 1e6;
  if (!UNDER_ASAN && (cpu > 100 || took > 1000))
    orch_test_fail(__FILE__, __LINE__, "rejected after %.1f ms (%.1f ms "
                   "CPU)", took, cpu);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 1);
  ASSERT_CONTAINS(last, "routing/complexity.lua:4: instruction budget "
                        "exceeded (10000000 instructions) in "
                        "complexity.selftest()");
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v1");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(startup_leaves_out_a_broken_module_and_reports_it) {
  char *dir = tmpdir_new(), err[512], last[1024], mods[256];
  put(dir, "routing/complexity.lua", COMPLEXITY);
  put(dir, "rewards/group.lua", "return {reward = function( end}\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 1);
  ASSERT_CONTAINS(last, "rewards/group.lua:1:");
  ASSERT_EQ(orch__policy_modules(p, mods, sizeof mods), 1);
  ASSERT_STR_EQ(mods, "routing.complexity");
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- the watch: a loop on a thread of the test's own -------------------- */

typedef struct looper {
  uv_loop_t loop;
  uv_async_t stop;
  orch__policy *p;
  pthread_t thr;
} looper;

static void stop_cb(uv_async_t *a) {
  looper *l = a->data;
  orch__policy_unwatch(l->p);
  uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg) {
  looper *l = arg;
  uv_run(&l->loop, UV_RUN_DEFAULT);
  return NULL;
}

static int looper_start(looper *l, orch__policy *p) {
  l->p = p;
  if (uv_loop_init(&l->loop)) return -1;
  uv_async_init(&l->loop, &l->stop, stop_cb);
  l->stop.data = l;
  /* the loop is not running yet: this thread may act as its thread */
  if (orch__policy_watch(p, &l->loop)) return -1;
  return pthread_create(&l->thr, NULL, loop_main, l);
}

static void looper_stop(looper *l) {
  uv_async_send(&l->stop);
  pthread_join(l->thr, NULL);
  uv_loop_close(&l->loop);
}

/* Waits until s serves the wanted tier (syncing like a worker between
 * steps); returns the ms it took, or -1. */
static double wait_for(orch__lstate *s, const char *want, double limit_ms) {
  double t0 = now_ms();
  char out[64], err[256];
  while (now_ms() - t0 < limit_ms) {
    orch__lstate_sync(s);
    if (orch__policy_call_string(s, "routing.complexity", "classify", NULL,
                                 out, sizeof out, err, sizeof err) ==
            ORCH_OK &&
        !strcmp(out, want))
      return now_ms() - t0;
    usleep(500);
  }
  return -1;
}

TEST(watch_reloads_a_rewrite_within_a_fraction_of_a_second) {
  char *dir = tmpdir_new(), err[512], last[1024];
  put(dir, "routing/complexity.lua", version_src(1, 0));
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  looper l;
  ASSERT_EQ(looper_start(&l, p), 0);
  usleep(50 * 1000);
  put(dir, "routing/complexity.lua", version_src(2, 0));
  double ms = wait_for(s, "v2", 2000);
  ASSERT(ms >= 0);
  if (!UNDER_ASAN && ms > 250)
    orch_test_fail(__FILE__, __LINE__, "reload took %.1f ms", ms);
  /* broken: refused, v2 serves */
  put(dir, "routing/complexity.lua", version_src(3, 1));
  double t0 = now_ms();
  while (now_ms() - t0 < 2000) {
    orch__policy_last_error(p, last, sizeof last);
    if (last[0]) break;
    usleep(1000);
  }
  ASSERT_CONTAINS(last, "routing/complexity.lua:4:");
  ASSERT(wait_for(s, "v2", 10) >= 0);
  /* a new subdirectory is watched too */
  put(dir, "policies/retry.lua", "return {max = function() return 3 end}");
  t0 = now_ms();
  while (now_ms() - t0 < 2000) {
    char mods[256];
    if (orch__policy_modules(p, mods, sizeof mods) == 2) break;
    usleep(1000);
  }
  char mods[256];
  ASSERT_EQ(orch__policy_modules(p, mods, sizeof mods), 2);
  looper_stop(&l);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* The scripts directory replaced under the watch: the deploy moves a fresh
 * copy over it (mv), or points a symlink at a new release. The watch must
 * follow the path, not the directory it first saw. */

/* A copy of version v of routing/complexity.lua in base/name. */
static char *release(const char *base, const char *name, int v) {
  char *d = orch__asprintf("%s/%s", base, name);
  mkdir(d, 0755);
  put(d, "routing/complexity.lua", version_src(v, 0));
  return d;
}

TEST(watch_follows_a_scripts_directory_replaced_by_mv) {
  char *base = tmpdir_new(), err[512];
  char *dir = release(base, "r2", 1);
  char *fresh = release(base, "r2.new", 2);
  char *old = orch__asprintf("%s/r2.old", base);
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  looper l;
  ASSERT_EQ(looper_start(&l, p), 0);
  ASSERT(wait_for(s, "v1", 10) >= 0);
  usleep(50 * 1000);
  ASSERT_EQ(rename(dir, old), 0);
  ASSERT_EQ(rename(fresh, dir), 0);
  /* the swap itself is seen (the moved root reports it) */
  ASSERT(wait_for(s, "v2", 5000) >= 0);
  /* and an edit in the new directory is seen too: the watch moved with
   * the path (before, it stayed on r2.old and this never reloaded) */
  usleep(50 * 1000);
  put(dir, "routing/complexity.lua", version_src(3, 0));
  ASSERT(wait_for(s, "v3", 5000) >= 0);
  /* an edit in the old directory changes nothing */
  put(old, "routing/complexity.lua", version_src(4, 0));
  usleep(300 * 1000);
  ASSERT(wait_for(s, "v3", 10) >= 0);
  /* a subdirectory replaced the same way is followed too */
  char *sub = orch__asprintf("%s/routing", dir);
  char *subold = orch__asprintf("%s/routing.old", dir);
  char *subnew = orch__asprintf("%s/routing.new", dir);
  mkdir(subnew, 0755);
  put(subnew, "complexity.lua", version_src(5, 0));
  ASSERT_EQ(rename(sub, subold), 0);
  ASSERT_EQ(rename(subnew, sub), 0);
  ASSERT(wait_for(s, "v5", 5000) >= 0);
  usleep(50 * 1000);
  put(dir, "routing/complexity.lua", version_src(6, 0));
  ASSERT(wait_for(s, "v6", 5000) >= 0);
  /* a root missing for a while (its watches dropped; nothing unloads) is
   * watched again when a directory is moved back in */
  char *gone = orch__asprintf("%s/r2.gone", base);
  char *back = release(base, "r2.back", 7);
  ASSERT_EQ(rename(dir, gone), 0);
  usleep(300 * 1000);
  ASSERT(wait_for(s, "v6", 10) >= 0);
  ASSERT_EQ(rename(back, dir), 0);
  ASSERT(wait_for(s, "v7", 5000) >= 0);
  usleep(50 * 1000);
  put(dir, "routing/complexity.lua", version_src(8, 0));
  ASSERT(wait_for(s, "v8", 5000) >= 0);
  free(gone);
  free(back);
  looper_stop(&l);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(base);
  free(sub);
  free(subold);
  free(subnew);
  free(old);
  free(fresh);
  free(dir);
  free(base);
}

TEST(watch_follows_a_scripts_symlink_swapped_to_a_new_release) {
  char *base = tmpdir_new(), err[512];
  char *r1 = release(base, "release-1", 1);
  char *r2 = release(base, "release-2", 2);
  char *link = orch__asprintf("%s/scripts", base);
  char *tmp = orch__asprintf("%s/.scripts.tmp", base);
  ASSERT_EQ(symlink("release-1", link), 0);
  orch__config c = test_cfg(link);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  looper l;
  ASSERT_EQ(looper_start(&l, p), 0);
  ASSERT(wait_for(s, "v1", 10) >= 0);
  usleep(50 * 1000);
  /* `ln -sfn release-2 scripts`, done atomically as deploy tools do: no
   * event reaches a watch inside either release */
  ASSERT_EQ(symlink("release-2", tmp), 0);
  ASSERT_EQ(rename(tmp, link), 0);
  /* the periodic check (every 2 s) notices; bounded for a loaded box */
  ASSERT(wait_for(s, "v2", 8000) >= 0);
  usleep(50 * 1000);
  put(link, "routing/complexity.lua", version_src(3, 0));
  ASSERT(wait_for(s, "v3", 5000) >= 0);
  /* editing the release no longer linked changes nothing */
  put(r1, "routing/complexity.lua", version_src(4, 0));
  usleep(300 * 1000);
  ASSERT(wait_for(s, "v3", 10) >= 0);
  looper_stop(&l);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(base);
  free(tmp);
  free(link);
  free(r2);
  free(r1);
  free(base);
}

/* 20,000 calls from two threads while complexity.lua is rewritten 50
 * times, some rewrites broken: no call fails, no call sees a broken
 * version, every generation a call ran under is one that was published
 * after its check, and each generation means one version. */
#define LOAD_CALLS 10000
#define MAX_GEN 128

typedef struct loadw {
  orch__policy *p;
  atomic_bool *writer_done;
  long calls, failures, broken;
  int gen_version[MAX_GEN]; /* generation -> version it served */
  bool conflict;
  char first_err[256];
} loadw;

static void *load_main(void *arg) {
  loadw *w = arg;
  char err[256], out[64];
  orch__lstate *s = orch__lstate_new(w->p, err, sizeof err);
  if (!s) {
    w->failures++;
    return NULL;
  }
  const char *keys[] = {"title", "instructions"};
  const char *vals[] = {"t", "i"};
  while (w->calls < LOAD_CALLS || !atomic_load(w->writer_done)) {
    orch__lstate_sync(s); /* the step boundary */
    unsigned g = orch__lstate_generation(s);
    int rc = orch__policy_call_fields(s, "routing.complexity", "classify",
                                      keys, vals, 2, out, sizeof out, err,
                                      sizeof err);
    w->calls++;
    if (rc) {
      if (!w->failures) snprintf(w->first_err, sizeof w->first_err, "%s", err);
      w->failures++;
      continue;
    }
    if (!strcmp(out, "broken")) {
      w->broken++;
      continue;
    }
    int v = atoi(out + 1);
    if (g < MAX_GEN) {
      if (w->gen_version[g] && w->gen_version[g] != v) w->conflict = true;
      w->gen_version[g] = v;
    }
    if (w->calls % 8 == 0) usleep(20);
  }
  orch__lstate_free(s);
  return NULL;
}

TEST(reload_under_load_loses_no_call_and_never_serves_broken) {
  char *dir = tmpdir_new(), err[512], last[1024];
  put(dir, "routing/complexity.lua", version_src(0, 0));
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  looper l;
  ASSERT_EQ(looper_start(&l, p), 0);
  atomic_bool done;
  atomic_init(&done, false);
  loadw w[2];
  pthread_t t[2];
  memset(w, 0, sizeof w);
  for (int i = 0; i < 2; i++) {
    w[i].p = p;
    w[i].writer_done = &done;
    pthread_create(&t[i], NULL, load_main, &w[i]);
  }
  /* 50 rewrites; every 5th broken (alternately syntax, selftest). The
   * writer waits for each to be decided so none is coalesced away. */
  int published[MAX_GEN] = {0}; /* generation -> version */
  published[1] = 0;
  int good = 0, bad = 0;
  for (int v = 1; v <= 50; v++) {
    int broken = v % 5 == 0 ? (v % 10 == 0 ? 2 : 1) : 0;
    unsigned g0 = orch__policy_generation(p);
    put(dir, "routing/complexity.lua", version_src(v, broken));
    double t0 = now_ms();
    for (;;) {
      unsigned g = orch__policy_generation(p);
      orch__policy_last_error(p, last, sizeof last);
      if (!broken && g != g0) {
        if (g < MAX_GEN) published[g] = v;
        good++;
        break;
      }
      if (broken && last[0]) {
        bad++;
        ASSERT_EQ(orch__policy_generation(p), g0);
        break;
      }
      if (now_ms() - t0 > 3000) {
        orch_test_fail(__FILE__, __LINE__, "rewrite %d undecided", v);
        break;
      }
      usleep(500);
    }
  }
  atomic_store(&done, true);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  looper_stop(&l);
  ASSERT_EQ(good, 40);
  ASSERT_EQ(bad, 10);
  ASSERT_EQ(orch__policy_generation(p), 41);
  for (int i = 0; i < 2; i++) {
    if (w[i].failures)
      orch_test_fail(__FILE__, __LINE__, "thread %d: %ld failed calls: %s",
                     i, w[i].failures, w[i].first_err);
    ASSERT(w[i].calls >= LOAD_CALLS);
    ASSERT_EQ(w[i].broken, 0);
    ASSERT(!w[i].conflict);
    for (int g = 1; g < MAX_GEN; g++) {
      if (!w[i].gen_version[g]) continue;
      /* each generation served is one published, with its version */
      if (g > 41 || w[i].gen_version[g] != published[g])
        orch_test_fail(__FILE__, __LINE__, "gen %d served v%d, published "
                       "v%d", g, w[i].gen_version[g], published[g]);
    }
  }
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- orchestrate check ---------------------------------------------------- */

typedef struct reports {
  int n;
  char text[8][512];
} reports;

static void on_report(void *ud, const char *file, int line,
                      const char *msg) {
  reports *r = ud;
  if (r->n < 8)
    snprintf(r->text[r->n++], sizeof r->text[0], "%s:%d: %s", file, line,
             msg);
}

TEST(scripts_check_reports_file_line_for_each_failing_script) {
  char *dir = tmpdir_new();
  put(dir, "routing/complexity.lua", COMPLEXITY);
  put(dir, "rewards/group.lua", "local M = {}\nfunction M.reward(\nreturn M\n");
  put(dir, "policies/retry.lua",
      "local M = {}\nfunction M.selftest()\n  assert(1 == 2, 'one is not "
      "two')\nend\nreturn M\n");
  put(dir, "policies/uses.lua",
      "local c = require 'routing.complexity'\nlocal M = {}\n"
      "function M.selftest() return c.classify{title='architect'} == "
      "'strong' end\nreturn M\n");
  reports r;
  memset(&r, 0, sizeof r);
  ASSERT_EQ(orch_scripts_check(NULL, dir, on_report, &r), 2);
  ASSERT_EQ(r.n, 2);
  char want[600];
  snprintf(want, sizeof want, "%s/policies/retry.lua:3: one is not two", dir);
  ASSERT_STR_EQ(r.text[0], want);
  snprintf(want, sizeof want, "%s/rewards/group.lua:3:", dir);
  ASSERT_CONTAINS(r.text[1], want);
  memset(&r, 0, sizeof r);
  ASSERT_EQ(orch_scripts_check(NULL, "/nonexistent/dir", on_report, &r),
            ORCH_ENOTFOUND);
  ASSERT_EQ(r.n, 1);
  rm_rf(dir);
  free(dir);
}

/* A module that fails only because one it requires does gets one line
 * naming that module, after the module's own error, not the same error
 * twice. */
TEST(scripts_check_names_the_module_a_failure_comes_from) {
  char *dir = tmpdir_new();
  put(dir, "routing/complexity.lua", "local M = {}\nlocal x = = 1\nreturn M\n");
  put(dir, "policies/uses.lua",
      "local c = require 'routing.complexity'\nlocal M = {}\nreturn M\n");
  put(dir, "policies/fine.lua", "return {}\n");
  reports r;
  memset(&r, 0, sizeof r);
  ASSERT_EQ(orch_scripts_check(NULL, dir, on_report, &r), 2);
  ASSERT_EQ(r.n, 2);
  char want[600];
  snprintf(want, sizeof want, "%s/routing/complexity.lua:2: ", dir);
  ASSERT_CONTAINS(r.text[0], want);
  snprintf(want, sizeof want,
           "%s/policies/uses.lua:0: fails only because routing.complexity "
           "does (%s/routing/complexity.lua, above)",
           dir, dir);
  ASSERT_STR_EQ(r.text[1], want);
  rm_rf(dir);
  free(dir);
}

/* ---- the shipped scripts through the engine ------------------------------ */

TEST(shipped_scripts_serve_through_the_engine) {
  struct stat st;
  if (stat("scripts/routing/complexity.lua", &st) != 0) return; /* none */
  char err[512], tier[32];
  orch__config c = test_cfg("scripts");
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  char last[1024];
  orch__policy_last_error(p, last, sizeof last);
  ASSERT_STR_EQ(last, "");
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT(s);
  const char *keys[] = {"title", "instructions"};
  const char *fast[] = {"Format this simple document", "Convert to markdown"};
  const char *strong[] = {"Architect the security system",
                          "Design auth flow"};
  ASSERT_EQ(orch__policy_call_fields(s, "routing.complexity", "classify",
                                     keys, fast, 2, tier, sizeof tier, err,
                                     sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(tier, "fast");
  ASSERT_EQ(orch__policy_call_fields(s, "routing.complexity", "classify",
                                     keys, strong, 2, tier, sizeof tier, err,
                                     sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(tier, "strong");
  json_t *arg = json_loads(
      "{\"success\": true, \"participants\": [\"se\", \"research\"],"
      " \"handoffs\": [{\"from\": \"se\", \"to\": \"research\","
      " \"context\": 0.85}]}", 0, NULL);
  json_t *out = NULL;
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.group", "reward", arg, &out,
                                      err, sizeof err),
            ORCH_OK);
  ASSERT(fabs(json_number_value(json_object_get(out, "se")) - 0.67) < 1e-9);
  ASSERT(fabs(json_number_value(json_object_get(out, "research")) - 0.585) <
         1e-9);
  json_decref(out);
  json_decref(arg);
  arg = json_pack("{s:s}", "name", "find_users");
  ASSERT_EQ(orch__policy_call(s, "routing.agents", "route", arg, &out, err,
                              sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(json_string_value(json_object_get(out, "primary")),
                "code-archaeologist");
  json_decref(out);
  json_decref(arg);
  double lim = 0;
  arg = json_string("emergency");
  ASSERT_EQ(orch__policy_call_limit(s, "routing.agents", "parallel_limit",
                                    arg, &lim, err, sizeof err),
            ORCH_OK);
  ASSERT(isinf(lim));
  json_decref(arg);
  arg = json_string("validation");
  ASSERT_EQ(orch__policy_call_limit(s, "routing.agents", "parallel_limit",
                                    arg, &lim, err, sizeof err),
            ORCH_OK);
  ASSERT(lim == 1);
  json_decref(arg);
  arg = json_string("nope");
  ASSERT_EQ(orch__policy_call_limit(s, "routing.agents", "parallel_limit",
                                    arg, &lim, err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "unknown phase 'nope'");
  json_decref(arg);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
}

/* ---- through the runtime: lua steps while the scripts are rewritten -------- */

typedef struct rewriter {
  const char *dir;
  orch_runtime *rt;
  atomic_bool *stop;
  int published[MAX_GEN]; /* generation -> version */
  int good, bad;
} rewriter;

static void *rewrite_main(void *arg) {
  rewriter *r = arg;
  char last[1024];
  for (int v = 1; v <= 50 && !atomic_load(r->stop); v++) {
    int broken = v % 5 == 0 ? (v % 10 == 0 ? 2 : 1) : 0;
    unsigned g0 = orch_runtime_scripts(r->rt, last, sizeof last);
    put(r->dir, "routing/complexity.lua", version_src(v, broken));
    double t0 = now_ms();
    while (now_ms() - t0 < 3000) {
      unsigned g = orch_runtime_scripts(r->rt, last, sizeof last);
      if (!broken && g != g0) {
        if (g < MAX_GEN) r->published[g] = v;
        r->good++;
        break;
      }
      if (broken && last[0]) {
        r->bad++;
        break;
      }
      usleep(500);
    }
  }
  return NULL;
}

TEST(runtime_lua_steps_under_reload_lose_nothing_and_never_run_broken) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "routing/complexity.lua", version_src(0, 0));
  orch_runtime *rt = NULL;
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "scripts_dir", dir, err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "workers", "2", err, sizeof err), ORCH_OK);
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  enum { N = 20000 };
  for (int i = 0; i < N; i++) {
    char step[256];
    snprintf(step, sizeof step,
             "{\"id\": \"s%d\", \"kind\": \"lua\", \"code\": \"for i = 1, "
             "30000 do end return require('routing.complexity')."
             "classify{}\"}", i);
    ASSERT_EQ(orch_graph_add_json(g, step, err, sizeof err), ORCH_OK);
  }
  /* the first run starts the runtime (and the engine); a tiny warm-up */
  orch_graph *warm = NULL;
  orch_graph_new(&warm);
  orch_graph_add_sleep(warm, "w", 1);
  ASSERT_EQ(orch_run(rt, warm, err, sizeof err), ORCH_OK);
  orch_graph_free(warm);
  if (orch_runtime_scripts(rt, NULL, 0) == 0) {
    /* the core has not wired the engine in (docs/policy.md) */
    fprintf(stderr, "  skipped: the runtime does not create the policy "
                    "engine yet (docs/policy-wiring.patch)\n");
    orch_graph_free(g);
    orch_runtime_free(rt);
    rm_rf(dir);
    free(dir);
    return;
  }
  atomic_bool stop;
  atomic_init(&stop, false);
  rewriter r;
  memset(&r, 0, sizeof r);
  r.dir = dir;
  r.rt = rt;
  r.stop = &stop;
  pthread_t t;
  pthread_create(&t, NULL, rewrite_main, &r);
  int rc = orch_run(rt, g, err, sizeof err);
  atomic_store(&stop, true);
  pthread_join(t, NULL);
  ASSERT_EQ(rc, ORCH_OK);
  int seen[MAX_GEN] = {0}, ngens = 0;
  for (size_t i = 0; i < N; i++) {
    ASSERT_EQ(orch_step_status(g, i), ORCH_PASSED);
    const char *out = orch_step_output(g, i);
    unsigned gen = orch_step_generation(g, i);
    ASSERT(out && out[0] == 'v');
    ASSERT(gen >= 1 && gen < MAX_GEN);
    int v = atoi(out + 1);
    if (!seen[gen]) ngens++;
    seen[gen] = 1;
    /* the generation recorded is the one whose version ran */
    if (gen > 1 && r.published[gen] && r.published[gen] != v)
      orch_test_fail(__FILE__, __LINE__, "step %zu: gen %u ran v%d, "
                     "published v%d", i, gen, v, r.published[gen]);
    if (gen == 1 && v != 0)
      orch_test_fail(__FILE__, __LINE__, "gen 1 ran v%d", v);
    if (v % 5 == 0 && v != 0)
      orch_test_fail(__FILE__, __LINE__, "a broken version (v%d) ran", v);
  }
  ASSERT(ngens > 1); /* reloads really happened during the run */
  fprintf(stderr, "  %d steps ran under %d generations; %d rewrites "
          "published, %d refused\n", N, ngens, r.good, r.bad);
  orch_graph_free(g);
  orch_runtime_free(rt);
  rm_rf(dir);
  free(dir);
}

/* ---- odd modules and odd results ---------------------------------------- */

TEST(policy_odd_modules_fail_cleanly_and_the_state_goes_on) {
  char *dir = tmpdir_new(), err[512], out[64];
  put(dir, "policies/a.lua", "local b = require 'policies.b'\nreturn {}\n");
  put(dir, "policies/b.lua", "local a = require 'policies.a'\nreturn {}\n");
  put(dir, "policies/notab.lua", "return 42\n");
  put(dir, "policies/odd.lua",
      "local M = {}\n"
      "function M.fn() return {f = print} end\n"
      "function M.deep() local function f() return 1 + f() end return f() "
      "end\n"
      "function M.errtab() error(setmetatable({}, {__tostring = function() "
      "return 'custom' end})) end\n"
      "function M.errloop() error(setmetatable({}, {__tostring = function() "
      "while true do end end})) end\n"
      "function M.nested() return json.encode(json.decode(string.rep('[', "
      "1000) .. string.rep(']', 1000))) end\n"
      "function M.ok() return 'ok' end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  c.lua_budget = 1000;
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  char mods[256];
  orch__policy_modules(p, mods, sizeof mods);
  ASSERT_STR_EQ(mods, "policies.odd"); /* the cycle and 42 left out */
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  json_t *j = NULL;
  ASSERT_EQ(orch__policy_call(s, "policies.odd", "fn", NULL, &j, err,
                              sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "not JSON");
  ASSERT(orch__policy_call_string(s, "policies.odd", "deep", NULL, out,
                                  sizeof out, err, sizeof err) != ORCH_OK);
  fprintf(stderr, "  deep recursion: %s\n", err);
  ASSERT_EQ(orch__policy_call_string(s, "policies.odd", "errtab", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "custom");
  ASSERT(orch__policy_call_string(s, "policies.odd", "errloop", NULL, out,
                                  sizeof out, err, sizeof err) != ORCH_OK);
  ASSERT_EQ(orch__policy_call_string(s, "policies.odd", "nested", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(err, "nesting deeper than");
  ASSERT_EQ(orch__policy_call_string(s, "policies.odd", "ok", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "ok");
  /* the same through orchestrate check: each named */
  reports r;
  memset(&r, 0, sizeof r);
  ASSERT_EQ(orch_scripts_check(NULL, dir, NULL, NULL), 3);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- lua steps: what a chunk returns is converted under the limits ------ */

/* Runs the lua steps codes[0..n) in one graph on one worker (so they share
 * its state); returns the graph for the caller to look at and free. */
static orch_graph *run_lua_steps(const char *const *codes, size_t n,
                                 const char *budget_k, int *rc) {
  char err[512];
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  *rc = -1;
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) return NULL;
  orch_runtime_set(rt, "workers", "1", err, sizeof err);
  orch_runtime_set(rt, "scripts_dir", "/nonexistent/orch-scripts", err,
                   sizeof err);
  if (budget_k) orch_runtime_set(rt, "lua_budget", budget_k, err, sizeof err);
  orch_graph_new(&g);
  for (size_t i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "s%zu", i);
    json_t *s = json_pack("{s:s, s:s, s:s}", "id", id, "kind", "lua", "code",
                          codes[i]);
    char *txt = json_dumps(s, JSON_COMPACT);
    orch_graph_add_json(g, txt, err, sizeof err);
    free(txt);
    json_decref(s);
  }
  *rc = orch_run(rt, g, err, sizeof err);
  orch_runtime_free(rt);
  return g;
}

TEST(lua_step_result_tostring_runs_protected_and_budgeted) {
  const char *codes[] = {
      "return nil, setmetatable({}, {__tostring = function() error('boom') "
      "end})",
      "return nil, setmetatable({}, {__tostring = function() while true do "
      "end end})",
      "return nil, setmetatable({}, {__tostring = function() return 'why' "
      "end})",
      "return 'fine'",
  };
  int rc;
  orch_graph *g = run_lua_steps(codes, 4, "1000", &rc);
  ASSERT(g);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "boom");
  ASSERT_EQ(orch_step_status(g, 1), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 1), "instruction budget exceeded");
  ASSERT_EQ(orch_step_status(g, 2), ORCH_FAILED);
  ASSERT_STR_EQ(orch_step_error(g, 2), "why");
  ASSERT_EQ(orch_step_status(g, 3), ORCH_PASSED);
  ASSERT_STR_EQ(orch_step_output(g, 3), "fine");
  orch_graph_free(g);
}

/* ---- converting results to JSON is bounded ------------------------------ */

TEST(json_result_of_shared_tables_stops_at_the_cap) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "policies/big.lua",
      "local M = {}\n"
      "function M.shared()\n"
      "  local t = {} for i = 1, 22 do t = {t, t} end return t\n"
      "end\n"
      "function M.small()\n"
      "  local t = {'x'} return {a = t, b = t, c = {t, t}}\n"
      "end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT(s);
  json_t *out = NULL;
  long rss0 = rss_kb();
  double t0 = now_ms();
  ASSERT_EQ(orch__policy_call(s, "policies.big", "shared", NULL, &out, err,
                              sizeof err),
            ORCH_ESCRIPT);
  double ms = now_ms() - t0;
  long grew_mb = (rss_kb() - rss0) / 1024;
  ASSERT(out == NULL);
  ASSERT_CONTAINS(err, "memory cap");
  fprintf(stderr, "  shared tables: %.0f ms, RSS +%ld MB: %s\n", ms, grew_mb,
          err);
  ASSERT(ms < (UNDER_ASAN ? 3000 : 500));
  ASSERT(grew_mb < 128); /* the cap is 64 MiB */
  /* a table shared a few times is still data */
  ASSERT_EQ(orch__policy_call(s, "policies.big", "small", NULL, &out, err,
                              sizeof err),
            ORCH_OK);
  char *txt = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS);
  ASSERT_STR_EQ(txt, "{\"a\":[\"x\"],\"b\":[\"x\"],\"c\":[[\"x\"],[\"x\"]]}");
  free(txt);
  json_decref(out);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(json_decode_stops_at_the_cap_before_jansson_allocates) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_mem_max = 32u << 20;
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  long rss0 = rss_kb();
  double t0 = now_ms();
  int rc = run_chunk(L,
                     "local s = '[' .. string.rep('[],', 4000000) .. '[]]' "
                     "return #json.decode(s)",
                     out, sizeof out);
  ASSERT_EQ(rc, ORCH_ELIMIT);
  long grew_mb = (rss_kb() - rss0) / 1024;
  fprintf(stderr, "  decode: %.0f ms, RSS +%ld MB: %s\n", now_ms() - t0,
          grew_mb, out);
  ASSERT_CONTAINS(out, "json.decode");
  ASSERT_CONTAINS(out, "memory cap");
  ASSERT(grew_mb < 64); /* the input string itself is 12 MB */
  /* inside pcall: the script sees the error, the state goes on */
  ASSERT_EQ(run_chunk(L,
                      "local s = '[' .. string.rep('{},', 4000000) .. '{}]' "
                      "local ok, e = pcall(json.decode, s) "
                      "return tostring(ok) .. ' ' .. e",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_CONTAINS(out, "false");
  ASSERT_CONTAINS(out, "memory cap");
  /* ordinary documents still decode, also many of them */
  ASSERT_EQ(run_chunk(L,
                      "local n = 0 for i = 1, 200 do "
                      "local t = json.decode('{\"a\": [1, 2.5, \"x\\\\u00e9\", "
                      "null, true], \"b\": {\"c\": \"d\"}}') "
                      "n = n + #t.a end "
                      "return n .. json.encode(json.decode("
                      "'{\"k\": [1, 2.5, \"\\\\u00e9\"]}'))",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "1000{\"k\":[1,2.5,\"\xc3\xa9\"]}");
  orch__lua_close(L);
  orch__config_deinit(&c);
}

/* ---- what a step can reach of the shared state is read-only ------------- */

TEST(sandbox_pairs_on_a_module_view_gives_no_way_to_the_module) {
  char *dir = tmpdir_new(), err[512], out[1024], tier[32];
  put(dir, "routing/complexity.lua", COMPLEXITY);
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  lua_State *L = orch__lstate_L(s);
  /* pairs still lists the module's functions */
  ASSERT_EQ(run_chunk(L,
                      "local n = {} for k in pairs(require "
                      "'routing.complexity') do n[#n + 1] = k end "
                      "table.sort(n) return table.concat(n, ',')",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "classify,selftest");
  /* the state it returns is the view, not the module */
  int rc = run_chunk(L,
                     "local _, real = pairs(require 'routing.complexity') "
                     "real.classify = function() return 'strong' end",
                     out, sizeof out);
  ASSERT(rc != ORCH_OK);
  ASSERT_CONTAINS(out, "module tables are read-only");
  const char *keys[] = {"title"};
  const char *vals[] = {"Format this simple document"};
  ASSERT_EQ(orch__policy_call_fields(s, "routing.complexity", "classify",
                                     keys, vals, 1, tier, sizeof tier, err,
                                     sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(tier, "fast");
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* A table inside a module (its weights, a keyword list) is read-only
 * through the module's view too, at any depth and through pairs; reading
 * it works as before. */
TEST(sandbox_nested_module_tables_are_read_only) {
  char *dir = tmpdir_new(), err[512], out[1024];
  put(dir, "rewards/w.lua",
      "local M = {weights = {a = 1, list = {10, 20, 30}}}\n"
      "function M.get() return M.weights.a + M.weights.list[2] end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  lua_State *L = orch__lstate_L(s);
  static const char *const writes[] = {
      "require('rewards.w').weights.a = 100",
      "require('rewards.w').weights.list[2] = 100",
      ("for k, v in pairs(require('rewards.w').weights) do "
       "if type(v) == 'table' then v[2] = 100 end end"),
      "rawset(require('rewards.w').weights, 'a', 100)",
  };
  for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
    int rc = run_chunk(L, writes[i], out, sizeof out);
    ASSERT(rc != ORCH_OK);
  }
  ASSERT_EQ(run_chunk(L,
                      "local w = require('rewards.w') "
                      "local n = 0 for _ in pairs(w.weights) do n = n + 1 end "
                      "return tostring(w.get()) .. ' ' .. #w.weights.list .. "
                      "' ' .. n .. ' ' .. tostring(w.weights.list == "
                      "w.weights.list)",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "21 3 2 true"); /* unchanged; one view per table */
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(sandbox_library_tables_are_read_only_views_shared_by_steps) {
  const char *codes[] = {
      "string.lower = function() return 'poisoned' end",
      "rawset(string, 'lower', function() return 'poisoned' end)",
      "require('json').encode = function() return 'poisoned' end",
      "rawset(require('json'), 'encode', function() return 'poisoned' end)",
      "local _, t = pairs(math) t.floor = function() return 'poisoned' end",
      "os.time = function() return 0 end",
      /* what the steps above tried to change is unchanged */
      ("return string.lower('ABC') .. ('DEF'):lower() .. json.encode({1}) .. "
       "require('json').encode({2}) .. math.floor(2.5) .. "
       "tostring(os.time() > 0) .. #string.rep('x', 3)"),
      /* reading and iterating work as before */
      ("local n = 0 for k, v in pairs(string) do n = n + 1 end "
       "return tostring(n > 10) .. tostring(string.dump == nil)"),
  };
  int rc;
  orch_graph *g = run_lua_steps(codes, ORCH__ARRAY_LEN(codes), NULL, &rc);
  ASSERT(g);
  for (size_t i = 0; i < 6; i++) {
    ASSERT_EQ(orch_step_status(g, i), ORCH_FAILED);
    ASSERT_CONTAINS(orch_step_error(g, i), "read-only");
  }
  ASSERT_CONTAINS(orch_step_error(g, 0), "'string.lower'");
  ASSERT_EQ(orch_step_status(g, 6), ORCH_PASSED);
  ASSERT_STR_EQ(orch_step_output(g, 6), "abcdef[1][2]2true3");
  ASSERT_EQ(orch_step_status(g, 7), ORCH_FAILED); /* string.dump: denied */
  ASSERT_CONTAINS(orch_step_error(g, 7), "'string.dump' is not available");
  orch_graph_free(g);
}

/* ---- a listed file that cannot be read is a refusal, not a deletion ----- */

/* Counts the events of one module (loads and refusals) a scan reports. */
typedef struct evlog {
  int loads, refusals;
  char last[512];
} evlog;

static void on_ev(void *ud, const char *module, const char *file,
                  unsigned gen, const char *error) {
  evlog *l = ud;
  (void)module, (void)file, (void)gen;
  if (error) {
    l->refusals++;
    snprintf(l->last, sizeof l->last, "%s", error);
  } else {
    l->loads++;
  }
}

TEST(reload_keeps_a_module_whose_file_became_unreadable) {
  char *dir = tmpdir_new(), err[512], out[64], last[1024];
  put(dir, "routing/complexity.lua", version_src(1, 0));
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  evlog ev;
  memset(&ev, 0, sizeof ev);
  orch__policy_set_events(p, on_ev, &ev);
  ASSERT_EQ(ev.loads, 1);
  /* grows past 1 MiB (a long comment): refused, v1 keeps serving */
  size_t big = (1u << 20) + 100;
  char *src = malloc(big + 1);
  memset(src, '-', big);
  memcpy(src, "return {} --", 12);
  src[big] = '\0';
  put(dir, "routing/complexity.lua", src);
  free(src);
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 1);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 1);
  ASSERT_CONTAINS(last, "routing/complexity.lua");
  ASSERT_CONTAINS(last, "over the limit of 1048576 bytes for a script");
  ASSERT_EQ(ev.refusals, 1);
  ASSERT(!orch__lstate_sync(s));
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v1");
  /* the same state again: not refused (or logged) twice */
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(ev.refusals, 1);
  ASSERT_EQ(orch__policy_generation(p), 1);
  /* a dangling symlink in its place: listed, unreadable, still v1 */
  char *path = orch__asprintf("%s/routing/complexity.lua", dir);
  unlink(path);
  ASSERT_EQ(symlink("/nonexistent/orch-complexity.lua", path), 0);
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 1);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 1);
  ASSERT_CONTAINS(last, "No such file or directory");
  ASSERT_EQ(ev.refusals, 2);
  orch__lstate_sync(s);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "v1");
  /* readable again with the serving content: the error clears */
  unlink(path);
  put(dir, "routing/complexity.lua", version_src(1, 0));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_last_error(p, last, sizeof last), 1);
  ASSERT_STR_EQ(last, "");
  /* a new version loads as usual; a file gone from the listing unloads */
  put(dir, "routing/complexity.lua", version_src(2, 0));
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 2);
  unlink(path);
  ASSERT_EQ(orch__policy_rescan(p), ORCH_OK);
  ASSERT_EQ(orch__policy_generation(p), 3);
  orch__lstate_sync(s);
  ASSERT_EQ(orch__policy_call_string(s, "routing.complexity", "classify",
                                     NULL, out, sizeof out, err, sizeof err),
            ORCH_ENOTFOUND);
  free(path);
  orch__policy_set_events(p, NULL, NULL);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(budget_is_not_swallowed_by_a_pcall_in_tail_position) {
  char *dir = tmpdir_new(), err[512], out[64];
  put(dir, "policies/tail.lua",
      "local M = {}\n"
      "local function loop() while true do end end\n"
      "function M.tail() return pcall(loop) end\n"
      "function M.xtail() return xpcall(loop, function(m) return m end) end\n"
      "function M.ok() return 'ok' end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  c.lua_budget = 1000;
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  json_t *j = NULL;
  ASSERT_EQ(orch__policy_call(s, "policies.tail", "tail", NULL, &j, err,
                              sizeof err),
            ORCH_ELIMIT);
  ASSERT(j == NULL);
  ASSERT_CONTAINS(err, "instruction budget exceeded");
  ASSERT_CONTAINS(err, "policies/tail.lua:2:");
  ASSERT_EQ(orch__policy_call_string(s, "policies.tail", "xtail", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_ELIMIT);
  ASSERT_EQ(orch__policy_call_string(s, "policies.tail", "ok", NULL, out,
                                     sizeof out, err, sizeof err),
            ORCH_OK);
  /* a lua step and a plain chunk alike */
  lua_State *L = orch__lstate_L(s);
  ASSERT_EQ(run_chunk(L, "return pcall(function() while true do end end)",
                      out, sizeof out),
            ORCH_ELIMIT);
  const char *codes[] = {"return pcall(function() while true do end end)"};
  int rc;
  orch_graph *g = run_lua_steps(codes, 1, "1000", &rc);
  ASSERT(g);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "instruction budget exceeded");
  orch_graph_free(g);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

TEST(reward_table_with_a_hole_is_an_error_not_a_zero) {
  char *dir = tmpdir_new(), err[512];
  put(dir, "rewards/holes.lua",
      "local M = {}\n"
      "function M.named_hole() return {0.1, nil, 0.3, extra = 0.5} end\n"
      "function M.hole() local t = {0.1, 0.2, 0.3} t[2] = nil return t end\n"
      "function M.from2() return {[2] = 0.2, [3] = 0.3} end\n"
      "function M.mixed() return {0.1, 0.2, extra = 0.5} end\n"
      "function M.seq() return {0.1, 0.2, 0.3} end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  static const struct {
    const char *fn, *want;
  } cases[] = {{"named_hole", "holes.named_hole() returned nil for '2'"},
               {"hole", "holes.hole() returned nil for '2'"},
               {"from2", "holes.from2() returned nil for '1'"}};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(cases); i++) {
    json_t *out = NULL;
    int rc = orch__policy_call_numbers(s, "rewards.holes", cases[i].fn, NULL,
                                       &out, err, sizeof err);
    if (rc != ORCH_ESCRIPT || out || !strstr(err, cases[i].want))
      orch_test_fail(__FILE__, __LINE__, "%s: rc %d out %p '%s'",
                     cases[i].fn, rc, (void *)out, err);
    json_decref(out);
  }
  json_t *out = NULL;
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.holes", "mixed", NULL,
                                      &out, err, sizeof err),
            ORCH_OK);
  ASSERT(json_is_object(out));
  ASSERT_EQ(json_object_size(out), 3);
  ASSERT(fabs(json_real_value(json_object_get(out, "extra")) - 0.5) < 1e-9);
  json_decref(out);
  ASSERT_EQ(orch__policy_call_numbers(s, "rewards.holes", "seq", NULL, &out,
                                      err, sizeof err),
            ORCH_OK);
  ASSERT(json_is_array(out));
  ASSERT_EQ(json_array_size(out), 3);
  json_decref(out);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- C calls the count hook cannot stop are bounded another way --------- */

TEST(keywords_dedup_of_a_long_list_is_linear) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  double t0 = now_ms();
  ASSERT_EQ(run_chunk(L,
                      "local l = {} for i = 1, 80000 do l[i] = 'kw' .. i end "
                      "l[#l + 1] = 'KW7' l[#l + 1] = '  kw8 ' "
                      "local m = orch.keywords(l, {whole = true}) "
                      "return m.count(10, 'kw7 kw8 kw80000 kw80001') .. ' ' "
                      ".. table.concat(m.matched('kw7 KW8'), ',')",
                      out, sizeof out),
            ORCH_OK);
  double ms = now_ms() - t0;
  fprintf(stderr, "  80,000 keywords: %.0f ms\n", ms);
  ASSERT_STR_EQ(out, "3 kw7,kw8"); /* duplicates kept once, first spelling */
  ASSERT(ms < (UNDER_ASAN ? 5000 : 1000));
  orch__lua_close(L);
  orch__config_deinit(&c);
}

TEST(sandbox_table_move_refuses_a_range_past_the_budget) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_budget = 1000; /* 1,000,000 instructions */
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  double t0 = now_ms();
  ASSERT_EQ(run_chunk(L, "return table.move({}, 1, 2^53, 1, {})", out,
                      sizeof out),
            ORCH_ESCRIPT);
  ASSERT(now_ms() - t0 < 1000);
  ASSERT_CONTAINS(out, "table.move: the range 1..9007199254740992 has more "
                       "elements than the instruction budget allows "
                       "(1000000)");
  ASSERT_EQ(run_chunk(L, "return #table.move({}, 1, 1000001, 1, {})", out,
                      sizeof out),
            ORCH_ESCRIPT);
  /* within the budget, and the odd ranges, as stock */
  ASSERT_EQ(run_chunk(L,
                      "return table.concat(table.move({1, 2, 3}, 1, 3, 2), "
                      "',') .. #table.move({}, 1, 1000000, 1, {}) .. "
                      "#table.move({1}, 5, 1, 1, {})",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "1,1,2,300");
  ASSERT(run_chunk(L, "return table.move({}, math.mininteger, "
                      "math.maxinteger, 1)", out, sizeof out) != ORCH_OK);
  ASSERT_CONTAINS(out, "table.move");
  orch__lua_close(L);
  orch__config_deinit(&c);
}

/* A directory without a module (a project's scripts/ of shell files) fails
 * the check, saying so, rather than "all scripts compile". */
TEST(scripts_check_fails_a_directory_with_no_modules) {
  char *dir = tmpdir_new();
  put(dir, "deploy.sh", "echo deploy\n");
  reports r;
  memset(&r, 0, sizeof r);
  ASSERT_EQ(orch_scripts_check(NULL, dir, on_report, &r), ORCH_ENOTFOUND);
  ASSERT_EQ(r.n, 1);
  ASSERT_CONTAINS(r.text[0], "no script modules");
  rm_rf(dir);
  free(dir);
}

/* ---- string.rep and the pattern functions under the budget -------------- */

TEST(policy_string_rep_returns_or_refuses_at_once) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_mem_max = 16u << 20;
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  double t0 = now_ms();
  /* an empty result is "" at once, however many copies of nothing */
  ASSERT_EQ(run_chunk(L, "return #string.rep('', 1 << 62) .. "
                         "#string.rep('', math.maxinteger, '') .. "
                         "#('x'):rep(0) .. #('x'):rep(-5, ',')",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "0000");
  /* a result past the cap is refused before anything is copied */
  static const char *const huge[] = {
      "return string.rep('', 1 << 62, ',')",
      "return string.rep('x', 1e9)",
      "return ('ab'):rep(math.maxinteger, 'cd')",
      "return string.rep('x', 8 * 1024 * 1024 + 1, 'y')"};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(huge); i++) {
    ASSERT_EQ(run_chunk(L, huge[i], out, sizeof out), ORCH_ELIMIT);
    ASSERT_CONTAINS(out, "string.rep: memory cap exceeded (16777216 bytes): "
                         "the result would be ");
  }
  ASSERT_CONTAINS(out, "would be 16777217 bytes");
  /* a pcall sees the refusal as an error, and the script goes on */
  ASSERT_EQ(run_chunk(L, "local ok, e = pcall(string.rep, 'x', 1e12) "
                         "return tostring(ok) .. ' ' .. e",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_CONTAINS(out, "false string.rep: memory cap exceeded");
  ASSERT(now_ms() - t0 < 2000);
  /* within the cap, and the argument errors, as stock */
  ASSERT_EQ(run_chunk(L, "return ('ab'):rep(3, ', ') .. #string.rep('x', "
                         "4 * 1024 * 1024, '') .. string.rep(5, 2)",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "ab, ab, ab419430455");
  ASSERT_EQ(run_chunk(L, "return string.rep('x', 1.5)", out, sizeof out),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(out, "bad argument #2 to 'rep' (number has no integer "
                       "representation)");
  ASSERT_EQ(run_chunk(L, "return string.rep(nil, 2)", out, sizeof out),
            ORCH_ESCRIPT);
  ASSERT_CONTAINS(out, "bad argument #1 to 'rep' (string expected, got nil)");
  orch__lua_close(L);
  orch__config_deinit(&c);
}

/* Each of these backtracks for hours in the stock library; the sandbox's
 * matcher stops at the budget, and a pcall in the script cannot catch
 * that: the call fails with the budget's error. */
TEST(policy_pattern_backtracking_stops_at_the_budget) {
  char err[512], out[1024];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_budget = 2000; /* 2M instructions */
  lua_State *L = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(L);
  static const struct {
    const char *code, *fn;
  } slow[] = {
      {"return string.rep('a', 3000):find('.-.-.-.-b')", "string.find"},
      {"return ('a'):rep(3000):match('.-.-.-.-b')", "string.match"},
      {"for x in ('a'):rep(3000):gmatch('.-.-.-.-b') do end", "string.gmatch"},
      {"return (('a'):rep(3000):gsub('.-.-.-.-b', ''))", "string.gsub"},
      {"return ('a'):rep(3000):find('(.-)(.-)(.-)(.-)%1%2%3%4b')",
       "string.find"},
      {"return ('a'):rep(500000):find('[' .. ('x'):rep(1000) .. ']')",
       "string.find"},
      /* a pcall around the match, or around the match in a loop */
      {"local ok, e = pcall(string.find, ('a'):rep(3000), '.-.-.-.-b') "
       "return 'escaped: ' .. tostring(e)",
       "string.find"},
      {"for i = 1, 100 do pcall(string.gsub, ('a'):rep(3000), '.-.-.-b', '') "
       "end return 'escaped'",
       "string.gsub"},
      {"return select(2, pcall(function() "
       "local ok = pcall(string.match, ('a'):rep(3000), '.-.-.-.-b') "
       "return ('x'):find('x') end))",
       "string.match"},
      /* many cheap calls add up */
      {"local s = ('a'):rep(2000) for i = 1, 1e6 do s:find('b') end",
       "string.find"},
      {"local s = ('a'):rep(1e6) for i = 1, 1e6 do s:find('b', 1, true) end",
       "string.find"},
  };
  for (size_t i = 0; i < ORCH__ARRAY_LEN(slow); i++) {
    double t0 = now_ms();
    int rc = run_chunk(L, slow[i].code, out, sizeof out);
    double ms = now_ms() - t0;
    char want[200];
    snprintf(want, sizeof want, "snippet:1: instruction budget exceeded "
             "(2000000 instructions) by %s's pattern matching", slow[i].fn);
    if (rc != ORCH_ELIMIT || !strstr(out, want) || ms > 2000)
      orch_test_fail(__FILE__, __LINE__, "case %zu: rc %d after %.0f ms: %s",
                     i, rc, ms, out);
    /* the state goes on, with a whole budget for the next call */
    ASSERT_EQ(run_chunk(L, "return ('abc'):find('b') .. ('x'):rep(3)", out,
                        sizeof out),
              ORCH_OK);
    ASSERT_STR_EQ(out, "2xxx");
  }
  /* the script's own Lua instructions and its pattern steps each have the
   * budget: a call may use most of both */
  ASSERT_EQ(run_chunk(L,
                      "local n = 0 for i = 1, 300000 do n = n + i end "
                      "local s = ('ab'):rep(200000) "
                      "return select(2, s:gsub('a', 'c'))",
                      out, sizeof out),
            ORCH_OK);
  ASSERT_STR_EQ(out, "200000");
  orch__lua_close(L);
  orch__config_deinit(&c);
}

/* Through the engine: the report names the script's line and the hook, as
 * for a loop, and says the pattern matching spent the budget. */
TEST(policy_pattern_budget_names_file_line_and_hook) {
  char *dir = tmpdir_new(), err[512], out[64];
  put(dir, "routing/pat.lua",
      "local M = {}\n"
      "function M.slow(task)\n"
      "  return tostring(task.title:rep(3000):find('.-.-.-.-b'))\n"
      "end\n"
      "function M.caught(task)\n"
      "  local ok = pcall(string.gsub, task.title:rep(3000), '.-.-.-.-b', '')\n"
      "  return 'escaped'\n"
      "end\n"
      "function M.fine(task) return (task.title:gsub('a', 'b')) end\n"
      "return M\n");
  orch__config c = test_cfg(dir);
  c.lua_budget = 2000;
  orch__policy *p = NULL;
  ASSERT_EQ(orch__policy_new(&p, &c, err, sizeof err), ORCH_OK);
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  ASSERT(s);
  const char *keys[] = {"title"};
  const char *vals[] = {"a"};
  double t0 = now_ms();
  ASSERT_EQ(orch__policy_call_fields(s, "routing.pat", "slow", keys, vals, 1,
                                     out, sizeof out, err, sizeof err),
            ORCH_ELIMIT);
  ASSERT_CONTAINS(err, "routing/pat.lua:3: instruction budget exceeded "
                       "(2000000 instructions) by string.find's pattern "
                       "matching in pat.slow()");
  ASSERT_EQ(orch__policy_call_fields(s, "routing.pat", "caught", keys, vals,
                                     1, out, sizeof out, err, sizeof err),
            ORCH_ELIMIT);
  ASSERT_CONTAINS(err, "routing/pat.lua:6: instruction budget exceeded "
                       "(2000000 instructions) by string.gsub's pattern "
                       "matching in pat.caught()");
  ASSERT(now_ms() - t0 < 2000);
  ASSERT_EQ(orch__policy_call_fields(s, "routing.pat", "fine", keys, vals, 1,
                                     out, sizeof out, err, sizeof err),
            ORCH_OK);
  ASSERT_STR_EQ(out, "b");
  ASSERT(!lua_gethook(orch__lstate_L(s)));
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  free(dir);
}

/* ---- the sandbox's pattern functions against the stock library ----------
 * The sandbox's find, match, gmatch and gsub (lpattern.c, budgeted) and the
 * stock ones of a plain lua_State run the same harness on the same
 * arguments: every result and every error message must be the same. */

#include "pattern_harness.h" /* DIFF_HARNESS */

/* An argument: nil, a string, an integer, a float or a boolean. */
typedef struct darg {
  char t; /* 'n', 's', 'i', 'f', 'b' */
  const char *s;
  size_t len;
  lua_Integer i;
  double f;
} darg;

static darg D_NIL(void) { return (darg){.t = 'n'}; }
static darg D_STR(const char *s, size_t len) {
  return (darg){.t = 's', .s = s, .len = len};
}
static darg D_CSTR(const char *s) { return D_STR(s, strlen(s)); }
static darg D_INT(lua_Integer i) { return (darg){.t = 'i', .i = i}; }

static void push_darg(lua_State *L, darg a) {
  switch (a.t) {
    case 's': lua_pushlstring(L, a.s, a.len); break;
    case 'i': lua_pushinteger(L, a.i); break;
    case 'f': lua_pushnumber(L, a.f); break;
    case 'b': lua_pushboolean(L, (int)a.i); break;
    default: lua_pushnil(L);
  }
}

typedef struct differ {
  lua_State *sbx, *stock; /* each holds the harness at index 1 */
  long runs, skipped, mismatches;
  char first[1024];       /* the first mismatch, described */
  char detail[1024];
} differ;

static void show_darg(char *buf, size_t n, darg a) {
  switch (a.t) {
    case 's': {
      size_t o = 0;
      buf[o++] = '"';
      for (size_t i = 0; i < a.len && o + 6 < n; i++) {
        unsigned char c = (unsigned char)a.s[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\') buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, n - o, "\\%u", c);
      }
      buf[o++] = '"';
      buf[o] = '\0';
      break;
    }
    case 'i': snprintf(buf, n, "%lld", (long long)a.i); break;
    case 'f': snprintf(buf, n, "%g", a.f); break;
    case 'b': snprintf(buf, n, "%s", a.i ? "true" : "false"); break;
    default: snprintf(buf, n, "nil");
  }
}

/* Runs op on both states; counts a mismatch (keeping the first). */
static void diff_run(differ *d, const char *op, darg s, darg p, darg a,
                     darg b, darg r) {
  char err[512];
  lua_State *Ls[2] = {d->sbx, d->stock};
  const char *res[2];
  size_t len[2];
  for (int k = 0; k < 2; k++) {
    lua_State *L = Ls[k];
    lua_pushvalue(L, 1);
    lua_pushstring(L, op);
    push_darg(L, s);
    push_darg(L, p);
    push_darg(L, a);
    push_darg(L, b);
    push_darg(L, r);
    if (k == 0) {
      int rc = orch__lua_pcall(L, 6, 1, err, sizeof err);
      if (rc == ORCH_ELIMIT && strstr(err, "instruction budget")) {
        d->skipped++; /* too slow to run the stock one on */
        return;
      }
      if (rc) {
        lua_pushfstring(L, "harness failed: %s", err);
      }
    } else if (lua_pcall(L, 6, 1, 0) != LUA_OK) {
      /* the harness's own failure is a result too */
    }
    res[k] = lua_tolstring(L, -1, &len[k]);
  }
  d->runs++;
  if (res[0] && res[1] && len[0] == len[1] && !memcmp(res[0], res[1], len[0]))
    goto done;
  if (d->mismatches++ == 0) {
    char as[5][200];
    darg all[5] = {s, p, a, b, r};
    for (int i = 0; i < 5; i++) show_darg(as[i], sizeof as[i], all[i]);
    snprintf(d->first, sizeof d->first, "%s(%s, %s, %s, %s, %s)", op, as[0],
             as[1], as[2], as[3], as[4]);
    snprintf(d->detail, sizeof d->detail, "sandbox: %s\n    stock:   %s",
             res[0] ? res[0] : "(null)", res[1] ? res[1] : "(null)");
    for (char *c = d->detail; *c; c++)
      if (*c == '\1') *c = '|';
  }
done:
  lua_pop(d->sbx, 1);
  lua_pop(d->stock, 1);
}

/* A fixed-seed xorshift, so every run compares the same cases. */
static uint64_t diff_rand(uint64_t *st) {
  uint64_t x = *st;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *st = x;
}

/* Every short string literal in a Lua source (as source text, quotes
 * included), comments and long strings skipped; fn gets each. */
static void lua_literals(const char *src, size_t n,
                         void (*fn)(void *, const char *, size_t), void *ud) {
  size_t i = 0;
  while (i < n) {
    char c = src[i];
    if (c == '-' && i + 1 < n && src[i + 1] == '-') {
      i += 2;
      size_t eq = 0;
      if (i < n && src[i] == '[') {
        size_t j = i + 1;
        while (j < n && src[j] == '=') j++, eq++;
        if (j < n && src[j] == '[') { /* a long comment */
          i = j + 1;
          for (; i < n; i++) {
            if (src[i] != ']') continue;
            size_t k = i + 1, e = 0;
            while (k < n && src[k] == '=') k++, e++;
            if (k < n && src[k] == ']' && e == eq) {
              i = k + 1;
              break;
            }
          }
          continue;
        }
      }
      while (i < n && src[i] != '\n') i++;
    } else if (c == '[' && i + 1 < n && (src[i + 1] == '[' ||
                                         src[i + 1] == '=')) {
      size_t j = i + 1, eq = 0;
      while (j < n && src[j] == '=') j++, eq++;
      if (j >= n || src[j] != '[') {
        i++;
        continue;
      }
      for (i = j + 1; i < n; i++) { /* a long string: text, not patterns */
        if (src[i] != ']') continue;
        size_t k = i + 1, e = 0;
        while (k < n && src[k] == '=') k++, e++;
        if (k < n && src[k] == ']' && e == eq) {
          i = k + 1;
          break;
        }
      }
    } else if (c == '"' || c == '\'') {
      size_t j = i + 1;
      while (j < n && src[j] != c && src[j] != '\n')
        j += src[j] == '\\' ? 2 : 1;
      if (j < n && src[j] == c) fn(ud, src + i, j + 1 - i);
      i = j + 1;
    } else {
      i++;
    }
  }
}

typedef struct strlist {
  char **s;
  size_t *len;
  size_t n, cap;
} strlist;

static void strlist_add(strlist *l, const char *s, size_t len) {
  for (size_t i = 0; i < l->n; i++)
    if (l->len[i] == len && !memcmp(l->s[i], s, len)) return;
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 256;
    l->s = realloc(l->s, l->cap * sizeof *l->s);
    l->len = realloc(l->len, l->cap * sizeof *l->len);
  }
  l->s[l->n] = malloc(len + 1);
  memcpy(l->s[l->n], s, len);
  l->s[l->n][len] = '\0';
  l->len[l->n++] = len;
}

static void strlist_free(strlist *l) {
  for (size_t i = 0; i < l->n; i++) free(l->s[i]);
  free(l->s);
  free(l->len);
}

typedef struct litctx {
  lua_State *L; /* a plain state that decodes the literals */
  strlist *out;
  size_t found;
} litctx;

static void on_literal(void *ud, const char *lit, size_t len) {
  litctx *c = ud;
  lua_State *L = c->L;
  lua_pushliteral(L, "return ");
  lua_pushlstring(L, lit, len);
  lua_concat(L, 2);
  size_t n;
  const char *code = lua_tolstring(L, -1, &n);
  if (luaL_loadbuffer(L, code, n, "=literal") == LUA_OK &&
      lua_pcall(L, 0, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tolstring(L, -1, &n);
    if (n <= 200) {
      strlist_add(c->out, s, n);
      c->found++;
    }
  }
  lua_settop(L, 0);
}

/* The string literals of every Lua file in scripts and its subdirectories
 * (decoded by L, a plain state) into out; returns how many there were. */
static size_t script_literals(lua_State *L, strlist *out) {
  litctx c = {L, out, 0};
  const char *dirs[] = {"scripts", "scripts/policies", "scripts/rewards",
                        "scripts/routing"};
  for (size_t d = 0; d < ORCH__ARRAY_LEN(dirs); d++) {
    DIR *dh = opendir(dirs[d]);
    if (!dh) continue;
    struct dirent *de;
    while ((de = readdir(dh))) {
      size_t nl = strlen(de->d_name);
      if (nl < 5 || strcmp(de->d_name + nl - 4, ".lua")) continue;
      char *path = orch__asprintf("%s/%s", dirs[d], de->d_name);
      char *text = NULL;
      size_t len = 0;
      char err[256];
      if (orch__read_file(path, 1u << 20, &text, &len, err, sizeof err) ==
          ORCH_OK)
        lua_literals(text, len, on_literal, &c);
      free(text);
      free(path);
    }
    closedir(dh);
  }
  return c.found;
}

/* Patterns no literal spells whole: the ones the scripts build. */
static const char *const BUILT_PATTERNS[] = {
    /* gap.lua rstrip(s, "%s") and rstrip(s, "%s|;"); its emphasis */
    "[^%s][%s]*$", "[^%s|;][%s|;]*$",
    "^[%*_]([^%s%*_][^%*_\n]-)%*()", "^[%*_]([^%s%*_][^%*_\n]-)%_()",
    /* complexity.lua's phrases: punctuation escaped, spaces any run */
    "code%s+review", "state%-of%-the%-art%s+model", "a%.b%s+c",
    /* scrub.lua: "()(" .. pat .. ")" and the secret labels */
    "()(%f[%w]sk%-[%w%-_]+)", "()(AKIA[%u%d]+)",
    "(api[_%-]?key[\"']?%s*[:=]%s*[\"']?)([%w%-_%.%+/=]+)",
    "(password[\"']?%s*[:=]%s*[\"']?)([%w%-_%.%+/=]+)",
};

/* From the manual (§6.4.1 and the examples of §6.4). */
static const char *const MANUAL_PATTERNS[] = {
    "(%w+)", "%w+", "(%w+)%s*(%w+)", "%$(%w+)", "%$(.-)%$", "%a+",
    "(%w+)=(%w+)", "%b()", "%f[%w]%w+", "%f[%a]%a+", "%f[%A]", "[%w_]",
    "[_%w]", "[0-7]", "[%a-z]", "[a-z]", "[%-]", "[%]]", "[]]", "[^]]",
    "()aa()", "^(%w+)", "%d+", "[%w_]*", "(%w+)%s*=%s*(%w+)", "%s*(%S+)%s*",
    "^%s*(.-)%s*$", "(h)(e)(l)(l)(o)", "%bxy", "%f[%l]", "%f[%z]", "%f[^%z]",
    "[%x]+", "%u%l*", "%p+", "%c", "%g+", "(a*(.)%w(%s*))", "%1", "(%w)%1",
    "^", "$", "^$", "", ".-", ".*", ".+", ".?", "a-b", "a*", "a+", "a?b",
};

/* Edge cases: errors, anchors, empty matches, odd classes. */
static const char *const EDGE_PATTERNS[] = {
    "%", "a%", "[", "[a", "[^", "[]", "[^]", "[%", "[%]", "[a-", "[a-]",
    "[-a]", "[a-c-e]", "[%a-z]", "[a-%%]", "[%--/]", "[]-a]", "(", "(()",
    ")", "a)", "(a", "((a)", "(a))", "%0", "%1", "(a)%2", "(a%1)", "()%1",
    "(a)(b)%2%1", "%b", "%ba", "%b()x", "%b))", "%b\"\"", "%f", "%fa",
    "%f[", "%f[a", "%f[%w", "%f[]", "%f[^a]", "%f[a-c]", "^^", "^a^",
    "a$b", "$$", "%$", "a*$", "^a-$", "x*", "x-", "x?", "()", "()()",
    "(())", "(()())", "((.)(.))", "%w*", "%W*", "%s-", "[^%s]*", "%d?%d?",
    "[%w%.%-]+@[%w%.%-]+", "%d+%.%d+%.%d+%.%d+", "\"(.-)\"", "'([^']*)'",
    ".-.-b", "(.-)(.-)", "a?a?a?aaa", "[%z]", "%z", "%Z+", "[\1-\37]",
    "[\200-\377]+", ".%.", "%%", "%a%", "%x%X",
    "[%]%-]", "[a%]]", "[%^]", "[^^]", "[ab-]", "[-]", "%-", "%*", "%+?",
    "*", "+", "-", "?", "a**", "a++", "a--", "a??", "a-?", "(%a+)%s*",
};

/* A random pattern from pieces, malformed ones included. */
static void random_pattern(uint64_t *st, char *buf, size_t cap, size_t *len) {
  static const char *const pieces[] = {
      "a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "%S", "[ab]", "[^a]",
      "[a-c]", "[%d_]", "(", ")", "()", "%b()", "%bab", "%f[%w]", "%f[a]",
      "%1", "%2", "^", "$", "*", "+", "-", "?", "%", "[", "]", " ", "%%",
      "%.", "x", "1", "%f[%W]", "[%a%-]", "(a", "b)"};
  size_t n = 1 + diff_rand(st) % 6, o = 0;
  for (size_t i = 0; i < n; i++) {
    const char *pc = pieces[diff_rand(st) % ORCH__ARRAY_LEN(pieces)];
    size_t l = strlen(pc);
    if (o + l >= cap) break;
    memcpy(buf + o, pc, l);
    o += l;
  }
  *len = o;
}

/* A random subject over a small alphabet. */
static void random_subject(uint64_t *st, char *buf, size_t cap, size_t *len) {
  static const char alpha[] = "aabbc1 ()x.-_%\n";
  size_t n = diff_rand(st) % (cap < 14 ? cap : 14);
  for (size_t i = 0; i < n; i++)
    buf[i] = alpha[diff_rand(st) % (sizeof alpha - 1)];
  *len = n;
}

/* Subjects close to what the scripts see. */
static const char *const SUBJECTS[] = {
    "", " ", "a", "aa", "ab", "abc", "aaa", "hello world",
    "hello world from Lua", "from=world, to=Lua", "THE (quick) fox",
    "$name-$version.tar.gz", "home = $HOME, user = $USER",
    "4+5 = $return 4+5$", "flaaap", "f(a(b)c)d)", "  trim me  \t\n",
    "Task 1: Write the parser (depends on 2, 3)",
    "- [x] **T2** | deps: t1, T3 | review", "1. Do it\n2) Then this\n",
    "## Tasks\n\n1. First\n2. Second: depends on 1\n",
    "{\"error\": {\"message\": \"bad key\", \"type\": \"auth\"}}",
    "Authorization: Bearer abc.DEF-ghi_123~+/==",
    "api_key = \"sk-1234567890abcdef\"",
    "mail me at a.b-c@example.com or 10.0.0.1", "call +1 (555) 123-4567",
    "a\0b\0", "\0", "x \xe2\x80\x94 y \xe2\x80\x93 z", "\357\273\277bom\r\nx\r",
    "<think>no</think><plan>1. a</plan>", "none", "n/a", "find_users",
    "__init__", "`code`", "*emph* and _this_", "3.14 is 3,14", "x\"q\"y",
    "AKIAABCDEFGHIJKLMNOP", "password: hunter2", "(())", ")(", "%%", "%d",
    "[]", "^$", "aXbXc", "ab12cd34", "\1\2\3 \177\200\377",
};

TEST(policy_patterns_match_the_stock_library) {
  char err[512];
  orch__config c;
  orch__config_defaults(&c);
  lua_State *S = orch__lua_new_sandbox(&c, err, sizeof err);
  ASSERT(S);
  lua_State *P = luaL_newstate();
  luaL_openlibs(P);
  ASSERT_EQ(orch__lua_load(S, DIFF_HARNESS, sizeof DIFF_HARNESS - 1,
                           "harness", err, sizeof err),
            ORCH_OK);
  double t0 = now_ms();
  strlist pats = {0};
  size_t nlit = script_literals(P, &pats);
  ASSERT_EQ(luaL_loadbuffer(P, DIFF_HARNESS, sizeof DIFF_HARNESS - 1,
                            "=harness"),
            LUA_OK);
  size_t from_scripts = pats.n;
  struct stat st;
  if (stat("scripts/policies/gap.lua", &st) == 0) ASSERT(nlit > 300);
  const char *const *lists[] = {BUILT_PATTERNS, MANUAL_PATTERNS,
                                EDGE_PATTERNS};
  size_t sizes[] = {ORCH__ARRAY_LEN(BUILT_PATTERNS),
                    ORCH__ARRAY_LEN(MANUAL_PATTERNS),
                    ORCH__ARRAY_LEN(EDGE_PATTERNS)};
  for (size_t l = 0; l < 3; l++)
    for (size_t i = 0; i < sizes[l]; i++) {
      const char *p = lists[l][i];
      strlist_add(&pats, p, strlen(p));
    }
  strlist_add(&pats, "\0", 1); /* and patterns with a NUL byte */
  strlist_add(&pats, "a\0b", 3);
  strlist_add(&pats, "[\0]", 3);
  strlist_add(&pats, "%\0", 2);
  strlist subj = {0};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(SUBJECTS); i++)
    strlist_add(&subj, SUBJECTS[i], strlen(SUBJECTS[i]));
  strlist_add(&subj, "a\0b\0", 4);
  strlist_add(&subj, "\0", 1);
  uint64_t seed = 0x9e3779b97f4a7c15u;
  char buf[64];
  size_t blen;
  while (subj.n < ORCH__ARRAY_LEN(SUBJECTS) + 40) {
    random_subject(&seed, buf, sizeof buf, &blen);
    strlist_add(&subj, buf, blen);
  }
  differ d = {.sbx = S, .stock = P};
  lua_pushvalue(S, -1); /* the harnesses to index 1 */
  lua_replace(S, 1);
  lua_settop(S, 1);
  lua_settop(P, 1);
  /* every pattern on every subject, by all four functions; the extra
   * arguments vary from case to case */
  static const lua_Integer inits[] = {1, 2, -1, -3, 0, 4, 100, -100};
  static const char *const repls[] = {"<%0>", "%1-%1", "%2", "%%", "%",
                                      "x%z", "fn()", "tbl()", ""};
  for (size_t i = 0; i < pats.n; i++) {
    darg p = D_STR(pats.s[i], pats.len[i]);
    for (size_t j = 0; j < subj.n; j++) {
      darg s = D_STR(subj.s[j], subj.len[j]);
      uint64_t r = diff_rand(&seed);
      darg init = r % 3 ? D_NIL() : D_INT(inits[(r >> 8) % 8]);
      darg plain = (r >> 16) % 5 ? D_NIL() : (darg){.t = 'b', .i = 1};
      darg maxn =
          (r >> 24) % 4 ? D_NIL() : D_INT((lua_Integer)(r >> 32) % 4 - 1);
      darg repl = D_CSTR(repls[(r >> 40) % ORCH__ARRAY_LEN(repls)]);
      diff_run(&d, "find", s, p, init, plain, D_NIL());
      diff_run(&d, "match", s, p, init, D_NIL(), D_NIL());
      diff_run(&d, "gmatch", s, p, init, D_NIL(), D_NIL());
      diff_run(&d, "gsub", s, p, maxn, D_NIL(), repl);
    }
  }
  size_t corpus = d.runs;
  /* random patterns on random subjects */
  for (int i = 0; i < 6000; i++) {
    char pb[64], sb[64];
    size_t pl, sl;
    random_pattern(&seed, pb, sizeof pb, &pl);
    random_subject(&seed, sb, sizeof sb, &sl);
    darg p = D_STR(pb, pl), s = D_STR(sb, sl);
    uint64_t r = diff_rand(&seed);
    darg init = r % 3 ? D_NIL() : D_INT(inits[(r >> 8) % 8]);
    static const char *const ops[] = {"find", "match", "gmatch", "gsub"};
    diff_run(&d, ops[(r >> 16) % 4], s, p, init, D_NIL(),
             D_CSTR(repls[(r >> 40) % ORCH__ARRAY_LEN(repls)]));
  }
  /* every class letter and escape, on every byte */
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  for (int i = 0; i < 256; i++) {
    char p1[2] = {'%', (char)i}, p2[4] = {'[', '%', (char)i, ']'};
    char p3[5] = {'[', '^', '%', (char)i, ']'}, p4[1] = {(char)i};
    darg s = D_STR(all, sizeof all);
    diff_run(&d, "gsub", s, D_STR(p1, 2), D_NIL(), D_NIL(), D_CSTR("#"));
    diff_run(&d, "gsub", s, D_STR(p2, 4), D_NIL(), D_NIL(), D_CSTR("#"));
    diff_run(&d, "gsub", s, D_STR(p3, 5), D_NIL(), D_NIL(), D_CSTR("#"));
    diff_run(&d, "find", s, D_STR(p4, 1), D_NIL(), D_NIL(), D_NIL());
  }
  /* deep patterns: the depth where "pattern too complex" starts, and the
   * capture count where "too many captures" does */
  static const struct {
    const char *piece;
    int from, to;
    const char *tail;
  } deep[] = {{"a?", 195, 202, ""},   {"a*", 195, 202, ""},
              {".-", 195, 202, "$"},  {"()", 29, 34, ""},
              {"(a", 29, 34, ""},     {"(", 95, 102, ""},
              {"(a)", 30, 33, "%9"},  {"%f[a]a?", 95, 101, ""},
              {"a?(a)", 60, 70, ""}};
  char sa[300];
  memset(sa, 'a', sizeof sa);
  for (size_t i = 0; i < ORCH__ARRAY_LEN(deep); i++)
    for (int n = deep[i].from; n <= deep[i].to; n++) {
      char pb[1024];
      size_t o = 0, pl = strlen(deep[i].piece);
      for (int k = 0; k < n && o + pl < sizeof pb - 8; k++, o += pl)
        memcpy(pb + o, deep[i].piece, pl);
      if (!strcmp(deep[i].piece, "("))
        for (int k = 0; k < n && o < sizeof pb - 8; k++) pb[o++] = ')';
      o += (size_t)snprintf(pb + o, sizeof pb - o, "%s", deep[i].tail);
      for (size_t sl = 0; sl <= sizeof sa; sl += 150) {
        darg s = D_STR(sa, sl), p = D_STR(pb, o);
        diff_run(&d, "find", s, p, D_NIL(), D_NIL(), D_NIL());
        diff_run(&d, "gsub", s, p, D_NIL(), D_NIL(), D_CSTR("%1"));
      }
    }
  /* arguments of other types, and the odd numbers */
  darg odd[] = {D_NIL(), D_INT(12), (darg){.t = 'f', .f = 1.5},
                (darg){.t = 'f', .f = 2.0}, (darg){.t = 'b', .i = 1},
                D_CSTR("2"), D_CSTR("x"), D_INT(LUA_MININTEGER),
                D_INT(LUA_MAXINTEGER)};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(odd); i++)
    for (size_t j = 0; j < ORCH__ARRAY_LEN(odd); j++) {
      static const char *const ops[] = {"find", "match", "gmatch", "gsub"};
      for (size_t k = 0; k < 4; k++) {
        diff_run(&d, ops[k], odd[i], D_CSTR("%d"), odd[j], D_NIL(),
                 D_CSTR("x"));
        diff_run(&d, ops[k], D_CSTR("a1b22"), odd[i], odd[j], odd[i],
                 odd[j]);
        diff_run(&d, ops[k], D_INT(1234), D_CSTR("(%d)(%d)"), D_NIL(),
                 odd[j], odd[i]);
      }
    }
  double ms = now_ms() - t0;
  fprintf(stderr, "  %ld comparisons (%zu patterns, %zu of them literals of "
          "the scripts; %zu subjects; %zu of the corpus), %ld skipped "
          "(budget), %ld differ: %.0f ms\n", d.runs, pats.n, from_scripts,
          subj.n, corpus, d.skipped, d.mismatches, ms);
  if (d.mismatches)
    orch_test_fail(__FILE__, __LINE__, "%ld differ; the first: %s\n    %s",
                   d.mismatches, d.first, d.detail);
  ASSERT(d.runs > 50000);
  ASSERT_EQ(d.skipped, 0);
  strlist_free(&pats);
  strlist_free(&subj);
  lua_close(P);
  orch__lua_close(S);
  orch__config_deinit(&c);
}
