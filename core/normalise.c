/* Body parsing: JSON in one strict pass without a tree, XML through libxml2 to a cJSON tree.
 *
 * JSON. The event carries a JSON body as its "data" byte for byte (only whitespace outside
 * strings removed, so numbers keep every digit and keys their order), so the body must be
 * strict JSON: RFC 8259 grammar and numbers, valid UTF-8, no raw control characters, escapes
 * that cJSON and every other parser read the same way (a \u escape of a surrogate only in a
 * high/low pair), nesting at most AB_MAX_DEPTH. ab_normalise_json_scan() checks all of that
 * in one pass over the body (a state machine with a fixed stack of open containers) while it
 * writes the minified text and notes where the envelope members are, so that the event is
 * built without a tree and without an allocation per value (issue 13: the cJSON tree and its
 * ~190 allocations were half the cost of a webhook). It accepts exactly what the former
 * pre-scan + cJSON front end accepted; tests/unit/normalise_test.c checks that against a
 * copy of it on every fixture, the fuzz corpus and mutants of them.
 *
 * XML. Parsed by libxml2 with a new parser context per call (thread-safe once
 * ab_normalise_init() has run), without entity substitution, DTD loading or network
 * access. The context's SAX handler is patched so that a DOCTYPE stops the parse before
 * any declaration in it is read (no entity expansion, no external subset, no XXE) and so
 * that elements deeper than AB_MAX_DEPTH stop it too. Errors go to the context's
 * structured error handler (and, for the few libxml2 raises without a context, to this
 * thread's handler, swapped in for the parse), which keep the first one and print nothing.
 * Messages in errstr name the fault and its position, never text from the body.
 *
 * Conversion, beyond the rules in normalise.h: any attribute, not only `desc`, turns a
 * text element into {"value": text, attribute: value...} (<holdings link="/x"/> gives
 * {"value": "", "link": "/x"}); text beside child elements is kept as "value" unless it is
 * only layout whitespace; xsi:nil="true" gives null and other xsi: attributes are dropped;
 * comments and processing instructions are ignored; a name that is both an attribute and a
 * child (or "value" and text) becomes an array like any repeated name. Text is kept exactly,
 * CDATA sections included; only whitespace between child elements is dropped.
 *
 * XML text never becomes a number or a boolean: <progress>100</progress> gives "100" where
 * the JSON form has 100, and an empty element is null where JSON may have "" or []. This is
 * accepted: consumers that need numbers from XML bodies convert themselves. The envelope
 * fields (id, action, event, institution, time) are strings in both forms and come out
 * identical. */
#include "normalise.h"
#include "utf8.h"

#include "mem.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#define XSI_NS "http://www.w3.org/2001/XMLSchema-instance"

static void set_err(char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errstr, size_t errlen, const char *fmt, ...)
{
    if (errstr == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errlen, fmt, ap);
    va_end(ap);
}

