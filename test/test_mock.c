/* test_mock.c: the mock LLM server (mock_llm.c) over real HTTP on
 * 127.0.0.1 with libcurl: both APIs, streaming and not, the deterministic
 * replies, every fault, and 200 concurrent requests. */
#include "orch.h"
#include "test.h"

#include <curl/curl.h>
#include <jansson.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
  char *body;
  size_t len;
  char *hdrs;
  size_t hlen;
  long status;
  CURLcode rc;
  double ms;
} resp;

static size_t grow(char **buf, size_t *len, const char *p, size_t n) {
  char *b = realloc(*buf, *len + n + 1);
  if (!b) return 0;
  memcpy(b + *len, p, n);
  *len += n;
  b[*len] = '\0';
  *buf = b;
  return n;
}

static size_t on_body(char *p, size_t s, size_t n, void *ud) {
  resp *r = ud;
  return grow(&r->body, &r->len, p, s * n);
}

static size_t on_hdr(char *p, size_t s, size_t n, void *ud) {
  resp *r = ud;
  return grow(&r->hdrs, &r->hlen, p, s * n);
}

static void resp_free(resp *r) {
  free(r->body);
  free(r->hdrs);
  memset(r, 0, sizeof *r);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* An easy handle for path on the mock; json NULL means GET. Extra headers
 * are "Name: value" strings, NULL-terminated. */
static CURL *easy(int port, const char *path, const char *json,
                  const char *const *extra, resp *r,
                  struct curl_slist **hl) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  CURL *e = curl_easy_init();
  if (!e) return NULL;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_hdr);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
  *hl = curl_slist_append(NULL, "Content-Type: application/json");
  for (size_t i = 0; extra && extra[i]; i++)
    *hl = curl_slist_append(*hl, extra[i]);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, *hl);
  if (json) curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, json);
  return e;
}

static void request(int port, const char *path, const char *json,
                    const char *const *extra, long timeout_ms, resp *r) {
  struct curl_slist *hl = NULL;
  memset(r, 0, sizeof *r);
  CURL *e = easy(port, path, json, extra, r, &hl);
  if (!e) {
    r->rc = CURLE_FAILED_INIT;
    return;
  }
  if (timeout_ms) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  double t0 = now_ms();
  r->rc = curl_easy_perform(e);
  r->ms = now_ms() - t0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_cleanup(e);
  curl_slist_free_all(hl);
  if (!r->body) r->body = calloc(1, 1);
}

/* A request body for either API with one user message. */
static char *body_for(const char *model, const char *user, int stream,
                      int anthropic) {
  json_t *j = json_pack("{s:s, s:[{s:s, s:s}]}", "model", model, "messages",
                        "role", "user", "content", user);
  if (stream) json_object_set_new(j, "stream", json_true());
  if (stream && !anthropic)
    json_object_set_new(j, "stream_options",
                        json_pack("{s:b}", "include_usage", 1));
  if (anthropic) json_object_set_new(j, "max_tokens", json_integer(1024));
  char *s = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  return s;
}

static const char *const AHDR[] = {"x-api-key: test-key",
                                   "anthropic-version: 2023-06-01", NULL};

/* POSTs one message to either API, with an optional X-Mock-Fault. */
static void ask(int port, int anthropic, const char *model, const char *user,
                int stream, const char *fault, long timeout_ms, resp *r) {
  char fh[256];
  const char *hdrs[4] = {NULL};
  size_t n = 0;
  if (anthropic) {
    hdrs[n++] = AHDR[0];
    hdrs[n++] = AHDR[1];
  }
  if (fault) {
    snprintf(fh, sizeof fh, "X-Mock-Fault: %s", fault);
    hdrs[n++] = fh;
  }
  char *b = body_for(model, user, stream, anthropic);
  request(port, anthropic ? "/v1/messages" : "/v1/chat/completions", b,
          hdrs, timeout_ms, r);
  free(b);
}

static char *reply_text(const resp *r, int anthropic) {
  json_error_t je;
  json_t *j = json_loads(r->body, 0, &je);
  const char *t =
      anthropic
          ? json_string_value(json_object_get(
                json_array_get(json_object_get(j, "content"), 0), "text"))
          : json_string_value(json_object_get(
                json_object_get(
                    json_array_get(json_object_get(j, "choices"), 0),
                    "message"),
                "content"));
  char *s = t ? strdup(t) : NULL;
  json_decref(j);
  return s;
}

/* Joins the text deltas of an SSE body; counts events, bad data lines,
 * and whether the stream ended properly ([DONE] / message_stop). */
typedef struct {
  char text[8192];
  int events, bad, done, usage;
  char names[1024];
} sse;

