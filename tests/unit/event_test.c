/* Tests for core/event.c: every sample payload and its XML twin become the same CloudEvent
 * envelope; refusals fall into the right class; the JSON body is spliced into "data" with
 * its digits, key order and bytes kept. Run from the repo root; ALMABRIDGE_SAMPLES
 * overrides the samples directory (tests/fixtures/alma). */
#include "event.h"
#include "normalise.h"

#include "fixtures.h"
#include "test.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XML_DIR "tests/fixtures/xml"
#define BAD_DIR "tests/fixtures/bad"
#define PREFIX "com.exlibrisgroup.alma."

static char err[256];

static const char *samples_dir(void)
{
    const char *d = getenv("ALMABRIDGE_SAMPLES");
    return d != NULL && *d ? d : "tests/fixtures/alma";
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the files in dir ending in suffix; NULL-terminated, caller frees. */
static char **list_dir(const char *dir, const char *suffix, size_t *count)
{
    DIR *d = opendir(dir);
    size_t n = 0, sl = strlen(suffix);
    char **names = calloc(256, sizeof(*names));
    struct dirent *e;
    while (d != NULL && n < 255 && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > sl && strcmp(e->d_name + l - sl, suffix) == 0) {
            names[n++] = strdup(e->d_name);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    qsort(names, n, sizeof(*names), by_name);
    *count = n;
    return names;
}

static void free_list(char **names)
{
    for (size_t i = 0; names[i] != NULL; i++) {
        free(names[i]);
    }
    free(names);
}

static int make(enum ab_body_format fmt, const char *body, size_t len, struct ab_event **ev)
{
    err[0] = '\0';
    *ev = (struct ab_event *)1; /* must be reset to NULL on failure */
    int rc = ab_event_from_body(fmt, body, len, ev, err, sizeof(err));
    if (rc != AB_EVENT_OK) {
        CHECK(*ev == NULL);
        CHECK(err[0] != '\0');
    } else {
        CHECK(*ev != NULL);
    }
    return rc;
}

static struct ab_event *make_ok(enum ab_body_format fmt, const char *body)
{
    struct ab_event *ev = NULL;
    int rc = make(fmt, body, strlen(body), &ev);
    if (rc != AB_EVENT_OK) {
        fprintf(stderr, "  unexpected refusal: %s\n", err);
    }
    CHECK(rc == AB_EVENT_OK);
    return rc == AB_EVENT_OK ? ev : NULL;
}

static struct ab_event *file_event(enum ab_body_format fmt, const char *dir, const char *name)
{
    char path[1024];
    size_t len = 0;
    struct ab_event *ev = NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    char *body = read_file(path, &len);
    if (body == NULL) {
        fprintf(stderr, "  cannot read %s\n", path);
        CHECK(body != NULL);
        return NULL;
    }
    if (make(fmt, body, len, &ev) != AB_EVENT_OK) {
        fprintf(stderr, "  %s refused: %s\n", path, err);
        CHECK(ev != NULL);
    }
    free(body);
    return ev;
}

/* The body with whitespace outside strings removed: what "data" must be byte for byte. */
static char *strip_ws(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t w = 0;
    int str = 0, esc = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (str) {
            str = esc || c != '"';
            esc = !esc && c == '\\';
        } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            continue;
        } else {
            str = c == '"';
        }
        out[w++] = c;
    }
    out[w] = '\0';
    return out;
}

/* The raw text of "data" in the event line. */
static const char *raw_data(const struct ab_event *ev)
{
    const char *d = strstr(ev->json, ",\"data\":");
    return d != NULL ? d + 8 : "";
}

static int raw_data_is(const struct ab_event *ev, const char *want)
{
    const char *d = raw_data(ev);
    size_t n = strlen(d);
    return n > 0 && n - 1 == strlen(want) && strncmp(d, want, n - 1) == 0 && d[n - 1] == '}';
}

static const char *str_member(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsObject(v)) {
        v = cJSON_GetObjectItemCaseSensitive(v, "value");
    }
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The event line: one line, valid JSON, members in the documented order. */
static cJSON *check_line(const struct ab_event *ev)
{
    CHECK(strlen(ev->json) == ev->json_len);
    CHECK(strchr(ev->json, '\n') == NULL && strchr(ev->json, '\r') == NULL);
    cJSON *line = cJSON_Parse(ev->json);
    CHECK(cJSON_IsObject(line));
    if (line == NULL) {
        return NULL;
    }
    const char *want[16];
    size_t n = 0;
    want[n++] = "specversion", want[n++] = "id", want[n++] = "source", want[n++] = "type";
    want[n++] = "subject";
    if (ev->time != NULL) {
        want[n++] = "time";
    }
    want[n++] = "datacontenttype";
    if (ev->dataschema != NULL) {
        want[n++] = "dataschema";
    }
    want[n++] = "partitionkey";
    if (ev->traceparent != NULL) {
        want[n++] = "traceparent";
    }
    if (ev->tracestate != NULL) {
        want[n++] = "tracestate";
    }
    want[n++] = "almaaction";
    if (ev->event != NULL) {
        want[n++] = "almaevent";
    }
    if (ev->institution != NULL) {
        want[n++] = "almainstitution";
    }
    if (ev->almatime != NULL) {
        want[n++] = "almatime";
    }
    want[n++] = "data";
    size_t i = 0;
    for (const cJSON *m = line->child; m != NULL; m = m->next, i++) {
        CHECK(i < n);
        if (i < n) {
            CHECK_STR(m->string, want[i]);
        }
    }
    CHECK(i == n);
    CHECK_STR(str_member(line, "specversion"), "1.0");
    CHECK_STR(str_member(line, "id"), ev->id);
    CHECK_STR(str_member(line, "source"), ev->source);
    CHECK_STR(str_member(line, "type"), ev->type);
    CHECK_STR(str_member(line, "time"), ev->time);
    CHECK_STR(str_member(line, "datacontenttype"), "application/json");
    CHECK_STR(str_member(line, "almaaction"), ev->action);
    CHECK_STR(str_member(line, "almaevent"), ev->event);
    CHECK_STR(str_member(line, "almainstitution"), ev->institution);
    CHECK_STR(str_member(line, "almatime"), ev->almatime);
    return line;
}

