/* keywords.c provides orch.keywords, the keyword matcher that routing
 * scripts use in the policy sandbox (and the Lua module exposes): a list of
 * keywords is compiled once into a first-byte index, and a call counts the
 * distinct keywords found in a text in one pass over it. The matching is the
 * same as the plain-Lua fallback in scripts/routing/complexity.lua (ASCII
 * case-insensitive, a keyword matches where a word starts, a phrase takes
 * any white space between its words), which that script's selftest checks
 * against this one on every load. Uses only the Lua C API. */
#include "orch_int.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* One distinct keyword, normalized: lower-cased, trimmed, every run of
 * white space inside it one ' '. */
typedef struct kw {
  uint32_t off, len; /* in kwset.text */
  int32_t src;       /* 1-based index of its first spelling in the list */
  int32_t next;      /* next keyword with the same first byte, or -1 */
} kw;

/* The compiled form of a list: one userdata (the GC owns it), laid out as
 * this header, then kws[nkw], ptrs[nlist], seen[nkw], text. */
typedef struct kwset {
  lua_Integer nlist; /* entries of the list when compiled */
  int32_t nkw;
  int32_t head[256]; /* first byte -> first keyword with it, or -1 */
  kw *kws;
  const char **ptrs; /* each entry's string when compiled (kept alive) */
  unsigned char *seen;
  char *text;
} kwset;

/* The matcher, the upvalue of its count and matched functions: user values
 * 1 = the list, 2 = the kwset, 3 = a copy of the list's entries (keeps the
 * strings in ptrs alive, so a changed entry can never show up at an old
 * address). */
typedef struct matcher {
  kwset *k;   /* user value 2 */
  bool whole; /* whole words only; else a keyword may start a longer word */
  char name[48];
} matcher;

/* Byte classes, filled once (init_tables): ASCII letters and digits make
 * words; LOWER is tolower in the C locale, as Lua's string.lower. */
static bool WORD[256];
static unsigned char LOWER[256];

static void init_tables(void) {
  for (int c = 0; c < 256; c++) {
    LOWER[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    WORD[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
              (c >= 'A' && c <= 'Z');
  }
}

static bool is_word(unsigned char c) { return WORD[c]; }

/* Lua's %s in the C locale. */
static bool is_space(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

static unsigned char lower(unsigned char c) { return LOWER[c]; }

/* Writes the normalized form of s into out (at least n bytes); its length. */
static size_t normalize(const char *s, size_t n, char *out) {
  size_t i = 0, o = 0;
  while (i < n && is_space((unsigned char)s[i])) i++;
  while (i < n) {
    if (is_space((unsigned char)s[i])) {
      while (i < n && is_space((unsigned char)s[i])) i++;
      if (i < n) out[o++] = ' ';
    } else {
      out[o++] = (char)lower((unsigned char)s[i++]);
    }
  }
  return o;
}

/* Compiles the list at index li into a new kwset userdata (pushed) and a
 * copy of its entries (pushed above it). Raises on an entry that is not a
 * non-empty string. */
static kwset *compile(lua_State *L, int li, const matcher *m) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, li);
  size_t text = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len = 0;
    const char *s = NULL;
    if (lua_rawgeti(L, li, i) == LUA_TSTRING) s = lua_tolstring(L, -1, &len);
    size_t j = 0;
    while (s && j < len && is_space((unsigned char)s[j])) j++;
    if (!s || j == len)
      luaL_error(L, "%s: keyword %d must be a non-empty string", m->name,
                 (int)i);
    text += len;
    lua_pop(L, 1);
  }
  if ((size_t)n > (SIZE_MAX - sizeof(kwset) - text) /
                      (sizeof(kw) + sizeof(char *) + 1) ||
      n > INT32_MAX)
    luaL_error(L, "%s: keyword list too long", m->name);
  size_t un = (size_t)n;
  kwset *k = lua_newuserdatauv(L, sizeof(kwset) + un * sizeof(kw) +
                                      un * sizeof(char *) + un + text + 1,
                               0);
  k->nlist = n;
  k->nkw = 0;
  for (int c = 0; c < 256; c++) k->head[c] = -1;
  k->kws = (kw *)(k + 1);
  k->ptrs = (const char **)(k->kws + un);
  k->seen = (unsigned char *)(k->ptrs + un);
  k->text = (char *)(k->seen + un);
  lua_createtable(L, (int)n, 0);
  int copy = lua_gettop(L);
  /* duplicates are found through a hash of the normalized keywords (open
   * addressing, at most half full), a userdata dropped at the end: linear
   * in the list, where comparing with every earlier keyword took 7 s for
   * 80,000 entries, in C, where the budget cannot stop it */
  size_t hcap = 16;
  while (hcap < 2 * un) hcap *= 2;
  int32_t *hash = lua_newuserdatauv(L, hcap * sizeof *hash, 0);
  memset(hash, 0xff, hcap * sizeof *hash); /* -1: empty */
  int32_t tail[256] = {0};
  size_t used = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, li, i);
    const char *s = lua_tolstring(L, -1, &len);
    k->ptrs[i - 1] = s;
    lua_rawseti(L, copy, i);
    char *out = k->text + used;
    size_t nl = normalize(s, len, out);
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t j = 0; j < nl; j++)
      h = (h ^ (unsigned char)out[j]) * 1099511628211ULL;
    size_t slot = (size_t)(h ^ (h >> 32)) & (hcap - 1);
    bool dup = false;
    for (int32_t d; (d = hash[slot]) >= 0; slot = (slot + 1) & (hcap - 1)) {
      if (k->kws[d].len == nl && !memcmp(k->text + k->kws[d].off, out, nl)) {
        dup = true;
        break;
      }
    }
    if (dup) continue;
    hash[slot] = k->nkw;
    kw *w = &k->kws[k->nkw];
    w->off = (uint32_t)used;
    w->len = (uint32_t)nl;
    w->src = (int32_t)i;
    w->next = -1;
    unsigned char c = (unsigned char)out[0];
    if (k->head[c] < 0) k->head[c] = k->nkw;
    else k->kws[tail[c]].next = k->nkw;
    tail[c] = k->nkw++;
    used += nl;
  }
  lua_pop(L, 1); /* the hash */
  return k;
}

