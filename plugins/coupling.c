/* coupling.c - the `coupling` layer: the dimensions of a mask pass through
 * and condition an elementwise transformer of the others (NICE, Dinh et al.
 * 2015, eq. 4; RealNVP, Dinh et al. 2017, eqs. 6-7; neural spline flows,
 * Durkan et al. 2019), with an MLP or, on images, a convolutional
 * conditioner (Glow, Kingma & Dhariwal 2018).  Both directions are one
 * conditioner pass. */
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_TRANSFORMER, ATTR_MASK, ATTR_HIDDEN, ATTR_ACTIVATION,
       ATTR_IDENTITY_INIT, ATTR_NET };
enum { MASK_PARITY, MASK_HALF, MASK_FIRST, MASK_EXPLICIT, MASK_CHANNEL,
       MASK_CHECKERBOARD };
enum { NET_MLP, NET_CONV };
enum { CONV_HIDDEN, CONV_KERNEL, CONV_BLOCKS, CONV_RESIDUAL };

static const flow_attr_spec parity_attrs[] = {
    {.name = "p", .type = FLOW_ATTR_INT, .doc = "transform dimensions j "
     "with j % 2 == p % 2", .def_int = 0, .has_min = 1, .min = 0},
    {0}};
static const flow_attr_spec first_attrs[] = {
    {.name = "k", .type = FLOW_ATTR_INT, .required = 1,
     .doc = "the first k dimensions pass through", .has_min = 1, .min = 1},
    {0}};
static const flow_attr_spec explicit_attrs[] = {
    {.name = "mask", .type = FLOW_ATTR_INT_LIST, .required = 1,
     .doc = "1 = transformed, 0 = passes through", .has_min = 1, .min = 0,
     .has_max = 1, .max = 1, .min_len = 1},
    {0}};
static const flow_attr_spec channel_attrs[] = {
    {.name = "p", .type = FLOW_ATTR_INT, .doc = "p even: the first "
     "floor(C/2) channels pass through; p odd: they are the ones "
     "transformed", .def_int = 0, .has_min = 1, .min = 0},
    {0}};
static const flow_attr_spec checker_attrs[] = {
    {.name = "p", .type = FLOW_ATTR_INT, .doc = "transform the pixels "
     "(h, w) with (h + w) % 2 == p % 2, in every channel", .def_int = 0,
     .has_min = 1, .min = 0},
    {0}};

static const flow_variant_alt mask_alts[] = {
    {.name = "parity", .doc = "alternate dimensions; parity(i) in a repeat "
     "flips the roles each layer", .attrs = parity_attrs},
    {.name = "half", .doc = "the first floor(D/2) pass through, the rest "
     "are transformed"},
    {.name = "first", .doc = "the first k pass through", .attrs = first_attrs},
    {.name = "explicit", .doc = "a 0/1 list, 1 = transformed; a bare list "
     "means this", .attrs = explicit_attrs, .bare_list = 1},
    {.name = "channel", .doc = "image [C, H, W]: whole channels (Glow's "
     "split); p even: channels floor(C/2).. are transformed, p odd: "
     "channels 0..floor(C/2)-1, so channel(i) in a repeat swaps the two "
     "parts exactly", .attrs = channel_attrs},
    {.name = "checkerboard", .doc = "image [C, H, W]: the pixels with (h + "
     "w) % 2 == p % 2 are transformed (RealNVP's checkerboard)",
     .attrs = checker_attrs},
    {0}};

static const flow_attr_spec conv_attrs[] = {
    {.name = "hidden", .type = FLOW_ATTR_INT, .doc = "hidden channels",
     .def_int = 64, .has_min = 1, .min = 1, .has_max = 1, .max = 4096},
    {.name = "kernel", .type = FLOW_ATTR_INT, .doc = "odd size of the "
     "first and last convolutions (same padding)", .def_int = 3,
     .has_min = 1, .min = 1, .has_max = 1, .max = 15},
    {.name = "blocks", .type = FLOW_ATTR_INT, .doc = "1x1 convolution + "
     "ReLU stages in the middle", .def_int = 1, .has_min = 1, .min = 0,
     .has_max = 1, .max = 64},
    {.name = "residual", .type = FLOW_ATTR_BOOL, .doc = "each middle "
     "stage adds its input (h + ReLU(conv h))", .def_int = 0},
    {0}};

