/* data_shard.c - data sets split over the processes of a communicator:
 * each reads its share of a file (CSV by byte ranges, NPY and IDX by
 * offset; rank 0 reads what cannot be split and scatters it), shares
 * realigned, the validation split, and the first rows on every process. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ctx.h"
#include "data.h"
#include "shard.h"

size_t flow_data_first_row(const flow_data *data)
{
    return data->part ? data->first : 0;
}

size_t flow_data_total_rows(const flow_data *data)
{
    return data->part ? data->total : data->n;
}

static void mark_part(flow_data *d, size_t first, size_t total)
{
    d->part = 1;
    d->first = first;
    d->total = total;
}

/* offs[0..size]: process q's share is [offs[q], offs[q + 1]); an error
 * when the shares do not tile the set in rank order. */
static int share_offsets(flow_ctx *ctx, flow_comm *comm, const flow_data *d,
                         size_t *offs)
{
    size_t size = (size_t)comm->size, at = 0;
    uint64_t mine[3] = {d->first, d->n, d->total}, *all;
    int rc;
    if (!(all = malloc(3 * size * sizeof *all)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if ((rc = comm_allgather(comm, mine, all, sizeof mine)) != FLOW_OK) {
        free(all);
        return rc;
    }
    for (size_t q = 0; q < size && rc == FLOW_OK; q++) {
        if (all[3 * q] != at || all[3 * q + 2] != d->total)
            rc = flow_ctx_error(ctx, FLOW_ERR_INVAL, "the "
                                "shares of %zu rows do not follow each other "
                                "(rank %zu starts at row %llu, not %zu)",
                                d->total, q,
                                (unsigned long long)all[3 * q], at);
        offs[q] = at;
        at += (size_t)all[3 * q + 1];
    }
    offs[size] = at;
    free(all);
    if (rc == FLOW_OK && at != d->total)
        rc = flow_ctx_error(ctx, FLOW_ERR_INVAL, "the shares "
                            "hold %zu rows of %zu", at, d->total);
    return rc;
}

/* ------------------------------------------------------------ whole */

/* A data set's description without its rows: what rank 0 sends with the
 * rows it scatters. */
typedef struct skel {
    uint64_t n, d, c, rank, shape[4], npy, line0, has_lines, has_range;
    uint64_t source_bytes, names_bytes, has_cols;
    double lo, hi;
} skel;

/* The description of d and its strings and columns as one block (owned
 * by the caller); NULL when out of memory. */
static unsigned char *skel_pack(const flow_data *d, skel *h)
{
    size_t k = d->d + d->c, at = 0;
    unsigned char *b;
    memset(h, 0, sizeof *h);
    h->n = d->n;
    h->d = d->d;
    h->c = d->c;
    h->rank = (uint64_t)d->rank;
    for (int i = 0; i < 4; i++)
        h->shape[i] = d->shape[i];
    h->npy = (uint64_t)d->npy;
    h->line0 = d->line0;
    h->has_lines = d->lines != NULL;
    h->has_range = (uint64_t)d->has_range;
    h->lo = d->lo;
    h->hi = d->hi;
    h->source_bytes = d->source ? strlen(d->source) + 1 : 0;
    if (d->names)
        for (size_t j = 0; j < k; j++)
            h->names_bytes += strlen(d->names[j]) + 1;
    h->has_cols = d->cols != NULL;
    if (!(b = malloc(h->source_bytes + h->names_bytes
                     + (h->has_cols ? k * sizeof(uint64_t) : 0) + 1)))
        return NULL;
    if (d->source)
        memcpy(b, d->source, h->source_bytes);
    at = h->source_bytes;
    if (d->names)
        for (size_t j = 0; j < k; j++) {
            size_t len = strlen(d->names[j]) + 1;
            memcpy(b + at, d->names[j], len);
            at += len;
        }
    for (size_t j = 0; h->has_cols && j < k; j++) {
        uint64_t v = d->cols[j];
        memcpy(b + at + j * sizeof v, &v, sizeof v);
    }
    return b;
}

/* A data set of n rows (zeroed) described by h and its block. */
static flow_data *skel_unpack(flow_ctx *ctx, const skel *h,
                              const unsigned char *b, size_t n)
{
    size_t k = (size_t)(h->d + h->c), at = (size_t)h->source_bytes;
    flow_data *d = data_new(ctx, n, (size_t)h->d, (size_t)h->c);
    const char **names = NULL;
    if (!d)
        return NULL;
    d->rank = (int)h->rank;
    for (int i = 0; i < 4; i++)
        d->shape[i] = (size_t)h->shape[i];
    d->npy = (int)h->npy;
    d->line0 = (size_t)h->line0;
    d->has_range = (int)h->has_range;
    d->lo = h->lo;
    d->hi = h->hi;
    if (h->source_bytes && data_set_source(ctx, d, (const char *)b) != FLOW_OK)
        goto fail;
    if (h->names_bytes) {
        if (!(names = malloc(k * sizeof *names)))
            goto nomem;
        for (size_t j = 0; j < k; j++) {
            names[j] = (const char *)b + at;
            at += strlen(names[j]) + 1;
        }
        if (data_set_names(ctx, d, names) != FLOW_OK)
            goto fail;
    }
    if (h->has_cols) {
        if (!(d->cols = malloc((k ? k : 1) * sizeof *d->cols)))
            goto nomem;
        for (size_t j = 0; j < k; j++) {
            uint64_t v;
            memcpy(&v, b + at + j * sizeof v, sizeof v);
            d->cols[j] = (size_t)v;
        }
    }
    if (h->has_lines && n && !(d->lines = malloc(n * sizeof *d->lines)))
        goto nomem;
    free(names);
    return d;
nomem:
    flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
fail:
    free(names);
    data_free(d);
    return NULL;
}

/* Rank r's message on every process, with its code; returns the code. */
static int share_error(flow_ctx *ctx, flow_comm *comm, int from, int code)
{
    char msg[CTX_ERRMSG_MAX];
    int rc;
    snprintf(msg, sizeof msg, "%s", flow_errmsg(ctx));
    if ((rc = flow_comm_broadcast(comm, msg, sizeof msg, from)) != FLOW_OK)
        return rc;
    msg[sizeof msg - 1] = '\0';
    return flow_ctx_error(ctx, code, "%s", msg);
}

/* Rank 0 reads the file whole and deals it out as the shares of NPY
 * (rows [r n / N, (r + 1) n / N)), each row with its file line. */
static int read_whole(flow_ctx *ctx, flow_comm *comm, const char *path,
                      const data_opts *o, flow_data **out)
{
    size_t size = (size_t)comm->size, rank = (size_t)comm->rank;
    size_t *src = NULL, *dst = NULL, lo, hi, blen;
    flow_data *all = NULL, *d = NULL;
    unsigned char *blob = NULL;
    shard_buf sb;
    skel h;
    int64_t st[2] = {FLOW_OK, 0};
    int rc;
    memset(&sb, 0, sizeof sb);
    memset(&h, 0, sizeof h);
    if (rank == 0) {
        st[0] = data_read(ctx, path, o, &all);
        if (st[0] == FLOW_OK && !(blob = skel_pack(all, &h)))
            st[0] = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    if ((rc = flow_comm_broadcast(comm, st, sizeof st, 0)) != FLOW_OK)
        goto done;
    if (st[0] != FLOW_OK) {
        rc = share_error(ctx, comm, 0, (int)st[0]);
        goto done;
    }
    if ((rc = flow_comm_broadcast(comm, &h, sizeof h, 0)) != FLOW_OK)
        goto done;
    blen = (size_t)(h.source_bytes + h.names_bytes
                    + (h.has_cols ? (h.d + h.c) * sizeof(uint64_t) : 0));
    /* (a process out of memory here leaves the others in the broadcast:
     * the program ends them all, flow_comm_abort) */
    if (rank && !(blob = malloc(blen + 1))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = flow_comm_broadcast(comm, blob, blen, 0)) != FLOW_OK)
        goto done;
    shard_range((size_t)h.n, 1, rank, size, &lo, &hi);
    src = malloc((size + 1) * sizeof *src);
    dst = malloc((size + 1) * sizeof *dst);
    if (!src || !dst) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!(d = skel_unpack(ctx, &h, blob, hi - lo))) {
        rc = FLOW_ERR_NOMEM;
        goto done;
    }
    for (size_t q = 0; q <= size; q++) {
        size_t a, b;
        src[q] = q == 0 ? 0 : (size_t)h.n;
        shard_range((size_t)h.n, 1, q < size ? q : size - 1, size, &a, &b);
        dst[q] = q < size ? a : b;
    }
    {
        shard_cols cols[3] = {
            {all ? all->x : NULL, d->x, d->d * sizeof(flow_real)},
            {all ? all->ctx : NULL, d->ctx, d->c * sizeof(flow_real)},
            {all ? all->lines : NULL, d->lines,
             h.has_lines ? sizeof(size_t) : 0}};
        rc = shard_move(comm, &sb, src, NULL, dst, cols, 3);
    }
    if (rc != FLOW_OK)
        goto done;
    if (!d->lines)
        d->line0 += lo;
    if (all && all->note) {
        /* rank 0 alone warns */
        d->note = all->note;
        all->note = NULL;
    }
    mark_part(d, lo, (size_t)h.n);
    *out = d;
    d = NULL;
done:
    shard_buf_free(&sb);
    free(src);
    free(dst);
    free(blob);
    data_free(all);
    data_free(d);
    return rc;
}

/* ------------------------------------------------------------ parts */

/* What each process says after reading its part. */
typedef struct part_report {
    int64_t status, code;
    uint64_t rows, total, lines, line_head, underflows;
} part_report;

enum { PART_READ, PART_WHOLE, PART_FAILED };

/* Every part read: the rows' places in the file (CSV lines counted from
 * the parts before), the shares, and the note about underflows from the
 * process that read the first of them. */
static int parts_read(flow_ctx *ctx, flow_comm *comm, const char *path,
                      const data_part *part, const part_report *all,
                      flow_data *d)
{
    size_t size = (size_t)comm->size, rank = (size_t)comm->rank;
    size_t total = 0, first = 0, line = (size_t)all[0].line_head, uf = 0;
    size_t uf_rank = size;
    for (size_t q = 0; q < size; q++) {
        if (q < rank) {
            first += (size_t)all[q].rows;
            line += (size_t)all[q].lines;
        }
        total += (size_t)all[q].rows;
        uf += (size_t)all[q].underflows;
        if (all[q].underflows && uf_rank == size)
            uf_rank = q;
    }
    if (!part->csv && total != part->total)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: the "
                              "parts hold %zu rows of %zu", path, total,
                              part->total);
    if (total == 0)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: no data rows after "
                              "the header", path);
    if (part->csv && line > 1) {
        /* the part counted its lines from 1 */
        d->line0 += line - 1;
        for (size_t i = 0; d->lines && i < d->n; i++)
            d->lines[i] += line - 1;
    }
    mark_part(d, first, total);
    if (uf_rank == rank)
        return data_underflow_note(ctx, path, uf, part->uf_place
                                   + (part->csv ? line - 1 : 0),
                                   part->uf_col, part->uf_text, d);
    return FLOW_OK;
}

