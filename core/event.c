/* From a request body to a CloudEvent (see event.h). Pure functions, any thread.
 *
 * A JSON body goes into "data" as sent, only with whitespace outside strings removed, so
 * that numbers keep every digit and keys their order (cJSON would print 1e400 or a
 * 23-digit id differently). ab_normalise_json_scan() checks the body, writes that minified
 * text and finds the envelope members in one pass; the envelope strings are unescaped from
 * there and the line is written around the text, with no tree (issue 13). An XML body has
 * no JSON form of its own, so its "data" is the converted tree printed by cJSON, and its
 * envelope is read from that tree.
 *
 * The envelope attributes are made valid CloudEvents attributes here (see event.h): the
 * time converted to RFC 3339 by a small parser of the forms Alma writes, the institution
 * percent-encoded into the source URI, the type reduced to [a-z0-9._-]. The attributes are
 * escaped as cJSON escapes strings. */
#include "event.h"

#include "mem.h"
#include "normalise.h"
#include "redact.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/rand.h>

#define TYPE_PREFIX "com.exlibrisgroup.alma."
#define MAX_EXACT_DOUBLE 9007199254740992.0 /* 2^53 */

static int fail(int code, char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int code, char *errstr, size_t errlen, const char *fmt, ...)
{
    if (errstr != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errstr, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- Envelope attributes ---------------------------------------------------------------- */

/* Read between min and max decimal digits at *p into *out; advances *p. 0 or -1. */
static int read_digits(const char **p, int min, int max, int *out)
{
    int n = 0, v = 0;
    while (n < max && (*p)[n] >= '0' && (*p)[n] <= '9') {
        v = v * 10 + ((*p)[n] - '0');
        n++;
    }
    if (n < min) {
        return -1;
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

struct when {
    int year, month, day, hour, min, sec;
    const char *frac; /* digits after the decimal mark, or NULL */
    int frac_len;
    int zone_sign; /* 0 for UTC ('Z'), else +1 or -1 */
    int zone_h, zone_m;
};

/* The date at *p: YYYY-MM-DD, or day first DD/MM/YYYY or DD.MM.YYYY (1 or 2 digits). */
static int read_date(const char **p, struct when *w)
{
    const char *s = *p;
    if (read_digits(&s, 4, 4, &w->year) == 0 && *s == '-') {
        s++;
        if (read_digits(&s, 2, 2, &w->month) != 0 || *s++ != '-' ||
            read_digits(&s, 2, 2, &w->day) != 0) {
            return -1;
        }
    } else {
        s = *p;
        char sep;
        if (read_digits(&s, 1, 2, &w->day) != 0 || (*s != '/' && *s != '.')) {
            return -1;
        }
        sep = *s++;
        if (read_digits(&s, 1, 2, &w->month) != 0 || *s++ != sep ||
            read_digits(&s, 4, 4, &w->year) != 0) {
            return -1;
        }
    }
    *p = s;
    return 0;
}

/* HH:MM[:SS[(.|,)fraction]] at *p. */
static int read_clock(const char **p, struct when *w)
{
    const char *s = *p;
    if (read_digits(&s, 1, 2, &w->hour) != 0 || *s++ != ':' ||
        read_digits(&s, 2, 2, &w->min) != 0) {
        return -1;
    }
    if (*s == ':') {
        s++;
        if (read_digits(&s, 2, 2, &w->sec) != 0) {
            return -1;
        }
        if ((*s == '.' || *s == ',') && s[1] >= '0' && s[1] <= '9') {
            w->frac = ++s;
            while (*s >= '0' && *s <= '9') {
                s++;
            }
            w->frac_len = (int)(s - w->frac);
        }
    }
    *p = s;
    return 0;
}

/* The zone at *p, whole rest of the string: Z, UTC, GMT, +HH, +HH:MM or +HHMM. */
static int read_zone(const char *s, struct when *w)
{
    if (*s == ' ' && s[1] != '\0') {
        s++;
    }
    if (strcmp(s, "Z") == 0 || strcmp(s, "z") == 0 || strcmp(s, "UTC") == 0 ||
        strcmp(s, "GMT") == 0) {
        return 0;
    }
    if (*s != '+' && *s != '-') {
        return -1;
    }
    w->zone_sign = *s++ == '+' ? 1 : -1;
    if (read_digits(&s, 2, 2, &w->zone_h) != 0) {
        return -1;
    }
    if (*s == ':' || (*s >= '0' && *s <= '9')) {
        s += *s == ':';
        if (read_digits(&s, 2, 2, &w->zone_m) != 0) {
            return -1;
        }
    }
    return *s == '\0' ? 0 : -1;
}

static char *put_2digits(char *o, int v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
    return o + 2;
}

/* The one parser of times: any form ab_event_rfc3339() accepts into *w. 0 or -1. */
static int read_when(const char *in, struct when *w)
{
    const char *s = in;
    memset(w, 0, sizeof(*w));
    if (read_date(&s, w) != 0) {
        return -1;
    }
    if ((*s == 'T' || *s == 't' || *s == ' ') && s[1] >= '0' && s[1] <= '9') {
        s++;
        if (read_clock(&s, w) != 0) {
            return -1;
        }
    }
    if (*s != '\0' && read_zone(s, w) != 0) {
        return -1;
    }
    if (w->year < 1 || w->month < 1 || w->month > 12 || w->day < 1 ||
        w->day > days_in_month(w->year, w->month) || w->hour > 23 || w->min > 59 ||
        w->sec > 59 || w->zone_h > 23 || w->zone_m > 59) {
        return -1;
    }
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's
 * days_from_civil), so that no time zone state (timegm) is involved. */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int64_t ab_event_time_ms(const char *in)
{
    struct when w;
    if (in == NULL || read_when(in, &w) != 0) {
        return -1;
    }
    int64_t s = days_from_civil(w.year, w.month, w.day) * 86400 + w.hour * 3600 +
                w.min * 60 + w.sec;
    s -= w.zone_sign * (w.zone_h * 3600 + w.zone_m * 60);
    int64_t ms = 0;
    for (int i = 0; i < 3; i++) {
        ms = ms * 10 + (w.frac != NULL && i < w.frac_len ? w.frac[i] - '0' : 0);
    }
    return s * 1000 + ms;
}

int ab_event_rfc3339(const char *in, char *out, size_t outlen)
{
    struct when w;
    if (read_when(in, &w) != 0) {
        return -1;
    }
    /* written by hand: snprintf cost more than the rest of the envelope together */
    size_t need = 20 + (w.frac != NULL ? 1 + (size_t)w.frac_len : 0) + (w.zone_sign ? 6 : 1);
    if (need + 1 > outlen) {
        return -1;
    }
    char *o = put_2digits(put_2digits(out, w.year / 100), w.year % 100);
    *o++ = '-';
    o = put_2digits(o, w.month);
    *o++ = '-';
    o = put_2digits(o, w.day);
    *o++ = 'T';
    o = put_2digits(o, w.hour);
    *o++ = ':';
    o = put_2digits(o, w.min);
    *o++ = ':';
    o = put_2digits(o, w.sec);
    if (w.frac != NULL) {
        *o++ = '.';
        memcpy(o, w.frac, (size_t)w.frac_len);
        o += w.frac_len;
    }
    if (w.zone_sign == 0) {
        *o++ = 'Z';
    } else {
        *o++ = w.zone_sign > 0 ? '+' : '-';
        o = put_2digits(o, w.zone_h);
        *o++ = ':';
        o = put_2digits(o, w.zone_m);
    }
    *o = '\0';
    return 0;
}

/* "urn:alma:" and the institution code with every byte outside RFC 3986's unreserved set
 * percent-encoded, so that source is a URI whatever the code holds. */
static char *source_uri(const char *institution)
{
    static const char hex[] = "0123456789ABCDEF";
    static const char prefix[] = "urn:alma:";
    const char *code = institution != NULL ? institution : "unknown";
    size_t len = strlen(code);
    char *s = ab_malloc(sizeof(prefix) + 3 * len), *w = s + sizeof(prefix) - 1;
    memcpy(s, prefix, sizeof(prefix) - 1);
    for (const unsigned char *p = (const unsigned char *)code; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *w++ = (char)*p;
        } else {
            *w++ = '%';
            *w++ = hex[*p >> 4];
            *w++ = hex[*p & 15];
        }
    }
    *w = '\0';
    return s;
}

/* Append code to the type being written at w, lower case, every character outside
 * [a-z0-9._-] as one '_' (a UTF-8 sequence is one character); returns the new end. */
static char *type_part(char *w, const char *code)
{
    for (const unsigned char *p = (const unsigned char *)code; *p; p++) {
        unsigned char c = *p;
        if (c >= 'A' && c <= 'Z') {
            *w++ = (char)(c - 'A' + 'a');
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                   c == '-') {
            *w++ = (char)c;
        } else {
            *w++ = '_';
            while (c >= 0xc0 && (p[1] & 0xc0) == 0x80) {
                p++; /* the continuation bytes of this character */
            }
        }
    }
    return w;
}

static char *type_of(const char *action, const char *event)
{
    static const char prefix[] = TYPE_PREFIX;
    size_t len = sizeof(prefix) + strlen(action) + 1 + (event != NULL ? strlen(event) : 0);
    char *t = ab_malloc(len), *w = t + sizeof(prefix) - 1;
    memcpy(t, prefix, sizeof(prefix) - 1);
    w = type_part(w, action);
    if (event != NULL) {
        *w++ = '.';
        w = type_part(w, event);
    }
    *w = '\0';
    return t;
}

/* Whether s (UTF-8, len bytes) holds a C0 or C1 control character or DEL. */
static int has_control(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f ||
            (p[i] == 0xc2 && i + 1 < len && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)) {
            return 1;
        }
    }
    return 0;
}

/* ---- The envelope, from either form ------------------------------------------------------ */

/* An envelope value: its JSON kind and, for a string, its unescaped text (len counts any
 * NUL from \u0000), for a number its text as sent. */
struct field {
    enum ab_json_kind kind;
    char *s;
    size_t len;
};

/* What the event is built from: the kind of the body's top level, the first envelope name
 * it repeats (-1 for none), and the fields (event and institution already reduced to their
 * code: the "value" member of an object, or the string itself). */
struct envelope {
    enum ab_json_kind root;
    int repeated;
    struct field f[AB_ENV_COUNT];
};

static void envelope_clear(struct envelope *e)
{
    for (int k = 0; k < AB_ENV_COUNT; k++) {
        free(e->f[k].s);
    }
}

/* The field for the span found by the JSON scan in the minified data. */
static struct field field_from_span(const char *data, struct ab_json_span span)
{
    struct field f = {span.kind, NULL, 0};
    if (span.kind == AB_JSON_STRING) {
        f.s = ab_json_string_decode(data + span.off, span.len, &f.len);
    } else if (span.kind == AB_JSON_NUMBER) {
        f.s = ab_strndup(data + span.off, span.len);
        f.len = span.len;
    }
    return f;
}

static void envelope_from_scan(const struct ab_json_envelope *scan, const char *data,
                               struct envelope *e)
{
    e->root = scan->root;
    e->repeated = scan->repeated;
    for (int k = 0; k < AB_ENV_COUNT; k++) {
        int code = (k == AB_ENV_EVENT || k == AB_ENV_INSTITUTION) &&
                   scan->field[k].kind == AB_JSON_OBJECT;
        e->f[k] = field_from_span(data, code ? scan->code[k] : scan->field[k]);
    }
}

static struct field field_from_item(const cJSON *item)
{
    struct field f = {AB_JSON_ABSENT, NULL, 0};
    if (cJSON_IsString(item)) {
        f = (struct field){AB_JSON_STRING, ab_strdup(item->valuestring), 0};
        f.len = strlen(f.s);
    } else if (item != NULL) {
        f.kind = cJSON_IsNull(item)     ? AB_JSON_NULL
                 : cJSON_IsObject(item) ? AB_JSON_OBJECT
                 : cJSON_IsArray(item)  ? AB_JSON_ARRAY
                 : cJSON_IsNumber(item) ? AB_JSON_NUMBER
                                        : AB_JSON_LITERAL;
    }
    return f;
}

/* The envelope of the tree an XML body became. A repeated element is an array there. */
static void envelope_from_tree(const cJSON *root, struct envelope *e)
{
    e->root = cJSON_IsObject(root) ? AB_JSON_OBJECT : AB_JSON_ARRAY;
    e->repeated = -1;
    for (int k = 0; k < AB_ENV_COUNT; k++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, ab_envelope_names[k]);
        if (cJSON_IsArray(item) && e->repeated < 0) {
            e->repeated = k;
        }
        if ((k == AB_ENV_EVENT || k == AB_ENV_INSTITUTION) && cJSON_IsObject(item)) {
            item = cJSON_GetObjectItemCaseSensitive(item, "value");
        }
        e->f[k] = field_from_item(item);
    }
}

