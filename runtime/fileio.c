/* fileio.c - output files (docs/cli.md, "Output files"): a temporary
 * file renamed over the target, or in place for FIFOs, devices and open
 * descriptors; CRC-32C and little-endian conversions. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"

/* A temporary file's name keeps at most this much of NAME and of the host
 * name, so that it fits NAME_MAX (255) whatever the target's name. */
#define TMP_BASE_MAX 128
#define TMP_HOST_MAX 64
/* symbolic links followed before giving up (Linux's own limit) */
#define MAX_LINK_HOPS 40

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

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int all_digits(const char *s, size_t n)
{
    if (n == 0 || n > 10)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

/* This host's name in [A-Za-z0-9-] (anything else becomes '_'), so that a
 * temporary's name splits at its dots. */
static void host_tag(char out[TMP_HOST_MAX + 1])
{
    char h[256];
    size_t k = 0;
    if (gethostname(h, sizeof h) != 0)
        h[0] = '\0';
    h[sizeof h - 1] = '\0';
    for (const char *p = h; *p && k < TMP_HOST_MAX; p++)
        out[k++] = isalnum((unsigned char)*p) || *p == '-' ? *p : '_';
    if (k == 0)
        out[k++] = '_';
    out[k] = '\0';
}

/* The descriptor that /dev/fd/N, /proc/self/fd/N, /dev/stdin,
 * /dev/stdout or /dev/stderr stands for, or -1.  Such a name is an open
 * file of this process (a pipe from process substitution, a terminal, a
 * socket): it is written through the descriptor, since open() cannot
 * reopen a socket and a rename would replace the link instead. */
static int fd_name(const char *path)
{
    const char *p = NULL;
    if (!strcmp(path, "/dev/stdin"))
        return 0;
    if (!strcmp(path, "/dev/stdout"))
        return 1;
    if (!strcmp(path, "/dev/stderr"))
        return 2;
    if (!strncmp(path, "/dev/fd/", 8))
        p = path + 8;
    else if (!strncmp(path, "/proc/self/fd/", 14))
        p = path + 14;
    if (!p || !all_digits(p, strlen(p)) || strlen(p) > 9)
        return -1;
    return atoi(p);
}

/* Where an output goes: how, and for FIO_RENAME the file replaced. */
typedef struct target {
    fio_kind kind;
    int fd;             /* FIO_IN_PLACE by descriptor name, else -1 */
    char *file;         /* FIO_RENAME: path after symbolic links, owned */
    int exists;         /* st describes what is there now */
    struct stat st;
} target;

/* path with its symbolic links followed (also a dangling one: writing
 * creates its target), newly allocated in *out. */
static int follow_links(flow_ctx *ctx, const char *path, char **out)
{
    char *cur = dup_str(path), *link = NULL, *next;
    struct stat ls;
    int hops = 0;
    if (!cur)
        goto nomem;
    while (lstat(cur, &ls) == 0 && S_ISLNK(ls.st_mode)) {
        size_t cap = ls.st_size > 0 ? (size_t)ls.st_size + 1 : 256, pre;
        ssize_t k;
        if (++hops > MAX_LINK_HOPS) {
            free(cur);
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: %s", path,
                                  strerror(ELOOP));
        }
        for (;;) {
            if (!(link = malloc(cap)))
                goto nomem;
            if ((k = readlink(cur, link, cap)) < 0) {
                int e = errno;
                free(link);
                free(cur);
                return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: %s", path,
                                      strerror(e));
            }
            if ((size_t)k < cap)
                break;
            free(link);
            cap *= 2;
        }
        link[k] = '\0';
        /* a relative link is relative to the link's directory */
        pre = link[0] == '/' ? 0 : (size_t)(base_of(cur) - cur);
        if (!(next = malloc(pre + (size_t)k + 1)))
            goto nomem;
        memcpy(next, cur, pre);
        memcpy(next + pre, link, (size_t)k + 1);
        free(link);
        link = NULL;
        free(cur);
        cur = next;
    }
    *out = cur;
    return FLOW_OK;
nomem:
    free(link);
    free(cur);
    return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
}

