/* runtime.c provides the runtime handle: it reads the configuration, and on
 * the first run starts the subsystems (the event loop, the worker pool) and
 * wires them; orch_runtime_free stops them in the reverse order. It also
 * holds the table of step kinds: a new kind is a new file and a line here.
 * Uses config.c, loop.c, pool.c and sched.c. */
#include "orch_int.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const orch__kind *const orch__kinds[ORCH__NKINDS] = {
    [ORCH__KIND_FN] = &orch__kind_fn,       [ORCH__KIND_HOSTFN] = &orch__kind_hostfn,
    [ORCH__KIND_SLEEP] = &orch__kind_sleep, [ORCH__KIND_SHELL] = &orch__kind_shell,
    [ORCH__KIND_LUA] = &orch__kind_lua,     [ORCH__KIND_LLM] = &orch__kind_llm,
    [ORCH__KIND_EDIT] = &orch__kind_edit,
};

int orch__kind_by_name(const char *name) {
  for (int i = 0; i < ORCH__NKINDS; i++)
    if (orch__kinds[i] && orch__kinds[i]->parse &&
        strcmp(orch__kinds[i]->name, name) == 0)
      return i;
  return -1;
}

int orch_runtime_new(orch_runtime **out, const char *config_file, char *err,
                     size_t errlen) {
  orch_runtime *rt = calloc(1, sizeof *rt);
  if (!rt) return ORCH_ENOMEM;
  orch__config_defaults(&rt->cfg);
  pthread_mutex_init(&rt->mu, NULL);
  const char *path = config_file;
  if (!path) path = getenv("ORCH_CONFIG");
  if (path && !*path) path = NULL;
  if (!path && access("orchestrate.conf.lua", F_OK) == 0)
    path = "orchestrate.conf.lua";
  if (path) {
    int rc = orch__config_load(&rt->cfg, path, err, errlen);
    char msg[512];
    /* The model tiers are checked now, not at the first llm step. */
    if (!rc && rt->cfg.sections &&
        orch__llm_config_check(rt->cfg.sections, msg, sizeof msg))
      rc = orch__err(err, errlen, ORCH_ECONFIG, "%s: %s", path, msg);
    if (rc) {
      orch_runtime_free(rt);
      return rc;
    }
  }
  *out = rt;
  return ORCH_OK;
}

/* The settings copied into the subsystems as the runtime starts: the pool
 * (workers), the store (db, db_default), the policy engine and the Lua
 * states it and the workers make (scripts_dir, lua_budget, lua_mem_max,
 * json_max_depth). A change after the start would do nothing, or half (a
 * Lua plan parsed later would see a budget the steps never do), so it is
 * refused. The others are read by each run, step or parse. */
static const char *const start_keys[] = {
    "workers",    "db",          "db_default",     "scripts_dir",
    "lua_budget", "lua_mem_max", "json_max_depth",
};

int orch_runtime_set(orch_runtime *rt, const char *key, const char *value,
                     char *err, size_t errlen) {
  if (!rt || !key || !value) return ORCH_EINVAL;
  if (rt->started)
    for (size_t i = 0; i < ORCH__ARRAY_LEN(start_keys); i++)
      if (strcmp(key, start_keys[i]) == 0)
        return orch__err(err, errlen, ORCH_ESTATE,
                         "'%s' is read when the runtime starts: set it before "
                         "the first run",
                         key);
  if (strcmp(key, "db_default") == 0) {
    free(rt->db_default);
    rt->db_default = orch__strdup(value);
    return ORCH_OK;
  }
  if (strcmp(key, "db") == 0) {
    free(rt->db_url);
    rt->db_url = *value ? orch__strdup(value) : NULL;
    return ORCH_OK;
  }
  if (strcmp(key, "dry_run") == 0) {
    rt->dry_run = strcmp(value, "0") != 0 && strcmp(value, "false") != 0;
    return ORCH_OK;
  }
  return orch__config_set(&rt->cfg, key, value, err, errlen);
}

void orch_runtime_on_progress(orch_runtime *rt, orch_progress_fn fn, void *ud,
                              unsigned interval_ms) {
  if (!rt) return;
  rt->progress = fn;
  rt->progress_ud = ud;
  rt->progress_ms = interval_ms;
}

