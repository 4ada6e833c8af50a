/* test_http.c: the libcurl multi engine (runtime/http.c) on a uv loop,
 * against a small libmicrohttpd server started here on 127.0.0.1 (which
 * also serves test_llm.c: see mini_llm.h). */
#include "orch_int.h"
#include "test.h"
#include "mini_llm.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <time.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the mini server ------------------------------------------------- */

struct mini_llm {
  struct MHD_Daemon *d;
  int port;
  atomic_ulong requests;
  atomic_int stopping;
  pthread_mutex_t mu;
  struct { char model[64]; int seen; } flaky[16];
};

typedef struct conn {
  char *body;
  size_t len;
  int done;
} conn;

typedef struct streamer { /* state of a streamed answer */
  mini_llm *m;
  char *text; /* the full SSE text to send */
  size_t len, off;
  size_t cut;       /* stop (truncate/stall) at this offset, or len */
  int stall;        /* after cut: hold the connection open */
  long chunk_delay; /* ms between events (slow) */
  int split_cr;     /* one chunk per line end, cut between \r and \n */
} streamer;

static void msleep(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static ssize_t stream_cb(void *cls, uint64_t pos, char *buf, size_t max) {
  streamer *s = cls;
  (void)pos;
  if (s->off >= s->len) return MHD_CONTENT_READER_END_OF_STREAM;
  if (s->off >= s->cut) {
    if (!s->stall) return MHD_CONTENT_READER_END_WITH_ERROR;
    for (int i = 0; i < 1000 && !atomic_load(&s->m->stopping); i++) msleep(10);
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  if (s->chunk_delay && s->off) msleep(s->chunk_delay);
  /* one event (up to the blank line) per call; with split_cr up to the
   * next \r, so that a \r\n line end arrives in two reads */
  size_t end = s->off;
  const char *e = s->split_cr ? strchr(s->text + s->off, '\r')
                              : strstr(s->text + s->off, "\n\n");
  end = e ? (size_t)(e - s->text) + (s->split_cr ? 1 : 2) : s->len;
  if (end > s->cut) end = s->cut;
  size_t n = end - s->off;
  if (n > max) n = max;
  memcpy(buf, s->text + s->off, n);
  s->off += n;
  return (ssize_t)n;
}

static void stream_free(void *cls) {
  streamer *s = cls;
  free(s->text);
  free(s);
}

static enum MHD_Result reply(struct MHD_Connection *c, int status,
                             const char *ctype, char *body,
                             const char *h1, const char *v1) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      strlen(body), body, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", ctype);
  if (h1) MHD_add_response_header(r, h1, v1);
  enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
  MHD_destroy_response(r);
  return ret;
}

static char *sse_add(char *acc, json_t *o, const char *event) {
  char *js = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  char *n = NULL;
  if (asprintf(&n, "%s%s%s%sdata: %s\n\n", acc ? acc : "",
               event ? "event: " : "", event ? event : "", event ? "\n" : "",
               js) < 0)
    n = NULL;
  free(js);
  free(acc);
  return n;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c,
                               const char *url, const char *method,
                               const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
  mini_llm *m = cls;
  conn *k = *con_cls;
  (void)version;
  if (!k) {
    k = calloc(1, sizeof *k);
    *con_cls = k;
    return MHD_YES;
  }
  if (*upload_size) {
    k->body = realloc(k->body, k->len + *upload_size + 1);
    memcpy(k->body + k->len, upload, *upload_size);
    k->len += *upload_size;
    k->body[k->len] = '\0';
    *upload_size = 0;
    return MHD_YES;
  }
  atomic_fetch_add(&m->requests, 1);
  if (strcmp(method, "POST") != 0)
    return reply(c, 404, "text/plain", strdup("not found"), NULL, NULL);
  bool anthropic = strcmp(url, "/v1/messages") == 0;
  const char *av = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               "anthropic-version");
  if (anthropic && (!av || strcmp(av, "2023-06-01") != 0))
    return reply(c, 400, "application/json",
                 strdup("{\"type\":\"error\",\"error\":{\"type\":"
                        "\"invalid_request_error\",\"message\":"
                        "\"anthropic-version header is required\"}}"),
                 NULL, NULL);
  if (!anthropic && strcmp(url, "/v1/chat/completions") != 0)
    return reply(c, 404, "application/json",
                 strdup("{\"error\":{\"message\":\"no such route\"}}"), NULL,
                 NULL);
  json_t *req = json_loadb(k->body ? k->body : "", k->len, 0, NULL);
  if (!req)
    return reply(c, 400, "application/json",
                 strdup("{\"error\":{\"message\":\"bad json\"}}"), NULL, NULL);
  const char *model = json_string_value(json_object_get(req, "model"));
  const char *fault = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                  "X-Mock-Fault");
  if (!fault) fault = model ? model : "ok";
  /* line-end and BOM modifiers of a stream: "ok+cr", "malformed+crlf",
   * "ok+crlf-split" (each \r\n cut between two reads), "ok+bom" */
  char base[64];
  int eol = 0, bom = 0; /* eol: 0 \n, 1 \r, 2 \r\n, 3 \r\n split */
  snprintf(base, sizeof base, "%s", fault);
  for (char *plus; (plus = strrchr(base, '+')); *plus = '\0') {
    if (strcmp(plus, "+cr") == 0) eol = 1;
    else if (strcmp(plus, "+crlf") == 0) eol = 2;
    else if (strcmp(plus, "+crlf-split") == 0) eol = 3;
    else if (strcmp(plus, "+bom") == 0) bom = 1;
    else break;
  }
  fault = base;
  bool stream = json_is_true(json_object_get(req, "stream"));
  json_t *msgs = json_object_get(req, "messages");
  const char *prompt = json_string_value(json_object_get(
      json_array_get(msgs, json_array_size(msgs) - 1), "content"));
  char *text = NULL;
  /* ?n=X in the URL comes back too: which URL a request went to */
  const char *qn = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "n");
  if (asprintf(&text, "echo: %s%s%s", prompt ? prompt : "", qn ? " n=" : "",
               qn ? qn : "") < 0)
    text = NULL;
  enum MHD_Result ret;
  long lat = 0, slow = 0;
  int nousage = 0;
  if (sscanf(fault, "latency=%ld", &lat) == 1) msleep(lat);
  if (sscanf(fault, "slow=%ld", &slow) != 1) slow = 0;
  if (strcmp(fault, "nousage") == 0) nousage = 1;
  int flaky_n = 0, flaky_ra = 0;
  if (sscanf(fault, "flaky=%d", &flaky_n) == 1 ||
      (sscanf(fault, "flaky-ra=%d", &flaky_n) == 1 && (flaky_ra = 1)) ||
      (sscanf(fault, "flaky-azure=%d", &flaky_n) == 1 && (flaky_ra = 2))) {
    int seen = 0;
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < 16; i++) {
      if (!m->flaky[i].model[0])
        snprintf(m->flaky[i].model, sizeof m->flaky[i].model, "%.63s", fault);
      if (strcmp(m->flaky[i].model, fault) == 0) {
        seen = ++m->flaky[i].seen;
        break;
      }
    }
    pthread_mutex_unlock(&m->mu);
    if (seen <= flaky_n)
      fault = flaky_ra == 2 ? "429-azure" : flaky_ra ? "retry-after=1" : "500";
  }
  long ra = 0;
  if (strcmp(fault, "reset") == 0) {
    ret = MHD_NO; /* drops the connection without an answer */
  } else if (strcmp(fault, "429") == 0) {
    ret = reply(c, 429, "application/json",
                strdup("{\"error\":{\"message\":\"Rate limit reached\","
                       "\"type\":\"rate_limit_error\"}}"),
                NULL, NULL);
  } else if (strcmp(fault, "429-quota") == 0) {
    ret = reply(c, 429, "application/json",
                strdup("{\"error\":{\"message\":\"You exceeded your current "
                       "quota\",\"type\":\"insufficient_quota\"}}"),
                NULL, NULL);
  } else if (strcmp(fault, "429-azure") == 0) {
    /* Azure OpenAI's rate limit: its text links the quota page */
    ret = reply(c, 429, "application/json",
                strdup("{\"error\":{\"code\":\"429\",\"message\":\"Requests "
                       "to the ChatCompletions_Create Operation have exceeded "
                       "token rate limit of your current OpenAI S0 pricing "
                       "tier. Please retry after 1 second. Please go here: "
                       "https://aka.ms/oai/quotaincrease if you would like to "
                       "further increase the default rate limit.\"}}"),
                "Retry-After", "1");
  } else if (sscanf(fault, "retry-after=%ld", &ra) == 1) {
    char v[32];
    snprintf(v, sizeof v, "%ld", ra);
    ret = reply(c, 429, "application/json",
                strdup("{\"error\":{\"message\":\"slow down\"}}"),
                "Retry-After", v);
  } else if (sscanf(fault, "retry-after-ms=%ld", &ra) == 1) {
    char v[32];
    snprintf(v, sizeof v, "%ld", ra);
    ret = reply(c, 429, "application/json",
                strdup("{\"error\":{\"message\":\"slow down\"}}"),
                "retry-after-ms", v);
  } else if (strcmp(fault, "500") == 0 || strcmp(fault, "529") == 0) {
    ret = reply(c, atoi(fault), "application/json",
                strdup("{\"type\":\"error\",\"error\":{\"type\":"
                       "\"overloaded_error\",\"message\":\"Overloaded\"}}"),
                NULL, NULL);
  } else if (strcmp(fault, "400") == 0) {
    ret = reply(c, 400, "application/json",
                strdup("{\"error\":{\"message\":\"Incorrect API key provided: "
                       "sk-test-SECRET-123456\",\"type\":"
                       "\"invalid_request_error\"}}"),
                NULL, NULL);
  } else if (strcmp(fault, "malformed") == 0 && !stream) {
    ret = reply(c, 200, "application/json",
                strdup("{\"choices\":[{\"message\":{\"content\":\"x\"}]"),
                NULL, NULL);
  } else if (!stream || strcmp(fault, "json-stream") == 0) {
    /* json-stream: a server that ignores stream:true */
    json_t *o;
    if (anthropic)
      o = json_pack("{s:s,s:s,s:[{s:s,s:s}],s:s}", "type", "message", "role",
                    "assistant", "content", "type", "text", "text", text,
                    "stop_reason", "end_turn");
    else
      o = json_pack("{s:s,s:[{s:i,s:{s:s,s:s},s:s}]}", "object",
                    "chat.completion", "choices", "index", 0, "message",
                    "role", "assistant", "content", text, "finish_reason",
                    "stop");
    if (!nousage)
      json_object_set_new(o, "usage",
                          anthropic ? json_pack("{s:i,s:i}", "input_tokens",
                                                11, "output_tokens", 7)
                                    : json_pack("{s:i,s:i}", "prompt_tokens",
                                                11, "completion_tokens", 7));
    ret = reply(c, 200, "application/json", json_dumps(o, JSON_COMPACT), NULL,
                NULL);
    json_decref(o);
  } else {
    /* stream: split the text in three deltas */
    char *acc = NULL;
    size_t tl = strlen(text), a = tl / 3, b = 2 * tl / 3;
    char *parts[3] = {strndup(text, a), strndup(text + a, b - a),
                      strdup(text + b)};
    if (anthropic) {
      acc = sse_add(acc, json_pack("{s:s,s:{s:s,s:{s:i,s:i}}}", "type",
                                   "message_start", "message", "role",
                                   "assistant", "usage", "input_tokens", 11,
                                   "output_tokens", 1),
                    "message_start");
      for (int i = 0; i < 3; i++)
        acc = sse_add(acc, json_pack("{s:s,s:i,s:{s:s,s:s}}", "type",
                                     "content_block_delta", "index", 0,
                                     "delta", "type", "text_delta", "text",
                                     parts[i]),
                      "content_block_delta");
      acc = sse_add(acc, json_pack("{s:s,s:{s:s},s:{s:i}}", "type",
                                   "message_delta", "delta", "stop_reason",
                                   "end_turn", "usage", "output_tokens", 7),
                    "message_delta");
      acc = sse_add(acc, json_pack("{s:s}", "type", "message_stop"),
                    "message_stop");
    } else {
      for (int i = 0; i < 3; i++)
        acc = sse_add(acc, json_pack("{s:[{s:i,s:{s:s},s:n}]}", "choices",
                                     "index", 0, "delta", "content", parts[i],
                                     "finish_reason"),
                      NULL);
      acc = sse_add(acc, json_pack("{s:[{s:i,s:{},s:s}]}", "choices", "index",
                                   0, "delta", "finish_reason", "stop"),
                    NULL);
      if (!nousage)
        acc = sse_add(acc, json_pack("{s:[],s:{s:i,s:i}}", "choices", "usage",
                                     "prompt_tokens", 11, "completion_tokens",
                                     7),
                      NULL);
      char *n = NULL;
      if (asprintf(&n, "%sdata: [DONE]\n\n", acc) < 0) n = NULL;
      free(acc);
      acc = n;
    }
    for (int i = 0; i < 3; i++) free(parts[i]);
    if (strcmp(fault, "malformed") == 0) {
      /* break the second event's JSON */
      char *second = strstr(strstr(acc, "\n\n") + 2, "data: ");
      second[6] = '#';
    }
    if (eol || bom) { /* the same events, other line ends; a BOM first */
      size_t nl = 0, al = strlen(acc);
      for (size_t i = 0; i < al; i++) nl += acc[i] == '\n';
      char *t = malloc(al + nl + 4), *o = t;
      if (bom) o += sprintf(o, "\xef\xbb\xbf");
      for (size_t i = 0; i < al; i++) {
        if (acc[i] != '\n' || !eol) *o++ = acc[i];
        else if (eol == 1) *o++ = '\r';
        else *o++ = '\r', *o++ = '\n';
      }
      *o = '\0';
      free(acc);
      acc = t;
    }
    streamer *s = calloc(1, sizeof *s);
    s->m = m;
    s->len = strlen(acc);
    s->cut = s->len;
    if (strcmp(fault, "truncate") == 0) {
      s->cut = s->len / 2;
    } else if (strcmp(fault, "stall") == 0) {
      s->cut = s->len / 2;
      s->stall = 1;
    }
    s->text = acc;
    s->chunk_delay = slow;
    if (eol == 3) {
      s->split_cr = 1;
      if (!s->chunk_delay) s->chunk_delay = 5; /* reads of their own */
    }
    struct MHD_Response *r = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 4096, stream_cb, s, stream_free);
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
  }
  free(text);
  json_decref(req);
  return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  conn *k = *con_cls;
  (void)cls;
  (void)c;
  (void)toe;
  if (k) {
    free(k->body);
    free(k);
    *con_cls = NULL;
  }
}

