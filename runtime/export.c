/* export.c - portable weights: a trained model as a plain safetensors file
 * with one named tensor per weight and its architecture (docs/export.md). */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "ctx.h"
#include "json.h"
#include "model_impl.h"

#define EXPORT_FORMAT "flowkit.export"
#define EXPORT_FORMAT_VERSION "1"

/* Keys of a layer's architecture entry that the host writes; a layer's
 * export_tensors() may not set them. */
static const char *const host_keys[] = {
    "index", "type", "name", "dim", "context", "n_params", "n_buffers",
    "attrs", "shape", "out_shape", NULL};

/* The sink of one export: flow_export first, so a layer's calls land
 * here; names and copies of every tensor of the file. */
typedef struct sink {
    flow_export ex;
    flow_ctx *ctx;
    ckpt_writer *w;
    const char *path;
    char prefix[64];            /* "layers.3." */
    const node *nd;             /* layer being exported, NULL outside */
    json_buf *layer;            /* its architecture entry (keys appended) */
    int not_portable;           /* the layer set "portable": false */
    char **names;               /* full names written so far */
    void **data;                /* owned copies, ckpt_writer borrows them */
    size_t n, cap;
    char err[512];              /* first failure inside a layer's calls */
} sink;

static int sink_fail(sink *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int sink_fail(sink *s, int code, const char *fmt, ...)
{
    va_list ap;
    if (!s->err[0]) {
        va_start(ap, fmt);
        vsnprintf(s->err, sizeof s->err, fmt, ap);
        va_end(ap);
    }
    return code;
}

static ckpt_dtype to_ckpt(flow_dtype t, int *ok)
{
    *ok = 1;
    switch (t) {
    case FLOW_DTYPE_F32: return CKPT_F32;
    case FLOW_DTYPE_F64: return CKPT_F64;
    case FLOW_DTYPE_I64: return CKPT_I64;
    case FLOW_DTYPE_U8: return CKPT_U8;
    }
    *ok = 0;
    return CKPT_F32;
}

/* Adds a tensor under its full name, copying the data; refuses a name
 * already in the file, naming the layer that wrote it. */
static int add_full(sink *s, const char *full, flow_dtype dtype, size_t ndim,
                    const size_t *shape, const void *data)
{
    uint64_t sh[CKPT_MAX_DIMS];
    size_t numel = 1, bytes;
    int ok, rc;
    ckpt_dtype ct = to_ckpt(dtype, &ok);
    const char *who = s->nd ? s->nd->label : "the base";
    if (!ok)
        return sink_fail(s, FLOW_ERR_INVAL, "tensor '%s' of %s: unknown "
                         "dtype %d", full, who, (int)dtype);
    if (ndim > CKPT_MAX_DIMS)
        return sink_fail(s, FLOW_ERR_INVAL, "tensor '%s' of %s: %zu "
                         "dimensions, at most %d", full, who, ndim,
                         CKPT_MAX_DIMS);
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], full))
            return sink_fail(s, FLOW_ERR_INVAL, "tensor '%s' of %s is "
                             "written twice (tensor names must be unique)",
                             full, who);
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] && numel > SIZE_MAX / 8 / shape[i])
            return sink_fail(s, FLOW_ERR_INVAL, "tensor '%s' of %s is too "
                             "large", full, who);
        numel *= shape[i];
        sh[i] = shape[i];
    }
    bytes = numel * ckpt_dtype_size(ct);
    if (numel && !data)
        return sink_fail(s, FLOW_ERR_INVAL, "tensor '%s' of %s has no data",
                         full, who);
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 32;
        char **nn = realloc(s->names, nc * sizeof *nn);
        void **nd;
        if (nn)
            s->names = nn;
        nd = nn ? realloc(s->data, nc * sizeof *nd) : NULL;
        if (!nd)
            return sink_fail(s, FLOW_ERR_NOMEM, "out of memory");
        s->data = nd;
        s->cap = nc;
    }
    s->names[s->n] = malloc(strlen(full) + 1);
    if (s->names[s->n])
        strcpy(s->names[s->n], full);
    s->data[s->n] = malloc(bytes ? bytes : 1);
    if (!s->names[s->n] || !s->data[s->n]) {
        free(s->names[s->n]);
        free(s->data[s->n]);
        return sink_fail(s, FLOW_ERR_NOMEM, "out of memory");
    }
    if (bytes)
        memcpy(s->data[s->n], data, bytes);
    s->n++;
    if ((rc = ckpt_writer_add(s->w, full, ct, sh, ndim, s->data[s->n - 1])))
        return sink_fail(s, rc, "%s", flow_errmsg(s->ctx));
    return FLOW_OK;
}

