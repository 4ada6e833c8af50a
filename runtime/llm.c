/* llm.c: the model providers. Builds OpenAI-compatible chat completion and
 * Anthropic Messages requests with jansson, reads their answers (whole or
 * as server-sent events) into one result with usage, cost and time to first
 * token, and carries a call through retries with backoff, fallback tiers and
 * per-endpoint cooldown.
 *
 * Uses http.c for the transfers and runs on the loop thread, but for the
 * parse of whole (non-stream) 2xx answers, which a small executor of
 * llm.parse_threads threads does (see "completion executor"); the retry
 * decision is orch__llm_decide(), the C twin of scripts/policies/retry.lua.
 * API keys live only here and are redacted from every message we make. */
#include "orch_int.h"

#include <ctype.h>
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum { PROV_OPENAI = 0, PROV_ANTHROPIC = 1 };
static const char *const prov_names[] = {"openai", "anthropic"};

#define MAX_TIERS 64
#define ERRBODY_MAX (64u << 10)

/* ---- small helpers --------------------------------------------------- */

/* splitmix64: jitter only, not cryptography. */
static _Thread_local uint64_t rng_state;
static double rand_unit(void) {
  if (!rng_state)
    rng_state = (uint64_t)orch__now_ns() ^ (uint64_t)(uintptr_t)&rng_state;
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 9007199254740992.0;
}

static const char *env_nonempty(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* ---- configuration --------------------------------------------------- */

typedef struct llm_ep { /* one endpoint (base URL + model), for cooldown */
  char *key;
  int64_t *fails; /* ring of the last `failures` failure times */
  int nfails, head;
  int64_t cooldown_until_ns;
  size_t cooldowns;
} llm_ep;

typedef struct llm_tier {
  char *name;
  int provider;
  char *base_url, *url, *model, *api_key;
  char *ca_file;  /* PEM bundle for TLS, or NULL: the system's */
  char *fallback; /* tier name or NULL */
  int fallback_idx;
  double price_in, price_out; /* USD per million tokens */
  int max_tokens;             /* 0: llm default */
  int stream;                 /* -1: llm default */
  char *key_env; /* set when the endpoint is a hosted API that wants a key
                    and the tier has none: the variable to set (owned) */
  llm_ep *ep;
} llm_tier;

typedef struct llm_exec llm_exec;
static llm_exec *exec_new(uv_loop_t *loop, int n);

struct orch__llm {
  uv_loop_t *loop;
  orch__http *http;
  llm_tier tiers[MAX_TIERS];
  size_t ntiers;
  llm_ep *eps[MAX_TIERS];
  size_t neps;
  char *default_tier;
  long connect_timeout_ms, timeout_ms, idle_timeout_ms;
  int max_tokens;
  bool stream;
  orch__llm_retry_opts retry;
  int cd_failures;
  long cd_window_ms, cd_cooldown_ms;
  orch__llm_call *calls; /* calls in flight */
  orch__llm_decide_fn decider; /* NULL: orch__llm_decide */
  void *decider_ud;
  /* request bodies by shape (provider, stream, system message), refilled
   * per call: build_body */
  json_t *body_shape[8];
  /* request headers per tier and stream flag, shared (read-only) by the
   * calls that send no X-Mock-Fault: set_headers */
  struct curl_slist *hdrs[MAX_TIERS][2];
  llm_exec *exec; /* parses whole answers off the loop; NULL: on the loop */
};

/* Checks one number field: present -> number within [lo, hi]. */
static int check_num(json_t *o, const char *key, const char *path, double lo,
                     double hi, bool integer, char *err, size_t errlen) {
  json_t *v = json_object_get(o, key);
  if (!v) return ORCH_OK;
  if (!json_is_number(v))
    return orch__err(err, errlen, ORCH_ECONFIG, "%s.%s: expected a number",
                     path, key);
  double d = json_number_value(v);
  if (d < lo || d > hi || (integer && d != floor(d)))
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "%s.%s: expected %s in [%g, %g], got %g", path, key,
                     integer ? "an integer" : "a number", lo, hi, d);
  return ORCH_OK;
}

static int check_keys(json_t *o, const char *path, const char *const *allowed,
                      char *err, size_t errlen) {
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v) {
    bool ok = false;
    for (size_t i = 0; allowed[i]; i++)
      if (strcmp(allowed[i], k) == 0) ok = true;
    if (!ok) {
      char known[256] = "";
      for (size_t i = 0; allowed[i]; i++) {
        if (i) strncat(known, ", ", sizeof known - strlen(known) - 1);
        strncat(known, allowed[i], sizeof known - strlen(known) - 1);
      }
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "%s.%s: unknown key (known: %s)", path, k, known);
    }
  }
  return ORCH_OK;
}

/* A Lua table may arrive as [] when empty. */
static bool is_table(json_t *v) {
  return json_is_object(v) || (json_is_array(v) && json_array_size(v) == 0);
}

static int check_str(json_t *o, const char *key, const char *path, char *err,
                     size_t errlen) {
  json_t *v = json_object_get(o, key);
  if (v && !json_is_string(v))
    return orch__err(err, errlen, ORCH_ECONFIG, "%s.%s: expected a string",
                     path, key);
  return ORCH_OK;
}

/* A tier the engine will have: a built-in one or one of the section's. */
static bool tier_known(json_t *tiers, const char *name) {
  return !strcmp(name, "fast") || !strcmp(name, "local") ||
         !strcmp(name, "strong") || json_object_get(tiers, name);
}

int orch__llm_config_check(json_t *sections, char *err, size_t errlen) {
  static const char *const tier_keys[] = {
      "provider", "base_url", "model",     "api_key",    "api_key_env",
      "price_in", "price_out", "fallback", "max_tokens", "stream", "ca_file",
      NULL};
  static const char *const llm_keys[] = {
      "connect_timeout_ms", "timeout_ms",   "idle_timeout_ms",
      "max_attempts",       "backoff_base_ms", "backoff_max_ms",
      "retry_after_cap_ms", "max_tokens",   "stream",
      "default_tier",       "cooldown",     "max_connections",
      "max_host_connections", "parse_threads", NULL};
  static const char *const cd_keys[] = {"failures", "window_ms", "cooldown_ms",
                                        NULL};
  int rc;
  if (!sections) return ORCH_OK;
  json_t *tiers = json_object_get(sections, "tiers");
  if (tiers) {
    if (!is_table(tiers))
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "tiers: expected a table of tiers");
    const char *name;
    json_t *t;
    size_t n = 0;
    if (json_is_object(tiers)) json_object_foreach(tiers, name, t) {
      char path[300];
      snprintf(path, sizeof path, "tiers.%s", name);
      /* the built-in fast, local and strong take 3 of the engine's slots */
      bool builtin = !strcmp(name, "fast") || !strcmp(name, "local") ||
                     !strcmp(name, "strong");
      if (!builtin && ++n > MAX_TIERS - 3)
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "tiers: more than %d tiers besides fast, local and "
                         "strong", MAX_TIERS - 3);
      if (!json_is_object(t))
        return orch__err(err, errlen, ORCH_ECONFIG, "%s: expected a table",
                         path);
      if ((rc = check_keys(t, path, tier_keys, err, errlen))) return rc;
      static const char *const strs[] = {"provider", "base_url", "model",
                                         "api_key", "api_key_env", "fallback",
                                         "ca_file"};
      for (size_t i = 0; i < ORCH__ARRAY_LEN(strs); i++)
        if ((rc = check_str(t, strs[i], path, err, errlen))) return rc;
      json_t *p = json_object_get(t, "provider");
      if (p && strcmp(json_string_value(p), "openai") != 0 &&
          strcmp(json_string_value(p), "anthropic") != 0)
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "%s.provider: expected \"openai\" or \"anthropic\", "
                         "got \"%s\"",
                         path, json_string_value(p));
      json_t *u = json_object_get(t, "base_url");
      if (u && strncmp(json_string_value(u), "http://", 7) != 0 &&
          strncmp(json_string_value(u), "https://", 8) != 0)
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "%s.base_url: expected an http:// or https:// URL",
                         path);
      if ((rc = check_num(t, "price_in", path, 0, 1e6, false, err, errlen)) ||
          (rc = check_num(t, "price_out", path, 0, 1e6, false, err, errlen)) ||
          (rc = check_num(t, "max_tokens", path, 1, 1e8, true, err, errlen)))
        return rc;
      json_t *s = json_object_get(t, "stream");
      if (s && !json_is_boolean(s))
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "%s.stream: expected a boolean", path);
      json_t *f = json_object_get(t, "fallback");
      if (f) {
        const char *fn = json_string_value(f);
        if (!tier_known(tiers, fn))
          return orch__err(err, errlen, ORCH_ECONFIG,
                           "%s.fallback: no tier named \"%s\"", path, fn);
      }
    }
  }
  json_t *l = json_object_get(sections, "llm");
  if (l) {
    if (!is_table(l))
      return orch__err(err, errlen, ORCH_ECONFIG, "llm: expected a table");
    if (json_is_array(l)) return ORCH_OK;
    if ((rc = check_keys(l, "llm", llm_keys, err, errlen))) return rc;
    static const char *const ms[] = {"connect_timeout_ms", "timeout_ms",
                                     "idle_timeout_ms",    "backoff_base_ms",
                                     "backoff_max_ms",     "retry_after_cap_ms"};
    for (size_t i = 0; i < ORCH__ARRAY_LEN(ms); i++)
      if ((rc = check_num(l, ms[i], "llm", 0, 1e9, false, err, errlen)))
        return rc;
    if ((rc = check_num(l, "max_attempts", "llm", 1, 100, true, err, errlen)) ||
        (rc = check_num(l, "max_tokens", "llm", 1, 1e8, true, err, errlen)) ||
        (rc = check_num(l, "max_connections", "llm", 0, 1e6, true, err,
                        errlen)) ||
        (rc = check_num(l, "max_host_connections", "llm", 0, 1e6, true, err,
                        errlen)) ||
        (rc = check_num(l, "parse_threads", "llm", 0, 16, true, err,
                        errlen)) ||
        (rc = check_str(l, "default_tier", "llm", err, errlen)))
      return rc;
    /* checked now, not at the first llm step, where the engine is built */
    json_t *dt = json_object_get(l, "default_tier");
    if (dt && !tier_known(tiers, json_string_value(dt)))
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "llm.default_tier: no tier named \"%s\"",
                       json_string_value(dt));
    json_t *s = json_object_get(l, "stream");
    if (s && !json_is_boolean(s))
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "llm.stream: expected a boolean");
    json_t *cd = json_object_get(l, "cooldown");
    if (cd) {
      if (!is_table(cd))
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "llm.cooldown: expected a table");
      if (json_is_object(cd) &&
          ((rc = check_keys(cd, "llm.cooldown", cd_keys, err, errlen)) ||
           (rc = check_num(cd, "failures", "llm.cooldown", 0, 1e6, true, err,
                           errlen)) ||
           (rc = check_num(cd, "window_ms", "llm.cooldown", 0, 1e9, false,
                           err, errlen)) ||
           (rc = check_num(cd, "cooldown_ms", "llm.cooldown", 0, 1e9, false,
                           err, errlen))))
        return rc;
    }
  }
  return ORCH_OK;
}

