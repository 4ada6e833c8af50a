/* http.c: the asynchronous HTTP engine, libcurl's multi_socket interface
 * driven by a libuv loop (uv_poll_t per socket, one uv_timer_t for curl's
 * timeout, one sweep timer for idle-stream timeouts).
 *
 * Thousands of requests share one thread and curl's connection cache (and its
 * DNS cache); HTTP/2 is negotiated over TLS and multiplexed when offered.
 * Every curl call happens on the loop thread; orch__http_post() hands a
 * request over from any other thread through a uv_async_t. Uses libcurl and
 * libuv only; retries and providers live in llm.c. */
#include "orch_int.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define HTTP_MAX_BODY_DEFAULT (64u << 20) /* refuse larger responses */
#define HTTP_ERRBODY_MAX (64u << 10) /* of a status >= 300: kept, rest read */
#define HTTP_EASY_CACHE 256               /* idle easy handles kept */
#define HTTP_RETRY_AFTER_MAX_MS 1000000000L /* a longer Retry-After reads
                                               as this (11.6 days) */
#define HTTP_URL_CACHE 32 /* URLs kept parsed per engine (CURLOPT_CURLU) */
#ifndef HTTP_SHARDS
#define HTTP_SHARDS 16     /* at most this many multi handles per engine */
#endif
#ifndef HTTP_SHARD_FILL
#define HTTP_SHARD_FILL 128 /* transfers on a shard before the next opens */
#endif
#ifndef HTTP_START_BATCH
#define HTTP_START_BATCH 32 /* new connections opened per loop turn */
#endif

/* One curl multi handle and its timer. libcurl 7.88 looks through every
 * connection to a host when a transfer picks one (ConnectionExists) and
 * again when it is removed (curl_multi_remove_handle's scan for
 * connect-only connections): with 1,000 connections to one endpoint those
 * walks took up to 15% of a request's CPU. So transfers spread over shards,
 * each with its own connection cache, filled one after another
 * (HTTP_SHARD_FILL each): up to 128 in flight everything shares one
 * multi handle (and its HTTP/2 connections), as before. */
typedef struct http_shard {
  orch__http *h;
  CURLM *multi;
  uv_timer_t timer; /* curl's CURLMOPT_TIMERFUNCTION timer */
  size_t nactive;   /* transfers in this multi */
  size_t nsocks;    /* sockets of its connections we watch */
} http_shard;

/* A URL parsed once for every transfer to it (see url_parsed). */
typedef struct http_url {
  char *url;
  CURLU *u;
} http_url;

/* An easy handle and where it runs now (its CURLOPT_PRIVATE). */
typedef struct http_easy {
  CURL *e;
  http_shard *sh;
  orch__http_req *req;
} http_easy;

struct orch__http {
  uv_loop_t *loop;
  http_shard *shards[HTTP_SHARDS];
  size_t nshards, maxshards;
  long maxconn, maxhost, conncache; /* multi options, for new shards */
  uv_timer_t sweep;  /* idle-stream timeouts */
  uv_async_t async;  /* orch__http_post from other threads */
  pthread_mutex_t mu; /* guards posted; lock order: leaf */
  orch__http_req *posted, *posted_tail;
  orch__http_req *active; /* doubly linked list of running requests */
  size_t nactive;
  /* submitted, waiting for their turn (see start_req): doubly linked */
  orch__http_req *waiting, *waiting_tail;
  size_t nwaiting;
  size_t turn_starts; /* new-connection starts since `starter` last ran */
  size_t nsocks;      /* sockets watched, all shards */
  uv_idle_t starter;  /* runs while requests wait */
  size_t nidle_timed; /* active requests with an idle timeout */
  http_easy *cache[HTTP_EASY_CACHE];
  size_t ncache;
  http_url urls[HTTP_URL_CACHE];
  size_t nurls;
  bool env_proxy; /* a proxy variable was set when the engine started */
  struct http_sock *socks; /* sockets curl asked us to watch */
  struct http_sock **byfd; /* the same, by descriptor (NULL: none) */
  size_t nbyfd;
  int nhandles;            /* uv handles not yet closed */
  bool closing;
  orch__http_stats stats;
};

/* A socket curl asked us to watch. It outlives curl's interest: when a
 * transfer ends, curl says CURL_POLL_REMOVE and the connection waits in the
 * cache for the next transfer, which asks for the same events again. So
 * the poll handle stays, with its epoll registration (no epoll_ctl, ioctl
 * or handle churn per request), until curl closes the socket (our
 * CURLOPT_CLOSESOCKETFUNCTION) or the engine ends. While curl is not
 * interested (!owned), an event (the peer closed an idle connection)
 * just stops the poll. */
