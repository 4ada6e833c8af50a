/* test_dag_anon.c: anonymous steps (orch_graph_add_fn with id NULL),
 * orch_graph_reserve, and validation of edges added by index in any order
 * (duplicates, backward edges, cycles), then runs of such graphs: each step
 * runs once, never before its dependencies finished (from recorded times),
 * and a cancel in the middle of a fan of roots leaves true final statuses. */
#include "orch.h"
#include "test.h"

#include <stdatomic.h>
#include <stdlib.h>

static int noop(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  (void)ud;
  return ORCH_OK;
}

static orch_runtime *new_rt(void) {
  orch_runtime *rt = NULL;
  char err[256];
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) return NULL;
  orch_runtime_set(rt, "workers", "2", err, sizeof err);
  return rt;
}

TEST(dag_anon_steps_are_named_by_index) {
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);  /* 0 */
  ASSERT_EQ(orch_graph_add_fn(g, "b", noop, NULL), ORCH_OK);   /* 1 */
  ASSERT_EQ(orch_graph_add_host_fn(g, NULL, noop, NULL), ORCH_OK); /* 2 */
  ASSERT_EQ(orch_graph_add_fn(g, "#9", noop, NULL), ORCH_OK);  /* 3: no step 9 */
  ASSERT_STR_EQ(orch_step_id(g, 0), "#0");
  ASSERT_STR_EQ(orch_step_id(g, 1), "b");
  ASSERT_STR_EQ(orch_step_id(g, 2), "#2");
  ASSERT_EQ(orch_graph_find(g, "#0"), 0);
  ASSERT_EQ(orch_graph_find(g, "#2"), 2);
  ASSERT_EQ(orch_graph_find(g, "#1"), -1); /* step 1 is named "b" */
  ASSERT_EQ(orch_graph_find(g, "#9"), 3);  /* a named step by that id */
  ASSERT_EQ(orch_graph_find(g, "#02"), -1);
  ASSERT_EQ(orch_graph_find(g, "#"), -1);
  /* A named step may not take an anonymous step's name. */
  ASSERT_EQ(orch_graph_add_fn(g, "#0", noop, NULL), ORCH_EPLAN);
  ASSERT_EQ(orch_graph_add_json(g, "{\"id\":\"#0\",\"ms\":1}", err, sizeof err),
            ORCH_EPLAN);
  ASSERT_CONTAINS(err, "duplicate step id '#0'");
  ASSERT_EQ(orch_graph_size(g), 4); /* refused: nothing added, no error kept */
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  orch_graph_free(g);

  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int i = 0; i < 3; i++) ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "#1", "#0"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "#2", "#7"), ORCH_OK); /* unknown: at validate */
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "step '#2' depends on unknown step '#7'");
  orch_graph_free(g);
}

TEST(dag_anon_errors_name_steps_by_index) {
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int i = 0; i < 4; i++) ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 2, 2), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_EPLAN);
  ASSERT_CONTAINS(err, "step '#2' depends on itself");
  orch_graph_free(g);

  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int i = 0; i < 4; i++) ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 0), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 2, 1), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 2), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 9, 1), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_ECYCLE);
  ASSERT(strstr(err, "#1 -> #2 -> #1") || strstr(err, "#2 -> #1 -> #2"));
  /* Asked again, the same answer. */
  char err2[256];
  ASSERT_EQ(orch_graph_validate(g, err2, sizeof err2), ORCH_ECYCLE);
  ASSERT_STR_EQ(err2, err);
  orch_graph_free(g);
}

