/* test_conform.c - the conformance checks: every bundled layer passes them
 * with several settings, each deliberately buggy layer fails exactly the
 * check that should catch it, and the failure notes say where. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "flow/flowc.h"
#include "../cli/conform.h"
#include "../cli/conform_guard.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(flow_plugin_load(ctx, test_plugin("buggy")) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

static void print_report(const char *what, const conform_report *rep)
{
    for (size_t i = 0; i < rep->n; i++) {
        const conform_row *r = &rep->rows[i];
        if (!r->pass)
            fprintf(stderr, "%s: FAIL %-34s err %.3g tol %.3g %s\n", what,
                    r->name, r->err, r->tol, r->note);
    }
}

static void run_checks(const char *type, const flow_attr_value *attrs,
                       size_t dim, conform_report *rep)
{
    const char *file = NULL;
    const flow_layer_type *t = flow_layer_type_find(ctx, type, &file);
    conform_opts o;
    ck_assert_ptr_nonnull(t);
    conform_default_opts(&o);
    o.perturb = 0.5;            /* elementwise layers: large logdets */
    o.dim = dim;
    o.seed = 7 + dim;
    ck_assert_msg(conform_layer(ctx, t, file, attrs, &o, rep) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    ck_assert_uint_ge(rep->n, 7);       /* a failed forward stops at 7 */
}

START_TEST(test_actnorm_conforms)
{
    flow_attr_value eps;
    conform_report rep;
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    eps.r = 1e-6;
    for (size_t d = 1; d <= 6; d += 5) {
        run_checks("actnorm", &eps, d, &rep);
        print_report("actnorm", &rep);
        ck_assert_int_eq(rep.failures, 0);
    }
}
END_TEST

START_TEST(test_permute_conforms)
{
    int64_t perm[5] = {3, 0, 4, 1, 2};
    flow_attr_value order, sub;
    conform_report rep;
    for (int alt = 0; alt < 3; alt++) {
        memset(&order, 0, sizeof order);
        memset(&sub, 0, sizeof sub);
        order.type = FLOW_ATTR_VARIANT;
        order.i = alt;
        order.sub = &sub;
        sub.type = alt == 1 ? FLOW_ATTR_INT : FLOW_ATTR_INT_LIST;
        sub.i = 5;
        sub.ilist = perm;
        sub.n = 5;
        run_checks("permute", &order, 5, &rep);
        print_report("permute", &rep);
        ck_assert_int_eq(rep.failures, 0);
    }
}
END_TEST

START_TEST(test_logit_conforms)
{
    flow_attr_value alpha;
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, "logit", &file);
    conform_report rep;
    conform_opts o;
    memset(&alpha, 0, sizeof alpha);
    alpha.type = FLOW_ATTR_REAL;
    alpha.r = 0.05;
    conform_default_opts(&o);
    o.dim = 3;
    o.has_bounds = 1;
    o.lo = 0;
    o.hi = 1;
    ck_assert_int_eq(conform_layer(ctx, t, file, &alpha, &o, &rep), FLOW_OK);
    print_report("logit", &rep);
    ck_assert_int_eq(rep.failures, 0);
}
END_TEST

START_TEST(test_batchnorm_conforms)
{
    flow_attr_value a[2];
    conform_report rep;
    memset(a, 0, sizeof a);
    a[0].type = a[1].type = FLOW_ATTR_REAL;
    a[0].r = 0.1;
    a[1].r = 1e-5;
    run_checks("batchnorm", a, 4, &rep);
    print_report("batchnorm", &rep);
    ck_assert_int_eq(rep.failures, 0);
}
END_TEST

START_TEST(test_linear_conforms)
{
    flow_attr_value perm, seed;
    conform_report rep;
    for (int alt = 0; alt < 3; alt++)
        for (size_t d = 1; d <= 5; d += 2) {
            memset(&perm, 0, sizeof perm);
            memset(&seed, 0, sizeof seed);
            perm.type = FLOW_ATTR_VARIANT;
            perm.i = alt;
            perm.sub = &seed;
            seed.type = FLOW_ATTR_INT;
            seed.i = 3;
            run_checks("linear", &perm, d, &rep);
            print_report("linear", &rep);
            ck_assert_int_eq(rep.failures, 0);
        }
}
END_TEST

