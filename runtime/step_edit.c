/* step_edit.c provides the `edit` kind: SEARCH/REPLACE blocks applied to one
 * file, all or none. Each block's search text must occur exactly once in the
 * file as the earlier blocks left it; the result is written to a temporary
 * file beside the original, fsync'd and renamed over it, after the original
 * is kept as FILE.orig (once: the text before the first edit). On any
 * failure the file is untouched. The scheduler
 * holds a per-file lock so two edits of one file never run at once. Uses
 * util.c; runs on a worker. */
#include "orch_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  char *file;
  char *blocks;
} edit_params;

typedef struct {
  const char *search, *replace;
  size_t slen, rlen;
} block;

#define SEARCH_MARK "<<<<<<< SEARCH"
#define SPLIT_MARK "======="
#define REPLACE_MARK ">>>>>>> REPLACE"

/* Next line of text at *p (without its newline); NULL at the end. */
static const char *next_line(const char **p, size_t *len) {
  const char *s = *p;
  if (!*s) return NULL;
  const char *nl = strchr(s, '\n');
  *len = nl ? (size_t)(nl - s) : strlen(s);
  *p = nl ? nl + 1 : s + *len;
  if (*len && s[*len - 1] == '\r') (*len)--;
  return s;
}

static bool is_mark(const char *line, size_t len, const char *mark) {
  size_t m = strlen(mark);
  while (len > m && (line[len - 1] == ' ' || line[len - 1] == '\t')) len--;
  return len == m && memcmp(line, mark, m) == 0;
}

/* Splits the blocks text into search/replace pairs pointing into it. */
static int parse_blocks(const char *text, block **out, size_t *n, char *err,
                        size_t errlen) {
  block *bs = NULL;
  size_t nb = 0, cap = 0;
  const char *p = text;
  size_t len, lineno = 0;
  const char *line;
  int state = 0; /* 0 outside, 1 in search, 2 in replace */
  block cur = {0};
  while ((line = next_line(&p, &len))) {
    lineno++;
    if (state == 0) {
      if (is_mark(line, len, SEARCH_MARK)) {
        state = 1;
        cur.search = p;
      }
      continue;
    }
    if (state == 1 && is_mark(line, len, SPLIT_MARK)) {
      cur.slen = (size_t)(line - cur.search);
      cur.replace = p;
      state = 2;
    } else if (state == 2 && is_mark(line, len, REPLACE_MARK)) {
      cur.rlen = (size_t)(line - cur.replace);
      if (nb == cap) {
        cap = cap ? cap * 2 : 4;
        block *nbs = realloc(bs, cap * sizeof *nbs);
        if (!nbs) { free(bs); return ORCH_ENOMEM; }
        bs = nbs;
      }
      bs[nb++] = cur;
      memset(&cur, 0, sizeof cur);
      state = 0;
    } else if (is_mark(line, len, SEARCH_MARK)) {
      free(bs);
      return orch__err(err, errlen, ORCH_EPLAN,
                       "line %zu: a new SEARCH before the block ended", lineno);
    }
  }
  if (state != 0) {
    free(bs);
    return orch__err(err, errlen, ORCH_EPLAN,
                     "block %zu is not closed (expected '%s')", nb + 1,
                     state == 1 ? SPLIT_MARK : REPLACE_MARK);
  }
  if (nb == 0) {
    free(bs);
    return orch__err(err, errlen, ORCH_EPLAN,
                     "no SEARCH/REPLACE blocks (expected '%s')", SEARCH_MARK);
  }
  *out = bs;
  *n = nb;
  return ORCH_OK;
}

