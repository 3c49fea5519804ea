/* testlayers.c - test-only plugin for the compiler: layer types with rich
 * attribute tables and every dependency kind.  forward/inverse are
 * identity stubs: these types exist to exercise the compiler and verifier,
 * never to train.  Types: tcoupling, tmaf, tresidual, tbroken,
 * tbaddefault. */
#include <stdio.h>
#include <string.h>

#include "flow/flow_plugin.h"

/* --- shared stubs ------------------------------------------------------ */

static int stub_token;

static void *stub_create(const flow_host *host, const flow_layer_config *cfg,
                         flow_diag *diag)
{
    (void)host, (void)cfg, (void)diag;
    return &stub_token;
}

static void stub_destroy(void *self) { (void)self; }

static int stub_map(void *self, const flow_call *c, const flow_real *in,
                    flow_real *out, flow_real *logdet)
{
    (void)self;
    memcpy(out, in, c->n * c->dim * sizeof *out);
    memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

/* Parameters of an MLP in -> hidden... -> out (weights and biases). */
static size_t mlp_params(size_t in, const flow_attr_value *hidden,
                         size_t out)
{
    size_t total = 0, prev = in;
    for (size_t i = 0; i < hidden->n; i++) {
        total += (prev + 1) * (size_t)hidden->ilist[i];
        prev = (size_t)hidden->ilist[i];
    }
    return total + (prev + 1) * out;
}

static const flow_attr_spec hidden_spec = {
    .name = "hidden", .type = FLOW_ATTR_INT_LIST,
    .doc = "hidden layer widths of the conditioner", .def_str = "[64, 64]",
    .has_min = 1, .min = 1, .has_max = 1, .max = 65536, .min_len = 1,
    .max_len = 8};

/* --- tcoupling --------------------------------------------------------- */

enum { C_MASK, C_HIDDEN, C_TRANSFORMER };
enum { M_PARITY, M_HALF, M_FIRST, M_BITS };
enum { T_AFFINE, T_ADDITIVE, T_SPLINE };

static const flow_attr_spec parity_attrs[] = {
    {.name = "i", .type = FLOW_ATTR_INT, .doc = "transform dims j with "
     "j % 2 == i", .def_int = 0, .has_min = 1, .min = 0, .has_max = 1,
     .max = 1},
    {0}};
static const flow_attr_spec first_attrs[] = {
    {.name = "k", .type = FLOW_ATTR_INT, .doc = "transform dims 0..k-1",
     .required = 1, .has_min = 1, .min = 1},
    {0}};
static const flow_attr_spec bits_attrs[] = {
    {.name = "bits", .type = FLOW_ATTR_INT_LIST, .doc = "1 = transformed",
     .required = 1, .has_min = 1, .min = 0, .has_max = 1, .max = 1,
     .min_len = 1},
    {0}};
static const flow_variant_alt mask_alts[] = {
    {.name = "parity", .doc = "alternate dimensions", .attrs = parity_attrs},
    {.name = "half", .doc = "transform the second half"},
    {.name = "first", .doc = "transform the first k", .attrs = first_attrs},
    {.name = "bits", .doc = "explicit 0/1 mask; a bare list means this",
     .attrs = bits_attrs, .bare_list = 1},
    {0}};

static const flow_attr_spec spline_attrs[] = {
    {.name = "bins", .type = FLOW_ATTR_INT, .doc = "number of bins K",
     .def_int = 8, .has_min = 1, .min = 2, .has_max = 1, .max = 256},
    {.name = "bound", .type = FLOW_ATTR_REAL, .doc = "tails outside [-B, B]",
     .def_real = 3.0, .has_min = 1, .min = 1e-6},
    {.name = "min_width", .type = FLOW_ATTR_REAL, .doc = "bin width floor",
     .def_real = 1e-3, .has_min = 1, .min = 0, .has_max = 1, .max = 1},
    {0}};
static const flow_variant_alt tf_alts[] = {
    {.name = "affine", .doc = "scale and shift"},
    {.name = "additive", .doc = "shift only (volume preserving)"},
    {.name = "spline", .doc = "rational-quadratic spline",
     .attrs = spline_attrs},
    {0}};

static const flow_attr_spec coupling_attrs[] = {
    {.name = "mask", .type = FLOW_ATTR_VARIANT, .required = 1,
     .doc = "which dimensions are transformed", .alternatives = mask_alts},
    hidden_spec,
    {.name = "transformer", .type = FLOW_ATTR_VARIANT,
     .doc = "elementwise transformer", .def_str = "affine",
     .alternatives = tf_alts},
    {0}};

static int coupling_describe(const flow_layer_config *cfg,
                             flow_layer_desc *out, flow_diag *diag)
{
    const flow_attr_value *mask = &cfg->attrs[C_MASK];
    const flow_attr_value *tf = &cfg->attrs[C_TRANSFORMER];
    size_t d = cfg->dim, t = 0, per = 2;

    switch (mask->i) {
    case M_PARITY:
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int64_t)(j % 2) == mask->sub[0].i;
        break;
    case M_HALF:
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = j >= d / 2;
        break;
    case M_FIRST:
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int64_t)j < mask->sub[0].i;
        break;
    case M_BITS:
        if (mask->sub[0].n != d) {
            diag->attr = C_MASK;
            snprintf(diag->message, sizeof diag->message, "mask has %zu "
                     "entries but the layer's input has %zu dimensions",
                     mask->sub[0].n, d);
            return FLOW_ERR_INVAL;
        }
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int32_t)mask->sub[0].ilist[j];
        break;
    }
    for (size_t j = 0; j < d; j++)
        t += out->dep_vec[j] == 1;
    if (tf->i == T_SPLINE) {
        int64_t bins = tf->sub[0].i;
        double mw = tf->sub[2].r;
        /* the K bins need room for their floors: K * min_width < 1 */
        if ((double)bins * mw >= 1.0) {
            diag->attr = C_TRANSFORMER;
            snprintf(diag->message, sizeof diag->message, "spline needs "
                     "bins * min_width < 1 (got %lld * %g = %g)",
                     (long long)bins, mw, (double)bins * mw);
            snprintf(diag->help, sizeof diag->help, "lower min_width below "
                     "%g", 1.0 / (double)bins);
            return FLOW_ERR_INVAL;
        }
        per = 3 * (size_t)bins - 1;
    } else if (tf->i == T_ADDITIVE) {
        per = 1;
    }
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE;
    out->n_params = mlp_params(d - t + cfg->context_dim, &cfg->attrs[C_HIDDEN],
                               t * per);
    out->jac = FLOW_JAC_COUPLING;
    out->dep = FLOW_DEP_COUPLING;
    out->cert = tf->i == T_ADDITIVE ? FLOW_CERT_STRUCTURAL
                                    : FLOW_CERT_MONOTONE;
    out->cert_text = tf->i == T_SPLINE ? "monotone RQ spline"
                   : tf->i == T_AFFINE ? "positive scale" : "additive shift";
    out->cost_forward = (flow_cost){1, 0, 0.0};
    out->cost_inverse = (flow_cost){1, 0, 0.0};
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* --- tmaf -------------------------------------------------------------- */

