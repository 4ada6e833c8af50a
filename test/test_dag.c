/* test_dag.c: the graph at scale and its validation, through the C API. */
#include "test.h"

#include "orch.h"

#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int noop(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  (void)ud;
  return ORCH_OK;
}

static int count_fn(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  __atomic_fetch_add((long *)ud, 1, __ATOMIC_RELAXED);
  return ORCH_OK;
}

static size_t heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

TEST(dag_million_steps_build_and_validate_fast_and_small) {
  const char *skip = getenv("ORCH_SKIP_SLOW");
  size_t n = skip && *skip == '1' ? 100000 : 1000000;
  size_t before = heap_in_use();
  double t0 = now_s();
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  char id[32];
  for (size_t i = 0; i < n; i++) {
    snprintf(id, sizeof id, "step-%zu", i);
    ASSERT_EQ(orch_graph_add_fn(g, id, noop, NULL), ORCH_OK);
    if (i) {
      char dep[32];
      snprintf(dep, sizeof dep, "step-%zu", i - 1);
      ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
    }
  }
  char err[256];
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  double dt = now_s() - t0;
  size_t bytes = heap_in_use() - before;
  /* n-1 edges of 8 bytes (CSR both ways) are "plus its edges". */
  double per_step = (double)(bytes - (n - 1) * 8) / (double)n;
  size_t levels = orch_graph_levels(g);
  double cost;
  size_t plen = orch_graph_critical_path(g, NULL, 0, &cost);
  orch_graph_free(g);
  ASSERT_EQ(levels, n);
  ASSERT_EQ(plen, n);
  if (skip) return; /* under the sanitizers: neither time nor heap is real */
  printf("  %zu-step chain: built and validated in %.3f s, %.0f bytes/step\n", n, dt, per_step);
  ASSERT(dt < 1.0);
  ASSERT(per_step <= 200);
}

TEST(dag_cycle_is_named) {
  orch_graph *g = NULL;
  orch_graph_new(&g);
  orch_graph_add_fn(g, "a", noop, NULL);
  orch_graph_add_fn(g, "b", noop, NULL);
  orch_graph_add_fn(g, "c", noop, NULL);
  orch_graph_depend(g, "b", "a");
  orch_graph_depend(g, "c", "b");
  orch_graph_depend(g, "a", "c");
  char err[256];
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_ECYCLE);
  ASSERT_CONTAINS(err, "dependency cycle: ");
  ASSERT(strstr(err, "a -> c -> b -> a") || strstr(err, "b -> a -> c -> b") ||
         strstr(err, "c -> b -> a -> c"));
  orch_graph_free(g);
}

TEST(dag_duplicate_and_unknown_and_empty) {
  orch_graph *g = NULL;
  char err[256];
  orch_graph_new(&g);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "empty graph");
  ASSERT_EQ(orch_graph_add_fn(g, "a", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "a", noop, NULL), ORCH_EPLAN);
  orch_graph_free(g);
  orch_graph_new(&g);
  orch_graph_add_fn(g, "a", noop, NULL);
  ASSERT_EQ(orch_graph_depend(g, "a", "later"), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "step 'a' depends on unknown step 'later'");
  orch_graph_free(g);
}

TEST(dag_bad_ids_refused) {
  orch_graph *g = NULL;
  orch_graph_new(&g);
  char big[300];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  ASSERT_EQ(orch_graph_add_fn(g, big, noop, NULL), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_fn(g, "bad\xff", noop, NULL), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_fn(g, "", noop, NULL), ORCH_EPLAN);
  char err[256];
  /* Refused, so not added: the graph is still empty. */
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "empty graph");
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"bad\\u0001\",\"ms\":1}", err,
                                sizeof err),
            ORCH_EPLAN);
  ASSERT_CONTAINS(err, "control byte");
  orch_graph_free(g);
}

/* A refused add returns its error and leaves none in the graph: the host
 * that goes on with other steps gets a graph that validates and runs. */