static void tier_deinit(llm_tier *t) {
  free(t->name);
  free(t->base_url);
  free(t->url);
  free(t->model);
  if (t->api_key) {
    memset(t->api_key, 0, strlen(t->api_key));
    free(t->api_key);
  }
  free(t->fallback);
  free(t->ca_file);
  free(t->key_env);
  memset(t, 0, sizeof *t);
}

static llm_tier *tier_find(orch__llm *l, const char *name) {
  for (size_t i = 0; i < l->ntiers; i++)
    if (strcmp(l->tiers[i].name, name) == 0) return &l->tiers[i];
  return NULL;
}

/* Sets one tier, replacing a tier of the same name. */
static int tier_set(orch__llm *l, const char *name, int provider,
                    const char *base_url, const char *model,
                    const char *api_key, const char *fallback, double pin,
                    double pout, int max_tokens, int stream) {
  llm_tier *t = tier_find(l, name);
  if (t) tier_deinit(t);
  else if (l->ntiers == MAX_TIERS) return ORCH_ELIMIT;
  else t = &l->tiers[l->ntiers++];
  t->name = orch__strdup(name);
  t->provider = provider;
  t->base_url = orch__strdup(base_url);
  if (!t->name || !t->base_url) return ORCH_ENOMEM; /* tier_deinit frees */
  /* strip trailing slashes so "{base}/chat/completions" has one */
  size_t n = strlen(t->base_url);
  while (n > 0 && t->base_url[n - 1] == '/') t->base_url[--n] = '\0';
  t->url = provider == PROV_OPENAI
               ? orch__asprintf("%s/chat/completions", t->base_url)
               : orch__asprintf("%s/v1/messages", t->base_url);
  t->model = orch__strdup(model);
  t->api_key = api_key && *api_key ? orch__strdup(api_key) : NULL;
  t->fallback = fallback && *fallback ? orch__strdup(fallback) : NULL;
  t->price_in = pin;
  t->price_out = pout;
  t->max_tokens = max_tokens;
  t->stream = stream;
  t->fallback_idx = -1;
  /* The hosted APIs answer nothing without a key: such a tier is skipped
   * at once, with a message that says what to set, not tried four times */
  t->key_env = NULL;
  if (!t->api_key && strncmp(t->base_url, "https://api.openai.com", 22) == 0)
    t->key_env = orch__strdup("OPENAI_API_KEY");
  if (!t->api_key &&
      strncmp(t->base_url, "https://api.anthropic.com", 25) == 0)
    t->key_env = orch__strdup("ANTHROPIC_API_KEY");
  if (!t->name || !t->base_url || !t->url || !t->model) return ORCH_ENOMEM;
  return ORCH_OK;
}

static double jnum(json_t *o, const char *k, double def) {
  json_t *v = json_object_get(o, k);
  return json_is_number(v) ? json_number_value(v) : def;
}
static const char *jstr(json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}

/* Default tiers: fast -> local -> strong. With only OPENAI_BASE_URL set,
 * all three use it (model OPENAI_MODEL, else the tier's default name);
 * with only OPENAI_API_KEY, fast and strong use api.openai.com; with only
 * Anthropic's variables, all three are Anthropic's. */
/* What the default OpenAI tiers cost at base: OpenAI's list prices at
 * api.openai.com, nothing on this machine (a local vLLM, llama.cpp,
 * Ollama, the mock), unknown (-1) anywhere else (OpenRouter, Azure, a
 * team's gateway: set price_in / price_out on the tier). */
static void base_prices(const char *base, double *pin, double *pout) {
  if (!base || strstr(base, "://api.openai.com")) return; /* list prices */
  const char *h = strstr(base, "://");
  h = h ? h + 3 : base;
  bool loopback = !strncmp(h, "127.", 4) || !strncmp(h, "localhost", 9) ||
                  !strncmp(h, "[::1]", 5);
  *pin = *pout = loopback ? 0 : -1;
}

static int default_tiers(orch__llm *l) {
  const char *obase = env_nonempty("OPENAI_BASE_URL");
  const char *okey = env_nonempty("OPENAI_API_KEY");
  const char *omodel = env_nonempty("OPENAI_MODEL");
  const char *abase = env_nonempty("ANTHROPIC_BASE_URL");
  const char *akey = env_nonempty("ANTHROPIC_API_KEY");
  /* strong speaks Anthropic unless only OpenAI was configured (a base URL
   * or a key): one OpenAI key then serves every tier it can */
  bool anthropic = abase || akey || (!obase && !okey);
  int rc;
  if ((abase || akey) && !obase && !okey) { /* only Anthropic: every tier */
    const char *b = abase ? abase : "https://api.anthropic.com";
    if ((rc = tier_set(l, "fast", PROV_ANTHROPIC, b, "claude-haiku-4-5", akey,
                       "local", 1.0, 5.0, 0, -1)) ||
        (rc = tier_set(l, "local", PROV_ANTHROPIC, b, "claude-haiku-4-5",
                       akey, "strong", 1.0, 5.0, 0, -1)))
      return rc;
    return tier_set(l, "strong", PROV_ANTHROPIC, b, "claude-sonnet-4-5", akey,
                    NULL, 3.0, 15.0, 0, -1);
  }
  double fin = 0.15, fout = 0.60, lin = 0, lout = 0, sin = 2.5, sout = 10.0;
  base_prices(obase, &fin, &fout);
  base_prices(obase, &lin, &lout);
  base_prices(obase, &sin, &sout);
  if ((rc = tier_set(l, "fast", PROV_OPENAI,
                     obase ? obase : "https://api.openai.com/v1",
                     omodel ? omodel : "gpt-4o-mini", okey, "local", fin,
                     fout, 0, -1)))
    return rc;
  if ((rc = tier_set(l, "local", PROV_OPENAI,
                     obase ? obase : "http://127.0.0.1:8000/v1",
                     omodel ? omodel : "local", okey, "strong", lin, lout, 0,
                     -1)))
    return rc;
  if (anthropic)
    rc = tier_set(l, "strong", PROV_ANTHROPIC,
                  abase ? abase : "https://api.anthropic.com",
                  "claude-sonnet-4-5", akey, NULL, 3.0, 15.0, 0, -1);
  else
    rc = tier_set(l, "strong", PROV_OPENAI,
                  obase ? obase : "https://api.openai.com/v1",
                  omodel ? omodel : "gpt-4o", okey, NULL, sin, sout, 0, -1);
  return rc;
}

static llm_ep *ep_get(orch__llm *l, const char *base, const char *model) {
  char *key = orch__asprintf("%s|%s", base, model);
  if (!key) return NULL;
  for (size_t i = 0; i < l->neps; i++)
    if (strcmp(l->eps[i]->key, key) == 0) {
      free(key);
      return l->eps[i];
    }
  llm_ep *e = calloc(1, sizeof *e);
  int n = l->cd_failures > 0 ? l->cd_failures : 1;
  if (!e || !(e->fails = calloc((size_t)n, sizeof *e->fails))) {
    free(e);
    free(key);
    return NULL;
  }
  e->key = key;
  l->eps[l->neps++] = e;
  return e;
}

/* Records a failure; starts the cooldown when `failures` fell within the
 * window. */
static void ep_fail(orch__llm *l, llm_ep *e) {
  if (l->cd_failures <= 0) return;
  int64_t t = orch__now_ns();
  e->fails[e->head] = t;
  e->head = (e->head + 1) % l->cd_failures;
  if (e->nfails < l->cd_failures) e->nfails++;
  if (e->nfails == l->cd_failures) {
    int64_t oldest = e->fails[e->head]; /* the slot to be overwritten next */
    if (t - oldest <= (int64_t)l->cd_window_ms * 1000000) {
      e->cooldown_until_ns = t + (int64_t)l->cd_cooldown_ms * 1000000;
      e->cooldowns++;
      e->nfails = 0;
      e->head = 0;
    }
  }
}

static int64_t ep_cooldown_left_ms(const llm_ep *e) {
  int64_t d = e->cooldown_until_ns - orch__now_ns();
  return d > 0 ? d / 1000000 : 0;
}

int orch__llm_new_json(orch__llm **out, json_t *sections, uv_loop_t *loop,
                       char *err, size_t errlen) {
  int rc;
  *out = NULL;
  if ((rc = orch__llm_config_check(sections, err, errlen))) return rc;
  orch__llm *l = calloc(1, sizeof *l);
  if (!l) return orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
  l->loop = loop;
  json_t *lc = sections ? json_object_get(sections, "llm") : NULL;
  if (!json_is_object(lc)) lc = NULL;
  l->connect_timeout_ms = (long)jnum(lc, "connect_timeout_ms", 10000);
  l->timeout_ms = (long)jnum(lc, "timeout_ms", 600000);
  l->idle_timeout_ms = (long)jnum(lc, "idle_timeout_ms", 60000);
  l->max_tokens = (int)jnum(lc, "max_tokens", 1024);
  l->stream = json_is_true(json_object_get(lc, "stream"));
  /* defaults as in scripts/policies/retry.lua */
  l->retry.max_attempts = (int)jnum(lc, "max_attempts", 4);
  l->retry.base_ms = jnum(lc, "backoff_base_ms", 500);
  l->retry.max_ms = jnum(lc, "backoff_max_ms", 30000);
  l->retry.retry_after_cap_ms = jnum(lc, "retry_after_cap_ms", 60000);
  l->retry.set = (json_object_get(lc, "max_attempts") ? ORCH__LLM_SET_ATTEMPTS : 0u) |
                 (json_object_get(lc, "backoff_base_ms") ? ORCH__LLM_SET_BASE : 0u) |
                 (json_object_get(lc, "backoff_max_ms") ? ORCH__LLM_SET_MAX : 0u) |
                 (json_object_get(lc, "retry_after_cap_ms") ? ORCH__LLM_SET_CAP : 0u);
  json_t *cd = json_object_get(lc, "cooldown");
  l->cd_failures = (int)jnum(cd, "failures", 5);
  l->cd_window_ms = (long)jnum(cd, "window_ms", 10000);
  l->cd_cooldown_ms = (long)jnum(cd, "cooldown_ms", 30000);
  const char *dt = jstr(lc, "default_tier");
  l->default_tier = orch__strdup(dt ? dt : "local");
  if ((rc = default_tiers(l))) {
    orch__err(err, errlen, rc, "llm: cannot set the default tiers");
    goto fail;
  }
  json_t *tiers = sections ? json_object_get(sections, "tiers") : NULL;
  const char *name;
  json_t *t;
  if (json_is_object(tiers)) json_object_foreach(tiers, name, t) {
    const char *p = jstr(t, "provider");
    int prov = p && strcmp(p, "anthropic") == 0 ? PROV_ANTHROPIC : PROV_OPENAI;
    const char *base = jstr(t, "base_url");
    if (!base)
      base = prov == PROV_OPENAI
                 ? (env_nonempty("OPENAI_BASE_URL")
                        ? env_nonempty("OPENAI_BASE_URL")
                        : "https://api.openai.com/v1")
                 : (env_nonempty("ANTHROPIC_BASE_URL")
                        ? env_nonempty("ANTHROPIC_BASE_URL")
                        : "https://api.anthropic.com");
    const char *model = jstr(t, "model");
    if (!model && prov == PROV_OPENAI) model = env_nonempty("OPENAI_MODEL");
    if (!model) model = name;
    /* api_key_env, when given, is the only place the key may come from:
     * the provider's variable would send another service's key to this
     * tier's server */
    const char *key = jstr(t, "api_key"), *kvar = jstr(t, "api_key_env");
    if (!key)
      key = env_nonempty(kvar ? kvar
                         : prov == PROV_OPENAI ? "OPENAI_API_KEY"
                                               : "ANTHROPIC_API_KEY");
    json_t *st = json_object_get(t, "stream");
    const char *caf = jstr(t, "ca_file");
    if ((rc = tier_set(l, name, prov, base, model, key, jstr(t, "fallback"),
                       jnum(t, "price_in", 0), jnum(t, "price_out", 0),
                       (int)jnum(t, "max_tokens", 0),
                       st ? json_is_true(st) : -1))) {
      orch__err(err, errlen, rc, "tiers.%s: cannot set the tier", name);
      goto fail;
    }
    llm_tier *nt = tier_find(l, name);
    bool named = nt->key_env && kvar; /* the variable to set is this one */
    if (named) free(nt->key_env);
    if ((named && !(nt->key_env = orch__strdup(kvar))) ||
        (caf && !(nt->ca_file = orch__strdup(caf)))) {
      rc = orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
      goto fail;
    }
  }
  for (size_t i = 0; i < l->ntiers; i++) {
    llm_tier *ti = &l->tiers[i];
    if (ti->fallback) {
      llm_tier *f = tier_find(l, ti->fallback);
      ti->fallback_idx = f ? (int)(f - l->tiers) : -1;
    }
    if (!(ti->ep = ep_get(l, ti->base_url, ti->model))) {
      rc = orch__err(err, errlen, ORCH_ENOMEM, "out of memory");
      goto fail;
    }
  }
  if (!tier_find(l, l->default_tier)) {
    rc = orch__err(err, errlen, ORCH_ECONFIG,
                   "llm.default_tier: no tier named \"%s\"", l->default_tier);
    goto fail;
  }
  orch__http_opts ho = {
      .max_connections = (long)jnum(lc, "max_connections", 0),
      .max_host_connections = (long)jnum(lc, "max_host_connections", 0),
  };
  if ((rc = orch__http_new(&l->http, loop, &ho, err, errlen))) goto fail;
  /* 0: parse on the loop; a failure to start threads means the same */
  int pt = (int)jnum(lc, "parse_threads", 0);
  if (pt > 0) l->exec = exec_new(loop, pt);
  *out = l;
  return ORCH_OK;
fail:
  orch__llm_free(l);
  return rc;
}

