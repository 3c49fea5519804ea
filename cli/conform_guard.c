/* conform_guard.c - guarded buffers of the conformance checks: canary
 * regions around everything a layer is handed, checked after each call. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conform_guard.h"

/* The canary is a quiet NaN with a recognisable payload, one per real: a
 * layer that reads past a buffer computes NaN (and fails "runs, finite")
 * rather than a plausible number, and one that writes past it changes
 * the canary's bits.  Guard pages (mprotect) would stop the checker at the
 * first stray write with a signal instead of a report, so canaries are
 * the whole mechanism. */
#if FLOW_REAL_DOUBLE
static const uint64_t canary_word = UINT64_C(0x7ffcc0dec0dec0de);
#else
static const uint32_t canary_word = UINT32_C(0x7fe0c0de);
#endif
#define WORD sizeof canary_word

/* canary byte for address a: blocks and payloads are 64-byte aligned, so
 * each real-sized slot of a guard region holds the whole word */
static unsigned char canary_at(const unsigned char *a)
{
    unsigned char w[WORD];
    memcpy(w, &canary_word, WORD);
    return w[(uintptr_t)a % WORD];
}

/* [a, a + len) holds the canary: bytes up to a real's alignment, then
 * whole words (the guards are scanned after every call of thousands) */
static int intact(const unsigned char *a, size_t len)
{
    size_t i = 0;
    for (; i < len && (uintptr_t)(a + i) % WORD; i++)
        if (a[i] != canary_at(a + i))
            return 0;
    for (; i + WORD <= len; i += WORD)
        if (memcmp(a + i, &canary_word, WORD))
            return 0;
    for (; i < len; i++)
        if (a[i] != canary_at(a + i))
            return 0;
    return 1;
}

static void fill(unsigned char *a, size_t len)
{
    size_t i = 0;
    for (; i < len && (uintptr_t)(a + i) % WORD; i++)
        a[i] = canary_at(a + i);
    for (; i + WORD <= len; i += WORD)
        memcpy(a + i, &canary_word, WORD);
    for (; i < len; i++)
        a[i] = canary_at(a + i);
}

/* Offsets of the first and last changed byte of [a, a + len); 0 when
 * the canary is intact. */
static int scan(const unsigned char *a, size_t len, size_t *first,
                size_t *last)
{
    int hit = 0;
    if (intact(a, len))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (a[i] != canary_at(a + i)) {
            if (!hit)
                *first = i;
            *last = i;
            hit = 1;
        }
    return hit;
}

size_t guard_size(size_t row_bytes)
{
    size_t g = 2 * row_bytes > 256 ? 2 * row_bytes : 256;
    return (g + 63) / 64 * 64;
}

int guard_reserve(guard_buf *g, size_t bytes, size_t guard)
{
    if (!g->block || bytes > g->cap || guard != g->guard) {
        size_t cap = (bytes + 63) / 64 * 64;
        void *b;
        if (cap < bytes || cap > SIZE_MAX - 2 * guard
            || posix_memalign(&b, 64, cap + 2 * guard) != 0)
            return -1;
        free(g->block);
        g->block = b;
        g->p = g->block + guard;
        g->cap = cap;
        g->guard = guard;
        fill(g->block, cap + 2 * guard);
    } else if (bytes < g->used) {
        fill(g->p + bytes, g->used - bytes);
    }
    g->used = bytes;
    return 0;
}

void guard_free(guard_buf *g)
{
    free(g->block);
    memset(g, 0, sizeof *g);
}

void guard_begin(guard_call *f, guard_log *log, const char *call,
                 size_t guard)
{
    memset(f, 0, sizeof *f);
    f->call = call;
    f->log = log;
    f->guard = guard;
}

static void *stage(guard_call *f, guard_buf *g, const char *name,
                   const void *orig, void *back, size_t rows, size_t cols)
{
    size_t bytes = rows * (cols ? cols * sizeof(flow_real) : 1);
    guard_arg *a;
    if (f->nomem || f->n_args == GUARD_MAX_ARGS
        || (cols && rows && bytes / rows / cols != sizeof(flow_real))
        || guard_reserve(g, bytes, f->guard) != 0) {
        f->nomem = 1;
        return NULL;
    }
    a = &f->arg[f->n_args++];
    a->name = name;
    a->g = g;
    a->orig = orig;
    a->back = back;
    a->rows = rows;
    a->cols = cols;
    if (orig && bytes)
        memcpy(g->p, orig, bytes);
    else if (back && bytes)
        memcpy(g->p, back, bytes);
    return g->p;
}

const flow_real *guard_in(guard_call *f, guard_buf *g, const char *name,
                          const flow_real *src, size_t rows, size_t cols)
{
    return stage(f, g, name, src, NULL, rows, cols);
}

flow_real *guard_out(guard_call *f, guard_buf *g, const char *name,
                     flow_real *dst, size_t rows, size_t cols)
{
    return stage(f, g, name, NULL, dst, rows, cols);
}

void *guard_keep(guard_call *f, guard_buf *g, const char *name, size_t bytes)
{
    return stage(f, g, name, NULL, NULL, bytes, 0);
}

