/* checkpoint.h - internal: checkpoint files in the safetensors layout
 * (8-byte little-endian header length, JSON header, raw little-endian
 * tensors), checksummed and written atomically.  docs/formats.md. */
#ifndef FLOW_RUNTIME_CHECKPOINT_H
#define FLOW_RUNTIME_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow.h"
#include "rng.h"

#define CKPT_FORMAT "flowkit.checkpoint"
#define CKPT_FORMAT_VERSION 3       /* 1 and 2 are read too (docs/formats.md) */
#define CKPT_HEADER_MAX 100000000u  /* the limit of safetensors itself */
#define CKPT_MAX_DIMS 8
#define CKPT_NAME_MAX 1024

/* U8 is written by exports only (ckpt_writer_plain); the checkpoint
 * reader accepts the first four. */
typedef enum ckpt_dtype {
    CKPT_F32, CKPT_F64, CKPT_U64, CKPT_I64, CKPT_U8
} ckpt_dtype;

/* F32 or F64: the dtype of flow_real in this build. */
#define CKPT_REAL (FLOW_REAL_DOUBLE ? CKPT_F64 : CKPT_F32)

const char *ckpt_dtype_name(ckpt_dtype t);
size_t ckpt_dtype_size(ckpt_dtype t);

/* 64-bit FNV-1a of a spec's source text (Fowler, Noll, Vo; offset basis
 * 0xcbf29ce484222325, prime 0x100000001b3). */
uint64_t ckpt_spec_hash(const char *src, size_t n);
/* The "spec_hash" key: ckpt_spec_hash of the spec alone when there are no
 * imports (imports NULL), else FNV-1a of the spec, a NUL byte, spec_path
 * (NULL: ""), a NUL byte and the "imports" value, in that order. */
uint64_t ckpt_spec_hash_all(const char *spec, size_t n, const char *spec_path,
                            const char *imports, size_t n_imports);

/* The standard metadata a training run records. */
typedef struct ckpt_info {
    const char *spec_source;    /* the .flow text (required) */
    uint64_t epoch, step;
    int has_best;               /* best_score is set */
    double best_score;          /* best validation score (log-likelihood
                                   in nats per sample, higher is better) */
    const char *history_json;   /* training history as JSON text, or NULL */
    const char *spec_path;      /* path the spec was read from, or NULL */
    const char *imports_json;   /* the embedded imports (JSON), or NULL */
    const char *columns_json;   /* data column names (JSON), or NULL */
    const char *context_columns_json;   /* context column names, or NULL */
} ckpt_info;

/* --- writer ---------------------------------------------------------- */

typedef struct ckpt_writer ckpt_writer;

/* New writer (errors go to ctx), NULL when out of memory. */
ckpt_writer *ckpt_writer_new(flow_ctx *ctx);
void ckpt_writer_free(ckpt_writer *w);
/* Adds a tensor: name ("params/<layer>/<name>", "adam/m/...", "adam/v/...",
 * "buffers/...", "rng/state"), dtype, shape (copied) and data in host
 * order, borrowed until ckpt_writer_write returns.  Data are written in
 * the order added. */
int ckpt_writer_add(ckpt_writer *w, const char *name, ckpt_dtype dtype,
                    const uint64_t *shape, size_t ndim, const void *data);
/* Sets the standard metadata (strings copied). */
int ckpt_writer_info(ckpt_writer *w, const ckpt_info *info);
/* An extra metadata string (copied); the standard keys are reserved. */
int ckpt_writer_meta(ckpt_writer *w, const char *key, const char *value);
/* Makes w write a plain safetensors file (portable exports,
 * docs/export.md): the metadata are exactly the ckpt_writer_meta pairs,
 * with no reserved keys, checksums or ckpt_writer_info. */
void ckpt_writer_plain(ckpt_writer *w);
/* Validates and writes everything to path atomically (temp file, fsync,
 * rename, fsync of the directory).  On failure nothing is left. */
int ckpt_writer_write(ckpt_writer *w, const char *path);

/* The "rng/state" tensor: U64 of shape [CKPT_RNG_WORDS] holding the four
 * xoshiro256** words, has_spare (0 or 1) and the IEEE-754 bits of the
 * cached normal deviate, so a resumed run draws exactly the numbers the
 * uninterrupted run would have drawn. */
#define CKPT_RNG_WORDS 6
void ckpt_rng_pack(const flow_rng *r, uint64_t out[CKPT_RNG_WORDS]);
/* FLOW_OK, or FLOW_ERR_FORMAT when the words are no state a stream can
 * be in (ckpt_rng_check). */
int ckpt_rng_unpack(flow_rng *r, const uint64_t in[CKPT_RNG_WORDS]);
/* NULL when the words can be a stream's state; else why not: the four
 * xoshiro256** words all zero (a fixed point: the stream would return 0
 * for ever and the normal sampler never finish), has_spare not 0 or 1,
 * or a cached normal deviate that is not finite or beyond 16 (the polar
 * method never returns more than 12.1 in magnitude). */
const char *ckpt_rng_check(const uint64_t in[CKPT_RNG_WORDS]);

/* --- reader ---------------------------------------------------------- */

typedef struct ckpt_tensor {
    const char *name;
    ckpt_dtype dtype;
    size_t ndim;
    uint64_t shape[CKPT_MAX_DIMS];
    size_t numel;
    const unsigned char *bytes;     /* numel * size little-endian bytes */
} ckpt_tensor;

typedef struct ckpt ckpt;

/* Reads and validates a whole checkpoint: header length against the file
 * size and the limit, header checksum, JSON, format version, precision,
 * every tensor's dtype, shape and offsets (inside the data, contiguous,
 * non-overlapping, covering it), data checksum, and the spec and its
 * imports against spec_hash.  *out is new (ckpt_free). */
int ckpt_read(flow_ctx *ctx, const char *path, ckpt **out);
void ckpt_free(ckpt *ck);
size_t ckpt_count(const ckpt *ck);
/* Tensors sorted by name. */
const ckpt_tensor *ckpt_at(const ckpt *ck, size_t i);
const ckpt_tensor *ckpt_find(const ckpt *ck, const char *name);
/* Metadata string (owned by ck) or NULL. */
const char *ckpt_meta(const ckpt *ck, const char *key);
/* Copies tensor `name` into dst (host order) after checking that it
 * exists, has this dtype and exactly `count` elements. */
int ckpt_get(flow_ctx *ctx, const ckpt *ck, const char *name,
             ckpt_dtype dtype, void *dst, size_t count);
/* The same for a vector: the tensor's shape must be exactly [count];
 * ckpt_check_vec only checks. */
int ckpt_get_vec(flow_ctx *ctx, const ckpt *ck, const char *name,
                 ckpt_dtype dtype, void *dst, size_t count);
int ckpt_check_vec(flow_ctx *ctx, const ckpt *ck, const char *name,
                   ckpt_dtype dtype, size_t count);
/* The path the checkpoint was read from; its format_version. */
const char *ckpt_path(const ckpt *ck);
int ckpt_version(const ckpt *ck);
/* The stored epoch, step (and best score when present) */
int ckpt_info_get(flow_ctx *ctx, const ckpt *ck, uint64_t *epoch,
                  uint64_t *step, int *has_best, double *best);
/* FLOW_OK when the checkpoint's main spec is this source text; else
 * "PATH: checkpoint was made by a different spec (...)". */
int ckpt_check_spec(flow_ctx *ctx, const ckpt *ck, const char *spec_source);

#endif
