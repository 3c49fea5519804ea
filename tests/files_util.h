/* files_util.h - helpers shared by the file-format suites: a scratch
 * directory per test, writing and listing files, message checks. */
#ifndef FLOW_TESTS_FILES_UTIL_H
#define FLOW_TESTS_FILES_UTIL_H

#include <stddef.h>

/* Creates a fresh scratch directory (path in a static buffer). */
const char *tu_mkdtemp(void);
/* Removes the directory and every plain file in it. */
void tu_rmtree(const char *dir);
/* DIR/NAME in one of eight rotating static buffers. */
const char *tu_path(const char *dir, const char *name);
/* Writes n bytes to path; aborts the test on failure. */
void tu_write(const char *path, const void *bytes, size_t n);
/* Reads a whole file (malloc'ed, NUL-terminated); *n gets its size. */
unsigned char *tu_read(const char *path, size_t *n);
/* Number of entries in dir other than "." and "..". */
int tu_count_entries(const char *dir);

#endif
