/* store_sqlite.c: the embedded SQLite backend of the store (the default,
 * "sqlite:PATH"). A connection is one sqlite3 handle in WAL mode with a
 * busy timeout; the writer upserts each batch in one transaction through
 * prepared statements built from orch__rec_descs; queries and migrations use
 * their own handle. Used by store.c only, through orch__backend_sqlite. */
#include "orch_int.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct sq {
  sqlite3 *db;
  sqlite3_stmt *ups[ORCH__REC_NTYPES];
} sq;

static int sq_err(char *err, size_t errlen, int code, const char *what,
                  sqlite3 *db) {
  if (err && errlen)
    snprintf(err, errlen, "sqlite: %s: %s", what,
             db ? sqlite3_errmsg(db) : "out of memory");
  return code;
}

static void sq_disconnect(void *conn) {
  sq *c = conn;
  if (!c) return;
  for (int i = 0; i < ORCH__REC_NTYPES; i++) sqlite3_finalize(c->ups[i]);
  sqlite3_close_v2(c->db);
  free(c);
}

/* Opens path; create = 0 for callers that only read, so a typo'd path is
 * reported instead of left behind as an empty database. */
static int sq_open(void **out, const char *path, bool create, char *err,
                   size_t errlen) {
  sq *c = calloc(1, sizeof *c);
  if (!c) return ORCH_ENOMEM;
  int rc = sqlite3_open_v2(path, &c->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
                               (create ? SQLITE_OPEN_CREATE : 0),
                           NULL);
  struct stat sb;
  if (rc != SQLITE_OK && !create && stat(path, &sb) != 0 && errno == ENOENT) {
    snprintf(err, errlen, "no such database: %s", path);
    sq_disconnect(c);
    return ORCH_ENOTFOUND;
  }
  if (rc != SQLITE_OK) {
    rc = sq_err(err, errlen, ORCH_ESTORE, path, c->db);
    sq_disconnect(c);
    return rc;
  }
  sqlite3_busy_timeout(c->db, 5000);
  char *msg = NULL;
  if (sqlite3_exec(c->db,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                   NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(err, errlen, "sqlite: %s: %s", path, msg ? msg : "?");
    sqlite3_free(msg);
    sq_disconnect(c);
    return ORCH_ESTORE;
  }
  *out = c;
  return ORCH_OK;
}

static int sq_connect(void **out, const char *path, char *err,
                      size_t errlen) {
  return sq_open(out, path, true, err, errlen);
}

static int sq_connect_ro(void **out, const char *path, char *err,
                         size_t errlen) {
  return sq_open(out, path, false, err, errlen);
}

static int exec_sql(sq *c, const char *sql, char *err, size_t errlen) {
  char *msg = NULL;
  if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(err, errlen, "sqlite: %s", msg ? msg : sqlite3_errmsg(c->db));
    sqlite3_free(msg);
    return ORCH_ESTORE;
  }
  return ORCH_OK;
}

/* ---- migrations ---------------------------------------------------------- */

static int applied_versions(sq *c, bool create, int *have, size_t cap,
                            size_t *n, char *err, size_t errlen) {
  *n = 0;
  if (create &&
      exec_sql(c,
               "CREATE TABLE IF NOT EXISTS orch_schema_migrations ("
               "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
               "applied_at TEXT NOT NULL DEFAULT "
               "(strftime('%Y-%m-%d %H:%M:%f', 'now')))",
               err, errlen) != ORCH_OK)
    return ORCH_ESTORE;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(c->db, "SELECT version FROM orch_schema_migrations",
                         -1, &st, NULL) != SQLITE_OK) {
    if (!create) return ORCH_OK; /* no table yet: nothing applied */
    return sq_err(err, errlen, ORCH_ESTORE, "migrations", c->db);
  }
  while (sqlite3_step(st) == SQLITE_ROW)
    if (*n < cap) have[(*n)++] = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return ORCH_OK;
}

static bool in_list(const int *v, size_t n, int x) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == x) return true;
  return false;
}

