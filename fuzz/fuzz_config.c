/* fuzz_config.c: libFuzzer target for the operator's config file
 * (config.c: orch__config_load, then the tiers and llm sections as the
 * runtime takes them: orch__llm_config_check, and the engine built from
 * them with orch__llm_new_json, which opens no connection). A first line
 * "--KEY=VALUE" (a Lua comment) is also handed to orch__config_set.
 * Invariants: a config or an error that names the file (or the setting),
 * never a crash, a leak, undefined behaviour or a hang; a config the check
 * accepts builds an engine. Built by `make fuzz`. */
#include "orch_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], path[128];
static uv_loop_t loop;

static void cleanup(void) {
  unlink(path);
  rmdir(dir);
  uv_loop_close(&loop);
}

static void setup(void) {
  snprintf(dir, sizeof dir, "/dev/shm/orch-fuzz-config-XXXXXX");
  if (!mkdtemp(dir)) {
    snprintf(dir, sizeof dir, "/tmp/orch-fuzz-config-XXXXXX");
    if (!mkdtemp(dir)) abort();
  }
  snprintf(path, sizeof path, "%s/fuzz.conf.lua", dir);
  /* the tiers from the file alone, the same on every run */
  static const char *const vars[] = {
      "OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL",
      "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ORCH_CONFIG"};
  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) unsetenv(vars[i]);
  if (uv_loop_init(&loop) != 0) abort();
  atexit(cleanup);
}

static void fail(const char *what, const char *msg) {
  fprintf(stderr, "fuzz_config: %s: \"%s\"\n", what, msg);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!dir[0]) setup();
  FILE *f = fopen(path, "wb");
  if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
    abort();

  orch__config c;
  orch__config_defaults(&c);
  char err[512] = "";
  int rc = orch__config_load(&c, path, err, sizeof err);
  if (rc != ORCH_OK) {
    if (rc != ORCH_ECONFIG && rc != ORCH_ENOMEM) fail("unexpected code", err);
    if (rc == ORCH_ECONFIG && !strstr(err, path))
      fail("error without the file's name", err);
    goto done;
  }

  /* "--KEY=VALUE" on the first line: a command-line override */
  if (size > 2 && data[0] == '-' && data[1] == '-') {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t len = nl ? (size_t)(nl - data) : size;
    char *line = strndup((const char *)data + 2, len - 2);
    char *eq = line ? strchr(line, '=') : NULL;
    if (eq) {
      *eq = '\0';
      err[0] = '\0';
      /* the key's first bytes: a long one is cut with the message */
      char key[64];
      snprintf(key, sizeof key, "%s", line);
      if (orch__config_set(&c, line, eq + 1, err, sizeof err) != ORCH_OK &&
          (!err[0] || !strstr(err, key)))
        fail("override error without the key", err);
    }
    free(line);
  }

  if (c.sections) {
    char msg[512] = "";
    if (orch__llm_config_check(c.sections, msg, sizeof msg) != ORCH_OK) {
      if (!msg[0]) fail("llm check failed without a message", msg);
      goto done;
    }
    orch__llm *l = NULL;
    msg[0] = '\0';
    rc = orch__llm_new_json(&l, c.sections, &loop, msg, sizeof msg);
    if (rc == ORCH_OK) {
      orch__llm_free(l);
      uv_run(&loop, UV_RUN_DEFAULT); /* the engine's handles close */
    } else if (rc != ORCH_ENOMEM) {
      fail("the check passed, building the engine failed", msg);
    }
  }
done:
  orch__config_deinit(&c);
  return 0;
}
