/* sched.c provides the run: dependency counters, the ready queue, dispatch,
 * failure propagation, cancellation and the in-flight limit. A step starts
 * the moment its last dependency finishes; there are no level barriers. With
 * an in-flight limit, ready steps go through a heap ordered by their longest
 * remaining path (critical path first), and free slots are filled from it
 * once all the steps a round released are in. All of a run's state changes
 * on the loop thread (libuv's work/done split): workers and the host thread
 * only post completions, with one exception for speed: a worker step that
 * passed and whose dependents all run on workers is completed by the worker
 * itself (see run_workers), so a chain of C steps needs no round trip
 * through the loop. Step status and dependency counters are therefore
 * changed with atomic operations. Uses dag.c, pool.c, loop.c and the step
 * kinds' table; it knows no kind by name. */
#include "orch_int.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NONE UINT32_MAX

int64_t orch__run_now(const orch__run *r) { return orch__now_ns() - r->t0_ns; }

static int push_u32(uint32_t **a, size_t *n, size_t *cap, uint32_t v) {
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 256;
    uint32_t *na = realloc(*a, ncap * sizeof *na);
    if (!na) return ORCH_ENOMEM;
    *a = na;
    *cap = ncap;
  }
  (*a)[(*n)++] = v;
  return ORCH_OK;
}

/* Status and dependency counters are shared with workers that complete
 * steps themselves (run_workers): read and change them atomically. */
static uint8_t status_of(const orch__step *s) {
  return __atomic_load_n(&s->status, __ATOMIC_ACQUIRE);
}

/* PENDING -> to, if nobody else moved the step first. */
static bool claim(orch__step *s, uint8_t to) {
  uint8_t expect = ORCH_PENDING;
  return __atomic_compare_exchange_n(&s->status, &expect, to, false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* One dependency of step v finished; true when it was the last. */
static bool dep_done(orch__run *r, uint32_t v) {
  return __atomic_sub_fetch(&r->npend[v], 1, __ATOMIC_ACQ_REL) == 0;
}

/* The latest finish time seen (the makespan), kept as steps finish. */
static void note_finish(orch__run *r, int64_t t) {
  long long cur = atomic_load(&r->last_ns);
  while (t > cur && !atomic_compare_exchange_weak(&r->last_ns, &cur, t)) {
  }
}

/* ---- the ready heap (max on bottom level, then lower index) ------------ */

static bool before(const orch_graph *g, uint32_t a, uint32_t b) {
  if (!g->bottom) return a < b; /* no memory for them: index order */
  double x = g->bottom[a], y = g->bottom[b];
  return x > y || (x == y && a < b);
}

static void heap_push(orch__run *r, uint32_t v) {
  orch_graph *g = r->g;
  size_t i = r->nheap++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(g, v, r->heap[parent])) break;
    r->heap[i] = r->heap[parent];
    i = parent;
  }
  r->heap[i] = v;
}

static uint32_t heap_pop(orch__run *r) {
  orch_graph *g = r->g;
  uint32_t top = r->heap[0], v = r->heap[--r->nheap];
  size_t i = 0, n = r->nheap;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && before(g, r->heap[c + 1], r->heap[c])) c++;
    if (!before(g, r->heap[c], v)) break;
    r->heap[i] = r->heap[c];
    i = c;
  }
  if (n) r->heap[i] = v;
  return top;
}

/* ---- recording ------------------------------------------------------------ */

/* Hands the step's current state to the store's queue; never waits. */
static void record(orch__run *r, uint32_t v) {
  orch_runtime *rt = r->rt;
  if (rt->store)
    orch__store_record_step(rt->store, rt->session_id, r->g, v, rt->t0_wall_ms);
}

/* rewards/step.lua scores a finished step; the score (or the script's
 * error, never a made-up number) goes to jr_step_rewards. Loop thread. */
static void reward(orch__run *r, uint32_t v) {
  orch_runtime *rt = r->rt;
  if (!rt->store || !rt->policy) return;
  if (!rt->loop_ls) {
    rt->loop_ls = orch__lstate_new(rt->policy, NULL, 0);
    if (!rt->loop_ls) return;
  }
  orch__lstate_sync(rt->loop_ls);
  const orch__step *s = &r->g->steps[v];
  double ms = s->finished_ns > s->started_ns && s->started_ns >= 0
                  ? (double)(s->finished_ns - s->started_ns) / 1e6
                  : 0;
  json_t *arg = json_pack("{s:s, s:f, s:i}", "status", orch_status_name(s->status),
                          "duration_ms", ms, "attempts", (int)s->attempts);
  double value = NAN;
  char err[512] = "";
  int rc = orch__policy_call_number(rt->loop_ls, "rewards.step", "reward", arg,
                                    &value, err, sizeof err);
  json_decref(arg);
  if (rc == ORCH_ENOTFOUND) return; /* no reward script: nothing to score */
  const char *const *paths = NULL;
  const orch__kind *k = orch__kinds[s->kind];
  size_t nw = k->writes ? k->writes(s, &paths) : 0;
  char *detail = rc ? orch__asprintf("reward: %s", err) : NULL;
  orch__rec rec;
  memset(&rec, 0, sizeof rec);
  rec.type = ORCH__REC_REWARD;
  rec.u.reward.task_id = rt->session_id;
  rec.u.reward.step_number = (int32_t)(rt->step_base + v);
  rec.u.reward.step_type = k->name;
  rec.u.reward.target_file = nw ? paths[0] : NULL;
  rec.u.reward.execution_result = orch_status_name(s->status);
  rec.u.reward.implicit_reward = rc ? NAN : value;
  rec.u.reward.verified_outcome = NAN;
  rec.u.reward.execution_time_ms = (int64_t)ms;
  rec.u.reward.error_detail = detail ? detail : s->error;
  orch__store_put(rt->store, &rec);
  free(detail);
}