TEST(dag_refused_add_leaves_no_error_behind) {
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  char err[256];
  long count = 0;
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "a", count_fn, &count), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "a", count_fn, &count), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_sleep(g, "a", 1), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_shell(g, "a", "true"), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_fn(g, "bad\xff", count_fn, &count), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"a\",\"ms\":1}", err, sizeof err),
            ORCH_EPLAN);
  ASSERT_CONTAINS(err, "duplicate step id 'a'");
  ASSERT_EQ(orch_graph_add_fn(g, "b", count_fn, &count), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "c", "b"), ORCH_OK); /* c: added below */
  ASSERT_EQ(orch_graph_add_fn(g, "c", count_fn, &count), ORCH_OK);
  ASSERT_EQ(orch_graph_size(g), 3);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_levels(g), 3);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(count, 3);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(run_many_fn_steps_each_once) {
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  orch_graph_new(&g);
  long count = 0;
  char id[32];
  for (int i = 0; i < 20000; i++) {
    snprintf(id, sizeof id, "n%d", i);
    orch_graph_add_fn(g, id, count_fn, &count);
    if (i >= 100) {
      char dep[32];
      snprintf(dep, sizeof dep, "n%d", i - 100);
      orch_graph_depend(g, id, dep);
    }
  }
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(count, 20000);
  for (size_t i = 0; i < orch_graph_size(g); i++)
    ASSERT_EQ(orch_step_status(g, i), ORCH_PASSED);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTATE);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(dag_depend_by_index) {
  orch_graph *g = NULL;
  char err[256];
  orch_graph_new(&g);
  orch_graph_add_fn(g, "a", noop, NULL);
  orch_graph_add_fn(g, "b", noop, NULL);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 0), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 7), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_depend_index(g, 0, 0), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "step 'a' depends on itself");
  orch_graph_free(g);
  orch_graph_new(&g);
  orch_graph_add_fn(g, "a", noop, NULL);
  orch_graph_add_fn(g, "b", noop, NULL);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 0), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_step_ndeps(g, 1), 1);
  ASSERT_STR_EQ(orch_step_id(g, orch_step_dep(g, 1, 0)), "a");
  orch_graph_free(g);
}

/* orch.h: "steps may be added in any order". A dependent not added yet is
 * resolved at validation like a dependency; a call that fails leaves no
 * error behind in the graph. */