static int resolve(flow_ctx *ctx, const char *path, target *t)
{
    int fd;
    memset(t, 0, sizeof *t);
    t->fd = -1;
    if (!path || !*path)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "empty output file name");
    if (!strcmp(path, "-")) {
        t->kind = FIO_STDOUT;
        return FLOW_OK;
    }
    if ((fd = fd_name(path)) >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0)
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: descriptor %d is not "
                                  "open", path, fd);
        if ((fl & O_ACCMODE) == O_RDONLY)
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: descriptor %d is not "
                                  "open for writing", path, fd);
        t->kind = FIO_IN_PLACE;
        t->fd = fd;
        t->exists = fstat(fd, &t->st) == 0;
        return FLOW_OK;
    }
    if (stat(path, &t->st) == 0) {
        if (S_ISDIR(t->st.st_mode))
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: is a directory", path);
        if (S_ISSOCK(t->st.st_mode))
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: is a socket (an "
                                  "output is a file, a FIFO, a device or "
                                  "/dev/fd/N)", path);
        t->exists = 1;
        if (!S_ISREG(t->st.st_mode)) {
            t->kind = FIO_IN_PLACE;
            return FLOW_OK;
        }
    } else if (errno != ENOENT)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: %s", path,
                              strerror(errno));
    t->kind = FIO_RENAME;
    return follow_links(ctx, path, &t->file);
}

/* Whether a temporary file's name after ".NAME.tmp." ("HOST.PID.K", or
 * "PID.K" as older versions wrote it) is one of a dead process of this
 * host.  A live PID, even one reused by another program, keeps it. */
static int stale_tmp(const char *rest, const char *host)
{
    const char *k = strrchr(rest, '.'), *p;
    long pid;
    if (!k || !all_digits(k + 1, strlen(k + 1)))
        return 0;
    for (p = k; p > rest && p[-1] != '.'; p--)
        ;
    if (!all_digits(p, (size_t)(k - p)))
        return 0;
    if (p > rest && ((size_t)(p - 1 - rest) != strlen(host)
                     || strncmp(rest, host, (size_t)(p - 1 - rest))))
        return 0;
    pid = strtol(p, NULL, 10);
    if (pid <= 0 || pid > 0x7fffffffL || pid == (long)getpid())
        return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Removes the temporary files of `file` that dead processes of this host
 * left behind (a SIGKILL between creating and renaming one).  Best
 * effort: what cannot be listed or removed stays. */
static void remove_stale(const char *file)
{
    const char *base = base_of(file);
    char host[TMP_HOST_MAX + 1], prefix[TMP_BASE_MAX + 8], *dir;
    struct dirent *e;
    size_t plen;
    DIR *d;
    host_tag(host);
    plen = (size_t)snprintf(prefix, sizeof prefix, ".%.*s.tmp.",
                            TMP_BASE_MAX, base);
    if (!(dir = dir_of(file)))
        return;
    d = opendir(dir);
    free(dir);
    if (!d)
        return;
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, prefix, plen)
            && stale_tmp(e->d_name + plen, host))
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
}

/* Creates .NAME.tmp.HOST.PID.K beside `file` (same directory, same file
 * system: the rename is atomic); O_EXCL never reuses someone else's. */
