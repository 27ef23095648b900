/* CRC32C: a byte table, or the SSE 4.2 crc32 instruction on x86-64. See crc32c.h. */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

static uint32_t table[256];
static int use_sse42;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static int have_sse42(void);

static void init(void)
{
    use_sse42 = have_sse42();
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        table[i] = c;
    }
}

static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    }
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc,
                                                            const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n > 0; n--, p++) {
        c32 = __builtin_ia32_crc32qi(c32, *p);
    }
    return c32;
}

static int have_sse42(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#else
static int have_sse42(void)
{
    return 0;
}
#endif

uint32_t ab_crc32c(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&init_once, init);
    crc = ~crc;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (use_sse42) {
        return ~crc_sse42(crc, p, n);
    }
#endif
    return ~crc_table(crc, p, n);
}
