/* policy.c: the Lua policy engine. It loads the operator's scripts
 * (scripts/routing, rewards, policies) into sandboxed Lua states, calls their
 * hooks under an instruction budget and a memory cap, and reloads them while
 * the runtime runs: a changed file is compiled and self-checked in a fresh
 * state on a checker thread, and only a version that passed is published as a
 * new generation, which each worker state picks up at its next step boundary.
 * Uses Lua 5.4, libuv (file watches), jansson (via json.c) and libcrypto. */
#include "orch_int.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DEFAULT_BUDGET_K 10000            /* 10M instructions per call */
#define DEFAULT_MEM_MAX (64u * 1024 * 1024)
#define SCRIPT_MAX_BYTES (1u << 20)       /* one script file */
#define JSON_MAX_DEPTH 64                 /* json.encode nesting */
#define RELOAD_DEBOUNCE_MS 20
#define FOLLOW_MS 2000                    /* is the scripts dir replaced? */
#define FOLLOW_QUICK_MS 50                /* ... soon after it moved away */
#define FOLLOW_QUICK_N 40
#define FN_CACHE_MAX 16
#define WATCH_TICK_MS 2                   /* the budget watchdog's period */
#define BUDGET_SIGNAL (SIGRTMAX - 3)      /* arms the budget in a long call */

/* ---- snapshots: an immutable, refcounted set of module sources --------- */

typedef struct pmod {
  char *name;  /* "routing.complexity" */
  char *path;  /* as shown to operators: "scripts/routing/complexity.lua" */
  char *chunk; /* "@..." chunk name, short enough for Lua's LUA_IDSIZE */
  char *short_name; /* "complexity": names the hook in messages */
  char *src;
  size_t len;
} pmod;

typedef struct psnap {
  atomic_int refs;
  unsigned gen;
  size_t n;
  pmod *mods; /* sorted by name */
} psnap;

static void pmod_deinit(pmod *m) {
  free(m->name);
  free(m->path);
  free(m->chunk);
  free(m->short_name);
  free(m->src);
}

static int pmod_copy(pmod *dst, const pmod *src) {
  memset(dst, 0, sizeof *dst);
  dst->name = strdup(src->name);
  dst->path = strdup(src->path);
  dst->chunk = strdup(src->chunk);
  dst->short_name = strdup(src->short_name);
  dst->src = malloc(src->len + 1);
  if (!dst->name || !dst->path || !dst->chunk || !dst->short_name ||
      !dst->src) {
    pmod_deinit(dst);
    return ORCH_ENOMEM;
  }
  memcpy(dst->src, src->src, src->len + 1);
  dst->len = src->len;
  return ORCH_OK;
}

static void snap_unref(psnap *s) {
  if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
  for (size_t i = 0; i < s->n; i++) pmod_deinit(&s->mods[i]);
  free(s->mods);
  free(s);
}

static psnap *snap_ref(psnap *s) {
  if (s) atomic_fetch_add(&s->refs, 1);
  return s;
}

static psnap *snap_empty(void) {
  psnap *s = calloc(1, sizeof *s);
  if (s) atomic_init(&s->refs, 1);
  return s;
}

static const pmod *snap_find(const psnap *s, const char *name) {
  if (!s) return NULL;
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(name, s->mods[mid].name);
    if (c == 0) return &s->mods[mid];
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return NULL;
}

/* A copy of base where module `name` is replaced by m (added when absent),
 * or removed when m is NULL. NULL on allocation failure. */
static psnap *snap_with(const psnap *base, const char *name, const pmod *m) {
  psnap *s = snap_empty();
  if (!s) return NULL;
  s->mods = calloc(base->n + 1, sizeof *s->mods);
  if (!s->mods) goto fail;
  bool placed = false;
  for (size_t i = 0; i <= base->n; i++) {
    const pmod *b = i < base->n ? &base->mods[i] : NULL;
    int c = b ? strcmp(name, b->name) : -1;
    if (!placed && c <= 0) {
      placed = true;
      if (m && pmod_copy(&s->mods[s->n++], m)) { s->n--; goto fail; }
      if (c == 0) continue; /* replaced (or removed) */
    }
    if (b && pmod_copy(&s->mods[s->n++], b)) { s->n--; goto fail; }
  }
  return s;
fail:
  snap_unref(s);
  return NULL;
}

static bool pmod_same(const pmod *a, const pmod *b) {
  if (!a || !b) return a == b;
  return a->len == b->len && memcmp(a->src, b->src, a->len) == 0;
}

/* ---- the sandbox: per-state limits, allocator, budget hook ------------- */

/* Lives in the state's extra space. The allocator and the hook read it. */
typedef struct sbx {
  size_t used, max;     /* bytes allocated by Lua / the cap */
  bool mem_tripped;     /* an allocation was refused since the call began */
  int budget;           /* instructions per call */
  int depth;            /* nested protected calls; the budget arms at 0 */
  bool budget_tripped;
  int trip_line;
  char trip_src[LUA_IDSIZE];
  const char *trip_what; /* "string.find": the matcher tripped the budget */
  long steps;           /* of the C loops (lpattern.c): left in this call */
  const psnap *snap;    /* modules `require` can load (borrowed; may be NULL) */
  /* The budget watchdog (below). */
  lua_State *L;
  atomic_uint call_seq;     /* odd while a top-level call runs */
  atomic_uint arm_seq;      /* the call the watchdog asked to arm */
  unsigned seen_seq;        /* the watchdog's: call_seq at its last look */
  _Atomic pthread_t thread; /* the thread of the latest call */
  bool thread_set;
  struct sbx *wprev, *wnext; /* the watch list */
} sbx;

static sbx *SBX(lua_State *L) { return *(sbx **)lua_getextraspace(L); }

static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Is L one of ours (made by state_new)? The entry points the core calls
 * accept other states too, without limits. */
static bool is_sandbox(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == sbx_alloc;
}

/* Shaped like l_alloc in lauxlib.c, with a cap: an allocation that would take
 * the state past max fails, which Lua turns into a memory error (after an
 * emergency collection). Frees and shrinks always succeed. */
static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sbx *x = ud;
  if (!ptr) osize = 0; /* osize then encodes the object type */
  if (nsize == 0) {
    free(ptr);
    x->used -= osize;
    return NULL;
  }
  if (nsize > osize && nsize - osize > x->max - x->used) {
    x->mem_tripped = true;
    return NULL;
  }
  void *np = realloc(ptr, nsize);
  if (np) x->used = x->used - osize + nsize;
  else if (nsize > osize) x->mem_tripped = true;
  return np;
}

static int sbx_panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  fprintf(stderr, "orchestrate: unprotected Lua error: %s\n",
          m ? m : "(not a string)");
  return 0; /* Lua aborts */
}

/* Once the budget is spent, the hook re-arms itself on every instruction and
 * line, so a pcall inside the script cannot swallow the stop (as Redis does):
 * every instruction the handler runs raises again until the error leaves the
 * script. */
static void budget_hook(lua_State *L, lua_Debug *ar) {
  sbx *x = SBX(L);
  if (!x->budget_tripped) {
    x->budget_tripped = true;
    x->trip_what = NULL;
    x->trip_line = -1;
    x->trip_src[0] = '\0';
    if (lua_getinfo(L, "Sl", ar)) {
      x->trip_line = ar->currentline;
      snprintf(x->trip_src, sizeof x->trip_src, "%s", ar->short_src);
    }
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  }
  luaL_error(L, "instruction budget exceeded (%d instructions)", x->budget);
}

/* The C loops the hook cannot see count their own steps (lpattern.c). A
 * call outside pcall_budget (none should run script code) gets a whole
 * budget for each use. */
long *orch__budget_steps(lua_State *L) {
  if (!is_sandbox(L)) return NULL;
  sbx *x = SBX(L);
  if (x->depth == 0) x->steps = x->budget;
  return &x->steps;
}

/* The steps are spent: trips the budget where the script called the loop
 * (the innermost Lua line), re-arming the hook as budget_hook does, and
 * raises. The counter stays spent, so a pattern call in a handler raises
 * again. */
void orch__budget_exceeded(lua_State *L, const char *what) {
  sbx *x = SBX(L);
  if (x->depth > 0 && !x->budget_tripped) {
    x->budget_tripped = true;
    x->trip_what = what;
    x->trip_line = -1;
    x->trip_src[0] = '\0';
    lua_Debug ar;
    for (int lv = 0; lua_getstack(L, lv, &ar); lv++) {
      if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        x->trip_line = ar.currentline;
        snprintf(x->trip_src, sizeof x->trip_src, "%s", ar.short_src);
        break;
      }
    }
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  }
  luaL_error(L, "%s: pattern matching exceeded the instruction budget (%d "
                "instructions)", what, x->budget);
}

/* ---- the budget watchdog ------------------------------------------------
 * While a count hook is set, Lua takes its slow path on every instruction
 * (about 3 ns each here, most of a short routing call). So a call starts
 * without the hook, and a watchdog thread looks at every sandbox state each
 * WATCH_TICK_MS: a top-level call it finds running at two looks in a row
 * gets BUDGET_SIGNAL on its thread, whose handler sets the count hook with
 * the whole budget, as lua.c's SIGINT handler does (lua_sethook may be called
 * from a signal handler). A call is thus stopped after at most two ticks plus
 * its instruction budget, and calls shorter than a tick never pay for the
 * hook. Sandbox scripts have no coroutines, so the main thread of the state
 * is the only one that runs script code. */

/* The time ms from now on clock clk, for a timed condition wait. */
static struct timespec after_ms(clockid_t clk, long ms) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cv = PTHREAD_COND_INITIALIZER;
static sbx *watch_head;     /* live sandbox states */
/* The watchdog thread while there are states (NULL: none). It is joined
 * when the last state goes: a detached thread still finishing its last
 * wait ran code of a library being unloaded (lua5.4 closing orch.so at
 * exit: a crash one exit in ten). */
typedef struct watchdog {
  pthread_t thread;
  bool stop; /* under watch_mu */
} watchdog;
static watchdog *watch_cur;

/* The sandbox call this thread is in, for the signal handler: set by
 * call_begin before the call can be seen running, so its thread-local block
 * exists before a signal can arrive. */
static _Thread_local sbx *tl_call;

static void on_budget_signal(int sig) {
  (void)sig;
  int saved = errno;
  sbx *x = tl_call;
  if (x && !lua_gethook(x->L)) {
    unsigned s = atomic_load_explicit(&x->call_seq, memory_order_relaxed);
    if ((s & 1) &&
        s == atomic_load_explicit(&x->arm_seq, memory_order_relaxed))
      lua_sethook(x->L, budget_hook, LUA_MASKCOUNT, x->budget);
  }
  errno = saved;
}

static void install_budget_signal(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_budget_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(BUDGET_SIGNAL, &sa, NULL);
}

static void *watch_main(void *arg) {
  watchdog *me = arg;
  pthread_mutex_lock(&watch_mu);
  while (!me->stop) {
    for (sbx *x = watch_head; x; x = x->wnext) {
      unsigned s = atomic_load_explicit(&x->call_seq, memory_order_acquire);
      if ((s & 1) && s == x->seen_seq &&
          atomic_load_explicit(&x->arm_seq, memory_order_relaxed) != s) {
        atomic_store_explicit(&x->arm_seq, s, memory_order_relaxed);
        pthread_kill(atomic_load(&x->thread), BUDGET_SIGNAL);
      }
      x->seen_seq = s;
    }
    struct timespec ts = after_ms(CLOCK_REALTIME, WATCH_TICK_MS);
    pthread_cond_timedwait(&watch_cv, &watch_mu, &ts);
  }
  pthread_mutex_unlock(&watch_mu);
  return NULL;
}

/* Puts x under the watchdog, starting it when needed. */
static int watch_add(sbx *x) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, install_budget_signal);
  int rc = 0;
  pthread_mutex_lock(&watch_mu);
  if (!watch_cur) {
    watchdog *w = calloc(1, sizeof *w);
    rc = w ? pthread_create(&w->thread, NULL, watch_main, w) : ENOMEM;
    if (rc == 0) watch_cur = w;
    else free(w);
  }
  if (rc == 0) {
    x->wprev = NULL;
    x->wnext = watch_head;
    if (watch_head) watch_head->wprev = x;
    watch_head = x;
  }
  pthread_mutex_unlock(&watch_mu);
  return rc;
}

static void watch_remove(sbx *x) {
  watchdog *done = NULL;
  pthread_mutex_lock(&watch_mu);
  if (x->wprev) x->wprev->wnext = x->wnext;
  else watch_head = x->wnext;
  if (x->wnext) x->wnext->wprev = x->wprev;
  if (!watch_head && watch_cur) { /* the last state: stop and join it */
    done = watch_cur;
    done->stop = true;
    watch_cur = NULL; /* a state added meanwhile starts a new one */
    pthread_cond_broadcast(&watch_cv);
  }
  pthread_mutex_unlock(&watch_mu);
  if (done) {
    pthread_join(done->thread, NULL);
    free(done);
  }
}