static void parse_sse(const char *body, sse *s) {
  memset(s, 0, sizeof *s);
  const char *line = body;
  while (line && *line) {
    const char *nl = strchr(line, '\n');
    size_t n = nl ? (size_t)(nl - line) : strlen(line);
    if (n > 7 && strncmp(line, "event: ", 7) == 0) {
      strncat(s->names, line + 7, n - 7 < 40 ? n - 7 : 40);
      strcat(s->names, " ");
    } else if (n > 6 && strncmp(line, "data: ", 6) == 0) {
      s->events++;
      if (n == 12 && strncmp(line + 6, "[DONE]", 6) == 0) {
        s->done = 1;
      } else {
        json_error_t je;
        json_t *j = json_loadb(line + 6, n - 6, 0, &je);
        if (!j) s->bad++;
        const char *t = json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                            "delta"),
            "content"));
        if (!t)
          t = json_string_value(
              json_object_get(json_object_get(j, "delta"), "text"));
        if (t) strncat(s->text, t, sizeof s->text - strlen(s->text) - 1);
        if (json_object_get(j, "usage")) s->usage = 1;
        const char *ty = json_string_value(json_object_get(j, "type"));
        if (ty && strcmp(ty, "message_stop") == 0) s->done = 1;
        json_decref(j);
      }
    }
    line = nl ? nl + 1 : NULL;
  }
}

static orch_mock *start(void) {
  orch_mock *m = NULL;
  char err[256] = "";
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (orch_mock_start(&m, "127.0.0.1", 0, err, sizeof err) != ORCH_OK) {
    fprintf(stderr, "  mock: %s\n", err);
    return NULL;
  }
  return m;
}

static int has_header(const resp *r, const char *line) {
  return r->hdrs && strcasestr(r->hdrs, line) != NULL;
}

/* ---- basics ------------------------------------------------------------ */

TEST(mock_starts_on_a_free_port_and_answers_health_and_models) {
  orch_mock *m = start();
  ASSERT(m);
  int port = orch_mock_port(m);
  ASSERT(port > 0 && port < 65536);
  resp r;
  request(port, "/health", NULL, NULL, 0, &r);
  ASSERT_EQ(r.status, 200);
  ASSERT_STR_EQ(r.body, "ok");
  resp_free(&r);
  request(port, "/v1/models", NULL, NULL, 0, &r);
  ASSERT_EQ(r.status, 200);
  ASSERT_CONTAINS(r.body, "\"mock-echo\"");
  resp_free(&r);
  request(port, "/nope", NULL, NULL, 0, &r);
  ASSERT_EQ(r.status, 404);
  resp_free(&r);
  ASSERT_EQ(orch_mock_requests(m), 3);
  orch_mock_free(m);
  orch_mock_free(NULL);
}

TEST(mock_refuses_a_host_that_is_not_an_address) {
  orch_mock *m = NULL;
  char err[256] = "";
  ASSERT_EQ(orch_mock_start(&m, "example.invalid", 0, err, sizeof err),
            ORCH_EINVAL);
  ASSERT(m == NULL);
  ASSERT_CONTAINS(err, "not an IP address");
  ASSERT_EQ(orch_mock_start(&m, NULL, 70000, err, sizeof err), ORCH_EINVAL);
}

TEST(mock_reports_a_port_in_use) {
  orch_mock *a = start(), *b = NULL;
  ASSERT(a);
  char err[256] = "";
  ASSERT_EQ(orch_mock_start(&b, "127.0.0.1", orch_mock_port(a), err,
                            sizeof err),
            ORCH_EIO);
  ASSERT_CONTAINS(err, "cannot listen");
  orch_mock_free(a);
}

TEST(mock_openai_answers_a_chat_completion) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "Hello there, mock", 0, NULL, 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  ASSERT_EQ(r.status, 200);
  json_t *j = json_loads(r.body, 0, NULL);
  ASSERT(j);
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "object")),
                "chat.completion");
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "model")), "gpt-x");
  json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
  ASSERT_STR_EQ(json_string_value(json_object_get(c0, "finish_reason")),
                "stop");
  ASSERT_STR_EQ(json_string_value(json_object_get(
                    json_object_get(c0, "message"), "content")),
                "Result for: Hello there, mock");
  json_t *u = json_object_get(j, "usage");
  ASSERT_EQ(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
  ASSERT_EQ(json_integer_value(json_object_get(u, "completion_tokens")), 5);
  ASSERT_EQ(json_integer_value(json_object_get(u, "total_tokens")), 8);
  json_decref(j);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_openai_streams_the_same_text_then_usage_and_done) {
  orch_mock *m = start();
  ASSERT(m);
  const char *q = "Please stream a reasonably long answer about graphs";
  resp a, b;
  ask(orch_mock_port(m), 0, "gpt-x", q, 0, NULL, 0, &a);
  ask(orch_mock_port(m), 0, "gpt-x", q, 1, NULL, 0, &b);
  ASSERT_EQ(b.rc, CURLE_OK);
  ASSERT_EQ(b.status, 200);
  ASSERT(has_header(&b, "content-type: text/event-stream"));
  sse s;
  parse_sse(b.body, &s);
  char *full = reply_text(&a, 0);
  ASSERT_STR_EQ(s.text, full);
  free(full);
  ASSERT(s.events >= 5); /* role, >= 2 deltas, finish, usage, [DONE] */
  ASSERT_EQ(s.bad, 0);
  ASSERT(s.done && s.usage);
  ASSERT_CONTAINS(b.body, "\"finish_reason\":\"stop\"");
  resp_free(&a);
  resp_free(&b);
  orch_mock_free(m);
}

