/* test_alloc_fail.c - allocation failures walked over a whole session:
 * plugins, compiling a spec with an import, training, saving, restoring. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flowc.h"
#include "alloc_fail.h"
#include "files_util.h"
#include "suites.h"

/* A small model that reaches every part of a session: a block from an
 * imported file, each layer plugin (couplings, MADEs, a residual and an
 * ODE block, data-dependent initialisation), a context, an exit and a
 * mixture base, and training state in the checkpoint. */
static const char main_spec[] =
    "import \"blocks.flow\";\n"
    "flow small {\n"
    "  input x : real[4] in [0, 1];\n"
    "  context c : real[1];\n"
    "  logit;\n"
    "  actnorm;\n"
    "  repeat 2 as i {\n"
    "    cpl(i);\n"
    "  }\n"
    "  linear;\n"
    "  exit 2 -> z1 ~ diag_normal;\n"
    "  maf(hidden = [4]) given c;\n"
    "  iaf(order = reverse, hidden = [4], transformer = additive);\n"
    "  batchnorm;\n"
    "  permute(order = reverse);\n"
    "  residual(hidden = [4], activation = tanh, coeff = 0.9,\n"
    "           logdet = exact);\n"
    "  ode(hidden = [4], activation = tanh, time = concat,\n"
    "      solver = rk4(steps = 2), trace = exact, gradient = backprop);\n"
    "  output z ~ mixture(k = 2);\n"
    "}\n";
static const char blocks_spec[] =
    "block cpl(p) {\n"
    "  coupling(mask = parity(p), hidden = [4],\n"
    "           transformer = spline(bins = 4, bound = 4)) given c;\n"
    "}\n";

enum { ROWS = 16, DIM = 4, CDIM = 1, STEPS = 2 };

static char dir[256];
static flow_real data[ROWS * DIM], context[ROWS * CDIM];

/* What one run of the session did. */
typedef struct outcome {
    const char *stage;          /* the call that failed; NULL: none       */
    int status;                 /* its status (FLOW_ERR_NOMEM for NULL)   */
    char msg[2048];             /* its message (a context holds as much)  */
    flow_real lp[ROWS];         /* the restored model's log-densities     */
    int same;                   /* restored == trained, bit for bit       */
} outcome;

static int failed_ctx(outcome *o, const char *stage, flow_ctx *ctx, int rc)
{
    o->stage = stage;
    o->status = rc;
    snprintf(o->msg, sizeof o->msg, "%s", flow_errmsg(ctx));
    return rc;
}

/* A compilation that is NULL (out of memory: the message is the
 * context's) or has errors (the first diagnostic). */
static int failed_compile(outcome *o, const char *stage, flow_ctx *ctx,
                          const flow_compilation *c)
{
    if (!c)
        return failed_ctx(o, stage, ctx, FLOW_ERR_NOMEM);
    o->stage = stage;
    o->status = FLOW_ERR_INVAL;
    snprintf(o->msg, sizeof o->msg, "%s",
             flow_compile_diag_count(c) ? flow_compile_diag(c, 0)->message
                                        : "");
    return o->status;
}

static void clear_error(flow_ctx *ctx)
{
    flow_ctx_error(ctx, FLOW_OK, "%s", "");
}

/* The session, as `flowkit train` and `flowkit logprob CKPT` run it, in
 * `given` (plugins loaded) or, when NULL, in a context of its own that
 * loads them.  Returns FLOW_OK or the first failure's status, freeing
 * everything it made. */
