/* Unit tests for tls_mitm: the CA on disk (modes, reload, refusals, crash leftovers, concurrent
 * starts), the leaf profile (SAN, chain verification against the CA alone), the LRU cache and
 * miss collapsing, and real in-memory handshakes against a tls_upstream client. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tls_mitm.h"
#include "tls_upstream.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------- */
/* Helpers */

struct fixture {
    char root[64]; /* mkdtemp dir, removed afterwards */
    char *state;   /* root/state: does not exist before the test */
    char *ca_file; /* root/state/ca.crt */
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/authproxy-test-mitm-XXXXXX");
    if (mkdtemp(f->root) == NULL)
        return -1;
    f->state = xasprintf("%s/state", f->root);
    f->ca_file = xasprintf("%s/ca.crt", f->state);
    umask(022);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f->state);
    free(f->ca_file);
    free(f);
    return 0;
}

static struct tls_mitm *open_ok(const char *dir, size_t cap)
{
    char err[512] = "";
    struct tls_mitm *m = tls_mitm_open(dir, cap, err, sizeof(err));
    if (m == NULL)
        fail_msg("tls_mitm_open(%s): %s", dir, err);
    return m;
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Verifies leaf against a store holding only ca, as a TLS client would: purpose sslserver and
 * the given host name or IP literal. Returns the X509_V_* result. */
static int verify_leaf(X509 *ca, X509 *leaf, const char *host, const char *ip)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    assert_non_null(store);
    assert_non_null(ctx);
    if (ca != NULL)
        assert_int_equal(X509_STORE_add_cert(store, ca), 1);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, leaf, NULL), 1);
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
    assert_int_equal(X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER), 1);
    if (host != NULL)
        assert_int_equal(X509_VERIFY_PARAM_set1_host(param, host, 0), 1);
    if (ip != NULL)
        assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(param, ip), 1);
    int ok = X509_verify_cert(ctx);
    int result = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    ERR_clear_error();
    if (ok == 1)
        assert_int_equal(result, X509_V_OK);
    return ok == 1 ? X509_V_OK : (result != X509_V_OK ? result : -1);
}

/* The single SAN entry of cert: its type (GEN_DNS/GEN_IPADD) and bytes copied into out. */
static int single_san(X509 *cert, unsigned char *out, size_t out_size, size_t *out_len)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    assert_non_null(gens);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, 0);
    int type;
    ASN1_STRING *s = GENERAL_NAME_get0_value(gn, &type);
    size_t len = (size_t)ASN1_STRING_length(s);
    assert_true(len < out_size);
    memcpy(out, ASN1_STRING_get0_data(s), len);
    out[len] = '\0';
    *out_len = len;
    GENERAL_NAMES_free(gens);
    return type;
}

static void subject_cn(X509 *cert, char *out, size_t out_size)
{
    int n =
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)out_size);
    assert_true(n > 0);
}

static bool ext_critical(X509 *cert, int nid)
{
    int i = X509_get_ext_by_NID(cert, nid, -1);
    assert_true(i >= 0);
    return X509_EXTENSION_get_critical(X509_get_ext(cert, i)) == 1;
}

/* Days from now until t (may be negative). */
static int days_from_now(const ASN1_TIME *t)
{
    int days = 0, secs = 0;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, t), 1);
    return days;
}

/* Drives a client and a server SSL to the end of their handshake over a BIO pair. Returns 0 on
 * success, -1 if the client failed (its failure reason copied to reason), -2 otherwise. */
