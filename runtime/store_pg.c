/* store_pg.c: the PostgreSQL backend of the store, through libpq. The
 * writer's batch goes in one transaction: per record type, rows whose key
 * this connection has not sent before go by COPY straight into the table
 * (under a savepoint; if a key existed after all, they join the others),
 * the others by COPY into a per-connection temporary table and one INSERT
 * ... SELECT DISTINCT ON ... ON CONFLICT DO UPDATE guarded by rec_seq, so
 * values never enter SQL text. A batch the database refuses as data is
 * retried row by row to isolate the bad rows. Queries and migrations use
 * parameterized statements. Used by store.c through orch__backend_pg. */
#include "orch_int.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MIGRATE_LOCK "7310594712" /* pg_advisory_xact_lock key */
#define W_DATA 2                  /* internal: the rows are bad */
/* The times copy_row writes as timestamps: years 1 to 9999 (epoch ms) */
#define TIME_MIN_MS (-62135596800000LL)
#define TIME_MAX_MS 253402300799999LL

/* Keys this connection has sent, as 64-bit hashes (open addressing, 0 =
 * empty). A key not in the set is probably new: its row goes by a direct
 * COPY into the table (PostgreSQL's fast bulk path); a key in the set goes
 * by the upsert. A wrong guess only costs time: a direct COPY that meets
 * an existing key fails as a whole and the batch is upserted instead. */
#define SEEN_BITS 20
#define SEEN_CAP ((size_t)1 << SEEN_BITS)

/* The deadline of a call into libpq. libpq blocks the writer's thread
 * (PQexec, COPY) until the server answers; a server that stops answering
 * without closing (hung, SIGSTOPped, behind a link that died quietly)
 * would hold the writer, and orch__store_close after it, for good. So each
 * connection has a watchdog thread: the backend's entry points arm it (a
 * deadline, re-armed per statement where a call runs many), and past the
 * deadline it shuts the socket down (shutdown(2): libpq's wait returns and
 * the call fails as a lost connection; the batch goes to the spool and the
 * writer reconnects with backoff). The descriptor stays open until
 * PQfinish, after the watchdog is joined, so it is never another's. */
#define PG_TIMEOUT_MS 30000u
#define PG_MIGRATE_FACTOR 20u /* a pending migration's DDL may be slow */

typedef struct pg_watch {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t th;
  int fd;
  int64_t deadline_ns; /* 0: not armed */
  unsigned timeout_ms;
  bool stop, fired, started;
} pg_watch;

typedef struct pgc {
  PGconn *c;
  pg_watch w;
  bool prepared;
  char *copybuf;
  size_t copylen, copycap;
  uint64_t *seen;
  size_t nseen;
  unsigned direct_off[ORCH__REC_NTYPES]; /* batches left without direct */
  uint8_t *fresh;                        /* per row of the batch */
  size_t fresh_cap;
} pgc;

