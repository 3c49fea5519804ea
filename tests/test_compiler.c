/* test_compiler.c - the .flow compiler through its API and internals:
 * expansion, attribute resolution, graph contents, diagnostics, limits and
 * robustness against garbage. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "flow/flowc.h"
#include "../compiler/compiler.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    const char *dir = getenv("FLOW_SPEC_PLUGINS");
    char path[4096];
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(flow_plugin_load(ctx, "permute") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(dir != NULL, "FLOW_SPEC_PLUGINS is not set (run through "
                               "make check)");
    snprintf(path, sizeof path, "%s/testlayers.so", dir);
    ck_assert_msg(flow_plugin_load(ctx, path) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

static void teardown(void) { flow_ctx_free(ctx); }

static flow_compilation *compile(const char *src)
{
    flow_compilation *c = flow_compile_string(ctx, "mem.flow", src,
                                              strlen(src));
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Compiles src, which must succeed without diagnostics. */
static flow_compilation *compile_ok(const char *src)
{
    flow_compilation *c = compile(src);
    if (flow_compile_diag_count(c) > 0)
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_diag_count(c), 0);
    ck_assert_ptr_nonnull(flow_compile_graph(c));
    return c;
}

static void assert_vec(const int32_t *v, const int32_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(v[i] == want[i], "entry %zu: %d, want %d", i,
                      (int)v[i], (int)want[i]);
}

START_TEST(test_expansion_and_dep_vecs)
{
    flow_compilation *c = compile_ok(
        "const H = 3 * 4 - 2;\n"
        "block cpl(p, w) { tcoupling(mask = parity(p), hidden = [w, H]); }\n"
        "flow f {\n"
        "  input x : real[5];\n"
        "  repeat 2 * 2 - 1 as i { cpl(i % 2, 8 + i); }\n"
        "  permute(order = [4, 3, 2, 0, 1]);\n"
        "  output z ~ normal;\n"
        "}\n");
    const flow_graph *g = flow_compile_graph(c);
    static const int32_t even[] = {1, 0, 1, 0, 1}, odd[] = {0, 1, 0, 1, 0};
    static const int32_t perm[] = {4, 3, 2, 0, 1};
    const flow_graph_node *n;

    ck_assert_str_eq(flow_graph_name(g), "f");
    ck_assert_uint_eq(flow_graph_input_dim(g), 5);
    ck_assert_uint_eq(flow_graph_node_count(g), 4);
    for (size_t i = 0; i < 3; i++) {
        n = flow_graph_node_get(g, i);
        ck_assert_uint_eq(n->struct_size, sizeof *n);
        ck_assert_int_eq(n->kind, FLOW_NODE_LAYER);
        ck_assert_str_eq(n->type->name, "tcoupling");
        ck_assert_uint_eq(n->in_dim, 5);
        ck_assert_int_eq(n->desc->dep, FLOW_DEP_COUPLING);
        assert_vec(n->desc->dep_vec, i % 2 ? odd : even, 5);
        /* hidden = [8 + i, H] with H = 10 */
        ck_assert_uint_eq(n->attrs[1].n, 2);
        ck_assert_int_eq(n->attrs[1].ilist[0], 8 + (int64_t)i);
        ck_assert_int_eq(n->attrs[1].ilist[1], 10);
        ck_assert_int_eq(n->attrs[1].given, 1);
        /* transformer defaulted to "affine" (variant index 0) */
        ck_assert_int_eq(n->attrs[2].given, 0);
        ck_assert_str_eq(n->attrs[2].s, "affine");
        ck_assert_int_eq(n->attrs[2].i, 0);
        ck_assert_int_eq(n->line, 2);       /* inside the block */
    }
    ck_assert_str_eq(flow_graph_node_get(g, 1)->label, "tcoupling#1");
    n = flow_graph_node_get(g, 3);
    ck_assert_str_eq(n->label, "permute#3");
    ck_assert_int_eq(n->desc->dep, FLOW_DEP_PERMUTATION);
    assert_vec(n->desc->dep_vec, perm, 5);
    ck_assert_int_eq(n->line, 6);
    ck_assert_int_eq(n->col, 3);
    /* the bare list selected permute's `explicit` alternative */
    ck_assert_str_eq(n->attrs[0].s, "explicit");
    ck_assert_int_eq(n->attrs[0].line, 6);
    ck_assert_int_eq(n->attrs[0].col, 19);
    ck_assert_ptr_null(flow_graph_node_get(g, 4));
    flow_compile_free(c);
}
END_TEST

START_TEST(test_params_and_costs)
{
    /* tcoupling half on D = 4 with context 2: MLP 4 -> 16 -> 4 (affine:
     * 2 outputs per transformed dim): 5*16 + 17*4 = 148 */
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[4] in [-1, 2.5];\n"
        "  context c : real[2];\n"
        "  tcoupling(mask = half, hidden = [16]) given c;\n"
        "  tmaf(order = reverse, hidden = [8]);\n"
        "  output z ~ mixture(3);\n"
        "}\n");
    const flow_graph *g = flow_compile_graph(c);
    const flow_graph_node *a = flow_graph_node_get(g, 0);
    const flow_graph_node *b = flow_graph_node_get(g, 1);
    const flow_graph_base *base = flow_graph_base_get(g);
    double lo, hi;

    ck_assert_int_eq(flow_graph_input_bounds(g, &lo, &hi), 1);
    ck_assert_double_eq(lo, -1.0);
    ck_assert_double_eq(hi, 2.5);
    ck_assert_str_eq(flow_graph_context_name(g), "c");
    ck_assert_uint_eq(flow_graph_context_dim(g), 2);
    ck_assert_int_eq(a->uses_context, 1);
    ck_assert_uint_eq(a->config.context_dim, 2);
    ck_assert_int_eq(a->config.has_bounds, 1);   /* first layer */
    ck_assert_uint_eq(a->desc->n_params, 148);
    ck_assert_int_eq(b->uses_context, 0);
    ck_assert_uint_eq(b->config.context_dim, 0);
    ck_assert_int_eq(b->config.has_bounds, 0);   /* after a coupling */
    /* MADE 4 -> 8 -> 8: 5*8 + 9*8 = 112 */
    ck_assert_uint_eq(b->desc->n_params, 112);
    ck_assert_uint_eq(b->desc->cost_inverse.passes, 4);
    ck_assert_int_eq(base->kind, FLOW_BASE_GMM);
    ck_assert_uint_eq(base->n_args, 1);
    ck_assert_double_eq(base->args[0], 3.0);
    ck_assert_int_eq(base->uses_context, 0);
    ck_assert_uint_eq(base->n_params, 3 * (2 * 4 + 1));
    ck_assert_uint_eq(flow_graph_params(g), 148 + 112 + 27);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_exits_and_train)
{
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[6];\n"
        "  tcoupling(mask = parity(0));\n"
        "  tcoupling(mask = parity(1));\n"
        "  exit 2 -> z1 ~ diag_normal;\n"
        "  tcoupling(mask = parity(0));\n"
        "  tcoupling(mask = parity(1));\n"
        "  output z ~ logistic;\n"
        "  train { optimizer = adam; lr = 0.5e-3; batch = 128; }\n"
        "}\n");
    const flow_graph *g = flow_compile_graph(c);
    const flow_graph_node *e = flow_graph_node_get(g, 2);
    const flow_train_entry *t;

    ck_assert_int_eq(e->kind, FLOW_NODE_EXIT);
    ck_assert_ptr_null(e->desc);                  /* layers only */
    ck_assert_int_eq(flow_graph_node_get(g, 3)->desc->dep, FLOW_DEP_COUPLING);
    ck_assert_uint_eq(e->exit_k, 2);
    ck_assert_uint_eq(e->in_dim, 6);
    ck_assert_str_eq(e->exit_name, "z1");
    ck_assert_int_eq(e->exit_base.kind, FLOW_BASE_DIAG_NORMAL);
    ck_assert_uint_eq(e->exit_base.n_params, 4);
    ck_assert_uint_eq(flow_graph_node_get(g, 3)->in_dim, 4);
    ck_assert_uint_eq(flow_graph_output_dim(g), 4);
    ck_assert_str_eq(flow_graph_output_name(g), "z");
    ck_assert_int_eq(flow_graph_base_get(g)->kind, FLOW_BASE_LOGISTIC);
    ck_assert_uint_eq(flow_graph_train_count(g), 3);
    t = flow_graph_train_get(g, 0);
    ck_assert_str_eq(t->key, "optimizer");
    ck_assert_int_eq(t->is_number, 0);
    ck_assert_str_eq(t->text, "adam");
    t = flow_graph_train_get(g, 1);
    ck_assert_int_eq(t->is_number, 1);
    ck_assert_double_eq_tol(t->number, 5e-4, 1e-18);
    t = flow_graph_train_get(g, 2);
    ck_assert_double_eq(t->number, 128.0);
    ck_assert_str_eq(t->text, "128");
    ck_assert_ptr_null(flow_graph_train_get(g, 3));
    flow_compile_free(c);
}
END_TEST

