/* fileio.c - atomic output files (write to a temp file in the target's
 * directory, fsync, rename, fsync the directory), CRC-32C and
 * little-endian conversions. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Directory part of path ("." when it has none), newly allocated. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *d;
    size_t n;
    if (!slash)
        return dup_str(".");
    n = slash == path ? 1 : (size_t)(slash - path);
    if (!(d = malloc(n + 1)))
        return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

int fio_open_out(flow_ctx *ctx, const char *path, fio_out *o)
{
    static atomic_uint counter;
    const char *base;
    size_t dlen, n;
    int fd = -1, rc = FLOW_ERR_IO;

    memset(o, 0, sizeof *o);
    if (!path || !*path)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "empty output file name");
    if (!(o->path = dup_str(path)))
        goto nomem;
    if (!strcmp(path, "-")) {
        o->f = stdout;
        return FLOW_OK;
    }
    base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!*base) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: not a file name", path);
        goto fail;
    }
    dlen = (size_t)(base - path);
    n = dlen + strlen(base) + 64;
    if (!(o->tmp = malloc(n)))
        goto nomem;
    /* .NAME.tmp.PID.K in the same directory (same file system, so the
     * rename is atomic); O_EXCL never reuses someone else's file */
    for (int tries = 0; tries < 100; tries++) {
        snprintf(o->tmp, n, "%.*s.%s.tmp.%ld.%u", (int)dlen, path, base,
                 (long)getpid(), atomic_fetch_add(&counter, 1u));
        fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    if (fd < 0) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot create temporary file: "
                       "%s", path, strerror(errno));
        goto fail;
    }
    if (!(o->f = fdopen(fd, "wb"))) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(o->tmp);
        goto fail;
    }
    return FLOW_OK;
nomem:
    rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
fail:
    free(o->path);
    free(o->tmp);
    memset(o, 0, sizeof *o);
    return rc;
}

void fio_abort(fio_out *o)
{
    if (o->f && o->f != stdout)
        fclose(o->f);
    else if (o->f)
        fflush(o->f);
    if (o->tmp)
        unlink(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
}

static int fsync_dir(const char *path)
{
    char *d = dir_of(path);
    int fd, rc = 0;
    if (!d)
        return -1;
    fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(d);
    if (fd < 0)
        return -1;
    /* some file systems refuse fsync on directories: not an error */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = -1;
    close(fd);
    return rc;
}

int fio_commit(flow_ctx *ctx, fio_out *o)
{
    int rc = FLOW_OK;
    FILE *f = o->f;

    if (!o->tmp) {          /* stdout */
        if (fflush(f) != 0 || ferror(f))
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "stdout: write error: %s",
                                strerror(errno));
        fio_abort(o);
        return rc;
    }
    o->f = NULL;
    if (ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        int e = errno;
        fclose(f);
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: write error: %s", o->path,
                       strerror(e));
        goto fail;
    }
    if (fclose(f) != 0) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: write error: %s", o->path,
                       strerror(errno));
        goto fail;
    }
    if (rename(o->tmp, o->path) != 0) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot rename temporary file: "
                       "%s", o->path, strerror(errno));
        goto fail;
    }
    free(o->tmp);
    o->tmp = NULL;
    if (fsync_dir(o->path) != 0)
        rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot sync directory: %s",
                            o->path, strerror(errno));
    fio_abort(o);
    return rc;
fail:
    fio_abort(o);
    return FLOW_ERR_IO;
}

/* --- CRC-32C: table-driven, one byte per step (Sarwate 1988) ---------- */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t fio_crc32c(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

/* --- little-endian ------------------------------------------------------ */
void fio_put_le(unsigned char *p, uint64_t v, size_t bytes)
{
    for (size_t i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint64_t fio_get_le(const unsigned char *p, size_t bytes)
{
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

void fio_swap_le(void *dst, const void *src, size_t n, size_t size)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (host_is_le()) {
        if (dst != src)
            memmove(dst, src, n * size);
        return;
    }
    for (size_t i = 0; i < n; i++, d += size, s += size)
        for (size_t k = 0; k < size / 2; k++) {
            unsigned char t = s[k];
            d[k] = s[size - 1 - k];
            d[size - 1 - k] = t;
        }
}
