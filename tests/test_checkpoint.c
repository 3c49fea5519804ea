/* test_checkpoint.c - checkpoints: bit-exact round trips, the on-disk
 * layout, one flipped byte anywhere, truncation, hostile headers, spec
 * comparison, the spec hash and vector shapes and random states checked
 * on load, and that a failed write leaves nothing behind. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../runtime/checkpoint.h"
#include "../runtime/fileio.h"
#include "../runtime/json.h"
#include "../runtime/rng.h"
#include "files_util.h"
#include "suites.h"

static flow_ctx *ctx;
static char dir[256];

static const char *spec = "flow moons {\n  dim 2\n  coupling x 4\n}\n";

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    snprintf(dir, sizeof dir, "%s", tu_mkdtemp());
}

static void teardown(void)
{
    flow_ctx_free(ctx);
    tu_rmtree(dir);
}

#define ck_assert_errmsg_has(needle) \
    ck_assert_msg(strstr(flow_errmsg(ctx), (needle)) != NULL, \
                  "message '%s' lacks '%s'", flow_errmsg(ctx), (needle))

/* The test model's state. */
static flow_real w0[6] = {0.5f, -1.25f, 3e-8f, 1e30f, -0.0f, 7};
static flow_real b0[2] = {1, 2};
static flow_real m0[6] = {1e-3f, 2e-3f, 3e-3f, 4e-3f, 5e-3f, 6e-3f};
static uint64_t rng_state[6] = {1, UINT64_MAX, 0x0123456789abcdefull, 42,
                                1, 0x3ff0000000000000ull};
static int64_t counts[3] = {-1, INT64_MIN, INT64_MAX};
static double f64[1] = {3.141592653589793};

static int write_model(const char *path)
{
    ckpt_writer *w = ckpt_writer_new(ctx);
    ckpt_info info = {
        .spec_source = spec, .epoch = 12, .step = 3400, .has_best = 1,
        .best_score = -1.2345678901234567,
        .history_json = "[{\"epoch\": 1, \"train\": -2.5, \"valid\": "
                        "-2.6}]"};
    uint64_t s23[2] = {2, 3}, s2[1] = {2}, s4[1] = {6}, s3[1] = {3};
    uint64_t s0[1] = {0};
    int rc;
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(ckpt_writer_add(w, "params/c0/w", CKPT_REAL, s23, 2, w0),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "params/c0/b", CKPT_REAL, s2, 1, b0),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "adam/m/params/c0/w", CKPT_REAL, s23,
                                     2, m0), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "rng/state", CKPT_U64, s4, 1,
                                     rng_state), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "buffers/n", CKPT_I64, s3, 1, counts),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "buffers/pi", CKPT_F64, NULL, 0, f64),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "buffers/empty", CKPT_F32, s0, 1,
                                     NULL), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_meta(w, "note", "caf\xc3\xa9 \"q\""),
                     FLOW_OK);
    rc = ckpt_writer_write(w, path);
    ckpt_writer_free(w);
    return rc;
}