START_TEST(test_diagnostic_fields)
{
    flow_compilation *c = compile(
        "flow f {\n"
        "  input x : real[4];\n"
        "  tcoupling(mask = half, hiden = [8]);\n"
        "  output z ~ normal;\n"
        "}\n");
    const flow_diagnostic *d;
    ck_assert_ptr_null(flow_compile_graph(c));
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    ck_assert_uint_eq(flow_compile_warnings(c), 0);
    d = flow_compile_diag(c, 0);
    ck_assert_uint_eq(d->struct_size, sizeof *d);
    ck_assert_int_eq(d->severity, FLOW_SEV_ERROR);
    ck_assert_str_eq(d->code, "F0103");
    ck_assert_str_eq(d->file, "mem.flow");
    ck_assert_int_eq(d->line, 3);
    ck_assert_int_eq(d->col, 26);
    ck_assert_int_eq(d->end_col, 30);
    ck_assert_str_eq(d->message,
                     "unknown attribute 'hiden' for layer 'tcoupling'");
    ck_assert_str_eq(d->help, "did you mean 'hidden'?");
    ck_assert_ptr_null(flow_compile_diag(c, 1));
    flow_compile_free(c);
}
END_TEST

START_TEST(test_diagnostic_rendering)
{
    flow_compilation *c = compile(
        "flow f {\n"
        "\tinput x : real[4];\n"
        "\ttmaf(order = [0, 0, 1, 2]);\n"
        "\toutput z ~ normal;\n"
        "}\n");
    FILE *f = tmpfile();
    char buf[2048];
    size_t n;
    ck_assert_ptr_nonnull(f);
    flow_compile_print_diags(c, f, FLOW_DIAG_TEXT);
    rewind(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    /* tabs in the source are kept in the underline so columns line up */
    ck_assert_str_eq(buf,
        "mem.flow:3:7: error[F0503]: tmaf#0: autoregressive order is not a "
        "permutation of 0..3: 0 appears twice\n"
        " 3 | \ttmaf(order = [0, 0, 1, 2]);\n"
        "   | \t     ^~~~~~~~~~~~~~~~~~~~\n"
        "help: each of 0..D-1 must appear exactly once\n");
    fclose(f);
    ck_assert_ptr_nonnull(f = tmpfile());
    flow_compile_print_diags(c, f, FLOW_DIAG_TERSE);
    rewind(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    ck_assert_str_eq(buf,
        "mem.flow:3:7: error[F0503]: tmaf#0: autoregressive order is not a "
        "permutation of 0..3: 0 appears twice\n");
    fclose(f);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_warnings_keep_graph)
{
    flow_compilation *c = compile(
        "flow f {\n"
        "  input x : real[4];\n"
        "  context c : real[1];\n"
        "  tmaf(order = natural);\n"
        "  tmaf(order = [0, 1, 2, 3]);\n"
        "  output z ~ normal;\n"
        "}\n");
    ck_assert_ptr_nonnull(flow_compile_graph(c));
    ck_assert_uint_eq(flow_compile_errors(c), 0);
    ck_assert_uint_eq(flow_compile_warnings(c), 2);
    ck_assert_str_eq(flow_compile_diag(c, 0)->code, "F0901");
    ck_assert_int_eq(flow_compile_diag(c, 0)->line, 5);
    ck_assert_str_eq(flow_compile_diag(c, 1)->code, "F0902");
    ck_assert_int_eq(flow_compile_diag(c, 1)->severity, FLOW_SEV_WARNING);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_untransformed_tracking)
{
    /* first(1) transforms dim 0; reverse brings dim 3 to the front, then
     * the exit removes it: dims 1 and 2 are never transformed */
    flow_compilation *c = compile(
        "flow f {\n"
        "  input x : real[4];\n"
        "  tcoupling(mask = first(1));\n"
        "  permute(order = reverse);\n"
        "  tcoupling(mask = first(1));\n"
        "  exit 1 -> a ~ normal;\n"
        "  output z ~ normal;\n"
        "}\n");
    ck_assert_uint_eq(flow_compile_warnings(c), 1);
    ck_assert_str_eq(flow_compile_diag(c, 0)->message,
                     "input dimensions 1, 2 are never transformed");
    flow_compile_free(c);
}
END_TEST

START_TEST(test_missing_file)
{
    flow_compilation *c = flow_compile_file(ctx, "/nonexistent/x.flow");
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    ck_assert_str_eq(flow_compile_diag(c, 0)->code, "F0010");
    ck_assert_int_eq(flow_compile_diag(c, 0)->line, 0);
    ck_assert_str_eq(flow_compile_diag(c, 0)->message,
                     "cannot read spec: No such file or directory");
    flow_compile_free(c);
}
END_TEST

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_ptr_nonnull(f = fopen(path, "w"));
    fputs(text, f);
    fclose(f);
}

/* a imports b and c, both import lib/d: d is read once (no duplicate
 * definitions), paths are relative to the importing file. */
START_TEST(test_imports_diamond)
{
    char dir[] = "/tmp/flowc-test-XXXXXX", sub[4096], main_path[4096];
    flow_compilation *c;
    const flow_graph *g;
    const char *path;
    size_t len;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sub, sizeof sub, "%s/lib", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    write_file(dir, "b.flow", "import \"lib/d.flow\";\nconst B = D + 1;\n");
    write_file(dir, "c.flow", "import \"lib/d.flow\";\nconst C = D + 2;\n");
    write_file(dir, "lib/d.flow", "const D = 3;\n");
    write_file(dir, "a.flow",
               "import \"b.flow\";\nimport \"c.flow\";\n"
               "flow a { input x : real[B + C]; tmaf(hidden = [B, C, D]);\n"
               "output z ~ normal; }\n");
    snprintf(main_path, sizeof main_path, "%s/a.flow", dir);
    c = flow_compile_file(ctx, main_path);
    ck_assert_ptr_nonnull(c);
    if (flow_compile_diag_count(c))
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_diag_count(c), 0);
    g = flow_compile_graph(c);
    ck_assert_uint_eq(flow_graph_input_dim(g), 9);
    ck_assert_int_eq(flow_graph_node_get(g, 0)->attrs[1].ilist[2], 3);
    ck_assert_uint_eq(flow_graph_source_count(g), 4);
    ck_assert_ptr_nonnull(flow_graph_source(g, 2, &path, &len));
    snprintf(sub, sizeof sub, "%s/lib/d.flow", dir);
    ck_assert_str_eq(path, sub);
    ck_assert_uint_eq(len, strlen("const D = 3;\n"));
    ck_assert_ptr_null(flow_graph_source(g, 4, &path, &len));
    flow_compile_free(c);
    remove(sub);
    snprintf(sub, sizeof sub, "%s/lib", dir);
    remove(sub);
    for (const char *const *n = (const char *const[]){"a.flow", "b.flow",
                                                      "c.flow", NULL};
         *n; n++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, *n);
        remove(sub);
    }
    remove(dir);
}
END_TEST

