/* plot_kinds.c - the four pictures of `flowkit plot`: a model's density,
 * pair plots of data files, training histories, grids of images. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plot.h"
#include "plot_draw.h"
#include "progress.h"

/* The last path component, for titles and legends. */
static const char *base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s && s[1] ? s + 1 : path;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of column j over the rows of several point sets (n[s]
 * rows of stride[s] values), non-finite values skipped; NAN when none. */
static double quantile(const flow_real *const *p, const size_t *n,
                       const size_t *stride, size_t sets, size_t j,
                       double q)
{
    size_t tot = 0, m = 0;
    double *v, r;
    for (size_t s = 0; s < sets; s++)
        tot += n[s];
    if (!tot || !(v = malloc(tot * sizeof *v)))
        return NAN;
    for (size_t s = 0; s < sets; s++)
        for (size_t i = 0; i < n[s]; i++)
            if (isfinite(p[s][i * stride[s] + j]))
                v[m++] = p[s][i * stride[s] + j];
    if (!m) {
        free(v);
        return NAN;
    }
    qsort(v, m, sizeof *v, cmp_double);
    r = v[(size_t)floor(q * (double)(m - 1) + 0.5)];
    free(v);
    return r;
}

/* [lo, hi] of column j: the 0.5% and 99.5% quantiles (a few outliers do
 * not shrink the picture), widened by 10% of the span, or by 1 when all
 * values agree. */
static int span(const flow_real *const *p, const size_t *n,
                const size_t *stride, size_t sets, size_t j, double *lo,
                double *hi)
{
    double a = quantile(p, n, stride, sets, j, 0.005);
    double b = quantile(p, n, stride, sets, j, 0.995);
    double pad = b > a ? 0.1 * (b - a) : 1;
    if (!isfinite(a) || !isfinite(b))
        return -1;
    *lo = a - pad;
    *hi = b + pad;
    return 0;
}

/* The default title: "KIND: FILE" (and ", ..." for several). */
static const char *title_of(const plot_opts *o, const char *kind, char *buf,
                            size_t cap)
{
    if (o->title)
        return o->title;
    snprintf(buf, cap, "%s: %s%s", kind, base(o->files[0]),
             o->n_files > 1 ? ", ..." : "");
    return buf;
}

/* Height taken by the title band. */
static double title_band(const pd_canvas *c)
{
    return 2.2 * c->font;
}

void plot_shutdown(void)
{
    pd_shutdown();
}

/* ------------------------------------------------------------ density */

typedef struct dens {
    cli_loaded l;
    size_t dim, cdim, ix, iy, nd, ns;
    double fix[64], ctx[64];
    flow_data *data;
    flow_real *samples, *cv;
    double *grid;
} dens;

/* The model's choice of dimensions, fixed values and context from o; 0,
 * or an exit code after printing why. */
