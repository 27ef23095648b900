/* Tests for core/config.c: defaults, every option type, the command line, the environment,
 * the config file, precedence, errors, masking and the generated help. */
#include "config.h"

#include "sinks/file.h"
#include "sinks/kafka.h"
#include "sinks/redis.h"
#include "sinks/registry.h"
#include "test.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* argv and envp as NULL-terminated lists of literals. */
#define ARGS(...) ((const char *const[]){"almabridge", __VA_ARGS__, NULL})
#define NOARGS ((const char *const[]){"almabridge", NULL})
#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})

static char err[512];

/* The sinks' own configuration structs of a loaded configuration. */
#define FILEC(c) ((const struct ab_file_conf *)ab_config_sink_opts(&(c), &ab_sink_file))
#define KAFKA(c) ((const struct ab_kafka_conf *)ab_config_sink_opts(&(c), &ab_sink_kafka))
#define REDIS(c) ((const struct ab_redis_conf *)ab_config_sink_opts(&(c), &ab_sink_redis))

/* Writable copy of a NULL-terminated list (argv and envp are char **). */
static char **copy_list(const char *const *list, int *n)
{
    int count = 0;
    while (list && list[count]) {
        count++;
    }
    char **v = calloc((size_t)count + 1, sizeof(*v));
    for (int i = 0; i < count; i++) {
        v[i] = strdup(list[i]);
    }
    *n = count;
    return v;
}

static void free_list(char **v)
{
    for (int i = 0; v[i]; i++) {
        free(v[i]);
    }
    free(v);
}

static int load(struct ab_config *cfg, const char *const *args, const char *const *env)
{
    int argc, envc;
    char **argv = copy_list(args, &argc);
    char **envp = env ? copy_list(env, &envc) : NULL;
    err[0] = '\0';
    int rc = ab_config_load(cfg, ab_sinks, argc, argv, envp, err, sizeof(err));
    free_list(argv);
    if (envp) {
        free_list(envp);
    }
    return rc;
}

/* Expect loading to fail with exactly `want`; cfg must come back empty. */
static void expect_error(const char *const *args, const char *const *env, const char *want)
{
    struct ab_config c;
    int rc = load(&c, args, env);
    CHECK(rc == AB_CONFIG_ERROR);
    CHECK_STR(err, want);
    CHECK(c.listen == NULL && c.allow.n == 0);
    ab_config_free(&c);
}

static char *temp_file(const char *content)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/ab_config_test_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content)) {
        perror("temp file");
        exit(2);
    }
    close(fd);
    return path;
}

/* Run one of the output functions into a string (caller frees). */
static char *capture_cfg(void (*fn)(const struct ab_config *, FILE *), const struct ab_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    fn(c, fp);
    fclose(fp);
    return buf;
}

/* --help and the Markdown reference for every registered sink. */
static void usage_all(FILE *out)
{
    ab_config_usage(ab_sinks, out);
}

static void markdown_all(FILE *out)
{
    ab_config_markdown(ab_sinks, out);
}

static char *capture(void (*fn)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    fn(fp);
    fclose(fp);
    return buf;
}

static const char *const all_options[] = {
    "listen",        "path",          "secret-file",      "insecure-skip-signature",
    "max-body",      "ack-timeout",   "threads",          "tls-cert",
    "tls-key",       "max-connections", "max-inflight",   "max-headers-size",
    "read-timeout",  "allow",         "trusted-proxy",    "drain-grace",
    "shutdown-timeout", "sink",       "route",            "file",
    "file-fsync",    "spool",         "spool-after",      "spool-max-bytes",
    "spool-segment-bytes", "kafka-brokers", "kafka-key",  "kafka-conf", "content-mode", "redact", "dataschema-base",
    "redis",         "redis-maxlen",  "redis-wait",       "config",
    "log-level",     "log-format",    "log-bodies",       "help",
    "version",       "check-config",  "print-config",     "idle-timeout",
    "max-buffered",  "proxy-header",  "institutions",     "unknown-institution",
    "max-buffered-per-client", "dead-letter", "dead-letter-route",
    "alma-api",         "alma-api-key-file",
    "alma-api-ca",   "api-budget",    "state-dir",        "reconcile-every",
    "reconcile-job", "reconcile-since", "reconcile-institution",
    "http-url",
    "http-ca-file",  "http-cert",     "http-key",         "http-auth-file",
    "http-header",   "http-max-inflight", "http-batch-max", "http-health-url", "dead-letter-file",
    "dedupe-store", "dedupe-window", "dedupe-key", "dedupe-on-error",
    "admin-listen",  "check-connect",
};
#define N_ALL (sizeof(all_options) / sizeof(all_options[0]))

static int is_action(const char *name)
{
    return !strcmp(name, "help") || !strcmp(name, "version") || !strcmp(name, "check-config") ||
           !strcmp(name, "print-config") || !strcmp(name, "check-connect");
}

static void test_defaults(void)
{
    struct ab_config c;
    CHECK(load(&c, NOARGS, NULL) == AB_CONFIG_OK);
    CHECK_STR(c.listen, "0.0.0.0:8080");
    CHECK_STR(c.path, "/webhook");
    CHECK(c.secret_file == NULL);
    CHECK(c.insecure_skip_signature == 0);
    CHECK(c.max_body == 4194304);
    CHECK(c.ack_timeout_ms == 4000);
    CHECK(c.threads == 0);
    CHECK(c.tls_cert == NULL && c.tls_key == NULL);
    CHECK(c.max_connections == 10000);
    CHECK(c.max_inflight == 10000);
    CHECK(c.max_headers_size == 16384);
    CHECK(c.read_timeout_s == 10);
    CHECK(c.allow.n == 0 && c.allow.v == NULL);
    CHECK(c.trusted_proxy.n == 0);
    CHECK(c.drain_grace_s == 5);
    CHECK(c.shutdown_timeout_s == 10);
    CHECK_STR(c.sink, "file");
    CHECK(c.route == NULL);
    CHECK_STR(FILEC(c)->path, "./almabridge-events.jsonl");
    CHECK(FILEC(c)->fsync == 1);
    CHECK_STR(KAFKA(c)->brokers, "localhost:9092");
    CHECK_STR(KAFKA(c)->key, "{record}");
    CHECK(KAFKA(c)->conf.n == 0);
    CHECK_STR(REDIS(c)->url, "redis://127.0.0.1:6379");
    CHECK(REDIS(c)->maxlen == 0);
    CHECK(REDIS(c)->wait == 0);
    CHECK(c.config_file == NULL);
    CHECK_STR(c.log_level, "info");
    CHECK_STR(c.log_format, "text");
    CHECK(c.log_bodies == 0);
    CHECK(!c.help && !c.version && !c.check_config && !c.print_config);
    ab_config_free(&c);
    /* envp may be NULL or empty, argv may hold only the program name */
    CHECK(load(&c, NOARGS, ENV("PATH=/usr/bin", "HOME=/root")) == AB_CONFIG_OK);
    ab_config_free(&c);
}

