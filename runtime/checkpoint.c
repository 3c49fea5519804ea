/* checkpoint.c - safetensors-layout checkpoints: a collecting writer with
 * checksums and atomic replace, and a reader that trusts nothing. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "fileio.h"
#include "json.h"

#define CRC_TAG "crc32c:"
#define HDR_CK_KEY "\"header_checksum\":\"" CRC_TAG

static const char *const reserved[] = {
    "format", "format_version", "flowkit_version", "precision", "spec",
    "spec_path", "spec_hash", "imports", "epoch", "step", "best_score",
    "history", "columns", "context_columns", "data_checksum",
    "header_checksum", NULL
};

const char *ckpt_dtype_name(ckpt_dtype t)
{
    static const char *const n[] = {"F32", "F64", "U64", "I64", "U8"};
    return (unsigned)t < 5 ? n[t] : "?";
}

size_t ckpt_dtype_size(ckpt_dtype t)
{
    return t == CKPT_F32 ? 4 : t == CKPT_U8 ? 1 : 8;
}

static uint64_t fnv1a(uint64_t h, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)src[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t ckpt_spec_hash(const char *src, size_t n)
{
    return fnv1a(0xcbf29ce484222325ull, src, n);
}

uint64_t ckpt_spec_hash_all(const char *spec, size_t n, const char *spec_path,
                            const char *imports, size_t n_imports)
{
    uint64_t h = ckpt_spec_hash(spec, n);
    if (!imports)
        return h;
    h = fnv1a(h, "", 1);
    if (spec_path)
        h = fnv1a(h, spec_path, strlen(spec_path));
    h = fnv1a(h, "", 1);
    return fnv1a(h, imports, n_imports);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

void ckpt_rng_pack(const flow_rng *r, uint64_t out[CKPT_RNG_WORDS])
{
    for (int i = 0; i < 4; i++)
        out[i] = r->s[i];
    out[4] = r->has_spare ? 1 : 0;
    memcpy(&out[5], &r->spare, sizeof out[5]);
}

const char *ckpt_rng_check(const uint64_t in[CKPT_RNG_WORDS])
{
    double spare;
    if (!(in[0] | in[1] | in[2] | in[3]))
        return "the xoshiro256** state is all zero";
    if (in[4] > 1)
        return "has_spare is neither 0 nor 1";
    memcpy(&spare, &in[5], sizeof spare);
    if (!isfinite(spare) || fabs(spare) > 16)
        return "the cached normal deviate is out of range";
    return NULL;
}

int ckpt_rng_unpack(flow_rng *r, const uint64_t in[CKPT_RNG_WORDS])
{
    if (ckpt_rng_check(in))
        return FLOW_ERR_FORMAT;
    for (int i = 0; i < 4; i++)
        r->s[i] = in[i];
    r->has_spare = (int)in[4];
    memcpy(&r->spare, &in[5], sizeof r->spare);
    return FLOW_OK;
}

/* ------------------------------------------------------------ writer */

typedef struct wtensor {
    char *name;
    ckpt_dtype dtype;
    size_t ndim;
    uint64_t shape[CKPT_MAX_DIMS];
    size_t nbytes;
    const void *data;
} wtensor;

typedef struct kv {
    char *key, *value;
} kv;

struct ckpt_writer {
    flow_ctx *ctx;
    wtensor *t;
    size_t nt, capt;
    kv *meta;               /* extra metadata */
    size_t nm, capm;
    ckpt_info info;         /* strings owned */
    int has_info;
    int plain;              /* ckpt_writer_plain */
};

ckpt_writer *ckpt_writer_new(flow_ctx *ctx)
{
    ckpt_writer *w = calloc(1, sizeof *w);
    if (w)
        w->ctx = ctx;
    else
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    return w;
}

void ckpt_writer_free(ckpt_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->nt; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->nm; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->t);
    free(w->meta);
    free((char *)w->info.spec_source);
    free((char *)w->info.history_json);
    free((char *)w->info.spec_path);
    free((char *)w->info.imports_json);
    free((char *)w->info.columns_json);
    free((char *)w->info.context_columns_json);
    free(w);
}

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    void *np;
    size_t ncap;
    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 16;
    if (ncap > SIZE_MAX / size || !(np = realloc(*p, ncap * size)))
        return -1;
    *p = np;
    *cap = ncap;
    return 0;
}

int ckpt_writer_add(ckpt_writer *w, const char *name, ckpt_dtype dtype,
                    const uint64_t *shape, size_t ndim, const void *data)
{
    wtensor *t;
    uint64_t numel = 1;
    size_t len = strlen(name);
    if (len == 0 || len > CKPT_NAME_MAX || !json_utf8_valid(name, len)
        || !strcmp(name, "__metadata__"))
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: bad tensor "
                              "name '%.64s'", name);
    if ((unsigned)dtype > CKPT_U8 || ndim > CKPT_MAX_DIMS)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: tensor "
                              "'%s': bad dtype or more than %d dimensions",
                              name, CKPT_MAX_DIMS);
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] && numel > UINT64_MAX / shape[i])
            goto toobig;
        numel *= shape[i];
    }
    if (numel > SIZE_MAX / ckpt_dtype_size(dtype))
        goto toobig;
    if (numel && !data)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: tensor '%s' "
                              "has no data", name);
    if (grow((void **)&w->t, &w->capt, w->nt, sizeof *w->t))
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    if (!(t->name = dup_str(name)))
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (size_t i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->nbytes = (size_t)numel * ckpt_dtype_size(dtype);
    t->data = data;
    w->nt++;
    return FLOW_OK;
toobig:
    return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: tensor '%s' "
                          "is too large", name);
}