void ab_normalise_init(void)
{
    /* cJSON returns NULL when malloc fails; route it through ab_malloc so that a NULL
     * from cJSON always means bad input, as for every other allocation here. */
    static cJSON_Hooks hooks = {.malloc_fn = ab_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    xmlInitParser();
}

/* ---- JSON ----------------------------------------------------------------------------- */

const char *const ab_envelope_names[AB_ENV_COUNT] = {"id", "action", "event", "institution",
                                                     "time"};

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The value of the four hex digits at p, or -1 when they are not all hex digits. */
static long hex4(const unsigned char *p)
{
    long v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = p[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

/* Classes of a byte inside a JSON string: 0 copied as is, 1 the closing quote, 2 an escape,
 * 3 a raw control character (refused), 4 the start of a multi-byte UTF-8 sequence. */
#define R16(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x
static const unsigned char str_class[256] = {
    R16(3), R16(3), 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, R16(0), R16(0),
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, R16(0), R16(0),
    R16(4), R16(4), R16(4), R16(4), R16(4), R16(4), R16(4), R16(4),
};
#undef R16

/* JSON whitespace: space, tab, line feed, carriage return. */
static const unsigned char space[256] = {['\t'] = 1, ['\n'] = 1, ['\r'] = 1, [' '] = 1};

enum scan_state { ST_VALUE, ST_FIRST_VALUE, ST_KEY, ST_FIRST_KEY, ST_COLON, ST_NEXT };

/* The state of one scan: input, output, the container stack and the envelope bookkeeping. */
struct scan {
    const unsigned char *p;
    size_t n, i;  /* input, its length (after a BOM) and the read position */
    size_t base;  /* BOM bytes skipped, added to error offsets */
    char *out;
    size_t w;     /* write position */
    int depth;    /* open containers */
    int max_depth; /* AB_MAX_DEPTH for a body; a little more for our own event line */
    unsigned char stack[AB_MAX_DEPTH + AB_LINE_EXTRA_DEPTH + 1];
    int member;   /* envelope name of the top-level member being read, or -1 */
    int code_key; /* the key just read is "value" inside event/institution's object */
    int too_deep;
    struct ab_json_envelope *env;
    const char *fault;
    size_t at;
};

static int scan_fail(struct scan *s, size_t at, const char *fault)
{
    s->fault = fault;
    s->at = at;
    return -1;
}

/* Copy the escape at s->i (a backslash) after checking it; a \u escape of a high surrogate
 * must be followed by one of a low surrogate (as cJSON requires). */
static int copy_escape(struct scan *s, size_t *i, size_t *w)
{
    const unsigned char *p = s->p;
    size_t k = *i, n = s->n, l = 2;
    if (k + 1 >= n) {
        return scan_fail(s, k, "JSON string has an invalid escape");
    }
    switch (p[k + 1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        break;
    case 'u': {
        long v = k + 5 < n ? hex4(p + k + 2) : -1;
        if (v < 0) {
            return scan_fail(s, k, "JSON string has an invalid \\u escape");
        }
        l = 6;
        if (v >= 0xdc00 && v <= 0xdfff) {
            return scan_fail(s, k, "JSON string has an unpaired surrogate escape");
        }
        if (v >= 0xd800 && v <= 0xdbff) {
            long lo = k + 11 < n && p[k + 6] == '\\' && p[k + 7] == 'u' ? hex4(p + k + 8) : -1;
            if (lo < 0xdc00 || lo > 0xdfff) {
                return scan_fail(s, k, "JSON string has an unpaired surrogate escape");
            }
            l = 12;
        }
        break;
    }
    default:
        return scan_fail(s, k, "JSON string has an invalid escape");
    }
    memcpy(s->out + *w, p + k, l);
    *w += l;
    *i += l;
    return 0;
}

/* Copy the bytes from p[i] on that need no check (class 0 above) to out at *w; returns
 * the index of the first one that does. Four at a time while they are plain (eight at a
 * time with the zero-byte test of "Bit Twiddling Hacks" measured slower: Alma's strings
 * are short). */
static size_t copy_plain(const unsigned char *p, size_t n, size_t i, char *out, size_t *w)
{
    size_t o = *w;
    while (n - i >= 4 && (str_class[p[i]] | str_class[p[i + 1]] | str_class[p[i + 2]] |
                          str_class[p[i + 3]]) == 0) {
        memcpy(out + o, p + i, 4);
        o += 4;
        i += 4;
    }
    while (i < n && str_class[p[i]] == 0) {
        out[o++] = (char)p[i++];
    }
    *w = o;
    return i;
}

/* Copy the string whose opening quote is at s->i, checking it; s->i ends past the closing
 * quote. Sets *escaped when it holds an escape. */
static int copy_string(struct scan *s, int *escaped)
{
    const unsigned char *p = s->p;
    size_t i = s->i + 1, n = s->n, w = s->w;
    char *out = s->out;
    out[w++] = '"';
    for (;;) {
        i = copy_plain(p, n, i, out, &w);
        if (i >= n) {
            return scan_fail(s, n, "JSON string is not terminated");
        }
        switch (str_class[p[i]]) {
        case 1:
            out[w++] = '"';
            s->i = i + 1;
            s->w = w;
            return 0;
        case 2:
            *escaped = 1;
            if (copy_escape(s, &i, &w) != 0) {
                return -1;
            }
            break;
        case 3:
            return scan_fail(s, i, "JSON string holds a raw control character");
        default: {
            size_t l = ab_utf8_len(p + i, n - i);
            if (l == 0) {
                return scan_fail(s, i, "JSON string is not valid UTF-8");
            }
            memcpy(out + w, p + i, l);
            w += l;
            i += l;
        }
        }
    }
}

/* Copy the number at s->i, checked against RFC 8259 (no leading zeros, digits after '.'
 * and after the exponent). */
static int copy_number(struct scan *s)
{
    const unsigned char *p = s->p;
    size_t k = s->i, n = s->n, start = s->i;
    k += p[k] == '-';
    if (k < n && p[k] == '0') {
        k++;
    } else if (k < n && is_digit(p[k])) {
        while (k < n && is_digit(p[k])) {
            k++;
        }
    } else {
        return scan_fail(s, start, "JSON number is malformed");
    }
    if (k < n && p[k] == '.') {
        if (++k >= n || !is_digit(p[k])) {
            return scan_fail(s, start, "JSON number is malformed");
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        k += k < n && (p[k] == '+' || p[k] == '-');
        if (k >= n || !is_digit(p[k])) {
            return scan_fail(s, start, "JSON number is malformed");
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && (is_digit(p[k]) || p[k] == '.' || p[k] == 'e' || p[k] == 'E' || p[k] == '+' ||
                  p[k] == '-')) {
        return scan_fail(s, start, "JSON number is malformed");
    }
    memcpy(s->out + s->w, p + start, k - start);
    s->w += k - start;
    s->i = k;
    return 0;
}

/* Which envelope name the key just copied to out[off..s->w) is (after unescaping), or -1. */
static int envelope_name(const struct scan *s, size_t off, int escaped)
{
    const char *key = s->out + off + 1;
    size_t len = s->w - off - 2;
    char *decoded = NULL;
    int found = -1;
    if (escaped && len < 64) {
        key = decoded = ab_json_string_decode(s->out + off, len + 2, &len);
    }
    static const size_t lens[AB_ENV_COUNT] = {2, 6, 5, 11, 4}; /* of ab_envelope_names */
    for (int k = 0; k < AB_ENV_COUNT && (!escaped || decoded != NULL); k++) {
        if (lens[k] == len && memcmp(ab_envelope_names[k], key, len) == 0) {
            found = k;
            break;
        }
    }
    free(decoded);
    return found;
}

/* A key at s->i: copied, and at the top level (or in event/institution's object) looked
 * up among the envelope names. */
static int scan_key(struct scan *s)
{
    size_t off = s->w;
    int escaped = 0;
    if (copy_string(s, &escaped) != 0) {
        return -1;
    }
    struct ab_json_envelope *env = s->env;
    if (s->depth == 1) {
        int k = envelope_name(s, off, escaped);
        s->member = -1;
        if (k >= 0 && env->field[k].kind != AB_JSON_ABSENT) {
            env->repeated = env->repeated < 0 ? k : env->repeated;
        } else {
            s->member = k;
        }
    } else if (s->depth == 2 && s->member >= 0 && env->code[s->member].kind == AB_JSON_ABSENT &&
               env->field[s->member].kind == AB_JSON_OBJECT) {
        s->code_key = s->w - off == 7 && memcmp(s->out + off, "\"value\"", 7) == 0;
        if (!s->code_key && escaped && s->w - off < 64) {
            size_t dlen;
            char *d = ab_json_string_decode(s->out + off, s->w - off, &dlen);
            s->code_key = dlen == 5 && memcmp(d, "value", 5) == 0;
            free(d);
        }
    }
    return 0;
}

/* A value of this kind starts at the write position (only the top two levels matter). */
static inline void value_start(struct scan *s, enum ab_json_kind kind)
{
    if (s->depth > 2) {
        return;
    }
    struct ab_json_span span = {kind, s->w, 0};
    if (s->depth == 0) {
        s->env->root = kind;
    } else if (s->depth == 1 && s->member >= 0) {
        s->env->field[s->member] = span;
    } else if (s->depth == 2 && s->code_key) {
        s->env->code[s->member] = span;
    }
}

/* A value ended at the write position (a scalar, or a container just closed). */
static inline void value_end(struct scan *s)
{
    if (s->depth > 2) {
        return;
    }
    if (s->depth == 1 && s->member >= 0) {
        s->env->field[s->member].len = s->w - s->env->field[s->member].off;
        s->member = -1;
    } else if (s->depth == 2 && s->code_key) {
        s->env->code[s->member].len = s->w - s->env->code[s->member].off;
        s->code_key = 0;
    }
}

static int scan_literal(struct scan *s)
{
    const unsigned char *p = s->p + s->i;
    size_t avail = s->n - s->i, l;
    enum ab_json_kind kind = AB_JSON_LITERAL;
    if (avail >= 4 && memcmp(p, "true", 4) == 0) {
        l = 4;
    } else if (avail >= 5 && memcmp(p, "false", 5) == 0) {
        l = 5;
    } else if (avail >= 4 && memcmp(p, "null", 4) == 0) {
        l = 4, kind = AB_JSON_NULL;
    } else {
        return scan_fail(s, s->i, "JSON is not well-formed");
    }
    value_start(s, kind);
    memcpy(s->out + s->w, p, l);
    s->w += l;
    s->i += l;
    value_end(s);
    return 0;
}

/* A value starting at s->i, in a state that expects one; sets *state for what follows. */
static int scan_value(struct scan *s, enum scan_state *state)
{
    unsigned char c = s->p[s->i];
    int escaped = 0;
    if (c == '{' || c == '[') {
        value_start(s, c == '{' ? AB_JSON_OBJECT : AB_JSON_ARRAY);
        if (s->depth >= s->max_depth) {
            s->too_deep = 1;
            return scan_fail(s, s->i, "JSON nested too deep");
        }
        s->stack[++s->depth] = c;
        s->out[s->w++] = (char)c;
        s->i++;
        *state = c == '{' ? ST_FIRST_KEY : ST_FIRST_VALUE;
        return 0;
    }
    *state = ST_NEXT;
    if (c == '"') {
        value_start(s, AB_JSON_STRING);
        if (copy_string(s, &escaped) != 0) {
            return -1;
        }
        value_end(s);
        return 0;
    }
    if (c == '-' || is_digit(c)) {
        value_start(s, AB_JSON_NUMBER);
        if (copy_number(s) != 0) {
            return -1;
        }
        value_end(s);
        return 0;
    }
    if (c == 't' || c == 'f' || c == 'n') {
        return scan_literal(s);
    }
    if (c == '}' || c == ']' || c == ',' || c == ':') {
        return scan_fail(s, s->i, "JSON is not well-formed");
    }
    return scan_fail(s, s->i, "JSON holds an unexpected character outside strings");
}

/* A closing bracket at s->i: it must match the open container. */
static int scan_close(struct scan *s)
{
    unsigned char c = s->p[s->i];
    if (s->depth == 0 || s->stack[s->depth] != (c == '}' ? '{' : '[')) {
        return scan_fail(s, s->i, "JSON is not well-formed");
    }
    s->out[s->w++] = (char)c;
    s->i++;
    s->depth--;
    value_end(s);
    return 0;
}

/* Index of the first byte from i on that is not JSON whitespace (or n). */
static inline size_t skip_space(const unsigned char *p, size_t n, size_t i)
{
    uint32_t four;
    while (i < n && space[p[i]]) {
        i++;
        /* indentation: four spaces at a time */
        while (n - i >= 4 && (memcpy(&four, p + i, 4), four == 0x20202020u)) {
            i += 4;
        }
    }
    return i;
}

/* A member from its key at s->i on: the key, then, when they follow as expected (after
 * any whitespace), the colon and the value; otherwise *state is left for scan_step() to
 * report what is wrong. Saves a turn of the main loop per token in the common case. */
static int scan_member(struct scan *s, enum scan_state *state)
{
    *state = ST_COLON;
    if (scan_key(s) != 0) {
        return -1;
    }
    s->i = skip_space(s->p, s->n, s->i);
    if (s->i >= s->n || s->p[s->i] != ':') {
        return 0;
    }
    s->out[s->w++] = ':';
    s->i++;
    *state = ST_VALUE;
    s->i = skip_space(s->p, s->n, s->i);
    return s->i < s->n ? scan_value(s, state) : 0;
}

/* One token (or more, see scan_member) at s->i in the given state. */
static int scan_step(struct scan *s, enum scan_state *state)
{
    unsigned char c = s->p[s->i];
    switch (*state) {
    case ST_FIRST_VALUE:
        if (c == ']') {
            *state = ST_NEXT;
            return scan_close(s);
        }
        return scan_value(s, state);
    case ST_VALUE:
        return scan_value(s, state);
    case ST_FIRST_KEY:
    case ST_KEY:
        if (c == '}' && *state == ST_FIRST_KEY) {
            *state = ST_NEXT;
            return scan_close(s);
        }
        if (c != '"') {
            break;
        }
        return scan_member(s, state);
    case ST_COLON:
        if (c != ':') {
            break;
        }
        s->out[s->w++] = ':';
        s->i++;
        *state = ST_VALUE;
        return 0;
    case ST_NEXT:
        if (s->depth == 0) {
            break; /* content after the value */
        }
        if (c == ',') {
            s->out[s->w++] = ',';
            s->i = skip_space(s->p, s->n, s->i + 1);
            *state = s->stack[s->depth] == '{' ? ST_KEY : ST_VALUE;
            if (s->i < s->n && *state == ST_KEY && s->p[s->i] == '"') {
                return scan_member(s, state);
            }
            return s->i < s->n && *state == ST_VALUE ? scan_value(s, state) : 0;
        }
        if (c == '}' || c == ']') {
            return scan_close(s);
        }
        break;
    }
    if (c == '{' || c == '}' || c == '[' || c == ']' || c == ',' || c == ':' || c == '"' ||
        c == '-' || is_digit(c) || c == 't' || c == 'f' || c == 'n') {
        return scan_fail(s, s->i, "JSON is not well-formed");
    }
    return scan_fail(s, s->i, "JSON holds an unexpected character outside strings");
}

long ab_normalise_json_scan(const char *body, size_t len, char *out,
                            struct ab_json_envelope *env, char *errstr, size_t errlen)
{
    return ab_normalise_json_scan_depth(body, len, out, env, AB_MAX_DEPTH, errstr, errlen);
}

long ab_normalise_json_scan_depth(const char *body, size_t len, char *out,
                                  struct ab_json_envelope *env, int max_depth, char *errstr,
                                  size_t errlen)
{
    size_t bom = len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
    if (max_depth > AB_MAX_DEPTH + AB_LINE_EXTRA_DEPTH) {
        max_depth = AB_MAX_DEPTH + AB_LINE_EXTRA_DEPTH;
    }
    struct scan s = {.p = (const unsigned char *)body + bom, .n = len - bom, .base = bom,
                     .out = out, .member = -1, .env = env, .max_depth = max_depth};
    enum scan_state state = ST_VALUE;
    memset(env, 0, sizeof(*env));
    env->repeated = -1;
    for (;;) {
        s.i = skip_space(s.p, s.n, s.i);
        if (s.i >= s.n) {
            break;
        }
        if (scan_step(&s, &state) != 0) {
            if (s.too_deep) {
                set_err(errstr, errlen, "JSON nested deeper than %d levels", max_depth);
            } else {
                set_err(errstr, errlen, "%s (at byte %zu)", s.fault, s.base + s.at);
            }
            return -1;
        }
    }
    if (s.w == 0) {
        set_err(errstr, errlen, "JSON body is empty");
        return -1;
    }
    if (s.depth != 0 || state != ST_NEXT) {
        set_err(errstr, errlen, "JSON is not well-formed (at byte %zu)", len);
        return -1;
    }
    return (long)s.w;
}

/* Append code point cp as UTF-8 at d; returns the new end. */
static char *put_utf8(char *d, uint32_t cp)
{
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xc0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xe0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *d++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *d++ = (char)(0xf0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *d++ = (char)(0x80 | (cp & 0x3f));
    }
    return d;
}

size_t ab_json_escape(char *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *w = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *w++ = (char)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\f': *w++ = 'f'; break;
        case '\n': *w++ = 'n'; break;
        case '\r': *w++ = 'r'; break;
        case '\t': *w++ = 't'; break;
        default:
            memcpy(w, "u00", 3);
            w[3] = hex[c >> 4];
            w[4] = hex[c & 15];
            w += 5;
        }
    }
    return (size_t)(w - out);
}

char *ab_json_string_decode(const char *s, size_t n, size_t *outlen)
{
    const unsigned char *p = (const unsigned char *)s + 1;
    const unsigned char *end = (const unsigned char *)s + (n >= 2 ? n - 1 : 1);
    char *out = ab_malloc(n + 1), *d = out;
    while (p < end) {
        if (*p != '\\' || p + 1 >= end) {
            *d++ = (char)*p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        switch (e) {
        case 'b': *d++ = '\b'; break;
        case 'f': *d++ = '\f'; break;
        case 'n': *d++ = '\n'; break;
        case 'r': *d++ = '\r'; break;
        case 't': *d++ = '\t'; break;
        case 'u': {
            long v = end - p >= 4 ? hex4(p) : -1;
            if (v < 0) {
                break; /* not from a scanned string */
            }
            p += 4;
            uint32_t cp = (uint32_t)v;
            if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                long lo = hex4(p + 2);
                if (lo >= 0xdc00 && lo <= 0xdfff) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
                    p += 6;
                }
            }
            d = put_utf8(d, cp);
            break;
        }
        default: *d++ = (char)e; break; /* " \ / */
        }
    }
    *d = '\0';
    if (outlen != NULL) {
        *outlen = (size_t)(d - out);
    }
    return out;
}

cJSON *ab_normalise_json(const char *body, size_t len, char *errstr, size_t errlen)
{
    struct ab_json_envelope env;
    char *min = ab_malloc(len + 1);
    cJSON *root = NULL;
    long n = ab_normalise_json_scan(body, len, min, &env, errstr, errlen);
    if (n >= 0) {
        root = cJSON_ParseWithLength(min, (size_t)n);
        if (root == NULL) {
            set_err(errstr, errlen, "JSON is not well-formed");
        }
    }
    free(min);
    return root;
}

/* ---- XML ------------------------------------------------------------------------------ */

struct xml_state {
    int depth;
    int too_deep;
    int doctype;
    int err_code; /* first libxml2 error, 0 if none */
    int err_line;
    int err_col;
};

static struct xml_state *state_of(void *ctx)
{
    return ((xmlParserCtxtPtr)ctx)->_private;
}

/* SAX internalSubset/externalSubset/entityDecl: a DOCTYPE stops the parse before any of
 * its declarations is processed. */
static void on_internal_subset(void *ctx, const xmlChar *name, const xmlChar *ext_id,
                               const xmlChar *sys_id)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_entity_decl(void *ctx, const xmlChar *name, int type, const xmlChar *public_id,
                           const xmlChar *system_id, xmlChar *content)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_reference(void *ctx, const xmlChar *name)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_start_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                             const xmlChar *uri, int nb_namespaces, const xmlChar **namespaces,
                             int nb_attributes, int nb_defaulted, const xmlChar **attributes)
{
    struct xml_state *st = state_of(ctx);
    if (++st->depth > AB_MAX_DEPTH) {
        st->too_deep = 1;
        xmlStopParser(ctx);
        return;
    }
    xmlSAX2StartElementNs(ctx, localname, prefix, uri, nb_namespaces, namespaces,
                          nb_attributes, nb_defaulted, attributes);
}

static void on_end_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                           const xmlChar *uri)
{
    state_of(ctx)->depth--;
    xmlSAX2EndElementNs(ctx, localname, prefix, uri);
}

static void record_error(struct xml_state *st, const xmlError *err)
{
    if (st != NULL && err != NULL && err->level >= XML_ERR_ERROR && st->err_code == 0) {
        st->err_code = err->code != 0 ? err->code : -1;
        st->err_line = err->line;
        st->err_col = err->int2;
    }
}

/* Structured error handler of the context: keep the first error, print nothing (libxml2
 * messages quote names and bytes from the body). */
static void on_xml_error(void *ctx, xmlErrorPtr err)
{
    xmlParserCtxtPtr ctxt = err != NULL ? err->ctxt : NULL;
    record_error(ctxt != NULL ? ctxt->_private : NULL, err);
}

/* libxml2 2.9 raises encoding-conversion and I/O errors without a parser context, so they
 * bypass the handler above and reach this thread's handler instead (libxml2 keeps its
 * error handlers per thread). ab_normalise_xml() installs these two for its own duration. */
static void on_thread_error(void *ctx, xmlErrorPtr err)
{
    record_error(ctx, err);
}

static void on_generic_error(void *ctx, const char *msg, ...)
{
}

static const char *xml_error_text(int code)
{
    switch (code) {
    case XML_ERR_DOCUMENT_EMPTY:
        return "XML body is empty";
    case XML_ERR_DOCUMENT_END:
        return "XML has content after the root element";
    case XML_ERR_TAG_NAME_MISMATCH:
    case XML_ERR_TAG_NOT_FINISHED:
    case XML_ERR_LTSLASH_REQUIRED:
    case XML_ERR_GT_REQUIRED:
        return "XML has a mismatched or unclosed tag";
    case XML_ERR_INVALID_CHAR:
    case XML_ERR_INVALID_ENCODING:
    case XML_I18N_CONV_FAILED:
    case XML_IO_ENCODER:
        return "XML holds bytes that are not characters in its encoding";
    case XML_ERR_UNSUPPORTED_ENCODING:
        return "XML declares an unsupported encoding";
    case XML_ERR_UNDECLARED_ENTITY:
    case XML_WAR_UNDECLARED_ENTITY:
        return "XML refers to an undeclared entity";
    case XML_ERR_ATTRIBUTE_REDEFINED:
        return "XML repeats an attribute";
    case XML_NS_ERR_UNDEFINED_NAMESPACE:
        return "XML uses an undeclared namespace prefix";
    default:
        return "XML is not well-formed";
    }
}

/* A new parser context whose SAX handler refuses DOCTYPEs and bounds the depth. */
static xmlParserCtxtPtr new_xml_ctxt(struct xml_state *st)
{
    xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
    if (ctxt == NULL) {
        return NULL;
    }
    ctxt->_private = st;
    xmlSAXHandlerPtr sax = ctxt->sax; /* owned by this context */
    sax->internalSubset = on_internal_subset;
    sax->externalSubset = on_internal_subset;
    sax->entityDecl = on_entity_decl;
    sax->reference = on_reference;
    sax->startElementNs = on_start_element;
    sax->endElementNs = on_end_element;
    sax->serror = on_xml_error;
    sax->initialized = XML_SAX2_MAGIC;
    return ctxt;
}

/* ---- XML to cJSON --------------------------------------------------------------------- */

enum conv_err { CONV_OK, CONV_DOCTYPE, CONV_DEEP };

/* One member of the object an element becomes: its text (as "value"), an attribute or a
 * child element, in document order. Members sharing a name are chained into an array. */
struct member {
    const char *name;
    const xmlChar *text; /* the text member, or NULL */
    xmlAttrPtr attr;
    xmlNodePtr elem;
    struct member *next; /* next member with the same name */
    size_t count;        /* on the first of a name: how many share it; 0 on the others */
};

static cJSON *convert_element(xmlNodePtr el, int depth, int is_root, enum conv_err *err);

static int is_xsi(xmlAttrPtr a)
{
    return a->ns != NULL && a->ns->href != NULL && xmlStrEqual(a->ns->href, BAD_CAST XSI_NS);
}

static int is_blank(const xmlChar *s)
{
    for (; *s; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
            return 0;
        }
    }
    return 1;
}

