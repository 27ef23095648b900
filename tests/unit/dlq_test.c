/* Tests for core/dlq.c: a dead-letter record processed again (replay --dead-letters). */
#include "dlq.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "signature.h"
#include "test.h"

#define LOAN "{\"id\":\"1234\",\"action\":\"LOAN\",\"event\":{\"value\":\"LOAN_CREATED\"}," \
             "\"institution\":{\"value\":\"01AB_INST\"},\"time\":\"2026-01-02T03:04:05Z\"," \
             "\"item_loan\":{\"loan_id\":\"77\"}}"

/* A dead-letter record of body as core/webhook.c writes it, signed with secret (NULL: no
 * almasignature), of content type ctype. Caller frees. */
static char *record(const char *body, const char *secret, const char *ctype)
{
    char sig[AB_SIGNATURE_B64_LEN + 1] = "";
    char b64[1024], sigpart[128] = "";
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body, (int)strlen(body));
    if (secret) {
        ab_signature_compute(secret, strlen(secret), body, strlen(body), sig);
        snprintf(sigpart, sizeof(sigpart), ",\"almasignature\":\"%s\"", sig);
    }
    char *out = malloc(2048);
    snprintf(out, 2048,
             "{\"specversion\":\"1.0\",\"id\":\"deadletter-00ff\",\"source\":"
             "\"urn:almabridge:deadletter\",\"type\":\"com.exlibrisgroup.alma.deadletter\","
             "\"datacontenttype\":\"application/octet-stream\",\"deadletterreason\":\"x\","
             "\"deadletterstatus\":\"415\",\"almacontenttype\":\"%s\"%s,\"data_base64\":\"%s\"}",
             ctype, sigpart, b64);
    return out;
}

static int process(const char *line, const char *ctype, struct ab_event **ev, char *why)
{
    char err[128], id[64];
    struct ab_secrets *s = ab_secrets_load(NULL, "s3cret", err, sizeof(err));
    int rc = ab_dlq_process(line, strlen(line), s, NULL, ctype, ev, id, sizeof(id), why, 256);
    CHECK_STR(id, strstr(line, "deadletter-00ff") ? "deadletter-00ff" : "");
    ab_secrets_free(s);
    return rc;
}

static void test_a_body_that_now_normalises(void)
{
    char why[256];
    struct ab_event *ev = NULL;
    char *r = record(LOAN, "s3cret", "application/json");
    CHECK(process(r, NULL, &ev, why) == AB_DLQ_EVENT);
    CHECK(ev != NULL);
    CHECK_STR(ev->id, "1234");
    CHECK_STR(ev->type, "com.exlibrisgroup.alma.loan.loan_created");
    ab_event_free(ev);
    free(r);
}

static void test_content_type_as_stored_or_as_given(void)
{
    char why[256];
    struct ab_event *ev = NULL;
    char *r = record(LOAN, "s3cret", "text/html");
    CHECK(process(r, NULL, &ev, why) == AB_DLQ_STILL_FAILING && ev == NULL);
    CHECK(strncmp(why, "415:", 4) == 0);
    CHECK(process(r, "application/json", &ev, why) == AB_DLQ_EVENT);
    ab_event_free(ev);
    free(r);
}

static void test_still_failing_unsigned_and_foreign(void)
{
    char why[256];
    struct ab_event *ev = NULL;
    char *r = record("{\"format\":\"changed\"}", "s3cret", "application/json");
    CHECK(process(r, NULL, &ev, why) == AB_DLQ_STILL_FAILING && ev == NULL);
    CHECK(strncmp(why, "422:", 4) == 0);
    free(r);
    r = record(LOAN, "another", "application/json");
    CHECK(process(r, NULL, &ev, why) == AB_DLQ_UNSIGNED && ev == NULL);
    CHECK(strstr(why, "does not verify") != NULL);
    free(r);
    r = record(LOAN, NULL, "application/json");
    CHECK(process(r, NULL, &ev, why) == AB_DLQ_UNSIGNED && ev == NULL);
    free(r);
    const char *other = "{\"specversion\":\"1.0\",\"id\":\"deadletter-00ff\",\"type\":\"x\"}";
    CHECK(process(other, NULL, &ev, why) == AB_DLQ_NOT_DEAD_LETTER && ev == NULL);
    const char *bad = "{\"id\":\"deadletter-00ff\",\"type\":\"com.exlibrisgroup.alma.deadletter\","
                      "\"data_base64\":\"@@@\"}";
    CHECK(process(bad, NULL, &ev, why) == AB_DLQ_DAMAGED && ev == NULL);
    CHECK(process("garbage", NULL, &ev, why) == AB_DLQ_NOT_DEAD_LETTER);
}

int main(void)
{
    RUN(test_a_body_that_now_normalises);
    RUN(test_content_type_as_stored_or_as_given);
    RUN(test_still_failing_unsigned_and_foreign);
    return TEST_SUMMARY();
}
