#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "jsonw.h"
#include "log.h"
#include "util.h"

/* Where the chain stands at the end of the file: what the next line must carry. */
struct chain_pos {
    uint64_t next_seq;
    char prev[AUDIT_HASH_HEX_LEN + 1];
    bool torn; /* the file ends inside a line: end it with a newline before the next record */
};

struct audit_log {
    int fd;
    bool owns_fd;
    bool seekable;        /* a regular file: its tail can be read back */
    char *path;           /* for log messages */
    pthread_mutex_t lock; /* one line at a time; guards everything below */
    struct chain_pos pos;
    bool resync;  /* a write failed: re-read the tail before the next one */
    bool failing; /* the last write failed (log the failure once per run) */
};

static void sha256_hex(const void *p, size_t n, char out[AUDIT_HASH_HEX_LEN + 1])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    sha256_digest(p, n, md);
    hex_encode(md, sizeof(md), out);
}

static bool is_hash_hex(const char *s, size_t len)
{
    if (len != AUDIT_HASH_HEX_LEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

enum { FIELDS_OK, FIELDS_NOT_JSON, FIELDS_UNCHAINED };

/* Reads the chain members of one line (without its newline): FIELDS_OK with *seq (>= 1) and
 * prev, FIELDS_NOT_JSON when the line is not a JSON object, FIELDS_UNCHAINED when it is one
 * without a valid "seq" and "prev". */
static int chain_fields(const char *line, size_t len, uint64_t *seq,
                        char prev[AUDIT_HASH_HEX_LEN + 1])
{
    json_error_t err;
    json_t *o = json_loadb(line, len, 0, &err);
    int rc = FIELDS_NOT_JSON;
    if (!json_is_object(o))
        goto out;
    rc = FIELDS_UNCHAINED;
    json_t *s = json_object_get(o, "seq"), *p = json_object_get(o, "prev");
    if (!json_is_integer(s) || json_integer_value(s) < 1 || !json_is_string(p) ||
        !is_hash_hex(json_string_value(p), json_string_length(p)))
        goto out;
    *seq = (uint64_t)json_integer_value(s);
    memcpy(prev, json_string_value(p), AUDIT_HASH_HEX_LEN + 1);
    rc = FIELDS_OK;
out:
    json_decref(o);
    return rc;
}

/* pread of exactly n bytes; -1 with errno (EIO if the file shrank under us). */
static int pread_exact(int fd, char *buf, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t got = pread(fd, buf, n, off);
        if (got == -1 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO;
            return -1;
        }
        buf += got;
        n -= (size_t)got;
        off += got;
    }
    return 0;
}

/* Works out *cp from the end of the file behind fd (see audit.h, "Continuing a file"). Reads
 * backwards from the end until it holds the last complete line (and any incomplete fragment
 * after it), so memory and time follow the length of the last line or two, not the file.
 * 0, or -1 with errno. */
static int chain_pos_from_tail(int fd, struct chain_pos *cp)
{
    char *buf = NULL; /* the bytes [pos, size) of the file */
    size_t len = 0, chunk = 4096;
    int newlines = 0, rc = -1;
    struct stat st;
    if (fstat(fd, &st) == -1)
        goto out;
    off_t pos = st.st_size;
    /* Two newlines suffice: the one ending the last complete line and the one before it. */
    while (pos > 0 && newlines < 2) {
        size_t n = (off_t)chunk < pos ? chunk : (size_t)pos;
        char *nb = xmalloc(n + len);
        if (pread_exact(fd, nb, n, pos - (off_t)n) == -1) {
            free(nb);
            goto out;
        }
        if (len > 0)
            memcpy(nb + n, buf, len);
        free(buf);
        buf = nb;
        len += n;
        pos -= (off_t)n;
        for (size_t i = 0; i < n; i++)
            newlines += buf[i] == '\n';
        if (chunk < (1u << 20))
            chunk *= 2;
    }
    struct chain_pos out = {.next_seq = 1, .prev = AUDIT_GENESIS_HEX};
    if (len > 0) {
        size_t end = len - 1; /* index of the newline ending the last complete line */
        const char *frag = NULL;
        size_t frag_len = 0;
        bool have_line = true;
        if (buf[len - 1] != '\n') {
            const char *nl = memrchr(buf, '\n', len);
            frag = nl ? nl + 1 : buf;
            frag_len = (size_t)(buf + len - frag);
            have_line = nl != NULL;
            end = nl ? (size_t)(nl - buf) : 0;
        }
        uint64_t last_seq = 0;
        if (have_line) {
            const char *before = memrchr(buf, '\n', end); /* NULL: the line starts the file */
            const char *line = before ? before + 1 : buf;
            size_t line_len = (size_t)(buf + end - line);
            char unused[AUDIT_HASH_HEX_LEN + 1];
            if (chain_fields(line, line_len, &last_seq, unused) != FIELDS_OK)
                last_seq = 0; /* not chained: restart the numbering at 1 */
            sha256_hex(line, line_len, out.prev);
        }
        out.next_seq = last_seq + 1;
        if (frag != NULL) { /* the fragment keeps the seq it was being written with */
            sha256_hex(frag, frag_len, out.prev);
            out.next_seq = last_seq + 2;
            out.torn = true;
        }
    }
    *cp = out;
    rc = 0;
out:
    free(buf);
    return rc;
}

struct audit_log *audit_open(const char *path)
{
    if (path == NULL)
        return NULL;
    struct audit_log *a = xcalloc(1, sizeof(*a));
    a->fd = -1;
    a->path = xstrdup(path);
    a->pos = (struct chain_pos){.next_seq = 1, .prev = AUDIT_GENESIS_HEX};
    if (strcmp(path, "-") == 0) {
        a->fd = 1;
    } else {
        a->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (a->fd == -1)
            goto fail;
        a->owns_fd = true;
        struct stat st;
        if (fstat(a->fd, &st) == -1)
            goto fail;
        a->seekable = S_ISREG(st.st_mode);
    }
    if (a->seekable) {
        if (flock(a->fd, LOCK_EX | LOCK_NB) == -1) {
            if (errno == EWOULDBLOCK) {
                log_error("audit log %s is locked by another process (another authproxy writing "
                          "to it?): two writers would fork its hash chain",
                          path);
                errno = EBUSY;
            }
            goto fail;
        }
        if (chain_pos_from_tail(a->fd, &a->pos) == -1)
            goto fail;
        if (a->pos.torn)
            log_warn("audit log %s ends with an incomplete line (a crash in the middle of a "
                     "write?): it is kept, and the hash chain resumes after it at seq %" PRIu64,
                     path, a->pos.next_seq);
        else if (a->pos.next_seq > 1)
            log_info("audit log %s: continuing its hash chain at seq %" PRIu64, path,
                     a->pos.next_seq);
    }
    pthread_mutex_init(&a->lock, NULL);
    return a;
fail:;
    int saved = errno;
    if (a->owns_fd)
        close(a->fd);
    free(a->path);
    free(a);
    errno = saved;
    return NULL;
}

void audit_close(struct audit_log *a)
{
    if (a == NULL)
        return;
    log_info("audit log %s closed at seq %" PRIu64 ", last line sha256 %s", a->path,
             a->pos.next_seq - 1, a->pos.prev);
    if (a->owns_fd)
        close(a->fd); /* releases the flock */
    pthread_mutex_destroy(&a->lock);
    free(a->path);
    free(a);
}

/* The record's SPEC §7 fields as one compact JSON object text (heap, caller frees; *len its
 * length). */
static char *record_json(const struct audit_record *r, size_t *len)
{
    struct timespec ts;
    struct tm tm;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%06ldZ", ts.tv_nsec / 1000);

    struct jsonw w;
    jsonw_begin(&w, 512);
    jsonw_str(&w, "ts", when);
    jsonw_str(&w, "sandbox", r->sandbox);
    jsonw_str(&w, "workspace", r->workspace);
    jsonw_str(&w, "client", r->client);
    jsonw_str(&w, "method", r->method);
    jsonw_str(&w, "scheme", r->scheme);
    jsonw_str(&w, "host", r->host);
    jsonw_u64_or_null(&w, "port", r->port);
    jsonw_str(&w, "path", r->path);
    jsonw_str(&w, "decision", r->decision);
    jsonw_str(&w, "decided_by", r->decided_by);
    jsonw_str_array(&w, "injected_headers", r->injected, r->n_injected);
    jsonw_u64_or_null(&w, "status", r->status > 0 ? (uint64_t)r->status : 0);
    jsonw_u64_or_null(&w, "upstream_status", r->upstream_status > 0 ? (uint64_t)r->upstream_status : 0);
    jsonw_u64(&w, "bytes_in", r->bytes_from_client);
    jsonw_u64(&w, "bytes_out", r->bytes_to_client);
    jsonw_thousandths(&w, "duration_ms", r->duration_us);
    jsonw_str(&w, "error", r->error);
    jsonw_u64(&w, "policy_version", r->policy_version);
    return jsonw_finish(&w, len);
}

/* Chains and appends the records whose bodies ("{...}", each ended by '\n') fill bodies[0..len),
 * n of them, in one write(2) under the lock. On success the chain advances past them; on a
 * failure they are lost (logged once per run of failures) and the next write re-reads the tail
 * first, since part of the text may have landed. */
static void chain_and_write(struct audit_log *a, const char *bodies, size_t len, size_t n)
{
    /* Per record: the chain members (seq up to 20 digits, prev 64 hex); one leading newline
     * ends a torn fragment. */
    size_t cap = 1 + len + n * (sizeof(",\"seq\":,\"prev\":\"\"}") + 20 + AUDIT_HASH_HEX_LEN);
    char *buf = xmalloc(cap);

    pthread_mutex_lock(&a->lock);
    if (a->resync && chain_pos_from_tail(a->fd, &a->pos) == 0)
        a->resync = false;
    struct chain_pos pos = a->pos;
    size_t off = 0;
    if (pos.torn)
        buf[off++] = '\n';
    for (const char *body = bodies; body < bodies + len;) {
        const char *end = memchr(body, '\n', (size_t)(bodies + len - body)); /* at "}\n" */
        size_t line_start = off;
        memcpy(buf + off, body, (size_t)(end - body) - 1); /* without its '}' */
        off += (size_t)(end - body) - 1;
        off += (size_t)snprintf(buf + off, cap - off, ",\"seq\":%" PRIu64 ",\"prev\":\"%s\"}",
                                pos.next_seq, pos.prev);
        sha256_hex(buf + line_start, off - line_start, pos.prev);
        buf[off++] = '\n';
        pos.next_seq++;
        body = end + 1;
    }
    /* One write(2) of whole lines (write_all only loops on a short write). */
    if (write_all(a->fd, buf, off) == 0) {
        pos.torn = false;
        a->pos = pos;
        if (a->failing)
            log_info("audit log %s: writing again", a->path);
        a->failing = false;
    } else {
        if (!a->failing)
            log_error("audit log %s: write failed (%s): records are being lost", a->path,
                      strerror(errno));
        a->failing = true;
        a->resync = a->seekable; /* part of the text may have landed */
    }
    pthread_mutex_unlock(&a->lock);
    free(buf);
}

/* See audit.h. */
void audit_write(struct audit_log *a, const struct audit_record *r)
{
    if (a == NULL)
        return;
    size_t blen;
    char *body = record_json(r, &blen); /* "{...}" and room for the '\n' */
    body[blen++] = '\n';
    chain_and_write(a, body, blen, 1);
    free(body);
}

/* See audit.h. */
void audit_batch_init(struct audit_batch *b, struct audit_log *log)
{
    memset(b, 0, sizeof(*b));
    b->log = log;
}

/* See audit.h. */
bool audit_batch_add(struct audit_batch *b, const struct audit_record *r)
{
    if (b->log == NULL)
        return false;
    size_t blen;
    char *body = record_json(r, &blen);
    if (b->len + blen + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + blen + 1)
            cap *= 2;
        b->bodies = xrealloc(b->bodies, cap);
        b->cap = cap;
    }
    memcpy(b->bodies + b->len, body, blen);
    b->len += blen;
    b->bodies[b->len++] = '\n';
    b->n++;
    free(body);
    return b->n == 1;
}