static int attr_is_true(xmlAttrPtr a)
{
    xmlChar *v = xmlNodeGetContent((xmlNodePtr)a);
    int yes = v != NULL && (xmlStrEqual(v, BAD_CAST "true") || xmlStrEqual(v, BAD_CAST "1"));
    xmlFree(v);
    return yes;
}

/* The direct text and CDATA children of el, concatenated, in a new string; sets *elems to
 * the number of element children. An entity reference means a DTD got through: refused. */
static xmlChar *element_text(xmlNodePtr el, size_t *elems, enum conv_err *err)
{
    size_t len = 0, k = 0;
    *elems = 0;
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            len += c->content != NULL ? strlen((const char *)c->content) : 0;
        } else if (c->type == XML_ELEMENT_NODE) {
            (*elems)++;
        } else if (c->type == XML_ENTITY_REF_NODE || c->type == XML_ENTITY_NODE ||
                   c->type == XML_DTD_NODE || c->type == XML_ENTITY_DECL) {
            *err = CONV_DOCTYPE;
        }
    }
    xmlChar *text = ab_malloc(len + 1);
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) && c->content) {
            size_t l = strlen((const char *)c->content);
            memcpy(text + k, c->content, l);
            k += l;
        }
    }
    text[k] = '\0';
    return text;
}

