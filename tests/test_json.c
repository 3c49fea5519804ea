/* test_json.c - the strict JSON reader and writer: values, escapes,
 * located errors for every malformation, depth limit, round trips. */
#include <stdlib.h>
#include <string.h>

#include "../runtime/json.h"
#include "suites.h"

static flow_ctx *ctx;

static void setup(void)
{
    ctx = flow_ctx_new();
    ck_assert_ptr_nonnull(ctx);
}

static void teardown(void) { flow_ctx_free(ctx); }

static json_doc *parse_ok(const char *text)
{
    json_doc *d = NULL;
    int rc = json_parse(ctx, "t", text, strlen(text), JSON_DEFAULT_DEPTH, &d);
    ck_assert_msg(rc == FLOW_OK, "'%s': %s", text, flow_errmsg(ctx));
    return d;
}

static void parse_bad(const char *text, size_t len, const char *msg)
{
    json_doc *d = (json_doc *)1;
    ck_assert_int_eq(json_parse(ctx, "t", text, len, JSON_DEFAULT_DEPTH, &d),
                     FLOW_ERR_FORMAT);
    ck_assert_ptr_null(d);
    ck_assert_str_eq(flow_errmsg(ctx), msg);
}
#define BAD(text, msg) parse_bad(text, strlen(text), msg)

