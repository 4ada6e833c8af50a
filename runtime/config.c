/* config.c provides the runtime's settings: built-in defaults, a Lua file
 * returning a table (orchestrate.conf.lua, --config, ORCH_CONFIG) on top,
 * and single overrides from the command line. Unknown keys and wrong types
 * are errors naming the key and the file. Sections owned by later
 * subsystems (tiers, llm, store, server) are kept as JSON for them. Uses Lua
 * to read the file and json.c to convert it. */
#include "orch_int.h"

#include "orch_paths.h" /* ORCH_DATADIR, generated from PREFIX */

#include <dlfcn.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

enum { T_INT, T_SIZE, T_NUM, T_STR };

static const struct setting {
  const char *key;
  int type;
  size_t off;
  double min;
  const char *doc;
  double max; /* 0: none beyond the type's */
} settings[] = {
    /* a thread and a Lua state each: a typo of a zero or three must not
     * start a million threads (2.4 GB before the first failed) */
    {"workers", T_INT, offsetof(orch__config, workers), 0,
     "worker threads (0: one per core)", 1024},
    {"max_parallel", T_INT, offsetof(orch__config, max_parallel), 0,
     "steps in flight per run (0: unlimited)", 0},
    {"scripts_dir", T_STR, offsetof(orch__config, scripts_dir), 0,
     "directory of the Lua policy scripts", 0},
    {"plan_max_bytes", T_SIZE, offsetof(orch__config, plan_max_bytes), 1,
     "largest plan file accepted", 0},
    {"json_max_depth", T_INT, offsetof(orch__config, json_max_depth), 1,
     "deepest JSON nesting accepted in a plan", 0},
    {"output_max_bytes", T_SIZE, offsetof(orch__config, output_max_bytes), 0,
     "stdout/stderr kept per shell step", 0},
    /* becomes libuv's integer milliseconds: 30 days at most, as a plan's
     * timeout_ms (a larger double does not convert) */
    {"shell_timeout_ms", T_NUM, offsetof(orch__config, shell_timeout_ms), 0,
     "default shell step timeout (0: none)", ORCH__SLEEP_MAX_MS},
    /* checked where it is used: the step fails, naming it */
    {"dry_run_ms", T_NUM, offsetof(orch__config, dry_run_ms), 0,
     "simulated duration of an llm step under --dry-run", 0},
    {"lua_budget", T_INT, offsetof(orch__config, lua_budget), 1,
     "instructions per Lua call, in thousands", 0},
    {"lua_mem_max", T_SIZE, offsetof(orch__config, lua_mem_max), 65536,
     "bytes of memory per Lua state", 0},
};

/* Tables that belong to other subsystems; they check their own keys. */
static const char *const sections[] = {"tiers", "llm", "store", "server",
                                       "policy", "providers"};

/* Is dir a scripts directory of ours? Ours hold policies/retry.lua; a
 * project's own scripts/ (deploy.sh, ...) does not. */
static bool our_scripts(const char *dir) {
  char *probe = orch__asprintf("%s/policies/retry.lua", dir);
  bool ours = probe && access(probe, R_OK) == 0;
  free(probe);
  return ours;
}

/* The file this code was loaded from (PATH_MAX bytes at out): liborch.so or
 * orch.so as the loader found it, or the program when the static library
 * is linked into it (build/orchestrate, build/test_c). Not /proc/self/exe
 * alone: for a host linking liborch.so, or lua5.4 loading orch.so, that is
 * the host's binary. For the program dladdr names argv[0], so its own
 * mapping (the one holding its program headers) is read from the kernel. */
static bool library_file(char *out) {
  Dl_info self, prog;
  if (!dladdr((void *)&orch__config_defaults, &self) || !self.dli_fname)
    return false;
  void *phdr = (void *)getauxval(AT_PHDR);
  if (phdr && dladdr(phdr, &prog) && prog.dli_fbase == self.dli_fbase) {
    ssize_t n = readlink("/proc/self/exe", out, PATH_MAX - 1);
    if (n <= 0) return false;
    out[n] = '\0';
    return true;
  }
  return realpath(self.dli_fname, out) != NULL;
}

/* The scripts when no setting names them: ./scripts when it is ours (a
 * checkout), else the installed ones, else those of the build tree the
 * library was built in (build/orchestrate, build/liborch.so or build/orch.so
 * used from elsewhere before `make install`: ../scripts beside it, when it
 * is ours). With none of them, the installed path, for the error to name. */
