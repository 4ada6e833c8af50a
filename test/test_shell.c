/* test_shell.c: the shell step kind (step_shell.c): what a step keeps of
 * its output and stderr, and that a step ends on time when its pipes are
 * held open by a process outside its process group. */
#include "orch.h"
#include "test.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

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

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A step whose command starts a grandchild that leaves the process group
 * (setsid) and keeps stdout and stderr open; *pidfile gets its PID. */
static void held_pipes_step(char *json, size_t cap, char *pidfile,
                            const char *rest, const char *extra) {
  snprintf(pidfile, 64, "/tmp/orch-test-shell-%ld.pid", (long)getpid());
  unlink(pidfile);
  snprintf(json, cap,
           "{\"id\":\"a\",\"kind\":\"shell\",\"run\":"
           "\"setsid sleep 4 & echo $! > %s; %s\"%s}",
           pidfile, rest, extra);
}

/* Kills the grandchild by its recorded PID (never by name). */
static void kill_held(const char *pidfile) {
  FILE *f = fopen(pidfile, "r");
  long pid = 0;
  if (f) {
    if (fscanf(f, "%ld", &pid) != 1) pid = 0;
    fclose(f);
  }
  if (pid > 0) kill((pid_t)pid, SIGKILL);
  unlink(pidfile);
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

TEST(shell_ends_soon_after_its_shell_when_a_grandchild_holds_the_pipes) {
  orch_runtime *rt = new_rt(NULL);
  orch_graph *g = NULL;
  char json[512], pidfile[64];
  ASSERT(rt);
  held_pipes_step(json, sizeof json, pidfile, "sleep 0.2; echo started",
                  ",\"timeout_ms\":3000");
  double t0 = now_ms();
  int rc = run_one(rt, json, &g);
  double took = now_ms() - t0;
  kill_held(pidfile);
  ASSERT_EQ(rc, ORCH_OK);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_PASSED);
  ASSERT_EQ(orch_step_exit_status(g, 0), 0);
  ASSERT_STR_EQ(orch_step_output(g, 0), "started\n");
  ASSERT(took < 1500);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

TEST(shell_timeout_ends_the_step_when_a_grandchild_holds_the_pipes) {
  orch_runtime *rt = new_rt(NULL);
  orch_graph *g = NULL;
  char json[512], pidfile[64];
  ASSERT(rt);
  held_pipes_step(json, sizeof json, pidfile, "echo started; sleep 30",
                  ",\"timeout_ms\":300");
  double t0 = now_ms();
  int rc = run_one(rt, json, &g);
  double took = now_ms() - t0;
  kill_held(pidfile);
  ASSERT_EQ(rc, ORCH_ESTEP);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "timed out after 300 ms");
  ASSERT_STR_EQ(orch_step_output(g, 0), "started\n");
  ASSERT(orch_step_finished_ms(g, 0) < 1500);
  ASSERT(took < 1500);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

static int cancel_run(orch_step_ctx *ctx, void *ud) {
  (void)ctx;
  orch_runtime_cancel(ud);
  return ORCH_OK;
}

TEST(shell_cancel_ends_the_step_when_a_grandchild_holds_the_pipes) {
  orch_runtime *rt = new_rt(NULL);
  orch_graph *g = NULL;
  char json[512], pidfile[64], err[256];
  ASSERT(rt);
  held_pipes_step(json, sizeof json, pidfile, "sleep 30", "");
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_json(g, json, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_add_sleep(g, "wait", 300), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "cancel", cancel_run, rt), ORCH_OK);
  ASSERT_EQ(orch_graph_depend(g, "cancel", "wait"), ORCH_OK);
  double t0 = now_ms();
  int rc = orch_run(rt, g, err, sizeof err);
  double took = now_ms() - t0;
  kill_held(pidfile);
  ASSERT_EQ(rc, ORCH_ECANCELED);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_FAILED);
  ASSERT_CONTAINS(orch_step_error(g, 0), "canceled");
  ASSERT(took < 1500);
  orch_graph_free(g);
  orch_runtime_free(rt);
}

/* How many processes of group pgid are alive, zombies not counted (they
 * wait for an init that may be slow to reap them). */
static int live_in_group(pid_t pgid) {
  int n = 0;
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    char path[300], buf[512], state;
    long pgrp;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')'); /* after the command name */
    if (p && sscanf(p + 1, " %c %*d %ld", &state, &pgrp) == 2 &&
        pgrp == (long)pgid && state != 'Z' && state != 'X')
      n++;
  }
  if (d) closedir(d);
  return n;
}

/* Waits for the shell step to write its PID (its process group), then
 * kills every tracked group, as a host's second Ctrl-C does. */
static int kill_all_when_started(orch_step_ctx *ctx, void *ud) {
  const char *pidfile = ud;
  (void)ctx;
  for (int k = 0; k < 200 && access(pidfile, R_OK) != 0; k++) usleep(10000);
  usleep(50000); /* the shell is past its echo */
  orch_shell_kill_all();
  return ORCH_OK;
}

TEST(shell_kill_all_kills_the_running_groups) {
  orch_runtime *rt = new_rt(NULL);
  orch_graph *g = NULL;
  char json[512], pidfile[64], err[256];
  ASSERT(rt);
  snprintf(pidfile, sizeof pidfile, "/tmp/orch-test-shell-%ld.pgid", (long)getpid());
  unlink(pidfile);
  snprintf(json, sizeof json,
           "{\"id\":\"a\",\"kind\":\"shell\",\"run\":"
           "\"echo $$ > %s; sleep 30 & sleep 30\"}", pidfile);
  ASSERT_EQ(orch_graph_new(&g), ORCH_OK);
  ASSERT_EQ(orch_graph_add_json(g, json, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_add_fn(g, "killer", kill_all_when_started, pidfile), ORCH_OK);
  double t0 = now_ms();
  int rc = orch_run(rt, g, err, sizeof err);
  double took = now_ms() - t0;
  FILE *f = fopen(pidfile, "r");
  long pgid = 0;
  if (f) {
    if (fscanf(f, "%ld", &pgid) != 1) pgid = 0;
    fclose(f);
  }
  unlink(pidfile);
  if (pgid > 0 && took >= 5000) kill(-(pid_t)pgid, SIGKILL);
  ASSERT(pgid > 0);
  ASSERT(took < 5000);
  ASSERT_EQ(rc, ORCH_ESTEP);
  ASSERT_CONTAINS(orch_step_error(g, 0), "killed by signal 9");
  /* SIGKILL is sent; a loaded machine may take a moment to end the
   * background sleep (the shell's was reaped by the run) */
  for (int k = 0; k < 200 && live_in_group((pid_t)pgid) > 0; k++) usleep(10000);
  ASSERT_EQ(live_in_group((pid_t)pgid), 0);
  orch_graph_free(g);
  orch_runtime_free(rt);
}
