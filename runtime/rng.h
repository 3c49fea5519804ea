/* rng.h - internal: the runtime's random streams (xoshiro256**), the
 * struct behind the opaque flow_rng of the plugin ABI. */
#ifndef FLOW_RUNTIME_RNG_H
#define FLOW_RUNTIME_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "flow/flow_plugin.h"

struct flow_rng {
    uint64_t s[4];
    int has_spare;          /* Marsaglia polar method yields pairs */
    double spare;
};

/* Seeds the stream from a 64-bit seed through splitmix64. */
void rng_seed(flow_rng *r, uint64_t seed);
/* Stream `k` of a family: the seed's stream advanced by k jumps of 2^128
 * draws, so per-thread streams never overlap. */
void rng_stream(flow_rng *r, uint64_t seed, unsigned k);
uint64_t rng_u64(flow_rng *r);
double rng_uniform(flow_rng *r);          /* in (0, 1), never 0 or 1 */
double rng_normal1(flow_rng *r);          /* standard normal */
void rng_normal(flow_rng *r, flow_real *out, size_t n);
void rng_rademacher(flow_rng *r, flow_real *out, size_t n);
uint64_t rng_below(flow_rng *r, uint64_t n); /* uniform in [0, n), n > 0 */

#endif
