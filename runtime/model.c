/* model.c - models built by calls (layers, exits, base distributions) and
 * executed in both directions with summed log-determinants and backward. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "ctx.h"
#include "model.h"
#include "pool.h"
#include "rng.h"
#include "vec.h"

/* Rows below which a batch is not split (per thread). */
#define MIN_ROWS_PER_THREAD 32
/* Passes that keep no tape (log-densities, sampling) take each thread's
 * rows through a job's layers in blocks of this many, so that a block's
 * activations stay in the core's cache from layer to layer instead of
 * going to memory and back for every layer (4096-row batches: 2 MB per
 * activation of width 128). */
#define BLOCK_ROWS 256
#define MAX_THREADS MODEL_MAX_THREADS

typedef enum node_kind { NODE_LAYER, NODE_EXIT } node_kind;

typedef struct node {
    node_kind kind;
    size_t in_dim;              /* width of the state entering the node */
    size_t out_dim;
    /* layer */
    const flow_layer_type *type;
    const char *file;           /* plugin file, owned by ctx */
    char *spec;                 /* spec file of the statement or NULL */
    char *label;
    flow_attr_value *attrs;     /* deep copy, in m->arena */
    flow_layer_config cfg;
    flow_layer_desc desc;
    int32_t *dep_vec;
    int given;
    void *self;
    size_t p_off, b_off;
    void *ws[MAX_THREADS];      /* per thread: what forward leaves for the
                                   matching backward */
    size_t ws_bytes[MAX_THREADS];
    /* exit */
    size_t k;
    char *name;
    base_dist base;
    size_t bp_off;              /* its parameters in the flat vector */
    size_t z_off;               /* first column of this exit in z */
} node;

/* One node of a job; pointers are to full-batch arrays (row 0).  in and
 * out are the first two arrays of the layer call (forward: x, z; inverse:
 * z, x; the backward kinds: the pass's input and output). */
typedef struct job_step {
    node *nd;
    const flow_real *in;
    flow_real *out;
    const flow_real *dout;
    flow_real *din;
} job_step;

/* Blocks of the model's attribute copies, freed together. */
typedef struct arena_block {
    struct arena_block *next;
    max_align_t data[];
} arena_block;

struct flow_model {
    flow_ctx *ctx;
    size_t dim, cdim;
    node *nodes;
    size_t n_nodes, cap_nodes;
    base_kind base_kind;        /* of the final output, sized at finish */
    size_t base_comps;
    base_dist base;
    size_t base_off;            /* its parameters in the flat vector */
    size_t z_final;             /* first column of the final output in z */
    int finished;
    int training;
    flow_real *params, *buffers;
    size_t n_params, n_buffers;
    flow_rng rng;
    arena_block *arena;
    /* per-batch storage, grown on demand */
    size_t cap_rows;
    flow_real **act;            /* act[i]: input of node i; act[n]: output */
    flow_real *ld, *ld_sum, *ones;
    flow_real *g0, *g1;         /* gradient ping-pong, cap_rows x dim */
    flow_real *lpb;             /* base log-densities, cap_rows */
    flow_real *t0, *t1;         /* scratch, cap_rows x dim */
    /* threads (flow_model_set_threads): rows of a batch are split into
     * `threads` fixed chunks; thread t > 0 accumulates its parameter
     * gradient in tgrad[t - 1], summed in order afterwards */
    size_t threads;
    pool *pool;
    flow_rng trng[MAX_THREADS];
    flow_real *tgrad;
    char terr[MAX_THREADS][256];
    flow_real *zbuf;            /* cap_rows x dim */
    job_step *steps;            /* n_nodes: the job being run */
    int tgrad_dirty;            /* tgrad not all zero (see reduce_task) */
    char err[1024];
};

/* ------------------------------------------------------------ helpers */

static void *arena_alloc(flow_model *m, size_t bytes)
{
    arena_block *b;
    if (bytes > SIZE_MAX - sizeof *b)
        return NULL;
    b = calloc(1, sizeof *b + (bytes ? bytes : 1));
    if (!b)
        return NULL;
    b->next = m->arena;
    m->arena = b;
    return b->data;
}

static char *arena_strdup(flow_model *m, const char *s)
{
    size_t n;
    char *p;
    if (!s)
        return NULL;
    n = strlen(s) + 1;
    if ((p = arena_alloc(m, n)))
        memcpy(p, s, n);
    return p;
}

static size_t table_len(const flow_attr_spec *t)
{
    size_t n = 0;
    while (t && t[n].name)
        n++;
    return n;
}

static size_t alt_count(const flow_variant_alt *a)
{
    size_t n = 0;
    while (a && a[n].name)
        n++;
    return n;
}

/* Deep-copies n resolved values described by `spec` into the arena. */
static flow_attr_value *copy_attrs(flow_model *m, const flow_attr_spec *spec,
                                   const flow_attr_value *src, size_t n,
                                   int depth)
{
    flow_attr_value *dst;
    if (depth > 16)
        return NULL;
    if (!(dst = arena_alloc(m, (n ? n : 1) * sizeof *dst)))
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const flow_attr_value *v = &src[i];
        dst[i] = *v;
        if (v->type != spec[i].type)
            return NULL;
        if (v->s && !(dst[i].s = arena_strdup(m, v->s)))
            return NULL;
        if (v->type == FLOW_ATTR_INT_LIST && v->n) {
            int64_t *l = arena_alloc(m, v->n * sizeof *l);
            if (!l || !v->ilist || v->n > SIZE_MAX / sizeof *l)
                return NULL;
            memcpy(l, v->ilist, v->n * sizeof *l);
            dst[i].ilist = l;
        }
        if (v->type == FLOW_ATTR_REAL_LIST && v->n) {
            double *l = arena_alloc(m, v->n * sizeof *l);
            if (!l || !v->rlist || v->n > SIZE_MAX / sizeof *l)
                return NULL;
            memcpy(l, v->rlist, v->n * sizeof *l);
            dst[i].rlist = l;
        }
        if (v->type == FLOW_ATTR_VARIANT) {
            const flow_variant_alt *alts = spec[i].alternatives;
            const flow_attr_spec *sub;
            size_t ns;
            if (v->i < 0 || (size_t)v->i >= alt_count(alts))
                return NULL;
            sub = alts[v->i].attrs;
            ns = table_len(sub);
            dst[i].sub = NULL;
            if (ns && !(dst[i].sub = copy_attrs(m, sub, v->sub, ns,
                                                depth + 1)))
                return NULL;
        }
    }
    return dst;
}