static const flow_variant_alt net_alts[] = {
    {.name = "mlp", .doc = "a fully connected net on the conditioning "
     "dimensions (widths `hidden`, activation `activation`)"},
    {.name = "conv", .doc = "Glow's convolutional net (kernel x kernel "
     "conv, ReLU, `blocks` x [1x1 conv, ReLU], kernel x kernel conv); "
     "needs mask = channel or checkerboard; ReLU only; the layer's "
     "`hidden` list (the MLP widths) is not used", .attrs = conv_attrs},
    {0}};

static const flow_attr_spec coupling_attrs[] = {
    TRANSFORMER_ATTR("affine"),
    {.name = "mask", .type = FLOW_ATTR_VARIANT,
     .doc = "which dimensions are transformed: parity(p) | half | first(k) "
            "| [0/1 list] | channel(p) | checkerboard(p)",
     .def_str = "parity(0)", .alternatives = mask_alts},
    HIDDEN_ATTR("[128, 128]"),
    ACTIVATION_ATTR(0),
    {.name = "identity_init", .type = FLOW_ATTR_BOOL,
     .doc = "start as the identity map (zero last conditioner layer)",
     .def_int = 1},
    {.name = "net", .type = FLOW_ATTR_VARIANT,
     .doc = "the conditioner: mlp | conv(hidden, kernel, blocks, residual)",
     .def_str = "mlp", .alternatives = net_alts},
    {0}};

/* With net = conv the conditioner's output is an image of C_o = C_t * P
 * channels (mask channel, C_t transformed channels) or C * P
 * (checkerboard): output channel c * P + p holds transformer parameter p
 * of the c-th transformed channel (in increasing order; checkerboard:
 * channel c) at every pixel, so the transformed scalar j at (c, hw) has
 * theta[j*P + p] = y[(c*P + p) H W + hw] = y[src[j] + p H W].  The net's
 * input is the conditioning channels (mask channel: the gather of the
 * conditioning dimensions, C_c x H x W) or the whole image with the
 * transformed positions set to 0 (checkerboard). */
typedef struct coupling {
    const flow_host *host;
    size_t d, k, dt, dc, np;    /* dims, context, transformed, conditioning */
    size_t *ti, *ci;            /* indices of transformed / conditioning */
    flow_tf tf;
    size_t P;                   /* transformer parameters per scalar */
    flow_net *net;
    int conv;                   /* net = conv                              */
    size_t nin, nout;           /* the net's input and output widths       */
    size_t hw;                  /* conv: pixels per channel                */
    size_t *hi;                 /* net input column of conditioning j      */
    size_t *src;                /* conv: y column of theta[j*P + 0]        */
} coupling;

/* The input's shape as [C, H, W] for the image masks and the conv net;
 * 0, or -1 with diag set (attr = the attribute that asked for it). */
static int image_shape(const flow_layer_config *cfg, const char *what,
                       int attr, size_t shape[4], flow_diag *diag)
{
    size_t r = flow_config_shape(cfg, shape);
    if (r != 3) {
        char got[96] = "";
        size_t len = 0;
        for (size_t i = 0; i < r && len < sizeof got - 24; i++)
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%zu",
                                    i ? ", " : "", shape[i]);
        flow_diag_set(diag, attr, "%s needs an image input [C, H, W]; this "
                      "input is [%s]", what, got);
        snprintf(diag->help, sizeof diag->help, "declare the input as "
                 "real[C, H, W], or use a flat mask (parity, half, first, "
                 "a 0/1 list) with net = mlp");
        return -1;
    }
    return 0;
}

