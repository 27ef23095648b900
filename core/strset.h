/* A set of strings with open addressing: what `replay` has sent or found already in a
 * stream or topic. Not thread-safe; a zeroed struct is an empty set. */
#ifndef AB_STRSET_H
#define AB_STRSET_H

#include <stddef.h>
#include <stdint.h>

struct ab_strset {
    char **slots;
    size_t cap, n;
};

/* Add s (copied); returns 1 when it was new, 0 when it was there already. */
int ab_strset_add(struct ab_strset *set, const char *s);
/* 1 when s is in the set. */
int ab_strset_has(const struct ab_strset *set, const char *s);
/* Free every string and the table; the set is empty (and usable) again. */
void ab_strset_clear(struct ab_strset *set);

#endif