static int model_error(flow_model *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int model_error(flow_model *m, int code, const char *fmt, ...)
{
    char buf[CTX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return flow_ctx_error(m->ctx, code, "%s", buf);
}

/* A layer's failure, with its label, position and plugin file. */
static int layer_error(flow_model *m, const node *nd, int rc, const char *what)
{
    const char *msg = m->err[0] ? m->err : "failed without a message";
    if (nd->cfg.line > 0 && nd->spec)
        return model_error(m, rc ? rc : FLOW_ERR, "%s (%s:%d:%d, %s): %s: %s",
                           nd->label, nd->spec, nd->cfg.line, nd->cfg.col,
                           nd->file, what, msg);
    if (nd->cfg.line > 0)
        return model_error(m, rc ? rc : FLOW_ERR, "%s (line %d:%d, %s): %s: %s",
                           nd->label, nd->cfg.line, nd->cfg.col, nd->file,
                           what, msg);
    return model_error(m, rc ? rc : FLOW_ERR, "%s (%s): %s: %s", nd->label,
                       nd->file, what, msg);
}

static int check_rows(flow_model *m, size_t n)
{
    if (!m->finished)
        return model_error(m, FLOW_ERR_INVAL,
                           "model is not finished (call flow_model_finish)");
    if (n == 0)
        return model_error(m, FLOW_ERR_INVAL, "empty batch (0 rows)");
    if (n > SIZE_MAX / sizeof(flow_real) / (m->dim + m->cdim + 1))
        return model_error(m, FLOW_ERR_INVAL, "batch of %zu rows is too large",
                           n);
    return FLOW_OK;
}

/* ------------------------------------------------------------ building */

flow_model *flow_model_new(flow_ctx *ctx, size_t dim, size_t context_dim)
{
    flow_model *m;
    if (!ctx)
        return NULL;
    if (dim == 0) {
        flow_ctx_error(ctx, FLOW_ERR_INVAL, "a model needs at least 1 "
                       "dimension");
        return NULL;
    }
    if (!(m = calloc(1, sizeof *m))) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->ctx = ctx;
    m->dim = dim;
    m->cdim = context_dim;
    m->base_kind = BASE_NORMAL;
    m->threads = 1;
    rng_seed(&m->rng, 0);
    return m;
}

static size_t current_dim(const flow_model *m)
{
    return m->n_nodes ? m->nodes[m->n_nodes - 1].out_dim : m->dim;
}

static node *push_node(flow_model *m)
{
    node *nd;
    if (m->n_nodes == m->cap_nodes) {
        size_t cap = m->cap_nodes ? 2 * m->cap_nodes : 16;
        node *nn = realloc(m->nodes, cap * sizeof *nn);
        if (!nn)
            return NULL;
        m->nodes = nn;
        m->cap_nodes = cap;
    }
    nd = &m->nodes[m->n_nodes];
    memset(nd, 0, sizeof *nd);
    return nd;
}

int flow_model_add_layer(flow_model *m, const char *type, const char *label,
                         const flow_attr_value *attrs, size_t n_attrs,
                         int given, int line, int col)
{
    return flow_model_add_layer_at(m, type, label, attrs, n_attrs, given,
                                   NULL, line, col);
}

int flow_model_add_layer_at(flow_model *m, const char *type,
                            const char *label, const flow_attr_value *attrs,
                            size_t n_attrs, int given, const char *spec_file,
                            int line, int col)
{
    const flow_layer_type *t;
    const char *file = NULL;
    flow_diag diag;
    node *nd;
    size_t d = current_dim(m), want;
    int rc;

    if (m->finished)
        return model_error(m, FLOW_ERR_INVAL,
                           "cannot add a layer to a finished model");
    if (!(t = flow_layer_type_find(m->ctx, type, &file)))
        return model_error(m, FLOW_ERR_INVAL, "unknown layer type '%s' (no "
                           "loaded plugin provides it)", type);
    want = table_len(t->attrs);
    if (n_attrs != want)
        return model_error(m, FLOW_ERR_INVAL, "layer '%s' takes %zu resolved "
                           "attributes, got %zu", type, want, n_attrs);
    if (given && m->cdim == 0)
        return model_error(m, FLOW_ERR_INVAL, "layer '%s' uses the context, "
                           "but the model has none", type);
    if (!(nd = push_node(m)))
        return model_error(m, FLOW_ERR_NOMEM, "out of memory");
    nd->kind = NODE_LAYER;
    nd->in_dim = nd->out_dim = d;
    nd->type = t;
    nd->file = file;
    nd->given = given != 0;
    if (label)
        nd->label = arena_strdup(m, label);
    else {
        char buf[128];
        snprintf(buf, sizeof buf, "%s#%zu", type, m->n_nodes);
        nd->label = arena_strdup(m, buf);
    }
    nd->attrs = copy_attrs(m, t->attrs, attrs, n_attrs, 0);
    nd->dep_vec = arena_alloc(m, d * sizeof *nd->dep_vec);
    if (spec_file)
        nd->spec = arena_strdup(m, spec_file);
    if (!nd->label || (n_attrs && !nd->attrs) || !nd->dep_vec
        || (spec_file && !nd->spec))
        return model_error(m, FLOW_ERR_INVAL, "layer '%s': attributes do not "
                           "match the type's table (or out of memory)", type);
    nd->cfg.struct_size = sizeof nd->cfg;
    nd->cfg.name = nd->label;
    nd->cfg.dim = d;
    nd->cfg.context_dim = nd->given ? m->cdim : 0;
    nd->cfg.attrs = nd->attrs;
    nd->cfg.line = line;
    nd->cfg.col = col;
    nd->cfg.host = flow_host_services();
    nd->desc.struct_size = sizeof nd->desc;
    nd->desc.dep_vec = nd->dep_vec;
    memset(&diag, 0, sizeof diag);
    diag.struct_size = sizeof diag;
    diag.attr = -1;
    rc = t->describe(&nd->cfg, &nd->desc, &diag);
    if (rc != FLOW_OK)
        return model_error(m, rc, "%s (%s): %s", nd->label, file,
                           diag.message[0] ? diag.message : "describe failed");
    if (!(nd->desc.flags & FLOW_LAYER_FORWARD) || !t->forward)
        return model_error(m, FLOW_ERR_PLUGIN, "%s (%s): layer has no forward "
                           "direction", nd->label, file);
    m->n_nodes++;
    return FLOW_OK;
}

/* Validates a base given by the public enum and its arguments. */
static int check_base(flow_model *m, flow_base_kind base, const double *args,
                      size_t n_args, base_kind *kind, size_t *comps)
{
    *comps = 0;
    switch (base) {
    case FLOW_BASE_NORMAL:
        *kind = BASE_NORMAL;
        return FLOW_OK;
    case FLOW_BASE_LOGISTIC:
        *kind = BASE_LOGISTIC;
        return FLOW_OK;
    case FLOW_BASE_DIAG_NORMAL:
        *kind = BASE_DIAG_NORMAL;
        return FLOW_OK;
    case FLOW_BASE_GMM:
        *kind = BASE_GMM;
        if (n_args < 1 || !args || !(args[0] >= 1)
            || args[0] > BASE_MAX_COMPONENTS || args[0] != floor(args[0]))
            return model_error(m, FLOW_ERR_INVAL, "a Gaussian mixture base "
                               "needs a number of components in 1..%d",
                               BASE_MAX_COMPONENTS);
        *comps = (size_t)args[0];
        return FLOW_OK;
    }
    return model_error(m, FLOW_ERR_INVAL, "unknown base distribution %d",
                       (int)base);
}

int flow_model_add_exit(flow_model *m, size_t k, const char *name,
                        flow_base_kind base, const double *args,
                        size_t n_args)
{
    size_t d = current_dim(m), comps;
    base_kind kind;
    node *nd;
    int rc;
    if (m->finished)
        return model_error(m, FLOW_ERR_INVAL,
                           "cannot add an exit to a finished model");
    if (k == 0 || k >= d)
        return model_error(m, FLOW_ERR_INVAL, "exit of %zu dimensions from a "
                           "state of %zu: must leave at least one and take "
                           "at least one", k, d);
    if ((rc = check_base(m, base, args, n_args, &kind, &comps)) != FLOW_OK)
        return rc;
    if (!(nd = push_node(m)))
        return model_error(m, FLOW_ERR_NOMEM, "out of memory");
    nd->kind = NODE_EXIT;
    nd->in_dim = d;
    nd->out_dim = d - k;
    nd->k = k;
    nd->name = arena_strdup(m, name ? name : "exit");
    nd->label = nd->name;
    if (base_make(&nd->base, kind, k, comps) != FLOW_OK)
        return model_error(m, FLOW_ERR_INVAL, "invalid exit base");
    if (!nd->name)
        return model_error(m, FLOW_ERR_NOMEM, "out of memory");
    m->n_nodes++;
    return FLOW_OK;
}

int flow_model_set_base(flow_model *m, flow_base_kind base,
                        const double *args, size_t n_args)
{
    int rc;
    if (m->finished)
        return model_error(m, FLOW_ERR_INVAL,
                           "cannot change the base of a finished model");
    if ((rc = check_base(m, base, args, n_args, &m->base_kind,
                         &m->base_comps)) != FLOW_OK)
        return rc;
    return FLOW_OK;
}

static void free_batch(flow_model *m)
{
    if (m->act)
        for (size_t i = 0; i <= m->n_nodes; i++)
            free(m->act[i]);
    free(m->act);
    free(m->ld);
    free(m->ld_sum);
    free(m->ones);
    free(m->g0);
    free(m->g1);
    free(m->zbuf);
    free(m->lpb);
    free(m->t0);
    free(m->t1);
    free(m->steps);
    m->steps = NULL;
    m->t0 = m->t1 = NULL;
    m->act = NULL;
    m->ld = m->ld_sum = m->ones = m->g0 = m->g1 = m->zbuf = m->lpb = NULL;
    m->cap_rows = 0;
}

void flow_model_free(flow_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->self)
            nd->type->destroy(nd->self);
        for (size_t t = 0; t < MAX_THREADS; t++)
            free(nd->ws[t]);
    }
    free_batch(m);
    pool_free(m->pool);
    free(m->tgrad);
    free(m->nodes);
    free(m->params);
    free(m->buffers);
    while (m->arena) {
        arena_block *b = m->arena;
        m->arena = b->next;
        free(b);
    }
    free(m);
}