static char *steps_json(const orch_graph *g) {
  if (g->plan_steps) return json_dumps((json_t *)g->plan_steps, JSON_COMPACT);
  json_t *a = json_array();
  for (size_t i = 0; i < g->n; i++) {
    json_t *s = json_object(), *deps = json_array();
    json_object_set_new(s, "id", json_string(orch__step_id(g, (uint32_t)i)));
    json_object_set_new(s, "kind", json_string(orch__kinds[g->steps[i].kind]->name));
    for (uint32_t e = g->dep_off[i]; e < g->dep_off[i + 1]; e++)
      json_array_append_new(deps, json_string(orch__step_id(g, g->deps[e])));
    json_object_set_new(s, "deps", deps);
    json_array_append_new(a, s);
  }
  char *txt = json_dumps(a, JSON_COMPACT);
  json_decref(a);
  return txt;
}

/* Records the session row; returns its token total: the session's earlier
 * runs in this process (ask) plus this run's steps. */
static int64_t record_session(orch__run *r, const char *status, char *steps) {
  orch_runtime *rt = r->rt;
  if (!rt->store) return 0;
  orch__rec rec;
  memset(&rec, 0, sizeof rec);
  rec.type = ORCH__REC_SESSION;
  rec.u.session.session_id = rt->session_id;
  json_t *meta = r->g->plan_meta;
  json_t *task = meta ? json_object_get(meta, "task_id") : NULL;
  rec.u.session.task_id = json_is_string(task) ? json_string_value(task) : rt->session_id;
  json_t *agent = meta ? json_object_get(meta, "agent") : NULL;
  rec.u.session.jr_name = json_is_string(agent) ? json_string_value(agent) : "orchestrate";
  json_t *tier = meta ? json_object_get(meta, "tier") : NULL;
  rec.u.session.model_tier = json_is_string(tier) ? json_string_value(tier) : NULL;
  rec.u.session.status = status;
  rec.u.session.steps_json = steps;
  /* Tokens over the steps that report usage (llm steps). */
  int64_t total = rt->session_tokens_before;
  for (int k = 0; k < ORCH__NKINDS; k++) {
    const orch__kind *kd = orch__kinds[k];
    if (!kd || !kd->usage || !r->g->nkind[k]) continue;
    for (size_t i = 0; i < r->g->n; i++) {
      const orch__step *st = &r->g->steps[i];
      if (st->kind != k || st->status < ORCH_PASSED) continue;
      int64_t tin = -1, tout = -1;
      double cost = -1;
      kd->usage(st, &tin, &tout, &cost);
      if (tin > 0) total += tin;
      if (tout > 0) total += tout;
    }
  }
  rec.u.session.total_tokens = total;
  orch__store_put(rt->store, &rec);
  return total;
}

/* ---- finishing ------------------------------------------------------------ */

static void run_workers(orch__worker *w, void *arg, const uint32_t *idx,
                        size_t n);
static void process(orch__run *r);

static void mark_finished(orch__run *r, orch__step *s) {
  if (s->finished_ns < 0) s->finished_ns = orch__run_now(r);
}

/* Ends a step that will never run: status skipped with the reason. False
 * when the step is no longer pending (a worker claimed it first). */
static bool skip(orch__run *r, uint32_t v, uint32_t cause) {
  orch__step *s = &r->g->steps[v];
  if (!claim(s, ORCH_SKIPPED)) return false;
  if (cause == NONE) orch__step_set_error(s, "canceled before it started");
  else
    orch__step_set_error(s, "skipped: dependency '%s' failed",
                         orch__step_id(r->g, cause));
  atomic_fetch_add(&r->skipped, 1);
  atomic_fetch_add(&r->done, 1);
  record(r, v);
  return true;
}

/* Skips v and everything downstream of it that has not started. */
static void make_ready(orch__run *r, uint32_t v);

static void skip_cascade(orch__run *r, uint32_t v, uint32_t cause) {
  orch_graph *g = r->g;
  uint32_t *stack = NULL;
  size_t n = 0, cap = 0;
  if (!skip(r, v, cause)) return;
  if (push_u32(&stack, &n, &cap, v)) goto done;
  while (n) {
    uint32_t x = stack[--n];
    for (uint32_t e = g->out_off[x]; e < g->out_off[x + 1]; e++) {
      uint32_t y = g->outs[e];
      if (g->steps[y].flags & ORCH__SF_ALWAYS) {
        /* It runs once its dependencies end, however they ended. */
        if (status_of(&g->steps[y]) == ORCH_PENDING && dep_done(r, y))
          make_ready(r, y);
        continue;
      }
      if (!skip(r, y, cause)) continue;
      if (push_u32(&stack, &n, &cap, y)) goto done;
    }
  }
done:
  free(stack);
}

/* ---- per-file write locks ----------------------------------------------- */

/* Two steps that write one file (edit steps, shell steps declaring
 * "writes") never run at the same time: a step takes all its paths at once
 * or none, and waits parked (not holding a slot) until they are free. Paths
 * compare by their real path when they exist. Loop thread only. */
typedef struct orch__flock {
  char *path;
  uint32_t holder;
} orch__flock;

