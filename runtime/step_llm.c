/* step_llm.c provides the `llm` kind: a model call whose prompt is the
 * step's own plus its dependencies' results. It runs on the loop thread:
 * start() submits the call to the run's LLM engine (llm.c, created on the
 * first llm step of a run) and the call's completion finishes the step with
 * its text, or its error, and keeps the usage, cost and every attempt on the
 * step. With the policy engine, a loop-thread script state answers the
 * routing hook (routing/complexity.lua: the tier of a step without one) and
 * the retry hook (policies/retry.lua: retry, fall back or fail); without it,
 * or when a hook fails, the configured default tier and llm.c's built-in
 * policy serve. Uses llm.c, policy.c and jansson; --dry-run is sched.c's. */
#include "orch_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct llm_params {
  char *prompt, *tier, *title, *instructions, *model;
  char *request; /* the user's request, for GAP tasks and the synthesis */
  char *name;    /* a task name for routing/agents.lua (find_*, fix_*...) */
  char *agent, *backup; /* who answers, and who takes over on a timeout */
  bool on_backup;       /* the backup agent has taken over */
  int attempt_base;     /* attempts before this call's: an earlier run's
                           (resume), then the primary's before the backup's */
  orch__llm_call *old_call; /* the primary's call, kept for its record */
  char *role;    /* "task" or "synthesis": prompt rendered by gap.lua */
  int stream;     /* -1: config default */
  int max_tokens; /* 0: default */
  orch__llm_call *call; /* owned: the result lives here after the run */
  orch__run *run;       /* while running */
  uint32_t idx;
} llm_params;

typedef struct llm_run { /* r->kind_state[ORCH__KIND_LLM] */
  orch__llm *llm;
  orch__lstate *ls; /* scripts, for the hooks; loop thread only; or NULL */
  bool hook_error_logged;
  size_t inflight; /* calls started, not yet done */
  int rc; /* the engine could not be made: every llm step fails with err */
  char err[512];
} llm_run;

static int get_str(json_t *obj, const char *key, const char *where,
                   char **out, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v)) return ORCH_OK;
  if (!json_is_string(v))
    return orch__err(err, errlen, ORCH_EPLAN, "%s: \"%s\" must be a string",
                     where, key);
  if (!(*out = orch__strdup(json_string_value(v)))) return ORCH_ENOMEM;
  return ORCH_OK;
}

static void params_free(llm_params *p) {
  if (!p) return;
  orch__llm_call_free(p->call);
  free(p->prompt);
  free(p->request);
  free(p->role);
  free(p->name);
  free(p->agent);
  free(p->backup);
  orch__llm_call_free(p->old_call);
  free(p->tier);
  free(p->title);
  free(p->instructions);
  free(p->model);
  free(p);
}

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  int rc = ORCH_OK;
  llm_params *p = calloc(1, sizeof *p);
  if (!p) return ORCH_ENOMEM;
  p->stream = -1;
  json_t *pr = json_object_get(obj, "prompt");
  if (!pr) pr = json_object_get(obj, "description"); /* GAP tasks */
  if (!json_is_string(pr)) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "%s: an llm step needs \"prompt\", a string", where);
    goto done;
  }
  if (!(p->prompt = orch__strdup(json_string_value(pr)))) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  if ((rc = get_str(obj, "tier", where, &p->tier, err, errlen)) ||
      (rc = get_str(obj, "title", where, &p->title, err, errlen)) ||
      (rc = get_str(obj, "instructions", where, &p->instructions, err,
                    errlen)) ||
      (rc = get_str(obj, "model", where, &p->model, err, errlen)) ||
      (rc = get_str(obj, "request", where, &p->request, err, errlen)) ||
      (rc = get_str(obj, "role", where, &p->role, err, errlen)) ||
      (rc = get_str(obj, "name", where, &p->name, err, errlen)) ||
      (rc = get_str(obj, "agent", where, &p->agent, err, errlen)) ||
      (rc = get_str(obj, "backup_agent", where, &p->backup, err, errlen)))
    goto done;
  if (p->role && strcmp(p->role, "task") != 0 &&
      strcmp(p->role, "synthesis") != 0) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "%s: \"role\" must be \"task\" or \"synthesis\"", where);
    goto done;
  }
  json_t *st = json_object_get(obj, "stream");
  if (st && !json_is_null(st)) {
    if (!json_is_boolean(st)) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"stream\" must be true or false", where);
      goto done;
    }
    p->stream = json_is_true(st);
  }
  json_t *mt = json_object_get(obj, "max_tokens");
  if (mt && !json_is_null(mt)) {
    if (!json_is_integer(mt) || json_integer_value(mt) < 1 ||
        json_integer_value(mt) > 100000000) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"max_tokens\" must be a positive integer", where);
      goto done;
    }
    p->max_tokens = (int)json_integer_value(mt);
  }
  s->u.p = p;
  p = NULL;
