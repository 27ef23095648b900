/* Redaction of members of minified JSON text (see redact.h). A path is compiled into
 * segments; the walk keeps the stack of member names / array indices from the root down
 * and, at every member and element, asks whether a path matches that stack exactly. A
 * matching member is left out with its value; the rest is copied byte for byte. */
#include "redact.h"

#include "mem.h"
#include "normalise.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum seg_kind { SEG_NAME, SEG_ANY, SEG_INDEX };

struct seg {
    enum seg_kind kind;
    int desc;   /* reached through "..": at this depth or any below */
    char *name; /* SEG_NAME */
    long index; /* SEG_INDEX */
};

struct path {
    struct seg *segs;
    size_t n;
};

struct ab_redact {
    struct path *paths;
    size_t n;
};

const char *const ab_redact_default[2] = {"$..pin_number", "$..password"};

/* ---- compiling ------------------------------------------------------------------------- */

static int add_seg(struct path *p, enum seg_kind kind, int desc, const char *name, size_t len,
                   long index)
{
    if (kind == SEG_NAME && len == 0) {
        return -1;
    }
    p->segs = ab_realloc(p->segs, (p->n + 1) * sizeof(*p->segs));
    p->segs[p->n++] = (struct seg){kind, desc, kind == SEG_NAME ? ab_strndup(name, len) : NULL,
                                   index};
    return 0;
}

/* One bracket segment at s ("[*]", "[12]", "['name']" or "[\"name\"]"); returns the index
 * past it, or -1. */
static long bracket(struct path *p, const char *s, long i, int desc)
{
    i++;
    if (s[i] == '*' && s[i + 1] == ']') {
        return add_seg(p, SEG_ANY, desc, NULL, 0, 0) == 0 ? i + 2 : -1;
    }
    if (s[i] == '\'' || s[i] == '"') {
        const char *end = strchr(s + i + 1, s[i]);
        if (end == NULL || end[1] != ']' ||
            add_seg(p, SEG_NAME, desc, s + i + 1, (size_t)(end - s - i - 1), 0) != 0) {
            return -1;
        }
        return end - s + 2;
    }
    char *end = NULL;
    long v = strtol(s + i, &end, 10);
    if (end == s + i || *end != ']' || v < 0 || s[i] < '0' || s[i] > '9') {
        return -1;
    }
    add_seg(p, SEG_INDEX, desc, NULL, 0, v);
    return end - s + 1;
}

static int parse_path(const char *s, struct path *p)
{
    long i = 1;
    if (s[0] != '$') {
        return -1;
    }
    while (s[i] != '\0') {
        int desc = 0;
        if (s[i] == '.' && s[i + 1] == '.') {
            desc = 1;
            i += 2;
            if (s[i] == '[') {
                if ((i = bracket(p, s, i, desc)) < 0) {
                    return -1;
                }
                continue;
            }
        } else if (s[i] == '.') {
            i++;
        } else if (s[i] == '[') {
            if ((i = bracket(p, s, i, 0)) < 0) {
                return -1;
            }
            continue;
        } else {
            return -1;
        }
        size_t len = strcspn(s + i, ".[");
        int rc = len == 1 && s[i] == '*' ? add_seg(p, SEG_ANY, desc, NULL, 0, 0)
                                         : add_seg(p, SEG_NAME, desc, s + i, len, 0);
        if (rc != 0) {
            return -1;
        }
        i += (long)len;
    }
    return p->n > 0 ? 0 : -1;
}