/* Every option set on the command line lands in its own field (checks the offsets). */
static void test_every_option(void)
{
    struct ab_config c;
    int rc = load(&c,
                  ARGS("--listen", "127.0.0.1:9000", "--path", "/alma", "--secret-file", "/s",
                       "--insecure-skip-signature", "--max-body", "100", "--ack-timeout", "2500",
                       "--threads", "4", "--tls-cert", "/c.pem", "--tls-key", "/k.pem",
                       "--max-connections", "11", "--max-inflight", "12", "--max-headers-size",
                       "13", "--read-timeout", "14", "--allow", "10.0.0.0/8", "--trusted-proxy",
                       "192.168.0.1", "--drain-grace", "15", "--shutdown-timeout", "16", "--sink",
                       "kafka", "--route", "alma.{action}", "--file", "/f.jsonl",
                       "--file-fsync=false", "--kafka-brokers", "k1:9092,k2:9092", "--kafka-key",
                       "{institution}", "--kafka-conf", "acks=all", "--redis", "redis://r:1",
                       "--redis-maxlen", "17", "--redis-wait", "1", "--log-level", "debug",
                       "--log-format", "json", "--log-bodies", "--check-config",
                       "--print-config"),
                  NULL);
    CHECK(rc == AB_CONFIG_OK);
    CHECK_STR(err, "");
    CHECK_STR(c.listen, "127.0.0.1:9000");
    CHECK_STR(c.path, "/alma");
    CHECK_STR(c.secret_file, "/s");
    CHECK(c.insecure_skip_signature == 1);
    CHECK(c.max_body == 100);
    CHECK(c.ack_timeout_ms == 2500);
    CHECK(c.threads == 4);
    CHECK_STR(c.tls_cert, "/c.pem");
    CHECK_STR(c.tls_key, "/k.pem");
    CHECK(c.max_connections == 11);
    CHECK(c.max_inflight == 12);
    CHECK(c.max_headers_size == 13);
    CHECK(c.read_timeout_s == 14);
    CHECK(c.allow.n == 1 && !strcmp(c.allow.v[0], "10.0.0.0/8"));
    CHECK(c.trusted_proxy.n == 1 && !strcmp(c.trusted_proxy.v[0], "192.168.0.1"));
    CHECK(c.drain_grace_s == 15);
    CHECK(c.shutdown_timeout_s == 16);
    CHECK_STR(c.sink, "kafka");
    CHECK_STR(c.route, "alma.{action}");
    CHECK_STR(FILEC(c)->path, "/f.jsonl");
    CHECK(FILEC(c)->fsync == 0);
    CHECK_STR(KAFKA(c)->brokers, "k1:9092,k2:9092");
    CHECK_STR(KAFKA(c)->key, "{institution}");
    CHECK(KAFKA(c)->conf.n == 1 && !strcmp(KAFKA(c)->conf.v[0], "acks=all"));
    CHECK_STR(REDIS(c)->url, "redis://r:1");
    CHECK(REDIS(c)->maxlen == 17);
    CHECK(REDIS(c)->wait == 1);
    CHECK_STR(c.log_level, "debug");
    CHECK_STR(c.log_format, "json");
    CHECK(c.log_bodies == 1);
    CHECK(c.check_config == 1 && c.print_config == 1);
    CHECK(c.help == 0 && c.version == 0);
    ab_config_free(&c);
}

static void test_types(void)
{
    struct ab_config c;
    /* bool spellings */
    static const char *const yes[] = {"true", "TRUE", "1", "yes", "on"};
    static const char *const no[] = {"false", "False", "0", "no", "off"};
    for (size_t i = 0; i < 5; i++) {
        char a[64], b[64];
        snprintf(a, sizeof(a), "--log-bodies=%s", yes[i]);
        snprintf(b, sizeof(b), "--file-fsync=%s", no[i]);
        CHECK(load(&c, ARGS(a, b), NULL) == AB_CONFIG_OK);
        CHECK(c.log_bodies == 1 && FILEC(c)->fsync == 0);
        ab_config_free(&c);
    }
    /* a later value wins for scalars; lists collect */
    CHECK(load(&c,
               ARGS("--max-body", "1", "--max-body", "2", "--allow", "10.0.0.0/8", "--allow",
                    "::1", "--allow=fe80::/10"),
               NULL) == AB_CONFIG_OK);
    CHECK(c.max_body == 2);
    CHECK(c.allow.n == 3);
    if (c.allow.n == 3) {
        CHECK_STR(c.allow.v[0], "10.0.0.0/8");
        CHECK_STR(c.allow.v[1], "::1");
        CHECK_STR(c.allow.v[2], "fe80::/10");
    }
    ab_config_free(&c);
    /* long limits are inclusive */
    CHECK(load(&c, ARGS("--ack-timeout", "1", "--threads", "256"), NULL) == AB_CONFIG_OK);
    CHECK(c.ack_timeout_ms == 1 && c.threads == 256);
    ab_config_free(&c);
    CHECK(load(&c, ARGS("--ack-timeout=60000", "--threads=0"), NULL) == AB_CONFIG_OK);
    CHECK(c.ack_timeout_ms == 60000 && c.threads == 0);
    ab_config_free(&c);
    /* actions */
    CHECK(load(&c, ARGS("-h"), NULL) == AB_CONFIG_OK && c.help == 1);
    ab_config_free(&c);
    CHECK(load(&c, ARGS("--version"), NULL) == AB_CONFIG_OK && c.version == 1);
    ab_config_free(&c);
    CHECK(load(&c, ARGS("-V"), NULL) == AB_CONFIG_OK && c.version == 1);
    ab_config_free(&c);
}

