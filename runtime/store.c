/* store.c: the record store. Records handed over by the core are encoded
 * into frames and queued (the caller never waits on the database); one
 * writer thread batches them into PostgreSQL (store_pg.c) or SQLite
 * (store_sqlite.c) and, while the database is unreachable, appends them to a
 * crash-safe spool file (length + CRC32C framing, fsync'd per batch) that it
 * replays when the database is back. Also the migrations entry point
 * (orch_migrate) and the queries resume and status need. */
#include "orch_int.h"

#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_COLS 24
#define FRAME_HDR 8                    /* u32 length, u32 CRC32C, LE */
#define MAX_FRAME (64u * 1024u * 1024u) /* larger frames are corrupt */
#define REPLAY_CHUNK (4u * 1024u * 1024u)

/* ---- record descriptions (column order = encoding order) -------------- */

#define K ORCH__COL_KEY
#define I ORCH__COL_INSERT_ONLY
static const orch__col cols_session[] = {
    {"session_id", 'u', K}, {"task_id", 't', 0},     {"jr_name", 't', 0},
    {"model_tier", 't', 0}, {"status", 't', 0},      {"steps", 'j', 0},
    {"total_tokens", 'i', 0}, {"rec_seq", 'i', 0},   {"created_at", 'T', I},
    {"updated_at", 'T', 0}};
static const orch__col cols_step[] = {
    {"session_id", 'u', K}, {"step_id", 't', K},     {"step_index", 'i', 0},
    {"kind", 't', 0},       {"deps", 'j', 0},        {"params", 'j', 0},
    {"status", 't', 0},     {"attempts", 'i', 0},    {"output", 't', 0},
    {"error", 't', 0},      {"tokens_in", 'i', 0},   {"tokens_out", 'i', 0},
    {"cost", 'f', 0},       {"generation", 'i', 0},  {"started_at", 'T', 0},
    {"finished_at", 'T', 0}, {"rec_seq", 'i', 0},    {"created_at", 'T', I},
    {"updated_at", 'T', 0}};
static const orch__col cols_reward[] = {
    {"task_id", 't', K},          {"step_number", 'i', K},
    {"step_type", 't', 0},        {"target_file", 't', 0},
    {"step_content_hash", 't', 0}, {"execution_result", 't', 0},
    {"implicit_reward", 'f', 0},  {"verified_outcome", 'f', 0},
    {"retry_decision", 't', 0},   {"execution_time_ms", 'i', 0},
    {"error_detail", 't', 0},     {"rec_seq", 'i', 0},
    {"created_at", 'T', I},       {"updated_at", 'T', 0}};
static const orch__col cols_llm[] = {
    {"session_id", 't', K}, {"step_id", 't', K},    {"attempt", 'i', K},
    {"provider", 't', 0},   {"model", 't', 0},      {"http_status", 'i', 0},
    {"outcome", 't', 0},    {"tokens_in", 'i', 0},  {"tokens_out", 'i', 0},
    {"cost", 'f', 0},       {"latency_ms", 'f', 0}, {"error", 't', 0},
    {"started_at", 'T', 0}, {"rec_seq", 'i', 0},    {"created_at", 'T', I}};
static const orch__col cols_exploration[] = {
    {"rec_key", 't', K},       {"jr_type", 't', 0},
    {"task_type", 't', 0},     {"novelty_score", 'f', 0},
    {"curiosity_bonus", 'f', 0}, {"task_outcome", 't', 0},
    {"created_at", 'T', 0}};
static const orch__col cols_participation[] = {
    {"task_id", 't', K},          {"jr_type", 't', K},
    {"joined_at", 'T', K},        {"contribution_score", 'f', 0},
    {"handoff_from", 't', 0},     {"handoff_to", 't', 0},
    {"context_preserved_score", 'f', 0}, {"rec_seq", 'i', 0},
    {"created_at", 'T', I}};
static const orch__col cols_cooperation[] = {
    {"jr_type", 't', K},           {"period_start", 'T', K},
    {"period_end", 'T', 0},        {"tasks_participated", 'i', 0},
    {"handoffs_sent", 'i', 0},     {"handoffs_received", 'i', 0},
    {"avg_context_preservation", 'f', 0}, {"cooperation_score", 'f', 0},
    {"group_reward_total", 'f', 0}, {"rec_seq", 'i', 0},
    {"created_at", 'T', I}};
static const orch__col cols_script_event[] = {
    {"rec_key", 't', K},    {"runtime", 't', 0},    {"module", 't', 0},
    {"file", 't', 0},       {"generation", 'i', 0}, {"outcome", 't', 0},
    {"error", 't', 0},      {"created_at", 'T', 0}};
#undef K
#undef I

#define DESC(t, c, a) {t, c, ORCH__ARRAY_LEN(c), a}
const orch__rec_desc orch__rec_descs[ORCH__REC_NTYPES] = {
    DESC("jr_execution_sessions", cols_session, 0),
    DESC("orch_run_steps", cols_step, 0),
    DESC("jr_step_rewards", cols_reward, 0),
    DESC("orch_llm_calls", cols_llm, 0),
    DESC("jr_exploration_log", cols_exploration, 1),
    DESC("magrpo_task_participation", cols_participation, 0),
    DESC("magrpo_cooperation_metrics", cols_cooperation, 0),
    DESC("orch_script_events", cols_script_event, 1),
};
#undef DESC

/* ---- small helpers ------------------------------------------------------ */

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t orch__store_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int orch__migrations_latest(char dialect) {
  int v = 0;
  for (size_t i = 0; i < orch__nmigrations; i++)
    if (orch__migrations[i].dialect == dialect && orch__migrations[i].version > v)
      v = orch__migrations[i].version;
  return v;
}

void orch__store_step_hash(const char *task_id, int step_number,
                           const char *step_type, const char *target_file,
                           char out[65]) {
  static const char hex[] = "0123456789abcdef";
  char num[16];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  snprintf(num, sizeof num, "%d", step_number);
  out[0] = '\0';
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx) return;
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1) {
    const char *parts[] = {task_id ? task_id : "", ":", num, ":",
                           step_type ? step_type : "", ":",
                           target_file ? target_file : ""};
    for (size_t i = 0; i < ORCH__ARRAY_LEN(parts); i++)
      EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]));
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32) {
      for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
      }
      out[64] = '\0';
    }
  }
  EVP_MD_CTX_free(ctx);
}

/* CRC32C (Castagnoli), table-driven, reflected polynomial 0x82F63B78. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t crc32c(const unsigned char *p, size_t n) {
  pthread_once(&crc_once, crc_init);
  uint32_t c = 0xFFFFFFFFu;
  while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}
static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static void put_u64(unsigned char *p, uint64_t v) {
  put_u32(p, (uint32_t)v);
  put_u32(p + 4, (uint32_t)(v >> 32));
}
static uint64_t get_u64(const unsigned char *p) {
  return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static bool is_uuid(const char *s) {
  if (!s || strlen(s) != 36) return false;
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!isxdigit((unsigned char)s[i])) {
      return false;
    }
  }
  return true;
}

/* ---- the queue, the spool, the store ----------------------------------- */

typedef struct qitem {
  struct qitem *next;
  uint32_t len;          /* payload bytes */
  unsigned char data[];  /* FRAME_HDR bytes reserved, then the payload */
} qitem;

typedef struct spool {
  char *path;
  char *base;            /* the default spool whose numbered siblings
                            (base.1 .. base.64) this one sweeps; NULL when
                            the path was given explicitly */
  int fd;                /* -1: no spool (read-only store) */
  pthread_mutex_t mu;    /* guards end, head, dirty, fd writes/truncation */
  uint64_t end;          /* bytes of whole frames in the file */
  uint64_t head;         /* replay position (frames before it are in the db) */
  uint64_t cap;          /* on the bytes waiting (end - head); the file
                            itself may grow to twice that (spool_fits) */
  bool dirty;            /* written since the last fsync */
  bool side_stuck;       /* a failed compaction left PATH.compact: no more
                            compactions this run (writer thread only) */
} spool;

struct orch__store {
  const orch__backend *be;
  char *conninfo;        /* owned copy */
  orch__store_opts o;
  bool read_only;
  /* queue: lock order q_mu before sp.mu, and st_mu is a leaf */
  pthread_mutex_t q_mu;
  pthread_cond_t q_cv;     /* writer waits for work */
  pthread_cond_t idle_cv;  /* flush waits for the writer to drain */
  qitem *q_head, *q_tail;
  size_t q_n, q_bytes;
  bool stop, writer_busy, writer_sleeping, writer_started;
  pthread_t writer;
  spool sp;
  /* counters */
  _Atomic uint64_t accepted, written, spooled, replayed, rejected, dropped;
  _Atomic int64_t seq;     /* hybrid clock for rec_seq (microseconds) */
  _Atomic uint64_t keyctr;
  char key_prefix[17];
  _Atomic uint64_t cut_bytes; /* also added to by the writer's sweep */
  atomic_int connected;
  pthread_mutex_t st_mu;   /* guards last_error */
  char last_error[256], last_drop[256];
  atomic_uint log_count, quiet_count;
};