static int sink_tensor(flow_export *ex, const char *name, flow_dtype dtype,
                       size_t ndim, const size_t *shape, const void *data)
{
    sink *s = (sink *)ex;
    char full[CKPT_NAME_MAX];
    if (!name || !*name
        || (size_t)snprintf(full, sizeof full, "%s%s", s->prefix, name)
               >= sizeof full)
        return sink_fail(s, FLOW_ERR_INVAL, "%s: empty or too long tensor "
                         "name", s->nd ? s->nd->label : "export");
    return add_full(s, full, dtype, ndim, shape, data);
}

static int sink_attr(flow_export *ex, const char *key, const char *json)
{
    sink *s = (sink *)ex;
    json_doc *doc = NULL;
    const char *who = s->nd ? s->nd->label : "export";
    if (!s->layer || !key || !*key || !json)
        return sink_fail(s, FLOW_ERR_INVAL, "%s: attribute without a key, "
                         "value or layer", who);
    if (!strcmp(key, "portable")) {
        if (strcmp(json, "false"))
            return sink_fail(s, FLOW_ERR_INVAL, "%s: attribute 'portable' "
                             "may only be set to false", who);
        s->not_portable = 1;
        return FLOW_OK;
    }
    for (int i = 0; host_keys[i]; i++)
        if (!strcmp(host_keys[i], key))
            return sink_fail(s, FLOW_ERR_INVAL, "%s: attribute '%s' is the "
                             "host's", who, key);
    if (json_parse(s->ctx, key, json, strlen(json), JSON_DEFAULT_DEPTH, &doc)
        != FLOW_OK)
        return sink_fail(s, FLOW_ERR_INVAL, "%s: attribute '%s' is not "
                         "JSON: %s", who, key, flow_errmsg(s->ctx));
    json_free(doc);
    json_buf_raw(s->layer, ", ", 2);
    json_buf_string(s->layer, key, strlen(key));
    json_buf_raw(s->layer, ": ", 2);
    json_buf_raw(s->layer, json, strlen(json));
    return FLOW_OK;
}

/* ------------------------------------------------- architecture JSON */

static void json_num(json_buf *b, double v)
{
    if (v != v || v - v != 0)           /* NaN, inf: not JSON */
        json_buf_raw(b, "null", 4);
    else
        json_buf_printf(b, "%.17g", v);
}

static void attrs_json(json_buf *b, const flow_attr_spec *spec,
                       const flow_attr_value *v);

static void attr_json(json_buf *b, const flow_attr_spec *sp,
                      const flow_attr_value *v)
{
    switch (v->type) {
    case FLOW_ATTR_INT:
        json_buf_printf(b, "%" PRId64, v->i);
        break;
    case FLOW_ATTR_REAL:
        json_num(b, v->r);
        break;
    case FLOW_ATTR_BOOL:
        json_buf_printf(b, "%s", v->i ? "true" : "false");
        break;
    case FLOW_ATTR_STRING:
    case FLOW_ATTR_ENUM:
        json_buf_string(b, v->s ? v->s : "", v->s ? strlen(v->s) : 0);
        break;
    case FLOW_ATTR_INT_LIST:
        json_buf_raw(b, "[", 1);
        for (size_t i = 0; i < v->n; i++)
            json_buf_printf(b, "%s%" PRId64, i ? ", " : "", v->ilist[i]);
        json_buf_raw(b, "]", 1);
        break;
    case FLOW_ATTR_REAL_LIST:
        json_buf_raw(b, "[", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                json_buf_raw(b, ", ", 2);
            json_num(b, v->rlist[i]);
        }
        json_buf_raw(b, "]", 1);
        break;
    case FLOW_ATTR_VARIANT: {
        const flow_variant_alt *alt = sp->alternatives ?
                                      &sp->alternatives[v->i] : NULL;
        json_buf_raw(b, "{\"name\": ", 9);
        json_buf_string(b, v->s ? v->s : "", v->s ? strlen(v->s) : 0);
        json_buf_raw(b, ", \"attrs\": ", 11);
        attrs_json(b, alt ? alt->attrs : NULL, v->sub);
        json_buf_raw(b, "}", 1);
        break;
    }
    default:
        json_buf_raw(b, "null", 4);
    }
}

