/* store_bench.c: step records per second into PostgreSQL through the
 * store's writer, side by side with (a) the naive pattern (one new
 * connection, one INSERT and its commit per record) and (b) psql \copy of
 * the same rows (a practical ceiling), plus the latency a step pays to hand
 * a record over (p50, p99, max of orch__store_put).
 * Usage: store_bench URL [N] ; prints a markdown table. */
#include "orch_int.h"

#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void uuid_new(char out[37]) {
  unsigned char b[16];
  FILE *f = fopen("/dev/urandom", "rb");
  if (!f || fread(b, 1, 16, f) != 16) exit(1);
  fclose(f);
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
           b[11], b[12], b[13], b[14], b[15]);
}

#define OUTPUT "exit 0; 118 lines of output, 3 files changed, tests passed"
#define PARAMS "{\"id\":\"s\",\"kind\":\"shell\",\"cmd\":\"make test\"}"

static void fill(orch__rec *r, const char *sid, const char *id, int i) {
  memset(r, 0, sizeof *r);
  r->type = ORCH__REC_STEP;
  r->u.step.session_id = sid;
  r->u.step.step_id = id;
  r->u.step.step_index = i;
  r->u.step.kind = "shell";
  r->u.step.deps_json = "[\"prev\"]";
  r->u.step.params_json = PARAMS;
  r->u.step.status = "passed";
  r->u.step.attempts = 1;
  r->u.step.output = OUTPUT;
  r->u.step.tokens_in = ORCH__NULL_I64;
  r->u.step.tokens_out = ORCH__NULL_I64;
  r->u.step.cost = NAN;
  r->u.step.generation = 1;
  r->u.step.started_ms = orch__store_wall_ms();
  r->u.step.finished_ms = r->u.step.started_ms + 5;
}

/* Puts n records; pace_us > 0 spaces them. Returns records/s from the
 * first put to the flush; latencies (us) into lat. */
static double run_writer(const char *url, int n, double pace_us, double *lat,
                         const char *spool, orch__store_stats *st,
                         bool twice) {
  orch__store *s = NULL;
  char err[512];
  orch__store_opts o = {0};
  o.spool_path = spool;
  if (getenv("ORCH_BENCH_BATCH")) o.batch = (size_t)atoi(getenv("ORCH_BENCH_BATCH"));
  if (pace_us == 0) o.queue_cap = (size_t)n + 1; /* measure the db, not the spool */
  if (orch__store_open(&s, url, &o, err, sizeof err) != ORCH_OK) {
    fprintf(stderr, "open: %s\n", err);
    exit(1);
  }
  orch__store_flush(s, 30000); /* connected and migrated */
  char sid[37];
  uuid_new(sid);
  double t0 = now_s();
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "step-%d", i);
    orch__rec r;
    /* twice: every step is recorded when it starts and when it ends (the
     * second record is an update of the first) */
    int step = twice ? i / 2 : i;
    if (twice) snprintf(id, sizeof id, "step-%d", step);
    fill(&r, sid, id, step);
    if (twice && i % 2 == 0) r.u.step.status = "in_progress";
    if (pace_us > 0)
      while ((now_s() - t0) * 1e6 < i * pace_us) {
      }
    double a = now_s();
    if (orch__store_put(s, &r) != ORCH_OK) fprintf(stderr, "put failed\n");
    lat[i] = (now_s() - a) * 1e6;
  }
  if (orch__store_flush(s, 600000) != ORCH_OK) fprintf(stderr, "flush timed out\n");
  double dt = now_s() - t0;
  orch__store_stats_get(s, st);
  orch__store_close(s);
  return n / dt;
}

static const char *INSERT_SQL =
    "INSERT INTO orch_run_steps (session_id, step_id, step_index, kind, deps, "
    "params, status, attempts, output, generation, started_at, finished_at) "
    "VALUES ($1::uuid, $2, $3, 'shell', '[\"prev\"]', $4::jsonb, 'passed', 1, "
    "$5, 1, now(), now())";