static int make_tmp(flow_ctx *ctx, const char *path, const char *file,
                    char **tmp, int *fd)
{
    static atomic_uint counter;
    const char *base = base_of(file);
    char host[TMP_HOST_MAX + 1];
    size_t dlen = (size_t)(base - file), n;
    *fd = -1;
    if (!*base)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: not a file name", path);
    host_tag(host);
    n = dlen + TMP_BASE_MAX + TMP_HOST_MAX + 64;
    if (!(*tmp = malloc(n)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    for (int tries = 0; tries < 100; tries++) {
        snprintf(*tmp, n, "%.*s.%.*s.tmp.%s.%ld.%u", (int)dlen, file,
                 TMP_BASE_MAX, base, host, (long)getpid(),
                 atomic_fetch_add(&counter, 1u));
        *fd = open(*tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (*fd >= 0 || errno != EEXIST)
            break;
    }
    if (*fd < 0) {
        int e = errno;
        char *dir = dir_of(file);
        free(*tmp);
        *tmp = NULL;
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot create a file in "
                       "directory '%s': %s", path, dir ? dir : ".",
                       strerror(e));
        free(dir);
        return FLOW_ERR_IO;
    }
    return FLOW_OK;
}

/* The replaced file's mode, and its owner where the system lets us (root,
 * or a group we belong to): a 600 file stays 600. */
static int keep_mode(flow_ctx *ctx, const char *path, int fd,
                     const struct stat *old)
{
    struct stat now;
    if (fstat(fd, &now) == 0
        && (now.st_uid != old->st_uid || now.st_gid != old->st_gid)
        && fchown(fd, old->st_uid, old->st_gid) != 0
        && fchown(fd, (uid_t)-1, old->st_gid) != 0) {
        /* not allowed: the new file is ours, as a new file would be */
    }
    if (fchmod(fd, old->st_mode & 07777) != 0)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot keep the file's "
                              "mode: %s", path, strerror(errno));
    return FLOW_OK;
}

int fio_open_out(flow_ctx *ctx, const char *path, fio_out *o)
{
    target t;
    int fd = -1, rc;

    memset(o, 0, sizeof *o);
    if ((rc = resolve(ctx, path, &t)))
        return rc;
    if (!(o->path = dup_str(path))) {
        free(t.file);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    o->kind = t.kind;
    if (t.kind == FIO_STDOUT) {
        o->f = stdout;
        return FLOW_OK;
    }
    if (t.kind == FIO_IN_PLACE) {
        if (t.fd == 1)
            fflush(stdout);     /* what was printed before comes first */
        /* opening a FIFO waits for a reader, as a shell redirection does */
        fd = t.fd >= 0 ? fcntl(t.fd, F_DUPFD_CLOEXEC, 0)
                       : open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot open for "
                                "writing: %s", path, strerror(errno));
            goto fail;
        }
    } else {
        o->target = t.file;
        t.file = NULL;
        remove_stale(o->target);
        if ((rc = make_tmp(ctx, path, o->target, &o->tmp, &fd))
            || (t.exists && (rc = keep_mode(ctx, path, fd, &t.st))))
            goto fail;
    }
    if (!(o->f = fdopen(fd, "wb"))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    return FLOW_OK;
fail:
    if (fd >= 0)
        close(fd);
    fio_abort(o);
    return rc;
}

int fio_check_out(flow_ctx *ctx, const char *path,
                  const char *const *inputs, size_t n)
{
    target t;
    char *tmp = NULL;
    int fd, rc;
    if ((rc = resolve(ctx, path, &t)))
        return rc;
    for (size_t i = 0; i < n && t.exists; i++) {
        struct stat s;
        if (!inputs[i] || !strcmp(inputs[i], "-")
            || stat(inputs[i], &s) != 0 || s.st_dev != t.st.st_dev
            || s.st_ino != t.st.st_ino)
            continue;
        free(t.file);
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: the output is the same "
                              "file as the input %s (refusing to overwrite an "
                              "input)", path, inputs[i]);
    }
    if (t.kind == FIO_RENAME) {
        remove_stale(t.file);
        if ((rc = make_tmp(ctx, path, t.file, &tmp, &fd)) == FLOW_OK) {
            close(fd);
            unlink(tmp);
            free(tmp);
        }
    }
    free(t.file);
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
    free(o->target);
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

/* fsync, where the file has a disk behind it: pipes, terminals and other
 * devices answer EINVAL (or EROFS, ENOTSUP), which is no error here. */
static int sync_file(FILE *f)
{
    if (fsync(fileno(f)) == 0)
        return 0;
    return errno == EINVAL || errno == EROFS || errno == ENOTSUP ? 0 : -1;
}

int fio_commit(flow_ctx *ctx, fio_out *o)
{
    int rc = FLOW_OK;
    FILE *f = o->f;

    if (o->kind == FIO_STDOUT) {
        if (fflush(f) != 0 || ferror(f))
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "stdout: write error: %s",
                                strerror(errno));
        fio_abort(o);
        return rc;
    }
    o->f = NULL;
    if (ferror(f) || fflush(f) != 0 || sync_file(f) != 0) {
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
    if (o->kind == FIO_IN_PLACE) {
        fio_abort(o);
        return FLOW_OK;
    }
    if (rename(o->tmp, o->target) != 0) {
        flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot rename temporary file: %s",
                       o->path, strerror(errno));
        goto fail;
    }
    free(o->tmp);
    o->tmp = NULL;
    if (fsync_dir(o->target) != 0)
        rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot sync directory: %s",
                            o->path, strerror(errno));
    fio_abort(o);
    return rc;
fail:
    fio_abort(o);
    return FLOW_ERR_IO;
}

/* --- the public face, for programs that write their own output ------- */

struct flow_output {
    fio_out o;
};

int flow_output_check(flow_ctx *ctx, const char *path,
                      const char *const *inputs, size_t n_inputs)
{
    return fio_check_out(ctx, path, inputs, n_inputs);
}

int flow_output_open(flow_ctx *ctx, const char *path, flow_output **out)
{
    flow_output *w = calloc(1, sizeof *w);
    int rc;
    *out = NULL;
    if (!w)
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if ((rc = fio_open_out(ctx, path, &w->o)) != FLOW_OK) {
        free(w);
        return rc;
    }
    *out = w;
    return FLOW_OK;
}

FILE *flow_output_stream(flow_output *o)
{
    return o->o.f;
}

int flow_output_commit(flow_ctx *ctx, flow_output *o)
{
    int rc = fio_commit(ctx, &o->o);
    free(o);
    return rc;
}

void flow_output_abort(flow_output *o)
{
    if (!o)
        return;
    fio_abort(&o->o);
    free(o);
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
