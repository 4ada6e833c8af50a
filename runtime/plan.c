/* plan.c turns plan files into graphs: JSON ({"steps":[...]}), Lua (a file
 * returning the same table, run in the sandbox) and GAP text (Task N: ... |
 * Dependencies: ..., parsed by scripts/policies/gap.lua). Hostile input is
 * refused early: the file size limit before reading, the nesting limit
 * before parsing, bad ids with the byte position. Uses dag.c, json.c,
 * policy.c and jansson. */
#include "orch_int.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Refuses JSON nested deeper than max, naming line and column, before
 * jansson sees it. */
static int check_depth(const char *text, size_t len, int max, const char *name,
                       char *err, size_t errlen) {
  int depth = 0;
  size_t line = 1, col = 0;
  bool in_str = false, esc = false;
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    col++;
    if (c == '\n') { line++; col = 0; }
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '{' || c == '[') {
      if (++depth > max)
        return orch__err(err, errlen, ORCH_ELIMIT,
                         "%s:%zu:%zu: JSON nested deeper than the limit of %d "
                         "(json_max_depth)",
                         name, line, col, max);
    } else if (c == '}' || c == ']') depth--;
  }
  return ORCH_OK;
}

static const char *guess_kind(json_t *obj) {
  if (json_object_get(obj, "run") || json_object_get(obj, "command"))
    return "shell";
  if (json_object_get(obj, "ms")) return "sleep";
  if (json_object_get(obj, "code")) return "lua";
  if (json_object_get(obj, "blocks") || json_object_get(obj, "file"))
    return "edit";
  if (json_object_get(obj, "prompt") || json_object_get(obj, "description"))
    return "llm";
  return NULL;
}

static const char *const common_keys[] = {
    "id", "kind", "deps", "dependencies", "cost_ms", "timeout_ms", "always",
    NULL};

/* Edit distance of a and b, capped at 3 (enough to suggest a spelling). */
static int distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 40 || lb > 40) return 3;
  int row[41];
  for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb] < 3 ? row[lb] : 3;
}

static bool in_list(const char *const *l, const char *k) {
  for (; l && *l; l++)
    if (!strcmp(*l, k)) return true;
  return false;
}

/* How close word is to c: 1 when word is a prefix of c ("timeout" for
 * "timeout_ms"), else the edit distance, capped at 3. */
static int closeness(const char *word, const char *c) {
  size_t n = strlen(word);
  return (n >= 3 && !strncmp(c, word, n)) ? 1 : distance(word, c);
}

const char *orch_closest(const char *word, const char *const *known) {
  const char *best = NULL;
  int bd = 3;
  for (const char *const *c = known; word && c && *c; c++) {
    int d = closeness(word, *c);
    if (d < bd) {
      bd = d;
      best = *c;
    }
  }
  return best;
}

/* Words other tools use for our keys: spelling does not bring "cmd" near
 * "command" (it is one edit from "cwd"). The first target the step has
 * wins. */
static const struct {
  const char *word, *to[2];
} synonyms[] = {
    {"cmd", {"command", NULL}},          {"exec", {"command", NULL}},
    {"script", {"command", "code"}},     {"shell", {"command", NULL}},
    {"depends", {"deps", NULL}},         {"depends_on", {"deps", NULL}},
    {"dependencies", {"deps", NULL}},    {"needs", {"deps", NULL}},
    {"after", {"deps", NULL}},           {"requires", {"deps", NULL}},
    {"type", {"kind", NULL}},            {"text", {"prompt", NULL}},
    {"message", {"prompt", NULL}},       {"input", {"prompt", NULL}},
    {"content", {"prompt", NULL}},       {"path", {"file", "cwd"}},
    {"dir", {"cwd", NULL}},              {"workdir", {"cwd", NULL}},
    {"duration", {"ms", "timeout_ms"}},  {"seconds", {"ms", NULL}},
    {"lua", {"code", NULL}},             {"model_tier", {"tier", NULL}},
};

/* The known key closest to k, of the common keys and the kind's, or NULL. */
static const char *suggest(const char *const *kind_keys, const char *k) {
  for (size_t i = 0; i < sizeof synonyms / sizeof *synonyms; i++) {
    if (strcmp(k, synonyms[i].word)) continue;
    for (int j = 0; j < 2 && synonyms[i].to[j]; j++) {
      const char *to = synonyms[i].to[j];
      if (in_list(kind_keys, to) || in_list(common_keys, to)) return to;
    }
  }
  const char *a = orch_closest(k, common_keys), *b = orch_closest(k, kind_keys);
  if (!a || !b) return a ? a : b;
  return closeness(k, b) < closeness(k, a) ? b : a;
}

