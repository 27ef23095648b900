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
 * The client is libevent's evhttp over a bufferevent, with OpenSSL for https:// URLs:
 * the peer certificate is verified against the system's CAs (or --cacert) and the URL's
 * host name or IP address, unless --insecure. */
#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <openssl/rand.h>

#include "cli.h"
#include "http_client.h"
#include "mem.h"
#include "signature.h"
#include "sink.h"

/* The answer on stdout: "HTTP <status> <reason>", then the body. */
static void print_answer(const struct ab_http_call *call)
{
    printf("HTTP %d %s\n%s%s", call->status, call->reason, call->body,
           call->body_len && call->body[call->body_len - 1] != '\n' ? "\n" : "");
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
    struct ab_http_call call = {0};
    struct ab_config cfg;

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
    const char *headers[] = {"Content-Type", o->ctype ? o->ctype : guess_type(body, len),
                             secret ? "X-Exl-Signature" : NULL, sig, NULL};
    struct ab_http_opts t = {.cacert = o->cacert, .insecure = o->insecure};
    signal(SIGPIPE, SIG_IGN);
    if (ab_http_call(o->url, EVHTTP_REQ_POST, headers, body, len, &t, &call) != 0) {
        snprintf(err, sizeof(err), "%s: %s", o->url, call.err);
        goto done;
    }
    print_answer(&call);
    rc = call.status >= 200 && call.status < 300 ? AB_EXIT_OK : AB_EXIT_FAILED;
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge send: %s\n", err);
    }
    if (secret) {
        memset(secret, 0, strlen(secret));
    }
    free(secret);
    free(body);
    free(call.body);
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
    struct ab_http_call call = {0};
    struct ab_config cfg;
    unsigned char rnd[12];
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
    struct ab_http_opts t = {.cacert = o->cacert, .insecure = o->insecure};
    signal(SIGPIPE, SIG_IGN);
    if (ab_http_call(full, EVHTTP_REQ_GET, NULL, NULL, 0, &t, &call) != 0) {
        snprintf(err, sizeof(err), "%s: %s", o->url, call.err);
        goto done;
    }
    print_answer(&call);
    if (call.status == 200 && echoes(call.body, token)) {
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
    free(call.body);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}
