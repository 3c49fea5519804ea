/* test_comm.c - the single-process communicator, the reproducible block sum
 * (runtime/rsum.c) and a trainer on a communicator. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "../runtime/rng.h"
#include "../runtime/rsum.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

START_TEST(test_single_process_comm)
{
    flow_comm *c;
    double v[3] = {1.5, -2, 7};
    char bytes[4] = "abc";
    setenv("FLOWKIT_MPI", "0", 1);      /* even under mpirun */
    c = flow_comm_new(ctx);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(flow_comm_rank(c), 0);
    ck_assert_int_eq(flow_comm_size(c), 1);
    ck_assert_str_eq(flow_comm_kind(c), "single");
    ck_assert_int_eq(flow_comm_allreduce(c, v, 3, FLOW_COMM_SUM), FLOW_OK);
    ck_assert_double_eq(v[1], -2);
    ck_assert_int_eq(flow_comm_allreduce(c, v, 3, FLOW_COMM_MAX), FLOW_OK);
    ck_assert_double_eq(v[2], 7);
    ck_assert_int_eq(flow_comm_allreduce(c, v, 3, (flow_comm_op)9),
                     FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_comm_broadcast(c, bytes, 4, 0), FLOW_OK);
    ck_assert_str_eq(bytes, "abc");
    ck_assert_int_eq(flow_comm_broadcast(c, bytes, 4, 1), FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "rank 1 of 1") != NULL, "%s",
                  flow_errmsg(ctx));
    ck_assert_int_eq(flow_comm_barrier(c), FLOW_OK);
    {
        /* the two allreduces, the broadcast and the barrier count; the
         * refused calls do not */
        unsigned long long calls;
        double secs, nbytes;
        flow_comm_stats(c, &calls, &secs, &nbytes);
        ck_assert_uint_eq(calls, 4);
        ck_assert_double_eq(nbytes, 2 * 3 * sizeof(double) + 4);
        ck_assert_double_ge(secs, 0);
        ck_assert_double_lt(secs, 1);
    }
    flow_comm_free(c);
    unsetenv("FLOWKIT_MPI");
}
END_TEST

/* One process's gather is a copy of its own elements, or nothing when
 * they are already in place. */
START_TEST(test_single_process_gather)
{
    flow_comm *c;
    flow_real mine[3] = {1.25f, -2, 3}, all[4] = {9, 9, 9, 9};
    size_t counts[1] = {3};
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(flow_comm_gather(c, mine, all, counts, sizeof *mine),
                     FLOW_OK);
    ck_assert_double_eq(all[0], 1.25);
    ck_assert_double_eq(all[2], 3);
    ck_assert_double_eq(all[3], 9);
    ck_assert_int_eq(flow_comm_gather(c, all, all, counts, sizeof *all),
                     FLOW_OK);
    ck_assert_double_eq(all[1], -2);
    ck_assert_int_eq(flow_comm_gather(c, mine, all, counts, 0),
                     FLOW_ERR_INVAL);
    ck_assert_msg(strstr(flow_errmsg(ctx), "0 bytes") != NULL, "%s",
                  flow_errmsg(ctx));
    flow_comm_free(c);
}
END_TEST

enum { NB = 37, NV = 200 };

/* Block b's value i: signs mixed, magnitudes spread over 2^-30..2^10
 * within each chunk of 64, an inf-free spread a plain sum rounds. */
static void blocks(flow_real *v)
{
    unsigned s = 12345;
    for (size_t b = 0; b < NB; b++)
        for (size_t i = 0; i < NV; i++) {
            s = s * 1103515245u + 12345u;
            double u = (double)(s >> 8) / 16777216.0;
            double e = -30 + 40 * u;
            v[b * NV + i] = (flow_real)((s & 1 ? -1 : 1) * ldexp(1 + u, (int)e));
        }
}

/* The block sum of "ranks" taking blocks [r NB / n, (r + 1) NB / n), each
 * adding its blocks in the order `rev` gives, the ranks' sums added last
 * to first: what an allreduce might do. */