static void no_notices(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static void chomp_msg(char *err, size_t errlen, const char *prefix,
                      const char *msg) {
  if (!err || !errlen) return;
  /* libpq quotes the connection string in some messages (a malformed
   * URI): its password never goes further */
  char *full = orch__asprintf("postgresql: %s%s", prefix, msg ? msg : "");
  if (full) orch__redact_conninfo(err, errlen, full);
  else snprintf(err, errlen, "postgresql: (out of memory)");
  free(full);
  /* one line: libpq's messages carry newlines and tabs */
  size_t o = 0;
  for (size_t i = 0; err[i]; i++) {
    char c = err[i];
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
    if (c == ' ' && o > 0 && err[o - 1] == ' ') continue;
    err[o++] = c;
  }
  while (o && err[o - 1] == ' ') o--;
  err[o] = '\0';
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *watch_main(void *arg) {
  pg_watch *w = arg;
  pthread_mutex_lock(&w->mu);
  while (!w->stop) {
    if (!w->deadline_ns) {
      pthread_cond_wait(&w->cv, &w->mu);
      continue;
    }
    int64_t now = mono_ns();
    if (now >= w->deadline_ns) {
      shutdown(w->fd, SHUT_RDWR);
      w->fired = true;
      w->deadline_ns = 0;
      continue;
    }
    struct timespec ts = {(time_t)(w->deadline_ns / 1000000000),
                          (long)(w->deadline_ns % 1000000000)};
    pthread_cond_timedwait(&w->cv, &w->mu, &ts);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Starts the watchdog of a connected p (false: could not; p then runs
 * without one). */
static bool watch_start(pgc *p) {
  pg_watch *w = &p->w;
  w->fd = PQsocket(p->c);
  w->timeout_ms = PG_TIMEOUT_MS;
  if (w->fd < 0) return false;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&w->th, NULL, watch_main, w) != 0) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    return false;
  }
  w->started = true;
  return true;
}

/* Arms (or re-arms) the deadline: timeout_ms times factor from now. */
static void arm(pgc *p, unsigned factor) {
  pg_watch *w = &p->w;
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  w->deadline_ns = mono_ns() + (int64_t)w->timeout_ms * factor * 1000000;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void disarm(pgc *p) {
  pg_watch *w = &p->w;
  if (!w->started) return;
  pthread_mutex_lock(&w->mu);
  w->deadline_ns = 0;
  pthread_mutex_unlock(&w->mu);
}

/* Whether the watchdog cut the connection (then says so in err). */
static bool watch_fired(pgc *p, char *err, size_t errlen) {
  pg_watch *w = &p->w;
  if (!w->started) return false;
  pthread_mutex_lock(&w->mu);
  bool f = w->fired;
  pthread_mutex_unlock(&w->mu);
  if (f && err && errlen)
    snprintf(err, errlen,
             "postgresql: no answer from the server in %u ms: connection "
             "closed",
             w->timeout_ms);
  return f;
}

static void pg_set_timeout(void *conn, unsigned ms) {
  pgc *p = conn;
  if (p && ms) p->w.timeout_ms = ms;
}

static void pg_disconnect(void *conn) {
  pgc *p = conn;
  if (!p) return;
  if (p->w.started) {
    pthread_mutex_lock(&p->w.mu);
    p->w.stop = true;
    pthread_cond_signal(&p->w.cv);
    pthread_mutex_unlock(&p->w.mu);
    pthread_join(p->w.th, NULL);
    pthread_mutex_destroy(&p->w.mu);
    pthread_cond_destroy(&p->w.cv);
  }
  PQfinish(p->c);
  free(p->copybuf);
  free(p->seen);
  free(p->fresh);
  free(p);
}

static int pg_connect(void **out, const char *url, char *err, size_t errlen) {
  pgc *p = calloc(1, sizeof *p);
  if (!p) return ORCH_ENOMEM;
  /* Our defaults first: the address's own settings, expanded at "dbname",
   * override them. */
  const char *kw[] = {"connect_timeout", "application_name", "dbname", NULL};
  const char *val[] = {"5", "orchestrate", url, NULL};
  p->c = PQconnectdbParams(kw, val, 1);
  if (!p->c || PQstatus(p->c) != CONNECTION_OK) {
    chomp_msg(err, errlen, "", p->c ? PQerrorMessage(p->c) : "out of memory");
    pg_disconnect(p);
    return ORCH_ESTORE;
  }
  PQsetNoticeProcessor(p->c, no_notices, NULL);
  watch_start(p);
  *out = p;
  return ORCH_OK;
}

/* Runs sql (no parameters); ORCH_OK or ORCH_ESTORE with the message. */
static int exec_cmd(pgc *p, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(p->c, sql);
  ExecStatusType st = PQresultStatus(r);
  int rc = ORCH_OK;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    chomp_msg(err, errlen, "", PQerrorMessage(p->c));
    rc = ORCH_ESTORE;
  }
  PQclear(r);
  return rc;
}

/* ---- migrations ---------------------------------------------------------- */

/* Whether every migration is applied already, read without DDL or a lock
 * (the writer calls migrate on each connect: a role with only the rights
 * to read and write its tables must do without CREATE); if so, reported
 * as applied. */
static bool pg_all_applied(pgc *p, orch_report_fn report, void *ud) {
  PGresult *r = PQexec(p->c, "SELECT version FROM orch_schema_migrations "
                             "WHERE to_regclass('orch_schema_migrations') "
                             "IS NOT NULL");
  bool all = PQresultStatus(r) == PGRES_TUPLES_OK;
  for (size_t i = 0; all && i < orch__nmigrations; i++) {
    const orch__migration *m = &orch__migrations[i];
    if (m->dialect != 'p') continue;
    bool found = false;
    for (int j = 0; j < PQntuples(r) && !found; j++)
      found = atoi(PQgetvalue(r, j, 0)) == m->version;
    all = found;
  }
  PQclear(r);
  if (!all) return false;
  for (size_t i = 0; report && i < orch__nmigrations; i++)
    if (orch__migrations[i].dialect == 'p')
      report(ud, orch__migrations[i].name, 1, "applied");
  return true;
}

static int migrate_inner(pgc *p, int status_only, orch_report_fn report,
                         void *ud, char *err, size_t errlen) {
  int have[256];
  size_t nhave = 0;
  int rc = ORCH_OK;
  PGresult *r = NULL;
  if (!status_only && pg_all_applied(p, report, ud)) return ORCH_OK;
  if (!status_only) {
    if (exec_cmd(p,
                 "BEGIN; SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ");"
                 "CREATE TABLE IF NOT EXISTS orch_schema_migrations ("
                 "version integer PRIMARY KEY, name text NOT NULL, "
                 "applied_at timestamptz NOT NULL DEFAULT now()); COMMIT",
                 err, errlen) != ORCH_OK) {
      exec_cmd(p, "ROLLBACK", NULL, 0);
      return ORCH_ESTORE;
    }
  }
  r = PQexec(p->c, "SELECT version FROM orch_schema_migrations "
                   "WHERE to_regclass('orch_schema_migrations') IS NOT NULL");
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    for (int i = 0; i < PQntuples(r) && nhave < 256; i++)
      have[nhave++] = atoi(PQgetvalue(r, i, 0));
  } else if (!status_only) {
    chomp_msg(err, errlen, "", PQerrorMessage(p->c));
    PQclear(r);
    return ORCH_ESTORE;
  }
  /* status_only with no table: the SELECT failed, nothing is applied */
  PQclear(r);
  r = NULL;
  for (size_t i = 0; i < orch__nmigrations; i++) {
    const orch__migration *m = &orch__migrations[i];
    if (m->dialect != 'p') continue;
    bool applied = false;
    for (size_t j = 0; j < nhave; j++)
      if (have[j] == m->version) applied = true;
    if (applied || status_only) {
      if (report)
        report(ud, m->name, applied ? 1 : 0, applied ? "applied" : "pending");
      continue;
    }
    if (exec_cmd(p, "BEGIN; SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")",
                 err, errlen) != ORCH_OK)
      goto fail;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *pv[2] = {ver, m->name};
    r = PQexecParams(p->c,
                     "SELECT 1 FROM orch_schema_migrations WHERE version = $1",
                     1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
      chomp_msg(err, errlen, "", PQerrorMessage(p->c));
      goto fail;
    }
    bool raced = PQntuples(r) > 0; /* another migrator did it meanwhile */
    PQclear(r);
    r = NULL;
    if (!raced) {
      arm(p, PG_MIGRATE_FACTOR);
      if (exec_cmd(p, m->sql, err, errlen) != ORCH_OK) {
        size_t l = strlen(err);
        snprintf(err + l, errlen - l, " (migration %s)", m->name);
        goto fail;
      }
      r = PQexecParams(p->c,
                       "INSERT INTO orch_schema_migrations (version, name) "
                       "VALUES ($1, $2)",
                       2, NULL, pv, NULL, NULL, 0);
      if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        chomp_msg(err, errlen, "", PQerrorMessage(p->c));
        goto fail;
      }
      PQclear(r);
      r = NULL;
    }
    if (exec_cmd(p, "COMMIT", err, errlen) != ORCH_OK) goto fail;
    if (report) report(ud, m->name, 1, raced ? "applied" : "applied now");
  }
  return ORCH_OK;
