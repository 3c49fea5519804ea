/* tolerances.h - internal: the tolerances of the layer checks, shared by
 * `flowkit check` (cli/conform*.c) and the training probe (probe.c). */
#ifndef FLOW_RUNTIME_TOLERANCES_H
#define FLOW_RUNTIME_TOLERANCES_H

#include "flow/flow_version.h"  /* FLOW_REAL_DOUBLE */

/* Documented in docs/plugins.md, "Tolerances": float64 builds are held to
 * near machine precision, float32 builds to what central differences in
 * single precision can resolve. */
#if FLOW_REAL_DOUBLE
# define TOL_ROUNDTRIP 1e-9
# define TOL_LOGDET 1e-9
# define FD_STEP 1e-6
# define TOL_FD 1e-6
#else
# define TOL_ROUNDTRIP 1e-4
# define TOL_LOGDET 1e-4
# define FD_STEP 1e-2
# define TOL_FD 2e-3
#endif

#endif