static double run_naive(const char *url, int n, double max_s, int *done) {
  char sid[37];
  uuid_new(sid);
  double t0 = now_s();
  int i;
  for (i = 0; i < n && now_s() - t0 < max_s; i++) {
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
      fprintf(stderr, "naive: %s", PQerrorMessage(c));
      exit(1);
    }
    char id[32], idx[16];
    snprintf(id, sizeof id, "step-%d", i);
    snprintf(idx, sizeof idx, "%d", i);
    const char *pv[5] = {sid, id, idx, PARAMS, OUTPUT};
    PGresult *r = PQexecParams(c, INSERT_SQL, 5, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
      fprintf(stderr, "naive: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
  }
  *done = i;
  return i / (now_s() - t0);
}

static double run_copy(const char *url, int n, const char *dir) {
  char sid[37], path[600];
  uuid_new(sid);
  snprintf(path, sizeof path, "%s/copy.tsv", dir);
  FILE *f = fopen(path, "w");
  if (!f) exit(1);
  for (int i = 0; i < n; i++)
    fprintf(f, "%s\tstep-%d\t%d\tshell\t[\"prev\"]\t%s\tpassed\t1\t%s\t1\t"
               "2026-01-01 00:00:00+00\t2026-01-01 00:00:00+00\n",
            sid, i, i, PARAMS, OUTPUT);
  fclose(f);
  char cmd[1400];
  snprintf(cmd, sizeof cmd,
           "\\copy orch_run_steps (session_id, step_id, step_index, kind, deps, "
           "params, status, attempts, output, generation, started_at, "
           "finished_at) FROM '%s'", path);
  double t0 = now_s();
  pid_t pid = fork();
  if (pid == 0) {
    execlp("psql", "psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", url,
           "-c", cmd, (char *)NULL);
    _exit(127);
  }
  int status;
  waitpid(pid, &status, 0);
  double dt = now_s() - t0;
  unlink(path);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "psql \\copy failed\n");
    return 0;
  }
  return n / dt;
}

static double median3(double a, double b, double c) {
  double v[3] = {a, b, c};
  qsort(v, 3, sizeof v[0], cmp_d);
  return v[1];
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: store_bench URL [N]\n");
    return 2;
  }
  const char *url = argv[1];
  int n = argc > 2 ? atoi(argv[2]) : 100000;
  char dir[] = "/tmp/orch-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char spool[600];
  snprintf(spool, sizeof spool, "%s/bench.spool", dir);
  char err[512];
  if (orch_migrate(url, 0, NULL, NULL, err, sizeof err) != ORCH_OK) {
    fprintf(stderr, "migrate: %s\n", err);
    return 1;
  }
  double *lat = malloc(sizeof(double) * (size_t)n);
  double *all = malloc(sizeof(double) * (size_t)n * 3);
  orch__store_stats st;
  unsigned long long dropped = 0;
  double copy[3], w[3], w2[3];
  /* three rounds, interleaved, medians reported: this machine is noisy */
  for (int k = 0; k < 3; k++) {
    copy[k] = run_copy(url, n, dir);
    w[k] = run_writer(url, n, 0, lat, spool, &st, false);
    memcpy(all + (size_t)k * n, lat, sizeof(double) * (size_t)n);
    dropped += st.records_dropped_total;
    w2[k] = run_writer(url, n, 0, lat, spool, &st, true);
    dropped += st.records_dropped_total;
  }
  size_t na = (size_t)n * 3;
  qsort(all, na, sizeof *all, cmp_d);
  double p50 = all[na / 2], p99 = all[na * 99 / 100], mx = all[na - 1];
  /* a paced run: 20,000 records at 20,000/s, the latency a step sees */
  int np = n < 20000 ? n : 20000;
  run_writer(url, np, 50.0, lat, spool, &st, false);
  dropped += st.records_dropped_total;
  qsort(lat, (size_t)np, sizeof *lat, cmp_d);
  double pp50 = lat[np / 2], pp99 = lat[(size_t)np * 99 / 100],
         pmx = lat[np - 1];
  int nn = 0;
  double naive = run_naive(url, n, 5.0, &nn);
  double c = median3(copy[0], copy[1], copy[2]);
  double wm = median3(w[0], w[1], w[2]), w2m = median3(w2[0], w2[1], w2[2]);

  printf("| method (median of 3 runs of %d records) | records/s | vs COPY |\n", n);
  printf("| --- | ---: | ---: |\n");
  printf("| store writer, one record per step | %.0f | %.0f%% |\n", wm,
         100 * wm / c);
  printf("| store writer, two records per step (start, then finish: upsert) | %.0f | %.0f%% |\n",
         w2m, 100 * w2m / c);
  printf("| (a) naive: connect + INSERT + commit per record (%d in 5 s) | %.0f | %.2f%% |\n",
         nn, naive, 100 * naive / c);
  printf("| (b) psql \\copy of the same rows (ceiling) | %.0f | 100%% |\n", c);
  printf("\n| put latency (added per step) | p50 | p99 | max |\n");
  printf("| --- | ---: | ---: | ---: |\n");
  printf("| flat out (%d puts back to back, 3 runs) | %.2f us | %.2f us | %.0f us |\n",
         n, p50, p99, mx);
  printf("| paced (%d puts at 20,000/s) | %.2f us | %.2f us | %.0f us |\n", np,
         pp50, pp99, pmx);
  printf("\nrecords dropped: %llu\n", dropped);
  free(lat);
  free(all);
  rmdir(dir);
  return 0;
}
