/* Tests for core/institutions.c: the profile parser (and its errors, each naming the file
 * and the line), the lookup by code, the binding check (own secret, another institution's
 * secret, the classification budget), the URL forms, the RCU-like publication and the
 * counters; and the config loader's hand-over of [sections] in a --config file. */
#include "institutions.h"

#include "acl.h"
#include "config.h"
#include "event.h"
#include "log.h"
#include "route.h"
#include "signature.h"

#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/ab_inst_test_XXXXXX";

/* Write content to dir/name; returns the path (static buffer per call site). */
static const char *put(const char *name, const char *content)
{
    static char path[8][256];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(content, f);
    fclose(f);
    chmod(p, 0600);
    return p;
}

static struct ab_institutions *load(const char *content, char *err, size_t errlen)
{
    err[0] = '\0';
    return ab_institutions_load(put("inst.conf", content), 1, err, errlen);
}

/* The error of loading content contains want (and names inst.conf, unless want is about
 * another file). */
static void check_error(const char *content, const char *want)
{
    char err[512];
    struct ab_institutions *set = load(content, err, sizeof(err));
    CHECK(set == NULL);
    if (strstr(err, want) == NULL) {
        fprintf(stderr, "  error \"%s\" lacks \"%s\"\n", err, want);
        t_cur_failed = 1;
    }
    ab_institutions_free(set);
}

static void sign(const char *secret, const char *body, char out[AB_SIGNATURE_B64_LEN + 1])
{
    ab_signature_compute(secret, strlen(secret), body, strlen(body), out);
}

static void test_parse(void)
{
    char err[512];
    put("a.secrets", "# rotation\nold-a\nnew-a\n");
    struct ab_institutions *set = load("# consortium\n"
                                       "[01UPENN_INST]   # a comment\n"
                                       "secret-file = a.secrets   # relative to this file\n"
                                       "route = alma.upenn.{action}\n"
                                       "allow = 203.0.113.0/24, 127.0.0.1\n"
                                       "allow = ::1\n"
                                       "\n"
                                       "[41SLSP_NETWORK]\n"
                                       "secret = s#1\n"
                                       "secret_file = a.secrets\n"
                                       "secret = \"with #hash\"\n",
                                       err, sizeof(err));
    CHECK(set != NULL);
    if (set == NULL) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    CHECK(ab_institutions_count(set) == 2);
    const struct ab_institution *a = ab_institutions_find(set, "01UPENN_INST");
    const struct ab_institution *b = ab_institutions_find(set, "41SLSP_NETWORK");
    CHECK(a != NULL && b != NULL);
    CHECK(ab_institutions_find(set, "01upenn_inst") == NULL); /* codes are exact */
    CHECK(ab_institutions_find(set, "NOPE") == NULL);
    CHECK_STR(ab_institution_code(a), "01UPENN_INST");
    CHECK(ab_institution_route(a) != NULL && ab_institution_route(b) == NULL);
    CHECK(ab_acl_match(ab_institution_allow(a), "203.0.113.9"));
    CHECK(ab_acl_match(ab_institution_allow(a), "::1"));
    CHECK(!ab_acl_match(ab_institution_allow(a), "198.51.100.1"));
    CHECK(ab_institution_allow(b) == NULL);

    struct ab_inst_budget budget = {0};
    const struct ab_institution *signer = NULL;
    const char *body = "{\"id\":\"1\"}";
    char sig[AB_SIGNATURE_B64_LEN + 1];
    const char *secrets_b[] = {"s#1", "with #hash", "old-a", "new-a"};
    for (size_t i = 0; i < 4; i++) {
        sign(secrets_b[i], body, sig);
        CHECK(ab_institutions_verify(set, b, sig, body, strlen(body), &budget, &signer) ==
              AB_INST_VALID);
    }
    sign("with", body, sig); /* the comment was not cut inside the quotes */
    CHECK(ab_institutions_verify(set, b, sig, body, strlen(body), &budget, &signer) ==
          AB_INST_BAD);
    ab_institutions_free(set);
}

