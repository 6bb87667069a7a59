/* tls_mitm: the deployment's interception CA and the leaf certificates it mints.
 *
 * The CA (P-256 key, self-signed, 10 years) is created at first start in the state dir as
 * ca.key (mode 0600) and ca.crt, and loaded on later starts. One P-256 leaf key is generated per
 * process and reused for every minted certificate: key generation is the expensive part of
 * minting and reusing one key is what mitmproxy and sslsplit do too. Minted certificates are
 * kept in a bounded LRU cache keyed by name; concurrent misses for one name are collapsed into
 * one mint (others wait for it). Everything here is safe to call from any worker thread.
 *
 * The CA private key is read once, kept in memory only inside this module, and never logged.
 *
 * Names: a DNS name (letters, digits, '-', '_'; labels of 1..63; at most 253 characters; one
 * trailing dot ignored) or an IPv4/IPv6 literal (IPv6 optionally bracketed). Names are
 * case-insensitive: the cache key and the certificate use the lower-cased form. */
#ifndef AUTHPROXY_TLS_MITM_H
#define AUTHPROXY_TLS_MITM_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct tls_mitm;

struct tls_mitm_stats {
    uint64_t cache_hits;   /* lookups served without signing (incl. waiting on a concurrent mint) */
    uint64_t cache_misses; /* lookups that started a mint */
    uint64_t mints;        /* certificates actually signed */
    uint64_t cache_size;   /* certificates currently cached */
};

/* Loads state_dir/ca.key + ca.crt, creating them (and state_dir, mode 0700) if absent.
 * cache_capacity bounds the number of cached leaf certificates (0: default 4096).
 * On failure returns NULL with a message in err (never containing key material).
 * Refuses a ca.key that is not owned by the effective uid or has any group/other permission
 * bit, a key that does not match ca.crt, a ca.crt that is not a CA or has expired. Creation
 * and loading run under flock on state_dir/ca.lock, and ca.key is renamed into place last, so
 * concurrent starts share one CA and a crash mid-creation leaves no half CA (a ca.crt without
 * ca.key is replaced by a new CA at the next start). */
struct tls_mitm *tls_mitm_open(const char *state_dir, size_t cache_capacity, char *err,
                               size_t err_len);
/* Frees m. Every SSL made by tls_mitm_new_server_ssl must be freed first. */
void tls_mitm_free(struct tls_mitm *m);

/* The CA certificate (borrowed) and its PEM text (borrowed, NUL-terminated). */
X509 *tls_mitm_ca_cert(const struct tls_mitm *m);
const char *tls_mitm_ca_pem(const struct tls_mitm *m);

/* Returns a leaf certificate for name (a DNS name or an IP literal; SAN is DNS or IP
 * accordingly), signed by the CA, from the cache or freshly minted. The caller owns one
 * reference (X509_free). NULL if name is not a valid name (see above) or if signing fails.
 * Profile: CN = name (cut to 64 characters), random positive 128-bit serial, valid from one
 * hour ago for 90 days but never past the CA, CA:FALSE, keyUsage digitalSignature (critical),
 * extendedKeyUsage serverAuth, SKI, AKI, SHA-256. */
X509 *tls_mitm_leaf_for(struct tls_mitm *m, const char *name);

/* The shared leaf private key (borrowed). */
EVP_PKEY *tls_mitm_leaf_key(const struct tls_mitm *m);

/* Creates the server-side SSL for an intercepted client connection. The certificate is chosen
 * during the handshake from the ClientHello's SNI, or default_name when the client sends none
 * (the CONNECT target or the original destination). ALPN selects "http/1.1" only; a client
 * that offers only other protocols (h2) gets no ALPN and the handshake continues. The chain
 * sent is leaf + CA. TLS 1.2 minimum, no renegotiation.
 * The handshake fails (alert) when the server_name extension is malformed, when the SNI is not
 * a valid host name, or when there is no SNI and default_name is NULL. An SNI holding an IP
 * literal (forbidden by RFC 6066, sent by a few old clients) is treated as absent: the
 * certificate is for default_name and tls_mitm_client_sni returns NULL.
 * default_name is copied. Returns a new SSL the caller owns, or NULL. */
SSL *tls_mitm_new_server_ssl(struct tls_mitm *m, const char *default_name);

/* After (or during) the handshake of an SSL made by tls_mitm_new_server_ssl: the SNI the client
 * sent, lower-cased, or NULL if it sent none. Borrowed from the SSL. */
const char *tls_mitm_client_sni(SSL *ssl);

void tls_mitm_get_stats(struct tls_mitm *m, struct tls_mitm_stats *out);

#endif
