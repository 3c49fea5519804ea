/* loader.c - finds plugin shared objects, dlopens them, checks the ABI
 * facts of their descriptors and keeps the registry of layer types. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctx.h"

#ifndef FLOW_PLUGIN_DIR
# error "FLOW_PLUGIN_DIR must be defined by the build"
#endif

/* v1 sizes: a descriptor smaller than these cannot be read safely.  Fields
 * appended later are read only where struct_size covers them, by their
 * readers: flow_layer_desc's 1.5 fields (model.c, the plugins' describe),
 * flow_layer_type.export_tensors of 1.6 (export.c, has_hook), the host
 * entries by FLOW_HOST_HAS in the plugins. */
#define INFO_V1_SIZE (offsetof(flow_plugin_info, targets) + sizeof(void *))
#define LAYER_V1_SIZE (offsetof(flow_layer_type, stat) + sizeof(void (*)(void)))
#define TARGET_V1_SIZE \
    (offsetof(flow_target_type, log_normalizer) + sizeof(void (*)(void)))

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static void free_dirs(flow_ctx *ctx)
{
    for (size_t i = 0; i < ctx->n_dirs; i++)
        free(ctx->dirs[i]);
    free(ctx->dirs);
    ctx->dirs = NULL;
    ctx->n_dirs = 0;
    ctx->dirs_ready = 0;
}

static int add_dir(flow_ctx *ctx, const char *s, size_t len)
{
    char **nd;
    char *d;
    if (len == 0)               /* empty entry: never the current directory */
        return FLOW_OK;
    for (size_t i = 0; i < ctx->n_dirs; i++)
        if (strlen(ctx->dirs[i]) == len && !memcmp(ctx->dirs[i], s, len))
            return FLOW_OK;
    nd = realloc(ctx->dirs, (ctx->n_dirs + 1) * sizeof *nd);
    if (!nd)
        return FLOW_ERR_NOMEM;
    ctx->dirs = nd;
    d = malloc(len + 1);
    if (!d)
        return FLOW_ERR_NOMEM;
    memcpy(d, s, len);
    d[len] = '\0';
    ctx->dirs[ctx->n_dirs++] = d;
    return FLOW_OK;
}

/* Is FLOW_PLUGIN_PATH's entry s[0..len) a directory to search?  A
 * relative entry would search below the current directory, wherever the
 * command runs (FLOW_PLUGIN_PATH=sub loaded ./sub/[*].so): ignored, with a
 * warning (the host's log channel).  An entry that is missing or not a
 * directory gets a warning and stays in the list (searching it finds
 * nothing; messages list it as searched).  An empty entry is skipped
 * silently. */
