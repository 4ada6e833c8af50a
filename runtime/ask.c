/* ask.c provides the main job, orch_ask: a request becomes a plan, the plan
 * a graph, the graph runs, and a synthesis writes the answer (Graph-based
 * Agent Planning). policies/gap.lua decides whether to plan, renders the
 * planning prompt and parses the plan (asking once more with the parse
 * error when a model writes something unreadable); routing/complexity.lua
 * picks the planner's tier. Every call is an `llm` step run by the
 * scheduler, all in one session. Uses the public run API, plan.c's step
 * form, policy.c's hooks and step_llm.c's results. */
#include "orch_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Used when the scripts are missing or a hook fails. */
static const char fallback_prompt[] =
    "You are a planner. Break the request into atomic tasks (one tool call "
    "or analysis each) that run in parallel where possible. Think briefly "
    "inside <think></think> (under 100 words), then write a <plan> of lines "
    "'Task N: description | Dependencies: none' or '| Dependencies: Task 1, "
    "Task 2', then </plan>.\n\nRequest:\n";

typedef struct {
  orch_runtime *rt;
  orch__lstate *ls; /* the caller thread's script state, or NULL */
  const char *request;
  char tier[64];
  char session[40];
  uint32_t next_base; /* step numbers already used in the session */
  json_t *doc;  /* the result document */
  json_t *llm;  /* all steps' llm details, in order */
} ask;

static json_t *hook(ask *a, const char *module, const char *fn, json_t *arg,
                    char *err, size_t errlen) {
  json_t *out = NULL;
  if (!a->ls) {
    orch__err(err, errlen, ORCH_ENOTFOUND, "no scripts loaded");
    json_decref(arg);
    return NULL;
  }
  orch__lstate_sync(a->ls);
  if (orch__policy_call(a->ls, module, fn, arg, &out, err, errlen)) out = NULL;
  json_decref(arg);
  return out;
}

/* The details of an llm step for --json: tier, model, tokens, cost. */
static json_t *step_json(const orch_graph *g, uint32_t i) {
  const orch__step *s = &g->steps[i];
  json_t *o = json_object();
  json_object_set_new(o, "id", json_string(orch__step_id(g, i)));
  json_object_set_new(o, "status", json_string(orch_status_name(s->status)));
  json_object_set_new(o, "level", json_integer((json_int_t)orch_step_level(g, i)));
  json_object_set_new(o, "started_ms",
                      s->started_ns >= 0 ? json_real((double)s->started_ns / 1e6) : json_null());
  json_object_set_new(o, "finished_ms",
                      s->finished_ns >= 0 ? json_real((double)s->finished_ns / 1e6) : json_null());
  json_object_set_new(o, "attempts", json_integer(s->attempts));
  const orch__llm_result *r = orch__llm_step_result(s);
  if (r) {
    json_t *d = orch__llm_result_json(r);
    const char *k;
    json_t *v;
    json_object_foreach(d, k, v) if (!json_object_get(o, k)) json_object_set(o, k, v);
    json_decref(d);
  }
  if (s->error) json_object_set_new(o, "error", json_string(s->error));
  return o;
}

/* Runs a graph as part of the ask's session (the first run opens it). */
static int run_in_session(ask *a, orch_graph *g, char *err, size_t errlen) {
  if (a->session[0])
    snprintf(a->rt->resume_id, sizeof a->rt->resume_id, "%s", a->session);
  a->rt->step_base = a->next_base; /* rewards of earlier runs stay */
  a->next_base += (uint32_t)g->n;
  int rc = orch_run(a->rt, g, err, errlen);
  a->rt->step_base = 0;
  if (!a->session[0])
    snprintf(a->session, sizeof a->session, "%s", a->rt->session_id);
  for (size_t i = 0; i < g->n; i++)
    json_array_append_new(a->llm, step_json(g, (uint32_t)i));
  return rc;
}

/* One model call as a one-step graph: its text, or NULL with err set. */
static char *call(ask *a, const char *id, const char *prompt, const char *tier,
                  char *err, size_t errlen) {
  orch_graph *g = NULL;
  char *text = NULL;
  json_t *st = json_object();
  json_object_set_new(st, "id", json_string(id));
  json_object_set_new(st, "kind", json_string("llm"));
  json_object_set_new(st, "prompt", json_string(prompt));
  if (tier && *tier) json_object_set_new(st, "tier", json_string(tier));
  if (orch_graph_new(&g) ||
      orch__plan_add_step(g, st, id, err, errlen) != ORCH_OK)
    goto done;
  g->plan_meta = json_pack("{s:s, s:s, s:s}", "task_id", a->request, "agent",
                           "gap-planner", "tier", tier ? tier : "");
  int rc = run_in_session(a, g, err, errlen);
  const orch__step *s = &g->steps[0];
  if (rc == ORCH_OK && s->output) text = orch__strdup(s->output);
  else orch__err(err, errlen, ORCH_ESTEP, "%s call failed: %s", id,
                 s->error ? s->error : orch_strerror(rc));
done:
  json_decref(st);
  orch_graph_free(g);
  return text;
}

