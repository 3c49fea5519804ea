/* data_src.c - the buffered byte stream under the data readers: a FILE
 * read in blocks, or the gzip stream in it inflated with zlib. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef FLOW_HAVE_ZLIB
#include <zlib.h>
#endif

#include "data.h"

static size_t raw_read(data_src *s, unsigned char *dst, size_t cap)
{
    size_t n;
    if (cap > s->left)
        cap = (size_t)s->left;
    n = cap ? fread(dst, 1, cap, s->f) : 0;
    if (n == 0 && cap && ferror(s->f))
        s->ioerr = 1;
    s->left -= n;
    return n;
}

#ifdef FLOW_HAVE_ZLIB
/* Inflates into s->buf until it holds something or the stream ends.  A
 * gzip file may hold several members one after the other (RFC 1952,
 * sec. 2.2; gzip and gzread read them as one stream), so a member's end
 * followed by more bytes starts the next member. */
static size_t gz_read(data_src *s)
{
    z_stream *z = s->z;
    z->next_out = s->buf;
    z->avail_out = DATA_SRC_BUF;
    while (z->avail_out == DATA_SRC_BUF) {
        int zr;
        if (z->avail_in == 0) {
            size_t got = raw_read(s, s->zbuf, DATA_SRC_BUF);
            if (got == 0) {
                if (s->gz == 1)     /* inside a member: cut short */
                    s->gzerr = 1;
                break;
            }
            z->next_in = s->zbuf;
            z->avail_in = (uInt)got;
        }
        if (s->gz == 2) {           /* between members */
            if (z->next_in[0] != 0x1f) {
                s->gzerr = 2;       /* trailing bytes that are no member */
                break;
            }
            if (inflateReset(z) != Z_OK) {
                s->gzerr = 1;
                break;
            }
            s->gz = 1;
        }
        {
            uInt before = z->avail_in;
            zr = inflate(z, Z_NO_FLUSH);
            s->zin += before - z->avail_in;
        }
        if (zr == Z_STREAM_END)
            s->gz = 2;
        else if (zr != Z_OK && zr != Z_BUF_ERROR) {
            s->gzerr = 1;
            break;
        }
    }
    return DATA_SRC_BUF - z->avail_out;
}
#endif

int data_src_fill(data_src *s)
{
    if (s->eof || s->gzerr)
        return 0;
    s->pos = 0;
#ifdef FLOW_HAVE_ZLIB
    if (s->gz)
        s->len = gz_read(s);
    else
#endif
    {
        s->base += s->len;
        s->len = 0;
        s->len = raw_read(s, s->buf, DATA_SRC_BUF);
    }
    if (s->len == 0)
        s->eof = 1;
    return s->len > 0;
}

int data_src_get(data_src *s)
{
    if (s->pos == s->len && !data_src_fill(s))
        return -1;
    return s->buf[s->pos++];
}

size_t data_src_read(data_src *s, void *dst, size_t n)
{
    unsigned char *d = dst;
    size_t done = 0;
    while (done < n) {
        size_t k;
        if (s->pos == s->len && !data_src_fill(s))
            break;
        k = s->len - s->pos;
        if (k > n - done)
            k = n - done;
        memcpy(d + done, s->buf + s->pos, k);
        s->pos += k;
        done += k;
    }
    return done;
}

int data_src_error(flow_ctx *ctx, const data_src *s)
{
    if (s->ioerr)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: read error", s->name);
    if (s->gzerr == 2)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: bytes after the "
                              "gzip stream (at compressed byte %llu) are no "
                              "gzip member", s->name, s->zin);
    if (s->gzerr)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: corrupt or truncated "
                              "gzip stream (at compressed byte %llu)", s->name,
                              s->zin);
    return FLOW_OK;
}

int data_src_open(flow_ctx *ctx, data_src *s, FILE *f, const char *name)
{
    memset(s, 0, sizeof *s);
    s->f = f;
    s->name = name;
    s->left = ~0ull;
    if (!(s->buf = malloc(DATA_SRC_BUF)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    s->len = raw_read(s, s->buf, DATA_SRC_BUF);
    if (s->ioerr)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: read error: %s", name,
                              strerror(errno));
    if (s->len == 0)
        s->eof = 1;
    if (s->len < 2 || s->buf[0] != 0x1f || s->buf[1] != 0x8b)
        return FLOW_OK;
#ifdef FLOW_HAVE_ZLIB
    {
        z_stream *z = calloc(1, sizeof *z);
        if (!z || !(s->zbuf = malloc(DATA_SRC_BUF))) {
            free(z);
            return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        }
        /* 16 + MAX_WBITS: a gzip wrapper, not zlib's (zlib.h, inflateInit2) */
        if (inflateInit2(z, 16 + MAX_WBITS) != Z_OK) {
            free(z);
            return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: cannot start "
                                  "inflating: out of memory", name);
        }
        s->z = z;
        memcpy(s->zbuf, s->buf, s->len);
        z->next_in = s->zbuf;
        z->avail_in = (uInt)s->len;
        s->gz = 1;
        s->eof = 0;
        s->pos = s->len = 0;
        data_src_fill(s);
        if (s->len == 0 && s->gzerr)
            return data_src_error(ctx, s);
        return FLOW_OK;
    }
#else
    return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "%s: a gzip file, and "
                          "this flowkit was built without zlib (install "
                          "zlib1g-dev and configure again)", name);
#endif
}

int data_src_seek(data_src *s, unsigned long long off,
                  unsigned long long limit)
{
    if (s->gz || off > (unsigned long long)INT64_MAX
        || fseeko(s->f, (off_t)off, SEEK_SET) != 0)
        return -1;
    s->base = off;
    s->pos = s->len = 0;
    s->eof = 0;
    s->left = limit;
    return 0;
}

unsigned long long data_src_tell(const data_src *s)
{
    return s->base + s->pos;
}

void data_src_close(data_src *s)
{
#ifdef FLOW_HAVE_ZLIB
    if (s->z) {
        inflateEnd(s->z);
        free(s->z);
    }
#endif
    free(s->zbuf);
    free(s->buf);
    memset(s, 0, sizeof *s);
}
