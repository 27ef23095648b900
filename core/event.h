/* The normalised webhook: one CloudEvents 1.0 event in structured JSON mode.
 *
 *   {"specversion":"1.0","id":"<webhook id>","source":"urn:alma:<institution>",
 *    "type":"com.exlibrisgroup.alma.<action>[.<event>]","subject":"<record id>",
 *    "time":"<webhook time>","datacontenttype":"application/json",
 *    "dataschema":"<base>loan.json","partitionkey":"loan/<loan id>",
 *    "traceparent":"00-<trace id>-<span id>-01","tracestate":"...",
 *    "almaaction":"LOAN","almaevent":"LOAN_CREATED","almainstitution":"01ABC_INST",
 *    "data":{...the webhook as JSON, redacted...}}
 *
 * The record's identity (docs/CLOUDEVENTS.md has the table): `subject` is the id of the
 * record the event is about (MMS id, item PID, loan id, ...) and `partitionkey` is
 * "<kind>/<that id>", or "webhook/<webhook id>" for events about no single record. Both
 * are read from the data after redaction. dataschema, traceparent and tracestate are
 * present when the options ask for them (struct ab_event_opts).
 *
 * Every attribute is valid for the CloudEvents spec whatever the webhook holds: `time` is
 * RFC 3339 (converted from the forms Alma writes; a time that cannot be converted is left
 * out and kept as sent in the extension `almatime`), `source` a URI with the institution
 * code percent-encoded, `type` only [a-z0-9._-] (other characters become '_'). The values
 * as sent stay in `data` and in almaaction/almaevent/almainstitution. An id holding a
 * control character, and an envelope that repeats id, action, event, institution or time,
 * are refused as malformed (400).
 *
 * Built from a request body by ab_event_from_body(); all strings are owned by the event
 * and freed by ab_event_free(). Pure functions, callable from any thread. */
#ifndef AB_EVENT_H
#define AB_EVENT_H

#include <stddef.h>
#include <stdint.h>

enum ab_body_format { AB_FORMAT_JSON, AB_FORMAT_XML };

enum ab_event_err {
    AB_EVENT_OK = 0,
    AB_EVENT_MALFORMED = 1,   /* not well-formed JSON/XML, over the depth bound, a repeated
                                 envelope field or a control character in the id: 400 */
    AB_EVENT_NOT_WEBHOOK = 2, /* well-formed but not an object with id and action: 422 */
};

#define AB_EVENT_MAX_EXT 8 /* extension attributes kept beyond the known ones */

struct ab_event {
    char *id;          /* the webhook id, digits as sent (a JSON number is printed as integer) */
    char *action;      /* as sent, e.g. "LOAN" */
    char *event;       /* event code as sent, e.g. "LOAN_CREATED"; NULL when absent/null */
    char *institution; /* institution code; NULL when absent */
    char *time;        /* webhook time in RFC 3339; NULL when absent or not convertible */
    char *almatime;    /* webhook time as sent when it could not be converted, else NULL */
    char *type;        /* com.exlibrisgroup.alma.<action>[.<event>], lower case [a-z0-9._-] */
    char *source;      /* urn:alma:<institution percent-encoded> ("urn:alma:unknown") */
    char *subject;      /* the record's id, or the webhook id (see above) */
    char *partitionkey; /* "<kind>/<record id>": the record's identity, {record} */
    char *dataschema;   /* <schema base><action>.json; NULL without a base */
    char *traceparent;  /* W3C trace context of the request, or a new one; NULL: none */
    char *tracestate;   /* the request's tracestate, carried with its traceparent */
    char *json;         /* the CloudEvent, one line of JSON, NUL-terminated */
    size_t json_len;
    size_t data_off, data_len; /* the bytes of "data" in json */
    /* extension attributes of a line read back (ab_event_from_line) that the fields above
     * do not hold, e.g. almaorigin of a reconciled JOB_END: carried into binary mode */
    char *ext_name[AB_EVENT_MAX_EXT], *ext_value[AB_EVENT_MAX_EXT];
    unsigned n_ext;
};

/* One CloudEvents attribute (context attribute or extension), for the binary content
 * modes: every attribute of an event except data, in the order of the JSON line. */
struct ab_attr {
    const char *name;
    const char *value;
};
#define AB_EVENT_MAX_ATTRS 24

struct ab_redact;