static void rank_sum(const flow_real *v, int n, int rev, double *out)
{
    rsum all, part;
    int failed = 7;
    flow_comm *c;
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(rsum_init(&all, NV, 1), FLOW_OK);
    ck_assert_int_eq(rsum_init(&part, NV, 1), FLOW_OK);
    rsum_begin(&all);
    for (size_t b = 0; b < NB; b++) {
        double ex = (double)b - 20.25;
        rsum_see(&all, v + b * NV, &ex);
    }
    ck_assert_int_eq(rsum_agree(&all, c, NB, 0, &failed), FLOW_OK);
    ck_assert_int_eq(failed, -1);
    ck_assert_int_eq(all.finite, 1);
    memset(out, 0, (NV + 1) * sizeof *out);
    for (int r = n; r-- > 0;) {
        size_t lo = (size_t)r * NB / (size_t)n;
        size_t hi = (size_t)(r + 1) * NB / (size_t)n;
        memcpy(part.sigma, all.sigma, (all.n_groups + 1) * sizeof *all.sigma);
        part.finite = 1;
        memset(part.sum, 0, (NV + 1) * sizeof *part.sum);
        for (size_t k = lo; k < hi; k++) {
            size_t b = rev ? hi - 1 - (k - lo) : k;
            double ex = (double)b - 20.25;
            rsum_add(&part, v + b * NV, &ex);
        }
        for (size_t i = 0; i <= NV; i++)
            out[i] += part.sum[i];
    }
    rsum_free(&all);
    rsum_free(&part);
    flow_comm_free(c);
}

/* 1, 2, 3 and 5 "ranks", blocks forwards and backwards: the same bits;
 * and each value within the bound of rsum.c's grid of the exact sum
 * (long double: 64-bit significand, the 37 terms' exact sum to ~2^-60
 * of the largest). */
START_TEST(test_block_sum_any_split_same_bits)
{
    flow_real *v = malloc(NB * NV * sizeof *v);
    double ref[NV + 1], got[NV + 1];
    ck_assert_ptr_nonnull(v);
    blocks(v);
    rank_sum(v, 1, 0, ref);
    for (int n = 1; n <= 5; n++)
        for (int rev = 0; rev < 2; rev++) {
            if (n == 4)
                continue;
            rank_sum(v, n, rev, got);
            ck_assert_msg(memcmp(ref, got, sizeof ref) == 0, "%d ranks, "
                          "%s: other bits than 1 rank", n,
                          rev ? "backwards" : "forwards");
        }
    for (size_t i = 0; i < NV; i++) {
        long double exact = 0;
        double m = 0;
        size_t lo = i / RSUM_CHUNK * RSUM_CHUNK;
        for (size_t b = 0; b < NB; b++) {
            exact += (long double)v[b * NV + i];
            for (size_t j = lo; j < lo + RSUM_CHUNK && j < NV; j++)
                m = fmax(m, fabs((double)v[b * NV + j]));
        }
        /* L = ceil(log2 37) + 1 = 7: each term off by <= 2^(7-53) 2^e,
         * 2^e <= 2 m */
        ck_assert_msg(fabsl((long double)ref[i] - exact)
                      <= NB * ldexp(2 * m, 7 - 53), "value %zu: %.17g vs "
                      "exact %.17Lg (chunk max %g)", i, ref[i], exact, m);
    }
    /* the extra value (-20.25 + b summed): exactly representable */
    ck_assert_double_eq(ref[NV], 37.0 * 36 / 2 - 37 * 20.25);
    free(v);
}
END_TEST

/* A non-finite value anywhere: the whole sum is NaN on every rank.  A
 * rank that failed is named to all of them. */
START_TEST(test_block_sum_non_finite)
{
    flow_real v[3 * 4] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    double ex = 0;
    rsum r;
    int failed = 7;
    flow_comm *c;
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    v[6] = (flow_real)NAN;
    ck_assert_int_eq(rsum_init(&r, 4, 1), FLOW_OK);
    rsum_begin(&r);
    for (int b = 0; b < 3; b++)
        rsum_see(&r, v + 4 * b, &ex);
    ck_assert_int_eq(rsum_agree(&r, c, 3, 1, &failed), FLOW_OK);
    ck_assert_int_eq(failed, 0);
    ck_assert_int_eq(rsum_agree(&r, c, 3, 0, &failed), FLOW_OK);
    ck_assert_int_eq(failed, -1);
    ck_assert_int_eq(r.finite, 0);
    for (int b = 0; b < 3; b++)
        rsum_add(&r, v + 4 * b, &ex);
    ck_assert_int_eq(rsum_finish(&r, c), FLOW_OK);
    ck_assert_msg(isnan(r.sum[0]) && isnan(r.sum[4]), "%g %g", r.sum[0],
                  r.sum[4]);
    rsum_free(&r);
    flow_comm_free(c);
}
END_TEST

/* A group's maximum magnitude: the largest |v| of any sign (subnormals
 * included), +inf for an infinity of either sign or a NaN with its sign
 * bit set, per group of RSUM_CHUNK values. */
