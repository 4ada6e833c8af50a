/* embed.c: a host program that embeds liborch. It builds a small graph of
 * C steps and a shell step, runs it on the runtime's pool, and prints what
 * each step did. Build: cc embed.c $(pkg-config --cflags --libs orch). */
#include <orch.h>

#include <stdio.h>
#include <string.h>

static int fetch(orch_step_ctx *ctx, void *ud) {
  const char *what = ud;
  char out[128];
  snprintf(out, sizeof out, "%s fetched", what);
  orch_ctx_set_output(ctx, out, strlen(out));
  return ORCH_OK;
}

static int report(orch_step_ctx *ctx, void *ud) {
  (void)ud;
  char out[512];
  snprintf(out, sizeof out, "report from [%s] and [%s]",
           orch_ctx_dep_output(ctx, "users"), orch_ctx_dep_output(ctx, "orders"));
  orch_ctx_set_output(ctx, out, strlen(out));
  return ORCH_OK;
}

int main(void) {
  char err[512];
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  int rc = orch_runtime_new(&rt, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "embed: %s\n", err);
    return 1;
  }
  orch_graph_new(&g);
  static char users[] = "users", orders[] = "orders";
  orch_graph_add_fn(g, "users", fetch, users);
  orch_graph_add_fn(g, "orders", fetch, orders);
  orch_graph_add_shell(g, "date", "date -u +%Y");
  orch_graph_add_fn(g, "report", report, NULL);
  orch_graph_depend(g, "report", "users");
  orch_graph_depend(g, "report", "orders");
  rc = orch_run(rt, g, err, sizeof err);
  for (size_t i = 0; i < orch_graph_size(g); i++)
    printf("%-8s %-7s %s\n", orch_step_id(g, i),
           orch_status_name(orch_step_status(g, i)),
           orch_step_output(g, i) ? orch_step_output(g, i) : "");
  if (rc) fprintf(stderr, "embed: %s\n", err);
  orch_graph_free(g);
  orch_runtime_free(rt);
  return rc ? 1 : 0;
}
