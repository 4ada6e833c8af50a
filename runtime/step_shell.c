/* step_shell.c provides the `shell` kind: `/bin/sh -c RUN` started with
 * posix_spawn in its own process group, stdout and stderr read through
 * pipes on the event loop (kept up to output_max_bytes each), the exit
 * watched with a pidfd (or a short poll where pidfds are missing), and a
 * timeout that kills the whole group. The step ends with its shell: a
 * process that left the group (setsid) and still holds the pipes gets
 * GRACE_MS more, then the pipes are closed. No worker thread ever waits
 * on a child. Uses libuv and sched.c. */
#include "orch_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* How long the pipes stay open after the shell exited: enough for what a
 * finished writer left in them, not for one that outlives the step. */
enum { GRACE_MS = 150 };

/* The process groups of the running shells of the whole process, for
 * orch_shell_kill_all in a signal handler: a slot is taken (0 -> pgid)
 * when a shell starts and given back once it is reaped and its group
 * killed. No lock: a signal may come at any instant. */
enum { TRACKED_MAX = 4096 };
static atomic_int tracked[TRACKED_MAX];

typedef struct shell_params {
  char *run;
  char *cwd;
  char **writes; /* paths the step declares it writes (file locks) */
  size_t nwrites;
} shell_params;

typedef struct child {
  orch__run *r;
  uint32_t idx;
  pid_t pid;
  int pidfd;
  int slot; /* in tracked[], -1 when the table was full */
  uv_poll_t exit_poll; /* on the pidfd */
  uv_timer_t exit_timer; /* polls waitpid when there is no pidfd */
  uv_timer_t timeout; /* the step's timeout; GRACE_MS once the shell exited */
  uv_pipe_t out, err;
  orch__buf obuf, ebuf;
  size_t max;
  size_t out_dropped, err_dropped; /* bytes over max, not kept */
  int open_handles;
  int status;
  bool exited, out_eof, err_eof, timed_out, canceled, done;
  struct child *prev, *next;
} child;

typedef struct {
  child *head;
} shell_state;

static void finish_if_done(child *c);

static void handle_closed(uv_handle_t *h) {
  child *c = h->data;
  if (h == (uv_handle_t *)&c->exit_poll && c->pidfd >= 0) close(c->pidfd);
  if (--c->open_handles == 0) {
    orch__buf_deinit(&c->obuf);
    orch__buf_deinit(&c->ebuf);
    free(c);
  }
}

static void close_handle(child *c, uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, handle_closed);
  (void)c;
}

/* Reads land here, on the loop thread only. */
static __thread char chunk[65536];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = chunk;
  buf->len = sizeof chunk;
}

static void keep(child *c, bool is_out, const char *p, size_t n) {
  orch__buf *b = is_out ? &c->obuf : &c->ebuf;
  size_t room = c->max > b->len ? c->max - b->len : 0;
  size_t take = n < room ? n : room;
  if (take) orch__buf_add(b, p, take);
  *(is_out ? &c->out_dropped : &c->err_dropped) += n - take;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  child *c = s->data;
  bool is_out = s == (uv_stream_t *)&c->out;
  if (n > 0) {
    keep(c, is_out, buf->base, (size_t)n);
    return;
  }
  if (n == 0) return;
  /* EOF or error: this stream is over. */
  uv_read_stop(s);
  if (is_out) c->out_eof = true;
  else c->err_eof = true;
  finish_if_done(c);
}

/* Stops reading a stream whose EOF has not come, as if it had: what is
 * in the pipe already is taken first, in a bounded number of reads (the
 * writer may never stop). Closing the handle later closes our end. */
static void cut(child *c, bool is_out) {
  uv_pipe_t *p = is_out ? &c->out : &c->err;
  bool *eof = is_out ? &c->out_eof : &c->err_eof;
  uv_os_fd_t fd;
  if (*eof) return;
  if (uv_fileno((uv_handle_t *)p, &fd) == 0)
    for (int k = 0; k < 16; k++) {
      ssize_t n = read(fd, chunk, sizeof chunk); /* non-blocking */
      if (n <= 0) break;
      keep(c, is_out, chunk, (size_t)n);
    }
  uv_read_stop((uv_stream_t *)p);
  *eof = true;
}

/* The shell is gone and the pipes are still open: a process outside the
 * group holds them. The step ends with what was read. */
