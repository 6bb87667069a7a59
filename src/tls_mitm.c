/* tls_mitm: the interception CA, leaf minting, the leaf cache and the server-side SSL_CTX.
 *
 * On-disk layout of the state dir (see tls_mitm.h for the overall contract):
 *   ca.key   PKCS#8 PEM, unencrypted, mode 0600, created with O_CREAT|O_EXCL (never chmod'ed)
 *   ca.crt   PEM, mode 0644
 *   ca.lock  an empty lock file; creation and loading happen under flock(LOCK_EX) on it
 *
 * Crash safety: a new CA is written to ca.crt.tmp and ca.key.tmp, fsync'ed, then ca.crt.tmp is
 * renamed to ca.crt, the directory fsync'ed, and ca.key.tmp renamed to ca.key last. The
 * appearance of ca.key is the commit point: a start that finds no ca.key (whatever else is
 * there) creates a fresh CA, replacing a stray ca.crt; a start that finds ca.key loads it with
 * ca.crt and refuses a pair that does not match. All of it runs under the lock, so two processes
 * starting at once cannot interleave their writes: the second waits and loads the first's CA.
 *
 * Cache: a hash table (chained) of entries keyed by the normalised name, plus an LRU list of the
 * entries whose certificate is ready. A miss inserts an "in flight" entry (cert == NULL) and
 * mints outside the lock; lookups that find an in-flight entry wait on a condition variable, so
 * concurrent misses for one name sign once. */
#include "tls_mitm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/tls1.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "glob.h"
#include "util.h"

#define MITM_DEFAULT_CAPACITY 4096
#define MITM_MAX_BUCKETS      ((size_t)1 << 20)
#define MITM_CA_DAYS          3650
#define MITM_LEAF_DAYS        90
#define MITM_BACKDATE_SECS    3600L
#define MITM_CN_MAX           64  /* ub-common-name (RFC 5280) */
#define MITM_NAME_MAX         253 /* longest DNS name in text form, no trailing dot */
#define MITM_PEM_MAX          (256 * 1024)

enum mitm_name_kind { MITM_NAME_INVALID = 0, MITM_NAME_DNS, MITM_NAME_IPV4, MITM_NAME_IPV6 };

struct mitm_entry {
    char *name;    /* normalised name, the key; owned */
    uint64_t hash; /* of name */
    X509 *cert;    /* one reference owned by the cache; NULL while the mint is in flight */
    struct mitm_entry *hnext;               /* hash chain */
    struct mitm_entry *lru_prev, *lru_next; /* only while cert != NULL; head = most recent */
};

struct tls_mitm {
    EVP_PKEY *ca_key;            /* owned; never leaves this module, never logged */
    X509 *ca_cert;               /* owned */
    char *ca_pem;                /* owned, NUL-terminated */
    EVP_PKEY *leaf_key;          /* owned; the one key of every minted leaf */
    struct stack_st_X509 *chain; /* STACK_OF(X509), owned: [ca_cert], sent after the leaf */
    SSL_CTX *server_ctx;         /* owned; shared by every intercepted connection */

    pthread_mutex_t lock;  /* guards everything below */
    pthread_cond_t minted; /* broadcast whenever an in-flight entry completes or fails */
    bool sync_init;
    struct mitm_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t capacity; /* maximum number of ready entries */
    size_t count;    /* ready entries (in the LRU list) */
    struct mitm_entry *lru_head, *lru_tail;
    struct tls_mitm_stats stats;
};

/* ---------------------------------------------------------------------------------------- */
/* SSL ex_data: the default name and the client's SNI of a server SSL (heap strings). */

static int mitm_default_idx = -1;
static int mitm_sni_idx = -1;
static pthread_once_t mitm_idx_once = PTHREAD_ONCE_INIT;

/* ex_data free callback: the stored value is a heap string (or NULL) owned by the SSL. */
static void mitm_exdata_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

/* ex_data dup callback (SSL_dup): the copy gets its own string so each SSL frees its own. */
static int mitm_exdata_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                           long argl, void *argp)
{
    (void)to, (void)from, (void)idx, (void)argl, (void)argp;
    if (from_d != NULL && *from_d != NULL)
        *from_d = xstrdup(*from_d);
    return 1;
}

static void mitm_init_indexes(void)
{
    mitm_default_idx = SSL_get_ex_new_index(0, NULL, NULL, mitm_exdata_dup, mitm_exdata_free);
    mitm_sni_idx = SSL_get_ex_new_index(0, NULL, NULL, mitm_exdata_dup, mitm_exdata_free);
}

