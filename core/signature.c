/* X-Exl-Signature: HMAC-SHA256 of the raw body, standard base64 with padding.
 *
 * Secrets are kept as byte strings (a line of the secret file is used as is, inner and
 * leading blanks included; a UTF-8 byte order mark, CR line ends and trailing blanks are
 * stripped with a warning naming the line) and wiped with OPENSSL_cleanse() when freed.
 * Each secret also has an HMAC context keyed once at load; a verification duplicates it
 * (EVP_MAC_CTX_dup) instead of keying HMAC again for every request. Nothing here ever
 * prints a secret. A set is reference-counted and immutable once loaded: workers share it
 * and a reload swaps in a new one; any thread may verify. */
#include "signature.h"

#include "log.h"
#include "mem.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>
#include <openssl/params.h>

#define SHA256_LEN 32

struct ab_secret {
    unsigned char *p;
    size_t len;
    EVP_MAC_CTX *keyed; /* HMAC-SHA256 keyed with p; NULL if OpenSSL refused */
};

struct ab_secrets {
    atomic_int refs;
    struct ab_secret *v;
    size_t n;
};

/* An HMAC-SHA256 context keyed with [p, p+len), or NULL. */
static EVP_MAC_CTX *keyed_new(const unsigned char *p, size_t len)
{
    static const unsigned char empty[1];
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx && EVP_MAC_init(ctx, len ? p : empty, len, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    EVP_MAC_free(mac);
    return ctx;
}

/* Append a copy of bytes [p, p+len) to the set. */
static void secrets_add(struct ab_secrets *s, const char *p, size_t len)
{
    s->v = ab_realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].p = (unsigned char *)ab_strndup(p, len);
    s->v[s->n].len = len;
    s->v[s->n].keyed = keyed_new(s->v[s->n].p, len);
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

/* Length of [p, p+len) once trailing blanks are dropped. */
static size_t strip_blanks(const char *p, size_t len)
{
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
        len--;
    }
    return len;
}

/* Add one secret per line of buf: blank lines and lines starting with '#' skipped. A UTF-8
 * byte order mark at the start, a CR before the LF and trailing blanks are what editors
 * add, not what Alma signs with: they are stripped, with one warning per line naming the
 * file and the line number (never the secret), since otherwise every webhook gets 401. */
static void secrets_add_lines(struct ab_secrets *s, const char *file, const char *buf,
                              size_t len)
{
    size_t start = 0;
    for (int line = 1; start < len; line++) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) + 1 : len;
        int bom = line == 1 && end - start >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0;
        if (bom) {
            start += 3;
        }
        size_t eol = end - start - (nl != NULL);
        size_t n = strip_eol(buf + start, end - start);
        int cr = n < eol;
        size_t m = strip_blanks(buf + start, n);
        int blanks = m < n && !is_blank(buf + start, n);
        if (m > 0 && buf[start] != '#' && !is_blank(buf + start, m)) {
            if (bom || cr || blanks) {
                ab_warn("secret file %s, line %d: stripped %s%s%s%s%s from the secret", file,
                        line, bom ? "a UTF-8 byte order mark" : "", bom && (cr || blanks) ? ", " : "",
                        cr ? "a CR line end" : "", cr && blanks ? ", " : "",
                        blanks ? "trailing blanks" : "");
            }
            secrets_add(s, buf + start, m);
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
    atomic_init(&s->refs, 1);
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
        secrets_add_lines(s, file, buf, len);
    }
    if (extra != NULL) {
        size_t n = strip_eol(extra, strlen(extra));
        size_t m = strip_blanks(extra, n);
        if (m < n && m > 0) {
            ab_warn("ALMABRIDGE_SECRET: stripped trailing blanks from the secret");
        }
        if (m > 0) {
            secrets_add(s, extra, m);
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

struct ab_secrets *ab_secrets_ref(struct ab_secrets *s)
{
    if (s) {
        atomic_fetch_add(&s->refs, 1);
    }
    return s;
}

void ab_secrets_free(struct ab_secrets *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1) {
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        OPENSSL_cleanse(s->v[i].p, s->v[i].len);
        free(s->v[i].p);
        EVP_MAC_CTX_free(s->v[i].keyed);
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

/* base64(HMAC-SHA256) of body from a copy of the pre-keyed context; falls back to the
 * one-shot computation when the set has no context for this secret. */
static void keyed_compute(const struct ab_secret *sec, const void *body, size_t len,
                          char out[AB_SIGNATURE_B64_LEN + 1])
{
    static const unsigned char empty[1];
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t md_len = 0;
    EVP_MAC_CTX *ctx = sec->keyed ? EVP_MAC_CTX_dup(sec->keyed) : NULL;
    if (ctx == NULL) {
        ab_signature_compute(sec->p, sec->len, body, len, out);
        return;
    }
    memset(out, 0, AB_SIGNATURE_B64_LEN + 1);
    if (EVP_MAC_update(ctx, len ? body : empty, len) == 1 &&
        EVP_MAC_final(ctx, md, &md_len, sizeof(md)) == 1 && md_len == SHA256_LEN) {
        EVP_EncodeBlock((unsigned char *)out, md, SHA256_LEN);
    }
    EVP_MAC_CTX_free(ctx);
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
        keyed_compute(&s->v[i], body, len, want);
        match |= CRYPTO_memcmp(given, want, AB_SIGNATURE_B64_LEN) == 0;
    }
    OPENSSL_cleanse(want, sizeof(want));
    return match & (hlen == AB_SIGNATURE_B64_LEN);
}