/* A copy of s (NULL stays NULL) into *out; -1 when out of memory. */
static int dup_opt(const char *s, char **out)
{
    *out = NULL;
    return s && !(*out = dup_str(s)) ? -1 : 0;
}

int ckpt_writer_info(ckpt_writer *w, const ckpt_info *info)
{
    char *s[6];
    const char *in[6] = {info->spec_source, info->history_json,
                         info->spec_path, info->imports_json,
                         info->columns_json, info->context_columns_json};
    if (!info->spec_source)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: the spec "
                              "source is required");
    for (int i = 0; i < 6; i++)
        if (dup_opt(in[i], &s[i])) {
            while (i--)
                free(s[i]);
            return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
        }
    free((char *)w->info.spec_source);
    free((char *)w->info.history_json);
    free((char *)w->info.spec_path);
    free((char *)w->info.imports_json);
    free((char *)w->info.columns_json);
    free((char *)w->info.context_columns_json);
    w->info = *info;
    w->info.spec_source = s[0];
    w->info.history_json = s[1];
    w->info.spec_path = s[2];
    w->info.imports_json = s[3];
    w->info.columns_json = s[4];
    w->info.context_columns_json = s[5];
    w->has_info = 1;
    return FLOW_OK;
}

void ckpt_writer_plain(ckpt_writer *w) { w->plain = 1; }

int ckpt_writer_meta(ckpt_writer *w, const char *key, const char *value)
{
    kv *m;
    for (int i = 0; reserved[i] && !w->plain; i++)
        if (!strcmp(reserved[i], key))
            return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: "
                                  "metadata key '%s' is reserved", key);
    if (grow((void **)&w->meta, &w->capm, w->nm, sizeof *w->meta))
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    m = &w->meta[w->nm];
    if (!(m->key = dup_str(key)) || !(m->value = dup_str(value))) {
        free(m->key);
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    w->nm++;
    return FLOW_OK;
}

/* Feeds the tensor bytes, little-endian, to crc (when f is NULL) or to
 * f; returns 0, or -1 on a write error. */
static int emit_data(const ckpt_writer *w, FILE *f, uint32_t *crc)
{
    unsigned char chunk[65536];
    for (size_t i = 0; i < w->nt; i++) {
        const wtensor *t = &w->t[i];
        size_t es = ckpt_dtype_size(t->dtype), n = t->nbytes / es, done = 0;
        while (done < n) {
            size_t k = n - done < sizeof chunk / es ? n - done
                                                    : sizeof chunk / es;
            fio_swap_le(chunk, (const unsigned char *)t->data + done * es, k,
                        es);
            if (f) {
                if (fwrite(chunk, es, k, f) != k)
                    return -1;
            } else {
                *crc = fio_crc32c(*crc, chunk, k * es);
            }
            done += k;
        }
    }
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp((*(const wtensor *const *)a)->name,
                  (*(const wtensor *const *)b)->name);
}

static int check_unique(ckpt_writer *w)
{
    const wtensor **o;
    int rc = FLOW_OK;
    if (w->nt < 2)
        return FLOW_OK;
    if (!(o = malloc(w->nt * sizeof *o)))
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < w->nt; i++)
        o[i] = &w->t[i];
    qsort(o, w->nt, sizeof *o, cmp_names);
    for (size_t i = 1; i < w->nt && rc == FLOW_OK; i++)
        if (!strcmp(o[i - 1]->name, o[i]->name))
            rc = flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: tensor "
                                "'%s' added twice", o[i]->name);
    free(o);
    return rc;
}

static void meta_pair(json_buf *b, const char *key, const char *value,
                      size_t n)
{
    json_buf_raw(b, ",", 1);
    json_buf_string(b, key, strlen(key));
    json_buf_raw(b, ":", 1);
    json_buf_string(b, value, n);
}

/* The tensor entries of the header, in the order added. */
static void header_tensors(const ckpt_writer *w, json_buf *b)
{
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        const wtensor *t = &w->t[i];
        json_buf_raw(b, ",", 1);
        json_buf_string(b, t->name, strlen(t->name));
        json_buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[",
                        ckpt_dtype_name(t->dtype));
        for (size_t k = 0; k < t->ndim; k++)
            json_buf_printf(b, "%s%" PRIu64, k ? "," : "", t->shape[k]);
        json_buf_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}",
                        off, off + (uint64_t)t->nbytes);
        off += t->nbytes;
    }
}

/* Tensors of 8-byte elements first, then 4, then 1, each group in the
 * order added (stable), as the safetensors writer orders them: with the
 * header padded to 8 bytes every tensor is aligned to its element size,
 * so readers can map the data without copying. */