/* Replaces the heap string stored at idx on ssl (freeing the previous one); takes value. */
static int mitm_set_string(SSL *ssl, int idx, char *value)
{
    char *old = SSL_get_ex_data(ssl, idx);
    if (SSL_set_ex_data(ssl, idx, value) != 1) {
        free(value);
        return -1;
    }
    free(old);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Names */

/* Classifies name[0..len) and writes its normalised form to out (lower-cased; IPv6 brackets and
 * one trailing dot of a DNS name removed). For IP literals, ip receives the 4 or 16 address
 * bytes. Returns MITM_NAME_INVALID for anything that is neither a host name nor an IP literal. */
static enum mitm_name_kind mitm_normalize_name(const char *name, size_t len,
                                               char out[MITM_NAME_MAX + 1], unsigned char ip[16])
{
    if (len >= 2 && name[0] == '[' && name[len - 1] == ']') {
        name++;
        len -= 2;
        if (len == 0 || len > MITM_NAME_MAX)
            return MITM_NAME_INVALID;
        memcpy(out, name, len);
        out[len] = '\0';
        ascii_lower_str(out);
        return inet_pton(AF_INET6, out, ip) == 1 ? MITM_NAME_IPV6 : MITM_NAME_INVALID;
    }
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > MITM_NAME_MAX || memchr(name, '\0', len) != NULL)
        return MITM_NAME_INVALID;
    memcpy(out, name, len);
    out[len] = '\0';
    ascii_lower_str(out);
    if (inet_pton(AF_INET, out, ip) == 1)
        return MITM_NAME_IPV4;
    if (inet_pton(AF_INET6, out, ip) == 1)
        return MITM_NAME_IPV6;
    return host_name_valid(out, len) ? MITM_NAME_DNS : MITM_NAME_INVALID;
}

/* ---------------------------------------------------------------------------------------- */
/* Errors */

static void mitm_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats a message into the caller's err buffer (which may be NULL/0). */
static void mitm_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (err == NULL || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* The reason text of the oldest queued OpenSSL error (static), and clears the queue. OpenSSL's
 * reason strings never contain key material. */
static const char *mitm_ossl_reason(void)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown OpenSSL error";
}

/* ---------------------------------------------------------------------------------------- */
/* Certificate building */

/* Adds one extension given in openssl.cnf syntax ("critical,CA:TRUE"). 0 or -1. */
static int mitm_add_ext(X509 *cert, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, v3, nid, value);
    if (ext == NULL)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* Gives cert a random positive 128-bit serial number (top bit set, so always 16 bytes). */
static int mitm_set_random_serial(X509 *cert)
{
    int rc = -1;
    BIGNUM *bn = BN_new();
    if (bn == NULL || BN_rand(bn, 128, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1)
        goto out;
    if (BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) == NULL)
        goto out;
    rc = 0;
out:
    BN_free(bn);
    return rc;
}

/* Builds the self-signed CA certificate for key: subject "CN=authproxy CA <hex>, O=authproxy",
 * valid from one hour ago for ten years, CA:TRUE pathlen:0, keyCertSign+cRLSign, SKI.
 * Returns a new X509 the caller owns, or NULL. */