static int density_args(const plot_opts *o, dens *d)
{
    size_t idx[2];
    d->dim = flow_model_dim(d->l.model);
    d->cdim = flow_model_context_dim(d->l.model);
    if (o->dims) {
        if (plot_parse_indices(o->dims, idx, 2, d->dim) != 2
            || idx[0] == idx[1]) {
            fprintf(stderr, "%s: --dims '%s': give two different dimensions "
                    "I,J below %zu (try 'flowkit plot --help')\n", o->cmd,
                    o->dims, d->dim);
            return CLI_EXIT_USAGE;
        }
        d->ix = idx[0];
        d->iy = idx[1];
    } else if (d->dim == 2) {
        d->ix = 0;
        d->iy = 1;
    } else {
        fprintf(stderr, "%s: %s: the model has %zu dimension%s: choose two "
                "with --dims I,J (try 'flowkit plot --help')\n", o->cmd,
                o->files[0], d->dim, d->dim == 1 ? "" : "s");
        return CLI_EXIT_USAGE;
    }
    if (o->fix && (d->dim == 2 || d->dim - 2 > 64
                   || plot_parse_reals(o->fix, d->fix, d->dim - 2) != 0)) {
        fprintf(stderr, "%s: --fix '%s': the model has %zu other "
                "dimension%s: give %zu value%s (try 'flowkit plot --help')\n",
                o->cmd, o->fix, d->dim - 2, d->dim == 3 ? "" : "s",
                d->dim - 2, d->dim == 3 ? "" : "s");
        return CLI_EXIT_USAGE;
    }
    if (d->cdim && (!o->context || d->cdim > 64
                    || plot_parse_reals(o->context, d->ctx, d->cdim) != 0)) {
        fprintf(stderr, "%s: %s: the model is conditional: give --context "
                "with its %zu context value%s\n", o->cmd, o->files[0],
                d->cdim, d->cdim == 1 ? "" : "s");
        return CLI_EXIT_USAGE;
    }
    if (!d->cdim && o->context) {
        fprintf(stderr, "%s: %s: the model takes no context\n", o->cmd,
                o->files[0]);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

/* n model samples into a new array (rows of dim), batch by batch. */
static flow_real *draw(const plot_opts *o, dens *d, size_t n)
{
    enum { B = 4096 };
    flow_real *x = malloc(n * d->dim * sizeof *x);
    if (!x) {
        fprintf(stderr, "%s: out of memory for %zu samples\n", o->cmd, n);
        return NULL;
    }
    for (size_t r = 0; r < n; r += B) {
        size_t b = n - r < B ? n - r : B;
        if (flow_model_sample(d->l.model, b, d->cdim ? d->cv : NULL,
                              x + r * d->dim, NULL) != FLOW_OK) {
            cli_fail(d->l.ctx, o->cmd);
            free(x);
            return NULL;
        }
    }
    return x;
}

/* The density over the grid's cell centres: exp(log p) of the slice, or
 * the marginal histogram of o->draws samples; 0 or 1. */
static int density_grid(const plot_opts *o, dens *d, const double *r)
{
    enum { B = 4096 };
    size_t g = o->grid, cells = g * g;
    double cw = (r[1] - r[0]) / (double)g, ch = (r[3] - r[2]) / (double)g;
    if (!(d->grid = calloc(cells, sizeof *d->grid)))
        goto oom;
    if (d->dim > 2 && !o->fix) {
        for (size_t done = 0; done < o->draws; done += 65536) {
            size_t n = o->draws - done < 65536 ? o->draws - done : 65536;
            flow_real *x = draw(o, d, n);
            if (!x)
                return 1;
            for (size_t i = 0; i < n; i++) {
                double u = (x[i * d->dim + d->ix] - r[0]) / cw;
                double v = (x[i * d->dim + d->iy] - r[2]) / ch;
                if (u >= 0 && u < (double)g && v >= 0 && v < (double)g)
                    d->grid[(size_t)v * g + (size_t)u] += 1;
            }
            free(x);
        }
        for (size_t k = 0; k < cells; k++)
            d->grid[k] /= (double)o->draws * cw * ch;
        return 0;
    } else {
        flow_real *x = malloc(B * d->dim * sizeof *x);
        flow_real *lp = malloc(B * sizeof *lp);
        flow_real *c = d->cdim ? malloc(B * d->cdim * sizeof *c) : NULL;
        int rc = 0;
        if (!x || !lp || (d->cdim && !c)) {
            free(x);
            free(lp);
            free(c);
            goto oom;
        }
        for (size_t i = 0; i < B * d->cdim; i++)
            c[i] = (flow_real)d->ctx[i % d->cdim];
        for (size_t k0 = 0; k0 < cells && !rc; k0 += B) {
            size_t b = cells - k0 < B ? cells - k0 : B;
            for (size_t i = 0; i < b; i++) {
                size_t k = k0 + i, f = 0;
                for (size_t j = 0; j < d->dim; j++)
                    x[i * d->dim + j] = (flow_real)(
                        j == d->ix ? r[0] + ((double)(k % g) + 0.5) * cw
                      : j == d->iy ? r[2] + ((double)(k / g) + 0.5) * ch
                      : d->fix[f++]);
            }
            if (flow_model_log_prob(d->l.model, b, x, c, lp) != FLOW_OK)
                rc = cli_fail(d->l.ctx, o->cmd);
            for (size_t i = 0; i < b && !rc; i++)
                d->grid[k0 + i] = lp[i];
        }
        free(x);
        free(lp);
        free(c);
        return rc;
    }
oom:
    fprintf(stderr, "%s: out of memory for a grid of %zu x %zu\n", o->cmd,
            g, g);
    return 1;
}

/* --dump-grid: x,y,logp (slices) or x,y,density (marginals) per cell. */
static int dump_grid(const plot_opts *o, const dens *d, const double *r)
{
    flow_ctx *ctx = flow_ctx_new();
    flow_output *out = NULL;
    size_t g = o->grid;
    int marg = d->dim > 2 && !o->fix, rc = 1;
    FILE *f;
    if (!ctx || flow_output_open(ctx, o->dump_grid, &out) != FLOW_OK) {
        rc = ctx ? cli_fail(ctx, o->cmd) : 1;
        flow_ctx_free(ctx);
        return rc;
    }
    f = flow_output_stream(out);
    fprintf(f, "x,y,%s\n", marg ? "density" : "logp");
    for (size_t k = 0; k < g * g; k++)
        fprintf(f, "%.7g,%.7g,%.9g\n",
                r[0] + ((double)(k % g) + 0.5) * (r[1] - r[0]) / (double)g,
                r[2] + ((double)(k / g) + 0.5) * (r[3] - r[2]) / (double)g,
                d->grid[k]);
    if (flow_output_commit(ctx, out) == FLOW_OK)
        rc = 0;
    else
        cli_fail(ctx, o->cmd);
    flow_ctx_free(ctx);
    return rc;
}

static void axis_name(const dens *d, size_t j, char *buf, size_t cap)
{
    if (d->l.columns && j < d->l.n_columns)
        snprintf(buf, cap, "%s", d->l.columns[j]);
    else
        snprintf(buf, cap, "x%zu", j);
}

static int density_draw(const plot_opts *o, dens *d, const double *r)
{
    static const double white[3] = {1, 1, 1}, orange[3] = {1, 0.5, 0.05};
    pd_canvas c;
    pd_axes a, bar;
    char t[256], xn[64], yn[64];
    double vmax = 0, *shown;
    size_t cells = o->grid * o->grid;
    int marg = d->dim > 2 && !o->fix;
    if (!(shown = malloc(cells * sizeof *shown))) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        return 1;
    }
    for (size_t k = 0; k < cells; k++) {
        shown[k] = marg ? d->grid[k] : exp(d->grid[k]);
        if (shown[k] > vmax)
            vmax = shown[k];
    }
    if (pd_open(&c, o) != 0) {
        free(shown);
        return 1;
    }
    a.x = 5.2 * c.font;
    a.y = title_band(&c) + 0.5 * c.font;
    a.w = c.width - a.x - 7.5 * c.font;
    a.h = c.height - a.y - 3.6 * c.font;
    a.xmin = r[0];
    a.xmax = r[1];
    a.ymin = r[2];
    a.ymax = r[3];
    bar = a;
    bar.x = a.x + a.w + 1.2 * c.font;
    bar.w = 1.1 * c.font;
    bar.y = a.y + 1.5 * c.font;
    bar.h = a.h - 1.5 * c.font;
    pd_heatmap(&c, &a, shown, o->grid, o->grid, 0, vmax);
    if (d->data)
        pd_points(&c, &a, flow_data_values(d->data), d->nd,
                  flow_data_dim(d->data), d->ix, d->iy, 1.3, white, 0.6);
    if (d->samples)
        pd_points(&c, &a, d->samples, d->ns, d->dim, d->ix, d->iy, 1.3,
                  orange, 0.7);
    axis_name(d, d->ix, xn, sizeof xn);
    axis_name(d, d->iy, yn, sizeof yn);
    pd_frame(&c, &a, 1, 1, xn, yn);
    pd_colorbar(&c, &bar, 0, vmax, marg ? "marginal" : "density");
    pd_title(&c, title_of(o, "density", t, sizeof t));
    pd_layout(&c, "heatmap", 0, 0, &a);
    pd_layout(&c, "colorbar", 0, 1, &bar);
    free(shown);
    return pd_close(&c, o);
}

int plot_density(const plot_opts *o)
{
    dens d;
    double r[4];
    int rc;
    memset(&d, 0, sizeof d);
    if (cli_load_checkpoint(&d.l, o->cmd, o->files[0], o->threads) != 0)
        return 1;
    if ((rc = density_args(o, &d)) != 0)
        goto out;
    rc = 1;
    if (d.cdim && !(d.cv = malloc(4096 * d.cdim * sizeof *d.cv))) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        goto out;
    }
    for (size_t i = 0; i < 4096 * d.cdim; i++)
        d.cv[i] = (flow_real)d.ctx[i % d.cdim];
    flow_model_seed(d.l.model, o->seed);
    if (o->data) {
        if (flow_data_read(d.l.ctx, o->data, NULL, NULL, 0, &d.data)
            != FLOW_OK) {
            cli_fail(d.l.ctx, o->cmd);
            goto out;
        }
        d.nd = flow_data_rows(d.data);
        if (flow_data_dim(d.data) <= (d.ix > d.iy ? d.ix : d.iy)) {
            fprintf(stderr, "%s: %s: %zu columns, but --dims needs column "
                    "%zu\n", o->cmd, o->data, flow_data_dim(d.data),
                    d.ix > d.iy ? d.ix : d.iy);
            goto out;
        }
    }
    if (o->samples) {
        d.ns = o->samples;
        if (!(d.samples = draw(o, &d, d.ns)))
            goto out;
    }
    if (o->has_range)
        memcpy(r, o->range, sizeof r);
    else {
        const flow_real *p[2];
        size_t n[2], st[2], sets = 0;
        flow_real *probe = NULL;
        if (d.data) {
            p[sets] = flow_data_values(d.data);
            n[sets] = d.nd;
            st[sets++] = flow_data_dim(d.data);
        }
        if (d.samples) {
            p[sets] = d.samples;
            n[sets] = d.ns;
            st[sets++] = d.dim;
        }
        if (!sets) {
            if (!(probe = draw(o, &d, 5000)))
                goto out;
            p[0] = probe;
            n[0] = 5000;
            st[0] = d.dim;
            sets = 1;
        }
        if (span(p, n, st, sets, d.ix, &r[0], &r[1]) != 0
            || span(p, n, st, sets, d.iy, &r[2], &r[3]) != 0) {
            fprintf(stderr, "%s: no finite points to take the range from: "
                    "give --range\n", o->cmd);
            free(probe);
            goto out;
        }
        free(probe);
    }
    if (density_grid(o, &d, r) != 0)
        goto out;
    if (o->dump_grid && dump_grid(o, &d, r) != 0)
        goto out;
    rc = density_draw(o, &d, r);
out:
    free(d.grid);
    free(d.samples);
    free(d.cv);
    flow_data_free(d.data);
    cli_loaded_free(&d.l);
    return rc;
}

