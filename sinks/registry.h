/* The registry of sink backends: the one place that lists them. The program (cmd/) looks
 * a backend up by name and hands every backend's option table to the configuration
 * loader; the core never includes this header. Adding a backend: docs/ARCHITECTURE.md. */
#ifndef AB_REGISTRY_H
#define AB_REGISTRY_H

#include <stddef.h>

#include "sink.h"

/* Every backend, in the order --help lists their options; NULL-terminated. */
extern const struct ab_sink_ops *const ab_sinks[];

/* The backend called name, or NULL. */
const struct ab_sink_ops *ab_sink_find(const char *name);

#endif
