/* dns_server: the sandboxes' policy-aware DNS resolver (SPEC §5), on UDP and TCP.
 *
 * A sandbox's DNS (UDP and TCP port 53) is DNATed here (netns.h). Every query is parsed strictly
 * (dns_msg.h) and answered by this server itself; only the name of an A query the sandbox's policy
 * lets out is ever resolved upstream, through the proxy's own evdns base. What a client gets:
 *
 *   malformed (dns_msg refuses)            FORMERR (NOTIMP for other opcodes); responses dropped
 *   no policy for the client (policy_fn    REFUSED
 *     returned NULL), class other than IN,
 *     a name that is not a host name (a byte outside [A-Za-z0-9_-] in a label, the root, an IP
 *     literal, longer than 253 characters, refused by host_normalize)
 *   policy_decide_host says DENY           REFUSED
 *   ANY (RFC 8482 allows refusing it; it is only good for reflection)   REFUSED
 *   -- everything below is for names the policy lets out (BYPASS or INSPECT) --
 *   A, name dns_remap'd (is_remapped)      one placeholder address (below), upstream not asked
 *   A, otherwise                           resolved upstream: the addresses found (at most
 *                                          DNS_SERVER_MAX_ANSWERS, TTL capped at
 *                                          DNS_SERVER_TTL_CAP); NXDOMAIN passes through as
 *                                          NXDOMAIN, "no A records" as an empty NOERROR, any other
 *                                          failure (timeout, SERVFAIL, refused) as SERVFAIL
 *   AAAA, HTTPS, SVCB, and every other type  NOERROR without answers, upstream not asked (IPv6
 *                                          is disabled in sandboxes; empty HTTPS/SVCB keep clients
 *                                          off QUIC/ECH; TXT/MX/... have no use a policy covers)
 *
 * Only a name the policy lets out ever reaches the upstream resolver: a refused name, however
 * it is dressed up (long random labels under a denied suffix), is never forwarded, so DNS is no
 * exfiltration channel past the deny_list/allow_list. (Names under an *allowed* wildcard are
 * forwarded: a policy allowing "*.example.com" lets a sandbox ask for anything under it.)
 *
 * Placeholders: an upstream address the sandbox must not be handed — unspecified (0/8),
 * loopback (127/8), link-local (169.254/16), multicast and reserved (224/3), or one for which
 * is_local_addr() says yes (the sandbox pool: a sandbox's own address is delivered inside its
 * namespace, around the capture) — is replaced by a placeholder from 198.18.0.0/15 (RFC 2544
 * benchmark range, never routed), as is the answer for a remapped name. All of a sandbox's TCP
 * is captured and the proxy routes by TLS SNI / HTTP Host, so the address only has to be a
 * plausible public one; a loopback answer would make the sandbox dial its own lo and bypass the
 * capture. The placeholder is a hash of the name (dns_server_placeholder), stable across queries.
 *
 * Amplification: a UDP answer never exceeds the query's UDP limit (512, or its EDNS size capped
 * at 1232); answers that do not fit are left out with TC set and the client retries over TCP.
 * Refusals and errors are never longer than the query.
 *
 * TCP (RFC 7766): length-prefixed messages, several per connection, answered as they complete
 * (possibly out of order, matched by id). Bounded: connections (max_tcp_conns; the one over the
 * limit is closed at once), pending queries per connection (reading pauses), the size of one
 * message (DNS_SERVER_MAX_QUERY; larger closes the connection), unread output (reading pauses),
 * and an idle timeout. Pending upstream lookups are bounded in total and per client address
 * (over either: SERVFAIL), so one sandbox cannot starve the others.
 *
 * Audit: one audit_write per query answered: method "DNS", scheme "dns", host = the name (text
 * form, NULL when the message was malformed), port 53, path = the type name (dns_type_name),
 * decision "allowed" (answered from policy, upstream failures included, with error set) or
 * "denied" (refused; decided_by "deny_list"/"allow_list", "dns" for names/classes/types refused
 * here, "no policy", "limit"), decided_by the host decision's list or "policy", status = the DNS
 * rcode sent, bytes = message sizes (error "answer not sent" when a UDP send failed).
 * Messages dropped without an answer (responses, runts, oversized datagrams) and lookups
 * cancelled because their TCP connection or the server went away are only logged at debug
 * level, not audited.
 *
 * Threads: a server belongs to one event loop (the one whose base it was given) and to that
 * loop's thread; the upstream evdns base must be on the same loop. */