static void lower(char *s)
{
    for (; *s; s++) {
        if (*s >= 'A' && *s <= 'Z') {
            *s += 'a' - 'A';
        }
    }
}

static const struct {
    const char *file, *type;
} known_types[] = {
    {"bib_created.json", PREFIX "bib.bib_created"},
    {"item_updated.json", PREFIX "item.item_updated"},
    {"job_end.json", PREFIX "job_end"},
    {"job_end_publishing_failed.json", PREFIX "job_end"},
    {"loan_created.json", PREFIX "loan.loan_created"},
    {"notification_FulCancelRequestLetter.json", PREFIX "notification"},
    {"request_placed_on_shelf.json", PREFIX "request.request_placed_on_shelf"},
    {"user_update.json", PREFIX "user"},
};

/* The envelope expected from a sample, read from it independently of event.c. */
static void check_sample(const char *name, const char *body, size_t len,
                         const struct ab_event *ev)
{
    cJSON *doc = cJSON_ParseWithLength(body, len);
    CHECK(doc != NULL);
    const char *inst = str_member(doc, "institution"), *event = str_member(doc, "event");
    char type[256], source[256];
    snprintf(type, sizeof(type), PREFIX "%s%s%s", str_member(doc, "action"),
             event != NULL ? "." : "", event != NULL ? event : "");
    lower(type);
    for (size_t i = 0; i < sizeof(known_types) / sizeof(known_types[0]); i++) {
        if (strcmp(known_types[i].file, name) == 0) {
            CHECK_STR(type, known_types[i].type);
        }
    }
    snprintf(source, sizeof(source), "urn:alma:%s", inst != NULL ? inst : "unknown");
    CHECK_STR(ev->id, str_member(doc, "id"));
    CHECK_STR(ev->action, str_member(doc, "action"));
    CHECK_STR(ev->event, event);
    CHECK_STR(ev->institution, inst);
    CHECK_STR(ev->time, str_member(doc, "time"));
    CHECK_STR(ev->type, type);
    CHECK_STR(ev->source, source);

    cJSON *line = check_line(ev);
    CHECK(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(line, "data"), doc, 1));
    char *min = strip_ws(body, len);
    CHECK(raw_data_is(ev, min));
    free(min);
    cJSON_Delete(line);
    cJSON_Delete(doc);
}

static void test_json_samples(void)
{
    size_t n = 0;
    char **names = list_dir(samples_dir(), ".json", &n);
    CHECK(n >= 8);
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/%s", samples_dir(), names[i]);
        char *body = read_file(path, &len);
        struct ab_event *ev = file_event(AB_FORMAT_JSON, samples_dir(), names[i]);
        if (body != NULL && ev != NULL) {
            check_sample(names[i], body, len, ev);
        }
        ab_event_free(ev);
        free(body);
    }
    free_list(names);
}

/* Whether the XML-converted tree x says what the JSON tree j says, given what XML cannot
 * express: numbers and booleans are text, "" and [] and null are an empty or missing
 * element, a one-element array is a single element, {"value": v} alone is v. */
static int empty_json(const cJSON *j)
{
    return j == NULL || cJSON_IsNull(j) || (cJSON_IsString(j) && j->valuestring[0] == '\0') ||
           (cJSON_IsArray(j) && j->child == NULL);
}

static int xml_says(const cJSON *j, const cJSON *x, const char *path);

static int xml_says_object(const cJSON *j, const cJSON *x, const char *path)
{
    int all_scalar = 1, nonempty = 0;
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(j, "value");
    for (const cJSON *m = j->child; m != NULL; m = m->next) {
        all_scalar &= !cJSON_IsObject(m) && !cJSON_IsArray(m);
        nonempty += !cJSON_IsNull(m) && m != value;
    }
    if (all_scalar && cJSON_IsString(value) && nonempty == 0) {
        /* {"value": v} or {"value": v, "desc": null}: v, or null when v is "" */
        return value->valuestring[0] ? xml_says(value, x, path) : x == NULL || cJSON_IsNull(x);
    }
    if (!cJSON_IsObject(x)) {
        fprintf(stderr, "  %s: XML gives no object\n", path);
        return 0;
    }
    for (const cJSON *m = j->child; m != NULL; m = m->next) {
        char sub[512];
        snprintf(sub, sizeof(sub), "%s.%s", path, m->string);
        if (!xml_says(m, cJSON_GetObjectItemCaseSensitive(x, m->string), sub)) {
            return 0;
        }
    }
    for (const cJSON *m = x->child; m != NULL; m = m->next) {
        if (!cJSON_HasObjectItem(j, m->string)) {
            fprintf(stderr, "  %s: XML has extra member %s\n", path, m->string);
            return 0;
        }
    }
    return 1;
}

static int xml_says(const cJSON *j, const cJSON *x, const char *path)
{
    if (empty_json(j)) {
        if (x == NULL || cJSON_IsNull(x) || (cJSON_IsString(x) && x->valuestring[0] == '\0')) {
            return 1;
        }
    } else if (cJSON_IsArray(j)) {
        int n = cJSON_GetArraySize(j);
        if (n == 1 && !cJSON_IsArray(x)) {
            return xml_says(j->child, x, path);
        }
        if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == n) {
            for (int i = 0; i < n; i++) {
                if (!xml_says(cJSON_GetArrayItem(j, i), cJSON_GetArrayItem(x, i), path)) {
                    return 0;
                }
            }
            return 1;
        }
    } else if (cJSON_IsObject(j)) {
        return xml_says_object(j, x, path);
    } else if (cJSON_IsString(x)) {
        if (cJSON_IsString(j)) {
            if (strcmp(j->valuestring, x->valuestring) == 0) {
                return 1;
            }
        } else if (cJSON_IsBool(j)) {
            if (strcmp(x->valuestring, cJSON_IsTrue(j) ? "true" : "false") == 0) {
                return 1;
            }
        } else if (cJSON_IsNumber(j) && strtod(x->valuestring, NULL) == j->valuedouble) {
            return 1;
        }
    }
    fprintf(stderr, "  %s: XML form differs\n", path);
    return 0;
}

