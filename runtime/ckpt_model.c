/* ckpt_model.c - model and trainer checkpoints on top of the safetensors
 * module: a tensor per layer, optimizer and RNG state, every spec source. */
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "json.h"
#include "model.h"

struct flow_checkpoint {
    flow_ctx *ctx;
    ckpt *ck;
    char *path;                 /* for messages: the file, or <stdin> */
    json_doc *imports, *columns, *context_columns;   /* parsed metadata */
    flow_spec_file *files;      /* main spec, then the embedded imports */
    size_t n_files;
    char **names;               /* "CKPT[PATH]" per file */
    const char **aliases;       /* every file's aliases, one array */
    const char **cols;          /* data then context column names */
    size_t n_cols, n_ccols;
};

enum { ST_STEP, ST_EPOCH, ST_POS, ST_SKIPPED, ST_BAD, ST_HAS_BEST, ST_N };

/* The tensors besides the layers': the model's random stream, and the
 * training state a trainer adds. */
static const char *const fixed_tensors[] = {
    "rng/model", "adam/m", "adam/v", "train/best", "train/state",
    "train/epoch_rng", NULL
};

/* "params/<name>" (exits: "params/exit/<name>") into buf. */
static void tensor_name(char *buf, size_t cap, const char *kind,
                        const model_slice_info *s)
{
    snprintf(buf, cap, "%s/%s%s", kind, s->is_exit ? "exit/" : "", s->name);
}

/* First non-finite parameter, or (size_t)-1. */
static size_t first_nonfinite(const flow_real *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return i;
    return (size_t)-1;
}

/* A restored tensor's values must be ones a saved checkpoint can hold:
 * finite (parameters, Adam's first moment, the best parameters) and, for
 * Adam's second moment (a mean of squares, under a square root in the
 * update), >= 0.  A NaN or a negative v would make every later step
 * non-finite, far from the file that caused it. */
static int check_loaded(const flow_checkpoint *ck, const char *name,
                        const flow_real *v, size_t n, int nonneg)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite((double)v[i]) || (nonneg && v[i] < 0))
            return flow_ctx_error(ck->ctx, FLOW_ERR_FORMAT, "%s: tensor "
                                  "'%s': value %zu is %g (%s)", ck->path,
                                  name, i, (double)v[i], nonneg
                                  ? "Adam's second moment must be finite "
                                    "and >= 0" : "must be finite");
    return FLOW_OK;
}

static int add_real(ckpt_writer *w, const char *name, const flow_real *v,
                    size_t n)
{
    uint64_t shape[1] = {n};
    return ckpt_writer_add(w, name, CKPT_REAL, shape, 1, v);
}

static int add_u64(ckpt_writer *w, const char *name, const uint64_t *v,
                   size_t n)
{
    uint64_t shape[1] = {n};
    return ckpt_writer_add(w, name, CKPT_U64, shape, 1, v);
}

/* ------------------------------------------------------------ writing */

/* The "imports" metadata: a JSON array with one object per imported file
 * (docs/formats.md).  NULL in *out when there are none. */
static int imports_json(flow_ctx *ctx, const flow_spec_file *f, size_t n,
                        const char *path, char **out)
{
    json_buf b;
    *out = NULL;
    if (n < 2)
        return FLOW_OK;
    if (!f[0].path)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: a spec with imports "
                              "needs its path (the imports are resolved "
                              "against it)", path);
    json_buf_init(&b);
    json_buf_raw(&b, "[", 1);
    for (size_t i = 1; i < n; i++) {
        const char *res = f[i].resolved ? f[i].resolved : f[i].path;
        if (!f[i].path || !f[i].import || !f[i].text) {
            json_buf_free(&b);
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: imported file %zu "
                                  "lacks its path, import or text", path, i);
        }
        json_buf_raw(&b, i > 1 ? ",{\"path\":" : "{\"path\":", i > 1 ? 9 : 8);
        json_buf_string(&b, f[i].path, strlen(f[i].path));
        json_buf_raw(&b, ",\"import\":", 10);
        json_buf_string(&b, f[i].import, strlen(f[i].import));
        json_buf_raw(&b, ",\"resolved\":", 12);
        json_buf_string(&b, res, strlen(res));
        json_buf_raw(&b, ",\"aliases\":[", 12);
        for (size_t k = 0; k < f[i].n_aliases; k++) {
            if (k)
                json_buf_raw(&b, ",", 1);
            json_buf_string(&b, f[i].aliases[k], strlen(f[i].aliases[k]));
        }
        json_buf_raw(&b, "],\"source\":", 11);
        json_buf_string(&b, f[i].text, f[i].len);
        json_buf_raw(&b, "}", 1);
    }
    json_buf_raw(&b, "]", 1);
    if (b.oom || b.bad_utf8) {
        int oom = b.oom;
        json_buf_free(&b);
        return oom ? flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory")
                   : flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: an imported "
                                    "file or its path is not valid UTF-8",
                                    path);
    }
    *out = b.s;
    return FLOW_OK;
}