enum { A_ORDER, A_HIDDEN };
enum { O_NATURAL, O_REVERSE, O_RANDOM, O_EXPLICIT };

static const flow_attr_spec random_attrs[] = {
    {.name = "seed", .type = FLOW_ATTR_INT, .doc = "shuffle seed",
     .def_int = 0, .has_min = 1, .min = 0},
    {0}};
static const flow_attr_spec explicit_attrs[] = {
    {.name = "order", .type = FLOW_ATTR_INT_LIST, .required = 1,
     .doc = "degree of each dimension", .min_len = 1},
    {0}};
static const flow_variant_alt order_alts[] = {
    {.name = "natural", .doc = "0, 1, ..., D-1"},
    {.name = "reverse", .doc = "D-1, ..., 0"},
    {.name = "random", .doc = "seeded shuffle", .attrs = random_attrs},
    {.name = "explicit", .doc = "given degrees; a bare list means this",
     .attrs = explicit_attrs, .bare_list = 1},
    {0}};
static const flow_attr_spec maf_attrs[] = {
    {.name = "order", .type = FLOW_ATTR_VARIANT, .doc = "autoregressive "
     "order", .def_str = "natural", .alternatives = order_alts},
    hidden_spec,
    {0}};

static int maf_describe(const flow_layer_config *cfg, flow_layer_desc *out,
                        flow_diag *diag)
{
    const flow_attr_value *order = &cfg->attrs[A_ORDER];
    size_t d = cfg->dim;
    uint64_t s;
    switch (order->i) {
    case O_NATURAL:
    case O_REVERSE:
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int32_t)(order->i == O_NATURAL ? j
                                                              : d - 1 - j);
        break;
    case O_RANDOM:
        s = (uint64_t)order->sub[0].i * 2654435761u + 1;
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int32_t)j;
        for (size_t j = d; j > 1; j--) {
            size_t k;
            int32_t tmp;
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            k = (size_t)((s >> 33) % j);
            tmp = out->dep_vec[j - 1];
            out->dep_vec[j - 1] = out->dep_vec[k];
            out->dep_vec[k] = tmp;
        }
        break;
    case O_EXPLICIT:
        if (order->sub[0].n != d) {
            diag->attr = A_ORDER;
            snprintf(diag->message, sizeof diag->message, "order has %zu "
                     "entries but the layer's input has %zu dimensions",
                     order->sub[0].n, d);
            return FLOW_ERR_INVAL;
        }
        /* copied unchecked: the verifier proves it is a permutation */
        for (size_t j = 0; j < d; j++)
            out->dep_vec[j] = (int32_t)order->sub[0].ilist[j];
        break;
    }
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE;
    out->n_params = mlp_params(d + cfg->context_dim, &cfg->attrs[A_HIDDEN],
                               2 * d);
    out->jac = FLOW_JAC_TRIANGULAR;
    out->dep = FLOW_DEP_ORDER;
    out->cert = FLOW_CERT_MONOTONE;
    out->cert_text = "positive scale";
    out->cost_forward = (flow_cost){1, 0, 0.0};
    out->cost_inverse = (flow_cost){(uint32_t)d, 1, 0.0};
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* --- tresidual --------------------------------------------------------- */

