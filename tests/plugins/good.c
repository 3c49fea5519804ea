/* good.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "good_identity"
#include "layer_stub.h"

FLOW_PLUGIN_LAYERS("good", "test", "test plugin good", &stub_type);
