/* test_llm.c: the providers (runtime/llm.c) over real HTTP on loopback:
 * both APIs, stream or not, every fault, retries, Retry-After, fallback,
 * cooldown, redaction, cancellation, configuration and 1,000 concurrent
 * calls paired with their answers. The server is test_http.c's mini_llm. */
#include "orch_int.h"
#include "test.h"
#include "mini_llm.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <unistd.h>
#include <time.h>

#define KEY "sk-test-SECRET-123456"

static int64_t tnow(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct lctx {
  uv_loop_t loop;
  uv_timer_t tick;
  mini_llm *m;
  orch_mock *mock; /* the project's mock instead of mini_llm */
  orch__llm *l;
  int done;
  char err[512];
} lctx;

static void tick(uv_timer_t *t) { (void)t; }

/* Config JSON with @PORT@ replaced by the server's port: mini_llm, or the
 * project's mock (orch_mock) when use_mock. */
static int lctx_start(lctx *c, const char *conf, bool use_mock) {
  memset(c, 0, sizeof *c);
  uv_loop_init(&c->loop);
  uv_timer_init(&c->loop, &c->tick);
  uv_timer_start(&c->tick, tick, 20, 20);
  char port[16], buf[4096];
  if (use_mock) {
    char err[256];
    if (orch_mock_start(&c->mock, "127.0.0.1", 0, err, sizeof err)) {
      fprintf(stderr, "orch_mock_start: %s\n", err);
      return -1;
    }
    snprintf(port, sizeof port, "%d", orch_mock_port(c->mock));
  } else {
    c->m = mini_llm_start();
    if (!c->m) return -1;
    snprintf(port, sizeof port, "%d", mini_llm_port(c->m));
  }
  size_t o = 0;
  for (const char *p = conf; *p && o < sizeof buf - 16;) {
    if (strncmp(p, "@PORT@", 6) == 0) {
      o += (size_t)snprintf(buf + o, sizeof buf - o, "%s", port);
      p += 6;
    } else buf[o++] = *p++;
  }
  buf[o] = '\0';
  json_error_t je;
  json_t *sec = json_loads(buf, 0, &je);
  if (!sec) {
    fprintf(stderr, "bad test config: %s\n", je.text);
    return -1;
  }
  int rc = orch__llm_new_json(&c->l, sec, &c->loop, c->err, sizeof c->err);
  json_decref(sec);
  if (rc) fprintf(stderr, "orch__llm_new_json: %s\n", c->err);
  return rc;
}

static int lctx_init(lctx *c, const char *conf) {
  return lctx_start(c, conf, false);
}

static int lctx_deinit(lctx *c) {
  orch__llm_free(c->l);
  uv_close((uv_handle_t *)&c->tick, NULL);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&c->loop);
  if (c->m) mini_llm_stop(c->m);
  orch_mock_free(c->mock);
  return rc;
}

static void call_done(orch__llm_call *call, void *ud) {
  (void)call;
  lctx *c = ud;
  c->done++;
}

static void lrun(lctx *c, int n, int max_ms) {
  int64_t end = tnow() + (int64_t)max_ms * 1000000;
  while (c->done < n && tnow() < end) uv_run(&c->loop, UV_RUN_ONCE);
}

/* Runs one call to completion; the caller frees it. */
static orch__llm_call *call1(lctx *c, const char *tier, const char *prompt,
                             int stream) {
  orch__llm_req rq = {.tier = tier, .prompt = prompt, .stream = stream,
                      .done = call_done, .ud = c};
  orch__llm_call *call;
  int before = c->done;
  if (orch__llm_call_start(c->l, &rq, &call)) return NULL;
  lrun(c, before + 1, 20000);
  return call;
}

#define BASE_CONF                                                            \
  "{\"llm\":{\"max_attempts\":2,\"backoff_base_ms\":5,\"backoff_max_ms\":20," \
  "\"idle_timeout_ms\":300,\"cooldown\":{\"failures\":0}},"                   \
  "\"tiers\":{"                                                              \
  "\"oa\":{\"provider\":\"openai\",\"base_url\":"                           \
  "\"http://127.0.0.1:@PORT@/v1\",\"model\":\"ok\",\"price_in\":1,"          \
  "\"price_out\":2,\"api_key\":\"" KEY "\"},"                                \
  "\"an\":{\"provider\":\"anthropic\",\"base_url\":"                        \
  "\"http://127.0.0.1:@PORT@\",\"model\":\"ok\",\"price_in\":3,"             \
  "\"price_out\":15,\"api_key\":\"" KEY "\"},"

static const char conf_basic[] = BASE_CONF
    "\"nousage\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"nousage\"},"
    "\"malformed\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"malformed\"},"
    "\"truncate\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"truncate\"},"
    "\"truncate_an\":{\"provider\":\"anthropic\",\"base_url\":"
    "\"http://127.0.0.1:@PORT@\",\"model\":\"truncate\"},"
    "\"stall\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"stall\"},"
    "\"reset\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"reset\"},"
    "\"bad\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":\"400\","
    "\"api_key\":\"" KEY "\",\"fallback\":\"oa\"},"
    "\"e500\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":\"500\","
    "\"fallback\":\"an\"},"
    "\"quota\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"429-quota\",\"fallback\":\"oa\"},"
    "\"ra\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"flaky-ra=1\"},"
    "\"racap\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"retry-after=120\",\"fallback\":\"oa\"},"
    "\"slow\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"latency=1000\"},"
    "\"trickle\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"slow=150\"},"
    "\"oa_an\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"
    "\"ok\",\"fallback\":\"an\"}"
    "}}";

/* Runs one call with a model of the caller's (the step's "model"). */
static orch__llm_call *call_model(lctx *c, const char *tier,
                                  const char *model, const char *prompt,
                                  int stream) {
  orch__llm_req rq = {.tier = tier, .model = model, .prompt = prompt,
                      .stream = stream, .done = call_done, .ud = c};
  orch__llm_call *call;
  int before = c->done;
  if (orch__llm_call_start(c->l, &rq, &call)) return NULL;
  lrun(c, before + 1, 20000);
  return call;
}

TEST(llm_openai_whole_answer_has_text_usage_and_cost) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "oa", "hello there", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->text, "echo: hello there");
  ASSERT_EQ(r->tokens_in, 11);
  ASSERT_EQ(r->tokens_out, 7);
  ASSERT(fabs(r->cost - (11 * 1.0 + 7 * 2.0) / 1e6) < 1e-12);
  ASSERT_STR_EQ(r->tier, "oa");
  ASSERT_STR_EQ(r->provider, "openai");
  ASSERT_STR_EQ(r->finish_reason, "stop");
  ASSERT_EQ(r->nattempts, 1);
  ASSERT_STR_EQ(r->attempts[0].action, "ok");
  ASSERT_EQ(r->attempts[0].http_status, 200);
  ASSERT(r->ttft_ms >= 0);
  json_t *j = orch__llm_result_json(r);
  ASSERT_EQ(json_integer_value(json_object_get(j, "tokens_in")), 11);
  ASSERT_STR_EQ(json_string_value(json_object_get(
                    json_array_get(json_object_get(j, "attempts"), 0),
                    "action")),
                "ok");
  char *js = json_dumps(j, 0);
  ASSERT(!strstr(js, "SECRET"));
  free(js);
  json_decref(j);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_openai_stream_is_assembled_into_the_same_result) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "oa", "stream me please", 1);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->text, "echo: stream me please");
  ASSERT_EQ(r->tokens_in, 11);
  ASSERT_EQ(r->tokens_out, 7);
  ASSERT_STR_EQ(r->finish_reason, "stop");
  ASSERT(r->ttft_ms >= 0 && r->ttft_ms <= r->attempts[0].latency_ms);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_anthropic_whole_and_stream) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  for (int stream = 0; stream < 2; stream++) {
    orch__llm_call *call = call1(&c, "an", "bonjour", stream);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->text, "echo: bonjour");
    ASSERT_STR_EQ(r->provider, "anthropic");
    ASSERT_EQ(r->tokens_in, 11);
    ASSERT_EQ(r->tokens_out, 7);
    ASSERT_STR_EQ(r->finish_reason, "end_turn");
    ASSERT(fabs(r->cost - (11 * 3.0 + 7 * 15.0) / 1e6) < 1e-12);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* A prompt that is not UTF-8 (a dependency's binary output) is sent with
 * U+FFFD for each bad byte, not dropped from the request. */
TEST(llm_a_prompt_that_is_not_utf8_is_sent_repaired) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "oa", "bin \xff\xfe data \xe6\x97", 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->text, "echo: bin \xef\xbf\xbd\xef\xbf\xbd data "
                         "\xef\xbf\xbd\xef\xbf\xbd");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
  char *t = orch__utf8_repair("a\xc3\xa9\x80z", 5); /* é, a stray byte */
  ASSERT_STR_EQ(t, "a\xc3\xa9\xef\xbf\xbdz");
  free(t);
  t = orch__utf8_repair("", 0);
  ASSERT_STR_EQ(t, "");
  free(t);
}

TEST(llm_missing_usage_is_unknown_not_zero) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  for (int stream = 0; stream < 2; stream++) {
    orch__llm_call *call = call1(&c, "nousage", "x", stream);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_EQ(r->tokens_in, -1);
    ASSERT_EQ(r->tokens_out, -1);
    ASSERT(r->cost < 0);
    json_t *j = orch__llm_result_json(r);
    ASSERT(json_is_null(json_object_get(j, "tokens_in")));
    ASSERT(json_is_null(json_object_get(j, "cost")));
    json_decref(j);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_malformed_json_names_the_byte_and_is_retried) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "malformed", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EIO);
  ASSERT_CONTAINS(r->error, "malformed JSON in response at byte");
  ASSERT_EQ(r->nattempts, 2); /* retryable: max_attempts = 2 */
  ASSERT_STR_EQ(r->attempts[0].action, "retry");
  ASSERT_CONTAINS(r->error, "no fallback tier");
  orch__llm_call_free(call);
  call = call1(&c, "malformed", "x", 1);
  r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EIO);
  ASSERT_CONTAINS(r->error, "malformed JSON in stream event at byte");
  ASSERT_EQ(r->nattempts, 2);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_truncated_stream_names_the_byte_and_is_retried) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "truncate", "x", 1);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_CONTAINS(r->attempts[0].error, "at byte");
  ASSERT_STR_EQ(r->attempts[0].action, "retry");
  orch__llm_call_free(call);
  call = call1(&c, "truncate_an", "x", 1);
  r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_CONTAINS(r->attempts[0].error, "at byte");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* A byte offset from a message ("... at byte N ..."), or -1. */
static long byte_of(const char *msg) {
  const char *p = msg ? strstr(msg, "at byte ") : NULL;
  return p ? strtol(p + 8, NULL, 10) : -1;
}

/* A leading U+FEFF is not part of the first field's name: the first event
 * (Anthropic's message_start, with the input tokens) is kept. */
TEST(llm_stream_with_a_bom_keeps_its_first_event) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  const char *tiers[] = {"oa", "an"};
  for (int i = 0; i < 2; i++) {
    orch__llm_call *call = call_model(&c, tiers[i], "ok+bom", "hello", 1);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->text, "echo: hello");
    ASSERT_EQ(r->tokens_in, 11);
    ASSERT_EQ(r->tokens_out, 7);
    ASSERT_EQ(r->nattempts, 1);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* \r, \n and \r\n all end a line, also a \r\n cut between two reads. */
TEST(llm_stream_with_cr_or_crlf_line_ends_is_read) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  const char *tiers[] = {"oa", "an"};
  const char *models[] = {"ok+cr", "ok+crlf", "ok+crlf-split", "ok+bom+cr"};
  for (int i = 0; i < 2; i++)
    for (size_t k = 0; k < sizeof models / sizeof *models; k++) {
      orch__llm_call *call = call_model(&c, tiers[i], models[k], "hello", 1);
      const orch__llm_result *r = orch__llm_call_result(call);
      if (r->code) fprintf(stderr, "  %s %s: %s\n", tiers[i], models[k],
                           r->error);
      ASSERT_EQ(r->code, ORCH_OK);
      ASSERT_STR_EQ(r->text, "echo: hello");
      ASSERT_EQ(r->tokens_in, 11);
      ASSERT_EQ(r->tokens_out, 7);
      ASSERT_EQ(r->nattempts, 1);
      orch__llm_call_free(call);
    }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* The byte a broken event is named at counts every byte of the stream:
 * the line ends as sent and the BOM. The break sits after the first
 * event's two line ends. */
TEST(llm_malformed_stream_event_names_the_byte_as_sent) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  const char *models[] = {"malformed", "malformed+cr", "malformed+crlf",
                          "malformed+bom", "malformed+crlf-split"};
  const long extra[] = {0, 0, 2, 3, 2};
  long base = -1;
  for (size_t k = 0; k < sizeof models / sizeof *models; k++) {
    orch__llm_call *call = call_model(&c, "oa", models[k], "x", 1);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_EIO);
    ASSERT_CONTAINS(r->attempts[0].error, "malformed JSON in stream event");
    long at = byte_of(r->attempts[0].error);
    ASSERT(at > 0);
    if (k == 0) base = at;
    if (at != base + extra[k])
      fprintf(stderr, "  %s: %s (want byte %ld)\n", models[k],
              r->attempts[0].error, base + extra[k]);
    ASSERT_EQ(at, base + extra[k]);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* A server that ignores stream:true answers with one application/json
 * body: that is a whole answer, not a truncated stream. */
