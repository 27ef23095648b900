/* The example sink: the smallest complete backend, kept in the tree as the template for a
 * new one (docs/ARCHITECTURE.md, "How to add a sink") and exercised by
 * tests/unit/example_sink_test.c. It keeps the events in memory and acknowledges what came
 * every --example-delay milliseconds (a group commit). Not in the registry: the program does not offer it. */
#ifndef AB_EXAMPLE_SINK_H
#define AB_EXAMPLE_SINK_H

#include <stddef.h>

#include "sink.h"

/* 1. The backend's own configuration struct, filled from its option table. */
struct ab_example_conf {
    long delay_ms; /* --example-delay: the commit interval */
    long capacity; /* --example-capacity: events kept; a full store refuses (503) */
};

extern const struct ab_sink_ops ab_sink_example;

/* The events an instance holds, oldest first (for tests). */
size_t ab_example_count(const struct ab_sink *s);
const char *ab_example_event(const struct ab_sink *s, size_t i);

#endif
