/* Body parsing and normalising. JSON: one strict pass that validates, minifies and finds
 * the envelope fields (no tree). XML (libxml2) becomes a cJSON tree of the shape the JSON
 * form has, so that a JSON and an XML integration profile give the same event.
 *
 * XML conversion rules (root <webhook> is the object):
 *   - an element with only text becomes a string ("true"/"false"/numbers stay strings);
 *   - an element with a `desc` attribute and text becomes {"value": text, "desc": desc};
 *   - an element with child elements becomes an object, other attributes become members;
 *   - an element that repeats under one parent becomes an array, in document order;
 *   - an empty element (<event/>) becomes null; namespaces are ignored (local names).
 * XML is parsed without DTD loading, entity substitution or network access
 * (XML_PARSE_NONET, no XML_PARSE_NOENT/DTDLOAD), with a depth bound; a document with a
 * DOCTYPE is refused. JSON nesting is bounded by AB_MAX_DEPTH. */
#ifndef AB_NORMALISE_H
#define AB_NORMALISE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#define AB_MAX_DEPTH 64
/* Levels our own CloudEvent line may nest beyond a body's: the event around the data. */
#define AB_LINE_EXTRA_DEPTH 2

/* What ab_normalise_json_scan() found: the kind of a JSON value and where its text is in
 * the minified output (a string with its quotes and escapes as sent). */
enum ab_json_kind {
    AB_JSON_ABSENT = 0,
    AB_JSON_STRING,
    AB_JSON_NUMBER,
    AB_JSON_OBJECT,
    AB_JSON_ARRAY,
    AB_JSON_LITERAL, /* true or false */
    AB_JSON_NULL,
};

struct ab_json_span {
    enum ab_json_kind kind;
    size_t off, len;
};

/* The envelope names, in the order of ab_json_envelope.field[]. */
enum ab_envelope_name { AB_ENV_ID, AB_ENV_ACTION, AB_ENV_EVENT, AB_ENV_INSTITUTION, AB_ENV_TIME,
                        AB_ENV_COUNT };

extern const char *const ab_envelope_names[AB_ENV_COUNT];

struct ab_json_envelope {
    enum ab_json_kind root;              /* kind of the top-level value */
    struct ab_json_span field[AB_ENV_COUNT]; /* first top-level member of each name */
    struct ab_json_span code[AB_ENV_COUNT];  /* for event and institution objects: their
                                                first "value" member */
    int repeated;                        /* first envelope name given twice, or -1 */
};

/* One pass over a JSON body (one leading UTF-8 byte order mark allowed): checks it is
 * strict RFC 8259 JSON (grammar, UTF-8, escapes and surrogate pairs, numbers, no raw
 * control characters, nesting at most AB_MAX_DEPTH), writes it without the whitespace
 * outside strings to out (room for len bytes; not NUL-terminated) and fills env (names
 * compared after unescaping: "\u0069d" is "id"). Returns the length written, or -1 with
 * the fault and its byte offset in errstr (never body content). Allocates nothing, except
 * briefly to unescape a short key that holds escapes. */
long ab_normalise_json_scan(const char *body, size_t len, char *out,
                            struct ab_json_envelope *env, char *errstr, size_t errlen);
/* The same with another nesting bound (at most AB_MAX_DEPTH + AB_LINE_EXTRA_DEPTH): for
 * reading back our own event line, whose data may nest AB_MAX_DEPTH levels. */
long ab_normalise_json_scan_depth(const char *body, size_t len, char *out,
                                  struct ab_json_envelope *env, int max_depth, char *errstr,
                                  size_t errlen);

/* The JSON string literal at s (n bytes, quotes included, valid as the scan checked it)
 * unescaped into a new NUL-terminated string; *outlen (if not NULL) gets its length, which
 * counts any NUL written for \u0000. */
char *ab_json_string_decode(const char *s, size_t n, size_t *outlen);

/* The one JSON string encoder: s[0..n) as the inside of a JSON string (no quotes) into out,
 * which has room for 6 * n bytes, escaped as cJSON escapes strings (", \, \b \f \n \r \t,
 * other control characters as \u00XX, every other byte as is). Returns the bytes written.
 * Used for the event line, the HTTP answers and the log lines alike. */
size_t ab_json_escape(char *out, const char *s, size_t n);

/* Parse a JSON body into a tree (the scan above, then cJSON on its output), for callers
 * that need one (tests, fuzz checks). Returns a new tree owned by the caller, or NULL for
 * malformed input or nesting deeper than AB_MAX_DEPTH (reason in errstr). */
cJSON *ab_normalise_json(const char *body, size_t len, char *errstr, size_t errlen);

/* Parse an XML body and convert it with the rules above. Returns a new tree owned by the
 * caller, or NULL for malformed, DOCTYPE-carrying or too deep input (reason in errstr). */
cJSON *ab_normalise_xml(const char *body, size_t len, char *errstr, size_t errlen);

/* Once per process, before threads start (libxml2 global initialisation). */
void ab_normalise_init(void);

#endif
