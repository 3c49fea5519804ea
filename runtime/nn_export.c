/* nn_export.c - portable export of the host's networks and elementwise
 * transformers (host entries net_export, tf_export; docs/export.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv.h"
#include "json.h"
#include "matrix.h"
#include "nn_impl.h"
#include "transform.h"

static const char *act_name(flow_activation a)
{
    switch (a) {
    case FLOW_ACT_IDENTITY: return "identity";
    case FLOW_ACT_RELU: return "relu";
    case FLOW_ACT_LEAKY_RELU: return "leaky_relu";
    case FLOW_ACT_TANH: return "tanh";
    case FLOW_ACT_ELU: return "elu";
    case FLOW_ACT_SOFTPLUS: return "softplus";
    case FLOW_ACT_SIGMOID: return "sigmoid";
    }
    return "?";
}

static const char *time_name(flow_time_mode t)
{
    return t == FLOW_TIME_CONCAT ? "concat"
           : t == FLOW_TIME_CONCATSQUASH ? "concatsquash" : "none";
}

/* The weights of layer l as the forward pass uses them (rows x cols):
 * masked (MADE, M o W) and, with spectral normalisation, times
 * min(1, c / sigma) with sigma exact, as derive_weights in nn.c. */
static int used_weights(const flow_net *net, const flow_real *params,
                        size_t l, flow_real *dst)
{
    const nn_layer *ly = &net->layer[l];
    size_t sz = ly->out * ly->cols;
    nn_masked_weights(net, params, l, dst);
    if (net->sn > 0) {
        double sigma = 0, scale, *uv;
        void *scratch;
        int st;
        uv = malloc((ly->out + ly->cols) * sizeof *uv);
        scratch = malloc(la_top_singular_scratch(ly->out, ly->cols) + 8);
        if (!uv || !scratch) {
            free(uv);
            free(scratch);
            return FLOW_ERR_NOMEM;
        }
        st = la_top_singular(ly->out, ly->cols, dst, &sigma, uv,
                             uv + ly->out, scratch);
        free(uv);
        free(scratch);
        if (st != FLOW_OK)
            return st;
        scale = sigma > net->sn ? net->sn / sigma : 1.0;
        if (scale != 1.0)
            for (size_t i = 0; i < sz; i++)
                dst[i] = (flow_real)(dst[i] * scale);
    }
    return FLOW_OK;
}

/* One affine map k of the net: weight [out, in] (the time column, if
 * any, apart), bias, the MADE mask and the time terms. */
static int export_layer(const flow_net *net, const flow_real *params,
                        size_t l, const char *prefix, flow_export *ex)
{
    const nn_layer *ly = &net->layer[l];
    char name[256];
    size_t shape[2] = {ly->out, ly->in};
    flow_real *w = malloc(ly->out * ly->cols * sizeof *w);
    flow_real *wi = malloc(ly->out * ly->in * sizeof *wi + 1);
    uint8_t *mk = NULL;
    int rc;
    if (!w || !wi) {
        rc = FLOW_ERR_NOMEM;
        goto out;
    }
    if ((rc = used_weights(net, params, l, w)) != FLOW_OK)
        goto out;
    for (size_t r = 0; r < ly->out; r++)
        memcpy(wi + r * ly->in, w + r * ly->cols, ly->in * sizeof *wi);
    snprintf(name, sizeof name, "%s.%zu.weight", prefix, l);
    if ((rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 2, shape, wi)))
        goto out;
    snprintf(name, sizeof name, "%s.%zu.bias", prefix, l);
    if ((rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 1, shape,
                         params + ly->b_off)))
        goto out;
    if (net->mask) {
        const uint8_t *m = net->mask + ly->m_off;
        if (!(mk = malloc(ly->out * ly->in + 1))) {
            rc = FLOW_ERR_NOMEM;
            goto out;
        }
        for (size_t r = 0; r < ly->out; r++)
            memcpy(mk + r * ly->in, m + r * ly->cols, ly->in);
        snprintf(name, sizeof name, "%s.%zu.mask", prefix, l);
        if ((rc = ex->tensor(ex, name, FLOW_DTYPE_U8, 2, shape, mk)))
            goto out;
    }
    if (net->time == FLOW_TIME_CONCAT) {
        for (size_t r = 0; r < ly->out; r++)
            wi[r] = w[r * ly->cols + ly->in];
        snprintf(name, sizeof name, "%s.%zu.time_weight", prefix, l);
        rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 1, shape, wi);
    } else if (net->time == FLOW_TIME_CONCATSQUASH) {
        static const char *const part[3] = {"gate_weight", "gate_bias",
                                            "time_bias"};
        const size_t off[3] = {ly->ga_off, ly->gc_off, ly->gd_off};
        for (int i = 0; i < 3 && rc == FLOW_OK; i++) {
            snprintf(name, sizeof name, "%s.%zu.%s", prefix, l, part[i]);
            rc = ex->tensor(ex, name, FLOW_DTYPE_REAL, 1, shape,
                            params + off[i]);
        }
    }