TEST(llm_a_stream_answered_with_a_whole_json_body_is_read_whole) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  const char *tiers[] = {"oa", "an"};
  for (int i = 0; i < 2; i++) {
    orch__llm_call *call = call_model(&c, tiers[i], "json-stream", "hi", 1);
    const orch__llm_result *r = orch__llm_call_result(call);
    if (r->code) fprintf(stderr, "  %s: %s\n", tiers[i], r->error);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->text, "echo: hi");
    ASSERT_EQ(r->tokens_in, 11);
    ASSERT_EQ(r->tokens_out, 7);
    ASSERT_EQ(r->nattempts, 1);
    ASSERT(r->finish_reason);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_stalled_stream_stops_at_the_idle_timeout_without_leaks) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "stall", "a long enough prompt", 1);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_ETIMEDOUT);
  ASSERT_CONTAINS(r->error, "idle timeout");
  ASSERT_EQ(r->nattempts, 2);
  ASSERT(ms >= 590 && ms < 3000); /* two attempts of 300 ms */
  ASSERT_EQ(orch__http_active(orch__llm_http(c.l)), 0);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_slow_stream_under_the_idle_timeout_completes) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "trickle", "slowly now", 1);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->text, "echo: slowly now");
  ASSERT_EQ(r->nattempts, 1);
  ASSERT(r->latency_ms > 500); /* 5 events, 150 ms apart, idle 300 ms */
  ASSERT(r->ttft_ms < r->latency_ms);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_connection_reset_is_retried) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "reset", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EIO);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].http_status, 0);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_server_errors_fall_back_to_the_next_tier) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "e500", "fall back", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->tier, "an");
  ASSERT_STR_EQ(r->text, "echo: fall back");
  ASSERT_EQ(r->nattempts, 3);
  ASSERT_EQ(r->attempts[0].http_status, 500);
  ASSERT_STR_EQ(r->attempts[0].action, "retry");
  ASSERT_STR_EQ(r->attempts[1].action, "fallback");
  ASSERT_STR_EQ(r->attempts[2].tier, "an");
  ASSERT_CONTAINS(r->attempts[0].error, "Overloaded");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_quota_429_falls_back_without_retrying) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "quota", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].http_status, 429);
  ASSERT_STR_EQ(r->attempts[0].action, "fallback");
  ASSERT_STR_EQ(r->tier, "oa");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* The step's model is its own tier's: a fallback tier (here another
 * provider) sends its own model. */
TEST(llm_a_step_model_applies_to_its_own_tier_not_the_fallbacks) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  for (int stream = 0; stream < 2; stream++) {
    orch__llm_call *call = call_model(&c, "oa_an", "500", "x", stream);
    const orch__llm_result *r = orch__llm_call_result(call);
    if (r->code) fprintf(stderr, "  stream %d: %s\n", stream, r->error);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_EQ(r->nattempts, 3);
    ASSERT_STR_EQ(r->attempts[0].tier, "oa_an");
    ASSERT_STR_EQ(r->attempts[0].model, "500");
    ASSERT_STR_EQ(r->attempts[1].model, "500");
    ASSERT_STR_EQ(r->attempts[2].tier, "an");
    ASSERT_STR_EQ(r->attempts[2].model, "ok");
    ASSERT_STR_EQ(r->tier, "an");
    ASSERT_STR_EQ(r->model, "ok");
    ASSERT_STR_EQ(r->provider, "anthropic");
    json_t *j = orch__llm_result_json(r);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "model")), "ok");
    json_decref(j);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* Azure's rate-limit 429 links .../quotaincrease and sends Retry-After:
 * a rate limit, retried when it says, not a spent quota. */
TEST(llm_a_rate_limit_that_mentions_quota_is_retried_after_retry_after) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call_model(&c, "oa_an", "flaky-azure=1", "x", 0);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].http_status, 429);
  ASSERT_STR_EQ(r->attempts[0].action, "retry");
  ASSERT(r->attempts[0].delay_ms >= 1000 && r->attempts[0].delay_ms <= 1100);
  ASSERT_STR_EQ(r->tier, "oa_an");
  ASSERT(ms >= 1000);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_honours_retry_after_timed) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "ra", "x", 0);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].http_status, 429);
  ASSERT(r->attempts[0].delay_ms >= 1000 && r->attempts[0].delay_ms <= 1100);
  ASSERT(ms >= 1000 && ms < 1600);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_retry_after_above_the_cap_falls_back_at_once) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "racap", "x", 0);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->attempts[0].action, "fallback");
  ASSERT_STR_EQ(r->tier, "oa");
  ASSERT(ms < 1000);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

static int count_of(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; p && (p = strstr(p, needle)); p += strlen(needle))
    n++;
  return n;
}

/* When the last attempt fails, the message says each thing once: curl's
 * message, the tier, the decision and that no fallback was left (with
 * retry.lua the reason quotes curl's message and leads: spec/30). */
TEST(llm_a_failure_message_says_each_thing_once) {
  static const char conf[] =
      "{\"llm\":{\"max_attempts\":2,\"backoff_base_ms\":1,"
      "\"backoff_max_ms\":2,\"cooldown\":{\"failures\":0}},"
      "\"tiers\":{\"dead\":{\"provider\":\"openai\",\"base_url\":"
      "\"http://127.0.0.1:1/v1\",\"model\":\"m\"}}}"; /* nobody on port 1 */
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf), 0);
  orch__llm_call *call = call1(&c, "dead", "x", 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_CONTAINS(r->error, "Failed to connect to 127.0.0.1 port 1");
  ASSERT_CONTAINS(r->error, "after 2 attempts; no fallback tier");
  ASSERT_EQ(count_of(r->error, "tier 'dead'"), 1);
  ASSERT_EQ(count_of(r->error, "Couldn't connect to server"), 1);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_other_4xx_fail_with_the_provider_message_and_no_key) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_call *call = call1(&c, "bad", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_EQ(r->nattempts, 1); /* no retry, no fallback */
  ASSERT_STR_EQ(r->attempts[0].action, "fail");
  ASSERT_CONTAINS(r->error, "HTTP 400");
  ASSERT_CONTAINS(r->error, "Incorrect API key provided");
  ASSERT(!strstr(r->error, "SECRET"));
  ASSERT(!strstr(r->attempts[0].error, "SECRET"));
  json_t *d = orch__llm_describe(c.l);
  char *s = json_dumps(d, 0);
  ASSERT(!strstr(s, "SECRET"));
  free(s);
  json_decref(d);
  char *m = strdup("token " KEY " and again " KEY);
  orch__llm_redact(c.l, &m);
  ASSERT(!strstr(m, "SECRET"));
  ASSERT_CONTAINS(m, "[redacted]");
  free(m);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_cancel_ends_a_call_in_flight_and_in_backoff) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_req rq = {.tier = "slow", .prompt = "x", .done = call_done,
                      .ud = &c};
  orch__llm_call *call;
  ASSERT_EQ(orch__llm_call_start(c.l, &rq, &call), 0);
  for (int i = 0; i < 5; i++) uv_run(&c.loop, UV_RUN_NOWAIT);
  orch__llm_call_cancel(call);
  ASSERT_EQ(c.done, 0); /* done comes on a later loop turn */
  lrun(&c, 1, 2000);
  ASSERT_EQ(c.done, 1);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_ECANCELED);
  orch__llm_call_free(call);
  /* in backoff: Retry-After 1 s, cancel while waiting */
  rq.tier = "ra";
  ASSERT_EQ(orch__llm_call_start(c.l, &rq, &call), 0);
  int64_t t0 = tnow();
  while (orch__http_active(orch__llm_http(c.l)) == 0 && tnow() - t0 < 1000000000)
    uv_run(&c.loop, UV_RUN_ONCE);
  while (orch__http_active(orch__llm_http(c.l)) != 0 && tnow() - t0 < 2000000000)
    uv_run(&c.loop, UV_RUN_ONCE);
  orch__llm_call_cancel(call);
  lrun(&c, 2, 2000);
  ASSERT_EQ(c.done, 2);
  r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_ECANCELED);
  ASSERT((double)(tnow() - t0) / 1e6 < 900);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

static int decider_calls;
static void fail_fast(void *ud, const orch__llm_retry_opts *o, int attempt,
                      int status, const char *error, long retry_after_ms,
                      const char *body, orch__llm_decision *d) {
  (void)ud; (void)o; (void)attempt; (void)error; (void)retry_after_ms;
  (void)body;
  decider_calls++;
  memset(d, 0, sizeof *d);
  d->action = ORCH__LLM_FAIL;
  snprintf(d->reason, sizeof d->reason, "policy says no (%d)", status);
}

TEST(llm_a_set_decider_replaces_the_built_in_policy) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_set_decider(c.l, fail_fast, NULL);
  orch__llm_call *call = call1(&c, "e500", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_EQ(r->nattempts, 1); /* no retry, no fallback */
  ASSERT_EQ(decider_calls, 1);
  ASSERT_STR_EQ(r->attempts[0].action, "fail");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

static const char conf_cooldown[] =
    "{\"llm\":{\"max_attempts\":1,\"cooldown\":{\"failures\":2,"
    "\"window_ms\":10000,\"cooldown_ms\":5000}},\"tiers\":{"
    "\"a\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":\"500\","
    "\"fallback\":\"b\"},"
    "\"b\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":\"ok\"}}}";

TEST(llm_cooldown_sends_steps_straight_to_the_fallback) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf_cooldown), 0);
  for (int i = 0; i < 2; i++) {
    orch__llm_call *call = call1(&c, "a", "x", 0);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->tier, "b");
    ASSERT_EQ(r->attempts[0].http_status, 500);
    orch__llm_call_free(call);
  }
  unsigned long before = mini_llm_requests(c.m);
  orch__llm_call *call = call1(&c, "a", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->tier, "b");
  ASSERT_STR_EQ(r->attempts[0].action, "cooldown");
  ASSERT_EQ(mini_llm_requests(c.m) - before, 1); /* only b was asked */
  json_t *d = orch__llm_describe(c.l);
  ASSERT(json_object_get(json_object_get(d, "a"), "cooldown_ms"));
  json_decref(d);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_decide_spreads_retries_with_full_jitter) {
  orch__llm_retry_opts o = {.max_attempts = 5, .base_ms = 1000,
                            .max_ms = 20000, .retry_after_cap_ms = 60000};
  orch__llm_decision d;
  double lo = 1e9, hi = 0, sum = 0;
  int buckets[10] = {0};
  for (int i = 0; i < 1000; i++) {
    orch__llm_decide(&o, 1, 429, "rate", -1, "{}", &d);
    ASSERT_EQ(d.action, ORCH__LLM_RETRY);
    ASSERT(d.delay_ms >= 0 && d.delay_ms <= 1000);
    lo = d.delay_ms < lo ? d.delay_ms : lo;
    hi = d.delay_ms > hi ? d.delay_ms : hi;
    sum += d.delay_ms;
    buckets[(int)(d.delay_ms / 100) % 10]++;
  }
  ASSERT(lo < 20 && hi > 980);
  ASSERT(sum / 1000 > 400 && sum / 1000 < 600);
  for (int i = 0; i < 10; i++) ASSERT(buckets[i] > 50); /* no burst */
  orch__llm_decide(&o, 3, 503, NULL, -1, NULL, &d);
  ASSERT(d.delay_ms <= 4000);
  orch__llm_decide(&o, 5, 503, NULL, -1, NULL, &d);
  ASSERT_EQ(d.action, ORCH__LLM_FALLBACK);
  orch__llm_decide(&o, 1, 404, NULL, -1, NULL, &d);
  ASSERT_EQ(d.action, ORCH__LLM_FAIL);
  orch__llm_decide(&o, 1, 429, NULL, 70000, NULL, &d);
  ASSERT_EQ(d.action, ORCH__LLM_FALLBACK);
  orch__llm_decide(&o, 1, 429, NULL, 2000, NULL, &d);
  ASSERT(d.action == ORCH__LLM_RETRY && d.delay_ms >= 2000);
  orch__llm_decide(&o, 1, 429, NULL, -1,
                   "{\"error\":{\"type\":\"insufficient_quota\"}}", &d);
  ASSERT_EQ(d.action, ORCH__LLM_FALLBACK);
  for (int s = 408; s <= 409; s++) {
    orch__llm_decide(&o, 1, s, NULL, -1, NULL, &d);
    ASSERT_EQ(d.action, ORCH__LLM_RETRY);
  }
  orch__llm_decide(&o, 1, 529, NULL, -1, NULL, &d);
  ASSERT_EQ(d.action, ORCH__LLM_RETRY);
}

/* 429 bodies: a spent quota or budget (by the error's code or type), or a
 * rate limit whatever its message says (Azure's and Gemini's speak of
 * quota). 1: quota spent. */
static const struct {
  const char *body;
  int quota;
} bodies_429[] = {
    {"{\"error\":{\"message\":\"You exceeded your current quota\","
     "\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\"}}", 1},
    {"{\"type\":\"error\",\"error\":{\"type\":\"billing_error\","
     "\"message\":\"Your credit balance is too low\"}}", 1},
    {"{\"error\":{\"code\":\"credit_limit_reached\"}}", 1},
    {"{\"error\":{\"type\" :\n \"Budget_Exceeded\"}}", 1},
    {"{\"error\":{\"code\":\"429\",\"message\":\"Requests to the "
     "ChatCompletions_Create Operation have exceeded token rate limit. "
     "Please retry after 1 second. Please go here: "
     "https://aka.ms/oai/quotaincrease\"}}", 0},
    {"{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted "
     "(e.g. check quota).\",\"status\":\"RESOURCE_EXHAUSTED\"}}", 0},
    {"{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\","
     "\"code\":\"rate_limit_exceeded\"}}", 0},
    {"{\"error\":{\"message\":\"Your credit balance is too low; check "
     "billing\"}}", 0},
    {"{\"error\":{\"message\":\"say \\\"type\\\":\\\"billing\\\"\"}}", 0},
    {"quota billing budget credit", 0},
    {"", 0},
};

TEST(llm_decide_tells_a_spent_quota_from_a_rate_limit) {
  orch__llm_retry_opts o = {.max_attempts = 4, .base_ms = 10,
                            .max_ms = 100, .retry_after_cap_ms = 60000};
  orch__llm_decision d;
  for (size_t i = 0; i < sizeof bodies_429 / sizeof *bodies_429; i++) {
    orch__llm_decide(&o, 1, 429, NULL, -1, bodies_429[i].body, &d);
    if ((d.action == ORCH__LLM_FALLBACK) != bodies_429[i].quota)
      fprintf(stderr, "  body %zu: %s\n", i, bodies_429[i].body);
    ASSERT_EQ(d.action, bodies_429[i].quota ? ORCH__LLM_FALLBACK
                                            : ORCH__LLM_RETRY);
    /* a Retry-After says when to come back: a rate limit, whatever the body */
    orch__llm_decide(&o, 1, 429, NULL, 1500, bodies_429[i].body, &d);
    ASSERT_EQ(d.action, ORCH__LLM_RETRY);
    ASSERT(d.delay_ms >= 1500);
    orch__llm_decide(&o, 1, 429, NULL, 0, bodies_429[i].body, &d);
    ASSERT_EQ(d.action, ORCH__LLM_RETRY);
  }
}

