/* Configuration. Every option is one row of `options[]` below; the command-line parser,
 * the environment, the config file, --help, --print-config and the Markdown reference are
 * all driven by that table (Fluent Bit config_map). Values are checked as they are set,
 * so an error names the place it came from (--max-body, ALMABRIDGE_MAX_BODY or a line of
 * the config file). Start-up only, single-threaded; no global state, so a configuration
 * can be loaded any number of times in one process. */
#include "config.h"

#include "mem.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum opt_type {
    OPT_STRING,
    OPT_LONG,   /* within [min, max] */
    OPT_BOOL,   /* --name alone means true */
    OPT_LIST,   /* repeatable; comma- (or newline-) separated in the environment */
    OPT_ACTION, /* a command-line flag that asks for an action, not a setting */
};

enum opt_mask {
    MASK_NONE,
    MASK_URL_PASSWORD, /* the password in scheme://user:password@host */
    MASK_KV_SECRETS,   /* the value of key=value items whose key looks secret */
};

#define OPT_NO_FILE 0x1 /* may not be set in the config file */

typedef int (*opt_check_fn)(const char *value, char *why, size_t whylen);

struct ab_option {
    const char *name;
    enum opt_type type;
    const char *def; /* default as text, NULL for none */
    size_t off;      /* offsetof(struct ab_config, field) */
    long min, max;   /* OPT_LONG */
    const char *group;
    const char *metavar;
    const char *choices; /* "a|b|c": the only values accepted */
    opt_check_fn check;  /* further validation of a value (each item of a list) */
    enum opt_mask mask;
    unsigned flags;
    char short_name; /* -h, -V */
    const char *help;
};

static int check_listen(const char *v, char *why, size_t whylen);
static int check_path(const char *v, char *why, size_t whylen);
static int check_cidr(const char *v, char *why, size_t whylen);
static int check_kv(const char *v, char *why, size_t whylen);

#define OFF(field) offsetof(struct ab_config, field)

