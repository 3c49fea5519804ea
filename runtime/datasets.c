/* datasets.c - built-in toy data sets: the eight 2-D densities of FFJORD's
 * toy experiments (Grathwohl et al. 2019, sec. 5.1), a D-dim GMM and
 * small binary images of squares and discs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "datasets.h"
#include "rng.h"

#define PI 3.14159265358979323846

/* The definitions follow FFJORD's toy_data.py (rtqichen/ffjord) with one
 * deliberate change: a sample's component (moon, ring, spiral, arm) and
 * curve position are drawn i.i.d. instead of on an evenly split
 * deterministic grid, so every row is an independent draw of the same
 * population density.  See docs/formats.md for each definition. */

static const char *const names[] = {
    "moons", "circles", "8gaussians", "checkerboard", "pinwheel",
    "2spirals", "rings", "swissroll", "gmm", "shapes", NULL
};

const char *const *datasets_names(void) { return names; }

static int known(const char *name)
{
    if (!name)
        return 0;
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], name))
            return 1;
    return 0;
}

int datasets_has_density(const char *name)
{
    return !strcmp(name, "8gaussians") || !strcmp(name, "checkerboard")
           || !strcmp(name, "gmm");
}

size_t datasets_dim(const datasets_params *p)
{
    if (!known(p->name))
        return 0;
    if (!strcmp(p->name, "gmm"))
        return p->dim ? p->dim : 2;
    if (!strcmp(p->name, "shapes"))
        return (p->dim ? p->dim : 8) * (p->dim ? p->dim : 8);
    return 2;
}

/* shapes: one filled square or disc (a fair coin) per image of S x S
 * pixels, 255 inside, 0 outside; the square's side and the disc's
 * diameter uniform in S/4 .. S/2 (at least 2), placed uniformly where
 * they fit.  A pixel is inside the disc when its centre is. */
static void draw_shape(flow_rng *r, size_t side, flow_real *img)
{
    size_t lo = side / 4 < 2 ? 2 : side / 4, hi = side / 2 < lo ? lo
                                                                : side / 2;
    size_t k = lo + (size_t)rng_below(r, hi - lo + 1);
    size_t y0 = (size_t)rng_below(r, side - k + 1);
    size_t x0 = (size_t)rng_below(r, side - k + 1);
    int disc = (int)rng_below(r, 2);
    double c = k / 2.0, rad2 = c * c;
    for (size_t y = 0; y < k; y++)
        for (size_t x = 0; x < k; x++) {
            double dy = (double)y + 0.5 - c, dx = (double)x + 0.5 - c;
            if (!disc || dx * dx + dy * dy <= rad2)
                img[(y0 + y) * side + x0 + x] = 255;
        }
}

static size_t gmm_k(const datasets_params *p)
{
    return p->components ? p->components : 8;
}

/* 8gaussians: centres on the circle of radius 4 at angles k*pi/4 (in the
 * order E, W, N, S, NE, SE, NW, SW), isotropic noise of std 0.5, then
 * everything divided by 1.414.  So x ~ (1/8) sum_k N(mu_k, s^2 I) with
 * mu_k = 4 c_k / 1.414 and s = 0.5 / 1.414. */
#define G8_DIV 1.414
#define G8_SIGMA (0.5 / G8_DIV)
static void g8_centre(int k, double *cx, double *cy)
{
    static const double c[8][2] = {
        {1, 0}, {-1, 0}, {0, 1}, {0, -1}, {M_SQRT1_2, M_SQRT1_2},
        {M_SQRT1_2, -M_SQRT1_2}, {-M_SQRT1_2, M_SQRT1_2},
        {-M_SQRT1_2, -M_SQRT1_2}
    };
    *cx = 4.0 * c[k][0] / G8_DIV;
    *cy = 4.0 * c[k][1] / G8_DIV;
}

/* gmm: K equal-weight components N(mu_k, 0.5^2 I) in D dimensions; the
 * means are uniform in [-4, 4]^D, drawn from rng_seed(means_seed) in
 * component-major order, so (D, K, means_seed) fixes the density and
 * --seed only the samples. */
#define GMM_SIGMA 0.5
#define GMM_BOX 4.0
static double *gmm_means(flow_ctx *ctx, const datasets_params *p)
{
    size_t d = datasets_dim(p), k = gmm_k(p);
    double *mu;
    flow_rng r;
    if (k > SIZE_MAX / d / sizeof *mu || !(mu = malloc(k * d * sizeof *mu))) {
        flow_ctx_error(ctx, FLOW_ERR_NOMEM, "gmm: out of memory");
        return NULL;
    }
    rng_seed(&r, p->means_seed);
    for (size_t i = 0; i < k * d; i++)
        mu[i] = GMM_BOX * (2.0 * rng_uniform(&r) - 1.0);
    return mu;
}

