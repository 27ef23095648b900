/* Alma's REST API through the program's HTTP client (core/http_client.c): see alma_api.h. */
#include "alma_api.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "http_client.h"
#include "log.h"
#include "mem.h"

#define DOWN_RETRIES 2         /* retries after a failed connection or a 5xx */
#define PAGE 100               /* the largest `limit` the Jobs API takes */
#define STATE_FILE "alma-api-calls"

struct ab_alma_api {
    struct ab_http_client *http; /* one connection, kept alive between calls */
    char *auth;                  /* the Authorization header line: holds the key */
    char *base;                 /* no trailing '/' */
    char *ca_file;
    char *state_path;
    long budget, timeout_ms, calls;
    const atomic_int *cancel; /* NULL, or set by another thread to abort */
};

/* Ex Libris' regional API gateways (docs/MISSED_EVENTS.md "Sources"): na, eu, ap, ca are
 * the `servers` of Ex Libris' Alma OpenAPI files
 * (developers.exlibrisgroup.com/wp-content/uploads/alma/openapi/, acq.yaml and its
 * siblings); aps (Asia Pacific, Australia) and cn's `.com.cn` name are those of its Esploro
 * OpenAPI and of public clients (the Alma files name api-cn.hosted.exlibrisgroup.com). */
static const struct {
    const char *name, *url;
} regions[] = {
    {"na", "https://api-na.hosted.exlibrisgroup.com"},
    {"eu", "https://api-eu.hosted.exlibrisgroup.com"},
    {"ap", "https://api-ap.hosted.exlibrisgroup.com"},
    {"aps", "https://api-aps.hosted.exlibrisgroup.com"},
    {"ca", "https://api-ca.hosted.exlibrisgroup.com"},
    {"cn", "https://api-cn.hosted.exlibrisgroup.com.cn"},
};

const char *ab_alma_status_str(int status)
{
    static const char *const names[] = {"ok",           "API unreachable", "API key refused",
                                        "API threshold", "API budget used", "unexpected answer",
                                        "not found",     "API error"};
    return status >= 0 && status <= AB_ALMA_ERROR ? names[status] : "unknown";
}

const char *ab_alma_region_url(const char *region)
{
    for (size_t i = 0; region && i < sizeof(regions) / sizeof(regions[0]); i++) {
        if (strcasecmp(region, regions[i].name) == 0) {
            return regions[i].url;
        }
    }
    return NULL;
}

/* The first line of path that is neither blank nor a '#' comment, trimmed; NULL with err.
 * The buffers that held the key are wiped. */
static char *read_key(const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL, *key = NULL;
    size_t cap = 0;
    if (fp == NULL) {
        snprintf(err, errlen, "cannot read --alma-api-key-file %s: %s", path, strerror(errno));
        return NULL;
    }
    while (key == NULL && getline(&line, &cap, fp) >= 0) {
        char *s = line, *e = line + strlen(line);
        while (*s == ' ' || *s == '\t') {
            s++;
        }
        while (e > s && isspace((unsigned char)e[-1])) {
            e--;
        }
        if (e > s && *s != '#') {
            key = ab_strndup(s, (size_t)(e - s));
        }
    }
    if (line) {
        memset(line, 0, cap);
    }
    free(line);
    fclose(fp);
    for (const char *c = key; c && *c; c++) {
        if (*c <= ' ' || *c == 0x7f) {
            snprintf(err, errlen, "--alma-api-key-file %s: the key holds a space or a control "
                                  "character", path);
            memset(key, 0, strlen(key));
            free(key);
            return NULL;
        }
    }
    if (key == NULL) {
        snprintf(err, errlen, "--alma-api-key-file %s holds no key", path);
    }
    return key;
}

static int base_url(struct ab_alma_api *api, const char *base, char *err, size_t errlen)
{
    const char *url = ab_alma_region_url(base);
    if (url == NULL && base && (strncmp(base, "https://", 8) == 0 ||
                                strncmp(base, "http://", 7) == 0)) {
        url = base;
    }
    if (url == NULL) {
        snprintf(err, errlen, "--alma-api: na, eu, ap, aps, ca, cn or an http(s):// URL, not \"%s\"",
                 base ? base : "");
        return -1;
    }
    api->base = ab_strdup(url);
    for (size_t n = strlen(api->base); n > 0 && api->base[n - 1] == '/'; n--) {
        api->base[n - 1] = '\0';
    }
    return 0;
}

