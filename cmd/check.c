/* --check-connect and the end of --help (check.h). */
#include "check.h"

#include "sink.h"

int ab_check_connect(const struct ab_sink_ops *ops, const struct ab_sink_conf *conf,
                     const char *sink)
{
    char msg[1024] = "";
    if (ops->probe == NULL) {
        printf("%s sink: nothing to connect to (its output was opened above)\n", sink);
        printf("everything reachable\n");
        return 0;
    }
    int rc = ops->probe(conf, AB_CHECK_CONNECT_MS, msg, sizeof(msg));
    printf("%s\n", msg);
    printf(rc == 0 ? "everything reachable\n" : "NOT everything reachable\n");
    return rc == 0 ? 0 : 1;
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
          "\nDurations: 500ms, 10s, 5m, 6h, 1d; a bare number keeps each option's unit.\n"
          "Exit codes: 0 ok, 1 unreachable (--check-connect, --probe), 2 configuration error.\n"
          "See man almabridge and docs/OPERATIONS.md.\n",
          out);
}