static void cut_pipes(child *c) {
  cut(c, true);
  cut(c, false);
  finish_if_done(c);
}

static void on_grace(uv_timer_t *h) { cut_pipes(h->data); }

static void track(child *c) {
  c->slot = -1;
  for (int i = 0; i < TRACKED_MAX; i++) {
    int free_slot = 0;
    if (atomic_load_explicit(&tracked[i], memory_order_relaxed) == 0 &&
        atomic_compare_exchange_strong(&tracked[i], &free_slot, (int)c->pid)) {
      c->slot = i;
      return;
    }
  }
}

static void untrack(child *c) {
  if (c->slot >= 0) atomic_store(&tracked[c->slot], 0);
  c->slot = -1;
}

void orch_shell_kill_all(void) {
  for (int i = 0; i < TRACKED_MAX; i++) {
    int pgid = atomic_load(&tracked[i]);
    if (pgid > 0) kill(-(pid_t)pgid, SIGKILL);
  }
}

static void reap(child *c) {
  int st;
  pid_t p = waitpid(c->pid, &st, WNOHANG);
  if (p != c->pid) return;
  c->exited = true;
  c->status = st;
  if (c->pidfd >= 0) uv_poll_stop(&c->exit_poll);
  else uv_timer_stop(&c->exit_timer);
  /* What the shell left running in its process group would hold the pipes
   * open and outlive the step: it goes with it. */
  kill(-c->pid, SIGKILL);
  untrack(c);
  uv_timer_stop(&c->timeout);
  if (c->timed_out || c->canceled) { /* killed: nothing more to wait for */
    cut_pipes(c);
    return;
  }
  finish_if_done(c);
  if (!c->done) uv_timer_start(&c->timeout, on_grace, GRACE_MS, 0);
}

static void on_exit_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  reap(h->data);
}

static void on_exit_timer(uv_timer_t *h) { reap(h->data); }

static void kill_group(child *c) {
  if (!c->exited) kill(-c->pid, SIGKILL);
}

static void on_timeout(uv_timer_t *h) {
  child *c = h->data;
  c->timed_out = true;
  kill_group(c); /* reap cuts the pipes */
}

static void unlink_child(child *c) {
  shell_state *ss = c->r->kind_state[ORCH__KIND_SHELL];
  if (c->prev) c->prev->next = c->next;
  else ss->head = c->next;
  if (c->next) c->next->prev = c->prev;
}

/* The last n bytes of b or a few less: the tail starts on a character,
 * not inside a UTF-8 sequence (bytes that are not UTF-8 at all stay as
 * they are; a JSON writer must repair them). */
static const char *tail(const orch__buf *b, size_t n) {
  if (!b->p) return "";
  if (b->len <= n) return b->p;
  const char *t = b->p + b->len - n;
  for (int k = 0; k < 3 && ((unsigned char)*t & 0xC0) == 0x80; k++) t++;
  return t;
}

static void finish_if_done(child *c) {
  if (c->done || !c->exited || !c->out_eof || !c->err_eof) return;
  c->done = true;
  orch__run *r = c->r;
  orch__step *s = &r->g->steps[c->idx];
  uv_timer_stop(&c->timeout);
  unlink_child(c);
  int st = c->status;
  s->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  orch__step_set_output(s, c->obuf.p ? c->obuf.p : "", c->obuf.len);
  const char *etail = tail(&c->ebuf, 2000);
  if (c->canceled) {
    s->status = ORCH_FAILED;
    orch__step_set_error(s, "canceled: process group killed");
  } else if (c->timed_out) {
    s->status = ORCH_FAILED;
    orch__step_set_error(s, "timed out after %.0f ms: process group killed",
                         (double)s->timeout_ms);
  } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    s->status = ORCH_PASSED;
  } else if (WIFEXITED(st)) {
    s->status = ORCH_FAILED;
    orch__step_set_error(s, "exit status %d%s%s", WEXITSTATUS(st),
                         *etail ? ": " : "", etail);
  } else {
    s->status = ORCH_FAILED;
    orch__step_set_error(s, "killed by signal %d%s%s", WTERMSIG(st),
                         *etail ? ": " : "", etail);
  }
  if (c->out_dropped && s->status == ORCH_PASSED) {
    /* Kept output is capped; say how much of stdout was not kept (what
     * stderr loses is its business: only its tail is ever shown). */
    char note[96];
    int n = snprintf(note, sizeof note,
                     "\n[orchestrate: %zu bytes of output over the limit not kept]",
                     c->out_dropped);
    orch__buf_add(&c->obuf, note, (size_t)n);
    orch__step_set_output(s, c->obuf.p, c->obuf.len);
  }
  close_handle(c, (uv_handle_t *)&c->out);
  close_handle(c, (uv_handle_t *)&c->err);
  close_handle(c, (uv_handle_t *)&c->timeout);
  if (c->pidfd >= 0) {
    close_handle(c, (uv_handle_t *)&c->exit_poll);
  } else {
    close_handle(c, (uv_handle_t *)&c->exit_timer);
  }
  orch__sched_finish(r, c->idx);
}

