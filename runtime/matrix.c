/* matrix.c - the shape-checked GEMM over OpenBLAS (single-threaded: the
 * runtime threads over rows) and the LAPACKE helpers. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include <cblas.h>
#include <lapacke.h>

#include "flow/flow.h"
#include "matrix.h"

/* Largest dimension the BLAS/LAPACK integer types can hold. */
#define BLAS_DIM_MAX ((size_t)INT32_MAX)

/* ------------------------------------------------------------ threads */

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_init_once(void) { openblas_set_num_threads(1); }

void blas_init(void) { pthread_once(&blas_once, blas_init_once); }

int blas_threads(void)
{
    blas_init();
    return openblas_get_num_threads();
}

/* --------------------------------------------------------------- GEMM */

int blas_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k,
              flow_real alpha, const flow_real *a, size_t lda,
              const flow_real *b, size_t ldb, flow_real beta, flow_real *c,
              size_t ldc)
{
    /* stored widths: A is m x k (or k x m transposed), row-major */
    size_t acols = trans_a ? m : k, bcols = trans_b ? k : n;
    if (m > BLAS_DIM_MAX || n > BLAS_DIM_MAX || k > BLAS_DIM_MAX ||
        lda > BLAS_DIM_MAX || ldb > BLAS_DIM_MAX || ldc > BLAS_DIM_MAX)
        return FLOW_ERR_INVAL;
    if (lda < (acols ? acols : 1) || ldb < (bcols ? bcols : 1) ||
        ldc < (n ? n : 1))
        return FLOW_ERR_INVAL;
    if (m == 0 || n == 0)
        return FLOW_OK;
    if (!c || (k > 0 && (!a || !b)))
        return FLOW_ERR_INVAL;
    blas_init();
#if FLOW_REAL_DOUBLE
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
#else
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
#endif
    return FLOW_OK;
}

void blas_gemm_host(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                    flow_real alpha, const flow_real *a, size_t lda,
                    const flow_real *b, size_t ldb, flow_real beta,
                    flow_real *c, size_t ldc)
{
    if (blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                  ldc) != FLOW_OK) {
        /* the ABI entry cannot return a status: say so loudly instead */
        const flow_host *h = flow_host_services();
        h->log(FLOW_LOG_ERROR,
               "gemm: invalid call (m=%zu n=%zu k=%zu lda=%zu ldb=%zu "
               "ldc=%zu); C left unchanged", m, n, k, lda, ldb, ldc);
    }
}

/* ------------------------------------------------------------- LAPACK */

static lapack_int lu_factor(size_t d, flow_real *a, lapack_int *ipiv)
{
#if FLOW_REAL_DOUBLE
    return LAPACKE_dgetrf(LAPACK_ROW_MAJOR, (lapack_int)d, (lapack_int)d, a,
                          (lapack_int)d, ipiv);
#else
    return LAPACKE_sgetrf(LAPACK_ROW_MAJOR, (lapack_int)d, (lapack_int)d, a,
                          (lapack_int)d, ipiv);
#endif
}

int la_slogdet(size_t d, flow_real *a, double *logabs, int *sign)
{
    lapack_int *ipiv = NULL, info;
    int status = FLOW_OK, s = 1;
    double acc = 0.0;
    if (d == 0 || d > BLAS_DIM_MAX || !a || !logabs || !sign)
        return FLOW_ERR_INVAL;
    ipiv = malloc(d * sizeof *ipiv);
    if (!ipiv) {
        status = FLOW_ERR_NOMEM;
        goto fail;
    }
    blas_init();
    info = lu_factor(d, a, ipiv);
    if (info < 0) {
        status = FLOW_ERR_INVAL;
        goto fail;
    }
    /* det A = det P^T det L det U = (-1)^{#swaps} prod_i u_ii */
    for (size_t i = 0; i < d; i++) {
        double u = (double)a[i * d + i];
        if (ipiv[i] != (lapack_int)(i + 1))
            s = -s;
        if (u == 0.0) {
            s = 0;
            acc = -INFINITY;
            break;
        }
        if (u < 0)
            s = -s;
        acc += log(fabs(u));
    }
    *logabs = acc;
    *sign = s;
fail:
    free(ipiv);
    return status;
}