static int handshake(SSL *c, SSL *s, char *reason, size_t reason_len)
{
    BIO *bc = NULL, *bs = NULL;
    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    SSL_set_bio(c, bc, bc);
    SSL_set_bio(s, bs, bs);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    bool cdone = false, sdone = false, sfailed = false;
    for (int i = 0; i < 50 && !(cdone && sdone); i++) {
        if (!cdone) {
            ERR_clear_error();
            int r = SSL_do_handshake(c);
            if (r == 1) {
                cdone = true;
            } else {
                int e = SSL_get_error(c, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    snprintf(reason, reason_len, "%s", tls_upstream_failure_reason(c));
                    ERR_clear_error();
                    return -1;
                }
            }
        }
        if (!sdone && !sfailed) {
            ERR_clear_error();
            int r = SSL_do_handshake(s);
            if (r == 1) {
                sdone = true;
            } else {
                int e = SSL_get_error(s, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    sfailed = true;
            }
        }
        if (sfailed && cdone)
            break;
    }
    ERR_clear_error();
    return cdone && sdone ? 0 : -2;
}

/* After a successful handshake: the server sends one byte, the client reads it. This lets the
 * client process TLS 1.3 NewSessionTicket messages (and so cache the session). */
static void exchange_byte(SSL *c, SSL *s)
{
    char buf[8];
    assert_int_equal(SSL_write(s, "x", 1), 1);
    assert_int_equal(SSL_read(c, buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], 'x');
}

/* ---------------------------------------------------------------------------------------- */
/* CA on disk */

static void test_ca_created_with_safe_modes(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    char *key_path = xasprintf("%s/ca.key", f->state);

    assert_int_equal(file_mode(f->state), 0700);
    assert_int_equal(file_mode(key_path), 0600);
    assert_int_equal(file_mode(f->ca_file), 0644);
    char *tmp = xasprintf("%s.tmp", key_path);
    assert_false(file_exists(tmp)); /* no leftovers of the atomic write */
    free(tmp);

    /* The PEM served to sandboxes is the certificate on disk. */
    char *disk = read_file(f->ca_file, 1 << 20, NULL);
    assert_non_null(disk);
    assert_string_equal(disk, tls_mitm_ca_pem(m));
    free(disk);

    X509 *ca = tls_mitm_ca_cert(m);
    char cn[256], o[256];
    subject_cn(ca, cn, sizeof(cn));
    assert_int_equal(strlen(cn), strlen("authproxy CA ") + 16);
    assert_memory_equal(cn, "authproxy CA ", 13);
    assert_int_equal(strspn(cn + 13, "0123456789abcdef"), 16);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(ca), NID_organizationName, o,
                                          sizeof(o)) > 0);
    assert_string_equal(o, "authproxy");
    assert_int_equal(X509_self_signed(ca, 1), 1);
    assert_int_equal(X509_check_ca(ca), 1);
    assert_int_equal(X509_get_pathlen(ca), 0);
    assert_true(ext_critical(ca, NID_basic_constraints));
    assert_true(ext_critical(ca, NID_key_usage));
    assert_int_equal(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    assert_non_null(X509_get0_subject_key_id(ca));
    int days = days_from_now(X509_get0_notAfter(ca));
    assert_true(days >= 3649 && days <= 3651);

    EVP_PKEY *pub = X509_get0_pubkey(ca);
    char group[64];
    assert_true(EVP_PKEY_is_a(pub, "EC"));
    assert_int_equal(
        EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL),
        1);
    assert_string_equal(group, "prime256v1");

    free(key_path);
    tls_mitm_free(m);
}

static void test_ca_reopened_is_the_same(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m1 = open_ok(f->state, 0);
    char *pem1 = xstrdup(tls_mitm_ca_pem(m1));
    tls_mitm_free(m1);

    struct tls_mitm *m2 = open_ok(f->state, 0);
    assert_string_equal(tls_mitm_ca_pem(m2), pem1);
    /* A leaf minted by the second instance chains to the CA the first one created. */
    X509 *leaf = tls_mitm_leaf_for(m2, "reopen.example");
    assert_non_null(leaf);
    BIO *bio = BIO_new_mem_buf(pem1, -1);
    X509 *ca1 = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    assert_non_null(ca1);
    assert_int_equal(verify_leaf(ca1, leaf, "reopen.example", NULL), X509_V_OK);
    X509_free(ca1);
    BIO_free(bio);
    X509_free(leaf);
    free(pem1);
    tls_mitm_free(m2);
}

static void test_ca_refuses_readable_key(void **state)
{
    struct fixture *f = *state;
    tls_mitm_free(open_ok(f->state, 0));
    char *key_path = xasprintf("%s/ca.key", f->state);
    static const mode_t bad_modes[] = {0644, 0640, 0604, 0620};
    for (size_t i = 0; i < ARRAY_LEN(bad_modes); i++) {
        char err[512] = "";
        assert_int_equal(chmod(key_path, bad_modes[i]), 0);
        assert_null(tls_mitm_open(f->state, 0, err, sizeof(err)));
        assert_non_null(strstr(err, key_path));
        assert_non_null(strstr(err, "chmod 600"));
    }
    assert_int_equal(chmod(key_path, 0600), 0);
    tls_mitm_free(open_ok(f->state, 0)); /* fixed: accepted again */
    free(key_path);
}