int orch__llm_new(orch__llm **out, const orch__config *cfg, uv_loop_t *loop,
                  char *err, size_t errlen) {
  return orch__llm_new_json(out, cfg ? cfg->sections : NULL, loop, err,
                            errlen);
}

orch__http *orch__llm_http(orch__llm *l) { return l->http; }

bool orch__llm_has_tier(const orch__llm *l, const char *name) {
  for (size_t i = 0; name && i < l->ntiers; i++)
    if (strcmp(l->tiers[i].name, name) == 0) return true;
  return false;
}

static json_t *jms(double v) { return v >= 0 ? json_real(v) : json_null(); }

json_t *orch__llm_describe(const orch__llm *l) {
  json_t *o = json_object();
  for (size_t i = 0; i < l->ntiers; i++) {
    const llm_tier *t = &l->tiers[i];
    json_t *d = json_pack("{s:s,s:s,s:s,s:o,s:o,s:b}", "provider",
                          prov_names[t->provider], "base_url", t->base_url,
                          "model", t->model, "price_in", jms(t->price_in),
                          "price_out", jms(t->price_out), "api_key",
                          t->api_key != NULL); /* price null: unknown */
    if (t->fallback) json_object_set_new(d, "fallback", json_string(t->fallback));
    if (t->ep->cooldown_until_ns > orch__now_ns())
      json_object_set_new(d, "cooldown_ms",
                          json_integer(ep_cooldown_left_ms(t->ep)));
    json_object_set_new(o, t->name, d);
  }
  return o;
}

/* ---- results as JSON -------------------------------------------------- */

static json_t *jtok(long v) { return v >= 0 ? json_integer(v) : json_null(); }
/* s as a JSON string, with U+FFFD for bytes that are not UTF-8 (provider
 * text, a cut message): json_string would give NULL and drop the key */
static json_t *jstr_or_null(const char *s) {
  if (!s) return json_null();
  json_t *j = json_string(s);
  if (!j) {
    char *t = orch__utf8_repair(s, strlen(s));
    j = t ? json_string(t) : NULL;
    free(t);
  }
  return j ? j : json_null();
}

json_t *orch__llm_result_json(const orch__llm_result *r) {
  if (!r) return NULL;
  json_t *o = json_object(), *as = json_array();
  json_object_set_new(o, "tier", jstr_or_null(r->tier));
  json_object_set_new(o, "model", jstr_or_null(r->model));
  json_object_set_new(o, "provider", jstr_or_null(r->provider));
  json_object_set_new(o, "finish_reason", jstr_or_null(r->finish_reason));
  json_object_set_new(o, "tokens_in", jtok(r->tokens_in));
  json_object_set_new(o, "tokens_out", jtok(r->tokens_out));
  json_object_set_new(o, "cost", r->cost >= 0 ? json_real(r->cost) : json_null());
  json_object_set_new(o, "ttft_ms", jms(r->ttft_ms));
  json_object_set_new(o, "latency_ms", jms(r->latency_ms));
  for (size_t i = 0; i < r->nattempts; i++) {
    const orch__llm_attempt *a = &r->attempts[i];
    json_t *j = json_object();
    json_object_set_new(j, "tier", jstr_or_null(a->tier));
    json_object_set_new(j, "model", jstr_or_null(a->model));
    json_object_set_new(j, "provider", jstr_or_null(a->provider));
    json_object_set_new(j, "action", jstr_or_null(a->action));
    json_object_set_new(j, "status", json_integer(a->http_status));
    json_object_set_new(j, "error", jstr_or_null(a->error));
    json_object_set_new(j, "start_ms", jms(a->start_ms));
    json_object_set_new(j, "latency_ms", jms(a->latency_ms));
    json_object_set_new(j, "ttft_ms", jms(a->ttft_ms));
    json_object_set_new(j, "tokens_in", jtok(a->tokens_in));
    json_object_set_new(j, "tokens_out", jtok(a->tokens_out));
    json_object_set_new(j, "cost", a->cost >= 0 ? json_real(a->cost) : json_null());
    json_object_set_new(j, "delay_ms", json_real(a->delay_ms));
    json_array_append_new(as, j);
  }
  json_object_set_new(o, "attempts", as);
  return o;
}

/* ---- redaction -------------------------------------------------------- */

/* The first k[0..kl) in [s, end), or NULL. By memchr and memcmp, whose
 * cost is the bytes they look at: strstr under ASan measures the whole
 * rest of the text at each call, which made a text full of keys quadratic
 * to redact in sanitizer builds. */
static char *find(const char *s, const char *end, const char *k, size_t kl) {
  while (s < end && (size_t)(end - s) >= kl) {
    const char *p = memchr(s, k[0], (size_t)(end - s) - kl + 1);
    if (!p) return NULL;
    if (memcmp(p, k, kl) == 0) return (char *)p;
    s = p + 1;
  }
  return NULL;
}

static void redact_in(const orch__llm *l, orch__buf *b) {
  if (!b->p) return;
  /* every configured key, wherever it appears (the text ends at its first
   * NUL: utf8_in and clean_text read it so) */
  for (size_t i = 0; l && i < l->ntiers; i++) {
    const char *k = l->tiers[i].api_key;
    if (!k || strlen(k) < 4) continue;
    size_t kl = strlen(k);
    const char *end = b->p + strlen(b->p);
    const char *at = find(b->p, end, k, kl);
    if (!at) continue;
    /* one copy, each key replaced as the copy reaches it (a copy of the
     * whole text per key found was quadratic in a text full of keys) */
    static const char rep[] = "[redacted]";
    orch__buf nb = {0};
    const char *from = b->p;
    int rc = ORCH_OK;
    while (at && !rc) {
      rc = orch__buf_add(&nb, from, (size_t)(at - from));
      if (!rc) rc = orch__buf_add(&nb, rep, sizeof rep - 1);
      from = at + kl;
      at = find(from, end, k, kl);
    }
    if (!rc) rc = orch__buf_add(&nb, from, (size_t)(b->p + b->len - from));
    if (rc) {
      orch__buf_deinit(&nb);
      memset(b->p, '*', b->len); /* cannot copy: blank it all */
      return;
    }
    orch__buf_deinit(b);
    *b = nb;
  }
  /* key-shaped tokens a provider echoes back ("sk-...", "sk-ant-..."):
   * at a word start and as long as a key, so "task-priority-level" stays */
  char *end = b->p + strlen(b->p);
  for (char *p = b->p; (p = find(p, end, "sk-", 3));) {
    char *e = p + 3;
    while (*e && *e != ' ' && *e != '"' && *e != '\'' && *e != ',' &&
           *e != '.' && *e != '\n')
      e++;
    bool word_start = p == b->p || !isalnum((unsigned char)p[-1]);
    if (word_start && e - p >= 20) memset(p + 3, '*', (size_t)(e - p - 3));
    p = e;
  }
}

/* b's text as UTF-8: U+FFFD for each bad byte. */
static void utf8_in(orch__buf *b) {
  size_t n = strlen(b->p);
  if (orch__utf8_valid(b->p, n, NULL)) return;
  char *r = orch__utf8_repair(b->p, n);
  if (!r) { /* cannot copy: blank what is not ASCII */
    for (char *p = b->p; *p; p++)
      if ((unsigned char)*p >= 0x80) *p = '?';
    return;
  }
  orch__buf_deinit(b);
  b->p = r;
  b->len = strlen(r);
  b->cap = b->len + 1;
}

void orch__llm_redact(const orch__llm *l, char **s) {
  if (!*s) return;
  orch__buf b = {0};
  if (orch__buf_add(&b, *s, strlen(*s))) return;
  redact_in(l, &b);
  utf8_in(&b);
  free(*s);
  *s = b.p;
}

/* Provider text for a message: the first n bytes of s, redacted, made
 * UTF-8, then cut to at most max bytes between two characters ("..."
 * marks a cut). Redaction comes first: a key cut in two is found by
 * neither rule, and its first part would show. Returns a new string
 * (NULL: out of memory). */
static char *clean_text(const orch__llm *l, const char *s, size_t n,
                        size_t max) {
  orch__buf b = {0};
  if (orch__buf_add(&b, s, n) || orch__buf_add(&b, "", 0)) {
    orch__buf_deinit(&b);
    return NULL;
  }
  redact_in(l, &b);
  utf8_in(&b);
  b.len = strlen(b.p); /* redaction may have changed it */
  if (b.len > max) {
    while (max > 0 && ((unsigned char)b.p[max] & 0xC0) == 0x80) max--;
    char *m = orch__asprintf("%.*s...", (int)max, b.p);
    orch__buf_deinit(&b);
    return m;
  }
  return b.p;
}

