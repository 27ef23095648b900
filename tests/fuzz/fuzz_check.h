/* Shared by the fuzz drivers: run one input through ab_event_from_body() and check what
 * must hold for every input, aborting (a crash for the fuzzer) when it does not:
 *   - the result is one of the three classes, and *out is set exactly on success;
 *   - the event line is NUL-terminated at json_len, holds no byte below 0x20 (so no
 *     newline), is an object that cJSON parses, and its "data" prints like the tree the
 *     normaliser makes from the body (the JSON splice keeps the body's meaning). */
#ifndef AB_FUZZ_CHECK_H
#define AB_FUZZ_CHECK_H

#include "event.h"
#include "normalise.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_assert(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
    }
}

static void fuzz_check_data(enum ab_body_format fmt, const char *body, size_t len,
                            const cJSON *data)
{
    char err[256];
    cJSON *tree = fmt == AB_FORMAT_JSON ? ab_normalise_json(body, len, err, sizeof(err))
                                        : ab_normalise_xml(body, len, err, sizeof(err));
    fuzz_assert(tree != NULL, "body parses again");
    char *a = cJSON_PrintUnformatted(tree), *b = cJSON_PrintUnformatted(data);
    fuzz_assert(a != NULL && b != NULL && strcmp(a, b) == 0, "data equals the parsed body");
    cJSON_free(a);
    cJSON_free(b);
    cJSON_Delete(tree);
}

static __attribute__((unused)) int fuzz_one(enum ab_body_format fmt, const uint8_t *data,
                                            size_t size)
{
    static int initialised;
    if (!initialised) {
        ab_normalise_init();
        initialised = 1;
    }
    char err[256] = "";
    struct ab_event *ev = NULL;
    int rc = ab_event_from_body(fmt, (const char *)data, size, &ev, err, sizeof(err));
    fuzz_assert(rc == AB_EVENT_OK || rc == AB_EVENT_MALFORMED || rc == AB_EVENT_NOT_WEBHOOK,
                "known result class");
    fuzz_assert((rc == AB_EVENT_OK) == (ev != NULL), "event exactly on success");
    fuzz_assert(rc == AB_EVENT_OK || err[0] != '\0', "a reason on failure");
    if (ev == NULL) {
        return 0;
    }
    fuzz_assert(strlen(ev->json) == ev->json_len, "json_len");
    for (size_t i = 0; i < ev->json_len; i++) {
        fuzz_assert((unsigned char)ev->json[i] >= 0x20, "no control byte in the line");
    }
    fuzz_assert(ev->id != NULL && ev->action != NULL && ev->type != NULL && ev->source != NULL,
                "envelope fields");
    cJSON *line = cJSON_ParseWithLength(ev->json, ev->json_len);
    fuzz_assert(cJSON_IsObject(line), "the line is a JSON object");
    fuzz_check_data(fmt, (const char *)data, size, cJSON_GetObjectItemCaseSensitive(line, "data"));
    cJSON_Delete(line);
    ab_event_free(ev);
    return 0;
}

#endif