START_TEST(test_block_sum_group_max)
{
    enum { N = 3 * RSUM_CHUNK };
    flow_real *v = calloc(N, sizeof *v);
    double ex = 0;
    rsum r;
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(rsum_init(&r, N, 1), FLOW_OK);
    for (size_t i = 0; i < RSUM_CHUNK; i++)
        v[i] = (flow_real)(0.5 * (double)i - 7);    /* largest: -7 */
    v[RSUM_CHUNK + 5] = (flow_real)1e-40;           /* subnormal in f32 */
    v[RSUM_CHUNK + 9] = (flow_real)-3e-41;
    v[2 * RSUM_CHUNK + 1] = (flow_real)2.5;
    v[2 * RSUM_CHUNK + 2] = -(flow_real)INFINITY;
    rsum_begin(&r);
    rsum_see(&r, v, &ex);
    ck_assert_double_eq(r.max[0], 24.5);    /* 0.5 * 63 - 7 */
    ck_assert_double_eq(r.max[1], (double)(flow_real)1e-40);
    ck_assert_double_eq(r.max[2], INFINITY);
    for (size_t i = 0; i < RSUM_CHUNK; i++)
        v[i] = (flow_real)(-0.25 * (double)i);      /* largest: -15.75 */
    v[2 * RSUM_CHUNK + 2] = -(flow_real)NAN;
    rsum_begin(&r);
    rsum_see(&r, v, &ex);
    ck_assert_double_eq(r.max[0], 15.75);
    ck_assert_double_eq(r.max[2], INFINITY);
    memset(v, 0, N * sizeof *v);
    rsum_see(&r, v, &ex);                 /* the maxima carry over */
    ck_assert_double_eq(r.max[0], 15.75);
    ck_assert_double_eq(r.max[2], INFINITY);
    rsum_free(&r);
    free(v);
}
END_TEST

/* actnorm + standard normal base on 2 dims. */
static flow_model *gauss_model(void)
{
    flow_attr_value eps;
    flow_model *m = flow_model_new(ctx, 2, 0);
    memset(&eps, 0, sizeof eps);
    eps.type = FLOW_ATTR_REAL;
    ck_assert_int_eq(flow_model_add_layer(m, "actnorm", NULL, &eps, 1, 0, 0,
                                          0), FLOW_OK);
    ck_assert_int_eq(flow_model_finish(m, 3), FLOW_OK);
    return m;
}

/* A trainer on a single-process communicator: the batch mean's gradient
 * as the plain trainer's within float rounding, so the losses of 60 steps
 * agree to 1e-4; refused after the first step. */
START_TEST(test_trainer_on_comm)
{
    enum { N = 500 };
    flow_real *x = malloc(N * 2 * sizeof *x);
    flow_model *m1 = gauss_model(), *m2 = gauss_model();
    flow_train_config cfg;
    flow_trainer *t1, *t2;
    flow_comm *c;
    double l1 = 0, l2 = 0, mean, se;
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < N * 2; i++)
        x[i] = (flow_real)(sin(0.7 * (double)i) * (i % 2 ? 3 : 0.5) + 1);
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    flow_train_config_default(&cfg);
    cfg.batch = 70;             /* blocks of 32, 32, 6 */
    cfg.lr = 0.02;
    ck_assert_int_eq(flow_model_data_init(m1, 70, x, NULL), FLOW_OK);
    ck_assert_int_eq(flow_model_data_init(m2, 70, x, NULL), FLOW_OK);
    t1 = flow_trainer_new(m1, &cfg, x, NULL, N);
    t2 = flow_trainer_new(m2, &cfg, x, NULL, N);
    ck_assert_ptr_nonnull(t1);
    ck_assert_ptr_nonnull(t2);
    ck_assert_int_eq(flow_trainer_set_comm(t2, c), FLOW_OK);
    for (int s = 0; s < 60; s++) {
        ck_assert_int_eq(flow_trainer_step(t1, &l1), FLOW_OK);
        ck_assert_int_eq(flow_trainer_step(t2, &l2), FLOW_OK);
    }
    ck_assert_double_eq_tol(l1, l2, 1e-4);
    ck_assert_int_eq(flow_trainer_set_comm(t2, c), FLOW_ERR_INVAL);
    /* the blocked evaluation: the plain one's mean within rounding */
    ck_assert_int_eq(flow_model_evaluate(m2, N, x, NULL, 64, &l1, NULL),
                     FLOW_OK);
    ck_assert_int_eq(flow_model_evaluate_comm(m2, c, N, x, NULL, 64, &mean,
                                              &se), FLOW_OK);
    ck_assert_double_eq_tol(mean, l1, 1e-9);
    ck_assert_msg(se > 0 && se < 1, "standard error %g", se);
    flow_trainer_free(t1);
    flow_trainer_free(t2);
    flow_model_free(m1);
    flow_model_free(m2);
    flow_comm_free(c);
    free(x);
}
END_TEST