int la_matinv(size_t d, flow_real *a)
{
    lapack_int *ipiv = NULL, info;
    int status = FLOW_OK;
    if (d == 0 || d > BLAS_DIM_MAX || !a)
        return FLOW_ERR_INVAL;
    ipiv = malloc(d * sizeof *ipiv);
    if (!ipiv) {
        status = FLOW_ERR_NOMEM;
        goto fail;
    }
    blas_init();
    info = lu_factor(d, a, ipiv);
    if (info > 0) {
        status = FLOW_ERR_NUMERIC;
        goto fail;
    }
#if FLOW_REAL_DOUBLE
    if (info == 0)
        info = LAPACKE_dgetri(LAPACK_ROW_MAJOR, (lapack_int)d, a,
                              (lapack_int)d, ipiv);
#else
    if (info == 0)
        info = LAPACKE_sgetri(LAPACK_ROW_MAJOR, (lapack_int)d, a,
                              (lapack_int)d, ipiv);
#endif
    if (info != 0)
        status = info > 0 ? FLOW_ERR_NUMERIC : FLOW_ERR_INVAL;
fail:
    free(ipiv);
    return status;
}

/* ------------------------------------------------- top singular pair */

size_t la_top_singular_scratch(size_t rows, size_t cols)
{
    size_t k = rows < cols ? rows : cols;
    if (k == 0)
        k = 1;
    if (k > BLAS_DIM_MAX / 64)
        return 0;
    /* Gram k x k, eigenvalues k, work 26k (dsyevr's minimum), iwork 10k
     * and isuppz 2k lapack_ints (counted as doubles) */
    return (k * k + k + 26 * k + 12 * k) * sizeof(double);
}

int la_top_singular(size_t rows, size_t cols, const flow_real *a,
                    double *sigma, double *u, double *v, void *scratch)
{
    int by_cols = cols <= rows;         /* Gram a^T a (cols) or a a^T (rows) */
    size_t k = by_cols ? cols : rows, o = by_cols ? rows : cols;
    double *g = scratch, *w = g + k * k, *work = w + k, *z, *other;
    lapack_int *iwork = (lapack_int *)(void *)(work + 26 * k);
    lapack_int *isuppz = iwork + 10 * k, found = 0, info;
    double nrm = 0;
    if (!rows || !cols || rows > BLAS_DIM_MAX / 64 || cols > BLAS_DIM_MAX / 64
        || !a || !scratch)
        return FLOW_ERR_INVAL;
    blas_init();        /* before any LAPACK call: its BLAS must be
                           single-threaded too, or bits depend on timing */
    z = by_cols ? v : u;                /* the eigenvector */
    other = by_cols ? u : v;
    /* g_ij = sum_t a(t, i) a(t, j) over the longer side (symmetric, so
     * row- and column-major agree) */
    for (size_t i = 0; i < k; i++)
        for (size_t j = i; j < k; j++) {
            double s = 0;
            for (size_t t = 0; t < o; t++)
                s += by_cols ? (double)a[t * cols + i] * a[t * cols + j]
                             : (double)a[i * cols + t] * a[j * cols + t];
            g[i * k + j] = g[j * k + i] = s;
        }
    info = LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'U',
                               (lapack_int)k, g, (lapack_int)k, 0, 0,
                               (lapack_int)k, (lapack_int)k, 0, &found, w, z,
                               (lapack_int)k, isuppz, work,
                               (lapack_int)(26 * k), iwork,
                               (lapack_int)(10 * k));
    if (info != 0 || found != 1)
        return FLOW_ERR_NUMERIC;
    *sigma = w[0] > 0 ? sqrt(w[0]) : 0;
    /* the other vector: a v / sigma or a^T u / sigma, normalised */
    for (size_t i = 0; i < o; i++) {
        double s = 0;
        for (size_t j = 0; j < k; j++)
            s += by_cols ? (double)a[i * cols + j] * z[j]
                         : (double)a[j * cols + i] * z[j];
        other[i] = s;
        nrm += s * s;
    }
    nrm = sqrt(nrm);
    for (size_t i = 0; i < o; i++)
        other[i] = nrm > 0 ? other[i] / nrm : (i == 0);
    return FLOW_OK;
}
