/* tls_upstream: the client SSL_CTX towards origins and its session cache.
 *
 * Session resumption: OpenSSL's internal client cache is disabled (SSL_SESS_CACHE_CLIENT |
 * SSL_SESS_CACHE_NO_INTERNAL_STORE) and a new-session callback stores a private copy of every
 * resumable session the library hands us under the "host:port" key recorded on the SSL by
 * tls_upstream_new_ssl; each new SSL resumes from its own copy of the cached session. The
 * callback runs at the end of a TLS 1.2 handshake, and for TLS 1.3 when a NewSessionTicket
 * arrives (during an SSL_read after the handshake), so callers have nothing to call. Only
 * handshakes that passed verification produce sessions: SSL_VERIFY_PEER aborts the others.
 * The cache is a bounded LRU (hash table + list) under a mutex; a lookup that finds an expired
 * or non-resumable session drops it.
 *
 * Failure reasons: see tls_upstream_failure_reason_err and upstream_info_cb. */
#include "tls_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "glob.h"
#include "log.h"
#include "util.h"

#define UPSTREAM_SESSION_CAP 1024 /* host:port pairs remembered per configuration */
#define UPSTREAM_BUCKETS     1024 /* a power of two */
#define UPSTREAM_NAME_MAX    253

struct upstream_session {
    char *key; /* "host:port", owned */
    uint64_t hash;
    SSL_SESSION *sess; /* one reference, owned */
    struct upstream_session *hnext;
    struct upstream_session *lru_prev, *lru_next; /* head = most recently used */
};

struct tls_upstream {
    SSL_CTX *ctx;         /* owned */
    pthread_mutex_t lock; /* guards the session cache and the trust store's loading */
    _Atomic bool system_trust; /* the system trust store is in ctx (see upstream_load_trust) */
    bool lock_init;
    struct upstream_session *buckets[UPSTREAM_BUCKETS];
    struct upstream_session *lru_head, *lru_tail;
    size_t count;
};

/* ---------------------------------------------------------------------------------------- */
/* SSL ex_data: the session key and the last failure reason of a client SSL (heap strings). */

static int upstream_key_idx = -1;
static int upstream_reason_idx = -1; /* the text last returned by tls_upstream_failure_reason */
static int upstream_exit_idx = -1;   /* the first fatal handshake error, see upstream_info_cb */
static pthread_once_t upstream_idx_once = PTHREAD_ONCE_INIT;

/* ex_data free callback: the stored value is a heap string (or NULL) owned by the SSL. */
static void upstream_exdata_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                                 void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

/* ex_data dup callback (SSL_dup): the copy gets its own string so each SSL frees its own. */
static int upstream_exdata_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d,
                               int idx, long argl, void *argp)
{
    (void)to, (void)from, (void)idx, (void)argl, (void)argp;
    if (from_d != NULL && *from_d != NULL)
        *from_d = xstrdup(*from_d);
    return 1;
}

static void upstream_init_indexes(void)
{
    upstream_key_idx =
        SSL_get_ex_new_index(0, NULL, NULL, upstream_exdata_dup, upstream_exdata_free);
    upstream_reason_idx =
        SSL_get_ex_new_index(0, NULL, NULL, upstream_exdata_dup, upstream_exdata_free);
    upstream_exit_idx =
        SSL_get_ex_new_index(0, NULL, NULL, upstream_exdata_dup, upstream_exdata_free);
}

/* Replaces the heap string stored at idx on ssl (freeing the previous one); takes value.
 * Returns the stored string, or NULL if OpenSSL could not store it (value is then freed). */
static const char *upstream_set_string(SSL *ssl, int idx, char *value)
{
    char *old = SSL_get_ex_data(ssl, idx);
    if (SSL_set_ex_data(ssl, idx, value) != 1) {
        free(value);
        return NULL;
    }
    free(old);
    return value;
}

/* ---------------------------------------------------------------------------------------- */
/* Host names */

/* ---------------------------------------------------------------------------------------- */
/* Session cache (all helpers below require u->lock) */