/* Resolved attributes of a coupling / maf style layer (coupling's sixth,
 * net, is mlp). */
typedef struct ar_attrs {
    flow_attr_value v[6];
    flow_attr_value spline[5];
    flow_attr_value sub;
    int64_t hidden[2];
    int64_t list[8];
} ar_attrs;

/* transformer: 0 affine, 1 additive, 2 spline; second: variant index and
 * argument of the mask (coupling) or order (maf). */
static void make_ar_attrs(ar_attrs *a, int tf, int alt, int64_t arg,
                          const int64_t *list, size_t n)
{
    memset(a, 0, sizeof *a);
    a->v[0].type = FLOW_ATTR_VARIANT;
    a->v[0].i = tf;
    a->v[0].sub = tf == 2 ? a->spline : NULL;
    for (int i = 0; i < 5; i++)
        a->spline[i].type = i ? FLOW_ATTR_REAL : FLOW_ATTR_INT;
    a->spline[0].i = 5;
    a->spline[1].r = 2.5;
    a->spline[2].r = a->spline[3].r = a->spline[4].r = 1e-3;
    a->v[1].type = FLOW_ATTR_VARIANT;
    a->v[1].i = alt;
    a->v[1].sub = &a->sub;
    a->sub.type = list ? FLOW_ATTR_INT_LIST : FLOW_ATTR_INT;
    a->sub.i = arg;
    if (list) {
        memcpy(a->list, list, n * sizeof *list);
        a->sub.ilist = a->list;
        a->sub.n = n;
    }
    a->v[2].type = FLOW_ATTR_INT_LIST;
    a->hidden[0] = 16;
    a->hidden[1] = 12;
    a->v[2].ilist = a->hidden;
    a->v[2].n = 2;
    a->v[3].type = FLOW_ATTR_ENUM;
    a->v[3].i = 2;                      /* tanh: smooth for FD checks */
    a->v[4].type = FLOW_ATTR_BOOL;
    a->v[4].i = 1;
    a->v[5].type = FLOW_ATTR_VARIANT;
}

static void check_with_context(const char *type, const ar_attrs *a,
                               size_t dim, size_t k, const char *what)
{
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, type, &file);
    conform_report rep;
    conform_opts o;
    ck_assert_ptr_nonnull(t);
    conform_default_opts(&o);
    o.dim = dim;
    o.context_dim = k;
    o.rows = 3;
    o.seed = 11 + dim + k;
    ck_assert_msg(conform_layer(ctx, t, file, a->v, &o, &rep) == FLOW_OK,
                  "%s", flow_errmsg(ctx));
    print_report(what, &rep);
    ck_assert_msg(rep.failures == 0, "%s: %d checks failed", what,
                  rep.failures);
}

START_TEST(test_coupling_conforms)
{
    static const int64_t mask[5] = {1, 0, 0, 1, 1};
    ar_attrs a;
    char what[64];
    for (int tf = 0; tf < 3; tf++)
        for (int alt = 0; alt < 4; alt++)
            for (size_t k = 0; k <= 2; k += 2) {
                make_ar_attrs(&a, tf, alt, alt == 2 ? 2 : 1,
                              alt == 3 ? mask : NULL, 5);
                snprintf(what, sizeof what, "coupling tf %d mask %d ctx %zu",
                         tf, alt, k);
                check_with_context("coupling", &a, 5, k, what);
            }
}
END_TEST

START_TEST(test_autoregressive_conforms)
{
    static const int64_t order[4] = {2, 0, 3, 1};
    static const char *const kinds[] = {"maf", "iaf"};
    ar_attrs a;
    char what[64];
    for (int kind = 0; kind < 2; kind++)
        for (int tf = 0; tf < 3; tf++)
            for (int alt = 0; alt < 4; alt++) {
                size_t k = (size_t)(alt % 2) * 2;
                make_ar_attrs(&a, tf, alt, 5, alt == 3 ? order : NULL, 4);
                snprintf(what, sizeof what, "%s tf %d order %d ctx %zu",
                         kinds[kind], tf, alt, k);
                check_with_context(kinds[kind], &a, 4, k, what);
            }
}
END_TEST

