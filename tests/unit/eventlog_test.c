/* The event log (sinks/eventlog.c): torn tails, rotation, the lock, segments, and closing
 * clients while their records are in flight (run under `make SANITIZER=thread` and
 * `SANITIZER=address` too). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "eventlog.h"
#include "log.h"
#include "fixtures.h"
#include "test.h"

struct probe {
    int calls;
    int status;
};

static void on_done(int status, void *opaque)
{
    struct probe *p = opaque;
    p->calls++;
    p->status = status;
}

static void spew(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

/* Run base until every probe has been called (or about 5 s). */
static void wait_calls(struct event_base *base, struct probe *p, int n)
{
    for (int round = 0; round < 1000; round++) {
        int done = 0;
        for (int i = 0; i < n; i++) {
            done += p[i].calls > 0;
        }
        if (done == n) {
            return;
        }
        struct timeval tv = {0, 5000};
        event_base_once(base, -1, EV_TIMEOUT, on_tick, base, &tv);
        event_base_dispatch(base);
    }
}

struct fixture {
    char dir[64];
    char path[96];
    struct ab_eventlog *log;
    struct event_base *base;
    struct ab_eventlog_client *c;
};

static void fixture_init(struct fixture *f)
{
    snprintf(f->dir, sizeof(f->dir), "/tmp/ab_eventlog_XXXXXX");
    CHECK(mkdtemp(f->dir) != NULL);
    snprintf(f->path, sizeof(f->path), "%s/events.jsonl", f->dir);
    f->log = NULL;
    f->base = event_base_new();
    f->c = NULL;
}

static int fixture_open(struct fixture *f, long segment_bytes)
{
    char err[512] = "";
    struct ab_eventlog_opts o = {
        .path = segment_bytes ? f->dir : f->path, .what = "test", .sync = 1,
        .segment_bytes = segment_bytes};
    f->log = ab_eventlog_open(&o, NULL, err, sizeof(err));
    if (f->log == NULL) {
        fprintf(stderr, "  open: %s\n", err);
        return -1;
    }
    f->c = ab_eventlog_client_new(f->log, f->base);
    return 0;
}

static int append_wait(struct fixture *f, const char *line)
{
    struct probe p = {0};
    struct iovec part = {(void *)line, strlen(line)};
    CHECK(ab_eventlog_append(f->c, &part, 1, on_done, &p) == 0);
    wait_calls(f->base, &p, 1);
    CHECK(p.calls == 1);
    return p.status;
}

static void fixture_done(struct fixture *f)
{
    ab_eventlog_client_free(f->c, 2000);
    CHECK(ab_eventlog_free(f->log, 2000) == 0);
    event_base_free(f->base);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    CHECK(system(cmd) == 0);
}

/* A file ending in a fragment (a crash mid-write): the fragment goes to .torn, the next
 * record starts on its own line. */
static void test_torn_tail_cut_and_moved_aside(void)
{
    struct fixture f;
    fixture_init(&f);
    spew(f.path, "{\"id\":\"a\"}\n{\"id\":\"torn");
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "{\"id\":\"b\"}") == AB_EVENTLOG_OK);
    size_t len;
    char *text = read_file(f.path, &len);
    CHECK_STR(text, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
    free(text);
    char torn[128];
    snprintf(torn, sizeof(torn), "%s.torn", f.path);
    text = read_file(torn, &len);
    CHECK_STR(text, "{\"id\":\"torn\n");
    free(text);
    fixture_done(&f);
}

/* A torn tail larger than the scan buffer, with no newline at all. */
static void test_torn_tail_without_any_newline(void)
{
    struct fixture f;
    fixture_init(&f);
    size_t n = 200000;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    spew(f.path, big);
    free(big);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "{}") == AB_EVENTLOG_OK);
    size_t len;
    char *text = read_file(f.path, &len);
    CHECK_STR(text, "{}\n");
    free(text);
    fixture_done(&f);
}

/* mv or rm of the file: the next batch goes into a new file at the path. */
static void test_renamed_and_removed_file_reopened(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "1") == AB_EVENTLOG_OK);
    char moved[128];
    snprintf(moved, sizeof(moved), "%s.1", f.path);
    CHECK(rename(f.path, moved) == 0);
    CHECK(append_wait(&f, "2") == AB_EVENTLOG_OK);
    size_t len;
    char *text = read_file(f.path, &len);
    CHECK_STR(text, "2\n");
    free(text);
    text = read_file(moved, &len);
    CHECK_STR(text, "1\n");
    free(text);
    CHECK(unlink(f.path) == 0);
    CHECK(append_wait(&f, "3") == AB_EVENTLOG_OK);
    text = read_file(f.path, &len);
    CHECK_STR(text, "3\n");
    free(text);
    fixture_done(&f);
}

