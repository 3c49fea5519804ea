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
    if (!sf->path || !sf->real || !sf->text)
        return -1;
    return (int)c->n_files++;
}