typedef struct http_sock {
  uv_poll_t poll;
  curl_socket_t fd; /* -1 once closed */
  orch__http *h;
  http_shard *sh; /* the multi handle whose connection it is */
  int events; /* what uv_poll watches now (0: stopped) */
  bool owned; /* curl watches it now (assigned with curl_multi_assign) */
  bool gone;  /* handle closed while owned: REMOVE frees the struct */
  struct http_sock *prev, *next;
} http_sock;

static void check_done(http_shard *sh);
static void on_sweep(uv_timer_t *t);
static int on_close_socket(void *ud, curl_socket_t fd);
static CURLSH *global_share;
static char *global_cainfo; /* libcurl's built-in CA bundle, or NULL */

/* ---- small helpers --------------------------------------------------- */

static void set_error(orch__http_req *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(orch__http_req *req, int code, const char *fmt, ...) {
  va_list ap;
  req->result = code;
  va_start(ap, fmt);
  vsnprintf(req->error, sizeof req->error, fmt, ap);
  va_end(ap);
}

static void active_link(orch__http *h, orch__http_req *req) {
  req->priv_prev = NULL;
  req->priv_next = h->active;
  if (h->active) h->active->priv_prev = req;
  h->active = req;
  h->nactive++;
  if (req->idle_timeout_ms > 0) h->nidle_timed++;
}

static void active_unlink(orch__http *h, orch__http_req *req) {
  if (req->priv_prev) req->priv_prev->priv_next = req->priv_next;
  else h->active = req->priv_next;
  if (req->priv_next) req->priv_next->priv_prev = req->priv_prev;
  req->priv_prev = req->priv_next = NULL;
  h->nactive--;
  if (req->idle_timeout_ms > 0) h->nidle_timed--;
}

/* ---- requests -------------------------------------------------------- */

void orch__http_req_init(orch__http_req *req) {
  memset(req, 0, sizeof *req);
  req->retry_after_ms = -1;
  req->max_body = HTTP_MAX_BODY_DEFAULT;
}

void orch__http_req_deinit(orch__http_req *req) {
  if (!req) return;
  curl_slist_free_all(req->headers);
  req->headers = NULL;
  free(req->body);
  req->body = NULL;
  req->body_len = req->body_cap = 0;
}

void orch__http_req_reset(orch__http_req *req) {
  req->status = 0;
  req->result = ORCH_OK;
  req->error[0] = '\0';
  req->retry_after_ms = -1;
  req->content_type[0] = '\0';
  req->body_len = 0;
  req->t_start_ns = req->t_first_byte_ns = req->t_end_ns = 0;
  req->t_last_byte_ns = 0;
  req->bytes_in = 0;
  req->http_version = 0;
  req->connects = 0;
}

int orch__http_req_header(orch__http_req *req, const char *line) {
  struct curl_slist *l = curl_slist_append(req->headers, line);
  if (!l) return ORCH_ENOMEM;
  req->headers = l;
  return ORCH_OK;
}

/* ms as a long, at most HTTP_RETRY_AFTER_MAX_MS (a double beyond a long's
 * range has no long value: the conversion is undefined). */
static long retry_ms(double ms) {
  return ms > (double)HTTP_RETRY_AFTER_MAX_MS ? HTTP_RETRY_AFTER_MAX_MS
                                              : (long)ms;
}

/* Parses a Retry-After value: seconds (possibly fractional) or an HTTP date
 * (curl_getdate reads years up to 2^31). Returns ms, at most
 * HTTP_RETRY_AFTER_MAX_MS, or -1 when unreadable. */
static long parse_retry_after(const char *v, size_t n, bool is_ms) {
  char buf[64];
  if (n >= sizeof buf) return -1;
  memcpy(buf, v, n);
  buf[n] = '\0';
  char *end;
  errno = 0;
  double d = strtod(buf, &end);
  if (end != buf && errno == 0) {
    while (*end == ' ' || *end == '\t') end++;
    if (*end == '\0' && d >= 0) return retry_ms(is_ms ? d : d * 1000.0);
  }
  if (is_ms) return -1;
  time_t t = curl_getdate(buf, NULL);
  if (t < 0) return -1;
  double diff = difftime(t, time(NULL));
  return diff <= 0 ? 0 : retry_ms(diff * 1000.0);
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  orch__http_req *req = ud;
  size_t len = size * n;
  /* A new status line (a redirect or 100-continue) starts over. */
  if (len > 5 && memcmp(p, "HTTP/", 5) == 0) {
    req->retry_after_ms = -1;
    req->content_type[0] = '\0';
    return len;
  }
  const char *colon = memchr(p, ':', len);
  if (!colon) return len;
  size_t klen = (size_t)(colon - p);
  const char *v = colon + 1, *e = p + len;
  while (v < e && (*v == ' ' || *v == '\t')) v++;
  while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
  if (klen == 14 && strncasecmp(p, "retry-after-ms", 14) == 0) {
    long ms = parse_retry_after(v, (size_t)(e - v), true);
    if (ms >= 0) req->retry_after_ms = ms; /* the ms form wins */
  } else if (klen == 11 && strncasecmp(p, "retry-after", 11) == 0) {
    if (req->retry_after_ms < 0)
      req->retry_after_ms = parse_retry_after(v, (size_t)(e - v), false);
  } else if (klen == 12 && strncasecmp(p, "content-type", 12) == 0) {
    snprintf(req->content_type, sizeof req->content_type, "%.*s",
             (int)(e - v), v);
  }
  return len;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  orch__http_req *req = ud;
  size_t len = size * n;
  int64_t t = orch__now_ns();
  if (!req->t_first_byte_ns) {
    req->t_first_byte_ns = t;
    long code = 0;
    curl_easy_getinfo(((http_easy *)req->priv_easy)->e,
                      CURLINFO_RESPONSE_CODE, &code);
    req->status = code;
  }
  req->t_last_byte_ns = t;
  req->bytes_in += len;
  if (req->on_data) {
    if (req->on_data(req, p, len) != 0) {
      req->priv_aborted = 1; /* the consumer said stop */
      return 0;
    }
    return len;
  }
  /* An error answer's start says what went wrong: the rest is read and
   * dropped, the transfer does not fail (a 400 with a huge body was a
   * "response larger than" transport error, and retried) */
  size_t all = len;
  if (req->status >= 300 && req->body_len + len > HTTP_ERRBODY_MAX)
    len = req->body_len < HTTP_ERRBODY_MAX ? HTTP_ERRBODY_MAX - req->body_len
                                           : 0;
  if (!len) return all;
  if (req->body_len + len > req->max_body) {
    req->priv_aborted = 2;
    return 0;
  }
  if (req->body_len + len + 1 > req->body_cap) {
    size_t cap = req->body_cap ? req->body_cap : 1024;
    if (!req->body_cap) { /* a stated length: the exact size, at once */
      curl_off_t cl = -1;  /* (up to 256 KiB: a bigger claim must arrive) */
      curl_easy_getinfo(((http_easy *)req->priv_easy)->e,
                        CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
      if (cl > 0 && cl <= (256 << 10) && (uint64_t)cl < req->max_body)
        cap = (size_t)cl + 1;
    }
    while (cap < req->body_len + len + 1) cap *= 2;
    char *nb = realloc(req->body, cap);
    if (!nb) {
      req->priv_aborted = 3;
      return 0;
    }
    req->body = nb;
    req->body_cap = cap;
  }
  memcpy(req->body + req->body_len, p, len);
  req->body_len += len;
  req->body[req->body_len] = '\0';
  return all;
}

/* An easy handle with the options every request shares; the cache keeps
 * them (no curl_easy_reset: start_req sets the rest each time). */
static http_easy *easy_get(orch__http *h) {
  if (h->ncache) return h->cache[--h->ncache];
  http_easy *w = calloc(1, sizeof *w);
  CURL *e = w ? curl_easy_init() : NULL;
  if (!e) {
    free(w);
    return NULL;
  }
  w->e = e;
  curl_easy_setopt(e, CURLOPT_PRIVATE, w);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, h);
  if (global_share) curl_easy_setopt(e, CURLOPT_SHARE, global_share);
  /* No proxy variable in the environment (orch__http_new looked): say so,
   * or libcurl 7.88 reads five of them again for every transfer. */
  if (!h->env_proxy) {
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  }
  return w;
}

/* url parsed by libcurl's URL API, kept for the next transfers to it: a
 * transfer given the string parses it again (a third of libcurl's URL
 * work per request); given the handle (CURLOPT_CURLU, read-only to curl)
 * it does not. NULL when url does not parse (curl then gets the string
 * and reports the error as ever), or HTTP_URL_CACHE other URLs are kept.
 * Loop thread only. */
static CURLU *url_parsed(orch__http *h, const char *url) {
  for (size_t i = 0; i < h->nurls; i++)
    if (strcmp(h->urls[i].url, url) == 0) return h->urls[i].u;
  if (h->nurls == HTTP_URL_CACHE) return NULL;
  CURLU *u = curl_url();
  char *s = orch__strdup(url);
  /* the flags libcurl 7.88 parses CURLOPT_URL with */
  if (!u || !s ||
      curl_url_set(u, CURLUPART_URL, url,
                   CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) !=
          CURLUE_OK) {
    curl_url_cleanup(u);
    free(s);
    return NULL;
  }
  h->urls[h->nurls++] = (http_url){s, u};
  return u;
}

static void easy_put(orch__http *h, http_easy *w) {
  w->req = NULL;
  w->sh = NULL;
  if (!h->closing && h->ncache < HTTP_EASY_CACHE) {
    h->cache[h->ncache++] = w;
  } else {
    curl_easy_cleanup(w->e);
    free(w);
  }
}

static http_shard *shard_new(orch__http *h);

/* The shard for a new transfer: the first with room and an idle
 * connection (HTTP/1.1 reuse), else the first with room, else a new one,
 * else the least busy. */
static http_shard *shard_pick(orch__http *h) {
  http_shard *room = NULL, *least = NULL;
  for (size_t i = 0; i < h->nshards; i++) {
    http_shard *sh = h->shards[i];
    if (sh->nactive < HTTP_SHARD_FILL) {
      if (sh->nsocks > sh->nactive) return sh;
      if (!room) room = sh;
    }
    if (!least || sh->nactive < least->nactive) least = sh;
  }
  if (room) return room;
  if (h->nshards < h->maxshards) {
    http_shard *sh = shard_new(h);
    if (sh) return sh;
  }
  return least;
}

/* Whether url names this host: localhost, 127.x.y.z or [::1]. */
bool orch__http_url_is_loopback(const char *url) {
  const char *p = url ? strstr(url, "://") : NULL;
  if (!p) return false;
  p += 3;
  const char *at = memrchr(p, '@', strcspn(p, "/?#")); /* user:pw@ */
  if (at) p = at + 1;
  if (*p == '[') return strncmp(p, "[::1]", 5) == 0;
  size_t n = strcspn(p, ":/?#");
  if (n == 9 && strncasecmp(p, "localhost", 9) == 0) return true;
  if (n < 7 || strncmp(p, "127.", 4) != 0) return false;
  for (size_t i = 4; i < n; i++)
    if (!(p[i] == '.' || (p[i] >= '0' && p[i] <= '9'))) return false;
  return true;
}

/* Adds req to the multi handle (loop thread). On failure completes it. */
static void start_now(orch__http *h, orch__http_req *req) {
  if (h->closing) {
    set_error(req, ORCH_ECANCELED, "canceled: the HTTP engine is closing");
    goto fail;
  }
  http_shard *sh = shard_pick(h);
  http_easy *w = sh ? easy_get(h) : NULL;
  if (!w) {
    set_error(req, ORCH_ENOMEM, "out of memory (curl_easy_init)");
    goto fail;
  }
  CURL *e = w->e;
  w->req = req;
  w->sh = sh;
  req->priv_easy = w;
  req->priv_errbuf[0] = '\0';
  req->priv_aborted = 0;
  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_CURLU, url_parsed(h, req->url)); /* NULL: URL */
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->priv_errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
  /* over TLS, wait for a connection that may multiplex (h2) */
  curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                   strncmp(req->url, "https:", 6) == 0 ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 0L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   req->timeout_ms > 0 ? req->timeout_ms : 0L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
  /* TCP keep-alive probes find peers that vanished behind a NAT or a
   * firewall while an answer takes minutes; on loopback there is no such
   * path (and it costs three setsockopt calls per connection) */
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, orch__http_url_is_loopback(req->url) ? 0L : 1L);
  /* recycled handles: always say which CA bundle (the built-in default
   * when the request names none) */
  curl_easy_setopt(e, CURLOPT_CAINFO,
                   req->ca_file ? req->ca_file : global_cainfo);
  if (req->post) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)req->post_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->post);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  }
  active_link(h, req);
  h->stats.started++;
  sh->nactive++;
  CURLMcode mc = curl_multi_add_handle(sh->multi, e);
  if (mc != CURLM_OK) {
    sh->nactive--;
    active_unlink(h, req);
    easy_put(h, w);
    req->priv_easy = NULL;
    set_error(req, ORCH_EIO, "curl_multi_add_handle: %s",
              curl_multi_strerror(mc));
    goto fail;
  }
  if (req->idle_timeout_ms > 0) {
    uint64_t iv = (uint64_t)req->idle_timeout_ms / 8;
    if (iv < 5) iv = 5;
    if (iv > 250) iv = 250;
    if (!uv_is_active((uv_handle_t *)&h->sweep) ||
        iv < uv_timer_get_repeat(&h->sweep))
      uv_timer_start(&h->sweep, on_sweep, iv, iv);
  }
  return;
