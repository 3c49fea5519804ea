/* fuzz_targets.c - libFuzzer entry points for the parsers of untrusted
 * input: the spec compiler (parse + verify), the CSV, NPY and IDX readers
 * (gzip'd or not), and the checkpoint reader.  Built by tests/fuzz/run.sh
 * with one of -DFUZZ_SPEC, -DFUZZ_CSV, -DFUZZ_NPY, -DFUZZ_IDX, -DFUZZ_CKPT,
 * -DFUZZ_CKPT_FIXED; see tests/fuzz/README.md.
 *
 * Every input is a plain file of its kind, so a crash file reproduces with
 * the flowkit program itself (for ckpt_fixed: the input with its checksums
 * repaired, which FUZZ_KEEP=PATH leaves at PATH).  The data targets pick
 * the reader options from the input's size (size % 4: none, --columns 0
 * --context 1, --columns x0,x1, an expected dimension of 2) so the column
 * selection code is fuzzed too. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flow/flowc.h"
#include "checkpoint.h"
#include "data.h"
#include "fileio.h"

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

#if defined(FUZZ_CKPT) || defined(FUZZ_CKPT_FIXED)
/* Reads the checkpoint at path again as standard input ("-"), which is
 * read as a stream, only as far as the header's length and tensors say:
 * 1 accepted, 0 refused (why in msg), -1 not tried.  Standard input is
 * put back afterwards. */
static int read_as_stream(const char *path, char *msg, size_t cap)
{
    int fd = open(path, O_RDONLY), saved = dup(STDIN_FILENO), ok = -1;
    ckpt *ck = NULL;
    if (fd >= 0 && saved >= 0 && dup2(fd, STDIN_FILENO) >= 0) {
        ok = ckpt_read(ctx, "-", &ck) == FLOW_OK;
        snprintf(msg, cap, "%s", ok ? "accepted" : flow_errmsg(ctx));
        ckpt_free(ck);
        dup2(saved, STDIN_FILENO);
    }
    if (fd >= 0)
        close(fd);
    if (saved >= 0)
        close(saved);
    return ok;
}
#endif

#if defined(FUZZ_CKPT_FIXED)
/* The 8 hex digits that follow the first `"KEY":"crc32c:` in the n bytes
 * at h, or NULL.  The writer emits both checksum fields in this compact
 * form, and the format promises to keep the header checksum's
 * (docs/formats.md). */
static unsigned char *crc_digits(unsigned char *h, size_t n, const char *key)
{
    char pat[64];
    size_t k = (size_t)snprintf(pat, sizeof pat, "\"%s\":\"crc32c:", key);
    for (size_t i = 0; i + k + 8 <= n; i++)
        if (h[i] == '"' && !memcmp(h + i, pat, k))
            return h + i + k;
    return NULL;
}

static void put_hex(unsigned char *at, uint32_t crc)
{
    char hex[9];
    snprintf(hex, sizeof hex, "%08" PRIx32, crc);
    memcpy(at, hex, 8);
}

/* Makes both checksums of a checkpoint right again after mutation, as the
 * writer computes them: the data checksum over everything after the
 * header, then the header checksum over the header's N bytes with its own
 * digits as "00000000".  The header's extent comes from the length field
 * alone, so new header fields need nothing here; an input whose length
 * field does not fit, or that lacks a field, keeps its bytes and is
 * refused by the reader as it is. */
static void repair(unsigned char *d, size_t size)
{
    unsigned char *h = d + 8, *at;
    uint64_t n;
    if (size < 8 || (n = fio_get_le(d, 8)) > size - 8)
        return;
    if ((at = crc_digits(h, (size_t)n, "data_checksum")))
        put_hex(at, fio_crc32c(0, h + n, size - 8 - (size_t)n));
    if ((at = crc_digits(h, (size_t)n, "header_checksum"))) {
        memset(at, '0', 8);
        put_hex(at, fio_crc32c(0, h, (size_t)n));
    }
}

/* What loading a checkpoint does after reading it (cli/common.c,
 * cli_load_checkpoint; train/fit --resume for the trainer): compiles the
 * embedded spec and imports (and nothing from disk) with the stored
 * target, builds the model and restores parameters, buffers, RNG and,
 * when stored, the training state into a trainer over a few rows of
 * zeros.  Opening verifies the sources against spec_hash: mutated spec
 * text is the spec target's business, and a spec that does not match its
 * hash is not the one the parameters were trained for. */