/* The webhook id from a JSON number: its digits as sent when written as an integer,
 * otherwise the integral value printed without exponent while it is exact. */
static int number_id(const char *text, char **out, char *errstr, size_t errlen)
{
    if (strpbrk(text, ".eE") == NULL) {
        *out = ab_strdup(text);
        return AB_EVENT_OK;
    }
    double v = strtod(text, NULL);
    if (!(v >= -MAX_EXACT_DOUBLE && v <= MAX_EXACT_DOUBLE)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen,
                    "webhook \"id\" is a number too large to keep exactly; send it as digits");
    }
    if ((double)(long long)v != v) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"id\" is not an integer");
    }
    *out = ab_asprintf("%.0f", v);
    return AB_EVENT_OK;
}

static int take_id(struct field *id, char **out, char *errstr, size_t errlen)
{
    if (id->kind == AB_JSON_ABSENT || id->kind == AB_JSON_NULL) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook has no \"id\"");
    }
    if (id->kind == AB_JSON_NUMBER) {
        return number_id(id->s, out, errstr, errlen);
    }
    if (id->kind != AB_JSON_STRING) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen,
                    "webhook \"id\" is neither a string nor an integer");
    }
    if (has_control(id->s, id->len)) {
        return fail(AB_EVENT_MALFORMED, errstr, errlen,
                    "webhook \"id\" holds a control character");
    }
    if (id->len == 0) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"id\" is empty");
    }
    *out = id->s;
    id->s = NULL;
    return AB_EVENT_OK;
}

