/* Routing templates: "alma.{action}" -> "alma.loan". Placeholders {action} {event}
 * {institution} {id} {record} ({record}: the event's partitionkey, "loan/<loan id>", see
 * core/event.h) expand in lower case; an absent value expands to "none". Characters
 * outside [a-z0-9._:-] in an expansion become '_', so a topic or stream name is always
 * legal. An unknown placeholder or an unbalanced brace is a compile error. */
#ifndef AB_ROUTE_H
#define AB_ROUTE_H

#include <stddef.h>

struct ab_event;
struct ab_route; /* opaque, immutable once compiled; shareable between threads */

struct ab_route *ab_route_compile(const char *tmpl, char *errstr, size_t errlen);
/* Expand for one event; the result is a new string owned by the caller. */
char *ab_route_expand(const struct ab_route *r, const struct ab_event *ev);
/* The same with every placeholder's value as it is (case kept, nothing replaced; an absent
 * value is still "none"): for message keys, where "{id}" must be the id unchanged. */
char *ab_route_expand_raw(const struct ab_route *r, const struct ab_event *ev);
void ab_route_free(struct ab_route *r);

#endif
