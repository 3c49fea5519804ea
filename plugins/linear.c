/* linear.c - the `linear` and `conv1x1` layers: an invertible linear map
 * in LU form, z = W x + b with W = P L U, P a fixed permutation, L unit
 * lower, U upper with diagonal exp(s) (Kingma & Dhariwal 2018, Glow, sec.
 * 3.2): log|det W| = sum s; the inverse by the assembled W^-1.  `conv1x1`
 * applies a C x C map to the channels of every pixel of an image [C, H, W]
 * (Glow's invertible 1x1 convolution): log-det = H*W sum s. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

/* pixels per block of double accumulators in the per-pixel products */
#define PIX_BLOCK 64

enum { ATTR_PERM };
enum { ALT_NONE, ALT_REVERSE, ALT_RANDOM };

static const flow_attr_spec seed_attrs[] = {
    {.name = "seed", .type = FLOW_ATTR_INT, .doc = "seed of the shuffle",
     .def_int = 0, .has_min = 1, .min = 0},
    {0}};

static const flow_variant_alt perm_alts[] = {
    {.name = "none", .doc = "P = I"},
    {.name = "reverse", .doc = "P reverses the dimensions"},
    {.name = "random", .doc = "P drawn from `seed` (same as permute's)",
     .attrs = seed_attrs},
    {0}};

static const flow_attr_spec linear_attrs[] = {
    {.name = "perm", .type = FLOW_ATTR_VARIANT,
     .doc = "the fixed permutation P: none | reverse | random(seed)",
     .def_str = "random", .alternatives = perm_alts},
    {0}};

/* Parameters: strictly lower L (row-major, i > j), strictly upper U
 * (row-major, i < j), s (D), b (D): D^2 + D in all, D the matrix's side
 * (the channels C for conv1x1).  No init: the host's zeros give L = I,
 * U = I, b = 0, so W = P, a permutation. */
typedef struct linear {
    size_t d, nl;               /* nl = D (D - 1) / 2 */
    size_t g;                   /* values W acts on apart: 1 for linear,
                                   the H*W pixels of a channel for conv1x1
                                   (value (c, p) at column c*g + p) */
    int32_t *p;                 /* W[i, :] = (L U)[p[i], :] */
    double *L, *U, *W, *Wi, *tmp;   /* D x D each, assembled by prepare */
    const flow_host *host;
} linear;

static void make_perm(const flow_layer_config *cfg, size_t d, int32_t *p)
{
    const flow_attr_value *a = &cfg->attrs[ATTR_PERM];
    if (a->i == ALT_RANDOM) {   /* the same shuffle as permute's random */
        common_shuffle(p, d, (uint64_t)a->sub[0].i);
        return;
    }
    for (size_t i = 0; i < d; i++)
        p[i] = (int32_t)(a->i == ALT_REVERSE ? d - 1 - i : i);
}

/* The matrix's side and the values per matrix entry: D and 1 for linear,
 * C and H*W for conv1x1 (which needs an image); -1 with diag set. */
static int sides(const flow_layer_config *cfg, int conv, size_t *d,
                 size_t *g, flow_diag *diag)
{
    size_t shape[4];
    *d = cfg->dim;
    *g = 1;
    if (!conv)
        return 0;
    if (flow_config_shape(cfg, shape) != 3) {
        flow_diag_set(diag, -1, "conv1x1 needs an image input [C, H, W], "
                      "got a shape of rank 1");
        snprintf(diag->help, sizeof diag->help, "declare the input as "
                 "real[C, H, W], or use linear on vectors");
        return -1;
    }
    *d = shape[0];
    *g = shape[1] * shape[2];
    return 0;
}

