/* mock_llm.c: the mock LLM server that ships with orchestrate. It answers
 * the OpenAI chat completions and Anthropic Messages APIs (streaming and
 * not) with deterministic replies, and injects faults chosen per request by
 * a header, the model name or a marker in the prompt (docs/mock-llm.md).
 *
 * Uses libmicrohttpd and jansson. One thread per CPU (at most 4) runs an
 * MHD daemon in external epoll mode; all accept on one listening socket.
 * Waits (latency, slow and stalled streams) never block a thread: the
 * connection is suspended and the same thread resumes it when its time
 * comes, so a thousand sleeping requests cost a thousand heap entries. */
#include "orch.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (16u << 20)      /* request bodies above this get 413 */
#define MAX_WAIT_MS 3600000       /* cap on latency / slow / stall values */
#define STALL_DEFAULT_MS 300000   /* `stall` without a value */
#define STALL_CHECK_MS 100        /* how often a stall looks for a hang-up */
#define FF_MAX_KEYS 4096          /* fail-first table; reset when full */
#define EXCERPT 80                /* chars of a prompt quoted in replies */
#define TICK_US_DEFAULT 100       /* a loop looks at its sockets at most
                                     once per tick (ORCH_MOCK_TICK_US) */

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

enum { API_NONE, API_OPENAI, API_ANTHROPIC };

/* ---- small helpers ---------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A growable string; on allocation failure it stays short and sets oom. */
typedef struct {
  char *s;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

static void sb_add(sbuf *b, const char *s) { sb_addn(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    sb_addn(b, tmp, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (!big) {
    b->oom = true;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb_addn(b, big, (size_t)n);
  free(big);
}

/* Takes the string (never NULL unless out of memory). */
static char *sb_take(sbuf *b) {
  if (b->oom) {
    free(b->s);
    return NULL;
  }
  if (!b->s) return strdup("");
  return b->s;
}

static const char *ci_find(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  if (!n) return hay;
  int c0 = tolower((unsigned char)needle[0]);
  for (const char *p = hay; *p; p++)
    if (tolower((unsigned char)*p) == c0 && strncasecmp(p, needle, n) == 0)
      return p;
  return NULL;
}

static size_t count_words(const char *s) {
  size_t n = 0;
  bool in = false;
  for (; s && *s; s++) {
    bool sp = isspace((unsigned char)*s);
    if (!sp && !in) n++;
    in = !sp;
  }
  return n;
}

/* Copies at most max bytes of s (not splitting a UTF-8 sequence), with
 * newlines and tabs turned into spaces. */
static char *excerpt(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n > max) {
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  }
  char *r = malloc(n + 1);
  if (!r) return NULL;
  for (size_t i = 0; i < n; i++)
    r[i] = (s[i] == '\n' || s[i] == '\r' || s[i] == '\t') ? ' ' : s[i];
  r[n] = '\0';
  return r;
}

/* json_dumps(j, JSON_COMPACT), through a stack buffer: json_dumps grows
 * its buffer from 16 bytes and copies the result once more, which cost
 * more than the dump of a small document itself. */
static char *dump_compact(const json_t *j) {
  char tmp[4096];
  size_t n = j ? json_dumpb(j, tmp, sizeof tmp, JSON_COMPACT) : 0;
  if (n == 0) return NULL;
  char *d = malloc(n + 1);
  if (!d) return NULL;
  if (n <= sizeof tmp) memcpy(d, tmp, n);
  else if (json_dumpb(j, d, n, JSON_COMPACT) != n) {
    free(d);
    return NULL;
  }
  d[n] = '\0';
  return d;
}

/* FNV-1a, for deterministic choices derived from text. */
static uint32_t fnv(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* ---- the server object, its timer and the fail-first table ------------ */

typedef struct {
  int64_t due;
  struct MHD_Connection *conn;
} wake;

typedef struct {
  char *key;
  unsigned long count;
} ff_entry;

/* One event loop: an MHD daemon in external epoll mode, run by one thread
 * that also keeps the timers of its suspended connections. Everything in
 * it is touched by that thread only (handlers and readers run there too),
 * so the timers need no lock and no other thread ever wakes for them. */
typedef struct {
  orch_mock *m;
  struct MHD_Daemon *daemon;
  pthread_t thread;
  bool started;
  int wake_fd;  /* eventfd: orch_mock_free wakes the loop */
  wake *heap;   /* min-heap on due */
  size_t nheap, capheap;
  json_t *reply[2]; /* a whole answer per API, refilled per request */
} mloop;

#define MAX_LOOPS 4

struct orch_mock {
  int port;
  atomic_ulong requests;
  atomic_ulong seq;
  atomic_int stopping;
  mloop loops[MAX_LOOPS]; /* all accept on dups of one listening socket */
  size_t nloops;
  int64_t tick_ns; /* wake-up coalescing (loop_main); 0: off */

  pthread_mutex_t flock; /* the fail-first table; a leaf lock */
  ff_entry *ff;
  size_t nff;
};

static void heap_up(wake *h, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h[p].due <= h[i].due) break;
    wake t = h[p];
    h[p] = h[i];
    h[i] = t;
    i = p;
  }
}

static void heap_down(wake *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && h[l].due < h[m].due) m = l;
    if (r < n && h[r].due < h[m].due) m = r;
    if (m == i) break;
    wake t = h[m];
    h[m] = h[i];
    h[i] = t;
    i = m;
  }
}

static mloop *loop_of(orch_mock *m, struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
  for (size_t i = 0; ci && i < m->nloops; i++)
    if (m->loops[i].daemon == ci->daemon) return &m->loops[i];
  return NULL;
}

/* Suspends conn until due (monotonic ns). Must be called from the access
 * handler or a content reader of conn (so on its loop's thread). Returns
 * false when the server is stopping or out of memory: then the caller ends
 * the request instead. */
static bool suspend_until(orch_mock *m, struct MHD_Connection *conn,
                          int64_t due) {
  mloop *lp = loop_of(m, conn);
  if (!lp || atomic_load(&m->stopping)) return false;
  if (lp->nheap == lp->capheap) {
    size_t cap = lp->capheap ? lp->capheap * 2 : 256;
    wake *h = realloc(lp->heap, cap * sizeof *h);
    if (!h) return false;
    lp->heap = h;
    lp->capheap = cap;
  }
  MHD_suspend_connection(conn);
  lp->heap[lp->nheap] = (wake){due, conn};
  heap_up(lp->heap, lp->nheap++);
  return true;
}

/* Resumes the connections whose time has come (all of them with all);
 * returns how many. */
static size_t resume_due(mloop *lp, bool all) {
  size_t n = 0;
  int64_t now = now_ns();
  while (lp->nheap && (all || lp->heap[0].due <= now)) {
    struct MHD_Connection *c = lp->heap[0].conn;
    lp->heap[0] = lp->heap[--lp->nheap];
    heap_down(lp->heap, lp->nheap, 0);
    MHD_resume_connection(c);
    n++;
  }
  return n;
}

