/* json.c - strict JSON (RFC 8259): a depth-limited recursive-descent
 * reader into an arena, with located errors, and a compact writer. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

/* ------------------------------------------------------------ arena */

typedef struct block {
    struct block *next;
    size_t used, cap;
    max_align_t data[];
} block;

struct json_doc {
    block *blocks;
    json_value root;
};

static void *arena_alloc(json_doc *d, size_t n)
{
    block *b = d->blocks;
    size_t a = sizeof(max_align_t);
    if (n > SIZE_MAX - a)
        return NULL;
    n = (n + a - 1) / a * a;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (cap > SIZE_MAX - sizeof *b || !(b = malloc(sizeof *b + cap)))
            return NULL;
        b->next = d->blocks;
        b->used = 0;
        b->cap = cap;
        d->blocks = b;
    }
    b->used += n;
    return (char *)b->data + b->used - n;
}

void json_free(json_doc *doc)
{
    block *b, *nx;
    if (!doc)
        return;
    for (b = doc->blocks; b; b = nx) {
        nx = b->next;
        free(b);
    }
    free(doc);
}

const json_value *json_root(const json_doc *doc) { return &doc->root; }

/* ------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if
 * invalid: no overlong forms, no surrogates, nothing above U+10FFFF
 * (RFC 3629, sec. 4). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
            || (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

int json_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, k;
    while (i < n) {
        if (!(k = utf8_seq(p + i, n - i)))
            return 0;
        i += k;
    }
    return 1;
}

static size_t utf8_put(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------------ reader */

typedef struct member {
    json_value v;
    const char *key;
    size_t klen, koff;
} member;

typedef struct parser {
    flow_ctx *ctx;
    const char *name;
    const char *t;
    size_t n, pos;
    int max_depth;
    json_doc *doc;
    member *stk;            /* items of the open containers */
    size_t sn, scap;
} parser;

void json_locate(const char *text, size_t offset, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < offset; i++) {
        if (text[i] == '\n')
            l++, c = 1;
        else
            c++;
    }
    *line = l;
    *col = c;
}

static int perr(parser *p, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int perr(parser *p, size_t off, const char *fmt, ...)
{
    char msg[256];
    int line, col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_locate(p->t, off, &line, &col);
    return flow_ctx_error(p->ctx, FLOW_ERR_FORMAT, "%s:%d:%d: %s", p->name,
                          line, col, msg);
}

static int nomem(parser *p)
{
    return flow_ctx_error(p->ctx, FLOW_ERR_NOMEM, "%s: out of memory",
                          p->name);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->n && (p->t[p->pos] == ' ' || p->t[p->pos] == '\t'
                             || p->t[p->pos] == '\n' || p->t[p->pos] == '\r'))
        p->pos++;
}

static int hex4(const char *s, unsigned long *out)
{
    unsigned long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned long)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned long)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned long)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* A string at p->pos (the opening quote) into the arena. */
