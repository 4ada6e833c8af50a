/* luamod.c is `require "orch"`: the runtime as a Lua module. A script
 * builds a graph whose steps are Lua functions (run on the calling thread,
 * one at a time, since the script's state is not thread-safe), shell
 * commands, sleeps or any plan step, runs it on the runtime's pool and loop,
 * and reads the results back as tables. It sees only orch.h. */
#include "orch.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

/* keywords.c (orch_int.h): the keyword matcher of the policy sandbox. */
int orch__lua_keywords(lua_State *L);

#define RT_MT "orch.runtime"
#define G_MT "orch.graph"

/* A graph and the runtime it runs on are "running" while l_g_run is in
 * orch_run: a step's function must not free either under the run (the run
 * writes into the graph and joins the runtime's threads). l_g_run keeps both
 * on its stack meanwhile, so neither can be collected. */
typedef struct {
  orch_runtime *rt;
  int running;
} lrt;

typedef struct {
  orch_graph *g;
  lua_State *L; /* the state that runs the Lua function steps */
  int fns;      /* during a run: L's stack index of {id = function} */
  int running;
} lgraph;

/* The functions of a graph's steps sit in {id = function}, the graph
 * userdata's user value: a function that refers to its own graph makes a
 * cycle the collector can see (a registry reference would anchor it). */