TEST(mock_anthropic_answers_a_message) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 1, "claude-x", "Hello there, mock", 0, NULL, 0, &r);
  ASSERT_EQ(r.status, 200);
  json_t *j = json_loads(r.body, 0, NULL);
  ASSERT(j);
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "type")), "message");
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "role")), "assistant");
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "stop_reason")),
                "end_turn");
  json_t *u = json_object_get(j, "usage");
  ASSERT_EQ(json_integer_value(json_object_get(u, "input_tokens")), 3);
  ASSERT_EQ(json_integer_value(json_object_get(u, "output_tokens")), 5);
  json_decref(j);
  char *t = reply_text(&r, 1);
  ASSERT_STR_EQ(t, "Result for: Hello there, mock");
  free(t);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_anthropic_streams_every_event_in_order) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 1, "claude-x", "Stream this answer in many parts now",
      1, NULL, 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  ASSERT_EQ(r.status, 200);
  sse s;
  parse_sse(r.body, &s);
  ASSERT_STR_EQ(s.text, "Result for: Stream this answer in many parts now");
  ASSERT_EQ(s.bad, 0);
  ASSERT(s.done);
  ASSERT_CONTAINS(s.names, "message_start content_block_start ping "
                           "content_block_delta content_block_delta");
  ASSERT_CONTAINS(s.names, "content_block_delta content_block_stop "
                           "message_delta message_stop");
  ASSERT_CONTAINS(r.body, "\"input_tokens\":7");
  ASSERT_CONTAINS(r.body, "\"stop_reason\":\"end_turn\"");
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_anthropic_requires_version_and_max_tokens) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  const char *h[] = {"x-api-key: k", NULL};
  request(orch_mock_port(m), "/v1/messages",
          "{\"model\":\"c\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\","
          "\"content\":\"hi\"}]}",
          h, 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "anthropic-version");
  ASSERT_CONTAINS(r.body, "\"type\":\"error\"");
  resp_free(&r);
  request(orch_mock_port(m), "/v1/messages",
          "{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":"
          "\"hi\"}]}",
          AHDR, 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "max_tokens");
  resp_free(&r);
  request(orch_mock_port(m), "/v1/chat/completions", "{not json", NULL, 0,
          &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "invalid JSON body at byte");
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_echo_model_returns_the_last_user_message) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "mock-echo", "exact  text\nkept", 0, NULL, 0, &r);
  char *t = reply_text(&r, 0);
  ASSERT_STR_EQ(t, "exact  text\nkept");
  free(t);
  resp_free(&r);
  /* content as an array of parts, and several messages: the last user one */
  request(orch_mock_port(m), "/v1/messages",
          "{\"model\":\"mock-echo\",\"max_tokens\":9,\"system\":\"sys\","
          "\"messages\":[{\"role\":\"user\",\"content\":\"first\"},"
          "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\","
          "\"content\":[{\"type\":\"text\",\"text\":\"second\"}]}]}",
          AHDR, 0, &r);
  t = reply_text(&r, 1);
  ASSERT_STR_EQ(t, "second");
  free(t);
  resp_free(&r);
  orch_mock_free(m);
}

/* Whole answers carry any text and model name: quotes, backslashes,
 * control characters, non-ASCII and text whose escaped form is several
 * times its length all come back exactly, in both APIs. */
TEST(mock_whole_answers_carry_any_text_and_model_name_intact) {
  orch_mock *m = start();
  ASSERT(m);
  char text[3000]; /* about 600 words: under the 1,024 max_tokens of ask */
  size_t n = 0;
  const char *piece = "\x01\x02\x03\x1f\"\\\t\n say caf\xc3\xa9 \xe6\x97\xa5 "
                      "\xf0\x9f\x98\x80 ";
  while (n + strlen(piece) < sizeof text) {
    memcpy(text + n, piece, strlen(piece));
    n += strlen(piece);
  }
  text[n] = '\0';
  for (int an = 0; an < 2; an++) {
    resp r;
    ask(orch_mock_port(m), an, "mock-echo", text, 0, NULL, 0, &r);
    ASSERT_EQ(r.status, 200);
    char *t = reply_text(&r, an);
    ASSERT(t);
    ASSERT_STR_EQ(t, text);
    free(t);
    resp_free(&r);
    const char *model = "gpt \"quoted\" \\ caf\xc3\xa9";
    ask(orch_mock_port(m), an, model, "hello", 0, NULL, 0, &r);
    ASSERT_EQ(r.status, 200);
    json_t *j = json_loads(r.body, 0, NULL);
    ASSERT(j);
    ASSERT_STR_EQ(json_string_value(json_object_get(j, "model")), model);
    ASSERT(json_integer_value(json_object_get(
               json_object_get(j, "usage"),
               an ? "output_tokens" : "completion_tokens")) > 0);
    json_decref(j);
    resp_free(&r);
  }
  orch_mock_free(m);
}

