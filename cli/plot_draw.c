/* plot_draw.c - the drawing layer of `flowkit plot` over cairo: canvases
 * written atomically, panels with nice ticks, text, viridis heat maps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cairo.h>
#if CAIRO_HAS_SVG_SURFACE
#include <cairo-svg.h>
#endif
#if CAIRO_HAS_PDF_SURFACE
#include <cairo-pdf.h>
#endif
#ifdef FLOW_HAVE_FONTCONFIG
#include <fontconfig/fontconfig.h>
#endif

#include "cli.h"
#include "plot_draw.h"

/* ------------------------------------------------------------ canvas */

/* cairo's write callback: into the output's stream. */
static cairo_status_t write_out(void *closure, const unsigned char *data,
                                unsigned int len)
{
    FILE *f = closure;
    return fwrite(data, 1, len, f) == len ? CAIRO_STATUS_SUCCESS
                                          : CAIRO_STATUS_WRITE_ERROR;
}

static const char *format_name(plot_format f)
{
    return f == PLOT_PNG ? "PNG" : f == PLOT_SVG ? "SVG" : "PDF";
}

int pd_open(pd_canvas *c, const plot_opts *o)
{
    flow_ctx *ctx = flow_ctx_new();
    FILE *f;
    memset(c, 0, sizeof *c);
    c->format = o->format;
    c->width = o->width;
    c->height = o->height;
    c->layout = o->layout;
    /* readable at any size: about 1/36 of the shorter side, 11 px at
     * least */
    c->font = fmax(11.0, fmin(o->width, o->height) / 36.0);
    if (!ctx) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        return 1;
    }
    if (flow_output_open(ctx, o->out, &c->out) != FLOW_OK) {
        cli_fail(ctx, o->cmd);
        flow_ctx_free(ctx);
        c->out = NULL;
        return 1;
    }
    flow_ctx_free(ctx);
    f = flow_output_stream(c->out);
    switch (o->format) {
    case PLOT_PNG:
        c->surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32,
                                                o->width, o->height);
        break;
    case PLOT_SVG:
#if CAIRO_HAS_SVG_SURFACE
        c->surface = cairo_svg_surface_create_for_stream(write_out, f,
                                                         o->width, o->height);
#if CAIRO_VERSION >= CAIRO_VERSION_ENCODE(1, 16, 0)
        cairo_svg_surface_set_document_unit(c->surface, CAIRO_SVG_UNIT_PX);
#endif
#endif
        break;
    case PLOT_PDF:
#if CAIRO_HAS_PDF_SURFACE
        c->surface = cairo_pdf_surface_create_for_stream(write_out, f,
                                                         o->width, o->height);
#endif
        break;
    }
    (void)f;
    if (!c->surface) {
        fprintf(stderr, "%s: -o %s: this cairo (%s) cannot write %s\n",
                o->cmd, o->out, cairo_version_string(),
                format_name(o->format));
        pd_abort(c);
        return 1;
    }
    if (cairo_surface_status(c->surface) != CAIRO_STATUS_SUCCESS) {
        fprintf(stderr, "%s: -o %s: %s\n", o->cmd, o->out,
                cairo_status_to_string(cairo_surface_status(c->surface)));
        pd_abort(c);
        return 1;
    }
    c->cr = cairo_create(c->surface);
    cairo_set_source_rgb(c->cr, 1, 1, 1);
    cairo_paint(c->cr);
    cairo_select_font_face(c->cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL,
                           CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_line_cap(c->cr, CAIRO_LINE_CAP_BUTT);
    return 0;
}

int pd_close(pd_canvas *c, const plot_opts *o)
{
    cairo_status_t st = cairo_status(c->cr);
    flow_ctx *ctx;
    int rc = 1;
    cairo_destroy(c->cr);
    c->cr = NULL;
    if (st == CAIRO_STATUS_SUCCESS) {
        if (c->format == PLOT_PNG)
            st = cairo_surface_write_to_png_stream(
                c->surface, write_out, flow_output_stream(c->out));
        else {
            cairo_surface_finish(c->surface);
            st = cairo_surface_status(c->surface);
        }
    }
    cairo_surface_destroy(c->surface);
    c->surface = NULL;
    if (st != CAIRO_STATUS_SUCCESS) {
        fprintf(stderr, "%s: %s: %s\n", o->cmd, o->out,
                st == CAIRO_STATUS_WRITE_ERROR ? "write error"
                                               : cairo_status_to_string(st));
        pd_abort(c);
        return 1;
    }
    if (!(ctx = flow_ctx_new())) {
        fprintf(stderr, "%s: out of memory\n", o->cmd);
        pd_abort(c);
        return 1;
    }
    if (flow_output_commit(ctx, c->out) == FLOW_OK)
        rc = 0;
    else
        cli_fail(ctx, o->cmd);
    c->out = NULL;
    flow_ctx_free(ctx);
    return rc;
}