static void test_eq_and_space(void)
{
    struct ab_config a, b;
    CHECK(load(&a, ARGS("--listen=[::1]:8443", "--route=alma.{event}"), NULL) == AB_CONFIG_OK);
    CHECK(load(&b, ARGS("--listen", "[::1]:8443", "--route", "alma.{event}"), NULL) ==
          AB_CONFIG_OK);
    CHECK_STR(a.listen, "[::1]:8443");
    CHECK_STR(b.listen, "[::1]:8443");
    CHECK_STR(a.route, b.route);
    ab_config_free(&a);
    ab_config_free(&b);
    /* an empty value, only with '=': kafka-key "" means no key */
    CHECK(load(&a, ARGS("--kafka-key=", "--route="), NULL) == AB_CONFIG_OK);
    CHECK_STR(KAFKA(a)->key, "");
    CHECK_STR(a.route, "");
    ab_config_free(&a);
    /* a value may contain '=' and spaces */
    CHECK(load(&a, ARGS("--kafka-conf=sasl.jaas=a=b c", "--kafka-conf", "x=y"), NULL) ==
          AB_CONFIG_OK);
    CHECK(KAFKA(a)->conf.n == 2);
    if (KAFKA(a)->conf.n == 2) {
        CHECK_STR(KAFKA(a)->conf.v[0], "sasl.jaas=a=b c");
        CHECK_STR(KAFKA(a)->conf.v[1], "x=y");
    }
    ab_config_free(&a);
    /* a value starting with a single '-' is a value */
    CHECK(load(&a, ARGS("--kafka-key", "-{id}"), NULL) == AB_CONFIG_OK);
    CHECK_STR(KAFKA(a)->key, "-{id}");
    ab_config_free(&a);
}

static void test_env_list_newlines(void)
{
    struct ab_config c;
    int rc = load(&c, NOARGS,
                  ENV("ALMABRIDGE_KAFKA_CONF=sasl.mechanisms=PLAIN\n"
                      "ssl.cipher.suites=ECDHE-RSA-AES128-GCM-SHA256,ECDHE-RSA-AES256-GCM-SHA384\n"));
    CHECK(rc == AB_CONFIG_OK);
    CHECK(KAFKA(c)->conf.n == 2);
    if (KAFKA(c)->conf.n == 2) {
        CHECK_STR(KAFKA(c)->conf.v[0], "sasl.mechanisms=PLAIN");
        CHECK_STR(KAFKA(c)->conf.v[1],
                  "ssl.cipher.suites=ECDHE-RSA-AES128-GCM-SHA256,ECDHE-RSA-AES256-GCM-SHA384");
    }
    ab_config_free(&c);
}

static void test_env(void)
{
    struct ab_config c;
    int rc = load(&c, NOARGS,
                  ENV("ALMABRIDGE_LISTEN=127.0.0.1:1234", "ALMABRIDGE_KAFKA_BROKERS=a:1,b:2",
                      "ALMABRIDGE_ALLOW=10.0.0.0/8, ::1 ,,192.168.1.0/24",
                      "ALMABRIDGE_FILE_FSYNC=no", "ALMABRIDGE_LOG_BODIES=1",
                      "ALMABRIDGE_MAX_BODY=1024", "ALMABRIDGE_SECRET=not-an-option",
                      "ALMABRIDGE_UNKNOWN_THING=x", "ALMABRIDGE_BUILD=build-address",
                      "ALMABRIDGE_HELP=1", "ALMABRIDGE_path=/lower-case-ignored",
                      "ALMABRIDGE_KAFKA_KEY=", "ALMABRIDGE_SINK=redis", "OTHER=1",
                      "ALMABRIDGE_NOEQUALS"));
    CHECK(rc == AB_CONFIG_OK);
    CHECK_STR(err, "");
    CHECK_STR(c.listen, "127.0.0.1:1234");
    CHECK_STR(KAFKA(c)->brokers, "a:1,b:2"); /* a string: commas kept */
    CHECK(c.allow.n == 3);
    if (c.allow.n == 3) {
        CHECK_STR(c.allow.v[0], "10.0.0.0/8");
        CHECK_STR(c.allow.v[1], "::1");
        CHECK_STR(c.allow.v[2], "192.168.1.0/24");
    }
    CHECK(FILEC(c)->fsync == 0);
    CHECK(c.log_bodies == 1);
    CHECK(c.max_body == 1024);
    CHECK(c.help == 0);
    CHECK_STR(c.path, "/webhook");
    CHECK_STR(KAFKA(c)->key, "");
    CHECK_STR(c.sink, "redis");
    ab_config_free(&c);

    expect_error(NOARGS, ENV("ALMABRIDGE_MAX_BODY=abc"),
                 "ALMABRIDGE_MAX_BODY: \"abc\" is not a number");
    expect_error(NOARGS, ENV("ALMABRIDGE_SINK=kafak"),
                 "ALMABRIDGE_SINK: \"kafak\" is not one of file|kafka|redis|http");
    expect_error(NOARGS, ENV("ALMABRIDGE_TRUSTED_PROXY=10.0.0.1,nope"),
                 "ALMABRIDGE_TRUSTED_PROXY: \"nope\" is not an IP address or CIDR block (e.g. "
                 "10.0.0.0/8 or ::1)");
    expect_error(NOARGS, ENV("ALMABRIDGE_LOG_BODIES="),
                 "ALMABRIDGE_LOG_BODIES: \"\" is not a boolean (true|false|yes|no|1|0)");
}

static const char file_text[] =
    "# almabridge.conf\n"
    "\n"
    "listen = 10.1.2.3:8081\n"
    "  path=/from-file   \n"
    "sink kafka\n"
    "kafka_brokers = \"b1:9092, b2:9092\"\n"
    "kafka-key = \"\"\n"
    "route = \"alma.{action} \\\"quoted\\\" \\\\ \"\n"
    "allow = 10.0.0.0/8\n"
    "allow 192.168.0.0/16\r\n"
    "\t# indented comment\n"
    "kafka-conf = sasl.password=p#not-a-comment\n"
    "log-bodies\n"
    "file-fsync = off\n"
    "max-body = 2048";

