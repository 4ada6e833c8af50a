/* lpattern.c: Lua 5.4's string patterns for the policy sandbox. It provides
 * string.find, string.match, string.gmatch and string.gsub as the Lua 5.4
 * reference manual defines them (§6.4.1 Patterns, §6.4 the functions),
 * written here from the manual, with one difference: the matcher counts its
 * steps (each character tested, each try of the rest of a pattern at a
 * position) against the sandboxed call's budget. The stock functions
 * backtrack in C, where Lua's count hook never runs, so
 * ("a"):rep(3000):find(".-.-.-.-b") held a worker for hours. Results and
 * error messages are the stock library's, byte for byte (test_policy.c
 * compares the two on a corpus). Uses the Lua C API and policy.c's budget
 * (orch__budget_steps, orch__budget_exceeded). */
#include "orch_int.h"

#include <ctype.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#define PAT_ESC '%'
#define PAT_MAXCAPTURES 32 /* as LUA_MAXCAPTURES: "too many captures" */
/* Nested tries of the matcher before "pattern too complex": each capture
 * bracket and each quantified item whose alternatives are still open holds
 * one, as in the stock library, which refuses a pattern at the same depth. */
#define PAT_MAXDEPTH 200
#define CAP_OPEN (-1) /* a capture whose ')' is not reached yet */
#define CAP_POS (-2)  /* a position capture, "()" */
/* A plain find (memchr, memcmp) touches about this many bytes in the time
 * the matcher tests one character. */
#define PLAIN_BYTES_PER_STEP 16
/* A set "[...]" is tested by a scan of its text: a test of a long set costs
 * one more step per this many bytes of it. */
#define SET_BYTES_PER_STEP 8

#define U(c) ((unsigned char)(c))

typedef struct pcap {
  const char *at;
  ptrdiff_t len; /* or CAP_OPEN, CAP_POS */
} pcap;

/* One match of one pattern against one subject. */
typedef struct pstate {
  const char *s0, *s_end; /* the subject */
  const char *p_end;      /* one past the pattern */
  lua_State *L;
  long *left;      /* steps left in the call (policy.c's counter) */
  long unbudgeted; /* the counter of a state without a budget */
  const char *fn;  /* "string.find", for the budget's message */
  int depth;       /* nested tries left */
  int ncap;
  pcap cap[PAT_MAXCAPTURES];
} pstate;

static void ps_init(pstate *ps, lua_State *L, const char *fn, const char *s,
                    size_t ls, const char *p, size_t lp) {
  ps->s0 = s;
  ps->s_end = s + ls;
  ps->p_end = p + lp;
  ps->L = L;
  ps->fn = fn;
  ps->left = orch__budget_steps(L);
  if (!ps->left) {
    ps->unbudgeted = LONG_MAX;
    ps->left = &ps->unbudgeted;
  }
  ps->depth = PAT_MAXDEPTH;
  ps->ncap = 0;
}

/* Before a try at a new position. */
static void ps_reset(pstate *ps) {
  ps->depth = PAT_MAXDEPTH;
  ps->ncap = 0;
}

static void out_of_steps(pstate *ps) {
  if (ps->left == &ps->unbudgeted) ps->unbudgeted = LONG_MAX;
  else orch__budget_exceeded(ps->L, ps->fn);
}

/* Charges n steps; raises once the call has none left. */
#define STEP(ps, n)                                                      \
  do {                                                                   \
    if (__builtin_expect((*(ps)->left -= (n)) < 0, 0)) out_of_steps(ps); \
  } while (0)

/* ---- single-character classes ----------------------------------------- */

/* Is byte c in the class %cl? A letter names a class (its upper case the
 * complement); any other cl stands for itself ("%." is a dot). The class
 * letters are ASCII: cl | 0x20 is 'a' for 'a' and 'A' only, and so on. */
static inline bool class_has(int c, int cl) {
  bool in;
  switch (cl | 0x20) {
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    /* %z (the zero byte) left the manual in 5.2, but Lua 5.4 still takes
     * it: so does this matcher, so a script means the same in both */
    case 'z': in = c == 0; break;
    default: return cl == c;
  }
  return cl & 0x20 ? in : !in;
}

/* Is byte c in the set whose '[' is at p and whose closing ']' is at end?
 * Members are %-classes, ranges x-y and single bytes; a '^' first takes
 * the complement. */