fail:
  PQclear(r);
  exec_cmd(p, "ROLLBACK", NULL, 0);
  rc = ORCH_ESTORE;
  return rc;
}

/* ---- writing ---------------------------------------------------------------- */

static const char *pg_type(char t) {
  switch (t) {
  case 'u': return "uuid";
  case 'j': return "jsonb";
  case 'i': return "bigint";
  case 'f': return "double precision";
  case 'T': return "bigint"; /* epoch ms, converted in the upsert */
  default: return "text";
  }
}

/* Creates the temporary tables and prepares the upserts, once per
 * connection (outside any transaction). */
static int pg_prepare(pgc *p, char *err, size_t errlen) {
  for (int t = 0; t < ORCH__REC_NTYPES; t++) {
    const orch__rec_desc *d = &orch__rec_descs[t];
    char *sql = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&sql, &len);
    if (!f) return ORCH_ENOMEM;
    fprintf(f, "CREATE TEMP TABLE IF NOT EXISTS orch_tmp_%d (", t);
    for (size_t i = 0; i < d->ncols; i++)
      fprintf(f, "%s%s %s", i ? ", " : "", d->cols[i].name,
              pg_type(d->cols[i].type));
    fputs(") ON COMMIT DELETE ROWS", f);
    fclose(f);
    int rc = sql ? exec_cmd(p, sql, err, errlen) : ORCH_ENOMEM;
    free(sql);
    if (rc != ORCH_OK) return rc;

    sql = NULL;
    f = open_memstream(&sql, &len);
    if (!f) return ORCH_ENOMEM;
    fprintf(f, "INSERT INTO %s (", d->table);
    for (size_t i = 0; i < d->ncols; i++)
      fprintf(f, "%s%s", i ? ", " : "", d->cols[i].name);
    fputs(") SELECT DISTINCT ON (", f);
    int k = 0;
    for (size_t i = 0; i < d->ncols; i++)
      if (d->cols[i].flags & ORCH__COL_KEY)
        fprintf(f, "%s%s", k++ ? ", " : "", d->cols[i].name);
    fputs(") ", f);
    for (size_t i = 0; i < d->ncols; i++) {
      const char *sep = i ? ", " : "";
      if (d->cols[i].type == 'T')
        fprintf(f, "%stimestamptz 'epoch' + %s * interval '1 millisecond'",
                sep, d->cols[i].name);
      else
        fprintf(f, "%s%s", sep, d->cols[i].name);
    }
    fprintf(f, " FROM orch_tmp_%d ORDER BY ", t);
    k = 0;
    for (size_t i = 0; i < d->ncols; i++)
      if (d->cols[i].flags & ORCH__COL_KEY)
        fprintf(f, "%s%s", k++ ? ", " : "", d->cols[i].name);
    if (!d->append_only) fputs(", rec_seq DESC", f);
    fputs(" ON CONFLICT (", f);
    k = 0;
    for (size_t i = 0; i < d->ncols; i++)
      if (d->cols[i].flags & ORCH__COL_KEY)
        fprintf(f, "%s%s", k++ ? ", " : "", d->cols[i].name);
    if (d->append_only) {
      fputs(") DO NOTHING", f);
    } else {
      fputs(") DO UPDATE SET ", f);
      k = 0;
      for (size_t i = 0; i < d->ncols; i++) {
        if (d->cols[i].flags & (ORCH__COL_KEY | ORCH__COL_INSERT_ONLY))
          continue;
        fprintf(f, "%s%s = EXCLUDED.%s", k++ ? ", " : "", d->cols[i].name,
                d->cols[i].name);
      }
      fprintf(f, " WHERE %s.rec_seq <= EXCLUDED.rec_seq", d->table);
    }
    fclose(f);
    if (!sql) return ORCH_ENOMEM;
    char name[32];
    snprintf(name, sizeof name, "orch_ups_%d", t);
    PGresult *r = PQprepare(p->c, name, sql, 0, NULL);
    free(sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      chomp_msg(err, errlen, "", PQerrorMessage(p->c));
      PQclear(r);
      return ORCH_ESTORE;
    }
    PQclear(r);
  }
  p->prepared = true;
  return ORCH_OK;
}