static void test_config_file(void)
{
    struct ab_config c;
    char *path = temp_file(file_text);
    CHECK(load(&c, ARGS("--config", path), NULL) == AB_CONFIG_OK);
    CHECK_STR(err, "");
    CHECK_STR(c.config_file, path);
    CHECK_STR(c.listen, "10.1.2.3:8081");
    CHECK_STR(c.path, "/from-file");
    CHECK_STR(c.sink, "kafka");
    CHECK_STR(KAFKA(c)->brokers, "b1:9092, b2:9092");
    CHECK_STR(KAFKA(c)->key, "");
    CHECK_STR(c.route, "alma.{action} \"quoted\" \\ ");
    CHECK(c.allow.n == 2);
    if (c.allow.n == 2) {
        CHECK_STR(c.allow.v[0], "10.0.0.0/8");
        CHECK_STR(c.allow.v[1], "192.168.0.0/16");
    }
    CHECK(KAFKA(c)->conf.n == 1 && !strcmp(KAFKA(c)->conf.v[0], "sasl.password=p#not-a-comment"));
    CHECK(c.log_bodies == 1);
    CHECK(FILEC(c)->fsync == 0);
    CHECK(c.max_body == 2048);
    CHECK_STR(c.log_level, "info"); /* untouched options keep their defaults */
    ab_config_free(&c);

    /* the same file through the environment */
    char env[128];
    snprintf(env, sizeof(env), "ALMABRIDGE_CONFIG=%s", path);
    CHECK(load(&c, NOARGS, ENV(env)) == AB_CONFIG_OK);
    CHECK_STR(c.config_file, path);
    CHECK_STR(c.listen, "10.1.2.3:8081");
    ab_config_free(&c);

    /* --config on the command line beats ALMABRIDGE_CONFIG */
    CHECK(load(&c, ARGS("--config", path), ENV("ALMABRIDGE_CONFIG=/nonexistent")) ==
          AB_CONFIG_OK);
    CHECK_STR(c.config_file, path);
    ab_config_free(&c);
    unlink(path);

    /* an empty file is fine */
    path = temp_file("");
    CHECK(load(&c, ARGS("--config", path), NULL) == AB_CONFIG_OK);
    CHECK_STR(c.listen, "0.0.0.0:8080");
    ab_config_free(&c);
    unlink(path);
}

static void test_precedence(void)
{
    struct ab_config c;
    char *path = temp_file("listen = 10.0.0.1:1\n"
                           "path = /file\n"
                           "sink = redis\n"
                           "max-body = 1\n"
                           "allow = 10.0.0.0/8\n"
                           "allow = 10.1.0.0/16\n"
                           "trusted-proxy = 10.9.9.9\n"
                           "kafka-conf = a=1\n");
    char cfgarg[128];
    snprintf(cfgarg, sizeof(cfgarg), "--config=%s", path);
    int rc = load(&c, ARGS(cfgarg, "--listen", "10.0.0.3:3", "--allow", "::1"),
                  ENV("ALMABRIDGE_LISTEN=10.0.0.2:2", "ALMABRIDGE_PATH=/env",
                      "ALMABRIDGE_ALLOW=172.16.0.0/12", "ALMABRIDGE_TRUSTED_PROXY=10.8.8.8"));
    CHECK(rc == AB_CONFIG_OK);
    CHECK_STR(c.listen, "10.0.0.3:3"); /* argv > env > file */
    CHECK_STR(c.path, "/env");         /* env > file */
    CHECK_STR(c.sink, "redis");        /* file > default */
    CHECK(c.max_body == 1);
    CHECK_STR(c.log_level, "info"); /* default */
    /* a higher layer replaces a list, it does not extend it */
    CHECK(c.allow.n == 1 && !strcmp(c.allow.v[0], "::1"));
    CHECK(c.trusted_proxy.n == 1 && !strcmp(c.trusted_proxy.v[0], "10.8.8.8"));
    CHECK(KAFKA(c)->conf.n == 1 && !strcmp(KAFKA(c)->conf.v[0], "a=1"));
    ab_config_free(&c);

    /* an empty list in the environment clears the file's list */
    rc = load(&c, ARGS(cfgarg), ENV("ALMABRIDGE_ALLOW="));
    CHECK(rc == AB_CONFIG_OK);
    CHECK(c.allow.n == 0);
    CHECK(c.trusted_proxy.n == 1);
    ab_config_free(&c);
    unlink(path);
}

