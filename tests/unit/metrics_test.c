#include <stdatomic.h>
#include <stdlib.h>
#include <stdlib.h>

#include "metrics.h"
#include "test.h"

static void test_render_sums_threads(void)
{
    struct ab_metrics *m[2] = {ab_metrics_new(), ab_metrics_new()};
    ab_metrics_request(m[0], 200, "LOAN", "LOAN_CREATED");
    ab_metrics_request(m[1], 200, "LOAN", "LOAN_CREATED");
    ab_metrics_request(m[1], 200, "JOB_END", NULL);
    ab_metrics_request(m[0], 401, NULL, NULL);
    ab_metrics_request(m[0], 200, "we\"ird\\", NULL);
    ab_metrics_ack(m[0], 0.003, 1);
    ab_metrics_ack(m[1], 7.0, 0);
    char *t = ab_metrics_render(m, 2, "file", &(struct ab_metrics_gauges){0});
    CHECK(strstr(t, "almabridge_requests_total{status=\"200\",action=\"LOAN\",event=\"LOAN_CREATED\"} 2\n"));
    CHECK(strstr(t, "almabridge_requests_total{status=\"401\",action=\"\",event=\"\"} 1\n"));
    CHECK(strstr(t, "almabridge_events_total{action=\"JOB_END\",event=\"\"} 1\n"));
    CHECK(strstr(t, "action=\"we\\\"ird\\\\\"")); /* label values escaped */
    CHECK(strstr(t, "almabridge_sink_ack_seconds_bucket{result=\"ok\",le=\"0.005\"} 1\n"));
    CHECK(strstr(t, "almabridge_sink_ack_seconds_bucket{result=\"ok\",le=\"0.0025\"} 0\n"));
    CHECK(strstr(t, "almabridge_sink_ack_seconds_bucket{result=\"error\",le=\"5\"} 0\n"));
    CHECK(strstr(t, "almabridge_sink_ack_seconds_bucket{result=\"error\",le=\"+Inf\"} 1\n"));
    CHECK(strstr(t, "almabridge_sink_ack_seconds_count{result=\"error\"} 1\n"));
    CHECK(strstr(t, "# TYPE almabridge_requests_in_flight gauge\n"));
    CHECK(strstr(t, "almabridge_sink_ready{sink=\"file\"}"));
    free(t);
    ab_metrics_free(m[0]);
    ab_metrics_free(m[1]);
}

static void test_label_sets_bounded(void)
{
    struct ab_metrics *m = ab_metrics_new();
    char action[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(action, sizeof(action), "A%d", i);
        ab_metrics_request(m, 200, action, NULL);
    }
    char *t = ab_metrics_render(&m, 1, "file", &(struct ab_metrics_gauges){0});
    CHECK(strstr(t, "action=\"other\"") != NULL);
    CHECK(strstr(t, "action=\"A4999\"") == NULL);
    /* the overflow is one label set per status, counted, and visible */
    CHECK(strstr(t, "almabridge_requests_total{status=\"200\",action=\"other\",event=\"other\"} "
                    "2952\n") != NULL);
    CHECK(strstr(t, "almabridge_metrics_label_overflow_total 2952\n") != NULL);
    char *p = t;
    int others = 0;
    while ((p = strstr(p, "almabridge_requests_total{status=\"200\",action=\"other\"")) != NULL) {
        others++;
        p++;
    }
    CHECK(others == 1);
    free(t);
    atomic_store(&ab_metrics_g.label_overflow, 0);
    ab_metrics_free(m);
    ab_metrics_free(NULL);
}

static void test_build_and_process_metrics(void)
{
    struct ab_metrics *m = ab_metrics_new();
    ab_metrics_request(m, 404, NULL, NULL);
    char *t = ab_metrics_render(&m, 1, "file", &(struct ab_metrics_gauges){0});
    CHECK(strstr(t, "almabridge_requests_total{status=\"404\",action=\"\",event=\"\"} 1\n"));
    CHECK(strstr(t, "almabridge_build_info{version=\"" AB_VERSION "\"} 1\n"));
    const char *names[] = {"\nprocess_cpu_seconds_total ", "\nprocess_resident_memory_bytes ",
                           "\nprocess_virtual_memory_bytes ", "\nprocess_open_fds ",
                           "\nprocess_max_fds ", "\nprocess_start_time_seconds "};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *line = strstr(t, names[i]);
        char *end = NULL;
        double v = line ? strtod(line + strlen(names[i]), &end) : -1;
        CHECK(line && end && *end == '\n' && (i == 0 ? v >= 0 : v > 0));
    }
    free(t);
    ab_metrics_free(m);
}

int main(void)
{
    RUN(test_render_sums_threads);
    RUN(test_label_sets_bounded);
    RUN(test_build_and_process_metrics);
    return TEST_SUMMARY();
}
