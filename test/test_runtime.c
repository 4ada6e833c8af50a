/* test_runtime.c: the runtime handle (runtime.c): starting the subsystems
 * on the first run, and undoing a start that failed. */
#include "orch.h"
#include "test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Threads of this process, from /proc/self/task. */
static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* A store that cannot open fails each run; the loop and the policy engine
 * started before it are stopped again, not stacked up run after run. */
TEST(runtime_failed_start_leaves_no_threads_behind) {
  orch_runtime *rt = NULL;
  char err[512];
  int before = thread_count();
  ASSERT(before > 0);
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "sqlite:/nonexistent-dir/x.db", err,
                             sizeof err), ORCH_OK);
  for (int k = 0; k < 5; k++) {
    orch_graph *g = NULL;
    ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    ASSERT_EQ(orch_graph_add_sleep(g, "a", 1), ORCH_OK);
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTORE);
    ASSERT_CONTAINS(err, "store");
    orch_graph_free(g);
    ASSERT(thread_count() <= before); /* fewer: an earlier test's ended */
  }
  /* A good setting afterwards: the runtime starts and runs. */
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "a", 1), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  orch_graph_free(g);
  orch_runtime_free(rt);
  ASSERT(thread_count() <= before);
}

/* Runs one step given as plan JSON; ORCH_OK when it passed. *out (when not
 * NULL) gets the graph, for the caller to read and free. */
static int run_step(orch_runtime *rt, const char *step_json, orch_graph **out) {
  char err[512];
  orch_graph *g = NULL;
  int rc = orch_graph_new(&g);
  if (!rc) rc = orch_graph_add_json(g, step_json, err, sizeof err);
  if (!rc) rc = orch_run(rt, g, err, sizeof err);
  if (out) *out = g;
  else orch_graph_free(g);
  return rc;
}

/* About 20 million instructions, tens of ms: within a budget of 100000
 * (100 million), far over a budget of 1 (a thousand), which the watchdog
 * arms after a few ms (policy.c). */
#define BUSY_LUA \
  "{\"id\":\"busy\",\"kind\":\"lua\",\"code\":\"local n = 0 for i = 1, " \
  "5000000 do n = n + i end return n\"}"

/* What the runtime copies into its subsystems as it starts (the pool, the
 * policy engine and its states, the store) cannot change afterwards: the
 * setting is refused, naming the key, instead of taken and ignored. */
TEST(runtime_set_refuses_what_is_read_at_start) {
  orch_runtime *rt = NULL;
  char err[512];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "workers", "1", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "lua_budget", "100000", err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(run_step(rt, BUSY_LUA, NULL), ORCH_OK);
  static const struct { const char *key, *value; } late[] = {
      {"lua_budget", "1"},      {"lua_mem_max", "65536"},
      {"scripts_dir", "/tmp"},  {"json_max_depth", "2"},
      {"workers", "3"},         {"db", "sqlite:/tmp/orch-late.db"},
      {"db_default", "sqlite:/tmp/orch-late.db"},
  };
  for (size_t i = 0; i < sizeof late / sizeof late[0]; i++) {
    char want[128];
    snprintf(want, sizeof want,
             "'%s' is read when the runtime starts: set it before the first "
             "run", late[i].key);
    err[0] = '\0';
    ASSERT_EQ(orch_runtime_set(rt, late[i].key, late[i].value, err, sizeof err),
              ORCH_ESTATE);
    ASSERT_STR_EQ(err, want);
  }
  /* as the message says: the budget is still the one the runtime started
   * with, and the store still none */
  ASSERT_EQ(run_step(rt, BUSY_LUA, NULL), ORCH_OK);
  ASSERT(orch_runtime_store_url(rt) == NULL);
  /* an unknown key is still that, not a state error */
  ASSERT_EQ(orch_runtime_set(rt, "lua_budgett", "1", err, sizeof err),
            ORCH_ECONFIG);
  orch_runtime_free(rt);

  /* before the first run the same setting is taken, and it applies */
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "lua_budget", "1", err, sizeof err), ORCH_OK);
  orch_graph *g = NULL;
  ASSERT_EQ(run_step(rt, BUSY_LUA, &g), ORCH_ESTEP);
  ASSERT_CONTAINS(orch_step_error(g, 0), "budget");
  orch_graph_free(g);
  orch_runtime_free(rt);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* What each run, step or parse reads afresh can still change between runs,
 * and the change applies to the next one. */
