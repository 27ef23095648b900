/* Tests for core/normalise.c: the strict JSON front end and the XML conversion rules,
 * including the refusals (DOCTYPE, XXE, billion laughs, depth) and silence on stderr.
 * The one-pass JSON scan is checked against the old front end (tests/unit/json_reference.h)
 * on every fixture and fuzz corpus file and on mutants of them.
 * Run from the repo root (fixtures under tests/fixtures). */
#include "normalise.h"

#include "fixtures.h"
#include "json_reference.h"
#include "test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BAD_DIR "tests/fixtures/bad"

static char err[256];

static cJSON *json(const char *s)
{
    err[0] = '\0';
    return ab_normalise_json(s, strlen(s), err, sizeof(err));
}

static cJSON *xml(const char *s)
{
    err[0] = '\0';
    return ab_normalise_xml(s, strlen(s), err, sizeof(err));
}

/* The tree printed without formatting, in a static buffer (for CHECK_STR). */
static const char *flat(const cJSON *t)
{
    static char buf[4096];
    char *s = t != NULL ? cJSON_PrintUnformatted(t) : NULL;
    snprintf(buf, sizeof(buf), "%s", s != NULL ? s : "(null)");
    free(s);
    return buf;
}

/* The fixture BAD_DIR/name, read and handed to check; a file that cannot be read fails. */
static void check_bad_file(const char *name, void (*check)(const char *body, size_t len))
{
    char path[256];
    size_t len;
    snprintf(path, sizeof(path), "%s/%s", BAD_DIR, name);
    char *body = read_file(path, &len);
    if (body == NULL) {
        fprintf(stderr, "  cannot open %s\n", path);
    }
    CHECK(body != NULL);
    if (body != NULL) {
        check(body, len);
    }
    free(body);
}

/* Each of the n bodies is refused by parse, with a message; what names the format. */
static void check_all_refused(cJSON *(*parse)(const char *), const char *what,
                              const char *const *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cJSON *t = parse(bad[i]);
        if (t != NULL) {
            fprintf(stderr, "  accepted malformed %s #%zu\n", what, i);
        }
        CHECK(t == NULL);
        CHECK(err[0] != '\0');
        cJSON_Delete(t);
    }
}

/* ---- JSON ---- */

static void test_json_basic(void)
{
    cJSON *t = json("{\"id\":\"1\",\"n\":[1,2.5,-3e2],\"b\":true,\"z\":null}");
    CHECK(t != NULL);
    CHECK_STR(flat(t), "{\"id\":\"1\",\"n\":[1,2.5,-300],\"b\":true,\"z\":null}");
    cJSON_Delete(t);
}

static void test_json_not_nul_terminated(void)
{
    const char buf[] = {'{', '"', 'a', '"', ':', '1', '}', 'x', 'y', 'z'};
    cJSON *t = ab_normalise_json(buf, 7, err, sizeof(err));
    CHECK(t != NULL);
    cJSON_Delete(t);
    t = ab_normalise_json(buf, sizeof(buf), err, sizeof(err));
    CHECK(t == NULL);
}

static void test_json_bom(void)
{
    cJSON *t = json("\xef\xbb\xbf{\"a\":1}");
    CHECK(t != NULL);
    CHECK_STR(flat(t), "{\"a\":1}");
    cJSON_Delete(t);
    CHECK(json("\xef\xbb\xbf\xef\xbb\xbf{\"a\":1}") == NULL); /* one BOM only */
    CHECK(json("{\"a\":1}\xef\xbb\xbf") == NULL);
    CHECK(json("\xef\xbb\xbf") == NULL);
    CHECK(strstr(err, "empty") != NULL);
}

