/* A minimal unit-test harness: each test file defines test functions, lists them in
 * main() with RUN(), and ends with TEST_SUMMARY() which prints "N passed, N failed" and
 * returns the exit code. A failed CHECK marks the current test failed and continues. */
#ifndef AB_TEST_H
#define AB_TEST_H

#include <stdio.h>
#include <string.h>

static int t_passed, t_failed, t_cur_failed;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);         \
            t_cur_failed = 1;                                                                  \
        }                                                                                      \
    } while (0)

#define CHECK_STR(a, b)                                                                        \
    do {                                                                                       \
        const char *a_ = (a), *b_ = (b);                                                       \
        if (!(a_ && b_ && strcmp(a_, b_) == 0) && !(a_ == NULL && b_ == NULL)) {               \
            fprintf(stderr, "  %s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__,                 \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                   \
            t_cur_failed = 1;                                                                  \
        }                                                                                      \
    } while (0)

#define RUN(fn)                                                                                \
    do {                                                                                       \
        t_cur_failed = 0;                                                                      \
        fn();                                                                                  \
        if (t_cur_failed) {                                                                    \
            t_failed++;                                                                        \
            printf("FAIL %s\n", #fn);                                                          \
        } else {                                                                               \
            t_passed++;                                                                        \
            printf("ok   %s\n", #fn);                                                          \
        }                                                                                      \
        fflush(stdout);                                                                        \
    } while (0)

#define TEST_SUMMARY()                                                                         \
    (printf("%d passed, %d failed\n", t_passed, t_failed), t_failed ? 1 : 0)

#endif