static void *loop_main(void *arg) {
  mloop *lp = arg;
  orch_mock *m = lp->m;
  const union MHD_DaemonInfo *di =
      MHD_get_daemon_info(lp->daemon, MHD_DAEMON_INFO_EPOLL_FD);
  struct pollfd p[2] = {{.fd = di ? di->epoll_fd : -1, .events = POLLIN},
                        {.fd = lp->wake_fd, .events = POLLIN}};
  int64_t woke = 0; /* when the last wait ended */
  while (!atomic_load(&m->stopping)) {
    /* Coalescing: at most one look at the sockets and timers per tick.
     * Under load, a wake-up serves every request, answer and timer that
     * came due meanwhile, instead of one each (a wake-up costs more than
     * the work it does); when idle, an event is served at once. */
    if (m->tick_ns > 0) {
      int64_t next = woke + m->tick_ns, now = now_ns();
      if (now < next) {
        struct timespec ts = {(time_t)((next - now) / 1000000000),
                              (long)((next - now) % 1000000000)};
        nanosleep(&ts, NULL);
      }
    }
    int64_t wait = -1; /* ns */
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(lp->daemon, &to) == MHD_YES)
      wait = to > 3600000 ? 3600000000000 : (int64_t)to * 1000000;
    if (lp->nheap) {
      int64_t left = lp->heap[0].due - now_ns();
      if (left < 0) left = 0;
      if (wait < 0 || left < wait) wait = left;
    }
    struct timespec ts = {(time_t)(wait / 1000000000),
                          (long)(wait % 1000000000)};
    ppoll(p, 2, wait < 0 ? NULL : &ts, NULL);
    woke = now_ns();
    if (p[1].revents) {
      uint64_t v;
      ssize_t r = read(lp->wake_fd, &v, sizeof v);
      (void)r;
    }
    MHD_run(lp->daemon);
    if (resume_due(lp, false)) MHD_run(lp->daemon);
  }
  /* MHD must not stop with a suspended connection: resume them all; their
   * handlers and readers see `stopping` and end the requests. */
  resume_due(lp, true);
  MHD_run(lp->daemon);
  return NULL;
}

/* Counts one request under key; returns its number (1 for the first). */
static unsigned long ff_count(orch_mock *m, const char *key) {
  unsigned long n = 0;
  pthread_mutex_lock(&m->flock);
  for (size_t i = 0; i < m->nff; i++)
    if (strcmp(m->ff[i].key, key) == 0) {
      n = ++m->ff[i].count;
      goto done;
    }
  if (!m->ff) m->ff = calloc(FF_MAX_KEYS, sizeof *m->ff);
  if (!m->ff) goto done;
  if (m->nff == FF_MAX_KEYS) { /* bounded: forget everything, say so */
    for (size_t i = 0; i < m->nff; i++) free(m->ff[i].key);
    m->nff = 0;
  }
  m->ff[m->nff].key = strdup(key);
  if (!m->ff[m->nff].key) goto done;
  m->ff[m->nff++].count = n = 1;
done:
  pthread_mutex_unlock(&m->flock);
  return n;
}

/* ---- fault specs ------------------------------------------------------- */

typedef struct {
  int latency_ms;
  int status; /* 0: none; else the HTTP status to answer with */
  bool quota;
  int retry_after_s;  /* -1: default; -2: omit */
  int retry_after_ms; /* -1: default; -2: omit */
  bool reset, malformed, truncated, no_usage;
  int slow_ms, stall_ms;
  int fail_first, ff_status;
  int ff_slow_ms; /* fail-first;slow=MS: the first N are slow, not failed */
  char ff_key[128];
  bool ff_key_set;
} fault;

static void fault_init(fault *f) {
  memset(f, 0, sizeof *f);
  f->retry_after_s = f->retry_after_ms = -1;
  f->ff_status = 500;
}

static bool parse_int(const char *s, size_t n, int lo, int hi, int *out) {
  if (n == 0 || n > 9) return false;
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return false;
    v = v * 10 + (s[i] - '0');
  }
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

static void trim(const char **s, size_t *n) {
  while (*n && isspace((unsigned char)**s)) (*s)++, (*n)--;
  while (*n && isspace((unsigned char)(*s)[*n - 1])) (*n)--;
}

static bool is_word(const char *s, size_t n, const char *w) {
  return strlen(w) == n && strncasecmp(s, w, n) == 0;
}

/* One item: name[=value](;param=value)*. */
static bool parse_item(fault *f, const char *s, size_t n, char *err,
                       size_t errlen) {
  const char *semi = memchr(s, ';', n);
  size_t head = semi ? (size_t)(semi - s) : n;
  const char *name = s, *val = NULL;
  size_t nn = head, vn = 0;
  const char *eq = memchr(s, '=', head);
  if (eq) {
    nn = (size_t)(eq - s);
    val = eq + 1;
    vn = head - nn - 1;
  }
  trim(&name, &nn);
  if (val) trim(&val, &vn);
  int v = 0;
  bool is_status = false, is_ff = false;
  if (is_word(name, nn, "latency")) {
    if (!val || !parse_int(val, vn, 0, MAX_WAIT_MS, &f->latency_ms)) goto bad;
  } else if (is_word(name, nn, "slow-stream")) {
    if (!val || !parse_int(val, vn, 0, MAX_WAIT_MS, &f->slow_ms)) goto bad;
  } else if (is_word(name, nn, "stall")) {
    f->stall_ms = STALL_DEFAULT_MS;
    if (val && !parse_int(val, vn, 0, MAX_WAIT_MS, &f->stall_ms)) goto bad;
  } else if (is_word(name, nn, "fail-first")) {
    if (!val || !parse_int(val, vn, 0, 1000000000, &f->fail_first)) goto bad;
    is_ff = true;
  } else if (is_word(name, nn, "reset") && !val) {
    f->reset = true;
  } else if (is_word(name, nn, "malformed") && !val) {
    f->malformed = true;
  } else if (is_word(name, nn, "truncated") && !val) {
    f->truncated = true;
  } else if (is_word(name, nn, "no-usage") && !val) {
    f->no_usage = true;
  } else if (is_word(name, nn, "429-quota") && !val) {
    f->status = 429;
    f->quota = true;
    is_status = true;
  } else if (!val && parse_int(name, nn, 400, 599, &v)) {
    f->status = v;
    f->quota = false;
    is_status = true;
  } else {
    goto bad;
  }
  /* a later status item replaces an earlier one whole, its retry headers
   * too ("503;retry-after=2" then "500" sends none) */
  if (is_status) f->retry_after_s = f->retry_after_ms = -1;
  /* parameters */
  while (semi) {
    const char *p = semi + 1;
    size_t left = n - (size_t)(p - s);
    semi = memchr(p, ';', left);
    size_t pn = semi ? (size_t)(semi - p) : left;
    const char *peq = memchr(p, '=', pn);
    if (!peq) goto badparam;
    const char *k = p, *pv = peq + 1;
    size_t kn = (size_t)(peq - p), pvn = pn - kn - 1;
    trim(&k, &kn);
    trim(&pv, &pvn);
    if (is_status && is_word(k, kn, "retry-after")) {
      if (is_word(pv, pvn, "none")) f->retry_after_s = -2;
      else if (!parse_int(pv, pvn, 0, 86400, &f->retry_after_s)) goto badparam;
    } else if (is_status && is_word(k, kn, "retry-after-ms")) {
      if (is_word(pv, pvn, "none")) f->retry_after_ms = -2;
      else if (!parse_int(pv, pvn, 0, 86400000, &f->retry_after_ms))
        goto badparam;
    } else if (is_ff && is_word(k, kn, "status")) {
      if (!parse_int(pv, pvn, 400, 599, &f->ff_status)) goto badparam;
    } else if (is_ff && is_word(k, kn, "slow")) {
      if (!parse_int(pv, pvn, 0, MAX_WAIT_MS, &f->ff_slow_ms)) goto badparam;
    } else if (is_ff && is_word(k, kn, "key")) {
      if (pvn >= sizeof f->ff_key) goto badparam;
      memcpy(f->ff_key, pv, pvn);
      f->ff_key[pvn] = '\0';
      f->ff_key_set = true;
    } else {
      goto badparam;
    }
    (void)pvn;
    continue;
  badparam:
    set_err(err, errlen, "bad fault parameter '%.*s' in '%.*s'", (int)pn, p,
            (int)n, s);
    return false;
  }
  return true;
bad:
  set_err(err, errlen,
          "unknown fault '%.*s' (see docs/mock-llm.md: latency=MS, 429, "
          "429-quota, 4xx/5xx, reset, malformed, truncated, slow-stream=MS, "
          "stall[=MS], fail-first=N)",
          (int)n, s);
  return false;
}