/* The plan kind an unknown kind was probably meant to be: a misspelling,
 * or another tool's word for it. */
static const char *kind_suggest(const char *k) {
  static const char *const kinds[] = {"shell", "sleep", "lua", "llm", "edit",
                                      NULL};
  static const struct {
    const char *word, *kind;
  } words[] = {{"bash", "shell"},   {"sh", "shell"},    {"command", "shell"},
               {"cmd", "shell"},    {"exec", "shell"},  {"wait", "sleep"},
               {"delay", "sleep"},  {"model", "llm"},   {"prompt", "llm"},
               {"chat", "llm"},     {"ai", "llm"},      {"script", "lua"},
               {"code", "lua"},     {"patch", "edit"},  {"write", "edit"}};
  for (size_t i = 0; i < sizeof words / sizeof *words; i++)
    if (!strcmp(k, words[i].word)) return words[i].kind;
  return orch_closest(k, kinds);
}

/* Refuses a key neither common nor the kind's own ("_"-prefixed keys are
 * the author's notes, and ignored). */
static int check_keys(json_t *obj, const orch__kind *k, const char *at,
                      char *err, size_t errlen) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    if (key[0] == '_' || in_list(common_keys, key) || in_list(k->keys, key))
      continue;
    const char *sg = suggest(k->keys, key);
    char kl[300] = "";
    size_t o = 0;
    for (const char *const *c = k->keys; c && *c && o < sizeof kl - 40; c++)
      o += (size_t)snprintf(kl + o, sizeof kl - o, "%s%s", o ? ", " : "", *c);
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: unknown key \"%.64s\" for kind %s%s%s%s (its "
                     "keys: %s; any step's: id, kind, deps, cost_ms, "
                     "timeout_ms, always)",
                     at, key, k->name, sg ? " (did you mean \"" : "",
                     sg ? sg : "", sg ? "\"?)" : "", kl);
  }
  return ORCH_OK;
}

