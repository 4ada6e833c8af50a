/* test_store.c: the store against real databases: SQLite in a temporary
 * directory, and the throwaway PostgreSQL of test/pg.sh (ORCH_TEST_PG;
 * tests that need it pass trivially with a note when it is unset). The
 * outage test starts its own server so it can stop it. Tests whose names
 * contain "slow" are skipped when ORCH_SKIP_SLOW=1 (the sanitizer pass). */
#include "test.h"

#include "orch_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DOWN_PG "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1"

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool skip_slow(const char *name) {
  const char *e = getenv("ORCH_SKIP_SLOW");
  if (e && *e == '1') {
    printf("  (skipping %s: ORCH_SKIP_SLOW=1)\n", name);
    return true;
  }
  return false;
}

static const char *test_pg(void) {
  const char *u = getenv("ORCH_TEST_PG");
  if (!u || !*u) {
    printf("  (no ORCH_TEST_PG: PostgreSQL part skipped)\n");
    return NULL;
  }
  return u;
}

static char *tmpdir_new(void) {
  char *d = strdup("/tmp/orch-store-XXXXXX");
  if (!mkdtemp(d)) {
    free(d);
    return NULL;
  }
  return d;
}

static void rm_rf(const char *d) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd) != 0) { /* best effort */
  }
}

static void uuid_new(char out[37]) {
  unsigned char b[16];
  FILE *f = fopen("/dev/urandom", "rb");
  if (!f || fread(b, 1, 16, f) != 16) {
    for (int i = 0; i < 16; i++) b[i] = (unsigned char)rand();
  }
  if (f) fclose(f);
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
           b[11], b[12], b[13], b[14], b[15]);
}

/* Runs a one-number query ($1 = arg) directly against the database. */
static long db_count(const char *url, const char *sql, const char *arg) {
  long n = -1;
  if (strncmp(url, "sqlite:", 7) == 0) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open(url + 7, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
      if (arg) sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
      if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    } else {
      fprintf(stderr, "  sqlite: %s\n", sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
  }
  PGconn *c = PQconnectdb(url);
  const char *pv[1] = {arg};
  PGresult *r = PQexecParams(c, sql, arg ? 1 : 0, NULL, pv, NULL, NULL, 0);
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    n = atol(PQgetvalue(r, 0, 0));
  else
    fprintf(stderr, "  pg: %s\n", PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return n;
}

static orch__rec step_rec(const char *sid, const char *id, int idx,
                          const char *status, const char *output) {
  orch__rec r;
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_STEP;
  r.u.step.session_id = sid;
  r.u.step.step_id = id;
  r.u.step.step_index = idx;
  r.u.step.kind = "shell";
  r.u.step.deps_json = idx ? "[\"s0\"]" : "[]";
  r.u.step.params_json = "{\"id\":\"x\",\"kind\":\"shell\",\"cmd\":\"true\"}";
  r.u.step.status = status;
  r.u.step.attempts = 1;
  r.u.step.output = output;
  r.u.step.tokens_in = ORCH__NULL_I64;
  r.u.step.tokens_out = 42;
  r.u.step.cost = NAN;
  r.u.step.generation = 3;
  r.u.step.started_ms = orch__store_wall_ms();
  return r;
}

static orch__rec explore_rec(const char *jr, const char *task_type) {
  orch__rec r;
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_EXPLORATION;
  r.u.exploration.jr_type = jr;
  r.u.exploration.task_type = task_type;
  r.u.exploration.novelty_score = 0.5;
  r.u.exploration.curiosity_bonus = NAN;
  r.u.exploration.task_outcome = "passed";
  return r;
}

/* ---- pure functions ------------------------------------------------------ */

TEST(store_step_hash_is_sha256_of_the_key) {
  char h[65];
  orch__store_step_hash("t1", 3, "edit", "a.c", h);
  ASSERT_STR_EQ(h,
                "1bd564c8af3f7021424c1a9a5ef8195be6fe292adc7ec3d9a268bfcdc5183f2c");
}

TEST(store_rejects_bad_addresses_and_records) {
  orch__store *s = NULL;
  char err[256] = "";
  ASSERT_EQ(orch__store_open(&s, "mysql://x", NULL, err, sizeof err),
            ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "sqlite:PATH");
  char *d = tmpdir_new();
  char url[600];
  snprintf(url, sizeof url, "sqlite:%s/r.db", d);
  ASSERT_EQ(orch__store_open(&s, url, NULL, err, sizeof err), ORCH_OK);
  orch__rec r = step_rec("not-a-uuid", "a", 0, "passed", NULL);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_EINVAL);
  char sid[37];
  orch__store_uuid(sid);
  ASSERT_EQ(strlen(sid), 36);
  ASSERT_EQ(sid[14], '4');
  r = step_rec(sid, "ok", 0, "passed", NULL);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  r = step_rec(sid, NULL, 0, "passed", NULL);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_EINVAL);
  /* a second store on the same database takes a spool of its own... */
  orch__store *s2 = NULL, *s3 = NULL;
  int rc2 = orch__store_open(&s2, url, NULL, err, sizeof err);
  /* ...but a spool named explicitly and in use is refused, not corrupted */
  char spool[600];
  snprintf(spool, sizeof spool, "%s/r.db.spool", d);
  orch__store_opts o = {0};
  o.spool_path = spool;
  int rc3 = orch__store_open(&s3, url, &o, err, sizeof err);
  orch__store_close(s3);
  orch__store_close(s2);
  orch__store_close(s);
  ASSERT_EQ(rc2, ORCH_OK);
  ASSERT_EQ(rc3, ORCH_ESTATE);
  ASSERT_CONTAINS(err, "in use");
  rm_rf(d);
  free(d);
}

/* ---- migrations ---------------------------------------------------------- */

typedef struct mig_log {
  int applied_now, applied, pending;
} mig_log;

static void mig_report(void *ud, const char *file, int line, const char *msg) {
  mig_log *l = ud;
  (void)file;
  (void)line;
  if (!strcmp(msg, "applied now")) l->applied_now++;
  else if (!strcmp(msg, "applied")) l->applied++;
  else if (!strcmp(msg, "pending")) l->pending++;
}

static void migrate_twice(const char *url, bool fresh) {
  char err[512] = "";
  mig_log a = {0}, b = {0}, c = {0};
  ASSERT_EQ(orch_migrate(url, 0, mig_report, &a, err, sizeof err), ORCH_OK);
  if (fresh) ASSERT(a.applied_now >= 1);
  ASSERT_EQ(a.pending, 0);
  ASSERT_EQ(orch_migrate(url, 0, mig_report, &b, err, sizeof err), ORCH_OK);
  ASSERT_EQ(b.applied_now, 0);
  ASSERT_EQ(b.applied, a.applied + a.applied_now);
  ASSERT_EQ(orch_migrate(url, 1, mig_report, &c, err, sizeof err), ORCH_OK);
  ASSERT_EQ(c.pending, 0);
  ASSERT_EQ(c.applied, b.applied);
  long n = db_count(url, "SELECT count(*) FROM orch_schema_migrations", NULL);
  ASSERT_EQ(n, b.applied);
}

TEST(store_sqlite_migrations_twice_are_a_noop) {
  char *d = tmpdir_new();
  char url[600];
  snprintf(url, sizeof url, "sqlite:%s/m.db", d);
  mig_log st = {0};
  char err[256];
  /* --status only reads: no database yet is an error, not a new file */
  ASSERT_EQ(orch_migrate(url, 1, mig_report, &st, err, sizeof err), ORCH_ENOTFOUND);
  FILE *f = fopen(url + 7, "w"); /* an empty file is an empty database */
  ASSERT(f != NULL);
  fclose(f);
  ASSERT_EQ(orch_migrate(url, 1, mig_report, &st, err, sizeof err), ORCH_OK);
  ASSERT(st.pending >= 1);
  migrate_twice(url, true);
  rm_rf(d);
  free(d);
}

/* status and migrate --status only read: a typo'd path is reported, not
 * created as an empty database. */
