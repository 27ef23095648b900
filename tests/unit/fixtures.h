/* Helpers shared by the unit tests that read fixture files or build nested bodies
 * (event_test.c, normalise_test.c, eventlog_test.c). Static inline: a test that uses only
 * some of them builds without unused-function warnings. */
#ifndef AB_TEST_FIXTURES_H
#define AB_TEST_FIXTURES_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file at path, NUL-terminated (*len does not count the NUL); NULL when it
 * cannot be opened. The caller frees it. */
static inline char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        *len = 0;
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

static inline int fixtures_by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted paths dir/name of the regular entries in dir whose name ends in suffix ("" for
 * all, dot files skipped); NULL-terminated, *count set; free with free_paths(). */
static inline char **dir_paths(const char *dir, const char *suffix, size_t *count)
{
    DIR *d = opendir(dir);
    size_t n = 0, cap = 16, sl = strlen(suffix);
    char **paths = malloc(cap * sizeof(*paths));
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l < sl || strcmp(e->d_name + l - sl, suffix) != 0) {
            continue;
        }
        if (n + 2 > cap) {
            paths = realloc(paths, (cap *= 2) * sizeof(*paths));
        }
        paths[n] = malloc(strlen(dir) + l + 2);
        sprintf(paths[n++], "%s/%s", dir, e->d_name);
    }
    if (d != NULL) {
        closedir(d);
    }
    qsort(paths, n, sizeof(*paths), fixtures_by_name);
    paths[n] = NULL;
    *count = n;
    return paths;
}

static inline void free_paths(char **paths)
{
    for (size_t i = 0; paths[i] != NULL; i++) {
        free(paths[i]);
    }
    free(paths);
}

#endif
