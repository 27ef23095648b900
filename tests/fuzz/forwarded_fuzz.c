/* libFuzzer driver: the client address behind a trusted proxy, from X-Forwarded-For or
 * Forwarded (ab_acl_client_addr), and the --allow / --trusted-proxy matching of addresses
 * (ab_acl_match). Input: byte 0 picks the peer and the header kind, the rest is the header
 * value (every line of it combined, as the server does).
 * Checks: the answer is NUL-terminated within the buffer, is either the peer itself or a
 * valid IPv4/IPv6 address that occurs in the header, and matching it never crashes. */
#include "acl.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
    }
}

static int is_addr(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ab_acl *trusted;
    static const char *peers[] = {"127.0.0.1", "10.1.2.3", "::1", "::ffff:192.168.1.1",
                                  "203.0.113.9", "2001:db8::1"};
    if (trusted == NULL) {
        const char *cidrs[] = {"127.0.0.0/8", "10.0.0.0/8", "::1", "192.168.0.0/16",
                               "fd00::/8"};
        char err[128];
        trusted = ab_acl_new(cidrs, sizeof(cidrs) / sizeof(cidrs[0]), err, sizeof(err));
        check(trusted != NULL, "acl");
    }
    if (size == 0) {
        return 0;
    }
    const char *peer = peers[data[0] % (sizeof(peers) / sizeof(peers[0]))];
    int forwarded = (data[0] >> 4) & 1;
    char *list = malloc(size);
    memcpy(list, data + 1, size - 1);
    list[size - 1] = '\0';

    char out[64];
    memset(out, 'x', sizeof(out));
    ab_acl_client_addr(trusted, peer, list, forwarded, out, 46);
    check(memchr(out, '\0', 46) != NULL, "answer terminated within its buffer");
    if (strcmp(out, peer) != 0) {
        check(is_addr(out), "a client address other than the peer is an address");
        check(strstr(list, out) != NULL || forwarded, "it comes from the header");
    }
    (void)ab_acl_match(trusted, out);
    (void)ab_acl_match(trusted, list);
    (void)ab_acl_is_loopback(list);
    free(list);
    return 0;
}
