/* The deduplication stores (core/dedupe.h): the registry's half. The program (cmd/) finds
 * the store for --dedupe-store here and fills the process-wide set-up; the core never
 * includes this header. */
#ifndef AB_DEDUPE_STORE_H
#define AB_DEDUPE_STORE_H

#include <stddef.h>

#include "dedupe.h"

struct ab_config;

extern const struct ab_dedupe_ops ab_dedupe_file;
extern const struct ab_dedupe_ops ab_dedupe_redis;

/* Fill *setup from cfg (--dedupe-store, --dedupe-window, --dedupe-key, --dedupe-on-error)
 * and run the store's global_init. *on = 0 when deduplication is off (--dedupe-store none,
 * or the default with a sink other than file); "auto" with the file sink is a local store
 * beside the sink's file ("<file>.dedupe/"). Returns 0, or -1 with one line in errstr.
 * Start-up thread. */
int ab_dedupe_setup_init(struct ab_dedupe_setup *setup, const struct ab_config *cfg,
                         int *on, char *errstr, size_t errlen);
void ab_dedupe_setup_free(struct ab_dedupe_setup *setup);

/* Parse a redis:// URL as --redis does (sinks/redis.c). Returns 0, or -1 with errstr
 * (never the password). The strings are new, owned by the caller. */
int ab_redis_url_parse(const char *url, char **host, int *port, long *db, char **user,
                       char **password, char *addr, size_t addrlen, char *errstr,
                       size_t errlen);

#endif