static int take_action(struct field *action, char **out, char *errstr, size_t errlen)
{
    if (action->kind == AB_JSON_ABSENT || action->kind == AB_JSON_NULL) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook has no \"action\"");
    }
    if (action->kind != AB_JSON_STRING) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"action\" is not a string");
    }
    if (action->s[0] == '\0') {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"action\" is empty");
    }
    *out = action->s;
    action->s = NULL;
    return AB_EVENT_OK;
}

/* An optional string field (a code, the time): NULL when absent, empty or not a string
 * (event and institution are optional, so a strange one is dropped). */
static char *take_optional(struct field *f)
{
    char *s = NULL;
    if (f->kind == AB_JSON_STRING && f->s[0] != '\0') {
        s = f->s;
        f->s = NULL;
    }
    return s;
}

/* ev->time from the webhook's "time" in RFC 3339, or ev->almatime as sent. */
static void set_time(struct ab_event *ev, char *sent)
{
    char buf[64];
    if (sent == NULL) {
        return;
    }
    if (ab_event_rfc3339(sent, buf, sizeof(buf)) == 0) {
        ev->time = ab_strdup(buf);
        free(sent);
    } else {
        ev->almatime = sent;
    }
}

/* Fill the envelope fields of ev from e (whose strings it takes). */
static int read_envelope(struct envelope *e, struct ab_event *ev, char *errstr, size_t errlen)
{
    if (e->root != AB_JSON_OBJECT) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "body is not a JSON object");
    }
    if (e->repeated >= 0) {
        return fail(AB_EVENT_MALFORMED, errstr, errlen, "webhook envelope repeats \"%s\"",
                    ab_envelope_names[e->repeated]);
    }
    int rc = take_id(&e->f[AB_ENV_ID], &ev->id, errstr, errlen);
    if (rc == AB_EVENT_OK) {
        rc = take_action(&e->f[AB_ENV_ACTION], &ev->action, errstr, errlen);
    }
    if (rc != AB_EVENT_OK) {
        return rc;
    }
    ev->event = take_optional(&e->f[AB_ENV_EVENT]);
    ev->institution = take_optional(&e->f[AB_ENV_INSTITUTION]);
    set_time(ev, take_optional(&e->f[AB_ENV_TIME]));
    ev->type = type_of(ev->action, ev->event);
    ev->source = source_uri(ev->institution);
    return AB_EVENT_OK;
}