struct ab_alma_api *ab_alma_api_new(const struct ab_alma_api_opts *o, char *err, size_t errlen)
{
    struct ab_alma_api *api = ab_calloc(1, sizeof(*api));
    char *key = NULL;
    struct stat st;
    if (base_url(api, o->base, err, errlen) != 0) {
        goto fail;
    }
    if (o->key_file == NULL) {
        snprintf(err, errlen, "--alma-api needs --alma-api-key-file FILE (the API key)");
        goto fail;
    }
    if ((key = read_key(o->key_file, err, errlen)) == NULL) {
        goto fail;
    }
    if (o->state_dir == NULL || stat(o->state_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--state-dir %s: not a directory (the API call count is kept "
                              "there)", o->state_dir ? o->state_dir : "(none)");
        goto fail;
    }
    if ((api->http = ab_http_client_new(err, errlen)) == NULL) {
        goto fail;
    }
    api->auth = ab_asprintf("Authorization: apikey %s", key);
    memset(key, 0, strlen(key));
    free(key);
    api->ca_file = o->ca_file ? ab_strdup(o->ca_file) : NULL;
    api->state_path = ab_asprintf("%s/%s", o->state_dir, STATE_FILE);
    api->budget = o->budget;
    api->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
    return api;
fail:
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    ab_alma_api_free(api);
    return NULL;
}

void ab_alma_api_free(struct ab_alma_api *api)
{
    if (api == NULL) {
        return;
    }
    ab_http_client_free(api->http);
    if (api->auth) {
        memset(api->auth, 0, strlen(api->auth));
    }
    free(api->auth);
    free(api->base);
    free(api->ca_file);
    free(api->state_path);
    free(api);
}

struct ab_alma_api *ab_alma_api_from_config(const struct ab_config *cfg, const char *data_path,
                                            char *err, size_t errlen)
{
    if (cfg->alma_api == NULL) {
        snprintf(err, errlen, "give --alma-api na|eu|ap|aps|ca|cn|URL and --alma-api-key-file FILE "
                              "(or alma-api and alma-api-key-file in --config)");
        return NULL;
    }
    char *dir = NULL;
    if (cfg->state_dir == NULL) {
        const char *slash = data_path ? strrchr(data_path, '/') : NULL;
        dir = slash ? ab_strndup(data_path, slash == data_path ? 1 : (size_t)(slash - data_path))
                    : ab_strdup(".");
    }
    struct ab_alma_api_opts o = {.base = cfg->alma_api,
                                 .key_file = cfg->alma_api_key_file,
                                 .ca_file = cfg->alma_api_ca,
                                 .state_dir = cfg->state_dir ? cfg->state_dir : dir,
                                 .budget = cfg->api_budget};
    struct ab_alma_api *api = ab_alma_api_new(&o, err, errlen);
    free(dir);
    return api;
}

long ab_alma_api_calls(const struct ab_alma_api *api)
{
    return api->calls;
}

long ab_alma_api_budget(const struct ab_alma_api *api)
{
    return api->budget;
}

/* ---- the daily count ---- */

static void today(char *day, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(day, len, "%Y-%m-%d", &tm);
}

/* The count in the state file at fd for day (0 for another day or an empty file). */
static long read_count(int fd, const char *day)
{
    char buf[64] = "", d[16] = "";
    long n = 0;
    ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);
    if (r > 0) {
        buf[r] = '\0';
        if (sscanf(buf, "%15s %ld", d, &n) != 2 || strcmp(d, day) != 0 || n < 0) {
            n = 0;
        }
    }
    return n;
}

/* Count one call for today under the file's lock, on disk before the call is made.
 * AB_ALMA_OK, AB_ALMA_BUDGET when today's budget is used up, AB_ALMA_ERROR. */
