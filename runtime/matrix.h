/* matrix.h - internal: the shape-checked row-major GEMM over OpenBLAS and
 * the small dense LAPACK helpers of the host table (slogdet, inverse). */
#ifndef FLOW_RUNTIME_MATRIX_H
#define FLOW_RUNTIME_MATRIX_H

#include <stddef.h>

#include "flow/flow_plugin.h"

/* C = alpha op(A) op(B) + beta C, row-major, the GEMM of the host table:
 * op(A) is m x k, op(B) k x n, C m x n; trans_a / trans_b 0 or 1.  The
 * shapes are checked before CBLAS is called (GSL's gsl_blas_dgemm
 * contract, with a status instead of an abort): lda >= the columns of A
 * as stored, likewise ldb and ldc, every dimension within the BLAS
 * integer range.  FLOW_ERR_INVAL on a bad call, C untouched; FLOW_OK
 * otherwise. */
int blas_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k,
              flow_real alpha, const flow_real *a, size_t lda,
              const flow_real *b, size_t ldb, flow_real beta, flow_real *c,
              size_t ldc);
/* Same with the host table's void signature: a bad call is logged at
 * error level and leaves C untouched. */
void blas_gemm_host(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                    flow_real alpha, const flow_real *a, size_t lda,
                    const flow_real *b, size_t ldb, flow_real beta,
                    flow_real *c, size_t ldc);

/* Puts OpenBLAS in single-threaded mode, once per process (the runtime
 * threads over rows itself; see docs/runtime.md for the measurement).
 * Every GEMM and LAPACK entry here calls it first. */
void blas_init(void);
/* Threads OpenBLAS currently uses (the matrix suite checks it is 1). */
int blas_threads(void);

/* log|det A| and its sign (0 when A is singular, then *logabs = -inf) of
 * a row-major d x d matrix, overwritten by its LU factors (LAPACK getrf).
 * FLOW_ERR_INVAL for d = 0 or beyond the LAPACK integer range,
 * FLOW_ERR_NOMEM when the pivot array cannot be allocated. */
int la_slogdet(size_t d, flow_real *a, double *logabs, int *sign);
/* In-place inverse of a row-major d x d matrix (getrf + getri);
 * FLOW_ERR_NUMERIC when singular (a is then undefined). */
int la_matinv(size_t d, flow_real *a);

/* Largest singular value sigma of the row-major rows x cols matrix a with
 * its singular vectors (a v = sigma u, |u| = |v| = 1), from the top
 * eigenpair of the smaller Gram matrix (a^T a or a a^T) by LAPACK dsyevr,
 * in double, without allocating: `scratch` holds
 * la_top_singular_scratch(rows, cols) bytes (8-byte aligned).  A zero
 * matrix gives sigma 0 and unit vectors e_1. */
size_t la_top_singular_scratch(size_t rows, size_t cols);
int la_top_singular(size_t rows, size_t cols, const flow_real *a,
                    double *sigma, double *u, double *v, void *scratch);

#endif