static bool cb_need(pgc *p, size_t n) {
  if (p->copylen + n <= p->copycap) return true;
  size_t cap = p->copycap ? p->copycap : 1 << 16;
  while (cap < p->copylen + n) cap *= 2;
  char *nb = realloc(p->copybuf, cap);
  if (!nb) return false;
  p->copybuf = nb;
  p->copycap = cap;
  return true;
}

/* Appends one row in COPY text format; direct: times as timestamps (for
 * the real table) rather than epoch ms (for the temporary one). */
static bool copy_row(pgc *p, const orch__row *row, bool direct) {
  const orch__rec_desc *d = &orch__rec_descs[row->type];
  for (size_t j = 0; j < d->ncols; j++) {
    const orch__val *v = &row->v[j];
    if (!cb_need(p, 40)) return false;
    if (j) p->copybuf[p->copylen++] = '\t';
    switch (v->tag) {
    case 1:
      if (direct && d->cols[j].type == 'T' && v->i >= TIME_MIN_MS &&
          v->i <= TIME_MAX_MS) {
        int64_t secs = v->i >= 0 ? v->i / 1000 : (v->i - 999) / 1000;
        int ms = (int)(v->i - secs * 1000);
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        p->copylen += (size_t)snprintf(
            p->copybuf + p->copylen, 36, "%04d-%02d-%02d %02d:%02d:%02d.%03d+00",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, ms);
      } else { /* a time outside years 1-9999 (a spool frame from
                  elsewhere) goes as its number: refused as a bad value,
                  the row alone */
        p->copylen += (size_t)snprintf(p->copybuf + p->copylen, 32,
                                       "%" PRId64, v->i);
      }
      break;
    case 2:
      if (isinf(v->f))
        p->copylen += (size_t)snprintf(p->copybuf + p->copylen, 32, "%s",
                                       v->f > 0 ? "Infinity" : "-Infinity");
      else
        p->copylen += (size_t)snprintf(p->copybuf + p->copylen, 32, "%.17g",
                                       v->f);
      break;
    case 3:
      if (!cb_need(p, 2 * (size_t)v->n + 2)) return false;
      for (uint32_t k = 0; k < v->n; k++) {
        char ch = v->s[k];
        char *o = p->copybuf + p->copylen;
        switch (ch) {
        case '\\': o[0] = '\\'; o[1] = '\\'; p->copylen += 2; break;
        case '\n': o[0] = '\\'; o[1] = 'n'; p->copylen += 2; break;
        case '\r': o[0] = '\\'; o[1] = 'r'; p->copylen += 2; break;
        case '\t': o[0] = '\\'; o[1] = 't'; p->copylen += 2; break;
        default: o[0] = ch; p->copylen++; break;
        }
      }
      break;
    default:
      p->copybuf[p->copylen++] = '\\';
      p->copybuf[p->copylen++] = 'N';
      break;
    }
  }
  if (!cb_need(p, 1)) return false;
  p->copybuf[p->copylen++] = '\n';
  return true;
}

/* Says whether a failure was about the data (W_DATA) or the database
 * (ORCH__W_RETRY), and copies its message. Data: SQLSTATE class 22 (a bad
 * value), 23 (a constraint) and 54 (a program limit: a key too long for
 * its index, a value over a size limit); such a row fails the same way on
 * every retry, so it must not hold its batch (nor the spool behind it).
 * Everything else (the connection, resources, a missing table or right)
 * keeps the rows for later. */