/* names[0..n) as a JSON array of strings into *out (NULL when n is 0,
 * and when a name is not UTF-8: such a name could not be matched again,
 * so the columns stay unnamed and are matched by position). */
static int names_json(flow_ctx *ctx, const char *const *names, size_t n,
                      const char *path, char **out)
{
    json_buf b;
    *out = NULL;
    if (!n)
        return FLOW_OK;
    json_buf_init(&b);
    json_buf_raw(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !*names[i]) {
            json_buf_free(&b);
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: column %zu has no "
                                  "name", path, i);
        }
        if (i)
            json_buf_raw(&b, ",", 1);
        json_buf_string(&b, names[i], strlen(names[i]));
    }
    json_buf_raw(&b, "]", 1);
    if (b.oom || b.bad_utf8) {
        int oom = b.oom;
        json_buf_free(&b);
        return oom ? flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory")
                   : FLOW_OK;
    }
    *out = b.s;
    return FLOW_OK;
}

/* Refuses a model with a non-finite parameter, naming the layer. */
static int check_finite_params(flow_model *m, const char *path)
{
    flow_ctx *ctx = model_ctx(m);
    const flow_real *p = flow_model_params(m);
    size_t bad = first_nonfinite(p, flow_model_num_params(m));
    if (bad == (size_t)-1)
        return FLOW_OK;
    for (size_t i = 0; i < model_slice_count(m); i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        if (bad >= s.p_off && bad < s.p_off + s.n_params)
            return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: not written: "
                                  "parameter %zu of %s is %g (training "
                                  "diverged)", path, bad - s.p_off, s.name,
                                  (double)p[bad]);
    }
    return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: not written: "
                          "parameter %zu is not finite", path, bad);
}

/* Parameters, buffers, the model's stream and the trainer's state. */
static int add_tensors(ckpt_writer *w, flow_model *m, flow_trainer *t,
                       uint64_t rng[6], uint64_t st[ST_N], uint64_t erng[6],
                       ckpt_info *info)
{
    const flow_real *p = flow_model_params(m), *b = flow_model_buffers(m);
    size_t np = flow_model_num_params(m);
    char name[CKPT_NAME_MAX];
    flow_train_state ts;
    int rc = FLOW_OK;
    for (size_t i = 0; i < model_slice_count(m) && rc == FLOW_OK; i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        if (s.n_params) {
            tensor_name(name, sizeof name, "params", &s);
            rc = add_real(w, name, p + s.p_off, s.n_params);
        }
        if (rc == FLOW_OK && s.n_buffers) {
            tensor_name(name, sizeof name, "buffers", &s);
            rc = add_real(w, name, b + s.b_off, s.n_buffers);
        }
    }
    flow_model_get_rng(m, rng);
    if (rc == FLOW_OK)
        rc = add_u64(w, "rng/model", rng, 6);
    if (!t || rc != FLOW_OK)
        return rc;
    flow_trainer_get_state(t, &ts);
    st[ST_STEP] = ts.step;
    st[ST_EPOCH] = ts.epoch;
    st[ST_POS] = ts.pos;
    st[ST_SKIPPED] = ts.skipped;
    st[ST_BAD] = ts.bad_validations;
    st[ST_HAS_BEST] = (uint64_t)ts.has_best;
    memcpy(erng, ts.epoch_rng, 6 * sizeof *erng);
    info->epoch = ts.epoch;
    info->step = ts.step;
    info->has_best = ts.has_best;
    info->best_score = ts.best_score;
    rc = add_real(w, "adam/m", flow_trainer_adam_m(t), np);
    if (rc == FLOW_OK)
        rc = add_real(w, "adam/v", flow_trainer_adam_v(t), np);
    if (rc == FLOW_OK && ts.has_best)
        rc = add_real(w, "train/best", flow_trainer_best_params(t), np);
    if (rc == FLOW_OK)
        rc = add_u64(w, "train/state", st, ST_N);
    if (rc == FLOW_OK)
        rc = add_u64(w, "train/epoch_rng", erng, 6);
    return rc;
}