/* A path that cannot be reopened fails writes and readiness until it can. */
static void test_unreopenable_path_fails_until_fixed(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "1") == AB_EVENTLOG_OK);
    CHECK(ab_eventlog_ready(f.log));
    CHECK(unlink(f.path) == 0);
    CHECK(mkdir(f.path, 0700) == 0); /* open(O_WRONLY) of a directory fails */
    CHECK(append_wait(&f, "2") == AB_EVENTLOG_ERROR);
    CHECK(!ab_eventlog_ready(f.log));
    char d[256];
    ab_eventlog_describe(f.log, d, sizeof(d));
    CHECK(strstr(d, "cannot open") != NULL);
    CHECK(rmdir(f.path) == 0);
    CHECK(append_wait(&f, "3") == AB_EVENTLOG_OK);
    CHECK(ab_eventlog_ready(f.log));
    size_t len;
    char *text = read_file(f.path, &len);
    CHECK_STR(text, "3\n");
    free(text);
    fixture_done(&f);
}

/* A reopen request (SIGHUP) reopens the file even when the path still names it. */
static void test_reopen_request(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "1") == AB_EVENTLOG_OK);
    ab_eventlog_reopen_all();
    CHECK(append_wait(&f, "2") == AB_EVENTLOG_OK);
    size_t len;
    char *text = read_file(f.path, &len);
    CHECK_STR(text, "1\n2\n");
    free(text);
    fixture_done(&f);
}

/* A second open of the same log fails, naming the file and the holder's pid. */
static void test_second_writer_refused(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    char err[512] = "", pid[32];
    int code = 0;
    struct ab_eventlog_opts o = {.path = f.path, .what = "test", .sync = 1};
    CHECK(ab_eventlog_open(&o, &code, err, sizeof(err)) == NULL);
    CHECK(code == AB_EVENTLOG_ELOCKED);
    CHECK(strstr(err, f.path) != NULL);
    snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
    CHECK(strstr(err, pid) != NULL);
    fixture_done(&f);
}

/* Segments: a full segment is followed by the next; position names the one written. */
static void test_segments_roll(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 10) == 0);
    uint64_t seq;
    int64_t synced;
    ab_eventlog_position(f.log, &seq, &synced);
    CHECK(seq == 1 && synced == 0);
    CHECK(append_wait(&f, "0123456789") == AB_EVENTLOG_OK);
    ab_eventlog_position(f.log, &seq, &synced);
    CHECK(seq == 2 && synced == 0);
    CHECK(append_wait(&f, "ab") == AB_EVENTLOG_OK);
    ab_eventlog_position(f.log, &seq, &synced);
    CHECK(seq == 2 && synced == 3);
    char name[64], path[160];
    ab_eventlog_segment_name(1, name, sizeof(name));
    snprintf(path, sizeof(path), "%s/%s", f.dir, name);
    size_t len;
    char *text = read_file(path, &len);
    CHECK_STR(text, "0123456789\n");
    free(text);
    fixture_done(&f);
}

/* ---- close while records are in flight ----------------------------------------------- */

struct stress {
    struct ab_eventlog *log;
    int rounds;
    int bad;
};

/* One loop thread: open a client, append, close at once (timeout 0) while the writer still
 * holds records, many times. Every callback must run exactly once. */
static void *stress_thread(void *arg)
{
    struct stress *s = arg;
    enum { N = 40 };
    for (int r = 0; r < s->rounds; r++) {
        struct event_base *base = event_base_new();
        struct ab_eventlog_client *c = ab_eventlog_client_new(s->log, base);
        struct probe p[N];
        memset(p, 0, sizeof(p));
        char line[64];
        for (int i = 0; i < N; i++) {
            int len = snprintf(line, sizeof(line), "{\"round\":%d,\"i\":%d}", r, i);
            struct iovec part = {line, (size_t)len};
            if (ab_eventlog_append(c, &part, 1, on_done, &p[i]) != 0) {
                s->bad++;
            }
            if (i == N / 2) {
                event_base_loop(base, EVLOOP_NONBLOCK);
            }
        }
        ab_eventlog_client_free(c, r % 3 == 0 ? 1 : 0);
        for (int i = 0; i < N; i++) {
            s->bad += p[i].calls != 1;
        }
        event_base_free(base);
    }
    return NULL;
}