fail:
  req->t_end_ns = orch__now_ns();
  h->stats.failed++;
  if (req->on_done) req->on_done(req);
}

/* A submitted request goes to curl at once when a connection is idle (it
 * will be reused); one that needs a new connection does too, up to
 * HTTP_START_BATCH per loop turn. Past that (a burst to an endpoint with
 * too few connections open: a fan-out of a thousand steps) requests wait
 * their turn in `waiting`, and `starter` hands the next ones over on each
 * turn. curl opens a transfer's connection when its timer next fires and
 * sends the request only once the loop has seen the socket writable:
 * given a thousand new transfers at once it would open a thousand
 * connections before sending the first request. In batches the first
 * requests leave while later connections are still being opened (see
 * docs/llm.md). Reuse is never held back. Time spent waiting counts in
 * the request's latency (t_start_ns is the submission). */
static bool conn_idle(const orch__http *h) { return h->nsocks > h->nactive; }

static void waiting_unlink(orch__http *h, orch__http_req *req) {
  if (req->priv_prev) req->priv_prev->priv_next = req->priv_next;
  else h->waiting = req->priv_next;
  if (req->priv_next) req->priv_next->priv_prev = req->priv_prev;
  else h->waiting_tail = req->priv_prev;
  req->priv_prev = req->priv_next = NULL;
  req->priv_queued = 0;
  h->nwaiting--;
}