/* Code fields {"value": "...", "desc": "..."} keep that shape and content in XML. */
static int count_codes(const cJSON *j, const cJSON *x, int *bad)
{
    int n = 0;
    if (cJSON_IsArray(j)) {
        int single = cJSON_GetArraySize(j) == 1 && !cJSON_IsArray(x);
        for (int i = 0; i < cJSON_GetArraySize(j); i++) {
            n += count_codes(cJSON_GetArrayItem(j, i), single ? x : cJSON_GetArrayItem(x, i),
                             bad);
        }
        return n;
    }
    if (!cJSON_IsObject(j)) {
        return 0;
    }
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "value"));
    const char *d = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "desc"));
    if (v != NULL && d != NULL && cJSON_GetArraySize(j) == 2) {
        const char *xv = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(x, "value"));
        const char *xd = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(x, "desc"));
        if (!cJSON_IsObject(x) || cJSON_GetArraySize(x) != 2 || xv == NULL || xd == NULL ||
            strcmp(v, xv) != 0 || strcmp(d, xd) != 0) {
            (*bad)++;
        }
        return 1;
    }
    for (const cJSON *m = j->child; m != NULL; m = m->next) {
        n += count_codes(m, cJSON_GetObjectItemCaseSensitive(x, m->string), bad);
    }
    return n;
}

static void compare_twins(const char *name, const struct ab_event *je,
                          const struct ab_event *xe, const cJSON *jdata)
{
    CHECK_STR(xe->id, je->id);
    CHECK_STR(xe->action, je->action);
    CHECK_STR(xe->event, je->event);
    CHECK_STR(xe->institution, je->institution);
    CHECK_STR(xe->time, je->time);
    CHECK_STR(xe->type, je->type);
    CHECK_STR(xe->source, je->source);
    cJSON *line = check_line(xe);
    const cJSON *xdata = cJSON_GetObjectItemCaseSensitive(line, "data");
    CHECK(cJSON_IsObject(xdata));
    /* the same top-level keys */
    CHECK(cJSON_GetArraySize(xdata) == cJSON_GetArraySize(jdata));
    for (const cJSON *m = jdata->child; m != NULL; m = m->next) {
        CHECK(cJSON_HasObjectItem(xdata, m->string));
    }
    int bad = 0, codes = count_codes(jdata, xdata, &bad);
    CHECK(codes >= 2); /* institution at least, and event or a payload code */
    CHECK(bad == 0);
    if (!xml_says(jdata, xdata, name)) {
        CHECK(!"XML twin says what the JSON sample says");
    }
    cJSON_Delete(line);
}

static void test_xml_twins(void)
{
    size_t n = 0, twins = 0;
    char **names = list_dir(samples_dir(), ".json", &n);
    CHECK(n >= 8);
    for (size_t i = 0; i < n; i++) {
        char xml_name[512], path[1024];
        size_t len = 0;
        snprintf(xml_name, sizeof(xml_name), "%.*s.xml", (int)(strlen(names[i]) - 5), names[i]);
        snprintf(path, sizeof(path), "%s/%s", samples_dir(), names[i]);
        char *body = read_file(path, &len);
        cJSON *jdata = body != NULL ? cJSON_ParseWithLength(body, len) : NULL;
        struct ab_event *je = file_event(AB_FORMAT_JSON, samples_dir(), names[i]);
        struct ab_event *xe = file_event(AB_FORMAT_XML, XML_DIR, xml_name);
        if (je != NULL && xe != NULL && jdata != NULL) {
            compare_twins(xml_name, je, xe, jdata);
            twins++;
        }
        ab_event_free(je);
        ab_event_free(xe);
        cJSON_Delete(jdata);
        free(body);
    }
    CHECK(twins == n);
    free_list(names);
}

static void test_xml_namespaced_root(void)
{
    struct ab_event *plain = file_event(AB_FORMAT_XML, XML_DIR, "loan_created.xml");
    struct ab_event *ns = file_event(AB_FORMAT_XML, XML_DIR, "edge_namespaced_root.xml");
    struct ab_event *pre = file_event(AB_FORMAT_XML, XML_DIR, "edge_prefixed_root.xml");
    if (plain != NULL && ns != NULL && pre != NULL) {
        CHECK_STR(ns->json, plain->json);
        CHECK_STR(pre->json, plain->json);
        CHECK_STR(ns->type, PREFIX "loan.loan_created");
    }
    ab_event_free(plain);
    ab_event_free(ns);
    ab_event_free(pre);
}

static void test_xml_cdata(void)
{
    size_t len = 0;
    char path[1024];
    snprintf(path, sizeof(path), "%s/bib_created.json", samples_dir());
    char *body = read_file(path, &len);
    cJSON *doc = body != NULL ? cJSON_Parse(body) : NULL;
    const char *marc = cJSON_GetStringValue(
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "bib"), "anies"), 0));
    CHECK(marc != NULL && strncmp(marc, "<?xml", 5) == 0);
    static const char *files[] = {"edge_cdata.xml", "bib_created.xml"};
    for (size_t i = 0; i < 2 && marc != NULL; i++) {
        struct ab_event *ev = file_event(AB_FORMAT_XML, XML_DIR, files[i]);
        cJSON *line = ev != NULL ? cJSON_Parse(ev->json) : NULL;
        cJSON *bib = cJSON_GetObjectItem(cJSON_GetObjectItem(line, "data"), "bib");
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(bib, "anies")), marc);
        cJSON_Delete(line);
        ab_event_free(ev);
    }
    cJSON_Delete(doc);
    free(body);
}