/* The call of thread t (0: the caller) on n rows of node nd. */
static void fill_call_t(flow_model *m, node *nd, flow_call *c, size_t n,
                        const flow_real *ctxv, flow_real *grad, size_t t)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->host = flow_host_services();
    c->n = n;
    c->dim = nd->in_dim;
    c->context_dim = nd->given ? m->cdim : 0;
    c->params = m->params + nd->p_off;
    c->grad = grad ? grad + nd->p_off : NULL;
    c->buffers = m->buffers + nd->b_off;
    c->ctx = nd->given ? ctxv : NULL;
    c->ws = nd->ws[t];
    c->ws_bytes = nd->ws_bytes[t];
    c->rng = t ? &m->trng[t] : &m->rng;
    c->training = m->training;
    c->thread = (int)t;
    c->err = t ? m->terr[t] : m->err;
    c->err_cap = t ? sizeof m->terr[t] : sizeof m->err;
    c->err[0] = '\0';
}

static void fill_call(flow_model *m, node *nd, flow_call *c, size_t n,
                      const flow_real *ctxv, flow_real *grad)
{
    fill_call_t(m, nd, c, n, ctxv, grad, 0);
}

int flow_model_finish(flow_model *m, uint64_t seed)
{
    size_t np = 0, nb = 0, zoff = 0;
    if (m->finished)
        return model_error(m, FLOW_ERR_INVAL, "model already finished");
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            nd->z_off = zoff;
            zoff += nd->k;
            continue;
        }
        if (nd->desc.n_params > SIZE_MAX / sizeof(flow_real) - np
            || nd->desc.n_buffers > SIZE_MAX / sizeof(flow_real) - nb)
            return model_error(m, FLOW_ERR_INVAL, "too many parameters");
        nd->p_off = np;
        nd->b_off = nb;
        np += nd->desc.n_params;
        nb += nd->desc.n_buffers;
    }
    m->z_final = zoff;
    if (base_make(&m->base, m->base_kind, current_dim(m), m->base_comps)
        != FLOW_OK)
        return model_error(m, FLOW_ERR_INVAL, "invalid base distribution");
    /* base distributions' parameters follow the layers' */
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            nd->bp_off = np;
            np += base_params(&nd->base);
        }
    }
    m->base_off = np;
    np += base_params(&m->base);
    m->n_params = np;
    m->n_buffers = nb;
    m->params = calloc(np ? np : 1, sizeof *m->params);
    m->buffers = calloc(nb ? nb : 1, sizeof *m->buffers);
    if (!m->params || !m->buffers)
        return model_error(m, FLOW_ERR_NOMEM, "out of memory for %zu "
                           "parameters", np);
    rng_seed(&m->rng, seed);
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_EXIT)
            base_init(&m->nodes[i].base, m->params + m->nodes[i].bp_off,
                      &m->rng);
    base_init(&m->base, m->params + m->base_off, &m->rng);
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        flow_diag diag;
        flow_call c;
        int rc;
        if (nd->kind != NODE_LAYER)
            continue;
        memset(&diag, 0, sizeof diag);
        diag.struct_size = sizeof diag;
        nd->self = nd->type->create(flow_host_services(), &nd->cfg, &diag);
        if (!nd->self)
            return model_error(m, FLOW_ERR_PLUGIN, "%s (%s): create failed: "
                               "%s", nd->label, nd->file,
                               diag.message[0] ? diag.message : "no message");
        fill_call(m, nd, &c, 0, NULL, NULL);
        rc = nd->type->init(nd->self, &c, m->params + nd->p_off);
        if (rc != FLOW_OK)
            return layer_error(m, nd, rc, "init");
    }
    m->finished = 1;
    return FLOW_OK;
}

/* ------------------------------------------------------------ queries */

size_t flow_model_dim(const flow_model *m) { return m->dim; }
size_t flow_model_context_dim(const flow_model *m) { return m->cdim; }
size_t flow_model_num_layers(const flow_model *m) { return m->n_nodes; }
size_t flow_model_num_params(const flow_model *m) { return m->n_params; }
flow_real *flow_model_params(flow_model *m) { return m->params; }
size_t flow_model_num_buffers(const flow_model *m) { return m->n_buffers; }
flow_real *flow_model_buffers(flow_model *m) { return m->buffers; }
void flow_model_set_training(flow_model *m, int training)
{
    m->training = training != 0;
}
void flow_model_seed(flow_model *m, uint64_t seed) { rng_seed(&m->rng, seed); }

int flow_model_layer_stat(const flow_model *m, size_t i, const char **name,
                          double *value)
{
    const node *nd;
    if (!m || i >= m->n_nodes)
        return 0;
    nd = &m->nodes[i];
    if (nd->kind != NODE_LAYER || !nd->type || !nd->self
        || !nd->type->stat || !nd->type->stat_name)
        return 0;
    if (name)
        *name = nd->type->stat_name;
    if (value)
        *value = nd->type->stat(nd->self);
    return 1;
}

double flow_model_nfe(const flow_model *m)
{
    double sum = -1;
    for (size_t i = 0; m && i < m->n_nodes; i++) {
        const char *name;
        double v;
        if (flow_model_layer_stat(m, i, &name, &v)
            && strcmp(name, "nfe") == 0)
            sum = (sum < 0 ? 0 : sum) + v;
    }
    return sum;
}

/* ------------------------------------------------------------ execution */

