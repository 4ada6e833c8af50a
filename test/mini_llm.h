/* mini_llm.h: a tiny loopback LLM server for the HTTP and LLM tests
 * (test/test_http.c holds it). It speaks OpenAI chat completions at
 * /v1/chat/completions and Anthropic Messages at /v1/messages, stream or
 * not, and answers "echo: <last user message>". A fault comes from the
 * X-Mock-Fault header, else from the model name:
 *   ok | latency=MS | 429 | 429-quota | retry-after=S | retry-after-ms=MS |
 *   500 | 529 | 400 | reset | malformed | truncate | stall | slow=MS |
 *   nousage | flaky=N (the first N requests of that model get a 500) |
 *   flaky-ra=N (the first N get a 429 with Retry-After: 1) |
 *   429-azure (Azure's rate limit: Retry-After: 1, a text linking
 *   .../quotaincrease) | flaky-azure=N | json-stream (a stream request
 *   answered with one application/json body).
 * A stream's line ends and start change with a suffix: +cr (\r only),
 * +crlf, +crlf-split (each \r\n cut between two reads), +bom (U+FEFF
 * first); they combine: "malformed+bom+cr".
 * It also counts requests and keeps the last Authorization / x-api-key. */
#ifndef MINI_LLM_H
#define MINI_LLM_H

typedef struct mini_llm mini_llm;
mini_llm *mini_llm_start(void);
int mini_llm_port(const mini_llm *m);
unsigned long mini_llm_requests(const mini_llm *m);
void mini_llm_stop(mini_llm *m);

/* canned_srv: a raw HTTP/1.1 server on 127.0.0.1 that answers every
 * request with one fixed response (status, content type, body of any size
 * and bytes; Connection: close), one connection at a time, and keeps the
 * last request's Authorization header ("" when it had none). */
typedef struct canned_srv canned_srv;
canned_srv *canned_start(int status, const char *ctype, const char *body,
                         size_t len);
/* The same with the response given whole, as sent: status line, headers
 * (say Connection: close), blank line, body. */
canned_srv *canned_start_raw(const char *resp, size_t len);
int canned_port(const canned_srv *s);
int canned_requests(const canned_srv *s);
void canned_auth(canned_srv *s, char *buf, size_t cap);
void canned_stop(canned_srv *s);

#endif
