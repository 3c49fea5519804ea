/* permute.c - the `permute` layer: a fixed permutation of dimensions
 * (reverse, seeded random, or explicit).  |det J| = 1, no parameters. */
#include <stdio.h>
#include <string.h>

#include "common.h"

enum { ATTR_ORDER };
enum { ALT_REVERSE, ALT_RANDOM, ALT_EXPLICIT };

static const flow_attr_spec random_attrs[] = {
    {.name = "seed", .type = FLOW_ATTR_INT, .doc = "seed of the shuffle",
     .def_int = 0, .has_min = 1, .min = 0},
    {0}};

static const flow_attr_spec explicit_attrs[] = {
    {.name = "perm", .type = FLOW_ATTR_INT_LIST, .required = 1,
     .doc = "z[i] = x[perm[i]]; a permutation of 0..D-1",
     .has_min = 1, .min = 0, .min_len = 1},
    {0}};

static const flow_variant_alt order_alts[] = {
    {.name = "reverse", .doc = "z[i] = x[D-1-i]"},
    {.name = "random", .doc = "a shuffle drawn from `seed` (splitmix64 + "
                              "Fisher-Yates), the same on every machine",
     .attrs = random_attrs},
    {.name = "explicit", .doc = "the given permutation; a bare list means "
                                "this", .attrs = explicit_attrs,
     .bare_list = 1},
    {0}};

static const flow_attr_spec permute_attrs[] = {
    {.name = "order", .type = FLOW_ATTR_VARIANT,
     .doc = "reverse | random(seed) | explicit([...]) or a bare list",
     .def_str = "reverse", .alternatives = order_alts},
    {0}};

typedef struct permute {
    const flow_host *host;
    size_t d;
    int32_t *perm;    /* z[i] = x[perm[i]] */
} permute;

/* Fills perm from the config; returns 0 or reports into diag. */
static int make_perm(const flow_layer_config *cfg, int32_t *perm,
                     flow_diag *diag)
{
    const flow_attr_value *order = &cfg->attrs[ATTR_ORDER];
    size_t d = cfg->dim;

    switch (order->i) {
    case ALT_REVERSE:
        for (size_t i = 0; i < d; i++)
            perm[i] = (int32_t)(d - 1 - i);
        return 0;
    case ALT_RANDOM:
        common_shuffle(perm, d, (uint64_t)order->sub[0].i);
        return 0;
    case ALT_EXPLICIT: {
        const flow_attr_value *lst = &order->sub[0];
        if (lst->n != d) {
            snprintf(diag->message, sizeof diag->message,
                     "permutation has %zu entries but the layer's input has "
                     "%zu dimensions", lst->n, d);
            return -1;
        }
        for (size_t i = 0; i < d; i++)
            perm[i] = -1;
        for (size_t i = 0; i < d; i++) {
            int64_t v = lst->ilist[i];
            if (v < 0 || (uint64_t)v >= d) {
                snprintf(diag->message, sizeof diag->message,
                         "permutation entry %zu is %lld, outside 0..%zu", i,
                         (long long)v, d - 1);
                return -1;
            }
            if (perm[v] >= 0) {
                snprintf(diag->message, sizeof diag->message,
                         "%lld appears twice in the permutation (entries %d "
                         "and %zu)", (long long)v, (int)perm[v], i);
                snprintf(diag->help, sizeof diag->help,
                         "each of 0..%zu must appear exactly once", d - 1);
                return -1;
            }
            perm[v] = (int32_t)i;   /* inverse for the check only */
        }
        for (size_t i = 0; i < d; i++)
            perm[i] = (int32_t)lst->ilist[i];
        return 0;
    }
    }
    snprintf(diag->message, sizeof diag->message, "unknown order");
    return -1;
}