static int member_cmp(const void *a, const void *b)
{
    const struct member *x = *(struct member *const *)a, *y = *(struct member *const *)b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : (x < y ? -1 : x > y);
}

/* Chain members of the same name (in document order) in O(n log n). */
static void group_members(struct member *m, size_t n)
{
    struct member **by_name = ab_malloc(n * sizeof(*by_name));
    for (size_t i = 0; i < n; i++) {
        by_name[i] = &m[i];
        m[i].next = NULL;
        m[i].count = 0;
    }
    qsort(by_name, n, sizeof(*by_name), member_cmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && strcmp(by_name[j]->name, by_name[i]->name) == 0) {
            by_name[j - 1]->next = by_name[j];
            j++;
        }
        by_name[i]->count = j - i;
        i = j;
    }
    free(by_name);
}

static cJSON *convert_member(const struct member *m, int depth, enum conv_err *err)
{
    if (m->text != NULL) {
        return cJSON_CreateString((const char *)m->text);
    }
    if (m->attr != NULL) {
        xmlChar *v = xmlNodeGetContent((xmlNodePtr)m->attr);
        cJSON *s = cJSON_CreateString(v != NULL ? (const char *)v : "");
        xmlFree(v);
        return s;
    }
    return convert_element(m->elem, depth + 1, 0, err);
}

