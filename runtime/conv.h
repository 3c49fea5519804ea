/* conv.h - internal: the host's convolutional conditioner (FLOW_NET_CONV)
 * and its kernels, im2col + GEMM convolutions with same padding. */
#ifndef FLOW_RUNTIME_CONV_H
#define FLOW_RUNTIME_CONV_H

/* Images are C x H x W in C order (c H W + h W + w), one per row of a
 * batch.  The net works image by image: every product of image i reads
 * only image i (tgemm, OpenBLAS where tgemm declines), so a row's outputs
 * and input gradient are the same bits whichever rows share its call
 * (any split of a batch over threads), and the parameter gradient is
 * accumulated image after image in row order.  Inside the net an image's
 * planes are H W rounded up to 8 values apart (tgemm's width).  OpenBLAS
 * stays single-threaded (matrix.h): the model's threads split the batch
 * by rows, and a call on few images made while the model's pool is lent
 * to its thread splits its layers' channels over the pool, with the same
 * bits (docs/runtime.md, "Convolutions"). */

#include <stddef.h>

#include "flow/flow_plugin.h"

typedef struct conv_net conv_net;

/* ------------------------------------------------------------ kernels */

/* im2col for a k x k kernel, stride 1, zero padding k / 2 (Chellapilla et
 * al. 2006, "High performance convolutional neural networks for document
 * processing", sec. 2.1): col is (c k k) x (h w), row (ci k + ky) k + kx
 * holding img[ci][y + ky - k/2][x + kx - k/2] (0 outside the image) at
 * column y w + x, so a convolution is the GEMM W (cout x c k k) col. */
void conv_im2col(size_t c, size_t h, size_t w, size_t k,
                 const flow_real *img, flow_real *col);
/* The adjoint of conv_im2col: img (c x h x w) = sum of col's entries
 * over the positions each was read from (img written, not accumulated). */
void conv_col2im(size_t c, size_t h, size_t w, size_t k,
                 const flow_real *col, flow_real *img);

/* One convolution on one image through OpenBLAS (the kernel tests'
 * subject; the net runs the same formulas on padded planes through
 * tgemm): y (cout x h w) = W * x + b with W
 * (cout x cin x k x k, PyTorch's Conv2d layout) and b (cout); col is
 * scratch of conv_col_count(cin, h, w, k) values (unused for k = 1: a
 * 1x1 convolution is the plain GEMM W x). */
int conv_apply(size_t cin, size_t cout, size_t h, size_t w, size_t k,
               const flow_real *wt, const flow_real *b, const flow_real *x,
               flow_real *y, flow_real *col);
/* The kernel of the convolution's adjoint: wf (cin x cout x k x k) =
 * W transposed in its channels and rotated by 180 degrees, so that for
 * odd k with same padding dL/dx = conv_apply(cout -> cin, wf, dL/dy). */
void conv_flip(size_t cin, size_t cout, size_t k, const flow_real *wt,
               flow_real *wf);
/* The VJP of conv_apply given g = dL/dy (cout x h w): dwt and db
 * accumulated (either may be NULL), dx written (may be NULL), with wf
 * (conv_flip of wt, or NULL) as the convolution of g, else by col2im;
 * col and dcol scratch of conv_col_count(cin, ...) values each (col:
 * of conv_col_count(cout, ...) with wf when cout > cin). */
int conv_apply_backward(size_t cin, size_t cout, size_t h, size_t w,
                        size_t k, const flow_real *wt, const flow_real *wf,
                        const flow_real *x, const flow_real *g, flow_real *dx,
                        flow_real *dwt, flow_real *db, flow_real *col,
                        flow_real *dcol);
/* Values of the im2col matrix: cin k k h w (0 for k = 1), SIZE_MAX on
 * overflow. */
size_t conv_col_count(size_t cin, size_t h, size_t w, size_t k);

/* ------------------------------------------------------------ the net */

/* Parameter layout: layers in order, 0 (kernel, channels + context ->
 * hidden), 1 .. blocks (1x1, hidden -> hidden), blocks + 1 (kernel,
 * hidden -> out_channels), each W (cout x cin x k x k) then b (cout). */
conv_net *conv_net_create(const flow_net_spec *spec, char *err,
                          size_t err_cap);
void conv_net_destroy(conv_net *net);
size_t conv_net_params(const conv_net *net);
/* W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = cin k k (nn.c's
 * rule, torch.nn.Conv2d's default); the last layer 0 with zero_last.
 * rng NULL: a stream seeded from spec->seed. */
void conv_net_init(const conv_net *net, flow_real *params, flow_rng *rng);
/* Bytes for a forward tape of n images and the backward's scratch; 0 on
 * overflow. */
size_t conv_net_workspace(const conv_net *net, size_t n);
int conv_net_forward(const conv_net *net, const flow_real *params, size_t n,
                     const flow_real *x, const flow_real *ctx, flow_real *y,
                     void *ws);
/* After conv_net_forward on ws with the same n: dx written, dctx and
 * dparams accumulated (each may be NULL). */
int conv_net_backward(const conv_net *net, const flow_real *params,
                      size_t n, void *ws, const flow_real *dy,
                      flow_real *dx, flow_real *dctx, flow_real *dparams);
/* Portable export: PREFIX.{l}.weight [cout, cin, k, k] and .bias [cout],
 * and the attribute PREFIX (kind "conv", shapes, padding). */
int conv_net_export(const conv_net *net, const flow_real *params,
                    const char *prefix, const char *output_layout,
                    flow_export *ex);

/* The channel split (conv_split.c): a call made while a pool is lent to
 * its thread (pool_lent) splits each layer over the pool's threads when a
 * thread's share of a layer of one image is at least this many forward
 * multiply-adds; the same bits either way.  Returns the previous value
 * (tests: 0 splits every call that can, with no pause after splits that
 * did not pay).  Not thread-safe: set it before the calls. */
size_t conv_set_split_min(size_t madds);

/* Introspection (tests): layers, and layer l's shape and offsets. */
size_t conv_net_layers(const conv_net *net);
int conv_net_layer(const conv_net *net, size_t l, size_t *cin, size_t *cout,
                   size_t *k, size_t *w_off, size_t *b_off);

#endif
