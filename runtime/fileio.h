/* fileio.h - internal: atomic file output (temp file, fsync, rename, fsync
 * of the directory), CRC-32C and little-endian I/O. */
#ifndef FLOW_RUNTIME_FILEIO_H
#define FLOW_RUNTIME_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "flow/flow.h"

/* An output being written: a temp file next to `path`, or stdout for "-".
 * Every fio_open_out that succeeds is ended by exactly one fio_commit or
 * fio_abort. */
typedef struct fio_out {
    FILE *f;
    char *path;     /* requested name, owned ("-" for stdout) */
    char *tmp;      /* temp path in the same directory, owned; NULL for "-" */
} fio_out;

/* Opens `path` for writing ("-" = stdout).  The temp file is created with
 * O_EXCL and mode 0666 & ~umask in the directory of `path`. */
int fio_open_out(flow_ctx *ctx, const char *path, fio_out *o);
/* Flushes, fsyncs and renames the temp file over `path`, then fsyncs the
 * directory.  On any failure the temp file is removed, nothing is left
 * under `path` that was not there before, and the error is in ctx. */
int fio_commit(flow_ctx *ctx, fio_out *o);
/* Closes and removes the temp file (no-op on a zeroed fio_out). */
void fio_abort(fio_out *o);

/* CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78, the
 * iSCSI/ext4 checksum; RFC 3720 sec. 12.1).  Start with crc = 0; chain by
 * passing the previous result.  crc32c("123456789") = 0xE3069283. */
uint32_t fio_crc32c(uint32_t crc, const void *data, size_t n);

/* Little-endian encode/decode of unsigned integers of 1..8 bytes. */
void fio_put_le(unsigned char *p, uint64_t v, size_t bytes);
uint64_t fio_get_le(const unsigned char *p, size_t bytes);
/* Copies n elements of `size` bytes (2, 4 or 8) between host order and
 * little-endian order (the same operation both ways). */
void fio_swap_le(void *dst, const void *src, size_t n, size_t size);

#endif
