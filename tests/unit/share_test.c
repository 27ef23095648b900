#include <stdlib.h>

#include "share.h"
#include "test.h"

static void test_bound_per_address(void)
{
    struct ab_share *s = ab_share_new(100);
    CHECK(ab_share_charge(s, "10.0.0.1", 60) == 0);
    CHECK(ab_share_charge(s, "10.0.0.1", 40) == 0);
    CHECK(ab_share_charge(s, "10.0.0.1", 1) == -1); /* over its share: nothing charged */
    CHECK(ab_share_held(s, "10.0.0.1") == 100);
    CHECK(ab_share_charge(s, "10.0.0.2", 100) == 0); /* another address has its own */
    CHECK(ab_share_charge(s, "::ffff:10.0.0.1", 1) == -1); /* IPv4-mapped is the same */
    ab_share_release(s, "10.0.0.1", 60);
    CHECK(ab_share_held(s, "10.0.0.1") == 40);
    CHECK(ab_share_charge(s, "10.0.0.1", 60) == 0);
    ab_share_release(s, "10.0.0.1", 100);
    ab_share_release(s, "10.0.0.2", 100);
    CHECK(ab_share_held(s, "10.0.0.1") == 0 && ab_share_held(s, "10.0.0.2") == 0);
    CHECK(ab_share_charge(s, "10.0.0.1", 101) == -1);
    ab_share_free(s);
}

static void test_ipv6_by_64(void)
{
    struct ab_share *s = ab_share_new(10);
    CHECK(ab_share_charge(s, "2001:db8:1:2::1", 6) == 0);
    CHECK(ab_share_charge(s, "2001:db8:1:2:ffff::9", 5) == -1); /* the same /64 */
    CHECK(ab_share_charge(s, "2001:db8:1:3::1", 10) == 0);      /* another /64 */
    CHECK(ab_share_charge(s, "unknown", 10) == 0);              /* text: its own key */
    CHECK(ab_share_charge(s, "unknown", 1) == -1);
    ab_share_free(s); /* frees what is still held */
}

static void test_unbounded(void)
{
    struct ab_share *s = ab_share_new(0);
    CHECK(s == NULL);
    CHECK(ab_share_charge(s, "10.0.0.1", 1L << 40) == 0);
    ab_share_release(s, "10.0.0.1", 1);
    CHECK(ab_share_held(s, "10.0.0.1") == 0);
    ab_share_free(NULL);
}

static void test_many_addresses(void)
{
    struct ab_share *s = ab_share_new(5);
    char addr[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.1", i / 256, i % 256);
        CHECK(ab_share_charge(s, addr, 5) == 0);
    }
    for (int i = 0; i < 5000; i += 2) {
        snprintf(addr, sizeof(addr), "10.%d.%d.1", i / 256, i % 256);
        ab_share_release(s, addr, 5);
        CHECK(ab_share_held(s, addr) == 0);
    }
    CHECK(ab_share_held(s, "10.0.1.1") == 5);
    ab_share_free(s);
}

int main(void)
{
    RUN(test_bound_per_address);
    RUN(test_ipv6_by_64);
    RUN(test_unbounded);
    RUN(test_many_addresses);
    return TEST_SUMMARY();
}