/* ---- The event line ----------------------------------------------------------------------- */

/* Append ,"key":"value" (first: without the comma) with value escaped as cJSON prints
 * strings: ", \ and control characters escaped, everything else as is. w has room for
 * the key and 6 bytes per byte of value. Returns the new end. */
static char *put_member(char *w, const char *key, const char *value, int first)
{
    if (value == NULL) {
        return w;
    }
    if (!first) {
        *w++ = ',';
    }
    *w++ = '"';
    size_t kl = strlen(key);
    memcpy(w, key, kl);
    w += kl;
    memcpy(w, "\":\"", 3);
    w += 3;
    w += ab_json_escape(w, value, strlen(value));
    *w++ = '"';
    return w;
}

size_t ab_event_attrs(const struct ab_event *ev, struct ab_attr *out)
{
    const struct ab_attr all[] = {
        {"specversion", "1.0"},
        {"id", ev->id},
        {"source", ev->source},
        {"type", ev->type},
        {"subject", ev->subject},
        {"time", ev->time},
        {"datacontenttype", "application/json"},
        {"dataschema", ev->dataschema},
        {"partitionkey", ev->partitionkey},
        {"traceparent", ev->traceparent},
        {"tracestate", ev->tracestate},
        {"almaaction", ev->action},
        {"almaevent", ev->event},
        {"almainstitution", ev->institution},
        {"almatime", ev->almatime},
    };
    size_t n = 0;
    for (size_t k = 0; k < sizeof(all) / sizeof(all[0]); k++) {
        if (all[k].value != NULL) {
            out[n++] = all[k];
        }
    }
    for (unsigned k = 0; k < ev->n_ext; k++) {
        out[n++] = (struct ab_attr){ev->ext_name[k], ev->ext_value[k]};
    }
    return n;
}

