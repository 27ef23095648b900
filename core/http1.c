/* HTTP/1.1 request syntax and the chunked coding. See http1.h. */
#include "http1.h"
#include "utf8.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* tchar of RFC 9110 §5.6.2: the characters of a token (method, field name, coding). */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Bytes of empty lines (CRLF or LF) at the start of buf; -1 when buf ends in the middle of
 * one (a lone CR at the end). */
static long leading_empty_lines(const char *buf, size_t len)
{
    size_t i = 0;
    for (;;) {
        if (i < len && buf[i] == '\n') {
            i++;
        } else if (i < len && buf[i] == '\r') {
            if (i + 1 == len) {
                return -1;
            }
            if (buf[i + 1] != '\n') {
                return (long)i;
            }
            i += 2;
        } else {
            return (long)i;
        }
    }
}

size_t ab_http_head_end(const char *buf, size_t len, size_t *scanned)
{
    long lead = leading_empty_lines(buf, len);
    if (lead < 0) {
        return 0;
    }
    size_t i = *scanned > (size_t)lead ? *scanned : (size_t)lead;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i);
        if (nl == NULL) {
            *scanned = len;
            return 0;
        }
        i = (size_t)(nl - buf);
        if (i + 1 >= len || (buf[i + 1] == '\r' && i + 2 >= len)) {
            *scanned = i; /* look at this LF again when more has arrived */
            return 0;
        }
        if (buf[i + 1] == '\n') {
            return i + 2;
        }
        if (buf[i + 1] == '\r' && buf[i + 2] == '\n') {
            return i + 3;
        }
        i++;
    }
    *scanned = len;
    return 0;
}

int ab_http_head_plausible(const char *buf, size_t len)
{
    long lead = leading_empty_lines(buf, len);
    if (lead < 0) {
        return 1;
    }
    for (size_t i = (size_t)lead; i < len; i++) {
        if (buf[i] == ' ') {
            return i > (size_t)lead;
        }
        if (!tchar[(unsigned char)buf[i]]) {
            return 0;
        }
    }
    return 1;
}

/* Cut the next line out of [*p, end): NUL-terminates it (dropping its CR LF) and advances
 * *p past it. Returns the line, or NULL at the end. *bad_end is set when the line does not
 * end in CR LF (a bare LF: RFC 9112 §2.2 lets a recipient accept it, llhttp and strict
 * front ends do not, and a disagreement on line ends is a smuggling vector), *bad_cr for
 * a CR inside the line. */
static char *next_line(char **p, char *end, size_t *line_len, int *bad_cr, int *bad_end)
{
    char *s = *p;
    if (s >= end) {
        return NULL;
    }
    char *nl = memchr(s, '\n', (size_t)(end - s));
    char *e = nl ? nl : end;
    *p = nl ? nl + 1 : end;
    *bad_end = !(e > s && e[-1] == '\r');
    if (!*bad_end) {
        e--;
    }
    *e = '\0';
    *bad_cr = memchr(s, '\r', (size_t)(e - s)) != NULL;
    *line_len = (size_t)(e - s);
    return s;
}

static int fail(char *err, size_t errlen, int status, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return status;
}

/* The request target: origin-form, absolute-form (reduced to its path) or "*" for
 * OPTIONS. Splits off the query in place. Returns 0 or 400. */
static int parse_target(char *t, struct ab_http_head *h, char *err, size_t errlen)
{
    for (const unsigned char *c = (const unsigned char *)t; *c; c++) {
        if (*c <= 0x20 || *c >= 0x7f) {
            return fail(err, errlen, 400, "malformed request line: bad character in the target");
        }
    }
    if (strcmp(t, "*") == 0) {
        if (strcmp(h->method, "OPTIONS") != 0) {
            return fail(err, errlen, 400, "malformed request line: '*' is only for OPTIONS");
        }
        h->path = t;
        return 0;
    }
    if (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0) {
        char *auth = strstr(t, "//") + 2;
        char *slash = auth + strcspn(auth, "/?#");
        if (slash == auth) {
            return fail(err, errlen, 400, "malformed request line: absolute URI without host");
        }
        if (*slash != '/') {
            /* "http://host?q": the path is "/"; shift the rest right over the host */
            memmove(auth, slash, strlen(slash) + 1);
            auth[-1] = '/';
            t = auth - 1;
        } else {
            t = slash;
        }
    }
    if (t[0] != '/') {
        return fail(err, errlen, 400, "malformed request line: the target must start with '/'");
    }
    char *hash = strchr(t, '#');
    if (hash) {
        *hash = '\0'; /* a fragment is never sent by a conforming client; drop it */
    }
    char *q = strchr(t, '?');
    if (q) {
        *q = '\0';
        h->query = q + 1;
    }
    h->path = t;
    return 0;
}