void pd_abort(pd_canvas *c)
{
    if (c->cr)
        cairo_destroy(c->cr);
    if (c->surface) {
        /* a vector surface would flush into the output on destroy; the
         * output is discarded anyway */
        cairo_surface_destroy(c->surface);
    }
    if (c->out)
        flow_output_abort(c->out);
    c->cr = NULL;
    c->surface = NULL;
    c->out = NULL;
}

void pd_shutdown(void)
{
    cairo_debug_reset_static_data();
#ifdef FLOW_HAVE_FONTCONFIG
    FcFini();
#endif
}

/* ------------------------------------------------------------ panels */

double pd_px(const pd_axes *a, double x)
{
    return a->x + (x - a->xmin) / (a->xmax - a->xmin) * a->w;
}

double pd_py(const pd_axes *a, double y)
{
    return a->y + a->h - (y - a->ymin) / (a->ymax - a->ymin) * a->h;
}

void pd_layout(const pd_canvas *c, const char *kind, int row, int col,
               const pd_axes *a)
{
    if (c->layout)
        printf("%s %d %d %.0f %.0f %.0f %.0f\n", kind, row, col, a->x, a->y,
               a->w, a->h);
}

/* The smallest of 1, 2, 5 x 10^k that is >= raw (raw > 0). */
static double nice_step(double raw)
{
    double p = pow(10, floor(log10(raw))), m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

size_t pd_ticks(double lo, double hi, size_t max, double *ticks)
{
    double step;
    size_t n;
    if (!(hi > lo) || !isfinite(lo) || !isfinite(hi) || max < 2)
        return 0;
    step = nice_step((hi - lo) / (double)(max - 1));
    do {
        double t0 = ceil(lo / step - 1e-9);
        n = 0;
        for (double k = t0; k * step <= hi + 1e-9 * step && n <= max; k++)
            n++;
        if (n > max)
            step = nice_step(step * 1.01);
    } while (n > max);
    n = 0;
    for (double k = ceil(lo / step - 1e-9); k * step <= hi + 1e-9 * step;
         k++) {
        double v = k * step;
        ticks[n++] = fabs(v) < 1e-9 * step ? 0 : v;
    }
    return n;
}

void pd_text(pd_canvas *c, double x, double y, double ax, double ay,
             double size, int vertical, const char *s)
{
    cairo_text_extents_t e;
    cairo_save(c->cr);
    cairo_set_font_size(c->cr, size);
    cairo_text_extents(c->cr, s, &e);
    cairo_translate(c->cr, x, y);
    if (vertical)
        cairo_rotate(c->cr, -M_PI / 2);
    /* anchor by the advance box and the font's cap height, so that
     * labels of one row line up whatever their letters */
    cairo_move_to(c->cr, -ax * e.x_advance, ay * 0.72 * size);
    cairo_show_text(c->cr, s);
    cairo_restore(c->cr);
}

void pd_title(pd_canvas *c, const char *s)
{
    cairo_save(c->cr);
    cairo_set_source_rgb(c->cr, 0, 0, 0);
    cairo_select_font_face(c->cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL,
                           CAIRO_FONT_WEIGHT_BOLD);
    pd_text(c, c->width / 2.0, 0.9 * c->font + 4, 0.5, 0.5, 1.25 * c->font,
            0, s);
    cairo_restore(c->cr);
}

/* A tick label: %g of the value, with the step's precision. */
static void tick_label(char *buf, size_t cap, double v)
{
    snprintf(buf, cap, "%.6g", v);
}

void pd_frame(pd_canvas *c, const pd_axes *a, int xlab, int ylab,
              const char *xtitle, const char *ytitle)
{
    double t[16], len = 0.4 * c->font, fs = 0.85 * c->font;
    size_t n;
    char buf[32];
    cairo_t *cr = c->cr;
    cairo_save(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, a->x, a->y, a->w, a->h);
    cairo_stroke(cr);
    n = pd_ticks(a->xmin, a->xmax, a->w > 12 * c->font ? 7 : 4, t);
    for (size_t i = 0; i < n; i++) {
        double px = pd_px(a, t[i]);
        cairo_move_to(cr, px, a->y + a->h);
        cairo_line_to(cr, px, a->y + a->h + len);
        cairo_stroke(cr);
        if (xlab) {
            tick_label(buf, sizeof buf, t[i]);
            pd_text(c, px, a->y + a->h + len + 0.2 * fs, 0.5, 1, fs, 0, buf);
        }
    }
    n = pd_ticks(a->ymin, a->ymax, a->h > 12 * c->font ? 7 : 4, t);
    for (size_t i = 0; i < n; i++) {
        double py = pd_py(a, t[i]);
        cairo_move_to(cr, a->x - len, py);
        cairo_line_to(cr, a->x, py);
        cairo_stroke(cr);
        if (ylab) {
            tick_label(buf, sizeof buf, t[i]);
            pd_text(c, a->x - len - 0.3 * fs, py, 1, 0.5, fs, 0, buf);
        }
    }
    if (xtitle)
        pd_text(c, a->x + a->w / 2, a->y + a->h + len + 1.6 * fs, 0.5, 1,
                c->font, 0, xtitle);
    if (ytitle)
        pd_text(c, a->x - len - 3.6 * fs, a->y + a->h / 2, 0.5, 0,
                c->font, 1, ytitle);
    cairo_restore(cr);
}

/* ------------------------------------------------------------ colour */

/* Viridis (van der Walt and Smith, matplotlib 2.0's default map, which
 * is perceptually uniform in CAM02-UCS) sampled at t = k/8, k = 0..8;
 * linear interpolation between the samples stays within a few levels
 * of 255 of the full table. */
void pd_viridis(double t, double rgb[3])
{
    static const unsigned char v[9][3] = {
        {68, 1, 84}, {72, 40, 120}, {62, 73, 137}, {49, 104, 142},
        {38, 130, 142}, {31, 158, 137}, {53, 183, 121}, {110, 206, 88},
        {253, 231, 37}};
    double s;
    int k;
    if (!(t > 0))
        t = 0;
    if (t > 1)
        t = 1;
    s = t * 8;
    k = s >= 8 ? 7 : (int)s;
    s -= k;
    for (int i = 0; i < 3; i++)
        rgb[i] = ((1 - s) * v[k][i] + s * v[k + 1][i]) / 255.0;
}

/* The "tab10" series colours (Tableau), distinct for the colour blind in
 * their first few entries. */
void pd_palette(size_t i, double rgb[3])
{
    static const unsigned char p[8][3] = {
        {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
        {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127}};
    for (int k = 0; k < 3; k++)
        rgb[k] = p[i % 8][k] / 255.0;
}

int pd_heatmap(pd_canvas *c, const pd_axes *a, const double *v, size_t nx,
               size_t ny, double vmin, double vmax)
{
    cairo_surface_t *img = cairo_image_surface_create(CAIRO_FORMAT_RGB24,
                                                      (int)nx, (int)ny);
    unsigned char *px;
    int stride;
    cairo_pattern_t *pat;
    if (cairo_surface_status(img) != CAIRO_STATUS_SUCCESS) {
        cairo_surface_destroy(img);
        return -1;
    }
    cairo_surface_flush(img);
    px = cairo_image_surface_get_data(img);
    stride = cairo_image_surface_get_stride(img);
    for (size_t j = 0; j < ny; j++)
        for (size_t i = 0; i < nx; i++) {
            double x = v[j * nx + i], rgb[3] = {1, 1, 1};
            uint32_t *p = (uint32_t *)(px + (ny - 1 - j) * (size_t)stride)
                        + i;
            if (isfinite(x))
                pd_viridis(vmax > vmin ? (x - vmin) / (vmax - vmin) : 0.5,
                           rgb);
            *p = (uint32_t)lround(rgb[0] * 255) << 16
               | (uint32_t)lround(rgb[1] * 255) << 8
               | (uint32_t)lround(rgb[2] * 255);
        }
    cairo_surface_mark_dirty(img);
    cairo_save(c->cr);
    cairo_rectangle(c->cr, a->x, a->y, a->w, a->h);
    cairo_clip(c->cr);
    cairo_translate(c->cr, a->x, a->y);
    cairo_scale(c->cr, a->w / (double)nx, a->h / (double)ny);
    cairo_set_source_surface(c->cr, img, 0, 0);
    pat = cairo_get_source(c->cr);
    cairo_pattern_set_filter(pat, CAIRO_FILTER_NEAREST);
    cairo_pattern_set_extend(pat, CAIRO_EXTEND_PAD);
    cairo_paint(c->cr);
    cairo_restore(c->cr);
    cairo_surface_destroy(img);
    return 0;
}

void pd_colorbar(pd_canvas *c, const pd_axes *bar, double vmin, double vmax,
                 const char *label)
{
    double t[16], rgb[3], len = 0.4 * c->font, fs = 0.85 * c->font;
    char buf[32];
    size_t n;
    int steps = (int)ceil(bar->h);
    cairo_t *cr = c->cr;
    cairo_save(cr);
    for (int k = 0; k < steps; k++) {
        pd_viridis((k + 0.5) / steps, rgb);
        cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
        cairo_rectangle(cr, bar->x, bar->y + bar->h - (k + 1) * bar->h / steps,
                        bar->w, bar->h / steps + 0.5);
        cairo_fill(cr);
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, bar->x, bar->y, bar->w, bar->h);
    cairo_stroke(cr);
    n = pd_ticks(vmin, vmax, 6, t);
    for (size_t i = 0; i < n; i++) {
        double py = bar->y + bar->h - (t[i] - vmin) / (vmax - vmin) * bar->h;
        cairo_move_to(cr, bar->x + bar->w, py);
        cairo_line_to(cr, bar->x + bar->w + len, py);
        cairo_stroke(cr);
        tick_label(buf, sizeof buf, t[i]);
        pd_text(c, bar->x + bar->w + len + 0.3 * fs, py, 0, 0.5, fs, 0, buf);
    }
    if (label)
        pd_text(c, bar->x + bar->w / 2, bar->y - 0.6 * fs, 0.5, 0, fs, 0,
                label);
    cairo_restore(cr);
}

void pd_points(pd_canvas *c, const pd_axes *a, const flow_real *p,
               size_t n, size_t stride, size_t jx, size_t jy, double r,
               const double rgb[3], double alpha)
{
    cairo_t *cr = c->cr;
    cairo_save(cr);
    cairo_rectangle(cr, a->x, a->y, a->w, a->h);
    cairo_clip(cr);
    cairo_set_source_rgba(cr, rgb[0], rgb[1], rgb[2], alpha);
    for (size_t i = 0; i < n; i++) {
        double x = p[i * stride + jx], y = p[i * stride + jy];
        if (!isfinite(x) || !isfinite(y))
            continue;
        cairo_new_sub_path(cr);
        cairo_arc(cr, pd_px(a, x), pd_py(a, y), r, 0, 2 * M_PI);
    }
    cairo_fill(cr);
    cairo_restore(cr);
}

void pd_line(pd_canvas *c, const pd_axes *a, const double *x,
             const double *y, size_t n, const double rgb[3], int dashed)
{
    cairo_t *cr = c->cr;
    double dash[2] = {6, 4};
    int pen = 0;
    cairo_save(cr);
    cairo_rectangle(cr, a->x, a->y, a->w, a->h);
    cairo_clip(cr);
    cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
    cairo_set_line_width(cr, fmax(1.5, c->font / 8));
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    if (dashed)
        cairo_set_dash(cr, dash, 2, 0);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i])) {
            pen = 0;
            continue;
        }
        if (pen)
            cairo_line_to(cr, pd_px(a, x[i]), pd_py(a, y[i]));
        else
            cairo_move_to(cr, pd_px(a, x[i]), pd_py(a, y[i]));
        pen = 1;
    }
    cairo_stroke(cr);
    cairo_restore(cr);
}