/* The line for attrs and data: {attributes..., "data": data}; *data_off gets where the
 * data starts in it. */
static char *line_of(const struct ab_attr *attrs, size_t n, const char *data, size_t data_len,
                     size_t *len, size_t *data_off)
{
    size_t room = sizeof(",\"data\":}");
    for (size_t k = 0; k < n; k++) {
        room += strlen(attrs[k].name) + 6 + 6 * strlen(attrs[k].value);
    }
    char *line = ab_malloc(room + data_len + 2), *w = line;
    *w++ = '{';
    for (size_t k = 0; k < n; k++) {
        w = put_member(w, attrs[k].name, attrs[k].value, k == 0);
    }
    if (data_len > 0) {
        memcpy(w, n > 0 ? ",\"data\":" : "\"data\":", n > 0 ? 8 : 7);
        w += n > 0 ? 8 : 7;
    }
    *data_off = (size_t)(w - line);
    if (data_len > 0) {
        memcpy(w, data, data_len);
        w += data_len;
    }
    *w++ = '}';
    *w = '\0';
    *len = (size_t)(w - line);
    return line;
}

char *ab_event_line_from_attrs(const struct ab_attr *attrs, size_t n, const char *data,
                               size_t data_len, size_t *len)
{
    size_t off;
    return line_of(attrs, n, data, data_len, len, &off);
}

/* The CloudEvent line: the attributes in the documented order, then "data" with data
 * (data_len bytes of JSON) spliced in. */
static void build_line(struct ab_event *ev, const char *data, size_t data_len)
{
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS];
    size_t n = ab_event_attrs(ev, attrs);
    ev->json = line_of(attrs, n, data, data_len, &ev->json_len, &ev->data_off);
    ev->data_len = data_len;
}

/* ---- identity, schema, trace --------------------------------------------------------- */

/* The record each event type is about: the member of data that holds its id (see
 * docs/CLOUDEVENTS.md, derived from tests/fixtures/alma). */
static const struct record_rule {
    const char *action, *kind, *schema;
    const char *path[3];
    int depth;
} record_rules[] = {
    {"JOB_END", "job", "job_end.json", {"job_instance", "id"}, 2},
    {"BIB", "bib", "bib.json", {"bib", "mms_id"}, 2},
    {"HOLDING", "holding", "holding.json", {"holding", "holding_id"}, 2},
    {"ITEM", "item", "item.json", {"item", "item_data", "pid"}, 3},
    {"LOAN", "loan", "loan.json", {"item_loan", "loan_id"}, 2},
    {"REQUEST", "request", "request.json", {"user_request", "request_id"}, 2},
    {"USER", "user", "user.json", {"webhook_user", "user", "primary_id"}, 3},
    {"NOTIFICATION", NULL, "notification.json", {NULL}, 0},
};

static const struct record_rule *rule_of(const char *action)
{
    for (size_t i = 0; action && i < sizeof(record_rules) / sizeof(record_rules[0]); i++) {
        if (strcasecmp(record_rules[i].action, action) == 0) {
            return &record_rules[i];
        }
    }
    return NULL;
}

const char *ab_event_schema_name(const char *action)
{
    const struct record_rule *r = rule_of(action);
    return r ? r->schema : "webhook.json";
}

/* The record's id in data by rule r: a non-empty string without control characters, or
 * an integer as written; NULL otherwise. */
static char *record_id(const struct record_rule *r, const char *data, size_t n)
{
    size_t off, len;
    if (r == NULL || r->depth == 0 || ab_json_find(data, n, r->path, r->depth, &off, &len) != 0) {
        return NULL;
    }
    char *id = NULL;
    size_t idlen = 0;
    if (data[off] == '"') {
        id = ab_json_string_decode(data + off, len, &idlen);
    } else if (data[off] == '-' || (data[off] >= '0' && data[off] <= '9')) {
        id = ab_strndup(data + off, len);
        idlen = len;
    }
    if (id != NULL && (idlen == 0 || idlen > 200 || has_control(id, idlen))) {
        free(id);
        id = NULL;
    }
    return id;
}

