/* Runs a fuzz driver's LLVMFuzzerTestOneInput() without libFuzzer, so that gcc builds can
 * replay corpora and crash files:
 *
 *   replay_json [-t SECONDS] [-s SEED] [-d DICT] PATH...
 *
 * Each PATH is a file or a directory of files (not recursive). Without -t every input
 * runs once. With -t the inputs are then mutated at random for SECONDS (byte flips,
 * insertions, deletions, duplications, splices, dictionary tokens from a libFuzzer-style
 * DICT file): a poor man's fuzzer for machines without clang. When a mutated input
 * crashes (signal, sanitizer report or abort) it is written to ./crash-replay first, so
 * that it can be replayed and minimised. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Present when linked with a sanitizer runtime (gcc's and clang's). */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

#define MAX_INPUT_LEN (256 * 1024)

struct buf {
    uint8_t *p;
    size_t n;
};

static struct buf *inputs, *tokens;
static size_t n_inputs, n_tokens;

static void push(struct buf **arr, size_t *n, const uint8_t *p, size_t len)
{
    *arr = realloc(*arr, (*n + 1) * sizeof(**arr));
    (*arr)[*n].p = malloc(len ? len : 1);
    memcpy((*arr)[*n].p, p, len);
    (*arr)[*n].n = len;
    (*n)++;
}

static int load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    uint8_t *data = malloc(MAX_INPUT_LEN);
    size_t n = fread(data, 1, MAX_INPUT_LEN, f);
    fclose(f);
    push(&inputs, &n_inputs, data, n);
    free(data);
    return 0;
}

static int load_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        return load_file(path);
    }
    DIR *d = opendir(path);
    struct dirent *e;
    int rc = 0;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char full[4096];
        snprintf(full, sizeof(full), "%s/%s", path, e->d_name);
        if (e->d_name[0] != '.' && stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            rc |= load_file(full);
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    return rc;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

/* A libFuzzer dictionary: one "token" per line, with \\, \" and \xNN escapes. */
static void load_dict(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        char *a = strchr(line, '"'), *b = strrchr(line, '"');
        if (line[0] == '#' || a == NULL || b == a) {
            continue;
        }
        uint8_t tok[1024];
        size_t n = 0;
        for (char *p = a + 1; p < b; p++) {
            if (*p == '\\' && p[1] == 'x' && p + 3 < b) {
                tok[n++] = (uint8_t)(hexval(p[2]) * 16 + hexval(p[3]));
                p += 3;
            } else if (*p == '\\' && p + 1 < b) {
                tok[n++] = (uint8_t) * ++p;
            } else {
                tok[n++] = (uint8_t)*p;
            }
        }
        push(&tokens, &n_tokens, tok, n);
    }
    if (f != NULL) {
        fclose(f);
    }
}

static uint64_t rng_state;

static uint64_t rnd(uint64_t bound)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return bound ? rng_state % bound : 0;
}

/* Insert len bytes of src at position at of b (capacity MAX_INPUT_LEN). */
static void insert(uint8_t *b, size_t *n, size_t at, const uint8_t *src, size_t len)
{
    if (*n + len > MAX_INPUT_LEN) {
        len = MAX_INPUT_LEN - *n;
    }
    memmove(b + at + len, b + at, *n - at);
    memcpy(b + at, src, len);
    *n += len;
}