static bool parse_faults(fault *f, const char *spec, size_t len, char *err,
                         size_t errlen) {
  const char *p = spec, *end = spec + len;
  while (p < end) {
    const char *c = memchr(p, ',', (size_t)(end - p));
    const char *e = c ? c : end;
    const char *item = p;
    size_t n = (size_t)(e - p);
    trim(&item, &n);
    if (n && !parse_item(f, item, n, err, errlen)) return false;
    p = c ? c + 1 : end;
  }
  return true;
}

/* The fault spec carried by a model name: "mock-fault-SPEC" or
 * "NAME+fault=SPEC". Returns NULL when there is none. */
static const char *model_fault(const char *model) {
  const char *p = strstr(model, "+fault=");
  if (p) return p + 7;
  if (strncmp(model, "mock-fault-", 11) == 0) return model + 11;
  return NULL;
}

/* ---- reading requests ------------------------------------------------- */

/* Text of a message content: a string, or an array of parts whose "text"
 * members are joined with newlines. Appends to b. */
static void content_text(json_t *c, sbuf *b) {
  if (json_is_string(c)) {
    sb_addn(b, json_string_value(c), json_string_length(c));
    return;
  }
  if (!json_is_array(c)) return;
  size_t i;
  json_t *part;
  bool first = true;
  json_array_foreach(c, i, part) {
    json_t *t = json_object_get(part, "text");
    if (!json_is_string(t)) continue;
    if (!first) sb_add(b, "\n");
    sb_addn(b, json_string_value(t), json_string_length(t));
    first = false;
  }
}

/* ---- deterministic replies -------------------------------------------- */

/* The request a planning prompt is about: inside <request>...</request>,
 * else the rest of a line starting with "User request:", "Request:",
 * "Question:" or "Goal:" (the next non-empty line when that rest is empty,
 * as in gap.lua's template), else the last non-empty line. Mock markers
 * ([mock-...]) are removed; at most 60 bytes, cut at a word. */
static char *plan_topic(const char *text) {
  sbuf b = {0};
  const char *s = NULL, *e = NULL;
  const char *t = ci_find(text, "<request>");
  if (t) {
    s = t + 9;
    e = ci_find(s, "</request>");
    if (!e) e = s + strlen(s);
  }
  static const char *const labels[] = {"user request:", "request:",
                                       "question:", "goal:"};
  for (size_t i = 0; !s && i < LEN(labels); i++) {
    for (const char *line = text; line && *line;) {
      const char *q = line;
      while (*q == ' ' || *q == '\t' || *q == '-' || *q == '*') q++;
      size_t ln = strlen(labels[i]);
      if (strncasecmp(q, labels[i], ln) == 0) {
        s = q + ln;
        while (*s == ' ' || *s == '\t' || *s == '\r') s++;
        if (*s == '\n') /* "Request:" alone: the next non-empty line */
          while (isspace((unsigned char)*s)) s++;
        e = strchr(s, '\n');
        if (!e) e = s + strlen(s);
        break;
      }
      line = strchr(line, '\n');
      if (line) line++;
    }
  }
  if (!s) { /* last non-empty line */
    const char *line = text;
    while (line && *line) {
      const char *nl = strchr(line, '\n');
      const char *le = nl ? nl : line + strlen(line);
      for (const char *q = line; q < le; q++)
        if (!isspace((unsigned char)*q)) {
          s = line;
          e = le;
          break;
        }
      line = nl ? nl + 1 : NULL;
    }
  }
  if (!s) return strdup("the request");
  /* copy, dropping [mock-...] markers and squeezing whitespace */
  bool space = true;
  for (const char *q = s; q < e; q++) {
    if (*q == '[' && strncmp(q, "[mock-", 6) == 0) {
      const char *c = memchr(q, ']', (size_t)(e - q));
      if (c) {
        q = c;
        continue;
      }
    }
    if (isspace((unsigned char)*q)) {
      if (!space) sb_add(&b, " ");
      space = true;
    } else {
      sb_addn(&b, q, 1);
      space = false;
    }
  }
  char *r = sb_take(&b);
  if (!r) return NULL;
  size_t n = strlen(r);
  while (n && (r[n - 1] == ' ' || r[n - 1] == '.' || r[n - 1] == '?' ||
               r[n - 1] == '!' || r[n - 1] == ':'))
    r[--n] = '\0';
  if (n > 60) {
    size_t cut = 60;
    while (cut > 20 && r[cut] != ' ') cut--;
    if (r[cut] != ' ') {
      cut = 60;
      while (cut > 0 && ((unsigned char)r[cut] & 0xC0) == 0x80) cut--;
    }
    r[cut] = '\0';
  }
  if (!r[0]) {
    free(r);
    return strdup("the request");
  }
  return r;
}

/* A plan of 4-6 tasks: 1-3 independent, then joins (see the docs). */
static char *plan_reply(const char *text) {
  char *topic = plan_topic(text);
  if (!topic) return NULL;
  int ntask = 4 + (int)(fnv(topic) % 3);
  int fail_task = 0;
  const char *ft = strstr(text, "[mock-fail-task=");
  if (ft) fail_task = atoi(ft + 16);
  bool bad = strstr(text, "[mock-bad-plan]") && !strstr(text, "mock-bad-line");
  struct {
    const char *fmt, *deps;
  } t[6] = {
      {"Gather background on %s", "none"},
      {"List the key facts about %s", "none"},
      {"Identify risks and open questions about %s", "none"},
      {"Compare the findings of tasks 1 and 2 on %s", "Task 1, Task 2"},
      {"Write a summary of %s from tasks 3 and 4", "Task 3, Task 4"},
      {"", ""},
  };
  if (ntask == 4) {
    t[3].fmt = "Combine tasks 1 to 3 into a summary of %s";
    t[3].deps = "Task 1, Task 2, Task 3";
  } else if (ntask == 6) {
    t[4].fmt = "Assess the risks from task 3 for %s";
    t[4].deps = "Task 3";
    t[5].fmt = "Write a summary of %s from tasks 4 and 5";
    t[5].deps = "Task 4, Task 5";
  }
  sbuf b = {0};
  sb_printf(&b,
            "<think>The request about %s splits into %d tasks: three "
            "independent lookups run in parallel, then the results are "
            "joined.</think>\n<plan>\n",
            topic, ntask);
  for (int i = 0; i < ntask; i++) {
    if (bad && i == 1) {
      sb_printf(&b, "Task two - mock-bad-line %s | Dependencies: maybe\n",
                topic);
      continue;
    }
    sb_printf(&b, "Task %d: ", i + 1);
    sb_printf(&b, t[i].fmt, topic);
    if (fail_task == i + 1) sb_add(&b, " [mock-fault:400]");
    sb_printf(&b, " | Dependencies: %s\n", t[i].deps);
  }
  sb_add(&b, "</plan>");
  free(topic);
  return sb_take(&b);
}

static void add_quoted(sbuf *b, const char *s) {
  char *x = excerpt(s, EXCERPT);
  if (!x) {
    b->oom = true;
    return;
  }
  sb_add(b, x);
  free(x);
}

/* Summarises one observation entry: a string, or an object with output /
 * result / answer / error / status members. */
static void add_result(sbuf *b, const char *key, json_t *v, sbuf *failed) {
  sb_printf(b, "- %s: ", key);
  if (json_is_string(v)) {
    add_quoted(b, json_string_value(v));
  } else if (json_is_object(v)) {
    static const char *const keys[] = {"output", "result", "answer", "text",
                                       "error"};
    const char *st = json_string_value(json_object_get(v, "status"));
    const char *er = json_string_value(json_object_get(v, "error"));
    bool fail = (st && ci_find(st, "fail")) || er;
    const char *txt = NULL;
    for (size_t i = 0; !txt && i < LEN(keys); i++)
      txt = json_string_value(json_object_get(v, keys[i]));
    if (fail) {
      sb_add(b, "failed");
      if (er) {
        sb_add(b, " (");
        add_quoted(b, er);
        sb_add(b, ")");
      }
      sb_printf(failed, "%s%s", failed->len ? ", " : "", key);
    } else if (txt) {
      add_quoted(b, txt);
    } else if (st) {
      sb_add(b, st);
    }
  } else {
    char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (d) add_quoted(b, d);
    free(d);
  }
  sb_add(b, "\n");
}

