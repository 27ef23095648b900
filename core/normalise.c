/* Body parsing: JSON through cJSON, XML through libxml2, both to one cJSON tree.
 *
 * JSON. cJSON 1.7.15 is lenient in ways that would let a body through that is not JSON
 * (leading zeros, "1.", raw control characters in strings, invalid UTF-8), and the event
 * builder copies a JSON body into the CloudEvent byte for byte, so everything cJSON lets
 * through must already be strict JSON. A linear pre-scan therefore checks the lexical
 * level (strings, escapes, UTF-8, numbers, stray control characters) and the nesting depth
 * before cJSON builds the tree; cJSON then checks the grammar.
 *
 * XML. Parsed by libxml2 with a new parser context per call (thread-safe once
 * ab_normalise_init() has run), without entity substitution, DTD loading or network
 * access. The context's SAX handler is patched so that a DOCTYPE stops the parse before
 * any declaration in it is read (no entity expansion, no external subset, no XXE) and so
 * that elements deeper than AB_MAX_DEPTH stop it too. Errors go to the context's
 * structured error handler (and, for the few libxml2 raises without a context, to this
 * thread's handler, swapped in for the parse), which keep the first one and print nothing.
 * Messages in errstr name the fault and its position, never text from the body.
 *
 * Conversion, beyond the rules in normalise.h: any attribute, not only `desc`, turns a
 * text element into {"value": text, attribute: value...} (<holdings link="/x"/> gives
 * {"value": "", "link": "/x"}); text beside child elements is kept as "value" unless it is
 * only layout whitespace; xsi:nil="true" gives null and other xsi: attributes are dropped;
 * comments and processing instructions are ignored; a name that is both an attribute and a
 * child (or "value" and text) becomes an array like any repeated name. Text is kept exactly,
 * CDATA sections included; only whitespace between child elements is dropped.
 *
 * XML text never becomes a number or a boolean: <progress>100</progress> gives "100" where
 * the JSON form has 100, and an empty element is null where JSON may have "" or []. This is
 * accepted: consumers that need numbers from XML bodies convert themselves. The envelope
 * fields (id, action, event, institution, time) are strings in both forms and come out
 * identical. */
#include "normalise.h"

#include "mem.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#define XSI_NS "http://www.w3.org/2001/XMLSchema-instance"

static void set_err(char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errstr, size_t errlen, const char *fmt, ...)
{
    if (errstr == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errlen, fmt, ap);
    va_end(ap);
}

