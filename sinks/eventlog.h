/* The event log: an append-only, fsync'd, group-committed file of lines, shared by the file
 * sink (one file) and the spool (a directory of numbered segments).
 *
 * One writer thread per log owns the file. Loop threads append through a client (one per
 * loop thread) and return at once; the writer takes everything queued, writes it with
 * writev, syncs once (fdatasync) and hands each record back to the client's loop thread,
 * whose callback then runs there. A failed write is rolled back with ftruncate to the last
 * synced length, so a partial line never stays in the file.
 *
 * Crash rules (Redis aof-load-truncated, Kafka log recovery):
 *  - torn tail: bytes after the last newline were never acknowledged. At open, and before
 *    the first write into a reopened file, they are moved to "<file>.torn" and logged;
 *  - rotation: before each batch (and once a second when idle) the writer compares the open
 *    file with what the path names now (st_dev/st_ino); a renamed or removed file is
 *    reopened, as is every file after ab_eventlog_reopen() (SIGHUP). A path that cannot be
 *    opened fails every write and ab_eventlog_ready() is 0 until it can;
 *  - one writer: an exclusive lock (an OFD lock on "<file>.lock", or "DIR/lock" for a
 *    segmented log, holding the owner's pid) for the log's lifetime;
 *  - a created or reopened file has its directory fsync'd before the first acknowledgement;
 *  - checksums: every record has a CRC32C in "<file>.crc" (the checksum index, below),
 *    written and synced in the same batch, so the file itself stays plain lines. At open,
 *    index entries for bytes the file no longer has are dropped, and bytes of the file that
 *    no entry covers (written, never acknowledged) are moved to "<file>.torn" like a torn
 *    tail; an index that belongs to another file (the file was rotated without it) is set
 *    aside as "<file>.crc.stale" and a new one started.
 *
 * Ownership: a record (job) belongs to the writer from append until it is handed back; a
 * client is reference-counted (one reference for its loop thread, one per record not yet
 * handed back), so whichever of close and the writer lets go last frees it. The writer
 * wakes a client's loop only under the client's lock and never once it is closed. */
#ifndef AB_EVENTLOG_H
#define AB_EVENTLOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/uio.h>

#include "sink.h"

struct event_base;
struct ab_eventlog;
struct ab_eventlog_client;

/* Record outcomes handed to the callback (the same values as the sink contract's). */
enum ab_eventlog_status {
    AB_EVENTLOG_OK = 0,     /* written and synced */
    AB_EVENTLOG_ERROR = 1,  /* write, sync or reopen failed; nothing of it stays in the file */
    AB_EVENTLOG_CLOSED = 3, /* the client closed before the sync returned */
};

struct ab_eventlog_opts {
    const char *path;     /* the file; with segment_bytes > 0, the directory of segments */
    const char *what;     /* how logs and errors name it: "file sink", "spool" */
    int sync;             /* 1 = fdatasync each batch (0 trades durability for speed) */
    int check_only;       /* open (creating) and close: no lock, no thread (--check-config) */
    long segment_bytes;   /* > 0: start a new segment once the current one reaches this */
};

/* Errors of ab_eventlog_open. */
enum { AB_EVENTLOG_EOPEN = -1, AB_EVENTLOG_ELOCKED = -2 };

/* Open (creating) the log, take its lock, cut a torn tail, fsync the directory and start the
 * writer. Returns the log, or NULL with one line in errstr and *err (if not NULL) set to
 * AB_EVENTLOG_ELOCKED when another process holds the lock (the line names the file and
 * the holder's pid) or AB_EVENTLOG_EOPEN otherwise. Start-up thread. */
struct ab_eventlog *ab_eventlog_open(const struct ab_eventlog_opts *o, int *err, char *errstr,
                                     size_t errlen);

/* Stop the writer once its queue is written (waiting at most timeout_ms for a stuck sync),
 * close and free. Every client must be closed first. If the writer is still stuck at the
 * deadline it is left behind (with what it holds) for the process's exit; returns -1 then,
 * else 0. NULL is a no-op. */
int ab_eventlog_free(struct ab_eventlog *log, int timeout_ms);

/* From any thread: reopen the file before the next batch (log rotation, SIGHUP). */
void ab_eventlog_reopen(struct ab_eventlog *log);
/* From any thread: ab_eventlog_reopen() every open log of the process (the SIGHUP hook). */
void ab_eventlog_reopen_all(void);

/* 1 while the log can take writes: its file is open and the last batch did not fail. Any
 * thread. */