static void test_xml_unknown_action(void)
{
    struct ab_event *ev = file_event(AB_FORMAT_XML, XML_DIR, "edge_unknown_action.xml");
    if (ev == NULL) {
        return;
    }
    CHECK_STR(ev->type, PREFIX "future_thing.something_new");
    CHECK_STR(ev->source, "urn:alma:41SLSP_UZB");
    CHECK_STR(ev->action, "FUTURE_THING");
    CHECK_STR(ev->event, "SOMETHING_NEW");
    CHECK(strstr(ev->json,
                 "\"desc\":\"Universit\xc3\xa4t Z\xc3\xbcrich \xe2\x80\x93 Bibliothek\"") != NULL);
    CHECK(strstr(ev->json, "\"future_thing\":{\"kind\":\"sample\",\"title\":\"  M\xc3\xbcller, "
                           "J\xc3\xbcrgen: \xe6\x9d\xb1\xe4\xba\xac \xe2\x89\xa0 Ky\xc5\x8dto  \","
                           "\"note\":null,\"tag\":[\"a\",\"b\",\"c\"],\"count\":\"007\"}") != NULL);
    cJSON_Delete(check_line(ev));
    ab_event_free(ev);
}

/* XML never makes numbers: the documented difference from the JSON form. */
static void test_xml_numbers_are_text(void)
{
    struct ab_event *ev = file_event(AB_FORMAT_XML, XML_DIR, "job_end.xml");
    CHECK(ev != NULL && strstr(ev->json, "\"progress\":\"100\"") != NULL);
    ab_event_free(ev);
}

static void test_malformed(void)
{
    static const char *json_bad[] = {"", "{", "{\"id\":\"1\",\"action\":\"LOAN\"",
                                     "{\"id\":\"1\",\"action\":\"LOAN\"}x", "nope",
                                     "{\"id\":\"1\",\"action\":\"LOAN\",\"n\":01}"};
    static const char *xml_bad[] = {"", "<webhook>", "<webhook><id>1</id></wh>", "{}",
                                    "<webhook/><webhook/>"};
    struct ab_event *ev;
    for (size_t i = 0; i < sizeof(json_bad) / sizeof(json_bad[0]); i++) {
        CHECK(make(AB_FORMAT_JSON, json_bad[i], strlen(json_bad[i]), &ev) ==
              AB_EVENT_MALFORMED);
    }
    for (size_t i = 0; i < sizeof(xml_bad) / sizeof(xml_bad[0]); i++) {
        CHECK(make(AB_FORMAT_XML, xml_bad[i], strlen(xml_bad[i]), &ev) == AB_EVENT_MALFORMED);
    }
    /* a sample sent with the wrong format is malformed too */
    size_t len = 0;
    struct ab_event *x = file_event(AB_FORMAT_XML, XML_DIR, "loan_created.xml");
    char path[1024];
    snprintf(path, sizeof(path), "%s/loan_created.json", samples_dir());
    char *body = read_file(path, &len);
    CHECK(body != NULL && make(AB_FORMAT_XML, body, len, &ev) == AB_EVENT_MALFORMED);
    ab_event_free(x);
    free(body);
}

static void check_not_webhook(enum ab_body_format fmt, const char *body, const char *msg)
{
    struct ab_event *ev;
    int rc = make(fmt, body, strlen(body), &ev);
    CHECK(rc == AB_EVENT_NOT_WEBHOOK);
    if (rc != AB_EVENT_NOT_WEBHOOK) {
        fprintf(stderr, "  body %s: rc %d (%s)\n", body, rc, err);
    }
    if (msg != NULL) {
        CHECK_STR(err, msg);
    }
    CHECK(strstr(err, "Jane") == NULL);
}

static void test_not_webhook(void)
{
    const enum ab_body_format J = AB_FORMAT_JSON, X = AB_FORMAT_XML;
    check_not_webhook(J, "[]", "body is not a JSON object");
    check_not_webhook(J, "[{\"id\":\"1\",\"action\":\"LOAN\"}]", "body is not a JSON object");
    check_not_webhook(J, "\"Jane\"", "body is not a JSON object");
    check_not_webhook(J, "42", "body is not a JSON object");
    check_not_webhook(J, "null", "body is not a JSON object");
    check_not_webhook(J, "{}", "webhook has no \"id\"");
    check_not_webhook(J, "{\"action\":\"LOAN\"}", "webhook has no \"id\"");
    check_not_webhook(J, "{\"id\":null,\"action\":\"LOAN\"}", "webhook has no \"id\"");
    check_not_webhook(J, "{\"ID\":\"1\",\"action\":\"LOAN\"}", "webhook has no \"id\"");
    check_not_webhook(J, "{\"id\":\"\",\"action\":\"LOAN\"}", "webhook \"id\" is empty");
    check_not_webhook(J, "{\"id\":{\"v\":\"Jane\"},\"action\":\"LOAN\"}", NULL);
    check_not_webhook(J, "{\"id\":true,\"action\":\"LOAN\"}", NULL);
    check_not_webhook(J, "{\"id\":[\"1\"],\"action\":\"LOAN\"}", NULL);
    check_not_webhook(J, "{\"id\":1.5,\"action\":\"LOAN\"}", "webhook \"id\" is not an integer");
    check_not_webhook(J, "{\"id\":1e300,\"action\":\"LOAN\"}", NULL);
    check_not_webhook(J, "{\"id\":\"1\"}", "webhook has no \"action\"");
    check_not_webhook(J, "{\"id\":\"1\",\"action\":\"\"}", "webhook \"action\" is empty");
    check_not_webhook(J, "{\"id\":\"1\",\"action\":7}", "webhook \"action\" is not a string");
    check_not_webhook(J, "{\"id\":\"1\",\"action\":{\"value\":\"Jane\"}}", NULL);
    check_not_webhook(X, "<webhook/>", "webhook has no \"id\"");
    check_not_webhook(X, "<webhook><action>LOAN</action></webhook>", "webhook has no \"id\"");
    check_not_webhook(X, "<webhook><id></id><action>LOAN</action></webhook>",
                      "webhook has no \"id\"");
    check_not_webhook(X, "<webhook><id desc=\"Jane\">1</id><action>LOAN</action></webhook>",
                      NULL);
    check_not_webhook(X, "<webhook><id>1</id></webhook>", "webhook has no \"action\"");
    check_not_webhook(X, "<webhook><id>1</id><action/></webhook>", "webhook has no \"action\"");
}