/* ------------------------------------------------------------ pairs */

/* The data sets of o->files, or NULL after printing why; *k columns
 * chosen into cols (at most 16). */
static int pairs_read(const plot_opts *o, flow_ctx *ctx, flow_data **sets,
                      size_t *cols, size_t *k)
{
    size_t mind = SIZE_MAX;
    for (size_t s = 0; s < o->n_files; s++) {
        if (flow_data_read(ctx, o->files[s], NULL, NULL, 0, &sets[s])
            != FLOW_OK)
            return cli_fail(ctx, o->cmd);
        if (flow_data_dim(sets[s]) < mind)
            mind = flow_data_dim(sets[s]);
    }
    if (o->dims && strchr(o->dims, ',')) {
        *k = plot_parse_indices(o->dims, cols, 16, mind);
        if (!*k) {
            fprintf(stderr, "%s: --dims '%s': give up to 16 columns below "
                    "%zu (try 'flowkit plot --help')\n", o->cmd, o->dims,
                    mind);
            return CLI_EXIT_USAGE;
        }
        return 0;
    }
    if (o->dims) {
        char *end;
        unsigned long v = strtoul(o->dims, &end, 10);
        if (*end || end == o->dims || o->dims[0] == '-' || v < 1 || v > 16
            || v > mind) {
            fprintf(stderr, "%s: --dims '%s': give K in [1, %zu] or a list "
                    "of columns (try 'flowkit plot --help')\n", o->cmd,
                    o->dims, mind < 16 ? mind : 16);
            return CLI_EXIT_USAGE;
        }
        *k = v;
    } else
        *k = mind < 4 ? mind : 4;
    for (size_t j = 0; j < *k; j++)
        cols[j] = j;
    return 0;
}

