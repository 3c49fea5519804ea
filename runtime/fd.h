/* fd.h - internal: finite differences that survive kinks, shared by
 * `flowkit check` (cli/conform*.c) and the training probe (probe.c). */
#ifndef FLOW_RUNTIME_FD_H
#define FLOW_RUNTIME_FD_H

#include <math.h>

/* Maps such as splines are only piecewise smooth (the log-derivative jumps
 * at knots), so a central difference straddling a knot is wrong by
 * O(h * jump).  f is evaluated at 0, +-h, +-h/2, +-h/4 (fd_frac) and
 * three estimates are formed, each with one Richardson step: central
 * (error O(h^4)), forward and backward one-sided (O(h^2)).  The estimate
 * whose two step sizes agree best is used: on a smooth stretch that is the
 * central one; next to a kink, the side that does not cross it.  Steps are
 * the ones actually taken after rounding. */
#define FD_POINTS 7
/* Checks take the best of four step sizes (h, h/4, h/16, h/64): a wrong
 * formula disagrees at every step, while a knot or strong curvature
 * spoils only some of them. */
#define FD_LEVELS 4
static const double fd_frac[FD_POINTS] = {0, 1, -1, 0.5, -0.5, 0.25, -0.25};

/* The three estimates from values v[p] at the steps a[p] actually taken
 * (the order of fd_frac): est[] central, forward, backward; unc[] bounds
 * each one's error from above (the extrapolation's own correction, the
 * error of the finer raw estimate); dis[] how far its two step sizes
 * disagree. */
static inline void fd_estimates(const double v[FD_POINTS],
                                const double a[FD_POINTS], double est[3],
                                double unc[3], double dis[3])
{
    double c1 = (v[1] - v[2]) / (a[1] - a[2]);
    double c2 = (v[3] - v[4]) / (a[3] - a[4]);
    double f1 = (v[3] - v[0]) / (a[3] - a[0]);
    double f2 = (v[5] - v[0]) / (a[5] - a[0]);
    double b1 = (v[0] - v[4]) / (a[0] - a[4]);
    double b2 = (v[0] - v[6]) / (a[0] - a[6]);
    est[0] = (4 * c2 - c1) / 3;
    unc[0] = fabs(est[0] - c2);
    dis[0] = fabs(c2 - c1);
    est[1] = 2 * f2 - f1;
    unc[1] = fabs(est[1] - f2);
    dis[1] = fabs(f2 - f1);
    est[2] = 2 * b2 - b1;
    unc[2] = fabs(est[2] - b2);
    dis[2] = fabs(b2 - b1);
}

/* The estimate whose two step sizes agree best (central on ties), its
 * error bound in *unc. */
static inline double fd_extrapolate(const double v[FD_POINTS],
                                    const double a[FD_POINTS], double *unc)
{
    double est[3], u[3], dis[3];
    int k = 0;
    fd_estimates(v, a, est, u, dis);
    if (dis[1] < dis[k])
        k = 1;
    if (dis[2] < dis[k])
        k = 2;
    *unc = u[k];
    return est[k];
}

#endif