/* `method SP target SP HTTP/x.y`. Returns 0 or the status. */
static int parse_request_line(char *line, struct ab_http_head *h, char *err, size_t errlen)
{
    char *p = line;
    while (tchar[(unsigned char)*p]) {
        p++;
    }
    if (p == line || *p != ' ') {
        return fail(err, errlen, 400, "malformed request line: expected METHOD SP target");
    }
    *p++ = '\0';
    h->method = line;
    char *target = p;
    char *sp = strchr(target, ' ');
    if (sp == NULL || sp == target) {
        return fail(err, errlen, 400, "malformed request line: expected target SP version");
    }
    *sp = '\0';
    char *v = sp + 1;
    if (strncmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' ||
        v[7] > '9' || v[8] != '\0') {
        return fail(err, errlen, 400, "malformed request line: expected HTTP/1.1 or HTTP/1.0");
    }
    if (v[5] != '1' || v[7] > '1') {
        return fail(err, errlen, 505, "HTTP version not supported: use HTTP/1.1");
    }
    h->minor = v[7] - '0';
    return parse_target(target, h, err, errlen);
}

/* Content-Length: one field with one decimal value. RFC 9110 §8.6 lets a recipient take a
 * list of equal values or equal repeated fields as one; llhttp refuses both, and so do we,
 * so that no front end can frame the body differently. Returns 0 or 400. */
static int parse_content_length(const char *v, struct ab_http_head *h, char *err, size_t errlen)
{
    if (h->content_length >= 0) {
        return fail(err, errlen, 400, "more than one Content-Length");
    }
    int64_t n = 0;
    int digits = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9') {
            return fail(err, errlen, 400, "Content-Length is not a number");
        }
        if (++digits > 18) {
            return fail(err, errlen, 400, "Content-Length is too large");
        }
        n = n * 10 + (*p - '0');
    }
    if (digits == 0) {
        return fail(err, errlen, 400, "Content-Length is not a number");
    }
    h->content_length = n;
    return 0;
}

/* Call fn for each comma-separated element of v, trimmed (empty ones skipped). Stops and
 * returns the first non-zero fn result. */
static int each_element(const char *v, int (*fn)(const char *s, size_t n, void *arg),
                        void *arg)
{
    while (*v) {
        size_t n = strcspn(v, ",");
        const char *s = v, *e = v + n;
        while (s < e && (*s == ' ' || *s == '\t')) {
            s++;
        }
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }
        if (e > s) {
            int rc = fn(s, (size_t)(e - s), arg);
            if (rc) {
                return rc;
            }
        }
        v += n + (v[n] == ',');
    }
    return 0;
}

static int is_token(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

/* Transfer-Encoding: codings in order; only a single, final "chunked" is taken. */
static int on_coding(const char *s, size_t n, void *arg)
{
    struct ab_http_head *h = arg;
    if (h->chunked) {
        return 400; /* anything after chunked (or chunked twice) */
    }
    if (!is_token(s, n, "chunked")) {
        return 501;
    }
    h->chunked = 1;
    return 0;
}

static int on_connection(const char *s, size_t n, void *arg)
{
    struct ab_http_head *h = arg;
    if (is_token(s, n, "close")) {
        h->keep_alive = -1; /* wins over keep-alive */
    } else if (is_token(s, n, "keep-alive") && h->keep_alive == 0) {
        h->keep_alive = 1;
    }
    return 0;
}

/* One field line "name: value". Returns 0 or the status. */
static int parse_field(char *line, struct ab_http_head *h, int *hosts, int *te, char *err,
                       size_t errlen)
{
    if (line[0] == ' ' || line[0] == '\t') {
        return fail(err, errlen, 400, "obsolete line folding in the request head");
    }
    char *p = line;
    while (tchar[(unsigned char)*p]) {
        p++;
    }
    if (p == line || *p != ':') {
        return fail(err, errlen, 400, "malformed header field (a name, then ':' directly)");
    }
    *p++ = '\0';
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    char *e = p + strlen(p);
    int tab = memchr(p, '\t', (size_t)(e - p)) != NULL;
    for (const unsigned char *c = (const unsigned char *)p; c < (const unsigned char *)e; c++) {
        if ((*c < 0x20 && *c != '\t') || *c == 0x7f) {
            return fail(err, errlen, 400, "control character in a header field");
        }
    }
    while (e > p && (e[-1] == ' ' || e[-1] == '\t')) {
        e--;
    }
    *e = '\0';
    if (h->n_fields == AB_HTTP_MAX_FIELDS) {
        return fail(err, errlen, 431, "too many header fields");
    }
    h->fields[h->n_fields++] = (struct ab_http_field){line, p, (size_t)(e - p)};
    int rc = 0;
    if (strcasecmp(line, "Content-Length") == 0) {
        /* llhttp takes blanks around the number but not a tab after it: refuse tabs */
        rc = tab ? fail(err, errlen, 400, "Content-Length is not a number")
                 : parse_content_length(p, h, err, errlen);
    } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
        (*te)++;
        rc = each_element(p, on_coding, h);
        if (rc) {
            fail(err, errlen, rc, rc == 501 ? "unsupported transfer coding: only chunked"
                                            : "malformed Transfer-Encoding");
        }
    } else if (strcasecmp(line, "Host") == 0) {
        (*hosts)++;
    } else if (strcasecmp(line, "Connection") == 0) {
        rc = each_element(p, on_connection, h);
    } else if (strcasecmp(line, "Expect") == 0) {
        if (strcasecmp(p, "100-continue") != 0) {
            return fail(err, errlen, 417, "unsupported Expect: only 100-continue");
        }
        h->expect_continue = 1;
    }
    return rc;
}

