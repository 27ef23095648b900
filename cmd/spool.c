/* almabridge spool inspect DIR: what a spool directory (--spool DIR) holds, read without a
 * daemon: events not yet forwarded, bytes, segments, the oldest and newest event, whether a
 * daemon holds it, fragments cut off after crashes, and lines that are no CloudEvent
 * (damage). For an operator whose broker or replica is gone for good. The events are read
 * through the spool's read side (sink.h) and decoded with the event codec.
 * Exit: 0; 1 when the directory holds damaged lines (or is no spool at all: its files are
 * not CloudEvent lines); 2 for usage errors and an unreadable directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "event.h"
#include "sink.h"
#include "sinks/registry.h"
#include "sinks/spool.h"

static const char usage[] =
    "usage: almabridge spool inspect DIR\n"
    "  lists what the spool directory DIR (--spool DIR) holds: events not yet forwarded,\n"
    "  bytes, segments, the oldest and newest event, the daemon holding it, if any, and\n"
    "  damaged lines. Exit status: 0, 1 damaged lines found, 2 usage or unreadable DIR.\n";

/* What the events not yet forwarded are, read through the spool's read side. */
struct tally {
    long events, damaged;
    char oldest_id[128], oldest_time[64], newest_id[128], newest_time[64];
    char first_damage[320];
};

static void note_event(struct tally *t, const struct ab_event *ev)
{
    char *id = t->events == 0 ? t->oldest_id : t->newest_id;
    char *tm = t->events == 0 ? t->oldest_time : t->newest_time;
    snprintf(id, sizeof(t->oldest_id), "%s", ev->id);
    snprintf(tm, sizeof(t->oldest_time), "%s", ev->time ? ev->time : "");
    if (t->events == 0) {
        snprintf(t->newest_id, sizeof(t->newest_id), "%s", ev->id);
        snprintf(t->newest_time, sizeof(t->newest_time), "%s", ev->time ? ev->time : "");
    }
    t->events++;
}

static int read_events(const char *dir, struct tally *t, char *err, size_t errlen)
{
    int spool = 0, got, rc = -1, loaded = 0;
    struct ab_config cfg;
    struct ab_sink_setup setup;
    char *args[] = {(char *)"spool", NULL};
    struct ab_sink_reader *r = NULL;
    const struct ab_sink_ops *ops = ab_sink_log_reader(dir, &spool, err, errlen);
    if (ops == NULL || ab_cli_load_config(1, args, &cfg, err, errlen) != 0) {
        return -1;
    }
    loaded = 1;
    ab_sink_setup_init(&setup, &cfg, ops);
    struct ab_read_from from = {.path = dir};
    if ((r = ops->reader_open(&setup.conf, &from, err, errlen)) == NULL) {
        goto done;
    }
    struct ab_read_event ev;
    while ((got = ab_reader_next(r, &ev, 0, err, errlen)) == AB_READ_EVENT) {
        struct ab_event *e = NULL;
        char why[160];
        if (ab_event_from_line(ev.value, ev.len, &e, why, sizeof(why)) == AB_EVENT_OK) {
            note_event(t, e);
        } else if (t->damaged++ == 0) {
            snprintf(t->first_damage, sizeof(t->first_damage), "%.150s (%.150s)", why,
                     ev.position);
        }
        ab_event_free(e);
    }
    rc = got == AB_READ_IDLE ? 0 : -1;
done:
    ab_reader_close(r);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}

static void print_summary(const char *dir, const struct ab_spool_summary *s,
                          const struct tally *t)
{
    char when[64] = "";
    if (s->oldest_mtime) {
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&s->oldest_mtime));
    }
    printf("spool %s\n", dir);
    printf("events    %ld not yet forwarded\n", t->events);
    printf("bytes     %lld in %ld segment(s)", s->bytes, s->segments);
    if (s->segments) {
        printf(" (%s .. %s, forwarding continues at byte %lld of the first)", s->first_name,
               s->last_name,
               (long long)s->start_offset);
    }
    printf("\n");
    if (t->events) {
        printf("oldest    id %s, time %s (its segment last written %s)\n", t->oldest_id,
               *t->oldest_time ? t->oldest_time : "-", when);
        printf("newest    id %s, time %s\n", t->newest_id, *t->newest_time ? t->newest_time : "-");
    }
    if (s->holder_pid) {
        printf("daemon    pid %ld holds the spool's lock (it forwards what is here)\n",
               s->holder_pid > 0 ? s->holder_pid : 0);
    } else {
        printf("daemon    none (no process holds the spool's lock)\n");
    }
    if (s->torn) {
        printf("torn      %ld *.torn file(s): partial writes cut off after crashes, never "
               "acknowledged\n",
               s->torn);
    }
    if (t->damaged) {
        printf("damaged   %ld line(s) are no CloudEvent; the first: %s\n", t->damaged,
               t->first_damage);
    }
    if (s->damaged || s->damaged_files) {
        printf("checksums %ld record(s) not yet forwarded fail their CRC32C or are not covered "
               "by one; %ld *.damaged file(s) hold records the forwarder set aside "
               "(almabridge verify %s)\n",
               s->damaged, s->damaged_files, dir);
    }
    if (t->events && !s->holder_pid) {
        printf("\nTo deliver these events, start almabridge with --spool %s and its broker, or\n"
               "push them to another sink: almabridge replay --from %s --sink kafka|redis ...\n"
               "(replay skips ids already in the target).\n",
               dir, dir);
    }
}

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
    struct tally t = {0};
    char err[512] = "";
    if (ab_spool_summarise(dir, &s, err, sizeof(err)) != 0 ||
        read_events(dir, &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "almabridge: spool inspect: %s\n", err);
        return AB_EXIT_USAGE;
    }
    print_summary(dir, &s, &t);
    if (t.damaged || s.damaged) {
        fprintf(stderr, "almabridge: spool inspect: %s holds %ld damaged line(s)%s\n", dir,
                t.damaged + s.damaged, t.events ? "" : " and no event: is it a spool?");
        return AB_EXIT_FAILED;
    }
    return AB_EXIT_OK;
}