done:
  params_free(p);
  return rc;
}

/* The tier for a step without one: routing/complexity.lua's classify{title,
 * instructions} when the scripts are there and name a configured tier,
 * written into buf; else NULL: the configured default (llm.default_tier,
 * else "local"). */
static const char *pick_tier(orch__run *r, uint32_t idx, const llm_params *p,
                             char *buf, size_t buflen) {
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  if (!lr || !lr->ls) return NULL;
  const char *keys[] = {"title", "instructions"};
  const char *vals[] = {p->title ? p->title : orch__step_id(r->g, idx),
                        p->instructions && *p->instructions ? p->instructions
                                                            : p->prompt};
  char err[256];
  int rc = orch__policy_call_fields(lr->ls, "routing.complexity", "classify",
                                    keys, vals, 2, buf, buflen, err,
                                    sizeof err);
  if (rc == ORCH_OK && orch__llm_has_tier(lr->llm, buf)) return buf;
  if (rc != ORCH_ENOTFOUND && !lr->hook_error_logged) {
    lr->hook_error_logged = true;
    fprintf(stderr, "orchestrate: routing: %s; using the default tier\n",
            rc == ORCH_OK ? "classify() named no configured tier" : err);
  }
  return NULL;
}

/* The retry hook: policies/retry.lua's decide{attempt, status, error,
 * retry_after_ms, body}; on any failure of the script, llm.c's built-in
 * policy (the same rules with the config's numbers). */
static void lua_decide(void *ud, const orch__llm_retry_opts *o, int attempt,
                       int status, const char *error, long retry_after_ms,
                       const char *body, orch__llm_decision *d) {
  llm_run *lr = ud;
  json_t *arg = json_pack("{s:i,s:i}", "attempt", attempt, "status", status);
  json_t *out = NULL;
  char err[256] = "";
  int rc = ORCH_ENOMEM;
  if (arg) {
    if (error) json_object_set_new(arg, "error", json_string_nocheck(error));
    if (retry_after_ms >= 0)
      json_object_set_new(arg, "retry_after_ms", json_integer(retry_after_ms));
    if (body) /* the script reads the start of it only */
      json_object_set_new(arg, "body", json_stringn_nocheck(
                                           body, strnlen(body, 8192)));
    /* the operator's llm settings, those the config set: the script's own
     * numbers are the defaults, these win */
    if (o->set) {
      json_t *lim = json_object();
      if (o->set & ORCH__LLM_SET_ATTEMPTS)
        json_object_set_new(lim, "max_attempts", json_integer(o->max_attempts));
      if (o->set & ORCH__LLM_SET_BASE)
        json_object_set_new(lim, "backoff_base_ms", json_real(o->base_ms));
      if (o->set & ORCH__LLM_SET_MAX)
        json_object_set_new(lim, "backoff_max_ms", json_real(o->max_ms));
      if (o->set & ORCH__LLM_SET_CAP)
        json_object_set_new(lim, "retry_after_cap_ms",
                            json_real(o->retry_after_cap_ms));
      json_object_set_new(arg, "limits", lim);
    }
    rc = orch__policy_call(lr->ls, "policies.retry", "decide", arg, &out, err,
                           sizeof err);
  }
  json_decref(arg);
  const char *action = json_string_value(json_object_get(out, "action"));
  json_t *delay = json_object_get(out, "delay_ms");
  const char *reason = json_string_value(json_object_get(out, "reason"));
  memset(d, 0, sizeof *d);
  if (rc == ORCH_OK && action && !strcmp(action, "retry") &&
      json_is_number(delay) && json_number_value(delay) >= 0) {
    d->action = ORCH__LLM_RETRY;
    d->delay_ms = json_number_value(delay);
    snprintf(d->reason, sizeof d->reason, "retry.lua: retry in %.0f ms",
             d->delay_ms);
  } else if (rc == ORCH_OK && action &&
             (!strcmp(action, "fallback") || !strcmp(action, "fail"))) {
    d->action = !strcmp(action, "fallback") ? ORCH__LLM_FALLBACK
                                            : ORCH__LLM_FAIL;
    snprintf(d->reason, sizeof d->reason, "%s", reason ? reason : action);
  } else {
    if (rc != ORCH_ENOTFOUND && !lr->hook_error_logged) {
      lr->hook_error_logged = true;
      fprintf(stderr, "orchestrate: retry hook: %s; using the built-in "
                      "policy\n",
              rc ? err : "decide() returned no valid action");
    }
    orch__llm_decide(o, attempt, status, error, retry_after_ms, body, d);
  }
  json_decref(out);
}