/* How ab_event_build() makes the event. All may be NULL. */
struct ab_event_opts {
    const struct ab_redact *redact; /* members removed from data (core/redact.h) */
    const char *schema_base;        /* dataschema = schema_base + <schema name> */
    const char *traceparent;        /* the request's, already checked (ab_event_trace) */
    const char *tracestate;
};

/* Parse a body (JSON or XML), check it is a webhook and build its CloudEvent.
 * On success returns AB_EVENT_OK and *out owns a new event; otherwise returns the error
 * class and writes a message a person can act on into errstr (never body content). */
int ab_event_from_body(enum ab_body_format fmt, const char *body, size_t len,
                       struct ab_event **out, char *errstr, size_t errlen);

/* The same with options; ab_event_from_body() is this with opts NULL. */
int ab_event_build(enum ab_body_format fmt, const char *body, size_t len,
                   const struct ab_event_opts *opts, struct ab_event **out, char *errstr,
                   size_t errlen);

void ab_event_free(struct ab_event *ev);

/* The event's attributes (all but data) into out (AB_EVENT_MAX_ATTRS); returns how many. */
size_t ab_event_attrs(const struct ab_event *ev, struct ab_attr *out);

/* The CloudEvent JSON line for attributes and data (JSON text, data_len bytes), as a
 * binary-mode message carries them (Kafka ce_ headers, Redis fields): the inverse of the
 * binary modes, for readers. Attribute names are taken as given (lower case). Returns a
 * new NUL-terminated string and its length in *len. */
char *ab_event_line_from_attrs(const struct ab_attr *attrs, size_t n, const char *data,
                               size_t data_len, size_t *len);

/* The schema name (without base) of an action: "loan.json", ... "webhook.json". */
const char *ab_event_schema_name(const char *action);

/* The W3C traceparent for a request into out (56 bytes): the request's header tp when it
 * is valid (a version above 00 is written as 00), else a new random one (sampled).
 * Returns 1 when carried, 0 when generated. */
int ab_event_trace(const char *tp, char out[56]);
/* A tracestate header worth carrying (at most 512 printable ASCII characters), or NULL. */
const char *ab_event_tracestate(const char *ts);

/* Convert a webhook time to RFC 3339 into out (at most outlen bytes with the NUL).
 * Accepted: YYYY-MM-DD, then optionally 'T' or ' ' and HH:MM[:SS[.fraction]], then
 * optionally a zone (Z, UTC, GMT, +HH, +HH:MM, +HHMM; a space before it is allowed), and
 * the day-first DD/MM/YYYY (or DD.MM.YYYY) with the same optional time and zone. No zone
 * means UTC; no time means midnight. Returns 0, or -1 when in is none of these or names no
 * real date/time (month 13, 30 February, 24:00, a leap second). */
int ab_event_rfc3339(const char *in, char *out, size_t outlen);

/* ---- The reader of the line the writer above produces (one codec, both directions) ---- */

/* Read a CloudEvent line (the file sink's and the spool's lines, the brokers' values) back
 * into a new event: every attribute it holds (id, type, source, subject, time, almatime,
 * dataschema, partitionkey, traceparent, tracestate, the Alma extensions almaaction,
 * almaevent, almainstitution as action, event, institution, and up to AB_EVENT_MAX_EXT
 * other extension attributes), data's place in the line; json is a copy of the line. A
 * missing type or source gets the writer's generic value; the record's identity is derived
 * from data when the line has none (written by an older version). Returns AB_EVENT_OK and *out,
 * AB_EVENT_MALFORMED (not strict JSON: damaged or foreign bytes) or AB_EVENT_NOT_WEBHOOK
 * (not an object with a non-empty string id), with a reason in errstr (never content). */
int ab_event_from_line(const char *line, size_t len, struct ab_event **out, char *errstr,
                       size_t errlen);

/* The text of the value at path (depth member names) in a well-formed CloudEvent line: a
 * string unescaped, a number as written (every digit of a 17-digit id), an object's
 * "value" member (Alma's {"value":..,"desc":..} codes); NULL when absent or of another
 * kind. Caller frees. */
char *ab_event_line_text(const char *line, size_t len, const char *const *path, size_t depth);
#define AB_EVENT_LINE_TEXT(line, len, ...)                                                    \
    ab_event_line_text((line), (len), (const char *const[]){__VA_ARGS__},                    \
                       sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* A time in any form ab_event_rfc3339() accepts (an RFC 3339 time in particular) as
 * milliseconds since the epoch; -1 when it is none. */
int64_t ab_event_time_ms(const char *in);

#endif
