/* flow_plugin.h - the flowkit plugin ABI, version 1: the only header a
 * layer (or target) plugin needs.  See docs/plugins.md for the full guide.
 *
 * A plugin is a shared object that exports exactly one symbol,
 *
 *     const flow_plugin_info *flow_plugin_entry(void);
 *
 * returning a pointer to a static descriptor (FLOW_PLUGIN_LAYERS below
 * writes both).  Every struct whose first fields are (abi_version,
 * struct_size) or (struct_size) is append-only: later minor versions only
 * add fields at the end, so a reader checks struct_size before touching a
 * field that may be newer than the writer.  What a minor version added or
 * relaxed is labelled with it, e.g. "1.1"; unlabelled is 1.0.
 *
 * Ownership: every string and table a plugin hands out is static (lives as
 * long as the .so is loaded).  Everything the host hands to a plugin is
 * borrowed for the duration of the call unless a field's comment says
 * otherwise.  A plugin never links against libflowkit: all services it may
 * need (memory, RNG, BLAS, MLP/MADE networks, elementwise transformers) come
 * through the flow_host table.
 */
#ifndef FLOW_PLUGIN_H
#define FLOW_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>               /* vsnprintf, for the helpers at the end */

#include "flow/flow_version.h"   /* FLOW_VERSION_*, flow_real */

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version of this header.  The host refuses a plugin whose
 * abi_version differs ("expected 1, got 2"). */
#define FLOW_PLUGIN_ABI_VERSION 1u
/* Minor version: appended fields and host entries, and relaxed rules,
 * that a plugin built against this header may rely on.  The descriptor
 * does not carry it (the major version and the struct sizes do the
 * checking); a plugin that must load into older hosts avoids what is
 * labelled newer than they are, and tests FLOW_HOST_HAS for host entries:
 *   1.1  host net_div_*
 *   1.2  flow_net_spec.premasked; host net_made_step, net_mask_params
 *   1.3  host net_made_sorted_count .. net_made_step_sorted;
 *        FLOW_LAYER_CONCURRENT_PREPARE
 *   1.4  flow_layer_type.workspace and .init may be NULL
 *   1.5  FLOW_JAC_DENSE_EXACT; FLOW_LAYER_CONTEXT; flow_layer_desc input
 *        domain and parameter tensors (flow_param_tensor)
 *   1.6  flow_layer_type.export_tensors and the flow_export sink; host
 *        net_export, tf_export (portable weights, docs/export.md)
 *   1.7  tensor shapes: flow_layer_config.rank and .shape (the input's
 *        shape), flow_layer_desc.out_rank and .out_shape (docs/plugins.md,
 *        "Shapes"); FLOW_NET_CONV and flow_net_spec.channels .. residual
 *        (the convolutional conditioner)
 *   1.8  flow_layer_desc.range, .range_lo, .range_hi: where the outputs
 *        lie when the inputs lie in the domain (dequantize: [0, 1])
 *   1.9  FLOW_TF_AFFINE_SIGMOID (Glow's sigmoid scale; an older host's
 *        transformer entries refuse it with FLOW_ERR_INVAL)
 *   1.10 flow_call.skip_logdet (read it with flow_call_skip_logdet); host
 *        net_div_forward accepts tr = NULL (y only)
 *   1.11 flow_call.block_rows .. block_ctx: a whole-batch layer's call in
 *        the block pass, its batch sums over every process's blocks
 *        (read them with flow_call_block_rows); MADE hidden units stored
 *        in degree order (checkpoint format 3):
 *        flow_layer_type.upgrade_params, host net_made_from_cyclic
 *   1.12 flow_layer_type.grad_support (the parameters whose gradient can
 *        be non-zero: the trainer's passes skip the rest), host
 *        net_made_grad_support */
#define FLOW_PLUGIN_ABI_MINOR 12u

/* Name of the one symbol a plugin exports. */
#define FLOW_PLUGIN_ENTRY_NAME "flow_plugin_entry"

#if defined(__GNUC__)
# define FLOW_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
# define FLOW_PLUGIN_EXPORT
#endif

/* Status codes shared by the runtime and plugins. */
typedef enum flow_status {
    FLOW_OK = 0,
    FLOW_ERR = 1,          /* generic failure, message set */
    FLOW_ERR_NOMEM = 2,    /* allocation failed */
    FLOW_ERR_INVAL = 3,    /* invalid argument / attribute / shape */
    FLOW_ERR_NUMERIC = 4,  /* non-finite value, solver or iteration failure */
    FLOW_ERR_UNSUPPORTED = 5, /* direction or feature not provided */
    FLOW_ERR_IO = 6,       /* file or stream error */
    FLOW_ERR_FORMAT = 7,   /* malformed input file */
    FLOW_ERR_PLUGIN = 8    /* plugin could not be loaded or misbehaved */
} flow_status;

typedef struct flow_host flow_host;  /* host services, defined below */

/* ---------------------------------------------------------------------
 * Attributes: what a layer accepts, declared statically by the plugin.
 * The compiler checks a spec's attributes against these tables (types,
 * ranges, required, unknown names with "did you mean") before the
 * plugin's describe() ever sees them.
 * ------------------------------------------------------------------- */
typedef enum flow_attr_type {
    FLOW_ATTR_INT = 1,       /* integer (int64)                              */
    FLOW_ATTR_REAL = 2,      /* real (double); an integer literal is accepted */
    FLOW_ATTR_BOOL = 3,      /* true | false                                 */
    FLOW_ATTR_STRING = 4,    /* "text"                                       */
    FLOW_ATTR_ENUM = 5,      /* one identifier out of enum_values            */
    FLOW_ATTR_INT_LIST = 6,  /* [1, 2, 3]                                    */
    FLOW_ATTR_REAL_LIST = 7, /* [0.5, 1]                                     */
    FLOW_ATTR_VARIANT = 8    /* NAME or NAME(args): one of `alternatives`,
                                each with its own attribute table; args may
                                be positional (in table order) or named.   */
} flow_attr_type;

typedef struct flow_attr_spec flow_attr_spec;

/* One alternative of a VARIANT attribute, e.g. `spline(bins = 8, bound = 3)`
 * or `random(seed)`.  `attrs` may be NULL when it takes no arguments. */
typedef struct flow_variant_alt {
    const char *name;
    const char *doc;
    const flow_attr_spec *attrs;   /* terminated by an entry with name NULL */
    int bare_list;                 /* 1: a bare list literal `[...]` selects
                                      this alternative and fills its first
                                      attribute (a list), so `order = [2, 0,
                                      1]` means `order = explicit([2, 0, 1])` */
} flow_variant_alt;

/* Declared attribute.  Tables end with an entry whose name is NULL. */
struct flow_attr_spec {
    const char *name;
    flow_attr_type type;
    const char *doc;               /* one line, shown by --help-layer / docs */
    int required;                  /* no default: the spec must give it      */
    /* defaults (used when not required and not given) */
    int64_t def_int;               /* INT, BOOL (0/1), ENUM (index)          */
    double def_real;               /* REAL                                   */
    const char *def_str;           /* STRING; VARIANT: default alternative as
                                      source text, e.g. "affine" or
                                      "spline(bins = 8)"; LISTs: source text
                                      such as "[64, 64]"                    */
    /* ranges, inclusive; checked for INT, REAL and each list item */
    int has_min, has_max;
    double min, max;
    /* lists: allowed lengths (max_len 0 = unbounded) */
    size_t min_len, max_len;
    /* ENUM: identifiers, terminated by NULL */
    const char *const *enum_values;
    /* VARIANT: alternatives, terminated by an entry with name NULL */
    const flow_variant_alt *alternatives;
};

/* A resolved attribute value as given to describe() and create().  The
 * array `attrs` of a config holds one per entry of the type's table, in
 * table order, with defaults filled in.  Frozen in ABI v1 (arrays of it are
 * indexed by plugins). */
