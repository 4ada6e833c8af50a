/* step_llm.c provides the `llm` kind: a model call whose prompt is the
 * step's own plus its dependencies' results. Until the LLM engine is wired
 * the kind parses and validates plan steps, and only --dry-run runs them
 * (as simulated sleeps, in sched.c); a real run fails the step with a clear
 * error. Uses jansson. */
#include "orch_int.h"

#include <stdlib.h>

typedef struct {
  char *prompt;
} llm_params;

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  json_t *p = json_object_get(obj, "prompt");
  if (!p) p = json_object_get(obj, "description");
  if (!json_is_string(p))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: an llm step needs \"prompt\", a string", where);
  llm_params *lp = calloc(1, sizeof *lp);
  if (!lp || !(lp->prompt = orch__strdup(json_string_value(p)))) {
    free(lp);
    return ORCH_ENOMEM;
  }
  s->u.p = lp;
  return ORCH_OK;
}

static int start(orch__run *r, uint32_t idx) {
  orch__step_set_error(&r->g->steps[idx],
                       "no LLM provider is configured (use --dry-run)");
  return ORCH_ECONFIG;
}

static void free_params(orch__step *s) {
  llm_params *lp = s->u.p;
  if (lp) free(lp->prompt);
  free(lp);
  s->u.p = NULL;
}

const orch__kind orch__kind_llm = {.name = "llm", .where = ORCH__ON_LOOP,
                                   .parse = parse, .start = start,
                                   .free = free_params};