static void call_begin(lua_State *L) {
  sbx *x = SBX(L);
  if (x->depth++ == 0) {
    x->budget_tripped = false;
    x->trip_what = NULL;
    x->steps = x->budget;
    x->mem_tripped = false;
    if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
    pthread_t me = pthread_self();
    if (!x->thread_set || !pthread_equal(me, atomic_load(&x->thread))) {
      sigset_t ss; /* a host may have blocked it in its threads */
      sigemptyset(&ss);
      sigaddset(&ss, BUDGET_SIGNAL);
      pthread_sigmask(SIG_UNBLOCK, &ss, NULL);
      atomic_store(&x->thread, me);
      x->thread_set = true;
    }
    tl_call = x;
    atomic_store_explicit(&x->call_seq, x->call_seq + 1, memory_order_release);
  }
}

static void call_end(lua_State *L) {
  sbx *x = SBX(L);
  if (--x->depth == 0) {
    atomic_store_explicit(&x->call_seq, x->call_seq + 1, memory_order_release);
    tl_call = NULL;
    if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
    x->budget_tripped = false;
  }
}

/* Registry keys (their addresses; not const, so never merged). */
static char K_TEMPLATE; /* the allow-list: name -> value */
static char K_INNER_MT; /* metatable of an env's inner table */
static char K_ENVS;     /* weak set of env tables (for rawset) */
static char K_VIEWS;    /* weak set of read-only views (for rawset) */
static char K_DEEP;     /* weak-keyed: a table met through a module view
                           -> its own read-only view */
static char K_LOADED;   /* module name -> module table */
static char K_PROXIES;  /* module name -> read-only proxy */
static char K_LOADING;  /* sentinel while a module loads */
static char K_BOX_MT;   /* metatable of boxed C buffers */

/* ---- allow-listed functions that differ from the stock ones ------------ */

static void log_line(const char *msg) {
  fprintf(stderr, "orchestrate: script: %s\n", msg);
}

static int l_log(lua_State *L) {
  luaL_Buffer b;
  int n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  log_line(lua_tostring(L, -1));
  return 0;
}

static int l_now_ms(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
  return 1;
}

static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL))
    return luaL_error(L, "orch.sha256: digest failed");
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned i = 0; i < mdlen; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
  lua_pushlstring(L, hex, 2 * (size_t)mdlen);
  return 1;
}

/* getmetatable on tables only: no way to the string metatable. */
static int l_getmetatable(lua_State *L) {
  luaL_checkany(L, 1);
  if (lua_type(L, 1) != LUA_TTABLE || !lua_getmetatable(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  if (lua_getfield(L, -1, "__metatable") != LUA_TNIL) return 1;
  lua_pop(L, 1);
  return 1;
}

/* setmetatable without __gc: a finalizer would run outside any budget. */
static int l_setmetatable(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int t = lua_type(L, 2);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
    return luaL_error(L, "setmetatable: __gc metamethods are not allowed "
                         "in scripts");
  lua_settop(L, 2);
  if (lua_getmetatable(L, 1)) {
    if (lua_getfield(L, -1, "__metatable") != LUA_TNIL)
      return luaL_error(L, "cannot change a protected metatable");
    lua_pop(L, 2);
  }
  lua_setmetatable(L, 1);
  return 1;
}

static bool is_env(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_ENVS);
  lua_pushvalue(L, idx);
  bool r = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return r;
}

static bool is_view(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_VIEWS);
  lua_pushvalue(L, idx);
  bool r = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return r;
}

static int l_rawset(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  luaL_checkany(L, 3);
  if (is_env(L, 1))
    return luaL_error(L, "script attempted to write the global table "
                         "(keep state in locals or module tables)");
  if (is_view(L, 1))
    return luaL_error(L, "rawset: module and library tables are read-only "
                         "outside their module");
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 1;
}

/* xpcall whose handler is skipped once the budget is spent. Lua runs a
 * message handler before unwinding, and when the error came from a hook it
 * runs it with hooks still disabled (lua_Debug's allowhook is restored only
 * by the catching pcall): `xpcall(loop, function() while true do end end)`
 * would then spin forever. With this wrapper the spent budget's message
 * goes through unchanged. */
static int xp_msgh(lua_State *L) {
  if (SBX(L)->budget_tripped) return 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int l_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checkany(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, xp_msgh, 1);   /* f h a... M */
  lua_replace(L, 2);                 /* f M a... */
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);               /* f M a... true f */
  lua_rotate(L, 3, 2);               /* f M true f a... */
  if (lua_pcall(L, n - 2, LUA_MULTRET, 2) != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - 2;
}

static int env_index(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  return luaL_error(L, "script attempted to access nonexistent global "
                       "variable '%s'", k ? k : luaL_typename(L, 2));
}

/* Writes to a global table raise when any Lua code is running; C code of
 * the core (lua_setglobal before a chunk runs) may still set globals. */
static int env_newindex(lua_State *L) {
  lua_Debug ar;
  for (int lv = 1; lua_getstack(L, lv, &ar); lv++) {
    if (lua_getinfo(L, "S", &ar) && ar.what[0] != 'C') {
      const char *k = lua_tostring(L, 2);
      return luaL_error(L, "script attempted to create global variable "
                           "'%s' (keep state in locals or module tables)",
                        k ? k : luaL_typename(L, 2));
    }
  }
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 0;
}

/* __index of the os and string tables: names what is not there. */
static int lib_deny(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  return luaL_error(L, "'%s.%s' is not available in the script sandbox",
                    lua_tostring(L, lua_upvalueindex(1)),
                    k ? k : luaL_typename(L, 2));
}

static void set_deny_mt(lua_State *L, int idx, const char *lib) {
  idx = lua_absindex(L, idx);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, lib);
  lua_pushcclosure(L, lib_deny, 1);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, idx);
}

static int proxy_newindex(lua_State *L) {
  return luaL_error(L, "module tables are read-only outside their module");
}

/* __newindex of a library view; upvalue 1 names the library. */
static int lib_newindex(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  return luaL_error(L, "library tables are read-only in the script sandbox "
                       "(assigning '%s.%s'; keep your own in a local)",
                    lua_tostring(L, lua_upvalueindex(1)),
                    k ? k : luaL_typename(L, 2));
}

/* Pushes a new table holding a copy of the allow-list, whose reads of
 * missing names raise. Its library tables are the state's read-only views
 * (setup_state), shared by every chunk: nothing to copy per chunk, and no
 * chunk can change what another (or a later step) sees. [-0, +1] */
static void push_inner(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_TEMPLATE);  /* T */
  lua_createtable(L, 0, 32);                       /* T inner */
  lua_pushnil(L);
  while (lua_next(L, -3)) {                        /* T inner k v */
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);                             /* inner[k] = v */
  }
  lua_remove(L, -2);                               /* inner */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_INNER_MT);
  lua_setmetatable(L, -2);
}

/* Pushes a fresh environment: an empty proxy whose reads go to a new inner
 * table (push_inner) and whose writes raise. [-0, +1] */
static void push_env(lua_State *L) {
  lua_newtable(L);                                 /* E */
  push_inner(L);                                   /* E inner */
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "_G");                       /* inner._G = E */
  lua_createtable(L, 0, 3);                        /* E inner mt */
  lua_insert(L, -2);                               /* E mt inner */
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, env_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);                         /* E */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_ENVS);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Loads a text chunk with a fresh environment as its _ENV. [-0, +1] on
 * success; on failure raises. */
static void load_chunk(lua_State *L, const char *src, size_t len,
                       const char *chunkname) {
  if (len > 0 && src[0] == LUA_SIGNATURE[0])
    luaL_error(L, "%s: binary chunks are not allowed in scripts",
               chunkname[0] == '@' || chunkname[0] == '=' ? chunkname + 1
                                                          : chunkname);
  if (luaL_loadbufferx(L, src, len, chunkname, "t") != LUA_OK)
    lua_error(L);
  push_env(L);
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
}

/* load(chunk [, name [, mode [, env]]]): text only; without env the chunk
 * gets a fresh sandbox environment, never the host's globals. */
static int l_load(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "=(load)");
  const char *mode = luaL_optstring(L, 3, "t");
  if (strchr(mode, 'b') || (len > 0 && s[0] == LUA_SIGNATURE[0])) {
    luaL_pushfail(L);
    lua_pushstring(L, "load: binary chunks are not allowed in scripts");
    return 2;
  }
  if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_pushvalue(L, 4);
  } else {
    push_env(L);
  }
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  return 1;
}

/* Pushes the read-only proxy of the module table at the top (replacing it):
 * code that requires a module can call it but not rewrite it. */

/* The iterator pairs(proxy) returns: next over the module table, which
 * only it holds (upvalue 1); its state argument (the proxy) is ignored, so
 * pairs hands out nothing writable. */
static int proxy_next(lua_State *L) {
  lua_settop(L, 2);
  if (lua_next(L, lua_upvalueindex(1))) return 2;
  lua_pushnil(L);
  return 1;
}

static int proxy_pairs_fn(lua_State *L) {
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__index");
  lua_pushcclosure(L, proxy_next, 1);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int proxy_len(lua_State *L) {
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__index");
  lua_pushinteger(L, (lua_Integer)luaL_len(L, -1));
  return 1;
}

/* table.move(a1, f, e, t [, a2]) with the range refused past the
 * instruction budget: the stock one loops in C, where the count hook never
 * runs, so table.move({}, 1, 2^53, 1, {}) would hold the worker for good.
 * Upvalue 1 is the stock function. */
static int l_table_move(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
  if (e >= f && is_sandbox(L)) {
    int limit = SBX(L)->budget; /* the count is e - f + 1 > limit */
    if ((lua_Unsigned)e - (lua_Unsigned)f >= (lua_Unsigned)limit)
      return luaL_error(L, "table.move: the range %I..%I has more elements "
                           "than the instruction budget allows (%d)",
                        f, e, limit);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* string.rep(s, n [, sep]) with the result's size decided first: "" at
 * once when it is empty (the stock one copies nothing n times, a C loop
 * the count hook never sees: string.rep('', 1 << 62) held the worker for
 * good), and a result larger than the memory cap refused before anything
 * is copied. Upvalue 1 is the stock function. */
static int l_string_rep(lua_State *L) {
  size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || (l == 0 && lsep == 0)) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (is_sandbox(L)) {
    sbx *x = SBX(L);
    /* n copies and n - 1 separators: l + (n - 1) * (l + lsep) bytes */
    size_t unit = l + lsep, more = (size_t)n - 1;
    bool over = unit < l || (more > 0 && unit > (SIZE_MAX - l) / more) ||
                l + more * unit > x->max;
    if (over) {
      x->mem_tripped = true; /* reported as the memory cap (ELIMIT) */
      char size[64];
      snprintf(size, sizeof size, "%.0f",
               (double)l + (double)more * ((double)l + (double)lsep));
      return luaL_error(L, "string.rep: memory cap exceeded (%I bytes): "
                           "the result would be %s bytes",
                        (lua_Integer)x->max, size);
    }
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* [t view mt] -> [view]: the metatable sealed and set, the view
 * registered as one (rawset refuses it). */
static void finish_view(lua_State *L) {
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);                  /* t view */
  lua_remove(L, -2);                        /* view */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_VIEWS);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Replaces the table at the top by a read-only view of it: reads go to
 * the table, writes raise through newindex (a C function, or a closure
 * over a library's name when lib is not NULL), pairs and # see the table;
 * rawset refuses the view. [-1, +1] */
static void push_view(lua_State *L, lua_CFunction newindex, const char *lib) {
  lua_newtable(L);                          /* t view */
  lua_createtable(L, 0, 5);                 /* t view mt */
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "__index");
  if (lib) {
    lua_pushstring(L, lib);
    lua_pushcclosure(L, newindex, 1);
  } else {
    lua_pushcfunction(L, newindex);
  }
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, proxy_pairs_fn);
  lua_setfield(L, -2, "__pairs");
  lua_pushcfunction(L, proxy_len);
  lua_setfield(L, -2, "__len");
  finish_view(L);
}

/* Module views are deep: a table read through one (a module's config
 * table, a nested list) comes back as a read-only view of its own, so
 * `require('m').cfg.x = 1` cannot change the module for later steps on the
 * worker either. Views are cached per table (K_DEEP, weak keys: the
 * ephemeron lets both go with the table). */
static void push_deep_view(lua_State *L);

/* The value at the top: a table (not already a view) is replaced by its
 * cached deep view; anything else stays. [-1, +1] */
static void deep_wrap(lua_State *L) {
  if (lua_type(L, -1) != LUA_TTABLE || is_view(L, -1)) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_DEEP); /* v cache */
  lua_pushvalue(L, -2);
  if (lua_rawget(L, -2) == LUA_TTABLE) {      /* v cache view */
    lua_replace(L, -3);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);                              /* v cache */
  lua_pushvalue(L, -2);
  push_deep_view(L);                          /* v cache view */
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);                          /* cache[v] = view */
  lua_replace(L, -3);
  lua_pop(L, 1);                              /* view */
}