/* ---- the retry policy ------------------------------------------------ */

/* Does a 429's body say the quota or budget is spent (not a rate)? Only
 * the string values of "code" and "type" keys count, never the message:
 * rate-limit texts speak of quota too (Azure's links .../quotaincrease,
 * Gemini's says "check quota"). Read as retry.lua's quota_spent reads it,
 * by the same scan without a JSON parser (its gmatch of
 * "key"%s*:%s*"value"), so the twins agree on any body. */
static const char *const quota_words[] = {"insufficient_quota", "billing",
                                          "credit", "budget"};

static bool json_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
         ch == '\f' || ch == '\v';
}

/* One "key": "value" at p (key: letters), or NULL; *end after it. */
static bool key_value_at(const char *p, const char **key, size_t *klen,
                         const char **val, size_t *vlen, const char **end) {
  if (*p != '"') return false;
  const char *k = ++p;
  while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) p++;
  if (p == k || *p != '"') return false;
  *key = k;
  *klen = (size_t)(p - k);
  for (p++; json_space(*p); p++) {}
  if (*p != ':') return false;
  for (p++; json_space(*p); p++) {}
  if (*p != '"') return false;
  *val = ++p;
  while (*p && *p != '"') p++;
  if (!*p) return false;
  *vlen = (size_t)(p - *val);
  *end = p + 1;
  return true;
}

static bool says_quota(const char *body) {
  if (!body) return false;
  const char *p = body;
  while (*p) {
    const char *k, *v, *end;
    size_t kl, vl;
    if (!key_value_at(p, &k, &kl, &v, &vl, &end)) {
      p++;
      continue;
    }
    p = end;
    if (!(kl == 4 && (!memcmp(k, "code", 4) || !memcmp(k, "type", 4))))
      continue;
    for (size_t i = 0; i < ORCH__ARRAY_LEN(quota_words); i++) {
      size_t wl = strlen(quota_words[i]);
      for (size_t j = 0; j + wl <= vl; j++)
        if (!strncasecmp(v + j, quota_words[i], wl)) return true;
    }
  }
  return false;
}

void orch__llm_decide(const orch__llm_retry_opts *o, int attempt, int status,
                      const char *error, long retry_after_ms, const char *body,
                      orch__llm_decision *d) {
  memset(d, 0, sizeof *d);
  /* a Retry-After says when to come back: a rate, whatever the body */
  if (status == 429 && retry_after_ms < 0 && says_quota(body)) {
    d->action = ORCH__LLM_FALLBACK;
    snprintf(d->reason, sizeof d->reason, "quota or budget exhausted (429)");
    return;
  }
  bool retryable = status == 0 || status == 408 || status == 409 ||
                   status == 429 || (status >= 500 && status < 600) ||
                   (status >= 200 && status < 300); /* malformed/truncated */
  if (!retryable) {
    d->action = ORCH__LLM_FAIL;
    snprintf(d->reason, sizeof d->reason, "HTTP %d is not retryable", status);
    return;
  }
  if (attempt >= o->max_attempts) {
    d->action = ORCH__LLM_FALLBACK;
    snprintf(d->reason, sizeof d->reason, "gave up after %d attempt%s",
             attempt, attempt == 1 ? "" : "s");
    return;
  }
  if (retry_after_ms >= 0) {
    if ((double)retry_after_ms > o->retry_after_cap_ms) {
      d->action = ORCH__LLM_FALLBACK;
      snprintf(d->reason, sizeof d->reason,
               "Retry-After %ld ms is above the cap of %.0f ms",
               retry_after_ms, o->retry_after_cap_ms);
      return;
    }
    /* never earlier than asked; a small spread so a crowd told the same
     * instant (0 included) does not come back in one burst: as retry.lua,
     * + [0, 10%] of max(Retry-After, base) */
    double spread = ((double)retry_after_ms > o->base_ms
                         ? (double)retry_after_ms
                         : o->base_ms) / 10;
    d->action = ORCH__LLM_RETRY;
    d->delay_ms = (double)retry_after_ms + rand_unit() * spread;
    snprintf(d->reason, sizeof d->reason, "Retry-After %ld ms",
             retry_after_ms);
    return;
  }
  double cap = o->base_ms * pow(2.0, attempt - 1);
  if (cap > o->max_ms) cap = o->max_ms;
  d->action = ORCH__LLM_RETRY;
  d->delay_ms = rand_unit() * cap; /* full jitter */
  snprintf(d->reason, sizeof d->reason, "backoff (full jitter over %.0f ms)",
           cap);
}

void orch__llm_set_decider(orch__llm *l, orch__llm_decide_fn fn, void *ud) {
  l->decider = fn;
  l->decider_ud = ud;
}

/* ---- calls ------------------------------------------------------------ */

typedef struct sse {
  orch__buf line, data;
  char event[64];
  size_t off;      /* bytes of the stream consumed */
  size_t line_off; /* stream offset of the current line's start */
  size_t data_off; /* stream offset of the event's first data value */
  unsigned bom;    /* bytes of a leading U+FEFF matched; 3: read past */
  bool cr;         /* the last line ended with \r: a \n next is its end */
  bool done;       /* [DONE] or message_stop seen */
  bool started;    /* the first 2xx byte came: `whole` is decided */
  bool whole;      /* not text/event-stream: one JSON answer, in c->raw */
} sse;

struct orch__llm_call {
  orch__llm *l;
  orch__llm_call *prev, *next; /* in l->calls while running */
  char *tier_name, *system, *prompt, *fault;
  char *model; /* the step's model, for its first tier only; or NULL */
  int first_tier;
  int max_tokens, stream_req;
  long timeout_ms;
  void (*done)(orch__llm_call *c, void *ud);
  void *ud;
  orch__llm_result res;
  size_t attempts_cap;
  int tier;
  uint64_t visited;
  int attempt; /* within the tier */
  bool stream, in_http, canceled, finished, finish_pending;
  bool starting; /* inside orch__llm_call_start: done must wait a turn */
  bool in_parse;              /* held by the completion executor */
  orch__llm_call *xnext;      /* in one of the executor's lists */
  int finish_code;
  char *finish_msg;
  char *body_json;
  orch__http_req http;
  bool shared_headers; /* http.headers is one of l->hdrs: not ours */
  uv_timer_t *timer;
  int64_t t0_ns;
  /* the attempt being read */
  sse sse;
  orch__buf text, raw;
  long tin, tout;
  char *finish_reason;
  int64_t t_first_token_ns;
  int perr; /* parse error (ORCH_EIO) with perr_msg */
  char perr_msg[300];
  char *last_error;
  int last_code, last_status;
  char *trail; /* the tiers left so far and why, for the final error */
};

static void send_attempt(orch__llm_call *c);
static void begin_tier(orch__llm_call *c, int tier);
static void finish(orch__llm_call *c, int code, const char *msg);
static void finish_now(orch__llm_call *c, int code, const char *msg);

static void timer_closed(uv_handle_t *h) { free(h); }

/* The model a tier is asked for: the step's on the tier it named (or
 * routing chose), each fallback tier its own (another provider, another
 * price list: the step's model means nothing there). */
static const char *tier_model(const orch__llm_call *c, int tier) {
  return c->model && tier == c->first_tier ? c->model
                                           : c->l->tiers[tier].model;
}

static int ensure_timer(orch__llm_call *c) {
  if (c->timer) return ORCH_OK;
  c->timer = malloc(sizeof *c->timer);
  if (!c->timer) return ORCH_ENOMEM;
  uv_timer_init(c->l->loop, c->timer);
  c->timer->data = c;
  return ORCH_OK;
}

static void on_timer(uv_timer_t *t) {
  orch__llm_call *c = t->data;
  if (c->finish_pending) {
    c->finish_pending = false;
    finish_now(c, c->finish_code, c->finish_msg);
    return;
  }
  send_attempt(c);
}

/* Finishes on the next loop turn (cancel, start failures): done never runs
 * inside the caller's own call. */
static void finish_later(orch__llm_call *c, int code, const char *msg) {
  if (c->finished || c->finish_pending) return;
  free(c->finish_msg);
  c->finish_msg = orch__strdup(msg);
  c->finish_code = code;
  c->finish_pending = true;
  if (ensure_timer(c) == ORCH_OK) {
    uv_timer_start(c->timer, on_timer, 0, 0);
    return;
  }
  /* no timer to wait with (out of memory): at once, rather than never */
  c->finish_pending = false;
  finish_now(c, code, c->finish_msg ? c->finish_msg : msg);
}

static orch__llm_attempt *new_attempt(orch__llm_call *c) {
  orch__llm_result *r = &c->res;
  if (r->nattempts == c->attempts_cap) {
    size_t cap = c->attempts_cap ? c->attempts_cap * 2 : 4;
    orch__llm_attempt *na = realloc(r->attempts, cap * sizeof *na);
    if (!na) return NULL;
    r->attempts = na;
    c->attempts_cap = cap;
  }
  orch__llm_attempt *a = &r->attempts[r->nattempts++];
  memset(a, 0, sizeof *a);
  const llm_tier *t = &c->l->tiers[c->tier];
  a->tier = orch__strdup(t->name);
  a->model = orch__strdup(tier_model(c, c->tier));
  a->provider = prov_names[t->provider];
  a->tokens_in = a->tokens_out = -1;
  a->ttft_ms = -1;
  a->cost = -1;
  return a;
}

/* A request body built from scratch. */
static json_t *body_new(orch__llm_call *c, const llm_tier *t,
                        const char *model, int mt) {
  json_t *o = json_object(), *msgs = json_array();
  json_object_set_new(o, "model", json_string(model));
  if (t->provider == PROV_OPENAI) {
    if (c->system && *c->system)
      json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system",
                                            "content", c->system));
    json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user",
                                          "content", c->prompt));
    json_object_set_new(o, "messages", msgs);
    json_object_set_new(o, "max_tokens", json_integer(mt));
    if (c->stream) {
      json_object_set_new(o, "stream", json_true());
      json_object_set_new(o, "stream_options",
                          json_pack("{s:b}", "include_usage", 1));
    }
  } else {
    json_object_set_new(o, "max_tokens", json_integer(mt));
    if (c->system && *c->system)
      json_object_set_new(o, "system", json_string(c->system));
    json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user",
                                          "content", c->prompt));
    json_object_set_new(o, "messages", msgs);
    if (c->stream) json_object_set_new(o, "stream", json_true());
  }
  return o;
}

static bool set_str(json_t *o, const char *k, const char *v) {
  return json_string_set(json_object_get(o, k), v) == 0;
}

/* The body of the engine's shape for this call, refilled with the call's
 * model, prompt, system message and max_tokens: a request then costs a
 * few string copies instead of building the objects again. Loop thread
 * only; returns a new reference. */
