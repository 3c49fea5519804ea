/* ctx.h - internal: the flow_ctx structure and error helpers shared by the
 * runtime's modules.  Not installed. */
#ifndef FLOW_RUNTIME_CTX_H
#define FLOW_RUNTIME_CTX_H

#include "flow/flow.h"

#define CTX_ERRMSG_MAX 2048

typedef struct loaded_plugin {
    char *file;                     /* resolved path, owned */
    void *handle;                   /* dlopen handle */
    const flow_plugin_info *info;   /* static in the plugin */
} loaded_plugin;

struct flow_ctx {
    char errmsg[CTX_ERRMSG_MAX];
    char **dirs;                    /* plugin search dirs, owned */
    size_t n_dirs;
    int dirs_ready;
    loaded_plugin *plugins;
    size_t n_plugins, cap_plugins;
};

/* Sets ctx's message (printf-style) and returns `code`. */
int ctx_error(flow_ctx *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ctx_clear_error(flow_ctx *ctx);

/* loader.c */
void loader_free(flow_ctx *ctx);

/* model.c */
flow_ctx *model_ctx(const flow_model *m);
/* flow_model_set_threads' limit */
#define MODEL_MAX_THREADS 64
/* Runs fn(arg, t, lo, hi) for the chunks t = 0..k-1 of [0, n), k the
 * model's thread count (or fewer for small n), on its thread pool; the
 * split depends only on n and k, in whole 64-byte lines of flow_reals. */
void model_parallel_for(flow_model *m, size_t n,
                        void (*fn)(void *arg, size_t t, size_t lo, size_t hi),
                        void *arg);

typedef struct model_slice_info {
    const char *name;           /* layer label, exit name or "base/output" */
    int is_exit;
    size_t p_off, n_params;     /* in the flat parameter vector */
    size_t b_off, n_buffers;    /* in the flat buffer vector */
} model_slice_info;

size_t model_slice_count(const flow_model *m);
/* Backward of the sampling direction whose output gradients are decided
 * after the inverse ran: mid(arg, n, x, logdet, dx, dlogdet) sees x =
 * f^-1(z) and logdet = log|det df^-1/dz| and writes dL/dx (n x dim) and
 * dL/dlogdet (n); then as flow_model_inverse_grad. */
typedef int (*model_mid_fn)(void *arg, size_t n, const flow_real *x,
                            const flow_real *logdet, flow_real *dx,
                            flow_real *dlogdet);
/* vi.c: flow_model_elbo_grad with log p~ scaled by beta (annealing) */
int vi_elbo_grad(flow_model *m, flow_target *t, size_t n, double beta,
                 double *elbo, flow_real *grad);
int model_inverse_grad_mid(flow_model *m, size_t n, const flow_real *z,
                           const flow_real *c, model_mid_fn mid, void *arg,
                           flow_real *grad, flow_real *dz);
int model_slice(const flow_model *m, size_t i, model_slice_info *s);

#endif
