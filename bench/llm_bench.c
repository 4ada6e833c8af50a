/* llm_bench.c: the LLM fan-out benchmark. `llm_bench serve PORT [THREADS]`
 * runs the project's mock LLM server (orch_mock_start; THREADS sets
 * ORCH_MOCK_THREADS) in this process until killed, so the client measured
 * by `llm_bench run` shares nothing with it but the machine. `llm_bench run
 * URL N C LATENCY_MS [warm]` sends N chat completions through llm.c (JSON
 * built and parsed, usage read) with C in flight at once and prints one
 * JSON line (with `warm`, an untimed fan-out of C calls first opens the
 * connections, so the timed calls reuse them): throughput against the ideal (C / latency), added latency
 * percentiles, peak RSS per request in flight, the client's CPU time per
 * request and, when LLM_BENCH_MOCK_PID names the mock's process, the
 * mock's (from /proc/PID/task/TID/schedstat, in ns). bench/llm.sh runs it
 * beside bench/llm_fetch.mjs (Node.js fetch) against the same mock. */
#include "orch_int.h"
#include "fanout.h"

#include <dirent.h>
#include <math.h>
#include <sys/resource.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU time of every thread of process pid so far, in ns (-1: unknown). */
static int64_t proc_cpu_ns(long pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/task", pid);
  DIR *d = opendir(path);
  if (!d) return -1;
  int64_t sum = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[128];
    snprintf(p, sizeof p, "/proc/%ld/task/%.32s/schedstat", pid, de->d_name);
    FILE *f = fopen(p, "r");
    long long ns = 0;
    if (f) {
      if (fscanf(f, "%lld", &ns) == 1) sum += ns;
      fclose(f);
    }
  }
  closedir(d);
  return sum;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static int serve(int port, const char *threads) {
  orch_mock *m = NULL;
  if (threads && *threads) setenv("ORCH_MOCK_THREADS", threads, 1);
  char err[256];
  if (orch_mock_start(&m, "127.0.0.1", port, err, sizeof err)) {
    fprintf(stderr, "llm_bench serve: %s\n", err);
    return 1;
  }
  printf("%d\n", orch_mock_port(m));
  fflush(stdout);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  while (!stop) pause();
  orch_mock_free(m);
  return 0;
}

typedef struct bench bench;
typedef struct slot { /* one request in flight */
  bench *b;
  int64_t t0;
} slot;

struct bench {
  orch__llm *l;
  uv_loop_t *loop;
  int n, c, started, done, failed;
  double *lat_ms;
  double *end_ms; /* completion times since the fan-out began, in order */
  int64_t t_begin;
  slot *slots;
  char prompt[64];
  char first_error[512];
};

static void start_one(slot *s);

static void on_done(orch__llm_call *call, void *ud) {
  slot *s = ud;
  bench *b = s->b;
  const orch__llm_result *r = orch__llm_call_result(call);
  int64_t t = now_ns();
  b->end_ms[b->done] = (double)(t - b->t_begin) / 1e6;
  b->lat_ms[b->done++] = (double)(t - s->t0) / 1e6;
  if (!r || r->code != ORCH_OK) {
    if (!b->failed++ && r && r->error)
      snprintf(b->first_error, sizeof b->first_error, "%s", r->error);
  }
  orch__llm_call_free(call);
  if (b->started < b->n) start_one(s);
  else if (b->done == b->n) uv_stop(b->loop);
}

static void start_one(slot *s) {
  bench *b = s->b;
  b->started++;
  s->t0 = now_ns();
  orch__llm_req rq = {.tier = "bench", .prompt = b->prompt, .stream = 0,
                      .done = on_done, .ud = s};
  orch__llm_call *call;
  orch__llm_call_start(b->l, &rq, &call);
}

/* Runs n calls, c at a time, to the end. */
static void fanout(bench *b, int n) {
  b->n = n;
  b->started = b->done = 0;
  b->t_begin = now_ns();
  for (int i = 0; i < b->c && i < n; i++) {
    b->slots[i].b = b;
    start_one(&b->slots[i]);
  }
  uv_run(b->loop, UV_RUN_DEFAULT);
}