/* Declarations are taken in source order, each import's where it stands:
 * diagnostics follow that order across files, and a const cannot use a
 * name imported below it. */
START_TEST(test_imports_in_source_order)
{
    char dir[] = "/tmp/flowc-test-XXXXXX", path[4096];
    static const char *const names[] = {"a.flow", "bad.flow", "d.flow"};
    static const struct { const char *file, *code; int line; } want[] = {
        {"a.flow", "F0121", 1},         /* 1 / 0, before the imports */
        {"bad.flow", "F0001", 1},       /* the first import's syntax */
        {"a.flow", "F0100", 3},         /* D is imported only below   */
    };
    flow_compilation *c;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    write_file(dir, "bad.flow", "const Q = ;\n");
    write_file(dir, "d.flow", "const D = 3;\n");
    write_file(dir, "a.flow",
               "const A = 1 / 0;\nimport \"bad.flow\";\nconst E = D + 1;\n"
               "import \"d.flow\";\n"
               "flow a { input x : real[2]; output z ~ normal; }\n");
    snprintf(path, sizeof path, "%s/a.flow", dir);
    c = flow_compile_file(ctx, path);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(flow_compile_diag_count(c), 3);
    for (size_t i = 0; i < 3; i++) {
        const flow_diagnostic *d = flow_compile_diag(c, i);
        snprintf(path, sizeof path, "%s/%s", dir, want[i].file);
        ck_assert_msg(!strcmp(d->file, path) && !strcmp(d->code, want[i].code)
                      && d->line == want[i].line, "diagnostic %zu: %s:%d %s, "
                      "want %s:%d %s", i, d->file, d->line, d->code, path,
                      want[i].line, want[i].code);
    }
    flow_compile_free(c);
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        remove(path);
    }
    remove(dir);
}
END_TEST

START_TEST(test_edit_distance_and_suggest)
{
    static const char *const names[] = {"hidden", "mask", "transformer"};
    ck_assert_uint_eq(diag_edit_distance("hiden", "hidden"), 1);
    ck_assert_uint_eq(diag_edit_distance("", "abc"), 3);
    ck_assert_uint_eq(diag_edit_distance("kitten", "sitting"), 3);
    ck_assert_str_eq(diag_suggest("hiden", names, 3), "hidden");
    ck_assert_str_eq(diag_suggest("transfromer", names, 3), "transformer");
    ck_assert_ptr_null(diag_suggest("colour", names, 3));
    ck_assert_ptr_null(diag_suggest("mask", names, 3));  /* exact: none */
    /* the public form is the same rule: the CLI's suggestions use it */
    ck_assert_str_eq(flow_suggest("hiden", names, 3), "hidden");
    ck_assert_ptr_null(flow_suggest("colour", names, 3));
    ck_assert_ptr_null(flow_suggest(NULL, names, 3));
    ck_assert_ptr_null(flow_suggest("mask", names, 0));
}
END_TEST

START_TEST(test_arena)
{
    arena a = {0};
    char *small = arena_alloc(&a, 10);
    char *big = arena_alloc(&a, 200000);     /* larger than a chunk */
    char *after = arena_alloc(&a, 10);
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_nonnull(after);
    ck_assert_int_eq(big[199999], 0);        /* zeroed */
    /* malloc guarantees _Alignof(max_align_t) (16 on x86-64), not
     * sizeof(max_align_t) (32): which one a chunk met depended on the heap
     * layout, which another suite in the runner changes */
    ck_assert_uint_eq((uintptr_t)after % _Alignof(max_align_t), 0);
    ck_assert_ptr_null(arena_array(&a, SIZE_MAX / 2, 8));
    ck_assert_int_eq(a.failed, 1);
    ck_assert_str_eq(arena_printf(&a, "%s#%d", "x", 3), "x#3");
    arena_free(&a);
}
END_TEST

START_TEST(test_parse_expr_default)
{
    flow_compilation *c = compile_ok(
        "flow f { input x : real[2]; tmaf(); "
        "output z ~ normal; }");
    char err[128];
    expr *e = parse_expr_string(c, "spline(bins = 8, bound = 3)", err,
                                sizeof err);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->kind, E_CALL);
    ck_assert_str_eq(e->s, "spline");
    ck_assert_uint_eq(e->n, 2);
    ck_assert_str_eq(e->args->name, "bins");
    ck_assert_int_eq(e->args->value->i, 8);
    ck_assert_ptr_null(parse_expr_string(c, "[1, 2", err, sizeof err));
    ck_assert_str_eq(err, "']' expected (to close '[' at line 1)");
    /* a failed default leaves no diagnostic in the spec */
    ck_assert_uint_eq(flow_compile_diag_count(c), 0);
    flow_compile_free(c);
}
END_TEST

/* Random token soup and random bytes: never a crash, a hang or a leak, and
 * every failure is located. */
/* The one error of src (warnings aside): its code, line and column. */
static void expect_one(const char *src, const char *code, int line, int col)
{
    flow_compilation *c = compile(src);
    const flow_diagnostic *d;
    size_t i = 0;
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    while ((d = flow_compile_diag(c, i))->severity != FLOW_SEV_ERROR)
        i++;
    ck_assert_msg(!strcmp(d->code, code) && d->line == line && d->col == col,
                  "got %s at %d:%d (%s), want %s at %d:%d", d->code, d->line,
                  d->col, d->message, code, line, col);
    flow_compile_free(c);
}

/* Positions: a byte order mark takes no column; LF, CRLF and a lone CR
 * each end a line, also after a comment. */
START_TEST(test_line_ends_and_bom)
{
    static const char *const lines[] = {
        "// a comment", "flow f {", "  input x : real[2];",
        "  tcoupling(mask = half, hiden = [8]);", "  output z ~ normal;",
        "}"};
    static const char *const ends[] = {"\n", "\r\n", "\r"};
    char src[512];
    for (int e = 0; e < 3; e++) {
        src[0] = '\0';
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
            strcat(src, lines[i]);
            strcat(src, ends[e]);
        }
        expect_one(src, "F0103", 4, 26);
    }
    expect_one("\xEF\xBB\xBF" "flow f { input x : real[2]; tcoupling(mask "
               "= half, hiden = 1); output z ~ normal; }", "F0103", 1, 52);
    expect_one("flow f { input x : real[2]; \xEF\xBB\xBF }", "F0003", 1, 29);
}
END_TEST

/* Latent names apart from each other, the input and the context; an exit
 * in a repeat; a conditional base; an unclosed repeat named with the
 * statement that cannot be inside it. */
