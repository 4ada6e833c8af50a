/* policy_bench.c: measures the Lua policy engine (policy.c).
 *
 *  1. a C -> Lua routing call with a 5-field task table, ns per call
 *     (median of runs): the fast path (orch__policy_call_fields, no JSON),
 *     the JSON path (orch__policy_call_string with a json_t argument), each
 *     for an inline keyword classifier, the shipped
 *     scripts/routing/complexity.lua (with orch.keywords, as it runs in the
 *     engine, and on its plain-Lua path) and a trivial hook returning at once
 *     (the engine's own cost), and a bare lua_pcall of an empty function
 *     for scale;
 *  2. reload latency: file written (renamed into place) -> every worker
 *     state on the new generation, median and p99 over 100 reloads, with 2
 *     worker threads syncing at "step boundaries" every 100 us; and the
 *     synchronous check-and-publish part alone (orch__policy_rescan).
 *
 * Build and run (after `make`):
 *   cc -std=c11 -D_GNU_SOURCE -O2 -pthread -Iruntime $(pkg-config --cflags \
 *     lua5.4 libuv jansson) bench/policy_bench.c build/liborch.a \
 *     $(pkg-config --libs lua5.4 libuv libcurl libpq sqlite3 jansson \
 *     libmicrohttpd libcrypto) -lm -o build/policy_bench
 *   ./build/policy_bench [--quick]
 * Prints one "name value unit" line per figure. */
#include "orch_int.h"

#include <dirent.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *COMPLEXITY =
    "-- routing/complexity.lua as in issue 3: keywords -> tier\n"
    "local M = {}\n"
    "M.complex = {'architect', 'security', 'refactor', 'multi-file',\n"
    "             'database schema', 'api design', 'critical'}\n"
    "M.simple = {'format', 'summarize', 'list', 'simple', 'quick', "
    "'lookup',\n"
    "            'convert', 'basic', 'template'}\n"
    "local find, lower = string.find, string.lower\n"
    "function M.classify(task)\n"
    "  local text = lower((task.title or '') .. ' ' .. "
    "(task.instructions or ''))\n"
    "  for i = 1, #M.complex do\n"
    "    if find(text, M.complex[i], 1, true) then return 'strong' end\n"
    "  end\n"
    "  local n = 0\n"
    "  for i = 1, #M.simple do\n"
    "    if find(text, M.simple[i], 1, true) then n = n + 1 end\n"
    "  end\n"
    "  return n >= 2 and 'fast' or 'local'\n"
    "end\n"
    "function M.selftest()\n"
    "  assert(M.classify{title = 'Format this simple document',\n"
    "                    instructions = 'Convert to markdown'} == 'fast')\n"
    "end\n"
    "return M\n";

static double now_ns(void) { return (double)orch__now_ns(); }

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
  qsort(v, n, sizeof *v, cmp_d);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

static void put(const char *dir, const char *rel, const char *text) {
  char path[512], tmp[512];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  snprintf(tmp, sizeof tmp, "%s/.bench.tmp", dir);
  FILE *f = fopen(tmp, "w");
  if (!f) return;
  fputs(text, f);
  fclose(f);
  rename(tmp, path);
}

static void rm_rf(const char *path) {
  DIR *d = opendir(path);
  if (!d) {
    unlink(path);
    return;
  }
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    char p[512];
    snprintf(p, sizeof p, "%s/%s", path, de->d_name);
    rm_rf(p);
  }
  closedir(d);
  rmdir(path);
}

/* ---- 1. call cost ------------------------------------------------------- */

static const char *KEYS[5] = {"title", "instructions", "name", "phase",
                              "agent"};
static const char *VALS[5] = {
    "Format this simple document",
    "Convert the meeting notes to markdown and keep the headings",
    "format_notes", "implementation", "documentation-specialist"};

/* Median ns per call of MODULE.classify over RUNS runs of N calls: the
 * fast path (fields from C strings) when ARG is NULL, else the JSON path
 * with ARG. Exits when a call fails. */
