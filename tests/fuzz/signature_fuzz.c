/* libFuzzer driver: the X-Exl-Signature header check. The input is split at its first
 * newline into a header value and a body. Checks, for every input:
 *   - ab_signature_verify() answers 0 or 1 for the fuzzed header (never crashes, never
 *     reads past the body);
 *   - it answers 1 only for the body's real signature (blanks around it allowed);
 *   - the real signature, computed here, always verifies, also with blanks around it, and
 *     stops verifying when any one of its characters changes (checked for one input in
 *     eight: every HMAC is most of an execution's cost). */
#include "signature.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char secret[] = "fuzz-secret";

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
    }
}

/* The header value without the blanks the check ignores around it. */
static size_t trimmed(const char *h, size_t n, const char **start)
{
    while (n > 0 && (*h == ' ' || *h == '\t')) {
        h++;
        n--;
    }
    while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t')) {
        n--;
    }
    *start = h;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ab_secrets *secrets;
    if (secrets == NULL) {
        char err[256];
        secrets = ab_secrets_load(NULL, secret, err, sizeof(err));
        check(secrets != NULL, "secrets load");
    }
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl != NULL ? (size_t)(nl - data) : size;
    size_t blen = nl != NULL ? size - hlen - 1 : 0;
    /* the header as evhttp hands it over: NUL-terminated (stops at an embedded NUL); the
     * body in a buffer of exactly its length, so ASan sees any read past it */
    char *header = malloc(hlen + 1);
    uint8_t *body = malloc(blen ? blen : 1);
    memcpy(header, data, hlen);
    header[hlen] = '\0';
    memcpy(body, nl != NULL ? nl + 1 : data, blen);

    char real[AB_SIGNATURE_B64_LEN + 1];
    ab_signature_compute(secret, strlen(secret), body, blen, real);
    check(strlen(real) == AB_SIGNATURE_B64_LEN, "signature length");

    int rc = ab_signature_verify(secrets, header, body, blen);
    check(rc == 0 || rc == 1, "0 or 1");
    const char *t;
    size_t tlen = trimmed(header, strlen(header), &t);
    if (rc == 1) {
        check(tlen == AB_SIGNATURE_B64_LEN && memcmp(t, real, tlen) == 0,
              "accepted only the real signature");
    }

    if ((hlen + blen) % 8 != 0) {
        goto done;
    }
    check(ab_signature_verify(secrets, real, body, blen) == 1, "the real signature verifies");
    char padded[AB_SIGNATURE_B64_LEN + 5];
    snprintf(padded, sizeof(padded), " \t%s\t ", real);
    check(ab_signature_verify(secrets, padded, body, blen) == 1, "blanks around are ignored");
    size_t at = hlen % AB_SIGNATURE_B64_LEN;
    real[at] = real[at] == 'A' ? 'B' : 'A';
    check(ab_signature_verify(secrets, real, body, blen) == 0, "one changed character fails");

done:
    free(header);
    free(body);
    return 0;
}
