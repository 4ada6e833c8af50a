/* llm_bare.c: the floor under bench/llm_bench.c. The same fan-out (N chat
 * completions, C in flight, POST of the same request body to the same
 * mock) with libcurl's multi_socket interface on a bare epoll loop: no
 * libuv, no llm.c, no JSON built or parsed (the body is a constant string,
 * the answer is counted, not read). Transfers spread over multi handles
 * the way runtime/http.c spreads them (SHARD_FILL in flight on each, at
 * most MAX_SHARDS; BARE_SHARDS=N forces N): with one multi handle libcurl
 * 7.88 walks every cached connection twice per transfer, 6 us of CPU a
 * request at 1,000 in flight, and the floor would not be one. What
 * orchestrate's client costs beyond this is its own. Usage: llm_bare URL N
 * C LATENCY_MS [warm]; prints one JSON line with the fields of llm_bench.
 * bench/llm.sh runs it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "fanout.h"

#define SHARD_FILL 128 /* as HTTP_SHARD_FILL in runtime/http.c */
#define MAX_SHARDS 64

typedef struct fan fan;

/* One multi handle and its timer. */
typedef struct shard {
  fan *f;
  CURLM *multi;
  uint32_t idx;
  int64_t due_ns; /* curl's timer as a deadline (now_ns): -1 none */
} shard;

typedef struct slot {
  CURL *e;
  shard *sh;
  int64_t t0;
  size_t got;
} slot;

struct fan {
  shard sh[MAX_SHARDS];
  int nsh;
  int ep;
  int n, started, done, failed;
  int64_t t_begin;
  double *lat_ms, *end_ms;
  struct curl_slist *hdrs;
  char url[512];
  char body[256];
};

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  (void)p;
  ((slot *)ud)->got += size * n;
  return size * n;
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud,
                     void *sockp) {
  shard *sh = ud;
  fan *f = sh->f;
  (void)e;
  /* the event names the shard and the socket */
  struct epoll_event ev = {.data.u64 = (uint64_t)sh->idx << 32 | (uint32_t)fd};
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(f->ep, EPOLL_CTL_DEL, fd, NULL);
    curl_multi_assign(sh->multi, fd, NULL);
    return 0;
  }
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (sockp) {
    epoll_ctl(f->ep, EPOLL_CTL_MOD, fd, &ev);
  } else {
    epoll_ctl(f->ep, EPOLL_CTL_ADD, fd, &ev);
    curl_multi_assign(sh->multi, fd, sh); /* any non-NULL: registered */
  }
  return 0;
}

/* curl's timer is one-shot: it runs out once, and curl says when it
 * wants another (a loop that kept polling with a stale 0 would spin). */
static int on_timer(CURLM *m, long timeout_ms, void *ud) {
  (void)m;
  ((shard *)ud)->due_ns =
      timeout_ms < 0 ? -1 : now_ns() + (int64_t)timeout_ms * 1000000;
  return 0;
}

static void start(fan *f, slot *s) {
  f->started++;
  s->t0 = now_ns();
  s->got = 0;
  curl_multi_add_handle(s->sh->multi, s->e);
}

static void reap(fan *f, shard *sh) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(sh->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    slot *s = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
    long code = 0;
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
    if (m->data.result != CURLE_OK || code != 200 || s->got == 0) f->failed++;
    int64_t t = now_ns();
    f->end_ms[f->done] = (double)(t - f->t_begin) / 1e6;
    f->lat_ms[f->done++] = (double)(t - s->t0) / 1e6;
    curl_multi_remove_handle(sh->multi, m->easy_handle);
    if (f->started < f->n) start(f, s);
  }
}

