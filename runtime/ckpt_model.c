/* ckpt_model.c - model and trainer checkpoints on top of the safetensors
 * module: a tensor per layer, optimizer and RNG state, the spec source. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "model.h"

struct flow_checkpoint {
    flow_ctx *ctx;
    ckpt *ck;
    char *path;                 /* for messages: the file, or <stdin> */
};

enum { ST_STEP, ST_EPOCH, ST_POS, ST_SKIPPED, ST_BAD, ST_HAS_BEST, ST_N };

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
    flow_ctx *ctx = model_ctx(m);
    const flow_real *p = flow_model_params(m), *b = flow_model_buffers(m);
    size_t np = flow_model_num_params(m), bad;
    uint64_t rng[6], st[ST_N], erng[6];
    flow_train_state ts;
    ckpt_info info;
    ckpt_writer *w;
    char name[CKPT_NAME_MAX];
    int rc = FLOW_OK;

    if (!spec_source)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: a checkpoint needs "
                              "the spec source", path);
    if ((bad = first_nonfinite(p, np)) != (size_t)-1) {
        for (size_t i = 0; i < model_slice_count(m); i++) {
            model_slice_info s;
            model_slice(m, i, &s);
            if (bad >= s.p_off && bad < s.p_off + s.n_params)
                return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: not "
                                      "written: parameter %zu of %s is %g "
                                      "(training diverged)", path,
                                      bad - s.p_off, s.name, (double)p[bad]);
        }
        return flow_ctx_error(ctx, FLOW_ERR_NUMERIC, "%s: not written: "
                              "parameter %zu is not finite", path, bad);
    }
    if (!(w = ckpt_writer_new(ctx)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
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
    memset(&info, 0, sizeof info);
    info.spec_source = spec_source;
    info.history_json = history_json;
    if (t && rc == FLOW_OK) {
        flow_trainer_get_state(t, &ts);
        st[ST_STEP] = ts.step;
        st[ST_EPOCH] = ts.epoch;
        st[ST_POS] = ts.pos;
        st[ST_SKIPPED] = ts.skipped;
        st[ST_BAD] = ts.bad_validations;
        st[ST_HAS_BEST] = (uint64_t)ts.has_best;
        memcpy(erng, ts.epoch_rng, sizeof erng);
        info.epoch = ts.epoch;
        info.step = ts.step;
        info.has_best = ts.has_best;
        info.best_score = ts.best_score;
        rc = add_real(w, "adam/m", flow_trainer_adam_m(t), np);
        if (rc == FLOW_OK)
            rc = add_real(w, "adam/v", flow_trainer_adam_v(t), np);
        if (rc == FLOW_OK && ts.has_best)
            rc = add_real(w, "train/best", flow_trainer_best_params(t), np);
        if (rc == FLOW_OK)
            rc = add_u64(w, "train/state", st, ST_N);
        if (rc == FLOW_OK)
            rc = add_u64(w, "train/epoch_rng", erng, 6);
    }
    if (rc == FLOW_OK)
        rc = ckpt_writer_info(w, &info);
    if (rc == FLOW_OK && spec_path)
        rc = ckpt_writer_meta(w, "spec_path", spec_path);
    for (size_t i = 0; meta && meta[i] && rc == FLOW_OK; i += 2)
        rc = ckpt_writer_meta(w, meta[i], meta[i + 1] ? meta[i + 1] : "");
    if (rc == FLOW_OK)
        rc = ckpt_writer_write(w, path);
    ckpt_writer_free(w);
    return rc;
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
    if ((rc = ckpt_read(ctx, path, &c->ck)) != FLOW_OK) {
        free(c->path);
        free(c);
        return rc;
    }
    *out = c;
    return FLOW_OK;
}

void flow_checkpoint_free(flow_checkpoint *ck)
{
    if (!ck)
        return;
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

int flow_checkpoint_restore(const flow_checkpoint *ck, flow_model *m,
                            flow_trainer *t)
{
    flow_ctx *ctx = ck->ctx;
    flow_real *p = flow_model_params(m), *b = flow_model_buffers(m);
    size_t np = flow_model_num_params(m);
    uint64_t rng[6], st[ST_N];
    char name[CKPT_NAME_MAX];
    int rc;

    for (size_t i = 0; i < model_slice_count(m); i++) {
        model_slice_info s;
        model_slice(m, i, &s);
        if (s.n_params) {
            tensor_name(name, sizeof name, "params", &s);
            if ((rc = ckpt_get(ctx, ck->ck, name, CKPT_REAL, p + s.p_off,
                               s.n_params)) != FLOW_OK
                || (rc = check_loaded(ck, name, p + s.p_off, s.n_params, 0))
                   != FLOW_OK)
                return rc;
        }
        if (s.n_buffers) {
            tensor_name(name, sizeof name, "buffers", &s);
            if ((rc = ckpt_get(ctx, ck->ck, name, CKPT_REAL, b + s.b_off,
                               s.n_buffers)) != FLOW_OK)
                return rc;
        }
    }
    if ((rc = ckpt_get(ctx, ck->ck, "rng/model", CKPT_U64, rng, 6))
        != FLOW_OK)
        return rc;
    flow_model_set_rng(m, rng);
    if (t) {
        flow_train_state ts;
        uint64_t epoch, step;
        int has_best;
        double best;
        if (!flow_checkpoint_has_training(ck))
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "checkpoint has no "
                                  "training state (it was saved without an "
                                  "optimizer)");
        if ((rc = ckpt_get(ctx, ck->ck, "adam/m", CKPT_REAL,
                           flow_trainer_adam_m(t), np)) != FLOW_OK
            || (rc = check_loaded(ck, "adam/m", flow_trainer_adam_m(t), np,
                                  0)) != FLOW_OK
            || (rc = ckpt_get(ctx, ck->ck, "adam/v", CKPT_REAL,
                              flow_trainer_adam_v(t), np)) != FLOW_OK
            || (rc = check_loaded(ck, "adam/v", flow_trainer_adam_v(t), np,
                                  1)) != FLOW_OK
            || (rc = ckpt_get(ctx, ck->ck, "train/state", CKPT_U64, st,
                              ST_N)) != FLOW_OK
            || (rc = ckpt_info_get(ctx, ck->ck, &epoch, &step, &has_best,
                                   &best)) != FLOW_OK)
            return rc;
        memset(&ts, 0, sizeof ts);
        if ((rc = ckpt_get(ctx, ck->ck, "train/epoch_rng", CKPT_U64,
                           ts.epoch_rng, 6)) != FLOW_OK)
            return rc;
        ts.step = st[ST_STEP];
        ts.epoch = st[ST_EPOCH];
        ts.pos = st[ST_POS];
        ts.skipped = st[ST_SKIPPED];
        ts.bad_validations = st[ST_BAD];
        ts.has_best = st[ST_HAS_BEST] != 0;
        ts.best_score = has_best ? best : -INFINITY;
        if (ts.has_best
            && ((rc = ckpt_get(ctx, ck->ck, "train/best", CKPT_REAL,
                               flow_trainer_best_params(t), np)) != FLOW_OK
                || (rc = check_loaded(ck, "train/best",
                                      flow_trainer_best_params(t), np, 0))
                   != FLOW_OK))
            return rc;
        if ((rc = flow_trainer_set_state(t, &ts)) != FLOW_OK)
            return rc;
    }
    return FLOW_OK;
}
