/* noentry.c - test-only: a shared object without flow_plugin_entry. */
#include "flow/flow_plugin.h"

int not_a_flowkit_plugin(void);
FLOW_PLUGIN_EXPORT int not_a_flowkit_plugin(void) { return 42; }
