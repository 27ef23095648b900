/* Tests for core/route.c. */
#include "route.h"

#include "event.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

/* struct ab_event holds (char *): a compound literal gives a writable copy of a literal. */
#define S(lit) ((char[]){lit})

static struct ab_event loan = {
    .id = S("02348293470001234"),
    .action = S("LOAN"),
    .event = S("LOAN_CREATED"),
    .institution = S("01ABC_INST"),
};

/* Compile tmpl, expand it for ev and compare with want; frees everything. */
static void expect(const char *tmpl, const struct ab_event *ev, const char *want)
{
    char err[256] = "";
    struct ab_route *r = ab_route_compile(tmpl, err, sizeof(err));
    CHECK(r != NULL);
    if (r == NULL) {
        fprintf(stderr, "  compile \"%s\": %s\n", tmpl, err);
        return;
    }
    char *got = ab_route_expand(r, ev);
    CHECK_STR(got, want);
    free(got);
    ab_route_free(r);
}

/* Compile tmpl, expect failure with exactly want_err. */
static void expect_error(const char *tmpl, const char *want_err)
{
    char err[256] = "";
    struct ab_route *r = ab_route_compile(tmpl, err, sizeof(err));
    CHECK(r == NULL);
    CHECK_STR(err, want_err);
    ab_route_free(r);
}

static void test_placeholders(void)
{
    expect("alma.{action}", &loan, "alma.loan");
    expect("{event}", &loan, "loan_created");
    expect("{institution}", &loan, "01abc_inst");
    expect("{id}", &loan, "02348293470001234");
    expect("alma.{institution}.{action}.{event}", &loan, "alma.01abc_inst.loan.loan_created");
    expect("{action}{event}", &loan, "loanloan_created");
    expect("{id}-{id}", &loan, "02348293470001234-02348293470001234");
}

static void test_literal_text(void)
{
    expect("alma-events", &loan, "alma-events");
    /* literal text is copied as written, only values are normalised */
    expect("Alma/Events:{action}", &loan, "Alma/Events:loan");
    expect("", &loan, "");
}

static void test_absent_values(void)
{
    struct ab_event job = {.id = S("6001"), .action = S("JOB_END")};
    expect("alma.{action}.{event}", &job, "alma.job_end.none");
    expect("{institution}", &job, "none");
    struct ab_event empty = {.id = S(""), .action = S("USER"), .event = S("")};
    expect("{id}/{event}", &empty, "none/none");
    expect("alma.{action}.{id}", NULL, "alma.none.none");
}

static void test_sanitising(void)
{
    struct ab_event odd = {
        .id = S("12 34"),
        .action = S("New/Action"),
        .event = S("A.B:C-D_E"),
        .institution = S("M\xc3\xbcnchen"), /* "München": 2 bytes, 2 underscores */
    };
    expect("{id}", &odd, "12_34");
    expect("{action}", &odd, "new_action");
    expect("{event}", &odd, "a.b:c-d_e");
    expect("{institution}", &odd, "m__nchen");
    struct ab_event all = {.action = S("{}*#?! \t\"'")};
    expect("x.{action}", &all, "x.__________");
}

static void test_unknown_placeholder(void)
{
    expect_error("alma.{foo}", "unknown placeholder {foo} in route \"alma.{foo}\" (known: "
                               "{action} {event} {institution} {id} {record})");
    expect_error("{}", "unknown placeholder {} in route \"{}\" (known: {action} {event} "
                       "{institution} {id} {record})");
    /* placeholders are case-sensitive */
    expect_error("{ACTION}", "unknown placeholder {ACTION} in route \"{ACTION}\" (known: "
                             "{action} {event} {institution} {id} {record})");
    expect_error("{ action }", "unknown placeholder { action } in route \"{ action }\" (known: "
                               "{action} {event} {institution} {id} {record})");
}

static void test_unbalanced(void)
{
    expect_error("alma.{action", "unbalanced '{' at offset 5 in route \"alma.{action\"");
    expect_error("alma.action}", "unbalanced '}' at offset 11 in route \"alma.action}\"");
    expect_error("{", "unbalanced '{' at offset 0 in route \"{\"");
    expect_error("}", "unbalanced '}' at offset 0 in route \"}\"");
    expect_error("{{action}}", "unbalanced '{' at offset 0 in route \"{{action}}\"");
    expect_error("{action}}", "unbalanced '}' at offset 8 in route \"{action}}\"");
    expect_error("{act{id}", "unbalanced '{' at offset 0 in route \"{act{id}\"");
}

static void test_reuse(void)
{
    /* one compiled route, many events */
    char err[256];
    struct ab_route *r = ab_route_compile("alma.{action}", err, sizeof(err));
    struct ab_event item = {.id = S("1"), .action = S("ITEM"), .event = S("ITEM_UPDATED")};
    char *a = ab_route_expand(r, &loan);
    char *b = ab_route_expand(r, &item);
    CHECK_STR(a, "alma.loan");
    CHECK_STR(b, "alma.item");
    free(a);
    free(b);
    ab_route_free(r);
    ab_route_free(NULL);
}

static void test_small_errbuf(void)
{
    char err[16];
    CHECK(ab_route_compile("alma.{unknown_placeholder}", err, sizeof(err)) == NULL);
    CHECK(strlen(err) == sizeof(err) - 1);
}

/* Keys keep the values as they are: "{id}" is the webhook id unchanged (issue 8 item 9). */
static void test_raw_for_keys(void)
{
    struct ab_event ev = {.id = S("KS1 Ä:x"), .action = S("LOAN")};
    char err[64];
    struct ab_route *r = ab_route_compile("{id}", err, sizeof(err));
    char *raw = ab_route_expand_raw(r, &ev), *topic = ab_route_expand(r, &ev);
    CHECK_STR(raw, "KS1 Ä:x");
    CHECK_STR(topic, "ks1___:x");
    free(raw);
    free(topic);
    ab_route_free(r);
    r = ab_route_compile("{institution}-{action}", err, sizeof(err));
    raw = ab_route_expand_raw(r, &ev);
    CHECK_STR(raw, "none-LOAN");
    free(raw);
    ab_route_free(r);
}

int main(void)
{
    RUN(test_placeholders);
    RUN(test_literal_text);
    RUN(test_absent_values);
    RUN(test_sanitising);
    RUN(test_unknown_placeholder);
    RUN(test_unbalanced);
    RUN(test_reuse);
    RUN(test_small_errbuf);
    RUN(test_raw_for_keys);
    return TEST_SUMMARY();
}