static void test_errors_name_file_and_line(void)
{
    check_error("[A]\nsecret = x\ncolour = blue\n", "inst.conf line 3: unknown key \"colour\"");
    check_error("[A\nsecret = x\n", "inst.conf line 1: malformed section header");
    check_error("[A]]\nsecret = x\n", "line 1: \"A]\" is not an institution code");
    check_error("[]\n", "line 1: \"\" is not an institution code");
    check_error("[A B]\nsecret = x\n", "line 1: \"A B\" is not an institution code");
    check_error("\n\n[A]\nroute = x\n[B]\nsecret = y\n", "line 3: institution A has no secret");
    check_error("[A]\nsecret = y\n[B]\n", "line 3: institution B has no secret");
    put("empty.secrets", "# nothing yet\n\n");
    check_error("[A]\nsecret-file = empty.secrets\n", "line 1: institution A has no secret");
    check_error("[A]\nsecret-file = missing.secrets\n",
                "inst.conf line 2: cannot read secret file");
    check_error("secret = x\n[A]\n", "line 1: \"secret\" outside a section");
    check_error("[A]\nsecret = x\n[A]\nsecret = y\n", "line 3: institution A is already "
                                                       "defined on line 1");
    check_error("[A]\nsecret = x\nallow = 10.0.0.0/33\n", "line 3: allow:");
    check_error("[A]\nsecret = x\nallow = 10.0.0.1,\n", "line 3: allow: empty address");
    check_error("[A]\nsecret = x\nroute = alma.{nope}\n", "line 3: route: unknown placeholder");
    check_error("[A]\nsecret = x\nroute = a\nroute = b\n", "line 4: route given twice");
    check_error("[A]\nsecret =\n", "line 2: secret needs a value");
    check_error("[A]\nsecret = \"open\n", "line 2: secret needs a value (unterminated quote)");
    check_error("[A]\njust words\n", "line 2: expected \"key = value\"");
    check_error("# only comments\n", "no institution profile");
    char err[512];
    CHECK(ab_institutions_load("/nonexistent/inst.conf", 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "/nonexistent/inst.conf") != NULL);
}

/* A secret never appears in an error message. */
static void test_errors_hold_no_secret(void)
{
    char err[512];
    const char *texts[] = {
        "[A]\nsecret = hunter2\nallow = x\n",
        "[A]\nhunter2\n",                /* a secret pasted without "secret =" */
        "[A]\nSuperHunter2=\n",          /* ... that ends in '=' (base64) */
        "[A]\nhunter2 = x\n",            /* ... on the left of an '=' */
        "hunter2 = x\n",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct ab_institutions *set = load(texts[i], err, sizeof(err));
        CHECK(set == NULL && strstr(err, "inst.conf line ") != NULL);
        CHECK(strstr(err, "unter2") == NULL);
        if (strstr(err, "unter2") != NULL) {
            fprintf(stderr, "  %s\n", err);
        }
    }
}

/* Many profiles: each found by its code, each verified with its own secret only; a
 * signature made with another institution's secret is a forgery naming that one. */
