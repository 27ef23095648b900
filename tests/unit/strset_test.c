/* core/strset.c: a set of strings that grows past its first table. */
#include <stdio.h>
#include <stdlib.h>

#include "strset.h"
#include "test.h"

static void test_add_has_grow(void)
{
    struct ab_strset s = {0};
    char k[32];
    CHECK(!ab_strset_has(&s, "x"));
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof(k), "id-%d", i);
        CHECK(ab_strset_add(&s, k) == 1);
    }
    CHECK(s.n == 5000);
    for (int i = 0; i < 5000; i += 7) {
        snprintf(k, sizeof(k), "id-%d", i);
        CHECK(ab_strset_has(&s, k));
        CHECK(ab_strset_add(&s, k) == 0);
    }
    CHECK(!ab_strset_has(&s, "id-5000"));
    CHECK(s.n == 5000);
    ab_strset_clear(&s);
    CHECK(s.n == 0 && !ab_strset_has(&s, "id-1"));
    CHECK(ab_strset_add(&s, "again") == 1);
    ab_strset_clear(&s);
}

int main(void)
{
    RUN(test_add_has_grow);
    return TEST_SUMMARY();
}