/* mask[i] = 1 when dimension i is transformed; 0 or -1 with diag set. */
static int make_mask(const flow_layer_config *cfg, int32_t *mask,
                     flow_diag *diag)
{
    const flow_attr_value *v = &cfg->attrs[ATTR_MASK];
    size_t d = cfg->dim, nt = 0, shp[4], hw = 1;
    long p = 0;
    diag->attr = ATTR_MASK;
    if (v->i == MASK_CHANNEL || v->i == MASK_CHECKERBOARD) {
        const char *nm = v->i == MASK_CHANNEL ? "mask channel"
                                              : "mask checkerboard";
        if (image_shape(cfg, nm, ATTR_MASK, shp, diag) != 0)
            return -1;
        hw = shp[1] * shp[2];
        p = (long)(v->sub[0].i % 2);
        if (v->i == MASK_CHANNEL && shp[0] < 2) {
            flow_diag_set(diag, ATTR_MASK, "mask channel needs at least 2 "
                          "channels; this input is [%zu, %zu, %zu]", shp[0],
                          shp[1], shp[2]);
            snprintf(diag->help, sizeof diag->help, "squeeze(factor = 2) "
                     "first (4 C channels), or use mask = checkerboard");
            return -1;
        }
        if (v->i == MASK_CHECKERBOARD && hw < 2) {
            flow_diag_set(diag, ATTR_MASK, "mask checkerboard needs at "
                          "least 2 pixels; this input is [%zu, %zu, %zu]",
                          shp[0], shp[1], shp[2]);
            snprintf(diag->help, sizeof diag->help, "use mask = channel");
            return -1;
        }
    }
    for (size_t i = 0; i < d; i++) {
        switch (v->i) {
        case MASK_PARITY:
            mask[i] = (int32_t)(i % 2 == (size_t)(v->sub[0].i % 2));
            break;
        case MASK_HALF:
            mask[i] = i >= d / 2;
            break;
        case MASK_FIRST:
            mask[i] = i >= (size_t)v->sub[0].i;
            break;
        case MASK_EXPLICIT:
            if (v->sub[0].n != d) {
                snprintf(diag->message, sizeof diag->message, "mask has %zu "
                         "entries but the layer's input has %zu dimensions",
                         v->sub[0].n, d);
                return -1;
            }
            mask[i] = v->sub[0].ilist[i] != 0;
            break;
        case MASK_CHANNEL:
            /* Glow's split (Kingma & Dhariwal 2018, sec. 3.3): p even
             * transforms channels floor(C/2).., p odd exactly the others */
            mask[i] = (int32_t)((i / hw >= shp[0] / 2) == (p == 0));
            break;
        case MASK_CHECKERBOARD: {
            /* RealNVP's checkerboard (Dinh et al. 2017, sec. 3.4) */
            size_t pix = i % hw, y = pix / shp[2], x = pix % shp[2];
            mask[i] = (int32_t)((long)((y + x) % 2) == p);
            break;
        }
        }
        nt += (size_t)mask[i];
    }
    if (nt == 0 || nt == d) {
        snprintf(diag->message, sizeof diag->message, "the mask %s: a "
                 "coupling layer needs both a transformed and a "
                 "conditioning part (input has %zu dimension%s)",
                 nt ? "transforms every dimension" : "transforms nothing", d,
                 d == 1 ? "" : "s");
        snprintf(diag->help, sizeof diag->help, d == 1
                 ? "a 1-dimensional input needs an elementwise layer "
                   "(actnorm, logit) instead"
                 : "choose a mask with at least one 0 and one 1");
        return -1;
    }
    diag->attr = -1;
    return 0;
}

static void net_spec(const flow_layer_config *cfg, size_t dc, size_t dt,
                     size_t P, size_t *hidden, flow_net_spec *s)
{
    const flow_attr_value *h = &cfg->attrs[ATTR_HIDDEN];
    memset(s, 0, sizeof *s);
    s->struct_size = sizeof *s;
    s->kind = FLOW_NET_MLP;
    s->in = dc;
    s->context = cfg->context_dim;
    s->out = dt * P;
    s->n_hidden = h->n;
    for (size_t i = 0; i < h->n; i++)
        hidden[i] = (size_t)h->ilist[i];
    s->hidden = hidden;
    s->act = activation_values[cfg->attrs[ATTR_ACTIVATION].i];
    s->zero_last = (int)cfg->attrs[ATTR_IDENTITY_INIT].i;
}

/* The conv net's spec from the mask (dt transformed dimensions) and P;
 * 0, or -1 with diag set. */
