/* main.c - the one Check runner: adds every area's suite and runs them. */
#include <stdio.h>
#include <stdlib.h>

#include "suites.h"

const char *test_plugin(const char *name)
{
    /* rotating buffers: several results may be used in one expression */
    static char bufs[4][4096];
    static unsigned next;
    char *buf = bufs[next++ % 4];
    const char *dir = getenv("FLOW_TEST_PLUGINS");
    ck_assert_msg(dir != NULL, "FLOW_TEST_PLUGINS is not set (run through "
                               "make check)");
    snprintf(buf, sizeof bufs[0], "%s/%s.so", dir, name);
    return buf;
}

int main(void)
{
    SRunner *sr = srunner_create(suite_loader());
    int failed;

    srunner_add_suite(sr, suite_permute());
    srunner_add_suite(sr, suite_rng());
    srunner_add_suite(sr, suite_model());
    srunner_add_suite(sr, suite_train());
    srunner_add_suite(sr, suite_conform());
    srunner_add_suite(sr, suite_layers());
    srunner_add_suite(sr, suite_ckpt_model());
    /* numerics */
    srunner_add_suite(sr, suite_matrix());
    srunner_add_suite(sr, suite_nn());
    srunner_add_suite(sr, suite_transform());
    srunner_add_suite(sr, suite_base());

    srunner_add_suite(sr, suite_data());
    srunner_add_suite(sr, suite_datasets());
    srunner_add_suite(sr, suite_json());
    srunner_add_suite(sr, suite_checkpoint());
    srunner_add_suite(sr, suite_compiler());
    srunner_add_suite(sr, suite_residual());   /* residual branch */
    srunner_add_suite(sr, suite_made_step());  /* mafperf branch */
    srunner_add_suite(sr, suite_ode());
    srunner_add_suite(sr, suite_vi());         /* vi branch */
    srunner_add_suite(sr, suite_vi_fit());
    srunner_add_suite(sr, suite_tgemm());      /* cnfspeed */
    srunner_add_suite(sr, suite_alloc_fail());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
