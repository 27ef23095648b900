/* Routing templates. A template is compiled once into a list of segments, each either
 * literal text (copied as written) or one of the placeholders; expansion walks the
 * list. A compiled route is immutable, so one can be shared by all threads. */
#include "route.h"

#include "event.h"
#include "mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum seg_kind { SEG_TEXT, SEG_ACTION, SEG_EVENT, SEG_INSTITUTION, SEG_ID, SEG_RECORD };

static const char *const placeholder_names[] = {
    [SEG_ACTION] = "action",
    [SEG_EVENT] = "event",
    [SEG_INSTITUTION] = "institution",
    [SEG_ID] = "id",
    [SEG_RECORD] = "record",
};

#define KNOWN_PLACEHOLDERS "{action} {event} {institution} {id} {record}"

struct seg {
    enum seg_kind kind;
    size_t off, len; /* SEG_TEXT: the text in ab_route.tmpl */
};

struct ab_route {
    char *tmpl;
    struct seg *segs;
    size_t n;
};

static void add_seg(struct ab_route *r, enum seg_kind kind, size_t off, size_t len)
{
    r->segs = ab_realloc(r->segs, (r->n + 1) * sizeof(*r->segs));
    r->segs[r->n] = (struct seg){.kind = kind, .off = off, .len = len};
    r->n++;
}

/* The placeholder named by [name, name+len), or SEG_TEXT when there is none. */
static enum seg_kind lookup_placeholder(const char *name, size_t len)
{
    for (int k = SEG_ACTION; k <= SEG_RECORD; k++) {
        if (strlen(placeholder_names[k]) == len && memcmp(placeholder_names[k], name, len) == 0) {
            return (enum seg_kind)k;
        }
    }
    return SEG_TEXT;
}

/* Compile tmpl. Returns the route, or NULL with one line in errstr for an unknown
 * placeholder or an unbalanced brace. "" is a valid template that expands to "". */
struct ab_route *ab_route_compile(const char *tmpl, char *errstr, size_t errlen)
{
    struct ab_route *r = ab_calloc(1, sizeof(*r));
    r->tmpl = ab_strdup(tmpl ? tmpl : "");
    const char *t = r->tmpl;
    size_t i = 0, text = 0;

    while (t[i] != '\0') {
        if (t[i] == '}') {
            snprintf(errstr, errlen, "unbalanced '}' at offset %zu in route \"%s\"", i, t);
            goto fail;
        }
        if (t[i] != '{') {
            i++;
            continue;
        }
        size_t end = i + 1 + strcspn(t + i + 1, "{}");
        if (t[end] != '}') {
            snprintf(errstr, errlen, "unbalanced '{' at offset %zu in route \"%s\"", i, t);
            goto fail;
        }
        enum seg_kind kind = lookup_placeholder(t + i + 1, end - i - 1);
        if (kind == SEG_TEXT) {
            snprintf(errstr, errlen,
                     "unknown placeholder %.*s in route \"%s\" (known: " KNOWN_PLACEHOLDERS ")",
                     (int)(end - i + 1), t + i, t);
            goto fail;
        }
        if (i > text) {
            add_seg(r, SEG_TEXT, text, i - text);
        }
        add_seg(r, kind, 0, 0);
        i = text = end + 1;
    }
    if (i > text) {
        add_seg(r, SEG_TEXT, text, i - text);
    }
    return r;

fail:
    ab_route_free(r);
    return NULL;
}

/* The raw value of a placeholder for ev; NULL or "" means absent. */
static const char *placeholder_value(enum seg_kind kind, const struct ab_event *ev)
{
    if (ev == NULL) {
        return NULL;
    }
    switch (kind) {
    case SEG_ACTION:
        return ev->action;
    case SEG_EVENT:
        return ev->event;
    case SEG_INSTITUTION:
        return ev->institution;
    case SEG_ID:
        return ev->id;
    case SEG_RECORD:
        return ev->partitionkey; /* "<kind>/<record id>" (event.h) */
    default:
        return NULL;
    }
}

/* One byte of an expanded value: ASCII lower case, anything outside [a-z0-9._:-] becomes
 * '_' (so each byte of a non-ASCII character becomes one '_'). */
static char route_char(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return (char)(c - 'A' + 'a');
    }
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
        c == '-') {
        return (char)c;
    }
    return '_';
}

/* Append segment s expanded for ev at out (when out is not NULL); returns its length.
 * raw: placeholder values as they are, else lower case and sanitised (route_char). */
static size_t expand_seg(const struct ab_route *r, const struct seg *s,
                         const struct ab_event *ev, int raw, char *out)
{
    if (s->kind == SEG_TEXT) {
        if (out != NULL) {
            memcpy(out, r->tmpl + s->off, s->len);
        }
        return s->len;
    }
    const char *v = placeholder_value(s->kind, ev);
    if (v == NULL || *v == '\0') {
        v = "none";
    }
    size_t len = strlen(v);
    for (size_t i = 0; out != NULL && i < len; i++) {
        out[i] = raw ? v[i] : route_char((unsigned char)v[i]);
    }
    return len;
}

static char *expand(const struct ab_route *r, const struct ab_event *ev, int raw)
{
    size_t len = 0;
    for (size_t i = 0; i < r->n; i++) {
        len += expand_seg(r, &r->segs[i], ev, raw, NULL);
    }
    char *out = ab_malloc(len + 1);
    size_t pos = 0;
    for (size_t i = 0; i < r->n; i++) {
        pos += expand_seg(r, &r->segs[i], ev, raw, out + pos);
    }
    out[pos] = '\0';
    return out;
}

/* Expand r for ev (NULL: every placeholder is absent). Returns a new string owned by the
 * caller. Pure; callable from any thread. */
char *ab_route_expand(const struct ab_route *r, const struct ab_event *ev)
{
    return expand(r, ev, 0);
}

char *ab_route_expand_raw(const struct ab_route *r, const struct ab_event *ev)
{
    return expand(r, ev, 1);
}

void ab_route_free(struct ab_route *r)
{
    if (r == NULL) {
        return;
    }
    free(r->segs);
    free(r->tmpl);
    free(r);
}
