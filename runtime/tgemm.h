/* tgemm.h - internal: a register-tiled float GEMM (AVX2 + FMA, AVX-512)
 * for narrow layers, the runtime's hand-written SIMD GEMM. */
#ifndef FLOW_RUNTIME_TGEMM_H
#define FLOW_RUNTIME_TGEMM_H

/* For the divergence kernels of nn_div.c (64 x 64 weights against a few
 * hundred rows), where OpenBLAS's packing costs a third of the time, the
 * convolutions of conv.c (one image per call, so that its bits are its
 * own), and the plain MLPs of nn.c (a coupling's conditioner, 128 x 128
 * weights against 256-row blocks): OpenBLAS 0.3.21 runs its AVX2 kernel
 * on CPUs with full-width AVX-512 (Zen 5), where these tiles run at
 * twice its rate.  The AVX-512 path computes every entry as the AVX2 one
 * does: the same bits on either CPU (tgemm_dot is AVX-512 only).
 * Chosen at run time; elsewhere (other CPUs, other compilers, the float64
 * build) tgemm declines and the caller uses blas_gemm. */

#include <stddef.h>

/* C[i][j] = sum_k A(i, k) B[k][j] + (bias: bias[j]; else acc: C[i][j];
 * else 0) for i < m, j < n, with A(i, k) = a[i * ars + k * acs] (so a
 * row-major A has ars = lda, acs = 1, and a transposed one ars = 1, acs =
 * lda), B row-major (ldb) and C row-major (ldc).  Each C[i][j] is one
 * sequence of fused multiply-adds over k = 0, 1, ... from 0, then the
 * bias or C added: a row's values do not depend on m or on the other
 * rows, and a column's values do not depend on n or on the columns
 * beside it (the last n % 8 or n % 16 columns run in a tile with masked
 * loads and stores: no entry of C outside the m x n block, of B or bias
 * outside its n columns, is read or written).  Any m, n, k; returns 1
 * when done, 0 when declined (nothing written): no AVX2 + FMA, or not
 * built in. */
int tgemm(size_t m, size_t n, size_t k, const float *a, size_t ars,
          size_t acs, const float *b, size_t ldb, const float *bias, int acc,
          float *c, size_t ldc);

/* What tgemm_ep does to each entry after the products, in this order:
 * the bias or C added (as tgemm's bias and acc), then ReLU (relu: v =
 * pos_mask(v) v, nn_impl.h, -0 for v <= -0), then the gate (v *=
 * pos_mask(gate[i * ldg + j]): ReLU's derivative read from its output),
 * then v stored and (colsum) added to colsum[j], rows in increasing
 * order, so colsum[j] ends as colsum[j] + v_0 + v_1 + ... in float
 * (each entry then depends on the row order within the call, as a
 * column sum must).  NULL / 0 fields are skipped. */
typedef struct tgemm_epi {
    const float *bias;
    int acc;
    int relu;
    const float *gate;
    size_t ldg;
    float *colsum;
} tgemm_epi;

/* tgemm with an epilogue (ep NULL: none, C = A B); returns 1 when done, 0
 * when declined as tgemm. */
int tgemm_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
             size_t acs, const float *b, size_t ldb, const tgemm_epi *ep,
             float *c, size_t ldc);

/* C[i][j] = sum_q A[i][q] Bt[j][q] + (bias: bias[j]; else acc: C[i][j];
 * else 0), A row-major (lda), Bt row-major (ldbt: B transposed, e.g. a
 * weight matrix W of y = x W^T), for narrow C (a layer of 1 or 2 outputs,
 * where tgemm's 8-column tiles would idle): dot products along k, 16 at a
 * time, in a fixed order whatever m and n.  Any n; AVX-512 only, else
 * declined (0, nothing written). */
int tgemm_dot(size_t m, size_t n, size_t k, const float *a, size_t lda,
              const float *bt, size_t ldbt, const float *bias, int acc,
              float *c, size_t ldc);

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (a weight
 * matrix W into the B = W^T of x W^T), 16 x 16 blocks in registers with
 * AVX-512; on any CPU. */
void tgemm_transpose(size_t rows, size_t cols, const float *src, size_t lds,
                     float *dst, size_t ldd);

/* 2: AVX-512 kernels, 1: AVX2 + FMA only, 0: tgemm declines everything */
int tgemm_level(void);

/* Caps tgemm_level() at cap (2: no cap), so that a test can run the AVX2
 * path on an AVX-512 CPU and compare the bits; not for concurrent use
 * with products in flight. */
void tgemm_cap_level(int cap);

/* bf16 products with float sums (opt-in, flow_model_set_precision): A
 * and B rounded to bf16 (round to nearest even; subnormals read as 0)
 * and each C[i][j] = sum over p of (A(i, 2p) B[2p][j] + A(i, 2p+1)
 * B[2p+1][j]) in float by VDPBF16PS pairs along k (k odd: a zero pair
 * last), then the epilogue of tgemm_ep.  As tgemm, a row's values do not
 * depend on m or the other rows.  Returns 0 (nothing written) where n is
 * not a multiple of 8, the CPU lacks AVX512-BF16 or the packing buffer
 * ((m + n) ceil(k / 2) words) cannot be allocated. */
int tgemm_bf16_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                  size_t acs, const float *b, size_t ldb,
                  const tgemm_epi *ep, float *c, size_t ldc);

/* 1 where tgemm_bf16_ep runs (AVX512-BF16 + F + BW + VL, zmm state
 * enabled by the OS), else 0 */
int tgemm_bf16_level(void);

/* The calling thread's precision for tgemm_mixed / tgemm_mixed_ep: 1 =
 * bf16 products.  The executor sets it from the model on every layer
 * call (exec_fill_call), so a net runs at the precision of the model
 * whose layer calls it. */
void tgemm_set_bf16(int on);
int tgemm_bf16_on(void);

/* tgemm_bf16_ep when this thread's precision is bf16, k >= 16 (shallower
 * products run as fast on the float tiles) and it runs, else tgemm_ep /
 * tgemm: the products of the MLP and MADE conditioners. */
int tgemm_mixed_ep(size_t m, size_t n, size_t k, const float *a, size_t ars,
                   size_t acs, const float *b, size_t ldb,
                   const tgemm_epi *ep, float *c, size_t ldc);
int tgemm_mixed(size_t m, size_t n, size_t k, const float *a, size_t ars,
                size_t acs, const float *b, size_t ldb, const float *bias,
                int acc, float *c, size_t ldc);

#endif