int ab_eventlog_ready(struct ab_eventlog *log);
/* "PATH" or "PATH: <why not ready>". Any thread. */
void ab_eventlog_describe(struct ab_eventlog *log, char *buf, size_t len);

/* Segmented logs: the segment being written and its synced length (what a reader may
 * read), read together. Any thread. */
void ab_eventlog_position(struct ab_eventlog *log, uint64_t *segment, int64_t *synced);
/* The file name of segment seq in a segmented log's directory ("%020llu.seg"). */
void ab_eventlog_segment_name(uint64_t seq, char *buf, size_t len);

/* ---- checksums and reading ----------------------------------------------------------
 *
 * The checksum index "<file>.crc" is a sequence of fixed-size text entries
 * "OOOOOOOOOOOOOOOO LLLLLLLL CCCCCCCC\n" (hex: the record's offset in the file, its length
 * without the newline, the CRC32C of those bytes). The first entry is a start mark (length
 * 0, CRC = the low 32 bits of the file's inode): bytes before its offset were written
 * before checksums existed and are read unverified. Fixed-size entries keep damage to the
 * index itself local, and offsets keep damage to the file local: a reader that meets it
 * reports where, skips exactly the damaged record(s) and goes on with the next good one. */

#define AB_EVENTLOG_CRC_ENTRY 35 /* bytes of one index entry */

/* What a reader hands back. */
enum ab_eventlog_read {
    AB_EVENTLOG_RECORD = 0,     /* a record whose checksum matched */
    AB_EVENTLOG_UNVERIFIED = 1, /* a record from before checksums (or without an index) */
    AB_EVENTLOG_DAMAGED = 2,    /* damage: bytes [off, end) are skipped (count records) */
    AB_EVENTLOG_END = 3,        /* nothing more below the limit (yet) */
};

struct ab_eventlog_rec {
    const char *line; /* RECORD/UNVERIFIED: the record without its newline (reader-owned,
                       * valid until the next call) */
    size_t len;
    int64_t off, end; /* the bytes in the file: a record's newline included */
    long count;       /* DAMAGED: records lost (at least 1) */
    const char *why;  /* DAMAGED: a short static reason */
};

struct ab_eventlog_reader;

/* Open path (an event-log file or one spool segment) and its checksum index, if any, for
 * reading from offset 0. Returns NULL with one line in errstr when path cannot be opened.
 * Any thread; the reader belongs to the caller. */
struct ab_eventlog_reader *ab_eventlog_reader_open(const char *path, char *errstr,
                                                   size_t errlen);
void ab_eventlog_reader_free(struct ab_eventlog_reader *r);

/* Continue at off (the start of a record, as returned in rec.off/rec.end). */
void ab_eventlog_reader_seek(struct ab_eventlog_reader *r, int64_t off);

/* The next record at or after the current offset among the first `limit` bytes of the file
 * (-1: its size now). `complete`: the file is not written any more, so a record cut short
 * or bytes no index entry covers are damage rather than not there yet. Fills rec; returns
 * one of enum ab_eventlog_read. */
int ab_eventlog_reader_next(struct ab_eventlog_reader *r, int64_t limit, int complete,
                            struct ab_eventlog_rec *rec);

/* The reader follows a file still being written (wait, replay, the contract's read side):
 * an index that is missing, still empty or another file's (its start mark names another
 * inode and its first record does not match: the file was rotated without it) is not used
 * yet but looked for again at each call, so records are read unverified until it is there;
 * records past the last index entry wait for theirs (call with complete = 0). */
void ab_eventlog_reader_live(struct ab_eventlog_reader *r);
/* Read the file on without its index (unverified): the index no longer describes it (a
 * file truncated in place, copytruncate). */
void ab_eventlog_reader_drop_index(struct ab_eventlog_reader *r);
/* The offset of the next byte to read. */
int64_t ab_eventlog_reader_offset(const struct ab_eventlog_reader *r);
/* fstat of the file read (its inode and size). */
struct stat;
int ab_eventlog_reader_stat(const struct ab_eventlog_reader *r, struct stat *st);

/* 1 when the file has a checksum index. */
int ab_eventlog_reader_checksummed(const struct ab_eventlog_reader *r);

/* Check a whole file (an event log, or every segment of a spool directory when path is a
 * directory): each damage is printed to out as "PATH: offset N: why (K records)" and
 * counted. Returns the number of damaged records (0 = clean), or -1 with one line in
 * errstr when path cannot be read. The records read are added to *records. Any thread. */
long ab_eventlog_verify(const char *path, long *records, long *unverified, FILE *out,
                        char *errstr, size_t errlen);