/* N((1, -0.5), 0.7^2 I), unnormalised: log Z = log(2 pi 0.49). */
static int gauss_target(void *arg, size_t n, size_t dim, const flow_real *x,
                        flow_real *logp, flow_real *grad, char *err,
                        size_t err_cap)
{
    static const double mu[2] = {1, -0.5};
    const double v = 0.49;
    (void)arg, (void)err, (void)err_cap;
    for (size_t r = 0; r < n; r++) {
        double q = 0;
        for (size_t i = 0; i < dim; i++) {
            double e = x[r * dim + i] - mu[i];
            q += e * e;
            if (grad)
                grad[r * dim + i] = (flow_real)(-e / v);
        }
        logp[r] = (flow_real)(-q / (2 * v));
    }
    return 0;
}

/* A variational trainer on a single-process communicator (the blocks of
 * 100 samples: 32, 32, 32, 4): actnorm on a normal base can be the
 * Gaussian target exactly, where every sample's log p~ - log q is log Z,
 * so the fit ends with KL(q || p) below 2e-3; and the model's stream
 * moves by one draw per step whatever the blocks draw, so that a fit
 * resumed on another number of processes draws the same keys. */
START_TEST(test_fit_on_comm)
{
    flow_model *m = gauss_model();
    flow_target *tg = NULL;
    flow_train_config cfg;
    flow_trainer *t;
    flow_comm *c;
    flow_rng r;
    flow_is_stats is;
    uint64_t s0[6], s1[6];
    double loss = NAN, log_z = log(2 * M_PI * 0.49);
    ck_assert_int_eq(flow_target_new_callback(ctx, 2, gauss_target, NULL,
                                              log_z, &tg), FLOW_OK);
    setenv("FLOWKIT_MPI", "0", 1);
    c = flow_comm_new(ctx);
    unsetenv("FLOWKIT_MPI");
    ck_assert_ptr_nonnull(c);
    flow_train_config_default(&cfg);
    cfg.batch = 100;
    cfg.lr = 0.05;
    cfg.schedule = FLOW_LR_COSINE;
    cfg.total_steps = 400;
    t = flow_trainer_new_target(m, &cfg, tg);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(flow_trainer_set_comm(t, c), FLOW_OK);
    flow_model_seed(m, 11);
    flow_model_get_rng(m, s0);
    for (int k = 0; k < 400; k++)
        ck_assert_msg(flow_trainer_step(t, &loss) == FLOW_OK, "step %d: %s",
                      k, flow_errmsg(ctx));
    memcpy(r.s, s0, sizeof r.s);
    for (int k = 0; k < 400; k++)
        (void)rng_u64(&r);
    flow_model_get_rng(m, s1);
    ck_assert_msg(memcmp(r.s, s1, sizeof r.s) == 0 && s1[4] == s0[4],
                  "the model's stream moved by other than 400 draws");
    /* the last batch's ELBO: 100 samples, s.d. ~0.003 near the optimum;
     * KL(q || p) = log Z - ELBO from 20000 fresh samples */
    ck_assert_double_eq_tol(-loss, log_z, 0.02);
    ck_assert_int_eq(flow_model_importance(m, tg, 20000, 0, &is, NULL,
                                           NULL), FLOW_OK);
    ck_assert_msg(log_z - is.elbo < 2e-3 && is.elbo - log_z < 4 * is.elbo_se,
                  "ELBO %.6f +- %.6f, log Z %.6f", is.elbo, is.elbo_se,
                  log_z);
    flow_trainer_free(t);
    flow_target_free(tg);
    flow_model_free(m);
    flow_comm_free(c);
}
END_TEST

Suite *suite_comm(void)
{
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("comm");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_single_process_comm);
    tcase_add_test(tc, test_single_process_gather);
    tcase_add_test(tc, test_block_sum_any_split_same_bits);
    tcase_add_test(tc, test_block_sum_non_finite);
    tcase_add_test(tc, test_block_sum_group_max);
    tcase_add_test(tc, test_trainer_on_comm);
    tcase_add_test(tc, test_fit_on_comm);
    suite_add_tcase(s, tc);
    return s;
}
