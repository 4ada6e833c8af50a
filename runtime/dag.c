/* dag.c provides the graph: steps with string ids, their dependencies,
 * validation with errors that name the problem (unknown dependency,
 * duplicate id, self-dependency, the cycle as a -> b -> a, empty graph),
 * topological levels, bottom levels (the longest remaining path, the
 * scheduler's priority) and the critical path. It is sized for millions of
 * steps: ids live in one arena, lookups go through an open-addressing hash of
 * indices, edges end up in two compressed arrays (CSR), and the scheduling
 * fields (levels, bottom levels) live in arrays of their own. A host that
 * holds its steps' indices can add anonymous steps (no id, no hash entry;
 * named "#<index>" in messages) and edges by index. Uses util.c. */
#include "orch_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NONE UINT32_MAX

int orch_graph_new(orch_graph **out) {
  orch_graph *g = calloc(1, sizeof *g);
  if (!g) return ORCH_ENOMEM;
  *out = g;
  return ORCH_OK;
}

void orch_graph_free(orch_graph *g) {
  if (!g) return;
  for (size_t i = 0; i < g->n; i++) {
    orch__step *s = &g->steps[i];
    const orch__kind *k = orch__kinds[s->kind];
    if (k && k->free) k->free(s);
    free(s->output);
    free(s->error);
  }
  for (size_t i = 0; i < g->npending; i++) {
    free(g->pending_names[i]);
    if (g->pending_ids) free(g->pending_ids[i]);
  }
  free(g->pending_names);
  free(g->pending_from);
  free(g->pending_ids);
  free(g->steps);
  free(g->ids);
  free(g->hash);
  free(g->efrom);
  free(g->eto);
  free(g->dep_off);
  free(g->deps);
  free(g->out_off);
  free(g->outs);
  free(g->level);
  free(g->bottom);
  free(g->topo);
  json_decref((json_t *)g->plan_meta);
  json_decref((json_t *)g->plan_steps);
  free(g);
}

/* Anonymous ids are formatted on demand, never stored. */
static _Thread_local char anon_buf[8][16];
static _Thread_local unsigned anon_next;

const char *orch__step_id(const orch_graph *g, uint32_t i) {
  uint32_t off = g->steps[i].id;
  if (off != ORCH__ANON) return g->ids + off;
  char *b = anon_buf[anon_next++ & 7];
  snprintf(b, sizeof anon_buf[0], "#%u", (unsigned)i);
  return b;
}

/* "#<index>" of an anonymous step: its index, else NONE. */
static uint32_t anon_index(const orch_graph *g, const char *id, size_t len) {
  if (!g->nanon || len < 2 || len > 11 || id[0] != '#' ||
      (id[1] == '0' && len > 2))
    return NONE;
  uint64_t v = 0;
  for (size_t k = 1; k < len; k++) {
    if (id[k] < '0' || id[k] > '9') return NONE;
    v = v * 10 + (uint64_t)(id[k] - '0');
  }
  if (v >= g->n || g->steps[v].id != ORCH__ANON) return NONE;
  return (uint32_t)v;
}