static void test_ca_refuses_mismatched_pair(void **state)
{
    struct fixture *f = *state;
    char *other = xasprintf("%s/other", f->root);
    tls_mitm_free(open_ok(f->state, 0));
    tls_mitm_free(open_ok(other, 0));
    char *other_crt = xasprintf("%s/ca.crt", other);
    char *pem = read_file(other_crt, 1 << 20, NULL);
    assert_non_null(pem);
    assert_int_equal(unlink(f->ca_file), 0);
    int fd = open(f->ca_file, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, pem, strlen(pem)), 0);
    close(fd);

    char err[512] = "";
    assert_null(tls_mitm_open(f->state, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "do not match"));
    free(pem);
    free(other_crt);
    free(other);
}

/* A crash after ca.crt was renamed into place but before ca.key was leaves ca.crt (and maybe
 * temporary files) without ca.key: the next start must create a complete, matching CA. */
static void test_ca_crash_leftovers_are_replaced(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(mkdir(f->state, 0700), 0);
    static const char *const junk[] = {"ca.crt", "ca.key.tmp", "ca.crt.tmp"};
    for (size_t i = 0; i < ARRAY_LEN(junk); i++) {
        char *p = xasprintf("%s/%s", f->state, junk[i]);
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write_all(fd, "half", 4), 0);
        close(fd);
        free(p);
    }
    struct tls_mitm *m = open_ok(f->state, 0);
    char *disk = read_file(f->ca_file, 1 << 20, NULL);
    assert_string_equal(disk, tls_mitm_ca_pem(m));
    free(disk);
    tls_mitm_free(m);
    tls_mitm_free(open_ok(f->state, 0)); /* and it loads (key matches cert) */
}

/* Several processes starting on an empty state dir at once end up with one CA. */
static void test_ca_concurrent_first_start(void **state)
{
    struct fixture *f = *state;
    enum { NPROC = 6 };
    int fds[NPROC][2];
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        assert_int_equal(pipe(fds[i]), 0);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(fds[i][0]);
            char err[512];
            struct tls_mitm *m = tls_mitm_open(f->state, 0, err, sizeof(err));
            if (m == NULL)
                _exit(1);
            const char *pem = tls_mitm_ca_pem(m);
            _exit(write_all(fds[i][1], pem, strlen(pem)) == 0 ? 0 : 2);
        }
        close(fds[i][1]);
    }
    struct tls_mitm *m = open_ok(f->state, 0);
    const char *mine = tls_mitm_ca_pem(m);
    for (int i = 0; i < NPROC; i++) {
        char buf[4096];
        size_t len = 0;
        ssize_t n;
        while ((n = read(fds[i][0], buf + len, sizeof(buf) - 1 - len)) > 0)
            len += (size_t)n;
        buf[len] = '\0';
        close(fds[i][0]);
        int status;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_string_equal(buf, mine);
    }
    tls_mitm_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Leaf minting */

