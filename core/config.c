/* Configuration. Every option is one row of an option table: the core's `options[]` below,
 * or a sink backend's own table (ab_sink_ops.options), which fills the backend's own struct.
 * The command-line parser, the environment, the config file, --help, --print-config and the
 * Markdown reference are all driven by those tables (Fluent Bit config_map); this file
 * knows no backend, it loads whatever tables it is given. Values are checked as they are set,
 * so an error names the place it came from (--max-body, ALMABRIDGE_MAX_BODY or a line of
 * the config file). Start-up only, single-threaded; no global state, so a configuration
 * can be loaded any number of times in one process. */
#include "config.h"

#include "acl.h"
#include "redact.h"
#include "dedupe.h"
#include "mem.h"
#include "sink.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int check_listen(const char *v, char *why, size_t whylen);
static int check_path(const char *v, char *why, size_t whylen);
static int check_cidr(const char *v, char *why, size_t whylen);
static int check_redact(const char *v, char *why, size_t whylen);

#define OFF(field) offsetof(struct ab_config, field)

/* clang-format off */
static const struct ab_option options[] = {
    /* General */
    {.name = "help", .type = AB_OPT_ACTION, .off = OFF(help), .short_name = 'h',
     .group = "General", .help = "print this help and exit"},
    {.name = "version", .type = AB_OPT_ACTION, .off = OFF(version), .short_name = 'V',
     .group = "General", .help = "print the version and exit"},
    {.name = "config", .type = AB_OPT_STRING, .off = OFF(config_file), .flags = AB_OPT_NO_FILE,
     .group = "General", .metavar = "FILE",
     .help = "read options from FILE: one `name = value` per line, '#' comments; the "
             "environment and the command line override it"},
    {.name = "check-config", .type = AB_OPT_ACTION, .off = OFF(check_config), .group = "General",
     .help = "check the configuration (secrets, TLS files, sink settings) and exit"},
    {.name = "check-connect", .type = AB_OPT_ACTION, .off = OFF(check_connect),
     .group = "General",
     .help = "--check-config, then try to reach the sink's brokers or server (a few seconds "
             "at most) and say what works; exit 0, 1 when something is unreachable, 2 for a "
             "configuration error"},
    {.name = "print-config", .type = AB_OPT_ACTION, .off = OFF(print_config), .group = "General",
     .help = "print the effective configuration, secrets masked, and exit"},
    /* HTTP */
    {.name = "listen", .type = AB_OPT_STRING, .def = "0.0.0.0:8080", .off = OFF(listen),
     .check = check_listen, .group = "HTTP", .metavar = "HOST:PORT",
     .help = "address and port to listen on; [::]:PORT for IPv6"},
    {.name = "admin-listen", .type = AB_OPT_STRING, .off = OFF(admin_listen),
     .check = check_listen, .group = "HTTP", .metavar = "HOST:PORT",
     .help = "serve /healthz, /readyz and /metrics on this separate address (plain HTTP, "
             "keep it off the load balancer); they then answer 404 on --listen. Default: "
             "on --listen"},
    {.name = "path", .type = AB_OPT_STRING, .def = "/webhook", .off = OFF(path),
     .check = check_path, .group = "HTTP", .metavar = "PATH",
     .help = "URL path of the webhook endpoint, for Alma's challenge GET and event POSTs"},
    {.name = "secret-file", .type = AB_OPT_STRING, .off = OFF(secret_file), .group = "HTTP",
     .metavar = "FILE",
     .help = "file with the webhook secret(s), one per line ('#' comments); several allow "
             "rotation. The secret can also come from ALMABRIDGE_SECRET"},
    {.name = "institutions", .type = AB_OPT_STRING, .off = OFF(institutions), .group = "HTTP",
     .metavar = "FILE",
     .help = "consortium mode: one [INSTITUTION_CODE] section per institution, each with its "
             "own secret-file/secret, route and allow (docs/CONSORTIUM.md); a webhook is "
             "verified only with the secrets of the institution it names. The sections may "
             "also end the --config file. Replaces --secret-file and ALMABRIDGE_SECRET"},
    {.name = "unknown-institution", .type = AB_OPT_STRING, .def = "retry",
     .off = OFF(unknown_institution), .choices = "retry|refuse", .group = "HTTP",
     .metavar = "retry|refuse",
     .help = "with --institutions, a webhook of an institution without a profile gets 503 and "
             "Retry-After (retry: Alma sends it again later) or 401 (refuse)"},
    {.name = "insecure-skip-signature", .type = AB_OPT_BOOL, .def = "false",
     .off = OFF(insecure_skip_signature), .group = "HTTP",
     .help = "accept events without checking X-Exl-Signature (testing only)"},
    {.name = "threads", .type = AB_OPT_LONG, .def = "0", .min = 0, .max = 256, .off = OFF(threads),
     .group = "HTTP", .metavar = "N", .help = "worker threads; 0 = one per CPU"},
    {.name = "allow", .type = AB_OPT_LIST, .off = OFF(allow), .check = check_cidr, .group = "HTTP",
     .metavar = "CIDR",
     .help = "accept webhooks only from these client addresses (address or CIDR block); "
             "default: from anywhere"},
    {.name = "trusted-proxy", .type = AB_OPT_LIST, .off = OFF(trusted_proxy), .check = check_cidr,
     .group = "HTTP", .metavar = "CIDR",
     .help = "proxies (e.g. the load balancer) whose X-Forwarded-For names the client"},
    {.name = "proxy-header", .type = AB_OPT_STRING, .def = "x-forwarded-for",
     .off = OFF(proxy_header), .choices = "x-forwarded-for|forwarded", .group = "HTTP",
     .metavar = "x-forwarded-for|forwarded",
     .help = "the header your --trusted-proxy writes (RFC 7239 Forwarded or "
             "X-Forwarded-For); the other one is ignored"},
    /* TLS */
    {.name = "tls-cert", .type = AB_OPT_STRING, .off = OFF(tls_cert), .group = "TLS",
     .metavar = "FILE",
     .help = "PEM certificate chain; serve HTTPS (needs --tls-key). Without it, plain HTTP "
             "behind a TLS-terminating load balancer"},
    {.name = "tls-key", .type = AB_OPT_STRING, .off = OFF(tls_key), .group = "TLS",
     .metavar = "FILE", .help = "PEM private key for --tls-cert"},
    /* Limits */
    {.name = "max-body", .type = AB_OPT_LONG, .def = "4194304", .min = 1, .max = LONG_MAX,
     .off = OFF(max_body), .group = "Limits", .metavar = "BYTES",
     .help = "largest accepted request body; larger ones get 413"},
    {.name = "ack-timeout", .type = AB_OPT_LONG, .def = "4000", .min = 1, .max = 60000,
     .off = OFF(ack_timeout_ms), .unit_ms = 1, .group = "Limits", .metavar = "DURATION",
     .help = "how long to wait for the sink to acknowledge an event before answering 503 "
             "(Alma gives up after 5 s; 5 s or more gets a warning)"},
    {.name = "max-connections", .type = AB_OPT_LONG, .def = "10000", .min = 1, .max = LONG_MAX,
     .off = OFF(max_connections), .group = "Limits", .metavar = "N",
     .help = "open client connections, over all threads"},
    {.name = "max-inflight", .type = AB_OPT_LONG, .def = "10000", .min = 1, .max = LONG_MAX,
     .off = OFF(max_inflight), .group = "Limits", .metavar = "N",
     .help = "events waiting for the sink; more get 503 with Retry-After"},
    {.name = "max-headers-size", .type = AB_OPT_LONG, .def = "16384", .min = 1, .max = LONG_MAX,
     .off = OFF(max_headers_size), .group = "Limits", .metavar = "BYTES",
     .help = "largest accepted request head (request line and headers)"},
    {.name = "read-timeout", .type = AB_OPT_LONG, .def = "10", .min = 1, .max = 3600,
     .off = OFF(read_timeout_s), .unit_ms = 1000, .group = "Limits",
     .metavar = "DURATION",
     .help = "deadline for receiving a whole request (head and body), counted from its "
             "first byte; then the connection is closed"},
    {.name = "idle-timeout", .type = AB_OPT_LONG, .def = "5", .min = 1, .max = 3600,
     .off = OFF(idle_timeout_s), .unit_ms = 1000, .group = "Limits",
     .metavar = "DURATION",
     .help = "close a connection that has no request in progress (a new one, or kept "
             "alive after an answer) after this long"},
    {.name = "max-buffered", .type = AB_OPT_LONG, .def = "67108864", .min = 1, .max = LONG_MAX,
     .off = OFF(max_buffered), .group = "Limits", .metavar = "BYTES",
     .help = "request bodies held in memory, over all connections; a request that would "
             "exceed it gets 503 with Retry-After"},
    {.name = "max-buffered-per-client", .type = AB_OPT_LONG, .def = "16777216", .min = 0,
     .max = LONG_MAX, .off = OFF(max_buffered_per_client), .group = "Limits",
     .metavar = "BYTES",
     .help = "request bodies being received (not yet authenticated) from one client "
             "address (IPv6: one /64), so that a few clients cannot fill --max-buffered; "
             "more get 503 with Retry-After; 0 = no bound"},
    {.name = "drain-grace", .type = AB_OPT_LONG, .def = "5", .min = 0, .max = 3600,
     .off = OFF(drain_grace_s), .unit_ms = 1000, .group = "Limits",
     .metavar = "DURATION",
     .help = "on SIGTERM, keep serving while /readyz reports not ready, so the load "
             "balancer can stop sending"},
    {.name = "shutdown-timeout", .type = AB_OPT_LONG, .def = "10", .min = 0, .max = 3600,
     .off = OFF(shutdown_timeout_s), .unit_ms = 1000, .group = "Limits",
     .metavar = "DURATION",
     .help = "on shutdown, how long to wait for events in flight to be acknowledged"},
    /* Sink */
    {.name = "sink", .type = AB_OPT_STRING, .def = "file", .off = OFF(sink),
     .flags = AB_OPT_SINK_NAME, .group = "Sink", .help = "where events are written"},
    {.name = "route", .type = AB_OPT_STRING, .off = OFF(route), .flags = AB_OPT_SINKS_FOLLOW,
     .group = "Sink",
     .metavar = "TEMPLATE",
     .help = "Kafka topic or Redis stream, with placeholders {action} {event} {institution} "
             "{id} {record}, e.g. alma.{action}; default: the sink's own"},
    {.name = "dead-letter", .type = AB_OPT_STRING, .def = "on", .choices = "on|off",
     .off = OFF(dead_letter), .group = "Sink", .metavar = "on|off",
     .help = "a signed request whose body cannot become an event (not JSON or XML, an "
             "unexpected shape) is stored raw in the dead letter and answered 200 (503 if "
             "that fails); off: answered 4xx as before, and Alma drops it"},
    {.name = "dead-letter-route", .type = AB_OPT_STRING, .def = "alma.deadletter",
     .off = OFF(dead_letter_route), .group = "Sink", .metavar = "NAME",
     .help = "Kafka topic or Redis stream of the dead letter (the file sink writes "
             "FILE.deadletter instead)"},
    {.name = "content-mode", .type = AB_OPT_STRING, .def = "binary", .off = OFF(content_mode),
     .choices = "binary|structured|batched", .group = "Sink",
     .metavar = "binary|structured|batched",
     .help = "CloudEvents content mode of Kafka messages, Redis entries and HTTP POSTs: binary "
             "(attributes as ce_ headers / fields, the data as value) or structured (the JSON "
             "event as value); batched (--sink http only): the events of one loop iteration "
             "in one POST, a JSON array (application/cloudevents-batch+json); the file sink "
             "always writes structured JSON lines"},
    {.name = "redact", .type = AB_OPT_LIST, .off = OFF(redact), .check = check_redact,
     .group = "Sink",
     .metavar = "PATH",
     .help = "remove this member of the webhook (a JSON path rooted at the data, e.g. "
             "$.webhook_user.user.pin_number or $..pin_number) before any sink sees it; "
             "default: $..pin_number and $..password; none: remove nothing"},
    {.name = "dataschema-base", .type = AB_OPT_STRING, .def = "urn:almabridge:schemas:1:",
     .off = OFF(dataschema_base), .group = "Sink", .metavar = "URI",
     .help = "dataschema attribute = URI + the schema's file name in schemas/ (e.g. "
             "loan.json); empty for no dataschema"},
    /* Deduplication */
    {.name = "dedupe-store", .type = AB_OPT_STRING, .def = "auto", .off = OFF(dedupe_store),
     .mask = AB_MASK_URL_PASSWORD, .group = "Deduplication", .metavar = "URL",
     .help = "where deduplication keeps its state: redis://[[user]:password@]host[:port][/db] "
             "(shared by replicas), file:DIR (one replica, survives restarts) or none; auto = "
             "a local store beside the file sink's file (<file>.dedupe), none for the other "
             "sinks. See docs/DEDUPLICATION.md"},
    {.name = "dedupe-window", .type = AB_OPT_STRING, .def = "48h", .off = OFF(dedupe_window),
     .check = ab_dedupe_check_duration, .group = "Deduplication", .metavar = "DURATION",
     .help = "how long a stored webhook's key is remembered (500ms, 10s, 6h, 2d); longer than "
             "Alma's retries (1 h, 3 h, 6 h)"},
    {.name = "dedupe-key", .type = AB_OPT_STRING, .off = OFF(dedupe_key),
     .group = "Deduplication", .metavar = "TEMPLATE",
     .help = "the key two copies share, with the --route placeholders; default: the webhook "
             "id, and for JOB_END the job instance id, prefixed with the institution code"},
    {.name = "dedupe-on-error", .type = AB_OPT_STRING, .def = "accept",
     .off = OFF(dedupe_on_error), .choices = "accept|refuse", .group = "Deduplication",
     .metavar = "accept|refuse",
     .help = "when the store is unreachable: accept = store the event unchecked (counted, "
             "/readyz stays 200), refuse = answer 503 (/readyz 503)"},
    /* Logging */
    {.name = "log-level", .type = AB_OPT_STRING, .def = "info", .off = OFF(log_level),
     .choices = "debug|info|warn|error", .group = "Logging", .metavar = "LEVEL",
     .help = "least severe level logged: debug, info, warn or error"},
    {.name = "log-format", .type = AB_OPT_STRING, .def = "text", .off = OFF(log_format),
     .choices = "text|json", .group = "Logging", .metavar = "text|json",
     .help = "log lines as text or as JSON objects"},
    {.name = "log-bodies", .type = AB_OPT_BOOL, .def = "false", .off = OFF(log_bodies),
     .group = "Logging",
     .help = "log request bodies at debug level, after --redact (a body that does not parse "
             "only with --redact none). Debugging only: bodies hold personal data (names, "
             "addresses)"},
    /* Alma API */
    {.name = "alma-api", .type = AB_OPT_STRING, .off = OFF(alma_api), .group = "Alma API",
     .metavar = "na|eu|ap|aps|ca|cn|URL",
     .help = "Alma's API gateway (a region, or a base URL such as https://api-eu.hosted."
             "exlibrisgroup.com), for `almabridge reconcile` and `wait --fallback-after`"},
    {.name = "alma-api-key-file", .type = AB_OPT_STRING, .off = OFF(alma_api_key_file),
     .group = "Alma API", .metavar = "FILE",
     .help = "file holding the Alma API key (read access to Configuration: jobs); the key is "
             "sent as `Authorization: apikey ...` and never logged or printed"},
    {.name = "alma-api-ca", .type = AB_OPT_STRING, .off = OFF(alma_api_ca), .group = "Alma API",
     .metavar = "FILE",
     .help = "PEM CA bundle to verify the API's TLS certificate with; default: the system's"},
    {.name = "api-budget", .type = AB_OPT_LONG, .def = "1000", .min = 1, .max = 100000000,
     .off = OFF(api_budget), .group = "Alma API", .metavar = "N",
     .help = "Alma API calls per day (UTC) at most, counted in a state file under --state-dir "
             "and shared by every almabridge command using it"},
    {.name = "state-dir", .type = AB_OPT_STRING, .off = OFF(state_dir), .group = "Alma API",
     .metavar = "DIR",
     .help = "where the API call count is kept; default: the directory of --file"},
    {.name = "reconcile-every", .type = AB_OPT_STRING, .off = OFF(reconcile_every),
     .group = "Alma API", .metavar = "DURATION",
     .help = "the daemon runs reconcile this often (e.g. 30m; the first run one period after "
             "start-up): "
             "JOB_END events the webhooks missed, written through the daemon's own sink "
             "(the way for the file sink); needs --reconcile-job and --reconcile-institution"},
    {.name = "reconcile-job", .type = AB_OPT_LIST, .off = OFF(reconcile_job),
     .group = "Alma API", .metavar = "ID",
     .help = "a job whose instances --reconcile-every checks (job_info.id, e.g. M53)"},
    {.name = "reconcile-since", .type = AB_OPT_STRING, .def = "48h", .off = OFF(reconcile_since),
     .group = "Alma API", .metavar = "DURATION",
     .help = "--reconcile-every's window: instances submitted this long ago or later"},
    {.name = "reconcile-institution", .type = AB_OPT_STRING, .off = OFF(reconcile_institution),
     .group = "Alma API", .metavar = "CODE",
     .help = "the institution of the API key, for --reconcile-every's events"},
};
/* clang-format on */

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

