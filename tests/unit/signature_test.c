/* Tests for core/signature.c. Expected values were computed independently with
 *   printf '%s' BODY | openssl dgst -sha256 -hmac SECRET -binary | base64
 * and the sample payloads are checked against openssl at test time. Run from the repo
 * root; ALMABRIDGE_SAMPLES overrides the samples directory (tests/fixtures/alma). */
#include "signature.h"

#include "test.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HELLO "hello world"
#define SIG_SECRET_HELLO "c0zGLzKEFWj0VxWuufTXiRMk5tlI5MbGDAYhzaxIYjo="
#define SIG_SECRET_EMPTY "+eZuF5tnR65UEI+C+K3os8Jddv0wr95sOVgixTAZYWk="
#define SIG_K2_HELLO "2eNTMPuUZSELbiH0EToJvHYCGdkT93AaAzNhS479Oug="
#define SIG_K1SPACE_HELLO "IzDLKMHeRu9X3dlmkd86aAQQlrdnbWf9ZO9w+0yxS6k="
#define SIG_EXTRA_HELLO "P8lGkJUh5IttjrMugRO0QrCw4qic24tFFgftncUkBDY="
#define SIG_SPACEK2_HELLO "MpL5mKkBzOfQH8mcZwzJQuzAhqwsY7t6B/uEedquiPU="

#define UTF8_SECRET "s\xc3\xa9" "cret-\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87-\xe7\xa7\x98\xe5\xaf\x86"
#define UTF8_BODY                                                                              \
    "{\"id\":\"1\",\"action\":\"LOAN\",\"note\":\"M\xc3\xbcller \xe2\x80\x93 "                 \
    "\xe6\x9d\xb1\xe4\xba\xac\"}"
#define SIG_UTF8 "RG2GrRiEraUfiLNfG6a377DCGlwnpWXdRhtYaWA1iJI="

/* Write content to a new temporary file; returns its path, which the caller frees. */
static char *temp_file(const char *content)
{
    char *path = strdup("/tmp/ab_sig_test_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(2);
    }
    size_t len = strlen(content);
    if (write(fd, content, len) != (ssize_t)len) {
        perror("write");
        exit(2);
    }
    close(fd);
    return path;
}

static struct ab_secrets *load_text(const char *content, const char *extra)
{
    char err[256] = "";
    char *path = temp_file(content);
    struct ab_secrets *s = ab_secrets_load(path, extra, err, sizeof(err));
    CHECK(s != NULL);
    unlink(path);
    free(path);
    return s;
}

static struct ab_secrets *load_extra(const char *secret)
{
    char err[256] = "";
    struct ab_secrets *s = ab_secrets_load(NULL, secret, err, sizeof(err));
    CHECK(s != NULL);
    return s;
}

static void test_known_vector(void)
{
    char out[AB_SIGNATURE_B64_LEN + 1];
    ab_signature_compute("secret", 6, HELLO, strlen(HELLO), out);
    CHECK_STR(out, SIG_SECRET_HELLO);
    CHECK(strlen(out) == AB_SIGNATURE_B64_LEN);
    ab_signature_compute("secret", 6, "", 0, out);
    CHECK_STR(out, SIG_SECRET_EMPTY);
    ab_signature_compute("secret", 6, NULL, 0, out);
    CHECK_STR(out, SIG_SECRET_EMPTY);

    struct ab_secrets *s = load_extra("secret");
    CHECK(ab_secrets_count(s) == 1);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_SECRET_EMPTY, "", 0) == 1);
    ab_secrets_free(s);
}

static void test_non_ascii(void)
{
    char out[AB_SIGNATURE_B64_LEN + 1];
    ab_signature_compute(UTF8_SECRET, strlen(UTF8_SECRET), UTF8_BODY, strlen(UTF8_BODY), out);
    CHECK_STR(out, SIG_UTF8);

    struct ab_secrets *s = load_extra(UTF8_SECRET);
    CHECK(ab_signature_verify(s, SIG_UTF8, UTF8_BODY, strlen(UTF8_BODY)) == 1);
    ab_secrets_free(s);

    /* the same secret from a file */
    s = load_text("# unicode\n" UTF8_SECRET "\n", NULL);
    CHECK(ab_secrets_count(s) == 1);
    CHECK(ab_signature_verify(s, SIG_UTF8, UTF8_BODY, strlen(UTF8_BODY)) == 1);
    ab_secrets_free(s);
}

static const char *samples_dir(void)
{
    const char *d = getenv("ALMABRIDGE_SAMPLES");
    return d && *d ? d : "tests/fixtures/alma";
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
        }
        size_t got = fread(buf + *len, 1, cap - *len, fp);
        if (got == 0) {
            break;
        }
        *len += got;
    }
    fclose(fp);
    return buf;
}