/* Records a message for the stats (flattened to one line); drop = it
 * reports records not kept (also kept in last_drop); quiet = only every
 * 100th is logged (reconnect attempts). */
static void note(orch__store *s, bool drop, bool quiet, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void note(orch__store *s, bool drop, bool quiet, const char *fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  size_t o = 0;
  for (size_t i = 0; buf[i]; i++) { /* one line: whitespace runs to ' ' */
    char c = buf[i];
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
    if (c == ' ' && o > 0 && buf[o - 1] == ' ') continue;
    buf[o++] = c;
  }
  buf[o] = '\0';
  pthread_mutex_lock(&s->st_mu);
  memcpy(s->last_error, buf, sizeof buf);
  if (drop) memcpy(s->last_drop, buf, sizeof buf);
  pthread_mutex_unlock(&s->st_mu);
  /* Log the first few and then every 1000th, so an outage cannot flood. */
  unsigned n = quiet ? atomic_fetch_add(&s->quiet_count, 1)
                     : atomic_fetch_add(&s->log_count, 1);
  if (quiet ? n % 100 == 0 : (n < 20 || n % 1000 == 0))
    fprintf(stderr, "orchestrate: store: %s\n", buf);
}
#define set_error(s, ...) note((s), false, false, __VA_ARGS__)
#define set_drop(s, ...) note((s), true, false, __VA_ARGS__)

static int64_t next_seq(orch__store *s) {
  int64_t now = (int64_t)orch__store_wall_ms() * 1000;
  int64_t cur = atomic_load(&s->seq);
  for (;;) {
    int64_t nx = now > cur ? now : cur + 1;
    if (atomic_compare_exchange_weak(&s->seq, &cur, nx)) return nx;
  }
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct enc {
  unsigned char *p;
  size_t len, cap;
  bool oom;
} enc;

static void enc_need(enc *e, size_t n) {
  if (e->oom || e->len + n <= e->cap) return;
  size_t cap = e->cap ? e->cap : 256;
  while (cap < e->len + n) cap *= 2;
  unsigned char *p = realloc(e->p, cap);
  if (!p) {
    e->oom = true;
    return;
  }
  e->p = p;
  e->cap = cap;
}
static void enc_byte(enc *e, unsigned char b) {
  enc_need(e, 1);
  if (!e->oom) e->p[e->len++] = b;
}
/* Text goes to the database as UTF-8: PostgreSQL refuses anything else (a
 * tool's binary or Latin-1 output would lose the step's whole record), so
 * a byte that does not start a valid sequence is stored as U+FFFD. */
static void enc_text(enc *e, const char *s) {
  if (!s) {
    enc_byte(e, 0);
    return;
  }
  size_t n = strlen(s), bad;
  if (!orch__utf8_valid(s, n, &bad)) {
    char *fixed = orch__utf8_repair(s, n);
    if (!fixed) {
      e->oom = true;
      return;
    }
    enc_text(e, fixed);
    free(fixed);
    return;
  }
  if (n > MAX_FRAME) n = MAX_FRAME; /* cut; the frame check refuses it */
  enc_need(e, 5 + n);
  if (e->oom) return;
  e->p[e->len++] = 3;
  put_u32(e->p + e->len, (uint32_t)n);
  memcpy(e->p + e->len + 4, s, n);
  e->len += 4 + n;
}

/* A row key unique to this store: its random prefix and a counter. */
static void enc_new_key(orch__store *s, enc *e) {
  char key[48];
  snprintf(key, sizeof key, "%s-%" PRIu64, s->key_prefix,
           (uint64_t)atomic_fetch_add(&s->keyctr, 1));
  enc_text(e, key);
}

static void enc_int(enc *e, int64_t v) {
  if (v == ORCH__NULL_I64) {
    enc_byte(e, 0);
    return;
  }
  enc_need(e, 9);
  if (e->oom) return;
  e->p[e->len++] = 1;
  put_u64(e->p + e->len, (uint64_t)v);
  e->len += 8;
}
static void enc_time(enc *e, int64_t ms) {
  enc_int(e, ms == 0 ? ORCH__NULL_I64 : ms);
}
static void enc_real(enc *e, double d) {
  if (isnan(d)) {
    enc_byte(e, 0);
    return;
  }
  uint64_t u;
  memcpy(&u, &d, 8);
  enc_need(e, 9);
  if (e->oom) return;
  e->p[e->len++] = 2;
  put_u64(e->p + e->len, u);
  e->len += 8;
}

static const char *or_default(const char *s, const char *d) {
  return s ? s : d;
}

/* Encodes rec as [type][ncols][values...]. Returns ORCH_EINVAL when a
 * required field is missing. */
static int encode(orch__store *s, const orch__rec *rec, enc *e) {
  int64_t now = orch__store_wall_ms();
  enc_byte(e, (unsigned char)rec->type);
  if (rec->type < 0 || rec->type >= ORCH__REC_NTYPES) return ORCH_EINVAL;
  enc_byte(e, (unsigned char)orch__rec_descs[rec->type].ncols);
  switch (rec->type) {
  case ORCH__REC_SESSION: {
    const orch__rec_session *r = &rec->u.session;
    if (!is_uuid(r->session_id)) return ORCH_EINVAL;
    char id[37];
    for (int i = 0; i < 37; i++) id[i] = (char)tolower((unsigned char)r->session_id[i]);
    enc_text(e, id);
    enc_text(e, r->task_id);
    enc_text(e, r->jr_name);
    enc_text(e, r->model_tier);
    enc_text(e, or_default(r->status, "pending"));
    enc_text(e, or_default(r->steps_json, "[]"));
    enc_int(e, r->total_tokens == ORCH__NULL_I64 ? 0 : r->total_tokens);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    enc_time(e, now);
    break;
  }
  case ORCH__REC_STEP: {
    const orch__rec_step *r = &rec->u.step;
    if (!is_uuid(r->session_id) || !r->step_id || !r->status)
      return ORCH_EINVAL;
    char id[37];
    for (int i = 0; i < 37; i++) id[i] = (char)tolower((unsigned char)r->session_id[i]);
    enc_text(e, id);
    enc_text(e, r->step_id);
    enc_int(e, r->step_index);
    enc_text(e, r->kind);
    enc_text(e, or_default(r->deps_json, "[]"));
    enc_text(e, r->params_json);
    enc_text(e, r->status);
    enc_int(e, r->attempts);
    enc_text(e, r->output);
    enc_text(e, r->error);
    enc_int(e, r->tokens_in);
    enc_int(e, r->tokens_out);
    enc_real(e, r->cost);
    enc_int(e, (int64_t)r->generation);
    enc_time(e, r->started_ms == ORCH__NULL_I64 ? 0 : r->started_ms);
    enc_time(e, r->finished_ms == ORCH__NULL_I64 ? 0 : r->finished_ms);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    enc_time(e, now);
    break;
  }
  case ORCH__REC_REWARD: {
    const orch__rec_reward *r = &rec->u.reward;
    if (!r->task_id) return ORCH_EINVAL;
    char hash[65];
    orch__store_step_hash(r->task_id, r->step_number, r->step_type,
                          r->target_file, hash);
    enc_text(e, r->task_id);
    enc_int(e, r->step_number);
    enc_text(e, r->step_type);
    enc_text(e, r->target_file);
    enc_text(e, hash[0] ? hash : NULL);
    enc_text(e, or_default(r->execution_result, "pending"));
    enc_real(e, r->implicit_reward);
    enc_real(e, r->verified_outcome);
    enc_text(e, r->retry_decision);
    enc_int(e, r->execution_time_ms);
    enc_text(e, r->error_detail);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    enc_time(e, now);
    break;
  }
  case ORCH__REC_LLM_CALL: {
    const orch__rec_llm_call *r = &rec->u.llm_call;
    enc_text(e, or_default(r->session_id, ""));
    enc_text(e, or_default(r->step_id, ""));
    enc_int(e, r->attempt);
    enc_text(e, r->provider);
    enc_text(e, r->model);
    enc_int(e, r->http_status ? r->http_status : ORCH__NULL_I64);
    enc_text(e, r->outcome);
    enc_int(e, r->tokens_in);
    enc_int(e, r->tokens_out);
    enc_real(e, r->cost);
    enc_real(e, r->latency_ms);
    enc_text(e, r->error);
    enc_time(e, r->started_ms == ORCH__NULL_I64 ? 0 : r->started_ms);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    break;
  }
  case ORCH__REC_EXPLORATION: {
    const orch__rec_exploration *r = &rec->u.exploration;
    enc_new_key(s, e);
    enc_text(e, r->jr_type);
    enc_text(e, r->task_type);
    enc_real(e, r->novelty_score);
    enc_real(e, r->curiosity_bonus);
    enc_text(e, r->task_outcome);
    enc_time(e, now);
    break;
  }
  case ORCH__REC_SCRIPT_EVENT: {
    const orch__rec_script_event *r = &rec->u.script_event;
    if (!r->module || !r->file || !r->outcome) return ORCH_EINVAL;
    enc_new_key(s, e);
    enc_text(e, r->runtime);
    enc_text(e, r->module);
    enc_text(e, r->file);
    enc_int(e, r->generation);
    enc_text(e, r->outcome);
    enc_text(e, r->error);
    enc_time(e, now);
    break;
  }
  case ORCH__REC_PARTICIPATION: {
    const orch__rec_participation *r = &rec->u.participation;
    if (!r->task_id || !r->jr_type) return ORCH_EINVAL;
    enc_text(e, r->task_id);
    enc_text(e, r->jr_type);
    enc_time(e, r->joined_ms > 0 ? r->joined_ms : now);
    enc_real(e, r->contribution_score);
    enc_text(e, r->handoff_from);
    enc_text(e, r->handoff_to);
    enc_real(e, r->context_preserved_score);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    break;
  }
  case ORCH__REC_COOPERATION: {
    const orch__rec_cooperation *r = &rec->u.cooperation;
    if (!r->jr_type || r->period_start_ms <= 0) return ORCH_EINVAL;
    enc_text(e, r->jr_type);
    enc_time(e, r->period_start_ms);
    enc_time(e, r->period_end_ms == ORCH__NULL_I64 ? 0 : r->period_end_ms);
    enc_int(e, r->tasks_participated);
    enc_int(e, r->handoffs_sent);
    enc_int(e, r->handoffs_received);
    enc_real(e, r->avg_context_preservation);
    enc_real(e, r->cooperation_score);
    enc_real(e, r->group_reward_total);
    enc_int(e, next_seq(s));
    enc_time(e, now);
    break;
  }
  default:
    return ORCH_EINVAL;
  }
  return e->oom ? ORCH_ENOMEM : ORCH_OK;
}

/* Decodes one payload into row/vals (vals has MAX_COLS room). Pointers
 * refer into p. 0 on success, -1 when malformed. */
static int decode(const unsigned char *p, size_t n, orch__row *row,
                  orch__val *vals) {
  if (n < 2 || p[0] >= ORCH__REC_NTYPES) return -1;
  const orch__rec_desc *d = &orch__rec_descs[p[0]];
  if (p[1] != d->ncols) return -1;
  size_t off = 2;
  for (size_t c = 0; c < d->ncols; c++) {
    orch__val *v = &vals[c];
    memset(v, 0, sizeof *v);
    if (off >= n) return -1;
    v->tag = p[off++];
    switch (v->tag) {
    case 0: break;
    case 1:
      if (off + 8 > n) return -1;
      v->i = (int64_t)get_u64(p + off);
      off += 8;
      break;
    case 2: {
      if (off + 8 > n) return -1;
      uint64_t u = get_u64(p + off);
      memcpy(&v->f, &u, 8);
      off += 8;
      break;
    }
    case 3:
      if (off + 4 > n) return -1;
      v->n = get_u32(p + off);
      off += 4;
      if (v->n > n - off) return -1;
      v->s = (const char *)p + off;
      off += v->n;
      break;
    default: return -1;
    }
  }
  if (off != n) return -1;
  row->type = p[0];
  row->v = vals;
  return 0;
}

/* ---- spool -------------------------------------------------------------- */

/* Checks the frames of fd from offset 0 and sets *good to the end of the
 * last whole frame before the first short, oversized or corrupt one (a
 * torn write, or bytes that are not ours). A whole frame whose payload does
 * not decode (its CRC is right: written whole, by a build with other
 * records) is kept: the frames after it are good, and replay drops it alone,
 * counted. ORCH_OK or ORCH_ENOMEM. */
static int spool_scan(int fd, uint64_t size, uint64_t *good) {
  unsigned char *buf = NULL;
  size_t bufcap = 0;
  uint64_t pos = 0;
  int rc = ORCH_OK;
  while (pos + FRAME_HDR <= size) {
    unsigned char hdr[FRAME_HDR];
    if (pread(fd, hdr, FRAME_HDR, (off_t)pos) != FRAME_HDR) break;
    uint32_t len = get_u32(hdr), crc = get_u32(hdr + 4);
    if (len == 0 || len > MAX_FRAME || pos + FRAME_HDR + len > size) break;
    if (len > bufcap) {
      unsigned char *nb = realloc(buf, len);
      if (!nb) {
        rc = ORCH_ENOMEM;
        break;
      }
      buf = nb;
      bufcap = len;
    }
    if (pread(fd, buf, len, (off_t)(pos + FRAME_HDR)) != (ssize_t)len) break;
    if (crc32c(buf, len) != crc) break;
    pos += FRAME_HDR + len;
  }
  free(buf);
  *good = pos;
  return rc;
}

/* Opens (creating) the spool, locks it against other processes, checks
 * every frame and cuts a torn or corrupt tail. */
static int spool_open(orch__store *s, const char *path, char *err,
                      size_t errlen) {
  spool *sp = &s->sp;
  int rc = ORCH_OK;
  sp->path = orch__strdup(path);
  if (!sp->path) return ORCH_ENOMEM;
  sp->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (sp->fd < 0)
    return orch__err(err, errlen, ORCH_EIO, "spool %s: %s", path,
                     strerror(errno));
  if (flock(sp->fd, LOCK_EX | LOCK_NB) != 0) {
    rc = orch__err(err, errlen, ORCH_ESTATE,
                   "spool %s is in use by another process (set another "
                   "spool path)",
                   path);
    goto done;
  }
  struct stat st;
  if (fstat(sp->fd, &st) != 0) {
    rc =
        orch__err(err, errlen, ORCH_EIO, "spool %s: %s", path, strerror(errno));
    goto done;
  }
  uint64_t size = (uint64_t)st.st_size, pos = 0;
  rc = spool_scan(sp->fd, size, &pos);
  if (rc != ORCH_OK) goto done;
  if (pos < size) {
    s->cut_bytes = size - pos;
    if (ftruncate(sp->fd, (off_t)pos) != 0) {
      rc = orch__err(err, errlen, ORCH_EIO, "spool %s: cutting torn tail: %s",
                     path, strerror(errno));
      goto done;
    }
    fsync(sp->fd);
    fprintf(stderr,
            "orchestrate: store: spool %s: cut %" PRIu64
            " bytes of torn or corrupt tail at offset %" PRIu64 "\n",
            path, size - pos, pos);
  }
  sp->end = pos;
  sp->head = 0;
done:
  if (rc != ORCH_OK && sp->fd >= 0) {
    close(sp->fd);
    sp->fd = -1;
  }
  return rc;
}

/* Whether more bytes of frames fit: the bytes waiting for replay (end -
 * head) stay under the cap, and the file (replayed frames not yet
 * compacted away included) under twice the cap. sp->mu held. */
static bool spool_fits(const spool *sp, uint64_t more) {
  uint64_t file_max = sp->cap > UINT64_MAX / 2 ? UINT64_MAX : 2 * sp->cap;
  return sp->end - sp->head + more <= sp->cap && sp->end + more <= file_max;
}

/* Appends the frames of a list of queue items in as few writes as it can.
 * Frames past the cap are not written. Returns how many frames (from the
 * front of the list) are now whole in the file; *failed is set when a
 * write failed (disk full, file too large): the file is cut back to the
 * last whole frame. */
static size_t spool_append(orch__store *s, qitem *list, bool *failed) {
  spool *sp = &s->sp;
  size_t kept = 0;
  *failed = false;
  pthread_mutex_lock(&sp->mu);
  uint64_t end0 = sp->end, size = 0, total = 0;
  size_t cnt = 0;
  for (qitem *it = list; it; it = it->next) {
    uint64_t fl = FRAME_HDR + (uint64_t)it->len;
    if (!spool_fits(sp, size + fl)) break;
    put_u32(it->data, it->len);
    put_u32(it->data + 4, crc32c(it->data + FRAME_HDR, it->len));
    size += fl;
    cnt++;
  }
  /* gather into iovecs in slices so large batches need no big copy */
  qitem *it = list;
  size_t left = cnt;
  while (left > 0) {
    struct iovec iov[64];
    int niov = 0, first = 0;
    size_t bytes = 0, done_b = 0;
    for (; it && left > 0 && niov < 64; it = it->next, left--, niov++) {
      iov[niov].iov_base = it->data;
      iov[niov].iov_len = FRAME_HDR + it->len;
      bytes += FRAME_HDR + it->len;
    }
    while (done_b < bytes) {
      ssize_t w = writev(sp->fd, iov + first, niov - first);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        int e = w < 0 ? errno : ENOSPC;
        /* keep the whole frames that made it, cut the partial one */
        uint64_t keep = 0;
        kept = 0;
        for (qitem *q = list; q; q = q->next) {
          uint64_t fl = FRAME_HDR + (uint64_t)q->len;
          if (keep + fl > total) break;
          keep += fl;
          kept++;
        }
        if (ftruncate(sp->fd, (off_t)(end0 + keep)) != 0) {
          /* the open-time scan cuts it then */
        }
        sp->end = end0 + keep;
        sp->dirty = true;
        *failed = true;
        set_error(s, "spool %s: write failed: %s", sp->path, strerror(e));
        goto done;
      }
      done_b += (size_t)w;
      total += (uint64_t)w;
      size_t adv = (size_t)w;
      while (first < niov && adv >= iov[first].iov_len) {
        adv -= iov[first].iov_len;
        first++;
      }
      if (first < niov) {
        iov[first].iov_base = (char *)iov[first].iov_base + adv;
        iov[first].iov_len -= adv;
      }
    }
  }
  sp->end = end0 + size;
  if (cnt) sp->dirty = true;
  kept = cnt;
done:
  pthread_mutex_unlock(&sp->mu);
  return kept;
}

static void spool_sync(orch__store *s) {
  spool *sp = &s->sp;
  pthread_mutex_lock(&sp->mu);
  bool dirty = sp->dirty;
  sp->dirty = false;
  pthread_mutex_unlock(&sp->mu);
  if (dirty && fdatasync(sp->fd) != 0)
    set_error(s, "spool %s: fsync: %s", sp->path, strerror(errno));
}

static uint64_t spool_pending(orch__store *s) {
  if (s->sp.fd < 0) return 0;
  pthread_mutex_lock(&s->sp.mu);
  uint64_t n = s->sp.end - s->sp.head;
  pthread_mutex_unlock(&s->sp.mu);
  return n;
}

/* Appends the whole frames of another spool file (fd, locked by us; its
 * frames are checked first and a torn tail is left out) to ours, in slices
 * of whole frames so that puts spilling meanwhile interleave between them,
 * then fsyncs ours. ORCH_OK when every good frame is now in our spool (the
 * caller may then empty the source: a crash before that only means the
 * frames are replayed twice, which the upserts and log keys absorb),
 * ORCH_ELIMIT when they do not fit under our cap (force: the cap is not
 * applied, for frames that must not be dropped), ORCH_EIO, ORCH_ENOMEM. */
static int spool_adopt(orch__store *s, int fd, const char *path,
                       bool force) {
  spool *sp = &s->sp;
  struct stat st;
  if (fstat(fd, &st) != 0) return ORCH_EIO;
  uint64_t size = (uint64_t)st.st_size, good = 0, pos = 0;
  int rc = spool_scan(fd, size, &good);
  if (rc != ORCH_OK) return rc;
  if (good < size) {
    s->cut_bytes += size - good;
    fprintf(stderr,
            "orchestrate: store: spool %s: %" PRIu64
            " bytes of torn or corrupt tail at offset %" PRIu64 " left out\n",
            path, size - good, good);
  }
  size_t cap = good > REPLAY_CHUNK ? REPLAY_CHUNK : (size_t)good;
  unsigned char *buf = cap ? malloc(cap) : NULL;
  if (cap && !buf) return ORCH_ENOMEM;
  while (pos < good) {
    size_t want = good - pos > cap ? cap : (size_t)(good - pos);
    if (pread(fd, buf, want, (off_t)pos) != (ssize_t)want) {
      rc = ORCH_EIO;
      break;
    }
    size_t n = 0; /* whole frames in buf */
    while (n + FRAME_HDR <= want &&
           n + FRAME_HDR + get_u32(buf + n) <= want)
      n += FRAME_HDR + get_u32(buf + n);
    if (n == 0) { /* one frame larger than the slice */
      size_t fl = FRAME_HDR + (size_t)get_u32(buf);
      unsigned char *nb = realloc(buf, fl);
      if (!nb) {
        rc = ORCH_ENOMEM;
        break;
      }
      buf = nb;
      cap = fl;
      continue;
    }
    pthread_mutex_lock(&sp->mu);
    if (!force && !spool_fits(sp, n)) {
      rc = ORCH_ELIMIT;
    } else {
      size_t done_b = 0;
      while (done_b < n) {
        ssize_t w = write(sp->fd, buf + done_b, n - done_b);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done_b += (size_t)w;
      }
      if (done_b < n) { /* cut the partial slice */
        if (ftruncate(sp->fd, (off_t)sp->end) != 0) {
          /* the open-time scan cuts it then */
        }
        rc = ORCH_EIO;
      } else {
        sp->end += n;
        sp->dirty = true;
      }
    }
    pthread_mutex_unlock(&sp->mu);
    if (rc != ORCH_OK) break;
    pos += n;
  }
  free(buf);
  if (rc == ORCH_OK && fdatasync(sp->fd) != 0) rc = ORCH_EIO;
  return rc;
}

/* A compaction's side file: PATH.compact beside the spool PATH. */
static char *side_path(const char *path) {
  return orch__asprintf("%s.compact", path);
}

/* Copies bytes [from, to) of in to the end of out (opened O_APPEND or
 * positioned there) through buf (REPLAY_CHUNK bytes). */
static bool copy_range(int in, uint64_t from, uint64_t to, int out,
                       unsigned char *buf) {
  while (from < to) {
    size_t n = to - from > REPLAY_CHUNK ? REPLAY_CHUNK : (size_t)(to - from);
    if (pread(in, buf, n, (off_t)from) != (ssize_t)n) return false;
    for (size_t done_b = 0; done_b < n;) {
      ssize_t w = write(out, buf + done_b, n - done_b);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        if (w == 0) errno = ENOSPC;
        return false;
      }
      done_b += (size_t)w;
    }
    from += n;
  }
  return true;
}