static void test_leaf_for_dns_name(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    X509 *ca = tls_mitm_ca_cert(m);
    X509 *leaf = tls_mitm_leaf_for(m, "API.Example.COM");
    assert_non_null(leaf);

    unsigned char san[300];
    size_t san_len;
    assert_int_equal(single_san(leaf, san, sizeof(san), &san_len), GEN_DNS);
    assert_string_equal((char *)san, "api.example.com");
    char cn[256];
    subject_cn(leaf, cn, sizeof(cn));
    assert_string_equal(cn, "api.example.com");

    /* Chain: verifies against the CA alone, for this name only. */
    assert_int_equal(verify_leaf(ca, leaf, "api.example.com", NULL), X509_V_OK);
    assert_int_equal(verify_leaf(ca, leaf, "API.EXAMPLE.COM", NULL), X509_V_OK);
    assert_int_equal(verify_leaf(ca, leaf, "other.example.com", NULL),
                     X509_V_ERR_HOSTNAME_MISMATCH);
    assert_int_equal(verify_leaf(NULL, leaf, "api.example.com", NULL),
                     X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

    /* Profile. */
    assert_int_equal(X509_get_version(leaf), X509_VERSION_3);
    assert_int_equal(X509_check_ca(leaf), 0);
    assert_true(ext_critical(leaf, NID_basic_constraints));
    assert_true(ext_critical(leaf, NID_key_usage));
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    assert_non_null(X509_get0_subject_key_id(leaf));
    assert_int_equal(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(ca)), 0);
    assert_int_equal(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
    assert_int_equal(X509_check_private_key(leaf, tls_mitm_leaf_key(m)), 1);

    const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
    BIGNUM *bn = ASN1_INTEGER_to_BN(serial, NULL);
    assert_false(BN_is_negative(bn));
    assert_int_equal(BN_num_bits(bn), 128);
    BN_free(bn);

    time_t now = time(NULL);
    assert_true(X509_cmp_time(X509_get0_notBefore(leaf), &(time_t){now - 3500}) < 0);
    assert_true(X509_cmp_time(X509_get0_notBefore(leaf), &(time_t){now - 3700}) > 0);
    int days = days_from_now(X509_get0_notAfter(leaf));
    assert_true(days >= 89 && days <= 90);
    assert_true(ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(ca)) <= 0);

    /* Every leaf gets its own serial. */
    X509 *other = tls_mitm_leaf_for(m, "other.example.com");
    assert_non_null(other);
    assert_int_not_equal(ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(other)), 0);
    X509_free(other);
    X509_free(leaf);
    tls_mitm_free(m);
}

static void test_leaf_for_ip_literals(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    X509 *ca = tls_mitm_ca_cert(m);
    unsigned char san[64];
    size_t san_len;

    X509 *v4 = tls_mitm_leaf_for(m, "192.0.2.7");
    assert_non_null(v4);
    assert_int_equal(single_san(v4, san, sizeof(san), &san_len), GEN_IPADD);
    assert_int_equal(san_len, 4);
    assert_memory_equal(san, "\xc0\x00\x02\x07", 4);
    assert_int_equal(verify_leaf(ca, v4, NULL, "192.0.2.7"), X509_V_OK);
    assert_int_equal(verify_leaf(ca, v4, NULL, "192.0.2.8"), X509_V_ERR_IP_ADDRESS_MISMATCH);

    X509 *v6 = tls_mitm_leaf_for(m, "2001:DB8::1");
    assert_non_null(v6);
    assert_int_equal(single_san(v6, san, sizeof(san), &san_len), GEN_IPADD);
    assert_int_equal(san_len, 16);
    assert_int_equal(verify_leaf(ca, v6, NULL, "2001:db8::1"), X509_V_OK);
    /* The bracketed form names the same address and is the same cache entry. */
    X509 *v6b = tls_mitm_leaf_for(m, "[2001:db8::1]");
    assert_ptr_equal(v6b, v6);

    X509_free(v4);
    X509_free(v6);
    X509_free(v6b);
    tls_mitm_free(m);
}

static void test_leaf_long_name_truncates_cn_only(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    const char *name =
        "a-rather-long-label-of-forty-characters0.another-long-label-here.example.com";
    assert_true(strlen(name) > 64);
    X509 *leaf = tls_mitm_leaf_for(m, name);
    assert_non_null(leaf);
    char cn[256];
    subject_cn(leaf, cn, sizeof(cn));
    assert_int_equal(strlen(cn), 64);
    assert_memory_equal(cn, name, 64);
    unsigned char san[300];
    size_t san_len;
    assert_int_equal(single_san(leaf, san, sizeof(san), &san_len), GEN_DNS);
    assert_string_equal((char *)san, name);
    assert_int_equal(verify_leaf(tls_mitm_ca_cert(m), leaf, name, NULL), X509_V_OK);
    X509_free(leaf);
    tls_mitm_free(m);
}