static char *default_scripts_dir(void) {
  if (our_scripts("scripts")) return orch__strdup("scripts");
  if (access(ORCH_DATADIR "/scripts", F_OK) == 0)
    return orch__strdup(ORCH_DATADIR "/scripts");
  char lib[PATH_MAX], dir[PATH_MAX];
  char *slash = library_file(lib) ? strrchr(lib, '/') : NULL;
  if (slash) {
    *slash = '\0';
    char *up = orch__asprintf("%s/../scripts", lib);
    bool ours = up && our_scripts(up) && realpath(up, dir);
    free(up);
    if (ours) return orch__strdup(dir);
  }
  return orch__strdup(ORCH_DATADIR "/scripts");
}

void orch__config_defaults(orch__config *c) {
  memset(c, 0, sizeof *c);
  c->workers = 0;
  c->max_parallel = 0;
  c->scripts_dir = default_scripts_dir();
  c->plan_max_bytes = 16u << 20;
  c->json_max_depth = 64;
  c->output_max_bytes = 1u << 20;
  c->shell_timeout_ms = 0;
  c->dry_run_ms = 100;
  c->lua_budget = 10000; /* 10 million instructions */
  c->lua_mem_max = 64u << 20;
}

void orch__config_deinit(orch__config *c) {
  free(c->scripts_dir);
  free(c->source);
  json_decref(c->sections);
  memset(c, 0, sizeof *c);
}

static const struct setting *find(const char *key) {
  for (size_t i = 0; i < ORCH__ARRAY_LEN(settings); i++)
    if (strcmp(settings[i].key, key) == 0) return &settings[i];
  return NULL;
}

static int is_section(const char *key) {
  for (size_t i = 0; i < ORCH__ARRAY_LEN(sections); i++)
    if (strcmp(sections[i], key) == 0) return 1;
  return 0;
}

static int store_value(orch__config *c, const struct setting *s, json_t *v,
                       const char *where, char *err, size_t errlen) {
  char *base = (char *)c + s->off;
  if (s->type == T_STR) {
    if (!json_is_string(v))
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "%s: '%s' must be a string", where, s->key);
    char *p = orch__strdup(json_string_value(v));
    if (!p) return ORCH_ENOMEM;
    free(*(char **)base);
    *(char **)base = p;
    return ORCH_OK;
  }
  if (!json_is_number(v) || (s->type != T_NUM && !json_is_integer(v)))
    return orch__err(err, errlen, ORCH_ECONFIG, "%s: '%s' must be %s", where,
                     s->key, s->type == T_NUM ? "a number" : "an integer");
  double d = json_number_value(v);
  if (d < s->min)
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "%s: '%s' must be at least %.15g, got %.15g", where, s->key,
                     s->min, d);
  if (s->max > 0 && d > s->max)
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "%s: '%s' must be at most %.15g, got %.15g", where, s->key,
                     s->max, d);
  switch (s->type) {
  case T_INT:
    if (d > 1e9)
      return orch__err(err, errlen, ORCH_ECONFIG, "%s: '%s' is too large",
                       where, s->key);
    *(int *)base = (int)d;
    break;
  case T_SIZE: *(size_t *)base = (size_t)d; break;
  default: *(double *)base = d; break;
  }
  return ORCH_OK;
}

/* The config file's limits: a file is data, so these are far above what
 * one needs and only stop a mistake (or a hostile file) from taking the
 * process with it. */
#define CONFIG_BUDGET 10000000        /* instructions */
#define CONFIG_MEM_MAX (64u << 20)    /* bytes of Lua memory */

/* Shaped like l_alloc in lauxlib.c, with a cap: an allocation that would
 * take the state past it fails, which Lua reports as a memory error.
 * Frees and shrinks always succeed. */
typedef struct cfg_mem {
  size_t used;
} cfg_mem;

static void *config_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  cfg_mem *m = ud;
  if (!ptr) osize = 0; /* osize then encodes the object type */
  if (nsize == 0) {
    free(ptr);
    m->used -= osize;
    return NULL;
  }
  if (nsize > osize && nsize - osize > CONFIG_MEM_MAX - m->used) return NULL;
  void *np = realloc(ptr, nsize);
  if (np) m->used = m->used - osize + nsize;
  return np;
}