/* "Come back now" (Retry-After: 0, retry-after-ms: 0) told to a crowd: they
 * still spread, over 10% of the base delay, as retry.lua spreads them. */
TEST(llm_decide_spreads_a_crowd_told_retry_after_zero) {
  orch__llm_retry_opts o = {.max_attempts = 4, .base_ms = 500,
                            .max_ms = 30000, .retry_after_cap_ms = 60000};
  orch__llm_decision d;
  double hi = 0;
  for (int i = 0; i < 1000; i++) {
    orch__llm_decide(&o, 1, 429, NULL, 0, "{}", &d);
    ASSERT_EQ(d.action, ORCH__LLM_RETRY);
    ASSERT(d.delay_ms >= 0 && d.delay_ms <= 50);
    if (d.delay_ms > hi) hi = d.delay_ms;
  }
  ASSERT(hi > 40);
}

/* The built-in twin and scripts/policies/retry.lua decide alike: the same
 * action on every case (their reasons' words differ). */
TEST(llm_decide_agrees_with_retry_lua) {
  orch__config cfg;
  orch__config_defaults(&cfg);
  free(cfg.scripts_dir);
  cfg.scripts_dir = orch__strdup("scripts");
  orch__policy *p = NULL;
  char err[512];
  ASSERT_EQ(orch__policy_new(&p, &cfg, err, sizeof err), ORCH_OK);
  orch__lstate *ls = orch__lstate_new(p, err, sizeof err);
  ASSERT(ls);
  /* the script's own numbers, so that attempts and caps line up */
  orch__llm_retry_opts o = {.max_attempts = 4, .base_ms = 500,
                            .max_ms = 30000, .retry_after_cap_ms = 60000};
  static const int statuses[] = {0, 200, 400, 401, 404, 408, 409, 429, 500,
                                 503, 529};
  static const long ras[] = {-1, 0, 1000, 60000, 60001};
  size_t n = 0;
  for (int attempt = 1; attempt <= 4; attempt++)
    for (size_t si = 0; si < sizeof statuses / sizeof *statuses; si++)
      for (size_t ri = 0; ri < sizeof ras / sizeof *ras; ri++)
        for (size_t bi = 0; bi < sizeof bodies_429 / sizeof *bodies_429;
             bi++) {
          int st = statuses[si];
          const char *body = bodies_429[bi].body;
          const char *error = st == 0 || st == 200 ? "timeout" : NULL;
          orch__llm_decision d;
          orch__llm_decide(&o, attempt, st, error, ras[ri], body, &d);
          json_t *arg = json_pack("{s:i,s:i,s:s}", "attempt", attempt,
                                  "status", st, "body", body);
          if (error) json_object_set_new(arg, "error", json_string(error));
          if (ras[ri] >= 0)
            json_object_set_new(arg, "retry_after_ms",
                                json_integer(ras[ri]));
          json_t *out = NULL;
          int rc = orch__policy_call(ls, "policies.retry", "decide", arg,
                                     &out, err, sizeof err);
          json_decref(arg);
          if (rc) fprintf(stderr, "  retry.lua: %s\n", err);
          ASSERT_EQ(rc, ORCH_OK);
          const char *la = json_string_value(json_object_get(out, "action"));
          const char *ca = d.action == ORCH__LLM_RETRY      ? "retry"
                           : d.action == ORCH__LLM_FALLBACK ? "fallback"
                                                            : "fail";
          if (!la || strcmp(la, ca))
            fprintf(stderr,
                    "  attempt %d status %d retry-after %ld body %zu: C %s "
                    "(%s), retry.lua %s\n",
                    attempt, st, ras[ri], bi, ca, d.reason, la ? la : "?");
          ASSERT_STR_EQ(la, ca);
          /* told when to come back: both wait that long and spread the
           * crowd over the same 10% of max(Retry-After, base) */
          if (d.action == ORCH__LLM_RETRY && ras[ri] >= 0) {
            double hi = (double)ras[ri] +
                        0.1 * (ras[ri] > 500 ? (double)ras[ri] : 500.0);
            double ld = json_number_value(json_object_get(out, "delay_ms"));
            ASSERT(d.delay_ms >= (double)ras[ri] && d.delay_ms <= hi);
            ASSERT(ld >= (double)ras[ri] && ld <= hi);
          }
          json_decref(out);
          n++;
        }
  ASSERT(n > 1000);
  orch__lstate_free(ls);
  orch__policy_free(p);
  orch__config_deinit(&cfg);
}

TEST(llm_config_check_names_the_bad_key) {
  char err[256];
  struct {
    const char *json, *want;
  } cases[] = {
      {"{\"tiers\":{\"fast\":{\"prize_in\":1}}}", "tiers.fast.prize_in"},
      {"{\"tiers\":{\"fast\":{\"price_in\":\"x\"}}}", "tiers.fast.price_in"},
      {"{\"tiers\":{\"fast\":{\"provider\":\"acme\"}}}", "tiers.fast.provider"},
      {"{\"tiers\":{\"fast\":{\"fallback\":\"nowhere\"}}}",
       "tiers.fast.fallback"},
      {"{\"tiers\":{\"fast\":{\"base_url\":\"ftp://x\"}}}",
       "tiers.fast.base_url"},
      {"{\"llm\":{\"max_attempts\":0}}", "llm.max_attempts"},
      {"{\"llm\":{\"cooldown\":{\"failurez\":1}}}", "llm.cooldown.failurez"},
      {"{\"llm\":{\"timeout\":1}}", "llm.timeout"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_t *j = json_loads(cases[i].json, 0, NULL);
    ASSERT(j);
    err[0] = '\0';
    ASSERT_EQ(orch__llm_config_check(j, err, sizeof err), ORCH_ECONFIG);
    ASSERT_CONTAINS(err, cases[i].want);
    json_decref(j);
  }
  json_t *ok = json_loads("{\"tiers\":{\"x\":{\"model\":\"m\",\"fallback\":"
                          "\"local\"}},\"llm\":{\"timeout_ms\":5}}",
                          0, NULL);
  ASSERT_EQ(orch__llm_config_check(ok, err, sizeof err), ORCH_OK);
  json_decref(ok);
}

static char *saved_env[5];
static const char *const env_names[5] = {"OPENAI_BASE_URL", "OPENAI_API_KEY",
                                         "OPENAI_MODEL", "ANTHROPIC_BASE_URL",
                                         "ANTHROPIC_API_KEY"};
static void env_save(void) {
  for (int i = 0; i < 5; i++) {
    const char *v = getenv(env_names[i]);
    saved_env[i] = v ? strdup(v) : NULL;
    unsetenv(env_names[i]);
  }
}
static void env_restore(void) {
  for (int i = 0; i < 5; i++) {
    if (saved_env[i]) setenv(env_names[i], saved_env[i], 1);
    else unsetenv(env_names[i]);
    free(saved_env[i]);
    saved_env[i] = NULL;
  }
}

/* A tier on a hosted API (api.openai.com, api.anthropic.com) without a
 * key is skipped at once to its fallback, recorded as a "no_key" attempt
 * whose message says what to set; with no fallback the call fails at
 * once, nothing sent. */
/* After a fallback, the final error tells each tier's part in order, each
 * thing once, including a tier that failed for good (a 401). */
/* The mock's no-usage fault: an answer without usage, both APIs, stream or
 * not; the call passes with its tokens and cost unknown, not zero. */
TEST(mock_no_usage_answers_record_tokens_as_unknown) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, "{\"llm\":{\"cooldown\":{\"failures\":0}},"
                           "\"tiers\":{\"o\":{\"base_url\":"
                           "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                           "\"mock-echo+fault=no-usage\",\"price_in\":1,"
                           "\"price_out\":1},\"a\":{\"provider\":"
                           "\"anthropic\",\"base_url\":"
                           "\"http://127.0.0.1:@PORT@\",\"api_key\":\"k\","
                           "\"model\":\"mock-echo+fault=no-usage\","
                           "\"price_in\":1,\"price_out\":1},"
                           "\"ok\":{\"base_url\":"
                           "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                           "\"mock-echo\",\"price_in\":1,\"price_out\":1}}}",
                       true),
            0);
  const char *tiers[] = {"o", "a"};
  for (int t = 0; t < 2; t++)
    for (int stream = 0; stream <= 1; stream++) {
      orch__llm_call *call = call1(&c, tiers[t], "hello there", stream);
      ASSERT(call);
      const orch__llm_result *r = orch__llm_call_result(call);
      ASSERT_EQ(r->code, ORCH_OK);
      ASSERT_STR_EQ(r->text, "hello there");
      ASSERT_EQ(r->tokens_in, -1);
      ASSERT_EQ(r->tokens_out, -1);
      ASSERT(r->cost < 0);
      orch__llm_call_free(call);
    }
  /* and without the fault the same mock says them */
  orch__llm_call *call = call1(&c, "ok", "hello there", 1);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r->tokens_in > 0 && r->tokens_out > 0 && r->cost > 0);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_a_final_error_after_fallbacks_tells_every_tier) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, "{\"llm\":{\"max_attempts\":2,"
                           "\"backoff_base_ms\":1,\"backoff_max_ms\":2,"
                           "\"cooldown\":{\"failures\":0}},\"tiers\":{"
                           "\"dead\":{\"base_url\":\"http://127.0.0.1:1/v1\","
                           "\"model\":\"m\",\"api_key\":\"k\",\"fallback\":"
                           "\"busy\"},\"busy\":{\"base_url\":"
                           "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                           "\"mock-echo+fault=500\",\"api_key\":\"k\","
                           "\"fallback\":\"refused\"},\"refused\":{"
                           "\"base_url\":\"http://127.0.0.1:@PORT@/v1\","
                           "\"model\":\"mock-echo+fault=401\",\"api_key\":"
                           "\"k\"}}}",
                       true),
            0);
  orch__llm_call *call = call1(&c, "dead", "x", 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_EQ(r->nattempts, 5);
  const char *e = r->error;
  const char *p1 = strstr(e, "tier 'dead': "), *p2 = strstr(e, "tier 'busy': "),
             *p3 = strstr(e, "tier 'refused': ");
  if (!p1 || !p2 || !p3) fprintf(stderr, "  error: %s\n", e);
  ASSERT(p1 == e && p2 > p1 && p3 > p2);
  ASSERT_CONTAINS(e, "Couldn't connect to server");
  ASSERT_CONTAINS(e, "HTTP 500");
  ASSERT_CONTAINS(e, "HTTP 401");
  ASSERT_EQ(count_of(e, "Couldn't connect to server"), 1);
  ASSERT_EQ(count_of(e, "HTTP 500"), 1);
  ASSERT_EQ(count_of(e, "tier 'busy'"), 1);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_a_hosted_tier_without_a_key_is_skipped_saying_what_to_set) {
  env_save(); /* no OPENAI_API_KEY / ANTHROPIC_API_KEY to fall back on */
  lctx c;
  int rc = lctx_init(
      &c, "{\"llm\":{\"cooldown\":{\"failures\":0}},\"tiers\":{"
          "\"hosted\":{\"base_url\":\"https://api.openai.com/v1\","
          "\"model\":\"gpt-x\",\"fallback\":\"mine\"},"
          "\"claude\":{\"provider\":\"anthropic\",\"model\":\"c\"},"
          "\"mine\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\","
          "\"model\":\"ok\"}}}");
  env_restore();
  ASSERT_EQ(rc, 0);
  unsigned long sent = mini_llm_requests(c.m);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "hosted", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->tier, "mine");
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_STR_EQ(r->attempts[0].action, "no_key");
  ASSERT_CONTAINS(r->attempts[0].error, "tier 'hosted' has no API key for "
                                        "https://api.openai.com/v1: set "
                                        "OPENAI_API_KEY");
  ASSERT_CONTAINS(r->attempts[0].error, "OPENAI_BASE_URL");
  ASSERT_EQ(mini_llm_requests(c.m), sent + 1); /* only the fallback's */
  orch__llm_call_free(call);
  call = call1(&c, "claude", "x", 0);
  r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_ECONFIG);
  ASSERT_EQ(r->nattempts, 1);
  ASSERT_CONTAINS(r->error, "set ANTHROPIC_API_KEY");
  ASSERT_CONTAINS(r->error, "no fallback tier");
  ASSERT((tnow() - t0) / 1000000 < 1000); /* no retries, no backoff */
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

#define OK_BODY                                                         \
  "{\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":" \
  "\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"

/* A tier that names api_key_env sends that variable's key, or none when
 * it is unset: never OPENAI_API_KEY, to a server that is not OpenAI's.
 * On a hosted API the tier is then skipped, saying which variable to set. */
TEST(llm_api_key_env_is_the_only_key_a_tier_sends) {
  canned_srv *s = canned_start(200, "application/json", OK_BODY,
                               sizeof OK_BODY - 1);
  ASSERT(s);
  char conf[1024], auth[256];
  snprintf(conf, sizeof conf,
           "{\"tiers\":{\"a\":{\"base_url\":\"http://127.0.0.1:%d/v1\","
           "\"model\":\"x\",\"api_key_env\":\"ORCH_TEST_GROQ_KEY\"},"
           "\"hosted\":{\"model\":\"x\",\"api_key_env\":"
           "\"ORCH_TEST_GROQ_KEY\"}}}",
           canned_port(s));
  for (int set = 0; set < 2; set++) {
    env_save();
    setenv("OPENAI_API_KEY", "sk-test-OPENAI-0123456789abcdef", 1);
    if (set) setenv("ORCH_TEST_GROQ_KEY", "gsk_test_GROQ_0123456789", 1);
    else unsetenv("ORCH_TEST_GROQ_KEY");
    lctx c;
    int rc = lctx_init(&c, conf);
    env_restore();
    unsetenv("ORCH_TEST_GROQ_KEY");
    ASSERT_EQ(rc, 0);
    orch__llm_call *call = call1(&c, "a", "x", 0);
    ASSERT_EQ(orch__llm_call_result(call)->code, ORCH_OK);
    canned_auth(s, auth, sizeof auth);
    ASSERT_STR_EQ(auth, set ? "Bearer gsk_test_GROQ_0123456789" : "");
    orch__llm_call_free(call);
    if (!set) {
      call = call1(&c, "hosted", "x", 0);
      const orch__llm_result *r = orch__llm_call_result(call);
      ASSERT_EQ(r->code, ORCH_ECONFIG);
      ASSERT_STR_EQ(r->attempts[0].action, "no_key");
      ASSERT_CONTAINS(r->error, "set ORCH_TEST_GROQ_KEY");
      orch__llm_call_free(call);
    }
    ASSERT_EQ(lctx_deinit(&c), 0);
  }
  ASSERT_EQ(canned_requests(s), 2);
  canned_stop(s);
}