typedef struct flow_attr_value {
    flow_attr_type type;
    int given;                     /* 1 if written in the spec              */
    int64_t i;                     /* INT; BOOL 0/1; ENUM index; VARIANT index
                                      of the chosen alternative             */
    double r;                      /* REAL                                  */
    const char *s;                 /* STRING; ENUM/VARIANT: chosen name     */
    size_t n;                      /* list length                           */
    const int64_t *ilist;          /* INT_LIST items                        */
    const double *rlist;           /* REAL_LIST items                       */
    const struct flow_attr_value *sub; /* VARIANT: resolved attributes of the
                                      chosen alternative (its table order) */
    int line, col;                 /* source position (0 when defaulted)    */
} flow_attr_value;

/* ---------------------------------------------------------------------
 * Structure a layer declares, for the compile-time verifier and reports.
 * ------------------------------------------------------------------- */

/* Jacobian class of the forward map. */
typedef enum flow_jac_class {
    FLOW_JAC_VOLUME_PRESERVING = 1, /* |det J| = 1 (permutations, additive
                                       coupling declares COUPLING instead) */
    FLOW_JAC_DIAGONAL = 2,          /* elementwise map                      */
    FLOW_JAC_TRIANGULAR = 3,        /* autoregressive under an order        */
    FLOW_JAC_COUPLING = 4,          /* block triangular: identity part and a
                                       transformed part                     */
    FLOW_JAC_DENSE_LU = 5,          /* dense, log-det from an LU factor     */
    FLOW_JAC_RESIDUAL = 6,          /* x + g(x), Lip(g) < 1; log-det exact
                                       (small D) or estimated by series     */
    FLOW_JAC_ODE = 7,               /* continuous flow; log-det by trace
                                       integration (exact or Hutchinson)    */
    FLOW_JAC_DENSE_EXACT = 8        /* 1.5: dense, log-det computed exactly
                                       by the layer in closed form (an
                                       orthogonal or Householder factor
                                       times a diagonal, ...); `flowkit
                                       check` verifies it against the FD
                                       Jacobian like any other             */
} flow_jac_class;

/* How the dependency pattern (which outputs depend on which inputs) is
 * declared.  dep_vec is filled by describe() for the vector kinds. */
typedef enum flow_dep_kind {
    FLOW_DEP_ELEMENTWISE = 1, /* z_i depends on x_i only                    */
    FLOW_DEP_PERMUTATION = 2, /* z_i = x_{dep_vec[i]}                        */
    FLOW_DEP_COUPLING = 3,    /* dep_vec[i] = 1: i is transformed, depends on
                                 itself and every j with dep_vec[j] = 0;
                                 dep_vec[i] = 0: passes through unchanged    */
    FLOW_DEP_ORDER = 4,       /* autoregressive: z_i depends on x_i and every
                                 x_j with dep_vec[j] < dep_vec[i]; dep_vec is a
                                 permutation of 0..D-1 (the degree order)    */
    FLOW_DEP_DENSE = 5,       /* every output may depend on every input;
                                 invertibility comes from the certificate  */
    FLOW_DEP_MATRIX = 6       /* explicit D x D pattern from dep_matrix()   */
} flow_dep_kind;

/* Invertibility certificate. */
typedef enum flow_cert_kind {
    FLOW_CERT_STRUCTURAL = 1, /* invertible by construction (permutation,
                                 positive scale, additive shift)            */
    FLOW_CERT_MONOTONE = 2,   /* strictly monotone elementwise transformer  */
    FLOW_CERT_LIPSCHITZ = 3,  /* residual: cert_value = bound on Lip(g), must
                                 be < 1                                      */
    FLOW_CERT_LU = 4,         /* LU with non-zero (positive) diagonal       */
    FLOW_CERT_ODE = 5         /* ODE with Lipschitz dynamics; cert_value =
                                 solver tolerance (0 for fixed step)        */
} flow_cert_kind;

/* Cost of one direction, for reports ("density 5 passes; sampling 320
 * sequential passes"). */
typedef struct flow_cost {
    uint32_t passes;          /* network passes per batch                    */
    int sequential;           /* 1: the passes depend on each other         */
    double flops_per_row;     /* rough multiply-adds per row (0 = unknown)  */
} flow_cost;

/* Capability flags in flow_layer_desc.flags. */
#define FLOW_LAYER_FORWARD           0x0001u /* forward() provided          */
#define FLOW_LAYER_INVERSE           0x0002u /* inverse() provided          */
#define FLOW_LAYER_BACKWARD_FORWARD  0x0004u /* VJP of forward provided     */
#define FLOW_LAYER_BACKWARD_INVERSE  0x0008u /* VJP of inverse provided     */
#define FLOW_LAYER_WHOLE_BATCH       0x0010u /* must see the whole batch in
                                                one call (batch statistics);
                                                the host never splits it    */
#define FLOW_LAYER_DATA_INIT         0x0020u /* has data_init()             */
#define FLOW_LAYER_STOCHASTIC        0x0040u /* uses the call's RNG
                                                (estimators); log-det is an
                                                estimate in training mode   */
#define FLOW_LAYER_INVERSE_TRAINING_ERROR 0x0080u /* inverse only in eval
                                                mode (batchnorm)            */
#define FLOW_LAYER_CONCURRENT_PREPARE 0x0100u /* 1.3: prepare(), finish_grad()
                                                touch only the instance and
                                                the call's slices: the host
                                                may run them for several
                                                layers at once, on its
                                                threads (never one instance
                                                twice at once)              */
#define FLOW_LAYER_CONTEXT           0x0200u /* 1.5: consumes the context
                                                (`given`) whatever its
                                                dependency pattern, e.g. a
                                                conditional elementwise map;
                                                without it only layers with
                                                a conditioner (coupling,
                                                autoregressive, residual,
                                                ODE) may be given one       */

/* Input domain of a layer (flow_layer_desc.domain, 1.5): where every input
 * value must lie for the map to be defined (logit: the unit interval). */
#define FLOW_DOMAIN_NONE   0u     /* the whole real line                    */
#define FLOW_DOMAIN_CLOSED 1u     /* [domain_lo, domain_hi]                 */
#define FLOW_DOMAIN_OPEN   2u     /* (domain_lo, domain_hi)                 */

/* One named tensor of a layer's flat parameter vector (1.5).  Tensors are
 * listed in storage order and their counts sum to n_params. */
#define FLOW_TENSOR_MASKED 0x1u   /* some entries are structurally unused
                                     (autoregressive masks): the checker
                                     requires only that some entry of the
                                     tensor is used                         */
typedef struct flow_param_tensor {
    const char *name;             /* static, e.g. "scale", "net.W1"         */
    size_t count;                 /* entries                                 */
    uint32_t flags;               /* FLOW_TENSOR_*                           */
} flow_param_tensor;

/* What describe() reports.  The host zero-fills it, sets struct_size and
 * dep_vec (D int32 entries), then calls describe(). */
typedef struct flow_layer_desc {
    uint32_t struct_size;
    uint32_t flags;               /* FLOW_LAYER_* */
    size_t n_params;              /* trainable parameters (flat)            */
    size_t n_buffers;             /* non-trainable state saved in
                                     checkpoints (running means, init flag) */
    flow_jac_class jac;
    flow_dep_kind dep;
    int32_t *dep_vec;             /* host-owned, D entries, see flow_dep_kind */
    flow_cert_kind cert;
    double cert_value;            /* Lipschitz bound, tolerance, ...        */
    const char *cert_text;        /* static text for reports, e.g.
                                     "monotone RQ spline, 8 bins"; may be
                                     NULL                                   */
    flow_cost cost_forward;       /* density direction                      */
    flow_cost cost_inverse;       /* sampling direction                     */
    int logdet_exact;             /* 1: exact in eval mode; 0: estimated    */
    /* 1.5 (read only when struct_size covers them) */
    uint32_t domain;              /* FLOW_DOMAIN_*: where inputs must lie;
                                     the compiler checks declared bounds
                                     against it, the data reader checks the
                                     data, `flowkit check` draws inside it */
    double domain_lo, domain_hi;
    flow_param_tensor *tensors;   /* host-owned, tensors_cap entries (may be
                                     NULL): describe() may name the tensors
                                     of its parameters here, writing at most
                                     tensors_cap and setting n_tensors to
                                     the full count; 0 = one unnamed tensor */
    size_t tensors_cap;
    size_t n_tensors;
    /* 1.7 (read only when struct_size covers them): the output's shape
     * when it differs from the input's (squeeze); out_rank 0 (the host's
     * zero fill) = the same shape as the input.  The volume is preserved:
     * the compiler checks that the product of out_shape is dim. */
    size_t out_rank;              /* 0, or 1..FLOW_MAX_RANK                  */
    size_t out_shape[4];
    /* 1.8: where every output lies when every input lies in the domain
     * (FLOW_DOMAIN_*, NONE = nothing said), so that the compiler knows
     * the next layer's inputs are inside its own domain (dequantize maps
     * [0, levels - 1] into [0, 1], where logit is defined). */
    uint32_t range;
    double range_lo, range_hi;
} flow_layer_desc;