static int describe_lu(const flow_layer_config *cfg, flow_layer_desc *out,
                       flow_diag *diag, int conv)
{
    size_t d, g;
    if (sides(cfg, conv, &d, &g, diag) != 0)
        return FLOW_ERR_INVAL;
    if (d > 4096) {
        diag->attr = -1;
        snprintf(diag->message, sizeof diag->message, "linear layers are "
                 "dense: %zu dimensions would need %zu parameters", d, d * d);
        snprintf(diag->help, sizeof diag->help, "use coupling or maf layers "
                 "for high-dimensional data");
        return FLOW_ERR_INVAL;
    }
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = d * d + d;
    common_tensor(out, 0, "L", d * (d - 1) / 2, 0);
    common_tensor(out, 1, "U", d * (d - 1) / 2, 0);
    common_tensor(out, 2, "log_diag", d, 0);
    common_tensor(out, 3, "bias", d, 0);
    out->jac = FLOW_JAC_DENSE_LU;
    out->dep = FLOW_DEP_DENSE;
    out->cert = FLOW_CERT_LU;
    out->cert_text = conv ? "LU with positive diagonal exp(s), per pixel"
                          : "LU with positive diagonal exp(s)";
    out->cost_forward = (flow_cost){1, 0, 2.0 * (double)(d * d * g)};
    out->cost_inverse = (flow_cost){1, 0, 2.0 * (double)(d * d * g)};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static int linear_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                           flow_diag *diag)
{
    return describe_lu(cfg, out, diag, 0);
}

static int conv1x1_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    return describe_lu(cfg, out, diag, 1);
}

static void linear_destroy(void *self)
{
    linear *l = self;
    if (!l)
        return;
    l->host->free(l->p);
    l->host->free(l->L);
    l->host->free(l->U);
    l->host->free(l->W);
    l->host->free(l->Wi);
    l->host->free(l->tmp);
    l->host->free(l);
}

static void *create_lu(const flow_host *host, const flow_layer_config *cfg,
                       flow_diag *diag, int conv)
{
    size_t d, g;
    linear *l;
    if (sides(cfg, conv, &d, &g, diag) != 0)
        return NULL;
    if (!(l = host->calloc(1, sizeof *l)))
        goto nomem;
    l->host = host;
    l->d = d;
    l->g = g;
    l->nl = d * (d - 1) / 2;
    l->p = host->calloc(d, sizeof *l->p);
    l->L = host->calloc(d * d, sizeof *l->L);
    l->U = host->calloc(d * d, sizeof *l->U);
    l->W = host->calloc(d * d, sizeof *l->W);
    l->Wi = host->calloc(d * d, sizeof *l->Wi);
    l->tmp = host->calloc(d * d, sizeof *l->tmp);
    if (!l->p || !l->L || !l->U || !l->W || !l->Wi || !l->tmp)
        goto nomem;
    make_perm(cfg, d, l->p);
    return l;
nomem:
    snprintf(diag->message, sizeof diag->message, "out of memory");
    linear_destroy(l);
    return NULL;
}

static void *linear_create(const flow_host *host, const flow_layer_config *cfg,
                           flow_diag *diag)
{
    return create_lu(host, cfg, diag, 0);
}

static void *conv1x1_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    return create_lu(host, cfg, diag, 1);
}