int ab_http_parse_head(char *buf, size_t len, struct ab_http_head *h, char *err, size_t errlen)
{
    memset(h, 0, offsetof(struct ab_http_head, fields));
    h->n_fields = 0;
    h->content_length = -1;
    long lead = leading_empty_lines(buf, len);
    char *p = buf + (lead > 0 ? lead : 0), *end = buf + len;
    size_t n;
    int bad_cr = 0, bad_end = 0, hosts = 0, te = 0, rc;
    char *line = next_line(&p, end, &n, &bad_cr, &bad_end);
    if (line == NULL || n == 0) {
        return fail(err, errlen, 400, "empty request");
    }
    if (bad_cr || memchr(line, '\0', n)) {
        return fail(err, errlen, 400, "control character in the request line");
    }
    if (bad_end) {
        return fail(err, errlen, 400, "request line not ended by CR LF");
    }
    if ((rc = parse_request_line(line, h, err, errlen)) != 0) {
        return rc;
    }
    while ((line = next_line(&p, end, &n, &bad_cr, &bad_end)) != NULL) {
        if (bad_end) {
            return fail(err, errlen, 400, "header line not ended by CR LF");
        }
        if (n == 0) {
            break;
        }
        if (bad_cr || memchr(line, '\0', n)) {
            return fail(err, errlen, 400, "control character in a header field");
        }
        if ((rc = parse_field(line, h, &hosts, &te, err, errlen)) != 0) {
            return rc;
        }
    }
    if (te && !h->chunked) {
        /* only an empty value gets here: a coding other than chunked was refused */
        return fail(err, errlen, 400, "empty Transfer-Encoding");
    }
    if (te && h->content_length >= 0) {
        return fail(err, errlen, 400, "both Transfer-Encoding and Content-Length");
    }
    if (h->chunked && h->minor == 0) {
        return fail(err, errlen, 400, "Transfer-Encoding in an HTTP/1.0 request");
    }
    if (h->minor >= 1 && hosts != 1) {
        return fail(err, errlen, 400,
                    hosts ? "more than one Host header" : "HTTP/1.1 request without Host");
    }
    if (h->minor == 0) {
        h->expect_continue = 0;
    }
    h->keep_alive = h->keep_alive < 0 ? 0 : h->minor >= 1 ? 1 : h->keep_alive;
    return 0;
}

const char *ab_http_field(const struct ab_http_head *h, const char *name)
{
    for (size_t i = 0; i < h->n_fields; i++) {
        if (strcasecmp(h->fields[i].name, name) == 0) {
            return h->fields[i].value;
        }
    }
    return NULL;
}

size_t ab_http_field_all(const struct ab_http_head *h, const char *name, char *out,
                         size_t outlen, int *truncated)
{
    size_t lines = 0, len = 0;
    *truncated = 0;
    out[0] = '\0';
    for (size_t i = 0; i < h->n_fields; i++) {
        const struct ab_http_field *f = &h->fields[i];
        if (strcasecmp(f->name, name) != 0) {
            continue;
        }
        size_t need = f->value_len + (lines ? 2 : 0);
        if (len + need >= outlen) {
            *truncated = 1;
            break;
        }
        if (lines) {
            memcpy(out + len, ", ", 2);
            len += 2;
        }
        memcpy(out + len, f->value, f->value_len);
        len += f->value_len;
        out[len] = '\0';
        lines++;
    }
    return lines;
}

