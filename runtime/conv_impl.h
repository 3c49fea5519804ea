/* conv_impl.h - internal to runtime/conv.c and conv_split.c: the conv
 * net's structures and the per-layer passes that the channel split shares
 * out over threads. */
#ifndef FLOW_RUNTIME_CONV_IMPL_H
#define FLOW_RUNTIME_CONV_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "conv.h"

/* Layers of a net at most: blocks <= 64 (conv_net_create) plus two. */
#define CONV_MAX_LAYERS 66

/* A net's record, per direction, of its recent passes over a lent pool
 * (conv_split.c): ns per image of the last 3 calls of each kind, split
 * ([0]) and image by image ([1]). */
typedef struct conv_tune {
    atomic_long ns[2][3];
    atomic_uint count[2];       /* calls of each kind so far               */
    atomic_uint calls;
} conv_tune;

typedef struct conv_layer {
    size_t cin, cout, k;        /* channels in and out, kernel size        */
    size_t w_off, b_off;        /* W (cout x cin x k x k), b (cout)        */
    int flip;                   /* backward's dx with the flipped kernel:
                                   k > 1 and cout < cin (conv_apply_backward) */
    size_t f_off;               /* its flipped kernel in conv_ws.wf        */
    size_t coutp;               /* cout rounded up to 8                    */
    size_t t_off;               /* its dW^T (cin k k x coutp) then db^T
                                   (coutp) in conv_ws.dwt                  */
} conv_layer;

struct conv_net {
    size_t c, h, w, hw;         /* input image; hw = h w                   */
    size_t hwp;                 /* hw rounded up to 8: a plane's stride in
                                   the tape and scratch (tgemm's width)    */
    size_t ctx;                 /* context inputs (constant channels)      */
    size_t hid, k, blocks, cout;
    int residual, zero_last;
    uint64_t seed;
    size_t n_layers;            /* blocks + 2                              */
    conv_layer *layer;
    size_t n_params;
    size_t col_max;             /* values of the largest im2col matrix     */
    size_t flip_total;          /* values of the flipped kernels           */
    size_t dwt_total;           /* values of the transposed dW and db      */
    size_t coutp_max;           /* the largest coutp                       */
    int shift;                  /* the last layer by shifted products
                                   (shift_apply), not im2col               */
    size_t wp, sp, ns;          /* its padded row w + 2 (k/2), plane stride
                                   in conv_ws.pad, product width           */
    int shiftw;                 /* and its dW from pixel-major copies
                                   (shift_back_wt): hid a multiple of 8    */
    size_t s_off;               /* then its dW (k k x cout x hid) and db
                                   (cout x 8) in conv_ws.dwt               */
    int split;                  /* every product goes to tgemm, so the
                                   channel split may run (conv_split.c)    */
    size_t madds;               /* forward multiply-adds of one image      */
    conv_tune *tune;            /* [2]: forward, backward; written by the
                                   passes (a net is otherwise read-only)   */
};

/* Workspace: the header, the tape (per image: x, ctx, each hidden
 * layer's activations, and with residual stages each stage's ReLU
 * output), the scratch of a whole backward call (flipped kernels,
 * transposed parameter gradient, constant rows), then the per-image
 * scratch that each thread of the channel split has its own copy of. */
typedef struct conv_head {
    uint64_t magic;
    size_t n;
} conv_head;

typedef struct conv_ws {
    flow_real *x, *cx, *h, *r;  /* tape                                    */
    /* a thread's own (carve_private) */
    flow_real *aug;             /* (c + ctx) x hw: image and context planes */
    flow_real *col, *dcol;      /* col_max each                            */
    flow_real *g[3];            /* hid x hwp each                          */
    flow_real *yt;              /* out_channels x hwp: the last layer's
                                   output, then its gradient               */
    flow_real *gt;              /* hwp x coutp_max: a gradient transposed  */
    flow_real *daug;            /* (c + ctx) x hw                          */
    flow_real *wf;              /* flipped kernels, written per backward   */
    flow_real *dwt;             /* dW^T and db^T of every layer, per
                                   backward                                */
    flow_real *ones;            /* hwp: 1 on the image's hw, then 0        */
    flow_real *pad;             /* hid planes of sp: zero-bordered input of
                                   the shifted layer                       */
    flow_real *gtp;             /* ns x coutp: its gradient transposed     */
    flow_real *onesp;           /* ns: 1 on its image columns, 0 elsewhere */
    flow_real *padt;            /* sp rows of hid: pad pixel-major         */
    flow_real *gp;              /* cout x ns: the gradient on the columns  */
    flow_real *ones8;           /* ns x 8: onesp in every column           */
    size_t total;
} conv_ws;

/* Shares lo .. hi-1 of k of one layer's work on one image ({0, 1, 1}:
 * all of it).  The k shares of a product partition its output entries
 * (rows, or columns in runs of 8), so that with the channel split
 * (conv_split.c) each entry is written by one thread, by a call on the
 * same operands as without the split; consecutive shares make one
 * range, computed in one call. */
typedef struct conv_part {
    size_t lo, hi, k;
} conv_part;

/* What a backward pass needs besides the tape. */
typedef struct conv_back_args {
    const flow_real *dy;        /* n images of cout planes                 */
    flow_real *dx, *dctx;       /* written, accumulated; may be NULL      */
    int grads, want_in;         /* dW and db; layer 0's input gradient     */
} conv_back_args;

/* Thread-private scratch (the workspace's last part) laid out from base +
 * off (base NULL: sizes only); returns the offset after it. */
size_t conv_carve_private(const conv_net *net, char *base, size_t off,
                          conv_ws *cw);
/* Zeroes the borders of cw's copies for the shifted last layer (back:
 * the backward's too); pad_fill and the gradients on the output columns
 * write only the image's positions. */
void conv_clear_shift(const conv_net *net, const conv_ws *cw, int back);
/* Layer l of image i in the forward pass, share p: of a hidden layer its
 * output channels (rows) with their bias, ReLU and residual sum; of the
 * last its output columns with their bias and copy into y.  cw's scratch
 * is the calling thread's, its tape shared. */
int conv_fwd_layer(const conv_net *net, const flow_real *params,
                   const conv_ws *cw, size_t n, size_t l, size_t i,
                   flow_real *y, conv_part p);
/* Layer l of image i in the backward pass, share p: gin = dL/d(h_l)
 * (the last layer reads ba->dy), gout = dL/d(h_{l-1}) (layer 0: dx and
 * dctx), dW and db accumulated (conv.c). */
int conv_back_layer(const conv_net *net, const flow_real *params, size_t n,
                    const conv_ws *cw, size_t l, size_t i,
                    const conv_back_args *ba, const flow_real *gin,
                    flow_real *gout, conv_part p);

/* The passes image by image on the calling thread (conv.c): one image's
 * operands stay in cache. */
int conv_fwd_serial(const conv_net *net, const flow_real *params, size_t n,
                    flow_real *y, const conv_ws *cw);
int conv_back_serial(const conv_net *net, const flow_real *params,
                     size_t n, const conv_back_args *ba, const conv_ws *cw);
/* The passes of a call on n images with the workspace cw (the backward's
 * shared scratch already filled): split over the pool lent to this
 * thread where that pays, else image by image (conv_split.c). */
int conv_fwd_run(const conv_net *net, const flow_real *params, size_t n,
                 flow_real *y, const conv_ws *cw);
int conv_back_run(const conv_net *net, const flow_real *params, size_t n,
                  const conv_back_args *ba, const conv_ws *cw);

#endif