/* The start of "Task N" when the line is one (after spaces, bullets and
 * quotes), else NULL. */
static const char *task_line(const char *line) {
  const char *q = line;
  while (*q && strchr(" \t-*\"", *q)) q++;
  return strncasecmp(q, "task ", 5) == 0 && isdigit((unsigned char)q[5]) ? q
                                                                         : NULL;
}

/* Results written as text, one block per "Task N" line: "Task 1: result",
 * or gap.lua's "Task 1 (passed): description" / "Task 2 failed: ..."
 * followed by a "Result:" or "Error:" line and the text. Appends "- Task N:
 * <first 80 chars>" lines to out and the failed names to failed; returns
 * the number of tasks. */
static size_t text_results(const char *text, sbuf *out, sbuf *failed) {
  size_t n = 0;
  for (const char *line = text; line && *line;) {
    const char *nl = strchr(line, '\n');
    const char *q = task_line(line);
    line = nl ? nl + 1 : NULL;
    if (!q || (nl && q > nl)) continue;
    const char *end = nl ? nl : q + strlen(q);
    const char *name_end = q + 5;
    while (isdigit((unsigned char)*name_end)) name_end++;
    const char *colon = memchr(name_end, ':', (size_t)(end - name_end));
    if (!colon) continue;
    char *status = strndup(name_end, (size_t)(colon - name_end));
    char *value = strndup(colon + 1, (size_t)(end - colon - 1));
    /* a "Result:" / "Error:" line below replaces the description */
    for (const char *l2 = line; l2 && *l2;) {
      const char *nl2 = strchr(l2, '\n');
      const char *e2 = nl2 ? nl2 : l2 + strlen(l2);
      const char *p = l2;
      while (p < e2 && isspace((unsigned char)*p)) p++;
      if (p == e2) { /* blank */
        l2 = nl2 ? nl2 + 1 : NULL;
        continue;
      }
      size_t lab = strncasecmp(p, "result:", 7) == 0  ? 7
                   : strncasecmp(p, "error:", 6) == 0 ? 6
                                                      : 0;
      if (lab) {
        const char *v = p + lab;
        while (v < e2 && isspace((unsigned char)*v)) v++;
        if (v == e2 && nl2) { /* the text starts on the next line */
          v = nl2 + 1;
          while (*v == '\n') v++;
          e2 = strchr(v, '\n');
          if (!e2) e2 = v + strlen(v);
        }
        free(value);
        value = strndup(v, (size_t)(e2 - v));
      }
      break;
    }
    if (status && value) {
      const char *v = value;
      while (isspace((unsigned char)*v)) v++;
      bool fail = ci_find(status, "fail") || ci_find(status, "skip") ||
                  ci_find(status, "error") || strncasecmp(v, "failed", 6) == 0;
      const char *st = status;
      while (isspace((unsigned char)*st)) st++;
      bool label = fail && *st && *st != '(';
      sb_printf(out, "- %.*s%s%s: ", (int)(name_end - q), q, label ? " " : "",
                label ? st : "");
      add_quoted(out, *v ? v : "(no result)");
      sb_add(out, "\n");
      if (fail)
        sb_printf(failed, "%s%.*s", failed->len ? ", " : "",
                  (int)(name_end - q), q);
      n++;
    }
    free(status);
    free(value);
  }
  return n;
}

/* The answer to a synthesis prompt: one line per task result (from the
 * JSON in <observation>, else from lines starting with "Task N"), then the
 * failed tasks and every prompt line mentioning "failed". */
static char *synth_reply(const char *text) {
  sbuf b = {0}, failed = {0};
  bool tags = ci_find(text, "<answer>") != NULL;
  size_t nres = 0;
  sbuf body = {0};
  const char *obs = ci_find(text, "<observation>");
  json_t *o = NULL;
  if (obs) {
    json_error_t je;
    o = json_loads(obs + 13, JSON_DISABLE_EOF_CHECK, &je);
  }
  if (json_is_object(o)) {
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
      add_result(&body, k, v, &failed);
      nres++;
    }
  } else {
    nres = text_results(text, &body, &failed);
  }
  json_decref(o);
  if (tags) sb_add(&b, "<answer>\n");
  sb_printf(&b, "Final answer from %zu task results.\n", nres);
  if (body.s) sb_add(&b, body.s);
  if (failed.len) sb_printf(&b, "Failed tasks: %s.\n", failed.s);
  for (const char *line = text; line && *line;) {
    const char *nl = strchr(line, '\n');
    size_t ln = nl ? (size_t)(nl - line) : strlen(line);
    char *l = strndup(line, ln);
    if (l && ci_find(l, "failed") && !strstr(l, "{") && !task_line(l)) {
      sb_add(&b, "Noted: \"");
      const char *q = l;
      while (isspace((unsigned char)*q)) q++;
      add_quoted(&b, q);
      sb_add(&b, "\"\n");
    }
    free(l);
    line = nl ? nl + 1 : NULL;
  }
  if (tags) sb_add(&b, "</answer>");
  else if (b.len && b.s[b.len - 1] == '\n') b.s[--b.len] = '\0';
  free(body.s);
  free(failed.s);
  return sb_take(&b);
}

enum { KIND_TASK, KIND_PLAN, KIND_SYNTH };

/* In this order: synthesis when an <observation> is followed by content;
 * a task when it says "your task (task" (gap.lua's task prompt, which
 * repeats the request: one saying "write a plan" must not make every task
 * a planning call); planning when the text says "<plan>" or "write a
 * plan"; a task when it says "your task" (a request such as "Your task:
 * write a plan" inside gap.lua's planning prompt is still a plan); synthesis
 * when it says "final answer" or "<answer>"; else a task. */
static int classify(const char *text) {
  const char *obs = ci_find(text, "<observation>");
  if (obs) {
    const char *q = obs + 13;
    while (isspace((unsigned char)*q)) q++;
    if (*q && *q != '<') return KIND_SYNTH;
  }
  if (ci_find(text, "your task (task")) return KIND_TASK;
  if (ci_find(text, "<plan>") || ci_find(text, "write a plan"))
    return KIND_PLAN;
  if (ci_find(text, "your task")) return KIND_TASK;
  if (ci_find(text, "final answer") || ci_find(text, "<answer>"))
    return KIND_SYNTH;
  return KIND_TASK;
}

static char *make_reply(const char *model, const char *last_user) {
  if (strncmp(model, "mock-echo", 9) == 0 &&
      (model[9] == '\0' || model[9] == '+'))
    return strdup(last_user);
  switch (classify(last_user)) {
  case KIND_PLAN: return plan_reply(last_user);
  case KIND_SYNTH: return synth_reply(last_user);
  default: { /* quote from "Your task" on, so each task's result differs */
    const char *from = ci_find(last_user, "your task");
    char *x = excerpt(from ? from : last_user, EXCERPT);
    if (!x) return NULL;
    sbuf b = {0};
    sb_printf(&b, "Result for: %s", x);
    free(x);
    return sb_take(&b);
  }
  }
}

/* Cuts the reply to max words (max_tokens, counted as words). */
static bool cut_words(char *s, long max) {
  if (max <= 0) return false;
  long n = 0;
  bool in = false;
  for (char *p = s; *p; p++) {
    bool sp = isspace((unsigned char)*p);
    if (!sp && !in && ++n > max) {
      while (p > s && isspace((unsigned char)p[-1])) p--;
      *p = '\0';
      return true;
    }
    in = !sp;
  }
  return false;
}