#define ENV_PREFIX "ALMABRIDGE_"

/* Layers, lowest precedence first. */
enum layer { LAYER_DEFAULT, LAYER_FILE, LAYER_ENV, LAYER_ARGV };

/* Every option known to one load: the core's table with each sink's table inserted after
 * the option flagged AB_OPT_SINKS_FOLLOW, in the order --help lists them. */
struct optref {
    const struct ab_option *o;
    int set; /* -1: struct ab_config itself; i >= 0: the options struct of sinks[i] */
};

struct optview {
    struct optref *v;
    size_t n;
    char *sink_names; /* "file|kafka|redis": the choices of the option flagged AB_OPT_SINK_NAME */
};

struct loader {
    struct ab_config *cfg;
    struct optview vw;
    enum layer layer;
    enum layer *list_layer; /* per option of vw: the layer that last set it (lists) */
    char *sections_in;      /* the config file whose [sections] are the profiles */
    char *errstr;
    size_t errlen;
};

/* One option given on the command line, kept until the other layers are loaded. */
struct arg {
    const struct ab_option *opt;
    const char *value;
    int positional; /* given as a bare argument (AB_OPT_POSITIONAL) */
};

/* ---- the tables ---- */

static void view_add(struct optview *vw, const struct ab_option *o, int set)
{
    vw->v = ab_realloc(vw->v, (vw->n + 1) * sizeof(*vw->v));
    vw->v[vw->n++] = (struct optref){o, set};
}

