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
  uint32_t id;         /* offset of the NUL-terminated id in g->ids */
  uint32_t level;      /* topological level (longest path from a root) */
  uint32_t npending;   /* dependencies not yet finished (during a run) */
  uint32_t cause;      /* for skipped steps: the failed step's index */
  uint8_t kind;        /* index into orch__kinds[] */
  uint8_t status;      /* orch_status */
  uint8_t attempts;
  uint8_t flags;       /* ORCH__SF_* */
  int32_t exit_status; /* shell: the exit status, -1 none */
  uint32_t generation; /* script generation it ran under */
  float cost;          /* estimate in ms (critical path, priority) */
  float timeout_ms;    /* 0: kind's default */
  double bottom;       /* longest cost path from here to an exit */
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

typedef struct orch__edge {
  uint32_t from, to; /* to depends on from */
} orch__edge;

struct orch_graph {
  orch__step *steps;
  size_t n, cap;
  char *ids; /* id arena */
  size_t ids_len, ids_cap;
  uint32_t *hash; /* open addressing; index+1, 0 = empty */
  size_t hash_cap;
  /* dependencies as added, by name when the target was not known yet */
  orch__edge *edges;
  size_t nedges, edges_cap;
  char **pending_names; /* (step, dep name) pairs resolved at validate */
  uint32_t *pending_from;
  size_t npending, pending_cap;
  /* after validate: CSR of dependencies and dependents */
  uint32_t *dep_off, *deps;   /* deps of i: deps[dep_off[i]..dep_off[i+1]) */
  uint32_t *out_off, *outs;   /* dependents of i */
  uint32_t nlevels;
  bool validated, ran;
  int64_t makespan_ns;
  void *plan_meta; /* json_t of a loaded plan's top-level extras, or NULL */
  int err_code;    /* first error of an add call, reported at validate */
  char err_msg[512];
};

const char *orch__step_id(const orch_graph *g, uint32_t i);
int orch__graph_add(orch_graph *g, const char *id, size_t idlen, int kind,
                    uint32_t *idx /* OUT */, char *err, size_t errlen);
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
 * simulate llm steps under --dry-run). Loop thread. */
int orch__sleep_start(orch__run *r, uint32_t idx, double ms);

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

/* ---- json.c: Lua values <-> jansson ---------------------------------- */

/* Converts the value at idx to JSON (tables with 1..n keys are arrays).
 * Functions, userdata and cycles are errors naming the key path. */
json_t *orch__lua_to_json(lua_State *L, int idx, int max_depth, char *err,
                          size_t errlen);
/* Pushes a JSON value as a Lua value (null becomes nil in tables is
 * avoided: it becomes json.null lightuserdata). */
void orch__lua_push_json(lua_State *L, const json_t *v);

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
 * when it passes. Missing directory: ORCH_OK, nothing watched. */
int orch__policy_watch(orch__policy *p, uv_loop_t *loop);
/* Loop thread, before the loop stops: closes the watches (their close
 * callbacks run on the loop's next iteration) and joins the checker. */
void orch__policy_unwatch(orch__policy *p);
/* Rescans now, synchronously (any thread): a reload without the watch. */
int orch__policy_rescan(orch__policy *p);
unsigned orch__policy_generation(const orch__policy *p);
/* Copies the standing reload error ("file:line: message", "" when every
 * file on disk is serving) into buf; returns the serving generation. */
unsigned orch__policy_last_error(orch__policy *p, char *buf, size_t buflen);
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

#endif /* ORCH_INT_H */
