/* tls_upstream: TLS from the proxy to origins.
 *
 * One client SSL_CTX per loaded configuration: peers are verified against the system trust
 * store plus an optional extra bundle (upstream_ca_file), TLS 1.2 minimum, ALPN "http/1.1",
 * SNI set and the host name (or IP literal) checked against the certificate. Sessions are
 * cached per host:port so reconnections resume instead of doing a full handshake. Safe to use
 * from every worker thread. */
#ifndef AUTHPROXY_TLS_UPSTREAM_H
#define AUTHPROXY_TLS_UPSTREAM_H

#include <stdint.h>

#include <openssl/ssl.h>

struct tls_upstream;

/* extra_ca_file may be NULL. On failure returns NULL with a message in err. */
struct tls_upstream *tls_upstream_new(const char *extra_ca_file, char *err, size_t err_len);
void tls_upstream_free(struct tls_upstream *u);

/* A new client SSL for host (a DNS name or an IP literal, as the sandbox named it) and port:
 * SNI (not for IP literals), hostname/IP verification, a cached session to resume if any.
 * host is case-insensitive; an IPv6 literal may be bracketed ("[::1]"); one trailing dot is
 * ignored. Returns NULL if host is neither a valid host name nor an IP literal.
 * The caller owns the SSL and must free it before tls_upstream_free(u).
 * Sessions are cached automatically (an OpenSSL new-session callback stores them under
 * "host:port", with TLS 1.3 when the ticket arrives during a later SSL_read): there is nothing
 * to call after the handshake, and an abrupt close does not spoil the cached session. */
SSL *tls_upstream_new_ssl(struct tls_upstream *u, const char *host, uint16_t port);

/* After a failed handshake: a short description of why, for the 502 body and the audit log.
 * Never NULL. One of "hostname mismatch", "IP address mismatch",
 * "certificate verify failed: <X509 verify error>" (e.g. "... unable to get local issuer
 * certificate", "... certificate has expired"), "handshake failed: <OpenSSL reason>" (e.g.
 * "... wrong version number", "... tlsv1 alert protocol version") or "handshake failed".
 * Sources, in order: the certificate verification result; the most recent error in this
 * thread's OpenSSL error queue; the error of the first failed handshake call (recorded on the
 * SSL by an info callback, so it survives the queue being drained, as libevent's
 * bufferevent_openssl does before running the event callback; an SSL_set_info_callback of
 * your own on the SSL would replace that recording). Clear the queue
 * (ERR_clear_error) before driving the handshake yourself so stale errors cannot leak in.
 * Static or owned by ssl (valid until SSL_free or the next call). */
const char *tls_upstream_failure_reason(SSL *ssl);

/* Same, with an OpenSSL error code obtained elsewhere taking the place of the error queue,
 * e.g. bufferevent_get_openssl_error(bev) in a libevent event callback (0: use the queue). */
const char *tls_upstream_failure_reason_err(SSL *ssl, unsigned long ossl_err);

#endif