/* snprintf that truncates notes silently (they are at most 160 bytes) */
static void say(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static const char *plural(size_t k)
{
    return k == 1 ? "" : "s";
}

/* "(8 x 3)", "(6)", "(512 bytes)" */
static void shape(const guard_arg *a, char *s, size_t cap)
{
    if (!a->cols)
        say(s, cap, "(%zu byte%s)", a->rows, plural(a->rows));
    else if (a->cols == 1)
        say(s, cap, "(%zu)", a->rows);
    else
        say(s, cap, "(%zu x %zu)", a->rows, a->cols);
}

/* A write into a guard region, in elements of the buffer (bytes for the
 * workspace): "forward wrote z[24], 1 element past the end of z (8 x 3)",
 * "... ws bytes[-8..-1], 1 to 8 bytes before the start of ws (64 bytes)".
 * first and last are byte offsets from the payload's start. */
static void oob_note(const guard_call *f, const guard_arg *a, long long first,
                     long long last, char *out, size_t cap)
{
    long long unit = a->cols ? (long long)sizeof(flow_real) : 1;
    long long end = (long long)a->g->used / unit;
    long long e0 = first >= 0 ? first / unit : -((-first + unit - 1) / unit);
    long long e1 = last >= 0 ? last / unit : -((-last + unit - 1) / unit);
    long long d0 = e0 >= end ? e0 - end + 1 : -e1;   /* nearest, 1-based */
    long long d1 = e0 >= end ? e1 - end + 1 : -e0;   /* farthest */
    const char *what = a->cols ? "element" : "byte";
    char sh[48], at[64];

    shape(a, sh, sizeof sh);
    if (e0 == e1)
        say(at, sizeof at, "%s%s[%lld]", a->name, a->cols ? "" : " byte",
            e0);
    else
        say(at, sizeof at, "%s%s[%lld..%lld]", a->name,
            a->cols ? "" : " bytes", e0, e1);
    if (d0 == d1)
        say(out, cap, "%s wrote %s, %lld %s%s %s of %s %s", f->call, at,
            d0, what, plural((size_t)d0), e0 >= end
            ? "past the end" : "before the start", a->name, sh);
    else
        say(out, cap, "%s wrote %s, %lld to %lld %ss %s of %s %s",
            f->call, at, d0, d1, what, e0 >= end ? "past the end"
            : "before the start", a->name, sh);
}

/* The first changed real of an input, by bits (a NaN input stays
 * itself); its index, how many changed. */
static size_t first_change(const guard_arg *a, size_t *count)
{
    const unsigned char *now = a->g->p, *was = a->orig;
    size_t n = a->rows * a->cols, at = n;
    *count = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(now + i * sizeof(flow_real), was + i * sizeof(flow_real),
                   sizeof(flow_real))) {
            if (at == n)
                at = i;
            ++*count;
        }
    return at;
}

static void inw_note(const guard_call *f, const guard_arg *a, size_t i,
                     size_t count, char *out, size_t cap)
{
    flow_real was, now;
    char where[64], more[48] = "";
    memcpy(&was, (const unsigned char *)a->orig + i * sizeof was, sizeof was);
    memcpy(&now, a->g->p + i * sizeof now, sizeof now);
    if (a->cols == 1)
        say(where, sizeof where, "[%zu]", i);
    else
        say(where, sizeof where, "row %zu, column %zu", i / a->cols,
            i % a->cols);
    if (count > 1)
        say(more, sizeof more, ", %zu of %zu elements changed", count,
            a->rows * a->cols);
    say(out, cap, "%s wrote to its input %s at %s: %.9g -> %.9g%s",
        f->call, a->name, where, (double)was, (double)now, more);
}

int guard_end(guard_call *f)
{
    int oob = 0, inw = 0;
    guard_log *log = f->log;
    log->calls++;
    for (size_t k = 0; k < f->n_args; k++) {
        const guard_arg *a = &f->arg[k];
        guard_buf *g = a->g;
        size_t tail = g->cap - g->used + g->guard, lo = 0, hi = 0, count;
        if (scan(g->block, g->guard, &lo, &hi)) {
            if (!oob++ && !log->oob)
                oob_note(f, a, (long long)lo - (long long)g->guard,
                         (long long)hi - (long long)g->guard, log->oob_note,
                         sizeof log->oob_note);
            fill(g->block, g->guard);
        }
        if (scan(g->p + g->used, tail, &lo, &hi)) {
            if (!oob++ && !log->oob)
                oob_note(f, a, (long long)(g->used + lo),
                         (long long)(g->used + hi), log->oob_note,
                         sizeof log->oob_note);
            fill(g->p + g->used, tail);
        }
        if (a->orig) {
            size_t at = first_change(a, &count);
            if (count && !inw++ && !log->inw)
                inw_note(f, a, at, count, log->inw_note,
                         sizeof log->inw_note);
        }
        if (a->back && g->used)
            memcpy(a->back, g->p, g->used);
    }
    log->oob += oob > 0;
    log->inw += inw > 0;
    return oob || inw;
}
