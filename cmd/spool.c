/* almabridge spool inspect DIR: what a spool directory (--spool DIR) holds, read without a
 * daemon: events not yet forwarded, bytes, segments, the oldest and newest event, whether a
 * daemon holds it, fragments cut off after crashes, and lines that are no CloudEvent
 * (damage). For an operator whose broker or replica is gone for good. The events are read
 * through the spool's read side (sink.h) and decoded with the event codec.
 * With the daemon's --dedupe-store (and its --sink/--redis), also how many of them are
 * delivered already (replay records what it delivers, as the forwarder's "fwd:<key>": a
 * daemon started on the spool skips those), asked of the store in batches (dedupe.h).
 * Exit: 0; 1 when the directory holds damaged lines (or is no spool at all: its files are
 * not CloudEvent lines); 2 for usage errors, an unreadable directory and a store that does
 * not answer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "dedupe.h"
#include "event.h"
#include "mem.h"
#include "sink.h"
#include "sinks/dedupe_store.h"
#include "sinks/registry.h"
#include "sinks/spool.h"

static const char usage[] =
    "usage: almabridge spool inspect DIR [--list] [the daemon's options]\n"
    "  lists what the spool directory DIR (--spool DIR) holds: events not yet forwarded,\n"
    "  bytes, segments, the oldest and newest event, the daemon holding it, if any, and\n"
    "  damaged lines. With the daemon's --dedupe-store (and --sink, --redis ...), also how\n"
    "  many of them are delivered already (by replay, say), which a daemon started on the\n"
    "  spool skips. --list: one line per event (id, time, delivered or not).\n"
    "  Exit status: 0, 1 damaged lines found, 2 usage, unreadable DIR or the store down.\n";

#define BATCH AB_DEDUPE_PEEK_MAX

/* What the events not yet forwarded are, read through the spool's read side. */
struct tally {
    long events, damaged;
    char oldest_id[128], oldest_time[64], newest_id[128], newest_time[64];
    char first_damage[320];
    int list; /* --list: a line per event */
    /* --dedupe-store: the keys of the events read and not asked yet, and the answers */
    const struct ab_dedupe_setup *dds;
    struct ab_dedupe_query *dq;
    char *keys[BATCH], *ids[BATCH], *times[BATCH];
    size_t n;
    long delivered, inflight;
    int dd_failed;
    char dd_err[300];
};

/* Ask the store about the batch held, count and (--list) print it, and let it go. */
static void flush_batch(struct tally *t)
{
    int states[BATCH];
    if (t->n && !t->dd_failed &&
        ab_dedupe_query_states(t->dq, (const char *const *)t->keys, t->n, states, t->dd_err,
                               sizeof(t->dd_err)) != 0) {
        t->dd_failed = 1;
    }
    for (size_t i = 0; i < t->n; i++) {
        int st = t->dd_failed ? -1 : states[i];
        t->delivered += st == AB_DEDUPE_STORED;
        t->inflight += st == AB_DEDUPE_INFLIGHT;
        if (t->list) {
            printf("event     %s %s %s\n", t->ids[i], *t->times[i] ? t->times[i] : "-",
                   st == AB_DEDUPE_STORED     ? "delivered"
                   : st == AB_DEDUPE_INFLIGHT ? "in flight"
                   : st < 0                   ? "unknown"
                                              : "not delivered");
        }
        free(t->keys[i]);
        free(t->ids[i]);
        free(t->times[i]);
    }
    t->n = 0;
}

/* One event read: --list without a store prints it now; with one it waits for its batch. */
static void note_key(struct tally *t, const struct ab_event *ev)
{
    if (t->dq == NULL) {
        if (t->list) {
            printf("event     %s %s\n", ev->id, ev->time ? ev->time : "-");
        }
        return;
    }
    char key[520];
    ab_dedupe_spool_key(t->dds, ev, key, sizeof(key));
    t->keys[t->n] = ab_strdup(key);
    t->ids[t->n] = ab_strdup(ev->id);
    t->times[t->n] = ab_strdup(ev->time ? ev->time : "");
    if (++t->n == BATCH) {
        flush_batch(t);
    }
}

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
    note_key(t, ev);
}