/* clang-format off */
static const struct ab_option options[] = {
    /* General */
    {.name = "help", .type = OPT_ACTION, .off = OFF(help), .short_name = 'h',
     .group = "General", .help = "print this help and exit"},
    {.name = "version", .type = OPT_ACTION, .off = OFF(version), .short_name = 'V',
     .group = "General", .help = "print the version and exit"},
    {.name = "config", .type = OPT_STRING, .off = OFF(config_file), .flags = OPT_NO_FILE,
     .group = "General", .metavar = "FILE",
     .help = "read options from FILE: one `name = value` per line, '#' comments; the "
             "environment and the command line override it"},
    {.name = "check-config", .type = OPT_ACTION, .off = OFF(check_config), .group = "General",
     .help = "check the configuration (secrets, TLS files, sink settings) and exit"},
    {.name = "print-config", .type = OPT_ACTION, .off = OFF(print_config), .group = "General",
     .help = "print the effective configuration, secrets masked, and exit"},
    /* HTTP */
    {.name = "listen", .type = OPT_STRING, .def = "0.0.0.0:8080", .off = OFF(listen),
     .check = check_listen, .group = "HTTP", .metavar = "HOST:PORT",
     .help = "address and port to listen on; [::]:PORT for IPv6"},
    {.name = "path", .type = OPT_STRING, .def = "/webhook", .off = OFF(path),
     .check = check_path, .group = "HTTP", .metavar = "PATH",
     .help = "URL path of the webhook endpoint, for Alma's challenge GET and event POSTs"},
    {.name = "secret-file", .type = OPT_STRING, .off = OFF(secret_file), .group = "HTTP",
     .metavar = "FILE",
     .help = "file with the webhook secret(s), one per line ('#' comments); several allow "
             "rotation. The secret can also come from ALMABRIDGE_SECRET"},
    {.name = "insecure-skip-signature", .type = OPT_BOOL, .def = "false",
     .off = OFF(insecure_skip_signature), .group = "HTTP",
     .help = "accept events without checking X-Exl-Signature (testing only)"},
    {.name = "threads", .type = OPT_LONG, .def = "0", .min = 0, .max = 256, .off = OFF(threads),
     .group = "HTTP", .metavar = "N", .help = "worker threads; 0 = one per CPU"},
    {.name = "allow", .type = OPT_LIST, .off = OFF(allow), .check = check_cidr, .group = "HTTP",
     .metavar = "CIDR",
     .help = "accept webhooks only from these client addresses (address or CIDR block); "
             "default: from anywhere"},
    {.name = "trusted-proxy", .type = OPT_LIST, .off = OFF(trusted_proxy), .check = check_cidr,
     .group = "HTTP", .metavar = "CIDR",
     .help = "proxies (e.g. the load balancer) whose X-Forwarded-For names the client"},
    {.name = "proxy-header", .type = OPT_STRING, .def = "x-forwarded-for",
     .off = OFF(proxy_header), .choices = "x-forwarded-for|forwarded", .group = "HTTP",
     .metavar = "x-forwarded-for|forwarded",
     .help = "the header your --trusted-proxy writes (RFC 7239 Forwarded or "
             "X-Forwarded-For); the other one is ignored"},
    /* TLS */
    {.name = "tls-cert", .type = OPT_STRING, .off = OFF(tls_cert), .group = "TLS",
     .metavar = "FILE",
     .help = "PEM certificate chain; serve HTTPS (needs --tls-key). Without it, plain HTTP "
             "behind a TLS-terminating load balancer"},
    {.name = "tls-key", .type = OPT_STRING, .off = OFF(tls_key), .group = "TLS",
     .metavar = "FILE", .help = "PEM private key for --tls-cert"},
    /* Limits */
    {.name = "max-body", .type = OPT_LONG, .def = "4194304", .min = 1, .max = LONG_MAX,
     .off = OFF(max_body), .group = "Limits", .metavar = "BYTES",
     .help = "largest accepted request body; larger ones get 413"},
    {.name = "ack-timeout", .type = OPT_LONG, .def = "4000", .min = 1, .max = 60000,
     .off = OFF(ack_timeout_ms), .group = "Limits", .metavar = "MS",
     .help = "how long to wait for the sink to acknowledge an event before answering 503 "
             "(Alma gives up after 5000 ms)"},
    {.name = "max-connections", .type = OPT_LONG, .def = "10000", .min = 1, .max = LONG_MAX,
     .off = OFF(max_connections), .group = "Limits", .metavar = "N",
     .help = "open client connections, over all threads"},
    {.name = "max-inflight", .type = OPT_LONG, .def = "10000", .min = 1, .max = LONG_MAX,
     .off = OFF(max_inflight), .group = "Limits", .metavar = "N",
     .help = "events waiting for the sink; more get 503 with Retry-After"},
    {.name = "max-headers-size", .type = OPT_LONG, .def = "16384", .min = 1, .max = LONG_MAX,
     .off = OFF(max_headers_size), .group = "Limits", .metavar = "BYTES",
     .help = "largest accepted request head (request line and headers)"},
    {.name = "read-timeout", .type = OPT_LONG, .def = "10", .min = 1, .max = 3600,
     .off = OFF(read_timeout_s), .group = "Limits", .metavar = "SECONDS",
     .help = "deadline for receiving a whole request (head and body), counted from its "
             "first byte; then the connection is closed"},
    {.name = "idle-timeout", .type = OPT_LONG, .def = "5", .min = 1, .max = 3600,
     .off = OFF(idle_timeout_s), .group = "Limits", .metavar = "SECONDS",
     .help = "close a connection that has no request in progress (a new one, or kept "
             "alive after an answer) after this long"},
    {.name = "max-buffered", .type = OPT_LONG, .def = "67108864", .min = 1, .max = LONG_MAX,
     .off = OFF(max_buffered), .group = "Limits", .metavar = "BYTES",
     .help = "request bodies held in memory, over all connections; a request that would "
             "exceed it gets 503 with Retry-After"},
    {.name = "drain-grace", .type = OPT_LONG, .def = "5", .min = 0, .max = 3600,
     .off = OFF(drain_grace_s), .group = "Limits", .metavar = "SECONDS",
     .help = "on SIGTERM, keep serving while /readyz reports not ready, so the load "
             "balancer can stop sending"},
    {.name = "shutdown-timeout", .type = OPT_LONG, .def = "10", .min = 0, .max = 3600,
     .off = OFF(shutdown_timeout_s), .group = "Limits", .metavar = "SECONDS",
     .help = "on shutdown, how long to wait for events in flight to be acknowledged"},
    /* Sink */
    {.name = "sink", .type = OPT_STRING, .def = "file", .off = OFF(sink),
     .choices = "file|kafka|redis", .group = "Sink", .metavar = "file|kafka|redis",
     .help = "where events are written"},
    {.name = "route", .type = OPT_STRING, .off = OFF(route), .group = "Sink",
     .metavar = "TEMPLATE",
     .help = "Kafka topic or Redis stream, with placeholders {action} {event} {institution} "
             "{id}, e.g. alma.{action}; default: the sink's own"},
    {.name = "file", .type = OPT_STRING, .def = "./almabridge-events.jsonl", .off = OFF(file),
     .group = "Sink", .metavar = "FILE",
     .help = "file sink: append one CloudEvent per line to FILE"},
    {.name = "file-fsync", .type = OPT_BOOL, .def = "true", .off = OFF(file_fsync),
     .group = "Sink",
     .help = "file sink: fsync before acknowledging; false trades durability for speed"},
    /* Kafka */
    {.name = "kafka-brokers", .type = OPT_STRING, .def = "localhost:9092",
     .off = OFF(kafka_brokers), .group = "Kafka", .metavar = "HOST:PORT,...",
     .help = "bootstrap brokers (librdkafka bootstrap.servers)"},
    {.name = "kafka-key", .type = OPT_STRING, .def = "{id}", .off = OFF(kafka_key),
     .group = "Kafka", .metavar = "TEMPLATE",
     .help = "message key template (placeholders as for --route); empty for no key"},
    {.name = "kafka-conf", .type = OPT_LIST, .off = OFF(kafka_conf), .check = check_kv,
     .mask = MASK_KV_SECRETS, .group = "Kafka", .metavar = "KEY=VALUE",
     .help = "extra librdkafka property, e.g. security.protocol=SASL_SSL; values of keys "
             "containing \"password\" or \"secret\" are masked in output"},
    /* Redis */
    {.name = "redis", .type = OPT_STRING, .def = "redis://127.0.0.1:6379", .off = OFF(redis_url),
     .mask = MASK_URL_PASSWORD, .group = "Redis", .metavar = "URL",
     .help = "Redis server, redis://[[user]:password@]host[:port][/db] (no TLS: rediss:// "
             "is refused); the password is masked in output and in ps"},
    {.name = "redis-maxlen", .type = OPT_LONG, .def = "0", .min = 0, .max = LONG_MAX,
     .off = OFF(redis_maxlen), .group = "Redis", .metavar = "N",
     .help = "trim each stream to about N entries (XADD MAXLEN ~); 0 = never trim"},
    {.name = "redis-wait", .type = OPT_LONG, .def = "0", .min = 0, .max = LONG_MAX,
     .off = OFF(redis_wait), .group = "Redis", .metavar = "N",
     .help = "replicas that must confirm each write (WAIT) before it is acknowledged; "
             "0 = the primary's reply is enough"},
    /* Logging */
    {.name = "log-level", .type = OPT_STRING, .def = "info", .off = OFF(log_level),
     .choices = "debug|info|warn|error", .group = "Logging", .metavar = "LEVEL",
     .help = "least severe level logged: debug, info, warn or error"},
    {.name = "log-format", .type = OPT_STRING, .def = "text", .off = OFF(log_format),
     .choices = "text|json", .group = "Logging", .metavar = "text|json",
     .help = "log lines as text or as JSON objects"},
    {.name = "log-bodies", .type = OPT_BOOL, .def = "false", .off = OFF(log_bodies),
     .group = "Logging",
     .help = "log request bodies at debug level. Debugging only: bodies hold personal data "
             "(names, addresses, PINs)"},
};
/* clang-format on */

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

