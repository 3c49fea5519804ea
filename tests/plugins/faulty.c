/* faulty.c - test-only plugin: layers that misbehave on chosen rows, for
 * the hostile-input tests (tests/hostile.sh).  Both are a shift,
 * z = x + t (log-det 0), until a row's first coordinate (of the input of
 * the call, in either direction) reaches the attribute `at`:
 *   fault_error  the call fails there through host->error, naming the row
 *                of the call: a plugin error in the middle of a batch
 *   fault_nan    that row's log-det is NaN (so is its loss in training):
 *                a non-finite step the trainer must skip and count
 *   fault_hang   the call never returns there (it sleeps for ever): a
 *                step that does not finish, which SIGINT / SIGTERM must
 *                still interrupt
 *   fault_prepare  a shift whose prepare() (at = -1) or finish_grad()
 *                (at = -2) fails, with FLOW_LAYER_CONCURRENT_PREPARE: the
 *                host may run several at once and must report the first
 *                failing layer in spec order
 *   fault_export a shift whose export hook writes its tensor `shift`
 *                twice (at < 0: an attribute that is not JSON): the
 *                export must refuse the file, naming the layer */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "flow/flow_plugin.h"

enum { ATTR_AT };

static const flow_attr_spec fault_attrs[] = {
    {.name = "at", .type = FLOW_ATTR_REAL,
     .doc = "rows whose first coordinate is >= at misbehave",
     .def_real = 1e300},
    {0}};

typedef struct fault {
    size_t d;
    double at;
    int nan;                    /* 1: fault_nan, 0: fault_error,
                                   2: fault_hang, 3: fault_nangrad */
    int prep;                   /* fault_prepare: -1 prepare fails, -2
                                   finish_grad fails, else neither */
    const flow_host *host;
} fault;

static int fault_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                          flow_diag *diag)
{
    (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = cfg->dim;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "a shift";
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void *create(const flow_host *host, const flow_layer_config *cfg,
                    int nan)
{
    fault *f = host->calloc(1, sizeof *f);
    if (f) {
        f->d = cfg->dim;
        f->at = cfg->attrs[ATTR_AT].r;
        f->nan = nan;
        f->host = host;
    }
    return f;
}

static void *error_create(const flow_host *host, const flow_layer_config *cfg,
                          flow_diag *diag)
{
    (void)diag;
    return create(host, cfg, 0);
}

static void *nan_create(const flow_host *host, const flow_layer_config *cfg,
                        flow_diag *diag)
{
    (void)diag;
    return create(host, cfg, 1);
}

static void *hang_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    (void)diag;
    return create(host, cfg, 2);
}

static void *nangrad_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    (void)diag;
    return create(host, cfg, 3);
}

static void *prepare_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    fault *f = create(host, cfg, 0);
    (void)diag;
    if (f) {
        f->prep = (int)cfg->attrs[ATTR_AT].r;
        f->at = 1e300;          /* rows never fail */
    }
    return f;
}

static int prepare_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    int rc = fault_describe(cfg, out, diag);
    out->flags |= FLOW_LAYER_CONCURRENT_PREPARE;
    return rc;
}

static int prepare(void *self, const flow_call *c)
{
    const fault *f = self;
    return f->prep == -1 ? c->host->error(c, "test prepare failure")
                         : FLOW_OK;
}

static int finish_grad(void *self, const flow_call *c, flow_real *grad)
{
    const fault *f = self;
    (void)grad;
    return f->prep == -2 ? c->host->error(c, "test finish_grad failure")
                         : FLOW_OK;
}

static void destroy(void *self)
{
    fault *f = self;
    f->host->free(f);
}

static size_t workspace(void *self, size_t n, int dir)
{
    (void)self, (void)n, (void)dir;
    return 0;
}

static int init(void *self, const flow_call *c, flow_real *params)
{
    fault *f = self;
    (void)c;
    memset(params, 0, f->d * sizeof *params);
    return FLOW_OK;
}

/* out = in + sign * t on every row; a row reaching `at` fails or gets a
 * NaN log-det */
static int shift(fault *f, const flow_call *c, const flow_real *in,
                 flow_real *out, flow_real *logdet, double sign)
{
    for (size_t r = 0; r < c->n; r++) {
        const flow_real *row = in + r * f->d;
        int hit = (double)row[0] >= f->at;
        while (hit && f->nan == 2)
            sleep(1);
        if (hit && !f->nan)
            return c->host->error(c, "row %zu of %zu: value %g reached the "
                                  "test fault threshold %g", r, c->n,
                                  (double)row[0], f->at);
        for (size_t i = 0; i < f->d; i++)
            out[r * f->d + i] = (flow_real)(row[i] + sign * c->params[i]);
        logdet[r] = hit && f->nan == 1 ? (flow_real)NAN : 0;
    }
    return FLOW_OK;
}