/* n calls, c at a time (slots), to the end. */
static void fanout(fan *f, slot *slots, int c, int n) {
  f->n = n;
  f->started = f->done = 0;
  f->t_begin = now_ns();
  for (int i = 0; i < c && i < n; i++) start(f, &slots[i]);
  struct epoll_event evs[1024];
  int running;
  while (f->done < n) {
    int wait = 1000;
    int64_t now = now_ns();
    for (int j = 0; j < f->nsh; j++) {
      if (f->sh[j].due_ns < 0) continue;
      int64_t left = f->sh[j].due_ns - now;
      int w = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
      if (w < wait) wait = w;
    }
    int k = epoll_wait(f->ep, evs, 1024, wait);
    now = now_ns();
    for (int j = 0; j < f->nsh; j++) {
      shard *sh = &f->sh[j];
      if (sh->due_ns < 0 || now < sh->due_ns) continue;
      sh->due_ns = -1;
      curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
      reap(f, sh);
    }
    for (int i = 0; i < k; i++) {
      int fl = 0;
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) fl |= CURL_CSELECT_IN;
      if (evs[i].events & EPOLLOUT) fl |= CURL_CSELECT_OUT;
      shard *sh = &f->sh[evs[i].data.u64 >> 32];
      curl_multi_socket_action(sh->multi, (curl_socket_t)(uint32_t)evs[i].data.u64,
                               fl, &running);
      reap(f, sh);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: llm_bare URL N C LATENCY_MS [warm]\n");
    return 2;
  }
  int n = atoi(argv[2]), c = atoi(argv[3]), latency = atoi(argv[4]);
  int warm = argc > 5 && strcmp(argv[5], "warm") == 0;
  if (n <= 0 || c <= 0 || latency <= 0) return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  static fan f; /* 64 shards: not on the stack */
  snprintf(f.url, sizeof f.url, "%s/v1/chat/completions", argv[1]);
  snprintf(f.body, sizeof f.body,
           "{\"model\":\"bench+fault=latency=%d\",\"messages\":[{\"role\":"
           "\"user\",\"content\":\"benchmark request\"}],\"max_tokens\":1024}",
           latency);
  f.hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  f.hdrs = curl_slist_append(f.hdrs, "Accept: application/json");
  f.ep = epoll_create1(EPOLL_CLOEXEC);
  const char *bs = getenv("BARE_SHARDS");
  f.nsh = bs && atoi(bs) > 0 ? atoi(bs) : (c + SHARD_FILL - 1) / SHARD_FILL;
  if (f.nsh > MAX_SHARDS) f.nsh = MAX_SHARDS;
  for (int j = 0; j < f.nsh; j++) {
    shard *sh = &f.sh[j];
    *sh = (shard){.f = &f, .idx = (uint32_t)j, .due_ns = -1,
                  .multi = curl_multi_init()};
    if (!sh->multi) return 1;
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, (long)c + 16);
  }
  int cap = n > c ? n : c;
  f.lat_ms = calloc((size_t)cap, sizeof *f.lat_ms);
  f.end_ms = calloc((size_t)cap, sizeof *f.end_ms);
  slot *slots = calloc((size_t)c, sizeof *slots);
  if (!f.lat_ms || !f.end_ms || !slots || f.ep < 0) return 1;
  long rss0 = proc_kib("VmRSS");
  for (int i = 0; i < c; i++) {
    CURL *e = curl_easy_init();
    slots[i].e = e;
    slots[i].sh = &f.sh[i % f.nsh];
    curl_easy_setopt(e, CURLOPT_URL, f.url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f.body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f.hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &slots[i]);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &slots[i]);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  }
  if (warm) fanout(&f, slots, c, c);
  f.failed = 0;
  int64_t t0 = now_ns();
  double cpu0 = cpu_s();
  fanout(&f, slots, c, n);
  double wall = (double)(now_ns() - t0) / 1e9;
  double cpu = cpu_s() - cpu0;
  long hwm = proc_kib("VmHWM");
  double steady = steady_rate(f.end_ms, n);
  qsort(f.lat_ms, (size_t)n, sizeof *f.lat_ms, cmp_double);
  double tput = n / wall, ideal = c / (latency / 1000.0);
  printf("{\"client\":\"bare libcurl multi (no JSON, epoll)\",\"warm\":%s,"
         "\"requests\":%d,\"concurrency\":%d,\"latency_ms\":%d,\"failed\":%d,"
         "\"wall_s\":%.3f,\"throughput\":%.0f,\"ideal\":%.0f,\"ratio\":%.3f,"
         "\"steady_ratio\":%.3f,\"added_p50_ms\":%.3f,\"added_p99_ms\":%.3f,"
         "\"rss_base_kib\":%ld,\"rss_peak_kib\":%ld,\"kib_per_inflight\":%.1f,"
         "\"cpu_us_per_req\":%.1f}\n",
         warm ? "true" : "false", n, c, latency, f.failed, wall, tput, ideal,
         tput / ideal, steady / ideal, f.lat_ms[n / 2] - latency,
         f.lat_ms[(n * 99) / 100] - latency, rss0, hwm,
         (double)(hwm - rss0) / (c < n ? c : n), cpu * 1e6 / n);
  for (int k = 0; k < c; k++) curl_easy_cleanup(slots[k].e);
  for (int j = 0; j < f.nsh; j++) curl_multi_cleanup(f.sh[j].multi);
  curl_slist_free_all(f.hdrs);
  close(f.ep);
  free(slots);
  free(f.lat_ms);
  free(f.end_ms);
  curl_global_cleanup();
  return f.failed ? 1 : 0;
}
