/* model.c - models built by calls: layers from plugins, exits and base
 * distributions; finishing (parameters, init), queries, slices, lifetime. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "model_impl.h"
#include "nn.h"

/* ------------------------------------------------------------ helpers */

/* Parameter tensors a layer may name in its descriptor (1.5). */
#define MODEL_TENSORS 64

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

/* The defaults of a variant alternative's n sub-attributes, for a value
 * built by hand with sub = NULL (an alternative that gained attributes
 * keeps its bare meaning for such callers); NULL for a type whose default
 * is text only the compiler parses (lists, strings, variants). */
static flow_attr_value *default_attrs(flow_model *m,
                                      const flow_attr_spec *spec, size_t n)
{
    flow_attr_value *dst = arena_alloc(m, n * sizeof *dst);
    if (!dst)
        return NULL;
    memset(dst, 0, n * sizeof *dst);
    for (size_t i = 0; i < n; i++) {
        dst[i].type = spec[i].type;
        switch (spec[i].type) {
        case FLOW_ATTR_INT:
        case FLOW_ATTR_BOOL:
            dst[i].i = spec[i].def_int;
            break;
        case FLOW_ATTR_REAL:
            dst[i].r = spec[i].def_real;
            break;
        case FLOW_ATTR_ENUM:
            dst[i].i = spec[i].def_int;
            if (!spec[i].enum_values || spec[i].def_int < 0
                || !(dst[i].s = arena_strdup(m, spec[i].enum_values[spec[i]
                                                                .def_int])))
                return NULL;
            break;
        default:
            return NULL;
        }
    }
    return dst;
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
            if (ns && !(dst[i].sub = v->sub
                        ? copy_attrs(m, sub, v->sub, ns, depth + 1)
                        : default_attrs(m, sub, ns)))
                return NULL;
        }
    }
    return dst;
}

int model_error(flow_model *m, int code, const char *fmt, ...)
{
    char buf[CTX_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return flow_ctx_error(m->ctx, code, "%s", buf);
}

/* A layer's failure, with its label, position and plugin file. */
int model_layer_error(flow_model *m, const node *nd, int rc, const char *what)
{
    const char *msg = m->err[0] ? m->err : "failed without a message";
    if (nd->cfg.line > 0 && nd->spec)
        return model_error(m, rc ? rc : FLOW_ERR, "%s (%s:%d:%d, %s): %s: %s",
                           nd->label, nd->spec, nd->cfg.line, nd->cfg.col,
                           nd->file, what, msg);
    if (nd->cfg.line > 0)
        return model_error(m, rc ? rc : FLOW_ERR, "%s (line %d:%d, %s): "
                           "%s: %s", nd->label, nd->cfg.line, nd->cfg.col,
                           nd->file, what, msg);
    return model_error(m, rc ? rc : FLOW_ERR, "%s (%s): %s: %s", nd->label,
                       nd->file, what, msg);
}

int model_check_rows(flow_model *m, size_t n)
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
    m->rank = m->in_rank = 1;
    m->shape[0] = m->in_shape[0] = dim;
    m->base_kind = BASE_NORMAL;
    m->threads = 1;
    rng_seed(&m->rng, 0);
    return m;
}

int flow_model_set_input_shape(flow_model *m, size_t rank,
                               const size_t *shape)
{
    size_t vol = 1;
    if (m->n_nodes || m->finished)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_set_input_shape: "
                           "the input's shape is set before any layer");
    if ((rank != 1 && rank != 3) || !shape)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_set_input_shape: "
                           "rank %zu; only [D] (1) and [C, H, W] (3) are "
                           "supported", rank);
    for (size_t i = 0; i < rank; i++) {
        if (shape[i] == 0 || vol > m->dim / shape[i])
            return model_error(m, FLOW_ERR_INVAL, "flow_model_set_input_"
                               "shape: the shape does not hold the model's "
                               "%zu dimensions", m->dim);
        vol *= shape[i];
    }
    if (vol != m->dim)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_set_input_shape: "
                           "a shape of %zu values for a model of %zu "
                           "dimensions", vol, m->dim);
    memset(m->shape, 0, sizeof m->shape);
    memcpy(m->shape, shape, rank * sizeof *shape);
    m->rank = rank;
    memcpy(m->in_shape, m->shape, sizeof m->in_shape);
    m->in_rank = rank;
    return FLOW_OK;
}