/* Most dimensions a shape has (1.7): [D], or [C, H, W] of an image. */
#define FLOW_MAX_RANK 4

/* The configuration of one layer instance, given to describe() and
 * create().  Borrowed; create() copies what it keeps. */
typedef struct flow_layer_config {
    uint32_t struct_size;
    const char *name;             /* instance label, e.g. "coupling#3"      */
    size_t dim;                   /* D: input = output width                */
    size_t context_dim;           /* K: context width, 0 without `given`   */
    const flow_attr_value *attrs; /* one per attribute of the type, in order */
    int has_bounds;               /* the input is known to lie in [lo, hi]  */
    double lo, hi;
    int line, col;                /* position of the layer statement        */
    const flow_host *host;        /* host services, so describe() can size
                                     networks (net_create / net_params)    */
    /* 1.7 (read only when struct_size covers them): the input's shape,
     * stored flat in C order (an image [C, H, W] at c*H*W + h*W + w, as
     * NCHW), so the product of shape[0..rank) is dim and a layer that
     * ignores shapes sees the flat vector it always saw.  rank 1 is [D];
     * a host older than 1.7 leaves them out (treat that as [D]). */
    size_t rank;
    size_t shape[4];
} flow_layer_config;

/* The rank and shape of cfg's input, [dim] when the host is older than
 * 1.7 or gave no shape; returns the rank. */
static inline size_t flow_config_shape(const flow_layer_config *cfg,
                                       size_t shape[4])
{
    size_t r = 0;
    if (cfg->struct_size >= offsetof(flow_layer_config, shape)
                            + sizeof cfg->shape)
        r = cfg->rank;
    if (r < 1 || r > 4) {
        shape[0] = cfg->dim;
        shape[1] = shape[2] = shape[3] = 1;
        return 1;
    }
    for (size_t i = 0; i < 4; i++)
        shape[i] = i < r ? cfg->shape[i] : 1;
    return r;
}

/* Error report from describe()/create(): a message and the attribute it
 * concerns (index into the type's table, -1 for the layer as a whole), so
 * the compiler can underline the right place. */
typedef struct flow_diag {
    uint32_t struct_size;
    int attr;                     /* attribute index or -1                  */
    char message[512];
    char help[256];               /* optional hint, "" for none             */
} flow_diag;

/* ---------------------------------------------------------------------
 * Execution.
 * ------------------------------------------------------------------- */
typedef struct flow_rng flow_rng;   /* opaque, used through flow_host */

/* Everything one call into a layer needs.  Built by the host per call and
 * per thread; a layer's functions may run concurrently on different
 * threads with different flow_call structs (different row ranges,
 * workspaces and gradient buffers), unless the layer declares
 * FLOW_LAYER_WHOLE_BATCH. */
typedef struct flow_call {
    uint32_t struct_size;
    const flow_host *host;
    size_t n;                     /* rows in this call                       */
    size_t dim;                   /* D                                       */
    size_t context_dim;           /* K                                       */
    const flow_real *params;      /* this layer's parameter slice            */
    flow_real *grad;              /* gradient slice (accumulate +=), private
                                     to this call's thread; NULL when only
                                     the input gradient is wanted           */
    flow_real *buffers;           /* non-trainable state slice (n_buffers)   */
    const flow_real *ctx;         /* n x K context rows, NULL if K = 0       */
    flow_real *dctx;              /* n x K context gradient (accumulate +=),
                                     may be NULL                            */
    void *ws;                     /* workspace of ws_bytes, aligned to 64;
                                     what forward/inverse store here is
                                     still there for the matching backward  */
    size_t ws_bytes;
    flow_rng *rng;                /* per-thread stream; deterministic given
                                     the seed and the thread count          */
    int training;                 /* 1 in training mode                      */
    int thread;                   /* 0-based index of the calling thread     */
    char *err;                    /* message buffer of err_cap bytes; set it
                                     (or use host->error) before returning
                                     a non-zero status                       */
    size_t err_cap;
    /* 1.10 (read only when struct_size covers it: flow_call_skip_logdet).
     * 1 on a forward or inverse call whose logdet output the caller does
     * not read (sampling, or encoding, without densities): the layer may
     * leave logdet unwritten and skip the work that only feeds it (an ODE
     * layer's trace, a residual layer's log-det, a spline's derivatives).
     * Set only in evaluation mode (training 0) and only where no backward
     * follows the call; never on backward calls.  The output must be the
     * same bits with and without it, and the call must draw the same
     * numbers from rng, so that later draws do not change either.  A
     * plugin that ignores it (or was built against an older header)
     * computes the log-det as always, which is also correct. */
    int skip_logdet;
    /* 1.11 (read only when struct_size covers them: flow_call_block_rows).
     * Set on the training calls of a whole-batch layer
     * (FLOW_LAYER_WHOLE_BATCH) in the block pass (reproducible and
     * multi-process training, docs/distributed.md): the batch is cut into
     * blocks of block_rows rows (the last one short), spread over the
     * processes, and this call's n rows are this process's blocks, whole
     * and in order (possibly none: n = 0, a process with no block still
     * takes part in every block_sum).  The batch's statistics are sums
     * over the blocks of all processes: the layer sums each of its
     * blocks' rows (in row order, in double) into partials (block j's
     * `count` values at partials + j * count, j < ceil(n / block_rows))
     * and block_sum returns, in sums, every block's values added in the
     * batch's block order: the same bits however the blocks are spread.
     * block_sum is a collective call: every process makes the same calls
     * with the same count, so a layer fails only on what the sums say
     * (the same on every process), never between two of its calls on one
     * process alone.  The parameter gradient is per block: block j's
     * rows' share goes to grad + j * grad_stride.  0 / NULL outside the
     * block pass: the call's rows are the whole batch, as before. */
    size_t block_rows;
    size_t grad_stride;
    int (*block_sum)(const struct flow_call *c, size_t count,
                     const double *partials, double *sums);
    void *block_ctx;              /* the host's, for block_sum               */
} flow_call;

/* The call's block_rows when it is a block-pass call (1.11), 0 otherwise
 * and from a host older than 1.11. */
static inline size_t flow_call_block_rows(const flow_call *c)
{
    return c->struct_size >= offsetof(flow_call, block_ctx)
                             + sizeof c->block_ctx
           && c->block_sum ? c->block_rows : 0;
}

/* 1 when c asks the layer to skip its log-det (1.10), 0 otherwise and
 * from a host older than 1.10, whose calls are shorter. */
static inline int flow_call_skip_logdet(const flow_call *c)
{
    return c->struct_size >= offsetof(flow_call, skip_logdet)
                             + sizeof c->skip_logdet
           && c->skip_logdet;
}

/* Portable export (1.6): the sink a layer's export_tensors() writes its
 * weights and derived constants into, as named tensors and architecture
 * attributes (docs/export.md).  Built by the host for one layer; every
 * call copies what it is given, so data may live on the stack. */
typedef enum flow_dtype {
    FLOW_DTYPE_F32 = 1, FLOW_DTYPE_F64 = 2, FLOW_DTYPE_I64 = 3,
    FLOW_DTYPE_U8 = 4
} flow_dtype;
/* The dtype of flow_real in this build. */
#define FLOW_DTYPE_REAL (FLOW_REAL_DOUBLE ? FLOW_DTYPE_F64 : FLOW_DTYPE_F32)