void ab_normalise_init(void)
{
    /* cJSON returns NULL when malloc fails; route it through ab_malloc so that a NULL
     * from cJSON always means bad input, as for every other allocation here. */
    static cJSON_Hooks hooks = {.malloc_fn = ab_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    xmlInitParser();
}

/* ---- JSON ----------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at p (at most avail bytes), or 0 when it is
 * not one: overlong forms, surrogates and code points above U+10FFFF are refused. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80) {
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return n;
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Check the string whose opening quote is at *i; on success *i is past the closing quote.
 * Returns NULL or a description of the fault (with *i at it). */
static const char *scan_string(const unsigned char *p, size_t n, size_t *i)
{
    size_t k = *i + 1;
    while (k < n && p[k] != '"') {
        if (p[k] == '\\') {
            if (k + 1 >= n || p[k + 1] == '\0' || strchr("\"\\/bfnrtu", p[k + 1]) == NULL) {
                *i = k;
                return "JSON string has an invalid escape";
            }
            if (p[k + 1] == 'u' && (k + 5 >= n || !is_hex(p[k + 2]) || !is_hex(p[k + 3]) ||
                                    !is_hex(p[k + 4]) || !is_hex(p[k + 5]))) {
                *i = k;
                return "JSON string has an invalid \\u escape";
            }
            k += p[k + 1] == 'u' ? 6 : 2;
        } else if (p[k] < 0x20) {
            *i = k;
            return "JSON string holds a raw control character";
        } else {
            size_t l = utf8_len(p + k, n - k);
            if (l == 0) {
                *i = k;
                return "JSON string is not valid UTF-8";
            }
            k += l;
        }
    }
    if (k >= n) {
        return "JSON string is not terminated";
    }
    *i = k + 1;
    return NULL;
}

/* Check the number starting at *i against RFC 8259 (no leading zeros, digits after '.'
 * and after the exponent); on success *i is past it. */
static const char *scan_number(const unsigned char *p, size_t n, size_t *i)
{
    size_t k = *i;
    if (k < n && p[k] == '-') {
        k++;
    }
    if (k < n && p[k] == '0') {
        k++;
    } else if (k < n && is_digit(p[k])) {
        while (k < n && is_digit(p[k])) {
            k++;
        }
    } else {
        return "JSON number is malformed";
    }
    if (k < n && p[k] == '.') {
        if (++k >= n || !is_digit(p[k])) {
            return "JSON number is malformed";
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        if (k < n && (p[k] == '+' || p[k] == '-')) {
            k++;
        }
        if (k >= n || !is_digit(p[k])) {
            return "JSON number is malformed";
        }
        while (k < n && is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && p[k] != '\0' && (is_digit(p[k]) || strchr(".eE+-", p[k]) != NULL)) {
        return "JSON number is malformed";
    }
    *i = k;
    return NULL;
}

/* The lexical pre-scan described at the top of the file. Returns 0, or -1 with errstr
 * naming the fault and its byte offset (offsets count from `base`). */
static int json_prescan(const unsigned char *p, size_t n, size_t base, char *errstr,
                        size_t errlen)
{
    size_t i = 0;
    int depth = 0;
    while (i < n) {
        unsigned char c = p[i];
        const char *fault = NULL;
        size_t at = i;
        if (c == '"') {
            fault = scan_string(p, n, &i);
            at = i;
        } else if (c == '-' || is_digit(c)) {
            fault = scan_number(p, n, &i);
        } else if (c == '{' || c == '[') {
            if (++depth > AB_MAX_DEPTH) {
                set_err(errstr, errlen, "JSON nested deeper than %d levels", AB_MAX_DEPTH);
                return -1;
            }
            i++;
        } else if (c == '}' || c == ']') {
            depth -= depth > 0;
            i++;
        } else if (c != '\0' && strchr(" \t\r\n,:truefalsn", c) != NULL) {
            i++; /* whitespace, punctuation, literals: cJSON checks the grammar */
        } else {
            /* also a second byte order mark, which cJSON would skip */
            fault = "JSON holds an unexpected character outside strings";
        }
        if (fault != NULL) {
            set_err(errstr, errlen, "%s (at byte %zu)", fault, base + at);
            return -1;
        }
    }
    return 0;
}

cJSON *ab_normalise_json(const char *body, size_t len, char *errstr, size_t errlen)
{
    size_t bom = 0;
    char *copy = NULL;
    cJSON *root = NULL;
    if (len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0) {
        bom = 3;
    }
    const unsigned char *p = (const unsigned char *)body + bom;
    size_t n = len - bom;
    if (n == 0) {
        set_err(errstr, errlen, "JSON body is empty");
        goto done;
    }
    if (json_prescan(p, n, bom, errstr, errlen) != 0) {
        goto done;
    }
    /* cJSON's require_null_terminated wants the NUL inside the given length. */
    copy = ab_malloc(n + 1);
    memcpy(copy, p, n);
    copy[n] = '\0';
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(copy, n + 1, &end, 1);
    if (root == NULL || end != copy + n) {
        size_t at = end != NULL && end >= copy ? (size_t)(end - copy) : 0;
        set_err(errstr, errlen, "JSON is not well-formed (at byte %zu)", bom + at);
        cJSON_Delete(root);
        root = NULL;
    }
done:
    free(copy);
    return root;
}

/* ---- XML ------------------------------------------------------------------------------ */

struct xml_state {
    int depth;
    int too_deep;
    int doctype;
    int err_code; /* first libxml2 error, 0 if none */
    int err_line;
    int err_col;
};

static struct xml_state *state_of(void *ctx)
{
    return ((xmlParserCtxtPtr)ctx)->_private;
}

/* SAX internalSubset/externalSubset/entityDecl: a DOCTYPE stops the parse before any of
 * its declarations is processed. */
static void on_internal_subset(void *ctx, const xmlChar *name, const xmlChar *ext_id,
                               const xmlChar *sys_id)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_entity_decl(void *ctx, const xmlChar *name, int type, const xmlChar *public_id,
                           const xmlChar *system_id, xmlChar *content)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_reference(void *ctx, const xmlChar *name)
{
    state_of(ctx)->doctype = 1;
    xmlStopParser(ctx);
}

static void on_start_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                             const xmlChar *uri, int nb_namespaces, const xmlChar **namespaces,
                             int nb_attributes, int nb_defaulted, const xmlChar **attributes)
{
    struct xml_state *st = state_of(ctx);
    if (++st->depth > AB_MAX_DEPTH) {
        st->too_deep = 1;
        xmlStopParser(ctx);
        return;
    }
    xmlSAX2StartElementNs(ctx, localname, prefix, uri, nb_namespaces, namespaces,
                          nb_attributes, nb_defaulted, attributes);
}

static void on_end_element(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                           const xmlChar *uri)
{
    state_of(ctx)->depth--;
    xmlSAX2EndElementNs(ctx, localname, prefix, uri);
}

static void record_error(struct xml_state *st, const xmlError *err)
{
    if (st != NULL && err != NULL && err->level >= XML_ERR_ERROR && st->err_code == 0) {
        st->err_code = err->code != 0 ? err->code : -1;
        st->err_line = err->line;
        st->err_col = err->int2;
    }
}

/* Structured error handler of the context: keep the first error, print nothing (libxml2
 * messages quote names and bytes from the body). */
static void on_xml_error(void *ctx, xmlErrorPtr err)
{
    xmlParserCtxtPtr ctxt = err != NULL ? err->ctxt : NULL;
    record_error(ctxt != NULL ? ctxt->_private : NULL, err);
}

/* libxml2 2.9 raises encoding-conversion and I/O errors without a parser context, so they
 * bypass the handler above and reach this thread's handler instead (libxml2 keeps its
 * error handlers per thread). ab_normalise_xml() installs these two for its own duration. */
static void on_thread_error(void *ctx, xmlErrorPtr err)
{
    record_error(ctx, err);
}

static void on_generic_error(void *ctx, const char *msg, ...)
{
}

static const char *xml_error_text(int code)
{
    switch (code) {
    case XML_ERR_DOCUMENT_EMPTY:
        return "XML body is empty";
    case XML_ERR_DOCUMENT_END:
        return "XML has content after the root element";
    case XML_ERR_TAG_NAME_MISMATCH:
    case XML_ERR_TAG_NOT_FINISHED:
    case XML_ERR_LTSLASH_REQUIRED:
    case XML_ERR_GT_REQUIRED:
        return "XML has a mismatched or unclosed tag";
    case XML_ERR_INVALID_CHAR:
    case XML_ERR_INVALID_ENCODING:
    case XML_I18N_CONV_FAILED:
    case XML_IO_ENCODER:
        return "XML holds bytes that are not characters in its encoding";
    case XML_ERR_UNSUPPORTED_ENCODING:
        return "XML declares an unsupported encoding";
    case XML_ERR_UNDECLARED_ENTITY:
    case XML_WAR_UNDECLARED_ENTITY:
        return "XML refers to an undeclared entity";
    case XML_ERR_ATTRIBUTE_REDEFINED:
        return "XML repeats an attribute";
    case XML_NS_ERR_UNDEFINED_NAMESPACE:
        return "XML uses an undeclared namespace prefix";
    default:
        return "XML is not well-formed";
    }
}

/* A new parser context whose SAX handler refuses DOCTYPEs and bounds the depth. */
static xmlParserCtxtPtr new_xml_ctxt(struct xml_state *st)
{
    xmlParserCtxtPtr ctxt = xmlNewParserCtxt();
    if (ctxt == NULL) {
        return NULL;
    }
    ctxt->_private = st;
    xmlSAXHandlerPtr sax = ctxt->sax; /* owned by this context */
    sax->internalSubset = on_internal_subset;
    sax->externalSubset = on_internal_subset;
    sax->entityDecl = on_entity_decl;
    sax->reference = on_reference;
    sax->startElementNs = on_start_element;
    sax->endElementNs = on_end_element;
    sax->serror = on_xml_error;
    sax->initialized = XML_SAX2_MAGIC;
    return ctxt;
}

/* ---- XML to cJSON --------------------------------------------------------------------- */

enum conv_err { CONV_OK, CONV_DOCTYPE, CONV_DEEP };

/* One member of the object an element becomes: its text (as "value"), an attribute or a
 * child element, in document order. Members sharing a name are chained into an array. */
struct member {
    const char *name;
    const xmlChar *text; /* the text member, or NULL */
    xmlAttrPtr attr;
    xmlNodePtr elem;
    struct member *next; /* next member with the same name */
    size_t count;        /* on the first of a name: how many share it; 0 on the others */
};

static cJSON *convert_element(xmlNodePtr el, int depth, int is_root, enum conv_err *err);

static int is_xsi(xmlAttrPtr a)
{
    return a->ns != NULL && a->ns->href != NULL && xmlStrEqual(a->ns->href, BAD_CAST XSI_NS);
}

static int is_blank(const xmlChar *s)
{
    for (; *s; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
            return 0;
        }
    }
    return 1;
}

static int attr_is_true(xmlAttrPtr a)
{
    xmlChar *v = xmlNodeGetContent((xmlNodePtr)a);
    int yes = v != NULL && (xmlStrEqual(v, BAD_CAST "true") || xmlStrEqual(v, BAD_CAST "1"));
    xmlFree(v);
    return yes;
}

/* The direct text and CDATA children of el, concatenated, in a new string; sets *elems to
 * the number of element children. An entity reference means a DTD got through: refused. */
static xmlChar *element_text(xmlNodePtr el, size_t *elems, enum conv_err *err)
{
    size_t len = 0, k = 0;
    *elems = 0;
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            len += c->content != NULL ? strlen((const char *)c->content) : 0;
        } else if (c->type == XML_ELEMENT_NODE) {
            (*elems)++;
        } else if (c->type == XML_ENTITY_REF_NODE || c->type == XML_ENTITY_NODE ||
                   c->type == XML_DTD_NODE || c->type == XML_ENTITY_DECL) {
            *err = CONV_DOCTYPE;
        }
    }
    xmlChar *text = ab_malloc(len + 1);
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) && c->content) {
            size_t l = strlen((const char *)c->content);
            memcpy(text + k, c->content, l);
            k += l;
        }
    }
    text[k] = '\0';
    return text;
}

