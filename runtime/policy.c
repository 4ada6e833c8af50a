/* policy.c provides the Lua sandbox the core runs scripts in: a state with
 * an allow-list of libraries, a capped allocator, and a protected call with
 * a traceback and an instruction budget. (The full policy engine, with
 * hooks and hot reload, grows here.) Uses Lua 5.4. */
#include "orch_int.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  size_t used, max;
  long budget; /* instructions per call */
} sandbox_info;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sandbox_info *si = ud;
  if (!ptr) osize = 0;
  if (nsize == 0) {
    free(ptr);
    si->used -= osize;
    return NULL;
  }
  if (nsize > osize && si->used + (nsize - osize) > si->max) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) si->used = si->used - osize + nsize;
  return p;
}

static sandbox_info *info_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

lua_State *orch__lua_new_sandbox(const orch__config *cfg, char *err,
                                 size_t errlen) {
  sandbox_info *si = calloc(1, sizeof *si);
  if (!si) return NULL;
  si->max = cfg->lua_mem_max;
  si->budget = (long)cfg->lua_budget * 1000;
  lua_State *L = lua_newstate(capped_alloc, si);
  if (!L) {
    free(si);
    orch__err(err, errlen, ORCH_ENOMEM, "cannot create a Lua state");
    return NULL;
  }
  luaL_requiref(L, "_G", luaopen_base, 1);
  luaL_requiref(L, "string", luaopen_string, 1);
  luaL_requiref(L, "table", luaopen_table, 1);
  luaL_requiref(L, "math", luaopen_math, 1);
  luaL_requiref(L, "utf8", luaopen_utf8, 1);
  luaL_requiref(L, "os", luaopen_os, 0);
  lua_settop(L, 0);
  /* os: only the clock functions. */
  lua_createtable(L, 0, 3);
  static const char *const osok[] = {"time", "clock", "date"};
  lua_getglobal(L, "_G");
  lua_pop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "os");
  for (size_t i = 0; i < ORCH__ARRAY_LEN(osok); i++) {
    lua_getfield(L, -1, osok[i]);
    lua_setfield(L, 1, osok[i]);
  }
  lua_pop(L, 2);
  lua_setglobal(L, "os");
  static const char *const unsafe[] = {"dofile", "loadfile", "require",
                                       "collectgarbage", "load"};
  for (size_t i = 0; i < ORCH__ARRAY_LEN(unsafe); i++) {
    lua_pushnil(L);
    lua_setglobal(L, unsafe[i]);
  }
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  return L;
}

void orch__lua_close(lua_State *L) {
  if (!L) return;
  sandbox_info *si = info_of(L);
  lua_close(L);
  free(si);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  /* Re-arm on every instruction so a pcall in the script cannot swallow
   * the stop. */
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "instruction budget exceeded");
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_typename(L, 1);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int orch__lua_pcall(lua_State *L, int nargs, int nres, char *err,
                    size_t errlen) {
  sandbox_info *si = info_of(L);
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  if (si && si->budget > 0) lua_sethook(L, budget_hook, LUA_MASKCOUNT, (int)si->budget);
  int st = lua_pcall(L, nargs, nres, base);
  lua_sethook(L, NULL, 0, 0);
  lua_remove(L, base);
  if (st == LUA_OK) return ORCH_OK;
  const char *m = st == LUA_ERRMEM ? "not enough memory (Lua memory cap)"
                                   : lua_tostring(L, -1);
  /* First line only: the message, not the whole traceback. */
  const char *nl = m ? strchr(m, '\n') : NULL;
  orch__err(err, errlen, ORCH_ESCRIPT, "%.*s", nl ? (int)(nl - m) : (int)strlen(m ? m : ""),
            m ? m : "error");
  lua_pop(L, 1);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return ORCH_ESCRIPT;
}
