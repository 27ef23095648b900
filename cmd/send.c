/* almabridge send / almabridge challenge: test a deployment end to end the way Alma talks
 * to it, through TLS and load balancers included.
 *
 *   almabridge send FILE --url URL [--secret-file F] [--cacert F] [--insecure]
 *       POST the file's bytes signed like Alma (X-Exl-Signature: base64 of HMAC-SHA256 over
 *       the body, with the secret from --secret-file or ALMABRIDGE_SECRET); prints the
 *       answer's status line and body. Exit 0 for a 2xx answer, 1 for another, 2 when no
 *       answer came (connection, TLS) or for usage errors.
 *   almabridge challenge URL [--cacert F] [--insecure]
 *       GET URL?challenge=<random> and check that the answer echoes it, as Alma does when a
 *       webhook integration profile is saved. Exit 0 echoed, 1 not, 2 no answer.
 *
 * The client is the program's one HTTP client (core/http_client.c, libcurl), HTTP/1.1 as
 * Alma speaks it, straight to the URL (no proxy): the peer certificate is verified against
 * the system's CAs (or --cacert) and the URL's host name or IP address, unless --insecure;
 * 30 s to connect, and no answer after 30 s without a byte moving is no answer. Interim 1xx
 * answers and chunked bodies are read as any HTTP/1.1 client must; redirects are printed,
 * not followed (a signed body goes to the URL given, nowhere else). */
#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/rand.h>

#include "cli.h"
#include "http_client.h"
#include "mem.h"
#include "signature.h"
#include "sink.h"

#define STEP_TIMEOUT_S 30 /* to connect; and without a byte moving */

/* The answer on stdout: "HTTP <status> <reason>", then the body. */
static void print_answer(const struct ab_http_answer *a)
{
    printf("HTTP %ld %s\n%s%s", a->status, a->reason, a->body ? a->body : "",
           a->len && a->body[a->len - 1] != '\n' ? "\n" : "");
}

/* One request to url as send and challenge make it; the status (> 0) or < 0 with err. */
static long request(const char *url, const char *const *headers, const void *body, size_t len,
                    const char *cacert, int insecure, struct ab_http_answer *a, char *err,
                    size_t errlen)
{
    const struct ab_http_request r = {.url = url,
                                      .body = body,
                                      .len = len,
                                      .headers = headers,
                                      .ca_file = cacert,
                                      .insecure = insecure,
                                      .direct = 1,
                                      .http1 = 1,
                                      .connect_timeout_ms = STEP_TIMEOUT_S * 1000L,
                                      .idle_s = STEP_TIMEOUT_S};
    return ab_http_fetch(&r, a, err, errlen);
}

static char *read_all(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t cap = 1 << 16;
    char *buf = NULL;
    if (fp == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = ab_malloc(cap);
    *len = 0;
    size_t n;
    while ((n = fread(buf + *len, 1, cap - *len, fp)) > 0) {
        *len += n;
        if (*len == cap) {
            cap *= 2;
            buf = ab_realloc(buf, cap);
        }
    }
    if (ferror(fp)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        free(buf);
        buf = NULL;
    }
    if (fp != stdin) {
        fclose(fp);
    }
    return buf;
}

/* application/xml when the body's first non-blank byte is '<', else application/json. */
static const char *guess_type(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) {
        i++;
    }
    return i < len && body[i] == '<' ? "application/xml" : "application/json";
}

static const char SEND_ABOUT[] =
    "POST a webhook body signed the way Alma signs it (X-Exl-Signature: base64 of\n"
    "HMAC-SHA256 over the body) and print the answer. The secret comes from --secret-file\n"
    "(its first secret line) or ALMABRIDGE_SECRET; never from the command line.\n"
    "Exit status: 0 a 2xx answer, 1 another answer, 2 no answer or a usage error.";

/* send's own options (loaded with the daemon's, see ab_cli_load; --secret-file is the
 * daemon's own). */
struct send_opts {
    char *body, *url, *cacert, *ctype;
    int insecure, unsigned_;
};

#define OFF(field) offsetof(struct send_opts, field)
/* clang-format off */
static const struct ab_option send_options[] = {
    {.name = "body", .type = AB_OPT_STRING, .off = OFF(body), .group = "Send", .metavar = "FILE",
     .flags = AB_OPT_POSITIONAL, .help = "the webhook body to send (JSON or XML)"},
    {.name = "url", .type = AB_OPT_STRING, .off = OFF(url), .group = "Send", .metavar = "URL",
     .help = "the webhook endpoint, http:// or https://"},
    {.name = "cacert", .type = AB_OPT_STRING, .off = OFF(cacert), .group = "Send",
     .metavar = "FILE", .help = "PEM CA certificate(s) to verify the server with"},
    {.name = "insecure", .type = AB_OPT_BOOL, .def = "false", .off = OFF(insecure),
     .group = "Send", .help = "do not verify the server's certificate"},
    {.name = "content-type", .type = AB_OPT_STRING, .off = OFF(ctype), .group = "Send",
     .metavar = "TYPE", .help = "default: application/xml or application/json by the body"},
    {.name = "unsigned", .type = AB_OPT_BOOL, .def = "false", .off = OFF(unsigned_),
     .group = "Send", .help = "send no X-Exl-Signature (to test the refusal)"},
};
/* clang-format on */
#undef OFF
static const struct ab_optset send_optset = AB_OPTSET(send_options, struct send_opts);
static const struct ab_sink_ops send_table = {
    .name = "send", .options = &send_optset, .flags = AB_SINK_WRAPS};

