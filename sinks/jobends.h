/* INTERIM, for `almabridge reconcile` until the sink read side (issue 18) is merged: which
 * job instances already have a JOB_END in the sink, read with the code that exists today
 * (the file sink's log read line by line; the Redis stream through ab_redis_scan). At the
 * merge, reconcile's job_ends() becomes one loop over the contract's reader (open from a
 * time, next event, close) with ab_event_from_line(), and this file goes. */
#ifndef AB_JOBENDS_H
#define AB_JOBENDS_H

#include <stddef.h>
#include <stdint.h>

#include "reconcile.h"
#include "sink.h"

/* Add to ids the job instance of every JOB_END that backend ops (file or redis, configured
 * by conf) holds at or after since_ms; stream is the Redis stream a JOB_END is routed to.
 * 0, or -1 with err (also for a backend without a reader yet). */
int ab_jobends_collect(const struct ab_sink_ops *ops, const struct ab_sink_conf *conf,
                       const char *stream, int64_t since_ms, struct ab_reconcile_ids *ids,
                       char *err, size_t errlen);

/* 1 when ab_jobends_collect can read backend ops (file, redis), else 0 with err. */
int ab_jobends_supported(const struct ab_sink_ops *ops, char *err, size_t errlen);

/* The pid of the process holding the file sink's log (its lock), 0 when none holds it, -1
 * when one does but its pid is unknown. */
long ab_jobends_file_holder(const struct ab_sink_conf *conf);

#endif