static void test_deep_nesting(void)
{
    struct ab_event *ev;
    char *j = nested("{\"id\":\"1\",\"action\":\"LOAN\",\"x\":[", "0", "]}", 1000);
    char *x = nested("<webhook><id>1</id><action>LOAN</action><x>", "0", "</x></webhook>", 1000);
    CHECK(make(AB_FORMAT_JSON, j, strlen(j), &ev) == AB_EVENT_MALFORMED);
    CHECK_STR(err, "JSON nested deeper than 64 levels");
    CHECK(make(AB_FORMAT_XML, x, strlen(x), &ev) == AB_EVENT_MALFORMED);
    CHECK_STR(err, "XML nested deeper than 64 levels");
    free(j);
    free(x);
    /* 64 levels in all are fine: the webhook object and 63 below it */
    j = nested("[", "0", "]", 62);
    char *ok = malloc(strlen(j) + 64);
    sprintf(ok, "{\"id\":\"1\",\"action\":\"LOAN\",\"x\":%s}", j);
    ev = make_ok(AB_FORMAT_JSON, ok);
    /* and its event line, one level deeper (the envelope around data), reads back: the
     * spool's forwarder, replay and wait must not take it for damage */
    struct ab_event *back = NULL;
    CHECK(ev && ab_event_from_line(ev->json, ev->json_len, &back, err, sizeof(err)) ==
                    AB_EVENT_OK);
    CHECK(back && strcmp(back->id, "1") == 0);
    ab_event_free(back);
    ab_event_free(ev);
    free(ok);
    free(j);
}

static void test_xxe_and_billion_laughs(void)
{
    static const char *files[] = {"xxe_entity.xml", "xxe_external_subset.xml",
                                  "xxe_parameter_entity.xml", "billion_laughs.xml"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[256];
        size_t len = 0;
        struct ab_event *ev;
        snprintf(path, sizeof(path), "%s/%s", BAD_DIR, files[i]);
        char *body = read_file(path, &len);
        CHECK(body != NULL);
        if (body != NULL) {
            CHECK(make(AB_FORMAT_XML, body, len, &ev) == AB_EVENT_MALFORMED);
            CHECK_STR(err, "XML with a DOCTYPE is not accepted");
            CHECK(strstr(err, "root:") == NULL);
        }
        free(body);
    }
}

static void test_utf8_preserved(void)
{
    const char *text = "M\xc3\xbcller \xe2\x80\x93 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x93\x9a";
    char body[512];
    snprintf(body, sizeof(body),
             "{\"id\":\"1\",\"action\":\"LOAN\",\"institution\":{\"value\":\"Z\xc3\xbcRICH\","
             "\"desc\":\"x\"},\"title\":\"%s\",\"esc\":\"\\u00fc\"}",
             text);
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, body);
    if (ev != NULL) {
        CHECK(raw_data_is(ev, body));
        CHECK_STR(ev->source, "urn:alma:Z%C3%BCRICH");
        CHECK_STR(ev->institution, "Z\xc3\xbcRICH");
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    snprintf(body, sizeof(body),
             "<webhook><id>1</id><action>LOAN</action><title>%s</title></webhook>", text);
    ev = make_ok(AB_FORMAT_XML, body);
    if (ev != NULL) {
        CHECK(strstr(ev->json, text) != NULL);
    }
    ab_event_free(ev);
}

static void test_number_precision(void)
{
    const char *body = "{\"id\":12345678901234567890123,\"action\":\"LOAN\","
                       "\"big\":123456789012345678901234567890,\"f\":1.000000000000000000001,"
                       "\"e\":1E+400,\"neg\":-0.0,\"small\":5e-324}";
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, body);
    if (ev != NULL) {
        CHECK_STR(ev->id, "12345678901234567890123");
        CHECK(raw_data_is(ev, body));
        CHECK(strstr(ev->json, "\"id\":\"12345678901234567890123\"") != NULL);
    }
    ab_event_free(ev);
    static const struct {
        const char *body, *id;
    } ids[] = {
        {"{\"id\":42,\"action\":\"A\"}", "42"},
        {"{\"id\" : -7 ,\"action\":\"A\"}", "-7"},
        {"{\"action\":\"A\",\"x\":{\"id\":9},\"id\":1e3}", "1000"},
        {"{\"id\":4.0,\"action\":\"A\"}", "4"},
        {"{\"id\":9007199254740993,\"action\":\"A\"}", "9007199254740993"},
        {"{\"\\u0069d\":5,\"action\":\"A\"}", "5"},
    };
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        ev = make_ok(AB_FORMAT_JSON, ids[i].body);
        CHECK(ev != NULL && strcmp(ev->id, ids[i].id) == 0);
        if (ev != NULL) {
            CHECK_STR(ev->id, ids[i].id);
        }
        ab_event_free(ev);
    }
}

static void test_job_end_without_event(void)
{
    const char *bodies[] = {
        "{\"id\":\"5\",\"action\":\"JOB_END\",\"institution\":{\"value\":\"01X\",\"desc\":\"X\"},"
        "\"time\":\"2024-06-11T18:27:10.961Z\",\"job_instance\":{\"progress\":101.3}}",
        "{\"id\":\"5\",\"action\":\"JOB_END\",\"event\":null,\"institution\":{\"value\":\"01X\"},"
        "\"time\":\"2024-06-11T18:27:10.961Z\"}",
        "<webhook><id>5</id><action>JOB_END</action><institution desc=\"X\">01X</institution>"
        "<time>2024-06-11T18:27:10.961Z</time><event/></webhook>",
    };
    for (size_t i = 0; i < 3; i++) {
        struct ab_event *ev = make_ok(i < 2 ? AB_FORMAT_JSON : AB_FORMAT_XML, bodies[i]);
        if (ev != NULL) {
            CHECK_STR(ev->type, PREFIX "job_end");
            CHECK(ev->event == NULL);
            CHECK(strstr(ev->json, "almaevent") == NULL);
            CHECK_STR(ev->source, "urn:alma:01X");
            cJSON_Delete(check_line(ev));
        }
        ab_event_free(ev);
    }
}

