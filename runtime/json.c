/* json.c converts between Lua values and jansson's json_t, for plan files
 * written in Lua, hook arguments and hook results. Tables whose keys are
 * exactly 1..n become arrays, other tables objects; an empty table is an
 * empty object. Uses the Lua C API and jansson. */
#include "orch_int.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static json_t *to_json(lua_State *L, int idx, int depth, int max_depth,
                       char *path, size_t pathlen, char *err, size_t errlen);

/* Length of the array part if t at idx is a sequence 1..n, else -1. */
static long seq_len(lua_State *L, int idx) {
  long n = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER || !lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return -1;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1) { lua_pop(L, 1); return -1; }
    if (k > max) max = (long)k;
    n++;
  }
  return n == max ? n : -1;
}

static json_t *table_to_json(lua_State *L, int idx, int depth, int max_depth,
                             char *path, size_t pathlen, char *err,
                             size_t errlen) {
  size_t plen = strlen(path);
  long n = seq_len(L, idx);
  if (n > 0) {
    json_t *a = json_array();
    for (long i = 1; i <= n; i++) {
      snprintf(path + plen, pathlen - plen, "[%ld]", i);
      lua_rawgeti(L, idx, i);
      json_t *v = to_json(L, lua_gettop(L), depth + 1, max_depth, path,
                          pathlen, err, errlen);
      lua_pop(L, 1);
      if (!v) { json_decref(a); return NULL; }
      json_array_append_new(a, v);
    }
    path[plen] = '\0';
    return a;
  }
  json_t *o = json_object();
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    char key[64];
    const char *k;
    if (lua_type(L, -2) == LUA_TSTRING) {
      k = lua_tostring(L, -2);
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
      lua_pushvalue(L, -2);
      snprintf(key, sizeof key, "%s", lua_tostring(L, -1));
      lua_pop(L, 1);
      k = key;
    } else {
      orch__err(err, errlen, ORCH_EINVAL, "%s: a key of type %s",
                path[0] ? path : "value", luaL_typename(L, -2));
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    snprintf(path + plen, pathlen - plen, "%s%s", plen ? "." : "", k);
    json_t *v = to_json(L, lua_gettop(L), depth + 1, max_depth, path, pathlen,
                        err, errlen);
    path[plen] = '\0';
    if (!v) { lua_pop(L, 2); json_decref(o); return NULL; }
    json_object_set_new(o, k, v);
    lua_pop(L, 1);
  }
  return o;
}

static json_t *to_json(lua_State *L, int idx, int depth, int max_depth,
                       char *path, size_t pathlen, char *err, size_t errlen) {
  if (depth > max_depth) {
    orch__err(err, errlen, ORCH_ELIMIT,
              "%s: nested deeper than the limit of %d", path[0] ? path : "value",
              max_depth);
    return NULL;
  }
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return json_null();
  case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return json_integer(lua_tointeger(L, idx));
    else {
      double d = lua_tonumber(L, idx);
      if (!isfinite(d)) {
        orch__err(err, errlen, ORCH_EINVAL, "%s: %s is not a JSON number",
                  path[0] ? path : "value", isnan(d) ? "NaN" : "inf");
        return NULL;
      }
      return json_real(d);
    }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    json_t *v = json_stringn(s, len);
    if (!v)
      orch__err(err, errlen, ORCH_EINVAL, "%s: string is not valid UTF-8",
                path[0] ? path : "value");
    return v;
  }
  case LUA_TTABLE:
    if (!lua_checkstack(L, 4)) {
      orch__err(err, errlen, ORCH_ELIMIT, "%s: too deep", path);
      return NULL;
    }
    return table_to_json(L, idx, depth, max_depth, path, pathlen, err, errlen);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return json_null(); /* cjson.null */
    /* fall through */
  default:
    orch__err(err, errlen, ORCH_EINVAL, "%s: a %s cannot be data",
              path[0] ? path : "value", luaL_typename(L, idx));
    return NULL;
  }
}

json_t *orch__lua_to_json(lua_State *L, int idx, int max_depth, char *err,
                          size_t errlen) {
  char path[512] = "";
  idx = lua_absindex(L, idx);
  return to_json(L, idx, 0, max_depth, path, sizeof path, err, errlen);
}

void orch__lua_push_json(lua_State *L, const json_t *v) {
  luaL_checkstack(L, 3, "JSON nesting");
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    const char *k;
    json_t *x;
    lua_createtable(L, 0, (int)json_object_size(v));
    json_object_foreach((json_t *)v, k, x) {
      orch__lua_push_json(L, x);
      lua_setfield(L, -2, k);
    }
    break;
  }
  case JSON_ARRAY: {
    size_t i;
    json_t *x;
    lua_createtable(L, (int)json_array_size(v), 0);
    json_array_foreach(v, i, x) {
      orch__lua_push_json(L, x);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  }
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(v), json_string_length(v));
    break;
  case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); break;
  case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
  case JSON_TRUE: lua_pushboolean(L, 1); break;
  case JSON_FALSE: lua_pushboolean(L, 0); break;
  default: lua_pushlightuserdata(L, NULL); break; /* null, as cjson.null */
  }
}
