/* X-Exl-Signature: base64(HMAC-SHA256(key = secret bytes, message = raw body bytes)).
 * A set of secrets supports rotation: a signature made with any of them is valid. */
#ifndef AB_SIGNATURE_H
#define AB_SIGNATURE_H

#include <stddef.h>

#define AB_SIGNATURE_B64_LEN 44 /* 32 bytes in standard base64 with padding */

struct ab_secrets; /* opaque, immutable once loaded; shareable between threads */

/* Load secrets: one per line of `file` (may be NULL; blank lines and lines starting with
 * '#' ignored; a UTF-8 BOM, CR line ends and trailing blanks stripped with a warning that
 * names the line) plus `extra` (may be NULL, e.g. ALMABRIDGE_SECRET; trailing CR/LF and
 * blanks stripped). Returns NULL with a message in errstr when the file cannot be read.
 * The result (one reference) may hold zero secrets: the caller decides whether that is
 * allowed. */
struct ab_secrets *ab_secrets_load(const char *file, const char *extra, char *errstr,
                                   size_t errlen);
size_t ab_secrets_count(const struct ab_secrets *s);
/* Build a set from several sources (consortium profiles): add the secrets of file, one per
 * line with the rules above (returns 0, or -1 with a message naming the file), or one
 * secret as given. Only while the set is not yet shared. */
int ab_secrets_add_file(struct ab_secrets *s, const char *file, char *errstr, size_t errlen);
void ab_secrets_add(struct ab_secrets *s, const char *secret, size_t len);
/* 1 when the two sets hold a secret in common (whoever has it can sign for both). */
int ab_secrets_overlap(const struct ab_secrets *a, const struct ab_secrets *b);
/* Sets are shared between worker threads: take one more reference (returns s), and drop
 * one with ab_secrets_free(), which frees the set with the last one. NULL is a no-op. */
struct ab_secrets *ab_secrets_ref(struct ab_secrets *s);
void ab_secrets_free(struct ab_secrets *s);

/* Compute the signature of body with secret into out (AB_SIGNATURE_B64_LEN + 1 bytes). */
void ab_signature_compute(const void *secret, size_t secret_len, const void *body, size_t len,
                          char out[AB_SIGNATURE_B64_LEN + 1]);

/* 1 when header (the X-Exl-Signature value, surrounding blanks ignored) matches the
 * signature of body under any of the secrets, compared in constant time; 0 otherwise,
 * also for a NULL header. */
int ab_signature_verify(const struct ab_secrets *s, const char *header, const void *body,
                        size_t len);

/* The daemon's secrets for cfg: --secret-file or env_secret (ALMABRIDGE_SECRET), none in
 * consortium mode (the profiles hold them, and ALMABRIDGE_SECRET is then an error), at least
 * one unless --insecure-skip-signature. NULL with one line in err. Start-up thread. */
struct ab_config;
struct ab_secrets *ab_secrets_for_config(const struct ab_config *cfg, const char *env_secret,
                                         char *err, size_t errlen);

#endif