static void on_starter(uv_idle_t *i) {
  orch__http *h = i->data;
  h->turn_starts = 0;
  while (h->waiting) {
    bool reuse = conn_idle(h);
    if (!reuse && h->turn_starts >= HTTP_START_BATCH) break;
    orch__http_req *req = h->waiting;
    waiting_unlink(h, req);
    if (!reuse) h->turn_starts++;
    start_now(h, req); /* may submit more: they queue behind */
  }
  if (!h->waiting) uv_idle_stop(i);
}

static void start_req(orch__http *h, orch__http_req *req) {
  orch__http_req_reset(req);
  req->priv_h = h;
  req->priv_easy = NULL;
  req->t_start_ns = orch__now_ns();
  bool reuse = conn_idle(h);
  if (!h->closing &&
      (h->waiting || (!reuse && h->turn_starts >= HTTP_START_BATCH))) {
    req->priv_queued = 1;
    req->priv_next = NULL;
    req->priv_prev = h->waiting_tail;
    if (h->waiting_tail) h->waiting_tail->priv_next = req;
    else h->waiting = req;
    h->waiting_tail = req;
    h->nwaiting++;
    if (!uv_is_active((uv_handle_t *)&h->starter))
      uv_idle_start(&h->starter, on_starter);
    return;
  }
  if (!reuse) h->turn_starts++;
  start_now(h, req);
}

