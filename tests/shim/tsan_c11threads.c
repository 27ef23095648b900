/* ThreadSanitizer support, linked into every program and test binary of a
 * `make SANITIZER=thread` build only (see the Makefile), never into a normal build.
 *
 * librdkafka runs its threads on C11 <threads.h>, and glibc's thrd_create, mtx_lock,
 * cnd_wait... call pthread internals that ThreadSanitizer does not intercept: TSan never
 * learns of librdkafka's threads (it crashes in their first malloc) nor of their locks
 * (false races). Defined in the executable, these take precedence over glibc's for
 * librdkafka.so and go through the intercepted pthread functions. glibc implements the
 * C11 types as the pthread ones (mtx_t is a pthread_mutex_t, cnd_t a pthread_cond_t,
 * thrd_t a pthread_t, once_flag a pthread_once_t), so the casts are what glibc does. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>

struct c11_start {
    thrd_start_t fn;
    void *arg;
};

static void *c11_trampoline(void *p)
{
    struct c11_start st = *(struct c11_start *)p;
    free(p);
    return (void *)(intptr_t)st.fn(st.arg);
}

static int c11_rc(int rc)
{
    return rc == 0           ? thrd_success
           : rc == ETIMEDOUT ? thrd_timedout
           : rc == EBUSY     ? thrd_busy
           : rc == ENOMEM    ? thrd_nomem
                             : thrd_error;
}

int thrd_create(thrd_t *thr, thrd_start_t fn, void *arg)
{
    struct c11_start *st = malloc(sizeof(*st));
    if (st == NULL) {
        return thrd_nomem;
    }
    st->fn = fn;
    st->arg = arg;
    int rc = pthread_create(thr, NULL, c11_trampoline, st);
    if (rc != 0) {
        free(st);
    }
    return c11_rc(rc);
}

int thrd_join(thrd_t thr, int *res)
{
    void *r = NULL;
    int rc = pthread_join(thr, &r);
    if (rc == 0 && res) {
        *res = (int)(intptr_t)r;
    }
    return c11_rc(rc);
}

int mtx_init(mtx_t *m, int type)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    if (type & mtx_recursive) {
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    }
    int rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
    pthread_mutexattr_destroy(&a);
    return c11_rc(rc);
}

int mtx_lock(mtx_t *m)
{
    return c11_rc(pthread_mutex_lock((pthread_mutex_t *)m));
}

int mtx_trylock(mtx_t *m)
{
    return c11_rc(pthread_mutex_trylock((pthread_mutex_t *)m));
}

int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
    return c11_rc(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

int mtx_unlock(mtx_t *m)
{
    return c11_rc(pthread_mutex_unlock((pthread_mutex_t *)m));
}

void mtx_destroy(mtx_t *m)
{
    pthread_mutex_destroy((pthread_mutex_t *)m);
}

int cnd_init(cnd_t *c)
{
    return c11_rc(pthread_cond_init((pthread_cond_t *)c, NULL));
}

int cnd_signal(cnd_t *c)
{
    return c11_rc(pthread_cond_signal((pthread_cond_t *)c));
}

int cnd_broadcast(cnd_t *c)
{
    return c11_rc(pthread_cond_broadcast((pthread_cond_t *)c));
}

int cnd_wait(cnd_t *c, mtx_t *m)
{
    return c11_rc(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}

int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict ts)
{
    return c11_rc(pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}

void cnd_destroy(cnd_t *c)
{
    pthread_cond_destroy((pthread_cond_t *)c);
}

void call_once(once_flag *flag, void (*fn)(void))
{
    pthread_once((pthread_once_t *)flag, fn);
}

/* librdkafka itself is not instrumented: its reference counts are atomics TSan cannot
 * see, so it reports objects freed by one librdkafka thread after use by another. Silence
 * races with a librdkafka frame on either side (added to any TSAN_OPTIONS suppressions). */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:librdkafka.so\n";
}