/* Density-scaled histogram of column j of a set over [lo, hi]. */
static void histogram(flow_data *d, size_t j, double lo, double hi,
                      size_t bins, double *h)
{
    size_t n = flow_data_rows(d), dim = flow_data_dim(d);
    const flow_real *v = flow_data_values(d);
    double w = (hi - lo) / (double)bins;
    memset(h, 0, bins * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        double b = (v[i * dim + j] - lo) / w;
        if (b >= 0 && b < (double)bins)
            h[(size_t)b] += 1;
    }
    for (size_t b = 0; b < bins; b++)
        h[b] = n ? h[b] / ((double)n * w) : 0;
}

static void pairs_diag(pd_canvas *c, pd_axes *a, flow_data **sets,
                       size_t nsets, size_t j, size_t bins, double *h,
                       double *xs, double *ys)
{
    double top = 0, rgb[3];
    for (size_t s = 0; s < nsets; s++) {
        histogram(sets[s], j, a->xmin, a->xmax, bins, h);
        for (size_t b = 0; b < bins; b++)
            top = fmax(top, h[b]);
    }
    a->ymin = 0;
    a->ymax = top > 0 ? 1.1 * top : 1;
    for (size_t s = 0; s < nsets; s++) {
        double w = (a->xmax - a->xmin) / (double)bins;
        histogram(sets[s], j, a->xmin, a->xmax, bins, h);
        /* a step outline: each bin's top edge, joined by verticals */
        for (size_t b = 0; b < bins; b++) {
            xs[2 * b] = a->xmin + (double)b * w;
            xs[2 * b + 1] = a->xmin + (double)(b + 1) * w;
            ys[2 * b] = ys[2 * b + 1] = h[b];
        }
        pd_palette(s, rgb);
        pd_line(c, a, xs, ys, 2 * bins, rgb, 0);
    }
}