static int align_order(ckpt_writer *w)
{
    static const size_t sizes[3] = {8, 4, 1};
    wtensor *o;
    size_t k = 0;
    if (w->nt < 2)
        return FLOW_OK;
    if (!(o = malloc(w->nt * sizeof *o)))
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    for (int g = 0; g < 3; g++)
        for (size_t i = 0; i < w->nt; i++)
            if (ckpt_dtype_size(w->t[i].dtype) == sizes[g])
                o[k++] = w->t[i];
    memcpy(w->t, o, w->nt * sizeof *o);
    free(o);
    return FLOW_OK;
}

/* A plain header: the metadata pairs only, then the tensors, padded with
 * spaces to a multiple of 8 bytes. */
static int build_plain_header(ckpt_writer *w, json_buf *b)
{
    json_buf_raw(b, "{\"__metadata__\":{", 17);
    for (size_t i = 0; i < w->nm; i++) {
        if (i)
            json_buf_raw(b, ",", 1);
        json_buf_string(b, w->meta[i].key, strlen(w->meta[i].key));
        json_buf_raw(b, ":", 1);
        json_buf_string(b, w->meta[i].value, strlen(w->meta[i].value));
    }
    json_buf_raw(b, "}", 1);
    header_tensors(w, b);
    json_buf_raw(b, "}", 1);
    while (b->len % 8 && !b->oom)
        json_buf_raw(b, " ", 1);
    if (b->oom)
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    if (b->bad_utf8)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "safetensors: a "
                              "metadata value is not valid UTF-8");
    if (b->len > CKPT_HEADER_MAX)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "safetensors: header "
                              "of %zu bytes exceeds the limit of %u", b->len,
                              CKPT_HEADER_MAX);
    return FLOW_OK;
}

/* The JSON header, padded with spaces to a multiple of 8 bytes. */
static int build_header(ckpt_writer *w, uint32_t data_crc, json_buf *b)
{
    const ckpt_info *in = &w->info;
    char num[64];
    size_t pos;
    uint32_t crc;

    json_buf_raw(b, "{\"__metadata__\":{", 17);
    json_buf_string(b, "format", 6);
    json_buf_raw(b, ":", 1);
    json_buf_string(b, CKPT_FORMAT, strlen(CKPT_FORMAT));
    snprintf(num, sizeof num, "%d", CKPT_FORMAT_VERSION);
    meta_pair(b, "format_version", num, strlen(num));
    meta_pair(b, "flowkit_version", FLOW_VERSION_STRING,
              strlen(FLOW_VERSION_STRING));
    meta_pair(b, "precision", FLOW_REAL_NAME, strlen(FLOW_REAL_NAME));
    meta_pair(b, "spec", in->spec_source, strlen(in->spec_source));
    if (in->spec_path)
        meta_pair(b, "spec_path", in->spec_path, strlen(in->spec_path));
    snprintf(num, sizeof num, "fnv1a64:%016" PRIx64,
             ckpt_spec_hash_all(in->spec_source, strlen(in->spec_source),
                                in->spec_path, in->imports_json,
                                in->imports_json ? strlen(in->imports_json)
                                                 : 0));
    meta_pair(b, "spec_hash", num, strlen(num));
    if (in->imports_json)
        meta_pair(b, "imports", in->imports_json, strlen(in->imports_json));
    snprintf(num, sizeof num, "%" PRIu64, in->epoch);
    meta_pair(b, "epoch", num, strlen(num));
    snprintf(num, sizeof num, "%" PRIu64, in->step);
    meta_pair(b, "step", num, strlen(num));
    if (in->has_best) {
        snprintf(num, sizeof num, "%.17g", in->best_score);
        meta_pair(b, "best_score", num, strlen(num));
    }
    if (in->history_json)
        meta_pair(b, "history", in->history_json, strlen(in->history_json));
    if (in->columns_json)
        meta_pair(b, "columns", in->columns_json, strlen(in->columns_json));
    if (in->context_columns_json)
        meta_pair(b, "context_columns", in->context_columns_json,
                  strlen(in->context_columns_json));
    for (size_t i = 0; i < w->nm; i++)
        meta_pair(b, w->meta[i].key, w->meta[i].value,
                  strlen(w->meta[i].value));
    snprintf(num, sizeof num, CRC_TAG "%08" PRIx32, data_crc);
    meta_pair(b, "data_checksum", num, strlen(num));
    json_buf_raw(b, ",", 1);
    pos = b->len + strlen(HDR_CK_KEY);
    json_buf_raw(b, HDR_CK_KEY "00000000\"}", strlen(HDR_CK_KEY) + 10);
    header_tensors(w, b);
    json_buf_raw(b, "}", 1);
    while (b->len % 8 && !b->oom)   /* out of memory: it grows no more */
        json_buf_raw(b, " ", 1);
    if (b->oom)
        return flow_ctx_error(w->ctx, FLOW_ERR_NOMEM, "out of memory");
    if (b->bad_utf8)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: the spec, "
                              "history or a metadata value is not valid UTF-8");
    if (b->len > CKPT_HEADER_MAX)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: header of "
                              "%zu bytes exceeds the limit of %u", b->len,
                              CKPT_HEADER_MAX);
    /* header checksum: CRC-32C of the header with its own 8 hex digits
     * as "00000000", then patched in */
    crc = fio_crc32c(0, b->s, b->len);
    snprintf(num, sizeof num, "%08" PRIx32, crc);
    memcpy(b->s + pos, num, 8);
    return FLOW_OK;
}

