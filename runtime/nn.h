/* nn.h - internal: the host's networks, a plain MLP and a MADE (masked
 * MLP), with forward, backward (VJP), JVP and the JVP's backward. */
/* The module's files: nn.c (creation and the MLP passes), nn_made.c (MADE
 * in degree order: masks, sampling steps, the blocked density pass),
 * nn_div.c (the divergence kernels); nn_impl.h is private to them.  A
 * FLOW_NET_CONV net is conv.c's, which the entries below hand it to
 * (nn_jvp and nn_jvp_backward: FLOW_ERR_UNSUPPORTED). */
#ifndef FLOW_RUNTIME_NN_H
#define FLOW_RUNTIME_NN_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow_plugin.h"

/* Parameter layout (docs/runtime.md): layers in order, each
 *     W  (rows x cols, row-major; rows = layer outputs, cols = layer
 *         inputs, plus one last column for t with FLOW_TIME_CONCAT),
 *     b  (rows),
 *     and with FLOW_TIME_CONCATSQUASH three more vectors of `rows`:
 *     gate weight a, gate bias c, time bias d.
 * Layer 0 inputs are x (D columns) then context (K columns).  A layer
 * computes u = W h + b (+ t W[:, last] with concat), with concatsquash
 * z = u * sigmoid(a t + c) + d t, else z = u; hidden layers apply the
 * activation, the last layer does not. */

/* The spec's entries, validated; NULL with a message in err on failure.
 * spectral_norm = c > 0: every layer uses W * min(1, c / sigma(W)) with
 * sigma computed exactly (LAPACK, la_top_singular) in each forward call
 * (no state between calls), gradients through sigma included. */
flow_net *nn_create(const flow_net_spec *spec, char *err, size_t err_cap);

/* MADE nets nn_create has made on the calling thread so far: the model
 * compares it around a layer's create and init to learn whether the
 * layer holds a host MADE, whose weight order changed with checkpoint
 * format 3 (model_upgrade_params). */
size_t nn_made_created(void);
void nn_destroy(flow_net *net);
size_t nn_params(const flow_net *net);
/* Random init (uniform, s = 1 / sqrt(fan_in): see nn.c), zero_last
 * respected.  rng may be NULL: then a stream seeded from spec->seed is
 * used. */
void nn_init(const flow_net *net, flow_real *params, flow_rng *rng);
/* Workspace bytes for calls of up to n rows (forward tape, JVP tape and
 * backward scratch).  0 when the size overflows. */
size_t nn_workspace(const flow_net *net, size_t n);

int nn_forward(const flow_net *net, const flow_real *params, size_t n,
               const flow_real *x, const flow_real *ctx, double t,
               flow_real *y, void *ws);
int nn_backward(const flow_net *net, const flow_real *params, size_t n,
                void *ws, const flow_real *dy, flow_real *dx,
                flow_real *dctx, flow_real *dparams);
int nn_jvp(const flow_net *net, const flow_real *params, size_t n, void *ws,
           const flow_real *tx, flow_real *ty);
int nn_jvp_backward(const flow_net *net, const flow_real *params, size_t n,
                    void *ws, const flow_real *tx, const flow_real *dty,
                    flow_real *dx, flow_real *dtx, flow_real *dparams);

/* Divergence (exact; or Hutchinson's with probes eps) with the tangents
 * stacked (nn_div.c): an MLP without context or derived weights whose D
 * outputs <= its inputs.  The
 * tape (returned size) is written by nn_div_forward and read by
 * nn_div_backward; the scratch (*scratch bytes) is free between calls.
 * 0 when the net is not supported.  tr NULL: y alone, the same bits, on
 * a tape the backward refuses. */
size_t nn_div_workspace(const flow_net *net, size_t n, size_t *scratch);
int nn_div_forward(const flow_net *net, const flow_real *params, size_t n,
                   const flow_real *x, double t, const flow_real *eps,
                   flow_real *y, flow_real *tr, void *tape, void *scratch);
