/* fuzz_llm.c: libFuzzer target for the model client (runtime/llm.c over
 * runtime/http.c): each input is one provider answer, served by a loopback
 * HTTP server thread to a real call on a libuv loop, stream or not, OpenAI
 * or Anthropic, with a fallback tier and a retry. Whatever the answer, the
 * call must end with a result that says what happened: no crash, leak,
 * undefined behaviour or hang, an error message that is UTF-8 and holds no
 * key, token counts -1 or >= 0, a cost finite or unknown, and a result that
 * serialises. Built by `make fuzz`; FUZZ_LLM_PRINT=1 prints each result.
 *
 * Input layout (missing bytes read as 0):
 *   [0] bits 0-1 tier: oa, an, oa_an (OpenAI, falls back to Anthropic),
 *       an_oa; bit 2 stream; bits 3-4 Content-Type: the mode's own,
 *       application/json, text/event-stream, none; bits 5-6 body length:
 *       to the close, Content-Length exact, Content-Length 7 bytes too
 *       long (cut short), Content-Length 3 bytes too short; bit 7 the
 *       engine with a parse thread (llm.parse_threads 1)
 *   [1] the status, an index into `statuses`
 *   [2] bits 0-1: Retry-After, retry-after-ms, both or neither; bits 2-7
 *       the header value's length, taken from the bytes after [5]
 *   [3] [4] two cut points (1/256ths of the response) where the server
 *       writes in pieces; [5] bit 0: pause 200 us between the pieces
 *   then the header value, then the body. */
#include "orch_int.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY "sk-fuzz-SECRET-0123456789abcdef"
#define HANG_MS 15000 /* far above the engine's 2 s per attempt */

static const int statuses[] = {200, 200, 200, 200, 201, 204, 206, 299,
                               100, 101, 199, 302, 304, 400, 401, 403,
                               404, 408, 409, 413, 422, 429, 429, 500,
                               502, 503, 504, 529, 599, 600, 999, 0};

/* ---- the server: one answer, served to every connection ---------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards answer */
static char *answer;       /* status line, headers, body */
static size_t answer_len, cut1, cut2;
static bool pause_between;
static int lfd;

/* Reads a request: headers, then Content-Length bytes of body. */
static void read_request(int fd) {
  char buf[16384];
  size_t have = 0, need = 0;
  while (!need || have < need) {
    struct pollfd q = {.fd = fd, .events = POLLIN};
    if (poll(&q, 1, 2000) <= 0) return;
    ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
    if (n <= 0) return;
    have += (size_t)n;
    buf[have] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (end && !need) {
      const char *cl = strcasestr(buf, "content-length:");
      need = (size_t)(end + 4 - buf) + (cl ? (size_t)atol(cl + 15) : 0);
    }
    if (have == sizeof buf - 1) return;
  }
}

static void send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}

static void *serve(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    read_request(fd);
    pthread_mutex_lock(&mu);
    size_t n = answer_len, a = cut1, b = cut2;
    bool pause = pause_between;
    char *copy = malloc(n ? n : 1);
    if (copy) memcpy(copy, answer, n);
    pthread_mutex_unlock(&mu);
    if (copy) {
      size_t cuts[] = {0, a, b, n};
      for (int i = 0; i < 3; i++) {
        if (cuts[i + 1] <= cuts[i]) continue;
        if (i && pause) usleep(200);
        send_all(fd, copy + cuts[i], cuts[i + 1] - cuts[i]);
      }
    }
    free(copy);
    close(fd);
  }
  return NULL;
}

static int server_start(void) {
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  pthread_t th;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0 ||
      pthread_create(&th, NULL, serve, NULL) != 0)
    return -1;
  pthread_detach(th);
  return ntohs(sa.sin_port);
}

/* ---- the client: two engines on one loop ------------------------------- */

static uv_loop_t loop;
static orch__llm *engines[2]; /* [1]: with a parse thread */