/* Detaches a finished or aborted request, fills the outcome and calls
 * on_done. The request may be freed by on_done. */
static void finish_req(orch__http *h, orch__http_req *req, CURLcode cc) {
  http_easy *w = req->priv_easy;
  CURL *e = w->e;
  curl_multi_remove_handle(w->sh->multi, e);
  w->sh->nactive--;
  active_unlink(h, req);
  req->t_end_ns = orch__now_ns();
  long code = 0, ver = 0, nc = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  if (code) req->status = code;
  curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &ver);
  req->http_version = ver == CURL_HTTP_VERSION_2_0   ? 20
                      : ver == CURL_HTTP_VERSION_1_1 ? 11
                      : ver == CURL_HTTP_VERSION_1_0 ? 10
                                                     : 0;
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
  req->connects = nc;
  if (req->result == ORCH_OK) {
    if (cc == CURLE_OK) {
      /* fine: req->status says what the server said */
    } else if (cc == CURLE_WRITE_ERROR && req->priv_aborted == 2) {
      set_error(req, ORCH_ELIMIT, "response larger than %zu bytes",
                req->max_body);
    } else if (cc == CURLE_WRITE_ERROR && req->priv_aborted == 3) {
      set_error(req, ORCH_ENOMEM, "out of memory reading the response");
    } else if (cc == CURLE_WRITE_ERROR && req->priv_aborted == 1) {
      if (!req->error[0]) set_error(req, ORCH_EIO, "aborted by the reader");
      else req->result = req->result ? req->result : ORCH_EIO;
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
      /* Which one fired, told by how long the transfer ran: the connect
       * timeout only before the first byte and when it is the shorter
       * (the nearer to the time taken); curl's connect time is no guide,
       * it is 0 on a reused connection */
      curl_off_t us = 0;
      curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &us);
      long cto = req->connect_timeout_ms, to = req->timeout_ms;
      bool connect = cto > 0 && req->bytes_in == 0 &&
                     (to <= 0 || (cto < to && us / 1000 < (cto + to) / 2));
      if (connect)
        set_error(req, ORCH_ETIMEDOUT, "connect timed out after %ld ms", cto);
      else
        set_error(req, ORCH_ETIMEDOUT, "timed out after %ld ms (total)", to);
    } else {
      /* curl's own message, more precise; prefixed with the code's text
       * unless it already ends with it (connect errors do) */
      const char *what = curl_easy_strerror(cc);
      if (req->priv_errbuf[0] && strstr(req->priv_errbuf, what))
        set_error(req, ORCH_EIO, "%s", req->priv_errbuf);
      else
        set_error(req, ORCH_EIO, "%s%s%s", what,
                  req->priv_errbuf[0] ? ": " : "", req->priv_errbuf);
    }
  }
  req->curl_code = (int)cc;
  req->priv_easy = NULL;
  easy_put(h, w);
  if (req->result == ORCH_OK) h->stats.completed++;
  else h->stats.failed++;
  if (req->on_done) req->on_done(req);
}

