/* A set of strings (see strset.h): open addressing, FNV-1a. */
#include "strset.h"

#include <stdlib.h>
#include <string.h>

#include "mem.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

/* Add s (copied); returns 1 when it was new, 0 when it was there already. */
int ab_strset_add(struct ab_strset *set, const char *s)
{
    if (set->n * 2 >= set->cap) {
        struct ab_strset bigger = {.cap = set->cap ? set->cap * 2 : 1024};
        bigger.slots = ab_calloc(bigger.cap, sizeof(char *));
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i]) {
                size_t j = hash_str(set->slots[i]) & (bigger.cap - 1);
                while (bigger.slots[j]) {
                    j = (j + 1) & (bigger.cap - 1);
                }
                bigger.slots[j] = set->slots[i];
            }
        }
        free(set->slots);
        bigger.n = set->n;
        *set = bigger;
    }
    size_t j = hash_str(s) & (set->cap - 1);
    for (; set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 0;
        }
    }
    set->slots[j] = ab_strdup(s);
    set->n++;
    return 1;
}

int ab_strset_has(const struct ab_strset *set, const char *s)
{
    if (set->cap == 0) {
        return 0;
    }
    for (size_t j = hash_str(s) & (set->cap - 1); set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 1;
        }
    }
    return 0;
}

void ab_strset_clear(struct ab_strset *set)
{
    for (size_t i = 0; i < set->cap; i++) {
        free(set->slots[i]);
    }
    free(set->slots);
    memset(set, 0, sizeof(*set));
}
