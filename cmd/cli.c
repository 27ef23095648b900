/* Shared by the subcommands (see cli.h): their options and the server's configuration
 * through the daemon's loader, durations, the signing secret. */
#include "cli.h"
#include "verify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <inttypes.h>
#include <unistd.h>

#include "mem.h"
#include "sinks/registry.h"

extern char **environ;

/* Every backend, then the subcommand's own options: what its configuration is loaded with
 * (it must outlive the configuration: one subcommand runs per process). */
static const struct ab_sink_ops *cmd_tables[16];

int ab_cli_load(const struct ab_cli_table *cmd, int argc, char **argv, struct ab_config *cfg,
                char *err, size_t errlen)
{
    size_t n = 0;
    while (ab_sinks[n] && n + 2 < sizeof(cmd_tables) / sizeof(cmd_tables[0])) {
        cmd_tables[n] = ab_sinks[n];
        n++;
    }
    cmd_tables[n++] = cmd->options;
    cmd_tables[n] = NULL;
    if (ab_config_load(cfg, cmd_tables, argc, argv, environ, err, errlen) != AB_CONFIG_OK) {
        return -1;
    }
    if (!cfg->help) {
        return 0;
    }
    printf("usage: %s\n\n%s\n", cmd->synopsis, cmd->about);
    ab_config_usage_group(cmd_tables, cmd->options->options->opts[0].group, stdout);
    if (cmd->footer) {
        printf("\n%s\n", cmd->footer);
    }
    ab_config_free(cfg);
    return 1;
}

int ab_cli_load_config(int nargs, char **args, struct ab_config *cfg, char *err, size_t errlen)
{
    return ab_config_load(cfg, ab_sinks, nargs, args, environ, err, errlen) == AB_CONFIG_OK ? 0
                                                                                            : -1;
}

int ab_cli_duration_ms(const char *s, int64_t *ms)
{
    long long v;
    if (ab_config_duration_ms(s, 1000, &v) != 0) {
        return -1;
    }
    *ms = (int64_t)v;
    return 0;
}

int64_t ab_cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ab_cli_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The first secret line of path, or NULL with err. */
static char *secret_from_file(const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL, *out = NULL;
    size_t cap = 0;
    ssize_t n;
    if (fp == NULL) {
        snprintf(err, errlen, "cannot read --secret-file %s: %s", path, strerror(errno));
        return NULL;
    }
    while (out == NULL && (n = getline(&line, &cap, fp)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        if (n > 0 && line[0] != '#') {
            out = ab_strdup(line);
        }
    }
    if (line) {
        memset(line, 0, cap);
    }
    free(line);
    fclose(fp);
    if (out == NULL) {
        snprintf(err, errlen, "--secret-file %s holds no secret", path);
    }
    return out;
}

char *ab_cli_take_env(const char *name)
{
    size_t n = strlen(name);
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') {
            char *v = *e + n + 1;
            char *copy = ab_strdup(v);
            memset(v, 0, strlen(v));
            unsetenv(name);
            return copy;
        }
    }
    return NULL;
}

char *ab_cli_secret(const char *file, char *err, size_t errlen)
{
    if (file != NULL) {
        return secret_from_file(file, err, errlen);
    }
    char *s = ab_cli_take_env("ALMABRIDGE_SECRET");
    if (s && *s) {
        return s;
    }
    free(s);
    snprintf(err, errlen, "no secret to sign with: give --secret-file FILE or set "
                          "ALMABRIDGE_SECRET (or --unsigned to send without a signature)");
    return NULL;
}

int ab_cli_run_subcommand(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } cmds[] = {{"wait", ab_cmd_wait}, {"send", ab_cmd_send}, {"challenge", ab_cmd_challenge},
                {"replay", ab_cmd_replay}, {"spool", ab_cmd_spool}, {"verify", ab_cmd_verify},
                {"reconcile", ab_cmd_reconcile}};
    for (size_t i = 0; argc > 1 && i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(argv[1], cmds[i].name) == 0) {
            exit(cmds[i].run(argc - 1, argv + 1));
        }
    }
    return 0;
}
