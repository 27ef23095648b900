/* almabridge wait: which JOB_END event is the awaited one (wait.h). Pure functions of the
 * event line and the waiter, but for the event printed on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "event.h"
#include "mem.h"
#include "reconcile.h"
#include "wait.h"

#define TEXT AB_EVENT_LINE_TEXT

/* The job (not instance) id: job_info.id, else the last part of job_info.link. */
static char *job_of(const char *line, size_t len)
{
    char *id = TEXT(line, len, "data", "job_instance", "job_info", "id");
    if (id == NULL) {
        char *link = TEXT(line, len, "data", "job_instance", "job_info", "link");
        const char *slash = link ? strrchr(link, '/') : NULL;
        id = slash && slash[1] ? ab_strdup(slash + 1) : NULL;
        free(link);
    }
    return id;
}

/* When the run ended, for --job-id alone: job_instance.end_time, the event's time, else
 * when the event arrived (-1: unknown, read before the waiter started following). */
static int64_t ended_ms(const char *line, size_t len, int64_t arrival_ms)
{
    char *t = TEXT(line, len, "data", "job_instance", "end_time");
    if (t == NULL) {
        t = TEXT(line, len, "time");
    }
    int64_t ms = ab_event_time_ms(t);
    free(t);
    return ms >= 0 ? ms : arrival_ms;
}

static int is_success(const struct ab_waiter *w, const char *status)
{
    size_t sl = strlen(status);
    for (const char *p = w->success; *p;) {
        size_t l = strcspn(p, ",");
        if (l == sl && strncasecmp(p, status, l) == 0) {
            return 1;
        }
        p += l + (p[l] == ',');
    }
    return 0;
}

int ab_wait_finish(const struct ab_waiter *w, const char *line, size_t len)
{
    char *status = TEXT(line, len, "data", "job_instance", "status");
    char *desc = TEXT(line, len, "data", "job_instance", "status", "desc");
    char *inst = TEXT(line, len, "data", "job_instance", "id");
    char *name = TEXT(line, len, "data", "job_instance", "name");
    if (w->poll && w->fallback_rc == NO_MATCH) {
        fprintf(stderr, "almabridge wait: answered by the JOB_END webhook's event in the sink\n");
    }
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    int rc = status && is_success(w, status) ? AB_EXIT_OK : AB_EXIT_FAILED;
    if (rc != AB_EXIT_OK) {
        fprintf(stderr, "almabridge wait: job instance %s (%s) ended with status %s%s%s%s\n",
                inst ? inst : "?", name ? name : "no name", status ? status : "(none)",
                desc ? " (" : "", desc ? desc : "", desc ? ")" : "");
    } else if (w->verbose) {
        fprintf(stderr, "almabridge wait: job instance %s ended with status %s\n", inst, status);
    }
    free(status);
    free(desc);
    free(inst);
    free(name);
    return rc;
}

int ab_wait_consider(const struct ab_waiter *w, const char *line, size_t len,
                     int64_t arrival_ms)
{
    int rc = NO_MATCH;
    char *inst = NULL, *job = NULL;
    if (len == 0 || !ab_reconcile_is_job_end(line, len)) {
        return NO_MATCH;
    }
    if (w->instance) {
        inst = TEXT(line, len, "data", "job_instance", "id");
        if (inst == NULL || strcmp(inst, w->instance) != 0) {
            goto done;
        }
    }
    if (w->job) {
        job = job_of(line, len);
        if (job == NULL || strcmp(job, w->job) != 0) {
            goto done;
        }
        if (w->instance == NULL && ended_ms(line, len, arrival_ms) < w->start_ms) {
            goto done; /* an earlier run: --job-id alone waits for the next one */
        }
    }
    rc = ab_wait_finish(w, line, len);
done:
    free(inst);
    free(job);
    return rc;
}
