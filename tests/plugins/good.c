/* good.c - test-only plugin for the loader tests: see tests/test_loader.c. */
#define STUB_LAYER_NAME "good_identity"
#include "layer_stub.h"

static const flow_plugin_info info = {
    FLOW_PLUGIN_INFO_HEAD,
    .name = "good",
    .version = "test",
    .summary = "test plugin good",
    .n_layers = 1,
    .layers = stub_layers,
};

FLOW_PLUGIN_EXPORT const flow_plugin_info *flow_plugin_entry(void)
{
    return &info;
}