static int conv_spec(const flow_layer_config *cfg, size_t dt, size_t P,
                     flow_net_spec *s, flow_diag *diag)
{
    const flow_attr_value *m = &cfg->attrs[ATTR_MASK];
    const flow_attr_value *sub = cfg->attrs[ATTR_NET].sub;
    int64_t act = cfg->attrs[ATTR_ACTIVATION].i;
    size_t shp[4], hw;
    if (image_shape(cfg, "net = conv", ATTR_NET, shp, diag) != 0)
        return -1;
    if (m->i != MASK_CHANNEL && m->i != MASK_CHECKERBOARD) {
        flow_diag_set(diag, ATTR_NET, "net = conv needs mask = channel or "
                      "checkerboard (a mask of whole channels or pixels), "
                      "not %s", mask_alts[m->i].name);
        snprintf(diag->help, sizeof diag->help, "write mask = channel(i) or "
                 "mask = checkerboard(i), or use net = mlp");
        return -1;
    }
    if (activation_values[act] != FLOW_ACT_RELU) {
        flow_diag_set(diag, ATTR_ACTIVATION, "net = conv uses ReLU only, "
                      "not %s", activation_names[act]);
        snprintf(diag->help, sizeof diag->help, "drop the activation "
                 "attribute, or use net = mlp");
        return -1;
    }
    if (sub[CONV_KERNEL].i % 2 == 0) {
        flow_diag_set(diag, ATTR_NET, "net = conv: kernel must be odd "
                      "(same padding), got %lld",
                      (long long)sub[CONV_KERNEL].i);
        return -1;
    }
    if (m->i == MASK_CHECKERBOARD && sub[CONV_KERNEL].i == 1) {
        /* a 1x1 net's output at a pixel sees only that pixel, which a
         * checkerboard zeroed: the coupling would ignore its input */
        flow_diag_set(diag, ATTR_NET, "net = conv with kernel = 1 cannot "
                      "see the conditioning pixels of a checkerboard mask");
        snprintf(diag->help, sizeof diag->help, "use kernel = 3 (or "
                 "larger), or mask = channel");
        return -1;
    }
    hw = shp[1] * shp[2];
    s->kind = FLOW_NET_CONV;
    s->act = FLOW_ACT_RELU;
    s->n_hidden = 0;
    s->hidden = NULL;
    s->channels = m->i == MASK_CHANNEL ? (cfg->dim - dt) / hw : shp[0];
    s->height = shp[1];
    s->width = shp[2];
    s->conv_hidden = (size_t)sub[CONV_HIDDEN].i;
    s->kernel = (size_t)sub[CONV_KERNEL].i;
    s->blocks = (size_t)sub[CONV_BLOCKS].i;
    s->residual = (int)sub[CONV_RESIDUAL].i;
    s->out_channels = (m->i == MASK_CHANNEL ? dt / hw : shp[0]) * P;
    s->in = s->channels * hw;
    s->out = s->out_channels * hw;
    return 0;
}

/* Multiply-adds per row of the conv net: sum over its maps of cout cin
 * k k H W (the context planes count as input channels). */
static double conv_madds(const flow_net_spec *s)
{
    double hw = (double)(s->height * s->width), k2 = (double)(s->kernel *
                                                              s->kernel);
    double hid = (double)s->conv_hidden;
    return hw * (hid * (double)(s->channels + s->context) * k2
                 + (double)s->blocks * hid * hid
                 + (double)s->out_channels * hid * k2);
}

/* Builds the conditioner; NULL with diag set.  spec_out (when not NULL)
 * receives the spec used. */
static flow_net *make_net(const flow_layer_config *cfg, const int32_t *mask,
                          const flow_tf *tf, flow_diag *diag, size_t *P_out,
                          flow_net_spec *spec_out)
{
    const flow_host *h = cfg->host;
    size_t hidden[64], dt = 0, P;
    flow_net_spec spec;
    flow_net *net;
    for (size_t i = 0; i < cfg->dim; i++)
        dt += (size_t)mask[i];
    P = h->tf_params(tf);
    if (P == 0) {
        diag->attr = ATTR_TRANSFORMER;
        snprintf(diag->message, sizeof diag->message, "invalid transformer");
        return NULL;
    }
    net_spec(cfg, cfg->dim - dt, dt, P, hidden, &spec);
    if (cfg->attrs[ATTR_NET].i == NET_CONV
        && conv_spec(cfg, dt, P, &spec, diag) != 0)
        return NULL;
    net = h->net_create(&spec, diag->message, sizeof diag->message);
    if (!net)
        diag->attr = spec.kind == FLOW_NET_CONV ? ATTR_NET : ATTR_HIDDEN;
    *P_out = P;
    if (spec_out) {
        *spec_out = spec;
        spec_out->hidden = NULL;
    }
    return net;
}