/* flow_checkpoint_info as first published, and with the counts. */
#define INFO_V1_SIZE \
    (offsetof(flow_checkpoint_info, columns) + sizeof(const char *const *))
#define INFO_COUNTS_SIZE \
    (offsetof(flow_checkpoint_info, step) + sizeof(uint64_t))

int flow_checkpoint_write(flow_model *m, flow_trainer *t,
                          const flow_checkpoint_info *in, const char *path)
{
    flow_ctx *ctx = model_ctx(m);
    size_t dim = flow_model_dim(m), cdim = flow_model_context_dim(m);
    uint64_t rng[6], st[ST_N], erng[6];
    char *imports = NULL, *cols = NULL, *ccols = NULL;
    ckpt_info info;
    ckpt_writer *w = NULL;
    int rc;

    if (!in || in->struct_size < INFO_V1_SIZE || !in->files || !in->n_files
        || !in->files[0].text)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: a checkpoint needs the "
                              "spec source", path);
    if ((rc = check_finite_params(m, path)) != FLOW_OK)
        return rc;
    if ((rc = imports_json(ctx, in->files, in->n_files, path, &imports))
        || (in->columns
            && ((rc = names_json(ctx, in->columns, dim, path, &cols))
                || (rc = names_json(ctx, in->columns + dim, cdim, path,
                                    &ccols)))))
        goto out;
    if (!(w = ckpt_writer_new(ctx))) {
        rc = FLOW_ERR_NOMEM;
        goto out;
    }
    memset(&info, 0, sizeof info);
    if ((rc = add_tensors(w, m, t, rng, st, erng, &info)) != FLOW_OK)
        goto out;
    if (!t && in->struct_size >= INFO_COUNTS_SIZE && in->has_counts) {
        info.epoch = in->epoch;
        info.step = in->step;
    }
    info.spec_source = in->files[0].text;
    info.spec_path = in->files[0].path;
    info.history_json = in->history_json;
    info.imports_json = imports;
    info.columns_json = cols;
    info.context_columns_json = ccols;
    rc = ckpt_writer_info(w, &info);
    for (size_t i = 0; in->meta && in->meta[i] && rc == FLOW_OK; i += 2)
        rc = ckpt_writer_meta(w, in->meta[i], in->meta[i + 1]
                                              ? in->meta[i + 1] : "");
    if (rc == FLOW_OK)
        rc = ckpt_writer_write(w, path);
out:
    ckpt_writer_free(w);
    free(imports);
    free(cols);
    free(ccols);
    return rc;
}

int flow_checkpoint_save(flow_model *m, flow_trainer *t,
                         const char *spec_source, const char *spec_path,
                         const char *history_json, const char *path)
{
    return flow_checkpoint_save_meta(m, t, spec_source, spec_path,
                                     history_json, NULL, path);
}

