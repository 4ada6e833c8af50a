/* main.c is the `orchestrate` command line: plan, run, check, mock-llm,
 * migrate. It sees only the public API (orch.h), like any other host. Exit
 * codes: 0 all passed, 1 a step failed, 64 usage, 65 bad plan, 70 internal,
 * 78 configuration. */
#include "orch.h"

#include <ctype.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

enum { EX_OK = 0, EX_FAIL = 1, EX_USAGE = 64, EX_DATAERR = 65,
       EX_SOFTWARE = 70, EX_CONFIG = 78 };

static const char usage[] =
    "usage: orchestrate COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  ask \"REQUEST\" [options]        plan the request with a model, run the plan, answer\n"
    "      --plan / --no-plan         force planning, or one model call\n"
    "      --json                     print one JSON document (plan, steps, answer)\n"
    "      --workers N, --max-parallel N, --db URL   as for run\n"
    "  plan FILE [--json]             validate a plan; print levels and the critical path\n"
    "  run FILE [options]             run a plan (JSON, Lua or GAP text)\n"
    "      --json                     print one JSON document with the results\n"
    "      --workers N                worker threads (default: one per core)\n"
    "      --max-parallel N           steps in flight at most (default: unlimited)\n"
    "      --dry-run                  simulate llm steps as sleeps\n"
    "      --db URL                   record into URL (postgresql://..., sqlite:PATH,\n"
    "                                 none); default: ORCH_DB, else the config's\n"
    "                                 store.url, else sqlite:orchestrate.db\n"
    "  run --resume SESSION [--db URL]  run what a recorded session has not passed yet\n"
    "  check [DIR]                    compile and self-check the Lua scripts (default: scripts)\n"
    "  mock-llm [--port N] [--host H] serve the mock LLM (OpenAI + Anthropic APIs)\n"
    "  status [SESSION] [--json] [--db URL]\n"
    "                                 sessions: the active ones and today's counts,\n"
    "                                 or one session's progress\n"
    "  migrate [--db URL] [--status]  apply (or list) the database migrations\n"
    "\n"
    "options for every command:\n"
    "  --config FILE                  settings file (default: ORCH_CONFIG, then\n"
    "                                 ./orchestrate.conf.lua, then built-in defaults)\n"
    "  -h, --help                     this text\n"
    "  --version                      the version\n";

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "orchestrate: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nrun 'orchestrate --help' for usage\n");
  return EX_USAGE;
}

static int exit_for(int rc) {
  switch (rc) {
  case ORCH_OK: return EX_OK;
  case ORCH_ESTEP: case ORCH_ECANCELED: return EX_FAIL;
  case ORCH_EPLAN: case ORCH_ECYCLE: case ORCH_ELIMIT: case ORCH_EIO:
  case ORCH_ESCRIPT: return EX_DATAERR;
  case ORCH_ECONFIG: return EX_CONFIG;
  case ORCH_ENOTFOUND: return EX_DATAERR; /* the session, database, ... named */
  default: return EX_SOFTWARE;
  }
}

/* Prints s on stdout with its control bytes shown as escapes (\n, \t,
 * \r, \xNN): nothing a terminal would act on (an escape sequence in a
 * model's answer or a stored message); lines keeps newlines and tabs. */
static void put_text(const char *s, bool lines) {
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (lines && (c == '\n' || c == '\t')) putchar(c);
    else if (c == '\n') fputs("\\n", stdout);
    else if (c == '\t') fputs("\\t", stdout);
    else if (c == '\r') fputs("\\r", stdout);
    else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
    else putchar(c);
  }
}

/* One line of text from the store. */
static void put_clean(const char *s) { put_text(s, false); }

/* ---- options ------------------------------------------------------------- */

typedef struct {
  const char *file, *config, *db, *host, *resume;
  const char *workers, *max_parallel;
  int port;
  int json, dry_run, status_only, plan;
} opts;

static int parse_opts(int argc, char **argv, opts *o, const char *allowed) {
  bool only_args = false; /* after "--": a request may start with '-' */
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!only_args && strcmp(a, "--") == 0) {
      only_args = true;
      continue;
    }
    if (only_args) {
      if (o->file) return usage_error("unexpected argument '%s'", a);
      o->file = a;
      continue;
    }
#define NEEDS(flag)                                                      \
  if (!strstr(allowed, flag)) return usage_error("option %s is not for this command", a); \
  if (i + 1 >= argc) return usage_error("option %s needs a value", a)