/* ---- responses: pieces sent one after another ------------------------- */

/* A body made of pieces (SSE events, or parts of a JSON document). The
 * reader sends them in order, waiting slow_ms before each piece after the
 * first, stall_ms before piece stall_at, and closing the connection before
 * piece cut_at (a truncated body). Owned by its MHD response. */
typedef struct {
  orch_mock *m;
  struct MHD_Connection *conn;
  int fd;
  sbuf data;
  size_t *off; /* piece i is data[off[i] .. off[i+1]) */
  size_t n, cap;
  size_t idx, pos; /* next piece, bytes of it already sent */
  int slow_ms, stall_ms;
  size_t stall_at, cut_at;
  int64_t due, stall_end; /* 0: not waiting */
} body;

static body *body_new(orch_mock *m, struct MHD_Connection *conn) {
  body *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->m = m;
  b->conn = conn;
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  b->fd = ci ? ci->connect_fd : -1;
  b->stall_at = b->cut_at = SIZE_MAX;
  return b;
}

static void body_free(void *cls) {
  body *b = cls;
  if (!b) return;
  free(b->data.s);
  free(b->off);
  free(b);
}

/* Starts a new piece at the current end of data. */
static void body_mark(body *b) {
  if (b->n + 2 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 32;
    size_t *o = realloc(b->off, cap * sizeof *o);
    if (!o) {
      b->data.oom = true;
      return;
    }
    b->off = o;
    b->cap = cap;
  }
  if (b->n == 0) b->off[0] = 0;
  b->off[++b->n] = b->data.len;
}

static void body_piece(body *b, const char *s, size_t len) {
  sb_addn(&b->data, s, len);
  body_mark(b);
}

/* Appends an SSE event (event line only when name is not NULL); takes j. */
static void body_event(body *b, const char *name, json_t *j) {
  char *d = dump_compact(j);
  json_decref(j);
  if (!d) {
    b->data.oom = true;
    return;
  }
  if (name) sb_printf(&b->data, "event: %s\n", name);
  sb_add(&b->data, "data: ");
  sb_add(&b->data, d);
  sb_add(&b->data, "\n\n");
  body_mark(b);
  free(d);
}

static bool peer_gone(int fd) {
  if (fd < 0) return false;
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  if (p.revents & POLLIN) { /* data or EOF? */
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0;
  }
  return false;
}

/* Ends the body with an error. MHD 0.9.75 in epoll mode does not close a
 * chunked response that ends with an error until the connection times
 * out; shutting the socket down makes the close (the truncation the client
 * must see) immediate. */
static ssize_t body_abort(body *b) {
  if (b->fd >= 0) shutdown(b->fd, SHUT_RDWR);
  return MHD_CONTENT_READER_END_WITH_ERROR;
}

static ssize_t body_read(void *cls, uint64_t at, char *buf, size_t max) {
  body *b = cls;
  (void)at;
  size_t out = 0;
  if (atomic_load(&b->m->stopping)) return body_abort(b);
  while (out < max && b->idx < b->n) {
    if (b->pos == 0) { /* at the start of a piece: any wait or cut? */
      if (b->idx == b->cut_at)
        return out ? (ssize_t)out : body_abort(b);
      int64_t now = now_ns();
      if (!b->due) {
        int64_t wait = 0;
        if (b->idx > 0) wait += (int64_t)b->slow_ms * 1000000;
        if (b->idx == b->stall_at) {
          b->stall_end = now + (int64_t)b->stall_ms * 1000000;
          wait += (int64_t)b->stall_ms * 1000000;
        }
        if (wait > 0) b->due = now + wait;
      }
      if (b->due && now < b->due) {
        if (out) return (ssize_t)out; /* send what we have first */
        int64_t until = b->due;
        if (b->stall_end && now < b->stall_end) {
          /* a stall ends early when the client hangs up */
          if (peer_gone(b->fd)) return body_abort(b);
          int64_t check = now + (int64_t)STALL_CHECK_MS * 1000000;
          if (check < until) until = check;
        }
        if (!suspend_until(b->m, b->conn, until)) return body_abort(b);
        return 0;
      }
      b->due = 0;
      b->stall_end = 0;
    }
    size_t len = b->off[b->idx + 1] - b->off[b->idx] - b->pos;
    size_t k = len < max - out ? len : max - out;
    memcpy(buf + out, b->data.s + b->off[b->idx] + b->pos, k);
    out += k;
    b->pos += k;
    if (b->pos == b->off[b->idx + 1] - b->off[b->idx]) {
      b->idx++;
      b->pos = 0;
    }
  }
  if (out) return (ssize_t)out;
  return b->cut_at <= b->n ? body_abort(b) : MHD_CONTENT_READER_END_OF_STREAM;
}

/* ---- one request ------------------------------------------------------- */

typedef struct {
  orch_mock *m;
  sbuf in;        /* the request body */
  bool too_big;
  bool started;   /* the first complete call ran */
  bool waited;    /* latency served */
  int api;
  /* decided on the first complete call */
  int status;     /* 0: a normal reply */
  bool invalid;   /* status is the request's own fault (400, 413): no wait */
  char *errtype, *errmsg;
  fault f;
  bool stream, include_usage;
  char *model, *reply;
  bool cut; /* the reply was cut at max_tokens */
  size_t in_tok, out_tok;
  unsigned long seq;
} req;

static void req_free(req *r) {
  if (!r) return;
  free(r->in.s);
  free(r->errtype);
  free(r->errmsg);
  free(r->model);
  free(r->reply);
  free(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  (void)toe;
  req_free(*con_cls);
  *con_cls = NULL;
}

static void set_error(req *r, int status, const char *type, const char *msg) {
  r->status = status;
  free(r->errtype);
  free(r->errmsg);
  r->errtype = strdup(type);
  r->errmsg = strdup(msg);
}

/* An error in the request itself (bad JSON, a missing field, an unknown
 * fault): answered at once, before any injected latency. */
static void set_invalid(req *r, int status, const char *type, const char *msg) {
  set_error(r, status, type, msg);
  r->invalid = true;
}

static const char *error_type(int api, int status, bool quota) {
  if (quota) return "insufficient_quota";
  if (api == API_ANTHROPIC) {
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 529: return "overloaded_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
  }
  switch (status) {
  case 429: return "rate_limit_exceeded";
  case 529: return "overloaded_error";
  default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

static const char *error_message(int status, bool quota) {
  if (quota) return "You exceeded your current quota";
  switch (status) {
  case 429: return "Rate limit reached (mock fault)";
  case 500: return "Internal server error (mock fault)";
  case 503: return "Service unavailable (mock fault)";
  case 529: return "Overloaded (mock fault)";
  default: return "Mock fault";
  }
}

static enum MHD_Result queue_buf(struct MHD_Connection *c, int status,
                                 const char *ctype, char *data, size_t len,
                                 const fault *f) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(data);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", ctype);
  /* retry headers: by default on a 429 that is not about the quota; on
   * any error status whose fault item set them */
  bool given = f && (f->retry_after_s >= 0 || f->retry_after_ms >= 0);
  if (f && status >= 400 && ((status == 429 && !f->quota) || given)) {
    char v[32];
    int s = f->retry_after_s, ms = f->retry_after_ms;
    if (s == -1) s = ms >= 0 ? (ms + 999) / 1000 : 1;
    if (ms == -1) ms = s >= 0 ? s * 1000 : 1000;
    if (s >= 0) {
      snprintf(v, sizeof v, "%d", s);
      MHD_add_response_header(resp, "Retry-After", v);
    }
    if (ms >= 0) {
      snprintf(v, sizeof v, "%d", ms);
      MHD_add_response_header(resp, "retry-after-ms", v);
    }
  }
  if (status == 405) MHD_add_response_header(resp, "Allow", "POST");
  enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return ret;
}

static enum MHD_Result queue_text(struct MHD_Connection *c, int status,
                                  const char *ctype, const char *text) {
  char *d = strdup(text);
  if (!d) return MHD_NO;
  return queue_buf(c, status, ctype, d, strlen(d), NULL);
}

/* Takes j. */
static enum MHD_Result queue_json(struct MHD_Connection *c, int status,
                                  json_t *j, const fault *f) {
  char *d = dump_compact(j);
  json_decref(j);
  if (!d) return MHD_NO;
  return queue_buf(c, status, "application/json", d, strlen(d), f);
}

static enum MHD_Result queue_error(req *r, struct MHD_Connection *c) {
  json_t *e = json_pack("{s:s, s:s}", "type", r->errtype, "message",
                        r->errmsg);
  json_t *j;
  if (r->api == API_ANTHROPIC)
    j = json_pack("{s:s, s:o}", "type", "error", "error", e);
  else {
    if (e) {
      json_object_set_new(e, "param", json_null());
      json_object_set_new(e, "code", json_string(r->errtype));
    }
    j = json_pack("{s:o}", "error", e);
  }
  return queue_json(c, r->status, j, &r->f);
}

/* Dumps j compactly and drops it. */
static char *dump_new(json_t *j) {
  char *d = dump_compact(j);
  json_decref(j);
  return d;
}

static json_t *usage_json(const req *r) {
  if (r->api == API_ANTHROPIC)
    return json_pack("{s:I, s:I}", "input_tokens", (json_int_t)r->in_tok,
                     "output_tokens", (json_int_t)r->out_tok);
  return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)r->in_tok,
                   "completion_tokens", (json_int_t)r->out_tok, "total_tokens",
                   (json_int_t)(r->in_tok + r->out_tok));
}