static void test_errors(void)
{
    expect_error(ARGS("--foo"), NULL, "unknown option --foo (see --help)");
    expect_error(ARGS("--foo=bar"), NULL, "unknown option --foo (see --help)");
    expect_error(ARGS("-x"), NULL, "unknown option -x (see --help)");
    expect_error(ARGS("-help"), NULL, "unknown option -help (see --help)");
    expect_error(ARGS("--"), NULL, "unknown option -- (see --help)");
    expect_error(ARGS("--listen"), NULL, "--listen needs a value");
    expect_error(ARGS("--listen", "--path", "/x"), NULL, "--listen needs a value");
    expect_error(ARGS("--help=yes"), NULL, "--help takes no value");
    expect_error(ARGS("--max-body", "abc"), NULL, "--max-body: \"abc\" is not a number");
    expect_error(ARGS("--max-body", "12k"), NULL, "--max-body: \"12k\" is not a number");
    expect_error(ARGS("--max-body="), NULL, "--max-body: \"\" is not a number");
    expect_error(ARGS("--max-body", " 12"), NULL, "--max-body: \" 12\" is not a number");
    expect_error(ARGS("--max-body", "0"), NULL, "--max-body: 0 is out of range (minimum 1)");
    expect_error(ARGS("--max-body", "99999999999999999999999"), NULL,
                 "--max-body: 99999999999999999999999 is out of range (minimum 1)");
    expect_error(ARGS("--ack-timeout", "0"), NULL,
                 "--ack-timeout: 0 is out of range (1..60000 milliseconds)");
    expect_error(ARGS("--ack-timeout", "60001"), NULL,
                 "--ack-timeout: 60001 is out of range (1..60000 milliseconds)");
    expect_error(ARGS("--threads", "-1"), NULL, "--threads: -1 is out of range (0..256)");
    expect_error(ARGS("--threads", "257"), NULL, "--threads: 257 is out of range (0..256)");
    expect_error(ARGS("--sink", "kafak"), NULL,
                 "--sink: \"kafak\" is not one of file|kafka|redis|http");
    expect_error(ARGS("--sink="), NULL, "--sink: \"\" is not one of file|kafka|redis|http");
    expect_error(ARGS("--log-level", "verbose"), NULL,
                 "--log-level: \"verbose\" is not one of debug|info|warn|error");
    expect_error(ARGS("--log-format", "JSON"), NULL,
                 "--log-format: \"JSON\" is not one of text|json");
    expect_error(ARGS("--log-bodies=maybe"), NULL,
                 "--log-bodies: \"maybe\" is not a boolean (true|false|yes|no|1|0)");
    expect_error(ARGS("--path", "webhook"), NULL, "--path: \"webhook\" does not start with '/'");
    expect_error(ARGS("foo"), NULL, "unexpected argument \"foo\" (see --help)");
    expect_error(ARGS("--listen", "1.2.3.4:5", "extra"), NULL,
                 "unexpected argument \"extra\" (see --help)");
    expect_error(ARGS("-"), NULL, "unexpected argument \"-\" (see --help)");
    expect_error(ARGS("--file-fsync", "false"), NULL,
                 "unexpected argument \"false\" (write --file-fsync=false)");
    expect_error(ARGS("--tls-cert", "/c.pem"), NULL,
                 "--tls-cert and --tls-key must be given together");
    expect_error(ARGS("--tls-key", "/k.pem"), NULL,
                 "--tls-cert and --tls-key must be given together");
    expect_error(ARGS("--kafka-conf", "acks"), NULL, "--kafka-conf: \"acks\" is not KEY=VALUE");
    expect_error(ARGS("--kafka-conf", "=x"), NULL, "--kafka-conf: \"=****\" is not KEY=VALUE");
    static const char *const bad_allow[] = {"10.0.0.0/33", "::/129", "example.org", "10.0.0.0/"};
    for (size_t i = 0; i < sizeof(bad_allow) / sizeof(bad_allow[0]); i++) {
        char want[256];
        snprintf(want, sizeof(want),
                 "--allow: \"%s\" is not an IP address or CIDR block (e.g. 10.0.0.0/8 or ::1)",
                 bad_allow[i]);
        expect_error(ARGS("--allow", bad_allow[i]), NULL, want);
    }
    /* the first error wins, also when --help follows */
    expect_error(ARGS("--nope", "--help"), NULL, "unknown option --nope (see --help)");
}

static void test_listen(void)
{
    static const char *const good[] = {"0.0.0.0:8080", "[::]:8080",       "[::1]:0",
                                       "localhost:65535", "my-host.example.org:80",
                                       "[fe80::1]:443",   "127.0.0.1:00080"};
    static const char *const bad[] = {"8080",        ":8080",       "host:",   "host:65536",
                                      "::1:80",      "[::1]8080",   "[zz]:80", "a b:80",
                                      "[::1]:",      "host:-1",     "host:8o", "[::1:80",
                                      "1.2.3.4:123456", "",         "host:80/x"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct ab_config c;
        int rc = load(&c, ARGS("--listen", good[i]), NULL);
        if (rc != AB_CONFIG_OK) {
            fprintf(stderr, "  listen %s: %s\n", good[i], err);
        }
        CHECK(rc == AB_CONFIG_OK);
        ab_config_free(&c);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[256], arg[64];
        snprintf(arg, sizeof(arg), "--listen=%s", bad[i]);
        snprintf(want, sizeof(want),
                 "--listen: \"%s\" is not HOST:PORT with a port 0..65535 (e.g. 0.0.0.0:8080 or "
                 "[::]:8080)",
                 bad[i]);
        expect_error(ARGS(arg), NULL, want);
    }
}