static int classify(pgc *p, PGresult *r, char *err, size_t errlen) {
  const char *msg = r ? PQresultErrorMessage(r) : NULL;
  if (!msg || !*msg) msg = PQerrorMessage(p->c);
  chomp_msg(err, errlen, "", msg);
  if (PQstatus(p->c) != CONNECTION_OK) return ORCH__W_RETRY;
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  if (st && (!strncmp(st, "22", 2) || !strncmp(st, "23", 2) ||
             !strncmp(st, "54", 2)))
    return W_DATA;
  return ORCH__W_RETRY;
}

static uint64_t key_hash(const orch__row *row) {
  const orch__rec_desc *d = &orch__rec_descs[row->type];
  uint64_t h = 1469598103934665603ull ^ row->type;
  for (size_t j = 0; j < d->ncols; j++) {
    if (!(d->cols[j].flags & ORCH__COL_KEY)) continue;
    const orch__val *v = &row->v[j];
    const unsigned char *b = (const unsigned char *)&v->i;
    size_t n = 8;
    if (v->tag == 3) {
      b = (const unsigned char *)v->s;
      n = v->n;
    }
    for (size_t k = 0; k < n; k++) h = (h ^ b[k]) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separator */
  }
  return h ? h : 1;
}

/* Adds h; returns true when it was already there. */
static bool seen_test_add(pgc *p, uint64_t h) {
  if (!p->seen || p->nseen > SEEN_CAP / 2) { /* start over when half full */
    if (!p->seen) p->seen = calloc(SEEN_CAP, sizeof *p->seen);
    else memset(p->seen, 0, SEEN_CAP * sizeof *p->seen);
    p->nseen = 0;
    if (!p->seen) return true; /* no memory: everything by upsert */
  }
  size_t i = (size_t)h & (SEEN_CAP - 1);
  while (p->seen[i]) {
    if (p->seen[i] == h) return true;
    i = (i + 1) & (SEEN_CAP - 1);
  }
  p->seen[i] = h;
  p->nseen++;
  return false;
}

/* Sends the buffered COPY data for the statement sql; PGRES result
 * checked; ORCH__W_OK or a classification. */
static int copy_send(pgc *p, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(p->c, sql);
  int rc = ORCH__W_OK;
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    rc = classify(p, r, err, errlen);
    PQclear(r);
    return rc;
  }
  PQclear(r);
  bool ok = true;
  for (size_t off = 0; off < p->copylen && ok;) {
    size_t chunk = p->copylen - off > (1u << 20) ? (1u << 20)
                                                 : p->copylen - off;
    ok = PQputCopyData(p->c, p->copybuf + off, (int)chunk) == 1;
    off += chunk;
  }
  if (PQputCopyEnd(p->c, ok ? NULL : "client error") != 1) ok = false;
  r = PQgetResult(p->c);
  if (!ok || PQresultStatus(r) != PGRES_COMMAND_OK)
    rc = classify(p, r, err, errlen);
  PQclear(r);
  while ((r = PQgetResult(p->c))) PQclear(r);
  return rc;
}

static bool exec_ok(pgc *p, const char *sql) {
  PGresult *r = PQexec(p->c, sql);
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  return ok;
}