/* Makes a directory entry made in path's directory durable. */
static void fsync_dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? orch__asprintf("%.*s", (int)(slash - path + 1), path)
                    : orch__strdup(".");
  if (!dir) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}

/* Recovers from a compaction that a crash interrupted: the side file of
 * main_path (whose lock we hold) has every frame that waited when it began
 * (fsynced before the spool was cut), the spool some, all or none of them.
 * Its good frames are appended to our spool whatever the cap (a frame that
 * is now there twice is replayed twice: the upserts absorb it), then it is
 * removed. ORCH_OK also when there is no side file. */
static int spool_take_side(orch__store *s, const char *main_path) {
  char *side = side_path(main_path);
  if (!side) return ORCH_ENOMEM;
  int rc = ORCH_OK;
  int fd = open(side, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) rc = ORCH_EIO;
    goto done;
  }
  rc = spool_adopt(s, fd, side, true);
  if (rc == ORCH_OK) {
    unlink(side);
    fprintf(stderr,
            "orchestrate: store: spool %s: recovered the frames of an "
            "interrupted compaction (%s)\n",
            s->sp.path, side);
  }
done:
  if (fd >= 0) close(fd);
  free(side);
  return rc;
}

/* Moves the frames still waiting for replay to the front of the spool once
 * the replayed ones before them are many (at least a quarter of the cap, or
 * 64 MiB, and at least as many bytes as wait), so that a spool the writer
 * never quite catches up with (a queue that keeps spilling while the
 * database is up) does not grow to its cap. Writer thread only.
 *
 * Crash-safe in three steps: (1) copy [head, end) to PATH.compact and
 * fsync it and its directory entry; (2) under the spool mutex, add what
 * puts appended meanwhile to the side file, cut the spool to zero, copy
 * the side file back, and set head = 0; (3) fsync the spool, remove the
 * side file. A crash before (2) leaves the spool whole (the replayed
 * frames are replayed again at open: the upserts absorb them); during or
 * after it, the side file holds every frame that had been fsynced, and
 * spool_take_side appends it at the next open. Puts that spill wait for
 * the mutex during (2): a copy of at most the waiting bytes, rare. */