static int sq_migrate(void *conn, int status_only, orch_report_fn report,
                      void *ud, char *err, size_t errlen) {
  sq *c = conn;
  int have[256];
  size_t nhave = 0;
  int rc = applied_versions(c, !status_only, have, 256, &nhave, err, errlen);
  if (rc != ORCH_OK) return rc;
  for (size_t i = 0; i < orch__nmigrations; i++) {
    const orch__migration *m = &orch__migrations[i];
    if (m->dialect != 's') continue;
    if (in_list(have, nhave, m->version)) {
      if (report) report(ud, m->name, 1, "applied");
      continue;
    }
    if (status_only) {
      if (report) report(ud, m->name, 0, "pending");
      continue;
    }
    /* BEGIN IMMEDIATE takes the write lock: a second migrator waits, then
     * sees the version recorded and skips it. */
    if (exec_sql(c, "BEGIN IMMEDIATE", err, errlen) != ORCH_OK)
      return ORCH_ESTORE;
    sqlite3_stmt *st = NULL;
    bool done_already = false;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT 1 FROM orch_schema_migrations WHERE "
                           "version = ?1",
                           -1, &st, NULL) == SQLITE_OK) {
      sqlite3_bind_int(st, 1, m->version);
      done_already = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (!done_already) {
      if (exec_sql(c, m->sql, err, errlen) != ORCH_OK) {
        size_t l = strlen(err);
        snprintf(err + l, errlen - l, " (migration %s)", m->name);
        exec_sql(c, "ROLLBACK", NULL, 0);
        return ORCH_ESTORE;
      }
      if (sqlite3_prepare_v2(c->db,
                             "INSERT INTO orch_schema_migrations "
                             "(version, name) VALUES (?1, ?2)",
                             -1, &st, NULL) != SQLITE_OK) {
        rc = sq_err(err, errlen, ORCH_ESTORE, "migrations", c->db);
        exec_sql(c, "ROLLBACK", NULL, 0);
        return rc;
      }
      sqlite3_bind_int(st, 1, m->version);
      sqlite3_bind_text(st, 2, m->name, -1, SQLITE_STATIC);
      int src = sqlite3_step(st);
      sqlite3_finalize(st);
      if (src != SQLITE_DONE) {
        rc = sq_err(err, errlen, ORCH_ESTORE, "migrations", c->db);
        exec_sql(c, "ROLLBACK", NULL, 0);
        return rc;
      }
    }
    if (exec_sql(c, "COMMIT", err, errlen) != ORCH_OK) {
      exec_sql(c, "ROLLBACK", NULL, 0);
      return ORCH_ESTORE;
    }
    if (report) report(ud, m->name, 1, done_already ? "applied" : "applied now");
  }
  return ORCH_OK;
}

/* ---- writing ---------------------------------------------------------------- */

static int prepare_upsert(sq *c, int type, char *err, size_t errlen) {
  const orch__rec_desc *d = &orch__rec_descs[type];
  char *sql = NULL;
  size_t len = 0;
  int rc = ORCH_OK;
  FILE *f = open_memstream(&sql, &len);
  if (!f) return ORCH_ENOMEM;
  fprintf(f, "INSERT INTO %s (", d->table);
  for (size_t i = 0; i < d->ncols; i++)
    fprintf(f, "%s%s", i ? ", " : "", d->cols[i].name);
  fputs(") VALUES (", f);
  for (size_t i = 0; i < d->ncols; i++) {
    const char *sep = i ? ", " : "";
    if (d->cols[i].type == 'j')
      fprintf(f, "%sjson(?%zu)", sep, i + 1);
    else if (d->cols[i].type == 'T')
      fprintf(f, "%sstrftime('%%Y-%%m-%%d %%H:%%M:%%f', ?%zu / 1000.0, "
                 "'unixepoch')", sep, i + 1);
    else
      fprintf(f, "%s?%zu", sep, i + 1);
  }
  fputs(") ON CONFLICT (", f);
  int k = 0;
  for (size_t i = 0; i < d->ncols; i++)
    if (d->cols[i].flags & ORCH__COL_KEY)
      fprintf(f, "%s%s", k++ ? ", " : "", d->cols[i].name);
  if (d->append_only) {
    fputs(") DO NOTHING", f);
  } else {
    fputs(") DO UPDATE SET ", f);
    k = 0;
    for (size_t i = 0; i < d->ncols; i++) {
      if (d->cols[i].flags & (ORCH__COL_KEY | ORCH__COL_INSERT_ONLY)) continue;
      fprintf(f, "%s%s = excluded.%s", k++ ? ", " : "", d->cols[i].name,
              d->cols[i].name);
    }
    fprintf(f, " WHERE %s.rec_seq <= excluded.rec_seq", d->table);
  }
  if (fclose(f) != 0 || !sql) {
    free(sql);
    return ORCH_ENOMEM;
  }
  if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                         &c->ups[type], NULL) != SQLITE_OK)
    rc = sq_err(err, errlen, ORCH_ESTORE, d->table, c->db);
  free(sql);
  return rc;
}