static bool should_plan(ask *a, int force, char *why, size_t whylen) {
  if (force >= 0) {
    snprintf(why, whylen, "%s", force ? "--plan" : "--no-plan");
    return force;
  }
  char err[256];
  json_t *out = hook(a, "policies.gap", "should_plan",
                     json_pack("{s:s, s:s}", "request", a->request, "tier", a->tier),
                     err, sizeof err);
  if (json_is_boolean(out)) {
    bool yes = json_is_true(out);
    snprintf(why, whylen, "gap.should_plan: %s", yes ? "plan" : "one call");
    json_decref(out);
    return yes;
  }
  json_decref(out);
  /* Fallback: plan a request of more than a dozen words. */
  size_t words = 0;
  for (const char *p = a->request; *p;) {
    while (*p == ' ' || *p == '\n' || *p == '\t') p++;
    if (!*p) break;
    words++;
    while (*p && *p != ' ' && *p != '\n' && *p != '\t') p++;
  }
  snprintf(why, whylen, "fallback (%s): %zu words", err, words);
  return words > 12;
}

static char *plan_prompt(ask *a, const char *error) {
  char err[256];
  json_t *arg = json_pack("{s:s}", "request", a->request);
  if (error) json_object_set_new(arg, "error", json_string(error));
  json_t *out = hook(a, "policies.gap", "prompt", arg, err, sizeof err);
  char *p = json_is_string(out) ? orch__strdup(json_string_value(out)) : NULL;
  json_decref(out);
  if (p) return p;
  return error ? orch__asprintf("%s%s\n\nYour previous plan could not be read: "
                                "%s\nWrite the plan again in the format above.",
                                fallback_prompt, a->request, error)
               : orch__asprintf("%s%s\n", fallback_prompt, a->request);
}

/* gap.parse(text): the tasks, or NULL with the parser's message. */
static json_t *parse_plan(ask *a, const char *text, char *err, size_t errlen) {
  json_t *out = NULL;
  if (!a->ls) {
    /* plan.c's loader reads gap.lua from the scripts directory itself */
    if (orch__gap_parse(a->rt, text, strlen(text), &out, err, errlen)) return NULL;
    return json_pack("{s:o}", "tasks", out);
  }
  orch__lstate_sync(a->ls);
  json_t *arg = json_string(text);
  int rc = orch__policy_call_result(a->ls, "policies.gap", "parse", arg, &out,
                                    err, errlen);
  json_decref(arg);
  if (rc) return NULL;
  if (!json_is_object(out) || !json_is_array(json_object_get(out, "tasks"))) {
    json_decref(out);
    orch__err(err, errlen, ORCH_ESCRIPT, "gap.parse returned no tasks");
    return NULL;
  }
  return out;
}

/* The task graph: one llm step per task, and the synthesis, which runs
 * when every task has ended, whatever their outcome. */
static int build_tasks(ask *a, json_t *tasks, orch_graph **out, char *err,
                       size_t errlen) {
  orch_graph *g = NULL;
  int rc = orch_graph_new(&g);
  if (rc) return rc;
  json_t *steps = json_array(), *all = json_array();
  size_t i;
  json_t *t;
  json_array_foreach(tasks, i, t) {
    const char *id = json_string_value(json_object_get(t, "id"));
    const char *desc = json_string_value(json_object_get(t, "description"));
    if (!id || !desc) {
      rc = orch__err(err, errlen, ORCH_EPLAN, "task %zu has no id or description", i + 1);
      goto done;
    }
    char title[300];
    snprintf(title, sizeof title, "Task %s", id);
    json_t *st = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:O}", "id", id, "kind", "llm",
                           "prompt", desc, "title", title, "request", a->request,
                           "role", "task", "deps", json_object_get(t, "deps"));
    if (!json_is_array(json_object_get(st, "deps")))
      json_object_set_new(st, "deps", json_array());
    json_array_append_new(steps, st);
    json_array_append_new(all, json_string(id));
  }
  json_t *syn = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:b}", "id", "answer",
                          "kind", "llm", "prompt", "Write the final answer.",
                          "request", a->request, "role", "synthesis", "deps",
                          all, "always", 1);
  all = NULL;
  if (a->tier[0]) json_object_set_new(syn, "tier", json_string(a->tier));
  json_array_append_new(steps, syn);
  json_array_foreach(steps, i, t) {
    char where[64];
    snprintf(where, sizeof where, "plan: task %zu", i + 1);
    if ((rc = orch__plan_add_step(g, t, where, err, errlen))) goto done;
  }
  g->plan_steps = json_incref(steps);
  g->plan_meta = json_pack("{s:s, s:s, s:s}", "task_id", a->request, "agent",
                           "gap-planner", "tier", a->tier);
  char msg[1024];
  if ((rc = orch_graph_validate(g, msg, sizeof msg))) {
    orch__err(err, errlen, rc, "plan: %s", msg);
    goto done;
  }
  *out = g;
  g = NULL;