int nn_div_backward(const flow_net *net, const flow_real *params, size_t n,
                    const void *tape, void *scratch, const flow_real *eps,
                    const flow_real *dy, const flow_real *dtr, flow_real *dx,
                    flow_real *dparams);
/* MADE sampling by degree and the premasked check (nn_made.c;
 * flow_plugin.h, net_made_step and net_mask_params). */
int nn_made_step(const flow_net *net, const flow_real *params, size_t n,
                 const flow_real *ctx, size_t step, const flow_real *x_prev,
                 flow_real *theta, void *ws);
int nn_mask_params(const flow_net *net, const flow_real *params,
                   flow_real *dst);
/* MADE in degree order, blocked (nn_made.c; flow_plugin.h, net_made_sort
 * ...): for premasked nets without time input; 0 / FLOW_ERR_UNSUPPORTED
 * otherwise. */
size_t nn_made_sorted_count(const flow_net *net);
int nn_made_sort(const flow_net *net, const flow_real *params,
                 flow_real *sorted);
int nn_made_forward(const flow_net *net, const flow_real *sorted, size_t n,
                    const flow_real *x, const flow_real *ctx, flow_real *y,
                    void *ws);
int nn_made_backward(const flow_net *net, const flow_real *sorted, size_t n,
                     void *ws, const flow_real *dy, flow_real *dx,
                     flow_real *dctx, flow_real *dparams);
int nn_made_grad(const flow_net *net, flow_real *grad, flow_real *sorted);
int nn_made_step_sorted(const flow_net *net, const flow_real *sorted,
                        size_t n, const flow_real *ctx, size_t step,
                        const flow_real *x_prev, flow_real *theta, void *ws);
/* The parameters whose gradient can be non-zero, as merged runs (offset,
 * length); the count, at most cap written (nn_made.c; flow_plugin.h,
 * net_made_grad_support). */
size_t nn_made_grad_support(const flow_net *net, size_t *runs, size_t cap);
/* A parameter vector of checkpoint format 2 (hidden units in the cyclic
 * order) into the degree-order layout, in place (nn_made.c; flow_plugin.h,
 * net_made_from_cyclic); nothing to do for an MLP. */
int nn_made_from_cyclic(const flow_net *net, flow_real *params);
/* The host's net_init: nn_init, a MADE's drawn as in the cyclic order and
 * converted, so that a seed keeps giving the same network (nn_made.c). */
void nn_made_net_init(const flow_net *net, flow_real *params, flow_rng *rng);

/* Portable export (nn_export.c; flow_plugin.h, net_export): the affine
 * maps as PREFIX.{k}.weight/bias (+ mask, time terms), weights as used,
 * and the attribute PREFIX describing the net. */
int nn_export(const flow_net *net, const flow_real *params,
              const char *prefix, const char *output_layout, flow_export *ex);
/* Ends a network's description: appends "output_layout" (when given) and
 * the closing brace to the open JSON object in b, hands it to ex as the
 * attribute `prefix`, and frees b (MLP, MADE and convolutional nets). */
struct json_buf;
int nn_export_describe(struct json_buf *b, const char *prefix,
                       const char *output_layout, flow_export *ex);

/* Introspection (tests, reports). */
size_t nn_layers(const flow_net *net);
/* Shape and parameter offsets of layer l: W is rows x cols at params +
 * *w_off, b at params + *b_off.  FLOW_ERR_INVAL when l is out of range. */
int nn_layer_shape(const flow_net *net, size_t l, size_t *rows,
                   size_t *cols, size_t *w_off, size_t *b_off);
/* MADE: the 0/1 mask of layer l (rows x cols, row-major, the time column
 * included), NULL for an MLP. */
const uint8_t *nn_layer_mask(const flow_net *net, size_t l);
/* FLOW_NET_CONV: conv.c's net inside (conv.h's introspection), NULL for
 * the other kinds. */
const struct conv_net *nn_conv(const flow_net *net);

#endif
