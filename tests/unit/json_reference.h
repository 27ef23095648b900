/* The JSON front end as it was before the one-pass scan (issue 13): a lexical pre-scan,
 * then a cJSON tree, and the minifier that made "data". Kept only as the reference for the
 * differential checks in normalise_test.c: the scan must accept exactly what this accepts,
 * write exactly what this minifier wrote and find the envelope values the tree holds. */
#ifndef AB_TEST_JSON_REFERENCE_H
#define AB_TEST_JSON_REFERENCE_H

#include "normalise.h"
#include "utf8.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static void ref_set_err(char *errstr, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ref_set_err(char *errstr, size_t errlen, const char *fmt, ...)
{
    if (errstr == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errlen, fmt, ap);
    va_end(ap);
}

static int ref_is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int ref_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Check the string whose opening quote is at *i; on success *i is past the closing quote.
 * Returns NULL or a description of the fault (with *i at it). */
static const char *ref_scan_string(const unsigned char *p, size_t n, size_t *i)
{
    size_t k = *i + 1;
    while (k < n && p[k] != '"') {
        if (p[k] == '\\') {
            if (k + 1 >= n || p[k + 1] == '\0' || strchr("\"\\/bfnrtu", p[k + 1]) == NULL) {
                *i = k;
                return "JSON string has an invalid escape";
            }
            if (p[k + 1] == 'u' && (k + 5 >= n || !ref_is_hex(p[k + 2]) || !ref_is_hex(p[k + 3]) ||
                                    !ref_is_hex(p[k + 4]) || !ref_is_hex(p[k + 5]))) {
                *i = k;
                return "JSON string has an invalid \\u escape";
            }
            k += p[k + 1] == 'u' ? 6 : 2;
        } else if (p[k] < 0x20) {
            *i = k;
            return "JSON string holds a raw control character";
        } else {
            size_t l = ab_utf8_len(p + k, n - k);
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
static const char *ref_scan_number(const unsigned char *p, size_t n, size_t *i)
{
    size_t k = *i;
    if (k < n && p[k] == '-') {
        k++;
    }
    if (k < n && p[k] == '0') {
        k++;
    } else if (k < n && ref_is_digit(p[k])) {
        while (k < n && ref_is_digit(p[k])) {
            k++;
        }
    } else {
        return "JSON number is malformed";
    }
    if (k < n && p[k] == '.') {
        if (++k >= n || !ref_is_digit(p[k])) {
            return "JSON number is malformed";
        }
        while (k < n && ref_is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        if (k < n && (p[k] == '+' || p[k] == '-')) {
            k++;
        }
        if (k >= n || !ref_is_digit(p[k])) {
            return "JSON number is malformed";
        }
        while (k < n && ref_is_digit(p[k])) {
            k++;
        }
    }
    if (k < n && p[k] != '\0' && (ref_is_digit(p[k]) || strchr(".eE+-", p[k]) != NULL)) {
        return "JSON number is malformed";
    }
    *i = k;
    return NULL;
}

/* The lexical pre-scan described at the top of the file. Returns 0, or -1 with errstr
 * naming the fault and its byte offset (offsets count from `base`). */
static int ref_json_prescan(const unsigned char *p, size_t n, size_t base, char *errstr,
                        size_t errlen)
{
    size_t i = 0;
    int depth = 0;
    while (i < n) {
        unsigned char c = p[i];
        const char *fault = NULL;
        size_t at = i;
        if (c == '"') {
            fault = ref_scan_string(p, n, &i);
            at = i;
        } else if (c == '-' || ref_is_digit(c)) {
            fault = ref_scan_number(p, n, &i);
        } else if (c == '{' || c == '[') {
            if (++depth > AB_MAX_DEPTH) {
                ref_set_err(errstr, errlen, "JSON nested deeper than %d levels", AB_MAX_DEPTH);
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
            ref_set_err(errstr, errlen, "%s (at byte %zu)", fault, base + at);
            return -1;
        }
    }
    return 0;
}

static cJSON *ref_normalise_json(const char *body, size_t len, char *errstr, size_t errlen)
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
        ref_set_err(errstr, errlen, "JSON body is empty");
        goto done;
    }
    if (ref_json_prescan(p, n, bom, errstr, errlen) != 0) {
        goto done;
    }
    /* cJSON's require_null_terminated wants the NUL inside the given length. */
    copy = malloc(n + 1);
    memcpy(copy, p, n);
    copy[n] = '\0';
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(copy, n + 1, &end, 1);
    if (root == NULL || end != copy + n) {
        size_t at = end != NULL && end >= copy ? (size_t)(end - copy) : 0;
        ref_set_err(errstr, errlen, "JSON is not well-formed (at byte %zu)", bom + at);
        cJSON_Delete(root);
        root = NULL;
    }
done:
    free(copy);
    return root;
}

/* Remove whitespace outside strings (after one BOM) into a new string; *n gets its length. */
static char *ref_minify(const char *body, size_t len, size_t *n)
{
    size_t bom = len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
    char *s = malloc(len + 1);
    size_t w = 0;
    int in_string = 0;
    for (size_t r = bom; r < len; r++) {
        char c = body[r];
        if (in_string) {
            s[w++] = c;
            if (c == '\\' && r + 1 < len) {
                s[w++] = body[++r];
            } else if (c == '"') {
                in_string = 0;
            }
        } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            s[w++] = c;
            in_string = c == '"';
        }
    }
    s[w] = '\0';
    *n = w;
    return s;
}

#endif