static int grow_batch(flow_model *m, size_t n)
{
    size_t dmax = m->dim;
    if (n <= m->cap_rows)
        return FLOW_OK;
    free_batch(m);
    if (!(m->act = calloc(m->n_nodes + 1, sizeof *m->act)))
        goto nomem;
    for (size_t i = 0; i <= m->n_nodes; i++) {
        size_t w = i < m->n_nodes ? m->nodes[i].in_dim : current_dim(m);
        if (!(m->act[i] = malloc(n * w * sizeof(flow_real))))
            goto nomem;
    }
    m->ld = malloc(n * sizeof *m->ld);
    m->ld_sum = malloc(n * sizeof *m->ld_sum);
    m->ones = malloc(n * sizeof *m->ones);
    m->g0 = malloc(n * dmax * sizeof *m->g0);
    m->g1 = malloc(n * dmax * sizeof *m->g1);
    m->zbuf = malloc(n * dmax * sizeof *m->zbuf);
    m->lpb = malloc(n * sizeof *m->lpb);
    m->t0 = malloc(n * dmax * sizeof *m->t0);
    m->t1 = malloc(n * dmax * sizeof *m->t1);
    m->steps = malloc((m->n_nodes + 1) * sizeof *m->steps);
    if (!m->ld || !m->ld_sum || !m->ones || !m->g0 || !m->g1 || !m->zbuf
        || !m->lpb || !m->t0 || !m->t1 || !m->steps)
        goto nomem;
    m->cap_rows = n;
    return FLOW_OK;
nomem:
    free_batch(m);
    return model_error(m, FLOW_ERR_NOMEM, "out of memory for a batch of %zu "
                       "rows", n);
}

/* Number of row chunks a batch of n rows is split into for node nd. */
static size_t chunks(const flow_model *m, const node *nd, size_t n)
{
    size_t k = m->threads;
    if (k < 2 || !m->pool || (nd->desc.flags & FLOW_LAYER_WHOLE_BATCH))
        return 1;
    if (n / k < MIN_ROWS_PER_THREAD)
        k = n / MIN_ROWS_PER_THREAD;
    return k ? k : 1;
}

static int ensure_ws(flow_model *m, node *nd, size_t n, int dir)
{
    size_t k = chunks(m, nd, n), rows = (n + k - 1) / k;
    size_t need = nd->type->workspace(nd->self, rows, dir);
    for (size_t t = 0; t < k; t++) {
        if (need <= nd->ws_bytes[t])
            continue;
        free(nd->ws[t]);
        nd->ws[t] = NULL;
        nd->ws_bytes[t] = 0;
        if (posix_memalign(&nd->ws[t], 64, need ? need : 64) != 0) {
            nd->ws[t] = NULL;
            return model_error(m, FLOW_ERR_NOMEM, "%s: out of memory for a "
                               "workspace of %zu bytes", nd->label, need);
        }
        nd->ws_bytes[t] = need;
    }
    return FLOW_OK;
}

/* A job: consecutive nodes run on every chunk of a batch, each thread
 * taking its rows through all of them before the next synchronisation
 * (one pool_run per job, not per layer: waking the workers between
 * layers was measured at 5-15% of a step, bench/README.md "cplperf"). */
enum { JOB_FORWARD, JOB_INVERSE, JOB_FORWARD_BACKWARD, JOB_INVERSE_BACKWARD };

typedef struct job {
    flow_model *m;
    int kind;
    size_t n, k;
    const flow_real *cv;
    flow_real *ld;              /* forward kinds: each layer's log-dets */
    flow_real *ld_sum;          /* forward kinds: += ld, row by row */
    flow_real *z;               /* forward: exits' columns written */
    const flow_real *zin;       /* inverse: exits' columns read */
    const flow_real *dld;
    flow_real *grad;
    const job_step *steps;
    size_t n_steps;
    int no_tape;                /* no backward follows: rows in blocks */
    size_t block;               /* rows per block (run_job), 0: all */
    int rc[MAX_THREADS];
    size_t fail[MAX_THREADS];   /* step at which rc[t] failed */
} job;

/* An exit on rows [lo, hi): forward splits in into z's columns and out,
 * inverse joins them back (in: the latent side, out: the data side). */
static void exit_rows(const flow_model *m, const node *nd, const job *j,
                      size_t lo, size_t hi, const flow_real *in,
                      flow_real *out)
{
    size_t k = nd->k, di = nd->in_dim, dout = nd->out_dim;
    const size_t sz = sizeof *out;
    for (size_t r = lo; r < hi; r++) {
        size_t zo = r * m->dim + nd->z_off;
        if (j->kind != JOB_INVERSE) {
            memcpy(j->z + zo, in + r * di, k * sz);
            memcpy(out + r * dout, in + r * di + k, dout * sz);
        } else {
            memcpy(out + r * di, j->zin + zo, k * sz);
            memcpy(out + r * di + k, in + r * dout, dout * sz);
        }
    }
}

static int call_layer(const job *j, const job_step *st, flow_call *c,
                      size_t lo)
{
    node *nd = st->nd;
    size_t d = nd->in_dim;
    switch (j->kind) {
    case JOB_FORWARD:
        return nd->type->forward(nd->self, c, st->in + lo * d,
                                 st->out + lo * d, j->ld + lo);
    case JOB_INVERSE:
        return nd->type->inverse(nd->self, c, st->in + lo * d,
                                 st->out + lo * d, j->ld + lo);
    case JOB_FORWARD_BACKWARD:
        return nd->type->forward_backward(nd->self, c, st->in + lo * d,
                                          st->out + lo * d,
                                          st->dout + lo * d, j->dld + lo,
                                          st->din + lo * d);
    default:
        return nd->type->inverse_backward(nd->self, c, st->in + lo * d,
                                          st->out + lo * d,
                                          st->dout + lo * d, j->dld + lo,
                                          st->din + lo * d);
    }
}

/* Thread t's rows [lo, hi) through every step of the job. */
static void job_rows(job *j, size_t t, size_t lo, size_t hi)
{
    flow_model *m = j->m;
    flow_real *grad = j->grad && t ? m->tgrad : j->grad;
    if (grad && t)
        grad += (t - 1) * m->n_params;
    for (size_t s = 0; s < j->n_steps; s++) {
        const job_step *st = &j->steps[s];
        node *nd = st->nd;
        size_t kc = nd->given ? m->cdim : 0;
        flow_call c;
        int rc;
        if (nd->kind == NODE_EXIT) {
            exit_rows(m, nd, j, lo, hi, st->in, st->out);
            continue;
        }
        fill_call_t(m, nd, &c, hi - lo, j->cv && kc ? j->cv + lo * kc : NULL,
                    grad, t);
        if ((rc = call_layer(j, st, &c, lo)) != FLOW_OK) {
            j->rc[t] = rc;
            j->fail[t] = s;
            return;
        }
        if (j->ld_sum)
            for (size_t r = lo; r < hi; r++)
                j->ld_sum[r] += j->ld[r];
    }
}

static void job_task(void *arg, size_t t)
{
    job *j = arg;
    size_t lo = j->n * t / j->k, hi = j->n * (t + 1) / j->k;
    size_t bs = j->block ? j->block : hi - lo;
    j->rc[t] = FLOW_OK;
    for (size_t b = lo; b < hi && j->rc[t] == FLOW_OK; b += bs)
        job_rows(j, t, b, hi - b < bs ? hi : b + bs);
}