/* The object form of el: its text as "value" (when with_text), its attributes, then its
 * child elements; repeated names become arrays at the place of their first occurrence. */
static cJSON *element_object(xmlNodePtr el, const xmlChar *text, int with_text, int depth,
                             enum conv_err *err)
{
    size_t n = with_text ? 1 : 0, k = 0;
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        n += !is_xsi(a);
    }
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        n += c->type == XML_ELEMENT_NODE;
    }
    struct member *m = ab_calloc(n, sizeof(*m));
    if (with_text) {
        m[k++] = (struct member){.name = "value", .text = text};
    }
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        if (!is_xsi(a)) {
            m[k++] = (struct member){.name = (const char *)a->name, .attr = a};
        }
    }
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if (c->type == XML_ELEMENT_NODE) {
            m[k++] = (struct member){.name = (const char *)c->name, .elem = c};
        }
    }
    group_members(m, n);
    cJSON *obj = cJSON_CreateObject();
    for (size_t i = 0; i < n && *err == CONV_OK; i++) {
        if (m[i].count == 1) {
            cJSON_AddItemToObject(obj, m[i].name, convert_member(&m[i], depth, err));
        } else if (m[i].count > 1) {
            cJSON *arr = cJSON_AddArrayToObject(obj, m[i].name);
            for (const struct member *x = &m[i]; x != NULL && *err == CONV_OK; x = x->next) {
                cJSON_AddItemToArray(arr, convert_member(x, depth, err));
            }
        }
    }
    free(m);
    return obj;
}

