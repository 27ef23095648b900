/* The sink contract's shared helpers. See sink.h. */
#include "sink.h"

const char *ab_sink_status_str(int status)
{
    switch (status) {
    case AB_SINK_OK:
        return "ok";
    case AB_SINK_ERROR:
        return "error";
    case AB_SINK_TIMEOUT:
        return "timeout";
    case AB_SINK_CLOSED:
        return "closed";
    case AB_SINK_TOO_BIG:
        return "too big";
    case AB_SINK_DUPLICATE:
        return "duplicate";
    default:
        return "unknown";
    }
}
