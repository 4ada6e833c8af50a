/* fuzz_pattern.c: differential libFuzzer target for the sandbox's pattern
 * functions (runtime/lpattern.c). Each input is one call of string.find,
 * match, gmatch or gsub, run by the same Lua harness in a sandbox state
 * (the engine's matcher, budgeted) and in a plain luaL_newstate +
 * luaL_openlibs state (the stock library); any difference in a result or
 * an error message aborts. The sandbox runs first, with a small budget: a
 * call that spends it is not run on the stock library, whose matcher
 * would backtrack for as long as it takes. Built by `make fuzz`.
 *
 * Input: byte 0 picks the function (low 2 bits), the replacement of gsub
 * (bits 2-5) and whether find is plain (bit 6); byte 1 is init (a signed
 * byte; 0 means none) or gsub's max n (-2 .. 5; 6 and up: none); byte 2
 * splits the rest: the subject is its first byte2 % (rest + 1) bytes, the
 * pattern the others. */
#include "orch_int.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#include "../test/pattern_harness.h" /* DIFF_HARNESS, as test_policy.c */

static lua_State *S, *P; /* each holds the harness at index 1 */

static void setup(void) {
  char err[512];
  orch__config c;
  orch__config_defaults(&c);
  c.lua_budget = 200; /* 200,000 steps: the stock library's time stays short */
  S = orch__lua_new_sandbox(&c, err, sizeof err);
  orch__config_deinit(&c);
  if (!S ||
      orch__lua_load(S, DIFF_HARNESS, sizeof DIFF_HARNESS - 1, "harness",
                     err, sizeof err) != ORCH_OK) {
    fprintf(stderr, "fuzz_pattern: %s\n", err);
    abort();
  }
  P = luaL_newstate();
  luaL_openlibs(P);
  if (luaL_loadbuffer(P, DIFF_HARNESS, sizeof DIFF_HARNESS - 1,
                      "=harness") != LUA_OK)
    abort();
}

static void show(const char *what, const char *s, size_t n) {
  fprintf(stderr, "%s: \"", what);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 32 && c < 127 && c != '"' && c != '\\') fputc(c, stderr);
    else fprintf(stderr, "\\%u", c);
  }
  fprintf(stderr, "\"\n");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const ops[] = {"find", "match", "gmatch", "gsub"};
  static const char *const repls[] = {"<%0>", "%1-%1", "%2", "%%", "%",
                                      "x%z", "fn()", "tbl()", "", "%1%9",
                                      "()", "%0%0"};
  if (size < 3) return 0;
  if (!S) setup();
  const char *op = ops[data[0] & 3];
  const char *repl = repls[(data[0] >> 2 & 15) % (sizeof repls /
                                                  sizeof repls[0])];
  bool plain = data[0] & 64;
  int a = (int8_t)data[1];
  size_t rest = size - 3, sl = data[2] % (rest + 1);
  const char *s = (const char *)data + 3, *p = s + sl;
  size_t pl = rest - sl;
  const char *res[2];
  size_t len[2];
  lua_State *Ls[2] = {S, P};
  for (int k = 0; k < 2; k++) {
    lua_State *L = Ls[k];
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    lua_pushstring(L, op);
    lua_pushlstring(L, s, sl);
    lua_pushlstring(L, p, pl);
    if (!strcmp(op, "gsub")) {
      if (a >= -2 && a <= 5) lua_pushinteger(L, a);
      else lua_pushnil(L);
    } else if (a) {
      lua_pushinteger(L, a);
    } else {
      lua_pushnil(L);
    }
    if (plain) lua_pushboolean(L, 1);
    else lua_pushnil(L);
    lua_pushstring(L, repl);
    if (k == 0) {
      char err[512];
      int rc = orch__lua_pcall(L, 6, 1, err, sizeof err);
      if (rc == ORCH_ELIMIT && strstr(err, "instruction budget")) return 0;
      if (rc) {
        fprintf(stderr, "fuzz_pattern: the sandbox's harness failed: %s\n",
                err);
        abort();
      }
    } else if (lua_pcall(L, 6, 1, 0) != LUA_OK) {
      fprintf(stderr, "fuzz_pattern: the stock harness failed: %s\n",
              lua_tostring(L, -1));
      abort();
    }
    res[k] = lua_tolstring(L, -1, &len[k]);
  }
  if (!res[0] || !res[1] || len[0] != len[1] ||
      memcmp(res[0], res[1], len[0]) != 0) {
    fprintf(stderr, "fuzz_pattern: %s differs (init/n %d, plain %d, repl "
            "'%s')\n", op, a, plain, repl);
    show("subject", s, sl);
    show("pattern", p, pl);
    show("sandbox", res[0] ? res[0] : "", res[0] ? len[0] : 0);
    show("stock", res[1] ? res[1] : "", res[1] ? len[1] : 0);
    abort();
  }
  lua_settop(S, 1);
  lua_settop(P, 1);
  return 0;
}