done:
  json_decref(steps);
  json_decref(all);
  orch_graph_free(g);
  return rc;
}

static char *strip_answer(ask *a, const char *text) {
  char err[256];
  json_t *out = hook(a, "policies.gap", "answer", json_string(text), err, sizeof err);
  char *s = json_is_string(out) ? orch__strdup(json_string_value(out)) : orch__strdup(text);
  json_decref(out);
  return s;
}

/* The run's tokens and cost. A step that never called a model (skipped
 * after a failed dependency, attempts 0) adds nothing and leaves the
 * tokens known. */
static void add_totals(json_t *doc, const json_t *llm) {
  double cost = 0;
  long tin = 0, tout = 0;
  bool unknown = false, cost_unknown = false;
  size_t i;
  json_t *s;
  json_array_foreach(llm, i, s) {
    if (json_integer_value(json_object_get(s, "attempts")) == 0) continue;
    json_t *a = json_object_get(s, "tokens_in"), *b = json_object_get(s, "tokens_out"),
           *c = json_object_get(s, "cost");
    if (json_integer_value(a) < 0 || json_integer_value(b) < 0 || !a) unknown = true;
    else {
      tin += (long)json_integer_value(a);
      tout += (long)json_integer_value(b);
    }
    if (json_is_number(c)) cost += json_number_value(c);
    else cost_unknown = true;
  }
  json_object_set_new(doc, "tokens_in", json_integer(tin));
  json_object_set_new(doc, "tokens_out", json_integer(tout));
  json_object_set_new(doc, "tokens_unknown", json_boolean(unknown));
  json_object_set_new(doc, "cost", json_real(cost));
  json_object_set_new(doc, "cost_unknown", json_boolean(cost_unknown));
}