/* __index of a deep view; upvalue 1 is the table. */
static int deep_index(lua_State *L) {
  lua_settop(L, 2);
  lua_gettable(L, lua_upvalueindex(1));
  deep_wrap(L);
  return 1;
}

static int deep_next(lua_State *L) {
  lua_settop(L, 2);
  if (lua_next(L, lua_upvalueindex(1))) {
    deep_wrap(L);
    return 2;
  }
  lua_pushnil(L);
  return 1;
}

/* pairs(view): next over the table (the closure's only copy of it), the
 * values wrapped; the view is the state, so nothing writable leaks. */
static int deep_pairs(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, deep_next, 1);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int deep_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)luaL_len(L, lua_upvalueindex(1)));
  return 1;
}

/* Replaces the table at the top by its deep read-only view. [-1, +1] */
static void push_deep_view(lua_State *L) {
  lua_newtable(L);                          /* t view */
  lua_createtable(L, 0, 5);                 /* t view mt */
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, deep_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, proxy_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, deep_pairs, 1);
  lua_setfield(L, -2, "__pairs");
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, deep_len, 1);
  lua_setfield(L, -2, "__len");
  finish_view(L);
}

static int require_module(lua_State *L, const char *name);

static int l_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (!strcmp(name, "cjson") || !strcmp(name, "json")) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &K_TEMPLATE);
    lua_getfield(L, -1, "json");
    return 1;
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_PROXIES);
  if (lua_getfield(L, -1, name) == LUA_TTABLE) return 1;
  lua_pop(L, 2);
  require_module(L, name);                  /* module */
  push_deep_view(L);                        /* proxy */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_PROXIES);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
  return 1;
}

/* Pushes module `name`'s table, loading it from the state's snapshot (never
 * from the file system) on first use. Raises on any failure. [-0, +1] */
static int require_module(lua_State *L, const char *name) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_LOADED);
  int t = lua_getfield(L, -1, name);
  if (t == LUA_TTABLE) {
    lua_remove(L, -2);
    return 1;
  }
  if (t == LUA_TLIGHTUSERDATA)
    return luaL_error(L, "require: module '%s' requires itself (a cycle)",
                      name);
  lua_pop(L, 1);
  const pmod *m = snap_find(SBX(L)->snap, name);
  if (!m)
    return luaL_error(L, "require: no module '%s' (scripts may require only "
                         "modules under the scripts directory, such as "
                         "'routing.complexity')", name);
  lua_pushlightuserdata(L, (void *)&K_LOADING);
  lua_setfield(L, -2, name);
  load_chunk(L, m->src, m->len, m->chunk);  /* loaded fn */
  lua_pushstring(L, name);
  int st = lua_pcall(L, 1, 1, 0);
  if (st != LUA_OK || !lua_istable(L, -1)) {
    lua_pushnil(L);
    lua_setfield(L, -3, name);
    if (st != LUA_OK) return lua_error(L);
    return luaL_error(L, "%s: the module returned %s, not a table", m->path,
                      luaL_typename(L, -1));
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name);                /* loaded module */
  lua_remove(L, -2);
  return 1;
}

/* ---- json: encode into a capped buffer, decode through jansson --------- */

typedef struct box {
  char *p;
  size_t len, cap;
  json_t *j;
  size_t reserved; /* of the state's cap, for j (malloc'd by jansson) */
} box;

static void box_release(lua_State *L, box *b) {
  if (b->j) json_decref(b->j);
  b->j = NULL;
  if (b->reserved && is_sandbox(L)) SBX(L)->used -= b->reserved;
  b->reserved = 0;
}

static int box_gc(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (b->p) f(ud, b->p, b->cap, 0);
  b->p = NULL;
  box_release(L, b);
  return 0;
}

static box *push_box(lua_State *L) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &K_BOX_MT);
  lua_setmetatable(L, -2);
  return b;
}

/* Grows through the state's own allocator, so the cap covers it. */
static void box_add(lua_State *L, box *b, const char *s, size_t n) {
  if (b->cap - b->len < n) {
    size_t nc = b->cap ? b->cap : 256;
    while (nc - b->len < n) nc *= 2;
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    char *np = f(ud, b->p, b->p ? b->cap : 0, nc);
    if (!np) luaL_error(L, "json.encode: not enough memory (memory cap)");
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void enc_string(lua_State *L, box *b, const char *s, size_t n) {
  box_add(L, b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    box_add(L, b, s + run, i - run);
    char esc[8];
    switch (c) {
      case '"': box_add(L, b, "\\\"", 2); break;
      case '\\': box_add(L, b, "\\\\", 2); break;
      case '\n': box_add(L, b, "\\n", 2); break;
      case '\r': box_add(L, b, "\\r", 2); break;
      case '\t': box_add(L, b, "\\t", 2); break;
      default:
        snprintf(esc, sizeof esc, "\\u%04x", c);
        box_add(L, b, esc, 6);
    }
    run = i + 1;
  }
  box_add(L, b, s + run, n - run);
  box_add(L, b, "\"", 1);
}

static void enc_value(lua_State *L, box *b, int idx, int depth) {
  char num[64];
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL: box_add(L, b, "null", 4); return;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) box_add(L, b, "true", 4);
      else box_add(L, b, "false", 5);
      return;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { box_add(L, b, "null", 4); return; }
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
      } else {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d))
          luaL_error(L, "json.encode: cannot encode %s", isnan(d) ? "NaN"
                                                          : "inf");
        snprintf(num, sizeof num, "%.15g", d); /* shortest that reads back */
        if (strtod(num, NULL) != d) snprintf(num, sizeof num, "%.17g", d);
      }
      box_add(L, b, num, strlen(num));
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      enc_string(L, b, s, n);
      return;
    }
    case LUA_TTABLE: {
      if (depth >= JSON_MAX_DEPTH)
        luaL_error(L, "json.encode: nesting deeper than %d (a cycle?)",
                   JSON_MAX_DEPTH);
      luaL_checkstack(L, 4, "json.encode");
      lua_Integer count = 0, maxk = 0;
      bool array = true;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
          lua_Integer k = lua_tointeger(L, -1);
          if (k > maxk) maxk = k;
        } else {
          array = false;
        }
      }
      if (array && count > 0 && maxk == count) {
        box_add(L, b, "[", 1);
        for (lua_Integer i = 1; i <= count; i++) {
          if (i > 1) box_add(L, b, ",", 1);
          lua_rawgeti(L, idx, i);
          enc_value(L, b, -1, depth + 1);
          lua_pop(L, 1);
        }
        box_add(L, b, "]", 1);
        return;
      }
      box_add(L, b, "{", 1);
      bool first = true;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        if (!first) box_add(L, b, ",", 1);
        first = false;
        if (lua_type(L, -2) == LUA_TSTRING) {
          size_t n;
          const char *k = lua_tolstring(L, -2, &n);
          enc_string(L, b, k, n);
        } else if (lua_isinteger(L, -2)) {
          snprintf(num, sizeof num, "\"%lld\"",
                   (long long)lua_tointeger(L, -2));
          box_add(L, b, num, strlen(num));
        } else {
          luaL_error(L, "json.encode: cannot encode a %s key",
                     luaL_typename(L, -2));
        }
        box_add(L, b, ":", 1);
        enc_value(L, b, -1, depth + 1);
        lua_pop(L, 1);
      }
      box_add(L, b, "}", 1);
      return;
    }
    default: break;
  }
  luaL_error(L, "json.encode: cannot encode a %s", luaL_typename(L, idx));
}

static int l_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  box *b = push_box(L);
  enc_value(L, b, 1, 0);
  lua_pushlstring(L, b->p ? b->p : "", b->len);
  return 1;
}

/* jansson builds its tree with malloc, outside the state's allocator: the
 * tree's estimated size is reserved from the cap (refused when it does not
 * fit) before jansson runs, and released when the tree is freed, so the
 * Lua copy built from it must fit in what is left. */
static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  box *b = push_box(L);
  if (is_sandbox(L)) {
    sbx *x = SBX(L);
    size_t need = orch__json_text_cost(s, n);
    size_t left = x->used < x->max ? x->max - x->used : 0;
    if (need > left) {
      x->mem_tripped = true; /* reported as the memory cap (ELIMIT) */
      return luaL_error(L, "json.decode: a document of %I bytes needs "
                           "about %I bytes, more than the %I left under "
                           "the memory cap", (lua_Integer)n,
                        (lua_Integer)need, (lua_Integer)left);
    }
    x->used += need;
    b->reserved = need;
  }
  json_error_t e;
  b->j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  if (!b->j) {
    box_release(L, b);
    return luaL_error(L, "json.decode: %s (line %d, column %d)", e.text,
                      e.line, e.column);
  }
  orch__lua_push_json(L, b->j);
  box_release(L, b);
  return 1;
}

/* ---- building a state -------------------------------------------------- */

static void copy_fields(lua_State *L, int from, int to,
                        const char *const *names) {
  for (; *names; names++) {
    lua_getfield(L, from, *names);
    lua_setfield(L, to, *names);
  }
}

/* Runs protected: opens the libraries the allow-list takes from and builds
 * the template, the metatables and the module tables. */
static int setup_state(lua_State *L) {
  static const char *const base_names[] = {
      "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
      "rawget", "rawlen", "select", "tonumber", "tostring", "type",
      "_VERSION", NULL};
  static const char *const os_names[] = {"time", "clock", "date", NULL};
  lua_newtable(L);                                  /* weak keys */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_VIEWS);
  lua_newtable(L);                                  /* weak keys */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_DEEP);
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);     /* G */
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 0);
  luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 0);
  luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 0);
  luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 0);
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);   /* G s t m u os */
  /* The real string table is the string metatable's __index: without dump
   * there, ("").dump is nil too, and s:find is the budgeted one. */
  lua_pushnil(L);
  lua_setfield(L, -6, "dump");
  static const luaL_Reg budgeted[] = {{"find", orch__str_find},
                                      {"match", orch__str_match},
                                      {"gmatch", orch__str_gmatch},
                                      {"gsub", orch__str_gsub},
                                      {NULL, NULL}};
  lua_pushvalue(L, 2);
  luaL_setfuncs(L, budgeted, 0);
  lua_getfield(L, -1, "rep");
  lua_pushcclosure(L, l_string_rep, 1);
  lua_setfield(L, -2, "rep");
  lua_pop(L, 1);
  lua_getfield(L, -4, "move");
  lua_pushcclosure(L, l_table_move, 1);
  lua_setfield(L, -5, "move");

  lua_newtable(L);                                  /* ... T */
  int T = lua_gettop(L);
  copy_fields(L, 1, T, base_names);
  static const luaL_Reg own[] = {{"getmetatable", l_getmetatable},
                                 {"setmetatable", l_setmetatable},
                                 {"rawset", l_rawset},
                                 {"xpcall", l_xpcall},
                                 {"print", l_log},
                                 {"load", l_load},
                                 {"require", l_require},
                                 {NULL, NULL}};
  luaL_setfuncs(L, own, 0);
  lua_pushvalue(L, 2);
  lua_setfield(L, T, "string");
  lua_pushvalue(L, 3);
  lua_setfield(L, T, "table");
  lua_pushvalue(L, 4);
  lua_setfield(L, T, "math");
  lua_pushvalue(L, 5);
  lua_setfield(L, T, "utf8");
  lua_newtable(L);
  copy_fields(L, 6, lua_gettop(L), os_names);
  set_deny_mt(L, -1, "os");
  lua_setfield(L, T, "os");
  set_deny_mt(L, 2, "string");
  static const luaL_Reg jsonf[] = {{"encode", l_json_encode},
                                   {"decode", l_json_decode},
                                   {NULL, NULL}};
  luaL_newlib(L, jsonf);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_setfield(L, T, "json");
  static const luaL_Reg orchf[] = {{"log", l_log},
                                   {"now_ms", l_now_ms},
                                   {"sha256", l_sha256},
                                   {"keywords", orch__lua_keywords},
                                   {NULL, NULL}};
  luaL_newlib(L, orchf);
  lua_setfield(L, T, "orch");
  /* the library tables become read-only views, shared by every chunk of
   * the state (the string table behind its view is also the string
   * metatable's __index, which scripts cannot reach) */
  static const char *const libs[] = {"string", "table", "math", "utf8",
                                     "os", "json", "orch", NULL};
  for (const char *const *l = libs; *l; l++) {
    lua_getfield(L, T, *l);
    push_view(L, lib_newindex, *l);
    lua_setfield(L, T, *l);
  }
  lua_pushvalue(L, T);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_TEMPLATE);
  lua_settop(L, 0);

  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, env_index);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_INNER_MT);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_ENVS);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_LOADED);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_PROXIES);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_BOX_MT);
  /* The host's global table, which chunks loaded with a plain
   * luaL_loadbuffer see, is a sandbox environment too: the allow-list,
   * nonexistent names raise, and writes from Lua raise (C may still set
   * globals before a chunk runs). */
  push_env(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  return 0;
}