TEST(mock_cuts_the_reply_at_max_tokens) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  request(orch_mock_port(m), "/v1/chat/completions",
          "{\"model\":\"mock-echo\",\"max_tokens\":2,\"messages\":[{\"role\":"
          "\"user\",\"content\":\"one two three four\"}]}",
          NULL, 0, &r);
  ASSERT_CONTAINS(r.body, "\"content\":\"one two\"");
  ASSERT_CONTAINS(r.body, "\"finish_reason\":\"length\"");
  resp_free(&r);
  orch_mock_free(m);
}

/* ---- deterministic planning and synthesis ------------------------------ */

static const char *PLAN_PROMPT =
    "Think briefly inside <think>, then write a <plan> of lines\n"
    "Task N: description | Dependencies: none  (or Task 1, Task 2)\n"
    "Request: Compare the energy policies of France and Germany.";

/* Checks the plan lines; returns the number of tasks, or -1. */
static int check_plan(const char *text, int *joins) {
  const char *p = strstr(text, "<plan>"), *e = strstr(text, "</plan>");
  if (!strstr(text, "<think>") || !p || !e) return -1;
  int n = 0;
  *joins = 0;
  for (const char *line = strchr(p, '\n') + 1; line < e;) {
    const char *nl = strchr(line, '\n');
    int id = 0, off = 0;
    if (sscanf(line, "Task %d: %n", &id, &off) != 1 || id != n + 1)
      return -1;
    char *ln = strndup(line, (size_t)(nl - line));
    char *deps = strstr(ln, " | Dependencies: ");
    if (!deps) {
      free(ln);
      return -1;
    }
    deps += 17;
    int ndeps = 0;
    if (strcmp(deps, "none") != 0) {
      for (char *d = deps; (d = strstr(d, "Task ")); d += 5) {
        int dep = atoi(d + 5);
        if (dep < 1 || dep >= id) {
          free(ln);
          return -1;
        }
        ndeps++;
      }
    }
    if (id <= 3 && ndeps) {
      free(ln);
      return -1;
    }
    if (ndeps >= 2) (*joins)++;
    free(ln);
    n++;
    line = nl + 1;
  }
  return n;
}

TEST(mock_answers_a_planning_prompt_with_a_plan) {
  orch_mock *m = start();
  ASSERT(m);
  resp a, b;
  ask(orch_mock_port(m), 0, "gpt-x", PLAN_PROMPT, 0, NULL, 0, &a);
  ask(orch_mock_port(m), 1, "claude-x", PLAN_PROMPT, 1, NULL, 0, &b);
  char *t = reply_text(&a, 0);
  ASSERT(t);
  int joins = 0, n = check_plan(t, &joins);
  ASSERT(n >= 4 && n <= 6);
  ASSERT(joins >= 1);
  ASSERT_CONTAINS(t, "Task 1: Gather background on Compare the energy "
                     "policies of France and Germany | Dependencies: none");
  sse s;
  parse_sse(b.body, &s);
  ASSERT_STR_EQ(s.text, t); /* deterministic across APIs and streaming */
  free(t);
  resp_free(&a);
  resp_free(&b);
  orch_mock_free(m);
}

TEST(mock_plans_differ_by_request_but_always_fan_out_and_join) {
  orch_mock *m = start();
  ASSERT(m);
  const char *reqs[] = {"a", "Plan a trip to Rome", "Audit the code base",
                        "Write a report on batteries",
                        "Summarise three papers"};
  int seen[7] = {0};
  for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
    char prompt[512];
    snprintf(prompt, sizeof prompt, "Write a <plan>.\nRequest: %s", reqs[i]);
    resp r;
    ask(orch_mock_port(m), 0, "gpt-x", prompt, 0, NULL, 0, &r);
    char *t = reply_text(&r, 0);
    int joins = 0, n = check_plan(t ? t : "", &joins);
    ASSERT(n >= 4 && n <= 6 && joins >= 1);
    seen[n]++;
    ASSERT_CONTAINS(t, reqs[i]);
    free(t);
    resp_free(&r);
  }
  orch_mock_free(m);
}

