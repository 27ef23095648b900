/* libFuzzer driver: the configuration file (--config FILE) through ab_config_load(). The
 * input is written to a file and loaded with an empty environment. Checks: the result is
 * OK or the configuration-error code with a reason, never a crash or a leak (ASan), and a
 * loaded configuration prints (--print-config) without crashing. */
#include "config.h"
#include "registry.h"

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    static FILE *devnull;
    if (path[0] == '\0') {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof(path), "%s/ab-fuzz-config.%ld", dir, (long)getpid());
        devnull = fopen("/dev/null", "w");
    }
    FILE *f = fopen(path, "wb");
    check(f != NULL && fwrite(data, 1, size, f) == size && fclose(f) == 0, "write the file");

    char *argv[] = {"almabridge", "--config", path, NULL};
    char *envp[] = {NULL};
    char err[512] = "";
    struct ab_config cfg;
    int rc = ab_config_load(&cfg, ab_sinks, 3, argv, envp, err, sizeof(err));
    check(rc == AB_CONFIG_OK || rc == AB_CONFIG_ERROR, "known result");
    check(rc == AB_CONFIG_OK || err[0] != '\0', "a reason on error");
    check(memchr(err, '\0', sizeof(err)) != NULL, "reason terminated");
    if (rc == AB_CONFIG_OK) {
        ab_config_print(&cfg, devnull);
    }
    ab_config_free(&cfg);
    unlink(path);
    return 0;
}
