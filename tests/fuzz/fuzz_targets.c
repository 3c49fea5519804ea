/* fuzz_targets.c - libFuzzer entry points for the parsers of untrusted
 * input: the spec compiler (parse + verify), the CSV and NPY readers, and
 * the checkpoint reader.  Built by tests/fuzz/run.sh with one of
 * -DFUZZ_SPEC, -DFUZZ_CSV, -DFUZZ_NPY, -DFUZZ_CKPT; see tests/fuzz/README.md.
 *
 * Every input is a plain file of its kind, so a crash file reproduces with
 * the flowkit program itself.  The data targets pick the reader options from
 * the input's size (size % 4: none, --columns 0 --context 1, --columns
 * x0,x1, an expected dimension of 2) so the column selection code is
 * fuzzed too. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow/flowc.h"
#include "checkpoint.h"
#include "data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static flow_ctx *ctx;

static void init_once(void)
{
    if (ctx)
        return;
    ctx = flow_ctx_new();
    if (!ctx || flow_plugin_load_all(ctx) != FLOW_OK) {
        fprintf(stderr, "fuzz: cannot load plugins: %s\n",
                ctx ? flow_errmsg(ctx) : "out of memory");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
#if defined(FUZZ_SPEC)
    {
        flow_compilation *c = flow_compile_string(ctx, "fuzz.flow",
                                                  (const char *)data, size);
        if (c) {
            /* everything the graph hands out must be readable */
            const flow_graph *g = flow_compile_graph(c);
            if (g) {
                FILE *null = fopen("/dev/null", "w");
                flow_graph_print_json(g, null);
                flow_graph_print_report(g, null);
                fclose(null);
            }
            flow_compile_free(c);
        }
    }
#elif defined(FUZZ_CSV) || defined(FUZZ_NPY)
    {
        static const char magic[6] = "\x93NUMPY";
        int is_npy = size >= 6 && !memcmp(data, magic, 6);
        FILE *f;
        flow_data *d = NULL;
        data_opts o;
# if defined(FUZZ_CSV)
        if (is_npy)   /* the NPY target's business */
            return 0;
# else
        if (!is_npy)  /* the CSV target's business */
            return 0;
# endif
        if (!size || !(f = fmemopen((void *)data, size, "r")))
            return 0;
        memset(&o, 0, sizeof o);
        switch (size % 4) {
        case 1: o.columns = "0"; o.context = "1"; break;
        case 2: o.columns = "x0,x1"; break;
        case 3: o.expect_dim = 2; break;
        default: break;
        }
        if (data_read_stream(ctx, is_npy ? "fuzz.npy" : "fuzz.csv", f, &o,
                             &d) == FLOW_OK)
            flow_data_free(d);
        fclose(f);
    }
#elif defined(FUZZ_CKPT)
    {
        char path[64];
        FILE *f;
        ckpt *ck = NULL;
        snprintf(path, sizeof path, "/tmp/fuzz-ckpt-%ld", (long)getpid());
        if ((f = fopen(path, "wb"))) {
            fwrite(data, 1, size, f);
            fclose(f);
            if (ckpt_read(ctx, path, &ck) == FLOW_OK)
                ckpt_free(ck);
            unlink(path);
        }
    }
#else
# error "define FUZZ_SPEC, FUZZ_CSV, FUZZ_NPY or FUZZ_CKPT"
#endif
    return 0;
}