static uint32_t hash_str(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

/* The hash has hash_cap slots of two words: [2h] the step's index + 1 (0:
 * empty), [2h+1] the id's full hash. Probes compare the stored hash first,
 * so a collision costs no string compare and no visit to the step, and
 * growing never rehashes a string. Returns the slot holding id, or the
 * empty slot where it would go (*found says which). */
static size_t probe(const orch_graph *g, const char *id, size_t len,
                    uint32_t hv, uint32_t *found) {
  size_t mask = g->hash_cap - 1;
  for (size_t h = hv & mask;; h = (h + 1) & mask) {
    uint32_t v = g->hash[2 * h];
    if (!v) {
      *found = NONE;
      return h;
    }
    if (g->hash[2 * h + 1] != hv) continue;
    const char *other = g->ids + g->steps[v - 1].id;
    if (strncmp(other, id, len) == 0 && other[len] == '\0') {
      *found = v - 1;
      return h;
    }
  }
}

/* A named step first; else "#<index>" names an anonymous step. */
static uint32_t lookup(const orch_graph *g, const char *id, size_t len) {
  uint32_t found = NONE;
  if (g->hash_cap) probe(g, id, len, hash_str(id, len), &found);
  if (found == NONE) found = anon_index(g, id, len);
  return found;
}

/* Grows the hash to hold at least `want` ids at half load. */
static int hash_grow(orch_graph *g, size_t want) {
  size_t ncap = g->hash_cap ? g->hash_cap * 2 : 1024;
  while (ncap < 2 * want) ncap *= 2;
  uint32_t *nh = calloc(2 * ncap, sizeof *nh);
  if (!nh) return ORCH_ENOMEM;
  for (size_t k = 0; k < g->hash_cap; k++) {
    if (!g->hash[2 * k]) continue;
    uint32_t hv = g->hash[2 * k + 1];
    size_t h = hv & (ncap - 1);
    while (nh[2 * h]) h = (h + 1) & (ncap - 1);
    nh[2 * h] = g->hash[2 * k];
    nh[2 * h + 1] = hv;
  }
  free(g->hash);
  g->hash = nh;
  g->hash_cap = ncap;
  return ORCH_OK;
}

long orch_graph_find(const orch_graph *g, const char *id) {
  if (!g || !id) return -1;
  uint32_t i = lookup(g, id, strlen(id));
  return i == NONE ? -1 : (long)i;
}

static int set_err(orch_graph *g, int code, const char *msg) {
  if (!g->err_code) {
    g->err_code = code;
    snprintf(g->err_msg, sizeof g->err_msg, "%s", msg);
  }
  return code;
}

/* Room for one more step. */
static int grow_steps(orch_graph *g) {
  if (g->n >= UINT32_MAX - 1) return ORCH_ELIMIT;
  if (g->n < g->cap) return ORCH_OK;
  size_t ncap = g->cap ? g->cap + g->cap / 2 : 64;
  orch__step *ns = realloc(g->steps, ncap * sizeof *ns);
  if (!ns) return ORCH_ENOMEM;
  g->steps = ns;
  g->cap = ncap;
  return ORCH_OK;
}

static uint32_t init_step(orch_graph *g, uint32_t id, int kind) {
  orch__step *s = &g->steps[g->n];
  memset(s, 0, sizeof *s);
  s->id = id;
  s->kind = (uint8_t)kind;
  g->nkind[kind]++;
  s->status = ORCH_PENDING;
  s->exit_status = -1;
  s->started_ns = s->finished_ns = -1;
  return (uint32_t)g->n++;
}

int orch__graph_add(orch_graph *g, const char *id, size_t idlen, int kind,
                    uint32_t *idx, char *err, size_t errlen) {
  char msg[400];
  /* Each failure is the caller's to report, not the graph's: a refused
   * add leaves nothing behind for a later validation to trip on. */
  int rc = orch__check_id(id, idlen, msg, sizeof msg);
  if (rc) return orch__err(err, errlen, rc, "%s", msg);
  if (g->validated || g->ran) {
    return orch__err(err, errlen, ORCH_ESTATE,
                     "graph is already validated; add steps before");
  }
  size_t named = g->n - g->nanon + 1;
  if (named * 2 > g->hash_cap &&
      hash_grow(g, named > g->hint_steps ? named : g->hint_steps))
    return orch__err(err, errlen, ORCH_ENOMEM, "out of memory for the id hash");
  uint32_t hv = hash_str(id, idlen), found;
  size_t slot = probe(g, id, idlen, hv, &found);
  if (found == NONE) found = anon_index(g, id, idlen);
  if (found != NONE) {
    return orch__err(err, errlen, ORCH_EPLAN, "duplicate step id '%.*s'",
                     (int)idlen, id);
  }
  if ((rc = grow_steps(g)))
    return orch__err(err, errlen, rc, rc == ORCH_ELIMIT
                                          ? "over the limit of 2^32 - 2 steps"
                                          : "out of memory for the steps");
  if (g->ids_len + idlen + 1 > g->ids_cap) {
    size_t ncap = g->ids_cap ? g->ids_cap + g->ids_cap / 2 : 4096;
    while (ncap < g->ids_len + idlen + 1) ncap *= 2;
    if (ncap > UINT32_MAX)
      return orch__err(err, errlen, ORCH_ELIMIT,
                       "the ids are over the limit of 4 GiB in all");
    char *ni = realloc(g->ids, ncap);
    if (!ni) return orch__err(err, errlen, ORCH_ENOMEM, "out of memory for the ids");
    g->ids = ni;
    g->ids_cap = ncap;
  }
  uint32_t off = (uint32_t)g->ids_len;
  memcpy(g->ids + g->ids_len, id, idlen);
  g->ids[g->ids_len + idlen] = '\0';
  g->ids_len += idlen + 1;
  *idx = init_step(g, off, kind);
  g->hash[2 * slot] = *idx + 1;
  g->hash[2 * slot + 1] = hv;
  return ORCH_OK;
}

/* Empties hash slot h and moves back the entries after it that probed past
 * it (linear probing's deletion: no tombstones, every probe stays exact). */
static void hash_remove(orch_graph *g, size_t h) {
  size_t mask = g->hash_cap - 1;
  g->hash[2 * h] = 0;
  for (size_t j = (h + 1) & mask; g->hash[2 * j]; j = (j + 1) & mask) {
    size_t home = g->hash[2 * j + 1] & mask;
    /* The entry at j stays when its home lies in (h, j], cyclically. */
    if (h <= j ? (h < home && home <= j) : (h < home || home <= j)) continue;
    g->hash[2 * h] = g->hash[2 * j];
    g->hash[2 * h + 1] = g->hash[2 * j + 1];
    g->hash[2 * j] = 0;
    h = j;
  }
}

orch__graph_mark orch__graph_mark_now(const orch_graph *g) {
  return (orch__graph_mark){.n = g->n, .ids_len = g->ids_len,
                            .nedges = g->nedges, .npending = g->npending};
}

void orch__graph_undo(orch_graph *g, const orch__graph_mark *m) {
  while (g->n > m->n) {
    uint32_t i = (uint32_t)(g->n - 1);
    orch__step *s = &g->steps[i];
    const orch__kind *k = orch__kinds[s->kind];
    if (k && k->free) k->free(s);
    free(s->output);
    free(s->error);
    g->nkind[s->kind]--;
    if (s->id == ORCH__ANON) {
      g->nanon--;
    } else {
      const char *id = g->ids + s->id;
      size_t len = strlen(id);
      uint32_t found;
      size_t h = probe(g, id, len, hash_str(id, len), &found);
      if (found == i) hash_remove(g, h);
    }
    g->n--;
  }
  g->ids_len = m->ids_len;
  g->nedges = m->nedges;
  for (size_t i = m->npending; i < g->npending; i++) {
    free(g->pending_names[i]);
    if (g->pending_ids) free(g->pending_ids[i]);
  }
  g->npending = m->npending;
}

int orch__graph_add_anon(orch_graph *g, int kind, uint32_t *idx) {
  if (g->validated || g->ran) return ORCH_ESTATE;
  int rc = grow_steps(g);
  if (rc) return rc;
  g->nanon++;
  *idx = init_step(g, ORCH__ANON, kind);
  return ORCH_OK;
}

/* Edges as added, two arrays: when they come in order of the dependent
 * step, efrom becomes the CSR's dependency list as it is. */
static int grow_edges(orch_graph *g, size_t ncap) {
  if (ncap > UINT32_MAX) return ORCH_ELIMIT;
  uint32_t *nf = realloc(g->efrom, ncap * sizeof *nf);
  if (!nf) return ORCH_ENOMEM;
  g->efrom = nf;
  uint32_t *nt = realloc(g->eto, ncap * sizeof *nt);
  if (!nt) return ORCH_ENOMEM;
  g->eto = nt;
  g->edges_cap = ncap;
  return ORCH_OK;
}

void orch__prefault(void *p, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  if (bytes < ((size_t)1 << 20)) return;
  uintptr_t lo = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
  uintptr_t hi = ((uintptr_t)p + bytes) & ~(uintptr_t)4095;
  if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
#else
  (void)p;
  (void)bytes;
#endif
}

int orch_graph_reserve(orch_graph *g, size_t nsteps, size_t nedges) {
  if (!g) return ORCH_EINVAL;
  if (g->validated || g->ran) return ORCH_ESTATE;
  if (nsteps >= UINT32_MAX - 1 || nedges >= UINT32_MAX) return ORCH_ELIMIT;
  if (nsteps > g->cap) {
    orch__step *ns = realloc(g->steps, nsteps * sizeof *ns);
    if (!ns) return ORCH_ENOMEM;
    orch__prefault(ns + g->n, (nsteps - g->n) * sizeof *ns);
    g->steps = ns;
    g->cap = nsteps;
  }
  if (nedges > g->edges_cap) {
    int rc = grow_edges(g, nedges);
    if (rc) return rc;
    orch__prefault(g->efrom + g->nedges, (nedges - g->nedges) * sizeof *g->efrom);
    orch__prefault(g->eto + g->nedges, (nedges - g->nedges) * sizeof *g->eto);
  }
  /* The id hash is sized on the first named step: a host adding only
   * anonymous steps never pays for it. */
  if (nsteps > g->hint_steps) g->hint_steps = nsteps;
  return ORCH_OK;
}

static int add_edge(orch_graph *g, uint32_t from, uint32_t to) {
  int rc;
  if (g->nedges == g->edges_cap &&
      (rc = grow_edges(g, g->edges_cap ? g->edges_cap * 2 : 256)))
    return rc;
  g->efrom[g->nedges] = from;
  g->eto[g->nedges] = to;
  g->nedges++;
  return ORCH_OK;
}

/* An edge to resolve at validation, so the order of adds is free: step idx
 * (or, idx NONE, the step named id, not added yet) depends on dep. */
static int add_pending(orch_graph *g, uint32_t idx, const char *id,
                       const char *dep, size_t deplen) {
  if (g->npending == g->pending_cap) {
    size_t ncap = g->pending_cap ? g->pending_cap * 2 : 16;
    char **nn = realloc(g->pending_names, ncap * sizeof *nn);
    if (!nn) return ORCH_ENOMEM;
    g->pending_names = nn;
    uint32_t *nf = realloc(g->pending_from, ncap * sizeof *nf);
    if (!nf) return ORCH_ENOMEM;
    g->pending_from = nf;
    if (g->pending_ids) {
      char **ni = realloc(g->pending_ids, ncap * sizeof *ni);
      if (!ni) return ORCH_ENOMEM;
      g->pending_ids = ni;
    }
    g->pending_cap = ncap;
  }
  if (id && !g->pending_ids) {
    /* The first dependent by name: the ids array from here on. */
    g->pending_ids = calloc(g->pending_cap, sizeof *g->pending_ids);
    if (!g->pending_ids) return ORCH_ENOMEM;
  }
  char *name = orch__strndup(dep, deplen);
  char *idcopy = id ? orch__strdup(id) : NULL;
  if (!name || (id && !idcopy)) {
    free(name);
    free(idcopy);
    return ORCH_ENOMEM;
  }
  g->pending_names[g->npending] = name;
  g->pending_from[g->npending] = idx;
  if (g->pending_ids) g->pending_ids[g->npending] = idcopy;
  g->npending++;
  return ORCH_OK;
}

int orch__graph_depend_idx(orch_graph *g, uint32_t idx, const char *dep,
                           size_t deplen) {
  if (g->validated) return ORCH_ESTATE;
  uint32_t d = lookup(g, dep, deplen);
  if (d != NONE) return add_edge(g, d, idx);
  return add_pending(g, idx, NULL, dep, deplen);
}

int orch_graph_depend_index(orch_graph *g, size_t step, size_t dep) {
  if (!g || step >= g->n || dep >= g->n) return ORCH_EINVAL;
  if (g->validated) return ORCH_ESTATE;
  return add_edge(g, (uint32_t)dep, (uint32_t)step);
}

int orch_graph_depend(orch_graph *g, const char *id, const char *dep) {
  if (!g || !id || !dep) return ORCH_EINVAL;
  /* Hosts usually add a step and then its dependencies: try the last step
   * before hashing. */
  if (g->n && g->steps[g->n - 1].id != ORCH__ANON &&
      strcmp(g->ids + g->steps[g->n - 1].id, id) == 0)
    return orch__graph_depend_idx(g, (uint32_t)(g->n - 1), dep, strlen(dep));
  long i = orch_graph_find(g, id);
  if (i >= 0) return orch__graph_depend_idx(g, (uint32_t)i, dep, strlen(dep));
  /* The step itself is not added yet: resolved at validation too. */
  if (g->validated) return ORCH_ESTATE;
  return add_pending(g, NONE, id, dep, strlen(dep));
}

/* A failed set leaves the graph as it was: nothing to report later. */
int orch_graph_set_cost(orch_graph *g, const char *id, double ms) {
  long i = g && id ? orch_graph_find(g, id) : -1;
  if (i < 0) return g && id ? ORCH_ENOTFOUND : ORCH_EINVAL;
  if (!(ms >= 0 && ms <= ORCH__SLEEP_MAX_MS)) return ORCH_EINVAL;
  g->steps[i].cost = (float)ms;
  g->steps[i].flags |= ORCH__SF_HAS_COST;
  return ORCH_OK;
}

int orch_graph_set_timeout(orch_graph *g, const char *id, double ms) {
  long i = g && id ? orch_graph_find(g, id) : -1;
  if (i < 0) return g && id ? ORCH_ENOTFOUND : ORCH_EINVAL;
  if (!(ms >= 0 && ms <= ORCH__SLEEP_MAX_MS)) return ORCH_EINVAL;
  g->steps[i].timeout_ms = (float)ms;
  return ORCH_OK;
}

static double step_cost(const orch__step *s) {
  if (s->flags & ORCH__SF_HAS_COST) return s->cost;
  const orch__kind *k = orch__kinds[s->kind];
  return k && k->cost ? k->cost(s) : 1.0;
}

/* Finds a cycle among the steps Kahn's algorithm could not order (each has
 * an unfinished dependency, so walking dependencies must loop) and writes
 * it as "a -> b -> c -> a", each step depending on the next. */
static void name_cycle(orch_graph *g, const uint32_t *indeg, char *err,
                       size_t errlen) {
  uint32_t start = NONE;
  for (size_t i = 0; i < g->n && start == NONE; i++)
    if (indeg[i]) start = (uint32_t)i;
  uint32_t *pos = malloc(g->n * sizeof *pos);
  uint32_t *path = malloc(g->n * sizeof *path);
  if (!pos || !path) {
    orch__err(err, errlen, ORCH_ECYCLE, "dependency cycle");
    goto done;
  }
  memset(pos, 0xff, g->n * sizeof *pos);
  size_t len = 0;
  uint32_t v = start;
  while (pos[v] == NONE) {
    pos[v] = (uint32_t)len;
    path[len++] = v;
    uint32_t next = NONE;
    for (uint32_t e = g->dep_off[v]; e < g->dep_off[v + 1]; e++)
      if (indeg[g->deps[e]]) { next = g->deps[e]; break; }
    v = next;
  }
  orch__buf b = {0};
  orch__buf_printf(&b, "dependency cycle: ");
  for (size_t i = pos[v]; i < len; i++)
    orch__buf_printf(&b, "%s -> ", orch__step_id(g, path[i]));
  orch__buf_printf(&b, "%s (each step depends on the next)",
                   orch__step_id(g, v));
  orch__err(err, errlen, ORCH_ECYCLE, "%s", b.p ? b.p : "dependency cycle");
  orch__buf_deinit(&b);
done:
  free(pos);
  free(path);
}

/* Drops repeated dependencies of each step, in place (the first stays).
 * Short lists compare pairwise; long ones use a stamp per step. */
static int dedup_deps(orch_graph *g) {
  size_t n = g->n, w = 0;
  uint32_t *stamp = NULL;
  for (size_t i = 0; i < n; i++) {
    uint32_t lo = g->dep_off[i], hi = g->dep_off[i + 1];
    g->dep_off[i] = (uint32_t)w;
    if (hi - lo > 16 && !stamp) {
      if (!(stamp = malloc(n * sizeof *stamp))) return ORCH_ENOMEM;
      memset(stamp, 0xff, n * sizeof *stamp);
    }
    size_t first = w;
    for (uint32_t e = lo; e < hi; e++) {
      uint32_t d = g->deps[e];
      bool dup = false;
      if (hi - lo > 16) {
        dup = stamp[d] == i;
        stamp[d] = (uint32_t)i;
      } else {
        for (size_t k = first; k < w && !dup; k++) dup = g->deps[k] == d;
      }
      if (!dup) g->deps[w++] = d;
    }
  }
  g->dep_off[n] = (uint32_t)w;
  free(stamp);
  return ORCH_OK;
}

int orch_graph_validate(orch_graph *g, char *err, size_t errlen) {
  int rc = ORCH_OK;
  uint32_t *indeg = NULL, *order = NULL;
  bool edges_gone = false;
  if (!g) return orch__err(err, errlen, ORCH_EINVAL, "no graph");
  if (g->validated) return ORCH_OK;
  if (g->err_code) return orch__err(err, errlen, g->err_code, "%s", g->err_msg);
  if (g->n == 0)
    return orch__err(err, errlen, ORCH_EPLAN, "empty graph: no steps");
  /* The names first, all of them, and only then the edges: a failure
   * leaves the list as it was, for a later add and validation. */
  for (size_t i = 0; i < g->npending; i++) {
    const char *name = g->pending_names[i];
    const char *id = g->pending_ids ? g->pending_ids[i] : NULL;
    if (id && lookup(g, id, strlen(id)) == NONE)
      return orch__err(err, errlen, ORCH_EPLAN,
                       "unknown step '%s' given a dependency on '%s'", id,
                       name);
    if (lookup(g, name, strlen(name)) == NONE)
      return orch__err(err, errlen, ORCH_EPLAN,
                       "step '%s' depends on unknown step '%s'",
                       id ? id : orch__step_id(g, g->pending_from[i]), name);
  }
  if (g->npending && g->nedges + g->npending > g->edges_cap &&
      (rc = grow_edges(g, g->nedges + g->npending)))
    return orch__err(err, errlen, rc, "no room for the graph's edges");
  for (size_t i = 0; i < g->npending; i++) { /* cannot fail: room made */
    const char *name = g->pending_names[i];
    const char *id = g->pending_ids ? g->pending_ids[i] : NULL;
    uint32_t to = id ? lookup(g, id, strlen(id)) : g->pending_from[i];
    add_edge(g, lookup(g, name, strlen(name)), to);
  }
  for (size_t i = 0; i < g->npending; i++) {
    free(g->pending_names[i]);
    if (g->pending_ids) free(g->pending_ids[i]);
  }
  free(g->pending_ids);
  g->pending_ids = NULL;
  g->npending = 0;
  size_t n = g->n, ne = g->nedges;
  /* One pass over the edges as added: self-dependencies, counts per
   * dependent step, whether every edge goes forward (from a lower to a
   * higher index: index order is then a topological order and no cycle is
   * possible), whether they come in order of the dependent step (efrom is
   * then the CSR's list as it is), and repeated edges within a dependent's
   * run (long runs are left to dedup_deps). Offsets are counted one slot
   * ahead (off[to + 2]) so a scatter can use them as cursors and leave them
   * final. */
  free(g->dep_off); free(g->deps); free(g->out_off); free(g->outs);
  free(g->level); free(g->bottom); free(g->topo);
  g->deps = g->outs = g->topo = NULL;
  g->bottom = NULL;
  g->dep_off = calloc(n + 2, sizeof *g->dep_off);
  g->out_off = calloc(n + 2, sizeof *g->out_off);
  g->level = calloc(n, sizeof *g->level);
  if (!g->dep_off || !g->out_off || !g->level) {
    rc = ORCH_ENOMEM;
    goto done;
  }
  orch__prefault(g->dep_off, (n + 2) * sizeof *g->dep_off);
  if (ne) orch__prefault(g->out_off, (n + 2) * sizeof *g->out_off);
  bool forward = true, sorted = true, dups = false;
  const uint32_t *efrom = g->efrom, *eto = g->eto;
  size_t run = 0; /* start of the current dependent's run of edges */
  for (size_t e = 0; e < ne; e++) {
    uint32_t from = efrom[e], to = eto[e];
    if (from == to) {
      rc = orch__err(err, errlen, ORCH_EPLAN, "step '%s' depends on itself",
                     orch__step_id(g, to));
      goto done;
    }
    forward &= from < to;
    if (e && to != eto[e - 1]) {
      sorted &= to > eto[e - 1];
      run = e;
    } else if (e - run > 16) {
      dups = true; /* long: let dedup_deps look */
    } else {
      for (size_t k = run; k < e; k++) dups |= efrom[k] == from;
    }
    g->dep_off[to + 2]++;
    g->out_off[from + 2]++;
  }
  if (!sorted) dups = true; /* runs are split: let dedup_deps look */
  for (size_t i = 2; i <= n; i++) g->dep_off[i] += g->dep_off[i - 1];
  if (sorted) {
    g->deps = g->efrom; /* already grouped by dependent, in order */
    g->efrom = NULL;
    for (size_t i = 0; i < n; i++) g->dep_off[i] = g->dep_off[i + 1];
    g->dep_off[n] = (uint32_t)ne;
  } else {
    g->deps = malloc((ne ? ne : 1) * sizeof *g->deps);
    if (!g->deps) { rc = ORCH_ENOMEM; goto done; }
    for (size_t e = 0; e < ne; e++) g->deps[g->dep_off[eto[e] + 1]++] = efrom[e];
  }
  /* The raw lists are no longer needed (so from here on, a failure is
   * kept as the graph's error: a second validation has no edges). */
  free(g->efrom);
  free(g->eto);
  g->efrom = g->eto = NULL;
  g->nedges = g->edges_cap = 0;
  edges_gone = true;
  if (dups) {
    if ((rc = dedup_deps(g))) goto done;
    /* Recount the dependents without the repeats. */
    memset(g->out_off, 0, (n + 2) * sizeof *g->out_off);
    for (size_t e = 0; e < g->dep_off[n]; e++) g->out_off[g->deps[e] + 2]++;
  }
  size_t w = g->dep_off[n];
  if (!g->deps) {
    g->deps = malloc(sizeof *g->deps);
    if (!g->deps) { rc = ORCH_ENOMEM; goto done; }
  }
  /* Dependents by the same counting scatter, by dependency; with forward
   * edges the levels come in the same pass (index order is topological). */
  g->outs = malloc((w ? w : 1) * sizeof *g->outs);
  if (!g->outs) { rc = ORCH_ENOMEM; goto done; }
  for (size_t i = 2; i <= n; i++) g->out_off[i] += g->out_off[i - 1];
  uint32_t maxlevel = 0;
  if (forward) {
    for (size_t i = 0; i < n && w; i++) {
      uint32_t lv = 0;
      for (uint32_t e = g->dep_off[i]; e < g->dep_off[i + 1]; e++) {
        uint32_t d = g->deps[e];
        g->outs[g->out_off[d + 1]++] = (uint32_t)i;
        if (g->level[d] + 1 > lv) lv = g->level[d] + 1;
      }
      g->level[i] = lv;
      if (lv > maxlevel) maxlevel = lv;
    }
  } else {
    for (size_t i = 0; i < n; i++)
      for (uint32_t e = g->dep_off[i]; e < g->dep_off[i + 1]; e++)
        g->outs[g->out_off[g->deps[e] + 1]++] = (uint32_t)i;
    /* Kahn: topological order and levels. */
    order = malloc(n * sizeof *order);
    indeg = malloc(n * sizeof *indeg);
    if (!order || !indeg) { rc = ORCH_ENOMEM; goto done; }
    size_t head = 0, tail = 0;
    for (size_t i = 0; i < n; i++) {
      indeg[i] = g->dep_off[i + 1] - g->dep_off[i];
      if (!indeg[i]) order[tail++] = (uint32_t)i;
    }
    while (head < tail) {
      uint32_t v = order[head++];
      uint32_t lv = g->level[v] + 1;
      for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++) {
        uint32_t x = g->outs[e];
        if (g->level[x] < lv) g->level[x] = lv;
        if (lv > maxlevel) maxlevel = lv;
        if (--indeg[x] == 0) order[tail++] = x;
      }
    }
    if (tail < n) {
      /* Kept as the graph's error: the edges are gone, a second
       * validation must not pass. */
      char msg[512];
      name_cycle(g, indeg, msg, sizeof msg);
      rc = orch__err(err, errlen, ORCH_ECYCLE, "%s", msg);
      set_err(g, ORCH_ECYCLE, msg);
      goto done;
    }
    g->topo = order; /* for the bottom levels */
    order = NULL;
  }
  g->nlevels = maxlevel + 1;
  g->validated = true;
done:
  if (rc && edges_gone) set_err(g, rc, "out of memory validating the graph");
  free(indeg);
  free(order);
  return rc;
}