struct ab_redact *ab_redact_compile(const char *const *paths, size_t n, char *errstr,
                                    size_t errlen)
{
    if (n == 0 || (n == 1 && strcmp(paths[0], "none") == 0)) {
        return NULL;
    }
    struct ab_redact *r = ab_calloc(1, sizeof(*r));
    r->paths = ab_calloc(n, sizeof(*r->paths));
    for (size_t i = 0; i < n; i++, r->n++) {
        if (strcmp(paths[i], "none") == 0 || parse_path(paths[i], &r->paths[i]) != 0) {
            snprintf(errstr, errlen,
                     strcmp(paths[i], "none") == 0
                         ? "--redact none cannot be combined with paths"
                         : "--redact \"%s\": not a JSON path rooted at the data, e.g. "
                           "$.webhook_user.user.pin_number or $..pin_number",
                     paths[i]);
            r->n++;
            ab_redact_free(r);
            return NULL;
        }
    }
    return r;
}

void ab_redact_free(struct ab_redact *r)
{
    if (r == NULL) {
        return;
    }
    for (size_t i = 0; i < r->n; i++) {
        for (size_t k = 0; k < r->paths[i].n; k++) {
            free(r->paths[i].segs[k].name);
        }
        free(r->paths[i].segs);
    }
    free(r->paths);
    free(r);
}

/* ---- walking ----------------------------------------------------------------------------- */

size_t ab_json_skip(const char *s, size_t n, size_t i)
{
    int depth = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                i += s[i] == '\\';
            }
            if (depth == 0) {
                return i + 1;
            }
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth <= 0) {
                return depth == 0 ? i + 1 : i;
            }
        } else if (depth == 0 && (c == ',' || c == ':' || c == ' ' || c == '\t' || c == '\n' ||
                                  c == '\r')) {
            return i;
        }
    }
    return n;
}

/* Whether the JSON string literal at s (len bytes, quotes included) is name. */
static int key_is(const char *s, size_t len, const char *name, size_t nlen)
{
    if (memchr(s, '\\', len) == NULL) {
        return len == nlen + 2 && memcmp(s + 1, name, nlen) == 0;
    }
    size_t dl;
    char *d = ab_json_string_decode(s, len, &dl);
    /* a key holding U+0000 is, to a consumer on C strings, its part before it: redact it
     * too ("pass\u0077ord\u0000" is a password to them) */
    size_t cl = d ? strnlen(d, dl) : 0;
    int same = d != NULL && (dl == nlen || cl == nlen) && memcmp(d, name, nlen) == 0;
    free(d);
    return same;
}

int ab_json_find(const char *s, size_t n, const char *const *keys, int nkeys, size_t *off,
                 size_t *len)
{
    size_t i = 0;
    for (int k = 0; k < nkeys; k++) {
        if (i >= n || s[i] != '{') {
            return -1;
        }
        size_t nlen = strlen(keys[k]);
        int found = 0;
        for (i++; !found && i < n && s[i] == '"';) {
            size_t kend = ab_json_skip(s, n, i);
            found = key_is(s + i, kend - i, keys[k], nlen);
            i = kend + 1; /* past the ':' */
            if (!found) {
                i = ab_json_skip(s, n, i);
                i += i < n && s[i] == ',';
            }
        }
        if (!found) {
            return -1;
        }
    }
    *off = i;
    *len = ab_json_skip(s, n, i) - i;
    return 0;
}

struct frame {
    const char *key; /* the member's name literal (quotes included), NULL in an array */
    size_t klen;
    long index;
};

struct walk {
    const struct ab_redact *r;
    const char *in;
    size_t n;
    char *out;
    size_t w;
    size_t removed;
    struct frame st[AB_MAX_DEPTH + 2];
    int depth;
};

static int seg_hits(const struct seg *g, const struct frame *f)
{
    if (g->kind == SEG_ANY) {
        return 1;
    }
    if (g->kind == SEG_INDEX) {
        return f->key == NULL && f->index == g->index;
    }
    return f->key != NULL && key_is(f->key, f->klen, g->name, strlen(g->name));
}