static void test_close_while_in_flight_stress(void)
{
    struct fixture f;
    int level = ab_log_level_min;
    ab_log_level_min = AB_LOG_ERROR; /* no "closed with N writes waiting" lines */
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    struct stress s[3] = {{f.log, 60, 0}, {f.log, 60, 0}, {f.log, 60, 0}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        pthread_create(&t[i], NULL, stress_thread, &s[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        CHECK(s[i].bad == 0);
    }
    fixture_done(&f); /* frees the log while records of closed clients may remain queued */
    ab_log_level_min = level;
}


struct order {
    int *seen;
    int n;
    int bad;
};

struct order_rec {
    struct order *o;
    int index;
};

static void on_ordered(int status, void *opaque)
{
    struct order_rec *r = opaque;
    struct order *o = r->o;
    if (status != AB_EVENTLOG_OK || r->index != o->n) {
        o->bad++;
    }
    o->seen[o->n++] = r->index;
}

/* Two clients whose records share batches (interleaved appends): the writer hands each
 * client its own records, every one exactly once and in the order they were appended. */
static void test_interleaved_clients_keep_order(void)
{
    enum { N = 400 };
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    struct ab_eventlog_client *c2 = ab_eventlog_client_new(f.log, f.base);
    static int seen[2][N];
    static struct order_rec recs[2][N];
    struct order o[2] = {{seen[0], 0, 0}, {seen[1], 0, 0}};
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 2; k++) {
            char line[32];
            snprintf(line, sizeof(line), "{\"c\":%d,\"i\":%d}", k, i);
            struct iovec part = {line, strlen(line)};
            recs[k][i] = (struct order_rec){&o[k], i};
            CHECK(ab_eventlog_append(k ? c2 : f.c, &part, 1, on_ordered, &recs[k][i]) == 0);
        }
    }
    for (int round = 0; round < 1000 && (o[0].n < N || o[1].n < N); round++) {
        struct timeval tv = {0, 5000};
        event_base_once(f.base, -1, EV_TIMEOUT, on_tick, f.base, &tv);
        event_base_dispatch(f.base);
    }
    CHECK(o[0].n == N && o[1].n == N);
    CHECK(o[0].bad == 0 && o[1].bad == 0);
    size_t len = 0;
    char *text = read_file(f.path, &len);
    int lines = 0;
    for (size_t i = 0; text && i < len; i++) {
        lines += text[i] == '\n';
    }
    CHECK(lines == 2 * N);
    free(text);
    ab_eventlog_client_free(c2, 2000);
    fixture_done(&f);
}


/* Close the log (keeping its files) so that it can be read or opened again. */
static void fixture_close(struct fixture *f)
{
    ab_eventlog_client_free(f->c, 2000);
    CHECK(ab_eventlog_free(f->log, 2000) == 0);
    f->c = NULL;
    f->log = NULL;
}

/* Read every record of path; returns "O" per intact record, "D<count>" per damage. */
static void read_all(const char *path, int complete, char *out, size_t len)
{
    char err[256];
    struct ab_eventlog_reader *r = ab_eventlog_reader_open(path, err, sizeof(err));
    CHECK(r != NULL);
    struct ab_eventlog_rec rec;
    int rc;
    size_t o = 0;
    out[0] = '\0';
    while (r && (rc = ab_eventlog_reader_next(r, -1, complete, &rec)) != AB_EVENTLOG_END) {
        if (rc == AB_EVENTLOG_DAMAGED) {
            o += (size_t)snprintf(out + o, len - o, "D%ld", rec.count);
        } else {
            o += (size_t)snprintf(out + o, len - o, "%s", rc == AB_EVENTLOG_RECORD ? "O" : "U");
        }
    }
    ab_eventlog_reader_free(r);
}

static void patch(const char *path, long off, const char *bytes, size_t n)
{
    FILE *fp = fopen(path, "r+b");
    CHECK(fp != NULL);
    fseek(fp, off, SEEK_SET);
    fwrite(bytes, 1, n, fp);
    fclose(fp);
}