size_t flow_model_input_shape(const flow_model *m, size_t shape[4])
{
    memcpy(shape, m->in_shape, sizeof m->in_shape);
    return m->in_rank;
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

/* The fields every caller's flow_layer_args holds: those up to `given`;
 * the ones after it are taken when the caller's struct_size covers them. */
#define LAYER_ARGS_REQUIRED \
    (offsetof(flow_layer_args, given) + sizeof(int))
#define LAYER_ARGS_HAS(a, field) \
    ((a)->struct_size >= offsetof(flow_layer_args, field) \
                         + sizeof((a)->field))

/* The output shape a layer's describe() declared (out_rank 0: its input's)
 * becomes the state's; it must hold the same values. */
static int take_out_shape(flow_model *m, const node *nd, const char *file)
{
    size_t r = nd->desc.out_rank, vol = 1;
    if (r == 0)
        return FLOW_OK;
    for (size_t i = 0; i < r && i < FLOW_MAX_RANK; i++) {
        if (nd->desc.out_shape[i] == 0
            || vol > SIZE_MAX / nd->desc.out_shape[i]) {
            vol = 0;
            break;
        }
        vol *= nd->desc.out_shape[i];
    }
    if (r > FLOW_MAX_RANK || vol != nd->in_dim)
        return model_error(m, FLOW_ERR_PLUGIN, "%s (%s): declared output "
                           "shape of rank %zu does not hold its %zu input "
                           "values", nd->label, file, r, nd->in_dim);
    memset(m->shape, 0, sizeof m->shape);
    memcpy(m->shape, nd->desc.out_shape, r * sizeof *m->shape);
    m->rank = r;
    return FLOW_OK;
}

/* Appends the layer that `a` describes (every field present). */
static int add_layer(flow_model *m, const flow_layer_args *a)
{
    const char *type = a->type, *label = a->label, *spec_file = a->file;
    const flow_attr_value *attrs = a->attrs;
    size_t n_attrs = a->n_attrs;
    int given = a->given, line = a->line, col = a->col;
    const flow_layer_type *t;
    const char *file = NULL;
    flow_diag diag;
    node *nd;
    size_t d = model_out_dim(m), want;
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
    nd->cfg.rank = m->rank;
    memcpy(nd->cfg.shape, m->shape, sizeof nd->cfg.shape);
    nd->desc.struct_size = sizeof nd->desc;
    nd->desc.dep_vec = nd->dep_vec;
    /* room for the plugin to name its parameter tensors (1.5) */
    nd->desc.tensors_cap = MODEL_TENSORS;
    if (!(nd->desc.tensors = arena_alloc(m, MODEL_TENSORS
                                         * sizeof *nd->desc.tensors)))
        return model_error(m, FLOW_ERR_NOMEM, "layer '%s': out of memory",
                           type);
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
    if ((rc = take_out_shape(m, nd, file)) != FLOW_OK)
        return rc;
    m->n_nodes++;
    return FLOW_OK;
}

int flow_model_add(flow_model *m, const flow_layer_args *args)
{
    flow_layer_args a;
    if (!args)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_add: no layer "
                           "arguments");
    if (args->struct_size < LAYER_ARGS_REQUIRED)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_add: struct_size "
                           "%u does not cover the required fields (%zu "
                           "bytes): set it to sizeof(flow_layer_args)",
                           (unsigned)args->struct_size,
                           (size_t)LAYER_ARGS_REQUIRED);
    memset(&a, 0, sizeof a);
    memcpy(&a, args, LAYER_ARGS_REQUIRED);
    if (LAYER_ARGS_HAS(args, file))
        a.file = args->file;
    if (LAYER_ARGS_HAS(args, line))
        a.line = args->line;
    if (LAYER_ARGS_HAS(args, col))
        a.col = args->col;
    a.struct_size = sizeof a;
    if (!a.type)
        return model_error(m, FLOW_ERR_INVAL, "flow_model_add: no layer "
                           "type");
    return add_layer(m, &a);
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
    flow_layer_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.type = type;
    a.label = label;
    a.attrs = attrs;
    a.n_attrs = n_attrs;
    a.given = given;
    a.file = spec_file;
    a.line = line;
    a.col = col;
    return flow_model_add(m, &a);
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
    size_t d = model_out_dim(m), comps;
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
    if (m->rank == 3 && (k % (m->shape[1] * m->shape[2]) != 0))
        return model_error(m, FLOW_ERR_INVAL, "exit of %zu dimensions from "
                           "an image [%zu, %zu, %zu]: an exit takes whole "
                           "channels (a multiple of %zu)", k, m->shape[0],
                           m->shape[1], m->shape[2],
                           m->shape[1] * m->shape[2]);
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
    /* an image loses whole channels, a vector k values */
    if (m->rank == 3)
        m->shape[0] -= k / (m->shape[1] * m->shape[2]);
    else
        m->shape[0] = d - k;
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
        exec_free_block_ws(nd);
        free(nd->sup);
    }
    free(m->live);
    free(m->live_pre);
    exec_free_batch(m);
    free(m->blk_rng_buf);
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

