/* A fair share of the request-body budget per client address, before authentication.
 *
 * Every body is received in full before its signature can be checked, so --max-buffered
 * alone lets a few clients holding slow bodies starve everyone (issue 23). This table
 * bounds the body bytes being received from one address: IPv4 addresses count one by
 * one, IPv6 ones by their /64 (one host usually has a whole /64 to pick from). Shared by
 * every worker thread (a mutex). */
#ifndef AB_SHARE_H
#define AB_SHARE_H

struct ab_share;

/* A table that lets each address hold at most limit bytes; limit 0: unbounded (NULL is
 * returned and every call below accepts a NULL table). */
struct ab_share *ab_share_new(long limit);
void ab_share_free(struct ab_share *s);

/* Charge bytes to addr (a textual IPv4 or IPv6 address; anything else is its own key).
 * Returns 0, or -1 (nothing charged) when the address would go over its share. */
int ab_share_charge(struct ab_share *s, const char *addr, long bytes);

/* Give back bytes charged to addr. */
void ab_share_release(struct ab_share *s, const char *addr, long bytes);

/* Bytes charged to addr now (for tests and /metrics). */
long ab_share_held(struct ab_share *s, const char *addr);

#endif