static int usable_dir(const char *s, size_t len)
{
    const flow_host *h = flow_host_services();
    char dir[PATH_MAX];
    struct stat st;
    if (len == 0)
        return 0;
    if (s[0] != '/') {
        h->log(FLOW_LOG_WARN, "FLOW_PLUGIN_PATH entry '%.*s' is a "
               "relative path: ignored (give absolute directories; the "
               "current directory is never searched)", (int)len, s);
        return 0;
    }
    if (len >= sizeof dir)
        return 1;
    memcpy(dir, s, len);
    dir[len] = '\0';
    if (stat(dir, &st) != 0)
        h->log(FLOW_LOG_WARN, "FLOW_PLUGIN_PATH entry '%s': %s", dir,
               strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        h->log(FLOW_LOG_WARN, "FLOW_PLUGIN_PATH entry '%s' is not a "
               "directory", dir);
    return 1;
}

/* Builds the search list once per context: FLOW_PLUGIN_PATH (its usable
 * entries), then the installed directory. */
static int ensure_dirs(flow_ctx *ctx)
{
    const char *env = getenv("FLOW_PLUGIN_PATH");
    if (ctx->dirs_ready)
        return FLOW_OK;
    if (env) {
        const char *p = env;
        for (;;) {
            const char *colon = strchr(p, ':');
            size_t len = colon ? (size_t)(colon - p) : strlen(p);
            if (usable_dir(p, len) && add_dir(ctx, p, len) != FLOW_OK)
                goto nomem;
            if (!colon)
                break;
            p = colon + 1;
        }
    }
    if (add_dir(ctx, FLOW_PLUGIN_DIR, strlen(FLOW_PLUGIN_DIR)) != FLOW_OK)
        goto nomem;
    ctx->dirs_ready = 1;
    return FLOW_OK;
nomem:
    free_dirs(ctx);
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
}

size_t flow_plugin_dirs(flow_ctx *ctx, const char *const **dirs)
{
    if (ensure_dirs(ctx) != FLOW_OK) {
        *dirs = NULL;
        return 0;
    }
    *dirs = (const char *const *)ctx->dirs;
    return ctx->n_dirs;
}

void loader_free(flow_ctx *ctx)
{
    for (size_t i = ctx->n_plugins; i-- > 0;) {
        dlclose(ctx->plugins[i].handle);
        free(ctx->plugins[i].file);
    }
    free(ctx->plugins);
    ctx->plugins = NULL;
    ctx->n_plugins = ctx->cap_plugins = 0;
    free_dirs(ctx);
}

/* A name a spec can write: [A-Za-z_][A-Za-z0-9_]* */
static int valid_name(const char *s)
{
    if (!s || !*s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')
                       || *s == '_'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')
              || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static const char *find_layer(const flow_ctx *ctx, const char *name,
                              const flow_layer_type **type)
{
    for (size_t i = 0; i < ctx->n_plugins; i++) {
        const flow_plugin_info *info = ctx->plugins[i].info;
        for (size_t j = 0; j < info->n_layers; j++)
            if (!strcmp(info->layers[j]->name, name)) {
                if (type)
                    *type = info->layers[j];
                return ctx->plugins[i].file;
            }
    }
    return NULL;
}

static const char *find_target(const flow_ctx *ctx, const char *name,
                               const flow_target_type **type)
{
    for (size_t i = 0; i < ctx->n_plugins; i++) {
        const flow_plugin_info *info = ctx->plugins[i].info;
        for (size_t j = 0; j < info->n_targets; j++)
            if (!strcmp(info->targets[j]->name, name)) {
                if (type)
                    *type = info->targets[j];
                return ctx->plugins[i].file;
            }
    }
    return NULL;
}

/* Checks one layer type's table; returns FLOW_OK or an error naming file. */
static int check_layer(flow_ctx *ctx, const char *file,
                       const flow_plugin_info *info, size_t j)
{
    const flow_layer_type *t = info->layers[j];
    const char *other;
    if (!t)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: layer table "
                              "entry %zu is NULL", file, j);
    if (t->struct_size < LAYER_V1_SIZE)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: layer type %zu descriptor too small "
                              "(%u bytes, need at least %zu)", file, j,
                              (unsigned)t->struct_size, (size_t)LAYER_V1_SIZE);
    if (!valid_name(t->name))
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: layer type %zu has an invalid name "
                              "(must match [A-Za-z_][A-Za-z0-9_]*)", file, j);
    /* workspace and init may be NULL (ABI 1.4): 0 bytes, nothing to do */
    if (!t->describe || !t->create || !t->destroy)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: layer type '%s' lacks a required "
                              "function (describe, create, destroy)", file,
                              t->name);
    for (size_t k = 0; k < j; k++)
        if (!strcmp(info->layers[k]->name, t->name))
            return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                                  "plugin %s: layer type '%s' is listed twice",
                                  file, t->name);
    other = find_layer(ctx, t->name, NULL);
    if (other)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "duplicate layer type "
                              "'%s': provided by both %s and %s", t->name,
                              other, file);
    return FLOW_OK;
}

