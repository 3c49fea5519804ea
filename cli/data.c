/* data.c - `flowkit data`: samples of the built-in data sets
 * (docs/formats.md) written as CSV or NPY.  Exit codes: 0 success, 1
 * error, 2 usage. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "help.h"

static void data_usage(FILE *f)
{
    fputs("usage: flowkit data NAME -n N [--seed S] [--with-logprob] "
          "[--labels]\n"
          "                    [-o FILE|-] [--format csv|npy] [--no-header]\n"
          "                    [--dim D] [--components K] [--means-seed M]\n"
          "                    [--size S]\n"
          "       flowkit data --list\n"
          "\n"
          "Draws N samples of a built-in data set (docs/formats.md) and\n"
          "writes them as CSV (default, with a header row) or NPY to FILE\n"
          "or stdout.\n"
          "\n"
          "  -n N             number of samples (required)\n"
          "  --seed S         random seed (default 0): same seed, same bits\n"
          "  --with-logprob   append the true log-density (nats) as a last\n"
          "                   column; 8gaussians, checkerboard and gmm only\n"
          "  --labels         8gaussians: append the component index as 8\n"
          "                   one-hot columns label0..label7 (context for\n"
          "                   conditional models)\n"
          "  -o FILE          output file (default '-': stdout); written\n"
          "                   atomically\n"
          "  --format F       csv or npy (default: npy for *.npy, else csv)\n"
          "  --no-header      CSV without the header row\n"
          "  --dim D, --components K, --means-seed M\n"
          "                   gmm: dimension (2), components (8) and the\n"
          "                   seed of the component means (1)\n"
          "  --size S         shapes: images of S x S pixels (8), 4..256;\n"
          "                   FILE *.idx, *.npy or *.png keeps their shape\n",
          f);
}

/* Parses a decimal unsigned integer; 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end || errno)
        return -1;
    *out = v;
    return 0;
}

int cli_cmd_data(int argc, char **argv)
{
    flow_dataset_params p;
    const char *out = "-", *fmt = NULL;
    int header = 1, have_n = 0, have_dim = 0, have_size = 0, rc;
    uint64_t v;
    flow_ctx *ctx;
    flow_data *data = NULL;
    flow_data_format format = FLOW_DATA_AUTO;

    memset(&p, 0, sizeof p);
    p.means_seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        /* options that take a value */
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            data_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            for (const char *const *n = flow_dataset_names(); *n; n++)
                puts(*n);
            return 0;
        } else if (!strcmp(a, "--with-logprob")) {
            p.with_logprob = 1;
        } else if (!strcmp(a, "--labels")) {
            p.labels = 1;
        } else if (!strcmp(a, "--no-header")) {
            header = 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!val)
                goto missing;
            out = val;
            i++;
        } else if (!strcmp(a, "--format")) {
            if (!val)
                goto missing;
            fmt = val;
            i++;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--seed")
                   || !strcmp(a, "--dim") || !strcmp(a, "--components")
                   || !strcmp(a, "--means-seed") || !strcmp(a, "--size")) {
            if (!val)
                goto missing;
            if (parse_u64(val, &v) || v > SIZE_MAX) {
                fprintf(stderr, "flowkit data: %s: '%s' is not a "
                        "non-negative integer\n", a, val);
                return CLI_EXIT_USAGE;
            }
            if (!strcmp(a, "-n"))
                p.n = (size_t)v, have_n = 1;
            else if (!strcmp(a, "--seed"))
                p.seed = v;
            else if (!strcmp(a, "--dim") || !strcmp(a, "--components")
                     || !strcmp(a, "--size")) {
                /* 0 in the struct means "the default": given, it is a
                 * mistake, not a request for the default */
                if (v == 0) {
                    fprintf(stderr, "flowkit data: %s: must be at least 1 "
                            "(try 'flowkit data --help')\n", a);
                    return CLI_EXIT_USAGE;
                }
                if (a[2] == 'd' || a[2] == 's') {
                    p.dim = (size_t)v;
                    *(a[2] == 'd' ? &have_dim : &have_size) = 1;
                }
                else
                    p.components = (size_t)v;
            }
            else
                p.means_seed = v;
            i++;
        } else if (a[0] == '-' && a[1]) {
            static const char *const opts[] = {
                "--help", "--list", "--with-logprob", "--labels",
                "--no-header", "--output", "--format", "--seed", "--dim",
                "--components", "--means-seed", "--size"};
            char hint[320];
            fprintf(stderr, "flowkit data: unknown option '%s'%s (try "
                    "'flowkit data --help')\n", a,
                    cli_did_you_mean(hint, sizeof hint, a, opts,
                                     sizeof opts / sizeof opts[0]));
            return CLI_EXIT_USAGE;
        } else if (!p.name) {
            p.name = a;
        } else {
            fprintf(stderr, "flowkit data: unexpected argument '%s'\n", a);
            return CLI_EXIT_USAGE;
        }
        continue;
missing:
        fprintf(stderr, "flowkit data: option '%s' needs a value\n", a);
        return CLI_EXIT_USAGE;
    }
    if (!p.name || !have_n) {
        fprintf(stderr, "flowkit data: %s (try 'flowkit data --help')\n",
                p.name ? "-n N is required" : "a data set NAME is required");
        return CLI_EXIT_USAGE;
    }
    /* the side of shapes' images is --size, not a dimension */
    if (!strcmp(p.name, "shapes") ? have_dim : have_size) {
        fprintf(stderr, "flowkit data: %s (try 'flowkit data --help')\n",
                strcmp(p.name, "shapes") ? "--size applies to shapes only"
                : "shapes: give the image side with --size, not --dim");
        return CLI_EXIT_USAGE;
    }
    if (fmt && !strcmp(fmt, "csv"))
        format = FLOW_DATA_CSV;
    else if (fmt && !strcmp(fmt, "npy"))
        format = FLOW_DATA_NPY;
    else if (fmt) {
        fprintf(stderr, "flowkit data: unknown format '%s' (csv or npy)\n",
                fmt);
        return CLI_EXIT_USAGE;
    }
    if ((rc = cli_check_output("flowkit data", out, NULL, 0)) != 0)
        return rc;
    if (!(ctx = flow_ctx_new())) {
        fputs("flowkit: out of memory\n", stderr);
        return 1;
    }
    rc = flow_data_generate(ctx, &p, &data);
    if (rc == FLOW_OK)
        rc = flow_data_write(ctx, data, out, format, header);
    if (rc != FLOW_OK)
        fprintf(stderr, "flowkit data: %s\n", flow_errmsg(ctx));
    flow_data_free(data);
    flow_ctx_free(ctx);
    /* bad names and option combinations are usage errors */
    if (rc == FLOW_ERR_INVAL || rc == FLOW_ERR_UNSUPPORTED)
        return CLI_EXIT_USAGE;
    return rc == FLOW_OK ? 0 : 1;
}
