/* step_fn.c provides the two kinds of C-function steps: `fn`, run on a
 * worker thread, and `host_fn`, run on the thread that called orch_run (for
 * hosts whose state is not thread-safe, such as the Lua module). It also
 * provides the orch_ctx_* calls a step function uses to report. */
#include "orch_int.h"

#include <stdlib.h>
#include <string.h>

struct orch_step_ctx {
  orch__run *r;
  uint32_t idx;
};

static int run_fn(orch__run *r, uint32_t idx, orch__worker *w) {
  (void)w;
  orch__step *s = &r->g->steps[idx];
  orch_step_ctx ctx = {r, idx};
  int rc = s->u.c.fn(&ctx, s->u.c.ud);
  if (rc != ORCH_OK && !s->error)
    orch__step_set_error(s, "step function returned %d (%s)", rc,
                         orch_strerror(rc));
  return rc;
}

const orch__kind orch__kind_fn = {.name = "fn", .where = ORCH__ON_WORKER,
                                  .run = run_fn};
const orch__kind orch__kind_hostfn = {.name = "host_fn", .where = ORCH__ON_HOST,
                                      .run = run_fn};

static int add(orch_graph *g, const char *id, int kind, orch_step_fn fn,
               void *ud) {
  if (!g || !fn) return ORCH_EINVAL;
  uint32_t idx;
  /* No id: an anonymous step, named by its index. */
  int rc = id ? orch__graph_add(g, id, strlen(id), kind, &idx, NULL, 0)
              : orch__graph_add_anon(g, kind, &idx);
  if (rc) return rc;
  g->steps[idx].u.c.fn = fn;
  g->steps[idx].u.c.ud = ud;
  return ORCH_OK;
}

int orch_graph_add_fn(orch_graph *g, const char *id, orch_step_fn fn,
                      void *ud) {
  return add(g, id, ORCH__KIND_FN, fn, ud);
}

int orch_graph_add_host_fn(orch_graph *g, const char *id, orch_step_fn fn,
                           void *ud) {
  return add(g, id, ORCH__KIND_HOSTFN, fn, ud);
}

const char *orch_ctx_id(const orch_step_ctx *ctx) {
  return orch__step_id(ctx->r->g, ctx->idx);
}

void orch_ctx_set_output(orch_step_ctx *ctx, const char *s, size_t len) {
  orch__step_set_output(&ctx->r->g->steps[ctx->idx], s, len);
}

void orch_ctx_set_error(orch_step_ctx *ctx, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *e = orch__vasprintf(fmt, ap);
  va_end(ap);
  orch__step *s = &ctx->r->g->steps[ctx->idx];
  free(s->error);
  s->error = e;
}

const char *orch_ctx_dep_output(const orch_step_ctx *ctx, const char *dep_id) {
  const orch_graph *g = ctx->r->g;
  for (uint32_t e = g->dep_off[ctx->idx]; e < g->dep_off[ctx->idx + 1]; e++)
    if (strcmp(orch__step_id(g, g->deps[e]), dep_id) == 0)
      return g->steps[g->deps[e]].output;
  return NULL;
}