/* The residual layer: exact mode for the deterministic checks (evaluation
 * mode is exact in every mode, so series/roulette layers take them too);
 * the inverse iterates to a tolerance the FD checks cannot see. */
static const struct { int act, mode; size_t d, k; double coeff; }
res_cases[] = {
    {3, 0, 2, 0, 0.9},      /* elu */
    {2, 0, 3, 2, 0.9},      /* tanh, context */
    {4, 0, 4, 0, 0.7},      /* softplus */
    {1, 0, 3, 1, 0.9},      /* leaky_relu, context */
    {3, 1, 3, 2, 0.9},      /* series(8): exact in evaluation */
    {2, 2, 2, 1, 0.95},     /* roulette(4, 1) */
};

START_TEST(test_residual_conforms)
{
    const double tol = FLOW_REAL_DOUBLE ? 1e-14 : 1e-7;
    const flow_layer_type *t = flow_layer_type_find(ctx, "residual", NULL);
    char what[64];
    res_attrs a;
    conform_report rep;
    conform_opts o;
    res_attrs_make(&a, res_cases[_i].act, res_cases[_i].coeff,
                   res_cases[_i].mode, res_cases[_i].mode == 1 ? 8 : 4, 1,
                   tol, 2000);
    ck_assert_ptr_nonnull(t);
    conform_default_opts(&o);
    o.dim = res_cases[_i].d;
    o.context_dim = res_cases[_i].k;
    o.rows = 3;
    o.seed = 21 + (uint64_t)_i;
    snprintf(what, sizeof what, "residual act %d mode %d D %zu ctx %zu",
             res_cases[_i].act, res_cases[_i].mode, res_cases[_i].d,
             res_cases[_i].k);
    ck_assert_msg(conform_layer(ctx, t, "residual", a.v, &o, &rep)
                  == FLOW_OK, "%s", flow_errmsg(ctx));
    print_report(what, &rep);
    ck_assert_msg(rep.failures == 0, "%s: %d checks failed", what,
                  rep.failures);
    ck_assert_uint_gt(rep.n, 12);
}
END_TEST
/* Resolved attributes of an ode layer (table order of plugins/ode.c):
 * hidden [12, 10], tanh/softplus/elu, time, solver, trace, gradient, t0,
 * t1, identity_init.  Tolerances tight enough that solver error stays
 * below the checks' tolerances in each precision. */
typedef struct ode_attrs {
    flow_attr_value v[9];
    flow_attr_value solver[3];
    flow_attr_value hut[2];
    int64_t hidden[2];
} ode_attrs;

enum { ODE_RK4, ODE_DOPRI5 };

static void make_ode_attrs(ode_attrs *a, int solver, int hutch, int backprop,
                           int act, int concat, double t0, double t1)
{
    memset(a, 0, sizeof *a);
    a->hidden[0] = 12;
    a->hidden[1] = 10;
    a->v[0].type = FLOW_ATTR_INT_LIST;
    a->v[0].ilist = a->hidden;
    a->v[0].n = 2;
    a->v[1].type = FLOW_ATTR_ENUM;
    a->v[1].i = act;                    /* 2 tanh, 3 elu, 4 softplus */
    a->v[2].type = FLOW_ATTR_ENUM;
    a->v[2].i = concat ? 0 : 1;
    a->v[3].type = FLOW_ATTR_VARIANT;
    a->v[3].i = solver;
    a->v[3].sub = a->solver;
    if (solver == ODE_RK4) {
        a->solver[0].type = FLOW_ATTR_INT;
        a->solver[0].i = FLOW_REAL_DOUBLE ? 60 : 12;
    } else {
        a->solver[0].type = a->solver[1].type = FLOW_ATTR_REAL;
        a->solver[0].r = a->solver[1].r = FLOW_REAL_DOUBLE ? 1e-11 : 1e-6;
        a->solver[2].type = FLOW_ATTR_INT;
        a->solver[2].i = 5000;
    }
    a->v[4].type = FLOW_ATTR_VARIANT;
    a->v[4].i = hutch;
    a->v[4].sub = hutch ? a->hut : NULL;
    a->hut[0].type = FLOW_ATTR_ENUM;
    a->hut[1].type = FLOW_ATTR_BOOL;
    a->v[5].type = FLOW_ATTR_ENUM;
    a->v[5].i = backprop;
    a->v[6].type = a->v[7].type = FLOW_ATTR_REAL;
    a->v[6].r = t0;
    a->v[7].r = t1;
    a->v[8].type = FLOW_ATTR_BOOL;
}