int plot_pairs(const plot_opts *o)
{
    flow_ctx *ctx = flow_ctx_new();
    flow_data **sets = calloc(o->n_files, sizeof *sets);
    double (*rgb)[3] = calloc(o->n_files, sizeof *rgb);
    int *dash = calloc(o->n_files, sizeof *dash);
    const char **names = calloc(o->n_files, sizeof *names);
    double lo[16], hi[16], *h = NULL, *xs = NULL, *ys = NULL;
    size_t cols[16], k = 0;
    pd_canvas c;
    char t[256];
    int rc = 1;
    if (!ctx || !sets || !rgb || !dash || !names
        || !(h = malloc(o->bins * sizeof *h))
        || !(xs = malloc(2 * o->bins * sizeof *xs))
        || !(ys = malloc(2 * o->bins * sizeof *ys))) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        goto out;
    }
    if ((rc = pairs_read(o, ctx, sets, cols, &k)) != 0)
        goto out;
    rc = 1;
    for (size_t j = 0; j < k; j++) {
        size_t n[64], st[64], m = o->n_files < 64 ? o->n_files : 64;
        const flow_real *pp[64];
        for (size_t s = 0; s < m; s++) {
            pp[s] = flow_data_values(sets[s]);
            n[s] = flow_data_rows(sets[s]);
            st[s] = flow_data_dim(sets[s]);
        }
        if (span(pp, n, st, m, cols[j], &lo[j], &hi[j]) != 0) {
            fprintf(stderr, "%s: column %zu has no finite value\n", o->cmd,
                    cols[j]);
            goto out;
        }
    }
    if (pd_open(&c, o) != 0)
        goto out;
    {
        double left = 5.0 * c.font, top = title_band(&c) + 0.3 * c.font;
        double gap = 0.6 * c.font;
        double pw = (c.width - left - c.font - gap * (double)(k - 1))
                  / (double)k;
        double ph = (c.height - top - 3.4 * c.font - gap * (double)(k - 1))
                  / (double)k;
        pd_axes legend_at;
        for (size_t r = 0; r < k; r++)
            for (size_t q = 0; q <= r; q++) {
                pd_axes a;
                char xn[64], yn[64];
                const char *cx = flow_data_column_name(sets[0], cols[q]);
                const char *cy = flow_data_column_name(sets[0], cols[r]);
                a.x = left + (double)q * (pw + gap);
                a.y = top + (double)r * (ph + gap);
                a.w = pw;
                a.h = ph;
                a.xmin = lo[q];
                a.xmax = hi[q];
                a.ymin = lo[r];
                a.ymax = hi[r];
                snprintf(xn, sizeof xn, "%s", cx ? cx : "");
                if (!cx)
                    snprintf(xn, sizeof xn, "x%zu", cols[q]);
                snprintf(yn, sizeof yn, "%s", cy ? cy : "");
                if (!cy)
                    snprintf(yn, sizeof yn, "x%zu", cols[r]);
                if (q == r)
                    pairs_diag(&c, &a, sets, o->n_files, cols[q], o->bins, h,
                               xs, ys);
                else
                    for (size_t s = 0; s < o->n_files; s++) {
                        size_t n = flow_data_rows(sets[s]);
                        size_t step = n > 3000 ? (n + 2999) / 3000 : 1;
                        double col[3];
                        pd_palette(s, col);
                        pd_points(&c, &a, flow_data_values(sets[s]),
                                  (n + step - 1) / step,
                                  step * flow_data_dim(sets[s]), cols[q],
                                  cols[r], fmax(1.0, c.font / 10), col,
                                  0.35);
                    }
                pd_frame(&c, &a, r == k - 1, q == 0 && r > 0,
                         r == k - 1 ? xn : NULL, q == 0 && r > 0 ? yn : NULL);
                pd_layout(&c, q == r ? "hist" : "scatter", (int)r, (int)q,
                          &a);
            }
        legend_at.x = left + (k > 1 ? pw + gap : 0);
        legend_at.y = top;
        legend_at.w = k > 1 ? (double)(k - 1) * (pw + gap) - gap : pw;
        legend_at.h = ph;
        for (size_t s = 0; s < o->n_files; s++) {
            pd_palette(s, rgb[s]);
            dash[s] = -1;
            names[s] = base(o->files[s]);
        }
        if (o->n_files > 1 || k > 1)
            pd_legend(&c, &legend_at, names, (const double (*)[3])rgb, dash,
                      o->n_files);
    }
    pd_title(&c, title_of(o, "pairs", t, sizeof t));
    rc = pd_close(&c, o);
