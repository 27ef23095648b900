/* The HTTP sink: each event POSTed per the CloudEvents HTTP protocol binding 1.0, answered
 * 200 to Alma only after the target's 2xx (docs/HTTP_SINK.md). */
#ifndef AB_HTTP_SINK_H
#define AB_HTTP_SINK_H

#include "config.h"
#include "sink.h"

/* The HTTP sink's options (its option table fills this). */
struct ab_http_conf {
    char *url;              /* --http-url: a URL, possibly with {action} {event} ... */
    char *ca_file;          /* --http-ca-file: CA bundle for the target's certificate */
    char *cert;             /* --http-cert: client certificate (PEM) */
    char *key;              /* --http-key: its private key (PEM) */
    char *auth_file;        /* --http-auth-file: the Authorization header's value */
    struct ab_strlist headers; /* --http-header "Name: value", repeatable */
    long max_inflight;      /* --http-max-inflight: requests in flight per worker */
    long batch_max;         /* --http-batch-max: events per POST in batched mode */
    char *health_url;       /* --http-health-url: probed while the target is unhealthy */
    char *dead_letter_file; /* --dead-letter-file: events the target refused for good */
};

extern const struct ab_sink_ops ab_sink_http;

#endif
