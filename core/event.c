/* From a request body to a CloudEvent (see event.h). Pure functions, any thread.
 *
 * A JSON body goes into "data" as sent, only with whitespace outside strings removed, so
 * that numbers keep every digit and keys their order (cJSON would print 1e400 or a
 * 23-digit id differently). The lexical strictness of ab_normalise_json() (valid UTF-8,
 * no raw control characters, RFC 8259 numbers) is what makes this splice valid JSON on one
 * line. cJSON_Minify() is not used: in cJSON 1.7.15 it takes the quote after an escaped
 * backslash ("x\\") for an escaped quote and then strips spaces inside later strings.
 * An XML body has no JSON form of its own, so its "data" is the converted tree printed by
 * cJSON. */
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

static void lower_ascii(char *s)
{
    for (; *s; s++) {
        if (*s >= 'A' && *s <= 'Z') {
            *s = (char)(*s - 'A' + 'a');
        }
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
 * for XML) for the exact digits of a numeric id. */
static int read_envelope(const cJSON *root, const char *raw_json, size_t raw_len,
                         struct ab_event *ev, char *errstr, size_t errlen)
{
    if (!cJSON_IsObject(root)) {
        return fail(AB_EVENT_NOT_WEBHOOK, errstr, errlen, "body is not a JSON object");
    }
    int rc = take_id(root, raw_json, raw_len, &ev->id, errstr, errlen);
    if (rc == AB_EVENT_OK) {
        rc = take_action(root, &ev->action, errstr, errlen);
    }
    if (rc != AB_EVENT_OK) {
        return rc;
    }
    ev->event = code_value(root, "event");
    ev->institution = code_value(root, "institution");
    ev->time = string_value(root, "time");
    char *action = ab_strdup(ev->action), *event = ab_strdup(ev->event);
    lower_ascii(action);
    if (event != NULL) {
        lower_ascii(event);
        ev->type = ab_asprintf(TYPE_PREFIX "%s.%s", action, event);
    } else {
        ev->type = ab_asprintf(TYPE_PREFIX "%s", action);
    }
    ev->source = ab_asprintf("urn:alma:%s", ev->institution ? ev->institution : "unknown");
    free(action);
    free(event);
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
    free(ev->type);
    free(ev->source);
    free(ev->json);
    free(ev);
}