TEST(mock_plan_markers_fail_a_task_and_break_the_first_plan) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  char prompt[512];
  snprintf(prompt, sizeof prompt, "%s [mock-fail-task=2]", PLAN_PROMPT);
  ask(orch_mock_port(m), 0, "gpt-x", prompt, 0, NULL, 0, &r);
  char *t = reply_text(&r, 0);
  ASSERT_CONTAINS(t, "Task 2: List the key facts about Compare the energy "
                     "policies of France and Germany [mock-fault:400] |");
  free(t);
  resp_free(&r);
  /* the task prompt carrying the marker fails with 400 */
  ask(orch_mock_port(m), 0, "gpt-x",
      "Request: X\nYour task: List facts [mock-fault:400]", 0, NULL, 0, &r);
  ASSERT_EQ(r.status, 400);
  resp_free(&r);
  /* a bad plan first, a good one when the re-ask quotes the bad line */
  snprintf(prompt, sizeof prompt, "%s [mock-bad-plan]", PLAN_PROMPT);
  ask(orch_mock_port(m), 0, "gpt-x", prompt, 0, NULL, 0, &r);
  t = reply_text(&r, 0);
  int joins;
  ASSERT_CONTAINS(t, "mock-bad-line");
  ASSERT_EQ(check_plan(t, &joins), -1);
  free(t);
  resp_free(&r);
  snprintf(prompt, sizeof prompt,
           "%s [mock-bad-plan]\nYour last plan was wrong: line 3: \"Task two "
           "- mock-bad-line ...\": expected Task N:",
           PLAN_PROMPT);
  ask(orch_mock_port(m), 0, "gpt-x", prompt, 0, NULL, 0, &r);
  t = reply_text(&r, 0);
  ASSERT(check_plan(t, &joins) >= 4);
  free(t);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_synthesis_names_every_result_and_the_failures) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x",
      "Request: energy\n<observation>{\"Task 1\": \"France runs on nuclear\", "
      "\"Task 2\": {\"status\": \"failed\", \"error\": \"HTTP 400\"}, "
      "\"Task 3\": {\"status\": \"passed\", \"output\": \"Germany phased "
      "out nuclear\"}}</observation>\nWrite the final answer inside "
      "<answer></answer>.",
      0, NULL, 0, &r);
  char *t = reply_text(&r, 0);
  ASSERT(t);
  ASSERT(strncmp(t, "<answer>", 8) == 0);
  ASSERT_CONTAINS(t, "from 3 task results");
  ASSERT_CONTAINS(t, "- Task 1: France runs on nuclear");
  ASSERT_CONTAINS(t, "- Task 2: failed (HTTP 400)");
  ASSERT_CONTAINS(t, "- Task 3: Germany phased out nuclear");
  ASSERT_CONTAINS(t, "Failed tasks: Task 2.");
  ASSERT_CONTAINS(t, "</answer>");
  free(t);
  resp_free(&r);
  /* plain text results */
  ask(orch_mock_port(m), 0, "gpt-x",
      "Results:\nTask 1: alpha\nTask 2: failed: timeout\nGive the final "
      "answer.",
      0, NULL, 0, &r);
  t = reply_text(&r, 0);
  ASSERT_CONTAINS(t, "- Task 1: alpha");
  ASSERT_CONTAINS(t, "- Task 2: failed: timeout");
  ASSERT_CONTAINS(t, "Failed tasks: Task 2.");
  free(t);
  resp_free(&r);
  orch_mock_free(m);
}

/* ---- faults ------------------------------------------------------------ */

TEST(mock_fault_latency_delays_the_answer) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "latency=120", 0, &r);
  ASSERT_EQ(r.status, 200);
  ASSERT(r.ms >= 118);
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 1, "latency=60", 0, &r);
  ASSERT_EQ(r.status, 200);
  ASSERT(r.ms >= 58);
  resp_free(&r);
  orch_mock_free(m);
}

/* An injected 400 or 413 waits out the latency like any other status; only
 * a request that is itself invalid is answered at once. */
TEST(mock_fault_latency_delays_injected_400_and_413_too) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "latency=150,400", 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT(r.ms >= 148);
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 0, "latency=150,413", 0, &r);
  ASSERT_EQ(r.status, 413);
  ASSERT(r.ms >= 148);
  resp_free(&r);
  const char *const hdrs[] = {"X-Mock-Fault: latency=2000", NULL};
  request(orch_mock_port(m), "/v1/chat/completions", "{not json", hdrs, 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT(r.ms < 1000);
  resp_free(&r);
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "latency=2000,bogus", 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "unknown fault");
  ASSERT(r.ms < 1000);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_429_sends_retry_after_headers) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "429", 0, &r);
  ASSERT_EQ(r.status, 429);
  ASSERT(has_header(&r, "Retry-After: 1\r\n"));
  ASSERT(has_header(&r, "retry-after-ms: 1000\r\n"));
  ASSERT_CONTAINS(r.body, "rate_limit_exceeded");
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 1, "429;retry-after-ms=300", 0,
      &r);
  ASSERT_EQ(r.status, 429);
  ASSERT(has_header(&r, "Retry-After: 1\r\n"));
  ASSERT(has_header(&r, "retry-after-ms: 300\r\n"));
  ASSERT_CONTAINS(r.body, "\"rate_limit_error\"");
  resp_free(&r);
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0,
      "429;retry-after=3;retry-after-ms=none", 0, &r);
  ASSERT(has_header(&r, "Retry-After: 3\r\n"));
  ASSERT(!has_header(&r, "retry-after-ms"));
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_429_quota_says_the_quota_is_spent) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "429-quota", 0, &r);
  ASSERT_EQ(r.status, 429);
  ASSERT_CONTAINS(r.body, "\"type\":\"insufficient_quota\"");
  ASSERT_CONTAINS(r.body, "You exceeded your current quota");
  ASSERT(!has_header(&r, "retry-after"));
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_5xx_answer_with_provider_shaped_errors) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "500", 0, &r);
  ASSERT_EQ(r.status, 500);
  ASSERT_CONTAINS(r.body, "server_error");
  resp_free(&r);
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 1, "503", 0, &r);
  ASSERT_EQ(r.status, 503);
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 1, "529", 0, &r);
  ASSERT_EQ(r.status, 529);
  ASSERT_CONTAINS(r.body, "{\"type\":\"error\",\"error\":{\"type\":"
                          "\"overloaded_error\"");
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 0, "408", 0, &r);
  ASSERT_EQ(r.status, 408);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_reset_closes_without_a_response) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "reset", 0, &r);
  ASSERT(r.rc == CURLE_GOT_NOTHING || r.rc == CURLE_RECV_ERROR);
  ASSERT_EQ(r.len, 0);
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 1, "latency=20,reset", 0, &r);
  ASSERT(r.rc == CURLE_GOT_NOTHING || r.rc == CURLE_RECV_ERROR);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_malformed_sends_invalid_json) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "malformed", 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  ASSERT_EQ(r.status, 200);
  json_error_t je;
  json_t *j = json_loads(r.body, 0, &je);
  ASSERT(j == NULL);
  ASSERT(je.position > 0);
  resp_free(&r);
  for (int an = 0; an < 2; an++) {
    ask(orch_mock_port(m), an, "x", "hi", 1, "malformed", 0, &r);
    ASSERT_EQ(r.rc, CURLE_OK);
    sse s;
    parse_sse(r.body, &s);
    ASSERT_EQ(s.bad, 1);
    ASSERT(s.done);
    resp_free(&r);
  }
  orch_mock_free(m);
}