/* Convert one element with the rules in normalise.h. The root is always an object. On a
 * refusal *err is set and the (partial) result is still returned for the caller to free. */
static cJSON *convert_element(xmlNodePtr el, int depth, int is_root, enum conv_err *err)
{
    size_t elems = 0, attrs = 0;
    cJSON *out = NULL;
    if (depth > AB_MAX_DEPTH) {
        *err = CONV_DEEP;
        return cJSON_CreateNull();
    }
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        if (is_xsi(a) && xmlStrEqual(a->name, BAD_CAST "nil") && attr_is_true(a)) {
            return cJSON_CreateNull();
        }
        attrs += !is_xsi(a);
    }
    xmlChar *text = element_text(el, &elems, err);
    if (elems == 0 && attrs == 0 && !is_root) {
        out = text[0] != '\0' ? cJSON_CreateString((const char *)text) : cJSON_CreateNull();
    } else {
        /* text beside child elements counts only when it is more than layout */
        int with_text = elems == 0 && !is_root ? 1 : !is_blank(text);
        out = element_object(el, text, with_text, depth, err);
    }
    free(text);
    return out;
}

/* Parse body with ctxt. libxml2's per-thread error handlers are swapped for silent ones
 * for the duration (see on_thread_error) and restored before returning. */
static xmlDocPtr read_xml(xmlParserCtxtPtr ctxt, const char *body, size_t len)
{
    xmlStructuredErrorFunc old_serror = xmlStructuredError;
    void *old_sctx = xmlStructuredErrorContext;
    xmlGenericErrorFunc old_gerror = xmlGenericError;
    void *old_gctx = xmlGenericErrorContext;
    xmlSetStructuredErrorFunc(ctxt->_private, on_thread_error);
    xmlSetGenericErrorFunc(NULL, on_generic_error);
    /* No XML_PARSE_NOENT, DTDLOAD, DTDATTR, HUGE or XINCLUDE; NONET as a second guard. */
    xmlDocPtr doc = xmlCtxtReadMemory(ctxt, body, (int)len, NULL, NULL, XML_PARSE_NONET);
    xmlSetStructuredErrorFunc(old_sctx, old_serror);
    xmlSetGenericErrorFunc(old_gctx, old_gerror);
    return doc;
}

