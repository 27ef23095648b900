/* What the operator and consumer subcommands (wait, send, challenge, replay) share: their
 * own small option parser, the server's configuration read through one function, durations,
 * the webhook secret and the entry points that cmd/almabridge.c's main() dispatches to.
 * Start-up code of a command-line program: single-threaded, may print and exit. */
#ifndef AB_CLI_H
#define AB_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Exit codes shared by the subcommands. */
enum ab_cli_exit {
    AB_EXIT_OK = 0,
    AB_EXIT_FAILED = 1,  /* wait: the job ended unsuccessfully; send: a non-2xx answer */
    AB_EXIT_USAGE = 2,   /* usage, configuration or connection errors */
    AB_EXIT_TIMEOUT = 3, /* wait: --timeout passed */
    AB_EXIT_INTERRUPTED = 130,
};

/* One option of a subcommand. `value` receives a pointer into argv (the text after '=' or
 * the next argument); a flag (has_arg 0) gets "1". */
struct ab_cli_opt {
    const char *name; /* without the dashes */
    int has_arg;
    const char **value;
    const char *metavar;
    const char *help;
};

/* Split argv[1..] (argv[0] is the subcommand's name): the subcommand's own options go to
 * their `value`; arguments not starting with '-' go to pos (up to *npos, the count is
 * returned there); other options are copied, with the arguments that follow them up to the
 * next option, to rest (rest[0] = argv[0], *nrest counts them) for the server's
 * configuration loader, or are an error when rest is NULL. Returns 0, or -1 with one line
 * in err. "-h"/"--help" sets *help. */
int ab_cli_parse(int argc, char **argv, const struct ab_cli_opt *opts, size_t nopts,
                 const char **pos, size_t *npos, char **rest, int *nrest, int *help, char *err,
                 size_t errlen);

/* A subcommand: its options and its --help text. */
struct ab_cli_cmd {
    const char *synopsis; /* "almabridge wait --job-instance ID [options]" */
    const char *about;    /* a paragraph */
    const char *footer;   /* after the option table, or NULL */
    const struct ab_cli_opt *opts;
    size_t nopts;
};

/* ab_cli_parse() for cmd, and --help: returns 0 to go on, 1 when the help was printed (the
 * command exits 0), -1 with one line in err. */
int ab_cli_start(const struct ab_cli_cmd *cmd, int argc, char **argv, const char **pos,
                 size_t *npos, char **rest, int *nrest, char *err, size_t errlen);

/* What a consumer command needs from the server's configuration: the sink, its route and
 * key templates and the connection settings. Every string is owned by the struct. */
struct ab_cli_sinkcfg {
    char *sink;        /* file | kafka | redis */
    char *route;       /* template, NULL = the sink's default */
    char *key;         /* Kafka key template, "" = no key */
    char *file;        /* file sink path */
    char *kafka_brokers;
    char **kafka_conf; /* "key=value" items */
    size_t n_kafka_conf;
    char *redis_url;
};

/* THE place where a subcommand reads the server's configuration: --config FILE, the
 * ALMABRIDGE_* environment and the server options in args (as split off by ab_cli_parse),
 * through the server's own option table and loader, so that the sink connection options
 * and --route mean exactly what they mean to the daemon. Fills *out (and, when full is not
 * NULL, the whole configuration, for commands that open a sink). Returns 0, or -1 with one
 * line in err. */
int ab_cli_load_config(int nargs, char **args, struct ab_cli_sinkcfg *out, struct ab_config *full,
                       char *err, size_t errlen);
void ab_cli_sinkcfg_free(struct ab_cli_sinkcfg *c);

/* "90s", "15m", "24h", "7d", "500ms", or plain seconds, into milliseconds. Returns 0, or
 * -1 for anything else. */
int ab_cli_duration_ms(const char *s, int64_t *ms);

/* Milliseconds since the epoch / on the monotonic clock. */
int64_t ab_cli_now_ms(void);
int64_t ab_cli_mono_ms(void);

/* The value of the environment variable `name`, copied, then wiped from the process's
 * environment block (so neither children nor /proc/<pid>/environ see it); NULL when unset.
 * Caller wipes and frees. */
char *ab_cli_take_env(const char *name);

/* The webhook secret for signing: the first secret line of `file` (blank lines and '#'
 * comments skipped, trailing CR/LF stripped, as the daemon reads it) or else
 * ALMABRIDGE_SECRET, which is then wiped from the environment. Returns a new string (wipe
 * and free it) or NULL with one line in err. */
char *ab_cli_secret(const char *file, char *err, size_t errlen);

/* A Kafka consumer for reading by assignment: its own throw-away group id (nothing is
 * committed: enable.auto.commit and offset store off), librdkafka's connection chatter
 * silenced, the daemon's --kafka-brokers and --kafka-conf. NULL with err. */
typedef struct rd_kafka_s rd_kafka_t;
rd_kafka_t *ab_cli_kafka_consumer(const struct ab_cli_sinkcfg *c, const char *client_id, char *err,
                                  size_t errlen);

/* The daemon's --redis URL, parsed (redis://[[user]:password@]host[:port][/db]), and a
 * blocking hiredis connection to it, authenticated and on its database. */
struct ab_cli_redis {
    char *host, *user, *password;
    int port, db;
};
typedef struct redisContext redisContext;
int ab_cli_redis_parse(const char *url, struct ab_cli_redis *t, char *err, size_t errlen);
redisContext *ab_cli_redis_dial(const struct ab_cli_redis *t, char *err, size_t errlen);
void ab_cli_redis_free(struct ab_cli_redis *t);

/* The subcommands; argv[0] is the subcommand's name. Each returns the process exit code. */
int ab_cmd_wait(int argc, char **argv);
int ab_cmd_send(int argc, char **argv);
int ab_cmd_challenge(int argc, char **argv);
int ab_cmd_replay(int argc, char **argv);
/* `almabridge reconcile` (cmd/reconcile.c): JOB_END events from Alma's Jobs API. */
int ab_cmd_reconcile(int argc, char **argv);
/* --reconcile-every inside the daemon (cmd/reconcile.c): a thread of its own writing through
 * the daemon's sink (ops, conf and shared as the workers have them). NULL when the option
 * is not set, or with err when its settings are wrong. Stop it before the sink's
 * global_free. */
struct ab_sink_ops;
struct ab_sink_conf;
struct ab_reconcile_daemon *ab_reconcile_daemon_start(const struct ab_config *cfg,
                                                      const struct ab_sink_ops *ops,
                                                      const struct ab_sink_conf *conf,
                                                      void *shared, char *err, size_t errlen);
void ab_reconcile_daemon_stop(struct ab_reconcile_daemon *rd);
/* The --reconcile-* settings checked (for prepare() and --check-config): 0, or -1 with err. */
int ab_reconcile_daemon_check(const struct ab_config *cfg, char *err, size_t errlen);
/* `almabridge spool inspect DIR` (cmd/spool.c). */
int ab_cmd_spool(int argc, char **argv);

#endif