/* Assembles L, U, W = P L U and W^-1 = U^-1 L^-1 P^T in double. */
static int linear_prepare(void *self, const flow_call *c)
{
    linear *l = self;
    size_t d = l->d, q;
    const flow_real *lo = c->params, *up = c->params + l->nl;
    const flow_real *s = c->params + 2 * l->nl;
    double *A = l->tmp;

    memset(l->L, 0, d * d * sizeof *l->L);
    memset(l->U, 0, d * d * sizeof *l->U);
    q = 0;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < i; j++)
            l->L[i * d + j] = lo[q++];
    q = 0;
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++)
            l->U[i * d + j] = up[q++];
    for (size_t i = 0; i < d; i++) {
        l->L[i * d + i] = 1;
        l->U[i * d + i] = exp(s[i]);
        if (!isfinite(l->U[i * d + i]) || l->U[i * d + i] == 0)
            return c->host->error(c, "diagonal entry %zu of U is exp(%g): "
                                  "not a usable scale", i, (double)s[i]);
    }
    /* A = L U; W[i, :] = A[p[i], :] */
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double v = 0;
            for (size_t k = 0; k <= (i < j ? i : j); k++)
                v += l->L[i * d + k] * l->U[k * d + j];
            A[i * d + j] = v;
        }
    for (size_t i = 0; i < d; i++)
        memcpy(l->W + i * d, A + (size_t)l->p[i] * d, d * sizeof *A);
    /* W^-1 column by column: W x = e_c  <=>  L U x = P^T e_c, i.e. the
     * right-hand side is e_{p^-1(c)} ... solved by substitution */
    for (size_t col = 0; col < d; col++) {
        double *y = A;                  /* reuse as a vector */
        memset(y, 0, d * sizeof *y);
        /* (P^T e_col)[p[i]] = e_col[i]: non-zero at p[col] */
        y[l->p[col]] = 1;
        for (size_t i = 0; i < d; i++)           /* L w = y */
            for (size_t k = 0; k < i; k++)
                y[i] -= l->L[i * d + k] * y[k];
        for (size_t i = d; i-- > 0;) {            /* U x = w */
            for (size_t k = i + 1; k < d; k++)
                y[i] -= l->U[i * d + k] * y[k];
            y[i] /= l->U[i * d + i];
        }
        for (size_t i = 0; i < d; i++)
            l->Wi[i * d + col] = y[i];
    }
    return FLOW_OK;
}

/* log|det| of the whole map: g sum s (W acts on g pixels apart). */
static double sum_s(const linear *l, const flow_real *params)
{
    double v = 0;
    for (size_t i = 0; i < l->d; i++)
        v += params[2 * l->nl + i];
    return v * (double)l->g;
}

/* out_r[:, p] = M (in_r[:, p] - sub) + add for every row r and pixel p,
 * a row being d x g (channel-major), M read as M[i * rs + j * cs] (rs =
 * d, cs = 1: M itself; rs = 1, cs = d: its transpose) */
static void affine_rows(size_t n, size_t d, size_t g, const double *M,
                        size_t rs, size_t cs, const flow_real *in,
                        const flow_real *sub, const flow_real *add,
                        flow_real *out)
{
    size_t w = d * g;
    double acc[PIX_BLOCK];
    /* out[i][p] = add[i] + sum_j M(i, j) (in[j][p] - sub[j]), j in order
     * for every pixel: pixels innermost (contiguous, so the loop
     * vectorises), in blocks of PIX_BLOCK accumulators */
    for (size_t r = 0; r < n; r++)
        for (size_t p0 = 0; p0 < g; p0 += PIX_BLOCK) {
            size_t pn = g - p0 < PIX_BLOCK ? g - p0 : PIX_BLOCK;
            for (size_t i = 0; i < d; i++) {
                const flow_real *x = in + r * w + p0;
                for (size_t p = 0; p < pn; p++)
                    acc[p] = add ? add[i] : 0;
                for (size_t j = 0; j < d; j++) {
                    double mij = M[i * rs + j * cs], sj = sub ? sub[j] : 0;
                    for (size_t p = 0; p < pn; p++)
                        acc[p] += mij * ((double)x[j * g + p] - sj);
                }
                for (size_t p = 0; p < pn; p++)
                    out[r * w + i * g + p0 + p] = (flow_real)acc[p];
            }
        }
}

static int linear_forward(void *self, const flow_call *c, const flow_real *x,
                          flow_real *z, flow_real *logdet)
{
    const linear *l = self;
    int skip = flow_call_skip_logdet(c);
    double ld = skip ? 0 : sum_s(l, c->params);
    affine_rows(c->n, l->d, l->g, l->W, l->d, 1, x, NULL,
                c->params + l->d * l->d, z);
    for (size_t r = 0; !skip && r < c->n; r++)
        logdet[r] = (flow_real)ld;
    return FLOW_OK;
}

