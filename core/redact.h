/* Redaction: members removed from an event's data before it is written to any sink
 * (--redact). A path is JSONPath rooted at the data (the webhook as Alma sent it):
 *
 *   $.webhook_user.user.pin_number        one member
 *   $.webhook_user.user.contact_info.address[*].line1   every element of an array
 *   $..pin_number                         a member of that name at any depth
 *   $.a.*.b  $['a b']  $.a[0]             any member, a quoted name, an array index
 *
 * The default set (ab_redact_default) is "$..pin_number" and "$..password": the patron's
 * PIN and password, at any depth, in every event type. Names are compared after unescaping.
 *
 * Works on minified JSON text (what core/event.c builds "data" from), so numbers keep every
 * digit and members their order; the member is removed with its comma. Compiled once at
 * start-up, immutable, shared by every thread. */
#ifndef AB_REDACT_H
#define AB_REDACT_H

#include <stddef.h>

struct ab_redact;

/* The paths (strings as above) compiled; "none" alone means no redaction (returns NULL
 * without error). NULL with one line in errstr for a path that does not parse. */
struct ab_redact *ab_redact_compile(const char *const *paths, size_t n, char *errstr,
                                    size_t errlen);
extern const char *const ab_redact_default[2];
/* --redact as configured: paths (n of them; none given: ab_redact_default) compiled into
 * *out, NULL for "none". Returns 0, or -1 with one line in errstr. */
int ab_redact_configured(const char *const *paths, size_t n, struct ab_redact **out,
                         char *errstr, size_t errlen);
void ab_redact_free(struct ab_redact *r);

/* Remove what r names from the minified JSON text in (n bytes, valid JSON as the
 * normaliser wrote it) into out (room for n bytes). Returns the new length; 0 removed
 * members leave out a copy of in. *removed (if not NULL) gets the number of members
 * removed. r NULL: a copy. */
size_t ab_redact_apply(const struct ab_redact *r, const char *in, size_t n, char *out,
                       size_t *removed);

/* Whether r could remove anything from in: a quick test, so that text without any of the
 * names is not copied. 1 also when unsure. */
int ab_redact_may_apply(const struct ab_redact *r, const char *in, size_t n);

/* ---- walking minified JSON text (also used for the record's identity) --------------- */

/* Index just past the JSON value that starts at s[i] (valid JSON; whitespace ends a number
 * or literal). */
size_t ab_json_skip(const char *s, size_t n, size_t i);
/* The value of the member named by the path keys[0..nkeys) (each an object member) below
 * the object at s: its offset in *off and length in *len; 0, or -1 when absent. */
int ab_json_find(const char *s, size_t n, const char *const *keys, int nkeys, size_t *off,
                 size_t *len);

#endif
