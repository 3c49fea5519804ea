/* common.h - shared by the bundled plugins (compiled into each .so; not
 * installed): transformer and activation attributes, seeded orders,
 * workspace carving. */
#ifndef FLOW_PLUGINS_COMMON_H
#define FLOW_PLUGINS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flow/flow_plugin.h"

/* --- transformer = affine(scale) | additive | spline(...) ------------- */

enum { TF_ALT_AFFINE, TF_ALT_ADDITIVE, TF_ALT_SPLINE };
enum { AFF_SCALE };
enum { AFF_SCALE_EXP, AFF_SCALE_SIGMOID };

static const char *const affine_scale_names[] = {"exp", "sigmoid", NULL};

static const flow_attr_spec affine_attrs[] = {
    {.name = "scale", .type = FLOW_ATTR_ENUM,
     .doc = "exp: exp(5 tanh(s / 5)) (RealNVP, softly clamped); sigmoid: "
            "sigma(s + 2) (Glow), floored at e^-5",
     .def_int = AFF_SCALE_EXP, .enum_values = affine_scale_names},
    {0}};
enum { SPL_BINS, SPL_BOUND, SPL_MIN_WIDTH, SPL_MIN_HEIGHT, SPL_MIN_DERIV };

static const flow_attr_spec spline_attrs[] = {
    {.name = "bins", .type = FLOW_ATTR_INT, .doc = "number of bins K",
     .def_int = 8, .has_min = 1, .min = 1, .has_max = 1, .max = 128},
    {.name = "bound", .type = FLOW_ATTR_REAL,
     .doc = "the spline acts on [-B, B]; identity (linear tails) outside",
     .def_real = 3.0, .has_min = 1, .min = 1e-6, .has_max = 1, .max = 1e6},
    {.name = "min_width", .type = FLOW_ATTR_REAL,
     .doc = "smallest bin width as a fraction of 2B", .def_real = 1e-3,
     .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {.name = "min_height", .type = FLOW_ATTR_REAL,
     .doc = "smallest bin height as a fraction of 2B", .def_real = 1e-3,
     .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {.name = "min_deriv", .type = FLOW_ATTR_REAL,
     .doc = "smallest knot derivative", .def_real = 1e-3,
     .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {0}};

static const flow_variant_alt transformer_alts[] = {
    {.name = "affine", .doc = "z = x * scale(s) + t (RealNVP); scale = "
                              "exp(5 tanh(s / 5)), or Glow's sigma(s + 2) "
                              "(floored at e^-5) with scale = sigmoid",
     .attrs = affine_attrs},
    {.name = "additive", .doc = "z = x + t (NICE), volume preserving"},
    {.name = "spline", .doc = "monotone rational-quadratic spline with "
                              "linear tails (Durkan et al. 2019)",
     .attrs = spline_attrs},
    {0}};

#define TRANSFORMER_ATTR(default_text) \
    {.name = "transformer", .type = FLOW_ATTR_VARIANT, \
     .doc = "affine(scale) | additive | spline(bins, bound, " \
            "min_width, min_height, min_deriv)", \
     .def_str = default_text, .alternatives = transformer_alts}

/* Fills tf from the resolved variant; 0, or -1 with diag set. */
static inline int common_make_tf(const flow_attr_value *v, int attr,
                                 flow_tf *tf, flow_diag *diag)
{
    memset(tf, 0, sizeof *tf);
    tf->struct_size = sizeof *tf;
    switch (v->i) {
    case TF_ALT_AFFINE:
        /* sub may be NULL from a caller of the C API that built the
         * values by hand: every sub-attribute defaulted */
        tf->kind = v->sub && v->sub[AFF_SCALE].i == AFF_SCALE_SIGMOID
                   ? FLOW_TF_AFFINE_SIGMOID : FLOW_TF_AFFINE;
        return 0;
    case TF_ALT_ADDITIVE:
        tf->kind = FLOW_TF_ADDITIVE;
        return 0;
    case TF_ALT_SPLINE: {
        const flow_attr_value *s = v->sub;
        tf->kind = FLOW_TF_SPLINE;
        tf->bins = (uint32_t)s[SPL_BINS].i;
        tf->bound = s[SPL_BOUND].r;
        tf->min_width = s[SPL_MIN_WIDTH].r;
        tf->min_height = s[SPL_MIN_HEIGHT].r;
        tf->min_deriv = s[SPL_MIN_DERIV].r;
        diag->attr = attr;
        if ((double)tf->bins * tf->min_width >= 1) {
            snprintf(diag->message, sizeof diag->message, "spline: bins * "
                     "min_width = %u * %g >= 1 leaves no room for the "
                     "learned widths", tf->bins, tf->min_width);
            snprintf(diag->help, sizeof diag->help, "use fewer bins or a "
                     "smaller min_width");
            return -1;
        }
        if ((double)tf->bins * tf->min_height >= 1) {
            snprintf(diag->message, sizeof diag->message, "spline: bins * "
                     "min_height = %u * %g >= 1 leaves no room for the "
                     "learned heights", tf->bins, tf->min_height);
            snprintf(diag->help, sizeof diag->help, "use fewer bins or a "
                     "smaller min_height");
            return -1;
        }
        if (tf->min_deriv >= 1) {
            snprintf(diag->message, sizeof diag->message, "spline: "
                     "min_deriv must be < 1, got %g", tf->min_deriv);
            return -1;
        }
        diag->attr = -1;
        return 0;
    }
    }
    snprintf(diag->message, sizeof diag->message, "unknown transformer");
    return -1;
}

static inline const char *common_tf_cert(const flow_tf *tf)
{
    switch (tf->kind) {
    case FLOW_TF_AFFINE:
        return "monotone affine, scale exp(5 tanh(s/5)) > 0";
    case FLOW_TF_AFFINE_SIGMOID:
        return "monotone affine, scale e^-5 + (1 - e^-5) sigmoid(s + 2) "
               "> 0";
    case FLOW_TF_ADDITIVE:
        return "additive shift, volume preserving";
    default:
        return "monotone rational-quadratic spline, positive derivatives";
    }
}

/* --- activation ------------------------------------------------------- */

static const char *const activation_names[] = {
    "relu", "leaky_relu", "tanh", "elu", "softplus", NULL};
static const flow_activation activation_values[] = {
    FLOW_ACT_RELU, FLOW_ACT_LEAKY_RELU, FLOW_ACT_TANH, FLOW_ACT_ELU,
    FLOW_ACT_SOFTPLUS};

#define ACTIVATION_ATTR(default_index) \
    {.name = "activation", .type = FLOW_ATTR_ENUM, \
     .doc = "relu | leaky_relu | tanh | elu | softplus", \
     .def_int = (default_index), .enum_values = activation_names}

#define HIDDEN_ATTR(default_text) \
    {.name = "hidden", .type = FLOW_ATTR_INT_LIST, \
     .doc = "hidden layer widths of the conditioner", \
     .def_str = default_text, .has_min = 1, .min = 1, .has_max = 1, \
     .max = 65536, .max_len = 64}

/* --- seeded permutations: permute's and linear's random(seed), the
 * autoregressive layers' order = random(seed) ------------------------- */

/* splitmix64 (Steele, Lea & Flood 2014): a portable, seedable stream, so
 * that a seed gives the same permutation on every machine. */
static inline uint64_t common_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* p = a permutation of 0..d-1 by Fisher-Yates from the stream of seed. */
static inline void common_shuffle(int32_t *p, size_t d, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < d; i++)
        p[i] = (int32_t)i;
    for (size_t i = d; i > 1; i--) {
        size_t j = (size_t)(common_splitmix64(&s) % i);
        int32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

/* --- portable export (1.6) --------------------------------------------- */

/* A conditioner and its transformer, for export_tensors(): the net's
 * weights as "net.{k}.*" with the attribute "net" (layout: the text
 * saying which output is which transformer parameter), and the attribute
 * "transformer".  FLOW_ERR_UNSUPPORTED on a host without the entries. */
static inline int common_export_net_tf(const flow_host *h,
                                       const flow_call *c,
                                       const flow_net *net,
                                       const flow_tf *tf, const char *layout,
                                       flow_export *ex)
{
    int rc;
    if (!FLOW_HOST_HAS(h, tf_export) || !h->net_export || !h->tf_export)
        return h->error(c, "this host cannot export networks (flowkit "
                        "older than plugin ABI 1.6)");
    if ((rc = h->net_export(net, c->params, "net", layout, ex)) != FLOW_OK)
        return rc;
    return h->tf_export(tf, "transformer", ex);
}

/* A vector of D int32 values as an I64 tensor `name` [D]. */
static inline int common_export_i64(const flow_host *h, const flow_call *c,
                                    flow_export *ex, const char *name,
                                    const int32_t *v, size_t d)
{
    int64_t *buf = (int64_t *)h->alloc(d * sizeof *buf + 1);
    size_t shape[1];
    int rc;
    if (!buf)
        return h->error(c, "out of memory");
    for (size_t i = 0; i < d; i++)
        buf[i] = v[i];
    shape[0] = d;
    rc = ex->tensor(ex, name, FLOW_DTYPE_I64, 1, shape, buf);
    h->free(buf);
    return rc;
}

/* --- workspace carving -------------------------------------------------- */

/* Names parameter tensor i (1.5; storage order, counts summing to
 * n_params) when the host's descriptor has the fields and room for it;
 * n_tensors counts every tensor named, written or not. */
/* A fixed permutation of each of n rows of d values (permute, squeeze):
 * gather writes out[r, i] = in[r, perm[i]] (the forward map, and the
 * inverse map's VJP), scatter out[r, perm[i]] = in[r, i] (the inverse
 * map, and the forward map's VJP). */
static inline void common_gather(const int32_t *perm, size_t d, size_t n,
                                 const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            out[r * d + i] = in[r * d + (size_t)perm[i]];
}

static inline void common_scatter(const int32_t *perm, size_t d, size_t n,
                                  const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++)
            out[r * d + (size_t)perm[i]] = in[r * d + i];
}

static inline void common_tensor(flow_layer_desc *out, size_t i,
                                 const char *name, size_t count,
                                 uint32_t flags)
{
    if (out->struct_size < sizeof *out)
        return;
    if (out->tensors && i < out->tensors_cap) {
        out->tensors[i].name = name;
        out->tensors[i].count = count;
        out->tensors[i].flags = flags;
    }
    if (out->n_tensors < i + 1)
        out->n_tensors = i + 1;
}

#define COMMON_ALIGN 64

static inline size_t common_round(size_t b)
{
    return (b + COMMON_ALIGN - 1) / COMMON_ALIGN * COMMON_ALIGN;
}

/* Takes `count` flow_reals from *cursor (64-byte aligned). */
static inline flow_real *common_take(char **cursor, size_t count)
{
    flow_real *p = (flow_real *)(void *)*cursor;
    *cursor += common_round(count * sizeof(flow_real));
    return p;
}

/* Bytes for `count` flow_reals, overflow-checked (SIZE_MAX on overflow). */
static inline size_t common_bytes(size_t count)
{
    if (count > (SIZE_MAX - COMMON_ALIGN) / sizeof(flow_real))
        return SIZE_MAX / 2;
    return common_round(count * sizeof(flow_real));
}

#endif