#ifndef AUTHPROXY_DNS_SERVER_H
#define AUTHPROXY_DNS_SERVER_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evdns_base;
struct sockaddr;
struct policy;
struct audit_log;

#define DNS_SERVER_TTL_CAP     60   /* seconds; also the TTL of placeholder answers */
#define DNS_SERVER_MAX_ANSWERS 16   /* A records in one answer */
#define DNS_SERVER_MAX_QUERY   4096 /* bytes of one query message (UDP datagram or TCP frame) */

struct dns_server;

/* The policy that applies to queries from `client` (borrowed; valid during the call), or NULL to
 * refuse all. Called once per query, on the loop thread, before anything is resolved. */
typedef const struct policy *(*dns_server_policy_fn)(void *ctx, const struct sockaddr *client);

struct dns_server_config {
    const char *listen;          /* "0.0.0.0:0" -> UDP and TCP on the same (ephemeral if 0) port */
    struct evdns_base *upstream; /* the resolver the proxy itself uses (honours --upstream-dns);
                                    borrowed, must outlive the server */
    dns_server_policy_fn policy;
    void *policy_ctx; /* passed to every callback below */
    /* dns_remap'd names (normalised): never resolved upstream, answered with a placeholder.
     * May be NULL (nothing is remapped). */
    bool (*is_remapped)(void *ctx, const char *name);
    struct audit_log *audit; /* one line per query (may be NULL) */

    /* Additions (all optional; zero/NULL means the default). */

    /* Addresses (network byte order) that must never be handed to a sandbox besides the fixed
     * list above, e.g. the sandbox address pool (netns_pool_contains). */
    bool (*is_local_addr)(void *ctx, struct in_addr addr);
    /* Who the client is, for audit lines: *sandbox and *workspace (borrowed, valid during the
     * call; copied) or left NULL. Called once per query. */
    void (*identify)(void *ctx, const struct sockaddr *client, const char **sandbox,
                     const char **workspace);
    unsigned max_tcp_conns;      /* default 64 */
    unsigned tcp_idle_ms;        /* default 10000 */
    unsigned max_pending;        /* upstream lookups in flight, in total; default 256 */
    unsigned max_pending_client; /* in flight for one client address; default 32 */
    unsigned max_pending_conn;   /* in flight for one TCP connection; default 16 */
};

/* Binds UDP and TCP on cfg->listen (same port) and starts serving on base. cfg is copied; the
 * pointers in it are borrowed and must outlive the server. Returns NULL with a message in err
 * (e.g. the address is not ADDR:PORT, the port is taken, upstream or policy is NULL). The caller
 * owns the result (dns_server_free). */
struct dns_server *dns_server_new(struct event_base *base, const struct dns_server_config *cfg,
                                  char *err, size_t err_len);

/* The bound port (host byte order): the ephemeral one when cfg->listen said 0. */
uint16_t dns_server_port(const struct dns_server *s);

/* Closes the sockets and every TCP connection, cancels pending upstream lookups (no answer is
 * sent for them) and frees s. evdns still runs the cancelled lookups' callbacks later from the
 * loop; they find nothing to answer and free their small token, so run the loop (or free the
 * evdns base with fail_requests) afterwards to reclaim them. NULL is allowed. */
void dns_server_free(struct dns_server *s);

/* The placeholder address for a normalised name: 198.18.0.0/15, last byte never 0 or 255,
 * derived from the name (FNV-1a), so the same name always gets the same address. */
struct in_addr dns_server_placeholder(const char *name);

/* True if addr (network byte order) lies in 198.18.0.0/15: the transparent listener may see it
 * as SO_ORIGINAL_DST and should route by SNI/Host, never dial it. */
bool dns_server_is_placeholder(struct in_addr addr);

#endif
