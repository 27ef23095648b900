/* The local deduplication store, --dedupe-store file:DIR: one replica's keys, in memory,
 * persisted in DIR so that a restart (a SIGKILL included) remembers every key answered 200.
 *
 * State: one hash table per process (every worker's instance shares it, under a mutex):
 * key -> in flight (expires after claim_ms) or stored (expires after the window). Marking a
 * key stored appends "<expiry, ms since the epoch> <key>\n" to the current file
 * DIR/ids-<start ms>.log before the callback runs, so the key is in the kernel before the
 * 200 leaves: a killed process does not forget it. The lines of the marks one instance
 * makes in a loop iteration go out in one write(), just before their callbacks run (acks
 * come in groups: the file sink's group commit, a broker's batch). The file is
 * fdatasync'd once a second by the store's own thread, never on a loop thread (a power cut
 * may forget the last second: docs/DEDUPLICATION.md).
 * At start every file is read back, keys already expired skipped.
 *
 * Bounded: a new file every window/4; a file whose every key has expired (its start + its
 * period + the window is past) is removed, and the table is swept of expired keys at each
 * switch. So DIR holds at most about 1.5 windows of keys and memory 1.25 windows' worth.
 *
 * Threads: global_init/global_free on the start-up thread; instances on their loop threads,
 * the table and the file under the shared mutex. Callbacks run from the instance's own
 * event, in call order. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "dedupe.h"
#include "dedupe_store.h"
#include "log.h"
#include "mem.h"

#define SYNC_MS 1000
#define MAX_KEY 512

struct fent {
    struct fent *next;
    int64_t expires_ms;
    int state; /* AB_DEDUPE_INFLIGHT or AB_DEDUPE_STORED */
    char key[];
};

struct fshared {
    pthread_mutex_t mu;
    struct fent **buckets;
    size_t nb;
    atomic_long n;
    char *dir;
    int fd;                /* the current file, -1 when it could not be opened */
    int64_t file_start_ms; /* when the current file was started */
    int64_t period_ms;     /* a new file every period */
    long window_ms, claim_ms;
    atomic_int dirty;      /* written since the last fdatasync */
    char error[160];       /* the last write error, "" = none */
    int retired_fd;        /* the previous file, for the syncer to sync and close */
    pthread_t syncer;      /* fdatasyncs once a second what was written */
    int has_syncer, stop;  /* stop: under mu, with wake */
    atomic_int stopped;    /* the syncer has finished */
    pthread_cond_t wake;
};

/* One deferred callback. */
struct fcall {
    struct fcall *next;
    ab_dedupe_cb cb;
    void *opaque;
    int state;
    int marked; /* a stored mark whose line is in the instance's buffer */
};

struct fstore {
    struct ab_dedupe base;
    struct fshared *sh;
    struct event *run_ev; /* runs the queued callbacks */
    struct fcall *head, **tail;
    char *lines;          /* the stored marks' lines not written yet (run_calls writes them) */
    size_t len, cap;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t hash(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++) {
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    }
    return h;
}

/* ---- the table (under mu) -------------------------------------------------------------- */

