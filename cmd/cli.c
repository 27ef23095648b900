/* Shared by the subcommands (see cli.h): option splitting, the server configuration seen
 * by a consumer, durations, the signing secret. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mem.h"

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

void ab_cli_usage(const char *synopsis, const char *about, const struct ab_cli_opt *opts,
                  size_t nopts, const char *footer)
{
    printf("usage: %s\n\n%s\n\n", synopsis, about);
    for (size_t i = 0; i < nopts; i++) {
        char syn[80];
        snprintf(syn, sizeof(syn), "--%s%s%s", opts[i].name, opts[i].has_arg ? " " : "",
                 opts[i].has_arg && opts[i].metavar ? opts[i].metavar : "");
        printf("  %-28s %s\n", syn, opts[i].help);
    }
    if (footer) {
        printf("\n%s\n", footer);
    }
}

/* The only function that knows where the server keeps its sink settings. */
int ab_cli_load_config(int nargs, char **args, struct ab_cli_sinkcfg *out, struct ab_config *full,
                       char *err, size_t errlen)
{
    struct ab_config cfg;
    memset(out, 0, sizeof(*out));
    if (ab_config_load(&cfg, nargs, args, environ, err, errlen) != AB_CONFIG_OK) {
        return -1;
    }
    out->sink = ab_strdup(cfg.sink);
    out->route = cfg.route ? ab_strdup(cfg.route) : NULL;
    out->key = ab_strdup(cfg.kafka_key ? cfg.kafka_key : "");
    out->file = ab_strdup(cfg.file);
    out->kafka_brokers = ab_strdup(cfg.kafka_brokers);
    out->redis_url = ab_strdup(cfg.redis_url);
    out->n_kafka_conf = cfg.kafka_conf.n;
    out->kafka_conf = ab_calloc(cfg.kafka_conf.n + 1, sizeof(char *));
    for (size_t i = 0; i < cfg.kafka_conf.n; i++) {
        out->kafka_conf[i] = ab_strdup(cfg.kafka_conf.v[i]);
    }
    if (full != NULL) {
        *full = cfg;
    } else {
        ab_config_free(&cfg);
    }
    return 0;
}

void ab_cli_sinkcfg_free(struct ab_cli_sinkcfg *c)
{
    if (c == NULL) {
        return;
    }
    free(c->sink);
    free(c->route);
    free(c->key);
    free(c->file);
    free(c->kafka_brokers);
    free(c->redis_url);
    for (size_t i = 0; i < c->n_kafka_conf; i++) {
        free(c->kafka_conf[i]);
    }
    free(c->kafka_conf);
    memset(c, 0, sizeof(*c));
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

char *ab_cli_secret(const char *file, char *err, size_t errlen)
{
    if (file != NULL) {
        return secret_from_file(file, err, errlen);
    }
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "ALMABRIDGE_SECRET=", 18) == 0) {
            char *v = *e + 18;
            char *copy = ab_strdup(v);
            memset(v, 0, strlen(v));
            unsetenv("ALMABRIDGE_SECRET");
            if (*copy) {
                return copy;
            }
            free(copy);
            break;
        }
    }
    snprintf(err, errlen, "no secret to sign with: give --secret-file FILE or set "
                          "ALMABRIDGE_SECRET (or --unsigned to send without a signature)");
    return NULL;
}
