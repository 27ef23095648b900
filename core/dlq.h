/* The dead letter's read side: a dead-letter record (written by core/webhook.c, see
 * docs/INTEGRITY.md) processed again the way the webhook path processes a request, after a
 * fix: its signature checked against the secrets, its body normalised by the same
 * functions (ab_webhook_body_format, ab_event_build). Pure; any thread. */
#ifndef AB_DLQ_H
#define AB_DLQ_H

#include <stddef.h>

struct ab_event;
struct ab_event_opts;
struct ab_secrets;

#define AB_DLQ_TYPE "com.exlibrisgroup.alma.deadletter"

enum ab_dlq_result {
    AB_DLQ_EVENT = 0,          /* the body now makes an event: *out */
    AB_DLQ_NOT_DEAD_LETTER = 1, /* not a CloudEvent of type AB_DLQ_TYPE */
    AB_DLQ_DAMAGED = 2,        /* a dead letter without a body (data_base64) that decodes */
    AB_DLQ_UNSIGNED = 3,       /* its almasignature does not verify under the secrets */
    AB_DLQ_STILL_FAILING = 4,  /* signed, but the body still cannot become an event */
};

/* Process the record line (len bytes). ctype: the Content-Type to take the body as
 * (NULL: the one it arrived with, almacontenttype). opts: as the daemon builds events
 * (--redact, --dataschema-base, a traceparent). Returns one of enum ab_dlq_result; for
 * AB_DLQ_EVENT *out owns the new event. The record's id goes to id (idlen bytes, "" when
 * it has none) and a reason a person can act on to why (never body content), for every
 * result but AB_DLQ_EVENT. */
int ab_dlq_process(const char *line, size_t len, const struct ab_secrets *secrets,
                   const struct ab_event_opts *opts, const char *ctype, struct ab_event **out,
                   char *id, size_t idlen, char *why, size_t whylen);

#endif
