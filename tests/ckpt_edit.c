/* ckpt_edit.c - test helper: rewrites text in a checkpoint's JSON header
 * and makes the header consistent again (length, padding to 8 bytes,
 * header checksum), so tests can craft checkpoints that pass the checksum
 * and must be refused for what they say (another precision, a newer
 * format version, huge tensors, an edited spec).
 *   ckpt_edit [--zero TENSOR]... [--rehash] IN OUT [OLD NEW ...]
 * Each OLD (first occurrence in the header) becomes NEW; exit 2 when an
 * OLD is not there.  --zero sets a tensor's bytes to zero and recomputes
 * the data checksum (the data section is otherwise copied unchanged);
 * --rehash recomputes spec_hash from the (edited) spec, spec_path and
 * imports, so that the edit passes that check too.  Format:
 * docs/formats.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/checkpoint.h"
#include "../runtime/fileio.h"
#include "../runtime/json.h"

#define HDR_CK_KEY "\"header_checksum\":\"crc32c:"
#define DATA_CK_KEY "\"data_checksum\":\"crc32c:"
#define SPEC_HASH_KEY "\"spec_hash\":\"fnv1a64:"
#define MAX_ZERO 16

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long len;
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) || !(buf = malloc((size_t)len + 1))
        || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "ckpt_edit: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* The header text h[0..len) parsed; exits 2 when it is not JSON. */
static json_doc *parse(flow_ctx *ctx, const char *h, size_t len)
{
    json_doc *doc;
    if (json_parse(ctx, "header", h, len, 16, &doc) != FLOW_OK) {
        fprintf(stderr, "ckpt_edit: %s\n", flow_errmsg(ctx));
        exit(2);
    }
    return doc;
}

/* Overwrites the characters after `key` in h with `value`. */
static void patch(char *h, const char *key, const char *value)
{
    char *at = strstr(h, key);
    if (!at) {
        fprintf(stderr, "ckpt_edit: %s not in the header\n", key);
        exit(2);
    }
    memcpy(at + strlen(key), value, strlen(value));
}

/* Zeroes each named tensor in the data section and fixes data_checksum. */
static void zero_tensors(flow_ctx *ctx, char *h, size_t len,
                         unsigned char *data, size_t n,
                         const char *const *names, int k)
{
    json_doc *doc = parse(ctx, h, len);
    char hex[16];
    for (int i = 0; i < k; i++) {
        const json_value *t = json_get(json_root(doc), names[i]);
        const json_value *off = json_get(t, "data_offsets");
        uint64_t b, e;
        if (!off || off->type != JSON_ARRAY || off->len != 2
            || json_u64(&off->items[0], &b) || json_u64(&off->items[1], &e)
            || b > e || e > n) {
            fprintf(stderr, "ckpt_edit: no tensor '%s'\n", names[i]);
            exit(2);
        }
        memset(data + b, 0, (size_t)(e - b));
    }
    json_free(doc);
    snprintf(hex, sizeof hex, "%08" PRIx32, fio_crc32c(0, data, n));
    patch(h, DATA_CK_KEY, hex);
}

/* spec_hash as a reader computes it (ckpt_spec_hash_all). */
static void rehash(flow_ctx *ctx, char *h, size_t len)
{
    json_doc *doc = parse(ctx, h, len);
    const json_value *m = json_get(json_root(doc), "__metadata__");
    const json_value *spec = json_get(m, "spec"), *imp = json_get(m, "imports");
    const json_value *sp = json_get(m, "spec_path");
    char hex[32];
    if (!spec || spec->type != JSON_STRING) {
        fprintf(stderr, "ckpt_edit: no spec in the header\n");
        exit(2);
    }
    snprintf(hex, sizeof hex, "%016" PRIx64,
             ckpt_spec_hash_all(spec->str, spec->len, sp ? sp->str : NULL,
                                imp ? imp->str : NULL, imp ? imp->len : 0));
    json_free(doc);
    patch(h, SPEC_HASH_KEY, hex);
}

int main(int argc, char **argv)
{
    unsigned char *f, *out;
    const char *zero[MAX_ZERO];
    char *h, *at;
    size_t n, hlen, len, cap, padded;
    int a = 1, nz = 0, re = 0;
    flow_ctx *ctx = flow_ctx_new();
    FILE *o;
    for (; a < argc && !strncmp(argv[a], "--", 2); a++) {
        if (!strcmp(argv[a], "--rehash"))
            re = 1;
        else if (!strcmp(argv[a], "--zero") && a + 1 < argc && nz < MAX_ZERO)
            zero[nz++] = argv[++a];
        else
            break;
    }
    if (!ctx || argc - a < 2 || (argc - a) % 2) {
        fprintf(stderr, "usage: ckpt_edit [--zero TENSOR]... [--rehash] IN "
                "OUT [OLD NEW ...]\n");
        return 2;
    }
    f = slurp(argv[a], &n);
    if (n < 8 || (hlen = (size_t)fio_get_le(f, 8)) > n - 8) {
        fprintf(stderr, "ckpt_edit: %s: not a checkpoint\n", argv[a]);
        return 2;
    }
    cap = hlen + 1;
    for (int i = a + 3; i < argc; i += 2)
        cap += strlen(argv[i]) + 8;
    h = calloc(1, cap);
    memcpy(h, f + 8, hlen);
    len = hlen;
    while (len && h[len - 1] == ' ')        /* the old padding */
        len--;
    h[len] = '\0';
    for (int i = a + 2; i < argc; i += 2) {
        size_t ol = strlen(argv[i]), nl = strlen(argv[i + 1]);
        if (!(at = strstr(h, argv[i]))) {
            fprintf(stderr, "ckpt_edit: '%s' not in the header\n", argv[i]);
            return 2;
        }
        memmove(at + nl, at + ol, strlen(at + ol) + 1);
        memcpy(at, argv[i + 1], nl);
        len = len - ol + nl;
    }
    if (nz)
        zero_tensors(ctx, h, len, f + 8 + hlen, n - 8 - hlen, zero, nz);
    if (re)
        rehash(ctx, h, len);
    padded = (len + 7) / 8 * 8;
    memset(h + len, ' ', padded - len);
    if ((at = strstr(h, HDR_CK_KEY))) {
        char hex[9];
        at += strlen(HDR_CK_KEY);
        memset(at, '0', 8);
        snprintf(hex, sizeof hex, "%08" PRIx32, fio_crc32c(0, h, padded));
        memcpy(at, hex, 8);
    }
    out = malloc(8 + padded);
    fio_put_le(out, padded, 8);
    memcpy(out + 8, h, padded);
    if (!(o = fopen(argv[a + 1], "wb"))
        || fwrite(out, 1, 8 + padded, o) != 8 + padded
        || fwrite(f + 8 + hlen, 1, n - 8 - hlen, o) != n - 8 - hlen
        || fclose(o)) {
        fprintf(stderr, "ckpt_edit: cannot write %s\n", argv[a + 1]);
        return 2;
    }
    free(out);
    free(h);
    free(f);
    flow_ctx_free(ctx);
    return 0;
}
