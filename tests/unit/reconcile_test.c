/* core/reconcile.c and the parts of core/alma_api.c that need no server: the JOB_END event
 * built from an API instance, reading a JOB_END's instance id exactly, the id set, the
 * blocking writer over the file sink (with the interim reader of sinks/jobends.c), and the
 * regions. The HTTP side is tested end to end against tests/alma/api_stub.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/thread.h>

#include "alma_api.h"
#include "event.h"
#include "reconcile.h"
#include "route.h"
#include "sinks/file.h"
#include "sinks/jobends.h"
#include "test.h"

static const char INSTANCE[] =
    "{\"id\":\"38205463100006421\",\"name\":\"Publishing\",\"submit_time\":"
    "\"2026-12-06T10:00:00.000Z\",\"end_time\":\"2026-12-06T10:05:00.123Z\",\"progress\":100,"
    "\"status\":{\"value\":\"COMPLETED_FAILED\",\"desc\":\"Completed with errors\"},"
    "\"counter\":[{\"type\":{\"value\":\"c.x\",\"desc\":\"X\"},\"value\":\"4497\"}],"
    "\"job_info\":{\"id\":\"M53\",\"name\":\"Publishing\",\"link\":\"/almaws/v1/conf/jobs/M53\"}}";

static void test_event_is_a_webhooks(void)
{
    char err[256] = "";
    cJSON *inst = cJSON_Parse(INSTANCE);
    struct ab_event *ev = ab_reconcile_event(inst, "01AB_INST", err, sizeof(err));
    CHECK(ev != NULL);
    if (ev == NULL) {
        fprintf(stderr, "  %s\n", err);
        cJSON_Delete(inst);
        return;
    }
    CHECK_STR(ev->id, "38205463100006421"); /* Alma's JOB_END webhook id is the instance's */
    CHECK_STR(ev->type, "com.exlibrisgroup.alma.job_end");
    CHECK_STR(ev->source, "urn:alma:01AB_INST");
    CHECK_STR(ev->time, "2026-12-06T10:05:00.123Z");
    CHECK(strstr(ev->json, ",\"almaorigin\":\"api\",\"data\":{") != NULL);
    CHECK(ev->json_len == strlen(ev->json));
    cJSON *j = cJSON_Parse(ev->json);
    CHECK(j != NULL);
    const cJSON *ji = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "data"), "job_instance");
    CHECK_STR(cJSON_GetObjectItem(ji, "id")->valuestring, "38205463100006421");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(ji, "counter")) == 1);
    int64_t t = 0;
    char *id = ab_reconcile_job_end_instance(ev->json, ev->json_len, &t);
    CHECK_STR(id, "38205463100006421");
    CHECK(t == ab_reconcile_time_ms("2026-12-06T10:05:00.123Z") && t > 0);
    free(id);
    cJSON_Delete(j);
    ab_event_free(ev);
    cJSON_Delete(inst);
    cJSON *noid = cJSON_Parse("{\"status\":{\"value\":\"COMPLETED_SUCCESS\"}}");
    CHECK(ab_reconcile_event(noid, "X", err, sizeof(err)) == NULL && strstr(err, "id"));
    cJSON_Delete(noid);
}

static void test_job_end_instance_keeps_every_digit(void)
{
    /* a webhook's instance id as a 17-digit JSON number, members in any order, spaces */
    const char *a = "{\"type\": \"com.exlibrisgroup.alma.job_end\", \"time\":\"2020-01-26T16:28:05Z\","
                    " \"data\": {\"x\": [1, {\"id\": 2}], \"job_instance\" : {\"name\": \"a\\\"}\","
                    " \"id\" : 38205463100006421 }}}";
    const char *b = "{\"almaaction\":\"JOB_END\",\"data\":{\"job_instance\":{\"id\":\"12\"}}}";
    const char *c = "{\"type\":\"com.exlibrisgroup.alma.loan.loan_created\",\"data\":"
                    "{\"job_instance\":{\"id\":\"12\"}}}";
    int64_t t = 0;
    char *id = ab_reconcile_job_end_instance(a, strlen(a), &t);
    CHECK_STR(id, "38205463100006421");
    CHECK(t == 1580056085000LL);
    free(id);
    id = ab_reconcile_job_end_instance(b, strlen(b), &t);
    CHECK_STR(id, "12");
    CHECK(t == -1);
    free(id);
    CHECK(ab_reconcile_job_end_instance(c, strlen(c), NULL) == NULL);
    CHECK(ab_reconcile_job_end_instance("{\"type\":", 8, NULL) == NULL);
}

