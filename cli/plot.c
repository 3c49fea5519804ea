/* plot.c - `flowkit plot KIND`: the command, its help and options; the
 * pictures are drawn with cairo by plot_kinds.c over plot_draw.c.
 * Exit codes: 0 success, 1 error, 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "help.h"
#include "plot.h"

static void plot_usage(FILE *f)
{
    fputs("usage: flowkit plot density CKPT -o OUT [--dims I,J [--fix V,...]]\n"
          "                  [--data FILE] [--samples N] [--draws N]\n"
          "                  [--range XMIN,XMAX,YMIN,YMAX] [--grid N]\n"
          "                  [--context V,...] [--dump-grid FILE]\n"
          "       flowkit plot pairs FILE... -o OUT [--dims K|I,J,...] "
          "[--bins N]\n"
          "       flowkit plot history CKPT... -o OUT\n"
          "       flowkit plot images FILE --shape C,H,W -o OUT [--rows N]\n"
          "                  [--cols N] [--range LO,HI]\n"
          "   all: [--title T] [--width PX] [--height PX] [--seed S] "
          "[--layout]\n"
          "\n"
          "Draws a picture with cairo; the extension of OUT chooses the\n"
          "format: .png, .svg or .pdf.  OUT is written atomically (a\n"
          "temporary file renamed over it), so a failed run leaves nothing.\n"
          "\n"
          "density: the model's density p(x) as a heat map (viridis, with a\n"
          "  colour bar) over a grid of --grid N x N cells (default 160).  A\n"
          "  model of more than 2 dimensions needs --dims I,J (0-based): with\n"
          "  --fix the other dimensions are held at the values given, in\n"
          "  order, and the map is the exact density of that slice; without\n"
          "  --fix the map is the marginal density of (x_I, x_J), estimated\n"
          "  by a 2-D histogram of --draws N model samples (default 200000),\n"
          "  since a flow gives no marginal densities in closed form.  --data\n"
          "  overlays the rows of FILE (white), --samples N overlays N model\n"
          "  samples (orange).  The range is --range, else that of the\n"
          "  overlaid points, else of 5000 model samples.  A conditional\n"
          "  model needs --context with its context values.  --dump-grid\n"
          "  writes the grid as CSV: x,y,logp (slices) or x,y,density.\n"
          "pairs: a pair plot of the first K columns (--dims K, default up to\n"
          "  4) or of the columns listed (--dims 0,2,5): 1-D histograms of\n"
          "  --bins N bins (default 30) on the diagonal, scatter plots below\n"
          "  (at most 3000 rows of each file, evenly spaced); each FILE in\n"
          "  its own colour, named in a legend.\n"
          "history: the training loss (solid) and the validation score\n"
          "  (dashed, negated to a loss when it is a log-likelihood) "
          "per epoch\n"
          "  of each checkpoint's history, as `flowkit info` shows it.\n"
          "images: the rows of FILE as images of --shape C,H,W (C = 1 grey,\n"
          "  3 RGB; values channel-major), --rows x --cols of them (default\n"
          "  a square grid of up to 64), values scaled from [LO, HI] "
          "(--range,\n"
          "  default the data's minimum and maximum).\n"
          "\n"
          "options:\n"
          "  -o OUT          the picture (.png, .svg or .pdf)\n"
          "  --title T       the title (default: the kind and the file)\n"
          "  --width PX      width in pixels (default 640; 64 .. 8192)\n"
          "  --height PX     height in pixels (default 480; 64 .. 8192)\n"
          "  --seed S        the seed of model samples (default 0)\n"
          "  --layout        print each panel drawn, one a line: KIND ROW COL\n"
          "                  X Y W H (pixels), for scripts and tests\n", f);
}

/* Which kinds take an option: bits of enum kind. */
enum kind { K_DENSITY, K_PAIRS, K_HISTORY, K_IMAGES, N_KINDS };
static const char *const kind_names[N_KINDS] = {"density", "pairs",
                                                "history", "images"};
#define ALL ((1 << N_KINDS) - 1)
#define D (1 << K_DENSITY)
#define P (1 << K_PAIRS)
#define I (1 << K_IMAGES)

static const struct plot_opt {
    const char *name;
    int kinds;
} opts[] = {
    {"-o", ALL}, {"--title", ALL}, {"--width", ALL}, {"--height", ALL},
    {"--seed", ALL}, {"--layout", ALL}, {"--help", ALL}, {"-h", ALL},
    {"--dims", D | P}, {"--fix", D}, {"--data", D}, {"--samples", D},
    {"--draws", D}, {"--range", D | I}, {"--grid", D}, {"--context", D},
    {"--dump-grid", D}, {"--bins", P}, {"--shape", I}, {"--rows", I},
    {"--cols", I},
};
#define N_OPTS (sizeof opts / sizeof opts[0])