/* A JSON string of s, with U+FFFD for each byte that is not UTF-8 (a
 * dependency's output or error may hold any bytes: json_string would
 * refuse it and the prompt would say "(no result)"). */
static json_t *json_utf8(const char *s) {
  size_t n = strlen(s);
  if (orch__utf8_valid(s, n, NULL)) return json_stringn(s, n);
  char *t = orch__utf8_repair(s, n);
  json_t *j = t ? json_string(t) : NULL;
  free(t);
  return j;
}

/* A GAP task or the synthesis: gap.lua's task_prompt / synthesis_prompt
 * render the prompt from the request, the step's text and each
 * dependency's description, status and result. NULL: use the plain form. */
static char *gap_prompt(orch__run *r, uint32_t idx, const llm_params *p,
                        orch__lstate *ls) {
  if (!p->role || !ls) return NULL;
  orch_graph *g = r->g;
  bool synth = strcmp(p->role, "synthesis") == 0;
  json_t *arg = json_object(), *list = json_array();
  json_object_set_new(arg, "request", json_string(p->request ? p->request : p->prompt));
  for (uint32_t e = g->dep_off[idx]; e < g->dep_off[idx + 1]; e++) {
    uint32_t d = g->deps[e];
    const orch__step *ds = &g->steps[d];
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(orch__step_id(g, d)));
    const llm_params *dp = ds->kind == ORCH__KIND_LLM ? ds->u.p : NULL;
    json_object_set_new(o, "description",
                        json_string(dp && dp->prompt ? dp->prompt : orch__step_id(g, d)));
    json_object_set_new(o, "status", json_string(orch_status_name(ds->status)));
    if (ds->output) json_object_set_new(o, "result", json_utf8(ds->output));
    if (ds->status != ORCH_PASSED && ds->error)
      json_object_set_new(o, "error", json_utf8(ds->error));
    json_array_append_new(list, o);
  }
  if (synth) {
    json_object_set_new(arg, "results", list);
  } else {
    json_t *task = json_object();
    json_object_set_new(task, "id", json_string(orch__step_id(g, idx)));
    json_object_set_new(task, "description", json_string(p->prompt));
    json_object_set_new(arg, "task", task);
    json_object_set_new(arg, "deps", list);
  }
  json_t *out = NULL;
  char err[512];
  char *text = NULL;
  int rc = orch__policy_call(ls, "policies.gap", synth ? "synthesis_prompt" : "task_prompt",
                             arg, &out, err, sizeof err);
  if (rc == ORCH_OK && json_is_string(out)) text = orch__strdup(json_string_value(out));
  else fprintf(stderr, "orchestrate: gap.%s failed, using the plain prompt: %s\n",
               synth ? "synthesis_prompt" : "task_prompt", rc ? err : "not a string");
  json_decref(out);
  json_decref(arg);
  return text;
}

/* The prompt: title, the step's text, then each dependency's result (and,
 * for a synthesis without scripts, the failures by name). */
