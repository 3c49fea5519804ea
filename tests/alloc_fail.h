/* alloc_fail.h - allocation-failure injection for the test runner: a
 * counting allocator under every runtime and compiler object it links. */
#ifndef FLOW_TESTS_ALLOC_FAIL_H
#define FLOW_TESTS_ALLOC_FAIL_H

/* The runner is linked with -Wl,--wrap=malloc,... (Makefile.am), so every
 * call to malloc, calloc, realloc, posix_memalign or strdup from an object
 * of the runner (libflowkit_core, libflowc_core, libconform, the tests)
 * goes through tests/alloc_fail.c.  Plugins (dlopen'ed) and shared
 * libraries (libc, OpenBLAS) keep their own references to the real
 * allocator; plugins that allocate through flow_host_services() are
 * counted, since the host's allocator is the runtime's.  So is Check
 * where it is linked statically (libcheck_pic): its asserts allocate, so
 * read alloc_fail_count() before asserting, and never assert while a
 * failure is armed.
 *
 * alloc_fail_after(n): restarts the count; the n-th allocation from now
 * (0 = the next one) fails, and with `persist` every one after it too.
 * n = -1: no failure, counting only. */
void alloc_fail_after(long n, int persist);

/* Allocations attempted since the last alloc_fail_after (failed ones
 * included). */
long alloc_fail_count(void);

/* Allocations made to fail since the last alloc_fail_after. */
long alloc_fail_failed(void);

#endif