TEST(dag_depend_before_the_dependent_is_added) {
  orch_graph *g = NULL;
  char err[256];
  orch_graph_new(&g);
  ASSERT_EQ(orch_graph_add_fn(g, "a", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "c", "later"), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "b", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b", "a"), ORCH_OK); /* again: one edge */
  ASSERT_EQ(orch_graph_add_fn(g, "later", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "c", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  long b = orch_graph_find(g, "b"), c = orch_graph_find(g, "c");
  ASSERT_EQ(orch_step_ndeps(g, (size_t)b), 1);
  ASSERT_EQ(orch_step_dep(g, (size_t)b, 0), orch_graph_find(g, "a"));
  ASSERT_EQ(orch_step_ndeps(g, (size_t)c), 1);
  ASSERT_EQ(orch_step_dep(g, (size_t)c, 0), orch_graph_find(g, "later"));
  ASSERT_EQ(orch_step_level(g, (size_t)b), 1);
  orch_graph_free(g);

  /* Never added: validation names it. */
  orch_graph_new(&g);
  ASSERT_EQ(orch_graph_add_fn(g, "a", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "ghost", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "unknown step 'ghost'");
  ASSERT_EQ(orch_graph_add_fn(g, "ghost", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_step_ndeps(g, (size_t)orch_graph_find(g, "ghost")), 1);
  orch_graph_free(g);
}

TEST(dag_set_cost_or_timeout_on_unknown_id_does_not_poison) {
  orch_graph *g = NULL;
  char err[256];
  orch_graph_new(&g);
  ASSERT_EQ(orch_graph_add_fn(g, "a", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_set_cost(g, "b", 5), ORCH_ENOTFOUND);
  ASSERT_EQ(orch_graph_set_timeout(g, "b", 5), ORCH_ENOTFOUND);
  ASSERT_EQ(orch_graph_add_fn(g, "b", noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_set_cost(g, "b", 5), ORCH_OK);
  ASSERT_EQ(orch_graph_set_timeout(g, "b", 5), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT(orch_step_cost(g, (size_t)orch_graph_find(g, "b")) == 5);
  orch_graph_free(g);
}

/* A step refused by orch_graph_add_json leaves the graph as it was: no
 * half-built step without its parameters (a run crashed on it), none that
 * runs with the refused value, no edge, pending name or id left behind. */
TEST(dag_refused_json_step_leaves_the_graph_as_it_was) {
  static const char *const bad[] = {
      "{\"id\":\"x\",\"kind\":\"shell\",\"run\":5}",
      "{\"id\":\"x\",\"kind\":\"shell\",\"run\":\"true\",\"cwd\":5}",
      "{\"id\":\"x\",\"kind\":\"shell\",\"run\":\"true\",\"writes\":[\"f\",5]}",
      "{\"id\":\"x\",\"kind\":\"lua\",\"code\":5}",
      "{\"id\":\"x\",\"kind\":\"edit\",\"file\":\"f\"}",
      "{\"id\":\"x\",\"kind\":\"llm\"}",
      "{\"id\":\"x\",\"kind\":\"llm\",\"prompt\":\"p\",\"role\":\"boss\"}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":-1}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"cost_ms\":-1}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"always\":1}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"timeout_ms\":-1}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"deps\":\"a\"}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"deps\":[\"a\",5]}",
      "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"deps\":[\"later\",\"\"]}",
  };
  orch_runtime *rt = NULL;
  char err[512];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    orch_graph *g = NULL;
    long count = 0;
    ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    ASSERT_EQ(orch_graph_add_fn(g, "a", count_fn, &count), ORCH_OK);
    err[0] = '\0';
    if (orch_graph_add_json(g, bad[k], err, sizeof err) != ORCH_EPLAN) {
      orch_test_fail(__FILE__, __LINE__, "accepted: %s", bad[k]);
      return;
    }
    ASSERT_CONTAINS(err, "'x'");
    ASSERT_EQ(orch_graph_size(g), 1);
    ASSERT_EQ(orch_graph_find(g, "x"), -1);
    ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
    ASSERT_EQ(orch_step_ndeps(g, 0), 0);
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
    ASSERT_EQ(count, 1);
    orch_graph_free(g);

    /* The same id, added right after the refusal, is the step it says. */
    ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    ASSERT_EQ(orch_graph_add_fn(g, "a", count_fn, &count), ORCH_OK);
    ASSERT_EQ(orch_graph_add_json(g, bad[k], err, sizeof err), ORCH_EPLAN);
    ASSERT_EQ(orch_graph_add_json(
                  g, "{\"id\":\"x\",\"kind\":\"sleep\",\"ms\":1,\"deps\":[\"a\"]}",
                  err, sizeof err),
              ORCH_OK);
    ASSERT_EQ(orch_graph_find(g, "x"), 1);
    ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
    ASSERT_EQ(orch_step_ndeps(g, 1), 1);
    ASSERT_STR_EQ(orch_step_kind(g, 1), "sleep");
    ASSERT(orch_step_cost(g, 1) == 1);
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
    ASSERT_EQ(orch_step_status(g, 1), ORCH_PASSED);
    orch_graph_free(g);
  }
  orch_runtime_free(rt);
}

/* Taking a refused step out of the id hash keeps every other id findable,
 * whatever the collisions and growth before it. */
TEST(dag_refused_steps_leave_the_id_hash_whole) {
  orch_graph *g = NULL;
  char id[32], js[96], err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int i = 0; i < 5000; i++) {
    snprintf(id, sizeof id, "n%d", i);
    ASSERT_EQ(orch_graph_add_fn(g, id, noop, NULL), ORCH_OK);
    snprintf(js, sizeof js, "{\"id\":\"x%d\",\"kind\":\"sleep\",\"ms\":-1}", i);
    ASSERT_EQ(orch_graph_add_json(g, js, err, sizeof err), ORCH_EPLAN);
  }
  ASSERT_EQ(orch_graph_size(g), 5000);
  for (int i = 0; i < 5000; i++) {
    snprintf(id, sizeof id, "n%d", i);
    ASSERT_EQ(orch_graph_find(g, id), i);
    snprintf(id, sizeof id, "x%d", i);
    ASSERT_EQ(orch_graph_find(g, id), -1);
  }
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  orch_graph_free(g);
}

/* orch.h: "every call that can fail ... writes a message ... into the
 * caller's buffer", also when it fails on a NULL argument. */
TEST(api_null_arguments_write_the_error_buffer) {
  orch_graph *g = NULL, *out = NULL;
  char *txt = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
#define STALE(call)                                                    \
  do {                                                                 \
    strcpy(err, "STALE");                                              \
    ASSERT_EQ((call), ORCH_EINVAL);                                    \
    if (!strcmp(err, "STALE") || !err[0]) {                            \
      orch_test_fail(__FILE__, __LINE__, "%s left err \"%s\"", #call,  \
                     err);                                             \
      return;                                                          \
    }                                                                  \
  } while (0)
  STALE(orch_graph_add_json(NULL, "{\"id\":\"a\",\"ms\":1}", err, sizeof err));
  STALE(orch_graph_add_json(g, NULL, err, sizeof err));
  STALE(orch_graph_parse(NULL, NULL, 0, "p", &out, err, sizeof err));
  STALE(orch_graph_parse(NULL, "{}", 2, "p", NULL, err, sizeof err));
  STALE(orch_graph_load(NULL, NULL, &out, err, sizeof err));
  STALE(orch_graph_load(NULL, "plan.json", NULL, err, sizeof err));
  STALE(orch_ask(NULL, "q", 0, NULL, NULL, &txt, err, sizeof err));
  STALE(orch_mock_start(NULL, "127.0.0.1", 0, err, sizeof err));
#undef STALE
  ASSERT(out == NULL && txt == NULL);
  orch_graph_free(g);
}

/* A sleep of inf, NaN or more than 30 days is refused, naming the step:
 * its conversion to integer ms was undefined (such a sleep "passed" at
 * once, with a critical path of inf). */
TEST(dag_sleep_out_of_range_is_refused) {
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", INFINITY), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", NAN), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", 1e300), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", 2592000001.0), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", -1), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_size(g), 0);
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"s\",\"kind\":\"sleep\",\"ms\":1e300}",
                                err, sizeof err),
            ORCH_EPLAN);
  ASSERT_CONTAINS(err, "'s'");
  ASSERT_CONTAINS(err, "from 0 to 2592000000 (30 days)");
  ASSERT_EQ(orch_graph_size(g), 0);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", 2592000000.0), ORCH_OK); /* 30 days */
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"t\",\"ms\":2592000000}", err,
                                sizeof err),
            ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  double cost = 0;
  ASSERT_EQ(orch_graph_critical_path(g, NULL, 0, &cost), 1);
  ASSERT(cost == 2592000000.0);
  orch_graph_free(g);
}

/* A dry run sleeps for an llm step's cost_ms, else dry_run_ms: out of
 * range (a cost_ms is refused in the plan, dry_run_ms is a setting), the
 * step fails with a message instead of passing at once. */
TEST(dag_dry_run_sleep_out_of_range_fails_the_step) {
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "dry_run", "true", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "dry_run_ms", "1e300", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"m\",\"prompt\":\"p\",\"cost_ms\":1e300}",
                                err, sizeof err),
            ORCH_EPLAN);
  ASSERT_CONTAINS(err, "\"cost_ms\" must be a number from 0 to 2592000000");
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"m\",\"prompt\":\"p\"}",
                                err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"n\",\"prompt\":\"p\",\"cost_ms\":1}",
                                err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "step 'm': a sleep of 1e+300 ms is out of range");
  ASSERT_EQ(orch_step_status(g, 1), ORCH_PASSED);
  orch_graph_free(g);
  orch_runtime_free(rt);
}