enum { R_COEFF, R_ACT, R_HIDDEN };
static const char *const act_names[] = {"relu", "tanh", "elu", "sigmoid",
                                        NULL};
static const double act_lip[] = {1.0, 1.0, 1.0, 0.25};

static const flow_attr_spec residual_attrs[] = {
    {.name = "coeff", .type = FLOW_ATTR_REAL, .doc = "spectral norm bound of "
     "each weight", .def_real = 0.9, .has_min = 1, .min = 0, .has_max = 1,
     .max = 10},
    {.name = "activation", .type = FLOW_ATTR_ENUM, .doc = "nonlinearity",
     .def_int = 1, .enum_values = act_names},
    hidden_spec,
    {0}};

static int residual_describe(const flow_layer_config *cfg,
                             flow_layer_desc *out, flow_diag *diag)
{
    size_t d = cfg->dim;
    (void)diag;
    for (size_t j = 0; j < d; j++)
        out->dep_vec[j] = 0;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_STOCHASTIC;
    out->n_params = mlp_params(d + cfg->context_dim, &cfg->attrs[R_HIDDEN],
                               d);
    out->jac = FLOW_JAC_RESIDUAL;
    out->dep = FLOW_DEP_DENSE;
    out->cert = FLOW_CERT_LIPSCHITZ;
    /* Lip(g) <= prod of layer norms * Lip(act) (Behrmann et al. 2019) */
    out->cert_value = cfg->attrs[R_COEFF].r * act_lip[cfg->attrs[R_ACT].i];
    out->cert_text = "spectral normalisation";
    out->cost_forward = (flow_cost){5, 0, 0.0};
    out->cost_inverse = (flow_cost){20, 1, 0.0};
    out->logdet_exact = 0;
    return FLOW_OK;
}

/* --- tbroken ----------------------------------------------------------- */

/* Declares structures the verifier must judge: lower and upper are valid
 * triangular patterns (upper is triangular under the reverse ordering);
 * the rest are broken. */
enum { B_LOWER, B_UPPER, B_CYCLE, B_ZERO_DIAG, B_DENSE, B_BAD_ORDER,
       B_BAD_PERM, B_BAD_MASK, B_BAD_CLASS, B_RESIDUAL_NO_CERT, B_FAIL,
       B_BAD_SHAPE };
static const char *const mode_names[] = {
    "lower", "upper", "cycle", "zero_diag", "dense", "bad_order",
    "bad_perm", "bad_mask", "bad_class", "residual_no_cert", "fail",
    "bad_shape", NULL};

static const flow_attr_spec broken_attrs[] = {
    {.name = "mode", .type = FLOW_ATTR_ENUM, .doc = "declared structure",
     .required = 1, .enum_values = mode_names},
    {.name = "label", .type = FLOW_ATTR_STRING, .doc = "free text",
     .def_str = ""},
    {.name = "flag", .type = FLOW_ATTR_BOOL, .doc = "unused switch"},
    {.name = "scales", .type = FLOW_ATTR_REAL_LIST, .doc = "unused list",
     .def_str = "[0.5, 1]", .has_min = 1, .min = 0, .max_len = 4},
    {0}};

