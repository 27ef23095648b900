/* Consortium mode (--institutions): one profile per Alma institution code, each with its
 * own secrets, optional route and optional allowlist, and the binding of a webhook to the
 * institution its body names (docs/CONSORTIUM.md).
 *
 * The profile file, or the sections at the end of a --config file:
 *
 *     [01UPENN_INST]
 *     secret-file = upenn.secrets      # repeatable; relative to this file's directory
 *     secret = ...                     # repeatable (rotation: any of them is valid)
 *     route = alma.upenn.{action}      # optional, else the global --route
 *     allow = 203.0.113.0/24           # optional, repeatable, comma-separated
 *
 * A '#' after a blank starts a comment (quote a value that holds one: "a #b"). Unknown
 * keys, malformed or repeated sections, a profile without any secret and an unreadable
 * secret file are errors naming the file and the line.
 *
 * A set is immutable and reference-counted. The program publishes one
 * (ab_institutions_publish) at start-up and on each reload; a worker thread reads it
 * through its own view (ab_inst_view_get): one atomic load per request, and the mutex
 * only on the first request after a reload, when the view trades its reference for one to
 * the new set (an RCU-like swap: the old set is freed when the last view has let go).
 * Without a published set (no --institutions) nothing here is used. */
#ifndef AB_INSTITUTIONS_H
#define AB_INSTITUTIONS_H

#include <stddef.h>

struct ab_acl;
struct ab_event;
struct ab_route;

#define AB_INST_CODE_MAX 64

struct ab_institutions;  /* a profile set: immutable once loaded, shareable */
struct ab_institution;   /* one profile, owned by its set */
struct ab_inst_stats;    /* one institution's counters; live as long as the process */

/* Load the profiles of path, from line first_line on (1 for a profile file; the line of
 * the first section for sections inside a config file). Returns a set (one reference), or
 * NULL with "PATH line N: ..." in errstr. Start-up or reload thread. */
struct ab_institutions *ab_institutions_load(const char *path, int first_line, char *errstr,
                                             size_t errlen);
/* Start-up: load path (first_line 0 or 1: the whole file), publish the set, log it and add
 * its metrics to /metrics. Returns 0, or -1 with the error in errstr. */
int ab_institutions_start(const char *path, int first_line, char *errstr, size_t errlen);
struct ab_institutions *ab_institutions_ref(struct ab_institutions *set);
void ab_institutions_free(struct ab_institutions *set); /* drops one reference; NULL ok */
size_t ab_institutions_count(const struct ab_institutions *set);

/* The profile of code (exact, case-sensitive), or NULL: one hash lookup. */
const struct ab_institution *ab_institutions_find(const struct ab_institutions *set,
                                                  const char *code);
const char *ab_institution_code(const struct ab_institution *inst);
const struct ab_route *ab_institution_route(const struct ab_institution *inst); /* or NULL */
/* The topic / stream of ev, an event bound to inst: the institution's route, else dflt (the
 * global --route; inst NULL outside consortium mode), expanded (a new string). */
char *ab_institution_route_expand(const struct ab_institution *inst,
                                  const struct ab_route *dflt, const struct ab_event *ev);
const struct ab_acl *ab_institution_allow(const struct ab_institution *inst);   /* or NULL */
struct ab_inst_stats *ab_institution_stats(const struct ab_institution *inst);

/* ---- binding ---- */

enum ab_inst_verdict {
    AB_INST_VALID,        /* signed with one of the institution's own secrets */
    AB_INST_BAD,          /* missing, or valid under no profile's secret */
    AB_INST_FORGERY,      /* valid only under another institution's secret: *signer */
    AB_INST_UNCLASSIFIED, /* not the institution's; the budget allowed no further check */
};

/* Per worker: how many bytes a failed verification may still hash to classify itself
 * (zero-initialise; refills at AB_INST_CLASSIFY_BPS, holds at most one second's worth). */
#define AB_INST_CLASSIFY_BPS (32L * 1024 * 1024)
struct ab_inst_budget {
    double bytes;
    long long last_ms;
};

/* Verify header over body against inst's secrets only: the cost is that of the
 * institution's own secrets, whatever the number of profiles. Only when that fails, and
 * the budget allows, the other profiles' secrets are tried to tell a forgery (*signer set)
 * from a plain bad signature. Loop thread of the budget's worker. */
enum ab_inst_verdict ab_institutions_verify(const struct ab_institutions *set,
                                            const struct ab_institution *inst,
                                            const char *header, const void *body, size_t len,
                                            struct ab_inst_budget *budget,
                                            const struct ab_institution **signer);

/* ---- URLs ---- */

/* 1 when a set is published and path is {base}/{code} (one more segment). Any thread. */
int ab_institutions_path_match(const char *base, const char *path);
/* The code a request's URL names: {base}/{code} or ?institution={code} (percent-decoded)
 * into out (AB_INST_CODE_MAX + 1 bytes). Returns 0 when it names none, 1 with out filled,
 * or -1 when what it names is no valid code, or the path and the query name two. */
int ab_institutions_url_code(const char *base, const char *path, const char *query, char *out);
/* 1 when s is a valid institution code ([A-Za-z0-9_.-], 1 to AB_INST_CODE_MAX bytes). */
int ab_institutions_code_valid(const char *s);

/* ---- publication (RCU-like) ---- */

/* Make set the current one (takes the caller's reference; NULL unpublishes). The set it
 * replaces is freed once every view has moved on. Any thread. */
void ab_institutions_publish(struct ab_institutions *set);

/* One reader's (one worker thread's) hold on the current set. Zero-initialise. */
struct ab_inst_view {
    struct ab_institutions *set;
    unsigned long gen;
};
/* The current set (NULL when none is published), as of this call; it stays valid until the
 * next call on the same view or ab_inst_view_release(). The owning thread only. */
struct ab_institutions *ab_inst_view_get(struct ab_inst_view *v);
void ab_inst_view_release(struct ab_inst_view *v);

/* The route of ev's institution in the current set, expanded for ev (a new string), or
 * NULL when it has none: for the spool's forwarder, which routes events after the fact. */
char *ab_institutions_route_for(const struct ab_event *ev);

/* ---- counters ---- */

enum ab_inst_refusal { AB_INST_R_SIGNATURE, AB_INST_R_FORGERY, AB_INST_R_URL, AB_INST_R_ALLOW,
                       AB_INST_R_COUNT };

/* Count one answer to a webhook of the institution (stats may be NULL: nothing). */
void ab_inst_stats_answer(struct ab_inst_stats *stats, int status);
void ab_inst_stats_refused(struct ab_inst_stats *stats, enum ab_inst_refusal why);
/* A webhook named an institution without a profile (code as the body gives it: logged
 * rate-limited, sanitised, and counted without a label). */
void ab_institutions_unknown(const char *code, const char *client, int refused);

/* The metrics (Prometheus text) of the current set, for ab_metrics_add_source(). */
char *ab_institutions_metrics(void);

#endif
