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

#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#include "config.h"
#include "mem.h"
#include "sinks/file.h"
#include "sinks/kafka.h"
#include "sinks/redis.h"
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

/* The only function that knows where the server keeps its sink settings. */
int ab_cli_load_config(int nargs, char **args, struct ab_cli_sinkcfg *out, struct ab_config *full,
                       char *err, size_t errlen)
{
    struct ab_config cfg;
    memset(out, 0, sizeof(*out));
    if (ab_config_load(&cfg, ab_sinks, nargs, args, environ, err, errlen) != AB_CONFIG_OK) {
        return -1;
    }
    out->sink = ab_strdup(cfg.sink);
    out->route = cfg.route ? ab_strdup(cfg.route) : NULL;
    const struct ab_file_conf *file = ab_config_sink_opts(&cfg, &ab_sink_file);
    const struct ab_kafka_conf *kafka = ab_config_sink_opts(&cfg, &ab_sink_kafka);
    const struct ab_redis_conf *redis = ab_config_sink_opts(&cfg, &ab_sink_redis);
    out->key = ab_strdup(kafka->key ? kafka->key : "");
    out->file = ab_strdup(file->path);
    out->kafka_brokers = ab_strdup(kafka->brokers);
    out->redis_url = ab_strdup(redis->url);
    out->n_kafka_conf = kafka->conf.n;
    out->kafka_conf = ab_calloc(kafka->conf.n + 1, sizeof(char *));
    for (size_t i = 0; i < kafka->conf.n; i++) {
        out->kafka_conf[i] = ab_strdup(kafka->conf.v[i]);
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

/* ---- connecting to the brokers as a reader ---- */

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* librdkafka retries by itself; its connection chatter would only confuse a pipeline
     * log. Errors that matter come back from the calls below. */
}

rd_kafka_t *ab_cli_kafka_consumer(const struct ab_cli_sinkcfg *c, const char *client_id, char *err,
                                  size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[96], e[512];
    snprintf(group, sizeof(group), "%s-%ld-%" PRId64, client_id, (long)getpid(),
             ab_cli_now_ms());
    const char *kv[][2] = {
        {"bootstrap.servers", c->kafka_brokers}, {"group.id", group},
        {"enable.auto.commit", "false"},         {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "false"},       {"client.id", client_id},
    };
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        if (rd_kafka_conf_set(conf, kv[i][0], kv[i][1], e, sizeof(e)) != RD_KAFKA_CONF_OK) {
            snprintf(err, errlen, "kafka: %.400s", e);
            goto fail;
        }
    }
    for (size_t i = 0; i < c->n_kafka_conf; i++) {
        char *k = ab_strdup(c->kafka_conf[i]);
        char *eq = strchr(k, '=');
        int bad = eq == NULL;
        if (eq) {
            *eq = '\0';
            bad = rd_kafka_conf_set(conf, k, eq + 1, e, sizeof(e)) != RD_KAFKA_CONF_OK;
        }
        if (bad) {
            snprintf(err, errlen, "--kafka-conf %.100s: %.300s", k, eq ? e : "not key=value");
        }
        free(k);
        if (bad) {
            goto fail;
        }
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof(e));
    if (rk == NULL) {
        snprintf(err, errlen, "kafka: cannot create a consumer: %.400s", e);
        goto fail;
    }
    return rk; /* rd_kafka_new() took the conf */
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

void ab_cli_redis_free(struct ab_cli_redis *t)
{
    free(t->host);
    free(t->user);
    if (t->password) {
        memset(t->password, 0, strlen(t->password));
    }
    free(t->password);
}

static char *uridecode(const char *s, size_t n)
{
    char *raw = ab_strndup(s, n);
    char *dec = evhttp_uridecode(raw, 0, NULL);
    free(raw);
    char *out = ab_strdup(dec ? dec : "");
    free(dec);
    return out;
}

/* redis://[[user]:password@]host[:port][/db] */
int ab_cli_redis_parse(const char *url, struct ab_cli_redis *t, char *err, size_t errlen)
{
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
    int rc = -1;
    memset(t, 0, sizeof(*t));
    if (u == NULL || evhttp_uri_get_scheme(u) == NULL ||
        strcmp(evhttp_uri_get_scheme(u), "redis") != 0 || evhttp_uri_get_host(u) == NULL) {
        snprintf(err, errlen, "--redis: not a redis://[[user]:password@]host[:port][/db] URL");
        goto done;
    }
    const char *h = evhttp_uri_get_host(u);
    size_t hl = strlen(h);
    t->host = h[0] == '[' ? ab_strndup(h + 1, hl - 2) : ab_strdup(h);
    t->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 6379;
    const char *path = evhttp_uri_get_path(u);
    t->db = path && path[0] == '/' && path[1] ? atoi(path + 1) : 0;
    const char *ui = evhttp_uri_get_userinfo(u);
    if (ui != NULL) {
        const char *colon = strchr(ui, ':');
        if (colon == NULL) {
            t->password = uridecode(ui, strlen(ui));
        } else {
            t->user = colon > ui ? uridecode(ui, (size_t)(colon - ui)) : NULL;
            t->password = uridecode(colon + 1, strlen(colon + 1));
        }
    }
    rc = 0;
done:
    if (u) {
        evhttp_uri_free(u);
    }
    return rc;
}

/* A blocking connection, authenticated and on its database; NULL with err. */
redisContext *ab_cli_redis_dial(const struct ab_cli_redis *t, char *err, size_t errlen)
{
    struct timeval tv = {5, 0};
    redisContext *rc = redisConnectWithTimeout(t->host, t->port, tv);
    redisReply *r = NULL;
    if (rc == NULL || rc->err) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", t->host, t->port,
                 rc ? rc->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(rc, tv);
    if (t->password) {
        r = t->user ? redisCommand(rc, "AUTH %s %s", t->user, t->password)
                    : redisCommand(rc, "AUTH %s", t->password);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "authentication failed: %s", r ? r->str : rc->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    r = redisCommand(rc, "SELECT %d", t->db);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "SELECT %d: %s", t->db, r ? r->str : rc->errstr);
        goto fail;
    }
    freeReplyObject(r);
    return rc;
fail:
    if (r) {
        freeReplyObject(r);
    }
    redisFree(rc);
    return NULL;
}

