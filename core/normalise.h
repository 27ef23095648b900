/* Body parsing and normalising: JSON (cJSON) and XML (libxml2) to one cJSON tree of the
 * same shape, so that a JSON and an XML integration profile give the same event.
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

/* Parse a JSON body. Returns a new tree owned by the caller, or NULL for malformed input
 * or nesting deeper than AB_MAX_DEPTH (reason in errstr). */
cJSON *ab_normalise_json(const char *body, size_t len, char *errstr, size_t errlen);

/* Parse an XML body and convert it with the rules above. Returns a new tree owned by the
 * caller, or NULL for malformed, DOCTYPE-carrying or too deep input (reason in errstr). */
cJSON *ab_normalise_xml(const char *body, size_t len, char *errstr, size_t errlen);

/* Once per process, before threads start (libxml2 global initialisation). */
void ab_normalise_init(void);

#endif