static int check_target(flow_ctx *ctx, const char *file,
                        const flow_plugin_info *info, size_t j)
{
    const flow_target_type *t = info->targets[j];
    const char *other;
    if (!t || t->struct_size < TARGET_V1_SIZE || !valid_name(t->name)
        || !t->describe || !t->create || !t->destroy || !t->log_density)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: target type "
                              "%zu is malformed (NULL, too small, bad name or "
                              "missing function)", file, j);
    for (size_t k = 0; k < j; k++)
        if (!strcmp(info->targets[k]->name, t->name))
            return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: target "
                                  "type '%s' is listed twice", file, t->name);
    other = find_target(ctx, t->name, NULL);
    if (other)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "duplicate target type "
                              "'%s': provided by both %s and %s", t->name,
                              other, file);
    return FLOW_OK;
}


/* A plugin whose constructor or entry point crashes takes the process
 * with it; while one runs, a fatal signal first names its file on stderr
 * (async-signal-safe writes), then goes on to the handler that was there
 * (the default: the process dies with the same signal). */
static const int guarded[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
#define N_GUARDED (sizeof guarded / sizeof guarded[0])
static struct sigaction guard_old[N_GUARDED];
static const char *guard_file;

static void guard_handler(int sig)
{
    static const char a[] = "flowkit: fatal signal while loading plugin ";
    const char *f = guard_file;
    size_t n = 0;
    if (f) {
        while (f[n])
            n++;
        if (write(STDERR_FILENO, a, sizeof a - 1) < 0
            || write(STDERR_FILENO, f, n) < 0
            || write(STDERR_FILENO, " (its constructor or "
                     FLOW_PLUGIN_ENTRY_NAME "())\n",
                     sizeof " (its constructor or " FLOW_PLUGIN_ENTRY_NAME
                     "())\n" - 1) < 0)
            f = NULL;           /* nothing more to do about it */
    }
    for (size_t i = 0; i < N_GUARDED; i++)
        if (guarded[i] == sig)
            sigaction(sig, &guard_old[i], NULL);
    raise(sig);
}

/* on: guard the loading of `file`; off: put the old handlers back */
static void crash_guard(const char *file, int on)
{
    if (on) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = guard_handler;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_NODEFER;
        guard_file = file;
        for (size_t i = 0; i < N_GUARDED; i++)
            sigaction(guarded[i], &sa, &guard_old[i]);
    } else {
        for (size_t i = 0; i < N_GUARDED; i++)
            sigaction(guarded[i], &guard_old[i], NULL);
        guard_file = NULL;
    }
}

/* Compares the descriptor's ABI facts with ours. */
static int check_info(flow_ctx *ctx, const char *file,
                      const flow_plugin_info *info)
{
    int rc;
    if (!info)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: %s() returned NULL", file,
                              FLOW_PLUGIN_ENTRY_NAME);
    if (info->abi_version != FLOW_PLUGIN_ABI_VERSION)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: ABI version "
                              "mismatch: expected %u, got %u (rebuild the "
                              "plugin against this flowkit)", file,
                              FLOW_PLUGIN_ABI_VERSION, info->abi_version);
    if (info->struct_size < INFO_V1_SIZE)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: descriptor "
                              "too small (%u bytes, need at least %zu)", file,
                              (unsigned)info->struct_size,
                              (size_t)INFO_V1_SIZE);
    if (info->real_size != sizeof(flow_real))
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: built for float%u, but this flowkit "
                              "computes in %s (rebuild the plugin with this "
                              "flowkit's headers)", file,
                              (unsigned)info->real_size * 8, FLOW_REAL_NAME);
    if (!info->name || !*info->name)
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: descriptor has no name", file);
    if ((info->n_layers && !info->layers)
        || (info->n_targets && !info->targets))
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                              "plugin %s: descriptor counts layers or targets "
                              "but has no table", file);
    for (size_t j = 0; j < info->n_layers; j++)
        if ((rc = check_layer(ctx, file, info, j)) != FLOW_OK)
            return rc;
    for (size_t j = 0; j < info->n_targets; j++)
        if ((rc = check_target(ctx, file, info, j)) != FLOW_OK)
            return rc;
    return FLOW_OK;
}