static int count_call(struct ab_alma_api *api, char *err, size_t errlen)
{
    char day[16], line[64];
    int rc = AB_ALMA_ERROR;
    int fd = open(api->state_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) {
        snprintf(err, errlen, "cannot count the API call in %s: %s", api->state_path,
                 strerror(errno));
        goto done;
    }
    today(day, sizeof(day));
    long n = read_count(fd, day);
    if (n >= api->budget) {
        snprintf(err, errlen, "the --api-budget of %ld Alma API calls for %s (UTC) is used up "
                              "(%s)", api->budget, day, api->state_path);
        rc = AB_ALMA_BUDGET;
        goto done;
    }
    int len = snprintf(line, sizeof(line), "%s %ld\n", day, n + 1);
    if (pwrite(fd, line, (size_t)len, 0) != len || ftruncate(fd, len) != 0 || fdatasync(fd) != 0) {
        snprintf(err, errlen, "cannot count the API call in %s: %s", api->state_path,
                 strerror(errno));
        goto done;
    }
    api->calls++;
    rc = AB_ALMA_OK;
done:
    if (fd >= 0) {
        close(fd); /* releases the lock */
    }
    return rc;
}

long ab_alma_api_calls_today(const struct ab_alma_api *api)
{
    char day[16];
    int fd = open(api->state_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? 0 : -1;
    }
    flock(fd, LOCK_SH);
    today(day, sizeof(day));
    long n = read_count(fd, day);
    close(fd);
    return n;
}

/* ---- one request ---- */

/* Alma's error body: "<errorCode>: <errorMessage>" of its first error into out (empty when
 * the body is not one); the code alone into code. */
static void error_of(const struct ab_http_answer *a, char *code, size_t codelen, char *out,
                     size_t len)
{
    cJSON *j = a->body ? cJSON_ParseWithLength(a->body, a->len) : NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "errorList");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(list, "error");
    e = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 0) : e;
    const char *c = ab_alma_str(e, "errorCode"), *m = ab_alma_str(e, "errorMessage");
    snprintf(code, codelen, "%s", c ? c : "");
    snprintf(out, len, "%s%s%.200s", c ? c : "", c && m ? ": " : "", m ? m : "");
    for (char *p = out; *p; p++) {
        *p = (unsigned char)*p < ' ' ? ' ' : *p; /* one line */
    }
    cJSON_Delete(j);
}

static int cancelled(const struct ab_alma_api *api)
{
    return api->cancel && atomic_load(api->cancel);
}

void ab_alma_api_cancel_on(struct ab_alma_api *api, const atomic_int *flag)
{
    api->cancel = flag;
}

/* s seconds, in tenths, until cancelled. */
static void sleep_s(const struct ab_alma_api *api, long s)
{
    for (long i = 0; i < s * 10 && !cancelled(api); i++) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
    }
}

/* GET url once through the shared client. Returns the HTTP status, or AB_HTTP_NO_ANSWER /
 * AB_HTTP_TLS_REFUSED with err; the answer in *a (Retry-After capped at 60 s). */
static long perform(struct ab_alma_api *api, const char *url, struct ab_http_answer *a,
                    char *err, size_t errlen)
{
    const char *const headers[] = {"Accept: application/json", api->auth, NULL};
    const struct ab_http_request r = {
        .url = url,
        .headers = headers,
        .ca_file = api->ca_file,
        .timeout_ms = api->timeout_ms,
        .connect_timeout_ms = api->timeout_ms < 10000 ? api->timeout_ms : 10000L,
        .cancel = api->cancel,
    };
    long code = ab_http_client_perform(api->http, &r, a, err, errlen);
    if (a->retry_after > 60) {
        a->retry_after = 60;
    }
    return code;
}

/* What an answer that is not 200 means; *retry_s > 0 asks for another try after that
 * many seconds. Alma's own codes (https://developers.exlibrisgroup.com/alma/apis/#error, as
 * real clients meet them): 400 UNAUTHORIZED "API-key not defined or not configured to allow
 * this API." for a key without this API's permission; 403 INVALID_REQUEST or FORBIDDEN for an
 * invalid key or an address outside the key's range; 403 REQUEST_TOO_LARGE; 429
 * PER_SECOND_THRESHOLD and DAILY_THRESHOLD; 500 GENERAL_ERROR; 503 ROUTING_ERROR; and the
 * Jobs API's 400 402215 "Invalid job id format.", 402216 "Invalid job id.", 402218 "Invalid
 * job instance id.". A 401 is a Tomcat page: the institution's domain, not the gateway. */