static lgraph *new_graph(lua_State *L) {
  lgraph *g = lua_newuserdatauv(L, sizeof *g, 1);
  g->g = NULL;
  g->L = L;
  g->fns = 0;
  g->running = 0;
  luaL_setmetatable(L, G_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  return g;
}

static int push_err(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* orch.runtime{config=, <setting>=...} -> runtime | nil, err. Every key but
 * config goes to orch_runtime_set, which knows the settings (workers,
 * max_parallel, db, dry_run, lua_mem_max, ...): a key or value it refuses
 * is the script's mistake and raises; a config file that fails to load is
 * nil, err. Stack: [opts] -> [opts, runtime] */
static int l_runtime(lua_State *L) {
  const char *config = NULL;
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (lua_istable(L, 1)) {
    int ty = lua_getfield(L, 1, "config");
    if (ty != LUA_TNIL && ty != LUA_TSTRING)
      return luaL_error(L, "orch.runtime: 'config' must be a file name");
    config = lua_tostring(L, -1); /* the table keeps it */
    lua_pop(L, 1);
  }
  lrt *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->rt = NULL;
  r->running = 0;
  luaL_setmetatable(L, RT_MT);
  char err[1024];
  if (orch_runtime_new(&r->rt, config, err, sizeof err)) return push_err(L, err);
  if (!lua_istable(L, 1)) return 1;
  lua_pushnil(L);
  while (lua_next(L, 1)) { /* opts, runtime, key, value */
    if (lua_type(L, 3) != LUA_TSTRING)
      return luaL_error(L, "orch.runtime: key %s is not a setting name",
                        luaL_tolstring(L, 3, NULL));
    const char *k = lua_tostring(L, 3), *v;
    int ty = lua_type(L, 4);
    if (ty == LUA_TBOOLEAN) v = lua_toboolean(L, 4) ? "true" : "false";
    else if (ty == LUA_TNUMBER || ty == LUA_TSTRING) v = lua_tostring(L, 4); /* a copy */
    else return luaL_error(L, "orch.runtime: '%s' must be a string, a number or a boolean", k);
    if (strcmp(k, "config") != 0 && orch_runtime_set(r->rt, k, v, err, sizeof err))
      return luaL_error(L, "orch.runtime: %s", err);
    lua_settop(L, 3);
  }
  return 1;
}

static lrt *check_rt(lua_State *L, int i) {
  lrt *r = luaL_checkudata(L, i, RT_MT);
  if (!r->rt) luaL_error(L, "runtime already closed");
  return r;
}

/* __gc: only lua_close can collect a runtime in use by a run (os.exit(c,
 * true) from a step); freeing it would join the threads the run waits on,
 * so it is left to the process's exit. */
static int l_rt_gc(lua_State *L) {
  lrt *r = luaL_checkudata(L, 1, RT_MT);
  if (r->running) return 0;
  orch_runtime_free(r->rt);
  r->rt = NULL;
  return 0;
}

/* rt:close(): again is a no-op. */
static int l_rt_close(lua_State *L) {
  lrt *r = luaL_checkudata(L, 1, RT_MT);
  if (r->running)
    return luaL_error(L, "the runtime is running a graph: close it after g:run returns");
  return l_rt_gc(L);
}

static int l_rt_cancel(lua_State *L) {
  lrt *r = luaL_checkudata(L, 1, RT_MT);
  if (r->rt) orch_runtime_cancel(r->rt);
  return 0;
}

static lgraph *check_g(lua_State *L, int i) {
  lgraph *g = luaL_checkudata(L, i, G_MT);
  if (!g->g) luaL_error(L, "graph already freed");
  return g;
}

static int l_graph(lua_State *L) {
  lgraph *g = new_graph(L);
  if (orch_graph_new(&g->g)) return luaL_error(L, "out of memory");
  return 1;
}

/* orch.load(path [, runtime]) -> graph | nil, err */
static int l_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  orch_runtime *rt = lua_isnoneornil(L, 2) ? NULL : check_rt(L, 2)->rt;
  char err[2048];
  orch_graph *og = NULL;
  if (orch_graph_load(rt, path, &og, err, sizeof err)) return push_err(L, err);
  new_graph(L)->g = og;
  return 1;
}

/* __gc: as for the runtime, a graph in use by a run is left to the exit. */
static int l_g_gc(lua_State *L) {
  lgraph *g = luaL_checkudata(L, 1, G_MT);
  if (g->running) return 0;
  orch_graph_free(g->g);
  g->g = NULL;
  lua_pushnil(L); /* the functions go too */
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* g:free(): again is a no-op. */
static int l_g_free(lua_State *L) {
  lgraph *g = luaL_checkudata(L, 1, G_MT);
  if (g->running)
    return luaL_error(L, "the graph is running: free it after g:run returns");
  return l_g_gc(L);
}

/* The body of a Lua-function step, under lua_pcall so that nothing (a
 * __tostring that raises, memory) can longjmp through orch_run.
 * Stack: [ctx, g, fns] -> [ORCH_OK | ORCH_ESTEP] */
static int call_step(lua_State *L) {
  orch_step_ctx *ctx = lua_touserdata(L, 1);
  lgraph *g = lua_touserdata(L, 2);
  lua_getfield(L, 3, orch_ctx_id(ctx)); /* 4: fn */
  lua_newtable(L);                      /* 5: {dep id = output | false} */
  long i = orch_graph_find(g->g, orch_ctx_id(ctx));
  for (size_t j = 0; i >= 0 && j < orch_step_ndeps(g->g, (size_t)i); j++) {
    size_t d = orch_step_dep(g->g, (size_t)i, j);
    const char *out = orch_step_output(g->g, d);
    if (out) lua_pushstring(L, out);
    else lua_pushboolean(L, 0);
    lua_setfield(L, -2, orch_step_id(g->g, d));
  }
  int rc = ORCH_OK;
  size_t n;
  if (lua_pcall(L, 1, 2, 0) != LUA_OK) { /* 4: the error object */
    orch_ctx_set_error(ctx, "%s", luaL_tolstring(L, 4, NULL));
    rc = ORCH_ESTEP;
  } else if (lua_isnil(L, 4) && !lua_isnil(L, 5)) { /* nil, err */
    orch_ctx_set_error(ctx, "%s", luaL_tolstring(L, 5, NULL));
    rc = ORCH_ESTEP;
  } else if (!lua_isnil(L, 4)) {
    const char *s = luaL_tolstring(L, 4, &n);
    orch_ctx_set_output(ctx, s, n);
  }
  lua_pushinteger(L, rc);
  return 1;
}

/* A Lua-function step: called on the thread running orch_run, which is the
 * thread of the state that built the graph, in l_g_run's frame (g->fns is
 * an index of it). fn(deps) -> output | nil, err */
static int run_lua_fn(orch_step_ctx *ctx, void *ud) {
  lgraph *g = ud;
  lua_State *L = g->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, call_step);
  lua_pushlightuserdata(L, ctx);
  lua_pushlightuserdata(L, g);
  lua_pushvalue(L, g->fns);
  int rc;
  if (lua_pcall(L, 3, 1, 0) == LUA_OK) {
    rc = (int)lua_tointeger(L, -1);
  } else { /* making the message failed: say what we have */
    const char *msg = lua_tostring(L, -1);
    orch_ctx_set_error(ctx, "the step's error could not be shown: %s",
                       msg ? msg : luaL_typename(L, -1));
    rc = ORCH_ESTEP;
  }
  lua_settop(L, top);
  return rc;
}

/* A step's "deps" (field of the table at t): nil, one step id, or a list
 * of them. check_deps raises on anything else, before the step is added;
 * add_deps then adds the edges. Stack: unchanged. */
static void check_deps(lua_State *L, int t, const char *id) {
  int ty = lua_getfield(L, t, "deps");
  if (ty == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer k = 1; k <= n; k++) {
      lua_rawgeti(L, -1, k);
      if (!lua_isstring(L, -1))
        luaL_error(L, "step '%s': deps[%d] must be a step id", id, (int)k);
      lua_pop(L, 1);
    }
  } else if (ty != LUA_TNIL && ty != LUA_TSTRING) {
    luaL_error(L, "step '%s': \"deps\" must be a list of step ids", id);
  }
  lua_pop(L, 1);
}

