/* matrix.h - internal: row-major matrix views over flow_real (GSL-style
 * rows/cols/stride/data/owner), a shape-checked GEMM over OpenBLAS, and
 * the small dense LAPACK helpers of the host table (slogdet, inverse). */
#ifndef FLOW_RUNTIME_MATRIX_H
#define FLOW_RUNTIME_MATRIX_H

#include <stddef.h>

#include "flow/flow_plugin.h"

/* A rows x cols matrix; element (i, j) at data[i * stride + j], stride >=
 * cols.  A view borrows `data` (owner 0); mat_alloc'ed matrices own it
 * (owner 1) and mat_free releases it. */
typedef struct mat {
    size_t rows, cols, stride;
    flow_real *data;
    int owner;
} mat;

/* Transpose flags for mat_gemm / blas_gemm (as in the host table). */
enum { MAT_NOTRANS = 0, MAT_TRANS = 1 };

/* New zeroed rows x cols matrix (stride = cols), or NULL when out of
 * memory or rows * cols overflows.  Free with mat_free. */
mat *mat_alloc(size_t rows, size_t cols);
/* Frees m and, when it owns them, its data.  NULL is a no-op. */
void mat_free(mat *m);
/* Borrowing view of caller memory. */
mat mat_view(flow_real *data, size_t rows, size_t cols, size_t stride);
/* Borrowing view of the block starting at (i, j) of size rows x cols;
 * the caller guarantees the block lies inside m (asserted). */
mat mat_submatrix(const mat *m, size_t i, size_t j, size_t rows,
                  size_t cols);
/* Element access (no bounds check beyond an assert). */
flow_real mat_get(const mat *m, size_t i, size_t j);
void mat_set(mat *m, size_t i, size_t j, flow_real v);
void mat_set_zero(mat *m);

/* C = alpha op(A) op(B) + beta C with shape checks first (GSL's
 * gsl_blas_dgemm contract): FLOW_ERR_INVAL on a mismatch or a dimension
 * beyond the BLAS integer range, C untouched; FLOW_OK otherwise. */
int mat_gemm(int trans_a, int trans_b, flow_real alpha, const mat *a,
             const mat *b, flow_real beta, mat *c);

/* The raw row-major GEMM of the host table: op(A) is m x k, op(B) k x n,
 * C m x n.  Leading dimensions are checked (lda >= columns of A as
 * stored, ...); an invalid call is logged and leaves C untouched (the ABI
 * entry returns void).  Returns the status for internal callers. */
int blas_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k,
              flow_real alpha, const flow_real *a, size_t lda,
              const flow_real *b, size_t ldb, flow_real beta, flow_real *c,
              size_t ldc);
/* Same with the host table's void signature. */
void blas_gemm_host(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                    flow_real alpha, const flow_real *a, size_t lda,
                    const flow_real *b, size_t ldb, flow_real beta,
                    flow_real *c, size_t ldc);

/* Puts OpenBLAS in single-threaded mode, once per process (the runtime
 * threads over rows itself; see docs/runtime.md for the measurement).
 * Called by every GEMM entry; callable early (context creation). */
void blas_init(void);
/* Threads OpenBLAS currently uses (for tests and `flowkit info`). */
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
