/* fuzz_gap.c: libFuzzer target for plan parsing with a runtime, so GAP text
 * goes through scripts/policies/gap.lua's parser and the C that builds the
 * graph from what it returns. FUZZ_SCRIPTS (default: scripts) names the
 * scripts directory. Built by `make fuzz`. */
#include "orch.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static orch_runtime *rt;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  if (!rt) {
    const char *dir = getenv("FUZZ_SCRIPTS");
    if (orch_runtime_new(&rt, NULL, err, sizeof err) != ORCH_OK ||
        orch_runtime_set(rt, "scripts_dir", dir ? dir : "scripts", err,
                         sizeof err) != ORCH_OK) {
      fprintf(stderr, "fuzz_gap: %s\n", err);
      abort();
    }
  }
  orch_graph *g = NULL;
  if (orch_graph_parse(rt, (const char *)data, size, "fuzz.gap", &g, err,
                       sizeof err) == ORCH_OK)
    orch_graph_free(g);
  return 0;
}