mini_llm *mini_llm_start(void) {
  mini_llm *m = calloc(1, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  m->d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
          MHD_USE_POLL,
      0, NULL, NULL, handler, m, MHD_OPTION_SOCK_ADDR, &sa,
      MHD_OPTION_NOTIFY_COMPLETED, completed, m,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000,
      MHD_OPTION_THREAD_STACK_SIZE, (size_t)(256 * 1024),
      MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
  if (!m->d) {
    free(m);
    return NULL;
  }
  const union MHD_DaemonInfo *di =
      MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
  m->port = di ? di->port : 0;
  return m;
}

int mini_llm_port(const mini_llm *m) { return m->port; }
unsigned long mini_llm_requests(const mini_llm *m) {
  return atomic_load(&((mini_llm *)m)->requests);
}

void mini_llm_stop(mini_llm *m) {
  if (!m) return;
  atomic_store(&m->stopping, 1);
  MHD_stop_daemon(m->d);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

/* ---- canned_srv (see mini_llm.h) ------------------------------------- */

struct canned_srv {
  int lfd, port, status; /* status 0: body is the whole response */
  const char *ctype;
  char *body;
  size_t len;
  pthread_t th;
  atomic_int stop, requests;
  pthread_mutex_t mu; /* guards auth */
  char auth[256];
};

static void *canned_main(void *arg) {
  canned_srv *s = arg;
  while (!atomic_load(&s->stop)) {
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) continue;
    char buf[16384];
    size_t have = 0, need = 0;
    while (!need || have < need) { /* the request: headers and body */
      struct pollfd q = {.fd = fd, .events = POLLIN};
      if (poll(&q, 1, 2000) <= 0) break;
      ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
      if (n <= 0) break;
      have += (size_t)n;
      buf[have] = '\0';
      char *end = strstr(buf, "\r\n\r\n");
      if (end && !need) {
        const char *cl = strcasestr(buf, "content-length:");
        need = (size_t)(end + 4 - buf) + (cl ? (size_t)atol(cl + 15) : 0);
      }
      if (have == sizeof buf - 1) break;
    }
    atomic_fetch_add(&s->requests, 1);
    const char *a = strcasestr(buf, "\r\nauthorization: ");
    pthread_mutex_lock(&s->mu);
    s->auth[0] = '\0';
    if (a) {
      a += 17;
      size_t n = strcspn(a, "\r\n");
      snprintf(s->auth, sizeof s->auth, "%.*s", (int)n, a);
    }
    pthread_mutex_unlock(&s->mu);
    char head[256];
    int hl = s->status ? snprintf(head, sizeof head,
                                  "HTTP/1.1 %d X\r\nContent-Type: %s\r\n"
                                  "Content-Length: %zu\r\nConnection: "
                                  "close\r\n\r\n",
                                  s->status, s->ctype, s->len)
                       : 0;
    bool ok = send(fd, head, (size_t)hl, MSG_NOSIGNAL) == hl;
    for (size_t off = 0; ok && off < s->len;) {
      ssize_t n = send(fd, s->body + off, s->len - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += (size_t)n;
    }
    close(fd);
  }
  return NULL;
}

canned_srv *canned_start(int status, const char *ctype, const char *body,
                         size_t len) {
  canned_srv *s = calloc(1, sizeof *s);
  if (!s || !(s->body = malloc(len ? len : 1))) {
    free(s);
    return NULL;
  }
  memcpy(s->body, body, len);
  s->len = len;
  s->status = status;
  s->ctype = ctype;
  pthread_mutex_init(&s->mu, NULL);
  s->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      listen(s->lfd, 64) != 0 ||
      getsockname(s->lfd, (struct sockaddr *)&sa, &sl) != 0 ||
      pthread_create(&s->th, NULL, canned_main, s) != 0) {
    if (s->lfd >= 0) close(s->lfd);
    free(s->body);
    free(s);
    return NULL;
  }
  s->port = ntohs(sa.sin_port);
  return s;
}

canned_srv *canned_start_raw(const char *resp, size_t len) {
  return canned_start(0, NULL, resp, len);
}

int canned_port(const canned_srv *s) { return s->port; }
int canned_requests(const canned_srv *s) {
  return atomic_load(&((canned_srv *)s)->requests);
}
void canned_auth(canned_srv *s, char *buf, size_t cap) {
  pthread_mutex_lock(&s->mu);
  snprintf(buf, cap, "%s", s->auth);
  pthread_mutex_unlock(&s->mu);
}
void canned_stop(canned_srv *s) {
  if (!s) return;
  atomic_store(&s->stop, 1);
  pthread_join(s->th, NULL);
  close(s->lfd);
  pthread_mutex_destroy(&s->mu);
  free(s->body);
  free(s);
}

/* ---- HTTP engine tests --------------------------------------------- */

static int64_t now_ns_t(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct ctx {
  uv_loop_t loop;
  uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking for long */
  orch__http *h;
  mini_llm *m;
  char base[64];
  int done;
} ctx;

static void on_tick(uv_timer_t *t) { (void)t; }

static int ctx_init(ctx *c) {
  memset(c, 0, sizeof *c);
  uv_loop_init(&c->loop);
  uv_timer_init(&c->loop, &c->tick);
  uv_timer_start(&c->tick, on_tick, 20, 20);
  c->m = mini_llm_start();
  if (!c->m) return -1;
  snprintf(c->base, sizeof c->base, "http://127.0.0.1:%d", mini_llm_port(c->m));
  char err[256];
  return orch__http_new(&c->h, &c->loop, NULL, err, sizeof err);
}

/* Frees the engine and checks that every uv handle closed. */
static int ctx_deinit(ctx *c) {
  orch__http_free(c->h);
  uv_close((uv_handle_t *)&c->tick, NULL);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&c->loop);
  mini_llm_stop(c->m);
  return rc;
}

static void req_done(orch__http_req *r) {
  ctx *c = r->ud;
  c->done++;
}

/* A loopback port nobody listens on (bound, noted, closed); -1 if none. */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  int ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
           getsockname(fd, (struct sockaddr *)&sa, &sl) == 0;
  if (fd >= 0) close(fd);
  return ok ? ntohs(sa.sin_port) : -1;
}