static int limits_budget(int budget_k) {
  long long b = budget_k > 0 ? (long long)budget_k * 1000
                             : (long long)DEFAULT_BUDGET_K * 1000;
  return b > 0x7fffffff ? 0x7fffffff : (int)b;
}

static lua_State *state_new(int budget_k, size_t mem_max, const psnap *snap,
                            char *err, size_t errlen) {
  sbx *x = calloc(1, sizeof *x);
  if (!x) {
    orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
    return NULL;
  }
  x->max = mem_max ? mem_max : DEFAULT_MEM_MAX;
  x->budget = limits_budget(budget_k);
  x->snap = snap;
  lua_State *L = lua_newstate(sbx_alloc, x);
  if (!L) {
    orch__err(err, errlen, ORCH_ENOMEM,
              "cannot create a Lua state (memory cap %zu bytes)", x->max);
    free(x);
    return NULL;
  }
  *(sbx **)lua_getextraspace(L) = x;
  x->L = L;
  if (watch_add(x)) {
    orch__err(err, errlen, ORCH_ENOMEM,
              "cannot start the Lua budget watchdog thread");
    lua_close(L);
    free(x);
    return NULL;
  }
  lua_atpanic(L, sbx_panic);
  lua_pushcfunction(L, setup_state);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    orch__err(err, errlen, ORCH_ENOMEM, "cannot set up the Lua sandbox: %s",
              lua_tostring(L, -1));
    watch_remove(x);
    lua_close(L);
    free(x);
    return NULL;
  }
  return L;
}

static void state_close(lua_State *L) {
  if (!L) return;
  sbx *x = SBX(L);
  watch_remove(x);
  lua_close(L);
  free(x);
}

/* ---- protected calls --------------------------------------------------- */

/* Length of a leading "file:line:" in s, 0 when there is none. */
static size_t where_len(const char *s, long *line) {
  for (const char *c = s; *c && *c != '\n'; c++) {
    if (*c != ':' || c == s || c[1] < '0' || c[1] > '9') continue;
    const char *d = c + 1;
    long n = 0;
    while (*d >= '0' && *d <= '9') n = n * 10 + (*d++ - '0');
    if (*d == ':') {
      if (line) *line = n;
      return (size_t)(d - s) + 1;
    }
  }
  return 0;
}

/* Message handler: a string message, with the position of the innermost
 * script line added when the error came without one (assert, error with
 * level 0, errors raised by C functions). */
static int msgh(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) {
    if (!(luaL_callmeta(L, 1, "__tostring") &&
          lua_type(L, -1) == LUA_TSTRING))
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    lua_replace(L, 1);
  }
  const char *m = lua_tostring(L, 1);
  if (where_len(m, NULL)) return 1;
  lua_Debug ar;
  for (int lv = 0; lua_getstack(L, lv, &ar); lv++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    if (ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, m);
      return 1;
    }
  }
  return 1;
}

/* Describes a failed call: "<src>:<line>: instruction budget exceeded (N
 * instructions)", "<file>: memory cap exceeded (N bytes)", or the Lua
 * message; what (may be NULL) names the hook: " in what" / " (in what)".
 * Pops the error object and collects the failed call's garbage, so the
 * state is usable again. */
static int call_error(lua_State *L, int st, bool budget, bool mem,
                      const char *file, const char *what, char *err,
                      size_t errlen) {
  sbx *x = SBX(L);
  const char *msg = lua_tostring(L, -1);
  char in[200] = "";
  int rc;
  if (budget) {
    char by[64] = "";
    if (x->trip_what)
      snprintf(by, sizeof by, " by %s's pattern matching", x->trip_what);
    if (what) snprintf(in, sizeof in, " in %s", what);
    if (x->trip_line > 0)
      rc = orch__err(err, errlen, ORCH_ELIMIT,
                     "%s:%d: instruction budget exceeded (%d instructions)"
                     "%s%s",
                     x->trip_src, x->trip_line, x->budget, by, in);
    else
      rc = orch__err(err, errlen, ORCH_ELIMIT,
                     "%s: instruction budget exceeded (%d instructions)%s%s",
                     file ? file : x->trip_src, x->budget, by, in);
  } else if (st == LUA_ERRMEM ||
             (mem && msg && strstr(msg, "not enough memory"))) {
    if (what) snprintf(in, sizeof in, " in %s", what);
    rc = orch__err(err, errlen, ORCH_ELIMIT,
                   "%s: memory cap exceeded (%zu bytes)%s",
                   file ? file : "script", x->max, in);
  } else if (mem && msg && strstr(msg, "memory cap")) {
    /* a refusal that says more (json.decode's) */
    if (what) snprintf(in, sizeof in, " (in %s)", what);
    rc = orch__err(err, errlen, ORCH_ELIMIT, "%s%s", msg, in);
  } else {
    if (what) snprintf(in, sizeof in, " (in %s)", what);
    rc = orch__err(err, errlen, ORCH_ESCRIPT, "%s%s",
                   msg ? msg : "(error object is not a string)", in);
  }
  lua_pop(L, 1);
  lua_gc(L, LUA_GCCOLLECT);
  x->mem_tripped = false;
  return rc;
}

/* Calls the function below nargs arguments under the budget, through msgh.
 * [-(nargs+1), +nres] on success, [-(nargs+1), +0] on failure. */
static int pcall_budget(lua_State *L, int nargs, int nres, const char *file,
                        const char *what, char *err, size_t errlen) {
  if (!lua_checkstack(L, 2))
    return orch__err(err, errlen, ORCH_ELIMIT, "Lua stack overflow");
  sbx *x = SBX(L);
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  call_begin(L);
  int st = lua_pcall(L, nargs, nres, base);
  bool budget = x->budget_tripped, mem = x->mem_tripped;
  call_end(L);
  int rc = ORCH_OK;
  if (st == LUA_OK && budget) {
    /* A pcall in tail position (`return pcall(loop)`) returns straight to
     * C, with no Lua instruction left for the re-armed hook to stop: the
     * spent budget still fails the call, whatever it returned. */
    lua_settop(L, base);
    lua_pushliteral(L, "instruction budget exceeded");
    st = LUA_ERRRUN;
  }
  if (st != LUA_OK) rc = call_error(L, st, budget, mem, file, what, err, errlen);
  lua_remove(L, base);
  return rc;
}

/* ---- messages ---------------------------------------------------------- */

/* Splits "file:line: message" for a report; a file that is the (possibly
 * shortened) chunk name of m is replaced by m's full path. */
/* The file part of msg's "file:line:" into file (""when none); returns
 * the length of the whole "file:line:" prefix (0: none). */
static size_t where_file(const char *msg, long *line, char *file,
                         size_t filecap) {
  size_t w = where_len(msg, line);
  size_t flen = 0;
  /* the file part ends at the ':' before the line number */
  for (size_t i = w ? w - 1 : 0; i > 0; i--)
    if (msg[i - 1] == ':') { flen = i - 1; break; }
  snprintf(file, filecap, "%.*s", (int)flen, msg);
  return w;
}

/* Whether a file named in a Lua message (its chunk name, or "..." and its
 * tail when Lua shortened it) is module m's. */
static bool names_module(const char *file, const pmod *m) {
  if (strcmp(file, m->chunk + 1) == 0) return true;
  size_t pl = strlen(m->path), fl = strlen(file);
  return strncmp(file, "...", 3) == 0 && pl >= fl - 3 &&
         strcmp(m->path + pl - (fl - 3), file + 3) == 0;
}

static void report_error(orch_report_fn report, void *ud, const pmod *m,
                         const char *path, const char *msg) {
  long line = 0;
  char file[1024];
  size_t w = where_file(msg, &line, file, sizeof file);
  if (w) {
    if (m && names_module(file, m)) snprintf(file, sizeof file, "%s", m->path);
    msg += w;
    while (*msg == ' ') msg++;
    char text[1024];
    snprintf(text, sizeof text, "%s", msg);
    size_t tl = strlen(text);
    char *in = strstr(text, " (in ");
    if (in && tl > 0 && text[tl - 1] == ')' && strstr(in, "()"))
      *in = '\0'; /* the file and line say where already */
    report(ud, file, (int)line, text);
    return;
  }
  size_t pl = strlen(path);
  if (strncmp(msg, path, pl) == 0 && msg[pl] == ':' && msg[pl + 1] == ' ')
    msg += pl + 2;
  report(ud, path, 0, msg);
}

/* ---- scanning the scripts directory ------------------------------------ */

static bool ident(const char *s, size_t n) {
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return false;
  }
  return true;
}

static int pmod_make(pmod *m, const char *dir, const char *sub,
                     const char *stem, char *src, size_t len) {
  memset(m, 0, sizeof *m);
  const char *sep = dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/";
  if (sub) {
    m->name = orch__asprintf("%s.%s", sub, stem);
    m->path = orch__asprintf("%s%s%s/%s.lua", dir, sep, sub, stem);
  } else {
    m->name = orch__strdup(stem);
    m->path = orch__asprintf("%s%s%s.lua", dir, sep, stem);
  }
  m->short_name = orch__strdup(stem);
  if (!m->name || !m->path || !m->short_name) goto fail;
  if (strlen(m->path) < LUA_IDSIZE - 1) {
    m->chunk = orch__asprintf("@%s", m->path);
  } else {
    const char *rel = m->path + strlen(dir) + strlen(sep);
    const char *b = dir + strlen(dir);
    while (b > dir && b[-1] == '/') b--;
    const char *e = b;
    while (b > dir && b[-1] != '/') b--;
    m->chunk = orch__asprintf("@%.*s/%s", (int)(e - b), b, rel);
    if (m->chunk && strlen(m->chunk) >= LUA_IDSIZE) {
      free(m->chunk);
      m->chunk = orch__asprintf("@%s", rel);
    }
  }
  if (!m->chunk) goto fail;
  m->src = src;
  m->len = len;
  return ORCH_OK;
fail:
  pmod_deinit(m);
  free(src);
  memset(m, 0, sizeof *m);
  return ORCH_ENOMEM;
}

static int cmp_pmod(const void *a, const void *b) {
  return strcmp(((const pmod *)a)->name, ((const pmod *)b)->name);
}

/* A module file (or a whole subdirectory) that is listed but could not be
 * read: not a deletion. */
typedef struct unread {
  char *name; /* the module, or for a subdirectory its prefix "routing." */
  char *path;
  char *err;  /* "path: why" */
  bool dir;
} unread;

typedef struct unreads {
  unread *v;
  size_t n;
} unreads;

static void unreads_deinit(unreads *u) {
  for (size_t i = 0; i < u->n; i++) {
    free(u->v[i].name);
    free(u->v[i].path);
    free(u->v[i].err);
  }
  free(u->v);
  u->v = NULL;
  u->n = 0;
}

static int unreads_add(unreads *u, char *name, const char *path,
                       const char *err, bool dir) {
  unread *nv = realloc(u->v, (u->n + 1) * sizeof *nv);
  if (!nv) { free(name); return ORCH_ENOMEM; }
  u->v = nv;
  unread *e = &u->v[u->n];
  e->name = name;
  e->path = orch__strdup(path);
  e->err = orch__strdup(err);
  e->dir = dir;
  if (!e->name || !e->path || !e->err) {
    free(e->name);
    free(e->path);
    free(e->err);
    return ORCH_ENOMEM;
  }
  u->n++;
  return ORCH_OK;
}

/* Adds dir[/sub]/NAME.lua files to s; unreadable ones (and subdirectories)
 * go to report and to bad (each may be NULL). */