static X509 *mitm_build_ca(EVP_PKEY *key)
{
    X509 *cert = X509_new();
    unsigned char rnd[8];
    char cn[64];
    X509V3_CTX v3;
    if (cert == NULL || RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto fail;
    int n = snprintf(cn, sizeof(cn), "authproxy CA ");
    for (size_t i = 0; i < sizeof(rnd); i++)
        n += snprintf(cn + n, sizeof(cn) - (size_t)n, "%02x", rnd[i]);
    X509_NAME *subject = X509_get_subject_name(cert); /* borrowed from cert */
    if (X509_set_version(cert, X509_VERSION_3) != 1 || mitm_set_random_serial(cert) != 0 ||
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, (const unsigned char *)"authproxy",
                                   -1, -1, 0) != 1 ||
        X509_set_issuer_name(cert, subject) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(cert), -MITM_BACKDATE_SECS) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(cert), MITM_CA_DAYS, 0, NULL) == NULL ||
        X509_set_pubkey(cert, key) != 1)
        goto fail;
    X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&v3);
    if (mitm_add_ext(cert, &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        mitm_add_ext(cert, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        mitm_add_ext(cert, &v3, NID_subject_key_identifier, "hash") != 0)
        goto fail;
    if (X509_sign(cert, key, EVP_sha256()) <= 0)
        goto fail;
    return cert;
fail:
    X509_free(cert);
    return NULL;
}

/* Adds the subjectAltName extension: one dNSName, or one iPAddress of iplen bytes. */
static int mitm_add_san(X509 *cert, enum mitm_name_kind kind, const char *name,
                        const unsigned char *ip)
{
    int rc = -1;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    if (gens == NULL || gn == NULL)
        goto out;
    if (kind == MITM_NAME_DNS) {
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (ia5 == NULL || ASN1_STRING_set(ia5, name, (int)strlen(name)) != 1) {
            ASN1_IA5STRING_free(ia5);
            goto out;
        }
        GENERAL_NAME_set0_value(gn, GEN_DNS, ia5); /* gn owns ia5 */
    } else {
        ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
        int iplen = kind == MITM_NAME_IPV4 ? 4 : 16;
        if (os == NULL || ASN1_OCTET_STRING_set(os, ip, iplen) != 1) {
            ASN1_OCTET_STRING_free(os);
            goto out;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, os); /* gn owns os */
    }
    if (sk_GENERAL_NAME_push(gens, gn) <= 0)
        goto out;
    gn = NULL; /* owned by gens now */
    if (X509_add1_ext_i2d(cert, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
        goto out;
    rc = 0;
out:
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(gens);
    return rc;
}

/* Signs a leaf certificate for the normalised name (see the header for its profile). Runs
 * without the cache lock; the CA key is only read, which OpenSSL 3 allows concurrently.
 * Returns a new X509 the caller owns, or NULL. */
static X509 *mitm_mint(struct tls_mitm *m, const char *name, enum mitm_name_kind kind,
                       const unsigned char *ip)
{
    X509 *cert = X509_new();
    X509V3_CTX v3;
    size_t name_len = strlen(name);
    int cn_len = (int)(name_len > MITM_CN_MAX ? MITM_CN_MAX : name_len); /* SAN is what counts */
    if (cert == NULL)
        goto fail;
    X509_NAME *subject = X509_get_subject_name(cert); /* borrowed from cert */
    if (X509_set_version(cert, X509_VERSION_3) != 1 || mitm_set_random_serial(cert) != 0 ||
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)name, cn_len,
                                   -1, 0) != 1 ||
        X509_set_issuer_name(cert, X509_get_subject_name(m->ca_cert)) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(cert), -MITM_BACKDATE_SECS) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(cert), MITM_LEAF_DAYS, 0, NULL) == NULL ||
        X509_set_pubkey(cert, m->leaf_key) != 1)
        goto fail;
    /* Never outlive the CA: a chain is only as valid as its shortest-lived certificate. */
    if (ASN1_TIME_compare(X509_get0_notAfter(cert), X509_get0_notAfter(m->ca_cert)) > 0 &&
        X509_set1_notAfter(cert, X509_get0_notAfter(m->ca_cert)) != 1)
        goto fail;
    X509V3_set_ctx(&v3, m->ca_cert, cert, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&v3);
    if (mitm_add_san(cert, kind, name, ip) != 0 ||
        mitm_add_ext(cert, &v3, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        mitm_add_ext(cert, &v3, NID_key_usage, "critical,digitalSignature") != 0 ||
        mitm_add_ext(cert, &v3, NID_ext_key_usage, "serverAuth") != 0 ||
        mitm_add_ext(cert, &v3, NID_subject_key_identifier, "hash") != 0 ||
        mitm_add_ext(cert, &v3, NID_authority_key_identifier, "keyid:always") != 0)
        goto fail;
    if (X509_sign(cert, m->ca_key, EVP_sha256()) <= 0)
        goto fail;
    /* Fill OpenSSL's lazily computed extension cache now, before the certificate is shared
     * between threads. */
    (void)X509_check_purpose(cert, -1, 0);
    return cert;
fail:
    log_error("tls_mitm: cannot mint a certificate for %s: %s", name, mitm_ossl_reason());
    X509_free(cert);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Files */

/* Creates dir (mode 0700) and its missing parents (0755, like mkdir -p). An existing dir is
 * accepted, with a warning if others may write into it. 0 or -1 with err set. */
static int mitm_mkdir_state(const char *dir, char *err, size_t err_len)
{
    struct stat st;
    int rc = -1;
    char *copy = NULL;
    if (stat(dir, &st) == 0)
        goto check;
    if (errno != ENOENT) {
        mitm_err(err, err_len, "state dir %s: %s", dir, strerror(errno));
        goto out;
    }
    copy = xstrdup(dir);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, 0755) == -1 && errno != EEXIST) {
            mitm_err(err, err_len, "cannot create %s: %s", copy, strerror(errno));
            goto out;
        }
        *p = '/';
    }
    if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
        mitm_err(err, err_len, "cannot create state dir %s: %s", dir, strerror(errno));
        goto out;
    }
    if (stat(dir, &st) == -1) {
        mitm_err(err, err_len, "state dir %s: %s", dir, strerror(errno));
        goto out;
    }
check:
    if (!S_ISDIR(st.st_mode)) {
        mitm_err(err, err_len, "state dir %s exists and is not a directory", dir);
        goto out;
    }
    if ((st.st_mode & 022) != 0)
        log_warn("tls_mitm: state dir %s is writable by group or others (mode %04o)", dir,
                 (unsigned)(st.st_mode & 07777));
    rc = 0;
out:
    free(copy);
    return rc;
}