/* 0 when the parse gave a usable document, else -1 with the reason in errstr. */
static int check_xml(xmlParserCtxtPtr ctxt, xmlDocPtr doc, size_t len, char *errstr,
                     size_t errlen)
{
    const struct xml_state *st = ctxt->_private;
    if (st->doctype || (doc != NULL && doc->intSubset != NULL)) {
        set_err(errstr, errlen, "XML with a DOCTYPE is not accepted");
    } else if (st->too_deep) {
        set_err(errstr, errlen, "XML nested deeper than %d levels", AB_MAX_DEPTH);
    } else if (doc == NULL || !ctxt->wellFormed || st->err_code != 0) {
        int code = st->err_code != 0 ? st->err_code : ctxt->errNo;
        set_err(errstr, errlen, "%s (libxml2 error %d at line %d, column %d)",
                xml_error_text(code), code, st->err_line, st->err_col);
    } else if (xmlByteConsumed(ctxt) >= 0 && xmlByteConsumed(ctxt) < (long)len) {
        /* libxml2 takes a NUL character for the end of the input */
        set_err(errstr, errlen, "XML holds a NUL character");
    } else if (xmlDocGetRootElement(doc) == NULL) {
        set_err(errstr, errlen, "XML has no root element");
    } else {
        return 0;
    }
    return -1;
}