static int scan_one(psnap *s, size_t *cap, const char *dir, const char *sub,
                    orch_report_fn report, void *ud, int *problems,
                    unreads *bad) {
  char *path = sub ? orch__asprintf("%s/%s", dir, sub) : orch__strdup(dir);
  if (!path) return ORCH_ENOMEM;
  DIR *d = opendir(path);
  int rc = ORCH_OK;
  if (!d) {
    rc = sub ? ORCH_OK : ORCH_ENOTFOUND;
    if (sub) {
      char e[512];
      snprintf(e, sizeof e, "%s: cannot open the directory: %s", path,
               strerror(errno));
      if (report) report(ud, path, 0, e);
      if (problems) (*problems)++;
      if (bad) rc = unreads_add(bad, orch__asprintf("%s.", sub), path, e,
                                true);
    }
    goto done;
  }
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *n = de->d_name;
    size_t nl = strlen(n);
    if (n[0] == '.') continue;
    char *fp = orch__asprintf("%s/%s", path, n);
    if (!fp) { rc = ORCH_ENOMEM; break; }
    struct stat st;
    bool isdir = stat(fp, &st) == 0 && S_ISDIR(st.st_mode);
    if (isdir && !sub && ident(n, nl)) {
      free(fp);
      rc = scan_one(s, cap, dir, n, report, ud, problems, bad);
      if (rc) break;
      continue;
    }
    if (isdir || nl < 5 || strcmp(n + nl - 4, ".lua") != 0 ||
        !ident(n, nl - 4)) {
      free(fp);
      continue;
    }
    char *src = NULL, e[256];
    size_t len = 0;
    int frc = orch__read_file(fp, SCRIPT_MAX_BYTES, &src, &len, e, sizeof e);
    if (frc) {
      if (frc == ORCH_ELIMIT) /* read_file names plan_max_bytes */
        snprintf(e, sizeof e, "%s: over the limit of %u bytes for a script",
                 fp, SCRIPT_MAX_BYTES);
      if (report) report(ud, fp, 0, e);
      if (problems) (*problems)++;
      if (bad) {
        char *name = sub ? orch__asprintf("%s.%.*s", sub, (int)(nl - 4), n)
                         : orch__asprintf("%.*s", (int)(nl - 4), n);
        rc = unreads_add(bad, name, fp, e, false);
      }
      free(fp);
      if (rc) break;
      continue;
    }
    free(fp);
    if (s->n == *cap) {
      size_t nc = *cap ? *cap * 2 : 16;
      pmod *nm = realloc(s->mods, nc * sizeof *nm);
      if (!nm) { free(src); rc = ORCH_ENOMEM; break; }
      s->mods = nm;
      *cap = nc;
    }
    char stem[256];
    snprintf(stem, sizeof stem, "%.*s", (int)(nl - 4), n);
    rc = pmod_make(&s->mods[s->n], dir, sub, stem, src, len);
    if (rc) break;
    s->n++;
  }
  closedir(d);
done:
  free(path);
  return rc;
}

/* Reads every module under dir into a new snapshot (gen 0); what is listed
 * but unreadable goes to report and bad (each may be NULL). A missing dir
 * is ORCH_ENOTFOUND with *out NULL. */
static int scan_dir(const char *dir, psnap **out, orch_report_fn report,
                    void *ud, int *problems, unreads *bad) {
  *out = NULL;
  psnap *s = snap_empty();
  if (!s) return ORCH_ENOMEM;
  size_t cap = 0;
  int rc = scan_one(s, &cap, dir, NULL, report, ud, problems, bad);
  if (rc) {
    snap_unref(s);
    return rc;
  }
  if (s->n) qsort(s->mods, s->n, sizeof *s->mods, cmp_pmod);
  *out = s;
  return ORCH_OK;
}

/* ---- checking: load + selftest in a fresh state ------------------------ */

static int do_require(lua_State *L) {
  require_module(L, lua_tostring(L, 1));
  return 0;
}

/* selftest() passes unless it raises or returns false (then its second
 * result is the message). */
static int do_selftest(lua_State *L) {
  const char *name = lua_tostring(L, 1);
  require_module(L, name);
  if (lua_getfield(L, -1, "selftest") != LUA_TFUNCTION) return 0;
  lua_call(L, 0, 2);
  if (lua_type(L, -2) == LUA_TBOOLEAN && !lua_toboolean(L, -2)) {
    const pmod *m = snap_find(SBX(L)->snap, name);
    const char *why = lua_tostring(L, -1);
    return luaL_error(L, "%s: selftest() failed: %s", m ? m->path : name,
                      why ? why : "it returned false");
  }
  return 0;
}

/* Loads module m in L and runs its selftest, each under its own budget. */
static int check_module(lua_State *L, const pmod *m, char *err,
                        size_t errlen) {
  char what[160];
  lua_pushcfunction(L, do_require);
  lua_pushstring(L, m->name);
  int rc = pcall_budget(L, 1, 0, m->path, NULL, err, errlen);
  if (rc) return rc;
  snprintf(what, sizeof what, "%s.selftest()", m->short_name);
  lua_pushcfunction(L, do_selftest);
  lua_pushstring(L, m->name);
  return pcall_budget(L, 1, 0, m->path, what, err, errlen);
}

/* Every module of snap in one fresh state. On failure *bad is the module
 * that failed. */
static int check_snap(int budget_k, size_t mem_max, const psnap *snap,
                      const pmod **bad, char *err, size_t errlen) {
  if (bad) *bad = NULL;
  lua_State *L = state_new(budget_k, mem_max, snap, err, errlen);
  if (!L) return ORCH_ENOMEM;
  int rc = ORCH_OK;
  for (size_t i = 0; i < snap->n && !rc; i++) {
    rc = check_module(L, &snap->mods[i], err, errlen);
    if (rc && bad) *bad = &snap->mods[i];
  }
  state_close(L);
  return rc;
}

/* ---- the policy: current snapshot, generation, reload ------------------ */

typedef struct rejected {
  char *name;
  pmod *mod; /* the refused content; NULL: its removal was refused */
  char *err; /* why (file:line: message) */
  bool unreadable; /* the file is listed but could not be read */
} rejected;

typedef struct pwatch pwatch;

/* Lock order: scan_mu before mu. mu guards cur, last_err and the rejected
 * list's readers; scan_mu makes scans one at a time. */
struct orch__policy {
  char *dir;
  int budget_k;
  size_t mem_max;
  int json_depth;
  pthread_mutex_t mu, scan_mu;
  psnap *cur;
  atomic_uint gen;
  char last_err[1024];
  rejected *rej;
  size_t nrej;
  pwatch *watch;
  atomic_ulong reloads, refusals;
  orch__policy_event_fn on_event; /* scan_mu */
  void *on_event_ud;
};

/* Tells the event listener what a scan did: the module loaded from gen, or
 * refused (error) while gen keeps serving. Under scan_mu. */
static void emit(orch__policy *p, const char *name, const pmod *m,
                 unsigned gen, const char *error) {
  if (p->on_event && m) p->on_event(p->on_event_ud, name, m->path, gen, error);
}

static void log_refusal(const char *msg) {
  fprintf(stderr, "orchestrate: script reload refused, the previous version "
                  "keeps serving: %s\n", msg);
}

static rejected *rej_find(orch__policy *p, const char *name) {
  for (size_t i = 0; i < p->nrej; i++)
    if (!strcmp(p->rej[i].name, name)) return &p->rej[i];
  return NULL;
}

static void rej_drop(orch__policy *p, const char *name) {
  rejected *r = rej_find(p, name);
  if (!r) return;
  free(r->name);
  free(r->err);
  if (r->mod) { pmod_deinit(r->mod); free(r->mod); }
  *r = p->rej[--p->nrej];
}

static void rej_set(orch__policy *p, const char *name, const pmod *m,
                    const char *why) {
  rej_drop(p, name);
  rejected *nr = realloc(p->rej, (p->nrej + 1) * sizeof *nr);
  if (!nr) return;
  p->rej = nr;
  rejected *r = &p->rej[p->nrej];
  r->name = orch__strdup(name);
  r->mod = NULL;
  r->unreadable = false;
  r->err = orch__strdup(why ? why : "");
  if (!r->name || !r->err) {
    free(r->name);
    free(r->err);
    return;
  }
  if (m) {
    r->mod = malloc(sizeof *r->mod);
    if (!r->mod || pmod_copy(r->mod, m)) {
      free(r->mod);
      free(r->name);
      free(r->err);
      return;
    }
  }
  p->nrej++;
}

static const unread *unread_find(const unreads *u, const char *name) {
  for (size_t i = 0; i < u->n; i++)
    if (!strcmp(u->v[i].name, name)) return &u->v[i];
  return NULL;
}

/* A listed module file (or subdirectory) that cannot be read keeps what is
 * serving: cur's modules it covers are put into disk as they are, so the
 * scan sees no change there. Only a name gone from the listing is a
 * deletion. Returns disk, or a new snapshot in its place (NULL: out of
 * memory, disk released). */
static psnap *keep_unread(psnap *disk, const psnap *cur, const unreads *bad) {
  for (size_t i = 0; i < bad->n && disk; i++) {
    const unread *u = &bad->v[i];
    size_t nl = strlen(u->name);
    for (size_t j = 0; j < cur->n && disk; j++) {
      const pmod *c = &cur->mods[j];
      bool covered = u->dir ? strncmp(c->name, u->name, nl) == 0
                            : strcmp(c->name, u->name) == 0;
      if (!covered || snap_find(disk, c->name)) continue;
      psnap *nd = snap_with(disk, c->name, c);
      snap_unref(disk);
      disk = nd;
    }
  }
  return disk;
}

/* Records each unreadable file as a refusal, once while its error stands
 * (logged, counted, the last error, an event), and forgets those readable
 * again. Under scan_mu. */
static void refuse_unread(orch__policy *p, const unreads *bad, unsigned gen) {
  for (size_t i = 0; i < p->nrej;) {
    if (p->rej[i].unreadable && !unread_find(bad, p->rej[i].name))
      rej_drop(p, p->rej[i].name); /* moves the last entry to i */
    else
      i++;
  }
  for (size_t i = 0; i < bad->n; i++) {
    const unread *u = &bad->v[i];
    rejected *r = rej_find(p, u->name);
    if (r && r->unreadable && !strcmp(r->err, u->err)) continue;
    rej_set(p, u->name, NULL, u->err);
    if ((r = rej_find(p, u->name))) r->unreadable = true;
    log_refusal(u->err);
    atomic_fetch_add(&p->refusals, 1);
    pthread_mutex_lock(&p->mu);
    snprintf(p->last_err, sizeof p->last_err, "%s", u->err);
    pthread_mutex_unlock(&p->mu);
    if (p->on_event) {
      char label[300]; /* a subdirectory "routing." is "routing.*" */
      snprintf(label, sizeof label, "%s%s", u->name, u->dir ? "*" : "");
      p->on_event(p->on_event_ud, label, u->path, gen, u->err);
    }
  }
}

/* Applies the change of module name (disk's version, or its removal). */
static psnap *apply(const psnap *base, const psnap *disk, const char *name) {
  return snap_with(base, name, snap_find(disk, name));
}

