/* flowc.h - the flowkit compiler API (libflowc): .flow specs to verified
 * layer graphs.  The calls arrive with the compiler (docs/language.md). */
#ifndef FLOWC_H
#define FLOWC_H

#include "flow/flow.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the compiler's spec language. */
#define FLOW_LANGUAGE_VERSION 1

#ifdef __cplusplus
}
#endif
#endif /* FLOWC_H */
