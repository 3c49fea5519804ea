/* import.c - the import resolver: walks a spec's top-level declarations into
 * sema, reading and parsing each imported file where its import stands. */
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

/* import "PATH";  relative to the importing file; each file read once */
static void import_one(importer *im, int fi, const stmt *s)
{
    flow_compilation *c = im->c;
    const char *from = c->files[fi].path;
    const char *slash = strrchr(from, '/');
    char path[PATH_MAX], real[PATH_MAX];
    char *text;
    size_t len;
    int err, nfi;

    if (s->name[0] == '/' || !slash)
        snprintf(path, sizeof path, "%s", s->name);
    else
        snprintf(path, sizeof path, "%.*s/%s", (int)(slash - from), from,
                 s->name);
    if (!realpath(path, real)) {
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
        if (!strcmp(c->files[k].real, real))
            return;             /* already read (a diamond), nothing new */
    if (im->depth >= MAX_IMPORT_DEPTH) {
        diag_error(c, "F0400", s->name_loc, NULL, "imports nested deeper "
                   "than %d levels", MAX_IMPORT_DEPTH);
        return;
    }
    if ((err = source_read(path, &text, &len)) != 0) {
        diag_error(c, "F0010", s->name_loc, NULL, "cannot read import "
                   "'%s': %s", path, source_strerror(err));
        return;
    }
    nfi = source_add(c, path, real, text, len);
    free(text);
    if (nfi < 0) {
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
