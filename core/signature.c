/* X-Exl-Signature: HMAC-SHA256 of the raw body, standard base64 with padding.
 *
 * Secrets are kept as byte strings (a line of the secret file is used as is, inner and
 * leading blanks included; a UTF-8 byte order mark, CR line ends and trailing blanks are
 * stripped with a warning naming the line) and wiped with OPENSSL_cleanse() when freed.
 * Each secret is keyed once at load: two SHA-256 contexts that have absorbed the key XOR
 * ipad and XOR opad (RFC 2104); a verification copies them into per-thread scratch
 * contexts (EVP_MD_CTX_copy_ex) instead of keying HMAC again for every request. Under
 * callgrind, for a 1.5 kB body: one-shot HMAC() 63k instructions, EVP_MAC_CTX_dup of a
 * keyed HMAC 53k, these copies 49k, which is what SHA-256 of the body alone costs.
 * Nothing here ever prints a secret. A set is reference-counted and immutable once
 * loaded: workers share it and a reload swaps in a new one; any thread may verify. */
#include "signature.h"

#include "config.h"

#include "log.h"
#include "mem.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#define SHA256_LEN 32

struct ab_secret {
    unsigned char *p;
    size_t len;
    EVP_MD_CTX *inner, *outer; /* SHA-256 after key^ipad, key^opad; NULL if OpenSSL refused */
};

struct ab_secrets {
    atomic_int refs;
    struct ab_secret *v;
    size_t n;
};

/* Pre-key the secret (RFC 2104): a key longer than the block is hashed first. */
static void keyed_new(struct ab_secret *sec)
{
    unsigned char key[64], pad[64];
    memset(key, 0, sizeof(key));
    if (sec->len > sizeof(key)) {
        SHA256(sec->p, sec->len, key);
    } else {
        memcpy(key, sec->p, sec->len);
    }
    EVP_MD_CTX *in = EVP_MD_CTX_new(), *out = EVP_MD_CTX_new();
    int ok = in && out;
    for (int i = 0; i < 64; i++) {
        pad[i] = key[i] ^ 0x36;
    }
    ok = ok && EVP_DigestInit_ex(in, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(in, pad, 64);
    for (int i = 0; i < 64; i++) {
        pad[i] = key[i] ^ 0x5c;
    }
    ok = ok && EVP_DigestInit_ex(out, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(out, pad, 64);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(pad, sizeof(pad));
    if (!ok) {
        EVP_MD_CTX_free(in);
        EVP_MD_CTX_free(out);
        in = out = NULL;
    }
    sec->inner = in;
    sec->outer = out;
}

/* Two scratch digest contexts per thread, freed when the thread exits. */
struct scratch {
    EVP_MD_CTX *in, *out;
};
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *arg)
{
    struct scratch *sc = arg;
    EVP_MD_CTX_free(sc->in);
    EVP_MD_CTX_free(sc->out);
    free(sc);
}

static void scratch_init(void)
{
    pthread_key_create(&scratch_key, scratch_free);
}

static struct scratch *scratch_get(void)
{
    pthread_once(&scratch_once, scratch_init);
    struct scratch *sc = pthread_getspecific(scratch_key);
    if (sc == NULL) {
        sc = ab_calloc(1, sizeof(*sc));
        sc->in = EVP_MD_CTX_new();
        sc->out = EVP_MD_CTX_new();
        pthread_setspecific(scratch_key, sc);
    }
    return sc;
}

/* Append a copy of bytes [p, p+len) to the set. */
static void secrets_add(struct ab_secrets *s, const char *p, size_t len)
{
    s->v = ab_realloc(s->v, (s->n + 1) * sizeof(*s->v));
    s->v[s->n].p = (unsigned char *)ab_strndup(p, len);
    s->v[s->n].len = len;
    keyed_new(&s->v[s->n]);
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
                        line, bom ? "a UTF-8 byte order mark" : "",
                        bom && (cr || blanks) ? ", " : "",
                        cr ? "a CR line end" : "", cr && blanks ? ", " : "",
                        blanks ? "trailing blanks" : "");
            }
            secrets_add(s, buf + start, m);
        }
        start = end;
    }
}

/* Add the secrets of file, one per line, to s. Returns 0, or -1 with a message naming the
 * file, never its contents, when it cannot be read. */