static void test_leaf_refuses_invalid_names(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    char long_label[80];
    memset(long_label, 'a', 64);
    strcpy(long_label + 64, ".com");
    const char *bad[] = {"",
                         ".",
                         "a..b",
                         "-a.example",
                         "a-.example",
                         "has space.com",
                         "*.example.com",
                         "a,b.example",
                         "ex\xc3\xa4mple.com",
                         "[not-an-ip]",
                         "fe80::1%eth0",
                         long_label};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        X509 *leaf = tls_mitm_leaf_for(m, bad[i]);
        if (leaf != NULL)
            fail_msg("minted a certificate for invalid name '%s'", bad[i]);
    }
    assert_null(tls_mitm_leaf_for(m, NULL));
    /* Accepted oddities: underscores and one trailing dot (the same entry as without it). */
    X509 *a = tls_mitm_leaf_for(m, "_acme.example.com");
    X509 *b = tls_mitm_leaf_for(m, "example.com.");
    X509 *c = tls_mitm_leaf_for(m, "example.com");
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_equal(b, c);
    struct tls_mitm_stats st;
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 2);
    X509_free(a);
    X509_free(b);
    X509_free(c);
    tls_mitm_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Cache */

static void test_cache_hit_returns_same_certificate(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    X509 *a = tls_mitm_leaf_for(m, "cache.example");
    X509 *b = tls_mitm_leaf_for(m, "CACHE.example");
    assert_non_null(a);
    assert_ptr_equal(a, b);
    struct tls_mitm_stats st;
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 1);
    assert_int_equal(st.cache_misses, 1);
    assert_int_equal(st.cache_hits, 1);
    assert_int_equal(st.cache_size, 1);
    X509_free(a);
    X509_free(b);
    tls_mitm_free(m);
}

static void test_cache_evicts_least_recently_used(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 2);
    struct tls_mitm_stats st;
    X509 *a = tls_mitm_leaf_for(m, "a.example");
    X509 *b = tls_mitm_leaf_for(m, "b.example");
    X509 *a2 = tls_mitm_leaf_for(m, "a.example"); /* a is now the most recent */
    X509 *c = tls_mitm_leaf_for(m, "c.example");  /* evicts b */
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 3);
    assert_int_equal(st.cache_size, 2);

    X509 *a3 = tls_mitm_leaf_for(m, "a.example");
    X509 *c2 = tls_mitm_leaf_for(m, "c.example");
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 3); /* a and c still cached */
    assert_ptr_equal(a3, a);
    assert_ptr_equal(c2, c);

    X509 *b2 = tls_mitm_leaf_for(m, "b.example"); /* b was evicted: minted again */
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 4);
    assert_int_equal(st.cache_size, 2);
    assert_ptr_not_equal(b2, b);
    /* The evicted certificate stays valid for whoever still holds it. */
    assert_int_equal(verify_leaf(tls_mitm_ca_cert(m), b, "b.example", NULL), X509_V_OK);

    X509 *all[] = {a, b, a2, c, a3, c2, b2};
    for (size_t i = 0; i < ARRAY_LEN(all); i++)
        X509_free(all[i]);
    tls_mitm_free(m);
}

struct race {
    struct tls_mitm *m;
    pthread_barrier_t *barrier;
    X509 *got;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->barrier);
    r->got = tls_mitm_leaf_for(r->m, "concurrent.example");
    return NULL;
}