static void test_lower_case_action(void)
{
    struct ab_event *ev =
        make_ok(AB_FORMAT_JSON, "{\"id\":\"1\",\"action\":\"loan\",\"event\":{\"value\":"
                                "\"loan_created\",\"desc\":\"d\"}}");
    if (ev != NULL) {
        CHECK_STR(ev->type, PREFIX "loan.loan_created");
        CHECK_STR(ev->action, "loan");
        CHECK_STR(ev->event, "loan_created");
    }
    ab_event_free(ev);
    ev = make_ok(AB_FORMAT_XML, "<webhook><id>1</id><action>Loan</action>"
                                "<event desc=\"d\">Loan_Renewed</event></webhook>");
    if (ev != NULL) {
        CHECK_STR(ev->type, PREFIX "loan.loan_renewed");
        CHECK_STR(ev->action, "Loan");
    }
    ab_event_free(ev);
}

static void test_optional_fields(void)
{
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, "{\"id\":\"1\",\"action\":\"ITEM\"}");
    if (ev != NULL) {
        CHECK_STR(ev->source, "urn:alma:unknown");
        CHECK(ev->institution == NULL && ev->time == NULL && ev->event == NULL);
        CHECK_STR(ev->json, "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"urn:alma:unknown\","
                            "\"type\":\"" PREFIX "item\",\"subject\":\"1\","
                            "\"datacontenttype\":\"application/json\","
                            "\"partitionkey\":\"webhook/1\","
                            "\"almaaction\":\"ITEM\",\"data\":{\"id\":\"1\",\"action\":\"ITEM\"}}");
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    ev = make_ok(AB_FORMAT_JSON, "{\"id\":\"1\",\"action\":\"ITEM\",\"institution\":\"01ABC\","
                                 "\"event\":\"ITEM_DELETED\",\"time\":5}");
    if (ev != NULL) {
        CHECK_STR(ev->source, "urn:alma:01ABC");
        CHECK_STR(ev->institution, "01ABC");
        CHECK_STR(ev->type, PREFIX "item.item_deleted");
        CHECK(ev->time == NULL);
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    ev = make_ok(AB_FORMAT_JSON, "{\"id\":\"1\",\"action\":\"ITEM\","
                                 "\"institution\":{\"desc\":\"x\"},"
                                 "\"event\":{\"value\":\"\"},\"time\":null}");
    if (ev != NULL) {
        CHECK_STR(ev->source, "urn:alma:unknown");
        CHECK(ev->event == NULL && ev->institution == NULL && ev->time == NULL);
    }
    ab_event_free(ev);
}

/* cJSON 1.7.15's cJSON_Minify ends a string early after an escaped backslash and then
 * strips the spaces inside the strings that follow; the splice must not. */
static void test_data_strings_intact(void)
{
    const char *body = "{ \"id\" : \"1\" ,\n \"action\" : \"LOAN\",\r\n\t\"a\" : \"x\\\\\" , "
                       "\"b\" : \"hello world\", \"c\" : \"q \\\" \\\\\\\" //x /* y */\" }";
    const char *want = "{\"id\":\"1\",\"action\":\"LOAN\",\"a\":\"x\\\\\",\"b\":\"hello world\","
                       "\"c\":\"q \\\" \\\\\\\" //x /* y */\"}";
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, body);
    if (ev != NULL) {
        CHECK(raw_data_is(ev, want));
        cJSON *line = check_line(ev), *doc = cJSON_Parse(body);
        CHECK(cJSON_Compare(cJSON_GetObjectItem(line, "data"), doc, 1));
        cJSON_Delete(line);
        cJSON_Delete(doc);
    }
    ab_event_free(ev);
}

static void test_envelope_escaped(void)
{
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, "{\"id\":\"1\\\"2\\\\\",\"action\":\"A\\\\B\\t\","
                                                  "\"time\":\"\\u2028\"}");
    if (ev != NULL) {
        CHECK_STR(ev->id, "1\"2\\");
        CHECK_STR(ev->action, "A\\B\t");
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    ev = make_ok(AB_FORMAT_XML, "<webhook><id>1&amp;2</id><action>A</action>"
                                "<note>line1\nline2\r\n</note></webhook>");
    if (ev != NULL) {
        CHECK_STR(ev->id, "1&2");
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
}

static void test_bom(void)
{
    const char *body = "\xef\xbb\xbf{\"id\":\"1\",\"action\":\"A\"}";
    struct ab_event *ev = make_ok(AB_FORMAT_JSON, body);
    if (ev != NULL) {
        CHECK_STR(ev->id, "1");
        CHECK(raw_data_is(ev, body + 3));
    }
    ab_event_free(ev);
    ab_event_free(NULL);
}

static void check_malformed(enum ab_body_format fmt, const char *body, const char *msg)
{
    struct ab_event *ev;
    int rc = make(fmt, body, strlen(body), &ev);
    if (rc != AB_EVENT_MALFORMED) {
        fprintf(stderr, "  body %s: rc %d (%s)\n", body, rc, err);
    }
    CHECK(rc == AB_EVENT_MALFORMED);
    CHECK_STR(err, msg);
}

/* Issue 8 item 12: an envelope field given twice would be read differently downstream. */
static void test_repeated_envelope_fields(void)
{
    const enum ab_body_format J = AB_FORMAT_JSON, X = AB_FORMAT_XML;
    const char *rep_id = "webhook envelope repeats \"id\"";
    check_malformed(J, "{\"id\":\"1\",\"id\":\"2\",\"action\":\"A\"}", rep_id);
    check_malformed(J, "\xef\xbb\xbf{\"id\":\"1\",\"action\":\"A\",\"id\":\"1\"}", rep_id);
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"\\u0069d\":\"2\"}", rep_id);
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"id\":null}", rep_id);
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"action\":\"B\"}",
                    "webhook envelope repeats \"action\"");
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"event\":\"E\",\"event\":{\"value\":\"F\"}}",
                    "webhook envelope repeats \"event\"");
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"institution\":\"I\",\"institution\":\"J\"}",
                    "webhook envelope repeats \"institution\"");
    check_malformed(J, "{\"id\":\"1\",\"action\":\"A\",\"time\":\"x\",\"time\":\"y\"}",
                    "webhook envelope repeats \"time\"");
    check_malformed(X, "<webhook><id>1</id><id>2</id><action>LOAN</action></webhook>", rep_id);
    check_malformed(X, "<webhook id=\"1\"><id>1</id><action>LOAN</action></webhook>", rep_id);
    check_malformed(X, "<webhook><id>1</id><action>A</action><event>E</event><event/></webhook>",
                    "webhook envelope repeats \"event\"");
    check_malformed(X, "<webhook><id>1</id><action>A</action><institution>I</institution>"
                       "<institution>I</institution></webhook>",
                    "webhook envelope repeats \"institution\"");
    /* other names may repeat, and envelope names may repeat below the top level */
    struct ab_event *ev = make_ok(J, "{\"id\":\"1\",\"action\":\"A\",\"x\":1,\"x\":2,"
                                     "\"user\":{\"id\":\"5\",\"id\":\"6\"},\"Id\":\"7\"}");
    CHECK(ev != NULL && strcmp(ev->id, "1") == 0);
    ab_event_free(ev);
    ev = make_ok(X, "<webhook><id>1</id><action>A</action><x>1</x><x>2</x>"
                    "<user><id>5</id><id>6</id></user></webhook>");
    CHECK(ev != NULL && strcmp(ev->id, "1") == 0);
    ab_event_free(ev);
}

