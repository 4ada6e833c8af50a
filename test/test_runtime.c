/* test_runtime.c: the runtime handle (runtime.c): starting the subsystems
 * on the first run, and undoing a start that failed. */
#include "orch.h"
#include "test.h"

#include <dirent.h>

/* Threads of this process, from /proc/self/task. */
static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* A store that cannot open fails each run; the loop and the policy engine
 * started before it are stopped again, not stacked up run after run. */
TEST(runtime_failed_start_leaves_no_threads_behind) {
  orch_runtime *rt = NULL;
  char err[512];
  int before = thread_count();
  ASSERT(before > 0);
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", "sqlite:/nonexistent-dir/x.db", err,
                             sizeof err), ORCH_OK);
  for (int k = 0; k < 5; k++) {
    orch_graph *g = NULL;
    ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
    ASSERT_EQ(orch_graph_add_sleep(g, "a", 1), ORCH_OK);
    ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTORE);
    ASSERT_CONTAINS(err, "store");
    orch_graph_free(g);
    ASSERT(thread_count() <= before); /* fewer: an earlier test's ended */
  }
  /* A good setting afterwards: the runtime starts and runs. */
  ASSERT_EQ(orch_runtime_set(rt, "db", "none", err, sizeof err), ORCH_OK);
  orch_graph *g = NULL;
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "a", 1), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  orch_graph_free(g);
  orch_runtime_free(rt);
  ASSERT(thread_count() <= before);
}