/* Rows of a batch of n split into this many chunks (layers without
 * WHOLE_BATCH; exits). */
static size_t row_chunks(const flow_model *m, size_t n)
{
    size_t k = m->threads;
    if (k < 2 || !m->pool)
        return 1;
    if (n / k < MIN_ROWS_PER_THREAD)
        k = n / MIN_ROWS_PER_THREAD;
    return k ? k : 1;
}

/* Whether node nd can share a job with its neighbours: always on one
 * thread; with several, not a whole-batch layer, nor a stochastic one
 * (its per-thread streams are seeded from the model's stream between
 * layers, after the caller's thread used it for the layer before). */
static int joinable(const flow_model *m, const node *nd, size_t n)
{
    if (row_chunks(m, n) == 1 || nd->kind == NODE_EXIT)
        return 1;
    return !(nd->desc.flags & (FLOW_LAYER_WHOLE_BATCH
                               | FLOW_LAYER_STOCHASTIC));
}

/* Runs the job on its chunks; on failure, the message of the earliest
 * failing step (its lowest chunk among equals): the same whatever the
 * timing. */
/* Of k threads' outcomes (rc[t], and fail[t]: where it failed, in run
 * order), the thread whose failure comes first, its message moved to
 * m->err; MAX_THREADS when none failed. */
static size_t first_failure(flow_model *m, size_t k, const int *rc,
                            const size_t *fail)
{
    size_t bad = MAX_THREADS;
    for (size_t t = 0; t < k; t++)
        if (rc[t] != FLOW_OK && (bad == MAX_THREADS || fail[t] < fail[bad]))
            bad = t;
    if (bad != MAX_THREADS && bad)
        memcpy(m->err, m->terr[bad], sizeof m->terr[bad]);
    return bad;
}

static int run_job(job *j, const char *what)
{
    flow_model *m = j->m;
    const node *first = j->steps[0].nd;
    size_t bad = MAX_THREADS;
    j->k = j->n_steps == 1 && first->kind == NODE_LAYER
               ? chunks(m, first, j->n) : row_chunks(m, j->n);
    j->block = j->no_tape ? BLOCK_ROWS : 0;
    for (size_t i = 0; i < j->n_steps; i++)   /* whole rows only */
        if (j->steps[i].nd->kind == NODE_LAYER
            && (j->steps[i].nd->desc.flags
                & (FLOW_LAYER_WHOLE_BATCH | FLOW_LAYER_STOCHASTIC)))
            j->block = 0;
    if (j->k > 1 && j->n_steps == 1
        && (first->desc.flags & FLOW_LAYER_STOCHASTIC)) {
        /* per-thread streams drawn from the model's stream: everything
         * random still derives from it (and from checkpoints of it) */
        uint64_t seed = rng_u64(&m->rng);
        for (size_t t = 1; t < j->k; t++)
            rng_stream(&m->trng[t], seed, (unsigned)t);
    }
    if (j->k > 1)
        pool_run(m->pool, j->k, job_task, j);
    else
        job_task(j, 0);
    if ((bad = first_failure(m, j->k, j->rc, j->fail)) == MAX_THREADS)
        return FLOW_OK;
    return layer_error(m, j->steps[j->fail[bad]].nd, j->rc[bad], what);
}

/* Per-layer work once per batch (prepare or finish_grad) for the layers
 * that allow it at the same time as other layers'
 * (FLOW_LAYER_CONCURRENT_PREPARE), shared among the model's threads in
 * node order (thread t takes the t-th, (t+k)-th, ... of them); the rest
 * run one after the other on the calling thread.  On failure the error
 * of the first failing node (in node order) is reported. */
typedef struct batch_job {
    flow_model *m;
    size_t n, k;
    int finish;                 /* 0: prepare, 1: finish_grad */
    flow_real *grad;
    const flow_real *cv;
    int rc[MAX_THREADS];
    size_t fail[MAX_THREADS];   /* node index of rc[t]'s failure */
} batch_job;

static int batch_one(batch_job *bj, node *nd, size_t t)
{
    flow_call c;
    fill_call_t(bj->m, nd, &c, bj->n, bj->cv, bj->finish ? bj->grad : NULL,
                t);
    return bj->finish
               ? nd->type->finish_grad(nd->self, &c, bj->grad + nd->p_off)
               : nd->type->prepare(nd->self, &c);
}

static int batch_has(const batch_job *bj, const node *nd)
{
    return nd->kind == NODE_LAYER &&
           (bj->finish ? nd->type->finish_grad != NULL
                       : nd->type->prepare != NULL);
}

/* 1: this node's work runs on the threads, 0: on the caller */
static int batch_conc(const node *nd)
{
    return (nd->desc.flags & FLOW_LAYER_CONCURRENT_PREPARE) != 0;
}

static void batch_task(void *arg, size_t t)
{
    batch_job *bj = arg;
    flow_model *m = bj->m;
    size_t seen = 0;
    bj->rc[t] = FLOW_OK;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (!batch_has(bj, nd) || !batch_conc(nd))
            continue;
        if (seen++ % bj->k != t)
            continue;
        if ((bj->rc[t] = batch_one(bj, nd, t)) != FLOW_OK) {
            bj->fail[t] = i;
            return;
        }
    }
}

static int batch_all(flow_model *m, size_t n, int finish,
                     const flow_real *cv, flow_real *grad)
{
    batch_job bj = {.m = m, .n = n, .finish = finish, .cv = cv,
                    .grad = grad};
    size_t conc = 0, bad = SIZE_MAX, bad_t;
    int rc = FLOW_OK;
    for (size_t i = 0; i < m->n_nodes; i++)
        conc += batch_has(&bj, &m->nodes[i]) && batch_conc(&m->nodes[i]);
    bj.k = m->pool && conc > 1 ? (conc < m->threads ? conc : m->threads) : 1;
    if (conc) {
        if (bj.k > 1)
            pool_run(m->pool, bj.k, batch_task, &bj);
        else
            batch_task(&bj, 0);
        bad_t = first_failure(m, bj.k, bj.rc, bj.fail);
        if (bad_t != MAX_THREADS) {
            bad = bj.fail[bad_t];
            rc = bj.rc[bad_t];
        }
    }
    for (size_t i = 0; i < m->n_nodes && i < bad; i++) {
        node *nd = &m->nodes[i];
        int r;
        if (!batch_has(&bj, nd) || batch_conc(nd))
            continue;
        if ((r = batch_one(&bj, nd, 0)) != FLOW_OK) {
            bad = i;
            rc = r;
        }
    }
    if (bad == SIZE_MAX)
        return FLOW_OK;
    return layer_error(m, &m->nodes[bad], rc,
                       finish ? "gradient" : "prepare");
}

static int prepare_all(flow_model *m, size_t n, int dir)
{
    int rc;
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_LAYER
            && (rc = ensure_ws(m, &m->nodes[i], n, dir)) != FLOW_OK)
            return rc;
    return batch_all(m, n, 0, NULL, NULL);
}

/* Forward through every node; z (n x dim) gets exits then the final
 * state; m->ld_sum the summed log-dets.  Activations stay in m->act. */
