/* X-Exl-Signature: HMAC-SHA256 of the raw body, standard base64 with padding.
 *
 * Secrets are kept as byte strings (a line of the secret file is used as is, inner and
 * leading blanks included) and wiped with OPENSSL_cleanse() when freed. Nothing here ever
 * prints a secret. All functions are pure once the set is loaded and may be called from
 * any thread. */
#include "signature.h"

#include "mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define SHA256_LEN 32

struct ab_secret {
    unsigned char *p;
    size_t len;
};

struct ab_secrets {
    struct ab_secret *v;
    size_t n;
};

/* Append a copy of bytes [p, p+len) to the set. */
static void secrets_add(struct ab_secrets *s, const char *p, size_t len)
{
    s->v = ab_realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].p = (unsigned char *)ab_strndup(p, len);
    s->v[s->n].len = len;
    s->n++;
}

/* Length of [p, p+len) once trailing CR and LF characters are dropped. */
static size_t strip_eol(const char *p, size_t len)
{
    while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r')) {
        len--;
    }
    return len;
}

/* 1 when the line holds nothing but spaces and tabs (such a "secret" would be a typo). */
static int is_blank(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != ' ' && p[i] != '\t') {
            return 0;
        }
    }
    return 1;
}

/* Read all of fp into a new buffer (*out, *outlen). The buffer grows by copying and wiping
 * the old one, so no stale copy of a secret is left in freed memory. Returns 0, or -1 with
 * errno set on a read error. */
static int read_all(FILE *fp, char **out, size_t *outlen)
{
    size_t cap = 4096, len = 0;
    char *buf = ab_malloc(cap);

    for (;;) {
        if (len == cap) {
            char *bigger = ab_malloc(cap * 2);
            memcpy(bigger, buf, len);
            OPENSSL_cleanse(buf, cap);
            free(buf);
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) {
            break;
        }
    }
    if (ferror(fp)) {
        int saved = errno ? errno : EIO;
        OPENSSL_cleanse(buf, cap);
        free(buf);
        errno = saved;
        return -1;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* Add one secret per line of buf: trailing CR/LF stripped, blank lines and lines starting
 * with '#' skipped. */
static void secrets_add_lines(struct ab_secrets *s, const char *buf, size_t len)
{
    size_t start = 0;
    while (start < len) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) + 1 : len;
        size_t n = strip_eol(buf + start, end - start);
        if (n > 0 && buf[start] != '#' && !is_blank(buf + start, n)) {
            secrets_add(s, buf + start, n);
        }
        start = end;
    }
}

/* Load the secret set from file (may be NULL) and extra (may be NULL; trailing CR/LF
 * stripped, ignored when empty). Returns the set (possibly empty), or NULL with a message
 * naming the file, never its contents, when the file cannot be read. Start-up only. */
struct ab_secrets *ab_secrets_load(const char *file, const char *extra, char *errstr,
                                   size_t errlen)
{
    struct ab_secrets *s = ab_calloc(1, sizeof(*s));
    FILE *fp = NULL;
    char *buf = NULL;
    size_t len = 0;

    if (file != NULL) {
        fp = fopen(file, "rb");
        if (fp == NULL || read_all(fp, &buf, &len) != 0) {
            snprintf(errstr, errlen, "cannot read secret file %s: %s", file, strerror(errno));
            ab_secrets_free(s);
            s = NULL;
            goto done;
        }
        secrets_add_lines(s, buf, len);
    }
    if (extra != NULL) {
        size_t n = strip_eol(extra, strlen(extra));
        if (n > 0) {
            secrets_add(s, extra, n);
        }
    }

done:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
    if (fp != NULL) {
        fclose(fp);
    }
    return s;
}

size_t ab_secrets_count(const struct ab_secrets *s)
{
    return s ? s->n : 0;
}

void ab_secrets_free(struct ab_secrets *s)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        OPENSSL_cleanse(s->v[i].p, s->v[i].len);
        free(s->v[i].p);
    }
    free(s->v);
    free(s);
}

/* base64(HMAC-SHA256(secret, body)) into out, NUL-terminated. Should OpenSSL fail (no
 * SHA-256 in a misconfigured provider), out is all NUL bytes, which no header matches. */
void ab_signature_compute(const void *secret, size_t secret_len, const void *body, size_t len,
                          char out[AB_SIGNATURE_B64_LEN + 1])
{
    static const unsigned char empty[1];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    memset(out, 0, AB_SIGNATURE_B64_LEN + 1);
    if (HMAC(EVP_sha256(), secret_len ? secret : empty, (int)secret_len,
             len ? body : empty, len, md, &md_len) != NULL &&
        md_len == SHA256_LEN) {
        EVP_EncodeBlock((unsigned char *)out, md, SHA256_LEN);
    }
    OPENSSL_cleanse(md, sizeof(md));
}

/* Check header against every secret, without an early exit and with CRYPTO_memcmp over a
 * fixed 44 bytes, so the time taken does not depend on where the header differs nor on
 * which secret matched. A header of the wrong length still goes through the same work. */
int ab_signature_verify(const struct ab_secrets *s, const char *header, const void *body,
                        size_t len)
{
    char given[AB_SIGNATURE_B64_LEN];
    char want[AB_SIGNATURE_B64_LEN + 1];
    int match = 0;

    if (s == NULL || header == NULL) {
        return 0;
    }
    while (*header == ' ' || *header == '\t') {
        header++;
    }
    size_t hlen = strlen(header);
    while (hlen > 0 && (header[hlen - 1] == ' ' || header[hlen - 1] == '\t')) {
        hlen--;
    }
    memset(given, 0, sizeof(given));
    memcpy(given, header, hlen < sizeof(given) ? hlen : sizeof(given));

    for (size_t i = 0; i < s->n; i++) {
        ab_signature_compute(s->v[i].p, s->v[i].len, body, len, want);
        match |= CRYPTO_memcmp(given, want, AB_SIGNATURE_B64_LEN) == 0;
    }
    OPENSSL_cleanse(want, sizeof(want));
    return match & (hlen == AB_SIGNATURE_B64_LEN);
}