static int coupling_describe(const flow_layer_config *cfg,
                             flow_layer_desc *out, flow_diag *diag)
{
    const flow_host *h = cfg->host;
    flow_net_spec spec;
    flow_net *net;
    flow_tf tf;
    size_t P;
    double cost;

    if (!h || !FLOW_HOST_HAS(h, net_create) || !h->net_create) {
        snprintf(diag->message, sizeof diag->message, "this host provides no "
                 "networks (flowkit too old for this plugin)");
        return FLOW_ERR_UNSUPPORTED;
    }
    if (make_mask(cfg, out->dep_vec, diag) != 0
        || common_make_tf(&cfg->attrs[ATTR_TRANSFORMER], ATTR_TRANSFORMER,
                          &tf, diag) != 0)
        return FLOW_ERR_INVAL;
    if (!(net = make_net(cfg, out->dep_vec, &tf, diag, &P, &spec)))
        return FLOW_ERR_INVAL;
    out->n_params = h->net_params(net);
    common_tensor(out, 0, "net", out->n_params, 0);
    h->net_destroy(net);
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->jac = FLOW_JAC_COUPLING;
    /* with a conv net on a checkerboard every transformed output may
     * depend on every conditioning input: the coupling pattern */
    out->dep = FLOW_DEP_COUPLING;
    out->cert = tf.kind == FLOW_TF_ADDITIVE ? FLOW_CERT_STRUCTURAL
                                            : FLOW_CERT_MONOTONE;
    out->cert_text = common_tf_cert(&tf);
    /* an MLP's multiply-adds per row are about its weight count */
    cost = spec.kind == FLOW_NET_CONV ? conv_madds(&spec)
                                      : (double)out->n_params;
    out->cost_forward = (flow_cost){1, 0, cost};
    out->cost_inverse = (flow_cost){1, 0, cost};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void coupling_destroy(void *self)
{
    coupling *c = self;
    if (!c)
        return;
    if (c->net)
        c->host->net_destroy(c->net);
    c->host->free(c->ti);
    c->host->free(c->ci);
    c->host->free(c->hi);
    c->host->free(c->src);
    c->host->free(c);
}

/* The index maps between the layer's row, the net's input and the conv
 * net's output (the layout at struct coupling). */
static void make_maps(coupling *c, const int32_t *mask,
                      const flow_net_spec *spec)
{
    size_t first_t = c->d;
    for (size_t i = 0; i < c->d; i++) {
        if (mask[i]) {
            if (first_t == c->d)
                first_t = i;
            c->ti[c->dt++] = i;
        } else {
            c->ci[c->dc++] = i;
        }
    }
    c->conv = spec->kind == FLOW_NET_CONV;
    c->nin = c->conv ? spec->in : c->dc;
    c->nout = c->conv ? spec->out : c->dt * c->P;
    c->hw = c->conv ? spec->height * spec->width : 1;
    for (size_t j = 0; j < c->dc; j++)
        c->hi[j] = c->nin == c->d ? c->ci[j] : j;
    if (!c->conv)
        return;
    /* mask channel: the transformed channels are the contiguous block
     * from first_t's; checkerboard: every channel (first channel 0) */
    if (c->nin == c->d)
        first_t = 0;
    first_t -= first_t % c->hw;
    for (size_t j = 0; j < c->dt; j++) {
        size_t rel = c->ti[j] - first_t;
        c->src[j] = (rel / c->hw) * c->P * c->hw + rel % c->hw;
    }
}

static void *coupling_create(const flow_host *host,
                             const flow_layer_config *cfg, flow_diag *diag)
{
    coupling *c = host->calloc(1, sizeof *c);
    int32_t *mask = host->calloc(cfg->dim, sizeof *mask);
    flow_net_spec spec;
    if (!c || !mask) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        host->free(mask);
        host->free(c);              /* c->host is not set yet */
        return NULL;
    }
    c->host = host;
    c->d = cfg->dim;
    c->k = cfg->context_dim;
    if (make_mask(cfg, mask, diag) != 0
        || common_make_tf(&cfg->attrs[ATTR_TRANSFORMER], ATTR_TRANSFORMER,
                          &c->tf, diag) != 0
        || !(c->net = make_net(cfg, mask, &c->tf, diag, &c->P, &spec)))
        goto fail;
    c->np = host->net_params(c->net);
    c->ti = host->calloc(c->d, sizeof *c->ti);
    c->ci = host->calloc(c->d, sizeof *c->ci);
    c->hi = host->calloc(c->d, sizeof *c->hi);
    c->src = host->calloc(c->d, sizeof *c->src);
    if (!c->ti || !c->ci || !c->hi || !c->src) {
        snprintf(diag->message, sizeof diag->message, "out of memory");
        goto fail;
    }
    make_maps(c, mask, &spec);
    host->free(mask);
    return c;
fail:
    host->free(mask);
    coupling_destroy(c);
    return NULL;
}

