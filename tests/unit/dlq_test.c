/* Tests for core/dlq.c: a dead-letter record processed again (replay --dead-letters). */
#include "dlq.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "event.h"
#include "institutions.h"
#include "route.h"
#include "signature.h"
#include "test.h"

#define LOAN "{\"id\":\"1234\",\"action\":\"LOAN\",\"event\":{\"value\":\"LOAN_CREATED\"}," \
             "\"institution\":{\"value\":\"01AB_INST\"},\"time\":\"2026-01-02T03:04:05Z\"," \
             "\"item_loan\":{\"loan_id\":\"77\"}}"

/* A dead-letter record of body as core/webhook.c writes it, signed with secret (NULL: no
 * almasignature), of content type ctype, bound to institution inst (NULL: no
 * almainstitution, as with one pool of secrets). Caller frees. */
static char *record_of(const char *body, const char *secret, const char *ctype,
                       const char *inst)
{
    char sig[AB_SIGNATURE_B64_LEN + 1] = "";
    char b64[1024], sigpart[128] = "", instpart[128] = "";
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body, (int)strlen(body));
    if (secret) {
        ab_signature_compute(secret, strlen(secret), body, strlen(body), sig);
        snprintf(sigpart, sizeof(sigpart), ",\"almasignature\":\"%s\"", sig);
    }
    if (inst) {
        snprintf(instpart, sizeof(instpart), ",\"almainstitution\":\"%s\"", inst);
    }
    char *out = malloc(2048);
    snprintf(out, 2048,
             "{\"specversion\":\"1.0\",\"id\":\"deadletter-00ff\",\"source\":"
             "\"urn:almabridge:deadletter\",\"type\":\"com.exlibrisgroup.alma.deadletter\","
             "\"datacontenttype\":\"application/octet-stream\",\"deadletterreason\":\"x\","
             "\"deadletterstatus\":\"415\",\"almacontenttype\":\"%s\"%s%s,\"data_base64\":\"%s\"}",
             ctype, sigpart, instpart, b64);
    return out;
}

static char *record(const char *body, const char *secret, const char *ctype)
{
    return record_of(body, secret, ctype, NULL);
}

static int process(const char *line, const char *ctype, struct ab_event **ev, char *why)
{
    char err[128];
    struct ab_secrets *s = ab_secrets_load(NULL, "s3cret", err, sizeof(err));
    struct ab_dlq_keys keys = {.secrets = s};
    struct ab_dlq_out out;
    int rc = ab_dlq_process(line, strlen(line), &keys, NULL, ctype, &out);
    CHECK_STR(out.id, strstr(line, "deadletter-00ff") ? "deadletter-00ff" : "");
    CHECK(out.inst == NULL);
    snprintf(why, 256, "%.255s", out.why);
    *ev = out.ev;
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

/* Consortium mode: two profiles; LOAN names 01AB_INST. */
static void test_consortium_bound_to_its_institution(void)
{
    char dir[] = "/tmp/ab_dlq_test_XXXXXX", path[64], err[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/inst.conf", dir);
    FILE *f = fopen(path, "w");
    fputs("[01AB_INST]\nsecret = secret-a\nroute = a.{action}\n[01CD_INST]\nsecret = secret-c\n",
          f);
    fclose(f);
    chmod(path, 0600);
    struct ab_institutions *insts = ab_institutions_load(path, 1, err, sizeof(err));
    CHECK(insts != NULL);
    struct ab_secrets *none = ab_secrets_load(NULL, NULL, err, sizeof(err));
    struct ab_dlq_keys keys = {.secrets = none, .insts = insts};
    struct ab_dlq_out out;
    struct ab_route *dflt = ab_route_compile("alma.{action}", err, sizeof(err));
    const char *cd = "{\"id\":\"9\",\"action\":\"LOAN\",\"event\":{\"value\":\"LOAN_CREATED\"},"
                     "\"institution\":{\"value\":\"01CD_INST\"},\"item_loan\":{}}";
    struct {
        const char *body, *secret, *inst;
        int want;
        const char *why; /* in out.why */
    } cases[] = {
        {LOAN, "secret-a", "01AB_INST", AB_DLQ_EVENT, ""},
        {LOAN, "secret-a", NULL, AB_DLQ_UNBOUND, "names no institution"},
        {LOAN, "secret-a", "01XY_INST", AB_DLQ_UNBOUND, "01XY_INST, which has no profile"},
        {LOAN, "secret-a", "bad\\u0001code", AB_DLQ_UNBOUND, "(not a valid code)"},
        /* almainstitution altered: A's signature, bound to C */
        {LOAN, "secret-a", "01CD_INST", AB_DLQ_UNSIGNED,
         "bound to institution 01CD_INST but signed with the secret of institution 01AB_INST"},
        {LOAN, "s3cret", "01AB_INST", AB_DLQ_UNSIGNED, "under the secrets of institution 01AB"},
        {LOAN, NULL, "01AB_INST", AB_DLQ_UNSIGNED, "no signature"},
        /* signed by C, bound to C, but the webhook names A: never published as A */
        {LOAN, "secret-c", "01CD_INST", AB_DLQ_UNBOUND,
         "bound to institution 01CD_INST but its webhook names 01AB_INST"},
        {cd, "secret-c", "01CD_INST", AB_DLQ_EVENT, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *r = record_of(cases[i].body, cases[i].secret, "application/json", cases[i].inst);
        int rc = ab_dlq_process(r, strlen(r), &keys, NULL, NULL, &out);
        CHECK(rc == cases[i].want);
        CHECK(strstr(out.why, cases[i].why) != NULL);
        CHECK((rc == AB_DLQ_EVENT) == (out.ev != NULL && out.inst != NULL));
        if (rc == AB_DLQ_EVENT) {
            CHECK_STR(ab_institution_code(out.inst), out.ev->institution);
            CHECK_STR(ab_institution_code(out.inst), cases[i].inst);
            char *route = ab_institution_route_expand(out.inst, dflt, out.ev);
            /* its own route, else the global one */
            CHECK_STR(route, strcmp(cases[i].inst, "01AB_INST") == 0 ? "a.loan" : "alma.loan");
            free(route);
        }
        ab_event_free(out.ev);
        free(r);
    }
    ab_route_free(dflt);
    ab_secrets_free(none);
    ab_institutions_free(insts);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    RUN(test_a_body_that_now_normalises);
    RUN(test_content_type_as_stored_or_as_given);
    RUN(test_still_failing_unsigned_and_foreign);
    RUN(test_consortium_bound_to_its_institution);
    return TEST_SUMMARY();
}