static int forward(void *self, const flow_call *c, const flow_real *x,
                   flow_real *z, flow_real *logdet)
{
    return shift(self, c, x, z, logdet, 1);
}

static int inverse(void *self, const flow_call *c, const flow_real *z,
                   flow_real *x, flow_real *logdet)
{
    return shift(self, c, z, x, logdet, -1);
}

/* dL/din = dL/dout; dL/dt = +-sum over rows of dL/dout, NaN for
 * fault_nangrad's rows of `in` reaching `at` (the loss stays finite) */
static int backward(fault *f, const flow_call *c, const flow_real *in,
                    const flow_real *dout, flow_real *din, double sign)
{
    memcpy(din, dout, c->n * f->d * sizeof *din);
    if (c->grad)
        for (size_t r = 0; r < c->n; r++) {
            int hit = f->nan == 3 && (double)in[r * f->d] >= f->at;
            for (size_t i = 0; i < f->d; i++)
                c->grad[i] += hit ? (flow_real)NAN
                                  : (flow_real)(sign * dout[r * f->d + i]);
        }
    return FLOW_OK;
}

static int forward_backward(void *self, const flow_call *c,
                            const flow_real *x, const flow_real *z,
                            const flow_real *dz, const flow_real *dlogdet,
                            flow_real *dx)
{
    (void)z, (void)dlogdet;
    return backward(self, c, x, dz, dx, 1);
}

static int inverse_backward(void *self, const flow_call *c,
                            const flow_real *z, const flow_real *x,
                            const flow_real *dx, const flow_real *dlogdet,
                            flow_real *dz)
{
    (void)x, (void)dlogdet;
    return backward(self, c, z, dx, dz, -1);
}

#define FAULT_TYPE(NAME, SUMMARY) \
    static const flow_layer_type NAME##_type = { \
        .struct_size = sizeof(flow_layer_type), .name = #NAME, \
        .summary = SUMMARY, .attrs = fault_attrs, \
        .describe = fault_describe, .create = NAME##_create, \
        .destroy = destroy, .workspace = workspace, .init = init, \
        .forward = forward, .inverse = inverse, \
        .forward_backward = forward_backward, \
        .inverse_backward = inverse_backward, \
    };

#define fault_error_create error_create
#define fault_nan_create nan_create
#define fault_hang_create hang_create
FAULT_TYPE(fault_error, "test: a shift that fails on rows reaching `at`")
FAULT_TYPE(fault_nan, "test: a shift with a NaN log-det on rows reaching "
                      "`at`")
FAULT_TYPE(fault_hang, "test: a shift that never returns on rows reaching "
                       "`at`")
#define fault_nangrad_create nangrad_create
FAULT_TYPE(fault_nangrad, "test: a shift with a NaN parameter gradient "
                          "from rows reaching `at`")

static const flow_layer_type fault_prepare_type = {
    .struct_size = sizeof(flow_layer_type), .name = "fault_prepare",
    .summary = "test: a shift whose prepare (at = -1) or finish_grad "
               "(at = -2) fails",
    .attrs = fault_attrs, .describe = prepare_describe,
    .create = prepare_create, .destroy = destroy, .workspace = workspace,
    .init = init, .prepare = prepare, .forward = forward,
    .inverse = inverse, .forward_backward = forward_backward,
    .inverse_backward = inverse_backward, .finish_grad = finish_grad,
};

static int export_twice(void *self, const flow_call *c, flow_export *ex)
{
    const fault *f = self;
    size_t shape[1] = {f->d};
    int rc;
    if (f->at < 0)
        return ex->attr(ex, "broken", "{not json");
    rc = ex->tensor(ex, "shift", FLOW_DTYPE_REAL, 1, shape, c->params);
    return rc ? rc : ex->tensor(ex, "shift", FLOW_DTYPE_REAL, 1, shape,
                                c->params);
}

static const flow_layer_type fault_export_type = {
    .struct_size = sizeof(flow_layer_type), .name = "fault_export",
    .summary = "test: a shift whose export writes a tensor twice",
    .attrs = fault_attrs, .describe = fault_describe,
    .create = error_create, .destroy = destroy, .workspace = workspace,
    .init = init, .forward = forward, .inverse = inverse,
    .forward_backward = forward_backward,
    .inverse_backward = inverse_backward, .export_tensors = export_twice,
};

FLOW_PLUGIN_LAYERS("faulty", "test",
                   "layers that fail or return NaN on chosen rows",
                   &fault_error_type, &fault_nan_type, &fault_hang_type,
                   &fault_nangrad_type,
                   &fault_prepare_type, &fault_export_type);