int flow_checkpoint_save_meta(flow_model *m, flow_trainer *t,
                              const char *spec_source, const char *spec_path,
                              const char *history_json,
                              const char *const *meta, const char *path)
{
    flow_spec_file f;
    flow_checkpoint_info in;
    memset(&f, 0, sizeof f);
    memset(&in, 0, sizeof in);
    f.path = spec_path;
    f.text = spec_source;
    f.len = spec_source ? strlen(spec_source) : 0;
    in.struct_size = sizeof in;
    in.files = &f;
    in.n_files = 1;
    in.history_json = history_json;
    in.meta = meta;
    return flow_checkpoint_write(m, t, &in, path);
}

/* ------------------------------------------------------------ reading */

static int bad_meta(flow_checkpoint *c, const char *key, const char *what)
{
    return flow_ctx_error(c->ctx, FLOW_ERR_FORMAT, "%s: metadata '%s' %s",
                          ckpt_path(c->ck), key, what);
}

/* A JSON string without NUL characters (strings of this API are C
 * strings); NULL when v is not one. */
static const char *plain_string(const json_value *v)
{
    return v && v->type == JSON_STRING && strlen(v->str) == v->len ? v->str
                                                                    : NULL;
}

/* "columns" / "context_columns": an array of non-empty strings. */
static int parse_names(flow_checkpoint *c, const char *key, json_doc **doc,
                       size_t *n)
{
    const char *text = ckpt_meta(c->ck, key);
    const json_value *v;
    int rc;
    *n = 0;
    if (!text)
        return FLOW_OK;
    if ((rc = json_parse(c->ctx, key, text, strlen(text), 2, doc)))
        return rc;
    v = json_root(*doc);
    if (v->type != JSON_ARRAY || v->len == 0)
        return bad_meta(c, key, "is not an array of column names");
    for (size_t i = 0; i < v->len; i++) {
        const char *s = plain_string(&v->items[i]);
        if (!s || !*s)
            return bad_meta(c, key, "is not an array of column names");
    }
    *n = v->len;
    return FLOW_OK;
}

static int load_columns(flow_checkpoint *c)
{
    const json_value *a, *b;
    size_t na, nb;
    int rc;
    if ((rc = parse_names(c, "columns", &c->columns, &na))
        || (rc = parse_names(c, "context_columns", &c->context_columns,
                             &nb)))
        return rc;
    if (!na && nb)
        return bad_meta(c, "context_columns", "is given without 'columns'");
    if (!na)
        return FLOW_OK;
    if (!(c->cols = calloc(na + nb, sizeof *c->cols)))
        return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "out of memory");
    a = json_root(c->columns);
    b = nb ? json_root(c->context_columns) : NULL;
    for (size_t i = 0; i < na + nb; i++)
        c->cols[i] = i < na ? a->items[i].str : b->items[i - na].str;
    c->n_cols = na;
    c->n_ccols = nb;
    return FLOW_OK;
}

/* Checks one entry of "imports"; counts its aliases into *n_alias. */
static int check_import(flow_checkpoint *c, const json_value *e,
                        size_t *n_alias)
{
    static const char *const keys[] = {"path", "import", "resolved",
                                       "source", NULL};
    const json_value *al = json_get(e, "aliases");
    if (e->type != JSON_OBJECT || e->len != 5 || !al
        || al->type != JSON_ARRAY)
        return bad_meta(c, "imports", "is not an array of {path, import, "
                        "resolved, aliases, source} objects");
    for (int k = 0; keys[k]; k++) {
        const char *s = plain_string(json_get(e, keys[k]));
        if (!s || (!*s && strcmp(keys[k], "source")))
            return bad_meta(c, "imports", "has an entry whose path, "
                            "import, resolved or source is not a string");
    }
    for (size_t k = 0; k < al->len; k++)
        if (!plain_string(&al->items[k]))
            return bad_meta(c, "imports", "has an alias that is not a "
                            "string");
    *n_alias += al->len;
    return FLOW_OK;
}

/* "CKPT[PATH]" */
static char *embedded_name(const char *ckpt_file, const char *path)
{
    size_t n = strlen(ckpt_file) + strlen(path) + 3;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s[%s]", ckpt_file, path);
    return s;
}

