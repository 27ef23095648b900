/* almabridge spool inspect DIR: what a spool directory (--spool DIR) holds, read without a
 * daemon: events not yet forwarded, bytes, segments, the oldest and newest event, whether a
 * daemon holds it, fragments cut off after crashes. For an operator whose broker or replica
 * is gone for good. Exit: 0, or 2 for usage errors and an unreadable directory. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "eventlog.h"
#include "spool.h"

static const char usage[] =
    "usage: almabridge spool inspect DIR\n"
    "  lists what the spool directory DIR (--spool DIR) holds: events not yet forwarded,\n"
    "  bytes, segments, the oldest and newest event, and the daemon holding it, if any.\n";

int ab_cmd_spool(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        fputs(usage, stdout);
        return AB_EXIT_OK;
    }
    if (argc != 3 || strcmp(argv[1], "inspect") != 0) {
        fputs(usage, stderr);
        return AB_EXIT_USAGE;
    }
    const char *dir = argv[2];
    struct ab_spool_summary s;
    char err[512];
    if (ab_spool_summarise(dir, &s, err, sizeof(err)) != 0) {
        fprintf(stderr, "almabridge: spool inspect: %s\n", err);
        return AB_EXIT_USAGE;
    }
    char first[64], last[64], when[64] = "";
    ab_eventlog_segment_name(s.first_seq, first, sizeof(first));
    ab_eventlog_segment_name(s.last_seq, last, sizeof(last));
    if (s.oldest_mtime) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&s.oldest_mtime));
    }
    printf("spool %s\n", dir);
    printf("events    %ld not yet forwarded\n", s.events);
    printf("bytes     %lld in %ld segment(s)", s.bytes, s.segments);
    if (s.segments) {
        printf(" (%s .. %s, forwarding continues at byte %lld of the first)", first, last,
               (long long)s.start_offset);
    }
    printf("\n");
    if (s.events) {
        printf("oldest    id %s, time %s (its segment last written %s)\n", s.oldest_id,
               *s.oldest_time ? s.oldest_time : "-", when);
        printf("newest    id %s, time %s\n", s.newest_id, *s.newest_time ? s.newest_time : "-");
    }
    if (s.holder_pid) {
        printf("daemon    pid %ld holds the spool's lock (it forwards what is here)\n",
               s.holder_pid > 0 ? s.holder_pid : 0);
    } else {
        printf("daemon    none (no process holds the spool's lock)\n");
    }
    if (s.torn) {
        printf("torn      %ld *.torn file(s): partial writes cut off after crashes, never "
               "acknowledged\n",
               s.torn);
    }
    if (s.events && !s.holder_pid) {
        printf("\nTo deliver these events, start almabridge with --spool %s and its broker, or\n"
               "push them to another sink: almabridge replay --from %s --sink kafka|redis ...\n"
               "(replay skips ids already in the target).\n",
               dir, dir);
    }
    return AB_EXIT_OK;
}
