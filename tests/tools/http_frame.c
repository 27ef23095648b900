/* Frames byte strings into requests the way core/server.c does, with the same functions
 * (ab_http_head_end, ab_http_parse_head, the Content-Length / chunked body), for the
 * differential test against llhttp (tests/e2e/test_llhttp_diff.py).
 *
 * Input on stdin: records "<length>\n<bytes>". Output: one line per record,
 *   <outcome> <consumed> <messages> [<method> <body as hex or ->]...
 * outcome: "end" (every byte went into complete requests), "more" (the rest is an
 * incomplete request), "close" (a request without keep-alive ended the connection; the
 * rest would be dropped), or "err<status>" (the request after the complete ones was
 * refused). consumed: the bytes of the complete requests. */
#include "http1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 16384 /* the daemon's default --max-headers-size */

/* The body after a head, from in[0..len). Returns the bytes used, 0 for incomplete, -1
 * for a refusal; the body is copied to body/blen. */
static long frame_body(const struct ab_http_head *h, const char *in, size_t len, char *body,
                       size_t *blen)
{
    *blen = 0;
    if (!h->chunked) {
        size_t cl = h->content_length > 0 ? (size_t)h->content_length : 0;
        if (len < cl) {
            return 0;
        }
        memcpy(body, in, cl);
        *blen = cl;
        return (long)cl;
    }
    struct ab_chunked c;
    ab_chunked_init(&c, MAX_HEAD);
    size_t off = 0;
    while (off < len) {
        size_t used = 0, dlen = 0;
        const char *data = NULL, *err = NULL;
        int rc = ab_chunked_decode(&c, in + off, len - off, &used, &data, &dlen, &err);
        memcpy(body + *blen, data ? data : "", dlen);
        *blen += dlen;
        off += used;
        if (rc == AB_CHUNKED_ERROR) {
            return -1;
        }
        if (rc == AB_CHUNKED_DONE) {
            return (long)off;
        }
    }
    return 0;
}

static void frame(const char *in, size_t len)
{
    size_t pos = 0, msgs = 0;
    char *head = malloc(len + 1), *body = malloc(len + 1);
    const char *outcome = "end";
    char status[16];
    char line[1 << 16];
    size_t line_len = 0;
    while (pos < len) {
        size_t scanned = 0, look = len - pos < MAX_HEAD ? len - pos : MAX_HEAD;
        size_t end = ab_http_head_end(in + pos, look, &scanned);
        if (end == 0) {
            outcome = look == MAX_HEAD ? "err400" : "more";
            break;
        }
        memcpy(head, in + pos, end);
        head[end] = '\0';
        struct ab_http_head h;
        char err[160];
        int rc = ab_http_parse_head(head, end, &h, err, sizeof(err));
        if (rc != 0) {
            snprintf(status, sizeof(status), "err%d", rc);
            outcome = status;
            break;
        }
        size_t blen = 0;
        long used = frame_body(&h, in + pos + end, len - pos - end, body, &blen);
        if (used < 0) {
            outcome = "err400";
            break;
        }
        if (used == 0 && (h.chunked || h.content_length > 0)) {
            outcome = "more";
            break;
        }
        pos += end + (size_t)used;
        msgs++;
        if (line_len + strlen(h.method) + 2 * blen + 4 < sizeof(line)) {
            line_len += (size_t)snprintf(line + line_len, sizeof(line) - line_len, " %s",
                                         h.method);
            for (size_t i = 0; i < blen; i++) {
                line_len += (size_t)snprintf(line + line_len, sizeof(line) - line_len, "%s%02x",
                                             i ? "" : " ", (unsigned char)body[i]);
            }
            if (blen == 0) {
                line_len += (size_t)snprintf(line + line_len, sizeof(line) - line_len, " -");
            }
        }
        if (!h.keep_alive) {
            outcome = pos < len ? "close" : "end";
            break;
        }
    }
    line[line_len] = '\0';
    printf("%s %zu %zu%s\n", outcome, pos, msgs, line);
    free(head);
    free(body);
}

int main(void)
{
    size_t n;
    while (scanf("%zu", &n) == 1 && getchar() == '\n') {
        char *buf = malloc(n + 1);
        if (fread(buf, 1, n, stdin) != n) {
            free(buf);
            return 2;
        }
        frame(buf, n);
        free(buf);
    }
    fflush(stdout);
    return 0;
}