static void test_json_malformed(void)
{
    static const char *bad[] = {
        "",
        "   ",
        "{",
        "{\"a\":1",
        "{\"a\":1} x",
        "{\"a\":1}{}",
        "{\"a\":1,}",
        "{'a':1}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":+1}",
        "{\"a\":1e}",
        "{\"a\":-}",
        "{\"a\":\"x\ny\"}",
        "{\"a\":\"x\ty\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\xc3\x28\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"unterminated}",
        "{\"a\":1}\x01",
        "{\x0b\"a\":1}",
        "/* c */{\"a\":1}",
        "{\"a\":NaN}",
        "{\"a\":tru}",
    };
    check_all_refused(json, "JSON", bad, sizeof(bad) / sizeof(bad[0]));
    /* an embedded NUL is not the end of the body */
    CHECK(ab_normalise_json("{}\0{}", 5, err, sizeof(err)) == NULL);
    CHECK(ab_normalise_json("{\"a\":\"x\0\"}", 10, err, sizeof(err)) == NULL);
}

static void test_json_error_has_no_content(void)
{
    CHECK(json("{\"name\":\"Jane Doe\", \"pin\": 1234x}") == NULL);
    CHECK(strstr(err, "Jane") == NULL && strstr(err, "1234") == NULL);
    CHECK(strstr(err, "byte") != NULL);
    CHECK(json("{\"secret\":\"Jane\ttab\"}") == NULL);
    CHECK(strstr(err, "Jane") == NULL);
}

