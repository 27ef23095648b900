/* Helpers shared by the unit tests that read fixture files or build nested bodies
 * (event_test.c, normalise_test.c). Static inline: a test that uses only some of them
 * builds without unused-function warnings. */
#ifndef AB_TEST_FIXTURES_H
#define AB_TEST_FIXTURES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file at path, NUL-terminated (*len does not count the NUL); NULL when it
 * cannot be opened. The caller frees it. */
static inline char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 4096, n = 0, r;
    char *buf = malloc(cap + 1);
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            buf = realloc(buf, (cap *= 2) + 1);
        }
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* open levels times, then inner, then close levels times; the caller frees it. */
static inline char *nested(const char *open, const char *inner, const char *close, int levels)
{
    size_t lo = strlen(open), lc = strlen(close), li = strlen(inner);
    char *s = malloc(levels * (lo + lc) + li + 1), *p = s;
    for (int i = 0; i < levels; i++, p += lo) {
        memcpy(p, open, lo);
    }
    memcpy(p, inner, li);
    p += li;
    for (int i = 0; i < levels; i++, p += lc) {
        memcpy(p, close, lc);
    }
    *p = '\0';
    return s;
}

#endif