static size_t step_writes(const orch__step *s, const char *const **paths) {
  const orch__kind *k = orch__kinds[s->kind];
  return k->writes ? k->writes(s, paths) : 0;
}

static char *norm_path(const char *p) {
  char *real = realpath(p, NULL);
  if (real) return real;
  /* Not there yet: its directory's real path and its name. */
  const char *slash = strrchr(p, '/');
  char *dir = slash ? orch__strndup(p, (size_t)(slash - p)) : orch__strdup(".");
  char *rdir = dir ? realpath(*dir ? dir : "/", NULL) : NULL;
  char *out = rdir ? orch__asprintf("%s/%s", rdir, slash ? slash + 1 : p)
                   : orch__strdup(p);
  free(dir);
  free(rdir);
  return out;
}

static bool held(const orch__run *r, const char *path) {
  for (size_t i = 0; i < r->nlocks; i++)
    if (strcmp(r->locks[i].path, path) == 0) return true;
  return false;
}

/* Takes every path step v writes, or none; false when one is held. */
static bool lock_files(orch__run *r, uint32_t v) {
  const char *const *paths;
  size_t n = step_writes(&r->g->steps[v], &paths);
  if (!n) return true;
  char **norm = calloc(n, sizeof *norm);
  if (!norm) return true; /* no memory: run unlocked rather than hang */
  bool free_all = true;
  for (size_t i = 0; i < n; i++) {
    norm[i] = norm_path(paths[i]);
    if (!norm[i] || held(r, norm[i])) free_all = false;
  }
  if (free_all && r->nlocks + n > r->locks_cap) {
    size_t ncap = (r->nlocks + n) * 2;
    orch__flock *nl = realloc(r->locks, ncap * sizeof *nl);
    if (nl) {
      r->locks = nl;
      r->locks_cap = ncap;
    } else {
      free_all = false;
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (free_all) {
      r->locks[r->nlocks].path = norm[i];
      r->locks[r->nlocks].holder = v;
      r->nlocks++;
    } else {
      free(norm[i]);
    }
  }
  free(norm);
  return free_all;
}

/* Releases v's paths and gives the parked steps another try. */
static void unlock_files(orch__run *r, uint32_t v) {
  bool any = false;
  for (size_t i = 0; i < r->nlocks;) {
    if (r->locks[i].holder == v) {
      free(r->locks[i].path);
      r->locks[i] = r->locks[--r->nlocks];
      any = true;
    } else {
      i++;
    }
  }
  if (!any || !r->nparked) return;
  uint32_t *parked = r->parked;
  size_t n = r->nparked;
  r->parked = NULL;
  r->nparked = r->parked_cap = 0;
  for (size_t i = 0; i < n; i++)
    if (status_of(&r->g->steps[parked[i]]) == ORCH_PENDING)
      make_ready(r, parked[i]);
  free(parked);
}

static void start_step(orch__run *r, uint32_t v) {
  orch_graph *g = r->g;
  orch__step *s = &g->steps[v];
  const orch__kind *k = orch__kinds[s->kind];
  if (!lock_files(r, v)) {
    if (push_u32(&r->parked, &r->nparked, &r->parked_cap, v) == ORCH_OK) return;
  }
  __atomic_store_n(&s->status, ORCH_IN_PROGRESS, __ATOMIC_RELEASE);
  s->attempts++;
  /* A worker step's start is stamped by the worker that runs it, unless
   * the start is recorded now. */
  if (k->where != ORCH__ON_WORKER || r->rt->store ||
      (r->dry_run && s->kind == ORCH__KIND_LLM))
    s->started_ns = orch__run_now(r);
  /* The generation in force as it starts; a lua step overwrites it with
   * the one its worker's state actually ran. */
  s->generation = r->rt->policy ? orch__policy_generation(r->rt->policy) : 0;
  atomic_fetch_add(&r->running, 1);
  record(r, v);
  if (r->dry_run && s->kind == ORCH__KIND_LLM) {
    double ms = (s->flags & ORCH__SF_HAS_COST) ? s->cost : r->rt->cfg.dry_run_ms;
    if (orch__sleep_start(r, v, ms)) goto fail;
    return;
  }
  switch (k->where) {
  case ORCH__ON_WORKER:
    if (push_u32(&r->post, &r->npost, &r->post_cap, v)) {
      orch__step_set_error(s, "out of memory queueing the step");
      goto fail;
    }
    return;
  case ORCH__ON_HOST:
    pthread_mutex_lock(&r->mu);
    if (push_u32(&r->host, &r->nhost, &r->host_cap, v)) {
      pthread_mutex_unlock(&r->mu);
      orch__step_set_error(s, "out of memory queueing the step");
      goto fail;
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    return;
  default:
    if (k->start(r, v) == ORCH_OK) return;
    if (!s->error) orch__step_set_error(s, "%s step could not start", k->name);
    goto fail;
  }
fail:
  s->status = ORCH_FAILED;
  mark_finished(r, s);
  push_u32(&r->todo, &r->ntodo, &r->todo_cap, v);
}

static bool has_slot(const orch__run *r) {
  return !r->max_parallel || atomic_load(&r->running) < r->max_parallel;
}

/* Without a limit a ready step starts at once. With one, it always goes
 * through the heap and process() fills the free slots from it at the end
 * of the round: one completion may release several steps, and the first
 * released must not take a free slot before a later one on a longer path
 * is even seen. Every caller is inside a round (process, run_start). */
static void make_ready(orch__run *r, uint32_t v) {
  if (atomic_load(&r->canceled)) {
    skip(r, v, NONE);
    return;
  }
  if (!r->max_parallel) start_step(r, v);
  else heap_push(r, v);
}

static void complete(orch__run *r, uint32_t v) {
  orch_graph *g = r->g;
  orch__step *s = &g->steps[v];
  mark_finished(r, s);
  note_finish(r, s->finished_ns);
  atomic_fetch_sub(&r->running, 1);
  atomic_fetch_add(&r->done, 1);
  bool ok = s->status == ORCH_PASSED;
  if (ok) atomic_fetch_add(&r->passed, 1);
  else atomic_fetch_add(&r->failed, 1);
  record(r, v);
  reward(r, v);
  for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++) {
    uint32_t d = g->outs[e];
    orch__step *ds = &g->steps[d];
    if (status_of(ds) != ORCH_PENDING) continue;
    if (!ok && !(ds->flags & ORCH__SF_ALWAYS)) skip_cascade(r, d, v);
    else if (dep_done(r, d)) make_ready(r, d);
  }
  unlock_files(r, v);
}

static void post_workers(orch__run *r) {
  if (!r->npost) return;
  if (orch__pool_post(r->rt->pool, run_workers, r, r->post, r->npost)) {
    for (size_t i = 0; i < r->npost; i++) {
      orch__step *s = &r->g->steps[r->post[i]];
      s->status = ORCH_FAILED;
      orch__step_set_error(s, "worker queue overflow: step refused");
      mark_finished(r, s);
      push_u32(&r->todo, &r->ntodo, &r->todo_cap, r->post[i]);
    }
  }
  r->npost = 0;
}

static void end_run(orch__run *r) {
  orch_graph *g = r->g;
  g->makespan_ns = atomic_load(&r->last_ns);
  for (int k = 0; k < ORCH__NKINDS; k++)
    if (orch__kinds[k] && orch__kinds[k]->run_end) orch__kinds[k]->run_end(r);
  r->rt->session_tokens_before = record_session(
      r,
      atomic_load(&r->canceled)                               ? "canceled"
      : atomic_load(&r->failed) || atomic_load(&r->skipped) ? "failed"
                                                              : "completed",
      r->steps_txt);
  pthread_mutex_lock(&r->mu);
  r->finished = true;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->mu);
}

