/* The event log's checksum index ("<file>.crc") and its reader. See eventlog.h. */
#include "eventlog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "mem.h"

#define ENTRY AB_EVENTLOG_CRC_ENTRY

struct entry {
    int64_t off;
    uint32_t len, crc;
};

void ab_eventlog_crc_entry(char out[ENTRY + 1], int64_t off, const char *line, size_t len)
{
    snprintf(out, ENTRY + 1, "%016" PRIx64 " %08" PRIx32 " %08" PRIx32 "\n", (uint64_t)off,
             (uint32_t)len, ab_crc32c(0, line, len));
}

static int hex_field(const char *p, int n, uint64_t *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) {
            return -1;
        }
        *v = *v * 16 + (uint64_t)d;
    }
    return 0;
}

/* Entry i of the index fd. Returns 1, 0 past the end, -1 for an entry that does not parse. */
static int read_entry(int fd, int64_t i, struct entry *e)
{
    char b[ENTRY];
    ssize_t n = pread(fd, b, ENTRY, i * ENTRY);
    if (n != ENTRY) {
        return 0;
    }
    uint64_t off, len, crc;
    if (b[16] != ' ' || b[25] != ' ' || b[34] != '\n' || hex_field(b, 16, &off) ||
        hex_field(b + 17, 8, &len) || hex_field(b + 26, 8, &crc) || off > INT64_MAX / 2) {
        return -1;
    }
    *e = (struct entry){(int64_t)off, (uint32_t)len, (uint32_t)crc};
    return 1;
}

static int write_mark(int fd, int64_t size, uint64_t ino)
{
    char b[ENTRY + 1];
    snprintf(b, sizeof(b), "%016" PRIx64 " %08x %08" PRIx32 "\n", (uint64_t)size, 0,
             (uint32_t)ino);
    return write(fd, b, ENTRY) == ENTRY && fsync(fd) == 0 ? 0 : errno ? errno : EIO;
}

int ab_eventlog_crc_open(const char *what, const char *path, int64_t size, uint64_t ino,
                         int *idx_fd, int64_t *idx_size, int64_t *covered)
{
    char *ip = ab_asprintf("%s.crc", path);
    int err = 0;
    struct stat st;
    struct entry mark = {0}, e;
    int fd = open(ip, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0 || fstat(fd, &st) != 0) {
        err = errno;
        goto done;
    }
    int64_t n = st.st_size / ENTRY;
    if (n > 0 && (read_entry(fd, 0, &mark) != 1 || mark.len != 0 || mark.off > size ||
                  mark.crc != (uint32_t)ino)) {
        /* another file's index (rotated without it), or its start mark is damaged */
        char *stale = ab_asprintf("%s.stale", ip);
        ab_warn("%s: %s does not belong to %s (rotated without it?); set aside as %s, "
                "checksums start again at offset %" PRId64,
                what, ip, path, stale, size);
        int moved = rename(ip, stale);
        free(stale);
        close(fd);
        fd = moved == 0 ? open(ip, O_RDWR | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0640) : -1;
        if (fd < 0) {
            err = errno ? errno : EIO;
            goto done;
        }
        n = 0;
    }
    if (n == 0) {
        if (ftruncate(fd, 0) != 0 || (err = write_mark(fd, size, ino)) != 0) {
            err = err ? err : errno;
            goto done;
        }
        *covered = size;
        *idx_size = ENTRY;
        goto done;
    }
    /* entries for bytes the file does not have (cut as a torn tail, or never synced) */
    int64_t keep = n;
    *covered = mark.off;
    while (keep > 1) {
        int rc = read_entry(fd, keep - 1, &e);
        if (rc == 1 && e.off + (int64_t)e.len + 1 <= size) {
            *covered = e.off + (int64_t)e.len + 1;
            break;
        }
        keep--;
    }
    if (keep * ENTRY != st.st_size && (ftruncate(fd, keep * ENTRY) != 0 || fsync(fd) != 0)) {
        err = errno;
        goto done;
    }
    *idx_size = keep * ENTRY;
done:
    if (err != 0 && fd >= 0) {
        close(fd);
        fd = -1;
    }
    *idx_fd = fd;
    free(ip);
    return err;
}

/* ---- the reader ----------------------------------------------------------------------- */