static json_t *body_refill(orch__llm_call *c, const llm_tier *t,
                           const char *model, int mt) {
  bool sys = c->system && *c->system;
  int k = (t->provider == PROV_OPENAI) * 4 + c->stream * 2 + sys;
  json_t *o = c->l->body_shape[k];
  if (!o) {
    o = body_new(c, t, model, mt);
    c->l->body_shape[k] = json_incref(o);
    return o;
  }
  json_t *msgs = json_object_get(o, "messages");
  bool ok = set_str(o, "model", model) &&
            json_integer_set(json_object_get(o, "max_tokens"), mt) == 0;
  if (t->provider == PROV_OPENAI) {
    ok = ok && (!sys || set_str(json_array_get(msgs, 0), "content",
                                c->system)) &&
         set_str(json_array_get(msgs, sys ? 1 : 0), "content", c->prompt);
  } else {
    ok = ok && (!sys || set_str(o, "system", c->system)) &&
         set_str(json_array_get(msgs, 0), "content", c->prompt);
  }
  if (!ok) return body_new(c, t, model, mt); /* text that is not UTF-8 */
  return json_incref(o);
}

static char *build_body(orch__llm_call *c, const llm_tier *t) {
  const char *model = tier_model(c, (int)(t - c->l->tiers));
  int mt = c->max_tokens > 0 ? c->max_tokens
           : t->max_tokens > 0 ? t->max_tokens
                               : c->l->max_tokens;
  json_t *o = body_refill(c, t, model, mt);
  /* through a stack buffer: json_dumps would grow one from 16 bytes */
  char tmp[4096], *s = NULL;
  size_t n = json_dumpb(o, tmp, sizeof tmp, JSON_COMPACT);
  if (n > 0 && (s = malloc(n + 1))) {
    if (n <= sizeof tmp) memcpy(s, tmp, n);
    else if (json_dumpb(o, s, n, JSON_COMPACT) != n) n = 0;
    s[n] = '\0';
    if (n == 0) {
      free(s);
      s = NULL;
    }
  }
  json_decref(o);
  return s;
}

static void attempt_reset(orch__llm_call *c) {
  orch__buf_deinit(&c->sse.line);
  orch__buf_deinit(&c->sse.data);
  memset(&c->sse, 0, sizeof c->sse);
  orch__buf_deinit(&c->text);
  orch__buf_deinit(&c->raw);
  c->tin = c->tout = -1;
  free(c->finish_reason);
  c->finish_reason = NULL;
  c->t_first_token_ns = 0;
  c->perr = 0;
  c->perr_msg[0] = '\0';
}

/* The attempt's parse error, with provider text in it: made whole, then
 * redacted and cut to fit perr_msg (see clean_text). */