static void cancel_cb(uv_async_t *a) { orch__sched_cancel(a->data); }

typedef struct {
  orch_runtime *rt;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} sync_call;

static void init_on_loop(void *arg) {
  sync_call *sc = arg;
  orch_runtime *rt = sc->rt;
  uv_async_init(orch__loop_uv(rt->loop), &rt->cancel_async, cancel_cb);
  rt->cancel_async.data = rt;
  atomic_store(&rt->cancel_ready, true);
  /* hot reload of the scripts: watches on this loop, checks on the
   * engine's own thread */
  orch__policy_watch(rt->policy, orch__loop_uv(rt->loop));
  pthread_mutex_lock(&sc->mu);
  sc->done = true;
  pthread_cond_signal(&sc->cv);
  pthread_mutex_unlock(&sc->mu);
}

static int cores(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* The store's URL: the "db" setting (--db), else ORCH_DB, else the
 * config's store.url, else "db_default" (the CLI's file). */
static const char *store_url(const orch_runtime *rt) {
  if (rt->db_url) return rt->db_url;
  const char *env = getenv("ORCH_DB");
  if (env && *env) return env;
  json_t *st = rt->cfg.sections ? json_object_get(rt->cfg.sections, "store") : NULL;
  json_t *url = st ? json_object_get(st, "url") : NULL;
  if (json_is_string(url)) return json_string_value(url);
  return rt->db_default;
}

const char *orch_runtime_scripts_dir(const orch_runtime *rt) {
  return rt && rt->cfg.scripts_dir ? rt->cfg.scripts_dir : "scripts";
}

int orch_runtime_max_parallel(const orch_runtime *rt) {
  return rt && rt->cfg.max_parallel > 0 ? rt->cfg.max_parallel : 0;
}

const char *orch_runtime_store_url(const orch_runtime *rt) {
  const char *url = rt ? store_url(rt) : NULL;
  return url && strcmp(url, "none") != 0 ? url : NULL;
}

/* Records what the policy engine did to a script (orch_script_events), so
 * `orchestrate status` in another shell shows a refused reload. */
static void on_script_event(void *ud, const char *module, const char *file,
                            unsigned gen, const char *error) {
  orch_runtime *rt = ud;
  if (!rt->store) return;
  char host[128] = "", who[160], abs[PATH_MAX];
  gethostname(host, sizeof host - 1);
  snprintf(who, sizeof who, "%s:%ld", host, (long)getpid());
  orch__rec rec;
  memset(&rec, 0, sizeof rec);
  rec.type = ORCH__REC_SCRIPT_EVENT;
  rec.u.script_event.runtime = who;
  rec.u.script_event.module = module;
  rec.u.script_event.file = realpath(file, abs) ? abs : file;
  rec.u.script_event.generation = (int32_t)gen;
  rec.u.script_event.outcome = error ? "refused" : "loaded";
  rec.u.script_event.error = error;
  orch__store_put(rt->store, &rec);
}

static int open_store(orch_runtime *rt, char *err, size_t errlen) {
  const char *url = store_url(rt);
  if (!url || rt->store || strcmp(url, "none") == 0) return ORCH_OK;
  orch__store_opts o = {0};
  char msg[512];
  int rc = orch__store_open(&rt->store, url, &o, msg, sizeof msg);
  /* a bad address, or a file that is not a database, is the operator's to
   * fix (ECONFIG); a spool that cannot be made stays a store error */
  if (rc)
    return orch__err(err, errlen, rc == ORCH_ECONFIG ? ORCH_ECONFIG : ORCH_ESTORE,
                     "store: %s", msg);
  orch__policy_set_events(rt->policy, on_script_event, rt);
  return ORCH_OK;
}

const char *orch_runtime_session(const orch_runtime *rt) {
  return rt ? rt->session_id : "";
}

