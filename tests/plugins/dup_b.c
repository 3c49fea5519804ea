/* dup_b.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "dup_layer"
#include "layer_stub.h"

static const flow_plugin_info info = {
    FLOW_PLUGIN_INFO_HEAD,
    .name = "dup_b",
    .version = "test",
    .summary = "test plugin dup_b",
    .n_layers = 1,
    .layers = stub_layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