/* "shape" (the state entering the layer: [D], or [C, H, W] of an image
 * stored flat in C order) and "out_shape" (what leaves it; a squeeze
 * changes it), docs/export.md section 2. */
static void shapes_json(json_buf *b, const node *nd)
{
    size_t r = nd->cfg.rank ? nd->cfg.rank : 1, or = nd->desc.out_rank;
    const size_t *in = nd->cfg.rank ? nd->cfg.shape : &nd->in_dim;
    const size_t *out = or ? nd->desc.out_shape : in;
    json_buf_printf(b, ", \"shape\": [");
    for (size_t i = 0; i < r; i++)
        json_buf_printf(b, "%s%zu", i ? ", " : "", in[i]);
    json_buf_printf(b, "], \"out_shape\": [");
    for (size_t i = 0; i < (or ? or : r); i++)
        json_buf_printf(b, "%s%zu", i ? ", " : "", out[i]);
    json_buf_raw(b, "]", 1);
}

/* {"name": value, ...} of a resolved attribute table. */
static void attrs_json(json_buf *b, const flow_attr_spec *spec,
                       const flow_attr_value *v)
{
    json_buf_raw(b, "{", 1);
    for (size_t i = 0; spec && v && spec[i].name; i++) {
        if (i)
            json_buf_raw(b, ", ", 2);
        json_buf_string(b, spec[i].name, strlen(spec[i].name));
        json_buf_raw(b, ": ", 2);
        attr_json(b, &spec[i], &v[i]);
    }
    json_buf_raw(b, "}", 1);
}

/* The base's JSON and its parameters as tensors PREFIX{mean, ...}. */
static int base_export(sink *s, const base_dist *bd, const flow_real *p,
                       const char *prefix, json_buf *b)
{
    size_t d = bd->dim, k = bd->comps;
    char full[128];
    int rc = FLOW_OK;
    switch (bd->kind) {
    case BASE_NORMAL:
        json_buf_printf(b, "{\"kind\": \"normal\", \"dim\": %zu}", d);
        return FLOW_OK;
    case BASE_LOGISTIC:
        json_buf_printf(b, "{\"kind\": \"logistic\", \"dim\": %zu}", d);
        return FLOW_OK;
    case BASE_DIAG_NORMAL: {
        size_t sh[1] = {d};
        json_buf_printf(b, "{\"kind\": \"diag_normal\", \"dim\": %zu, "
                        "\"tensors\": [\"%smean\", \"%slog_std\"]}", d,
                        prefix, prefix);
        snprintf(full, sizeof full, "%smean", prefix);
        rc = add_full(s, full, FLOW_DTYPE_REAL, 1, sh, p);
        snprintf(full, sizeof full, "%slog_std", prefix);
        return rc ? rc : add_full(s, full, FLOW_DTYPE_REAL, 1, sh, p + d);
    }
    case BASE_GMM: {
        size_t sk[1] = {k}, skd[2] = {k, d};
        json_buf_printf(b, "{\"kind\": \"mixture\", \"dim\": %zu, "
                        "\"components\": %zu, "
                        "\"tensors\": [\"%slogits\", \"%smeans\", "
                        "\"%slog_stds\"]}", d, k, prefix, prefix, prefix);
        snprintf(full, sizeof full, "%slogits", prefix);
        rc = add_full(s, full, FLOW_DTYPE_REAL, 1, sk, p);
        snprintf(full, sizeof full, "%smeans", prefix);
        if (!rc)
            rc = add_full(s, full, FLOW_DTYPE_REAL, 2, skd, p + k);
        snprintf(full, sizeof full, "%slog_stds", prefix);
        return rc ? rc : add_full(s, full, FLOW_DTYPE_REAL, 2, skd,
                                  p + k + k * d);
    }
    }
    return sink_fail(s, FLOW_ERR_INVAL, "unknown base distribution %d",
                     (int)bd->kind);
}

static int has_hook(const flow_layer_type *t)
{
    return t->struct_size >= offsetof(flow_layer_type, export_tensors)
                             + sizeof t->export_tensors
           && t->export_tensors;
}

/* The flat parameters (named as the descriptor names them) and buffers
 * of a layer without an export hook. */