static int start(orch__run *r, uint32_t idx) {
  orch__step *s = &r->g->steps[idx];
  shell_params *sp = s->u.p;
  uv_loop_t *loop = orch__loop_uv(r->rt->loop);
  int po[2] = {-1, -1}, pe[2] = {-1, -1};
  int rc = ORCH_EIO;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  bool fa_ok = false, at_ok = false;
  shell_state *ss = r->kind_state[ORCH__KIND_SHELL];
  if (!ss) {
    ss = calloc(1, sizeof *ss);
    if (!ss) return ORCH_ENOMEM;
    r->kind_state[ORCH__KIND_SHELL] = ss;
  }
  child *c = calloc(1, sizeof *c);
  if (!c) return ORCH_ENOMEM;
  if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) {
    orch__step_set_error(s, "cannot create pipes: %s", strerror(errno));
    goto fail;
  }
  posix_spawn_file_actions_init(&fa);
  fa_ok = true;
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, po[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
  if (sp->cwd) posix_spawn_file_actions_addchdir_np(&fa, sp->cwd);
  posix_spawnattr_init(&at);
  at_ok = true;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&at, &none);
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  sigaddset(&def, SIGINT);
  sigaddset(&def, SIGTERM);
  posix_spawnattr_setsigdefault(&at, &def);
  posix_spawnattr_setpgroup(&at, 0);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                    POSIX_SPAWN_SETSIGDEF);
  char *argv[] = {(char *)"/bin/sh", (char *)"-c", sp->run, NULL};
  int e = posix_spawn(&c->pid, "/bin/sh", &fa, &at, argv, environ);
  if (e) {
    /* the chdir to cwd runs in the child before the exec: its failure
     * comes back as the spawn's, so name the directory when it is the one */
    struct stat cs;
    if (sp->cwd && (stat(sp->cwd, &cs) != 0 || !S_ISDIR(cs.st_mode)))
      orch__step_set_error(s, "cannot start in cwd '%s': %s", sp->cwd,
                           strerror(e));
    else
      orch__step_set_error(s, "cannot start /bin/sh: %s", strerror(e));
    goto fail;
  }
  close(po[1]);
  close(pe[1]);
  po[1] = pe[1] = -1;
  c->r = r;
  c->idx = idx;
  c->max = r->rt->cfg.output_max_bytes;
  track(c);
  c->pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
  uv_pipe_init(loop, &c->out, 0);
  uv_pipe_init(loop, &c->err, 0);
  uv_pipe_open(&c->out, po[0]);
  uv_pipe_open(&c->err, pe[0]);
  c->out.data = c->err.data = c;
  uv_read_start((uv_stream_t *)&c->out, alloc_cb, on_read);
  uv_read_start((uv_stream_t *)&c->err, alloc_cb, on_read);
  uv_timer_init(loop, &c->timeout);
  c->timeout.data = c;
  c->open_handles = 4;
  if (c->pidfd >= 0) {
    uv_poll_init(loop, &c->exit_poll, c->pidfd);
    c->exit_poll.data = c;
    uv_poll_start(&c->exit_poll, UV_READABLE, on_exit_poll);
  } else {
    uv_timer_init(loop, &c->exit_timer);
    c->exit_timer.data = c;
    uv_timer_start(&c->exit_timer, on_exit_timer, 5, 5);
  }
  double tmo = s->timeout_ms > 0 ? s->timeout_ms : r->rt->cfg.shell_timeout_ms;
  if (tmo > 0) uv_timer_start(&c->timeout, on_timeout, (uint64_t)tmo, 0);
  if (!(s->timeout_ms > 0)) s->timeout_ms = (float)tmo;
  c->next = ss->head;
  if (ss->head) ss->head->prev = c;
  ss->head = c;
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  return ORCH_OK;
fail:
  if (fa_ok) posix_spawn_file_actions_destroy(&fa);
  if (at_ok) posix_spawnattr_destroy(&at);
  for (int i = 0; i < 2; i++) {
    if (po[i] >= 0) close(po[i]);
    if (pe[i] >= 0) close(pe[i]);
  }
  free(c);
  return rc;
}