/* Issue 8 item 11: an id with a control character could never be a message key safely. */
static void test_id_control_characters(void)
{
    static const char *ids[] = {
        "a\\u0000b", "\\u0000", "a\\nb", "a\\tb", "\\r", "\\b", "\\f", "\\u001F", "\\u007f",
        "\x7f", "\\u0085", "\xc2\x85", "\\u009f",
    };
    const char *msg = "webhook \"id\" holds a control character";
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"id\":\"%s\",\"action\":\"LOAN\"}", ids[i]);
        check_malformed(AB_FORMAT_JSON, body, msg);
    }
    check_malformed(AB_FORMAT_XML, "<webhook><id>1&#10;2</id><action>A</action></webhook>", msg);
    check_malformed(AB_FORMAT_XML, "<webhook><id>\t1</id><action>A</action></webhook>", msg);
    check_malformed(AB_FORMAT_XML, "<webhook><id>1&#x7f;</id><action>A</action></webhook>", msg);
    /* printable escapes and non-ASCII are fine */
    static const char *good[] = {"{\"id\":\"\\u00e9\\u2028\\/\\\\\",\"action\":\"A\"}",
                                 "{\"id\":\"\xc2\xa0\xe2\x80\xa8\",\"action\":\"A\"}"};
    for (size_t i = 0; i < 2; i++) {
        struct ab_event *ev = make_ok(AB_FORMAT_JSON, good[i]);
        ab_event_free(ev);
    }
}

static void check_time(const char *in, const char *want)
{
    char out[64] = "";
    int rc = ab_event_rfc3339(in, out, sizeof(out));
    if (want == NULL) {
        if (rc == 0) {
            fprintf(stderr, "  time %s converted to %s\n", in, out);
        }
        CHECK(rc != 0);
    } else {
        if (rc != 0) {
            fprintf(stderr, "  time %s refused\n", in);
        }
        CHECK(rc == 0);
        CHECK_STR(out, want);
    }
}

static void test_time_conversion(void)
{
    check_time("2020-01-26T16:21:16.109Z", "2020-01-26T16:21:16.109Z");
    check_time("2020-01-26T16:20:00+0200", "2020-01-26T16:20:00+02:00");
    check_time("2020-01-26T16:20:00-02:30", "2020-01-26T16:20:00-02:30");
    check_time("2020-01-26T16:20:00+02", "2020-01-26T16:20:00+02:00");
    check_time("2020-01-26t16:20:00z", "2020-01-26T16:20:00Z");
    check_time("2020-01-26 16:20:00", "2020-01-26T16:20:00Z");
    check_time("2020-01-26T16:20", "2020-01-26T16:20:00Z");
    check_time("2020-01-26T16:20+0100", "2020-01-26T16:20:00+01:00");
    check_time("2020-01-26T16:20:00,5Z", "2020-01-26T16:20:00.5Z");
    check_time("2020-01-26 16:20:00 UTC", "2020-01-26T16:20:00Z");
    check_time("2020-01-26 16:20:00 +0200", "2020-01-26T16:20:00+02:00");
    check_time("2020-01-26", "2020-01-26T00:00:00Z");
    check_time("26/01/2020 16:20", "2020-01-26T16:20:00Z");
    check_time("26/01/2020 16:20:05", "2020-01-26T16:20:05Z");
    check_time("6/1/2020 9:05", "2020-01-06T09:05:00Z");
    check_time("26.01.2020 16:20 +0100", "2020-01-26T16:20:00+01:00");
    check_time("29/02/2024", "2024-02-29T00:00:00Z");
    check_time("2020-01-26T16:20:00.123456789012Z", "2020-01-26T16:20:00.123456789012Z");
    static const char *bad[] = {
        "", "yesterday", "2020-13-01", "2020-02-30", "2023-02-29", "01/13/2020 10:00",
        "2020-01-26T24:00:00Z", "2020-01-26T16:60:00Z", "2020-01-26T16:20:60Z",
        "2020-01-26T16:20:00+2400", "2020-01-26T16:20:00+02:", "2020-01-26T16:20:00Zjunk",
        "2020-01-26T16:20:00.Z", "0000-01-01", "2020-1-26", "1579998000", "26/01/20 16:20",
        "2020-01-26T", "2020-01-26T16", "2020/01/26",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check_time(bad[i], NULL);
    }
    char tiny[8];
    CHECK(ab_event_rfc3339("2020-01-26", tiny, sizeof(tiny)) != 0);
}

/* The envelope's time, source and type are valid CloudEvents attributes; data keeps the
 * values as sent. */