TEST(runtime_set_between_runs_applies_to_the_next) {
  orch_runtime *rt = NULL;
  char err[512];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "workers", "2", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  ASSERT_EQ(run_step(rt, "{\"id\":\"a\",\"kind\":\"sleep\",\"ms\":1}", NULL),
            ORCH_OK);

  /* shell_timeout_ms: the next shell step is stopped by it */
  ASSERT_EQ(orch_runtime_set(rt, "shell_timeout_ms", "100", err, sizeof err),
            ORCH_OK);
  double t0 = now_ms();
  orch_graph *g = NULL;
  ASSERT_EQ(run_step(rt, "{\"id\":\"s\",\"kind\":\"shell\",\"run\":\"sleep 5\"}",
                     &g), ORCH_ESTEP);
  ASSERT(now_ms() - t0 < 3000);
  ASSERT_CONTAINS(orch_step_error(g, 0), "time");
  orch_graph_free(g);
  ASSERT_EQ(orch_runtime_set(rt, "shell_timeout_ms", "0", err, sizeof err),
            ORCH_OK);

  /* output_max_bytes: the next shell step keeps that much */
  ASSERT_EQ(orch_runtime_set(rt, "output_max_bytes", "4", err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(run_step(rt, "{\"id\":\"o\",\"kind\":\"shell\",\"run\":"
                         "\"printf 0123456789\"}", &g), ORCH_OK);
  ASSERT(strncmp(orch_step_output(g, 0), "0123", 4) == 0);
  ASSERT(strstr(orch_step_output(g, 0), "456789") == NULL);
  orch_graph_free(g);

  /* max_parallel: three 60 ms sleeps one at a time */
  ASSERT_EQ(orch_runtime_set(rt, "max_parallel", "1", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_max_parallel(rt), 1);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "x", 60), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "y", 60), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "z", 60), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  ASSERT(orch_graph_makespan_ms(g) >= 170);
  orch_graph_free(g);

  /* dry_run and dry_run_ms: the next llm step is a sleep of that long */
  ASSERT_EQ(orch_runtime_set(rt, "dry_run", "1", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "dry_run_ms", "150", err, sizeof err), ORCH_OK);
  ASSERT_EQ(run_step(rt, "{\"id\":\"l\",\"kind\":\"llm\",\"prompt\":\"hi\"}",
                     &g), ORCH_OK);
  ASSERT(orch_step_finished_ms(g, 0) - orch_step_started_ms(g, 0) >= 140);
  orch_graph_free(g);

  /* plan_max_bytes: the next plan parsed is held to it */
  ASSERT_EQ(orch_runtime_set(rt, "plan_max_bytes", "8", err, sizeof err), ORCH_OK);
  const char *plan = "{\"steps\":[{\"id\":\"a\",\"kind\":\"sleep\",\"ms\":1}]}";
  ASSERT_EQ(orch_graph_parse(rt, plan, strlen(plan), "p", &g, err, sizeof err),
            ORCH_ELIMIT);
  ASSERT_CONTAINS(err, "plan_max_bytes");
  orch_runtime_free(rt);
}

/* A scripts directory with one module that fails as it loads, its message
 * quoting a byte that is not UTF-8 (Lua's "\xff" escape in the source). */
static char *bad_byte_scripts(void) {
  char tmpl[] = "/tmp/orch-rt-XXXXXX";
  if (!mkdtemp(tmpl)) return NULL;
  char path[256];
  snprintf(path, sizeof path, "%s/rewards", tmpl);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/rewards/bad.lua", tmpl);
  FILE *f = fopen(path, "w");
  if (!f) return NULL;
  fputs("error('a bad byte: \\xff here')\n", f);
  fclose(f);
  return strdup(tmpl);
}

/* The stats keep their scripts section when the last error quotes a byte
 * that is not UTF-8: the byte reads U+FFFD, the rest as it was. */
TEST(runtime_stats_keep_a_section_whose_message_is_not_utf8) {
  char *dir = bad_byte_scripts(), err[512], path[512];
  ASSERT(dir);
  orch_runtime *rt = NULL;
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "scripts_dir", dir, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  ASSERT_EQ(run_step(rt, "{\"id\":\"a\",\"kind\":\"sleep\",\"ms\":1}", NULL),
            ORCH_OK);
  char last[512];
  orch_runtime_scripts(rt, last, sizeof last);
  ASSERT_CONTAINS(last, "a bad byte: \xff here");
  char *stats = orch_runtime_stats(rt);
  ASSERT(stats);
  ASSERT_CONTAINS(stats, "\"scripts\":{");
  ASSERT_CONTAINS(stats, "a bad byte: \xEF\xBF\xBD here");
  orch_free(stats);
  orch_runtime_free(rt);
  snprintf(path, sizeof path, "%s/rewards/bad.lua", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/rewards", dir);
  rmdir(path);
  rmdir(dir);
  free(dir);
}
