/* almabridge --probe [URL]: ask a running almabridge whether it is ready, for a container's
 * HEALTHCHECK (the image has no curl). Without a URL it follows the daemon's own
 * configuration: GET /readyz on --admin-listen when set, else on --listen (0.0.0.0 and [::]
 * become the loopback address),
 * over TLS when --tls-cert is set, with the options of the probe's command line, or of
 * PID 1's when --probe comes alone and PID 1 is almabridge (a container), plus the
 * environment and the config file. Exit 0 when the answer is 2xx, 1 otherwise. */
#include "probe.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "config.h"
#include "mem.h"
#include "sinks/registry.h"

struct url {
    int tls;
    char hostport[300]; /* for BIO_new_connect: host:port, [v6]:port */
    char path[512];
};

static void on_alarm(int sig)
{
    static const char msg[] = "almabridge --probe: no answer in time\n";
    (void)sig;
    ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)n;
    _exit(1);
}

/* http[s]://HOST[:PORT][/PATH] into u; the path defaults to /readyz. */
static int parse_url(const char *s, struct url *u)
{
    const char *rest = NULL;
    if (strncmp(s, "http://", 7) == 0) {
        rest = s + 7;
        u->tls = 0;
    } else if (strncmp(s, "https://", 8) == 0) {
        rest = s + 8;
        u->tls = 1;
    } else {
        return -1;
    }
    size_t hlen = strcspn(rest, "/");
    if (hlen == 0 || hlen >= sizeof(u->hostport) - 6) {
        return -1;
    }
    const char *colon = memrchr(rest, ':', hlen);
    const char *bracket = memrchr(rest, ']', hlen);
    int has_port = colon && (!bracket || colon > bracket);
    snprintf(u->hostport, sizeof(u->hostport), "%.*s%s", (int)hlen, rest,
             has_port ? "" : (u->tls ? ":443" : ":80"));
    snprintf(u->path, sizeof(u->path), "%s", rest[hlen] ? rest + hlen : "/readyz");
    return 0;
}

/* The URL of /readyz from the daemon's configuration (argv without --probe, environment,
 * config file). */
static int url_from_config(int argc, char **argv, char **envp, struct url *u)
{
    struct ab_config cfg;
    char err[512];
    if (ab_config_load(&cfg, ab_sinks, argc, argv, envp, err, sizeof(err)) != AB_CONFIG_OK) {
        fprintf(stderr, "almabridge --probe: %s\n", err);
        return -1;
    }
    const char *listen = cfg.admin_listen ? cfg.admin_listen : cfg.listen;
    const char *colon = strrchr(listen, ':');
    const char *port = colon ? colon + 1 : "8080";
    int hlen = colon ? (int)(colon - listen) : (int)strlen(listen);
    const char *host = listen;
    if (hlen == 0 || (hlen == 7 && strncmp(host, "0.0.0.0", 7) == 0)) {
        host = "127.0.0.1";
        hlen = 9;
    } else if (hlen == 4 && strncmp(host, "[::]", 4) == 0) {
        host = "[::1]";
        hlen = 5;
    }
    u->tls = cfg.tls_cert != NULL && cfg.admin_listen == NULL; /* the admin port is plain */
    snprintf(u->hostport, sizeof(u->hostport), "%.*s:%s", hlen, host, port);
    snprintf(u->path, sizeof(u->path), "/readyz");
    ab_config_free(&cfg);
    return 0;
}

/* In a container the daemon is PID 1: when --probe comes alone, take PID 1's command line
 * (if PID 1 is almabridge), so that the image's HEALTHCHECK follows options given as the
 * container's arguments as well as the environment. NULL otherwise; the caller frees it. */
static char **pid1_argv(int *argc)
{
    char buf[16384];
    char **v = NULL;
    FILE *f = fopen("/proc/1/cmdline", "r");
    size_t len = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f) {
        fclose(f);
    }
    if (len == 0 || len == sizeof(buf) - 1) {
        return NULL;
    }
    buf[len] = '\0';
    const char *base = strrchr(buf, '/');
    if (strcmp(base ? base + 1 : buf, "almabridge") != 0) {
        return NULL;
    }
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        n += buf[i] == '\0';
    }
    v = ab_calloc((size_t)n + 1, sizeof(*v));
    *argc = 0;
    for (const char *a = buf; a < buf + len; a += strlen(a) + 1) {
        v[(*argc)++] = ab_strdup(a);
    }
    return v;
}

/* One GET with Connection: close; returns the HTTP status, or -1. The certificate is not
 * verified: the probe asks its own process, usually over the loopback interface. */
static int http_get(const struct url *u)
{
    int status = -1;
    SSL_CTX *ctx = NULL;
    BIO *bio = BIO_new_connect(u->hostport);
    if (bio == NULL) {
        goto done;
    }
    if (u->tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        BIO *ssl = ctx ? BIO_new_ssl(ctx, 1) : NULL;
        if (ssl == NULL) {
            goto done;
        }
        bio = BIO_push(ssl, bio);
    }
    if (BIO_do_connect(bio) <= 0) {
        fprintf(stderr, "almabridge --probe: cannot connect to %s\n", u->hostport);
        goto done;
    }
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: almabridge-probe\r\n"
                     "Connection: close\r\n\r\n",
                     u->path, u->hostport);
    if (BIO_write(bio, req, n) != n || BIO_flush(bio) <= 0) {
        goto done;
    }
    char head[256];
    int got = 0, r;
    while (got < (int)sizeof(head) - 1 && (r = BIO_read(bio, head + got, (int)sizeof(head) - 1 - got)) > 0) {
        got += r;
        if (memchr(head, '\n', (size_t)got)) {
            break;
        }
    }
    head[got] = '\0';
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1) {
        fprintf(stderr, "almabridge --probe: no HTTP answer from %s\n", u->hostport);
        status = -1;
    }
done:
    BIO_free_all(bio);
    SSL_CTX_free(ctx);
    return status;
}

int ab_probe_main(int argc, char **argv, char **envp)
{
    const char *given = NULL;
    int found = 0, n = 0;
    char **rest = ab_calloc((size_t)argc + 1, sizeof(*rest));
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--probe") == 0) {
            found = 1;
            if (i + 1 < argc && strstr(argv[i + 1], "://")) {
                given = argv[++i];
            }
        } else if (strncmp(argv[i], "--probe=", 8) == 0) {
            found = 1;
            given = argv[i] + 8;
        } else {
            rest[n++] = argv[i];
        }
    }
    int rc = -1;
    if (!found) {
        goto done;
    }
    rc = 1;
    struct url u;
    if (given && parse_url(given, &u) != 0) {
        fprintf(stderr, "almabridge --probe: not an http:// or https:// URL: %s\n", given);
        goto done;
    }
    if (!given) {
        int pn = 0;
        char **pv = argc == 2 ? pid1_argv(&pn) : NULL;
        int bad = pv ? url_from_config(pn, pv, envp, &u) : url_from_config(n, rest, envp, &u);
        for (int i = 0; pv && i < pn; i++) {
            free(pv[i]);
        }
        free(pv);
        if (bad) {
            goto done;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(AB_PROBE_TIMEOUT_S);
    int status = http_get(&u);
    alarm(0);
    if (status > 0) {
        printf("%s%s%s: %d\n", u.tls ? "https://" : "http://", u.hostport, u.path, status);
    }
    rc = status >= 200 && status < 300 ? 0 : 1;
done:
    free(rest);
    return rc;
}