int ab_cmd_send(int argc, char **argv)
{
    const struct ab_cli_table cmd = {"almabridge send FILE --url URL [options]", SEND_ABOUT,
                                     "The secret: --secret-file FILE (the daemon's option) or "
                                     "ALMABRIDGE_SECRET.",
                                     &send_table};
    char err[1024] = "", *body = NULL, *secret = NULL;
    int rc = AB_EXIT_USAGE, started, loaded = 0;
    size_t len = 0;
    struct ab_http_answer answer = {0};
    struct ab_config cfg;
    char *ctype = NULL, *sighdr = NULL;

    if ((started = ab_cli_load(&cmd, argc, argv, &cfg, err, sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    loaded = 1;
    const struct send_opts *o = ab_config_sink_opts(&cfg, &send_table);
    if (o->body == NULL || o->url == NULL) {
        snprintf(err, sizeof(err), "usage: almabridge send FILE --url URL (see --help)");
        goto done;
    }
    if ((body = read_all(o->body, &len, err, sizeof(err))) == NULL ||
        (!o->unsigned_ && (secret = ab_cli_secret(cfg.secret_file, err, sizeof(err))) == NULL)) {
        goto done;
    }
    char sig[AB_SIGNATURE_B64_LEN + 1] = "";
    if (secret) {
        ab_signature_compute(secret, strlen(secret), body, len, sig);
    }
    ctype = ab_asprintf("Content-Type: %s", o->ctype ? o->ctype : guess_type(body, len));
    sighdr = secret ? ab_asprintf("X-Exl-Signature: %s", sig) : NULL;
    const char *headers[] = {ctype, sighdr, NULL};
    char why[512] = "";
    signal(SIGPIPE, SIG_IGN);
    if (request(o->url, headers, body, len, o->cacert, o->insecure, &answer, why,
                sizeof(why)) < 0) {
        snprintf(err, sizeof(err), "%s: %s", o->url, why);
        goto done;
    }
    print_answer(&answer);
    rc = answer.status >= 200 && answer.status < 300 ? AB_EXIT_OK : AB_EXIT_FAILED;
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge send: %s\n", err);
    }
    if (secret) {
        memset(secret, 0, strlen(secret));
    }
    free(secret);
    free(body);
    free(ctype);
    free(sighdr);
    ab_http_answer_clear(&answer);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}

static const char CHALLENGE_ABOUT[] =
    "Do what Alma does when a webhook integration profile is saved: GET URL?challenge=X\n"
    "and check that the answer is 200 with X echoed ({\"challenge\":\"X\"}).\n"
    "Exit status: 0 echoed, 1 not, 2 no answer or a usage error.";

/* 1 when body is a JSON object whose "challenge" is token. */
static int echoes(const char *body, const char *token)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "challenge");
    int ok = cJSON_IsString(c) && strcmp(c->valuestring, token) == 0;
    cJSON_Delete(j);
    return ok;
}

/* challenge's own options. */
struct challenge_opts {
    char *url, *cacert;
    int insecure;
};

#define OFF(field) offsetof(struct challenge_opts, field)
/* clang-format off */
static const struct ab_option challenge_options[] = {
    {.name = "url", .type = AB_OPT_STRING, .off = OFF(url), .group = "Challenge",
     .metavar = "URL", .flags = AB_OPT_POSITIONAL,
     .help = "the webhook endpoint, http:// or https://"},
    {.name = "cacert", .type = AB_OPT_STRING, .off = OFF(cacert), .group = "Challenge",
     .metavar = "FILE", .help = "PEM CA certificate(s) to verify the server with"},
    {.name = "insecure", .type = AB_OPT_BOOL, .def = "false", .off = OFF(insecure),
     .group = "Challenge", .help = "do not verify the server's certificate"},
};
/* clang-format on */
#undef OFF
static const struct ab_optset challenge_optset =
    AB_OPTSET(challenge_options, struct challenge_opts);
static const struct ab_sink_ops challenge_table = {
    .name = "challenge", .options = &challenge_optset, .flags = AB_SINK_WRAPS};

int ab_cmd_challenge(int argc, char **argv)
{
    const struct ab_cli_table cmd = {"almabridge challenge URL [options]", CHALLENGE_ABOUT, NULL,
                                     &challenge_table};
    char err[1024] = "", *full = NULL;
    int rc = AB_EXIT_USAGE, started, loaded = 0;
    struct ab_http_answer answer = {0};
    struct ab_config cfg;
    unsigned char rnd[12];
    char why[512] = "";
    char token[32];

    if ((started = ab_cli_load(&cmd, argc, argv, &cfg, err, sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    loaded = 1;
    const struct challenge_opts *o = ab_config_sink_opts(&cfg, &challenge_table);
    if (o->url == NULL) {
        snprintf(err, sizeof(err), "usage: almabridge challenge URL (see --help)");
        goto done;
    }
    RAND_bytes(rnd, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++) {
        snprintf(token + 2 * i, 3, "%02x", rnd[i]);
    }
    full = ab_asprintf("%s%schallenge=%s", o->url, strchr(o->url, '?') ? "&" : "?", token);
    signal(SIGPIPE, SIG_IGN);
    if (request(full, NULL, NULL, 0, o->cacert, o->insecure, &answer, why, sizeof(why)) < 0) {
        snprintf(err, sizeof(err), "%s: %s", o->url, why);
        goto done;
    }
    print_answer(&answer);
    if (answer.status == 200 && echoes(answer.body, token)) {
        printf("challenge %s echoed: OK\n", token);
        rc = AB_EXIT_OK;
    } else {
        fprintf(stderr, "almabridge challenge: the answer does not echo challenge %s\n", token);
        rc = AB_EXIT_FAILED;
    }
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge challenge: %s\n", err);
    }
    free(full);
    ab_http_answer_clear(&answer);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}