#define KEY2 "gsk_test_SECRET_0123456789abcdefghij"

/* One call to a tier on a canned_srv (status, body), stream or not; the
 * tier's key is KEY2. */
static orch__llm_call *canned_call(lctx *c, canned_srv **s, int status,
                                   const char *ctype, const char *body,
                                   size_t len, int stream) {
  *s = canned_start(status, ctype, body, len);
  if (!*s) return NULL;
  char conf[1024];
  snprintf(conf, sizeof conf,
           "{\"llm\":{\"max_attempts\":1,\"cooldown\":{\"failures\":0}},"
           "\"tiers\":{\"t\":{\"base_url\":\"http://127.0.0.1:%d/v1\","
           "\"model\":\"x\",\"api_key\":\"" KEY2 "\",\"price_in\":1,"
           "\"price_out\":2}}}",
           canned_port(*s));
  if (lctx_init(c, conf)) return NULL;
  return call1(c, "t", "x", stream);
}

static void canned_end(lctx *c, canned_srv *s, orch__llm_call *call) {
  orch__llm_call_free(call);
  lctx_deinit(c);
  canned_stop(s);
}

static char decided_body[70000];
static void record_decide(void *ud, const orch__llm_retry_opts *o,
                          int attempt, int status, const char *error,
                          long retry_after_ms, const char *body,
                          orch__llm_decision *d) {
  (void)ud;
  snprintf(decided_body, sizeof decided_body, "%s", body ? body : "");
  orch__llm_decide(o, attempt, status, error, retry_after_ms, body, d);
}

/* A key the provider echoes where a message is cut (an error body's first
 * 200 bytes, a stream error event, the body the retry policy reads) is
 * redacted whole: the cut comes after the redaction, so no prefix leaks. */
TEST(llm_a_key_across_a_message_cut_is_redacted_whole) {
  char body[512];
  snprintf(body, sizeof body, "%190s %s tail", "x", KEY2); /* key at 191 */
  lctx c;
  canned_srv *s;
  orch__llm_call *call = canned_call(&c, &s, 400, "text/plain", body,
                                     strlen(body), 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_CONTAINS(r->error, "HTTP 400");
  ASSERT(!strstr(r->error, "gsk_"));
  ASSERT(!strstr(r->attempts[0].error, "gsk_"));
  canned_end(&c, s, call);
  /* the retry policy is given the body redacted */
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  orch__llm_set_decider(c.l, record_decide, NULL);
  call = call1(&c, "bad", "x", 0);
  ASSERT_CONTAINS(decided_body, "Incorrect API key");
  ASSERT(!strstr(decided_body, "SECRET"));
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
  /* a stream's error event, its message cut to fit */
  snprintf(body, sizeof body,
           "data: {\"error\":{\"message\":\"%280s%s\"}}\n\n", "y", KEY2);
  call = canned_call(&c, &s, 200, "text/event-stream", body, strlen(body), 1);
  ASSERT(call);
  r = orch__llm_call_result(call);
  ASSERT_CONTAINS(r->attempts[0].error, "error event in stream");
  ASSERT(!strstr(r->attempts[0].error, "gsk_"));
  ASSERT(!strstr(r->error, "gsk_"));
  canned_end(&c, s, call);
}

/* jansson's own parse-error text quotes the token it stopped in when that
 * is 20 bytes or less: the start of a key in a malformed answer must not
 * show (cut, it no longer matches the key to redact it). */
TEST(llm_a_key_quoted_by_a_json_parse_error_does_not_show) {
  char body[512];
  snprintf(body, sizeof body, "{\"a\":\"%.18s\x01\"}", KEY2);
  for (int stream = 0; stream <= 1; stream++) {
    char sbody[600];
    snprintf(sbody, sizeof sbody, "data: %s\n\n", body);
    lctx c;
    canned_srv *s;
    orch__llm_call *call =
        stream ? canned_call(&c, &s, 200, "text/event-stream", sbody,
                             strlen(sbody), 1)
               : canned_call(&c, &s, 200, "application/json", body,
                             strlen(body), 0);
    ASSERT(call);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_CONTAINS(r->error, "malformed JSON in");
    ASSERT_CONTAINS(r->error, "at byte");
    ASSERT(!strstr(r->error, "SECRET"));
    ASSERT(!strstr(r->attempts[0].error, "SECRET"));
    json_t *j = orch__llm_result_json(r);
    char *d = json_dumps(j, 0);
    ASSERT(d && !strstr(d, "SECRET"));
    free(d);
    json_decref(j);
    canned_end(&c, s, call);
  }
}

/* The key-shaped rule masks sk- tokens at a word start and of a key's
 * length, not words that contain "sk-". */
TEST(llm_redact_masks_key_shaped_tokens_not_words) {
  char *m = strdup("task-priority-level, disk-usage-alert-threshold-high, "
                   "sk-short; key sk-proj-abcdefghijklmnopqrst. "
                   "(sk-ant-api03-abcdefghijklmnop)");
  orch__llm_redact(NULL, &m);
  ASSERT_CONTAINS(m, "task-priority-level, disk-usage-alert-threshold-high, "
                     "sk-short; key sk-****");
  ASSERT(!strstr(m, "abcdefghij"));
  free(m);
}

/* Redaction is linear in the text: each key found is replaced as the text
 * is copied once, not by copying the whole text again per key found. A
 * stream's error event of 1 MiB repeating the key (a server knows it: it
 * was sent the key) took 29,000 copies of 1 MiB. */
static double error_event_ms(const char *unit, char **err) {
  static const char pre[] = "data: {\"error\":{\"message\":\"";
  static const char post[] = "\"}}\n\n";
  size_t ul = strlen(unit), reps = ((size_t)1 << 20) / ul;
  size_t n = sizeof pre - 1 + ul * reps + sizeof post - 1;
  char *body = malloc(n);
  if (!body) return -1;
  memcpy(body, pre, sizeof pre - 1);
  for (size_t i = 0; i < reps; i++) memcpy(body + sizeof pre - 1 + ul * i, unit, ul);
  memcpy(body + n - (sizeof post - 1), post, sizeof post - 1);
  lctx c;
  canned_srv *s;
  int64_t t0 = tnow();
  orch__llm_call *call =
      canned_call(&c, &s, 200, "text/event-stream", body, n, 1);
  double ms = (double)(tnow() - t0) / 1e6;
  free(body);
  const orch__llm_result *r = orch__llm_call_result(call);
  if (!r || !r->error || !strstr(r->error, "error event in stream") ||
      strstr(r->error, KEY2) || strstr(r->attempts[0].error, KEY2)) {
    *err = strdup(r && r->error ? r->error : "no result");
    ms = -1;
  }
  canned_end(&c, s, call);
  return ms;
}

/* A JSON error's message is kept to its first 1,000 bytes (a provider may
 * put a whole document there), redacted before the cut, on one line. */
TEST(llm_a_long_provider_message_is_cut_after_redaction) {
  size_t n = 20000;
  char *body = malloc(n + 200);
  ASSERT(body);
  int o = snprintf(body, n + 200, "{\"error\":{\"type\":\"invalid_request_error\","
                                  "\"message\":\"line one\\nline two ");
  memset(body + o, 'm', 960);
  o += 960;
  o += snprintf(body + o, n + 200 - (size_t)o, "%s ", KEY2); /* across 1,000 */
  memset(body + o, 'z', n - (size_t)o);
  snprintf(body + n, 200, "\"}}");
  lctx c;
  canned_srv *s;
  orch__llm_call *call =
      canned_call(&c, &s, 400, "application/json", body, strlen(body), 0);
  free(body);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_CONTAINS(r->error, "HTTP 400: invalid_request_error: line one line two mmm");
  ASSERT(strlen(r->error) < 1200);
  ASSERT(!strstr(r->error, "gsk_"));
  ASSERT(!strstr(r->error, "zzz"));
  ASSERT(!strchr(r->error, '\n'));
  canned_end(&c, s, call);
}

TEST(llm_redact_is_linear_in_the_keys_found) {
  char *err = NULL;
  double none = 1e9, keys = 1e9;
  /* the best of up to 3 rounds: a busy machine slows one run, not all */
  for (int round = 0; round < 3 && !err && (!round || !(keys < 3 * none + 100));
       round++) {
    double a = error_event_ms("gsk_test_xxxxxx_0123456789abcdefghij", &err);
    double b = err ? 0 : error_event_ms(KEY2, &err);
    if (a < none) none = a;
    if (b < keys) keys = b;
  }
  bool ok = !err;
  if (err) fprintf(stderr, "  %s\n", err);
  free(err);
  ASSERT(ok);
  fprintf(stderr, "  1 MiB error event: no key %.0f ms, 29,000 keys %.0f ms\n",
          none, keys);
  ASSERT(keys < 3 * none + 100); /* as linear: about the same */
}

/* A 4xx with a body above the response cap (65 MiB) is the provider's
 * answer, read in part: one attempt, failed with its message, not a
 * transport error retried with the whole body each time. */
TEST(llm_a_huge_error_body_is_an_answer_not_a_transport_error) {
  size_t n = (size_t)65 << 20;
  char *big = malloc(n);
  ASSERT(big);
  memset(big, 'z', n);
  memcpy(big, "quota? no: bad request ", 23);
  lctx c;
  canned_srv *s;
  orch__llm_call *call = canned_call(&c, &s, 400, "text/plain", big, n, 0);
  free(big);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_EQ(r->nattempts, 1);
  ASSERT_STR_EQ(r->attempts[0].action, "fail");
  ASSERT_EQ(r->attempts[0].http_status, 400);
  ASSERT_CONTAINS(r->error, "HTTP 400: quota? no: bad request zzz");
  ASSERT(!strstr(r->error, "larger"));
  canned_end(&c, s, call);
}

/* Cost is known only from both counts: an answer without tokens_out has
 * none (not the price of its tokens_in), and a failed call whose answers
 * (2xx, billed) had unknown usage has an unknown cost, not 0. */
TEST(llm_cost_is_unknown_when_any_billed_usage_is) {
  static const char part[] =
      "{\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":"
      "\"stop\"}],\"usage\":{\"prompt_tokens\":10}}";
  lctx c;
  canned_srv *s;
  orch__llm_call *call = canned_call(&c, &s, 200, "application/json", part,
                                     sizeof part - 1, 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_EQ(r->tokens_in, 10);
  ASSERT(r->attempts[0].cost < 0);
  ASSERT(r->cost < 0);
  json_t *j = orch__llm_result_json(r);
  ASSERT(json_is_null(json_object_get(
      json_array_get(json_object_get(j, "attempts"), 0), "cost")));
  json_decref(j);
  canned_end(&c, s, call);
  ASSERT_EQ(lctx_init(&c, conf_basic), 0);
  call = call1(&c, "truncate", "x", 1); /* 2xx, cut before the usage */
  r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_EQ(r->attempts[0].http_status, 200);
  ASSERT(r->cost < 0);
  j = orch__llm_result_json(r);
  ASSERT(json_is_null(json_object_get(j, "cost")));
  json_decref(j);
  orch__llm_call_free(call);
  call = call1(&c, "bad", "x", 0); /* a 400 bills nothing: cost 0 */
  r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT(r->cost == 0);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* A usage count no answer can have (negative, or more tokens than any
 * model reads or writes in one call) is unknown (-1), not a count: sums
 * of them over a run would go backwards or overflow. */
TEST(llm_usage_counts_out_of_range_are_unknown) {
  static const char whole[] =
      "{\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":"
      "\"stop\"}],\"usage\":{\"prompt_tokens\":-5,"
      "\"completion_tokens\":9223372036854775807}}";
  static const char stream[] =
      "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
      "\"completion_tokens\":-2}}\n\n"
      "data: [DONE]\n\n";
  for (int st = 0; st < 2; st++) {
    lctx c;
    canned_srv *s;
    orch__llm_call *call =
        canned_call(&c, &s, 200, st ? "text/event-stream" : "application/json",
                    st ? stream : whole,
                    st ? sizeof stream - 1 : sizeof whole - 1, st);
    ASSERT(call);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->text, "hi");
    ASSERT_EQ(r->tokens_in, st ? 7 : -1);
    ASSERT_EQ(r->tokens_out, -1);
    ASSERT_EQ(r->attempts[0].tokens_out, -1);
    ASSERT(r->cost < 0); /* billed, usage unknown */
    canned_end(&c, s, call);
  }
}

/* A stream holds at most what a whole answer may (64 MiB): an event that
 * never ends (no line end, or data lines without the blank line) and an
 * answer's text that keeps growing both stop there with ELIMIT, instead
 * of buffering until memory or the total timeout runs out. */
/* An answer over the size limit is not asked for again (the tier would
 * send as much again): one attempt, then the fallback. */
TEST(llm_an_answer_over_the_size_limit_is_not_retried) {
  size_t n = ((size_t)64 << 20) + 4096;
  char *big = malloc(n);
  ASSERT(big);
  memset(big, ' ', n);
  memcpy(big, "{\"choices\":[", 12);
  canned_srv *s = canned_start(200, "application/json", big, n);
  free(big);
  ASSERT(s);
  char conf[1024];
  snprintf(conf, sizeof conf,
           "{\"llm\":{\"max_attempts\":3,\"backoff_base_ms\":1,"
           "\"cooldown\":{\"failures\":0}},\"tiers\":{\"t\":{\"base_url\":"
           "\"http://127.0.0.1:%d/v1\",\"model\":\"x\",\"api_key\":\"k\","
           "\"fallback\":\"u\"},\"u\":{\"base_url\":"
           "\"http://127.0.0.1:@PORT@/v1\",\"model\":\"ok\"}}}",
           canned_port(s));
  lctx c;
  ASSERT_EQ(lctx_init(&c, conf), 0);
  orch__llm_call *call = call1(&c, "t", "x", 0);
  ASSERT(call);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->tier, "u");
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].code, ORCH_ELIMIT);
  ASSERT_STR_EQ(r->attempts[0].action, "fallback");
  ASSERT_CONTAINS(r->attempts[0].error, "larger than");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
  canned_stop(s);
}