static void test_file_errors(void)
{
    expect_error(ARGS("--config", "/nonexistent/almabridge.conf"), NULL,
                 "cannot read config file /nonexistent/almabridge.conf: No such file or "
                 "directory");
    expect_error(NOARGS, ENV("ALMABRIDGE_CONFIG=/nonexistent/a.conf"),
                 "cannot read config file /nonexistent/a.conf: No such file or directory");
    expect_error(ARGS("--config", "/tmp"), NULL, "cannot read config file /tmp: Is a directory");

    struct {
        const char *text, *want; /* want: after "config file PATH " */
    } cases[] = {
        {"# ok\nlisten = 1.2.3.4:5\nfoo = bar\n", "line 3: unknown option \"foo\""},
        {"max-body = abc\n", "line 1: max-body: \"abc\" is not a number"},
        {"max_body = 0\n", "line 1: max-body: 0 is out of range (minimum 1)"},
        {"\n\nsink = \"kafak\"\n", "line 3: sink: \"kafak\" is not one of file|kafka|redis|http"},
        {"config = /etc/other.conf\n", "line 1: \"config\" cannot be set in a config file"},
        {"print-config\n", "line 1: \"print-config\" cannot be set in a config file"},
        {"listen\n", "line 1: listen needs a value"},
        {"route = \"alma.{action}\n", "line 1: route: unterminated quote or text after it"},
        {"route = \"a\" b\n", "line 1: route: unterminated quote or text after it"},
        {"log-bodies = perhaps\n",
         "line 1: log-bodies: \"perhaps\" is not a boolean (true|false|yes|no|1|0)"},
        {"--listen = 1.2.3.4:5\n", "line 1: unknown option \"--listen\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *path = temp_file(cases[i].text);
        char want[512];
        snprintf(want, sizeof(want), "config file %s %s", path, cases[i].want);
        expect_error(ARGS("--config", path), NULL, want);
        unlink(path);
    }
}

/* --help and --version work whatever the rest of the configuration says. */
static void test_help_short_circuit(void)
{
    struct ab_config c;
    CHECK(load(&c, ARGS("--config", "/nonexistent", "--max-body", "abc", "--help"),
               ENV("ALMABRIDGE_SINK=nope")) == AB_CONFIG_OK);
    CHECK(c.help == 1);
    CHECK_STR(c.listen, "0.0.0.0:8080");
    ab_config_free(&c);
    CHECK(load(&c, ARGS("-V", "--sink", "nope"), NULL) == AB_CONFIG_OK);
    CHECK(c.version == 1);
    ab_config_free(&c);
}

static void test_masking(void)
{
    struct ab_config c;
    int rc = load(&c,
                  ARGS("--redis", "redis://alice:hunter2@redis.example:6380/2", "--kafka-conf",
                       "sasl.username=bob", "--kafka-conf", "sasl.password=swordfish",
                       "--kafka-conf", "sasl.oauthbearer.client.SECRET=s3cr3t", "--kafka-conf",
                       "ssl.key.password=k3y", "--kafka-conf", "acks=all", "--kafka-conf",
                       "sasl.jaas.config=org.apache.kafka.Plain required password=\"j4as\"",
                       "--kafka-conf", "sasl.oauthbearer.config=principal=p cl1ent",
                       "--kafka-conf", "ssl.key.pem=-----BEGIN PRIVATE KEY-----pr1v",
                       "--kafka-conf", "security.protocol=SASL_SSL", "--kafka-conf",
                       "Acks=all", "--kafka-conf", "new.unknown.key=unkn0wn"),
                  NULL);
    CHECK(rc == AB_CONFIG_OK);
    char *out = capture_cfg(ab_config_print, &c);
    CHECK(strstr(out, "redis = redis://alice:****@redis.example:6380/2\n") != NULL);
    /* every value masked but those of the harmless keys (exact, case-sensitive names) */
    CHECK(strstr(out, "kafka-conf = sasl.username=****, sasl.password=****, "
                      "sasl.oauthbearer.client.SECRET=****, ssl.key.password=****, "
                      "acks=all, sasl.jaas.config=****, sasl.oauthbearer.config=****, "
                      "ssl.key.pem=****, security.protocol=SASL_SSL, Acks=****, "
                      "new.unknown.key=****\n") != NULL);
    CHECK(strstr(out, "bob") == NULL && strstr(out, "j4as") == NULL);
    CHECK(strstr(out, "cl1ent") == NULL && strstr(out, "pr1v") == NULL);
    CHECK(strstr(out, "unkn0wn") == NULL);
    CHECK(strstr(out, "hunter2") == NULL);
    CHECK(strstr(out, "swordfish") == NULL);
    CHECK(strstr(out, "s3cr3t") == NULL);
    CHECK(strstr(out, "k3y") == NULL);
    free(out);
    ab_config_free(&c);

    /* other URL forms */
    static const char *const urls[][2] = {
        {"redis://:pw@h:1", "redis = redis://:****@h:1\n"},
        {"rediss://pw@h", "redis = rediss://****@h\n"},
        {"redis://h:6379/0?x=a@b", "redis = redis://h:6379/0?x=a@b\n"},
        {"redis://u:p@ss@h", "redis = redis://u:****@h\n"},
        {"unix:///run/redis.sock", "redis = unix:///run/redis.sock\n"},
    };
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        CHECK(load(&c, ARGS("--redis", urls[i][0]), NULL) == AB_CONFIG_OK);
        out = capture_cfg(ab_config_print, &c);
        if (strstr(out, urls[i][1]) == NULL) {
            fprintf(stderr, "  want %s", urls[i][1]);
        }
        CHECK(strstr(out, urls[i][1]) != NULL);
        free(out);
        ab_config_free(&c);
    }

    /* errors never echo a secret-looking value */
    expect_error(ARGS("--kafka-conf", "sasl.password:hunter2"), NULL,
                 "--kafka-conf: \"****\" is not KEY=VALUE");
}

static void test_print(void)
{
    struct ab_config c;
    CHECK(load(&c, ARGS("--allow", "10.0.0.0/8", "--allow", "::1", "--kafka-key="), NULL) ==
          AB_CONFIG_OK);
    char *out = capture_cfg(ab_config_print, &c);
    for (size_t i = 0; i < N_ALL; i++) {
        char line[64];
        snprintf(line, sizeof(line), "\n%s = ", all_options[i]);
        int found = strstr(out, line) != NULL || strncmp(out, line + 1, strlen(line + 1)) == 0;
        CHECK(found == !is_action(all_options[i]));
    }
    CHECK(strstr(out, "\nlisten = 0.0.0.0:8080\n") != NULL);
    CHECK(strstr(out, "\nallow = 10.0.0.0/8, ::1\n") != NULL);
    CHECK(strstr(out, "\ntrusted-proxy = (not set)\n") != NULL);
    CHECK(strstr(out, "\nroute = (not set)\n") != NULL);
    CHECK(strstr(out, "\nkafka-key = \"\"\n") != NULL);
    CHECK(strstr(out, "\nfile-fsync = true\n") != NULL);
    CHECK(strstr(out, "\nmax-body = 4194304\n") != NULL);
    free(out);
    ab_config_free(&c);
}