static void check_done(http_shard *sh) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(sh->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    http_easy *w = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&w);
    CURLcode cc = m->data.result;
    if (w && w->req) finish_req(sh->h, w->req, cc);
  }
}

/* ---- curl <-> libuv glue --------------------------------------------- */

static void on_poll(uv_poll_t *p, int status, int events) {
  http_sock *s = p->data;
  if (!s->owned) { /* an idle cached connection stirred: curl will see */
    uv_poll_stop(&s->poll);
    s->events = 0;
    return;
  }
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  int running;
  http_shard *sh = s->sh;
  curl_multi_socket_action(sh->multi, s->fd, flags, &running);
  check_done(sh);
}

static void on_curl_timer(uv_timer_t *t) {
  http_shard *sh = t->data;
  int running;
  curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(sh);
}

static void engine_release(orch__http *h) {
  if (--h->nhandles == 0 && h->closing) {
    free(h->byfd);
    free(h);
  }
}

static void handle_closed(uv_handle_t *hd) { engine_release(hd->data); }

static void shard_closed(uv_handle_t *hd) {
  http_shard *sh = hd->data;
  orch__http *h = sh->h;
  free(sh);
  engine_release(h);
}

static void sock_closed(uv_handle_t *hd) {
  http_sock *s = hd->data;
  orch__http *h = s->h;
  if (s->owned) s->gone = true; /* curl still names it: freed at REMOVE */
  else free(s);
  engine_release(h);
}

static http_sock *sock_find(orch__http *h, curl_socket_t fd) {
  return fd >= 0 && (size_t)fd < h->nbyfd ? h->byfd[fd] : NULL;
}

/* Forgets the descriptor (before it is closed: uv_close takes it out of
 * epoll) and frees s once libuv has let go of the handle. */
static void sock_close(orch__http *h, http_sock *s) {
  if (sock_find(h, s->fd) == s) h->byfd[s->fd] = NULL;
  s->fd = -1;
  s->sh->nsocks--;
  h->nsocks--;
  if (s->prev) s->prev->next = s->next;
  else h->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* CURLOPT_CLOSESOCKETFUNCTION: curl closes a connection's socket. The
 * poll handle goes first (libuv takes the descriptor out of epoll while it
 * is still this socket). libcurl 7.88 says CURL_POLL_REMOVE before; should
 * a version not, the struct outlives the handle until that REMOVE. */
static int on_close_socket(void *ud, curl_socket_t fd) {
  orch__http *h = ud;
  http_sock *s = sock_find(h, fd);
  if (s) sock_close(h, s);
  return close(fd) == 0 ? 0 : 1;
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud,
                     void *sockp) {
  http_shard *sh = ud;
  orch__http *h = sh->h;
  http_sock *s = sockp;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (!s) return 0;
    s->owned = false;
    if (s->fd < 0) { /* already closed (see on_close_socket) */
      if (s->gone) free(s); /* else sock_closed frees it */
    } else if (s->events & UV_WRITABLE) { /* would fire at once */
      uv_poll_stop(&s->poll);
      s->events = 0;
    }
    return 0;
  }
  if (s && s->fd < 0) return 0; /* closed, REMOVE to come */
  if (!s) s = sock_find(h, fd); /* a cached connection, reused */
  if (!s) {
    if ((size_t)fd >= h->nbyfd) {
      size_t n = h->nbyfd ? h->nbyfd : 64;
      while (n <= (size_t)fd) n *= 2;
      http_sock **nb = realloc(h->byfd, n * sizeof *nb);
      if (!nb) return -1;
      memset(nb + h->nbyfd, 0, (n - h->nbyfd) * sizeof *nb);
      h->byfd = nb;
      h->nbyfd = n;
    }
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->fd = fd;
    s->h = h;
    s->sh = sh;
    if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    h->nhandles++;
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    h->byfd[fd] = s;
    sh->nsocks++;
    h->nsocks++;
  }
  if (!s->owned) {
    s->owned = true;
    curl_multi_assign(sh->multi, fd, s);
  }
  int ev = 0;
  if (what & CURL_POLL_IN) ev |= UV_READABLE;
  if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
  if (ev != s->events) {
    s->events = ev; /* unchanged interest: no epoll_ctl */
    if (ev) uv_poll_start(&s->poll, ev, on_poll);
    else uv_poll_stop(&s->poll);
  }
  return 0;
}