/* The options of the core and of every sink in sinks (NULL-terminated, may be NULL). */
static void view_init(struct optview *vw, const struct ab_sink_ops *const *sinks)
{
    memset(vw, 0, sizeof(*vw));
    vw->sink_names = ab_strdup("");
    for (size_t i = 0; sinks && sinks[i]; i++) {
        if (sinks[i]->flags & AB_SINK_WRAPS) {
            continue;
        }
        char *names = ab_asprintf("%s%s%s", vw->sink_names, vw->sink_names[0] ? "|" : "",
                                  sinks[i]->name);
        free(vw->sink_names);
        vw->sink_names = names;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        view_add(vw, &options[i], -1);
        if (!(options[i].flags & AB_OPT_SINKS_FOLLOW)) {
            continue;
        }
        for (size_t k = 0; sinks && sinks[k]; k++) {
            const struct ab_optset *set = sinks[k]->options;
            for (size_t j = 0; set && j < set->n; j++) {
                view_add(vw, &set->opts[j], (int)k);
            }
        }
    }
}

static void view_free(struct optview *vw)
{
    free(vw->v);
    free(vw->sink_names);
}

static const struct ab_option *find_option(const struct optview *vw, const char *name,
                                           size_t len)
{
    for (size_t i = 0; i < vw->n; i++) {
        const struct ab_option *o = vw->v[i].o;
        if (strlen(o->name) == len && memcmp(o->name, name, len) == 0) {
            return o;
        }
    }
    return NULL;
}