/* One scheduling round: finish what is done, fill free slots from the
 * heap, post worker steps in one batch. Loop thread; not reentrant. */
static void process(orch__run *r) {
  if (r->in_process || r->finished) return;
  r->in_process = true;
  for (;;) {
    while (r->ntodo) {
      /* complete() may append to todo through start_step failures. */
      uint32_t v = r->todo[--r->ntodo];
      complete(r, v);
    }
    while (r->nheap && has_slot(r)) {
      if (atomic_load(&r->canceled)) skip(r, heap_pop(r), NONE);
      else start_step(r, heap_pop(r));
    }
    post_workers(r);
    if (!r->ntodo) break;
  }
  r->in_process = false;
  /* Spans of roots still held by workers keep the run alive even when
   * cancel skipped all their steps: they read r. */
  if (atomic_load(&r->done) == r->g->n && !atomic_load(&r->spans)) end_run(r);
}

/* The round runs from the wake-up, not at once: every timer due in this
 * turn of the loop fires first, so steps finishing at the same instant all
 * free their dependents before the free slots are filled by priority. */
void orch__sched_finish(orch__run *r, uint32_t idx) {
  if (push_u32(&r->todo, &r->ntodo, &r->todo_cap, idx)) abort();
  uv_async_send(&r->wake);
}

void orch__sched_finish_async(orch__run *r, uint32_t idx) {
  pthread_mutex_lock(&r->mu);
  if (push_u32(&r->fin, &r->nfin, &r->fin_cap, idx))
    abort(); /* cannot report a finish: nothing sane is left */
  /* Sent under the lock: the drain that sees this entry, and so the end of
   * the run and the free of r, cannot happen before the send is done. */
  uv_async_send(&r->wake);
  pthread_mutex_unlock(&r->mu);
}

/* Skips what has not started and stops what runs on the loop; steps on
 * workers finish on their own. Loop thread, once per run. */
static void cancel_steps(orch__run *r) {
  orch_graph *g = r->g;
  if (r->cancel_done || !r->started) return;
  r->cancel_done = true;
  while (r->nheap) skip(r, heap_pop(r), NONE);
  for (size_t i = 0; i < g->n; i++) {
    orch__step *s = &g->steps[i];
    uint8_t st = status_of(s);
    if (st == ORCH_PENDING) {
      skip(r, (uint32_t)i, NONE);
    } else if (st == ORCH_IN_PROGRESS) {
      const orch__kind *k = orch__kinds[s->kind];
      if (r->dry_run && s->kind == ORCH__KIND_LLM) k = &orch__kind_sleep;
      if (k->where == ORCH__ON_LOOP && k->cancel) k->cancel(r, (uint32_t)i);
    }
  }
}

void orch__sched_cancel(orch_runtime *rt) {
  pthread_mutex_lock(&rt->mu);
  orch__run *r = rt->run;
  if (r && !r->finished) {
    atomic_store(&r->canceled, true);
    if (r->started) {
      cancel_steps(r);
      process(r);
    }
  }
  pthread_mutex_unlock(&rt->mu);
}

