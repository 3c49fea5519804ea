/* host.c - the host-services table handed to plugins: memory, messages,
 * and (filled in by the numerical modules) RNG, BLAS, networks and
 * transformers. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "rng.h"
#include "matrix.h"
#include "nn.h"
#include "transform.h"

#define HOST_ALIGN 64

static void *host_alloc(size_t bytes)
{
    void *p = NULL;
    size_t n = bytes ? bytes : 1;
    /* exactly the bytes asked for (posix_memalign takes any size): no
     * padding for a plugin's overrun to hide in from valgrind or ASan */
    if (posix_memalign(&p, HOST_ALIGN, n) != 0)
        return NULL;
    return p;
}

static void *host_calloc(size_t count, size_t size)
{
    void *p;
    if (size && count > SIZE_MAX / size)
        return NULL;
    p = host_alloc(count * size);
    if (p && count * size > 0)
        memset(p, 0, count * size);
    return p;
}

static void host_free(void *p) { free(p); }

static void host_log(flow_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warning", "error"};
    va_list ap;
    if (level == FLOW_LOG_DEBUG && !getenv("FLOW_DEBUG"))
        return;
    fprintf(stderr, "flowkit: %s: ",
            (unsigned)level < 4 ? names[level] : "log");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int host_error(const flow_call *c, const char *fmt, ...)
{
    va_list ap;
    if (c && c->err && c->err_cap) {
        va_start(ap, fmt);
        vsnprintf(c->err, c->err_cap, fmt, ap);
        va_end(ap);
    }
    return FLOW_ERR;
}

static const flow_host host_table = {
    .abi_version = FLOW_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(flow_host),
    .real_size = sizeof(flow_real),
    .alloc = host_alloc,
    .calloc = host_calloc,
    .free = host_free,
    .log = host_log,
    .error = host_error,
    .rng_u64 = rng_u64,
    .rng_uniform = rng_uniform,
    .rng_normal = rng_normal,
    .rng_rademacher = rng_rademacher,
    /* numerical core: BLAS, networks, transformers, dense LAPACK */
    .gemm = blas_gemm_host,
    .net_create = nn_create,
    .net_destroy = nn_destroy,
    .net_params = nn_params,
    .net_init = nn_made_net_init,
    .net_workspace = nn_workspace,
    .net_forward = nn_forward,
    .net_backward = nn_backward,
    .net_jvp = nn_jvp,
    .tf_params = tf_params,
    .tf_forward = tf_forward,
    .tf_inverse = tf_inverse,
    .tf_backward = tf_backward,
    .tf_inverse_backward = tf_inverse_backward,
    .net_jvp_backward = nn_jvp_backward,
    .slogdet = la_slogdet,
    .matinv = la_matinv,
    /* 1.1 */
    .net_div_workspace = nn_div_workspace,
    .net_div_forward = nn_div_forward,
    .net_div_backward = nn_div_backward,
    /* 1.2 */
    .net_made_step = nn_made_step,
    .net_mask_params = nn_mask_params,
    /* 1.3 */
    .net_made_sorted_count = nn_made_sorted_count,
    .net_made_sort = nn_made_sort,
    .net_made_forward = nn_made_forward,
    .net_made_backward = nn_made_backward,
    .net_made_grad = nn_made_grad,
    .net_made_step_sorted = nn_made_step_sorted,
    /* 1.6 */
    .net_export = nn_export,
    .tf_export = tf_export,
    /* 1.11 */
    .net_made_from_cyclic = nn_made_from_cyclic,
    /* 1.12 */
    .net_made_grad_support = nn_made_grad_support,
};

const flow_host *flow_host_services(void) { return &host_table; }