static void run_until(ctx *c, int n, int max_ms) {
  int64_t end = now_ns_t() + (int64_t)max_ms * 1000000;
  while (c->done < n && now_ns_t() < end) uv_run(&c->loop, UV_RUN_ONCE);
}

static void openai_req(ctx *c, orch__http_req *r, char *url, size_t urlcap,
                       const char *model, int stream, const char *body_text) {
  static char bodies[4][512];
  static int nb;
  char *b = bodies[nb++ % 4];
  snprintf(url, urlcap, "%s/v1/chat/completions", c->base);
  snprintf(b, 512,
           "{\"model\":\"%s\",\"stream\":%s,\"messages\":[{\"role\":\"user\","
           "\"content\":\"%s\"}]}",
           model, stream ? "true" : "false", body_text);
  orch__http_req_init(r);
  r->url = url;
  r->post = b;
  r->post_len = strlen(b);
  r->on_done = req_done;
  r->ud = c;
  orch__http_req_header(r, "Content-Type: application/json");
}

TEST(http_posts_and_reads_a_whole_answer) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  openai_req(&c, &r, url, sizeof url, "ok", 0, "hello");
  orch__http_submit(c.h, &r);
  run_until(&c, 1, 5000);
  ASSERT_EQ(c.done, 1);
  ASSERT_EQ(r.result, ORCH_OK);
  ASSERT_EQ(r.status, 200);
  ASSERT_CONTAINS(r.body, "echo: hello");
  ASSERT(r.t_first_byte_ns >= r.t_start_ns && r.t_end_ns >= r.t_first_byte_ns);
  orch__http_req_deinit(&r);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

