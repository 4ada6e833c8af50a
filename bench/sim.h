/* sim.h: offline schedules of a task graph with known durations, shared by
 * makespan_bench.c and stg_bench.c. It computes, with zero overhead, what
 * the runtime's policy should achieve: list scheduling on P slots where a
 * task becomes ready when its last dependency finishes and ready tasks go
 * in order of bottom level (the longest cost path from the task to an exit,
 * its own cost included), ties to the lower index. Also the level-by-level
 * schedule (each topological level waits for its slowest task), the lower
 * bound max(critical path, work / P) and the sequential sum. Header-only:
 * every function is static. */
#ifndef BENCH_SIM_H
#define BENCH_SIM_H

#include <stdlib.h>
#include <string.h>

typedef struct sim_graph {
  size_t n;
  double *cost;     /* per task */
  size_t *dep_off;  /* deps of i: deps[dep_off[i]..dep_off[i+1]) */
  size_t *deps;     /* each < i: tasks are in topological order */
  /* derived by sim_prepare */
  size_t *out_off, *outs;
  double *bottom;   /* longest path to an exit, own cost included */
  size_t *level;    /* longest edge count from a root */
  size_t nlevels;
} sim_graph;

static inline void *sim_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) abort();
  return p;
}

/* Builds dependents, bottom levels and levels. Needs deps[j] < i. */
static inline void sim_prepare(sim_graph *g) {
  size_t n = g->n, ne = g->dep_off[n];
  g->out_off = sim_xcalloc(n + 1, sizeof *g->out_off);
  g->outs = sim_xcalloc(ne, sizeof *g->outs);
  g->bottom = sim_xcalloc(n, sizeof *g->bottom);
  g->level = sim_xcalloc(n, sizeof *g->level);
  size_t *fill = sim_xcalloc(n, sizeof *fill);
  for (size_t e = 0; e < ne; e++) g->out_off[g->deps[e] + 1]++;
  for (size_t i = 0; i < n; i++) g->out_off[i + 1] += g->out_off[i];
  for (size_t i = 0; i < n; i++)
    for (size_t e = g->dep_off[i]; e < g->dep_off[i + 1]; e++) {
      size_t d = g->deps[e];
      g->outs[g->out_off[d] + fill[d]++] = i;
    }
  free(fill);
  g->nlevels = 0;
  for (size_t i = 0; i < n; i++) {
    size_t lv = 0;
    for (size_t e = g->dep_off[i]; e < g->dep_off[i + 1]; e++)
      if (g->level[g->deps[e]] + 1 > lv) lv = g->level[g->deps[e]] + 1;
    g->level[i] = lv;
    if (lv + 1 > g->nlevels) g->nlevels = lv + 1;
  }
  for (size_t i = n; i-- > 0;) {
    double best = 0;
    for (size_t e = g->out_off[i]; e < g->out_off[i + 1]; e++)
      if (g->bottom[g->outs[e]] > best) best = g->bottom[g->outs[e]];
    g->bottom[i] = g->cost[i] + best;
  }
}

static inline void sim_free(sim_graph *g) {
  free(g->cost);
  free(g->dep_off);
  free(g->deps);
  free(g->out_off);
  free(g->outs);
  free(g->bottom);
  free(g->level);
}

static inline double sim_work(const sim_graph *g) {
  double w = 0;
  for (size_t i = 0; i < g->n; i++) w += g->cost[i];
  return w;
}

static inline double sim_critical_path(const sim_graph *g) {
  double cp = 0;
  for (size_t i = 0; i < g->n; i++)
    if (g->bottom[i] > cp) cp = g->bottom[i];
  return cp;
}

static inline double sim_lower_bound(const sim_graph *g, int p) {
  double cp = sim_critical_path(g), w = sim_work(g) / p;
  return cp > w ? cp : w;
}

/* Is task a ahead of task b in the ready order? */
static inline int sim_before(const sim_graph *g, size_t a, size_t b) {
  return g->bottom[a] > g->bottom[b] ||
         (g->bottom[a] == g->bottom[b] && a < b);
}

/* List schedule on p slots. With only_level >= 0, schedules just the tasks
 * of that level, all ready at time 0 (for the level-by-level schedule).
 * Finishes at the same instant are all processed before the free slots are
 * filled. Small graphs: the ready set is scanned linearly. Returns the
 * makespan. */
static inline double sim_list(const sim_graph *g, int p, long only_level) {
  size_t n = g->n;
  size_t *pending = sim_xcalloc(n, sizeof *pending);
  size_t *ready = sim_xcalloc(n, sizeof *ready);
  size_t nready = 0;
  size_t *run = sim_xcalloc((size_t)p, sizeof *run);
  double *fin = sim_xcalloc((size_t)p, sizeof *fin);
  size_t nrun = 0, left = 0;
  double t = 0, end = 0;
  for (size_t i = 0; i < n; i++) {
    if (only_level >= 0) {
      if (g->level[i] != (size_t)only_level) continue;
      ready[nready++] = i;
      left++;
      continue;
    }
    pending[i] = g->dep_off[i + 1] - g->dep_off[i];
    if (!pending[i]) ready[nready++] = i;
    left++;
  }
  while (left) {
    /* Fill free slots in priority order. */
    while (nrun < (size_t)p && nready) {
      size_t best = 0;
      for (size_t k = 1; k < nready; k++)
        if (sim_before(g, ready[k], ready[best])) best = k;
      size_t v = ready[best];
      ready[best] = ready[--nready];
      run[nrun] = v;
      fin[nrun] = t + g->cost[v];
      nrun++;
    }
    /* Advance to the next finish; retire every task finishing then. */
    double next = fin[0];
    for (size_t k = 1; k < nrun; k++)
      if (fin[k] < next) next = fin[k];
    t = next;
    for (size_t k = 0; k < nrun;) {
      if (fin[k] > t) {
        k++;
        continue;
      }
      size_t v = run[k];
      run[k] = run[nrun - 1];
      fin[k] = fin[nrun - 1];
      nrun--;
      left--;
      if (t > end) end = t;
      if (only_level >= 0) continue;
      for (size_t e = g->out_off[v]; e < g->out_off[v + 1]; e++)
        if (--pending[g->outs[e]] == 0) ready[nready++] = g->outs[e];
    }
  }
  free(pending);
  free(ready);
  free(run);
  free(fin);
  return end;
}

/* Level by level: each level is list-scheduled on p slots and the next
 * starts when its slowest task is done. */
static inline double sim_levels(const sim_graph *g, int p) {
  double total = 0;
  for (size_t lv = 0; lv < g->nlevels; lv++)
    total += sim_list(g, p, (long)lv);
  return total;
}

#endif /* BENCH_SIM_H */