TEST(llm_a_stream_holds_no_more_than_a_whole_answer_may) {
  size_t cap = (size_t)64 << 20, n = cap + (1 << 20);
  char *big = malloc(n + 1);
  ASSERT(big);
  for (int k = 0; k < 3; k++) {
    const char *what = "stream event larger than";
    if (k == 0) { /* one line without an end */
      memset(big, 'x', n);
      memcpy(big, "data: ", 6);
    } else if (k == 1) { /* data lines, no blank line between */
      memset(big, 'x', n);
      for (size_t i = 0; i + 65536 <= n; i += 65536) {
        memcpy(big + i, "data: ", 6);
        big[i + 65535] = '\n';
      }
    } else { /* well-formed events whose text adds up past the cap */
      static const char pre[] = "data: {\"choices\":[{\"delta\":{\"content\":\"";
      static const char post[] = "\"}}]}\n\n";
      size_t ev = 65536, tl = ev - (sizeof pre - 1) - (sizeof post - 1);
      for (size_t i = 0; i + ev <= n; i += ev) {
        memcpy(big + i, pre, sizeof pre - 1);
        memset(big + i + sizeof pre - 1, 'y', tl);
        memcpy(big + i + sizeof pre - 1 + tl, post, sizeof post - 1);
      }
      n -= n % ev;
      what = "answer larger than";
    }
    lctx c;
    canned_srv *s;
    orch__llm_call *call =
        canned_call(&c, &s, 200, "text/event-stream", big, n, 1);
    ASSERT(call);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_ELIMIT);
    ASSERT_EQ(r->attempts[0].code, ORCH_ELIMIT);
    ASSERT_CONTAINS(r->attempts[0].error, what);
    canned_end(&c, s, call);
  }
  free(big);
}

/* A stream is read in time proportional to its bytes, whatever its line
 * ends: 16 MiB of bare \r (each an empty line) once took, for each of
 * them, a scan for \n across the rest of the read: 6 times as long as
 * 16 MiB of \n. */
static double stream_ms(char end, char **err) {
  static const char head[] =
      "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
  static const char tail[] = "data: [DONE]\n\n";
  size_t mid = (size_t)16 << 20, n = sizeof head - 1 + mid + sizeof tail - 1;
  char *big = malloc(n);
  if (!big) return -1;
  memcpy(big, head, sizeof head - 1);
  memset(big + sizeof head - 1, end, mid);
  memcpy(big + sizeof head - 1 + mid, tail, sizeof tail - 1);
  lctx c;
  canned_srv *s;
  int64_t t0 = tnow();
  orch__llm_call *call =
      canned_call(&c, &s, 200, "text/event-stream", big, n, 1);
  double ms = (double)(tnow() - t0) / 1e6;
  free(big);
  const orch__llm_result *r = orch__llm_call_result(call);
  if (!r || r->code != ORCH_OK || strcmp(r->text, "hi") != 0) {
    *err = strdup(r && r->error ? r->error : "no answer");
    ms = -1;
  }
  canned_end(&c, s, call);
  return ms;
}

TEST(llm_a_stream_of_bare_cr_line_ends_reads_in_linear_time) {
  char *err = NULL;
  double lf = 1e9, cr = 1e9;
  /* the best of up to 3 rounds: a busy machine slows one run, not all */
  for (int round = 0; round < 3 && !err && (!round || !(cr < 2 * lf + 250));
       round++) {
    double a = stream_ms('\n', &err);
    double b = err ? 0 : stream_ms('\r', &err);
    if (a < lf) lf = a;
    if (b < cr) cr = b;
  }
  bool ok = !err;
  if (err) fprintf(stderr, "  %s\n", err);
  free(err);
  ASSERT(ok);
  fprintf(stderr, "  16 MiB of \\n: %.0f ms, of \\r: %.0f ms\n", lf, cr);
  ASSERT(lf > 0 && cr > 0);
  ASSERT(cr < 2 * lf + 250); /* as linear: about the same */
}

static bool valid_utf8(const char *s) {
  return s && orch__utf8_valid(s, strlen(s), NULL);
}

/* Provider text enters messages as UTF-8, cut between characters: an
 * error body in Latin-1 or cut inside a character, a stream error event
 * cut to fit; the attempt's "error" stays in the JSON. */
TEST(llm_provider_text_in_messages_stays_utf8) {
  static const struct {
    int status;
    const char *ctype, *body;
    int stream;
  } cases[] = {
      {400, "text/plain", "\xe9" "chec de la requ\xeate", 0},
      {400, "text/plain",
       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
       "\xc3\xa9\xc3\xa9 and more", 0}, /* an é across byte 200 */
      {200, "text/event-stream", NULL, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char body[1024];
    if (cases[i].body) snprintf(body, sizeof body, "%s", cases[i].body);
    else /* 276 + the prefix's 23 bytes: a 3-byte character across 300 */
      snprintf(body, sizeof body,
               "data: {\"error\":{\"message\":\"%276s\xe6\x97\xa5\xe6\x97\xa5"
               "\"}}\n\n", "y");
    lctx c;
    canned_srv *s;
    orch__llm_call *call = canned_call(&c, &s, cases[i].status,
                                       cases[i].ctype, body, strlen(body),
                                       cases[i].stream);
    ASSERT(call);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT(r->code != ORCH_OK);
    ASSERT(valid_utf8(r->error));
    ASSERT(valid_utf8(r->attempts[0].error));
    json_t *j = orch__llm_result_json(r);
    json_t *e = json_object_get(json_array_get(json_object_get(j, "attempts"),
                                               0), "error");
    ASSERT(json_is_string(e));
    json_decref(j);
    canned_end(&c, s, call);
  }
  /* and a result holding bytes that are not UTF-8 keeps every key */
  char bt[] = "t\xff", bm[] = "m\xc3", be[] = "bad \xe9";
  orch__llm_attempt a = {.tier = bt, .model = bm, .provider = "openai",
                         .action = "fail", .error = be, .cost = -1,
                         .tokens_in = -1, .tokens_out = -1, .ttft_ms = -1};
  orch__llm_result res = {.tier = bt, .model = bm, .code = ORCH_EHTTP,
                          .attempts = &a, .nattempts = 1, .cost = -1,
                          .tokens_in = -1, .tokens_out = -1, .ttft_ms = -1};
  json_t *j = orch__llm_result_json(&res);
  ASSERT(json_is_string(json_object_get(j, "tier")));
  ASSERT(json_is_string(json_object_get(j, "model")));
  json_t *ja = json_array_get(json_object_get(j, "attempts"), 0);
  ASSERT(json_is_string(json_object_get(ja, "error")));
  ASSERT(json_is_string(json_object_get(ja, "tier")));
  json_decref(j);
}

/* The default OpenAI tiers' prices follow where OPENAI_BASE_URL points:
 * OpenAI's list prices at api.openai.com (or with no base URL), nothing on
 * this machine, unknown (null: set price_in/price_out) anywhere else. */
static double tier_price(json_t *d, const char *tier) {
  json_t *v = json_object_get(json_object_get(d, tier), "price_in");
  return json_is_number(v) ? json_number_value(v) : -2;
}

TEST(llm_default_tier_prices_follow_the_base_url) {
  static const struct {
    const char *base;
    double fast, strong;
  } cases[] = {
      {NULL, 0.15, 2.5},
      {"https://api.openai.com/v1", 0.15, 2.5},
      {"http://127.0.0.1:8000/v1", 0, 0},
      {"http://localhost:11434/v1", 0, 0},
      {"https://openrouter.ai/api/v1", -2, -2}, /* null: unknown */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    env_save();
    if (cases[i].base) setenv("OPENAI_BASE_URL", cases[i].base, 1);
    setenv("OPENAI_API_KEY", KEY, 1);
    orch__llm *l = NULL;
    char err[256];
    int rc = orch__llm_new_json(&l, NULL, &loop, err, sizeof err);
    env_restore();
    ASSERT_EQ(rc, 0);
    json_t *d = orch__llm_describe(l);
    ASSERT(tier_price(d, "fast") == cases[i].fast);
    ASSERT(tier_price(d, "strong") == cases[i].strong);
    json_decref(d);
    orch__llm_free(l);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
  }
}

TEST(llm_only_openai_base_url_serves_every_tier) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  env_save();
  setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/", 1);
  setenv("OPENAI_API_KEY", KEY, 1);
  orch__llm *l = NULL;
  char err[256];
  int rc = orch__llm_new_json(&l, NULL, &loop, err, sizeof err);
  env_restore();
  ASSERT_EQ(rc, 0);
  json_t *d = orch__llm_describe(l);
  const char *tiers[] = {"fast", "local", "strong"};
  for (int i = 0; i < 3; i++) {
    json_t *t = json_object_get(d, tiers[i]);
    ASSERT(t);
    ASSERT_STR_EQ(json_string_value(json_object_get(t, "base_url")),
                  "http://127.0.0.1:9/v1");
    ASSERT_STR_EQ(json_string_value(json_object_get(t, "provider")), "openai");
  }
  ASSERT_STR_EQ(json_string_value(json_object_get(json_object_get(d, "local"),
                                                  "model")),
                "local");
  char *s = json_dumps(d, 0);
  ASSERT(!strstr(s, "SECRET"));
  free(s);
  json_decref(d);
  orch__llm_free(l);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  /* OPENAI_MODEL names the model of every tier; Anthropic vars bring it */
  env_save();
  setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1", 1);
  setenv("OPENAI_MODEL", "qwen", 1);
  setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:10", 1);
  uv_loop_init(&loop);
  rc = orch__llm_new_json(&l, NULL, &loop, err, sizeof err);
  env_restore();
  ASSERT_EQ(rc, 0);
  d = orch__llm_describe(l);
  ASSERT_STR_EQ(json_string_value(json_object_get(json_object_get(d, "fast"),
                                                  "model")),
                "qwen");
  ASSERT_STR_EQ(json_string_value(json_object_get(
                    json_object_get(d, "strong"), "provider")),
                "anthropic");
  json_decref(d);
  orch__llm_free(l);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  /* Anthropic's key alone: every tier is Anthropic's */
  env_save();
  setenv("ANTHROPIC_API_KEY", KEY, 1);
  uv_loop_init(&loop);
  rc = orch__llm_new_json(&l, NULL, &loop, err, sizeof err);
  env_restore();
  ASSERT_EQ(rc, 0);
  d = orch__llm_describe(l);
  for (int i = 0; i < 3; i++) {
    json_t *t = json_object_get(d, tiers[i]);
    ASSERT_STR_EQ(json_string_value(json_object_get(t, "provider")),
                  "anthropic");
    ASSERT(json_is_true(json_object_get(t, "api_key")));
  }
  json_decref(d);
  orch__llm_free(l);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
  /* one OpenAI key alone: strong is OpenAI's too; nothing at all: strong
   * is Anthropic's, as before */
  for (int only_key = 1; only_key >= 0; only_key--) {
    env_save();
    if (only_key) setenv("OPENAI_API_KEY", KEY, 1);
    uv_loop_init(&loop);
    rc = orch__llm_new_json(&l, NULL, &loop, err, sizeof err);
    env_restore();
    ASSERT_EQ(rc, 0);
    d = orch__llm_describe(l);
    json_t *st = json_object_get(d, "strong");
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "provider")),
                  only_key ? "openai" : "anthropic");
    ASSERT_STR_EQ(json_string_value(json_object_get(st, "base_url")),
                  only_key ? "https://api.openai.com/v1"
                           : "https://api.anthropic.com");
    ASSERT(json_is_true(json_object_get(st, "api_key")) == only_key);
    json_decref(d);
    orch__llm_free(l);
    uv_run(&loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&loop), 0);
  }
}

TEST(llm_1000_concurrent_calls_pair_answers_with_callers) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, "{\"tiers\":{\"t\":{\"base_url\":"
                          "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                          "\"latency=50\"}}}"),
            0);
  enum { N = 1000 };
  orch__llm_call **calls = calloc(N, sizeof *calls);
  char prompt[64];
  for (int i = 0; i < N; i++) {
    snprintf(prompt, sizeof prompt, "step-%d", i);
    orch__llm_req rq = {.tier = "t", .prompt = prompt, .stream = i % 2,
                        .done = call_done, .ud = &c};
    ASSERT_EQ(orch__llm_call_start(c.l, &rq, &calls[i]), 0);
  }
  lrun(&c, N, 60000);
  ASSERT_EQ(c.done, N);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(calls[i]);
    char want[64];
    snprintf(want, sizeof want, "echo: step-%d", i);
    if (r && r->code == ORCH_OK && strcmp(r->text, want) == 0) ok++;
    else if (r && ok == i) fprintf(stderr, "  call %d: %s\n", i, r->error);
    orch__llm_call_free(calls[i]);
  }
  free(calls);
  ASSERT_EQ(ok, N);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* ---- the llm step kind, end to end through orch_run ---------------- */

static orch_runtime *rt_with_mini(mini_llm *m, const char *extra) {
  char path[] = "/tmp/orch-llm-conf-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  FILE *f = fdopen(fd, "w");
  int port = mini_llm_port(m);
  fprintf(f,
          "return {\n"
          "  workers = 2,\n"
          "  llm = { max_attempts = 2, backoff_base_ms = 5, "
          "cooldown = { failures = 0 } },\n"
          "  tiers = {\n"
          "    [\"local\"] = { base_url = 'http://127.0.0.1:%d/v1', model = 'ok',"
          " price_in = 1, price_out = 2, api_key = '" KEY "' },\n"
          "    an = { provider = 'anthropic', base_url = "
          "'http://127.0.0.1:%d', model = 'ok', api_key = '" KEY "' },\n"
          "    broken = { base_url = 'http://127.0.0.1:%d/v1', model = "
          "'400', api_key = '" KEY "' },\n"
          "    slow = { base_url = 'http://127.0.0.1:%d/v1', model = "
          "'latency=800' },\n"
          "  },\n%s}\n",
          port, port, port, port, extra ? extra : "");
  fclose(f);
  orch_runtime *rt = NULL;
  char err[512];
  int rc = orch_runtime_new(&rt, path, err, sizeof err);
  unlink(path);
  if (rc) fprintf(stderr, "orch_runtime_new: %s\n", err);
  return rc ? NULL : rt;
}

