/* fileio.h - internal: atomic file output (temp file, fsync, rename, fsync
 * of the directory), CRC-32C and little-endian I/O. */
#ifndef FLOW_RUNTIME_FILEIO_H
#define FLOW_RUNTIME_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "flow/flow.h"

/* An output being written (docs/cli.md, "Output files"):
 * - "-": standard output;
 * - a FIFO, a character or block device, or an open descriptor named
 *   /dev/fd/N, /proc/self/fd/N, /dev/stdin, /dev/stdout or /dev/stderr:
 *   written in place (such a name must never be replaced by a regular
 *   file);
 * - anything else (a regular file, or nothing yet): a temporary file
 *   beside the target, renamed over it on commit.  Symbolic links are
 *   followed, so the link stays a link and its target is replaced; an
 *   existing file keeps its mode (and, where allowed, its owner).
 * Temporary files are named .NAME.tmp.HOST.PID.K; opening an output
 * removes the ones of the same NAME left by dead processes of this host
 * (a SIGKILL during a write).  Every fio_open_out that succeeds is ended
 * by exactly one fio_commit or fio_abort. */
typedef enum fio_kind { FIO_STDOUT, FIO_IN_PLACE, FIO_RENAME } fio_kind;

typedef struct fio_out {
    FILE *f;
    fio_kind kind;
    char *path;     /* requested name, owned ("-" for stdout) */
    char *target;   /* FIO_RENAME: the file replaced (links followed) */
    char *tmp;      /* FIO_RENAME: the temporary file, owned */
} fio_out;

/* Opens `path` for writing; the temporary file is created with O_EXCL
 * and mode 0666 & ~umask (an existing target's mode when there is one). */
int fio_open_out(flow_ctx *ctx, const char *path, fio_out *o);
/* Flushes and fsyncs; FIO_RENAME then renames the temporary file over
 * the target and fsyncs the directory.  On any failure the temporary
 * file is removed, nothing is left under `path` that was not there
 * before (written-in-place outputs excepted), and the error is in ctx. */
int fio_commit(flow_ctx *ctx, fio_out *o);
/* Closes and removes the temporary file (no-op on a zeroed fio_out). */
void fio_abort(fio_out *o);
/* Checks, without writing anything there, that fio_open_out(path) can
 * succeed: the directory exists and takes a new file (a temporary file
 * is created and removed), the name is no directory, socket or closed
 * descriptor, and it is not the same file (device and inode, links
 * followed) as any of the n `inputs` (NULL and "-" entries skipped). */
int fio_check_out(flow_ctx *ctx, const char *path,
                  const char *const *inputs, size_t n);

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