static void spool_compact(orch__store *s) {
  spool *sp = &s->sp;
  if (sp->side_stuck) return;
  uint64_t min_head = sp->cap / 4 < (64u << 20) ? sp->cap / 4 : (64u << 20);
  pthread_mutex_lock(&sp->mu);
  uint64_t head = sp->head, end0 = sp->end;
  pthread_mutex_unlock(&sp->mu);
  if (head == 0 || head < min_head || end0 - head > head) return;
  char *side = side_path(sp->path);
  unsigned char *buf = malloc(REPLAY_CHUNK);
  int fd = -1, e = 0;
  bool cut = false, ok = false;
  uint64_t len = 0;
  if (!side || !buf) goto done;
  fd = open(side, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || !copy_range(sp->fd, head, end0, fd, buf) ||
      fdatasync(fd) != 0) {
    e = errno;
    goto done;
  }
  fsync_dir_of(side);
  pthread_mutex_lock(&sp->mu);
  uint64_t end1 = sp->end;
  len = end1 - head;
  if (!copy_range(sp->fd, end0, end1, fd, buf) || ftruncate(sp->fd, 0) != 0) {
    e = errno;
    pthread_mutex_unlock(&sp->mu);
    goto done;
  }
  cut = true;
  ok = copy_range(fd, 0, len, sp->fd, buf); /* O_APPEND: lands at 0 */
  if (ok) {
    sp->head = 0;
    sp->end = len;
  } else { /* the side file keeps them for the next open */
    e = errno;
    if (ftruncate(sp->fd, 0) != 0) {
      /* the open-time scan cuts a partial frame */
    }
    sp->head = sp->end = 0;
  }
  sp->dirty = true;
  pthread_mutex_unlock(&sp->mu);
  if (ok && fdatasync(sp->fd) != 0) {
    e = errno;
    ok = false;
  }
done:
  if (fd >= 0) close(fd);
  if (side && (ok || !cut)) {
    unlink(side); /* done, or the spool was never touched */
  } else if (cut) {
    sp->side_stuck = true;
    set_error(s, "spool %s: compaction failed (%s): the %" PRIu64
              " bytes that waited are kept in %s and replayed at the next "
              "open", sp->path, strerror(e), len, side);
  }
  free(side);
  free(buf);
}