typedef struct flow_export flow_export;
struct flow_export {
    uint32_t struct_size;
    void *host_data;              /* the host's, never touched by a layer   */
    /* A tensor `name` relative to the layer ("net.0.weight", "perm"; the
     * host prefixes "layers.{i}."), row-major with ndim dimensions of
     * shape[], little-endian on write: data holds prod(shape) values of
     * dtype (int64_t for I64, uint8_t for U8) in host order.  A name the
     * layer already wrote is an error. */
    int (*tensor)(flow_export *ex, const char *name, flow_dtype dtype,
                  size_t ndim, const size_t *shape, const void *data);
    /* A key of the layer's entry in the architecture JSON ("transformer",
     * "net", ...) whose value is the JSON text json_value (an object,
     * number, string literal with its quotes, ...), checked by the host. */
    int (*attr)(flow_export *ex, const char *key, const char *json_value);
};

/* A layer type: static table exported by a plugin. */
typedef struct flow_layer_type {
    uint32_t struct_size;
    const char *name;             /* unique across loaded plugins            */
    const char *summary;          /* one line                                */
    const flow_attr_spec *attrs;  /* terminated by name NULL; may be NULL    */

    /* Compile time: validate the resolved config and report structure.
     * Must be fast and side-effect free (called by the compiler). */
    int (*describe)(const flow_layer_config *cfg, flow_layer_desc *out,
                    flow_diag *diag);
    /* Explicit D x D pattern, only when describe() says FLOW_DEP_MATRIX:
     * mat[i*D + j] = 1 when output i may depend on input j. */
    int (*dep_matrix)(const flow_layer_config *cfg, uint8_t *mat);

    /* Instance life cycle.  create() keeps what it needs of cfg (copies). */
    void *(*create)(const flow_host *host, const flow_layer_config *cfg,
                    flow_diag *diag);
    void (*destroy)(void *self);

    /* Bytes of workspace for one call of `n` rows in direction `dir`
     * (0 = forward, 1 = inverse), including what the matching backward
     * needs.  Called once per batch size; must not depend on data.
     * 1.4: may be NULL, meaning 0 bytes (c->ws may then be NULL). */
    size_t (*workspace)(void *self, size_t n, int dir);

    /* Parameter initialisation into `params` (c->params, writable here)
     * and c->buffers, which the host has zero-filled.  Random draws from
     * c->rng.  c->n = 0.  1.4: may be NULL, meaning nothing to do: the
     * parameters and buffers stay 0. */
    int (*init)(void *self, const flow_call *c, flow_real *params);
    /* Data-dependent initialisation on the first batch x (n x D), with
     * FLOW_LAYER_DATA_INIT: may rewrite params and buffers. */
    int (*data_init)(void *self, const flow_call *c, flow_real *params,
                     const flow_real *x);

    /* Forward (density) direction: z = f(x), logdet[r] = log|det df/dx| of
     * row r (written, not accumulated).  x and z never alias. */
    int (*forward)(void *self, const flow_call *c, const flow_real *x,
                   flow_real *z, flow_real *logdet);
    /* Inverse (sampling) direction: x = f^-1(z), logdet[r] = log|det
     * df^-1/dz| = -log|det df/dx| at x. */
    int (*inverse)(void *self, const flow_call *c, const flow_real *z,
                   flow_real *x, flow_real *logdet);

    /* Vector-Jacobian products, run after the matching forward/inverse
     * with the same flow_call (same ws).  Given dL/d(out) and
     * dL/d(logdet) per row, write dL/d(in) (n x D, written) and accumulate
     * parameter (c->grad) and context (c->dctx) gradients. */
    int (*forward_backward)(void *self, const flow_call *c,
                            const flow_real *x, const flow_real *z,
                            const flow_real *dz, const flow_real *dlogdet,
                            flow_real *dx);
    int (*inverse_backward)(void *self, const flow_call *c,
                            const flow_real *z, const flow_real *x,
                            const flow_real *dx, const flow_real *dlogdet,
                            flow_real *dz);

    /* Optional (NULL = nothing to do).  prepare() runs once per batch,
     * single-threaded, before any forward/inverse call of that batch: derive
     * what depends only on parameters (assembled LU weights, spectrally
     * normalised weights) into the instance.  finish_grad() runs once per
     * batch after the per-thread gradients were summed into `grad`: it maps
     * whatever the layer's backward accumulated there (e.g. gradients with
     * respect to derived weights of the same size) to gradients with
     * respect to the raw parameters, in place. */
    int (*prepare)(void *self, const flow_call *c);
    int (*finish_grad)(void *self, const flow_call *c, flow_real *grad);

    /* Optional: a counter the host reports (e.g. ODE function evaluations in
     * the last call); NULL when the layer has none. */
    const char *stat_name;
    double (*stat)(void *self);

    /* 1.6, optional (read only when struct_size covers it; NULL: the
     * layer is not portable and `flowkit export` writes its flat
     * parameters only, with a warning).  Writes into ex every tensor and
     * attribute a port needs to compute the layer's density direction
     * exactly (docs/export.md): c->params and c->buffers are the layer's
     * slices, c->n = 0, no workspace.  A layer with a host network calls
     * host->net_export for it and host->tf_export for its transformer. */
    int (*export_tensors)(void *self, const flow_call *c, flow_export *ex);

    /* 1.11, optional (read only when struct_size covers it; NULL: the
     * layer's parameter layout never changed).  Converts, in place, a
     * vector in the layout of the layer's parameters as a checkpoint of
     * format `format` (docs/formats.md) stored them into this host's
     * layout: params is the vector (the layer's slice of the parameters,
     * or of Adam's moments or the best parameters of the training state);
     * c as for export_tensors (c->n = 0, no workspace).  The host calls it
     * once per vector when restoring a checkpoint older than its format;
     * a layer with a MADE calls host->net_made_from_cyclic for format
     * < 3. */
    int (*upgrade_params)(void *self, const flow_call *c, uint32_t format,
                          flow_real *params);

    /* 1.12, optional (read only when struct_size covers it; NULL: every
     * parameter).  The parameters that the layer's backward calls
     * (forward_backward, inverse_backward) may write in c->grad and that
     * finish_grad may leave non-zero, as runs: runs[2i] the offset of run
     * i relative to the layer's parameters, runs[2i + 1] its length;
     * increasing and disjoint (a run may end where the next begins; empty
     * runs are ignored), all within n_params.  The gradient of every
     * other parameter is 0 at every step, so the trainer leaves those
     * parameters alone in its passes: they keep their value (no weight
     * decay either; a MADE's masked weights, which the mask zeroes, do
     * not change the function).  The list is structural: it must not
     * depend on the parameters' values, and it is asked for once, when
     * the model is built.  Returns the number of runs and writes at most
     * cap of them (runs holds 2 cap values); when it returns more than
     * cap the host calls again with room for them all.  c as for
     * export_tensors (c->n = 0, no workspace).  A layer with a MADE calls
     * host->net_made_grad_support.  The host refuses an invalid list
     * (unsorted, overlapping, past n_params) when it loads the model. */
    size_t (*grad_support)(void *self, const flow_call *c, size_t *runs,
                           size_t cap);
} flow_layer_type;

/* ---------------------------------------------------------------------
 * Targets: unnormalised log-densities for variational (reverse-KL) fits.
 * ------------------------------------------------------------------- */
typedef struct flow_target_config {
    uint32_t struct_size;
    size_t dim;
    const flow_attr_value *attrs;
    int line, col;
} flow_target_config;

