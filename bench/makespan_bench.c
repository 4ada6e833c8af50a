/* makespan_bench.c is benchmark (d) of issue 2: random DAGs of sleep steps
 * run with at most P in flight, the measured makespan set against (i) the
 * same policy simulated offline with zero overhead, (ii) the lower bound
 * max(critical path, work / P), (iii) level-by-level execution and (iv) the
 * sequential sum (sim.h computes all four from the durations). The DAGs
 * are seeded, so every run sees the same 50 graphs.
 * Output: one line per DAG, then averages of the ratios, as
 *   dag K steps N measured M sim S bound B levels L seq Q
 *   avg over_sim X over_bound Y below_levels Z
 * Usage: makespan_bench [dags=50] [steps=200] [P=8] [seed=2] [first=0] */
#include "orch.h"
#include "sim.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng_state;

/* splitmix64: small, fast, and the same on every machine. */
static uint64_t rng(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static size_t below(size_t n) { return (size_t)(rng() % n); }

/* A random DAG in topological order: step i costs 10..200 ms (whole ms)
 * and depends on 0..3 distinct earlier steps chosen uniformly. */
static void random_dag(sim_graph *g, size_t n) {
  g->n = n;
  g->cost = sim_xcalloc(n, sizeof *g->cost);
  g->dep_off = sim_xcalloc(n + 1, sizeof *g->dep_off);
  g->deps = sim_xcalloc(3 * n, sizeof *g->deps);
  size_t ne = 0;
  for (size_t i = 0; i < n; i++) {
    g->cost[i] = (double)(10 + below(191));
    g->dep_off[i] = ne;
    size_t k = i ? below(4) : 0;
    if (k > i) k = i;
    size_t start = ne;
    while (ne - start < k) {
      size_t d = below(i), dup = 0;
      for (size_t e = start; e < ne; e++) dup |= g->deps[e] == d;
      if (!dup) g->deps[ne++] = d;
    }
  }
  g->dep_off[n] = ne;
  sim_prepare(g);
}

/* Runs g as sleep steps on rt; returns the measured makespan in ms, or -1. */
static double run_sleeps(orch_runtime *rt, const sim_graph *s) {
  orch_graph *g = NULL;
  char id[32], dep[32], err[512];
  double ms = -1;
  if (orch_graph_new(&g)) return -1;
  for (size_t i = 0; i < s->n; i++) {
    snprintf(id, sizeof id, "t%zu", i);
    if (orch_graph_add_sleep(g, id, s->cost[i])) goto done;
    for (size_t e = s->dep_off[i]; e < s->dep_off[i + 1]; e++) {
      snprintf(dep, sizeof dep, "t%zu", s->deps[e]);
      if (orch_graph_depend(g, id, dep)) goto done;
    }
  }
  int rc = orch_run(rt, g, err, sizeof err);
  if (rc) {
    fprintf(stderr, "makespan_bench: run: %s\n", err);
    goto done;
  }
  ms = orch_graph_makespan_ms(g);
done:
  orch_graph_free(g);
  return ms;
}

int main(int argc, char **argv) {
  int dags = argc > 1 ? atoi(argv[1]) : 50;
  size_t steps = argc > 2 ? strtoul(argv[2], NULL, 10) : 200;
  int p = argc > 3 ? atoi(argv[3]) : 8;
  uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 2;
  int first = argc > 5 ? atoi(argv[5]) : 0;
  char err[512], pv[16];
  orch_runtime *rt = NULL;
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) {
    fprintf(stderr, "makespan_bench: %s\n", err);
    return 1;
  }
  snprintf(pv, sizeof pv, "%d", p);
  if (orch_runtime_set(rt, "max_parallel", pv, err, sizeof err)) {
    fprintf(stderr, "makespan_bench: %s\n", err);
    return 1;
  }
  rng_state = seed;
  double sum_sim = 0, sum_bound = 0, sum_levels = 0;
  int counted = 0;
  for (int k = 0; k < dags; k++) {
    sim_graph g = {0};
    random_dag(&g, steps); /* always drawn, so DAG k is the same for any first */
    if (k < first) {
      sim_free(&g);
      continue;
    }
    double sim = sim_list(&g, p, -1), bound = sim_lower_bound(&g, p),
           levels = sim_levels(&g, p), seq = sim_work(&g);
    double m = run_sleeps(rt, &g);
    if (m < 0) return 1;
    printf("dag %d steps %zu measured %.1f sim %.1f bound %.1f levels %.1f "
           "seq %.1f cp %.1f nlevels %zu\n",
           k, steps, m, sim, bound, levels, seq, sim_critical_path(&g),
           g.nlevels);
    fflush(stdout);
    sum_sim += m / sim - 1;
    sum_bound += m / bound - 1;
    sum_levels += 1 - m / levels;
    counted++;
    sim_free(&g);
  }
  if (counted)
    printf("avg over_sim %.4f over_bound %.4f below_levels %.4f dags %d P %d\n",
           sum_sim / counted, sum_bound / counted, sum_levels / counted,
           counted, p);
  orch_runtime_free(rt);
  return 0;
}
