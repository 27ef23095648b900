#include "tls.h"

#include <stdio.h>

#include <pthread.h>
#include <stdint.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "metrics.h"

/* Handshake accounting: a connection whose handshake started but never finished (a client
 * offering TLS 1.1, plain HTTP sent to the TLS port, a bad certificate on the client's side)
 * counts as one failure when its SSL object is freed. */
static int hs_index = -1;
static pthread_once_t hs_once = PTHREAD_ONCE_INIT;

static void on_ssl_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                        void *argp)
{
    if ((uintptr_t)ptr == 1) {
        atomic_fetch_add(&ab_metrics_g.tls_handshake_failures, 1);
    }
}

static void hs_init(void)
{
    hs_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_free);
}

static void on_ssl_info(const SSL *ssl, int where, int ret)
{
    if (where & SSL_CB_HANDSHAKE_START) {
        if (SSL_get_ex_data(ssl, hs_index) == NULL) {
            SSL_set_ex_data((SSL *)ssl, hs_index, (void *)1);
        }
    } else if (where & SSL_CB_HANDSHAKE_DONE) {
        SSL_set_ex_data((SSL *)ssl, hs_index, (void *)2);
    }
}

static void ssl_error(char *errstr, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "unknown error";
    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
    }
    ERR_clear_error();
    snprintf(errstr, errlen, "%s %s: %s", what, file, buf);
}

SSL_CTX *ab_tls_ctx_new(const char *cert_file, const char *key_file, char *errstr, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_error(errstr, errlen, "cannot create TLS context for", cert_file);
        return NULL;
    }
    pthread_once(&hs_once, hs_init);
    SSL_CTX_set_info_callback(ctx, on_ssl_info);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* TLS 1.2: ECDHE with AEAD only (Mozilla "intermediate"); TLS 1.3 suites are all fine. */
    SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ssl_error(errstr, errlen, "cannot load TLS certificate chain", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(errstr, errlen, "TLS private key %s does not match certificate %s",
                     key_file, cert_file);
            goto fail;
        }
        ssl_error(errstr, errlen, "cannot load TLS private key", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(errstr, errlen, "TLS private key %s does not match certificate %s", key_file,
                 cert_file);
        ERR_clear_error();
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}
