#include "suites.h"
Suite *suite_vi(void) { return suite_create("vi"); }