static int run(const char *base, int n, int c, int latency, bool warm) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char conf[1024], pt[64] = "";
  /* LLM_BENCH_PARSE_THREADS: llm.parse_threads (unset: llm.c's default) */
  const char *pts = getenv("LLM_BENCH_PARSE_THREADS");
  if (pts && *pts) snprintf(pt, sizeof pt, ",\"parse_threads\":%d", atoi(pts));
  snprintf(conf, sizeof conf,
           "{\"llm\":{\"max_attempts\":1,\"cooldown\":{\"failures\":0}%s},"
           "\"tiers\":{\"bench\":{\"base_url\":\"%s/v1\",\"model\":"
           "\"bench+fault=latency=%d\"}}}",
           pt, base, latency);
  json_t *sec = json_loads(conf, 0, NULL);
  bench b = {.n = n, .c = c, .loop = &loop};
  char err[256];
  if (orch__llm_new_json(&b.l, sec, &loop, err, sizeof err)) {
    fprintf(stderr, "llm_bench: %s\n", err);
    return 1;
  }
  json_decref(sec);
  snprintf(b.prompt, sizeof b.prompt, "benchmark request");
  b.lat_ms = calloc((size_t)(n > c ? n : c), sizeof *b.lat_ms);
  b.end_ms = calloc((size_t)(n > c ? n : c), sizeof *b.end_ms);
  b.slots = calloc((size_t)c, sizeof *b.slots);
  long rss0 = proc_kib("VmRSS");
  if (warm) {
    fanout(&b, c);
    if (b.failed) fprintf(stderr, "llm_bench: warm-up: %d failed\n", b.failed);
    b.failed = 0;
  }
  const char *mp = getenv("LLM_BENCH_MOCK_PID");
  long mock_pid = mp ? atol(mp) : 0;
  int64_t mcpu0 = mock_pid > 0 ? proc_cpu_ns(mock_pid) : -1;
  int64_t t0 = now_ns();
  double cpu0 = cpu_s();
  fanout(&b, n);
  double wall = (double)(now_ns() - t0) / 1e9;
  double cpu = cpu_s() - cpu0;
  int64_t mcpu1 = mcpu0 >= 0 ? proc_cpu_ns(mock_pid) : -1;
  long hwm = proc_kib("VmHWM");
  char mock_cpu[64] = "";
  if (mcpu0 >= 0 && mcpu1 >= mcpu0)
    snprintf(mock_cpu, sizeof mock_cpu, ",\"mock_cpu_us_per_req\":%.1f",
             (double)(mcpu1 - mcpu0) / 1e3 / n);
  orch__llm_free(b.l);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  double steady = steady_rate(b.end_ms, n);
  qsort(b.lat_ms, (size_t)n, sizeof *b.lat_ms, cmp_double);
  double p50 = b.lat_ms[n / 2] - latency, p99 = b.lat_ms[(n * 99) / 100] - latency;
  double tput = n / wall, ideal = c / (latency / 1000.0);
  double kib_per = (double)(hwm - rss0) / (c < n ? c : n);
  printf("{\"client\":\"orchestrate (libcurl multi + libuv)\",\"warm\":%s,"
         "\"requests\":%d,"
         "\"concurrency\":%d,\"latency_ms\":%d,\"failed\":%d,"
         "\"wall_s\":%.3f,\"throughput\":%.0f,\"ideal\":%.0f,"
         "\"ratio\":%.3f,\"steady_ratio\":%.3f,"
         "\"added_p50_ms\":%.3f,\"added_p99_ms\":%.3f,"
         "\"rss_base_kib\":%ld,\"rss_peak_kib\":%ld,"
         "\"kib_per_inflight\":%.1f,\"cpu_us_per_req\":%.1f%s%s%s%s}\n",
         warm ? "true" : "false", n, c, latency, b.failed, wall, tput, ideal,
         tput / ideal, steady / ideal, p50, p99,
         rss0, hwm, kib_per, cpu * 1e6 / n, mock_cpu,
         b.failed ? ",\"first_error\":\"" : "",
         b.failed ? b.first_error : "", b.failed ? "\"" : "");
  free(b.lat_ms);
  free(b.end_ms);
  free(b.slots);
  return b.failed ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "serve") == 0)
    return serve(atoi(argv[2]), argc >= 4 ? argv[3] : NULL);
  if (argc >= 6 && strcmp(argv[1], "run") == 0)
    return run(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]),
               argc >= 7 && strcmp(argv[6], "warm") == 0);
  fprintf(stderr,
          "usage: llm_bench serve PORT [THREADS]\n"
          "       llm_bench run BASE_URL N CONCURRENCY LATENCY_MS [warm]\n");
  return 2;
}