#define FLAG(flag)                                                       \
  if (!strstr(allowed, flag)) return usage_error("option %s is not for this command", a)
    if (strcmp(a, "--json") == 0) { FLAG("json"); o->json = 1; }
    else if (strcmp(a, "--dry-run") == 0) { FLAG("dry"); o->dry_run = 1; }
    else if (strcmp(a, "--status") == 0) { FLAG("status"); o->status_only = 1; }
    else if (strcmp(a, "--plan") == 0) { FLAG("plan"); o->plan = 1; }
    else if (strcmp(a, "--no-plan") == 0) { FLAG("plan"); o->plan = 0; }
    else if (strcmp(a, "--config") == 0) {
      if (i + 1 >= argc) return usage_error("option %s needs a value", a);
      o->config = argv[++i];
    } else if (strcmp(a, "--workers") == 0) { NEEDS("workers"); o->workers = argv[++i]; }
    else if (strcmp(a, "--max-parallel") == 0) { NEEDS("max-parallel"); o->max_parallel = argv[++i]; }
    else if (strcmp(a, "--db") == 0) { NEEDS("db"); o->db = argv[++i]; }
    else if (strcmp(a, "--resume") == 0) { NEEDS("resume"); o->resume = argv[++i]; }
    else if (strcmp(a, "--host") == 0) { NEEDS("host"); o->host = argv[++i]; }
    else if (strcmp(a, "--port") == 0) {
      NEEDS("port");
      char *end;
      long p = strtol(argv[++i], &end, 10);
      if (end == argv[i] || *end || p < 0 || p > 65535)
        return usage_error("bad port '%s' (0-65535; 0: any free port)", argv[i]);
      o->port = (int)p;
    } else if (a[0] == '-' && a[1]) return usage_error("unknown option %s", a);
    else if (!o->file) o->file = a;
    else return usage_error("unexpected argument '%s'", a);
#undef NEEDS
#undef FLAG
  }
  return 0;
}

static int open_runtime(const opts *o, orch_runtime **rt) {
  char err[1024];
  int rc = orch_runtime_new(rt, o->config, err, sizeof err);
  if (rc) {
    fprintf(stderr, "orchestrate: %s\n", err);
    return exit_for(rc);
  }
  const char *keys[] = {"workers", "max_parallel"};
  const char *vals[] = {o->workers, o->max_parallel};
  for (int i = 0; i < 2; i++) {
    if (!vals[i]) continue;
    if ((rc = orch_runtime_set(*rt, keys[i], vals[i], err, sizeof err))) {
      fprintf(stderr, "orchestrate: --%s: %s\n",
              i ? "max-parallel" : "workers", err);
      orch_runtime_free(*rt);
      *rt = NULL;
      return EX_USAGE;
    }
  }
  if (o->dry_run) orch_runtime_set(*rt, "dry_run", "1", NULL, 0);
  /* The CLI records every run: --db, else the config or ORCH_DB, else an
   * SQLite file in the working directory. */
  if (o->db) orch_runtime_set(*rt, "db", o->db, NULL, 0);
  orch_runtime_set(*rt, "db_default", "sqlite:orchestrate.db", NULL, 0);
  return 0;
}

static int load_plan(orch_runtime *rt, const char *file, orch_graph **g) {
  char err[2048];
  int rc = orch_graph_load(rt, file, g, err, sizeof err);
  if (rc) {
    fprintf(stderr, "orchestrate: %s\n", err);
    return rc == ORCH_ENOMEM ? EX_SOFTWARE : EX_DATAERR;
  }
  return 0;
}

/* ---- plan ---------------------------------------------------------------- */

static json_t *ids_json(const orch_graph *g, const size_t *idx, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++) json_array_append_new(a, json_string(orch_step_id(g, idx[i])));
  return a;
}

