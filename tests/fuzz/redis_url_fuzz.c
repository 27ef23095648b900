/* libFuzzer driver: the --redis URL parser of the Redis sink (sinks/redis.c, through its
 * global_init). almabridge keeps its own small parser rather than libcurl's URL API because
 * it must accept what redis-cli accepts and libcurl refuses: a password holding '@', ':' or
 * '/' unencoded (the user-info runs to the LAST '@'). Checks, for every input:
 *   - no crash, no read past the string, no leak (ASan);
 *   - it is accepted or refused with a one-line message, never both;
 *   - a refusal never shows the password: the bytes between the user-info's ':' and the
 *     last '@', when there are more than three of them. */
#include "config.h"
#include "log.h"
#include "redis.h"

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

/* global_init on url: 0 when accepted, else -1 with the message in err. */
static int parse(const char *url, char *err, size_t errlen)
{
    struct ab_redis_conf rc = {.url = (char *)url};
    struct ab_sink_conf sc = {.opts = &rc, .ack_timeout_ms = 1000};
    void *shared = NULL;
    err[0] = '\0';
    int r = ab_sink_redis.global_init(&sc, &shared, err, errlen);
    if (r == 0) {
        check(shared != NULL, "accepted without state");
        ab_sink_redis.global_free(shared);
    } else {
        check(r == -1 && err[0] != '\0' && strchr(err, '\n') == NULL, "refusal message");
    }
    return r;
}

#define MARK "Zq9SeCrEt"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ab_log_level_min = AB_LOG_OFF;
    char *url = malloc(size + 1);
    memcpy(url, data, size);
    url[size] = '\0';
    char err[512];
    parse(url, err, sizeof(err));
    /* the same URL with a recognisable password: a refusal never shows it */
    const char *at = strrchr(url, '@');
    const char *scheme = strstr(url, "://");
    const char *colon = scheme && at && at > scheme + 3
                            ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3))
                            : NULL;
    if (colon) {
        size_t n = strlen(url);
        char *marked = malloc(n + sizeof(MARK));
        size_t pre = (size_t)(colon + 1 - url);
        memcpy(marked, url, pre);
        memcpy(marked + pre, MARK, sizeof(MARK) - 1);
        strcpy(marked + pre + sizeof(MARK) - 1, at);
        if (parse(marked, err, sizeof(err)) != 0) {
            check(strstr(err, MARK) == NULL, "the password in a message");
        }
        free(marked);
    }
    free(url);
    return 0;
}
