#include <stdint.h>
#include <string.h>

#include "crc32c.h"
#include "test.h"

static void test_known_values(void)
{
    /* RFC 3720 B.4 and the common check value */
    CHECK(ab_crc32c(0, "123456789", 9) == 0xE3069283u);
    unsigned char zeros[32] = {0}, ones[32];
    memset(ones, 0xff, sizeof(ones));
    CHECK(ab_crc32c(0, zeros, sizeof(zeros)) == 0x8A9136AAu);
    CHECK(ab_crc32c(0, ones, sizeof(ones)) == 0x62A8AB43u);
    CHECK(ab_crc32c(0, "", 0) == 0);
}

static void test_incremental_equals_whole(void)
{
    char buf[1000];
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (char)(i * 7 + 3);
    }
    uint32_t whole = ab_crc32c(0, buf, sizeof(buf));
    for (size_t cut = 0; cut <= sizeof(buf); cut += 37) {
        CHECK(ab_crc32c(ab_crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut) == whole);
    }
    buf[500] ^= 1;
    CHECK(ab_crc32c(0, buf, sizeof(buf)) != whole);
}

int main(void)
{
    RUN(test_known_values);
    RUN(test_incremental_equals_whole);
    return TEST_SUMMARY();
}