static int cmd_plan(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "json");
  if (ex) return ex;
  if (!o.file) return usage_error("plan needs a FILE%s", "");
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  size_t *path = NULL;
  if ((ex = open_runtime(&o, &rt))) return ex;
  if ((ex = load_plan(rt, o.file, &g))) goto done;
  size_t n = orch_graph_size(g), nl = orch_graph_levels(g);
  double cost;
  size_t plen = orch_graph_critical_path(g, NULL, 0, &cost);
  path = malloc((plen ? plen : 1) * sizeof *path);
  orch_graph_critical_path(g, path, plen, NULL);
  if (o.json) {
    json_t *doc = json_object(), *steps = json_array(), *levels = json_array();
    for (size_t l = 0; l < nl; l++) json_array_append_new(levels, json_array());
    for (size_t i = 0; i < n; i++) {
      json_t *s = json_object(), *deps = json_array();
      json_object_set_new(s, "id", json_string(orch_step_id(g, i)));
      json_object_set_new(s, "kind", json_string(orch_step_kind(g, i)));
      for (size_t j = 0; j < orch_step_ndeps(g, i); j++)
        json_array_append_new(deps, json_string(orch_step_id(g, orch_step_dep(g, i, j))));
      json_object_set_new(s, "deps", deps);
      json_object_set_new(s, "level", json_integer((json_int_t)orch_step_level(g, i)));
      json_object_set_new(s, "cost_ms", json_real(orch_step_cost(g, i)));
      json_array_append_new(steps, s);
      json_array_append_new(json_array_get(levels, orch_step_level(g, i)),
                            json_string(orch_step_id(g, i)));
    }
    json_object_set_new(doc, "steps", steps);
    json_object_set_new(doc, "levels", levels);
    json_object_set_new(doc, "critical_path", ids_json(g, path, plen));
    json_object_set_new(doc, "critical_path_ms", json_real(cost));
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    printf("%s: %zu steps, %zu levels\n", o.file, n, nl);
    for (size_t l = 0; l < nl && l < 200; l++) {
      printf("  level %zu:", l);
      size_t shown = 0, count = 0;
      for (size_t i = 0; i < n; i++) {
        if (orch_step_level(g, i) != l) continue;
        count++;
        if (shown < 12) { printf(" %s", orch_step_id(g, i)); shown++; }
      }
      if (count > shown) printf(" ... (%zu more)", count - shown);
      printf("\n");
    }
    if (nl > 200) printf("  ... (%zu more levels)\n", nl - 200);
    printf("critical path (%.0f ms):", cost);
    for (size_t i = 0; i < plen && i < 50; i++)
      printf("%s%s", i ? " -> " : " ", orch_step_id(g, path[i]));
    if (plen > 50) printf(" ... (%zu steps)", plen);
    printf("\n");
  }
done:
  free(path);
  orch_graph_free(g);
  orch_runtime_free(rt);
  return ex;
}

/* ---- run ----------------------------------------------------------------- */

static orch_runtime *sig_rt;
static volatile sig_atomic_t sig_count;

/* SIGINT, SIGTERM and SIGHUP (the terminal closed): the first cancels the
 * run (children's groups
 * killed, what was recorded kept); the next exits at once, but kills the
 * shell steps' process groups first, so none is left running. */
static void on_signal(int sig) {
  if (sig_count++ == 0 && sig_rt) {
    orch_runtime_cancel(sig_rt);
    return;
  }
  orch_shell_kill_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void catch_signals(orch_runtime *rt) {
  sig_rt = rt;
  signal(SIGINT, rt ? on_signal : SIG_DFL);
  signal(SIGTERM, rt ? on_signal : SIG_DFL);
  signal(SIGHUP, rt ? on_signal : SIG_DFL);
}

static void progress(void *ud, size_t done, size_t total, size_t running,
                     size_t failed) {
  (void)ud;
  int width = 30, fill = total ? (int)((double)done / (double)total * width) : width;
  fprintf(stderr, "\r[%.*s%*s] %zu/%zu done, %zu running, %zu failed ",
          fill, "==============================", width - fill, "", done, total,
          running, failed);
  if (done == total) fputc('\n', stderr);
  fflush(stderr);
}

/* Says on stderr when records were spooled or dropped: never silently. */
static void report_stats(orch_runtime *rt) {
  orch_runtime_flush(rt, 1000); /* what is still queued is not lost yet */
  char *txt = orch_runtime_stats(rt);
  json_t *doc = txt ? json_loads(txt, 0, NULL) : NULL;
  orch_free(txt);
  json_t *st = json_object_get(doc, "store");
  if (st) {
    json_int_t dropped = json_integer_value(json_object_get(st, "records_dropped_total"));
    json_int_t spooled = json_integer_value(json_object_get(st, "spooled"));
    json_int_t replayed = json_integer_value(json_object_get(st, "replayed"));
    if (dropped)
      fprintf(stderr, "orchestrate: store: %lld records dropped (%s)\n", (long long)dropped,
              json_string_value(json_object_get(st, "last_drop")));
    json_int_t queued = json_integer_value(json_object_get(st, "queued"));
    if (!json_is_true(json_object_get(st, "connected")) && (spooled > replayed || queued))
      fprintf(stderr, "orchestrate: store: %lld records go to the spool and are replayed "
              "when the database is back\n", (long long)(spooled - replayed + queued));
  }
  json_decref(doc);
}

static double dur(const orch_graph *g, size_t i) {
  double a = orch_step_started_ms(g, i), b = orch_step_finished_ms(g, i);
  return a >= 0 && b >= a ? b - a : 0;
}

/* A JSON string of text from a step (a tool's stderr need not be UTF-8):
 * each byte that does not start a valid UTF-8 character becomes U+FFFD,
 * so the key is never lost (json_string refuses invalid UTF-8). NULL only
 * when out of memory. */
static json_t *json_text(const char *s) {
  json_t *j = json_string(s);
  if (j) return j;
  size_t len = strlen(s), o = 0;
  unsigned char *p = (unsigned char *)s;
  char *fix = malloc(len * 3 + 1); /* one byte becomes at most three */
  if (!fix) return NULL;
  for (size_t i = 0; i < len;) {
    unsigned c = p[i], min = 0;
    size_t n = 0;
    if (c >= 0xC0 && c < 0xE0) { n = 1; min = 0x80; c &= 0x1F; }
    else if (c >= 0xE0 && c < 0xF0) { n = 2; min = 0x800; c &= 0x0F; }
    else if (c >= 0xF0 && c < 0xF8) { n = 3; min = 0x10000; c &= 0x07; }
    bool ok = c < 0x80 || n > 0;
    for (size_t k = 1; ok && k <= n; k++) {
      if (i + k >= len || (p[i + k] & 0xC0) != 0x80) ok = false;
      else c = (c << 6) | (p[i + k] & 0x3F);
    }
    if (ok && n && (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)))
      ok = false;
    if (ok) {
      memcpy(fix + o, s + i, n + 1);
      o += n + 1;
      i += n + 1;
    } else { /* as orch__utf8_repair: one U+FFFD, then the next byte */
      memcpy(fix + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i++;
    }
  }
  j = json_stringn(fix, o);
  free(fix);
  return j;
}

/* The steps by level, in index order within a level (the order of a
 * loop over levels of a loop over steps, in O(n)): a topological order.
 * NULL when out of memory; free it. */
static size_t *by_level(const orch_graph *g) {
  size_t n = orch_graph_size(g), nl = orch_graph_levels(g);
  size_t *order = malloc((n ? n : 1) * sizeof *order);
  size_t *at = calloc(nl + 1, sizeof *at); /* where each level starts */
  if (!order || !at) {
    free(order);
    free(at);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) at[orch_step_level(g, i) + 1]++;
  for (size_t l = 0; l < nl; l++) at[l + 1] += at[l];
  for (size_t i = 0; i < n; i++) order[at[orch_step_level(g, i)]++] = i;
  free(at);
  return order;
}

/* A session id as the store writes them: a UUID, in either case. */
static bool is_session_id(const char *s) {
  if (strlen(s) != 36) return false;
  for (int i = 0; i < 36; i++) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i])) return false;
  }
  return true;
}

