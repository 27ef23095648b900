/* Configuration: tables of options (name, type, default, offset, help) drive the
 * command-line parser, the config file, the environment (ALMABRIDGE_<NAME>), --help,
 * --print-config and the README's option reference (Fluent Bit config_map). The core's
 * table fills struct ab_config; each sink backend declares its own table (ab_sink_ops.options)
 * filling its own struct, and the loader parses whatever tables it is given.
 * Precedence: defaults < config file < environment < command line. */
#ifndef AB_CONFIG_H
#define AB_CONFIG_H

#include <stddef.h>
#include <stdio.h>

struct ab_sink_ops;
struct ab_sink_conf;

struct ab_strlist {
    char **v;
    size_t n;
};

/* ---- option tables ---- */

enum ab_opt_type {
    AB_OPT_STRING, /* char * */
    AB_OPT_LONG,   /* long, within [min, max] */
    AB_OPT_BOOL,   /* int; --name alone means true */
    AB_OPT_LIST,   /* struct ab_strlist; repeatable; comma- (or newline-) separated in the
                    * environment */
    AB_OPT_ACTION, /* int; a command-line flag that asks for an action, not a setting */
};

enum ab_opt_mask {
    AB_MASK_NONE,
    AB_MASK_URL_PASSWORD, /* the password in scheme://user:password@host */
    AB_MASK_KV_SECRETS,   /* the value of key=value items whose key looks secret */
    AB_MASK_KV_VALUES,    /* the value of every key=value item whose key is not in the
                           * option's .harmless list (masking by default) */
    AB_MASK_HEADER_VALUE, /* the value of "Name: value" items (HTTP headers), whatever the name */
};

#define AB_OPT_NO_FILE 0x1      /* may not be set in the config file */
#define AB_OPT_SINK_NAME 0x2    /* its choices are the names of the sinks loaded */
#define AB_OPT_SINKS_FOLLOW 0x4 /* the sinks' options are listed right after this one */
#define AB_OPT_POSITIONAL 0x8   /* a bare command-line argument sets it (the first such option
                                 * not yet set that way; a subcommand's FILE or URL) */

/* Validates a value (each item of a list): 0, or -1 with the reason in why ("is not ..."). */
typedef int (*ab_opt_check_fn)(const char *value, char *why, size_t whylen);

/* One option. Names are unique over every table loaded together. */
struct ab_option {
    const char *name; /* --name, ALMABRIDGE_NAME, "name = value" in the config file */
    enum ab_opt_type type;
    const char *def; /* default as text, NULL for none */
    size_t off;      /* offsetof(the struct the table fills, field) */
    long min, max;   /* AB_OPT_LONG */
    long unit_ms;    /* AB_OPT_LONG: non-zero for a duration, the field's unit in ms (1 or
                      * 1000); the value may then carry a unit (500ms, 10s, 5m, 6h, 1d) and a
                      * bare number is in the field's unit */
    const char *group;
    const char *metavar;
    const char *choices;   /* "a|b|c": the only values accepted */
    ab_opt_check_fn check; /* further validation of a value (each item of a list) */
    enum ab_opt_mask mask;
    const char *const *harmless; /* AB_MASK_KV_VALUES: keys shown in clear, NULL-ended */
    unsigned flags;
    char short_name; /* -h, -V */
    const char *help;
};

/* A table and the size of the struct it fills (a sink backend's configuration). */
struct ab_optset {
    const struct ab_option *opts;
    size_t n;
    size_t size;
};
#define AB_OPTSET(table, type) {(table), sizeof(table) / sizeof((table)[0]), sizeof(type)}

/* A duration: a number (decimals allowed) with an optional unit ms, s, m, h or d; a bare
 * number counts in bare_unit_ms. Sets *ms and returns 0, or -1 for anything else (negative,
 * unknown unit, overflow). The one duration syntax of the daemon and every subcommand. */
int ab_config_duration_ms(const char *s, long bare_unit_ms, long long *ms);

/* A validator for HOST:PORT[,HOST:PORT...] broker lists (e.g. --kafka-brokers): each item
 * has a host and a port 1..65535, optionally after a scheme ("SSL://host:port"). */
int ab_config_check_hostports(const char *value, char *why, size_t whylen);

/* 1 when key[0..len) is in the NULL-terminated list harmless (exact match): its value may
 * be shown; 0 otherwise. The rule of AB_MASK_KV_VALUES, for a backend's own messages. */
int ab_config_key_harmless(const char *const *harmless, const char *key, size_t len);

/* A validator for KEY=VALUE items (e.g. --kafka-conf). */
int ab_config_check_kv(const char *value, char *why, size_t whylen);