/* Is the resolved file `real` directly inside directory dir (resolved
 * too, so that a symbolic link to the plugin directory counts)? */
static int in_dir(const char *real, const char *dir)
{
    char rdir[PATH_MAX];
    const char *slash = strrchr(real, '/');
    size_t len;
    if (!slash || !realpath(dir, rdir))
        return 0;
    len = strlen(rdir);
    return (size_t)(slash - real) == len && !memcmp(real, rdir, len);
}

/* Where a plugin came from decides whether `flowkit train` probes its
 * layers by default (docs/plugins.md, "Training verifies third-party
 * layers"): flowkit's own plugins are checked by its tests, others are
 * not known to be.  By directory, never by name: a user's coupling.so on
 * FLOW_PLUGIN_PATH is a third-party file. */
static int bundled_file(const char *real)
{
#ifdef FLOW_BUILD_PLUGIN_DIR
    if (in_dir(real, FLOW_BUILD_PLUGIN_DIR))
        return 1;
#endif
    /* without it (a build of the sources outside Makefile.am, such as
     * the fuzz targets'): the installed directory only */
    return in_dir(real, FLOW_PLUGIN_DIR);
}

int loader_plugin_bundled(const flow_ctx *ctx, const char *file)
{
    if (!file)
        return 0;
    for (size_t i = 0; i < ctx->n_plugins; i++)
        if (ctx->plugins[i].file == file
            || !strcmp(ctx->plugins[i].file, file))
            return ctx->plugins[i].bundled;
    return 0;
}

static int load_file(flow_ctx *ctx, const char *path)
{
    char real[PATH_MAX];
    void *handle = NULL;
    flow_plugin_entry_fn entry;
    const flow_plugin_info *info;
    char *file = NULL;
    int rc;

    if (!realpath(path, real))
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "cannot load plugin %s: "
                              "%s", path, strerror(errno));
    for (size_t i = 0; i < ctx->n_plugins; i++)
        if (!strcmp(ctx->plugins[i].file, real))
            return FLOW_OK;
    if (ctx->n_plugins == ctx->cap_plugins) {
        size_t cap = ctx->cap_plugins ? 2 * ctx->cap_plugins : 8;
        loaded_plugin *np = realloc(ctx->plugins, cap * sizeof *np);
        if (!np)
            return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        ctx->plugins = np;
        ctx->cap_plugins = cap;
    }
    dlerror();
    crash_guard(real, 1);
    handle = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *e;
        crash_guard(NULL, 0);
        e = dlerror();
        return flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "cannot load plugin %s: "
                              "%s", real, e ? e : "unknown dlopen error");
    }
    /* ISO C forbids object->function pointer casts; POSIX blesses this. */
    *(void **)(&entry) = dlsym(handle, FLOW_PLUGIN_ENTRY_NAME);
    if (!entry) {
        crash_guard(NULL, 0);
        rc = flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "plugin %s: entry point "
                            "'%s' not found (not a flowkit plugin, or built "
                            "without exporting it)", real,
                            FLOW_PLUGIN_ENTRY_NAME);
        goto fail;
    }
    info = entry();
    crash_guard(NULL, 0);
    if ((rc = check_info(ctx, real, info)) != FLOW_OK)
        goto fail;
    if (!(file = xstrdup(real))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    ctx->plugins[ctx->n_plugins].file = file;
    ctx->plugins[ctx->n_plugins].handle = handle;
    ctx->plugins[ctx->n_plugins].info = info;
    ctx->plugins[ctx->n_plugins].bundled = bundled_file(real);
    ctx->n_plugins++;
    return FLOW_OK;
fail:
    dlclose(handle);
    return rc;
}