/* One model call's summary on its step's line: tier, model, tokens and
 * cost ("?" for what the provider did not say). */
static void print_call(const json_t *d) {
  const char *tier = json_string_value(json_object_get(d, "tier"));
  const char *model = json_string_value(json_object_get(d, "model"));
  json_t *a = json_object_get(d, "tokens_in"), *b = json_object_get(d, "tokens_out"),
         *c = json_object_get(d, "cost");
  char ti[24] = "?", to[24] = "?", co[32] = "?";
  if (json_is_integer(a) && json_integer_value(a) >= 0)
    snprintf(ti, sizeof ti, "%lld", (long long)json_integer_value(a));
  if (json_is_integer(b) && json_integer_value(b) >= 0)
    snprintf(to, sizeof to, "%lld", (long long)json_integer_value(b));
  if (json_is_number(c)) snprintf(co, sizeof co, "%.6f", json_number_value(c));
  fputs("  ", stdout);
  put_clean(tier ? tier : "?");
  fputc(' ', stdout);
  put_clean(model ? model : "?");
  printf(", %s+%s tokens, $%s", ti, to, co);
}

static int cmd_run(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "json dry workers max-parallel db resume");
  if (ex) return ex;
  if (!o.file && !o.resume) return usage_error("run needs a FILE or --resume SESSION%s", "");
  if (o.file && o.resume) return usage_error("run takes a FILE or --resume SESSION, not both%s", "");
  if (o.resume && !is_session_id(o.resume))
    return usage_error("--resume: '%s' is not a session id (a UUID, as "
                       "`orchestrate status` lists them)", o.resume);
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  double *longest = NULL;
  size_t *order = NULL;
  if ((ex = open_runtime(&o, &rt))) return ex;
  if (o.resume) {
    char rerr[1024];
    int rrc = orch_runtime_resume(rt, o.resume, &g, rerr, sizeof rerr);
    if (rrc) {
      fprintf(stderr, "orchestrate: --resume: %s\n", rerr);
      ex = exit_for(rrc);
      goto done;
    }
  } else if ((ex = load_plan(rt, o.file, &g))) goto done;
  if (!o.json && isatty(STDERR_FILENO)) orch_runtime_on_progress(rt, progress, NULL, 100);
  catch_signals(rt);
  char err[1024] = "";
  int rc = orch_run(rt, g, err, sizeof err);
  catch_signals(NULL);
  if (rc != ORCH_OK && rc != ORCH_ESTEP && rc != ORCH_ECANCELED) {
    fprintf(stderr, "orchestrate: %s\n", err);
    ex = exit_for(rc);
    goto done;
  }
  size_t n = orch_graph_size(g);
  double seq = 0;
  size_t counts[5] = {0};
  /* Longest path over measured durations, the steps visited by level: a
   * step's dependencies are all on lower levels, so before it. */
  longest = calloc(n ? n : 1, sizeof *longest);
  order = by_level(g);
  if (!longest || !order) {
    fprintf(stderr, "orchestrate: out of memory\n");
    ex = EX_SOFTWARE;
    goto done;
  }
  double crit = 0;
  for (size_t i = 0; i < n; i++) {
    seq += dur(g, i);
    int st = orch_step_status(g, i);
    if (st >= 0 && st < 5) counts[st]++;
  }
  for (size_t k = 0; k < n; k++) {
    size_t i = order[k];
    double best = 0;
    for (size_t j = 0; j < orch_step_ndeps(g, i); j++) {
      double d = longest[orch_step_dep(g, i, j)];
      if (d > best) best = d;
    }
    longest[i] = best + dur(g, i);
    if (longest[i] > crit) crit = longest[i];
  }
  long par = orch_runtime_max_parallel(rt); /* --max-parallel or the config */
  double bound = crit;
  if (par > 0 && seq / (double)par > bound) bound = seq / (double)par;
  double makespan = orch_graph_makespan_ms(g);
  const char *status = rc == ORCH_OK ? "passed" : rc == ORCH_ECANCELED ? "canceled" : "failed";
  /* the model calls' tokens and cost, over the steps that made one */
  json_t **det = calloc(n ? n : 1, sizeof *det);
  long long tin = 0, tout = 0;
  double cost = 0;
  bool calls = false, tok_unknown = false, cost_unknown = false;
  for (size_t i = 0; det && i < n; i++) {
    char *d = orch_step_details(g, i);
    det[i] = d ? json_loads(d, 0, NULL) : NULL;
    orch_free(d);
    if (!det[i] || orch_step_attempts(g, i) == 0) continue;
    calls = true;
    json_t *a = json_object_get(det[i], "tokens_in"),
           *b = json_object_get(det[i], "tokens_out"),
           *c = json_object_get(det[i], "cost");
    if (!json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 ||
        json_integer_value(b) < 0)
      tok_unknown = true;
    else {
      tin += json_integer_value(a);
      tout += json_integer_value(b);
    }
    if (json_is_number(c)) cost += json_number_value(c);
    else cost_unknown = true;
  }
  if (o.json) {
    json_t *doc = json_object(), *steps = json_array();
    json_object_set_new(doc, "status", json_string(status));
    json_object_set_new(doc, "session", json_string(orch_runtime_session(rt)));
    for (size_t i = 0; i < n; i++) {
      json_t *s = json_object();
      json_object_set_new(s, "id", json_string(orch_step_id(g, i)));
      json_object_set_new(s, "kind", json_string(orch_step_kind(g, i)));
      json_object_set_new(s, "status", json_string(orch_status_name(orch_step_status(g, i))));
      json_object_set_new(s, "level", json_integer((json_int_t)orch_step_level(g, i)));
      double a = orch_step_started_ms(g, i), b = orch_step_finished_ms(g, i);
      json_object_set_new(s, "started_ms", a >= 0 ? json_real(a) : json_null());
      json_object_set_new(s, "finished_ms", b >= 0 ? json_real(b) : json_null());
      json_object_set_new(s, "attempts", json_integer(orch_step_attempts(g, i)));
      if (orch_step_exit_status(g, i) >= 0)
        json_object_set_new(s, "exit_status", json_integer(orch_step_exit_status(g, i)));
      const char *out = orch_step_output(g, i), *e = orch_step_error(g, i);
      if (out) {
        json_t *jo = json_string(out); /* NULL when not UTF-8 */
        json_object_set_new(s, "output", jo ? jo : json_string("(output is not UTF-8)"));
      }
      if (e) json_object_set_new(s, "error", json_text(e));
      if (det && det[i]) json_object_set(s, "llm", det[i]);
      json_array_append_new(steps, s);
    }
    json_object_set_new(doc, "steps", steps);
    json_object_set_new(doc, "passed", json_integer((json_int_t)counts[ORCH_PASSED]));
    json_object_set_new(doc, "failed", json_integer((json_int_t)counts[ORCH_FAILED]));
    json_object_set_new(doc, "skipped", json_integer((json_int_t)counts[ORCH_SKIPPED]));
    json_object_set_new(doc, "makespan_ms", json_real(makespan));
    json_object_set_new(doc, "bound_ms", json_real(bound));
    json_object_set_new(doc, "sequential_ms", json_real(seq));
    if (calls) {
      json_object_set_new(doc, "tokens_in", json_integer((json_int_t)tin));
      json_object_set_new(doc, "tokens_out", json_integer((json_int_t)tout));
      json_object_set_new(doc, "tokens_unknown", json_boolean(tok_unknown));
      json_object_set_new(doc, "cost", json_real(cost));
      json_object_set_new(doc, "cost_unknown", json_boolean(cost_unknown));
    }
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    size_t show = n <= 60 ? n : 40;
    for (size_t i = 0; i < show; i++) {
      const char *e = orch_step_error(g, i);
      printf("  %-8s %-24s %9.1f ms", orch_status_name(orch_step_status(g, i)),
             orch_step_id(g, i), dur(g, i));
      if (det && det[i] && orch_step_attempts(g, i) > 0)
        print_call(det[i]);
      if (e) { /* one line: a provider's or a tool's message may hold
                  newlines or escape sequences; its first 200 bytes */
        char head[201];
        size_t el = strlen(e), hn = el < 200 ? el : 200;
        while (hn > 0 && hn < el && ((unsigned char)e[hn] & 0xC0) == 0x80)
          hn--; /* not inside a UTF-8 sequence */
        memcpy(head, e, hn);
        head[hn] = '\0';
        fputs("  ", stdout);
        put_clean(head);
      }
      putchar('\n');
    }
    if (show < n) printf("  ... (%zu more steps)\n", n - show);
    printf("%s: %zu passed, %zu failed, %zu skipped of %zu steps\n", status,
           counts[ORCH_PASSED], counts[ORCH_FAILED], counts[ORCH_SKIPPED], n);
    printf("makespan %.1f ms; lower bound %.1f ms; sequential %.1f ms (%.2fx)\n",
           makespan, bound, seq, makespan > 0 ? seq / makespan : 0);
    if (calls)
      printf("tokens %lld in, %lld out%s; cost $%.6f%s\n", tin, tout,
             tok_unknown ? " (some unknown)" : "", cost,
             cost_unknown ? " (some unknown)" : "");
    if (*orch_runtime_session(rt)) printf("session %s\n", orch_runtime_session(rt));
  }
  for (size_t i = 0; det && i < n; i++) json_decref(det[i]);
  free(det);
  report_stats(rt);
  ex = exit_for(rc);