static char *build_prompt(orch__run *r, uint32_t idx, const llm_params *p) {
  orch_graph *g = r->g;
  orch__buf b = {0};
  int rc = ORCH_OK;
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  char *gp = gap_prompt(r, idx, p, lr ? lr->ls : NULL);
  if (gp) return gp;
  if (p->title && *p->title) rc |= orch__buf_printf(&b, "# %s\n\n", p->title);
  rc |= orch__buf_add(&b, p->prompt, strlen(p->prompt));
  bool header = false;
  for (uint32_t e = g->dep_off[idx]; e < g->dep_off[idx + 1]; e++) {
    uint32_t d = g->deps[e];
    const orch__step *ds = &g->steps[d];
    if (!ds->output && ds->status == ORCH_PASSED) continue;
    if (!ds->output) {
      rc |= orch__buf_printf(&b, "\n\n(%s %s: %s)", orch__step_id(g, d),
                             orch_status_name(ds->status),
                             ds->error ? ds->error : "no result");
      continue;
    }
    if (!header) {
      rc |= orch__buf_printf(&b, "\n\n## Results of the steps this one "
                                 "depends on\n");
      header = true;
    }
    rc |= orch__buf_printf(&b, "\n### %s\n", orch__step_id(g, d));
    rc |= orch__buf_add(&b, ds->output, strlen(ds->output));
    rc |= orch__buf_add(&b, "\n", 1);
  }
  if (rc || !b.p) {
    orch__buf_deinit(&b);
    return NULL;
  }
  return b.p;
}

static void engine_free(void *arg) {
  llm_run *lr = arg;
  orch__llm_free(lr->llm);
  orch__lstate_free(lr->ls);
  free(lr);
}

/* When no llm step of the run can start any more, the engine goes (on a
 * later loop turn: we are inside its callback). orch__llm_run_end does the
 * same at the end of a run for the cases this cannot see (the last llm
 * steps skipped because a step of another kind failed). */
static void maybe_release(orch__run *r) {
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  if (!lr || lr->inflight) return;
  orch_graph *g = r->g;
  for (size_t i = 0; i < g->n; i++) {
    const orch__step *s = &g->steps[i];
    if (s->kind == ORCH__KIND_LLM &&
        (s->status == ORCH_PENDING || s->status == ORCH_IN_PROGRESS))
      return;
  }
  r->kind_state[ORCH__KIND_LLM] = NULL;
  if (orch__loop_call(r->rt->loop, engine_free, lr)) engine_free(lr);
}

/* Every attempt of the call into orch_llm_calls (the store's queue; it
 * never waits). */
static void record_attempts(orch__run *r, uint32_t idx,
                            const orch__llm_result *res, int base) {
  for (size_t i = 0; i < res->nattempts; i++) {
    const orch__llm_attempt *a = &res->attempts[i];
    orch__rec rec;
    memset(&rec, 0, sizeof rec);
    rec.type = ORCH__REC_LLM_CALL;
    rec.u.llm_call.session_id = r->rt->session_id;
    rec.u.llm_call.step_id = orch__step_id(r->g, idx);
    rec.u.llm_call.attempt = base + (int32_t)i + 1;
    rec.u.llm_call.provider = a->provider;
    rec.u.llm_call.model = a->model;
    rec.u.llm_call.http_status = a->http_status;
    rec.u.llm_call.outcome = a->action;
    rec.u.llm_call.tokens_in = a->tokens_in >= 0 ? a->tokens_in : ORCH__NULL_I64;
    rec.u.llm_call.tokens_out = a->tokens_out >= 0 ? a->tokens_out : ORCH__NULL_I64;
    rec.u.llm_call.cost = a->cost >= 0 ? a->cost : NAN;
    rec.u.llm_call.latency_ms = a->latency_ms;
    rec.u.llm_call.error = a->error;
    rec.u.llm_call.started_ms = orch__store_wall_ms() - (int64_t)(res->latency_ms - a->start_ms);
    orch__store_put(r->rt->store, &rec);
  }
}

static int start(orch__run *r, uint32_t idx);

