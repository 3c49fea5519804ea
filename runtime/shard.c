/* shard.c - moving rows between the processes of a communicator: each
 * holds a contiguous share of a set, and one all-to-all delivers the rows
 * each process asks for (a batch's blocks, a new split of the set). */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ctx.h"
#include "shard.h"

void shard_range(size_t n, size_t align, size_t rank, size_t size,
                 size_t *lo, size_t *hi)
{
    size_t u = align ? n / align + (n % align != 0) : n;
    size_t q = u / size, r = u % size;
    /* floor(k u / size) without overflowing k u */
    size_t a = q * rank + r * rank / size;
    size_t b = q * (rank + 1) + r * (rank + 1) / size;
    if (align > 1) {
        /* a unit past n / align is the short last one's end: n */
        a = a > n / align ? n : a * align < n ? a * align : n;
        b = b > n / align ? n : b * align < n ? b * align : n;
    }
    *lo = a;
    *hi = b;
}

size_t shard_owner(const size_t *offs, size_t size, size_t g)
{
    size_t lo = 0, hi = size;           /* offs[lo] <= g < offs[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (offs[mid] <= g)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

void shard_buf_free(shard_buf *b)
{
    free(b->send);
    free(b->recv);
    free(b->counts);
    memset(b, 0, sizeof *b);
}

static int grow(unsigned char **p, size_t *cap, size_t need)
{
    unsigned char *q;
    if (need <= *cap)
        return 0;
    if (!(q = realloc(*p, need)))
        return -1;
    *p = q;
    *cap = need;
    return 0;
}

static size_t row_bytes(const shard_cols *cols, size_t ncols)
{
    size_t w = 0;
    for (size_t k = 0; k < ncols; k++)
        w += cols[k].width;
    return w;
}

/* The rows [lo, hi) of the source a process holds and the positions
 * [dlo, dhi) of process q in the destination: with no index, their
 * overlap is what q gets from it, as one range. */
static void overlap(size_t lo, size_t hi, size_t dlo, size_t dhi,
                    size_t *a, size_t *b)
{
    *a = lo > dlo ? lo : dlo;
    *b = hi < dhi ? hi : dhi;
    if (*b < *a)
        *b = *a;
}

int shard_pack(shard_buf *b, size_t rank, size_t size, const size_t *src,
               const uint32_t *index, const size_t *dst,
               const shard_cols *cols, size_t ncols, size_t *send)
{
    size_t w = row_bytes(cols, ncols), lo = src[rank], hi = src[rank + 1];
    size_t rows = 0, at = 0;
    for (size_t q = 0; q < size; q++) {
        send[q] = 0;
        for (size_t i = dst[q]; i < dst[q + 1]; i++) {
            size_t g = index ? index[i] : i;
            send[q] += g >= lo && g < hi;
        }
        rows += send[q];
    }
    if (w && rows > SIZE_MAX / w)
        return -1;
    if (grow(&b->send, &b->send_cap, rows && w ? rows * w : 1))
        return -1;
    for (size_t q = 0; q < size; q++)
        for (size_t i = dst[q]; i < dst[q + 1]; i++) {
            size_t g = index ? index[i] : i;
            if (g < lo || g >= hi)
                continue;
            for (size_t k = 0; k < ncols; k++) {
                if (!cols[k].width)
                    continue;       /* (no context columns: src NULL) */
                memcpy(b->send + at, (const unsigned char *)cols[k].src
                                     + (g - lo) * cols[k].width,
                       cols[k].width);
                at += cols[k].width;
            }
        }
    return 0;
}

void shard_recv_counts(size_t rank, size_t size, const size_t *src,
                       const uint32_t *index, const size_t *dst,
                       size_t *recv)
{
    for (size_t q = 0; q < size; q++)
        recv[q] = 0;
    for (size_t i = dst[rank]; i < dst[rank + 1]; i++)
        recv[shard_owner(src, size, index ? index[i] : i)]++;
}

void shard_unpack(size_t rank, size_t size, const size_t *src,
                  const uint32_t *index, const size_t *dst,
                  const unsigned char *from, const size_t *recv,
                  size_t *cursor, const shard_cols *cols, size_t ncols)
{
    size_t w = row_bytes(cols, ncols), at = 0;
    for (size_t q = 0; q < size; q++) {
        cursor[q] = at;
        at += recv[q];
    }
    for (size_t i = dst[rank]; i < dst[rank + 1]; i++) {
        size_t q = shard_owner(src, size, index ? index[i] : i);
        const unsigned char *rec = from + cursor[q]++ * w;
        for (size_t k = 0; k < ncols; k++) {
            if (!cols[k].width)
                continue;
            memcpy((unsigned char *)cols[k].dst
                   + (i - dst[rank]) * cols[k].width, rec, cols[k].width);
            rec += cols[k].width;
        }
    }
}

/* No index: every process's rows go out in order, a range to each
 * process, and come in in order, so each column moves in place. */
static int move_in_order(flow_comm *comm, size_t *c, const size_t *src,
                         const size_t *dst, const shard_cols *cols,
                         size_t ncols)
{
    size_t rank = (size_t)comm->rank, size = (size_t)comm->size;
    size_t *send = c, *recv = c + size;
    for (size_t q = 0; q < size; q++) {
        size_t a, b;
        overlap(src[rank], src[rank + 1], dst[q], dst[q + 1], &a, &b);
        send[q] = b - a;
        overlap(src[q], src[q + 1], dst[rank], dst[rank + 1], &a, &b);
        recv[q] = b - a;
    }
    for (size_t k = 0; k < ncols; k++) {
        int rc;
        if (!cols[k].width)
            continue;
        if ((rc = comm_alltoallv(comm, cols[k].src, send, cols[k].dst, recv,
                                 cols[k].width)) != FLOW_OK)
            return rc;
    }
    return FLOW_OK;
}

int shard_move(flow_comm *comm, shard_buf *b, const size_t *src,
               const uint32_t *index, const size_t *dst,
               const shard_cols *cols, size_t ncols)
{
    size_t rank = (size_t)comm->rank, size = (size_t)comm->size;
    size_t w = row_bytes(cols, ncols), mine = dst[rank + 1] - dst[rank];
    size_t *send, *recv;
    int rc;
    if (b->size != size) {
        free(b->counts);
        b->size = 0;
        if (!(b->counts = malloc(3 * size * sizeof *b->counts)))
            goto nomem;
        b->size = size;
    }
    if (!index && dst[size] != src[size])
        return flow_ctx_error(comm->ctx, FLOW_ERR_INVAL, "a move "
                              "in order of %zu rows into %zu", src[size],
                              dst[size]);
    if (!index)
        return move_in_order(comm, b->counts, src, dst, cols, ncols);
    send = b->counts;
    recv = b->counts + size;
    if (shard_pack(b, rank, size, src, index, dst, cols, ncols, send)
        || (w && mine > SIZE_MAX / w)
        || grow(&b->recv, &b->recv_cap, mine && w ? mine * w : 1))
        goto nomem;
    shard_recv_counts(rank, size, src, index, dst, recv);
    if ((rc = comm_alltoallv(comm, b->send, send, b->recv, recv, w))
        != FLOW_OK)
        return rc;
    shard_unpack(rank, size, src, index, dst, b->recv, recv,
                 b->counts + 2 * size, cols, ncols);
    return FLOW_OK;
nomem:
    return flow_ctx_error(comm->ctx, FLOW_ERR_NOMEM, "out of "
                          "memory for moving rows of %zu bytes", w);
}