static int member_cmp(const void *a, const void *b)
{
    const struct member *x = *(struct member *const *)a, *y = *(struct member *const *)b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : (x < y ? -1 : x > y);
}

/* Chain members of the same name (in document order) in O(n log n). */
static void group_members(struct member *m, size_t n)
{
    struct member **by_name = ab_malloc(n * sizeof(*by_name));
    for (size_t i = 0; i < n; i++) {
        by_name[i] = &m[i];
        m[i].next = NULL;
        m[i].count = 0;
    }
    qsort(by_name, n, sizeof(*by_name), member_cmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && strcmp(by_name[j]->name, by_name[i]->name) == 0) {
            by_name[j - 1]->next = by_name[j];
            j++;
        }
        by_name[i]->count = j - i;
        i = j;
    }
    free(by_name);
}

static cJSON *convert_member(const struct member *m, int depth, enum conv_err *err)
{
    if (m->text != NULL) {
        return cJSON_CreateString((const char *)m->text);
    }
    if (m->attr != NULL) {
        xmlChar *v = xmlNodeGetContent((xmlNodePtr)m->attr);
        cJSON *s = cJSON_CreateString(v != NULL ? (const char *)v : "");
        xmlFree(v);
        return s;
    }
    return convert_element(m->elem, depth + 1, 0, err);
}