static bool set_has(int c, const char *p, const char *end) {
  bool in = true;
  p++;
  if (*p == '^') {
    in = false;
    p++;
  }
  for (; p < end; p++) {
    if (*p == PAT_ESC) {
      p++;
      if (class_has(c, U(*p))) return in;
    } else if (p[1] == '-' && p + 2 < end) {
      if (U(p[0]) <= c && c <= U(p[2])) return in;
      p += 2;
    } else if (U(*p) == c) {
      return in;
    }
  }
  return !in;
}

/* One past the single-character class that starts at p (p < p_end): "%x",
 * a set "[...]" (whose first member may be ']'), or one byte. */
static const char *class_end(pstate *ps, const char *p) {
  const char *end = ps->p_end;
  switch (*p++) {
    case PAT_ESC:
      if (p >= end)
        luaL_error(ps->L, "malformed pattern (ends with '%%')");
      return p + 1;
    case '[':
      if (p < end && *p == '^') p++;
      do {
        if (p >= end)
          luaL_error(ps->L, "malformed pattern (missing ']')");
        if (*p++ == PAT_ESC && p < end) p++; /* "%]" is a member */
      } while (p >= end || *p != ']');
      return p + 1;
    default:
      return p;
  }
}

/* Is there a subject byte at s, and is it in the class p .. ep? */
static bool single(const pstate *ps, const char *s, const char *p,
                   const char *ep) {
  if (s >= ps->s_end) return false;
  int c = U(*s);
  switch (*p) {
    case '.': return true;
    case PAT_ESC: return class_has(c, U(p[1]));
    case '[': return set_has(c, p, ep - 1);
    default: return U(*p) == c;
  }
}

/* The steps one test of the class p .. ep costs. */
static long test_cost(const char *p, const char *ep) {
  return *p == '[' ? 1 + (ep - p) / SET_BYTES_PER_STEP : 1;
}

/* ---- the matcher -------------------------------------------------------- */

static const char *pm(pstate *ps, const char *s, const char *p);

/* Item p .. ep repeated greedily ("*", "+"): the longest run first, then
 * each shorter one, until the rest of the pattern (after ep's quantifier)
 * matches. */