/* ev->subject and ev->partitionkey from data (after redaction). */
static void set_identity(struct ab_event *ev, const char *data, size_t n)
{
    const struct record_rule *r = rule_of(ev->action);
    char *id = record_id(r, data, n);
    const char *kind = id != NULL ? r->kind : "webhook";
    ev->subject = id != NULL ? id : ab_strdup(ev->id);
    size_t kl = strlen(kind), il = strlen(ev->subject);
    ev->partitionkey = ab_malloc(kl + il + 2);
    memcpy(ev->partitionkey, kind, kl);
    ev->partitionkey[kl] = '/';
    memcpy(ev->partitionkey + kl + 1, ev->subject, il + 1);
}

static int hex_run(const char *s, size_t n)
{
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return -1;
        }
        nonzero |= s[i] != '0';
    }
    return nonzero;
}

/* 64 random bits for trace and span ids: splitmix64 over a per-thread state seeded from
 * the kernel's random pool once (ids must be unique and unpredictable enough to never
 * collide, not secret; RAND_bytes cost 7,000 instructions a webhook). */
static uint64_t trace_random(void)
{
    static _Thread_local uint64_t state;
    static _Thread_local int seeded;
    if (!seeded) {
        if (RAND_bytes((unsigned char *)&state, sizeof(state)) != 1) {
            state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&state;
        }
        seeded = 1;
    }
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int ab_event_trace(const char *tp, char out[56])
{
    size_t len = tp ? strlen(tp) : 0;
    if (len >= 55 && hex_run(tp, 2) >= 0 && strncmp(tp, "ff", 2) != 0 && tp[2] == '-' &&
        hex_run(tp + 3, 32) == 1 && tp[35] == '-' && hex_run(tp + 36, 16) == 1 &&
        tp[52] == '-' && hex_run(tp + 53, 2) >= 0 &&
        (len == 55 || (strncmp(tp, "00", 2) != 0 && tp[55] == '-'))) {
        memcpy(out, "00", 2);
        memcpy(out + 2, tp + 2, 53);
        out[55] = '\0';
        return 1;
    }
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[24];
    for (size_t i = 0; i < sizeof(rnd); i += 8) {
        uint64_t v = trace_random();
        memcpy(rnd + i, &v, 8);
    }
    rnd[0] |= 1; /* never all zero */
    rnd[16] |= 1;
    char *w = out;
    memcpy(w, "00-", 3);
    w += 3;
    for (int i = 0; i < 24; i++) {
        *w++ = hex[rnd[i] >> 4];
        *w++ = hex[rnd[i] & 15];
        if (i == 15) {
            *w++ = '-';
        }
    }
    memcpy(w, "-01", 4);
    return 0;
}

const char *ab_event_tracestate(const char *ts)
{
    size_t len = ts ? strlen(ts) : 0;
    if (len == 0 || len > 512) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (ts[i] < 0x20 || ts[i] > 0x7e) {
            return NULL;
        }
    }
    return ts;
}

/* Everything after the envelope: redaction of data (min: its minified text, n bytes; the
 * result replaces it in *buf), identity, schema and trace, then the line. */
static void finish(struct ab_event *ev, const struct ab_event_opts *o, const char *data,
                   size_t n)
{
    char *red = NULL;
    if (o && o->redact && ab_redact_may_apply(o->redact, data, n)) {
        red = ab_malloc(n + 1);
        n = ab_redact_apply(o->redact, data, n, red, NULL);
        data = red;
    }
    set_identity(ev, data, n);
    if (o && o->schema_base) {
        ev->dataschema = ab_asprintf("%s%s", o->schema_base, ab_event_schema_name(ev->action));
    }
    if (o && o->traceparent) {
        ev->traceparent = ab_strdup(o->traceparent);
        ev->tracestate = o->tracestate ? ab_strdup(o->tracestate) : NULL;
    }
    build_line(ev, data, n);
    free(red);
}

/* A JSON body: one scan validates it, writes it minified (the "data") and finds the
 * envelope; no tree is built. */
static int from_json(const char *body, size_t len, const struct ab_event_opts *o,
                     struct ab_event *ev, char *errstr, size_t errlen)
{
    struct ab_json_envelope scan;
    struct envelope e = {0};
    char *data = ab_malloc(len + 1);
    int rc = AB_EVENT_MALFORMED;
    long n = ab_normalise_json_scan(body, len, data, &scan, errstr, errlen);
    if (n >= 0) {
        envelope_from_scan(&scan, data, &e);
        rc = read_envelope(&e, ev, errstr, errlen);
    }
    if (rc == AB_EVENT_OK) {
        finish(ev, o, data, (size_t)n);
    }
    envelope_clear(&e);
    free(data);
    return rc;
}

