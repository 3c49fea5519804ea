/* json.h - internal: a small strict JSON (RFC 8259) reader with a depth
 * limit and located errors, and a writer into a growable buffer. */
#ifndef FLOW_RUNTIME_JSON_H
#define FLOW_RUNTIME_JSON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "flow/flow.h"

#define JSON_DEFAULT_DEPTH 64

typedef enum json_type {
    JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY,
    JSON_OBJECT
} json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    size_t offset;          /* byte offset of the value in the text */
    double num;             /* NUMBER */
    const char *str;        /* STRING: decoded UTF-8, NUL-terminated (may
                               hold NULs from \u0000: use len); NUMBER: the
                               source text */
    size_t len;             /* STRING/NUMBER: bytes of str; ARRAY/OBJECT:
                               number of items */
    json_value *items;      /* ARRAY/OBJECT: the items, in source order */
    const char **keys;      /* OBJECT: the keys, decoded */
    size_t *key_lens;       /* OBJECT: their lengths */
    size_t *key_offsets;    /* OBJECT: byte offsets of the key strings */
};

/* A parsed document: owns every value, key and string in it. */
typedef struct json_doc json_doc;

/* Parses text[0..len) as exactly one JSON value (surrounding white space
 * allowed).  Strict: no comments, trailing commas, leading zeros, NaN,
 * control characters or invalid UTF-8 in strings, lone surrogates or
 * duplicate keys.  Containers nest at most max_depth deep (recursion is
 * bounded by it).  Errors read "NAME:LINE:COL: message".  *out is new,
 * free with json_free. */
int json_parse(flow_ctx *ctx, const char *name, const char *text, size_t len,
               int max_depth, json_doc **out);
const json_value *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* Member `key` of an object, or NULL (also for non-objects). */
const json_value *json_get(const json_value *obj, const char *key);
/* A NUMBER that is a non-negative integer written without fraction or
 * exponent and fits in 64 bits: 0 and *out set; else -1. */
int json_u64(const json_value *v, uint64_t *out);
/* 1-based line and column of a byte offset in text. */
void json_locate(const char *text, size_t offset, int *line, int *col);

/* --- writer ---------------------------------------------------------- */

typedef struct json_buf {
    char *s;        /* NUL-terminated; owned */
    size_t len, cap;
    int oom;        /* an allocation failed: contents incomplete */
    int bad_utf8;   /* a string given to json_buf_string was not UTF-8 */
} json_buf;

void json_buf_init(json_buf *b);
void json_buf_free(json_buf *b);
void json_buf_raw(json_buf *b, const char *s, size_t n);
void json_buf_printf(json_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* s[0..n) as a JSON string literal with escapes; invalid UTF-8 sets
 * bad_utf8 (and is written as U+FFFD so the output stays valid). */
void json_buf_string(json_buf *b, const char *s, size_t n);
/* A value, compact (no white space). */
void json_buf_value(json_buf *b, const json_value *v);
/* 1 when s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
int json_utf8_valid(const char *s, size_t n);

#endif
