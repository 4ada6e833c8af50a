/* fanout.h: what bench/llm_bench.c and bench/llm_bare.c both measure with:
 * a monotonic clock, this process's RSS and CPU time, and the summary of a
 * fan-out's latencies and completion times. Header-only (static). */
#ifndef ORCH_BENCH_FANOUT_H
#define ORCH_BENCH_FANOUT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* VmRSS or VmHWM from /proc/self/status, in KiB. */
static inline long proc_kib(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t n = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, n) == 0 && line[n] == ':') {
      v = atol(line + n + 1);
      break;
    }
  fclose(f);
  return v;
}

/* This process's user + system CPU time so far, in seconds. */
static inline double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Steady state: the completion rate (per s) between the 10th and the 90th
 * percentile of n completions, end_ms in completion order (the opening of
 * the connections and the last wave's tail left out); 0 when unknown. */
static inline double steady_rate(const double *end_ms, int n) {
  int i10 = n / 10, i90 = (n * 9) / 10;
  return end_ms[i90] > end_ms[i10]
             ? (i90 - i10) / ((end_ms[i90] - end_ms[i10]) / 1e3)
             : 0;
}

#endif