static char *reply_id(const req *r) {
  char *id = malloc(48);
  if (id)
    snprintf(id, 48, r->api == API_ANTHROPIC ? "msg_mock_%lu"
                                             : "chatcmpl-mock-%lu",
             r->seq);
  return id;
}

static json_t *full_json(const req *r, const char *id) {
  if (r->api == API_ANTHROPIC)
    return json_pack("{s:s, s:s, s:s, s:s, s:[{s:s, s:s}], s:s, s:n, s:o}",
                     "id", id, "type", "message", "role", "assistant",
                     "model", r->model, "content", "type", "text", "text",
                     r->reply, "stop_reason",
                     r->cut ? "max_tokens" : "end_turn", "stop_sequence",
                     "usage", usage_json(r));
  return json_pack(
      "{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:n, s:s}], s:o}", "id",
      id, "object", "chat.completion", "created", (json_int_t)time(NULL),
      "model", r->model, "choices", "index", 0, "message", "role",
      "assistant", "content", r->reply, "logprobs", "finish_reason",
      r->cut ? "length" : "stop", "usage", usage_json(r));
}

static bool set_str(json_t *o, const char *k, const char *v) {
  return json_string_set(json_object_get(o, k), v) == 0;
}

static bool set_int(json_t *o, const char *k, json_int_t v) {
  return json_integer_set(json_object_get(o, k), v) == 0;
}

/* full_json(r, id), but the document is the loop's own, built once per API
 * and refilled: a whole answer costs a few string copies instead of a
 * dozen objects and their tables. Loop thread only; returns a new
 * reference (the caller drops it). */
static json_t *full_json_reuse(mloop *lp, const req *r, const char *id) {
  bool an = r->api == API_ANTHROPIC;
  if (r->f.no_usage) { /* as servers that leave usage out */
    json_t *t = full_json(r, id);
    json_object_del(t, "usage");
    return t;
  }
  json_t *t = lp ? lp->reply[an] : NULL;
  if (!t) {
    t = full_json(r, id);
    if (t && lp) lp->reply[an] = json_incref(t);
    return t;
  }
  bool ok;
  if (an) {
    json_t *u = json_object_get(t, "usage");
    ok = set_str(t, "id", id) && set_str(t, "model", r->model) &&
         set_str(json_array_get(json_object_get(t, "content"), 0), "text",
                 r->reply) &&
         set_str(t, "stop_reason", r->cut ? "max_tokens" : "end_turn") &&
         set_int(u, "input_tokens", (json_int_t)r->in_tok) &&
         set_int(u, "output_tokens", (json_int_t)r->out_tok);
  } else {
    json_t *ch = json_array_get(json_object_get(t, "choices"), 0);
    json_t *u = json_object_get(t, "usage");
    ok = set_str(t, "id", id) && set_int(t, "created", (json_int_t)time(NULL)) &&
         set_str(t, "model", r->model) &&
         set_str(json_object_get(ch, "message"), "content", r->reply) &&
         set_str(ch, "finish_reason", r->cut ? "length" : "stop") &&
         set_int(u, "prompt_tokens", (json_int_t)r->in_tok) &&
         set_int(u, "completion_tokens", (json_int_t)r->out_tok) &&
         set_int(u, "total_tokens", (json_int_t)(r->in_tok + r->out_tok));
  }
  if (!ok) return full_json(r, id); /* e.g. text that is not UTF-8 */
  return json_incref(t);
}

/* Splits the reply into deltas of at least 16 bytes ending after spaces. */
static size_t next_delta(const char *s, size_t at) {
  size_t n = strlen(s), e = at;
  while (e < n) {
    e++;
    if (e - at >= 16 && isspace((unsigned char)s[e - 1]) &&
        !isspace((unsigned char)s[e]))
      break;
  }
  return e;
}

static json_t *oa_chunk(const req *r, const char *id, json_t *delta,
                        const char *finish) {
  return json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s?}]}", "id",
                   id, "object", "chat.completion.chunk", "created",
                   (json_int_t)time(NULL), "model", r->model, "choices",
                   "index", 0, "delta", delta, "logprobs", "finish_reason",
                   finish);
}

static void build_stream(const req *r, body *b, const char *id) {
  const char *s = r->reply;
  size_t n = strlen(s);
  bool an = r->api == API_ANTHROPIC;
  if (an) {
    json_t *ms = json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, "
                           "s:{s:I, s:i}}}",
                           "type", "message_start", "message", "id", id,
                           "type", "message", "role", "assistant", "model",
                           r->model, "content", "stop_reason",
                           "stop_sequence", "usage", "input_tokens",
                           (json_int_t)r->in_tok, "output_tokens", 1);
    if (r->f.no_usage) json_object_del(json_object_get(ms, "message"), "usage");
    body_event(b, "message_start", ms);
    body_event(b, "content_block_start",
               json_pack("{s:s, s:i, s:{s:s, s:s}}", "type",
                         "content_block_start", "index", 0, "content_block",
                         "type", "text", "text", ""));
    body_event(b, "ping", json_pack("{s:s}", "type", "ping"));
  } else {
    body_event(b, NULL,
               oa_chunk(r, id,
                        json_pack("{s:s, s:s}", "role", "assistant",
                                  "content", ""),
                        NULL));
  }
  bool first = true;
  for (size_t at = 0; at < n || (first && n == 0);) {
    size_t e = next_delta(s, at);
    json_t *txt = json_stringn(s + at, e - at);
    if (an)
      body_event(b, "content_block_delta",
                 json_pack("{s:s, s:i, s:{s:s, s:o}}", "type",
                           "content_block_delta", "index", 0, "delta", "type",
                           "text_delta", "text", txt));
    else
      body_event(b, NULL, oa_chunk(r, id, json_pack("{s:o}", "content", txt),
                                   NULL));
    if (first && r->f.malformed) { /* one event that is not JSON */
      const char *bad =
          an ? "event: content_block_delta\ndata: {\"type\":"
               "\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
               "\"text_delta\",\"text\":\"mock malformed\n\n"
             : "data: {\"id\":\"mock\",\"choices\":[{\"index\":0,\"delta\":"
               "{\"content\":\"mock malformed\n\n";
      body_piece(b, bad, strlen(bad));
    }
    first = false;
    at = e;
  }
  if (an) {
    body_event(b, "content_block_stop",
               json_pack("{s:s, s:i}", "type", "content_block_stop", "index",
                         0));
    json_t *md = json_pack("{s:s, s:{s:s, s:n}, s:{s:I}}", "type",
                           "message_delta", "delta", "stop_reason",
                           r->cut ? "max_tokens" : "end_turn",
                           "stop_sequence", "usage", "output_tokens",
                           (json_int_t)r->out_tok);
    if (r->f.no_usage) json_object_del(md, "usage");
    body_event(b, "message_delta", md);
    body_event(b, "message_stop", json_pack("{s:s}", "type", "message_stop"));
  } else {
    body_event(b, NULL,
               oa_chunk(r, id, json_object(), r->cut ? "length" : "stop"));
    if (r->include_usage && !r->f.no_usage)
      body_event(b, NULL,
                 json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", id,
                           "object", "chat.completion.chunk", "created",
                           (json_int_t)time(NULL), "model", r->model,
                           "choices", "usage", usage_json(r)));
    body_piece(b, "data: [DONE]\n\n", 14);
  }
}