TEST(dag_reserve_is_a_hint) {
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_reserve(NULL, 1, 1), ORCH_EINVAL);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_reserve(g, 10, 5), ORCH_OK);
  /* More than reserved, named and anonymous. */
  char id[16];
  for (int i = 0; i < 3000; i++) {
    snprintf(id, sizeof id, "n%d", i);
    ASSERT_EQ(orch_graph_add_fn(g, i % 2 ? id : NULL, noop, NULL), ORCH_OK);
    if (i) ASSERT_EQ(orch_graph_depend_index(g, (size_t)i, (size_t)i - 1), ORCH_OK);
  }
  ASSERT_EQ(orch_graph_find(g, "n2999"), 2999);
  ASSERT_EQ(orch_graph_find(g, "#2998"), 2998);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_levels(g), 3000);
  ASSERT_EQ(orch_graph_reserve(g, 5000, 0), ORCH_ESTATE);
  orch_graph_free(g);
}

/* Edges in any order: repeated (few and many), backward (a dependency added
 * after its dependent), by index and by name. */
TEST(dag_edges_in_any_order_validate_the_same) {
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int i = 0; i < 40; i++) ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  /* 39 depends on 0..30 but 5, each three times, in a scrambled order
   * (> 16 entries: the long-list path). */
  for (int rep = 0; rep < 3; rep++)
    for (int k = 0; k < 30; k++) {
      size_t d = (size_t)((k * 7) % 30);
      ASSERT_EQ(orch_graph_depend_index(g, 39, d == 5 ? 30 : d), ORCH_OK);
    }
  /* 5 depends on 38 (backward), twice, and on 4 (short-list path). */
  ASSERT_EQ(orch_graph_depend_index(g, 5, 38), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 5, 4), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "#5", "#38"), ORCH_OK);
  /* 38 depends on 39: the level chain 0 -> 39 -> 38 -> 5. */
  ASSERT_EQ(orch_graph_depend_index(g, 38, 39), ORCH_OK);
  ASSERT_EQ(orch_graph_validate(g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_step_ndeps(g, 39), 30);
  ASSERT_EQ(orch_step_ndeps(g, 5), 2);
  ASSERT_EQ(orch_step_dep(g, 5, 0), 38);
  ASSERT_EQ(orch_step_dep(g, 5, 1), 4);
  ASSERT_EQ(orch_step_level(g, 39), 1);
  ASSERT_EQ(orch_step_level(g, 38), 2);
  ASSERT_EQ(orch_step_level(g, 5), 3);
  ASSERT_EQ(orch_graph_levels(g), 4);
  size_t path[8];
  double cost = 0;
  ASSERT_EQ(orch_graph_critical_path(g, path, 8, &cost), 4);
  ASSERT_EQ(path[1], 39);
  ASSERT_EQ(path[2], 38);
  ASSERT_EQ(path[3], 5);
  ASSERT(cost == 4.0);
  orch_graph_free(g);
}

/* ---- runs ---------------------------------------------------------------- */

#define RN 3000
static atomic_int runs[RN];

static int count_run(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  atomic_fetch_add(&runs[(size_t)ud], 1);
  return ORCH_OK;
}

/* A random DAG of anonymous steps whose edges go both ways in index order
 * (so validation takes Kahn's path), with many roots and leaves. */
TEST(sched_anon_random_dag_runs_each_step_once_in_order) {
  orch_runtime *rt = new_rt();
  ASSERT(rt);
  char err[256];
  unsigned seed = 12345;
  for (int round = 0; round < 3; round++) {
    orch_graph *g = NULL;
    ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    /* at[] is a permutation: edges go from at[lower] to at[higher]. */
    static size_t at[RN];
    for (size_t i = 0; i < RN; i++) at[i] = i;
    for (size_t i = RN - 1; i > 0; i--) {
      seed = seed * 1103515245u + 12345u;
      size_t j = (seed >> 8) % (i + 1), t = at[i];
      at[i] = at[j];
      at[j] = t;
    }
    for (size_t i = 0; i < RN; i++) {
      atomic_store(&runs[i], 0);
      ASSERT_EQ(orch_graph_add_fn(g, NULL, count_run, (void *)i), ORCH_OK);
    }
    for (size_t r = 1; r < RN; r++) {
      seed = seed * 1103515245u + 12345u;
      int nd = (int)((seed >> 8) % 4);
      for (int k = 0; k < nd; k++) {
        seed = seed * 1103515245u + 12345u;
        size_t dr = (seed >> 8) % r;
        ASSERT_EQ(orch_graph_depend_index(g, at[r], at[dr]), ORCH_OK);
      }
    }
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
    for (size_t i = 0; i < RN; i++) {
      ASSERT_EQ(atomic_load(&runs[i]), 1);
      ASSERT_EQ(orch_step_status(g, i), ORCH_PASSED);
      double s = orch_step_started_ms(g, i), f = orch_step_finished_ms(g, i);
      ASSERT(s >= 0 && f >= s);
      ASSERT(f <= orch_graph_makespan_ms(g));
      for (size_t k = 0; k < orch_step_ndeps(g, i); k++)
        ASSERT(orch_step_finished_ms(g, orch_step_dep(g, i, k)) <= s);
    }
    orch_graph_free(g);
  }
  orch_runtime_free(rt);
}