static void set_perr(orch__llm_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_perr(orch__llm_call *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *m = orch__vasprintf(fmt, ap);
  va_end(ap);
  char *t = m ? clean_text(c->l, m, strlen(m), sizeof c->perr_msg - 4) : NULL;
  c->perr = code;
  snprintf(c->perr_msg, sizeof c->perr_msg, "%s", t ? t : "out of memory");
  free(t);
  free(m);
}

/* The attempt ran out of memory reading the answer. */
static void perr_oom(orch__llm_call *c) {
  c->perr = ORCH_ENOMEM;
  snprintf(c->perr_msg, sizeof c->perr_msg, "out of memory reading the answer");
}

static void got_text(orch__llm_call *c, const char *s, size_t n) {
  if (!n) return;
  if (!c->t_first_token_ns) c->t_first_token_ns = orch__now_ns();
  if (c->text.len + n > c->http.max_body) { /* a stream's: see on_data */
    c->perr = ORCH_ELIMIT;
    snprintf(c->perr_msg, sizeof c->perr_msg, "answer larger than %zu bytes",
             c->http.max_body);
  } else if (orch__buf_add(&c->text, s, n)) {
    perr_oom(c);
  }
}

static void set_finish_reason(orch__llm_call *c, json_t *v) {
  if (json_is_string(v)) {
    free(c->finish_reason);
    c->finish_reason = orch__strdup(json_string_value(v));
  }
}

/* A usage count: u[k] when it is an integer, else old. One no answer can
 * have (negative, or above TOKENS_MAX) is unknown, -1: counts are summed
 * over attempts, steps and runs. */
#define TOKENS_MAX 1000000000000LL /* a trillion tokens in one answer */
static long tok(json_t *u, const char *k, long old) {
  json_t *v = json_object_get(u, k);
  if (!json_is_integer(v)) return old;
  json_int_t n = json_integer_value(v);
  return n >= 0 && n <= TOKENS_MAX ? (long)n : -1;
}

/* One SSE event's JSON, either provider. */
static void sse_event(orch__llm_call *c, json_t *o) {
  const llm_tier *t = &c->l->tiers[c->tier];
  if (t->provider == PROV_OPENAI) {
    json_t *e = json_object_get(o, "error");
    if (e) {
      const char *m = json_string_value(json_object_get(e, "message"));
      set_perr(c, ORCH_EHTTP, "error event in stream: %s",
               m ? m : "(no message)");
      return;
    }
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    if (ch) {
      json_t *d = json_object_get(json_object_get(ch, "delta"), "content");
      if (json_is_string(d))
        got_text(c, json_string_value(d), json_string_length(d));
      set_finish_reason(c, json_object_get(ch, "finish_reason"));
    }
    json_t *u = json_object_get(o, "usage");
    if (json_is_object(u)) {
      c->tin = tok(u, "prompt_tokens", c->tin);
      c->tout = tok(u, "completion_tokens", c->tout);
    }
    return;
  }
  const char *type = json_string_value(json_object_get(o, "type"));
  if (!type) return;
  if (!strcmp(type, "message_start")) {
    json_t *u = json_object_get(json_object_get(o, "message"), "usage");
    c->tin = tok(u, "input_tokens", c->tin);
    c->tout = tok(u, "output_tokens", c->tout);
  } else if (!strcmp(type, "content_block_delta")) {
    json_t *d = json_object_get(o, "delta");
    json_t *tx = json_object_get(d, "text");
    if (json_is_string(tx))
      got_text(c, json_string_value(tx), json_string_length(tx));
  } else if (!strcmp(type, "message_delta")) {
    json_t *u = json_object_get(o, "usage");
    c->tout = tok(u, "output_tokens", c->tout);
    c->tin = tok(u, "input_tokens", c->tin);
    set_finish_reason(c, json_object_get(json_object_get(o, "delta"),
                                         "stop_reason"));
  } else if (!strcmp(type, "message_stop")) {
    c->sse.done = true;
  } else if (!strcmp(type, "error")) {
    json_t *e = json_object_get(o, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    const char *et = json_string_value(json_object_get(e, "type"));
    set_perr(c, ORCH_EHTTP, "error event in stream: %s%s%s", et ? et : "",
             et && m ? ": " : "", m ? m : "");
  }
}

/* jansson's parse-error message without its quote of the source (" near
 * '...'": up to 20 bytes of the token it stopped in, which may be the start
 * of a key too short to match for redaction, or bytes that are not UTF-8);
 * the byte offset we print says where. */
static const char *json_err_text(const json_error_t *je, char *out,
                                 size_t n) {
  snprintf(out, n, "%s", je->text);
  char *near = strstr(out, " near '");
  if (near) *near = '\0';
  return out;
}

static void sse_dispatch(orch__llm_call *c) {
  sse *s = &c->sse;
  if (!s->data.len) {
    s->event[0] = '\0';
    return;
  }
  if (strcmp(s->data.p, "[DONE]") == 0) {
    s->done = true;
  } else {
    json_error_t je;
    json_t *o = json_loadb(s->data.p, s->data.len, 0, &je);
    if (!o) {
      char why[JSON_ERROR_TEXT_LENGTH];
      set_perr(c, ORCH_EIO, "malformed JSON in stream event at byte %zu: %s",
               s->data_off + (size_t)(je.position > 0 ? je.position : 0),
               json_err_text(&je, why, sizeof why));
    } else {
      sse_event(c, o);
      json_decref(o);
    }
  }
  s->data.len = 0;
  if (s->data.p) s->data.p[0] = '\0';
  s->event[0] = '\0';
}

static void sse_line(orch__llm_call *c, char *p, size_t n) {
  sse *s = &c->sse;
  if (n == 0) {
    sse_dispatch(c);
    return;
  }
  if (p[0] == ':') return; /* comment, keep-alive */
  char *colon = memchr(p, ':', n);
  size_t flen = colon ? (size_t)(colon - p) : n;
  const char *v = colon ? colon + 1 : p + n;
  if (v < p + n && *v == ' ') v++;
  size_t vlen = (size_t)(p + n - v);
  if (flen == 4 && memcmp(p, "data", 4) == 0) {
    if (s->data.len)
      orch__buf_add(&s->data, "\n", 1);
    else s->data_off = s->line_off + (size_t)(v - p);
    if (orch__buf_add(&s->data, v, vlen) || !s->data.p) {
      perr_oom(c);
    }
  } else if (flen == 5 && memcmp(p, "event", 5) == 0) {
    size_t m = vlen < sizeof s->event - 1 ? vlen : sizeof s->event - 1;
    memcpy(s->event, v, m);
    s->event[m] = '\0';
  }
}

static int on_data(orch__http_req *req, const char *p, size_t n) {
  orch__llm_call *c = req->ud;
  if (req->status < 200 || req->status >= 300) {
    if (c->raw.len < ERRBODY_MAX) orch__buf_add(&c->raw, p, n);
    return 0;
  }
  sse *s = &c->sse;
  if (!s->started) {
    /* a server that ignores stream:true answers with a whole body */
    s->started = true;
    s->whole = req->content_type[0] &&
               strncasecmp(req->content_type, "text/event-stream", 17) != 0;
  }
  if (s->whole) {
    if (c->raw.len + n > req->max_body) {
      c->perr = ORCH_ELIMIT;
      snprintf(c->perr_msg, sizeof c->perr_msg,
               "response larger than %zu bytes", req->max_body);
    } else if (orch__buf_add(&c->raw, p, n)) {
      perr_oom(c);
    }
    n = 0; /* to the error check below */
  }
  /* One U+FEFF at the start is no part of the first field (SSE spec);
   * its bytes count in the offsets. Bytes that only began one belong to
   * the first line. */
  static const char bom[] = "\xef\xbb\xbf";
  while (n && s->bom < 3) {
    if (*p == bom[s->bom]) {
      s->bom++;
      s->off++;
      p++;
      n--;
      if (s->bom == 3) s->line_off = s->off;
      continue;
    }
    if (orch__buf_add(&s->line, bom, s->bom)) {
      perr_oom(c);
    }
    s->bom = 3;
  }
  /* A line ends at \r, \n or \r\n, the \n of which may come in the next
   * read (s->cr). What a stream holds (the line being read, the event's
   * data, the answer's text: got_text) stays within max_body, as a whole
   * answer does: a line or an event that never ends is an error, not a
   * buffer that grows until the total timeout. The next \n is looked
   * for once, not again at each \r before it (a read of bare \r took a
   * scan of the rest of the read per line). */
  const char *lf = NULL; /* the next \n in p[0..n), once lf_known */
  bool lf_known = false;
  while (n && !c->perr) {
    if (s->cr) {
      s->cr = false;
      if (*p == '\n') {
        s->off++;
        p++;
        n--;
        s->line_off = s->off;
        continue;
      }
    }
    if (!lf_known || (lf && lf < p)) {
      lf = memchr(p, '\n', n);
      lf_known = true;
    }
    const char *nl = lf;
    const char *cr = memchr(p, '\r', nl ? (size_t)(nl - p) : n);
    if (cr) nl = cr;
    size_t take = nl ? (size_t)(nl - p) : n;
    if (s->line.len + s->data.len + take > req->max_body) {
      c->perr = ORCH_ELIMIT;
      snprintf(c->perr_msg, sizeof c->perr_msg,
               "stream event larger than %zu bytes (at byte %zu)",
               req->max_body, s->off + take);
      break;
    }
    if (orch__buf_add(&s->line, p, take)) {
      perr_oom(c);
      break;
    }
    s->off += take;
    p += take;
    n -= take;
    if (!nl) break;
    s->cr = *p == '\r';
    s->off++; /* the line end */
    p++;
    n--;
    if (!s->line.p && orch__buf_add(&s->line, "", 0)) {
      perr_oom(c);
      break;
    }
    sse_line(c, s->line.p, s->line.len);
    s->line.len = 0;
    s->line_off = s->off;
  }
  if (c->perr) {
    snprintf(req->error, sizeof req->error, "%.250s", c->perr_msg);
    req->result = c->perr;
    return -1;
  }
  return 0;
}

/* Reads a whole (non-stream) answer. */
static void parse_whole(orch__llm_call *c, const char *body, size_t len) {
  const llm_tier *t = &c->l->tiers[c->tier];
  json_error_t je;
  json_t *o = json_loadb(body ? body : "", len, 0, &je);
  if (!o) {
    char why[JSON_ERROR_TEXT_LENGTH];
    set_perr(c, ORCH_EIO, "malformed JSON in response at byte %d (of %zu): %s",
             je.position, len, json_err_text(&je, why, sizeof why));
    return;
  }
  if (t->provider == PROV_OPENAI) {
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    json_t *m = json_object_get(ch, "message");
    if (!json_is_object(m)) {
      c->perr = ORCH_EIO;
      snprintf(c->perr_msg, sizeof c->perr_msg,
               "unexpected response: no choices[0].message (%zu bytes)", len);
      goto done;
    }
    json_t *ct = json_object_get(m, "content");
    if (json_is_string(ct)) got_text(c, json_string_value(ct), json_string_length(ct));
    set_finish_reason(c, json_object_get(ch, "finish_reason"));
    json_t *u = json_object_get(o, "usage");
    c->tin = tok(u, "prompt_tokens", -1);
    c->tout = tok(u, "completion_tokens", -1);
  } else {
    json_t *content = json_object_get(o, "content");
    if (!json_is_array(content)) {
      c->perr = ORCH_EIO;
      snprintf(c->perr_msg, sizeof c->perr_msg,
               "unexpected response: no content array (%zu bytes)", len);
      goto done;
    }
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b) {
      json_t *tx = json_object_get(b, "text");
      const char *ty = json_string_value(json_object_get(b, "type"));
      if (json_is_string(tx) && (!ty || !strcmp(ty, "text")))
        got_text(c, json_string_value(tx), json_string_length(tx));
    }
    set_finish_reason(c, json_object_get(o, "stop_reason"));
    json_t *u = json_object_get(o, "usage");
    c->tin = tok(u, "input_tokens", -1);
    c->tout = tok(u, "output_tokens", -1);
  }
  if (!c->text.p) orch__buf_add(&c->text, "", 0);
done:
  json_decref(o);
}

/* The provider's own message from an error body, or a clean prefix. */
#define PROVIDER_MSG_MAX 1000 /* bytes of a JSON error's message kept */

static char *provider_message(const orch__llm *l, const char *body,
                              size_t len) {
  if (!body || !len) return orch__strdup("(empty body)");
  json_t *o = json_loadb(body, len, 0, NULL);
  char *m = NULL;
  if (o) {
    json_t *e = json_object_get(o, "error");
    const char *s = json_string_value(json_object_get(e, "message"));
    const char *ty = json_string_value(json_object_get(e, "type"));
    if (!s) s = json_string_value(e);
    if (!s) s = json_string_value(json_object_get(o, "message"));
    if (!s) s = json_string_value(json_object_get(o, "detail"));
    if (s) {
      /* a message is for people: its first 1,000 bytes, redacted before
       * the cut, control bytes as spaces */
      char *full = ty ? orch__asprintf("%s: %s", ty, s) : orch__strdup(s);
      if (full) {
        for (char *q = full; *q; q++)
          if ((unsigned char)*q < 0x20) *q = ' ';
        m = clean_text(l, full, strlen(full), PROVIDER_MSG_MAX);
        free(full);
      }
    }
    json_decref(o);
  }
  if (!m) { /* the start, redacted before it is cut (see clean_text) */
    size_t n = len < ERRBODY_MAX ? len : ERRBODY_MAX;
    char *raw = malloc(n + 1);
    if (!raw) return NULL;
    for (size_t i = 0; i < n; i++)
      raw[i] = (unsigned char)body[i] < 0x20 ? ' ' : body[i];
    raw[n] = '\0';
    m = clean_text(l, raw, n, 200);
    free(raw);
  }
  return m;
}

static double ms_between(int64_t a, int64_t b) { return (double)(b - a) / 1e6; }

/* ---- completion executor ---------------------------------------------- */

/* A whole (non-stream) 2xx answer is parsed on one of llm.parse_threads
 * threads instead of the loop thread: on_http_done hands the call over
 * (in_parse; its http request is detached from the engine by then, so
 * c->http.body stays put and nothing on the loop touches it), a thread runs
 * parse_whole, which writes only the call's answer fields (text, usage,
 * finish reason, parse error) and reads the engine's tiers (fixed after
 * orch__llm_new), and puts the call on the return list; one uv_async_t
 * (wake-ups coalesce) brings every returned call back to the loop, where
 * http_done_rest goes on as if the parse had run there. Threads take all
 * waiting jobs at once (a share of them with several threads). */
struct llm_exec {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  orch__llm_call *jobs, *jobs_tail; /* waiting for a thread */
  size_t njobs;
  orch__llm_call *back, *back_tail; /* parsed, for the loop */
  bool stop;                        /* under mu: threads leave */
  /* loop thread only */
  orch__llm_call *out, *out_tail; /* handed over this loop turn */
  size_t nout;
  uv_check_t check; /* hands `out` to the threads after the turn's I/O */
  int open_handles;
  orch__llm_call *draining; /* taken from back, being continued */
  size_t held;              /* calls handed over and not yet continued */
  bool closing;             /* orch__llm_free ran */
  int nthreads;
  pthread_t th[16];
  uv_async_t async;
};

static void http_done_rest(orch__llm_call *c, bool parsed);

static void *exec_main(void *arg) {
  llm_exec *x = arg;
  pthread_mutex_lock(&x->mu);
  for (;;) {
    while (!x->jobs && !x->stop) pthread_cond_wait(&x->cv, &x->mu);
    if (x->stop) break;
    size_t take = x->njobs;
    if (x->nthreads > 1) take = (take + (size_t)x->nthreads - 1) / (size_t)x->nthreads;
    orch__llm_call *first = x->jobs, *last = first;
    for (size_t i = 1; i < take && last->xnext; i++) last = last->xnext;
    x->jobs = last->xnext;
    if (!x->jobs) x->jobs_tail = NULL;
    last->xnext = NULL;
    x->njobs -= take <= x->njobs ? take : x->njobs;
    pthread_mutex_unlock(&x->mu);
    for (orch__llm_call *c = first; c; c = c->xnext)
      parse_whole(c, c->http.body, c->http.body_len);
    pthread_mutex_lock(&x->mu);
    if (x->back_tail) x->back_tail->xnext = first;
    else x->back = first;
    x->back_tail = last;
    pthread_mutex_unlock(&x->mu);
    /* the loop may continue (and free) the calls from here on; x lives
     * until orch__llm_free has joined us */
    uv_async_send(&x->async);
    pthread_mutex_lock(&x->mu);
  }
  pthread_mutex_unlock(&x->mu);
  return NULL;
}

/* Continues a batch of parsed calls on the loop: through x->draining, not
 * a local, since a done callback may free the engine, which then finishes
 * these calls itself (x outlives that: exec_closed). */
static void exec_drain(llm_exec *x, orch__llm_call *batch) {
  if (!batch) return;
  orch__llm_call *tail = batch;
  while (tail->xnext) tail = tail->xnext;
  tail->xnext = x->draining;
  x->draining = batch;
  while (x->draining && !x->closing) {
    orch__llm_call *c = x->draining;
    x->draining = c->xnext;
    c->xnext = NULL;
    c->in_parse = false;
    if (--x->held == 0) uv_unref((uv_handle_t *)&x->async);
    http_done_rest(c, true);
  }
}

static void on_exec_async(uv_async_t *a) {
  llm_exec *x = a->data;
  if (x->closing) return;
  pthread_mutex_lock(&x->mu);
  orch__llm_call *batch = x->back;
  x->back = x->back_tail = NULL;
  pthread_mutex_unlock(&x->mu);
  exec_drain(x, batch);
}

/* After the loop turn's I/O: the turn's answers go to the threads at
 * once (one lock, one wake-up). Those of the previous turn that no thread
 * has taken yet (the threads are behind, or not scheduled) the loop takes
 * back and parses itself, so an answer waits at most one turn. */
static void on_exec_check(uv_check_t *h) {
  llm_exec *x = h->data;
  uv_check_stop(&x->check);
  if (!x->out) return;
  pthread_mutex_lock(&x->mu);
  orch__llm_call *stolen = x->jobs;
  x->jobs = x->out;
  x->jobs_tail = x->out_tail;
  x->njobs = x->nout;
  if (x->nthreads > 1 && x->nout > 1) pthread_cond_broadcast(&x->cv);
  else pthread_cond_signal(&x->cv);
  pthread_mutex_unlock(&x->mu);
  x->out = x->out_tail = NULL;
  x->nout = 0;
  for (orch__llm_call *c = stolen; c; c = c->xnext)
    parse_whole(c, c->http.body, c->http.body_len);
  exec_drain(x, stolen);
}

static void exec_push(llm_exec *x, orch__llm_call *c) {
  c->in_parse = true;
  c->xnext = NULL;
  if (x->held++ == 0) uv_ref((uv_handle_t *)&x->async); /* a parse pending */
  if (x->out_tail) x->out_tail->xnext = c;
  else {
    x->out = c;
    uv_check_start(&x->check, on_exec_check);
  }
  x->out_tail = c;
  x->nout++;
}

static void exec_closed(uv_handle_t *h) {
  llm_exec *x = h->data;
  if (--x->open_handles) return;
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x);
}

/* Starts n parse threads on the loop; NULL when it cannot (we then parse
 * on the loop). */
static llm_exec *exec_new(uv_loop_t *loop, int n) {
  llm_exec *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  if (n > 16) n = 16;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  if (uv_async_init(loop, &x->async, on_exec_async)) {
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
    return NULL;
  }
  x->async.data = x;
  uv_unref((uv_handle_t *)&x->async); /* only a pending parse keeps the loop */
  uv_check_init(loop, &x->check);
  x->check.data = x;
  x->open_handles = 2;
  for (int i = 0; i < n; i++) {
    if (pthread_create(&x->th[i], NULL, exec_main, x)) break;
    x->nthreads++;
  }
  if (!x->nthreads) {
    uv_close((uv_handle_t *)&x->async, exec_closed);
    uv_close((uv_handle_t *)&x->check, exec_closed);
    return NULL;
  }
  return x;
}