TEST(http_reads_retry_after_in_seconds_and_ms) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req a, b;
  char u1[256], u2[256];
  openai_req(&c, &a, u1, sizeof u1, "retry-after=2", 0, "x");
  openai_req(&c, &b, u2, sizeof u2, "retry-after-ms=1500", 0, "x");
  orch__http_submit(c.h, &a);
  orch__http_submit(c.h, &b);
  run_until(&c, 2, 5000);
  ASSERT_EQ(c.done, 2);
  ASSERT_EQ(a.status, 429);
  ASSERT_EQ(a.retry_after_ms, 2000);
  ASSERT_EQ(b.retry_after_ms, 1500);
  orch__http_req_deinit(&a);
  orch__http_req_deinit(&b);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

/* A Retry-After date so far ahead that its milliseconds overflow a long
 * (curl_getdate reads years up to 2^31) is read as the cap, like a number
 * of seconds that large, not as a wrapped (negative: absent) value. */
TEST(http_a_retry_after_date_far_ahead_is_capped) {
  static const char *const dates[] = {"Fri, 31 Dec 2147483647 23:59:59 GMT",
                                      "Fri, 31 Dec 99999 23:59:59 GMT"};
  for (size_t i = 0; i < 2; i++) {
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 429 X\r\nRetry-After: %s\r\n"
                     "Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                     dates[i]);
    canned_srv *s = canned_start_raw(resp, (size_t)n);
    ASSERT(s);
    ctx c;
    ASSERT_EQ(ctx_init(&c), 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", canned_port(s));
    orch__http_req r;
    orch__http_req_init(&r);
    r.url = url;
    r.on_done = req_done;
    r.ud = &c;
    orch__http_submit(c.h, &r);
    run_until(&c, 1, 5000);
    ASSERT_EQ(r.result, ORCH_OK);
    ASSERT_EQ(r.status, 429);
    ASSERT_EQ(r.retry_after_ms, 1000000000L);
    orch__http_req_deinit(&r);
    ASSERT_EQ(ctx_deinit(&c), 0);
    canned_stop(s);
  }
}

TEST(http_reports_a_reset_connection_as_an_io_error) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  openai_req(&c, &r, url, sizeof url, "reset", 0, "x");
  orch__http_submit(c.h, &r);
  run_until(&c, 1, 5000);
  ASSERT_EQ(r.result, ORCH_EIO);
  ASSERT(r.error[0] != '\0');
  orch__http_req_deinit(&r);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

TEST(http_reports_a_refused_connection) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  openai_req(&c, &r, url, sizeof url, "ok", 0, "x");
  int port = closed_port();
  ASSERT(port > 0);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/chat/completions", port);
  r.connect_timeout_ms = 2000;
  orch__http_submit(c.h, &r);
  run_until(&c, 1, 5000);
  ASSERT_EQ(r.result, ORCH_EIO);
  ASSERT_CONTAINS(r.error, "connect");
  orch__http_req_deinit(&r);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

/* A raw HTTP/1.1 server, one connection at a time: answers each request
 * "ok" and keeps the connection, closing it once idle for 50 ms (as a
 * server's keep-alive timeout does). */
typedef struct idle_srv {
  int lfd, port;
  pthread_t th;
  atomic_int stop, accepted;
} idle_srv;

static void *idle_srv_main(void *arg) {
  idle_srv *s = arg;
  static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 2\r\n\r\nok";
  while (!atomic_load(&s->stop)) {
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) continue;
    atomic_fetch_add(&s->accepted, 1);
    char buf[4096];
    size_t have = 0;
    for (;;) {
      struct pollfd q = {.fd = fd, .events = POLLIN};
      if (poll(&q, 1, 50) <= 0) break; /* idle: close */
      ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
      if (n <= 0) break;
      have += (size_t)n;
      buf[have] = '\0';
      char *end = strstr(buf, "\r\n\r\n");
      if (!end) continue;
      const char *cl = strcasestr(buf, "content-length:");
      size_t need = (size_t)(end + 4 - buf) + (cl ? (size_t)atol(cl + 15) : 0);
      if (have < need) continue;
      if (send(fd, resp, sizeof resp - 1, MSG_NOSIGNAL) < 0) break;
      memmove(buf, buf + need, have - need);
      have -= need;
    }
    close(fd);
  }
  return NULL;
}