/* A failure that says "this row is bad" rather than "the database is not
 * usable now". */
static bool data_error(int rc) {
  switch (rc & 0xFF) {
  case SQLITE_CONSTRAINT:
  case SQLITE_MISMATCH:
  case SQLITE_TOOBIG:
  case SQLITE_RANGE:
  case SQLITE_ERROR: return true;
  default: return false;
  }
}

static int sq_write(void *conn, const orch__row *rows, size_t n,
                    orch__reject_fn reject, void *ud, char *err,
                    size_t errlen) {
  sq *c = conn;
  for (size_t i = 0; i < n; i++)
    if (!c->ups[rows[i].type] &&
        prepare_upsert(c, rows[i].type, err, errlen) != ORCH_OK)
      return ORCH__W_RETRY;
  if (exec_sql(c, "BEGIN IMMEDIATE", err, errlen) != ORCH_OK)
    return ORCH__W_RETRY;
  for (size_t i = 0; i < n; i++) {
    const orch__rec_desc *d = &orch__rec_descs[rows[i].type];
    sqlite3_stmt *st = c->ups[rows[i].type];
    for (size_t j = 0; j < d->ncols; j++) {
      const orch__val *v = &rows[i].v[j];
      int col = (int)j + 1;
      switch (v->tag) {
      case 1: sqlite3_bind_int64(st, col, v->i); break;
      case 2: sqlite3_bind_double(st, col, v->f); break;
      case 3: sqlite3_bind_text(st, col, v->s, (int)v->n, SQLITE_STATIC); break;
      default: sqlite3_bind_null(st, col); break;
      }
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_DONE) continue;
    if (data_error(rc)) {
      reject(ud, i, sqlite3_errmsg(c->db));
      continue;
    }
    sq_err(err, errlen, ORCH_ESTORE, d->table, c->db);
    exec_sql(c, "ROLLBACK", NULL, 0);
    return ORCH__W_RETRY;
  }
  if (exec_sql(c, "COMMIT", err, errlen) != ORCH_OK) {
    exec_sql(c, "ROLLBACK", NULL, 0);
    return ORCH__W_RETRY;
  }
  return ORCH__W_OK;
}

/* ---- queries ------------------------------------------------------------------ */

static const char *col_text(sqlite3_stmt *st, int i) {
  return (const char *)sqlite3_column_text(st, i);
}
static char *col_dup(sqlite3_stmt *st, int i) {
  const char *s = col_text(st, i);
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}
static int64_t col_i64(sqlite3_stmt *st, int i) {
  return sqlite3_column_type(st, i) == SQLITE_NULL ? ORCH__NULL_I64
                                                   : sqlite3_column_int64(st, i);
}

static int sq_session_steps(void *conn, const char *session_id,
                            orch__step_row_fn fn, void *ud, char *err,
                            size_t errlen) {
  sq *c = conn;
  sqlite3_stmt *st = NULL;
  int rc = ORCH_OK, n = 0;
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT step_id, kind, status, deps, params, output, error, "
          "step_index, attempts, generation, tokens_in, tokens_out, cost "
          "FROM orch_run_steps WHERE session_id = lower(?1) "
          "ORDER BY step_index, step_id",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "session steps", c->db);
  sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
  int src;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    orch__step_row r = {
        .step_id = col_text(st, 0),
        .kind = col_text(st, 1),
        .status = col_text(st, 2),
        .deps_json = col_text(st, 3),
        .params_json = col_text(st, 4),
        .output = col_text(st, 5),
        .error = col_text(st, 6),
        .step_index = sqlite3_column_int(st, 7),
        .attempts = sqlite3_column_int(st, 8),
        .generation = (uint32_t)sqlite3_column_int64(st, 9),
        .tokens_in = col_i64(st, 10),
        .tokens_out = col_i64(st, 11),
        .cost = sqlite3_column_type(st, 12) == SQLITE_NULL
                    ? NAN
                    : sqlite3_column_double(st, 12),
    };
    n++;
    if ((rc = fn(ud, &r)) != 0) goto done;
  }
  if (src != SQLITE_DONE) {
    rc = sq_err(err, errlen, ORCH_ESTORE, "session steps", c->db);
    goto done;
  }
  if (n == 0) {
    /* no steps: a session row alone still counts as found */
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT 1 FROM jr_execution_sessions WHERE "
                           "session_id = lower(?1)",
                           -1, &st, NULL) != SQLITE_OK)
      return sq_err(err, errlen, ORCH_ESTORE, "session", c->db);
    sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
      snprintf(err, errlen, "session %s: not found", session_id);
      rc = ORCH_ENOTFOUND;
    }
  }