/* Stops and joins the threads; the calls still held stay in l->calls (with
 * in_parse) for orch__llm_free to finish. x goes with the async handle. */
static void exec_stop(llm_exec *x) {
  pthread_mutex_lock(&x->mu);
  x->stop = true;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  for (int i = 0; i < x->nthreads; i++) pthread_join(x->th[i], NULL);
  x->closing = true;
  x->jobs = x->jobs_tail = x->back = x->back_tail = x->draining = NULL;
  x->out = x->out_tail = NULL;
  uv_close((uv_handle_t *)&x->async, exec_closed);
  uv_close((uv_handle_t *)&x->check, exec_closed);
}

size_t orch__llm_parsing(const orch__llm *l) {
  return l->exec ? l->exec->held : 0;
}

static void on_http_done(orch__http_req *req) {
  orch__llm_call *c = req->ud;
  orch__llm *l = c->l;
  c->in_http = false;
  /* the common case: a whole 2xx answer, parsed off the loop */
  if (l->exec && !c->canceled && !c->stream && !c->perr &&
      req->result == ORCH_OK && req->status >= 200 && req->status < 300) {
    exec_push(l->exec, c);
    return;
  }
  http_done_rest(c, false);
}

/* Whether why starts by naming tier name ("tier 'strong' endpoint in
 * cooldown ..."). */
static bool names_tier(const char *why, const char *name) {
  size_t nl = strlen(name);
  return why && strncmp(why, "tier '", 6) == 0 &&
         strncmp(why + 6, name, nl) == 0 && why[6 + nl] == '\'';
}

/* Notes why the call left tier name (why: the policy's reason or a skip's;
 * last: the tier's last error, NULL when it was never tried), each thing
 * said once: retry.lua's reasons often quote the error, skips name the
 * tier. The final error tells every tier's part in order: "tier 'local':
 * transport error (...) after 4 attempts; tier 'strong' has no API key
 * ...; no fallback tier". */
static void trail_add(orch__llm_call *c, const char *name, const char *why,
                      const char *last) {
  if (!why) why = "failed";
  bool nt = names_tier(why, name);
  char *part;
  if (!last || strstr(why, last))
    part = nt ? orch__strdup(why) : orch__asprintf("tier '%s': %s", name, why);
  else if (nt)
    part = orch__asprintf("%s; %s", why, last);
  else
    part = orch__asprintf("tier '%s': %s; %s", name, last, why);
  if (!part) return;
  char *all = c->trail ? orch__asprintf("%s; %s", c->trail, part) : part;
  if (all && all != part) free(part);
  if (!all) return;
  free(c->trail);
  c->trail = all;
}

/* The rest of a finished transfer (parsed: parse_whole already ran on the
 * executor): the attempt's record, then finish, retry or fall back. */
static void http_done_rest(orch__llm_call *c, bool parsed) {
  orch__http_req *req = &c->http;
  orch__llm *l = c->l;
  const llm_tier *t = &l->tiers[c->tier];
  if (c->canceled) {
    orch__llm_attempt *a = new_attempt(c);
    if (a) {
      a->code = ORCH_ECANCELED;
      a->action = "canceled";
      a->error = orch__strdup("canceled");
      a->latency_ms = ms_between(req->t_start_ns, req->t_end_ns);
    }
    finish_later(c, ORCH_ECANCELED, "canceled");
    return;
  }
  orch__llm_attempt *a = new_attempt(c);
  int code = ORCH_OK;
  char *msg = NULL;
  const char *body = NULL;
  size_t blen = 0;
  bool ok_status = req->status >= 200 && req->status < 300;
  if (c->stream) {
    body = c->raw.p;
    blen = c->raw.len;
  } else {
    body = req->body;
    blen = req->body_len;
  }
  if (c->perr) {
    code = c->perr;
    msg = orch__strdup(c->perr_msg);
  } else if (req->result != ORCH_OK) {
    code = req->result;
    if (ok_status && req->result != ORCH_ETIMEDOUT &&
        req->result != ORCH_ECANCELED)
      msg = orch__asprintf("truncated %s at byte %zu: %s",
                           c->stream && !c->sse.whole ? "stream" : "response",
                           req->bytes_in,
                           req->error);
    else
      msg = orch__strdup(req->error);
  } else if (!ok_status) {
    code = ORCH_EHTTP;
    char *pm = provider_message(l, body, blen);
    msg = orch__asprintf("HTTP %ld: %s", req->status, pm ? pm : "");
    free(pm);
  } else if (c->stream && c->sse.whole) {
    parse_whole(c, body, blen);
    if (c->perr) {
      code = c->perr;
      msg = orch__strdup(c->perr_msg);
    }
  } else if (c->stream) {
    if (!c->sse.done) {
      code = ORCH_EIO;
      msg = orch__asprintf(
          "truncated stream: ended at byte %zu without %s", c->sse.off,
          t->provider == PROV_OPENAI ? "data: [DONE]" : "message_stop");
    }
  } else {
    if (!parsed) parse_whole(c, body, blen);
    if (c->perr) {
      code = c->perr;
      msg = orch__strdup(c->perr_msg);
    }
  }
  if (msg) orch__llm_redact(l, &msg);
  if (a) {
    a->code = code;
    a->http_status = (int)req->status;
    a->error = code ? orch__strdup(msg) : NULL;
    a->latency_ms = ms_between(req->t_start_ns, req->t_end_ns);
    a->start_ms = ms_between(c->t0_ns, req->t_start_ns);
    int64_t ft = c->stream && !c->sse.whole ? c->t_first_token_ns
                                            : req->t_first_byte_ns;
    a->ttft_ms = ft ? ms_between(req->t_start_ns, ft) : -1;
    a->tokens_in = c->tin;
    a->tokens_out = c->tout;
  }
  if (code == ORCH_OK) {
    if (a) a->action = "ok";
    free(msg);
    finish(c, ORCH_OK, NULL);
    return;
  }
  free(c->last_error);
  c->last_error = msg;
  c->last_code = code;
  c->last_status = (int)req->status;
  /* what counts against the endpoint: transport trouble and 408/409/429/5xx */
  int st = (int)req->status;
  if (code != ORCH_EHTTP || st == 408 || st == 409 || st == 429 || st >= 500)
    ep_fail(l, t->ep);
  orch__llm_decision d;
  int dstatus = code == ORCH_EHTTP ? st : (ok_status ? st : 0);
  if (code == ORCH_EHTTP && ok_status) dstatus = 500; /* error event */
  /* the policy reads the body's start and may quote it: redacted first */
  char *rbody =
      body ? clean_text(l, body, blen < ERRBODY_MAX ? blen : ERRBODY_MAX,
                        ERRBODY_MAX)
           : NULL;
  if (code == ORCH_ELIMIT) {
    /* over the answer's size limit: asked again, the tier would send as
     * much again; the next tier, if any, instead of a retry */
    d.action = ORCH__LLM_FALLBACK;
    d.delay_ms = 0;
    snprintf(d.reason, sizeof d.reason, "%s (not retried)",
             msg ? msg : "answer too large");
  } else if (l->decider)
    l->decider(l->decider_ud, &l->retry, c->attempt, dstatus, msg,
               req->retry_after_ms, rbody, &d);
  else
    orch__llm_decide(&l->retry, c->attempt, dstatus, msg, req->retry_after_ms,
                     rbody, &d);
  free(rbody);
  if (d.action == ORCH__LLM_RETRY) {
    if (a) {
      a->action = "retry";
      a->delay_ms = d.delay_ms;
    }
    if (ensure_timer(c) != ORCH_OK) {
      finish(c, ORCH_ENOMEM, "out of memory");
      return;
    }
    uv_timer_start(c->timer, on_timer, (uint64_t)llround(d.delay_ms), 0);
  } else if (d.action == ORCH__LLM_FALLBACK) {
    if (a) a->action = "fallback";
    trail_add(c, t->name, d.reason, msg);
    begin_tier(c, t->fallback_idx);
  } else {
    if (a) a->action = "fail";
    char *m = c->trail ? orch__asprintf("%s; tier '%s': %s", c->trail, t->name,
                                        msg ? msg : "failed")
                       : orch__asprintf("%s (tier '%s')", msg ? msg : "failed",
                                        t->name);
    finish(c, code, m ? m : msg);
    free(m);
  }
}

/* Records an attempt that was never sent (action: cooldown, no_key) and
 * goes on to the tier's fallback. */
static void skip_tier(orch__llm_call *c, const llm_tier *t, int code,
                      const char *action, const char *why) {
  orch__llm_attempt *a = new_attempt(c);
  if (a) {
    a->code = code;
    a->action = action;
    a->error = orch__strdup(why);
  }
  if (!c->last_error) {
    c->last_error = orch__strdup(why);
    c->last_code = code;
  }
  trail_add(c, t->name, why, NULL);
  begin_tier(c, t->fallback_idx);
}

static void send_attempt(orch__llm_call *c) {
  orch__llm *l = c->l;
  const llm_tier *t = &l->tiers[c->tier];
  if (t->key_env) {
    char *why = orch__asprintf(
        "tier '%s' has no API key for %s: set %s (or the tier's api_key or "
        "api_key_env)%s",
        t->name, t->base_url, t->key_env,
        t->provider == PROV_OPENAI
            ? ", or OPENAI_BASE_URL for a local OpenAI-compatible server"
            : "");
    skip_tier(c, t, ORCH_ECONFIG, "no_key", why);
    free(why);
    return;
  }
  if (t->ep->cooldown_until_ns > orch__now_ns()) {
    /* the endpoint cooled down while we waited: go straight on */
    char *why = orch__asprintf("tier '%s' endpoint in cooldown for %lld ms",
                               t->name, (long long)ep_cooldown_left_ms(t->ep));
    skip_tier(c, t, ORCH_EHTTP, "cooldown", why);
    free(why);
    return;
  }
  c->attempt++;
  attempt_reset(c);
  orch__http_req *h = &c->http;
  h->url = t->url;
  h->ca_file = t->ca_file;
  h->post = c->body_json;
  h->post_len = strlen(c->body_json);
  h->connect_timeout_ms = l->connect_timeout_ms;
  h->timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : l->timeout_ms;
  h->idle_timeout_ms = c->stream ? l->idle_timeout_ms : 0;
  h->on_data = c->stream ? on_data : NULL;
  h->on_done = on_http_done;
  h->ud = c;
  c->in_http = true;
  orch__http_submit(l->http, h);
}

/* Lets go of the request's header list (shared ones are the engine's). */
static void drop_headers(orch__llm_call *c) {
  if (!c->shared_headers) curl_slist_free_all(c->http.headers);
  c->http.headers = NULL;
  c->shared_headers = false;
}