TEST(llm_kind_runs_a_graph_with_dependency_context) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  orch_runtime *rt = rt_with_mini(m, NULL);
  ASSERT(rt);
  static const char plan[] =
      "{\"steps\":["
      "{\"id\":\"a\",\"kind\":\"llm\",\"prompt\":\"alpha\"},"
      "{\"id\":\"b\",\"kind\":\"llm\",\"prompt\":\"beta\",\"tier\":\"an\","
      "\"stream\":true,\"title\":\"Second\",\"instructions\":\"be brief\","
      "\"deps\":[\"a\"]},"
      "{\"id\":\"c\",\"kind\":\"llm\",\"prompt\":\"gamma\",\"deps\":[\"a\","
      "\"b\"]}]}";
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err),
            0);
  int rc = orch_run(rt, g, err, sizeof err);
  if (rc) fprintf(stderr, "run: %s\n", err);
  ASSERT_EQ(rc, 0);
  long a = orch_graph_find(g, "a"), b = orch_graph_find(g, "b"),
       c = orch_graph_find(g, "c");
  ASSERT_STR_EQ(orch_step_output(g, (size_t)a), "echo: alpha");
  const char *bo = orch_step_output(g, (size_t)b);
  ASSERT_CONTAINS(bo, "echo: # Second\n\nbeta");
  ASSERT_CONTAINS(bo, "### a\necho: alpha");
  const char *co = orch_step_output(g, (size_t)c);
  ASSERT_CONTAINS(co, "### a\necho: alpha");
  ASSERT_CONTAINS(co, "### b\necho: # Second");
  const orch__llm_result *ra = orch__llm_step_result(&g->steps[a]);
  ASSERT(ra);
  ASSERT_EQ(ra->tokens_in, 11);
  ASSERT_STR_EQ(ra->tier, "local");
  const orch__llm_result *rb = orch__llm_step_result(&g->steps[b]);
  ASSERT_STR_EQ(rb->provider, "anthropic");
  orch__llm_totals t;
  orch__llm_graph_totals(g, &t);
  ASSERT_EQ(t.calls, 3);
  ASSERT_EQ(t.tokens_in, 33);
  ASSERT_EQ(t.tokens_out, 21);
  ASSERT(t.cost > 0);
  ASSERT_EQ(orch_step_attempts(g, (size_t)a), 1);
  orch_graph_free(g);
  orch_runtime_free(rt);
  mini_llm_stop(m);
}

/* A dependency's output or error that is not UTF-8 reaches a GAP task's
 * and the synthesis's prompt repaired (U+FFFD), as in a plain step's,
 * not as "(no result)". */
TEST(llm_kind_gap_prompts_keep_a_dependency_output_that_is_not_utf8) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  orch_runtime *rt = rt_with_mini(m, NULL);
  ASSERT(rt);
  static const char plan[] =
      "{\"steps\":["
      "{\"id\":\"a\",\"kind\":\"shell\",\"run\":\"printf 'bin \\\\377 out'\"},"
      "{\"id\":\"f\",\"kind\":\"shell\",\"run\":\"printf 'bad \\\\376 err' "
      ">&2; exit 3\"},"
      "{\"id\":\"t\",\"kind\":\"llm\",\"role\":\"task\",\"prompt\":\"use a\","
      "\"request\":\"R\",\"deps\":[\"a\"]},"
      "{\"id\":\"s\",\"kind\":\"llm\",\"role\":\"synthesis\",\"prompt\":"
      "\"sum\",\"request\":\"R\",\"always\":true,\"deps\":[\"a\",\"f\"]}]}";
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err),
            0);
  orch_run(rt, g, err, sizeof err); /* f fails */
  long a = orch_graph_find(g, "a"), t = orch_graph_find(g, "t"),
       s = orch_graph_find(g, "s");
  ASSERT_STR_EQ(orch_step_output(g, (size_t)a), "bin \xff out");
  const char *to = orch_step_output(g, (size_t)t);
  ASSERT(to);
  ASSERT_CONTAINS(to, "Task t");
  ASSERT_CONTAINS(to, "bin \xef\xbf\xbd out");
  ASSERT(!strstr(to, "(no result)"));
  const char *so = orch_step_output(g, (size_t)s);
  ASSERT(so);
  ASSERT_CONTAINS(so, "bin \xef\xbf\xbd out");
  ASSERT_CONTAINS(so, "bad \xef\xbf\xbd err");
  ASSERT(!strstr(so, "(no result)"));
  orch_graph_free(g);
  orch_runtime_free(rt);
  mini_llm_stop(m);
}

TEST(llm_kind_fails_a_step_with_the_provider_message_and_skips_dependents) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  orch_runtime *rt = rt_with_mini(m, NULL);
  ASSERT(rt);
  static const char plan[] =
      "{\"steps\":["
      "{\"id\":\"a\",\"kind\":\"llm\",\"prompt\":\"x\",\"tier\":\"broken\"},"
      "{\"id\":\"b\",\"kind\":\"llm\",\"prompt\":\"y\",\"deps\":[\"a\"]},"
      "{\"id\":\"c\",\"kind\":\"llm\",\"prompt\":\"z\",\"tier\":\"nope\"},"
      "{\"id\":\"d\",\"kind\":\"llm\",\"prompt\":\"w\"}]}";
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err),
            0);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  size_t a = (size_t)orch_graph_find(g, "a"), b = (size_t)orch_graph_find(g, "b"),
         c = (size_t)orch_graph_find(g, "c"), d = (size_t)orch_graph_find(g, "d");
  ASSERT_EQ(orch_step_status(g, a), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, a), "HTTP 400");
  ASSERT(!strstr(orch_step_error(g, a), "SECRET"));
  ASSERT_EQ(orch_step_status(g, b), ORCH_SKIPPED);
  ASSERT_EQ(orch_step_status(g, c), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, c), "unknown tier 'nope'");
  ASSERT_EQ(orch_step_status(g, d), ORCH_PASSED);
  orch_graph_free(g);
  orch_runtime_free(rt);
  mini_llm_stop(m);
}

static void *cancel_later(void *arg) {
  struct timespec ts = {0, 200 * 1000000L};
  nanosleep(&ts, NULL);
  orch_runtime_cancel(arg);
  return NULL;
}

TEST(llm_kind_cancel_stops_calls_in_flight) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  orch_runtime *rt = rt_with_mini(m, NULL);
  ASSERT(rt);
  static const char plan[] =
      "{\"steps\":["
      "{\"id\":\"a\",\"kind\":\"llm\",\"prompt\":\"x\",\"tier\":\"slow\"},"
      "{\"id\":\"b\",\"kind\":\"llm\",\"prompt\":\"y\",\"tier\":\"slow\"}]}";
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err),
            0);
  pthread_t th;
  pthread_create(&th, NULL, cancel_later, rt);
  int64_t t0 = tnow();
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ECANCELED);
  pthread_join(th, NULL);
  ASSERT((double)(tnow() - t0) / 1e6 < 2000);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "canceled");
  orch_graph_free(g);
  orch_runtime_free(rt);
  mini_llm_stop(m);
}

TEST(llm_kind_rejects_bad_fields_in_a_plan) {
  orch_graph *g = NULL;
  char err[512];
  static const char plan[] =
      "{\"steps\":[{\"id\":\"a\",\"kind\":\"llm\",\"prompt\":\"x\","
      "\"max_tokens\":\"many\"}]}";
  ASSERT(orch_graph_parse(NULL, plan, sizeof plan - 1, "plan", &g, err,
                          sizeof err) != 0);
  ASSERT_CONTAINS(err, "max_tokens");
  orch_graph_free(g);
}

/* ---- the same against the project's mock (runtime/mock_llm.c) ------- */

#define MOCK_TIER(name, prov, path, model, extra)                        \
  "\"" name "\":{\"provider\":\"" prov "\",\"base_url\":"               \
  "\"http://127.0.0.1:@PORT@" path "\",\"model\":\"" model "\"" extra "}"

static const char conf_mock[] =
    "{\"llm\":{\"max_attempts\":2,\"backoff_base_ms\":5,\"backoff_max_ms\":20,"
    "\"idle_timeout_ms\":300,\"cooldown\":{\"failures\":0}},\"tiers\":{"
    MOCK_TIER("oa", "openai", "/v1", "mock-echo", ",\"api_key\":\"" KEY "\"") ","
    MOCK_TIER("an", "anthropic", "", "mock-echo", ",\"api_key\":\"" KEY "\"") ","
    MOCK_TIER("oa_malformed", "openai", "/v1", "mock-echo+fault=malformed", "") ","
    MOCK_TIER("an_malformed", "anthropic", "", "mock-echo+fault=malformed", "") ","
    MOCK_TIER("oa_truncated", "openai", "/v1", "mock-echo+fault=truncated", "") ","
    MOCK_TIER("an_truncated", "anthropic", "", "mock-echo+fault=truncated", "") ","
    MOCK_TIER("stall", "openai", "/v1", "mock-echo+fault=stall=5000", "") ","
    MOCK_TIER("reset", "openai", "/v1", "mock-echo+fault=reset", "") ","
    MOCK_TIER("e500", "openai", "/v1", "mock-echo+fault=500", ",\"fallback\":\"an\"") ","
    MOCK_TIER("e529", "anthropic", "", "mock-echo+fault=529", ",\"fallback\":\"oa\"") ","
    MOCK_TIER("quota", "openai", "/v1", "mock-echo+fault=429-quota", ",\"fallback\":\"an\"") ","
    MOCK_TIER("ra", "openai", "/v1",
              "mock-echo+fault=fail-first=1;status=429;key=ra-test", "") ","
    MOCK_TIER("e401", "openai", "/v1", "mock-echo+fault=401", ",\"api_key\":\"" KEY "\"")
    "}}";

TEST(mock_both_apis_stream_and_not_give_the_same_answer) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  const char *tiers[] = {"oa", "an"};
  for (int t = 0; t < 2; t++)
    for (int stream = 0; stream < 2; stream++) {
      orch__llm_call *call = call1(&c, tiers[t], "say the magic word", stream);
      const orch__llm_result *r = orch__llm_call_result(call);
      ASSERT_EQ(r->code, ORCH_OK);
      ASSERT_STR_EQ(r->text, "say the magic word");
      ASSERT(r->tokens_in > 0 && r->tokens_out > 0);
      ASSERT(r->ttft_ms >= 0);
      orch__llm_call_free(call);
    }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_malformed_and_truncated_answers_name_the_byte_and_retry) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  struct { const char *tier; int stream; } cases[] = {
      {"oa_malformed", 0}, {"oa_malformed", 1}, {"an_malformed", 0},
      {"an_malformed", 1}, {"oa_truncated", 0}, {"oa_truncated", 1},
      {"an_truncated", 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    orch__llm_call *call = call1(&c, cases[i].tier, "x y z", cases[i].stream);
    const orch__llm_result *r = orch__llm_call_result(call);
    ASSERT(r->code != ORCH_OK);
    if (!strstr(r->attempts[0].error, "byte"))
      fprintf(stderr, "  %s stream=%d: %s\n", cases[i].tier, cases[i].stream,
              r->attempts[0].error);
    ASSERT_CONTAINS(r->attempts[0].error, "byte");
    ASSERT_STR_EQ(r->attempts[0].action, "retry");
    ASSERT_EQ(r->nattempts, 2);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_stalled_stream_is_cut_at_the_idle_timeout) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "stall", "x", 1);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_ETIMEDOUT);
  ASSERT_CONTAINS(r->error, "idle timeout");
  ASSERT(ms >= 590 && ms < 3000);
  ASSERT_EQ(orch__http_active(orch__llm_http(c.l)), 0);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0); /* and no uv handle left open */
}

