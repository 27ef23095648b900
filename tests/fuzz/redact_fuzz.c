/* libFuzzer driver: a JSON body through ab_event_build() with the default --redact, a trace
 * context and a schema base (issue 22). Checks, for every input:
 *   - the result class is the one ab_event_from_body() gives (redaction never changes it);
 *   - "data" equals the parsed body with every pin_number and password member removed at
 *     any depth, done on the cJSON tree as a reference;
 *   - the binary modes' round trip is exact: ab_event_attrs() + data ->
 *     ab_event_line_from_attrs() gives the line back, and ab_event_from_line() gives back
 *     every attribute and the data's bytes. */
#include "fuzz_check.h"
#include "redact.h"

static void drop_names(cJSON *o)
{
    cJSON *c = o ? o->child : NULL;
    while (c != NULL) {
        cJSON *next = c->next;
        if (cJSON_IsObject(o) && c->string &&
            (strcmp(c->string, "pin_number") == 0 || strcmp(c->string, "password") == 0)) {
            cJSON_Delete(cJSON_DetachItemViaPointer(o, c));
        } else {
            drop_names(c);
        }
        c = next;
    }
}

static void check_round_trip(const struct ab_event *ev)
{
    struct ab_attr a[AB_EVENT_MAX_ATTRS], b[AB_EVENT_MAX_ATTRS];
    size_t n = ab_event_attrs(ev, a), len = 0;
    char *line = ab_event_line_from_attrs(a, n, ev->json + ev->data_off, ev->data_len, &len);
    fuzz_assert(len == ev->json_len && memcmp(line, ev->json, len) == 0, "attrs+data = line");
    free(line);
    struct ab_event *back = NULL;
    char why[128];
    fuzz_assert(ab_event_from_line(ev->json, ev->json_len, &back, why, sizeof(why)) ==
                        AB_EVENT_OK &&
                    back != NULL,
                why);
    fuzz_assert(ab_event_attrs(back, b) == n, "as many attributes");
    for (size_t i = 0; i < n; i++) {
        fuzz_assert(strcmp(a[i].name, b[i].name) == 0 && strcmp(a[i].value, b[i].value) == 0,
                    "attribute read back");
    }
    fuzz_assert(back->data_len == ev->data_len &&
                    memcmp(back->json + back->data_off, ev->json + ev->data_off,
                           ev->data_len) == 0,
                "data read back");
    ab_event_free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ab_redact *r;
    if (r == NULL) {
        char err[256];
        ab_normalise_init();
        r = ab_redact_compile(ab_redact_default, 2, err, sizeof(err));
        fuzz_assert(r != NULL, "default compiles");
    }
    const char *body = (const char *)data;
    char err[256] = "";
    struct ab_event *plain = NULL, *ev = NULL;
    int rc0 = ab_event_from_body(AB_FORMAT_JSON, body, size, &plain, err, sizeof(err));
    struct ab_event_opts o = {.redact = r, .schema_base = "urn:x:",
                              .traceparent =
                                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    int rc = ab_event_build(AB_FORMAT_JSON, body, size, &o, &ev, err, sizeof(err));
    fuzz_assert(rc == rc0, "redaction keeps the result class");
    if (ev != NULL) {
        cJSON *want = ab_normalise_json(body, size, err, sizeof(err));
        fuzz_assert(want != NULL, "body parses");
        drop_names(want);
        cJSON *line = cJSON_ParseWithLength(ev->json, ev->json_len);
        fuzz_assert(cJSON_IsObject(line), "the line is a JSON object");
        char *a = cJSON_PrintUnformatted(want);
        char *b = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(line, "data"));
        fuzz_assert(a && b && strcmp(a, b) == 0, "data = the body without the default names");
        cJSON_free(a);
        cJSON_free(b);
        cJSON_Delete(line);
        cJSON_Delete(want);
        fuzz_assert(ev->partitionkey != NULL && ev->subject != NULL, "an identity");
        check_round_trip(ev);
    }
    ab_event_free(plain);
    ab_event_free(ev);
    return 0;
}