/* Takes over what other processes left in the default spool and its
 * numbered siblings: each one that has content and that no live process
 * holds (flock, non-blocking) is appended to ours (spool_adopt) and then
 * emptied. Files are emptied, never removed: another process may have
 * opened the name already and would lock a file no one else sees. */
static void spool_sweep(orch__store *s) {
  spool *sp = &s->sp;
  if (!sp->base || sp->fd < 0) return;
  for (int k = 0; k <= 64; k++) {
    char *p = k ? orch__asprintf("%s.%d", sp->base, k) : orch__strdup(sp->base);
    if (!p) return;
    struct stat st, side;
    int fd = -1;
    if (strcmp(p, sp->path) == 0 || stat(p, &st) != 0) goto next;
    char *ps = side_path(p); /* an interrupted compaction's frames */
    bool has_side = ps && stat(ps, &side) == 0;
    free(ps);
    if (st.st_size == 0 && !has_side) goto next;
    fd = open(p, O_RDWR | O_CLOEXEC);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) goto next; /* live */
    int rc = spool_adopt(s, fd, p, false);
    if (rc == ORCH_OK && has_side) rc = spool_take_side(s, p);
    if (rc == ORCH_OK) {
      if (ftruncate(fd, 0) != 0)
        set_error(s, "spool %s: emptying after takeover: %s", p,
                  strerror(errno));
      if (st.st_size > 0)
        fprintf(stderr,
                "orchestrate: store: spool %s: took over %lld bytes another "
                "process left\n",
                p, (long long)st.st_size);
    } else {
      set_error(s, "spool %s: left for later, taking it over failed: %s", p,
                rc == ORCH_ELIMIT ? "our spool is full" : orch_strerror(rc));
    }
  next:
    if (fd >= 0) close(fd); /* releases the lock */
    free(p);
  }
}

/* ---- the writer thread -------------------------------------------------- */

typedef struct wbatch {
  orch__row *rows;
  orch__val *vals;
  size_t n, cap;
  size_t nrejected;
} wbatch;

typedef struct writer {
  orch__store *s;
  void *conn;
  int64_t next_try_ns;
  unsigned backoff_ms;
  wbatch b;
  unsigned char *rbuf; /* replay read buffer */
  size_t rcap;
} writer;

static void on_reject(void *ud, size_t row, const char *msg) {
  writer *w = ud;
  orch__store *s = w->s;
  w->b.nrejected++;
  atomic_fetch_add(&s->rejected, 1);
  atomic_fetch_add(&s->dropped, 1);
  const char *table = row < w->b.n ? orch__rec_descs[w->b.rows[row].type].table
                                   : "?";
  set_drop(s, "record refused by the database (%s), dropped: %s", table,
            msg);
}

static void w_disconnect(writer *w) {
  if (!w->conn) return;
  w->s->be->disconnect(w->conn);
  w->conn = NULL;
  atomic_store(&w->s->connected, 0);
}

static void w_backoff(writer *w) {
  unsigned max = w->s->o.backoff_max_ms;
  w->backoff_ms = w->backoff_ms ? w->backoff_ms * 2 : 100;
  if (w->backoff_ms > max) w->backoff_ms = max;
  w->next_try_ns = mono_ns() + (int64_t)w->backoff_ms * 1000000;
}

static void w_try_connect(writer *w) {
  orch__store *s = w->s;
  char err[256] = "";
  if (w->conn || mono_ns() < w->next_try_ns) return;
  void *c = NULL;
  if (s->be->connect(&c, s->conninfo, err, sizeof err) != ORCH_OK) {
    note(s, false, true, "database unavailable (retrying): %s", err);
    w_backoff(w);
    return;
  }
  if (s->be->set_timeout) s->be->set_timeout(c, s->o.timeout_ms);
  if (!s->o.no_migrate &&
      s->be->migrate(c, 0, NULL, NULL, err, sizeof err) != ORCH_OK) {
    set_error(s, "migrations failed (retrying): %s", err);
    s->be->disconnect(c);
    w_backoff(w);
    return;
  }
  w->conn = c;
  w->backoff_ms = 0;
  atomic_store(&s->connected, 1);
}

static int batch_add(wbatch *b, const unsigned char *p, size_t n) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    orch__row *r = realloc(b->rows, cap * sizeof *r);
    if (!r) return ORCH_ENOMEM;
    b->rows = r;
    orch__val *v = realloc(b->vals, cap * MAX_COLS * sizeof *v);
    if (!v) return ORCH_ENOMEM;
    b->vals = v;
    /* rows point into vals: fix them after the move */
    for (size_t i = 0; i < b->n; i++) b->rows[i].v = b->vals + i * MAX_COLS;
    b->cap = cap;
  }
  if (decode(p, n, &b->rows[b->n], b->vals + b->n * MAX_COLS) != 0)
    return ORCH_EINVAL;
  b->n++;
  return ORCH_OK;
}

/* Writes w->b; ORCH__W_OK or ORCH__W_RETRY (then disconnected). */
static int w_write(writer *w) {
  orch__store *s = w->s;
  char err[256] = "";
  w->b.nrejected = 0;
  if (w->b.n == 0) return ORCH__W_OK;
  if (!w->conn) return ORCH__W_RETRY;
  int rc = s->be->write(w->conn, w->b.rows, w->b.n, on_reject, w, err,
                        sizeof err);
  if (rc != ORCH__W_OK) {
    set_error(s, "database write failed, spooling (retrying): %s", err);
    w_disconnect(w);
    w_backoff(w);
    return ORCH__W_RETRY;
  }
  return ORCH__W_OK;
}

static void w_spool(writer *w, qitem *list, size_t n) {
  orch__store *s = w->s;
  bool failed;
  size_t kept = spool_append(s, list, &failed);
  atomic_fetch_add(&s->spooled, kept);
  if (kept < n) {
    atomic_fetch_add(&s->dropped, n - kept);
    if (!failed)
      set_drop(s, "spool %s is full (cap %" PRIu64 " bytes): %zu records "
                "dropped", s->sp.path, s->sp.cap, n - kept);
    else
      set_drop(s, "spool write failed: %zu records dropped", n - kept);
  }
}

/* Replays up to one batch from the spool head. */
static void w_replay(writer *w) {
  orch__store *s = w->s;
  spool *sp = &s->sp;
  pthread_mutex_lock(&sp->mu);
  uint64_t head = sp->head, end = sp->end;
  pthread_mutex_unlock(&sp->mu);
  if (head >= end || !w->conn) return;
  size_t want = end - head > REPLAY_CHUNK ? REPLAY_CHUNK : (size_t)(end - head);
  if (want > w->rcap) {
    unsigned char *nb = realloc(w->rbuf, want);
    if (!nb) return;
    w->rbuf = nb;
    w->rcap = want;
  }
  ssize_t got = pread(sp->fd, w->rbuf, want, (off_t)head);
  if (got < FRAME_HDR) return;
  size_t off = 0, unreadable = 0;
  uint64_t first_bad = 0;
  w->b.n = 0;
  while (w->b.n < s->o.batch && off + FRAME_HDR <= (size_t)got) {
    uint32_t len = get_u32(w->rbuf + off);
    if (off + FRAME_HDR + len > (size_t)got) {
      if (off == 0) { /* one frame larger than the chunk */
        if (len > MAX_FRAME) break;
        unsigned char *nb = realloc(w->rbuf, FRAME_HDR + (size_t)len);
        if (!nb) return;
        w->rbuf = nb;
        w->rcap = FRAME_HDR + (size_t)len;
        got = pread(sp->fd, w->rbuf, w->rcap, (off_t)head);
        if (got != (ssize_t)w->rcap) return;
        continue;
      }
      break;
    }
    int brc = batch_add(&w->b, w->rbuf + off + FRAME_HDR, len);
    if (brc == ORCH_ENOMEM) break; /* this frame again next round */
    if (brc != ORCH_OK && unreadable++ == 0) first_bad = head + off;
    off += FRAME_HDR + len;
  }
  if (off == 0) return;
  if (w_write(w) != ORCH__W_OK) return; /* the same frames next round */
  atomic_fetch_add(&s->replayed, w->b.n - w->b.nrejected);
  if (unreadable) { /* whole frames (CRC right) that do not decode */
    atomic_fetch_add(&s->dropped, unreadable);
    set_drop(s, "spool %s: %zu frame(s) from offset %" PRIu64 " hold no "
              "record this build can read (another version's?), dropped",
              sp->path, unreadable, first_bad);
  }
  pthread_mutex_lock(&sp->mu);
  sp->head = head + off;
  if (sp->head == sp->end) { /* all replayed: start the file over */
    if (ftruncate(sp->fd, 0) == 0) sp->end = sp->head = 0;
  }
  pthread_mutex_unlock(&sp->mu);
}