static int idle_srv_start(idle_srv *s) {
  memset(s, 0, sizeof *s);
  s->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      listen(s->lfd, 16) != 0 ||
      getsockname(s->lfd, (struct sockaddr *)&sa, &sl) != 0)
    return -1;
  s->port = ntohs(sa.sin_port);
  return pthread_create(&s->th, NULL, idle_srv_main, s) == 0 ? 0 : -1;
}

static void idle_srv_stop(idle_srv *s) {
  atomic_store(&s->stop, 1);
  pthread_join(s->th, NULL);
  close(s->lfd);
}

static double thread_cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

/* The engine keeps watching a cached connection's socket between
 * transfers (no epoll churn per request); when the server closes it, the
 * loop must not spin on it, and the next request connects anew. */
TEST(http_reuses_a_connection_and_survives_the_server_closing_it) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  idle_srv s;
  ASSERT_EQ(idle_srv_start(&s), 0);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/chat/completions",
           s.port);
  orch__http_req r[3];
  for (int i = 0; i < 3; i++) {
    orch__http_req_init(&r[i]);
    r[i].url = url;
    r[i].post = "{}";
    r[i].post_len = 2;
    r[i].on_done = req_done;
    r[i].ud = &c;
  }
  orch__http_submit(c.h, &r[0]);
  run_until(&c, 1, 5000);
  ASSERT_EQ(r[0].result, ORCH_OK);
  ASSERT_STR_EQ(r[0].body, "ok");
  ASSERT_EQ(r[0].connects, 1);
  orch__http_submit(c.h, &r[1]);
  run_until(&c, 2, 5000);
  ASSERT_EQ(r[1].result, ORCH_OK);
  ASSERT_EQ(r[1].connects, 0); /* the same connection */
  /* idle: the server hangs up after 50 ms */
  double cpu0 = thread_cpu_ms();
  int64_t end = now_ns_t() + 300 * 1000000LL;
  while (now_ns_t() < end) uv_run(&c.loop, UV_RUN_ONCE);
  ASSERT(thread_cpu_ms() - cpu0 < 150);
  orch__http_submit(c.h, &r[2]);
  run_until(&c, 3, 5000);
  ASSERT_EQ(r[2].result, ORCH_OK);
  ASSERT_STR_EQ(r[2].body, "ok");
  ASSERT_EQ(r[2].connects, 1);
  ASSERT_EQ(atomic_load(&s.accepted), 2);
  for (int i = 0; i < 3; i++) orch__http_req_deinit(&r[i]);
  ASSERT_EQ(ctx_deinit(&c), 0);
  idle_srv_stop(&s);
}

/* Past 128 transfers the engine spreads them over more curl multi
 * handles; a connection cap keeps it to one, so the cap holds. */
TEST(http_keeps_to_max_host_connections) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_free(c.h);
  orch__http_opts o = {.max_host_connections = 4};
  char err[256];
  ASSERT_EQ(orch__http_new(&c.h, &c.loop, &o, err, sizeof err), ORCH_OK);
  enum { N = 300 };
  static orch__http_req r[N];
  static char urls[N][128];
  for (int i = 0; i < N; i++) {
    openai_req(&c, &r[i], urls[i], sizeof urls[i], "latency=5", 0, "x");
    orch__http_submit(c.h, &r[i]);
  }
  run_until(&c, N, 20000);
  ASSERT_EQ(c.done, N);
  long connects = 0;
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(r[i].result, ORCH_OK);
    connects += r[i].connects;
    orch__http_req_deinit(&r[i]);
  }
  ASSERT(connects >= 1 && connects <= 4);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

TEST(http_aborts_a_stalled_stream_at_the_idle_timeout) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  openai_req(&c, &r, url, sizeof url, "stall", 1, "a long enough answer");
  r.idle_timeout_ms = 200;
  int64_t t0 = now_ns_t();
  orch__http_submit(c.h, &r);
  run_until(&c, 1, 5000);
  double ms = (double)(now_ns_t() - t0) / 1e6;
  ASSERT_EQ(r.result, ORCH_ETIMEDOUT);
  ASSERT_CONTAINS(r.error, "idle timeout");
  ASSERT(r.bytes_in > 0);
  ASSERT(ms >= 190 && ms < 1500);
  ASSERT_EQ(orch__http_active(c.h), 0);
  orch__http_req_deinit(&r);
  ASSERT_EQ(ctx_deinit(&c), 0); /* no uv handle left open */
}

TEST(http_stops_at_the_total_timeout) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  /* on a new connection, then on a reused one (whose connect time curl
   * reports as 0): the total timeout fired, and the message says so */
  for (int i = 0; i < 3; i++) {
    openai_req(&c, &r, url, sizeof url, i == 1 ? "ok" : "latency=600", 0,
               "x");
    r.timeout_ms = 200;
    r.connect_timeout_ms = 10000;
    orch__http_submit(c.h, &r);
    run_until(&c, i + 1, 5000);
    if (i == 1) {
      ASSERT_EQ(r.result, ORCH_OK);
      orch__http_req_deinit(&r);
      continue;
    }
    ASSERT_EQ(r.result, ORCH_ETIMEDOUT);
    ASSERT_CONTAINS(r.error, "timed out after 200 ms (total)");
    orch__http_req_deinit(&r);
  }
  ASSERT_EQ(ctx_deinit(&c), 0);
}