static int run_forward(flow_model *m, size_t n, const flow_real *x,
                       const flow_real *cv, flow_real *z, int data_init,
                       int tape)
{
    int rc;
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = prepare_all(m, n, 0)) != FLOW_OK)
        return rc;
    memcpy(m->act[0], x, n * m->dim * sizeof *x);
    memset(m->ld_sum, 0, n * sizeof *m->ld_sum);
    for (size_t i = 0, e; i < m->n_nodes; i = e) {
        node *nd = &m->nodes[i];
        job j = {.m = m, .kind = JOB_FORWARD, .n = n, .cv = cv,
                 .ld = m->ld, .ld_sum = m->ld_sum, .z = z, .steps = m->steps,
                 .no_tape = !tape};
        if (data_init && nd->kind == NODE_LAYER
            && (nd->desc.flags & FLOW_LAYER_DATA_INIT)
            && nd->type->data_init) {
            flow_call c;
            fill_call(m, nd, &c, n, cv, NULL);
            rc = nd->type->data_init(nd->self, &c, m->params + nd->p_off,
                                     m->act[i]);
            if (rc != FLOW_OK)
                return layer_error(m, nd, rc, "data-dependent init");
        }
        /* nodes i..e-1 in one job (a data-initialised layer starts one) */
        for (e = i; e < m->n_nodes; e++) {
            const node *ne = &m->nodes[e];
            if (e > i && (!joinable(m, ne, n) || !joinable(m, ne - 1, n)
                          || (data_init && ne->kind == NODE_LAYER
                              && (ne->desc.flags & FLOW_LAYER_DATA_INIT))))
                break;
            m->steps[e - i] = (job_step){.nd = &m->nodes[e],
                                         .in = m->act[e],
                                         .out = m->act[e + 1]};
        }
        j.n_steps = e - i;
        if ((rc = run_job(&j, "forward")) != FLOW_OK)
            return rc;
    }
    {
        size_t df = current_dim(m);
        const flow_real *fin = m->act[m->n_nodes];
        for (size_t r = 0; r < n; r++)
            memcpy(z + r * m->dim + m->z_final, fin + r * df,
                   df * sizeof *z);
    }
    return FLOW_OK;
}

int flow_model_forward(flow_model *m, size_t n, const flow_real *x,
                       const flow_real *c, flow_real *z, flow_real *logdet)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = run_forward(m, n, x, c, z, 0, 0)) != FLOW_OK)
        return rc;
    if (logdet)
        memcpy(logdet, m->ld_sum, n * sizeof *logdet);
    return FLOW_OK;
}

int flow_model_data_init(flow_model *m, size_t n, const flow_real *x,
                         const flow_real *c)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    if ((rc = grow_batch(m, n)) != FLOW_OK)
        return rc;
    return run_forward(m, n, x, c, m->zbuf, 1, 0);
}

/* Gathers columns [off, off + k) of z (n x dim) into a contiguous n x k. */
static void gather_cols(size_t n, size_t dim, const flow_real *z, size_t off,
                        size_t k, flow_real *out)
{
    for (size_t r = 0; r < n; r++)
        memcpy(out + r * k, z + r * dim + off, k * sizeof *out);
}

/* Adds the base log-densities of z (exits and final) to logp. */
static int add_base_logpdf(flow_model *m, size_t n, const flow_real *z,
                           flow_real *logp)
{
    flow_real *tmp = m->t0;
    for (size_t i = 0; i <= m->n_nodes; i++) {
        const node *nd = i < m->n_nodes ? &m->nodes[i] : NULL;
        const base_dist *b = nd ? &nd->base : &m->base;
        size_t off = nd ? nd->z_off : m->z_final;
        size_t po = nd ? nd->bp_off : m->base_off;
        if (nd && nd->kind != NODE_EXIT)
            continue;
        gather_cols(n, m->dim, z, off, b->dim, tmp);
        if (base_log_prob(b, m->params + po, n, tmp, m->lpb) != FLOW_OK)
            return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                               "invalid parameters or input");
        for (size_t r = 0; r < n; r++)
            logp[r] += m->lpb[r];
    }
    return FLOW_OK;
}

int flow_model_log_prob(flow_model *m, size_t n, const flow_real *x,
                        const flow_real *c, flow_real *logp)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = run_forward(m, n, x, c, m->zbuf, 0, 0)) != FLOW_OK)
        return rc;
    memcpy(logp, m->ld_sum, n * sizeof *logp);
    return add_base_logpdf(m, n, m->zbuf, logp);
}

/* Inverse through every node from z; x gets the data, m->ld_sum the
 * summed inverse log-dets. */
static int run_inverse(flow_model *m, size_t n, const flow_real *z,
                       const flow_real *cv, flow_real *x, int tape)
{
    size_t df = current_dim(m);
    int rc;
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = prepare_all(m, n, 1)) != FLOW_OK)
        return rc;
    for (size_t r = 0; r < n; r++)
        memcpy(m->act[m->n_nodes] + r * df, z + r * m->dim + m->z_final,
               df * sizeof *z);
    memset(m->ld_sum, 0, n * sizeof *m->ld_sum);
    for (size_t e = m->n_nodes, i; e > 0; e = i) {
        job j = {.m = m, .kind = JOB_INVERSE, .n = n, .cv = cv,
                 .ld = m->ld, .ld_sum = m->ld_sum, .zin = z,
                 .steps = m->steps, .no_tape = !tape};
        /* nodes e-1 down to i in one job */
        for (i = e; i > 0; i--) {
            node *nd = &m->nodes[i - 1];
            if (i < e && (!joinable(m, nd, n) || !joinable(m, nd + 1, n)))
                break;
            if (nd->kind == NODE_LAYER
                && (!(nd->desc.flags & FLOW_LAYER_INVERSE)
                    || !nd->type->inverse))
                return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): layer "
                                   "has no inverse direction", nd->label,
                                   nd->file);
            m->steps[e - i] = (job_step){.nd = nd, .in = m->act[i],
                                         .out = m->act[i - 1]};
        }
        j.n_steps = e - i;
        if ((rc = run_job(&j, "inverse")) != FLOW_OK)
            return rc;
    }
    memcpy(x, m->act[0], n * m->dim * sizeof *x);
    return FLOW_OK;
}

int flow_model_inverse(flow_model *m, size_t n, const flow_real *z,
                       const flow_real *c, flow_real *x, flow_real *logdet)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = run_inverse(m, n, z, c, x, 0)) != FLOW_OK)
        return rc;
    if (logdet)
        memcpy(logdet, m->ld_sum, n * sizeof *logdet);
    return FLOW_OK;
}

/* Draws n latents from the bases (exits' columns first) into zout with
 * the model's stream; lpb (may be NULL) = log p_base(z) per row. */
static int draw_latents(flow_model *m, size_t n, flow_real *zout,
                        flow_real *lpb)
{
    for (size_t i = 0; i <= m->n_nodes; i++) {
        const node *nd = i < m->n_nodes ? &m->nodes[i] : NULL;
        const base_dist *b = nd ? &nd->base : &m->base;
        size_t off = nd ? nd->z_off : m->z_final;
        size_t po = nd ? nd->bp_off : m->base_off;
        if (nd && nd->kind != NODE_EXIT)
            continue;
        if (base_sample(b, m->params + po, n, &m->rng, m->t1, NULL)
            != FLOW_OK)
            return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                               "cannot sample");
        for (size_t r = 0; r < n; r++)
            memcpy(zout + r * m->dim + off, m->t1 + r * b->dim,
                   b->dim * sizeof *zout);
    }
    if (lpb) {
        memset(lpb, 0, n * sizeof *lpb);
        return add_base_logpdf(m, n, zout, lpb);
    }
    return FLOW_OK;
}