typedef struct flow_target_type {
    uint32_t struct_size;
    const char *name;
    const char *summary;
    const flow_attr_spec *attrs;
    /* Check attributes; *dim_out = the dimension this target needs (0 =
     * any, then cfg->dim decides). */
    int (*describe)(const flow_target_config *cfg, size_t *dim_out,
                    flow_diag *diag);
    void *(*create)(const flow_host *host, const flow_target_config *cfg,
                    flow_diag *diag);
    void (*destroy)(void *self);
    /* logp[r] = log p~(x_r); grad (n x D, may be NULL) = d log p~ / dx. */
    int (*log_density)(void *self, const flow_call *c, const flow_real *x,
                       flow_real *logp, flow_real *grad);
    /* Known log normaliser log Z, or NaN when unknown. */
    double (*log_normalizer)(void *self);
} flow_target_type;

/* ---------------------------------------------------------------------
 * The descriptor a plugin returns.
 * ------------------------------------------------------------------- */
typedef struct flow_plugin_info {
    uint32_t abi_version;         /* FLOW_PLUGIN_ABI_VERSION                 */
    uint32_t struct_size;         /* sizeof(flow_plugin_info)                */
    uint32_t real_size;           /* sizeof(flow_real) the plugin was built
                                     with; must match the host's             */
    uint32_t reserved;
    const char *name;             /* plugin name, e.g. "coupling"            */
    const char *version;          /* plugin's own version string             */
    const char *summary;          /* one line                                */
    size_t n_layers;
    const flow_layer_type *const *layers;
    size_t n_targets;
    const flow_target_type *const *targets;
} flow_plugin_info;

/* Convenience initialiser for the header fields. */
#define FLOW_PLUGIN_INFO_HEAD \
    FLOW_PLUGIN_ABI_VERSION, (uint32_t)sizeof(flow_plugin_info), \
    (uint32_t)sizeof(flow_real), 0u

typedef const flow_plugin_info *(*flow_plugin_entry_fn)(void);

/* The entry point every plugin defines (and the only symbol it exports). */
FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void);

/* The descriptor and the entry point, written once at the end of a plugin
 * (at file scope, followed by a semicolon), after its static types:
 *
 *     FLOW_PLUGIN_LAYERS("mine", "1.0", "my layers", &a_type, &b_type);
 *     FLOW_PLUGIN_TARGETS("dens", "1.0", "my targets", &c_type);
 *
 * FLOW_PLUGIN_DEFINE is the general form, for a plugin with both layers
 * and targets: static arrays of type pointers and their lengths (NULL, 0
 * for none).  The descriptor is static, as the ABI requires; the trailing
 * declaration only consumes the semicolon (as PostgreSQL's
 * PG_MODULE_MAGIC does). */
#define FLOW_PLUGIN_DEFINE(NAME, VERSION, SUMMARY, LAYERS, N_LAYERS, \
                           TARGETS, N_TARGETS) \
    static const flow_plugin_info flow_plugin_info_ = { \
        FLOW_PLUGIN_INFO_HEAD, (NAME), (VERSION), (SUMMARY), (N_LAYERS), \
        (LAYERS), (N_TARGETS), (TARGETS)}; \
    FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void) \
    { \
        return &flow_plugin_info_; \
    } \
    extern int flow_plugin_defined_once_

#define FLOW_PLUGIN_LAYERS(NAME, VERSION, SUMMARY, ...) \
    static const flow_layer_type *const flow_plugin_layers_[] = { \
        __VA_ARGS__}; \
    FLOW_PLUGIN_DEFINE(NAME, VERSION, SUMMARY, flow_plugin_layers_, \
                       sizeof flow_plugin_layers_ \
                           / sizeof flow_plugin_layers_[0], NULL, 0)

#define FLOW_PLUGIN_TARGETS(NAME, VERSION, SUMMARY, ...) \
    static const flow_target_type *const flow_plugin_targets_[] = { \
        __VA_ARGS__}; \
    FLOW_PLUGIN_DEFINE(NAME, VERSION, SUMMARY, NULL, 0, \
                       flow_plugin_targets_, \
                       sizeof flow_plugin_targets_ \
                           / sizeof flow_plugin_targets_[0])

/* ---------------------------------------------------------------------
 * Host services.  A plugin reaches the runtime only through this table.
 * Entries are never NULL in a host of the same ABI version unless the
 * comment says so; a newer entry exists when struct_size covers it
 * (FLOW_HOST_HAS(h, field)).
 * ------------------------------------------------------------------- */
typedef enum flow_log_level {
    FLOW_LOG_DEBUG = 0, FLOW_LOG_INFO = 1, FLOW_LOG_WARN = 2,
    FLOW_LOG_ERROR = 3
} flow_log_level;

typedef enum flow_activation {
    FLOW_ACT_IDENTITY = 0, FLOW_ACT_RELU = 1, FLOW_ACT_LEAKY_RELU = 2,
    FLOW_ACT_TANH = 3, FLOW_ACT_ELU = 4, FLOW_ACT_SOFTPLUS = 5,
    FLOW_ACT_SIGMOID = 6
} flow_activation;

/* Networks built by the host: a plain MLP or a MADE (masked MLP); 1.7:
 * a convolutional net on images (FLOW_NET_CONV, fields at the end of
 * flow_net_spec; docs/plugins.md, "Convolutional networks"). */
typedef enum flow_net_kind {
    FLOW_NET_MLP = 1, FLOW_NET_MADE = 2, FLOW_NET_CONV = 3
} flow_net_kind;

/* Time conditioning for ODE dynamics nets. */
typedef enum flow_time_mode {
    FLOW_TIME_NONE = 0,
    FLOW_TIME_CONCAT = 1,        /* t appended to every layer's input       */
    FLOW_TIME_CONCATSQUASH = 2   /* h' = (W h + b) * sigmoid(a t + c) + d t
                                    (Grathwohl et al. 2019, FFJORD code)    */
} flow_time_mode;

typedef struct flow_net_spec {
    uint32_t struct_size;
    flow_net_kind kind;
    size_t in;                    /* input width (MADE: D)                   */
    size_t context;               /* extra context inputs (0 = none): each
                                     row's input is then [x, ctx], ctx given
                                     to net_forward apart (a layer passes
                                     c->ctx, K = cfg->context_dim) and its
                                     gradient accumulated into dctx       */
    size_t out;                   /* MLP: output width; MADE: outputs per
                                     dimension (total = out * in, laid out
                                     dimension-major: y[r, i*out + k])       */
    size_t n_hidden;
    const size_t *hidden;         /* hidden widths                            */
    flow_activation act;
    double act_param;             /* leaky_relu slope (0 = 0.01)             */
    int zero_last;                /* last layer starts at zero (identity flow) */
    double spectral_norm;         /* > 0: every weight matrix is used
                                     rescaled to spectral norm <= this
                                     (power iteration; residual flows,
                                     Behrmann et al. 2019, sec. 3)          */
    flow_time_mode time;
    /* MADE only: input degrees, a permutation of 0..in-1 (order[i] = when
     * dimension i is generated); output for dimension i depends only on
     * inputs j with order[j] < order[i], and on every context input. */
    const int32_t *order;
    uint64_t seed;                /* hidden degree assignment seed (MADE)    */
    /* 1.2 (hosts check struct_size; older specs read as 0).  MADE
     * only, without spectral_norm: 1 = the weights passed to net_forward,
     * net_backward, ... are used as they are, with no mask applied, so the
     * caller must pass parameters whose masked weights are 0 (net_init
     * writes them so, and net_backward then zeroes the masked entries of
     * dparams it accumulates into, so Adam keeps them at exactly 0);
     * net_mask_params checks and repairs other parameters.  Saves a masked
     * copy of every weight matrix per call. */
    int premasked;
    /* 1.7: FLOW_NET_CONV only (ignored by the other kinds; a conv spec
     * must have struct_size covering them).  Each row of x is an image
     * channels x height x width in C order (c H W + h W + w), each row of
     * y one of out_channels x height x width, so in = channels H W and
     * out = out_channels H W.  The net is kernel x kernel conv (channels
     * + context -> conv_hidden), ReLU, `blocks` times [1x1 conv
     * (conv_hidden -> conv_hidden), ReLU, with residual: added to its
     * input], kernel x kernel conv (conv_hidden -> out_channels); stride
     * 1, zero "same" padding (kernel / 2); blocks = 1 is Glow's
     * conditioner (Kingma and Dhariwal 2018, sec. 3.3).  Context inputs
     * (`context` above) enter as constant image channels after the
     * input's.  act must be FLOW_ACT_RELU; time, spectral_norm and
     * premasked must be 0.  net_jvp, net_jvp_backward and the
     * net_div / net_made entries return FLOW_ERR_UNSUPPORTED. */
    size_t channels, height, width;
    size_t conv_hidden;           /* hidden channels                         */
    size_t kernel;                /* odd; 0 = 3                              */
    size_t blocks;                /* 1x1 stages in the middle                */
    size_t out_channels;
    int residual;                 /* 1: each 1x1 stage is h + ReLU(conv h)   */
} flow_net_spec;

