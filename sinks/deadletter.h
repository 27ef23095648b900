/* A file-backed dead letter: records that must be kept but cannot go where events go (the
 * file sink's signed bodies that could not become events; a backend's messages that can
 * never be delivered), appended one JSON line each to "<file>.deadletter" beside a sink's
 * file. It is an event log (eventlog.h): fsync'd, group-committed, checksummed, locked.
 *
 * The log is process-wide (ab_deadletter_open at global_init); each loop thread gets a
 * client whose submits follow the sink contract: ab_deadletter_submit() either fails at
 * once or its callback runs exactly once, later, on the submitting thread (at the latest
 * at the deadline given to ab_deadletter_client_new). */
#ifndef AB_DEADLETTER_H
#define AB_DEADLETTER_H

#include <stddef.h>

#include "sink.h"

struct event_base;
struct ab_deadletter;
struct ab_deadletter_client;

/* The path of the dead letter beside file (a new string, caller frees). */
char *ab_deadletter_path(const char *file);

/* Open (creating) the dead letter beside file. sync: fdatasync before acknowledging;
 * check_only: create and close (--check-config). Returns NULL with one line in errstr.
 * Start-up thread. */
struct ab_deadletter *ab_deadletter_open(const char *file, int sync, int check_only,
                                         char *errstr, size_t errlen);
/* After every client is closed. NULL is a no-op. */
void ab_deadletter_free(struct ab_deadletter *dl);

struct ab_deadletter_client *ab_deadletter_client_new(struct ab_deadletter *dl,
                                                      struct event_base *base,
                                                      long timeout_ms);
/* Append msg->value as one line. Returns 0 and cb runs exactly once later on this loop
 * thread (AB_SINK_OK once synced), or -1 (cb never called). Loop thread. */
int ab_deadletter_submit(struct ab_deadletter_client *c, const struct ab_sink_msg *msg,
                         ab_sink_done_cb cb, void *opaque);
/* Loop thread, its loop stopped; every callback has run when this returns. NULL: no-op. */
void ab_deadletter_client_free(struct ab_deadletter_client *c, int timeout_ms);

#endif
