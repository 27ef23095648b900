/* The registry of sink backends: the one place that lists them. The program (cmd/) looks
 * a backend up by name and hands every backend's option table to the configuration
 * loader; the core never includes this header. Adding a backend: docs/ARCHITECTURE.md. */
#ifndef AB_REGISTRY_H
#define AB_REGISTRY_H

#include <stddef.h>

#include "sink.h"
#include "spool.h"

struct ab_config;

/* Every backend, in the order --help lists their options; NULL-terminated. */
extern const struct ab_sink_ops *const ab_sinks[];

/* The backend called name, or NULL. */
const struct ab_sink_ops *ab_sink_find(const char *name);

/* From any thread (the SIGHUP hook): every backend that writes a file reopens it before
 * its next write (log rotation). */
void ab_sink_reopen_files(void);

/* The backend called name when it has a read side (sink.h); else NULL with one line in
 * errstr saying that `command` cannot read it and naming the backends it can read. */
const struct ab_sink_ops *ab_sink_reader_find(const char *name, const char *command,
                                              char *errstr, size_t errlen);
/* ops when it has a read side, else NULL with that line (for any backend, registered or
 * not). */
const struct ab_sink_ops *ab_sink_reader_check(const struct ab_sink_ops *ops, const char *name,
                                               const char *command, char *errstr,
                                               size_t errlen);

/* The backend whose read side reads the event log at path (replay --from): a directory is
 * read as a spool (its segments; *spool = 1 when it holds a forwarder's progress, where
 * reading starts), a file as the file sink's log. NULL with errstr when path is neither. */
const struct ab_sink_ops *ab_sink_log_reader(const char *path, int *spool, char *errstr,
                                             size_t errlen);

/* What a program hands to global_init() and open(): the operations to open (the backend
 * --sink names, or a decorator such as the spool in front of it) and their configuration.
 * Points into the ab_config it was built from, which must outlive it. */
struct ab_sink_setup {
    const struct ab_sink_ops *ops;     /* what to open */
    const struct ab_sink_ops *backend; /* the backend --sink names (ops, or the one wrapped) */
    struct ab_sink_conf conf;          /* ops' configuration */
    struct ab_spool_conf spool;        /* the spool's, when it wraps the backend */
};

/* Build what the configuration asks for: the backend --sink names, with the spool in front
 * of it when --spool is given (each checks its own rules). Returns 0, or -1 with one line
 * in errstr. */
int ab_sink_setup_build(struct ab_sink_setup *s, const struct ab_config *cfg, char *errstr,
                        size_t errlen);

/* Fill *s for exactly the backend ops (no decorator) from cfg: ab_config_sink_conf. For the
 * read side, or a command that writes to a backend directly (replay). */
void ab_sink_setup_init(struct ab_sink_setup *s, const struct ab_config *cfg,
                        const struct ab_sink_ops *ops);

#endif
