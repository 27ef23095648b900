/* The CloudEvents attributes added by issue 22: the record's identity (subject,
 * partitionkey) of every fixture in JSON and XML, redaction (default and paths), the trace
 * context, dataschema, and the binary-mode round trip (ab_event_attrs ->
 * ab_event_line_from_attrs, ab_event_from_line). */
#include "event.h"
#include "normalise.h"
#include "redact.h"

#include "fixtures.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static struct ab_event *build(const char *path, const struct ab_event_opts *o)
{
    size_t len;
    char err[256] = "";
    char *body = read_file(path, &len);
    struct ab_event *ev = NULL;
    CHECK(body != NULL);
    if (body != NULL) {
        enum ab_body_format fmt = strstr(path, ".xml") ? AB_FORMAT_XML : AB_FORMAT_JSON;
        CHECK(ab_event_build(fmt, body, len, o, &ev, err, sizeof(err)) == AB_EVENT_OK);
    }
    free(body);
    return ev;
}

/* The identity table of docs/CLOUDEVENTS.md, checked against the fixtures in both forms. */
static void test_record_identity(void)
{
    static const struct {
        const char *name, *subject, *key;
    } want[] = {
        {"bib_created", "99186267758404102", "bib/99186267758404102"},
        {"item_updated", "23428694190004102", "item/23428694190004102"},
        {"job_end", "6959835260004102", "job/6959835260004102"},
        {"job_end_publishing_failed", "38205463100006421", "job/38205463100006421"},
        {"loan_created", "6959825320004102", "loan/6959825320004102"},
        {"notification_FulCancelRequestLetter", "7546094952601200513",
         "webhook/7546094952601200513"},
        {"request_placed_on_shelf", "6944906510004102", "request/6944906510004102"},
        {"user_update", "TEST0000001", "user/TEST0000001"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        for (int xml = 0; xml < 2; xml++) {
            char path[256];
            snprintf(path, sizeof(path), "tests/fixtures/%s/%s.%s", xml ? "xml" : "alma",
                     want[i].name, xml ? "xml" : "json");
            struct ab_event *ev = build(path, NULL);
            if (ev != NULL) {
                CHECK_STR(ev->subject, want[i].subject);
                CHECK_STR(ev->partitionkey, want[i].key);
            }
            ab_event_free(ev);
        }
    }
}

static struct ab_redact *compile(const char *const *paths, size_t n)
{
    char err[256] = "";
    struct ab_redact *r = ab_redact_compile(paths, n, err, sizeof(err));
    CHECK(r != NULL);
    return r;
}

/* The default removes every pin_number and password of every fixture, JSON and XML. */
static void test_redact_default_fixtures(void)
{
    struct ab_redact *r = compile(ab_redact_default, 2);
    struct ab_event_opts o = {.redact = r};
    const char *dirs[] = {"tests/fixtures/alma", "tests/fixtures/xml"};
    int pins = 0;
    for (int d = 0; d < 2; d++) {
        size_t count;
        char **paths = dir_paths(dirs[d], "", &count);
        for (char **p = paths; *p; p++) {
            const char *path = *p;
            size_t len;
            char *raw = read_file(path, &len);
            pins += raw && strstr(raw, "pin_number") != NULL;
            free(raw);
            struct ab_event *ev = build(path, &o);
            if (ev != NULL) {
                CHECK(strstr(ev->json, "pin_number") == NULL);
                CHECK(strstr(ev->json, "\"password\"") == NULL);
                cJSON *j = cJSON_Parse(ev->json);
                CHECK(cJSON_IsObject(j)); /* still valid JSON */
                cJSON_Delete(j);
            }
            ab_event_free(ev);
        }
        free_paths(paths);
    }
    CHECK(pins >= 2); /* the user fixtures carry one: the test means something */
    ab_redact_free(r);
}

static char *redact_text(const struct ab_redact *r, const char *in, size_t *removed)
{
    size_t n = strlen(in);
    char *out = malloc(n + 1);
    n = ab_redact_apply(r, in, n, out, removed);
    out[n] = '\0';
    return out;
}

static void test_redact_paths(void)
{
    const char *paths[] = {"$.u.pin", "$.a[*].x", "$..secret", "$['b c'].d", "$.l[1]",
                           "$.w.*.z"};
    struct ab_redact *r = compile(paths, sizeof(paths) / sizeof(paths[0]));
    size_t removed = 0;
    char *out = redact_text(r,
                            "{\"u\":{\"pin\":\"1234\",\"name\":\"x\"},\"pin\":1,"
                            "\"a\":[{\"x\":1,\"y\":2},{\"y\":3,\"x\":{\"q\":[1]}}],"
                            "\"n\":{\"m\":{\"sec\\u0072et\":\"s\",\"k\":[{\"secret\":2}]}},"
                            "\"b c\":{\"d\":1,\"e\":2},\"l\":[1,2,3],\"w\":{\"p\":{\"z\":1,\"o\":2}}}",
                            &removed);
    CHECK_STR(out, "{\"u\":{\"name\":\"x\"},\"pin\":1,\"a\":[{\"y\":2},{\"y\":3}],"
                   "\"n\":{\"m\":{\"k\":[{}]}},\"b c\":{\"e\":2},\"l\":[1,3],"
                   "\"w\":{\"p\":{\"o\":2}}}");
    CHECK(removed == 8);
    free(out);
    out = redact_text(r, "{\"u\":{\"pin\":\"1\"}}", NULL);
    CHECK_STR(out, "{\"u\":{}}");
    free(out);
    CHECK(ab_redact_may_apply(r, "{\"a\":1}", 7) == 1); /* $.a[*].x ends in a name... */
    ab_redact_free(r);

    const char *def[] = {"$..pin_number"};
    r = compile(def, 1);
    CHECK(ab_redact_may_apply(r, "{\"a\":\"pin\"}", 11) == 0);
    CHECK(ab_redact_may_apply(r, "{\"pin_number\":1}", 16) == 1);
    ab_redact_free(r);
}

static void test_redact_compile(void)
{
    char err[256] = "";
    const char *none[] = {"none"};
    CHECK(ab_redact_compile(none, 1, err, sizeof(err)) == NULL && err[0] == '\0');
    const char *bad[][2] = {{"pin_number", NULL}, {"$.", NULL}, {"$.a[", NULL},
                            {"$[x]", NULL}, {"$.a", "none"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(ab_redact_compile(bad[i], bad[i][1] ? 2 : 1, err, sizeof(err)) == NULL);
        CHECK(err[0] != '\0');
    }
}

/* Redacting the field that holds the identity falls back to the webhook id. */
static void test_redacted_identity(void)
{
    const char *paths[] = {"$.webhook_user.user.primary_id"};
    struct ab_redact *r = compile(paths, 1);
    struct ab_event_opts o = {.redact = r};
    struct ab_event *ev = build("tests/fixtures/alma/user_update.json", &o);
    if (ev != NULL) {
        CHECK(strstr(ev->json, "TEST0000001") == NULL);
        CHECK_STR(ev->partitionkey, "webhook/3860383463824639544");
    }
    ab_event_free(ev);
    ab_redact_free(r);
}

static void test_trace(void)
{
    char tp[56];
    CHECK(ab_event_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tp) == 1);
    CHECK_STR(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    /* a later version is read by its first fields and written as version 00 */
    CHECK(ab_event_trace("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", tp) == 1);
    CHECK_STR(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    const char *bad[] = {NULL, "", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                         "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                         "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                         "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"};
    char prev[56] = "";
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(ab_event_trace(bad[i], tp) == 0);
        CHECK(strlen(tp) == 55 && strncmp(tp, "00-", 3) == 0 && tp[35] == '-' &&
              strcmp(tp + 52, "-01") == 0);
        CHECK(strcmp(tp, prev) != 0); /* new each time */
        memcpy(prev, tp, sizeof(prev));
        char again[56];
        CHECK(ab_event_trace(tp, again) == 1); /* a valid one */
    }
    CHECK(ab_event_tracestate("congo=t61rcWkgMzE") != NULL);
    CHECK(ab_event_tracestate("a=\x01") == NULL);
    CHECK(ab_event_tracestate("") == NULL);
}

/* Attributes -> line and line -> event give back the same line, with every attribute. */
static void test_binary_round_trip(void)
{
    struct ab_redact *r = compile(ab_redact_default, 2);
    struct ab_event_opts o = {.redact = r, .schema_base = "urn:almabridge:schema:",
                              .traceparent =
                                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                              .tracestate = "congo=t61rcWkgMzE"};
    struct ab_event *ev = build("tests/fixtures/alma/loan_created.json", &o);
    if (ev == NULL) {
        return;
    }
    CHECK_STR(ev->dataschema, "urn:almabridge:schema:loan.json");
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS];
    size_t n = ab_event_attrs(ev, attrs);
    CHECK(n == 14);
    size_t len;
    char *line = ab_event_line_from_attrs(attrs, n, ev->json + ev->data_off, ev->data_len, &len);
    CHECK_STR(line, ev->json);
    CHECK(ev->json[ev->data_off] == '{' && ev->data_off + ev->data_len + 1 == ev->json_len);
    struct ab_event *back = NULL;
    char why[128];
    CHECK(ab_event_from_line(line, len, &back, why, sizeof(why)) == AB_EVENT_OK);
    CHECK(back != NULL);
    if (back != NULL) {
        struct ab_attr battrs[AB_EVENT_MAX_ATTRS];
        CHECK(ab_event_attrs(back, battrs) == n);
        for (size_t i = 0; i < n; i++) {
            CHECK_STR(battrs[i].name, attrs[i].name);
            CHECK_STR(battrs[i].value, attrs[i].value);
        }
        CHECK(back->data_len == ev->data_len &&
              memcmp(back->json + back->data_off, ev->json + ev->data_off, ev->data_len) == 0);
    }
    ab_event_free(back);
    free(line);
    /* a line of an older version: no identity, derived from data */
    const char *old = "{\"specversion\":\"1.0\",\"id\":\"9\",\"almaaction\":\"LOAN\","
                      "\"data\":{\"id\":\"9\",\"item_loan\":{\"loan_id\":\"77\"}}}";
    CHECK(ab_event_from_line(old, strlen(old), &back, why, sizeof(why)) == AB_EVENT_OK);
    CHECK(back != NULL);
    if (back != NULL) {
        CHECK_STR(back->partitionkey, "loan/77");
    }
    ab_event_free(back);
    struct ab_event *none = NULL;
    CHECK(ab_event_from_line("[1]", 3, &none, why, sizeof(why)) != AB_EVENT_OK && none == NULL);
    /* extension attributes beyond the known ones are kept (binary mode carries them) */
    const char *ext = "{\"specversion\":\"1.0\",\"id\":\"5\",\"almaorigin\":\"api\","
                      "\"data\":{\"id\":\"5\"}}";
    CHECK(ab_event_from_line(ext, strlen(ext), &back, why, sizeof(why)) == AB_EVENT_OK);
    if (back != NULL) {
        struct ab_attr eattrs[AB_EVENT_MAX_ATTRS];
        size_t en = ab_event_attrs(back, eattrs);
        CHECK(en >= 1 && strcmp(eattrs[en - 1].name, "almaorigin") == 0 &&
              strcmp(eattrs[en - 1].value, "api") == 0);
    }
    ab_event_free(back);
    ab_event_free(ev);
    ab_redact_free(r);
}

int main(void)
{
    ab_normalise_init();
    RUN(test_record_identity);
    RUN(test_redact_default_fixtures);
    RUN(test_redact_paths);
    RUN(test_redact_compile);
    RUN(test_redacted_identity);
    RUN(test_trace);
    RUN(test_binary_round_trip);
    return TEST_SUMMARY();
}
