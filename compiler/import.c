/* import.c - the import resolver: walks a spec's top-level declarations into
 * sema, reading (from disk, or from a compilation's in-memory sources) and
 * parsing each imported file where its import stands. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"

#define MAX_IMPORT_DEPTH 32

typedef struct importer {
    flow_compilation *c;
    sema *S;
    int stack[MAX_IMPORT_DEPTH + 1];    /* files being walked, main first */
    int depth;
} importer;

static void walk(importer *im, int fi);

/* The file an import names among the in-memory sources: its path or one
 * of its aliases equals the import's path.  -1 when none. */
static int find_provided(const flow_compilation *c, const char *path)
{
    for (size_t j = 1; j < c->n_provided; j++) {
        const flow_spec_file *f = &c->provided[j];
        if (!strcmp(f->path, path))
            return (int)j;
        for (size_t k = 0; k < f->n_aliases; k++)
            if (!strcmp(f->aliases[k], path))
                return (int)j;
    }
    return -1;
}

static int ends_with_flow(const char *name)
{
    size_t n = strlen(name);
    return n > 5 && !strcmp(name + n - 5, ".flow") && name[n - 6] != '/';
}

/* import "PATH";  relative to the importing file; each file read once.
 * Only *.flow files are imported, so that a spec cannot make a diagnostic
 * quote lines of another kind of file.  With in-memory sources nothing is
 * read from disk. */
static void import_one(importer *im, int fi, const stmt *s)
{
    flow_compilation *c = im->c;
    const char *from = c->files[fi].from;
    const char *slash = strrchr(from, '/');
    const flow_spec_file *pf = NULL;
    char path[PATH_MAX], real[PATH_MAX];
    char *text = NULL;
    size_t len;
    int err, nfi;

    if (!ends_with_flow(s->name)) {
        diag_error(c, "F0010", s->name_loc, "name the imported spec "
                   "NAME.flow", "cannot import '%s': an imported file must "
                   "be a .flow spec", s->name);
        return;
    }
    if (s->name[0] == '/' || !slash)
        snprintf(path, sizeof path, "%s", s->name);
    else
        snprintf(path, sizeof path, "%.*s/%s", (int)(slash - from), from,
                 s->name);
    if (c->provided) {
        int j = find_provided(c, path);
        if (j < 0) {
            diag_error(c, "F0010", s->name_loc, "a spec compiled from "
                       "memory (a checkpoint's embedded copy) reads nothing "
                       "from disk", "cannot import '%s': %s is not among the "
                       "embedded source files", s->name, path);
            return;
        }
        pf = &c->provided[j];
        snprintf(real, sizeof real, "%s", pf->resolved ? pf->resolved
                                                        : pf->path);
    } else if (!realpath(path, real)) {
        diag_error(c, "F0010", s->name_loc, "imports are relative to the "
                   "importing file", "cannot read import '%s': %s", path,
                   strerror(errno));
        return;
    }
    for (int k = 0; k < im->depth; k++)
        if (!strcmp(c->files[im->stack[k]].real, real)) {
            char chain[1024];
            size_t used = 0;
            for (int j = k; j < im->depth && used < sizeof chain; j++)
                used += (size_t)snprintf(chain + used, sizeof chain - used,
                                         "%.200s -> ",
                                         c->files[im->stack[j]].path);
            if (used < sizeof chain)
                snprintf(chain + used, sizeof chain - used, "%.200s", path);
            diag_error(c, "F0011", s->name_loc, "remove one of the imports",
                       "import cycle: %s", chain);
            return;
        }
    for (size_t k = 0; k < c->n_files; k++)
        if (!c->files[k].cmdline && !strcmp(c->files[k].real, real)) {
            /* already read (a diamond): nothing new, but a checkpoint
             * must resolve this spelling of the path too */
            if (source_add_alias(c, (int)k, path))
                c->mem.failed = 1;
            return;
        }
    if (im->depth >= MAX_IMPORT_DEPTH) {
        diag_error(c, "F0400", s->name_loc, NULL, "imports nested deeper "
                   "than %d levels", MAX_IMPORT_DEPTH);
        return;
    }
    if (pf) {
        if (pf->len > FLOW_MAX_FILE_BYTES) {
            diag_error(c, "F0010", s->name_loc, NULL, "cannot read import "
                       "'%s': %s", path, source_strerror(EFBIG));
            return;
        }
        nfi = source_add(c, pf->name ? pf->name : path, real, pf->text,
                         pf->len);
    } else {
        if ((err = source_read(path, &text, &len)) != 0) {
            diag_error(c, "F0010", s->name_loc, NULL, "cannot read import "
                       "'%s': %s", path, source_strerror(err));
            return;
        }
        nfi = source_add(c, path, real, text, len);
        free(text);
    }
    if (nfi < 0
        || !(c->files[nfi].from = arena_strdup(&c->mem, pf ? pf->path
                                                          : path))
        || !(c->files[nfi].import = arena_strdup(&c->mem, s->name))) {
        c->mem.failed = 1;
        return;
    }
    if (parse_file(c, nfi) == 0)
        walk(im, nfi);
}

/* A file's declarations in source order, each import's where it stands:
 * a const sees the names declared above it, imported ones included. */
static void walk(importer *im, int fi)
{
    im->stack[im->depth++] = fi;
    for (const stmt *s = im->c->files[fi].items; s; s = s->next) {
        if (diag_stopped(im->c))
            break;
        if (s->kind == S_IMPORT)
            import_one(im, fi, s);
        else
            sema_declare(im->S, fi, s);
    }
    im->depth--;
}

void import_walk(flow_compilation *c, sema *S)
{
    importer im;
    memset(&im, 0, sizeof im);
    im.c = c;
    im.S = S;
    walk(&im, 0);
}