int flow_model_sample_latent(flow_model *m, size_t n, flow_real *z,
                             flow_real *logp_base)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = grow_batch(m, n)) != FLOW_OK)
        return rc;
    return draw_latents(m, n, z, logp_base);
}

int flow_model_sample(flow_model *m, size_t n, const flow_real *c,
                      flow_real *x, flow_real *logp)
{
    int rc;
    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = draw_latents(m, n, m->zbuf, NULL)) != FLOW_OK)
        return rc;
    if ((rc = run_inverse(m, n, m->zbuf, c, x, 0)) != FLOW_OK)
        return rc;
    if (logp) {
        /* log p(x) = log p_base(z) - log|det df^-1/dz| */
        for (size_t r = 0; r < n; r++)
            logp[r] = -m->ld_sum[r];
        return add_base_logpdf(m, n, m->zbuf, logp);
    }
    return FLOW_OK;
}

/* The threads' gradient accumulators are zero before a backward pass:
 * the reduction clears them as it reads them; only a failed pass leaves
 * them dirty. */
static void clear_tgrad(flow_model *m)
{
    if (m->tgrad && m->tgrad_dirty)
        memset(m->tgrad, 0, (m->threads - 1) * m->n_params * sizeof *m->tgrad);
    m->tgrad_dirty = 0;
}

typedef struct pfor_job {
    void (*fn)(void *arg, size_t t, size_t lo, size_t hi);
    void *arg;
    size_t n, k;
} pfor_job;

static void pfor_task(void *arg, size_t t)
{
    pfor_job *pj = arg;
    size_t line = 64 / sizeof(flow_real), lines = pj->n / line;
    size_t lo = lines * t / pj->k * line, hi = lines * (t + 1) / pj->k * line;
    if (t + 1 == pj->k)
        hi = pj->n;
    pj->fn(pj->arg, t, lo, hi);
}

void model_parallel_for(flow_model *m, size_t n,
                        void (*fn)(void *arg, size_t t, size_t lo, size_t hi),
                        void *arg)
{
    /* chunks of at least 4096 elements: below, waking a thread costs
     * more than it saves */
    size_t k = m->pool ? m->threads : 1;
    pfor_job pj = {fn, arg, n, k};
    if (n / 4096 < k)
        pj.k = k = n / 4096 ? n / 4096 : 1;
    if (k > 1)
        pool_run(m->pool, k, pfor_task, &pj);
    else
        fn(arg, 0, 0, n);
}

typedef struct reduce_job {
    flow_model *m;
    flow_real *grad;
} reduce_job;

/* grad += tgrad[0] + tgrad[1] + ... on [lo, hi), in thread order for
 * every parameter: the same bits as a serial sum; each accumulator
 * zeroed once read. */
FLOW_VECTORIZE static void reduce_task(void *arg, size_t t, size_t lo,
                                       size_t hi)
{
    reduce_job *rj = arg;
    flow_model *m = rj->m;
    size_t np = m->n_params;
    (void)t;
    for (size_t u = 1; u < m->threads; u++) {
        flow_real *restrict g = m->tgrad + (u - 1) * np;
        flow_real *restrict out = rj->grad;
        for (size_t q = lo; q < hi; q++)
            out[q] += g[q];
        memset(g + lo, 0, (hi - lo) * sizeof *g);
    }
}

static void zero_task(void *arg, size_t t, size_t lo, size_t hi)
{
    (void)t;
    memset((flow_real *)arg + lo, 0, (hi - lo) * sizeof(flow_real));
}

/* grad = 0 on the model's threads (a serial memset of a 1.8M-parameter
 * MAF's gradient was a visible part of a 2-thread training step). */
static void zero_grad(flow_model *m, flow_real *grad)
{
    model_parallel_for(m, m->n_params, zero_task, grad);
}

/* After a backward pass: the threads' gradients summed (reduce_task),
 * then each layer's finish_grad. */
static int finish_gradients(flow_model *m, size_t n, const flow_real *c,
                            flow_real *grad)
{
    if (m->tgrad && m->tgrad_dirty) {
        reduce_job rj = {m, grad};
        model_parallel_for(m, m->n_params, reduce_task, &rj);
        m->tgrad_dirty = 0;
    }
    return batch_all(m, n, 1, c, grad);
}

int flow_model_loglik_grad(flow_model *m, size_t n, const flow_real *x,
                           const flow_real *c, double *mean_logp,
                           flow_real *grad)
{
    flow_real w, *dz, *dprev;
    double total = 0;
    int rc;

    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = run_forward(m, n, x, c, m->zbuf, 0, 1)) != FLOW_OK)
        return rc;
    w = (flow_real)(1.0 / (double)n);
    memcpy(m->ld, m->ld_sum, n * sizeof *m->ld);
    if ((rc = add_base_logpdf(m, n, m->zbuf, m->ld)) != FLOW_OK)
        return rc;
    for (size_t r = 0; r < n; r++) {
        total += m->ld[r];
        m->ones[r] = w;             /* dL/dlogdet and dL/dlogp_base */
    }
    zero_grad(m, grad);
    clear_tgrad(m);
    /* d mean / d z_final, and the final base's parameter gradient */
    dz = m->g0;
    dprev = m->g1;
    gather_cols(n, m->dim, m->zbuf, m->z_final, m->base.dim, m->t0);
    if (base_grad(&m->base, m->params + m->base_off, n, m->t0, m->ones, dz,
                  grad + m->base_off) != FLOW_OK)
        return model_error(m, FLOW_ERR_NUMERIC, "base distribution: "
                           "gradient failed");
    for (size_t i = m->n_nodes; i-- > 0;) {
        node *nd = &m->nodes[i];
        flow_real *t;
        if (nd->kind == NODE_EXIT) {
            /* d/d(input) = [base gradient of the exit's part, dz of rest] */
            for (size_t r = n; r-- > 0;)
                memmove(dprev + r * nd->in_dim + nd->k, dz + r * nd->out_dim,
                        nd->out_dim * sizeof *dz);
            gather_cols(n, m->dim, m->zbuf, nd->z_off, nd->k, m->t0);
            if (base_grad(&nd->base, m->params + nd->bp_off, n, m->t0,
                          m->ones, m->t1, grad + nd->bp_off) != FLOW_OK)
                return model_error(m, FLOW_ERR_NUMERIC, "exit %s: base "
                                   "gradient failed", nd->name);
            for (size_t r = 0; r < n; r++)
                memcpy(dprev + r * nd->in_dim, m->t1 + r * nd->k,
                       nd->k * sizeof *dprev);
        } else {
            if (!(nd->desc.flags & FLOW_LAYER_BACKWARD_FORWARD)
                || !nd->type->forward_backward)
                return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): layer "
                                   "cannot be trained (no backward)",
                                   nd->label, nd->file);
            job j = {.m = m, .kind = JOB_FORWARD_BACKWARD, .n = n,
                     .cv = c, .dld = m->ones, .grad = grad,
                     .steps = m->steps};
            size_t lo = i;      /* the job: layers i down to lo */
            for (;;) {
                node *nl = &m->nodes[lo];
                if (!(nl->desc.flags & FLOW_LAYER_BACKWARD_FORWARD)
                    || !nl->type->forward_backward)
                    return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): "
                                       "layer cannot be trained (no "
                                       "backward)", nl->label, nl->file);
                /* the gradient buffers alternate as they do here */
                m->steps[i - lo] = (job_step){.nd = nl, .in = m->act[lo],
                                              .out = m->act[lo + 1],
                                              .dout = dz, .din = dprev};
                t = dz;
                dz = dprev;
                dprev = t;
                if (lo == 0 || nl[-1].kind != NODE_LAYER
                    || !joinable(m, nl - 1, n) || !joinable(m, nl, n))
                    break;
                lo--;
            }
            j.n_steps = i - lo + 1;
            m->tgrad_dirty = 1;
            if ((rc = run_job(&j, "backward")) != FLOW_OK)
                return rc;
            i = lo;             /* the loop's i-- moves on to lo - 1 */
            continue;
        }
        t = dz;
        dz = dprev;
        dprev = t;
    }
    if ((rc = finish_gradients(m, n, c, grad)) != FLOW_OK)
        return rc;
    if (mean_logp)
        *mean_logp = total / (double)n;
    return FLOW_OK;
}

