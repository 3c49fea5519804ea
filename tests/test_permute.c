/* test_permute.c - the permute plugin through the ABI: describe, both
 * directions, backward as the adjoint, and its attribute errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow.h"
#include "suites.h"

static flow_ctx *ctx;
static const flow_layer_type *type;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load(ctx, "permute") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    type = flow_layer_type_find(ctx, "permute", NULL);
    ck_assert_ptr_nonnull(type);
}

static void teardown(void) { flow_ctx_free(ctx); }

/* A config for dimension d with the order variant set to alternative alt
 * and its one sub-attribute to `sub`. */
static flow_layer_config make_cfg(size_t d, flow_attr_value *order,
                                  int64_t alt, const char *alt_name,
                                  flow_attr_value *sub)
{
    flow_layer_config cfg;
    memset(&cfg, 0, sizeof cfg);
    memset(order, 0, sizeof *order);
    order->type = FLOW_ATTR_VARIANT;
    order->i = alt;
    order->s = alt_name;
    order->sub = sub;
    cfg.struct_size = sizeof cfg;
    cfg.name = "permute#0";
    cfg.dim = d;
    cfg.attrs = order;
    return cfg;
}

static int describe(const flow_layer_config *cfg, int32_t *vec,
                    flow_layer_desc *desc, flow_diag *diag)
{
    memset(desc, 0, sizeof *desc);
    memset(diag, 0, sizeof *diag);
    desc->struct_size = sizeof *desc;
    diag->struct_size = sizeof *diag;
    desc->dep_vec = vec;
    return type->describe(cfg, desc, diag);
}

START_TEST(test_reverse_describe_and_maps)
{
    enum { D = 5, N = 3 };
    flow_attr_value order;
    flow_layer_config cfg = make_cfg(D, &order, 0, "reverse", NULL);
    flow_layer_desc desc;
    flow_diag diag;
    int32_t vec[D];
    flow_real x[N * D], z[N * D], back[N * D], ld[N];
    flow_call call;
    void *self;

    ck_assert_int_eq(describe(&cfg, vec, &desc, &diag), FLOW_OK);
    ck_assert_int_eq(desc.jac, FLOW_JAC_VOLUME_PRESERVING);
    ck_assert_int_eq(desc.dep, FLOW_DEP_PERMUTATION);
    ck_assert_uint_eq(desc.n_params, 0);
    for (int i = 0; i < D; i++)
        ck_assert_int_eq(vec[i], D - 1 - i);

    self = type->create(flow_host_services(), &cfg, &diag);
    ck_assert_ptr_nonnull(self);
    memset(&call, 0, sizeof call);
    call.struct_size = sizeof call;
    call.host = flow_host_services();
    call.n = N;
    call.dim = D;
    for (int i = 0; i < N * D; i++)
        x[i] = (flow_real)(i * 0.5 - 3.0);
    ck_assert_int_eq(type->forward(self, &call, x, z, ld), FLOW_OK);
    for (int r = 0; r < N; r++) {
        ck_assert_double_eq(ld[r], 0);
        for (int i = 0; i < D; i++)
            ck_assert_msg(z[r * D + i] == x[r * D + D - 1 - i], "row %d, "
                          "column %d: %g", r, i, (double)z[r * D + i]);
    }
    ck_assert_int_eq(type->inverse(self, &call, z, back, ld), FLOW_OK);
    ck_assert_mem_eq(back, x, sizeof x);
    type->destroy(self);
}
END_TEST

START_TEST(test_random_is_seeded_permutation)
{
    enum { D = 64 };
    flow_attr_value order, seed[1];
    flow_layer_config cfg = make_cfg(D, &order, 1, "random", seed);
    flow_layer_desc desc;
    flow_diag diag;
    int32_t a[D], b[D], c[D];
    int seen[D] = {0}, moved = 0;

    memset(seed, 0, sizeof seed);
    seed[0].type = FLOW_ATTR_INT;
    seed[0].i = 7;
    ck_assert_int_eq(describe(&cfg, a, &desc, &diag), FLOW_OK);
    ck_assert_int_eq(describe(&cfg, b, &desc, &diag), FLOW_OK);
    ck_assert_mem_eq(a, b, sizeof a);
    for (int i = 0; i < D; i++) {
        ck_assert_int_ge(a[i], 0);
        ck_assert_int_lt(a[i], D);
        seen[a[i]]++;
        moved += a[i] != i;
    }
    for (int i = 0; i < D; i++)
        ck_assert_int_eq(seen[i], 1);
    ck_assert_int_gt(moved, D / 2);  /* a shuffle, not the identity */
    seed[0].i = 8;
    ck_assert_int_eq(describe(&cfg, c, &desc, &diag), FLOW_OK);
    ck_assert_mem_ne(a, c, sizeof a);
}
END_TEST