/* One transaction over rows[0..n). */
static int write_tx(pgc *p, const orch__row *rows, size_t n, char *err,
                    size_t errlen) {
  PGresult *r = NULL;
  int rc = ORCH__W_OK;
  if (n > p->fresh_cap) {
    uint8_t *nf = realloc(p->fresh, n);
    if (!nf) {
      snprintf(err, errlen, "postgresql: out of memory");
      return ORCH__W_RETRY;
    }
    p->fresh = nf;
    p->fresh_cap = n;
  }
  for (size_t i = 0; i < n; i++) p->fresh[i] = !seen_test_add(p, key_hash(&rows[i]));
  r = PQexec(p->c, "BEGIN");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    rc = classify(p, r, err, errlen);
    goto fail;
  }
  PQclear(r);
  r = NULL;
  for (int t = 0; t < ORCH__REC_NTYPES; t++) {
    const orch__rec_desc *d = &orch__rec_descs[t];
    char sql[2048];
    /* 1. probably-new keys: straight into the table */
    bool direct = p->direct_off[t] == 0;
    if (p->direct_off[t]) p->direct_off[t]--;
    p->copylen = 0;
    if (direct)
      for (size_t i = 0; i < n; i++)
        if (rows[i].type == t && p->fresh[i] && !copy_row(p, &rows[i], true))
          goto oom;
    if (p->copylen > 0) {
      int o = snprintf(sql, sizeof sql, "COPY %s (", d->table);
      for (size_t j = 0; j < d->ncols && o < (int)sizeof sql; j++)
        o += snprintf(sql + o, sizeof sql - (size_t)o, "%s%s", j ? ", " : "",
                      d->cols[j].name);
      if (o < (int)sizeof sql) snprintf(sql + o, sizeof sql - (size_t)o, ") FROM STDIN");
      if (!exec_ok(p, "SAVEPOINT orch_direct")) {
        rc = classify(p, NULL, err, errlen);
        goto fail;
      }
      rc = copy_send(p, sql, err, errlen);
      if (rc == ORCH__W_OK) {
        if (!exec_ok(p, "RELEASE SAVEPOINT orch_direct")) {
          rc = classify(p, NULL, err, errlen);
          goto fail;
        }
      } else {
        if (PQstatus(p->c) != CONNECTION_OK ||
            !exec_ok(p, "ROLLBACK TO SAVEPOINT orch_direct")) {
          rc = ORCH__W_RETRY;
          goto fail;
        }
        /* a key existed (or a row is bad): upsert them all, and upsert
         * only for this type's next batches */
        direct = false;
        p->direct_off[t] = 16;
        rc = ORCH__W_OK;
      }
    }
    /* 2. the rest (or all): COPY into the temporary table, then upsert */
    p->copylen = 0;
    for (size_t i = 0; i < n; i++)
      if (rows[i].type == t && !(direct && p->fresh[i]) &&
          !copy_row(p, &rows[i], false))
        goto oom;
    if (p->copylen == 0) continue;
    snprintf(sql, sizeof sql, "COPY orch_tmp_%d FROM STDIN", t);
    rc = copy_send(p, sql, err, errlen);
    if (rc != ORCH__W_OK) goto fail;
    snprintf(sql, sizeof sql, "orch_ups_%d", t);
    r = PQexecPrepared(p->c, sql, 0, NULL, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      rc = classify(p, r, err, errlen);
      goto fail;
    }
    PQclear(r);
    r = NULL;
  }
  r = PQexec(p->c, "COMMIT");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    rc = classify(p, r, err, errlen);
    goto fail;
  }
  PQclear(r);
  return ORCH__W_OK;
oom:
  snprintf(err, errlen, "postgresql: out of memory");
  rc = ORCH__W_RETRY;
fail:
  PQclear(r);
  if (PQstatus(p->c) == CONNECTION_OK) {
    r = PQexec(p->c, "ROLLBACK");
    PQclear(r);
  }
  return rc;
}

static int pg_write(void *conn, const orch__row *rows, size_t n,
                    orch__reject_fn reject, void *ud, char *err,
                    size_t errlen) {
  pgc *p = conn;
  arm(p, 1);
  int rc = ORCH__W_OK;
  if (!p->prepared && pg_prepare(p, err, errlen) != ORCH_OK) {
    rc = ORCH__W_RETRY;
    goto out;
  }
  rc = write_tx(p, rows, n, err, errlen);
  if (rc != W_DATA) goto out;
  /* Some row is bad: find it (them) one transaction per row. */
  for (size_t i = 0; i < n; i++) {
    arm(p, 1);
    rc = write_tx(p, rows + i, 1, err, errlen);
    if (rc == W_DATA) reject(ud, i, err);
    else if (rc != ORCH__W_OK) goto out;
  }
  rc = ORCH__W_OK;
out:
  disarm(p);
  if (rc != ORCH__W_OK && watch_fired(p, err, errlen)) rc = ORCH__W_RETRY;
  return rc;
}

/* ---- queries ------------------------------------------------------------------ */