static void restore(const char *path)
{
    static const flow_real zeros[64 * 8];
    const flow_spec_file *files;
    flow_checkpoint *fc = NULL;
    flow_compilation *comp = NULL;
    flow_model *m = NULL;
    flow_trainer *t = NULL;
    flow_train_config cfg;
    const flow_graph *g;
    size_t nf;
    if (flow_checkpoint_open(ctx, path, &fc) != FLOW_OK)
        goto out;
    files = flow_checkpoint_sources(fc, &nf);
    comp = flow_compile_sources(ctx, files, nf,
                                flow_checkpoint_meta(fc, "target"));
    if (!comp || flow_compile_errors(comp) || !(g = flow_compile_graph(comp))
        || flow_graph_build_model(ctx, g, 0, &m) != FLOW_OK)
        goto out;
    if (!flow_checkpoint_has_training(fc)
        || flow_model_dim(m) > 8 || flow_model_context_dim(m) > 8) {
        flow_checkpoint_restore(fc, m, NULL);
        goto out;
    }
    flow_train_config_default(&cfg);
    cfg.batch = 8;
    if ((t = flow_trainer_new(m, &cfg, zeros, flow_model_context_dim(m)
                              ? zeros : NULL, 64)))
        flow_checkpoint_restore(fc, m, t);
out:
    flow_trainer_free(t);
    flow_model_free(m);
    flow_compile_free(comp);
    flow_checkpoint_free(fc);
}
#endif

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
#elif defined(FUZZ_CSV) || defined(FUZZ_NPY) || defined(FUZZ_IDX)
    {
        static const char magic[6] = "\x93NUMPY";
        int is_npy = size >= 6 && !memcmp(data, magic, 6);
        /* IDX (two zero bytes) and gzip (1f 8b, whatever it holds) */
        int is_idx = size >= 2 && ((data[0] == 0 && data[1] == 0)
                                   || (data[0] == 0x1f && data[1] == 0x8b));
        FILE *f;
        flow_data *d = NULL;
        data_opts o;
# if defined(FUZZ_CSV)
        if (is_npy || is_idx)   /* the NPY and IDX targets' business */
            return 0;
# elif defined(FUZZ_NPY)
        if (!is_npy)  /* the CSV and IDX targets' business */
            return 0;
# else
        if (!is_idx)  /* the CSV and NPY targets' business */
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
        if (data_read_stream(ctx, is_npy ? "fuzz.npy" : !is_idx ? "fuzz.csv"
                             : data[0] ? "fuzz.gz" : "fuzz.idx", f, &o, &d)
            == FLOW_OK)
            flow_data_free(d);
        fclose(f);
    }
#elif defined(FUZZ_CKPT) || defined(FUZZ_CKPT_FIXED)
    {
        /* the file and the same bytes on standard input must be accepted
         * or refused alike (docs/formats.md: the same checks in the same
         * order); a difference aborts, so it is a finding */
        const char *keep = getenv("FUZZ_KEEP");
        char path[4096], as_file[512], as_stream[512];
        unsigned char *copy;
        FILE *f;
        ckpt *ck = NULL;
        int ok, stream_ok;
        if (!(copy = malloc(size ? size : 1)))
            return 0;
        memcpy(copy, data, size);
# if defined(FUZZ_CKPT_FIXED)
        repair(copy, size);
# endif
        snprintf(path, sizeof path, "/tmp/fuzz-ckpt-%ld", (long)getpid());
        if (keep && *keep)
            snprintf(path, sizeof path, "%s", keep);
        if ((f = fopen(path, "wb"))) {
            fwrite(copy, 1, size, f);
            fclose(f);
            ok = ckpt_read(ctx, path, &ck) == FLOW_OK;
            snprintf(as_file, sizeof as_file, "%s",
                     ok ? "accepted" : flow_errmsg(ctx));
            if (ok) {
# if defined(FUZZ_CKPT_FIXED)
                restore(path);
# endif
                ckpt_free(ck);
            }
            stream_ok = read_as_stream(path, as_stream, sizeof as_stream);
            if (stream_ok >= 0 && stream_ok != ok) {
                fprintf(stderr, "fuzz: the checkpoint as a file: %s; as "
                        "standard input: %s\n", as_file, as_stream);
                abort();
            }
            if (!keep || !*keep)
                unlink(path);
        }
        free(copy);
    }
#else
# error "define FUZZ_SPEC, FUZZ_CSV, FUZZ_NPY, FUZZ_IDX, FUZZ_CKPT or FUZZ_CKPT_FIXED"
#endif
    return 0;
}
