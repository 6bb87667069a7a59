#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <malloc.h>

#include <jansson.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>

static void out_of_memory(size_t n)
{
    /* No allocation here: write a fixed message and abort (see the policy in util.h). */
    static const char msg[] = "authproxy: out of memory, aborting\n";
    (void)n;
    (void)!write(2, msg, sizeof(msg) - 1);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        out_of_memory(n);
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(count * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        out_of_memory(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort(); /* only an invalid format string gets here: a programming error */
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void secure_zero(void *p, size_t n)
{
    if (p != NULL && n > 0)
        OPENSSL_cleanse(p, n);
}

static void zeroing_free(void *p)
{
    if (p == NULL)
        return;
    secure_zero(p, malloc_usable_size(p));
    free(p);
}

void util_install_zeroing_json_allocator(void)
{
    json_set_alloc_funcs(xmalloc, zeroing_free);
}

void secret_free(char *s)
{
    if (s == NULL)
        return;
    secure_zero(s, strlen(s));
    free(s);
}

bool ascii_case_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (ascii_lower(a[i]) != ascii_lower(b[i]))
            return false;
    return true;
}

char *ascii_lower_str(char *s)
{
    for (char *p = s; *p; p++)
        *p = ascii_lower(*p);
    return s;
}

int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

char *read_file(const char *path, size_t max_len, size_t *len_out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return NULL;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            /* Grow by copy, zeroing the old block: the file may hold secrets, and realloc would
             * leave a stale copy in freed memory. */
            size_t ncap = cap ? cap * 2 : 8192;
            char *nbuf = xmalloc(ncap);
            if (buf) {
                memcpy(nbuf, buf, len);
                secure_zero(buf, cap);
                free(buf);
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max_len) {
            errno = EFBIG;
            goto fail;
        }
    }
    close(fd);
    if (buf == NULL)
        buf = xmalloc(1);
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return buf;
fail : {
    int saved = errno;
    close(fd);
    if (buf) {
        secure_zero(buf, cap);
        free(buf);
    }
    errno = saved;
    return NULL;
}
}

int parse_listen_address(const char *spec, struct sockaddr *out, int *out_len)
{
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || strcmp(colon, ":0") != 0)
        return evutil_parse_sockaddr_port(spec, out, out_len);
    /* Port 0: parse with a placeholder port, then clear it. */
    char *tmp = xasprintf("%.*s:1", (int)(colon - spec), spec);
    int rc = evutil_parse_sockaddr_port(tmp, out, out_len);
    free(tmp);
    if (rc != 0)
        return -1;
    if (out->sa_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = 0;
    else
        ((struct sockaddr_in6 *)out)->sin6_port = 0;
    return 0;
}

int mkdir_p(const char *path, char **err)
{
    char *p = xstrdup(path);
    int rc = -1;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0700) == -1 && errno != EEXIST) {
            *err = xasprintf("cannot create directory %s: %s", p, strerror(errno));
            goto out;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    rc = 0;
out:
    free(p);
    return rc;
}

/* fsyncs the directory holding path, so a link/rename into it is durable. */
int fsync_parent_dir(const char *path)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    int rc = -1;
    if (slash == NULL) {
        free(dir);
        dir = xstrdup(".");
    } else if (slash == dir) {
        slash[1] = '\0';
    } else {
        *slash = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd != -1) {
        rc = fsync(fd);
        close(fd);
    }
    free(dir);
    return rc;
}

int lock_file_open(const char *path, int op, char **err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd == -1) {
        *err = xasprintf("cannot open lock file %s: %s", path, strerror(errno));
        return -1;
    }
    while (flock(fd, op) == -1) {
        if (errno == EINTR)
            continue;
        *err = xasprintf("cannot lock %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int write_file_atomic(const char *path, const void *data, size_t len, bool replace, char **err)
{
    char *tmp = xasprintf("%s.tmp.XXXXXX", path);
    bool tmp_exists = false;
    int rc = -1;
    int fd = mkstemp(tmp); /* O_CREAT | O_EXCL, mode 0600 */
    if (fd == -1) {
        *err = xasprintf("cannot create a temporary file beside %s: %s", path, strerror(errno));
        goto out;
    }
    tmp_exists = true;
    if (fchmod(fd, 0600) == -1 || write_all(fd, data, len) == -1 || fsync(fd) == -1) {
        *err = xasprintf("cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    int closed = close(fd);
    fd = -1;
    if (closed == -1) {
        *err = xasprintf("cannot write %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (replace) {
        if (rename(tmp, path) == -1) {
            *err = xasprintf("cannot replace %s: %s", path, strerror(errno));
            goto out;
        }
        tmp_exists = false;
    } else if (link(tmp, path) == -1) {
        if (errno == EEXIST) {
            rc = 1;
            goto out;
        }
        *err = xasprintf("cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    if (fsync_parent_dir(path) == -1) {
        *err = xasprintf("cannot sync the directory of %s: %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd != -1)
        close(fd);
    if (tmp_exists)
        (void)unlink(tmp); /* after link() or a failure */
    free(tmp);
    return rc;
}

uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void errlist_add(struct errlist *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    char *msg = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    e->msgs = xrealloc(e->msgs, (e->n + 1) * sizeof(*e->msgs));
    e->msgs[e->n++] = msg;
}

void errlist_free(struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->n = 0;
}

/* See util.h. */
size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    uint32_t c = p[0];
    size_t len;
    uint32_t min;
    if (c < 0x80) {
        len = 1, min = 0;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2, min = 0x80, c &= 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, min = 0x800, c &= 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, min = 0x10000, c &= 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    if (cp != NULL)
        *cp = c;
    return len;
}

/* See util.h. */
void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static EVP_MD *sha256_fetched;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_fetched = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    if (sha256_fetched == NULL)
        abort(); /* the default provider always has SHA-256: only memory can be missing */
}

/* See util.h. */
const EVP_MD *sha256_md(void)
{
    pthread_once(&sha256_once, sha256_fetch);
    return sha256_fetched;
}

/* See util.h. */
void sha256_digest(const void *p, size_t n, uint8_t out[32])
{
    unsigned len = 0;
    if (EVP_Digest(p, n, out, &len, sha256_md(), NULL) != 1 || len != 32)
        abort();
}