int orch_ask(orch_runtime *rt, const char *request, int plan,
             orch_plan_fn on_plan, void *ud, char **out, char *err,
             size_t errlen) {
  if (!rt || !request || !out)
    return orch__err(err, errlen, ORCH_EINVAL,
                     "orch_ask: the runtime, the request and out are needed "
                     "(one is NULL)");
  *out = NULL;
  int rc = orch__runtime_start(rt, err, errlen);
  if (rc) return rc;
  /* A request that is not UTF-8 would be a NULL JSON string in every hook
   * and prompt: its bad bytes become U+FFFD here, once. */
  char *repaired = NULL;
  size_t rlen = strlen(request), bad;
  if (!orch__utf8_valid(request, rlen, &bad)) {
    if (!(repaired = orch__utf8_repair(request, rlen)))
      return orch__err(err, errlen, ORCH_ENOMEM, "orch_ask: out of memory");
    request = repaired;
  }
  ask a = {.rt = rt, .request = request};
  char msg[2048];
  char *text = NULL, *prompt = NULL, *answer = NULL;
  json_t *parsed = NULL;
  orch_graph *g = NULL;
  if (rt->policy) a.ls = orch__lstate_new(rt->policy, msg, sizeof msg);
  a.doc = json_object();
  a.llm = json_array();
  json_object_set_new(a.doc, "request", json_string(request));
  /* The tier for the planner (and a single call). */
  json_t *tier = hook(&a, "routing.complexity", "classify",
                      json_pack("{s:s, s:s}", "title", request, "instructions", ""),
                      msg, sizeof msg);
  snprintf(a.tier, sizeof a.tier, "%s", json_is_string(tier) ? json_string_value(tier) : "");
  json_decref(tier);
  json_object_set_new(a.doc, "tier", a.tier[0] ? json_string(a.tier) : json_null());
  char why[300];
  bool planned = should_plan(&a, plan, why, sizeof why);
  json_object_set_new(a.doc, "planned", json_boolean(planned));
  json_object_set_new(a.doc, "plan_decision", json_string(why));
  if (!planned) {
    text = call(&a, "answer", request, a.tier, msg, sizeof msg);
    if (!text) {
      rc = orch__err(err, errlen, ORCH_ESTEP, "%s", msg);
      goto done;
    }
    answer = strip_answer(&a, text);
    json_object_set_new(a.doc, "observation", json_object());
    rc = ORCH_OK;
    goto finish;
  }
  /* Plan; ask once more with the parser's message when it cannot read it. */
  for (int round = 0; round < 2 && !parsed; round++) {
    free(prompt);
    prompt = plan_prompt(&a, round ? msg : NULL);
    free(text);
    char perr[1024];
    text = call(&a, round ? "replan" : "plan", prompt, a.tier, perr, sizeof perr);
    if (!text) {
      rc = orch__err(err, errlen, ORCH_ESTEP, "%s", perr);
      goto done;
    }
    json_object_set_new(a.doc, round ? "replan_text" : "plan_text", json_string(text));
    parsed = parse_plan(&a, text, msg, sizeof msg);
    if (!parsed)
      json_object_set_new(a.doc, round ? "replan_error" : "plan_error", json_string(msg));
  }
  if (!parsed) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "the planner's answer could not be read as a plan, twice: %s", msg);
    goto done;
  }
  json_t *tasks = json_object_get(parsed, "tasks");
  if ((rc = build_tasks(&a, tasks, &g, msg, sizeof msg))) {
    orch__err(err, errlen, rc, "%s", msg);
    goto done;
  }
  /* a task without dependencies has deps = {} (an empty Lua table): the
   * same empty list as the others' lists, in what is shown */
  size_t ti;
  json_t *tt;
  json_array_foreach(tasks, ti, tt) {
    json_t *d = json_object_get(tt, "deps");
    if (json_is_object(d) && json_object_size(d) == 0)
      json_object_set_new(tt, "deps", json_array());
  }
  json_t *plan_doc = json_object(), *levels = json_array();
  json_object_set(plan_doc, "think", json_object_get(parsed, "think"));
  json_object_set(plan_doc, "tasks", tasks);
  for (size_t l = 0; l < g->nlevels; l++) json_array_append_new(levels, json_array());
  for (size_t i = 0; i < g->n; i++)
    json_array_append_new(json_array_get(levels, orch_step_level(g, i)),
                          json_string(orch__step_id(g, (uint32_t)i)));
  json_object_set_new(plan_doc, "levels", levels);
  json_object_set_new(a.doc, "plan", plan_doc);
  if (on_plan) on_plan(ud, g);
  char rerr[1024] = "";
  rc = run_in_session(&a, g, rerr, sizeof rerr);
  if (rc != ORCH_OK && rc != ORCH_ESTEP && rc != ORCH_ECANCELED) {
    orch__err(err, errlen, rc, "%s", rerr);
    goto done;
  }
  /* The observation: each task's result (or how it ended). */
  json_t *obs = json_object();
  int64_t seq = 0;
  for (size_t i = 0; i + 1 < g->n; i++) {
    const orch__step *s = &g->steps[i];
    char key[300];
    snprintf(key, sizeof key, "Task %s", orch__step_id(g, (uint32_t)i));
    if (s->status == ORCH_PASSED && s->output)
      json_object_set_new(obs, key, json_string(s->output));
    else
      json_object_set_new(obs, key, json_pack("{s:s, s:s}", "status",
                                              orch_status_name(s->status), "error",
                                              s->error ? s->error : ""));
    if (s->finished_ns > s->started_ns && s->started_ns >= 0)
      seq += s->finished_ns - s->started_ns;
  }
  json_object_set_new(a.doc, "observation", obs);
  const orch__step *syn = &g->steps[g->n - 1];
  if (syn->finished_ns > syn->started_ns && syn->started_ns >= 0)
    seq += syn->finished_ns - syn->started_ns;
  json_object_set_new(a.doc, "makespan_ms", json_real((double)g->makespan_ns / 1e6));
  json_object_set_new(a.doc, "sequential_ms", json_real((double)seq / 1e6));
  if (syn->status != ORCH_PASSED || !syn->output) {
    rc = orch__err(err, errlen, ORCH_ESTEP, "the synthesis failed: %s",
                   syn->error ? syn->error : "no answer");
    goto done;
  }
  answer = strip_answer(&a, syn->output);
finish:
  json_object_set_new(a.doc, "answer", json_string(answer ? answer : ""));
done:
  json_object_set_new(a.doc, "session", json_string(a.session));
  json_object_set_new(a.doc, "steps", a.llm);
  add_totals(a.doc, a.llm);
  a.llm = NULL;
  json_object_set_new(a.doc, "status",
                      json_string(rc == ORCH_OK ? "completed"
                                  : answer ? "completed_with_failures" : "failed"));
  if (rc == ORCH_ESTEP && answer) {
    /* tasks failed, yet the answer was written from what passed */
    orch__err(err, errlen, rc, "some tasks failed; the answer names them");
  }
  *out = json_dumps(a.doc, JSON_INDENT(2));
  json_decref(a.doc);
  json_decref(parsed);
  orch_graph_free(g);
  orch__lstate_free(a.ls);
  free(text);
  free(prompt);
  free(answer);
  free(repaired);
  return rc;
}