int flow_data_read_shard(flow_ctx *ctx, flow_comm *comm, const char *path,
                         const char *columns, const char *context,
                         size_t dim, flow_data **out)
{
    data_opts o = {columns, context, dim};
    data_part part;
    part_report me, *all = NULL;
    flow_data *d = NULL;
    size_t size = (size_t)comm->size, low;
    int rc;

    *out = NULL;
    if (size == 1)
        return data_read(ctx, path, &o, out);
    memset(&part, 0, sizeof part);
    memset(&me, 0, sizeof me);
    part.rank = comm->rank;
    part.size = comm->size;
    rc = data_read_part(ctx, path, &o, &part, &d);
    me.status = rc != FLOW_OK ? PART_FAILED : part.whole ? PART_WHOLE
                                                         : PART_READ;
    me.code = rc;
    me.rows = d ? d->n : 0;
    me.total = part.total;
    me.lines = part.lines;
    me.line_head = part.line_head;
    me.underflows = part.underflows;
    /* a process that fails before a collective leaves the others in it:
     * the program ends them all (flow_comm_abort) */
    if (!(all = malloc(size * sizeof *all))) {
        data_free(d);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    if ((rc = comm_allgather(comm, &me, all, sizeof me)) != FLOW_OK)
        goto done;
    /* the parts before the first one not read were read from their
     * first line on: that one's outcome is the file's */
    for (low = 0; low < size && all[low].status == PART_READ; low++)
        ;
    if (low == size) {
        if ((rc = parts_read(ctx, comm, path, &part, all, d)) == FLOW_OK) {
            *out = d;
            d = NULL;
        }
    } else if (all[low].status == PART_FAILED) {
        if ((size_t)comm->rank == low && part.csv) {
            /* again, to name the file's lines in the message */
            data_free(d);
            d = NULL;
            part.line_base = (size_t)all[0].line_head;
            for (size_t q = 0; q < low; q++)
                part.line_base += (size_t)all[q].lines;
            data_read_part(ctx, path, &o, &part, &d);
        }
        rc = share_error(ctx, comm, (int)low, (int)all[low].code);
    } else {
        data_free(d);
        d = NULL;
        rc = read_whole(ctx, comm, path, &o, out);
    }
done:
    free(all);
    data_free(d);
    return rc;
}

/* ------------------------------------------------------------ moves */

/* offs[0..size] of the shares of n rows dealt in units of align rows. */
static void range_offsets(size_t n, size_t align, size_t size, size_t *offs)
{
    for (size_t q = 0; q < size; q++) {
        size_t hi;
        shard_range(n, align, q, size, &offs[q], &hi);
        if (q + 1 == size)
            offs[size] = hi;
    }
}

/* A table of the file line of each row of a CSV share, or NULL (and
 * *rc FLOW_OK) for data without lines; d keeps its own. */
static size_t *lines_of(flow_ctx *ctx, const flow_data *d, int *rc)
{
    size_t *l;
    *rc = FLOW_OK;
    if (!d->source || d->npy)
        return NULL;
    if (!(l = malloc((d->n ? d->n : 1) * sizeof *l))) {
        *rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        l[i] = d->lines ? d->lines[i] : d->line0 + i;
    return l;
}

/* Keeps a table of lines only where the rows leave a gap. */
static void set_lines(flow_data *d, size_t *lines)
{
    int gap = 0;
    free(d->lines);
    d->lines = NULL;
    for (size_t i = 1; lines && i < d->n && !gap; i++)
        gap = lines[i] != lines[0] + i;
    if (lines && d->n)
        d->line0 = lines[0];
    if (gap)
        d->lines = lines;
    else
        free(lines);
}

int flow_data_realign(flow_ctx *ctx, flow_comm *comm, flow_data *data,
                      size_t align)
{
    size_t size, rank, lo, hi;
    size_t *src = NULL, *dst = NULL, *from = NULL, *to = NULL;
    flow_real *x = NULL, *c = NULL;
    shard_buf sb;
    int rc, same = 1;
    if (!data->part)
        return FLOW_OK;
    if (!comm)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_realign: a "
                              "share without its communicator");
    size = (size_t)comm->size;
    rank = (size_t)comm->rank;
    if (align == 0)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_realign: units "
                              "of 0 rows");
    memset(&sb, 0, sizeof sb);
    src = malloc((size + 1) * sizeof *src);
    dst = malloc((size + 1) * sizeof *dst);
    if (!src || !dst) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = share_offsets(ctx, comm, data, src)) != FLOW_OK)
        goto done;
    range_offsets(data->total, align, size, dst);
    for (size_t q = 0; q <= size; q++)
        same &= src[q] == dst[q];
    if (same)
        goto done;
    lo = dst[rank];
    hi = dst[rank + 1];
    from = lines_of(ctx, data, &rc);
    if (rc != FLOW_OK)
        goto done;
    if ((data->d && hi > lo && !(x = malloc((hi - lo) * data->d * sizeof *x)))
        || (data->c && hi > lo
            && !(c = malloc((hi - lo) * data->c * sizeof *c)))
        || (from && !(to = malloc((hi > lo ? hi - lo : 1) * sizeof *to)))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    {
        shard_cols cols[3] = {{data->x, x, data->d * sizeof *x},
                              {data->ctx, c, data->c * sizeof *c},
                              {from, to, from ? sizeof *to : 0}};
        if ((rc = shard_move(comm, &sb, src, NULL, dst, cols, 3)) != FLOW_OK)
            goto done;
    }
    free(data->x);
    free(data->ctx);
    data->x = x;
    data->ctx = c;
    x = c = NULL;
    data->n = hi - lo;
    data->first = lo;
    if (from) {
        set_lines(data, to);
        to = NULL;
    }
done:
    shard_buf_free(&sb);
    free(src);
    free(dst);
    free(from);
    free(to);
    free(x);
    free(c);
    return rc;
}