START_TEST(test_latent_names_and_unclosed)
{
    flow_compilation *c;
    expect_one("flow f {\n  input x : real[4];\n  exit 1 -> x ~ normal;\n"
               "  output z ~ normal;\n}\n", "F0101", 3, 13);
    expect_one("flow f {\n  input x : real[4];\n  context c : real[1];\n"
               "  tcoupling(mask = half) given c;\n  output c ~ normal;\n}\n",
               "F0101", 5, 10);
    expect_one("flow f {\n  input x : real[4];\n  exit 1 -> a ~ normal;\n"
               "  output a ~ normal;\n}\n", "F0101", 4, 10);
    c = compile("flow f {\n  input x : real[8];\n  repeat 3 {\n"
                "    exit 1 -> y ~ normal;\n  }\n  output z ~ normal;\n}\n");
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    ck_assert_str_eq(flow_compile_diag(c, 0)->message, "exit name 'y' is "
                     "given again by the same statement (in a repeat, or a "
                     "block called more than once)");
    flow_compile_free(c);
    expect_one("flow f {\n  input x : real[4];\n  context c : real[1];\n"
               "  tcoupling(mask = half) given c;\n"
               "  output z ~ diag_normal given c;\n}\n", "F0305", 5, 32);
    c = compile("flow f {\n  input x : real[4];\n  repeat 2 {\n"
                "    tcoupling(mask = half);\n  train { lr = 0.1; }\n"
                "  output z ~ normal;\n}\n");
    ck_assert_uint_eq(flow_compile_diag_count(c), 1);
    ck_assert_str_eq(flow_compile_diag(c, 0)->message, "'}' expected (to "
                     "close 'repeat' at line 3) before 'train'");
    ck_assert_int_eq(flow_compile_diag(c, 0)->line, 5);
    flow_compile_free(c);
    /* the block's '}' sits under `block`: it closed the block, and the
     * brace missing is the flow's, at the end of the file */
    c = compile("block b() {\n  output z ~ normal;\n}\nflow f {\n"
                "  input x : real[4];\n  b();\n  output z ~ normal;\n");
    ck_assert_uint_eq(flow_compile_diag_count(c), 1);
    ck_assert_str_eq(flow_compile_diag(c, 0)->message, "'}' expected (to "
                     "close 'flow' at line 4)");
    ck_assert_int_eq(flow_compile_diag(c, 0)->line, 8);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_garbage_never_crashes)
{
    static const char *const toks[] = {
        "flow", "f", "{", "}", "(", ")", "[", "]", ";", ",", "=", "input",
        "x", ":", "real", "4", "repeat", "as", "i", "block", "b", "const",
        "tcoupling", "mask", "half", "output", "z", "~", "normal", "exit",
        "->", "given", "c", "\"s", "1e9", "-", "%", "/", "*", "+", "train",
        "import", "\"nowhere.flow\"", "context", "in", "\n", "\xff", "#",
        "/*", "9999999999999999999999", "tmaf", "order"};
    uint64_t s = 12345;
    char buf[512];
    for (int iter = 0; iter < 400; iter++) {
        size_t len = 0;
        flow_compilation *c;
        int ntok;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ntok = (int)((s >> 33) % 60);
        for (int k = 0; k < ntok; k++) {
            const char *t;
            size_t tl;
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            if (iter % 4 == 3) {                 /* raw bytes */
                buf[len++] = (char)(s >> 56);
                continue;
            }
            t = toks[(s >> 33) % (sizeof toks / sizeof toks[0])];
            tl = strlen(t);
            if (len + tl + 2 >= sizeof buf)
                break;
            memcpy(buf + len, t, tl);
            len += tl;
            buf[len++] = ' ';
        }
        c = flow_compile_string(ctx, "soup.flow", buf, len);
        ck_assert_ptr_nonnull(c);
        for (size_t i = 0; i < flow_compile_diag_count(c); i++) {
            const flow_diagnostic *d = flow_compile_diag(c, i);
            ck_assert_msg(d->code[0] == 'F' && strlen(d->code) == 5,
                          "bad code %s", d->code);
            ck_assert_ptr_nonnull(d->message);
        }
        ck_assert_msg(flow_compile_graph(c) != NULL
                      || flow_compile_errors(c) > 0,
                      "iteration %d: neither a graph nor an error", iter);
        flow_compile_free(c);
    }
}
END_TEST

/* A spec tree on disk: DIR/a.flow imports lib/d.flow and sub/b.flow;
 * sub/b.flow imports ../lib/d.flow, the same file by another path. */
static void write_tree(const char *dir)
{
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/lib", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    write_file(dir, "lib/d.flow", "const D = 3;\n");
    write_file(dir, "sub/b.flow", "import \"../lib/d.flow\";\n"
               "const B = D + 1;\n");
    write_file(dir, "a.flow", "import \"lib/d.flow\";\n"
               "import \"sub/b.flow\";\n"
               "flow a { input x : real[B]; tmaf(hidden = [D, B]);\n"
               "output z ~ normal; }\n");
}

static void remove_tree(const char *dir)
{
    static const char *const names[] = {"lib/d.flow", "sub/b.flow",
                                        "a.flow", "lib", "sub", NULL};
    char path[4096];
    for (int i = 0; names[i]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        remove(path);
    }
    remove(dir);
}

/* The spec files of a compilation (the table a checkpoint embeds) compile
 * again from memory alone, after the files on disk are gone, to the same
 * graph; the second path of the diamond is recorded as an alias. */