START_TEST(test_round_trip)
{
    const char *p = tu_path(dir, "m.ckpt");
    ckpt *ck;
    flow_real w[6], m[6];
    uint64_t r[6], epoch, step;
    int64_t n[3];
    double pi, best;
    int has_best;
    ck_assert_int_eq(write_model(p), FLOW_OK);
    ck_assert_int_eq(tu_count_entries(dir), 1);
    ck_assert_int_eq(ckpt_read(ctx, p, &ck), FLOW_OK);
    ck_assert_uint_eq(ckpt_count(ck), 7);
    /* sorted by name */
    ck_assert_str_eq(ckpt_at(ck, 0)->name, "adam/m/params/c0/w");
    ck_assert_str_eq(ckpt_at(ck, 6)->name, "rng/state");
    ck_assert_int_eq(ckpt_get(ctx, ck, "params/c0/w", CKPT_REAL, w, 6),
                     FLOW_OK);
    ck_assert_int_eq(memcmp(w, w0, sizeof w), 0);
    ck_assert_int_eq(ckpt_get(ctx, ck, "adam/m/params/c0/w", CKPT_REAL, m, 6),
                     FLOW_OK);
    ck_assert_int_eq(memcmp(m, m0, sizeof m), 0);
    ck_assert_int_eq(ckpt_get(ctx, ck, "rng/state", CKPT_U64, r, 6), FLOW_OK);
    ck_assert_int_eq(memcmp(r, rng_state, sizeof r), 0);
    ck_assert_int_eq(ckpt_get(ctx, ck, "buffers/n", CKPT_I64, n, 3), FLOW_OK);
    ck_assert_int_eq(memcmp(n, counts, sizeof n), 0);
    ck_assert_int_eq(ckpt_get(ctx, ck, "buffers/pi", CKPT_F64, &pi, 1),
                     FLOW_OK);
    ck_assert_double_eq(pi, f64[0]);
    ck_assert_uint_eq(ckpt_find(ck, "params/c0/w")->ndim, 2);
    ck_assert_uint_eq(ckpt_find(ck, "params/c0/w")->shape[1], 3);
    ck_assert_uint_eq(ckpt_find(ck, "buffers/empty")->numel, 0);
    ck_assert_ptr_null(ckpt_find(ck, "params/c1/w"));
    /* metadata */
    ck_assert_str_eq(ckpt_meta(ck, "format"), "flowkit.checkpoint");
    ck_assert_str_eq(ckpt_meta(ck, "format_version"), "3");
    ck_assert_str_eq(ckpt_meta(ck, "flowkit_version"), FLOW_VERSION_STRING);
    ck_assert_str_eq(ckpt_meta(ck, "precision"), FLOW_REAL_NAME);
    ck_assert_str_eq(ckpt_meta(ck, "spec"), spec);
    ck_assert_str_eq(ckpt_meta(ck, "note"), "caf\xc3\xa9 \"q\"");
    ck_assert_str_eq(ckpt_meta(ck, "history"),
                     "[{\"epoch\": 1, \"train\": -2.5, \"valid\": -2.6}]");
    ck_assert_int_eq(ckpt_info_get(ctx, ck, &epoch, &step, &has_best, &best),
                     FLOW_OK);
    ck_assert_uint_eq(epoch, 12);
    ck_assert_uint_eq(step, 3400);
    ck_assert_int_ne(has_best, 0);
    ck_assert_double_eq(best, -1.2345678901234567);
    /* wrong dtype or count */
    ck_assert_int_eq(ckpt_get(ctx, ck, "rng/state", CKPT_I64, n, 3),
                     FLOW_ERR_FORMAT);
    ck_assert_errmsg_has(": tensor 'rng/state' is U64 with 6 elements, "
                         "expected I64 with 3");
    ck_assert_int_eq(ckpt_get(ctx, ck, "nope", CKPT_I64, n, 3),
                     FLOW_ERR_FORMAT);
    ck_assert_errmsg_has(": no tensor 'nope'");
    ckpt_free(ck);
}
END_TEST

START_TEST(test_layout)
{
    /* what a Python reader relies on: u64 LE length, JSON header padded to
     * 8 bytes, offsets relative to the data section, LE values */
    const char *p = tu_path(dir, "m.ckpt");
    size_t n;
    unsigned char *f;
    uint64_t hlen, b, e;
    json_doc *doc;
    const json_value *t, *off;
    float x;
    ck_assert_int_eq(write_model(p), FLOW_OK);
    f = tu_read(p, &n);
    hlen = fio_get_le(f, 8);
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_uint_lt(8 + hlen, n);
    ck_assert_int_eq(memcmp(f + 8, "{\"__metadata__\":{", 17), 0);
    ck_assert_int_eq(json_parse(ctx, "h", (char *)f + 8, hlen, 16, &doc),
                     FLOW_OK);
    t = json_get(json_root(doc), "params/c0/b");
    ck_assert_str_eq(json_get(t, "dtype")->str, FLOW_REAL_DOUBLE ? "F64"
                                                                 : "F32");
    off = json_get(t, "data_offsets");
    ck_assert_int_eq(json_u64(&off->items[0], &b), 0);
    ck_assert_int_eq(json_u64(&off->items[1], &e), 0);
    ck_assert_uint_eq(e - b, 2 * sizeof(flow_real));
    if (!FLOW_REAL_DOUBLE) {
        uint32_t u = (uint32_t)fio_get_le(f + 8 + hlen + b + 4, 4);
        memcpy(&x, &u, 4);
        ck_assert_float_eq(x, 2.0f);
    }
    /* the data checksum covers exactly the data section */
    {
        char want[32];
        snprintf(want, sizeof want, "crc32c:%08" PRIx32,
                 fio_crc32c(0, f + 8 + hlen, n - 8 - hlen));
        ck_assert_str_eq(json_get(json_get(json_root(doc), "__metadata__"),
                                  "data_checksum")->str, want);
    }
    json_free(doc);
    free(f);
}
END_TEST

