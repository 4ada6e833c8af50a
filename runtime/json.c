/* json.c converts between Lua values and jansson's json_t, for plan files
 * written in Lua, hook arguments and hook results. Tables whose keys are
 * exactly 1..n become arrays, other tables objects; an empty table is an
 * empty object. A table reached twice is copied twice (JSON has no
 * sharing), so the copy is bounded: its estimated size is charged against
 * what is left of a sandbox state's memory cap (policy.c), or against
 * CONVERT_MAX_BYTES for other states. The conversion raises no Lua error
 * (it allocates nothing from Lua), so it may run inside a protected call.
 * Uses the Lua C API and jansson. */
#include "orch_int.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define CONVERT_MAX_BYTES (256u << 20) /* states without a memory cap */
/* Estimated heap bytes of jansson's copy (with malloc's overhead),
 * measured on glibc: a value, what a table adds, what a key adds. */
#define VALUE_BYTES 48
#define TABLE_BYTES 128
#define KEY_BYTES 64

/* One conversion's bound: bytes left to spend on json_t nodes. */
typedef struct conv {
  size_t left, limit;
  bool capped; /* limit is a sandbox's remaining memory cap */
} conv;

static json_t *to_json(lua_State *L, int idx, int depth, int max_depth,
                       char *path, size_t pathlen, conv *cv, char *err,
                       size_t errlen);

/* Charges n more bytes of output; false (with the message) past the
 * bound. */
static bool charge(conv *cv, size_t n, const char *path, char *err,
                   size_t errlen) {
  if (n <= cv->left) {
    cv->left -= n;
    return true;
  }
  if (cv->capped)
    orch__err(err, errlen, ORCH_ELIMIT,
              "%s: its JSON copy would pass the memory cap (%zu bytes left; "
              "a table reached more than once is copied each time)",
              path[0] ? path : "value", cv->limit);
  else
    orch__err(err, errlen, ORCH_ELIMIT,
              "%s: its JSON copy would take more than %zu bytes (a table "
              "reached more than once is copied each time)",
              path[0] ? path : "value", cv->limit);
  return false;
}

/* A number key as Lua's tostring writes it ("%.14g", floats that look
 * like integers with ".0"), without allocating from Lua. */
static void number_key(lua_State *L, int idx, char *buf, size_t n) {
  if (lua_isinteger(L, idx)) {
    snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
    return;
  }
  snprintf(buf, n, "%.14g", (double)lua_tonumber(L, idx));
  if (buf[strspn(buf, "-0123456789")] == '\0' && strlen(buf) + 3 <= n)
    strcat(buf, ".0");
}

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
                             char *path, size_t pathlen, conv *cv, char *err,
                             size_t errlen) {
  size_t plen = strlen(path);
  long n = seq_len(L, idx);
  if (n > 0) {
    json_t *a = json_array();
    for (long i = 1; i <= n; i++) {
      snprintf(path + plen, pathlen - plen, "[%ld]", i);
      lua_rawgeti(L, idx, i);
      json_t *v = to_json(L, lua_gettop(L), depth + 1, max_depth, path,
                          pathlen, cv, err, errlen);
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
      size_t klen;
      k = lua_tolstring(L, -2, &klen);
      /* jansson's keys are UTF-8 C strings: it would take "a\0b" for "a"
       * and leave a key that is not UTF-8 out, silently */
      size_t bad;
      const char *why = strlen(k) != klen ? "has a NUL byte"
                        : !orch__utf8_valid(k, klen, &bad)
                            ? "is not valid UTF-8"
                            : NULL;
      if (why) {
        orch__err(err, errlen, ORCH_EINVAL, "%s: a key %s (byte %zu)",
                  path[0] ? path : "value", why,
                  strlen(k) != klen ? strlen(k) : bad);
        lua_pop(L, 2);
        json_decref(o);
        return NULL;
      }
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
      number_key(L, -2, key, sizeof key);
      k = key;
    } else {
      orch__err(err, errlen, ORCH_EINVAL, "%s: a key of type %s",
                path[0] ? path : "value", luaL_typename(L, -2));
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    snprintf(path + plen, pathlen - plen, "%s%s", plen ? "." : "", k);
    if (!charge(cv, KEY_BYTES + strlen(k), path, err, errlen)) {
      path[plen] = '\0';
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    json_t *v = to_json(L, lua_gettop(L), depth + 1, max_depth, path, pathlen,
                        cv, err, errlen);
    path[plen] = '\0';
    if (!v) { lua_pop(L, 2); json_decref(o); return NULL; }
    if (json_object_set_new(o, k, v) != 0) {
      orch__err(err, errlen, ORCH_ENOMEM, "%s%s%s: out of memory", path,
                plen ? "." : "", k);
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    lua_pop(L, 1);
  }
  return o;
}

static json_t *to_json(lua_State *L, int idx, int depth, int max_depth,
                       char *path, size_t pathlen, conv *cv, char *err,
                       size_t errlen) {
  if (depth > max_depth) {
    orch__err(err, errlen, ORCH_ELIMIT,
              "%s: nested deeper than the limit of %d", path[0] ? path : "value",
              max_depth);
    return NULL;
  }
  if (!charge(cv, VALUE_BYTES, path, err, errlen)) return NULL;
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
    if (!charge(cv, len, path, err, errlen)) return NULL;
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
    if (!charge(cv, TABLE_BYTES, path, err, errlen)) return NULL;
    return table_to_json(L, idx, depth, max_depth, path, pathlen, cv, err,
                         errlen);
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
  conv cv;
  cv.limit = orch__lua_mem_left(L, &cv.capped);
  if (!cv.capped || cv.limit > CONVERT_MAX_BYTES) {
    cv.limit = CONVERT_MAX_BYTES;
    cv.capped = false;
  }
  cv.left = cv.limit;
  idx = lua_absindex(L, idx);
  return to_json(L, idx, 0, max_depth, path, sizeof path, &cv, err, errlen);
}

size_t orch__json_text_cost(const char *s, size_t n) {
  /* every value but the root follows a '[', ',' or ':'; every table is a
   * '[' or '{'; every key is followed by a ':'. Malformed text only makes
   * the estimate larger, never smaller than what jansson builds. */
  size_t values = 1, tables = 0, keys = 0, strbytes = 0;
  bool in_str = false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (in_str) {
      if (c == '\\') { i++; strbytes++; }
      else if (c == '"') in_str = false;
      else strbytes++;
      continue;
    }
    switch (c) {
    case '"': in_str = true; break;
    case '[': values++; tables++; break;
    case '{': tables++; break;
    case ',': values++; break;
    case ':': keys++; break;
    default: break;
    }
  }
  return values * VALUE_BYTES + tables * TABLE_BYTES + keys * KEY_BYTES +
         strbytes;
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