#define ENV_PREFIX "ALMABRIDGE_"

/* Layers, lowest precedence first. */
enum layer { LAYER_DEFAULT, LAYER_FILE, LAYER_ENV, LAYER_ARGV };

struct loader {
    struct ab_config *cfg;
    enum layer layer;
    enum layer list_layer[N_OPTIONS]; /* the layer that last set each list */
    char *errstr;
    size_t errlen;
};

/* One option given on the command line, kept until the other layers are loaded. */
struct arg {
    const struct ab_option *opt;
    const char *value;
};

/* ---- the table ---- */

static const struct ab_option *find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0) {
            return &options[i];
        }
    }
    return NULL;
}

static void *field(const struct ab_config *cfg, const struct ab_option *o)
{
    return (char *)cfg + o->off;
}

/* "ALMABRIDGE_KAFKA_BROKERS" for "kafka-brokers" into buf. */
static void env_name(const struct ab_option *o, char *buf, size_t len)
{
    snprintf(buf, len, ENV_PREFIX "%s", o->name);
    for (char *p = buf; *p; p++) {
        *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    }
}

/* ---- masking ---- */

static int key_is_secret(const char *key, size_t len)
{
    static const char *const words[] = {"password", "secret", ".pem", "oauthbearer.config"};
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= len; i++) {
            if (strncasecmp(key + i, words[w], wl) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* "redis://user:****@host" for "redis://user:pw@host"; a lone user-info part is taken
 * to be a password and masked whole. */
static char *mask_url(const char *v)
{
    const char *auth = strstr(v, "://");
    if (auth == NULL) {
        return ab_strdup(v);
    }
    auth += 3;
    size_t alen = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < auth + alen; p++) {
        if (*p == '@') {
            at = p;
        }
    }
    if (at == NULL) {
        return ab_strdup(v);
    }
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    const char *keep_end = colon ? colon + 1 : auth;
    return ab_asprintf("%.*s****%s", (int)(keep_end - v), v, at);
}

/* "sasl.password=****" for "sasl.password=hunter2"; a secret-looking item without '='
 * is masked whole. */
static char *mask_kv(const char *v)
{
    const char *eq = strchr(v, '=');
    size_t klen = eq ? (size_t)(eq - v) : strlen(v);
    if (!key_is_secret(v, klen)) {
        return ab_strdup(v);
    }
    return eq ? ab_asprintf("%.*s=****", (int)klen, v) : ab_strdup("****");
}

/* A copy of value (of option o, a list item for lists) safe to print. */
static char *masked(const struct ab_option *o, const char *v)
{
    switch (o->mask) {
    case MASK_URL_PASSWORD:
        return mask_url(v);
    case MASK_KV_SECRETS:
        return mask_kv(v);
    default:
        return ab_strdup(v);
    }
}

/* Overwrite, in place, the secret part of a value in argv (the memory /proc/<pid>/cmdline
 * and ps read). Shorter results are padded with NULs; longer ones mask the value whole. */
static void scrub_value(const struct ab_option *o, char *v)
{
    char *m = masked(o, v);
    size_t vl = strlen(v), ml = strlen(m);
    if (strcmp(m, v) != 0) {
        if (ml <= vl) {
            memcpy(v, m, ml);
            memset(v + ml, 0, vl - ml);
        } else {
            memset(v, '*', vl);
        }
    }
    free(m);
}

void ab_config_scrub_argv(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) {
            continue;
        }
        const char *name = argv[i] + 2;
        char *eq = strchr(name, '=');
        const struct ab_option *o = find_option(name, eq ? (size_t)(eq - name) : strlen(name));
        if (o == NULL || o->mask == MASK_NONE) {
            continue;
        }
        if (eq) {
            scrub_value(o, eq + 1);
        } else if (i + 1 < argc) {
            scrub_value(o, argv[++i]);
        }
    }
}

