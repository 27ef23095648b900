/* Allocation wrappers: out of memory aborts here, so callers never check for NULL
 * (Redis zmalloc, h2o h2o_mem_alloc). A NULL from a parser therefore always means
 * bad input, never lack of memory. */
#ifndef AB_MEM_H
#define AB_MEM_H

#include <stddef.h>

void *ab_malloc(size_t n);
void *ab_calloc(size_t count, size_t n);
void *ab_realloc(void *p, size_t n);
char *ab_strdup(const char *s);
char *ab_strndup(const char *s, size_t n);
/* printf into a new string owned by the caller. */
char *ab_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