done:
  sqlite3_finalize(st);
  return rc;
}

static int sq_session_summary(void *conn, const char *session_id,
                              orch__session_info *si, char *err,
                              size_t errlen) {
  sq *c = conn;
  sqlite3_stmt *st = NULL;
  int rc = ORCH_OK;
  long json_total = 0;
  bool found = false;
  snprintf(si->session_id, sizeof si->session_id, "%s", session_id);
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT task_id, jr_name, model_tier, status, steps, total_tokens, "
          "substr(created_at, 1, 19), substr(updated_at, 1, 19), "
          "CASE WHEN json_valid(steps) AND json_type(steps) = 'array' "
          "THEN json_array_length(steps) ELSE 0 END "
          "FROM jr_execution_sessions WHERE session_id = lower(?1)",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "session", c->db);
  sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    found = true;
    si->task_id = col_dup(st, 0);
    si->jr_name = col_dup(st, 1);
    si->model_tier = col_dup(st, 2);
    si->status = col_dup(st, 3);
    si->steps_json = col_dup(st, 4);
    si->total_tokens = sqlite3_column_int64(st, 5);
    snprintf(si->created_at, sizeof si->created_at, "%s",
             col_text(st, 6) ? col_text(st, 6) : "");
    snprintf(si->updated_at, sizeof si->updated_at, "%s",
             col_text(st, 7) ? col_text(st, 7) : "");
    json_total = sqlite3_column_int(st, 8);
  }
  sqlite3_finalize(st);
  st = NULL;
  if (sqlite3_prepare_v2(c->db,
                         "SELECT status, count(*) FROM orch_run_steps WHERE "
                         "session_id = lower(?1) GROUP BY status",
                         -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "session", c->db);
  sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
  while (sqlite3_step(st) == SQLITE_ROW) {
    found = true;
    orch__session_info_tally(si, col_text(st, 0), sqlite3_column_int(st, 1));
  }
  sqlite3_finalize(st);
  orch__session_info_finish(si, json_total);
  if (!found) {
    snprintf(err, errlen, "session %s: not found", session_id);
    rc = ORCH_ENOTFOUND;
  }
  return rc;
}

static int sq_active_sessions(void *conn,
                              int (*fn)(void *ud, const orch__session_info *si),
                              void *ud, char *err, size_t errlen) {
  sq *c = conn;
  sqlite3_stmt *st = NULL;
  int rc = ORCH_OK;
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT session_id, task_id, jr_name, model_tier, status, "
          "total_steps, passed_steps, failed_steps, substr(created_at, 1, 19), "
          "substr(updated_at, 1, 19) FROM v_jr_active_sessions "
          "ORDER BY created_at DESC LIMIT 1000",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "active sessions", c->db);
  while (sqlite3_step(st) == SQLITE_ROW) {
    orch__session_info si;
    memset(&si, 0, sizeof si);
    snprintf(si.session_id, sizeof si.session_id, "%s",
             col_text(st, 0) ? col_text(st, 0) : "");
    si.task_id = (char *)col_text(st, 1);
    si.jr_name = (char *)col_text(st, 2);
    si.model_tier = (char *)col_text(st, 3);
    si.status = (char *)col_text(st, 4);
    si.passed = sqlite3_column_int(st, 6);
    si.failed = sqlite3_column_int(st, 7);
    si.total = si.passed + si.failed;
    orch__session_info_finish(&si, sqlite3_column_int(st, 5));
    snprintf(si.created_at, sizeof si.created_at, "%s",
             col_text(st, 8) ? col_text(st, 8) : "");
    snprintf(si.updated_at, sizeof si.updated_at, "%s",
             col_text(st, 9) ? col_text(st, 9) : "");
    if ((rc = fn(ud, &si)) != 0) break;
  }
  sqlite3_finalize(st);
  return rc;
}