/* ode: both solvers, both gradient methods, both time modes, the three
 * smooth activations, a reversed interval, context; Hutchinson layers
 * evaluate with the exact trace (the checker runs in evaluation mode).
 * ELU runs with fixed steps only: its second derivative jumps at 0, so the
 * trace's dynamics are merely Lipschitz, adaptive steps crowd at the kinks
 * and the map's finite differences disagree with any gradient that holds
 * the step sizes fixed (measured 2e-3 relative). */
START_TEST(test_ode_conforms)
{
    static const struct {
        int solver, hutch, backprop, act, concat;
        double t0, t1;
        size_t d, k;
    } cases[] = {
        {ODE_RK4, 0, 1, 3, 1, 0, 0.5, 3, 0},
        {ODE_RK4, 0, 0, 4, 0, 0, 0.5, 2, 2},
        {ODE_DOPRI5, 0, 0, 2, 0, 0, 0.5, 3, 0},
        {ODE_DOPRI5, 0, 1, 2, 1, 0.25, -0.25, 2, 1},
        {ODE_DOPRI5, 1, 0, 2, 0, 0, 0.5, 2, 2},
    };
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, "ode", &file);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ode_attrs a;
        conform_report rep;
        conform_opts o;
        char what[96];
        make_ode_attrs(&a, cases[i].solver, cases[i].hutch,
                       cases[i].backprop, cases[i].act, cases[i].concat,
                       cases[i].t0, cases[i].t1);
        conform_default_opts(&o);
        o.dim = cases[i].d;
        o.context_dim = cases[i].k;
        o.rows = 3;
        o.seed = 21 + i;
        o.max_param_checks = 24;
        snprintf(what, sizeof what, "ode case %zu (solver %d, hutchinson %d, "
                 "backprop %d, ctx %zu)", i, cases[i].solver,
                 cases[i].hutch, cases[i].backprop, cases[i].k);
        ck_assert_msg(conform_layer(ctx, t, file, a.v, &o, &rep) == FLOW_OK,
                      "%s", flow_errmsg(ctx));
        print_report(what, &rep);
        ck_assert_msg(rep.failures == 0, "%s: %d checks failed", what,
                      rep.failures);
        ck_assert_uint_gt(rep.n, 10);
    }
}
END_TEST

/* The checks that must fail for a buggy layer; all others must pass. */
static void expect_only(const char *type, const char *const *failing)
{
    conform_report rep;
    run_checks(type, NULL, 3, &rep);
    for (size_t i = 0; i < rep.n; i++) {
        const conform_row *r = &rep.rows[i];
        int should_fail = 0;
        for (const char *const *f = failing; *f; f++)
            if (!strcmp(r->name, *f))
                should_fail = 1;
        ck_assert_msg(r->pass == !should_fail, "%s: check '%s' %s (err %g, "
                      "tol %g, %s)", type, r->name,
                      r->pass ? "passed but should fail" : "failed",
                      r->err, r->tol, r->note);
    }
}

