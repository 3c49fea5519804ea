/* harness.c - test-only: builds a model twice, once in process from the
 * spec (flow_graph_build_model) and once through the function flowc
 * --emit=c wrote, then checks they are the same model: same parameter
 * layout and initial values, and bit-identical log-probabilities on the
 * same (perturbed) parameters; with HARNESS_TARGET (a spec with a target
 * statement) also the target the emitted emitted_build_target makes
 * against flow_graph_build_target: bit-identical log-densities and
 * gradients.  Used by tests/emit_c.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <flow/flowc.h>

int emitted_build(flow_ctx *ctx, uint64_t seed, flow_model **out);
#ifdef HARNESS_TARGET
int emitted_build_target(flow_ctx *ctx, flow_target **out);

/* 0 when both targets give the same bits on n rows of x */
static int same_target(flow_ctx *ctx, const flow_graph *g, size_t n,
                       const flow_real *x)
{
    flow_target *ta = NULL, *tb = NULL;
    size_t d;
    flow_real *la, *lb, *ga, *gb;
    int rc = 1;
    if (flow_graph_build_target(ctx, g, &ta)
        || emitted_build_target(ctx, &tb)) {
        fprintf(stderr, "harness: target: %s\n", flow_errmsg(ctx));
        flow_target_free(ta);
        return 1;
    }
    d = flow_target_dim(ta);
    la = malloc(n * sizeof *la);
    lb = malloc(n * sizeof *lb);
    ga = malloc(n * d * sizeof *ga);
    gb = malloc(n * d * sizeof *gb);
    if (d == flow_target_dim(tb) && la && lb && ga && gb
        && !strcmp(flow_target_name(ta), flow_target_name(tb))
        && !flow_target_log_density(ta, n, x, la, ga)
        && !flow_target_log_density(tb, n, x, lb, gb)
        && !memcmp(la, lb, n * sizeof *la)
        && !memcmp(ga, gb, n * d * sizeof *ga))
        rc = 0;
    else
        fprintf(stderr, "harness: the emitted target differs\n");
    free(la);
    free(lb);
    free(ga);
    free(gb);
    flow_target_free(ta);
    flow_target_free(tb);
    return rc;
}
#endif

int main(int argc, char **argv)
{
    flow_ctx *ctx = flow_ctx_new();
    flow_compilation *c;
    flow_model *a = NULL, *b = NULL;
    flow_real *x, *cx = NULL, *la, *lb;
    size_t n = 64, d, k, np;
    if (argc != 2 || !ctx || flow_plugin_load_all(ctx) != FLOW_OK)
        return 2;
    c = flow_compile_file(ctx, argv[1]);
    if (!c || !flow_compile_graph(c)
        || flow_graph_build_model(ctx, flow_compile_graph(c), 5, &a)
        || emitted_build(ctx, 5, &b)) {
        fprintf(stderr, "harness: %s\n", flow_errmsg(ctx));
        return 1;
    }
    d = flow_model_dim(a);
    k = flow_model_context_dim(a);
    np = flow_model_num_params(a);
    if (np != flow_model_num_params(b) || d != flow_model_dim(b)
        || k != flow_model_context_dim(b)) {
        fprintf(stderr, "harness: models differ in shape\n");
        return 1;
    }
    if (memcmp(flow_model_params(a), flow_model_params(b),
               np * sizeof(flow_real))) {
        fprintf(stderr, "harness: initial parameters differ\n");
        return 1;
    }
    srand(3);
    for (size_t i = 0; i < np; i++) {
        flow_real v = (flow_real)(0.1 * ((double)rand() / RAND_MAX - 0.5));
        flow_model_params(a)[i] += v;
        flow_model_params(b)[i] += v;
    }
    x = malloc(n * d * sizeof *x);
    la = malloc(n * sizeof *la);
    lb = malloc(n * sizeof *lb);
    if (k)
        cx = calloc(n * k, sizeof *cx);
    for (size_t i = 0; i < n * d; i++)
        x[i] = (flow_real)(2 * sin(0.3 * (double)i));
    for (size_t r = 0; k && r < n; r++)
        cx[r * k + r % k] = 1;
    if (flow_model_log_prob(a, n, x, cx, la)
        || flow_model_log_prob(b, n, x, cx, lb)) {
        fprintf(stderr, "harness: %s\n", flow_errmsg(ctx));
        return 1;
    }
    if (memcmp(la, lb, n * sizeof *la)) {
        fprintf(stderr, "harness: log-probabilities differ\n");
        return 1;
    }
#ifdef HARNESS_TARGET
    if (same_target(ctx, flow_compile_graph(c), n, x))
        return 1;
    printf("harness: %s: the target's log-densities identical\n", argv[1]);
#endif
    printf("harness: %s: %zu parameters, %zu log-probabilities identical\n",
           argv[1], np, n);
    free(x);
    free(cx);
    free(la);
    free(lb);
    flow_model_free(a);
    flow_model_free(b);
    flow_compile_free(c);
    flow_ctx_free(ctx);
    return 0;
}