done:
  free(order);
  free(longest);
  orch_graph_free(g);
  orch_runtime_free(rt);
  return ex;
}

/* ---- check, mock-llm, migrate --------------------------------------------- */

static void report(void *ud, const char *file, int line, const char *msg) {
  int *count = ud;
  (*count)++;
  if (line > 0) fprintf(stderr, "%s:%d: %s\n", file, line, msg);
  else fprintf(stderr, "%s: %s\n", file, msg);
}

static int cmd_check(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "");
  if (ex) return ex;
  orch_runtime *rt = NULL;
  if ((ex = open_runtime(&o, &rt))) return ex;
  int count = 0;
  /* the directory checked: the one named, else the runtime's (./scripts,
   * the installed ones or the build tree's) */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", o.file ? o.file : orch_runtime_scripts_dir(rt));
  int rc = orch_scripts_check(rt, o.file, report, &count);
  orch_runtime_free(rt);
  if (rc < 0) {
    fprintf(stderr, "orchestrate: check %s: %s\n", dir, orch_strerror(rc));
    return exit_for(rc);
  }
  if (rc > 0) {
    fprintf(stderr, "%d script(s) failed the check\n", rc);
    return EX_DATAERR;
  }
  printf("%s: all scripts compile and pass their self-checks\n", dir);
  return EX_OK;
}

