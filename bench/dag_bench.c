/* dag_bench.c measures liborch's throughput on empty steps, the (a)-(c)
 * shapes of issue 2: a fan of independent no-op steps, a chain, and a
 * side x side wavefront where step (i,j) depends on (i-1,j) and (i,j-1).
 * Each repetition times graph building, validation and the run, through
 * the public API only (orch.h), on a runtime created once. Two ways to
 * build, as two kinds of host would:
 *   anon  (default) anonymous steps (orch_graph_add_fn with id NULL), edges
 *         by index (orch_graph_depend_index): a host that holds its steps'
 *         indices, as an OpenMP or TBB program holds its tasks;
 *   ids   steps with string ids ("s<k>"), each checked and hashed; edges by
 *         index, or by id with ORCH_BENCH_BY_NAME=1 (each a hash lookup).
 * Both call orch_graph_reserve(g, steps, edges) first, as a host that knows
 * its graph's size can (ORCH_BENCH_NO_RESERVE=1: not). Prints one line per
 * repetition:
 *   orch|orch-ids SHAPE STEPS SECONDS STEPS_PER_S build=S validate=S run=S
 * Its peer is omp_peer.c (the same shapes as OpenMP tasks); bench/run.sh
 * runs the two alternately and takes medians.
 * Usage: dag_bench fan|chain|wave [steps] [reps] [workers] [anon|ids] */
#include "orch.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void die(const char *what, int rc, const char *err) {
  fprintf(stderr, "dag_bench: %s: %s (%s)\n", what, orch_strerror(rc),
          err ? err : "");
  exit(1);
}

/* Writes the id of step k into buf ("s" and the decimal index). The ids
 * are what a host would give, so checking and hashing them is part of the
 * cost; formatting them is the host's business, done here without
 * snprintf so that it does not dominate the figure. */
static void id_of(char *buf, size_t k) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + k % 10);
    k /= 10;
  } while (k);
  buf[0] = 's';
  for (size_t i = 0; i < n; i++) buf[1 + i] = tmp[n - 1 - i];
  buf[1 + n] = '\0';
}

static bool anon = true;

/* Edges by index (orch_graph_depend_index), as a host holding its steps'
 * handles would add them; ORCH_BENCH_BY_NAME=1 adds them by id instead. */
static int by_name = -1;
static int depend(orch_graph *g, const char *id, char *dep, size_t k, size_t d) {
  if (by_name < 0) {
    const char *e = getenv("ORCH_BENCH_BY_NAME");
    by_name = e && *e == '1';
  }
  if (anon || !by_name) return orch_graph_depend_index(g, k, d);
  id_of(dep, d);
  return orch_graph_depend(g, id, dep);
}

/* Adds step k: anonymous, or with its string id written into id. */
static int add(orch_graph *g, char *id, size_t k) {
  if (anon) return orch_graph_add_fn(g, NULL, noop, NULL);
  id_of(id, k);
  return orch_graph_add_fn(g, id, noop, NULL);
}

static orch_graph *build(const char *shape, size_t n, size_t *side_out) {
  orch_graph *g = NULL;
  char id[24], dep[24];
  int rc = orch_graph_new(&g);
  if (rc) die("graph_new", rc, NULL);
  const char *nr = getenv("ORCH_BENCH_NO_RESERVE");
  bool reserve = !(nr && *nr == '1');
  if (strcmp(shape, "wave") == 0) {
    size_t side = 1;
    while ((side + 1) * (side + 1) <= n) side++;
    *side_out = side;
    if (reserve && (rc = orch_graph_reserve(g, side * side, 2 * side * (side - 1))))
      die("reserve", rc, NULL);
    for (size_t i = 0; i < side; i++)
      for (size_t j = 0; j < side; j++) {
        if ((rc = add(g, id, i * side + j))) die("add", rc, NULL);
        size_t k = i * side + j;
        if (i > 0 && (rc = depend(g, id, dep, k, k - side))) die("depend", rc, NULL);
        if (j > 0 && (rc = depend(g, id, dep, k, k - 1))) die("depend", rc, NULL);
      }
    return g;
  }
  bool chain = strcmp(shape, "chain") == 0;
  if (!chain && strcmp(shape, "fan") != 0) {
    fprintf(stderr, "dag_bench: unknown shape '%s'\n", shape);
    exit(64);
  }
  if (reserve && (rc = orch_graph_reserve(g, n, chain && n ? n - 1 : 0)))
    die("reserve", rc, NULL);
  for (size_t k = 0; k < n; k++) {
    if ((rc = add(g, id, k))) die("add", rc, NULL);
    if (chain && k > 0 && (rc = depend(g, id, dep, k, k - 1)))
      die("depend", rc, NULL);
  }
  return g;
}

int main(int argc, char **argv) {
  const char *shape = argc > 1 ? argv[1] : "fan";
  size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
  int reps = argc > 3 ? atoi(argv[3]) : 1;
  const char *workers = argc > 4 && strcmp(argv[4], "-") ? argv[4] : NULL;
  if (argc > 5) {
    if (strcmp(argv[5], "ids") == 0) anon = false;
    else if (strcmp(argv[5], "anon") != 0) {
      fprintf(stderr, "dag_bench: mode is anon or ids, not '%s'\n", argv[5]);
      return 64;
    }
  }
  char err[512];
  orch_runtime *rt = NULL;
  int rc = orch_runtime_new(&rt, NULL, err, sizeof err);
  if (rc) die("runtime_new", rc, err);
  if (workers && (rc = orch_runtime_set(rt, "workers", workers, err, sizeof err)))
    die("workers", rc, err);
  /* Start the threads outside the timed part with a one-step graph. */
  orch_graph *warm = NULL;
  orch_graph_new(&warm);
  orch_graph_add_fn(warm, "warm", noop, NULL);
  if ((rc = orch_run(rt, warm, err, sizeof err))) die("warm-up run", rc, err);
  orch_graph_free(warm);
  for (int r = 0; r < reps; r++) {
    size_t side = 0;
    double t0 = now_s();
    orch_graph *g = build(shape, n, &side);
    double t1 = now_s();
    if ((rc = orch_graph_validate(g, err, sizeof err))) die("validate", rc, err);
    double t2 = now_s();
    if ((rc = orch_run(rt, g, err, sizeof err))) die("run", rc, err);
    double t3 = now_s();
    size_t steps = orch_graph_size(g);
    for (size_t i = 0; i < steps; i++)
      if (orch_step_status(g, i) != ORCH_PASSED) die("a step did not pass", 0, NULL);
    double total = t3 - t0;
    printf("%s %s %zu %.6f %.0f build=%.3f validate=%.3f run=%.3f\n",
           anon ? "orch" : "orch-ids", shape,
           steps, total, (double)steps / total, t1 - t0, t2 - t1, t3 - t2);
    fflush(stdout);
    orch_graph_free(g);
  }
  orch_runtime_free(rt);
  return 0;
}
