/* pool.c provides the worker threads. Each worker creates, owns and closes
 * its own Lua state (Lua states are not thread-safe; nothing Lua crosses
 * threads). Jobs are (function, argument, step index) triples, or spans of
 * indices in the poster's array, in one ring queue under one mutex; a
 * worker takes a batch at a time so a million tiny steps cost a few
 * thousand lock round trips, not millions. Uses pthreads
 * and policy.c for the sandboxed states. */
#include "orch_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Most jobs a worker takes at once; it takes less when the queue is short
 * so that every worker gets a share. */
#define BATCH 256
/* The queue refuses to grow past this many waiting jobs. */
#define QUEUE_MAX (64u << 20)

/* A job is one step index, or a span of n indices in the poster's array. */
typedef struct job {
  orch__job_fn fn;
  void *arg;
  const uint32_t *span; /* NULL: the single index idx */
  uint32_t idx;         /* or the span's length */
} job;

struct orch__worker {
  orch__pool *pool;
  pthread_t thread;
  int index;
  lua_State *L;      /* without a policy engine */
  orch__lstate *ls;  /* with one: the scripts loaded, synced per batch */
};

struct orch__pool {
  orch_runtime *rt;
  /* Lock order: pool->mu is a leaf; nothing else is taken while held. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job *ring;
  size_t cap, head, count;
  bool stopping;
  int nthreads, started;
  orch__worker *workers;
  unsigned long overflows;
  atomic_int idle; /* workers waiting on cv */
};

static void *worker_main(void *arg) {
  orch__worker *w = arg;
  orch__pool *p = w->pool;
  job batch[BATCH];
  uint32_t idx[BATCH];
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->count && !p->stopping) {
      atomic_fetch_add_explicit(&p->idle, 1, memory_order_relaxed);
      pthread_cond_wait(&p->cv, &p->mu);
      atomic_fetch_sub_explicit(&p->idle, 1, memory_order_relaxed);
    }
    if (!p->count && p->stopping) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    size_t take = p->count / (size_t)p->nthreads;
    if (take < 1) take = 1;
    if (take > BATCH) take = BATCH;
    /* A span is a batch already: it goes alone, so spans spread evenly
     * over the workers. */
    for (size_t i = 0; i < take; i++) {
      if (p->ring[p->head].span && i) {
        take = i;
        break;
      }
      batch[i] = p->ring[p->head];
      p->head = (p->head + 1) & (p->cap - 1);
      if (batch[i].span) {
        take = i + 1;
        break;
      }
    }
    p->count -= take;
    if (p->count) pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    /* Runs of the same (fn, arg) go to the job as one batch; a span goes
     * as it is. */
    for (size_t i = 0; i < take;) {
      if (batch[i].span) {
        if (w->ls) orch__lstate_sync(w->ls);
        batch[i].fn(w, batch[i].arg, batch[i].span, batch[i].idx);
        i++;
        continue;
      }
      size_t j = i;
      while (j < take && !batch[j].span && batch[j].fn == batch[i].fn &&
             batch[j].arg == batch[i].arg) {
        idx[j - i] = batch[j].idx;
        j++;
      }
      /* a step boundary: take a newly published script generation */
      if (w->ls) orch__lstate_sync(w->ls);
      batch[i].fn(w, batch[i].arg, idx, j - i);
      i = j;
    }
  }
  if (w->L) orch__lua_close(w->L);
  w->L = NULL;
  orch__lstate_free(w->ls);
  w->ls = NULL;
  return NULL;
}

int orch__pool_new(orch__pool **out, orch_runtime *rt, int nthreads,
                   char *err, size_t errlen) {
  orch__pool *p = calloc(1, sizeof *p);
  if (!p) return ORCH_ENOMEM;
  p->rt = rt;
  p->nthreads = nthreads > 0 ? nthreads : 1;
  p->cap = 4096;
  p->ring = malloc(p->cap * sizeof *p->ring);
  p->workers = calloc((size_t)p->nthreads, sizeof *p->workers);
  if (!p->ring || !p->workers) {
    free(p->ring);
    free(p->workers);
    free(p);
    return ORCH_ENOMEM;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  for (int i = 0; i < p->nthreads; i++) {
    orch__worker *w = &p->workers[i];
    w->pool = p;
    w->index = i;
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      orch__pool_free(p);
      return orch__err(err, errlen, ORCH_EIO, "cannot start worker %d", i);
    }
    p->started++;
  }
  *out = p;
  return ORCH_OK;
}