TEST(store_sqlite_read_only_uses_do_not_create_a_database) {
  char *d = tmpdir_new();
  char url[700], path[600], err[512] = "";
  snprintf(path, sizeof path, "%s/typo.db", d);
  snprintf(url, sizeof url, "sqlite:%s", path);
  char *json = NULL;
  ASSERT(orch__store_status_json(url, NULL, &json, err, sizeof err) != ORCH_OK);
  ASSERT(json == NULL);
  ASSERT_CONTAINS(err, "no such database: ");
  ASSERT_CONTAINS(err, path);
  ASSERT(access(path, F_OK) != 0);
  err[0] = '\0';
  ASSERT(orch_migrate(url, 1, NULL, NULL, err, sizeof err) != ORCH_OK);
  ASSERT_CONTAINS(err, "no such database: ");
  ASSERT(access(path, F_OK) != 0);
  /* migrate proper creates it; then both read-only uses work */
  ASSERT_EQ(orch_migrate(url, 0, NULL, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(access(path, F_OK), 0);
  ASSERT_EQ(orch_migrate(url, 1, NULL, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_status_json(url, NULL, &json, err, sizeof err), ORCH_OK);
  ASSERT_CONTAINS(json, "\"active\"");
  free(json);
  rm_rf(d);
  free(d);
}

TEST(store_pg_migrations_twice_are_a_noop) {
  const char *pg = test_pg();
  if (!pg) return;
  migrate_twice(pg, false);
}

/* ---- conformance: the same checks on both backends ----------------------- */

static const char *nasty[] = {
    "it's",
    "semi;colon",
    "'); DROP TABLE orch_run_steps; --",
    "\"double\" \\back\\slash\ttab\nnewline\r",
    "unicode: \xc3\xa9\xe2\x9c\x93 \xf0\x9f\x9a\x80",
    "$1 ?1 %s %n",
};

typedef struct seen {
  int n, passed;
  bool ok;
  char first_status[32];
} seen;

static int on_row(void *ud, const orch__step_row *r) {
  seen *s = ud;
  size_t i = (size_t)s->n;
  s->n++;
  if (!strcmp(r->status, "passed")) s->passed++;
  if (i < ORCH__ARRAY_LEN(nasty)) {
    if (strcmp(r->step_id, nasty[i]) || !r->output ||
        strcmp(r->output, nasty[i]) || (int)i != r->step_index ||
        r->generation != 3 || r->tokens_in != ORCH__NULL_I64 ||
        r->tokens_out != 42 || !isnan(r->cost) || r->attempts != 1 ||
        !strstr(r->params_json, "\"kind\"")) {
      fprintf(stderr, "  row %zu differs: id=[%s] out=[%s]\n", i, r->step_id,
              r->output ? r->output : "(null)");
      s->ok = false;
    }
  }
  return 0;
}

static int count_row(void *ud, const orch__step_row *r) {
  (void)r;
  (*(int *)ud)++;
  return 0;
}

static int on_active(void *ud, const orch__session_info *si) {
  const char *want = ud;
  if (!strcmp(si->session_id, want)) return 7;
  return 0;
}

typedef struct refusals {
  const char *want_b, *want_err;
  int mine;
  bool ok;
} refusals;

/* Counts the refusals of this run's files (other runs share the database). */
static int on_refusal(void *ud, const orch__script_refusal *r) {
  refusals *rf = ud;
  if (!r->file || !strstr(r->file, "/s/")) return 0;
  if (strncmp(r->file, rf->want_b, 40) != 0) return 0; /* "/s/<sid>" */
  rf->mine++;
  rf->ok = !strcmp(r->file, rf->want_b) && r->error &&
           !strcmp(r->error, rf->want_err) && r->generation == 2 &&
           r->runtime && !strcmp(r->runtime, "host:1") && r->created_at[0];
  return 0;
}

static void conformance(const char *url, const char *spool) {
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  char sid[37], task[64];
  uuid_new(sid);
  snprintf(task, sizeof task, "task-%s", sid);

  orch__rec r;
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_SESSION;
  r.u.session.session_id = sid;
  r.u.session.task_id = task;
  r.u.session.jr_name = "jr-'quoted'";
  r.u.session.model_tier = "fast";
  r.u.session.status = "running";
  r.u.session.steps_json = "[{\"id\":\"a\"},{\"id\":\"b\"},{\"id\":\"c\"},"
                           "{\"id\":\"d\"},{\"id\":\"e\"},{\"id\":\"f\"},"
                           "{\"id\":\"g\"}]";
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  size_t nn = ORCH__ARRAY_LEN(nasty);
  for (size_t i = 0; i < nn; i++) {
    r = step_rec(sid, nasty[i], (int)i, "in_progress", NULL);
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
    /* the later, full record replaces the earlier one */
    r = step_rec(sid, nasty[i], (int)i, i % 2 ? "failed" : "passed", nasty[i]);
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  /* rewards: the same key twice is one row, with the content hash */
  for (int k = 0; k < 2; k++) {
    memset(&r, 0, sizeof r);
    r.type = ORCH__REC_REWARD;
    r.u.reward.task_id = task;
    r.u.reward.step_number = 1;
    r.u.reward.step_type = "edit";
    r.u.reward.target_file = "a.c";
    r.u.reward.execution_result = k ? "success" : "pending";
    r.u.reward.implicit_reward = 0.75;
    r.u.reward.verified_outcome = NAN;
    r.u.reward.execution_time_ms = 12;
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_LLM_CALL;
  r.u.llm_call.session_id = sid;
  r.u.llm_call.step_id = "a";
  r.u.llm_call.attempt = 1;
  r.u.llm_call.provider = "openai";
  r.u.llm_call.model = "m";
  r.u.llm_call.http_status = 200;
  r.u.llm_call.outcome = "ok";
  r.u.llm_call.tokens_in = 10;
  r.u.llm_call.tokens_out = ORCH__NULL_I64;
  r.u.llm_call.cost = 0.001;
  r.u.llm_call.latency_ms = 12.5;
  r.u.llm_call.started_ms = orch__store_wall_ms();
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  r = explore_rec("jr-x", task);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK); /* two log rows */
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_PARTICIPATION;
  r.u.participation.task_id = task;
  r.u.participation.jr_type = "jr-x";
  r.u.participation.joined_ms = 1700000000123;
  r.u.participation.contribution_score = 0.5;
  r.u.participation.handoff_to = "jr-y";
  r.u.participation.context_preserved_score = NAN;
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK); /* same key: one row */
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_COOPERATION;
  r.u.cooperation.jr_type = task; /* unique per run */
  r.u.cooperation.period_start_ms = 1700000000000;
  r.u.cooperation.period_end_ms = 1700086400000;
  r.u.cooperation.tasks_participated = 3;
  r.u.cooperation.avg_context_preservation = NAN;
  r.u.cooperation.cooperation_score = 0.9;
  r.u.cooperation.group_reward_total = NAN;
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);

  /* script events: file A refused then loaded, file B (nasty) refused */
  char fa[128], fb[128];
  snprintf(fa, sizeof fa, "/s/%s/a.lua", sid);
  snprintf(fb, sizeof fb, "/s/%s/%s.lua", sid, nasty[2]);
  const char *ev[][3] = {{fa, "refused", "a.lua:1: bad"},
                         {fb, "refused", nasty[3]},
                         {fa, "loaded", NULL}};
  for (size_t i = 0; i < 3; i++) {
    memset(&r, 0, sizeof r);
    r.type = ORCH__REC_SCRIPT_EVENT;
    r.u.script_event.runtime = "host:1";
    r.u.script_event.module = "routing.x";
    r.u.script_event.file = ev[i][0];
    r.u.script_event.generation = (int32_t)i + 1;
    r.u.script_event.outcome = ev[i][1];
    r.u.script_event.error = ev[i][2];
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_SCRIPT_EVENT; /* no file: refused by the store API */
  r.u.script_event.module = "routing.x";
  r.u.script_event.outcome = "loaded";
  ASSERT_EQ(orch__store_put(s, &r), ORCH_EINVAL);

  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  ASSERT_EQ(st.records_dropped_total, 0);
  ASSERT_EQ(st.accepted, 1 + 2 * nn + 2 + 1 + 2 + 2 + 1 + 3);
  ASSERT_EQ(st.written, st.accepted);
  ASSERT_EQ(st.connected, 1);

  seen sn = {.ok = true};
  ASSERT_EQ(orch__store_session_steps(s, sid, on_row, &sn, err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(sn.n, (int)nn);
  ASSERT(sn.ok);
  ASSERT_EQ(sn.passed, (int)(nn + 1) / 2);

  orch__session_info si;
  ASSERT_EQ(orch__store_session_summary(s, sid, &si, err, sizeof err), ORCH_OK);
  ASSERT_STR_EQ(si.status, "running");
  ASSERT_STR_EQ(si.jr_name, "jr-'quoted'");
  ASSERT_EQ(si.total, 7); /* the steps JSON has 7, 6 recorded */
  ASSERT_EQ(si.passed, 3);
  ASSERT_EQ(si.failed, 3);
  ASSERT_EQ(si.pending, 1);
  ASSERT(si.progress_pct > 85.0 && si.progress_pct < 86.0);
  orch__session_info_deinit(&si);
  char other[37];
  uuid_new(other);
  ASSERT_EQ(orch__store_session_summary(s, other, &si, err, sizeof err),
            ORCH_ENOTFOUND);
  orch__session_info_deinit(&si);
  ASSERT_EQ(orch__store_active_sessions(s, on_active, sid, err, sizeof err), 7);
  orch__store_today t;
  ASSERT_EQ(orch__store_today_counts(s, &t, err, sizeof err), ORCH_OK);
  ASSERT(t.sessions >= 1 && t.steps_passed >= 3);

  /* every table holds what was sent, once */
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM jr_step_rewards WHERE task_id = $1 "
                          "AND execution_result = 'success' AND length(step_content_hash) = 64",
                     task), 1);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_llm_calls WHERE session_id = $1 "
                          "AND tokens_out IS NULL AND http_status = 200",
                     sid), 1);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM jr_exploration_log WHERE task_type = $1 "
                          "AND curiosity_bonus IS NULL",
                     task), 2);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM magrpo_task_participation WHERE "
                          "task_id = $1 AND handoff_to = 'jr-y'",
                     task), 1);
  ASSERT_EQ(db_count(url, "SELECT tasks_participated FROM magrpo_cooperation_metrics "
                          "WHERE jr_type = $1",
                     task), 3);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps", NULL) >= (long)nn, 1);
  /* only B stands refused (A's latest event is a load) */
  refusals rf = {.want_b = fb, .want_err = nasty[3]};
  ASSERT_EQ(orch__store_script_refusals(s, on_refusal, &rf, err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(rf.mine, 1);
  ASSERT(rf.ok);
  orch__store_close(s);
}

TEST(store_sqlite_conformance_and_injection_round_trip) {
  char *d = tmpdir_new();
  char url[600], spool[600];
  snprintf(url, sizeof url, "sqlite:%s/c.db", d);
  snprintf(spool, sizeof spool, "%s/c.spool", d);
  conformance(url, spool);
  rm_rf(d);
  free(d);
}

TEST(store_pg_conformance_and_injection_round_trip) {
  const char *pg = test_pg();
  if (!pg) return;
  char *d = tmpdir_new();
  char spool[600];
  snprintf(spool, sizeof spool, "%s/c.spool", d);
  conformance(pg, spool);
  rm_rf(d);
  free(d);
}

/* The writer of a role that may only read and write the tables (no CREATE
 * on the schema, as for ordinary roles since PostgreSQL 15) records, once
 * an operator has migrated: connecting checks the migrations without DDL. */
#define DROP_APP_ROLE                                                       \
  "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "          \
  "'orch_app_dml') THEN DROP OWNED BY orch_app_dml; DROP ROLE orch_app_dml; " \
  "END IF; END $$; "

TEST(store_pg_records_with_a_role_without_ddl_rights) {
  const char *pg = test_pg();
  if (!pg) return;
  char err[512] = "";
  ASSERT_EQ(orch_migrate(pg, 0, NULL, NULL, err, sizeof err), ORCH_OK);
  PGconn *c = PQconnectdb(pg);
  ASSERT_EQ(PQstatus(c), CONNECTION_OK);
  PGresult *r = PQexec(
      c, "SET client_min_messages = warning; " DROP_APP_ROLE
         "CREATE ROLE orch_app_dml LOGIN; "
         "REVOKE CREATE ON SCHEMA public FROM PUBLIC; "
         "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
         "public TO orch_app_dml; GRANT USAGE, SELECT ON ALL SEQUENCES IN "
         "SCHEMA public TO orch_app_dml");
  ASSERT_EQ(PQresultStatus(r), PGRES_COMMAND_OK);
  PQclear(r);
  /* the same server, as that role */
  PQconninfoOption *o = PQconninfo(c), *host = NULL, *port = NULL;
  for (PQconninfoOption *i = o; i && i->keyword; i++) {
    if (!strcmp(i->keyword, "host")) host = i;
    if (!strcmp(i->keyword, "port")) port = i;
  }
  char url[256];
  snprintf(url, sizeof url, "postgresql://orch_app_dml@%s:%s/postgres",
           host && host->val ? host->val : "127.0.0.1",
           port && port->val ? port->val : "5432");
  PQconninfoFree(o);
  char *d = tmpdir_new();
  char spool[600];
  snprintf(spool, sizeof spool, "%s/app.spool", d);
  orch__store *s = NULL;
  orch__store_opts so = {0};
  so.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, url, &so, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  for (int i = 0; i < 5; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    orch__rec rec = step_rec(sid, id, i, "passed", "ok");
    ASSERT_EQ(orch__store_put(s, &rec), ORCH_OK);
  }
  int frc = orch__store_flush(s, 5000);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  orch__store_close(s);
  r = PQexec(c, DROP_APP_ROLE);
  PQclear(r);
  PQfinish(c);
  rm_rf(d);
  free(d);
  ASSERT_EQ(frc, ORCH_OK);
  ASSERT_EQ(st.written, 5);
  ASSERT_EQ(st.spooled, 0);
}

/* A row the database refuses is counted and reported; the rest of its batch
 * is written. */
static void bad_rows(const char *url, const char *spool, bool pg) {
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  for (int i = 0; i < 50; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    orch__rec r = step_rec(sid, id, i, "passed", "ok");
    if (i == 25) r.u.step.deps_json = "[not json";
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  /* PostgreSQL: a key longer than its index allows (SQLSTATE 54000) is
   * the row's fault too, not the database's: it must not stop the
   * records behind it (it went to the spool, and from there failed every
   * replay) */
  char *longid = malloc(6001);
  uint32_t x = 2463534242u; /* xorshift: incompressible, as a hash is */
  for (int i = 0; i < 6000; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    longid[i] = (char)('a' + x % 26);
  }
  longid[6000] = '\0';
  if (pg) {
    orch__rec r = step_rec(sid, longid, 50, "passed", "ok");
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
    r = step_rec(sid, "after", 51, "passed", "ok");
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  free(longid);
  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  uint64_t bad = pg ? 2 : 1, good = pg ? 50 : 49;
  ASSERT_EQ(st.rejected, bad);
  ASSERT_EQ(st.records_dropped_total, bad);
  ASSERT_EQ(st.written, good);
  ASSERT_EQ(st.spooled, 0);
  ASSERT_CONTAINS(st.last_drop, "orch_run_steps");
  int n = 0;
  ASSERT_EQ(orch__store_session_steps(s, sid, count_row, &n, err, sizeof err),
            ORCH_OK);
  ASSERT_EQ(n, (int)good);
  orch__store_close(s);
}

/* A step's output or error that is not UTF-8 (a tool's binary or Latin-1
 * output) is recorded with U+FFFD for the bad bytes: PostgreSQL refused the
 * whole record before. */
static int grab_row(void *ud, const orch__step_row *r) {
  char **out = ud;
  out[0] = r->output ? strdup(r->output) : NULL;
  out[1] = r->error ? strdup(r->error) : NULL;
  return 0;
}

static void non_utf8_text(const char *url, const char *spool) {
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  orch__rec r = step_rec(sid, "bin", 0, "failed", "ok\377\376");
  r.u.step.error = "exit 2: bad \377 byte, cut \xC3";
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  char *got[2] = {NULL, NULL};
  ASSERT_EQ(orch__store_session_steps(s, sid, grab_row, got, err, sizeof err),
            ORCH_OK);
  orch__store_close(s);
  ASSERT_EQ(st.rejected, 0);
  ASSERT_EQ(st.written, 1);
  ASSERT(got[0] && got[1]);
  ASSERT_STR_EQ(got[0], "ok\xEF\xBF\xBD\xEF\xBF\xBD");
  ASSERT_STR_EQ(got[1], "exit 2: bad \xEF\xBF\xBD byte, cut \xEF\xBF\xBD");
  free(got[0]);
  free(got[1]);
}

TEST(store_sqlite_keeps_a_non_utf8_output_as_replacement_characters) {
  char *d = tmpdir_new();
  char url[600], spool[600];
  snprintf(url, sizeof url, "sqlite:%s/u.db", d);
  snprintf(spool, sizeof spool, "%s/u.spool", d);
  non_utf8_text(url, spool);
  rm_rf(d);
  free(d);
}

TEST(store_pg_keeps_a_non_utf8_output_as_replacement_characters) {
  const char *pg = test_pg();
  if (!pg) return;
  char *d = tmpdir_new();
  char spool[600];
  snprintf(spool, sizeof spool, "%s/u.spool", d);
  non_utf8_text(pg, spool);
  rm_rf(d);
  free(d);
}

TEST(store_sqlite_counts_a_refused_row_and_keeps_the_batch) {
  char *d = tmpdir_new();
  char url[600], spool[600];
  snprintf(url, sizeof url, "sqlite:%s/b.db", d);
  snprintf(spool, sizeof spool, "%s/b.spool", d);
  bad_rows(url, spool, false);
  rm_rf(d);
  free(d);
}

TEST(store_pg_counts_a_refused_row_and_keeps_the_batch) {
  const char *pg = test_pg();
  if (!pg) return;
  char *d = tmpdir_new();
  char spool[600];
  snprintf(spool, sizeof spool, "%s/b.spool", d);
  bad_rows(pg, spool, true);
  rm_rf(d);
  free(d);
}

/* ---- the spool ---------------------------------------------------------- */

TEST(store_spools_while_down_cuts_a_torn_tail_and_replays_once) {
  char *d = tmpdir_new();
  char down[600], up[600], spool[600];
  snprintf(down, sizeof down, "sqlite:%s/no/such/dir/x.db", d);
  snprintf(up, sizeof up, "sqlite:%s/ok.db", d);
  snprintf(spool, sizeof spool, "%s/s.spool", d);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, down, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  for (int i = 0; i < 3000; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    orch__rec r = step_rec(sid, id, i, "passed", "out");
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  ASSERT_EQ(orch__store_flush(s, 300), ORCH_ETIMEDOUT);
  orch__store_close(s); /* spools the rest, fsyncs */
  struct stat sb;
  ASSERT_EQ(stat(spool, &sb), 0);
  ASSERT(sb.st_size > 3000 * 40);
  /* a torn write: a frame header promising more than follows */
  FILE *f = fopen(spool, "ab");
  ASSERT(f != NULL);
  fwrite("\x40\x00\x00\x00\x12\x34\x56\x78partial", 1, 15, f);
  fclose(f);
  ASSERT_EQ(orch__store_open(&s, up, &o, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  ASSERT_EQ(st.spool_cut_bytes, 15);
  ASSERT_EQ(st.replayed, 3000);
  ASSERT_EQ(st.spool_bytes, 0);
  orch__store_close(s);
  ASSERT_EQ(db_count(up, "SELECT count(*) FROM orch_run_steps WHERE session_id = $1",
                     sid), 3000);
  ASSERT_EQ(stat(spool, &sb), 0);
  ASSERT_EQ(sb.st_size, 0); /* replayed spools are emptied */
  rm_rf(d);
  free(d);
}

TEST(store_full_queue_spills_to_the_spool_without_loss) {
  char *d = tmpdir_new();
  char url[600], spool[600];
  snprintf(url, sizeof url, "sqlite:%s/q.db", d);
  snprintf(spool, sizeof spool, "%s/q.spool", d);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  o.queue_cap = 4;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  for (int i = 0; i < 5000; i++) {
    char tt[32];
    snprintf(tt, sizeof tt, "q%d", i);
    orch__rec r = explore_rec("jr-q", tt);
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  ASSERT_EQ(orch__store_flush(s, 20000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  ASSERT_EQ(st.records_dropped_total, 0);
  ASSERT(st.spooled > 0); /* some went through the spool */
  ASSERT_EQ(st.written + st.replayed, 5000);
  orch__store_close(s);
  ASSERT_EQ(db_count(url, "SELECT count(DISTINCT task_type) FROM jr_exploration_log", NULL),
            5000);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM jr_exploration_log", NULL), 5000);
  rm_rf(d);
  free(d);
}

/* Spool cap reached: records are counted as dropped, reported, no crash. */
static void fill_spool(const char *dir, uint64_t cap, bool expect_write_error) {
  char spool[600];
  snprintf(spool, sizeof spool, "%s/full.spool", dir);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  o.spool_cap = cap;
  ASSERT_EQ(orch__store_open(&s, DOWN_PG, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  char big[2048];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  for (int i = 0; i < 400; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    orch__rec r = step_rec(sid, id, i, "passed", big);
    int rc = orch__store_put(s, &r);
    ASSERT(rc == ORCH_OK || rc == ORCH_ELIMIT);
  }
  /* The writer spools (and drops) in its own time: wait until all 400 are
   * accounted for, up to 10 s. */
  orch__store_stats st;
  for (int waited = 0; waited < 10000; waited += 50) {
    orch__store_flush(s, 50);
    orch__store_stats_get(s, &st);
    if (st.spooled + st.records_dropped_total >= 400) break;
  }
  orch__store_close(s);
  ASSERT(st.records_dropped_total > 0);
  ASSERT(st.spooled > 0);
  ASSERT_EQ(st.spooled + st.records_dropped_total, 400);
  if (expect_write_error) ASSERT_CONTAINS(st.last_drop, "spool write failed");
  else ASSERT_CONTAINS(st.last_drop, "full");
}

TEST(store_spool_cap_drops_are_counted_and_reported) {
  char *d = tmpdir_new();
  fill_spool(d, 100 * 1024, false);
  rm_rf(d);
  free(d);
}

TEST(store_full_disk_under_the_spool_is_an_error_not_a_crash) {
  char *d = tmpdir_new();
  char mnt[600];
  snprintf(mnt, sizeof mnt, "%s/tmpfs", d);
  mkdir(mnt, 0700);
  if (geteuid() == 0 && mount("tmpfs", mnt, "tmpfs", 0, "size=64k") == 0) {
    fill_spool(mnt, 0, true);
    umount(mnt);
  } else {
    /* not root or no mount: a file-size limit in a child stands in */
    printf("  (tmpfs unavailable: using RLIMIT_FSIZE)\n");
    pid_t pid = fork();
    if (pid == 0) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl = {64 * 1024, 64 * 1024};
      setrlimit(RLIMIT_FSIZE, &rl);
      fill_spool(d, 0, true);
      _exit(orch_test_failed ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  rm_rf(d);
  free(d);
}


/* Two writers at once while the database is down: the second takes
 * PATH.spool.1. A later process holding the default spool replays the
 * numbered one too, at open and while it runs (every 100 ticks), and never
 * touches one that another live process holds. */
static void put_steps(orch__store *s, const char *sid, int n) {
  for (int i = 0; i < n; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    orch__rec r = step_rec(sid, id, i, "passed", "out");
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
}

static off_t file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? sb.st_size : -1;
}

TEST(store_replays_numbered_spools_left_by_concurrent_writers) {
  char *d = tmpdir_new();
  char url[700], dbpath[600], spool1[700], spool2[700];
  snprintf(dbpath, sizeof dbpath, "%s/x.db", d);
  snprintf(url, sizeof url, "sqlite:%s", dbpath);
  snprintf(spool1, sizeof spool1, "%s.spool.1", dbpath);
  snprintf(spool2, sizeof spool2, "%s.spool.2", dbpath);
  unsetenv("ORCH_SPOOL");
  ASSERT_EQ(mkdir(dbpath, 0700), 0); /* a directory: SQLite cannot open it */
  orch__store *a = NULL, *b = NULL, *c = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.flush_ms = 10; /* sweeps every second */
  ASSERT_EQ(orch__store_open(&a, url, &o, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_open(&b, url, &o, err, sizeof err), ORCH_OK);
  char sa[37], sb_[37];
  uuid_new(sa);
  uuid_new(sb_);
  put_steps(a, sa, 50);
  put_steps(b, sb_, 50);
  orch__store_close(a);
  orch__store_close(b);
  off_t size1 = file_size(spool1);
  ASSERT(size1 > 50 * 40);
  char *copy = malloc((size_t)size1);
  FILE *f = fopen(spool1, "rb");
  ASSERT(f && fread(copy, 1, (size_t)size1, f) == (size_t)size1);
  fclose(f);
  ASSERT_EQ(rmdir(dbpath), 0); /* the database is back */

  /* a new process takes the default spool and the stranded .1 */
  ASSERT_EQ(orch__store_open(&c, url, &o, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_flush(c, 10000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(c, &st);
  ASSERT_EQ(st.replayed, 100);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps WHERE session_id = $1",
                     sa), 50);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps WHERE session_id = $1",
                     sb_), 50);
  ASSERT_EQ(file_size(spool1), 0); /* emptied */

  /* .2 held by a live process (here: our own lock) is left alone; once
   * its holder is gone the running store takes it over */
  int fd = open(spool2, O_RDWR | O_CREAT, 0600);
  ASSERT(fd >= 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  ASSERT_EQ(write(fd, copy, (size_t)size1), size1);
  usleep(2500000); /* two sweeps */
  ASSERT_EQ(file_size(spool2), size1);
  close(fd);
  for (int waited = 0; waited < 5000 && file_size(spool2) != 0; waited += 50)
    usleep(50000);
  ASSERT_EQ(orch__store_flush(c, 10000), ORCH_OK);
  orch__store_stats_get(c, &st);
  orch__store_close(c);
  ASSERT_EQ(file_size(spool2), 0);
  ASSERT_EQ(st.replayed, 150); /* the same 50 again: upserts absorb them */
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps WHERE session_id = $1",
                     sb_), 50);
  free(copy);
  rm_rf(d);
  free(d);
}

/* The database is up but the queue spills (every put here: queue_max_bytes
 * 1) and the producer keeps 20-40 KB waiting, never letting the writer
 * (10 records a round) catch up fully. About 4 MB pass through a spool
 * capped at 256 KiB: it must be compacted and its cap judged on the bytes
 * waiting, not on the file size (which grew by every spilled byte until
 * records were dropped at about 1,300). */
TEST(store_spilling_queue_compacts_the_spool_and_drops_nothing) {
  char *d = tmpdir_new();
  char url[600], spool[600];
  snprintf(url, sizeof url, "sqlite:%s/c.db", d);
  snprintf(spool, sizeof spool, "%s/c.spool", d);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  o.queue_max_bytes = 1;
  o.batch = 10;
  o.spool_cap = 256 * 1024;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  const int N = 20000;
  int first_drop = -1;
  off_t max_size = 0;
  uint64_t max_wait = 0;
  char sid[37];
  uuid_new(sid);
  orch__store_stats st;
  for (int i = 0; i < N; i++) {
    char id[32];
    snprintf(id, sizeof id, "c%d", i);
    orch__rec r = step_rec(sid, id, i, "passed", "out");
    if (orch__store_put(s, &r) != ORCH_OK && first_drop < 0) first_drop = i;
    orch__store_stats_get(s, &st);
    if (st.spool_bytes > max_wait) max_wait = st.spool_bytes;
    if (st.spool_bytes < 40 * 1024) continue;
    struct stat sb;
    if (stat(spool, &sb) == 0 && sb.st_size > max_size) max_size = sb.st_size;
    while (st.spool_bytes > 20 * 1024) { /* let the writer replay some */
      usleep(20);
      orch__store_stats_get(s, &st);
    }
  }
  ASSERT_EQ(orch__store_flush(s, 60000), ORCH_OK);
  orch__store_stats_get(s, &st);
  orch__store_close(s);
  printf("  first drop %d, at most %llu bytes waiting, spool file at most "
         "%lld bytes\n",
         first_drop, (unsigned long long)max_wait, (long long)max_size);
  ASSERT_EQ(first_drop, -1);
  ASSERT_EQ(st.records_dropped_total, 0);
  ASSERT_EQ(st.spooled, N);
  ASSERT_EQ(st.replayed, N);
  ASSERT(max_size <= 2 * (off_t)o.spool_cap);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps WHERE session_id = $1",
                     sid), N);
  rm_rf(d);
  free(d);
}

/* A crash in the middle of a compaction leaves the side file with the
 * unreplayed frames and a main file cut anywhere: reopening replays every
 * record (a duplicate is harmless: upserts and log keys absorb it). */
TEST(store_crash_mid_compaction_loses_no_record) {
  char *d = tmpdir_new();
  char down[600], up[600], spool[600], side[700];
  snprintf(down, sizeof down, "sqlite:%s/no/such/dir/x.db", d);
  snprintf(up, sizeof up, "sqlite:%s/ok.db", d);
  snprintf(spool, sizeof spool, "%s/m.spool", d);
  snprintf(side, sizeof side, "%s.compact", spool);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, down, &o, err, sizeof err), ORCH_OK);
  for (int i = 0; i < 2000; i++) {
    char tt[32];
    snprintf(tt, sizeof tt, "m%d", i);
    orch__rec r = explore_rec("jr-m", tt);
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  orch__store_close(s);
  /* the side file holds every frame; the main file was being rewritten
   * when the power went: cut in the middle of a frame */
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", spool, side);
  ASSERT_EQ(system(cmd), 0);
  struct stat sb;
  ASSERT_EQ(stat(spool, &sb), 0);
  ASSERT_EQ(truncate(spool, sb.st_size / 3), 0);
  ASSERT_EQ(orch__store_open(&s, up, &o, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  orch__store_close(s);
  ASSERT_EQ(db_count(up, "SELECT count(DISTINCT task_type) FROM jr_exploration_log", NULL),
            2000);
  ASSERT_EQ(db_count(up, "SELECT count(*) FROM jr_exploration_log", NULL), 2000);
  ASSERT(access(side, F_OK) != 0); /* recovered, then removed */
  ASSERT_EQ(stat(spool, &sb), 0);
  ASSERT_EQ(sb.st_size, 0);
  rm_rf(d);
  free(d);
}
/* ---- spool frames made by hand -------------------------------------------- */

/* A payload as store.c encodes it: [type][ncols], then per column a tag
 * (0 NULL, 1 int64, 2 double, 3 text: u32 length, bytes), little-endian. */
typedef struct pbuf {
  unsigned char b[1024];
  size_t n;
} pbuf;

static void pb_u32(pbuf *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p->b[p->n++] = (unsigned char)(v >> (8 * i));
}
static void pb_text(pbuf *p, const char *s) {
  p->b[p->n++] = 3;
  pb_u32(p, (uint32_t)strlen(s));
  memcpy(p->b + p->n, s, strlen(s));
  p->n += strlen(s);
}
static void pb_int(pbuf *p, int64_t v) {
  p->b[p->n++] = 1;
  pb_u32(p, (uint32_t)(uint64_t)v);
  pb_u32(p, (uint32_t)((uint64_t)v >> 32));
}
static void pb_real(pbuf *p, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  p->b[p->n++] = 2;
  pb_u32(p, (uint32_t)u);
  pb_u32(p, (uint32_t)(u >> 32));
}

static uint32_t crc32c_of(const unsigned char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

/* Appends p as a whole frame (length and CRC right) to f. */
static void frame_put(FILE *f, const pbuf *p) {
  pbuf h = {.n = 0};
  pb_u32(&h, (uint32_t)p->n);
  pb_u32(&h, crc32c_of(p->b, p->n));
  fwrite(h.b, 1, h.n, f);
  fwrite(p->b, 1, p->n, f);
}

/* A jr_exploration_log row (7 columns) with its own rec_key. */
static pbuf explore_frame(const char *key, const char *task_type) {
  pbuf p = {.n = 0};
  p.b[p.n++] = ORCH__REC_EXPLORATION;
  p.b[p.n++] = 7;
  pb_text(&p, key);
  pb_text(&p, "jr-hand");
  pb_text(&p, task_type);
  pb_real(&p, 0.5);
  p.b[p.n++] = 0; /* curiosity_bonus NULL */
  pb_text(&p, "passed");
  pb_int(&p, 1700000000000);
  return p;
}

/* A frame whose CRC is right but whose payload is no record this build
 * reads (a build with other columns or record types wrote it) is dropped
 * alone and counted at replay: the whole frames after it are not cut with
 * it (they were: the open-time check ended the good part at such a frame,
 * and the records behind it were lost). */
/* Opens a store on url with spool, lets it replay the spool, closes it;
 * st gets its counters. */
static int replay_spool(const char *url, const char *spool,
                        orch__store_stats *st) {
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  int rc = orch__store_open(&s, url, &o, err, sizeof err);
  if (rc) {
    fprintf(stderr, "  %s\n", err);
    return rc;
  }
  rc = orch__store_flush(s, 10000);
  orch__store_stats_get(s, st);
  orch__store_close(s);
  return rc;
}

TEST(store_spool_keeps_the_frames_around_an_unreadable_one) {
  char *d = tmpdir_new();
  char up[600], spool[600];
  snprintf(up, sizeof up, "sqlite:%s/ok.db", d);
  snprintf(spool, sizeof spool, "%s/u.spool", d);
  FILE *f = fopen(spool, "wb");
  ASSERT(f != NULL);
  pbuf a = explore_frame("hand-1", "u1");
  frame_put(f, &a);
  pbuf cols = explore_frame("hand-x", "ux");
  cols.b[1] = 8; /* one column more than this build knows */
  frame_put(f, &cols);
  pbuf b = explore_frame("hand-2", "u2");
  frame_put(f, &b);
  pbuf type = {.n = 0};
  type.b[type.n++] = 200; /* a record type this build does not have */
  type.b[type.n++] = 0;
  frame_put(f, &type);
  pbuf c = explore_frame("hand-3", "u3");
  frame_put(f, &c);
  fclose(f);

  orch__store_stats st;
  ASSERT_EQ(replay_spool(up, spool, &st), ORCH_OK);
  ASSERT_EQ(st.spool_cut_bytes, 0);
  ASSERT_EQ(st.replayed, 3);
  ASSERT_EQ(st.rejected, 0);
  ASSERT_EQ(st.records_dropped_total, 2);
  ASSERT_CONTAINS(st.last_drop, "no record this build can read");
  ASSERT_EQ(db_count(up, "SELECT count(*) FROM jr_exploration_log WHERE "
                         "jr_type = 'jr-hand'", NULL),
            3);
  struct stat sb;
  ASSERT_EQ(stat(spool, &sb), 0);
  ASSERT_EQ(sb.st_size, 0);
  rm_rf(d);
  free(d);
}

/* A magrpo_cooperation_metrics row (11 columns) with the given period. */
static pbuf cooperation_frame(const char *jr, int64_t start_ms, int64_t end_ms) {
  pbuf p = {.n = 0};
  p.b[p.n++] = ORCH__REC_COOPERATION;
  p.b[p.n++] = 11;
  pb_text(&p, jr);
  pb_int(&p, start_ms);
  pb_int(&p, end_ms);
  for (int i = 0; i < 3; i++) pb_int(&p, i);
  for (int i = 0; i < 3; i++) pb_real(&p, 0.5);
  pb_int(&p, 1);             /* rec_seq */
  pb_int(&p, 1700000000000); /* created_at */
  return p;
}

/* PostgreSQL: a spooled time far outside what a clock gives (the extremes
 * of int64) is refused as a bad value, the row alone; COPY's formatting
 * overflowed on it (undefined behaviour: v->i - 999, and the millisecond
 * part of INT64_MIN). */
TEST(store_pg_refuses_a_spooled_time_out_of_range_alone) {
  const char *url = test_pg();
  if (!url) return;
  char *d = tmpdir_new();
  char spool[600], jr_ok[64], jr_min[64], jr_max[64];
  snprintf(spool, sizeof spool, "%s/t.spool", d);
  snprintf(jr_ok, sizeof jr_ok, "jr-time-ok-%d", (int)getpid());
  snprintf(jr_min, sizeof jr_min, "jr-time-min-%d", (int)getpid());
  snprintf(jr_max, sizeof jr_max, "jr-time-max-%d", (int)getpid());
  FILE *f = fopen(spool, "wb");
  ASSERT(f != NULL);
  pbuf a = cooperation_frame(jr_min, INT64_MIN + 1, 1700000000000);
  frame_put(f, &a);
  pbuf b = cooperation_frame(jr_ok, 1700000000000, 1700000001000);
  frame_put(f, &b);
  pbuf c = cooperation_frame(jr_max, 1700000000000, INT64_MAX);
  frame_put(f, &c);
  fclose(f);
  orch__store_stats st;
  ASSERT_EQ(replay_spool(url, spool, &st), ORCH_OK);
  ASSERT_EQ(st.replayed, 1);
  ASSERT_EQ(st.rejected, 2);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM magrpo_cooperation_metrics "
                          "WHERE jr_type = $1 AND period_start = "
                          "'2023-11-14 22:13:20+00'", jr_ok),
            1);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM magrpo_cooperation_metrics "
                          "WHERE jr_type LIKE 'jr-time-m%'", NULL),
            0);
  rm_rf(d);
  free(d);
}

/* ---- crash while spooling -------------------------------------------------- */

TEST(store_slow_crash_while_spooling_replays_up_to_the_last_fsync) {
  if (skip_slow("crash while spooling")) return;
  const char *pg = test_pg();
  if (!pg) return;
  char *d = tmpdir_new();
  char spool[600], jr[64];
  snprintf(spool, sizeof spool, "%s/crash.spool", d);
  char sid[37];
  uuid_new(sid);
  snprintf(jr, sizeof jr, "crash-%s", sid);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const int N = 40000;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    orch__store *s = NULL;
    char err[256];
    orch__store_opts o = {0};
    o.spool_path = spool;
    if (orch__store_open(&s, DOWN_PG, &o, err, sizeof err) != ORCH_OK) _exit(2);
    for (int i = 0;; i++) {
      char tt[32];
      snprintf(tt, sizeof tt, "%d", i);
      orch__rec r = explore_rec(jr, tt);
      orch__store_put(s, &r);
      if (i == N - 1) {
        /* wait until the first N are spooled and fsync'd, then say so */
        orch__store_stats st;
        do {
          usleep(1000);
          orch__store_stats_get(s, &st);
        } while (st.spooled < (uint64_t)N);
        usleep(200000); /* > flush_ms: the writer has fsync'd */
        if (write(fds[1], "r", 1) != 1) _exit(3);
      }
      if (i > N && i % 500 == 0) usleep(100);
    }
  }
  close(fds[1]);
  char c;
  ASSERT_EQ(read(fds[0], &c, 1), 1);
  usleep(50000); /* more records in flight */
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  close(fds[0]);
  /* and a torn tail, as a power loss mid-write would leave */
  FILE *f = fopen(spool, "ab");
  ASSERT(f != NULL);
  fwrite("\x10\x00\x00\x00\x00\x00\x00\x00\x01\x02", 1, 10, f);
  fclose(f);

  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  ASSERT_EQ(orch__store_open(&s, pg, &o, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch__store_flush(s, 60000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  orch__store_close(s);
  ASSERT(st.spool_cut_bytes >= 10);
  ASSERT(st.replayed >= (uint64_t)N);
  long rows = db_count(pg, "SELECT count(*) FROM jr_exploration_log WHERE jr_type = $1", jr);
  long distinct = db_count(pg, "SELECT count(DISTINCT task_type) FROM jr_exploration_log "
                               "WHERE jr_type = $1", jr);
  long below = db_count(pg, "SELECT count(*) FROM jr_exploration_log WHERE jr_type = $1 "
                            "AND task_type::int < 40000", jr);
  printf("  spooled before the kill and replayed: %ld rows (cut %llu bytes)\n",
         rows, (unsigned long long)st.spool_cut_bytes);
  ASSERT_EQ(rows, (long)st.replayed);
  ASSERT_EQ(distinct, rows); /* zero duplicates */
  ASSERT_EQ(below, N);       /* everything up to the last fsync */
  rm_rf(d);
  free(d);
}

/* ---- outage: stop PostgreSQL mid-run for 10 s ------------------------------ */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static int pg_ctl(const char *verb, const char *dir, char *url, size_t urllen) {
  const char *sh = getenv("ORCH_PG_SH");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s %s '%s' 2>&1", sh ? sh : "test/pg.sh", verb, dir);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  char line[512] = "";
  if (url) url[0] = '\0';
  while (fgets(line, sizeof line, p))
    if (url && !strncmp(line, "postgresql://", 13)) {
      line[strcspn(line, "\n")] = '\0';
      snprintf(url, urllen, "%s", line);
    }
  return pclose(p);
}

TEST(store_slow_pg_outage_keeps_every_record_once_and_never_blocks) {
  if (skip_slow("outage")) return;
  if (access("test/pg.sh", X_OK) != 0 && !getenv("ORCH_PG_SH")) {
    printf("  (test/pg.sh not found from here: skipped)\n");
    return;
  }
  char *d = tmpdir_new();
  char pgdir[600], url[512], spool[600];
  snprintf(pgdir, sizeof pgdir, "%s/pg", d);
  snprintf(spool, sizeof spool, "%s/outage.spool", d);
  ASSERT_EQ(pg_ctl("start", pgdir, url, sizeof url), 0);
  ASSERT(url[0]);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  o.backoff_max_ms = 1000;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  const int N = 20000; /* 10,000 step records + 10,000 log records */
  int64_t *lat = calloc((size_t)N, sizeof *lat);
  int64_t t0 = now_ns();
  bool stopped = false, restarted = false;
  int64_t stop_at = 0;
  for (int i = 0; i < N; i++) {
    /* spread over ~14 s: stop at 2 s, start again 10 s later */
    int64_t due = t0 + (int64_t)i * 14000000000LL / N;
    int64_t now;
    while ((now = now_ns()) < due) usleep(200);
    if (!stopped && now - t0 > 2000000000LL) {
      ASSERT_EQ(pg_ctl("stop", pgdir, NULL, 0), 0);
      stopped = true;
      stop_at = now_ns();
    }
    if (stopped && !restarted && now_ns() - stop_at > 10000000000LL) {
      ASSERT_EQ(pg_ctl("start", pgdir, NULL, 0), 0);
      restarted = true;
    }
    char id[32];
    snprintf(id, sizeof id, "%d", i / 2);
    orch__rec r = (i % 2) ? explore_rec(sid, id)
                          : step_rec(sid, id, i / 2, "passed", "out");
    int64_t a = now_ns();
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
    lat[i] = now_ns() - a;
  }
  if (!restarted) {
    while (now_ns() - stop_at < 10000000000LL) usleep(10000);
    ASSERT_EQ(pg_ctl("start", pgdir, NULL, 0), 0);
  }
  ASSERT_EQ(orch__store_flush(s, 60000), ORCH_OK);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  orch__store_close(s);
  qsort(lat, (size_t)N, sizeof *lat, cmp_i64);
  printf("  put latency: p50 %.1f us, p99 %.1f us, max %.1f us; spooled %llu, "
         "replayed %llu, written %llu\n",
         lat[N / 2] / 1e3, lat[N * 99 / 100] / 1e3, lat[N - 1] / 1e3,
         (unsigned long long)st.spooled, (unsigned long long)st.replayed,
         (unsigned long long)st.written);
  long steps = db_count(url, "SELECT count(*) FROM orch_run_steps WHERE "
                            "session_id = $1::uuid", sid);
  long logs = db_count(url, "SELECT count(*) FROM jr_exploration_log WHERE "
                            "jr_type = $1", sid);
  long distinct = db_count(url, "SELECT count(DISTINCT task_type) FROM "
                                "jr_exploration_log WHERE jr_type = $1", sid);
  int64_t max_ns = lat[N - 1], p99_ns = lat[N * 99 / 100];
  free(lat);
  /* the server goes before any assertion can return: a failing run must
   * not leave it behind */
  pg_ctl("stop", pgdir, NULL, 0);
  rm_rf(d);
  free(d);
  ASSERT(st.spooled > 0);
  ASSERT_EQ(st.records_dropped_total, 0);
  ASSERT_EQ(st.written + st.replayed >= (uint64_t)N, 1);
  ASSERT(max_ns < 50000000); /* nobody waited on the database */
  ASSERT(p99_ns < 1000000);
  ASSERT_EQ(steps, N / 2);
  ASSERT_EQ(logs, N / 2);
  ASSERT_EQ(distinct, N / 2);
}

/* ---- helpers for the scheduler, resume and status ------------------------- */

static orch_graph *three_steps(void) {
  orch_graph *g = NULL;
  char err[256];
  if (orch_graph_new(&g) != ORCH_OK) return NULL;
  orch_graph_add_sleep(g, "a", 1);
  orch_graph_add_sleep(g, "b \"quoted\"", 1);
  orch_graph_add_sleep(g, "c", 1);
  orch_graph_depend(g, "b \"quoted\"", "a");
  orch_graph_depend(g, "c", "b \"quoted\"");
  orch_graph_depend(g, "c", "a");
  if (orch_graph_validate(g, err, sizeof err) != ORCH_OK) {
    orch_graph_free(g);
    return NULL;
  }
  return g;
}

static int deps_of_c(void *ud, const orch__step_row *r) {
  if (!strcmp(r->step_id, "c")) snprintf(ud, 128, "%s", r->deps_json);
  return 0;
}

TEST(store_records_graph_steps_and_resume_marks_what_passed) {
  char *d = tmpdir_new();
  char url[600];
  snprintf(url, sizeof url, "sqlite:%s/g.db", d);
  orch__store *s = NULL;
  char err[512] = "";
  ASSERT_EQ(orch__store_open(&s, url, NULL, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  orch_graph *g = three_steps();
  ASSERT(g != NULL);
  int64_t t0 = orch__store_wall_ms();
  /* a run killed after a passed, b failed, c never started */
  g->steps[0].status = ORCH_PASSED;
  g->steps[0].attempts = 1;
  g->steps[0].started_ns = 1000000;
  g->steps[0].finished_ns = 5000000;
  orch__step_set_output(&g->steps[0], "out of a", 8);
  g->steps[1].status = ORCH_FAILED;
  orch__step_set_error(&g->steps[1], "boom");
  for (uint32_t i = 0; i < 3; i++)
    ASSERT_EQ(orch__store_record_step(s, sid, g, i, t0), ORCH_OK);
  orch_graph_free(g);

  g = three_steps();
  size_t n = 0;
  ASSERT_EQ(orch__store_resume_mark(s, sid, g, &n, err, sizeof err), ORCH_OK);
  ASSERT_EQ(n, 1);
  ASSERT_EQ(orch_step_status(g, 0), ORCH_PASSED);
  ASSERT_STR_EQ(orch_step_output(g, 0), "out of a");
  ASSERT_EQ(orch_step_status(g, 1), ORCH_PENDING);
  ASSERT_EQ(orch_step_status(g, 2), ORCH_PENDING);
  char deps[128] = "";
  ASSERT_EQ(orch__store_session_steps(s, sid, deps_of_c, deps, err, sizeof err),
            ORCH_OK);
  ASSERT_CONTAINS(deps, "b \\\"quoted\\\"");
  ASSERT_CONTAINS(deps, "\"a\"");
  orch_graph_free(g);
  char other[37];
  uuid_new(other);
  g = three_steps();
  ASSERT_EQ(orch__store_resume_mark(s, other, g, &n, err, sizeof err),
            ORCH_ENOTFOUND);
  orch_graph_free(g);

  orch__rec r;
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_SESSION;
  r.u.session.session_id = sid;
  r.u.session.task_id = "t";
  r.u.session.status = "running";
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  orch__store_close(s);

  char *json = NULL;
  ASSERT_EQ(orch__store_status_json(url, NULL, &json, err, sizeof err), ORCH_OK);
  ASSERT_CONTAINS(json, sid);
  ASSERT_CONTAINS(json, "\"today\"");
  free(json);
  ASSERT_EQ(orch__store_status_json(url, sid, &json, err, sizeof err), ORCH_OK);
  ASSERT_CONTAINS(json, "\"passed\": 1");
  ASSERT_CONTAINS(json, "\"failed\": 1");
  free(json);
  rm_rf(d);
  free(d);
}

/* ---- a server that stops answering (SIGSTOP) ------------------------------ */

/* Sends sig to the postmaster of pgdir's server and to its children. */
static int pg_signal(const char *pgdir, int sig) {
  char path[700];
  snprintf(path, sizeof path, "%s/data/postmaster.pid", pgdir);
  FILE *f = fopen(path, "r");
  long pm = 0;
  if (!f || fscanf(f, "%ld", &pm) != 1) {
    if (f) fclose(f);
    return -1;
  }
  fclose(f);
  int n = 0;
  if (kill((pid_t)pm, sig) == 0) n++;
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    long pid = atol(e->d_name);
    if (pid <= 0) continue;
    char st[64], buf[512];
    snprintf(st, sizeof st, "/proc/%ld/stat", pid);
    FILE *sf = fopen(st, "r");
    if (!sf) continue;
    size_t got = fread(buf, 1, sizeof buf - 1, sf);
    fclose(sf);
    buf[got] = '\0';
    char *rp = strrchr(buf, ')'); /* pid (comm) state ppid ... */
    long ppid = 0;
    char state;
    if (rp && sscanf(rp + 1, " %c %ld", &state, &ppid) == 2 && ppid == pm &&
        kill((pid_t)pid, sig) == 0)
      n++;
  }
  if (d) closedir(d);
  return n;
}

/* A server that stops answering without closing (SIGSTOP: the kernel still
 * keeps the connection) no longer holds the writer: past the store's
 * timeout the connection is dropped, the batch goes to the spool, close
 * returns, and the records reach the database once it answers again. */
TEST(store_slow_pg_that_stops_answering_does_not_hold_the_writer) {
  if (skip_slow("stopped server")) return;
  if (access("test/pg.sh", X_OK) != 0 && !getenv("ORCH_PG_SH")) {
    printf("  (test/pg.sh not found from here: skipped)\n");
    return;
  }
  char *d = tmpdir_new();
  char pgdir[600], url[512], spool[600];
  snprintf(pgdir, sizeof pgdir, "%s/pg", d);
  snprintf(spool, sizeof spool, "%s/stop.spool", d);
  ASSERT_EQ(pg_ctl("start", pgdir, url, sizeof url), 0);
  orch__store *s = NULL;
  char err[512] = "";
  orch__store_opts o = {0};
  o.spool_path = spool;
  o.timeout_ms = 1000;
  o.backoff_max_ms = 500;
  ASSERT_EQ(orch__store_open(&s, url, &o, err, sizeof err), ORCH_OK);
  char sid[37];
  uuid_new(sid);
  orch__rec r = step_rec(sid, "before", 0, "passed", "ok");
  ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  ASSERT_EQ(orch__store_flush(s, 10000), ORCH_OK);
  ASSERT(pg_signal(pgdir, SIGSTOP) >= 2);
  for (int i = 0; i < 10; i++) {
    char id[16];
    snprintf(id, sizeof id, "s%d", i);
    r = step_rec(sid, id, i + 1, "passed", "ok");
    ASSERT_EQ(orch__store_put(s, &r), ORCH_OK);
  }
  int64_t t0 = now_ns();
  int frc = orch__store_flush(s, 4000);
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  orch__store_close(s); /* returns: the writer is not stuck in libpq */
  double close_s = (double)(now_ns() - t0) / 1e9;
  pg_signal(pgdir, SIGCONT);
  printf("  flush %d, closed after %.2f s, spooled %llu, last error: %s\n",
         frc, close_s, (unsigned long long)st.spooled, st.last_error);
  /* the server answers again: the spool reaches it */
  s = NULL;
  int orc = orch__store_open(&s, url, &o, err, sizeof err);
  int frc2 = orc == ORCH_OK ? orch__store_flush(s, 20000) : orc;
  orch__store_close(s);
  long n = db_count(url, "SELECT count(*) FROM orch_run_steps WHERE "
                         "session_id = $1::uuid", sid);
  /* the server goes before any assertion can return */
  pg_ctl("stop", pgdir, NULL, 0);
  rm_rf(d);
  free(d);
  ASSERT_EQ(frc, ORCH_ETIMEDOUT);
  ASSERT(close_s < 8);
  ASSERT(st.spooled >= 10);
  ASSERT_CONTAINS(st.last_error, "no answer from the server in 1000 ms");
  ASSERT_EQ(orc, ORCH_OK);
  ASSERT_EQ(frc2, ORCH_OK);
  ASSERT_EQ(n, 11);
}

/* libpq quotes the connection string in some of its messages (a malformed
 * URI): the password never reaches ours. */
TEST(store_pg_messages_never_show_a_password) {
  char err[512] = "";
  ASSERT(orch_migrate("postgresql://alice:S3cretPW@[::1/db", 1, NULL, NULL,
                      err, sizeof err) != ORCH_OK);
  ASSERT_CONTAINS(err, "postgresql://alice:[redacted]@[::1/db");
  ASSERT(!strstr(err, "S3cretPW"));
  err[0] = '\0';
  ASSERT(orch_migrate("postgresql://bob:Hunter2x@[::1/db", 1, NULL, NULL,
                      err, sizeof err) != ORCH_OK);
  ASSERT(!strstr(err, "Hunter2x"));
  ASSERT_CONTAINS(err, "[redacted]");
  /* the forms a message may quote */
  static const char *const cases[][2] = {
      {"x \"postgresql://u:pw@h/db\" y", "x \"postgresql://u:[redacted]@h/db\" y"},
      {"postgres://u:p@ss@h:5432/db", "postgres://u:[redacted]@h:5432/db"},
      {"postgresql://u@h/db", "postgresql://u@h/db"},
      {"postgresql://h:5432/db", "postgresql://h:5432/db"},
      {"host=h password=pw port=1", "host=h password=[redacted] port=1"},
      {"host=h password = 'p w\\'x' port=1", "host=h password = [redacted] port=1"},
      {"postgresql://h/db?password=pw&port=1", "postgresql://h/db?password=[redacted]&port=1"},
      {"passwordless=1", "passwordless=1"},
      {"no secret here", "no secret here"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char out[256];
    orch__redact_conninfo(out, sizeof out, cases[i][0]);
    ASSERT_STR_EQ(out, cases[i][1]);
  }
  char tiny[8];
  orch__redact_conninfo(tiny, sizeof tiny, "host=h password=pw");
  ASSERT_STR_EQ(tiny, "host=h ");
}

/* A file that is not a database is refused at open with the reason (it was
 * taken for a database that is down: the records went to a spool for good
 * while the run reported success), and left as it was; an empty file is a
 * new database. */
TEST(store_sqlite_refuses_a_file_that_is_not_a_database) {
  char *d = tmpdir_new();
  char path[600], url[620];
  snprintf(path, sizeof path, "%s/junk.db", d);
  FILE *f = fopen(path, "wb");
  ASSERT(f != NULL);
  fputs("junk, not SQLite at all", f);
  fclose(f);
  snprintf(url, sizeof url, "sqlite:%s", path);
  orch__store *s = NULL;
  char err[512] = "";
  ASSERT_EQ(orch__store_open(&s, url, NULL, err, sizeof err), ORCH_ECONFIG);
  ASSERT_CONTAINS(err, "not a SQLite database");
  ASSERT_CONTAINS(err, path);
  struct stat st;
  ASSERT_EQ(stat(path, &st), 0);
  ASSERT_EQ(st.st_size, 23);
  char sp[640];
  snprintf(sp, sizeof sp, "%s.spool", path);
  ASSERT(access(sp, F_OK) != 0); /* no spool made for it either */
  snprintf(path, sizeof path, "%s/empty.db", d);
  f = fopen(path, "wb");
  ASSERT(f != NULL);
  fclose(f);
  snprintf(url, sizeof url, "sqlite:%s", path);
  ASSERT_EQ(orch__store_open(&s, url, NULL, err, sizeof err), ORCH_OK);
  orch__store_close(s);
  rm_rf(d);
  free(d);
}

/* A text column of one row ($1 = arg), "" when none; sqlite only. */
static void db_text(const char *url, const char *sql, const char *arg,
                    char *out, size_t outlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  out[0] = '\0';
  if (sqlite3_open(url + 7, &db) == SQLITE_OK &&
      sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
      snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(st, 0));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* Resume keeps what the session row said of the plan (task id, agent,
 * tier), counts a re-run step's attempts on from the first run's, and
 * records under the session's own (lowercase) id however it was typed. */
TEST(store_resume_keeps_the_session_row_attempts_and_a_canonical_id) {
  char *d = tmpdir_new();
  char url[600], err[512] = "";
  snprintf(url, sizeof url, "sqlite:%s/r.db", d);
  static const char plan[] =
      "{\"task_id\":\"TASK-42\",\"agent\":\"release-team\",\"tier\":\"fast\","
      "\"steps\":[{\"id\":\"a\",\"kind\":\"shell\",\"run\":\"true\"},"
      "{\"id\":\"b\",\"kind\":\"shell\",\"run\":\"exit 3\",\"deps\":[\"a\"]}]}";
  orch_runtime *rt = NULL;
  orch_graph *g = NULL;
  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", url, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_graph_parse(rt, plan, sizeof plan - 1, "plan", &g, err,
                             sizeof err), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  char sid[37], upper[37];
  snprintf(sid, sizeof sid, "%s", orch_runtime_session(rt));
  orch_graph_free(g);
  orch_runtime_free(rt);
  for (int i = 0; i < 37; i++)
    upper[i] = (char)(sid[i] >= 'a' && sid[i] <= 'f' ? sid[i] - 32 : sid[i]);
  ASSERT(strcmp(upper, sid) != 0);

  ASSERT_EQ(orch_runtime_new(&rt, NULL, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_set(rt, "db", url, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_runtime_resume(rt, upper, &g, err, sizeof err), ORCH_OK);
  ASSERT_EQ(orch_run(rt, g, err, sizeof err), ORCH_ESTEP);
  ASSERT_STR_EQ(orch_runtime_session(rt), sid);
  ASSERT_EQ(orch_step_attempts(g, 1), 2); /* b: once before, once now */
  orch_graph_free(g);
  orch_runtime_free(rt);

  char txt[128];
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM jr_execution_sessions", NULL), 1);
  ASSERT_EQ(db_count(url, "SELECT count(*) FROM orch_run_steps WHERE "
                          "session_id <> ?1", sid), 0);
  db_text(url, "SELECT task_id FROM jr_execution_sessions WHERE session_id = ?1",
          sid, txt, sizeof txt);
  ASSERT_STR_EQ(txt, "TASK-42");
  db_text(url, "SELECT jr_name FROM jr_execution_sessions WHERE session_id = ?1",
          sid, txt, sizeof txt);
  ASSERT_STR_EQ(txt, "release-team");
  db_text(url, "SELECT model_tier FROM jr_execution_sessions WHERE session_id = ?1",
          sid, txt, sizeof txt);
  ASSERT_STR_EQ(txt, "fast");
  ASSERT_EQ(db_count(url, "SELECT attempts FROM orch_run_steps WHERE "
                          "session_id = ?1 AND step_id = 'b'", sid), 2);
  ASSERT_EQ(db_count(url, "SELECT attempts FROM orch_run_steps WHERE "
                          "session_id = ?1 AND step_id = 'a'", sid), 1);
  rm_rf(d);
  free(d);
}