static void *writer_main(void *arg) {
  writer w;
  memset(&w, 0, sizeof w);
  w.s = arg;
  orch__store *s = w.s;
  /* sibling spools are swept every 100 ticks (5 s) while connected */
  const int64_t sweep_ns = (int64_t)s->o.flush_ms * 100 * 1000000;
  int64_t next_sweep = mono_ns() + sweep_ns;
  for (;;) {
    pthread_mutex_lock(&s->q_mu);
    if (!s->q_head && !s->stop) {
      s->writer_busy = false;
      pthread_cond_broadcast(&s->idle_cv);
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t ns = ts.tv_nsec + (int64_t)s->o.flush_ms * 1000000;
      ts.tv_sec += ns / 1000000000;
      ts.tv_nsec = ns % 1000000000;
      /* Do not sleep while the spool has work and the db is there. */
      if (!(w.conn && spool_pending(s) > 0)) {
        s->writer_sleeping = true;
        pthread_cond_timedwait(&s->q_cv, &s->q_mu, &ts);
        s->writer_sleeping = false;
      }
    }
    qitem *list = s->q_head, *last = NULL;
    size_t n = 0, bytes = 0;
    for (qitem *it = list; it && n < s->o.batch; it = it->next) {
      last = it;
      n++;
      bytes += it->len;
    }
    if (last) {
      s->q_head = last->next;
      if (!s->q_head) s->q_tail = NULL;
      last->next = NULL;
      s->q_n -= n;
      s->q_bytes -= bytes;
      s->writer_busy = true;
    }
    bool stopping = s->stop && !s->q_head;
    pthread_mutex_unlock(&s->q_mu);

    w_try_connect(&w);
    if (list) {
      int rc = ORCH__W_RETRY;
      if (w.conn) {
        w.b.n = 0;
        for (qitem *it = list; it; it = it->next)
          if (batch_add(&w.b, it->data + FRAME_HDR, it->len) != ORCH_OK)
            atomic_fetch_add(&s->dropped, 1);
        rc = w_write(&w);
        if (rc == ORCH__W_OK)
          atomic_fetch_add(&s->written, w.b.n - w.b.nrejected);
      }
      if (rc != ORCH__W_OK) w_spool(&w, list, n);
      while (list) {
        qitem *nx = list->next;
        free(list);
        list = nx;
      }
    }
    if (w.conn) w_replay(&w);
    if (w.conn && mono_ns() >= next_sweep) {
      spool_sweep(s); /* what processes that ended meanwhile left */
      next_sweep = mono_ns() + sweep_ns;
    }
    spool_sync(s);
    spool_compact(s);
    if (stopping) {
      /* Last round: replay what the spool holds while the db answers. */
      while (w.conn && spool_pending(s) > 0) {
        uint64_t before = spool_pending(s);
        w_replay(&w);
        if (spool_pending(s) >= before) break;
      }
      spool_sync(s);
      break;
    }
  }
  w_disconnect(&w);
  free(w.b.rows);
  free(w.b.vals);
  free(w.rbuf);
  pthread_mutex_lock(&s->q_mu);
  s->writer_busy = false;
  pthread_cond_broadcast(&s->idle_cv);
  pthread_mutex_unlock(&s->q_mu);
  return NULL;
}

/* ---- opening and closing ------------------------------------------------ */

int orch__store_backend_for(const char *url, const orch__backend **be,
                            const char **conninfo, char *err, size_t errlen) {
  if (!url) url = getenv("ORCH_DB");
  if (!url || !*url) url = "sqlite:orchestrate.db";
  if (strncmp(url, "sqlite:", 7) == 0) {
    const char *p = url + 7;
    if (strncmp(p, "//", 2) == 0) p += 2; /* sqlite://PATH */
    if (!*p)
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "database: sqlite: needs a path (sqlite:PATH)");
    *be = &orch__backend_sqlite;
    *conninfo = p;
    return ORCH_OK;
  }
  if (strncmp(url, "postgresql://", 13) == 0 ||
      strncmp(url, "postgres://", 11) == 0 || strchr(url, '=')) {
    *be = &orch__backend_pg;
    *conninfo = url;
    return ORCH_OK;
  }
  return orch__err(err, errlen, ORCH_ECONFIG,
                   "database: unrecognized address (want postgresql://..., "
                   "postgres://..., a libpq keyword string, or sqlite:PATH)");
}

static char *default_spool(const orch__backend *be, const char *conninfo) {
  const char *env = getenv("ORCH_SPOOL");
  if (env && *env) return orch__strdup(env);
  char buf[4096];
  if (be == &orch__backend_sqlite) {
    snprintf(buf, sizeof buf, "%s.spool", conninfo);
  } else {
    uint32_t h = 2166136261u; /* FNV-1a of the address */
    for (const char *p = conninfo; *p; p++)
      h = (h ^ (unsigned char)*p) * 16777619u;
    const char *dir = getenv("ORCH_SPOOL_DIR");
    snprintf(buf, sizeof buf, "%s/orchestrate-pg-%08x.spool",
             dir && *dir ? dir : ".", h);
  }
  return orch__strdup(buf);
}

int orch__store_open(orch__store **out, const char *url,
                     const orch__store_opts *o, char *err, size_t errlen) {
  int rc = ORCH_OK;
  char *spath = NULL;
  const char *conninfo = NULL;
  const orch__backend *be = NULL;
  *out = NULL;
  rc = orch__store_backend_for(url, &be, &conninfo, err, errlen);
  if (rc != ORCH_OK) return rc;
  if (be->precheck && (rc = be->precheck(conninfo, err, errlen)) != ORCH_OK)
    return rc;
  orch__store *s = calloc(1, sizeof *s);
  if (!s) return ORCH_ENOMEM;
  s->be = be;
  s->sp.fd = -1;
  pthread_mutex_init(&s->q_mu, NULL);
  pthread_cond_init(&s->q_cv, NULL);
  pthread_cond_init(&s->idle_cv, NULL);
  pthread_mutex_init(&s->sp.mu, NULL);
  pthread_mutex_init(&s->st_mu, NULL);
  if (o) s->o = *o;
  s->o.spool_path = NULL;
  if (!s->o.queue_cap) s->o.queue_cap = 65536;
  if (!s->o.queue_max_bytes) s->o.queue_max_bytes = 64u << 20;
  if (!s->o.spool_cap) s->o.spool_cap = (uint64_t)1 << 30;
  if (!s->o.batch) s->o.batch = 5000;
  if (!s->o.flush_ms) s->o.flush_ms = 50;
  if (!s->o.backoff_max_ms) s->o.backoff_max_ms = 5000;
  s->read_only = o && o->read_only;
  s->sp.cap = s->o.spool_cap;
  s->conninfo = orch__strdup(conninfo);
  if (!s->conninfo) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  uint64_t rnd = 0;
  if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
    rnd = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32);
  snprintf(s->key_prefix, sizeof s->key_prefix, "%016" PRIx64, rnd);
  if (s->read_only) goto done;

  spath = (o && o->spool_path) ? orch__strdup(o->spool_path)
                               : default_spool(be, conninfo);
  if (!spath) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  rc = spool_open(s, spath, err, errlen);
  /* Another process holds the default spool (two runs on one database):
   * take the first free numbered one beside it. Whatever a crashed process
   * left in that file is checked and replayed by this one. */
  bool explicit_path = (o && o->spool_path) || getenv("ORCH_SPOOL");
  for (int k = 1; rc == ORCH_ESTATE && !explicit_path && k <= 64; k++) {
    free(s->sp.path);
    s->sp.path = NULL;
    char *alt = orch__asprintf("%s.%d", spath, k);
    if (!alt) {
      rc = ORCH_ENOMEM;
      break;
    }
    rc = spool_open(s, alt, err, errlen);
    free(alt);
  }
  if (rc != ORCH_OK) goto done;
  rc = spool_take_side(s, s->sp.path);
  if (rc != ORCH_OK) {
    rc = orch__err(err, errlen, rc,
                   "spool %s: recovering an interrupted compaction: %s",
                   s->sp.path, orch_strerror(rc));
    goto done;
  }
  if (!explicit_path) {
    s->sp.base = spath;
    spath = NULL;
    spool_sweep(s);
  }
  if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
    rc = orch__err(err, errlen, ORCH_ENOMEM, "store: cannot start the writer");
    goto done;
  }
  s->writer_started = true;