/* Rescans the directory, checks what changed, publishes what passed. */
static int rescan(orch__policy *p, bool initial) {
  psnap *disk = NULL, *cur = NULL, *working = NULL;
  char **pending = NULL;
  bool *done = NULL;
  char (*errs)[1024] = NULL;
  size_t npend = 0;
  int rc = ORCH_OK;
  char err[1024];
  unreads bad = {NULL, 0};
  pthread_mutex_lock(&p->scan_mu);
  rc = scan_dir(p->dir, &disk, NULL, NULL, NULL, &bad);
  if (rc == ORCH_ENOTFOUND) {
    rc = ORCH_OK;
    if (!initial) goto done; /* a vanished dir unloads nothing */
    disk = snap_empty();
    if (!disk) rc = ORCH_ENOMEM;
  }
  if (rc) goto done;
  pthread_mutex_lock(&p->mu);
  cur = snap_ref(p->cur);
  pthread_mutex_unlock(&p->mu);
  working = snap_ref(cur);
  if (!(disk = keep_unread(disk, cur, &bad))) { rc = ORCH_ENOMEM; goto done; }

  /* the changed names, less contents refused before */
  pending = calloc(disk->n + cur->n + 1, sizeof *pending);
  done = calloc(disk->n + cur->n + 1, sizeof *done);
  if (!pending || !done) { rc = ORCH_ENOMEM; goto done; }
  for (int side = 0; side < 2; side++) {
    const psnap *s = side ? cur : disk;
    for (size_t i = 0; i < s->n; i++) {
      const char *name = s->mods[i].name;
      if (side && snap_find(disk, name)) continue; /* seen */
      const pmod *d = snap_find(disk, name), *c = snap_find(cur, name);
      if (pmod_same(d, c)) {
        if (!unread_find(&bad, name)) rej_drop(p, name);
        continue;
      }
      rejected *r = rej_find(p, name);
      if (r && pmod_same(r->mod, d)) continue;
      pending[npend++] = (char *)name;
    }
  }
  if (npend) {
    /* all at once first; then one by one (twice, so a change that needs
     * another change checked after it gets its turn) */
    psnap *cand = snap_ref(working);
    for (size_t i = 0; i < npend && cand; i++) {
      psnap *next = apply(cand, disk, pending[i]);
      snap_unref(cand);
      cand = next;
    }
    if (!cand) { rc = ORCH_ENOMEM; goto done; }
    if (check_snap(p->budget_k, p->mem_max, cand, NULL, err, sizeof err) ==
        ORCH_OK) {
      snap_unref(working);
      working = cand;
      for (size_t i = 0; i < npend; i++) {
        done[i] = true;
        rej_drop(p, pending[i]);
      }
    } else {
      snap_unref(cand);
      errs = calloc(npend, sizeof *errs);
      if (!errs) { rc = ORCH_ENOMEM; goto done; }
      for (int pass = 0; pass < 2; pass++) {
        bool progress = false;
        for (size_t i = 0; i < npend; i++) {
          if (done[i]) continue;
          cand = apply(working, disk, pending[i]);
          if (!cand) { rc = ORCH_ENOMEM; goto done; }
          if (check_snap(p->budget_k, p->mem_max, cand, NULL, errs[i],
                         sizeof errs[i]) == ORCH_OK) {
            snap_unref(working);
            working = cand;
            done[i] = progress = true;
            rej_drop(p, pending[i]);
          } else {
            snap_unref(cand);
          }
        }
        if (!progress) break;
      }
      for (size_t i = 0; i < npend; i++) {
        if (done[i]) continue;
        rej_set(p, pending[i], snap_find(disk, pending[i]), errs[i]);
        log_refusal(errs[i]);
        atomic_fetch_add(&p->refusals, 1);
        pthread_mutex_lock(&p->mu);
        snprintf(p->last_err, sizeof p->last_err, "%s", errs[i]);
        pthread_mutex_unlock(&p->mu);
      }
    }
  }
  if (working != cur || initial) {
    working->gen = initial ? 1 : cur->gen + 1;
    pthread_mutex_lock(&p->mu);
    psnap *old = p->cur;
    p->cur = snap_ref(working);
    atomic_store(&p->gen, working->gen);
    pthread_mutex_unlock(&p->mu);
    snap_unref(old);
    if (!initial) atomic_fetch_add(&p->reloads, 1);
  }
  for (size_t i = 0; i < npend; i++)
    emit(p, pending[i], snap_find(disk, pending[i]), working->gen,
         done[i] ? NULL : errs ? errs[i] : "refused");
  refuse_unread(p, &bad, working->gen);
  /* the error stands while a refused content is still what is on disk, or
   * a file is still unreadable */
  bool standing = bad.n > 0;
  for (size_t i = 0; i < p->nrej; i++) {
    rejected *r = &p->rej[i];
    if (pmod_same(r->mod, snap_find(disk, r->name))) standing = true;
  }
  if (!standing) {
    pthread_mutex_lock(&p->mu);
    p->last_err[0] = '\0';
    pthread_mutex_unlock(&p->mu);
  }
done:
  free(errs);
  free(pending);
  free(done);
  snap_unref(working);
  snap_unref(cur);
  snap_unref(disk);
  unreads_deinit(&bad);
  pthread_mutex_unlock(&p->scan_mu);
  return rc;
}

int orch__policy_new(orch__policy **out, const orch__config *cfg, char *err,
                     size_t errlen) {
  *out = NULL;
  orch__policy *p = calloc(1, sizeof *p);
  if (!p) return orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
  p->dir = orch__strdup(cfg && cfg->scripts_dir ? cfg->scripts_dir
                                                : "scripts");
  p->budget_k = cfg ? cfg->lua_budget : 0;
  p->mem_max = cfg ? cfg->lua_mem_max : 0;
  p->json_depth = cfg && cfg->json_max_depth > 0 ? cfg->json_max_depth : 64;
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->scan_mu, NULL);
  p->cur = snap_empty();
  if (!p->dir || !p->cur) {
    orch__policy_free(p);
    return orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
  }
  int rc = rescan(p, true);
  if (rc) {
    orch__policy_free(p);
    return orch__err(err, errlen, rc, "loading scripts from %s: %s",
                     cfg && cfg->scripts_dir ? cfg->scripts_dir : "scripts",
                     orch_strerror(rc));
  }
  *out = p;
  return ORCH_OK;
}

int orch__policy_rescan(orch__policy *p) { return p ? rescan(p, false) : 0; }

unsigned orch__policy_generation(const orch__policy *p) {
  return p ? atomic_load(&((orch__policy *)p)->gen) : 0;
}

unsigned orch__policy_last_error(orch__policy *p, char *buf, size_t buflen) {
  if (buflen) buf[0] = '\0';
  if (!p) return 0;
  pthread_mutex_lock(&p->mu);
  if (buflen) snprintf(buf, buflen, "%s", p->last_err);
  unsigned g = p->cur ? p->cur->gen : 0;
  pthread_mutex_unlock(&p->mu);
  return g;
}

size_t orch__policy_modules(orch__policy *p, char *buf, size_t buflen) {
  size_t n = 0, off = 0;
  if (buflen) buf[0] = '\0';
  if (!p) return 0;
  pthread_mutex_lock(&p->mu);
  for (size_t i = 0; i < p->cur->n; i++, n++) {
    int w = snprintf(buf + off, buflen > off ? buflen - off : 0, "%s%s",
                     i ? " " : "", p->cur->mods[i].name);
    if (w > 0) off += (size_t)w;
  }
  pthread_mutex_unlock(&p->mu);
  return n;
}

static void unwatch_now(orch__policy *p);

void orch__policy_set_events(orch__policy *p, orch__policy_event_fn fn,
                             void *ud) {
  if (!p) return;
  pthread_mutex_lock(&p->scan_mu);
  p->on_event = fn;
  p->on_event_ud = ud;
  if (fn) {
    pthread_mutex_lock(&p->mu);
    psnap *cur = snap_ref(p->cur);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; cur && i < cur->n; i++)
      emit(p, cur->mods[i].name, &cur->mods[i], cur->gen, NULL);
    for (size_t i = 0; i < p->nrej; i++)
      if (p->rej[i].mod)
        emit(p, p->rej[i].name, p->rej[i].mod, cur ? cur->gen : 0,
             p->rej[i].err);
    snap_unref(cur);
  }
  pthread_mutex_unlock(&p->scan_mu);
}

void orch__policy_free(orch__policy *p) {
  if (!p) return;
  if (p->watch) unwatch_now(p);
  snap_unref(p->cur);
  while (p->nrej) rej_drop(p, p->rej[0].name);
  free(p->rej);
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->scan_mu);
  free(p->dir);
  free(p);
}

/* ---- per-worker states -------------------------------------------------- */

typedef struct centry {
  char module[96], fn[64];
  int ref;           /* the function, in the registry */
  const pmod *m;     /* in s->snap */
  char what[176];    /* "complexity.classify()" */
} centry;

struct orch__lstate {
  orch__policy *p;
  lua_State *L;
  psnap *snap; /* the generation this state serves (a reference) */
  unsigned gen;
  int ncache;
  centry cache[FN_CACHE_MAX];
};

static int do_reset_modules(lua_State *L) {
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_LOADED);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &K_PROXIES);
  return 0;
}

static void cache_clear(orch__lstate *s) {
  for (int i = 0; i < s->ncache; i++)
    luaL_unref(s->L, LUA_REGISTRYINDEX, s->cache[i].ref);
  s->ncache = 0;
}

/* Serves snapshot snap (taking the caller's reference): drops the modules
 * of the previous generation and loads the new ones. */
static int lstate_switch(orch__lstate *s, psnap *snap, char *err,
                         size_t errlen) {
  cache_clear(s);
  lua_pushcfunction(s->L, do_reset_modules);
  if (lua_pcall(s->L, 0, 0, 0) != LUA_OK) {
    /* cannot even make two tables: start over with a new state */
    lua_pop(s->L, 1);
    state_close(s->L);
    s->L = state_new(s->p->budget_k, s->p->mem_max, snap, err, errlen);
    if (!s->L) {
      snap_unref(snap);
      return ORCH_ENOMEM;
    }
  }
  SBX(s->L)->snap = snap;
  snap_unref(s->snap);
  s->snap = snap;
  s->gen = snap->gen;
  /* preload, so the first call does not compile; a module that fails here
   * is tried again (and its error reported) by the call that needs it */
  for (size_t i = 0; i < snap->n; i++) {
    lua_pushcfunction(s->L, do_require);
    lua_pushstring(s->L, snap->mods[i].name);
    pcall_budget(s->L, 1, 0, snap->mods[i].path, NULL, NULL, 0);
  }
  return ORCH_OK;
}

orch__lstate *orch__lstate_new(orch__policy *p, char *err, size_t errlen) {
  if (!p) {
    orch__err(err, errlen, ORCH_EINVAL, "no policy engine");
    return NULL;
  }
  orch__lstate *s = calloc(1, sizeof *s);
  if (!s) {
    orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
    return NULL;
  }
  s->p = p;
  pthread_mutex_lock(&p->mu);
  psnap *snap = snap_ref(p->cur);
  pthread_mutex_unlock(&p->mu);
  s->L = state_new(p->budget_k, p->mem_max, snap, err, errlen);
  if (!s->L || lstate_switch(s, snap, err, errlen)) {
    if (!s->L) snap_unref(snap);
    orch__lstate_free(s);
    return NULL;
  }
  return s;
}

void orch__lstate_free(orch__lstate *s) {
  if (!s) return;
  if (s->L) {
    cache_clear(s);
    state_close(s->L);
  }
  snap_unref(s->snap);
  free(s);
}

bool orch__lstate_sync(orch__lstate *s) {
  if (!s || atomic_load_explicit(&s->p->gen, memory_order_acquire) == s->gen)
    return false;
  pthread_mutex_lock(&s->p->mu);
  psnap *snap = snap_ref(s->p->cur);
  pthread_mutex_unlock(&s->p->mu);
  if (snap == s->snap) {
    snap_unref(snap);
    return false;
  }
  lstate_switch(s, snap, NULL, 0);
  return true;
}

unsigned orch__lstate_generation(const orch__lstate *s) {
  return s ? s->gen : 0;
}

lua_State *orch__lstate_L(orch__lstate *s) { return s ? s->L : NULL; }

/* ---- calling hooks ------------------------------------------------------ */

typedef struct rctx {
  const char *module, *fn;
} rctx;

/* Resolves module.fn and leaves it on the stack. */
static int do_resolve(lua_State *L) {
  rctx *c = lua_touserdata(L, 1);
  require_module(L, c->module);
  if (lua_getfield(L, -1, c->fn) != LUA_TFUNCTION) {
    const pmod *m = snap_find(SBX(L)->snap, c->module);
    return luaL_error(L, "%s: module %s has no function '%s'",
                      m ? m->path : c->module, c->module, c->fn);
  }
  return 1;
}

/* The cache entry of module.fn, resolving it on first use. */
static centry *resolve(orch__lstate *s, const char *module, const char *fn,
                       int *rc, char *err, size_t errlen) {
  for (int i = 0; i < s->ncache; i++) {
    centry *e = &s->cache[i];
    if (!strcmp(e->fn, fn) && !strcmp(e->module, module)) return e;
  }
  if (strlen(module) >= sizeof s->cache[0].module ||
      strlen(fn) >= sizeof s->cache[0].fn) {
    *rc = orch__err(err, errlen, ORCH_EINVAL, "hook name too long: %s.%s",
                    module, fn);
    return NULL;
  }
  const pmod *m = snap_find(s->snap, module);
  if (!m) {
    *rc = orch__err(err, errlen, ORCH_ENOTFOUND,
                    "no script module '%s' under %s", module, s->p->dir);
    return NULL;
  }
  rctx c = {module, fn};
  lua_State *L = s->L;
  lua_pushcfunction(L, do_resolve);
  lua_pushlightuserdata(L, &c);
  *rc = pcall_budget(L, 1, 1, m->path, NULL, err, errlen);
  if (*rc) {
    if (err && strstr(err, "has no function")) *rc = ORCH_ENOTFOUND;
    return NULL;
  }
  if (s->ncache == FN_CACHE_MAX) { /* full: the newest entry makes room */
    s->ncache--;
    luaL_unref(L, LUA_REGISTRYINDEX, s->cache[s->ncache].ref);
  }
  centry *e = &s->cache[s->ncache];
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (ref == LUA_REFNIL || ref == LUA_NOREF) {
    *rc = orch__err(err, errlen, ORCH_ENOMEM, "cannot reference %s.%s",
                    module, fn);
    return NULL;
  }
  snprintf(e->module, sizeof e->module, "%s", module);
  snprintf(e->fn, sizeof e->fn, "%s", fn);
  snprintf(e->what, sizeof e->what, "%s.%s()", m->short_name, fn);
  e->ref = ref;
  e->m = m;
  s->ncache++;
  return e;
}

