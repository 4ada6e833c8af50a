/* fuzz_spool.c: libFuzzer target for the store's spool as a crash leaves it
 * on disk (store.c: spool_open/spool_scan, the takeover of a numbered
 * sibling and of an interrupted compaction's side file, replay). Each input
 * becomes the spool files of a SQLite store in a tmpfs directory; the store
 * is opened, replays into the database, and is closed. Invariants: no
 * crash, leak, undefined behaviour or hang; every whole frame (length and
 * CRC right) is replayed or counted as dropped, bad payloads included, and
 * only the torn or corrupt tail after the last whole frame is cut.
 *
 * Input: [flags][spool bytes], where the bytes split at "#SPOOL#" into the
 * default spool, its sibling PATH.1 and PATH.compact (at most 3 parts).
 * flags bit 0: the harness writes the right CRC into every frame header, so
 * that mutated payloads get past the CRC check. Built by `make fuzz`. */
#include "orch_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FRAME_HDR 8
#define MAX_FRAME (64u * 1024u * 1024u)
#define SEP "#SPOOL#"
#define RESET_EVERY 2000 /* inputs between fresh databases */

static char dir[64], db[128], url[160], files[3][160];
static unsigned long runs;

static uint32_t crc32c(const unsigned char *p, size_t n) {
  static uint32_t t[256];
  if (!t[1])
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  uint32_t c = 0xFFFFFFFFu;
  while (n--) c = t[(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* Whether a payload has the shape store.c writes: [type][ncols] and ncols
 * values, each tag 0, 1 or 2 (8 bytes) or 3 (u32 length, bytes). */
static bool decodable(const unsigned char *p, size_t n) {
  if (n < 2 || p[0] >= ORCH__REC_NTYPES) return false;
  size_t ncols = orch__rec_descs[p[0]].ncols, off = 2;
  if (p[1] != ncols) return false;
  for (size_t c = 0; c < ncols; c++) {
    if (off >= n) return false;
    switch (p[off++]) {
    case 0: break;
    case 1:
    case 2:
      if (n - off < 8) return false;
      off += 8;
      break;
    case 3: {
      if (n - off < 4) return false;
      uint32_t l = get_u32(p + off);
      off += 4;
      if (l > n - off) return false;
      off += l;
      break;
    }
    default: return false;
    }
  }
  return off == n;
}

typedef struct expect {
  uint64_t cut, frames, bad; /* bytes cut; whole frames; undecodable ones */
} expect;

/* What the store should make of one file: its whole frames up to the first
 * short, oversized or corrupt one. */
static void scan(const unsigned char *p, size_t n, expect *e) {
  size_t pos = 0;
  while (n - pos >= FRAME_HDR) {
    uint32_t len = get_u32(p + pos);
    if (len == 0 || len > MAX_FRAME || len > n - pos - FRAME_HDR) break;
    if (crc32c(p + pos + FRAME_HDR, len) != get_u32(p + pos + 4)) break;
    e->frames++;
    if (!decodable(p + pos + FRAME_HDR, len)) e->bad++;
    pos += FRAME_HDR + len;
  }
  e->cut += n - pos;
}

static void fix_crcs(unsigned char *p, size_t n) {
  size_t pos = 0;
  while (n - pos >= FRAME_HDR) {
    uint32_t len = get_u32(p + pos);
    if (len == 0 || len > n - pos - FRAME_HDR) break;
    uint32_t c = crc32c(p + pos + FRAME_HDR, len);
    for (int i = 0; i < 4; i++) p[pos + 4 + i] = (unsigned char)(c >> (8 * i));
    pos += FRAME_HDR + len;
  }
}

static void put_file(const char *path, const unsigned char *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
    fprintf(stderr, "fuzz_spool: cannot write %s\n", path);
    abort();
  }
}

static off_t size_of(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? sb.st_size : -1;
}

static void reset_db(void);

static void cleanup(void) {
  reset_db();
  for (int i = 0; i < 3; i++) unlink(files[i]);
  rmdir(dir);
}

static void setup(void) {
  /* tmpfs when there is one: SQLite and the spool fsync per input */
  snprintf(dir, sizeof dir, "/dev/shm/orch-fuzz-spool-XXXXXX");
  if (!mkdtemp(dir)) {
    snprintf(dir, sizeof dir, "/tmp/orch-fuzz-spool-XXXXXX");
    if (!mkdtemp(dir)) abort();
  }
  snprintf(db, sizeof db, "%s/db", dir);
  snprintf(url, sizeof url, "sqlite:%s", db);
  snprintf(files[0], sizeof files[0], "%s.spool", db);
  snprintf(files[1], sizeof files[1], "%s.spool.1", db);
  snprintf(files[2], sizeof files[2], "%s.spool.compact", db);
  /* the default spool and its siblings, never a path from outside */
  unsetenv("ORCH_SPOOL");
  unsetenv("ORCH_SPOOL_DIR");
  unsetenv("ORCH_DB");
  atexit(cleanup);
}

static void reset_db(void) {
  char p[200];
  static const char *const sfx[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s%s", db, sfx[i]);
    unlink(p);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!dir[0]) setup();
  if (size < 1) return 0;
  if (runs++ % RESET_EVERY == 0) reset_db();
  unsigned flags = data[0];
  unsigned char *body = malloc(size); /* size - 1 bytes, at least 1 */
  if (!body) return 0;
  memcpy(body, data + 1, size - 1);
  size_t n = size - 1;

  /* split into the spool, its sibling .1 and the side file */
  expect e = {0};
  size_t start = 0;
  bool more = true; /* a separator ended the previous part */
  for (int part = 0; part < 3; part++) {
    if (!more) {
      unlink(files[part]);
      continue;
    }
    size_t end = n;
    more = false;
    unsigned char *sep =
        part < 2 ? memmem(body + start, n - start, SEP, strlen(SEP)) : NULL;
    if (sep) {
      end = (size_t)(sep - body);
      more = true;
    }
    if (flags & 1) fix_crcs(body + start, end - start);
    scan(body + start, end - start, &e);
    put_file(files[part], body + start, end - start);
    start = end + (more ? strlen(SEP) : 0);
  }
  free(body);

  orch__store *s = NULL;
  orch__store_opts o = {0};
  o.flush_ms = 5;
  char err[512] = "";
  int rc = orch__store_open(&s, url, &o, err, sizeof err);
  if (rc != ORCH_OK) {
    fprintf(stderr, "fuzz_spool: open: %s\n", err);
    abort();
  }
  if (orch__store_flush(s, 20000) != ORCH_OK) {
    orch__store_stats st;
    orch__store_stats_get(s, &st);
    fprintf(stderr, "fuzz_spool: the spool was never replayed: %s\n",
            st.last_error);
    abort();
  }
  orch__store_stats st;
  orch__store_stats_get(s, &st);
  orch__store_close(s);

  /* every whole frame is replayed or counted as dropped (a refused row
   * counts in both rejected and dropped); only the tail is cut */
  uint64_t dropped_undecodable = st.records_dropped_total - st.rejected;
  if (st.spool_cut_bytes != e.cut || st.replayed + st.rejected != e.frames - e.bad ||
      dropped_undecodable != e.bad || st.spool_bytes != 0) {
    fprintf(stderr,
            "fuzz_spool: expected %llu frames (%llu undecodable), %llu bytes "
            "cut; got replayed %llu, rejected %llu, dropped %llu, cut %llu, "
            "waiting %llu (%s)\n",
            (unsigned long long)e.frames, (unsigned long long)e.bad,
            (unsigned long long)e.cut, (unsigned long long)st.replayed,
            (unsigned long long)st.rejected,
            (unsigned long long)st.records_dropped_total,
            (unsigned long long)st.spool_cut_bytes,
            (unsigned long long)st.spool_bytes, st.last_error);
    abort();
  }
  /* replayed spools are emptied, the side file removed */
  if (size_of(files[0]) != 0 || size_of(files[1]) > 0 ||
      size_of(files[2]) >= 0) {
    fprintf(stderr, "fuzz_spool: left behind: spool %lld, .1 %lld, "
            ".compact %lld bytes\n", (long long)size_of(files[0]),
            (long long)size_of(files[1]), (long long)size_of(files[2]));
    abort();
  }
  return 0;
}