static void test_checksums_detect_and_isolate_damage(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    for (int i = 0; i < 5; i++) {
        CHECK(append_wait(&f, "{\"id\":\"abcdefgh\"}") == AB_EVENTLOG_OK); /* 19 bytes */
    }
    fixture_close(&f);
    char got[128];
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "OOOOO");
    char err[256];
    long recs = 0, unv = 0;
    FILE *devnull = fopen("/dev/null", "w");
    CHECK(ab_eventlog_verify(f.path, &recs, &unv, devnull, err, sizeof(err)) == 0 && recs == 5);
    patch(f.path, 20 + 8, "X", 1); /* a flipped byte in the second record */
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "OD1OOO");
    patch(f.path, 60, "\n\n\n", 3); /* newlines inside the fourth: still one record lost */
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "OD1OD1O");
    CHECK(truncate(f.path, 85) == 0); /* cut inside the last record */
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "OD1OD1D1");
    recs = 0;
    CHECK(ab_eventlog_verify(f.path, &recs, &unv, devnull, err, sizeof(err)) == 3 && recs == 2);
    fclose(devnull);
    /* a damaged index entry costs its own record only */
    char ip[128];
    snprintf(ip, sizeof(ip), "%s.crc", f.path);
    patch(ip, AB_EVENTLOG_CRC_ENTRY * 1 + 3, "zz", 2);
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "D1D1OD1D1");
    fixture_done(&f);
}

static void test_index_reconciled_at_open(void)
{
    struct fixture f;
    fixture_init(&f);
    /* a file from before checksums: read unverified, checksums start after it */
    FILE *fp = fopen(f.path, "w");
    fputs("{\"id\":\"old\"}\n", fp);
    fclose(fp);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "{\"id\":\"new\"}") == AB_EVENTLOG_OK);
    fixture_close(&f);
    char got[64];
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "UO");
    /* a whole line written without its index entry (a crash between the two writes): never
     * acknowledged, so moved to .torn at the next open */
    fp = fopen(f.path, "a");
    fputs("{\"id\":\"unacked\"}\n", fp);
    fclose(fp);
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "UOD1");
    CHECK(fixture_open(&f, 0) == 0);
    fixture_close(&f);
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "UO");
    char tp[128];
    snprintf(tp, sizeof(tp), "%s.torn", f.path);
    CHECK(access(tp, F_OK) == 0);
    /* rotated without its index: the old index is set aside, a new one starts */
    char moved[128];
    snprintf(moved, sizeof(moved), "%s.1", f.path);
    CHECK(rename(f.path, moved) == 0);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "{\"id\":\"rotated\"}") == AB_EVENTLOG_OK);
    fixture_close(&f);
    read_all(f.path, 1, got, sizeof(got));
    CHECK_STR(got, "O");
    char stale[128];
    snprintf(stale, sizeof(stale), "%s.crc.stale", f.path);
    CHECK(access(stale, F_OK) == 0);
    fixture_done(&f);
}

/* The follower checks each record against the index: a flipped byte is skipped (logged and
 * counted), never returned; a record whose entry is not written yet waits for it; a file
 * without an index is read unverified. */
static void test_follower_checks_checksums(void)
{
    struct fixture f;
    fixture_init(&f);
    CHECK(fixture_open(&f, 0) == 0);
    CHECK(append_wait(&f, "{\"id\":\"a\"}") == AB_EVENTLOG_OK);
    CHECK(append_wait(&f, "{\"id\":\"b\"}") == AB_EVENTLOG_OK);
    CHECK(append_wait(&f, "{\"id\":\"c\"}") == AB_EVENTLOG_OK);
    fixture_close(&f);
    FILE *fp = fopen(f.path, "r+");
    CHECK(fseek(fp, 15, SEEK_SET) == 0); /* inside {"id":"b"} (bytes 11..21) */
    fputc('X', fp);
    fclose(fp);
    char err[256];
    struct ab_eventlog_line l;
    struct ab_eventlog_follower *r = ab_eventlog_follow_open(f.path, 0, NULL, 0, err, sizeof(err));
    CHECK(r != NULL);
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 1);
    CHECK(l.len == 10 && memcmp(l.line, "{\"id\":\"a\"}", 10) == 0);
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 1);
    CHECK(l.len == 10 && memcmp(l.line, "{\"id\":\"c\"}", 10) == 0);
    CHECK(ab_eventlog_follow_damaged(r) == 1);
    /* a line beyond the index (its entry not written yet) waits; once it is, it comes */
    fp = fopen(f.path, "a");
    fputs("{\"id\":\"d\"}\n", fp);
    fclose(fp);
    CHECK(ab_eventlog_follow_next(r, &l, 150) == 0);
    char entry[AB_EVENTLOG_CRC_ENTRY + 1], ip[128];
    ab_eventlog_crc_entry(entry, 33, "{\"id\":\"d\"}", 10);
    snprintf(ip, sizeof(ip), "%s.crc", f.path);
    fp = fopen(ip, "a");
    fputs(entry, fp);
    fclose(fp);
    CHECK(ab_eventlog_follow_next(r, &l, 2000) == 1);
    CHECK(l.len == 10 && memcmp(l.line, "{\"id\":\"d\"}", 10) == 0);
    ab_eventlog_follow_close(r);
    /* without its index: every line, unverified */
    CHECK(unlink(ip) == 0);
    r = ab_eventlog_follow_open(f.path, 0, NULL, 0, err, sizeof(err));
    int n = 0;
    while (ab_eventlog_follow_next(r, &l, 0) == 1) {
        n++;
    }
    CHECK(n == 4 && ab_eventlog_follow_damaged(r) == 0);
    ab_eventlog_follow_close(r);
    fixture_done(&f);
}