void orch__pool_free(orch__pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stopping = true;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->started; i++) pthread_join(p->workers[i].thread, NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->workers);
  free(p->ring);
  free(p);
}

int orch__pool_size(const orch__pool *p) { return p->nthreads; }

size_t orch__pool_queued(orch__pool *p) {
  pthread_mutex_lock(&p->mu);
  size_t n = p->count;
  pthread_mutex_unlock(&p->mu);
  return n;
}

static int grow(orch__pool *p, size_t need) {
  size_t ncap = p->cap;
  while (ncap < need) ncap *= 2;
  if (ncap == p->cap) return ORCH_OK;
  if (ncap > QUEUE_MAX) return ORCH_ELIMIT;
  job *nr = malloc(ncap * sizeof *nr);
  if (!nr) return ORCH_ENOMEM;
  for (size_t i = 0; i < p->count; i++)
    nr[i] = p->ring[(p->head + i) & (p->cap - 1)];
  free(p->ring);
  p->ring = nr;
  p->cap = ncap;
  p->head = 0;
  return ORCH_OK;
}

/* With p->mu held: room in the ring for n more jobs. On failure, unlocks,
 * counts and reports the overflow (bounded: say so, as nginx does; the
 * caller fails these steps) and returns ORCH_ELIMIT. */
static int make_room(orch__pool *p, size_t n) {
  if (grow(p, p->count + n) == ORCH_OK) return ORCH_OK;
  p->overflows++;
  size_t waiting = p->count;
  pthread_mutex_unlock(&p->mu);
  fprintf(stderr,
          "orchestrate: worker queue overflow: %zu jobs waiting, %zu "
          "refused\n",
          waiting, n);
  return ORCH_ELIMIT;
}

int orch__pool_post(orch__pool *p, orch__job_fn fn, void *arg,
                    const uint32_t *idx, size_t n) {
  if (!n) return ORCH_OK;
  pthread_mutex_lock(&p->mu);
  if (make_room(p, n) != ORCH_OK) return ORCH_ELIMIT;
  size_t tail = (p->head + p->count) & (p->cap - 1);
  for (size_t i = 0; i < n; i++) {
    p->ring[tail].fn = fn;
    p->ring[tail].arg = arg;
    p->ring[tail].span = NULL;
    p->ring[tail].idx = idx[i];
    tail = (tail + 1) & (p->cap - 1);
  }
  p->count += n;
  if (n == 1) pthread_cond_signal(&p->cv);
  else pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return ORCH_OK;
}

int orch__pool_post_spans(orch__pool *p, orch__job_fn fn, void *arg,
                          const uint32_t *idx, size_t n, size_t chunk,
                          size_t *njobs) {
  *njobs = 0;
  if (!n) return ORCH_OK;
  if (chunk < 1) chunk = 1;
  if (chunk > UINT32_MAX) chunk = UINT32_MAX;
  size_t nj = (n + chunk - 1) / chunk;
  pthread_mutex_lock(&p->mu);
  if (make_room(p, nj) != ORCH_OK) return ORCH_ELIMIT;
  size_t tail = (p->head + p->count) & (p->cap - 1);
  for (size_t k = 0; k < n; k += chunk) {
    p->ring[tail].fn = fn;
    p->ring[tail].arg = arg;
    p->ring[tail].span = idx + k;
    p->ring[tail].idx = (uint32_t)(n - k < chunk ? n - k : chunk);
    tail = (tail + 1) & (p->cap - 1);
  }
  p->count += nj;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  *njobs = nj;
  return ORCH_OK;
}

int orch__pool_idle(const orch__pool *p) {
  return atomic_load_explicit(&p->idle, memory_order_relaxed);
}

lua_State *orch__worker_lua(orch__worker *w, char *err, size_t errlen) {
  orch_runtime *rt = w->pool->rt;
  if (rt->policy) {
    if (!w->ls) w->ls = orch__lstate_new(rt->policy, err, errlen);
    return orch__lstate_L(w->ls);
  }
  if (!w->L) w->L = orch__lua_new_sandbox(&rt->cfg, err, errlen);
  return w->L;
}

orch__lstate *orch__worker_lstate(orch__worker *w) {
  orch_runtime *rt = w->pool->rt;
  if (rt->policy && !w->ls) w->ls = orch__lstate_new(rt->policy, NULL, 0);
  return w->ls;
}

int orch__worker_index(const orch__worker *w) { return w->index; }
