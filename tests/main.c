/* main.c - the one Check runner: runs every area's suite (tests/suites.h);
 * `flowkit_tests --list` prints their names instead, one a line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"

static const struct {
    const char *name;
    Suite *(*make)(void);
} suites[] = {
#define FLOW_TEST_ENTRY(name) {#name, suite_##name},
    FLOW_TEST_SUITES(FLOW_TEST_ENTRY)
#undef FLOW_TEST_ENTRY
};

enum { N_SUITES = sizeof suites / sizeof suites[0] };

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

int main(int argc, char **argv)
{
    SRunner *sr;
    int failed;

    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < N_SUITES; i++)
            puts(suites[i].name);
        return EXIT_SUCCESS;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--list]\n"
                "  CK_RUN_SUITE=NAME and CK_RUN_CASE=NAME run one suite "
                "or test case\n", argv[0]);
        return 2;
    }
    sr = srunner_create(suites[0].make());
    for (int i = 1; i < N_SUITES; i++)
        srunner_add_suite(sr, suites[i].make());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
