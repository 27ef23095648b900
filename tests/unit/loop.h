/* Event-loop helpers shared by the unit tests that drive a libevent base by hand. */
#ifndef AB_TEST_LOOP_H
#define AB_TEST_LOOP_H

#include <stdint.h>
#include <time.h>

#include <event2/event.h>

/* Milliseconds on the monotonic clock. */
static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run base for about ms milliseconds, in turns of at most 5 ms. */
static inline void run_for(struct event_base *base, int ms)
{
    int64_t end = now_ms() + ms;
    struct timeval tv = {0, 5000};
    while (now_ms() < end) {
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
}

#endif
