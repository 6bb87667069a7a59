/* audit: one JSON line per request, refusal or tunnel (SPEC §7), to a file or stdout, each line
 * chained to the one before it by a SHA-256 hash, and the verifier for that chain.
 *
 * A record names what was decided and why, the names of injected headers and never their
 * values. Writes are serialised with a mutex and issued as one write(2) of whole lines to a
 * file opened O_APPEND, so lines from different threads never interleave; a crash loses at most
 * the lines being written (a worker writes the lines of one loop turn together: see
 * audit_batch).
 *
 * The chain (tamper evidence). Every line ends with two members, after the SPEC §7 fields whose
 * names and order are unchanged:
 *
 *     ...,"policy_version":3,"seq":17,"prev":"<64 lower-case hex>"}
 *
 *   seq   1 for a file's first line, then +1 per line of that file.
 *   prev  SHA-256 of the previous line's bytes exactly as written, without its newline. The
 *         first line of a file chains to the genesis value, 64 '0' characters
 *         (AUDIT_GENESIS_HEX). "prev" is always the last member, so consumers that read the
 *         other fields by name are unaffected.
 *
 * Editing a line changes its hash, which no longer matches the next line's "prev"; removing
 * lines leaves a gap in "seq"; moving a line breaks both. What a hash chain without a key cannot
 * show: someone able to rewrite the file can recompute every later hash, and dropping lines at
 * the end leaves a shorter, still consistent chain. Both are caught by comparing the last
 * line's hash with a copy kept elsewhere: audit_close logs it ("closed at seq N, last line
 * sha256 H") to the daemon's log, and `authproxy audit verify` prints it.
 *
 * Continuing a file. A daemon opening an existing file reads its tail (never the whole file)
 * and continues from its last complete line: seq + 1, prev = that line's hash. If the last
 * complete line carries no "seq" (a log written before the chain existed) the chain restarts
 * at seq 1, chained to that line's hash; verify reports the unchained lines. If the file ends
 * in an incomplete line (a crash or a failed write in the middle of a line), that fragment is
 * kept as evidence: the next write first ends it with a newline, and the next record takes the
 * fragment's place in the numbering (seq of the last complete line + 2) and chains to the
 * fragment's hash (the bytes that are there). The same recovery runs after a failed write. A
 * write that fails without leaving bytes loses its record silently as far as the chain goes
 * (the error goes to the daemon's log).
 *
 * One writer per file: audit_open takes an exclusive flock(2) on the file for the life of the
 * log and fails (errno EBUSY, with a log line naming the file) if another process holds it,
 * since two writers would fork the chain. Rotation: the daemon does not reopen the file on
 * SIGHUP, so rotate by stopping it, moving the file away and starting it again (the new file
 * starts from genesis). "-" (stdout) chains too, always from genesis: it is not read back, so
 * output appended across restarts verifies only up to the first restart.
 *
 * Cost: one SHA-256 over a ~400-byte line per record, under the mutex (about a microsecond). */
#ifndef AUTHPROXY_AUDIT_H
#define AUTHPROXY_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define AUDIT_HASH_HEX_LEN 64
#define AUDIT_GENESIS_HEX  "0000000000000000000000000000000000000000000000000000000000000000"

struct audit_log;

struct audit_record {
    const char *sandbox;   /* NULL: the standalone config's clients */
    const char *workspace; /* NULL likewise */
    const char *client;    /* client address "ip:port" */
    const char *method;    /* NULL for a tunnel or a refused connection */
    const char *scheme;    /* "http", "https", or "tunnel" */
    const char *host;
    uint16_t port;
    const char *path;       /* without query */
    const char *decision;   /* "allowed", "denied", "bypassed", "error" */
    const char *decided_by; /* rule name, "deny_list", "allow_list", "no_proxy", "callback", ... */
    const char *const *injected; /* names of injected headers */
    size_t n_injected;
    int status;          /* status sent to the client (0 if none) */
    int upstream_status; /* status from the upstream (0 if none) */
    uint64_t bytes_from_client;
    uint64_t bytes_to_client;
    uint64_t duration_us;
    const char *error; /* a short reason for errors/refusals, or NULL */
    uint64_t policy_version;
};

/* Opens the log: path "-" writes to stdout; NULL disables auditing (returns NULL). A file is
 * created (0600) or continued as described above; it stays flock'ed until audit_close.
 * Returns NULL with errno on failure: EBUSY when another process holds the file (logged with
 * the path), or the error of open/read. The caller frees with audit_close. */
struct audit_log *audit_open(const char *path);
/* Closes the file (releasing its lock) and logs the chain's last seq and hash. NULL is a
 * no-op. */
void audit_close(struct audit_log *a);
/* Appends one chained line for r. Thread-safe. a may be NULL (no-op). A failed write is logged
 * (once per run of failures) and never reported to the caller: auditing does not fail
 * requests. */
void audit_write(struct audit_log *a, const struct audit_record *r);

/* A worker's records of one event-loop turn, appended to the log together by
 * audit_batch_flush: one lock and one write(2) per turn instead of per record, each line
 * chained exactly as audit_write does. The worker flushes before it writes the turn's
 * responses to their sockets (outflush.h), so no client sees a response whose audit line is not
 * yet in the file; a crash loses at most the lines of responses not yet sent. Touched by its
 * worker's thread only. */
struct audit_batch {
    struct audit_log *log; /* NULL: auditing off, adds are no-ops */
    char *bodies;          /* formatted records, each "{...}\n", chain members not yet added */
    size_t len, cap;
    size_t n; /* records in bodies */
};

/* Starts an empty batch for log (may be NULL). */
void audit_batch_init(struct audit_batch *b, struct audit_log *log);
/* Formats r (its time is taken now) and keeps it for the next flush. True when it is the
 * first record since the last flush (the caller arranges that flush then). */
bool audit_batch_add(struct audit_batch *b, const struct audit_record *r);
/* Writes the kept records (see above); no-op when none. */
void audit_batch_flush(struct audit_batch *b);
/* Flushes, then releases the batch's memory. */
void audit_batch_free(struct audit_batch *b);

struct audit_verify_result {
    uint64_t lines;    /* lines read (all of them when intact) */
    uint64_t bad_line; /* first bad line, 1-based; 0 when intact */
    char reason[512];  /* the first problem, naming line numbers; "" when intact */
    char last_hash[AUDIT_HASH_HEX_LEN + 1]; /* SHA-256 of the last complete line (the anchor to
                                               compare with a copy kept elsewhere) */
};

/* Checks the chain of one audit file read from f, streaming (memory is one line, whatever the
 * file's size). Returns 0 when every line is a chained record in order from genesis, 1 when
 * not (res->bad_line and res->reason say where and why: a line edited, lines removed, lines
 * reordered or duplicated, a line that is not JSON, a line without "seq"/"prev", a truncated
 * last line, or an incomplete line left by a crash that the chain resumes after), or -1 with
 * errno when f cannot be read. */
int audit_verify(FILE *f, struct audit_verify_result *res);

#endif