TEST(mock_reset_500_529_and_quota_fall_back) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  orch__llm_call *call = call1(&c, "reset", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT(r->code != ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  orch__llm_call_free(call);
  const char *tiers[] = {"e500", "e529", "quota"};
  const char *to[] = {"an", "oa", "an"};
  int attempts[] = {3, 3, 2};
  for (int i = 0; i < 3; i++) {
    call = call1(&c, tiers[i], "fallback please", i == 1);
    r = orch__llm_call_result(call);
    ASSERT_EQ(r->code, ORCH_OK);
    ASSERT_STR_EQ(r->tier, to[i]);
    ASSERT_STR_EQ(r->text, "fallback please");
    ASSERT_EQ(r->nattempts, attempts[i]);
    orch__llm_call_free(call);
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_retry_after_is_honoured_timed) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  int64_t t0 = tnow();
  orch__llm_call *call = call1(&c, "ra", "x", 0);
  double ms = (double)(tnow() - t0) / 1e6;
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_EQ(r->nattempts, 2);
  ASSERT_EQ(r->attempts[0].http_status, 429);
  ASSERT(ms >= 1000 && ms < 1600);
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_errors_carry_the_provider_message_never_the_key) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf_mock, true), 0);
  orch__llm_call *call = call1(&c, "e401", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_EQ(r->nattempts, 1);
  ASSERT_CONTAINS(r->error, "HTTP 401");
  ASSERT(!strstr(r->error, "SECRET"));
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_1000_concurrent_calls_pair_answers_with_callers) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, "{\"tiers\":{\"t\":{\"base_url\":"
                           "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                           "\"mock-echo+fault=latency=20\"},\"a\":{"
                           "\"provider\":\"anthropic\",\"base_url\":"
                           "\"http://127.0.0.1:@PORT@\",\"model\":"
                           "\"mock-echo+fault=latency=20\"}}}",
                       true),
            0);
  enum { N = 1000 };
  orch__llm_call **calls = calloc(N, sizeof *calls);
  char prompt[64];
  for (int i = 0; i < N; i++) {
    snprintf(prompt, sizeof prompt, "step-%d", i);
    orch__llm_req rq = {.tier = i % 3 ? "t" : "a", .prompt = prompt,
                        .stream = i % 2, .done = call_done, .ud = &c};
    ASSERT_EQ(orch__llm_call_start(c.l, &rq, &calls[i]), 0);
  }
  lrun(&c, N, 60000);
  ASSERT_EQ(c.done, N);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(calls[i]);
    char want[64];
    snprintf(want, sizeof want, "step-%d", i);
    if (r && r->code == ORCH_OK && strcmp(r->text, want) == 0) ok++;
    else if (r && ok == i) fprintf(stderr, "  call %d: %s\n", i, r->error);
    orch__llm_call_free(calls[i]);
  }
  free(calls);
  ASSERT_EQ(ok, N);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(mock_1000_calls_hit_by_429_at_once_retry_spread_out) {
  lctx c;
  ASSERT_EQ(lctx_start(&c, "{\"llm\":{\"max_attempts\":2,"
                           "\"backoff_base_ms\":1000,\"cooldown\":{"
                           "\"failures\":0}},\"tiers\":{\"t\":{\"base_url\":"
                           "\"http://127.0.0.1:@PORT@/v1\",\"model\":"
                           "\"mock-echo+fault=429;retry-after=none;"
                           "retry-after-ms=none\"}}}",
                       true),
            0);
  enum { N = 1000 };
  orch__llm_call **calls = calloc(N, sizeof *calls);
  for (int i = 0; i < N; i++) {
    orch__llm_req rq = {.tier = "t", .prompt = "x", .done = call_done,
                        .ud = &c};
    ASSERT_EQ(orch__llm_call_start(c.l, &rq, &calls[i]), 0);
  }
  lrun(&c, N, 60000);
  ASSERT_EQ(c.done, N);
  int buckets[10] = {0}, retried = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(calls[i]);
    if (r->nattempts == 2 && r->attempts[0].http_status == 429) {
      retried++;
      /* when the retry went out, from the moment the 429 came back */
      double wait = r->attempts[1].start_ms -
                    (r->attempts[0].start_ms + r->attempts[0].latency_ms);
      int b = (int)(wait / 100);
      if (b >= 0 && b < 10) buckets[b]++;
    }
    orch__llm_call_free(calls[i]);
  }
  free(calls);
  ASSERT_EQ(retried, N);
  for (int b = 0; b < 10; b++) {
    if (buckets[b] < 50 || buckets[b] > 160)
      fprintf(stderr, "  bucket %d: %d\n", b, buckets[b]);
    ASSERT(buckets[b] >= 50 && buckets[b] <= 160); /* ~100 each: no burst */
  }
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* A soak: 800 calls, 100 at a time, each to a tier chosen at random (a
 * fixed seed) among the mock's faults, streamed or not, one in five
 * canceled after 0-40 ms (in flight, in backoff, mid-stream); then 100
 * more and the engine freed under them. Every call ends exactly once, an
 * answer has its text, a failure its message (never the key), and nothing
 * is left behind (ASan, the loop closes). */
typedef struct soak_slot {
  struct soak *s;
  orch__llm_call *call;
  int ended;
  uv_timer_t cancel;
} soak_slot;

typedef struct soak {
  lctx *c;
  int n, started, ended, ok, failed, canceled, bad, closing;
  int in_start, done_inside_start; /* done must never run inside start */
  unsigned seed;
  soak_slot slots[100];
} soak;

static const char *const soak_tiers[] = {
    "ok", "lat", "e500", "e429", "reset", "malformed", "truncated",
    "slow", "quota", "e400", "chain", "an"};

static void soak_start(soak_slot *sl);

static void soak_done(orch__llm_call *call, void *ud) {
  soak_slot *sl = ud;
  soak *s = sl->s;
  const orch__llm_result *r = orch__llm_call_result(call);
  if (s->in_start) s->done_inside_start++;
  if (sl->ended++ || !r) s->bad++;
  else if (r->code == ORCH_OK) {
    if (!r->text) s->bad++;
    s->ok++;
  } else if (r->code == ORCH_ECANCELED) s->canceled++;
  else {
    if (!r->error || !*r->error) s->bad++;
    s->failed++;
  }
  if (r && r->error && strstr(r->error, KEY)) s->bad++;
  uv_timer_stop(&sl->cancel);
  orch__llm_call_free(call);
  sl->call = NULL;
  s->ended++;
  s->c->done++;
  if (s->started < s->n && !s->closing) soak_start(sl);
}

static void soak_cancel(uv_timer_t *t) {
  soak_slot *sl = t->data;
  if (sl->call) orch__llm_call_cancel(sl->call);
}

static void soak_start(soak_slot *sl) {
  soak *s = sl->s;
  s->started++;
  sl->ended = 0;
  int k = (int)(rand_r(&s->seed) % (sizeof soak_tiers / sizeof *soak_tiers));
  orch__llm_req rq = {.tier = soak_tiers[k], .prompt = "soak prompt",
                      .stream = (int)(rand_r(&s->seed) % 2),
                      .done = soak_done, .ud = sl};
  s->in_start = 1;
  if (orch__llm_call_start(s->c->l, &rq, &sl->call)) s->bad++;
  s->in_start = 0;
  if (sl->call && rand_r(&s->seed) % 5 == 0)
    uv_timer_start(&sl->cancel, soak_cancel, rand_r(&s->seed) % 40, 0);
}

TEST(mock_soak_of_faults_streams_cancels_and_a_free_under_load) {
  static const char conf[] =
      "{\"llm\":{\"max_attempts\":3,\"backoff_base_ms\":2,"
      "\"backoff_max_ms\":20,\"idle_timeout_ms\":200,\"timeout_ms\":3000,"
      "\"cooldown\":{\"failures\":50,\"window_ms\":1000,"
      "\"cooldown_ms\":200}},\"tiers\":{"
      MOCK_TIER("ok", "openai", "/v1", "m", ",\"api_key\":\"" KEY "\"") ","
      MOCK_TIER("an", "anthropic", "", "m", ",\"api_key\":\"" KEY "\"") ","
      MOCK_TIER("lat", "openai", "/v1", "m+fault=latency=15", "") ","
      MOCK_TIER("e500", "openai", "/v1", "m+fault=500", "") ","
      MOCK_TIER("e429", "anthropic", "", "m+fault=429;retry-after-ms=10", "") ","
      MOCK_TIER("reset", "openai", "/v1", "m+fault=reset", "") ","
      MOCK_TIER("malformed", "openai", "/v1", "m+fault=malformed", "") ","
      MOCK_TIER("truncated", "anthropic", "", "m+fault=truncated", "") ","
      MOCK_TIER("slow", "openai", "/v1", "m+fault=slow-stream=5", "") ","
      MOCK_TIER("quota", "openai", "/v1", "m+fault=429-quota",
                ",\"fallback\":\"ok\"") ","
      MOCK_TIER("e400", "openai", "/v1", "m+fault=400", "") ","
      MOCK_TIER("chain", "openai", "/v1", "m+fault=500",
                ",\"fallback\":\"lat\"") "}}";
  lctx c;
  ASSERT_EQ(lctx_start(&c, conf, true), 0);
  soak *s = calloc(1, sizeof *s);
  ASSERT(s);
  s->c = &c;
  s->n = 800;
  s->seed = 42;
  for (int i = 0; i < 100; i++) {
    s->slots[i].s = s;
    uv_timer_init(&c.loop, &s->slots[i].cancel);
    s->slots[i].cancel.data = &s->slots[i];
  }
  for (int i = 0; i < 100; i++) soak_start(&s->slots[i]);
  lrun(&c, 800, 60000);
  ASSERT_EQ(s->ended, 800);
  ASSERT_EQ(s->bad, 0);
  ASSERT_EQ(s->done_inside_start, 0); /* cooldowns ended calls at start */
  ASSERT(s->ok > 0 && s->failed > 0 && s->canceled > 0);
  /* 100 more, and the engine freed under them: each still ends once */
  s->n += 100;
  for (int i = 0; i < 100; i++) soak_start(&s->slots[i]);
  for (int i = 0; i < 5; i++) uv_run(&c.loop, UV_RUN_NOWAIT);
  s->closing = 1;
  orch__llm_free(c.l);
  c.l = NULL;
  ASSERT_EQ(s->ended, 900);
  ASSERT_EQ(s->bad, 0);
  ASSERT_EQ(s->done_inside_start, 0);
  for (int i = 0; i < 100; i++)
    uv_close((uv_handle_t *)&s->slots[i].cancel, NULL);
  ASSERT_EQ(lctx_deinit(&c), 0);
  free(s);
}

TEST(llm_kind_1000_steps_at_once_each_get_their_own_answer) {
  orch_mock *m = NULL;
  char err[512];
  ASSERT_EQ(orch_mock_start(&m, "127.0.0.1", 0, err, sizeof err), 0);
  char path[] = "/tmp/orch-llm-conf-XXXXXX";
  int fd = mkstemp(path);
  ASSERT(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fprintf(f,
          "return { workers = 2, tiers = {\n"
          "  [\"local\"] = { base_url = 'http://127.0.0.1:%d/v1', model = "
          "'mock-echo+fault=latency=20' },\n"
          "  strong = { provider = 'anthropic', base_url = "
          "'http://127.0.0.1:%d', model = 'mock-echo+fault=latency=20' } } }\n",
          orch_mock_port(m), orch_mock_port(m));
  fclose(f);
  orch_runtime *rt = NULL;
  int rc = orch_runtime_new(&rt, path, err, sizeof err);
  unlink(path);
  ASSERT_EQ(rc, 0);
  enum { N = 1000 };
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_new(&g), 0);
  for (int i = 0; i < N; i++) {
    char step[200];
    snprintf(step, sizeof step,
             "{\"id\":\"s%d\",\"kind\":\"llm\",\"prompt\":\"step-%d\","
             "\"tier\":\"%s\",\"stream\":%s}",
             i, i, i % 2 ? "local" : "strong", i % 3 ? "false" : "true");
    ASSERT_EQ(orch_graph_add_json(g, step, err, sizeof err), 0);
  }
  int64_t t0 = tnow();
  rc = orch_run(rt, g, err, sizeof err);
  double ms = (double)(tnow() - t0) / 1e6;
  if (rc) fprintf(stderr, "  run: %s\n", err);
  ASSERT_EQ(rc, 0);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    char want[32];
    snprintf(want, sizeof want, "step-%d", i);
    const char *out = orch_step_output(g, (size_t)i);
    if (out && strcmp(out, want) == 0) ok++;
  }
  ASSERT_EQ(ok, N);
  orch__llm_totals t;
  orch__llm_graph_totals(g, &t);
  ASSERT_EQ(t.calls, N);
  ASSERT_EQ(t.attempts, N);
  ASSERT(ms < 10000);
  orch_graph_free(g);
  orch_runtime_free(rt);
  orch_mock_free(m);
}

TEST(llm_kind_records_each_attempt_in_the_store) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  char db[] = "/tmp/orch-llm-db-XXXXXX";
  int fd = mkstemp(db);
  ASSERT(fd >= 0);
  close(fd);
  unlink(db);
  char extra[256];
  snprintf(extra, sizeof extra, "  store = { url = 'sqlite:%s' },\n", db);
  orch_runtime *rt = rt_with_mini(m, extra);
  ASSERT(rt);
  static const char plan[] =
      "{\"steps\":["
      "{\"id\":\"good\",\"kind\":\"llm\",\"prompt\":\"x\",\"tier\":\"local\"},"
      "{\"id\":\"bad\",\"kind\":\"llm\",\"prompt\":\"y\",\"tier\":\"broken\"}]}";
  orch_graph *g = NULL;
  char err[512];
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err),
            0);
  orch_run(rt, g, err, sizeof err);
  char session[64];
  snprintf(session, sizeof session, "%s", orch_runtime_session(rt));
  orch_graph_free(g);
  orch_runtime_free(rt); /* flushes the writer */
  mini_llm_stop(m);
  sqlite3 *s = NULL;
  ASSERT_EQ(sqlite3_open(db, &s), SQLITE_OK);
  sqlite3_stmt *q = NULL;
  ASSERT_EQ(sqlite3_prepare_v2(s,
                               "SELECT step_id, attempt, provider, "
                               "http_status, outcome, tokens_in, error, "
                               "cost "
                               "FROM orch_llm_calls WHERE session_id = ? "
                               "ORDER BY step_id",
                               -1, &q, NULL),
            SQLITE_OK);
  sqlite3_bind_text(q, 1, session, -1, SQLITE_TRANSIENT);
  int rows = 0, good = 0, bad = 0;
  double cost = 0;
  while (sqlite3_step(q) == SQLITE_ROW) {
    rows++;
    const char *step = (const char *)sqlite3_column_text(q, 0);
    const char *outcome = (const char *)sqlite3_column_text(q, 4);
    const char *e = (const char *)sqlite3_column_text(q, 6);
    if (!strcmp(step, "good") && sqlite3_column_int(q, 3) == 200 &&
        !strcmp(outcome, "ok") && sqlite3_column_int(q, 5) == 11)
      good++;
    if (!strcmp(step, "good")) cost = sqlite3_column_double(q, 7);
    if (!strcmp(step, "bad") && sqlite3_column_int(q, 3) == 400 &&
        (!strcmp(outcome, "fail") || !strcmp(outcome, "error")) && e &&
        !strstr(e, "SECRET"))
      bad++;
  }
  sqlite3_finalize(q);
  sqlite3_close(s);
  unlink(db);
  char side[300];
  snprintf(side, sizeof side, "%s-wal", db);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", db);
  unlink(side);
  ASSERT_EQ(rows, 2);
  ASSERT_EQ(good, 1);
  ASSERT_EQ(bad, 1);
  ASSERT(fabs(cost - (11 * 1.0 + 7 * 2.0) / 1e6) < 1e-12); /* its prices */
}

/* ---- whole answers parsed off the loop (llm.parse_threads) ------------ */

typedef struct pcall { /* one call of the parse-thread tests */
  lctx *c;
  orch__llm_call *call;
  int ndone;
} pcall;

static void pcall_done(orch__llm_call *call, void *ud) {
  pcall *p = ud;
  ASSERT(call == p->call || !p->call);
  p->ndone++;
  p->c->done++;
}