int orch_runtime_resume(orch_runtime *rt, const char *session_id,
                        orch_graph **out, char *err, size_t errlen) {
  int rc;
  orch__session_info si;
  memset(&si, 0, sizeof si);
  orch_graph *g = NULL;
  char *doc = NULL;
  char msg[1024];
  if (!rt || !session_id || !out) return ORCH_EINVAL;
  if ((rc = orch__runtime_start(rt, err, errlen))) return rc;
  if (!rt->store)
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "resume needs a store (--db, ORCH_DB or store.url; not "
                     "none)");
  /* Records of the interrupted run may still be queued: write them first. */
  orch__store_flush(rt->store, 5000);
  rc = orch__store_session_summary(rt->store, session_id, &si, msg, sizeof msg);
  if (rc) { /* the store's message names the session */
    orch__err(err, errlen, rc, "%s", msg);
    goto done;
  }
  if (!si.steps_json || !*si.steps_json) {
    rc = orch__err(err, errlen, ORCH_EPLAN,
                   "session %s has no recorded plan to resume", session_id);
    goto done;
  }
  /* The store took the id in any case; its records use lowercase. */
  char sid[sizeof rt->resume_id];
  snprintf(sid, sizeof sid, "%s", session_id);
  for (char *c = sid; *c; c++)
    if (*c >= 'A' && *c <= 'F') *c = (char)(*c - 'A' + 'a');
  doc = orch__asprintf("{\"steps\":%s}", si.steps_json);
  if (!doc) { rc = ORCH_ENOMEM; goto done; }
  char name[64];
  snprintf(name, sizeof name, "session %.36s", sid);
  if ((rc = orch_graph_parse(rt, doc, strlen(doc), name, &g, err, errlen)))
    goto done;
  /* What the session row says beside the steps (sched.c record_session
   * reads it from the plan): as recorded, not the defaults. */
  json_t *meta = json_object();
  if (!meta) { rc = ORCH_ENOMEM; goto done; }
  if (si.task_id) json_object_set_new(meta, "task_id", json_string(si.task_id));
  if (si.jr_name) json_object_set_new(meta, "agent", json_string(si.jr_name));
  if (si.model_tier) json_object_set_new(meta, "tier", json_string(si.model_tier));
  json_decref((json_t *)g->plan_meta);
  g->plan_meta = meta;
  size_t npassed = 0;
  if ((rc = orch__store_resume_mark(rt->store, sid, g, &npassed, msg,
                                    sizeof msg))) {
    orch__err(err, errlen, rc, "session %s: %s", sid, msg);
    goto done;
  }
  snprintf(rt->resume_id, sizeof rt->resume_id, "%s", sid);
  /* the total goes on from the session's earlier runs: the steps restored
   * as passed made no call in this process and report no usage */
  rt->resume_tokens = si.total_tokens > 0 ? si.total_tokens : 0;
  *out = g;
  g = NULL;
done:
  free(doc);
  orch_graph_free(g);
  orch__session_info_deinit(&si);
  return rc;
}

int orch_status_json(const char *db, const char *session_id, char **out,
                     char *err, size_t errlen) {
  return orch__store_status_json(db, session_id, out, err, errlen);
}

void orch_free(void *p) { free(p); }

int orch_runtime_flush(orch_runtime *rt, unsigned timeout_ms) {
  if (!rt || !rt->store) return ORCH_OK;
  return orch__store_flush(rt->store, timeout_ms);
}

/* Messages quote what failed: a script's bytes, a database's words, a
 * path, and may be cut inside a character. json_pack refuses invalid UTF-8
 * (and with it the whole section), so each string is repaired first. */
static int set_section(json_t *doc, const char *key, json_t *section) {
  return section ? json_object_set_new(doc, key, section) : -1;
}