int ckpt_writer_write(ckpt_writer *w, const char *path)
{
    json_buf b;
    json_doc *hist = NULL;
    uint32_t crc = 0;
    unsigned char len8[8];
    fio_out o;
    int rc;

    json_buf_init(&b);
    if (w->plain) {
        if ((rc = check_unique(w)) || (rc = align_order(w))
            || (rc = build_plain_header(w, &b)))
            goto fail;
        goto out;
    }
    if (!w->has_info)
        return flow_ctx_error(w->ctx, FLOW_ERR_INVAL, "checkpoint: no spec and "
                              "training state given (ckpt_writer_info)");
    {
        /* the JSON texts of the metadata are checked before anything is
         * written: a reader parses them */
        const char *name[4] = {"history", "imports", "columns",
                               "context_columns"};
        const char *text[4] = {w->info.history_json, w->info.imports_json,
                               w->info.columns_json,
                               w->info.context_columns_json};
        for (int i = 0; i < 4; i++) {
            if (!text[i])
                continue;
            if ((rc = json_parse(w->ctx, name[i], text[i], strlen(text[i]),
                                 JSON_DEFAULT_DEPTH, &hist)))
                return rc;
            json_free(hist);
        }
    }
    if ((rc = check_unique(w)))
        return rc;
    emit_data(w, NULL, &crc);
    if ((rc = build_header(w, crc, &b)))
        goto fail;
out:
    fio_put_le(len8, b.len, 8);
    if ((rc = fio_open_out(w->ctx, path, &o)))
        goto fail;
    if (fwrite(len8, 1, 8, o.f) != 8 || fwrite(b.s, 1, b.len, o.f) != b.len
        || emit_data(w, o.f, NULL)) {
        rc = flow_ctx_error(w->ctx, FLOW_ERR_IO, "%s: write error: %s", path,
                            strerror(errno));
        fio_abort(&o);
        goto fail;
    }
    rc = fio_commit(w->ctx, &o);
fail:
    json_buf_free(&b);
    return rc;
}

/* ------------------------------------------------------------ reader */

struct ckpt {
    char *path;
    json_doc *doc;              /* header (metadata strings live here) */
    const json_value *meta;
    unsigned char *data;        /* data section */
    size_t data_len;
    ckpt_tensor *t;             /* sorted by name */
    size_t nt;
    int version;                /* format_version */
};

void ckpt_free(ckpt *ck)
{
    if (!ck)
        return;
    free(ck->path);
    json_free(ck->doc);
    free(ck->data);
    free(ck->t);
    free(ck);
}

size_t ckpt_count(const ckpt *ck) { return ck->nt; }
const ckpt_tensor *ckpt_at(const ckpt *ck, size_t i)
{
    return i < ck->nt ? &ck->t[i] : NULL;
}