static int sq_today_counts(void *conn, orch__store_today *out, char *err,
                           size_t errlen) {
  sq *c = conn;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT count(*), coalesce(sum(status = 'running'), 0), "
          "coalesce(sum(status IN ('passed', 'completed')), 0), "
          "coalesce(sum(status = 'failed'), 0) FROM jr_execution_sessions "
          "WHERE created_at >= strftime('%Y-%m-%d', 'now')",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "today", c->db);
  if (sqlite3_step(st) == SQLITE_ROW) {
    out->sessions = sqlite3_column_int(st, 0);
    out->sessions_running = sqlite3_column_int(st, 1);
    out->sessions_passed = sqlite3_column_int(st, 2);
    out->sessions_failed = sqlite3_column_int(st, 3);
  }
  sqlite3_finalize(st);
  st = NULL;
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT count(*), coalesce(sum(status = 'passed'), 0), "
          "coalesce(sum(status = 'failed'), 0) FROM orch_run_steps "
          "WHERE updated_at >= strftime('%Y-%m-%d', 'now')",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "today", c->db);
  if (sqlite3_step(st) == SQLITE_ROW) {
    out->steps_total = sqlite3_column_int(st, 0);
    out->steps_passed = sqlite3_column_int(st, 1);
    out->steps_failed = sqlite3_column_int(st, 2);
  }
  sqlite3_finalize(st);
  return ORCH_OK;
}

/* The scripts whose latest event is a refusal, newest first. */
static int sq_script_refusals(void *conn,
                              int (*fn)(void *ud, const orch__script_refusal *r),
                              void *ud, char *err, size_t errlen) {
  sq *c = conn;
  sqlite3_stmt *st = NULL;
  int rc = ORCH_OK;
  if (sqlite3_prepare_v2(
          c->db,
          "SELECT e.module, e.file, e.error, e.runtime, e.generation, "
          "substr(e.created_at, 1, 19) FROM orch_script_events e "
          "WHERE e.outcome = 'refused' AND e.id = (SELECT max(l.id) FROM "
          "orch_script_events l WHERE l.file = e.file) "
          "ORDER BY e.id DESC LIMIT 100",
          -1, &st, NULL) != SQLITE_OK)
    return sq_err(err, errlen, ORCH_ESTORE, "script events", c->db);
  while (sqlite3_step(st) == SQLITE_ROW) {
    orch__script_refusal r;
    memset(&r, 0, sizeof r);
    r.module = col_text(st, 0);
    r.file = col_text(st, 1);
    r.error = col_text(st, 2);
    r.runtime = col_text(st, 3);
    r.generation = sqlite3_column_int(st, 4);
    snprintf(r.created_at, sizeof r.created_at, "%s",
             col_text(st, 5) ? col_text(st, 5) : "");
    if ((rc = fn(ud, &r)) != 0) break;
  }
  sqlite3_finalize(st);
  return rc;
}

/* A file that is there and is not a database: no retry will make it one
 * (it was taken for a database that is down, the records went to the spool
 * for good and the run said nothing was wrong). Asked of SQLite itself, on
 * a read-only connection that does not wait for locks: reading the file
 * directly would not do, since closing any descriptor of a database file
 * drops the POSIX locks this process's other connections hold on it, and a
 * database shared with other processes would then be corrupted. Anything
 * but "not a database" (missing, busy, unreadable) is left to the writer. */
static int sq_precheck(const char *path, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                           NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db, "PRAGMA schema_version", NULL, NULL, NULL);
  bool notadb = (sqlite3_extended_errcode(db) & 0xff) == SQLITE_NOTADB;
  sqlite3_close(db);
  if (!notadb) return ORCH_OK;
  return orch__err(err, errlen, ORCH_ECONFIG,
                   "sqlite: %s: not a SQLite database (the file has other "
                   "content)",
                   path);
}

const orch__backend orch__backend_sqlite = {
    .name = "sqlite",
    .precheck = sq_precheck,
    .connect = sq_connect,
    .connect_ro = sq_connect_ro,
    .disconnect = sq_disconnect,
    .migrate = sq_migrate,
    .write = sq_write,
    .session_steps = sq_session_steps,
    .session_summary = sq_session_summary,
    .active_sessions = sq_active_sessions,
    .today_counts = sq_today_counts,
    .script_refusals = sq_script_refusals,
};