void pd_legend(pd_canvas *c, const pd_axes *a, const char *const *names,
               const double (*rgb)[3], const int *dashed, size_t n)
{
    cairo_t *cr = c->cr;
    double fs = 0.85 * c->font, row = 1.4 * fs, sw = 2 * fs, wmax = 0;
    double x, y, dash[2] = {6, 4};
    cairo_text_extents_t e;
    if (!n)
        return;
    cairo_save(cr);
    cairo_set_font_size(cr, fs);
    for (size_t i = 0; i < n; i++) {
        cairo_text_extents(cr, names[i], &e);
        wmax = fmax(wmax, e.x_advance);
    }
    x = a->x + a->w - wmax - sw - 1.2 * fs;
    y = a->y + 0.5 * fs;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, x - 0.4 * fs, y - 0.2 * fs, wmax + sw + fs,
                    row * (double)n + 0.4 * fs);
    cairo_fill(cr);
    for (size_t i = 0; i < n; i++) {
        double cy = y + row * ((double)i + 0.5);
        cairo_set_source_rgb(cr, rgb[i][0], rgb[i][1], rgb[i][2]);
        if (dashed[i] < 0) {
            cairo_rectangle(cr, x + 0.25 * sw, cy - 0.3 * fs, 0.5 * sw,
                            0.6 * fs);
            cairo_fill(cr);
        } else {
            cairo_set_line_width(cr, fmax(1.5, c->font / 8));
            cairo_set_dash(cr, dash, dashed[i] ? 2 : 0, 0);
            cairo_move_to(cr, x, cy);
            cairo_line_to(cr, x + sw * 0.9, cy);
            cairo_stroke(cr);
            cairo_set_dash(cr, dash, 0, 0);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        pd_text(c, x + sw + 0.2 * fs, cy, 0, 0.5, fs, 0, names[i]);
    }
    cairo_restore(cr);
}