static int export_flat(sink *s, flow_model *m, const node *nd)
{
    const flow_layer_desc *d = &nd->desc;
    const flow_real *p = m->params + nd->p_off;
    int rc = FLOW_OK;
    if (d->n_tensors && d->tensors && d->n_tensors <= d->tensors_cap) {
        size_t off = 0;
        for (size_t i = 0; i < d->n_tensors && rc == FLOW_OK; i++) {
            size_t sh[1] = {d->tensors[i].count};
            rc = sink_tensor(&s->ex, d->tensors[i].name, FLOW_DTYPE_REAL, 1,
                             sh, p + off);
            off += d->tensors[i].count;
        }
    } else if (d->n_params) {
        size_t sh[1] = {d->n_params};
        rc = sink_tensor(&s->ex, "params", FLOW_DTYPE_REAL, 1, sh, p);
    }
    if (rc == FLOW_OK && d->n_buffers) {
        size_t sh[1] = {d->n_buffers};
        rc = sink_tensor(&s->ex, "buffers", FLOW_DTYPE_REAL, 1, sh,
                         m->buffers + nd->b_off);
    }
    return rc;
}

static int export_layer(sink *s, flow_model *m, size_t i, json_buf *arch,
                        flow_verify_note_fn warn, void *arg)
{
    node *nd = &m->nodes[i];
    const flow_layer_type *t = nd->type;
    int portable = has_hook(t), rc;
    json_buf lb;
    json_buf_init(&lb);
    s->nd = nd;
    s->layer = &lb;
    s->not_portable = 0;
    s->err[0] = '\0';
    snprintf(s->prefix, sizeof s->prefix, "layers.%zu.", i);
    json_buf_printf(&lb, "{\"index\": %zu, \"type\": ", i);
    json_buf_string(&lb, t->name, strlen(t->name));
    json_buf_raw(&lb, ", \"name\": ", 10);
    json_buf_string(&lb, nd->label, strlen(nd->label));
    json_buf_printf(&lb, ", \"dim\": %zu, \"context\": %zu, \"n_params\": "
                    "%zu, \"n_buffers\": %zu, \"attrs\": ", nd->in_dim,
                    nd->cfg.context_dim, nd->desc.n_params,
                    nd->desc.n_buffers);
    attrs_json(&lb, t->attrs, nd->attrs);
    shapes_json(&lb, nd);
    if (portable) {
        flow_call c;
        exec_fill_call(m, nd, &c, 0, NULL, NULL, 0);
        rc = t->export_tensors(nd->self, &c, &s->ex);
        if (rc != FLOW_OK && !s->err[0])
            sink_fail(s, rc, "%s", c.err[0] ? c.err : "export failed");
    } else {
        rc = export_flat(s, m, nd);
    }
    if (!portable || s->not_portable) {
        char line[512];
        snprintf(line, sizeof line, "layer %zu, %s (%s): %s; a port cannot "
                 "be guaranteed to reproduce its density", i, nd->label,
                 nd->file, portable ? "its type says its export is not "
                 "exact" : "its type has no export hook, so only its flat "
                 "parameters are written");
        if (warn && rc == FLOW_OK)
            warn(arg, line);
    }
    json_buf_printf(&lb, ", \"portable\": %s",
                    portable && !s->not_portable ? "true" : "false");
    json_buf_raw(&lb, "}", 1);
    if (rc == FLOW_OK && lb.oom)
        rc = sink_fail(s, FLOW_ERR_NOMEM, "out of memory");
    if (rc == FLOW_OK)
        json_buf_raw(arch, lb.s, lb.len);
    else
        rc = flow_ctx_error(s->ctx, rc ? rc : FLOW_ERR, "%s: layer %zu, %s "
                            "(%s): %s", s->path, i, nd->label, nd->file,
                            s->err[0] ? s->err : "export failed");
    json_buf_free(&lb);
    s->nd = NULL;
    s->layer = NULL;
    return rc;
}

/* Layers, exits and bases into arch (the "architecture" JSON) and the
 * tensors into s. */
