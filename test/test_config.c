/* test_config.c: the runtime's settings (config.c): where the policy
 * scripts are looked for when no setting names them, and what a config
 * file that is not what it should be gets (an error naming the file, never
 * a hang); the tiers section as the LLM engine takes it (llm.c). */
#include "orch_int.h"
#include "test.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void put_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

/* A project's own scripts/ (shell files) is not taken for the policy
 * scripts: the build tree's serve, found from the library's own file (the
 * test program here, which links the static library). A scripts/ that
 * holds policies/retry.lua is taken. */
TEST(config_takes_a_scripts_dir_only_when_it_is_ours) {
  char tmpl[] = "/tmp/orch-config-XXXXXX", probe[PATH_MAX + 32];
  ASSERT(mkdtemp(tmpl));
  int here = open(".", O_RDONLY | O_DIRECTORY);
  ASSERT(here >= 0);
  ASSERT_EQ(chdir(tmpl), 0);
  mkdir("scripts", 0755);
  put_file("scripts/deploy.sh", "echo deploy\n");
  orch__config c;
  orch__config_defaults(&c);
  char *dir1 = orch__strdup(c.scripts_dir);
  orch__config_deinit(&c);
  mkdir("scripts/policies", 0755);
  put_file("scripts/policies/retry.lua", "return {}\n");
  orch__config_defaults(&c);
  char *dir2 = orch__strdup(c.scripts_dir);
  orch__config_deinit(&c);
  unlink("scripts/policies/retry.lua");
  rmdir("scripts/policies");
  unlink("scripts/deploy.sh");
  rmdir("scripts");
  ASSERT_EQ(fchdir(here), 0);
  close(here);
  rmdir(tmpl);

  ASSERT(dir1 && dir1[0] == '/');
  snprintf(probe, sizeof probe, "%s/policies/retry.lua", dir1);
  ASSERT_EQ(access(probe, R_OK), 0);
  ASSERT_STR_EQ(dir2, "scripts");
  free(dir1);
  free(dir2);
}

/* ---- a config file that is not what it should be ------------------------- */

/* Writes text (len bytes) to a fresh file and loads it on top of the
 * defaults, in a child process given `secs` seconds: a file that hangs the
 * loader fails the test (rc -1, "hung") instead of holding it. The path
 * goes to path (PATH_MAX). */
static int load_text(const char *text, size_t len, unsigned secs, char *path,
                     char *err, size_t errlen) {
  static int seq;
  snprintf(path, PATH_MAX, "/tmp/orch-config-%d-%d.lua", (int)getpid(), seq++);
  FILE *f = fopen(path, "wb");
  if (!f) return -2;
  fwrite(text, 1, len, f);
  fclose(f);
  int fds[2];
  if (pipe(fds) != 0) return -2;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    alarm(secs);
    orch__config c;
    orch__config_defaults(&c);
    char e[512] = "";
    int rc = orch__config_load(&c, path, e, sizeof e);
    orch__config_deinit(&c);
    if (write(fds[1], &rc, sizeof rc) != sizeof rc ||
        write(fds[1], e, sizeof e) != sizeof e)
      _exit(1);
    _exit(0);
  }
  close(fds[1]);
  int rc = -1;
  char e[512] = "hung";
  if (read(fds[0], &rc, sizeof rc) != sizeof rc ||
      read(fds[0], e, sizeof e) != sizeof e) {
    rc = -1;
    snprintf(e, sizeof e, "hung (or crashed) loading: %s", text);
  }
  close(fds[0]);
  waitpid(pid, NULL, 0);
  unlink(path);
  snprintf(err, errlen, "%s", e);
  return rc;
}

#define LOAD(text, secs, path, err) \
  load_text((text), sizeof(text) - 1, (secs), (path), (err), sizeof(err))

/* Every refusal names the file: also an error raised without a position
 * (error("x", 0)), an error object that is not a string (the message was
 * printf'd from NULL), a memory error, and a value that cannot be data. */
TEST(config_errors_name_the_file) {
  char path[PATH_MAX], err[512];
  ASSERT_EQ(LOAD("error({})", 10, path, err), ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "error object is a table value");
  ASSERT_EQ(LOAD("error('boom', 0)", 10, path, err), ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, ": boom");
  ASSERT_EQ(LOAD("return {\n  workers = = 2 }", 10, path, err), ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, ":2:");
  ASSERT_EQ(LOAD("return { server = { f = print } }", 10, path, err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "server.f: a function cannot be data");
}

/* The instruction budget stops a file whatever it does: a pcall around a
 * loop swallowed the budget's error (and the next 10 million instructions
 * raised it again, for ever), and a finalizer, xpcall's message handler,
 * pattern matching, string.rep("", n) and table.move run where no
 * instruction is counted. */
TEST(config_budget_stops_what_pcall_finalizers_and_c_loops_would_spin) {
  static const char *const files[] = {
      "while true do pcall(function() while true do end end) end",
      "setmetatable({}, {__gc = function() while true do end end})\n"
      "return {}",
      "xpcall(function() while true do end end,\n"
      "       function() while true do end end)",
      "local s = ('a'):rep(3000)\n"
      "return { scripts_dir = s:find('.-.-.-.-.-.-.-b') }",
      "return { workers = #string.rep('', 1 << 62) }",
      "table.move({}, 1, 1 << 50, 1) return {}",
  };
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char path[PATH_MAX], err[512];
    int rc = load_text(files[i], strlen(files[i]), 20, path, err, sizeof err);
    if (i == 4) { /* rep("", n) is "": the file is fine, and quick */
      ASSERT_EQ(rc, ORCH_OK);
      continue;
    }
    ASSERT_EQ(rc, ORCH_ECONFIG);
    ASSERT_CONTAINS(err, path);
  }
}