static int classify(long code, const char *ecode, int tries, long retry_after, long *retry_s)
{
    *retry_s = 0;
    if (code == 429) {
        if (strcmp(ecode, "DAILY_THRESHOLD") == 0 || tries > AB_ALMA_RETRIES) {
            return AB_ALMA_THRESHOLD;
        }
        *retry_s = retry_after > 0 ? retry_after : 1L << (tries - 1);
        return AB_ALMA_THRESHOLD;
    }
    if (code == AB_HTTP_TLS_REFUSED) {
        return AB_ALMA_ERROR; /* TLS verification: retrying changes nothing */
    }
    if (code <= 0 || code >= 500) {
        *retry_s = tries <= DOWN_RETRIES ? tries : 0;
        return AB_ALMA_DOWN;
    }
    if (strcmp(ecode, "REQUEST_TOO_LARGE") == 0) {
        return AB_ALMA_ERROR;
    }
    if (code == 401 || code == 403 || strcmp(ecode, "UNAUTHORIZED") == 0 ||
        strcmp(ecode, "INVALID_REQUEST") == 0) {
        return AB_ALMA_AUTH;
    }
    if (code == 404 || (code == 400 && (strcmp(ecode, "402215") == 0 ||
                                        strcmp(ecode, "402216") == 0 ||
                                        strcmp(ecode, "402218") == 0))) {
        return AB_ALMA_NOT_FOUND;
    }
    return AB_ALMA_ERROR;
}

int ab_alma_api_get(struct ab_alma_api *api, const char *path, cJSON **out, char *err,
                    size_t errlen)
{
    char *url = ab_asprintf("%s%s", api->base, path);
    char why[512] = "", ecode[64] = "";
    int rc = AB_ALMA_OK;
    *out = NULL;
    for (int tries = 1;; tries++) {
        struct ab_http_answer a = {0};
        long retry_s = 0;
        if (cancelled(api)) {
            snprintf(err, errlen, "Alma API %s%s: cancelled", api->base, path);
            rc = AB_ALMA_ERROR;
            break;
        }
        if ((rc = count_call(api, err, errlen)) != AB_ALMA_OK) {
            break;
        }
        long code = perform(api, url, &a, why, sizeof(why));
        if (code == 200) {
            *out = a.body ? cJSON_ParseWithLength(a.body, a.len) : NULL;
            rc = *out ? AB_ALMA_OK : AB_ALMA_BAD_ANSWER;
            if (rc != AB_ALMA_OK) {
                snprintf(err, errlen, "Alma API %s%s: the answer is not JSON", api->base, path);
            }
            ab_http_answer_clear(&a);
            break;
        }
        if (code > 0) {
            error_of(&a, ecode, sizeof(ecode), why, sizeof(why));
        }
        long retry_after = a.retry_after;
        ab_http_answer_clear(&a);
        rc = classify(code, ecode, tries, retry_after, &retry_s);
        char http[32] = "";
        if (code > 0) {
            snprintf(http, sizeof(http), "HTTP %ld%s", code, why[0] ? " " : "");
        }
        snprintf(err, errlen, "Alma API %s%s: %s%s (%s, %d tr%s)", api->base, path, http, why,
                 ab_alma_status_str(rc), tries, tries == 1 ? "y" : "ies");
        if (retry_s <= 0) {
            break;
        }
        ab_warn("%s; trying again in %ld s", err, retry_s);
        sleep_s(api, retry_s);
    }
    free(url);
    return rc;
}

/* ---- the Jobs API ---- */

