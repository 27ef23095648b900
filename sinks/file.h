/* The file sink: one CloudEvent per line, appended to a file, acknowledged after fsync. */
#ifndef AB_FILE_SINK_H
#define AB_FILE_SINK_H

#include "sink.h"

/* The file sink's options (its option table fills this). */
struct ab_file_conf {
    char *path; /* --file */
    int fsync;  /* --file-fsync: 1 = fsync each batch (default) */
};

extern const struct ab_sink_ops ab_sink_file;

#endif
