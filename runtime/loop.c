/* loop.c provides the one event-loop thread: a libuv loop that owns timers,
 * child processes, HTTP sockets and file watches. Other threads hand it work
 * with orch__loop_call, which queues a function and wakes the loop through a
 * uv_async_t; calls run on the loop thread in the order they were made.
 * Uses libuv and pthreads. */
#include "orch_int.h"

#include <stdlib.h>

typedef struct call {
  orch__loop_fn fn;
  void *arg;
  struct call *next;
} call;

struct orch__loop {
  uv_loop_t uv;
  uv_async_t wake;
  uv_thread_t thread;
  pthread_mutex_t mu; /* guards head/tail/stopping; taken alone */
  call *head, *tail;
  bool stopping;
  uv_thread_t self;
  atomic_bool running;
};

static void drain(uv_async_t *a) {
  orch__loop *l = a->data;
  for (;;) {
    pthread_mutex_lock(&l->mu);
    call *c = l->head;
    l->head = l->tail = NULL;
    bool stop = l->stopping;
    pthread_mutex_unlock(&l->mu);
    if (!c) {
      if (stop) uv_close((uv_handle_t *)&l->wake, NULL);
      return;
    }
    while (c) {
      call *next = c->next;
      c->fn(c->arg);
      free(c);
      c = next;
    }
  }
}

static void walk_close(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void loop_main(void *arg) {
  orch__loop *l = arg;
  l->self = uv_thread_self();
  atomic_store(&l->running, true);
  uv_run(&l->uv, UV_RUN_DEFAULT);
  /* Whatever is still open (it should not be) is closed so the loop ends. */
  uv_walk(&l->uv, walk_close, NULL);
  uv_run(&l->uv, UV_RUN_DEFAULT);
}

int orch__loop_new(orch__loop **out) {
  orch__loop *l = calloc(1, sizeof *l);
  if (!l) return ORCH_ENOMEM;
  if (uv_loop_init(&l->uv)) { free(l); return ORCH_EIO; }
  if (uv_async_init(&l->uv, &l->wake, drain)) {
    uv_loop_close(&l->uv);
    free(l);
    return ORCH_EIO;
  }
  l->wake.data = l;
  pthread_mutex_init(&l->mu, NULL);
  if (uv_thread_create(&l->thread, loop_main, l)) {
    uv_close((uv_handle_t *)&l->wake, NULL);
    uv_run(&l->uv, UV_RUN_DEFAULT);
    uv_loop_close(&l->uv);
    pthread_mutex_destroy(&l->mu);
    free(l);
    return ORCH_EIO;
  }
  *out = l;
  return ORCH_OK;
}

void orch__loop_free(orch__loop *l) {
  if (!l) return;
  pthread_mutex_lock(&l->mu);
  l->stopping = true;
  pthread_mutex_unlock(&l->mu);
  uv_async_send(&l->wake);
  uv_thread_join(&l->thread);
  uv_loop_close(&l->uv);
  /* Calls queued after the stop are dropped; free them. */
  for (call *c = l->head; c;) {
    call *next = c->next;
    free(c);
    c = next;
  }
  pthread_mutex_destroy(&l->mu);
  free(l);
}

uv_loop_t *orch__loop_uv(orch__loop *l) { return &l->uv; }

bool orch__loop_on_thread(const orch__loop *l) {
  uv_thread_t me = uv_thread_self();
  return atomic_load(&((orch__loop *)l)->running) &&
         uv_thread_equal(&me, &l->self);
}

int orch__loop_call(orch__loop *l, orch__loop_fn fn, void *arg) {
  call *c = malloc(sizeof *c);
  if (!c) return ORCH_ENOMEM;
  c->fn = fn;
  c->arg = arg;
  c->next = NULL;
  pthread_mutex_lock(&l->mu);
  if (l->stopping) {
    pthread_mutex_unlock(&l->mu);
    free(c);
    return ORCH_ESTATE;
  }
  if (l->tail) l->tail->next = c;
  else l->head = c;
  l->tail = c;
  pthread_mutex_unlock(&l->mu);
  uv_async_send(&l->wake);
  return ORCH_OK;
}
