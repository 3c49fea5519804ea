/* ctx.c - flow_ctx: creation, teardown, error messages, version queries. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

const char *flow_version(void) { return FLOW_VERSION_STRING; }
int flow_version_number(void) { return FLOW_VERSION_NUMBER; }
const char *flow_precision(void) { return FLOW_REAL_NAME; }

flow_ctx *flow_ctx_new(void)
{
    flow_ctx *ctx = calloc(1, sizeof *ctx);
    return ctx;
}

void flow_ctx_free(flow_ctx *ctx)
{
    if (!ctx)
        return;
    loader_free(ctx);
    free(ctx);
}

const char *flow_errmsg(const flow_ctx *ctx)
{
    return ctx ? ctx->errmsg : "no context (out of memory?)";
}

int flow_ctx_error(flow_ctx *ctx, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->errmsg, sizeof ctx->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

void ctx_clear_error(flow_ctx *ctx)
{
    ctx->errmsg[0] = '\0';
}