/* ------------------------------------------------ the gradient's support */

/* Layer nd's runs from its grad_support (flow_plugin.h), checked and
 * moved to the flat vector's offsets; one run of its whole range without
 * the hook.  A list the layer cannot keep to its contract (unsorted,
 * overlapping, past its parameters) would have the trainer skip
 * parameters whose gradient is not 0: refused, naming the layer. */
static int support_node(flow_model *m, node *nd)
{
    const flow_layer_type *t = nd->type;
    size_t np = nd->desc.n_params, cap = 16, n, k = 0, end = 0;
    size_t *r;
    flow_call c;
    int hook = t->struct_size >= offsetof(flow_layer_type, grad_support)
                                     + sizeof t->grad_support
               && t->grad_support;
    if (!np)
        return FLOW_OK;
    if (!(r = malloc(2 * cap * sizeof *r)))
        goto nomem;
    if (!hook) {
        r[0] = 0;
        r[1] = np;
        n = 1;
    } else {
        exec_fill_call(m, nd, &c, 0, NULL, NULL, 0);
        n = t->grad_support(nd->self, &c, r, cap);
        if (n > cap) {
            size_t *g = n <= SIZE_MAX / 2 / sizeof *r
                            ? realloc(r, 2 * n * sizeof *r) : NULL;
            size_t again;
            if (!g)
                goto nomem;
            r = g;
            cap = n;
            again = t->grad_support(nd->self, &c, r, cap);
            if (again != n) {
                snprintf(m->err, sizeof m->err, "it listed %zu runs, then "
                         "%zu with room for them all (the list must not "
                         "change)", n, again);
                goto invalid;
            }
        }
    }
    /* check, drop the empty runs, offset into the flat vector */
    for (size_t i = 0; i < n; i++) {
        size_t off = r[2 * i], len = r[2 * i + 1];
        if (off > np || len > np - off) {
            snprintf(m->err, sizeof m->err, "run %zu (offset %zu, length "
                     "%zu) is past the layer's %zu parameters", i, off, len,
                     np);
            goto invalid;
        }
        if (!len)
            continue;
        if (off < end) {
            snprintf(m->err, sizeof m->err, "run %zu (offset %zu, length "
                     "%zu) starts before the end of the one before it "
                     "(%zu): the runs must be increasing and disjoint", i,
                     off, len, end);
            goto invalid;
        }
        end = off + len;
        r[2 * k] = nd->p_off + off;
        r[2 * k + 1] = len;
        k++;
    }
    nd->sup = r;
    nd->n_sup = k;
    return FLOW_OK;
invalid:
    free(r);
    return model_layer_error(m, nd, FLOW_ERR_PLUGIN, "grad_support");
nomem:
    free(r);
    return model_error(m, FLOW_ERR_NOMEM, "%s (%s): out of memory for the "
                       "gradient's support", nd->label, nd->file);
}

/* Appends [off, off + len) to the model's support (room for it made by
 * the caller), merged into the last run when that ends at off. */
static void support_push(flow_model *m, size_t off, size_t len)
{
    size_t n = m->n_live_runs;
    if (!len)
        return;
    m->n_live += len;
    if (n && m->live[2 * n - 2] + m->live[2 * n - 1] == off) {
        m->live[2 * n - 1] += len;
        return;
    }
    m->live[2 * n] = off;
    m->live[2 * n + 1] = len;
    m->n_live_runs = n + 1;
}

/* Every layer's runs, then the bases' parameters (which follow the
 * layers', model.c), in one merged list. */
static int support_build(flow_model *m)
{
    size_t total = 2;
    int rc;
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_LAYER) {
            if ((rc = support_node(m, nd)) != FLOW_OK)
                return rc;
            total += nd->n_sup;
        } else {
            total++;
        }
    }
    m->live = malloc(2 * total * sizeof *m->live);
    m->live_pre = malloc((total + 1) * sizeof *m->live_pre);
    if (!m->live || !m->live_pre)
        return model_error(m, FLOW_ERR_NOMEM, "out of memory for the "
                           "gradient's support");
    for (size_t i = 0; i < m->n_nodes; i++) {
        const node *nd = &m->nodes[i];
        for (size_t j = 0; nd->kind == NODE_LAYER && j < nd->n_sup; j++)
            support_push(m, nd->sup[2 * j], nd->sup[2 * j + 1]);
    }
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_EXIT)
            support_push(m, m->nodes[i].bp_off,
                         base_params(&m->nodes[i].base));
    support_push(m, m->base_off, base_params(&m->base));
    m->live_pre[0] = 0;
    for (size_t r = 0; r < m->n_live_runs; r++)
        m->live_pre[r + 1] = m->live_pre[r] + m->live[2 * r + 1];
    return FLOW_OK;
}