static void test_binding(void)
{
    char text[16384] = "", err[512];
    for (int i = 0; i < 60; i++) {
        char sec[96];
        snprintf(sec, sizeof(sec), "[INST_%02d]\nsecret = secret-%02d\n", i, i);
        strcat(text, sec);
    }
    struct ab_institutions *set = load(text, err, sizeof(err));
    CHECK(set != NULL && ab_institutions_count(set) == 60);
    if (set == NULL) {
        return;
    }
    struct ab_inst_budget budget = {0};
    const char *body = "{\"id\":\"7\",\"action\":\"LOAN\"}";
    char sig[AB_SIGNATURE_B64_LEN + 1];
    for (int i = 0; i < 60; i++) {
        char code[32], secret[32], other[32];
        snprintf(code, sizeof(code), "INST_%02d", i);
        snprintf(secret, sizeof(secret), "secret-%02d", i);
        snprintf(other, sizeof(other), "secret-%02d", (i + 7) % 60);
        const struct ab_institution *inst = ab_institutions_find(set, code), *signer = NULL;
        CHECK(inst != NULL && strcmp(ab_institution_code(inst), code) == 0);
        sign(secret, body, sig);
        CHECK(ab_institutions_verify(set, inst, sig, body, strlen(body), &budget, &signer) ==
              AB_INST_VALID);
        sign(other, body, sig);
        CHECK(ab_institutions_verify(set, inst, sig, body, strlen(body), &budget, &signer) ==
              AB_INST_FORGERY);
        CHECK(signer != NULL && signer != inst && strcmp(ab_institution_code(signer) + 5,
                                                         other + 7) == 0);
    }
    const struct ab_institution *a = ab_institutions_find(set, "INST_00"), *signer = NULL;
    sign("nobody's", body, sig);
    CHECK(ab_institutions_verify(set, a, sig, body, strlen(body), &budget, &signer) ==
          AB_INST_BAD);
    CHECK(ab_institutions_verify(set, a, NULL, body, strlen(body), &budget, &signer) ==
          AB_INST_BAD);
    CHECK(ab_institutions_verify(set, a, "", body, strlen(body), &budget, &signer) ==
          AB_INST_BAD);
    /* A failure that would cost more than the budget holds (59 other secrets over a 1 MB
     * body: 59 MB > AB_INST_CLASSIFY_BPS, however long ago the last one was) is not
     * classified, but still not valid; the institution's own secret is valid whatever the
     * budget. (A budget drained by earlier failures refills with time, so a small body is
     * not a reliable test on a loaded machine.) */
    size_t big_len = 1024 * 1024;
    char *big = malloc(big_len + 1);
    memset(big, 'x', big_len);
    big[big_len] = '\0';
    sign("secret-05", big, sig);
    CHECK(ab_institutions_verify(set, a, sig, big, big_len, &budget, &signer) ==
          AB_INST_UNCLASSIFIED);
    CHECK(signer == NULL);
    sign("secret-00", big, sig);
    CHECK(ab_institutions_verify(set, a, sig, big, big_len, &budget, &signer) ==
          AB_INST_VALID);
    /* spent: with the budget at 0 and no time passed, even a small failure is not tried */
    budget.bytes = 0;
    budget.last_ms = 1LL << 60; /* "now" is before it: nothing refills */
    sign("secret-05", body, sig);
    CHECK(ab_institutions_verify(set, a, sig, body, strlen(body), &budget, &signer) ==
          AB_INST_UNCLASSIFIED);
    free(big);
    ab_institutions_free(set);
}

static void test_url_code(void)
{
    char code[AB_INST_CODE_MAX + 1];
    CHECK(ab_institutions_url_code("/webhook", "/webhook", NULL, code) == 0);
    CHECK(ab_institutions_url_code("/webhook", "/webhook", "challenge=x", code) == 0);
    CHECK(ab_institutions_url_code("/webhook", "/webhook/01AB_INST", NULL, code) == 1);
    CHECK_STR(code, "01AB_INST");
    CHECK(ab_institutions_url_code("/webhook/", "/webhook/01AB_INST", NULL, code) == 1);
    CHECK(ab_institutions_url_code("/", "/01AB_INST", NULL, code) == 1);
    CHECK_STR(code, "01AB_INST");
    CHECK(ab_institutions_url_code("/webhook", "/webhook", "a=1&institution=X_Y", code) == 1);
    CHECK_STR(code, "X_Y");
    CHECK(ab_institutions_url_code("/webhook", "/webhook", "institution=X%5FZ", code) == 1);
    CHECK_STR(code, "X_Z");
    CHECK(ab_institutions_url_code("/webhook", "/webhook/A", "institution=A", code) == 1);
    CHECK(ab_institutions_url_code("/webhook", "/webhook/A", "institution=B", code) == -1);
    CHECK(ab_institutions_url_code("/webhook", "/webhook", "institution=", code) == -1);
    CHECK(ab_institutions_url_code("/webhook", "/webhook", "institution=a%20b", code) == -1);
    CHECK(ab_institutions_url_code("/webhook", "/webhook/a%2", NULL, code) == -1);
    CHECK(ab_institutions_url_code("/webhook", "/webhooks/A", NULL, code) == 0);
    CHECK(ab_institutions_url_code("/webhook", "/webhook/A/B", NULL, code) == 0);
    CHECK(ab_institutions_code_valid("01UPENN_INST") && ab_institutions_code_valid("a.b-c"));
    CHECK(!ab_institutions_code_valid("") && !ab_institutions_code_valid("a/b") &&
          !ab_institutions_code_valid(NULL));
    char longest[AB_INST_CODE_MAX + 2];
    memset(longest, 'A', sizeof(longest));
    longest[AB_INST_CODE_MAX] = '\0';
    CHECK(ab_institutions_code_valid(longest));
    longest[AB_INST_CODE_MAX] = 'A';
    longest[AB_INST_CODE_MAX + 1] = '\0';
    CHECK(!ab_institutions_code_valid(longest));
}