/* The format that OUT's extension names; -1 when none. */
static int format_of(const char *out)
{
    const char *dot = strrchr(out, '.');
    if (!dot || strchr(dot, '/'))
        return -1;
    if (!strcmp(dot, ".png"))
        return PLOT_PNG;
    if (!strcmp(dot, ".svg"))
        return PLOT_SVG;
    if (!strcmp(dot, ".pdf"))
        return PLOT_PDF;
    return -1;
}

int plot_parse_reals(const char *s, double *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *end;
        errno = 0;
        v[i] = strtod(s, &end);
        if (errno || end == s || !(v[i] - v[i] == 0))
            return -1;
        if (i + 1 < n && *end != ',')
            return -1;
        s = end + 1;
        if (i + 1 == n && *end)
            return -1;
    }
    return 0;
}

size_t plot_parse_indices(const char *s, size_t *idx, size_t max,
                          size_t lim)
{
    size_t n = 0;
    while (*s) {
        char *end;
        unsigned long long x;
        if (*s < '0' || *s > '9' || n == max)
            return 0;
        errno = 0;
        x = strtoull(s, &end, 10);
        if (errno || x >= lim || (*end && *end != ','))
            return 0;
        idx[n++] = (size_t)x;
        s = *end ? end + 1 : end;
        if (*end && !*s)
            return 0;
    }
    return n;
}