/* Workspace: h (n x nin, the net's input), theta (n x dt x P), u, v, lad,
 * du, dv, dlad (n x dt each), dtheta (n x dt x P), dh (n x nin), with a
 * conv net y and dy (n x nout, its raw output and that output's
 * gradient), then the net's tape. */
typedef struct cws {
    flow_real *h, *theta, *u, *v, *lad, *du, *dv, *dlad, *dtheta, *dh;
    flow_real *y, *dy;
    void *net;
} cws;

static size_t coupling_workspace(void *self, size_t n, int dir)
{
    const coupling *c = self;
    size_t b = 0, nd = n * c->dt, nt = nd * c->P, nh = n * c->nin;
    size_t ny = c->conv ? n * c->nout : 0;
    (void)dir;
    b += 2 * common_bytes(nh) + 2 * common_bytes(nt) + 6 * common_bytes(nd)
       + 2 * common_bytes(ny);
    return b + c->host->net_workspace(c->net, n);
}

static cws carve(const coupling *c, const flow_call *call)
{
    size_t n = call->n, nd = n * c->dt, nt = nd * c->P, nh = n * c->nin;
    size_t ny = c->conv ? n * c->nout : 0;
    char *cur = call->ws;
    cws w;
    w.h = common_take(&cur, nh);
    w.theta = common_take(&cur, nt);
    w.u = common_take(&cur, nd);
    w.v = common_take(&cur, nd);
    w.lad = common_take(&cur, nd);
    w.du = common_take(&cur, nd);
    w.dv = common_take(&cur, nd);
    w.dlad = common_take(&cur, nd);
    w.dtheta = common_take(&cur, nt);
    w.dh = common_take(&cur, nh);
    w.y = common_take(&cur, ny);
    w.dy = common_take(&cur, ny);
    w.net = cur;
    return w;
}

static void gather(size_t n, size_t d, const size_t *idx, size_t k,
                   const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < k; j++)
            out[r * k + j] = in[r * d + idx[j]];
}

static void scatter(size_t n, size_t d, const size_t *idx, size_t k,
                    const flow_real *in, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < k; j++)
            out[r * d + idx[j]] = in[r * k + j];
}

static int coupling_init(void *self, const flow_call *call,
                         flow_real *params)
{
    const coupling *c = self;
    c->host->net_init(c->net, params, call->rng);
    return FLOW_OK;
}

/* The conditioner on the pass-through part of `in`: the net's input row
 * holds conditioning dimension j at column hi[j] and 0 elsewhere. */