/* The split's permutation: Fisher-Yates driven by splitmix64 (Steele et
 * al., "Fast splittable pseudorandom number generators", OOPSLA 2014)
 * from `seed`; positions [0, n_valid) are the validation rows. */
static void split_order(uint32_t *idx, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        idx[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        size_t j;
        uint32_t t;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        j = (size_t)((z ^ (z >> 31)) % i);
        t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

/* The split of a data set held whole by this process. */
static int split_whole(flow_ctx *ctx, flow_data *all, const uint32_t *idx,
                       size_t nv, flow_data **train, flow_data **valid)
{
    size_t n = all->n, d = all->d, k = all->c;
    *valid = data_new(ctx, nv, d, k);
    *train = data_new(ctx, n - nv, d, k);
    if (!*valid || !*train)
        return FLOW_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        flow_data *dst = i < nv ? *valid : *train;
        size_t r = i < nv ? i : i - nv;
        memcpy(dst->x + r * d, all->x + idx[i] * d, d * sizeof(flow_real));
        if (k)
            memcpy(dst->ctx + r * k, all->ctx + idx[i] * k,
                   k * sizeof(flow_real));
    }
    return FLOW_OK;
}

/* One side of the split of shares: positions [0, m) of `index` into the
 * shares dst, rows from the shares src. */
static int split_side(flow_ctx *ctx, flow_comm *comm, shard_buf *sb,
                      const flow_data *all, const size_t *src,
                      const uint32_t *index, size_t m, size_t align,
                      size_t *dst, flow_data **out)
{
    size_t rank = (size_t)comm->rank;
    int rc;
    range_offsets(m, align, (size_t)comm->size, dst);
    if (!(*out = data_new(ctx, dst[rank + 1] - dst[rank], all->d, all->c)))
        return FLOW_ERR_NOMEM;
    {
        shard_cols cols[2] = {
            {all->x, (*out)->x, all->d * sizeof(flow_real)},
            {all->ctx, (*out)->ctx, all->c * sizeof(flow_real)}};
        if ((rc = shard_move(comm, sb, src, index, dst, cols, 2)) != FLOW_OK)
            return rc;
    }
    mark_part(*out, dst[rank], m);
    return FLOW_OK;
}

int flow_data_split(flow_ctx *ctx, flow_comm *comm, flow_data *data,
                    size_t n_valid, uint64_t seed, size_t valid_align,
                    flow_data **train, flow_data **valid)
{
    size_t n = flow_data_total_rows(data), size;
    size_t *src = NULL, *dst = NULL;
    uint32_t *idx = NULL;
    shard_buf sb;
    int rc;
    *train = *valid = NULL;
    if (n_valid == 0 || n_valid >= n)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_split: %zu "
                              "validation rows of %zu leave an empty part",
                              n_valid, n);
    if (n > UINT32_MAX)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_split: %zu "
                              "rows (at most %u)", n, (unsigned)UINT32_MAX);
    if (!(idx = malloc(n * sizeof *idx)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    split_order(idx, n, seed);
    memset(&sb, 0, sizeof sb);
    if (!data->part) {
        rc = split_whole(ctx, data, idx, n_valid, train, valid);
        goto done;
    }
    if (!comm) {
        rc = flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_split: a share "
                            "without its communicator");
        goto done;
    }
    size = (size_t)comm->size;
    src = malloc((size + 1) * sizeof *src);
    dst = malloc((size + 1) * sizeof *dst);
    if (!src || !dst) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = share_offsets(ctx, comm, data, src)) != FLOW_OK
        || (rc = split_side(ctx, comm, &sb, data, src, idx, n_valid,
                            valid_align ? valid_align : 1, dst, valid))
           != FLOW_OK)
        goto done;
    rc = split_side(ctx, comm, &sb, data, src, idx + n_valid, n - n_valid, 1,
                    dst, train);