const ckpt_tensor *ckpt_find(const ckpt *ck, const char *name)
{
    size_t lo = 0, hi = ck->nt;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->t[mid].name, name);
        if (!c)
            return &ck->t[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *ckpt_meta(const ckpt *ck, const char *key)
{
    const json_value *v = json_get(ck->meta, key);
    return v && v->type == JSON_STRING ? v->str : NULL;
}

static int read_exact(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Header checksum as described in docs/formats.md: 1 ok, 0 mismatch,
 * -1 not present, -2 not 8 lowercase hex digits, -3 out of memory.
 * stored and computed values for the message. */
static int header_crc_ok(const char *h, size_t n, uint32_t *stored,
                         uint32_t *computed)
{
    size_t klen = strlen(HDR_CK_KEY);
    char *copy;
    const char *hit = NULL;
    char hex[9];
    for (size_t i = 0; i + klen + 8 <= n; i++)
        if (h[i] == '"' && !memcmp(h + i, HDR_CK_KEY, klen)) {
            hit = h + i + klen;
            break;
        }
    if (!hit)
        return -1;
    memcpy(hex, hit, 8);
    hex[8] = '\0';
    if (strspn(hex, "0123456789abcdef") != 8)
        return -2;
    *stored = (uint32_t)strtoul(hex, NULL, 16);
    if (!(copy = malloc(n)))
        return -3;
    memcpy(copy, h, n);
    memset(copy + (hit - h), '0', 8);
    *computed = fio_crc32c(0, copy, n);
    free(copy);
    return *stored == *computed;
}

static int bad(flow_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(flow_ctx *ctx, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: %s", path, msg);
}

/* The training history is JSON text (an array) that a resumed run
 * extends: refused on load, not when the run's checkpoint is written. */
static int check_history(flow_ctx *ctx, ckpt *ck)
{
    const char *h = ckpt_meta(ck, "history");
    char name[1024];                /* half of the context's message */
    json_doc *doc;
    int rc, is_array;
    if (!h)
        return FLOW_OK;
    snprintf(name, sizeof name, "%s: metadata 'history'", ck->path);
    if ((rc = json_parse(ctx, name, h, strlen(h), JSON_DEFAULT_DEPTH, &doc)))
        return rc;
    is_array = json_root(doc)->type == JSON_ARRAY;
    json_free(doc);
    if (!is_array)
        return bad(ctx, ck->path, "metadata 'history' is not a JSON array");
    return FLOW_OK;
}

static int check_metadata(flow_ctx *ctx, ckpt *ck)
{
    const json_value *m = ck->meta;
    const char *fmt, *ver, *prec;
    uint64_t v;
    if (!m || m->type != JSON_OBJECT)
        return bad(ctx, ck->path, "no __metadata__ object");
    for (size_t i = 0; i < m->len; i++) {
        if (m->items[i].type != JSON_STRING)
            return bad(ctx, ck->path, "metadata '%.64s' is not a string",
                       m->keys[i]);
        if (strlen(m->items[i].str) != m->items[i].len)
            return bad(ctx, ck->path, "metadata '%.64s' holds a NUL "
                       "character", m->keys[i]);
    }
    fmt = ckpt_meta(ck, "format");
    if (!fmt || strcmp(fmt, CKPT_FORMAT))
        return bad(ctx, ck->path, "not a flowkit checkpoint (format is "
                   "not '" CKPT_FORMAT "')");
    ver = ckpt_meta(ck, "format_version");
    if (!ver || !*ver || strspn(ver, "0123456789") != strlen(ver)
        || strlen(ver) > 9)
        return bad(ctx, ck->path, "bad format_version");
    v = strtoull(ver, NULL, 10);
    if (v > CKPT_FORMAT_VERSION)
        return bad(ctx, ck->path, "checkpoint format version %s is newer "
                   "than this flowkit supports (%d): upgrade flowkit", ver,
                   CKPT_FORMAT_VERSION);
    if (v < 1)
        return bad(ctx, ck->path, "bad format_version");
    ck->version = (int)v;
    prec = ckpt_meta(ck, "precision");
    if (!prec || strcmp(prec, FLOW_REAL_NAME))
        return bad(ctx, ck->path, "checkpoint precision is %s but this "
                   "flowkit computes in %s", prec ? prec : "(missing)",
                   FLOW_REAL_NAME);
    if (!ckpt_meta(ck, "spec") || !ckpt_meta(ck, "spec_hash")
        || !ckpt_meta(ck, "epoch") || !ckpt_meta(ck, "step")
        || !ckpt_meta(ck, "data_checksum")
        || !ckpt_meta(ck, "header_checksum"))
        return bad(ctx, ck->path, "metadata lacks one of spec, spec_hash, "
                   "epoch, step, data_checksum, header_checksum");
    return check_history(ctx, ck);
}

static int parse_dtype(const json_value *v, ckpt_dtype *out)
{
    static const char *const n[] = {"F32", "F64", "U64", "I64"};
    if (!v || v->type != JSON_STRING)
        return -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(v->str, n[i])) {
            *out = (ckpt_dtype)i;
            return 0;
        }
    return -1;
}

/* One tensor entry; begin/end of its bytes into *b, *e. */
static int parse_tensor(flow_ctx *ctx, ckpt *ck, const char *name,
                        const json_value *v, ckpt_tensor *t, uint64_t *b,
                        uint64_t *e)
{
    const json_value *sh, *off;
    uint64_t numel = 1, nbytes;
    if (v->type != JSON_OBJECT || v->len != 3)
        return bad(ctx, ck->path, "tensor '%.64s': need exactly dtype, shape "
                   "and data_offsets", name);
    if (parse_dtype(json_get(v, "dtype"), &t->dtype))
        return bad(ctx, ck->path, "tensor '%.64s': unsupported dtype (F32, "
                   "F64, U64 or I64)", name);
    sh = json_get(v, "shape");
    off = json_get(v, "data_offsets");
    if (!sh || sh->type != JSON_ARRAY || sh->len > CKPT_MAX_DIMS)
        return bad(ctx, ck->path, "tensor '%.64s': bad shape", name);
    if (!off || off->type != JSON_ARRAY || off->len != 2
        || json_u64(&off->items[0], b) || json_u64(&off->items[1], e)
        || *b > *e)
        return bad(ctx, ck->path, "tensor '%.64s': bad data_offsets", name);
    t->name = name;
    t->ndim = sh->len;
    for (size_t k = 0; k < sh->len; k++) {
        if (json_u64(&sh->items[k], &t->shape[k]))
            return bad(ctx, ck->path, "tensor '%.64s': bad shape", name);
        if (t->shape[k] && numel > UINT64_MAX / t->shape[k])
            return bad(ctx, ck->path, "tensor '%.64s': shape too large",
                       name);
        numel *= t->shape[k];
    }
    if (numel > UINT64_MAX / 8)
        return bad(ctx, ck->path, "tensor '%.64s': shape too large", name);
    nbytes = numel * ckpt_dtype_size(t->dtype);
    if (*e > ck->data_len)
        return bad(ctx, ck->path, "tensor '%.64s': data_offsets [%" PRIu64
                   ", %" PRIu64 "] beyond the data section (%zu bytes)",
                   name, *b, *e, ck->data_len);
    if (*e - *b != nbytes)
        return bad(ctx, ck->path, "tensor '%.64s': data_offsets span %" PRIu64
                   " bytes but %s of shape %" PRIu64 " elements needs %"
                   PRIu64, name, *e - *b, ckpt_dtype_name(t->dtype), numel,
                   nbytes);
    t->numel = (size_t)numel;
    return FLOW_OK;
}

typedef struct span {
    uint64_t b, e;
    size_t i;
} span;

static int cmp_span(const void *x, const void *y)
{
    const span *a = x, *b = y;
    return a->b < b->b ? -1 : a->b > b->b ? 1 : (a->e > b->e) - (a->e < b->e);
}

static int cmp_tensor(const void *x, const void *y)
{
    return strcmp(((const ckpt_tensor *)x)->name,
                  ((const ckpt_tensor *)y)->name);
}

static int parse_tensors(flow_ctx *ctx, ckpt *ck)
{
    const json_value *root = json_root(ck->doc);
    span *sp = NULL;
    size_t n = 0;
    uint64_t at = 0;
    int rc = FLOW_OK;
    if (!(ck->t = calloc(root->len ? root->len : 1, sizeof *ck->t))
        || !(sp = calloc(root->len ? root->len : 1, sizeof *sp)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < root->len; i++) {
        if (!strcmp(root->keys[i], "__metadata__"))
            continue;
        if (strlen(root->keys[i]) != root->key_lens[i]) {
            rc = bad(ctx, ck->path, "tensor name with a NUL byte");
            goto fail;
        }
        if ((rc = parse_tensor(ctx, ck, root->keys[i], &root->items[i],
                               &ck->t[n], &sp[n].b, &sp[n].e)))
            goto fail;
        sp[n].i = n;
        n++;
    }
    ck->nt = n;
    /* the spans must tile the data section: sorted, each starting where
     * the previous ended, the last ending at its end */
    qsort(sp, n, sizeof *sp, cmp_span);
    for (size_t i = 0; i < n; i++) {
        if (sp[i].b != at) {
            rc = bad(ctx, ck->path, "tensor '%.64s': data_offsets [%" PRIu64
                     ", %" PRIu64 "] %s (expected to start at %" PRIu64 ")",
                     ck->t[sp[i].i].name, sp[i].b, sp[i].e,
                     sp[i].b < at ? "overlap another tensor"
                                  : "leave a gap", at);
            goto fail;
        }
        ck->t[sp[i].i].bytes = ck->data + sp[i].b;
        at = sp[i].e;
    }
    if (at != ck->data_len) {
        rc = bad(ctx, ck->path, "%zu bytes of the data section belong to "
                 "no tensor", ck->data_len - (size_t)at);
        goto fail;
    }
    qsort(ck->t, n, sizeof *ck->t, cmp_tensor);
fail:
    free(sp);
    return rc;
}

/* The spec and its imports are what spec_hash says: a header edited
 * with its checksums recomputed must not run another model. */
static int check_spec_hash(flow_ctx *ctx, const ckpt *ck)
{
    const json_value *spec = json_get(ck->meta, "spec");
    const json_value *imp = json_get(ck->meta, "imports");
    const char *stored = ckpt_meta(ck, "spec_hash");
    char mine[64];
    snprintf(mine, sizeof mine, "fnv1a64:%016" PRIx64,
             ckpt_spec_hash_all(spec->str, spec->len,
                                ckpt_meta(ck, "spec_path"),
                                imp ? imp->str : NULL, imp ? imp->len : 0));
    if (strcmp(stored, mine))
        return bad(ctx, ck->path, "the embedded spec does not match its "
                   "spec_hash (stored %.40s, computed %s): the checkpoint "
                   "was edited or is corrupt", stored, mine);
    return FLOW_OK;
}

/* Reads up to n bytes, growing the buffer as they arrive, so that a
 * stream claiming more than it holds costs no more memory than it holds.
 * *buf (NUL-terminated, freed by the caller) holds *got bytes; 0, or -1
 * on a read error or out of memory. */
static int read_grow(int fd, size_t n, char **buf, size_t *got)
{
    size_t cap = 0;
    char *b = NULL, *p;
    *got = 0;
    while (*got < n) {
        ssize_t k;
        if (*got == cap) {
            cap = cap ? (cap < n / 2 ? cap * 2 : n) : (n < 65536 ? n : 65536);
            if (!(p = realloc(b, cap + 1)))
                goto fail;
            b = p;
        }
        if ((k = read(fd, b + *got, cap - *got)) < 0 && errno == EINTR)
            continue;
        if (k < 0)
            goto fail;
        if (k == 0)
            break;
        *got += (size_t)k;
    }
    if (!b && !(b = malloc(1)))
        goto fail;
    b[*got] = '\0';
    *buf = b;
    return 0;
fail:
    free(b);
    return -1;
}

/* The end of the data section that the header's tensors declare (the
 * largest data_offsets end): how much of a stream to read.  Malformed
 * entries count for nothing; parse_tensors refuses them. */
static uint64_t declared_data_len(const json_value *root)
{
    uint64_t end = 0, b, e;
    for (size_t i = 0; i < root->len; i++) {
        const json_value *off = json_get(&root->items[i], "data_offsets");
        if (root->items[i].type == JSON_OBJECT && off
            && off->type == JSON_ARRAY && off->len == 2
            && !json_u64(&off->items[0], &b) && !json_u64(&off->items[1], &e)
            && e > end)
            end = e;
    }
    return end;
}

/* The data section: the rest of a file (its size known), or of a stream
 * as much as the header declares, one byte more being an error. */
static int read_data(flow_ctx *ctx, ckpt *ck, int fd, int stream,
                     size_t fsize, uint64_t hlen)
{
    char *d;
    if (stream) {
        uint64_t want = declared_data_len(json_root(ck->doc));
        if (want > (uint64_t)SIZE_MAX / 2)
            want = SIZE_MAX / 2;
        if (read_grow(fd, (size_t)want + 1, &d, &ck->data_len))
            return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: read error: %s",
                                  ck->path, strerror(errno));
        ck->data = (unsigned char *)d;
        if (ck->data_len > want)
            return bad(ctx, ck->path, "more data than its tensors declare "
                       "(%" PRIu64 " bytes)", want);
        return FLOW_OK;
    }
    ck->data_len = fsize - 8 - (size_t)hlen;
    if (!(ck->data = malloc(ck->data_len ? ck->data_len : 1)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (read_exact(fd, ck->data, ck->data_len))
        return bad(ctx, ck->path, "truncated checkpoint (read failed)");
    return FLOW_OK;
}

/* A checkpoint from fd, a regular file or (stream) standard input, which
 * is read only as far as the header's length and tensors say. */
static int read_from(flow_ctx *ctx, const char *path, int fd, int stream,
                     ckpt **out)
{
    ckpt *ck = NULL;
    char *hdr = NULL;
    unsigned char len8[8];
    struct stat st;
    uint64_t hlen;
    uint32_t stored = 0, computed = 0;
    size_t fsize = 0, got;
    int rc = FLOW_OK, hc;
    char want[32];

    if (!(ck = calloc(1, sizeof *ck)) || !(ck->path = dup_str(path))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (!stream) {
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: not a regular file",
                                path);
            goto fail;
        }
        fsize = (size_t)st.st_size;
    }
    if (stream) {
        if (read_grow(fd, 8, &hdr, &got) == 0 && got == 8)
            memcpy(len8, hdr, 8);
        free(hdr);
        hdr = NULL;
        if (got < 8) {
            rc = bad(ctx, path, "truncated checkpoint (%zu bytes)", got);
            goto fail;
        }
    } else if (fsize < 8 || read_exact(fd, len8, 8)) {
        rc = bad(ctx, path, "truncated checkpoint (%zu bytes)", fsize);
        goto fail;
    }
    hlen = fio_get_le(len8, 8);
    if (hlen > CKPT_HEADER_MAX) {
        rc = bad(ctx, path, "header length %" PRIu64 " exceeds the limit "
                 "of %u bytes", hlen, CKPT_HEADER_MAX);
        goto fail;
    }
    if (stream) {
        if (read_grow(fd, (size_t)hlen, &hdr, &got)) {
            rc = flow_ctx_error(ctx, FLOW_ERR_IO, "%s: read error: %s", path,
                                strerror(errno));
            goto fail;
        }
        if (got < hlen) {
            rc = bad(ctx, path, "truncated checkpoint: header length %"
                     PRIu64 " but only %zu bytes follow", hlen, got);
            goto fail;
        }
    } else {
        if (hlen > fsize - 8) {
            rc = bad(ctx, path, "truncated checkpoint: header length %"
                     PRIu64 " but only %zu bytes follow", hlen, fsize - 8);
            goto fail;
        }
        if (!(hdr = malloc((size_t)hlen + 1))) {
            rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
            goto fail;
        }
        if (read_exact(fd, hdr, (size_t)hlen)) {
            rc = bad(ctx, path, "truncated checkpoint (read failed)");
            goto fail;
        }
        hdr[hlen] = '\0';
    }
    hc = header_crc_ok(hdr, (size_t)hlen, &stored, &computed);
    if (hc == -1) {
        rc = bad(ctx, path, "not a flowkit checkpoint (no header_checksum)");
        goto fail;
    }
    if (hc == -2) {
        rc = bad(ctx, path, "header checksum is not 8 lowercase hex digits: "
                 "the file is corrupt");
        goto fail;
    }
    if (hc == -3) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (hc == 0) {
        rc = bad(ctx, path, "header checksum mismatch (stored %08" PRIx32
                 ", computed %08" PRIx32 "): the file is corrupt", stored,
                 computed);
        goto fail;
    }
    if ((rc = json_parse(ctx, path, hdr, (size_t)hlen, 16, &ck->doc)))
        goto fail;
    if (json_root(ck->doc)->type != JSON_OBJECT) {
        rc = bad(ctx, path, "header is not a JSON object");
        goto fail;
    }
    ck->meta = json_get(json_root(ck->doc), "__metadata__");
    if ((rc = check_metadata(ctx, ck))
        || (rc = read_data(ctx, ck, fd, stream, fsize, hlen))
        || (rc = parse_tensors(ctx, ck)))
        goto fail;
    snprintf(want, sizeof want, CRC_TAG "%08" PRIx32,
             fio_crc32c(0, ck->data, ck->data_len));
    if (strcmp(want, ckpt_meta(ck, "data_checksum"))) {
        rc = bad(ctx, path, "data checksum mismatch (stored %s, computed "
                 "%s): the file is corrupt", ckpt_meta(ck, "data_checksum"),
                 want);
        goto fail;
    }
    if ((rc = check_spec_hash(ctx, ck)))
        goto fail;
    *out = ck;
    ck = NULL;
fail:
    free(hdr);
    ckpt_free(ck);
    return rc;
}

int ckpt_read(flow_ctx *ctx, const char *path, ckpt **out)
{
    int fd, rc;
    *out = NULL;
    if (!strcmp(path, "-"))
        return read_from(ctx, "<stdin>", STDIN_FILENO, 1, out);
    /* without blocking: a FIFO with no writer would block open() for
     * ever; read_from refuses what is not a regular file */
    if ((fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
        return flow_ctx_error(ctx, FLOW_ERR_IO, "%s: cannot open: %s", path,
                              strerror(errno));
    if ((rc = fcntl(fd, F_GETFL)) >= 0)
        fcntl(fd, F_SETFL, rc & ~O_NONBLOCK);
    rc = read_from(ctx, path, fd, 0, out);
    close(fd);
    return rc;
}

int ckpt_get(flow_ctx *ctx, const ckpt *ck, const char *name,
             ckpt_dtype dtype, void *dst, size_t count)
{
    const ckpt_tensor *t = ckpt_find(ck, name);
    if (!t)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: no tensor '%s'",
                              ck->path, name);
    if (t->dtype != dtype || t->numel != count)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: tensor '%s' is %s "
                              "with %zu elements, expected %s with %zu",
                              ck->path, name, ckpt_dtype_name(t->dtype),
                              t->numel,
                              ckpt_dtype_name(dtype), count);
    fio_swap_le(dst, t->bytes, count, ckpt_dtype_size(dtype));
    return FLOW_OK;
}

int ckpt_check_vec(flow_ctx *ctx, const ckpt *ck, const char *name,
                   ckpt_dtype dtype, size_t count)
{
    const ckpt_tensor *t = ckpt_find(ck, name);
    char shape[128];
    size_t used = 0;
    if (!t)
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: no tensor '%s'",
                              ck->path, name);
    if (t->dtype == dtype && t->ndim == 1 && t->shape[0] == count)
        return FLOW_OK;
    shape[0] = '\0';
    for (size_t k = 0; k < t->ndim && used < sizeof shape; k++)
        used += (size_t)snprintf(shape + used, sizeof shape - used,
                                 "%s%" PRIu64, k ? ", " : "", t->shape[k]);
    return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: tensor '%s' is %s of "
                          "shape [%s], expected %s of shape [%zu]", ck->path,
                          name,
                          ckpt_dtype_name(t->dtype), shape,
                          ckpt_dtype_name(dtype), count);
}

int ckpt_get_vec(flow_ctx *ctx, const ckpt *ck, const char *name,
                 ckpt_dtype dtype, void *dst, size_t count)
{
    int rc = ckpt_check_vec(ctx, ck, name, dtype, count);
    if (rc == FLOW_OK)
        fio_swap_le(dst, ckpt_find(ck, name)->bytes, count,
                    ckpt_dtype_size(dtype));
    return rc;
}

const char *ckpt_path(const ckpt *ck) { return ck->path; }
int ckpt_version(const ckpt *ck) { return ck->version; }

static int meta_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || strspn(s, "0123456789") != strlen(s))
        return -1;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno ? -1 : 0;
}