/* ---- validators: 0 when v is fine, else -1 with the reason in why ---- */

static int is_port(const char *p)
{
    size_t n = strspn(p, "0123456789");
    return n > 0 && n <= 5 && p[n] == '\0' && atol(p) <= 65535;
}

static int is_hostname(const char *h, size_t len)
{
    if (len == 0) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (!isalnum((unsigned char)h[i]) && h[i] != '.' && h[i] != '-') {
            return 0;
        }
    }
    return 1;
}

/* HOST:PORT, where HOST is a name, an IPv4 address or a bracketed IPv6 address. */
static int check_listen(const char *v, char *why, size_t whylen)
{
    int ok = 0;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        char host[64];
        struct in6_addr a6;
        if (close && (size_t)(close - v - 1) < sizeof(host) && close[1] == ':') {
            snprintf(host, sizeof(host), "%.*s", (int)(close - v - 1), v + 1);
            ok = inet_pton(AF_INET6, host, &a6) == 1 && is_port(close + 2);
        }
    } else {
        const char *colon = strrchr(v, ':');
        ok = colon && is_hostname(v, (size_t)(colon - v)) && is_port(colon + 1);
    }
    if (!ok) {
        snprintf(why, whylen, "is not HOST:PORT with a port 0..65535 (e.g. 0.0.0.0:8080 or "
                              "[::]:8080)");
    }
    return ok ? 0 : -1;
}

static int check_path(const char *v, char *why, size_t whylen)
{
    if (v[0] != '/') {
        snprintf(why, whylen, "does not start with '/'");
        return -1;
    }
    return 0;
}

/* An IPv4 or IPv6 address, optionally /PREFIX (as core/acl.c accepts). */
static int check_cidr(const char *v, char *why, size_t whylen)
{
    char addr[64];
    unsigned char buf[sizeof(struct in6_addr)];
    const char *slash = strchr(v, '/');
    size_t alen = slash ? (size_t)(slash - v) : strlen(v);
    int max = 0;

    if (alen < sizeof(addr)) {
        snprintf(addr, sizeof(addr), "%.*s", (int)alen, v);
        max = inet_pton(AF_INET, addr, buf) == 1    ? 32
              : inet_pton(AF_INET6, addr, buf) == 1 ? 128
                                                    : 0;
    }
    if (max && slash) {
        size_t n = strspn(slash + 1, "0123456789");
        max = (n > 0 && n <= 3 && slash[1 + n] == '\0' && atoi(slash + 1) <= max) ? max : 0;
    }
    if (!max) {
        snprintf(why, whylen, "is not an IP address or CIDR block (e.g. 10.0.0.0/8 or ::1)");
        return -1;
    }
    return 0;
}

static int check_kv(const char *v, char *why, size_t whylen)
{
    const char *eq = strchr(v, '=');
    if (eq == NULL || eq == v) {
        snprintf(why, whylen, "is not KEY=VALUE");
        return -1;
    }
    return 0;
}

static int in_choices(const char *choices, const char *v)
{
    size_t len = strlen(v);
    for (const char *c = choices; *c != '\0'; c += strcspn(c, "|"), c += *c == '|') {
        size_t clen = strcspn(c, "|");
        if (clen == len && memcmp(c, v, len) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- setting one value ---- */

/* Run the checks of o on a string value (or list item). Errors name `label`. */
static int check_value(struct loader *ld, const struct ab_option *o, const char *v,
                       const char *label)
{
    char why[160];
    int bad = 0;
    if (o->choices && !in_choices(o->choices, v)) {
        snprintf(why, sizeof(why), "is not one of %s", o->choices);
        bad = 1;
    } else if (o->check && o->check(v, why, sizeof(why)) != 0) {
        bad = 1;
    }
    if (bad) {
        char *shown = masked(o, v);
        snprintf(ld->errstr, ld->errlen, "%s: \"%s\" %s", label, shown, why);
        free(shown);
        return -1;
    }
    return 0;
}

static int parse_long(struct loader *ld, const struct ab_option *o, const char *v,
                      const char *label, long *out)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end != '\0' || isspace((unsigned char)*v)) {
        snprintf(ld->errstr, ld->errlen, "%s: \"%s\" is not a number", label, v);
        return -1;
    }
    if (errno == ERANGE || n < o->min || n > o->max) {
        if (o->max == LONG_MAX) {
            snprintf(ld->errstr, ld->errlen, "%s: %s is out of range (minimum %ld)", label, v,
                     o->min);
        } else {
            snprintf(ld->errstr, ld->errlen, "%s: %s is out of range (%ld..%ld)", label, v,
                     o->min, o->max);
        }
        return -1;
    }
    *out = n;
    return 0;
}

static int parse_bool(struct loader *ld, const char *v, const char *label, int *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *out = strcasecmp(v, yes[i]) == 0;
            return 0;
        }
    }
    snprintf(ld->errstr, ld->errlen, "%s: \"%s\" is not a boolean (true|false|yes|no|1|0)",
             label, v);
    return -1;
}

