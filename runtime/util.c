/* util.c provides the small helpers every file of the runtime uses: error
 * messages into caller buffers, string copies, the monotonic clock, id and
 * UTF-8 checks, bounded file reads and a growable buffer. It uses only libc. */
#include "orch_int.h"

#include <ctype.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int orch__err(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

char *orch__strdup(const char *s) {
  return s ? orch__strndup(s, strlen(s)) : NULL;
}

char *orch__strndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

char *orch__vasprintf(const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return NULL;
  char *p = malloc((size_t)n + 1);
  if (p) vsnprintf(p, (size_t)n + 1, fmt, ap);
  return p;
}

char *orch__asprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *p = orch__vasprintf(fmt, ap);
  va_end(ap);
  return p;
}

int64_t orch__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool orch__utf8_valid(const char *str, size_t len, size_t *bad) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    size_t n;
    unsigned min;
    if (c < 0x80) { i++; continue; }
    else if ((c & 0xE0) == 0xC0) { n = 1; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 2; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 3; min = 0x10000; c &= 0x07; }
    else goto fail;
    for (size_t k = 1; k <= n; k++) {
      if (i + k >= len || (s[i + k] & 0xC0) != 0x80) goto fail;
      c = (c << 6) | (s[i + k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) goto fail;
    i += n + 1;
  }
  return true;
fail:
  if (bad) *bad = i;
  return false;
}

char *orch__utf8_repair(const char *s, size_t len) {
  orch__buf b = {0};
  size_t i = 0, bad;
  int rc = ORCH_OK;
  while (!rc && !orch__utf8_valid(s + i, len - i, &bad)) {
    rc = orch__buf_add(&b, s + i, bad);
    if (!rc) rc = orch__buf_add(&b, "\xEF\xBF\xBD", 3); /* U+FFFD */
    i += bad + 1;
  }
  if (!rc) rc = orch__buf_add(&b, s + i, len - i);
  if (rc) {
    orch__buf_deinit(&b);
    return NULL;
  }
  return b.p;
}

/* Appends src[0..n) to dst (capacity cap, used *o), always terminated. */
static void put_n(char *dst, size_t cap, size_t *o, const char *src, size_t n) {
  size_t room = cap - 1 - *o;
  if (n > room) n = room;
  memcpy(dst + *o, src, n);
  *o += n;
  dst[*o] = '\0';
}

static bool ends_value(char c) {
  return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
         c == '"' || c == '\'';
}

void orch__redact_conninfo(char *dst, size_t cap, const char *src) {
  static const char hidden[] = "[redacted]";
  size_t o = 0;
  if (!cap) return;
  dst[0] = '\0';
  const char *p = src;
  while (*p && o < cap - 1) {
    /* scheme://user:SECRET@host: userinfo runs to the last '@' before
     * the end of the address (white space, a quote, the end) */
    if (p[0] == ':' && p[1] == '/' && p[2] == '/') {
      const char *a = p + 3, *end = a, *at = NULL;
      while (!ends_value(*end)) {
        if (*end == '@') at = end;
        end++;
      }
      const char *colon = at ? memchr(a, ':', (size_t)(at - a)) : NULL;
      if (colon) {
        put_n(dst, cap, &o, p, (size_t)(colon + 1 - p));
        put_n(dst, cap, &o, hidden, sizeof hidden - 1);
        p = at;
        continue;
      }
      put_n(dst, cap, &o, p, 3);
      p += 3;
      continue;
    }
    /* password=SECRET, password = 'SE CRET' (conninfo keywords), and
     * ?password=SECRET in a URI's query */
    if (strncmp(p, "password", 8) == 0 &&
        (p == src || !(isalnum((unsigned char)p[-1]) || p[-1] == '_'))) {
      const char *q = p + 8;
      while (*q == ' ' || *q == '\t') q++;
      if (*q == '=') {
        q++;
        while (*q == ' ' || *q == '\t') q++;
        put_n(dst, cap, &o, p, (size_t)(q - p));
        if (*q == '\'') { /* quoted: backslash escapes, to the closing ' */
          q++;
          while (*q && *q != '\'') q += (*q == '\\' && q[1]) ? 2 : 1;
          if (*q) q++;
        } else {
          while (!ends_value(*q) && *q != '&') q++;
        }
        put_n(dst, cap, &o, hidden, sizeof hidden - 1);
        p = q;
        continue;
      }
    }
    put_n(dst, cap, &o, p, 1);
    p++;
  }
}