START_TEST(test_compile_from_memory)
{
    char dir[] = "/tmp/flowc-test-XXXXXX", path[4096], alias[4096];
    flow_compilation *c, *m;
    flow_spec_file f[3];
    const flow_graph *g;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    write_tree(dir);
    snprintf(path, sizeof path, "%s/a.flow", dir);
    c = flow_compile_file(ctx, path);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(flow_compile_diag_count(c), 0);
    g = flow_compile_graph(c);
    ck_assert_uint_eq(flow_graph_spec_file_count(g), 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(flow_graph_spec_file(g, i, &f[i]), FLOW_OK);
    ck_assert_int_eq(flow_graph_spec_file(g, 3, &f[0]), FLOW_ERR_INVAL);
    ck_assert_int_eq(flow_graph_spec_file(g, 0, &f[0]), FLOW_OK);
    ck_assert_str_eq(f[0].path, path);
    ck_assert_ptr_null(f[0].import);
    ck_assert_str_eq(f[1].import, "lib/d.flow");
    ck_assert_str_eq(f[2].import, "sub/b.flow");
    snprintf(alias, sizeof alias, "%s/sub/../lib/d.flow", dir);
    ck_assert_uint_eq(f[1].n_aliases, 1);
    ck_assert_str_eq(f[1].aliases[0], alias);
    ck_assert_uint_eq(f[2].n_aliases, 0);
    remove_tree(dir);
    /* served from memory only: the directory is gone */
    f[0].name = "m.ckpt[a.flow]";
    f[1].name = "m.ckpt[lib/d.flow]";
    m = flow_compile_sources(ctx, f, 3, NULL);
    ck_assert_ptr_nonnull(m);
    if (flow_compile_diag_count(m))
        flow_compile_print_diags(m, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_diag_count(m), 0);
    g = flow_compile_graph(m);
    ck_assert_uint_eq(flow_graph_input_dim(g), 4);
    ck_assert_int_eq(flow_graph_node_get(g, 0)->attrs[1].ilist[0], 3);
    ck_assert_int_eq(flow_graph_node_get(g, 0)->attrs[1].ilist[1], 4);
    ck_assert_str_eq(flow_graph_node_get(g, 0)->file, "m.ckpt[a.flow]");
    ck_assert_uint_eq(flow_graph_spec_file_count(g), 3);
    flow_compile_free(m);
    /* without the alias, sub/b.flow's import names no embedded file */
    f[1].n_aliases = 0;
    f[2].name = "m.ckpt[sub/b.flow]";
    m = flow_compile_sources(ctx, f, 3, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_null(flow_compile_graph(m));
    {
        const flow_diagnostic *d = flow_compile_diag(m, 0);
        char want[8192];
        snprintf(want, sizeof want, "cannot import '../lib/d.flow': %s is "
                 "not among the embedded source files", alias);
        ck_assert_str_eq(d->code, "F0010");
        ck_assert_str_eq(d->file, "m.ckpt[sub/b.flow]");
        ck_assert_int_eq(d->line, 1);
        ck_assert_int_eq(d->col, 8);
        ck_assert_str_eq(d->message, want);
    }
    flow_compile_free(m);
    flow_compile_free(c);
    /* an empty table is an error, not a crash */
    m = flow_compile_sources(ctx, f, 0, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(flow_compile_errors(m), 1);
    flow_compile_free(m);
}
END_TEST

/* Only .flow files are imported: an import of another file is refused at
 * the import statement before the file is read, so its lines never show
 * up in a diagnostic. */
START_TEST(test_import_only_flow_files)
{
    char dir[] = "/tmp/flowc-test-XXXXXX", path[4096], buf[4096];
    flow_compilation *c;
    const flow_diagnostic *d;
    FILE *out;
    size_t n;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    write_file(dir, "secret.txt", "root:x:0:0:root:/root:/bin/sh\n");
    write_file(dir, "a.flow", "import \"secret.txt\";\n"
               "flow a { input x : real[2]; output z ~ normal; }\n");
    snprintf(path, sizeof path, "%s/a.flow", dir);
    c = flow_compile_file(ctx, path);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(flow_compile_diag_count(c), 1);
    d = flow_compile_diag(c, 0);
    ck_assert_str_eq(d->code, "F0010");
    ck_assert_str_eq(d->file, path);
    ck_assert_int_eq(d->line, 1);
    ck_assert_int_eq(d->col, 8);
    ck_assert_str_eq(d->message, "cannot import 'secret.txt': an imported "
                     "file must be a .flow spec");
    ck_assert_uint_eq(c->n_files, 1);         /* never read */
    ck_assert_ptr_nonnull(out = tmpfile());
    flow_compile_print_diags(c, out, FLOW_DIAG_TEXT);
    rewind(out);
    n = fread(buf, 1, sizeof buf - 1, out);
    buf[n] = '\0';
    fclose(out);
    ck_assert_msg(strstr(buf, "root:") == NULL, "diagnostic shows the "
                  "file: %s", buf);
    flow_compile_free(c);
    snprintf(path, sizeof path, "%s/secret.txt", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/a.flow", dir);
    remove(path);
    remove(dir);
}
END_TEST

/* flow_compile takes what to compile in one struct: text, a file and
 * in-memory files give the graphs the wrapper calls give; a struct_size
 * short of the required fields and a struct naming no spec are refused
 * with a message (NULL, not a compilation). */
START_TEST(test_compile_args)
{
    static const char text[] = "flow m {\n  input x : real[4];\n"
        "  tmaf(hidden = [8, 8]);\n  output z ~ normal;\n}\n";
    flow_compile_args a;
    flow_compilation *c1, *c2;
    flow_spec_file f;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.path = "m.flow";
    a.text = text;
    a.len = strlen(text);
    c1 = flow_compile(ctx, &a);
    c2 = flow_compile_string(ctx, "m.flow", text, strlen(text));
    ck_assert_ptr_nonnull(c1);
    ck_assert_ptr_nonnull(c2);
    ck_assert_uint_eq(flow_compile_errors(c1), 0);
    ck_assert_ptr_nonnull(flow_compile_graph(c1));
    ck_assert_uint_eq(flow_graph_params(flow_compile_graph(c1)),
                      flow_graph_params(flow_compile_graph(c2)));
    ck_assert_uint_eq(flow_graph_node_count(flow_compile_graph(c1)),
                      flow_graph_node_count(flow_compile_graph(c2)));
    flow_compile_free(c2);
    /* the same spec as an in-memory file */
    memset(&f, 0, sizeof f);
    f.path = "m.flow";
    f.text = text;
    f.len = strlen(text);
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.files = &f;
    a.n_files = 1;
    c2 = flow_compile(ctx, &a);
    ck_assert_ptr_nonnull(c2);
    ck_assert_uint_eq(flow_compile_errors(c2), 0);
    ck_assert_uint_eq(flow_graph_params(flow_compile_graph(c2)),
                      flow_graph_params(flow_compile_graph(c1)));
    flow_compile_free(c2);
    flow_compile_free(c1);
    /* a file that is not there: a compilation holding F0010 */
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.path = "/nonexistent/m.flow";
    c1 = flow_compile(ctx, &a);
    ck_assert_ptr_nonnull(c1);
    ck_assert_uint_eq(flow_compile_errors(c1), 1);
    ck_assert_str_eq(flow_compile_diag(c1, 0)->code, "F0010");
    flow_compile_free(c1);
    /* refused: an older, shorter struct; no spec at all */
    a.struct_size = offsetof(flow_compile_args, target);
    ck_assert_ptr_null(flow_compile(ctx, &a));
    ck_assert_msg(strstr(flow_errmsg(ctx), "struct_size") != NULL, "%s",
                  flow_errmsg(ctx));
    ck_assert_ptr_null(flow_compile(ctx, NULL));
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    ck_assert_ptr_null(flow_compile(ctx, &a));
    ck_assert_msg(strstr(flow_errmsg(ctx), "no spec given") != NULL, "%s",
                  flow_errmsg(ctx));
}
END_TEST

/* --- declarations (plugin ABI 1.5): tests/plugins/honest.c ------------ */

static void setup_honest(void)
{
    const char *dir = getenv("FLOW_TEST_PLUGINS");
    char path[4096];
    setup();
    ck_assert_msg(flow_plugin_load(ctx, "logit") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(dir != NULL, "FLOW_TEST_PLUGINS is not set (run through "
                               "make check)");
    snprintf(path, sizeof path, "%s/honest.so", dir);
    ck_assert_msg(flow_plugin_load(ctx, path) == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

/* The graph's layer i (exits count). */
static const flow_graph_node *node(flow_compilation *c, size_t i)
{
    const flow_graph *g = flow_compile_graph(c);
    ck_assert_ptr_nonnull(g);
    ck_assert_uint_lt(i, flow_graph_node_count(g));
    return flow_graph_node_get(g, i);
}

/* src compiles with exactly one diagnostic, `code`, whose message holds
 * `text`, at line `line`. */
static void expect_diag(const char *src, const char *code, int line,
                        const char *text)
{
    flow_compilation *c = compile(src);
    const flow_diagnostic *d;
    if (flow_compile_diag_count(c) != 1)
        flow_compile_print_diags(c, stderr, FLOW_DIAG_TEXT);
    ck_assert_uint_eq(flow_compile_diag_count(c), 1);
    d = flow_compile_diag(c, 0);
    ck_assert_str_eq(d->code, code);
    ck_assert_int_eq(d->line, line);
    ck_assert_msg(strstr(d->message, text) != NULL, "%s: '%s' lacks '%s'",
                  code, d->message, text);
    flow_compile_free(c);
}

/* The --report text of src (which must compile cleanly), malloc'ed. */
static char *report_of(const char *src)
{
    flow_compilation *c = compile_ok(src);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    flow_graph_print_report(flow_compile_graph(c), f);
    fclose(f);
    flow_compile_free(c);
    return buf;
}

START_TEST(test_dense_exact_declared)
{
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[3];\n"
        "  householder_scale;\n"
        "  output z ~ normal;\n"
        "}\n");
    const flow_layer_desc *d = node(c, 0)->desc;
    char *rep;
    ck_assert_int_eq(d->jac, FLOW_JAC_DENSE_EXACT);
    ck_assert_int_eq(d->dep, FLOW_DEP_DENSE);
    ck_assert_int_eq(d->cert, FLOW_CERT_STRUCTURAL);
    ck_assert_uint_eq(d->n_params, 6);
    flow_compile_free(c);
    rep = report_of("flow f {\n  input x : real[3];\n  householder_scale;\n"
                    "  output z ~ normal;\n}\n");
    ck_assert_msg(strstr(rep, "householder_scale#0 dense-exact") != NULL
                  && strstr(rep, "log-det exact, closed form by the layer"),
                  "%s", rep);
    free(rep);
}
END_TEST

START_TEST(test_dishonest_dense_refused)
{
    expect_diag("flow f {\n  input x : real[3];\n"
                "  householder_scale(declare = triangular);\n"
                "  output z ~ normal;\n}\n", "F0506", 3,
                "dense dependencies with a triangular Jacobian class; dense "
                "dependencies need the dense-exact, dense-LU, residual or "
                "ODE class");
    expect_diag("flow f {\n  input x : real[3];\n"
                "  householder_scale(declare = dense_exact_monotone);\n"
                "  output z ~ normal;\n}\n", "F0506", 3,
                "a dense-exact Jacobian class with a monotone certificate");
}
END_TEST

START_TEST(test_context_declared)
{
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[2];\n"
        "  context c : real[3];\n"
        "  cond_affine given c;\n"
        "  mono;\n"
        "  output z ~ normal;\n"
        "}\n");
    const flow_graph_node *n = node(c, 0);
    ck_assert_int_eq(n->uses_context, 1);
    ck_assert_uint_eq(n->config.context_dim, 3);
    ck_assert_uint_eq(n->desc->n_params, 2 * 2 * (3 + 1));
    ck_assert_int_eq(n->desc->dep, FLOW_DEP_ELEMENTWISE);
    ck_assert_uint_eq(n->desc->flags & FLOW_LAYER_CONTEXT,
                      FLOW_LAYER_CONTEXT);
    ck_assert_int_eq(node(c, 1)->uses_context, 0);
    flow_compile_free(c);
    expect_diag("flow f {\n  input x : real[2];\n  context c : real[3];\n"
                "  cond_affine(declare_context = false) given c;\n"
                "  output z ~ normal;\n}\n", "F0507", 4,
                "does not declare FLOW_LAYER_CONTEXT");
}
END_TEST

/* The executor hands the context to an elementwise layer that declares
 * it: z = x exp(A c + a0) + B c + b0 with parameters set by hand. */
START_TEST(test_context_reaches_elementwise_layer)
{
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[2];\n"
        "  context c : real[1];\n"
        "  cond_affine given c;\n"
        "  mono;\n"
        "  output z ~ normal;\n"
        "}\n");
    flow_model *m = NULL;
    flow_real *p;
    /* A (2x1), a0 (2), B (2x1), b0 (2) */
    static const double par[8] = {0.5, -0.25, 0.1, 0.2, 2, -1, 0.3, 0.4};
    const flow_real x[4] = {1, -2, 0.5, 3}, cv[2] = {1, -2};
    flow_real z[4], ld[2];
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(c), 1,
                                            &m), FLOW_OK);
    ck_assert_uint_eq(flow_model_num_params(m), 8 + 2);
    p = flow_model_params(m);
    for (size_t i = 0; i < 8; i++)
        p[i] = (flow_real)par[i];
    p[8] = p[9] = (flow_real)log(expm1(1.0));     /* mono: a = 0 */
    ck_assert_int_eq(flow_model_forward(m, 2, x, cv, z, ld), FLOW_OK);
    for (size_t r = 0; r < 2; r++) {
        double want_ld = 0;
        for (size_t i = 0; i < 2; i++) {
            double a = par[i] * cv[r] + par[2 + i];
            double b = par[4 + i] * cv[r] + par[6 + i];
            ck_assert_double_eq_tol(z[r * 2 + i], x[r * 2 + i] * exp(a) + b,
                                    1e-4 * (1 + fabs(b)));
            want_ld += a;
        }
        ck_assert_double_eq_tol(ld[r], want_ld, 1e-5);
    }
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

START_TEST(test_domain_against_bounds)
{
    flow_compilation *c;
    /* inside the domain, through a permutation: no diagnostic */
    c = compile_ok("flow f {\n  input x : real[2] in [0.1, 0.9];\n"
                   "  permute(order = reverse);\n  logit;\n"
                   "  output z ~ normal;\n}\n");
    ck_assert_int_eq(node(c, 1)->desc->domain, FLOW_DOMAIN_CLOSED);
    ck_assert_double_eq(node(c, 1)->desc->domain_lo, 0);
    ck_assert_double_eq(node(c, 1)->desc->domain_hi, 1);
    flow_compile_free(c);
    expect_diag("flow f {\n  input x : real[2] in [-1, 1];\n  logit;\n"
                "  output z ~ normal;\n}\n", "F0510", 3,
                "the input 'x' is declared in [-1, 1] (line 2), not inside "
                "the layer's domain [0, 1]");
    /* alpha = 0: open, so the closed unit interval is not inside */
    expect_diag("flow f {\n  input x : real[2] in [0, 1];\n"
                "  logit(alpha = 0);\n  output z ~ normal;\n}\n", "F0510", 3,
                "not inside the layer's domain (0, 1)");
    c = compile_ok("flow f {\n  input x : real[2] in [0.01, 0.99];\n"
                   "  logit(alpha = 0);\n  output z ~ normal;\n}\n");
    ck_assert_int_eq(node(c, 0)->desc->domain, FLOW_DOMAIN_OPEN);
    flow_compile_free(c);
    expect_diag("flow f {\n  input x : real[2];\n  logit;\n"
                "  output z ~ normal;\n}\n", "F0904", 3,
                "logit#0 is defined only on [0, 1], but the input 'x' "
                "declares no bounds");
    expect_diag("flow f {\n  input x : real[2] in [0, 1];\n  mono;\n"
                "  logit;\n  output z ~ normal;\n}\n", "F0904", 4,
                "its input passes through mono#0 first");
}
END_TEST

/* A declared output range (ABI 1.8) bounds the next layer's inputs when
 * the layer's own inputs are inside its domain: logit after dequantize. */
START_TEST(test_domain_through_range)
{
    flow_compilation *c;
    ck_assert_msg(flow_plugin_load(ctx, "dequantize") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    c = compile_ok("flow f {\n  input x : real[1, 2, 2] in [0, 255];\n"
                   "  dequantize(levels = 256);\n  logit(alpha = 0.05);\n"
                   "  output z ~ normal;\n}\n");
    ck_assert_int_eq(node(c, 0)->desc->range, FLOW_DOMAIN_CLOSED);
    ck_assert_double_eq(node(c, 0)->desc->domain_hi, 255);
    ck_assert_int_eq(node(c, 1)->config.has_bounds, 1);
    ck_assert_double_eq(node(c, 1)->config.lo, 0);
    ck_assert_double_eq(node(c, 1)->config.hi, 1);
    flow_compile_free(c);
    expect_diag("flow f {\n  input x : real[4] in [0, 256];\n"
                "  dequantize(levels = 256);\n  output z ~ normal;\n}\n",
                "F0510", 3, "not inside the layer's domain [0, 255]");
    /* no bounds on the data: the range promises nothing, and both
     * layers are warned about */
    c = compile("flow f {\n  input x : real[4];\n  dequantize;\n"
                "  logit;\n  output z ~ normal;\n}\n");
    ck_assert_uint_eq(flow_compile_diag_count(c), 2);
    ck_assert_str_eq(flow_compile_diag(c, 1)->code, "F0904");
    ck_assert_int_eq(flow_compile_diag(c, 1)->line, 4);
    ck_assert_msg(strstr(flow_compile_diag(c, 1)->message, "passes through "
                         "dequantize#0") != NULL, "%s",
                  flow_compile_diag(c, 1)->message);
    flow_compile_free(c);
    /* nor after a layer that moves the values again */
    expect_diag("flow f {\n  input x : real[2] in [0, 15];\n"
                "  dequantize(levels = 16);\n  mono;\n  logit;\n"
                "  output z ~ normal;\n}\n", "F0904", 5,
                "its input passes through mono#1 first");
}
END_TEST

/* Every row's jacobian column starts where the header's does, however
 * long the labels. */
START_TEST(test_report_sizes_layer_column)
{
    char *rep = report_of(
        "flow f {\n"
        "  input x : real[2];\n"
        "  repeat 11 as i { householder_scale; }\n"
        "  output z ~ normal;\n"
        "}\n");
    const char *line = strchr(rep, '\n') + 1, *head = strstr(line, "jacobian");
    long col = head - line;
    size_t rows = 0;
    ck_assert_ptr_nonnull(head);
    ck_assert_int_eq(col, 6 + (long)strlen("householder_scale#10") + 1);
    while ((line = strchr(line, '\n')) && line[1] && strncmp(line + 1,
                                                             "total", 5)) {
        const char *j = strstr(++line, "dense-exact");
        if (!j)
            j = strstr(line, "base");
        ck_assert_msg(j && j - line == col, "column %ld, want %ld: %.60s",
                      j ? (long)(j - line) : -1L, col, line);
        rows++;
    }
    ck_assert_uint_eq(rows, 12);
    free(rep);
}
END_TEST

/* --- shapes ------------------------------------------------------------ */

static void setup_shapes(void)
{
    setup();
    ck_assert_msg(flow_plugin_load(ctx, "squeeze") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    ck_assert_msg(flow_plugin_load(ctx, "actnorm") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
}

static void assert_shape(size_t rank, const size_t *shape, size_t want_rank,
                         size_t c, size_t h, size_t w, const char *what)
{
    ck_assert_msg(rank == want_rank, "%s: rank %zu, want %zu", what, rank,
                  want_rank);
    ck_assert_msg(shape[0] == c && (rank < 3 || (shape[1] == h
                                                 && shape[2] == w)),
                  "%s: [%zu, %zu, %zu], want [%zu, %zu, %zu]", what,
                  shape[0], rank > 1 ? shape[1] : 0, rank > 2 ? shape[2] : 0,
                  c, h, w);
}

/* The input's shape reaches every layer's config; squeeze declares
 * [C*4, H/2, W/2] and the next layers receive it; an exit takes whole
 * channels; actnorm counts one scale and shift per channel. */
START_TEST(test_shapes_propagate)
{
    flow_compilation *c = compile_ok(
        "flow f {\n"
        "  input x : real[2, 4, 4];\n"
        "  actnorm;\n"
        "  squeeze(factor = 2);\n"
        "  actnorm;\n"
        "  tcoupling(mask = parity(0));\n"
        "  exit 3 -> z1 ~ normal;\n"
        "  permute(order = reverse);\n"
        "  output z ~ normal;\n"
        "}\n");
    const flow_graph *g = flow_compile_graph(c);
    const flow_graph_node *n;
    size_t shape[4];
    /* z[o] = x[perm[o]]: channel c*4 + i*2 + j at (h, w) is input
     * (c, 2h + i, 2w + j), flat C order */
    static const int32_t perm16[16] = {0, 2, 8, 10, 1, 3, 9, 11,
                                       4, 6, 12, 14, 5, 7, 13, 15};

    assert_shape(flow_graph_input_shape(g, shape), shape, 3, 2, 4, 4,
                 "input");
    ck_assert_uint_eq(flow_graph_input_dim(g), 32);
    n = node(c, 0);
    assert_shape(n->config.rank, n->config.shape, 3, 2, 4, 4, "actnorm#0");
    ck_assert_uint_eq(n->desc->n_params, 4);
    n = node(c, 1);
    assert_shape(n->in_rank, n->in_shape, 3, 2, 4, 4, "squeeze in");
    assert_shape(n->out_rank, n->out_shape, 3, 8, 2, 2, "squeeze out");
    ck_assert_int_eq(n->desc->dep, FLOW_DEP_PERMUTATION);
    assert_vec(n->desc->dep_vec, perm16, 16);
    ck_assert_int_eq(n->desc->dep_vec[16], 16);   /* channel 1 begins */
    n = node(c, 2);
    assert_shape(n->config.rank, n->config.shape, 3, 8, 2, 2, "actnorm#2");
    ck_assert_uint_eq(n->desc->n_params, 16);
    n = node(c, 4);
    ck_assert_int_eq(n->kind, FLOW_NODE_EXIT);
    ck_assert_uint_eq(n->exit_k, 12);            /* 3 channels of 2x2 */
    assert_shape(n->out_rank, n->out_shape, 3, 5, 2, 2, "exit out");
    n = node(c, 5);
    ck_assert_uint_eq(n->in_dim, 20);
    assert_shape(n->config.rank, n->config.shape, 3, 5, 2, 2, "permute");
    ck_assert_uint_eq(flow_graph_output_dim(g), 20);
    flow_compile_free(c);

    /* a vector is rank 1 everywhere, and a flat exit counts values */
    c = compile_ok("flow f {\n  input x : real[6];\n  actnorm;\n"
                   "  exit 2 -> z1 ~ normal;\n  permute;\n"
                   "  output z ~ normal;\n}\n");
    g = flow_compile_graph(c);
    assert_shape(flow_graph_input_shape(g, shape), shape, 1, 6, 1, 1,
                 "vector input");
    n = node(c, 0);
    assert_shape(n->config.rank, n->config.shape, 1, 6, 1, 1, "actnorm");
    ck_assert_uint_eq(n->desc->n_params, 12);
    ck_assert_uint_eq(node(c, 1)->exit_k, 2);
    assert_shape(node(c, 2)->config.rank, node(c, 2)->config.shape, 1, 4, 1,
                 1, "after the exit");
    flow_compile_free(c);
}
END_TEST

/* Located errors: the input's rank, an exit that does not fit the
 * channels, squeeze's factor (at the attribute) and input (at the layer),
 * a plugin's output shape that changes the volume. */
START_TEST(test_shape_errors)
{
    flow_compilation *c;
    const flow_diagnostic *d;
    expect_diag("flow f {\n  input x : real[4, 4];\n  output z ~ normal;\n"
                "}\n", "F0306", 2, "rank 2");
    expect_diag("flow f {\n  input x : real[2, 4, 4];\n"
                "  exit 2 -> z1 ~ normal;\n  output z ~ normal;\n}\n",
                "F0302", 3, "has 2 channels");
    expect_diag("flow f {\n  input x : real[1, 4, 4];\n"
                "  exit 1 -> z1 ~ normal;\n  output z ~ normal;\n}\n",
                "F0302", 3, "has 1 channel here");
    expect_diag("flow f {\n  input x : real[8];\n  squeeze;\n"
                "  output z ~ normal;\n}\n", "F0207", 3,
                "needs an image input");
    expect_diag("flow f {\n  input x : real[2, 2, 2];\n"
                "  tbroken(mode = bad_shape);\n  output z ~ normal;\n}\n",
                "F0511", 3, "holds 16 values");
    expect_diag("flow f {\n  input x : real[3, 300, 300];\n"
                "  output z ~ normal;\n}\n", "F0400", 2, "exceeds the limit");
    c = compile("flow f {\n  input x : real[1, 6, 4];\n"
                "  squeeze(factor = 3);\n  output z ~ normal;\n}\n");
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    d = flow_compile_diag(c, 0);
    ck_assert_str_eq(d->code, "F0207");
    ck_assert_int_eq(d->line, 3);
    ck_assert_int_eq(d->col, 11);               /* factor = 3 */
    ck_assert_int_eq(d->end_col, 20);
    flow_compile_free(c);
}
END_TEST

/* The coupling's image masks and conv conditioner: located at the
 * attribute that cannot hold (mask on a flat input, a conv net on a flat
 * mask), with the message naming the shape and a help line. */
static void expect_located(const char *src, int line, int col,
                           int end_col, const char *text)
{
    flow_compilation *c = compile(src);
    const flow_diagnostic *d;
    ck_assert_uint_eq(flow_compile_errors(c), 1);
    d = flow_compile_diag(c, 0);
    ck_assert_str_eq(d->code, "F0207");
    ck_assert_int_eq(d->line, line);
    ck_assert_int_eq(d->col, col);
    ck_assert_int_eq(d->end_col, end_col);
    ck_assert_msg(strstr(d->message, text) != NULL, "'%s' lacks '%s'",
                  d->message, text);
    ck_assert_ptr_nonnull(d->help);
    flow_compile_free(c);
}

START_TEST(test_coupling_image_errors)
{
    ck_assert_msg(flow_plugin_load(ctx, "coupling") == FLOW_OK, "%s",
                  flow_errmsg(ctx));
    /* 3:12..25 is `mask = channel` */
    expect_located("flow f {\n  input x : real[6];\n"
                   "  coupling(mask = channel);\n  output z ~ normal;\n}\n",
                   3, 12, 25, "mask channel needs an image input [C, H, W]; "
                   "this input is [6]");
    /* 3:30..39 is `net = conv` */
    expect_located("flow f {\n  input x : real[2, 4, 4];\n"
                   "  coupling(mask = parity(0), net = conv);\n"
                   "  output z ~ normal;\n}\n", 3, 30, 39,
                   "net = conv needs mask = channel or checkerboard");
    expect_located("flow f {\n  input x : real[1, 4, 4];\n"
                   "  coupling(mask = channel(1));\n  output z ~ normal;\n"
                   "}\n", 3, 12, 28, "mask channel needs at least 2 "
                   "channels; this input is [1, 4, 4]");
    expect_located("flow f {\n  input x : real[2, 4, 4];\n"
                   "  coupling(mask = checkerboard, net = conv(kernel = 1));"
                   "\n  output z ~ normal;\n}\n", 3, 33, 54,
                   "cannot see the conditioning pixels");
}
END_TEST

/* The report gets a shape column for images; the model built from the
 * graph has the same widths and computes a finite density. */
START_TEST(test_shapes_report_and_model)
{
    const char *src =
        "flow f {\n  input x : real[2, 4, 4];\n  squeeze;\n"
        "  actnorm;\n  exit 4 -> z1 ~ normal;\n  output z ~ normal;\n}\n";
    char *r = report_of(src);
    flow_compilation *c;
    flow_model *m = NULL;
    flow_real x[64], lp[2];
    ck_assert_msg(strstr(r, "input x real[2, 4, 4]") != NULL, "%s", r);
    ck_assert_msg(strstr(r, "2x4x4 -> 8x2x2") != NULL, "%s", r);
    ck_assert_msg(strstr(r, "8x2x2 -> 4x2x2") != NULL, "%s", r);
    free(r);
    r = report_of("flow f {\n  input x : real[3];\n  actnorm;\n"
                  "  output z ~ normal;\n}\n");
    ck_assert_msg(strstr(r, "shape") == NULL, "flat flows keep their "
                  "report: %s", r);
    free(r);
    c = compile_ok(src);
    ck_assert_int_eq(flow_graph_build_model(ctx, flow_compile_graph(c), 3,
                                            &m), FLOW_OK);
    ck_assert_uint_eq(flow_model_dim(m), 32);
    for (size_t i = 0; i < 64; i++)
        x[i] = (flow_real)((double)i / 64.0 - 0.5);
    ck_assert_int_eq(flow_model_log_prob(m, 2, x, NULL, lp), FLOW_OK);
    /* actnorm starts as the identity and squeeze is a permutation: the
     * density is the standard normal's of the values, in any order */
    for (size_t r2 = 0; r2 < 2; r2++) {
        double want = 0;
        for (size_t i = 0; i < 32; i++)
            want += -0.5 * x[r2 * 32 + i] * x[r2 * 32 + i]
                    - 0.5 * log(2 * M_PI);
        ck_assert_double_eq_tol(lp[r2], want, 1e-4);
    }
    flow_model_free(m);
    flow_compile_free(c);
}
END_TEST

Suite *suite_compiler(void)
{
    Suite *s = suite_create("compiler");
    TCase *tc = tcase_create("front_end");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_expansion_and_dep_vecs);
    tcase_add_test(tc, test_params_and_costs);
    tcase_add_test(tc, test_exits_and_train);
    tcase_add_test(tc, test_diagnostic_fields);
    tcase_add_test(tc, test_diagnostic_rendering);
    tcase_add_test(tc, test_warnings_keep_graph);
    tcase_add_test(tc, test_untransformed_tracking);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_imports_diamond);
    tcase_add_test(tc, test_imports_in_source_order);
    tcase_add_test(tc, test_compile_from_memory);
    tcase_add_test(tc, test_import_only_flow_files);
    tcase_add_test(tc, test_edit_distance_and_suggest);
    tcase_add_test(tc, test_arena);
    tcase_add_test(tc, test_parse_expr_default);
    tcase_add_test(tc, test_garbage_never_crashes);
    tcase_add_test(tc, test_line_ends_and_bom);
    tcase_add_test(tc, test_latent_names_and_unclosed);
    suite_add_tcase(s, tc);
    tc = tcase_create("declarations");
    tcase_add_checked_fixture(tc, setup_honest, teardown);
    tcase_add_test(tc, test_dense_exact_declared);
    tcase_add_test(tc, test_dishonest_dense_refused);
    tcase_add_test(tc, test_context_declared);
    tcase_add_test(tc, test_context_reaches_elementwise_layer);
    tcase_add_test(tc, test_domain_against_bounds);
    tcase_add_test(tc, test_domain_through_range);
    tcase_add_test(tc, test_report_sizes_layer_column);
    suite_add_tcase(s, tc);
    tc = tcase_create("shapes");
    tcase_add_checked_fixture(tc, setup_shapes, teardown);
    tcase_add_test(tc, test_shapes_propagate);
    tcase_add_test(tc, test_shape_errors);
    tcase_add_test(tc, test_coupling_image_errors);
    tcase_add_test(tc, test_shapes_report_and_model);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_compile_args);
    suite_add_tcase(s, tc);
    return s;
}