struct ab_eventlog_reader {
    char *path;
    int fd, idx;
    int warned;     /* a foreign index was reported */
    int live;       /* followed while written: the index may come later (ab_eventlog_reader_live) */
    int64_t mark;   /* bytes before it are read unverified (no index: all of them) */
    int64_t off;    /* the next byte to read */
    int64_t ei;     /* the next index entry to look at */
    char *buf;
    size_t cap;
    char *ra; /* read-ahead for lines read unverified (next_plain) */
    size_t ra_len, ra_cap;
    int64_t ra_off;
};

/* 1 when entry 1 of the index idx (the first record) matches the bytes of r's file. */
static int first_record_matches(struct ab_eventlog_reader *r, int idx)
{
    struct entry e;
    if (read_entry(idx, 1, &e) != 1 || e.len == 0) {
        return 0;
    }
    char *b = ab_malloc(e.len + 1);
    int ok = pread(r->fd, b, e.len + 1, e.off) == (ssize_t)e.len + 1 && b[e.len] == '\n' &&
             ab_crc32c(0, b, e.len) == e.crc;
    free(b);
    return ok;
}

/* Open the checksum index of r's file, if there is one. A start mark naming another inode
 * is an index of another file (the file was rotated without it) unless its first record
 * matches (a copy of both); a live reader then reads on unverified and looks again later,
 * as it does while the index is missing or still empty (the writer creates it before its
 * first record). Any other reader checks every byte against an index it cannot use. */
static void attach_index(struct ab_eventlog_reader *r)
{
    char *ip = ab_asprintf("%s.crc", r->path);
    int idx = open(ip, O_RDONLY | O_CLOEXEC);
    free(ip);
    if (idx < 0) {
        return;
    }
    struct entry mark;
    struct stat st;
    int rc = read_entry(idx, 0, &mark);
    int ours = rc == 1 && mark.len == 0 &&
               ((fstat(r->fd, &st) == 0 && mark.crc == (uint32_t)st.st_ino) ||
                first_record_matches(r, idx));
    if (r->live && !ours) {
        close(idx); /* another file's, or not written yet: unverified for now */
        if (rc == 1 && mark.len == 0 && !r->warned) {
            r->warned = 1;
            ab_warn("%s.crc is another file's checksum index (rotated without it?): %s is "
                    "read unverified until its own index is there", r->path, r->path);
        }
        return;
    }
    r->idx = idx;
    r->mark = ours ? mark.off : 0; /* an index without a usable start mark: check all */
    ab_eventlog_reader_seek(r, r->off);
}

struct ab_eventlog_reader *ab_eventlog_reader_open(const char *path, char *errstr,
                                                   size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(errstr, errlen, "cannot open %s: %s", path, strerror(e));
        errno = e; /* for callers that tell a missing file from others */
        return NULL;
    }
    struct ab_eventlog_reader *r = ab_calloc(1, sizeof(*r));
    r->path = ab_strdup(path);
    r->fd = fd;
    r->idx = -1;
    r->mark = INT64_MAX;
    attach_index(r);
    return r;
}

void ab_eventlog_reader_live(struct ab_eventlog_reader *r)
{
    r->live = 1;
    if (r->idx >= 0) { /* attached by the rules for a finished file: again by a live one's */
        close(r->idx);
        r->idx = -1;
        r->mark = INT64_MAX;
        attach_index(r);
    }
}

void ab_eventlog_reader_drop_index(struct ab_eventlog_reader *r)
{
    if (r->idx >= 0) {
        close(r->idx);
    }
    r->idx = -1;
    r->mark = INT64_MAX;
    r->live = 0; /* not looked for again */
}

int64_t ab_eventlog_reader_offset(const struct ab_eventlog_reader *r)
{
    return r->off;
}

int ab_eventlog_reader_stat(const struct ab_eventlog_reader *r, struct stat *st)
{
    return fstat(r->fd, st);
}

void ab_eventlog_reader_free(struct ab_eventlog_reader *r)
{
    if (r == NULL) {
        return;
    }
    close(r->fd);
    if (r->idx >= 0) {
        close(r->idx);
    }
    free(r->path);
    free(r->buf);
    free(r->ra);
    free(r);
}