/* log (1/K) sum_k N(x; mu_k, s^2 I), by log-sum-exp. */
static double mixture_logpdf(const double *x, const double *mu, size_t k,
                             size_t d, double s)
{
    double best = -HUGE_VAL, sum = 0, *q, qs[64];
    q = k <= 64 ? qs : malloc(k * sizeof *q);
    if (!q)
        return NAN;
    for (size_t j = 0; j < k; j++) {
        double r2 = 0;
        for (size_t i = 0; i < d; i++) {
            double t = x[i] - mu[j * d + i];
            r2 += t * t;
        }
        q[j] = -0.5 * r2 / (s * s);
        if (q[j] > best)
            best = q[j];
    }
    for (size_t j = 0; j < k; j++)
        sum += exp(q[j] - best);
    if (q != qs)
        free(q);
    return best + log(sum) - log((double)k)
           - 0.5 * (double)d * log(2 * PI * s * s);
}

/* checkerboard: x1 ~ U[-2, 2), x2 ~ U[0, 1) - 2 B + (floor(x1) mod 2)
 * with B ~ Bernoulli(1/2), then both times 2: uniform on the 8 squares
 * (i + j even, i = floor(x1 / 2), j = floor(x2 / 2)) of a 4 x 4 board of
 * side-2 squares on [-4, 4]^2.  Density 1/32 on them, 0 elsewhere. */
static double checker_logpdf(double x1, double x2)
{
    double i = floor(x1 / 2), j = floor(x2 / 2);
    if (x1 < -4 || x1 >= 4 || x2 < -4 || x2 >= 4)
        return -HUGE_VAL;
    return fmod(fabs(i + j), 2.0) == 0 ? -log(32.0) : -HUGE_VAL;
}

/* One 2-D sample of the named set into (x, y); *label gets the component
 * (8gaussians). */
static void sample2(const char *name, flow_rng *r, double *x, double *y,
                    int *label)
{
    double t, u, a, f0, f1;
    if (!strcmp(name, "moons")) {
        /* sklearn make_moons: upper (cos t, sin t), lower (1 - cos t,
         * 1/2 - sin t), t ~ U(0, pi); noise 0.1; then 2 x + (-1, -0.2) */
        t = PI * rng_uniform(r);
        if (rng_below(r, 2) == 0)
            *x = cos(t), *y = sin(t);
        else
            *x = 1 - cos(t), *y = 0.5 - sin(t);
        *x = 2 * (*x + 0.1 * rng_normal1(r)) - 1;
        *y = 2 * (*y + 0.1 * rng_normal1(r)) - 0.2;
    } else if (!strcmp(name, "circles")) {
        /* sklearn make_circles(factor 0.5, noise 0.08), times 3 */
        t = 2 * PI * rng_uniform(r);
        u = rng_below(r, 2) == 0 ? 1.0 : 0.5;
        *x = 3 * (u * cos(t) + 0.08 * rng_normal1(r));
        *y = 3 * (u * sin(t) + 0.08 * rng_normal1(r));
    } else if (!strcmp(name, "8gaussians")) {
        double cx, cy, ex = rng_normal1(r), ey = rng_normal1(r);
        int k = (int)rng_below(r, 8);
        g8_centre(k, &cx, &cy);
        *x = cx + G8_SIGMA * ex;
        *y = cy + G8_SIGMA * ey;
        *label = k;
    } else if (!strcmp(name, "checkerboard")) {
        double x1 = 4 * rng_uniform(r) - 2;
        double x2 = rng_uniform(r) - 2.0 * (double)rng_below(r, 2);
        x2 += fmod(fabs(floor(x1)), 2.0);
        *x = 2 * x1;
        *y = 2 * x2;
    } else if (!strcmp(name, "pinwheel")) {
        /* 5 arms; radial N(1, 0.3^2), tangential N(0, 0.1^2), rotated by
         * 2 pi k / 5 + 0.25 exp(radial); times 2 */
        int k = (int)rng_below(r, 5);
        f0 = 1 + 0.3 * rng_normal1(r);
        f1 = 0.1 * rng_normal1(r);
        a = 2 * PI * k / 5 + 0.25 * exp(f0);
        *x = 2 * (f0 * cos(a) + f1 * sin(a));
        *y = 2 * (-f0 * sin(a) + f1 * cos(a));
    } else if (!strcmp(name, "2spirals")) {
        /* t = sqrt(U) * 3 pi; (-t cos t, t sin t) + U(0, 0.5)^2, the
         * second spiral mirrored through the origin; / 3; noise 0.1 */
        double s = rng_below(r, 2) == 0 ? 1.0 : -1.0;
        t = sqrt(rng_uniform(r)) * 540 * (2 * PI) / 360;
        *x = -cos(t) * t + 0.5 * rng_uniform(r);
        *y = sin(t) * t + 0.5 * rng_uniform(r);
        *x = s * *x / 3 + 0.1 * rng_normal1(r);
        *y = s * *y / 3 + 0.1 * rng_normal1(r);
    } else if (!strcmp(name, "rings")) {
        /* four circles of radius 3 * (1.2, 0.9, 0.55, 0.25), noise 0.08 */
        static const double rad[4] = {1.2, 0.9, 0.55, 0.25};
        double rr = 3 * rad[rng_below(r, 4)];
        t = 2 * PI * rng_uniform(r);
        *x = rr * cos(t) + 0.08 * rng_normal1(r);
        *y = rr * sin(t) + 0.08 * rng_normal1(r);
    } else {  /* swissroll */
        /* sklearn make_swiss_roll(noise 1.0): t = 1.5 pi (1 + 2 U),
         * (t cos t, t sin t) + N(0, 1); the (x, z) plane, / 5 */
        t = 1.5 * PI * (1 + 2 * rng_uniform(r));
        *x = (t * cos(t) + rng_normal1(r)) / 5;
        *y = (t * sin(t) + rng_normal1(r)) / 5;
    }
}