static void test_json_depth(void)
{
    char *ok = nested("[", "1", "]", AB_MAX_DEPTH);
    char *deep = nested("[", "1", "]", AB_MAX_DEPTH + 1);
    char *very = nested("{\"a\":", "1", "}", 1000);
    char *in_string = nested("[", "\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                                  "[[[[[[[[[[[[[[[[[\\\"[[[[\"",
                             "]", 3);
    cJSON *t = json(ok);
    CHECK(t != NULL);
    cJSON_Delete(t);
    CHECK(json(deep) == NULL);
    CHECK_STR(err, "JSON nested deeper than 64 levels");
    CHECK(json(very) == NULL);
    CHECK_STR(err, "JSON nested deeper than 64 levels");
    t = json(in_string); /* brackets inside strings (and after \") do not count */
    CHECK(t != NULL);
    cJSON_Delete(t);
    free(ok);
    free(deep);
    free(very);
    free(in_string);
}

static void test_json_utf8_kept(void)
{
    cJSON *t = json("{\"s\":\"M\xc3\xbcller \xe2\x80\x93 \xe6\x9d\xb1\xe4\xba\xac "
                    "\xf0\x9f\x93\x9a\","
                    "\"e\":\"\\u00fc\\ud83d\\udcda\"}");
    CHECK(t != NULL);
    CHECK_STR(cJSON_GetObjectItem(t, "s")->valuestring,
              "M\xc3\xbcller \xe2\x80\x93 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x93\x9a");
    CHECK_STR(cJSON_GetObjectItem(t, "e")->valuestring, "\xc3\xbc\xf0\x9f\x93\x9a");
    cJSON_Delete(t);
}

static void check_json_refused(const char *body, size_t len)
{
    CHECK(ab_normalise_json(body, len, err, sizeof(err)) == NULL);
}

static void test_json_bad_fixtures(void)
{
    static const char *files[] = {"bad_utf8.json",   "leading_zero.json", "raw_newline.json",
                                  "trailing_garbage.json", "truncated.json"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        check_bad_file(files[i], check_json_refused);
    }
}

/* ---- the one-pass scan against the old front end (tests/unit/json_reference.h) ---- */

static enum ab_json_kind kind_of(const cJSON *item)
{
    return item == NULL               ? AB_JSON_ABSENT
           : cJSON_IsString(item)     ? AB_JSON_STRING
           : cJSON_IsNumber(item)     ? AB_JSON_NUMBER
           : cJSON_IsObject(item)     ? AB_JSON_OBJECT
           : cJSON_IsArray(item)      ? AB_JSON_ARRAY
           : cJSON_IsNull(item)       ? AB_JSON_NULL
                                      : AB_JSON_LITERAL;
}

/* Whether two trees print the same (cJSON_Compare looks members up by name, so it calls
 * trees with a repeated name different from themselves). */
static int same_tree(const cJSON *a, const cJSON *b)
{
    char *x = cJSON_PrintUnformatted(a), *y = cJSON_PrintUnformatted(b);
    int same = x != NULL && y != NULL && strcmp(x, y) == 0;
    free(x);
    free(y);
    return same;
}

/* Whether the span the scan found in out says what the tree's item says. */
static int span_matches(const char *out, struct ab_json_span span, const cJSON *item)
{
    if (span.kind != kind_of(item)) {
        return 0;
    }
    if (span.kind == AB_JSON_STRING) {
        char *d = ab_json_string_decode(out + span.off, span.len, NULL);
        int same = strcmp(d, item->valuestring) == 0; /* cJSON's strings end at a \u0000 */
        free(d);
        return same;
    }
    if (span.kind == AB_JSON_NUMBER) {
        char *t = strndup(out + span.off, span.len);
        int same = strtod(t, NULL) == item->valuedouble;
        free(t);
        return same;
    }
    if (span.kind == AB_JSON_OBJECT || span.kind == AB_JSON_ARRAY) {
        cJSON *t = cJSON_ParseWithLength(out + span.off, span.len);
        int same = same_tree(t, item);
        cJSON_Delete(t);
        return same;
    }
    return 1;
}

/* The envelope the scan found against the tree: first members, their codes, repeats. */
static const char *envelope_differs(const char *out, const struct ab_json_envelope *env,
                                    const cJSON *tree)
{
    int any_repeated = 0;
    for (int k = 0; k < AB_ENV_COUNT; k++) {
        const char *name = ab_envelope_names[k];
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(tree, name); /* the first */
        int count = 0;
        for (const cJSON *m = tree->child; m != NULL; m = m->next) {
            count += strcmp(m->string, name) == 0;
        }
        any_repeated |= count > 1;
        if (count > 1 && env->repeated < 0) {
            return "a repeated envelope name not found";
        }
        if (!span_matches(out, env->field[k], item)) {
            return "an envelope value differs";
        }
        const cJSON *code = cJSON_IsObject(item) && (k == AB_ENV_EVENT || k == AB_ENV_INSTITUTION)
                                ? cJSON_GetObjectItemCaseSensitive(item, "value")
                                : NULL;
        if (!span_matches(out, env->code[k], code)) {
            return "a code value differs";
        }
    }
    if (!any_repeated && env->repeated >= 0) {
        return "a repeat found where there is none";
    }
    return NULL;
}

/* NULL when the old front end and the scan agree on body: both refuse it, or both accept
 * it with the same minified text, the same tree and the same envelope; else what differs. */
static const char *scan_differs(const char *body, size_t len)
{
    char e1[256], e2[256];
    struct ab_json_envelope env;
    const char *why = NULL;
    size_t mlen = 0;
    cJSON *ref = ref_normalise_json(body, len, e1, sizeof(e1));
    char *out = malloc(len + 1), *min = NULL;
    long n = ab_normalise_json_scan(body, len, out, &env, e2, sizeof(e2));
    cJSON *tree = NULL;
    if ((ref != NULL) != (n >= 0)) {
        why = ref != NULL ? "accepted only by the old front end" : "accepted only by the scan";
        goto done;
    }
    if (ref == NULL) {
        /* the depth bound is reported the same way */
        /* both refuse; a depth refusal of the scan is one of the old front end too (which
         * checked the depth before the grammar, so it may name the depth where the scan
         * names an earlier grammar fault) */
        why = strstr(e2, "deeper") != NULL && strstr(e1, "deeper") == NULL
                  ? "depth refusals differ"
                  : NULL;
        goto done;
    }
    min = ref_minify(body, len, &mlen);
    tree = cJSON_ParseWithLength(out, (size_t)n);
    if (mlen != (size_t)n || memcmp(min, out, mlen) != 0) {
        why = "minified differently";
    } else if (!same_tree(tree, ref)) {
        why = "the trees differ";
    } else if (env.root != kind_of(ref)) {
        why = "the root kind differs";
    } else if (cJSON_IsObject(ref)) {
        why = envelope_differs(out, &env, ref);
    }
done:
    cJSON_Delete(ref);
    cJSON_Delete(tree);
    free(out);
    free(min);
    return why;
}

static void check_same(const char *what, const char *body, size_t len)
{
    const char *why = scan_differs(body, len);
    if (why != NULL) {
        fprintf(stderr, "  %s: %s\n", what, why);
    }
    CHECK(why == NULL);
}

static const char *const diff_dirs[] = {"tests/fixtures/alma", "tests/fixtures/bad",
                                        "tests/fuzz/corpus/json"};

static const char *const diff_inline[] = {
    "{\"id\":\"1\",\"id\":\"2\",\"action\":\"A\"}",
    "{\"\\u0069d\":5,\"action\":\"A\",\"id\":6}",
    "{\"id\":\"a\\u0000b\",\"action\":\"A\\u0000B\"}",
    "{\"event\":{\"value\":\"E\",\"value\":\"F\",\"desc\":\"d\"},\"institution\":{\"x\":{\"value\":1}}}",
    "{\"event\":{\"\\u0076alue\":\"E\"},\"institution\":[{\"value\":\"I\"}]}",
    "{\"s\":\"\\ud83d\\udcda\\u00e9\\\"\\\\\\/\\b\\f\\n\\r\\t\"}",
    "{\"s\":\"\\ud83d\"}", "{\"s\":\"\\udcda\"}", "{\"s\":\"\\ud83d\\u0041\"}",
    "[1,-0,0.5,1e5,1E+5,-1.5e-5,123456789012345678901234567890]",
    "  {  \"a\" : [ ] , \"b\" : { } }  ", "[]",
    "{\r\n\t\t\"a\" :\n        [\n            1 ,     2\n        ]\n    ,\"b\":\"    \"}        ", "{}", "\"x\"", "1", "true", "null", "",
    "\xef\xbb\xbf{}", "{\"a\":1,}", "[1,]", "{\"a\"}", "{\"a\":}", "{,}", "[,1]", "{\"a\":1 \"b\":2}",
    "{\"a\":[1}", "{\"a\":{]}", "[1]]", "}", "{\"a\":truex}", "{\"a\":nul}", "[01]", "[1.]", "[-]",
    "[\"a\\x\"]", "[\"\\u12G4\"]", "[\"\xc3\"]", "[\"\xed\xa0\x80\"]", "{\"time\":\"x\",\"time\":1}",
};

/* Each fixture and corpus file, and the bodies above, unchanged and mutated: the scan
 * accepts exactly what the old front end accepted and gives the same result. */
static void test_json_scan_matches_old_front_end(void)
{
    static const char interesting[] = "\"\\{}[],: 01-.eEutfn\x00\x1f\x7f\xc3\xa9\xed\xf4\x80";
    unsigned long long seed = 88172645463325252ULL;
    size_t files = 0, mutants = 0;
    const char *env_rounds = getenv("AB_DIFF_MUTANTS"); /* more for a longer one-off run */
    int rounds = env_rounds != NULL ? atoi(env_rounds) : 200;
    for (size_t d = 0; d < sizeof(diff_dirs) / sizeof(diff_dirs[0]); d++) {
        size_t n = 0;
        char **paths = dir_paths(diff_dirs[d], "", &n);
        files += n;
        for (size_t i = 0; i < n; i++) {
            size_t len = 0;
            char *body = read_file(paths[i], &len);
            if (body == NULL) {
                continue;
            }
            check_same(paths[i], body, len);
            char *m = malloc(len + 128);
            for (int r = 0; r < rounds; r++, mutants++) {
                size_t ml = len;
                memcpy(m, body, len);
                for (int k = 0; k < 1 + r % 3; k++) {
                    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
                    size_t at = ml ? seed % ml : 0;
                    unsigned char c = (unsigned char)interesting[(seed >> 20) % (sizeof(interesting) - 1)];
                    switch ((seed >> 40) % 4) {
                    case 0:
                        if (ml) {
                            m[at] = (char)c;
                        }
                        break;
                    case 1:
                        memmove(m + at + 1, m + at, ml - at);
                        m[at] = (char)c;
                        ml++;
                        break;
                    case 2:
                        if (ml) {
                            memmove(m + at, m + at + 1, ml - at - 1);
                            ml--;
                        }
                        break;
                    default: { /* a copy of up to 32 bytes from elsewhere: repeated keys */
                        size_t from = ml ? (seed >> 8) % ml : 0, cl = (seed >> 50) % 33;
                        cl = cl < ml - from ? cl : ml - from;
                        memmove(m + at + cl, m + at, ml - at);
                        memmove(m + at, m + (from < at ? from : from + cl), cl);
                        ml += cl;
                    }
                    }
                }
                char what[512];
                snprintf(what, sizeof(what), "%s mutant %d", paths[i], r);
                check_same(what, m, ml);
            }
            free(m);
            free(body);
        }
        free_paths(paths);
    }
    CHECK(files >= 30);
    for (size_t i = 0; i < sizeof(diff_inline) / sizeof(diff_inline[0]); i++) {
        check_same(diff_inline[i], diff_inline[i], strlen(diff_inline[i]));
    }
    printf("  %zu files, %zu mutants, %zu bodies compared\n", files, mutants,
           sizeof(diff_inline) / sizeof(diff_inline[0]));
}

/* ---- XML conversion rules ---- */

static void test_xml_rules(void)
{
    cJSON *t = xml("<webhook>\n"
                   "  <id>42</id>\n"
                   "  <institution desc=\"American University\">01WRLC_AMU</institution>\n"
                   "  <event/>\n"
                   "  <empty></empty>\n"
                   "  <obj><a>x</a><b>y</b></obj>\n"
                   "  <list>1</list>\n"
                   "  <other>o</other>\n"
                   "  <list>2</list>\n"
                   "  <flag>true</flag>\n"
                   "  <link href=\"/x\"><rel>self</rel></link>\n"
                   "  <code name=\"n\" desc=\"d\">C</code>\n"
                   "  <nodesc desc=\"\"/>\n"
                   "</webhook>");
    CHECK(t != NULL);
    CHECK_STR(flat(t), "{\"id\":\"42\","
                       "\"institution\":{\"value\":\"01WRLC_AMU\","
                       "\"desc\":\"American University\"},"
                       "\"event\":null,\"empty\":null,\"obj\":{\"a\":\"x\",\"b\":\"y\"},"
                       "\"list\":[\"1\",\"2\"],\"other\":\"o\",\"flag\":\"true\","
                       "\"link\":{\"href\":\"/x\",\"rel\":\"self\"},"
                       "\"code\":{\"value\":\"C\",\"name\":\"n\",\"desc\":\"d\"},"
                       "\"nodesc\":{\"value\":\"\",\"desc\":\"\"}}");
    cJSON_Delete(t);
}

static void test_xml_text_kept_exactly(void)
{
    cJSON *t = xml("<webhook><a>  two  spaces\n\tand a tab  </a><b> </b>"
                   "<c>&lt;&amp;&gt;&quot;&apos;&#233;&#x1F4DA;</c>"
                   "<d><![CDATA[<record a=\"1\">]]>&amp;<![CDATA[</record>]]></d></webhook>");
    CHECK(t != NULL);
    CHECK_STR(cJSON_GetObjectItem(t, "a")->valuestring, "  two  spaces\n\tand a tab  ");
    CHECK_STR(cJSON_GetObjectItem(t, "b")->valuestring, " ");
    CHECK_STR(cJSON_GetObjectItem(t, "c")->valuestring, "<&>\"'\xc3\xa9\xf0\x9f\x93\x9a");
    CHECK_STR(cJSON_GetObjectItem(t, "d")->valuestring, "<record a=\"1\">&</record>");
    cJSON_Delete(t);
}

static void test_xml_namespaces_comments_nil(void)
{
    cJSON *t = xml("<?xml version=\"1.0\"?><!-- c -->"
                   "<w:webhook xmlns:w=\"http://com/exlibris/urm/general/xmlbeans\" "
                   "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
                   "xsi:schemaLocation=\"x y\">"
                   "<w:id>1</w:id><!-- c --><?pi x?><action xmlns=\"urn:other\">LOAN</action>"
                   "<gone xsi:nil=\"true\"><x>1</x></gone><typed xsi:type=\"t\">v</typed>"
                   "</w:webhook>");
    CHECK(t != NULL);
    CHECK_STR(flat(t), "{\"id\":\"1\",\"action\":\"LOAN\",\"gone\":null,\"typed\":\"v\"}");
    cJSON_Delete(t);
}

static void test_xml_mixed_and_root(void)
{
    cJSON *t = xml("<webhook version=\"2\">stray<a>1</a></webhook>");
    CHECK_STR(flat(t), "{\"value\":\"stray\",\"version\":\"2\",\"a\":\"1\"}");
    cJSON_Delete(t);
    t = xml("<webhook/>"); /* the root is always an object */
    CHECK_STR(flat(t), "{}");
    cJSON_Delete(t);
    t = xml("<webhook>  \n </webhook>");
    CHECK_STR(flat(t), "{}");
    cJSON_Delete(t);
    t = xml("<webhook><value>v</value><x value=\"a\">b</x></webhook>");
    CHECK_STR(flat(t), "{\"value\":\"v\",\"x\":{\"value\":[\"b\",\"a\"]}}");
    cJSON_Delete(t);
}

static void test_xml_many_repeats(void)
{
    /* many siblings, repeated and distinct, interleaved: arrays keep document order */
    size_t n = 20000;
    char *s = malloc(n * 24 + 64), *p = s;
    p += sprintf(p, "<webhook>");
    for (size_t i = 0; i < n; i++) {
        p += sprintf(p, i % 2 ? "<r>%zu</r>" : "<k%zu/>", i);
    }
    sprintf(p, "</webhook>");
    cJSON *t = xml(s);
    CHECK(t != NULL);
    cJSON *r = cJSON_GetObjectItem(t, "r");
    CHECK(cJSON_IsArray(r) && cJSON_GetArraySize(r) == (int)(n / 2));
    CHECK_STR(cJSON_GetArrayItem(r, 0)->valuestring, "1");
    CHECK_STR(cJSON_GetArrayItem(r, 1)->valuestring, "3");
    CHECK(cJSON_GetArraySize(t) == (int)(n / 2 + 1));
    CHECK_STR(t->child->string, "k0");
    CHECK_STR(t->child->next->string, "r");
    cJSON_Delete(t);
    free(s);
}

static void test_xml_encodings(void)
{
    /* Shift_JIS goes through iconv: the NUL check must not misjudge its byte count */
    cJSON *t = xml("<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><w><a>\x93\x8c\x8b\x9e</a></w>");
    CHECK(t != NULL);
    CHECK_STR(t ? cJSON_GetObjectItem(t, "a")->valuestring : NULL, "\xe6\x9d\xb1\xe4\xba\xac");
    cJSON_Delete(t);
    /* UTF-16 holds NUL bytes: they are not NUL characters */
    static const char utf16[] = "\xff\xfe<\0w\0>\0\xfc\0<\0/\0w\0>\0";
    t = ab_normalise_xml(utf16, sizeof(utf16) - 1, err, sizeof(err));
    CHECK_STR(flat(t), "{\"value\":\"\xc3\xbc\"}");
    cJSON_Delete(t);
    t = xml("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><w><a>M\xfcller</a></w>");
    CHECK(t != NULL);
    CHECK_STR(cJSON_GetObjectItem(t, "a")->valuestring, "M\xc3\xbcller");
    cJSON_Delete(t);
    t = xml("\xef\xbb\xbf<w><a>\xe6\x9d\xb1\xe4\xba\xac</a></w>");
    CHECK(t != NULL);
    CHECK_STR(cJSON_GetObjectItem(t, "a")->valuestring, "\xe6\x9d\xb1\xe4\xba\xac");
    cJSON_Delete(t);
}

/* ---- XML refusals ---- */

static int contains_passwd(const char *s)
{
    return s != NULL && (strstr(s, "root:") != NULL || strstr(s, "/bin/") != NULL);
}

static void check_doctype_refused(const char *body, size_t len)
{
    err[0] = '\0';
    cJSON *t = ab_normalise_xml(body, len, err, sizeof(err));
    CHECK(t == NULL);
    CHECK_STR(err, "XML with a DOCTYPE is not accepted");
    CHECK(!contains_passwd(err));
    cJSON_Delete(t);
}

static void test_xml_doctype_refused(void)
{
    static const char *bodies[] = {
        "<!DOCTYPE webhook><webhook><id>1</id></webhook>",
        "<!DOCTYPE webhook [<!ELEMENT webhook ANY>]><webhook/>",
        "<!DOCTYPE webhook [<!ENTITY e \"x\">]><webhook>&e;</webhook>",
        "<!DOCTYPE webhook PUBLIC \"-//x//y\" \"http://example.invalid/x.dtd\"><webhook/>",
        "<!DOCTYPE webhook [<!ATTLIST webhook a CDATA \"d\">]><webhook/>",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        check_doctype_refused(bodies[i], strlen(bodies[i]));
    }
}

static void test_xml_xxe(void)
{
    static const char *files[] = {"xxe_entity.xml", "xxe_external_subset.xml",
                                  "xxe_parameter_entity.xml"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        check_bad_file(files[i], check_doctype_refused);
    }
    /* without a DOCTYPE an entity cannot be declared, so a reference is just an error */
    cJSON *t = xml("<webhook><note>&xxe;</note></webhook>");
    CHECK(t == NULL);
    CHECK(!contains_passwd(err));
}

static void test_xml_billion_laughs(void)
{
    check_bad_file("billion_laughs.xml", check_doctype_refused);
    /* quadratic blow-up through one big entity, also refused before expansion */
    size_t n = 100000;
    char *q = malloc(2 * n + 256), *p = q;
    p += sprintf(p, "<!DOCTYPE w [<!ENTITY a \"");
    memset(p, 'a', n), p += n;
    p += sprintf(p, "\">]><w>");
    for (size_t i = 0; i < 1000; i++) {
        p += sprintf(p, "&a;");
    }
    sprintf(p, "</w>");
    check_doctype_refused(q, strlen(q));
    free(q);
}

static void test_xml_depth(void)
{
    char *ok = nested("<a>", "x", "</a>", AB_MAX_DEPTH);
    char *deep = nested("<a>", "x", "</a>", AB_MAX_DEPTH + 1);
    char *very = nested("<a>", "", "</a>", 1000);
    char *huge = nested("<a>", "", "", 100000); /* unclosed as well */
    cJSON *t = xml(ok);
    CHECK(t != NULL);
    cJSON_Delete(t);
    CHECK(xml(deep) == NULL);
    CHECK_STR(err, "XML nested deeper than 64 levels");
    CHECK(xml(very) == NULL);
    CHECK_STR(err, "XML nested deeper than 64 levels");
    CHECK(xml(huge) == NULL);
    CHECK_STR(err, "XML nested deeper than 64 levels");
    free(ok);
    free(deep);
    free(very);
    free(huge);
}

static void test_xml_malformed(void)
{
    static const char *bad[] = {
        "",
        "   ",
        "not xml",
        "<webhook>",
        "<webhook></webhoo>",
        "<webhook/><extra/>",
        "<webhook a=\"1\" a=\"2\"/>",
        "<webhook><p:x>1</p:x></webhook>",
        "<webhook>\xc3\x28</webhook>",
        "<?xml version=\"1.0\" encoding=\"NO-SUCH-ENCODING\"?><webhook/>",
        "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><webhook><id>\x81</id></webhook>",
        "<webhook>\x01</webhook>",
        "<webhook><![CDATA[x</webhook>",
    };
    check_all_refused(xml, "XML", bad, sizeof(bad) / sizeof(bad[0]));
    CHECK(ab_normalise_xml("<a/>\0<b/>", 9, err, sizeof(err)) == NULL);
}

static void test_xml_error_has_no_content(void)
{
    CHECK(xml("<webhook><JaneDoe>1</JaneDoeX></webhook>") == NULL);
    CHECK(strstr(err, "Jane") == NULL);
    CHECK(strstr(err, "line 1") != NULL);
    CHECK(xml("<webhook><n>&Jane;</n></webhook>") == NULL);
    CHECK(strstr(err, "Jane") == NULL);
}

/* libxml2 must print nothing: its messages quote names and bytes from the body. */
static void test_xml_silent(void)
{
    static const char *bad[] = {
        "<webhook></webhoo>",
        "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><webhook><id>\x81</id></webhook>",
        "<?xml version=\"1.0\" encoding=\"BIG5\"?><w>\xa4\x40\xff\xfe</w>",
        "\x4c\x6f\xa7\x94<webhook/>",
        "<!DOCTYPE w SYSTEM \"file:///etc/passwd\"><w/>",
        "<w>&undeclared;</w>",
        "<w>\xc3\x28</w>",
    };
    char path[] = "/tmp/ab_normalise_stderr_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON_Delete(xml(bad[i]));
    }
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t size = lseek(fd, 0, SEEK_END);
    close(fd);
    unlink(path);
    CHECK(size == 0);
}

static void *parse_loop(void *arg)
{
    long ok = 0;
    for (int i = 0; i < 300; i++) {
        char e[128];
        const char *good = "<webhook><id>1</id><a>x</a></webhook>";
        const char *bad = "<?xml version=\"1.0\" encoding=\"SHIFT_JIS\"?><w><id>\x81</id></w>";
        cJSON *t = ab_normalise_xml(good, strlen(good), e, sizeof(e));
        ok += t != NULL;
        cJSON_Delete(t);
        t = ab_normalise_xml(bad, strlen(bad), e, sizeof(e));
        ok += t == NULL && strstr(e, "encoding") != NULL;
        cJSON_Delete(t);
    }
    return (void *)ok;
}

static void test_xml_threads(void)
{
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        CHECK(pthread_create(&th[i], NULL, parse_loop, NULL) == 0);
    }
    for (int i = 0; i < 4; i++) {
        void *ok = NULL;
        pthread_join(th[i], &ok);
        CHECK((long)ok == 600);
    }
}

int main(void)
{
    ab_normalise_init();
    RUN(test_json_basic);
    RUN(test_json_not_nul_terminated);
    RUN(test_json_bom);
    RUN(test_json_malformed);
    RUN(test_json_error_has_no_content);
    RUN(test_json_depth);
    RUN(test_json_utf8_kept);
    RUN(test_json_bad_fixtures);
    RUN(test_json_scan_matches_old_front_end);
    RUN(test_xml_rules);
    RUN(test_xml_text_kept_exactly);
    RUN(test_xml_namespaces_comments_nil);
    RUN(test_xml_mixed_and_root);
    RUN(test_xml_many_repeats);
    RUN(test_xml_encodings);
    RUN(test_xml_doctype_refused);
    RUN(test_xml_xxe);
    RUN(test_xml_billion_laughs);
    RUN(test_xml_depth);
    RUN(test_xml_malformed);
    RUN(test_xml_error_has_no_content);
    RUN(test_xml_silent);
    RUN(test_xml_threads);
    return TEST_SUMMARY();
}
