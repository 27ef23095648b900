/* From a request body to a CloudEvent (see event.h). Pure functions, any thread.
 *
 * A JSON body goes into "data" as sent, only with whitespace outside strings removed, so
 * that numbers keep every digit and keys their order (cJSON would print 1e400 or a
 * 23-digit id differently). The lexical strictness of ab_normalise_json() (valid UTF-8,
 * no raw control characters, RFC 8259 numbers) is what makes this splice valid JSON on one
 * line. cJSON_Minify() is not used: in cJSON 1.7.15 it takes the quote after an escaped
 * backslash ("x\\") for an escaped quote and then strips spaces inside later strings.
 * An XML body has no JSON form of its own, so its "data" is the converted tree printed by
 * cJSON.
 *
 * The envelope attributes are made valid CloudEvents attributes here (see event.h): the
 * time converted to RFC 3339 by a small parser of the forms Alma writes, the institution
 * percent-encoded into the source URI, the type reduced to [a-z0-9._-]. */
#include "event.h"

#include "mem.h"
#include "normalise.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

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

int ab_event_rfc3339(const char *in, char *out, size_t outlen)
{
    struct when w = {0};
    const char *s = in;
    if (read_date(&s, &w) != 0) {
        return -1;
    }
    if ((*s == 'T' || *s == 't' || *s == ' ') && s[1] >= '0' && s[1] <= '9') {
        s++;
        if (read_clock(&s, &w) != 0) {
            return -1;
        }
    }
    if (*s != '\0' && read_zone(s, &w) != 0) {
        return -1;
    }
    if (w.year < 1 || w.month < 1 || w.month > 12 || w.day < 1 ||
        w.day > days_in_month(w.year, w.month) || w.hour > 23 || w.min > 59 || w.sec > 59 ||
        w.zone_h > 23 || w.zone_m > 59) {
        return -1;
    }
    char zone[8] = "Z";
    if (w.zone_sign != 0) {
        snprintf(zone, sizeof(zone), "%c%02d:%02d", w.zone_sign > 0 ? '+' : '-', w.zone_h,
                 w.zone_m);
    }
    int n = snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d%s%.*s%s", w.year, w.month,
                     w.day, w.hour, w.min, w.sec, w.frac != NULL ? "." : "", w.frac_len,
                     w.frac != NULL ? w.frac : "", zone);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
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

/* Whether the JSON string literal raw (quotes included, as in the body) holds an escape
 * that decodes to a control character (\u0000 included, which cJSON's strings cannot
 * show), or such a character as UTF-8. */
static int json_string_has_control(const char *raw, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (raw[i] != '\\' || i + 1 >= len) {
            continue;
        }
        char e = raw[++i];
        if (e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
            return 1;
        }
        if (e == 'u' && i + 4 < len) {
            unsigned v = 0;
            for (size_t k = i + 1; k <= i + 4; k++) {
                char c = raw[k];
                v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
            }
            if (v < 0x20 || (v >= 0x7f && v <= 0x9f)) {
                return 1;
            }
            i += 4;
        }
    }
    return has_control(raw, len);
}

/* Remove whitespace outside strings, in place; returns the new length. */
static size_t minify_json(char *s, size_t n)
{
    size_t w = 0;
    int in_string = 0;
    for (size_t r = 0; r < n; r++) {
        char c = s[r];
        if (in_string) {
            s[w++] = c;
            if (c == '\\' && r + 1 < n) {
                s[w++] = s[++r];
            } else if (c == '"') {
                in_string = 0;
            }
        } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            s[w++] = c;
            in_string = c == '"';
        }
    }
    s[w] = '\0';
    return w;
}

/* Index just past the JSON value starting at s[i] in minified text. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    int depth = 0, in_string = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = 0;
                if (depth == 0) {
                    return i + 1;
                }
            }
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                return i; /* end of the enclosing container */
            }
            if (--depth == 0) {
                return i + 1;
            }
        } else if (c == ',' && depth == 0) {
            return i;
        }
    }
    return n;
}

/* The raw text of the first top-level member spelt exactly "key" (no escapes) in the
 * minified object s, as a new string; NULL when there is none. */
