/* badreal.c - test-only plugin for the loader tests: see
 * tests/test_loader.c. */
#define STUB_LAYER_NAME "badreal_identity"
#include "layer_stub.h"

static const flow_layer_type *const stub_layers[] = {&stub_type};

static const flow_plugin_info info = {
    FLOW_PLUGIN_ABI_VERSION, (uint32_t)sizeof(flow_plugin_info),
    (uint32_t)(3 * sizeof(flow_real)), 0u,
    .name = "badreal",
    .version = "test",
    .summary = "test plugin badreal",
    .n_layers = 1,
    .layers = stub_layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
