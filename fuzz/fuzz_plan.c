/* fuzz_plan.c: libFuzzer target for plan parsing without a runtime
 * (orch_graph_parse with rt NULL: JSON plans, and Lua plans in the sandbox
 * with the default limits). Any input must give a graph or an error, never
 * a crash, a leak or undefined behaviour. Built by `make fuzz`. */
#include "orch.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  orch_graph *g = NULL;
  char err[512];
  if (orch_graph_parse(NULL, (const char *)data, size, "fuzz.json", &g, err,
                       sizeof err) == ORCH_OK)
    orch_graph_free(g);
  return 0;
}