TEST(mock_fault_truncated_stops_mid_way_and_closes) {
  orch_mock *m = start();
  ASSERT(m);
  for (int an = 0; an < 2; an++) {
    resp r;
    ask(orch_mock_port(m), an, "x",
        "a question long enough to make several stream chunks appear", 1,
        "truncated", 3000, &r);
    ASSERT_EQ(r.rc, CURLE_PARTIAL_FILE);
    ASSERT(r.ms < 2000);
    sse s;
    parse_sse(r.body, &s);
    ASSERT(s.events >= 1);
    ASSERT(!s.done);
    resp_free(&r);
    ask(orch_mock_port(m), an, "x", "hi", 0, "truncated", 3000, &r);
    ASSERT_EQ(r.rc, CURLE_PARTIAL_FILE);
    ASSERT(r.len > 0);
    resp_free(&r);
  }
  orch_mock_free(m);
}

TEST(mock_fault_slow_stream_spaces_the_chunks) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "x", "hi", 1, "slow-stream=40", 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  sse s;
  parse_sse(r.body, &s);
  ASSERT(s.done);
  ASSERT(r.ms >= 40.0 * (s.events - 1) - 2);
  resp_free(&r);
  ask(orch_mock_port(m), 1, "x", "hi", 0, "slow-stream=30", 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  ASSERT(r.ms >= 88); /* a JSON body in four parts */
  char *t = reply_text(&r, 1);
  ASSERT_STR_EQ(t, "Result for: hi");
  free(t);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_fault_stall_holds_until_the_client_gives_up) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "x", "hi", 1, "stall", 300, &r);
  ASSERT_EQ(r.rc, CURLE_OPERATION_TIMEDOUT);
  sse s;
  parse_sse(r.body, &s);
  ASSERT_EQ(s.events, 1);
  resp_free(&r);
  /* a bounded stall ends and the stream completes */
  ask(orch_mock_port(m), 1, "x", "hi", 1, "stall=150", 0, &r);
  ASSERT_EQ(r.rc, CURLE_OK);
  ASSERT(r.ms >= 148);
  parse_sse(r.body, &s);
  ASSERT(s.done);
  resp_free(&r);
  double t0 = now_ms();
  orch_mock_free(m);
  ASSERT(now_ms() - t0 < 1000);
}

TEST(mock_fault_fail_first_counts_per_key) {
  orch_mock *m = start();
  ASSERT(m);
  int port = orch_mock_port(m);
  char *b = body_for("x", "hi", 0, 0);
  const char *k1[] = {"X-Mock-Fault: fail-first=2", "X-Mock-Key: k1", NULL};
  const char *k2[] = {"X-Mock-Fault: fail-first=1", "X-Mock-Key: k2", NULL};
  long want1[] = {500, 500, 200, 200};
  for (int i = 0; i < 4; i++) {
    resp r;
    request(port, "/v1/chat/completions", b, k1, 0, &r);
    ASSERT_EQ(r.status, want1[i]);
    resp_free(&r);
    if (i == 0) { /* another key keeps its own count */
      request(port, "/v1/chat/completions", b, k2, 0, &r);
      ASSERT_EQ(r.status, 500);
      resp_free(&r);
      request(port, "/v1/chat/completions", b, k2, 0, &r);
      ASSERT_EQ(r.status, 200);
      resp_free(&r);
    }
  }
  free(b);
  /* status and key as parameters, through the model name */
  resp r;
  for (int i = 0; i < 2; i++) {
    ask(port, 1, "claude+fault=fail-first=1;status=503;key=kk", "hi", 0,
        NULL, 0, &r);
    ASSERT_EQ(r.status, i == 0 ? 503 : 200);
    resp_free(&r);
  }
  orch_mock_free(m);
}