/* The calling function's matcher, its list unchanged since it was compiled
 * (recompiled when an entry changed). Leaves the list at index top+1. */
static kwset *current(lua_State *L, matcher **mp) {
  int mi = lua_upvalueindex(1);
  matcher *m = lua_touserdata(L, mi);
  *mp = m;
  lua_getiuservalue(L, mi, 1);
  int li = lua_gettop(L);
  kwset *k = m->k;
  bool same = (lua_Integer)lua_rawlen(L, li) == k->nlist;
  if (same && !lua_checkstack(L, (int)k->nlist)) same = false;
  for (lua_Integer i = 1; same && i <= k->nlist; i++)
    same = lua_rawgeti(L, li, i) == LUA_TSTRING &&
           lua_tostring(L, -1) == k->ptrs[i - 1];
  lua_settop(L, li);
  if (!same) {
    m->k = compile(L, li, m);
    lua_setiuservalue(L, mi, 3);
    lua_setiuservalue(L, mi, 2);
  }
  return m->k;
}

/* Copies n bytes of s to d, ASCII upper case to lower case, 8 at a time:
 * in each byte without the high bit, adding 0x3f sets bit 7 from 'A' up and
 * adding 0x25 sets it from 'Z' + 1 up; where exactly one is set, 0x20 is
 * or-ed in. */
static void lower_copy(char *d, const char *s, size_t n) {
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    uint64_t x, h;
    memcpy(&x, s + j, 8);
    h = x & 0x7f7f7f7f7f7f7f7fULL;
    uint64_t upper = ~x & ((h + 0x3f3f3f3f3f3f3f3fULL) ^
                           (h + 0x2525252525252525ULL)) &
                     0x8080808080808080ULL;
    x |= upper >> 2;
    memcpy(d + j, &x, 8);
  }
  for (; j < n; j++) d[j] = (char)LOWER[(unsigned char)s[j]];
}

/* Joins the texts at from..top with single spaces, lower-cased, into a
 * buffer: buf when it fits, else a userdata left on the stack. nil is empty
 * text, numbers are converted; any other value returns NULL with its index
 * in *bad. */
static const char *joined(lua_State *L, int from, int top, char *buf,
                          size_t cap, size_t *lenp, int *bad) {
  size_t total = 0;
  for (int i = from; i <= top; i++) {
    size_t n = 0;
    int t = lua_type(L, i);
    if (t == LUA_TSTRING || t == LUA_TNUMBER) lua_tolstring(L, i, &n);
    else if (t != LUA_TNIL) {
      *bad = i;
      return NULL;
    }
    total += n + (i > from);
  }
  char *t = total <= cap ? buf : lua_newuserdatauv(L, total ? total : 1, 0);
  size_t o = 0;
  for (int i = from; i <= top; i++) {
    size_t n = 0;
    const char *s = lua_isnil(L, i) ? "" : lua_tolstring(L, i, &n);
    if (i > from) t[o++] = ' ';
    lower_copy(t + o, s, n);
    o += n;
  }
  *lenp = o;
  return t;
}