static void add_dep(lua_State *L, lgraph *g, const char *id, const char *dep) {
  int rc = orch_graph_depend(g->g, id, dep);
  if (rc) luaL_error(L, "step '%s': dependency '%s': %s", id, dep, orch_strerror(rc));
}

static void add_deps(lua_State *L, lgraph *g, const char *id, int t) {
  if (lua_getfield(L, t, "deps") == LUA_TSTRING) {
    add_dep(L, g, id, lua_tostring(L, -1));
  } else if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer k = 1; k <= n; k++) {
      lua_rawgeti(L, -1, k);
      add_dep(L, g, id, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* Raises unless every key of the step table at t is a string (lua_tostring
 * would convert a number key in place and break lua_next). */
static void check_names(lua_State *L, int t, const char *id) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "step '%s': key %s is not a name", id, luaL_tolstring(L, -1, NULL));
  }
}

/* The keys a function step reads; the others are refused as plan files
 * refuse them (plan.c's check_keys), "_"-prefixed ones being notes. */
static const char *const fn_keys[] = {"id", "fn", "deps", "cost_ms", "timeout_ms", NULL};

/* Raises on a key of the step table at t that a function step does not
 * read, with the closest known key (a misspelling, or k a prefix of it). */
static void check_fn_keys(lua_State *L, int t, const char *id) {
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    const char *k = lua_tostring(L, -1); /* a string: check_names */
    int known = k[0] == '_';
    for (const char *const *c = fn_keys; *c && !known; c++)
      known = strcmp(*c, k) == 0;
    if (known) continue;
    const char *best = orch_closest(k, fn_keys);
    if (strcmp(k, "kind") == 0)
      luaL_error(L, "step '%s': a step with \"fn\" takes no \"kind\" (it runs the function)", id);
    luaL_error(L, "step '%s': unknown key \"%s\" for a fn step%s%s%s (its keys: id, fn, "
               "deps, cost_ms, timeout_ms)", id, k, best ? " (did you mean \"" : "",
               best ? best : "", best ? "\"?)" : "");
  }
}

/* The step table's t[key], a number of ms >= 0, or -1 when absent. */
static double opt_ms(lua_State *L, int t, const char *key, const char *id) {
  int ty = lua_getfield(L, t, key);
  double v = ty == LUA_TNIL ? -1 : lua_tonumber(L, -1);
  if (ty != LUA_TNIL && (ty != LUA_TNUMBER || !(v >= 0)))
    luaL_error(L, "step '%s': \"%s\" must be a number >= 0", id, key);
  lua_pop(L, 1);
  return v;
}

/* Adds the function step id (its function at fn) or, into err, says why
 * not. */
static int add_fn_step(lua_State *L, lgraph *g, const char *id, int fn, char *err,
                       size_t errlen) {
  double cost = opt_ms(L, 2, "cost_ms", id), timeout = opt_ms(L, 2, "timeout_ms", id);
  long had = orch_graph_find(g->g, id);
  int rc = orch_graph_add_host_fn(g->g, id, run_lua_fn, g);
  /* the C call says only the code: name the problem as a plan would */
  if (rc == ORCH_ESTATE)
    snprintf(err, errlen, "step '%s': the graph already ran (or was "
             "validated): add steps before", id);
  else if (rc == ORCH_EPLAN && had >= 0)
    snprintf(err, errlen, "duplicate step id '%s'", id);
  else if (rc == ORCH_EPLAN)
    snprintf(err, errlen, "step id '%.64s' is not valid: 1 to 256 "
             "bytes of UTF-8, no control bytes", id);
  if (rc) return rc;
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, fn);
  lua_setfield(L, -2, id);
  lua_pop(L, 1);
  if (cost >= 0) orch_graph_set_cost(g->g, id, cost);
  if (timeout >= 0) orch_graph_set_timeout(g->g, id, timeout);
  return ORCH_OK;
}

/* Adds any other step through the plan's JSON form, which checks its keys
 * (deps are added by add_deps). */
