/* test_sched_fast.c: the scheduler's worker fast path (sched.c), where a
 * worker completes a passed C step itself and runs a ready dependent next:
 * dependency order, failure propagation, mixed kinds and outputs. */
#include "orch.h"
#include "test.h"

#include <stdatomic.h>
#include <time.h>

static atomic_long seq;
static long order[10000];

/* Records the order steps ran in; ud points at the step's index. */
static int record(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  order[*(long *)ud] = atomic_fetch_add(&seq, 1);
  return ORCH_OK;
}

static int fail_step(orch_step_ctx *ctx, void *ud) {
  (void)ud;
  orch_ctx_set_error(ctx, "planned failure");
  return ORCH_EINVAL;
}

static int produce(orch_step_ctx *ctx, void *ud) {
  (void)ud;
  orch_ctx_set_output(ctx, "hello", 5);
  return ORCH_OK;
}

static int consume(orch_step_ctx *ctx, void *ud) {
  const char *dep = ud;
  const char *in = orch_ctx_dep_output(ctx, dep);
  if (!in) {
    orch_ctx_set_error(ctx, "no output from %s", dep);
    return ORCH_EINVAL;
  }
  orch_ctx_set_output(ctx, in, strlen(in));
  return ORCH_OK;
}

static orch_runtime *new_rt(void) {
  orch_runtime *rt = NULL;
  char err[256];
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) return NULL;
  orch_runtime_set(rt, "workers", "2", err, sizeof err);
  return rt;
}

TEST(sched_fast_chain_keeps_order) {
  static long ix[10000];
  orch_runtime *rt = new_rt();
  orch_graph *g = NULL;
  char id[32], dep[32], err[256];
  ASSERT(rt);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  atomic_store(&seq, 0);
  for (long k = 0; k < 10000; k++) {
    ix[k] = k;
    snprintf(id, sizeof id, "c%ld", k);
    ASSERT_EQ(orch_graph_add_fn(g, id, record, &ix[k]), ORCH_OK);
    if (k) {
      snprintf(dep, sizeof dep, "c%ld", k - 1);
      ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
    }
  }
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  for (long k = 0; k < 10000; k++) {
    ASSERT_EQ(orch_step_status(g, (size_t)k), ORCH_PASSED);
    ASSERT_EQ(order[k], k);
    ASSERT_EQ(orch_step_attempts(g, (size_t)k), 1);
  }
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(sched_fast_wavefront_respects_dependencies) {
  enum { SIDE = 60 };
  static long ix[SIDE * SIDE];
  orch_runtime *rt = new_rt();
  orch_graph *g = NULL;
  char id[32], dep[32], err[256];
  ASSERT(rt);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  for (int round = 0; round < 5; round++) {
    atomic_store(&seq, 0);
    if (round) {
      orch_graph_free(g);
      ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    }
    for (long i = 0; i < SIDE; i++)
      for (long j = 0; j < SIDE; j++) {
        long k = i * SIDE + j;
        ix[k] = k;
        snprintf(id, sizeof id, "w%ld", k);
        ASSERT_EQ(orch_graph_add_fn(g, id, record, &ix[k]), ORCH_OK);
        if (i) {
          snprintf(dep, sizeof dep, "w%ld", k - SIDE);
          ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
        }
        if (j) {
          snprintf(dep, sizeof dep, "w%ld", k - 1);
          ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
        }
      }
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
    for (size_t v = 0; v < orch_graph_size(g); v++) {
      ASSERT_EQ(orch_step_status(g, v), ORCH_PASSED);
      for (size_t e = 0; e < orch_step_ndeps(g, v); e++) {
        size_t d = orch_step_dep(g, v, e);
        ASSERT(order[d] < order[v]);
        ASSERT(orch_step_finished_ms(g, d) <= orch_step_started_ms(g, v));
      }
    }
  }
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(sched_fast_failure_skips_dependents_only) {
  static long ix[200];
  orch_runtime *rt = new_rt();
  orch_graph *g = NULL;
  char id[32], dep[32], err[256];
  ASSERT(rt);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  /* Chain a0..a99 with a50 failing; independent chain b0..b99. */
  for (long k = 0; k < 100; k++) {
    ix[k] = k;
    ix[100 + k] = 100 + k;
    snprintf(id, sizeof id, "a%ld", k);
    if (k == 50) ASSERT_EQ(orch_graph_add_fn(g, id, fail_step, NULL), ORCH_OK);
    else ASSERT_EQ(orch_graph_add_fn(g, id, record, &ix[k]), ORCH_OK);
    if (k) {
      snprintf(dep, sizeof dep, "a%ld", k - 1);
      ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
    }
    snprintf(id, sizeof id, "b%ld", k);
    ASSERT_EQ(orch_graph_add_fn(g, id, record, &ix[100 + k]), ORCH_OK);
    if (k) {
      snprintf(dep, sizeof dep, "b%ld", k - 1);
      ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
    }
  }
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  ASSERT_CONTAINS(err, "49 skipped");
  for (long k = 0; k < 100; k++) {
    char a[32], b2[32];
    snprintf(a, sizeof a, "a%ld", k);
    snprintf(b2, sizeof b2, "b%ld", k);
    long ia = orch_graph_find(g, a), ib = orch_graph_find(g, b2);
    int want = k < 50 ? ORCH_PASSED : k == 50 ? ORCH_FAILED : ORCH_SKIPPED;
    ASSERT_EQ(orch_step_status(g, (size_t)ia), want);
    ASSERT_EQ(orch_step_status(g, (size_t)ib), ORCH_PASSED);
    if (k > 50) ASSERT_CONTAINS(orch_step_error(g, (size_t)ia), "'a50' failed");
  }
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(sched_fast_mixed_kinds_pass_outputs) {
  orch_runtime *rt = new_rt();
  orch_graph *g = NULL;
  char err[256];
  static char pa[] = "a", pb[] = "b";
  ASSERT(rt);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  /* a (fn) -> b (fn) -> s (sleep) -> c (fn); a -> d (fn) */
  ASSERT_EQ(orch_graph_add_fn(g, "a", produce, NULL), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "b", consume, pa), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "s", 5), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "c", consume, pb), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "d", consume, pa), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "s", "b"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "c", "s"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "c", "b"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "d", "a"), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  ASSERT_STR_EQ(orch_step_output(g, (size_t)orch_graph_find(g, "c")), "hello");
  ASSERT_STR_EQ(orch_step_output(g, (size_t)orch_graph_find(g, "d")), "hello");
  size_t s = (size_t)orch_graph_find(g, "s"), c = (size_t)orch_graph_find(g, "c");
  ASSERT(orch_step_finished_ms(g, s) <= orch_step_started_ms(g, c));
  orch_graph_free(g);
  orch_runtime_free(rt);
}