static char *find(char *h, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(h + i, needle, k))
            return h + i;
    return NULL;
}

START_TEST(test_every_flipped_byte)
{
    const char *p = tu_path(dir, "m.ckpt"), *q = tu_path(dir, "x.ckpt");
    size_t n, hex;
    unsigned char *f;
    uint64_t hlen;
    ck_assert_int_eq(write_model(p), FLOW_OK);
    f = tu_read(p, &n);
    hlen = fio_get_le(f, 8);
    {
        const char *key = "\"header_checksum\":\"crc32c:";
        char *at = find((char *)f, n, key);
        ck_assert_ptr_nonnull(at);
        hex = (size_t)(at - (char *)f) + strlen(key);
    }
    for (size_t i = 0; i < n; i++) {
        ckpt *ck = NULL;
        f[i] ^= 0x20;
        tu_write(q, f, n);
        f[i] ^= 0x20;
        ck_assert_msg(ckpt_read(ctx, q, &ck) != FLOW_OK,
                      "flipped byte %zu accepted", i);
        ck_assert_ptr_null(ck);
        if (i >= 8 + hlen)
            ck_assert_errmsg_has(": data checksum mismatch (stored crc32c:");
        else if (i >= hex && i < hex + 8)   /* in the stored checksum */
            ck_assert_errmsg_has(": header checksum is not 8 lowercase hex "
                                 "digits: the file is corrupt");
        else if (i >= 8)
            ck_assert_msg(strstr(flow_errmsg(ctx), "header checksum mismatch")
                          || strstr(flow_errmsg(ctx), "no header_checksum"),
                          "byte %zu: %s", i, flow_errmsg(ctx));
    }
    free(f);
}
END_TEST

START_TEST(test_truncated)
{
    const char *p = tu_path(dir, "m.ckpt"), *q = tu_path(dir, "t.ckpt");
    size_t n, cuts[5];
    unsigned char *f;
    uint64_t hlen;
    char want[512];
    ck_assert_int_eq(write_model(p), FLOW_OK);
    f = tu_read(p, &n);
    hlen = fio_get_le(f, 8);
    cuts[0] = 0;
    cuts[1] = 5;
    cuts[2] = 8 + (size_t)hlen / 2;
    cuts[3] = 8 + (size_t)hlen;
    cuts[4] = n - 1;
    for (int k = 0; k < 5; k++) {
        ckpt *ck;
        tu_write(q, f, cuts[k]);
        ck_assert_int_eq(ckpt_read(ctx, q, &ck), FLOW_ERR_FORMAT);
        if (cuts[k] < 8)
            snprintf(want, sizeof want, "%s: truncated checkpoint (%zu "
                     "bytes)", q, cuts[k]);
        else if (cuts[k] < 8 + hlen)
            snprintf(want, sizeof want, "%s: truncated checkpoint: header "
                     "length %" PRIu64 " but only %zu bytes follow", q, hlen,
                     cuts[k] - 8);
        else
            want[0] = '\0';
        if (want[0])
            ck_assert_str_eq(flow_errmsg(ctx), want);
        else    /* the data section is short: the tensors do not fit */
            ck_assert_errmsg_has("beyond the data section");
    }
    free(f);
}
END_TEST


/* Writes a checkpoint from a header template: "@D@@@@@@" becomes the
 * data CRC, "@H@@@@@@" the header CRC (computed with it as zeros). */