int ab_eventlog_reader_checksummed(const struct ab_eventlog_reader *r)
{
    return r->idx >= 0;
}

void ab_eventlog_reader_seek(struct ab_eventlog_reader *r, int64_t off)
{
    r->off = off;
    r->ei = r->mark > 0 ? 1 : 0;
    if (r->idx < 0 || off <= r->mark) {
        return;
    }
    /* the first entry at or after off (entries are in file order) */
    struct stat st;
    int64_t lo = 1, hi = fstat(r->idx, &st) == 0 ? st.st_size / ENTRY : 1;
    struct entry e;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int rc = read_entry(r->idx, mid, &e);
        if (rc == 1 && e.off < off) {
            lo = mid + 1;
        } else if (rc == 1) {
            hi = mid;
        } else {
            /* a damaged entry: fall back to a scan from the start */
            lo = 1;
            while (lo < hi && read_entry(r->idx, lo, &e) != 0 && (e.off < off)) {
                lo++;
            }
            break;
        }
    }
    r->ei = lo;
}

static char *grow(struct ab_eventlog_reader *r, size_t need)
{
    if (need > r->cap) {
        r->cap = need > 65536 ? need : 65536;
        r->buf = ab_realloc(r->buf, r->cap);
    }
    return r->buf;
}

static int damaged(struct ab_eventlog_rec *rec, int64_t off, int64_t end, long count,
                   const char *why)
{
    *rec = (struct ab_eventlog_rec){.off = off, .end = end, .count = count, .why = why};
    return AB_EVENTLOG_DAMAGED;
}

/* A line read by its newline, unverified, from [r->off, stop). Read ahead: r->ra holds
 * ra_len bytes of the file from ra_off (an append-only file's bytes do not change). */
static int next_plain(struct ab_eventlog_reader *r, int64_t stop, int complete,
                      struct ab_eventlog_rec *rec)
{
    if (stop <= r->off) {
        return AB_EVENTLOG_END;
    }
    if (r->off < r->ra_off || r->off > r->ra_off + (int64_t)r->ra_len) {
        r->ra_off = r->off; /* after a seek */
        r->ra_len = 0;
    }
    for (;;) {
        size_t skip = (size_t)(r->off - r->ra_off);
        size_t avail = r->ra_len - skip;
        if ((int64_t)avail > stop - r->off) {
            avail = (size_t)(stop - r->off);
        }
        char *nl = avail ? memchr(r->ra + skip, '\n', avail) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - (r->ra + skip));
            *rec = (struct ab_eventlog_rec){.line = r->ra + skip, .len = len, .off = r->off,
                                            .end = r->off + (int64_t)len + 1};
            r->off = rec->end;
            return AB_EVENTLOG_UNVERIFIED;
        }
        if (skip > 0) { /* keep the start of the line at the front */
            memmove(r->ra, r->ra + skip, r->ra_len - skip);
            r->ra_len -= skip;
            r->ra_off = r->off;
        }
        int64_t at = r->ra_off + (int64_t)r->ra_len;
        if (at >= stop) {
            break;
        }
        if (r->ra_len == r->ra_cap) {
            r->ra_cap = r->ra_cap ? r->ra_cap * 2 : 65536;
            r->ra = ab_realloc(r->ra, r->ra_cap);
        }
        size_t want = r->ra_cap - r->ra_len;
        if ((int64_t)want > stop - at) {
            want = (size_t)(stop - at);
        }
        ssize_t n = pread(r->fd, r->ra + r->ra_len, want, at);
        if (n <= 0) {
            break;
        }
        r->ra_len += (size_t)n;
    }
    if (complete && r->off < stop) {
        int64_t off = r->off;
        r->off = stop;
        return damaged(rec, off, stop, 1, "a record without its newline (cut short)");
    }
    return AB_EVENTLOG_END;
}

