/* vec.h - internal: FLOW_VECTORIZE marks the runtime's hot elementwise
 * loops (bias + activation, masks, column sums, Adam) for vectorisation. */
#ifndef FLOW_RUNTIME_VEC_H
#define FLOW_RUNTIME_VEC_H

/* GCC 12's -O2 vectorises a loop only when no scalar epilogue is needed
 * ("very cheap" cost model), i.e. almost never for our runtime trip
 * counts; the dynamic model does.  The result is bit-identical to the
 * scalar loop: nothing is reassociated (no -ffast-math) and -std=c11
 * turns FMA contraction off.  (The core library is built with
 * -fno-math-errno, so sqrt vectorises too: Makefile.am.)  Clang
 * vectorises at -O2 already and has no such attribute. */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER)
#define FLOW_VECTORIZE \
    __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define FLOW_VECTORIZE
#endif

#endif
