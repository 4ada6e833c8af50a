/* orch.h: the public C API of liborch, the orchestrate runtime.
 *
 * A host creates a runtime (worker pool, event loop, policy engine, store),
 * builds a graph of steps, runs it and reads each step's result. Handles are
 * opaque; every _new has a _free that accepts NULL; every call that can fail
 * returns an ORCH_E* code and, where it takes (err, errlen), writes a message
 * the caller can print into the caller's buffer. */
#ifndef ORCH_H
#define ORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORCH_VERSION "0.1.0"

#if defined(__GNUC__)
#define ORCH_API __attribute__((visibility("default")))
#else
#define ORCH_API
#endif

/* Error codes: one list, as libuv's UV_ERRNO_MAP. */
#define ORCH_ERRNO_MAP(X)                                   \
  X(ENOMEM, -1, "out of memory")                            \
  X(EINVAL, -2, "invalid argument")                         \
  X(EPLAN, -3, "bad plan")                                  \
  X(ECYCLE, -4, "dependency cycle")                         \
  X(ELIMIT, -5, "limit exceeded")                           \
  X(EIO, -6, "input/output error")                          \
  X(ECANCELED, -7, "canceled")                              \
  X(ETIMEDOUT, -8, "timed out")                             \
  X(ESTEP, -9, "a step failed")                             \
  X(ESCRIPT, -10, "script error")                           \
  X(EHTTP, -11, "HTTP error")                               \
  X(ESTORE, -12, "store error")                             \
  X(ECONFIG, -13, "bad configuration")                      \
  X(ESTATE, -14, "operation not valid in this state")       \
  X(ENOTFOUND, -15, "not found")

enum {
  ORCH_OK = 0,
#define ORCH__ERRNO_ENUM(name, val, msg) ORCH_##name = (val),
  ORCH_ERRNO_MAP(ORCH__ERRNO_ENUM)
#undef ORCH__ERRNO_ENUM
  ORCH__ELAST = -16
};

/* Returns a static string naming the code; never NULL. */
ORCH_API const char *orch_strerror(int code);
ORCH_API const char *orch_version(void);

/* Step status, in the order a step moves through them. */
typedef enum orch_status {
  ORCH_PENDING = 0,
  ORCH_IN_PROGRESS = 1,
  ORCH_PASSED = 2,
  ORCH_FAILED = 3,
  ORCH_SKIPPED = 4
} orch_status;

/* "pending", "in_progress", "passed", "failed", "skipped". */
ORCH_API const char *orch_status_name(int status);

typedef struct orch_runtime orch_runtime;
typedef struct orch_graph orch_graph;
typedef struct orch_step_ctx orch_step_ctx;

/* ---- runtime ---------------------------------------------------------- */

/* Creates a runtime. config_file: a Lua file returning a settings table, or
 * NULL to use ORCH_CONFIG, then ./orchestrate.conf.lua if it exists, then the
 * built-in defaults. Threads start on the first run. */
ORCH_API int orch_runtime_new(orch_runtime **out /* OUT */,
                              const char *config_file, char *err,
                              size_t errlen);
ORCH_API void orch_runtime_free(orch_runtime *rt);

/* Overrides one setting by its config key ("workers", "max_parallel",
 * "scripts_dir", ...), or "db", "db_default", "dry_run". The value is parsed
 * as the key's type; a wrong key or value is ORCH_ECONFIG with a message.
 * What the runtime reads as it starts (workers, db, db_default, scripts_dir,
 * lua_budget, lua_mem_max, json_max_depth) is ORCH_ESTATE after the first
 * run; the others (max_parallel, dry_run, dry_run_ms, shell_timeout_ms,
 * output_max_bytes, plan_max_bytes) apply from the next run or parse. */
ORCH_API int orch_runtime_set(orch_runtime *rt, const char *key,
                              const char *value, char *err, size_t errlen);

/* The session id of the current or last run ("" before the first run with
 * a store). Runs are recorded when the runtime has a store: the "db"
 * setting (orch_runtime_set), ORCH_DB, or the config's store.url. */
ORCH_API const char *orch_runtime_session(const orch_runtime *rt);

/* The store the runtime records into: the "db" setting, else ORCH_DB, else
 * the config's store.url, else the "db_default" setting; NULL for none
 * ("none", or nothing set). Borrowed: valid while rt and its settings. */
ORCH_API const char *orch_runtime_store_url(const orch_runtime *rt);

/* The in-flight limit of its runs (the max_parallel setting; 0: none). */
ORCH_API int orch_runtime_max_parallel(const orch_runtime *rt);

/* The directory of the Lua scripts it uses (the scripts_dir setting, else
 * the default lookup's result). Borrowed. */