static void call_done(orch__llm_call *call, void *ud) {
  llm_params *p = ud;
  orch__run *r = p->run;
  orch__step *s = &r->g->steps[p->idx];
  const orch__llm_result *res = orch__llm_call_result(call);
  p->run = NULL;
  llm_run *lr0 = r->kind_state[ORCH__KIND_LLM];
  if (res && res->code == ORCH_ETIMEDOUT && p->backup && !p->on_backup &&
      !atomic_load(&r->canceled)) {
    /* The primary agent timed out: its backup takes the step over. */
    if (r->rt->store) record_attempts(r, p->idx, res, p->attempt_base);
    p->attempt_base += (int)res->nattempts;
    fprintf(stderr, "orchestrate: step '%s': %s timed out; %s takes over\n",
            orch__step_id(r->g, p->idx), p->agent ? p->agent : "the agent",
            p->backup);
    free(p->agent);
    p->agent = orch__strdup(p->backup);
    p->on_backup = true;
    if (lr0) lr0->inflight--;
    if (start(r, p->idx) == ORCH_OK) return;
    if (lr0) lr0->inflight++; /* balanced below */
  }
  if (res && res->code == ORCH_OK) {
    orch__step_set_output(s, res->text, res->text_len);
    s->status = ORCH_PASSED;
  } else {
    orch__step_set_error(s, "%s", res && res->error ? res->error : "failed");
    s->status = ORCH_FAILED;
  }
  if (res) {
    size_t n = res->nattempts + (size_t)p->attempt_base;
    s->attempts = (uint8_t)(n > 255 ? 255 : n);
  }
  if (res && r->rt->store) record_attempts(r, p->idx, res, p->attempt_base);
  s->finished_ns = orch__run_now(r);
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  if (lr) lr->inflight--;
  orch__sched_finish(r, p->idx);
  maybe_release(r); /* r lives until the loop runs run_close: after us */
}

/* routing/agents.lua's route{name}: the primary and the backup agent of a
 * task name. Without the script the step simply has no agent. */
static void route_agents(llm_run *lr, llm_params *p) {
  if (!lr->ls) return;
  json_t *arg = json_pack("{s:s}", "name", p->name), *out = NULL;
  char err[256];
  if (orch__policy_call(lr->ls, "routing.agents", "route", arg, &out, err,
                        sizeof err) == ORCH_OK) {
    const char *pri = json_string_value(json_object_get(out, "primary"));
    const char *bak = json_string_value(json_object_get(out, "backup"));
    if (pri) p->agent = orch__strdup(pri);
    if (bak && !p->backup) p->backup = orch__strdup(bak);
  }
  json_decref(arg);
  json_decref(out);
}

static llm_run *run_state(orch__run *r) {
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  if (lr) return lr;
  lr = calloc(1, sizeof *lr);
  if (!lr) return NULL;
  lr->rc = orch__llm_new(&lr->llm, &r->rt->cfg, orch__loop_uv(r->rt->loop),
                         lr->err, sizeof lr->err);
  if (!lr->rc && r->rt->policy) {
    char err[256];
    lr->ls = orch__lstate_new(r->rt->policy, err, sizeof err);
    if (lr->ls) orch__llm_set_decider(lr->llm, lua_decide, lr);
    else fprintf(stderr, "orchestrate: llm hooks off: %s\n", err);
  }
  r->kind_state[ORCH__KIND_LLM] = lr;
  return lr;
}

static int start(orch__run *r, uint32_t idx) {
  orch__step *s = &r->g->steps[idx];
  llm_params *p = s->u.p;
  llm_run *lr = run_state(r);
  if (!lr) {
    orch__step_set_error(s, "out of memory");
    return ORCH_ENOMEM;
  }
  if (lr->rc) {
    orch__step_set_error(s, "%s", lr->err);
    return lr->rc;
  }
  if (lr->ls) orch__lstate_sync(lr->ls); /* a step boundary: new scripts */
  char *prompt = build_prompt(r, idx, p);
  if (!prompt) {
    orch__step_set_error(s, "out of memory building the prompt");
    return ORCH_ENOMEM;
  }
  if (p->name && !p->agent) route_agents(lr, p);
  /* The step's first call counts on from the attempts it had (a resumed
   * session's earlier run; start_step counted this start already). */
  if (!p->on_backup) p->attempt_base = s->attempts > 0 ? s->attempts - 1 : 0;
  /* A call the primary agent left (timed out) is kept for the record. */
  if (p->call && p->on_backup) {
    orch__llm_call_free(p->old_call);
    p->old_call = p->call;
  } else {
    orch__llm_call_free(p->call);
  }
  p->call = NULL;
  p->run = r;
  p->idx = idx;
  char *system = p->agent ? orch__asprintf("You are %s, one agent of a team.%s%s",
                                           p->agent, p->instructions ? "\n\n" : "",
                                           p->instructions ? p->instructions : "")
                          : NULL;
  char routed[64];
  orch__llm_req rq = {
      .tier = p->tier ? p->tier : pick_tier(r, idx, p, routed, sizeof routed),
      .model = p->model,
      .system = system ? system : p->instructions,
      .prompt = prompt,
      .max_tokens = p->max_tokens,
      .stream = p->stream,
      .timeout_ms = s->timeout_ms > 0 ? (long)s->timeout_ms : 0,
      .done = call_done,
      .ud = p,
  };
  int rc = orch__llm_call_start(lr->llm, &rq, &p->call);
  free(prompt);
  free(system);
  if (rc == ORCH_OK) lr->inflight++;
  if (rc) {
    p->run = NULL;
    orch__step_set_error(s, "cannot start the model call: %s",
                         orch_strerror(rc));
  }
  return rc;
}