out:
    for (size_t s = 0; sets && s < o->n_files; s++)
        flow_data_free(sets[s]);
    free(sets);
    free(rgb);
    free(dash);
    free(names);
    free(h);
    free(xs);
    free(ys);
    flow_ctx_free(ctx);
    return rc;
}

/* ------------------------------------------------------------ history */

/* One run's curves: x (epoch, or step for fits) and the losses. */
typedef struct run {
    double *x, *loss, *valid;
    size_t n;
    int has_valid;
} run;

/* Reads the history of checkpoint `path`; 0, or 1 after printing why. */
static int read_run(const plot_opts *o, flow_ctx *ctx, const char *path,
                    run *r)
{
    flow_checkpoint *ck;
    const char *hist, *p;
    cli_hist_rec rec;
    size_t cap = 0;
    int k;
    if (flow_checkpoint_open(ctx, path, &ck) != FLOW_OK)
        return cli_fail(ctx, o->cmd);
    hist = flow_checkpoint_meta(ck, "history");
    for (p = hist; p && (k = cli_hist_next(&p, &rec)) == 1;)
        cap++;
    if (!hist || !cap || k < 0) {
        fprintf(stderr, "%s: %s: %s\n", o->cmd, path, !hist || k == 0
                ? "no training history (a model never trained)"
                : "a training history this flowkit cannot read");
        flow_checkpoint_free(ck);
        return 1;
    }
    r->x = malloc(cap * sizeof *r->x);
    r->loss = malloc(cap * sizeof *r->loss);
    r->valid = malloc(cap * sizeof *r->valid);
    if (!r->x || !r->loss || !r->valid) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        flow_checkpoint_free(ck);
        return 1;
    }
    for (p = hist; cli_hist_next(&p, &rec) == 1; r->n++) {
        double e = cli_hist_get(&rec, "epoch"), el = cli_hist_get(&rec,
                                                                 "elbo");
        r->x[r->n] = isnan(e) ? cli_hist_get(&rec, "step") : e;
        r->loss[r->n] = isnan(el) ? cli_hist_get(&rec, "loss") : -el;
        r->valid[r->n] = -cli_hist_get(&rec, "valid_loglik");
        r->has_valid |= isfinite(r->valid[r->n]);
    }
    flow_checkpoint_free(ck);
    return 0;
}