int datasets_logprob(flow_ctx *ctx, const datasets_params *p,
                     const flow_real *x, size_t n, double *out)
{
    size_t d = datasets_dim(p);
    double *mu = NULL, *row = NULL, m8[16];
    int rc = FLOW_OK;
    if (!known(p->name))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "unknown data set '%s'",
                              p->name);
    if (!datasets_has_density(p->name))
        return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "data set '%s' has "
                              "no known density (only 8gaussians, "
                              "checkerboard and gmm have one)", p->name);
    if (!(row = malloc(d * sizeof *row)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
    if (!strcmp(p->name, "gmm") && !(mu = gmm_means(ctx, p))) {
        rc = FLOW_ERR_NOMEM;
        goto fail;
    }
    for (int k = 0; k < 8; k++)
        g8_centre(k, &m8[2 * k], &m8[2 * k + 1]);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++)
            row[j] = x[i * d + j];
        if (!strcmp(p->name, "8gaussians"))
            out[i] = mixture_logpdf(row, m8, 8, 2, G8_SIGMA);
        else if (!strcmp(p->name, "checkerboard"))
            out[i] = checker_logpdf(row[0], row[1]);
        else
            out[i] = mixture_logpdf(row, mu, gmm_k(p), d, GMM_SIGMA);
    }
fail:
    free(mu);
    free(row);
    return rc;
}

static int validate(flow_ctx *ctx, const datasets_params *p, int want_logp)
{
    int is_gmm;
    if (!p->name)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "no data set name given");
    if (!known(p->name))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "unknown data set '%s' "
                              "(known: moons, circles, 8gaussians, "
                              "checkerboard, pinwheel, 2spirals, rings, "
                              "swissroll, gmm, shapes)", p->name);
    is_gmm = !strcmp(p->name, "gmm");
    if (p->n == 0 || p->n > 100000000)
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "%s: the number of samples "
                              "must be in 1..100000000", p->name);
    if (want_logp && !datasets_has_density(p->name))
        return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "data set '%s' has "
                              "no known density (only 8gaussians, "
                              "checkerboard and gmm have one)", p->name);
    if (p->labels && strcmp(p->name, "8gaussians"))
        return flow_ctx_error(ctx, FLOW_ERR_UNSUPPORTED, "labels are only "
                              "defined for 8gaussians, not '%s'", p->name);
    if (!strcmp(p->name, "shapes")) {
        /* dim is the side of the images */
        if (p->components || (p->dim && (p->dim < 4 || p->dim > 256)))
            return flow_ctx_error(ctx, FLOW_ERR_INVAL, "shapes: the image "
                                  "size is 4..256, and there are no "
                                  "components");
        return FLOW_OK;
    }
    if (!is_gmm && (p->dim || p->components))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "dimension and components "
                              "apply to gmm only, not '%s'", p->name);
    if (is_gmm && (datasets_dim(p) > 4096 || gmm_k(p) > 4096))
        return flow_ctx_error(ctx, FLOW_ERR_INVAL, "gmm: dimension and "
                              "components are limited to 4096");
    return FLOW_OK;
}

