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
#define CKPT_FORMAT_VERSION 1
#define CKPT_HEADER_MAX 100000000u  /* the limit of safetensors itself */
#define CKPT_MAX_DIMS 8
#define CKPT_NAME_MAX 1024

typedef enum ckpt_dtype {
    CKPT_F32, CKPT_F64, CKPT_U64, CKPT_I64
} ckpt_dtype;

/* F32 or F64: the dtype of flow_real in this build. */
#define CKPT_REAL (FLOW_REAL_DOUBLE ? CKPT_F64 : CKPT_F32)

const char *ckpt_dtype_name(ckpt_dtype t);
size_t ckpt_dtype_size(ckpt_dtype t);

/* 64-bit FNV-1a of a spec's source text (Fowler, Noll, Vo; offset basis
 * 0xcbf29ce484222325, prime 0x100000001b3), as in the "spec_hash" key. */
uint64_t ckpt_spec_hash(const char *src, size_t n);

/* The standard metadata a training run records. */
typedef struct ckpt_info {
    const char *spec_source;    /* the .flow text (required) */
    uint64_t epoch, step;
    int has_best;               /* best_score is set */
    double best_score;          /* best validation score (log-likelihood
                                   in nats per sample, higher is better) */
    const char *history_json;   /* training history as JSON text, or NULL */
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
/* Validates and writes everything to path atomically (temp file, fsync,
 * rename, fsync of the directory).  On failure nothing is left. */
int ckpt_writer_write(ckpt_writer *w, const char *path);

/* The "rng/state" tensor: U64 of shape [CKPT_RNG_WORDS] holding the four
 * xoshiro256** words, has_spare (0 or 1) and the IEEE-754 bits of the
 * cached normal deviate, so a resumed run draws exactly the numbers the
 * uninterrupted run would have drawn. */
#define CKPT_RNG_WORDS 6
void ckpt_rng_pack(const flow_rng *r, uint64_t out[CKPT_RNG_WORDS]);
/* FLOW_OK, or FLOW_ERR_FORMAT when has_spare is not 0 or 1. */
int ckpt_rng_unpack(flow_rng *r, const uint64_t in[CKPT_RNG_WORDS]);

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
 * non-overlapping, covering it), data checksum.  *out is new (ckpt_free).
 * "-" reads standard input (named "<stdin>"), as far as the header's
 * length and tensors say. */
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
/* The stored epoch, step (and best score when present) */
int ckpt_info_get(flow_ctx *ctx, const ckpt *ck, uint64_t *epoch,
                  uint64_t *step, int *has_best, double *best);
/* FLOW_OK when the checkpoint was made from this spec source; else
 * "PATH: checkpoint was made by a different spec (...)". */
int ckpt_check_spec(flow_ctx *ctx, const ckpt *ck, const char *spec_source);

#endif
