/* arena.c - the compiler's region allocator: zeroed blocks carved from
 * 64 KiB chunks, larger requests in chunks of their own, all freed at once. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"

#define CHUNK_MIN 65536

struct arena_chunk {
    arena_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

void *arena_alloc(arena *a, size_t bytes)
{
    arena_chunk *ch = a->head;
    size_t align = _Alignof(max_align_t);
    char *p;

    if (bytes > SIZE_MAX / 2) {
        a->failed = 1;
        return NULL;
    }
    bytes = (bytes + align - 1) / align * align;
    if (!ch || ch->cap - ch->used < bytes) {
        size_t cap = bytes > CHUNK_MIN ? bytes : CHUNK_MIN;
        ch = malloc(sizeof *ch + cap);
        if (!ch) {
            a->failed = 1;
            return NULL;
        }
        ch->cap = cap;
        ch->used = 0;
        if (a->head && bytes > CHUNK_MIN) {
            /* big block: keep the current chunk open for small ones */
            ch->next = a->head->next;
            a->head->next = ch;
        } else {
            ch->next = a->head;
            a->head = ch;
        }
    }
    p = (char *)ch->data + ch->used;
    ch->used += bytes;
    memset(p, 0, bytes);
    return p;
}

void *arena_array(arena *a, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / 4 / size) {
        a->failed = 1;
        return NULL;
    }
    return arena_alloc(a, n && size ? n * size : 1);
}

char *arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

char *arena_strdup(arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

char *arena_printf(arena *a, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *p;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !(p = arena_alloc(a, (size_t)n + 1)))
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void arena_free(arena *a)
{
    arena_chunk *ch = a->head;
    while (ch) {
        arena_chunk *next = ch->next;
        free(ch);
        ch = next;
    }
    a->head = NULL;
}