static const char *greedy(pstate *ps, const char *s, const char *p,
                          const char *ep) {
  ptrdiff_t n = 0;
  while (single(ps, s + n, p, ep)) n++;
  STEP(ps, (n + 1) * test_cost(p, ep)); /* a run: no longer than s */
  for (; n >= 0; n--) {
    const char *r = pm(ps, s + n, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* Item p .. ep repeated lazily ("-"): the rest of the pattern is tried
 * after no repetition, then after one more each time. */
static const char *lazy(pstate *ps, const char *s, const char *p,
                        const char *ep) {
  long cost = test_cost(p, ep);
  for (;;) {
    const char *r = pm(ps, s, ep + 1);
    if (r) return r;
    STEP(ps, cost);
    if (!single(ps, s, p, ep)) return NULL;
    s++;
  }
}

static const char *open_capture(pstate *ps, const char *s, const char *p,
                                ptrdiff_t kind) {
  if (ps->ncap >= PAT_MAXCAPTURES) luaL_error(ps->L, "too many captures");
  ps->cap[ps->ncap].at = s;
  ps->cap[ps->ncap].len = kind;
  ps->ncap++;
  const char *r = pm(ps, s, p);
  if (!r) ps->ncap--;
  return r;
}

/* ')' closes the innermost capture still open. */
static const char *close_capture(pstate *ps, const char *s, const char *p) {
  int i = ps->ncap - 1;
  while (i >= 0 && ps->cap[i].len != CAP_OPEN) i--;
  if (i < 0) luaL_error(ps->L, "invalid pattern capture");
  ps->cap[i].len = s - ps->cap[i].at;
  const char *r = pm(ps, s, p);
  if (!r) ps->cap[i].len = CAP_OPEN;
  return r;
}

/* %bxy at p (the x): from an x at s to the y that balances it. */
static const char *balance(pstate *ps, const char *s, const char *p) {
  if (p + 1 >= ps->p_end)
    luaL_error(ps->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= ps->s_end || *s != p[0]) return NULL;
  int open = 1;
  const char *t = s + 1, *r = NULL;
  for (; t < ps->s_end; t++) {
    if (*t == p[1]) { /* tested first: %b"" spans one quoted string */
      if (--open == 0) {
        r = t + 1;
        break;
      }
    } else if (*t == p[0]) {
      open++;
    }
  }
  STEP(ps, t - s);
  return r;
}

/* %1 .. %9: the text capture d (a digit) took, again at s. */
static const char *backref(pstate *ps, const char *s, int d) {
  int i = d - '1';
  if (i < 0 || i >= ps->ncap || ps->cap[i].len == CAP_OPEN)
    luaL_error(ps->L, "invalid capture index %%%d", i + 1);
  ptrdiff_t len = ps->cap[i].len;
  if (len < 0) return NULL; /* a position: never equal to text */
  STEP(ps, len / PLAIN_BYTES_PER_STEP);
  if (ps->s_end - s >= len && memcmp(ps->cap[i].at, s, (size_t)len) == 0)
    return s + len;
  return NULL;
}

/* pm's steps are counted in k, a register (a counter in memory, charged
 * at every test, made gap.lua up to 14% slower), and charged at the end of the
 * try and before anything that may raise or recurse: only a run of single
 * bytes and dots goes uncharged for a while, never longer than the
 * pattern. */
#define FLUSH()  \
  do {           \
    STEP(ps, k); \
    k = 0;       \
  } while (0)

/* Matches pattern p .. p_end at s: the end of the match, or NULL. An item
 * that cannot leave alternatives open continues the loop; one that can
 * (captures, quantifiers) recurses for the rest of the pattern. The
 * errors are raised when the matcher first reaches the malformed item, as
 * the stock library's are: ("x"):find("y[") is nil, no error. */
static const char *pm(pstate *ps, const char *s, const char *p) {
  if (ps->depth-- == 0) luaL_error(ps->L, "pattern too complex");
  long k = 1;
  const char *end = ps->p_end;
  while (p < end) {
    switch (*p) {
      case '(':
        FLUSH();
        if (p + 1 < end && p[1] == ')')
          s = open_capture(ps, s, p + 2, CAP_POS);
        else
          s = open_capture(ps, s, p + 1, CAP_OPEN);
        goto done;
      case ')':
        FLUSH();
        s = close_capture(ps, s, p + 1);
        goto done;
      case '$':
        if (p + 1 == end) { /* only the last '$' anchors */
          if (s != ps->s_end) s = NULL;
          goto done;
        }
        break;
      case PAT_ESC: {
        FLUSH();
        int next = p + 1 < end ? U(p[1]) : 0;
        if (next == 'b') {
          s = balance(ps, s, p + 2);
          if (!s) goto done;
          p += 4;
          continue;
        }
        if (next == 'f') {
          p += 2;
          if (p >= end || *p != '[')
            luaL_error(ps->L, "missing '[' after '%%f' in pattern");
          const char *ep = class_end(ps, p);
          int before = s == ps->s0 ? 0 : U(s[-1]);
          int at = s < ps->s_end ? U(*s) : 0;
          k += 2 * test_cost(p, ep);
          if (set_has(before, p, ep - 1) || !set_has(at, p, ep - 1)) {
            s = NULL;
            goto done;
          }
          p = ep;
          continue;
        }
        if (next >= '0' && next <= '9') {
          s = backref(ps, s, next);
          if (!s) goto done;
          p += 2;
          continue;
        }
        break;
      }
      case '[':
        FLUSH();
        break;
      default:
        break;
    }
    /* a single-character class, maybe with a quantifier after it */
    const char *ep = class_end(ps, p);
    int q = ep < end ? *ep : 0;
    k += test_cost(p, ep);
    if (!single(ps, s, p, ep)) {
      if (q == '*' || q == '?' || q == '-') { /* zero repetitions do */
        p = ep + 1;
        continue;
      }
      s = NULL;
      goto done;
    }
    if (q == '?' || q == '+' || q == '*' || q == '-') FLUSH();
    switch (q) {
      case '?': {
        const char *r = pm(ps, s + 1, ep + 1);
        if (r) {
          s = r;
          goto done;
        }
        p = ep + 1;
        continue;
      }
      case '+': s = greedy(ps, s + 1, p, ep); goto done;
      case '*': s = greedy(ps, s, p, ep); goto done;
      case '-': s = lazy(ps, s, p, ep); goto done;
      default:
        s++;
        p = ep;
        continue;
    }
  }
done:
  STEP(ps, k);
  ps->depth++;
  return s;
}

/* ---- captures out ------------------------------------------------------- */

/* Pushes capture i: its text, or its position for "()"; when the pattern
 * has no captures, capture 0 is the whole match s .. e. */
static void push_capture(pstate *ps, int i, const char *s, const char *e) {
  if (i >= ps->ncap) {
    if (i != 0) luaL_error(ps->L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(ps->L, s, (size_t)(e - s));
    return;
  }
  ptrdiff_t len = ps->cap[i].len;
  if (len == CAP_OPEN) luaL_error(ps->L, "unfinished capture");
  if (len == CAP_POS)
    lua_pushinteger(ps->L, (lua_Integer)(ps->cap[i].at - ps->s0) + 1);
  else
    lua_pushlstring(ps->L, ps->cap[i].at, (size_t)len);
}

/* Pushes every capture (the whole match when there are none and s is not
 * NULL); returns how many. */
static int push_captures(pstate *ps, const char *s, const char *e) {
  int n = ps->ncap == 0 && s ? 1 : ps->ncap;
  luaL_checkstack(ps->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(ps, i, s, e);
  return n;
}

/* ---- the library functions ---------------------------------------------- */

/* A 1-based start argument as a byte count from the start: negative counts
 * from the end, and whatever lies before the start is the start. */
static size_t start_at(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0 || pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

/* Does p have none of the bytes that make a pattern more than its text?
 * (']' and ')' alone are text to find, as in the stock library.) */
static bool plain_text(const char *p, size_t lp) {
  for (size_t i = 0; i < lp; i++)
    if (memchr("^$*+?.([%-", p[i], 10)) return false;
  return true;
}

/* The first lp-byte text p in s .. s + n, or NULL; *work gets about how
 * many bytes that took. memchr for p's first byte and a compare at each
 * one, as the stock library does (fast on text: memmem is ten times
 * slower on a few kB); once the compares cost more than the scan (a p
 * like "aaab" in "aaaa..."), memmem, linear, does the rest. */
static const char *find_text(const char *s, size_t n, const char *p,
                             size_t lp, size_t *work) {
  *work = lp;
  if (lp == 0) return s;
  if (lp > n) return NULL;
  const char *at = s, *last = s + (n - lp); /* the last place it fits */
  size_t compared = 0;
  while (at <= last) {
    const char *c = memchr(at, p[0], (size_t)(last - at) + 1);
    if (!c) break;
    if (memcmp(c + 1, p + 1, lp - 1) == 0) {
      *work += (size_t)(c - s) + compared;
      return c;
    }
    compared += lp;
    at = c + 1;
    if (compared > 4096 + 4 * (size_t)(at - s)) {
      c = memmem(at, n - (size_t)(at - s), p, lp);
      *work += n + compared;
      return c;
    }
  }
  *work += n + compared;
  return NULL;
}

static int find_or_match(lua_State *L, bool find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  pstate ps;
  if (find && (lua_toboolean(L, 4) || plain_text(p, lp))) {
    ps_init(&ps, L, "string.find", s, ls, p, lp);
    size_t work;
    const char *at = find_text(s + init, ls - init, p, lp, &work);
    STEP(&ps, (long)(work / PLAIN_BYTES_PER_STEP));
    if (!at) {
      luaL_pushfail(L);
      return 1;
    }
    lua_pushinteger(L, (lua_Integer)(at - s) + 1);
    lua_pushinteger(L, (lua_Integer)(at - s + lp));
    return 2;
  }
  bool anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  ps_init(&ps, L, find ? "string.find" : "string.match", s, ls, p, lp);
  const char *from = s + init;
  do {
    ps_reset(&ps);
    const char *e = pm(&ps, from, p);
    if (e) {
      if (!find) return push_captures(&ps, from, e);
      lua_pushinteger(L, (lua_Integer)(from - s) + 1);
      lua_pushinteger(L, (lua_Integer)(e - s));
      return push_captures(&ps, NULL, NULL) + 2;
    }
  } while (from++ < ps.s_end && !anchor);
  luaL_pushfail(L);
  return 1;
}

int orch__str_find(lua_State *L) { return find_or_match(L, true); }

int orch__str_match(lua_State *L) { return find_or_match(L, false); }

/* The state of a gmatch iteration, the iterator's upvalue 3 (1 and 2, the
 * subject and the pattern, keep the strings it points into alive). */
typedef struct gmstate {
  const char *s, *p;
  size_t ls, lp;
  const char *from; /* where the next search starts */
  const char *last; /* end of the last match: no empty match ends there */
} gmstate;

static int gmatch_next(lua_State *L) {
  gmstate *g = lua_touserdata(L, lua_upvalueindex(3));
  pstate ps;
  ps_init(&ps, L, "string.gmatch", g->s, g->ls, g->p, g->lp);
  for (const char *from = g->from; from <= ps.s_end; from++) {
    ps_reset(&ps);
    const char *e = pm(&ps, from, g->p);
    if (e && e != g->last) {
      g->from = g->last = e;
      return push_captures(&ps, from, e);
    }
  }
  return 0;
}

/* gmatch(s, pattern [, init]): a '^' is no anchor here (it would stop the
 * iteration), but a byte like any other. */
int orch__str_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
  lua_settop(L, 2);
  gmstate *g = lua_newuserdatauv(L, sizeof *g, 0);
  if (init > ls) init = ls + 1; /* past the end: nothing to find */
  g->s = s;
  g->ls = ls;
  g->p = p;
  g->lp = lp;
  g->from = s + init;
  g->last = NULL;
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* Appends the replacement string (argument 3) for the match s .. e: "%0"
 * is the match, "%1" .. "%9" a capture, "%%" a '%'. */
static void add_string(pstate *ps, luaL_Buffer *b, const char *s,
                       const char *e) {
  size_t l;
  const char *r = lua_tolstring(ps->L, 3, &l);
  const char *end = r + l;
  STEP(ps, (long)(l / PLAIN_BYTES_PER_STEP));
  const char *pc;
  while ((pc = memchr(r, PAT_ESC, (size_t)(end - r))) != NULL) {
    luaL_addlstring(b, r, (size_t)(pc - r));
    pc++;
    int c = pc < end ? U(*pc) : 0;
    if (c == PAT_ESC) {
      luaL_addchar(b, PAT_ESC);
    } else if (c == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (c >= '1' && c <= '9') {
      push_capture(ps, c - '1', s, e);
      luaL_addvalue(b); /* a position becomes its digits */
    } else {
      luaL_error(ps->L, "invalid use of '%c' in replacement string",
                 PAT_ESC);
    }
    r = pc + 1;
  }
  luaL_addlstring(b, r, (size_t)(end - r));
}

/* Appends the replacement for the match s .. e; false when the match is
 * kept as it was (a table or function gave false or nil). */
static bool add_value(pstate *ps, luaL_Buffer *b, const char *s,
                      const char *e, int tr) {
  lua_State *L = ps->L;
  switch (tr) {
    case LUA_TFUNCTION: {
      lua_pushvalue(L, 3);
      int n = push_captures(ps, s, e);
      lua_call(L, n, 1);
      break;
    }
    case LUA_TTABLE:
      push_capture(ps, 0, s, e);
      lua_gettable(L, 3);
      break;
    default: /* a string or a number */
      add_string(ps, b, s, e);
      return true;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return false;
  }
  if (!lua_isstring(L, -1))
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return true;
}

/* gsub(s, pattern, repl [, n]): at most n replacements; an empty match
 * right where the previous match ended is not one. */
int orch__str_gsub(lua_State *L) {
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int tr = lua_type(L, 3);
  lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING ||
                          tr == LUA_TFUNCTION || tr == LUA_TTABLE,
                   3, "string/function/table");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  bool anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  pstate ps;
  ps_init(&ps, L, "string.gsub", src, ls, p, lp);
  const char *last = NULL;
  lua_Integer n = 0;
  bool changed = false;
  while (n < max_n) {
    ps_reset(&ps);
    const char *e = pm(&ps, src, p);
    if (e && e != last) {
      n++;
      changed = add_value(&ps, &b, src, e, tr) || changed;
      src = last = e;
    } else if (src < ps.s_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, (size_t)(ps.s_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}
