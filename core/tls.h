/* TLS termination: an OpenSSL server context from a PEM certificate chain and key.
 * TLS 1.2 and 1.3 only, forward-secret AEAD ciphers, no compression, no renegotiation. */
#ifndef AB_TLS_H
#define AB_TLS_H

#include <stddef.h>

typedef struct ssl_ctx_st SSL_CTX;

/* Returns a new context (the caller owns one reference) or NULL with a message in errstr
 * (unreadable file, bad PEM, key not matching the certificate). Any thread. */
SSL_CTX *ab_tls_ctx_new(const char *cert_file, const char *key_file, char *errstr, size_t errlen);

#endif