static char *raw_member(const char *s, size_t n, const char *key)
{
    size_t klen = strlen(key);
    size_t i = 1; /* past '{' */
    while (i < n && s[i] == '"') {
        size_t name_end = skip_value(s, n, i); /* past the closing quote */
        size_t v = name_end + 1;               /* past ':' */
        size_t v_end = skip_value(s, n, v);
        if (name_end - i == klen + 2 && memcmp(s + i + 1, key, klen) == 0) {
            return v_end > v ? ab_strndup(s + v, v_end - v) : NULL;
        }
        i = v_end + 1; /* past ',' */
    }
    return NULL;
}

/* The webhook id from a JSON number: its digits as sent when written as an integer,
 * otherwise the integral value printed without exponent while it is exact. */
static int number_id(const cJSON *id, const char *raw_json, size_t raw_len, char **out,
                     char *errstr, size_t errlen)
{
    double v = id->valuedouble;
    char *raw = raw_json != NULL ? raw_member(raw_json, raw_len, "id") : NULL;
    if (raw != NULL && strpbrk(raw, ".eE") == NULL && strtod(raw, NULL) == v) {
        *out = raw;
        return AB_EVENT_OK;
    }
    free(raw);
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

static int take_id(const cJSON *root, const char *raw_json, size_t raw_len, char **out,
                   char *errstr, size_t errlen)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (id == NULL || cJSON_IsNull(id)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook has no \"id\"");
    }
    if (cJSON_IsNumber(id)) {
        return number_id(id, raw_json, raw_len, out, errstr, errlen);
    }
    if (!cJSON_IsString(id)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen,
                    "webhook \"id\" is neither a string nor an integer");
    }
    char *raw = raw_json != NULL ? raw_member(raw_json, raw_len, "id") : NULL;
    int control = has_control(id->valuestring, strlen(id->valuestring)) ||
                  (raw != NULL && json_string_has_control(raw, strlen(raw)));
    free(raw);
    if (control) {
        return fail(AB_EVENT_MALFORMED, errstr, errlen,
                    "webhook \"id\" holds a control character");
    }
    if (id->valuestring[0] == '\0') {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"id\" is empty");
    }
    *out = ab_strdup(id->valuestring);
    return AB_EVENT_OK;
}

static int take_action(const cJSON *root, char **out, char *errstr, size_t errlen)
{
    const cJSON *action = cJSON_GetObjectItemCaseSensitive(root, "action");
    if (action == NULL || cJSON_IsNull(action)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook has no \"action\"");
    }
    if (!cJSON_IsString(action)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"action\" is not a string");
    }
    if (action->valuestring[0] == '\0') {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "webhook \"action\" is empty");
    }
    *out = ab_strdup(action->valuestring);
    return AB_EVENT_OK;
}

/* A code field: {"value": "CODE", ...} or "CODE"; NULL when absent, null, empty or of
 * another shape (event and institution are optional, so a strange one is dropped). */
static char *code_value(const cJSON *root, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsObject(item)) {
        item = cJSON_GetObjectItemCaseSensitive(item, "value");
    }
    if (cJSON_IsString(item) && item->valuestring[0] != '\0') {
        return ab_strdup(item->valuestring);
    }
    return NULL;
}

static char *string_value(const cJSON *root, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsString(item) && item->valuestring[0] != '\0') {
        return ab_strdup(item->valuestring);
    }
    return NULL;
}

/* The envelope names that may appear once only: the CloudEvent takes the first, a
 * last-wins parser downstream would see another. In the tree of an XML body a repeated
 * element is an array, so there an array of one of these names is a repetition too. */