static int add_plan_step(lua_State *L, lgraph *g, const char *id, char *err,
                         size_t errlen) {
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushstring(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "encode");
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *k = lua_tostring(L, -2); /* a string: check_names */
    if (strcmp(k, "deps") != 0) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, -4);
    } else {
      lua_pop(L, 1);
    }
  }
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    return luaL_error(L, "step '%s': %s", id, lua_tostring(L, -1));
  int rc = orch_graph_add_json(g->g, lua_tostring(L, -1), err, errlen);
  lua_settop(L, top);
  return rc;
}

/* g:add{id=, fn=function|run=cmd|ms=n|kind=..., deps={...}, cost_ms=, timeout_ms=}
 * -> g | nil, err. A misshapen table raises. */
static int l_g_add(lua_State *L) {
  lgraph *g = check_g(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getfield(L, 2, "id"); /* 3 */
  const char *id = lua_tostring(L, 3);
  if (!id) return luaL_error(L, "a step needs an id");
  check_names(L, 2, id);
  check_deps(L, 2, id);
  int fty = lua_getfield(L, 2, "fn"); /* 4 */
  if (fty != LUA_TNIL && fty != LUA_TFUNCTION)
    return luaL_error(L, "step '%s': \"fn\" must be a function", id);
  char err[1024] = "";
  int rc;
  if (fty == LUA_TFUNCTION) {
    check_fn_keys(L, 2, id);
    rc = add_fn_step(L, g, id, 4, err, sizeof err);
  } else {
    rc = add_plan_step(L, g, id, err, sizeof err);
  }
  if (rc) return push_err(L, err[0] ? err : orch_strerror(rc));
  add_deps(L, g, id, 2);
  lua_settop(L, 1);
  return 1;
}

/* g:depend(id, dep) -> g | nil, err. Unknown ids are reported by
 * g:validate (or g:run), so steps may come in any order. */
static int l_g_depend(lua_State *L) {
  lgraph *g = check_g(L, 1);
  const char *id = luaL_checkstring(L, 2), *dep = luaL_checkstring(L, 3);
  int rc = orch_graph_depend(g->g, id, dep);
  if (rc) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot make '%s' depend on '%s': %s", id, dep,
                    rc == ORCH_ESTATE ? "the graph already ran (or was validated): "
                                        "add dependencies before"
                                      : orch_strerror(rc));
    return 2;
  }
  lua_settop(L, 1);
  return 1;
}

static int l_g_validate(lua_State *L) {
  lgraph *g = check_g(L, 1);
  char err[1024];
  if (orch_graph_validate(g->g, err, sizeof err)) return push_err(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

static void push_step(lua_State *L, orch_graph *g, size_t i) {
  lua_createtable(L, 0, 10);
  lua_pushstring(L, orch_step_id(g, i));
  lua_setfield(L, -2, "id");
  lua_pushstring(L, orch_step_kind(g, i));
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, orch_status_name(orch_step_status(g, i)));
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, (lua_Integer)orch_step_level(g, i));
  lua_setfield(L, -2, "level");
  lua_pushnumber(L, orch_step_started_ms(g, i));
  lua_setfield(L, -2, "started_ms");
  lua_pushnumber(L, orch_step_finished_ms(g, i));
  lua_setfield(L, -2, "finished_ms");
  lua_pushinteger(L, orch_step_attempts(g, i));
  lua_setfield(L, -2, "attempts");
  lua_pushinteger(L, orch_step_exit_status(g, i));
  lua_setfield(L, -2, "exit_status");
  lua_pushinteger(L, orch_step_generation(g, i));
  lua_setfield(L, -2, "generation");
  if (orch_step_output(g, i)) {
    lua_pushstring(L, orch_step_output(g, i));
    lua_setfield(L, -2, "output");
  }
  if (orch_step_error(g, i)) {
    lua_pushstring(L, orch_step_error(g, i));
    lua_setfield(L, -2, "error");
  }
  lua_createtable(L, (int)orch_step_ndeps(g, i), 0);
  for (size_t j = 0; j < orch_step_ndeps(g, i); j++) {
    lua_pushstring(L, orch_step_id(g, orch_step_dep(g, i, j)));
    lua_rawseti(L, -2, (lua_Integer)j + 1);
  }
  lua_setfield(L, -2, "deps");
}

/* g:run(runtime) -> result table {status=, steps={...}, makespan_ms=} */
static int l_rt_session(lua_State *L) {
  lua_pushstring(L, orch_runtime_session(check_rt(L, 1)->rt));
  return 1;
}

