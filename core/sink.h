/* The sink contract, both directions: where normalised events are written durably, and
 * (optionally) how they are read back.
 *
 * A sink backend is a table of operations (Redis CT_Socket, Fluent Bit out_* plugins) plus
 * the option table that fills its own configuration struct. The write side is below; the
 * read side (reader_open/reader_next/reader_close, Fluent Bit's in_kafka beside out_kafka)
 * follows it, and its types come after the table. The core (this header,
 * core/pending.h, the HTTP front end) knows no backend; the registry of backends sits
 * next to them (registry.c), where the program is assembled. See docs/ARCHITECTURE.md.
 *
 * The process calls global_init() once before worker threads start, then each worker
 * thread open()s its own instance on its own event base; an instance is used only by the
 * thread that opened it. close() runs on that thread after its loop has stopped;
 * global_free() runs once after every instance has been closed.
 *
 * Threads: every write-side function except global_init/global_free runs on the owning loop
 * thread; a reader runs on the thread that uses it, never a loop thread.
 */
#ifndef AB_SINK_H
#define AB_SINK_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct ab_read_from;
struct ab_read_event;
struct ab_sink_reader;
struct ab_event;
struct ab_optset;

/* Completion status handed to the callback. */
enum ab_sink_status {
    AB_SINK_OK = 0,      /* durably acknowledged: answer 200 */
    AB_SINK_ERROR = 1,   /* the backend refused or failed, may work later: answer 503 */
    AB_SINK_TIMEOUT = 2, /* no acknowledgement within --ack-timeout (core/pending.h): 503 */
    AB_SINK_CLOSED = 3,  /* the instance was closed before an answer: 503 */
    AB_SINK_TOO_BIG = 4, /* can never be written, whatever the retries (over the cluster's
                          * message size limit): answer 413 */
    AB_SINK_DUPLICATE = 5, /* msg->dedupe_key was stored already (the backend claims and
                            * writes atomically, core/dedupe.h): nothing written, answer 200 */
};
const char *ab_sink_status_str(int status);

/* One event to write. The strings are borrowed for the duration of submit() only: a
 * backend copies what it needs before submit() returns. */
struct ab_sink_msg {
    const char *id;     /* webhook id (CloudEvent id) */
    const char *type;   /* CloudEvent type */
    const char *source; /* CloudEvent source */
    const char *route;  /* expanded topic / stream (unused by the file sink) */
    const char *key;    /* message key; NULL = the backend's own choice (Kafka: --kafka-key
                         * expanded for `event`) */
    const char *value;  /* the CloudEvent JSON, value_len bytes, no newline */
    size_t value_len;
    const struct ab_event *event; /* the event itself, NULL when not known (tests) */
    int dead_letter; /* a dead-letter record (webhook.c): value is its JSON, route the
                      * --dead-letter-route; a backend without topics (the file sink)
                      * writes it to its dead-letter file, the spool never spools it */
    /* Deduplication by the backend itself (core/dedupe.h, only for a backend that can: the
     * Redis sink with the store on the same server): write only if this key is not stored,
     * and mark it stored for dedupe_window_ms in the same atomic step. NULL: no check. */
    const char *dedupe_key;
    long dedupe_window_ms;
};

/* Runs exactly once per accepted submit, on the thread that submitted. `errstr` is a short
 * reason for logs (never payload content), NULL on success. The callback may submit again
 * but must not close the sink. */
typedef void (*ab_sink_done_cb)(int status, const char *errstr, void *opaque);

/* What a backend is configured with: its own struct, filled by the generic loader
 * (core/config.h) from the backend's option table, and the few settings of the core that
 * bound every backend. */
struct ab_sink_conf {
    const void *opts;    /* the backend's own configuration struct (ops->options) */
    long ack_timeout_ms; /* every submission's deadline (--ack-timeout) */
    long max_body;       /* the largest request body the front end accepts (--max-body) */
    int check_only;      /* --check-config: validate and create nothing that lasts */
    const char *route;   /* --route as given (NULL: the backend's default_route) */
    int dead_letter;     /* --dead-letter on: messages with dead_letter set will come */
    int structured;      /* --content-mode structured: the JSON event as one value; else
                          * binary: attributes beside the data (msg->event has them) */
    int batched;         /* --content-mode batched: several events per write, a JSON array
                          * (only a backend with AB_SINK_BATCHES is given it) */
};

