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
 * The caller owns the SSL. Call tls_upstream_session_done once the handshake succeeds so the
 * session can be cached. */
SSL *tls_upstream_new_ssl(struct tls_upstream *u, const char *host, uint16_t port);

/* After a failed handshake: a short description of why, for the 502 body and the audit log
 * ("certificate verify failed: unable to get local issuer certificate"). Static or owned by ssl. */
const char *tls_upstream_failure_reason(SSL *ssl);

#endif
