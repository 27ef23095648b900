/* The admin listener (--admin-listen HOST:PORT): GET /healthz, /readyz and /metrics on a
 * port of their own, for probes and scrapes that must not go through the public load
 * balancer. When it is set, the public port answers those paths with 404 (server.c).
 *
 * A small libevent evhttp server on the main thread's event base, apart from the workers'
 * HTTP layer: it reads only process-wide state (the atomics of metrics.h and the per-worker
 * metrics tables, which a scrape may read from any thread). /readyz is 200 when the
 * process is not draining and every worker's sink instance is ready.
 *
 * Access log: failing answers always; successful /healthz and /readyz only at debug level
 * (a probe every few seconds would flood it); /metrics scrapes never. */
#ifndef AB_ADMIN_H
#define AB_ADMIN_H

#include <stddef.h>

struct event_base;
struct ab_app;
struct ab_admin;

/* Listen on hostport (HOST:PORT, [v6]:PORT) on base, serving app's state. Start-up thread;
 * the handlers run on base's thread. Returns the listener, or NULL with one line in
 * errstr. app must outlive it. */
struct ab_admin *ab_admin_new(struct event_base *base, const struct ab_app *app,
                              const char *hostport, char *errstr, size_t errlen);
/* Stop listening and free. NULL is a no-op. base's thread. */
void ab_admin_free(struct ab_admin *a);

/* 1 when a /readyz answer of `status` to `path` is a probe that succeeded: such lines go
 * to the access log only at debug level (also on the public port). */
int ab_admin_quiet_probe(const char *path, int status);

#endif