/* Publication: a view sees the current set, moves to a new one on its next get, and the
 * old set lives until the last view let go of it (ASan reports a use after free or a leak
 * otherwise). The path form is matched only while a set is published. */
static void test_publish_and_views(void)
{
    char err[512];
    struct ab_inst_view v1 = {0}, v2 = {0};
    CHECK(ab_inst_view_get(&v1) == NULL);
    CHECK(!ab_institutions_path_match("/webhook", "/webhook/A"));
    struct ab_institutions *one = load("[A]\nsecret = a\nroute = r.{institution}\n", err,
                                       sizeof(err));
    ab_institutions_publish(one);
    CHECK(ab_institutions_path_match("/webhook", "/webhook/A"));
    CHECK(!ab_institutions_path_match("/webhook", "/webhook"));
    CHECK(ab_inst_view_get(&v1) == one && ab_inst_view_get(&v2) == one);
    struct ab_institutions *two = load("[B]\nsecret = b\n", err, sizeof(err));
    ab_institutions_publish(two);
    /* v2 has not looked since: it still holds the old set, which must still be usable */
    CHECK(ab_institutions_find(v2.set, "A") != NULL);
    CHECK(ab_inst_view_get(&v1) == two);
    CHECK(ab_inst_view_get(&v2) == two);
    CHECK(ab_institutions_find(v2.set, "A") == NULL);

    struct ab_event ev = {.institution = (char *)"B", .action = (char *)"LOAN"};
    CHECK(ab_institutions_route_for(&ev) == NULL); /* B has no route */
    ab_institutions_publish(load("[A]\nsecret = a\nroute = r.{institution}\n", err,
                                 sizeof(err)));
    ev.institution = (char *)"A";
    char *r = ab_institutions_route_for(&ev);
    CHECK_STR(r, "r.a");
    free(r);

    ab_institutions_publish(NULL);
    CHECK(!ab_institutions_path_match("/webhook", "/webhook/A"));
    CHECK(ab_inst_view_get(&v1) == NULL);
    ab_inst_view_release(&v1);
    ab_inst_view_release(&v2);
}