int plot_history(const plot_opts *o)
{
    flow_ctx *ctx = flow_ctx_new();
    run *runs = calloc(o->n_files, sizeof *runs);
    size_t nl = 0, cap = 2 * o->n_files;
    const char **names = calloc(cap, sizeof *names);
    char (*label)[80] = calloc(cap, sizeof *label);
    double (*rgb)[3] = calloc(cap, sizeof *rgb);
    int *dash = calloc(cap, sizeof *dash), rc = 1, steps = 0;
    double ylo = INFINITY, yhi = -INFINITY, xhi = 1;
    pd_canvas c;
    pd_axes a;
    char t[256];
    if (!ctx || !runs || !names || !label || !rgb || !dash) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        goto out;
    }
    for (size_t s = 0; s < o->n_files; s++) {
        if (read_run(o, ctx, o->files[s], &runs[s]) != 0)
            goto out;
        for (size_t i = 0; i < runs[s].n; i++) {
            double v[2] = {runs[s].loss[i], runs[s].valid[i]};
            for (int m = 0; m < 2; m++)
                if (isfinite(v[m])) {
                    ylo = fmin(ylo, v[m]);
                    yhi = fmax(yhi, v[m]);
                }
            if (isfinite(runs[s].x[i]))
                xhi = fmax(xhi, runs[s].x[i]);
        }
        steps |= runs[s].n && isnan(runs[s].valid[0])
                 && !runs[s].has_valid && isfinite(runs[s].x[0])
                 && runs[s].x[0] > 1 && runs[s].n > 1
                 && runs[s].x[1] - runs[s].x[0] > 1;
    }
    if (!(yhi >= ylo)) {
        fprintf(stderr, "%s: no finite loss in the histories\n", o->cmd);
        goto out;
    }
    if (pd_open(&c, o) != 0)
        goto out;
    a.x = 5.4 * c.font;
    a.y = title_band(&c) + 0.5 * c.font;
    a.w = c.width - a.x - 1.5 * c.font;
    a.h = c.height - a.y - 3.6 * c.font;
    a.xmin = 0;
    a.xmax = xhi;
    a.ymin = ylo - 0.05 * (yhi - ylo + 1e-9);
    a.ymax = yhi + 0.05 * (yhi - ylo + 1e-9);
    for (size_t s = 0; s < o->n_files; s++) {
        double col[3];
        pd_palette(s, col);
        pd_line(&c, &a, runs[s].x, runs[s].loss, runs[s].n, col, 0);
        snprintf(label[nl], sizeof label[nl], "%s train", base(o->files[s]));
        memcpy(rgb[nl], col, sizeof col);
        dash[nl++] = 0;
        if (runs[s].has_valid) {
            pd_line(&c, &a, runs[s].x, runs[s].valid, runs[s].n, col, 1);
            snprintf(label[nl], sizeof label[nl], "%s valid",
                     base(o->files[s]));
            memcpy(rgb[nl], col, sizeof col);
            dash[nl++] = 1;
        }
    }
    for (size_t i = 0; i < nl; i++)
        names[i] = label[i];
    pd_frame(&c, &a, 1, 1, steps ? "step" : "epoch",
             "loss (nats per sample)");
    pd_legend(&c, &a, names, (const double (*)[3])rgb, dash, nl);
    pd_title(&c, title_of(o, "history", t, sizeof t));
    pd_layout(&c, "curves", 0, 0, &a);
    rc = pd_close(&c, o);
out:
    for (size_t s = 0; runs && s < o->n_files; s++) {
        free(runs[s].x);
        free(runs[s].loss);
        free(runs[s].valid);
    }
    free(runs);
    free(names);
    free(label);
    free(rgb);
    free(dash);
    flow_ctx_free(ctx);
    return rc;
}

/* ------------------------------------------------------------ images */

/* One image (channel-major C x H x W values) as a new RGB surface. */
static cairo_surface_t *image_of(const flow_real *v, size_t ch, size_t h,
                                 size_t w, double lo, double hi)
{
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24,
                                                    (int)w, (int)h);
    unsigned char *px;
    int stride;
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS)
        return s;
    cairo_surface_flush(s);
    px = cairo_image_surface_get_data(s);
    stride = cairo_image_surface_get_stride(s);
    for (size_t y = 0; y < h; y++)
        for (size_t x = 0; x < w; x++) {
            uint32_t rgb = 0;
            for (size_t k = 0; k < 3; k++) {
                double u = (v[(ch == 3 ? k : 0) * h * w + y * w + x] - lo)
                         / (hi - lo);
                long b = isfinite(u) ? lround(fmin(fmax(u, 0), 1) * 255) : 0;
                rgb = rgb << 8 | (uint32_t)b;
            }
            *((uint32_t *)(px + y * (size_t)stride) + x) = rgb;
        }
    cairo_surface_mark_dirty(s);
    return s;
}