ORCH_API const char *orch_runtime_scripts_dir(const orch_runtime *rt);

/* Rebuilds the graph of a recorded session from the store, marking the
 * steps that already passed; orch_run then runs only the others, recording
 * into the same session. */
ORCH_API int orch_runtime_resume(orch_runtime *rt, const char *session_id,
                                 orch_graph **out /* OUT */, char *err,
                                 size_t errlen);

/* The runtime's counters as JSON text (free with orch_free): the store's
 * writer (backend, connected, written, spooled, replayed,
 * records_dropped_total, last_error, last_drop) and the scripts
 * (generation, last reload error). A message's bytes that are not UTF-8
 * read U+FFFD. NULL when out of memory. */
ORCH_API char *orch_runtime_stats(orch_runtime *rt);

/* Waits up to timeout_ms until every record of the runtime's runs is in the
 * database (or, with the database down, in the spool). ORCH_OK, or
 * ORCH_ETIMEDOUT; ORCH_OK at once without a store. */
ORCH_API int orch_runtime_flush(orch_runtime *rt, unsigned timeout_ms);

/* Sessions as JSON text (free it with orch_free): with session_id NULL the
 * active ones and today's counts, else that session's progress summary
 * (total, passed, failed, pending, progress_pct, status). Read-only. */
ORCH_API int orch_status_json(const char *db, const char *session_id,
                              char **out /* OUT */, char *err, size_t errlen);
ORCH_API void orch_free(void *p);

/* Progress callback, called on the thread that called orch_run at most every
 * interval_ms and once at the end. */
typedef void (*orch_progress_fn)(void *ud, size_t done, size_t total,
                                 size_t running, size_t failed);
ORCH_API void orch_runtime_on_progress(orch_runtime *rt, orch_progress_fn fn,
                                       void *ud, unsigned interval_ms);

/* ---- graph ------------------------------------------------------------ */

ORCH_API int orch_graph_new(orch_graph **out /* OUT */);
ORCH_API void orch_graph_free(orch_graph *g);

/* Loads a plan file: JSON ({"steps":[...]}), Lua (a file returning the same
 * table) or GAP text (Task N: ... | Dependencies: ...), chosen by content.
 * rt supplies limits and the scripts (gap.lua); it may be NULL for JSON. The
 * graph is validated; errors name the file and the problem. */
ORCH_API int orch_graph_load(orch_runtime *rt, const char *path,
                             orch_graph **out /* OUT */, char *err,
                             size_t errlen);
/* The same from memory; name is used in messages. */
ORCH_API int orch_graph_parse(orch_runtime *rt, const char *text, size_t len,
                              const char *name, orch_graph **out /* OUT */,
                              char *err, size_t errlen);

/* A step whose work is a C function run on a worker thread. Return ORCH_OK
 * to pass; anything else fails the step (set a message with
 * orch_ctx_set_error). ud is borrowed: it must outlive the run. */
typedef int (*orch_step_fn)(orch_step_ctx *ctx, void *ud);

/* id NULL adds an anonymous step, for hosts that hold their steps by index
 * (as OpenMP or TBB programs hold task handles): the step's index (steps
 * are numbered 0.. in the order they were added, named or not) is its only
 * name. It costs no id check and no hash entry; messages, results and
 * orch_step_id show it as "#<index>" (formatted on demand into one of a few
 * per-thread buffers: copy it before 8 more such calls on the thread), and
 * orch_graph_find / orch_graph_depend accept "#<index>" for it when no
 * named step has that id. Add its edges with orch_graph_depend_index. */
ORCH_API int orch_graph_add_fn(orch_graph *g, const char *id, orch_step_fn fn,
                               void *ud);
/* The same, but run on the thread that called orch_run, one at a time, for
 * hosts whose state is not thread-safe (an interpreter, a GUI). id NULL:
 * anonymous, as above. */
ORCH_API int orch_graph_add_host_fn(orch_graph *g, const char *id,
                                    orch_step_fn fn, void *ud);
ORCH_API int orch_graph_add_shell(orch_graph *g, const char *id,
                                  const char *command);
/* ms from 0 to 2592000000 (30 days); else (inf, NaN) ORCH_EINVAL. */
ORCH_API int orch_graph_add_sleep(orch_graph *g, const char *id, double ms);
/* The word of known (NULL-ended) closest to word, for "did you mean" in a
 * message: a misspelling (one or two edits) or word a prefix of it
 * ("timeout" for "timeout_ms"); NULL when none is that close. Borrowed
 * from known. */
ORCH_API const char *orch_closest(const char *word, const char *const *known);
/* Any kind, from one step object in the plan's JSON form. An add that
 * fails (any orch_graph_add_*) adds nothing and leaves no error in the
 * graph: its return code (and err) is the whole report. */