/* Writer side, for the event log itself (eventlog.c): open (creating) path's index for a
 * file of `size` bytes with inode ino, drop entries past the file's end, set a stale index
 * aside, write the start mark of a new one. Sets *idx_fd, its length *idx_size and
 * *covered, the end of the last record an entry covers (bytes after it were never
 * acknowledged). Returns 0 or an errno. */
int ab_eventlog_crc_open(const char *what, const char *path, int64_t size, uint64_t ino,
                         int *idx_fd, int64_t *idx_size, int64_t *covered);
void ab_eventlog_crc_entry(char out[AB_EVENTLOG_CRC_ENTRY + 1], int64_t off, const char *line,
                           size_t len);

/* Callback: once per accepted append, on the client's loop thread. */
typedef void (*ab_eventlog_done_cb)(int status, void *opaque);

/* A loop thread's handle for appending. The log must outlive it. */
struct ab_eventlog_client *ab_eventlog_client_new(struct ab_eventlog *log,
                                                  struct event_base *base);

/* Append one line: the n parts are copied (concatenated, plus a newline) before this
 * returns. Returns 0 and `cb` runs exactly once, later, on the client's loop thread; or -1
 * (the client is closed) and cb is never called. Loop thread. */
int ab_eventlog_append(struct ab_eventlog_client *c, const struct iovec *parts, int n,
                       ab_eventlog_done_cb cb, void *opaque);

/* Loop thread, its loop stopped: wait up to timeout_ms for the records in flight, run their
 * callbacks (AB_EVENTLOG_CLOSED for those still waiting on the disk) and let go of the
 * client. NULL is a no-op. */
void ab_eventlog_client_free(struct ab_eventlog_client *c, int timeout_ms);

/* ---- Reading a log back (eventlog_read.c): blocking, one thread, never a loop thread ----
 *
 * A reader returns complete lines only (a torn or still growing tail waits), with a printable
 * position: "INODE:OFFSET" in a file, "SEGMENT:OFFSET" in a directory (the offset just past
 * the line). A file is followed across rotation (renamed and recreated: the old one is read
 * a few seconds more; truncated: from the start); a directory from segment to segment in
 * name order ("*.seg" when there are such, else every regular file but lock files, torn
 * tails and the spool's progress file). */
struct ab_eventlog_follower;

struct ab_eventlog_line {
    const char *line; /* without the newline; valid until the next call */
    size_t len;
    const char *position;
    int64_t read_ms; /* when it was read, for lines that came while following; else -1 */
};

/* Open path (dir: a directory of segments) just after position, or at its start; lines
 * whose CloudEvent "time" is before since_ms (> 0, no position) are passed over. A file
 * that does not exist yet is waited for. NULL with errstr when path cannot be read. */
struct ab_eventlog_follower *ab_eventlog_follow_open(const char *path, int dir,
                                                   const char *position, int64_t since_ms,
                                                   char *errstr, size_t errlen);
/* Every record is checked against the file's checksum index as it is read (a live reader,
 * ab_eventlog_reader_live): a record past the last index entry is returned once its entry
 * is there; a damaged one (checksum mismatch, bytes no entry covers before a later record,
 * and in a directory a segment cut short or with uncovered bytes once a later segment
 * exists) is logged at error level with file and offset, counted and skipped, never
 * returned. A file or segment without an index is read unverified, line by line.
 * 1 and *out, or 0 when no line came within timeout_ms at the end of the log. */
int ab_eventlog_follow_next(struct ab_eventlog_follower *r, struct ab_eventlog_line *out,
                            int timeout_ms);
void ab_eventlog_follow_close(struct ab_eventlog_follower *r);
/* Records skipped as damaged so far. */
long ab_eventlog_follow_damaged(const struct ab_eventlog_follower *r);

/* The contract's read side (sink.h) over a log, for the backends that are logs: a reader
 * whose ops are `ops` (whose reader_next and reader_close must be the two below). */
struct ab_sink_reader *ab_eventlog_sink_reader(const struct ab_sink_ops *ops, const char *path,
                                               int dir, const char *position, int64_t since_ms,
                                               char *errstr, size_t errlen);
int ab_eventlog_sink_reader_next(struct ab_sink_reader *r, struct ab_read_event *ev,
                                 int timeout_ms, char *errstr, size_t errlen);
void ab_eventlog_sink_reader_close(struct ab_sink_reader *r);
/* Records a reader made by ab_eventlog_sink_reader skipped as damaged so far; 0 for a
 * reader of another backend (or NULL). */
long ab_eventlog_sink_reader_damaged(const struct ab_sink_reader *r);

#endif
