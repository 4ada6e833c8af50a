/* pattern_bench.c: the shipped scripts' pattern-heavy hooks through the
 * policy engine (policy.c), us per call, median of runs: gap.parse on a
 * 3-task reply and on 50-task plans in two dialects, gap.answer,
 * gap.should_plan, scrub.scrub, retry.decide and agents.route, each a
 * C -> Lua call (orch__policy_call) with a JSON argument, as the core
 * makes them. For comparing a change of the sandbox's string functions
 * (lpattern.c): build it against each liborch.a and run both.
 *
 * Build and run (after `make`), from the repository root:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -pthread -Iruntime $(pkg-config --cflags \
 *     lua5.4 libuv jansson) bench/pattern_bench.c build/liborch.a \
 *     $(pkg-config --libs lua5.4 libuv libcurl libpq sqlite3 jansson \
 *     libmicrohttpd libcrypto) -lm -o build/pattern_bench
 *   ./build/pattern_bench [scripts-dir] [--quick]
 * Prints one "name value unit" line per hook. */
#include "orch_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNS 7

static double now_us(void) { return (double)orch__now_ns() / 1e3; }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A text grown by printf-style appends (aborts when memory runs out). */
typedef struct text {
  char *p;
  size_t len, cap;
} text;

static void add(text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p ? t->p + t->len : NULL, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) abort();
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    t->cap = (t->cap + (size_t)n + 1) * 2;
    t->p = realloc(t->p, t->cap);
    if (!t->p) abort();
  }
}

typedef struct workload {
  const char *name, *module, *fn;
  json_t *arg;
} workload;

int main(int argc, char **argv) {
  const char *dir = "scripts";
  bool quick = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = true;
    else dir = argv[i];
  }
  char err[1024];
  orch__config c;
  orch__config_defaults(&c);
  free(c.scripts_dir);
  c.scripts_dir = strdup(dir);
  orch__policy *p = NULL;
  if (orch__policy_new(&p, &c, err, sizeof err) != ORCH_OK) {
    fprintf(stderr, "pattern_bench: %s\n", err);
    return 1;
  }
  orch__lstate *s = orch__lstate_new(p, err, sizeof err);
  if (!s) {
    fprintf(stderr, "pattern_bench: %s\n", err);
    return 1;
  }
  text small = {0}, md = {0}, d2 = {0}, ans = {0}, req = {0}, scrub = {0};
  add(&small, "<think>two fetches, then a report</think>\n<plan>\n"
              "Task 1: Fetch user data | Dependencies: none\n"
              "Task 2: Fetch orders | Dependencies: none\n"
              "Task 3: Generate report | Dependencies: Task 1, Task 2\n"
              "</plan>");
  add(&md, "<think>A plan of fifty steps, each on the two before it."
           "</think>\n<plan>\n## Tasks\n\n");
  for (int i = 1; i <= 50; i++) {
    add(&md, "%d. **Task %d**: Fetch the `%d` report for *region %d*, "
             "then summarize it (about %d words) | Dependencies: ",
        i, i, i, i, 100 + i);
    if (i == 1) add(&md, "none\n");
    else if (i == 2) add(&md, "Task 1\n");
    else add(&md, "Task %d, Task %d\n", i - 2, i - 1);
  }
  add(&md, "</plan>\n");
  add(&d2, "<plan>\n");
  for (int i = 1; i <= 50; i++) {
    add(&d2, "T%d: Search the archive for item %d and list its owners\n", i,
        i);
    if (i < 3) add(&d2, "- Dependencies: none\n");
    else add(&d2, "- Dependencies: T%d, T%d\n", i / 2, i - 1);
  }
  add(&d2, "</plan>\n");
  add(&ans, "<think>");
  for (int i = 0; i < 40; i++)
    add(&ans, "Step %d of the reasoning weighs the results once more. ", i);
  add(&ans, "</think>\n<answer>");
  for (int i = 0; i < 40; i++)
    add(&ans, "Finding %d: the totals agree with the report.\n", i);
  add(&ans, "</answer>\n");
  add(&req, "Please do the following for the quarterly review:\n"
            "- fetch the sales numbers for every region\n"
            "- compare them with last year's\n"
            "- write a one-page summary for the board\n"
            "Keep it short, and mention anything unusual (1) in sales and "
            "(2) in returns.");
  for (int i = 0; i < 8; i++)
    add(&scrub, "Request %d from bob%d@example.com at 10.0.%d.%d failed: "
                "Authorization: Bearer abc.def-ghi_jkl%d, api_key=\"sk-"
                "abcdefghijklmnop%d\", call +1 (555) 123-45%02d; version "
                "1.2.%d on 2024-01-15, 12345 items. ",
        i, i, i, i + 1, i, i, i, i);
  workload w[] = {
      {"gap_parse_3_tasks", "policies.gap", "parse", json_string(small.p)},
      {"gap_parse_50_tasks_markdown", "policies.gap", "parse",
       json_string(md.p)},
      {"gap_parse_50_tasks_dialect2", "policies.gap", "parse",
       json_string(d2.p)},
      {"gap_answer_5kb", "policies.gap", "answer", json_string(ans.p)},
      {"gap_should_plan", "policies.gap", "should_plan",
       json_pack("{s:s, s:s}", "request", req.p, "tier", "local")},
      {"scrub_1kb", "policies.scrub", "scrub", json_string(scrub.p)},
      {"retry_decide_json_body", "policies.retry", "decide",
       json_pack("{s:i, s:i, s:s}", "attempt", 1, "status", 400, "body",
                 "{\"error\": {\"message\": \"Invalid \\\"model\\\" "
                 "parameter: bad key\", \"type\": \"invalid_request_error\","
                 " \"code\": \"model_not_found\"}}")},
      {"agents_route", "routing.agents", "route",
       json_pack("{s:s}", "name", "find_user_ids-in--the_archive")},
  };
  int rc = 0;
  for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
    json_t *out = NULL;
    if (orch__policy_call(s, w[i].module, w[i].fn, w[i].arg, &out, err,
                          sizeof err) != ORCH_OK) {
      fprintf(stderr, "pattern_bench: %s: %s\n", w[i].name, err);
      rc = 1;
      continue;
    }
    json_decref(out);
    /* about 200 ms a run at most, at least 20 calls */
    double t0 = now_us();
    int probe = 0;
    while (now_us() - t0 < 20000 && probe < 100000) {
      orch__policy_call(s, w[i].module, w[i].fn, w[i].arg, &out, err,
                        sizeof err);
      json_decref(out);
      probe++;
    }
    int n = probe * (quick ? 2 : 10);
    if (n < 20) n = 20;
    double per[RUNS];
    int runs = quick ? 3 : RUNS;
    for (int r = 0; r < runs; r++) {
      t0 = now_us();
      for (int k = 0; k < n; k++) {
        orch__policy_call(s, w[i].module, w[i].fn, w[i].arg, &out, err,
                          sizeof err);
        json_decref(out);
      }
      per[r] = (now_us() - t0) / n;
    }
    qsort(per, (size_t)runs, sizeof per[0], cmp_double);
    printf("%s %.2f us (median of %d runs x %d calls; min %.2f)\n",
           w[i].name, per[runs / 2], runs, n, per[0]);
    json_decref(w[i].arg);
  }
  free(small.p);
  free(md.p);
  free(d2.p);
  free(ans.p);
  free(req.p);
  free(scrub.p);
  orch__lstate_free(s);
  orch__policy_free(p);
  orch__config_deinit(&c);
  return rc;
}