/* An error answer keeps the start of its body (64 KiB) and drops the
 * rest: the transfer completes with the status, whatever the body's size;
 * a 2xx body is kept whole. */
TEST(http_keeps_the_start_of_an_error_body_and_completes) {
  size_t n = 200 << 10;
  char *big = malloc(n);
  ASSERT(big);
  memset(big, 'e', n);
  for (int ok = 0; ok < 2; ok++) {
    canned_srv *s = canned_start(ok ? 200 : 400, "text/plain", big, n);
    ASSERT(s);
    ctx c;
    ASSERT_EQ(ctx_init(&c), 0);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", canned_port(s));
    orch__http_req r;
    orch__http_req_init(&r);
    r.url = url;
    r.on_done = req_done;
    r.ud = &c;
    r.max_body = 100 << 10; /* a 2xx above it still fails */
    orch__http_submit(c.h, &r);
    run_until(&c, 1, 5000);
    if (ok) {
      ASSERT_EQ(r.result, ORCH_ELIMIT);
    } else {
      ASSERT_EQ(r.result, ORCH_OK);
      ASSERT_EQ(r.status, 400);
      ASSERT_EQ(r.body_len, 64 << 10);
      ASSERT_EQ(r.bytes_in, n);
    }
    orch__http_req_deinit(&r);
    ASSERT_EQ(ctx_deinit(&c), 0);
    canned_stop(s);
  }
  free(big);
}

TEST(http_cancel_ends_a_request_at_once) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r;
  char url[256];
  openai_req(&c, &r, url, sizeof url, "latency=1000", 0, "x");
  orch__http_submit(c.h, &r);
  for (int i = 0; i < 3; i++) uv_run(&c.loop, UV_RUN_NOWAIT);
  orch__http_cancel(c.h, &r);
  ASSERT_EQ(c.done, 1);
  ASSERT_EQ(r.result, ORCH_ECANCELED);
  ASSERT_EQ(orch__http_active(c.h), 0);
  orch__http_req_deinit(&r);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

typedef struct poster {
  orch__http *h;
  orch__http_req *reqs;
  int n;
} poster;

static void *post_thread(void *arg) {
  poster *p = arg;
  for (int i = 0; i < p->n; i++) orch__http_post(p->h, &p->reqs[i]);
  return NULL;
}

TEST(http_takes_requests_from_other_threads) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  orch__http_req r[8];
  char url[256];
  snprintf(url, sizeof url, "%s/v1/chat/completions", c.base);
  static const char body[] =
      "{\"model\":\"ok\",\"messages\":[{\"role\":\"user\",\"content\":\"t\"}]}";
  for (int i = 0; i < 8; i++) {
    orch__http_req_init(&r[i]);
    r[i].url = url;
    r[i].post = body;
    r[i].post_len = strlen(body);
    r[i].on_done = req_done;
    r[i].ud = &c;
  }
  poster p = {c.h, r, 8};
  pthread_t th;
  pthread_create(&th, NULL, post_thread, &p);
  run_until(&c, 8, 5000);
  pthread_join(th, NULL);
  ASSERT_EQ(c.done, 8);
  for (int i = 0; i < 8; i++) {
    ASSERT_EQ(r[i].status, 200);
    orch__http_req_deinit(&r[i]);
  }
  ASSERT_EQ(ctx_deinit(&c), 0);
}

/* n echo requests, submitted at once; answer i says "echo: <tag>-<i>". */
typedef struct burst {
  orch__http_req *r;
  char (*bodies)[160];
  char url[256];
  int n;
} burst;

static void burst_start(ctx *c, burst *b, int n, const char *model,
                        const char *tag) {
  b->n = n;
  b->r = calloc((size_t)n, sizeof *b->r);
  b->bodies = calloc((size_t)n, 160);
  snprintf(b->url, sizeof b->url, "%s/v1/chat/completions", c->base);
  for (int i = 0; i < n; i++) {
    snprintf(b->bodies[i], 160,
             "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\","
             "\"content\":\"%s-%d\"}]}", model, tag, i);
    orch__http_req_init(&b->r[i]);
    b->r[i].url = b->url;
    b->r[i].post = b->bodies[i];
    b->r[i].post_len = strlen(b->bodies[i]);
    b->r[i].on_done = req_done;
    b->r[i].ud = c;
    orch__http_submit(c->h, &b->r[i]);
  }
}

/* How many of the first n got their own answer (the first miss printed). */
static int burst_ok(const burst *b, int n, const char *tag) {
  int ok = 0;
  for (int i = 0; i < n; i++) {
    const orch__http_req *r = &b->r[i];
    char want[64];
    snprintf(want, sizeof want, "\"echo: %s-%d\"", tag, i);
    if (r->result == ORCH_OK && r->status == 200 && r->body &&
        strstr(r->body, want))
      ok++;
    else if (ok == i)
      fprintf(stderr, "  request %d: %d %ld %s %s\n", i, r->result,
              r->status, r->error, r->body ? r->body : "");
  }
  return ok;
}

static void burst_free(burst *b) {
  for (int i = 0; i < b->n; i++) orch__http_req_deinit(&b->r[i]);
  free(b->r);
  free(b->bodies);
}

TEST(http_keeps_1000_requests_in_flight_and_pairs_answers) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  enum { N = 1000 };
  burst b;
  burst_start(&c, &b, N, "latency=50", "request");
  run_until(&c, N, 30000);
  ASSERT_EQ(c.done, N);
  int ok = burst_ok(&b, N, "request");
  burst_free(&b);
  ASSERT_EQ(ok, N);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

#define HTTP_TEST_BATCH_BOUND 100 /* above http.c's HTTP_START_BATCH */

/* A burst: curl gets a batch per loop turn, the rest wait their turn
 * (counted as active, cancelable while waiting) and all complete. */
