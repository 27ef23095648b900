/* The HTTP/1.1 request parser and chunked decoder (core/http1.c), plus a short random
 * mutation pass over both (crash and invariant checks; the libFuzzer driver goes further). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"
#include "test.h"

/* Parse text as a complete head; returns the status (0 = ok). */
static int parse(const char *text, struct ab_http_head *h)
{
    static char buf[65536];
    char err[160];
    size_t len = strlen(text);
    memcpy(buf, text, len);
    size_t scanned = 0;
    size_t end = ab_http_head_end(buf, len, &scanned);
    if (end == 0) {
        return -1;
    }
    return ab_http_parse_head(buf, end, h, err, sizeof(err));
}

static void test_good_heads(void)
{
    struct ab_http_head h;
    CHECK(parse("POST /webhook?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", &h) == 0);
    CHECK_STR(h.method, "POST");
    CHECK_STR(h.path, "/webhook");
    CHECK_STR(h.query, "x=1");
    CHECK(h.content_length == 5 && h.keep_alive == 1 && h.minor == 1 && !h.chunked);
    /* empty lines before the request line (CRLF or LF), blanks around values */
    CHECK(parse("\r\n\nGET / HTTP/1.0\r\nX-A:  b c \t\r\n\r\n", &h) == 0);
    CHECK_STR(ab_http_field(&h, "x-a"), "b c");
    CHECK(h.keep_alive == 0 && h.content_length == -1);
    CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &h) == 0 && h.keep_alive);
    CHECK(parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", &h) == 0);
    CHECK(h.keep_alive == 0);
    CHECK(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-length:  007 \r\n\r\n", &h) == 0);
    CHECK(h.content_length == 7);
    CHECK(parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &h) == 0);
    CHECK(h.chunked);
    CHECK(parse("POST /w HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n", &h) == 0);
    CHECK(h.expect_continue);
    CHECK(parse("GET http://example.org/webhook?challenge=a HTTP/1.1\r\nHost: x\r\n\r\n", &h) == 0);
    CHECK_STR(h.path, "/webhook");
    CHECK_STR(h.query, "challenge=a");
    CHECK(parse("GET http://example.org?q HTTP/1.1\r\nHost: x\r\n\r\n", &h) == 0);
    CHECK_STR(h.path, "/");
    CHECK(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &h) == 0);
}

