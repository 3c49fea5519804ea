/* rng.c - xoshiro256** (Blackman & Vigna 2018) seeded by splitmix64, with
 * jump-ahead for independent per-thread streams; uniform, normal (polar
 * method) and Rademacher draws.  Same seed, same bits, on every machine. */
#include <math.h>

#include "rng.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void rng_seed(flow_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    r->has_spare = 0;
    r->spare = 0;
}

uint64_t rng_u64(flow_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Advances by 2^128 draws (the xoshiro256 jump polynomial). */
static void rng_jump(flow_rng *r)
{
    static const uint64_t jump[] = {0x180ec6d33cfd0abaull,
                                    0xd5a61266f0c9392cull,
                                    0xa9582618e03fc9aaull,
                                    0x39abdc4529b1661cull};
    uint64_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 64; b++) {
            if (jump[i] & (1ull << b))
                for (int k = 0; k < 4; k++)
                    t[k] ^= r->s[k];
            rng_u64(r);
        }
    for (int k = 0; k < 4; k++)
        r->s[k] = t[k];
}

void rng_stream(flow_rng *r, uint64_t seed, unsigned k)
{
    rng_seed(r, seed);
    while (k--)
        rng_jump(r);
}

double rng_uniform(flow_rng *r)
{
    /* 53 random bits, offset by half an ulp: strictly inside (0, 1) */
    return ((double)(rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

uint64_t rng_below(flow_rng *r, uint64_t n)
{
    /* rejection sampling: no modulo bias */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do
        x = rng_u64(r);
    while (x >= limit);
    return x % n;
}

/* Marsaglia & Bray (1964) polar method: exact normals from uniforms. */
double rng_normal1(flow_rng *r)
{
    double u, v, s, f;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    do {
        u = 2.0 * rng_uniform(r) - 1.0;
        v = 2.0 * rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    f = sqrt(-2.0 * log(s) / s);
    r->spare = v * f;
    r->has_spare = 1;
    return u * f;
}

void rng_normal(flow_rng *r, flow_real *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (flow_real)rng_normal1(r);
}

void rng_rademacher(flow_rng *r, flow_real *out, size_t n)
{
    uint64_t bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 64 == 0)
            bits = rng_u64(r);
        out[i] = (bits & 1) ? (flow_real)1 : (flow_real)-1;
        bits >>= 1;
    }
}
