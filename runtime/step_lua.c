/* step_lua.c provides the `lua` kind: a chunk of Lua (the step's "code")
 * run on a worker thread in that worker's sandboxed state, under the call
 * budget. The chunk receives one table, {id = ..., deps = {id = output}},
 * and returns the output: a string or number as text, a table as JSON, or
 * nil, "message" to fail. Uses pool.c for the state and policy.c for the
 * sandbox and the protected call. */
#include "orch_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *code;
} lua_params;

/* do_step's input, and what it found for run to take after the call. */
typedef struct result {
  orch_graph *g;
  uint32_t idx;
  bool failed;    /* nil, message: the message is the string left */
  json_t *j;      /* a table result as JSON (run frees it) */
  char jerr[512]; /* why a table result is not JSON */
} result;

/* Protected, under the budget: calls the chunk with {id, deps} and turns
 * what it returned into one string (a message or a scalar output) or
 * res->j. Stack on entry: res chunk; leaves one value (nil when the output
 * is res->j or there is none). */
static int do_step(lua_State *L) {
  result *res = lua_touserdata(L, 1);
  orch_graph *g = res->g;
  uint32_t idx = res->idx;
  /* A fresh environment per step over the sandbox's globals, so one step
   * cannot leave globals behind for the next. */
  lua_createtable(L, 0, 0);
  lua_createtable(L, 0, 1);
  lua_pushglobaltable(L);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  if (!lua_setupvalue(L, 2, 1)) lua_pop(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, orch__step_id(g, idx));
  lua_setfield(L, -2, "id");
  uint32_t nd = g->dep_off[idx + 1] - g->dep_off[idx];
  lua_createtable(L, 0, (int)nd);
  for (uint32_t e = g->dep_off[idx]; e < g->dep_off[idx + 1]; e++) {
    const orch__step *d = &g->steps[g->deps[e]];
    if (d->output) lua_pushstring(L, d->output);
    else lua_pushboolean(L, 0);
    lua_setfield(L, -2, orch__step_id(g, g->deps[e]));
  }
  lua_setfield(L, -2, "deps");
  lua_call(L, 1, 2);                     /* res r1 r2 */
  if (lua_isnil(L, 2) && !lua_isnil(L, 3)) {
    res->failed = true;
    luaL_tolstring(L, 3, NULL);          /* runs a __tostring, budgeted */
    return 1;
  }
  if (lua_istable(L, 2)) {
    res->j = orch__lua_to_json(L, 2, 64, res->jerr, sizeof res->jerr);
    if (!res->j && !res->jerr[0])
      snprintf(res->jerr, sizeof res->jerr, "cannot convert it");
    lua_pushnil(L);
    return 1;
  }
  if (lua_isnil(L, 2)) return 1;
  luaL_tolstring(L, 2, NULL);
  return 1;
}

static int run(orch__run *r, uint32_t idx, orch__worker *w) {
  orch_graph *g = r->g;
  orch__step *s = &g->steps[idx];
  lua_params *lp = s->u.p;
  char err[1024];
  /* the step boundary: take a newly published script generation first */
  orch__lstate *ls = orch__worker_lstate(w);
  if (ls) orch__lstate_sync(ls);
  s->generation = orch__lstate_generation(ls);
  lua_State *L = orch__worker_lua(w, err, sizeof err);
  if (!L) {
    orch__step_set_error(s, "no Lua state: %s", err);
    return ORCH_ESCRIPT;
  }
  int top = lua_gettop(L);
  int rc = ORCH_OK;
  result res = {.g = g, .idx = idx};
  char name[300];
  snprintf(name, sizeof name, "=step '%s'", orch__step_id(g, idx));
  if (luaL_loadbufferx(L, lp->code, strlen(lp->code), name, "t") != LUA_OK) {
    orch__step_set_error(s, "%s", lua_tostring(L, -1));
    rc = ORCH_ESCRIPT;
    goto done;
  }
  /* the chunk, its input and the conversion of what it returns (a
   * __tostring, a table) run in one protected call under the budget */
  lua_pushcfunction(L, do_step);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &res);
  lua_insert(L, -2);
  if (orch__lua_pcall(L, 2, 1, err, sizeof err) != ORCH_OK) {
    orch__step_set_error(s, "%s", err);
    rc = ORCH_ESCRIPT;
    goto done;
  }
  if (res.failed) {
    orch__step_set_error(s, "%s", lua_tostring(L, -1));
    rc = ORCH_ESTEP;
  } else if (res.jerr[0]) {
    orch__step_set_error(s, "result: %s", res.jerr);
    rc = ORCH_ESCRIPT;
  } else if (res.j) {
    char *txt = json_dumps(res.j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (txt) orch__step_set_output(s, txt, strlen(txt));
    free(txt);
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *p = lua_tolstring(L, -1, &n);
    orch__step_set_output(s, p, n);
  }
done:
  json_decref(res.j);
  lua_settop(L, top);
  return rc;
}

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  json_t *code = json_object_get(obj, "code");
  if (!json_is_string(code))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a lua step needs \"code\", a string of Lua", where);
  lua_params *lp = calloc(1, sizeof *lp);
  if (!lp || !(lp->code = orch__strdup(json_string_value(code)))) {
    free(lp);
    return ORCH_ENOMEM;
  }
  s->u.p = lp;
  return ORCH_OK;
}

static void free_params(orch__step *s) {
  lua_params *lp = s->u.p;
  if (lp) free(lp->code);
  free(lp);
  s->u.p = NULL;
}

static const char *const keys[] = {"code", NULL};

const orch__kind orch__kind_lua = {.name = "lua", .where = ORCH__ON_WORKER,
                                   .keys = keys,
                                   .parse = parse, .run = run,
                                   .free = free_params};