/* Joins dir and name into buf; 0 when it does not fit. */
static int join(char *buf, size_t cap, const char *dir, const char *name,
                const char *suffix)
{
    int n = snprintf(buf, cap, "%s/%s%s", dir, name, suffix);
    return n > 0 && (size_t)n < cap;
}

int flow_plugin_load(flow_ctx *ctx, const char *name)
{
    char path[PATH_MAX];
    char searched[1024] = "";
    size_t used = 0;
    int rc;

    ctx_clear_error(ctx);
    if (!name || !*name)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "empty plugin name");
    if (strchr(name, '/'))
        return load_file(ctx, name);
    if (!valid_name(name))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "invalid plugin name '%s' "
                              "(give a path containing '/' to load a file)",
                              name);
    if ((rc = ensure_dirs(ctx)) != FLOW_OK)
        return rc;
    for (size_t i = 0; i < ctx->n_dirs; i++) {
        int n;
        if (join(path, sizeof path, ctx->dirs[i], name, ".so")
            && access(path, F_OK) == 0)
            return load_file(ctx, path);
        n = snprintf(searched + used, sizeof searched - used, "%s%s",
                     i ? ", " : "", ctx->dirs[i]);
        if (n > 0 && (size_t)n < sizeof searched - used)
            used += (size_t)n;
    }
    return flow_ctx_error(ctx, FLOW_ERR_PLUGIN,
                          "plugin '%s' not found: no %s.so in %s (set "
                          "FLOW_PLUGIN_PATH to add directories)", name, name,
                          searched);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_so_suffix(const char *s)
{
    size_t n = strlen(s);
    return n > 3 && !strcmp(s + n - 3, ".so");
}

/* Names of *.so in dir, sorted; *out owned by the caller.  A directory
 * that does not exist yields no names. */
static int list_dir(flow_ctx *ctx, const char *dir, char ***out, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t cnt = 0, cap = 0;

    *out = NULL;
    *n = 0;
    if (!d)
        return FLOW_OK;
    while ((e = readdir(d)) != NULL) {
        if (!has_so_suffix(e->d_name))
            continue;
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn)
                goto nomem;
            names = nn;
            cap = nc;
        }
        if (!(names[cnt] = xstrdup(e->d_name)))
            goto nomem;
        cnt++;
    }
    closedir(d);
    if (cnt)
        qsort(names, cnt, sizeof *names, cmp_str);
    *out = names;
    *n = cnt;
    return FLOW_OK;
nomem:
    closedir(d);
    for (size_t i = 0; i < cnt; i++)
        free(names[i]);
    free(names);
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
}

static int seen_name(char **const *lists, const size_t *counts, size_t upto,
                     const char *name)
{
    for (size_t i = 0; i < upto; i++)
        for (size_t j = 0; j < counts[i]; j++)
            if (!strcmp(lists[i][j], name))
                return 1;
    return 0;
}

/* Every *.so in the search directories; tolerant: past the files that
 * fail to load, the first failure's message left in ctx. */
static int load_all(flow_ctx *ctx, int tolerant)
{
    char first[CTX_ERRMSG_MAX] = "";
    char ***lists = NULL;
    size_t *counts = NULL;
    char path[PATH_MAX];
    int rc;

    ctx_clear_error(ctx);
    if ((rc = ensure_dirs(ctx)) != FLOW_OK)
        return rc;
    lists = calloc(ctx->n_dirs, sizeof *lists);
    counts = calloc(ctx->n_dirs, sizeof *counts);
    if (!lists || !counts) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < ctx->n_dirs; i++) {
        if ((rc = list_dir(ctx, ctx->dirs[i], &lists[i], &counts[i])))
            goto done;
        for (size_t j = 0; j < counts[i]; j++) {
            if (seen_name(lists, counts, i, lists[i][j]))
                continue;            /* hidden by an earlier directory */
            if (!join(path, sizeof path, ctx->dirs[i], lists[i][j], "")) {
                rc = flow_ctx_error(ctx, FLOW_ERR_PLUGIN, "path too long: "
                                    "%s/%s", ctx->dirs[i], lists[i][j]);
                goto done;
            }
            if ((rc = load_file(ctx, path)) != FLOW_OK) {
                if (!tolerant || rc == FLOW_ERR_NOMEM)
                    goto done;
                if (!first[0])
                    snprintf(first, sizeof first, "%s", ctx->errmsg);
            }
        }
    }
    rc = FLOW_OK;
    if (first[0])
        snprintf(ctx->errmsg, sizeof ctx->errmsg, "%s", first);
