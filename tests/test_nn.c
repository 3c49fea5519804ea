/* test_nn.c - placeholder */
#include "suites.h"
Suite *suite_nn(void) { return suite_create("nn"); }