/* One option's value into o; 0 or CLI_EXIT_USAGE. */
static int take(cli_args *a, plot_opts *o, const char *name)
{
    size_t px;
    int rc;
    if (!strcmp(name, "-o"))
        return (o->out = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--title"))
        return (o->title = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--width") || !strcmp(name, "--height")) {
        if ((rc = cli_parse_range(a, &px, 64, 8192)) != 0)
            return rc;
        *(name[2] == 'w' ? &o->width : &o->height) = (int)px;
        return 0;
    }
    if (!strcmp(name, "--seed"))
        return cli_parse_u64(a, &o->seed);
    if (!strcmp(name, "--layout"))
        return (o->layout = 1, cli_flag(a));
    if (!strcmp(name, "--dims"))
        return (o->dims = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--fix"))
        return (o->fix = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--data"))
        return (o->data = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--context"))
        return (o->context = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--dump-grid"))
        return (o->dump_grid = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--shape"))
        return (o->shape = cli_opt_value(a)) ? 0 : CLI_EXIT_USAGE;
    if (!strcmp(name, "--samples"))
        return cli_parse_range(a, &o->samples, 1, 1000000);
    if (!strcmp(name, "--draws"))
        return cli_parse_range(a, &o->draws, 1000, 100000000);
    if (!strcmp(name, "--grid"))
        return cli_parse_range(a, &o->grid, 4, 2000);
    if (!strcmp(name, "--bins"))
        return cli_parse_range(a, &o->bins, 1, 1000);
    if (!strcmp(name, "--rows"))
        return cli_parse_range(a, &o->rows, 1, 1000);
    if (!strcmp(name, "--cols"))
        return cli_parse_range(a, &o->cols, 1, 1000);
    if (!strcmp(name, "--range")) {
        const char *v = cli_opt_value(a);
        size_t n = !strcmp(a->cmd, "flowkit plot images") ? 2 : 4;
        if (!v)
            return CLI_EXIT_USAGE;
        if (plot_parse_reals(v, o->range, n) != 0
            || o->range[0] >= o->range[1]
            || (n == 4 && o->range[2] >= o->range[3]))
            return cli_usage_error(a, "--range: '%s' is not %s", v, n == 4
                                   ? "XMIN,XMAX,YMIN,YMAX with XMIN < XMAX "
                                     "and YMIN < YMAX"
                                   : "LO,HI with LO < HI");
        o->has_range = 1;
        return 0;
    }
    return cli_unknown_option(a);
}

static int parse(int argc, char **argv, plot_opts *o, int kind, char *cmd)
{
    cli_args a = {argc, 2, argv, cmd, NULL, NULL};
    const char *pos;
    int k, rc;
    while ((k = cli_next_arg(&a, &pos)) >= 0) {
        const struct plot_opt *hit = NULL;
        if (k == 0)
            continue;       /* positionals() collects them */
        for (size_t i = 0; i < N_OPTS; i++)
            if ((opts[i].kinds & (1 << kind)) && cli_opt_is(&a, opts[i].name)
                && !hit)
                hit = &opts[i];
        if (!hit)
            return cli_unknown_option(&a);
        if (!strcmp(hit->name, "--help") || !strcmp(hit->name, "-h")) {
            plot_usage(stdout);
            return -1;
        }
        if ((rc = take(&a, o, hit->name)) != 0)
            return rc;
    }
    return 0;
}

/* The positional arguments after KIND, in order (options and their
 * values skipped); the count.  files has argc entries. */
static size_t positionals(int argc, char **argv, int kind, char *cmd,
                          const char **files)
{
    cli_args a = {argc, 2, argv, cmd, NULL, NULL};
    const char *pos;
    size_t n = 0;
    int k;
    while ((k = cli_next_arg(&a, &pos)) >= 0) {
        if (k == 0) {
            files[n++] = pos;
            continue;
        }
        for (size_t i = 0; i < N_OPTS; i++)
            if ((opts[i].kinds & (1 << kind)) && !strcmp(a.opt, opts[i].name)
                && strcmp(a.opt, "--layout") && !a.inline_val)
                a.i++;      /* parse() checked that the value is there */
    }
    return n;
}

int cli_cmd_plot(int argc, char **argv)
{
    static char cmd[64];
    const char **files = NULL;
    plot_opts o;
    int kind = -1, rc, fmt;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        plot_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    for (int i = 0; i < N_KINDS; i++)
        if (!strcmp(argv[1], kind_names[i]))
            kind = i;
    if (kind < 0) {
        char hint[320];
        fprintf(stderr, "flowkit plot: unknown kind '%s'%s (kinds: density, "
                "pairs, history, images; try 'flowkit plot --help')\n",
                argv[1],
                cli_did_you_mean(hint, sizeof hint, argv[1], kind_names,
                                 N_KINDS));
        return CLI_EXIT_USAGE;
    }
    snprintf(cmd, sizeof cmd, "flowkit plot %s", kind_names[kind]);
    memset(&o, 0, sizeof o);
    o.cmd = cmd;
    o.width = 640;
    o.height = 480;
    o.grid = 160;
    o.draws = 200000;
    o.bins = 30;
    o.threads = 1;
    if ((rc = parse(argc, argv, &o, kind, cmd)) != 0)
        return rc < 0 ? 0 : rc;
#ifndef FLOW_HAVE_CAIRO
    fprintf(stderr, "%s: this flowkit was built without cairo, so it draws "
            "nothing (install libcairo2-dev and run configure again)\n", cmd);
    return 1;
#endif
    if (!(files = calloc((size_t)argc, sizeof *files))) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    o.n_files = positionals(argc, argv, kind, cmd, files);
    o.files = files;
    rc = CLI_EXIT_USAGE;
    if (o.n_files == 0)
        fprintf(stderr, "%s: no %s given (try 'flowkit plot --help')\n", cmd,
                kind == K_DENSITY || kind == K_HISTORY ? "checkpoint"
                                                       : "data file");
    else if (o.n_files > 1 && (kind == K_DENSITY || kind == K_IMAGES))
        fprintf(stderr, "%s: one file at a time (got '%s' after '%s') (try "
                "'flowkit plot --help')\n", cmd, files[1], files[0]);
    else if (!o.out)
        fprintf(stderr, "%s: -o OUT is required (.png, .svg or .pdf) (try "
                "'flowkit plot --help')\n", cmd);
    else if ((fmt = format_of(o.out)) < 0)
        fprintf(stderr, "%s: -o %s: the name must end in .png, .svg or .pdf "
                "(try 'flowkit plot --help')\n", cmd, o.out);
    else if (kind == K_IMAGES && !o.shape)
        fprintf(stderr, "%s: --shape C,H,W is required (try 'flowkit plot "
                "--help')\n", cmd);
    else {
        const char **in = calloc(o.n_files + 2, sizeof *in);
        o.format = (plot_format)fmt;
        if (!in) {
            fprintf(stderr, "%s: out of memory\n", cmd);
            rc = 1;
            goto out;
        }
        memcpy(in, files, o.n_files * sizeof *in);
        in[o.n_files] = o.data;
        in[o.n_files + 1] = o.dump_grid;
        rc = cli_check_output(cmd, o.out, in, o.n_files + 2);
        if (!rc && o.dump_grid)
            rc = cli_check_output(cmd, o.dump_grid, in, o.n_files + 1);
        free(in);
        if (rc)
            goto out;
#ifdef FLOW_HAVE_CAIRO
        rc = kind == K_DENSITY ? plot_density(&o)
           : kind == K_PAIRS ? plot_pairs(&o)
           : kind == K_HISTORY ? plot_history(&o) : plot_images(&o);
        plot_shutdown();
#endif
    }
out:
    free(files);
    return rc;
}
