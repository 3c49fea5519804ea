/* arena.h - internal: the compiler's region allocator, one per compilation,
 * freed at once, so no error path of the compiler frees anything itself. */
#ifndef FLOW_ARENA_H
#define FLOW_ARENA_H

#include <stddef.h>

typedef struct arena_chunk arena_chunk;
typedef struct arena {
    arena_chunk *head;
    int failed;                     /* an allocation failed               */
} arena;

void *arena_alloc(arena *a, size_t bytes);          /* zeroed, or NULL   */
void *arena_array(arena *a, size_t n, size_t size); /* overflow-checked  */
char *arena_strdup(arena *a, const char *s);
char *arena_strndup(arena *a, const char *s, size_t n);
char *arena_printf(arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void arena_free(arena *a);

#endif