/* ab_sink_ops.flags: a backend that wraps another (the spool). The configuration loader
 * loads its options, but --sink does not offer it and the registry does not find it. */
#define AB_SINK_WRAPS 0x1
/* ab_sink_ops.flags: a write the backend has not acknowledged by its deadline may still be
 * stored, and the backend keeps retrying it safely on its own (Kafka's idempotent producer
 * on a new partition leader, or on the broker when it is back). A wrapper that answers by
 * its own timer (the spool) gives it a longer deadline, AB_SINK_PATIENCE_MS (librdkafka's
 * own default message.timeout.ms, 5 min), so that its answer is the final one for any
 * outage shorter than that: a write that was in flight when the broker went down is retried
 * by the producer, which the broker recognises, instead of being forwarded again. */
#define AB_SINK_RETRIES_LATE 0x2
#define AB_SINK_PATIENCE_MS 300000L
/* ab_sink_ops.flags: the backend has a batched content mode (--content-mode batched: the
 * CloudEvents HTTP binding's); any other refuses that mode at start. */
#define AB_SINK_BATCHES 0x4

struct ab_sink {
    const struct ab_sink_ops *ops; /* first member of every backend's instance struct */
};

struct ab_sink_ops {
    const char *name;
    const char *default_route; /* route template when --route is not given */
    /* The backend's options (name, type, default, env, help, offset into its own struct).
     * NULL for none. */
    const struct ab_optset *options;
    unsigned flags; /* AB_SINK_WRAPS, AB_SINK_RETRIES_LATE, AB_SINK_BATCHES */

    /* Once per process, before threads. Validate the configuration and create what all
     * instances share (the file sink's writer thread). Returns 0 and sets *shared, or -1
     * with one line in errstr. Optional. */
    int (*global_init)(const struct ab_sink_conf *conf, void **shared, char *errstr,
                       size_t errlen);
    void (*global_free)(void *shared);

    /* Open an instance on base. Returns it, or NULL with one line in errstr. */
    struct ab_sink *(*open)(const struct ab_sink_conf *conf, void *shared,
                            struct event_base *base, char *errstr, size_t errlen);

    /* Submit one event. THE CONTRACT:
     *  - returns non-zero: refused at once (queue full, disconnected, closing); the callback
     *    is never called and the caller answers 503 itself;
     *  - returns 0: `cb(status, errstr, opaque)` runs EXACTLY ONCE, LATER (never from inside
     *    submit), ON THE LOOP THREAD THAT SUBMITTED: AB_SINK_OK only after the backend has
     *    durably acknowledged (fsync returned, broker ack with acks=all, XADD reply), or an
     *    error/timeout status. The deadline is --ack-timeout, enforced for every backend by
     *    its pending list (core/pending.h), so the callback always comes; close()
     *    completes what is left with AB_SINK_CLOSED. */
    int (*submit)(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                  void *opaque);

    /* 1 while the instance can take writes (for /readyz), else 0. */
    int (*ready)(struct ab_sink *s);

    /* --check-connect, start-up thread, after global_init succeeded: try within
     * timeout_ms to reach what the backend writes to (brokers, a server), writing
     * nothing. Returns 0 when reached, -1 when not; either way one line in msg saying
     * what was tried and what was found (never a password). Optional: a backend without
     * it has nothing to reach beyond what global_init checked. */
    int (*probe)(const struct ab_sink_conf *conf, int timeout_ms, char *msg, size_t len);

    /* Write a short human-readable state ("connected", "broker down: ...") into buf.
     * Optional. */
    void (*describe)(struct ab_sink *s, char *buf, size_t len);

    /* Flush what is pending (bounded by timeout_ms), complete every outstanding submission
     * (callbacks run before close returns, with AB_SINK_CLOSED for those not acknowledged)
     * and free the instance. NULL is a no-op. */
    void (*close)(struct ab_sink *s, int timeout_ms);

    /* ---- The read side: optional (NULL reader_open = this backend cannot be read back;
     * `wait`, `replay` and `spool inspect` then refuse it, exit 2). ---- */