static void drain(uv_async_t *a) {
  orch__run *r = a->data;
  pthread_mutex_lock(&r->mu);
  uint32_t *fin = r->fin;
  size_t n = r->nfin, cap = r->fin_cap;
  r->fin = NULL;
  r->nfin = r->fin_cap = 0;
  pthread_mutex_unlock(&r->mu);
  for (size_t i = 0; i < n; i++)
    push_u32(&r->todo, &r->ntodo, &r->todo_cap, fin[i]);
  (void)cap;
  free(fin);
  if (atomic_load(&r->canceled)) cancel_steps(r);
  process(r);
}

/* Worker side. Completions normally go back to the loop (one lock and one
 * wake-up per batch). The fast path: when no in-flight limit is set and no
 * store records steps (r->fast), a step that passed and whose dependents
 * all run on workers is completed here: its dependents' counters drop, the
 * first one that becomes ready runs next on this worker (a chain never
 * leaves the thread), the others wait on this worker's own stack and are
 * shared through the pool queue only while another worker is idle. Such
 * completions are counted in `done` under r->mu together with the wake-up,
 * so the loop cannot end the run (and free it) while this worker still
 * touches it. In fast mode the steps ready at the start come as spans of
 * the run's roots array, which the worker claims itself (PENDING ->
 * IN_PROGRESS; a step cancel skipped first is left alone).
 *
 * Times: a step's finish is read from the clock before its dependents are
 * released. A step that releases none (a leaf that passed on the fast
 * path) shares the next clock read with the leaves run just before it, up
 * to LEAF_GROUP of them: each recorded [start, finish] still contains the
 * step's true run, and no step depends on them. A step released here
 * starts at the latest finish among its dependencies (all read before
 * their release), or at this worker's last clock read if later. */
#define FAST_PUBLISH 4096
#define LEAF_GROUP 32
#define SHARE_AT 128

typedef struct worker_batch {
  uint32_t fin[256]; /* completions for the loop */
  size_t nfin;
  size_t nfast;      /* completed here, not yet counted in done */
  size_t nnext;      /* of those, how many handed their slot to a dependent
                        run next here (running is not changed for them) */
  size_t nclaimed;   /* roots claimed here, not yet counted in running */
  size_t nspans;     /* span jobs finished, not yet counted down */
  int64_t last;      /* latest finish stamped here */
  uint32_t leaf[LEAF_GROUP]; /* leaves waiting for their finish stamp */
  size_t nleaf;
} worker_batch;

static void stamp_leaves(worker_batch *b, orch_graph *g, int64_t t) {
  for (size_t i = 0; i < b->nleaf; i++) g->steps[b->leaf[i]].finished_ns = t;
  b->nleaf = 0;
  if (t > b->last) b->last = t;
}

static void publish(orch__run *r, worker_batch *b) {
  if (b->nleaf) stamp_leaves(b, r->g, orch__run_now(r));
  if (b->nclaimed) atomic_fetch_add(&r->running, b->nclaimed);
  if (b->nfast) {
    atomic_fetch_sub(&r->running, b->nfast - b->nnext);
    atomic_fetch_add(&r->passed, b->nfast);
  }
  note_finish(r, b->last);
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < b->nfin; i++)
    if (push_u32(&r->fin, &r->nfin, &r->fin_cap, b->fin[i])) abort();
  atomic_fetch_add(&r->done, b->nfast);
  if (b->nspans) atomic_fetch_sub(&r->spans, b->nspans);
  uv_async_send(&r->wake); /* under the lock: see orch__sched_finish_async */
  pthread_mutex_unlock(&r->mu);
  b->nfin = b->nfast = b->nnext = b->nclaimed = b->nspans = 0;
}

static void to_loop(orch__run *r, worker_batch *b, uint32_t v) {
  b->fin[b->nfin++] = v;
  if (b->nfin == ORCH__ARRAY_LEN(b->fin)) publish(r, b);
}

/* Does step s run on a worker, with no file to lock (file locks live on
 * the loop)? r->where[kind] answers for a whole kind: 0 no, 1 yes, 2 it
 * depends on the step's paths. */
static bool on_worker(const orch__run *r, const orch__step *s) {
  uint8_t w = r->where[s->kind];
  if (w < 2) return w;
  const char *const *paths;
  return !step_writes(s, &paths);
}

static void kinds_where(orch__run *r) {
  r->all_worker = true;
  for (int k = 0; k < ORCH__NKINDS; k++) {
    const orch__kind *kd = orch__kinds[k];
    if (!kd || kd->where != ORCH__ON_WORKER || (r->dry_run && k == ORCH__KIND_LLM))
      r->where[k] = 0;
    else r->where[k] = kd->writes ? 2 : 1;
    if (r->g->nkind[k] && r->where[k] != 1) r->all_worker = false;
  }
}

/* Can v, just run, be completed here? Not with an in-flight limit (the
 * heap orders starts), nor when a store records every start and finish
 * (on the loop thread), nor when it failed or a dependent needs the loop
 * (a step holding file locks releases them on the loop). */
static bool completes_here(orch__run *r, uint32_t v) {
  orch_graph *g = r->g;
  orch__step *s = &g->steps[v];
  if (!r->fast || atomic_load(&r->canceled) || status_of(s) != ORCH_PASSED ||
      !on_worker(r, s))
    return false;
  if (r->all_worker) return true;
  for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++)
    if (!on_worker(r, &g->steps[g->outs[e]])) return false;
  return true;
}

/* A step this worker claimed (fast path): counted, stamped with its run. */
static void take_step(orch__run *r, orch__step *s) {
  s->attempts++;
  s->generation = r->rt->policy ? orch__policy_generation(r->rt->policy) : 0;
}