/* ---- chunked ------------------------------------------------------------------------- */

/* RFC 9112 §7.1 without the leniencies llhttp's strict mode refuses too: every line ends in
 * CR LF; no blank between the size and its CR LF or ';'; a chunk extension is
 * `;name[=token|quoted-string]` with no blanks; a trailer field is `name:value` and not a
 * framing field (Content-Length, Transfer-Encoding). */
enum {
    C_SIZE,        /* hex digits of a chunk size */
    C_EXT_NAME0,   /* just after ';': the first character of an extension name */
    C_EXT_NAME,    /* in an extension name */
    C_EXT_VAL0,    /* just after '=': a token or a quoted string */
    C_EXT_VAL,     /* in a token value */
    C_EXT_QUOTED,  /* in a quoted value */
    C_EXT_QPAIR,   /* after a backslash in a quoted value */
    C_EXT_QEND,    /* after the closing quote: ';' or the line end */
    C_SIZE_LF,     /* CR seen at the end of a size line */
    C_DATA,
    C_DATA_END,    /* CR LF after the data */
    C_DATA_LF,
    C_TRAILER,     /* at the start of a trailer line, or the final empty line */
    C_TRAILER_NAME,
    C_TRAILER_VALUE,
    C_TRAILER_LF,  /* CR seen at the end of a trailer line */
    C_END_LF,      /* CR seen on the final empty line */
    C_DONE,
};

void ab_chunked_init(struct ab_chunked *c, size_t max_trailer)
{
    memset(c, 0, sizeof(*c));
    c->state = C_SIZE;
    c->max_trailer = max_trailer;
}

/* The size line ended: the data follows, or the trailer for the last chunk. */
static void end_size_line(struct ab_chunked *c)
{
    c->state = c->remaining ? C_DATA : C_TRAILER;
    c->line = 0;
    c->digits = 0;
}

static int ctl(unsigned char b)
{
    return (b < 0x20 && b != '\t') || b == 0x7f;
}

/* A byte of the size line after the digits. Returns 0 or -1. */
static int chunk_ext_byte(struct ab_chunked *c, unsigned char b, const char **err)
{
    int st = c->state;
    if (b == '\r' && (st == C_EXT_NAME || st == C_EXT_VAL || st == C_EXT_QEND)) {
        c->state = C_SIZE_LF;
    } else if (b == ';' && (st == C_EXT_NAME || st == C_EXT_VAL || st == C_EXT_QEND)) {
        c->state = C_EXT_NAME0;
    } else if (tchar[b] && (st == C_EXT_NAME0 || st == C_EXT_NAME)) {
        c->state = C_EXT_NAME;
    } else if (b == '=' && st == C_EXT_NAME) {
        c->state = C_EXT_VAL0;
    } else if (tchar[b] && (st == C_EXT_VAL0 || st == C_EXT_VAL)) {
        c->state = C_EXT_VAL;
    } else if (b == '"' && st == C_EXT_VAL0) {
        c->state = C_EXT_QUOTED;
    } else if (st == C_EXT_QUOTED && b == '"') {
        c->state = C_EXT_QEND;
    } else if (st == C_EXT_QUOTED && b == '\\') {
        c->state = C_EXT_QPAIR;
    } else if ((st == C_EXT_QUOTED || st == C_EXT_QPAIR) && !ctl(b)) {
        c->state = C_EXT_QUOTED;
    } else {
        *err = st == C_EXT_QUOTED || st == C_EXT_QPAIR ? "unterminated quoted chunk extension"
                                                       : "malformed chunk extension";
        return -1;
    }
    return 0;
}