int orch__plan_add_step(orch_graph *g, json_t *obj, const char *where,
                        char *err, size_t errlen) {
  char at[400];
  if (!json_is_object(obj))
    return orch__err(err, errlen, ORCH_EPLAN, "%s: a step must be an object",
                     where);
  json_t *id = json_object_get(obj, "id");
  if (!json_is_string(id))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a step needs \"id\", a string", where);
  const char *ids = json_string_value(id);
  size_t idlen = json_string_length(id);
  json_t *kj = json_object_get(obj, "kind");
  const char *kname = json_is_string(kj) ? json_string_value(kj) : NULL;
  if (kj && !kname)
    return orch__err(err, errlen, ORCH_EPLAN, "%s: \"kind\" must be a string",
                     where);
  if (!kname) kname = guess_kind(obj);
  if (!kname)
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: step '%.256s' has no \"kind\" (shell, sleep, lua, "
                     "llm, edit)",
                     where, ids);
  int kind = orch__kind_by_name(kname);
  if (kind < 0) {
    const char *sg = kind_suggest(kname);
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: step '%.256s' has unknown kind '%.64s'%s%s%s "
                     "(shell, sleep, lua, llm, edit)",
                     where, ids, kname, sg ? " (did you mean '" : "",
                     sg ? sg : "", sg ? "'?)" : "");
  }
  char msg[400];
  snprintf(at, sizeof at, "%s ('%.256s')", where, ids);
  int rc = check_keys(obj, orch__kinds[kind], at, err, errlen);
  if (rc) return rc;
  /* The kind's fields and the common ones are read into the added step;
   * a failure on the way takes the step out again, with its id, edges and
   * parameters: the caller's graph is as before the call. */
  orch__graph_mark mark = orch__graph_mark_now(g);
  uint32_t idx;
  rc = orch__graph_add(g, ids, idlen, kind, &idx, msg, sizeof msg);
  if (rc) return orch__err(err, errlen, rc, "%s: %s", where, msg);
  orch__step *s = &g->steps[idx];
  rc = orch__kinds[kind]->parse(g, s, obj, at, err, errlen);
  if (rc) {
    if (rc == ORCH_ENOMEM) orch__err(err, errlen, rc, "%s: out of memory", at);
    goto done;
  }
  json_t *deps = json_object_get(obj, "deps");
  if (!deps) deps = json_object_get(obj, "dependencies");
  if (json_is_object(deps) && json_object_size(deps) == 0)
    deps = NULL; /* an empty Lua table encodes as {} */
  if (deps && !json_is_array(deps) && !json_is_null(deps)) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "%s: \"deps\" must be a list of step ids", at);
    goto done;
  }
  size_t i;
  json_t *d;
  json_array_foreach(deps, i, d) {
    if (!json_is_string(d)) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"deps\"[%zu] must be a step id string", at, i);
      goto done;
    }
    rc = orch__check_id(json_string_value(d), json_string_length(d), msg,
                        sizeof msg);
    if (rc) {
      orch__err(err, errlen, rc, "%s: dependency: %s", at, msg);
      goto done;
    }
    if ((rc = orch__graph_depend_idx(g, idx, json_string_value(d),
                                     json_string_length(d)))) {
      orch__err(err, errlen, rc, "%s: dependency: %s", at, orch_strerror(rc));
      goto done;
    }
  }
  json_t *cost = json_object_get(obj, "cost_ms");
  if (cost) {
    if (!json_is_number(cost) || !(json_number_value(cost) >= 0 &&
                                   json_number_value(cost) <= ORCH__SLEEP_MAX_MS)) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"cost_ms\" must be a number from 0 to %.0f (30 days)",
                     at, ORCH__SLEEP_MAX_MS);
      goto done;
    }
    s->cost = (float)json_number_value(cost);
    s->flags |= ORCH__SF_HAS_COST;
  }
  json_t *always = json_object_get(obj, "always");
  if (always) {
    if (!json_is_boolean(always)) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"always\" must be true or false", at);
      goto done;
    }
    if (json_is_true(always)) s->flags |= ORCH__SF_ALWAYS;
  }
  json_t *tmo = json_object_get(obj, "timeout_ms");
  if (tmo) {
    if (!json_is_number(tmo) || !(json_number_value(tmo) >= 0 &&
                                  json_number_value(tmo) <= ORCH__SLEEP_MAX_MS)) {
      rc = orch__err(err, errlen, ORCH_EPLAN,
                     "%s: \"timeout_ms\" must be a number from 0 to %.0f (30 "
                     "days; 0: none)",
                     at, ORCH__SLEEP_MAX_MS);
      goto done;
    }
    s->timeout_ms = (float)json_number_value(tmo);
  }
done:
  if (rc) orch__graph_undo(g, &mark);
  return rc;
}

int orch_graph_add_json(orch_graph *g, const char *step_json, char *err,
                        size_t errlen) {
  if (!g || !step_json)
    return orch__err(err, errlen, ORCH_EINVAL,
                     "orch_graph_add_json: the graph and the step JSON are "
                     "needed (one is NULL)");
  json_error_t je;
  json_t *obj = json_loads(step_json, 0, &je);
  if (!obj)
    return orch__err(err, errlen, ORCH_EPLAN, "step JSON:%d:%d: %s", je.line,
                     je.column, je.text);
  int rc = orch__plan_add_step(g, obj, "step", err, errlen);
  json_decref(obj);
  return rc;
}

/* Builds a graph from {"steps": [...]} (a JSON document or a Lua table). */
static int from_doc(json_t *doc, const char *name, orch_graph **out,
                    char *err, size_t errlen) {
  int rc = ORCH_OK;
  orch_graph *g = NULL;
  json_t *steps = json_is_array(doc) ? doc : json_object_get(doc, "steps");
  /* An empty Lua table encodes as {}: the same empty list. */
  if (json_is_object(steps) && json_object_size(steps) == 0) steps = NULL;
  if (!steps && json_is_object(doc) && json_object_get(doc, "steps"))
    return orch__err(err, errlen, ORCH_EPLAN, "%s: empty graph: no steps",
                     name);
  if (!json_is_array(steps))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a plan needs \"steps\", a list of steps", name);
  if ((rc = orch_graph_new(&g)))
    return orch__err(err, errlen, rc, "%s: out of memory", name);
  size_t i;
  json_t *st;
  json_array_foreach(steps, i, st) {
    char where[300];
    snprintf(where, sizeof where, "%s: step %zu", name, i + 1);
    if ((rc = orch__plan_add_step(g, st, where, err, errlen))) goto done;
  }
  g->plan_steps = json_incref(steps);
  if (json_is_object(doc)) {
    json_t *meta = json_deep_copy(doc);
    json_object_del(meta, "steps");
    g->plan_meta = meta;
  }
  char msg[1024];
  if ((rc = orch_graph_validate(g, msg, sizeof msg))) {
    orch__err(err, errlen, rc, "%s: %s", name, msg);
    goto done;
  }
  *out = g;
  g = NULL;
