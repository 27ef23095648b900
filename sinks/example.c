/* The example sink. See example.h; every numbered step is one item of the checklist in
 * docs/ARCHITECTURE.md. */
#include "example.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "config.h"
#include "mem.h"
#include "pending.h"

/* 2. The option table: name, type, default, help, offset into the backend's own struct. The
 * environment name (ALMABRIDGE_EXAMPLE_DELAY), --help, --print-config and the README table
 * follow from it. */
#define OFF(field) offsetof(struct ab_example_conf, field)
/* clang-format off */
static const struct ab_option example_options[] = {
    {.name = "example-delay", .type = AB_OPT_LONG, .def = "10", .min = 1, .max = 600000,
     .off = OFF(delay_ms), .unit_ms = 1, .group = "Example", .metavar = "DURATION",
     .help = "example sink: acknowledge what came at this interval"},
    {.name = "example-capacity", .type = AB_OPT_LONG, .def = "1000", .min = 1, .max = 1000000,
     .off = OFF(capacity), .group = "Example", .metavar = "N",
     .help = "example sink: events kept in memory; more are refused"},
};
/* clang-format on */
static const struct ab_optset example_optset =
    AB_OPTSET(example_options, struct ab_example_conf);

/* 3. The instance: the contract's struct ab_sink first, then the pending list (it owns the
 * deadline and runs every callback), then the backend's own state. */
struct example_sink {
    struct ab_sink base;
    struct ab_pending *pending;
    struct ab_example_conf conf;
    struct event *commit_ev;       /* every --example-delay ms: acknowledge what came */
    struct ab_pending_req **unacked; /* entries waiting for the next commit */
    size_t n_unacked;
    char **events;
    size_t n;
};

/* 4. global_init: validate once, before any thread starts (also behind --check-config).
 * Nothing to share between the instances here. */
static int example_global_init(const struct ab_sink_conf *sc, void **shared, char *errstr,
                               size_t errlen)
{
    *shared = NULL;
    if (sc->opts == NULL) {
        snprintf(errstr, errlen, "example sink: no configuration");
        return -1;
    }
    return 0;
}

/* 5. The backend's answer, on the loop thread: complete each entry (ignored if its deadline
 * passed meanwhile) and let go of it. */
static void on_commit(evutil_socket_t fd, short what, void *arg)
{
    struct example_sink *es = arg;
    for (size_t i = 0; i < es->n_unacked; i++) {
        ab_pending_done(es->unacked[i], AB_SINK_OK, NULL);
    }
    es->n_unacked = 0;
}

static struct ab_sink *example_open(const struct ab_sink_conf *sc, void *shared,
                                    struct event_base *base, char *errstr, size_t errlen)
{
    struct example_sink *es = ab_calloc(1, sizeof(*es));
    es->base.ops = &ab_sink_example;
    es->pending = ab_pending_new(base, sc->ack_timeout_ms);
    es->conf = *(const struct ab_example_conf *)sc->opts;
    es->commit_ev = event_new(base, -1, EV_PERSIST, on_commit, es);
    struct timeval tv = {es->conf.delay_ms / 1000, (es->conf.delay_ms % 1000) * 1000};
    event_add(es->commit_ev, &tv);
    return &es->base;
}

/* 6. submit: refuse at once (non-zero, no callback) or add an entry and return 0; the
 * callback then comes from the pending list, later, exactly once. */
static int example_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                          void *opaque)
{
    struct example_sink *es = (struct example_sink *)s;
    if ((long)es->n >= es->conf.capacity) {
        return -1;
    }
    es->events = ab_realloc(es->events, (es->n + 1) * sizeof(*es->events));
    es->events[es->n++] = ab_strndup(msg->value, msg->value_len);
    es->unacked = ab_realloc(es->unacked, (es->n_unacked + 1) * sizeof(*es->unacked));
    es->unacked[es->n_unacked++] = ab_pending_add(es->pending, cb, opaque, 0);
    return 0;
}

static int example_ready(struct ab_sink *s)
{
    struct example_sink *es = (struct example_sink *)s;
    return (long)es->n < es->conf.capacity;
}

static void example_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct example_sink *es = (struct example_sink *)s;
    snprintf(buf, len, "in memory: %zu of %ld events", es->n, es->conf.capacity);
}

/* 7. close: answer what is left with AB_SINK_CLOSED (the pending list runs the callbacks
 * before it returns), stop whatever could still answer, then free (the list frees the
 * entries the backend still held). */
static void example_close(struct ab_sink *s, int timeout_ms)
{
    struct example_sink *es = (struct example_sink *)s;
    if (es == NULL) {
        return;
    }
    ab_pending_close(es->pending, AB_SINK_CLOSED, "example sink closed before the commit");
    event_free(es->commit_ev);
    ab_pending_free(es->pending);
    free(es->unacked);
    for (size_t i = 0; i < es->n; i++) {
        free(es->events[i]);
    }
    free(es->events);
    free(es);
}

size_t ab_example_count(const struct ab_sink *s)
{
    return ((const struct example_sink *)s)->n;
}

const char *ab_example_event(const struct ab_sink *s, size_t i)
{
    const struct example_sink *es = (const struct example_sink *)s;
    return i < es->n ? es->events[i] : NULL;
}

/* 9. The read side: this backend keeps its events in one process's memory, so nothing
 * outside it can read them back: reader_open, reader_next and reader_close stay NULL, and
 * `wait`, `replay` and `spool inspect` refuse it (exit 2) instead of misreading it. A
 * backend with a store of its own implements the three here (see sinks/redis.c). */

/* 8. The operations table; then one line in registry.c makes the program offer it. */
const struct ab_sink_ops ab_sink_example = {
    .name = "example",
    .default_route = "",
    .options = &example_optset,
    .global_init = example_global_init,
    .open = example_open,
    .submit = example_submit,
    .ready = example_ready,
    .describe = example_describe,
    .close = example_close,
    .reader_open = NULL, /* no read side (step 9) */
};