static int l_g_run(lua_State *L) {
  lgraph *g = check_g(L, 1);
  lrt *r = check_rt(L, 2);
  /* from a step of a run of the same graph or runtime: orch_run would say
   * so too, but the flags below must stay the outer run's */
  if (g->running) return push_err(L, "the graph is running");
  if (r->running) return push_err(L, "this runtime is already running a graph");
  lua_settop(L, 2); /* graph, runtime: referenced until orch_run returns */
  lua_getiuservalue(L, 1, 1);
  g->L = L;
  g->fns = lua_gettop(L);
  char err[1024] = "";
  g->running = r->running = 1;
  int rc = orch_run(r->rt, g->g, err, sizeof err);
  g->running = r->running = 0;
  if (rc != ORCH_OK && rc != ORCH_ESTEP && rc != ORCH_ECANCELED) return push_err(L, err);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, rc == ORCH_OK ? "passed" : rc == ORCH_ECANCELED ? "canceled" : "failed");
  lua_setfield(L, -2, "status");
  lua_pushnumber(L, orch_graph_makespan_ms(g->g));
  lua_setfield(L, -2, "makespan_ms");
  lua_pushstring(L, orch_runtime_session(r->rt));
  lua_setfield(L, -2, "session");
  size_t n = orch_graph_size(g->g);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    push_step(L, g->g, i);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "steps");
  if (err[0]) {
    lua_pushstring(L, err);
    lua_setfield(L, -2, "error");
  }
  return 1;
}

static int l_g_step(lua_State *L) {
  lgraph *g = check_g(L, 1);
  long i = orch_graph_find(g->g, luaL_checkstring(L, 2));
  if (i < 0) return 0;
  push_step(L, g->g, (size_t)i);
  return 1;
}

static int l_g_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)orch_graph_size(check_g(L, 1)->g));
  return 1;
}

static int l_g_levels(lua_State *L) {
  lgraph *g = check_g(L, 1);
  char err[1024];
  if (orch_graph_validate(g->g, err, sizeof err)) return push_err(L, err);
  size_t nl = orch_graph_levels(g->g), n = orch_graph_size(g->g);
  lua_createtable(L, (int)nl, 0);
  for (size_t l = 0; l < nl; l++) {
    lua_newtable(L);
    lua_rawseti(L, -2, (lua_Integer)l + 1);
  }
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)orch_step_level(g->g, i) + 1);
    lua_pushstring(L, orch_step_id(g->g, i));
    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
    lua_pop(L, 1);
  }
  return 1;
}

static int l_g_critical(lua_State *L) {
  lgraph *g = check_g(L, 1);
  char err[1024];
  if (orch_graph_validate(g->g, err, sizeof err)) return push_err(L, err);
  double cost;
  size_t n = orch_graph_critical_path(g->g, NULL, 0, &cost);
  size_t *idx = malloc((n ? n : 1) * sizeof *idx);
  if (!idx) return luaL_error(L, "out of memory");
  orch_graph_critical_path(g->g, idx, n, NULL);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, orch_step_id(g->g, idx[i]));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  free(idx);
  lua_pushnumber(L, cost);
  return 2;
}

/* orch.status([db [, session]]) -> table (as `orchestrate status --json`) */
static int l_status(lua_State *L) {
  const char *db = luaL_optstring(L, 1, NULL);
  const char *sid = luaL_optstring(L, 2, NULL);
  if (!db) db = getenv("ORCH_DB");
  if (!db || !*db) db = "sqlite:orchestrate.db";
  char err[1024];
  char *txt = NULL;
  if (orch_status_json(db, sid, &txt, err, sizeof err)) return push_err(L, err);
  lua_getglobal(L, "require");
  lua_pushstring(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "decode");
  lua_pushstring(L, txt);
  orch_free(txt);
  lua_call(L, 1, 1);
  return 1;
}

int luaopen_orch(lua_State *L);
__attribute__((visibility("default"))) int luaopen_orch(lua_State *L) {
  static const luaL_Reg rt_methods[] = {{"cancel", l_rt_cancel}, {"close", l_rt_close},
                                        {"session", l_rt_session}, {NULL, NULL}};
  static const luaL_Reg g_methods[] = {
      {"add", l_g_add},       {"depend", l_g_depend},     {"validate", l_g_validate},
      {"run", l_g_run},       {"step", l_g_step},         {"size", l_g_size},
      {"levels", l_g_levels}, {"critical_path", l_g_critical}, {"free", l_g_free},
      {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"runtime", l_runtime}, {"graph", l_graph}, {"load", l_load},
      {"status", l_status},   {"keywords", orch__lua_keywords},
      {NULL, NULL}};
  luaL_newmetatable(L, RT_MT);
  lua_pushcfunction(L, l_rt_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, rt_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, G_MT);
  lua_pushcfunction(L, l_g_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, g_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushstring(L, orch_version());
  lua_setfield(L, -2, "version");
  return 1;
}
