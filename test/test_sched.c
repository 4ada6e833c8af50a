/* test_sched.c: the scheduler's dispatch on the loop (sched.c) when the
 * in-flight limit binds: ready steps start by their longest remaining path. */
#include "orch.h"
#include "test.h"

/* a -> b1, b2 (100 ms each), c (10 ms) -> d (200 ms), two slots. The one
 * completion of a releases b1, b2 and c together: c, on the critical path,
 * must take a slot at once, not wait for b1 or b2 to end. */
TEST(sched_limit_starts_critical_path_first_among_released) {
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  char err[256];
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "max_parallel", "2", err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "a", 10), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "b1", 100), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "b2", 100), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "c", 10), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "d", 200), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b1", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "b2", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "c", "a"), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "d", "c"), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_OK);
  size_t b1 = (size_t)orch_graph_find(g, "b1"), b2 = (size_t)orch_graph_find(g, "b2");
  size_t c = (size_t)orch_graph_find(g, "c"), d = (size_t)orch_graph_find(g, "d");
  /* c starts with the first of b1/b2, d as soon as c ends, before the
   * other b. */
  double first_b = orch_step_started_ms(g, b1) < orch_step_started_ms(g, b2)
                       ? orch_step_started_ms(g, b1)
                       : orch_step_started_ms(g, b2);
  double last_b = orch_step_started_ms(g, b1) < orch_step_started_ms(g, b2)
                      ? orch_step_started_ms(g, b2)
                      : orch_step_started_ms(g, b1);
  ASSERT(orch_step_started_ms(g, c) <= first_b);
  ASSERT(orch_step_started_ms(g, d) < last_b);
  ASSERT(orch_graph_makespan_ms(g) < 300);
  orch_graph_free(g);
  orch_runtime_free(rt);
}