START_TEST(test_bugs_are_caught_by_the_right_check)
{
    static const char *const none[] = {NULL};
    static const char *const logdet[] = {"logdet vs FD Jacobian (forward)",
                                         "logdet vs FD Jacobian (inverse)",
                                         NULL};
    static const char *const pattern[] = {"declared zeros are zero", NULL};
    static const char *const rows[] = {"rows independent", NULL};
    static const char *const grad[] = {"d/d params vs FD (forward)", NULL};
    static const char *const noninv[] = {"round trip x -> z -> x", NULL};
    static const char *const nondet[] = {"deterministic", NULL};
    static const char *const seed[] = {"same seed, same bits", NULL};
    static const char *const ckpt[] = {"checkpoint round trip", NULL};
    static const char *const biased[] = {"logdet estimate unbiased", NULL};
    static const char *const batch[] = {"d/d input vs FD (forward, training)",
                                        NULL};
    static const char *const nan[] = {"forward runs, finite", NULL};
    static const char *const oob[] = {"writes stay in bounds", NULL};
    static const char *const inwrite[] = {"inputs unchanged", NULL};
    static const char *const describe[] = {"describe() is stable", NULL};
    static const char *const unused[] = {"every parameter is used", NULL};
    expect_only("bug_none", none);
    expect_only("bug_logdet", logdet);
    expect_only("bug_pattern", pattern);
    expect_only("bug_rows", rows);
    expect_only("bug_grad", grad);
    expect_only("bug_noninv", noninv);
    expect_only("bug_nondet", nondet);
    expect_only("bug_seed", seed);
    expect_only("bug_ckpt", ckpt);
    expect_only("est_hutch", none);
    expect_only("bug_biased", biased);
    expect_only("bug_batch", batch);
    expect_only("bug_nan", nan);
    expect_only("bug_oob", oob);
    expect_only("bug_inwrite", inwrite);
    expect_only("bug_describe", describe);
    expect_only("bug_unused", unused);
    expect_only("bug_onegrad", grad);
}
END_TEST

/* The row named `name` of rep. */
static const conform_row *row_named(const conform_report *rep,
                                    const char *name)
{
    for (size_t i = 0; i < rep->n; i++)
        if (!strcmp(rep->rows[i].name, name))
            return &rep->rows[i];
    ck_abort_msg("no row '%s' among %zu", name, rep->n);
    return NULL;
}

/* The number after `key` in the row's note (NAN when there is none). */
static double note_num(const conform_row *r, const char *key)
{
    const char *p = strstr(r->note, key);
    return p ? strtod(p + strlen(key), NULL) : NAN;
}

static void assert_note_has(const conform_row *r, const char *text)
{
    ck_assert_msg(strstr(r->note, text) != NULL, "'%s': note '%s' lacks "
                  "'%s'", r->name, r->note, text);
}

/* The checker's batch: 4 random rows (calibration runs on those alone),
 * then zeros, large magnitudes; D = 3. */
START_TEST(test_guard_notes_name_buffer_and_call)
{
    conform_report rep;
    const conform_row *r;
    double was, now;

    run_checks("bug_oob", NULL, 3, &rep);
    r = row_named(&rep, "writes stay in bounds");
    assert_note_has(r, "forward wrote z[12], 1 element past the end of z "
                    "(4 x 3) (");
    ck_assert_double_gt(r->err, 100);           /* every forward call */
    ck_assert_int_eq(row_named(&rep, "checkpoint round trip")->skipped, 1);

    run_checks("bug_inwrite", NULL, 3, &rep);
    r = row_named(&rep, "inputs unchanged");
    assert_note_has(r, "forward wrote to its input x at row 0, column 0: ");
    assert_note_has(r, ", 12 of 12 elements changed (");
    was = note_num(r, "column 0: ");
    now = note_num(r, " -> ");
    ck_assert_double_eq_tol(now, 0.5 * was, 1e-6 * fabs(was));
    ck_assert_double_gt(fabs(was), 0.01);
    r = row_named(&rep, "writes stay in bounds");
    ck_assert_msg(r->pass && r->err == 0, "%s", r->note);
}
END_TEST