/* The start of step v, released here after its last dependency finished:
 * the latest finish among its dependencies, or t if later. */
static int64_t start_after_deps(const orch_graph *g, uint32_t v, int64_t t) {
  for (uint32_t e = g->dep_off[v]; e < g->dep_off[v + 1]; e++) {
    int64_t f = g->steps[g->deps[e]].finished_ns;
    if (f > t) t = f;
  }
  return t;
}

typedef struct local_stack {
  uint32_t *a;
  size_t n, cap;
} local_stack;

/* Hands the older half of the stack to the pool while a worker idles
 * (they stay here when the queue is full). */
static void share(orch__run *r, local_stack *ls) {
  size_t k = (ls->n + 1) / 2;
  if (orch__pool_post(r->rt->pool, run_workers, r, ls->a, k)) return;
  memmove(ls->a, ls->a + k, (ls->n - k) * sizeof *ls->a);
  ls->n -= k;
}

/* Runs step v (claimed, IN_PROGRESS) and whatever it releases here, until
 * this worker's stack is empty. *t: the last clock read. */
static void run_from(orch__run *r, orch__worker *w, worker_batch *b,
                     local_stack *ls, uint32_t v, int64_t *tp) {
  orch_graph *g = r->g;
  int64_t t = *tp;
  while (v != NONE) {
    orch__step *s = &g->steps[v];
    s->started_ns = t;
    /* The dependents are touched right after the step: fetch them now. */
    for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++) {
      __builtin_prefetch(&g->steps[g->outs[e]], 1);
      __builtin_prefetch(&r->npend[g->outs[e]], 1);
    }
    if (atomic_load(&r->canceled)) {
      __atomic_store_n(&s->status, ORCH_FAILED, __ATOMIC_RELEASE);
      orch__step_set_error(s, "canceled before it started");
    } else {
      int rc = orch__kinds[s->kind]->run(r, v, w);
      __atomic_store_n(&s->status, rc == ORCH_OK ? ORCH_PASSED : ORCH_FAILED,
                       __ATOMIC_RELEASE);
    }
    uint32_t lo = g->out_off[v], hi = g->out_off[v + 1];
    bool here = completes_here(r, v);
    uint32_t next = NONE;
    if (here && lo == hi) {
      /* A leaf: its finish comes with the next clock read. */
      b->leaf[b->nleaf++] = v;
      if (b->nleaf == LEAF_GROUP) stamp_leaves(b, g, t = orch__run_now(r));
      b->nfast++;
    } else {
      t = orch__run_now(r);
      if (b->nleaf) stamp_leaves(b, g, t);
      s->finished_ns = t;
      if (t > b->last) b->last = t;
      if (!here) {
        to_loop(r, b, v);
      } else {
        if (ls->n + (hi - lo) > ls->cap) {
          size_t ncap = (ls->n + (hi - lo)) * 2;
          uint32_t *na = realloc(ls->a, ncap * sizeof *na);
          if (!na) {
            /* No room to hand dependents over: let the loop do it. */
            to_loop(r, b, v);
            goto pick;
          }
          ls->a = na;
          ls->cap = ncap;
        }
        b->nfast++;
        for (uint32_t e = lo; e < hi; e++) {
          uint32_t d = g->outs[e];
          if (!dep_done(r, d) || !claim(&g->steps[d], ORCH_IN_PROGRESS))
            continue;
          take_step(r, &g->steps[d]);
          if (next == NONE) {
            next = d; /* takes v's place among the running */
            b->nnext++;
          } else {
            atomic_fetch_add(&r->running, 1);
            ls->a[ls->n++] = d;
          }
        }
      }
    }
  pick:
    if (next == NONE && ls->n) {
      next = ls->a[--ls->n];
    }
    if (next != NONE) {
      if (g->dep_off[next + 1] - g->dep_off[next] > 1)
        t = start_after_deps(g, next, t);
      /* A step boundary, as between batches (pool.c): a lua step runs
       * under the newest published scripts. */
      if (g->steps[next].kind == ORCH__KIND_LUA && w)
        orch__lstate_sync(orch__worker_lstate(w));
      /* Share while another worker idles, and in any case once the stack
       * is long: a worker that loses its core must not sit on much work. */
      if ((ls->n && orch__pool_idle(r->rt->pool)) || ls->n >= SHARE_AT)
        share(r, ls);
    }
    if (b->nfast >= FAST_PUBLISH) publish(r, b);
    v = next;
  }
  *tp = t;
}

static void run_job(orch__worker *w, orch__run *r, const uint32_t *idx,
                    size_t n, bool roots) {
  orch_graph *g = r->g;
  worker_batch b;
  b.nfin = b.nfast = b.nnext = b.nclaimed = b.nspans = b.nleaf = 0;
  b.last = 0;
  local_stack ls = {NULL, 0, 0};
  int64_t t = orch__run_now(r);
  for (size_t i = 0; i < n; i++) {
    uint32_t v = idx[i];
    /* The claim below is a locked instruction: it waits for its cache miss
     * with nothing else in flight. Ask for the steps ahead. */
    if (i + 8 < n) __builtin_prefetch(&g->steps[idx[i + 8]], 1);
    if (roots) {
      /* Not yet claimed: cancel may have skipped it. */
      if (!claim(&g->steps[v], ORCH_IN_PROGRESS)) continue;
      take_step(r, &g->steps[v]);
      b.nclaimed++;
    }
    run_from(r, w, &b, &ls, v, &t);
  }
  free(ls.a);
  if (roots) b.nspans = 1;
  /* The last touch of r. Nothing left to report means an earlier publish
   * may have ended the run: r must not be touched then. */
  if (b.nfin || b.nfast || b.nclaimed || b.nspans || b.nleaf) publish(r, &b);
}