static orch__llm *engine_new(int port, int parse_threads) {
  char conf[2048];
  snprintf(conf, sizeof conf,
           "{\"llm\":{\"max_attempts\":2,\"backoff_base_ms\":0.2,"
           "\"backoff_max_ms\":0.5,\"retry_after_cap_ms\":3,"
           "\"connect_timeout_ms\":1000,\"timeout_ms\":2000,"
           "\"idle_timeout_ms\":1000,\"cooldown\":{\"failures\":0},"
           "\"default_tier\":\"oa\",\"parse_threads\":%d},"
           "\"tiers\":{"
           "\"oa\":{\"provider\":\"openai\",\"base_url\":"
           "\"http://127.0.0.1:%d/v1\",\"model\":\"m\",\"api_key\":\"" KEY
           "\",\"price_in\":1,\"price_out\":2},"
           "\"an\":{\"provider\":\"anthropic\",\"base_url\":"
           "\"http://127.0.0.1:%d\",\"model\":\"m\",\"api_key\":\"" KEY
           "\",\"price_in\":3,\"price_out\":15},"
           "\"oa_an\":{\"provider\":\"openai\",\"base_url\":"
           "\"http://127.0.0.1:%d/v1\",\"model\":\"m2\",\"api_key\":\"" KEY
           "\",\"fallback\":\"an\"},"
           "\"an_oa\":{\"provider\":\"anthropic\",\"base_url\":"
           "\"http://127.0.0.1:%d\",\"model\":\"m2\",\"api_key\":\"" KEY
           "\",\"fallback\":\"oa\"}}}",
           parse_threads, port, port, port, port);
  json_error_t je;
  json_t *sec = json_loads(conf, 0, &je);
  char err[512];
  orch__llm *l = NULL;
  if (!sec || orch__llm_new_json(&l, sec, &loop, err, sizeof err)) {
    fprintf(stderr, "fuzz_llm: %s\n", sec ? err : je.text);
    abort();
  }
  json_decref(sec);
  return l;
}

static void setup(void) {
  int port = server_start();
  if (port <= 0) {
    perror("fuzz_llm: server");
    abort();
  }
  uv_loop_init(&loop);
  engines[0] = engine_new(port, 0);
  engines[1] = engine_new(port, 1);
}

/* ---- invariants -------------------------------------------------------- */

static const orch__llm_result *checking; /* the result CHECK looks at */

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "fuzz_llm: invariant failed: %s (line %d)\n", #cond, \
              __LINE__);                                                  \
      if (checking)                                                       \
        fprintf(stderr, "fuzz_llm: code %d, error: %s\n", checking->code, \
                checking->error ? checking->error : "(none)");            \
      abort();                                                            \
    }                                                                     \
  } while (0)

static bool utf8_text(const char *s) {
  return s && orch__utf8_valid(s, strlen(s), NULL);
}

/* the tiers' key, whole (provider text may hold a part of it, or words
 * like it: that is no leak) */
static bool no_key(const char *s) { return !s || !strstr(s, KEY); }

static bool count_ok(long v) { return v == -1 || v >= 0; }

static void check_result(const orch__llm_result *r, int status) {
  checking = r;
  CHECK(r);
  CHECK(r->nattempts >= 1);
  if (r->code == ORCH_OK) {
    CHECK(!r->error);
    CHECK(r->text && r->text[r->text_len] == '\0');
    /* an answer comes only with a 2xx */
    CHECK(status >= 200 && status < 300);
    CHECK(r->attempts[r->nattempts - 1].http_status == status);
  } else {
    CHECK(utf8_text(r->error) && no_key(r->error));
    CHECK(!r->text);
  }
  CHECK(!r->finish_reason || utf8_text(r->finish_reason));
  CHECK(r->tier && r->model && r->provider);
  CHECK(count_ok(r->tokens_in) && count_ok(r->tokens_out));
  CHECK(r->cost == -1 || (isfinite(r->cost) && r->cost >= 0));
  CHECK(isfinite(r->latency_ms) && isfinite(r->ttft_ms));
  for (size_t i = 0; i < r->nattempts; i++) {
    const orch__llm_attempt *a = &r->attempts[i];
    CHECK(a->action && a->tier && a->model);
    CHECK(a->code == ORCH_OK ? !a->error
                             : utf8_text(a->error) && no_key(a->error));
    CHECK(count_ok(a->tokens_in) && count_ok(a->tokens_out));
    CHECK(a->cost == -1 || (isfinite(a->cost) && a->cost >= 0));
    CHECK(isfinite(a->delay_ms) && a->delay_ms >= 0 && a->delay_ms < 10);
  }
  json_t *j = orch__llm_result_json(r);
  CHECK(j);
  CHECK(json_array_size(json_object_get(j, "attempts")) == r->nattempts);
  char *s = json_dumps(j, JSON_COMPACT);
  CHECK(s && no_key(s));
  if (getenv("FUZZ_LLM_PRINT")) /* to see what an input does */
    fprintf(stderr, "fuzz_llm: code %d, error %s, text \"%s\"\n%s\n", r->code,
            r->error ? r->error : "(none)", r->text ? r->text : "", s);
  free(s);
  json_decref(j);
  checking = NULL;
}