START_TEST(test_failure_notes_localise)
{
    conform_report rep;
    const conform_row *r;
    double layer, fd;

    /* the large-magnitude row overflows; the inverse is not blamed */
    run_checks("bug_nan", NULL, 3, &rep);
    ck_assert_str_eq(row_named(&rep, "forward runs, finite")->note,
                     "row 5 (an edge row), column 0: z = nan");
    r = row_named(&rep, "inverse runs, finite");
    ck_assert_int_eq(r->skipped, 1);
    ck_assert_str_eq(r->note, "not run: the forward produced non-finite "
                     "values");
    ck_assert_int_eq(row_named(&rep, "round trip x -> z -> x")->skipped, 1);

    /* z_0 = ... + 0.5 x_1 under a declared elementwise pattern */
    run_checks("bug_pattern", NULL, 3, &rep);
    r = row_named(&rep, "declared zeros are zero");
    assert_note_has(r, ": dz_0/dx_1 = ");
    ck_assert_double_eq_tol(note_num(r, "dz_0/dx_1 = "), 0.5, 2e-3);

    /* twice the log-det: the worst row's two values differ by 2x */
    run_checks("bug_logdet", NULL, 3, &rep);
    r = row_named(&rep, "logdet vs FD Jacobian (forward)");
    layer = note_num(r, ": layer ");
    fd = note_num(r, "FD Jacobian ");
    ck_assert_double_gt(fabs(fd), 0.01);
    ck_assert_double_eq_tol(layer / fd, 2, 0.01);
    r = row_named(&rep, "logdet forward + inverse = 0");
    ck_assert_double_eq_tol(note_num(r, "forward "),
                            -note_num(r, "inverse "), 1e-6);

    /* the batch-mean gradient: worst entry's values disagree */
    run_checks("bug_batch", NULL, 3, &rep);
    r = row_named(&rep, "d/d input vs FD (forward, training)");
    assert_note_has(r, "worst row ");
    layer = note_num(r, ": layer ");
    fd = note_num(r, ", FD ");
    ck_assert_msg(fabs(layer - fd) > 1e-2 * fmax(1.0, fabs(fd)), "%s",
                  r->note);
    r = row_named(&rep, "d/d input vs FD (forward)");
    ck_assert_double_eq_tol(note_num(r, ": layer "), note_num(r, ", FD "),
                            1e-2);
}
END_TEST

/* The guards alone: a write before a buffer, past the workspace, into an
 * input; each reported once and repaired. */
START_TEST(test_guard_regions)
{
    guard_buf in, out, ws;
    guard_log log;
    guard_call f;
    flow_real src[6] = {1, 2, 3, 4, 5, 6}, dst[6] = {0};
    const flow_real *gi;
    flow_real *go;
    unsigned char *gw;

    memset(&in, 0, sizeof in);
    memset(&out, 0, sizeof out);
    memset(&ws, 0, sizeof ws);
    memset(&log, 0, sizeof log);
    ck_assert_uint_eq(guard_size(4), 256);
    ck_assert_uint_eq(guard_size(1000), 2048);
    guard_begin(&f, &log, "forward", 256);
    gi = guard_in(&f, &in, "x", src, 2, 3);
    go = guard_out(&f, &out, "z", dst, 2, 3);
    gw = guard_keep(&f, &ws, "ws", 20);
    ck_assert_ptr_nonnull(gw);
    ck_assert_uint_eq((uintptr_t)gw % 64, 0);
    ck_assert_msg(isnan(gi[6]) && isnan(go[-1]), "canaries are NaN");
    go[-2] = 7;
    go[0] = 8;
    gw[20 + 3] = 1;
    ((flow_real *)gi)[4] = -5;
    ck_assert_int_eq(guard_end(&f), 1);
    ck_assert_str_eq(log.oob_note, "forward wrote z[-2], 2 elements before "
                     "the start of z (2 x 3)");
    ck_assert_str_eq(log.inw_note, "forward wrote to its input x at row 1, "
                     "column 1: 5 -> -5");
    ck_assert_double_eq(dst[0], 8);             /* outputs come back */
    ck_assert_uint_eq(log.oob, 1);
    ck_assert_uint_eq(log.inw, 1);

    /* the guards were repaired: a clean call is clean; the workspace's
     * tail follows its size */
    guard_begin(&f, &log, "inverse", 256);
    gw = guard_keep(&f, &ws, "ws", 16);
    gw[16 + 2] = 1;
    gw[16 + 5] = 1;
    ck_assert_int_eq(guard_end(&f), 1);
    ck_assert_uint_eq(log.oob, 2);
    ck_assert_str_eq(log.oob_note, "forward wrote z[-2], 2 elements before "
                     "the start of z (2 x 3)");     /* the first is kept */
    memset(&log, 0, sizeof log);
    guard_begin(&f, &log, "inverse", 256);
    gw = guard_keep(&f, &ws, "ws", 16);
    gw[16 + 2] = 1;
    gw[16 + 5] = 1;
    guard_end(&f);
    ck_assert_str_eq(log.oob_note, "inverse wrote ws bytes[18..21], 3 to 6 "
                     "bytes past the end of ws (16 bytes)");
    guard_begin(&f, &log, "forward", 256);
    guard_in(&f, &in, "x", src, 2, 3);
    guard_out(&f, &out, "z", dst, 2, 3);
    guard_keep(&f, &ws, "ws", 16);
    ck_assert_int_eq(guard_end(&f), 0);
    guard_free(&in);
    guard_free(&out);
    guard_free(&ws);
}
END_TEST

