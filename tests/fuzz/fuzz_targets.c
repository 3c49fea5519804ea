/* fuzz_targets.c - libFuzzer entry points for the parsers of untrusted
 * input: the spec compiler (parse + verify), the CSV and NPY readers, and
 * the checkpoint reader.  Built by tests/fuzz/run.sh with one of
 * -DFUZZ_SPEC, -DFUZZ_DATA, -DFUZZ_CKPT; see tests/fuzz/README.md. */
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
#elif defined(FUZZ_DATA)
    {
        FILE *f = fmemopen((void *)data, size, "r");
        flow_data *d = NULL;
        if (f && size) {
            data_opts o;
            memset(&o, 0, sizeof o);
            if (data_read_stream(ctx, "fuzz.csv", f, &o, &d) == FLOW_OK)
                flow_data_free(d);
        }
        if (f)
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
# error "define FUZZ_SPEC, FUZZ_DATA or FUZZ_CKPT"
#endif
    return 0;
}