typedef struct flow_net flow_net;  /* opaque, owned by the layer */

/* Elementwise transformers (monotone scalar maps y = tau(x; theta)). */
typedef enum flow_tf_kind {
    FLOW_TF_AFFINE = 1,   /* y = x * exp(5 tanh(s / 5)) + t, theta = (s, t) */
    FLOW_TF_ADDITIVE = 2, /* y = x + t, theta = (t)                          */
    FLOW_TF_SPLINE = 3,   /* rational-quadratic spline with linear tails
                             outside [-B, B] (Durkan et al. 2019), theta =
                             (K widths, K heights, K-1 derivatives)        */
    FLOW_TF_AFFINE_SIGMOID = 4 /* 1.9: y = x * scale + t, theta = (s, t),
                             scale = m + (1 - m) sigma(s + 2) in (m, 1),
                             m = e^-5: Glow's scale, floored              */
} flow_tf_kind;

typedef struct flow_tf {
    uint32_t struct_size;
    flow_tf_kind kind;
    uint32_t bins;                /* spline: K                               */
    double bound;                 /* spline: B                               */
    double min_width, min_height, min_deriv; /* spline floors (0 = default) */
} flow_tf;

struct flow_host {
    uint32_t abi_version;
    uint32_t struct_size;
    uint32_t real_size;

    /* memory: aligned to 64 bytes; never returns NULL for n = 0 */
    void *(*alloc)(size_t bytes);
    void *(*calloc)(size_t count, size_t size);   /* overflow-checked      */
    void (*free)(void *p);

    /* messages */
    void (*log)(flow_log_level level, const char *fmt, ...);
    /* formats into c->err and returns FLOW_ERR */
    int (*error)(const flow_call *c, const char *fmt, ...);

    /* random numbers from the call's stream */
    uint64_t (*rng_u64)(flow_rng *rng);
    double (*rng_uniform)(flow_rng *rng);            /* (0, 1)              */
    void (*rng_normal)(flow_rng *rng, flow_real *out, size_t n);
    void (*rng_rademacher)(flow_rng *rng, flow_real *out, size_t n);

    /* BLAS (row-major, single-threaded inside a call: the host threads
     * over rows).  C = alpha op(A) op(B) + beta C. */
    void (*gemm)(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                 flow_real alpha, const flow_real *a, size_t lda,
                 const flow_real *b, size_t ldb, flow_real beta,
                 flow_real *c, size_t ldc);

    /* networks */
    flow_net *(*net_create)(const flow_net_spec *spec, char *err,
                            size_t err_cap);
    void (*net_destroy)(flow_net *net);
    size_t (*net_params)(const flow_net *net);
    /* init into params (zero_last respected) */
    void (*net_init)(const flow_net *net, flow_real *params, flow_rng *rng);
    /* bytes for one forward tape of n rows (kept for backward/jvp) */
    size_t (*net_workspace)(const flow_net *net, size_t n);
    /* y = net(x, ctx, t), n rows; ctx NULL when net has none */
    int (*net_forward)(const flow_net *net, const flow_real *params,
                       size_t n, const flow_real *x, const flow_real *ctx,
                       double t, flow_real *y, void *ws);
    /* after net_forward on the same ws: dx written (may be NULL), dctx and
     * dparams accumulated (may be NULL) */
    int (*net_backward)(const flow_net *net, const flow_real *params,
                        size_t n, void *ws, const flow_real *dy,
                        flow_real *dx, flow_real *dctx, flow_real *dparams);
    /* tangent propagation after net_forward: ty = (dy/dx) tx */
    int (*net_jvp)(const flow_net *net, const flow_real *params, size_t n,
                   void *ws, const flow_real *tx, flow_real *ty);

    /* elementwise transformers on m scalars; theta holds tf_params(tf)
     * raw (unconstrained) values per scalar, contiguous.  Each map y =
     * tau(x; theta) is strictly increasing, and `lad` (may be NULL) gets
     * the log-derivative of the direction computed, so a layer sums it
     * into its log-det as it is in either direction:
     *   tf_forward:  y = tau(x),    lad[i] = log|dy/dx| = log tau'(x_i)
     *   tf_inverse:  x = tau^-1(y), lad[i] = log|dx/dy| = -log tau'(x_i),
     *                the negative of tf_forward's lad at the x it returns
     *                (the affine transformer: x = (y - t) e^-l, lad = -l).
     * Both return FLOW_ERR_NUMERIC when a finite input gives a non-finite
     * output or lad, FLOW_ERR_INVAL for an invalid tf.  With lad NULL the
     * output is the same bits and the log-derivative is not computed (a
     * spline's derivative and its log: a layer skipping its log-det). */
    size_t (*tf_params)(const flow_tf *tf);
    int (*tf_forward)(const flow_tf *tf, size_t m, const flow_real *x,
                      const flow_real *theta, flow_real *y, flow_real *lad);
    int (*tf_inverse)(const flow_tf *tf, size_t m, const flow_real *y,
                      const flow_real *theta, flow_real *x, flow_real *lad);
    /* VJP of tf_forward at x: dx written, dtheta written (m * P) */
    int (*tf_backward)(const flow_tf *tf, size_t m, const flow_real *x,
                       const flow_real *theta, const flow_real *dy,
                       const flow_real *dlad, flow_real *dx,
                       flow_real *dtheta);
    /* VJP of tf_inverse at y (x = tau^-1(y) recomputed or passed in x when
     * not NULL): given dL/dx and dL/d(lad of the inverse), write dy and
     * dtheta */
    int (*tf_inverse_backward)(const flow_tf *tf, size_t m,
                               const flow_real *y, const flow_real *x,
                               const flow_real *theta, const flow_real *dx,
                               const flow_real *dlad, flow_real *dy,
                               flow_real *dtheta);

    /* second order, for exact-trace continuous flows trained by backprop:
     * after net_forward + net_jvp(tx -> ty) on the same ws, given dL/d(ty)
     * accumulate dL/dparams and write dL/dx and dL/dtx (each may be NULL) */
    int (*net_jvp_backward)(const flow_net *net, const flow_real *params,
                            size_t n, void *ws, const flow_real *tx,
                            const flow_real *dty, flow_real *dx,
                            flow_real *dtx, flow_real *dparams);

    /* small dense linear algebra (LAPACK), row-major d x d, overwritten:
     * log|det a| and its sign (0 when singular); inverse in place */
    int (*slogdet)(size_t d, flow_real *a, double *logabs, int *sign);
    int (*matinv)(size_t d, flow_real *a);