int orch__check_id(const char *id, size_t len, char *err, size_t errlen) {
  if (len == 0) return orch__err(err, errlen, ORCH_EPLAN, "empty step id");
  if (len > ORCH__MAX_ID_BYTES)
    return orch__err(err, errlen, ORCH_EPLAN,
                     "step id of %zu bytes is over the limit of %d bytes "
                     "(starts \"%.32s...\")",
                     len, ORCH__MAX_ID_BYTES, id);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)id[i];
    if (c == 0)
      return orch__err(err, errlen, ORCH_EPLAN,
                       "step id has a NUL byte at byte %zu", i);
    if (c < 0x20 || c == 0x7F)
      return orch__err(err, errlen, ORCH_EPLAN,
                       "step id has control byte 0x%02x at byte %zu", c, i);
  }
  size_t bad = 0;
  if (!orch__utf8_valid(id, len, &bad))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "step id is not valid UTF-8 (byte %zu)", bad);
  return ORCH_OK;
}

int orch__read_file(const char *path, size_t max, char **out, size_t *len,
                    char *err, size_t errlen) {
  int rc = ORCH_OK;
  char *buf = NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return orch__err(err, errlen, ORCH_EIO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0) memset(&st, 0, sizeof st);
  if (S_ISDIR(st.st_mode)) {
    rc = orch__err(err, errlen, ORCH_EIO, "%s: is a directory, not a file",
                   path);
    goto done;
  }
  if (S_ISREG(st.st_mode) && (size_t)st.st_size > max) {
    rc = orch__err(err, errlen, ORCH_ELIMIT,
                   "%s: file of %lld bytes is over the limit of %zu bytes "
                   "(plan_max_bytes)",
                   path, (long long)st.st_size, max);
    goto done;
  }
  size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1
                                                     : 65536;
  size_t n = 0;
  buf = malloc(cap);
  if (!buf) {
    rc = orch__err(err, errlen, ORCH_ENOMEM, "%s: out of memory reading it", path);
    goto done;
  }
  for (;;) {
    if (n + 1 >= cap) {
      if (cap > max + 1) break;
      size_t ncap = cap * 2;
      char *nb = realloc(buf, ncap);
      if (!nb) {
        rc = orch__err(err, errlen, ORCH_ENOMEM, "%s: out of memory reading it",
                       path);
        goto done;
      }
      buf = nb;
      cap = ncap;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    if (r == 0) break;
    n += r;
    if (n > max) {
      rc = orch__err(err, errlen, ORCH_ELIMIT,
                     "%s: over the limit of %zu bytes (plan_max_bytes)", path,
                     max);
      goto done;
    }
  }
  if (ferror(f)) {
    rc = orch__err(err, errlen, ORCH_EIO, "%s: read error", path);
    goto done;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  buf = NULL;
done:
  free(buf);
  fclose(f);
  return rc;
}

int orch__buf_add(orch__buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + n + 1) ncap *= 2;
    char *p = realloc(b->p, ncap);
    if (!p) return ORCH_ENOMEM;
    b->p = p;
    b->cap = ncap;
  }
  if (n) memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
  return ORCH_OK;
}

int orch__buf_printf(orch__buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = orch__vasprintf(fmt, ap);
  va_end(ap);
  if (!s) return ORCH_ENOMEM;
  int rc = orch__buf_add(b, s, strlen(s));
  free(s);
  return rc;
}

void orch__buf_deinit(orch__buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

const char *orch_strerror(int code) {
  switch (code) {
  case ORCH_OK: return "ok";
#define ORCH__ERRNO_STR(name, val, msg) case ORCH_##name: return msg;
    ORCH_ERRNO_MAP(ORCH__ERRNO_STR)
#undef ORCH__ERRNO_STR
  default: return "unknown error";
  }
}

const char *orch_version(void) { return ORCH_VERSION; }

const char *orch_status_name(int status) {
  static const char *const names[] = {"pending", "in_progress", "passed",
                                      "failed", "skipped"};
  return status >= 0 && status < 5 ? names[status] : "unknown";
}