static int config_panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  fprintf(stderr, "orchestrate: unprotected Lua error in the config: %s\n",
          m ? m : "(not a string)");
  return 0; /* Lua aborts */
}

/* Once the budget is spent, the hook re-arms itself on every instruction
 * and line, so a pcall in the file cannot swallow the stop: every
 * instruction its handler runs raises again until the error leaves the
 * file (as policy.c's budget_hook does). */
static void config_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, config_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  luaL_error(L, "configuration took too long (instruction budget)");
}

/* string.rep("", n) copies nothing n times: no allocation fails and no
 * instruction is counted, so a huge n would spin for ever. Every other
 * result is bounded by the memory cap before the copying starts. */
static int config_rep(lua_State *L) {
  size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n > 0 && l == 0 && lsep == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* The functions a config file does not get: loading code and the
 * collector (a file is data), and what the instruction budget cannot
 * stop: a finalizer (__gc, needing setmetatable) and xpcall's message
 * handler run with hooks off, and pattern matching (backtracking in C)
 * and table.move (a C loop over any range) count no instructions. */
static const char *const config_removed[][2] = {
    {NULL, "dofile"},       {NULL, "loadfile"}, {NULL, "load"},
    {NULL, "require"},      {NULL, "collectgarbage"},
    {NULL, "setmetatable"}, {NULL, "xpcall"},   {"string", "find"},
    {"string", "match"},    {"string", "gmatch"}, {"string", "gsub"},
    {"table", "move"},
};

/* The error a chunk raised, naming the file: a message with a position
 * starts with it already; others ("error('x', 0)", an error object that is
 * not a string, a memory error) get it in front. */
static int config_error(lua_State *L, int status, const char *path,
                        char *err, size_t errlen) {
  if (status == LUA_ERRMEM)
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "%s: out of memory (a configuration may take at most "
                     "%u bytes)", path, CONFIG_MEM_MAX);
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                   : NULL;
  if (!msg)
    return orch__err(err, errlen, ORCH_ECONFIG,
                     "%s: error object is a %s value", path,
                     luaL_typename(L, -1));
  if (strncmp(msg, path, strlen(path)) == 0)
    return orch__err(err, errlen, ORCH_ECONFIG, "%s", msg);
  return orch__err(err, errlen, ORCH_ECONFIG, "%s: %s", path, msg);
}

/* Finds a string with a NUL byte in v (nested at most 32 deep, as the
 * conversion allows): every reader of the config takes its strings as C
 * strings, which would end there ("sqlite:a.db\0x" read as "sqlite:a.db").
 * On finding one, path holds its key path and *at the byte. */
static bool nul_in_strings(json_t *v, char *path, size_t pathlen,
                           size_t *at) {
  size_t plen = strlen(path);
  if (json_is_string(v)) {
    *at = strlen(json_string_value(v));
    return *at != json_string_length(v);
  }
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      snprintf(path + plen, pathlen - plen, "[%zu]", i + 1);
      if (nul_in_strings(x, path, pathlen, at)) return true;
    }
  } else if (json_is_object(v)) {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
      snprintf(path + plen, pathlen - plen, "%s%s", plen ? "." : "", k);
      if (nul_in_strings(x, path, pathlen, at)) return true;
    }
  }
  path[plen] = '\0';
  return false;
}