done:
    if (rc != FLOW_OK) {
        data_free(*train);
        data_free(*valid);
        *train = *valid = NULL;
    }
    shard_buf_free(&sb);
    free(src);
    free(dst);
    free(idx);
    return rc;
}

int flow_data_head(flow_ctx *ctx, flow_comm *comm, flow_data *data,
                   size_t k, flow_data **out)
{
    size_t size = data->part && comm ? (size_t)comm->size : 1;
    size_t total = flow_data_total_rows(data), *src = NULL, *dst = NULL;
    uint32_t *index = NULL;
    shard_buf sb;
    int rc = FLOW_OK;
    *out = NULL;
    if (data->part && !comm)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_head: a share "
                              "without its communicator");
    if (k > total || k > UINT32_MAX / size)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "flow_data_head: %zu rows "
                              "of %zu", k, total);
    if (!(*out = data_new(ctx, k, data->d, data->c)))
        return FLOW_ERR_NOMEM;
    if (data->names && (rc = data_set_names(ctx, *out,
                                            (const char *const *)data->names))
                           != FLOW_OK)
        goto done;
    if (!data->part) {
        if (k && data->d)
            memcpy((*out)->x, data->x, k * data->d * sizeof(flow_real));
        if (k && data->c)
            memcpy((*out)->ctx, data->ctx, k * data->c * sizeof(flow_real));
        return FLOW_OK;
    }
    /* every process asks for rows 0..k-1: process q's positions
     * [q k, (q + 1) k) of an index that repeats them */
    memset(&sb, 0, sizeof sb);
    src = malloc((size + 1) * sizeof *src);
    dst = malloc((size + 1) * sizeof *dst);
    index = malloc((k ? k * size : 1) * sizeof *index);
    if (!src || !dst || !index) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < k * size; i++)
        index[i] = (uint32_t)(i % k);
    for (size_t q = 0; q <= size; q++)
        dst[q] = q * k;
    if ((rc = share_offsets(ctx, comm, data, src)) == FLOW_OK) {
        shard_cols cols[2] = {
            {data->x, (*out)->x, data->d * sizeof(flow_real)},
            {data->ctx, (*out)->ctx, data->c * sizeof(flow_real)}};
        rc = shard_move(comm, &sb, src, index, dst, cols, 2);
    }
done:
    if (rc != FLOW_OK) {
        data_free(*out);
        *out = NULL;
    }
    shard_buf_free(&sb);
    free(src);
    free(dst);
    free(index);
    return rc;
}