static void test_envelope_attributes_valid(void)
{
    struct ab_event *ev = make_ok(AB_FORMAT_JSON,
        "{\"id\":\"1\",\"action\":\"Loan Now!\",\"event\":{\"value\":\"x y\xc3\xbc\"},"
        "\"institution\":{\"value\":\"My Inst %zz<>\"},\"time\":\"26/01/2020 16:20\"}");
    if (ev != NULL) {
        CHECK_STR(ev->time, "2020-01-26T16:20:00Z");
        CHECK(ev->almatime == NULL);
        CHECK_STR(ev->source, "urn:alma:My%20Inst%20%25zz%3C%3E");
        CHECK_STR(ev->type, PREFIX "loan_now_.x_y_");
        CHECK_STR(ev->action, "Loan Now!");
        CHECK_STR(ev->event, "x y\xc3\xbc");
        CHECK_STR(ev->institution, "My Inst %zz<>");
        CHECK(strstr(raw_data(ev), "\"time\":\"26/01/2020 16:20\"") != NULL);
        CHECK(strstr(raw_data(ev), "\"institution\":{\"value\":\"My Inst %zz<>\"}") != NULL);
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    ev = make_ok(AB_FORMAT_XML, "<webhook><id>1</id><action>A-B.c_9</action>"
                                "<time>2020-01-26T16:20:00+0200</time>"
                                "<institution>01/ABC?#</institution></webhook>");
    if (ev != NULL) {
        CHECK_STR(ev->time, "2020-01-26T16:20:00+02:00");
        CHECK_STR(ev->type, PREFIX "a-b.c_9");
        CHECK_STR(ev->source, "urn:alma:01%2FABC%3F%23");
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
    /* a time that cannot be converted is left out and kept as almatime */
    ev = make_ok(AB_FORMAT_JSON, "{\"id\":\"1\",\"action\":\"A\",\"time\":\"sometime \\\"soon\\\"\"}");
    if (ev != NULL) {
        CHECK(ev->time == NULL);
        CHECK_STR(ev->almatime, "sometime \"soon\"");
        CHECK(strstr(ev->json, "\"time\"") > strstr(ev->json, ",\"data\":"));
        CHECK(strstr(ev->json, "\"almatime\":\"sometime \\\"soon\\\"\",\"data\"") != NULL);
        cJSON_Delete(check_line(ev));
    }
    ab_event_free(ev);
}

/* The line codec: what ab_event_from_body() writes, ab_event_from_line() reads back into
 * the same attributes; nested values keep every digit; damage is refused. */
static void test_line_round_trip(void)
{
    const char *body = "{\"id\":\"42\",\"action\":\"JOB_END\",\"institution\":{\"value\":"
                       "\"01A\\\"B\"},\"time\":\"2020-01-26 16:28:05.731+0100\",\"job_instance\""
                       ":{\"id\":12345678901234567,\"status\":{\"value\":\"COMPLETED_SUCCESS\","
                       "\"desc\":\"ok\"}}}";
    struct ab_event *w = NULL, *r = NULL;
    char why[256];
    CHECK(ab_event_from_body(AB_FORMAT_JSON, body, strlen(body), &w, why, sizeof(why)) == 0);
    CHECK(ab_event_from_line(w->json, w->json_len, &r, why, sizeof(why)) == AB_EVENT_OK);
    if (w == NULL || r == NULL) {
        return;
    }
    CHECK_STR(r->id, w->id);
    CHECK_STR(r->action, w->action);
    CHECK_STR(r->event, w->event);
    CHECK_STR(r->institution, "01A\"B");
    CHECK_STR(r->time, w->time);
    CHECK_STR(r->type, w->type);
    CHECK_STR(r->source, w->source);
    CHECK(r->json_len == w->json_len && memcmp(r->json, w->json, w->json_len) == 0);
    char *inst = AB_EVENT_LINE_TEXT(r->json, r->json_len, "data", "job_instance", "id");
    char *st = AB_EVENT_LINE_TEXT(r->json, r->json_len, "data", "job_instance", "status");
    CHECK_STR(inst, "12345678901234567");
    CHECK_STR(st, "COMPLETED_SUCCESS");
    CHECK(AB_EVENT_LINE_TEXT(r->json, r->json_len, "data", "nope") == NULL);
    CHECK(ab_event_time_ms(r->time) == 1580052485731LL); /* 15:28:05.731Z */
    free(inst);
    free(st);
    ab_event_free(w);
    ab_event_free(r);

    static const char *const bad[] = {"", "not json", "{\"id\":\"1\"", "[1,2]",
                                      "{\"id\":7}", "{\"id\":\"\"}", "{\"id\":\"1\"}x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = (struct ab_event *)1;
        CHECK(ab_event_from_line(bad[i], strlen(bad[i]), &r, why, sizeof(why)) != AB_EVENT_OK);
        CHECK(r == NULL);
    }
    CHECK(ab_event_time_ms("1970-01-01T00:00:00Z") == 0);
    CHECK(ab_event_time_ms("2000-02-29T23:59:59.5-01:30") == 951874199500LL);
    CHECK(ab_event_time_ms("2001-02-29T00:00:00Z") == -1);
    CHECK(ab_event_time_ms(NULL) == -1);
}

int main(void)
{
    ab_normalise_init();
    RUN(test_json_samples);
    RUN(test_xml_twins);
    RUN(test_xml_namespaced_root);
    RUN(test_xml_cdata);
    RUN(test_xml_unknown_action);
    RUN(test_xml_numbers_are_text);
    RUN(test_malformed);
    RUN(test_not_webhook);
    RUN(test_deep_nesting);
    RUN(test_xxe_and_billion_laughs);
    RUN(test_utf8_preserved);
    RUN(test_number_precision);
    RUN(test_job_end_without_event);
    RUN(test_lower_case_action);
    RUN(test_optional_fields);
    RUN(test_data_strings_intact);
    RUN(test_envelope_escaped);
    RUN(test_bom);
    RUN(test_repeated_envelope_fields);
    RUN(test_id_control_characters);
    RUN(test_time_conversion);
    RUN(test_envelope_attributes_valid);
    RUN(test_line_round_trip);
    return TEST_SUMMARY();
}
