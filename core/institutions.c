/* Consortium profiles: the parser, the set (a hash table by code), the binding check, the
 * publication of the current set and the per-institution counters. See institutions.h.
 *
 * Threads: loading runs on the start-up or reload thread; a set is immutable once loaded.
 * Workers read the published set through their own view (one atomic load per request).
 * The counters of an institution live in a registry that outlives the sets (a reload keeps
 * counting where the previous set left off); the registry grows on load only, under the
 * publication mutex, and is rendered under it. */
#include "institutions.h"

#include "acl.h"
#include "config.h"
#include "event.h"
#include "http1.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "route.h"
#include "signature.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* The statuses counted per institution; anything else is "other". */
static const int counted_status[] = {200, 401, 403, 413, 503};
#define N_STATUS (sizeof(counted_status) / sizeof(counted_status[0]) + 1)

static const char *const refusal_names[AB_INST_R_COUNT] = {"signature", "forgery", "url",
                                                           "allow"};

struct ab_inst_stats {
    struct ab_inst_stats *next;
    int active; /* in the published set (guarded by pub_mu) */
    atomic_ulong answers[N_STATUS];
    atomic_ulong refused[AB_INST_R_COUNT];
    char code[AB_INST_CODE_MAX + 1];
};

struct ab_institution {
    char *code;
    int line; /* of its section */
    struct ab_secrets *secrets;
    struct ab_route *route;
    struct ab_acl *allow;
    struct ab_inst_stats *stats;
};

struct ab_institutions {
    atomic_int refs;
    struct ab_institution *v;
    size_t n;
    size_t *slot; /* open addressing: index + 1 into v, 0 = empty */
    size_t mask;
    size_t secrets; /* over all profiles */
};

static pthread_mutex_t pub_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ab_institutions *published;     /* guarded by pub_mu */
static atomic_ulong pub_gen;                  /* bumped by each publish */
static atomic_int have_set;                   /* published != NULL */
static struct ab_inst_stats *registry;        /* guarded by pub_mu */
static atomic_ulong unknown_total, classify_skipped;

/* ---- codes and hashing ----------------------------------------------------------------- */

static int code_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.';
}

int ab_institutions_code_valid(const char *s)
{
    size_t n = 0;
    for (; s && s[n]; n++) {
        if (!code_char((unsigned char)s[n]) || n >= AB_INST_CODE_MAX) {
            return 0;
        }
    }
    return n > 0;
}

