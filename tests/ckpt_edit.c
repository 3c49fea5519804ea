/* ckpt_edit.c - test helper: rewrites text in a checkpoint's JSON header
 * and makes the header consistent again (length, padding to 8 bytes,
 * header checksum), so tests can craft checkpoints that pass the checksum
 * and must be refused for what they say (another precision, a newer
 * format version, huge tensors).  The data section is copied unchanged.
 *   ckpt_edit IN OUT OLD NEW [OLD NEW ...]
 * Each OLD (first occurrence in the header) becomes NEW; exit 2 when an
 * OLD is not there.  Format: docs/formats.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/fileio.h"

#define HDR_CK_KEY "\"header_checksum\":\"crc32c:"

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

int main(int argc, char **argv)
{
    unsigned char *f, *out;
    char *h, *at;
    size_t n, hlen, len, cap, padded;
    FILE *o;
    if (argc < 5 || (argc - 3) % 2) {
        fprintf(stderr, "usage: ckpt_edit IN OUT OLD NEW [OLD NEW ...]\n");
        return 2;
    }
    f = slurp(argv[1], &n);
    if (n < 8 || (hlen = (size_t)fio_get_le(f, 8)) > n - 8) {
        fprintf(stderr, "ckpt_edit: %s: not a checkpoint\n", argv[1]);
        return 2;
    }
    cap = hlen + 1;
    for (int i = 4; i < argc; i += 2)
        cap += strlen(argv[i]) + 8;
    h = calloc(1, cap);
    memcpy(h, f + 8, hlen);
    len = hlen;
    while (len && h[len - 1] == ' ')        /* the old padding */
        len--;
    h[len] = '\0';
    for (int i = 3; i < argc; i += 2) {
        size_t ol = strlen(argv[i]), nl = strlen(argv[i + 1]);
        if (!(at = strstr(h, argv[i]))) {
            fprintf(stderr, "ckpt_edit: '%s' not in the header\n", argv[i]);
            return 2;
        }
        memmove(at + nl, at + ol, strlen(at + ol) + 1);
        memcpy(at, argv[i + 1], nl);
        len = len - ol + nl;
    }
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
    if (!(o = fopen(argv[2], "wb"))
        || fwrite(out, 1, 8 + padded, o) != 8 + padded
        || fwrite(f + 8 + hlen, 1, n - 8 - hlen, o) != n - 8 - hlen
        || fclose(o)) {
        fprintf(stderr, "ckpt_edit: cannot write %s\n", argv[2]);
        return 2;
    }
    free(out);
    free(h);
    free(f);
    return 0;
}
