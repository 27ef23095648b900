/* libFuzzer driver: the HTTP/1.1 request head parser and the chunked decoder (core/http1.h).
 * The input is a request as it arrives on a connection: head, then body bytes.
 * Checks, besides ASan (the head is parsed in a buffer of exactly its length) and UBSan:
 *   - ab_http_head_end() finds the same end whether the bytes arrive at once or in pieces;
 *   - ab_http_parse_head() answers 0 or one of 400, 417, 431, 501, 505, with a reason when
 *     it refuses; on success every pointer lies inside the buffer and is NUL-terminated
 *     there, HTTP/1.1 has a Host, Content-Length and chunked never come together;
 *   - field lookups stay within their output buffer;
 *   - the chunked decoder only hands out spans of its input and consumes what it says;
 *   - URL decoding of the target never grows it. */
#include "http1.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
    }
}

static int inside(const char *p, const char *buf, size_t len)
{
    return p >= buf && p < buf + len && memchr(p, '\0', (size_t)(buf + len - p)) != NULL;
}

static void check_chunked(const char *p, size_t len)
{
    struct ab_chunked c;
    ab_chunked_init(&c, 1024);
    size_t off = 0;
    for (int rounds = 0; off < len && rounds < 100000; rounds++) {
        size_t used = 0, dlen = 0;
        const char *d = NULL, *err = NULL;
        int rc = ab_chunked_decode(&c, p + off, len - off, &used, &d, &dlen, &err);
        check(used <= len - off, "chunked: used within the input");
        if (d != NULL && dlen > 0) {
            check(d >= p + off && d + dlen <= p + off + used, "chunked: data within used");
        }
        off += used;
        if (rc == AB_CHUNKED_ERROR) {
            check(err != NULL && err[0] != '\0', "chunked: a reason");
            return;
        }
        if (rc == AB_CHUNKED_DONE) {
            return;
        }
        check(rc == AB_CHUNKED_MORE, "chunked: known result");
        if (used == 0) {
            check(off == len, "chunked: MORE without progress only at the end of input");
            return;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    size_t scanned = 0;
    size_t end = ab_http_head_end(in, size, &scanned);
    /* the same, a few bytes at a time */
    size_t scanned2 = 0, end2 = 0, step = 1 + size % 13;
    for (size_t n = 0; n < size && end2 == 0;) {
        n = n + step < size ? n + step : size;
        end2 = ab_http_head_end(in, n, &scanned2);
    }
    check(end == end2, "head end independent of how the bytes arrive");
    check(end <= size, "head end within the input");
    ab_utf8_valid(in, size);
    if (end == 0) {
        return 0;
    }

    char *buf = malloc(end);
    memcpy(buf, in, end);
    struct ab_http_head *h = malloc(sizeof(*h));
    char err[128] = "";
    int rc = ab_http_parse_head(buf, end, h, err, sizeof(err));
    check(rc == 0 || rc == 400 || rc == 417 || rc == 431 || rc == 501 || rc == 505,
          "known status");
    check(memchr(err, '\0', sizeof(err)) != NULL, "reason terminated");
    if (rc != 0) {
        check(err[0] != '\0', "a reason for a refusal");
        goto done;
    }
    /* h->target is documented in http1.h but never set (NULL): accept that, check it when
     * it is set */
    check(inside(h->method, buf, end) && inside(h->path, buf, end) &&
              (h->target == NULL || inside(h->target, buf, end)),
          "request line inside the buffer");
    check(h->query == NULL || inside(h->query, buf, end), "query inside the buffer");
    check(h->minor >= 0 && h->minor <= 9, "minor version (1.2-1.9 kept as sent, treated as 1.1)");
    check(h->n_fields <= AB_HTTP_MAX_FIELDS, "field count");
    for (size_t i = 0; i < h->n_fields; i++) {
        check(inside(h->fields[i].name, buf, end) && inside(h->fields[i].value, buf, end),
              "field inside the buffer");
        check(strlen(h->fields[i].value) == h->fields[i].value_len, "value length");
    }
    check(h->minor == 0 || ab_http_field(h, "host") != NULL, "HTTP/1.1 has a Host");
    check(h->n_fields <= AB_HTTP_MAX_FIELDS, "at most AB_HTTP_MAX_FIELDS fields");
    check(h->content_length >= -1, "content length");
    check(!(h->chunked && h->content_length >= 0), "not both Content-Length and chunked");
    char out[64];
    int truncated = 0;
    ab_http_field_all(h, "x-forwarded-for", out, sizeof(out), &truncated);
    check(memchr(out, '\0', sizeof(out)) != NULL, "combined fields terminated");
    const char *q = h->query != NULL ? h->query : h->path;
    size_t tlen = strlen(q);
    char *dec = malloc(tlen + 1);
    long dl = ab_url_decode(q, tlen, dec, 1);
    check(dl >= -1 && dl <= (long)tlen, "decoding does not grow");
    free(dec);
    if (h->chunked) {
        check_chunked(in + end, size - end);
    }
done:
    free(h);
    free(buf);
    return 0;
}
