/* test_main.c: runs the registered C tests; see test.h. */
#include "test.h"

#include <stdarg.h>
#include <time.h>

#define MAX_TESTS 1024

static struct {
  const char *name;
  orch_test_fn fn;
} tests[MAX_TESTS];
static int ntests;
int orch_test_failed;

void orch_test_register(const char *name, orch_test_fn fn) {
  if (ntests < MAX_TESTS) {
    tests[ntests].name = name;
    tests[ntests].fn = fn;
    ntests++;
  }
}

void orch_test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "  FAIL %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  orch_test_failed = 1;
}

static int by_name(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  return strcmp(x, y);
}

int main(int argc, char **argv) {
  int passed = 0, failed = 0;
  qsort(tests, (size_t)ntests, sizeof tests[0], by_name);
  for (int i = 0; i < ntests; i++) {
    if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
    orch_test_failed = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tests[i].fn();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("%s %s (%.1f ms)\n", orch_test_failed ? "FAIL" : "ok  ",
           tests[i].name, ms);
    fflush(stdout);
    if (orch_test_failed) failed++;
    else passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
