/* conform_guard.h - internal: guarded buffers of the conformance checks:
 * every buffer the checker hands a layer lies between canary regions, and
 * each call is checked for writes past them and for writes to its inputs. */
#ifndef FLOW_CLI_CONFORM_GUARD_H
#define FLOW_CLI_CONFORM_GUARD_H

#include <stddef.h>

#include "flow/flow.h"

/* A payload of `used` bytes (at most `cap`) between a guard region of
 * `guard` bytes before it and one from its end to cap + guard.  p is
 * 64-byte aligned, as the ABI promises for the workspace. */
typedef struct guard_buf {
    unsigned char *block;       /* the allocation: guard, payload, guard */
    unsigned char *p;           /* the payload                           */
    size_t cap, used, guard;
} guard_buf;

/* What the calls checked so far did wrong: the first of each kind in
 * words, and how many calls did it. */
typedef struct guard_log {
    size_t calls;
    size_t oob;                 /* calls that wrote outside a buffer      */
    size_t inw;                 /* calls that wrote to one of their inputs */
    char oob_note[160];
    char inw_note[160];
} guard_log;

#define GUARD_MAX_ARGS 12

/* One call into a layer: the buffers it was handed, under the names of
 * flow_plugin.h ("x", "z", "params", "ws", ...). */
typedef struct guard_arg {
    const char *name;
    guard_buf *g;
    const void *orig;           /* an input: the caller's data, to compare */
    void *back;                 /* an output: where the result goes       */
    size_t rows, cols;          /* shape in reals; cols 0: bytes (ws)      */
} guard_arg;

typedef struct guard_call {
    const char *call;           /* "forward", "init", ...                 */
    guard_log *log;
    size_t guard;
    int nomem;                  /* a staging buffer could not be had: the
                                   call must not be made                   */
    size_t n_args;
    guard_arg arg[GUARD_MAX_ARGS];
} guard_call;

/* Guard bytes for buffers whose rows are row_bytes wide: at least 256 and
 * two rows, a multiple of 64, so an off-by-one-row write lands in it. */
size_t guard_size(size_t row_bytes);

void guard_begin(guard_call *f, guard_log *log, const char *call,
                 size_t guard);
/* A guarded copy of rows x cols reals at src that the call must leave as
 * they are (NULL with f->nomem set when out of memory). */
const flow_real *guard_in(guard_call *f, guard_buf *g, const char *name,
                          const flow_real *src, size_t rows, size_t cols);
/* A guarded copy of rows x cols reals at dst that the call may write;
 * copied back to dst by guard_end. */
flow_real *guard_out(guard_call *f, guard_buf *g, const char *name,
                     flow_real *dst, size_t rows, size_t cols);
/* A buffer that keeps its contents from call to call (the workspace):
 * resized to `bytes` (contents kept when it fits) and checked in place. */
void *guard_keep(guard_call *f, guard_buf *g, const char *name, size_t bytes);
/* Resizes a kept buffer outside a call; -1 when out of memory. */
int guard_reserve(guard_buf *g, size_t bytes, size_t guard);
/* After the call: checks every guard and input, logs the first violation
 * of each kind, restores the guards and copies the outputs back.
 * Returns 1 when the call wrote out of bounds or to an input. */
int guard_end(guard_call *f);
void guard_free(guard_buf *g);

#endif