/* The signature of a file as openssl computes it. Returns 0 on success. */
static int openssl_sig(const char *secret, const char *path, char out[AB_SIGNATURE_B64_LEN + 1])
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "openssl dgst -sha256 -hmac '%s' -binary '%s' | openssl base64 -A", secret, path);
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        return -1;
    }
    size_t n = fread(out, 1, AB_SIGNATURE_B64_LEN, p);
    out[n] = '\0';
    return pclose(p) == 0 && n == AB_SIGNATURE_B64_LEN ? 0 : -1;
}

static void test_samples(void)
{
    const char *dir = samples_dir();
    DIR *d = opendir(dir);
    int checked = 0;

    if (d == NULL) {
        fprintf(stderr, "  cannot open samples directory %s (set ALMABRIDGE_SAMPLES)\n", dir);
        CHECK(d != NULL);
        return;
    }
    struct ab_secrets *s = load_extra("demo-secret");
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        if (nl < 5 || strcmp(de->d_name + nl - 5, ".json") != 0) {
            continue;
        }
        char path[1024], want[AB_SIGNATURE_B64_LEN + 1], got[AB_SIGNATURE_B64_LEN + 1];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        size_t len;
        char *body = read_file(path, &len);
        CHECK(body != NULL);
        CHECK(openssl_sig("demo-secret", path, want) == 0);
        if (body == NULL) {
            continue;
        }
        ab_signature_compute("demo-secret", 11, body, len, got);
        if (strcmp(got, want) != 0) {
            fprintf(stderr, "  sample %s\n", de->d_name);
        }
        CHECK_STR(got, want);
        CHECK(ab_signature_verify(s, want, body, len) == 1);
        /* one byte changed anywhere in the body breaks it */
        body[len / 2] ^= 0x01;
        CHECK(ab_signature_verify(s, want, body, len) == 0);
        free(body);
        checked++;
    }
    closedir(d);
    ab_secrets_free(s);
    CHECK(checked > 0);
}

static void test_wrong_signature(void)
{
    struct ab_secrets *s = load_extra("secret");
    char bad[] = SIG_SECRET_HELLO;

    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, SIG_SECRET_EMPTY, HELLO, strlen(HELLO)) == 0);
    bad[0] = 'C'; /* case matters in base64 */
    CHECK(ab_signature_verify(s, bad, HELLO, strlen(HELLO)) == 0);
    bad[0] = 'c';
    bad[AB_SIGNATURE_B64_LEN - 2] ^= 0x01;
    CHECK(ab_signature_verify(s, bad, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, "not a signature", HELLO, strlen(HELLO)) == 0);
    /* the right signature over a different body */
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO, "hello world!", 12) == 0);
    ab_secrets_free(s);
}

static void test_truncated_signature(void)
{
    struct ab_secrets *s = load_extra("secret");
    char buf[128];

    snprintf(buf, sizeof(buf), "%.43s", SIG_SECRET_HELLO); /* padding dropped */
    CHECK(ab_signature_verify(s, buf, HELLO, strlen(HELLO)) == 0);
    snprintf(buf, sizeof(buf), "%.20s", SIG_SECRET_HELLO);
    CHECK(ab_signature_verify(s, buf, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, "", HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, "   ", HELLO, strlen(HELLO)) == 0);
    snprintf(buf, sizeof(buf), "%sA", SIG_SECRET_HELLO); /* too long */
    CHECK(ab_signature_verify(s, buf, HELLO, strlen(HELLO)) == 0);
    snprintf(buf, sizeof(buf), "%s%s", SIG_SECRET_HELLO, SIG_SECRET_HELLO);
    CHECK(ab_signature_verify(s, buf, HELLO, strlen(HELLO)) == 0);
    ab_secrets_free(s);
}

static void test_header_blanks(void)
{
    struct ab_secrets *s = load_extra("secret");
    CHECK(ab_signature_verify(s, "  " SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO " \t", HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, "\t " SIG_SECRET_HELLO "\t", HELLO, strlen(HELLO)) == 1);
    /* only surrounding blanks are ignored */
    CHECK(ab_signature_verify(s, "c0zGLzKEFWj0VxWuufTXiRMk5 tlI5MbGDAYhzaxIYjo=", HELLO,
                              strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO "\n", HELLO, strlen(HELLO)) == 0);
    ab_secrets_free(s);
}