static void test_concurrent_misses_mint_once(void **state)
{
    struct fixture *f = *state;
    struct tls_mitm *m = open_ok(f->state, 0);
    enum { NTHREADS = 8 };
    pthread_barrier_t barrier;
    pthread_t threads[NTHREADS];
    struct race races[NTHREADS];
    for (int round = 0; round < 5; round++) {
        char name[64];
        snprintf(name, sizeof(name), "warmup%d.example", round); /* other names do not block */
        X509_free(tls_mitm_leaf_for(m, name));
    }
    assert_int_equal(pthread_barrier_init(&barrier, NULL, NTHREADS), 0);
    for (int i = 0; i < NTHREADS; i++) {
        races[i] = (struct race){.m = m, .barrier = &barrier};
        assert_int_equal(pthread_create(&threads[i], NULL, race_thread, &races[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    pthread_barrier_destroy(&barrier);

    struct tls_mitm_stats st;
    tls_mitm_get_stats(m, &st);
    assert_int_equal(st.mints, 5 + 1);
    assert_int_equal(st.cache_misses, 5 + 1);
    assert_int_equal(st.cache_hits, NTHREADS - 1);
    for (int i = 0; i < NTHREADS; i++) {
        assert_non_null(races[i].got);
        assert_ptr_equal(races[i].got, races[0].got);
    }
    for (int i = 0; i < NTHREADS; i++)
        X509_free(races[i].got);
    tls_mitm_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Handshakes: tls_mitm server <-> tls_upstream client trusting the CA file */

struct hs_env {
    struct tls_mitm *m;
    struct tls_upstream *u;
};

static void env_open(struct fixture *f, struct hs_env *env)
{
    char err[512] = "";
    env->m = open_ok(f->state, 0);
    env->u = tls_upstream_new(f->ca_file, err, sizeof(err));
    if (env->u == NULL)
        fail_msg("tls_upstream_new: %s", err);
}

static void env_close(struct hs_env *env)
{
    tls_upstream_free(env->u);
    tls_mitm_free(env->m);
}

static void test_handshake_with_sni(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    SSL *c = tls_upstream_new_ssl(env.u, "www.example.com", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, "connect-target.example");
    assert_non_null(c);
    assert_non_null(s);
    char reason[256] = "";
    int rc = handshake(c, s, reason, sizeof(reason));
    if (rc != 0)
        fail_msg("handshake failed (%d): %s", rc, reason);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    assert_string_equal(tls_mitm_client_sni(s), "www.example.com");
    const unsigned char *alpn;
    unsigned int alpn_len;
    SSL_get0_alpn_selected(c, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 8);
    assert_memory_equal(alpn, "http/1.1", 8);

    /* The client saw a leaf for the SNI name followed by the CA. */
    X509 *peer = SSL_get0_peer_certificate(c);
    char cn[256];
    subject_cn(peer, cn, sizeof(cn));
    assert_string_equal(cn, "www.example.com");
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(c);
    assert_int_equal(sk_X509_num(chain), 2);
    assert_int_equal(X509_cmp(sk_X509_value(chain, 1), tls_mitm_ca_cert(env.m)), 0);
    exchange_byte(c, s);
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

static void test_handshake_sni_is_lower_cased(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    SSL *c = tls_upstream_new_ssl(env.u, "www.example.com", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, NULL);
    assert_int_equal(SSL_set_tlsext_host_name(c, "WWW.Example.COM"), 1);
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), 0);
    assert_string_equal(tls_mitm_client_sni(s), "www.example.com");
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

static void test_handshake_without_sni_uses_default_name(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    /* An IP literal: the client sends no SNI and checks the iPAddress SAN. */
    SSL *c = tls_upstream_new_ssl(env.u, "127.0.0.1", 8443);
    SSL *s = tls_mitm_new_server_ssl(env.m, "127.0.0.1");
    char reason[256] = "";
    int rc = handshake(c, s, reason, sizeof(reason));
    if (rc != 0)
        fail_msg("handshake failed (%d): %s", rc, reason);
    assert_null(tls_mitm_client_sni(s));
    SSL_free(c);
    SSL_free(s);

    /* And a wrong default name is caught by the client's IP check. */
    c = tls_upstream_new_ssl(env.u, "127.0.0.1", 8443);
    s = tls_mitm_new_server_ssl(env.m, "127.0.0.2");
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "IP address mismatch");
    SSL_free(c);
    SSL_free(s);

    /* No SNI and no default name: nothing to present, the handshake fails. */
    c = tls_upstream_new_ssl(env.u, "127.0.0.1", 8443);
    s = tls_mitm_new_server_ssl(env.m, NULL);
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), -1);
    assert_non_null(strstr(reason, "handshake failed"));
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

static void test_handshake_hostname_mismatch(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    /* The client verifies www.example.com but names evil.example in its SNI, so the proxy
     * presents a certificate for evil.example. */
    SSL *c = tls_upstream_new_ssl(env.u, "www.example.com", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, NULL);
    assert_int_equal(SSL_set_tlsext_host_name(c, "evil.example"), 1);
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "hostname mismatch");
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

static void test_handshake_untrusted_without_ca(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    char err[256];
    struct tls_upstream *plain = tls_upstream_new(NULL, err, sizeof(err));
    assert_non_null(plain);
    SSL *c = tls_upstream_new_ssl(plain, "www.example.com", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, NULL);
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), -1);
    /* The proxy sends its CA in the chain, so OpenSSL names the untrusted root. */
    assert_string_equal(reason,
                        "certificate verify failed: self-signed certificate in certificate chain");
    SSL_free(c);
    SSL_free(s);
    tls_upstream_free(plain);
    env_close(&env);
}

static void test_handshake_rejects_invalid_sni(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    static const char *const bad[] = {"bad name.example", "a..b", "x_y\x01.example"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        SSL *c = tls_upstream_new_ssl(env.u, "www.example.com", 443);
        SSL *s = tls_mitm_new_server_ssl(env.m, "www.example.com");
        assert_int_equal(SSL_set_tlsext_host_name(c, bad[i]), 1);
        char reason[256] = "";
        assert_int_equal(handshake(c, s, reason, sizeof(reason)), -1);
        assert_string_equal(reason, "handshake failed: tlsv1 unrecognized name");
        assert_null(tls_mitm_client_sni(s));
        SSL_free(c);
        SSL_free(s);
    }
    struct tls_mitm_stats st;
    tls_mitm_get_stats(env.m, &st);
    assert_int_equal(st.mints, 0);
    env_close(&env);
}

static void test_handshake_ip_sni_treated_as_absent(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    SSL *c = tls_upstream_new_ssl(env.u, "10.1.2.3", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, "10.1.2.3");
    assert_int_equal(SSL_set_tlsext_host_name(c, "10.9.9.9"), 1); /* ignored by the proxy */
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), 0);
    assert_null(tls_mitm_client_sni(s));
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