static void test_ids_and_api_helpers(void)
{
    struct ab_reconcile_ids ids = {0};
    char buf[32];
    for (int i = 999; i >= 0; i--) {
        snprintf(buf, sizeof(buf), "%d", i * 7);
        ab_reconcile_ids_add(&ids, buf);
    }
    CHECK(ab_reconcile_ids_has(&ids, "6993") && ab_reconcile_ids_has(&ids, "0"));
    CHECK(!ab_reconcile_ids_has(&ids, "6994") && !ab_reconcile_ids_has(&ids, ""));
    ab_reconcile_ids_free(&ids);
    CHECK(!ab_reconcile_ids_has(&ids, "0"));
    CHECK_STR(ab_alma_region_url("eu"), "https://api-eu.hosted.exlibrisgroup.com");
    CHECK_STR(ab_alma_region_url("CN"), "https://api-cn.hosted.exlibrisgroup.com.cn");
    CHECK(ab_alma_region_url("mars") == NULL);
    cJSON *run = cJSON_Parse("{\"status\":{\"value\":\"RUNNING\"}}");
    cJSON *done = cJSON_Parse("{\"status\":{\"value\":\"COMPLETED_WARNING\"}}");
    CHECK(!ab_alma_instance_ended(run) && ab_alma_instance_ended(done));
    cJSON_Delete(run);
    cJSON_Delete(done);
}

/* The blocking writer over the real file sink: a batch acknowledged, then found again by
 * the interim reader, which skips events older than its start. */
static void test_writer_and_reader_over_the_file_sink(void)
{
    char dir[] = "/tmp/reconcile_test_XXXXXX", err[512] = "";
    CHECK(mkdtemp(dir) != NULL);
    char *path = NULL;
    if (asprintf(&path, "%s/events.jsonl", dir) < 0) {
        return;
    }
    struct ab_file_conf fc = {.path = path, .fsync = 1};
    struct ab_sink_conf conf = {.opts = &fc, .ack_timeout_ms = 4000};
    void *shared = NULL;
    struct ab_route *route = ab_route_compile("", err, sizeof(err));
    CHECK(ab_sink_file.global_init(&conf, &shared, err, sizeof(err)) == 0);
    CHECK(ab_jobends_file_holder(&conf) == getpid());
    struct ab_reconcile_writer *w = ab_reconcile_writer_open(&ab_sink_file, &conf, shared,
                                                             route, err, sizeof(err));
    CHECK(w != NULL);
    struct ab_event *evs[3];
    for (int i = 0; i < 3; i++) {
        char text[600];
        snprintf(text, sizeof(text), "{\"id\":\"%d\",\"end_time\":\"20%02d-01-01T00:00:00Z\","
                 "\"status\":{\"value\":\"COMPLETED_SUCCESS\"}}", 1000 + i, 20 + i * 10);
        cJSON *inst = cJSON_Parse(text);
        evs[i] = ab_reconcile_event(inst, "INST", err, sizeof(err));
        cJSON_Delete(inst);
    }
    CHECK(ab_reconcile_writer_put(w, evs, 3, NULL, err, sizeof(err)) == 0);
    ab_reconcile_writer_close(w);
    ab_sink_file.global_free(shared);
    CHECK(ab_jobends_file_holder(&conf) == 0);
    struct ab_reconcile_ids ids = {0};
    CHECK(ab_jobends_collect(&ab_sink_file, &conf, "", ab_reconcile_time_ms("2025-06-01T00:00:00Z"),
                             &ids, err, sizeof(err)) == 0);
    CHECK(ids.n == 2 && ab_reconcile_ids_has(&ids, "1002") && !ab_reconcile_ids_has(&ids, "1000"));
    ab_reconcile_ids_free(&ids);
    for (int i = 0; i < 3; i++) {
        ab_event_free(evs[i]);
    }
    ab_route_free(route);
    unlink(path);
    char *lock = NULL;
    if (asprintf(&lock, "%s.lock", path) >= 0) {
        unlink(lock);
        free(lock);
    }
    rmdir(dir);
    free(path);
}

int main(void)
{
    evthread_use_pthreads();
    RUN(test_event_is_a_webhooks);
    RUN(test_job_end_instance_keeps_every_digit);
    RUN(test_ids_and_api_helpers);
    RUN(test_writer_and_reader_over_the_file_sink);
    return TEST_SUMMARY();
}