static enum MHD_Result queue_reply(req *r, struct MHD_Connection *c) {
  char *id = reply_id(r);
  body *b = NULL;
  char *doc = NULL;
  enum MHD_Result ret = MHD_NO;
  if (!id) goto done;
  const fault *f = &r->f;
  bool shaped = f->malformed || f->truncated || f->slow_ms || f->stall_ms;
  if (!r->stream) {
    doc = dump_new(full_json_reuse(loop_of(r->m, c), r, id));
    if (!doc) goto done;
    if (f->malformed) { /* valid JSON cut in half, then junk */
      size_t half = strlen(doc) / 2;
      doc[half] = '\0';
      sbuf t = {0};
      sb_add(&t, doc);
      sb_add(&t, " <mock malformed>");
      free(doc);
      doc = sb_take(&t);
      if (!doc) goto done;
    }
    if (!shaped || (f->malformed && !f->truncated && !f->slow_ms &&
                    !f->stall_ms)) {
      size_t len = strlen(doc);
      ret = queue_buf(c, 200, "application/json", doc, len, NULL);
      doc = NULL;
      goto done;
    }
  }
  b = body_new(r->m, c);
  if (!b) goto done;
  if (r->stream) {
    build_stream(r, b, id);
    if (f->truncated) b->cut_at = b->n / 2 ? b->n / 2 : 1;
  } else { /* four parts, sent with the shape the faults ask for */
    size_t len = strlen(doc), q = len / 4;
    body_piece(b, doc, q);
    body_piece(b, doc + q, q);
    body_piece(b, doc + 2 * q, q);
    body_piece(b, doc + 3 * q, len - 3 * q);
    if (f->truncated) b->cut_at = 2;
  }
  if (b->data.oom) goto done;
  b->slow_ms = f->slow_ms;
  if (f->stall_ms) {
    b->stall_ms = f->stall_ms;
    b->stall_at = 1;
  }
  uint64_t size = r->stream ? MHD_SIZE_UNKNOWN : (uint64_t)b->data.len;
  struct MHD_Response *resp =
      MHD_create_response_from_callback(size, 4096, body_read, b, body_free);
  if (!resp) goto done;
  b = NULL; /* owned by resp */
  MHD_add_response_header(resp, "Content-Type",
                          r->stream ? "text/event-stream" : "application/json");
  if (r->stream) MHD_add_response_header(resp, "Cache-Control", "no-cache");
  MHD_add_response_header(resp, r->api == API_ANTHROPIC ? "request-id"
                                                        : "x-request-id",
                          id);
  ret = MHD_queue_response(c, 200, resp);
  MHD_destroy_response(resp);
done:
  body_free(b);
  free(doc);
  free(id);
  return ret;
}

/* Reads the JSON request and decides the answer (first complete call). */
static void decide(req *r, struct MHD_Connection *c, const char *hdr_fault) {
  orch_mock *m = r->m;
  json_error_t je;
  json_t *j = NULL;
  sbuf last = {0}, spec = {0};
  char msg[512];
  r->seq = atomic_fetch_add(&m->seq, 1) + 1;
  if (r->too_big) {
    set_invalid(r, 413, error_type(r->api, 413, false),
              "request body too large");
    goto done;
  }
  j = json_loadb(r->in.s ? r->in.s : "", r->in.len, 0, &je);
  if (!json_is_object(j)) {
    snprintf(msg, sizeof msg, "invalid JSON body at byte %d: %s",
             je.position, j ? "not an object" : je.text);
    set_invalid(r, 400, error_type(r->api, 400, false), msg);
    goto done;
  }
  const char *model = json_string_value(json_object_get(j, "model"));
  json_t *msgs = json_object_get(j, "messages");
  if (!model || !json_is_array(msgs) || json_array_size(msgs) == 0) {
    set_invalid(r, 400, error_type(r->api, 400, false),
              !model ? "model: field required"
                     : "messages: a non-empty array is required");
    goto done;
  }
  r->model = strdup(model);
  json_t *mt = json_object_get(j, "max_tokens");
  if (!mt) mt = json_object_get(j, "max_completion_tokens");
  if (r->api == API_ANTHROPIC) {
    if (!json_is_integer(mt)) {
      set_invalid(r, 400, "invalid_request_error",
                "max_tokens: field required");
      goto done;
    }
    if (!MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                     "anthropic-version")) {
      set_invalid(r, 400, "invalid_request_error",
                "anthropic-version: header is required");
      goto done;
    }
  }
  r->stream = json_is_true(json_object_get(j, "stream"));
  r->include_usage = json_is_true(
      json_object_get(json_object_get(j, "stream_options"), "include_usage"));
  /* texts: the prompt's words, and the last user message */
  sbuf all = {0};
  content_text(json_object_get(j, "system"), &all);
  size_t i;
  json_t *msgv;
  json_array_foreach(msgs, i, msgv) {
    json_t *content = json_object_get(msgv, "content");
    sb_add(&all, "\n");
    content_text(content, &all);
    const char *role = json_string_value(json_object_get(msgv, "role"));
    if (role && strcmp(role, "user") == 0) {
      last.len = 0;
      if (last.s) last.s[0] = '\0';
      content_text(content, &last);
    }
  }
  r->in_tok = count_words(all.s);
  free(all.s);
  const char *lu = last.s ? last.s : "";
  /* faults: header, then the model name, then a marker in a task prompt */
  if (hdr_fault) sb_add(&spec, hdr_fault);
  const char *mf = model_fault(model);
  if (mf) sb_printf(&spec, ",%s", mf);
  const char *mk = strstr(lu, "[mock-fault:");
  if (mk && classify(lu) == KIND_TASK) {
    const char *e = strchr(mk, ']');
    if (e) sb_printf(&spec, ",%.*s", (int)(e - mk - 12), mk + 12);
  }
  fault_init(&r->f);
  if (spec.len && !parse_faults(&r->f, spec.s, spec.len, msg, sizeof msg)) {
    set_invalid(r, 400, "invalid_request_error", msg);
    goto done;
  }
  if (r->f.fail_first) {
    const char *key = r->f.ff_key_set ? r->f.ff_key : NULL;
    if (!key) key = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                "X-Mock-Key");
    bool first = ff_count(m, key ? key : "") <= (unsigned long)r->f.fail_first;
    if (first && r->f.ff_slow_ms) {
      r->f.latency_ms += r->f.ff_slow_ms; /* slow, then a normal answer */
    } else if (first) {
      set_error(r, r->f.ff_status,
                error_type(r->api, r->f.ff_status, false),
                "failing the first requests of this key (mock fault)");
      goto done;
    }
  }
  if (r->f.status) {
    set_error(r, r->f.status, error_type(r->api, r->f.status, r->f.quota),
              error_message(r->f.status, r->f.quota));
    goto done;
  }
  r->reply = make_reply(model, lu);
  if (!r->reply) {
    set_error(r, 500, error_type(r->api, 500, false), "out of memory");
    goto done;
  }
  if (json_is_integer(mt))
    r->cut = cut_words(r->reply, (long)json_integer_value(mt));
  r->out_tok = count_words(r->reply);