static orch_runtime *cancel_rt;

/* Cancels the run, then gives the loop time to act on it before the
 * chain moves on. */
static int cancel_at(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  if (ud) {
    struct timespec ts = {0, 20 * 1000000L};
    orch_runtime_cancel(cancel_rt);
    nanosleep(&ts, NULL);
  }
  return ORCH_OK;
}

TEST(sched_fast_cancel_leaves_final_statuses) {
  orch_runtime *rt = new_rt();
  orch_graph *g = NULL;
  char id[32], dep[32], err[256];
  static int flag;
  ASSERT(rt);
  cancel_rt = rt;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  /* Two chains of 20000; the first cancels the run at its step 1000. */
  for (long k = 0; k < 20000; k++)
    for (int c = 0; c < 2; c++) {
      snprintf(id, sizeof id, "%c%ld", 'a' + c, k);
      ASSERT_EQ(orch_graph_add_fn(g, id, cancel_at,
                                  c == 0 && k == 1000 ? &flag : NULL),
                ORCH_OK);
      if (k) {
        snprintf(dep, sizeof dep, "%c%ld", 'a' + c, k - 1);
        ASSERT_EQ(orch_graph_depend(g, id, dep), ORCH_OK);
      }
    }
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ECANCELED);
  size_t passed = 0, skipped = 0;
  for (size_t v = 0; v < orch_graph_size(g); v++) {
    int st = orch_step_status(g, v);
    ASSERT(st == ORCH_PASSED || st == ORCH_FAILED || st == ORCH_SKIPPED);
    passed += st == ORCH_PASSED;
    skipped += st == ORCH_SKIPPED;
    if (st == ORCH_SKIPPED) ASSERT(orch_step_error(g, v));
  }
  ASSERT(passed >= 1001);
  ASSERT(skipped > 0); /* the rest of chain a */
  orch_graph_free(g);
  orch_runtime_free(rt);
}