/* The failing rows' notes name the culprit: the describe() field that
 * changed, the unused entry, and the one wrong gradient among 270 (as
 * tensor, index and parameter number, with both values) for every seed,
 * with the default sample and with none at all (the directional checks
 * alone, bisected down to the entry). */
START_TEST(test_bug_notes_name_the_culprit)
{
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, "bug_onegrad",
                                                    &file);
    const conform_row *r;
    conform_report rep;
    conform_opts o;

    run_checks("bug_describe", NULL, 3, &rep);
    r = row_named(&rep, "describe() is stable");
    ck_assert_int_eq(r->pass, 0);
    ck_assert_str_eq(r->note, "call 2: n_params: 6, then 7");
    run_checks("bug_unused", NULL, 3, &rep);
    r = row_named(&rep, "every parameter is used");
    ck_assert_int_eq(r->pass, 0);
    ck_assert_double_eq(r->err, 1);
    ck_assert_str_eq(r->note, "no effect at any point tried: params[6] "
                     "(1 of 7)");
    r = row_named(&rep, "d/d params vs FD (forward)");
    ck_assert_msg(r->pass && strstr(r->note, "7 of 7 parameters one by one"),
                  "%s", r->note);
    ck_assert_ptr_nonnull(t);
    for (int sample = 0; sample < 2; sample++)
        for (uint64_t seed = 1; seed <= 20; seed++) {
            conform_default_opts(&o);
            o.dim = 3;
            o.seed = seed;
            o.max_param_checks = sample ? 48 : 0;
            ck_assert_int_eq(conform_layer(ctx, t, file, NULL, &o, &rep),
                             FLOW_OK);
            r = row_named(&rep, "d/d params vs FD (forward)");
            ck_assert_msg(!r->pass && rep.failures == 1, "seed %llu: %d "
                          "failures, d/d params err %g",
                          (unsigned long long)seed, rep.failures, r->err);
            ck_assert_msg(r->err > 0.05, "seed %llu: err %g",
                          (unsigned long long)seed, r->err);
            ck_assert_msg(!strncmp(r->note, "coef[205] (param 211): analytic ",
                                   32), "seed %llu: %s",
                          (unsigned long long)seed, r->note);
            ck_assert_msg(sample || strstr(r->note, "(by bisection); 5 of "
                                           "270 parameters one by one, 6 "
                                           "directions"), "seed %llu: %s",
                          (unsigned long long)seed, r->note);
        }
    r = row_named(&rep, "tensors sum to n_params");
    ck_assert_str_eq(r->note, "3 tensors (scale, ...) of 270 entries in all; "
                     "n_params 270");
}
END_TEST

/* The compiler and the model API offer describe() a tensor table too: the
 * bundled layers name their tensors there (MADE's masked). */