TEST(mock_faults_come_from_the_model_name_and_combine) {
  orch_mock *m = start();
  ASSERT(m);
  int port = orch_mock_port(m);
  resp r;
  ask(port, 0, "mock-fault-429", "hi", 0, NULL, 0, &r);
  ASSERT_EQ(r.status, 429);
  resp_free(&r);
  ask(port, 1, "gpt-x+fault=500", "hi", 0, NULL, 0, &r);
  ASSERT_EQ(r.status, 500);
  resp_free(&r);
  ask(port, 0, "gpt-x", "hi", 0, "latency=50,429", 0, &r);
  ASSERT_EQ(r.status, 429);
  ASSERT(r.ms >= 48);
  resp_free(&r);
  ask(port, 0, "mock-fault-latency=30", "hi", 0, "503", 0, &r);
  ASSERT_EQ(r.status, 503);
  ASSERT(r.ms >= 28);
  resp_free(&r);
  ask(port, 0, "gpt-x", "hi", 0, "latency=5,bogus", 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "unknown fault 'bogus'");
  resp_free(&r);
  ask(port, 0, "gpt-x", "hi", 0, "429;retry-after=soon", 0, &r);
  ASSERT_EQ(r.status, 400);
  ASSERT_CONTAINS(r.body, "bad fault parameter");
  resp_free(&r);
  orch_mock_free(m);
}

/* ---- concurrency ------------------------------------------------------- */

static int run_concurrent(int port, int n, const char *fault, int *ok,
                          double *ms) {
  CURLM *multi = curl_multi_init();
  resp *rs = calloc((size_t)n, sizeof *rs);
  CURL **es = calloc((size_t)n, sizeof *es);
  struct curl_slist **hl = calloc((size_t)n, sizeof *hl);
  char fh[128];
  snprintf(fh, sizeof fh, "X-Mock-Fault: %s", fault);
  const char *hdrs[] = {fh, NULL};
  curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)n);
  double t0 = now_ms();
  for (int i = 0; i < n; i++) {
    char q[64];
    snprintf(q, sizeof q, "request number %d", i);
    char *b = body_for(i % 2 ? "claude-x" : "gpt-x", q, i % 3 == 0, i % 2);
    es[i] = easy(port, i % 2 ? "/v1/messages" : "/v1/chat/completions", b,
                 hdrs, &rs[i], &hl[i]);
    if (i % 2) {
      hl[i] = curl_slist_append(hl[i], AHDR[1]);
      curl_easy_setopt(es[i], CURLOPT_HTTPHEADER, hl[i]);
    }
    free(b);
    curl_multi_add_handle(multi, es[i]);
  }
  int running = 1;
  while (running) {
    curl_multi_perform(multi, &running);
    if (running) curl_multi_poll(multi, NULL, 0, 100, NULL);
  }
  *ms = now_ms() - t0;
  CURLMsg *msg;
  int left;
  *ok = 0;
  while ((msg = curl_multi_info_read(multi, &left))) {
    if (msg->msg != CURLMSG_DONE || msg->data.result != CURLE_OK) continue;
    for (int i = 0; i < n; i++) {
      if (es[i] != msg->easy_handle) continue;
      long st = 0;
      curl_easy_getinfo(es[i], CURLINFO_RESPONSE_CODE, &st);
      char want[64];
      snprintf(want, sizeof want, "Result for: request number %d", i);
      char *t = NULL;
      if (i % 3 == 0) {
        sse s;
        parse_sse(rs[i].body ? rs[i].body : "", &s);
        t = strdup(s.text);
      } else if (rs[i].body) {
        t = reply_text(&rs[i], i % 2);
      }
      if (st == 200 && t && strcmp(t, want) == 0) (*ok)++;
      free(t);
    }
  }
  for (int i = 0; i < n; i++) {
    curl_multi_remove_handle(multi, es[i]);
    curl_easy_cleanup(es[i]);
    curl_slist_free_all(hl[i]);
    resp_free(&rs[i]);
  }
  curl_multi_cleanup(multi);
  free(rs);
  free(es);
  free(hl);
  return 0;
}

TEST(mock_answers_200_concurrent_requests_each_its_own) {
  orch_mock *m = start();
  ASSERT(m);
  int ok = 0;
  double ms = 0;
  run_concurrent(orch_mock_port(m), 200, "latency=200", &ok, &ms);
  ASSERT_EQ(ok, 200);
  /* sleeping requests overlap: far less than 200 x 200 ms */
  ASSERT(ms < 3000);
  ASSERT_EQ(orch_mock_requests(m), 200);
  orch_mock_free(m);
}