/* ---- one input --------------------------------------------------------- */

static void call_done(orch__llm_call *c, void *ud) {
  (void)c;
  *(bool *)ud = true;
}

/* Appends s[0..n) to a buffer of cap bytes at *o (cap is always enough). */
static void put(char *dst, size_t *o, const void *s, size_t n) {
  memcpy(dst + *o, s, n);
  *o += n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!engines[0]) setup();
  uint8_t h[6] = {0};
  memcpy(h, data, size < sizeof h ? size : sizeof h);
  const uint8_t *rest = data + (size < sizeof h ? size : sizeof h);
  size_t nrest = size - (size_t)(rest - data);
  static const char *const tiers[] = {"oa", "an", "oa_an", "an_oa"};
  const char *tier = tiers[h[0] & 3];
  int stream = (h[0] >> 2) & 1;
  int ctype = (h[0] >> 3) & 3, lenmode = (h[0] >> 5) & 3;
  orch__llm *l = engines[h[0] >> 7];
  int status = statuses[h[1] % ORCH__ARRAY_LEN(statuses)];
  int ra = h[2] & 3;
  size_t vlen = (size_t)(h[2] >> 2);
  if (vlen > nrest) vlen = nrest;
  char val[64];
  for (size_t i = 0; i < vlen; i++) /* one header line: no CR, LF, NUL */
    val[i] = rest[i] == '\r' || rest[i] == '\n' || !rest[i] ? 'x'
                                                            : (char)rest[i];
  val[vlen] = '\0';
  const char *body = (const char *)rest + vlen;
  size_t blen = nrest - vlen;

  static const char *const ctypes[] = {NULL, "application/json",
                                       "text/event-stream", ""};
  const char *ct = ctypes[ctype];
  if (!ct) ct = stream ? "text/event-stream" : "application/json";
  size_t cap = 512 + 2 * sizeof val + blen, o = 0;
  char *resp = malloc(cap);
  if (!resp) return 0;
  char line[256];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %03d X\r\n", status);
  put(resp, &o, line, (size_t)n);
  if (*ct) {
    n = snprintf(line, sizeof line, "Content-Type: %s\r\n", ct);
    put(resp, &o, line, (size_t)n);
  }
  if (lenmode) {
    size_t cl = lenmode == 1 ? blen : lenmode == 2 ? blen + 7
                : blen >= 3 ? blen - 3 : 0;
    n = snprintf(line, sizeof line, "Content-Length: %zu\r\n", cl);
    put(resp, &o, line, (size_t)n);
  }
  if (ra & 1) {
    n = snprintf(line, sizeof line, "Retry-After: %s\r\n", val);
    put(resp, &o, line, (size_t)n);
  }
  if (ra & 2) {
    n = snprintf(line, sizeof line, "retry-after-ms: %s\r\n", val);
    put(resp, &o, line, (size_t)n);
  }
  put(resp, &o, "Connection: close\r\n\r\n", 21);
  put(resp, &o, body, blen);

  pthread_mutex_lock(&mu);
  free(answer);
  answer = resp;
  answer_len = o;
  cut1 = o * h[3] / 256;
  cut2 = o * h[4] / 256;
  if (cut2 < cut1) cut2 = cut1;
  pause_between = h[5] & 1;
  pthread_mutex_unlock(&mu);

  bool done = false;
  orch__llm_req rq = {.tier = tier, .prompt = "fuzz", .stream = stream,
                      .done = call_done, .ud = &done};
  orch__llm_call *call = NULL;
  CHECK(orch__llm_call_start(l, &rq, &call) == ORCH_OK && call);
  int64_t end = orch__now_ns() + (int64_t)HANG_MS * 1000000;
  while (!done) {
    if (orch__now_ns() > end) {
      fprintf(stderr, "fuzz_llm: the call did not end in %d ms\n", HANG_MS);
      abort();
    }
    if (!uv_run(&loop, UV_RUN_ONCE) && !done) {
      fprintf(stderr, "fuzz_llm: the loop ran dry before the call ended\n");
      abort();
    }
  }
  check_result(orch__llm_call_result(call), status);
  orch__llm_call_free(call);
  /* let closed handles (the call's timer) go before the next input */
  for (int i = 0; i < 3; i++) uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