    /* 1.1 (test FLOW_HOST_HAS(h, net_div_backward)).  Divergence of
     * an MLP for continuous flows: y = net(x, t) and per row tr[r] = the
     * trace of J = dy/dx[:, :out] (the square block of the first `out`
     * inputs) when eps is NULL, or Hutchinson's e^T J e with the probes
     * eps (n x out) otherwise, in one pass with the tangents (`out` unit
     * vectors, or e) stacked under the primal rows: one GEMM per layer on
     * `out` n (or n) tangent rows instead of one JVP per tangent
     * (docs/plugins.md).  y does not depend on eps (the same bits).
     * 1.10: tr may be NULL: y alone (the same bits), no tangent rows, and
     * a tape that net_div_backward refuses; for a layer skipping its
     * log-det (flow_call_skip_logdet, which only a 1.10 host sets).
     * Supported: FLOW_NET_MLP without context inputs or spectral norm,
     * out <= in; otherwise net_div_workspace returns 0 and the calls
     * FLOW_ERR_UNSUPPORTED.  net_div_workspace: bytes of the tape for n
     * rows (returned; written by the forward, read unchanged by the
     * backward, so tapes may be kept) and of the scratch (*scratch_bytes;
     * free between calls), both to be 64-byte aligned.  net_div_backward:
     * after net_div_forward on the same tape with the same eps, given
     * dL/dy (n x out) and dL/dtr (n), either may be NULL (= 0): dx (n x
     * in) written when not NULL, dparams accumulated when not NULL. */
    size_t (*net_div_workspace)(const flow_net *net, size_t n,
                                size_t *scratch_bytes);
    int (*net_div_forward)(const flow_net *net, const flow_real *params,
                           size_t n, const flow_real *x, double t,
                           const flow_real *eps, flow_real *y, flow_real *tr,
                           void *tape, void *scratch);
    int (*net_div_backward)(const flow_net *net, const flow_real *params,
                            size_t n, const void *tape, void *scratch,
                            const flow_real *eps, const flow_real *dy,
                            const flow_real *dtr, flow_real *dx,
                            flow_real *dparams);
    /* 1.2 (test FLOW_HOST_HAS before use).
     * MADE sampling by degree (docs/plugins.md, "Autoregressive layers"):
     * step s = 0..D-1 writes theta (n x out) of the dimension generated
     * s-th (order[i] = s) for n rows, computing only the hidden units of
     * degree s, which become final once the dimensions of degree <= s are
     * known, and only that dimension's out outputs; over the D steps every
     * unit is computed once (about half a dense forward pass).  x_prev (n
     * values) is the dimension generated at step s-1 (ignored at s = 0).
     * State lives in ws (net_workspace(net, n) bytes) between the steps,
     * which must come in order 0, 1, ... with the same n, params and ctx;
     * afterwards ws holds no tape (run net_forward before net_backward).
     * Reads only unmasked weights, so premasked does not matter.
     * FLOW_ERR_UNSUPPORTED for an MLP, spectral_norm or time input. */
    int (*net_made_step)(const flow_net *net, const flow_real *params,
                         size_t n, const flow_real *ctx, size_t step,
                         const flow_real *x_prev, flow_real *theta,
                         void *ws);
    /* MADE: 1 when a masked weight of params is not 0, else 0; with dst
     * (net_params(net) values, may alias params) it also receives params
     * with the masked weights set to 0.  For premasked nets: run it once
     * per batch (a layer's prepare) on parameters that may come from
     * elsewhere.  0 for an MLP (nothing is masked). */
    int (*net_mask_params)(const flow_net *net, const flow_real *params,
                           flow_real *dst);
    /* 1.3 (test FLOW_HOST_HAS before use).
     * A premasked MADE without time input evaluated with its units sorted
     * by degree, where every masked weight lies past a prefix of its row:
     * each block of rows is one GEMM over its prefix, the masked zeros
     * skipped (about 55-60% of the dense multiply-adds for wide hidden
     * layers; docs/plugins.md, "Autoregressive layers").
     * net_made_sorted_count: flow_reals of the sorted weights, 0 when the
     * net is not supported (MLP, not premasked, time input, spectral
     * norm; then the other entries return FLOW_ERR_UNSUPPORTED).
     * net_made_sort: sorted (that many values) from params, the mask
     * applied (params' masked weights may hold anything); run it whenever
     * params change (a layer's prepare).  Since 1.11 sorted refers to
     * params where they are in degree order already (the hidden layers:
     * no copy), so params must stay in place and unchanged until the
     * next net_made_sort.  net_made_forward: y as
     * net_forward on those params (the same sums up to the order of the
     * additions), leaving a tape in ws (net_workspace bytes) that only
     * net_made_backward reads.  net_made_backward: as net_backward, except
     * that dparams (when not NULL) accumulates the parameter gradient in
     * the sorted layout, which net_made_grad maps in place to the
     * parameters' layout (masked weights 0), using the end of sorted as
     * scratch (the weights are left as they are): once per batch, after
     * the threads' gradients were summed (a layer's finish_grad). */
    size_t (*net_made_sorted_count)(const flow_net *net);
    int (*net_made_sort)(const flow_net *net, const flow_real *params,
                         flow_real *sorted);
    int (*net_made_forward)(const flow_net *net, const flow_real *sorted,
                            size_t n, const flow_real *x,
                            const flow_real *ctx, flow_real *y, void *ws);
    int (*net_made_backward)(const flow_net *net, const flow_real *sorted,
                             size_t n, void *ws, const flow_real *dy,
                             flow_real *dx, flow_real *dctx,
                             flow_real *dparams);
    int (*net_made_grad)(const flow_net *net, flow_real *grad,
                         flow_real *sorted);
    /* net_made_step on the sorted weights of net_made_sort (the same
     * results, without sorting the weights again in every sampling call);
     * FLOW_ERR_UNSUPPORTED where net_made_sorted_count is 0. */
    int (*net_made_step_sorted)(const flow_net *net, const flow_real *sorted,
                                size_t n, const flow_real *ctx, size_t step,
                                const flow_real *x_prev, flow_real *theta,
                                void *ws);
    /* 1.6 (test FLOW_HOST_HAS before use): portable export
     * (docs/export.md).  net_export writes the network's affine maps as
     * tensors PREFIX.{k}.weight [out, in] and PREFIX.{k}.bias [out], the
     * weights as used (a MADE's masked entries 0, spectrally normalised
     * ones rescaled), plus PREFIX.{k}.mask (U8, MADE) and the time terms
     * of ODE nets, and the attribute PREFIX: a JSON object with kind,
     * activation, widths, context and output_layout (a text saying which
     * output column is which transformer parameter of which dimension;
     * may be NULL).  tf_export writes the attribute `key` describing the
     * transformer (kind, parameters per scalar, spline bins, bound and
     * floors, and how raw values become scales, widths, heights and
     * derivatives). */
    int (*net_export)(const flow_net *net, const flow_real *params,
                      const char *prefix, const char *output_layout,
                      flow_export *ex);
    int (*tf_export)(const flow_tf *tf, const char *key, flow_export *ex);
    /* 1.11 (test FLOW_HOST_HAS before use).  MADE: the hidden units are
     * stored sorted by degree; checkpoints of format 2 and older stored
     * them in the masks' cyclic order.  Converts a vector in that older
     * layout (net_params(net) values) in place; the network's function
     * is the same (the units relabelled).  FLOW_OK and nothing done for
     * an MLP. */
    int (*net_made_from_cyclic)(const flow_net *net, flow_real *params);
    /* 1.12 (test FLOW_HOST_HAS before use).  The parameters whose
     * gradient net_backward / net_made_backward may write and
     * net_made_grad may leave non-zero, as runs (offset, length) relative
     * to the net's parameters, increasing, disjoint and merged where
     * adjacent: a layer's grad_support for its network (flow_layer_type).
     * A MADE in degree order (net_made_sorted_count > 0): a layer whose
     * rows and columns in degree order are the parameters' (the hidden
     * layers past the first always; the first without context and the
     * output layer when the inputs' order is the natural one) gives each
     * weight row the prefix its block's product writes, the weights past
     * it being masked; any other layer its whole weight matrix; biases
     * whole.  Any other
     * net (an MLP, a MADE with time input): one run of all its
     * parameters.  Returns the number of runs, writes at most cap. */
    size_t (*net_made_grad_support)(const flow_net *net, size_t *runs,
                                    size_t cap);
};

#define FLOW_HOST_HAS(h, field) \
    ((h)->struct_size >= offsetof(flow_host, field) + sizeof((h)->field))

/* ---------------------------------------------------------------------
 * Helpers for plugin authors: static inline, so a plugin still links
 * against nothing (a header-only convenience, not part of the ABI; the
 * host never calls them).  docs/plugins.md, "Writing a plugin", shows
 * them at work; examples/plugin and examples/conditional use them.
 * ------------------------------------------------------------------- */