static void test_usage_and_markdown(void)
{
    char *usage = capture(usage_all);
    char *md = capture(markdown_all);
    CHECK(strstr(usage, "almabridge [options]") != NULL);
    CHECK(strncmp(md, "| option | env | default | description |\n|---|---|---|---|\n", 58) == 0);
    for (size_t i = 0; i < N_ALL; i++) {
        char opt[64], env[64];
        snprintf(opt, sizeof(opt), "--%s", all_options[i]);
        snprintf(env, sizeof(env), "ALMABRIDGE_");
        for (const char *p = all_options[i]; *p; p++) {
            size_t n = strlen(env);
            env[n] = *p == '-' ? '_' : (char)(*p - 'a' + 'A');
            env[n + 1] = '\0';
        }
        if (!strstr(usage, opt) || !strstr(md, opt)) {
            fprintf(stderr, "  %s missing\n", opt);
        }
        CHECK(strstr(usage, opt) != NULL);
        CHECK(strstr(md, opt) != NULL);
        if (!is_action(all_options[i])) {
            CHECK(strstr(usage, env) != NULL);
            CHECK(strstr(md, env) != NULL);
        }
    }
    /* groups, defaults and the masked-output notes */
    CHECK(strstr(usage, "\nHTTP:\n") && strstr(usage, "\nKafka:\n") && strstr(usage, "\nTLS:\n"));
    CHECK(strstr(usage, "(default:") != NULL && strstr(usage, "4194304") != NULL);
    CHECK(strstr(usage, "-h, --help") != NULL);
    CHECK(strstr(md, "| `--sink file\\|kafka\\|redis\\|http` | `ALMABRIDGE_SINK` | `file` |") !=
          NULL);
    /* one row per option */
    size_t rows = 0;
    for (const char *p = md; (p = strchr(p, '\n')) != NULL; p++) {
        rows++;
    }
    CHECK(rows == N_ALL + 2);
    /* no line of --help is wider than 100 columns */
    for (const char *p = usage; *p;) {
        size_t n = strcspn(p, "\n");
        CHECK(n <= 100);
        p += n + (p[n] == '\n');
    }
    free(usage);
    free(md);
}

/* Loading twice in one process gives the same, independent results. */
static void test_load_twice(void)
{
    struct ab_config a, b;
    CHECK(load(&a, ARGS("--allow", "10.0.0.0/8", "--sink", "redis"), NULL) == AB_CONFIG_OK);
    CHECK(load(&b, NOARGS, NULL) == AB_CONFIG_OK);
    CHECK_STR(a.sink, "redis");
    CHECK_STR(b.sink, "file");
    CHECK(a.allow.n == 1 && b.allow.n == 0);
    ab_config_free(&a);
    ab_config_free(&a); /* freeing twice is harmless: free leaves the struct empty */
    ab_config_free(&b);
    ab_config_free(NULL);
}

/* A subcommand's table with a positional option: a bare argument sets it (once), the option
 * may be given by name instead, and a second bare argument is still an error. */
struct pos_opts {
    char *target;
    long count;
};
static const struct ab_option pos_options[] = {
    {.name = "target", .type = AB_OPT_STRING, .off = offsetof(struct pos_opts, target),
     .group = "Pos", .metavar = "URL", .flags = AB_OPT_POSITIONAL, .help = "where"},
    {.name = "count", .type = AB_OPT_LONG, .def = "1", .min = 1, .max = 9,
     .off = offsetof(struct pos_opts, count), .group = "Pos", .help = "how many"},
};
static const struct ab_optset pos_optset = AB_OPTSET(pos_options, struct pos_opts);
static const struct ab_sink_ops pos_table = {.name = "pos", .options = &pos_optset,
                                             .flags = AB_SINK_WRAPS};

static void test_positional_option(void)
{
    const struct ab_sink_ops *tables[] = {&ab_sink_file, &pos_table, NULL};
    char *envp[] = {NULL}, why[256];
    struct ab_config cfg;
    char *a1[] = {(char *)"pos", (char *)"http://x/", (char *)"--count", (char *)"3", NULL};
    CHECK(ab_config_load(&cfg, tables, 4, a1, envp, why, sizeof(why)) == AB_CONFIG_OK);
    const struct pos_opts *o = ab_config_sink_opts(&cfg, &pos_table);
    CHECK_STR(o->target, "http://x/");
    CHECK(o->count == 3);
    ab_config_free(&cfg);
    char *a2[] = {(char *)"pos", (char *)"--target", (char *)"http://y/", NULL};
    CHECK(ab_config_load(&cfg, tables, 3, a2, envp, why, sizeof(why)) == AB_CONFIG_OK);
    CHECK_STR(((const struct pos_opts *)ab_config_sink_opts(&cfg, &pos_table))->target,
              "http://y/");
    ab_config_free(&cfg);
    char *a3[] = {(char *)"pos", (char *)"http://x/", (char *)"extra", NULL};
    CHECK(ab_config_load(&cfg, tables, 3, a3, envp, why, sizeof(why)) == AB_CONFIG_ERROR);
    CHECK(strstr(why, "unexpected argument \"extra\"") != NULL);
    char *a4[] = {(char *)"pos", (char *)"stray", NULL};
    CHECK(ab_config_load(&cfg, ab_sinks, 2, a4, envp, why, sizeof(why)) == AB_CONFIG_ERROR);
}

