/* Start-up checks and help text of the daemon beyond the option tables: --check-connect and
 * the part of --help that lists --probe and the subcommands. */
#ifndef AB_CHECK_H
#define AB_CHECK_H

#include <stdio.h>

struct ab_sink_ops;
struct ab_sink_conf;

/* How long --check-connect tries to reach the sink's brokers or server. */
#define AB_CHECK_CONNECT_MS 5000

struct ab_config;

/* --check-connect, after the configuration checked out (global_init succeeded): the sink's
 * own probe (ab_sink_ops.probe) tries to reach its brokers or server within
 * AB_CHECK_CONNECT_MS, and with --alma-api the Alma API is asked once (ab_alma_api_probe).
 * Prints one line per part on stdout; returns the exit code, 0 when everything was
 * reached, 1 when not, 2 when the API client cannot be set up (its configuration). */
int ab_check_connect(const struct ab_config *cfg, const struct ab_sink_ops *ops,
                     const struct ab_sink_conf *conf);

/* The end of --help: --probe, the subcommands and the duration syntax. */
void ab_check_usage_tail(FILE *out);

#endif