static int session(flow_ctx *given, outcome *o)
{
    const char *spec_path = tu_path(dir, "main.flow");
    const char *ckpt_path = tu_path(dir, "small.ckpt");
    flow_ctx *ctx = given;
    flow_compilation *c1 = NULL, *c2 = NULL;
    flow_model *m1 = NULL, *m2 = NULL;
    flow_trainer *t1 = NULL, *t2 = NULL;
    flow_checkpoint *ck = NULL;
    flow_train_config cfg;
    flow_real lp1[ROWS];
    int rc = FLOW_OK;

    memset(o, 0, sizeof *o);
    if (!ctx && !(ctx = flow_ctx_new()))
        return failed_ctx(o, "flow_ctx_new", NULL, FLOW_ERR_NOMEM);
#define CALL(stage, call) \
    do { \
        clear_error(ctx); \
        if ((rc = (call)) != FLOW_OK) { \
            failed_ctx(o, stage, ctx, rc); \
            goto done; \
        } \
    } while (0)
#define TRAINER(t, m) \
    do { \
        clear_error(ctx); \
        if (!((t) = flow_trainer_new((m), &cfg, data, context, ROWS))) { \
            rc = failed_ctx(o, "flow_trainer_new", ctx, FLOW_ERR_NOMEM); \
            goto done; \
        } \
    } while (0)
#define COMPILE(c, stage, path, text) \
    do { \
        clear_error(ctx); \
        (c) = flow_compile_string(ctx, (path), (text), strlen(text)); \
        if (!(c) || !flow_compile_graph(c)) { \
            rc = failed_compile(o, stage, ctx, (c)); \
            goto done; \
        } \
    } while (0)

    if (!given)
        CALL("flow_plugin_load_all", flow_plugin_load_all(ctx));
    COMPILE(c1, "flow_compile_string", spec_path, main_spec);
    CALL("flow_graph_build_model",
         flow_graph_build_model(ctx, flow_compile_graph(c1), 7, &m1));
    CALL("flow_model_set_threads", flow_model_set_threads(m1, 1));
    CALL("flow_model_data_init", flow_model_data_init(m1, ROWS, data,
                                                      context));
    flow_train_config_default(&cfg);
    cfg.batch = 8;
    cfg.lr = 1e-2;
    TRAINER(t1, m1);
    for (int s = 0; s < STEPS; s++)
        CALL("flow_trainer_step", flow_trainer_step(t1, NULL));
    CALL("flow_checkpoint_save", flow_checkpoint_save(m1, t1, main_spec,
                                                      spec_path, "[]",
                                                      ckpt_path));
    CALL("flow_checkpoint_open", flow_checkpoint_open(ctx, ckpt_path, &ck));
    COMPILE(c2, "flow_compile_string (checkpoint)",
            flow_checkpoint_meta(ck, "spec_path"), flow_checkpoint_spec(ck));
    CALL("flow_graph_build_model (checkpoint)",
         flow_graph_build_model(ctx, flow_compile_graph(c2), 0, &m2));
    CALL("flow_model_set_threads (checkpoint)",
         flow_model_set_threads(m2, 1));
    TRAINER(t2, m2);
    CALL("flow_checkpoint_restore", flow_checkpoint_restore(ck, m2, t2));
    CALL("flow_model_log_prob", flow_model_log_prob(m1, ROWS, data, context,
                                                    lp1));
    CALL("flow_model_log_prob (checkpoint)",
         flow_model_log_prob(m2, ROWS, data, context, o->lp));
    o->same = memcmp(lp1, o->lp, sizeof lp1) == 0;
#undef CALL
#undef TRAINER
#undef COMPILE
done:
    flow_trainer_free(t2);
    flow_model_free(m2);
    flow_compile_free(c2);
    flow_checkpoint_free(ck);
    flow_trainer_free(t1);
    flow_model_free(m1);
    flow_compile_free(c1);
    if (!given)
        flow_ctx_free(ctx);
    remove(ckpt_path);
    return rc;
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "%s", tu_mkdtemp());
    tu_write(tu_path(dir, "blocks.flow"), blocks_spec, strlen(blocks_spec));
    /* inside (0, 1), the logit layer's domain */
    for (int i = 0; i < ROWS * DIM; i++)
        data[i] = (flow_real)(0.5 + 0.4 * sin(0.37 * i + 0.5));
    for (int i = 0; i < ROWS * CDIM; i++)
        context[i] = (flow_real)cos(0.9 * i);
}

static void teardown(void)
{
    tu_rmtree(dir);
}

/* A message that tells the user what happened: out of memory, in the
 * runtime's words or the C library's (a failed read of an import). */
static int says_out_of_memory(const char *msg)
{
    return strstr(msg, "out of memory") || strstr(msg, strerror(ENOMEM));
}

/* The session without failures in `given` (see session): its outcome in
 * *ref, the number of allocations it makes returned. */
static long reference(flow_ctx *given, outcome *ref)
{
    long n;
    int rc;
    alloc_fail_after(-1, 0);
    rc = session(given, ref);
    n = alloc_fail_count();        /* before Check's asserts allocate */
    ck_assert_msg(rc == FLOW_OK, "the session fails without injected "
                  "failures: %s: %s", ref->stage, ref->msg);
    ck_assert_msg(ref->same, "restored log-densities differ from the "
                  "trained model's");
    return n;
}

/* Runs the session once for each k in [0, n) with the k-th allocation
 * failing (persist: and every later one).  A run either fails at some
 * call with a status and a message that says out of memory, or succeeds
 * with the reference's numbers (an allocation whose failure is absorbed
 * must not change a result); either way it leaves no file behind but
 * the checkpoint, which session removes.  Returns the number of runs that
 * did otherwise, each printed; *absorbed counts the successes.
 * FLOW_ALLOC_FAIL_TRACE=1 prints each k before its run (to find the one
 * that crashed) and the outcome after. */
