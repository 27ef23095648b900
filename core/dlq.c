/* The dead letter's read side (dlq.h). */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "event.h"
#include "mem.h"
#include "signature.h"
#include "webhook.h"

/* Standard base64 (with padding, as EVP_EncodeBlock writes it) into a new buffer; NULL
 * when text is not that. */
static char *b64_decode(const char *text, size_t *len)
{
    size_t n = strlen(text);
    if (n % 4 != 0) {
        return NULL;
    }
    char *out = ab_malloc(n / 4 * 3 + 1);
    int got = n ? EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)text, (int)n) : 0;
    if (got < 0) {
        free(out);
        return NULL;
    }
    size_t pad = n >= 1 && text[n - 1] == '=' ? 1 + (n >= 2 && text[n - 2] == '=') : 0;
    *len = (size_t)got - pad;
    return out;
}

int ab_dlq_process(const char *line, size_t len, const struct ab_secrets *secrets,
                   const struct ab_event_opts *opts, const char *ctype, struct ab_event **out,
                   char *id, size_t idlen, char *why, size_t whylen)
{
    char *type = AB_EVENT_LINE_TEXT(line, len, "type");
    char *rid = AB_EVENT_LINE_TEXT(line, len, "id");
    char *b64 = AB_EVENT_LINE_TEXT(line, len, "data_base64");
    char *sig = AB_EVENT_LINE_TEXT(line, len, "almasignature");
    char *ct = ctype ? NULL : AB_EVENT_LINE_TEXT(line, len, "almacontenttype");
    char *body = NULL, msg[256];
    size_t blen = 0;
    int rc;
    *out = NULL;
    snprintf(id, idlen, "%s", rid ? rid : "");
    if (type == NULL || strcmp(type, AB_DLQ_TYPE) != 0) {
        snprintf(why, whylen, "not a dead letter (a CloudEvent of type %s)", AB_DLQ_TYPE);
        rc = AB_DLQ_NOT_DEAD_LETTER;
    } else if (b64 == NULL || (body = b64_decode(b64, &blen)) == NULL) {
        snprintf(why, whylen, "a dead letter without its body (data_base64 missing or not "
                              "base64)");
        rc = AB_DLQ_DAMAGED;
    } else if (!ab_signature_verify(secrets, sig, body, blen)) {
        snprintf(why, whylen, "%s", sig ? "its signature does not verify under any configured "
                                          "secret"
                                        : "it has no signature (almasignature)");
        rc = AB_DLQ_UNSIGNED;
    } else {
        const char *use = ctype ? ctype : ct;
        int fmt = ab_webhook_body_format(use, body, blen);
        if (fmt < 0) {
            snprintf(why, whylen, "415: Content-Type %s is neither JSON nor XML",
                     use ? use : "(none)");
            rc = AB_DLQ_STILL_FAILING;
        } else if ((rc = ab_event_build(fmt, body, blen, opts, out, msg, sizeof(msg))) !=
                   AB_EVENT_OK) {
            snprintf(why, whylen, "%d: %s", rc == AB_EVENT_MALFORMED ? 400 : 422, msg);
            rc = AB_DLQ_STILL_FAILING;
        } else {
            rc = AB_DLQ_EVENT;
        }
    }
    free(type);
    free(rid);
    free(b64);
    free(sig);
    free(ct);
    free(body);
    return rc;
}