done:
  orch_graph_free(g);
  return rc;
}

static int parse_json(orch_runtime *rt, const char *text, size_t len,
                      const char *name, orch_graph **out, char *err,
                      size_t errlen) {
  int maxd = rt ? rt->cfg.json_max_depth : 64;
  int rc = check_depth(text, len, maxd, name, err, errlen);
  if (rc) return rc;
  json_error_t je;
  json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
  if (!doc)
    return orch__err(err, errlen, ORCH_EPLAN, "%s:%d:%d: %s (byte %d)%s", name,
                     je.line, je.column, je.text, je.position,
                     strstr(je.text, "unable to decode byte")
                         ? ": invalid UTF-8"
                         : "");
  rc = from_doc(doc, name, out, err, errlen);
  json_decref(doc);
  return rc;
}

static int parse_lua(orch_runtime *rt, const char *text, size_t len,
                     const char *name, orch_graph **out, char *err,
                     size_t errlen) {
  orch__config defaults;
  const orch__config *cfg = rt ? &rt->cfg : NULL;
  if (!cfg) {
    orch__config_defaults(&defaults);
    cfg = &defaults;
  }
  int rc = ORCH_OK;
  json_t *doc = NULL;
  char msg[1024];
  lua_State *L = orch__lua_new_sandbox(cfg, msg, sizeof msg);
  if (!L) {
    rc = orch__err(err, errlen, ORCH_ENOMEM, "%s: %s", name, msg);
    goto done;
  }
  char chunk[300];
  snprintf(chunk, sizeof chunk, "@%s", name);
  if (luaL_loadbufferx(L, text, len, chunk, "t") != LUA_OK) {
    rc = orch__err(err, errlen, ORCH_EPLAN, "%s", lua_tostring(L, -1));
    goto done;
  }
  if (orch__lua_pcall(L, 0, 1, msg, sizeof msg)) {
    rc = orch__err(err, errlen, ORCH_EPLAN, "%s: %s", name, msg);
    goto done;
  }
  if (!lua_istable(L, -1)) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "%s: a Lua plan must return a table, it returned a %s",
                   name, luaL_typename(L, -1));
    goto done;
  }
  doc = orch__lua_to_json(L, -1, cfg->json_max_depth, msg, sizeof msg);
  if (!doc) {
    rc = orch__err(err, errlen, ORCH_EPLAN, "%s: %s", name, msg);
    goto done;
  }
  rc = from_doc(doc, name, out, err, errlen);
done:
  json_decref(doc);
  orch__lua_close(L);
  if (cfg == &defaults) orch__config_deinit(&defaults);
  return rc;
}