int ab_secrets_add_file(struct ab_secrets *s, const char *file, char *errstr, size_t errlen)
{
    FILE *fp = fopen(file, "rb");
    char *buf = NULL;
    size_t len = 0;
    int rc = -1;

    if (fp == NULL || read_all(fp, &buf, &len) != 0) {
        snprintf(errstr, errlen, "cannot read secret file %s: %s", file, strerror(errno));
        goto done;
    }
    secrets_add_lines(s, file, buf, len);
    rc = 0;
done:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
    if (fp != NULL) {
        fclose(fp);
    }
    return rc;
}

void ab_secrets_add(struct ab_secrets *s, const char *secret, size_t len)
{
    secrets_add(s, secret, len);
}

/* Load the secret set from file (may be NULL) and extra (may be NULL; trailing CR/LF
 * stripped, ignored when empty). Returns the set (possibly empty), or NULL with a message
 * naming the file, never its contents, when the file cannot be read. Start-up only. */
struct ab_secrets *ab_secrets_load(const char *file, const char *extra, char *errstr,
                                   size_t errlen)
{
    struct ab_secrets *s = ab_calloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    if (file != NULL && ab_secrets_add_file(s, file, errstr, errlen) != 0) {
        ab_secrets_free(s);
        return NULL;
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
    return s;
}

/* 1 when a and b hold a secret in common (compared in constant time per pair). */
int ab_secrets_overlap(const struct ab_secrets *a, const struct ab_secrets *b)
{
    int same = 0;
    for (size_t i = 0; a && b && i < a->n; i++) {
        for (size_t j = 0; j < b->n; j++) {
            same |= a->v[i].len == b->v[j].len &&
                    CRYPTO_memcmp(a->v[i].p, b->v[j].p, a->v[i].len) == 0;
        }
    }
    return same;
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
        EVP_MD_CTX_free(s->v[i].inner);
        EVP_MD_CTX_free(s->v[i].outer);
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

/* base64(HMAC-SHA256) of body from copies of the pre-keyed contexts; falls back to the
 * one-shot computation when the secret has none. */
static void keyed_compute(const struct ab_secret *sec, const void *body, size_t len,
                          char out[AB_SIGNATURE_B64_LEN + 1])
{
    static const unsigned char empty[1];
    unsigned char h[EVP_MAX_MD_SIZE], md[EVP_MAX_MD_SIZE];
    unsigned int hl = 0, ml = 0;
    struct scratch *sc = sec->inner ? scratch_get() : NULL;
    if (sc == NULL || sc->in == NULL || sc->out == NULL) {
        ab_signature_compute(sec->p, sec->len, body, len, out);
        return;
    }
    memset(out, 0, AB_SIGNATURE_B64_LEN + 1);
    if (EVP_MD_CTX_copy_ex(sc->in, sec->inner) == 1 &&
        EVP_DigestUpdate(sc->in, len ? body : empty, len) == 1 &&
        EVP_DigestFinal_ex(sc->in, h, &hl) == 1 && hl == SHA256_LEN &&
        EVP_MD_CTX_copy_ex(sc->out, sec->outer) == 1 && EVP_DigestUpdate(sc->out, h, hl) == 1 &&
        EVP_DigestFinal_ex(sc->out, md, &ml) == 1 && ml == SHA256_LEN) {
        EVP_EncodeBlock((unsigned char *)out, md, SHA256_LEN);
    }
    OPENSSL_cleanse(h, sizeof(h));
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

struct ab_secrets *ab_secrets_for_config(const struct ab_config *cfg, const char *env_secret,
                                         char *err, size_t errlen)
{
    if (cfg->institutions && env_secret && env_secret[0]) { /* "" is unset */
        snprintf(err, errlen, "--institutions gives every institution its own secrets: unset "
                              "ALMABRIDGE_SECRET");
        return NULL;
    }
    if (cfg->institutions) { /* the profiles hold the secrets (ab_institutions_start) */
        return ab_secrets_load(NULL, NULL, err, errlen);
    }
    struct ab_secrets *s = ab_secrets_load(cfg->secret_file, env_secret, err, errlen);
    if (s && ab_secrets_count(s) == 0 && !cfg->insecure_skip_signature) {
        snprintf(err, errlen,
                 "no webhook secret: give --secret-file or ALMABRIDGE_SECRET (the secret of the "
                 "Alma integration profile), or --insecure-skip-signature for testing");
        ab_secrets_free(s);
        return NULL;
    }
    return s;
}