static volatile sig_atomic_t stop_serving;
static void on_stop(int sig) { (void)sig; stop_serving = 1; }

static int cmd_mock(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "port host");
  if (ex) return ex;
  char err[512];
  orch_mock *m = NULL;
  const char *host = o.host ? o.host : "127.0.0.1";
  int rc = orch_mock_start(&m, host, o.port, err, sizeof err);
  if (rc) {
    fprintf(stderr, "orchestrate: mock-llm: %s\n", err);
    return EX_SOFTWARE;
  }
  printf("mock LLM listening on http://%s:%d (OpenAI: OPENAI_BASE_URL=http://%s:%d/v1, "
         "Anthropic: ANTHROPIC_BASE_URL=http://%s:%d)\n",
         host, orch_mock_port(m), host, orch_mock_port(m), host, orch_mock_port(m));
  fflush(stdout);
  signal(SIGINT, on_stop);
  signal(SIGTERM, on_stop);
  while (!stop_serving) pause();
  orch_mock_free(m);
  return EX_OK;
}

static void report_migration(void *ud, const char *name, int applied,
                             const char *msg) {
  (void)ud;
  (void)applied;
  printf("%-40s %s\n", name, msg);
}

/* The store status and migrate work on: the one run and ask record into
 * (--db, else ORCH_DB, else the config's store.url, else
 * sqlite:orchestrate.db). */