START_TEST(test_explicit_errors)
{
    enum { D = 4 };
    int64_t dup[D] = {0, 2, 2, 1}, shortl[3] = {0, 1, 2};
    int64_t out[D] = {0, 1, 2, 4}, good[D] = {2, 0, 3, 1};
    flow_attr_value order, list[1];
    flow_layer_config cfg = make_cfg(D, &order, 2, "explicit", list);
    flow_layer_desc desc;
    flow_diag diag;
    int32_t vec[D];

    memset(list, 0, sizeof list);
    list[0].type = FLOW_ATTR_INT_LIST;
    list[0].ilist = dup;
    list[0].n = D;
    ck_assert_int_eq(describe(&cfg, vec, &desc, &diag), FLOW_ERR_INVAL);
    ck_assert_int_eq(diag.attr, 0);
    ck_assert_str_eq(diag.message, "2 appears twice in the permutation "
                                   "(entries 1 and 2)");
    ck_assert_str_eq(diag.help, "each of 0..3 must appear exactly once");
    list[0].ilist = shortl;
    list[0].n = 3;
    ck_assert_int_eq(describe(&cfg, vec, &desc, &diag), FLOW_ERR_INVAL);
    ck_assert_str_eq(diag.message, "permutation has 3 entries but the "
                                   "layer's input has 4 dimensions");
    list[0].ilist = out;
    list[0].n = D;
    ck_assert_int_eq(describe(&cfg, vec, &desc, &diag), FLOW_ERR_INVAL);
    ck_assert_str_eq(diag.message, "permutation entry 3 is 4, outside 0..3");
    list[0].ilist = good;
    ck_assert_int_eq(describe(&cfg, vec, &desc, &diag), FLOW_OK);
    for (int i = 0; i < D; i++)
        ck_assert_int_eq(vec[i], good[i]);
}
END_TEST

/* backward is the adjoint: <dz, J dx> = <J^T dz, dx> for random vectors */
START_TEST(test_backward_is_adjoint)
{
    enum { D = 6, N = 4 };
    flow_attr_value order, seed[1];
    flow_layer_config cfg = make_cfg(D, &order, 1, "random", seed);
    flow_diag diag;
    flow_real x[N * D], z[N * D], dz[N * D], dz2[N * D], dx[N * D], ld[N];
    flow_real dld[N];
    flow_call call;
    double lhs = 0, rhs = 0;
    void *self;

    memset(seed, 0, sizeof seed);
    seed[0].type = FLOW_ATTR_INT;
    seed[0].i = 3;
    memset(&diag, 0, sizeof diag);
    self = type->create(flow_host_services(), &cfg, &diag);
    ck_assert_ptr_nonnull(self);
    memset(&call, 0, sizeof call);
    call.n = N;
    call.dim = D;
    srand(1);
    for (int i = 0; i < N * D; i++) {
        x[i] = (flow_real)rand() / RAND_MAX - 0.5f;
        dz[i] = (flow_real)rand() / RAND_MAX - 0.5f;
    }
    for (int r = 0; r < N; r++)
        dld[r] = 1;
    ck_assert_int_eq(type->forward(self, &call, x, z, ld), FLOW_OK);
    ck_assert_int_eq(type->forward_backward(self, &call, x, z, dz, dld, dx),
                     FLOW_OK);
    for (int i = 0; i < N * D; i++) {
        lhs += (double)dz[i] * z[i];   /* the map is linear: J x = z */
        rhs += (double)dx[i] * x[i];
    }
    ck_assert_double_eq_tol(lhs, rhs, 1e-9);
    /* the inverse's VJP is the transpose of the forward's: it gives dz back */
    ck_assert_int_eq(type->inverse_backward(self, &call, z, x, dx, dld, dz2),
                     FLOW_OK);
    ck_assert_mem_eq(dz2, dz, sizeof dz);
    type->destroy(self);
}
END_TEST

Suite *suite_permute(void)
{
    Suite *s = suite_create("permute");
    TCase *tc = tcase_create("permutations");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_reverse_describe_and_maps);
    tcase_add_test(tc, test_random_is_seeded_permutation);
    tcase_add_test(tc, test_backward_is_adjoint);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_explicit_errors);
    suite_add_tcase(s, tc);
    return s;
}