const char *ab_alma_str(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (cJSON_IsObject(v)) {
        v = cJSON_GetObjectItemCaseSensitive(v, "value");
    }
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int ab_alma_instance_ended(const cJSON *instance)
{
    static const char *const running[] = {"QUEUED", "PENDING", "INITIALIZING", "RUNNING",
                                          "FINALIZING"};
    const char *status = ab_alma_str(instance, "status");
    if (status == NULL || !*status) {
        return 0;
    }
    for (size_t i = 0; i < sizeof(running) / sizeof(running[0]); i++) {
        if (strcasecmp(status, running[i]) == 0) {
            return 0;
        }
    }
    return 1;
}

/* One page: the instances to cb; *total from total_record_count, *n the page's count. */
static int list_page(struct ab_alma_api *api, const char *path, ab_alma_instance_cb cb, void *arg,
                     long *total, long *n, char *err, size_t errlen)
{
    cJSON *page = NULL;
    int rc = ab_alma_api_get(api, path, &page, err, errlen);
    if (rc != AB_ALMA_OK) {
        return rc;
    }
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(page, "total_record_count");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(page, "job_instance");
    if (!cJSON_IsObject(page) || !cJSON_IsNumber(count) || count->valuedouble < 0 ||
        !(list == NULL || cJSON_IsArray(list) || cJSON_IsObject(list))) {
        snprintf(err, errlen, "Alma API GET %s: not a job instance list (no total_record_count "
                              "or job_instance)", path);
        cJSON_Delete(page);
        return AB_ALMA_BAD_ANSWER;
    }
    *total = (long)count->valuedouble;
    *n = 0;
    const cJSON *one = cJSON_IsArray(list) ? list->child : list;
    for (; one && rc == 0; one = cJSON_IsArray(list) ? one->next : NULL) {
        if (!cJSON_IsObject(one) || ab_alma_str(one, "id") == NULL) {
            snprintf(err, errlen, "Alma API GET %s: a job instance without a string id", path);
            rc = AB_ALMA_BAD_ANSWER;
            break;
        }
        (*n)++;
        rc = cb(one, arg);
    }
    cJSON_Delete(page);
    return rc;
}

int ab_alma_job_instances(struct ab_alma_api *api, const char *job, const char *from_day,
                          const char *to_day, ab_alma_instance_cb cb, void *arg, char *err,
                          size_t errlen)
{
    char *ej = ab_http_escape(job);
    int rc = AB_ALMA_OK;
    for (long offset = 0, total = 1, n = 1; rc == AB_ALMA_OK && offset < total && n > 0;
         offset += n) {
        /* dates as YYYY-MM-DD (xs:date), the form clients in production send */
        char *path = ab_asprintf("/almaws/v1/conf/jobs/%s/instances?submit_date_from=%s"
                                 "&submit_date_to=%s&limit=%d&offset=%ld",
                                 ej, from_day, to_day, PAGE, offset);
        rc = list_page(api, path, cb, arg, &total, &n, err, errlen);
        free(path);
    }
    free(ej);
    return rc;
}

int ab_alma_api_probe(struct ab_alma_api *api, const char *job, long timeout_ms, char *msg,
                      size_t len)
{
    char err[512] = "";
    cJSON *out = NULL;
    char *ej = job ? ab_http_escape(job) : NULL;
    char *path = ej ? ab_asprintf("/almaws/v1/conf/jobs/%s/instances?limit=1&offset=0", ej)
                    : ab_strdup("/almaws/v1/conf/jobs?limit=1&offset=0");
    api->timeout_ms = timeout_ms;
    int rc = ab_alma_api_get(api, path, &out, err, sizeof(err));
    int reached = rc == AB_ALMA_OK || rc == AB_ALMA_NOT_FOUND || rc == AB_ALMA_BAD_ANSWER ||
                  rc == AB_ALMA_ERROR;
    if (rc == AB_ALMA_OK) {
        snprintf(msg, len, "alma api %s: reached, key accepted", api->base);
    } else if (reached) {
        snprintf(msg, len, "alma api %s: reached, key accepted (%s)", api->base, err);
    } else if (rc == AB_ALMA_DOWN) {
        snprintf(msg, len, "alma api %s: NOT reached (%s)", api->base, err);
    } else {
        snprintf(msg, len, "alma api %s: reached, but %s (%s)", api->base,
                 rc == AB_ALMA_AUTH ? "the API key was refused" : ab_alma_status_str(rc), err);
    }
    cJSON_Delete(out);
    free(path);
    free(ej);
    return reached ? 0 : -1;
}

int ab_alma_job_instance(struct ab_alma_api *api, const char *job, const char *instance,
                         cJSON **out, char *err, size_t errlen)
{
    char *ej = ab_http_escape(job), *ei = ab_http_escape(instance);
    char *path = ab_asprintf("/almaws/v1/conf/jobs/%s/instances/%s", ej, ei);
    int rc = ab_alma_api_get(api, path, out, err, errlen);
    if (rc == AB_ALMA_OK && (!cJSON_IsObject(*out) || ab_alma_str(*out, "id") == NULL)) {
        snprintf(err, errlen, "Alma API GET %s: not a job instance (no string id)", path);
        cJSON_Delete(*out);
        *out = NULL;
        rc = AB_ALMA_BAD_ANSWER;
    }
    free(path);
    free(ej);
    free(ei);
    return rc;
}