const size_t *model_support(const flow_model *m, size_t *n_runs,
                            size_t *n_live, const size_t **live_pre)
{
    *n_runs = m->n_live_runs;
    *n_live = m->n_live;
    if (live_pre)
        *live_pre = m->live_pre;
    return m->live;
}

size_t model_support_run(const size_t *live_pre, size_t n_runs, size_t j)
{
    size_t lo = 0, hi = n_runs;     /* live_pre[lo] <= j < live_pre[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (live_pre[mid] <= j)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

void model_set_live_slots(flow_model *m, int on) { m->blk_live = on != 0; }

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
    if (base_make(&m->base, m->base_kind, model_out_dim(m), m->base_comps)
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
        size_t made0 = nn_made_created();
        int rc;
        if (nd->kind != NODE_LAYER)
            continue;
        memset(&diag, 0, sizeof diag);
        diag.struct_size = sizeof diag;
        nd->self = nd->type->create(flow_host_services(), &nd->cfg, &diag);
        nd->host_made = nn_made_created() != made0;
        if (!nd->self)
            return model_error(m, FLOW_ERR_PLUGIN, "%s (%s): create failed: "
                               "%s", nd->label, nd->file,
                               diag.message[0] ? diag.message : "no message");
        if (!nd->type->init)    /* its parameters stay zero */
            continue;
        exec_fill_call(m, nd, &c, 0, NULL, NULL, 0);
        rc = nd->type->init(nd->self, &c, m->params + nd->p_off);
        nd->host_made |= nn_made_created() != made0;
        if (rc != FLOW_OK)
            return model_layer_error(m, nd, rc, "init");
    }
    {
        int rc = support_build(m);
        if (rc != FLOW_OK)
            return rc;
    }
    m->finished = 1;
    return FLOW_OK;
}

/* A parameter-shaped vector (the parameters, Adam's moments, the best
 * parameters) read from a checkpoint of an older format into this host's
 * layout: each layer with the upgrade_params hook converts its slice.  A
 * layer that holds a host MADE but has no hook (a plugin built before
 * ABI 1.11) would read a format 1 or 2 MADE's weights in the old order
 * and run another network without a word: refused. */
int model_upgrade_params(flow_model *m, uint32_t format, flow_real *vec)
{
    for (size_t i = 0; i < m->n_nodes; i++) {
        node *nd = &m->nodes[i];
        const flow_layer_type *t = nd->type;
        flow_call c;
        int rc;
        int hook = nd->kind == NODE_LAYER && nd->self
                   && t->struct_size >= offsetof(flow_layer_type,
                                                 upgrade_params)
                                        + sizeof t->upgrade_params
                   && t->upgrade_params;
        if (!hook && nd->kind == NODE_LAYER && nd->host_made && format < 3
            && nd->desc.n_params)
            return model_error(m, FLOW_ERR_UNSUPPORTED, "%s (%s): the "
                               "checkpoint's format %u stores MADE weights "
                               "in the order flowkit used before format 3, "
                               "and this layer's plugin cannot convert "
                               "them (it has no upgrade_params, ABI 1.11): "
                               "rebuild the plugin against this flowkit, or "
                               "load the checkpoint with the flowkit that "
                               "wrote it and retrain", nd->label, nd->file,
                               (unsigned)format);
        if (!hook || !nd->desc.n_params)
            continue;
        exec_fill_call(m, nd, &c, 0, NULL, NULL, 0);
        rc = t->upgrade_params(nd->self, &c, format, vec + nd->p_off);
        if (rc != FLOW_OK)
            return model_layer_error(m, nd, rc, "converting the parameters "
                                     "of an older checkpoint format");
    }
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

int model_has_whole_batch(const flow_model *m)
{
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_LAYER
            && (m->nodes[i].desc.flags & FLOW_LAYER_WHOLE_BATCH))
            return 1;
    return 0;
}

int model_has_stochastic(const flow_model *m)
{
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].kind == NODE_LAYER
            && (m->nodes[i].desc.flags & FLOW_LAYER_STOCHASTIC))
            return 1;
    return 0;
}

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
