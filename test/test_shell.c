/* test_shell.c: the shell step kind (step_shell.c): what a step keeps of
 * its output and stderr, and that a step ends on time when its pipes are
 * held open by a process outside its process group. */
#include "orch.h"
#include "test.h"

#include <stdio.h>

static orch_runtime *new_rt(const char *max) {
  orch_runtime *rt = NULL;
  char err[256];
  if (orch_runtime_new(&rt, NULL, err, sizeof err)) return NULL;
  orch_runtime_set(rt, "workers", "2", err, sizeof err);
  orch_runtime_set(rt, "db", "none", err, sizeof err);
  if (max) orch_runtime_set(rt, "output_max_bytes", max, err, sizeof err);
  return rt;
}

/* Runs one step given as plan JSON on rt; *g OUT: the graph run. */
static int run_one(orch_runtime *rt, const char *step_json,
                   orch_graph **g /* OUT */) {
  char err[256];
  int rc = orch_graph_new(g);
  if (rc) return rc;
  if ((rc = orch_graph_add_json(*g, step_json, err, sizeof err))) return rc;
  return orch_run(rt, *g, err, sizeof err);
}

TEST(shell_stderr_over_the_limit_leaves_stdout_alone) {
  orch_runtime *rt = new_rt("1000");
  orch_graph *g = NULL;
  ASSERT(rt);
  ASSERT_EQ(run_one(rt,
                    "{\"id\":\"a\",\"kind\":\"shell\",\"run\":"
                    "\"echo small; head -c 5000 /dev/zero >&2\"}",
                    &g),
            ORCH_OK);
  ASSERT_STR_EQ(orch_step_output(g, 0), "small\n");
  orch_graph_free(g);
  g = NULL;
  /* stdout's own overflow is still said, with stdout's count alone */
  ASSERT_EQ(run_one(rt,
                    "{\"id\":\"a\",\"kind\":\"shell\",\"run\":"
                    "\"head -c 1500 /dev/zero | tr '\\\\0' x; "
                    "head -c 5000 /dev/zero >&2\"}",
                    &g),
            ORCH_OK);
  ASSERT_CONTAINS(orch_step_output(g, 0),
                  "\n[orchestrate: 500 bytes of output over the limit not kept]");
  orch_graph_free(g);
  orch_runtime_free(rt);
}

/* stderr's kept tail (2000 bytes) would start inside a two-byte
 * character: 1500 x U+00E9 and a newline are 3001 bytes. */
TEST(shell_stderr_tail_starts_on_a_character) {
  orch_runtime *rt = new_rt(NULL);
  orch_graph *g = NULL;
  ASSERT(rt);
  ASSERT_EQ(run_one(rt,
                    "{\"id\":\"a\",\"kind\":\"shell\",\"run\":"
                    "\"i=0; while [ $i -lt 1500 ]; do printf '\\\\303\\\\251'; "
                    "i=$((i+1)); done >&2; echo >&2; exit 3\"}",
                    &g),
            ORCH_ESTEP);
  const char *e = orch_step_error(g, 0);
  ASSERT_CONTAINS(e, "exit status 3: ");
  const char *t = strstr(e, ": ") + 2;
  ASSERT_EQ((unsigned char)t[0], 0xC3);
  ASSERT_EQ((unsigned char)t[1], 0xA9);
  ASSERT_EQ(strlen(t), 1999); /* 999 characters and the newline */
  orch_graph_free(g);
  orch_runtime_free(rt);
}