static int linear_inverse(void *self, const flow_call *c, const flow_real *z,
                          flow_real *x, flow_real *logdet)
{
    const linear *l = self;
    int skip = flow_call_skip_logdet(c);
    double ld = skip ? 0 : -sum_s(l, c->params);
    affine_rows(c->n, l->d, l->g, l->Wi, l->d, 1, z,
                c->params + l->d * l->d, NULL, x);
    for (size_t r = 0; !skip && r < c->n; r++)
        logdet[r] = (flow_real)ld;
    return FLOW_OK;
}

/* During backward the gradient slice holds dL/dW (D x D, row-major) then
 * dL/db; finish_grad maps dW to L, U and s.  The log-det's gradient enters
 * as g S W^-T (Jacobi's formula, d log|det W| = tr(W^-1 dW), for each of
 * the g pixels).  The sums over a row's pixels are accumulated in double
 * (the host's gradient may be float). */
static void vjp(const linear *l, const flow_call *c, const flow_real *in,
                const flow_real *dout, flow_real *din, const double *M,
                double sign, double S)
{
    size_t d = l->d, g = l->g, w = d * g;
    flow_real *gW = c->grad, *gb = c->grad ? c->grad + d * d : NULL;
    /* din_r[:, p] = M^T dout_r[:, p] */
    affine_rows(c->n, d, g, M, 1, d, dout, NULL, NULL, din);
    if (!gW)
        return;
    /* forward (sign +1): dW += sum dz x^T, db += sum dz over rows and
     * pixels.  inverse (sign -1): with dz = W^-T dx, dW -= sum dz x^T and
     * db -= sum dz, where x is the inverse's output. */
    for (size_t r = 0; r < c->n; r++) {
        const flow_real *gr = sign > 0 ? dout + r * w : din + r * w;
        const flow_real *xr = in + r * w;
        for (size_t i = 0; i < d; i++) {
            double sb = 0;
            for (size_t j = 0; j < d; j++) {
                double v = 0;
                for (size_t p = 0; p < g; p++)
                    v += gr[i * g + p] * xr[j * g + p];
                gW[i * d + j] += (flow_real)(sign * v);
            }
            for (size_t p = 0; p < g; p++)
                sb += gr[i * g + p];
            gb[i] += (flow_real)(sign * sb);
        }
    }
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            gW[i * d + j] += (flow_real)(S * (double)g * l->Wi[j * d + i]);
}

static int linear_forward_backward(void *self, const flow_call *c,
                                   const flow_real *x, const flow_real *z,
                                   const flow_real *dz,
                                   const flow_real *dlogdet, flow_real *dx)
{
    const linear *l = self;
    double S = 0;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        S += dlogdet[r];
    vjp(l, c, x, dz, dx, l->W, 1, S);
    return FLOW_OK;
}

static int linear_inverse_backward(void *self, const flow_call *c,
                                   const flow_real *z, const flow_real *x,
                                   const flow_real *dx,
                                   const flow_real *dlogdet, flow_real *dz)
{
    const linear *l = self;
    double S = 0;
    (void)z;
    for (size_t r = 0; r < c->n; r++)
        S -= dlogdet[r];
    vjp(l, c, x, dx, dz, l->Wi, -1, S);
    return FLOW_OK;
}

/* dW -> (dL, dU, ds): W = P A, A = L U, so dA = P^T dW, dL = dA U^T
 * (strictly lower part), dU = L^T dA (upper part), ds_i = dU_ii U_ii. */
