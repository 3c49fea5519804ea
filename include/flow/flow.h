/* flow.h - the flowkit runtime API, one group per object: context, model,
 * training, data sets, checkpoints, targets, variational fits (docs/api.md). */
#ifndef FLOW_H
#define FLOW_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "flow/flow_version.h"
#include "flow/flow_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
# define FLOW_API __attribute__((visibility("default")))
#else
# define FLOW_API
#endif

/* The objects, in the order of the groups below (opaque handles): */
typedef struct flow_ctx flow_ctx;               /* plugins, errors         */
typedef struct flow_model flow_model;           /* a flow                  */
typedef struct flow_trainer flow_trainer;       /* optimiser of a model    */
typedef struct flow_data flow_data;             /* rows of a data set      */
typedef struct flow_output flow_output;         /* an output file          */
typedef struct flow_checkpoint flow_checkpoint; /* a saved model           */
typedef struct flow_target flow_target;         /* a density to fit        */

/* ====================================================================
 * Context: version, context, errors, plugin registry.
 *
 * A context owns the loaded plugins (their code and descriptors), the
 * plugin search directories and the message of the last failed call.
 * Every object made on a context (model, trainer, target, checkpoint)
 * runs plugin code loaded into it and leaves its messages there, so the
 * context must outlive them.
 * Threads: a context and everything made on it are used by one thread at
 * a time (passing them to another thread between calls is fine).
 * Separate contexts share nothing mutable (library-wide tables are set
 * up once, under pthread_once): threads may each work with their own.
 * The version calls and flow_host_services may be called from any thread.
 * ==================================================================== */

/* --- version ------------------------------------------------------- */

/* Version of the library actually linked (compare FLOW_VERSION_STRING).
 * Static string, not to be freed. */
FLOW_API const char *flow_version(void);
FLOW_API int flow_version_number(void);
/* "float32" or "float64": the precision the library computes in. */
FLOW_API const char *flow_precision(void);

/* --- context and errors -------------------------------------------- */

/* New context, or NULL when out of memory.  Free with flow_ctx_free. */
FLOW_API flow_ctx *flow_ctx_new(void);
FLOW_API void flow_ctx_free(flow_ctx *ctx);

/* Calls return a status (flow_status in flow_plugin.h: FLOW_OK or a
 * FLOW_ERR_* code); this is the message of the last failed call on ctx
 * ("" if none).  Owned by ctx, valid until the next call on ctx. */
FLOW_API const char *flow_errmsg(const flow_ctx *ctx);

/* Sets ctx's message (printf-style) and returns `code`: for libraries and
 * programs layered on flowkit that report through the same context. */