typedef struct cctx {
  int ref;
  const json_t *arg;
  const char *const *keys, *const *vals;
  size_t n;
  int fields; /* 1: build the table from keys/vals */
  int to_json;
  int max_depth;
  int nres; /* results kept (0 means 1) */
  json_t *out;
} cctx;

/* Calls the function with its argument and leaves one result. */
static int do_call(lua_State *L) {
  cctx *c = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  int nargs = 0;
  if (c->fields) {
    lua_createtable(L, 0, (int)c->n);
    for (size_t i = 0; i < c->n; i++) {
      if (!c->vals[i]) continue;
      lua_pushstring(L, c->vals[i]);
      lua_setfield(L, -2, c->keys[i]);
    }
    nargs = 1;
  } else if (c->arg) {
    orch__lua_push_json(L, c->arg);
    nargs = 1;
  }
  lua_call(L, nargs, c->nres ? c->nres : 1);
  if (c->to_json) {
    char e[512];
    int first = -(c->nres ? c->nres : 1); /* the first result */
    if (lua_isnil(L, first)) {
      c->out = json_null();
    } else {
      c->out = orch__lua_to_json(L, first, c->max_depth, e, sizeof e);
      if (!c->out) return luaL_error(L, "its result is not JSON: %s", e);
    }
  }
  return c->nres ? c->nres : 1;
}

/* Runs module.fn under the limits; on success the result is on the stack
 * (the caller pops it; two values when c->nres is 2). */
static int hook_call(orch__lstate *s, const char *module, const char *fn,
                     cctx *c, centry **ep, char *err, size_t errlen) {
  if (!s)
    return orch__err(err, errlen, ORCH_ENOTFOUND, "no scripts loaded");
  int rc = ORCH_OK;
  centry *e = resolve(s, module, fn, &rc, err, errlen);
  if (!e) return rc;
  *ep = e;
  c->ref = e->ref;
  int top = lua_gettop(s->L), nres = c->nres ? c->nres : 1;
  lua_pushcfunction(s->L, do_call);
  lua_pushlightuserdata(s->L, c);
  rc = pcall_budget(s->L, 1, nres, e->m->path, e->what, err, errlen);
  /* stack: [top] on failure, [top + nres] results on success */
  assert(lua_gettop(s->L) == top + (rc ? 0 : nres));
  (void)top;
  return rc;
}

int orch__policy_call(orch__lstate *s, const char *module, const char *fn,
                      json_t *arg, json_t **out, char *err, size_t errlen) {
  *out = NULL;
  centry *e;
  cctx c = {.arg = arg, .to_json = 1,
            .max_depth = s ? s->p->json_depth : 64};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) {
    json_decref(c.out);
    return rc;
  }
  lua_pop(s->L, 1);
  *out = c.out;
  return ORCH_OK;
}

int orch__policy_call_result(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg, json_t **out,
                             char *err, size_t errlen) {
  *out = NULL;
  centry *e;
  cctx c = {.arg = arg, .to_json = 1, .nres = 2,
            .max_depth = s ? s->p->json_depth : 64};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) {
    json_decref(c.out);
    return rc;
  }
  if (json_is_null(c.out) && lua_type(s->L, -1) == LUA_TSTRING) {
    /* nil, "message": an expected failure, reported in the hook's words */
    rc = orch__err(err, errlen, ORCH_EPLAN, "%s", lua_tostring(s->L, -1));
    json_decref(c.out);
    c.out = NULL;
  }
  lua_pop(s->L, 2);
  *out = c.out;
  return rc;
}

static const char *num_problem(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    return lua_isnil(L, idx) ? "nil" : luaL_typename(L, idx);
  double d = lua_tonumber(L, idx);
  if (isnan(d)) return "NaN";
  if (isinf(d)) return d > 0 ? "inf" : "-inf";
  return NULL;
}

static const char *article(const char *t) {
  return !strcmp(t, "nil") || !strcmp(t, "NaN") || !strcmp(t, "inf") ||
                 !strcmp(t, "-inf")
             ? ""
             : (t[0] == 'a' || t[0] == 'u' ? "an " : "a ");
}

int orch__policy_call_number(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg, double *out,
                             char *err, size_t errlen) {
  *out = 0;
  centry *e;
  cctx c = {.arg = arg};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) return rc;
  const char *bad = num_problem(s->L, -1);
  if (bad) rc = orch__err(err, errlen, ORCH_ESCRIPT,
                          "%s: %s returned %s%s, expected a finite number",
                          e->m->path, e->what, article(bad), bad);
  else *out = lua_tonumber(s->L, -1);
  lua_pop(s->L, 1);
  return rc;
}

int orch__policy_call_limit(orch__lstate *s, const char *module,
                            const char *fn, json_t *arg, double *out,
                            char *err, size_t errlen) {
  *out = 0;
  centry *e;
  cctx c = {.arg = arg, .nres = 2};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) return rc;
  lua_State *L = s->L;
  if (lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING) {
    rc = orch__err(err, errlen, ORCH_ESCRIPT, "%s: %s: %s", e->m->path,
                   e->what, lua_tostring(L, -1));
  } else if (lua_type(L, -2) != LUA_TNUMBER || isnan(lua_tonumber(L, -2)) ||
             lua_tonumber(L, -2) < 0) {
    const char *t = lua_type(L, -2) == LUA_TNUMBER
                        ? (isnan(lua_tonumber(L, -2)) ? "NaN"
                                                      : "a negative number")
                        : (lua_isnil(L, -2) ? "nil" : luaL_typename(L, -2));
    rc = orch__err(err, errlen, ORCH_ESCRIPT,
                   "%s: %s returned %s%s, expected a number >= 0 or "
                   "math.huge", e->m->path, e->what,
                   lua_type(L, -2) == LUA_TNUMBER ? "" : article(t), t);
  } else {
    *out = lua_tonumber(L, -2);
  }
  lua_pop(L, 2);
  return rc;
}

/* The result at the top as JSON when it is a finite number or a table of
 * finite numbers (an array, or string/integer keys). No Lua allocation. */
static int numbers_to_json(lua_State *L, const centry *e, json_t **out,
                           char *err, size_t errlen) {
  const char *bad;
  if (lua_type(L, -1) != LUA_TTABLE) {
    if ((bad = num_problem(L, -1)))
      return orch__err(err, errlen, ORCH_ESCRIPT,
                       "%s: %s returned %s%s, expected a finite number or a "
                       "table of them", e->m->path, e->what, article(bad),
                       bad);
    *out = json_real(lua_tonumber(L, -1));
    return *out ? ORCH_OK : ORCH_ENOMEM;
  }
  /* an array only when every key is an integer 1..n (as seq_len in
   * json.c); positive integer keys with a gap are a missing entry, an
   * error: a failed reward is recorded as an error, never as a number */
  size_t count = 0, nint = 0;
  lua_Integer maxk = 0;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    count++;
    if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
      nint++;
      if (lua_tointeger(L, -2) > maxk) maxk = lua_tointeger(L, -2);
    }
    lua_pop(L, 1);
  }
  if ((size_t)maxk != nint) {
    lua_Integer miss = 1;
    while (lua_rawgeti(L, -1, miss) != LUA_TNIL) {
      lua_pop(L, 1);
      miss++;
    }
    lua_pop(L, 1);
    return orch__err(err, errlen, ORCH_ESCRIPT,
                     "%s: %s returned nil for '%lld' (a hole in its list of "
                     "%lld), expected a finite number", e->m->path, e->what,
                     (long long)miss, (long long)maxk);
  }
  size_t n = nint;
  bool array = n > 0 && count == n;
  json_t *j = array ? json_array() : json_object();
  if (!j) return ORCH_ENOMEM;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    char key[64];
    const char *k;
    if (lua_type(L, -2) == LUA_TSTRING) {
      k = lua_tostring(L, -2);
    } else if (lua_isinteger(L, -2)) {
      snprintf(key, sizeof key, "%lld", (long long)lua_tointeger(L, -2));
      k = key;
    } else {
      lua_pop(L, 2);
      json_decref(j);
      return orch__err(err, errlen, ORCH_ESCRIPT,
                       "%s: %s returned a table with a %s key, expected "
                       "names or indices", e->m->path, e->what,
                       luaL_typename(L, -2));
    }
    if ((bad = num_problem(L, -1))) {
      int rc = orch__err(err, errlen, ORCH_ESCRIPT,
                         "%s: %s returned %s%s for '%s', expected a finite "
                         "number", e->m->path, e->what, article(bad), bad, k);
      lua_pop(L, 2);
      json_decref(j);
      return rc;
    }
    lua_pop(L, 1);
  }
  if (array) {
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, (lua_Integer)i);
      json_array_append_new(j, json_real(lua_tonumber(L, -1)));
      lua_pop(L, 1);
    }
  } else {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      char key[64];
      const char *k;
      if (lua_type(L, -2) == LUA_TSTRING) {
        k = lua_tostring(L, -2);
      } else {
        snprintf(key, sizeof key, "%lld", (long long)lua_tointeger(L, -2));
        k = key;
      }
      json_object_set_new(j, k, json_real(lua_tonumber(L, -1)));
      lua_pop(L, 1);
    }
  }
  *out = j;
  return ORCH_OK;
}

int orch__policy_call_numbers(orch__lstate *s, const char *module,
                              const char *fn, json_t *arg, json_t **out,
                              char *err, size_t errlen) {
  *out = NULL;
  centry *e;
  cctx c = {.arg = arg};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) return rc;
  rc = numbers_to_json(s->L, e, out, err, errlen);
  lua_pop(s->L, 1);
  return rc;
}

static int take_string(lua_State *L, const centry *e, char *out,
                       size_t outlen, char *err, size_t errlen) {
  int rc = ORCH_OK;
  if (lua_type(L, -1) != LUA_TSTRING) {
    const char *t = lua_isnil(L, -1) ? "nil" : luaL_typename(L, -1);
    rc = orch__err(err, errlen, ORCH_ESCRIPT,
                   "%s: %s returned %s%s, expected a string", e->m->path,
                   e->what, article(t), t);
  } else {
    size_t n;
    const char *v = lua_tolstring(L, -1, &n);
    if (n >= outlen)
      rc = orch__err(err, errlen, ORCH_ELIMIT,
                     "%s: %s returned %zu bytes, more than %zu", e->m->path,
                     e->what, n, outlen ? outlen - 1 : 0);
    else memcpy(out, v, n + 1);
  }
  lua_pop(L, 1);
  return rc;
}

int orch__policy_call_string(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg, char *out,
                             size_t outlen, char *err, size_t errlen) {
  if (outlen) out[0] = '\0';
  centry *e;
  cctx c = {.arg = arg};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) return rc;
  return take_string(s->L, e, out, outlen, err, errlen);
}

int orch__policy_call_fields(orch__lstate *s, const char *module,
                             const char *fn, const char *const *keys,
                             const char *const *vals, size_t n, char *out,
                             size_t outlen, char *err, size_t errlen) {
  if (outlen) out[0] = '\0';
  centry *e;
  cctx c = {.keys = keys, .vals = vals, .n = n, .fields = 1};
  int rc = hook_call(s, module, fn, &c, &e, err, errlen);
  if (rc) return rc;
  return take_string(s->L, e, out, outlen, err, errlen);
}

/* ---- the state API the core uses for lua steps and Lua plan files ------- */

lua_State *orch__lua_new_sandbox(const orch__config *cfg, char *err,
                                 size_t errlen) {
  return state_new(cfg ? cfg->lua_budget : 0, cfg ? cfg->lua_mem_max : 0,
                   NULL, err, errlen);
}

size_t orch__lua_mem_left(lua_State *L, bool *capped) {
  *capped = is_sandbox(L);
  if (!*capped) return SIZE_MAX;
  sbx *x = SBX(L);
  return x->used < x->max ? x->max - x->used : 0;
}

void orch__lua_close(lua_State *L) {
  if (L && !is_sandbox(L)) lua_close(L);
  else state_close(L);
}

