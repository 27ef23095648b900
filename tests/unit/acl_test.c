#include <stdlib.h>

#include "acl.h"
#include "test.h"

static void test_match(void)
{
    const char *blocks[] = {"10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"};
    char err[128];
    struct ab_acl *a = ab_acl_new(blocks, 4, err, sizeof(err));
    CHECK(a != NULL);
    CHECK(ab_acl_match(a, "10.1.2.3"));
    CHECK(!ab_acl_match(a, "11.0.0.1"));
    CHECK(ab_acl_match(a, "192.168.1.7"));
    CHECK(!ab_acl_match(a, "192.168.1.8"));
    CHECK(ab_acl_match(a, "2001:db8:1::5"));
    CHECK(!ab_acl_match(a, "2001:db9::5"));
    CHECK(ab_acl_match(a, "::1"));
    CHECK(ab_acl_match(a, "::ffff:10.9.9.9")); /* IPv4-mapped peers match IPv4 blocks */
    CHECK(!ab_acl_match(a, "garbage"));
    CHECK(!ab_acl_match(NULL, "10.1.2.3"));
    ab_acl_free(a);
}

static void test_odd_prefixes(void)
{
    const char *blocks[] = {"172.16.0.0/12", "0.0.0.0/0"};
    char err[128];
    struct ab_acl *a = ab_acl_new(blocks, 1, err, sizeof(err));
    CHECK(ab_acl_match(a, "172.31.255.255"));
    CHECK(!ab_acl_match(a, "172.32.0.0"));
    ab_acl_free(a);
    a = ab_acl_new(blocks + 1, 1, err, sizeof(err));
    CHECK(ab_acl_match(a, "8.8.8.8"));
    CHECK(!ab_acl_match(a, "2001:db8::1")); /* /0 of IPv4 is all IPv4, not IPv6 */
    ab_acl_free(a);
}

static void test_bad_entries(void)
{
    char err[128];
    const char *bad[][1] = {{"10.0.0.0/33"}, {"10.0.0.0/"}, {"nope"}, {"::1/129"}, {"10.0.0.0/8x"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(ab_acl_new(bad[i], 1, err, sizeof(err)) == NULL);
        CHECK(strstr(err, bad[i][0]) != NULL);
    }
}

static void test_forwarded_for(void)
{
    const char *trusted[] = {"127.0.0.1", "10.0.0.0/8"};
    char err[128], out[64];
    struct ab_acl *t = ab_acl_new(trusted, 2, err, sizeof(err));
    /* untrusted peer: the header is ignored */
    ab_acl_client_addr(t, "8.8.8.8", "1.2.3.4", 0, out, sizeof(out));
    CHECK_STR(out, "8.8.8.8");
    /* trusted peer: right-most untrusted entry */
    ab_acl_client_addr(t, "127.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.5", 0, out, sizeof(out));
    CHECK_STR(out, "2.2.2.2");
    ab_acl_client_addr(t, "127.0.0.1", " 3.3.3.3 ", 0, out, sizeof(out));
    CHECK_STR(out, "3.3.3.3");
    ab_acl_client_addr(t, "127.0.0.1", "[2001:db8::1]", 0, out, sizeof(out));
    CHECK_STR(out, "2001:db8::1");
    /* everything trusted: the left-most */
    ab_acl_client_addr(t, "127.0.0.1", "10.0.0.1, 10.0.0.2", 0, out, sizeof(out));
    CHECK_STR(out, "10.0.0.1");
    /* garbage stops the walk at the last good address */
    ab_acl_client_addr(t, "127.0.0.1", "1.1.1.1, junk, 10.0.0.9", 0, out, sizeof(out));
    CHECK_STR(out, "10.0.0.9");
    ab_acl_client_addr(t, "127.0.0.1", NULL, 0, out, sizeof(out));
    CHECK_STR(out, "127.0.0.1");
    ab_acl_free(t);
}

static void test_forwarded_rfc7239(void)
{
    const char *trusted[] = {"127.0.0.1", "10.0.0.0/8"};
    char err[128], out[64];
    struct ab_acl *t = ab_acl_new(trusted, 2, err, sizeof(err));
    ab_acl_client_addr(t, "127.0.0.1", "for=1.1.1.1, for=2.2.2.2;proto=https, for=10.0.0.5", 1,
                       out, sizeof(out));
    CHECK_STR(out, "2.2.2.2");
    ab_acl_client_addr(t, "127.0.0.1", "proto=http;For=\"[2001:db8::7]:4711\"", 1, out,
                       sizeof(out));
    CHECK_STR(out, "2001:db8::7");
    ab_acl_client_addr(t, "127.0.0.1", "for=\"192.0.2.43:47011\";by=10.0.0.1", 1, out,
                       sizeof(out));
    CHECK_STR(out, "192.0.2.43");
    /* quoted commas and semicolons stay inside their value */
    ab_acl_client_addr(t, "127.0.0.1", "for=3.3.3.3;x=\"a,b;c\", for=10.0.0.1", 1, out,
                       sizeof(out));
    CHECK_STR(out, "3.3.3.3");
    /* unknown, obfuscated, an element without for=, an unterminated quote: stop there */
    ab_acl_client_addr(t, "127.0.0.1", "for=3.3.3.3, for=unknown", 1, out, sizeof(out));
    CHECK_STR(out, "127.0.0.1");
    ab_acl_client_addr(t, "127.0.0.1", "for=3.3.3.3, for=_hidden, for=10.0.0.2", 1, out,
                       sizeof(out));
    CHECK_STR(out, "10.0.0.2");
    ab_acl_client_addr(t, "127.0.0.1", "for=3.3.3.3, proto=https", 1, out, sizeof(out));
    CHECK_STR(out, "127.0.0.1");
    ab_acl_client_addr(t, "127.0.0.1", "for=\"3.3.3.3", 1, out, sizeof(out));
    CHECK_STR(out, "3.3.3.3");
    /* X-Forwarded-For entries with a port */
    ab_acl_client_addr(t, "127.0.0.1", "4.4.4.4:1234", 0, out, sizeof(out));
    CHECK_STR(out, "4.4.4.4");
    CHECK(ab_acl_is_loopback("127.0.0.1") && ab_acl_is_loopback("127.9.9.9"));
    CHECK(ab_acl_is_loopback("::1") && ab_acl_is_loopback("::ffff:127.0.0.1"));
    CHECK(!ab_acl_is_loopback("10.0.0.1") && !ab_acl_is_loopback("junk"));
    ab_acl_free(t);
}

int main(void)
{
    RUN(test_match);
    RUN(test_odd_prefixes);
    RUN(test_bad_entries);
    RUN(test_forwarded_for);
    RUN(test_forwarded_rfc7239);
    return TEST_SUMMARY();
}