static int read_events(const char *dir, const struct ab_config *cfg, struct tally *t,
                       char *err, size_t errlen)
{
    int spool = 0, got, rc = -1;
    struct ab_sink_setup setup;
    struct ab_sink_reader *r = NULL;
    const struct ab_sink_ops *ops = ab_sink_log_reader(dir, &spool, err, errlen);
    if (ops == NULL) {
        return -1;
    }
    ab_sink_setup_init(&setup, cfg, ops);
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
    flush_batch(t);
done:
    ab_reader_close(r);
    return rc;
}

/* The line about the deduplication store, when one was asked. */
static void print_delivered(const struct tally *t)
{
    char d[200] = "";
    if (t->dq == NULL) {
        return;
    }
    ab_dedupe_query_describe(t->dq, d, sizeof(d));
    if (t->dd_failed) {
        printf("delivered unknown: %s\n", t->dd_err);
        return;
    }
    printf("delivered %ld of %ld already delivered per the deduplication store (%s): a daemon "
           "started on this spool skips them\n",
           t->delivered, t->events, d);
    if (t->inflight) {
        printf("in flight %ld being forwarded now (claimed in the store)\n", t->inflight);
    }
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
    print_delivered(t);
    if (t->events > t->delivered && !s->holder_pid) {
        printf("\nTo deliver these events, start almabridge with --spool %s and its broker, or\n"
               "push them to another sink: almabridge replay --from %s --sink kafka|redis ...\n"
               "(replay skips ids already in the target).\n",
               dir, dir);
    }
}

/* Open the store of --dedupe-store (as given: "auto", the file sink's, never applies to a
 * spool) for asking. Returns 0 (t->dq NULL when there is none), or -1 with err. */
static int open_store(const struct ab_config *cfg, struct ab_dedupe_setup *dds, struct tally *t,
                      char *err, size_t errlen)
{
    int on = 0;
    const char *url = cfg->dedupe_store;
    if (url == NULL || !strcmp(url, "auto") || !strcmp(url, "none")) {
        return 0;
    }
    if (ab_dedupe_setup_init(dds, cfg, &on, err, errlen) != 0) {
        return -1;
    }
    t->dds = dds;
    if (on && (t->dq = ab_dedupe_query_new(dds, err, errlen)) == NULL) {
        return -1;
    }
    return 0;
}

int ab_cmd_spool(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        fputs(usage, stdout);
        return AB_EXIT_OK;
    }
    if (argc < 3 || strcmp(argv[1], "inspect") != 0 || argv[2][0] == '-') {
        fputs(usage, stderr);
        return AB_EXIT_USAGE;
    }
    const char *dir = argv[2];
    struct ab_spool_summary s;
    struct ab_config cfg;
    struct ab_dedupe_setup dds = {0};
    struct tally t = {0};
    char err[512] = "";
    int loaded = 0, rc = AB_EXIT_USAGE, nargs = 1;
    char **args = ab_calloc((size_t)argc, sizeof(*args)); /* "spool" and the daemon's options */
    args[0] = argv[0];
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            t.list = 1;
        } else {
            args[nargs++] = argv[i];
        }
    }
    if (ab_spool_summarise(dir, &s, err, sizeof(err)) != 0 ||
        ab_cli_load_config(nargs, args, &cfg, err, sizeof(err)) != 0) {
        goto done;
    }
    loaded = 1;
    cfg.check_config = 1; /* the store: create nothing that lasts (no file of its own) */
    if (open_store(&cfg, &dds, &t, err, sizeof(err)) != 0 ||
        read_events(dir, &cfg, &t, err, sizeof(err)) != 0) {
        goto done;
    }
    print_summary(dir, &s, &t);
    rc = AB_EXIT_OK;
    if (t.damaged || s.damaged) {
        fprintf(stderr, "almabridge: spool inspect: %s holds %ld damaged line(s)%s\n", dir,
                t.damaged + s.damaged, t.events ? "" : " and no event: is it a spool?");
        rc = AB_EXIT_FAILED;
    }
    if (t.dd_failed) {
        fprintf(stderr, "almabridge: spool inspect: %s\n", t.dd_err);
        rc = AB_EXIT_USAGE;
    }
    err[0] = '\0';
done:
    if (err[0]) {
        fprintf(stderr, "almabridge: spool inspect: %s\n", err);
    }
    ab_dedupe_query_free(t.dq);
    ab_dedupe_setup_free(&dds);
    if (loaded) {
        ab_config_free(&cfg);
    }
    free(args);
    return rc;
}