static int build(sink *s, flow_model *m, json_buf *arch,
                 flow_verify_note_fn warn, void *arg)
{
    json_buf ex;
    int rc = FLOW_OK, first = 1;
    json_buf_init(&ex);
    json_buf_printf(arch, "{\"format_version\": 1, \"dim\": %zu, "
                    "\"context_dim\": %zu, \"dtype\": \"%s\", \"n_params\": "
                    "%zu, \"layers\": [", m->dim, m->cdim,
                    FLOW_REAL_DOUBLE ? "F64" : "F32", m->n_params);
    json_buf_raw(&ex, "[", 1);
    for (size_t i = 0; i < m->n_nodes && rc == FLOW_OK; i++) {
        node *nd = &m->nodes[i];
        if (nd->kind == NODE_EXIT) {
            char pre[64];
            snprintf(pre, sizeof pre, "exits.%zu.", i);
            json_buf_printf(&ex, "%s{\"index\": %zu, \"name\": ",
                            ex.len > 1 ? ", " : "", i);
            json_buf_string(&ex, nd->name ? nd->name : "",
                            nd->name ? strlen(nd->name) : 0);
            json_buf_printf(&ex, ", \"dim\": %zu, \"dims\": %zu, "
                            "\"z_offset\": %zu, \"base\": ", nd->in_dim,
                            nd->k, nd->z_off);
            rc = base_export(s, &nd->base, m->params + nd->bp_off, pre, &ex);
            json_buf_raw(&ex, "}", 1);
            if (rc)
                rc = flow_ctx_error(s->ctx, rc, "%s: exit %s: %s", s->path,
                                    nd->name ? nd->name : "", s->err);
            continue;
        }
        if (!first)
            json_buf_raw(arch, ", ", 2);
        first = 0;
        rc = export_layer(s, m, i, arch, warn, arg);
    }
    json_buf_raw(&ex, "]", 1);
    json_buf_raw(arch, "], \"exits\": ", 12);
    json_buf_raw(arch, ex.s ? ex.s : "[]", ex.s ? ex.len : 2);
    json_buf_free(&ex);
    if (rc != FLOW_OK)
        return rc;
    json_buf_printf(arch, ", \"base\": ");
    if ((rc = base_export(s, &m->base, m->params + m->base_off, "base.",
                          arch)) != FLOW_OK)
        return flow_ctx_error(s->ctx, rc, "%s: base: %s", s->path, s->err);
    json_buf_printf(arch, ", \"z_offset\": %zu}", m->z_final);
    return arch->oom ? flow_ctx_error(s->ctx, FLOW_ERR_NOMEM, "out of memory")
                     : FLOW_OK;
}

int flow_model_export(flow_model *m, const char *spec_source,
                      const char *path, flow_verify_note_fn warn, void *arg)
{
    sink s;
    json_buf arch;
    int rc;
    if (!m || !path)
        return m ? model_error(m, FLOW_ERR_INVAL, "flow_model_export: no "
                               "path") : FLOW_ERR_INVAL;
    if (!m->finished)
        return model_error(m, FLOW_ERR_INVAL, "%s: the model is not "
                           "finished (flow_model_finish)", path);
    memset(&s, 0, sizeof s);
    s.ex.struct_size = sizeof s.ex;
    s.ex.host_data = &s;
    s.ex.tensor = sink_tensor;
    s.ex.attr = sink_attr;
    s.ctx = m->ctx;
    s.path = path;
    json_buf_init(&arch);
    if (!(s.w = ckpt_writer_new(m->ctx))) {
        rc = FLOW_ERR_NOMEM;
        goto out;
    }
    ckpt_writer_plain(s.w);
    if ((rc = build(&s, m, &arch, warn, arg)) != FLOW_OK)
        goto out;
    if ((rc = ckpt_writer_meta(s.w, "format", EXPORT_FORMAT))
        || (rc = ckpt_writer_meta(s.w, "format_version",
                                  EXPORT_FORMAT_VERSION))
        || (rc = ckpt_writer_meta(s.w, "flowkit_version", flow_version()))
        || (rc = ckpt_writer_meta(s.w, "dtype",
                                  FLOW_REAL_DOUBLE ? "F64" : "F32"))
        || (rc = ckpt_writer_meta(s.w, "architecture", arch.s))
        || (rc = ckpt_writer_meta(s.w, "spec",
                                  spec_source ? spec_source : "")))
        goto out;
    rc = ckpt_writer_write(s.w, path);
out:
    ckpt_writer_free(s.w);
    for (size_t i = 0; i < s.n; i++) {
        free(s.names[i]);
        free(s.data[i]);
    }
    free(s.names);
    free(s.data);
    json_buf_free(&arch);
    return rc;
}