/* A config file's Lua has a memory cap (64 MiB): one took what it asked
 * for, a gigabyte a line. */
TEST(config_memory_is_capped) {
  char path[PATH_MAX], err[512];
  ASSERT_EQ(LOAD("local s = string.rep('x', 100 << 20) return {}", 20, path,
                 err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "out of memory");
}

/* jansson's keys are UTF-8 C strings: a key with a NUL byte was taken for
 * the part before it ("workers\0x" set workers), and a key that is not
 * UTF-8 was left out without a word. */
TEST(config_refuses_keys_with_a_nul_byte_or_bad_utf8) {
  char path[PATH_MAX], err[512];
  ASSERT_EQ(LOAD("return { ['workers\\0x'] = 4 }", 10, path, err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "a key has a NUL byte (byte 7)");
  ASSERT_EQ(LOAD("return { llm = { ['time\\255out_ms'] = 1 } }", 10, path, err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "llm: a key is not valid UTF-8 (byte 4)");
}

/* A string value with a NUL byte is refused too: every reader takes the
 * config's strings as C strings (a store url "sqlite:a.db\0x" was
 * "sqlite:a.db", a tier's api_key cut short). */
TEST(config_refuses_string_values_with_a_nul_byte) {
  char path[PATH_MAX], err[512];
  ASSERT_EQ(LOAD("return { store = { url = 'sqlite:a.db\0x' } }", 10, path,
                 err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "'store.url' has a NUL byte (byte 11)");
  ASSERT_EQ(LOAD("return { tiers = { fast = { model = 'a' } },\n"
                 "  scripts_dir = 'x\0' }", 10, path, err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "'scripts_dir' has a NUL byte (byte 1)");
  ASSERT_EQ(LOAD("return { server = { list = { 'a', 'b\0' } } }", 10, path,
                 err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "'server.list[2]' has a NUL byte");
}

/* A number from the command line out of the integer range was cast
 * before it was checked (undefined behaviour); times have the bound a
 * sleep has (libuv's timers take integer milliseconds). */
TEST(config_set_refuses_numbers_out_of_range) {
  orch__config c;
  orch__config_defaults(&c);
  char err[256] = "";
  ASSERT_EQ(orch__config_set(&c, "plan_max_bytes", "1e30", err, sizeof err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "'plan_max_bytes': '1e30' is out of range");
  ASSERT_EQ(orch__config_set(&c, "workers", "-1e300", err, sizeof err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "out of range");
  ASSERT_EQ(orch__config_set(&c, "workers", "nan", err, sizeof err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "is not a number");
  ASSERT_EQ(orch__config_set(&c, "shell_timeout_ms", "1e300", err, sizeof err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "'shell_timeout_ms' must be at most");
  ASSERT_EQ(orch__config_set(&c, "plan_max_bytes", "4096", err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(c.plan_max_bytes, 4096);
  orch__config_deinit(&c);
}

/* A tiers section the check accepts builds an engine: the check allowed
 * 64 tiers, the engine has 64 slots with fast, local and strong in 3. */
TEST(config_tier_count_agrees_with_the_engine) {
  for (int extra = 61; extra <= 62; extra++) {
    json_t *tiers = json_object();
    for (int i = 0; i < extra; i++) {
      char name[16];
      snprintf(name, sizeof name, "t%d", i);
      json_object_set_new(tiers, name, json_object());
    }
    json_object_set_new(tiers, "fast", json_object()); /* a built-in */
    json_t *sec = json_pack("{s:o}", "tiers", tiers);
    char err[256] = "";
    int rc = orch__llm_config_check(sec, err, sizeof err);
    if (extra == 62) {
      json_decref(sec);
      ASSERT_EQ(rc, ORCH_ECONFIG);
      ASSERT_CONTAINS(err, "more than 61 tiers besides fast, local and strong");
      continue;
    }
    ASSERT_EQ(rc, ORCH_OK);
    uv_loop_t loop;
    uv_loop_init(&loop);
    orch__llm *l = NULL;
    rc = orch__llm_new_json(&l, sec, &loop, err, sizeof err);
    json_decref(sec);
    orch__llm_free(l);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ASSERT_EQ(rc, ORCH_OK);
  }
}

/* llm.default_tier names a tier the engine will have: the check let any
 * name through, and the engine refused it at the first llm step instead
 * of at the runtime's start. */
TEST(config_llm_default_tier_is_checked_with_the_tiers) {
  static const struct {
    const char *json;
    int rc;
  } cases[] = {
      {"{\"llm\": {\"default_tier\": \"dolocal\"}}", ORCH_ECONFIG},
      {"{\"llm\": {\"default_tier\": \"strong\"}}", ORCH_OK},
      {"{\"tiers\": {\"mine\": {}}, \"llm\": {\"default_tier\": \"mine\"}}",
       ORCH_OK},
      {"{\"tiers\": [], \"llm\": {\"default_tier\": \"mine\"}}", ORCH_ECONFIG},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    json_t *sec = json_loads(cases[i].json, 0, NULL);
    ASSERT(sec != NULL);
    char err[256] = "";
    int rc = orch__llm_config_check(sec, err, sizeof err);
    json_decref(sec);
    ASSERT_EQ(rc, cases[i].rc);
    if (rc) ASSERT_CONTAINS(err, "llm.default_tier: no tier named");
  }
}
