/* The dead letter's read side: a dead-letter record (written by core/webhook.c, see
 * docs/INTEGRITY.md) processed again the way the webhook path processes a request, after a
 * fix: its signature checked against the secrets, its body normalised by the same
 * functions (ab_webhook_body_format, ab_event_build). Pure; any thread. */
#ifndef AB_DLQ_H
#define AB_DLQ_H

#include <stddef.h>

struct ab_event;
struct ab_event_opts;
struct ab_institution;
struct ab_institutions;
struct ab_secrets;

#define AB_DLQ_TYPE "com.exlibrisgroup.alma.deadletter"

enum ab_dlq_result {
    AB_DLQ_EVENT = 0,          /* the body now makes an event: out->ev */
    AB_DLQ_NOT_DEAD_LETTER = 1, /* not a CloudEvent of type AB_DLQ_TYPE */
    AB_DLQ_DAMAGED = 2,        /* a dead letter without a body (data_base64) that decodes */
    AB_DLQ_UNSIGNED = 3,       /* its almasignature does not verify under the secrets (in
                                  consortium mode: under its institution's own secrets) */
    AB_DLQ_STILL_FAILING = 4,  /* signed, but the body still cannot become an event */
    AB_DLQ_UNBOUND = 5,        /* consortium mode: bound to no institution with a profile
                                  (no almainstitution, an unknown one), or the event it now
                                  makes names another institution than the one it was bound
                                  to (the webhook path refuses that: 401) */
};

/* What the dead letter's signatures are checked against: one pool of secrets, or (insts
 * not NULL, consortium mode) the profiles, each record under the secrets of the institution
 * it was bound to when it was stored (its almainstitution), as the webhook path checks it
 * (ab_institutions_verify). */
struct ab_dlq_keys {
    const struct ab_secrets *secrets;
    const struct ab_institutions *insts;
};

struct ab_dlq_out {
    struct ab_event *ev;               /* AB_DLQ_EVENT: the new event (the caller frees it) */
    const struct ab_institution *inst; /* AB_DLQ_EVENT in consortium mode: its institution,
                                          owned by insts (its route: ab_institution_route) */
    char id[128];                      /* the record's id ("" when it has none) */
    char why[320]; /* for every result but AB_DLQ_EVENT: a reason a person can act on (never
                      body content) */
};

/* Process the record line (len bytes). ctype: the Content-Type to take the body as
 * (NULL: the one it arrived with, almacontenttype). opts: as the daemon builds events
 * (--redact, --dataschema-base, a traceparent). Returns one of enum ab_dlq_result, out
 * filled in. */
int ab_dlq_process(const char *line, size_t len, const struct ab_dlq_keys *keys,
                   const struct ab_event_opts *opts, const char *ctype, struct ab_dlq_out *out);

#endif
