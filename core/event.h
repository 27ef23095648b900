/* The normalised webhook: one CloudEvents 1.0 event in structured JSON mode.
 *
 *   {"specversion":"1.0","id":"<webhook id>","source":"urn:alma:<institution>",
 *    "type":"com.exlibrisgroup.alma.<action>[.<event>]","time":"<webhook time>",
 *    "datacontenttype":"application/json","almaaction":"LOAN","almaevent":"LOAN_CREATED",
 *    "almainstitution":"01ABC_INST","data":{...the webhook as JSON...}}
 *
 * Built from a request body by ab_event_from_body(); all strings are owned by the event
 * and freed by ab_event_free(). Pure functions, callable from any thread. */
#ifndef AB_EVENT_H
#define AB_EVENT_H

#include <stddef.h>

enum ab_body_format { AB_FORMAT_JSON, AB_FORMAT_XML };

enum ab_event_err {
    AB_EVENT_OK = 0,
    AB_EVENT_MALFORMED = 1,   /* not well-formed JSON/XML, or over the depth bound: 400 */
    AB_EVENT_NOT_WEBHOOK = 2, /* well-formed but not an object with id and action: 422 */
};

struct ab_event {
    char *id;          /* the webhook id, digits as sent (a JSON number is printed as integer) */
    char *action;      /* as sent, e.g. "LOAN" */
    char *event;       /* event code as sent, e.g. "LOAN_CREATED"; NULL when absent/null */
    char *institution; /* institution code; NULL when absent */
    char *time;        /* webhook time as sent; NULL when absent */
    char *type;        /* com.exlibrisgroup.alma.<action>[.<event>], lower case */
    char *source;      /* urn:alma:<institution> ("urn:alma:unknown" without one) */
    char *json;        /* the CloudEvent, one line of JSON, NUL-terminated */
    size_t json_len;
};

/* Parse a body (JSON or XML), check it is a webhook and build its CloudEvent.
 * On success returns AB_EVENT_OK and *out owns a new event; otherwise returns the error
 * class and writes a message a person can act on into errstr (never body content). */
int ab_event_from_body(enum ab_body_format fmt, const char *body, size_t len,
                       struct ab_event **out, char *errstr, size_t errlen);

void ab_event_free(struct ab_event *ev);

#endif