/* One duration syntax: a unit or a bare number in the option's own unit. */
static void test_durations(void)
{
    struct ab_config c;
    CHECK(load(&c, ARGS("--ack-timeout", "2s", "--read-timeout", "1m", "--idle-timeout=500",
                        "--drain-grace", "1500ms", "--shutdown-timeout", "0s"),
               NULL) == AB_CONFIG_ERROR);
    CHECK_STR(err, "--drain-grace: 1500ms is not a whole number of seconds");
    CHECK(load(&c, ARGS("--ack-timeout", "2s", "--read-timeout", "1m", "--idle-timeout=500",
                        "--drain-grace", "2000ms", "--shutdown-timeout", "0s",
                        "--spool-after", "0.5s"),
               ENV("ALMABRIDGE_MAX_BODY=10")) == AB_CONFIG_OK);
    CHECK(c.ack_timeout_ms == 2000 && c.read_timeout_s == 60 && c.idle_timeout_s == 500);
    CHECK(c.drain_grace_s == 2 && c.shutdown_timeout_s == 0);
    ab_config_free(&c);
    CHECK(load(&c, ARGS("--ack-timeout", "4000"), ENV("ALMABRIDGE_READ_TIMEOUT=1h")) ==
          AB_CONFIG_OK);
    CHECK(c.ack_timeout_ms == 4000 && c.read_timeout_s == 3600);
    char *printed = NULL;
    size_t plen = 0;
    FILE *fp = open_memstream(&printed, &plen);
    ab_config_print(&c, fp);
    fclose(fp);
    CHECK(strstr(printed, "\nack-timeout = 4000ms\n") && strstr(printed, "\nread-timeout = 3600s\n"));
    free(printed);
    ab_config_free(&c);
    static const char *const not_durations[][2] = {
        {"read-timeout", "10 s"}, {"ack-timeout", "-1s"}, {"ack-timeout", "2w"},
        {"ack-timeout", "0x10"}, {"read-timeout", "1e3"}, {"read-timeout", "s"},
    };
    for (size_t i = 0; i < sizeof(not_durations) / sizeof(not_durations[0]); i++) {
        char opt[32], want[200];
        int ms = strcmp(not_durations[i][0], "ack-timeout") == 0;
        snprintf(opt, sizeof(opt), "--%s", not_durations[i][0]);
        snprintf(want, sizeof(want),
                 "%s: \"%s\" is not a duration (e.g. 500ms, 10s, 5m, 6h; a bare number is in %s)",
                 opt, not_durations[i][1], ms ? "milliseconds" : "seconds");
        expect_error(ARGS(opt, not_durations[i][1]), NULL, want);
    }
    expect_error(ARGS("--ack-timeout", "2m"), NULL,
                 "--ack-timeout: 2m is out of range (1..60000 milliseconds)");
    expect_error(ARGS("--read-timeout", "2h"), NULL,
                 "--read-timeout: 2h is out of range (1..3600 seconds)");
    long long ms = 0;
    CHECK(ab_config_duration_ms("6h", 1000, &ms) == 0 && ms == 6LL * 3600 * 1000);
    CHECK(ab_config_duration_ms("90", 1000, &ms) == 0 && ms == 90000);
    CHECK(ab_config_duration_ms("90", 1, &ms) == 0 && ms == 90);
    CHECK(ab_config_duration_ms("1.5d", 1, &ms) == 0 && ms == 36LL * 3600 * 1000);
    CHECK(ab_config_duration_ms("", 1, &ms) != 0 && ab_config_duration_ms("nan", 1, &ms) != 0);
    CHECK(ab_config_duration_ms("inf", 1, &ms) != 0 && ab_config_duration_ms(" 1s", 1, &ms) != 0);
    CHECK(ab_config_duration_ms("1e3", 1, &ms) != 0 && ab_config_duration_ms(NULL, 1, &ms) != 0);
    /* --help says which unit a bare number has */
    char *usage = capture(usage_all);
    CHECK(strstr(usage, "--read-timeout DURATION") != NULL);
    CHECK(strstr(usage, "a bare number is in seconds") != NULL);
    CHECK(strstr(usage, "a bare number is in milliseconds") != NULL);
    free(usage);
}

/* Broker addresses need a host and a port 1..65535, already when loading. */
static void test_broker_addresses(void)
{
    struct ab_config c;
    CHECK(load(&c, ARGS("--kafka-brokers", "k1:9092, k2.example.org:19092,[::1]:9092,"
                                           "SASL_SSL://k3:9093"),
               NULL) == AB_CONFIG_OK);
    ab_config_free(&c);
    static const char *const not_brokers[] = {"nohost:notaport", ":9092", "k1", "k1:0",
                                              "k1:65536", "[zz]:9092"};
    for (size_t i = 0; i < sizeof(not_brokers) / sizeof(not_brokers[0]); i++) {
        char want[200];
        snprintf(want, sizeof(want),
                 "--kafka-brokers: \"%s\" is not HOST:PORT with a host and a port 1..65535",
                 not_brokers[i]);
        expect_error(ARGS("--kafka-brokers", not_brokers[i]), NULL, want);
    }
    expect_error(ARGS("--kafka-brokers", "k1:9092,k2:65536"), NULL,
                 "--kafka-brokers: \"k1:9092,k2:65536\" has \"k2:65536\", not HOST:PORT with a "
                 "host and a port 1..65535");
    expect_error(ARGS("--kafka-brokers", "k1:9092,"), NULL,
                 "--kafka-brokers: \"k1:9092,\" has \"\", not HOST:PORT with a host and a port "
                 "1..65535");
    expect_error(ARGS("--admin-listen", "localhost"), NULL,
                 "--admin-listen: \"localhost\" is not HOST:PORT with a port 0..65535 (e.g. "
                 "0.0.0.0:8080 or [::]:8080)");
}

static void man_page(FILE *fp)
{
    ab_config_man(ab_sinks, fp);
}

/* The man page's OPTIONS come from the tables: every option, roff-escaped. */
static void test_man(void)
{
    char *man = capture(man_page);
    CHECK(strncmp(man, ".SH OPTIONS\n.SS General\n", 24) == 0);
    for (size_t i = 0; i < N_ALL; i++) {
        char opt[80];
        snprintf(opt, sizeof(opt), "\\-\\-%s", all_options[i]);
        for (char *p = opt + 4; *p; p++) {
            if (*p == '-') {
                memmove(p + 1, p, strlen(p) + 1);
                *p++ = '\\';
            }
        }
        if (strstr(man, opt) == NULL) {
            fprintf(stderr, "  %s missing\n", opt);
        }
        CHECK(strstr(man, opt) != NULL);
    }
    CHECK(strstr(man, "ALMABRIDGE_ADMIN_LISTEN") != NULL);
    /* no line starts with a stray control character, and no raw hyphen is left */
    for (const char *p = man; *p; p += strcspn(p, "\n") + 1) {
        CHECK(*p == '.' ? strchr("STBP", p[1]) != NULL : *p != '\'');
        if (p[strcspn(p, "\n")] == '\0') {
            break;
        }
    }
    for (const char *p = strchr(man, '-'); p; p = strchr(p + 1, '-')) {
        CHECK(p > man && p[-1] == '\\');
    }
    free(man);
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_positional_option);
    RUN(test_every_option);
    RUN(test_types);
    RUN(test_eq_and_space);
    RUN(test_env);
    RUN(test_env_list_newlines);
    RUN(test_config_file);
    RUN(test_precedence);
    RUN(test_errors);
    RUN(test_listen);
    RUN(test_file_errors);
    RUN(test_help_short_circuit);
    RUN(test_masking);
    RUN(test_print);
    RUN(test_usage_and_markdown);
    RUN(test_load_twice);
    RUN(test_durations);
    RUN(test_broker_addresses);
    RUN(test_man);
    return TEST_SUMMARY();
}
