/* The registry of sink backends: the one place that lists them. The program (cmd/) looks
 * a backend up by name and hands every backend's option table to the configuration
 * loader; the core never includes this header. Adding a backend: docs/ARCHITECTURE.md. */
#ifndef AB_REGISTRY_H
#define AB_REGISTRY_H

#include <stddef.h>

#include "sink.h"

struct ab_config;

/* Every backend, in the order --help lists their options; NULL-terminated. */
extern const struct ab_sink_ops *const ab_sinks[];

/* The backend called name, or NULL. */
const struct ab_sink_ops *ab_sink_find(const char *name);

/* What a program hands to a backend's global_init() and open(): the backend's own options
 * and the core's settings, taken from a configuration loaded with ab_sinks. */
struct ab_sink_setup {
    struct ab_sink_conf conf;
};

/* Fill *s for backend ops from cfg (which must outlive it): ab_config_sink_conf. */
void ab_sink_setup_init(struct ab_sink_setup *s, const struct ab_config *cfg,
                        const struct ab_sink_ops *ops);

#endif