int ab_eventlog_reader_next(struct ab_eventlog_reader *r, int64_t limit, int complete,
                            struct ab_eventlog_rec *rec)
{
    struct stat st;
    if (r->live && r->idx < 0) {
        attach_index(r); /* the writer may have created it since */
    }
    int64_t size = fstat(r->fd, &st) == 0 ? (int64_t)st.st_size : 0;
    if (limit < 0 || limit > size) {
        if (limit > size) {
            complete = 1; /* shorter than it should be: it was cut */
        }
        limit = size;
    }
    if (r->off < r->mark) {
        int64_t stop = r->mark < limit ? r->mark : limit;
        int rc = next_plain(r, stop, complete || r->mark <= limit, rec);
        if (rc != AB_EVENTLOG_END || r->mark > limit) {
            return rc;
        }
    }
    for (;;) {
        struct entry e;
        int got = read_entry(r->idx, r->ei, &e);
        if (got == 0) {
            if (complete && r->off < limit) {
                int64_t off = r->off;
                r->off = limit;
                return damaged(rec, off, limit, 1, "bytes no checksum covers");
            }
            return AB_EVENTLOG_END;
        }
        if (got < 0) {
            r->ei++; /* its record shows up as bytes no checksum covers */
            continue;
        }
        if (e.len == 0) { /* a start mark: not a record */
            r->ei++;
            continue;
        }
        int64_t end = e.off + (int64_t)e.len + 1;
        if (e.off < r->off) { /* behind us (after a seek) */
            r->ei++;
            continue;
        }
        if (e.off > r->off) {
            int64_t off = r->off;
            r->off = e.off < limit ? e.off : limit;
            return damaged(rec, off, r->off, 1, "bytes no checksum covers");
        }
        if (end > limit) {
            if (!complete) {
                return AB_EVENTLOG_END; /* not synced yet */
            }
            /* the file was cut: every entry from here on describes bytes it lacks */
            struct stat is;
            int64_t n = fstat(r->idx, &is) == 0 ? is.st_size / ENTRY : r->ei + 1;
            long lost = (long)(n - r->ei);
            int64_t off = r->off;
            r->ei = n;
            r->off = limit;
            return damaged(rec, off, limit, lost > 0 ? lost : 1,
                           "records missing (the file was cut short)");
        }
        r->ei++;
        char *b = grow(r, e.len + 1);
        if (pread(r->fd, b, e.len + 1, e.off) != (ssize_t)e.len + 1 || b[e.len] != '\n' ||
            ab_crc32c(0, b, e.len) != e.crc) {
            r->off = end;
            return damaged(rec, e.off, end, 1, "checksum mismatch");
        }
        *rec = (struct ab_eventlog_rec){.line = b, .len = e.len, .off = e.off, .end = end};
        r->off = end;
        return AB_EVENTLOG_RECORD;
    }
}

/* ---- verify --------------------------------------------------------------------------- */

static long verify_file(const char *path, long *records, long *unverified, FILE *out,
                        char *errstr, size_t errlen)
{
    struct ab_eventlog_reader *r = ab_eventlog_reader_open(path, errstr, errlen);
    if (r == NULL) {
        return -1;
    }
    long bad = 0;
    struct ab_eventlog_rec rec;
    int rc;
    while ((rc = ab_eventlog_reader_next(r, -1, 1, &rec)) != AB_EVENTLOG_END) {
        if (rc == AB_EVENTLOG_DAMAGED) {
            bad += rec.count;
            fprintf(out, "%s: offset %" PRId64 ": %s (%ld record%s, %" PRId64 " bytes)\n", path,
                    rec.off, rec.why, rec.count, rec.count == 1 ? "" : "s", rec.end - rec.off);
        } else {
            (*records)++;
            *unverified += rc == AB_EVENTLOG_UNVERIFIED;
        }
    }
    ab_eventlog_reader_free(r);
    return bad;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

long ab_eventlog_verify(const char *path, long *records, long *unverified, FILE *out,
                        char *errstr, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(errstr, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        return verify_file(path, records, unverified, out, errstr, errlen);
    }
    DIR *d = opendir(path);
    if (d == NULL) {
        snprintf(errstr, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l == 24 && strcmp(e->d_name + 20, ".seg") == 0) {
            names = ab_realloc(names, (n + 1) * sizeof(*names));
            names[n++] = ab_strdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof(*names), by_name);
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        char *p = ab_asprintf("%s/%s", path, names[i]);
        long b = bad >= 0 ? verify_file(p, records, unverified, out, errstr, errlen) : 0;
        bad = b < 0 ? -1 : bad + b;
        free(p);
        free(names[i]);
    }
    free(names);
    return bad;
}