int orch__config_load(orch__config *c, const char *path, char *err,
                      size_t errlen) {
  int rc = ORCH_OK;
  json_t *t = NULL;
  cfg_mem mem = {0}; /* outlives L: lua_close frees through it */
  lua_State *L = lua_newstate(config_alloc, &mem);
  if (!L) return ORCH_ENOMEM;
  lua_atpanic(L, config_panic);
  /* A config file is data: base, string, table and math only, less what
   * config_removed lists. */
  luaL_requiref(L, "_G", luaopen_base, 1);
  luaL_requiref(L, "string", luaopen_string, 1);
  luaL_requiref(L, "table", luaopen_table, 1);
  luaL_requiref(L, "math", luaopen_math, 1);
  lua_settop(L, 0);
  for (size_t i = 0; i < ORCH__ARRAY_LEN(config_removed); i++) {
    const char *lib = config_removed[i][0];
    if (lib) lua_getglobal(L, lib);
    else lua_pushglobaltable(L);
    lua_pushnil(L);
    lua_setfield(L, -2, config_removed[i][1]);
    lua_pop(L, 1);
  }
  lua_getglobal(L, "string");
  lua_getfield(L, -1, "rep");
  lua_pushcclosure(L, config_rep, 1);
  lua_setfield(L, -2, "rep");
  lua_settop(L, 0);
  char *text = NULL;
  size_t len = 0;
  rc = orch__read_file(path, 1u << 20, &text, &len, err, errlen);
  if (rc) {
    if (rc == ORCH_EIO) rc = ORCH_ECONFIG;
    goto done;
  }
  char chunk[512];
  snprintf(chunk, sizeof chunk, "@%s", path);
  int st = luaL_loadbufferx(L, text, len, chunk, "t");
  if (st != LUA_OK) {
    rc = config_error(L, st, path, err, errlen);
    goto done;
  }
  lua_sethook(L, config_hook, LUA_MASKCOUNT, CONFIG_BUDGET);
  st = lua_pcall(L, 0, 1, 0);
  if (st != LUA_OK) {
    rc = config_error(L, st, path, err, errlen);
    goto done;
  }
  if (!lua_istable(L, -1)) {
    rc = orch__err(err, errlen, ORCH_ECONFIG,
                   "%s: must return a table of settings, returned a %s", path,
                   luaL_typename(L, -1));
    goto done;
  }
  char jerr[400];
  t = orch__lua_to_json(L, -1, 32, jerr, sizeof jerr);
  if (!t) {
    rc = orch__err(err, errlen, ORCH_ECONFIG, "%s: %s", path, jerr);
    goto done;
  }
  if (!json_is_object(t)) {
    rc = orch__err(err, errlen, ORCH_ECONFIG,
                   "%s: must return a table with named settings", path);
    goto done;
  }
  char kpath[256] = "";
  size_t at;
  if (nul_in_strings(t, kpath, sizeof kpath, &at)) {
    rc = orch__err(err, errlen, ORCH_ECONFIG,
                   "%s: '%s' has a NUL byte (byte %zu)", path, kpath, at);
    goto done;
  }
  const char *k;
  json_t *v;
  json_object_foreach(t, k, v) {
    const struct setting *s = find(k);
    if (s) {
      rc = store_value(c, s, v, path, err, errlen);
      if (rc) goto done;
    } else if (is_section(k)) {
      if (!json_is_object(v)) {
        rc = orch__err(err, errlen, ORCH_ECONFIG,
                       "%s: '%s' must be a table", path, k);
        goto done;
      }
      if (!c->sections) c->sections = json_object();
      json_object_set(c->sections, k, v);
    } else {
      rc = orch__err(err, errlen, ORCH_ECONFIG,
                     "%s: unknown setting '%s'", path, k);
      goto done;
    }
  }
  free(c->source);
  c->source = orch__strdup(path);
done:
  json_decref(t);
  free(text);
  lua_close(L);
  return rc;
}

int orch__config_set(orch__config *c, const char *key, const char *value,
                     char *err, size_t errlen) {
  const struct setting *s = find(key);
  if (!s)
    return orch__err(err, errlen, ORCH_ECONFIG, "unknown setting '%s'", key);
  json_t *v;
  if (s->type == T_STR) {
    v = json_string(value);
  } else {
    char *end;
    errno = 0;
    double d = strtod(value, &end);
    if (errno || end == value || *end || isnan(d))
      return orch__err(err, errlen, ORCH_ECONFIG,
                       "setting '%s': '%s' is not a number", key, value);
    if (s->type != T_NUM) {
      /* checked before the cast: a double out of json_int_t's range does
       * not convert (undefined behaviour) */
      if (!(d >= -9.2e18 && d <= 9.2e18))
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "setting '%s': '%s' is out of range", key, value);
      if (d != floor(d))
        return orch__err(err, errlen, ORCH_ECONFIG,
                         "setting '%s': '%s' is not an integer", key, value);
    }
    v = s->type == T_NUM ? json_real(d) : json_integer((json_int_t)d);
  }
  if (!v)
    return orch__err(err, errlen, ORCH_ECONFIG, "setting '%s': bad value",
                     key);
  int rc = store_value(c, s, v, "setting", err, errlen);
  json_decref(v);
  return rc;
}