/* Whether segments [si, n) of p match frames [d, depth) exactly. */
static int match(const struct path *p, size_t si, const struct walk *w, int d)
{
    if (si == p->n) {
        return d == w->depth;
    }
    const struct seg *g = &p->segs[si];
    for (int k = d; k < w->depth; k++) {
        if (seg_hits(g, &w->st[k]) && match(p, si + 1, w, k + 1)) {
            return 1;
        }
        if (!g->desc) {
            break;
        }
    }
    return 0;
}

static int redacted(const struct walk *w)
{
    for (size_t i = 0; i < w->r->n; i++) {
        if (match(&w->r->paths[i], 0, w, 0)) {
            return 1;
        }
    }
    return 0;
}

static void put(struct walk *w, size_t from, size_t to)
{
    memcpy(w->out + w->w, w->in + from, to - from);
    w->w += to - from;
}

/* Copy the value at in[i] with what is redacted below it left out; returns the index past
 * it. */
static size_t copy_value(struct walk *w, size_t i)
{
    char open = w->in[i];
    if ((open != '{' && open != '[') || w->depth > AB_MAX_DEPTH) {
        size_t end = ab_json_skip(w->in, w->n, i);
        put(w, i, end);
        return end;
    }
    char close = open == '{' ? '}' : ']';
    w->out[w->w++] = open;
    i++;
    int first = 1;
    struct frame *f = &w->st[w->depth++];
    for (long index = 0; i < w->n && w->in[i] != close; index++) {
        size_t start = i, vstart = i;
        *f = (struct frame){NULL, 0, index};
        if (open == '{') {
            size_t kend = ab_json_skip(w->in, w->n, i);
            *f = (struct frame){w->in + i, kend - i, -1};
            vstart = kend + 1;
        }
        if (redacted(w)) {
            w->removed++;
            i = ab_json_skip(w->in, w->n, vstart);
        } else {
            if (!first) {
                w->out[w->w++] = ',';
            }
            first = 0;
            put(w, start, vstart);
            i = copy_value(w, vstart);
        }
        i += i < w->n && w->in[i] == ',';
    }
    w->depth--;
    w->out[w->w++] = close;
    return i + 1;
}

size_t ab_redact_apply(const struct ab_redact *r, const char *in, size_t n, char *out,
                       size_t *removed)
{
    struct walk w = {.r = r, .in = in, .n = n, .out = out};
    if (r == NULL || n == 0) {
        memcpy(out, in, n);
        w.w = n;
    } else {
        copy_value(&w, 0);
    }
    if (removed != NULL) {
        *removed = w.removed;
    }
    return w.w;
}

int ab_redact_may_apply(const struct ab_redact *r, const char *in, size_t n)
{
    if (r == NULL) {
        return 0;
    }
    for (const char *b = memchr(in, '\\', n); b != NULL;
         b = memchr(b + 2, '\\', n - (size_t)(b + 2 - in))) {
        if (b + 1 >= in + n || b[1] == 'u') {
            return 1; /* a name may be spelt with escapes */
        }
        if (b + 2 >= in + n) {
            break;
        }
    }
    for (size_t i = 0; i < r->n; i++) {
        const struct seg *last = &r->paths[i].segs[r->paths[i].n - 1];
        if (last->kind != SEG_NAME) {
            return 1;
        }
        char quoted[256];
        int ql = snprintf(quoted, sizeof(quoted), "\"%s\"", last->name);
        if (ql < 0 || (size_t)ql >= sizeof(quoted) || strpbrk(last->name, "\"\\") ||
            memmem(in, n, quoted, (size_t)ql) != NULL) {
            return 1;
        }
    }
    return 0;
}

int ab_redact_configured(const char *const *paths, size_t n, struct ab_redact **out,
                         char *errstr, size_t errlen)
{
    const char *const *p = n ? paths : ab_redact_default;
    size_t k = n ? n : 2;
    *out = ab_redact_compile(p, k, errstr, errlen);
    return *out != NULL || (k == 1 && strcmp(p[0], "none") == 0) ? 0 : -1;
}