static void cancel(orch__run *r, uint32_t idx) {
  llm_params *p = r->g->steps[idx].u.p;
  if (p && p->call && p->run) orch__llm_call_cancel(p->call);
}

static void free_params(orch__step *s) {
  params_free(s->u.p);
  s->u.p = NULL;
}

static double cost(const orch__step *s) {
  (void)s;
  return 2000; /* a model call takes seconds: weigh it on the critical path */
}

static void usage(const orch__step *s, int64_t *tin, int64_t *tout,
                  double *cost) {
  const orch__llm_result *res = orch__llm_step_result(s);
  if (!res) return;
  *tin = res->tokens_in;
  *tout = res->tokens_out;
  *cost = res->cost;
}

/* The engine (curl multi, script state) is made as the run starts, so the
 * first wave of calls does not wait for it. */
static void run_begin(orch__run *r) { (void)run_state(r); }

static const char *const keys[] = {
    "prompt", "description", "tier",    "title",        "instructions",
    "model",  "request",     "role",    "name",         "agent",
    "backup_agent", "stream", "max_tokens", NULL};

const orch__kind orch__kind_llm = {.run_begin = run_begin, .usage = usage,
                                   .keys = keys,
                                   .name = "llm", .where = ORCH__ON_LOOP,
                                   .parse = parse, .start = start,
                                   .cancel = cancel, .free = free_params,
                                   .cost = cost, .run_end = orch__llm_run_end};

const orch__llm_result *orch__llm_step_result(const orch__step *s) {
  if (!s || s->kind != ORCH__KIND_LLM || !s->u.p) return NULL;
  const llm_params *p = s->u.p;
  return orch__llm_call_result(p->call);
}

void orch__llm_graph_totals(const orch_graph *g, orch__llm_totals *t) {
  memset(t, 0, sizeof *t);
  for (size_t i = 0; g && i < g->n; i++) {
    const orch__llm_result *r = orch__llm_step_result(&g->steps[i]);
    if (!r) continue;
    t->calls++;
    t->attempts += r->nattempts;
    if (r->tokens_in >= 0 && r->tokens_out >= 0) {
      t->tokens_in += r->tokens_in;
      t->tokens_out += r->tokens_out;
    } else if (r->code == ORCH_OK) {
      t->unknown_usage++;
    }
    if (r->cost > 0) t->cost += r->cost;
  }
}

void orch__llm_run_end(orch__run *r) {
  llm_run *lr = r->kind_state[ORCH__KIND_LLM];
  if (!lr) return;
  r->kind_state[ORCH__KIND_LLM] = NULL;
  engine_free(lr);
}

char *orch_step_details(const orch_graph *g, size_t i) {
  if (!g || i >= g->n) return NULL;
  const orch__llm_result *r = orch__llm_step_result(&g->steps[i]);
  if (!r) return NULL;
  json_t *j = orch__llm_result_json(r);
  const llm_params *p = g->steps[i].u.p;
  if (j && p && p->agent) json_object_set_new(j, "agent", json_string(p->agent));
  if (j && p && p->on_backup) json_object_set_new(j, "backup_took_over", json_true());
  char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return txt;
}
