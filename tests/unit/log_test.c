/* The log (core/log.c): a loop thread's access lines are gathered and written once per
 * loop iteration, in writes of whole lines of at most PIPE_BUF bytes, before any other line
 * of the thread; without a batch, each line is written at once. stderr is a SOCK_SEQPACKET
 * socket here, so that every write(2) arrives as one record that can be counted. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "test.h"

#define LINES 60

struct capture {
    int saved; /* the real stderr */
    int peer;  /* where the records arrive */
};

static void capture_start(struct capture *cap)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    fflush(stderr);
    cap->saved = dup(STDERR_FILENO);
    dup2(sv[0], STDERR_FILENO);
    close(sv[0]);
    cap->peer = sv[1];
}

static void capture_stop(struct capture *cap)
{
    dup2(cap->saved, STDERR_FILENO);
    close(cap->saved);
    close(cap->peer);
}

/* The next record (one write(2)) into buf, NUL-terminated; its length, or -1 if none. */
static long next_record(struct capture *cap, char *buf, size_t cap_len)
{
    ssize_t n = recv(cap->peer, buf, cap_len - 1, MSG_DONTWAIT);
    if (n < 0) {
        return -1;
    }
    buf[n] = '\0';
    return (long)n;
}

static void log_access(int i)
{
    char id[32];
    snprintf(id, sizeof(id), "id-%d", i);
    struct ab_access a = {.client = "192.0.2.1", .method = "POST", .path = "/webhook",
                          .status = 200, .latency_ms = 1.5, .bytes_in = 1500, .id = id,
                          .action = "LOAN", .event = "LOAN_CREATED", .sink = "file"};
    ab_log_access(&a);
}

struct burst {
    struct capture *cap;
    int lines;          /* access lines to log */
    int warn;           /* log a warning after the access lines */
    int written_during; /* records readable while the callback still ran */
    int lines_during;   /* and the lines in them */
};

static void on_burst(evutil_socket_t fd, short what, void *arg)
{
    struct burst *b = arg;
    char buf[PIPE_BUF + 1];
    for (int i = 0; i < b->lines; i++) {
        log_access(i);
    }
    while (next_record(b->cap, buf, sizeof(buf)) >= 0) {
        b->written_during++;
        for (char *p = buf; *p; p++) {
            b->lines_during += *p == '\n';
        }
    }
    if (b->warn) {
        ab_warn("after the access lines");
    }
}

/* Count the records and lines now readable; every record holds whole lines only. */
static void drain(struct capture *cap, int *records, int *lines, int *bad, char *last_line,
                  size_t last_cap)
{
    char buf[PIPE_BUF + 1];
    long n;
    while ((n = next_record(cap, buf, sizeof(buf))) >= 0) {
        (*records)++;
        if (n == 0 || n > PIPE_BUF || buf[n - 1] != '\n') {
            (*bad)++;
        }
        char *save = NULL;
        for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            (*lines)++;
            if (strncmp(l, "20", 2) != 0) {
                (*bad)++; /* each line starts with its timestamp: nothing mixed */
            }
            snprintf(last_line, last_cap, "%s", l);
        }
    }
}

/* Run one loop iteration whose only callback is the burst b; what was written after it
 * is counted into *records, *lines, *bad, last. */
static void run_burst(struct burst *b, int *records, int *lines, int *bad, char *last,
                      size_t last_cap)
{
    struct event_base *base = event_base_new();
    struct ab_log_batch *batch = ab_log_batch_new(base);
    struct timeval now = {0, 0};
    event_base_once(base, -1, EV_TIMEOUT, on_burst, b, &now);
    event_base_loop(base, EVLOOP_ONCE);
    drain(b->cap, records, lines, bad, last, last_cap);
    ab_log_batch_free(batch);
    event_base_free(base);
}

static void test_access_lines_gathered_per_iteration(void)
{
    struct capture cap;
    capture_start(&cap);
    struct burst small = {&cap, 5, 0, 0, 0}, big = {&cap, LINES, 0, 0, 0};
    int records = 0, lines = 0, bad = 0, big_records = 0, big_lines = 0;
    char last[512] = "";
    run_burst(&small, &records, &lines, &bad, last, sizeof(last));
    run_burst(&big, &big_records, &big_lines, &bad, last, sizeof(last));
    capture_stop(&cap);

    /* a few lines: none written while the loop ran its callbacks, all in one write after */
    CHECK(small.written_during == 0);
    CHECK(records == 1 && lines == 5);
    /* more than PIPE_BUF of them: written whenever the next would not fit, the rest after */
    CHECK(big.written_during >= 1);
    CHECK(big.lines_during + big_lines == LINES);
    CHECK(big.written_during + big_records < LINES / 4); /* a few writes, not 60 */
    CHECK(bad == 0);
    CHECK(strstr(last, "id=id-59") != NULL);
}

static void test_other_lines_flush_the_gathered_first(void)
{
    struct capture cap;
    capture_start(&cap);
    struct burst b = {&cap, 5, 1, 0, 0};
    int records = 0, lines = 0, bad = 0;
    char last[512] = "";
    run_burst(&b, &records, &lines, &bad, last, sizeof(last));
    capture_stop(&cap);

    CHECK(b.written_during == 0);
    CHECK(records == 2 && lines == 6); /* the warning wrote the gathered lines, then itself */
    CHECK(bad == 0);
    CHECK(strstr(last, "after the access lines") != NULL); /* so the order holds */
}

static void test_free_writes_the_rest_and_unbatches(void)
{
    struct capture cap;
    capture_start(&cap);
    struct event_base *base = event_base_new();
    struct ab_log_batch *batch = ab_log_batch_new(base);
    log_access(1); /* gathered: the loop never runs */
    char buf[PIPE_BUF + 1];
    int before_free = next_record(&cap, buf, sizeof(buf)) >= 0;
    ab_log_batch_free(batch);
    int at_free = next_record(&cap, buf, sizeof(buf)) >= 0 && strstr(buf, "id=id-1") != NULL;
    log_access(2); /* no batch any more: at once */
    int unbatched = next_record(&cap, buf, sizeof(buf)) >= 0 && strstr(buf, "id=id-2") != NULL;
    event_base_free(base);
    capture_stop(&cap);

    CHECK(!before_free);
    CHECK(at_free);
    CHECK(unbatched);
}

int main(void)
{
    RUN(test_access_lines_gathered_per_iteration);
    RUN(test_other_lines_flush_the_gathered_first);
    RUN(test_free_writes_the_rest_and_unbatches);
    return TEST_SUMMARY();
}
