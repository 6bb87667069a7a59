/* Unit tests for tls_upstream: context creation (extra CA file errors), the per-SSL settings
 * (SNI, host/IP verification), real in-memory handshakes against a test origin with its own
 * test PKI (success, ALPN, each failure reason) and session resumption per host:port. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "tls_upstream.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------- */
/* Test PKI: a CA, a leaf for upstream.test + 127.0.0.1, and an expired leaf. */

struct pki {
    EVP_PKEY *ca_key, *leaf_key;
    X509 *ca, *leaf, *expired;
    char ca_file[64]; /* the CA in PEM, a mkstemp file */
};

static struct pki pki;

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&v3);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &v3, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for key signed by issuer_key (issuer NULL: self-signed), valid between the
 * given offsets from now (seconds). san NULL for none. */
static X509 *make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *cn,
                       const char *san, bool ca, long from, long to)
{
    static long serial = 1;
    X509 *cert = X509_new();
    assert_non_null(cert);
    assert_int_equal(X509_set_version(cert, X509_VERSION_3), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++), 1);
    X509_NAME *name = X509_get_subject_name(cert);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0),
        1);
    assert_int_equal(X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), from));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), to));
    assert_int_equal(X509_set_pubkey(cert, key), 1);
    X509 *iss = issuer ? issuer : cert;
    if (ca) {
        add_ext(cert, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(cert, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(cert, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(cert, iss, NID_ext_key_usage, "serverAuth");
    }
    add_ext(cert, iss, NID_subject_key_identifier, "hash");
    if (san != NULL)
        add_ext(cert, iss, NID_subject_alt_name, san);
    assert_true(X509_sign(cert, issuer_key, EVP_sha256()) > 0);
    return cert;
}

static int pki_setup(void **state)
{
    (void)state;
    pki.ca_key = EVP_EC_gen("P-256");
    pki.leaf_key = EVP_EC_gen("P-256");
    if (pki.ca_key == NULL || pki.leaf_key == NULL)
        return -1;
    pki.ca =
        make_cert(pki.ca_key, NULL, pki.ca_key, "test origin CA", NULL, true, -3600, 86400L * 365);
    pki.leaf = make_cert(pki.leaf_key, pki.ca, pki.ca_key, "upstream.test",
                         "DNS:upstream.test,IP:127.0.0.1", false, -3600, 86400L * 30);
    pki.expired = make_cert(pki.leaf_key, pki.ca, pki.ca_key, "upstream.test", "DNS:upstream.test",
                            false, -86400L * 30, -86400L);
    snprintf(pki.ca_file, sizeof(pki.ca_file), "/tmp/authproxy-test-upstream-XXXXXX");
    int fd = mkstemp(pki.ca_file);
    if (fd == -1)
        return -1;
    BIO *bio = BIO_new_fd(fd, BIO_CLOSE);
    int ok = PEM_write_bio_X509(bio, pki.ca);
    BIO_free(bio);
    return ok == 1 ? 0 : -1;
}

static int pki_teardown(void **state)
{
    (void)state;
    unlink(pki.ca_file);
    X509_free(pki.ca);
    X509_free(pki.leaf);
    X509_free(pki.expired);
    EVP_PKEY_free(pki.ca_key);
    EVP_PKEY_free(pki.leaf_key);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Test origin: a server SSL_CTX presenting cert (chain: the leaf only) that records the ALPN
 * list the client offered. */

static unsigned char offered_alpn[64];
static unsigned int offered_alpn_len;

static int origin_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    offered_alpn_len = inlen < sizeof(offered_alpn) ? inlen : sizeof(offered_alpn);
    memcpy(offered_alpn, in, offered_alpn_len);
    if (inlen >= 9 && memcmp(in, "\x08http/1.1", 9) == 0) {
        *out = in + 1;
        *outlen = 8;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *origin_ctx(X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, pki.leaf_key), 1);
    SSL_CTX_set_alpn_select_cb(ctx, origin_alpn, NULL);
    offered_alpn_len = 0;
    return ctx;
}

static struct tls_upstream *upstream_ok(const char *ca_file)
{
    char err[512] = "";
    struct tls_upstream *u = tls_upstream_new(ca_file, err, sizeof(err));
    if (u == NULL)
        fail_msg("tls_upstream_new: %s", err);
    return u;
}

/* When set, handshake() empties the error queue before asking for the failure reason, as
 * libevent's bufferevent_openssl does before it runs the event callback. */
static bool drain_queue_before_reason;

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
                    if (drain_queue_before_reason)
                        ERR_clear_error();
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

/* One handshake of a tls_upstream client for host:port against an origin presenting cert.
 * Returns the handshake() result; reason receives the client's failure reason. */
static int connect_once(struct tls_upstream *u, SSL_CTX *origin, const char *host, uint16_t port,
                        char *reason, size_t reason_len)
{
    SSL *c = tls_upstream_new_ssl(u, host, port);
    SSL *s = SSL_new(origin);
    assert_non_null(c);
    assert_non_null(s);
    int rc = handshake(c, s, reason, reason_len);
    SSL_free(c);
    SSL_free(s);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Context */

static void test_new_names_missing_ca_file(void **state)
{
    (void)state;
    char err[512] = "";
    assert_null(tls_upstream_new("/nonexistent/extra-roots.pem", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/extra-roots.pem"));
    assert_non_null(strstr(err, "No such file"));
}

static void test_new_names_unparsable_ca_file(void **state)
{
    (void)state;
    char path[] = "/tmp/authproxy-test-garbage-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, "not a certificate\n", 18), 0);
    close(fd);
    char err[512] = "";
    assert_null(tls_upstream_new(path, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    unlink(path);
}

static void test_new_without_extra_ca(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    tls_upstream_free(u);
}

/* ---------------------------------------------------------------------------------------- */
/* Per-SSL settings */

static void test_new_ssl_dns_name_sets_sni_and_host_check(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    SSL *ssl = tls_upstream_new_ssl(u, "API.Example.com.", 443);
    assert_non_null(ssl);
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "api.example.com");
    assert_string_equal(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0), "api.example.com");
    assert_null(X509_VERIFY_PARAM_get1_ip_asc(SSL_get0_param(ssl)));
    assert_int_equal(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER, SSL_VERIFY_PEER);
    SSL_free(ssl);
    tls_upstream_free(u);
}

static void test_new_ssl_ip_literal_has_no_sni(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    static const char *const ips[] = {"127.0.0.1", "::1", "[2001:db8::1]"};
    for (size_t i = 0; i < ARRAY_LEN(ips); i++) {
        SSL *ssl = tls_upstream_new_ssl(u, ips[i], 443);
        assert_non_null(ssl);
        assert_null(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
        assert_null(X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0));
        char *ip = X509_VERIFY_PARAM_get1_ip_asc(SSL_get0_param(ssl));
        assert_non_null(ip);
        OPENSSL_free(ip);
        SSL_free(ssl);
    }
    tls_upstream_free(u);
}

static void test_new_ssl_refuses_invalid_hosts(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    static const char *const bad[] = {"",           ".",        "a..b",          "bad host",
                                      "-x.example", "[not-ip]", "*.example.com", "example.com:443",
                                      "[127.0.0.1]"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        SSL *ssl = tls_upstream_new_ssl(u, bad[i], 443);
        if (ssl != NULL)
            fail_msg("accepted invalid host '%s'", bad[i]);
    }
    assert_null(tls_upstream_new_ssl(u, NULL, 443));
    tls_upstream_free(u);
}

/* ---------------------------------------------------------------------------------------- */
/* Handshakes */

static void test_handshake_verifies_and_offers_http11_only(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(pki.ca_file);
    SSL_CTX *origin = origin_ctx(pki.leaf);
    SSL *c = tls_upstream_new_ssl(u, "upstream.test", 443);
    SSL *s = SSL_new(origin);
    char reason[256] = "";
    int rc = handshake(c, s, reason, sizeof(reason));
    if (rc != 0)
        fail_msg("handshake failed (%d): %s", rc, reason);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name), "upstream.test");
    assert_int_equal(offered_alpn_len, 9);
    assert_memory_equal(offered_alpn, "\x08http/1.1", 9);
    const unsigned char *alpn;
    unsigned int alpn_len;
    SSL_get0_alpn_selected(c, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 8);
    assert_true(SSL_version(c) >= TLS1_2_VERSION);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(origin);
    tls_upstream_free(u);
}

static void test_handshake_ip_literal_verifies_ip_san(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(pki.ca_file);
    SSL_CTX *origin = origin_ctx(pki.leaf);
    SSL *c = tls_upstream_new_ssl(u, "127.0.0.1", 443);
    SSL *s = SSL_new(origin);
    char reason[256] = "";
    assert_int_equal(handshake(c, s, reason, sizeof(reason)), 0);
    assert_null(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name)); /* no SNI was sent */
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(origin);
    tls_upstream_free(u);
}

/* Verification failures are explained by the verify result, whatever the error queue holds. */
static void check_failure_reasons(bool drain)
{
    drain_queue_before_reason = drain;
    struct tls_upstream *u = upstream_ok(pki.ca_file);
    struct tls_upstream *system_only = upstream_ok(NULL);
    SSL_CTX *origin = origin_ctx(pki.leaf);
    SSL_CTX *expired = origin_ctx(pki.expired);
    char reason[256];

    assert_int_equal(connect_once(u, origin, "other.test", 443, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "hostname mismatch");
    assert_int_equal(connect_once(u, origin, "127.0.0.2", 443, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "IP address mismatch");
    assert_int_equal(
        connect_once(system_only, origin, "upstream.test", 443, reason, sizeof(reason)), -1);
    assert_string_equal(reason,
                        "certificate verify failed: unable to get local issuer certificate");
    assert_int_equal(connect_once(u, expired, "upstream.test", 443, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "certificate verify failed: certificate has expired");

    SSL_CTX_free(origin);
    SSL_CTX_free(expired);
    tls_upstream_free(system_only);
    tls_upstream_free(u);
    drain_queue_before_reason = false;
}

static void test_failure_reasons(void **state)
{
    (void)state;
    check_failure_reasons(false);
}

static void test_failure_reasons_with_drained_queue(void **state)
{
    (void)state;
    check_failure_reasons(true);
}

static void test_failure_reason_for_non_tls_peer(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    SSL *c = tls_upstream_new_ssl(u, "plain.test", 80);
    BIO *bc = NULL, *bs = NULL;
    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    SSL_set_bio(c, bc, bc);
    ERR_clear_error();
    assert_true(SSL_connect(c) <= 0); /* sends its ClientHello */
    static const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    char sink[4096];
    while (BIO_read(bs, sink, sizeof(sink)) > 0)
        ;
    assert_int_equal(BIO_write(bs, reply, sizeof(reply) - 1), (int)sizeof(reply) - 1);
    ERR_clear_error();
    int r = SSL_connect(c);
    assert_true(r <= 0);
    assert_int_equal(SSL_get_error(c, r), SSL_ERROR_SSL);
    const char *reason = tls_upstream_failure_reason(c);
    assert_string_equal(reason, "handshake failed: wrong version number");
    /* With the queue drained (libevent), the same reason was recorded on the SSL, and an error
     * code passed explicitly (bufferevent_get_openssl_error) is used as given. */
    unsigned long code = ERR_peek_last_error();
    assert_int_not_equal(code, 0);
    ERR_clear_error();
    assert_string_equal(tls_upstream_failure_reason(c), "handshake failed: wrong version number");
    assert_string_equal(tls_upstream_failure_reason_err(c, code),
                        "handshake failed: wrong version number");
    SSL_free(c);
    BIO_free(bs);
    tls_upstream_free(u);
}

static void test_failure_reason_is_never_null(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(NULL);
    SSL *c = tls_upstream_new_ssl(u, "fresh.test", 443);
    ERR_clear_error();
    assert_string_equal(tls_upstream_failure_reason(c), "handshake failed");
    assert_string_equal(tls_upstream_failure_reason(NULL), "handshake failed");
    SSL_free(c);
    tls_upstream_free(u);
}

static void test_refuses_tls11_origin(void **state)
{
    (void)state;
    struct tls_upstream *u = upstream_ok(pki.ca_file);
    SSL_CTX *origin = origin_ctx(pki.leaf);
    assert_int_equal(SSL_CTX_set_cipher_list(origin, "DEFAULT:@SECLEVEL=0"), 1);
    assert_int_equal(SSL_CTX_set_min_proto_version(origin, TLS1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(origin, TLS1_1_VERSION), 1);
    char reason[256] = "";
    assert_int_equal(connect_once(u, origin, "upstream.test", 443, reason, sizeof(reason)), -1);
    assert_string_equal(reason, "handshake failed: tlsv1 alert protocol version");
    /* Same text when the queue was drained before the reason was asked for. */
    drain_queue_before_reason = true;
    assert_int_equal(connect_once(u, origin, "upstream.test", 443, reason, sizeof(reason)), -1);
    drain_queue_before_reason = false;
    assert_string_equal(reason, "handshake failed: tlsv1 alert protocol version");
    SSL_CTX_free(origin);
    tls_upstream_free(u);
}

/* ---------------------------------------------------------------------------------------- */
/* Session resumption */

/* Handshakes with host:port; reads one byte from the origin so that TLS 1.3 tickets are
 * processed; frees both ends without close_notify. Returns SSL_session_reused. */
static int handshake_and_close(struct tls_upstream *u, SSL_CTX *origin, const char *host,
                               uint16_t port, int max_version)
{
    SSL *c = tls_upstream_new_ssl(u, host, port);
    SSL *s = SSL_new(origin);
    if (max_version != 0)
        assert_int_equal(SSL_set_max_proto_version(c, max_version), 1);
    char reason[256] = "";
    int rc = handshake(c, s, reason, sizeof(reason));
    if (rc != 0)
        fail_msg("handshake with %s:%u failed (%d): %s", host, port, rc, reason);
    if (max_version != 0)
        assert_int_equal(SSL_version(c), max_version);
    char buf[4];
    assert_int_equal(SSL_write(s, "x", 1), 1);
    assert_int_equal(SSL_read(c, buf, sizeof(buf)), 1);
    int reused = SSL_session_reused(c);
    SSL_free(c);
    SSL_free(s);
    return reused;
}

static void check_resumption(int max_version)
{
    struct tls_upstream *u = upstream_ok(pki.ca_file);
    SSL_CTX *origin = origin_ctx(pki.leaf);
    assert_int_equal(handshake_and_close(u, origin, "upstream.test", 443, max_version), 0);
    assert_int_equal(handshake_and_close(u, origin, "upstream.test", 443, max_version), 1);
    assert_int_equal(handshake_and_close(u, origin, "UPSTREAM.test", 443, max_version), 1);
    /* Keyed by host:port: another port, or another name, does a full handshake. */
    assert_int_equal(handshake_and_close(u, origin, "upstream.test", 8443, max_version), 0);
    assert_int_equal(handshake_and_close(u, origin, "127.0.0.1", 443, max_version), 0);
    assert_int_equal(handshake_and_close(u, origin, "127.0.0.1", 443, max_version), 1);

    /* A session is only offered by the configuration that verified it. */
    struct tls_upstream *other = upstream_ok(pki.ca_file);
    assert_int_equal(handshake_and_close(other, origin, "upstream.test", 443, max_version), 0);
    SSL_CTX_free(origin);
    tls_upstream_free(other);
    tls_upstream_free(u);
}

static void test_session_resumption_tls13(void **state)
{
    (void)state;
    check_resumption(0);
}

static void test_session_resumption_tls12(void **state)
{
    (void)state;
    check_resumption(TLS1_2_VERSION);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_names_missing_ca_file),
        cmocka_unit_test(test_new_names_unparsable_ca_file),
        cmocka_unit_test(test_new_without_extra_ca),
        cmocka_unit_test(test_new_ssl_dns_name_sets_sni_and_host_check),
        cmocka_unit_test(test_new_ssl_ip_literal_has_no_sni),
        cmocka_unit_test(test_new_ssl_refuses_invalid_hosts),
        cmocka_unit_test(test_handshake_verifies_and_offers_http11_only),
        cmocka_unit_test(test_handshake_ip_literal_verifies_ip_san),
        cmocka_unit_test(test_failure_reasons),
        cmocka_unit_test(test_failure_reasons_with_drained_queue),
        cmocka_unit_test(test_failure_reason_for_non_tls_peer),
        cmocka_unit_test(test_failure_reason_is_never_null),
        cmocka_unit_test(test_refuses_tls11_origin),
        cmocka_unit_test(test_session_resumption_tls13),
        cmocka_unit_test(test_session_resumption_tls12),
    };
    return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}