static void test_counters(void)
{
    char err[512];
    struct ab_institutions *set = load("[CNT_A]\nsecret = a\n[CNT_B]\nsecret = b\n", err,
                                       sizeof(err));
    ab_institutions_publish(ab_institutions_ref(set));
    struct ab_inst_stats *a = ab_institution_stats(ab_institutions_find(set, "CNT_A"));
    ab_inst_stats_answer(a, 200);
    ab_inst_stats_answer(a, 200);
    ab_inst_stats_answer(a, 418);
    ab_inst_stats_refused(a, AB_INST_R_FORGERY);
    ab_inst_stats_answer(NULL, 200); /* no institution: nothing */
    ab_institutions_unknown("NEW_INST", "192.0.2.1", 0);
    ab_institutions_unknown("bad code\n", "192.0.2.1", 1);
    char *m = ab_institutions_metrics();
    CHECK(strstr(m, "almabridge_institutions 2\n") != NULL);
    CHECK(strstr(m, "almabridge_institution_requests_total{institution=\"CNT_A\","
                    "status=\"200\"} 2\n") != NULL);
    CHECK(strstr(m, "{institution=\"CNT_A\",status=\"other\"} 1\n") != NULL);
    CHECK(strstr(m, "almabridge_institution_refused_total{institution=\"CNT_A\","
                    "reason=\"forgery\"} 1\n") != NULL);
    CHECK(strstr(m, "{institution=\"CNT_B\",reason=\"forgery\"} 0\n") != NULL);
    CHECK(strstr(m, "almabridge_unknown_institution_total 2\n") != NULL);
    CHECK(strstr(m, "NEW_INST") == NULL); /* the label set is bounded by the profiles */
    free(m);
    /* a reload keeps counting; a removed institution's series go away */
    struct ab_institutions *next = load("[CNT_A]\nsecret = a2\n", err, sizeof(err));
    ab_institutions_publish(next);
    ab_inst_stats_answer(ab_institution_stats(ab_institutions_find(next, "CNT_A")), 200);
    m = ab_institutions_metrics();
    CHECK(strstr(m, "{institution=\"CNT_A\",status=\"200\"} 3\n") != NULL);
    CHECK(strstr(m, "CNT_B") == NULL);
    free(m);
    ab_institutions_publish(NULL);
    ab_institutions_free(set);
}

/* A --config file that ends with [sections]: the options before are read, the loader
 * names the file and the first section's line; both places at once is an error. */
static void test_config_sections(void)
{
    char err[512];
    const char *path = put("almabridge.conf", "path = /hooks\n# profiles\n[A]\nsecret = a\n");
    char *argv[] = {(char *)"almabridge", (char *)"--config", (char *)path, NULL};
    char *envp[] = {NULL};
    struct ab_config cfg;
    CHECK(ab_config_load(&cfg, NULL, 3, argv, envp, err, sizeof(err)) == AB_CONFIG_OK);
    CHECK_STR(cfg.path, "/hooks");
    CHECK_STR(cfg.institutions, path);
    CHECK(cfg.institutions_line == 3);
    CHECK_STR(cfg.unknown_institution, "retry");
    struct ab_institutions *set = ab_institutions_load(cfg.institutions, cfg.institutions_line,
                                                       err, sizeof(err));
    CHECK(set != NULL && ab_institutions_find(set, "A") != NULL);
    ab_institutions_free(set);
    ab_config_free(&cfg);

    char *argv2[] = {(char *)"almabridge", (char *)"--config", (char *)path,
                     (char *)"--institutions", (char *)"/x", NULL};
    CHECK(ab_config_load(&cfg, NULL, 5, argv2, envp, err, sizeof(err)) == AB_CONFIG_ERROR);
    CHECK(strstr(err, "in one place") != NULL);
    const char *twice = put("twice.conf", "institutions = /x\n[A]\nsecret = a\n");
    char *argv3[] = {(char *)"almabridge", (char *)"--config", (char *)twice, NULL};
    CHECK(ab_config_load(&cfg, NULL, 3, argv3, envp, err, sizeof(err)) == AB_CONFIG_ERROR);
    CHECK(strstr(err, "twice.conf line 2") != NULL);
    char *argv4[] = {(char *)"almabridge", (char *)"--institutions", (char *)"/x",
                     (char *)"--secret-file", (char *)"/y", NULL};
    CHECK(ab_config_load(&cfg, NULL, 5, argv4, envp, err, sizeof(err)) == AB_CONFIG_ERROR);
    CHECK(strstr(err, "--secret-file") != NULL);
    char *argv5[] = {(char *)"almabridge", (char *)"--unknown-institution", (char *)"drop", NULL};
    CHECK(ab_config_load(&cfg, NULL, 3, argv5, envp, err, sizeof(err)) == AB_CONFIG_ERROR);
}

int main(void)
{
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    ab_log_level_min = AB_LOG_OFF;
    RUN(test_parse);
    RUN(test_errors_name_file_and_line);
    RUN(test_errors_hold_no_secret);
    RUN(test_binding);
    RUN(test_url_code);
    RUN(test_publish_and_views);
    RUN(test_counters);
    RUN(test_config_sections);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
    return TEST_SUMMARY();
}