/* Bottom levels in reverse topological order: the scheduler's priority
 * when an in-flight limit binds, and the critical path. Computed on first
 * need, not by every validation. */
int orch__graph_bottoms(orch_graph *g) {
  if (g->bottom) return ORCH_OK;
  if (!g->validated) return ORCH_ESTATE;
  double *b = malloc((g->n ? g->n : 1) * sizeof *b);
  if (!b) return ORCH_ENOMEM;
  for (size_t k = g->n; k-- > 0;) {
    uint32_t v = g->topo ? g->topo[k] : (uint32_t)k;
    double best = 0;
    for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++)
      if (b[g->outs[e]] > best) best = b[g->outs[e]];
    b[v] = step_cost(&g->steps[v]) + best;
  }
  g->bottom = b;
  return ORCH_OK;
}

size_t orch_graph_size(const orch_graph *g) { return g ? g->n : 0; }
size_t orch_graph_levels(const orch_graph *g) {
  return g && g->validated ? g->nlevels : 0;
}

size_t orch_graph_critical_path(const orch_graph *g, size_t *idx, size_t cap,
                                double *cost) {
  if (cost) *cost = 0;
  if (!g || !g->validated) return 0;
  /* The bottom levels are a cache filled on first need. */
  if (orch__graph_bottoms((orch_graph *)g)) return 0;
  const double *bottom = g->bottom;
  uint32_t v = NONE;
  double best = -1;
  for (size_t i = 0; i < g->n; i++)
    if (g->dep_off[i] == g->dep_off[i + 1] && bottom[i] > best) {
      best = bottom[i];
      v = (uint32_t)i;
    }
  if (cost) *cost = best;
  size_t len = 0;
  while (v != NONE) {
    if (len < cap) idx[len] = v;
    len++;
    uint32_t next = NONE;
    double nb = -1;
    for (uint32_t e = g->out_off[v]; e < g->out_off[v + 1]; e++)
      if (bottom[g->outs[e]] > nb) {
        nb = bottom[g->outs[e]];
        next = g->outs[e];
      }
    v = next;
  }
  return len;
}