int plot_images(const plot_opts *o)
{
    flow_ctx *ctx = flow_ctx_new();
    flow_data *d = NULL;
    size_t shape[3], n, rows, cols, shown;
    double lo, hi, cell, top;
    pd_canvas c;
    char t[256];
    int rc = 1;
    const char *s = o->shape;
    for (int i = 0; i < 3; i++) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || s[0] == '-' || v < 1 || v > 4096
            || (i < 2 ? *end != ',' : *end != '\0')) {
            fprintf(stderr, "%s: --shape '%s': give C,H,W with C 1 (grey) or "
                    "3 (RGB) and H, W in [1, 4096] (try 'flowkit plot "
                    "--help')\n", o->cmd, o->shape);
            flow_ctx_free(ctx);
            return CLI_EXIT_USAGE;
        }
        shape[i] = v;
        s = end + 1;
    }
    if (shape[0] != 1 && shape[0] != 3) {
        fprintf(stderr, "%s: --shape '%s': C is %zu; give C,H,W with C 1 "
                "(grey) or 3 (RGB) (try 'flowkit plot --help')\n", o->cmd,
                o->shape, shape[0]);
        flow_ctx_free(ctx);
        return CLI_EXIT_USAGE;
    }
    if (!ctx || flow_data_read(ctx, o->files[0], NULL, NULL, 0, &d)
                != FLOW_OK) {
        rc = ctx ? cli_fail(ctx, o->cmd) : 1;
        goto out;
    }
    if (flow_data_dim(d) != shape[0] * shape[1] * shape[2]) {
        fprintf(stderr, "%s: %s: %zu columns, but --shape %s needs %zu\n",
                o->cmd, o->files[0], flow_data_dim(d), o->shape,
                shape[0] * shape[1] * shape[2]);
        goto out;
    }
    n = flow_data_rows(d);
    cols = o->cols ? o->cols
         : (size_t)ceil(sqrt((double)(o->rows ? (n + o->rows - 1) / o->rows
                                               : (n < 64 ? n : 64))));
    if (o->cols && !o->rows)
        rows = (n < 64 ? n : 64) / cols + ((n < 64 ? n : 64) % cols != 0);
    else
        rows = o->rows ? o->rows : ((n < 64 ? n : 64) + cols - 1) / cols;
    if (o->rows && !o->cols)
        cols = (n + rows - 1) / rows < 64 ? (n + rows - 1) / rows : 64;
    if (!rows || !cols)
        rows = cols = 1;
    shown = rows * cols < n ? rows * cols : n;
    if (o->has_range) {
        lo = o->range[0];
        hi = o->range[1];
    } else {
        const flow_real *v = flow_data_values(d);
        lo = INFINITY;
        hi = -INFINITY;
        for (size_t i = 0; i < shown * flow_data_dim(d); i++)
            if (isfinite(v[i])) {
                lo = fmin(lo, v[i]);
                hi = fmax(hi, v[i]);
            }
        if (!(hi > lo)) {
            lo = isfinite(lo) ? lo - 0.5 : 0;
            hi = lo + 1;
        }
    }
    if (pd_open(&c, o) != 0)
        goto out;
    top = title_band(&c) + 0.3 * c.font;
    cell = fmin((c.width - 2 * c.font) / (double)cols,
                (c.height - top - c.font) / (double)rows);
    top += (c.height - top - c.font - cell * (double)rows) / 2;
    for (size_t i = 0; i < shown; i++) {
        size_t r = i / cols, q = i % cols;
        double sc = fmin((cell - 2) / (double)shape[2],
                         (cell - 2) / (double)shape[1]);
        pd_axes a;
        cairo_surface_t *img = image_of(flow_data_values(d)
                                        + i * flow_data_dim(d), shape[0],
                                        shape[1], shape[2], lo, hi);
        a.w = sc * (double)shape[2];
        a.h = sc * (double)shape[1];
        a.x = (c.width - cell * (double)cols) / 2 + (double)q * cell
            + (cell - a.w) / 2;
        a.y = top + (double)r * cell + (cell - a.h) / 2;
        cairo_save(c.cr);
        cairo_translate(c.cr, a.x, a.y);
        cairo_scale(c.cr, sc, sc);
        cairo_set_source_surface(c.cr, img, 0, 0);
        cairo_pattern_set_filter(cairo_get_source(c.cr), CAIRO_FILTER_NEAREST);
        cairo_rectangle(c.cr, 0, 0, (double)shape[2], (double)shape[1]);
        cairo_fill(c.cr);
        cairo_restore(c.cr);
        cairo_surface_destroy(img);
        pd_layout(&c, "image", (int)r, (int)q, &a);
    }
    if (!o->title)
        snprintf(t, sizeof t, "images: %s (%zu of %zu, values %.4g .. %.4g)",
                 base(o->files[0]), shown, n, lo, hi);
    pd_title(&c, o->title ? o->title : t);
    rc = pd_close(&c, o);
out:
    flow_data_free(d);
    flow_ctx_free(ctx);
    return rc;
}
