/* small.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "small_identity"
#include "layer_stub.h"

static const flow_layer_type *const stub_layers[] = {&stub_type};

static const flow_plugin_info info = {
    FLOW_PLUGIN_ABI_VERSION, 16u, (uint32_t)sizeof(flow_real), 0u,
    .name = "small",
    .version = "test",
    .summary = "test plugin small",
    .n_layers = 1,
    .layers = stub_layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