static int broken_describe(const flow_layer_config *cfg,
                           flow_layer_desc *out, flow_diag *diag)
{
    size_t d = cfg->dim;
    int64_t mode = cfg->attrs[0].i;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE;
    out->jac = FLOW_JAC_TRIANGULAR;
    out->dep = FLOW_DEP_MATRIX;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cost_forward = (flow_cost){1, 0, 0.0};
    out->cost_inverse = (flow_cost){1, 0, 0.0};
    out->logdet_exact = 1;
    for (size_t j = 0; j < d; j++)
        out->dep_vec[j] = (int32_t)j;
    switch (mode) {
    case B_DENSE:
        out->dep = FLOW_DEP_DENSE;
        break;
    case B_BAD_ORDER:
        out->dep = FLOW_DEP_ORDER;
        out->dep_vec[d - 1] = 0;
        break;
    case B_BAD_PERM:
        out->dep = FLOW_DEP_PERMUTATION;
        out->dep_vec[0] = (int32_t)d;
        break;
    case B_BAD_MASK:
        out->dep = FLOW_DEP_COUPLING;
        out->dep_vec[0] = 2;
        break;
    case B_BAD_CLASS:
        out->jac = (flow_jac_class)99;
        break;
    case B_RESIDUAL_NO_CERT:
        out->jac = FLOW_JAC_RESIDUAL;
        out->dep = FLOW_DEP_DENSE;
        break;
    case B_BAD_SHAPE:             /* an output of 2D values from D */
        out->out_rank = 2;
        out->out_shape[0] = d;
        out->out_shape[1] = 2;
        break;
    case B_FAIL:
        diag->attr = 1;
        snprintf(diag->message, sizeof diag->message, "refusing on purpose");
        snprintf(diag->help, sizeof diag->help, "pick another mode");
        return FLOW_ERR_INVAL;
    }
    return FLOW_OK;
}

static int broken_matrix(const flow_layer_config *cfg, uint8_t *mat)
{
    size_t d = cfg->dim;
    int64_t mode = cfg->attrs[0].i;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            int v = 0;
            switch (mode) {
            case B_LOWER: v = j <= i; break;
            case B_UPPER: v = j >= i; break;
            case B_CYCLE: v = i == j || j == (i + 1) % d; break;
            case B_ZERO_DIAG: v = j < i || (j == i && i + 1 < d); break;
            default: v = i == j;
            }
            mat[i * d + j] = (uint8_t)v;
        }
    return FLOW_OK;
}

/* --- tbaddefault: a plugin bug the compiler must report, not trust ---- */

static const flow_attr_spec baddefault_attrs[] = {
    {.name = "sizes", .type = FLOW_ATTR_INT_LIST, .doc = "broken default",
     .def_str = "[1, 2"},
    {0}};

static int baddefault_describe(const flow_layer_config *cfg,
                               flow_layer_desc *out, flow_diag *diag)
{
    (void)cfg, (void)diag;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE;
    out->jac = FLOW_JAC_DIAGONAL;
    out->dep = FLOW_DEP_ELEMENTWISE;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->logdet_exact = 1;
    return FLOW_OK;
}

/* --- descriptor -------------------------------------------------------- */

#define TYPE(var, nm, sum, tab, desc, mat)                                   \
    static const flow_layer_type var = {                                     \
        .struct_size = sizeof(flow_layer_type), .name = nm, .summary = sum,  \
        .attrs = tab, .describe = desc, .dep_matrix = mat,                   \
        .create = stub_create, .destroy = stub_destroy,                      \
        .forward = stub_map, .inverse = stub_map}

TYPE(coupling_type, "tcoupling", "test: coupling (identity stub)",
     coupling_attrs, coupling_describe, NULL);
TYPE(maf_type, "tmaf", "test: autoregressive (identity stub)", maf_attrs,
     maf_describe, NULL);
TYPE(residual_type, "tresidual", "test: residual (identity stub)",
     residual_attrs, residual_describe, NULL);
TYPE(broken_type, "tbroken", "test: declared structures to reject",
     broken_attrs, broken_describe, broken_matrix);

TYPE(baddefault_type, "tbaddefault", "test: unparsable default",
     baddefault_attrs, baddefault_describe, NULL);

FLOW_PLUGIN_LAYERS("testlayers", "test",
                   "test-only layer types for the compiler", &coupling_type,
                   &maf_type, &residual_type, &broken_type, &baddefault_type);