static int parse_gap(orch_runtime *rt, const char *text, size_t len,
                     const char *name, orch_graph **out, char *err,
                     size_t errlen) {
  char msg[1024];
  json_t *tasks = NULL, *doc = NULL;
  int rc = orch__gap_parse(rt, text, len, &tasks, msg, sizeof msg);
  if (rc) return orch__err(err, errlen, rc, "%s: %s", name, msg);
  doc = json_object();
  json_t *steps = json_array();
  json_object_set_new(doc, "steps", steps);
  size_t i;
  json_t *t;
  json_array_foreach(tasks, i, t) {
    json_t *st = json_object();
    json_object_set(st, "id", json_object_get(t, "id"));
    json_object_set_new(st, "kind", json_string("llm"));
    json_object_set(st, "prompt", json_object_get(t, "description"));
    json_t *deps = json_object_get(t, "deps");
    if (json_is_array(deps)) json_object_set(st, "deps", deps);
    else json_object_set_new(st, "deps", json_array()); /* {} from Lua */
    json_array_append_new(steps, st);
  }
  json_object_set_new(doc, "format", json_string("gap"));
  rc = from_doc(doc, name, out, err, errlen);
  json_decref(doc);
  json_decref(tasks);
  return rc;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

int orch_graph_parse(orch_runtime *rt, const char *text, size_t len,
                     const char *name, orch_graph **out, char *err,
                     size_t errlen) {
  if (!text || !out)
    return orch__err(err, errlen, ORCH_EINVAL,
                     "orch_graph_parse: the text and out are needed (one is "
                     "NULL)");
  if (!name) name = "plan";
  size_t max = rt ? rt->cfg.plan_max_bytes : (16u << 20);
  if (len > max)
    return orch__err(err, errlen, ORCH_ELIMIT,
                     "%s: plan of %zu bytes is over the limit of %zu bytes "
                     "(plan_max_bytes)",
                     name, len, max);
  /* a UTF-8 byte order mark (editors on Windows write one) is no part of
   * the plan: without this a JSON plan was read as GAP text */
  if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) {
    text += 3;
    len -= 3;
  }
  size_t i = 0;
  while (i < len && isspace((unsigned char)text[i])) i++;
  if (i < len && (text[i] == '{' || text[i] == '['))
    return parse_json(rt, text, len, name, out, err, errlen);
  if (ends_with(name, ".lua") || (len - i >= 6 && strncmp(text + i, "return", 6) == 0) ||
      (len - i >= 2 && strncmp(text + i, "--", 2) == 0))
    return parse_lua(rt, text, len, name, out, err, errlen);
  if (memchr(text, '\0', len))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a NUL byte at byte %zu: not a text plan", name,
                     (size_t)((const char *)memchr(text, '\0', len) - text));
  size_t bad;
  if (!orch__utf8_valid(text, len, &bad))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: not valid UTF-8 at byte %zu", name, bad);
  return parse_gap(rt, text, len, name, out, err, errlen);
}

int orch_graph_load(orch_runtime *rt, const char *path, orch_graph **out,
                    char *err, size_t errlen) {
  if (!path || !out)
    return orch__err(err, errlen, ORCH_EINVAL,
                     "orch_graph_load: the path and out are needed (one is "
                     "NULL)");
  char *text = NULL;
  size_t len = 0;
  size_t max = rt ? rt->cfg.plan_max_bytes : (16u << 20);
  int rc = orch__read_file(path, max, &text, &len, err, errlen);
  if (rc) return rc;
  rc = orch_graph_parse(rt, text, len, path, out, err, errlen);
  free(text);
  return rc;
}

int orch__gap_parse(orch_runtime *rt, const char *text, size_t len,
                    json_t **tasks, char *err, size_t errlen) {
  orch__config defaults;
  const orch__config *cfg = rt ? &rt->cfg : NULL;
  if (!cfg) {
    orch__config_defaults(&defaults);
    cfg = &defaults;
  }
  int rc = ORCH_OK;
  char msg[1024];
  json_t *arg = NULL, *out = NULL;
  orch__lstate *ls = NULL;
  /* The runtime's engine when it runs, else one for this parse: the same
   * sandbox and the same scripts either way. */
  orch__policy *own = NULL, *p = rt ? rt->policy : NULL;
  if (!p && (rc = orch__policy_new(&own, cfg, msg, sizeof msg))) {
    orch__err(err, errlen, rc, "%s", msg);
    goto done;
  }
  if (!p) p = own;
  if (!(ls = orch__lstate_new(p, msg, sizeof msg))) {
    rc = orch__err(err, errlen, ORCH_ESCRIPT, "%s", msg);
    goto done;
  }
  arg = json_stringn(text, len);
  rc = orch__policy_call_result(ls, "policies.gap", "parse", arg, &out, msg,
                                sizeof msg);
  if (rc) {
    orch__err(err, errlen, rc, "%s", msg);
    goto done;
  }
  json_t *t = json_is_object(out) ? json_object_get(out, "tasks") : out;
  if (!json_is_array(t)) {
    rc = orch__err(err, errlen, ORCH_ESCRIPT, "gap.parse returned no list of tasks");
    goto done;
  }
  *tasks = json_incref(t);
done:
  json_decref(arg);
  json_decref(out);
  orch__lstate_free(ls);
  orch__policy_free(own);
  if (cfg == &defaults) orch__config_deinit(&defaults);
  return rc;
}