static void cancel(orch__run *r, uint32_t idx) {
  shell_state *ss = r->kind_state[ORCH__KIND_SHELL];
  for (child *c = ss ? ss->head : NULL; c; c = c->next)
    if (c->idx == idx) {
      c->canceled = true;
      if (c->exited) cut_pipes(c); /* in its grace period */
      else kill_group(c); /* reap cuts the pipes */
      return;
    }
}

static void free_params(orch__step *s) {
  shell_params *sp = s->u.p;
  if (!sp) return;
  free(sp->run);
  free(sp->cwd);
  for (size_t i = 0; i < sp->nwrites; i++) free(sp->writes[i]);
  free(sp->writes);
  free(sp);
  s->u.p = NULL;
}

static shell_params *new_params(const char *run) {
  shell_params *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  sp->run = orch__strdup(run);
  if (!sp->run) {
    free(sp);
    return NULL;
  }
  return sp;
}

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  json_t *run = json_object_get(obj, "run");
  if (!run) run = json_object_get(obj, "command");
  if (!json_is_string(run))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: a shell step needs \"run\", a command string", where);
  shell_params *sp = new_params(json_string_value(run));
  if (!sp) return ORCH_ENOMEM;
  s->u.p = sp;
  json_t *cwd = json_object_get(obj, "cwd");
  if (cwd && !json_is_string(cwd))
    return orch__err(err, errlen, ORCH_EPLAN, "%s: \"cwd\" must be a string",
                     where);
  if (cwd && !(sp->cwd = orch__strdup(json_string_value(cwd))))
    return ORCH_ENOMEM;
  json_t *writes = json_object_get(obj, "writes");
  if (writes) {
    if (!json_is_array(writes))
      return orch__err(err, errlen, ORCH_EPLAN,
                       "%s: \"writes\" must be a list of paths", where);
    sp->writes = calloc(json_array_size(writes) + 1, sizeof *sp->writes);
    if (!sp->writes) return ORCH_ENOMEM;
    size_t i;
    json_t *w;
    json_array_foreach(writes, i, w) {
      if (!json_is_string(w))
        return orch__err(err, errlen, ORCH_EPLAN,
                         "%s: \"writes\"[%zu] must be a path string", where, i);
      if (!(sp->writes[sp->nwrites++] = orch__strdup(json_string_value(w))))
        return ORCH_ENOMEM;
    }
  }
  return ORCH_OK;
}

static size_t writes(const orch__step *s, const char *const **paths) {
  shell_params *sp = s->u.p;
  if (!sp || !sp->nwrites) return 0;
  *paths = (const char *const *)sp->writes;
  return sp->nwrites;
}

static const char *const keys[] = {"run", "command", "cwd", "writes", NULL};

const orch__kind orch__kind_shell = {.name = "shell", .where = ORCH__ON_LOOP,
                                     .keys = keys,
                                     .parse = parse, .start = start,
                                     .cancel = cancel, .free = free_params,
                                     .writes = writes};

int orch_graph_add_shell(orch_graph *g, const char *id, const char *command) {
  if (!g || !id || !command) return ORCH_EINVAL;
  /* The parameters first: a failed add leaves no step without them. */
  shell_params *sp = new_params(command);
  if (!sp) return ORCH_ENOMEM;
  uint32_t idx;
  int rc = orch__graph_add(g, id, strlen(id), ORCH__KIND_SHELL, &idx, NULL, 0);
  if (rc) {
    orch__step tmp = {.u.p = sp};
    free_params(&tmp);
    return rc;
  }
  g->steps[idx].u.p = sp;
  return ORCH_OK;
}