static int condition(const coupling *c, const flow_call *call,
                     const flow_real *in, cws *w)
{
    size_t n = call->n, P = c->P;
    int rc;
    if (c->nin != c->dc)
        memset(w->h, 0, n * c->nin * sizeof *w->h);
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c->dc; j++)
            w->h[r * c->nin + c->hi[j]] = in[r * c->d + c->ci[j]];
    rc = c->host->net_forward(c->net, call->params, n, w->h, call->ctx,
                              0.0, c->conv ? w->y : w->theta, w->net);
    if (rc != FLOW_OK)
        return c->host->error(call, "conditioner failed (status %d)", rc);
    if (c->conv)
        for (size_t r = 0; r < n; r++) {
            const flow_real *y = w->y + r * c->nout;
            flow_real *th = w->theta + r * c->dt * P;
            for (size_t j = 0; j < c->dt; j++)
                for (size_t p = 0; p < P; p++)
                    th[j * P + p] = y[c->src[j] + p * c->hw];
        }
    return FLOW_OK;
}

static void sum_rows(const coupling *c, size_t n, const flow_real *lad,
                     flow_real *logdet)
{
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        for (size_t j = 0; j < c->dt; j++)
            s += lad[r * c->dt + j];
        logdet[r] = (flow_real)s;
    }
}

static int apply(void *self, const flow_call *call, const flow_real *in,
                 flow_real *out, flow_real *logdet, int dir)
{
    const coupling *c = self;
    cws w = carve(c, call);
    size_t n = call->n;
    /* no log-det asked for: the transformer skips its log-derivatives */
    flow_real *lad = flow_call_skip_logdet(call) ? NULL : w.lad;
    int rc;
    if ((rc = condition(c, call, in, &w)) != FLOW_OK)
        return rc;
    gather(n, c->d, c->ti, c->dt, in, w.u);
    rc = dir ? c->host->tf_inverse(&c->tf, n * c->dt, w.u, w.theta, w.v, lad)
             : c->host->tf_forward(&c->tf, n * c->dt, w.u, w.theta, w.v, lad);
    if (rc != FLOW_OK)
        return c->host->error(call, "transformer produced a non-finite value "
                              "(%s)", dir ? "inverse" : "forward");
    memcpy(out, in, n * c->d * sizeof *out);
    scatter(n, c->d, c->ti, c->dt, w.v, out);
    if (lad)
        sum_rows(c, n, lad, logdet);
    return FLOW_OK;
}

static int coupling_forward(void *self, const flow_call *call,
                            const flow_real *x, flow_real *z,
                            flow_real *logdet)
{
    return apply(self, call, x, z, logdet, 0);
}

static int coupling_inverse(void *self, const flow_call *call,
                            const flow_real *z, flow_real *x,
                            flow_real *logdet)
{
    return apply(self, call, z, x, logdet, 1);
}

/* VJP of either direction, after apply() on the same workspace: the
 * conditioner saw in_C (= out_C), the transformer mapped u -> v. */
static int backward(void *self, const flow_call *call, const flow_real *dout,
                    const flow_real *dlogdet, flow_real *din, int dir)
{
    const coupling *c = self;
    cws w = carve(c, call);
    size_t n = call->n;
    int rc;
    gather(n, c->d, c->ti, c->dt, dout, w.dv);
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c->dt; j++)
            w.dlad[r * c->dt + j] = dlogdet[r];
    rc = dir ? c->host->tf_inverse_backward(&c->tf, n * c->dt, w.u, w.v,
                                            w.theta, w.dv, w.dlad, w.du,
                                            w.dtheta)
             : c->host->tf_backward(&c->tf, n * c->dt, w.u, w.theta, w.dv,
                                    w.dlad, w.du, w.dtheta);
    if (rc != FLOW_OK)
        return c->host->error(call, "transformer gradient is not finite");
    if (c->conv) {
        /* the copy of condition() in reverse; a checkerboard's outputs at
         * conditioning pixels are unused: gradient 0 */
        memset(w.dy, 0, n * c->nout * sizeof *w.dy);
        for (size_t r = 0; r < n; r++) {
            flow_real *dy = w.dy + r * c->nout;
            const flow_real *dth = w.dtheta + r * c->dt * c->P;
            for (size_t j = 0; j < c->dt; j++)
                for (size_t p = 0; p < c->P; p++)
                    dy[c->src[j] + p * c->hw] = dth[j * c->P + p];
        }
    }
    rc = c->host->net_backward(c->net, call->params, n, w.net,
                               c->conv ? w.dy : w.dtheta, w.dh, call->dctx,
                               call->grad);
    if (rc != FLOW_OK)
        return c->host->error(call, "conditioner gradient failed");
    memcpy(din, dout, n * c->d * sizeof *din);
    scatter(n, c->d, c->ti, c->dt, w.du, din);
    /* the net's input gradient at the zeroed (transformed) positions of a
     * checkerboard is dropped: those inputs were constants */
    for (size_t r = 0; r < n; r++)
        for (size_t j = 0; j < c->dc; j++)
            din[r * c->d + c->ci[j]] += w.dh[r * c->nin + c->hi[j]];
    return FLOW_OK;
}