static int store_of(const opts *o, const char *cmd, char *out, size_t outlen) {
  orch_runtime *rt = NULL;
  int ex = open_runtime(o, &rt);
  if (ex) return ex;
  const char *url = orch_runtime_store_url(rt);
  if (url) snprintf(out, outlen, "%s", url);
  orch_runtime_free(rt);
  if (!url) {
    fprintf(stderr, "orchestrate: %s: no store to read (--db none)\n", cmd);
    return EX_USAGE;
  }
  return 0;
}

static int cmd_migrate(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "db status");
  if (ex) return ex;
  char db[2048];
  if ((ex = store_of(&o, "migrate", db, sizeof db))) return ex;
  char err[1024];
  int rc = orch_migrate(db, o.status_only, report_migration, NULL, err, sizeof err);
  if (rc) {
    fprintf(stderr, "orchestrate: migrate: %s\n", err);
    return exit_for(rc);
  }
  return EX_OK;
}

static void print_levels(void *ud, const orch_graph *g) {
  (void)ud;
  size_t n = orch_graph_size(g), nl = orch_graph_levels(g);
  size_t *order = by_level(g), k = 0;
  printf("plan: %zu tasks and the answer, %zu levels\n", n - 1, nl);
  for (size_t l = 0; order && l < nl; l++) {
    printf("  level %zu:", l);
    for (; k < n && orch_step_level(g, order[k]) == l; k++)
      printf(" %s", orch_step_id(g, order[k]));
    printf("\n");
  }
  free(order);
  fflush(stdout);
}

static bool env_set(const char *name) {
  const char *v = getenv(name);
  return v && *v;
}

static int cmd_ask(int argc, char **argv) {
  opts o = {0};
  o.plan = -1;
  int ex = parse_opts(argc, argv, &o, "json plan workers max-parallel db");
  if (ex) return ex;
  if (!o.file) return usage_error("ask needs a REQUEST (in quotes)%s", "");
  const char *q = o.file;
  while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
  if (!*q) return usage_error("ask needs a REQUEST: it is empty%s", "");
  orch_runtime *rt = NULL;
  if ((ex = open_runtime(&o, &rt))) return ex;
  if (!o.json && isatty(STDERR_FILENO)) orch_runtime_on_progress(rt, progress, NULL, 100);
  catch_signals(rt);
  char err[2048] = "";
  char *txt = NULL;
  int rc = orch_ask(rt, o.file, o.plan, o.json ? NULL : print_levels, NULL, &txt, err, sizeof err);
  catch_signals(NULL);
  json_error_t je;
  json_t *doc = txt ? json_loads(txt, 0, &je) : NULL;
  if (o.json && txt) printf("%s\n", txt);
  else if (doc) {
    json_t *obs = json_object_get(doc, "observation");
    const char *answer = json_string_value(json_object_get(doc, "answer"));
    if (json_is_true(json_object_get(doc, "planned")) && obs) {
      char *o_txt = json_dumps(obs, JSON_COMPACT | JSON_ENSURE_ASCII * 0);
      printf("<observation>%s</observation>\n", o_txt ? o_txt : "{}");
      free(o_txt);
    }
    if (answer && *answer) { /* the model's text: raw into a file or a
                                pipe, its control bytes escaped on a
                                terminal */
      fputs("<answer>", stdout);
      if (isatty(STDOUT_FILENO)) put_text(answer, true);
      else fputs(answer, stdout);
      fputs("</answer>\n", stdout);
    }
    double mk = json_number_value(json_object_get(doc, "makespan_ms"));
    double sq = json_number_value(json_object_get(doc, "sequential_ms"));
    if (mk > 0)
      printf("tasks took %.0f ms in parallel against %.0f ms one after another (%.2fx)\n",
             mk, sq, sq / mk);
    printf("tokens %lld in, %lld out%s; cost $%.6f%s; session %s\n",
           (long long)json_integer_value(json_object_get(doc, "tokens_in")),
           (long long)json_integer_value(json_object_get(doc, "tokens_out")),
           json_is_true(json_object_get(doc, "tokens_unknown")) ? " (some unknown)" : "",
           json_number_value(json_object_get(doc, "cost")),
           json_is_true(json_object_get(doc, "cost_unknown")) ? " (some unknown)" : "",
           json_string_value(json_object_get(doc, "session")));
  }
  if (rc) fprintf(stderr, "orchestrate: ask: %s\n", err);
  if (rc && rc != ORCH_ECANCELED && !env_set("OPENAI_BASE_URL") &&
      !env_set("OPENAI_API_KEY") && !env_set("ANTHROPIC_API_KEY"))
    fprintf(stderr,
            "orchestrate: hint: OPENAI_BASE_URL, OPENAI_API_KEY and "
            "ANTHROPIC_API_KEY are all unset, so the tiers are the config's "
            "or the defaults (README, \"Configuration\"). For a dry run "
            "against the bundled mock:\n"
            "  orchestrate mock-llm --port 8000 &\n"
            "  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 orchestrate ask "
            "\"...\"\n");
  json_decref(doc);
  orch_free(txt);
  orch_runtime_free(rt);
  return exit_for(rc);
}