static int on_timer_fn(CURLM *m, long timeout_ms, void *ud) {
  http_shard *sh = ud;
  (void)m;
  if (timeout_ms < 0) uv_timer_stop(&sh->timer);
  else uv_timer_start(&sh->timer, on_curl_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* A new multi handle with the engine's options (loop thread). */
static http_shard *shard_new(orch__http *h) {
  http_shard *sh = calloc(1, sizeof *sh);
  if (!sh) return NULL;
  sh->h = h;
  sh->multi = curl_multi_init();
  if (!sh->multi) {
    free(sh);
    return NULL;
  }
  CURLM *mu = sh->multi;
  curl_multi_setopt(mu, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(mu, CURLMOPT_SOCKETDATA, sh);
  curl_multi_setopt(mu, CURLMOPT_TIMERFUNCTION, on_timer_fn);
  curl_multi_setopt(mu, CURLMOPT_TIMERDATA, sh);
  curl_multi_setopt(mu, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  if (h->maxconn)
    curl_multi_setopt(mu, CURLMOPT_MAX_TOTAL_CONNECTIONS, h->maxconn);
  if (h->maxhost)
    curl_multi_setopt(mu, CURLMOPT_MAX_HOST_CONNECTIONS, h->maxhost);
  curl_multi_setopt(mu, CURLMOPT_MAXCONNECTS, h->conncache);
  curl_multi_setopt(mu, CURLMOPT_MAX_CONCURRENT_STREAMS, 1000L);
  uv_timer_init(h->loop, &sh->timer);
  sh->timer.data = sh;
  h->nhandles++;
  h->shards[h->nshards++] = sh;
  return sh;
}

/* Aborts requests that received nothing for their idle timeout. */
static void on_sweep(uv_timer_t *t) {
  orch__http *h = t->data;
  if (h->nidle_timed == 0) {
    uv_timer_stop(t);
    uv_timer_set_repeat(t, 0);
    return;
  }
  int64_t now = orch__now_ns();
  size_t nexp = 0;
  for (orch__http_req *req = h->active; req; req = req->priv_next) {
    if (req->idle_timeout_ms <= 0) continue;
    int64_t last = req->t_last_byte_ns ? req->t_last_byte_ns : req->t_start_ns;
    if (now - last >= (int64_t)req->idle_timeout_ms * 1000000) {
      req->priv_idle_expired = 1;
      nexp++;
    }
  }
  /* on_done may start or cancel other requests: restart the scan after
   * each completion. */
  while (nexp--) {
    orch__http_req *req = h->active;
    while (req && !req->priv_idle_expired) req = req->priv_next;
    if (!req) break;
    req->priv_idle_expired = 0;
    h->stats.idle_timeouts++;
    set_error(req, ORCH_ETIMEDOUT,
              "idle timeout: no bytes for %ld ms (%zu bytes received)",
              req->idle_timeout_ms, req->bytes_in);
    finish_req(h, req, CURLE_OK);
  }
}

static void on_async(uv_async_t *a) {
  orch__http *h = a->data;
  pthread_mutex_lock(&h->mu);
  orch__http_req *q = h->posted;
  h->posted = h->posted_tail = NULL;
  pthread_mutex_unlock(&h->mu);
  while (q) {
    orch__http_req *next = q->priv_next;
    q->priv_next = NULL;
    start_req(h, q);
    q = next;
  }
}

/* ---- the engine ------------------------------------------------------ */

/* One share for the process: DNS answers and TLS sessions outlive an
 * engine (each run makes its own) and serve every loop. Locked per kind of
 * data; the locks are leaves. */
static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];

static void share_lock(CURL *e, curl_lock_data d, curl_lock_access a,
                       void *ud) {
  (void)e;
  (void)a;
  (void)ud;
  pthread_mutex_lock(&share_mu[d]);
}

static void share_unlock(CURL *e, curl_lock_data d, void *ud) {
  (void)e;
  (void)ud;
  pthread_mutex_unlock(&share_mu[d]);
}

static void global_init(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_init(&share_mu[i], NULL);
  CURL *probe = curl_easy_init();
  char *ca = NULL;
  if (probe && curl_easy_getinfo(probe, CURLINFO_CAINFO, &ca) == CURLE_OK && ca)
    global_cainfo = strdup(ca);
  curl_easy_cleanup(probe);
  global_share = curl_share_init();
  if (!global_share) return;
  curl_share_setopt(global_share, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(global_share, CURLSHOPT_UNLOCKFUNC, share_unlock);
  curl_share_setopt(global_share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(global_share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
}

int orch__http_new(orch__http **out, uv_loop_t *loop,
                   const orch__http_opts *opts, char *err, size_t errlen) {
  *out = NULL;
  pthread_once(&global_once, global_init);
  orch__http *h = calloc(1, sizeof *h);
  if (!h) {
    if (err) snprintf(err, errlen, "out of memory");
    return ORCH_ENOMEM;
  }
  h->loop = loop;
  static const char *const proxy_vars[] = {
      "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
  for (size_t i = 0; i < sizeof proxy_vars / sizeof *proxy_vars; i++) {
    const char *v = getenv(proxy_vars[i]);
    if (v && *v) h->env_proxy = true;
  }
  h->maxconn = opts && opts->max_connections > 0 ? opts->max_connections : 0;
  h->maxhost = opts && opts->max_host_connections > 0
                   ? opts->max_host_connections
                   : 0;
  h->conncache = opts && opts->connection_cache > 0 ? opts->connection_cache
                                                    : 2048;
  /* connection caps are per multi handle: with one, keep one */
  h->maxshards = h->maxconn || h->maxhost ? 1 : HTTP_SHARDS;
  if (!shard_new(h)) {
    free(h);
    if (err) snprintf(err, errlen, "curl_multi_init failed");
    return ORCH_EIO;
  }
  pthread_mutex_init(&h->mu, NULL);
  uv_timer_init(loop, &h->sweep);
  h->sweep.data = h;
  uv_async_init(loop, &h->async, on_async);
  h->async.data = h;
  uv_unref((uv_handle_t *)&h->async); /* an idle engine keeps no loop alive */
  uv_idle_init(loop, &h->starter);
  h->starter.data = h;
  h->nhandles += 3;
  *out = h;
  return ORCH_OK;
}

void orch__http_submit(orch__http *h, orch__http_req *req) {
  start_req(h, req);
}

int orch__http_post(orch__http *h, orch__http_req *req) {
  pthread_mutex_lock(&h->mu);
  req->priv_next = NULL;
  if (h->posted_tail) h->posted_tail->priv_next = req;
  else h->posted = req;
  h->posted_tail = req;
  pthread_mutex_unlock(&h->mu);
  return uv_async_send(&h->async) == 0 ? ORCH_OK : ORCH_EIO;
}

void orch__http_cancel(orch__http *h, orch__http_req *req) {
  if (req->priv_h != h || (!req->priv_easy && !req->priv_queued))
    return; /* not running */
  set_error(req, ORCH_ECANCELED, "canceled");
  h->stats.canceled++;
  if (req->priv_easy) {
    finish_req(h, req, CURLE_OK);
    return;
  }
  waiting_unlink(h, req); /* not handed to curl yet */
  h->stats.failed++;
  req->t_end_ns = orch__now_ns();
  if (req->on_done) req->on_done(req);
}

size_t orch__http_active(const orch__http *h) {
  return h->nactive + h->nwaiting;
}

void orch__http_get_stats(const orch__http *h, orch__http_stats *st) {
  *st = h->stats;
  st->active = h->nactive + h->nwaiting;
}

void orch__http_free(orch__http *h) {
  if (!h) return;
  h->closing = true;
  on_async(&h->async); /* posted but not started: complete as canceled */
  while (h->waiting) { /* submitted, not handed to curl: the same */
    orch__http_req *req = h->waiting;
    waiting_unlink(h, req);
    start_now(h, req);
  }
  while (h->active) {
    orch__http_req *req = h->active;
    set_error(req, ORCH_ECANCELED, "canceled: the HTTP engine is closing");
    finish_req(h, req, CURLE_OK);
  }
  while (h->ncache) {
    http_easy *w = h->cache[--h->ncache];
    curl_easy_cleanup(w->e);
    free(w);
  }
  for (size_t i = 0; i < h->nurls; i++) { /* no easy handle names them now */
    curl_url_cleanup(h->urls[i].u);
    free(h->urls[i].url);
  }
  for (size_t i = 0; i < h->nshards; i++) {
    /* closes the cached connections (on_close_socket) */
    curl_multi_cleanup(h->shards[i]->multi);
    h->shards[i]->multi = NULL;
  }
  while (h->socks) sock_close(h, h->socks);
  pthread_mutex_destroy(&h->mu);
  /* The last close callback frees h (close callbacks never run inside
   * uv_close, so h outlives this function). */
  for (size_t i = 0; i < h->nshards; i++)
    uv_close((uv_handle_t *)&h->shards[i]->timer, shard_closed);
  uv_close((uv_handle_t *)&h->sweep, handle_closed);
  uv_close((uv_handle_t *)&h->async, handle_closed);
  uv_close((uv_handle_t *)&h->starter, handle_closed);
}