static int linear_finish_grad(void *self, const flow_call *c, flow_real *grad)
{
    linear *l = self;
    size_t d = l->d, q;
    double *dA = l->tmp;
    (void)c;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            dA[(size_t)l->p[i] * d + j] = grad[i * d + j];
    q = 0;
    for (size_t i = 0; i < d; i++)           /* dL, strictly lower */
        for (size_t j = 0; j < i; j++) {
            double v = 0;
            for (size_t k = j; k < d; k++)
                v += dA[i * d + k] * l->U[j * d + k];
            grad[q++] = (flow_real)v;
        }
    /* dU needs the original dA only: compute into W's storage (it is
     * reassembled by the next prepare) */
    for (size_t i = 0; i < d; i++)
        for (size_t j = i; j < d; j++) {
            double v = 0;
            for (size_t k = i; k < d; k++)
                v += l->L[k * d + i] * dA[k * d + j];
            l->W[i * d + j] = v;
        }
    for (size_t i = 0; i < d; i++)
        for (size_t j = i + 1; j < d; j++)
            grad[q++] = (flow_real)l->W[i * d + j];
    for (size_t i = 0; i < d; i++)
        grad[q++] = (flow_real)(l->W[i * d + i] * l->U[i * d + i]);
    return FLOW_OK;
}

/* Portable export (docs/export.md): z = W x + bias with W[i, :] = (L
 * U)[perm[i], :]; the factors as full matrices (lower: unit diagonal;
 * upper: diagonal exp(log_diag)), and W itself as assembled (in double,
 * then rounded). */
static int linear_export(void *self, const flow_call *c, flow_export *ex)
{
    linear *l = self;
    size_t d = l->d, sq[2] = {d, d}, vec[1] = {d};
    flow_real *buf = NULL;
    const double *src[3];
    static const char *const name[3] = {"lower", "upper", "weight"};
    int rc;
    if ((rc = linear_prepare(self, c)) != FLOW_OK)
        return rc;
    if (!(buf = l->host->alloc(d * d * sizeof *buf)))
        return l->host->error(c, "out of memory");
    src[0] = l->L;
    src[1] = l->U;
    src[2] = l->W;
    for (int k = 0; k < 3 && rc == FLOW_OK; k++) {
        for (size_t i = 0; i < d * d; i++)
            buf[i] = (flow_real)src[k][i];
        rc = ex->tensor(ex, name[k], FLOW_DTYPE_REAL, 2, sq, buf);
    }
    l->host->free(buf);
    if (rc == FLOW_OK)
        rc = ex->tensor(ex, "log_diag", FLOW_DTYPE_REAL, 1, vec,
                        c->params + 2 * l->nl);
    if (rc == FLOW_OK)
        rc = ex->tensor(ex, "bias", FLOW_DTYPE_REAL, 1, vec,
                        c->params + d * d);
    return rc ? rc : common_export_i64(l->host, c, ex, "perm", l->p, d);
}

static const flow_layer_type linear_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "linear",
    .summary = "invertible linear map in LU form (P L U x + b)",
    .attrs = linear_attrs,
    .describe = linear_describe,
    .create = linear_create,
    .destroy = linear_destroy,
    .forward = linear_forward,
    .inverse = linear_inverse,
    .forward_backward = linear_forward_backward,
    .inverse_backward = linear_inverse_backward,
    .prepare = linear_prepare,
    .finish_grad = linear_finish_grad,
    .export_tensors = linear_export,
};

static const flow_layer_type conv1x1_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "conv1x1",
    .summary = "invertible 1x1 convolution on images: the same LU-form "
               "C x C map at every pixel (Glow)",
    .attrs = linear_attrs,
    .describe = conv1x1_describe,
    .create = conv1x1_create,
    .destroy = linear_destroy,
    .forward = linear_forward,
    .inverse = linear_inverse,
    .forward_backward = linear_forward_backward,
    .inverse_backward = linear_inverse_backward,
    .prepare = linear_prepare,
    .finish_grad = linear_finish_grad,
    .export_tensors = linear_export,
};

FLOW_PLUGIN_LAYERS("linear", FLOW_VERSION_STRING,
                   "LU-parametrised invertible linear layers", &linear_type,
                   &conv1x1_type);