done:
  free(last.s);
  free(spec.s);
  json_decref(j);
}

static char *models_list(void) {
  static const char *const ids[] = {"mock", "mock-echo", "mock-fast",
                                    "mock-strong", "mock-fault-429"};
  json_t *data = json_array();
  for (size_t i = 0; i < LEN(ids); i++)
    json_array_append_new(
        data, json_pack("{s:s, s:s, s:i, s:s}", "id", ids[i], "object",
                        "model", "created", 0, "owned_by", "orchestrate"));
  return dump_new(json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c,
                              const char *url, const char *method,
                              const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
  orch_mock *m = cls;
  (void)version;
  req *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->m = m;
    *con_cls = r;
    return MHD_YES;
  }
  if (*upload_size) {
    if (r->in.len + *upload_size > MAX_BODY) r->too_big = true;
    else sb_addn(&r->in, upload, *upload_size);
    if (r->in.oom) r->too_big = true;
    *upload_size = 0;
    return MHD_YES;
  }
  if (atomic_load(&m->stopping)) return MHD_NO;
  bool post = strcmp(method, "POST") == 0;
  bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
  if (!r->started) {
    r->started = true;
    atomic_fetch_add(&m->requests, 1);
    if (strcmp(url, "/health") == 0 || strcmp(url, "/v1/health") == 0)
      return get ? queue_text(c, 200, "text/plain", "ok")
                 : queue_text(c, 405, "text/plain", "method not allowed");
    if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0) {
      char *d = models_list();
      if (!d) return MHD_NO;
      return queue_buf(c, get ? 200 : 405, "application/json", d, strlen(d),
                       NULL);
    }
    if (strcmp(url, "/v1/chat/completions") == 0 ||
        strcmp(url, "/chat/completions") == 0)
      r->api = API_OPENAI;
    else if (strcmp(url, "/v1/messages") == 0)
      r->api = API_ANTHROPIC;
    else
      return queue_json(c, 404,
                        json_pack("{s:{s:s, s:s}}", "error", "type",
                                  "not_found_error", "message",
                                  "unknown path"),
                        NULL);
    if (!post)
      return queue_json(c, 405,
                        json_pack("{s:{s:s, s:s}}", "error", "type",
                                  "invalid_request_error", "message",
                                  "use POST"),
                        NULL);
    decide(r, c, MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                             "X-Mock-Fault"));
  }
  if (r->invalid) return queue_error(r, c);
  if (r->f.latency_ms && !r->waited) {
    r->waited = true;
    int64_t due = now_ns() + (int64_t)r->f.latency_ms * 1000000;
    return suspend_until(m, c, due) ? MHD_YES : MHD_NO;
  }
  if (r->f.reset) return MHD_NO; /* close without a response */
  if (r->status) return queue_error(r, c);
  return queue_reply(r, c);
}

/* ---- public API -------------------------------------------------------- */

ORCH_API int orch_mock_start(orch_mock **out /* OUT */, const char *host,
                             int port, char *err, size_t errlen) {
  orch_mock *m = NULL;
  int rc = ORCH_EINVAL, fd = -1;
  struct sockaddr_storage ss;
  socklen_t sl;
  if (!out) {
    set_err(err, errlen, "orch_mock_start: out is needed (it is NULL)");
    return ORCH_EINVAL;
  }
  *out = NULL;
  if (port < 0 || port > 65535) {
    set_err(err, errlen, "port %d out of range", port);
    return ORCH_EINVAL;
  }
  if (!host || !*host || strcmp(host, "localhost") == 0) host = "127.0.0.1";
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    sl = sizeof *a4;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    sl = sizeof *a6;
  } else {
    set_err(err, errlen,
            "host '%s' is not an IP address (or localhost)", host);
    return ORCH_EINVAL;
  }
  m = calloc(1, sizeof *m);
  if (!m) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  pthread_mutex_init(&m->flock, NULL);

  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  if (fd < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 4096) != 0) {
    set_err(err, errlen, "cannot listen on %s:%d: %s", host, port,
            strerror(errno));
    rc = ORCH_EIO;
    goto done;
  }
  sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  m->port = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);

  /* One loop per CPU, at most MAX_LOOPS (ORCH_MOCK_THREADS overrides). */
  long nl = sysconf(_SC_NPROCESSORS_ONLN);
  const char *env = getenv("ORCH_MOCK_THREADS");
  if (env && atoi(env) > 0) nl = atoi(env);
  m->nloops = nl < 1 ? 1 : nl > MAX_LOOPS ? MAX_LOOPS : (size_t)nl;
  m->tick_ns = (int64_t)TICK_US_DEFAULT * 1000;
  env = getenv("ORCH_MOCK_TICK_US");
  if (env && *env) m->tick_ns = (int64_t)atol(env) * 1000;
  if (m->tick_ns < 0) m->tick_ns = 0;
  unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  for (size_t i = 0; i < m->nloops; i++) {
    mloop *lp = &m->loops[i];
    lp->m = m;
    lp->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* each daemon owns (and closes) its own descriptor of the socket */
    int lfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (lp->wake_fd < 0 || lfd < 0) {
      if (lfd >= 0) close(lfd);
      set_err(err, errlen, "%s", strerror(errno));
      rc = ORCH_EIO;
      goto done;
    }
    lp->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, handle, m, MHD_OPTION_LISTEN_SOCKET, lfd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)16384,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
        /* 8 KiB per connection instead of 32: 1,000 keep-alive connections
         * cost 24 MiB less RSS and MHD zeroes less memory per request;
         * bodies stream through the handler, so only headers must fit. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)8192,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, m, MHD_OPTION_END);
    if (!lp->daemon) {
      set_err(err, errlen, "cannot start the HTTP server on %s:%d",
              host, m->port);
      rc = ORCH_EIO;
      goto done;
    }
    if (pthread_create(&lp->thread, NULL, loop_main, lp) != 0) {
      set_err(err, errlen, "cannot start a server thread");
      rc = ORCH_ENOMEM;
      goto done;
    }
    lp->started = true;
    pthread_setname_np(lp->thread, "orch-mock");
  }
  *out = m;
  m = NULL;
  rc = ORCH_OK;
done:
  if (fd >= 0) close(fd);
  orch_mock_free(m);
  return rc;
}

ORCH_API int orch_mock_port(const orch_mock *m) { return m ? m->port : -1; }

ORCH_API unsigned long orch_mock_requests(const orch_mock *m) {
  return m ? atomic_load(&((orch_mock *)m)->requests) : 0;
}

ORCH_API void orch_mock_free(orch_mock *m) {
  if (!m) return;
  /* Each loop resumes its suspended connections (MHD must not stop with
   * one) and ends; then the daemons stop, closing what is still open. */
  atomic_store(&m->stopping, 1);
  for (size_t i = 0; i < m->nloops; i++) {
    mloop *lp = &m->loops[i];
    if (lp->started) {
      uint64_t one = 1;
      ssize_t r = write(lp->wake_fd, &one, sizeof one);
      (void)r;
      pthread_join(lp->thread, NULL);
    }
    if (lp->daemon) MHD_stop_daemon(lp->daemon);
    if (lp->wake_fd > 0) close(lp->wake_fd);
    free(lp->heap);
    json_decref(lp->reply[0]);
    json_decref(lp->reply[1]);
  }
  for (size_t i = 0; i < m->nff; i++) free(m->ff[i].key);
  free(m->ff);
  pthread_mutex_destroy(&m->flock);
  free(m);
}