/* The object form of el: its text as "value" (when with_text), its attributes, then its
 * child elements; repeated names become arrays at the place of their first occurrence. */
static cJSON *element_object(xmlNodePtr el, const xmlChar *text, int with_text, int depth,
                             enum conv_err *err)
{
    size_t n = with_text ? 1 : 0, k = 0;
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        n += !is_xsi(a);
    }
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        n += c->type == XML_ELEMENT_NODE;
    }
    struct member *m = ab_calloc(n, sizeof(*m));
    if (with_text) {
        m[k++] = (struct member){.name = "value", .text = text};
    }
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        if (!is_xsi(a)) {
            m[k++] = (struct member){.name = (const char *)a->name, .attr = a};
        }
    }
    for (xmlNodePtr c = el->children; c != NULL; c = c->next) {
        if (c->type == XML_ELEMENT_NODE) {
            m[k++] = (struct member){.name = (const char *)c->name, .elem = c};
        }
    }
    group_members(m, n);
    cJSON *obj = cJSON_CreateObject();
    for (size_t i = 0; i < n && *err == CONV_OK; i++) {
        if (m[i].count == 1) {
            cJSON_AddItemToObject(obj, m[i].name, convert_member(&m[i], depth, err));
        } else if (m[i].count > 1) {
            cJSON *arr = cJSON_AddArrayToObject(obj, m[i].name);
            for (const struct member *x = &m[i]; x != NULL && *err == CONV_OK; x = x->next) {
                cJSON_AddItemToArray(arr, convert_member(x, depth, err));
            }
        }
    }
    free(m);
    return obj;
}

/* Convert one element with the rules in normalise.h. The root is always an object. On a
 * refusal *err is set and the (partial) result is still returned for the caller to free. */