/* An XML body: converted to a tree, printed as "data". */
static int from_xml(const char *body, size_t len, const struct ab_event_opts *o,
                    struct ab_event *ev, char *errstr, size_t errlen)
{
    struct envelope e = {0};
    char *data = NULL;
    int rc = AB_EVENT_MALFORMED;
    cJSON *root = ab_normalise_xml(body, len, errstr, errlen);
    if (root != NULL) {
        envelope_from_tree(root, &e);
        rc = read_envelope(&e, ev, errstr, errlen);
    }
    if (rc == AB_EVENT_OK) {
        data = cJSON_PrintUnformatted(root);
        if (data == NULL) {
            fprintf(stderr, "almabridge: out of memory printing JSON\n");
            abort();
        }
        finish(ev, o, data, strlen(data));
    }
    cJSON_free(data);
    cJSON_Delete(root);
    envelope_clear(&e);
    return rc;
}

int ab_event_from_body(enum ab_body_format fmt, const char *body, size_t len,
                       struct ab_event **out, char *errstr, size_t errlen)
{
    return ab_event_build(fmt, body, len, NULL, out, errstr, errlen);
}

int ab_event_build(enum ab_body_format fmt, const char *body, size_t len,
                   const struct ab_event_opts *opts, struct ab_event **out, char *errstr,
                   size_t errlen)
{
    struct ab_event *ev = ab_calloc(1, sizeof(*ev));
    int rc = fmt == AB_FORMAT_XML ? from_xml(body, len, opts, ev, errstr, errlen)
                                  : from_json(body, len, opts, ev, errstr, errlen);
    *out = NULL;
    if (rc == AB_EVENT_OK) {
        *out = ev;
        ev = NULL;
    }
    ab_event_free(ev);
    return rc;
}

void ab_event_free(struct ab_event *ev)
{
    if (ev == NULL) {
        return;
    }
    free(ev->id);
    free(ev->action);
    free(ev->event);
    free(ev->institution);
    free(ev->time);
    free(ev->almatime);
    free(ev->type);
    free(ev->source);
    free(ev->subject);
    free(ev->partitionkey);
    free(ev->dataschema);
    free(ev->traceparent);
    free(ev->tracestate);
    for (unsigned k = 0; k < ev->n_ext; k++) {
        free(ev->ext_name[k]);
        free(ev->ext_value[k]);
    }
    free(ev->json);
    free(ev);
}

/* ---- Reading the event line back ---------------------------------------------------------- */

/* The line is our own format, written above; it is read without a tree so that a number
 * such as a 17-digit job instance id keeps every digit. ab_normalise_json_scan() checks it
 * is strict JSON first, so the walkers below only ever see well-formed text. Each returns
 * an index into s, n when the text ends early. */
static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) {
        i++;
    }
    return i;
}

/* The index of the value of member `key` of the object at s[i], or n when absent. */
static size_t member_at(const char *s, size_t n, size_t i, const char *key)
{
    size_t klen = strlen(key);
    i = skip_ws(s, n, i);
    if (i >= n || s[i] != '{') {
        return n;
    }
    i = skip_ws(s, n, i + 1);
    while (i < n && s[i] == '"') {
        size_t kend = ab_json_skip(s, n, i);
        int hit = kend - i == klen + 2 && memcmp(s + i + 1, key, klen) == 0;
        i = skip_ws(s, n, kend);
        if (i >= n || s[i] != ':') {
            return n;
        }
        i = skip_ws(s, n, i + 1);
        if (hit) {
            return i;
        }
        i = skip_ws(s, n, ab_json_skip(s, n, i));
        if (i >= n || s[i] != ',') {
            return n;
        }
        i = skip_ws(s, n, i + 1);
    }
    return n;
}

char *ab_event_line_text(const char *line, size_t len, const char *const *path, size_t depth)
{
    size_t i = 0;
    for (size_t d = 0; d < depth && i < len; d++) {
        i = member_at(line, len, i, path[d]);
    }
    if (i >= len) {
        return NULL;
    }
    size_t end = ab_json_skip(line, len, i);
    if (line[i] == '{') {
        static const char *const value[] = {"value"};
        return ab_event_line_text(line + i, end - i, value, 1);
    }
    if (line[i] == '"') {
        return ab_json_string_decode(line + i, end - i, NULL);
    }
    if (line[i] == '-' || (line[i] >= '0' && line[i] <= '9')) {
        return ab_strndup(line + i, end - i);
    }
    return NULL;
}

