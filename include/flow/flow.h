/* flow.h - the flowkit runtime API: context, errors, plugin registry.
 * Model building and execution calls are added by the runtime (docs/). */
#ifndef FLOW_H
#define FLOW_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow_version.h"
#include "flow/flow_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
# define FLOW_API __attribute__((visibility("default")))
#else
# define FLOW_API
#endif

/* A context owns the plugin registry and the last error message.  One
 * context is used by one thread at a time; separate contexts are
 * independent. */
typedef struct flow_ctx flow_ctx;

/* Version of the library actually linked (compare FLOW_VERSION_STRING).
 * Static string, not to be freed. */
FLOW_API const char *flow_version(void);
FLOW_API int flow_version_number(void);
/* "float32" or "float64": the precision the library computes in. */
FLOW_API const char *flow_precision(void);

/* New context, or NULL when out of memory.  Free with flow_ctx_free. */
FLOW_API flow_ctx *flow_ctx_new(void);
FLOW_API void flow_ctx_free(flow_ctx *ctx);

/* Message of the last failed call on ctx ("" if none).  Owned by ctx,
 * valid until the next call on ctx. */
FLOW_API const char *flow_errmsg(const flow_ctx *ctx);

/* --- plugins --------------------------------------------------------- */

/* Directories searched for plugins, in order: the entries of
 * FLOW_PLUGIN_PATH (colon-separated, empty entries ignored: the current
 * directory is never searched implicitly), then the installed plugin
 * directory.  Returns the number of directories; *dirs is owned by ctx. */
FLOW_API size_t flow_plugin_dirs(flow_ctx *ctx, const char *const **dirs);

/* Load one plugin.  `name` is a path when it contains '/', otherwise a
 * plugin name looked up as NAME.so in the search directories.  Loading the
 * same file twice is a no-op.  Returns FLOW_OK or an error code with the
 * message in flow_errmsg(ctx), naming the file. */
FLOW_API int flow_plugin_load(flow_ctx *ctx, const char *name);

/* Load every *.so in the search directories (a file name found in an
 * earlier directory hides the same name in later ones).  Stops at the
 * first plugin that fails to load and reports it. */
FLOW_API int flow_plugin_load_all(flow_ctx *ctx);

/* Loaded plugins, in load order.  Returned pointers are owned by ctx. */
FLOW_API size_t flow_plugin_count(const flow_ctx *ctx);
FLOW_API const flow_plugin_info *flow_plugin_get(const flow_ctx *ctx,
                                                 size_t i);
FLOW_API const char *flow_plugin_file(const flow_ctx *ctx, size_t i);

/* Layer type by name among the loaded plugins, or NULL.  When file is not
 * NULL it receives the path of the providing plugin (owned by ctx). */
FLOW_API const flow_layer_type *flow_layer_type_find(const flow_ctx *ctx,
                                                     const char *name,
                                                     const char **file);
/* Target type (variational fits) by name, or NULL. */
FLOW_API const flow_target_type *flow_target_type_find(const flow_ctx *ctx,
                                                       const char *name,
                                                       const char **file);

/* --- data sets (runtime/data.c; formats in docs/formats.md) ---------- */

/* A data set: n rows of `dim` data columns (row-major flow_real) plus
 * optionally `context_dim` context columns for conditional models. */
typedef struct flow_data flow_data;

typedef enum flow_data_format {
    FLOW_DATA_AUTO = 0,   /* by name: "*.npy" is NPY, anything else CSV */
    FLOW_DATA_CSV = 1,
    FLOW_DATA_NPY = 2
} flow_data_format;

/* Reads a CSV or .npy file (`path` "-" reads stdin; NPY is recognised by
 * its magic bytes).  `columns`: NULL for every column not in `context`,
 * else a comma-separated list of header names or 0-based indices.
 * `context`: NULL for none, else a list as for `columns`.  `dim`: 0 for
 * any, else the required number of data columns.  On success *out is a
 * new data set owned by the caller (flow_data_free); on failure *out is
 * NULL and the message names file:line:column. */
FLOW_API int flow_data_read(flow_ctx *ctx, const char *path,
                            const char *columns, const char *context,
                            size_t dim, flow_data **out);
/* Writes data columns then context columns to `path` ("-": stdout), as
 * CSV (optional header row) or NPY.  Writing a file is atomic: on failure
 * nothing is left under `path`.  `data` is only read. */
FLOW_API int flow_data_write(flow_ctx *ctx, const flow_data *data,
                             const char *path, flow_data_format format,
                             int header);
/* New zero-filled data set owned by the caller, or NULL (message in ctx). */
FLOW_API flow_data *flow_data_new(flow_ctx *ctx, size_t n, size_t dim,
                                  size_t context_dim);
FLOW_API void flow_data_free(flow_data *data);
FLOW_API size_t flow_data_rows(const flow_data *data);
FLOW_API size_t flow_data_dim(const flow_data *data);
FLOW_API size_t flow_data_context_dim(const flow_data *data);
/* Row-major n x dim values, owned by data (NULL when empty). */
FLOW_API flow_real *flow_data_values(flow_data *data);
/* Row-major n x context_dim values, owned by data; NULL when none. */
FLOW_API flow_real *flow_data_context(flow_data *data);
/* Name of column j (data columns first, then context columns), owned by
 * data; NULL when the data set has no names or j is out of range. */
FLOW_API const char *flow_data_column_name(const flow_data *data, size_t j);

/* Built-in data sets (runtime/datasets.c; definitions and densities in
 * docs/formats.md).  Zero the struct, then set what you need. */
typedef struct flow_dataset_params {
    const char *name;       /* moons circles 8gaussians checkerboard pinwheel
                               2spirals rings swissroll gmm */
    size_t n;               /* rows, 1 .. 100000000 */
    uint64_t seed;          /* the samples; same seed, same bits */
    size_t dim;             /* gmm: dimension (0: 2) */
    size_t components;      /* gmm: number of components (0: 8) */
    uint64_t means_seed;    /* gmm: seed of the component means */
    int labels;             /* 8gaussians: the component as a one-hot in
                               context columns label0..label7 */
    int with_logprob;       /* append the true log-density (nats) as the
                               last context column "logprob"; only for
                               8gaussians, checkerboard and gmm */
} flow_dataset_params;

/* NULL-terminated list of the built-in data set names (static). */
FLOW_API const char *const *flow_dataset_names(void);
/* Draws a built-in data set: columns x0.. then context columns (labels,
 * logprob) as asked.  *out is new, owned by the caller. */
FLOW_API int flow_data_generate(flow_ctx *ctx, const flow_dataset_params *p,
                                flow_data **out);

/* The host-services table handed to plugins by this runtime.  Static. */
FLOW_API const flow_host *flow_host_services(void);

#ifdef __cplusplus
}
#endif
#endif /* FLOW_H */