static void test_bad_heads(void)
{
    struct ab_http_head h;
    static const struct {
        const char *text;
        int status;
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400},
        /* equal repeats too (llhttp refuses them) */
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400},
        /* a bare LF ending a header line, the request line, the empty line (issue 23) */
        {"POST / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 23\r\n\r\n", 400},
        {"POST / HTTP/1.1\nHost: a\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\n\n", 400},
        /* an empty Transfer-Encoding beside Content-Length, or alone */
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding:  \r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400},
        {"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
         400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
         "\r\n\r\n", 400},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\n\r\n", 400},                              /* no Host */
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
        {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400},
        {"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},             /* blank before the colon */
        {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400},   /* obs-fold */
        {"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400},           /* bare CR */
        {"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nNoColon\r\nHost: a\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 417},
        {"GET / HTTP/1.1\r\n: empty\r\nHost: a\r\n\r\n", 400},
        {"HTTP/1.1 200 OK\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = parse(cases[i].text, &h);
        if (rc != cases[i].status) {
            fprintf(stderr, "  case %zu: got %d, want %d\n", i, rc, cases[i].status);
            t_cur_failed = 1;
        }
    }
    /* too many fields */
    char big[8192] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < AB_HTTP_MAX_FIELDS; i++) {
        strcat(big, "X: y\r\n");
    }
    strcat(big, "\r\n");
    CHECK(parse(big, &h) == 431);
}

static void test_head_end(void)
{
    const char *text = "GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
    size_t len = strlen(text), scanned = 0, end = 0;
    /* byte by byte: found exactly once, at the same place */
    for (size_t n = 1; n <= len && end == 0; n++) {
        end = ab_http_head_end(text, n, &scanned);
        CHECK(end == 0 || n >= 27);
    }
    CHECK(end == 27);
    scanned = 0;
    CHECK(ab_http_head_end("\r\n\r\n", 4, &scanned) == 0); /* only empty lines: no head yet */
    scanned = 0;
    CHECK(ab_http_head_end("GET / HTTP/1.0\n\n", 16, &scanned) == 16);
}

static void test_plausible(void)
{
    CHECK(ab_http_head_plausible("", 0));
    CHECK(ab_http_head_plausible("\r\nPOS", 5));
    CHECK(ab_http_head_plausible("GET /", 5));
    CHECK(!ab_http_head_plausible("\x16\x03\x01\x02", 4));
    CHECK(!ab_http_head_plausible(" GET", 4));
    CHECK(!ab_http_head_plausible("GE(T", 4));
}

static void test_combined_fields(void)
{
    struct ab_http_head h;
    CHECK(parse("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.2.3\r\nX-Other: z\r\n"
                "x-forwarded-for: 8.8.8.8, 9.9.9.9\r\n\r\n",
                &h) == 0);
    char out[64];
    int trunc = 0;
    CHECK(ab_http_field_all(&h, "X-Forwarded-For", out, sizeof(out), &trunc) == 2);
    CHECK_STR(out, "10.1.2.3, 8.8.8.8, 9.9.9.9");
    CHECK(!trunc);
    char small[12];
    ab_http_field_all(&h, "X-Forwarded-For", small, sizeof(small), &trunc);
    CHECK(trunc);
    CHECK(ab_http_field_all(&h, "Forwarded", out, sizeof(out), &trunc) == 0);
}

/* Decode all of text, fed in pieces of `step` bytes; returns the status, body into out. */
static int dechunk(const char *text, size_t step, char *out, size_t *outlen)
{
    struct ab_chunked c;
    ab_chunked_init(&c, 1024);
    size_t len = strlen(text), pos = 0, o = 0;
    int rc = AB_CHUNKED_MORE;
    while (pos < len && rc == AB_CHUNKED_MORE) {
        size_t avail = len - pos < step ? len - pos : step;
        size_t off = 0;
        while (off < avail && rc == AB_CHUNKED_MORE) {
            size_t used = 0, dlen = 0;
            const char *data = NULL, *err = NULL;
            rc = ab_chunked_decode(&c, text + pos + off, avail - off, &used, &data, &dlen, &err);
            memcpy(out + o, data ? data : "", dlen);
            o += dlen;
            off += used;
            if (used == 0 && rc == AB_CHUNKED_MORE) {
                break;
            }
        }
        pos += off;
    }
    out[o] = '\0';
    *outlen = o;
    return rc;
}

static void test_chunked(void)
{
    char out[256];
    size_t n;
    const char *good[] = {
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "5;ext=1\r\nhello\r\n6;a=\"b;\\\"c\t\";d\r\n world\r\n0;last\r\nTrailer: x\r\n\r\n",
        "005\r\nhello\r\n06\r\n world\r\n0\r\nA:\r\nB-c: d e\r\n\r\n",
        "A\r\nhello worl\r\n1\r\nd\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        for (size_t step = 1; step <= 64; step *= 2) {
            int rc = dechunk(good[i], step, out, &n);
            CHECK(rc == AB_CHUNKED_DONE);
            CHECK(i == 3 ? strcmp(out, "hello world") == 0 : strcmp(out, "hello world") == 0);
        }
    }
    const char *bad[] = {
        "x\r\n",  "\r\n", "5\r\nhelloX\r\n", "5\r\nhello\r\r\n", "1234567890abcdef0\r\n",
        "5 x\r\n", "5;\x01\r\n", "0\r\nTrailer\x01\r\n\r\n", "5\rX",
        /* issue 23: whitespace after the size, an empty extension, an unbalanced quote */
        "5 \r\nhello\r\n0\r\n\r\n", "5\t;a\r\n", "5;\r\nhello\r\n0\r\n\r\n",
        "5;a=\"b\r\nhello\r\n0\r\n\r\n", "5;a=\"b\\\"\r\n",
        /* the rest of llhttp's strict chunked grammar */
        "5; a\r\n", "5;a =b\r\n", "5;a=\"b\"c\r\n", "5;a=b c\r\n", "5\nhello\r\n",
        "5\r\nhello\n0\r\n\r\n", "0\r\nT: v\n\r\n", "0\r\n\n", "0\r\nfoo\r\n\r\n",
        "0\r\nA: b\r\n c\r\n\r\n", "0\r\nContent-Length: 5\r\n\r\n",
        "0\r\ntransfer-encoding: chunked\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = dechunk(bad[i], 3, out, &n);
        if (rc != AB_CHUNKED_ERROR) {
            fprintf(stderr, "  bad chunked case %zu accepted (%d)\n", i, rc);
            t_cur_failed = 1;
        }
    }
    /* the decoder stops right after the message: pipelined bytes are left */
    struct ab_chunked c;
    ab_chunked_init(&c, 1024);
    const char *two = "0\r\n\r\nGET / HTTP/1.1\r\n";
    size_t used = 0, dlen = 0;
    const char *data, *err;
    CHECK(ab_chunked_decode(&c, two, strlen(two), &used, &data, &dlen, &err) == AB_CHUNKED_DONE);
    CHECK(used == 5);
    /* a long size line or trailer is bounded */
    char longline[3000];
    memset(longline, 'a', sizeof(longline));
    memcpy(longline, "5;", 2);
    longline[sizeof(longline) - 1] = '\0';
    CHECK(dechunk(longline, 4096, out, &n) == AB_CHUNKED_ERROR);
}