static double time_calls(orch__lstate *s, const char *module, json_t *arg,
                         int runs, int n) {
  char err[256], tier[32];
  double *v = calloc((size_t)runs, sizeof *v), med;
  for (int r = 0; r < runs; r++) {
    double t0 = now_ns();
    for (int i = 0; i < n; i++) {
      int rc = arg ? orch__policy_call_string(s, module, "classify", arg, tier,
                                              sizeof tier, err, sizeof err)
                   : orch__policy_call_fields(s, module, "classify", KEYS,
                                              VALS, 5, tier, sizeof tier, err,
                                              sizeof err);
      if (rc != ORCH_OK) {
        fprintf(stderr, "%s.classify failed: %s\n", module, err);
        exit(1);
      }
    }
    v[r] = (now_ns() - t0) / n;
  }
  med = pct(v, (size_t)runs, 0.5);
  free(v);
  return med;
}

/* The JSON path for the trivial hook and the shipped script (the fast
 * path of both is timed in bench_overhead and bench_calls). */
static void bench_json_paths(orch__lstate *s, int runs, int n) {
  char err[256], tier[32];
  json_t *arg = json_object();
  for (int i = 0; i < 5; i++)
    json_object_set_new(arg, KEYS[i], json_string(VALS[i]));
  printf("route_call_trivial_json_ns_median %.0f ns (trivial hook, JSON "
         "path)\n", time_calls(s, "routing.trivial", arg, runs, n));
  if (orch__policy_call_fields(s, "routing.shipped", "classify", KEYS, VALS,
                               5, tier, sizeof tier, err, sizeof err) ==
      ORCH_OK)
    printf("route_call_shipped_json_ns_median %.0f ns "
           "(scripts/routing/complexity.lua, JSON path)\n",
           time_calls(s, "routing.shipped", arg, runs, n));
  json_decref(arg);
}

/* The engine's own cost: a hook that returns at once. */
static void bench_overhead(orch__lstate *s, int runs, int n) {
  char err[256], tier[32];
  double *v = calloc((size_t)runs, sizeof *v);
  for (int r = 0; r < runs; r++) {
    double t0 = now_ns();
    for (int i = 0; i < n; i++)
      orch__policy_call_fields(s, "routing.trivial", "classify", KEYS, VALS,
                               5, tier, sizeof tier, err, sizeof err);
    v[r] = (now_ns() - t0) / n;
  }
  if (strcmp(tier, "fast")) {
    fprintf(stderr, "trivial call failed: %s\n", err);
    exit(1);
  }
  printf("route_call_trivial_hook_ns_median %.0f ns (engine overhead: "
         "5-field table, budget hook, string result)\n",
         pct(v, (size_t)runs, 0.5));
  free(v);
}