/* A top-level string member, NULL when absent, empty or not a string. */
static char *line_str(const char *line, size_t len, const char *key)
{
    size_t i = member_at(line, len, 0, key);
    if (i >= len || line[i] != '"') {
        return NULL;
    }
    char *v = ab_json_string_decode(line + i, ab_json_skip(line, len, i) - i, NULL);
    if (v != NULL && v[0] == '\0') {
        free(v);
        v = NULL;
    }
    return v;
}

/* 1 for the members of a line that ab_event_from_line() reads into fields of its own (or
 * that are not attributes: data), 0 for another extension attribute. */
static int known_member(const char *name)
{
    static const char *const known[] = {
        "specversion", "id",          "source",       "type",        "subject",
        "time",        "datacontenttype", "dataschema", "partitionkey", "traceparent",
        "tracestate",  "almaaction",  "almaevent",    "almainstitution", "almatime",
        "data",        "data_base64",
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(name, known[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The other string attributes of the line (CloudEvents extension names: [a-z0-9]), so that
 * a re-encoding in binary mode loses none of them. */
static void read_extensions(struct ab_event *ev, const char *s, size_t n)
{
    size_t i = skip_ws(s, n, 0);
    if (i >= n || s[i] != '{') {
        return;
    }
    i = skip_ws(s, n, i + 1);
    while (i < n && s[i] == '"' && ev->n_ext < AB_EVENT_MAX_EXT) {
        size_t kend = ab_json_skip(s, n, i);
        char *name = ab_json_string_decode(s + i, kend - i, NULL);
        i = skip_ws(s, n, kend);
        if (i >= n || s[i] != ':') {
            free(name);
            return;
        }
        i = skip_ws(s, n, i + 1);
        size_t vend = ab_json_skip(s, n, i);
        if (name && s[i] == '"' && !known_member(name) &&
            strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789") == strlen(name)) {
            char *v = ab_json_string_decode(s + i, vend - i, NULL);
            if (v) {
                ev->ext_name[ev->n_ext] = name;
                ev->ext_value[ev->n_ext++] = v;
                name = NULL;
            }
        }
        free(name);
        i = skip_ws(s, n, vend);
        if (i >= n || s[i] != ',') {
            return;
        }
        i = skip_ws(s, n, i + 1);
    }
}

int ab_event_from_line(const char *line, size_t len, struct ab_event **out, char *errstr,
                       size_t errlen)
{
    struct ab_json_envelope scan;
    char *min = ab_malloc(len + 1);
    long n = ab_normalise_json_scan_depth(line, len, min, &scan,
                                          AB_MAX_DEPTH + AB_LINE_EXTRA_DEPTH, errstr, errlen);
    free(min);
    *out = NULL;
    if (n < 0) {
        return AB_EVENT_MALFORMED;
    }
    if (scan.root != AB_JSON_OBJECT || scan.field[AB_ENV_ID].kind != AB_JSON_STRING) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "not a CloudEvent with a string id");
    }
    struct ab_event *ev = ab_calloc(1, sizeof(*ev));
    ev->id = line_str(line, len, "id");
    ev->action = line_str(line, len, "almaaction");
    ev->event = line_str(line, len, "almaevent");
    ev->institution = line_str(line, len, "almainstitution");
    ev->time = line_str(line, len, "time");
    ev->almatime = line_str(line, len, "almatime");
    ev->type = line_str(line, len, "type");
    ev->source = line_str(line, len, "source");
    if (ev->id == NULL) {
        ab_event_free(ev);
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "a CloudEvent with an empty id");
    }
    ev->type = ev->type ? ev->type : ab_strdup("com.exlibrisgroup.alma");
    ev->source = ev->source ? ev->source : ab_strdup("urn:alma:unknown");
    ev->subject = line_str(line, len, "subject");
    ev->partitionkey = line_str(line, len, "partitionkey");
    ev->dataschema = line_str(line, len, "dataschema");
    ev->traceparent = line_str(line, len, "traceparent");
    ev->tracestate = line_str(line, len, "tracestate");
    read_extensions(ev, line, len);
    ev->json = ab_strndup(line, len);
    ev->json_len = len;
    ev->data_off = len; /* no data */
    size_t d = member_at(line, len, 0, "data");
    if (d < len) {
        ev->data_off = d;
        ev->data_len = ab_json_skip(line, len, d) - d;
    }
    if (ev->partitionkey == NULL) {
        set_identity(ev, line + ev->data_off, ev->data_len);
    }
    *out = ev;
    return AB_EVENT_OK;
}