static void test_null_header(void)
{
    struct ab_secrets *s = load_extra("secret");
    CHECK(ab_signature_verify(s, NULL, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(NULL, SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 0);
    ab_secrets_free(s);
}

static void test_no_secrets(void)
{
    char err[256] = "";
    struct ab_secrets *s = ab_secrets_load(NULL, NULL, err, sizeof(err));
    CHECK(s != NULL);
    CHECK(ab_secrets_count(s) == 0);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 0);
    ab_secrets_free(s);

    s = ab_secrets_load(NULL, "", err, sizeof(err)); /* an empty ALMABRIDGE_SECRET */
    CHECK(ab_secrets_count(s) == 0);
    ab_secrets_free(s);

    s = load_text("# only comments\n\n \t \n", NULL);
    CHECK(ab_secrets_count(s) == 0);
    ab_secrets_free(s);

    s = load_text("", NULL);
    CHECK(ab_secrets_count(s) == 0);
    ab_secrets_free(s);
    ab_secrets_free(NULL);
    CHECK(ab_secrets_count(NULL) == 0);
}

static void test_rotation(void)
{
    struct ab_secrets *s = load_text("k1 with space\nk2\n", "extra");
    CHECK(ab_secrets_count(s) == 3);
    CHECK(ab_signature_verify(s, SIG_K1SPACE_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_EXTRA_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 0);
    ab_secrets_free(s);
}

static void test_crlf(void)
{
    struct ab_secrets *s = load_text("# rotated 2026-01\r\nk2\r\n\r\nextra\r\n", NULL);
    CHECK(ab_secrets_count(s) == 2);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_EXTRA_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);

    /* a trailing newline on the extra secret (e.g. $(cat file)) is dropped too */
    s = load_extra("k2\r\n");
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
}

static void test_comments_and_blanks(void)
{
    /* last line without newline; a '#' line is a comment even if it looks like a secret */
    struct ab_secrets *s = load_text("#k2\n\n   \n\t\nsecret", NULL);
    CHECK(ab_secrets_count(s) == 1);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, SIG_SECRET_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
}

static void test_spaces_kept(void)
{
    /* leading blanks belong to the secret: " k2" is not "k2" */
    struct ab_secrets *s = load_text(" k2\n", NULL);
    CHECK(ab_secrets_count(s) == 1);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 0);
    CHECK(ab_signature_verify(s, SIG_SPACEK2_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
}

static void test_long_file(void)
{
    /* more than the 4 KiB read buffer: the last secret is still found */
    size_t n = 3000;
    char *text = malloc(n * 4 + 16);
    char *p = text;
    for (size_t i = 0; i < n; i++) {
        p += sprintf(p, "#x\n");
    }
    strcpy(p, "k2\n");
    struct ab_secrets *s = load_text(text, NULL);
    CHECK(ab_secrets_count(s) == 1);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
    free(text);
}

static void test_editor_artifacts_stripped(void)
{
    /* a UTF-8 BOM, CRLF and trailing blanks: stripped (with a warning on stderr) */
    struct ab_secrets *s = load_text("\xEF\xBB\xBFk2  \r\n# c\r\nextra\t\r\n", NULL);
    CHECK(ab_secrets_count(s) == 2);
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    CHECK(ab_signature_verify(s, SIG_EXTRA_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
    s = load_extra("k2 \n");
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    ab_secrets_free(s);
}

static void test_shared_references(void)
{
    struct ab_secrets *s = load_extra("k2");
    CHECK(ab_secrets_ref(s) == s);
    ab_secrets_free(s); /* one reference left */
    CHECK(ab_signature_verify(s, SIG_K2_HELLO, HELLO, strlen(HELLO)) == 1);
    /* the pre-keyed context gives what the one-shot computation gives, body after body */
    char want[AB_SIGNATURE_B64_LEN + 1];
    for (int i = 0; i < 3; i++) {
        ab_signature_compute("k2", 2, HELLO, strlen(HELLO), want);
        CHECK(ab_signature_verify(s, want, HELLO, strlen(HELLO)) == 1);
    }
    ab_secrets_free(s);
    CHECK(ab_secrets_ref(NULL) == NULL);
    /* keys of a block and longer (hashed first, RFC 2104) */
    const size_t lens[] = {63, 64, 65, 200};
    for (size_t k = 0; k < 4; k++) {
        char key[201];
        memset(key, 'k', lens[k]);
        key[lens[k]] = '\0';
        s = load_extra(key);
        ab_signature_compute(key, lens[k], HELLO, strlen(HELLO), want);
        CHECK(ab_signature_verify(s, want, HELLO, strlen(HELLO)) == 1);
        ab_signature_compute(key, lens[k], "", 0, want);
        CHECK(ab_signature_verify(s, want, "", 0) == 1);
        ab_secrets_free(s);
    }
}

static void test_unreadable_file(void)
{
    char err[256] = "";
    struct ab_secrets *s = ab_secrets_load("/nonexistent/x", "secret", err, sizeof(err));
    CHECK(s == NULL);
    CHECK_STR(err, "cannot read secret file /nonexistent/x: No such file or directory");

    err[0] = '\0';
    s = ab_secrets_load("/tmp", NULL, err, sizeof(err));
    CHECK(s == NULL);
    CHECK_STR(err, "cannot read secret file /tmp: Is a directory");
}

int main(void)
{
    RUN(test_known_vector);
    RUN(test_non_ascii);
    RUN(test_samples);
    RUN(test_wrong_signature);
    RUN(test_truncated_signature);
    RUN(test_header_blanks);
    RUN(test_null_header);
    RUN(test_no_secrets);
    RUN(test_rotation);
    RUN(test_crlf);
    RUN(test_comments_and_blanks);
    RUN(test_spaces_kept);
    RUN(test_long_file);
    RUN(test_editor_artifacts_stripped);
    RUN(test_shared_references);
    RUN(test_unreadable_file);
    return TEST_SUMMARY();
}
