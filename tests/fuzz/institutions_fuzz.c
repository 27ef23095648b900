/* libFuzzer driver: the consortium profile file (--institutions FILE) through
 * ab_institutions_load(), and the URL forms that name an institution through
 * ab_institutions_url_code() (the input's first line as the path, the second as the query).
 * Checks: a profile set, or NULL with a reason that names the file; every profile of a set
 * is found by its code and its code is valid; a URL names no code, one valid code, or is
 * refused; never a crash or a leak (ASan). */
#include "institutions.h"
#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz invariant broken: %s\n", what);
        abort();
    }
}

/* The URL part: "PATH\nQUERY..." of the input. */
static void url(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    char *nl = strchr(s, '\n');
    const char *query = NULL;
    if (nl != NULL) {
        *nl = '\0';
        query = nl + 1;
    }
    char code[AB_INST_CODE_MAX + 1];
    int rc = ab_institutions_url_code("/webhook", s, query, code);
    check(rc >= -1 && rc <= 1, "url: known result");
    check(rc != 1 || ab_institutions_code_valid(code), "url: a valid code");
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (path[0] == '\0') {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof(path), "%s/ab-fuzz-institutions.%ld", dir, (long)getpid());
        ab_log_level_min = AB_LOG_OFF;
    }
    FILE *f = fopen(path, "wb");
    check(f != NULL && fwrite(data, 1, size, f) == size && fclose(f) == 0, "write the file");
    char err[512] = "";
    struct ab_institutions *set = ab_institutions_load(path, 1, err, sizeof(err));
    check(set != NULL || strstr(err, path) != NULL, "a reason naming the file on error");
    check(memchr(err, '\0', sizeof(err)) != NULL, "reason terminated");
    check(set == NULL || ab_institutions_count(set) > 0, "a set has a profile");
    ab_institutions_free(set);
    unlink(path);
    url(data, size);
    return 0;
}
