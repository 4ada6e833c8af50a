/* llm_bare.c: the floor under bench/llm_bench.c. The same fan-out (N chat
 * completions, C in flight, POST of the same request body to the same
 * mock) with libcurl's multi_socket interface on a bare epoll loop: no
 * libuv, no llm.c, no JSON built or parsed (the body is a constant string,
 * the answer is counted, not read). What orchestrate's client costs beyond
 * this is its own. Usage: llm_bare URL N C LATENCY_MS [warm]; prints one
 * JSON line with the fields of llm_bench. bench/llm.sh runs it. */
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

typedef struct slot {
  CURL *e;
  int64_t t0;
  size_t got;
} slot;

typedef struct fan {
  CURLM *multi;
  int ep;
  long timeout_ms; /* curl's timer: -1 none */
  int n, started, done, failed;
  int64_t t_begin;
  double *lat_ms, *end_ms;
  struct curl_slist *hdrs;
  char url[512];
  char body[256];
} fan;

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  (void)p;
  ((slot *)ud)->got += size * n;
  return size * n;
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud,
                     void *sockp) {
  fan *f = ud;
  (void)e;
  struct epoll_event ev = {.data.fd = fd};
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(f->ep, EPOLL_CTL_DEL, fd, NULL);
    curl_multi_assign(f->multi, fd, NULL);
    return 0;
  }
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (sockp) {
    epoll_ctl(f->ep, EPOLL_CTL_MOD, fd, &ev);
  } else {
    epoll_ctl(f->ep, EPOLL_CTL_ADD, fd, &ev);
    curl_multi_assign(f->multi, fd, f); /* any non-NULL: registered */
  }
  return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *ud) {
  (void)m;
  ((fan *)ud)->timeout_ms = timeout_ms;
  return 0;
}

static void start(fan *f, slot *s) {
  f->started++;
  s->t0 = now_ns();
  s->got = 0;
  curl_multi_add_handle(f->multi, s->e);
}

static void reap(fan *f) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(f->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    slot *s = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
    long code = 0;
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
    if (m->data.result != CURLE_OK || code != 200 || s->got == 0) f->failed++;
    int64_t t = now_ns();
    f->end_ms[f->done] = (double)(t - f->t_begin) / 1e6;
    f->lat_ms[f->done++] = (double)(t - s->t0) / 1e6;
    curl_multi_remove_handle(f->multi, m->easy_handle);
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
    int k = epoll_wait(f->ep, evs, 1024, (int)(f->timeout_ms < 0 ? 1000 : f->timeout_ms));
    if (k == 0 || f->timeout_ms == 0)
      curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    for (int i = 0; i < k; i++) {
      int fl = 0;
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) fl |= CURL_CSELECT_IN;
      if (evs[i].events & EPOLLOUT) fl |= CURL_CSELECT_OUT;
      curl_multi_socket_action(f->multi, evs[i].data.fd, fl, &running);
    }
    reap(f);
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
  fan f = {.timeout_ms = -1};
  snprintf(f.url, sizeof f.url, "%s/v1/chat/completions", argv[1]);
  snprintf(f.body, sizeof f.body,
           "{\"model\":\"bench+fault=latency=%d\",\"messages\":[{\"role\":"
           "\"user\",\"content\":\"benchmark request\"}],\"max_tokens\":1024}",
           latency);
  f.hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  f.hdrs = curl_slist_append(f.hdrs, "Accept: application/json");
  f.ep = epoll_create1(EPOLL_CLOEXEC);
  f.multi = curl_multi_init();
  curl_multi_setopt(f.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(f.multi, CURLMOPT_SOCKETDATA, &f);
  curl_multi_setopt(f.multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(f.multi, CURLMOPT_TIMERDATA, &f);
  curl_multi_setopt(f.multi, CURLMOPT_MAXCONNECTS, (long)c + 16);
  int cap = n > c ? n : c;
  f.lat_ms = calloc((size_t)cap, sizeof *f.lat_ms);
  f.end_ms = calloc((size_t)cap, sizeof *f.end_ms);
  slot *slots = calloc((size_t)c, sizeof *slots);
  if (!f.lat_ms || !f.end_ms || !slots || f.ep < 0 || !f.multi) return 1;
  long rss0 = proc_kib("VmRSS");
  for (int i = 0; i < c; i++) {
    CURL *e = curl_easy_init();
    slots[i].e = e;
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
  curl_multi_cleanup(f.multi);
  curl_slist_free_all(f.hdrs);
  close(f.ep);
  free(slots);
  free(f.lat_ms);
  free(f.end_ms);
  curl_global_cleanup();
  return f.failed ? 1 : 0;
}