/* See audit.h. */
void audit_batch_flush(struct audit_batch *b)
{
    if (b->n == 0)
        return;
    chain_and_write(b->log, b->bodies, b->len, b->n);
    b->len = 0;
    b->n = 0;
}

/* See audit.h. */
void audit_batch_free(struct audit_batch *b)
{
    audit_batch_flush(b);
    free(b->bodies);
    memset(b, 0, sizeof(*b));
}

/* ---- verification ---- */

struct verify {
    struct audit_verify_result *res;
    uint64_t first_torn; /* first incomplete line the chain resumed after (0: none) */
    uint64_t n_torn;
};

/* Records the first problem at line `line` (a hard failure: verification stops). An earlier
 * incomplete line, being earlier, is named first. */
static void verify_fail(struct verify *v, uint64_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void verify_fail(struct verify *v, uint64_t line, const char *fmt, ...)
{
    struct audit_verify_result *res = v->res;
    size_t n = 0;
    res->bad_line = line;
    if (v->first_torn != 0) {
        res->bad_line = v->first_torn;
        n = (size_t)snprintf(res->reason, sizeof(res->reason),
                             "line %" PRIu64 ": incomplete line (not JSON) left by a crash or a "
                             "failed write, the chain resumes after it; then ",
                             v->first_torn);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->reason + n, sizeof(res->reason) - n, fmt, ap);
    va_end(ap);
}

/* After a seq gap at line n (seq jumps from last_seq to seq), reads on to tell lines removed
 * from lines moved: a later line carrying one of the missing numbers means they were moved. */
static void verify_gap(struct verify *v, FILE *f, char **line, size_t *cap, uint64_t n,
                       uint64_t last_seq, uint64_t seq)
{
    uint64_t m = n, s;
    char prev[AUDIT_HASH_HEX_LEN + 1];
    ssize_t got;
    while ((got = getline(line, cap, f)) != -1) {
        m++;
        size_t len = (size_t)got - ((*line)[got - 1] == '\n');
        if (chain_fields(*line, len, &s, prev) == FIELDS_OK && s > last_seq && s < seq) {
            verify_fail(v, n,
                        "line %" PRIu64 ": reordered: seq %" PRIu64 " follows seq %" PRIu64
                        ", and seq %" PRIu64 " comes later, at line %" PRIu64,
                        n, seq, last_seq, s, m);
            return;
        }
    }
    verify_fail(v, n,
                "line %" PRIu64 ": removed: %" PRIu64 " line%s missing before it (seq jumps from "
                "%" PRIu64 " to %" PRIu64 ")",
                n, seq - last_seq - 1, seq - last_seq - 1 == 1 ? "" : "s", last_seq, seq);
}

int audit_verify(FILE *f, struct audit_verify_result *res)
{
    memset(res, 0, sizeof(*res));
    struct verify v = {.res = res};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    uint64_t n = 0, last_seq = 0, seq = 0;
    uint64_t torn_line = 0; /* a line that is not JSON, waiting to see if the chain resumes */
    char expect[AUDIT_HASH_HEX_LEN + 1] = AUDIT_GENESIS_HEX; /* hash of the last line accepted */
    char torn_hash[AUDIT_HASH_HEX_LEN + 1] = "";
    char hash[AUDIT_HASH_HEX_LEN + 1], prev[AUDIT_HASH_HEX_LEN + 1];
    int rc = 1;

    while ((got = getline(&line, &cap, f)) != -1) {
        n++;
        size_t len = (size_t)got;
        bool complete = line[len - 1] == '\n';
        len -= complete;
        int fr = FIELDS_NOT_JSON;
        if (complete) {
            sha256_hex(line, len, hash);
            memcpy(res->last_hash, hash, sizeof(hash));
            fr = chain_fields(line, len, &seq, prev);
        }
        if (torn_line != 0) {
            if (fr == FIELDS_OK && strcmp(prev, torn_hash) == 0 && seq == last_seq + 2) {
                v.first_torn = v.first_torn ? v.first_torn : torn_line;
                v.n_torn++;
                torn_line = 0;
                last_seq = seq;
                memcpy(expect, hash, sizeof(hash));
                continue;
            }
            verify_fail(&v, torn_line, "line %" PRIu64 ": not a JSON object", torn_line);
            goto out;
        }
        if (!complete) {
            verify_fail(&v, n,
                        "line %" PRIu64 ": truncated last line (no newline at the end: a write "
                        "cut short by a crash, or the file was cut)",
                        n);
            goto out;
        }
        if (fr == FIELDS_NOT_JSON) { /* a torn line if the next one chains to it */
            torn_line = n;
            memcpy(torn_hash, hash, sizeof(hash));
            continue;
        }
        if (fr == FIELDS_UNCHAINED) {
            verify_fail(&v, n,
                        "line %" PRIu64 ": no \"seq\"/\"prev\" members: not a chained audit "
                        "line (written before the chain existed?)",
                        n);
            goto out;
        }
        if (strcmp(prev, expect) == 0) {
            if (seq != last_seq + 1) {
                verify_fail(&v, n,
                            "line %" PRIu64 ": edited: seq %" PRIu64 " where %" PRIu64
                            " was expected, though it chains to the line before",
                            n, seq, last_seq + 1);
                goto out;
            }
        } else if (n == 1) {
            if (seq == 1)
                verify_fail(&v, 1, "line 1: edited: its prev is not the genesis value");
            else
                verify_fail(&v, 1,
                            "line 1: removed: the file starts at seq %" PRIu64
                            ", the lines before it are missing",
                            seq);
            goto out;
        } else if (seq == last_seq + 1) {
            verify_fail(&v, n - 1,
                        "line %" PRIu64 ": edited: hash mismatch (its SHA-256 is not the prev "
                        "recorded by line %" PRIu64 ")",
                        n - 1, n);
            goto out;
        } else if (seq > last_seq + 1) {
            verify_gap(&v, f, &line, &cap, n, last_seq, seq);
            goto out;
        } else {
            verify_fail(&v, n,
                        "line %" PRIu64 ": reordered or duplicated: seq %" PRIu64
                        " comes after seq %" PRIu64,
                        n, seq, last_seq);
            goto out;
        }
        last_seq = seq;
        memcpy(expect, hash, sizeof(hash));
    }
    if (ferror(f)) {
        rc = -1;
        goto out;
    }
    if (torn_line != 0) {
        verify_fail(&v, torn_line, "line %" PRIu64 ": not a JSON object", torn_line);
    } else if (v.first_torn != 0) {
        res->bad_line = v.first_torn;
        snprintf(res->reason, sizeof(res->reason),
                 "line %" PRIu64 ": incomplete line (not JSON) left by a crash or a failed "
                 "write%s; the chain resumes after it and is intact to the end (%" PRIu64 " lines)",
                 v.first_torn, v.n_torn > 1 ? ", with more later" : "", n);
    } else {
        rc = 0;
    }
out:
    if (rc != -1)
        res->lines = n;
    free(line);
    return rc;
}