/* ---- result accessors ---------------------------------------------------- */

#define STEP(g, i) (&(g)->steps[i])
#define CHECK(g, i, bad) \
  if (!(g) || (i) >= (g)->n) return bad

const char *orch_step_id(const orch_graph *g, size_t i) {
  CHECK(g, i, NULL);
  return orch__step_id(g, (uint32_t)i);
}
const char *orch_step_kind(const orch_graph *g, size_t i) {
  CHECK(g, i, NULL);
  return orch__kinds[STEP(g, i)->kind]->name;
}
size_t orch_step_ndeps(const orch_graph *g, size_t i) {
  CHECK(g, i, 0);
  if (!g->validated) return 0;
  return g->dep_off[i + 1] - g->dep_off[i];
}
size_t orch_step_dep(const orch_graph *g, size_t i, size_t j) {
  CHECK(g, i, (size_t)-1);
  if (!g->validated || j >= orch_step_ndeps(g, i)) return (size_t)-1;
  return g->deps[g->dep_off[i] + j];
}
size_t orch_step_level(const orch_graph *g, size_t i) {
  CHECK(g, i, 0);
  return g->validated ? g->level[i] : 0;
}
double orch_step_cost(const orch_graph *g, size_t i) {
  CHECK(g, i, 0);
  return step_cost(STEP(g, i));
}
int orch_step_status(const orch_graph *g, size_t i) {
  CHECK(g, i, -1);
  return STEP(g, i)->status;
}
double orch_step_started_ms(const orch_graph *g, size_t i) {
  CHECK(g, i, -1);
  int64_t t = STEP(g, i)->started_ns;
  return t < 0 ? -1 : (double)t / 1e6;
}
double orch_step_finished_ms(const orch_graph *g, size_t i) {
  CHECK(g, i, -1);
  int64_t t = STEP(g, i)->finished_ns;
  return t < 0 ? -1 : (double)t / 1e6;
}
int orch_step_attempts(const orch_graph *g, size_t i) {
  CHECK(g, i, 0);
  return STEP(g, i)->attempts;
}
const char *orch_step_output(const orch_graph *g, size_t i) {
  CHECK(g, i, NULL);
  return STEP(g, i)->output;
}
const char *orch_step_error(const orch_graph *g, size_t i) {
  CHECK(g, i, NULL);
  return STEP(g, i)->error;
}
int orch_step_exit_status(const orch_graph *g, size_t i) {
  CHECK(g, i, -1);
  return STEP(g, i)->exit_status;
}
unsigned orch_step_generation(const orch_graph *g, size_t i) {
  CHECK(g, i, 0);
  return STEP(g, i)->generation;
}
double orch_graph_makespan_ms(const orch_graph *g) {
  return g ? (double)g->makespan_ns / 1e6 : 0;
}

void orch__step_set_error(orch__step *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *e = orch__vasprintf(fmt, ap);
  va_end(ap);
  free(s->error);
  s->error = e;
}

void orch__step_set_output(orch__step *s, const char *p, size_t n) {
  free(s->output);
  s->output = orch__strndup(p, n);
}
