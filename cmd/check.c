/* --check-connect and the end of --help (check.h). */
#include "check.h"

#include "alma_api.h"
#include "config.h"
#include "sink.h"
#include "sinks/file.h"

/* The Alma API part of --check-connect: 0 reached, 1 not, 2 a configuration error. */
static int check_alma_api(const struct ab_config *cfg)
{
    char msg[1024] = "";
    const struct ab_file_conf *file = ab_config_sink_opts(cfg, &ab_sink_file);
    struct ab_alma_api *api = ab_alma_api_from_config(cfg, file ? file->path : NULL, msg,
                                                      sizeof(msg));
    if (api == NULL) {
        fprintf(stderr, "almabridge: %s\n", msg);
        return 2;
    }
    const char *job = cfg->reconcile_job.n ? cfg->reconcile_job.v[0] : NULL;
    int rc = ab_alma_api_probe(api, job, AB_CHECK_CONNECT_MS / 2, msg, sizeof(msg));
    printf("%s\n", msg);
    ab_alma_api_free(api);
    return rc == 0 ? 0 : 1;
}

int ab_check_connect(const struct ab_config *cfg, const struct ab_sink_ops *ops,
                     const struct ab_sink_conf *conf)
{
    char msg[1024] = "";
    int rc = 0;
    if (ops->probe == NULL) {
        printf("%s sink: nothing to connect to (its output was opened above)\n", cfg->sink);
    } else if (ops->probe(conf, AB_CHECK_CONNECT_MS, msg, sizeof(msg)) != 0) {
        printf("%s\n", msg);
        rc = 1;
    } else {
        printf("%s\n", msg);
    }
    int api = cfg->alma_api ? check_alma_api(cfg) : 0;
    if (api == 2) {
        return 2;
    }
    rc = rc || api;
    printf(rc == 0 ? "everything reachable\n" : "NOT everything reachable\n");
    return rc;
}

void ab_check_usage_tail(FILE *out)
{
    fputs("\nHealth check (a container's HEALTHCHECK; the image has no curl):\n"
          "  --probe [URL]                     GET /readyz of the running daemon (on "
          "--admin-listen when\n"
          "                                    set), or URL; exit 0 for a 2xx answer, 1 "
          "otherwise\n"
          "\nSubcommands (almabridge COMMAND --help for each):\n"
          "  wait                              block until an Alma job has ended (its JOB_END "
          "event)\n"
          "  send                              send a signed sample webhook to a deployment\n"
          "  challenge                         answer Alma's challenge against a deployment\n"
          "  replay                            a file-sink log (or a range of it) into a "
          "broker\n"
          "  spool                             inspect the --spool directory\n"
          "  verify                            check the event log's and spool's records\n"
          "  reconcile                         JOB_END events from Alma's Jobs API "
          "(docs/MISSED_EVENTS.md)\n"
          "\nDurations: 500ms, 10s, 5m, 6h, 1d; a bare number keeps each option's unit.\n"
          "Exit codes: 0 ok, 1 unreachable (--check-connect, --probe), 2 configuration error.\n"
          "See man almabridge and docs/OPERATIONS.md.\n",
          out);
}