static struct fent **slot(struct fshared *sh, const char *key)
{
    struct fent **pp = &sh->buckets[hash(key) & (sh->nb - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0) {
        pp = &(*pp)->next;
    }
    return pp;
}

static void grow(struct fshared *sh)
{
    size_t nb = sh->nb * 2;
    struct fent **b = ab_calloc(nb, sizeof(*b));
    for (size_t i = 0; i < sh->nb; i++) {
        struct fent *e = sh->buckets[i];
        while (e) {
            struct fent *next = e->next;
            size_t j = hash(e->key) & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(sh->buckets);
    sh->buckets = b;
    sh->nb = nb;
}

/* Set key to state until expires (insert or update). */
static void put(struct fshared *sh, const char *key, int state, int64_t expires)
{
    struct fent **pp = slot(sh, key);
    if (*pp == NULL) {
        size_t n = strlen(key) + 1;
        *pp = ab_calloc(1, sizeof(**pp) + n);
        memcpy((*pp)->key, key, n);
        if ((size_t)atomic_fetch_add(&sh->n, 1) + 1 > sh->nb) {
            (*pp)->state = state;
            (*pp)->expires_ms = expires;
            grow(sh);
            return;
        }
    }
    (*pp)->state = state;
    (*pp)->expires_ms = expires;
}

static void del(struct fshared *sh, struct fent **pp)
{
    struct fent *e = *pp;
    *pp = e->next;
    free(e);
    atomic_fetch_sub(&sh->n, 1);
}

static void sweep(struct fshared *sh, int64_t now)
{
    for (size_t i = 0; i < sh->nb; i++) {
        struct fent **pp = &sh->buckets[i];
        while (*pp) {
            if ((*pp)->expires_ms <= now) {
                del(sh, pp);
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

/* ---- the files ------------------------------------------------------------------------ */

/* Start ms of "ids-<ms>.log", or -1 for another name. */
static int64_t file_start(const char *name)
{
    char *end = NULL;
    if (strncmp(name, "ids-", 4) != 0) {
        return -1;
    }
    long long v = strtoll(name + 4, &end, 10);
    return end != name + 4 && strcmp(end, ".log") == 0 && v >= 0 ? v : -1;
}

/* Read one file back into the table (keys not expired at now). */
static void load_file(struct fshared *sh, const char *path, int64_t now, long *loaded)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ab_warn("dedupe store: cannot read %s: %s", path, strerror(errno));
        return;
    }
    char line[MAX_KEY + 32];
    while (fgets(line, sizeof(line), f)) {
        char *sp = strchr(line, ' '), *nl = strchr(line, '\n');
        if (sp == NULL || nl == NULL || nl == sp + 1) {
            continue; /* a torn last line (the process died mid-write) */
        }
        *nl = '\0';
        int64_t exp = strtoll(line, NULL, 10);
        if (exp > now) {
            put(sh, sp + 1, AB_DEDUPE_STORED, exp);
            (*loaded)++;
        }
    }
    fclose(f);
}

/* Remove the files whose keys have all expired; load the others when load is set. */
static void scan_dir(struct fshared *sh, int load)
{
    DIR *d = opendir(sh->dir);
    if (d == NULL) {
        return;
    }
    int64_t now = wall_ms();
    long loaded = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t start = file_start(e->d_name);
        if (start < 0 || (sh->fd >= 0 && start == sh->file_start_ms)) {
            continue;
        }
        char *path = ab_asprintf("%s/%s", sh->dir, e->d_name);
        if (start + sh->period_ms + sh->window_ms < now) {
            unlink(path);
        } else if (load) {
            load_file(sh, path, now, &loaded);
        }
        free(path);
    }
    closedir(d);
    if (load) {
        ab_info("dedupe store: %ld key(s) remembered from %s", loaded, sh->dir);
    }
}

/* Start a new current file (under mu). */
static void new_file(struct fshared *sh)
{
    if (sh->fd >= 0 && sh->has_syncer && sh->retired_fd < 0) {
        sh->retired_fd = sh->fd; /* synced and closed by the syncer, off the loop threads */
        atomic_store(&sh->dirty, 1);
    } else if (sh->fd >= 0) {
        close(sh->fd);
    }
    sh->file_start_ms = wall_ms();
    char *path = ab_asprintf("%s/ids-%" PRId64 ".log", sh->dir, sh->file_start_ms);
    sh->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (sh->fd < 0) {
        snprintf(sh->error, sizeof(sh->error), "cannot open %s: %s", path, strerror(errno));
        ab_error("dedupe store: %s", sh->error);
    } else {
        sh->error[0] = '\0';
        int dfd = open(sh->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    free(path);
}

/* Append lines (stored keys, "<expiry> <key>\n" each) to the current file (under mu).
 * Returns 0 or -1. */
static int append(struct fshared *sh, const char *lines, size_t len)
{
    int64_t now = wall_ms();
    if (sh->fd < 0 || now - sh->file_start_ms >= sh->period_ms) {
        new_file(sh);
        scan_dir(sh, 0);
        sweep(sh, now);
    }
    if (sh->fd < 0) {
        return -1;
    }
    while (len > 0) {
        ssize_t n = write(sh->fd, lines, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            snprintf(sh->error, sizeof(sh->error), "write to %s failed: %s", sh->dir,
                     n < 0 ? strerror(errno) : "nothing written");
            return -1;
        }
        lines += n;
        len -= (size_t)n;
    }
    atomic_store(&sh->dirty, 1);
    return 0;
}

/* The syncer thread: once a second, fdatasync the current file if something was written
 * (on a duplicate of the descriptor, outside the lock: the loop threads go on). */
static void *syncer_main(void *arg)
{
    struct fshared *sh = arg;
    pthread_setname_np(pthread_self(), "ab-dedupe-sync");
    pthread_mutex_lock(&sh->mu);
    while (!sh->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += SYNC_MS / 1000;
        pthread_cond_timedwait(&sh->wake, &sh->mu, &until);
        if (!atomic_exchange(&sh->dirty, 0)) {
            continue;
        }
        int fd = sh->fd >= 0 ? dup(sh->fd) : -1, old = sh->retired_fd;
        sh->retired_fd = -1;
        pthread_mutex_unlock(&sh->mu);
        if (old >= 0) {
            fdatasync(old);
            close(old);
        }
        if (fd >= 0) {
            fdatasync(fd);
            close(fd);
        }
        pthread_mutex_lock(&sh->mu);
    }
    int fd = sh->fd >= 0 && atomic_load(&sh->dirty) ? dup(sh->fd) : -1;
    pthread_mutex_unlock(&sh->mu);
    if (fd >= 0) {
        fdatasync(fd); /* the last keys before the process leaves */
        close(fd);
    }
    atomic_store(&sh->stopped, 1);
    return NULL;
}

/* ---- the contract --------------------------------------------------------------------- */

static int fs_global_init(const struct ab_dedupe_conf *conf, void **shared, char *errstr,
                          size_t errlen)
{
    const char *dir = conf->url + strlen("file:");
    if (*dir == '\0') {
        snprintf(errstr, errlen, "--dedupe-store file:DIR: no directory given");
        return -1;
    }
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        snprintf(errstr, errlen, "--dedupe-store: cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(errstr, errlen, "--dedupe-store: %s is not a writable directory: %s", dir,
                 strerror(errno));
        return -1;
    }
    struct fshared *sh = ab_calloc(1, sizeof(*sh));
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->wake, NULL);
    sh->nb = 1 << 12;
    sh->buckets = ab_calloc(sh->nb, sizeof(*sh->buckets));
    sh->dir = ab_strdup(dir);
    sh->fd = -1;
    sh->retired_fd = -1;
    sh->window_ms = conf->window_ms;
    sh->claim_ms = conf->claim_ms;
    sh->period_ms = conf->window_ms / 4 > 1000 ? conf->window_ms / 4 : 1000;
    scan_dir(sh, 1);
    if (!conf->check_only) {
        new_file(sh);
        sh->has_syncer = pthread_create(&sh->syncer, NULL, syncer_main, sh) == 0;
    }
    *shared = sh;
    return 0;
}

static void fs_global_free(void *shared)
{
    struct fshared *sh = shared;
    if (sh == NULL) {
        return;
    }
    if (sh->has_syncer) {
        pthread_mutex_lock(&sh->mu);
        sh->stop = 1;
        pthread_cond_signal(&sh->wake);
        pthread_mutex_unlock(&sh->mu);
        /* A disk that does not return from fsync must not hold the exit: after a second
         * the syncer is left behind with the state it uses (the process is leaving). */
        for (int i = 0; i < 100 && !atomic_load(&sh->stopped); i++) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (!atomic_load(&sh->stopped)) {
            ab_warn("dedupe store: %s: fsync did not return within 1 s; not waiting", sh->dir);
            pthread_detach(sh->syncer);
            return;
        }
        pthread_join(sh->syncer, NULL);
    }
    if (sh->retired_fd >= 0) {
        close(sh->retired_fd);
    }
    if (sh->fd >= 0) {
        close(sh->fd);
    }
    for (size_t i = 0; i < sh->nb; i++) {
        while (sh->buckets[i]) {
            del(sh, &sh->buckets[i]);
        }
    }
    free(sh->buckets);
    free(sh->dir);
    pthread_cond_destroy(&sh->wake);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

static void run_calls(struct fstore *fs)
{
    int failed = 0;
    if (fs->len > 0) { /* the marks' lines reach the kernel before their callbacks run */
        pthread_mutex_lock(&fs->sh->mu);
        failed = append(fs->sh, fs->lines, fs->len) != 0;
        pthread_mutex_unlock(&fs->sh->mu);
        fs->len = 0;
    }
    while (fs->head) {
        struct fcall *c = fs->head;
        fs->head = c->next;
        if (fs->head == NULL) {
            fs->tail = &fs->head;
        }
        if (failed && c->marked) {
            c->state = AB_DEDUPE_ERROR;
        }
        if (c->cb) {
            c->cb(c->state, c->state == AB_DEDUPE_ERROR ? "local store write failed" : NULL,
                  c->opaque);
        }
        free(c);
    }
}

static void on_run(evutil_socket_t fd, short what, void *arg)
{
    run_calls(arg);
}

/* The state of key at now (under mu): in flight or stored while it has not expired, else
 * AB_DEDUPE_NEW. */
static int live_state(struct fshared *sh, const char *key, int64_t now)
{
    struct fent **pp = slot(sh, key);
    return *pp && (*pp)->expires_ms > now ? (*pp)->state : AB_DEDUPE_NEW;
}

static void queue_call(struct fstore *fs, ab_dedupe_cb cb, void *opaque, int state,
                       int marked)
{
    struct fcall *c = ab_calloc(1, sizeof(*c));
    *c = (struct fcall){.cb = cb, .opaque = opaque, .state = state, .marked = marked};
    int wake = fs->head == NULL;
    *fs->tail = c;
    fs->tail = &c->next;
    if (wake) {
        event_active(fs->run_ev, EV_READ, 0);
    }
}

static struct ab_dedupe *fs_open(const struct ab_dedupe_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct fstore *fs = ab_calloc(1, sizeof(*fs));
    fs->base.ops = &ab_dedupe_file;
    fs->sh = shared;
    fs->tail = &fs->head;
    fs->run_ev = event_new(base, -1, 0, on_run, fs);
    return &fs->base;
}

static int fs_claim(struct ab_dedupe *d, const char *key, ab_dedupe_cb cb, void *opaque)
{
    struct fstore *fs = (struct fstore *)d;
    struct fshared *sh = fs->sh;
    int64_t now = wall_ms();
    pthread_mutex_lock(&sh->mu);
    int state = live_state(sh, key, now);
    if (state == AB_DEDUPE_NEW) {
        put(sh, key, AB_DEDUPE_INFLIGHT, now + sh->claim_ms);
    }
    pthread_mutex_unlock(&sh->mu);
    queue_call(fs, cb, opaque, state, 0);
    return 0;
}

static int fs_mark(struct ab_dedupe *d, const char *key, int stored, ab_dedupe_cb cb,
                   void *opaque)
{
    struct fstore *fs = (struct fstore *)d;
    struct fshared *sh = fs->sh;
    int state = stored ? AB_DEDUPE_STORED : AB_DEDUPE_NEW;
    if (strlen(key) > MAX_KEY) {
        queue_call(fs, cb, opaque, AB_DEDUPE_ERROR, 0);
        return 0;
    }
    int64_t exp = stored ? wall_ms() + sh->window_ms : 0;
    pthread_mutex_lock(&sh->mu);
    struct fent **pp = slot(sh, key);
    if (stored) {
        put(sh, key, AB_DEDUPE_STORED, exp);
    } else if (*pp && (*pp)->state == AB_DEDUPE_INFLIGHT) {
        del(sh, pp);
    }
    pthread_mutex_unlock(&sh->mu);
    if (stored) {
        size_t need = fs->len + strlen(key) + 24;
        if (need > fs->cap) {
            fs->cap = need * 2;
            fs->lines = ab_realloc(fs->lines, fs->cap);
        }
        fs->len += (size_t)snprintf(fs->lines + fs->len, fs->cap - fs->len,
                                    "%" PRId64 " %s\n", exp, key);
    }
    queue_call(fs, cb, opaque, state, stored);
    return 0;
}

static int fs_peek(struct ab_dedupe *d, const char *const *keys, size_t n, int *states,
                   ab_dedupe_cb cb, void *opaque)
{
    struct fstore *fs = (struct fstore *)d;
    struct fshared *sh = fs->sh;
    int64_t now = wall_ms();
    pthread_mutex_lock(&sh->mu);
    for (size_t i = 0; i < n; i++) {
        states[i] = live_state(sh, keys[i], now);
    }
    pthread_mutex_unlock(&sh->mu);
    queue_call(fs, cb, opaque, AB_DEDUPE_NEW, 0);
    return 0;
}

static int fs_ready(struct ab_dedupe *d)
{
    struct fstore *fs = (struct fstore *)d;
    pthread_mutex_lock(&fs->sh->mu);
    int ok = fs->sh->fd >= 0 && fs->sh->error[0] == '\0';
    pthread_mutex_unlock(&fs->sh->mu);
    return ok;
}

static void fs_describe(struct ab_dedupe *d, char *buf, size_t len)
{
    struct fstore *fs = (struct fstore *)d;
    pthread_mutex_lock(&fs->sh->mu);
    snprintf(buf, len, "local store %s: %ld key(s)%s%s", fs->sh->dir, atomic_load(&fs->sh->n),
             fs->sh->error[0] ? ", " : "", fs->sh->error);
    pthread_mutex_unlock(&fs->sh->mu);
}

static long fs_held(void *shared)
{
    struct fshared *sh = shared;
    return atomic_load(&sh->n);
}

static void fs_close(struct ab_dedupe *d)
{
    struct fstore *fs = (struct fstore *)d;
    if (fs == NULL) {
        return;
    }
    run_calls(fs);
    event_free(fs->run_ev);
    free(fs->lines);
    free(fs);
}

const struct ab_dedupe_ops ab_dedupe_file = {
    .name = "file",
    .scheme = "file:",
    .global_init = fs_global_init,
    .global_free = fs_global_free,
    .open = fs_open,
    .claim = fs_claim,
    .mark = fs_mark,
    .peek = fs_peek,
    .ready = fs_ready,
    .describe = fs_describe,
    .held = fs_held,
    .close = fs_close,
};
