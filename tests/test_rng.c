/* test_rng.c - the random streams: reference values, determinism, stream
 * independence and the moments of each distribution. */
#include <math.h>
#include <string.h>

#include "../runtime/rng.h"
#include "suites.h"

START_TEST(test_reference_and_determinism)
{
    flow_rng a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++)
        ck_assert_uint_eq(rng_u64(&a), rng_u64(&b));
    /* xoshiro256** from the state {1, 2, 3, 4}: first output is
     * rotl(2 * 5, 7) * 9 = 11520 (reference implementation) */
    a.s[0] = 1, a.s[1] = 2, a.s[2] = 3, a.s[3] = 4;
    ck_assert_uint_eq(rng_u64(&a), 11520u);
    ck_assert_uint_eq(rng_u64(&a), 0u);
}
END_TEST

START_TEST(test_streams_differ)
{
    flow_rng a, b;
    int same = 0;
    rng_stream(&a, 7, 0);
    rng_stream(&b, 7, 1);
    for (int i = 0; i < 100; i++)
        same += rng_u64(&a) == rng_u64(&b);
    ck_assert_int_eq(same, 0);
}
END_TEST

START_TEST(test_moments)
{
    enum { N = 200000 };
    flow_rng r;
    static flow_real v[N];
    double m = 0, m2 = 0, u = 0, umin = 1, umax = 0;
    rng_seed(&r, 1);
    rng_normal(&r, v, N);
    for (int i = 0; i < N; i++) {
        m += v[i];
        m2 += (double)v[i] * v[i];
    }
    m /= N;
    m2 /= N;
    /* standard errors: mean 1/sqrt(N) = 0.0022, var sqrt(2/N) = 0.0032 */
    ck_assert_double_eq_tol(m, 0.0, 5 * 0.0022);
    ck_assert_double_eq_tol(m2, 1.0, 5 * 0.0032);
    for (int i = 0; i < N; i++) {
        double x = rng_uniform(&r);
        u += x;
        umin = fmin(umin, x);
        umax = fmax(umax, x);
    }
    ck_assert_double_eq_tol(u / N, 0.5, 5 * 0.00065);
    ck_assert_double_gt(umin, 0);
    ck_assert_double_lt(umax, 1);
    rng_rademacher(&r, v, N);
    m = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(v[i] == 1 || v[i] == -1, "v[%d] = %g", i, (double)v[i]);
        m += v[i];
    }
    ck_assert_double_eq_tol(m / N, 0.0, 5 * 0.0022);
    for (int i = 0; i < 1000; i++)
        ck_assert_uint_lt(rng_below(&r, 7), 7);
}
END_TEST

Suite *suite_rng(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("streams");
    tcase_add_test(tc, test_reference_and_determinism);
    tcase_add_test(tc, test_streams_differ);
    suite_add_tcase(s, tc);
    tc = tcase_create("moments");
    tcase_add_test(tc, test_moments);
    suite_add_tcase(s, tc);
    return s;
}