/* Steps claimed before they were queued (by the loop or a worker). */
static void run_workers(orch__worker *w, void *arg, const uint32_t *idx,
                        size_t n) {
  run_job(w, arg, idx, n, false);
}

/* A span of the run's roots, not yet claimed (fast mode). */
static void run_roots(orch__worker *w, void *arg, const uint32_t *idx,
                      size_t n) {
  run_job(w, arg, idx, n, true);
}

/* ---- starting and ending a run on the loop ------------------------------- */

static void run_start(void *arg) {
  orch__run *r = arg;
  orch_graph *g = r->g;
  uv_async_init(orch__loop_uv(r->rt->loop), &r->wake, drain);
  r->wake.data = r;
  r->t0_ns = orch__now_ns();
  orch_runtime *rt = r->rt;
  /* Steps that passed in an earlier run of the session (resume, which
   * needs a store) are done: they count, and release their dependents,
   * without running again. */
  bool resumed = rt->store && rt->resume_id[0];
  if (rt->store) {
    if (!rt->resume_id[0] || strcmp(rt->resume_id, rt->session_id) != 0)
      /* not a continuation in this process: a resumed session's total as
       * recorded, else none */
      rt->session_tokens_before = rt->resume_id[0] ? rt->resume_tokens : 0;
    if (rt->resume_id[0]) snprintf(rt->session_id, sizeof rt->session_id, "%s", rt->resume_id);
    else orch__store_uuid(rt->session_id);
    rt->t0_wall_ms = orch__store_wall_ms();
    r->steps_txt = steps_json(g);
    record_session(r, "running", r->steps_txt);
  }
  rt->resume_id[0] = '\0';
  for (int k = 0; k < ORCH__NKINDS; k++)
    if (g->nkind[k] && orch__kinds[k] && orch__kinds[k]->run_begin &&
        !(r->dry_run && k == ORCH__KIND_LLM))
      orch__kinds[k]->run_begin(r);
  size_t n = g->n;
  r->npend = malloc((n ? n : 1) * sizeof *r->npend);
  r->roots = malloc((n ? n : 1) * sizeof *r->roots);
  if (!r->npend || !r->roots) abort();
  orch__prefault(r->npend, n * sizeof *r->npend);
  /* The roots: steps with nothing to wait for (counted again below after
   * a resume). */
  size_t nroots = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t k = g->dep_off[i + 1] - g->dep_off[i];
    r->npend[i] = k;
    if (!k) r->roots[nroots++] = (uint32_t)i;
  }
  if (resumed) {
    for (size_t i = 0; i < n; i++) {
      if (g->steps[i].status != ORCH_PASSED) continue;
      atomic_fetch_add(&r->done, 1);
      atomic_fetch_add(&r->passed, 1);
      note_finish(r, g->steps[i].finished_ns);
      for (uint32_t e = g->out_off[i]; e < g->out_off[i + 1]; e++)
        r->npend[g->outs[e]]--;
    }
  }
  if (resumed) {
    nroots = 0;
    for (size_t i = 0; i < n; i++)
      if (!r->npend[i] && g->steps[i].status == ORCH_PENDING)
        r->roots[nroots++] = (uint32_t)i;
  }
  if (r->max_parallel && orch__graph_bottoms(g))
    fprintf(stderr, "orchestrate: no memory for priorities: ready steps "
                    "start in index order\n");
  r->heap = malloc((n ? n : 1) * sizeof *r->heap);
  if (!r->heap) abort();
  r->in_process = true;
  if (r->max_parallel && nroots > r->max_parallel) {
    /* The limit binds from the start: all roots go through the heap. */
    for (size_t i = 0; i < nroots; i++) heap_push(r, r->roots[i]);
  } else if (!r->fast) {
    for (size_t i = 0; i < nroots; i++) make_ready(r, r->roots[i]);
  } else {
    /* Worker roots go to the workers in spans, unclaimed; the others
     * start here. The spans read r->roots until they are done. */
    size_t nw = 0;
    if (r->all_worker) {
      nw = nroots;
    } else {
      for (size_t i = 0; i < nroots; i++) {
        uint32_t v = r->roots[i];
        if (on_worker(r, &g->steps[v])) r->roots[nw++] = v;
        else make_ready(r, v);
      }
    }
    int nthreads = orch__pool_size(rt->pool);
    size_t chunk = nw / ((size_t)nthreads * 16) + 1;
    if (chunk > 2048) chunk = 2048;
    size_t njobs = 0;
    atomic_store(&r->spans, (nw + chunk - 1) / chunk);
    if (nw && orch__pool_post_spans(rt->pool, run_roots, r, r->roots, nw,
                                    chunk, &njobs)) {
      atomic_store(&r->spans, 0);
      for (size_t i = 0; i < nw; i++) {
        orch__step *s = &g->steps[r->roots[i]];
        if (!claim(s, ORCH_IN_PROGRESS)) continue;
        s->attempts++;
        atomic_fetch_add(&r->running, 1);
        orch__step_set_error(s, "worker queue overflow: step refused");
        s->status = ORCH_FAILED;
        mark_finished(r, s);
        push_u32(&r->todo, &r->ntodo, &r->todo_cap, r->roots[i]);
      }
    }
  }
  r->in_process = false;
  r->started = true;
  if (atomic_load(&r->canceled)) cancel_steps(r);
  process(r);
}