static orch_runtime *cancel_rt;
static atomic_long fan_ran;

static int fan_step(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  if (atomic_fetch_add(&fan_ran, 1) == 2000) orch_runtime_cancel(cancel_rt);
  (void)ud;
  return ORCH_OK;
}

/* Roots go to the workers in spans, claimed there: a cancel skips those not
 * yet claimed, and every step ends with a final status. */
TEST(sched_anon_cancel_in_a_fan_leaves_final_statuses) {
  orch_runtime *rt = new_rt();
  ASSERT(rt);
  cancel_rt = rt;
  atomic_store(&fan_ran, 0);
  orch_graph *g = NULL;
  char err[256];
  size_t n = 200000;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_reserve(g, n + 1, n), ORCH_OK);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(orch_graph_add_fn(g, NULL, fan_step, NULL), ORCH_OK);
  /* A join after all of them. */
  ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(orch_graph_depend_index(g, n, i), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ECANCELED);
  size_t passed = 0, skipped = 0, failed = 0;
  for (size_t v = 0; v <= n; v++) {
    int st = orch_step_status(g, v);
    ASSERT(st == ORCH_PASSED || st == ORCH_FAILED || st == ORCH_SKIPPED);
    passed += st == ORCH_PASSED;
    skipped += st == ORCH_SKIPPED;
    failed += st == ORCH_FAILED;
    if (st == ORCH_PASSED) ASSERT(orch_step_finished_ms(g, v) >= orch_step_started_ms(g, v));
  }
  ASSERT(passed >= 2001);
  ASSERT_EQ(orch_step_status(g, n), ORCH_SKIPPED);
  ASSERT_EQ(passed + skipped + failed, n + 1);
  ASSERT((size_t)atomic_load(&fan_ran) == passed);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

/* Steps run by index too: a context names an anonymous step "#<index>". */
static int check_id(orch_step_ctx *ctx, void *ud) {
  const char *want = ud;
  if (strcmp(orch_ctx_id(ctx), want) != 0) {
    orch_ctx_set_error(ctx, "id %s, not %s", orch_ctx_id(ctx), want);
    return ORCH_EINVAL;
  }
  return ORCH_OK;
}

TEST(sched_anon_step_context_and_skip_message_name_the_index) {
  orch_runtime *rt = new_rt();
  ASSERT(rt);
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, NULL, check_id, (void *)"#0"), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, NULL, check_id, (void *)"#0"), ORCH_OK); /* fails */
  ASSERT_EQ(orch_graph_add_fn(g, NULL, noop, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 1, 0), ORCH_OK);
  ASSERT_EQ(orch_graph_depend_index(g, 2, 1), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_PASSED);
  ASSERT_EQ(orch_step_status(g, 1), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 1), "id #1, not #0");
  ASSERT_EQ(orch_step_status(g, 2), ORCH_SKIPPED);
  ASSERT_CONTAINS(orch_step_error(g, 2), "dependency '#1' failed");
  orch_graph_free(g);
  orch_runtime_free(rt);
}