static void bench_calls(orch__lstate *s, int runs, int n) {
  char err[256], tier[32];
  double *fast = calloc((size_t)runs, sizeof *fast);
  double *js = calloc((size_t)runs, sizeof *js);
  double *bare = calloc((size_t)runs, sizeof *bare);
  json_t *arg = json_object();
  for (int i = 0; i < 5; i++)
    json_object_set_new(arg, KEYS[i], json_string(VALS[i]));
  lua_State *L = orch__lstate_L(s);
  luaL_loadstring(L, "return function() end");
  lua_call(L, 0, 1);
  int empty = luaL_ref(L, LUA_REGISTRYINDEX);
  for (int r = 0; r < runs; r++) {
    double t0 = now_ns();
    for (int i = 0; i < n; i++) {
      if (orch__policy_call_fields(s, "routing.complexity", "classify", KEYS,
                                   VALS, 5, tier, sizeof tier, err,
                                   sizeof err) ||
          strcmp(tier, "fast") != 0) {
        fprintf(stderr, "call failed: %s\n", err);
        exit(1);
      }
    }
    fast[r] = (now_ns() - t0) / n;
    t0 = now_ns();
    for (int i = 0; i < n; i++) {
      if (orch__policy_call_string(s, "routing.complexity", "classify", arg,
                                   tier, sizeof tier, err, sizeof err)) {
        fprintf(stderr, "call failed: %s\n", err);
        exit(1);
      }
    }
    js[r] = (now_ns() - t0) / n;
    t0 = now_ns();
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, empty);
      lua_pcall(L, 0, 0, 0);
    }
    bare[r] = (now_ns() - t0) / n;
  }
  printf("route_call_fast_path_ns_median %.0f ns (complexity.classify: "
         "lower + 16 keyword finds)\n", pct(fast, runs, 0.5));
  printf("route_call_json_path_ns_median %.0f ns\n", pct(js, runs, 0.5));
  /* the shipped scripts/routing/complexity.lua, when run from the tree,
   * and the same script on its plain-Lua path */
  if (orch__policy_call_fields(s, "routing.shipped", "classify", KEYS, VALS,
                               5, tier, sizeof tier, err, sizeof err) ==
      ORCH_OK) {
    printf("route_call_shipped_complexity_ns_median %.0f ns "
           "(scripts/routing/complexity.lua, fast path)\n",
           time_calls(s, "routing.shipped", NULL, runs, n));
    printf("route_call_shipped_plain_lua_ns_median %.0f ns "
           "(scripts/routing/complexity.lua on its plain-Lua path)\n",
           time_calls(s, "routing.shipped_lua", NULL, runs, n));
  }
  printf("bare_lua_pcall_ns_median %.0f ns\n", pct(bare, runs, 0.5));
  luaL_unref(L, LUA_REGISTRYINDEX, empty);
  json_decref(arg);
  free(fast);
  free(js);
  free(bare);
}

/* ---- 2. reload latency -------------------------------------------------- */

typedef struct worker {
  orch__policy *p;
  atomic_bool *stop;
  atomic_uint seen_gen;     /* the generation this worker serves */
  _Atomic double seen_at;   /* when it switched to it (ns) */
  pthread_t thr;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  char err[256], tier[32];
  orch__lstate *s = orch__lstate_new(w->p, err, sizeof err);
  if (!s) return NULL;
  while (!atomic_load(w->stop)) {
    if (orch__lstate_sync(s)) { /* the step boundary */
      atomic_store(&w->seen_at, now_ns());
      atomic_store(&w->seen_gen, orch__lstate_generation(s));
    }
    orch__policy_call_fields(s, "routing.complexity", "classify", KEYS, VALS,
                             5, tier, sizeof tier, err, sizeof err);
    usleep(100);
  }
  orch__lstate_free(s);
  return NULL;
}

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