static size_t hash_code(const char *s)
{
    size_t h = 2166136261u;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

/* Build the hash table over set->v (codes are unique: the parser refused repeats). */
static void index_build(struct ab_institutions *set)
{
    size_t cap = 8;
    while (cap < set->n * 2) {
        cap *= 2;
    }
    set->slot = ab_calloc(cap, sizeof(*set->slot));
    set->mask = cap - 1;
    for (size_t i = 0; i < set->n; i++) {
        size_t h = hash_code(set->v[i].code) & set->mask;
        while (set->slot[h] != 0) {
            h = (h + 1) & set->mask;
        }
        set->slot[h] = i + 1;
    }
}

const struct ab_institution *ab_institutions_find(const struct ab_institutions *set,
                                                  const char *code)
{
    if (set == NULL || code == NULL || set->slot == NULL) {
        return NULL;
    }
    for (size_t h = hash_code(code) & set->mask; set->slot[h] != 0; h = (h + 1) & set->mask) {
        const struct ab_institution *inst = &set->v[set->slot[h] - 1];
        if (strcmp(inst->code, code) == 0) {
            return inst;
        }
    }
    return NULL;
}

/* ---- the registry of counters ---------------------------------------------------------- */

/* The counters of code, made on first use. Caller holds pub_mu. */
static struct ab_inst_stats *stats_of(const char *code)
{
    for (struct ab_inst_stats *s = registry; s; s = s->next) {
        if (strcmp(s->code, code) == 0) {
            return s;
        }
    }
    struct ab_inst_stats *s = ab_calloc(1, sizeof(*s));
    snprintf(s->code, sizeof(s->code), "%s", code);
    s->next = registry;
    registry = s;
    return s;
}

void ab_inst_stats_answer(struct ab_inst_stats *stats, int status)
{
    if (stats == NULL) {
        return;
    }
    size_t i = 0;
    while (i < N_STATUS - 1 && counted_status[i] != status) {
        i++;
    }
    atomic_fetch_add_explicit(&stats->answers[i], 1, memory_order_relaxed);
}

void ab_inst_stats_refused(struct ab_inst_stats *stats, enum ab_inst_refusal why)
{
    if (stats != NULL) {
        atomic_fetch_add_explicit(&stats->refused[why], 1, memory_order_relaxed);
    }
}

void ab_institutions_unknown(const char *code, const char *client, int refused)
{
    static struct ab_ratelimit rl;
    atomic_fetch_add(&unknown_total, 1);
    ab_log_limited(&rl, AB_LOG_WARN,
                   "webhook from %s for institution %s, which has no profile: answered %s "
                   "(add its profile to --institutions and reload with SIGHUP)",
                   client, ab_institutions_code_valid(code) ? code : "(not a valid code)",
                   refused ? "401 (--unknown-institution refuse)" : "503, Alma retries");
}

/* ---- the parser -------------------------------------------------------------------------- */

struct parser {
    const char *path;
    char *dir; /* of path, for relative secret files */
    int line;
    struct ab_institutions *set;
    struct ab_institution *cur; /* the section being read */
    struct ab_strlist allow; /* the current section's allow items, checked one by one */
    int inline_secrets;
    char *errstr;
    size_t errlen;
};

static void p_error(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void p_error(struct parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->errstr, p->errlen, "%s line %d: %s", p->path, p->line, msg);
}

/* 1 when s may be shown in an error: it looks like a key (a few lower-case letters, '-' or
 * '_'), not like a secret pasted on a line of its own. */
static int looks_like_key(const char *s)
{
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz-_");
    return n > 0 && n <= 24 && s[n] == '\0';
}

/* Cut a comment (a '#' at the start or after a blank, outside double quotes) and the
 * blanks around s, in place. */
static char *strip_comment(char *s)
{
    int quoted = 0;
    for (char *c = s; *c; c++) {
        if (*c == '"' && (c == s || c[-1] != '\\')) {
            quoted = !quoted;
        } else if (*c == '#' && !quoted && (c == s || c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    }
    s += strspn(s, " \t");
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\r\n", s[n - 1])) {
        s[--n] = '\0';
    }
    return s;
}

/* Remove surrounding double quotes (\" and \\ escapes inside) in place; -1 when the quote
 * is not closed at the end of the value. */
static int unquote(char *v)
{
    size_t n = strlen(v);
    if (v[0] != '"') {
        return 0;
    }
    if (n < 2 || v[n - 1] != '"' || v[n - 2] == '\\') {
        return -1;
    }
    char *w = v;
    for (const char *r = v + 1; r < v + n - 1; r++) {
        if (*r == '\\' && (r[1] == '"' || r[1] == '\\')) {
            r++;
        }
        *w++ = *r;
    }
    *w = '\0';
    return 0;
}

/* The end of a section: it must have a secret. */
static int section_end(struct parser *p)
{
    struct ab_institution *c = p->cur;
    char err[256];
    int rc = 0;
    if (c != NULL && ab_secrets_count(c->secrets) == 0) {
        snprintf(p->errstr, p->errlen,
                 "%s line %d: institution %s has no secret: give secret-file or secret",
                 p->path, c->line, c->code);
        rc = -1;
    } else if (c != NULL && p->allow.n > 0 &&
               !(c->allow = ab_acl_new((const char *const *)p->allow.v, p->allow.n, err,
                                       sizeof(err)))) {
        snprintf(p->errstr, p->errlen, "%s line %d: institution %s: allow: %s", p->path,
                 c->line, c->code, err);
        rc = -1;
    }
    for (size_t i = 0; i < p->allow.n; i++) {
        free(p->allow.v[i]);
    }
    free(p->allow.v);
    p->allow = (struct ab_strlist){NULL, 0};
    p->cur = NULL;
    return rc;
}

static int section_start(struct parser *p, char *s)
{
    size_t n = strlen(s);
    if (section_end(p) != 0) {
        return -1;
    }
    if (n < 2 || s[n - 1] != ']') {
        p_error(p, "malformed section header: write [INSTITUTION_CODE]");
        return -1;
    }
    s[n - 1] = '\0';
    s++;
    if (!ab_institutions_code_valid(s)) {
        p_error(p, "\"%s\" is not an institution code (letters, digits, '_', '-', '.'; "
                   "at most 64)", s);
        return -1;
    }
    for (size_t i = 0; i < p->set->n; i++) {
        if (strcmp(p->set->v[i].code, s) == 0) {
            p_error(p, "institution %s is already defined on line %d", s, p->set->v[i].line);
            return -1;
        }
    }
    struct ab_institutions *set = p->set;
    set->v = ab_realloc(set->v, (set->n + 1) * sizeof(*set->v));
    p->cur = &set->v[set->n++];
    *p->cur = (struct ab_institution){.code = ab_strdup(s), .line = p->line};
    p->cur->secrets = ab_secrets_load(NULL, NULL, NULL, 0);
    return 0;
}

static int add_secret_file(struct parser *p, const char *v)
{
    char err[512];
    char *file = v[0] == '/' || p->dir == NULL ? ab_strdup(v) : ab_asprintf("%s/%s", p->dir, v);
    int rc = ab_secrets_add_file(p->cur->secrets, file, err, sizeof(err));
    if (rc != 0) {
        p_error(p, "%s", err);
    }
    free(file);
    return rc;
}

/* "allow = A, B": each item checked now, so that an error names its line. */
static int add_allow(struct parser *p, char *v)
{
    char err[256];
    for (char *rest = v, *item; (item = strsep(&rest, ",")) != NULL;) {
        item = strip_comment(item);
        const char *one[1] = {item};
        struct ab_acl *acl = *item ? ab_acl_new(one, 1, err, sizeof(err)) : NULL;
        if (acl == NULL) {
            p_error(p, "allow: %s", *item ? err : "empty address");
            return -1;
        }
        ab_acl_free(acl);
        p->allow.v = ab_realloc(p->allow.v, (p->allow.n + 1) * sizeof(*p->allow.v));
        p->allow.v[p->allow.n++] = ab_strdup(item);
    }
    return 0;
}

/* One "key = value" line of the current section. */
static int key_value(struct parser *p, char *s)
{
    char *eq = strchr(s, '=');
    if (eq == NULL) {
        p_error(p, "expected \"key = value\" or [INSTITUTION_CODE] (the line is not shown: "
                   "it may hold a secret)");
        return -1;
    }
    *eq = '\0';
    char *key = strip_comment(s), *v = strip_comment(eq + 1);
    for (char *k = key; *k; k++) {
        *k = *k == '_' ? '-' : *k;
    }
    if (p->cur == NULL) {
        p_error(p, "\"%s\" outside a section: start one with [INSTITUTION_CODE]",
                looks_like_key(key) ? key : "a key");
        return -1;
    }
    if (unquote(v) != 0 || *v == '\0') {
        p_error(p, "%s needs a value%s", looks_like_key(key) ? key : "the key",
                *v ? " (unterminated quote)" : "");
        return -1;
    }
    struct ab_institution *c = p->cur;
    char err[256];
    if (strcmp(key, "secret-file") == 0) {
        return add_secret_file(p, v);
    } else if (strcmp(key, "secret") == 0) {
        ab_secrets_add(c->secrets, v, strlen(v));
        p->inline_secrets = 1;
    } else if (strcmp(key, "route") == 0) {
        if (c->route != NULL) {
            p_error(p, "route given twice for institution %s", c->code);
            return -1;
        }
        if ((c->route = ab_route_compile(v, err, sizeof(err))) == NULL) {
            p_error(p, "route: %s", err);
            return -1;
        }
    } else if (strcmp(key, "allow") == 0) {
        return add_allow(p, v);
    } else {
        p_error(p, "unknown key %s%s%s (known: secret-file, secret, route, allow)",
                looks_like_key(key) ? "\"" : "", looks_like_key(key) ? key : "(not shown)",
                looks_like_key(key) ? "\"" : "");
        return -1;
    }
    return 0;
}

static int parse_line(struct parser *p, char *line)
{
    char *s = strip_comment(line);
    if (*s == '\0') {
        return 0;
    }
    return *s == '[' ? section_start(p, s) : key_value(p, s);
}

/* Warn about what is legal but probably a mistake: secrets readable by others, and two
 * institutions sharing a secret (then either can sign for the other). */
static void warn_risks(const struct parser *p)
{
    struct stat st;
    if (p->inline_secrets && stat(p->path, &st) == 0 && (st.st_mode & 077)) {
        ab_warn("%s holds secrets and can be read by others than its owner (chmod 600)",
                p->path);
    }
    const struct ab_institutions *set = p->set;
    for (size_t i = 0; i < set->n; i++) {
        for (size_t j = i + 1; j < set->n; j++) {
            if (ab_secrets_overlap(set->v[i].secrets, set->v[j].secrets)) {
                ab_warn("%s: institutions %s and %s share a secret: either can sign webhooks "
                        "that name the other",
                        p->path, set->v[i].code, set->v[j].code);
            }
        }
    }
}

static int read_profiles(struct parser *p, FILE *fp, int first_line)
{
    char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    while (rc == 0 && getline(&buf, &cap, fp) >= 0) {
        p->line++;
        if (p->line < first_line) { /* the options of a --config file before its sections */
            continue;
        }
        rc = parse_line(p, buf);
    }
    if (buf != NULL) {
        memset(buf, 0, cap); /* it held secrets */
    }
    free(buf);
    if (rc == 0 && ferror(fp)) {
        snprintf(p->errstr, p->errlen, "cannot read %s: %s", p->path, strerror(errno));
        rc = -1;
    }
    return rc;
}

int ab_institutions_start(const char *path, int first_line, char *errstr, size_t errlen)
{
    struct ab_institutions *set = ab_institutions_load(path, first_line, errstr, errlen);
    if (set == NULL) {
        return -1;
    }
    ab_info("consortium mode: %zu institution profile(s) from %s", set->n, path);
    ab_institutions_publish(set);
    ab_metrics_add_source(ab_institutions_metrics);
    return 0;
}

struct ab_institutions *ab_institutions_load(const char *path, int first_line, char *errstr,
                                             size_t errlen)
{
    struct parser p = {.path = path, .errstr = errstr, .errlen = errlen};
    const char *slash = strrchr(path, '/');
    p.dir = slash ? ab_strndup(path, (size_t)(slash - path) + (slash == path)) : NULL;
    p.set = ab_calloc(1, sizeof(*p.set));
    atomic_init(&p.set->refs, 1);
    FILE *fp = fopen(path, "r");
    int rc = -1;
    if (fp == NULL) {
        snprintf(errstr, errlen, "cannot read institutions file %s: %s", path, strerror(errno));
        goto done;
    }
    if (read_profiles(&p, fp, first_line) != 0 || section_end(&p) != 0) {
        goto done;
    }
    if (p.set->n == 0) {
        snprintf(errstr, errlen, "%s: no institution profile ([INSTITUTION_CODE] sections)",
                 path);
        goto done;
    }
    for (size_t i = 0; i < p.set->n; i++) {
        p.set->secrets += ab_secrets_count(p.set->v[i].secrets);
    }
    index_build(p.set);
    pthread_mutex_lock(&pub_mu);
    for (size_t i = 0; i < p.set->n; i++) {
        p.set->v[i].stats = stats_of(p.set->v[i].code);
    }
    pthread_mutex_unlock(&pub_mu);
    warn_risks(&p);
    rc = 0;
done:
    p.cur = NULL;
    section_end(&p); /* frees the allow items of a section cut short by an error */
    free(p.dir);
    if (fp != NULL) {
        fclose(fp);
    }
    if (rc != 0) {
        ab_institutions_free(p.set);
        return NULL;
    }
    return p.set;
}

struct ab_institutions *ab_institutions_ref(struct ab_institutions *set)
{
    if (set != NULL) {
        atomic_fetch_add(&set->refs, 1);
    }
    return set;
}

void ab_institutions_free(struct ab_institutions *set)
{
    if (set == NULL || atomic_fetch_sub(&set->refs, 1) != 1) {
        return;
    }
    for (size_t i = 0; i < set->n; i++) {
        free(set->v[i].code);
        ab_secrets_free(set->v[i].secrets);
        ab_route_free(set->v[i].route);
        ab_acl_free(set->v[i].allow);
    }
    free(set->v);
    free(set->slot);
    free(set);
}

size_t ab_institutions_count(const struct ab_institutions *set)
{
    return set ? set->n : 0;
}

const char *ab_institution_code(const struct ab_institution *inst)
{
    return inst->code;
}

const struct ab_route *ab_institution_route(const struct ab_institution *inst)
{
    return inst->route;
}

char *ab_institution_route_expand(const struct ab_institution *inst,
                                  const struct ab_route *dflt, const struct ab_event *ev)
{
    const struct ab_route *rt = inst ? inst->route : NULL;
    return ab_route_expand(rt ? rt : dflt, ev);
}

const struct ab_acl *ab_institution_allow(const struct ab_institution *inst)
{
    return inst->allow;
}

struct ab_inst_stats *ab_institution_stats(const struct ab_institution *inst)
{
    return inst ? inst->stats : NULL;
}

/* ---- binding ------------------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Take cost bytes from the budget if it has them (refilled for the time since last). */
static int budget_take(struct ab_inst_budget *b, double cost)
{
    long long now = now_ms();
    if (b->last_ms == 0) {
        b->bytes = (double)AB_INST_CLASSIFY_BPS;
    } else {
        b->bytes += (double)(now - b->last_ms) * (double)AB_INST_CLASSIFY_BPS / 1000.0;
        if (b->bytes > (double)AB_INST_CLASSIFY_BPS) {
            b->bytes = (double)AB_INST_CLASSIFY_BPS;
        }
    }
    b->last_ms = now;
    if (cost > b->bytes) {
        return 0;
    }
    b->bytes -= cost;
    return 1;
}

enum ab_inst_verdict ab_institutions_verify(const struct ab_institutions *set,
                                            const struct ab_institution *inst,
                                            const char *header, const void *body, size_t len,
                                            struct ab_inst_budget *budget,
                                            const struct ab_institution **signer)
{
    *signer = NULL;
    if (ab_signature_verify(inst->secrets, header, body, len)) {
        return AB_INST_VALID;
    }
    if (header == NULL) {
        return AB_INST_BAD;
    }
    /* one HMAC per other secret: the body plus the two padded blocks */
    size_t others = set->secrets - ab_secrets_count(inst->secrets);
    if (!budget_take(budget, (double)others * ((double)len + 128.0))) {
        atomic_fetch_add(&classify_skipped, 1);
        return AB_INST_UNCLASSIFIED;
    }
    for (size_t i = 0; i < set->n; i++) {
        const struct ab_institution *o = &set->v[i];
        if (o != inst && ab_signature_verify(o->secrets, header, body, len)) {
            *signer = o;
            return AB_INST_FORGERY;
        }
    }
    return AB_INST_BAD;
}

/* ---- URLs --------------------------------------------------------------------------------- */

/* Length of base without a trailing '/'. */
static size_t base_len(const char *base)
{
    size_t n = strlen(base);
    return n > 0 && base[n - 1] == '/' ? n - 1 : n;
}

/* The code segment of path when it is {base}/{code}, else NULL. */
static const char *path_code(const char *base, const char *path)
{
    size_t bl = base_len(base);
    if (strncmp(path, base, bl) != 0 || path[bl] != '/') {
        return NULL;
    }
    const char *seg = path + bl + 1;
    return *seg != '\0' && strchr(seg, '/') == NULL ? seg : NULL;
}

int ab_institutions_path_match(const char *base, const char *path)
{
    return atomic_load_explicit(&have_set, memory_order_relaxed) && path_code(base, path);
}

/* Decode [s, s+n) into out as a code; 1, or -1 when it is no valid code. */
static int decode_code(const char *s, size_t n, int plus, char *out)
{
    char buf[3 * AB_INST_CODE_MAX + 1];
    if (n >= sizeof(buf) || ab_url_decode(s, n, buf, plus) < 0 ||
        !ab_institutions_code_valid(buf)) {
        return -1;
    }
    memcpy(out, buf, strlen(buf) + 1);
    return 1;
}

int ab_institutions_url_code(const char *base, const char *path, const char *query, char *out)
{
    int found = 0;
    const char *seg = path ? path_code(base, path) : NULL;
    if (seg != NULL && decode_code(seg, strlen(seg), 0, out) < 0) {
        return -1;
    }
    found = seg != NULL;
    for (const char *q = query; q && *q;) {
        size_t n = strcspn(q, "&;");
        if (n >= 12 && strncmp(q, "institution=", 12) == 0) {
            char code[AB_INST_CODE_MAX + 1];
            if (decode_code(q + 12, n - 12, 1, code) < 0 ||
                (found && strcmp(code, out) != 0)) {
                return -1;
            }
            memcpy(out, code, strlen(code) + 1);
            found = 1;
        }
        q += n + (q[n] != '\0');
    }
    return found;
}

/* ---- publication ---------------------------------------------------------------------------- */

void ab_institutions_publish(struct ab_institutions *set)
{
    pthread_mutex_lock(&pub_mu);
    struct ab_institutions *old = published;
    published = set;
    for (struct ab_inst_stats *s = registry; s; s = s->next) {
        s->active = 0;
    }
    for (size_t i = 0; set && i < set->n; i++) {
        set->v[i].stats->active = 1;
    }
    atomic_store(&have_set, set != NULL);
    atomic_fetch_add_explicit(&pub_gen, 1, memory_order_release);
    pthread_mutex_unlock(&pub_mu);
    ab_institutions_free(old); /* the views still on it hold their own references */
}

struct ab_institutions *ab_inst_view_get(struct ab_inst_view *v)
{
    unsigned long gen = atomic_load_explicit(&pub_gen, memory_order_acquire);
    if (gen == v->gen) {
        return v->set;
    }
    pthread_mutex_lock(&pub_mu);
    struct ab_institutions *old = v->set;
    v->set = ab_institutions_ref(published);
    v->gen = atomic_load_explicit(&pub_gen, memory_order_relaxed);
    pthread_mutex_unlock(&pub_mu);
    ab_institutions_free(old);
    return v->set;
}

void ab_inst_view_release(struct ab_inst_view *v)
{
    ab_institutions_free(v->set);
    v->set = NULL;
    v->gen = 0;
}

char *ab_institutions_route_for(const struct ab_event *ev)
{
    char *route = NULL;
    if (ev == NULL || ev->institution == NULL || !atomic_load(&have_set)) {
        return NULL;
    }
    pthread_mutex_lock(&pub_mu);
    const struct ab_institution *inst = ab_institutions_find(published, ev->institution);
    if (inst != NULL && inst->route != NULL) {
        route = ab_route_expand(inst->route, ev);
    }
    pthread_mutex_unlock(&pub_mu);
    return route;
}

/* ---- metrics ------------------------------------------------------------------------------ */

char *ab_institutions_metrics(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    pthread_mutex_lock(&pub_mu);
    fprintf(f, "# HELP almabridge_institutions Institution profiles loaded (--institutions).\n"
               "# TYPE almabridge_institutions gauge\nalmabridge_institutions %zu\n",
            ab_institutions_count(published));
    fprintf(f, "# HELP almabridge_institution_requests_total Webhooks answered once their "
               "institution was known, by institution and status.\n"
               "# TYPE almabridge_institution_requests_total counter\n");
    for (const struct ab_inst_stats *s = registry; s; s = s->next) {
        for (size_t i = 0; s->active && i < N_STATUS; i++) {
            unsigned long n = atomic_load(&s->answers[i]);
            if (n == 0) {
                continue;
            }
            char st[16] = "other";
            if (i < N_STATUS - 1) {
                snprintf(st, sizeof(st), "%d", counted_status[i]);
            }
            fprintf(f, "almabridge_institution_requests_total{institution=\"%s\",status=\"%s\"} "
                       "%lu\n", s->code, st, n);
        }
    }
    fprintf(f, "# HELP almabridge_institution_refused_total Webhooks refused for an "
               "institution: signature (not its secret), forgery (another institution's "
               "secret), url (the URL names another institution), allow (its allowlist).\n"
               "# TYPE almabridge_institution_refused_total counter\n");
    for (const struct ab_inst_stats *s = registry; s; s = s->next) {
        for (int r = 0; s->active && r < AB_INST_R_COUNT; r++) {
            fprintf(f, "almabridge_institution_refused_total{institution=\"%s\",reason=\"%s\"} "
                       "%lu\n", s->code, refusal_names[r], atomic_load(&s->refused[r]));
        }
    }
    pthread_mutex_unlock(&pub_mu);
    fprintf(f, "# HELP almabridge_unknown_institution_total Webhooks naming an institution "
               "without a profile (or none at all).\n"
               "# TYPE almabridge_unknown_institution_total counter\n"
               "almabridge_unknown_institution_total %lu\n", atomic_load(&unknown_total));
    fprintf(f, "# HELP almabridge_forgery_checks_skipped_total Failed signatures not checked "
               "against the other institutions' secrets (budget exhausted).\n"
               "# TYPE almabridge_forgery_checks_skipped_total counter\n"
               "almabridge_forgery_checks_skipped_total %lu\n", atomic_load(&classify_skipped));
    fclose(f);
    return text;
}