/* The embedded files: the spec, then "imports" (docs/formats.md). */
static int load_sources(flow_checkpoint *c)
{
    const char *text = ckpt_meta(c->ck, "imports");
    const char *spec_path = ckpt_meta(c->ck, "spec_path");
    const json_value *arr = NULL;
    size_t n = 1, n_alias = 0, at = 0;
    int rc;
    if (text) {
        if ((rc = json_parse(c->ctx, "imports", text, strlen(text), 3,
                             &c->imports)))
            return rc;
        arr = json_root(c->imports);
        if (arr->type != JSON_ARRAY)
            return bad_meta(c, "imports", "is not an array");
        if (!spec_path)
            return bad_meta(c, "imports", "is given without 'spec_path'");
        for (size_t i = 0; i < arr->len; i++)
            if ((rc = check_import(c, &arr->items[i], &n_alias)))
                return rc;
        n += arr->len;
    }
    if (!(c->files = calloc(n, sizeof *c->files))
        || !(c->names = calloc(n, sizeof *c->names))
        || (n_alias && !(c->aliases = calloc(n_alias, sizeof *c->aliases))))
        return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "out of memory");
    c->n_files = n;
    c->files[0].path = spec_path ? spec_path : "spec";
    c->files[0].text = ckpt_meta(c->ck, "spec");
    c->files[0].len = strlen(c->files[0].text);
    for (size_t i = 1; i < n; i++) {
        const json_value *e = &arr->items[i - 1], *al = json_get(e, "aliases");
        flow_spec_file *f = &c->files[i];
        f->path = json_get(e, "path")->str;
        f->import = json_get(e, "import")->str;
        f->resolved = json_get(e, "resolved")->str;
        f->text = json_get(e, "source")->str;
        f->len = json_get(e, "source")->len;
        f->aliases = c->aliases + at;
        f->n_aliases = al->len;
        for (size_t k = 0; k < al->len; k++)
            c->aliases[at++] = al->items[k].str;
    }
    for (size_t i = 0; i < n; i++)
        if (!(c->names[i] = embedded_name(ckpt_path(c->ck),
                                          c->files[i].path)))
            return flow_ctx_error(c->ctx, FLOW_ERR_NOMEM, "out of memory");
        else
            c->files[i].name = c->names[i];
    return FLOW_OK;
}

