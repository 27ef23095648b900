/* For `almabridge reconcile`: which job instances already have a JOB_END in the sink, read
 * through the backend's read side (core/sink.h; file, Redis, Kafka, the spool's inner
 * backend), and whether a daemon holds the file sink's log. */
#ifndef AB_JOBENDS_H
#define AB_JOBENDS_H

#include <stddef.h>
#include <stdint.h>

#include "reconcile.h"
#include "sink.h"

/* Add to ids the job instance of every JOB_END that backend ops (configured by conf) holds
 * at or after since_ms; stream is the topic / stream a JOB_END is routed to ("" or NULL for
 * the file sink). 0, or -1 with err (also for a backend without a read side). */
int ab_jobends_collect(const struct ab_sink_ops *ops, const struct ab_sink_conf *conf,
                       const char *stream, int64_t since_ms, struct ab_reconcile_ids *ids,
                       char *err, size_t errlen);

/* 1 when backend ops has a read side, else 0 with err. */
int ab_jobends_supported(const struct ab_sink_ops *ops, char *err, size_t errlen);

/* The pid of the process holding the file sink's log (its lock), 0 when none holds it, -1
 * when one does but its pid is unknown. */
long ab_jobends_file_holder(const struct ab_sink_conf *conf);

#endif