static int check_repeats(const cJSON *root, int xml, char *errstr, size_t errlen)
{
    static const char *const names[] = {"id", "action", "event", "institution", "time"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        int seen = 0;
        for (const cJSON *m = root->child; m != NULL; m = m->next) {
            if (m->string != NULL && strcmp(m->string, names[k]) == 0) {
                seen += xml && cJSON_IsArray(m) ? 2 : 1;
            }
        }
        if (seen > 1) {
            return fail(AB_EVENT_MALFORMED, errstr, errlen, "webhook envelope repeats \"%s\"",
                        names[k]);
        }
    }
    return AB_EVENT_OK;
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

static void add_string(cJSON *obj, const char *key, const char *value)
{
    if (value != NULL) {
        cJSON_AddItemToObject(obj, key, cJSON_CreateString(value));
    }
}

static char *print_or_abort(const cJSON *item)
{
    char *s = cJSON_PrintUnformatted(item);
    if (s == NULL) {
        fprintf(stderr, "almabridge: out of memory printing JSON\n");
        abort();
    }
    return s;
}

/* The CloudEvent line: the attributes printed by cJSON (which escapes them), then
 * ,"data": and data (len bytes) spliced in before the closing brace. */
static void build_line(struct ab_event *ev, const char *data, size_t data_len)
{
    cJSON *head = cJSON_CreateObject();
    add_string(head, "specversion", "1.0");
    add_string(head, "id", ev->id);
    add_string(head, "source", ev->source);
    add_string(head, "type", ev->type);
    add_string(head, "time", ev->time);
    add_string(head, "datacontenttype", "application/json");
    add_string(head, "almaaction", ev->action);
    add_string(head, "almaevent", ev->event);
    add_string(head, "almainstitution", ev->institution);
    add_string(head, "almatime", ev->almatime);
    char *h = print_or_abort(head);
    size_t hlen = strlen(h) - 1; /* without the closing '}' */
    static const char mid[] = ",\"data\":";
    ev->json_len = hlen + sizeof(mid) - 1 + data_len + 1;
    ev->json = ab_malloc(ev->json_len + 1);
    memcpy(ev->json, h, hlen);
    memcpy(ev->json + hlen, mid, sizeof(mid) - 1);
    memcpy(ev->json + hlen + sizeof(mid) - 1, data, data_len);
    ev->json[ev->json_len - 1] = '}';
    ev->json[ev->json_len] = '\0';
    cJSON_free(h);
    cJSON_Delete(head);
}

/* Fill the envelope fields of ev from the tree; raw_json is the minified JSON body (NULL
 * for XML) for the exact digits of a numeric id and the escapes of a string one. */
static int read_envelope(const cJSON *root, const char *raw_json, size_t raw_len,
                         struct ab_event *ev, char *errstr, size_t errlen)
{
    if (!cJSON_IsObject(root)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "body is not a JSON object");
    }
    int rc = check_repeats(root, raw_json == NULL, errstr, errlen);
    if (rc == AB_EVENT_OK) {
        rc = take_id(root, raw_json, raw_len, &ev->id, errstr, errlen);
    }
    if (rc == AB_EVENT_OK) {
        rc = take_action(root, &ev->action, errstr, errlen);
    }
    if (rc != AB_EVENT_OK) {
        return rc;
    }
    ev->event = code_value(root, "event");
    ev->institution = code_value(root, "institution");
    set_time(ev, string_value(root, "time"));
    ev->type = type_of(ev->action, ev->event);
    ev->source = source_uri(ev->institution);
    return AB_EVENT_OK;
}

int ab_event_from_body(enum ab_body_format fmt, const char *body, size_t len,
                       struct ab_event **out, char *errstr, size_t errlen)
{
    struct ab_event *ev = ab_calloc(1, sizeof(*ev));
    char *data = NULL;
    size_t data_len = 0;
    int rc = AB_EVENT_OK;
    cJSON *root = fmt == AB_FORMAT_XML ? ab_normalise_xml(body, len, errstr, errlen)
                                       : ab_normalise_json(body, len, errstr, errlen);
    *out = NULL;
    if (root == NULL) {
        rc = AB_EVENT_MALFORMED;
        goto done;
    }
    if (fmt == AB_FORMAT_JSON) {
        size_t bom = len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
        data = ab_strndup(body + bom, len - bom);
        data_len = minify_json(data, len - bom);
    } else {
        char *printed = print_or_abort(root);
        data = ab_strdup(printed);
        data_len = strlen(data);
        cJSON_free(printed);
    }
    rc = read_envelope(root, fmt == AB_FORMAT_JSON ? data : NULL, data_len, ev, errstr, errlen);
    if (rc != AB_EVENT_OK) {
        goto done;
    }
    build_line(ev, data, data_len);
    *out = ev;
    ev = NULL;
done:
    free(data);
    cJSON_Delete(root);
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
    free(ev->json);
    free(ev);
}
