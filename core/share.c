/* Per-address body budget before authentication. See share.h. */
#include "share.h"
#include "mem.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 1024

struct entry {
    struct entry *next;
    unsigned char key[17]; /* family byte + address (IPv6: its /64), or a hashed text */
    long held;
};

struct ab_share {
    pthread_mutex_t mu;
    long limit;
    struct entry *bucket[BUCKETS];
};

struct ab_share *ab_share_new(long limit)
{
    if (limit <= 0) {
        return NULL;
    }
    struct ab_share *s = ab_calloc(1, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    s->limit = limit;
    return s;
}

void ab_share_free(struct ab_share *s)
{
    if (s == NULL) {
        return;
    }
    for (size_t i = 0; i < BUCKETS; i++) {
        for (struct entry *e = s->bucket[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The key of an address: 4 for IPv4 (IPv4-mapped IPv6 too), 6 + the /64 for IPv6, or 0 +
 * an FNV-1a hash of the text for anything else ("unknown" from a proxy header). */
static void make_key(const char *addr, unsigned char key[17])
{
    memset(key, 0, 17);
    unsigned char a6[16];
    if (inet_pton(AF_INET, addr, key + 1) == 1) {
        key[0] = 4;
    } else if (inet_pton(AF_INET6, addr, a6) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a6, mapped, 12) == 0) {
            key[0] = 4;
            memcpy(key + 1, a6 + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a6, 8);
        }
    } else {
        uint64_t h = 14695981039346656037ULL;
        for (const unsigned char *p = (const unsigned char *)addr; *p; p++) {
            h = (h ^ *p) * 1099511628211ULL;
        }
        memcpy(key + 1, &h, sizeof(h));
    }
}

static size_t hash_key(const unsigned char key[17])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 17; i++) {
        h = (h ^ key[i]) * 16777619u;
    }
    return h % BUCKETS;
}

/* The entry of key, created when create is set; NULL otherwise. Under s->mu. */
static struct entry *find(struct ab_share *s, const unsigned char key[17], int create,
                          struct entry ***link)
{
    struct entry **pp = &s->bucket[hash_key(key)];
    for (; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->key, key, 17) == 0) {
            *link = pp;
            return *pp;
        }
    }
    if (!create) {
        return NULL;
    }
    struct entry *e = ab_calloc(1, sizeof(*e));
    memcpy(e->key, key, 17);
    *pp = e;
    *link = pp;
    return e;
}

int ab_share_charge(struct ab_share *s, const char *addr, long bytes)
{
    if (s == NULL || bytes <= 0) {
        return 0;
    }
    unsigned char key[17];
    make_key(addr, key);
    struct entry **link;
    int rc = -1;
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, key, 1, &link);
    if (e->held + bytes <= s->limit) {
        e->held += bytes;
        rc = 0;
    } else if (e->held == 0) {
        *link = e->next;
        free(e);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void ab_share_release(struct ab_share *s, const char *addr, long bytes)
{
    if (s == NULL || bytes <= 0) {
        return;
    }
    unsigned char key[17];
    make_key(addr, key);
    struct entry **link;
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, key, 0, &link);
    if (e) {
        e->held -= bytes;
        if (e->held <= 0) {
            *link = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

long ab_share_held(struct ab_share *s, const char *addr)
{
    if (s == NULL) {
        return 0;
    }
    unsigned char key[17];
    make_key(addr, key);
    struct entry **link;
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, key, 0, &link);
    long held = e ? e->held : 0;
    pthread_mutex_unlock(&s->mu);
    return held;
}