static void list_clear(struct ab_strlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i]);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* The first time the current layer sets list o, drop what lower layers put there:
 * a higher layer replaces a list, it does not extend it. */
static void list_touch(struct loader *ld, const struct ab_option *o)
{
    size_t idx = (size_t)(o - options);
    if (ld->list_layer[idx] != ld->layer) {
        list_clear(field(ld->cfg, o));
        ld->list_layer[idx] = ld->layer;
    }
}

/* Set option o to value v (one item for a list) in the current layer. */
static int set_value(struct loader *ld, const struct ab_option *o, const char *v,
                     const char *label)
{
    void *f = field(ld->cfg, o);
    switch (o->type) {
    case OPT_STRING:
        if (check_value(ld, o, v, label) != 0) {
            return -1;
        }
        free(*(char **)f);
        *(char **)f = ab_strdup(v);
        return 0;
    case OPT_LONG:
        return parse_long(ld, o, v, label, f);
    case OPT_BOOL:
        return parse_bool(ld, v, label, f);
    case OPT_LIST: {
        struct ab_strlist *l = f;
        if (check_value(ld, o, v, label) != 0) {
            return -1;
        }
        list_touch(ld, o);
        l->v = ab_realloc(l->v, (l->n + 1) * sizeof(*l->v));
        l->v[l->n++] = ab_strdup(v);
        return 0;
    }
    case OPT_ACTION:
        *(int *)f = 1;
        return 0;
    }
    return -1;
}

static int set_defaults(struct loader *ld)
{
    ld->layer = LAYER_DEFAULT;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].def != NULL && set_value(ld, &options[i], options[i].def, "default") != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- the command line ---- */

/* Value of --name=value / --name value / bare --name at argv[*i]; advances *i past a
 * separate value. Returns 0, or -1 with the error in errstr. */
static int argv_value(struct loader *ld, const struct ab_option *o, const char *eq, int argc,
                      char **argv, int *i, const char **value)
{
    if (o->type == OPT_ACTION) {
        if (eq) {
            snprintf(ld->errstr, ld->errlen, "--%s takes no value", o->name);
            return -1;
        }
        *value = NULL;
    } else if (eq) {
        *value = eq + 1;
    } else if (o->type == OPT_BOOL) {
        *value = "true";
    } else if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
        *value = argv[++*i];
    } else {
        snprintf(ld->errstr, ld->errlen, "--%s needs a value", o->name);
        return -1;
    }
    return 0;
}

/* The error for a stray argument argv[i]; "--file-fsync false" gets a hint. */
static void positional_error(struct loader *ld, char **argv, int i, const struct arg *args,
                             size_t nargs)
{
    const struct ab_option *prev = nargs ? args[nargs - 1].opt : NULL;
    if (prev && prev->type == OPT_BOOL && strncmp(argv[i - 1], "--", 2) == 0 &&
        strcmp(argv[i - 1] + 2, prev->name) == 0) {
        snprintf(ld->errstr, ld->errlen, "unexpected argument \"%s\" (write --%s=%s)", argv[i],
                 prev->name, argv[i]);
    } else {
        snprintf(ld->errstr, ld->errlen, "unexpected argument \"%s\" (see --help)", argv[i]);
    }
}

/* First pass over argv: check the syntax, record each option in args (applied later,
 * after the file and the environment) and set the action flags. */
static int scan_argv(struct loader *ld, int argc, char **argv, struct arg *args, size_t *nargs)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const struct ab_option *o = NULL;
        const char *eq = NULL;
        if (a[0] != '-' || a[1] == '\0') {
            positional_error(ld, argv, i, args, *nargs);
            return -1;
        }
        if (a[1] != '-') {
            for (size_t k = 0; k < N_OPTIONS && !o && a[2] == '\0'; k++) {
                o = options[k].short_name == a[1] ? &options[k] : NULL;
            }
        } else {
            eq = strchr(a + 2, '=');
            o = find_option(a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        }
        if (o == NULL) {
            int len = eq ? (int)(eq - a) : (int)strlen(a);
            snprintf(ld->errstr, ld->errlen, "unknown option %.*s (see --help)", len, a);
            return -1;
        }
        args[*nargs].opt = o;
        if (argv_value(ld, o, eq, argc, argv, &i, &args[*nargs].value) != 0) {
            return -1;
        }
        if (o->type == OPT_ACTION) {
            set_value(ld, o, NULL, NULL);
        } else {
            (*nargs)++;
        }
    }
    return 0;
}

