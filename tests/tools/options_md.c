/* Prints the option reference from the same tables that drive the parser and --help:
 * without arguments as a Markdown table (`make docs` puts it into README.md between the
 * option markers); with `--man VERSION` as the man page almabridge(1) (`make man`). */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "sinks/registry.h"

static const char man_head[] =
    ".TH ALMABRIDGE 1 \"\" \"almabridge %s\" \"User Commands\"\n"
    ".SH NAME\n"
    "almabridge \\- receive Ex Libris Alma webhooks and write them durably to Kafka, Redis or "
    "a file\n"
    ".SH SYNOPSIS\n"
    ".B almabridge\n[\\fIoptions\\fR]\n.br\n"
    ".B almabridge \\-\\-check\\-config\n|\n.B \\-\\-check\\-connect\n[\\fIoptions\\fR]\n.br\n"
    ".B almabridge \\-\\-probe\n[\\fIURL\\fR]\n.br\n"
    ".B almabridge\n\\fBwait\\fR | \\fBsend\\fR | \\fBchallenge\\fR | \\fBreplay\\fR | "
    "\\fBspool\\fR ...\n"
    ".SH DESCRIPTION\n"
    "almabridge receives Alma webhooks on \\fB\\-\\-path\\fR, answers Alma's challenge, verifies "
    "X\\-Exl\\-Signature, normalises each event into a CloudEvent and writes it to the sink, "
    "answering 200 only after the sink acknowledged it.\n"
    ".PP\n"
    "Every option can also be set in the environment (ALMABRIDGE_\\fINAME\\fR) or in the "
    "config file (\\fIname\\fR = \\fIvalue\\fR); the command line overrides the environment, "
    "which overrides the file. Durations take a unit: 500ms, 10s, 5m, 6h, 1d; a bare number "
    "keeps each option's unit.\n";

static const char man_tail[] =
    ".SH HEALTH CHECK\n"
    ".TP\n.B \\-\\-probe \\fR[\\fIURL\\fR]\n"
    "GET /readyz of the running daemon (on \\fB\\-\\-admin\\-listen\\fR when set, else on "
    "\\fB\\-\\-listen\\fR), or \\fIURL\\fR; exit 0 for a 2xx answer, 1 otherwise. For a "
    "container's HEALTHCHECK.\n"
    ".SH SUBCOMMANDS\n"
    "Each takes \\fB\\-\\-help\\fR.\n"
    ".TP\n.B wait\nblock until an Alma job has ended (its JOB_END event)\n"
    ".TP\n.B send\nsend a signed sample webhook to a deployment\n"
    ".TP\n.B challenge\nanswer Alma's challenge against a deployment\n"
    ".TP\n.B replay\na file\\-sink log (or a range of it) into a broker\n"
    ".TP\n.B spool inspect \\fIDIR\\fR\ninspect the \\fB\\-\\-spool\\fR directory\n"
    ".TP\n.B verify\ncheck the event log's and the spool's records\n"
    ".TP\n.B reconcile\nJOB_END events from Alma's Jobs API (docs/MISSED_EVENTS.md)\n"
    ".SH SIGNALS\n"
    ".TP\n.B SIGTERM\\fR, \\fBSIGINT\n/readyz turns 503, serving continues for "
    "\\fB\\-\\-drain\\-grace\\fR, then events in flight are answered and the process exits\n"
    ".TP\n.B SIGHUP\nreopen the event files, reload the secret file and the TLS certificate\n"
    ".SH EXIT STATUS\n"
    "0 success; 1 something unreachable (\\fB\\-\\-check\\-connect\\fR, \\fB\\-\\-probe\\fR); "
    "2 usage or configuration error.\n"
    ".SH SEE ALSO\n"
    "README.md, docs/OPERATIONS.md, docs/ARCHITECTURE.md in the source tree.\n";

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--man") == 0) {
        printf(man_head, argv[2]);
        ab_config_man(ab_sinks, stdout);
        fputs(man_tail, stdout);
        return 0;
    }
    ab_config_markdown(ab_sinks, stdout);
    return 0;
}