FLOW_API int flow_ctx_error(flow_ctx *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* --- plugin registry ----------------------------------------------- */

/* Directories searched for plugins, in order: the entries of
 * FLOW_PLUGIN_PATH (colon-separated, empty entries ignored: the current
 * directory is never searched implicitly), then the installed plugin
 * directory.  Returns the number of directories; *dirs is owned by ctx. */
FLOW_API size_t flow_plugin_dirs(flow_ctx *ctx, const char *const **dirs);

/* Load one plugin.  `name` is a path when it contains '/', otherwise a
 * plugin name looked up as NAME.so in the search directories.  Loading the
 * same file twice is a no-op.  Returns FLOW_OK or an error code with the
 * message in flow_errmsg(ctx), naming the file. */
FLOW_API int flow_plugin_load(flow_ctx *ctx, const char *name);

/* Load every *.so in the search directories (a file name found in an
 * earlier directory hides the same name in later ones).  Stops at the
 * first plugin that fails to load and reports it. */
FLOW_API int flow_plugin_load_all(flow_ctx *ctx);

/* Load plugins only as flow_layer_type_find / flow_target_type_find ask
 * for their types: a type not loaded yet comes from the first NAME.so
 * along the search path, or failing that from loading every file there
 * (past files that fail; the first failure stays in flow_errmsg while the
 * type is not found).  A plugin that no spec of the process uses is never
 * loaded, so a broken or crashing one harms only the specs that need it.
 * A fatal signal while a plugin loads names its file on stderr.  Returns
 * FLOW_OK or FLOW_ERR_NOMEM. */
FLOW_API int flow_plugin_load_on_demand(flow_ctx *ctx);

/* Loaded plugins, in load order.  Returned pointers are owned by ctx. */
FLOW_API size_t flow_plugin_count(const flow_ctx *ctx);
FLOW_API const flow_plugin_info *flow_plugin_get(const flow_ctx *ctx,
                                                 size_t i);
FLOW_API const char *flow_plugin_file(const flow_ctx *ctx, size_t i);

/* Layer type by name among the loaded plugins, or NULL.  When file is not
 * NULL it receives the path of the providing plugin (owned by ctx). */
FLOW_API const flow_layer_type *flow_layer_type_find(const flow_ctx *ctx,
                                                     const char *name,
                                                     const char **file);
/* Target type (variational fits) by name, or NULL. */
FLOW_API const flow_target_type *flow_target_type_find(const flow_ctx *ctx,
                                                       const char *name,
                                                       const char **file);

/* The host-services table handed to plugins by this runtime.  Static. */
FLOW_API const flow_host *flow_host_services(void);

/* ====================================================================
 * Model: building, queries, execution.
 *
 * A model is built by calls, in forward (data -> latent) order: the
 * compiler makes them in process, and `flowc --emit=c` writes them out.
 * The model keeps one flat parameter vector (layer slices in order, then
 * base distributions' parameters), one flat buffer vector (non-trainable
 * state), and a random stream.
 *
 * Ownership: made on a context, which must outlive it; owned by the
 * caller (flow_model_free), it owns its parameters, buffers, layer
 * instances and worker threads.  Pointers it hands out are valid until
 * it is freed.
 * Threads: a model is used by one thread at a time, with its context.
 * Its own worker threads are internal (flow_model_set_threads):
 * a call splits its rows among them in fixed chunks and returns when all
 * are done, so the bits do not depend on timing.
 * ==================================================================== */

/* --- building ------------------------------------------------------ */

/* Base distributions of the final output and of exits. */
typedef enum flow_base_kind {
    FLOW_BASE_NORMAL = 1,      /* standard normal, no parameters           */
    FLOW_BASE_DIAG_NORMAL = 2, /* learnable mean and log-std per dimension */
    FLOW_BASE_LOGISTIC = 3,    /* standard logistic per dimension           */
    FLOW_BASE_GMM = 4          /* learnable diagonal Gaussian mixture;
                                  args[0] = number of components            */
} flow_base_kind;

/* New empty model on `ctx` (which must outlive it) for inputs of `dim`
 * dimensions and `context_dim` context dimensions (0: unconditional).
 * NULL on failure (message in ctx).  Free with flow_model_free. */
FLOW_API flow_model *flow_model_new(flow_ctx *ctx, size_t dim,
                                    size_t context_dim);
FLOW_API void flow_model_free(flow_model *m);

/* Declares the shape of the model's input, before any layer or exit is
 * added: rank 1 is [D] (the default), rank 3 [C, H, W] (an image, stored
 * flat in C order: value (c, h, w) at c*H*W + h*W + w), with rank entries
 * of shape whose product must be the model's dimension.  Every layer is
 * then described with the shape of the state it receives (the layers'
 * flow_layer_config.rank and .shape, plugin ABI 1.7), a layer may change
 * the shape (squeeze), and an exit from an image takes whole channels (k
 * a multiple of H*W).  FLOW_ERR_INVAL otherwise. */
FLOW_API int flow_model_set_input_shape(flow_model *m, size_t rank,
                                        const size_t *shape);
/* The input's shape into shape[0..rank-1] (the rest 0); returns the rank:
 * 1 ([D]) unless flow_model_set_input_shape said otherwise. */
FLOW_API size_t flow_model_input_shape(const flow_model *m, size_t shape[4]);

/* A layer to append (flow_model_add).  Set struct_size to
 * sizeof(flow_layer_args) and leave what you do not use zero:
 *     flow_layer_args a = { .struct_size = sizeof a, .type = "actnorm",
 *                           .attrs = v, .n_attrs = 1 };
 * Fields are only ever appended.  A struct_size that ends before a field
 * after `given` gives that field its default (NULL or 0); one that does
 * not cover `given` is refused (FLOW_ERR_INVAL). */
typedef struct flow_layer_args {
    uint32_t struct_size;       /* sizeof(flow_layer_args)                 */
    const char *type;           /* a loaded layer type                     */
    const char *label;          /* names the layer in messages (copied);
                                   NULL: the type and the layer's index    */
    const flow_attr_value *attrs; /* one resolved value per attribute of
                                   the type, in its table order (as the
                                   compiler produces them); deep-copied    */
    size_t n_attrs;
    int given;                  /* 1: the model's context feeds the layer  */
    /* Optional: the layer's statement in its spec, so that its runtime
     * errors read "label (file:line:col, plugin): ..." and name the file
     * an imported block came from. */
    const char *file;           /* spec file (copied); NULL if none        */
    int line, col;              /* spec position; 0 if none                */
} flow_layer_args;

/* Appends a layer of a loaded type.  The layer's describe() runs here: a
 * failure returns its message. */
FLOW_API int flow_model_add(flow_model *m, const flow_layer_args *layer);
/* flow_model_add with each field as an argument: no file (add_layer) or
 * with it (add_layer_at). */
FLOW_API int flow_model_add_layer(flow_model *m, const char *type,
                                  const char *label,
                                  const flow_attr_value *attrs,
                                  size_t n_attrs, int given, int line,
                                  int col);
FLOW_API int flow_model_add_layer_at(flow_model *m, const char *type,
                                     const char *label,
                                     const flow_attr_value *attrs,
                                     size_t n_attrs, int given,
                                     const char *file, int line, int col);
/* Factors the first k dimensions of the current state out to their own
 * base distribution; the rest flow on. */
FLOW_API int flow_model_add_exit(flow_model *m, size_t k, const char *name,
                                 flow_base_kind base, const double *args,
                                 size_t n_args);
/* Base distribution of the final output (default: standard normal). */
FLOW_API int flow_model_set_base(flow_model *m, flow_base_kind base,
                                 const double *args, size_t n_args);
/* Creates the layer instances, allocates parameters and initialises them
 * from `seed`.  No layer may be added afterwards. */
FLOW_API int flow_model_finish(flow_model *m, uint64_t seed);

/* --- queries ------------------------------------------------------- */

FLOW_API size_t flow_model_dim(const flow_model *m);
FLOW_API size_t flow_model_context_dim(const flow_model *m);
FLOW_API size_t flow_model_num_layers(const flow_model *m);
/* Parameters (flat; owned by the model, valid until it is freed). */
FLOW_API size_t flow_model_num_params(const flow_model *m);
FLOW_API flow_real *flow_model_params(flow_model *m);
FLOW_API size_t flow_model_num_buffers(const flow_model *m);
FLOW_API flow_real *flow_model_buffers(flow_model *m);

/* A layer's counter (flow_layer_type.stat), e.g. "nfe" of an `ode` layer:
 * dynamics evaluations of the current batch (reset before each forward
 * batch; its forward and backward passes both count).  Layer i is the
 * i-th of flow_model_num_layers.  1 with *name and *value set when the
 * layer has one, 0 otherwise (exits, layers without a counter). */
FLOW_API int flow_model_layer_stat(const flow_model *m, size_t i,
                                   const char **name, double *value);
/* The "nfe" counters of all layers summed (function evaluations of ODE
 * layers in the last batch: a training step counts its forward and its
 * backward); -1 when no layer counts them. */
FLOW_API double flow_model_nfe(const flow_model *m);

/* --- execution ----------------------------------------------------- */

/* Training mode (batch statistics, stochastic estimators) or evaluation
 * mode (the default). */
FLOW_API void flow_model_set_training(flow_model *m, int training);

/* Density direction on n rows: z (n x dim, exits first in the order they
 * were added, then the final output) and logdet[r] = sum of the layers'
 * log|det J|. `c` is n x context_dim or NULL. */
FLOW_API int flow_model_forward(flow_model *m, size_t n, const flow_real *x,
                                const flow_real *c, flow_real *z,
                                flow_real *logdet);
/* Sampling direction: x = f^-1(z), logdet[r] = log|det df^-1/dz|. */
FLOW_API int flow_model_inverse(flow_model *m, size_t n, const flow_real *z,
                                const flow_real *c, flow_real *x,
                                flow_real *logdet);
/* logp[r] = log p(x_r | c_r) in nats. */
FLOW_API int flow_model_log_prob(flow_model *m, size_t n, const flow_real *x,
                                 const flow_real *c, flow_real *logp);
/* n samples drawn with the model's random stream; logp (may be NULL)
 * receives each sample's log-density. */
FLOW_API int flow_model_sample(flow_model *m, size_t n, const flow_real *c,
                               flow_real *x, flow_real *logp);
/* flow_model_sample at a temperature T (finite, > 0; else FLOW_ERR_INVAL):
 * every base (the output's and each exit's) draws with its spread scaled
 * by T about its center (a normal N(0, T^2 I), as Glow samples, Kingma &
 * Dhariwal 2018, sec. 5; a diagonal normal mu + sigma T eps; the logistic
 * T times its draw; a mixture each component's, weights unchanged).  logp
 * is the model's own log-density of each sample (that of T = 1), not the
 * tempered sampler's.  T = 1 gives the bits of flow_model_sample. */
FLOW_API int flow_model_sample_tempered(flow_model *m, size_t n,
                                        double temperature,
                                        const flow_real *c, flow_real *x,
                                        flow_real *logp);
/* Mean log-likelihood of the n rows and its gradient with respect to the
 * parameters (grad: num_params entries, overwritten). */
FLOW_API int flow_model_loglik_grad(flow_model *m, size_t n,
                                    const flow_real *x, const flow_real *c,
                                    double *mean_logp, flow_real *grad);
/* Backward of the sampling direction: runs x = f^-1(z) on n rows and,
 * for L = sum(dx * x) + sum(dlogdet * logdet_inverse) (dlogdet may be
 * NULL), writes dL/dparams into grad (num_params) and, when dz is not
 * NULL, dL/dz (n x dim, exits' columns first).  Base parameters get no
 * gradient here (z is given).  For reverse-KL fits and flows trained
 * through their samples. */
FLOW_API int flow_model_inverse_grad(flow_model *m, size_t n,
                                     const flow_real *z, const flow_real *c,
                                     const flow_real *dx,
                                     const flow_real *dlogdet,
                                     flow_real *grad, flow_real *dz);
/* Data-dependent initialisation of the layers that have one (actnorm),
 * run on a batch before training; layers already initialised (e.g. from
 * a checkpoint) are left alone. */
FLOW_API int flow_model_data_init(flow_model *m, size_t n, const flow_real *x,
                                  const flow_real *c);
/* Splits every batch into `threads` fixed row chunks run in parallel
 * (layers declaring FLOW_LAYER_WHOLE_BATCH excepted); OpenBLAS itself stays
 * single-threaded (docs/runtime.md).  The same seed and thread count give
 * the same bits.  After flow_model_finish; default 1. */
FLOW_API int flow_model_set_threads(flow_model *m, size_t threads);
/* The precision of the conditioner networks' matrix products (MLP and
 * MADE weights against their inputs, forward and backward): */
typedef enum flow_gemm_precision {
    FLOW_PRECISION_FP32 = 0,     /* float products and sums (the default) */
    FLOW_PRECISION_BF16_GEMM = 1 /* operands rounded to bf16, products
                                    summed in float (AVX512-BF16 CPUs,
                                    float build; docs/runtime.md) */
} flow_gemm_precision;
/* Sets it for every later call on the model (the weights, gradients and
 * checkpoints stay float).  FLOW_ERR_UNSUPPORTED with "bf16-gemm needs a
 * CPU with AVX512-BF16 (this one has not)" or "bf16-gemm needs the float
 * build" where it cannot run; FLOW_ERR_INVAL for an unknown value. */
FLOW_API int flow_model_set_precision(flow_model *m, int precision);
/* The model's flow_gemm_precision (FLOW_PRECISION_FP32 unless set). */
FLOW_API int flow_model_get_precision(const flow_model *m);
/* Reseeds the model's random stream. */
FLOW_API void flow_model_seed(flow_model *m, uint64_t seed);

/* The model's random stream as 6 words (for checkpoints): state, then the
 * cached normal deviate. */
FLOW_API void flow_model_get_rng(const flow_model *m, uint64_t out[6]);
FLOW_API void flow_model_set_rng(flow_model *m, const uint64_t in[6]);

/* n latents z (n x dim, exits' columns first) drawn from the bases with
 * the model's random stream; logp_base (may be NULL) = log p_base(z). */
FLOW_API int flow_model_sample_latent(flow_model *m, size_t n, flow_real *z,
                                      flow_real *logp_base);
/* Mean log-likelihood of n rows and its standard error, in evaluation
 * mode. */
FLOW_API int flow_model_evaluate(flow_model *m, size_t n, const flow_real *x,
                                 const flow_real *c, size_t batch,
                                 double *mean, double *std_err);

/* --- verifying layers ---------------------------------------------- */

/* Which layers flow_model_verify_layers probes. */
typedef enum flow_verify_scope {
    FLOW_VERIFY_THIRD_PARTY = 0, /* layers of plugins loaded from anywhere
                                    but flowkit's own plugin directory
                                    (FLOW_PLUGIN_PATH entries, files given
                                    by path)                               */
    FLOW_VERIFY_ALL = 1          /* every layer                            */
} flow_verify_scope;

/* One line about one layer (what was probed, what was skipped and why),
 * for a verbose log; `line` has no newline and is valid during the call. */
typedef void (*flow_verify_note_fn)(void *arg, const char *line);

/* Probes the layers in `scope` on the first min(n, 8) rows of x (c: their
 * context or NULL), each layer on its own input as the model computes it
 * there, in evaluation mode: the round trip x -> z -> x and the
 * forward + inverse log-dets (layers with an inverse), and each row's
 * log-det against log|det| of a finite-difference Jacobian, computed in
 * double (at most 4 rows; skipped for estimated log-dets and for layers
 * wider than 64 dimensions), with the tolerances of `flowkit check`
 * (docs/plugins.md).  The model is left as it was: parameters, buffers,
 * random stream and mode.  *n_probed (may be NULL) = layers probed.
 * Returns FLOW_OK when every probed layer passes (at once when none is in
 * scope); FLOW_ERR_NUMERIC when one fails, the message naming the layer,
 * its plugin file, the row and both values; another code when the model
 * itself fails on the rows. */
FLOW_API int flow_model_verify_layers(flow_model *m, size_t n,
                                      const flow_real *x, const flow_real *c,
                                      flow_verify_scope scope,
                                      flow_verify_note_fn note, void *arg,
                                      size_t *n_probed);

/* --- portable export ----------------------------------------------- */

/* Writes the model's weights to `path` as a plain safetensors file that
 * any safetensors reader loads (docs/export.md): one named tensor per
 * weight ("layers.3.net.0.weight"), every derived constant a port needs
 * (MADE masks, permutations, spline bounds, ...) and the metadata
 * "architecture" (JSON) and "spec" (spec_source, may be NULL), written
 * atomically (nothing is left under path on failure).  A layer whose type
 * has no export hook (flow_layer_type.export_tensors) gets its flat
 * parameters only, is marked "portable": false, and warn (may be NULL)
 * receives a line naming it.  Duplicate tensor names are refused, the
 * message naming the layer. */
FLOW_API int flow_model_export(flow_model *m, const char *spec_source,
                               const char *path, flow_verify_note_fn warn,
                               void *arg);

/* ====================================================================
 * Training: configuration, trainer, resumable state.
 *
 * Maximum likelihood with Adam (Kingma & Ba 2015, Algorithm 1; weight
 * decay as an L2 term added to the gradient, as torch.optim.Adam does),
 * shuffled mini-batches from a seeded stream, learning-rate schedules,
 * clipping by global norm, validation with early stopping; or the ELBO
 * against a target (flow_train_config.target).
 *
 * Ownership: a trainer is owned by the caller (flow_trainer_free).  It
 * borrows its model and its data or target, which must outlive it, and
 * owns the optimiser state (Adam moments, best parameters, shuffle
 * stream).
 * Threads: each step runs and updates its model, so a trainer is used
 * by one thread at a time, with its model and their context.
 * ==================================================================== */

/* --- configuration ------------------------------------------------- */

typedef enum flow_lr_schedule {
    FLOW_LR_CONSTANT = 0,
    FLOW_LR_COSINE = 1          /* lr * (1 + cos(pi t / T)) / 2 over the
                                   total steps T (Loshchilov & Hutter 2017) */
} flow_lr_schedule;

/* Fill it with flow_train_config_default, then change what you need.
 * Fields are only ever appended.  A struct_size that ends before a field
 * after max_skipped gives that field its default; one that does not cover
 * max_skipped is refused (FLOW_ERR_INVAL). */
typedef struct flow_train_config {
    uint32_t struct_size;       /* sizeof(flow_train_config)               */
    size_t batch;               /* rows per step (default 512)             */
    double lr;                  /* learning rate (default 1e-3)            */
    double beta1, beta2;        /* Adam (0.9, 0.999)                       */
    double adam_eps;            /* Adam epsilon (1e-8)                     */
    double weight_decay;        /* L2 coefficient (0)                      */
    flow_lr_schedule schedule;  /* default constant                        */
    size_t warmup_steps;        /* linear warm-up from 0 (default 0)       */
    size_t total_steps;         /* horizon of the cosine schedule          */
    double clip_norm;           /* clip the global gradient norm (0 = off) */
    size_t patience;            /* validations without improvement before
                                   should_stop says so (0 = never)         */
    uint64_t seed;              /* shuffling stream (default 0)            */
    size_t max_skipped;         /* non-finite steps in a row before the
                                   trainer gives up (default 10)           */
    /* Optional (see struct_size above). */
    size_t anneal_steps;        /* target fits: log p~ enters the objective
                                   scaled by beta = min(1, 0.01 + t / this)
                                   at step t (Rezende & Mohamed 2015, sec.
                                   6.2); 0 = off (default)                 */
    flow_target *target;        /* NULL (default): maximum likelihood on
                                   the data given to flow_trainer_new;
                                   else the ELBO against this target
                                   (borrowed; must outlive the trainer),
                                   and no data                             */
} flow_train_config;

/* Fills the defaults above. */
FLOW_API void flow_train_config_default(flow_train_config *cfg);

/* --- trainer ------------------------------------------------------- */

/* A trainer for model m.  Without cfg->target: maximum likelihood on n
 * rows x (n x dim) with context c (n x context_dim or NULL); the data are
 * borrowed and must outlive it.  With cfg->target: the ELBO against it,
 * cfg->batch samples per step, with the same Adam, schedules, clipping
 * and non-finite step skipping; x and c must then be NULL and n 0, and
 * flow_trainer_step's *loss is the negative ELBO of the step's samples.
 * Either way a step runs its batch in blocks (the target is called once
 * per block; docs/runtime.md, "The block pass"), so that its bits do not
 * depend on the model's thread count.
 * NULL on failure (message in m's context). */
FLOW_API flow_trainer *flow_trainer_new(flow_model *m,
                                        const flow_train_config *cfg,
                                        const flow_real *x,
                                        const flow_real *c, size_t n);
/* flow_trainer_new with cfg->target = t (not NULL) and no data. */
FLOW_API flow_trainer *flow_trainer_new_target(flow_model *m,
                                               const flow_train_config *cfg,
                                               flow_target *t);
FLOW_API void flow_trainer_free(flow_trainer *t);
/* One optimisation step on the next mini-batch (a new shuffle at each
 * epoch): without a communicator the batch in blocks of half its rows,
 * rounded up to a multiple of 32, at most 128, their gradients added in
 * block order, so the bits do not depend on the model's thread count.
 * *loss = the batch's negative mean log-likelihood.  A non-finite
 * loss or gradient skips the step (counted); FLOW_ERR_NUMERIC after
 * max_skipped such steps in a row. */
FLOW_API int flow_trainer_step(flow_trainer *t, double *loss);
/* Records a validation score (higher is better): keeps a copy of the best
 * parameters and counts validations without improvement. */
FLOW_API int flow_trainer_validated(flow_trainer *t, double score);
FLOW_API int flow_trainer_should_stop(const flow_trainer *t);
/* Puts the best parameters (by validation) back into the model. */
FLOW_API int flow_trainer_restore_best(flow_trainer *t);

/* --- resumable state ----------------------------------------------- */

/* Everything needed to resume bit for bit. */
typedef struct flow_train_state {
    uint64_t step;              /* optimisation steps taken                */
    uint64_t epoch;             /* completed epochs                        */
    uint64_t pos;               /* rows of the current epoch consumed      */
    uint64_t epoch_rng[6];      /* shuffle stream at the epoch's start     */
    uint64_t skipped;           /* non-finite steps skipped in total       */
    uint64_t bad_validations;   /* validations without improvement         */
    double best_score;          /* -inf before any validation              */
    int has_best;
} flow_train_state;

FLOW_API void flow_trainer_get_state(const flow_trainer *t,
                                     flow_train_state *s);
FLOW_API int flow_trainer_set_state(flow_trainer *t,
                                    const flow_train_state *s);
/* Adam moments and best parameters (num_params each; owned by t). */
FLOW_API flow_real *flow_trainer_adam_m(flow_trainer *t);
FLOW_API flow_real *flow_trainer_adam_v(flow_trainer *t);
FLOW_API flow_real *flow_trainer_best_params(flow_trainer *t);
/* Learning rate the next step will use. */
FLOW_API double flow_trainer_lr(const flow_trainer *t);

/* --- data-parallel training (docs/distributed.md) ------------------ */

/* A communicator: the processes of one training run.  Under an MPI
 * launcher (mpirun, srun) in a build configured with MPI it spans the
 * launched processes (MPI_COMM_WORLD); otherwise it is this process
 * alone (rank 0 of 1).  Collectives return FLOW_OK or an error with the
 * message in the ctx given to flow_comm_new; a collective that fails
 * leaves the run unusable (flow_comm_abort). */
typedef struct flow_comm flow_comm;

typedef enum flow_comm_op {
    FLOW_COMM_SUM = 0,
    FLOW_COMM_MAX = 1
} flow_comm_op;

/* New communicator reporting errors to ctx (which must outlive it), or
 * NULL (message in ctx).  Initialises MPI when launched by an MPI
 * launcher and MPI is not initialised yet; FLOWKIT_MPI=0 in the
 * environment forces a single process.  One per process at a time.
 * Under MPI every collective has a timeout, FLOWKIT_MPI_TIMEOUT seconds
 * (default 600, 0: none; another value than a number from 0 to 604800
 * is an error here): a process that has waited that long in one prints
 * a message on stderr and ends all of them (MPI_Abort, status 1), from a
 * watchdog thread, since the collective cannot be cancelled. */
FLOW_API flow_comm *flow_comm_new(flow_ctx *ctx);
/* Finalises MPI when flow_comm_new initialised it, after a barrier under
 * the timeout (so every process must call it). */
FLOW_API void flow_comm_free(flow_comm *comm);
FLOW_API int flow_comm_rank(const flow_comm *comm);
FLOW_API int flow_comm_size(const flow_comm *comm);
/* "mpi" or "single" */
FLOW_API const char *flow_comm_kind(const flow_comm *comm);
/* buf[0..n) = the element-wise op over all processes' buf, on every
 * process (every process calls it with the same n and op). */
FLOW_API int flow_comm_allreduce(flow_comm *comm, double *buf, size_t n,
                                 flow_comm_op op);
/* buf[0..bytes) = root's bytes, on every process. */
FLOW_API int flow_comm_broadcast(flow_comm *comm, void *buf, size_t bytes,
                                 int root);
FLOW_API int flow_comm_barrier(flow_comm *comm);
/* The collectives comm has run so far: their number, their wall-clock
 * seconds on this process (waiting for slower processes included) and
 * the bytes this process contributed to them.  Any pointer may be NULL. */
FLOW_API void flow_comm_stats(const flow_comm *comm,
                              unsigned long long *calls, double *seconds,
                              double *bytes);
/* Prints "msg" on stderr and ends every process of comm with exit
 * status `code` (MPI_Abort); in a single process, exit(code).  For
 * programs, not libraries: it never returns. */
FLOW_API void flow_comm_abort(flow_comm *comm, int code, const char *msg);

/* Trains with the gradient summed over comm's processes, the same bits
 * for any number of them: each global batch is cut into blocks of
 * FLOW_TRAIN_BLOCK rows, each process takes a contiguous share of whole
 * blocks and the block gradients are summed with pre-rounding to a
 * common grid (exact, so in any order).  Every process must create its
 * trainer with the same model parameters, configuration and whole data
 * set, and call flow_trainer_step the same number of times.  comm is
 * borrowed (it must outlive t); with a single-process comm it gives the
 * same bits as any number of processes.  A trainer on a target draws
 * each step's samples in the same blocks, block k from a stream of the
 * step's key and k alone (one draw of the model's stream per step).
 * Call before the first step. */
#define FLOW_TRAIN_BLOCK 32
FLOW_API int flow_trainer_set_comm(flow_trainer *t, flow_comm *comm);
/* flow_model_evaluate over comm's processes: the rows in blocks of
 * `batch` (0: 4096), each process a contiguous share of whole blocks, the
 * blocks' sums added as flow_trainer_set_comm's are: the same bits for
 * any number of processes (not the same as flow_model_evaluate's, whose
 * sum runs row by row).  Every process passes the same rows. */
FLOW_API int flow_model_evaluate_comm(flow_model *m, flow_comm *comm,
                                      size_t n, const flow_real *x,
                                      const flow_real *c, size_t batch,
                                      double *mean, double *std_err);
/* Rank 0 receives every process's elements in rank order: all = rank
 * 0's mine, then rank 1's, and so on.  counts[r]: the number of elements
 * (of `size` bytes) of rank r, the same array on every process; all is
 * written on rank 0 only (other processes may pass NULL), and rank 0's
 * mine may be all itself (its elements already in place).  In one
 * process, a copy. */
FLOW_API int flow_comm_gather(flow_comm *comm, const void *mine, void *all,
                              const size_t *counts, size_t size);
/* A trainer on this process's share of the rows (flow_data_read_shard,
 * flow_data_split): x (n x dim) and c (n x context_dim, or NULL) are
 * the rows [first, first + n) of `total` rows that comm's processes hold
 * in contiguous shares in rank order.  Each step every process draws the
 * same permutation of the total rows and receives the rows of its blocks
 * from the processes that hold them (one all-to-all exchange); the
 * parameters are the bits of flow_trainer_new on all rows followed by
 * flow_trainer_set_comm.  Collective: every process calls it, with the
 * same model, configuration and total.  comm is borrowed, as are x and
 * c; NULL on failure (message in m's context). */
FLOW_API flow_trainer *flow_trainer_new_shard(flow_model *m,
                                              const flow_train_config *cfg,
                                              flow_comm *comm,
                                              const flow_real *x,
                                              const flow_real *c, size_t n,
                                              size_t first, size_t total);
/* flow_model_evaluate_comm on shares: x holds the rows [first, first +
 * n) of total, where first is a multiple of `batch` (0: 4096) and first
 * + n is one too or total (flow_data_realign with align = batch); the
 * same bits as flow_model_evaluate_comm on all rows.  Collective. */
FLOW_API int flow_model_evaluate_shard(flow_model *m, flow_comm *comm,
                                       size_t n, const flow_real *x,
                                       const flow_real *c, size_t first,
                                       size_t total, size_t batch,
                                       double *mean, double *std_err);

/* ====================================================================
 * Data sets (runtime/data.c; formats in docs/formats.md), output files.
 *
 * A data set: n rows of `dim` data columns (row-major flow_real) plus
 * optionally `context_dim` context columns for conditional models.
 *
 * Ownership: a data set is owned by the caller (flow_data_free) and
 * holds no context: the calls that can fail take one for their message.
 * Trainers and calls on rows borrow its values.
 * Threads: a data set is plain memory, read by several threads at once
 * or written by one; a call taking a context follows that context's rule.
 * ==================================================================== */

/* --- data sets ----------------------------------------------------- */

typedef enum flow_data_format {
    FLOW_DATA_AUTO = 0,   /* by name: "*.npy" NPY, "*.idx" IDX, "*.png"
                             PNG, anything else CSV */
    FLOW_DATA_CSV = 1,
    FLOW_DATA_NPY = 2,
    FLOW_DATA_IDX = 3,    /* unsigned bytes (docs/formats.md) */
    FLOW_DATA_PNG = 4     /* a grid of 8-bit images */
} flow_data_format;

/* Reads a CSV, .npy or IDX file, or a directory of PNG files (`path` "-"
 * reads stdin; NPY, IDX and gzip are recognised by their magic bytes;
 * docs/formats.md).  `columns`: NULL for every column not in `context`,
 * else a comma-separated list of header names or 0-based indices.
 * `context`: NULL for none, else a list as for `columns`.  `dim`: 0 for
 * any, else the required number of data columns.  On success *out is a
 * new data set owned by the caller (flow_data_free); on failure *out is
 * NULL and the message names file:line:column. */
FLOW_API int flow_data_read(flow_ctx *ctx, const char *path,
                            const char *columns, const char *context,
                            size_t dim, flow_data **out);
/* Writes data columns then context columns to `path` ("-": stdout), as
 * CSV (optional header row) or NPY.  Writing a file is atomic: on failure
 * nothing is left under `path`.  `data` is only read. */
FLOW_API int flow_data_write(flow_ctx *ctx, const flow_data *data,
                             const char *path, flow_data_format format,
                             int header);
/* New zero-filled data set owned by the caller, or NULL (message in ctx). */
FLOW_API flow_data *flow_data_new(flow_ctx *ctx, size_t n, size_t dim,
                                  size_t context_dim);
FLOW_API void flow_data_free(flow_data *data);
FLOW_API size_t flow_data_rows(const flow_data *data);
FLOW_API size_t flow_data_dim(const flow_data *data);
FLOW_API size_t flow_data_context_dim(const flow_data *data);
/* Row-major n x dim values, owned by data (NULL when empty). */
FLOW_API flow_real *flow_data_values(flow_data *data);
/* Row-major n x context_dim values, owned by data; NULL when none. */
FLOW_API flow_real *flow_data_context(flow_data *data);
/* Sets the column names (copied): dim + context_dim entries, data columns
 * first; used by CSV headers. */
FLOW_API int flow_data_set_column_names(flow_ctx *ctx, flow_data *data,
                                        const char *const *names);
/* Name of column j (data columns first, then context columns), owned by
 * data; NULL when the data set has no names or j is out of range. */
FLOW_API const char *flow_data_column_name(const flow_data *data, size_t j);
/* Where value (row, col) of data read by flow_data_read came from, into
 * buf (cap bytes, always terminated): "FILE:LINE:COLUMN" for CSV (1-based,
 * as editors count), "FILE: [ROW, COL]" for NPY (0-based, as numpy
 * counts); col = (size_t)-1 names the row only ("FILE:LINE", "FILE:
 * [ROW, :]").  Columns count the data columns first, then the context
 * columns.  A data set made in memory gives "row R" (1-based). */
FLOW_API void flow_data_locate(const flow_data *data, size_t row, size_t col,
                               char *buf, size_t cap);
/* A warning about the values flow_data_read read (e.g. "FILE:LINE:COL: 3
 * values underflowed to 0 in float32 ..."), owned by data; NULL when
 * there is none. */
FLOW_API const char *flow_data_note(const flow_data *data);
/* Rearranges the columns of data (which has no context columns) in
 * place: column j becomes old column order[j], and the last cdim of them
 * become the context columns.  Names, places (flow_data_locate) and the
 * note follow the values.  Used to match a file's columns by name. */
FLOW_API int flow_data_reorder(flow_ctx *ctx, flow_data *data,
                               const size_t *order, size_t cdim);
/* Lets flow_data_write write NaN and Inf (CSV: nan, inf, -inf), which it
 * otherwise refuses because flow_data_read refuses them. */
FLOW_API void flow_data_allow_nonfinite(flow_data *data, int on);
/* The shape of one sample (a row of `dim` values in C order: an image
 * [C, H, W] is the row c*H*W + h*W + w) into shape[0..rank-1], the rest
 * zeroed; returns the rank: 1 for flat rows (shape[0] = dim), 3 for
 * images read from NPY (N, H, W) or (N, C, H, W), IDX or PNG (C = 1 for
 * (N, H, W)). */
FLOW_API int flow_data_shape(const flow_data *data, size_t shape[4]);
/* Sets the sample shape (rank 1 to 4, product = dim) that the NPY, IDX
 * and PNG writers use; rank 1 makes the rows flat again. */
FLOW_API int flow_data_set_shape(flow_ctx *ctx, flow_data *data,
                                 const size_t *shape, int rank);
/* IDX and PNG writers: values lo..hi map linearly onto pixel values
 * 0..255 (then rounded and clamped); without it a value is the pixel
 * integer itself.  lo < hi, both finite. */
FLOW_API int flow_data_set_pixel_range(flow_ctx *ctx, flow_data *data,
                                       double lo, double hi);

/* --- data sets split over processes (docs/distributed.md) ---------- */

/* flow_data_read with each process of comm holding only its share of the
 * rows: process r of N holds rows [r n / N, (r + 1) n / N) of NPY and IDX
 * files (read by offset), and of a CSV file the rows on the lines that
 * start in the r-th of N equal byte ranges after the header (read from
 * there); what cannot be read in parts (stdin, gzip, PNG directories, a
 * CSV file with a line break inside quotes) is read by rank 0 and dealt
 * out as NPY's rows are.  Places (flow_data_locate) are the file's; the
 * note, if any, is on one process.  An error is the message
 * flow_data_read would give, on every process.  Collective.  With one
 * process it is flow_data_read. */
FLOW_API int flow_data_read_shard(flow_ctx *ctx, flow_comm *comm,
                                  const char *path, const char *columns,
                                  const char *context, size_t dim,
                                  flow_data **out);
/* A share's first row in the whole set and the whole set's rows (0 and
 * flow_data_rows for a data set held whole). */
FLOW_API size_t flow_data_first_row(const flow_data *data);
FLOW_API size_t flow_data_total_rows(const flow_data *data);
/* Moves the rows of shares (order kept) so that process r holds the
 * units [r u / N, (r + 1) u / N) of the u = ceil(total / align) units of
 * `align` rows (the last one short): the shares flow_model_evaluate_shard
 * needs with align = its batch.  Collective; nothing to do for a data set
 * held whole. */
FLOW_API int flow_data_realign(flow_ctx *ctx, flow_comm *comm,
                               flow_data *data, size_t align);
/* Splits data into n_valid validation rows and the rest for training,
 * in the order of a permutation drawn from seed (splitmix64
 * Fisher-Yates): validation row i is row p(i) of data, training row i
 * is row p(n_valid + i).  A data set held whole gives whole sets (comm
 * may be NULL); shares give shares, of training rows [r m / N, (r + 1) m
 * / N) and of validation rows in units of valid_align (flow_data_realign),
 * the same rows for any N (collective).  The parts have no column names
 * and name their rows by number.  *train and *valid are new, owned by the
 * caller. */
FLOW_API int flow_data_split(flow_ctx *ctx, flow_comm *comm, flow_data *data,
                             size_t n_valid, uint64_t seed,
                             size_t valid_align, flow_data **train,
                             flow_data **valid);
/* The first k rows of the whole set, with its column names, as a data
 * set held whole by every process (collective for shares; comm may be
 * NULL for a data set held whole).  *out is new, owned by the caller. */
FLOW_API int flow_data_head(flow_ctx *ctx, flow_comm *comm, flow_data *data,
                            size_t k, flow_data **out);

/* --- built-in data sets -------------------------------------------- */

/* Built-in data sets (runtime/datasets.c; definitions and densities in
 * docs/formats.md).  Zero the struct, then set what you need. */
typedef struct flow_dataset_params {
    const char *name;       /* moons circles 8gaussians checkerboard pinwheel
                               2spirals rings swissroll gmm shapes */
    size_t n;               /* rows, 1 .. 100000000 */
    uint64_t seed;          /* the samples; same seed, same bits */
    size_t dim;             /* gmm: dimension (0: 2); shapes: the side S
                               of its [1, S, S] images, 4..256 (0: 8) */
    size_t components;      /* gmm: number of components (0: 8) */
    uint64_t means_seed;    /* gmm: seed of the component means */
    int labels;             /* 8gaussians: the component as a one-hot in
                               context columns label0..label7 */
    int with_logprob;       /* append the true log-density (nats) as the
                               last context column "logprob"; only for
                               8gaussians, checkerboard and gmm */
} flow_dataset_params;

/* NULL-terminated list of the built-in data set names (static). */
FLOW_API const char *const *flow_dataset_names(void);
/* Draws a built-in data set: columns x0.. then context columns (labels,
 * logprob) as asked.  *out is new, owned by the caller. */
FLOW_API int flow_data_generate(flow_ctx *ctx, const flow_dataset_params *p,
                                flow_data **out);

/* --- output files -------------------------------------------------- */

/* Output files, as flow_data_write and flow_checkpoint_save write them
 * (docs/cli.md, "Output files"): "-" is standard output; a FIFO, a device
 * or /dev/fd/N is written in place; anything else goes to a temporary file
 * beside the target (symbolic links followed) that replaces it on commit,
 * keeping an existing file's mode.  flow_output_check tells before any
 * work whether `path` can be written (its directory exists and takes a
 * new file; it is no directory or socket) and is not the same file
 * (device and inode) as one of the n_inputs `inputs` (NULL and "-"
 * entries skipped); it writes nothing there.  flow_output_open gives a
 * stream (flow_output_stream, owned by the output) that ends with exactly
 * one flow_output_commit or flow_output_abort, both of which free it; on
 * failure nothing is left under `path` that was not there before, except
 * for what went into an output written in place. */
FLOW_API int flow_output_check(flow_ctx *ctx, const char *path,
                               const char *const *inputs, size_t n_inputs);
FLOW_API int flow_output_open(flow_ctx *ctx, const char *path,
                              flow_output **out);
FLOW_API FILE *flow_output_stream(flow_output *o);
FLOW_API int flow_output_commit(flow_ctx *ctx, flow_output *o);
FLOW_API void flow_output_abort(flow_output *o);

/* Writes s (NULL: "") to f as a JSON string literal (RFC 8259): quotes,
 * backslashes and control characters escaped, bytes that are not UTF-8
 * written as U+FFFD so the output stays valid JSON.  The one string
 * escaper behind every JSON that flowkit, flowc and the library write. */
FLOW_API void flow_json_string(FILE *f, const char *s);

/* ====================================================================
 * Checkpoints (runtime/ckpt_model.c; layout in docs/formats.md).
 *
 * A checkpoint embeds every source file of its spec, the imported ones
 * included, so loading one is: open it, compile flow_checkpoint_sources()
 * with flow_compile_sources (libflowc; nothing is read from disk again),
 * build the model, then restore.
 *
 * Ownership: an opened checkpoint holds the file's contents and is owned
 * by the caller (flow_checkpoint_free); its context must outlive it.
 * Saving borrows the model and trainer for the call.
 * Threads: one thread at a time, with its context (and, when saving or
 * restoring, with the model's).
 * ==================================================================== */

/* Writes model parameters (a tensor per layer, "params/<label>"), buffers,
 * and, when t is not NULL, the optimizer and training state, plus the spec
 * source, its path (for messages and imports; may be NULL) and the
 * history (JSON text or NULL) to path, atomically.  A model with a
 * non-finite parameter is refused (nothing is written). */
FLOW_API int flow_checkpoint_save(flow_model *m, flow_trainer *t,
                                  const char *spec_source,
                                  const char *spec_path,
                                  const char *history_json, const char *path);
/* flow_checkpoint_save plus metadata: `meta` holds key, value pairs and
 * ends with a NULL key (may be NULL).  Keys must not be reserved ones
 * (spec, history, ...).  `flowkit fit` stores its target here. */
FLOW_API int flow_checkpoint_save_meta(flow_model *m, flow_trainer *t,
                                       const char *spec_source,
                                       const char *spec_path,
                                       const char *history_json,
                                       const char *const *meta,
                                       const char *path);
/* Reads and validates a checkpoint (checksums, version, precision).
 * *out is new, owned by the caller (flow_checkpoint_free). */
FLOW_API int flow_checkpoint_open(flow_ctx *ctx, const char *path,
                                  flow_checkpoint **out);
FLOW_API void flow_checkpoint_free(flow_checkpoint *ck);
/* The embedded spec source; metadata by key (NULL when absent).  Owned by
 * ck. */
FLOW_API const char *flow_checkpoint_spec(const flow_checkpoint *ck);
FLOW_API const char *flow_checkpoint_meta(const flow_checkpoint *ck,
                                          const char *key);
/* Whether the checkpoint holds training state (optimizer moments). */
FLOW_API int flow_checkpoint_has_training(const flow_checkpoint *ck);
/* Copies parameters and buffers into m (built from the same spec), and the
 * training state into t when t is not NULL.  Shape mismatches are errors
 * naming the tensor. */
FLOW_API int flow_checkpoint_restore(const flow_checkpoint *ck,
                                     flow_model *m, flow_trainer *t);

/* One source file of a spec, as a checkpoint embeds it and as the
 * compiler reads it from memory.  Strings are borrowed. */
typedef struct flow_spec_file {
    const char *path;          /* the path it was read from; the imports it
                                  makes are resolved against this path    */
    const char *import;        /* the import as written in the statement
                                  that first read it; NULL: the main spec */
    const char *resolved;      /* its real path when it was read (identity
                                  for cycles and diamonds); NULL: path     */
    const char *name;          /* shown in diagnostics and messages;
                                  NULL: path                               */
    const char *text;          /* the source, NUL-terminated               */
    size_t len;                /* bytes of text                            */
    const char *const *aliases;/* other import paths that led to the same
                                  file (a diamond reached through "../" or
                                  a link)                                   */
    size_t n_aliases;
} flow_spec_file;

/* What flow_checkpoint_write records besides the model and trainer.
 * Fields are only ever appended (set struct_size). */
typedef struct flow_checkpoint_info {
    uint32_t struct_size;          /* sizeof(flow_checkpoint_info)         */
    const flow_spec_file *files;   /* files[0]: the main spec (required),
                                      then its imports in the order read  */
    size_t n_files;
    const char *history_json;      /* JSON text or NULL                    */
    const char *const *meta;       /* key, value pairs ending with a NULL
                                      key (may be NULL); not reserved keys */
    const char *const *columns;    /* the training data's column names:
                                      dim data columns, then context_dim
                                      context columns; NULL: unnamed       */
    /* Appended (read when struct_size covers them): without a trainer,
     * has_counts = 1 records these epoch and step counts (a slim copy
     * of a trained model keeps them); a trainer's own counts win. */
    int has_counts;
    uint64_t epoch, step;
} flow_checkpoint_info;

/* flow_checkpoint_save_meta with every source file embedded (and hashed
 * into spec_hash) and the training column names. */
FLOW_API int flow_checkpoint_write(flow_model *m, flow_trainer *t,
                                   const flow_checkpoint_info *info,
                                   const char *path);
/* The embedded source files: *n of them, the main spec first, then the
 * imports in the order the compiler read them; each named
 * "CKPT[PATH]" (CKPT as given to flow_checkpoint_open, PATH the file's
 * path when it was embedded) for diagnostics.  Owned by ck.  A checkpoint
 * of format 1 embeds no imports. */
FLOW_API const flow_spec_file *flow_checkpoint_sources(
    const flow_checkpoint *ck, size_t *n);
/* The training data's column names (*n_data data columns, then
 * *n_context context columns); NULL (counts 0) when the data were
 * unnamed (no header, NPY).  Owned by ck. */
FLOW_API const char *const *flow_checkpoint_columns(
    const flow_checkpoint *ck, size_t *n_data, size_t *n_context);
/* FLOW_OK when `files` (main spec first, then the imports in the order
 * read) have the texts of the embedded ones; otherwise an error naming
 * the first difference ("checkpoint was made by a different spec").  A
 * checkpoint of format 1 records the main spec only, and only that is
 * compared. */
FLOW_API int flow_checkpoint_check_sources(const flow_checkpoint *ck,
                                           const flow_spec_file *files,
                                           size_t n);

/* ====================================================================
 * Targets: unnormalised densities p~ from target plugins, for variational
 * fits (runtime/vi.c; docs/vi.md).
 *
 * Ownership: made on a context, which must outlive it (the plugin's code
 * lives there); owned by the caller (flow_target_free).  Trainers and
 * fits borrow it.
 * Threads: one thread at a time, with its context; fits call it on the
 * calling thread, never on a model's worker threads.
 * ==================================================================== */

/* A target of a loaded type for `dim` dimensions.  `attrs` holds one
 * resolved value per attribute of the type's table, in table order (as
 * the compiler produces them; NULL when the table is empty); the plugin's
 * create() copies what it keeps.  *out is new, owned by the caller
 * (flow_target_free).  Errors name the type and the plugin's reason. */
FLOW_API int flow_target_new(flow_ctx *ctx, const char *type,
                             const flow_attr_value *attrs, size_t n_attrs,
                             size_t dim, flow_target **out);
FLOW_API void flow_target_free(flow_target *t);
FLOW_API size_t flow_target_dim(const flow_target *t);
FLOW_API const char *flow_target_name(const flow_target *t);
/* logp[r] = log p~(x_r) for n rows; grad (n x dim, may be NULL) = d log
 * p~ / dx. */
FLOW_API int flow_target_log_density(flow_target *t, size_t n,
                                     const flow_real *x, flow_real *logp,
                                     flow_real *grad);
/* The target's known log normaliser log Z, or NaN when unknown. */
FLOW_API double flow_target_log_normalizer(const flow_target *t);

/* A log-density computed by the caller (a posterior written in another
 * language, e.g. numpy through ctypes): fills logp[r] = log p~(x_r) for
 * the n rows of x (n x dim, row-major) and, when grad is not NULL,
 * grad (n x dim) = d log p~ / dx.  Returns 0, or non-zero after writing
 * a message (NUL-terminated, at most err_cap bytes) into err; the call
 * then fails with FLOW_ERR_PLUGIN and that message in flow_errmsg.  Called
 * on the thread that called the flowkit function, never on a model's
 * worker threads. */
typedef int (*flow_target_fn)(void *arg, size_t n, size_t dim,
                              const flow_real *x, flow_real *logp,
                              flow_real *grad, char *err, size_t err_cap);

/* A target of `dim` dimensions whose log-density is fn(arg, ...);
 * `log_z` is its known log normaliser (NaN when unknown), reported by
 * flow_target_log_normalizer.  Its name (flow_target_name) is
 * "callback".  fn and arg are borrowed and must outlive the target.
 * *out is new, owned by the caller (flow_target_free). */
FLOW_API int flow_target_new_callback(flow_ctx *ctx, size_t dim,
                                      flow_target_fn fn, void *arg,
                                      double log_z, flow_target **out);

/* ====================================================================
 * Variational fits: the ELBO and importance sampling (runtime/vi.c;
 * docs/vi.md).
 *
 * Reverse-KL training against an unnormalised target density p~: the flow
 * is used in its sampling direction, x = f^-1(z) with z drawn from the
 * bases, and the ELBO E_q[log p~(x) - log q(x)] is maximised with the
 * reparameterisation gradient.
 *
 * Ownership: these calls borrow the model and the target for the call.
 * Threads: as the model (one thread at a time); flow_importance_stats
 * touches only its arguments and may run on any thread.
 * ==================================================================== */

/* One reparameterised ELBO estimate on n fresh samples of the model's
 * stream: *elbo = mean_r [log p~(x_r) - log q(x_r)], x_r = f^-1(z_r), and
 * grad (num_params, overwritten) = its gradient with respect to the
 * parameters with z held fixed: mean_r [grad log p~(x_r) . dx_r/dtheta +
 * d log|det df^-1/dz|(z_r)/dtheta] (log p_base(z_r) does not depend on
 * theta).  The model must be unconditional with parameter-free bases
 * (normal, logistic); FLOW_ERR_UNSUPPORTED otherwise. */
FLOW_API int flow_model_elbo_grad(flow_model *m, flow_target *t, size_t n,
                                  double *elbo, flow_real *grad);

/* Importance-sampling summary of log-weights w_r = log p~(x_r) - log
 * q(x_r) over n samples x_r ~ q. */
typedef struct flow_is_stats {
    size_t n;
    double elbo, elbo_se;       /* mean of w and its standard error        */
    double log_z, log_z_se;     /* log mean exp(w) (an estimate of log Z,
                                   biased low by O(1/n)) and its standard
                                   error by the delta method:
                                   sd(e^(w-max)) / (sqrt(n) mean(e^(w-max))) */
    double ess;                 /* (sum e^w)^2 / sum e^(2w) (Kish)         */
    double ess_per_sample;      /* ess / n, in (0, 1]                       */
    size_t n_finite;            /* samples with a finite weight            */
} flow_is_stats;

/* The summary of n log-weights (non-finite ones count as weight 0). */
FLOW_API int flow_importance_stats(size_t n, const double *logw,
                                   flow_is_stats *out);
/* Draws n samples of m (in batches of `batch`, 0 = 4096) with the model's
 * stream, weighs them against t and summarises; x (n x dim) and logw (n)
 * receive the samples and their log-weights when not NULL. */
FLOW_API int flow_model_importance(flow_model *m, flow_target *t, size_t n,
                                   size_t batch, flow_is_stats *out,
                                   flow_real *x, double *logw);

#ifdef __cplusplus
}
#endif
#endif /* FLOW_H */