static const char *val_or_null(PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}
static int64_t i64_or_null(PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? ORCH__NULL_I64
                                  : strtoll(PQgetvalue(r, row, col), NULL, 10);
}
static char *dup_or_null(PGresult *r, int row, int col) {
  const char *s = val_or_null(r, row, col);
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static PGresult *query(pgc *p, const char *sql, const char *arg, char *err,
                       size_t errlen) {
  const char *pv[1] = {arg};
  PGresult *r = PQexecParams(p->c, sql, arg ? 1 : 0, NULL, pv, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    chomp_msg(err, errlen, "", PQerrorMessage(p->c));
    PQclear(r);
    return NULL;
  }
  return r;
}

static int q_session_steps(void *conn, const char *session_id,
                            orch__step_row_fn fn, void *ud, char *err,
                            size_t errlen) {
  pgc *p = conn;
  int rc = ORCH_OK;
  PGresult *r = query(
      p,
      "SELECT step_id, kind, status, deps::text, params::text, output, "
      "error, step_index, attempts, generation, tokens_in, tokens_out, cost "
      "FROM orch_run_steps WHERE session_id = $1::uuid "
      "ORDER BY step_index, step_id",
      session_id, err, errlen);
  if (!r) return ORCH_ESTORE;
  int n = PQntuples(r);
  for (int i = 0; i < n; i++) {
    orch__step_row row = {
        .step_id = val_or_null(r, i, 0),
        .kind = val_or_null(r, i, 1),
        .status = val_or_null(r, i, 2),
        .deps_json = val_or_null(r, i, 3),
        .params_json = val_or_null(r, i, 4),
        .output = val_or_null(r, i, 5),
        .error = val_or_null(r, i, 6),
        .step_index = atoi(PQgetvalue(r, i, 7)),
        .attempts = atoi(PQgetvalue(r, i, 8)),
        .generation = (uint32_t)strtoul(PQgetvalue(r, i, 9), NULL, 10),
        .tokens_in = i64_or_null(r, i, 10),
        .tokens_out = i64_or_null(r, i, 11),
        .cost = PQgetisnull(r, i, 12) ? NAN : strtod(PQgetvalue(r, i, 12), NULL),
    };
    if ((rc = fn(ud, &row)) != 0) break;
  }
  PQclear(r);
  if (n == 0) {
    r = query(p, "SELECT 1 FROM jr_execution_sessions WHERE session_id = $1::uuid",
              session_id, err, errlen);
    if (!r) return ORCH_ESTORE;
    if (PQntuples(r) == 0) {
      snprintf(err, errlen, "session %s: not found", session_id);
      rc = ORCH_ENOTFOUND;
    }
    PQclear(r);
  }
  return rc;
}

static int q_session_summary(void *conn, const char *session_id,
                              orch__session_info *si, char *err,
                              size_t errlen) {
  pgc *p = conn;
  long json_total = 0;
  bool found = false;
  snprintf(si->session_id, sizeof si->session_id, "%s", session_id);
  PGresult *r = query(
      p,
      "SELECT task_id, jr_name, model_tier, status, steps::text, "
      "total_tokens, to_char(created_at AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD HH24:MI:SS'), to_char(updated_at AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD HH24:MI:SS'), CASE WHEN jsonb_typeof(steps) = 'array' "
      "THEN jsonb_array_length(steps) ELSE 0 END "
      "FROM jr_execution_sessions WHERE session_id = $1::uuid",
      session_id, err, errlen);
  if (!r) return ORCH_ESTORE;
  if (PQntuples(r) > 0) {
    found = true;
    si->task_id = dup_or_null(r, 0, 0);
    si->jr_name = dup_or_null(r, 0, 1);
    si->model_tier = dup_or_null(r, 0, 2);
    si->status = dup_or_null(r, 0, 3);
    si->steps_json = dup_or_null(r, 0, 4);
    si->total_tokens = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
    snprintf(si->created_at, sizeof si->created_at, "%s", PQgetvalue(r, 0, 6));
    snprintf(si->updated_at, sizeof si->updated_at, "%s", PQgetvalue(r, 0, 7));
    json_total = atol(PQgetvalue(r, 0, 8));
  }
  PQclear(r);
  r = query(p,
            "SELECT status, count(*) FROM orch_run_steps "
            "WHERE session_id = $1::uuid GROUP BY status",
            session_id, err, errlen);
  if (!r) return ORCH_ESTORE;
  for (int i = 0; i < PQntuples(r); i++) {
    found = true;
    orch__session_info_tally(si, PQgetvalue(r, i, 0),
                             atol(PQgetvalue(r, i, 1)));
  }
  PQclear(r);
  orch__session_info_finish(si, json_total);
  if (!found) {
    snprintf(err, errlen, "session %s: not found", session_id);
    return ORCH_ENOTFOUND;
  }
  return ORCH_OK;
}

static int q_active_sessions(void *conn,
                              int (*fn)(void *ud, const orch__session_info *si),
                              void *ud, char *err, size_t errlen) {
  pgc *p = conn;
  int rc = ORCH_OK;
  PGresult *r = query(
      p,
      "SELECT session_id::text, task_id, jr_name, model_tier, status, "
      "total_steps, passed_steps, failed_steps, "
      "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "
      "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
      "FROM v_jr_active_sessions ORDER BY created_at DESC LIMIT 1000",
      NULL, err, errlen);
  if (!r) return ORCH_ESTORE;
  for (int i = 0; i < PQntuples(r); i++) {
    orch__session_info si;
    memset(&si, 0, sizeof si);
    snprintf(si.session_id, sizeof si.session_id, "%s", PQgetvalue(r, i, 0));
    si.task_id = (char *)val_or_null(r, i, 1);
    si.jr_name = (char *)val_or_null(r, i, 2);
    si.model_tier = (char *)val_or_null(r, i, 3);
    si.status = (char *)val_or_null(r, i, 4);
    si.passed = atol(PQgetvalue(r, i, 6));
    si.failed = atol(PQgetvalue(r, i, 7));
    si.total = si.passed + si.failed;
    orch__session_info_finish(&si, atol(PQgetvalue(r, i, 5)));
    snprintf(si.created_at, sizeof si.created_at, "%s", PQgetvalue(r, i, 8));
    snprintf(si.updated_at, sizeof si.updated_at, "%s", PQgetvalue(r, i, 9));
    if ((rc = fn(ud, &si)) != 0) break;
  }
  PQclear(r);
  return rc;
}

static int q_today_counts(void *conn, orch__store_today *out, char *err,
                           size_t errlen) {
  pgc *p = conn;
  PGresult *r = query(
      p,
      "SELECT count(*), count(*) FILTER (WHERE status = 'running'), "
      "count(*) FILTER (WHERE status IN ('passed', 'completed')), "
      "count(*) FILTER (WHERE status = 'failed') FROM jr_execution_sessions "
      "WHERE created_at >= date_trunc('day', now())",
      NULL, err, errlen);
  if (!r) return ORCH_ESTORE;
  out->sessions = atol(PQgetvalue(r, 0, 0));
  out->sessions_running = atol(PQgetvalue(r, 0, 1));
  out->sessions_passed = atol(PQgetvalue(r, 0, 2));
  out->sessions_failed = atol(PQgetvalue(r, 0, 3));
  PQclear(r);
  r = query(p,
            "SELECT count(*), count(*) FILTER (WHERE status = 'passed'), "
            "count(*) FILTER (WHERE status = 'failed') FROM orch_run_steps "
            "WHERE updated_at >= date_trunc('day', now())",
            NULL, err, errlen);
  if (!r) return ORCH_ESTORE;
  out->steps_total = atol(PQgetvalue(r, 0, 0));
  out->steps_passed = atol(PQgetvalue(r, 0, 1));
  out->steps_failed = atol(PQgetvalue(r, 0, 2));
  PQclear(r);
  return ORCH_OK;
}

/* The scripts whose latest event is a refusal, newest first. */
static int q_script_refusals(void *conn,
                              int (*fn)(void *ud, const orch__script_refusal *r),
                              void *ud, char *err, size_t errlen) {
  pgc *p = conn;
  int rc = ORCH_OK;
  PGresult *r = query(
      p,
      "SELECT e.module, e.file, e.error, e.runtime, e.generation, "
      "to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
      "FROM orch_script_events e WHERE e.outcome = 'refused' AND e.id = "
      "(SELECT max(l.id) FROM orch_script_events l WHERE l.file = e.file) "
      "ORDER BY e.id DESC LIMIT 100",
      NULL, err, errlen);
  if (!r) return ORCH_ESTORE;
  for (int i = 0; i < PQntuples(r); i++) {
    orch__script_refusal sr;
    memset(&sr, 0, sizeof sr);
    sr.module = val_or_null(r, i, 0);
    sr.file = val_or_null(r, i, 1);
    sr.error = val_or_null(r, i, 2);
    sr.runtime = val_or_null(r, i, 3);
    sr.generation = atol(PQgetvalue(r, i, 4));
    snprintf(sr.created_at, sizeof sr.created_at, "%s", PQgetvalue(r, i, 5));
    if ((rc = fn(ud, &sr)) != 0) break;
  }
  PQclear(r);
  return rc;
}

/* The entry points under the watchdog's deadline. */
static int pg_migrate(void *conn, int status_only, orch_report_fn report,
                      void *ud, char *err, size_t errlen) {
  pgc *p = conn;
  arm(p, 1);
  int rc = migrate_inner(p, status_only, report, ud, err, errlen);
  disarm(p);
  if (rc != ORCH_OK) watch_fired(p, err, errlen);
  return rc;
}

#define GUARDED(call)                                                        \
  do {                                                                       \
    arm(conn, 1);                                                            \
    int rc_ = (call);                                                        \
    disarm(conn);                                                            \
    if (rc_ != ORCH_OK) watch_fired(conn, err, errlen);                      \
    return rc_;                                                              \
  } while (0)

static int pg_session_steps(void *conn, const char *session_id,
                            orch__step_row_fn fn, void *ud, char *err,
                            size_t errlen) {
  GUARDED(q_session_steps(conn, session_id, fn, ud, err, errlen));
}
static int pg_session_summary(void *conn, const char *session_id,
                              orch__session_info *out, char *err,
                              size_t errlen) {
  GUARDED(q_session_summary(conn, session_id, out, err, errlen));
}
static int pg_active_sessions(void *conn,
                              int (*fn)(void *ud, const orch__session_info *si),
                              void *ud, char *err, size_t errlen) {
  GUARDED(q_active_sessions(conn, fn, ud, err, errlen));
}
static int pg_today_counts(void *conn, orch__store_today *out, char *err,
                           size_t errlen) {
  GUARDED(q_today_counts(conn, out, err, errlen));
}
static int pg_script_refusals(void *conn,
                              int (*fn)(void *ud, const orch__script_refusal *r),
                              void *ud, char *err, size_t errlen) {
  GUARDED(q_script_refusals(conn, fn, ud, err, errlen));
}

const orch__backend orch__backend_pg = {
    .name = "postgresql",
    .connect = pg_connect,
    .disconnect = pg_disconnect,
    .migrate = pg_migrate,
    .write = pg_write,
    .session_steps = pg_session_steps,
    .session_summary = pg_session_summary,
    .active_sessions = pg_active_sessions,
    .today_counts = pg_today_counts,
    .script_refusals = pg_script_refusals,
    .set_timeout = pg_set_timeout,
};
