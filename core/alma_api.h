/* A client of Alma's REST API (Ex Libris' regional gateways), as much of it as reconcile
 * and `wait --fallback-after` need: the Jobs API's instance list and instance detail.
 *
 * HTTP through the program's one client (core/http_client.c, libcurl; one connection kept
 * alive between calls), TLS verified (peer and host name; --alma-api-ca for a private CA),
 * `Accept: application/json`, the key from a file sent as `Authorization: apikey <key>`;
 * the key is never logged, printed or put in a URL. Every request is one call against a daily budget (--api-budget, UTC days), counted
 * durably before it is sent in a small state file under --state-dir
 * (`alma-api-calls`: "YYYY-MM-DD N"), shared under an flock by every process using it.
 *
 * Alma answers 429 with its own error body when a threshold is reached: errorCode
 * PER_SECOND_THRESHOLD (backed off, Retry-After honoured, up to AB_ALMA_RETRIES times) or
 * DAILY_THRESHOLD (the institution's daily quota: not retried). A failed connection or a
 * 5xx is retried twice. Error bodies ({"errorsExist":true,"errorList":{"error":[{
 * "errorCode":...,"errorMessage":...}]}}) become the message.
 *
 * Blocking calls for a command-line program or a thread of its own; not thread-safe (one
 * client per thread). */
#ifndef AB_ALMA_API_H
#define AB_ALMA_API_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define AB_ALMA_RETRIES 4 /* retries of a request Alma refused with PER_SECOND_THRESHOLD */

enum ab_alma_status {
    AB_ALMA_OK = 0,
    AB_ALMA_DOWN,       /* no connection, a timeout or a 5xx, after the retries */
    AB_ALMA_AUTH,       /* 400 UNAUTHORIZED, 401, 403: the key or its permissions */
    AB_ALMA_THRESHOLD,  /* 429: Alma's daily threshold, or its per-second one after retries */
    AB_ALMA_BUDGET,     /* --api-budget for today is used up: nothing was sent */
    AB_ALMA_BAD_ANSWER, /* not the JSON documented (malformed, another shape) */
    AB_ALMA_NOT_FOUND,  /* 404, or 400 402215/402216/402218: an unknown job or instance */
    AB_ALMA_ERROR,      /* another 4xx, or the state file cannot be written */
};
const char *ab_alma_status_str(int status);

struct ab_alma_api_opts {
    const char *base;      /* --alma-api: na|eu|ap|aps|ca|cn or an http(s) URL */
    const char *key_file;  /* --alma-api-key-file */
    const char *ca_file;   /* --alma-api-ca, NULL = the system's CA store */
    const char *state_dir; /* where alma-api-calls is kept */
    long budget;           /* calls per UTC day */
    long timeout_ms;       /* per request; 0 = 30 s */
};

struct ab_alma_api;

/* The base URL of a region (na, eu, ap, aps, ca, cn), or NULL for any other name. */
const char *ab_alma_region_url(const char *region);

/* A client; reads the key file and checks the state directory. NULL with one line in err
 * (a usage or configuration error). */
struct ab_alma_api *ab_alma_api_new(const struct ab_alma_api_opts *o, char *err, size_t errlen);
void ab_alma_api_free(struct ab_alma_api *api);

/* A client from the loaded configuration (--alma-api, --alma-api-key-file, --alma-api-ca,
 * --api-budget, --state-dir; the state directory defaults to the directory of data_path,
 * the file sink's --file). NULL with err, also when --alma-api is not given. */
struct ab_config;
struct ab_alma_api *ab_alma_api_from_config(const struct ab_config *cfg, const char *data_path,
                                            char *err, size_t errlen);

/* GET base + path (path starts with '/', query included, already escaped) and parse the JSON
 * answer into *out (owned by the caller). Returns AB_ALMA_OK or a status with one line in
 * err naming what failed (never the key). */
int ab_alma_api_get(struct ab_alma_api *api, const char *path, cJSON **out, char *err,
                    size_t errlen);

/* --check-connect: one GET within timeout_ms per attempt (the key, TLS, the gateway): the
 * first instance of job, or the job list when job is NULL. Counts against the budget like
 * any call. Returns 0 when Alma answered and accepted the key (also with a 4xx about the
 * request itself), -1 otherwise; either way one line in msg (never the key). */
int ab_alma_api_probe(struct ab_alma_api *api, const char *job, long timeout_ms, char *msg,
                      size_t len);

/* Called for each job instance of a list page; returns 0 to go on, non-zero to stop (that
 * value is then returned by ab_alma_job_instances). */
typedef int (*ab_alma_instance_cb)(const cJSON *instance, void *arg);

/* Every instance of job submitted on the UTC days from_day .. to_day ("YYYY-MM-DD"): GET
 * /almaws/v1/conf/jobs/{job}/instances?submit_date_from=YYYY-MM-DD&submit_date_to=..&limit=100
 * &offset=.., page after page until total_record_count. Returns AB_ALMA_OK, a status with
 * err, or the callback's non-zero value. */
int ab_alma_job_instances(struct ab_alma_api *api, const char *job, const char *from_day,
                          const char *to_day, ab_alma_instance_cb cb, void *arg, char *err,
                          size_t errlen);

/* One instance in full: GET /almaws/v1/conf/jobs/{job}/instances/{instance}. */
int ab_alma_job_instance(struct ab_alma_api *api, const char *job, const char *instance,
                         cJSON **out, char *err, size_t errlen);

/* 1 when an instance (API JSON) has ended: a status other than queued, pending,
 * initializing, running or finalizing. */
int ab_alma_instance_ended(const cJSON *instance);

/* A string member of an instance ("id", "end_time"), or the "value" of an object member
 * ("status"); NULL when absent. Borrowed from the tree. */
const char *ab_alma_str(const cJSON *obj, const char *name);

/* From now on, a non-zero *flag (set by another thread) aborts the request in progress and
 * any further one (AB_ALMA_ERROR, "cancelled"), and cuts the waits between retries short:
 * a daemon that stops does not wait for the API. */
void ab_alma_api_cancel_on(struct ab_alma_api *api, const atomic_int *flag);

/* Calls made by this client, and those counted for today in the state file (all processes;
 * -1 when unreadable), and the budget. */
long ab_alma_api_calls(const struct ab_alma_api *api);
long ab_alma_api_calls_today(const struct ab_alma_api *api);
long ab_alma_api_budget(const struct ab_alma_api *api);

#endif