char *orch_runtime_stats(orch_runtime *rt) {
  if (!rt) return NULL;
  char *txt = NULL, *last_error = NULL, *last_drop = NULL, *script_error = NULL;
  json_t *doc = json_object();
  if (!doc) goto done;
  if (rt->store) {
    orch__store_stats st;
    orch__store_stats_get(rt->store, &st);
    last_error = orch__utf8_repair(st.last_error, strlen(st.last_error));
    last_drop = orch__utf8_repair(st.last_drop, strlen(st.last_drop));
    if (!last_error || !last_drop) goto done;
    if (set_section(doc, "store", json_pack(
        "{s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:s}",
        "backend", st.backend, "connected", st.connected,
        "queued", (json_int_t)st.queued, "written", (json_int_t)st.written,
        "spooled", (json_int_t)st.spooled, "replayed", (json_int_t)st.replayed,
        "rejected", (json_int_t)st.rejected,
        "records_dropped_total", (json_int_t)st.records_dropped_total,
        "spool_bytes", (json_int_t)st.spool_bytes, "last_error", last_error,
        "last_drop", last_drop)))
      goto done;
  }
  char err[512] = "";
  unsigned gen = rt->policy ? orch_runtime_scripts(rt, err, sizeof err) : 0;
  if (!(script_error = orch__utf8_repair(err, strlen(err)))) goto done;
  if (set_section(doc, "scripts", json_pack("{s:i, s:s}", "generation", (int)gen,
                                            "last_error", script_error)))
    goto done;
  txt = json_dumps(doc, JSON_COMPACT);
done:
  free(last_error);
  free(last_drop);
  free(script_error);
  json_decref(doc);
  return txt;
}

static void close_on_loop(void *arg);
static void runtime_stop(orch_runtime *rt);

int orch__runtime_start(orch_runtime *rt, char *err, size_t errlen) {
  int rc = ORCH_OK;
  pthread_mutex_lock(&rt->mu);
  if (rt->started) goto done;
  if ((rc = orch__loop_new(&rt->loop))) {
    orch__err(err, errlen, rc, "cannot start the event loop");
    goto done;
  }
  if ((rc = orch__policy_new(&rt->policy, &rt->cfg, err, errlen))) goto done;
  sync_call sc = {.rt = rt, .done = false};
  pthread_mutex_init(&sc.mu, NULL);
  pthread_cond_init(&sc.cv, NULL);
  orch__loop_call(rt->loop, init_on_loop, &sc);
  pthread_mutex_lock(&sc.mu);
  while (!sc.done) pthread_cond_wait(&sc.cv, &sc.mu);
  pthread_mutex_unlock(&sc.mu);
  pthread_mutex_destroy(&sc.mu);
  pthread_cond_destroy(&sc.cv);
  if ((rc = open_store(rt, err, errlen))) goto done;
  int n = rt->cfg.workers > 0 ? rt->cfg.workers : cores();
  if ((rc = orch__pool_new(&rt->pool, rt, n, err, errlen))) goto done;
  rt->started = true;
done:
  /* A start that failed is undone, so that the next run starts afresh
   * rather than beside a second loop and engine. */
  if (rc) runtime_stop(rt);
  pthread_mutex_unlock(&rt->mu);
  return rc;
}

static void close_on_loop(void *arg) {
  orch_runtime *rt = arg;
  /* Set by init_on_loop: false when a start failed before it. */
  if (atomic_load(&rt->cancel_ready)) {
    atomic_store(&rt->cancel_ready, false);
    uv_close((uv_handle_t *)&rt->cancel_async, NULL);
  }
  orch__policy_unwatch(rt->policy);
}

/* Stops what orch__runtime_start started, in the reverse order; each part
 * may be missing. */
static void runtime_stop(orch_runtime *rt) {
  orch__pool_free(rt->pool); /* workers first: they post to the loop */
  if (rt->loop) {
    orch__loop_call(rt->loop, close_on_loop, rt);
    orch__loop_free(rt->loop);
  }
  orch__lstate_free(rt->loop_ls); /* the loop is gone: no one uses it */
  orch__policy_free(rt->policy); /* after the loop: unwatched there */
  orch__store_close(rt->store); /* flushes what the run recorded */
  rt->pool = NULL;
  rt->loop = NULL;
  rt->loop_ls = NULL;
  rt->policy = NULL;
  rt->store = NULL;
  rt->started = false;
}

void orch_runtime_free(orch_runtime *rt) {
  if (!rt) return;
  runtime_stop(rt);
  free(rt->db_url);
  free(rt->db_default);
  orch__config_deinit(&rt->cfg);
  pthread_mutex_destroy(&rt->mu);
  free(rt);
}