int datasets_generate(flow_ctx *ctx, const datasets_params *p,
                      flow_data **out, flow_real **logp)
{
    size_t d = datasets_dim(p), c, k = 0;
    flow_data *data = NULL;
    flow_real *lp = NULL;
    double *lpd = NULL, *mu = NULL;
    char **nm = NULL;
    flow_rng r;
    int rc;

    *out = NULL;
    if (logp)
        *logp = NULL;
    if ((rc = validate(ctx, p, logp != NULL)))
        return rc;
    c = p->labels ? 8 : 0;
    if (!(data = data_new(ctx, p->n, d, c)))
        return FLOW_ERR_NOMEM;
    rng_seed(&r, p->seed);
    if (!strcmp(p->name, "gmm")) {
        if (!(mu = gmm_means(ctx, p))) {
            rc = FLOW_ERR_NOMEM;
            goto fail;
        }
        k = gmm_k(p);
        for (size_t i = 0; i < p->n; i++) {
            size_t j = (size_t)rng_below(&r, k);
            for (size_t t = 0; t < d; t++)
                data->x[i * d + t] = (flow_real)(mu[j * d + t] + GMM_SIGMA
                                                 * rng_normal1(&r));
        }
    } else if (!strcmp(p->name, "shapes")) {
        size_t side = p->dim ? p->dim : 8;
        for (size_t i = 0; i < p->n; i++)
            draw_shape(&r, side, data->x + i * d);
        data->rank = 3;
        data->shape[0] = 1;
        data->shape[1] = data->shape[2] = side;
    } else {
        for (size_t i = 0; i < p->n; i++) {
            double x, y;
            int label = 0;
            sample2(p->name, &r, &x, &y, &label);
            data->x[2 * i] = (flow_real)x;
            data->x[2 * i + 1] = (flow_real)y;
            if (c)
                data->ctx[i * c + (size_t)label] = 1;
        }
    }
    /* names x0.., label0.. */
    if (!(nm = calloc(d + c, sizeof *nm))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t j = 0; j < d + c; j++) {
        if (!(nm[j] = malloc(32))) {
            rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
            goto fail;
        }
        if (j < d)
            snprintf(nm[j], 32, "x%zu", j);
        else
            snprintf(nm[j], 32, "label%zu", j - d);
    }
    if ((rc = data_set_names(ctx, data, (const char *const *)nm)))
        goto fail;
    if (logp) {
        if (!(lpd = malloc(p->n * sizeof *lpd))
            || !(lp = malloc(p->n * sizeof *lp))) {
            rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
            goto fail;
        }
        if ((rc = datasets_logprob(ctx, p, data->x, p->n, lpd)))
            goto fail;
        for (size_t i = 0; i < p->n; i++)
            lp[i] = (flow_real)lpd[i];
        *logp = lp;
        lp = NULL;
    }
    *out = data;
    data = NULL;
fail:
    if (nm)
        for (size_t j = 0; j < d + c; j++)
            free(nm[j]);
    free(nm);
    free(mu);
    free(lpd);
    free(lp);
    data_free(data);
    return rc;
}

const char *const *flow_dataset_names(void) { return names; }

int flow_data_generate(flow_ctx *ctx, const flow_dataset_params *p,
                       flow_data **out)
{
    flow_data *a = NULL, *b = NULL;
    flow_real *lp = NULL;
    const char **nm = NULL;
    int rc;
    *out = NULL;
    if ((rc = datasets_generate(ctx, p, &a, p->with_logprob ? &lp : NULL)))
        return rc;
    if (!lp) {
        *out = a;
        return FLOW_OK;
    }
    /* the same table with "logprob" as one more context column */
    if (!(b = data_new(ctx, a->n, a->d, a->c + 1))) {
        rc = FLOW_ERR_NOMEM;
        goto fail;
    }
    memcpy(b->x, a->x, a->n * a->d * sizeof *b->x);
    for (size_t i = 0; i < a->n; i++) {
        for (size_t j = 0; j < a->c; j++)
            b->ctx[i * b->c + j] = a->ctx[i * a->c + j];
        b->ctx[i * b->c + a->c] = lp[i];
    }
    if (!(nm = malloc((b->d + b->c) * sizeof *nm))) {
        rc = flow_ctx_error(ctx, FLOW_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t j = 0; j < a->d + a->c; j++)
        nm[j] = a->names[j];
    nm[a->d + a->c] = "logprob";
    if ((rc = data_set_names(ctx, b, nm)))
        goto fail;
    *out = b;
    b = NULL;
fail:
    free(nm);
    free(lp);
    data_free(a);
    data_free(b);
    return rc;
}
