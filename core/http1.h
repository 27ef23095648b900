/* HTTP/1.1 message syntax (RFC 9112) for the server: a strict parser of a request head and
 * an incremental decoder of the chunked transfer coding. Pure functions on byte strings,
 * no I/O and no allocation, so they are unit-tested and fuzzed on their own; the
 * connection handling that feeds them is in server.c.
 *
 * What the parser refuses (each is a 400 unless said otherwise): a request line that is not
 * `token SP target SP HTTP/1.x`, another major version (505), a control character or bare
 * CR anywhere in the head, a line not ended by CR LF (a bare LF: RFC 9112 §2.2 allows
 * accepting it, llhttp's strict mode does not), whitespace before a field's colon,
 * obsolete line folding, more than one Content-Length (field or list element: equal
 * repeats too), a Content-Length that is not digits, a Transfer-Encoding field (even an
 * empty one) together with Content-Length, an empty Transfer-Encoding, a transfer coding
 * other than a final "chunked" (501), Transfer-Encoding in HTTP/1.0, an HTTP/1.1 request
 * without exactly one Host, more than AB_HTTP_MAX_FIELDS fields (431), an Expect other
 * than 100-continue (417), a version other than 1.0 and 1.1 (505). Empty lines before the
 * request line (CR LF or LF) are skipped. tests/e2e/test_llhttp_diff.py checks that llhttp
 * (strict) accepts every request this parser accepts. */
#ifndef AB_HTTP1_H
#define AB_HTTP1_H

#include <stddef.h>
#include <stdint.h>

#define AB_HTTP_MAX_FIELDS 100

struct ab_http_field {
    const char *name; /* NUL-terminated in the parsed buffer, as sent */
    const char *value; /* NUL-terminated, surrounding blanks removed */
    size_t value_len;
};

struct ab_http_head {
    const char *method; /* NUL-terminated token */
    const char *target; /* the request target as sent, NUL-terminated */
    const char *path;   /* origin-form path (absolute-form reduced to it), NUL-terminated */
    const char *query;  /* after '?', NUL-terminated, or NULL */
    int minor;          /* HTTP/1.<minor>: 0 or 1 (others get 505) */
    int64_t content_length; /* -1 when absent */
    int chunked;        /* Transfer-Encoding: chunked */
    int keep_alive;     /* after this request: from the version and Connection */
    int expect_continue;
    struct ab_http_field fields[AB_HTTP_MAX_FIELDS];
    size_t n_fields;
};

/* Where the head in buf[0..len) ends: the number of bytes up to and including the empty
 * line, 0 when it is not complete yet. Empty lines before the request line (RFC 9112 §2.2)
 * are part of the head. *scanned carries the position across calls for the same buffer
 * (start at 0), so a head that arrives a byte at a time is scanned once. */
size_t ab_http_head_end(const char *buf, size_t len, size_t *scanned);

/* 0 when buf[0..len), the start of a head still arriving, can no longer be a request line
 * (its method is not a token: a TLS handshake or other binary on the HTTP port), so the
 * caller can answer 400 at once instead of waiting for the deadline; 1 otherwise. */
int ab_http_head_plausible(const char *buf, size_t len);

/* Parse the complete head buf[0..len) (as measured by ab_http_head_end) in place: NULs are
 * written into buf and h points into it. Returns 0, or the HTTP status to answer (400, 417,
 * 431, 501, 505) with a one-line reason in err (never content of the request). */
int ab_http_parse_head(char *buf, size_t len, struct ab_http_head *h, char *err, size_t errlen);

/* The value of the first field called name (case-insensitive), or NULL. */
const char *ab_http_field(const struct ab_http_head *h, const char *name);

/* Every field called name combined in order with ", " (RFC 9110 §5.3), into out (at most
 * outlen - 1 bytes). Returns the number of lines found; *truncated is set when out was too
 * small (the caller decides whether that is acceptable). */
size_t ab_http_field_all(const struct ab_http_head *h, const char *name, char *out,
                         size_t outlen, int *truncated);

/* The chunked transfer coding, decoded incrementally and strictly (see http1.c: CR LF
 * line ends, no blanks after the size, well-formed extensions). Chunk extensions are
 * checked and skipped, the trailer section is checked and dropped (at most max_trailer
 * bytes). */
struct ab_chunked {
    int state;
    uint64_t remaining;  /* bytes of the current chunk still to come */
    size_t line;         /* bytes of the current size or trailer line */
    size_t trailer;      /* bytes of trailer section so far */
    size_t max_trailer;
    int digits;
    char name[20];       /* the start of the current trailer field's name */
    size_t name_len;
};

enum {
    AB_CHUNKED_MORE = 0, /* give more input */
    AB_CHUNKED_DONE = 1, /* the last chunk and the trailer section were read */
    AB_CHUNKED_ERROR = -1,
};

/* Start decoding; max_trailer bounds the trailer section and each size line. */
void ab_chunked_init(struct ab_chunked *c, size_t max_trailer);

/* Decode from p[0..len): sets *used to the bytes consumed and, when some body bytes were
 * found, *data / *data_len to them (a span of p; at most one span per call, so call again
 * while *used < len). Returns AB_CHUNKED_MORE, AB_CHUNKED_DONE (*used stops right after the
 * message) or AB_CHUNKED_ERROR with a reason in *err (a static string). */
int ab_chunked_decode(struct ab_chunked *c, const char *p, size_t len, size_t *used,
                      const char **data, size_t *data_len, const char **err);

/* 1 when p[0..len) is well-formed UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
int ab_utf8_valid(const char *p, size_t len);

/* Percent-decode s[0..len) into out (at least len + 1 bytes), '+' as a space when plus is
 * set. Returns the decoded length, or -1 for a malformed escape. NUL-terminates out. */
long ab_url_decode(const char *s, size_t len, char *out, int plus);

#endif