int flow_checkpoint_open(flow_ctx *ctx, const char *path,
                         flow_checkpoint **out)
{
    flow_checkpoint *c;
    int rc;
    *out = NULL;
    if (!(c = calloc(1, sizeof *c)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    c->ctx = ctx;
    if (!(c->path = strdup(strcmp(path, "-") ? path : "<stdin>"))) {
        free(c);
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    }
    if ((rc = ckpt_read(ctx, path, &c->ck)) != FLOW_OK
        || (rc = load_sources(c)) != FLOW_OK
        || (rc = load_columns(c)) != FLOW_OK) {
        flow_checkpoint_free(c);
        return rc;
    }
    *out = c;
    return FLOW_OK;
}

void flow_checkpoint_free(flow_checkpoint *ck)
{
    if (!ck)
        return;
    for (size_t i = 0; ck->names && i < ck->n_files; i++)
        free(ck->names[i]);
    free(ck->names);
    free(ck->files);
    free(ck->aliases);
    free(ck->cols);
    json_free(ck->imports);
    json_free(ck->columns);
    json_free(ck->context_columns);
    ckpt_free(ck->ck);
    free(ck->path);
    free(ck);
}

const char *flow_checkpoint_spec(const flow_checkpoint *ck)
{
    return ckpt_meta(ck->ck, "spec");
}

const char *flow_checkpoint_meta(const flow_checkpoint *ck, const char *key)
{
    return ckpt_meta(ck->ck, key);
}

int flow_checkpoint_has_training(const flow_checkpoint *ck)
{
    return ckpt_find(ck->ck, "adam/m") != NULL;
}

const flow_spec_file *flow_checkpoint_sources(const flow_checkpoint *ck,
                                              size_t *n)
{
    *n = ck->n_files;
    return ck->files;
}

const char *const *flow_checkpoint_columns(const flow_checkpoint *ck,
                                           size_t *n_data, size_t *n_context)
{
    *n_data = ck->n_cols;
    *n_context = ck->n_ccols;
    return ck->cols;
}

/* 1-based line of the first byte where a and b differ. */
static int first_diff_line(const char *a, size_t na, const char *b,
                           size_t nb)
{
    int line = 1;
    for (size_t i = 0; i < na && i < nb && a[i] == b[i]; i++)
        line += a[i] == '\n';
    return line;
}

int flow_checkpoint_check_sources(const flow_checkpoint *ck,
                                  const flow_spec_file *files, size_t n)
{
    const char *p = ckpt_path(ck->ck);
    /* a checkpoint of format 1 does not say what its spec imported */
    size_t cmp = ckpt_version(ck->ck) < 2 && ck->n_files == 1 ? 1 : n;
    if (cmp != ck->n_files)
        return flow_ctx_error(ck->ctx, FLOW_ERR_INVAL, "%s: checkpoint was "
                              "made by a different spec (it embeds %zu "
                              "imported file%s, this spec imports %zu)", p,
                              ck->n_files - 1, ck->n_files == 2 ? "" : "s",
                              n - 1);
    for (size_t i = 0; i < cmp; i++) {
        const flow_spec_file *a = &ck->files[i], *b = &files[i];
        if (a->len != b->len || memcmp(a->text, b->text, a->len))
            return flow_ctx_error(ck->ctx, FLOW_ERR_INVAL, "%s: checkpoint was "
                                  "made by a different spec (first difference "
                                  "at line %d of %s)", p,
                                  first_diff_line(a->text, a->len, b->text,
                                                  b->len),
                                  b->name ? b->name : b->path);
    }
    return FLOW_OK;
}

/* ------------------------------------------------------------ restoring */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every tensor is one this model or its trainer has: a checkpoint of
 * another model with the same element counts is refused, not read. */
static int check_known_tensors(const flow_checkpoint *ck, flow_model *m)
{
    size_t ns = model_slice_count(m), n = 0;
    char **known = calloc(2 * ns + 1, sizeof *known);
    char name[CKPT_NAME_MAX];
    int rc = FLOW_OK;
    if (!known)
        return flow_ctx_error(ck->ctx, FLOW_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < ns && rc == FLOW_OK; i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        for (int k = 0; k < 2; k++) {
            if (!(k ? s.n_buffers : s.n_params))
                continue;
            tensor_name(name, sizeof name, k ? "buffers" : "params", &s);
            if (!(known[n++] = malloc(strlen(name) + 1))) {
                rc = flow_ctx_error(ck->ctx, FLOW_ERR_NOMEM, "out of memory");
                break;
            }
            strcpy(known[n - 1], name);
        }
    }
    if (rc == FLOW_OK)
        qsort(known, n, sizeof *known, cmp_str);
    for (size_t i = 0; i < ckpt_count(ck->ck) && rc == FLOW_OK; i++) {
        const char *t = ckpt_at(ck->ck, i)->name;
        int fixed = 0;
        for (int k = 0; fixed_tensors[k]; k++)
            fixed |= !strcmp(fixed_tensors[k], t);
        if (!fixed && !bsearch(&t, known, n, sizeof *known, cmp_str))
            rc = flow_ctx_error(ck->ctx, FLOW_ERR_FORMAT, "%s: tensor '%.200s' "
                                "is not part of this model", ckpt_path(ck->ck),
                                t);
    }
    for (size_t i = 0; i < n; i++)
        free(known[i]);
    free(known);
    return rc;
}

/* A stored random stream that no stream can be in is refused.  The
 * shuffle stream of a trainer that draws no data (`flowkit fit`, whose
 * checkpoint says objective = reverse_kl) is never seeded: all zero. */
static int check_rng(const flow_checkpoint *ck, const char *name,
                     const uint64_t w[6])
{
    const char *why = ckpt_rng_check(w);
    if (why && !strcmp(name, "train/epoch_rng")
        && ckpt_meta(ck->ck, "objective") && !(w[0] | w[1] | w[2] | w[3]))
        why = w[4] || w[5] ? "has_spare or the cached deviate set in a "
                             "stream that was never seeded" : NULL;
    return why ? flow_ctx_error(ck->ctx, FLOW_ERR_FORMAT, "%s: tensor '%s' "
                                "is not a random generator state: %s",
                                ckpt_path(ck->ck), name, why)
               : FLOW_OK;
}

static int bad_state(const flow_checkpoint *ck, const char *what)
{
    return flow_ctx_error(ck->ctx, FLOW_ERR_FORMAT, "%s: training state: %s",
                          ckpt_path(ck->ck), what);
}

/* The trainer's tensors, whether or not a trainer is restored: all or
 * none, with the shapes of this model and values a run can reach. */
static int check_training(const flow_checkpoint *ck, size_t np,
                          uint64_t st[ST_N], uint64_t erng[6],
                          flow_train_state *ts)
{
    static const char *const part[] = {"adam/m", "adam/v", "train/state",
                                       "train/epoch_rng", NULL};
    const ckpt *c = ck->ck;
    uint64_t epoch, step;
    int has = 0, has_best, rc;
    double best;
    for (int k = 0; part[k]; k++)
        has += ckpt_find(c, part[k]) != NULL;
    if (has == 0)
        return ckpt_find(c, "train/best") ? bad_state(ck, "'train/best' "
                                                      "without the rest")
                                          : FLOW_OK;
    if (has != 4)
        return bad_state(ck, "one of adam/m, adam/v, train/state, "
                         "train/epoch_rng is missing");
    if ((rc = ckpt_check_vec(ck->ctx, c, "adam/m", CKPT_REAL, np))
        || (rc = ckpt_check_vec(ck->ctx, c, "adam/v", CKPT_REAL, np))
        || (ckpt_find(c, "train/best")
            && (rc = ckpt_check_vec(ck->ctx, c, "train/best", CKPT_REAL,
                                    np)))
        || (rc = ckpt_get_vec(ck->ctx, c, "train/state", CKPT_U64, st, ST_N))
        || (rc = ckpt_get_vec(ck->ctx, c, "train/epoch_rng", CKPT_U64, erng,
                              6))
        || (rc = check_rng(ck, "train/epoch_rng", erng))
        || (rc = ckpt_info_get(ck->ctx, c, &epoch, &step, &has_best, &best)))
        return rc;
    if (st[ST_HAS_BEST] > 1)
        return bad_state(ck, "has_best is neither 0 nor 1");
    if (st[ST_STEP] != step || st[ST_EPOCH] != epoch)
        return bad_state(ck, "step or epoch differ from the metadata");
    if (st[ST_SKIPPED] > st[ST_STEP])
        return bad_state(ck, "more skipped steps than steps");
    /* a best score of -inf is reachable: a run whose every validation
     * was -inf still records its first one (train exits 3 then) */
    if ((int)st[ST_HAS_BEST] != has_best
        || (has_best && isnan(best))
        || (has_best != (ckpt_find(c, "train/best") != NULL)))
        return bad_state(ck, "the best validation score, its flag and the "
                         "best parameters disagree");
    memset(ts, 0, sizeof *ts);
    ts->step = st[ST_STEP];
    ts->epoch = st[ST_EPOCH];
    ts->pos = st[ST_POS];
    ts->skipped = st[ST_SKIPPED];
    ts->bad_validations = st[ST_BAD];
    ts->has_best = has_best;
    ts->best_score = has_best ? best : -INFINITY;
    memcpy(ts->epoch_rng, erng, sizeof ts->epoch_rng);
    return FLOW_OK;
}

/* The stored column names fit this model. */
static int check_columns(const flow_checkpoint *ck, flow_model *m)
{
    size_t d = flow_model_dim(m), k = flow_model_context_dim(m);
    if (ck->n_cols && (ck->n_cols != d || ck->n_ccols != k))
        return flow_ctx_error(ck->ctx, FLOW_ERR_FORMAT, "%s: the checkpoint "
                              "names %zu data and %zu context columns, the "
                              "model has %zu and %zu", ckpt_path(ck->ck),
                              ck->n_cols,
                              ck->n_ccols, d, k);
    return FLOW_OK;
}

int flow_checkpoint_restore(const flow_checkpoint *ck, flow_model *m,
                            flow_trainer *t)
{
    flow_ctx *ctx = ck->ctx;
    flow_real *p = flow_model_params(m), *b = flow_model_buffers(m);
    size_t np = flow_model_num_params(m);
    uint64_t rng[6], st[ST_N], erng[6];
    flow_train_state ts;
    char name[CKPT_NAME_MAX];
    /* an older format's parameter layout, converted after reading */
    int old = ckpt_version(ck->ck) < CKPT_FORMAT_VERSION
                  ? ckpt_version(ck->ck) : 0;
    int rc;

    if ((rc = check_known_tensors(ck, m)) != FLOW_OK
        || (rc = check_columns(ck, m)) != FLOW_OK)
        return rc;
    for (size_t i = 0; i < model_slice_count(m); i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        if (s.n_params) {
            tensor_name(name, sizeof name, "params", &s);
            if ((rc = ckpt_get_vec(ctx, ck->ck, name, CKPT_REAL, p + s.p_off,
                                   s.n_params)) != FLOW_OK
                || (rc = check_loaded(ck, name, p + s.p_off, s.n_params, 0))
                   != FLOW_OK)
                return rc;
        }
        if (s.n_buffers) {
            tensor_name(name, sizeof name, "buffers", &s);
            if ((rc = ckpt_get_vec(ctx, ck->ck, name, CKPT_REAL,
                                   b + s.b_off, s.n_buffers)) != FLOW_OK)
                return rc;
        }
    }
    if (old && (rc = model_upgrade_params(m, (uint32_t)old, p)) != FLOW_OK)
        return rc;
    if ((rc = ckpt_get_vec(ctx, ck->ck, "rng/model", CKPT_U64, rng, 6))
        != FLOW_OK || (rc = check_rng(ck, "rng/model", rng)) != FLOW_OK)
        return rc;
    memset(&ts, 0, sizeof ts);
    if ((rc = check_training(ck, np, st, erng, &ts)) != FLOW_OK)
        return rc;
    flow_model_set_rng(m, rng);
    if (!t)
        return FLOW_OK;
    if (!flow_checkpoint_has_training(ck))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: checkpoint has no "
                              "training state (it was saved without an "
                              "optimizer, e.g. by flowkit export --slim): "
                              "it can be evaluated and sampled, not "
                              "resumed", ckpt_path(ck->ck));
    if ((rc = ckpt_get_vec(ctx, ck->ck, "adam/m", CKPT_REAL,
                           flow_trainer_adam_m(t), np)) != FLOW_OK
        || (rc = check_loaded(ck, "adam/m", flow_trainer_adam_m(t), np, 0))
           != FLOW_OK
        || (rc = ckpt_get_vec(ctx, ck->ck, "adam/v", CKPT_REAL,
                              flow_trainer_adam_v(t), np)) != FLOW_OK
        || (rc = check_loaded(ck, "adam/v", flow_trainer_adam_v(t), np, 1))
           != FLOW_OK
        || (old && ((rc = model_upgrade_params(m, (uint32_t)old,
                                               flow_trainer_adam_m(t)))
                        != FLOW_OK
                    || (rc = model_upgrade_params(m, (uint32_t)old,
                                                  flow_trainer_adam_v(t)))
                           != FLOW_OK)))
        return rc;
    if (ts.has_best
        && ((rc = ckpt_get_vec(ctx, ck->ck, "train/best", CKPT_REAL,
                               flow_trainer_best_params(t), np)) != FLOW_OK
            || (rc = check_loaded(ck, "train/best",
                                  flow_trainer_best_params(t), np, 0))
               != FLOW_OK
            || (old && (rc = model_upgrade_params(
                            m, (uint32_t)old, flow_trainer_best_params(t)))
                           != FLOW_OK)))
        return rc;
    return flow_trainer_set_state(t, &ts);
}