struct ab_config {
    /* front end */
    char *listen;       /* HOST:PORT */
    char *admin_listen; /* HOST:PORT of /healthz, /readyz, /metrics; NULL: on --listen */
    char *path;
    char *secret_file;
    char *institutions;        /* consortium profiles (institutions.h), NULL = one secret */
    int institutions_line;     /* > 0: the profiles are the sections of the config file,
                                  from this line on (institutions = that file) */
    char *unknown_institution; /* retry (503) | refuse (401) */
    int insecure_skip_signature;
    long max_body;
    long ack_timeout_ms;
    long threads; /* 0 = number of CPUs */
    char *tls_cert;
    char *tls_key;
    long max_connections;
    long max_inflight;
    long max_headers_size;
    long read_timeout_s; /* deadline for a whole request, from its first byte */
    long idle_timeout_s; /* deadline for a connection with no request in progress */
    long max_buffered;   /* bytes of request bodies held, over all connections */
    long max_buffered_per_client; /* of those, being received from one address; 0 = no bound */
    char *proxy_header;  /* x-forwarded-for | forwarded */
    struct ab_strlist allow;
    struct ab_strlist trusted_proxy;
    long drain_grace_s;
    long shutdown_timeout_s;
    /* sinks */
    char *sink;  /* the name of one of `sinks` */
    char *route; /* NULL = the sink's default */
    char *dead_letter;       /* on|off: store signed bodies that cannot become events */
    char *dead_letter_route; /* the dead letter's topic / stream */
    char *content_mode;          /* binary | structured (Kafka, Redis) */
    struct ab_strlist redact;    /* --redact paths; empty: the default set; "none": off */
    char *dataschema_base;       /* "" = no dataschema attribute */
    /* deduplication (core/dedupe.h) */
    char *dedupe_store;    /* URL, "auto" or "none" */
    char *dedupe_window;   /* a duration */
    char *dedupe_key;      /* NULL = the id (job instance id for JOB_END) */
    char *dedupe_on_error; /* accept | refuse */
    /* process */
    char *config_file;
    char *log_level;
    char *log_format;
    int log_bodies; /* debugging only: log bodies at debug level */
    /* Alma API (reconcile, wait --fallback-after): core/alma_api.h */
    char *alma_api;          /* na|eu|ap|aps|ca|cn or a base URL; NULL = not used */
    char *alma_api_key_file; /* the API key is read from this file, never given itself */
    char *alma_api_ca;       /* CA bundle for the API's TLS certificate; NULL = the system's */
    long api_budget;         /* API calls per day (UTC), counted in state_dir */
    char *state_dir;         /* NULL = the directory of the file sink's --file */
    char *reconcile_every;   /* daemon: run reconcile this often (a duration); NULL = never */
    struct ab_strlist reconcile_job;
    char *reconcile_since;   /* a duration */
    char *reconcile_institution;
    /* actions (not options of the daemon's state) */
    int help, version, check_config, check_connect, print_config;
    /* the sinks whose options were loaded (NULL-terminated, not owned), and for each its
     * own configuration struct, filled from its table */
    const struct ab_sink_ops *const *sinks;
    void **sink_opts;
};

enum ab_config_result {
    AB_CONFIG_OK = 0,
    AB_CONFIG_ERROR = 2, /* the exit code for usage and configuration errors */
};

/* Fill cfg from defaults, the config file (--config or ALMABRIDGE_CONFIG), the environment
 * (envp, NULL-terminated "NAME=value" strings) and argv, in that order of precedence, for
 * the core's options and those of every backend in sinks (NULL-terminated; --sink chooses
 * among their names). Returns AB_CONFIG_OK, or AB_CONFIG_ERROR with one line in errstr.
 * Start-up only. */
int ab_config_load(struct ab_config *cfg, const struct ab_sink_ops *const *sinks, int argc,
                   char **argv, char **envp, char *errstr, size_t errlen);
void ab_config_free(struct ab_config *cfg);

/* The configuration struct of backend ops as loaded (NULL if ops was not among sinks). */
const void *ab_config_sink_opts(const struct ab_config *cfg, const struct ab_sink_ops *ops);
/* What backend ops is given at global_init and open: its options and the core settings
 * that bound it. cfg must outlive *out. */
void ab_config_sink_conf(const struct ab_config *cfg, const struct ab_sink_ops *ops,
                         struct ab_sink_conf *out);

/* 1 when a key=value key names a secret (the one list of secret-bearing words: password,
 * secret, .pem, oauthbearer.config; case-insensitive), so its value is never shown. */
int ab_config_key_is_secret(const char *key);

/* Mask, in place, the secrets given on the command line (a Redis URL's password, secret
 * --kafka-conf values), so that ps and /proc/<pid>/cmdline do not show them. Call after
 * ab_config_load, which has copied the values. */
void ab_config_scrub_argv(const struct ab_sink_ops *const *sinks, int argc, char **argv);

/* --help text, generated from the option tables (the core's and those of sinks). */
void ab_config_usage(const struct ab_sink_ops *const *sinks, FILE *out);
/* The --help lines of the options of one group only (a subcommand's own), formatted as
 * ab_config_usage() formats them. */
void ab_config_usage_group(const struct ab_sink_ops *const *sinks, const char *group, FILE *out);
/* The option reference as a Markdown table (for the README), from the same tables. */
void ab_config_markdown(const struct ab_sink_ops *const *sinks, FILE *out);
/* The OPTIONS section of the man page (roff, man(7) macros), from the same tables: one
 * .SS per group, one .TP per option. */
void ab_config_man(const struct ab_sink_ops *const *sinks, FILE *out);
/* The effective configuration, one "key = value" per line, secrets masked. */
void ab_config_print(const struct ab_config *cfg, FILE *out);

#endif
