/* source.c - a compilation's source files: reading a spec from disk within
 * FLOW_MAX_FILE_BYTES, and the file table that locations index into. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compiler.h"

/* source_read's error for a FIFO, device or socket (errno values are
 * positive) */
#define SOURCE_NOT_REGULAR (-1)

/* A spec or import is a regular file: opened without blocking (a FIFO
 * with no writer would block open() for ever) and refused unless fstat
 * says regular, then read blocking. */
static FILE *open_regular(const char *path, int *err)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC), fl;
    FILE *f;
    if (fd < 0) {
        *err = errno ? errno : EIO;
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *err = S_ISDIR(st.st_mode) ? EISDIR : SOURCE_NOT_REGULAR;
        close(fd);
        return NULL;
    }
    if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK)
        || !(f = fdopen(fd, "rb"))) {
        *err = errno ? errno : EIO;
        close(fd);
        return NULL;
    }
    return f;
}

int source_read(const char *path, char **text, size_t *len)
{
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    FILE *f = open_regular(path, &err);

    *text = NULL;
    *len = 0;
    if (!f)
        return err;
    for (;;) {
        size_t got;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 8192;
            char *nb;
            if (cap > FLOW_MAX_FILE_BYTES) {
                err = EFBIG;
                break;
            }
            if (!(nb = realloc(buf, nc + 1))) {
                err = ENOMEM;
                break;
            }
            buf = nb;
            cap = nc;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                err = errno ? errno : EIO;
            break;
        }
    }
    if (!err && n > FLOW_MAX_FILE_BYTES)
        err = EFBIG;
    fclose(f);
    if (err) {
        free(buf);
        return err;
    }
    if (!buf && !(buf = malloc(1)))
        return ENOMEM;
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

const char *source_strerror(int err)
{
    if (err == SOURCE_NOT_REGULAR)
        return "not a regular file (a FIFO, device or socket)";
    return err == EFBIG ? "file is larger than 1 MiB" : strerror(err);
}

int source_add(flow_compilation *c, const char *path, const char *real,
               const char *text, size_t len)
{
    source_file *sf;
    if (c->n_files == c->cap_files) {
        size_t cap = c->cap_files ? 2 * c->cap_files : 4;
        source_file *nf = realloc(c->files, cap * sizeof *nf);
        if (!nf)
            return -1;
        c->files = nf;
        c->cap_files = cap;
    }
    sf = &c->files[c->n_files];
    memset(sf, 0, sizeof *sf);
    sf->path = arena_strdup(&c->mem, path);
    sf->real = real ? arena_strdup(&c->mem, real) : sf->path;
    sf->text = arena_strndup(&c->mem, text ? text : "", text ? len : 0);
    sf->len = text ? len : 0;
    sf->from = sf->path;
    if (!sf->path || !sf->real || !sf->text)
        return -1;
    return (int)c->n_files++;
}

int source_add_alias(flow_compilation *c, int fi, const char *path)
{
    source_file *sf = &c->files[fi];
    if (!strcmp(sf->from, path))
        return 0;
    for (size_t k = 0; k < sf->n_aliases; k++)
        if (!strcmp(sf->aliases[k], path))
            return 0;
    if (sf->n_aliases == sf->cap_aliases) {
        size_t cap = sf->cap_aliases ? 2 * sf->cap_aliases : 4;
        const char **na = arena_array(&c->mem, cap, sizeof *na);
        if (!na)
            return -1;
        if (sf->n_aliases)
            memcpy(na, sf->aliases, sf->n_aliases * sizeof *na);
        sf->aliases = na;
        sf->cap_aliases = cap;
    }
    if (!(sf->aliases[sf->n_aliases] = arena_strdup(&c->mem, path)))
        return -1;
    sf->n_aliases++;
    return 0;
}

/* --- the spec files as a checkpoint embeds them ---------------------- */

/* Index into c->files of spec file i (the --target text skipped). */
static const source_file *spec_file_at(const flow_compilation *c, size_t i)
{
    for (size_t k = 0; k < c->n_files; k++)
        if (!c->files[k].cmdline && i-- == 0)
            return &c->files[k];
    return NULL;
}

size_t flow_graph_spec_file_count(const flow_graph *g)
{
    size_t n = 0;
    for (size_t k = 0; k < g->c->n_files; k++)
        n += !g->c->files[k].cmdline;
    return n;
}

int flow_graph_spec_file(const flow_graph *g, size_t i, flow_spec_file *out)
{
    const source_file *sf = spec_file_at(g->c, i);
    memset(out, 0, sizeof *out);
    if (!sf)
        return FLOW_ERR_INVAL;
    out->path = sf->from;
    out->import = sf->import;
    out->resolved = sf->real;
    out->name = sf->path;
    out->text = sf->text;
    out->len = sf->len;
    out->aliases = sf->aliases;
    out->n_aliases = sf->n_aliases;
    return FLOW_OK;
}