START_TEST(test_values)
{
    json_doc *d = parse_ok(" {\"a\": [1, -2.5e3, 0, true, false, null],\n"
                           "  \"s\": \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9"
                           "\\ud83d\\ude00\", \"e\": {}, \"z\": []} ");
    const json_value *r = json_root(d), *a, *s;
    uint64_t u;
    ck_assert_int_eq(r->type, JSON_OBJECT);
    ck_assert_uint_eq(r->len, 4);
    a = json_get(r, "a");
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(a->len, 6);
    ck_assert_double_eq(a->items[0].num, 1);
    ck_assert_double_eq(a->items[1].num, -2500);
    ck_assert_int_eq(a->items[3].type, JSON_TRUE);
    ck_assert_int_eq(a->items[4].type, JSON_FALSE);
    ck_assert_int_eq(a->items[5].type, JSON_NULL);
    ck_assert_int_eq(json_u64(&a->items[0], &u), 0);
    ck_assert_uint_eq(u, 1);
    ck_assert_int_eq(json_u64(&a->items[1], &u), -1);
    s = json_get(r, "s");
    ck_assert_str_eq(s->str, "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    ck_assert_uint_eq(s->len, 15);
    ck_assert_uint_eq(json_get(r, "e")->len, 0);
    ck_assert_ptr_null(json_get(r, "nope"));
    ck_assert_uint_eq(json_get(r, "s")->offset, 49);
    json_free(d);
    /* 64-bit integers exactly, beyond double precision */
    d = parse_ok("[18446744073709551615, 18446744073709551616, 9007199254"
                 "740993]");
    ck_assert_int_eq(json_u64(&json_root(d)->items[0], &u), 0);
    ck_assert_uint_eq(u, UINT64_MAX);
    ck_assert_int_eq(json_u64(&json_root(d)->items[1], &u), -1);
    ck_assert_int_eq(json_u64(&json_root(d)->items[2], &u), 0);
    ck_assert_uint_eq(u, 9007199254740993ull);
    json_free(d);
    /* \u0000 inside a string keeps its length */
    d = parse_ok("\"a\\u0000b\"");
    ck_assert_uint_eq(json_root(d)->len, 3);
    json_free(d);
}
END_TEST

START_TEST(test_errors)
{
    BAD("", "t:1:1: unexpected end of input");
    BAD("  \n ", "t:2:2: unexpected end of input");
    BAD("{\"a\": 1,}", "t:1:9: expected a string key");
    BAD("[1, 2,]", "t:1:7: expected a value");
    BAD("[1 2]", "t:1:4: expected ',' or ']'");
    BAD("{\"a\" 1}", "t:1:6: expected ':' after the key");
    BAD("{\"a\": 1 \"b\": 2}", "t:1:9: expected ',' or '}'");
    BAD("{\"a\": 1, \"b\": 2, \"a\": 3}", "t:1:18: duplicate key \"a\"");
    BAD("[01]", "t:1:2: invalid number (leading zero)");
    BAD("[1.]", "t:1:2: invalid number");
    BAD("[-]", "t:1:2: invalid number");
    BAD("[1e]", "t:1:2: invalid number");
    BAD("[.5]", "t:1:2: expected a value");
    BAD("[1e999]", "t:1:2: number out of range");
    BAD("[NaN]", "t:1:2: expected a value");
    BAD("[tru]", "t:1:2: expected a value");
    BAD("// c\n1", "t:1:1: expected a value");
    BAD("1 2", "t:1:3: unexpected characters after the value");
    BAD("\"abc", "t:1:1: unterminated string");
    BAD("[\"a\tb\"]", "t:1:4: control character in string");
    BAD("[\"\\x\"]", "t:1:3: invalid escape '\\x'");
    BAD("[\"\\u12g4\"]", "t:1:3: invalid \\u escape");
    BAD("[\"\\ud800\"]", "t:1:3: lone surrogate in \\u escape");
    BAD("[\"\\udc00\"]", "t:1:3: lone surrogate in \\u escape");
    BAD("[\"\\ud800\\u0041\"]", "t:1:3: lone surrogate in \\u escape");
    BAD("[\"\xc3\x28\"]", "t:1:3: invalid UTF-8 in string");
    BAD("[\"\xe0\x80\xaf\"]", "t:1:3: invalid UTF-8 in string");  /* overlong */
    BAD("[\"\xed\xa0\x80\"]", "t:1:3: invalid UTF-8 in string"); /* surrogate */
    BAD("{1: 2}", "t:1:2: expected a string key");
    BAD("{\"a\": ", "t:1:7: unexpected end of input");
    BAD("[1,\n  2,\n  x]", "t:3:3: expected a value");
    parse_bad("[1,\0 2]", 7, "t:1:4: expected a value");
}
END_TEST

START_TEST(test_depth_limit)
{
    /* 64 levels parse, 65 do not; a million '[' fail fast with no
     * recursion blow-up */
    enum { HUGE = 1000000 };
    char *s = malloc(HUGE + 1);
    json_doc *d;
    ck_assert_ptr_nonnull(s);
    memset(s, '[', 64);
    memset(s + 64, ']', 64);
    ck_assert_int_eq(json_parse(ctx, "t", s, 128, 64, &d), FLOW_OK);
    json_free(d);
    memset(s, '[', 65);
    memset(s + 65, ']', 65);
    ck_assert_int_eq(json_parse(ctx, "t", s, 130, 64, &d), FLOW_ERR_FORMAT);
    ck_assert_str_eq(flow_errmsg(ctx), "t:1:65: nesting deeper than 64 "
                     "levels");
    memset(s, '[', HUGE);
    ck_assert_int_eq(json_parse(ctx, "t", s, HUGE, 64, &d), FLOW_ERR_FORMAT);
    memset(s, '{', HUGE);
    ck_assert_int_eq(json_parse(ctx, "t", s, HUGE, 64, &d), FLOW_ERR_FORMAT);
    free(s);
}
END_TEST

START_TEST(test_many_keys)
{
    /* 100k distinct keys, then one duplicate at the very end: sorting
     * finds it without quadratic work */
    json_buf b;
    json_doc *d;
    json_buf_init(&b);
    json_buf_raw(&b, "{", 1);
    for (int i = 0; i < 100000; i++)
        json_buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i, i);
    json_buf_raw(&b, "}", 1);
    ck_assert_int_eq(b.oom, 0);
    ck_assert_int_eq(json_parse(ctx, "t", b.s, b.len, 64, &d), FLOW_OK);
    ck_assert_uint_eq(json_root(d)->len, 100000);
    ck_assert_double_eq(json_get(json_root(d), "k99999")->num, 99999);
    json_free(d);
    b.len--;
    json_buf_raw(&b, ",\"k5\":1}", 8);
    ck_assert_int_eq(json_parse(ctx, "t", b.s, b.len, 64, &d),
                     FLOW_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(flow_errmsg(ctx), ": duplicate key \"k5\""));
    json_buf_free(&b);
}
END_TEST