static void test_handshake_h2_only_client_gets_no_alpn(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    SSL *c = tls_upstream_new_ssl(env.u, "h2.example", 443);
    SSL *s = tls_mitm_new_server_ssl(env.m, NULL);
    assert_int_equal(SSL_set_alpn_protos(c, (const unsigned char *)"\x02h2", 3), 0);
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), 0);
    const unsigned char *alpn;
    unsigned int alpn_len;
    SSL_get0_alpn_selected(s, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 0);
    SSL_get0_alpn_selected(c, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 0);
    SSL_free(c);
    SSL_free(s);
    env_close(&env);
}

/* Handshakes twice with the same host:port and reports whether the second one resumed.
 * max_version 0 leaves the protocol to negotiate (TLS 1.3). */
static bool second_handshake_resumes(struct hs_env *env, int max_version, const char *host,
                                     uint16_t port1, uint16_t port2)
{
    bool reused = false;
    char reason[256] = "";
    for (int i = 0; i < 2; i++) {
        SSL *c = tls_upstream_new_ssl(env->u, host, i == 0 ? port1 : port2);
        SSL *s = tls_mitm_new_server_ssl(env->m, NULL);
        if (max_version != 0)
            assert_int_equal(SSL_set_max_proto_version(c, max_version), 1);
        int rc = handshake(c, s, reason, sizeof(reason));
        if (rc != 0)
            fail_msg("handshake %d failed (%d): %s", i, rc, reason);
        assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
        if (max_version != 0)
            assert_int_equal(SSL_version(c), max_version);
        exchange_byte(c, s);
        if (i == 1)
            reused = SSL_session_reused(c) == 1;
        else
            assert_int_equal(SSL_session_reused(c), 0);
        SSL_free(c); /* no close_notify: the cached session must survive that */
        SSL_free(s);
    }
    return reused;
}

static void test_handshake_session_resumption(void **state)
{
    struct fixture *f = *state;
    struct hs_env env;
    env_open(f, &env);
    assert_true(second_handshake_resumes(&env, 0, "resume13.example", 443, 443));
    assert_true(second_handshake_resumes(&env, TLS1_2_VERSION, "resume12.example", 443, 443));
    /* Sessions are per host:port. */
    assert_false(second_handshake_resumes(&env, 0, "port.example", 443, 8443));
    env_close(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ca_created_with_safe_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_reopened_is_the_same, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_refuses_readable_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_refuses_mismatched_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_crash_leftovers_are_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_concurrent_first_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leaf_for_dns_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leaf_for_ip_literals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leaf_long_name_truncates_cn_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leaf_refuses_invalid_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_hit_returns_same_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_evicts_least_recently_used, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_misses_mint_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_with_sni, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_sni_is_lower_cased, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_without_sni_uses_default_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_handshake_hostname_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_untrusted_without_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_rejects_invalid_sni, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_ip_sni_treated_as_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_h2_only_client_gets_no_alpn, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_handshake_session_resumption, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