static int coupling_forward_backward(void *self, const flow_call *call,
                                     const flow_real *x, const flow_real *z,
                                     const flow_real *dz,
                                     const flow_real *dlogdet, flow_real *dx)
{
    (void)x, (void)z;
    return backward(self, call, dz, dlogdet, dx, 0);
}

static int coupling_inverse_backward(void *self, const flow_call *call,
                                     const flow_real *z, const flow_real *x,
                                     const flow_real *dx,
                                     const flow_real *dlogdet, flow_real *dz)
{
    (void)x, (void)z;
    return backward(self, call, dx, dlogdet, dz, 1);
}

/* Portable export (docs/export.md): the mask (1 = conditioning input,
 * RealNVP's b, Dinh et al. 2017, eq. 9), the conditioner and the
 * transformer. */
static int coupling_export(void *self, const flow_call *call,
                           flow_export *ex)
{
    const coupling *c = self;
    const flow_host *h = c->host;
    uint8_t *mask = h->alloc(c->d);
    size_t shape[1] = {c->d};
    int rc;
    if (!mask)
        return h->error(call, "out of memory");
    memset(mask, 1, c->d);
    for (size_t j = 0; j < c->dt; j++)
        mask[c->ti[j]] = 0;
    rc = ex->tensor(ex, "mask", FLOW_DTYPE_U8, 1, shape, mask);
    h->free(mask);
    if (rc != FLOW_OK)
        return rc;
    if (!c->conv)
        return common_export_net_tf(h, call, c->net, &c->tf, "inputs: the "
                                    "conditioning dimensions (mask = 1) in "
                                    "increasing order, then the context "
                                    "columns; output column j*P + p is "
                                    "transformer parameter p of the j-th "
                                    "transformed dimension (mask = 0) in "
                                    "increasing order, P = "
                                    "transformer.params_per_scalar", ex);
    rc = ex->attr(ex, "net_input", c->nin == c->d ? "\"masked_image\""
                                                   : "\"conditioning\"");
    if (rc != FLOW_OK)
        return rc;
    return common_export_net_tf(h, call, c->net, &c->tf, c->nin == c->d
                                ? "input: the whole image [C, H, W] with the "
                                  "transformed positions (mask = 0) set to "
                                  "0; output channel c*P + p holds "
                                  "transformer parameter p of channel c at "
                                  "every pixel (only the transformed pixels' "
                                  "are used), P = "
                                  "transformer.params_per_scalar"
                                : "input: the conditioning channels (mask = "
                                  "1) in increasing order, [C_c, H, W]; "
                                  "output channel c*P + p holds transformer "
                                  "parameter p of the c-th transformed "
                                  "channel (mask = 0, increasing order) at "
                                  "every pixel, P = "
                                  "transformer.params_per_scalar", ex);
}

static const flow_layer_type coupling_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "coupling",
    .summary = "coupling layer: affine (RealNVP), additive (NICE) or "
               "rational-quadratic spline transformer, MLP or convolutional "
               "conditioner",
    .attrs = coupling_attrs,
    .describe = coupling_describe,
    .create = coupling_create,
    .destroy = coupling_destroy,
    .workspace = coupling_workspace,
    .init = coupling_init,
    .forward = coupling_forward,
    .inverse = coupling_inverse,
    .forward_backward = coupling_forward_backward,
    .inverse_backward = coupling_inverse_backward,
    .export_tensors = coupling_export,
};

FLOW_PLUGIN_LAYERS("coupling", FLOW_VERSION_STRING, "coupling layers",
                   &coupling_type);
