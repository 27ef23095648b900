/* Shared by the subcommands (see cli.h): option splitting, the server configuration seen
 * by a consumer, durations, the signing secret. */
#include "cli.h"

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

static const struct ab_cli_opt *find_opt(const struct ab_cli_opt *opts, size_t n,
                                         const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0) {
            return &opts[i];
        }
    }
    return NULL;
}

/* One of the subcommand's own options at argv[*i]; advances *i past its value. */
static int take_own(const struct ab_cli_opt *o, int argc, char **argv, int *i, const char *eq,
                    char *err, size_t errlen)
{
    if (!o->has_arg) {
        if (eq != NULL) {
            snprintf(err, errlen, "--%s takes no value", o->name);
            return -1;
        }
        *o->value = "1";
        return 0;
    }
    if (eq != NULL) {
        *o->value = eq + 1;
        return 0;
    }
    if (*i + 1 >= argc) {
        snprintf(err, errlen, "--%s needs a value (%s)", o->name, o->metavar ? o->metavar : "");
        return -1;
    }
    *o->value = argv[++*i];
    return 0;
}

int ab_cli_parse(int argc, char **argv, const struct ab_cli_opt *opts, size_t nopts,
                 const char **pos, size_t *npos, char **rest, int *nrest, int *help, char *err,
                 size_t errlen)
{
    size_t maxpos = npos ? *npos : 0, np = 0;
    int in_foreign = 0; /* the previous argument was a server option: its value may follow */
    if (rest) {
        rest[0] = argv[0];
        *nrest = 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *help = 1;
            continue;
        }
        if (strncmp(a, "--", 2) == 0 && a[2] != '\0') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            const struct ab_cli_opt *o = find_opt(opts, nopts, a + 2, len);
            in_foreign = 0;
            if (o != NULL) {
                if (take_own(o, argc, argv, &i, eq, err, errlen) != 0) {
                    return -1;
                }
                continue;
            }
            if (rest == NULL) {
                snprintf(err, errlen, "unknown option %s (see --help)", a);
                return -1;
            }
            rest[(*nrest)++] = argv[i];
            in_foreign = eq == NULL;
            continue;
        }
        if (in_foreign) {
            rest[(*nrest)++] = argv[i];
            in_foreign = 0;
            continue;
        }
        if (a[0] == '-' && a[1] != '\0') {
            snprintf(err, errlen, "unknown option %s (see --help)", a);
            return -1;
        }
        if (np >= maxpos) {
            snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", a);
            return -1;
        }
        pos[np++] = a;
    }
    if (npos) {
        *npos = np;
    }
    return 0;
}

static void usage(const struct ab_cli_cmd *cmd)
{
    printf("usage: %s\n\n%s\n\n", cmd->synopsis, cmd->about);
    for (size_t i = 0; i < cmd->nopts; i++) {
        const struct ab_cli_opt *o = &cmd->opts[i];
        char syn[80];
        snprintf(syn, sizeof(syn), "--%s%s%s", o->name, o->has_arg ? " " : "",
                 o->has_arg && o->metavar ? o->metavar : "");
        printf("  %-28s %s\n", syn, o->help);
    }
    if (cmd->footer) {
        printf("\n%s\n", cmd->footer);
    }
}

int ab_cli_start(const struct ab_cli_cmd *cmd, int argc, char **argv, const char **pos,
                 size_t *npos, char **rest, int *nrest, char *err, size_t errlen)
{
    int help = 0;
    if (ab_cli_parse(argc, argv, cmd->opts, cmd->nopts, pos, npos, rest, nrest, &help, err,
                     errlen) != 0) {
        return -1;
    }
    if (help) {
        usage(cmd);
        return 1;
    }
    return 0;
}

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
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"", 1000}, {"m", 60000}, {"h", 3600000},
                 {"d", 86400000}};
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : -1;
    if (s == NULL || end == s || errno != 0 || !(v >= 0) || v > 1e12) {
        return -1;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            *ms = (int64_t)(v * (double)units[i].ms);
            return 0;
        }
    }
    return -1;
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