/* A byte of the trailer section. Returns 0, 1 when the message is complete, or -1. */
static int trailer_byte(struct ab_chunked *c, unsigned char b, const char **err)
{
    switch (c->state) {
    case C_TRAILER:
        if (b == '\r') {
            c->state = C_END_LF;
            return 0;
        }
        c->name_len = 0;
        c->state = C_TRAILER_NAME;
        /* fall through */
    case C_TRAILER_NAME:
        if (b == ':' && c->name_len > 0) {
            c->name[c->name_len < sizeof(c->name) ? c->name_len : sizeof(c->name) - 1] = '\0';
            if (strcasecmp(c->name, "content-length") == 0 ||
                strcasecmp(c->name, "transfer-encoding") == 0) {
                *err = "framing field in the trailer section";
                return -1;
            }
            c->state = C_TRAILER_VALUE;
        } else if (!tchar[b]) {
            *err = "malformed trailer field";
            return -1;
        } else if (c->name_len < sizeof(c->name) - 1) {
            c->name[c->name_len++] = (char)b;
        } else {
            c->name_len = sizeof(c->name); /* longer than any framing field name */
        }
        return 0;
    case C_TRAILER_VALUE:
        if (b == '\r') {
            c->state = C_TRAILER_LF;
        } else if (ctl(b)) {
            *err = "control character in the trailer section";
            return -1;
        }
        return 0;
    default: /* C_TRAILER_LF, C_END_LF */
        if (b != '\n') {
            *err = "bare CR in the trailer section";
            return -1;
        }
        if (c->state == C_END_LF) {
            c->state = C_DONE;
            return 1;
        }
        c->state = C_TRAILER;
        return 0;
    }
}

/* One byte outside the data. Returns 0, 1 when the message is complete, or -1. */
static int chunked_byte(struct ab_chunked *c, unsigned char b, const char **err)
{
    switch (c->state) {
    case C_SIZE: {
        int v = hexval(b);
        if (v >= 0) {
            if (++c->digits > 15) {
                *err = "chunk size too large";
                return -1;
            }
            c->remaining = c->remaining * 16 + (uint64_t)v;
            return 0;
        }
        if (c->digits > 0 && b == ';') {
            c->state = C_EXT_NAME0;
        } else if (c->digits > 0 && b == '\r') {
            c->state = C_SIZE_LF;
        } else {
            *err = "malformed chunk size";
            return -1;
        }
        return 0;
    }
    case C_EXT_NAME0:
    case C_EXT_NAME:
    case C_EXT_VAL0:
    case C_EXT_VAL:
    case C_EXT_QUOTED:
    case C_EXT_QPAIR:
    case C_EXT_QEND:
        return chunk_ext_byte(c, b, err);
    case C_SIZE_LF:
    case C_DATA_LF:
        if (b != '\n') {
            *err = "bare CR in the chunked framing";
            return -1;
        }
        if (c->state == C_SIZE_LF) {
            end_size_line(c);
        } else {
            c->state = C_SIZE;
        }
        return 0;
    case C_DATA_END:
        if (b != '\r') {
            *err = "chunk data not followed by CR LF";
            return -1;
        }
        c->state = C_DATA_LF;
        return 0;
    case C_TRAILER:
    case C_TRAILER_NAME:
    case C_TRAILER_VALUE:
    case C_TRAILER_LF:
    case C_END_LF:
        return trailer_byte(c, b, err);
    default:
        *err = "data after the end of the chunked body";
        return -1;
    }
}

int ab_chunked_decode(struct ab_chunked *c, const char *p, size_t len, size_t *used,
                      const char **data, size_t *data_len, const char **err)
{
    size_t i = 0;
    *data = NULL;
    *data_len = 0;
    *err = NULL;
    while (i < len) {
        if (c->state == C_DATA) {
            size_t n = len - i < c->remaining ? len - i : (size_t)c->remaining;
            *data = p + i;
            *data_len = n;
            c->remaining -= n;
            i += n;
            if (c->remaining == 0) {
                c->state = C_DATA_END;
            }
            break; /* one span per call */
        }
        if (c->state >= C_TRAILER) {
            if (++c->trailer > c->max_trailer) {
                *err = "trailer section too large";
                *used = i;
                return AB_CHUNKED_ERROR;
            }
        } else if (c->state != C_DATA_END && c->state != C_DATA_LF &&
                   ++c->line > c->max_trailer) {
            *err = "chunk size line too long";
            *used = i;
            return AB_CHUNKED_ERROR;
        }
        int rc = chunked_byte(c, (unsigned char)p[i++], err);
        if (rc < 0) {
            *used = i;
            return AB_CHUNKED_ERROR;
        }
        if (rc > 0) {
            *used = i;
            return AB_CHUNKED_DONE;
        }
    }
    *used = i;
    return c->state == C_DONE ? AB_CHUNKED_DONE : AB_CHUNKED_MORE;
}

/* ---- text helpers -------------------------------------------------------------------- */

int ab_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        size_t n = ab_utf8_len(p, (size_t)(end - p));
        if (n == 0) {
            return 0;
        }
        p += n;
    }
    return 1;
}

long ab_url_decode(const char *s, size_t len, char *out, int plus)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < len ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                out[o] = '\0';
                return -1;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '+' && plus) {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return (long)o;
}
