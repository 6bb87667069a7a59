/* util: allocation with a single out-of-memory policy, string helpers, secret hygiene.
 *
 * Out-of-memory policy (written down once, here): authproxy aborts the process on allocation
 * failure. A proxy that limps on after a failed malloc could forward a request without its
 * policy or credentials; aborting fails closed, and the supervisor restarts the daemon. Every
 * allocation in the code base goes through these wrappers, so callers never check for NULL. */
#ifndef AUTHPROXY_UTIL_H
#define AUTHPROXY_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a fresh heap string; the caller frees it. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Lower-case hex of n bytes into out, which holds 2 * n + 1 bytes (NUL-terminated). */
void hex_encode(const uint8_t *in, size_t n, char *out);

/* Decodes the UTF-8 character at p (n >= 1 bytes available) per RFC 3629: returns its length
 * (1-4) and sets *cp (when cp is not NULL), or returns 0 for an invalid sequence (a bad lead or
 * continuation byte, truncated, overlong, a surrogate, above U+10FFFF). */
size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp);

/* The SHA-256 EVP_MD, fetched from the default provider once per process (pthread_once, never
 * freed: immutable after the first call, the one process-wide cache of this module). Why not
 * EVP_sha256() or SHA256(): OpenSSL 3 looks the algorithm up in its provider store on every
 * such use, under a lock, which costs more than hashing a short input on the request path. */
const struct evp_md_st *sha256_md(void);
/* SHA-256 of n bytes at p into out[32]. Aborts only if OpenSSL is out of memory (OOM policy). */
void sha256_digest(const void *p, size_t n, uint8_t out[32]);

/* Overwrites n bytes at p with zeros in a way the compiler cannot elide. */
void secure_zero(void *p, size_t n);
/* Makes jansson allocate through xmalloc and zero every block it frees: config and API
 * documents carry secret values, and jansson frees its strings without clearing them. Called
 * once at start-up, before any JSON is parsed (process-wide setting). */
void util_install_zeroing_json_allocator(void);

/* Zeroes then frees a NUL-terminated string holding a secret. NULL is allowed. */
void secret_free(char *s);

/* ASCII-only case folding: HTTP and DNS names are ASCII, and locale must not matter. */
static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}
bool ascii_case_eq(const char *a, size_t alen, const char *b, size_t blen);
/* Lower-cases s in place; returns s. */
char *ascii_lower_str(char *s);

/* Writes all of buf to fd, retrying on EINTR and short writes; -1 with errno on error. */
int write_all(int fd, const void *buf, size_t len);
/* Reads a whole (small) file into a NUL-terminated heap buffer; NULL with errno on error. */
char *read_file(const char *path, size_t max_len, size_t *len_out);
/* Parses a listen address "ADDR:PORT" ("127.0.0.1:8080", "[::1]:0"); port 0 is allowed (the
 * kernel picks one), unlike evutil_parse_sockaddr_port. 0, or -1 if spec is not such an
 * address. */
struct sockaddr;
int parse_listen_address(const char *spec, struct sockaddr *out, int *out_len);

/* Creates path and its missing parents (mode 0700). 0, or -1 with *err (heap, caller frees). */
int mkdir_p(const char *path, char **err);

/* fsyncs the directory holding path, so a file created, linked or renamed there stays named
 * after a crash. 0, or -1 with errno. */
int fsync_parent_dir(const char *path);

/* Opens path (created with mode 0600 if missing, never following a symlink) and takes a flock
 * of kind op (LOCK_EX or LOCK_SH from <sys/file.h>), waiting for it. Returns the descriptor —
 * closing it releases the lock, as does the process dying — or -1 with *err (heap). */
int lock_file_open(const char *path, int op, char **err);

/* Gives path the contents data[0..len) atomically: a temporary "<path>.tmp.XXXXXX" created 0600
 * with O_EXCL is written and fsync'ed, then rename()d over path (replace) or link()ed to path
 * (!replace: first creation, never overwriting), and the directory is fsync'ed. A crash leaves
 * the old file or the new one, never a mix. Returns 0; 1 when !replace and path already exists
 * (nothing changed); -1 with *err (heap). The temporary never outlives the call. */
int write_file_atomic(const char *path, const void *data, size_t len, bool replace, char **err);

/* Monotonic clock in microseconds. */
uint64_t monotonic_us(void);

/* A list of human-readable error messages, for validators that report every problem at once
 * rather than the first. Messages name where the problem is (a JSON path, a file). */
struct errlist {
    char **msgs;
    size_t n;
};
void errlist_add(struct errlist *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void errlist_free(struct errlist *e);

#endif