static int cmd_status(int argc, char **argv) {
  opts o = {0};
  int ex = parse_opts(argc, argv, &o, "json db");
  if (ex) return ex;
  char db[2048];
  if ((ex = store_of(&o, "status", db, sizeof db))) return ex;
  char err[1024];
  char *txt = NULL;
  int rc = orch_status_json(db, o.file, &txt, err, sizeof err);
  if (rc) {
    fprintf(stderr, "orchestrate: status: %s\n", err);
    return rc == ORCH_ENOTFOUND ? EX_DATAERR : exit_for(rc);
  }
  if (o.json) {
    printf("%s\n", txt);
    orch_free(txt);
    return EX_OK;
  }
  json_error_t je;
  json_t *doc = json_loads(txt, 0, &je);
  orch_free(txt);
  if (!doc) return EX_SOFTWARE;
  json_t *one = json_object_get(doc, "session");
  json_t *list = json_object_get(doc, "active");
  size_t i;
  json_t *s;
  if (one) {
    list = json_array();
    json_array_append(list, one);
  } else {
    json_incref(list);
    printf("active sessions: %zu\n", json_array_size(list));
  }
  json_array_foreach(list, i, s) {
    printf("%s  %-9s %3.0f%%  total %lld, passed %lld, failed %lld, pending %lld\n",
           json_string_value(json_object_get(s, "session_id")),
           json_string_value(json_object_get(s, "status")),
           json_number_value(json_object_get(s, "progress_pct")),
           (long long)json_integer_value(json_object_get(s, "total")),
           (long long)json_integer_value(json_object_get(s, "passed")),
           (long long)json_integer_value(json_object_get(s, "failed")),
           (long long)json_integer_value(json_object_get(s, "pending")));
  }
  json_decref(list);
  json_t *refused = json_object_get(doc, "scripts_refused");
  if (json_array_size(refused)) {
    printf("scripts refused by a runtime (the previous version keeps serving "
           "there):\n");
    json_array_foreach(refused, i, s) {
      /* text from the store: one line each, no control bytes reach the
       * terminal (a newline in a message, or an escape sequence) */
      const char *rtm = json_string_value(json_object_get(s, "runtime"));
      printf("  %s  ", json_string_value(json_object_get(s, "at")));
      put_clean(json_string_value(json_object_get(s, "file")));
      printf(" (runtime ");
      put_clean(rtm ? rtm : "?");
      printf(", generation %lld): ",
             (long long)json_integer_value(json_object_get(s, "generation")));
      put_clean(json_string_value(json_object_get(s, "error")));
      putchar('\n');
    }
  }
  if (!one) {
    /* What a reload of the scripts would say now. */
    orch_runtime *rt = NULL;
    if (orch_runtime_new(&rt, o.config, NULL, 0) == ORCH_OK) {
      int bad = 0;
      int rc2 = orch_scripts_check(rt, NULL, report, &bad);
      if (rc2 == 0) printf("scripts: all compile and pass their self-checks\n");
      else if (rc2 > 0) printf("scripts: %d failing (above); a running runtime keeps their last good version\n", rc2);
      orch_runtime_free(rt);
    }
  }
  json_t *today = json_object_get(doc, "today");
  if (today) {
    const char *k;
    json_t *v;
    printf("today:");
    json_object_foreach(today, k, v) printf(" %s %lld", k, (long long)json_integer_value(v));
    printf("\n");
  }
  json_decref(doc);
  return EX_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return EX_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage, stdout);
    return EX_OK;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("orchestrate %s\n", orch_version());
    return EX_OK;
  }
  for (int i = 2; i < argc; i++)
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return EX_OK;
    }
  if (strcmp(cmd, "plan") == 0) return cmd_plan(argc - 2, argv + 2);
  if (strcmp(cmd, "run") == 0) return cmd_run(argc - 2, argv + 2);
  if (strcmp(cmd, "check") == 0) return cmd_check(argc - 2, argv + 2);
  if (strcmp(cmd, "mock-llm") == 0) return cmd_mock(argc - 2, argv + 2);
  if (strcmp(cmd, "migrate") == 0) return cmd_migrate(argc - 2, argv + 2);
  if (strcmp(cmd, "status") == 0) return cmd_status(argc - 2, argv + 2);
  if (strcmp(cmd, "ask") == 0) return cmd_ask(argc - 2, argv + 2);
  return usage_error("unknown command '%s'", cmd);
}