static void craft(const char *path, const char *tmpl, const void *data,
                  size_t n)
{
    size_t hl = strlen(tmpl), padded = (hl + 7) / 8 * 8;
    unsigned char *f = malloc(8 + padded + n);
    char *h = (char *)f + 8, *at, hex[16];
    ck_assert_ptr_nonnull(f);
    memcpy(h, tmpl, hl);
    memset(h + hl, ' ', padded - hl);
    if ((at = find(h, padded, "@D@@@@@@"))) {
        snprintf(hex, sizeof hex, "%08" PRIx32, fio_crc32c(0, data, n));
        memcpy(at, hex, 8);
    }
    if ((at = find(h, padded, "@H@@@@@@"))) {
        memset(at, '0', 8);
        snprintf(hex, sizeof hex, "%08" PRIx32, fio_crc32c(0, h, padded));
        memcpy(at, hex, 8);
    }
    fio_put_le(f, padded, 8);
    memcpy(f + 8 + padded, data, n);
    tu_write(path, f, 8 + padded + n);
    free(f);
}

#define META(version, precision) \
    "{\"__metadata__\":{\"format\":\"flowkit.checkpoint\"," \
    "\"format_version\":\"" version "\",\"precision\":\"" precision "\"," \
    "\"spec\":\"s\",\"spec_hash\":\"fnv1a64:af63ee4c86020b22\"," \
    "\"epoch\":\"0\",\"step\":\"0\"," \
    "\"data_checksum\":\"crc32c:@D@@@@@@\"," \
    "\"header_checksum\":\"crc32c:@H@@@@@@\"}"

static void expect_craft(const char *tmpl, size_t n, const char *msg)
{
    static const unsigned char data[64];
    const char *p = tu_path(dir, "c.ckpt");
    char want[1024];
    ckpt *ck = (ckpt *)1;
    craft(p, tmpl, data, n);
    ck_assert_int_ne(ckpt_read(ctx, p, &ck), FLOW_OK);
    ck_assert_ptr_null(ck);
    snprintf(want, sizeof want, "%s: %s", p, msg);
    ck_assert_str_eq(flow_errmsg(ctx), want);
}