done:
    for (size_t i = 0; lists && counts && i < ctx->n_dirs; i++) {
        for (size_t j = 0; j < counts[i]; j++)
            free(lists[i][j]);
        free(lists[i]);
    }
    free(lists);
    free(counts);
    return rc;
}

int flow_plugin_load_all(flow_ctx *ctx)
{
    return load_all(ctx, 0);
}

size_t flow_plugin_count(const flow_ctx *ctx) { return ctx->n_plugins; }

const flow_plugin_info *flow_plugin_get(const flow_ctx *ctx, size_t i)
{
    return i < ctx->n_plugins ? ctx->plugins[i].info : NULL;
}

const char *flow_plugin_file(const flow_ctx *ctx, size_t i)
{
    return i < ctx->n_plugins ? ctx->plugins[i].file : NULL;
}

int flow_plugin_load_on_demand(flow_ctx *ctx)
{
    ctx_clear_error(ctx);
    ctx->on_demand = 1;
    return ensure_dirs(ctx);
}

/* On demand (flow_plugin_load_on_demand), a type not loaded yet: the
 * first NAME.so along the search path, then, failing that, every file
 * (a plugin may provide types under other names).  Plugins the spec does
 * not use are never loaded, so one that crashes or fails on loading
 * harms only the specs that need a type it might provide. */
static void demand(const flow_ctx *cctx, const char *name)
{
    flow_ctx *ctx = (flow_ctx *)cctx;   /* the cache of loaded plugins */
    char path[PATH_MAX];
    if (!ctx->on_demand || ctx->all_tried || !valid_name(name)
        || ensure_dirs(ctx) != FLOW_OK)
        return;
    ctx_clear_error(ctx);
    for (size_t i = 0; i < ctx->n_dirs; i++)
        if (join(path, sizeof path, ctx->dirs[i], name, ".so")
            && access(path, F_OK) == 0) {
            load_file(ctx, path);
            return;
        }
}

const flow_layer_type *flow_layer_type_find(const flow_ctx *ctx,
                                            const char *name,
                                            const char **file)
{
    const flow_layer_type *t = NULL;
    const char *f = find_layer(ctx, name, &t);
    if (!f && ctx->on_demand && !ctx->all_tried) {
        demand(ctx, name);
        if (!(f = find_layer(ctx, name, &t))) {
            ((flow_ctx *)ctx)->all_tried = 1;
            load_all((flow_ctx *)ctx, 1);
            f = find_layer(ctx, name, &t);
        }
    }
    if (file)
        *file = f;
    return t;
}

const flow_target_type *flow_target_type_find(const flow_ctx *ctx,
                                              const char *name,
                                              const char **file)
{
    const flow_target_type *t = NULL;
    const char *f = find_target(ctx, name, &t);
    if (!f && ctx->on_demand && !ctx->all_tried) {
        demand(ctx, name);
        if (!(f = find_target(ctx, name, &t))) {
            ((flow_ctx *)ctx)->all_tried = 1;
            load_all((flow_ctx *)ctx, 1);
            f = find_target(ctx, name, &t);
        }
    }
    if (file)
        *file = f;
    return t;
}