static void mutate_once(uint8_t *b, size_t *n)
{
    size_t at = rnd(*n + 1), len = 1 + rnd(*n / 4 + 8);
    const struct buf *t;
    switch (rnd(7)) {
    case 0: /* flip a byte */
        if (*n > 0) {
            b[rnd(*n)] ^= (uint8_t)(1 + rnd(255));
        }
        break;
    case 1: /* random byte */
        insert(b, n, at, (uint8_t[]){(uint8_t)rnd(256)}, 1);
        break;
    case 2: /* delete a range */
        len = at + len > *n ? *n - at : len;
        memmove(b + at, b + at + len, *n - at - len);
        *n -= len;
        break;
    case 3: { /* duplicate a range (deepens nesting) */
        if (*n == 0) {
            break;
        }
        size_t from = rnd(*n);
        len = from + len > *n ? *n - from : len;
        uint8_t *copy = malloc(len);
        memcpy(copy, b + from, len);
        insert(b, n, at, copy, len);
        free(copy);
        break;
    }
    case 4: /* splice in part of another input */
        t = &inputs[rnd(n_inputs)];
        if (t->n > 0) {
            size_t from = rnd(t->n);
            insert(b, n, at, t->p + from, from + len > t->n ? t->n - from : len);
        }
        break;
    case 5: /* truncate */
        *n = at;
        break;
    default: /* a dictionary token */
        if (n_tokens > 0) {
            t = &tokens[rnd(n_tokens)];
            insert(b, n, at, t->p, t->n);
        }
        break;
    }
}

static const uint8_t *volatile cur_input;
static volatile size_t cur_len;

/* Async-signal-safe: called from a signal handler or the sanitizer's death callback. */
static void save_crash(void)
{
    static const char msg[] = "replay: crashing input written to ./crash-replay\n";
    const uint8_t *b = cur_input;
    int fd = b != NULL ? open("crash-replay", O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    if (fd >= 0) {
        ssize_t w = write(fd, b, cur_len);
        close(fd);
        w = write(2, msg, sizeof(msg) - 1);
        (void)w;
    }
    cur_input = NULL;
}

static void on_crash_signal(int sig)
{
    save_crash();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void watch_crashes(void)
{
    if (__sanitizer_set_death_callback != NULL) {
        __sanitizer_set_death_callback(save_crash);
    }
    int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        signal(sigs[i], on_crash_signal);
    }
}

static unsigned long stress(double seconds)
{
    uint8_t *b = malloc(MAX_INPUT_LEN);
    unsigned long runs = 0;
    time_t end = time(NULL) + (time_t)seconds;
    while (time(NULL) < end) {
        for (int k = 0; k < 256; k++, runs++) {
            const struct buf *src = &inputs[rnd(n_inputs)];
            size_t n = src->n;
            memcpy(b, src->p, n);
            for (uint64_t m = 1 + rnd(8); m > 0; m--) {
                mutate_once(b, &n);
            }
            cur_len = n;
            cur_input = b;
            LLVMFuzzerTestOneInput(b, n);
            cur_input = NULL;
        }
    }
    free(b);
    return runs;
}

int main(int argc, char **argv)
{
    double seconds = 0;
    unsigned long seed = 1;
    int opt, rc = 0;
    while ((opt = getopt(argc, argv, "t:s:d:")) != -1) {
        if (opt == 't') {
            seconds = atof(optarg);
        } else if (opt == 's') {
            seed = strtoul(optarg, NULL, 10);
        } else if (opt == 'd') {
            load_dict(optarg);
        } else {
            fprintf(stderr, "usage: %s [-t SECONDS] [-s SEED] [-d DICT] PATH...\n", argv[0]);
            return 2;
        }
    }
    for (int i = optind; i < argc; i++) {
        rc |= load_path(argv[i]);
    }
    if (rc != 0 || n_inputs == 0) {
        fprintf(stderr, "%s: no inputs\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < n_inputs; i++) {
        LLVMFuzzerTestOneInput(inputs[i].p, inputs[i].n);
    }
    printf("%s: replayed %zu inputs\n", argv[0], n_inputs);
    fflush(stdout);
    if (seconds > 0) {
        rng_state = seed * 0x9e3779b97f4a7c15ULL + 1;
        watch_crashes();
        unsigned long runs = stress(seconds);
        printf("%s: %lu mutated runs in %.0f s (seed %lu), no crash\n", argv[0], runs, seconds,
               seed);
    }
    for (size_t i = 0; i < n_inputs; i++) {
        free(inputs[i].p);
    }
    for (size_t i = 0; i < n_tokens; i++) {
        free(tokens[i].p);
    }
    free(inputs);
    free(tokens);
    return 0;
}