START_TEST(test_hostile_headers)
{
    const char *other = FLOW_REAL_DOUBLE ? "float32" : "float64";
    char tmpl[1024], msg[256];
    static const unsigned char data[16];
    ckpt *ck;
    /* a well-formed crafted file is accepted: the template is right */
    craft(tu_path(dir, "ok.ckpt"), META("1", FLOW_REAL_NAME)
          ",\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":"
          "[0,16]}}", data, 16);
    ck_assert_int_eq(ckpt_read(ctx, tu_path(dir, "ok.ckpt"), &ck), FLOW_OK);
    ckpt_free(ck);
    expect_craft(META("4", FLOW_REAL_NAME) "}", 0,
                 "checkpoint format version 4 is newer than this flowkit "
                 "supports (3): upgrade flowkit");
    snprintf(tmpl, sizeof tmpl, META("1", "%s") "}", other);
    snprintf(msg, sizeof msg, "checkpoint precision is %s but this flowkit "
             "computes in %s", other, FLOW_REAL_NAME);
    expect_craft(tmpl, 0, msg);
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}",
                 16, "tensor 'a': shape too large");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F64\","
                 "\"shape\":[1000000000000],\"data_offsets\":"
                 "[0,8000000000000]}}", 16,
                 "tensor 'a': data_offsets [0, 8000000000000] beyond the data "
                 "section (16 bytes)");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
                 "tensor 'a': data_offsets span 16 bytes but F32 of shape 3 "
                 "elements needs 12");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":"
                 "\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                 "tensor 'b': data_offsets [4, 12] overlap another tensor "
                 "(expected to start at 8)");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                 "tensor 'a': data_offsets [4, 8] leave a gap (expected to "
                 "start at 0)");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                 "4 bytes of the data section belong to no tensor");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"BF16\","
                 "\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                 "tensor 'a': unsupported dtype (F32, F64, U64 or I64)");
    expect_craft(META("1", FLOW_REAL_NAME) ",\"a\":{\"dtype\":\"F32\","
                 "\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                 "tensor 'a': need exactly dtype, shape and data_offsets");
    expect_craft("{\"__metadata__\":{\"format\":\"flowkit.checkpoint\","
                 "\"epoch\":3,\"header_checksum\":\"crc32c:@H@@@@@@\"}}", 0,
                 "metadata 'epoch' is not a string");
    expect_craft("{\"__metadata__\":{\"format\":\"other\","
                 "\"header_checksum\":\"crc32c:@H@@@@@@\"}}", 0,
                 "not a flowkit checkpoint (format is not "
                 "'flowkit.checkpoint')");
    /* a plain safetensors file */
    expect_craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":"
                 "[0,4]}}", 4, "not a flowkit checkpoint (no "
                 "header_checksum)");
    /* the header's JSON is checked after its checksum: 53 bytes of
     * header padded to 56, the end of input is at column 57 */
    {
        static const unsigned char none[1];
        char want[512];
        craft(tu_path(dir, "j.ckpt"), "{\"__metadata__\":{\"header_checksum"
              "\":\"crc32c:@H@@@@@@\"}", none, 0);
        ck_assert_int_eq(ckpt_read(ctx, tu_path(dir, "j.ckpt"), &ck),
                         FLOW_ERR_FORMAT);
        snprintf(want, sizeof want, "%s:1:57: unexpected end of input",
                 tu_path(dir, "j.ckpt"));
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
    {
        /* a header length of 2^40 is refused before any allocation */
        unsigned char f[16] = {0};
        char want[512];
        fio_put_le(f, (uint64_t)1 << 40, 8);
        tu_write(tu_path(dir, "big.ckpt"), f, 16);
        ck_assert_int_eq(ckpt_read(ctx, tu_path(dir, "big.ckpt"), &ck),
                         FLOW_ERR_FORMAT);
        snprintf(want, sizeof want, "%s: header length 1099511627776 exceeds "
                 "the limit of 100000000 bytes", tu_path(dir, "big.ckpt"));
        ck_assert_str_eq(flow_errmsg(ctx), want);
    }
}
END_TEST

START_TEST(test_spec_check)
{
    const char *p = tu_path(dir, "m.ckpt");
    ckpt *ck;
    char want[512];
    ck_assert_int_eq(write_model(p), FLOW_OK);
    ck_assert_int_eq(ckpt_read(ctx, p, &ck), FLOW_OK);
    ck_assert_int_eq(ckpt_check_spec(ctx, ck, spec), FLOW_OK);
    ck_assert_int_eq(ckpt_check_spec(ctx, ck, "flow moons {\n  dim 2\n  "
                                     "coupling x 8\n}\n"), FLOW_ERR_INVAL);
    snprintf(want, sizeof want, "%s: checkpoint was made by a different "
             "spec (spec_hash fnv1a64:%016" PRIx64 ", this spec fnv1a64:%016"
             PRIx64 "; first difference at line 3)", p,
             ckpt_spec_hash(spec, strlen(spec)),
             ckpt_spec_hash("flow moons {\n  dim 2\n  coupling x 8\n}\n",
                            strlen(spec)));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ckpt_free(ck);
    /* FNV-1a reference values (Fowler/Noll/Vo test suite) */
    ck_assert_uint_eq(ckpt_spec_hash("", 0), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(ckpt_spec_hash("a", 1), 0xaf63dc4c8601ec8cull);
    ck_assert_uint_eq(ckpt_spec_hash("foobar", 6), 0x85944171f73967e8ull);
}
END_TEST

START_TEST(test_writer_errors)
{
    ckpt_writer *w = ckpt_writer_new(ctx);
    ckpt_info info = {.spec_source = spec, .history_json = "[1, 2"};
    uint64_t s1[1] = {1};
    const char *p = tu_path(dir, "w.ckpt");
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "checkpoint: no spec and training "
                     "state given (ckpt_writer_info)");
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_ERR_FORMAT);
    ck_assert_str_eq(flow_errmsg(ctx), "history:1:6: unexpected end of input");
    info.history_json = NULL;
    info.spec_source = "bad \xff utf8";
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "checkpoint: the spec, history or a "
                     "metadata value is not valid UTF-8");
    info.spec_source = spec;
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_meta(w, "epoch", "3"), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "checkpoint: metadata key 'epoch' is "
                     "reserved");
    ck_assert_int_eq(ckpt_writer_add(w, "__metadata__", CKPT_U64, s1, 1,
                                     rng_state), FLOW_ERR_INVAL);
    ck_assert_int_eq(ckpt_writer_add(w, "a", CKPT_U64, s1, 1, rng_state),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "b", CKPT_U64, s1, 1, rng_state),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_add(w, "a", CKPT_U64, s1, 1, rng_state),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_ERR_INVAL);
    ck_assert_str_eq(flow_errmsg(ctx), "checkpoint: tensor 'a' added twice");
    /* none of the failures left a file */
    ck_assert_int_eq(tu_count_entries(dir), 0);
    ckpt_writer_free(w);
    /* the target is a directory: refused before any temp file exists */
    ck_assert_int_eq(mkdir(tu_path(dir, "d.ckpt"), 0755), 0);
    ck_assert_int_eq(write_model(tu_path(dir, "d.ckpt")), FLOW_ERR_IO);
    ck_assert_errmsg_has("d.ckpt: is a directory");
    ck_assert_int_eq(tu_count_entries(dir), 1);
    /* an existing checkpoint is replaced atomically */
    ck_assert_int_eq(write_model(p), FLOW_OK);
    ck_assert_int_eq(write_model(p), FLOW_OK);
    ck_assert_int_eq(tu_count_entries(dir), 2);
}
END_TEST