static void wake_closed(uv_handle_t *h) {
  orch__run *r = h->data;
  pthread_mutex_lock(&r->mu);
  r->closed = true;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->mu);
}

static void run_close(void *arg) {
  orch__run *r = arg;
  uv_close((uv_handle_t *)&r->wake, wake_closed);
}

static void host_step(orch__run *r, uint32_t v) {
  orch__step *s = &r->g->steps[v];
  s->started_ns = orch__run_now(r);
  if (atomic_load(&r->canceled)) {
    __atomic_store_n(&s->status, ORCH_FAILED, __ATOMIC_RELEASE);
    orch__step_set_error(s, "canceled before it started");
  } else {
    int rc = orch__kinds[s->kind]->run(r, v, NULL);
    __atomic_store_n(&s->status, rc == ORCH_OK ? ORCH_PASSED : ORCH_FAILED,
                     __ATOMIC_RELEASE);
  }
  s->finished_ns = orch__run_now(r);
  orch__sched_finish_async(r, v);
}

static void report_progress(orch_runtime *rt, orch__run *r) {
  if (rt->progress)
    rt->progress(rt->progress_ud, atomic_load(&r->done), r->g->n,
                 atomic_load(&r->running), atomic_load(&r->failed));
}

int orch_run(orch_runtime *rt, orch_graph *g, char *err, size_t errlen) {
  if (!rt || !g) return orch__err(err, errlen, ORCH_EINVAL, "no runtime or graph");
  if (g->ran) return orch__err(err, errlen, ORCH_ESTATE, "graph already ran");
  int rc = orch_graph_validate(g, err, errlen);
  if (rc) return rc;
  if ((rc = orch__runtime_start(rt, err, errlen))) return rc;
  orch__run *r = calloc(1, sizeof *r);
  if (!r) return ORCH_ENOMEM;
  pthread_mutex_lock(&rt->mu);
  if (rt->run) {
    pthread_mutex_unlock(&rt->mu);
    free(r);
    return orch__err(err, errlen, ORCH_ESTATE,
                     "this runtime is already running a graph");
  }
  rt->run = r;
  pthread_mutex_unlock(&rt->mu);
  g->ran = true;
  r->rt = rt;
  r->g = g;
  r->max_parallel = rt->cfg.max_parallel > 0 ? (size_t)rt->cfg.max_parallel : 0;
  r->dry_run = rt->dry_run;
  r->fast = !r->max_parallel && !rt->store;
  kinds_where(r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->cond, &ca);
  pthread_condattr_destroy(&ca);
  atomic_store(&rt->cancel_req, 0);
  orch__loop_call(rt->loop, run_start, r);

  /* The calling thread serves host steps and progress until the end. */
  unsigned iv = rt->progress_ms ? rt->progress_ms : 100;
  pthread_mutex_lock(&r->mu);
  while (!r->finished) {
    if (r->host_head < r->nhost) {
      uint32_t v = r->host[r->host_head++];
      pthread_mutex_unlock(&r->mu);
      host_step(r, v);
      pthread_mutex_lock(&r->mu);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(iv % 1000) * 1000000L;
    ts.tv_sec += iv / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    int w = pthread_cond_timedwait(&r->cond, &r->mu, &ts);
    if (w == ETIMEDOUT && rt->progress) {
      pthread_mutex_unlock(&r->mu);
      report_progress(rt, r);
      pthread_mutex_lock(&r->mu);
    }
  }
  pthread_mutex_unlock(&r->mu);
  report_progress(rt, r);
  pthread_mutex_lock(&rt->mu);
  rt->run = NULL;
  pthread_mutex_unlock(&rt->mu);
  orch__loop_call(rt->loop, run_close, r);
  pthread_mutex_lock(&r->mu);
  while (!r->closed) pthread_cond_wait(&r->cond, &r->mu);
  pthread_mutex_unlock(&r->mu);

  if (atomic_load(&r->canceled)) rc = ORCH_ECANCELED;
  else if (atomic_load(&r->failed) || atomic_load(&r->skipped)) rc = ORCH_ESTEP;
  if (rc == ORCH_ECANCELED)
    orch__err(err, errlen, rc, "run canceled: %zu passed, %zu failed, %zu skipped",
              atomic_load(&r->passed), atomic_load(&r->failed),
              atomic_load(&r->skipped));
  else if (rc == ORCH_ESTEP)
    orch__err(err, errlen, rc, "run failed: %zu passed, %zu failed, %zu skipped",
              atomic_load(&r->passed), atomic_load(&r->failed),
              atomic_load(&r->skipped));
  for (int k = 0; k < ORCH__NKINDS; k++) free(r->kind_state[k]);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cond);
  free(r->steps_txt);
  for (size_t i = 0; i < r->nlocks; i++) free(r->locks[i].path);
  free(r->locks);
  free(r->parked);
  free(r->heap);
  free(r->npend);
  free(r->roots);
  free(r->todo);
  free(r->post);
  free(r->fin);
  free(r->host);
  free(r);
  return rc;
}

void orch_runtime_cancel(orch_runtime *rt) {
  if (!rt) return;
  /* Only an atomic store and uv_async_send: safe in a signal handler. The
   * loop thread does the rest in orch__sched_cancel. */
  atomic_store(&rt->cancel_req, 1);
  if (atomic_load(&rt->cancel_ready)) uv_async_send(&rt->cancel_async);
}