static void bench_reload(orch__policy *p, const char *dir, int reloads) {
  looper l = {.p = p};
  uv_loop_init(&l.loop);
  uv_async_init(&l.loop, &l.stop, stop_cb);
  l.stop.data = &l;
  orch__policy_watch(p, &l.loop);
  pthread_create(&l.thr, NULL, loop_main, &l);
  atomic_bool stop;
  atomic_init(&stop, false);
  worker w[2];
  for (int i = 0; i < 2; i++) {
    w[i].p = p;
    w[i].stop = &stop;
    atomic_init(&w[i].seen_gen, 0);
    atomic_init(&w[i].seen_at, 0.0);
    pthread_create(&w[i].thr, NULL, worker_main, &w[i]);
  }
  usleep(100 * 1000);
  double *lat = calloc((size_t)reloads, sizeof *lat);
  char *src = malloc(strlen(COMPLEXITY) + 64);
  int done = 0;
  for (int r = 0; r < reloads; r++) {
    unsigned want = orch__policy_generation(p) + 1;
    /* a real edit: one weight-like number changes */
    sprintf(src, "%s-- edit %d\n", COMPLEXITY, r);
    double t0 = now_ns();
    put(dir, "routing/complexity.lua", src);
    double t1 = 0;
    while (now_ns() - t0 < 2e9) {
      if (atomic_load(&w[0].seen_gen) >= want &&
          atomic_load(&w[1].seen_gen) >= want) {
        double a = atomic_load(&w[0].seen_at), b = atomic_load(&w[1].seen_at);
        t1 = a > b ? a : b;
        break;
      }
      usleep(50);
    }
    if (t1 == 0) {
      fprintf(stderr, "reload %d not seen within 2 s\n", r);
      continue;
    }
    lat[done++] = (t1 - t0) / 1e6;
    usleep(5 * 1000);
  }
  atomic_store(&stop, true);
  for (int i = 0; i < 2; i++) pthread_join(w[i].thr, NULL);
  uv_async_send(&l.stop);
  pthread_join(l.thr, NULL);
  uv_loop_close(&l.loop);
  if (done) {
    double med = pct(lat, (size_t)done, 0.5), p99 = pct(lat, (size_t)done,
                                                        0.99);
    printf("reload_latency_ms_median %.1f ms (%d reloads, 2 workers, "
           "20 ms debounce included)\n", med, done);
    printf("reload_latency_ms_p99 %.1f ms\n", p99);
  }
  /* the check + publish part alone, without the debounce */
  for (int r = 0; r < reloads; r++) {
    sprintf(src, "%s-- sync edit %d\n", COMPLEXITY, r);
    put(dir, "routing/complexity.lua", src);
    double t0 = now_ns();
    orch__policy_rescan(p);
    lat[r] = (now_ns() - t0) / 1e6;
  }
  printf("reload_check_publish_ms_median %.2f ms\n",
         pct(lat, (size_t)reloads, 0.5));
  free(src);
  free(lat);
}

int main(int argc, char **argv) {
  bool quick = argc > 1 && !strcmp(argv[1], "--quick");
  char tmpl[] = "/tmp/orch-policy-bench-XXXXXX", err[512];
  char *dir = mkdtemp(tmpl);
  if (!dir) return 1;
  char sub[600];
  snprintf(sub, sizeof sub, "%s/routing", dir);
  mkdir(sub, 0755);
  put(dir, "routing/complexity.lua", COMPLEXITY);
  put(dir, "routing/trivial.lua",
      "return {classify = function(task) return 'fast' end}\n");
  char *shipped = NULL;
  size_t shipped_len = 0;
  if (orch__read_file("scripts/routing/complexity.lua", 1 << 20, &shipped,
                      &shipped_len, err, sizeof err) == ORCH_OK) {
    put(dir, "routing/shipped.lua", shipped);
    /* the same script on its plain-Lua path (as without orch.keywords) */
    const char *native = "local native = type(orch) == \"table\" and "
                         "orch.keywords or nil";
    char *at = strstr(shipped, native);
    if (at) {
      size_t nl = strlen(native), head = (size_t)(at - shipped);
      char *lua = malloc(shipped_len + 32);
      if (lua) {
        snprintf(lua, shipped_len + 32, "%.*slocal native = nil%s",
                 (int)head, shipped, at + nl);
        put(dir, "routing/shipped_lua.lua", lua);
        free(lua);
      }
    }
    free(shipped);
  }
  orch__config c;
  orch__config_defaults(&c);
  free(c.scripts_dir);
  c.scripts_dir = orch__strdup(dir);
  orch__policy *p = NULL;
  if (orch__policy_new(&p, &c, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  if (!s) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  bench_overhead(s, quick ? 3 : 11, quick ? 20000 : 200000);
  bench_calls(s, quick ? 3 : 11, quick ? 20000 : 200000);
  bench_json_paths(s, quick ? 3 : 11, quick ? 20000 : 200000);
  orch__lstate_free(s);
  bench_reload(p, dir, quick ? 20 : 100);
  orch__policy_free(p);
  orch__config_deinit(&c);
  rm_rf(dir);
  return 0;
}