static void test_text_helpers(void)
{
    CHECK(ab_utf8_valid("h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80", 15));
    CHECK(!ab_utf8_valid("\xff", 1));
    CHECK(!ab_utf8_valid("\xc0\xaf", 2));         /* overlong */
    CHECK(!ab_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!ab_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    CHECK(!ab_utf8_valid("\xe2\x9c", 2));         /* truncated */
    char out[32];
    CHECK(ab_url_decode("a%20b+c%2B", 10, out, 1) == 6);
    CHECK_STR(out, "a b c+");
    CHECK(ab_url_decode("%4", 2, out, 1) == -1);
    CHECK(ab_url_decode("%zz", 3, out, 1) == -1);
    CHECK(ab_url_decode("%00x", 4, out, 1) == 2 && out[0] == '\0' && out[1] == 'x');
}

/* Random mutations of valid messages: no crash, no read past the input (run under the
 * sanitizer builds), and the invariants: a parsed head has a method and a path starting
 * with '/' or "*", a decoder never consumes more than it was given. */
static void test_mutations(void)
{
    static const char *seeds[] = {
        "POST /webhook?challenge=x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX: y\r\n\r\n",
        "GET http://h/p HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n",
    };
    static const char alphabet[] = "\r\n :;,\"\\/?*0aAfF\x00\x7f\xff\t";
    uint32_t seed = 12345;
    char buf[512], copy[512];
    for (int iter = 0; iter < 200000; iter++) {
        const char *s = seeds[iter % 3];
        size_t len = strlen(s);
        memcpy(buf, s, len);
        for (int k = 0; k < 1 + iter % 4; k++) {
            seed = seed * 1103515245 + 12345;
            size_t pos = (seed >> 8) % len;
            seed = seed * 1103515245 + 12345;
            buf[pos] = alphabet[(seed >> 8) % (sizeof(alphabet) - 1)];
        }
        memcpy(copy, buf, len);
        size_t scanned = 0;
        size_t end = ab_http_head_end(copy, len, &scanned);
        if (end) {
            struct ab_http_head h;
            char err[160];
            if (ab_http_parse_head(copy, end, &h, err, sizeof(err)) == 0) {
                CHECK(h.method && h.path && (h.path[0] == '/' || h.path[0] == '*'));
            }
        }
        struct ab_chunked c;
        ab_chunked_init(&c, 64);
        size_t pos = 0;
        for (int guard = 0; pos < len && guard < 1000; guard++) {
            size_t used = 0, dlen = 0;
            const char *data, *err;
            int rc = ab_chunked_decode(&c, buf + pos, len - pos, &used, &data, &dlen, &err);
            CHECK(used <= len - pos);
            pos += used;
            if (rc != AB_CHUNKED_MORE || used == 0) {
                break;
            }
        }
    }
}

int main(void)
{
    RUN(test_good_heads);
    RUN(test_bad_heads);
    RUN(test_head_end);
    RUN(test_plausible);
    RUN(test_combined_fields);
    RUN(test_chunked);
    RUN(test_text_helpers);
    RUN(test_mutations);
    return TEST_SUMMARY();
}