START_TEST(test_writer_round_trip)
{
    const char *src = "{\"a\":[1,-2.5e3,0,true,false,null],\"s\":\"x\\\"\\\\"
                      "\\n\\u0001\xc3\xa9\",\"o\":{\"k\":{}},\"n\":[]}";
    json_doc *d = parse_ok(src), *d2;
    json_buf b;
    json_buf_init(&b);
    json_buf_value(&b, json_root(d));
    ck_assert_int_eq(b.oom, 0);
    ck_assert_int_eq(b.bad_utf8, 0);
    ck_assert_str_eq(b.s, src);
    /* and what it writes parses again to the same text */
    ck_assert_int_eq(json_parse(ctx, "t", b.s, b.len, 64, &d2), FLOW_OK);
    json_buf_free(&b);
    json_buf_value(&b, json_root(d2));
    ck_assert_str_eq(b.s, src);
    json_buf_free(&b);
    json_free(d);
    json_free(d2);
    /* invalid UTF-8 is flagged and replaced so the output stays JSON */
    json_buf_init(&b);
    json_buf_string(&b, "a\xff" "b", 3);
    ck_assert_int_ne(b.bad_utf8, 0);
    ck_assert_str_eq(b.s, "\"a\xef\xbf\xbd" "b\"");
    json_buf_free(&b);
    ck_assert_int_ne(json_utf8_valid("\xf0\x9f\x98\x80", 4), 0);
    /* above U+10FFFF */
    ck_assert_int_eq(json_utf8_valid("\xf4\x90\x80\x80", 4), 0);
}
END_TEST

START_TEST(test_mutations)
{
    /* 20000 damaged documents: parsed or refused with a located message;
     * whatever parses is written back and parses to the same text */
    static const char base[] = "{\"__metadata__\":{\"spec\":\"flow {\\n}\","
        "\"h\":\"[1,2.5e-3]\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
        "\"data_offsets\":[0,24]},\"u\":\"\\u00e9\\ud83d\\ude00\","
        "\"t\":[true,false,null,-0.0]}";
    static const char alphabet[] = "{}[]\",:\\u0123456789.eE+-tfn \n";
    char buf[512];
    size_t ok = 0;
    uint64_t x = 88172645463325252ull;   /* xorshift64 (Marsaglia 2003) */
    for (int it = 0; it < 20000; it++) {
        size_t n = sizeof base - 1;
        json_doc *d;
        memcpy(buf, base, n);
        for (int k = 0; k < 1 + it % 3; k++) {
            size_t at;
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            at = (size_t)(x % n);
            if (x >> 62 == 0 && n > 1) {
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            } else if (x >> 62 == 1 && n < sizeof buf) {
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = alphabet[(x >> 20) % (sizeof alphabet - 1)];
                n++;
            } else {
                buf[at] = (x >> 62 == 2)
                          ? alphabet[(x >> 20) % (sizeof alphabet - 1)]
                          : (char)(x >> 24);
            }
        }
        if (json_parse(ctx, "t", buf, n, 8, &d) == FLOW_OK) {
            json_buf b1, b2;
            json_doc *d2;
            json_buf_init(&b1);
            json_buf_init(&b2);
            json_buf_value(&b1, json_root(d));
            ck_assert_int_eq(b1.oom, 0);
            ck_assert_int_eq(b1.bad_utf8, 0);
            ck_assert_int_eq(json_parse(ctx, "t", b1.s, b1.len, 8, &d2),
                             FLOW_OK);
            json_buf_value(&b2, json_root(d2));
            ck_assert_str_eq(b1.s, b2.s);
            json_buf_free(&b1);
            json_buf_free(&b2);
            json_free(d2);
            json_free(d);
            ok++;
        } else {
            ck_assert_msg(!strncmp(flow_errmsg(ctx), "t:", 2), "%s",
                          flow_errmsg(ctx));
        }
    }
    ck_assert_uint_gt(ok, 100);
    ck_assert_uint_lt(ok, 19000);
}
END_TEST

Suite *suite_json(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("parser");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_values);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_depth_limit);
    tcase_add_test(tc, test_many_keys);
    suite_add_tcase(s, tc);
    tc = tcase_create("writer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_writer_round_trip);
    suite_add_tcase(s, tc);
    tc = tcase_create("mutations");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mutations);
    suite_add_tcase(s, tc);
    return s;
}