done:
  free(spath);
  if (rc != ORCH_OK) {
    orch__store_close(s);
    return rc;
  }
  *out = s;
  return ORCH_OK;
}

void orch__store_close(orch__store *s) {
  if (!s) return;
  if (s->writer_started) {
    pthread_mutex_lock(&s->q_mu);
    s->stop = true;
    pthread_cond_signal(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    pthread_join(s->writer, NULL);
  }
  for (qitem *it = s->q_head; it;) {
    qitem *nx = it->next;
    free(it);
    it = nx;
  }
  if (s->sp.fd >= 0) close(s->sp.fd); /* releases the flock */
  free(s->sp.path);
  free(s->sp.base);
  free(s->conninfo);
  pthread_mutex_destroy(&s->q_mu);
  pthread_cond_destroy(&s->q_cv);
  pthread_cond_destroy(&s->idle_cv);
  pthread_mutex_destroy(&s->sp.mu);
  pthread_mutex_destroy(&s->st_mu);
  free(s);
}

/* ---- handing records over ----------------------------------------------- */

int orch__store_put(orch__store *s, const orch__rec *rec) {
  if (!s || !rec || s->read_only) return ORCH_EINVAL;
  enc e = {0};
  const size_t front = offsetof(qitem, data) + FRAME_HDR;
  enc_need(&e, front + 256);
  if (e.oom) return ORCH_ENOMEM;
  e.len = front; /* the item header and frame header live in front */
  int rc = encode(s, rec, &e);
  if (rc != ORCH_OK) {
    free(e.p);
    return rc;
  }
  qitem *it = (qitem *)(void *)e.p;
  it->next = NULL;
  it->len = (uint32_t)(e.len - front);
  if (it->len > MAX_FRAME) {
    free(e.p);
    atomic_fetch_add(&s->dropped, 1);
    set_drop(s, "record larger than %u bytes, dropped", MAX_FRAME);
    return ORCH_ELIMIT;
  }
  pthread_mutex_lock(&s->q_mu);
  if (s->q_n >= s->o.queue_cap || s->q_bytes + it->len > s->o.queue_max_bytes) {
    pthread_mutex_unlock(&s->q_mu);
    /* Queue full: append to the spool from this thread (a file write, no
     * fsync, never the database); the writer fsyncs it on its next tick. */
    bool failed;
    size_t k = spool_append(s, it, &failed);
    free(it);
    if (k == 1) {
      atomic_fetch_add(&s->spooled, 1);
      atomic_fetch_add(&s->accepted, 1);
      return ORCH_OK;
    }
    atomic_fetch_add(&s->dropped, 1);
    set_drop(s, "queue full (%zu records) and spool %s, record dropped",
              s->o.queue_cap, failed ? "failing" : "full");
    return ORCH_ELIMIT;
  }
  if (s->q_tail) s->q_tail->next = it;
  else s->q_head = it;
  s->q_tail = it;
  s->q_n++;
  s->q_bytes += it->len;
  bool wake = s->writer_sleeping;
  s->writer_sleeping = false; /* one signal per sleep is enough */
  if (wake) pthread_cond_signal(&s->q_cv);
  pthread_mutex_unlock(&s->q_mu);
  atomic_fetch_add(&s->accepted, 1);
  return ORCH_OK;
}

int orch__store_flush(orch__store *s, unsigned timeout_ms) {
  if (!s || !s->writer_started) return ORCH_OK;
  int64_t deadline = mono_ns() + (int64_t)timeout_ms * 1000000;
  pthread_mutex_lock(&s->q_mu);
  for (;;) {
    if (!s->q_head && !s->writer_busy && spool_pending(s) == 0) break;
    int64_t now = mono_ns();
    if (now >= deadline) {
      pthread_mutex_unlock(&s->q_mu);
      return ORCH_ETIMEDOUT;
    }
    pthread_cond_signal(&s->q_cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wait = deadline - now < 20000000 ? deadline - now : 20000000;
    int64_t ns = ts.tv_nsec + wait;
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    pthread_cond_timedwait(&s->idle_cv, &s->q_mu, &ts);
  }
  pthread_mutex_unlock(&s->q_mu);
  return ORCH_OK;
}

void orch__store_stats_get(orch__store *s, orch__store_stats *out) {
  memset(out, 0, sizeof *out);
  if (!s) return;
  pthread_mutex_lock(&s->q_mu);
  out->queued = s->q_n;
  pthread_mutex_unlock(&s->q_mu);
  out->accepted = atomic_load(&s->accepted);
  out->written = atomic_load(&s->written);
  out->spooled = atomic_load(&s->spooled);
  out->replayed = atomic_load(&s->replayed);
  out->rejected = atomic_load(&s->rejected);
  out->records_dropped_total = atomic_load(&s->dropped);
  out->spool_bytes = spool_pending(s);
  out->spool_cut_bytes = s->cut_bytes;
  out->connected = atomic_load(&s->connected);
  snprintf(out->backend, sizeof out->backend, "%s",
           s->be == &orch__backend_pg ? "postgresql" : "sqlite");
  pthread_mutex_lock(&s->st_mu);
  memcpy(out->last_error, s->last_error, sizeof out->last_error);
  memcpy(out->last_drop, s->last_drop, sizeof out->last_drop);
  pthread_mutex_unlock(&s->st_mu);
}

/* ---- queries (caller's thread, own connection) -------------------------- */

static int query_conn(orch__store *s, void **conn, char *err, size_t errlen) {
  if (s->writer_started) orch__store_flush(s, 10000);
  int rc = s->read_only && s->be->connect_ro
               ? s->be->connect_ro(conn, s->conninfo, err, errlen)
               : s->be->connect(conn, s->conninfo, err, errlen);
  if (rc == ORCH_OK && s->be->set_timeout)
    s->be->set_timeout(*conn, s->o.timeout_ms);
  return rc;
}

int orch__store_session_steps(orch__store *s, const char *session_id,
                              orch__step_row_fn fn, void *ud, char *err,
                              size_t errlen) {
  void *c = NULL;
  if (!is_uuid(session_id))
    return orch__err(err, errlen, ORCH_ENOTFOUND,
                     "session %s: not a session id (want a UUID)",
                     session_id ? session_id : "(null)");
  int rc = query_conn(s, &c, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = s->be->session_steps(c, session_id, fn, ud, err, errlen);
  s->be->disconnect(c);
  return rc;
}

void orch__session_info_deinit(orch__session_info *si) {
  if (!si) return;
  free(si->task_id);
  free(si->jr_name);
  free(si->model_tier);
  free(si->status);
  free(si->steps_json);
  memset(si, 0, sizeof *si);
}

void orch__session_info_tally(orch__session_info *si, const char *status,
                              long n) {
  si->total += n;
  if (!status) return;
  if (!strcmp(status, "passed")) si->passed += n;
  else if (!strcmp(status, "failed")) si->failed += n;
  else if (!strcmp(status, "skipped")) si->skipped += n;
  else if (!strcmp(status, "in_progress") || !strcmp(status, "running"))
    si->running += n;
}

void orch__session_info_finish(orch__session_info *si, long json_total) {
  if (json_total > si->total) si->total = json_total;
  long done = si->passed + si->failed + si->skipped;
  si->pending = si->total - done - si->running;
  if (si->pending < 0) si->pending = 0;
  si->progress_pct = si->total ? 100.0 * (double)done / (double)si->total : 0;
}

int orch__store_session_summary(orch__store *s, const char *session_id,
                                orch__session_info *out, char *err,
                                size_t errlen) {
  void *c = NULL;
  memset(out, 0, sizeof *out);
  if (!is_uuid(session_id))
    return orch__err(err, errlen, ORCH_ENOTFOUND,
                     "session %s: not a session id (want a UUID)",
                     session_id ? session_id : "(null)");
  int rc = query_conn(s, &c, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = s->be->session_summary(c, session_id, out, err, errlen);
  s->be->disconnect(c);
  return rc;
}

int orch__store_active_sessions(orch__store *s,
                                int (*fn)(void *ud,
                                          const orch__session_info *si),
                                void *ud, char *err, size_t errlen) {
  void *c = NULL;
  int rc = query_conn(s, &c, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = s->be->active_sessions(c, fn, ud, err, errlen);
  s->be->disconnect(c);
  return rc;
}

int orch__store_today_counts(orch__store *s, orch__store_today *out,
                             char *err, size_t errlen) {
  void *c = NULL;
  memset(out, 0, sizeof *out);
  int rc = query_conn(s, &c, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = s->be->today_counts(c, out, err, errlen);
  s->be->disconnect(c);
  return rc;
}

int orch__store_script_refusals(orch__store *s,
                                int (*fn)(void *ud,
                                          const orch__script_refusal *r),
                                void *ud, char *err, size_t errlen) {
  void *c = NULL;
  int rc = query_conn(s, &c, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = s->be->script_refusals(c, fn, ud, err, errlen);
  s->be->disconnect(c);
  return rc;
}

/* ---- migrations ----------------------------------------------------------- */

ORCH_API int orch_migrate(const char *db, int status_only,
                          orch_report_fn report, void *ud, char *err,
                          size_t errlen) {
  const orch__backend *be = NULL;
  const char *conninfo = NULL;
  void *c = NULL;
  int rc = orch__store_backend_for(db, &be, &conninfo, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = status_only && be->connect_ro
           ? be->connect_ro(&c, conninfo, err, errlen) /* only reads */
           : be->connect(&c, conninfo, err, errlen);
  if (rc != ORCH_OK) return rc;
  rc = be->migrate(c, status_only, report, ud, err, errlen);
  be->disconnect(c);
  return rc;
}

/* ---- helpers for the scheduler and the CLI ------------------------------- */

/* Appends s as a JSON string (quotes, escapes) to the encoder buffer. */
static void json_str(enc *e, const char *s) {
  static const char hex[] = "0123456789abcdef";
  enc_byte(e, '"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      enc_byte(e, '\\');
      enc_byte(e, *p);
    } else if (*p < 0x20) {
      const char esc[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
      for (int i = 0; i < 6; i++) enc_byte(e, (unsigned char)esc[i]);
    } else {
      enc_byte(e, *p);
    }
  }
  enc_byte(e, '"');
}

int orch__store_record_step(orch__store *s, const char *session_id,
                            const orch_graph *g, uint32_t idx,
                            int64_t t0_wall_ms) {
  if (!s || !g || idx >= g->n) return ORCH_EINVAL;
  const orch__step *st = &g->steps[idx];
  enc deps = {0};
  enc_byte(&deps, '[');
  if (g->dep_off)
    for (uint32_t e = g->dep_off[idx]; e < g->dep_off[idx + 1]; e++) {
      if (e > g->dep_off[idx]) enc_byte(&deps, ',');
      json_str(&deps, orch__step_id(g, g->deps[e]));
    }
  enc_byte(&deps, ']');
  enc_byte(&deps, 0);
  if (deps.oom) {
    free(deps.p);
    return ORCH_ENOMEM;
  }
  orch__rec r;
  memset(&r, 0, sizeof r);
  r.type = ORCH__REC_STEP;
  r.u.step.session_id = session_id;
  r.u.step.step_id = orch__step_id(g, idx);
  r.u.step.step_index = (int32_t)idx;
  r.u.step.kind = st->kind < ORCH__NKINDS && orch__kinds[st->kind]
                      ? orch__kinds[st->kind]->name
                      : NULL;
  r.u.step.deps_json = (const char *)deps.p;
  r.u.step.status = orch_status_name(st->status);
  r.u.step.attempts = st->attempts;
  r.u.step.output = st->output;
  r.u.step.error = st->error;
  r.u.step.tokens_in = ORCH__NULL_I64;
  r.u.step.tokens_out = ORCH__NULL_I64;
  r.u.step.cost = NAN;
  const orch__kind *kind = st->kind < ORCH__NKINDS ? orch__kinds[st->kind] : NULL;
  if (kind && kind->usage && st->status >= ORCH_PASSED) {
    int64_t tin = -1, tout = -1;
    double cost = NAN;
    kind->usage(st, &tin, &tout, &cost);
    if (tin >= 0) r.u.step.tokens_in = tin;
    if (tout >= 0) r.u.step.tokens_out = tout;
    if (cost >= 0) r.u.step.cost = cost;
  }
  r.u.step.generation = st->generation;
  r.u.step.started_ms =
      st->started_ns >= 0 ? t0_wall_ms + st->started_ns / 1000000 : 0;
  r.u.step.finished_ms =
      st->finished_ns >= 0 && st->status >= ORCH_PASSED
          ? t0_wall_ms + st->finished_ns / 1000000
          : 0;
  int rc = orch__store_put(s, &r);
  free(deps.p);
  return rc;
}

typedef struct resume_ctx {
  orch_graph *g;
  size_t passed;
  int rc;
} resume_ctx;

static int resume_row(void *ud, const orch__step_row *row) {
  resume_ctx *c = ud;
  long i = orch_graph_find(c->g, row->step_id);
  if (i < 0) return 0; /* the plan changed: a step no longer there */
  orch__step *st = &c->g->steps[i];
  st->attempts = (uint8_t)(row->attempts > 255 ? 255 : row->attempts);
  /* A step to run again keeps its count as the base of its new attempts:
   * they get new numbers (orch_llm_calls is keyed by the attempt). */
  if (!row->status || strcmp(row->status, "passed") != 0) return 0;
  st->status = ORCH_PASSED;
  st->generation = row->generation;
  if (row->output) orch__step_set_output(st, row->output, strlen(row->output));
  c->passed++;
  return 0;
}

int orch__store_resume_mark(orch__store *s, const char *session_id,
                            orch_graph *g, size_t *npassed, char *err,
                            size_t errlen) {
  resume_ctx c = {g, 0, 0};
  int rc = orch__store_session_steps(s, session_id, resume_row, &c, err,
                                     errlen);
  if (npassed) *npassed = c.passed;
  return rc;
}

static int refusal_json(void *ud, const orch__script_refusal *r) {
  json_t *o = json_pack("{s:s?, s:s?, s:s?, s:s?, s:I, s:s}", "module",
                        r->module, "file", r->file, "error", r->error,
                        "runtime", r->runtime, "generation",
                        (json_int_t)r->generation, "at", r->created_at);
  if (o) json_array_append_new(ud, o);
  return 0;
}

static int active_json(void *ud, const orch__session_info *si) {
  json_t *arr = ud;
  json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s?, s:I, s:I, s:I, s:I, "
                        "s:f, s:I, s:s, s:s}",
                        "session_id", si->session_id, "task_id", si->task_id,
                        "jr_name", si->jr_name, "model_tier", si->model_tier,
                        "status", si->status, "total", (json_int_t)si->total,
                        "passed", (json_int_t)si->passed, "failed",
                        (json_int_t)si->failed, "pending",
                        (json_int_t)si->pending, "progress_pct",
                        si->progress_pct, "total_tokens",
                        (json_int_t)si->total_tokens, "created_at",
                        si->created_at, "updated_at", si->updated_at);
  if (o) json_array_append_new(arr, o);
  return 0;
}

int orch__store_status_json(const char *db, const char *session_id,
                            char **out, char *err, size_t errlen) {
  orch__store *s = NULL;
  json_t *doc = NULL, *arr = NULL;
  orch__store_opts o = {0};
  o.read_only = 1;
  *out = NULL;
  int rc = orch__store_open(&s, db, &o, err, errlen);
  if (rc != ORCH_OK) return rc;
  doc = json_object();
  if (!doc) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  json_object_set_new(doc, "backend", json_string(s->be->name));
  if (session_id) {
    orch__session_info si;
    rc = orch__store_session_summary(s, session_id, &si, err, errlen);
    if (rc != ORCH_OK) goto done;
    json_t *one = json_array();
    active_json(one, &si);
    json_object_set(doc, "session", json_array_get(one, 0));
    json_decref(one);
    orch__session_info_deinit(&si);
  } else {
    arr = json_array();
    rc = orch__store_active_sessions(s, active_json, arr, err, errlen);
    if (rc != ORCH_OK) goto done;
    json_object_set_new(doc, "active", arr);
    arr = NULL;
    arr = json_array();
    rc = orch__store_script_refusals(s, refusal_json, arr, err, errlen);
    if (rc != ORCH_OK) goto done;
    json_object_set_new(doc, "scripts_refused", arr);
    arr = NULL;
    orch__store_today t;
    rc = orch__store_today_counts(s, &t, err, errlen);
    if (rc != ORCH_OK) goto done;
    json_object_set_new(
        doc, "today",
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "sessions",
                  (json_int_t)t.sessions, "sessions_running",
                  (json_int_t)t.sessions_running, "sessions_passed",
                  (json_int_t)t.sessions_passed, "sessions_failed",
                  (json_int_t)t.sessions_failed, "steps_total",
                  (json_int_t)t.steps_total, "steps_passed",
                  (json_int_t)t.steps_passed, "steps_failed",
                  (json_int_t)t.steps_failed));
  }
  *out = json_dumps(doc, JSON_INDENT(2));
  if (!*out) rc = ORCH_ENOMEM;
done:
  json_decref(arr);
  json_decref(doc);
  orch__store_close(s);
  return rc;
}

void orch__store_uuid(char out[37]) {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
    uint64_t x = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 40);
    for (int i = 0; i < 16; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift: last resort */
      b[i] = (unsigned char)x;
    }
  }
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  static const char hex[] = "0123456789abcdef";
  int o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 15];
  }
  out[o] = '\0';
}