/* The position of o in vw. */
static size_t view_index(const struct optview *vw, const struct ab_option *o)
{
    size_t i = 0;
    while (i < vw->n && vw->v[i].o != o) {
        i++;
    }
    return i;
}

/* Where option o of vw keeps its value in cfg: a field of cfg or of a sink's struct. */
static void *field(const struct ab_config *cfg, const struct optview *vw,
                   const struct ab_option *o)
{
    int set = vw->v[view_index(vw, o)].set;
    char *base = set < 0 ? (char *)cfg : (char *)cfg->sink_opts[set];
    return base + o->off;
}

/* The values option o accepts ("a|b|c"), NULL for any (also --sink when no sink was
 * given to the loader: a test of the core alone). */
static const char *choices_of(const struct optview *vw, const struct ab_option *o)
{
    if (o->flags & AB_OPT_SINK_NAME) {
        return vw->sink_names[0] ? vw->sink_names : NULL;
    }
    return o->choices;
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

int ab_config_key_is_secret(const char *key)
{
    return key_is_secret(key, strlen(key));
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

int ab_config_key_harmless(const char *const *harmless, const char *key, size_t len)
{
    for (size_t i = 0; harmless && harmless[i]; i++) {
        if (strlen(harmless[i]) == len && strncmp(harmless[i], key, len) == 0) {
            return 1;
        }
    }
    return 0;
}

/* "sasl.jaas.config=****" for any key but the harmless ones; an item without '=' is
 * masked whole unless it is a harmless key. */
static char *mask_kv_values(const struct ab_option *o, const char *v)
{
    const char *eq = strchr(v, '=');
    if (eq == NULL) {
        return ab_strdup(ab_config_key_harmless(o->harmless, v, strlen(v)) ? v : "****");
    }
    size_t klen = (size_t)(eq - v);
    if (ab_config_key_harmless(o->harmless, v, klen)) {
        return ab_strdup(v);
    }
    return ab_asprintf("%.*s=****", (int)klen, v);
}

/* A copy of value (of option o, a list item for lists) safe to print. */
static char *masked(const struct ab_option *o, const char *v)
{
    switch (o->mask) {
    case AB_MASK_KV_VALUES:
        return mask_kv_values(o, v);
    case AB_MASK_URL_PASSWORD:
        return mask_url(v);
    case AB_MASK_KV_SECRETS:
        return mask_kv(v);
    case AB_MASK_HEADER_VALUE: {
        const char *colon = strchr(v, ':');
        return colon ? ab_asprintf("%.*s: ****", (int)(colon - v), v) : ab_strdup("****");
    }
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

void ab_config_scrub_argv(const struct ab_sink_ops *const *sinks, int argc, char **argv)
{
    struct optview vw;
    view_init(&vw, sinks);
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0) {
            continue;
        }
        const char *name = argv[i] + 2;
        char *eq = strchr(name, '=');
        const struct ab_option *o =
            find_option(&vw, name, eq ? (size_t)(eq - name) : strlen(name));
        if (o == NULL || o->mask == AB_MASK_NONE) {
            continue;
        }
        if (eq) {
            scrub_value(o, eq + 1);
        } else if (i + 1 < argc) {
            scrub_value(o, argv[++i]);
        }
    }
    view_free(&vw);
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

/* One broker address "HOST:PORT" (or "[v6]:PORT"), optionally after "SCHEME://", of len
 * bytes: a host and a port 1..65535. */
static int is_hostport(const char *v, size_t len)
{
    char item[300];
    if (len == 0 || len >= sizeof(item)) {
        return 0;
    }
    snprintf(item, sizeof(item), "%.*s", (int)len, v);
    char *p = strstr(item, "://");
    p = p ? p + 3 : item;
    char *colon = strrchr(p, ':');
    if (colon == NULL || !is_port(colon + 1) || atol(colon + 1) < 1) {
        return 0;
    }
    if (p[0] == '[') {
        struct in6_addr a6;
        *colon = '\0';
        size_t n = strlen(p);
        if (n < 3 || p[n - 1] != ']') {
            return 0;
        }
        p[n - 1] = '\0';
        return inet_pton(AF_INET6, p + 1, &a6) == 1;
    }
    return is_hostname(p, (size_t)(colon - p));
}

int ab_config_check_hostports(const char *v, char *why, size_t whylen)
{
    const char *p = v;
    do {
        size_t len = strcspn(p, ",");
        const char *s = p, *e = p + len;
        while (s < e && isspace((unsigned char)*s)) {
            s++;
        }
        while (e > s && isspace((unsigned char)e[-1])) {
            e--;
        }
        if (!is_hostport(s, (size_t)(e - s))) {
            if (strchr(v, ',') == NULL) {
                snprintf(why, whylen, "is not HOST:PORT with a host and a port 1..65535");
            } else {
                snprintf(why, whylen, "has \"%.*s\", not HOST:PORT with a host and a port "
                         "1..65535", (int)(e - s) > 64 ? 64 : (int)(e - s), s);
            }
            return -1;
        }
        if (p[len] != ',') {
            return 0;
        }
        p += len + 1;
    } while (1);
}

static int check_path(const char *v, char *why, size_t whylen)
{
    if (v[0] != '/') {
        snprintf(why, whylen, "does not start with '/'");
        return -1;
    }
    return 0;
}

/* An IPv4 or IPv6 address, optionally /PREFIX: what core/acl.c parses (its parser). */
static int check_cidr(const char *v, char *why, size_t whylen)
{
    char err[160];
    struct ab_acl *acl = ab_acl_new(&v, 1, err, sizeof(err));
    if (acl == NULL) {
        snprintf(why, whylen, "is not an IP address or CIDR block (e.g. 10.0.0.0/8 or ::1)");
        return -1;
    }
    ab_acl_free(acl);
    return 0;
}

/* One --redact path ("none" is checked with the others at start-up). */
static int check_redact(const char *v, char *why, size_t whylen)
{
    char err[256];
    struct ab_redact *r = ab_redact_compile(&v, 1, err, sizeof(err));
    if (r == NULL && strcmp(v, "none") != 0) {
        snprintf(why, whylen, "is not a JSON path rooted at the data (e.g. "
                              "$.webhook_user.user.pin_number or $..pin_number)");
        return -1;
    }
    ab_redact_free(r);
    return 0;
}

int ab_config_check_kv(const char *v, char *why, size_t whylen)
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
    const char *choices = choices_of(&ld->vw, o);
    if (choices && !in_choices(choices, v)) {
        snprintf(why, sizeof(why), "is not one of %s", choices);
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

int ab_config_duration_ms(const char *s, long bare_unit_ms, long long *ms)
{
    static const struct {
        const char *unit;
        long long ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    char *end = NULL;
    errno = 0;
    double v = s && !isspace((unsigned char)*s) ? strtod(s, &end) : -1;
    if (s == NULL || end == s || errno != 0 || !(v >= 0) || v > 1e15 ||
        strpbrk(s, "xXpPeEnN") != NULL) {
        return -1;
    }
    long long unit = *end == '\0' ? bare_unit_ms : 0;
    for (size_t i = 0; unit == 0 && i < sizeof(units) / sizeof(units[0]); i++) {
        unit = strcmp(end, units[i].unit) == 0 ? units[i].ms : 0;
    }
    if (unit == 0 || v * (double)unit > 9e15) {
        return -1;
    }
    *ms = (long long)(v * (double)unit + 0.5);
    return 0;
}

/* "SECONDS" or "MS": the unit of a bare number for duration option o. */
static const char *duration_unit(const struct ab_option *o)
{
    return o->unit_ms == 1 ? "milliseconds" : o->unit_ms == 1000 ? "seconds" : "units";
}

/* A duration option: the value in the field's unit, which must be a whole number of it. */
static int parse_duration(struct loader *ld, const struct ab_option *o, const char *v,
                          const char *label, long *out)
{
    long long ms;
    if (ab_config_duration_ms(v, o->unit_ms, &ms) != 0) {
        snprintf(ld->errstr, ld->errlen,
                 "%s: \"%s\" is not a duration (e.g. 500ms, 10s, 5m, 6h; a bare number is in %s)",
                 label, v, duration_unit(o));
        return -1;
    }
    if (ms % o->unit_ms != 0) {
        snprintf(ld->errstr, ld->errlen, "%s: %s is not a whole number of %s", label, v,
                 duration_unit(o));
        return -1;
    }
    long long n = ms / o->unit_ms;
    if (n < o->min || n > o->max) {
        snprintf(ld->errstr, ld->errlen, "%s: %s is out of range (%ld..%ld %s)", label, v,
                 o->min, o->max, duration_unit(o));
        return -1;
    }
    *out = (long)n;
    return 0;
}

static int parse_long(struct loader *ld, const struct ab_option *o, const char *v,
                      const char *label, long *out)
{
    char *end = NULL;
    if (o->unit_ms > 0) {
        return parse_duration(ld, o, v, label, out);
    }
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
    size_t idx = view_index(&ld->vw, o);
    if (ld->list_layer[idx] != ld->layer) {
        list_clear(field(ld->cfg, &ld->vw, o));
        ld->list_layer[idx] = ld->layer;
    }
}

/* Set option o to value v (one item for a list) in the current layer. */
static int set_value(struct loader *ld, const struct ab_option *o, const char *v,
                     const char *label)
{
    void *f = field(ld->cfg, &ld->vw, o);
    switch (o->type) {
    case AB_OPT_STRING:
        if (check_value(ld, o, v, label) != 0) {
            return -1;
        }
        free(*(char **)f);
        *(char **)f = ab_strdup(v);
        return 0;
    case AB_OPT_LONG:
        return parse_long(ld, o, v, label, f);
    case AB_OPT_BOOL:
        return parse_bool(ld, v, label, f);
    case AB_OPT_LIST: {
        struct ab_strlist *l = f;
        if (check_value(ld, o, v, label) != 0) {
            return -1;
        }
        list_touch(ld, o);
        l->v = ab_realloc(l->v, (l->n + 1) * sizeof(*l->v));
        l->v[l->n++] = ab_strdup(v);
        return 0;
    }
    case AB_OPT_ACTION:
        *(int *)f = 1;
        return 0;
    }
    return -1;
}

static int set_defaults(struct loader *ld)
{
    ld->layer = LAYER_DEFAULT;
    for (size_t i = 0; i < ld->vw.n; i++) {
        const struct ab_option *o = ld->vw.v[i].o;
        if (o->def != NULL && set_value(ld, o, o->def, "default") != 0) {
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
    if (o->type == AB_OPT_ACTION) {
        if (eq) {
            snprintf(ld->errstr, ld->errlen, "--%s takes no value", o->name);
            return -1;
        }
        *value = NULL;
    } else if (eq) {
        *value = eq + 1;
    } else if (o->type == AB_OPT_BOOL) {
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
    if (prev && prev->type == AB_OPT_BOOL && strncmp(argv[i - 1], "--", 2) == 0 &&
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
            for (size_t k = 0; k < ld->vw.n && !o; k++) {
                o = ld->vw.v[k].o->flags & AB_OPT_POSITIONAL ? ld->vw.v[k].o : NULL;
                for (size_t j = 0; o && j < *nargs; j++) {
                    o = args[j].opt == o && args[j].positional ? NULL : o;
                }
            }
            if (o == NULL) {
                positional_error(ld, argv, i, args, *nargs);
                return -1;
            }
            args[*nargs] = (struct arg){.opt = o, .value = a, .positional = 1};
            (*nargs)++;
            continue;
        }
        if (a[1] != '-') {
            for (size_t k = 0; k < ld->vw.n && !o && a[2] == '\0'; k++) {
                o = ld->vw.v[k].o->short_name == a[1] ? ld->vw.v[k].o : NULL;
            }
        } else {
            eq = strchr(a + 2, '=');
            o = find_option(&ld->vw, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
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
        if (o->type == AB_OPT_ACTION) {
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
static const struct ab_option *env_option(const struct optview *vw, const char *entry,
                                         const char **value)
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
    const struct ab_option *o = find_option(vw, name, n);
    *value = eq + 1;
    return o && o->type != AB_OPT_ACTION ? o : NULL;
}

static int apply_env(struct loader *ld, char **envp)
{
    ld->layer = LAYER_ENV;
    for (size_t i = 0; envp && envp[i]; i++) {
        const char *v = NULL;
        const struct ab_option *o = env_option(&ld->vw, envp[i], &v);
        char label[96];
        if (o == NULL) {
            continue;
        }
        env_name(o, label, sizeof(label));
        int rc = o->type == AB_OPT_LIST ? set_list_csv(ld, o, v, label) : set_value(ld, o, v, label);
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
    const struct ab_option *o = find_option(&ld->vw, key, strlen(key));
    char *label = ab_asprintf("config file %s line %d: %s", path, lineno, key);
    int rc = -1;

    if (o == NULL) {
        snprintf(ld->errstr, ld->errlen, "config file %s line %d: unknown option \"%s\"", path,
                 lineno, key);
    } else if ((o->flags & AB_OPT_NO_FILE) || o->type == AB_OPT_ACTION) {
        snprintf(ld->errstr, ld->errlen,
                 "config file %s line %d: \"%s\" cannot be set in a config file", path, lineno,
                 key);
    } else if (value == NULL && o->type != AB_OPT_BOOL) {
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
        if (line[0] == '[') { /* consortium profiles from here on (institutions.h) */
            if (ld->cfg->institutions != NULL) {
                snprintf(ld->errstr, ld->errlen,
                         "config file %s line %d: institution sections, but \"institutions\" "
                         "already names a file: give the profiles in one place", path, lineno);
                goto done;
            }
            ld->cfg->institutions_line = lineno;
            ld->sections_in = ab_strdup(path);
            free(ld->cfg->institutions);
            ld->cfg->institutions = ab_strdup(path);
            rc = 0;
            goto done;
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
        if (strcmp(args[i].opt->name, "config") == 0) {
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
    if (ld->sections_in && strcmp(cfg->institutions, ld->sections_in) != 0) {
        snprintf(ld->errstr, ld->errlen, "--institutions %s, but the config file %s holds "
                 "institution sections too: give the profiles in one place", cfg->institutions,
                 ld->sections_in);
        return -1;
    }
    if (cfg->institutions && (cfg->secret_file || cfg->insecure_skip_signature)) {
        snprintf(ld->errstr, ld->errlen, "--institutions gives every institution its own "
                 "secrets: remove %s", cfg->secret_file ? "--secret-file" : "--insecure-skip-signature");
        return -1;
    }
    return 0;
}

/* Layers in order: defaults, config file, environment, command line. --help and --version
 * short-cut everything after the command-line syntax check, so they work even with a
 * broken configuration. On error, cfg is left empty (ab_config_free is still safe). */
int ab_config_load(struct ab_config *cfg, const struct ab_sink_ops *const *sinks, int argc,
                   char **argv, char **envp, char *errstr, size_t errlen)
{
    struct loader ld = {.cfg = cfg, .errstr = errstr, .errlen = errlen};
    struct arg *args = ab_calloc(argc > 0 ? (size_t)argc : 1, sizeof(*args));
    size_t nargs = 0, nsinks = 0;
    int rc = AB_CONFIG_ERROR;

    memset(cfg, 0, sizeof(*cfg));
    if (errlen > 0) {
        errstr[0] = '\0';
    }
    while (sinks && sinks[nsinks]) {
        nsinks++;
    }
    cfg->sinks = sinks;
    cfg->sink_opts = ab_calloc(nsinks + 1, sizeof(*cfg->sink_opts));
    for (size_t i = 0; i < nsinks; i++) {
        const struct ab_optset *set = sinks[i]->options;
        cfg->sink_opts[i] = ab_calloc(1, set && set->size ? set->size : 1);
    }
    view_init(&ld.vw, sinks);
    ld.list_layer = ab_calloc(ld.vw.n, sizeof(*ld.list_layer));
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
    free(ld.list_layer);
    free(ld.sections_in);
    view_free(&ld.vw);
    if (rc != AB_CONFIG_OK) {
        ab_config_free(cfg);
    }
    return rc;
}

const void *ab_config_sink_opts(const struct ab_config *cfg, const struct ab_sink_ops *ops)
{
    for (size_t i = 0; cfg->sinks && cfg->sinks[i]; i++) {
        if (cfg->sinks[i] == ops) {
            return cfg->sink_opts[i];
        }
    }
    return NULL;
}

void ab_config_sink_conf(const struct ab_config *cfg, const struct ab_sink_ops *ops,
                         struct ab_sink_conf *out)
{
    *out = (struct ab_sink_conf){
        .opts = ab_config_sink_opts(cfg, ops),
        .ack_timeout_ms = cfg->ack_timeout_ms,
        .max_body = cfg->max_body,
        .check_only = cfg->check_config || cfg->check_connect,
        .route = cfg->route,
        .dead_letter = cfg->dead_letter && strcmp(cfg->dead_letter, "on") == 0,
        .structured = cfg->content_mode != NULL && strcmp(cfg->content_mode, "structured") == 0,
        .batched = cfg->content_mode != NULL && strcmp(cfg->content_mode, "batched") == 0,
    };
}

void ab_config_free(struct ab_config *cfg)
{
    if (cfg == NULL || cfg->sink_opts == NULL) {
        return;
    }
    struct optview vw;
    view_init(&vw, cfg->sinks);
    for (size_t i = 0; i < vw.n; i++) {
        const struct ab_option *o = vw.v[i].o;
        void *f = field(cfg, &vw, o);
        if (o->type == AB_OPT_STRING) {
            free(*(char **)f);
        } else if (o->type == AB_OPT_LIST) {
            list_clear(f);
        }
    }
    view_free(&vw);
    for (size_t i = 0; cfg->sinks && cfg->sinks[i]; i++) {
        free(cfg->sink_opts[i]);
    }
    free(cfg->sink_opts);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- output ---- */

/* "--listen HOST:PORT", "-h, --help", "--log-bodies[=BOOL]" into buf. */
static void option_synopsis(const struct optview *vw, const struct ab_option *o, char *buf,
                            size_t len)
{
    if (o->short_name) {
        snprintf(buf, len, "-%c, --%s", o->short_name, o->name);
    } else if (o->type == AB_OPT_BOOL) {
        snprintf(buf, len, "--%s[=BOOL]", o->name);
    } else if (o->type == AB_OPT_ACTION) {
        snprintf(buf, len, "--%s", o->name);
    } else {
        const char *meta = (o->flags & AB_OPT_SINK_NAME) ? vw->sink_names : o->metavar;
        snprintf(buf, len, "--%s %s", o->name, meta ? meta : "VALUE");
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
    if (o->type == AB_OPT_LIST) {
        append_note(&notes, "repeatable");
    }
    if (o->flags & AB_OPT_POSITIONAL) {
        append_note(&notes, "or as an argument");
    }
    if (o->unit_ms > 0) {
        char note[64];
        snprintf(note, sizeof(note), "a bare number is in %s", duration_unit(o));
        append_note(&notes, note);
    }
    if (o->type != AB_OPT_ACTION) {
        char env[96], note[160];
        env_name(o, env, sizeof(env));
        snprintf(note, sizeof(note), "env %s%s", env,
                 o->type == AB_OPT_LIST ? ", comma- or newline-separated" : "");
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

/* The option lines of --help (only those of group `only`, when not NULL), grouped. */
static void print_options(const struct ab_sink_ops *const *sinks, const char *only, FILE *out)
{
    const char *group = NULL;
    struct optview vw;
    view_init(&vw, sinks);
    for (size_t i = 0; i < vw.n; i++) {
        const struct ab_option *o = vw.v[i].o;
        char syn[96];
        if (only != NULL && strcmp(only, o->group) != 0) {
            continue;
        }
        if (group == NULL || strcmp(group, o->group) != 0) {
            group = o->group;
            fprintf(out, "\n%s:\n", group);
        }
        option_synopsis(&vw, o, syn, sizeof(syn));
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
    view_free(&vw);
}

void ab_config_usage(const struct ab_sink_ops *const *sinks, FILE *out)
{
    fprintf(out, "usage: almabridge [options]\n\n"
                 "Receives Ex Libris Alma webhooks, verifies X-Exl-Signature and writes each "
                 "event as a\nCloudEvent to a file, Kafka or Redis.\n\n"
                 "Every option can also be set in the environment (ALMABRIDGE_NAME) or in the "
                 "config file\n(name = value); the command line overrides the environment, "
                 "which overrides the file.\n");
    print_options(sinks, NULL, out);
}

void ab_config_usage_group(const struct ab_sink_ops *const *sinks, const char *group, FILE *out)
{
    print_options(sinks, group, out);
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

void ab_config_markdown(const struct ab_sink_ops *const *sinks, FILE *out)
{
    struct optview vw;
    view_init(&vw, sinks);
    fprintf(out, "| option | env | default | description |\n|---|---|---|---|\n");
    for (size_t i = 0; i < vw.n; i++) {
        const struct ab_option *o = vw.v[i].o;
        char syn[96], env[96] = "";
        char *def = option_default(o);
        option_synopsis(&vw, o, syn, sizeof(syn));
        if (o->type != AB_OPT_ACTION) {
            env_name(o, env, sizeof(env));
        }
        char *help = o->type == AB_OPT_LIST ? ab_asprintf("%s (repeatable; comma- or newline-"
                                                       "separated in the environment)",
                                                       o->help)
                     : o->unit_ms > 0 ? ab_asprintf("%s (500ms, 10s, 5m, 6h; a bare number is "
                                                    "in %s)", o->help, duration_unit(o))
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
    view_free(&vw);
}

/* s as roff text: backslashes and hyphens escaped, a leading '.' or '\'' defused. */
static void man_text(FILE *out, const char *s)
{
    if (*s == '.' || *s == '\'') {
        fputs("\\&", out);
    }
    for (; *s; s++) {
        if (*s == '\\') {
            fputs("\\e", out);
        } else if (*s == '-') {
            fputs("\\-", out);
        } else {
            fputc(*s, out);
        }
    }
}

void ab_config_man(const struct ab_sink_ops *const *sinks, FILE *out)
{
    const char *group = NULL;
    struct optview vw;
    view_init(&vw, sinks);
    fputs(".SH OPTIONS\n", out);
    for (size_t i = 0; i < vw.n; i++) {
        const struct ab_option *o = vw.v[i].o;
        char syn[96];
        if (group == NULL || strcmp(group, o->group) != 0) {
            group = o->group;
            fputs(".SS ", out);
            man_text(out, group);
            fputc('\n', out);
        }
        option_synopsis(&vw, o, syn, sizeof(syn));
        fputs(".TP\n.B ", out);
        man_text(out, syn);
        fputc('\n', out);
        char *notes = option_notes(o);
        man_text(out, o->help);
        if (notes[0]) {
            fputs(" (", out);
            man_text(out, notes);
            fputc(')', out);
        }
        fputc('\n', out);
        free(notes);
    }
    view_free(&vw);
}

/* One line "name = value" of --print-config. */
static void print_option(const struct ab_config *cfg, const struct optview *vw,
                         const struct ab_option *o, FILE *out)
{
    const void *f = field(cfg, vw, o);
    fprintf(out, "%s = ", o->name);
    if (o->type == AB_OPT_STRING) {
        const char *s = *(char *const *)f;
        char *m = s ? masked(o, s) : NULL;
        fputs(m == NULL ? "(not set)" : m[0] ? m : "\"\"", out);
        free(m);
    } else if (o->type == AB_OPT_LONG) {
        fprintf(out, "%ld%s", *(const long *)f,
                o->unit_ms == 1 ? "ms" : o->unit_ms == 1000 ? "s" : "");
    } else if (o->type == AB_OPT_BOOL) {
        fputs(*(const int *)f ? "true" : "false", out);
    } else if (o->type == AB_OPT_LIST) {
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
    struct optview vw;
    view_init(&vw, cfg->sinks);
    for (size_t i = 0; i < vw.n; i++) {
        if (vw.v[i].o->type != AB_OPT_ACTION) {
            print_option(cfg, &vw, vw.v[i].o, out);
        }
    }
    view_free(&vw);
}
