/* dup_b.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "dup_layer"
#include "layer_stub.h"

FLOW_PLUGIN_LAYERS("dup_b", "test", "test plugin dup_b", &stub_type);