static int set_headers(orch__llm_call *c, const llm_tier *t) {
  orch__http_req *h = &c->http;
  drop_headers(c);
  /* the same for every call of the tier (and stream flag) but those with a
   * fault header: built once, shared */
  struct curl_slist **slot =
      c->fault ? NULL : &c->l->hdrs[t - c->l->tiers][c->stream ? 1 : 0];
  if (slot && *slot) {
    h->headers = *slot;
    c->shared_headers = true;
    return ORCH_OK;
  }
  char line[512];
  int rc = orch__http_req_header(h, "Content-Type: application/json");
  if (!rc) rc = orch__http_req_header(h, c->stream ? "Accept: text/event-stream"
                                                   : "Accept: application/json");
  if (!rc) rc = orch__http_req_header(h, "Expect:");
  if (!rc && t->provider == PROV_ANTHROPIC)
    rc = orch__http_req_header(h, "anthropic-version: 2023-06-01");
  if (!rc && t->api_key) {
    char *kl = t->provider == PROV_OPENAI
                   ? orch__asprintf("Authorization: Bearer %s", t->api_key)
                   : orch__asprintf("x-api-key: %s", t->api_key);
    rc = kl ? orch__http_req_header(h, kl) : ORCH_ENOMEM;
    if (kl) {
      memset(kl, 0, strlen(kl));
      free(kl);
    }
  }
  if (!rc && c->fault) {
    snprintf(line, sizeof line, "X-Mock-Fault: %s", c->fault);
    rc = orch__http_req_header(h, line);
  }
  if (!rc && slot) {
    *slot = h->headers;
    c->shared_headers = true;
  }
  return rc;
}

/* Starts (or falls back to) tier idx; -1 means there is none left. */
static void begin_tier(orch__llm_call *c, int idx) {
  orch__llm *l = c->l;
  if (idx < 0 || (c->visited & (1ull << idx))) {
    const char *end = idx < 0 ? "no fallback tier" : "fallback tiers exhausted";
    char *m = orch__asprintf(
        "%s; %s",
        c->trail ? c->trail : c->last_error ? c->last_error : "failed", end);
    finish(c, c->last_code ? c->last_code : ORCH_EHTTP, m ? m : end);
    free(m);
    return;
  }
  c->visited |= 1ull << idx;
  c->tier = idx;
  c->attempt = 0;
  const llm_tier *t = &l->tiers[idx];
  c->stream = c->stream_req >= 0 ? c->stream_req
              : t->stream >= 0   ? t->stream
                                 : l->stream;
  free(c->body_json);
  c->body_json = build_body(c, t);
  if (!c->body_json || set_headers(c, t)) {
    finish(c, ORCH_ENOMEM, "out of memory building the request");
    return;
  }
  send_attempt(c);
}

/* Ends the call: its done runs now, or on the next loop turn when the
 * end came inside orch__llm_call_start (a tier in cooldown with no
 * fallback, a request the HTTP engine refused at once), so done never runs
 * inside the caller's own call (a caller that starts the next call from
 * done would otherwise recurse once per call). */
static void finish(orch__llm_call *c, int code, const char *msg) {
  if (c->starting) finish_later(c, code, msg);
  else finish_now(c, code, msg);
}

static void finish_now(orch__llm_call *c, int code, const char *msg) {
  orch__llm *l = c->l;
  if (c->finished) return;
  c->finished = true;
  orch__llm_result *r = &c->res;
  const llm_tier *t = &l->tiers[c->tier];
  r->code = code;
  r->error = code ? orch__strdup(msg ? msg : "failed") : NULL;
  if (r->error) orch__llm_redact(l, &r->error);
  r->tier = orch__strdup(t->name);
  r->model = orch__strdup(tier_model(c, c->tier));
  r->provider = prov_names[t->provider];
  if (code == ORCH_OK) {
    r->text = c->text.p ? c->text.p : orch__strdup("");
    r->text_len = c->text.len;
    c->text.p = NULL;
    c->text.len = c->text.cap = 0;
    r->finish_reason = c->finish_reason;
    c->finish_reason = NULL;
    r->tokens_in = c->tin;
    r->tokens_out = c->tout;
    r->ttft_ms = r->nattempts ? r->attempts[r->nattempts - 1].ttft_ms : -1;
  } else {
    r->tokens_in = r->tokens_out = -1;
    r->ttft_ms = -1;
  }
  /* cost: each attempt whose usage is known (both counts), at its tier's
   * prices; the call's is unknown when an answer (2xx: billed) had its
   * usage unknown, failed or not */
  double cost = 0;
  bool known = true;
  for (size_t i = 0; i < r->nattempts; i++) {
    orch__llm_attempt *a = &r->attempts[i];
    bool billed = a->http_status >= 200 && a->http_status < 300;
    const llm_tier *at = a->tier ? tier_find(l, a->tier) : NULL;
    if (a->tokens_in < 0 || a->tokens_out < 0 || !at || at->price_in < 0 ||
        at->price_out < 0) { /* usage or price unknown */
      if (billed) known = false;
      continue;
    }
    a->cost = ((double)a->tokens_in * at->price_in +
               (double)a->tokens_out * at->price_out) / 1e6;
    cost += a->cost;
  }
  r->cost = known ? cost : -1;
  r->latency_ms = ms_between(c->t0_ns, orch__now_ns());
  /* leave the running list; drop what only a running call needs */
  if (c->prev) c->prev->next = c->next;
  else if (l->calls == c) l->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  if (c->timer) {
    uv_timer_stop(c->timer);
    uv_close((uv_handle_t *)c->timer, timer_closed);
    c->timer = NULL;
  }
  attempt_reset(c);
  drop_headers(c);
  orch__http_req_deinit(&c->http);
  free(c->body_json);
  c->body_json = NULL;
  c->l = NULL; /* the call may outlive the engine */
  if (c->done) c->done(c, c->ud);
}

/* A copy of s, with U+FFFD for each byte that is not UTF-8. */
static char *utf8_copy(const char *s) {
  size_t n = strlen(s);
  return orch__utf8_valid(s, n, NULL) ? orch__strdup(s)
                                      : orch__utf8_repair(s, n);
}

int orch__llm_call_start(orch__llm *l, const orch__llm_req *req,
                         orch__llm_call **out) {
  *out = NULL;
  orch__llm_call *c = calloc(1, sizeof *c);
  if (!c) return ORCH_ENOMEM;
  c->l = l;
  c->t0_ns = orch__now_ns();
  c->done = req->done;
  c->ud = req->ud;
  c->tier_name = orch__strdup(req->tier ? req->tier : l->default_tier);
  c->model = req->model && *req->model ? orch__strdup(req->model) : NULL;
  /* text sent as JSON must be UTF-8: a dependency's output may not be */
  c->system = req->system ? utf8_copy(req->system) : NULL;
  c->prompt = utf8_copy(req->prompt ? req->prompt : "");
  c->fault = req->fault ? orch__strdup(req->fault) : NULL;
  c->max_tokens = req->max_tokens;
  c->stream_req = req->stream;
  c->timeout_ms = req->timeout_ms;
  c->tin = c->tout = -1;
  orch__http_req_init(&c->http);
  c->res.tokens_in = c->res.tokens_out = -1;
  c->res.ttft_ms = -1;
  c->res.cost = -1;
  c->next = l->calls;
  if (l->calls) l->calls->prev = c;
  l->calls = c;
  *out = c;
  if (!c->tier_name || !c->prompt) {
    finish_later(c, ORCH_ENOMEM, "out of memory");
    return ORCH_OK;
  }
  llm_tier *t = tier_find(l, c->tier_name);
  if (!t) {
    char known[512] = "";
    for (size_t i = 0; i < l->ntiers; i++) {
      if (i) strncat(known, ", ", sizeof known - strlen(known) - 1);
      strncat(known, l->tiers[i].name, sizeof known - strlen(known) - 1);
    }
    char *m =
        orch__asprintf("unknown tier '%s' (known: %s)", c->tier_name, known);
    c->tier = 0;
    finish_later(c, ORCH_EINVAL, m);
    free(m);
    return ORCH_OK;
  }
  c->tier = c->first_tier = (int)(t - l->tiers);
  c->starting = true;
  begin_tier(c, c->tier);
  c->starting = false;
  return ORCH_OK;
}

void orch__llm_call_cancel(orch__llm_call *c) {
  if (!c || c->finished || c->canceled || !c->l) return;
  c->canceled = true;
  if (c->in_parse) {
    /* the executor holds it: it comes back to http_done_rest, which sees
     * canceled and records the cancel there */
  } else if (c->in_http) {
    orch__http_cancel(c->l->http, &c->http); /* on_http_done: finish_later */
  } else {
    if (c->timer) uv_timer_stop(c->timer);
    orch__llm_attempt *a = new_attempt(c);
    if (a) {
      a->code = ORCH_ECANCELED;
      a->action = "canceled";
      a->error = orch__strdup("canceled while waiting to retry");
    }
    c->finish_pending = false;
    finish_later(c, ORCH_ECANCELED, "canceled");
  }
}

const orch__llm_result *orch__llm_call_result(const orch__llm_call *c) {
  return c && c->finished ? &c->res : NULL;
}

void orch__llm_call_free(orch__llm_call *c) {
  if (!c) return;
  orch__llm_result *r = &c->res;
  for (size_t i = 0; i < r->nattempts; i++) {
    free(r->attempts[i].tier);
    free(r->attempts[i].model);
    free(r->attempts[i].error);
  }
  free(r->attempts);
  free(r->error);
  free(r->text);
  free(r->tier);
  free(r->model);
  free(r->finish_reason);
  free(c->tier_name);
  free(c->model);
  free(c->system);
  free(c->prompt);
  free(c->fault);
  free(c->finish_msg);
  free(c->last_error);
  free(c->trail);
  free(c->body_json);
  free(c->finish_reason);
  orch__buf_deinit(&c->text);
  orch__buf_deinit(&c->raw);
  orch__buf_deinit(&c->sse.line);
  orch__buf_deinit(&c->sse.data);
  drop_headers(c);
  orch__http_req_deinit(&c->http);
  free(c);
}

void orch__llm_free(orch__llm *l) {
  if (!l) return;
  /* parse threads first: after this no thread touches a call */
  if (l->exec) exec_stop(l->exec);
  l->exec = NULL;
  /* calls still running end now, their done called before we go */
  while (l->calls) {
    orch__llm_call *c = l->calls;
    c->canceled = true;
    if (c->in_parse) {
      c->in_parse = false;
      c->xnext = NULL;
      orch__llm_attempt *a = new_attempt(c);
      if (a) {
        a->code = ORCH_ECANCELED;
        a->action = "canceled";
        a->error = orch__strdup("canceled: shutting down");
        a->latency_ms = ms_between(c->http.t_start_ns, c->http.t_end_ns);
      }
    }
    if (c->in_http) {
      c->in_http = false;
      orch__http_cancel(l->http, &c->http);
    }
    if (!c->finished) finish(c, ORCH_ECANCELED, "canceled: shutting down");
  }
  orch__http_free(l->http);
  for (size_t i = 0; i < 8; i++) json_decref(l->body_shape[i]);
  for (size_t i = 0; i < MAX_TIERS; i++)
    for (int k = 0; k < 2; k++) {
      for (struct curl_slist *p = l->hdrs[i][k]; p; p = p->next)
        memset(p->data, 0, strlen(p->data)); /* may hold a key */
      curl_slist_free_all(l->hdrs[i][k]);
    }
  for (size_t i = 0; i < l->ntiers; i++) tier_deinit(&l->tiers[i]);
  for (size_t i = 0; i < l->neps; i++) {
    free(l->eps[i]->fails);
    free(l->eps[i]->key);
    free(l->eps[i]);
  }
  free(l->default_tier);
  free(l);
}
