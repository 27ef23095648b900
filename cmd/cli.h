/* What the operator and consumer subcommands (wait, send, challenge, replay, spool) share:
 * their options loaded with the daemon's by the daemon's loader, durations, the webhook
 * secret and the entry points that cmd/almabridge.c's main() dispatches to.
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

/* A subcommand whose options are a table (struct ab_option) loaded by the daemon's own
 * loader together with the daemon's tables: the same parser, environment variables
 * (ALMABRIDGE_<NAME>), config file and --help formatting. `options` is an options-only
 * entry (AB_SINK_WRAPS, like the spool's); all its options share one group. */
struct ab_cli_table {
    const char *synopsis; /* "almabridge wait --job-instance ID [options]" */
    const char *about;    /* a paragraph */
    const char *footer;   /* after the option lines, or NULL */
    const struct ab_sink_ops *options;
};

/* Load the daemon's configuration and cmd's options from argv (argv[0] is the subcommand's
 * name), the environment and the config file into *cfg; the command's own struct is then
 * ab_config_sink_opts(cfg, cmd->options). Returns 0 to go on (ab_config_free cfg), 1 when
 * --help was printed (the command exits 0; nothing to free), -1 with one line in err. */
int ab_cli_load(const struct ab_cli_table *cmd, int argc, char **argv, struct ab_config *cfg,
                char *err, size_t errlen);

/* THE place where a subcommand reads the server's configuration: --config FILE, the
 * ALMABRIDGE_* environment and the server options in args (as split off by ab_cli_parse),
 * through the server's own option table and loader, so that the sink options and --route
 * mean exactly what they mean to the daemon. Fills *cfg (ab_config_free it). Returns 0, or
 * -1 with one line in err. */
int ab_cli_load_config(int nargs, char **args, struct ab_config *cfg, char *err, size_t errlen);

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

/* The subcommands; argv[0] is the subcommand's name. Each returns the process exit code. */
int ab_cmd_wait(int argc, char **argv);
int ab_cmd_send(int argc, char **argv);
int ab_cmd_challenge(int argc, char **argv);
int ab_cmd_replay(int argc, char **argv);
/* `almabridge reconcile` (cmd/reconcile.c): JOB_END events from Alma's Jobs API. */
int ab_cmd_reconcile(int argc, char **argv);
/* --reconcile-every inside the daemon (cmd/reconcile.c): a thread of its own writing through
 * the daemon's sink (ops, conf and shared as the workers have them) and, when dedupe is not
 * NULL, through the daemon's deduplication store (a guard of its own). NULL when the option
 * is not set, or with err when its settings are wrong. Stop it before the sink's
 * global_free and the store's. */
struct ab_sink_ops;
struct ab_sink_conf;
struct ab_dedupe_setup;
struct ab_reconcile_daemon *ab_reconcile_daemon_start(const struct ab_config *cfg,
                                                      const struct ab_sink_ops *ops,
                                                      const struct ab_sink_conf *conf,
                                                      void *shared,
                                                      const struct ab_dedupe_setup *dedupe,
                                                      char *err, size_t errlen);
void ab_reconcile_daemon_stop(struct ab_reconcile_daemon *rd);
/* The --reconcile-* settings checked (for prepare() and --check-config): 0, or -1 with err. */
int ab_reconcile_daemon_check(const struct ab_config *cfg, char *err, size_t errlen);
/* `almabridge spool inspect DIR` (cmd/spool.c). */
int ab_cmd_spool(int argc, char **argv);

/* argv[1] names a subcommand (wait, send, challenge, replay, spool, verify, reconcile):
 * run it and exit with its code. Returns 0 when it names none (the daemon runs). */
int ab_cli_run_subcommand(int argc, char **argv);

#endif