#define PARSE_CONF(threads, model)                                           \
  "{\"llm\":{\"parse_threads\":" threads ",\"max_attempts\":2,"              \
  "\"backoff_base_ms\":5,\"cooldown\":{\"failures\":0}},\"tiers\":{"         \
  "\"oa\":{\"provider\":\"openai\",\"base_url\":"                           \
  "\"http://127.0.0.1:@PORT@/v1\",\"model\":\"" model "\",\"price_in\":1,"   \
  "\"price_out\":2},"                                                        \
  "\"an\":{\"provider\":\"anthropic\",\"base_url\":"                        \
  "\"http://127.0.0.1:@PORT@\",\"model\":\"" model "\",\"price_in\":3,"      \
  "\"price_out\":15},"                                                       \
  "\"malformed\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":"   \
  "\"malformed\"},"                                                          \
  "\"bad\":{\"base_url\":\"http://127.0.0.1:@PORT@/v1\",\"model\":\"400\"}}}"

TEST(llm_parse_threads_pair_1000_answers_with_their_calls_and_usage) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, PARSE_CONF("2", "latency=20")), 0);
  enum { N = 1000 };
  pcall *pc = calloc(N, sizeof *pc);
  char prompt[64];
  for (int i = 0; i < N; i++) {
    snprintf(prompt, sizeof prompt, "parse-%d", i);
    pc[i].c = &c;
    /* mostly whole answers (the executor's), some streams (the loop's) */
    orch__llm_req rq = {.tier = i % 3 ? "oa" : "an", .prompt = prompt,
                        .stream = i % 10 == 0, .done = pcall_done,
                        .ud = &pc[i]};
    ASSERT_EQ(orch__llm_call_start(c.l, &rq, &pc[i].call), 0);
  }
  lrun(&c, N, 60000);
  ASSERT_EQ(c.done, N);
  int ok = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(pc[i].call);
    char want[64];
    snprintf(want, sizeof want, "echo: parse-%d", i);
    bool an = i % 3 == 0;
    if (pc[i].ndone == 1 && r && r->code == ORCH_OK &&
        strcmp(r->text, want) == 0 && r->tokens_in == 11 &&
        r->tokens_out == 7 && r->nattempts == 1 &&
        strcmp(r->attempts[0].action, "ok") == 0 &&
        r->attempts[0].http_status == 200 &&
        fabs(r->cost - (an ? 11 * 3.0 + 7 * 15.0 : 11 * 1.0 + 7 * 2.0) / 1e6) <
            1e-12 &&
        r->finish_reason)
      ok++;
    else if (ok == i)
      fprintf(stderr, "  call %d: %s\n", i, r && r->error ? r->error : "?");
    orch__llm_call_free(pc[i].call);
  }
  free(pc);
  ASSERT_EQ(ok, N);
  ASSERT_EQ(orch__llm_parsing(c.l), 0);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_parse_threads_keep_the_error_messages) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, PARSE_CONF("1", "ok")), 0);
  orch__llm_call *call = call1(&c, "malformed", "x", 0);
  const orch__llm_result *r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EIO);
  ASSERT_CONTAINS(r->error, "malformed JSON in response at byte");
  ASSERT_EQ(r->nattempts, 2); /* retryable */
  ASSERT_STR_EQ(r->attempts[0].action, "retry");
  ASSERT_CONTAINS(r->attempts[0].error, "malformed JSON in response at byte");
  orch__llm_call_free(call);
  call = call1(&c, "bad", "x", 0);
  r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_EHTTP);
  ASSERT_CONTAINS(r->error, "HTTP 400");
  orch__llm_call_free(call);
  call = call1(&c, "oa", "hello there", 0);
  r = orch__llm_call_result(call);
  ASSERT_EQ(r->code, ORCH_OK);
  ASSERT_STR_EQ(r->text, "echo: hello there");
  orch__llm_call_free(call);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

/* Starts n calls with long prompts (slow to parse: their answers echo
 * them) and runs the loop until the parse threads hold some answers. */
static pcall *start_big(lctx *c, int n, size_t *held) {
  pcall *pc = calloc((size_t)n, sizeof *pc);
  size_t plen = 32 * 1024;
  char *prompt = malloc(plen + 32);
  for (int i = 0; i < n; i++) {
    int k = snprintf(prompt, 32, "big-%d ", i);
    memset(prompt + k, 'a' + i % 26, plen - (size_t)k);
    prompt[plen] = '\0';
    pc[i].c = c;
    orch__llm_req rq = {.tier = i % 2 ? "oa" : "an", .prompt = prompt,
                        .done = pcall_done, .ud = &pc[i]};
    if (orch__llm_call_start(c->l, &rq, &pc[i].call)) abort();
  }
  free(prompt);
  int64_t end = tnow() + 20 * 1000000000LL;
  *held = 0;
  while (c->done < n && tnow() < end &&
         (*held = orch__llm_parsing(c->l)) == 0)
    uv_run(&c->loop, UV_RUN_ONCE);
  return pc;
}

TEST(llm_parse_threads_cancel_calls_whose_answers_are_being_parsed) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, PARSE_CONF("1", "latency=20")), 0);
  enum { N = 200 };
  size_t held;
  pcall *pc = start_big(&c, N, &held);
  ASSERT(held > 0);
  for (int i = 0; i < N; i++) orch__llm_call_cancel(pc[i].call);
  lrun(&c, N, 20000);
  ASSERT_EQ(c.done, N);
  int canceled = 0, ok = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(pc[i].call);
    ASSERT_EQ(pc[i].ndone, 1);
    ASSERT(r);
    if (r->code == ORCH_ECANCELED) {
      canceled++;
      ASSERT_STR_EQ(r->attempts[r->nattempts - 1].action, "canceled");
    } else if (r->code == ORCH_OK) {
      char want[32];
      snprintf(want, sizeof want, "echo: big-%d ", i);
      ASSERT(strncmp(r->text, want, strlen(want)) == 0);
      ok++;
    }
    orch__llm_call_free(pc[i].call);
  }
  free(pc);
  ASSERT(canceled >= (int)held);
  ASSERT_EQ(canceled + ok, N);
  ASSERT_EQ(orch__llm_parsing(c.l), 0);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_parse_threads_free_the_engine_with_parses_in_flight) {
  lctx c;
  ASSERT_EQ(lctx_init(&c, PARSE_CONF("2", "latency=20")), 0);
  enum { N = 200 };
  size_t held;
  pcall *pc = start_big(&c, N, &held);
  ASSERT(held > 0);
  int before = c.done;
  orch__llm_free(c.l); /* joins the threads; every call's done runs now */
  c.l = NULL;
  ASSERT_EQ(c.done, N);
  int shut = 0;
  for (int i = 0; i < N; i++) {
    const orch__llm_result *r = orch__llm_call_result(pc[i].call);
    ASSERT_EQ(pc[i].ndone, 1);
    ASSERT(r);
    if (r->code == ORCH_ECANCELED) {
      ASSERT_CONTAINS(r->error, "shutting down");
      shut++;
    }
    orch__llm_call_free(pc[i].call);
  }
  free(pc);
  ASSERT_EQ(shut, N - before);
  ASSERT(shut >= (int)held);
  ASSERT_EQ(lctx_deinit(&c), 0);
}

TEST(llm_parse_threads_config_is_checked) {
  char err[256];
  json_t *s = json_loads("{\"llm\":{\"parse_threads\":-1}}", 0, NULL);
  ASSERT_EQ(orch__llm_config_check(s, err, sizeof err), ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "llm.parse_threads");
  json_decref(s);
  s = json_loads("{\"llm\":{\"parse_threads\":1.5}}", 0, NULL);
  ASSERT_EQ(orch__llm_config_check(s, err, sizeof err), ORCH_ECONFIG);
  json_decref(s);
  s = json_loads("{\"llm\":{\"parse_threads\":0}}", 0, NULL);
  ASSERT_EQ(orch__llm_config_check(s, err, sizeof err), ORCH_OK);
  json_decref(s);
}

/* A resumed llm step numbers its attempts on from the first run's, so
 * orch_llm_calls keeps every attempt of the session (the key is session,
 * step, attempt) and orch_run_steps.attempts counts them all. */
TEST(llm_resume_numbers_attempts_after_the_first_run) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  char db[] = "/tmp/orch-llm-db-XXXXXX";
  int fd = mkstemp(db);
  ASSERT(fd >= 0);
  close(fd);
  unlink(db);
  char extra[256], err[512];
  snprintf(extra, sizeof extra, "  store = { url = 'sqlite:%s' },\n", db);
  /* Four 500s: the first run gives up after its attempts (4 with
   * policies/retry.lua, 2 with the config's max_attempts); the resumed
   * run's attempts come after them, passing or not. */
  static const char plan[] =
      "{\"steps\":[{\"id\":\"s\",\"kind\":\"llm\",\"prompt\":\"x\","
      "\"tier\":\"local\",\"model\":\"flaky=4\"}]}";
  orch_runtime *rt = rt_with_mini(m, extra);
  ASSERT(rt);
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err), 0);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  int first = orch_step_attempts(g, 0);
  ASSERT(first >= 2);
  char session[64];
  snprintf(session, sizeof session, "%s", orch_runtime_session(rt));
  orch_graph_free(g);
  orch_runtime_free(rt);
  rt = rt_with_mini(m, extra);
  ASSERT(rt);
  ASSERT_EQ(orch_runtime_resume(rt, session, &g, err, sizeof err), 0);
  orch_run(rt, g, err, sizeof err);
  int total = orch_step_attempts(g, 0);
  ASSERT(total > first);
  orch_graph_free(g);
  orch_runtime_free(rt);
  mini_llm_stop(m);

  sqlite3 *s = NULL;
  ASSERT_EQ(sqlite3_open(db, &s), SQLITE_OK);
  sqlite3_stmt *q = NULL;
  ASSERT_EQ(sqlite3_prepare_v2(s,
                               "SELECT attempt, http_status, tokens_in "
                               "FROM orch_llm_calls WHERE session_id = ? "
                               "ORDER BY attempt",
                               -1, &q, NULL),
            SQLITE_OK);
  sqlite3_bind_text(q, 1, session, -1, SQLITE_TRANSIENT);
  int rows = 0, in_order = 1, ok_tokens = -1;
  while (sqlite3_step(q) == SQLITE_ROW) {
    rows++;
    if (sqlite3_column_int(q, 0) != rows) in_order = 0;
    if (sqlite3_column_int(q, 1) == 200) ok_tokens = sqlite3_column_int(q, 2);
  }
  sqlite3_finalize(q);
  ASSERT_EQ(sqlite3_prepare_v2(s,
                               "SELECT attempts FROM orch_run_steps WHERE "
                               "session_id = ? AND step_id = 's'",
                               -1, &q, NULL),
            SQLITE_OK);
  sqlite3_bind_text(q, 1, session, -1, SQLITE_TRANSIENT);
  int attempts = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int(q, 0) : -1;
  sqlite3_finalize(q);
  sqlite3_close(s);
  unlink(db);
  char side[300];
  snprintf(side, sizeof side, "%s-wal", db);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", db);
  unlink(side);
  ASSERT_EQ(rows, total); /* 1..total, none overwritten */
  ASSERT(in_order);
  ASSERT(ok_tokens != 0); /* a passing attempt kept its usage */
  ASSERT_EQ(attempts, total);
}

/* A resumed session's total_tokens goes on from its earlier runs: the step
 * restored as passed made no call in the resuming process, and its tokens
 * were dropped from the total. */
TEST(llm_resume_keeps_the_session_token_total_of_earlier_runs) {
  mini_llm *m = mini_llm_start();
  ASSERT(m);
  char db[] = "/tmp/orch-llm-db-XXXXXX";
  int fd = mkstemp(db);
  ASSERT(fd >= 0);
  close(fd);
  unlink(db);
  char extra[256], err[512];
  snprintf(extra, sizeof extra, "  store = { url = 'sqlite:%s' },\n", db);
  /* a passes at once; b fails its first run's attempts (500s) and passes
   * when resumed */
  static const char plan[] =
      "{\"steps\":[{\"id\":\"a\",\"kind\":\"llm\",\"prompt\":\"first\","
      "\"tier\":\"local\"},{\"id\":\"b\",\"kind\":\"llm\",\"prompt\":\"x\","
      "\"tier\":\"local\",\"model\":\"flaky=4\"}]}";
  orch_runtime *rt = rt_with_mini(m, extra);
  ASSERT(rt);
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err), 0);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_PASSED);
  char session[64];
  snprintf(session, sizeof session, "%s", orch_runtime_session(rt));
  orch_graph_free(g);
  orch_runtime_free(rt);
  for (int round = 0; round < 3; round++) { /* until b passes */
    rt = rt_with_mini(m, extra);
    ASSERT(rt);
    ASSERT_EQ(orch_runtime_resume(rt, session, &g, err, sizeof err), 0);
    int rc = orch_run(rt, g, err, sizeof err);
    orch_graph_free(g);
    orch_runtime_free(rt);
    if (rc == ORCH_OK) break;
  }
  mini_llm_stop(m);
  sqlite3 *s = NULL;
  ASSERT_EQ(sqlite3_open(db, &s), SQLITE_OK);
  sqlite3_stmt *q = NULL;
  ASSERT_EQ(sqlite3_prepare_v2(
                s,
                "SELECT (SELECT total_tokens FROM jr_execution_sessions WHERE "
                "session_id = ?1), (SELECT sum(tokens_in + tokens_out) FROM "
                "orch_run_steps WHERE session_id = ?1), (SELECT "
                "tokens_in + tokens_out FROM orch_run_steps WHERE session_id "
                "= ?1 AND step_id = 'a'), (SELECT status FROM orch_run_steps "
                "WHERE session_id = ?1 AND step_id = 'b')",
                -1, &q, NULL),
            SQLITE_OK);
  sqlite3_bind_text(q, 1, session, -1, SQLITE_TRANSIENT);
  ASSERT_EQ(sqlite3_step(q), SQLITE_ROW);
  long total = sqlite3_column_int64(q, 0), steps = sqlite3_column_int64(q, 1),
       a_tokens = sqlite3_column_int64(q, 2);
  char bstatus[16];
  snprintf(bstatus, sizeof bstatus, "%s", (const char *)sqlite3_column_text(q, 3));
  sqlite3_finalize(q);
  sqlite3_close(s);
  unlink(db);
  char side[300];
  snprintf(side, sizeof side, "%s-wal", db);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", db);
  unlink(side);
  ASSERT_STR_EQ(bstatus, "passed");
  ASSERT(a_tokens > 0);
  ASSERT_EQ(total, steps); /* a's tokens and b's, not b's alone */
}
