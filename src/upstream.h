/* upstream: connections from the proxy to origins — resolution (with dns_remap), TCP connect,
 * verified TLS — and the per-worker pool of idle keep-alive connections.
 *
 * All of it runs inside one worker's event loop. A connection attempt is asynchronous and
 * cancellable; its outcome arrives through one callback, exactly once, unless cancelled first. */
#ifndef AUTHPROXY_UPSTREAM_H
#define AUTHPROXY_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <openssl/ssl.h>

#include "outflush.h"
#include "tls_readahead.h"
#include "worker.h"

struct bufferevent;

/* An established connection to an origin. Owned by one conn while in use, by the worker's pool
 * while idle. */
struct upstream {
    TAILQ_ENTRY(upstream) idle_link;
    struct worker *w;
    struct bufferevent *bev; /* owns the socket and, for TLS, the SSL */
    char *key;               /* pool identity: scheme, host, port */
    bool tls;
    uint64_t idle_since_us;
    uint64_t requests; /* requests served on this connection so far */
    struct outflush flush; /* attached to bev, plain or TLS (outflush.h) */
    struct tls_readahead readahead; /* attached to bev when TLS (tls_readahead.h) */
};

enum upstream_error {
    UPSTREAM_OK = 0,
    UPSTREAM_ERR_DNS,        /* name did not resolve */
    UPSTREAM_ERR_CONNECT,    /* TCP connect refused, unreachable or timed out */
    UPSTREAM_ERR_TLS_VERIFY, /* certificate not trusted or name mismatch */
    UPSTREAM_ERR_TLS,        /* other TLS handshake failure */
    UPSTREAM_ERR_FORBIDDEN,  /* the destination is one of authproxy's own listeners */
    UPSTREAM_ERR_INTERNAL,   /* every address is internal and internal ones were not allowed */
};

/* On success u is a new connection the callee now owns; on failure u is NULL and reason is a
 * short description (valid only during the call). */
typedef void (*upstream_connect_cb)(struct upstream *u, enum upstream_error err, const char *reason,
                                    void *arg);

struct upstream_connect;

/* Starts connecting to host:port (host as the sandbox named it: it is used for SNI, certificate
 * verification and the pool key; dns_remap in snap may send the TCP connection elsewhere).
 * Internal addresses (upstream_addr_is_internal) are skipped unless allow_internal (the policy
 * names the host, policy_names_host) or the host is dns_remap'ed (the operator's own mapping);
 * checked on the resolved addresses, so no name leads there by resolving to them. Never calls
 * cb before returning. Returns a handle for upstream_connect_cancel. */
struct upstream_connect *upstream_connect_start(struct worker *w, struct snapshot *snap,
                                                const char *host, uint16_t port, bool tls,
                                                bool allow_internal, upstream_connect_cb cb,
                                                void *arg);

/* True for addresses a sandbox must not reach unless the policy names the host: loopback,
 * unspecified, link-local (169.254.0.0/16 with the cloud metadata services, fe80::/10), private
 * (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), benchmarking (198.18/15: the
 * sandbox resolver's placeholders), IETF protocol assignments (192.0.0/24), multicast and
 * reserved ranges, and IPv6 forms embedding such an IPv4 address (v4-mapped, NAT64, 6to4). */
bool upstream_addr_is_internal(const struct sockaddr *sa);
/* Abandons an attempt; cb will not be called. */
void upstream_connect_cancel(struct upstream_connect *uc);

/* True if host (an IP literal, normalised) and port name one of authproxy's own listeners.
 * Names are checked after resolution, when connecting. */
bool upstream_is_self_literal(const struct serve_shared *sh, const char *host, uint16_t port);

/* Takes an idle pooled connection for (tls, host, port, allow_internal), or NULL. A
 * connection made with allow_internal is never handed to a request without it. */
struct upstream *upstream_pool_take(struct worker *w, const char *host, uint16_t port, bool tls,
                                    bool allow_internal);
/* Returns a connection to the pool (after a complete response with keep-alive) or frees it. */
void upstream_release(struct upstream *u, bool reusable);
void upstream_free(struct upstream *u);
/* Frees every idle pooled connection (on reload: new trust settings; on shutdown). */
void upstream_pool_flush(struct worker *w);

#endif
