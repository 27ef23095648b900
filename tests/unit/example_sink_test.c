/* Keeps "How to add a sink" (docs/ARCHITECTURE.md) honest: the example backend
 * (sinks/example.c) is added to a registry here, without touching any core file, and must
 * then work through the generic configuration loader (command line, environment, --help,
 * --print-config, the Markdown reference) and honour the sink contract (exactly once,
 * later, on the loop thread; refusal without callback; the --ack-timeout deadline; close). */
#include "config.h"
#include "sink.h"
#include "sinks/example.h"
#include "sinks/registry.h"
#include "loop.h"
#include "test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

/* The program's registry plus the new backend: what the checklist's last step does. */
static const struct ab_sink_ops *sinks[8];

static void make_registry(void)
{
    size_t n = 0;
    while (ab_sinks[n]) {
        sinks[n] = ab_sinks[n];
        n++;
    }
    sinks[n++] = &ab_sink_example;
    sinks[n] = NULL;
}

static char *capture(void (*fn)(const struct ab_sink_ops *const *, FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    fn(sinks, fp);
    fclose(fp);
    return buf;
}

/* argv and envp from string literals (the loader takes char **). */
#define LIST(...) ((char *[]){__VA_ARGS__, NULL})

static int load(struct ab_config *c, char **argv, char **envp, char *err, size_t errlen)
{
    int argc = 0;
    while (argv[argc]) {
        argc++;
    }
    return ab_config_load(c, sinks, argc, argv, envp, err, errlen);
}

static void test_options_come_from_its_table(void)
{
    struct ab_config c;
    char err[256] = "";
    char a0[] = "almabridge", a1[] = "--sink", a2[] = "example", a3[] = "--example-delay",
         a4[] = "25", e0[] = "ALMABRIDGE_EXAMPLE_CAPACITY=7";
    CHECK(load(&c, LIST(a0, a1, a2, a3, a4), LIST(e0), err, sizeof(err)) == AB_CONFIG_OK);
    CHECK_STR(err, "");
    CHECK_STR(c.sink, "example");
    const struct ab_example_conf *ec = ab_config_sink_opts(&c, &ab_sink_example);
    CHECK(ec != NULL && ec->delay_ms == 25 && ec->capacity == 7);
    struct ab_sink_conf sc;
    ab_config_sink_conf(&c, &ab_sink_example, &sc);
    CHECK(sc.opts == ec && sc.ack_timeout_ms == 4000);
    char *printed = NULL;
    size_t plen = 0;
    FILE *fp = open_memstream(&printed, &plen);
    ab_config_print(&c, fp);
    fclose(fp);
    CHECK(strstr(printed, "\nexample-delay = 25ms\n") != NULL);
    CHECK(strstr(printed, "\nexample-capacity = 7\n") != NULL);
    free(printed);
    ab_config_free(&c);

    /* checked as the table says, and --sink knows the new name */
    char zero[] = "0", nope[] = "nope";
    CHECK(load(&c, LIST(a0, a3, zero), NULL, err, sizeof(err)) == AB_CONFIG_ERROR);
    CHECK_STR(err, "--example-delay: 0 is out of range (1..600000 milliseconds)");
    CHECK(load(&c, LIST(a0, a1, nope), NULL, err, sizeof(err)) == AB_CONFIG_ERROR);
    CHECK_STR(err, "--sink: \"nope\" is not one of file|kafka|redis|http|example");

    char *usage = capture(ab_config_usage);
    char *md = capture(ab_config_markdown);
    CHECK(strstr(usage, "\nExample:\n") != NULL);
    CHECK(strstr(usage, "--example-delay DURATION") != NULL);
    CHECK(strstr(usage, "ALMABRIDGE_EXAMPLE_DELAY") != NULL);
    CHECK(strstr(usage, "--sink file|kafka|redis|http|example") != NULL);
    CHECK(strstr(md, "| `--example-capacity N` | `ALMABRIDGE_EXAMPLE_CAPACITY` | `1000` |") !=
          NULL);
    free(usage);
    free(md);
}

/* ---- the contract ---- */

struct done {
    int calls, status, inside;
};

static int submitting;

static void on_done(int status, const char *errstr, void *opaque)
{
    struct done *d = opaque;
    d->calls++;
    d->status = status;
    d->inside |= submitting;
}

static struct ab_sink *open_example(struct event_base *base, struct ab_example_conf *ec,
                                    long ack_ms)
{
    static struct ab_sink_conf sc;
    sc = (struct ab_sink_conf){.opts = ec, .ack_timeout_ms = ack_ms};
    void *shared = NULL;
    char err[128];
    CHECK(ab_sink_example.global_init(&sc, &shared, err, sizeof(err)) == 0);
    return ab_sink_example.open(&sc, shared, base, err, sizeof(err));
}

static int submit(struct ab_sink *s, const char *value, struct done *d)
{
    struct ab_sink_msg m = {.id = "1", .value = value, .value_len = strlen(value)};
    submitting = 1;
    int rc = ab_sink_submit(s, &m, on_done, d);
    submitting = 0;
    return rc;
}

static void test_contract(void)
{
    struct event_base *base = event_base_new();
    struct ab_example_conf ec = {.delay_ms = 10, .capacity = 3};
    struct ab_sink *s = open_example(base, &ec, 1000);
    struct done d[4] = {{0}};
    CHECK(ab_sink_ready(s));
    for (int i = 0; i < 3; i++) {
        CHECK(submit(s, "{\"n\":1}", &d[i]) == 0);
    }
    CHECK(submit(s, "{\"n\":4}", &d[3]) != 0); /* full: refused at once */
    CHECK(!ab_sink_ready(s));
    CHECK(d[0].calls == 0); /* later, never inside submit */
    run_for(base, 60);
    for (int i = 0; i < 3; i++) {
        CHECK(d[i].calls == 1 && d[i].status == AB_SINK_OK && !d[i].inside);
    }
    CHECK(d[3].calls == 0);
    CHECK(ab_example_count(s) == 3);
    CHECK_STR(ab_example_event(s, 0), "{\"n\":1}");
    ab_sink_example.close(s, 100);
    event_base_free(base);
}

static void test_deadline_and_close(void)
{
    struct event_base *base = event_base_new();
    struct ab_example_conf ec = {.delay_ms = 300, .capacity = 10};
    struct ab_sink *s = open_example(base, &ec, 50);
    struct done late = {0}, closing = {0};
    CHECK(submit(s, "{}", &late) == 0);
    run_for(base, 150);
    CHECK(late.calls == 1 && late.status == AB_SINK_TIMEOUT);
    run_for(base, 250); /* the commit comes: ignored */
    CHECK(late.calls == 1 && late.status == AB_SINK_TIMEOUT);
    ab_sink_example.close(s, 100);
    s = open_example(base, &ec, 5000);
    CHECK(submit(s, "{}", &closing) == 0);
    ab_sink_example.close(s, 100);
    CHECK(closing.calls == 1 && closing.status == AB_SINK_CLOSED);
    event_base_free(base);
}

int main(void)
{
    make_registry();
    RUN(test_options_come_from_its_table);
    RUN(test_contract);
    RUN(test_deadline_and_close);
    return TEST_SUMMARY();
}