TEST(http_a_burst_waits_its_turn_and_can_be_canceled_while_waiting) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  enum { N = 300 };
  burst b;
  burst_start(&c, &b, N, "latency=30", "burst");
  orch__http_req *r = b.r;
  orch__http_stats st;
  orch__http_get_stats(c.h, &st);
  ASSERT_EQ(orch__http_active(c.h), N);
  ASSERT_EQ(st.active, N);
  ASSERT(st.started > 0 && st.started < N); /* the rest wait */
  /* the last one has not reached curl: canceled at once, and only it */
  orch__http_cancel(c.h, &r[N - 1]);
  ASSERT_EQ(c.done, 1);
  ASSERT_EQ(r[N - 1].result, ORCH_ECANCELED);
  ASSERT(r[N - 1].t_end_ns >= r[N - 1].t_start_ns);
  ASSERT_EQ(orch__http_active(c.h), N - 1);
  orch__http_cancel(c.h, &r[N - 1]); /* twice: nothing more happens */
  ASSERT_EQ(c.done, 1);
  run_until(&c, N, 30000);
  ASSERT_EQ(c.done, N);
  orch__http_get_stats(c.h, &st);
  ASSERT_EQ(st.started, N - 1);
  ASSERT_EQ(st.canceled, 1);
  ASSERT_EQ(burst_ok(&b, N - 1, "burst"), N - 1);
  /* again, now that the burst's connections are open (one each, they
   * all ran at once): reuse is never held back, so all go to curl at
   * once (the one canceled before needs a connection: within the batch) */
  size_t open_conns = 0;
  for (int i = 0; i < N - 1; i++) open_conns += (size_t)r[i].connects;
  ASSERT(open_conns > HTTP_TEST_BATCH_BOUND);
  orch__http_get_stats(c.h, &st);
  size_t started0 = st.started;
  c.done = 0;
  for (int i = 0; i < N; i++) orch__http_submit(c.h, &r[i]);
  orch__http_get_stats(c.h, &st);
  ASSERT(st.started - started0 >= open_conns);
  run_until(&c, N, 30000);
  ASSERT_EQ(c.done, N);
  ASSERT_EQ(burst_ok(&b, N, "burst"), N);
  burst_free(&b);
  ASSERT_EQ(orch__http_active(c.h), 0);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

TEST(http_free_cancels_requests_still_waiting_their_turn) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  enum { N = 200 };
  burst b;
  burst_start(&c, &b, N, "latency=1000", "x");
  uv_run(&c.loop, UV_RUN_NOWAIT); /* some in curl, the rest waiting */
  orch__http_free(c.h);
  ASSERT_EQ(c.done, N); /* every one completed, inside free */
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(b.r[i].result, ORCH_ECANCELED);
    ASSERT_CONTAINS(b.r[i].error, "closing");
  }
  burst_free(&b);
  uv_close((uv_handle_t *)&c.tick, NULL);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&c.loop), 0); /* the engine's handles closed */
  mini_llm_stop(c.m);
}

TEST(http_knows_loopback_urls) {
  ASSERT(orch__http_url_is_loopback("http://127.0.0.1:8000/v1"));
  ASSERT(orch__http_url_is_loopback("http://127.1.2.3/v1/chat"));
  ASSERT(orch__http_url_is_loopback("http://localhost/v1"));
  ASSERT(orch__http_url_is_loopback("http://LocalHost:11434"));
  ASSERT(orch__http_url_is_loopback("http://[::1]:8080/v1"));
  ASSERT(orch__http_url_is_loopback("http://user:p@ss@127.0.0.1/"));
  ASSERT(!orch__http_url_is_loopback("https://api.openai.com/v1"));
  ASSERT(!orch__http_url_is_loopback("http://127.example.com/v1"));
  ASSERT(!orch__http_url_is_loopback("http://localhost.example.com/"));
  ASSERT(!orch__http_url_is_loopback("http://10.0.0.1/?h=127.0.0.1"));
  ASSERT(!orch__http_url_is_loopback("http://[::2]/"));
  ASSERT(!orch__http_url_is_loopback("not a url"));
  ASSERT(!orch__http_url_is_loopback(NULL));
}

/* The engine keeps each URL parsed for the transfers to it (CURLOPT_CURLU)
 * up to a limit; past it, and for a URL that does not parse, curl gets
 * the string as before. Every answer still reaches its own request, a bad
 * URL is an error naming the URL, and the engine goes on. */
TEST(http_parsed_urls_pair_answers_and_bad_urls_still_fail) {
  ctx c;
  ASSERT_EQ(ctx_init(&c), 0);
  enum { NU = 40 }; /* more than the engine keeps parsed */
  orch__http_req r[NU];
  char url[NU][256], text[NU][32];
  for (int round = 0; round < 2; round++) { /* the second finds them kept */
    c.done = 0;
    for (int i = 0; i < NU; i++) {
      snprintf(text[i], sizeof text[i], "u%d-r%d", i, round);
      openai_req(&c, &r[i], url[i], sizeof url[i], "ok", 0, text[i]);
      snprintf(url[i], sizeof url[i], "%s/v1/chat/completions?n=%d", c.base,
               i);
      orch__http_submit(c.h, &r[i]);
      run_until(&c, i + 1, 5000); /* one at a time: openai_req's bodies */
    }
    for (int i = 0; i < NU; i++) {
      ASSERT_EQ(r[i].result, ORCH_OK);
      ASSERT_EQ(r[i].status, 200);
      char want[64];
      snprintf(want, sizeof want, "\"echo: %.31s n=%d\"", text[i], i);
      ASSERT_CONTAINS(r[i].body, want);
      orch__http_req_deinit(&r[i]);
    }
  }
  orch__http_req bad;
  char bu[64] = "http://[::1/v1/chat/completions"; /* unclosed bracket */
  c.done = 0;
  openai_req(&c, &bad, url[0], sizeof url[0], "ok", 0, "x");
  bad.url = bu;
  orch__http_submit(c.h, &bad);
  run_until(&c, 1, 5000);
  ASSERT_EQ(c.done, 1);
  ASSERT(bad.result != ORCH_OK);
  ASSERT_CONTAINS(bad.error, "URL");
  orch__http_req_deinit(&bad);
  orch__http_req ok;
  c.done = 0;
  openai_req(&c, &ok, url[0], sizeof url[0], "ok", 0, "after");
  orch__http_submit(c.h, &ok);
  run_until(&c, 1, 5000);
  ASSERT_EQ(ok.result, ORCH_OK);
  ASSERT_CONTAINS(ok.body, "echo: after");
  orch__http_req_deinit(&ok);
  ASSERT_EQ(ctx_deinit(&c), 0);
}

