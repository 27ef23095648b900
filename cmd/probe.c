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

#include "config.h"
#include "http_client.h"
#include "mem.h"
#include "sinks/registry.h"

static void on_alarm(int sig)
{
    static const char msg[] = "almabridge --probe: no answer in time\n";
    (void)sig;
    ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)n;
    _exit(1);
}

/* url with /readyz added when it names no path (http[s]://HOST[:PORT]); NULL when it is
 * not an http:// or https:// URL. */
static char *probe_url(const char *url)
{
    const char *rest = strncmp(url, "http://", 7) == 0    ? url + 7
                       : strncmp(url, "https://", 8) == 0 ? url + 8
                                                          : NULL;
    if (rest == NULL || *rest == '\0' || *rest == '/') {
        return NULL;
    }
    return ab_asprintf("%s%s", url, strchr(rest, '/') ? "" : "/readyz");
}

/* The URL of /readyz from the daemon's configuration (argv without --probe, environment,
 * config file). */
static char *url_from_config(int argc, char **argv, char **envp)
{
    struct ab_config cfg;
    char err[512];
    if (ab_config_load(&cfg, ab_sinks, argc, argv, envp, err, sizeof(err)) != AB_CONFIG_OK) {
        fprintf(stderr, "almabridge --probe: %s\n", err);
        return NULL;
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
    /* the admin port (--admin-listen) is plain HTTP */
    char *url = ab_asprintf("%s://%.*s:%s/readyz",
                            cfg.tls_cert && cfg.admin_listen == NULL ? "https" : "http", hlen,
                            host, port);
    ab_config_free(&cfg);
    return url;
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

/* One GET through the program's HTTP client within AB_PROBE_TIMEOUT_S; returns the HTTP
 * status, or -1. Straight to the URL (no proxy), and the certificate is not verified: the
 * probe asks its own process, usually over the loopback interface. */
static long http_get(const char *url)
{
    const struct ab_http_request r = {.url = url,
                                      .insecure = 1,
                                      .direct = 1,
                                      .http1 = 1,
                                      .timeout_ms = AB_PROBE_TIMEOUT_S * 1000L,
                                      .connect_timeout_ms = AB_PROBE_TIMEOUT_S * 1000L,
                                      .max_answer = 1 << 16};
    struct ab_http_answer a;
    char err[512] = "";
    long status = ab_http_fetch(&r, &a, err, sizeof(err));
    if (status < 0) {
        fprintf(stderr, "almabridge --probe: cannot connect to %s: %s\n", url, err);
    }
    ab_http_answer_clear(&a);
    return status > 0 ? status : -1;
}

int ab_probe_main(int argc, char **argv, char **envp)
{
    const char *given = NULL;
    char *url = NULL;
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
    if (given && (url = probe_url(given)) == NULL) {
        fprintf(stderr, "almabridge --probe: not an http:// or https:// URL: %s\n", given);
        goto done;
    }
    if (!given) {
        int pn = 0;
        char **pv = argc == 2 ? pid1_argv(&pn) : NULL;
        url = pv ? url_from_config(pn, pv, envp) : url_from_config(n, rest, envp);
        for (int i = 0; pv && i < pn; i++) {
            free(pv[i]);
        }
        free(pv);
        if (url == NULL) {
            goto done;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(AB_PROBE_TIMEOUT_S + 1);
    long status = http_get(url);
    alarm(0);
    if (status > 0) {
        printf("%s: %ld\n", url, status);
    }
    rc = status >= 200 && status < 300 ? 0 : 1;
done:
    free(url);
    free(rest);
    return rc;
}