START_TEST(test_rng_resume)
{
    /* stop after an odd number of normal draws (a spare is cached), save,
     * load into a fresh stream: the next draws are the same bits */
    flow_rng a, b;
    uint64_t st[CKPT_RNG_WORDS], back[CKPT_RNG_WORDS];
    uint64_t shape[1] = {CKPT_RNG_WORDS};
    const char *p = tu_path(dir, "r.ckpt");
    ckpt_writer *w = ckpt_writer_new(ctx);
    ckpt_info info = {.spec_source = spec, .epoch = 1, .step = 1};
    ckpt *ck;
    rng_seed(&a, 99);
    for (int i = 0; i < 7; i++)
        (void)rng_normal1(&a);
    ck_assert_int_ne(a.has_spare, 0);
    ckpt_rng_pack(&a, st);
    ck_assert_int_eq(ckpt_writer_add(w, "rng/state", CKPT_U64, shape, 1, st),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_OK);
    ckpt_writer_free(w);
    ck_assert_int_eq(ckpt_read(ctx, p, &ck), FLOW_OK);
    ck_assert_int_eq(ckpt_get(ctx, ck, "rng/state", CKPT_U64, back,
                              CKPT_RNG_WORDS), FLOW_OK);
    ckpt_free(ck);
    rng_seed(&b, 1);
    ck_assert_int_eq(ckpt_rng_unpack(&b, back), FLOW_OK);
    for (int i = 0; i < 100; i++) {
        double x = rng_normal1(&a), y = rng_normal1(&b);
        ck_assert_int_eq(memcmp(&x, &y, sizeof x), 0);
    }
    back[4] = 2;
    ck_assert_int_eq(ckpt_rng_unpack(&b, back), FLOW_ERR_FORMAT);
}
END_TEST

/* spec_hash covers the spec, its path and the imports, and every read
 * checks it: a header edited with its checksums made right again is
 * refused, as is an imports list added without its hash. */
