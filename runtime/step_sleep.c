/* step_sleep.c provides the `sleep` kind: a timer on the event loop that
 * passes the step after `ms` milliseconds, for simulations and benchmarks (a
 * 10,000-wide fan of sleeps needs 10,000 timers, not 10,000 threads). Under
 * --dry-run the scheduler also uses it to stand in for llm steps. Uses
 * libuv timers and sched.c. */
#include "orch_int.h"

#include <stdlib.h>
#include <string.h>

typedef struct timer {
  uv_timer_t t;
  orch__run *r;
  uint32_t idx;
  uint64_t due_ns;           /* uv_hrtime() at which the sleep is over */
  struct timer *prev, *next; /* the run's active timers, for cancel */
} timer;

typedef struct {
  timer *head;
} sleep_state;

static void unlink_timer(timer *t) {
  sleep_state *ss = t->r->kind_state[ORCH__KIND_SLEEP];
  if (t->prev) t->prev->next = t->next;
  else ss->head = t->next;
  if (t->next) t->next->prev = t->prev;
}

static void closed(uv_handle_t *h) { free(h->data); }

static void fire(uv_timer_t *h) {
  timer *t = h->data;
  /* libuv compares due times with its cached millisecond clock, so a timer
   * can fire up to 1 ms before the real due time: never end a sleep early,
   * wait one more tick instead. */
  if (uv_hrtime() < t->due_ns) {
    uv_timer_start(&t->t, fire, 1, 0);
    return;
  }
  orch__run *r = t->r;
  uint32_t idx = t->idx;
  unlink_timer(t);
  uv_close((uv_handle_t *)&t->t, closed);
  r->g->steps[idx].status = ORCH_PASSED;
  orch__sched_finish(r, idx);
}

int orch__sleep_start(orch__run *r, uint32_t idx, double ms) {
  sleep_state *ss = r->kind_state[ORCH__KIND_SLEEP];
  if (!ss) {
    ss = calloc(1, sizeof *ss);
    if (!ss) return ORCH_ENOMEM;
    r->kind_state[ORCH__KIND_SLEEP] = ss;
  }
  if (!(ms >= 0 && ms <= ORCH__SLEEP_MAX_MS)) {
    /* Checked here too: a dry run sleeps for an llm step's cost_ms. */
    orch__step_set_error(&r->g->steps[idx],
                         "step '%s': a sleep of %g ms is out of range (0 to "
                         "%.0f ms, 30 days)",
                         orch__step_id(r->g, idx), ms, ORCH__SLEEP_MAX_MS);
    return ORCH_EINVAL;
  }
  timer *t = calloc(1, sizeof *t);
  if (!t) return ORCH_ENOMEM;
  t->r = r;
  t->idx = idx;
  t->due_ns = uv_hrtime() + (uint64_t)(ms * 1e6);
  uv_timer_init(orch__loop_uv(r->rt->loop), &t->t);
  t->t.data = t;
  t->next = ss->head;
  if (ss->head) ss->head->prev = t;
  ss->head = t;
  /* libuv timers have millisecond resolution; round to the nearest. */
  uint64_t delay = (uint64_t)(ms + 0.5);
  uv_timer_start(&t->t, fire, delay, 0);
  return ORCH_OK;
}

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  json_t *ms = json_object_get(obj, "ms");
  double v = json_is_number(ms) ? json_number_value(ms) : -1;
  if (!(v >= 0 && v <= ORCH__SLEEP_MAX_MS))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a sleep step needs \"ms\", a number from 0 to %.0f "
                     "(30 days)",
                     where, ORCH__SLEEP_MAX_MS);
  s->u.ms = v;
  return ORCH_OK;
}

static int start(orch__run *r, uint32_t idx) {
  return orch__sleep_start(r, idx, r->g->steps[idx].u.ms);
}

static void cancel(orch__run *r, uint32_t idx) {
  sleep_state *ss = r->kind_state[ORCH__KIND_SLEEP];
  for (timer *t = ss ? ss->head : NULL; t; t = t->next) {
    if (t->idx != idx) continue;
    unlink_timer(t);
    uv_timer_stop(&t->t);
    uv_close((uv_handle_t *)&t->t, closed);
    orch__step *s = &r->g->steps[idx];
    s->status = ORCH_FAILED;
    orch__step_set_error(s, "canceled");
    orch__sched_finish(r, idx);
    return;
  }
}

static double cost(const orch__step *s) { return s->u.ms; }

static const char *const keys[] = {"ms", NULL};

const orch__kind orch__kind_sleep = {.name = "sleep", .where = ORCH__ON_LOOP,
                                     .keys = keys,
                                     .parse = parse, .start = start,
                                     .cancel = cancel, .cost = cost};

int orch_graph_add_sleep(orch_graph *g, const char *id, double ms) {
  if (!g || !id || !(ms >= 0 && ms <= ORCH__SLEEP_MAX_MS)) return ORCH_EINVAL;
  uint32_t idx;
  int rc = orch__graph_add(g, id, strlen(id), ORCH__KIND_SLEEP, &idx, NULL, 0);
  if (rc) return rc;
  g->steps[idx].u.ms = ms;
  return ORCH_OK;
}