/* Write a checksummed log file by hand: lines (each without its newline) then tail (bytes
 * no entry covers), with its index (start mark at 0, one entry per line). */
static void write_logged(const char *path, const char *const *lines, int n, const char *tail)
{
    FILE *fp = fopen(path, "w");
    for (int i = 0; i < n; i++) {
        fprintf(fp, "%s\n", lines[i]);
    }
    fputs(tail, fp);
    fclose(fp);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    char ip[256], entry[AB_EVENTLOG_CRC_ENTRY + 1];
    snprintf(ip, sizeof(ip), "%s.crc", path);
    fp = fopen(ip, "w");
    fprintf(fp, "%016x %08x %08x\n", 0, 0, (unsigned)(uint32_t)st.st_ino);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        ab_eventlog_crc_entry(entry, off, lines[i], strlen(lines[i]));
        fputs(entry, fp);
        off += (int64_t)strlen(lines[i]) + 1;
    }
    fclose(fp);
}

/* In a directory, a segment is complete once a later one exists: its uncovered tail is
 * then damage (reported, skipped), not a write in progress (waited for). */
static void test_follower_segment_complete_once_a_later_one_exists(void)
{
    char dir[] = "/tmp/ab_follow_XXXXXX", p1[64], p2[64], err[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(p1, sizeof(p1), "%s/00000000000000000001.seg", dir);
    snprintf(p2, sizeof(p2), "%s/00000000000000000002.seg", dir);
    const char *first[] = {"{\"id\":\"a\"}", "{\"id\":\"b\"}"};
    const char *second[] = {"{\"id\":\"d\"}"};
    write_logged(p1, first, 2, "{\"id\":\"c\"");
    struct ab_eventlog_line l;
    struct ab_eventlog_follower *r = ab_eventlog_follow_open(dir, 1, NULL, 0, err, sizeof(err));
    CHECK(r != NULL);
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 1 && l.line[7] == 'a');
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 1 && l.line[7] == 'b');
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 0); /* the last segment: c may be coming */
    CHECK(ab_eventlog_follow_damaged(r) == 0);
    write_logged(p2, second, 1, "");
    CHECK(ab_eventlog_follow_next(r, &l, 0) == 1 && l.line[7] == 'd');
    CHECK(ab_eventlog_follow_damaged(r) == 1);
    CHECK(strncmp(l.position, "00000000000000000002.seg:", 25) == 0);
    ab_eventlog_follow_close(r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    evthread_use_pthreads();
    RUN(test_torn_tail_cut_and_moved_aside);
    RUN(test_torn_tail_without_any_newline);
    RUN(test_renamed_and_removed_file_reopened);
    RUN(test_unreopenable_path_fails_until_fixed);
    RUN(test_reopen_request);
    RUN(test_second_writer_refused);
    RUN(test_segments_roll);
    RUN(test_close_while_in_flight_stress);
    RUN(test_interleaved_clients_keep_order);
    RUN(test_checksums_detect_and_isolate_damage);
    RUN(test_index_reconciled_at_open);
    RUN(test_follower_checks_checksums);
    RUN(test_follower_segment_complete_once_a_later_one_exists);
    return TEST_SUMMARY();
}