START_TEST(test_spec_hash_checked)
{
    static const char imports[] = "[{\"path\":\"lib/c.flow\",\"import\":"
        "\"lib/c.flow\",\"resolved\":\"/x/lib/c.flow\",\"aliases\":[],"
        "\"source\":\"const H = 8;\\n\"}]";
    const char *p = tu_path(dir, "i.ckpt");
    ckpt_info info = {.spec_source = spec, .spec_path = "m.flow",
                      .imports_json = imports};
    uint64_t one[1] = {1}, h_all, h_s, h_t;
    char tmpl[1024], msg[512], want[64];
    ckpt_writer *w = ckpt_writer_new(ctx);
    ckpt *ck;
    ck_assert_int_eq(ckpt_writer_add(w, "a", CKPT_U64, one, 1, one), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_info(w, &info), FLOW_OK);
    ck_assert_int_eq(ckpt_writer_write(w, p), FLOW_OK);
    ckpt_writer_free(w);
    ck_assert_int_eq(ckpt_read(ctx, p, &ck), FLOW_OK);
    h_all = ckpt_spec_hash_all(spec, strlen(spec), "m.flow", imports,
                               strlen(imports));
    ck_assert_uint_ne(h_all, ckpt_spec_hash(spec, strlen(spec)));
    snprintf(want, sizeof want, "fnv1a64:%016" PRIx64, h_all);
    ck_assert_str_eq(ckpt_meta(ck, "spec_hash"), want);
    ck_assert_str_eq(ckpt_meta(ck, "imports"), imports);
    ck_assert_str_eq(ckpt_meta(ck, "spec_path"), "m.flow");
    ckpt_free(ck);
    /* the spec "s" under the hash of "t" */
    h_s = ckpt_spec_hash("s", 1);
    h_t = ckpt_spec_hash("t", 1);
    snprintf(tmpl, sizeof tmpl, "{\"__metadata__\":{\"format\":"
             "\"flowkit.checkpoint\",\"format_version\":\"2\",\"precision\":"
             "\"%s\",\"spec\":\"s\",\"spec_hash\":\"fnv1a64:%016" PRIx64
             "\",\"epoch\":\"0\",\"step\":\"0\",\"data_checksum\":"
             "\"crc32c:@D@@@@@@\",\"header_checksum\":\"crc32c:@H@@@@@@\"}}",
             FLOW_REAL_NAME, h_t);
    snprintf(msg, sizeof msg, "the embedded spec does not match its "
             "spec_hash (stored fnv1a64:%016" PRIx64 ", computed fnv1a64:"
             "%016" PRIx64 "): the checkpoint was edited or is corrupt", h_t,
             h_s);
    expect_craft(tmpl, 0, msg);
    /* imports added, the hash still that of the spec alone */
    snprintf(tmpl, sizeof tmpl, "{\"__metadata__\":{\"format\":"
             "\"flowkit.checkpoint\",\"format_version\":\"2\",\"precision\":"
             "\"%s\",\"spec\":\"s\",\"spec_path\":\"m.flow\",\"imports\":"
             "\"[]\",\"spec_hash\":\"fnv1a64:%016" PRIx64 "\",\"epoch\":"
             "\"0\",\"step\":\"0\",\"data_checksum\":\"crc32c:@D@@@@@@\","
             "\"header_checksum\":\"crc32c:@H@@@@@@\"}}", FLOW_REAL_NAME,
             h_s);
    snprintf(msg, sizeof msg, "the embedded spec does not match its "
             "spec_hash (stored fnv1a64:%016" PRIx64 ", computed fnv1a64:"
             "%016" PRIx64 "): the checkpoint was edited or is corrupt", h_s,
             ckpt_spec_hash_all("s", 1, "m.flow", "[]", 2));
    expect_craft(tmpl, 0, msg);
    /* a NUL character in a metadata value (the spec is a C string) */
    snprintf(tmpl, sizeof tmpl, "{\"__metadata__\":{\"format\":"
             "\"flowkit.checkpoint\",\"format_version\":\"2\",\"precision\":"
             "\"%s\",\"spec\":\"s\\u0000x\",\"spec_hash\":\"fnv1a64:%016"
             PRIx64 "\",\"epoch\":\"0\",\"step\":\"0\",\"data_checksum\":"
             "\"crc32c:@D@@@@@@\",\"header_checksum\":\"crc32c:@H@@@@@@\"}}",
             FLOW_REAL_NAME, h_s);
    expect_craft(tmpl, 0, "metadata 'spec' holds a NUL character");
}
END_TEST

/* Model tensors are vectors: the shape is checked, not only the number of
 * elements. */
