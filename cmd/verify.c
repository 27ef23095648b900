/* `almabridge verify PATH...`: read an event log (the file sink's file) or a spool
 * directory through its checksum index, the way the forwarder and replay do, and report
 * every damaged record with its file and offset (sinks/eventlog.h, docs/INTEGRITY.md). */
#include "verify.h"

#include <stdio.h>
#include <string.h>

#include "eventlog.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: almabridge verify PATH...\n"
            "Check every record of an event log file (--file) or a spool directory (--spool)\n"
            "against its CRC32C checksum (PATH.crc, one per segment in a spool).\n"
            "Each damaged record is printed with its file and offset.\n"
            "Exit 0: all intact; 1: damage found; 2: usage error or unreadable path.\n");
}

int ab_cmd_verify(int argc, char **argv)
{
    int npaths = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-') {
            fprintf(stderr, "almabridge verify: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
        npaths++;
    }
    if (npaths == 0) {
        usage(stderr);
        return 2;
    }
    long damaged = 0;
    for (int i = 1; i < argc; i++) {
        long records = 0, unverified = 0;
        char err[512];
        long bad = ab_eventlog_verify(argv[i], &records, &unverified, stdout, err, sizeof(err));
        if (bad < 0) {
            fprintf(stderr, "almabridge verify: %s\n", err);
            return 2;
        }
        printf("%s: %ld record(s) intact", argv[i], records - unverified);
        if (unverified > 0) {
            printf(", %ld from before checksums (not verified)", unverified);
        }
        printf(", %ld damaged\n", bad);
        damaged += bad;
    }
    return damaged > 0 ? 1 : 0;
}