    /* Open a reader of what this backend wrote under conf, at *from. It connects at once:
     * NULL with one line in errstr when the backend cannot be reached or read. A topic or
     * stream that does not exist yet is no error: next() reports AB_READ_IDLE until it
     * does. */
    struct ab_sink_reader *(*reader_open)(const struct ab_sink_conf *conf,
                                          const struct ab_read_from *from, char *errstr,
                                          size_t errlen);

    /* The next event, in the backend's order (per partition for Kafka), waiting at most
     * timeout_ms for one once the reader has reached the end of what was stored:
     *  - AB_READ_EVENT: *ev is filled; its pointers are valid until the next call or close;
     *  - AB_READ_IDLE: the reader is at the end of what the backend holds and nothing came
     *    within timeout_ms (0: do not wait); calling again continues;
     *  - AB_READ_ERROR: errstr says why (a broken connection); calling again reconnects
     *    and continues after the last event returned. */
    int (*reader_next)(struct ab_sink_reader *r, struct ab_read_event *ev, int timeout_ms,
                       char *errstr, size_t errlen);

    /* Free the reader. NULL is a no-op. */
    void (*reader_close)(struct ab_sink_reader *r);
};

/* ---- The read side's types ----
 *
 * A reader is a blocking, single-threaded handle for programs (wait, replay, spool inspect)
 * and for helper threads; it never runs on a loop thread and shares nothing with the
 * write side's instances. It commits nothing anywhere: where to continue is the caller's
 * to keep, as a position. */

/* Where a reader starts. */
struct ab_read_from {
    const char *route;    /* the expanded topic (a Kafka topic name as written) or stream;
                             NULL for a backend that has one place (file, spool) */
    const char *position; /* continue just after this position (as returned in
                             ab_read_event.position), or NULL */
    int64_t since_ms;     /* no position: the first event stored at or after this time (ms
                             since the epoch; a file has no store time, so its events' own
                             "time"); 0 = the oldest event kept */
    const char *path;     /* file and spool: read this file or directory instead of the
                             configured one (replay --from), or NULL */
    int all;              /* the spool: also the events already forwarded (by default a
                             spool is read from where its forwarder continues) */
    int dead_letter;      /* read the dead letter (--dead-letter): a backend with topics or
                             streams reads `route` (the --dead-letter-route), the file sink
                             its "<file>.deadletter" */
};

/* One event read back. */
struct ab_read_event {
    const char *value;    /* the CloudEvent line, len bytes (not NUL-terminated) */
    size_t len;
    const char *id;       /* the event id when the backend has it apart from the value
                             (Redis field, Kafka ce_id header), else NULL */
    const char *position; /* printable, opaque: a reader opened with it continues after
                             this event (Kafka "p:offset,...", the next offset of every
                             partition; Redis the entry id; file "inode:offset"; spool
                             "segment:offset") */
    int64_t stored_ms;    /* when the backend stored it (Kafka timestamp, Redis id time;
                             a file: the time it was read when it came while following),
                             -1 when unknown */
};

enum ab_read_status { AB_READ_ERROR = -1, AB_READ_IDLE = 0, AB_READ_EVENT = 1 };

struct ab_sink_reader {
    const struct ab_sink_ops *ops; /* first member of every backend's reader struct */
};

static inline int ab_sink_readable(const struct ab_sink_ops *ops)
{
    return ops != NULL && ops->reader_open != NULL;
}
static inline int ab_reader_next(struct ab_sink_reader *r, struct ab_read_event *ev,
                                 int timeout_ms, char *errstr, size_t errlen)
{
    return r->ops->reader_next(r, ev, timeout_ms, errstr, errlen);
}
static inline void ab_reader_close(struct ab_sink_reader *r)
{
    if (r != NULL) {
        r->ops->reader_close(r);
    }
}

/* Dispatch helpers. */
static inline int ab_sink_submit(struct ab_sink *s, const struct ab_sink_msg *m,
                                 ab_sink_done_cb cb, void *opaque)
{
    return s->ops->submit(s, m, cb, opaque);
}
static inline int ab_sink_ready(struct ab_sink *s)
{
    return s->ops->ready(s);
}

#endif