START_TEST(test_vector_shape_checked)
{
    const char *p = tu_path(dir, "m.ckpt");
    flow_real w[6];
    double pi;
    char want[256];
    ckpt *ck;
    ck_assert_int_eq(write_model(p), FLOW_OK);
    ck_assert_int_eq(ckpt_read(ctx, p, &ck), FLOW_OK);
    ck_assert_int_eq(ckpt_get(ctx, ck, "params/c0/w", CKPT_REAL, w, 6),
                     FLOW_OK);
    ck_assert_int_eq(ckpt_get_vec(ctx, ck, "params/c0/w", CKPT_REAL, w, 6),
                     FLOW_ERR_FORMAT);
    snprintf(want, sizeof want, "%s: tensor 'params/c0/w' is %s of shape "
             "[2, 3], expected %s of shape [6]", p,
             ckpt_dtype_name(CKPT_REAL), ckpt_dtype_name(CKPT_REAL));
    ck_assert_str_eq(flow_errmsg(ctx), want);
    ck_assert_int_eq(ckpt_get_vec(ctx, ck, "buffers/pi", CKPT_F64, &pi, 1),
                     FLOW_ERR_FORMAT);
    ck_assert_errmsg_has("tensor 'buffers/pi' is F64 of shape [], expected "
                         "F64 of shape [1]");
    ck_assert_int_eq(ckpt_get_vec(ctx, ck, "params/c0/b", CKPT_REAL, w, 2),
                     FLOW_OK);
    ck_assert_msg(w[0] == b0[0] && w[1] == b0[1],
                  "params/c0/b read back as [%g, %g], written [%g, %g]",
                  (double)w[0], (double)w[1], (double)b0[0], (double)b0[1]);
    ckpt_free(ck);
}
END_TEST

/* A stored random stream must be a state a stream can reach: all-zero
 * xoshiro256** words are a fixed point (the stream returns 0 for ever and
 * the normal sampler never finishes). */
START_TEST(test_rng_states_checked)
{
    flow_rng r;
    uint64_t good[CKPT_RNG_WORDS], bad[CKPT_RNG_WORDS] = {0};
    double v, most = 0;
    rng_seed(&r, 5);
    (void)rng_normal1(&r);
    ckpt_rng_pack(&r, good);
    ck_assert_ptr_null(ckpt_rng_check(good));
    ck_assert_str_eq(ckpt_rng_check(bad), "the xoshiro256** state is all "
                     "zero");
    ck_assert_int_eq(ckpt_rng_unpack(&r, bad), FLOW_ERR_FORMAT);
    memcpy(bad, good, sizeof bad);
    bad[4] = 2;
    ck_assert_str_eq(ckpt_rng_check(bad), "has_spare is neither 0 nor 1");
    bad[4] = 1;
    for (int k = 0; k < 3; k++) {
        v = k == 0 ? NAN : k == 1 ? INFINITY : -16.5;
        memcpy(&bad[5], &v, sizeof v);
        ck_assert_str_eq(ckpt_rng_check(bad), "the cached normal deviate "
                         "is out of range");
    }
    v = -12.0;
    memcpy(&bad[5], &v, sizeof v);
    ck_assert_ptr_null(ckpt_rng_check(bad));
    /* the bound holds for real draws: |N| <= sqrt(2 * 105 ln 2) = 12.07 */
    for (int i = 0; i < 200000; i++) {
        v = fabs(rng_normal1(&r));
        most = v > most ? v : most;
    }
    ck_assert_msg(most > 3.5 && most < 12.07, "largest |draw| %g", most);
}
END_TEST

Suite *suite_checkpoint(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("round_trip");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_rng_resume);
    suite_add_tcase(s, tc);
    /* every byte of a file flipped, every length cut: the slow ones */
    tc = tcase_create("damaged_files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_every_flipped_byte);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_hostile_headers);
    suite_add_tcase(s, tc);
    tc = tcase_create("refusals");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_spec_check);
    tcase_add_test(tc, test_writer_errors);
    tcase_add_test(tc, test_spec_hash_checked);
    tcase_add_test(tc, test_vector_shape_checked);
    tcase_add_test(tc, test_rng_states_checked);
    suite_add_tcase(s, tc);
    return s;
}
