/* squeeze.c - the `squeeze` layer: space-to-depth on an image [C, H, W] ->
 * [C*f*f, H/f, W/f] (forward) and depth-to-space back; a permutation. */
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_FACTOR };

static const flow_attr_spec squeeze_attrs[] = {
    {.name = "factor", .type = FLOW_ATTR_INT,
     .doc = "side f of the f x f blocks that become channels; H and W must "
            "be multiples of it",
     .def_int = 2, .has_min = 1, .min = 2, .has_max = 1, .max = 64},
    {0}};

typedef struct squeeze {
    const flow_host *host;
    size_t d;
    int32_t *perm;    /* z[o] = x[perm[o]], flat C-order indices */
} squeeze;

/* The shape check and the output shape; 0, or -1 with diag set. */
static int squeeze_shape(const flow_layer_config *cfg, size_t *f,
                         size_t out[3], flow_diag *diag)
{
    size_t shape[4], r = flow_config_shape(cfg, shape);
    *f = (size_t)cfg->attrs[ATTR_FACTOR].i;
    if (r != 3) {
        flow_diag_set(diag, -1, "squeeze needs an image input [C, H, W], "
                      "got a shape of rank %zu", r);
        snprintf(diag->help, sizeof diag->help, "declare the input as "
                 "real[C, H, W]");
        return -1;
    }
    if (shape[1] % *f || shape[2] % *f) {
        flow_diag_set(diag, ATTR_FACTOR, "factor %zu does not divide the "
                      "input's height %zu and width %zu (shape [%zu, %zu, "
                      "%zu])", *f, shape[1], shape[2], shape[0], shape[1],
                      shape[2]);
        snprintf(diag->help, sizeof diag->help, "both H and W must be "
                 "multiples of the factor");
        return -1;
    }
    out[0] = shape[0] * *f * *f;
    out[1] = shape[1] / *f;
    out[2] = shape[2] / *f;
    return 0;
}

/* Output channel c*f*f + i*f + j at (h, w) holds input (c, h*f + i, w*f + j):
 * the channel order of Glow's squeeze2d (Kingma & Dhariwal 2018; RealNVP's
 * squeezing operation, Dinh et al. 2017, sec. 3.6, with the sub-pixel
 * offsets (i, j) innermost). */
static void make_perm(size_t c, size_t h, size_t w, size_t f, int32_t *perm)
{
    size_t h2 = h / f, w2 = w / f, o = 0;
    for (size_t ch = 0; ch < c; ch++)
        for (size_t i = 0; i < f; i++)
            for (size_t j = 0; j < f; j++)
                for (size_t y = 0; y < h2; y++)
                    for (size_t x = 0; x < w2; x++)
                        perm[o++] = (int32_t)((ch * h + y * f + i) * w
                                              + x * f + j);
}

static int squeeze_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    size_t f, shp[3], in[4];
    if (squeeze_shape(cfg, &f, shp, diag) != 0)
        return FLOW_ERR_INVAL;
    if (out->struct_size < offsetof(flow_layer_desc, out_shape)
                           + sizeof out->out_shape)
        return flow_diag_set(diag, -1, "this host cannot change a layer's "
                             "shape (flowkit older than plugin ABI 1.7)");
    flow_config_shape(cfg, in);
    make_perm(in[0], in[1], in[2], f, out->dep_vec);
    flow_desc_fill(out, 0, FLOW_JAC_VOLUME_PRESERVING, FLOW_DEP_PERMUTATION,
                   FLOW_CERT_STRUCTURAL, "permutation (space to depth)",
                   (flow_cost){0, 0, 0.0});
    out->out_rank = 3;
    memcpy(out->out_shape, shp, sizeof shp);
    return FLOW_OK;
}

static void squeeze_destroy(void *self)
{
    squeeze *s = self;
    if (!s)
        return;
    s->host->free(s->perm);
    s->host->free(s);
}

static void *squeeze_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    size_t f, shp[3], in[4];
    squeeze *s;
    if (squeeze_shape(cfg, &f, shp, diag) != 0)
        return NULL;
    flow_config_shape(cfg, in);
    if (!(s = host->calloc(1, sizeof *s))
        || !(s->perm = host->calloc(cfg->dim, sizeof *s->perm))) {
        flow_diag_set(diag, -1, "out of memory");
        if (s)
            host->free(s);
        return NULL;
    }
    s->host = host;
    s->d = cfg->dim;
    make_perm(in[0], in[1], in[2], f, s->perm);
    return s;
}

/* A permutation: log|det| = 0 both ways, and each direction's VJP is the
 * other direction applied to the gradient. */
static int squeeze_forward(void *self, const flow_call *c, const flow_real *x,
                           flow_real *z, flow_real *logdet)
{
    const squeeze *s = self;
    common_gather(s->perm, s->d, c->n, x, z);
    if (!flow_call_skip_logdet(c))
        memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static int squeeze_inverse(void *self, const flow_call *c, const flow_real *z,
                           flow_real *x, flow_real *logdet)
{
    const squeeze *s = self;
    common_scatter(s->perm, s->d, c->n, z, x);
    if (!flow_call_skip_logdet(c))
        memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static int squeeze_forward_backward(void *self, const flow_call *c,
                                    const flow_real *x, const flow_real *z,
                                    const flow_real *dz,
                                    const flow_real *dlogdet, flow_real *dx)
{
    const squeeze *s = self;
    (void)x, (void)z, (void)dlogdet;
    common_scatter(s->perm, s->d, c->n, dz, dx);
    return FLOW_OK;
}

static int squeeze_inverse_backward(void *self, const flow_call *c,
                                    const flow_real *z, const flow_real *x,
                                    const flow_real *dx,
                                    const flow_real *dlogdet, flow_real *dz)
{
    const squeeze *s = self;
    (void)x, (void)z, (void)dlogdet;
    common_gather(s->perm, s->d, c->n, dx, dz);
    return FLOW_OK;
}

/* Portable export: the flat index permutation perm (z[j] = x[perm[j]]),
 * as `permute` writes it, so a port needs no reshape convention. */
static int squeeze_export(void *self, const flow_call *c, flow_export *ex)
{
    const squeeze *s = self;
    return common_export_i64(s->host, c, ex, "perm", s->perm, s->d);
}

static const flow_layer_type squeeze_type = {
    FLOW_LAYER_TYPE_HEAD("squeeze", "space to depth on images: [C, H, W] -> "
                         "[C*f*f, H/f, W/f], a permutation", squeeze_attrs),
    .describe = squeeze_describe,
    .create = squeeze_create,
    .destroy = squeeze_destroy,
    .forward = squeeze_forward,
    .inverse = squeeze_inverse,
    .forward_backward = squeeze_forward_backward,
    .inverse_backward = squeeze_inverse_backward,
    .export_tensors = squeeze_export,
};

FLOW_PLUGIN_LAYERS("squeeze", FLOW_VERSION_STRING, "image squeeze "
                   "(space to depth)", &squeeze_type);
