/* orch_int.h: private declarations shared by the files of runtime/.
 *
 * Nothing here is part of the public API (orch.h). Internal functions that
 * are not static carry the orch__ prefix. Each subsystem has its section;
 * the struct bodies of the graph and its steps live here because the graph,
 * the scheduler and the step kinds all read them. */
#ifndef ORCH_INT_H
#define ORCH_INT_H

#include "orch.h"

#include <jansson.h>
#include <lua.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define ORCH__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define ORCH__MAX_ID_BYTES 256
#define ORCH__NKINDS_MAX 16

/* ---- util.c: small helpers ------------------------------------------- */

/* snprintf into an error buffer; tolerates err == NULL. Returns code. */
int orch__err(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
char *orch__strdup(const char *s);
char *orch__strndup(const char *s, size_t n);
char *orch__vasprintf(const char *fmt, va_list ap);
char *orch__asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Monotonic clock in nanoseconds. */
int64_t orch__now_ns(void);
/* Checks an id: 1..256 bytes, valid UTF-8, no control bytes. On failure
 * writes why (with the byte position) and returns ORCH_EPLAN. */
int orch__check_id(const char *id, size_t len, char *err, size_t errlen);
/* Valid UTF-8? On failure *bad is the offset of the first bad byte. */
bool orch__utf8_valid(const char *s, size_t len, size_t *bad);
/* A copy of s (len bytes) in which each byte that does not start a valid
 * UTF-8 sequence is U+FFFD; NULL when out of memory. */
char *orch__utf8_repair(const char *s, size_t len);
/* Copies src into dst (cap bytes, always terminated, cut when full) with
 * the passwords of database addresses in it hidden: the secret of
 * scheme://user:SECRET@host and of password=SECRET / password='SECRET'
 * reads "[redacted]". For messages that may quote a connection string
 * (libpq's do). */
void orch__redact_conninfo(char *dst, size_t cap, const char *src);
/* Reads a whole file, refusing more than max bytes (the limit is named). */
int orch__read_file(const char *path, size_t max, char **out, size_t *len,
                    char *err, size_t errlen);

/* Growable byte buffer. */
typedef struct orch__buf {
  char *p;
  size_t len, cap;
} orch__buf;
int orch__buf_add(orch__buf *b, const char *s, size_t n);
int orch__buf_printf(orch__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void orch__buf_deinit(orch__buf *b);

/* ---- config.c: settings from a Lua file ------------------------------ */

typedef struct orch__config {
  int workers;              /* worker threads; 0 = number of cores */
  int max_parallel;         /* steps in flight per run; 0 = unlimited */
  char *scripts_dir;        /* where routing/, rewards/, policies/ live */
  size_t plan_max_bytes;    /* plan files larger than this are refused */
  int json_max_depth;       /* nesting limit for plan JSON */
  size_t output_max_bytes;  /* captured stdout/stderr per shell step */
  double shell_timeout_ms;  /* default shell timeout; 0 = none */
  double dry_run_ms;        /* simulated duration of an llm step, --dry-run */
  int lua_budget;           /* instructions per hook/step call (in 1000s) */
  size_t lua_mem_max;       /* bytes per Lua state */
  json_t *sections;         /* tables owned by later subsystems: "tiers",
                               "store", "policy", ... (may be NULL) */
  char *source;             /* the file it came from, or NULL */
} orch__config;

void orch__config_defaults(orch__config *c);
void orch__config_deinit(orch__config *c);
/* Loads a Lua config file on top of the defaults. Unknown key or wrong
 * type: ORCH_ECONFIG naming the key and the file. */
int orch__config_load(orch__config *c, const char *path, char *err,
                      size_t errlen);
int orch__config_set(orch__config *c, const char *key, const char *value,
                     char *err, size_t errlen);

/* ---- dag.c: steps, edges, validation, levels, critical path ---------- */

struct orch__kind;

typedef struct orch__step {
  uint32_t id;         /* offset of the NUL-terminated id in g->ids, or
                          ORCH__ANON: an anonymous step, named "#<index>" */
  uint8_t kind;        /* index into orch__kinds[] */
  uint8_t status;      /* orch_status */
  uint8_t attempts;
  uint8_t flags;       /* ORCH__SF_* */
  int32_t exit_status; /* shell: the exit status, -1 none */
  uint32_t generation; /* script generation it ran under */
  float cost;          /* estimate in ms (critical path, priority) */
  float timeout_ms;    /* 0: kind's default */
  int64_t started_ns;  /* relative to the run start; -1 before */
  int64_t finished_ns;
  union {              /* kind-owned parameters */
    struct {
      orch_step_fn fn;
      void *ud;
    } c;
    double ms;
    void *p;
  } u;
  char *output; /* owned; NULL */
  char *error;  /* owned; NULL */
} orch__step;

#define ORCH__SF_HAS_COST 1u
#define ORCH__SF_CANCELED 2u
#define ORCH__SF_ALWAYS 4u /* runs when its dependencies end, even failed */
/* The id of an anonymous step (orch_graph_add_fn with id NULL). */
#define ORCH__ANON UINT32_MAX
/* The scheduling fields live in arrays beside the steps (g->level,
 * g->bottom, the run's npending), so validation and a run touch a few
 * bytes per step; the step itself is the cold record. */
_Static_assert(sizeof(orch__step) <= 72, "keep orch__step small");


struct orch_graph {
  orch__step *steps;
  size_t n, cap;
  char *ids; /* id arena */
  size_t ids_len, ids_cap;
  uint32_t *hash; /* open addressing; index+1, 0 = empty */
  size_t hash_cap;
  /* dependencies as added, by name when the target was not known yet */
  uint32_t *efrom, *eto; /* edge k: eto[k] depends on efrom[k] */
  size_t nedges, edges_cap;
  char **pending_names; /* (step, dep name) pairs resolved at validate */
  uint32_t *pending_from; /* the step, NONE when it was not added yet: */
  char **pending_ids;     /* then its id, else NULL (NULL: no such entry) */
  size_t npending, pending_cap;
  /* after validate: CSR of dependencies and dependents */
  uint32_t *dep_off, *deps;   /* deps of i: deps[dep_off[i]..dep_off[i+1]) */
  uint32_t *out_off, *outs;   /* dependents of i */
  uint32_t *level;  /* after validate: topological level of each step */
  double *bottom;   /* longest cost path from each step to an exit;
                       computed on first need (orch__graph_bottoms) */
  uint32_t *topo;   /* a topological order, NULL when index order is one
                       (every edge goes from a lower to a higher index) */
  uint32_t nlevels;
  size_t nanon;     /* anonymous steps */
  size_t hint_steps; /* orch_graph_reserve: size the id hash for this */
  bool validated, ran;
  int64_t makespan_ns;
  void *plan_meta;  /* json_t of a loaded plan's top-level extras, or NULL */
  void *plan_steps; /* json_t array of the plan's steps as loaded, or NULL */
  uint32_t nkind[ORCH__NKINDS_MAX]; /* steps of each kind */
  int err_code;    /* a validation that cannot be tried again (a cycle
                      or no memory once the raw edges were dropped) */
  char err_msg[512];
};

/* The step's id; an anonymous step's "#<index>" is formatted into one of
 * a few per-thread buffers, valid until 8 more such calls on the thread. */
const char *orch__step_id(const orch_graph *g, uint32_t i);
/* Faults in the pages of an array about to be written from end to end in
 * one call rather than one trap per 4 KiB page (madvise
 * MADV_POPULATE_WRITE); a hint, for arrays of 1 MiB and more. */
void orch__prefault(void *p, size_t bytes);
/* Bottom levels (g->bottom), computed once on first need; ORCH_ENOMEM. */
int orch__graph_bottoms(orch_graph *g);
int orch__graph_add(orch_graph *g, const char *id, size_t idlen, int kind,
                    uint32_t *idx /* OUT */, char *err, size_t errlen);
/* An anonymous step (no id, no hash entry). */
int orch__graph_add_anon(orch_graph *g, int kind, uint32_t *idx /* OUT */);
/* The graph's extent now, and its return to it: orch__graph_undo removes
 * every step, id, edge and pending dependency added after the mark (the
 * steps' kind parameters freed, their ids out of the hash), so a call that
 * fails half-way leaves the graph exactly as it was. Not after validation
 * (no add can happen then). */
typedef struct orch__graph_mark {
  size_t n, ids_len, nedges, npending;
} orch__graph_mark;
orch__graph_mark orch__graph_mark_now(const orch_graph *g);
void orch__graph_undo(orch_graph *g, const orch__graph_mark *m);
int orch__graph_depend_idx(orch_graph *g, uint32_t idx, const char *dep,
                           size_t deplen);

/* ---- plan.c: plan files (JSON, Lua, GAP text) into graphs ------------ */

/* Adds one step from its JSON object (id, kind, deps, cost_ms, timeout_ms,
 * and the kind's own fields). */
int orch__plan_add_step(orch_graph *g, json_t *obj, const char *where,
                        char *err, size_t errlen);
/* Parses GAP text with policies/gap.lua's parse(): *tasks is a JSON array of
 * {id, description, deps}. The error quotes the offending line. */
int orch__gap_parse(orch_runtime *rt, const char *text, size_t len,
                    json_t **tasks /* OUT */, char *err, size_t errlen);

/* ---- kinds: one file per step kind (step_*.c) ------------------------ */

typedef struct orch__run orch__run;
typedef struct orch__worker orch__worker;

enum { ORCH__ON_WORKER = 0, ORCH__ON_LOOP = 1, ORCH__ON_HOST = 2 };

/* A step kind: the scheduler knows only this table. Worker and host kinds
 * run to completion in run(); loop kinds start in start() and finish later
 * by calling orch__sched_finish() on the loop thread. */
typedef struct orch__kind {
  const char *name;
  int where;
  /* The plan keys the kind reads besides the common ones (NULL-ended):
   * plan.c refuses any other key, so a misspelt field is an error, not a
   * setting silently dropped. */
  const char *const *keys;
  /* Reads the kind's fields of a plan step into s->u; where names the
   * step for messages. */
  int (*parse)(orch_graph *g, orch__step *s, json_t *obj, const char *where,
               char *err, size_t errlen);
  /* Worker/host kinds: runs the step, returns ORCH_OK to pass. */
  int (*run)(orch__run *r, uint32_t idx, orch__worker *w);
  /* Loop kinds: starts the step; non-zero fails it at once. */
  int (*start)(orch__run *r, uint32_t idx);
  /* Loop kinds: stop a started step; it still calls orch__sched_finish. */
  void (*cancel)(orch__run *r, uint32_t idx);
  void (*free)(orch__step *s);
  /* Default cost estimate in ms for the critical path (NULL: 1). */
  double (*cost)(const orch__step *s);
  /* Paths the step writes (NULL: none); the scheduler never runs two steps
   * writing one path at the same time. */
  size_t (*writes)(const orch__step *s, const char *const **paths);
  /* Loop thread, when every step of the run has ended: frees the kind's
   * per-run state (NULL: none). */
  void (*run_end)(orch__run *r);
  /* Loop thread, as a run starts with steps of this kind (NULL: none):
   * sets up the kind's per-run state before the first step needs it. */
  void (*run_begin)(orch__run *r);
  /* Tokens and cost of a finished step (NULL: none); -1 / NAN unknown. */
  void (*usage)(const orch__step *s, int64_t *tokens_in, int64_t *tokens_out,
                double *cost);
} orch__kind;

enum {
  ORCH__KIND_FN = 0,
  ORCH__KIND_HOSTFN,
  ORCH__KIND_SLEEP,
  ORCH__KIND_SHELL,
  ORCH__KIND_LUA,
  ORCH__KIND_LLM,
  ORCH__KIND_EDIT,
  ORCH__NKINDS
};
_Static_assert(ORCH__NKINDS <= ORCH__NKINDS_MAX, "raise ORCH__NKINDS_MAX");
extern const orch__kind *const orch__kinds[ORCH__NKINDS];
int orch__kind_by_name(const char *name);

extern const orch__kind orch__kind_fn, orch__kind_hostfn, orch__kind_sleep,
    orch__kind_shell, orch__kind_lua, orch__kind_llm, orch__kind_edit;

/* Sets a step's error text (printf); replaces an earlier one. */
void orch__step_set_error(orch__step *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void orch__step_set_output(orch__step *s, const char *p, size_t n);

/* ---- loop.c: the event-loop thread ----------------------------------- */

typedef struct orch__loop orch__loop;
typedef void (*orch__loop_fn)(void *arg);

int orch__loop_new(orch__loop **out);
void orch__loop_free(orch__loop *l); /* stops and joins the thread */
uv_loop_t *orch__loop_uv(orch__loop *l);
/* Runs fn(arg) on the loop thread soon; any thread. Order is kept. */
int orch__loop_call(orch__loop *l, orch__loop_fn fn, void *arg);
bool orch__loop_on_thread(const orch__loop *l);

/* ---- pool.c: worker threads, each with its own Lua state ------------- */

typedef struct orch__pool orch__pool;
/* A job runs on a worker; consecutive jobs with the same fn and arg are
 * handed over together (idx[0..n)), so a job can batch its completions. */
typedef void (*orch__job_fn)(orch__worker *w, void *arg, const uint32_t *idx,
                             size_t n);

int orch__pool_new(orch__pool **out, orch_runtime *rt, int nthreads,
                   char *err, size_t errlen);
void orch__pool_free(orch__pool *p);
int orch__pool_size(const orch__pool *p);
/* Queues n jobs at once (one lock). ORCH_ELIMIT when the queue is full
 * (reported on stderr); the caller fails those jobs' steps. */
int orch__pool_post(orch__pool *p, orch__job_fn fn, void *arg,
                     const uint32_t *idx, size_t n);
/* The worker's sandboxed Lua state for lua steps and hooks, created on
 * first use; NULL with a message in err when it cannot be. */
lua_State *orch__worker_lua(orch__worker *w, char *err, size_t errlen);
/* The worker's policy state (scripts loaded), NULL without an engine. */
struct orch__lstate *orch__worker_lstate(orch__worker *w);
/* Queues idx[0..n) as jobs of up to `chunk` indices each that point into
 * idx (not copied: the caller keeps idx alive until they ran). Returns the
 * number of jobs queued (ORCH_ELIMIT / ORCH_ENOMEM as orch__pool_post). */
int orch__pool_post_spans(orch__pool *p, orch__job_fn fn, void *arg,
                          const uint32_t *idx, size_t n, size_t chunk,
                          size_t *njobs /* OUT */);
/* Workers waiting for a job now (a hint, read without the lock). */
int orch__pool_idle(const orch__pool *p);
/* Jobs waiting (for status and tests). */
size_t orch__pool_queued(orch__pool *p);
int orch__worker_index(const orch__worker *w);

/* ---- sched.c: dependency counters, ready queue, dispatch ------------- */

struct orch__run {
  orch_runtime *rt;
  orch_graph *g;
  int64_t t0_ns;
  /* Counters: written on the loop thread, read anywhere. */
  atomic_size_t done, running, failed, skipped, passed;
  size_t max_parallel; /* 0: unlimited */
  uint32_t *npend;     /* per step: dependencies not yet finished */
  uint32_t *roots;     /* steps ready at the start, handed to workers in
                          spans (fast mode); freed with the run */
  atomic_llong last_ns; /* latest finish time so far (the makespan) */
  atomic_size_t spans; /* span jobs of roots not yet done by workers */
  bool fast;           /* workers may complete steps themselves */
  uint8_t where[ORCH__NKINDS]; /* sched.c: does a kind run on workers */
  bool all_worker;     /* every step of the graph runs on workers, no locks */
  atomic_bool canceled;
  bool finished, dry_run, in_process, closed, started, cancel_done;
  /* ready steps waiting for a slot: max-heap on bottom level */
  uint32_t *heap;
  size_t nheap;
  /* finished steps the loop still has to process (loop thread only) */
  uint32_t *todo;
  size_t ntodo, todo_cap;
  /* worker steps to post at the end of a scheduling round */
  uint32_t *post;
  size_t npost, post_cap;
  /* Lock order: r->mu is taken alone (never with pool->mu or loop->mu). */
  pthread_mutex_t mu;
  pthread_cond_t cond; /* signals the orch_run caller */
  uint32_t *fin;       /* completions posted from other threads (mu) */
  size_t nfin, fin_cap;
  uint32_t *host;      /* host-thread steps for the orch_run caller (mu) */
  size_t nhost, host_cap, host_head;
  uv_async_t wake;     /* on the loop: drains fin */
  void *kind_state[ORCH__NKINDS]; /* per-run state of loop kinds */
  char *steps_txt; /* the plan's steps as JSON, for the session record */
  /* per-file write locks: paths held by running steps (loop thread) */
  struct orch__flock *locks;
  size_t nlocks, locks_cap;
  uint32_t *parked; /* ready steps waiting for a lock */
  size_t nparked, parked_cap;
};

/* Marks step idx finished (its status already PASSED or FAILED). Loop
 * thread only. */
void orch__sched_finish(orch__run *r, uint32_t idx);
/* Same from any other thread. */
void orch__sched_finish_async(orch__run *r, uint32_t idx);
/* Cancels the runtime's run, if any (loop thread; from cancel_async). */
void orch__sched_cancel(orch_runtime *rt);
/* ns since the run started. */
int64_t orch__run_now(const orch__run *r);

/* step_sleep.c: starts a timer that passes step idx after ms (also used to
 * simulate llm steps under --dry-run). Loop thread. A duration that is not
 * a number from 0 to ORCH__SLEEP_MAX_MS fails the step, with a message. */
int orch__sleep_start(orch__run *r, uint32_t idx, double ms);
/* The longest sleep, in ms: 30 days. Longer (or infinite, or NaN) is a
 * mistake, and would not convert to the timer's integer ms. */
#define ORCH__SLEEP_MAX_MS 2592000000.0

/* ---- runtime.c ------------------------------------------------------- */

struct orch_runtime {
  orch__config cfg;
  orch__loop *loop;
  orch__pool *pool;
  struct orch__policy *policy; /* policy.c, NULL until scripts load */
  struct orch__store *store;   /* store.c, NULL when not configured */
  orch__run *run;              /* the run in progress (mu) */
  atomic_int cancel_req;
  uv_async_t cancel_async;     /* on the loop; orch_runtime_cancel sends */
  atomic_bool cancel_ready;
  bool dry_run;                /* llm steps become sleeps (--dry-run) */
  char *db_url;                /* the store's URL, NULL: config, ORCH_DB */
  char *db_default;            /* used when none of those is set (CLI) */
  char session_id[40];         /* of the current or last run */
  char resume_id[40];          /* set by orch_runtime_resume for one run */
  int64_t resume_tokens;       /* the resumed session's recorded total */
  int64_t session_tokens_before; /* tokens of the session's earlier runs
                                    in this process (ask: plan, tasks) */
  int64_t t0_wall_ms;          /* the run's start, wall clock */
  struct orch__lstate *loop_ls; /* the loop thread's scripts (rewards) */
  uint32_t step_base;          /* step numbers of this run start here (a
                                  session made of several runs: ask) */
  orch_progress_fn progress;
  void *progress_ud;
  unsigned progress_ms;
  pthread_mutex_t mu;
  bool started;
};

int orch__runtime_start(orch_runtime *rt, char *err, size_t errlen);

/* ---- policy.c: Lua sandbox, hooks, hot reload ------------------------ */

/* Opens a fresh sandboxed state with the limits from cfg. */
lua_State *orch__lua_new_sandbox(const orch__config *cfg, char *err,
                                 size_t errlen);
void orch__lua_close(lua_State *L);
/* lua_pcall with a traceback handler and the call budget; on error writes
 * "message" (with the chunk's file:line) to err and pops it. */
int orch__lua_pcall(lua_State *L, int nargs, int nres, char *err,
                    size_t errlen);
/* Bytes a sandbox state may still allocate under its memory cap
 * (*capped true), or SIZE_MAX for a state not made by policy.c. */
size_t orch__lua_mem_left(lua_State *L, bool *capped /* OUT */);

/* The budget of the C loops in a sandboxed call that the count hook cannot
 * see (lpattern.c's matcher): a call may take as many of their steps as it
 * has instructions, besides the instructions its Lua code runs. The
 * counter of steps left in the current call, which the loops decrement, or
 * NULL for a state not made by policy.c (no budget). */
long *orch__budget_steps(lua_State *L);
/* Raises "<what>: pattern matching exceeded the instruction budget (N
 * instructions)" once the counter is spent, and trips the budget as the
 * count hook does, so a pcall in the script cannot swallow it: the call
 * fails with the budget's error. Does not return. */
void orch__budget_exceeded(lua_State *L, const char *what);

/* ---- lpattern.c: string patterns under the budget --------------------- */

/* string.find, match, gmatch and gsub as Lua 5.4's (same results, same
 * error messages), written from the reference manual, whose matcher counts
 * its steps against orch__budget_steps; setup_state puts them in the
 * sandbox's string table. */
int orch__str_find(lua_State *L);
int orch__str_match(lua_State *L);
int orch__str_gmatch(lua_State *L);
int orch__str_gsub(lua_State *L);

/* ---- json.c: Lua values <-> jansson ---------------------------------- */

/* Converts the value at idx to JSON (tables with 1..n keys are arrays).
 * Functions, userdata, cycles and a copy larger than what is left of the
 * state's memory cap are errors naming the key path. Raises no Lua error. */
json_t *orch__lua_to_json(lua_State *L, int idx, int max_depth, char *err,
                          size_t errlen);
/* About how many heap bytes jansson's tree for the JSON text s takes (an
 * upper estimate, by one pass over the text, allocating nothing). */
size_t orch__json_text_cost(const char *s, size_t n);
/* Pushes a JSON value as a Lua value (null becomes nil in tables is
 * avoided: it becomes json.null lightuserdata). */
void orch__lua_push_json(lua_State *L, const json_t *v);

/* keywords.c: orch.keywords(list [, {whole=, name=}]) -> a matcher table
 * with count(limit, text, ...) and matched(text, ...); a lua_CFunction for
 * the sandbox's orch table and the Lua module. */
int orch__lua_keywords(lua_State *L);

/* ---- policy.c: the engine (scripts, per-worker states, reload) ------- */

/* The engine owns the published scripts: an immutable snapshot of
 * {module name -> source} and its generation (1 after the first load, +1 on
 * every reload that passed its check). Module names come from the files:
 * scripts_dir/routing/complexity.lua is "routing.complexity". */
typedef struct orch__policy orch__policy;
/* One worker's Lua state with the scripts loaded. Owned and used by one
 * thread at a time; nothing in it crosses threads. */
typedef struct orch__lstate orch__lstate;

/* Loads and checks every module under cfg->scripts_dir (generation 1). A
 * missing directory is not an error: no modules, every call falls back. A
 * module that fails its check is left out, logged and kept as last error. */
int orch__policy_new(orch__policy **out /* OUT */, const orch__config *cfg,
                     char *err, size_t errlen);
/* Call orch__policy_unwatch first when watched. */
void orch__policy_free(orch__policy *p);
/* Loop thread: watches the directory and its subdirectories; a change is
 * checked on the engine's own checker thread ~20 ms later and published
 * when it passes. The watches follow the path: a directory replaced under
 * it (mv, a symlink swap) is watched and rescanned, seen at once after a
 * move event or within 2 s by a timer on the loop. Missing directory:
 * ORCH_OK, nothing watched. */
int orch__policy_watch(orch__policy *p, uv_loop_t *loop);
/* Loop thread, before the loop stops: closes the watches and their timer
 * (the close callbacks run on the loop's next iteration) and joins the
 * checker. */
void orch__policy_unwatch(orch__policy *p);
/* Rescans now, synchronously (any thread): a reload without the watch. */
int orch__policy_rescan(orch__policy *p);
unsigned orch__policy_generation(const orch__policy *p);
/* Copies the standing reload error ("file:line: message", "" when every
 * file on disk is serving) into buf; returns the serving generation. */
unsigned orch__policy_last_error(orch__policy *p, char *buf, size_t buflen);
/* What scans do to each module, for the store: fn(ud, module, file, gen,
 * NULL) when a version of it loaded (serving from gen), fn(..., error) when
 * one was refused (gen, the previous version, keeps serving). Setting a
 * listener first reports the modules serving now and the standing
 * refusals. Called on the thread that scans (loop or checker); fn NULL
 * removes the listener (on return no call is in progress). */
typedef void (*orch__policy_event_fn)(void *ud, const char *module,
                                      const char *file, unsigned gen,
                                      const char *error);
void orch__policy_set_events(orch__policy *p, orch__policy_event_fn fn,
                             void *ud);
/* Space-separated names of the serving modules; returns their count. */
size_t orch__policy_modules(orch__policy *p, char *buf, size_t buflen);

orch__lstate *orch__lstate_new(orch__policy *p, char *err, size_t errlen);
void orch__lstate_free(orch__lstate *s);
/* At a step boundary (never mid-step): when a new generation was
 * published, drops this state's modules and loads the new ones. Returns
 * true when it switched. The lua_State normally stays the same, but re-read
 * orch__lstate_L() after a sync (it is replaced if the old one could not
 * even allocate two tables). */
bool orch__lstate_sync(orch__lstate *s);
unsigned orch__lstate_generation(const orch__lstate *s);
/* The state for lua steps: same sandbox; require() sees the scripts. */
lua_State *orch__lstate_L(orch__lstate *s);

/* Calls module.fn(arg as a table) under the instruction budget and memory
 * cap. Errors (the state stays usable): ORCH_ENOTFOUND (no such module or
 * function: use the documented fallback), ORCH_ELIMIT ("file:line:
 * instruction budget exceeded (N instructions) in group.reward()",
 * "file: memory cap exceeded (N bytes) in ..."), ORCH_ESCRIPT (the script's
 * "file:line: message (in group.reward())"). *out is a new reference; a nil
 * result is json null. arg may be NULL (no argument). */
int orch__policy_call(orch__lstate *s, const char *module, const char *fn,
                      json_t *arg, json_t **out /* OUT */, char *err,
                      size_t errlen);
/* The same, for hooks that fail as `nil, "message"` (gap.parse): that is
 * ORCH_EPLAN with the message as the hook wrote it. */
int orch__policy_call_result(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg,
                             json_t **out /* OUT */, char *err,
                             size_t errlen);
/* Rewards: the result must be a finite number; nil, NaN, inf, -inf, a
 * string... is ORCH_ESCRIPT "file: group.reward() returned NaN, expected a
 * finite number". */
int orch__policy_call_number(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg,
                             double *out /* OUT */, char *err,
                             size_t errlen);
/* A finite number or a table of them ({se=0.67} or {0.1, -0.2}) as JSON;
 * any other value is ORCH_ESCRIPT naming the key. */
int orch__policy_call_numbers(orch__lstate *s, const char *module,
                              const char *fn, json_t *arg,
                              json_t **out /* OUT */, char *err,
                              size_t errlen);
/* Limits (agents.parallel_limit): a number >= 0, math.huge (unlimited)
 * comes back as INFINITY; `nil, "message"` is ORCH_ESCRIPT with the
 * message (the core keeps its own limit). */
int orch__policy_call_limit(orch__lstate *s, const char *module,
                            const char *fn, json_t *arg,
                            double *out /* OUT */, char *err, size_t errlen);
/* The result must be a string (routing: a tier name) shorter than outlen. */
int orch__policy_call_string(orch__lstate *s, const char *module,
                             const char *fn, json_t *arg, char *out,
                             size_t outlen, char *err, size_t errlen);
/* Fast path (no JSON): calls module.fn{keys[i] = vals[i]} (NULL values are
 * left out) and takes a string result, as orch__policy_call_string. The
 * function is resolved once per generation and cached. */
int orch__policy_call_fields(orch__lstate *s, const char *module,
                             const char *fn, const char *const *keys,
                             const char *const *vals, size_t n, char *out,
                             size_t outlen, char *err, size_t errlen);
/* Loads a text chunk into a state from orch__lua_new_sandbox or an lstate
 * with a fresh sandbox environment as _ENV; pushes the function (run it
 * with orch__lua_pcall). Messages name the chunk as "name:line:". */
int orch__lua_load(lua_State *L, const char *buf, size_t len,
                   const char *name, char *err, size_t errlen);

/* ---- store.c, store_pg.c, store_sqlite.c: the record store ----------
 * (section owned by the store; see docs/store.md)
 *
 * The core hands records to orch__store_put(): it encodes them into one
 * frame, pushes it on a bounded queue and returns (never touches the
 * database, never blocks on it). One writer thread batches frames into the
 * database; while the database is unreachable it appends them to a
 * crash-safe spool file and replays it when the database is back. Every
 * upsert carries rec_seq, so replays are idempotent and order-independent.
 * Queries (resume, status) open their own connection on the caller's
 * thread. All functions are thread-safe unless noted. */

typedef struct orch__store orch__store;

typedef struct orch__store_opts {
  size_t queue_cap;        /* records held in memory; 0: 65536 */
  size_t queue_max_bytes;  /* bytes held in memory; 0: 64 MiB */
  const char *spool_path;  /* NULL: ORCH_SPOOL env, else sqlite: PATH.spool,
                              PostgreSQL: ORCH_SPOOL_DIR (or .)/
                              orchestrate-pg-<hash of url>.spool */
  uint64_t spool_cap;      /* spool bytes waiting for replay; the file may
                              grow to twice that; 0: 1 GiB */
  size_t batch;            /* records per transaction; 0: 5000 */
  unsigned flush_ms;       /* writer tick: spool fsync, reconnect; 0: 50 */
  unsigned backoff_max_ms; /* reconnect backoff ceiling; 0: 5000 */
  int no_migrate;          /* 1: do not apply migrations on connect */
  int read_only;           /* 1: queries only: no writer, no spool (status) */
  unsigned timeout_ms;     /* PostgreSQL: a call with no answer this long
                              drops the connection (its batch is spooled,
                              the writer reconnects); 0: 30000 */
} orch__store_opts;

/* Record types, one per table. */
typedef enum orch__rec_type {
  ORCH__REC_SESSION = 0,   /* jr_execution_sessions */
  ORCH__REC_STEP,          /* orch_run_steps */
  ORCH__REC_REWARD,        /* jr_step_rewards */
  ORCH__REC_LLM_CALL,      /* orch_llm_calls */
  ORCH__REC_EXPLORATION,   /* jr_exploration_log (append-only) */
  ORCH__REC_PARTICIPATION, /* magrpo_task_participation */
  ORCH__REC_COOPERATION,   /* magrpo_cooperation_metrics */
  ORCH__REC_SCRIPT_EVENT,  /* orch_script_events (append-only) */
  ORCH__REC_NTYPES
} orch__rec_type;

/* "Unknown" for nullable integer fields (tokens, times, ...); NAN is
 * "unknown" for doubles; NULL for strings. Times are wall-clock ms since
 * the Unix epoch (orch__store_wall_ms()); 0 is also "none". */
#define ORCH__NULL_I64 INT64_MIN

/* Every record is a full row: a later record for the same key replaces the
 * earlier one (upsert), so send the whole current state each time. */
typedef struct orch__rec_session {
  const char *session_id; /* a UUID (8-4-4-4-12 hex), required */
  const char *task_id, *jr_name, *model_tier;
  const char *status;     /* NULL: "pending"; "running", "passed", ... */
  const char *steps_json; /* JSON (the plan's steps array); NULL: [] */
  int64_t total_tokens;
} orch__rec_session;

typedef struct orch__rec_step {
  const char *session_id;  /* UUID, required */
  const char *step_id;     /* required */
  int32_t step_index;      /* position in the graph */
  const char *kind;        /* "shell", "llm", ... */
  const char *deps_json;   /* JSON array of dependency ids; NULL: [] */
  const char *params_json; /* the step's plan object (orch_graph_add_json
                              form) so resume can rebuild it; NULL */
  const char *status;      /* orch_status_name(); required */
  int32_t attempts;
  const char *output, *error; /* NULL: none */
  int64_t tokens_in, tokens_out; /* ORCH__NULL_I64: unknown */
  double cost;                   /* NAN: unknown */
  uint32_t generation;           /* script generation */
  int64_t started_ms, finished_ms; /* epoch ms; 0 or ORCH__NULL_I64: none */
} orch__rec_step;

/* jr_step_rewards; step_content_hash is computed by the store:
 * SHA-256 hex of "task_id:step_number:step_type:target_file" (NULL = ""). */
typedef struct orch__rec_reward {
  const char *task_id; /* required */
  int32_t step_number;
  const char *step_type, *target_file;
  const char *execution_result; /* NULL: "pending" */
  double implicit_reward, verified_outcome; /* NAN: unknown */
  const char *retry_decision;
  int64_t execution_time_ms; /* ORCH__NULL_I64: unknown */
  const char *error_detail;
} orch__rec_reward;

/* orch_llm_calls: one row per attempt. */
typedef struct orch__rec_llm_call {
  const char *session_id, *step_id; /* required ("" allowed) */
  int32_t attempt;
  const char *provider, *model;
  int32_t http_status;            /* 0: none */
  const char *outcome;            /* "ok", "error", "timeout", "retry" */
  int64_t tokens_in, tokens_out;  /* ORCH__NULL_I64: unknown */
  double cost, latency_ms;        /* NAN: unknown */
  const char *error;
  int64_t started_ms;
} orch__rec_llm_call;

typedef struct orch__rec_exploration {
  const char *jr_type, *task_type;
  double novelty_score, curiosity_bonus;
  const char *task_outcome;
} orch__rec_exploration;

typedef struct orch__rec_participation {
  const char *task_id, *jr_type; /* required */
  int64_t joined_ms;             /* required (0: now) */
  double contribution_score;
  const char *handoff_from, *handoff_to;
  double context_preserved_score;
} orch__rec_participation;

typedef struct orch__rec_cooperation {
  const char *jr_type;             /* required */
  int64_t period_start_ms, period_end_ms;
  int32_t tasks_participated, handoffs_sent, handoffs_received;
  double avg_context_preservation, cooperation_score, group_reward_total;
} orch__rec_cooperation;

/* A script loaded or refused by a runtime's policy engine. */
typedef struct orch__rec_script_event {
  const char *runtime;           /* "host:pid" of the runtime */
  const char *module, *file;     /* required */
  int32_t generation;            /* the generation it serves from / kept */
  const char *outcome;           /* "loaded" or "refused" (required) */
  const char *error;             /* file:line: message, for a refusal */
} orch__rec_script_event;

typedef struct orch__rec {
  orch__rec_type type;
  union {
    orch__rec_session session;
    orch__rec_step step;
    orch__rec_reward reward;
    orch__rec_llm_call llm_call;
    orch__rec_exploration exploration;
    orch__rec_participation participation;
    orch__rec_cooperation cooperation;
    orch__rec_script_event script_event;
  } u;
} orch__rec;

typedef struct orch__store_stats {
  uint64_t queued;    /* records in the memory queue now */
  uint64_t accepted;  /* orch__store_put calls that returned ORCH_OK */
  uint64_t written;   /* records committed to the database */
  uint64_t spooled;   /* records appended to the spool */
  uint64_t replayed;  /* spooled records committed on replay */
  uint64_t rejected;  /* records the database refused (bad data) */
  uint64_t records_dropped_total; /* every record not kept: queue and spool
                                     full, spool write failure, rejected */
  uint64_t spool_bytes;    /* spool bytes not yet replayed */
  uint64_t spool_cut_bytes; /* torn tail cut when the spool was opened */
  int connected;           /* 1 when the writer holds a connection */
  char backend[12];        /* "postgresql" or "sqlite" */
  char last_error[256];    /* the latest problem, "" when none */
  char last_drop[256];     /* why records were last dropped, "" never */
} orch__store_stats;

/* Opens the store at url (NULL: ORCH_DB, then "sqlite:orchestrate.db"),
 * opens (and recovers) the spool and starts the writer thread, which
 * connects, applies pending migrations and replays the spool. Returns
 * ORCH_OK even when the database is down (records spool until it is up);
 * a bad url, an unusable spool or a spool locked by another process fail.
 * o may be NULL (defaults). */
int orch__store_open(orch__store **out /* OUT */, const char *url,
                     const orch__store_opts *o, char *err, size_t errlen);
/* Writes what is queued (or spools it if the database is down), stops the
 * writer and frees. Accepts NULL. */
void orch__store_close(orch__store *s);

/* Copies the record into the queue and returns at once; any thread.
 * ORCH_EINVAL: a required field is missing or session_id is not a UUID.
 * ORCH_ELIMIT: queue full and the record could not be spooled either (the
 * record is counted in records_dropped_total and logged). */
int orch__store_put(orch__store *s, const orch__rec *rec);
/* Waits until the queue is empty and the spool replayed, or timeout_ms.
 * ORCH_OK, or ORCH_ETIMEDOUT (e.g. the database is down). */
int orch__store_flush(orch__store *s, unsigned timeout_ms);
void orch__store_stats_get(orch__store *s, orch__store_stats *out /* OUT */);
/* Wall clock, ms since the Unix epoch. */
int64_t orch__store_wall_ms(void);
/* A fresh random (version 4) UUID for a session id, lower-case. */
void orch__store_uuid(char out[37]);
/* SHA-256 hex (65 bytes with NUL) of task_id:step_number:step_type:target_file. */
void orch__store_step_hash(const char *task_id, int step_number,
                           const char *step_type, const char *target_file,
                           char out[65]);

/* ---- store queries (caller's thread, own connection) ---- */

/* One recorded step of a session; strings are valid during the callback
 * only (NULL when the column is NULL). */
typedef struct orch__step_row {
  const char *step_id, *kind, *status, *deps_json, *params_json, *output,
      *error;
  int32_t step_index, attempts;
  uint32_t generation;
  int64_t tokens_in, tokens_out; /* ORCH__NULL_I64: unknown */
  double cost;                   /* NAN: unknown */
} orch__step_row;
/* Returns non-zero to stop the iteration (that value is returned). */
typedef int (*orch__step_row_fn)(void *ud, const orch__step_row *row);

/* Calls fn for every recorded step of session_id, in step_index order.
 * Flushes the writer first (up to 10 s) so it sees this process's records.
 * ORCH_ENOTFOUND when the session has neither a session row nor steps. */
int orch__store_session_steps(orch__store *s, const char *session_id,
                              orch__step_row_fn fn, void *ud, char *err,
                              size_t errlen);

typedef struct orch__session_info {
  char session_id[40];
  char *task_id, *jr_name, *model_tier, *status; /* owned; may be NULL */
  char *steps_json;                               /* owned; may be NULL */
  int64_t total_tokens;
  long total, passed, failed, pending, running, skipped; /* from steps */
  double progress_pct; /* (passed + failed + skipped) / total * 100 */
  char created_at[32], updated_at[32];
} orch__session_info;
void orch__session_info_deinit(orch__session_info *si);

/* One session with its step counts. ORCH_ENOTFOUND when unknown. */
int orch__store_session_summary(orch__store *s, const char *session_id,
                                orch__session_info *out /* OUT */,
                                char *err, size_t errlen);
/* Sessions whose status is pending or running (v_jr_active_sessions),
 * newest first; the info is valid during the callback only. */
int orch__store_active_sessions(orch__store *s,
                                int (*fn)(void *ud,
                                          const orch__session_info *si),
                                void *ud, char *err, size_t errlen);

typedef struct orch__store_today {
  long sessions, sessions_running, sessions_passed, sessions_failed;
  long steps_passed, steps_failed, steps_total;
} orch__store_today;
/* Counts since local midnight (UTC for SQLite). */
int orch__store_today_counts(orch__store *s, orch__store_today *out,
                             char *err, size_t errlen);

/* A script whose latest event is a refusal (orch_script_events). */
typedef struct orch__script_refusal {
  const char *module, *file, *error, *runtime;
  long generation;
  char created_at[32];
} orch__script_refusal;
/* Calls fn for each script whose latest recorded event, across runtimes,
 * is a refusal, newest first; valid during the callback only. */
int orch__store_script_refusals(orch__store *s,
                                int (*fn)(void *ud,
                                          const orch__script_refusal *r),
                                void *ud, char *err, size_t errlen);

/* ---- helpers for the scheduler, resume and the CLI ---- */

/* Records step idx of g as it is now (id, kind, deps, status, attempts,
 * output, error, generation, times). Call on the loop thread right after
 * the step's status changed (started, passed, failed, skipped): it copies
 * what it needs and returns in microseconds. t0_wall_ms: the run's start
 * in orch__store_wall_ms() terms. */
int orch__store_record_step(orch__store *s, const char *session_id,
                            const orch_graph *g, uint32_t idx,
                            int64_t t0_wall_ms);
/* Resume: marks every step of g that has a "passed" record in session_id
 * as ORCH_PASSED with its recorded output, attempts and generation
 * (g validated, before the run). *npassed: how many. Steps not in g are
 * ignored. The scheduler must then treat PASSED steps as already done.
 * The other recorded steps keep their attempts, the base their attempts
 * in the new run count on from. */
int orch__store_resume_mark(orch__store *s, const char *session_id,
                            orch_graph *g, size_t *npassed, char *err,
                            size_t errlen);
/* `orchestrate status`: opens db read-only (no writer, no spool) and
 * returns JSON text (free()) with {"backend", "active": [sessions with
 * total/passed/failed/pending/progress_pct], "today": {counts}}, or with
 * session_id {"backend", "session": {...}}. */
int orch__store_status_json(const char *db, const char *session_id,
                            char **out /* OUT */, char *err, size_t errlen);

/* ---- store internals shared by store.c and the backends ---- */

typedef struct orch__migration {
  int version;
  const char *name;  /* "001_init" */
  char dialect;      /* 'p' PostgreSQL, 's' SQLite */
  const char *sql;
} orch__migration;
extern const orch__migration orch__migrations[]; /* generated */
extern const size_t orch__nmigrations;

/* Column types: 'u' uuid, 't' text, 'j' JSON, 'i' integer, 'f' double,
 * 'T' time (epoch ms). flags: 1 key column, 2 set on insert only. */
typedef struct orch__col {
  const char *name;
  char type;
  uint8_t flags;
} orch__col;
#define ORCH__COL_KEY 1u
#define ORCH__COL_INSERT_ONLY 2u

typedef struct orch__rec_desc {
  const char *table;
  const orch__col *cols;
  size_t ncols;
  int append_only; /* ON CONFLICT DO NOTHING (no rec_seq) */
} orch__rec_desc;
extern const orch__rec_desc orch__rec_descs[ORCH__REC_NTYPES];

/* A decoded value: tag 0 NULL, 1 integer, 2 double, 3 text (s, n; not
 * NUL-terminated). */
typedef struct orch__val {
  uint8_t tag;
  uint32_t n;
  int64_t i;
  double f;
  const char *s;
} orch__val;

typedef struct orch__row {
  uint8_t type;      /* orch__rec_type */
  const orch__val *v; /* orch__rec_descs[type].ncols values */
} orch__row;

/* The outcome of a backend write. */
enum {
  ORCH__W_OK = 0,    /* committed (rows the database refused are reported
                        through reject and left out) */
  ORCH__W_RETRY = 1  /* the database is unavailable: nothing committed;
                        the writer spools the batch and reconnects */
};
typedef void (*orch__reject_fn)(void *ud, size_t row, const char *msg);

typedef struct orch__backend {
  const char *name;
  int (*connect)(void **conn, const char *url, char *err, size_t errlen);
  /* Optional (NULL: connect): for callers that only read (status,
   * migrate --status); never creates the database, ORCH_ENOTFOUND with
   * "no such database: PATH" when it is not there. */
  int (*connect_ro)(void **conn, const char *url, char *err, size_t errlen);
  /* A quick look at the address before anything is written (NULL: none):
   * ORCH_ECONFIG for what no retry can fix (a file that is not a
   * database), ORCH_OK otherwise. Never waits for a lock. */
  int (*precheck)(const char *url, char *err, size_t errlen);
  void (*disconnect)(void *conn);
  /* Applies pending migrations (or only reports, status_only). */
  int (*migrate)(void *conn, int status_only, orch_report_fn report,
                 void *ud, char *err, size_t errlen);
  int (*write)(void *conn, const orch__row *rows, size_t n,
               orch__reject_fn reject, void *ud, char *err, size_t errlen);
  int (*session_steps)(void *conn, const char *session_id,
                       orch__step_row_fn fn, void *ud, char *err,
                       size_t errlen);
  int (*session_summary)(void *conn, const char *session_id,
                         orch__session_info *out, char *err, size_t errlen);
  int (*active_sessions)(void *conn,
                         int (*fn)(void *ud, const orch__session_info *si),
                         void *ud, char *err, size_t errlen);
  int (*today_counts)(void *conn, orch__store_today *out, char *err,
                      size_t errlen);
  int (*script_refusals)(void *conn,
                         int (*fn)(void *ud, const orch__script_refusal *r),
                         void *ud, char *err, size_t errlen);
  /* The deadline of one call into the database, in ms (NULL: none). */
  void (*set_timeout)(void *conn, unsigned ms);
} orch__backend;
extern const orch__backend orch__backend_pg, orch__backend_sqlite;

/* Picks the backend for url and the string to hand to its connect (the
 * path for sqlite:, the url itself for PostgreSQL). */
int orch__store_backend_for(const char *url, const orch__backend **be,
                            const char **conninfo, char *err, size_t errlen);
/* For the backends: counts n steps of a status into si, then derives
 * pending and progress_pct (json_total: the length of the steps JSON). */
void orch__session_info_tally(orch__session_info *si, const char *status,
                              long n);
void orch__session_info_finish(orch__session_info *si, long json_total);
/* The highest migration version of dialect d ('p' or 's'). */
int orch__migrations_latest(char dialect);


/* ==== http.c, llm.c, step_llm.c: LLM I/O (owner: llm helper) ========== */

/* ---- http.c: libcurl multi engine on a uv loop ----------------------- */

typedef struct orch__http orch__http;
typedef struct orch__http_req orch__http_req;
struct curl_slist;

typedef struct orch__http_opts {
  long max_connections;      /* total open connections; 0 = unlimited */
  long max_host_connections; /* per host; 0 = unlimited */
  long connection_cache;     /* idle connections kept; 0 = 2048 */
} orch__http_opts;

typedef struct orch__http_stats {
  size_t started, completed, failed, canceled, idle_timeouts, active;
} orch__http_stats;

/* One request. The caller owns the struct: orch__http_req_init() it, set
 * the inputs, submit, and keep it alive until on_done ran. It can be
 * submitted again after on_done (outputs are reset at each start). */
struct orch__http_req {
  /* inputs */
  const char *url;           /* borrowed until on_done */
  const char *post;          /* request body (POST when set); borrowed */
  size_t post_len;
  struct curl_slist *headers; /* owned; add with orch__http_req_header */
  long connect_timeout_ms, timeout_ms; /* 0: none */
  long idle_timeout_ms; /* abort when no byte arrives for this long */
  size_t max_body;      /* response cap when buffering (default 64 MiB);
                           a status >= 300 keeps its first 64 KiB and
                           drops the rest, not failing */
  const char *ca_file;  /* PEM bundle to verify TLS peers; NULL: system */
  /* Streaming: called for each received chunk instead of buffering;
   * return non-zero to abort (set req->error/result first). */
  int (*on_data)(orch__http_req *req, const char *p, size_t n);
  /* Called once on the loop thread when the request ends, however it
   * ends (also for cancel: synchronously inside orch__http_cancel). */
  void (*on_done)(orch__http_req *req);
  void *ud;
  /* outputs */
  int result;       /* ORCH_OK when an HTTP response arrived complete;
                       ORCH_ETIMEDOUT, ORCH_EIO, ORCH_ECANCELED, ... */
  long status;      /* HTTP status, 0 when none */
  int curl_code;    /* CURLcode, for diagnostics */
  char error[256];  /* message when result != ORCH_OK */
  long retry_after_ms; /* Retry-After / retry-after-ms, -1 when absent */
  char content_type[64]; /* the response's Content-Type ("" when none;
                            cut at 63 bytes) */
  char *body;       /* owned: the buffered response, NUL-terminated */
  size_t body_len, body_cap;
  size_t bytes_in;
  int http_version;     /* 10, 11, 20 (0 none): what the answer came over */
  long connects;        /* new connections this request made (0: reused) */
  int64_t t_start_ns, t_first_byte_ns, t_last_byte_ns, t_end_ns;
  /* private to http.c */
  void *priv_easy;
  orch__http *priv_h;
  orch__http_req *priv_prev, *priv_next;
  int priv_aborted, priv_idle_expired;
  int priv_queued; /* waiting for its turn to reach curl (see start_req) */
  char priv_errbuf[256]; /* CURL_ERROR_SIZE */
};

/* Creates the engine for loop; every other call below runs on the thread
 * that runs loop, except orch__http_post. opts may be NULL. */
int orch__http_new(orch__http **out /* OUT */, uv_loop_t *loop,
                   const orch__http_opts *opts, char *err, size_t errlen);
/* Cancels what is in flight (on_done with ORCH_ECANCELED), closes its uv
 * handles; the memory goes when the loop has run their close callbacks. */
void orch__http_free(orch__http *h);
void orch__http_submit(orch__http *h, orch__http_req *req);
/* Same from any thread (queued, started on the loop thread). */
int orch__http_post(orch__http *h, orch__http_req *req);
/* Aborts a running request: on_done runs before this returns. */
void orch__http_cancel(orch__http *h, orch__http_req *req);
size_t orch__http_active(const orch__http *h);
void orch__http_get_stats(const orch__http *h, orch__http_stats *st);
void orch__http_req_init(orch__http_req *req);
void orch__http_req_deinit(orch__http_req *req); /* frees headers, body */
void orch__http_req_reset(orch__http_req *req);  /* clears the outputs */
/* Whether url's host is localhost, 127.x.y.z or [::1] (no keep-alive
 * probes there). */
bool orch__http_url_is_loopback(const char *url);
int orch__http_req_header(orch__http_req *req, const char *line);

/* ---- llm.c: providers, retries, fallback, cooldown, usage and cost ---- */

typedef struct orch__llm orch__llm;
typedef struct orch__llm_call orch__llm_call;

/* One HTTP attempt of a call, in order. Strings owned by the call. */
typedef struct orch__llm_attempt {
  char *tier, *model;
  const char *provider; /* static: "openai" or "anthropic" */
  const char *action;   /* static: what followed: "ok", "retry",
                           "fallback", "fail", "canceled", "cooldown" */
  int code;             /* ORCH_OK or ORCH_E* */
  int http_status;      /* 0: no response */
  char *error;          /* NULL on success; never holds a key */
  double start_ms;      /* since the call started */
  double latency_ms;    /* submit to last byte */
  double ttft_ms;       /* time to first token, -1 when none */
  long tokens_in, tokens_out; /* -1: unknown */
  double cost;          /* USD at its tier's prices; -1 unknown */
  double delay_ms;      /* backoff before the next attempt, 0 none */
} orch__llm_attempt;

typedef struct orch__llm_result {
  int code;             /* ORCH_OK, or the last attempt's error code */
  char *error;          /* owned; NULL when passed */
  char *text;           /* owned; the answer */
  size_t text_len;
  char *tier, *model;   /* of the attempt that answered (or the last) */
  const char *provider;
  char *finish_reason;  /* "stop", "end_turn", "length", ... or NULL */
  long tokens_in, tokens_out; /* of the answer; -1 unknown (not 0) */
  double cost;          /* USD over all attempts with usage; -1 unknown */
  double ttft_ms;       /* of the answer, -1 when none */
  double latency_ms;    /* call start to end, backoff included */
  orch__llm_attempt *attempts;
  size_t nattempts;
} orch__llm_result;

typedef struct orch__llm_req {
  const char *tier;         /* NULL: llm.default_tier, else "local" */
  const char *model;        /* NULL: the tier's model */
  const char *system;       /* instructions; may be NULL */
  const char *prompt;       /* the user message */
  int max_tokens;           /* 0: tier / llm default */
  int stream;               /* 1 stream, 0 not, -1 config default */
  const char *fault;        /* sent as X-Mock-Fault when set (tests) */
  long timeout_ms;          /* per attempt; 0: llm.timeout_ms */
  void (*done)(orch__llm_call *call, void *ud); /* on the loop thread */
  void *ud;
} orch__llm_req;

/* Checks the "tiers" and "llm" sections; names the bad key. */
int orch__llm_config_check(json_t *sections, char *err, size_t errlen);
/* Builds tiers from cfg->sections (may be NULL) and the environment
 * (OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL, ANTHROPIC_BASE_URL,
 * ANTHROPIC_API_KEY) and an HTTP engine on loop (loop thread only). */
int orch__llm_new(orch__llm **out /* OUT */, const orch__config *cfg,
                  uv_loop_t *loop, char *err, size_t errlen);
/* The same from the sections alone (tests, tools). */
int orch__llm_new_json(orch__llm **out /* OUT */, json_t *sections,
                       uv_loop_t *loop, char *err, size_t errlen);
/* Cancels calls in flight (their done runs), frees; loop thread. */
void orch__llm_free(orch__llm *l);
orch__http *orch__llm_http(orch__llm *l);
/* Calls whose whole answer the parse threads (llm.parse_threads) hold:
 * handed over and not yet continued on the loop (0 when there are none). */
size_t orch__llm_parsing(const orch__llm *l);
bool orch__llm_has_tier(const orch__llm *l, const char *name);
/* Starts a call on the loop thread. The call is owned by the caller from
 * done() on: free it with orch__llm_call_free (any thread). done never
 * runs inside this function: a call that fails to start, or ends at once
 * (its tier's endpoint in cooldown with no fallback), calls it on the next
 * loop turn. */
int orch__llm_call_start(orch__llm *l, const orch__llm_req *req,
                         orch__llm_call **out /* OUT */);
/* Stops a call; its done runs on a later loop turn with ORCH_ECANCELED. */
void orch__llm_call_cancel(orch__llm_call *c);
const orch__llm_result *orch__llm_call_result(const orch__llm_call *c);
void orch__llm_call_free(orch__llm_call *c);
/* The result as JSON for --json, the store and the API: {tier, model,
 * provider, finish_reason, tokens_in, tokens_out, cost (null when unknown),
 * ttft_ms, latency_ms, attempts: [{tier, model, provider, action, status,
 * error, latency_ms, ttft_ms, tokens_in, tokens_out, delay_ms}]}. Holds no
 * key (errors were redacted when made); a string that is not UTF-8 comes
 * with U+FFFD for its bad bytes, never left out. NULL when r is NULL. */
json_t *orch__llm_result_json(const orch__llm_result *r);
/* Replaces *s with a copy in which API keys known to l read "[redacted]",
 * and each byte that is not UTF-8 reads U+FFFD. */
void orch__llm_redact(const orch__llm *l, char **s);
/* Tier names, model, provider and redacted base URL, for `status`. */
json_t *orch__llm_describe(const orch__llm *l);

/* The built-in retry policy, the same as scripts/policies/retry.lua
 * decide{attempt=, status=, error=, retry_after_ms=, body=}. The lead may
 * route orch__llm_decide through the Lua hook (see docs/llm.md). */
typedef enum { ORCH__LLM_RETRY, ORCH__LLM_FALLBACK, ORCH__LLM_FAIL }
    orch__llm_action;
typedef struct orch__llm_decision {
  orch__llm_action action;
  double delay_ms;
  char reason[160];
} orch__llm_decision;
typedef struct orch__llm_retry_opts {
  int max_attempts;         /* per tier, default 4 */
  double base_ms, max_ms;   /* backoff: full jitter over base*2^(n-1) */
  double retry_after_cap_ms; /* default 60000 */
  /* which of them the config set (ORCH__LLM_SET_*): handed to retry.lua,
   * whose own numbers are the defaults */
  unsigned set;
} orch__llm_retry_opts;
enum {
  ORCH__LLM_SET_ATTEMPTS = 1,
  ORCH__LLM_SET_BASE = 2,
  ORCH__LLM_SET_MAX = 4,
  ORCH__LLM_SET_CAP = 8
};
void orch__llm_decide(const orch__llm_retry_opts *o, int attempt,
                      int status, const char *error, long retry_after_ms,
                      const char *body, orch__llm_decision *d);
/* Replaces the built-in decision for engine l (fn NULL: back to it). fn
 * runs on the loop thread, synchronously; status 0 is a transport error,
 * 2xx a malformed or truncated answer; retry_after_ms -1 when none. */
typedef void (*orch__llm_decide_fn)(void *ud, const orch__llm_retry_opts *o,
                                    int attempt, int status,
                                    const char *error, long retry_after_ms,
                                    const char *body, orch__llm_decision *d);
void orch__llm_set_decider(orch__llm *l, orch__llm_decide_fn fn, void *ud);

/* ---- step_llm.c: the `llm` step kind ---------------------------------- */

/* The llm result of step s (NULL when s is not an llm step or never ran).
 * Valid while the graph lives. */
const orch__llm_result *orch__llm_step_result(const orch__step *s);
typedef struct orch__llm_totals {
  size_t calls, attempts;
  long tokens_in, tokens_out; /* over calls that reported usage */
  size_t unknown_usage;       /* calls without usage */
  double cost;                /* USD over known costs */
} orch__llm_totals;
void orch__llm_graph_totals(const orch_graph *g, orch__llm_totals *t);
/* Frees the run's LLM engine and its loop-thread script state
 * (r->kind_state[ORCH__KIND_LLM]); loop thread, once the run's steps are
 * all finished. Optional: the kind frees them itself when no llm step of
 * the run can start any more (see step_llm.c). */
void orch__llm_run_end(orch__run *r);

#endif /* ORCH_INT_H */