static size_t count(const char *hay, size_t hlen, const char *needle,
                    size_t nlen, const char **first) {
  size_t c = 0;
  *first = NULL;
  if (nlen == 0) return 0;
  const char *p = hay, *end = hay + hlen;
  while ((p = memmem(p, (size_t)(end - p), needle, nlen))) {
    if (!c) *first = p;
    c++;
    p += 1;
  }
  return c;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Applies the blocks to path; leaves it untouched on any error. */
static int apply(const char *path, const char *blocks_text, char *err,
                 size_t errlen) {
  int rc = ORCH_OK, fd = -1;
  char *text = NULL, *tmp = NULL, *bak = NULL;
  block *bs = NULL;
  size_t nb = 0, len = 0;
  orch__buf cur = {0}, next = {0};
  struct stat st;
  if (stat(path, &st) != 0)
    return orch__err(err, errlen, ORCH_EIO, "%s: %s", path, strerror(errno));
  if ((rc = orch__read_file(path, (size_t)1 << 30, &text, &len, err, errlen)))
    goto done;
  if ((rc = parse_blocks(blocks_text, &bs, &nb, err, errlen))) goto done;
  if ((rc = orch__buf_add(&cur, text, len))) goto done;
  for (size_t i = 0; i < nb; i++) {
    const char *at;
    size_t c = count(cur.p ? cur.p : "", cur.len, bs[i].search, bs[i].slen, &at);
    if (c != 1) {
      size_t l1 = strcspn(bs[i].search, "\n");
      if (l1 > bs[i].slen) l1 = bs[i].slen;
      rc = orch__err(err, errlen, ORCH_ESTEP,
                     "%s: block %zu of %zu: search text %s (first line: "
                     "\"%.*s\"); the file is unchanged",
                     path, i + 1, nb,
                     c == 0 ? "not found" : "found more than once, so it is ambiguous",
                     (int)(l1 > 120 ? 120 : l1), bs[i].search);
      goto done;
    }
    size_t off = (size_t)(at - cur.p);
    next.len = 0;
    if ((rc = orch__buf_add(&next, cur.p, off)) ||
        (rc = orch__buf_add(&next, bs[i].replace, bs[i].rlen)) ||
        (rc = orch__buf_add(&next, at + bs[i].slen, cur.len - off - bs[i].slen)))
      goto done;
    orch__buf t = cur;
    cur = next;
    next = t;
  }
  tmp = orch__asprintf("%s.orch-XXXXXX", path);
  bak = orch__asprintf("%s.orig", path);
  if (!tmp || !bak) { rc = ORCH_ENOMEM; goto done; }
  if ((fd = mkstemp(tmp)) < 0) {
    rc = orch__err(err, errlen, ORCH_EIO, "%s: cannot create a temporary file: %s",
                   path, strerror(errno));
    goto done;
  }
  if (write_all(fd, cur.p ? cur.p : "", cur.len) || fchmod(fd, st.st_mode & 07777) ||
      fsync(fd)) {
    rc = orch__err(err, errlen, ORCH_EIO, "%s: writing: %s", tmp, strerror(errno));
    goto done;
  }
  close(fd);
  fd = -1;
  /* The backup is the original itself (a hard link where possible), kept
   * once: a later edit of the file (the next step of the plan, or a later
   * run) leaves it, so FILE.orig stays the text before the first edit
   * (delete it to take a new one). */
  struct stat bst;
  if (lstat(bak, &bst) == 0) {
    /* kept already */
  } else if (link(path, bak) != 0) {
    int bfd = open(bak, O_WRONLY | O_CREAT | O_TRUNC, st.st_mode & 07777);
    if (bfd < 0 || write_all(bfd, text, len)) {
      if (bfd >= 0) close(bfd);
      rc = orch__err(err, errlen, ORCH_EIO, "%s: cannot keep a backup: %s", bak,
                     strerror(errno));
      goto done;
    }
    close(bfd);
  }
  if (rename(tmp, path) != 0) {
    rc = orch__err(err, errlen, ORCH_EIO, "%s: rename: %s", path, strerror(errno));
    goto done;
  }
  free(tmp);
  tmp = NULL;
done:
  if (fd >= 0) close(fd);
  if (tmp) unlink(tmp);
  free(tmp);
  free(bak);
  free(text);
  free(bs);
  orch__buf_deinit(&cur);
  orch__buf_deinit(&next);
  return rc;
}

static int run(orch__run *r, uint32_t idx, orch__worker *w) {
  (void)w;
  orch__step *s = &r->g->steps[idx];
  edit_params *ep = s->u.p;
  char err[1024];
  int rc = apply(ep->file, ep->blocks, err, sizeof err);
  if (rc) {
    orch__step_set_error(s, "%s", err);
    return rc;
  }
  char out[512];
  int n = snprintf(out, sizeof out, "edited %s", ep->file);
  orch__step_set_output(s, out, (size_t)n);
  return ORCH_OK;
}

static int parse(orch_graph *g, orch__step *s, json_t *obj, const char *where,
                 char *err, size_t errlen) {
  (void)g;
  json_t *file = json_object_get(obj, "file");
  json_t *blocks = json_object_get(obj, "blocks");
  if (!json_is_string(file))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: an edit step needs \"file\", a path", where);
  if (!json_is_string(blocks))
    return orch__err(err, errlen, ORCH_EPLAN,
                     "%s: an edit step needs \"blocks\", SEARCH/REPLACE text",
                     where);
  char msg[256];
  block *bs = NULL;
  size_t nb = 0;
  int rc = parse_blocks(json_string_value(blocks), &bs, &nb, msg, sizeof msg);
  free(bs);
  if (rc) return orch__err(err, errlen, ORCH_EPLAN, "%s: %s", where, msg);
  edit_params *ep = calloc(1, sizeof *ep);
  if (!ep) return ORCH_ENOMEM;
  ep->file = orch__strdup(json_string_value(file));
  ep->blocks = orch__strdup(json_string_value(blocks));
  s->u.p = ep;
  if (!ep->file || !ep->blocks) return ORCH_ENOMEM;
  return ORCH_OK;
}

static void free_params(orch__step *s) {
  edit_params *ep = s->u.p;
  if (ep) {
    free(ep->file);
    free(ep->blocks);
  }
  free(ep);
  s->u.p = NULL;
}

static size_t writes(const orch__step *s, const char *const **paths) {
  edit_params *ep = s->u.p;
  if (!ep) return 0;
  *paths = (const char *const *)&ep->file;
  return 1;
}

static const char *const keys[] = {"file", "blocks", NULL};

const orch__kind orch__kind_edit = {.name = "edit", .where = ORCH__ON_WORKER,
                                    .keys = keys,
                                    .parse = parse, .run = run,
                                    .free = free_params, .writes = writes};
