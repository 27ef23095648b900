/* Address lists for --allow and --trusted-proxy: IPv4 and IPv6 CIDR blocks (a bare address
 * is a /32 or /128). IPv4-mapped IPv6 peers (::ffff:a.b.c.d) match IPv4 blocks. */
#ifndef AB_ACL_H
#define AB_ACL_H

#include <stddef.h>

struct ab_acl; /* immutable once built; shareable between threads */

/* Parse n CIDR strings. Returns NULL with a message in errstr for a bad entry. */
struct ab_acl *ab_acl_new(const char *const *cidrs, size_t n, char *errstr, size_t errlen);
void ab_acl_free(struct ab_acl *acl);

/* 1 when the textual address addr (IPv4 or IPv6, no port) lies in one of the blocks. */
int ab_acl_match(const struct ab_acl *acl, const char *addr);

/* 1 when addr is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped loopback). */
int ab_acl_is_loopback(const char *addr);

/* The client address of a request from peer `peer`: when peer is a trusted proxy, walk
 * `list` from the right and return the first entry that is not itself trusted (the
 * right-most untrusted one); otherwise, or without a list, return peer. `list` is every
 * X-Forwarded-For line combined in order with ", " (may be NULL), or, when `forwarded` is
 * set, every RFC 7239 Forwarded line combined (its for= parameters are used). An entry
 * that is not an address ("unknown", an obfuscated name, garbage) stops the walk at the
 * last address that could be trusted. Writes into out (at least 46 bytes). */
void ab_acl_client_addr(const struct ab_acl *trusted, const char *peer, const char *list,
                        int forwarded, char *out, size_t outlen);

#endif