static cJSON *convert_element(xmlNodePtr el, int depth, int is_root, enum conv_err *err)
{
    size_t elems = 0, attrs = 0;
    cJSON *out = NULL;
    if (depth > AB_MAX_DEPTH) {
        *err = CONV_DEEP;
        return cJSON_CreateNull();
    }
    for (xmlAttrPtr a = el->properties; a != NULL; a = a->next) {
        if (is_xsi(a) && xmlStrEqual(a->name, BAD_CAST "nil") && attr_is_true(a)) {
            return cJSON_CreateNull();
        }
        attrs += !is_xsi(a);
    }
    xmlChar *text = element_text(el, &elems, err);
    if (elems == 0 && attrs == 0 && !is_root) {
        out = text[0] != '\0' ? cJSON_CreateString((const char *)text) : cJSON_CreateNull();
    } else {
        /* text beside child elements counts only when it is more than layout */
        int with_text = elems == 0 && !is_root ? 1 : !is_blank(text);
        out = element_object(el, text, with_text, depth, err);
    }
    free(text);
    return out;
}

/* Parse body with ctxt. libxml2's per-thread error handlers are swapped for silent ones
 * for the duration (see on_thread_error) and restored before returning. */
static xmlDocPtr read_xml(xmlParserCtxtPtr ctxt, const char *body, size_t len)
{
    xmlStructuredErrorFunc old_serror = xmlStructuredError;
    void *old_sctx = xmlStructuredErrorContext;
    xmlGenericErrorFunc old_gerror = xmlGenericError;
    void *old_gctx = xmlGenericErrorContext;
    xmlSetStructuredErrorFunc(ctxt->_private, on_thread_error);
    xmlSetGenericErrorFunc(NULL, on_generic_error);
    /* No XML_PARSE_NOENT, DTDLOAD, DTDATTR, HUGE or XINCLUDE; NONET as a second guard. */
    xmlDocPtr doc = xmlCtxtReadMemory(ctxt, body, (int)len, NULL, NULL, XML_PARSE_NONET);
    xmlSetStructuredErrorFunc(old_sctx, old_serror);
    xmlSetGenericErrorFunc(old_gctx, old_gerror);
    return doc;
}

/* 0 when the parse gave a usable document, else -1 with the reason in errstr. */
static int check_xml(xmlParserCtxtPtr ctxt, xmlDocPtr doc, size_t len, char *errstr,
                     size_t errlen)
{
    const struct xml_state *st = ctxt->_private;
    if (st->doctype || (doc != NULL && doc->intSubset != NULL)) {
        set_err(errstr, errlen, "XML with a DOCTYPE is not accepted");
    } else if (st->too_deep) {
        set_err(errstr, errlen, "XML nested deeper than %d levels", AB_MAX_DEPTH);
    } else if (doc == NULL || !ctxt->wellFormed || st->err_code != 0) {
        int code = st->err_code != 0 ? st->err_code : ctxt->errNo;
        set_err(errstr, errlen, "%s (libxml2 error %d at line %d, column %d)",
                xml_error_text(code), code, st->err_line, st->err_col);
    } else if (xmlByteConsumed(ctxt) >= 0 && xmlByteConsumed(ctxt) < (long)len) {
        /* libxml2 takes a NUL character for the end of the input */
        set_err(errstr, errlen, "XML holds a NUL character");
    } else if (xmlDocGetRootElement(doc) == NULL) {
        set_err(errstr, errlen, "XML has no root element");
    } else {
        return 0;
    }
    return -1;
}

cJSON *ab_normalise_xml(const char *body, size_t len, char *errstr, size_t errlen)
{
    struct xml_state st = {0};
    xmlParserCtxtPtr ctxt = NULL;
    xmlDocPtr doc = NULL;
    cJSON *root = NULL;
    enum conv_err err = CONV_OK;
    if (len == 0 || len > INT_MAX) {
        set_err(errstr, errlen, len == 0 ? "XML body is empty" : "XML body is too large");
        goto done;
    }
    ctxt = new_xml_ctxt(&st);
    if (ctxt == NULL) {
        set_err(errstr, errlen, "XML parser could not be created");
        goto done;
    }
    doc = read_xml(ctxt, body, len);
    if (check_xml(ctxt, doc, len, errstr, errlen) != 0) {
        goto done;
    }
    root = convert_element(xmlDocGetRootElement(doc), 1, 1, &err);
    if (err != CONV_OK) {
        /* both only as a second line of defence: the parse stops on either first */
        if (err == CONV_DOCTYPE) {
            set_err(errstr, errlen, "XML with a DOCTYPE is not accepted");
        } else {
            set_err(errstr, errlen, "XML nested deeper than %d levels", AB_MAX_DEPTH);
        }
        cJSON_Delete(root);
        root = NULL;
    }
done:
    xmlFreeDoc(doc);
    if (ctxt != NULL) {
        ctxt->_private = NULL;
        xmlFreeParserCtxt(ctxt);
    }
    return root;
}