static int permute_describe(const flow_layer_config *cfg,
                            flow_layer_desc *out, flow_diag *diag)
{
    diag->attr = ATTR_ORDER;
    if (make_perm(cfg, out->dep_vec, diag) != 0)
        return FLOW_ERR_INVAL;
    diag->attr = -1;
    out->flags = FLOW_LAYER_FORWARD | FLOW_LAYER_INVERSE
               | FLOW_LAYER_BACKWARD_FORWARD | FLOW_LAYER_BACKWARD_INVERSE;
    out->n_params = 0;
    out->n_buffers = 0;
    out->jac = FLOW_JAC_VOLUME_PRESERVING;
    out->dep = FLOW_DEP_PERMUTATION;
    out->cert = FLOW_CERT_STRUCTURAL;
    out->cert_text = "permutation";
    out->cost_forward = (flow_cost){0, 0, 0.0};
    out->cost_inverse = (flow_cost){0, 0, 0.0};
    out->logdet_exact = 1;
    return FLOW_OK;
}

static void permute_destroy(void *self)
{
    permute *p = self;
    if (!p)
        return;
    p->host->free(p->perm);
    p->host->free(p);
}

static void *permute_create(const flow_host *host,
                            const flow_layer_config *cfg, flow_diag *diag)
{
    permute *p = host->calloc(1, sizeof *p);
    if (!p)
        goto nomem;
    p->host = host;
    p->d = cfg->dim;
    if (!(p->perm = host->calloc(cfg->dim, sizeof *p->perm)))
        goto nomem;
    diag->attr = ATTR_ORDER;
    if (make_perm(cfg, p->perm, diag) != 0) {
        permute_destroy(p);
        return NULL;
    }
    return p;
nomem:
    snprintf(diag->message, sizeof diag->message, "out of memory");
    permute_destroy(p);
    return NULL;
}

static int permute_forward(void *self, const flow_call *c, const flow_real *x,
                           flow_real *z, flow_real *logdet)
{
    const permute *p = self;
    common_gather(p->perm, p->d, c->n, x, z);
    if (!flow_call_skip_logdet(c))
        memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static int permute_inverse(void *self, const flow_call *c, const flow_real *z,
                           flow_real *x, flow_real *logdet)
{
    const permute *p = self;
    common_scatter(p->perm, p->d, c->n, z, x);
    if (!flow_call_skip_logdet(c))
        memset(logdet, 0, c->n * sizeof *logdet);
    return FLOW_OK;
}

static int permute_forward_backward(void *self, const flow_call *c,
                                    const flow_real *x, const flow_real *z,
                                    const flow_real *dz,
                                    const flow_real *dlogdet, flow_real *dx)
{
    const permute *p = self;
    (void)x, (void)z, (void)dlogdet;
    common_scatter(p->perm, p->d, c->n, dz, dx);
    return FLOW_OK;
}

static int permute_inverse_backward(void *self, const flow_call *c,
                                    const flow_real *z, const flow_real *x,
                                    const flow_real *dx,
                                    const flow_real *dlogdet, flow_real *dz)
{
    const permute *p = self;
    (void)x, (void)z, (void)dlogdet;
    common_gather(p->perm, p->d, c->n, dx, dz);
    return FLOW_OK;
}

/* Portable export: perm (z[j] = x[perm[j]]). */
static int permute_export(void *self, const flow_call *c, flow_export *ex)
{
    const permute *p = self;
    return common_export_i64(p->host, c, ex, "perm", p->perm, p->d);
}

static const flow_layer_type permute_type = {
    .struct_size = sizeof(flow_layer_type),
    .name = "permute",
    .summary = "fixed permutation of dimensions (reverse, random, explicit)",
    .attrs = permute_attrs,
    .describe = permute_describe,
    .create = permute_create,
    .destroy = permute_destroy,
    .forward = permute_forward,
    .inverse = permute_inverse,
    .forward_backward = permute_forward_backward,
    .inverse_backward = permute_inverse_backward,
    .export_tensors = permute_export,
};

FLOW_PLUGIN_LAYERS("permute", FLOW_VERSION_STRING, "dimension permutations",
                   &permute_type);
