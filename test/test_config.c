/* test_config.c: the runtime's settings (config.c): where the policy
 * scripts are looked for when no setting names them. */
#include "orch_int.h"
#include "test.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
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