static int parse_string(parser *p, const char **out, size_t *outlen)
{
    size_t start = p->pos + 1, end = start, k = 0;
    char *s;
    /* find the closing quote: the decoded string is never longer */
    while (end < p->n && p->t[end] != '"')
        end += p->t[end] == '\\' ? 2 : 1;
    if (end >= p->n)
        return perr(p, p->pos, "unterminated string");
    if (!(s = arena_alloc(p->doc, end - start + 1)))
        return nomem(p);
    for (size_t i = start; i < end;) {
        unsigned char c = (unsigned char)p->t[i];
        if (c < 0x20)
            return perr(p, i, "control character in string");
        if (c == '\\') {
            char e = p->t[i + 1];
            unsigned long cp, lo;
            switch (e) {
            case '"': case '\\': case '/': s[k++] = e; i += 2; continue;
            case 'b': s[k++] = '\b'; i += 2; continue;
            case 'f': s[k++] = '\f'; i += 2; continue;
            case 'n': s[k++] = '\n'; i += 2; continue;
            case 'r': s[k++] = '\r'; i += 2; continue;
            case 't': s[k++] = '\t'; i += 2; continue;
            case 'u': break;
            default:
                return perr(p, i, "invalid escape '\\%c'",
                            (e >= 0x20 && e < 0x7f) ? e : '?');
            }
            if (end - i < 6 || hex4(p->t + i + 2, &cp))
                return perr(p, i, "invalid \\u escape");
            i += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return perr(p, i - 6, "lone surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - i < 6 || p->t[i] != '\\' || p->t[i + 1] != 'u'
                    || hex4(p->t + i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return perr(p, i - 6, "lone surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            k += utf8_put(s + k, cp);   /* <= the 6 or 12 bytes read */
            continue;
        }
        {
            size_t len = utf8_seq((const unsigned char *)p->t + i, end - i);
            if (!len)
                return perr(p, i, "invalid UTF-8 in string");
            memcpy(s + k, p->t + i, len);
            k += len;
            i += len;
        }
    }
    s[k] = '\0';
    *out = s;
    *outlen = k;
    p->pos = end + 1;
    return FLOW_OK;
}

static int parse_number(parser *p, json_value *v)
{
    size_t i = p->pos, start = p->pos;
    const char *t = p->t;
    char *s;
    if (i < p->n && t[i] == '-')
        i++;
    if (i < p->n && t[i] == '0')
        i++;
    else if (i < p->n && t[i] >= '1' && t[i] <= '9')
        while (i < p->n && t[i] >= '0' && t[i] <= '9')
            i++;
    else
        return perr(p, start, "invalid number");
    if (i < p->n && t[i] == '.') {
        if (++i >= p->n || t[i] < '0' || t[i] > '9')
            return perr(p, start, "invalid number");
        while (i < p->n && t[i] >= '0' && t[i] <= '9')
            i++;
    }
    if (i < p->n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < p->n && (t[i] == '+' || t[i] == '-'))
            i++;
        if (i >= p->n || t[i] < '0' || t[i] > '9')
            return perr(p, start, "invalid number");
        while (i < p->n && t[i] >= '0' && t[i] <= '9')
            i++;
    }
    if (i < p->n && t[i] >= '0' && t[i] <= '9')
        return perr(p, start, "invalid number (leading zero)");
    if (!(s = arena_alloc(p->doc, i - start + 1)))
        return nomem(p);
    memcpy(s, t + start, i - start);
    s[i - start] = '\0';
    errno = 0;
    v->num = strtod(s, NULL);
    if (isinf(v->num))
        return perr(p, start, "number out of range");
    v->type = JSON_NUMBER;
    v->str = s;
    v->len = i - start;
    p->pos = i;
    return FLOW_OK;
}

static int push(parser *p, const json_value *v, const char *key, size_t klen,
                size_t koff)
{
    if (p->sn == p->scap) {
        size_t ncap = p->scap ? p->scap * 2 : 64;
        member *m;
        if (ncap > SIZE_MAX / sizeof *m
            || !(m = realloc(p->stk, ncap * sizeof *m)))
            return nomem(p);
        p->stk = m;
        p->scap = ncap;
    }
    p->stk[p->sn].v = *v;
    p->stk[p->sn].key = key;
    p->stk[p->sn].klen = klen;
    p->stk[p->sn].koff = koff;
    p->sn++;
    return FLOW_OK;
}

static int cmp_member(const void *a, const void *b)
{
    const member *x = *(const member *const *)a, *y = *(const member *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    if (x->klen != y->klen)
        return x->klen < y->klen ? -1 : 1;
    /* equal keys: source order, so the later one is reported */
    return x->koff < y->koff ? -1 : x->koff > y->koff;
}

/* Moves the items pushed since `base` into v (an array or object). */
static int close_container(parser *p, json_value *v, size_t base)
{
    size_t k = p->sn - base;
    v->len = k;
    if (k && !(v->items = arena_alloc(p->doc, k * sizeof *v->items)))
        return nomem(p);
    if (v->type == JSON_OBJECT && k) {
        const member **order;
        if (!(v->keys = arena_alloc(p->doc, k * sizeof *v->keys))
            || !(v->key_lens = arena_alloc(p->doc, k * sizeof(size_t)))
            || !(v->key_offsets = arena_alloc(p->doc, k * sizeof(size_t)))
            || !(order = malloc(k * sizeof *order)))
            return nomem(p);
        /* duplicates by sorting: O(k log k) even for hostile objects */
        for (size_t i = 0; i < k; i++)
            order[i] = &p->stk[base + i];
        qsort(order, k, sizeof *order, cmp_member);
        for (size_t i = 1; i < k; i++)
            if (order[i - 1]->klen == order[i]->klen
                && !memcmp(order[i - 1]->key, order[i]->key,
                           order[i]->klen)) {
                char shown[64];
                size_t m = order[i]->klen < 40 ? order[i]->klen : 40;
                size_t off = order[i]->koff;
                memcpy(shown, order[i]->key, m);
                shown[m] = '\0';
                for (size_t j = 0; j < m; j++)
                    if ((unsigned char)shown[j] < 0x20)
                        shown[j] = '?';
                free(order);
                return perr(p, off, "duplicate key \"%s\"", shown);
            }
        free(order);
    }
    for (size_t i = 0; i < k; i++) {
        v->items[i] = p->stk[base + i].v;
        if (v->type == JSON_OBJECT) {
            v->keys[i] = p->stk[base + i].key;
            v->key_lens[i] = p->stk[base + i].klen;
            v->key_offsets[i] = p->stk[base + i].koff;
        }
    }
    p->sn = base;
    return FLOW_OK;
}

static int parse_value(parser *p, int depth, json_value *v);

/* array = '[' [ value *( ',' value ) ] ']'
 * object = '{' [ member *( ',' member ) ] '}', member = string ':' value */
static int parse_container(parser *p, int depth, json_value *v)
{
    int obj = p->t[p->pos] == '{', rc;
    char close = obj ? '}' : ']';
    size_t base = p->sn;
    if (depth >= p->max_depth)
        return perr(p, p->pos, "nesting deeper than %d levels", p->max_depth);
    v->type = obj ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->t[p->pos] == close) {
        p->pos++;
        return close_container(p, v, base);
    }
    for (;;) {
        json_value item;
        const char *key = NULL;
        size_t klen = 0, koff = 0;
        skip_ws(p);
        if (obj) {
            if (p->pos >= p->n || p->t[p->pos] != '"')
                return perr(p, p->pos, p->pos >= p->n
                            ? "unexpected end of input"
                            : "expected a string key");
            koff = p->pos;
            if ((rc = parse_string(p, &key, &klen)))
                return rc;
            skip_ws(p);
            if (p->pos >= p->n || p->t[p->pos] != ':')
                return perr(p, p->pos, "expected ':' after the key");
            p->pos++;
        }
        if ((rc = parse_value(p, depth + 1, &item))
            || (rc = push(p, &item, key, klen, koff)))
            return rc;
        skip_ws(p);
        if (p->pos < p->n && p->t[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->n && p->t[p->pos] == close) {
            p->pos++;
            return close_container(p, v, base);
        }
        if (p->pos >= p->n)
            return perr(p, p->pos, "unexpected end of input");
        return perr(p, p->pos, "expected ',' or '%c'", close);
    }
}

static int parse_value(parser *p, int depth, json_value *v)
{
    static const struct { const char *w; json_type t; } lit[] = {
        {"null", JSON_NULL}, {"true", JSON_TRUE}, {"false", JSON_FALSE}
    };
    char c;
    memset(v, 0, sizeof *v);
    skip_ws(p);
    v->offset = p->pos;
    if (p->pos >= p->n)
        return perr(p, p->pos, "unexpected end of input");
    c = p->t[p->pos];
    if (c == '{' || c == '[')
        return parse_container(p, depth, v);
    if (c == '"') {
        v->type = JSON_STRING;
        return parse_string(p, &v->str, &v->len);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(p, v);
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(lit[i].w);
        if (p->n - p->pos >= k && !memcmp(p->t + p->pos, lit[i].w, k)) {
            v->type = lit[i].t;
            p->pos += k;
            return FLOW_OK;
        }
    }
    return perr(p, p->pos, "expected a value");
}

int json_parse(flow_ctx *ctx, const char *name, const char *text, size_t len,
               int max_depth, json_doc **out)
{
    parser p;
    int rc;
    memset(&p, 0, sizeof p);
    *out = NULL;
    p.ctx = ctx;
    p.name = name;
    p.t = text;
    p.n = len;
    p.max_depth = max_depth;
    if (!(p.doc = calloc(1, sizeof *p.doc)))
        return flow_ctx_error(ctx, FLOW_ERR_NOMEM, "%s: out of memory", name);
    rc = parse_value(&p, 0, &p.doc->root);
    if (rc == FLOW_OK) {
        skip_ws(&p);
        if (p.pos < p.n)
            rc = perr(&p, p.pos, "unexpected characters after the value");
    }
    free(p.stk);
    if (rc != FLOW_OK) {
        json_free(p.doc);
        return rc;
    }
    *out = p.doc;
    return FLOW_OK;
}

const json_value *json_get(const json_value *obj, const char *key)
{
    size_t n = strlen(key);
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (obj->key_lens[i] == n && !memcmp(obj->keys[i], key, n))
            return &obj->items[i];
    return NULL;
}

int json_u64(const json_value *v, uint64_t *out)
{
    uint64_t x = 0;
    if (!v || v->type != JSON_NUMBER || v->len == 0)
        return -1;
    for (size_t i = 0; i < v->len; i++) {
        unsigned d = (unsigned)(v->str[i] - '0');
        if (d > 9 || x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

/* ------------------------------------------------------------ writer */

void json_buf_init(json_buf *b) { memset(b, 0, sizeof *b); }

void json_buf_free(json_buf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

void json_buf_raw(json_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->len <= n) {
        size_t cap = b->cap ? b->cap : 256;
        char *ns;
        while (cap - b->len <= n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        if (!(ns = realloc(b->s, cap))) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void json_buf_printf(json_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        json_buf_raw(b, small, (size_t)n);
        return;
    }
    {
        char *big = malloc((size_t)n + 1);
        if (!big) {
            b->oom = 1;
            return;
        }
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        json_buf_raw(b, big, (size_t)n);
        free(big);
    }
}

void json_buf_string(json_buf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    json_buf_raw(b, "\"", 1);
    while (i < n) {
        unsigned char c = p[i];
        size_t k;
        const char *esc = NULL;
        char ubuf[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(ubuf, sizeof ubuf, "\\u%04x", c);
            esc = ubuf;
        }
        if (esc) {
            json_buf_raw(b, s + i - run, run);
            run = 0;
            json_buf_raw(b, esc, strlen(esc));
            i++;
            continue;
        }
        if (!(k = utf8_seq(p + i, n - i))) {
            json_buf_raw(b, s + i - run, run);
            run = 0;
            json_buf_raw(b, "\xEF\xBF\xBD", 3);
            b->bad_utf8 = 1;
            i++;
            continue;
        }
        run += k;
        i += k;
    }
    json_buf_raw(b, s + i - run, run);
    json_buf_raw(b, "\"", 1);
}

/* Recursion depth here is that of a parsed document (bounded by its
 * max_depth) or of a tree the caller built. */
void json_buf_value(json_buf *b, const json_value *v)
{
    switch (v->type) {
    case JSON_NULL: json_buf_raw(b, "null", 4); break;
    case JSON_TRUE: json_buf_raw(b, "true", 4); break;
    case JSON_FALSE: json_buf_raw(b, "false", 5); break;
    case JSON_NUMBER:
        if (v->str)
            json_buf_raw(b, v->str, v->len);
        else
            json_buf_printf(b, "%.17g", v->num);
        break;
    case JSON_STRING: json_buf_string(b, v->str, v->len); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        json_buf_raw(b, v->type == JSON_ARRAY ? "[" : "{", 1);
        for (size_t i = 0; i < v->len; i++) {
            if (i)
                json_buf_raw(b, ",", 1);
            if (v->type == JSON_OBJECT) {
                json_buf_string(b, v->keys[i], v->key_lens[i]);
                json_buf_raw(b, ":", 1);
            }
            json_buf_value(b, &v->items[i]);
        }
        json_buf_raw(b, v->type == JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}

void flow_json_string(FILE *f, const char *s)
{
    json_buf b;
    json_buf_init(&b);
    json_buf_string(&b, s ? s : "", s ? strlen(s) : 0);
    if (!b.oom)
        fwrite(b.s, 1, b.len, f);
    else
        fputs("\"\"", f);     /* out of memory: still valid JSON */
    json_buf_free(&b);
}
