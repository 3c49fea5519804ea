/* plot_draw.h - internal to `flowkit plot`: a small drawing layer over
 * cairo (canvas to an atomic output, axes with nice ticks, viridis). */
#ifndef FLOW_CLI_PLOT_DRAW_H
#define FLOW_CLI_PLOT_DRAW_H

#include <cairo.h>
#include <stddef.h>

#include "flow/flow.h"
#include "plot.h"

/* A picture being drawn into an output file: PNG is drawn on an image
 * surface and encoded at the end; SVG and PDF stream into the output as
 * cairo writes them.  Nothing is left under the name unless pd_close
 * succeeds. */
typedef struct pd_canvas {
    cairo_surface_t *surface;
    cairo_t *cr;
    flow_output *out;
    plot_format format;
    int width, height;
    int layout;             /* print the panels (--layout) */
    double font;            /* base font size in pixels */
} pd_canvas;

/* Opens the output and a white canvas; 0, or 1 after printing "CMD: ...". */
int pd_open(pd_canvas *c, const plot_opts *o);
/* Finishes the picture and commits the output; 0, or 1 after printing
 * why (the output is then removed). */
int pd_close(pd_canvas *c, const plot_opts *o);
/* Discards the picture and the output (no-op on a zeroed canvas). */
void pd_abort(pd_canvas *c);

/* Releases cairo's static caches (fonts, surfaces) at the end of the
 * command, so that leak checkers see only real leaks. */
void pd_shutdown(void);

/* A panel: its pixel rectangle and the data ranges it maps. */
typedef struct pd_axes {
    double x, y, w, h;
    double xmin, xmax, ymin, ymax;
} pd_axes;

double pd_px(const pd_axes *a, double x);
double pd_py(const pd_axes *a, double y);
/* Prints "KIND ROW COL X Y W H" when the canvas has --layout. */
void pd_layout(const pd_canvas *c, const char *kind, int row, int col,
               const pd_axes *a);

/* Nice tick values (1, 2 or 5 x 10^k steps) inside [lo, hi], at most
 * max of them (>= 2 when the range is finite and non-empty); the count. */
size_t pd_ticks(double lo, double hi, size_t max, double *ticks);
/* The frame of a panel with ticks; labels on the sides asked for
 * (xlab / ylab: numbers under / left of the frame); axis titles when
 * not NULL. */
void pd_frame(pd_canvas *c, const pd_axes *a, int xlab, int ylab,
              const char *xtitle, const char *ytitle);
/* Text with its anchor: ax, ay in [0, 1] of its extent (0.5, 0.5:
 * centred); size in pixels; rotated a quarter turn when vertical. */
void pd_text(pd_canvas *c, double x, double y, double ax, double ay,
             double size, int vertical, const char *s);
void pd_title(pd_canvas *c, const char *s);

/* Viridis at t in [0, 1] (clamped). */
void pd_viridis(double t, double rgb[3]);
/* The i-th colour of the series palette. */
void pd_palette(size_t i, double rgb[3]);

/* A heat map of nx x ny values (row j = y cell j from the bottom, NAN
 * drawn white) scaled from [vmin, vmax] to viridis over the panel; and
 * its colour bar in rectangle bar, labelled `label`. */
int pd_heatmap(pd_canvas *c, const pd_axes *a, const double *v, size_t nx,
               size_t ny, double vmin, double vmax);
void pd_colorbar(pd_canvas *c, const pd_axes *bar, double vmin, double vmax,
                 const char *label);
/* Points (x, y) = (p[i * stride + jx], p[i * stride + jy]) as dots of
 * radius r, clipped to the panel. */
void pd_points(pd_canvas *c, const pd_axes *a, const flow_real *p,
               size_t n, size_t stride, size_t jx, size_t jy, double r,
               const double rgb[3], double alpha);
/* A polyline through (x[i], y[i]), skipping non-finite points. */
void pd_line(pd_canvas *c, const pd_axes *a, const double *x,
             const double *y, size_t n, const double rgb[3], int dashed);
/* A legend box at the top right of panel a; dashed[i] < 0: a square
 * swatch, else a solid (0) or dashed (1) line. */
void pd_legend(pd_canvas *c, const pd_axes *a, const char *const *names,
               const double (*rgb)[3], const int *dashed, size_t n);

#endif