ORCH_API int orch_graph_add_json(orch_graph *g, const char *step_json,
                                 char *err, size_t errlen);
/* id depends on dep (dep must finish first). Either may be added after
 * this call: unknown ids are reported by orch_graph_validate, so steps may
 * be added in any order. */
ORCH_API int orch_graph_depend(orch_graph *g, const char *id,
                               const char *dep);
/* The same by index (steps are numbered 0.. in the order they were added):
 * no id lookups, for hosts that build very large graphs. Both steps must
 * exist (ORCH_EINVAL); an edge to itself or a cycle is reported by
 * orch_graph_validate. Fastest when each step's edges are added right
 * after the step, dependencies before dependents (dep < step). */
ORCH_API int orch_graph_depend_index(orch_graph *g, size_t step, size_t dep);
/* Makes room for nsteps steps and nedges edges in all (counting those
 * already added), so that a host that knows its graph's size avoids the
 * regrowth of the arrays (and, when steps are named, of the id hash, which
 * is sized on the first named step). Only a hint: more can still be added.
 * ORCH_ESTATE after validation, ORCH_ELIMIT past 2^32 - 2 steps. */
ORCH_API int orch_graph_reserve(orch_graph *g, size_t nsteps, size_t nedges);
/* The step's cost estimate (for priorities and the critical path) and its
 * timeout, in ms, each from 0 to 2592000000 (30 days; else, inf or NaN,
 * ORCH_EINVAL). The step must exist: ORCH_ENOTFOUND otherwise, and the
 * graph is left as it was. The timeout is enforced for shell steps (the
 * group killed) and each attempt of an llm step; other kinds keep it
 * without enforcing it (a C function cannot be stopped). */
ORCH_API int orch_graph_set_cost(orch_graph *g, const char *id, double ms);
ORCH_API int orch_graph_set_timeout(orch_graph *g, const char *id,
                                    double ms);

/* Checks ids, dependencies and cycles, then computes levels and the
 * critical path. Must pass before a run (orch_run calls it). */
ORCH_API int orch_graph_validate(orch_graph *g, char *err, size_t errlen);

ORCH_API size_t orch_graph_size(const orch_graph *g);
/* Index of the step with this id, or -1. */
ORCH_API long orch_graph_find(const orch_graph *g, const char *id);
ORCH_API size_t orch_graph_levels(const orch_graph *g);
/* Steps on the critical path in order; returns its length, writes at most
 * cap indices. The path's cost in ms goes to *cost when cost is not NULL. */
ORCH_API size_t orch_graph_critical_path(const orch_graph *g, size_t *idx,
                                         size_t cap, double *cost);

/* ---- running ---------------------------------------------------------- */

/* Runs the graph to completion on the runtime's pool and loop; blocks the
 * calling thread. Returns ORCH_OK when every step passed, ORCH_ESTEP when
 * one failed (its dependents are skipped, independent branches run on),
 * ORCH_ECANCELED after orch_runtime_cancel. A graph runs once. */
ORCH_API int orch_run(orch_runtime *rt, orch_graph *g, char *err,
                      size_t errlen);
/* Stops dispatch, kills running children, and ends the run with a true
 * final status for every step. Safe from any thread and from a signal
 * handler. */
ORCH_API void orch_runtime_cancel(orch_runtime *rt);
/* Kills (SIGKILL) the process group of every shell step running in this
 * process, in any runtime, for a host about to exit at once (a second
 * Ctrl-C) that has no time to cancel. Only atomic loads and kill(2) over
 * a fixed table: safe in a signal handler. A process that left its
 * step's group is not reached; neither are the steps started while
 * more than 4096 run at once (orch_runtime_cancel reaches those). */
ORCH_API void orch_shell_kill_all(void);

/* ---- the main job ------------------------------------------------------- */

/* Called once the plan is a validated graph, before it runs. */
typedef void (*orch_plan_fn)(void *ud, const orch_graph *g);
/* Answers a request: one model call, or (plan = 1, or -1 and gap.lua's
 * should_plan says so) a plan written by a model, run as a graph of llm
 * steps, and a synthesis. *out: a JSON document (free with orch_free) with
 * the plan, its levels, each step (status, tier, model, tokens, cost,
 * timings), the observation, the answer, the session. ORCH_ESTEP when
 * tasks failed but the answer was written from the others. A request that
 * is not valid UTF-8 is used with its bad bytes as U+FFFD. */
ORCH_API int orch_ask(orch_runtime *rt, const char *request, int plan,
                      orch_plan_fn on_plan, void *ud, char **out /* OUT */,
                      char *err, size_t errlen);

/* ---- results (valid after the step finished; indices 0..size-1) -------- */