static long walk(flow_ctx *given, long n, int persist, const outcome *ref,
                 long *absorbed)
{
    static outcome o;
    const char *trace = getenv("FLOW_ALLOC_FAIL_TRACE");
    long bad = 0;
    *absorbed = 0;
    for (long k = 0; k < n; k++) {
        int rc;
        if (trace)
            fprintf(stderr, "alloc_fail: allocation %ld of %ld%s\n", k, n,
                    persist ? " and on" : "");
        alloc_fail_after(k, persist);
        rc = session(given, &o);
        if (trace)
            fprintf(stderr, "  %s after %ld allocations: %s\n",
                    rc ? o.stage : "succeeded", alloc_fail_count(), o.msg);
        alloc_fail_after(-1, 0);
        if (tu_count_entries(dir) != 1) {
            fprintf(stderr, "alloc_fail: allocation %ld: %d files left in "
                    "%s (a temporary?)\n", k, tu_count_entries(dir), dir);
            bad++;
        }
        if (rc == FLOW_OK) {
            ++*absorbed;
            if (!o.same || memcmp(o.lp, ref->lp, sizeof o.lp) != 0) {
                fprintf(stderr, "alloc_fail: allocation %ld: the session "
                        "succeeded with other numbers\n", k);
                bad++;
            }
        } else if (!says_out_of_memory(o.msg)) {
            fprintf(stderr, "alloc_fail: allocation %ld: %s returned %d "
                    "with message '%s'\n", k, o.stage, o.status, o.msg);
            bad++;
        }
    }
    return bad;
}

/* Plugin loading: each allocation of flow_ctx_new and
 * flow_plugin_load_all fails in turn, in a whole session (which then
 * stops early). */
START_TEST(test_plugin_load_allocations_fail_cleanly)
{
    static outcome ref;
    long n, bad, absorbed;
    flow_ctx *ctx;
    int rc;

    alloc_fail_after(-1, 0);
    ctx = flow_ctx_new();
    rc = ctx ? flow_plugin_load_all(ctx) : FLOW_ERR_NOMEM;
    n = alloc_fail_count();        /* before Check's asserts allocate */
    ck_assert_msg(rc == FLOW_OK, "%s", flow_errmsg(ctx));
    flow_ctx_free(ctx);
    ck_assert_msg(n >= 10, "only %ld allocations counted: is the runner "
                  "linked with --wrap=malloc (Makefile.am)?", n);
    reference(NULL, &ref);
    bad = walk(NULL, n, 0, &ref, &absorbed);
    ck_assert_msg(bad == 0, "%ld of %ld allocation failures were reported "
                  "wrongly (listed above)", bad, n);
    ck_assert_int_eq(absorbed, 0);
}
END_TEST

/* The rest of the session, plugins loaded once: compiling (an import
 * read from disk), building, initialisation, training, saving, opening,
 * recompiling, restoring, evaluating. */
START_TEST(test_session_allocations_fail_cleanly)
{
    static outcome ref;
    long n, bad, absorbed;
    flow_ctx *ctx = flow_ctx_new();

    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    n = reference(ctx, &ref);
    ck_assert_msg(n >= 100, "only %ld allocations counted: is the runner "
                  "linked with --wrap=malloc (Makefile.am)?", n);
    /* a walk needs the same allocations in the same order every time */
    ck_assert_int_eq(reference(ctx, &ref), n);
    bad = walk(ctx, n, 0, &ref, &absorbed);
    fprintf(stderr, "alloc_fail: %ld allocations, %ld failures absorbed\n",
            n, absorbed);
    flow_ctx_free(ctx);
    ck_assert_msg(bad == 0, "%ld of %ld allocation failures were reported "
                  "wrongly (listed above)", bad, n);
}
END_TEST

/* The same with every allocation from the k-th on failing: the paths
 * that report and clean up after a failure must not need memory. */
START_TEST(test_session_allocations_fail_from_then_on)
{
    static outcome ref;
    long n, bad, absorbed;
    flow_ctx *ctx = flow_ctx_new();

    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load_all(ctx) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    n = reference(ctx, &ref);
    bad = walk(ctx, n, 1, &ref, &absorbed);
    fprintf(stderr, "alloc_fail: %ld allocations from then on, %ld "
            "absorbed\n", n, absorbed);
    flow_ctx_free(ctx);
    ck_assert_msg(bad == 0, "%ld of %ld allocation failures were reported "
                  "wrongly (listed above)", bad, n);
}
END_TEST

Suite *suite_alloc_fail(void)
{
    Suite *s = suite_create("alloc_fail");
    TCase *tc = tcase_create("session");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_plugin_load_allocations_fail_cleanly);
    tcase_add_test(tc, test_session_allocations_fail_cleanly);
    tcase_add_test(tc, test_session_allocations_fail_from_then_on);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return s;
}
