/* Configuration: one table of options (name, type, default, offset, help) drives the
 * command-line parser, the config file, the environment (ALMABRIDGE_<NAME>), --help,
 * --print-config and the README's option reference (Fluent Bit config_map).
 * Precedence: defaults < config file < environment < command line. */
#ifndef AB_CONFIG_H
#define AB_CONFIG_H

#include <stddef.h>
#include <stdio.h>

struct ab_strlist {
    char **v;
    size_t n;
};

struct ab_config {
    /* front end */
    char *listen; /* HOST:PORT */
    char *path;
    char *secret_file;
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
    char *proxy_header;  /* x-forwarded-for | forwarded */
    struct ab_strlist allow;
    struct ab_strlist trusted_proxy;
    long drain_grace_s;
    long shutdown_timeout_s;
    /* sinks */
    char *sink;  /* file | kafka | redis */
    char *route; /* NULL = the sink's default */
    char *file;
    int file_fsync; /* 1 = fsync each batch (default) */
    char *kafka_brokers;
    char *kafka_key; /* template; "" = no key */
    struct ab_strlist kafka_conf;
    char *redis_url;
    long redis_maxlen;
    long redis_wait;
    /* process */
    char *config_file;
    char *log_level;
    char *log_format;
    int log_bodies; /* debugging only: log bodies at debug level */
    /* actions (not options of the daemon's state) */
    int help, version, check_config, print_config;
};

enum ab_config_result {
    AB_CONFIG_OK = 0,
    AB_CONFIG_ERROR = 2, /* the exit code for usage and configuration errors */
};

/* Fill cfg from defaults, the config file (--config or ALMABRIDGE_CONFIG), the environment
 * (envp, NULL-terminated "NAME=value" strings) and argv, in that order of precedence.
 * Returns AB_CONFIG_OK, or AB_CONFIG_ERROR with one line in errstr. Start-up only. */
int ab_config_load(struct ab_config *cfg, int argc, char **argv, char **envp, char *errstr,
                   size_t errlen);
void ab_config_free(struct ab_config *cfg);

/* Mask, in place, the secrets given on the command line (a Redis URL's password, secret
 * --kafka-conf values), so that ps and /proc/<pid>/cmdline do not show them. Call after
 * ab_config_load, which has copied the values. */
void ab_config_scrub_argv(int argc, char **argv);

/* --help text, generated from the option table. */
void ab_config_usage(FILE *out);
/* The option reference as a Markdown table (for the README), from the same table. */
void ab_config_markdown(FILE *out);
/* The effective configuration, one "key = value" per line, secrets masked. */
void ab_config_print(const struct ab_config *cfg, FILE *out);

#endif
