/* alloc_fail.c - the counting allocator behind alloc_fail.h: __wrap_
 * functions for the linker's --wrap seam, with a failure countdown. */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "alloc_fail.h"

/* The linker resolves these to the C library's functions (or to the
 * sanitizer's interceptors, which take their place in an ASan build). */
void *__real_malloc(size_t n);
void *__real_calloc(size_t count, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t count, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
char *__wrap_strdup(const char *s);

/* Atomic: the runtime's worker threads allocate too. */
static atomic_long count;       /* allocations since alloc_fail_after   */
static atomic_long failed;      /* of which made to fail                */
static atomic_long fail_at = -1;
static atomic_int fail_persist;

void alloc_fail_after(long n, int persist)
{
    atomic_store(&fail_at, -1);
    atomic_store(&count, 0);
    atomic_store(&failed, 0);
    atomic_store(&fail_persist, persist);
    atomic_store(&fail_at, n);
}

long alloc_fail_count(void) { return atomic_load(&count); }
long alloc_fail_failed(void) { return atomic_load(&failed); }

/* Counts one allocation; nonzero when it is to fail, with errno set as
 * the C library's allocators set it. */
static int should_fail(void)
{
    long k = atomic_fetch_add(&count, 1);
    long at = atomic_load(&fail_at);
    if (at < 0 || k < at || (k > at && !atomic_load(&fail_persist)))
        return 0;
    atomic_fetch_add(&failed, 1);
    errno = ENOMEM;
    return 1;
}

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t count_, size_t size)
{
    return should_fail() ? NULL : __real_calloc(count_, size);
}

/* A failed realloc leaves the block as it was, as the real one does. */
void *__wrap_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __real_realloc(p, n);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n)
{
    return should_fail() ? ENOMEM : __real_posix_memalign(p, align, n);
}

/* The C library's strdup would call its own malloc, unseen: this one
 * allocates through the counted malloc (POSIX: NULL and ENOMEM). */
char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = __wrap_malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}
