#include "acl.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mem.h"

struct block {
    unsigned char addr[16]; /* IPv4 stored as IPv4-mapped IPv6 */
    int prefix;             /* 0..128 over the mapped form */
};

struct ab_acl {
    struct block *b;
    size_t n;
};

/* Parse an address into the 16-byte mapped form; returns 4 or 6, or 0 when invalid. */
static int parse_addr(const char *s, unsigned char out[16])
{
    struct in_addr v4;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &v4, 4);
        return 4;
    }
    return inet_pton(AF_INET6, s, out) == 1 ? 6 : 0;
}

struct ab_acl *ab_acl_new(const char *const *cidrs, size_t n, char *errstr, size_t errlen)
{
    struct ab_acl *acl = ab_calloc(1, sizeof(*acl));
    acl->b = ab_calloc(n ? n : 1, sizeof(*acl->b));
    for (size_t i = 0; i < n; i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%s", cidrs[i]);
        char *slash = strchr(buf, '/');
        if (slash) {
            *slash = '\0';
        }
        int fam = parse_addr(buf, acl->b[i].addr);
        int max = fam == 4 ? 32 : 128;
        int prefix = max;
        if (fam && slash) {
            size_t digits = strspn(slash + 1, "0123456789"); /* no sign, no blanks */
            long p = digits > 0 && digits <= 3 && slash[1 + digits] == '\0'
                         ? strtol(slash + 1, NULL, 10)
                         : -1;
            prefix = p < 0 || p > max ? -1 : (int)p;
        }
        if (!fam || prefix < 0) {
            snprintf(errstr, errlen, "\"%s\" is not an address or CIDR block", cidrs[i]);
            ab_acl_free(acl);
            return NULL;
        }
        acl->b[i].prefix = fam == 4 ? prefix + 96 : prefix;
        acl->n++;
    }
    return acl;
}

void ab_acl_free(struct ab_acl *acl)
{
    if (acl) {
        free(acl->b);
        free(acl);
    }
}

static int in_block(const struct block *b, const unsigned char a[16])
{
    int full = b->prefix / 8, rest = b->prefix % 8;
    if (memcmp(a, b->addr, (size_t)full) != 0) {
        return 0;
    }
    if (rest == 0) {
        return 1;
    }
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (b->addr[full] & mask);
}

int ab_acl_match(const struct ab_acl *acl, const char *addr)
{
    unsigned char a[16];
    if (acl == NULL || addr == NULL || !parse_addr(addr, a)) {
        return 0;
    }
    for (size_t i = 0; i < acl->n; i++) {
        if (in_block(&acl->b[i], a)) {
            return 1;
        }
    }
    return 0;
}

int ab_acl_is_loopback(const char *addr)
{
    unsigned char a[16];
    static const unsigned char v6_loopback[16] = {[15] = 1};
    if (addr == NULL || !parse_addr(addr, a)) {
        return 0;
    }
    int mapped = memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0;
    return (mapped && a[12] == 127) || memcmp(a, v6_loopback, 16) == 0;
}

/* Copy the list entry [s, e) into out, trimmed of blanks and quotes, without a [v6]
 * bracket form or an IPv4 :port suffix. */
static void copy_entry(const char *s, const char *e, char *out, size_t outlen)
{
    while (s < e && (*s == ' ' || *s == '\t' || *s == '"')) {
        s++;
    }
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '"')) {
        e--;
    }
    if (e - s >= 2 && *s == '[') {
        const char *close = memchr(s, ']', (size_t)(e - s));
        if (close) {
            s++;
            e = close;
        }
    } else {
        const char *colon = memchr(s, ':', (size_t)(e - s));
        if (colon && memchr(colon + 1, ':', (size_t)(e - colon - 1)) == NULL) {
            e = colon; /* a.b.c.d:port */
        }
    }
    size_t n = (size_t)(e - s) < outlen - 1 ? (size_t)(e - s) : outlen - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* The for= values of a combined Forwarded header, as a comma-separated list into out;
 * an element without for= becomes "unknown" (it stops the walk). Quoted strings may hold
 * commas and semicolons. */
static void forwarded_for(const char *f, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    while (*f) {
        /* one element: up to an unquoted comma */
        const char *e = f;
        int q = 0;
        const char *val = NULL, *val_end = NULL;
        const char *pair = f;
        for (;; e++) {
            if (*e == '\0' && q) {
                q = 0; /* an unterminated quote ends with the header */
            }
            if (*e == '"') {
                q = !q;
            } else if (*e == '\\' && q && e[1]) {
                e++;
            } else if ((*e == ';' || *e == ',' || *e == '\0') && !q) {
                const char *p = pair;
                while (*p == ' ' || *p == '\t') {
                    p++;
                }
                if (strncasecmp(p, "for=", 4) == 0 && val == NULL) {
                    val = p + 4;
                    val_end = e;
                }
                pair = e + 1;
                if (*e != ';') {
                    break;
                }
            }
        }
        const char *v = val ? val : "unknown";
        size_t n = val ? (size_t)(val_end - val) : 7;
        if (o + n + 2 < outlen) {
            if (o) {
                out[o++] = ',';
            }
            memcpy(out + o, v, n);
            o += n;
            out[o] = '\0';
        } else {
            snprintf(out, outlen, "unknown"); /* too long: trust none of it */
            return;
        }
        f = *e ? e + 1 : e;
    }
}

void ab_acl_client_addr(const struct ab_acl *trusted, const char *peer, const char *list,
                        int forwarded, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", peer ? peer : "");
    if (list == NULL || !ab_acl_match(trusted, peer)) {
        return;
    }
    char fwd[4096];
    if (forwarded) {
        forwarded_for(list, fwd, sizeof(fwd));
        list = fwd;
    }
    const char *end = list + strlen(list);
    while (end > list) {
        const char *comma = end;
        while (comma > list && comma[-1] != ',') {
            comma--;
        }
        char entry[64];
        copy_entry(comma, end, entry, sizeof(entry));
        unsigned char tmp[16];
        if (entry[0] == '\0') {
            end = comma > list ? comma - 1 : list; /* an empty list element */
            continue;
        }
        if (!parse_addr(entry, tmp)) {
            return; /* garbage in the chain: stop at the last address we could trust */
        }
        snprintf(out, outlen, "%s", entry);
        if (!ab_acl_match(trusted, entry)) {
            return;
        }
        end = comma > list ? comma - 1 : list;
    }
}