static int apply_argv(struct loader *ld, const struct arg *args, size_t nargs)
{
    ld->layer = LAYER_ARGV;
    for (size_t i = 0; i < nargs; i++) {
        char label[64];
        snprintf(label, sizeof(label), "--%s", args[i].opt->name);
        if (set_value(ld, args[i].opt, args[i].value, label) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- the environment ---- */

/* A list from the environment: items separated by commas, or by newlines when the value
 * has any (so that an item may itself contain commas, e.g. a librdkafka property); an
 * empty value empties the list. */
static int set_list_csv(struct loader *ld, const struct ab_option *o, const char *v,
                        const char *label)
{
    int rc = 0;
    const char *sep = strchr(v, '\n') ? "\n" : ",";
    list_touch(ld, o);
    while (rc == 0 && *v != '\0') {
        size_t len = strcspn(v, sep);
        const char *s = v, *e = v + len;
        while (s < e && isspace((unsigned char)*s)) {
            s++;
        }
        while (e > s && isspace((unsigned char)e[-1])) {
            e--;
        }
        if (e > s) {
            char *item = ab_strndup(s, (size_t)(e - s));
            rc = set_value(ld, o, item, label);
            free(item);
        }
        v += len + (v[len] != '\0');
    }
    return rc;
}

/* The option an environment entry "ALMABRIDGE_NAME=value" sets, or NULL: other variables,
 * unknown names (ALMABRIDGE_SECRET is read by the daemon itself) and actions are ignored. */
static const struct ab_option *env_option(const char *entry, const char **value)
{
    char name[64];
    const char *eq = strchr(entry, '=');
    size_t plen = strlen(ENV_PREFIX);
    if (eq == NULL || strncmp(entry, ENV_PREFIX, plen) != 0 ||
        (size_t)(eq - entry) - plen >= sizeof(name)) {
        return NULL;
    }
    size_t n = (size_t)(eq - entry) - plen;
    for (size_t i = 0; i < n; i++) {
        char c = entry[plen + i];
        if (!isupper((unsigned char)c) && !isdigit((unsigned char)c) && c != '_') {
            return NULL;
        }
        name[i] = c == '_' ? '-' : (char)tolower((unsigned char)c);
    }
    const struct ab_option *o = find_option(name, n);
    *value = eq + 1;
    return o && o->type != OPT_ACTION ? o : NULL;
}

static int apply_env(struct loader *ld, char **envp)
{
    ld->layer = LAYER_ENV;
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *v = NULL;
        const struct ab_option *o = env_option(envp[i], &v);
        char label[96];
        if (o == NULL) {
            continue;
        }
        env_name(o, label, sizeof(label));
        int rc = o->type == OPT_LIST ? set_list_csv(ld, o, v, label) : set_value(ld, o, v, label);
        if (rc != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- the config file ---- */

/* Remove surrounding double quotes from v in place (\" and \\ escapes inside). Returns 0,
 * or -1 for an unterminated quote or text after the closing quote. */
static int unquote(char *v)
{
    if (v[0] != '"') {
        return 0;
    }
    char *w = v;
    const char *r = v + 1;
    for (; *r != '\0' && *r != '"'; r++) {
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\')) {
            r++;
        }
        *w++ = *r;
    }
    if (*r != '"') {
        return -1;
    }
    r++;
    r += strspn(r, " \t");
    *w = '\0';
    return *r == '\0' ? 0 : -1;
}

/* Split one line (already trimmed, not empty, not a comment) into key and value, in
 * place. *value is NULL when the line holds only a key. */
static void split_line(char *line, char **key, char **value)
{
    size_t klen = strcspn(line, " \t=");
    char *rest = line + klen;
    rest += strspn(rest, " \t");
    int has_eq = *rest == '=';
    if (has_eq) {
        rest++;
        rest += strspn(rest, " \t");
    }
    line[klen] = '\0';
    *key = line;
    *value = (*rest != '\0' || has_eq) ? rest : NULL;
    for (char *p = line; *p; p++) {
        *p = *p == '_' ? '-' : *p;
    }
}

/* Apply one line of the config file. */
static int file_line(struct loader *ld, const char *path, int lineno, char *line)
{
    char *key, *value;
    split_line(line, &key, &value);
    const struct ab_option *o = find_option(key, strlen(key));
    char *label = ab_asprintf("config file %s line %d: %s", path, lineno, key);
    int rc = -1;

    if (o == NULL) {
        snprintf(ld->errstr, ld->errlen, "config file %s line %d: unknown option \"%s\"", path,
                 lineno, key);
    } else if ((o->flags & OPT_NO_FILE) || o->type == OPT_ACTION) {
        snprintf(ld->errstr, ld->errlen,
                 "config file %s line %d: \"%s\" cannot be set in a config file", path, lineno,
                 key);
    } else if (value == NULL && o->type != OPT_BOOL) {
        snprintf(ld->errstr, ld->errlen, "%s needs a value", label);
    } else if (value != NULL && unquote(value) != 0) {
        snprintf(ld->errstr, ld->errlen, "%s: unterminated quote or text after it", label);
    } else {
        rc = set_value(ld, o, value ? value : "true", label);
    }
    free(label);
    return rc;
}

static void trim(char **s)
{
    char *p = *s + strspn(*s, " \t");
    size_t n = strlen(p);
    while (n > 0 && strchr(" \t\r\n", p[n - 1])) {
        p[--n] = '\0';
    }
    *s = p;
}

static int load_file(struct loader *ld, const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    size_t cap = 0;
    int lineno = 0, rc = -1;

    ld->layer = LAYER_FILE;
    if (fp == NULL) {
        goto fail;
    }
    while (getline(&buf, &cap, fp) >= 0) {
        char *line = buf;
        lineno++;
        trim(&line);
        if (line[0] == '\0' || line[0] == '#') {
            continue;
        }
        if (file_line(ld, path, lineno, line) != 0) {
            goto done;
        }
    }
    if (!ferror(fp)) {
        rc = 0;
        goto done;
    }
fail:
    snprintf(ld->errstr, ld->errlen, "cannot read config file %s: %s", path, strerror(errno));
done:
    free(buf);
    if (fp != NULL) {
        fclose(fp);
    }
    return rc;
}

/* ---- loading ---- */

/* The config file named by the command line (last --config wins) or the environment. */
static const char *config_path(const struct arg *args, size_t nargs, char **envp)
{
    const char *path = NULL;
    for (size_t i = 0; envp && envp[i]; i++) {
        if (strncmp(envp[i], ENV_PREFIX "CONFIG=", strlen(ENV_PREFIX "CONFIG=")) == 0) {
            path = envp[i] + strlen(ENV_PREFIX "CONFIG=");
        }
    }
    for (size_t i = 0; i < nargs; i++) {
        if (args[i].opt->off == OFF(config_file)) {
            path = args[i].value;
        }
    }
    return path && *path ? path : NULL;
}

/* Checks that involve more than one option. */
static int validate(struct loader *ld)
{
    const struct ab_config *cfg = ld->cfg;
    if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
        snprintf(ld->errstr, ld->errlen, "--tls-cert and --tls-key must be given together");
        return -1;
    }
    return 0;
}

/* Layers in order: defaults, config file, environment, command line. --help and --version
 * short-cut everything after the command-line syntax check, so they work even with a
 * broken configuration. On error, cfg is left empty (ab_config_free is still safe). */
int ab_config_load(struct ab_config *cfg, int argc, char **argv, char **envp, char *errstr,
                   size_t errlen)
{
    struct loader ld = {.cfg = cfg, .errstr = errstr, .errlen = errlen};
    struct arg *args = ab_calloc(argc > 0 ? (size_t)argc : 1, sizeof(*args));
    size_t nargs = 0;
    int rc = AB_CONFIG_ERROR;

    memset(cfg, 0, sizeof(*cfg));
    if (errlen > 0) {
        errstr[0] = '\0';
    }
    if (set_defaults(&ld) != 0 || scan_argv(&ld, argc, argv, args, &nargs) != 0) {
        goto done;
    }
    if (!cfg->help && !cfg->version) {
        const char *path = config_path(args, nargs, envp);
        if ((path && load_file(&ld, path) != 0) || apply_env(&ld, envp) != 0 ||
            apply_argv(&ld, args, nargs) != 0 || validate(&ld) != 0) {
            goto done;
        }
    }
    rc = AB_CONFIG_OK;
done:
    free(args);
    if (rc != AB_CONFIG_OK) {
        ab_config_free(cfg);
    }
    return rc;
}

void ab_config_free(struct ab_config *cfg)
{
    if (cfg == NULL) {
        return;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        void *f = field(cfg, &options[i]);
        if (options[i].type == OPT_STRING) {
            free(*(char **)f);
        } else if (options[i].type == OPT_LIST) {
            list_clear(f);
        }
    }
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- output ---- */

/* "--listen HOST:PORT", "-h, --help", "--log-bodies[=BOOL]" into buf. */
static void option_synopsis(const struct ab_option *o, char *buf, size_t len)
{
    if (o->short_name) {
        snprintf(buf, len, "-%c, --%s", o->short_name, o->name);
    } else if (o->type == OPT_BOOL) {
        snprintf(buf, len, "--%s[=BOOL]", o->name);
    } else if (o->type == OPT_ACTION) {
        snprintf(buf, len, "--%s", o->name);
    } else {
        snprintf(buf, len, "--%s %s", o->name, o->metavar ? o->metavar : "VALUE");
    }
}

/* The default as shown in help, masked; NULL when there is none. Caller frees. */
static char *option_default(const struct ab_option *o)
{
    if (o->def == NULL) {
        return NULL;
    }
    return o->def[0] ? masked(o, o->def) : ab_strdup("\"\"");
}

/* Append "; " (unless *s is empty) and note to the malloc'ed string *s. */
static void append_note(char **s, const char *note)
{
    char *joined = ab_asprintf("%s%s%s", *s, **s ? "; " : "", note);
    free(*s);
    *s = joined;
}

/* "default: x; repeatable; env ALMABRIDGE_X, comma-separated" for o; caller frees. */
static char *option_notes(const struct ab_option *o)
{
    char *notes = ab_strdup("");
    char *def = option_default(o);
    if (def != NULL) {
        char *note = ab_asprintf("default: %s", def);
        append_note(&notes, note);
        free(note);
    }
    if (o->type == OPT_LIST) {
        append_note(&notes, "repeatable");
    }
    if (o->type != OPT_ACTION) {
        char env[96], note[160];
        env_name(o, env, sizeof(env));
        snprintf(note, sizeof(note), "env %s%s", env,
                 o->type == OPT_LIST ? ", comma- or newline-separated" : "");
        append_note(&notes, note);
    }
    free(def);
    return notes;
}

/* Print text wrapped at `width` columns, continuation lines indented by `indent`; the
 * first line starts at column `col`. */
static void print_wrapped(FILE *out, const char *text, int col, int indent, int width)
{
    const char *p = text;
    while (*p != '\0') {
        size_t wl = strcspn(p, " ");
        if (col > indent && col + 1 + (int)wl > width) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', out);
            col++;
        }
        fprintf(out, "%.*s", (int)wl, p);
        col += (int)wl;
        p += wl;
        p += strspn(p, " ");
    }
    fputc('\n', out);
}

#define USAGE_COL 36
#define USAGE_WIDTH 100

void ab_config_usage(FILE *out)
{
    const char *group = NULL;
    fprintf(out, "usage: almabridge [options]\n\n"
                 "Receives Ex Libris Alma webhooks, verifies X-Exl-Signature and writes each "
                 "event as a\nCloudEvent to a file, Kafka or Redis.\n\n"
                 "Every option can also be set in the environment (ALMABRIDGE_NAME) or in the "
                 "config file\n(name = value); the command line overrides the environment, "
                 "which overrides the file.\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct ab_option *o = &options[i];
        char syn[96];
        if (group == NULL || strcmp(group, o->group) != 0) {
            group = o->group;
            fprintf(out, "\n%s:\n", group);
        }
        option_synopsis(o, syn, sizeof(syn));
        int col = fprintf(out, "  %s", syn);
        if (col >= USAGE_COL - 1) {
            fprintf(out, "\n%*s", USAGE_COL, "");
        } else {
            fprintf(out, "%*s", USAGE_COL - col, "");
        }
        char *notes = option_notes(o);
        char *text = notes[0] ? ab_asprintf("%s (%s)", o->help, notes) : ab_strdup(o->help);
        print_wrapped(out, text, USAGE_COL, USAGE_COL, USAGE_WIDTH);
        free(text);
        free(notes);
    }
}

/* Print s as the content of a Markdown table cell ('|' escaped), as code if asked. */
static void md_cell(FILE *out, const char *s, int code)
{
    const char *tick = code && s[0] ? "`" : "";
    fprintf(out, " %s", tick);
    for (; *s; s++) {
        if (*s == '|') {
            fputc('\\', out);
        }
        fputc(*s, out);
    }
    fprintf(out, "%s |", tick);
}

void ab_config_markdown(FILE *out)
{
    fprintf(out, "| option | env | default | description |\n|---|---|---|---|\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct ab_option *o = &options[i];
        char syn[96], env[96] = "";
        char *def = option_default(o);
        option_synopsis(o, syn, sizeof(syn));
        if (o->type != OPT_ACTION) {
            env_name(o, env, sizeof(env));
        }
        char *help = o->type == OPT_LIST ? ab_asprintf("%s (repeatable; comma- or newline-"
                                                       "separated in the environment)",
                                                       o->help)
                                         : ab_strdup(o->help);
        fputc('|', out);
        md_cell(out, syn, 1);
        md_cell(out, env, 1);
        md_cell(out, def ? def : "", 1);
        md_cell(out, help, 0);
        fputc('\n', out);
        free(help);
        free(def);
    }
}

/* One line "name = value" of --print-config. */
static void print_option(const struct ab_config *cfg, const struct ab_option *o, FILE *out)
{
    const void *f = field(cfg, o);
    fprintf(out, "%s = ", o->name);
    if (o->type == OPT_STRING) {
        const char *s = *(char *const *)f;
        char *m = s ? masked(o, s) : NULL;
        fputs(m == NULL ? "(not set)" : m[0] ? m : "\"\"", out);
        free(m);
    } else if (o->type == OPT_LONG) {
        fprintf(out, "%ld", *(const long *)f);
    } else if (o->type == OPT_BOOL) {
        fputs(*(const int *)f ? "true" : "false", out);
    } else if (o->type == OPT_LIST) {
        const struct ab_strlist *l = f;
        for (size_t i = 0; i < l->n; i++) {
            char *m = masked(o, l->v[i]);
            fprintf(out, "%s%s", i ? ", " : "", m);
            free(m);
        }
        fputs(l->n ? "" : "(not set)", out);
    }
    fputc('\n', out);
}

void ab_config_print(const struct ab_config *cfg, FILE *out)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].type != OPT_ACTION) {
            print_option(cfg, &options[i], out);
        }
    }
}
