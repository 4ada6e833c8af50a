/* runtime.c provides the runtime handle: it reads the configuration, and on
 * the first run starts the subsystems (the event loop, the worker pool) and
 * wires them; orch_runtime_free stops them in the reverse order. It also
 * holds the table of step kinds: a new kind is a new file and a line here.
 * Uses config.c, loop.c, pool.c and sched.c. */
#include "orch_int.h"

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
    if (rc) {
      orch_runtime_free(rt);
      return rc;
    }
  }
  *out = rt;
  return ORCH_OK;
}

int orch_runtime_set(orch_runtime *rt, const char *key, const char *value,
                     char *err, size_t errlen) {
  if (!rt || !key || !value) return ORCH_EINVAL;
  if (rt->started && (strcmp(key, "workers") == 0))
    return orch__err(err, errlen, ORCH_ESTATE,
                     "'workers' cannot change after the first run");
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
  pthread_mutex_lock(&sc->mu);
  sc->done = true;
  pthread_cond_signal(&sc->cv);
  pthread_mutex_unlock(&sc->mu);
}

static int cores(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

int orch__runtime_start(orch_runtime *rt, char *err, size_t errlen) {
  int rc = ORCH_OK;
  pthread_mutex_lock(&rt->mu);
  if (rt->started) goto done;
  if ((rc = orch__loop_new(&rt->loop))) {
    orch__err(err, errlen, rc, "cannot start the event loop");
    goto done;
  }
  sync_call sc = {.rt = rt, .done = false};
  pthread_mutex_init(&sc.mu, NULL);
  pthread_cond_init(&sc.cv, NULL);
  orch__loop_call(rt->loop, init_on_loop, &sc);
  pthread_mutex_lock(&sc.mu);
  while (!sc.done) pthread_cond_wait(&sc.cv, &sc.mu);
  pthread_mutex_unlock(&sc.mu);
  pthread_mutex_destroy(&sc.mu);
  pthread_cond_destroy(&sc.cv);
  int n = rt->cfg.workers > 0 ? rt->cfg.workers : cores();
  if ((rc = orch__pool_new(&rt->pool, rt, n, err, errlen))) goto done;
  rt->started = true;
done:
  pthread_mutex_unlock(&rt->mu);
  return rc;
}

static void close_on_loop(void *arg) {
  orch_runtime *rt = arg;
  atomic_store(&rt->cancel_ready, false);
  uv_close((uv_handle_t *)&rt->cancel_async, NULL);
}

void orch_runtime_free(orch_runtime *rt) {
  if (!rt) return;
  orch__pool_free(rt->pool); /* workers first: they post to the loop */
  if (rt->loop) {
    orch__loop_call(rt->loop, close_on_loop, rt);
    orch__loop_free(rt->loop);
  }
  orch__config_deinit(&rt->cfg);
  pthread_mutex_destroy(&rt->mu);
  free(rt);
}