/* A proxy variable set when an engine starts is honoured (curl would go
 * through the proxy, here a port nobody listens on); with none set the
 * engine tells curl not to look for one on every transfer, and requests go
 * straight to the server. */
TEST(http_honours_a_proxy_variable_set_at_start) {
  int port = closed_port();
  ASSERT(port > 0);
  char proxy[64];
  snprintf(proxy, sizeof proxy, "http://127.0.0.1:%d", port);
  const char *saved = getenv("http_proxy");
  char *keep = saved ? strdup(saved) : NULL;
  for (int with = 1; with >= 0; with--) {
    if (with) setenv("http_proxy", proxy, 1);
    else unsetenv("http_proxy");
    ctx c;
    ASSERT_EQ(ctx_init(&c), 0);
    orch__http_req r;
    char url[256];
    openai_req(&c, &r, url, sizeof url, "ok", 0, "via");
    r.connect_timeout_ms = 2000;
    orch__http_submit(c.h, &r);
    run_until(&c, 1, 5000);
    ASSERT_EQ(c.done, 1);
    if (with) {
      ASSERT_EQ(r.result, ORCH_EIO); /* the proxy refused */
      ASSERT_CONTAINS(r.error, "connect");
    } else {
      ASSERT_EQ(r.result, ORCH_OK);
      ASSERT_CONTAINS(r.body, "echo: via");
    }
    orch__http_req_deinit(&r);
    ASSERT_EQ(ctx_deinit(&c), 0);
  }
  if (keep) setenv("http_proxy", keep, 1);
  free(keep);
}

/* ---- HTTP/2 over TLS, multiplexed (a Node.js http2 server) ----------- */

static const char h2_server_js[] =
    "const http2 = require('http2'), fs = require('fs');\n"
    "const dir = process.argv[2];\n"
    "const s = http2.createSecureServer({key: fs.readFileSync(dir + "
    "'/key.pem'), cert: fs.readFileSync(dir + '/cert.pem'), allowHTTP1: "
    "true});\n"
    "s.on('request', (req, res) => { let b = ''; req.on('data', d => b += "
    "d); req.on('end', () => setTimeout(() => { res.setHeader("
    "'content-type', 'application/json'); res.end(JSON.stringify({echo: b, "
    "v: req.httpVersion})); }, 50)); });\n"
    "s.listen(0, '127.0.0.1', () => console.log(s.address().port));\n"
    "process.stdin.on('end', () => process.exit(0)); process.stdin.resume();\n";

TEST(http_multiplexes_over_http2_when_the_server_offers_it) {
  /* 90 requests at once over one TLS connection */
  char dir[] = "/tmp/orch-h2-XXXXXX";
  if (!mkdtemp(dir)) return;
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
           "-nodes -keyout %s/key.pem -out %s/cert.pem -days 1 -subj "
           "/CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
           dir, dir);
  if (system(cmd) != 0 || system("node --version >/dev/null 2>&1") != 0) {
    printf("  (no openssl or node: HTTP/2 test skipped)\n");
    return;
  }
  char js[512];
  snprintf(js, sizeof js, "%s/h2.js", dir);
  FILE *f = fopen(js, "w");
  fputs(h2_server_js, f);
  fclose(f);
  /* stdin of node is our pipe: closing it ends the server */
  int to_node[2], from_node[2];
  ASSERT(pipe(to_node) == 0 && pipe(from_node) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(to_node[0], 0);
    dup2(from_node[1], 1);
    close(to_node[1]);
    close(from_node[0]);
    execlp("node", "node", js, dir, (char *)NULL);
    _exit(127);
  }
  close(to_node[0]);
  close(from_node[1]);
  char line[32] = "";
  ssize_t n = read(from_node[0], line, sizeof line - 1);
  int port = n > 0 ? atoi(line) : 0;
  ASSERT(port > 0);

  uv_loop_t loop;
  uv_loop_init(&loop);
  orch__http *h;
  char err[256];
  ASSERT_EQ(orch__http_new(&h, &loop, NULL, err, sizeof err), 0);
  /* below Node's 100 streams per connection: past that, libcurl 7.88
   * opens a connection per extra transfer */
  enum { N = 90 };
  orch__http_req *r = calloc(N, sizeof *r);
  char(*bodies)[32] = calloc(N, 32);
  char url[128], ca[512];
  snprintf(url, sizeof url, "https://127.0.0.1:%d/", port);
  snprintf(ca, sizeof ca, "%s/cert.pem", dir);
  ctx c = {0};
  for (int i = 0; i < N; i++) {
    snprintf(bodies[i], 32, "req-%d", i);
    orch__http_req_init(&r[i]);
    r[i].url = url;
    r[i].ca_file = ca;
    r[i].post = bodies[i];
    r[i].post_len = strlen(bodies[i]);
    r[i].on_done = req_done;
    r[i].ud = &c;
    orch__http_submit(h, &r[i]);
  }
  int64_t end = now_ns_t() + 20000000000LL;
  while (c.done < N && now_ns_t() < end) uv_run(&loop, UV_RUN_ONCE);
  int ok = 0, h2 = 0;
  long connects = 0;
  for (int i = 0; i < N; i++) {
    char want[48];
    snprintf(want, sizeof want, "\"echo\":\"req-%d\"", i);
    if (r[i].result == ORCH_OK && r[i].status == 200 && r[i].body &&
        strstr(r[i].body, want))
      ok++;
    else if (!ok)
      fprintf(stderr, "  h2 request %d: %d %ld %s\n", i, r[i].result,
              r[i].status, r[i].error);
    if (r[i].http_version == 20) h2++;
    connects += r[i].connects;
    orch__http_req_deinit(&r[i]);
  }
  free(r);
  free(bodies);
  orch__http_free(h);
  uv_run(&loop, UV_RUN_DEFAULT);
  int lc = uv_loop_close(&loop);
  close(to_node[1]);
  close(from_node[0]);
  waitpid(pid, NULL, 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "  cannot remove %s\n", dir);
  ASSERT_EQ(c.done, N);
  ASSERT_EQ(ok, N);
  ASSERT_EQ(h2, N);
  if (connects > 2) fprintf(stderr, "  %ld connections for %d requests\n", connects, N);
  ASSERT(connects <= 2); /* one connection carries them all */
  ASSERT_EQ(lc, 0);
}