/* Creates path exclusively (O_CREAT|O_EXCL, so an existing file or symlink is never followed or
 * reused) with mode, writes len bytes and fsyncs. The key file gets its 0600 from open() itself
 * and is never chmod'ed; when force_mode is set (the public certificate) the mode is set
 * explicitly so the umask cannot make it unreadable. 0 or -1 with err set. */
static int mitm_write_new_file(const char *path, mode_t mode, bool force_mode, const void *data,
                               size_t len, char *err, size_t err_len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd == -1) {
        mitm_err(err, err_len, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    if ((force_mode && fchmod(fd, mode) == -1) || write_all(fd, data, len) == -1 ||
        fsync(fd) == -1) {
        mitm_err(err, err_len, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    if (close(fd) == -1) {
        mitm_err(err, err_len, "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

/* fsyncs a directory so that renames in it are durable. 0 or -1 with err set. */
static int mitm_fsync_dir(const char *dir, char *err, size_t err_len)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1 || fsync(fd) == -1) {
        mitm_err(err, err_len, "cannot sync state dir %s: %s", dir, strerror(errno));
        if (fd != -1)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* Reads all of fd (at most max bytes) into a NUL-terminated heap buffer that the caller must
 * release with secure_zero + free (it may hold key material). NULL with errno on error. */
static char *mitm_read_fd(int fd, size_t max, size_t *len_out)
{
    size_t cap = 4096, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 == cap) {
            if (cap > max) {
                errno = EFBIG;
                goto fail;
            }
            /* Grow by copying so that no un-zeroed copy of the key is left behind by realloc. */
            char *bigger = xmalloc(cap * 2);
            memcpy(bigger, buf, len);
            secure_zero(buf, cap);
            free(buf);
            buf = bigger;
            cap *= 2;
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
    }
    buf[len] = '\0';
    *len_out = len;
    return buf;
fail : {
    int saved = errno;
    secure_zero(buf, cap);
    free(buf);
    errno = saved;
    return NULL;
}
}

/* PEM passphrase callback that refuses: an encrypted ca.key is an error, never a prompt on the
 * daemon's terminal. */
static int mitm_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* Loads the CA from the open key_fd (ca.key) and crt_path. Refuses a key file that is not a
 * regular file owned by the effective user with no group/other permission bits, a certificate
 * that is not a CA or has expired, and a key that does not match the certificate.
 * On success sets m->ca_key and m->ca_cert. 0 or -1 with err set. */
static int mitm_load_ca(struct tls_mitm *m, int key_fd, const char *key_path, const char *crt_path,
                        char *err, size_t err_len)
{
    int rc = -1;
    struct stat st;
    char *key_pem = NULL, *crt_pem = NULL;
    size_t key_len = 0, crt_len = 0;
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;

    if (fstat(key_fd, &st) == -1) {
        mitm_err(err, err_len, "%s: %s", key_path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        mitm_err(err, err_len, "refusing %s: not a regular file", key_path);
        goto out;
    }
    if (st.st_uid != geteuid()) {
        mitm_err(err, err_len, "refusing %s: owned by uid %u, not by this process (uid %u)",
                 key_path, (unsigned)st.st_uid, (unsigned)geteuid());
        goto out;
    }
    if ((st.st_mode & 077) != 0) {
        mitm_err(err, err_len,
                 "refusing %s: mode %04o gives group/other access to the CA key; run chmod 600 %s",
                 key_path, (unsigned)(st.st_mode & 07777), key_path);
        goto out;
    }
    key_pem = mitm_read_fd(key_fd, MITM_PEM_MAX, &key_len);
    if (key_pem == NULL) {
        mitm_err(err, err_len, "cannot read %s: %s", key_path, strerror(errno));
        goto out;
    }
    bio = BIO_new_mem_buf(key_pem, (int)key_len);
    if (bio == NULL)
        goto ossl_fail;
    key = PEM_read_bio_PrivateKey(bio, NULL, mitm_no_passphrase, NULL);
    BIO_free(bio);
    bio = NULL;
    if (key == NULL) {
        mitm_err(err, err_len, "%s: not an unencrypted PEM private key (%s)", key_path,
                 mitm_ossl_reason());
        goto out;
    }

    crt_pem = read_file(crt_path, MITM_PEM_MAX, &crt_len);
    if (crt_pem == NULL) {
        mitm_err(err, err_len, "%s exists but %s cannot be read: %s", key_path, crt_path,
                 strerror(errno));
        goto out;
    }
    bio = BIO_new_mem_buf(crt_pem, (int)crt_len);
    if (bio == NULL)
        goto ossl_fail;
    cert = PEM_read_bio_X509(bio, NULL, mitm_no_passphrase, NULL);
    if (cert == NULL) {
        mitm_err(err, err_len, "%s: not a PEM certificate (%s)", crt_path, mitm_ossl_reason());
        goto out;
    }
    if (X509_check_private_key(cert, key) != 1) {
        ERR_clear_error();
        mitm_err(err, err_len, "%s and %s do not match (the key is not the certificate's)",
                 key_path, crt_path);
        goto out;
    }
    if (X509_check_ca(cert) < 1) {
        mitm_err(err, err_len, "%s is not a CA certificate", crt_path);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
        mitm_err(err, err_len,
                 "%s has expired; remove %s and %s to create a new CA (sandboxes must then "
                 "trust the new certificate)",
                 crt_path, key_path, crt_path);
        goto out;
    }
    (void)X509_check_purpose(cert, -1, 0); /* fill the extension cache before sharing */
    m->ca_key = key;
    m->ca_cert = cert;
    key = NULL;
    cert = NULL;
    rc = 0;
    goto out;
ossl_fail:
    mitm_err(err, err_len, "loading the CA: %s", mitm_ossl_reason());
out:
    BIO_free(bio);
    if (key_pem != NULL) {
        secure_zero(key_pem, key_len);
        free(key_pem);
    }
    free(crt_pem);
    EVP_PKEY_free(key);
    X509_free(cert);
    return rc;
}

/* Creates a new CA and commits it to key_path/crt_path (see the top of this file for the order
 * of operations). Must run under the state dir lock. On success sets m->ca_key and m->ca_cert.
 * 0 or -1 with err set. */
static int mitm_create_ca(struct tls_mitm *m, const char *dir, const char *key_path,
                          const char *crt_path, char *err, size_t err_len)
{
    int rc = -1;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    BIO *key_bio = NULL, *crt_bio = NULL;
    char *key_tmp = xasprintf("%s.tmp", key_path);
    char *crt_tmp = xasprintf("%s.tmp", crt_path);
    bool tmp_written = false;

    key = EVP_EC_gen("P-256");
    if (key == NULL || (cert = mitm_build_ca(key)) == NULL) {
        mitm_err(err, err_len, "cannot create the CA: %s", mitm_ossl_reason());
        goto out;
    }
    /* The key PEM lives in a secure-memory BIO: cleansed when freed. */
    key_bio = BIO_new(BIO_s_secmem());
    crt_bio = BIO_new(BIO_s_mem());
    if (key_bio == NULL || crt_bio == NULL ||
        PEM_write_bio_PrivateKey(key_bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_X509(crt_bio, cert) != 1) {
        mitm_err(err, err_len, "cannot encode the CA: %s", mitm_ossl_reason());
        goto out;
    }
    char *key_data, *crt_data;
    long key_len = BIO_get_mem_data(key_bio, &key_data);
    long crt_len = BIO_get_mem_data(crt_bio, &crt_data);

    /* Leftovers of a crashed earlier attempt; we hold the lock, so nobody else owns them. */
    if ((unlink(key_tmp) == -1 && errno != ENOENT) || (unlink(crt_tmp) == -1 && errno != ENOENT)) {
        mitm_err(err, err_len, "cannot remove a stale temporary file in %s: %s", dir,
                 strerror(errno));
        goto out;
    }
    tmp_written = true;
    if (mitm_write_new_file(key_tmp, 0600, false, key_data, (size_t)key_len, err, err_len) != 0 ||
        mitm_write_new_file(crt_tmp, 0644, true, crt_data, (size_t)crt_len, err, err_len) != 0)
        goto out;
    if (rename(crt_tmp, crt_path) == -1) {
        mitm_err(err, err_len, "cannot rename %s to %s: %s", crt_tmp, crt_path, strerror(errno));
        goto out;
    }
    if (mitm_fsync_dir(dir, err, err_len) != 0)
        goto out;
    /* Commit point: from here on the CA exists. */
    if (rename(key_tmp, key_path) == -1) {
        mitm_err(err, err_len, "cannot rename %s to %s: %s", key_tmp, key_path, strerror(errno));
        goto out;
    }
    tmp_written = false;
    if (mitm_fsync_dir(dir, err, err_len) != 0)
        goto out;
    log_info("tls_mitm: created a new interception CA in %s", crt_path);
    m->ca_key = key;
    m->ca_cert = cert;
    key = NULL;
    cert = NULL;
    rc = 0;
out:
    if (tmp_written) {
        unlink(key_tmp);
        unlink(crt_tmp);
    }
    BIO_free(key_bio);
    BIO_free(crt_bio);
    EVP_PKEY_free(key);
    X509_free(cert);
    free(key_tmp);
    free(crt_tmp);
    return rc;
}

/* Loads the CA of state_dir, creating it first if there is none, under an exclusive flock on
 * state_dir/ca.lock (released when this returns, or by the kernel if the process dies).
 * 0 or -1 with err set. */
static int mitm_load_or_create_ca(struct tls_mitm *m, const char *dir, char *err, size_t err_len)
{
    int rc = -1, lock_fd = -1, key_fd = -1;
    char *key_path = xasprintf("%s/ca.key", dir);
    char *crt_path = xasprintf("%s/ca.crt", dir);
    char *lock_path = xasprintf("%s/ca.lock", dir);

    char *lock_err = NULL;
    lock_fd = lock_file_open(lock_path, LOCK_EX, &lock_err);
    if (lock_fd == -1) {
        mitm_err(err, err_len, "%s", lock_err);
        free(lock_err);
        goto out;
    }
    key_fd = open(key_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (key_fd == -1 && errno == ENOENT)
        rc = mitm_create_ca(m, dir, key_path, crt_path, err, err_len);
    else if (key_fd == -1)
        mitm_err(err, err_len, "cannot open %s: %s", key_path, strerror(errno));
    else
        rc = mitm_load_ca(m, key_fd, key_path, crt_path, err, err_len);
out:
    if (key_fd != -1)
        close(key_fd);
    if (lock_fd != -1)
        close(lock_fd); /* releases the flock */
    free(key_path);
    free(crt_path);
    free(lock_path);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Server SSL_CTX callbacks */

/* ALPN: select "http/1.1" if the client offers it; otherwise continue without ALPN (a client
 * offering only h2 then speaks HTTP/1.1 or fails on its own terms, never h2 to us). */
static int mitm_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                            const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "http/1.1";
    (void)ssl, (void)arg;
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int plen = in[i];
        if (plen == 0 || plen > inlen - i - 1)
            break; /* malformed list: OpenSSL validates it before us, be safe anyway */
        if (plen == sizeof(http11) - 1 && memcmp(in + i + 1, http11, plen) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)plen;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + plen;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Parses the server_name extension body strictly (RFC 6066 §3): a ServerNameList whose length
 * matches the extension, holding exactly one entry, of type host_name, 1..255 bytes.
 * Sets *name and *len to point into ext. 0, or -1 if malformed. */
static int mitm_parse_sni(const unsigned char *ext, size_t ext_len, const unsigned char **name,
                          size_t *len)
{
    if (ext_len < 2)
        return -1;
    size_t list_len = ((size_t)ext[0] << 8) | ext[1];
    if (list_len != ext_len - 2 || list_len < 3)
        return -1;
    if (ext[2] != TLSEXT_NAMETYPE_host_name)
        return -1;
    size_t n = ((size_t)ext[3] << 8) | ext[4];
    if (n == 0 || n > 255 || n != list_len - 3)
        return -1; /* empty, too long, or trailing bytes / a second entry */
    *name = ext + 5;
    *len = n;
    return 0;
}

/* ClientHello callback: picks the name (the SNI if the client sent a host name, else the
 * default name of the SSL), records the SNI, and installs the leaf certificate, the shared key
 * and the CA chain on the SSL. A malformed server_name extension or an SNI that is not a valid
 * host name fails the handshake. An SNI holding an IP literal (forbidden by RFC 6066, sent by a
 * few old clients) is treated as absent. May run twice (after a HelloRetryRequest): every
 * setting is replaced, not added. */
static int mitm_client_hello(SSL *ssl, int *al, void *arg)
{
    struct tls_mitm *m = arg;
    const unsigned char *ext, *raw;
    size_t ext_len, raw_len;
    char sni[MITM_NAME_MAX + 1];
    unsigned char ip[16];
    const char *name = NULL;
    X509 *leaf = NULL;
    int rc = SSL_CLIENT_HELLO_ERROR;

    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &ext_len) == 1) {
        if (mitm_parse_sni(ext, ext_len, &raw, &raw_len) != 0) {
            *al = SSL_AD_DECODE_ERROR;
            goto out;
        }
        enum mitm_name_kind kind = mitm_normalize_name((const char *)raw, raw_len, sni, ip);
        if (kind == MITM_NAME_INVALID || (raw_len > 0 && raw[0] == '[')) {
            *al = SSL_AD_UNRECOGNIZED_NAME;
            goto out;
        }
        if (kind == MITM_NAME_DNS) {
            if (mitm_set_string(ssl, mitm_sni_idx, xstrdup(sni)) != 0) {
                *al = SSL_AD_INTERNAL_ERROR;
                goto out;
            }
            name = sni;
        }
    }
    if (name == NULL)
        name = SSL_get_ex_data(ssl, mitm_default_idx);
    if (name == NULL) {
        *al = SSL_AD_UNRECOGNIZED_NAME; /* no SNI and no default: nothing to present */
        goto out;
    }
    leaf = tls_mitm_leaf_for(m, name);
    if (leaf == NULL) {
        *al = SSL_AD_INTERNAL_ERROR;
        goto out;
    }
    if (SSL_use_certificate(ssl, leaf) != 1 || SSL_use_PrivateKey(ssl, m->leaf_key) != 1 ||
        SSL_set1_chain(ssl, m->chain) != 1) {
        *al = SSL_AD_INTERNAL_ERROR;
        goto out;
    }
    rc = SSL_CLIENT_HELLO_SUCCESS;
out:
    X509_free(leaf);
    return rc;
}

/* The shared server context: TLS 1.2+, buffers released while idle, no renegotiation, ALPN
 * http/1.1 only, certificate chosen per ClientHello. NULL on failure. */
static SSL_CTX *mitm_new_server_ctx(struct tls_mitm *m)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_alpn_select_cb(ctx, mitm_alpn_select, NULL);
    SSL_CTX_set_client_hello_cb(ctx, mitm_client_hello, m);
    return ctx;
}

/* ---------------------------------------------------------------------------------------- */
/* Public API */

struct tls_mitm *tls_mitm_open(const char *state_dir, size_t cache_capacity, char *err,
                               size_t err_len)
{
    struct tls_mitm *m = xcalloc(1, sizeof(*m));
    BIO *bio = NULL;

    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        mitm_err(err, err_len, "cannot initialise a mutex");
        return NULL;
    }
    if (pthread_cond_init(&m->minted, NULL) != 0) {
        pthread_mutex_destroy(&m->lock);
        free(m);
        mitm_err(err, err_len, "cannot initialise a condition variable");
        return NULL;
    }
    m->sync_init = true;
    m->capacity = cache_capacity ? cache_capacity : MITM_DEFAULT_CAPACITY;
    m->nbuckets = 16;
    while (m->nbuckets < m->capacity && m->nbuckets < MITM_MAX_BUCKETS)
        m->nbuckets *= 2;
    m->buckets = xcalloc(m->nbuckets, sizeof(*m->buckets));

    pthread_once(&mitm_idx_once, mitm_init_indexes);
    if (mitm_default_idx < 0 || mitm_sni_idx < 0) {
        mitm_err(err, err_len, "cannot allocate SSL ex_data indexes");
        goto fail;
    }
    if (state_dir == NULL || state_dir[0] == '\0') {
        mitm_err(err, err_len, "no state dir given");
        goto fail;
    }
    if (mitm_mkdir_state(state_dir, err, err_len) != 0 ||
        mitm_load_or_create_ca(m, state_dir, err, err_len) != 0)
        goto fail;

    m->leaf_key = EVP_EC_gen("P-256");
    if (m->leaf_key == NULL) {
        mitm_err(err, err_len, "cannot generate the leaf key: %s", mitm_ossl_reason());
        goto fail;
    }
    m->chain = sk_X509_new_null();
    if (m->chain == NULL || sk_X509_push(m->chain, m->ca_cert) <= 0) {
        mitm_err(err, err_len, "cannot build the certificate chain");
        goto fail;
    }
    X509_up_ref(m->ca_cert); /* the chain's reference */

    bio = BIO_new(BIO_s_mem());
    char *pem;
    long pem_len;
    if (bio == NULL || PEM_write_bio_X509(bio, m->ca_cert) != 1 ||
        (pem_len = BIO_get_mem_data(bio, &pem)) <= 0) {
        mitm_err(err, err_len, "cannot encode the CA certificate: %s", mitm_ossl_reason());
        goto fail;
    }
    m->ca_pem = xstrndup(pem, (size_t)pem_len);

    m->server_ctx = mitm_new_server_ctx(m);
    if (m->server_ctx == NULL) {
        mitm_err(err, err_len, "cannot create the server TLS context: %s", mitm_ossl_reason());
        goto fail;
    }
    if (X509_cmp_time(X509_get0_notAfter(m->ca_cert), &(time_t){time(NULL) + 30 * 86400}) < 0)
        log_warn("tls_mitm: the CA certificate of %s expires within 30 days", state_dir);
    BIO_free(bio);
    return m;
fail:
    BIO_free(bio);
    tls_mitm_free(m);
    return NULL;
}

/* Frees everything. No other call on m may be running, and every SSL made by
 * tls_mitm_new_server_ssl must have been freed (their handshake callback points at m). */
void tls_mitm_free(struct tls_mitm *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; m->buckets != NULL && i < m->nbuckets; i++) {
        struct mitm_entry *e = m->buckets[i];
        while (e != NULL) {
            struct mitm_entry *next = e->hnext;
            X509_free(e->cert);
            free(e->name);
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    SSL_CTX_free(m->server_ctx);
    sk_X509_pop_free(m->chain, X509_free);
    EVP_PKEY_free(m->leaf_key);
    EVP_PKEY_free(m->ca_key);
    X509_free(m->ca_cert);
    free(m->ca_pem);
    if (m->sync_init) {
        pthread_cond_destroy(&m->minted);
        pthread_mutex_destroy(&m->lock);
    }
    free(m);
}

X509 *tls_mitm_ca_cert(const struct tls_mitm *m)
{
    return m->ca_cert;
}

const char *tls_mitm_ca_pem(const struct tls_mitm *m)
{
    return m->ca_pem;
}

EVP_PKEY *tls_mitm_leaf_key(const struct tls_mitm *m)
{
    return m->leaf_key;
}

/* FNV-1a: names are short and the table is private, so a simple hash is enough. */
static uint64_t mitm_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Cache internals; all of them require m->lock. */

static struct mitm_entry *mitm_find(struct tls_mitm *m, uint64_t hash, const char *name)
{
    for (struct mitm_entry *e = m->buckets[hash & (m->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == hash && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void mitm_hash_remove(struct tls_mitm *m, struct mitm_entry *e)
{
    struct mitm_entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

static void mitm_lru_unlink(struct tls_mitm *m, struct mitm_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        m->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        m->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void mitm_lru_push_front(struct tls_mitm *m, struct mitm_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = m->lru_head;
    if (m->lru_head)
        m->lru_head->lru_prev = e;
    m->lru_head = e;
    if (m->lru_tail == NULL)
        m->lru_tail = e;
}

/* Drops least recently used ready entries until the cache is within its capacity. Callers
 * holding a reference to an evicted certificate keep it alive. */
static void mitm_evict(struct tls_mitm *m)
{
    while (m->count > m->capacity && m->lru_tail != NULL) {
        struct mitm_entry *victim = m->lru_tail;
        mitm_lru_unlink(m, victim);
        mitm_hash_remove(m, victim);
        m->count--;
        X509_free(victim->cert);
        free(victim->name);
        free(victim);
    }
}

/* Cache lookup with miss collapsing: see the top of this file. Stats: a lookup that signs
 * counts as a miss; one served without signing (including after waiting for another thread's
 * mint of the same name) counts as a hit. A failed mint wakes the waiters, one of which then
 * retries. */
X509 *tls_mitm_leaf_for(struct tls_mitm *m, const char *name)
{
    char key[MITM_NAME_MAX + 1];
    unsigned char ip[16];
    if (name == NULL)
        return NULL;
    enum mitm_name_kind kind = mitm_normalize_name(name, strlen(name), key, ip);
    if (kind == MITM_NAME_INVALID)
        return NULL;
    uint64_t hash = mitm_hash(key);

    pthread_mutex_lock(&m->lock);
    struct mitm_entry *e;
    while ((e = mitm_find(m, hash, key)) != NULL) {
        if (e->cert != NULL) {
            mitm_lru_unlink(m, e);
            mitm_lru_push_front(m, e);
            m->stats.cache_hits++;
            X509 *hit = e->cert;
            X509_up_ref(hit); /* the caller's reference */
            pthread_mutex_unlock(&m->lock);
            return hit;
        }
        pthread_cond_wait(&m->minted, &m->lock); /* in flight elsewhere: wait, look again */
    }
    m->stats.cache_misses++;
    e = xcalloc(1, sizeof(*e));
    e->name = xstrdup(key);
    e->hash = hash;
    struct mitm_entry **bucket = &m->buckets[hash & (m->nbuckets - 1)];
    e->hnext = *bucket;
    *bucket = e;
    pthread_mutex_unlock(&m->lock);

    X509 *cert = mitm_mint(m, key, kind, ip);

    pthread_mutex_lock(&m->lock);
    if (cert == NULL) {
        mitm_hash_remove(m, e);
        free(e->name);
        free(e);
    } else {
        m->stats.mints++;
        e->cert = cert;    /* the cache's reference */
        X509_up_ref(cert); /* the caller's reference */
        mitm_lru_push_front(m, e);
        m->count++;
        mitm_evict(m);
    }
    pthread_cond_broadcast(&m->minted);
    pthread_mutex_unlock(&m->lock);
    return cert;
}

SSL *tls_mitm_new_server_ssl(struct tls_mitm *m, const char *default_name)
{
    SSL *ssl = SSL_new(m->server_ctx);
    if (ssl == NULL)
        return NULL;
    if (default_name != NULL &&
        mitm_set_string(ssl, mitm_default_idx, xstrdup(default_name)) != 0) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

const char *tls_mitm_client_sni(SSL *ssl)
{
    if (ssl == NULL || mitm_sni_idx < 0)
        return NULL;
    return SSL_get_ex_data(ssl, mitm_sni_idx);
}

void tls_mitm_get_stats(struct tls_mitm *m, struct tls_mitm_stats *out)
{
    pthread_mutex_lock(&m->lock);
    *out = m->stats;
    out->cache_size = m->count;
    pthread_mutex_unlock(&m->lock);
}