void flow_model_get_rng(const flow_model *m, uint64_t out[6])
{
    memcpy(out, m->rng.s, 4 * sizeof *out);
    out[4] = (uint64_t)m->rng.has_spare;
    memcpy(&out[5], &m->rng.spare, sizeof out[5]);
}

void flow_model_set_rng(flow_model *m, const uint64_t in[6])
{
    memcpy(m->rng.s, in, 4 * sizeof *in);
    m->rng.has_spare = in[4] != 0;
    memcpy(&m->rng.spare, &in[5], sizeof in[5]);
}

flow_ctx *model_ctx(const flow_model *m) { return m->ctx; }

/* ------------------------------------------------------------ slices */

size_t model_slice_count(const flow_model *m)
{
    return m->n_nodes + 1;
}

/* Slice i: the layer or exit i (exits: their base), or, for i = n_nodes,
 * the output's base.  Names are stable across runs of one spec. */
int model_slice(const flow_model *m, size_t i, model_slice_info *s)
{
    memset(s, 0, sizeof *s);
    if (i > m->n_nodes)
        return FLOW_ERR_INVAL;
    if (i == m->n_nodes) {
        s->name = "base/output";
        s->p_off = m->base_off;
        s->n_params = base_params(&m->base);
        return FLOW_OK;
    }
    if (m->nodes[i].kind == NODE_EXIT) {
        s->name = m->nodes[i].name;
        s->is_exit = 1;
        s->p_off = m->nodes[i].bp_off;
        s->n_params = base_params(&m->nodes[i].base);
        return FLOW_OK;
    }
    s->name = m->nodes[i].label;
    s->p_off = m->nodes[i].p_off;
    s->n_params = m->nodes[i].desc.n_params;
    s->b_off = m->nodes[i].b_off;
    s->n_buffers = m->nodes[i].desc.n_buffers;
    return FLOW_OK;
}

int flow_model_set_threads(flow_model *m, size_t threads)
{
    if (threads < 1 || threads > MAX_THREADS)
        return model_error(m, FLOW_ERR_INVAL, "threads must be in 1..%d, "
                           "got %zu", MAX_THREADS, threads);
    if (!m->finished)
        return model_error(m, FLOW_ERR_INVAL, "set threads after "
                           "flow_model_finish");
    pool_free(m->pool);
    m->pool = NULL;
    free(m->tgrad);
    m->tgrad = NULL;
    m->threads = 1;
    if (threads == 1)
        return FLOW_OK;
    if (m->n_params > SIZE_MAX / sizeof(flow_real) / (threads - 1))
        return model_error(m, FLOW_ERR_NOMEM, "too many parameters");
    m->tgrad = calloc((threads - 1) * m->n_params + 1, sizeof *m->tgrad);
    m->pool = pool_new(threads);
    if (!m->tgrad || !m->pool) {
        free(m->tgrad);
        m->tgrad = NULL;
        pool_free(m->pool);
        m->pool = NULL;
        return model_error(m, FLOW_ERR_NOMEM, "cannot start %zu threads",
                           threads);
    }
    m->threads = threads;
    return FLOW_OK;
}

/* The sampling direction's backward with the loss decided in between:
 * after x = f^-1(z) (logdet: log|det df^-1/dz|), mid() writes dL/dx and
 * dL/dlogdet from them. */
int model_inverse_grad_mid(flow_model *m, size_t n, const flow_real *z,
                           const flow_real *c, model_mid_fn mid, void *arg,
                           flow_real *grad, flow_real *dz)
{
    flow_real *g, *gnext, *t;
    int rc;

    if ((rc = check_rows(m, n)) != FLOW_OK)
        return rc;
    ctx_clear_error(m->ctx);
    if ((rc = grow_batch(m, n)) != FLOW_OK
        || (rc = run_inverse(m, n, z, c, m->zbuf, 1)) != FLOW_OK)
        return rc;
    g = m->g0;
    gnext = m->g1;
    if ((rc = mid(arg, n, m->zbuf, m->ld_sum, g, m->ones)) != FLOW_OK)
        return rc;
    zero_grad(m, grad);
    clear_tgrad(m);
    /* the inverse ran nodes last to first; its backward runs first to
     * last: node i maps act[i + 1] (latent side) to act[i] (data side) */
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            for (size_t r = 0; r < n; r++) {
                if (dz)
                    memcpy(dz + r * m->dim + nd->z_off, g + r * nd->in_dim,
                           nd->k * sizeof *dz);
                memcpy(gnext + r * nd->out_dim, g + r * nd->in_dim + nd->k,
                       nd->out_dim * sizeof *g);
            }
        } else {
            job_step st = {.nd = nd, .in = m->act[i + 1], .out = m->act[i],
                           .dout = g, .din = gnext};
            job j = {.m = m, .kind = JOB_INVERSE_BACKWARD, .n = n, .cv = c,
                     .dld = m->ones, .grad = grad, .steps = &st,
                     .n_steps = 1};
            m->tgrad_dirty = 1;
            if (!(nd->desc.flags & FLOW_LAYER_BACKWARD_INVERSE)
                || !nd->type->inverse_backward)
                return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): layer "
                                   "has no backward for its inverse",
                                   nd->label, nd->file);
            if ((rc = run_job(&j, "inverse backward")) != FLOW_OK)
                return rc;
        }
        t = g;
        g = gnext;
        gnext = t;
    }
    if (dz) {
        size_t df = current_dim(m);
        for (size_t r = 0; r < n; r++)
            memcpy(dz + r * m->dim + m->z_final, g + r * df,
                   df * sizeof *dz);
    }
    return finish_gradients(m, n, c, grad);
}

typedef struct given_grads {
    size_t dim;
    const flow_real *dx, *dlogdet;
} given_grads;

static int copy_given(void *arg, size_t n, const flow_real *x,
                      const flow_real *logdet, flow_real *dx,
                      flow_real *dlogdet)
{
    const given_grads *gg = arg;
    (void)x, (void)logdet;
    memcpy(dx, gg->dx, n * gg->dim * sizeof *dx);
    for (size_t r = 0; r < n; r++)
        dlogdet[r] = gg->dlogdet ? gg->dlogdet[r] : 0;
    return FLOW_OK;
}

int flow_model_inverse_grad(flow_model *m, size_t n, const flow_real *z,
                            const flow_real *c, const flow_real *dx,
                            const flow_real *dlogdet, flow_real *grad,
                            flow_real *dz)
{
    given_grads gg = {m->dim, dx, dlogdet};
    return model_inverse_grad_mid(m, n, z, c, copy_given, &gg, grad, dz);
}