/* Does keyword w match t at pos? Its end in *end. */
static bool match_at(const kwset *k, const kw *w, const char *t, size_t tl,
                     size_t pos, size_t *end) {
  const char *p = k->text + w->off;
  size_t i = pos;
  for (uint32_t j = 0; j < w->len; j++) {
    if (p[j] == ' ') {
      if (i >= tl || !is_space((unsigned char)t[i])) return false;
      while (i < tl && is_space((unsigned char)t[i])) i++;
    } else if (i >= tl || t[i] != p[j]) {
      return false;
    } else {
      i++;
    }
  }
  *end = i;
  return true;
}

/* Marks in k->seen the keywords found in t; stops at limit of them. */
static lua_Integer scan(kwset *k, bool whole, const char *t, size_t tl,
                        lua_Integer limit) {
  lua_Integer found = 0;
  memset(k->seen, 0, (size_t)k->nkw);
  for (size_t pos = 0; pos < tl && found < limit; pos++) {
    if (pos > 0 && is_word((unsigned char)t[pos - 1])) continue;
    for (int32_t i = k->head[(unsigned char)t[pos]]; i >= 0; i = k->kws[i].next) {
      size_t end;
      if (k->seen[i] || !match_at(k, &k->kws[i], t, tl, pos, &end)) continue;
      if (whole && end < tl && is_word((unsigned char)t[end])) continue;
      k->seen[i] = 1;
      if (++found >= limit) break;
    }
  }
  return found;
}

/* Returns nil and the index of a text that is neither a string, a number
 * nor nil (the caller words the error). */
static int bad_text(lua_State *L, int i) {
  lua_pushnil(L);
  lua_pushinteger(L, i);
  return 2;
}

/* m.count(limit, text, ...) -> how many distinct keywords of the list occur
 * in the texts joined by spaces, counting up to limit. A nil text is empty;
 * a text of another type than string or number returns nil and its
 * position among the texts (1 = the first text). */
static int l_count(lua_State *L) {
  matcher *m;
  lua_Integer limit = luaL_checkinteger(L, 1);
  int top = lua_gettop(L), bad;
  kwset *k = current(L, &m);
  char buf[512];
  size_t tl;
  const char *t = joined(L, 2, top, buf, sizeof buf, &tl, &bad);
  if (!t) return bad_text(L, bad - 1);
  lua_pushinteger(L, limit > 0 ? scan(k, m->whole, t, tl, limit) : 0);
  return 1;
}

/* m.matched(text, ...) -> the keywords that occur, as spelled in the list,
 * in list order (the first spelling of each distinct keyword). */
static int l_matched(lua_State *L) {
  matcher *m;
  int top = lua_gettop(L);
  kwset *k = current(L, &m);
  int li = top + 1;
  char buf[512];
  size_t tl;
  int bad;
  const char *t = joined(L, 1, top, buf, sizeof buf, &tl, &bad);
  if (!t) return bad_text(L, bad);
  scan(k, m->whole, t, tl, LUA_MAXINTEGER);
  lua_newtable(L);
  lua_Integer n = 0;
  for (int32_t i = 0; i < k->nkw; i++) {
    if (!k->seen[i]) continue;
    lua_rawgeti(L, li, k->kws[i].src);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* orch.keywords(list [, {whole = bool, name = "for messages"}]) ->
 * {count = function, matched = function}, bound to the list: an entry
 * changed, added or removed is seen at the next call. */
int orch__lua_keywords(lua_State *L) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, init_tables);
  luaL_checktype(L, 1, LUA_TTABLE);
  bool whole = false;
  const char *name = "orch.keywords";
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "whole");
    whole = lua_toboolean(L, -1);
    lua_getfield(L, 2, "name");
    if (lua_type(L, -1) == LUA_TSTRING) name = lua_tostring(L, -1);
  }
  matcher tmp = {.whole = whole};
  snprintf(tmp.name, sizeof tmp.name, "%s", name);
  tmp.k = compile(L, 1, &tmp); /* [kwset, copy]; raises before anything */
  matcher *m = lua_newuserdatauv(L, sizeof *m, 3);
  *m = tmp;
  lua_insert(L, -3); /* [m, kwset, copy] */
  lua_setiuservalue(L, -3, 3);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_count, 1);
  lua_setfield(L, -2, "count");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_matched, 1);
  lua_setfield(L, -2, "matched");
  return 1;
}