TEST(mock_holds_1000_concurrent_keepalive_connections) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < 2200 && rl.rlim_max >= 2200) {
    rl.rlim_cur = 2200;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < 2200) {
    printf("  (skipped: RLIMIT_NOFILE %lu < 2200)\n",
           (unsigned long)rl.rlim_cur);
    return;
  }
  orch_mock *m = start();
  ASSERT(m);
  int ok = 0;
  double ms = 0;
  run_concurrent(orch_mock_port(m), 1000, "latency=300", &ok, &ms);
  ASSERT_EQ(ok, 1000);
  ASSERT(ms < 10000);
  ASSERT_EQ(orch_mock_requests(m), 1000);
  orch_mock_free(m);
}

TEST(mock_free_ends_requests_in_flight) {
  orch_mock *m = start();
  ASSERT(m);
  int port = orch_mock_port(m);
  CURLM *multi = curl_multi_init();
  resp rs[3];
  CURL *es[3];
  struct curl_slist *hl[3];
  const char *faults[] = {"X-Mock-Fault: latency=60000",
                          "X-Mock-Fault: stall",
                          "X-Mock-Fault: slow-stream=60000"};
  memset(rs, 0, sizeof rs);
  for (int i = 0; i < 3; i++) {
    const char *h[] = {faults[i], NULL};
    char *b = body_for("x", "hi", 1, 0);
    es[i] = easy(port, "/v1/chat/completions", b, h, &rs[i], &hl[i]);
    free(b);
    curl_multi_add_handle(multi, es[i]);
  }
  int running = 1;
  double t0 = now_ms();
  while (orch_mock_requests(m) < 3 && now_ms() - t0 < 3000) {
    curl_multi_perform(multi, &running);
    curl_multi_poll(multi, NULL, 0, 20, NULL);
  }
  for (int i = 0; i < 5; i++) { /* let the streams send their first part */
    curl_multi_perform(multi, &running);
    curl_multi_poll(multi, NULL, 0, 20, NULL);
  }
  ASSERT_EQ(orch_mock_requests(m), 3);
  t0 = now_ms();
  orch_mock_free(m);
  ASSERT(now_ms() - t0 < 2000);
  while (running) {
    curl_multi_perform(multi, &running);
    if (running) curl_multi_poll(multi, NULL, 0, 50, NULL);
  }
  CURLMsg *msg;
  int left, failed = 0;
  while ((msg = curl_multi_info_read(multi, &left)))
    if (msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK) failed++;
  ASSERT_EQ(failed, 3);
  for (int i = 0; i < 3; i++) {
    curl_multi_remove_handle(multi, es[i]);
    curl_easy_cleanup(es[i]);
    curl_slist_free_all(hl[i]);
    resp_free(&rs[i]);
  }
  curl_multi_cleanup(multi);
}

TEST(mock_takes_a_one_mebibyte_prompt) {
  orch_mock *m = start();
  ASSERT(m);
  size_t n = 1u << 20;
  char *big = malloc(n + 1);
  ASSERT(big);
  for (size_t i = 0; i < n; i++)
    big[i] = i % 8 == 7 ? ' ' : (char)('a' + i % 7);
  big[n] = '\0';
  resp r;
  ask(orch_mock_port(m), 0, "mock-echo", big, 0, NULL, 0, &r);
  ASSERT_EQ(r.status, 200);
  char *t = reply_text(&r, 0);
  ASSERT(t && strcmp(t, big) == 0);
  ASSERT_CONTAINS(r.body, "\"prompt_tokens\":131072");
  free(t);
  free(big);
  resp_free(&r);
  orch_mock_free(m);
}

TEST(mock_sends_retry_headers_on_other_statuses_when_asked) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "503;retry-after=2", 0, &r);
  ASSERT_EQ(r.status, 503);
  ASSERT(has_header(&r, "Retry-After: 2\r\n"));
  ASSERT(has_header(&r, "retry-after-ms: 2000\r\n"));
  resp_free(&r);
  ask(orch_mock_port(m), 1, "claude-x", "hi", 0, "529", 0, &r);
  ASSERT_EQ(r.status, 529);
  ASSERT(!has_header(&r, "retry-after"));
  resp_free(&r);
  orch_mock_free(m);
}

/* A later status item replaces an earlier one with its retry headers: the
 * header's 503;retry-after=2, then the model name's 500, sends a bare 500. */
TEST(mock_later_status_fault_drops_earlier_retry_headers) {
  orch_mock *m = start();
  ASSERT(m);
  resp r;
  ask(orch_mock_port(m), 0, "m+fault=500", "hi", 0, "503;retry-after=2", 0, &r);
  ASSERT_EQ(r.status, 500);
  ASSERT(!has_header(&r, "retry-after"));
  resp_free(&r);
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "429;retry-after=5,429-quota", 0, &r);
  ASSERT_EQ(r.status, 429);
  ASSERT(!has_header(&r, "retry-after"));
  ASSERT_CONTAINS(r.body, "insufficient_quota");
  resp_free(&r);
  ask(orch_mock_port(m), 0, "gpt-x", "hi", 0, "503;retry-after=2,429", 0, &r);
  ASSERT_EQ(r.status, 429);
  ASSERT(has_header(&r, "Retry-After: 1\r\n"));
  resp_free(&r);
  orch_mock_free(m);
}
