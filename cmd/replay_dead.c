/* replay --dead-letters: the dead letter read back and processed again after a fix. Each
 * record's body is checked against its stored signature with the configured secrets and
 * normalised as the webhook path does (core/dlq.h); what now makes an event goes through
 * the replay's window (replay_window.c) like any replayed event: routed, deduplicated by
 * id against the target and --dedupe-store, written. What still fails stays where it is
 * (the dead letter is never modified) and is counted. With --institutions (the daemon's
 * profiles) each record is checked under the secrets of the institution it was bound to
 * (almainstitution) and its event routed as that institution's. See docs/INTEGRITY.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlq.h"
#include "event.h"
#include "institutions.h"
#include "redact.h"
#include "route.h"
#include "signature.h"
#include "sinks/registry.h"

#include "replay.h"

int ab_replay_dead_open(struct replay *rp, const char *from, char *err, size_t errlen)
{
    const struct ab_config *cfg = &rp->cfg;
    char rerr[256];
    if (cfg->insecure_skip_signature) {
        snprintf(err, errlen, "--dead-letters checks each stored signature with --secret-file, "
                              "ALMABRIDGE_SECRET or --institutions (not with "
                              "--insecure-skip-signature)");
        return -1;
    }
    if ((rp->secrets = ab_secrets_for_config(cfg, getenv("ALMABRIDGE_SECRET"), err, errlen)) ==
        NULL) {
        return -1;
    }
    if (cfg->institutions && (rp->insts = ab_institutions_load(
                                  cfg->institutions, cfg->institutions_line, err, errlen)) ==
                                 NULL) {
        return -1;
    }
    if (ab_redact_configured((const char *const *)cfg->redact.v, cfg->redact.n, &rp->redact,
                             rerr, sizeof(rerr)) != 0) {
        snprintf(err, errlen, "--redact: %s", rerr);
        return -1;
    }
    const struct ab_sink_ops *ops = rp->ops;
    const struct ab_sink_conf *conf = &rp->setup.conf;
    struct ab_sink_setup in_setup;
    int spool = 0;
    if (from != NULL) { /* a dead-letter file (the file sink's "<file>.deadletter") */
        if ((ops = ab_sink_log_reader(from, &spool, err, errlen)) == NULL) {
            return -1;
        }
        ab_sink_setup_init(&in_setup, cfg, ops);
        conf = &in_setup.conf;
    } else if (!ab_sink_readable(ops)) {
        snprintf(err, errlen, "--sink %s has no read side: give the dead letter with --from",
                 ops->name);
        return -1;
    }
    struct ab_read_from in = {.path = from, .dead_letter = 1,
                              .route = cfg->dead_letter_route ? cfg->dead_letter_route
                                                              : "alma.deadletter"};
    if ((rp->in = ops->reader_open(conf, &in, err, errlen)) == NULL) {
        return -1;
    }
    return 0;
}

int ab_replay_dead_fill(struct replay *rp, struct slot *s, const char *line, size_t len)
{
    char tp[56];
    const char *base = rp->cfg.dataschema_base;
    ab_event_trace(NULL, tp);
    struct ab_event_opts o = {.redact = rp->redact, .schema_base = base && *base ? base : NULL,
                              .traceparent = tp};
    struct ab_dlq_keys keys = {.secrets = rp->secrets, .insts = rp->insts};
    struct ab_dlq_out out;
    int rc = ab_dlq_process(line, len, &keys, &o, rp->content_type, &out);
    const char *nl = rp->tty ? "\n" : "", *id = out.id, *why = out.why;
    switch (rc) {
    case AB_DLQ_EVENT:
        rp->dl_read++;
        rp->dl_events++;
        s->ev = out.ev;
        s->route = ab_institution_route_expand(out.inst, rp->route, s->ev);
        return 0;
    case AB_DLQ_STILL_FAILING:
        rp->dl_read++;
        rp->dl_failing++;
        fprintf(stderr, "%sreplay: line %ld: dead letter %s still cannot become an event (%s): "
                        "kept\n", nl, s->line, id, why);
        return -1;
    case AB_DLQ_UNSIGNED:
        rp->dl_read++;
        rp->dl_unsigned++;
        fprintf(stderr, "%sreplay: line %ld: dead letter %s: %s: skipped, not written\n", nl,
                s->line, id, why);
        return -1;
    case AB_DLQ_UNBOUND:
        rp->dl_read++;
        rp->dl_unbound++;
        fprintf(stderr, "%sreplay: line %ld: dead letter %s: %s: skipped, not written\n", nl,
                s->line, id, why);
        return -1;
    default:
        rp->dl_other++;
        fprintf(stderr, "%sreplay: line %ld: %s: skipped\n", nl, s->line, why);
        return -1;
    }
}

int ab_replay_dead_summary(struct replay *rp)
{
    fprintf(stderr, "replay: %ld dead letter(s): %ld now make events (%ld delivered, %ld "
                    "already there), %ld still failing (kept), %ld whose signature does not "
                    "verify (skipped), %ld other record(s) skipped",
            rp->dl_read, rp->dl_events, rp->acked, rp->dupes, rp->dl_failing, rp->dl_unsigned,
            rp->dl_other);
    if (rp->insts) {
        fprintf(stderr, ", %ld not bound to their institution (skipped)", rp->dl_unbound);
    }
    fputc('\n', stderr);
    return rp->dl_failing + rp->dl_unsigned + rp->dl_other + rp->dl_unbound > 0;
}

void ab_replay_dead_free(struct replay *rp)
{
    ab_secrets_free(rp->secrets);
    ab_redact_free(rp->redact);
    ab_institutions_free(rp->insts);
    rp->insts = NULL;
    rp->secrets = NULL;
    rp->redact = NULL;
}
