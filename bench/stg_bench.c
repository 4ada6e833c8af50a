/* stg_bench.c is benchmark (e) of issue 2: graphs of the Standard Task
 * Graph Set (Tobita and Kasahara, 2002) run as sleep steps (one time unit =
 * UNIT_MS) with at most P in flight; the measured makespan is set against
 * the published optimum for P (opt/Case<N>_<P>_OPT.csv; where optimality
 * was never proven the best known value is used and the line says so) and
 * against the runtime's own policy simulated offline (sim.h). The dummy
 * entry and exit tasks (cost 0) are dropped.
 * Output: one line per graph, then the average ratio, as
 *   stg FILE P P measured M opt O sim S ratio R [best-known]
 *   avg P P graphs G over_opt X sim_over_opt Y
 * Usage: stg_bench STG_DIR P SIZE [count=20] */
#include "orch.h"
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNIT_MS 10.0

/* Reads one .stg file; tasks 1..n become 0..n-1. Returns 0 on success. */
static int read_stg(const char *path, sim_graph *g) {
  FILE *f = fopen(path, "r");
  long n, id, cost, np, pred;
  int rc = -1;
  if (!f) return -1;
  if (fscanf(f, "%ld", &n) != 1 || n <= 0 || n > 1000000) goto done;
  g->n = (size_t)n;
  g->cost = sim_xcalloc(g->n, sizeof *g->cost);
  g->dep_off = sim_xcalloc(g->n + 1, sizeof *g->dep_off);
  size_t cap = 4 * g->n, ne = 0;
  g->deps = sim_xcalloc(cap, sizeof *g->deps);
  for (long t = 0; t < n + 2; t++) {
    if (fscanf(f, "%ld %ld %ld", &id, &cost, &np) != 3 || id != t) goto done;
    if (t >= 1 && t <= n) {
      g->cost[t - 1] = (double)cost * UNIT_MS;
      g->dep_off[t - 1] = ne;
    }
    for (long k = 0; k < np; k++) {
      if (fscanf(f, "%ld", &pred) != 1 || pred < 0 || pred >= t) goto done;
      if (t < 1 || t > n || pred == 0) continue; /* edges of the dummies */
      if (ne == cap) {
        cap *= 2;
        size_t *nd = realloc(g->deps, cap * sizeof *nd);
        if (!nd) abort();
        g->deps = nd;
      }
      g->deps[ne++] = (size_t)(pred - 1);
    }
  }
  g->dep_off[g->n] = ne;
  sim_prepare(g);
  rc = 0;
done:
  fclose(f);
  return rc;
}

/* The optimum (or best known) makespan in time units for graph `name`
 * ("50/rand0000.stg") on p processors; -1 when absent. */
static double optimum(const char *dir, size_t size, int p, const char *name,
                      int *proven) {
  char path[4096], line[512];
  snprintf(path, sizeof path, "%s/opt/Case%zu_%d_OPT.csv", dir, size, p);
  FILE *f = fopen(path, "r");
  double v = -1;
  if (!f) return -1;
  size_t len = strlen(name);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, name, len) != 0 || line[len] != ',') continue;
    double a = -1, b = -1;
    int lp = 0;
    int k = sscanf(line + len + 1, "%d,%lf,%lf", &lp, &a, &b);
    if (k == 2) { v = a; *proven = 1; }
    else if (k == 3) { v = b; *proven = 0; }
    break;
  }
  fclose(f);
  return v;
}

static double run_sleeps(orch_runtime *rt, const sim_graph *s) {
  orch_graph *g = NULL;
  char id[32], dep[32], err[512];
  double ms = -1;
  if (orch_graph_new(&g)) return -1;
  for (size_t i = 0; i < s->n; i++) {
    snprintf(id, sizeof id, "t%zu", i + 1);
    if (orch_graph_add_sleep(g, id, s->cost[i])) goto done;
    for (size_t e = s->dep_off[i]; e < s->dep_off[i + 1]; e++) {
      snprintf(dep, sizeof dep, "t%zu", s->deps[e] + 1);
      if (orch_graph_depend(g, id, dep)) goto done;
    }
  }
  if (orch_run(rt, g, err, sizeof err)) {
    fprintf(stderr, "stg_bench: run: %s\n", err);
    goto done;
  }
  ms = orch_graph_makespan_ms(g);
done:
  orch_graph_free(g);
  return ms;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: stg_bench STG_DIR P SIZE [count]\n");
    return 64;
  }
  const char *dir = argv[1];
  int p = atoi(argv[2]);
  size_t size = strtoul(argv[3], NULL, 10);
  int count = argc > 4 ? atoi(argv[4]) : 20;
  char err[512], pv[16], name[64], path[4096];
  orch_runtime *rt = NULL;
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) {
    fprintf(stderr, "stg_bench: %s\n", err);
    return 1;
  }
  snprintf(pv, sizeof pv, "%d", p);
  if (orch_runtime_set(rt, "max_parallel", pv, err, sizeof err)) {
    fprintf(stderr, "stg_bench: %s\n", err);
    return 1;
  }
  double sum = 0, sum_sim = 0;
  int counted = 0;
  for (int k = 0; k < count; k++) {
    snprintf(name, sizeof name, "%zu/rand%04d.stg", size, k);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    sim_graph g = {0};
    if (read_stg(path, &g)) {
      fprintf(stderr, "stg_bench: cannot read %s\n", path);
      return 1;
    }
    int proven = 1;
    double opt = optimum(dir, size, p, name, &proven);
    if (opt < 0) {
      fprintf(stderr, "stg_bench: no optimum for %s on %d\n", name, p);
      return 1;
    }
    opt *= UNIT_MS;
    double sim = sim_list(&g, p, -1);
    double m = run_sleeps(rt, &g);
    if (m < 0) return 1;
    printf("stg %s P %d measured %.1f opt %.1f sim %.1f ratio %.4f%s\n", name,
           p, m, opt, sim, m / opt, proven ? "" : " best-known");
    fflush(stdout);
    sum += m / opt - 1;
    sum_sim += sim / opt - 1;
    counted++;
    sim_free(&g);
  }
  printf("avg P %d size %zu graphs %d over_opt %.4f sim_over_opt %.4f\n", p,
         size, counted, sum / counted, sum_sim / counted);
  orch_runtime_free(rt);
  return 0;
}