int ckpt_info_get(flow_ctx *ctx, const ckpt *ck, uint64_t *epoch,
                  uint64_t *step, int *has_best, double *best)
{
    const char *b = ckpt_meta(ck, "best_score");
    if (meta_u64(ckpt_meta(ck, "epoch"), epoch)
        || meta_u64(ckpt_meta(ck, "step"), step))
        return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: bad epoch or step",
                              ck->path);
    *has_best = b != NULL;
    *best = 0;
    if (b) {
        char *end;
        *best = strtod(b, &end);
        if (end == b || *end)
            return flow_ctx_error(ctx, FLOW_ERR_FORMAT, "%s: bad best_score",
                                  ck->path);
    }
    return FLOW_OK;
}

int ckpt_check_spec(flow_ctx *ctx, const ckpt *ck, const char *spec_source)
{
    char mine[64];
    const char *theirs = ckpt_meta(ck, "spec_hash");
    const char *stored = ckpt_meta(ck, "spec"), *a, *b;
    int line = 1;
    snprintf(mine, sizeof mine, "fnv1a64:%016" PRIx64,
             ckpt_spec_hash(spec_source, strlen(spec_source)));
    if (stored && !strcmp(stored, spec_source))
        return FLOW_OK;
    for (a = stored ? stored : "", b = spec_source; *a && *a == *b; a++, b++)
        line += *a == '\n';
    return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: checkpoint was made by a "
                          "different spec (spec_hash %s, this spec %s; first "
                          "difference at line %d)", ck->path,
                          theirs ? theirs : "(none)", mine, line);
}
