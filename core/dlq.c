/* The dead letter's read side (dlq.h). */
#include "dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "event.h"
#include "institutions.h"
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

/* The code of the institution a record is bound to, as shown in a message: the record's
 * own when it is a valid code, else a placeholder (a record is data, not trusted text). */
static const char *shown(const char *code)
{
    return code == NULL ? "(none)" : ab_institutions_code_valid(code) ? code : "(not a valid code)";
}

/* Is body signed (sig) as the live path requires? With one pool: under any of its secrets.
 * In consortium mode: under the own secrets of the record's institution (code), which must
 * have a profile (*inst set). Returns AB_DLQ_EVENT when it is, else the result with why. */
static int check_signed(const struct ab_dlq_keys *keys, const char *code, const char *sig,
                        const char *body, size_t blen, const struct ab_institution **inst,
                        char *why, size_t whylen)
{
    if (keys->insts == NULL) {
        if (ab_signature_verify(keys->secrets, sig, body, blen)) {
            return AB_DLQ_EVENT;
        }
        snprintf(why, whylen, "%s", sig ? "its signature does not verify under any configured "
                                          "secret"
                                        : "it has no signature (almasignature)");
        return AB_DLQ_UNSIGNED;
    }
    if (code == NULL || (*inst = ab_institutions_find(keys->insts, code)) == NULL) {
        snprintf(why, whylen, code ? "it is bound to institution %s, which has no profile in "
                                     "--institutions"
                                   : "it names no institution (almainstitution: stored without "
                                     "--institutions)%s",
                 code ? shown(code) : "");
        return AB_DLQ_UNBOUND;
    }
    struct ab_inst_budget budget = {0}; /* one record: a full second's worth to classify */
    const struct ab_institution *signer = NULL;
    switch (ab_institutions_verify(keys->insts, *inst, sig, body, blen, &budget, &signer)) {
    case AB_INST_VALID:
        return AB_DLQ_EVENT;
    case AB_INST_FORGERY:
        snprintf(why, whylen, "it is bound to institution %s but signed with the secret of "
                              "institution %s", code, ab_institution_code(signer));
        break;
    default:
        snprintf(why, whylen, sig ? "its signature does not verify under the secrets of "
                                    "institution %s"
                                  : "it has no signature (almasignature)%s",
                 sig ? code : "");
        break;
    }
    *inst = NULL;
    return AB_DLQ_UNSIGNED;
}

/* Consortium mode: the event must name the institution its dead letter was bound to, as
 * the webhook path requires of the URL's institution and the body's (else 401): what one
 * member signed is never published as another's. */
static int check_bound(const struct ab_event *ev, const char *code, char *why, size_t whylen)
{
    if (ev->institution != NULL && strcmp(ev->institution, code) == 0) {
        return AB_DLQ_EVENT;
    }
    snprintf(why, whylen, "it is bound to institution %s but its webhook names %s", code,
             ev->institution ? shown(ev->institution) : "no institution");
    return AB_DLQ_UNBOUND;
}

int ab_dlq_process(const char *line, size_t len, const struct ab_dlq_keys *keys,
                   const struct ab_event_opts *opts, const char *ctype, struct ab_dlq_out *out)
{
    char *type = AB_EVENT_LINE_TEXT(line, len, "type");
    char *rid = AB_EVENT_LINE_TEXT(line, len, "id");
    char *b64 = AB_EVENT_LINE_TEXT(line, len, "data_base64");
    char *sig = AB_EVENT_LINE_TEXT(line, len, "almasignature");
    char *ct = ctype ? NULL : AB_EVENT_LINE_TEXT(line, len, "almacontenttype");
    char *code = keys->insts ? AB_EVENT_LINE_TEXT(line, len, "almainstitution") : NULL;
    char *body = NULL, msg[256], *why = out->why;
    size_t blen = 0, whylen = sizeof(out->why);
    int rc;
    out->ev = NULL;
    out->inst = NULL;
    out->why[0] = '\0';
    snprintf(out->id, sizeof(out->id), "%s", rid ? rid : "");
    if (type == NULL || strcmp(type, AB_DLQ_TYPE) != 0) {
        snprintf(why, whylen, "not a dead letter (a CloudEvent of type %s)", AB_DLQ_TYPE);
        rc = AB_DLQ_NOT_DEAD_LETTER;
    } else if (b64 == NULL || (body = b64_decode(b64, &blen)) == NULL) {
        snprintf(why, whylen, "a dead letter without its body (data_base64 missing or not "
                              "base64)");
        rc = AB_DLQ_DAMAGED;
    } else if ((rc = check_signed(keys, code, sig, body, blen, &out->inst, why, whylen)) !=
               AB_DLQ_EVENT) {
        /* reported */
    } else {
        const char *use = ctype ? ctype : ct;
        int fmt = ab_webhook_body_format(use, body, blen);
        if (fmt < 0) {
            snprintf(why, whylen, "415: Content-Type %s is neither JSON nor XML",
                     use ? use : "(none)");
            rc = AB_DLQ_STILL_FAILING;
        } else if ((rc = ab_event_build(fmt, body, blen, opts, &out->ev, msg, sizeof(msg))) !=
                   AB_EVENT_OK) {
            snprintf(why, whylen, "%d: %s", rc == AB_EVENT_MALFORMED ? 400 : 422, msg);
            rc = AB_DLQ_STILL_FAILING;
        } else if (keys->insts && (rc = check_bound(out->ev, code, why, whylen)) != 0) {
            ab_event_free(out->ev);
            out->ev = NULL;
        } else {
            rc = AB_DLQ_EVENT;
        }
    }
    if (rc != AB_DLQ_EVENT) {
        out->inst = NULL;
    }
    free(type);
    free(rid);
    free(b64);
    free(sig);
    free(ct);
    free(code);
    free(body);
    return rc;
}
