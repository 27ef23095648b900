/* The registry's read-side checks (sinks/registry.c): what `wait`, `replay` and `spool
 * inspect` ask before they read. A backend without a read side (the example sink, or any
 * write-only backend) is refused by name with the list of the backends that can be read;
 * every backend the registry offers today has a read side. */
#include <string.h>

#include "example.h"
#include "registry.h"
#include "spool.h"
#include "file.h"
#include "test.h"

static void test_refuses_a_backend_without_a_read_side(void)
{
    char err[512] = "";
    CHECK(!ab_sink_readable(&ab_sink_example));
    CHECK(ab_sink_reader_check(&ab_sink_example, "example", "wait", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "the example sink cannot be read back (it has no read side)") != NULL);
    CHECK(strstr(err, "wait reads only from a sink that has one: file, kafka, redis") != NULL);
    err[0] = '\0';
    CHECK(ab_sink_reader_find("nosuch", "replay", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "the nosuch sink cannot be read back") != NULL);
}

static void test_every_offered_backend_reads(void)
{
    char err[256];
    for (size_t i = 0; ab_sinks[i]; i++) {
        if (strcmp(ab_sinks[i]->name, "http") == 0) {
            /* the HTTP sink posts to a target that cannot be read back: refused clearly */
            CHECK(!ab_sink_readable(ab_sinks[i]));
            CHECK(ab_sink_reader_find("http", "wait", err, sizeof(err)) == NULL);
            CHECK(strstr(err, "the http sink cannot be read back (it has no read side)") != NULL);
            continue;
        }
        CHECK(ab_sink_readable(ab_sinks[i]));
        CHECK(ab_sinks[i]->reader_next != NULL && ab_sinks[i]->reader_close != NULL);
        if (!(ab_sinks[i]->flags & AB_SINK_WRAPS)) {
            CHECK(ab_sink_reader_find(ab_sinks[i]->name, "wait", err, sizeof(err)) ==
                  ab_sinks[i]);
        }
    }
}

static void test_log_reader_by_path(void)
{
    char err[256] = "";
    int spool = -1;
    CHECK(ab_sink_log_reader("/", &spool, err, sizeof(err)) == &ab_sink_spool && spool == 0);
    CHECK(ab_sink_log_reader("/dev/null", &spool, err, sizeof(err)) == &ab_sink_file);
    CHECK(ab_sink_log_reader("/no/such/path", &spool, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "/no/such/path") != NULL);
}

int main(void)
{
    RUN(test_refuses_a_backend_without_a_read_side);
    RUN(test_every_offered_backend_reads);
    RUN(test_log_reader_by_path);
    return TEST_SUMMARY();
}
