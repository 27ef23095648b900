/* The spool (--spool DIR): store and forward in front of the Kafka or Redis sink.
 *
 * An event the broker sink cannot take now (refused at once, not ready, an error, or no
 * acknowledgement within --spool-after) is appended to an fsync'd event log of segments in
 * DIR (eventlog.h: group commit, torn tails cut, a lock on DIR, directory fsync) and
 * answered 200. A forwarder on one loop thread drains the spool to the broker in spool
 * order with at most SPOOL_WINDOW events in flight, and removes a segment only after every
 * event in it was acknowledged. Its progress is kept in DIR/forwarded ("SEGMENT OFFSET"),
 * so a restart continues where it stopped. At least once: an event may reach the broker
 * twice (a late acknowledgement after --spool-after, a failure in the forwarder's window
 * after later events were acknowledged, a crash between an acknowledgement and the progress
 * update); the first two are counted in metrics.
 *
 * The segments hold plain CloudEvent lines, exactly as the file sink writes them, so
 * `almabridge replay --from DIR` can push them elsewhere; the forwarder derives each
 * event's topic/stream and key from the line with the configured --route and --kafka-key.
 * Each segment has its checksum index "<segment>.crc" (eventlog.h). The forwarder reads
 * through it: a damaged record (checksum mismatch, a segment cut short, bytes no checksum
 * covers) is logged at error level with segment and offset, counted
 * (almabridge_damaged_records_total, /readyz detail), copied to "<segment>.damaged" and
 * skipped; forwarding goes on with the next good record, never stalls. */
#ifndef AB_SPOOL_H
#define AB_SPOOL_H

#include <stdint.h>
#include <time.h>

#include "sink.h"

#define SPOOL_WINDOW 64

/* The spool's configuration (its ab_sink_conf's opts): the broker backend it wraps with
 * that backend's own configuration, and the spool's options. The spool hands inner_conf to
 * the inner backend with ack_timeout_ms = after_ms. */
struct ab_spool_conf {
    const struct ab_sink_ops *inner;
    struct ab_sink_conf inner_conf;
    const char *dir;     /* --spool */
    long after_ms;       /* --spool-after */
    long max_bytes;      /* --spool-max-bytes */
    long segment_bytes;  /* --spool-segment-bytes */
    const char *route;   /* --route, NULL = the inner backend's default */
};

/* The spool's own options (its option table fills this; ab_sink_spool carries the table). */
struct ab_spool_opts {
    char *dir;          /* --spool DIR, NULL = no spool */
    long after_ms;      /* --spool-after */
    long max_bytes;     /* --spool-max-bytes */
    long segment_bytes; /* --spool-segment-bytes */
};

/* The spool's entry in the registry: its options (AB_SINK_WRAPS: not a --sink choice). */
extern const struct ab_sink_ops ab_sink_spool;

/* The operations of a spool in front of inner (kafka or redis); its name and default route
 * are inner's, its global_init and open take an ab_sink_conf whose opts is an
 * ab_spool_conf. Start-up thread, once. */
const struct ab_sink_ops *ab_spool_wrap(const struct ab_sink_ops *inner);

/* What a spool directory holds, read without a daemon (`almabridge spool inspect`). */
struct ab_spool_summary {
    long segments;
    long events;             /* not yet forwarded */
    long long bytes;         /* of the segment files */
    uint64_t first_seq, last_seq;
    int64_t start_offset;    /* where forwarding continues in first_seq */
    char oldest_id[128], oldest_time[64]; /* the next event to forward (id, CloudEvent time) */
    char newest_id[128], newest_time[64];
    time_t oldest_mtime;     /* the first segment's last write */
    long holder_pid;         /* a daemon holding DIR's lock, or 0 */
    long torn;               /* *.torn files (fragments cut off after a crash) */
    long damaged;            /* records not yet forwarded that fail their checksum, are
                              * cut short or not covered by one (eventlog.h) */
    long damaged_files;      /* *.damaged files (records the forwarder set aside) */
};

/* Fill s from dir. Returns 0, or -1 with one line in errstr. */
int ab_spool_summarise(const char *dir, struct ab_spool_summary *s, char *errstr,
                       size_t errlen);

#endif