START_TEST(test_hosts_offer_tensor_tables)
{
    static const char spec[] =
        "flow f {\n    input x : real[3];\n    actnorm();\n"
        "    maf(hidden = [8]);\n    output z ~ normal;\n}\n";
    flow_compilation *c = flow_compile_string(ctx, "t.flow", spec,
                                              strlen(spec));
    const flow_graph *g;
    size_t layers = 0;
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(flow_compile_errors(c), 0);
    g = flow_compile_graph(c);
    for (size_t i = 0; i < flow_graph_node_count(g); i++) {
        const flow_graph_node *n = flow_graph_node_get(g, i);
        const flow_layer_desc *d = n->desc;
        if (n->kind != FLOW_NODE_LAYER)
            continue;
        ck_assert_uint_ge(d->tensors_cap, 2);
        if (layers++ == 0) {
            ck_assert_uint_eq(d->n_tensors, 2);
            ck_assert_str_eq(d->tensors[0].name, "scale");
            ck_assert_uint_eq(d->tensors[0].count, 3);
            ck_assert_str_eq(d->tensors[1].name, "shift");
        } else {
            ck_assert_uint_eq(d->n_tensors, 1);
            ck_assert_str_eq(d->tensors[0].name, "net");
            ck_assert_uint_eq(d->tensors[0].count, d->n_params);
            ck_assert_uint_eq(d->tensors[0].flags, FLOW_TENSOR_MASKED);
        }
    }
    ck_assert_uint_eq(layers, 2);
    flow_compile_free(c);
}
END_TEST

/* --params all: every entry one by one, on top of the directions. */
START_TEST(test_params_all)
{
    const char *file;
    const flow_layer_type *t = flow_layer_type_find(ctx, "linear", &file);
    flow_attr_value perm, seed;
    const conform_row *r;
    conform_report rep;
    conform_opts o;
    memset(&perm, 0, sizeof perm);
    memset(&seed, 0, sizeof seed);
    perm.type = FLOW_ATTR_VARIANT;
    perm.i = 2;
    perm.sub = &seed;
    seed.type = FLOW_ATTR_INT;
    seed.i = 3;
    ck_assert_ptr_nonnull(t);
    conform_default_opts(&o);
    o.dim = 9;
    o.params_all = 1;
    ck_assert_int_eq(conform_layer(ctx, t, file, &perm, &o, &rep), FLOW_OK);
    print_report("linear, every parameter", &rep);
    ck_assert_int_eq(rep.failures, 0);
    r = row_named(&rep, "d/d params vs FD (forward)");
    ck_assert_str_eq(r->note, "90 of 90 parameters one by one, 12 "
                     "directions");
    r = row_named(&rep, "tensors sum to n_params");
    ck_assert_str_eq(r->note, "4 tensors (L, ...) of 90 entries in all; "
                     "n_params 90");
    r = row_named(&rep, "every parameter is used");
    ck_assert_str_eq(r->note, "each of 90 entries changes outputs or "
                     "log-dets");
}
END_TEST

Suite *suite_conform(void)
{
    Suite *s = suite_create("conform");
    TCase *tc = tcase_create("simple_layers");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_actnorm_conforms);
    tcase_add_test(tc, test_permute_conforms);
    tcase_add_test(tc, test_logit_conforms);
    tcase_add_test(tc, test_batchnorm_conforms);
    tcase_add_test(tc, test_linear_conforms);
    suite_add_tcase(s, tc);
    tc = tcase_create("coupling");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_coupling_conforms);
    suite_add_tcase(s, tc);
    tc = tcase_create("autoregressive");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_autoregressive_conforms);
    suite_add_tcase(s, tc);
    tc = tcase_create("bug_detection");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bugs_are_caught_by_the_right_check);
    tcase_add_test(tc, test_guard_notes_name_buffer_and_call);
    tcase_add_test(tc, test_failure_notes_localise);
    tcase_add_test(tc, test_guard_regions);
    tcase_add_test(tc, test_bug_notes_name_the_culprit);
    tcase_add_test(tc, test_params_all);
    tcase_add_test(tc, test_hosts_offer_tensor_tables);
    suite_add_tcase(s, tc);
    /* one test per setting: FD through fixed-point inverses is slow under
     * the sanitizers */
    tc = tcase_create("residual");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_residual_conforms, 0,
                        (int)(sizeof res_cases / sizeof res_cases[0]));
    suite_add_tcase(s, tc);
    /* ode layers solve ODEs to 1e-11 in the float64 build (~15 s with
     * the sanitizers) */
    tc = tcase_create("ode");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ode_conforms);
    suite_add_tcase(s, tc);
    return s;
}