int orch__lua_pcall(lua_State *L, int nargs, int nres, char *err,
                    size_t errlen) {
  if (is_sandbox(L)) return pcall_budget(L, nargs, nres, NULL, NULL, err,
                                         errlen);
  int base = lua_gettop(L) - nargs; /* a state not made here: no limits */
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int st = lua_pcall(L, nargs, nres, base);
  int rc = ORCH_OK;
  if (st != LUA_OK) {
    rc = orch__err(err, errlen, ORCH_ESCRIPT, "%s",
                   lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
  }
  lua_remove(L, base);
  return rc;
}

typedef struct lctx {
  const char *buf, *name;
  size_t len;
} lctx;

static int do_load(lua_State *L) {
  lctx *c = lua_touserdata(L, 1);
  load_chunk(L, c->buf, c->len, c->name);
  return 1;
}

int orch__lua_load(lua_State *L, const char *buf, size_t len,
                   const char *name, char *err, size_t errlen) {
  char chunk[LUA_IDSIZE + 8];
  snprintf(chunk, sizeof chunk, "@%s", name ? name : "?");
  if (!is_sandbox(L)) {
    if (luaL_loadbufferx(L, buf, len, chunk, "t") == LUA_OK) return ORCH_OK;
    orch__err(err, errlen, ORCH_ESCRIPT, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return ORCH_ESCRIPT;
  }
  lctx c = {buf, chunk, len};
  lua_pushcfunction(L, do_load);
  lua_pushlightuserdata(L, &c);
  int rc = pcall_budget(L, 1, 1, name, NULL, err, errlen);
  return rc;
}

/* ---- orchestrate check, status ----------------------------------------- */

typedef struct creport {
  orch_report_fn fn;
  void *ud;
} creport;

int orch_scripts_check(orch_runtime *rt, const char *dir,
                       orch_report_fn report, void *ud) {
  const orch__config *cfg = rt ? &rt->cfg : NULL;
  if (!dir) dir = cfg && cfg->scripts_dir ? cfg->scripts_dir : "scripts";
  psnap *snap = NULL;
  int problems = 0;
  int rc = scan_dir(dir, &snap, report, ud, &problems, NULL);
  if (rc == ORCH_ENOTFOUND) {
    if (report) report(ud, dir, 0, "cannot open the scripts directory");
    return ORCH_ENOTFOUND;
  }
  if (rc) return rc;
  if (snap->n == 0 && problems == 0) {
    /* a directory of something else (a project's own scripts/ of shell
     * files): "all scripts compile" would be true of nothing */
    snap_unref(snap);
    if (report)
      report(ud, dir, 0,
             "no script modules (*.lua, at the top or one directory down, "
             "as routing/, rewards/, policies/)");
    return ORCH_ENOTFOUND;
  }
  /* each module in a fresh state; the errors are reported after, those of
   * modules that fail on their own first, then those that fail only
   * because a module they require does (one line each, naming it) */
  char **errs = calloc(snap->n ? snap->n : 1, sizeof *errs);
  if (!errs) {
    snap_unref(snap);
    return ORCH_ENOMEM;
  }
  for (size_t i = 0; i < snap->n; i++) {
    char err[1024];
    const pmod *m = &snap->mods[i];
    lua_State *L = state_new(cfg ? cfg->lua_budget : 0,
                             cfg ? cfg->lua_mem_max : 0, snap, err,
                             sizeof err);
    rc = L ? check_module(L, m, err, sizeof err) : ORCH_ENOMEM;
    state_close(L);
    if (rc) {
      problems++;
      errs[i] = orch__strdup(err);
    }
  }
  for (int pass = 0; pass < 2 && report; pass++) {
    for (size_t i = 0; i < snap->n; i++) {
      if (!errs[i]) continue;
      const pmod *m = &snap->mods[i], *dep = NULL;
      char file[1024];
      if (where_file(errs[i], NULL, file, sizeof file))
        for (size_t j = 0; j < snap->n && !dep; j++)
          if (j != i && errs[j] && names_module(file, &snap->mods[j]))
            dep = &snap->mods[j];
      if (pass == 0 && !dep) report_error(report, ud, m, m->path, errs[i]);
      if (pass == 1 && dep) {
        char msg[512];
        snprintf(msg, sizeof msg, "fails only because %s does (%s, above)",
                 dep->name, dep->path);
        report(ud, m->path, 0, msg);
      }
    }
  }
  for (size_t i = 0; i < snap->n; i++) free(errs[i]);
  free(errs);
  snap_unref(snap);
  return problems;
}

unsigned orch_runtime_scripts(orch_runtime *rt, char *buf, size_t buflen) {
  if (buflen) buf[0] = '\0';
  if (!rt || !rt->policy) return 0;
  return orch__policy_last_error(rt->policy, buf, buflen);
}

/* ---- hot reload: file watches on the loop, checks on a thread ----------- */

/* The watches follow the path, not the directory first found there: each
 * watched directory (the root and its subdirectories) keeps the identity,
 * device and inode after following symlinks, it had when its watch started.
 * A create, move or delete event, and a timer every FOLLOW_MS (a symlink
 * swapped in the root's parent reaches no watch), compare each path's
 * identity now with the watched one: a replaced root drops every watch and
 * the new tree is watched and rescanned; a replaced subdirectory is watched
 * afresh; one gone is dropped. All of this runs on the loop thread. */

typedef struct wdir {
  uv_fs_event_t *h;
  char *path;
  dev_t dev;
  ino_t ino;
  bool on; /* h is started, on the directory dev/ino */
} wdir;

struct pwatch {
  orch__policy *p;
  uv_loop_t *loop;
  uv_timer_t *timer; /* the identity check */
  wdir *d;           /* d[0] is the root, when nd > 0 */
  size_t nd, capd;
  int quick;         /* fast re-checks left while the root is missing */
  pthread_t thr;
  pthread_mutex_t mu; /* guards dirty and stop; never held with p's locks */
  pthread_cond_t cv;
  bool dirty, stop, running;
};

static void handle_free_cb(uv_handle_t *h) { free(h); }

static void fs_cb(uv_fs_event_t *h, const char *filename, int events,
                  int status);

/* Any thread: asks the checker thread for a rescan. */
static void mark_dirty(pwatch *w) {
  pthread_mutex_lock(&w->mu);
  w->dirty = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static bool same_dir(const wdir *x, const struct stat *st) {
  return x->on && x->dev == st->st_dev && x->ino == st->st_ino;
}

/* Loop thread: closes the watch d[i]; the last one takes its place. */
static void wdir_drop(pwatch *w, size_t i) {
  if (w->d[i].on) uv_fs_event_stop(w->d[i].h);
  uv_close((uv_handle_t *)w->d[i].h, handle_free_cb);
  free(w->d[i].path);
  w->d[i] = w->d[--w->nd];
}

/* Loop thread: (re)starts the watch d[i] on the directory its path names
 * now, whose identity is st. st is taken before the start, so a directory
 * replaced in between differs from it at the next check. */
static void wdir_start(wdir *x, const struct stat *st) {
  if (x->on) uv_fs_event_stop(x->h);
  x->on = uv_fs_event_start(x->h, fs_cb, x->path, 0) == 0;
  x->dev = st->st_dev;
  x->ino = st->st_ino;
}

/* Loop thread: watches dir (identity st) unless it is watched already. */
static void watch_dir(pwatch *w, const char *dir, const struct stat *st) {
  for (size_t i = 0; i < w->nd; i++)
    if (strcmp(w->d[i].path, dir) == 0) {
      if (!same_dir(&w->d[i], st)) wdir_start(&w->d[i], st);
      return;
    }
  if (w->nd == w->capd) {
    size_t nc = w->capd ? w->capd * 2 : 8;
    wdir *nd = realloc(w->d, nc * sizeof *nd);
    if (!nd) return;
    w->d = nd;
    w->capd = nc;
  }
  wdir x = {malloc(sizeof *x.h), orch__strdup(dir), 0, 0, false};
  if (!x.h || !x.path || uv_fs_event_init(w->loop, x.h)) {
    free(x.h);
    free(x.path);
    return;
  }
  x.h->data = w;
  wdir_start(&x, st);
  if (!x.on) {
    uv_close((uv_handle_t *)x.h, handle_free_cb);
    free(x.path);
    return;
  }
  w->d[w->nd++] = x;
}

/* Loop thread: watches the root, then each subdirectory not watched yet. */
static void watch_tree(pwatch *w) {
  const char *root = w->p->dir;
  struct stat st;
  if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) return;
  watch_dir(w, root, &st);
  if (w->nd == 0) return; /* no root, no subdirectory in its place */
  DIR *d = opendir(root);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char *sub = orch__asprintf("%s/%s", root, de->d_name);
    if (sub && stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
      watch_dir(w, sub, &st);
    free(sub);
  }
  closedir(d);
}

/* Loop thread: follows what the watched paths name now (see above); a
 * change asks for a rescan. Returns false while the root is missing. */
static bool follow(pwatch *w) {
  struct stat st;
  bool root = stat(w->p->dir, &st) == 0 && S_ISDIR(st.st_mode);
  bool changed = false;
  if (w->nd && (!root || !same_dir(&w->d[0], &st))) {
    while (w->nd) wdir_drop(w, w->nd - 1);
    changed = true;
  }
  for (size_t i = w->nd; i-- > 1;) { /* downwards: a drop moves the last */
    if (stat(w->d[i].path, &st) != 0 || !S_ISDIR(st.st_mode)) {
      wdir_drop(w, i);
      changed = true;
    } else if (!same_dir(&w->d[i], &st)) {
      wdir_start(&w->d[i], &st);
      changed = true;
    }
  }
  if (root) {
    size_t before = w->nd;
    watch_tree(w);
    if (w->nd != before) changed = true;
  }
  if (changed) mark_dirty(w);
  return root;
}

static void follow_cb(uv_timer_t *t) {
  pwatch *w = t->data;
  /* a root moved away is often moved back or replaced at once (mv, mv):
   * look again soon for a while, then every FOLLOW_MS */
  if (!follow(w) && w->quick > 0) {
    w->quick--;
    uv_timer_start(t, follow_cb, FOLLOW_QUICK_MS, FOLLOW_MS);
  }
}

static void fs_cb(uv_fs_event_t *h, const char *filename, int events,
                  int status) {
  pwatch *w = h->data;
  (void)filename;
  (void)status;
  if (events & UV_RENAME) {
    /* created, moved or deleted, perhaps a watched directory itself: check
     * on the loop's next turn, not here where h may be closed */
    w->quick = FOLLOW_QUICK_N;
    uv_timer_start(w->timer, follow_cb, 0, FOLLOW_MS);
  }
  mark_dirty(w);
}

/* The checker thread: after a change, waits RELOAD_DEBOUNCE_MS for the
 * editor to finish (rename, write, chmod arrive as several events), then
 * rescans. Compiles and selftests run here, never on the loop or workers. */
static void *checker_main(void *arg) {
  pwatch *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->dirty && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
    if (w->stop) break;
    struct timespec dl = after_ms(CLOCK_MONOTONIC, RELOAD_DEBOUNCE_MS);
    while (!w->stop &&
           pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT) {
    }
    if (w->stop) break;
    w->dirty = false;
    pthread_mutex_unlock(&w->mu);
    rescan(w->p, false);
    pthread_mutex_lock(&w->mu);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

int orch__policy_watch(orch__policy *p, uv_loop_t *loop) {
  if (!p || p->watch) return ORCH_OK;
  struct stat st;
  if (stat(p->dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return ORCH_OK; /* nothing to watch: no scripts, fallbacks serve */
  pwatch *w = calloc(1, sizeof *w);
  if (!w) return ORCH_ENOMEM;
  int rc = ORCH_OK;
  w->p = p;
  w->loop = loop;
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  p->watch = w; /* from here on, orch__policy_unwatch undoes it all */
  w->timer = malloc(sizeof *w->timer);
  if (!w->timer || uv_timer_init(loop, w->timer)) {
    free(w->timer);
    w->timer = NULL;
    rc = ORCH_ENOMEM;
    goto done;
  }
  w->timer->data = w;
  watch_tree(w);
  if (w->nd == 0) { rc = ORCH_EIO; goto done; }
  uv_timer_start(w->timer, follow_cb, FOLLOW_MS, FOLLOW_MS);
  if (pthread_create(&w->thr, NULL, checker_main, w)) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  w->running = true;
  /* a change between the initial load and this watch is not missed */
  mark_dirty(w);
done:
  if (rc) orch__policy_unwatch(p);
  return rc;
}

/* Stops the checker thread (waiting for a scan in progress). */
static void unwatch_now(orch__policy *p) {
  pwatch *w = p->watch;
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  bool started = !w->stop;
  w->stop = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  if (started && w->running) pthread_join(w->thr, NULL);
  w->running = false;
}

void orch__policy_unwatch(orch__policy *p) {
  if (!p || !p->watch) return;
  pwatch *w = p->watch;
  unwatch_now(p);
  while (w->nd) wdir_drop(w, w->nd - 1);
  free(w->d);
  if (w->timer) {
    uv_timer_stop(w->timer);
    uv_close((uv_handle_t *)w->timer, handle_free_cb);
  }
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  free(w);
  p->watch = NULL;
}