cJSON *ab_normalise_xml(const char *body, size_t len, char *errstr, size_t errlen)
{
    struct xml_state st = {0};
    xmlParserCtxtPtr ctxt = NULL;
    xmlDocPtr doc = NULL;
    cJSON *root = NULL;
    enum conv_err err = CONV_OK;
    if (len == 0 || len > INT_MAX) {
        set_err(errstr, errlen, len == 0 ? "XML body is empty" : "XML body is too large");
        goto done;
    }
    ctxt = new_xml_ctxt(&st);
    if (ctxt == NULL) {
        set_err(errstr, errlen, "XML parser could not be created");
        goto done;
    }
    doc = read_xml(ctxt, body, len);
    if (check_xml(ctxt, doc, len, errstr, errlen) != 0) {
        goto done;
    }
    root = convert_element(xmlDocGetRootElement(doc), 1, 1, &err);
    if (err != CONV_OK) {
        /* both only as a second line of defence: the parse stops on either first */
        if (err == CONV_DOCTYPE) {
            set_err(errstr, errlen, "XML with a DOCTYPE is not accepted");
        } else {
            set_err(errstr, errlen, "XML nested deeper than %d levels", AB_MAX_DEPTH);
        }
        cJSON_Delete(root);
        root = NULL;
    }
done:
    xmlFreeDoc(doc);
    if (ctxt != NULL) {
        ctxt->_private = NULL;
        xmlFreeParserCtxt(ctxt);
    }
    return root;
}