#if defined(__GNUC__)
# define FLOW_PLUGIN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
# define FLOW_PLUGIN_PRINTF(f, a)
#endif

/* The first fields of a flow_layer_type, as designated initialisers (the
 * rest follow by name):
 *
 *     static const flow_layer_type mine_type = {
 *         FLOW_LAYER_TYPE_HEAD("mine", "one line for `flowkit plugins`",
 *                              mine_attrs),
 *         .describe = mine_describe, ...};
 */
#define FLOW_LAYER_TYPE_HEAD(NAME, SUMMARY, ATTRS) \
    .struct_size = (uint32_t)sizeof(flow_layer_type), .name = (NAME), \
    .summary = (SUMMARY), .attrs = (ATTRS)

/* The four direction flags of a layer that provides forward, inverse and
 * the VJPs of both. */
#define FLOW_LAYER_ALL_DIRECTIONS \
    (FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE | FLOW_LAYER_BACKWARD_FORWARD \
     | FLOW_LAYER_BACKWARD_INVERSE)

/* Formats diag->message, sets diag->attr (an attribute index, -1 for the
 * layer as a whole) and returns FLOW_ERR_INVAL, for describe() and
 * create():  `return flow_diag_set(diag, ATTR_MASK, "mask has %zu
 * entries, want %zu", n, d);`. */
static inline int flow_diag_set(flow_diag *diag, int attr, const char *fmt,
                                ...) FLOW_PLUGIN_PRINTF(3, 4);
static inline int flow_diag_set(flow_diag *diag, int attr, const char *fmt,
                                ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(diag->message, sizeof diag->message, fmt, ap);
    va_end(ap);
    diag->attr = attr;
    return FLOW_ERR_INVAL;
}

/* describe()'s usual declaration: forward, inverse and both VJPs
 * provided (FLOW_LAYER_ALL_DIRECTIONS), an exact log-det, the structure
 * (jac, dep, cert and its static text) and the same cost in both
 * directions.  Fields the host set (struct_size, dep_vec, tensors) are
 * left alone; set dep_vec, extra flags, the 1.5 fields (after checking
 * out->struct_size) or an asymmetric cost after the call.  Returns
 * FLOW_OK, so describe() may end with `return flow_desc_fill(...)`. */
static inline int flow_desc_fill(flow_layer_desc *out, size_t n_params,
                                 flow_jac_class jac, flow_dep_kind dep,
                                 flow_cert_kind cert, const char *cert_text,
                                 flow_cost cost)
{
    out->flags = FLOW_LAYER_ALL_DIRECTIONS;
    out->n_params = n_params;
    out->jac = jac;
    out->dep = dep;
    out->cert = cert;
    out->cert_text = cert_text;
    out->cost_forward = cost;
    out->cost_inverse = cost;
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* describe()'s check and count for a layer with a host network: the
 * host must have networks (FLOW_HOST_HAS); the network is built from
 * spec, *n_params set to its parameter count, and destroyed again
 * (describe() must leave nothing behind).  FLOW_OK, or an error status
 * with diag->message set (attr -1; set diag->attr after the call to blame
 * one attribute, e.g. the hidden widths). */
static inline int flow_net_count(const flow_host *h, const flow_net_spec *spec,
                                 size_t *n_params, flow_diag *diag)
{
    flow_net *net;
    if (!h || !FLOW_HOST_HAS(h, net_create) || !h->net_create) {
        flow_diag_set(diag, -1, "this host provides no networks (flowkit "
                      "too old for this plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    net = h->net_create(spec, diag->message, sizeof diag->message);
    if (!net) {
        diag->attr = -1;
        return FLOW_ERR_INVAL;
    }
    *n_params = h->net_params(net);
    h->net_destroy(net);
    return FLOW_OK;
}

/* An instance of `size` bytes from host->calloc whose FIRST MEMBER is
 * `const flow_host *host`: a copy of *image when image is not NULL (build
 * the instance on the stack, then copy it), zeros otherwise, with the
 * host member set either way.  NULL with "out of memory" in diag when the
 * allocation fails, so create() can return what this returns:
 *
 *     typedef struct mine { const flow_host *host; double a; } mine;
 *     mine m = {host, cfg->attrs[ATTR_A].r};
 *     return flow_instance_new(host, sizeof m, &m, diag);
 *
 * Members that own memory are allocated after it and freed by a
 * destroy() that ends with flow_instance_free. */
static inline void *flow_instance_new(const flow_host *host, size_t size,
                                      const void *image, flow_diag *diag)
{
    unsigned char *p;
    if (size < sizeof(const flow_host *)) {
        flow_diag_set(diag, -1, "instance of %zu bytes: too small for its "
                      "first member, the host pointer", size);
        return NULL;
    }
    p = (unsigned char *)host->calloc(1, size);
    if (!p) {
        flow_diag_set(diag, -1, "out of memory (%zu bytes for the layer's "
                      "instance)", size);
        return NULL;
    }
    if (image)
        for (size_t i = 0; i < size; i++)
            p[i] = ((const unsigned char *)image)[i];
    *(const flow_host **)(void *)p = host;
    return p;
}

/* Frees an instance from flow_instance_new (NULL is ignored): usable
 * directly as flow_layer_type.destroy when the instance owns nothing
 * else. */
static inline void flow_instance_free(void *self)
{
    if (self)
        (*(const flow_host *const *)self)->free(self);
}

/* Workspace carving.  One function of the layer lays out its workspace
 * and serves both workspace() (sizing) and forward/inverse/backward
 * (splitting), so the two can never disagree:
 *
 *     static size_t carve(const mine *s, size_t n, void *ws, mine_ws *w)
 *     {
 *         flow_carve c = flow_carve_start(ws);
 *         w->theta = flow_carve_reals(&c, n * s->d * 2);
 *         w->tape = flow_carve_take(&c, s->host->net_workspace(s->net, n));
 *         return flow_carve_bytes(&c);
 *     }
 *     workspace():  mine_ws w;  return carve(self, n, NULL, &w);
 *     forward():    mine_ws w;  carve(self, c->n, c->ws, &w);
 *
 * With ws NULL nothing is written and every piece is NULL: the carve only
 * counts.  Each piece starts 64-byte aligned (the host's workspace is),
 * and the same sizes give the same offsets in every call.  The total ends
 * where the last piece ends (not rounded up), so valgrind and ASan see a
 * write past it.  A size whose bytes overflow size_t makes
 * flow_carve_bytes SIZE_MAX, which the host fails to allocate (an error,
 * never a short workspace). */
typedef struct flow_carve {
    unsigned char *base;          /* the workspace; NULL: count only        */
    size_t next;                  /* offset of the next piece, a multiple
                                     of 64; SIZE_MAX after an overflow     */
    size_t end;                   /* end of the last piece                  */
} flow_carve;

static inline flow_carve flow_carve_start(void *ws)
{
    flow_carve c;
    c.base = (unsigned char *)ws;
    c.next = 0;
    c.end = 0;
    return c;
}

/* The next piece of `bytes` bytes. */
static inline void *flow_carve_take(flow_carve *c, size_t bytes)
{
    void *p;
    if (c->next == SIZE_MAX || bytes > SIZE_MAX - 63
        || ((bytes + 63) & ~(size_t)63) > SIZE_MAX - c->next) {
        c->next = c->end = SIZE_MAX;
        return NULL;
    }
    p = c->base ? c->base + c->next : NULL;
    c->end = c->next + bytes;
    c->next += (bytes + 63) & ~(size_t)63;
    return p;
}

/* The next piece of `count` flow_reals. */
static inline flow_real *flow_carve_reals(flow_carve *c, size_t count)
{
    if (count > SIZE_MAX / sizeof(flow_real)) {
        c->next = c->end = SIZE_MAX;
        return NULL;
    }
    return (flow_real *)flow_carve_take(c, count * sizeof(flow_real));
}

/* Bytes of every piece taken so far: what workspace() returns. */
static inline size_t flow_carve_bytes(const flow_carve *c)
{
    return c->end;
}

#ifdef __cplusplus
}
#endif
#endif /* FLOW_PLUGIN_H */