static uint64_t upstream_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static struct upstream_session *upstream_find(struct tls_upstream *u, uint64_t hash,
                                              const char *key)
{
    for (struct upstream_session *e = u->buckets[hash % UPSTREAM_BUCKETS]; e; e = e->hnext)
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static void upstream_lru_unlink(struct tls_upstream *u, struct upstream_session *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        u->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        u->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void upstream_lru_push_front(struct tls_upstream *u, struct upstream_session *e)
{
    e->lru_prev = NULL;
    e->lru_next = u->lru_head;
    if (u->lru_head)
        u->lru_head->lru_prev = e;
    u->lru_head = e;
    if (u->lru_tail == NULL)
        u->lru_tail = e;
}

/* Unlinks e from the table and the list and frees it with its session reference. */
static void upstream_remove(struct tls_upstream *u, struct upstream_session *e)
{
    struct upstream_session **pp = &u->buckets[e->hash % UPSTREAM_BUCKETS];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    upstream_lru_unlink(u, e);
    u->count--;
    SSL_SESSION_free(e->sess);
    free(e->key);
    free(e);
}

/* True if sess can still be offered: resumable and not past its lifetime. */
static bool upstream_session_usable(const SSL_SESSION *sess)
{
    if (SSL_SESSION_is_resumable(sess) != 1)
        return false;
    long t = SSL_SESSION_get_time(sess), timeout = SSL_SESSION_get_timeout(sess);
    return (time_t)(t + timeout) > time(NULL);
}

/* OpenSSL new-session callback. Stores a private copy of sess under the SSL's host:port key,
 * replacing an older session for that key and evicting the least recently used key when full.
 * A copy, not a reference: OpenSSL marks an SSL's current session non-resumable when that SSL
 * is freed without having sent close_notify, and an upstream connection that merely ends
 * abruptly must not cost the next connection its resumption (TLS 1.1+ allow resuming after an
 * unclean close, RFC 5246 §7.2.1). Returns 0: OpenSSL keeps its own reference. */
static int upstream_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_upstream *u = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    const char *key = SSL_get_ex_data(ssl, upstream_key_idx);
    if (u == NULL || key == NULL || !upstream_session_usable(sess))
        return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (copy == NULL) {
        ERR_clear_error();
        return 0;
    }
    uint64_t hash = upstream_hash(key);
    pthread_mutex_lock(&u->lock);
    struct upstream_session *e = upstream_find(u, hash, key);
    if (e != NULL) {
        SSL_SESSION_free(e->sess);
        e->sess = copy;
        upstream_lru_unlink(u, e);
    } else {
        if (u->count >= UPSTREAM_SESSION_CAP)
            upstream_remove(u, u->lru_tail);
        e = xcalloc(1, sizeof(*e));
        e->key = xstrdup(key);
        e->hash = hash;
        e->sess = copy;
        e->hnext = u->buckets[hash % UPSTREAM_BUCKETS];
        u->buckets[hash % UPSTREAM_BUCKETS] = e;
        u->count++;
    }
    upstream_lru_push_front(u, e);
    pthread_mutex_unlock(&u->lock);
    return 0;
}

/* Info callback: when a handshake call returns failing with an error queued (the test
 * SSL_get_error itself applies to tell SSL_ERROR_SSL from WANT_READ/WRITE), remembers that
 * error's reason, the first time only. This lets tls_upstream_failure_reason explain a failure
 * even when the thread's error queue has been drained in between, which libevent's
 * bufferevent_openssl does before it runs the event callback. Cheap: every other call returns
 * at the first test. */
static void upstream_info_cb(const SSL *ssl, int where, int ret)
{
    if (!(where & SSL_CB_EXIT) || ret > 0)
        return;
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    SSL *s = (SSL *)ssl; /* the ex_data accessors take a non-const SSL */
    if (r == NULL || SSL_get_ex_data(s, upstream_exit_idx) != NULL)
        return;
    (void)upstream_set_string(s, upstream_exit_idx, xasprintf("handshake failed: %s", r));
}

/* ---------------------------------------------------------------------------------------- */
/* Public API */

static void upstream_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void upstream_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (err == NULL || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* The reason text of the most recent queued OpenSSL error (static), and clears the queue. */
static const char *upstream_ossl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown OpenSSL error";
}

struct tls_upstream *tls_upstream_new(const char *extra_ca_file, char *err, size_t err_len)
{
    struct tls_upstream *u = xcalloc(1, sizeof(*u));
    static const unsigned char alpn[] = "\x08http/1.1";

    if (pthread_mutex_init(&u->lock, NULL) != 0) {
        upstream_err(err, err_len, "cannot initialise a mutex");
        free(u);
        return NULL;
    }
    u->lock_init = true;
    pthread_once(&upstream_idx_once, upstream_init_indexes);
    if (upstream_key_idx < 0 || upstream_reason_idx < 0 || upstream_exit_idx < 0) {
        upstream_err(err, err_len, "cannot allocate SSL ex_data indexes");
        goto fail;
    }
    u->ctx = SSL_CTX_new(TLS_client_method());
    if (u->ctx == NULL || SSL_CTX_set_min_proto_version(u->ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_app_data(u->ctx, u) != 1) {
        upstream_err(err, err_len, "cannot create the upstream TLS context: %s",
                     upstream_ossl_reason());
        goto fail;
    }
    SSL_CTX_set_verify(u->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(u->ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_alpn_protos(u->ctx, alpn, sizeof(alpn) - 1) != 0) { /* 0 is success */
        upstream_err(err, err_len, "cannot set ALPN: %s", upstream_ossl_reason());
        goto fail;
    }
    SSL_CTX_set_info_callback(u->ctx, upstream_info_cb);
    SSL_CTX_set_session_cache_mode(u->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(u->ctx, upstream_new_session);
    /* The system trust store is loaded at the first upstream TLS connection (see
     * upstream_load_trust); the extra bundle now, so a bad upstream_ca_file fails the start. */
    if (extra_ca_file != NULL) {
        struct stat st;
        if (stat(extra_ca_file, &st) == -1) {
            upstream_err(err, err_len, "upstream CA file %s: %s", extra_ca_file, strerror(errno));
            goto fail;
        }
        if (SSL_CTX_load_verify_file(u->ctx, extra_ca_file) != 1) {
            upstream_err(err, err_len, "upstream CA file %s: cannot load certificates (%s)",
                         extra_ca_file, upstream_ossl_reason());
            goto fail;
        }
    }
    return u;
fail:
    tls_upstream_free(u);
    return NULL;
}

/* Frees the context and the cached sessions. SSLs made from u keep the SSL_CTX alive (OpenSSL
 * counts references) but their new-session callback points at u: free u only after them. */
void tls_upstream_free(struct tls_upstream *u)
{
    if (u == NULL)
        return;
    while (u->lru_head != NULL)
        upstream_remove(u, u->lru_head);
    SSL_CTX_free(u->ctx);
    if (u->lock_init)
        pthread_mutex_destroy(&u->lock);
    free(u);
}

/* Adds the system trust store to u->ctx, once, before the first SSL is made from it. Why lazily:
 * decoding the ~140 certificates of the system bundle (and freeing them at exit) is about 15 ms
 * of every start, and `authproxy sandbox run` starts a proxy for each command, many of which
 * never open an upstream TLS connection. Every SSL is made after this returns true, so no
 * handshake ever runs against a store that is still being filled. False (logged) if OpenSSL
 * cannot load it: the caller then refuses the connection. */
static bool upstream_load_trust(struct tls_upstream *u)
{
    if (u->system_trust)
        return true;
    pthread_mutex_lock(&u->lock);
    bool ok = u->system_trust;
    if (!ok) {
        ok = SSL_CTX_set_default_verify_paths(u->ctx) == 1;
        if (ok)
            u->system_trust = true;
        else
            log_error("tls_upstream: cannot load the system trust store: %s",
                      upstream_ossl_reason());
    }
    pthread_mutex_unlock(&u->lock);
    return ok;
}

SSL *tls_upstream_new_ssl(struct tls_upstream *u, const char *host, uint16_t port)
{
    char name[UPSTREAM_NAME_MAX + 1];
    unsigned char ip[16];
    bool is_ip = false, is_v6 = false, bracketed = false;
    SSL *ssl = NULL;
    if (host == NULL)
        return NULL;
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
        bracketed = true; /* only an IPv6 literal may be bracketed */
    } else if (len > 0 && host[len - 1] == '.') {
        len--; /* "example.com." names the same host; SNI must not carry the dot (RFC 6066) */
    }
    if (len == 0 || len > UPSTREAM_NAME_MAX || memchr(host, '\0', len) != NULL)
        return NULL;
    memcpy(name, host, len);
    name[len] = '\0';
    ascii_lower_str(name);
    if (!bracketed && inet_pton(AF_INET, name, ip) == 1) {
        is_ip = true;
    } else if (inet_pton(AF_INET6, name, ip) == 1) {
        is_ip = is_v6 = true;
    } else if (bracketed || !host_name_valid(name, len)) {
        return NULL;
    }

    if (!upstream_load_trust(u))
        goto fail;
    ssl = SSL_new(u->ctx);
    if (ssl == NULL)
        goto fail;
    if (is_ip) {
        /* No SNI for IP literals (RFC 6066); verify the certificate's iPAddress SAN. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1)
            goto fail;
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
            goto fail;
    }
    char *key = is_v6 ? xasprintf("[%s]:%u", name, (unsigned)port)
                      : xasprintf("%s:%u", name, (unsigned)port);
    if (upstream_set_string(ssl, upstream_key_idx, key) == NULL)
        goto fail;

    uint64_t hash = upstream_hash(key);
    pthread_mutex_lock(&u->lock);
    struct upstream_session *e = upstream_find(u, hash, key);
    if (e != NULL && !upstream_session_usable(e->sess)) {
        upstream_remove(u, e);
        e = NULL;
    }
    SSL_SESSION *resume = NULL; /* a private copy for this SSL, see upstream_new_session */
    if (e != NULL) {
        resume = SSL_SESSION_dup(e->sess);
        upstream_lru_unlink(u, e);
        upstream_lru_push_front(u, e);
    }
    pthread_mutex_unlock(&u->lock);
    if (resume != NULL && SSL_set_session(ssl, resume) != 1)
        ERR_clear_error();    /* resumption is an optimisation: carry on with a full handshake */
    SSL_SESSION_free(resume); /* SSL_set_session took its own reference */
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

/* Decides in this order: the certificate verification result (hostname/IP mismatch get their
 * own short text), then ossl_err if non-zero, else the most recent error queued on this thread,
 * then the first fatal handshake error recorded by upstream_info_cb, then a generic text. The
 * returned string is static or stored on ssl (freed with it, replaced by the next call). */
const char *tls_upstream_failure_reason_err(SSL *ssl, unsigned long ossl_err)
{
    char buf[256];
    if (ssl == NULL)
        return "handshake failed";
    long vr = SSL_get_verify_result(ssl);
    if (vr == X509_V_ERR_HOSTNAME_MISMATCH)
        return "hostname mismatch";
    if (vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
        return "IP address mismatch";
    if (vr != X509_V_OK) {
        snprintf(buf, sizeof(buf), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    } else {
        unsigned long e = ossl_err ? ossl_err : ERR_peek_last_error();
        const char *r = e ? ERR_reason_error_string(e) : NULL;
        if (r == NULL) {
            const char *recorded = SSL_get_ex_data(ssl, upstream_exit_idx);
            return recorded ? recorded : "handshake failed";
        }
        snprintf(buf, sizeof(buf), "handshake failed: %s", r);
    }
    const char *stored = upstream_set_string(ssl, upstream_reason_idx, xstrdup(buf));
    return stored ? stored : "handshake failed";
}

const char *tls_upstream_failure_reason(SSL *ssl)
{
    return tls_upstream_failure_reason_err(ssl, 0);
}