out:
    free(w);
    free(wi);
    free(mk);
    return rc;
}

int nn_export_describe(json_buf *b, const char *prefix,
                       const char *output_layout, flow_export *ex)
{
    int rc;
    if (output_layout) {
        json_buf_raw(b, ", \"output_layout\": ", 19);
        json_buf_string(b, output_layout, strlen(output_layout));
    }
    json_buf_raw(b, "}", 1);
    rc = b->oom ? FLOW_ERR_NOMEM : ex->attr(ex, prefix, b->s);
    json_buf_free(b);
    return rc;
}

int nn_export(const flow_net *net, const flow_real *params,
              const char *prefix, const char *output_layout, flow_export *ex)
{
    json_buf b;
    int rc = FLOW_OK;
    if (!net || !params || !prefix || !ex)
        return FLOW_ERR_INVAL;
    if (net->conv)
        return conv_net_export(net->conv, params, prefix, output_layout, ex);
    for (size_t l = 0; l < net->n_layers && rc == FLOW_OK; l++)
        rc = export_layer(net, params, l, prefix, ex);
    if (rc != FLOW_OK)
        return rc;
    json_buf_init(&b);
    json_buf_printf(&b, "{\"kind\": \"%s\", \"activation\": \"%s\", "
                    "\"act_param\": %.17g, \"hidden\": [",
                    net->kind == FLOW_NET_MADE ? "made" : "mlp",
                    act_name(net->act), net->slope);
    for (size_t l = 0; l + 1 < net->n_layers; l++)
        json_buf_printf(&b, "%s%zu", l ? ", " : "", net->layer[l].out);
    json_buf_printf(&b, "], \"layers\": %zu, \"in\": %zu, \"context\": %zu, "
                    "\"out\": %zu", net->n_layers, net->d, net->k,
                    net->y_width);
    if (net->kind == FLOW_NET_MADE)
        json_buf_printf(&b, ", \"outputs_per_dim\": %zu", net->out);
    json_buf_printf(&b, ", \"time\": \"%s\", \"spectral_norm\": %.17g",
                    time_name(net->time), net->sn);
    return nn_export_describe(&b, prefix, output_layout, ex);
}

int tf_export(const flow_tf *tf, const char *key, flow_export *ex)
{
    tf_cfg c;
    char buf[1024];
    if (!key || !ex || tf_resolve(tf, &c) != FLOW_OK)
        return FLOW_ERR_INVAL;
    switch (c.kind) {
    case FLOW_TF_AFFINE:
        snprintf(buf, sizeof buf, "{\"kind\": \"affine\", "
                 "\"params_per_scalar\": 2, \"layout\": \"s, t\", "
                 "\"clamp\": %.17g}", TF_AFFINE_CLAMP);
        break;
    case FLOW_TF_AFFINE_SIGMOID:
        /* its own kind, so that a reader knowing only the exp scale
         * refuses it instead of reading it as one */
        snprintf(buf, sizeof buf, "{\"kind\": \"affine_sigmoid\", "
                 "\"params_per_scalar\": 2, \"layout\": \"s, t\", "
                 "\"shift\": %.17g, \"min_scale\": %.17g}",
                 TF_SIGMOID_SHIFT, TF_SIGMOID_MIN);
        break;
    case FLOW_TF_ADDITIVE:
        snprintf(buf, sizeof buf, "{\"kind\": \"additive\", "
                 "\"params_per_scalar\": 1, \"layout\": \"t\"}");
        break;
    default:
        snprintf(buf, sizeof buf, "{\"kind\": \"spline\", "
                 "\"params_per_scalar\": %zu, \"layout\": \"K width "
                 "logits, K height logits, K-1 derivative params\", "
                 "\"bins\": %zu, \"bound\": %.17g, \"min_bin_width\": %.17g, "
                 "\"min_bin_height\": %.17g, \"min_derivative\": %.17g, "
                 "\"derivative_shift\": %.17g}", c.n_theta, c.bins, c.bound,
                 c.min_w, c.min_h, c.min_d, c.d_shift);
    }
    return ex->attr(ex, key, buf);
}