ORCH_API const char *orch_step_id(const orch_graph *g, size_t i);
ORCH_API const char *orch_step_kind(const orch_graph *g, size_t i);
ORCH_API size_t orch_step_ndeps(const orch_graph *g, size_t i);
ORCH_API size_t orch_step_dep(const orch_graph *g, size_t i, size_t j);
ORCH_API size_t orch_step_level(const orch_graph *g, size_t i);
ORCH_API double orch_step_cost(const orch_graph *g, size_t i);
ORCH_API int orch_step_status(const orch_graph *g, size_t i);
/* ms since the run started; -1 when the step never started/finished. A
 * step never starts before all its dependencies finished. The interval
 * always contains the step's run, but a C step (orch_graph_add_fn) that
 * passed and that no step depends on may share its clock reads with up to
 * 31 such steps run just before it on the same worker. */
ORCH_API double orch_step_started_ms(const orch_graph *g, size_t i);
ORCH_API double orch_step_finished_ms(const orch_graph *g, size_t i);
ORCH_API int orch_step_attempts(const orch_graph *g, size_t i);
/* Owned by the graph; NULL when absent. */
ORCH_API const char *orch_step_output(const orch_graph *g, size_t i);
ORCH_API const char *orch_step_error(const orch_graph *g, size_t i);
/* A shell step's exit status, -1 when none. */
ORCH_API int orch_step_exit_status(const orch_graph *g, size_t i);
/* The script generation the step ran under (0 when no script ran). */
ORCH_API unsigned orch_step_generation(const orch_graph *g, size_t i);

/* Kind-specific details of a finished step as JSON text (free with
 * orch_free), NULL when none: for llm steps {tier, model, provider,
 * tokens_in, tokens_out, cost (each null when unknown), ttft_ms,
 * latency_ms, attempts}. */
ORCH_API char *orch_step_details(const orch_graph *g, size_t i);

/* The run's makespan in ms (0 before a run). */
ORCH_API double orch_graph_makespan_ms(const orch_graph *g);

/* ---- inside a C step -------------------------------------------------- */

ORCH_API const char *orch_ctx_id(const orch_step_ctx *ctx);
/* Copies the text; the step's output. */
ORCH_API void orch_ctx_set_output(orch_step_ctx *ctx, const char *s,
                                  size_t len);
ORCH_API void orch_ctx_set_error(orch_step_ctx *ctx, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* A dependency's output by id, NULL if none or not a dependency. */
ORCH_API const char *orch_ctx_dep_output(const orch_step_ctx *ctx,
                                         const char *dep_id);

/* ---- scripts (policy.c) ------------------------------------------------ */

/* Called once per problem found: file, line (0 when unknown), message. */
typedef void (*orch_report_fn)(void *ud, const char *file, int line,
                               const char *msg);
/* Compiles every script under dir and runs each module's selftest() in a
 * fresh sandbox with the runtime's limits (rt may be NULL: defaults; dir
 * NULL: the runtime's scripts_dir). Returns the number of failing scripts
 * (0: all good), or an ORCH_E* code: ORCH_ENOTFOUND, reported, when dir
 * cannot be opened or holds no script module. */
ORCH_API int orch_scripts_check(orch_runtime *rt, const char *dir,
                                orch_report_fn report, void *ud);
/* The generation of the scripts serving now, and the last reload error
 * (file:line: message) copied into buf, "" when the last reload passed. */
ORCH_API unsigned orch_runtime_scripts(orch_runtime *rt, char *buf,
                                       size_t buflen);

/* ---- mock LLM server (mock_llm.c) -------------------------------------- */

typedef struct orch_mock orch_mock;
/* Starts the mock (OpenAI chat completions + Anthropic Messages) on
 * host:port in background threads; port 0 picks a free one. */
ORCH_API int orch_mock_start(orch_mock **out /* OUT */, const char *host,
                             int port, char *err, size_t errlen);
ORCH_API int orch_mock_port(const orch_mock *m);
/* Requests served so far. */
ORCH_API unsigned long orch_mock_requests(const orch_mock *m);
ORCH_API void orch_mock_free(orch_mock *m);

/* ---- store (store.c) ---------------------------------------------------- */

/* Applies pending migrations to db ("postgresql://...", "postgres://...",
 * a libpq keyword string, or "sqlite:PATH"; NULL: ORCH_DB, then
 * sqlite:orchestrate.db). With status_only, only reports. report is called
 * once per migration with file = its name, line = 1 applied / 0 pending,
 * msg = "applied", "pending" or "applied now". */
ORCH_API int orch_migrate(const char *db, int status_only,
                          orch_report_fn report, void *ud, char *err,
                          size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* ORCH_H */
