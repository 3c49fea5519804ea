/* dup_a.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "dup_layer"
#include "layer_stub.h"

FLOW_PLUGIN_LAYERS("dup_a", "test", "test plugin dup_a", &stub_type);
