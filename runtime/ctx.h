/* ctx.h - internal: the flow_ctx structure (error message, plugins) shared
 * by the runtime's modules; errors are set with flow_ctx_error (flow.h). */
#ifndef FLOW_RUNTIME_CTX_H
#define FLOW_RUNTIME_CTX_H

#include "flow/flow.h"

#define CTX_ERRMSG_MAX 2048

typedef struct loaded_plugin {
    char *file;                     /* resolved path, owned */
    void *handle;                   /* dlopen handle */
    const flow_plugin_info *info;   /* static in the plugin */
    int bundled;                    /* from the installed plugin directory
                                       (or the build tree's, uninstalled) */
} loaded_plugin;

struct flow_ctx {
    char errmsg[CTX_ERRMSG_MAX];
    char **dirs;                    /* plugin search dirs, owned */
    size_t n_dirs;
    int dirs_ready;
    loaded_plugin *plugins;
    size_t n_plugins, cap_plugins;
    int on_demand;                  /* flow_plugin_load_on_demand */
    int all_tried;                  /* on demand: every file loaded once */
};

/* Empties ctx's message: a call that succeeds after a failed one leaves
 * no stale message behind. */
void ctx_clear_error(flow_ctx *ctx);

/* loader.c: unloads the plugins and frees the search directories */
void loader_free(flow_ctx *ctx);

/* loader.c: 1 when the loaded plugin whose file is `file` (a path as
 * flow_layer_type_find returns it) is one of flowkit's own, i.e. its file
 * lies in the installed plugin directory or in the build tree's plugin
 * directory (the same files before `make install`); 0 for any other
 * file (a FLOW_PLUGIN_PATH entry, a path given to flow_plugin_load) and
 * for a file that is not loaded. */
int loader_plugin_bundled(const flow_ctx *ctx, const char *file);

#endif
