/* shard.h - internal: rows of a set held in contiguous shares by the
 * processes of a communicator, and moving rows between the processes. */
#ifndef FLOW_RUNTIME_SHARD_H
#define FLOW_RUNTIME_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow.h"

/* The rows [lo, hi) of process `rank` of `size` when n rows are dealt in
 * whole units of `align` rows (the last unit short): units
 * [rank u / size, (rank + 1) u / size) of u = ceil(n / align).  align 1
 * gives [rank n / size, (rank + 1) n / size), the blocks of
 * flow_model_evaluate_comm with align = its batch. */
void shard_range(size_t n, size_t align, size_t rank, size_t size,
                 size_t *lo, size_t *hi);
/* The process q whose rows offs[q] <= g < offs[q + 1] hold row g. */
size_t shard_owner(const size_t *offs, size_t size, size_t g);

/* One array of per-row values moved by shard_move. */
typedef struct shard_cols {
    const void *src;            /* this process's rows of the source */
    void *dst;                  /* this process's rows of the destination */
    size_t width;               /* bytes per row (0: no such column) */
} shard_cols;

/* Scratch kept from one move to the next (zero it first). */
typedef struct shard_buf {
    unsigned char *send, *recv;
    size_t send_cap, recv_cap;  /* bytes */
    size_t *counts;             /* 3 x size */
    size_t size;
} shard_buf;

void shard_buf_free(shard_buf *b);

/* A move of rows: process q holds the rows [src[q], src[q + 1]) of a
 * source set; afterwards process q holds, as its rows 0, 1, ..., the
 * rows index[i] (i itself when index is NULL, which needs dst[size] ==
 * src[size]) for i in [dst[q], dst[q + 1]).  Every process passes the
 * same offsets and index.  One all-to-all per move (per column when
 * index is NULL: no copies then besides MPI's). */
int shard_move(flow_comm *comm, shard_buf *b, const size_t *src,
               const uint32_t *index, const size_t *dst,
               const shard_cols *cols, size_t ncols);

/* shard_move's halves around the all-to-all, for process `rank` of
 * `size`: shard_pack puts its rows for each process into b->send, in
 * process order, and their counts into send[0..size); shard_recv_counts
 * gives the rows it receives from each; shard_unpack takes them from
 * `from` (the rows of process 0, then 1, ...) to the columns' dst. */
int shard_pack(shard_buf *b, size_t rank, size_t size, const size_t *src,
               const uint32_t *index, const size_t *dst,
               const shard_cols *cols, size_t ncols, size_t *send);
void shard_recv_counts(size_t rank, size_t size, const size_t *src,
                       const uint32_t *index, const size_t *dst,
                       size_t *recv);
void shard_unpack(size_t rank, size_t size, const size_t *src,
                  const uint32_t *index, const size_t *dst,
                  const unsigned char *from, const size_t *recv,
                  size_t *cursor, const shard_cols *cols, size_t ncols);

#endif
