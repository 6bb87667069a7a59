/* dns_server: the sandboxes' policy-aware DNS resolver. See dns_server.h for what is answered. */
#include "dns_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "audit.h"
#include "dns_msg.h"
#include "glob.h"
#include "log.h"
#include "policy.h"
#include "util.h"

#define DNS_SERVER_HOST_MAX      253 /* text form of the longest host name (RFC 1035 §2.3.4) */
#define DNS_SERVER_UDP_BUDGET    32  /* datagrams read per wakeup, so TCP and timers get a turn */
#define DNS_SERVER_TCP_OUT_LIMIT (16 * 1024) /* unread answers before reading pauses */
#define DNS_SERVER_BIND_TRIES    16 /* ephemeral UDP ports tried until TCP can bind the same */
/* The largest response we build: header, the longest question, the answers, an OPT record. */
#define DNS_SERVER_RESP_MAX                                                                        \
    (DNS_HEADER_LEN + DNS_MAX_NAME_WIRE + 4 + DNS_SERVER_MAX_ANSWERS * 16 + 11)

struct dns_exchange;

/* One TCP client connection. Owned by the server's list; dns_tcp_close is its one teardown. */
struct dns_tcp_conn {
    struct dns_server *s;
    struct bufferevent *bev; /* owns the socket */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    unsigned n_pending; /* exchanges of this connection waiting for upstream */
    bool paused;        /* reading disabled by a limit (pending, unread output) */
    bool eof;           /* the client finished sending: close once everything is answered */
    struct dns_tcp_conn *prev, *next;
};

/* evdns runs a lookup's callback exactly once, even after evdns_cancel_request, and always later
 * from the loop (deferred). Its argument is this token, which outlives the exchange; the callback
 * frees it. */
struct dns_token {
    struct dns_exchange *x; /* NULL once the exchange is gone */
};

/* One query from receipt to answer. Owned by the server while in its pending list (waiting for
 * upstream), else by the function handling it; dns_exchange_release frees it. */
struct dns_exchange {
    struct dns_server *s;
    struct dns_tcp_conn *conn; /* NULL: UDP */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    struct in_pktinfo pktinfo; /* UDP over IPv4: the address the query was sent to */
    bool has_pktinfo;
    uint8_t *msg; /* owned copy of the query */
    size_t msg_len;
    struct dns_query q;
    bool parsed; /* q holds a query dns_query_parse accepted */
    char host[DNS_SERVER_HOST_MAX + 1];
    char *sandbox, *workspace; /* owned copies for the audit line, or NULL */
    char decided_by[24];
    uint64_t policy_version;
    uint64_t start_us;
    struct evdns_request *req; /* the upstream lookup in flight, or NULL */
    struct dns_token *token;
    bool pending; /* in s->pending (and counted in conn->n_pending) */
    struct dns_exchange *prev, *next;
};

struct dns_server {
    struct event_base *base;
    struct dns_server_config cfg; /* listen is not kept */
    uint16_t port;
    int udp_fd;
    int family;
    struct event *udp_ev;
    struct evconnlistener *listener; /* owns the TCP socket */
    struct dns_tcp_conn *conns;
    unsigned n_conns;
    struct dns_exchange *pending;
    unsigned n_pending;
};

static void dns_tcp_read_cb(struct bufferevent *bev, void *arg);

/* ---- placeholders and address screening ---- */

struct in_addr dns_server_placeholder(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a: cheap, stable, spreads similar names */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    /* 198.18.0.0/15: 17 free bits; the last byte stays in 1..254 (no .0/.255 look-alikes). */
    uint32_t third = (h >> 8) & 0x1ffu; /* 9 bits: 198.18.x or 198.19.x */
    uint32_t last = 1 + (h & 0xffu) % 254u;
    uint32_t a = (198u << 24) | (18u << 16) | (third << 8) | last;
    struct in_addr out = {.s_addr = htonl(a)};
    return out;
}

bool dns_server_is_placeholder(struct in_addr addr)
{
    return (ntohl(addr.s_addr) & 0xfffe0000u) == 0xc6120000u;
}

/* True if a sandbox must not be handed addr (network byte order): it would be delivered inside
 * the sandbox's own namespace (loopback, its own address) or on-link, around the capture, or is
 * no unicast destination at all. */
static bool dns_addr_forbidden(const struct dns_server *s, struct in_addr addr)
{
    uint32_t a = ntohl(addr.s_addr);
    if ((a >> 24) == 0 || (a >> 24) == 127) /* unspecified "this network", loopback */
        return true;
    if ((a >> 16) == 0xa9fe) /* 169.254/16 link-local */
        return true;
    if ((a >> 29) == 7) /* 224/3: multicast, reserved, broadcast */
        return true;
    return s->cfg.is_local_addr && s->cfg.is_local_addr(s->cfg.policy_ctx, addr);
}

/* ---- exchanges ---- */

/* Formats the peer as "ip:port" for audit lines. Returns buf. */
static const char *dns_format_peer(const struct sockaddr_storage *ss, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        port = ntohs(sin->sin_port);
        snprintf(buf, size, "%s:%u", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        port = ntohs(sin6->sin6_port);
        snprintf(buf, size, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, size, "?");
    }
    return buf;
}

/* True if both are the same IP address (ports ignored): one client, for the per-client limit. */
static bool dns_same_client(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
    return false;
}

/* A new exchange for the message msg[0..len) from peer; conn is NULL for UDP. The caller owns
 * the result. */
static struct dns_exchange *dns_exchange_new(struct dns_server *s, struct dns_tcp_conn *conn,
                                             const struct sockaddr_storage *peer,
                                             socklen_t peer_len, const uint8_t *msg, size_t len)
{
    struct dns_exchange *x = xcalloc(1, sizeof(*x));
    x->s = s;
    x->conn = conn;
    x->peer = *peer;
    x->peer_len = peer_len;
    x->msg = xmalloc(len);
    memcpy(x->msg, msg, len);
    x->msg_len = len;
    x->start_us = monotonic_us();
    return x;
}

/* Resumes reading on a paused connection once it is under its limits again. Deferred through
 * the loop (bufferevent_trigger), so this never re-enters frame processing from the completion
 * of an exchange. */
static void dns_tcp_maybe_resume(struct dns_tcp_conn *c);
static void dns_tcp_check_done(struct dns_tcp_conn *c);

/* Ends an exchange without sending anything: cancels its upstream lookup, takes it off the
 * pending list and its connection's count, frees it. The only place an exchange is freed. */
static void dns_exchange_release(struct dns_exchange *x)
{
    struct dns_server *s = x->s;
    if (x->token != NULL) {
        struct evdns_request *req = x->req;
        x->token->x = NULL; /* the callback, still to come, frees the token */
        x->token = NULL;
        x->req = NULL;
        evdns_cancel_request(s->cfg.upstream, req);
    }
    struct dns_tcp_conn *c = x->conn;
    if (x->pending) {
        if (x->prev)
            x->prev->next = x->next;
        else
            s->pending = x->next;
        if (x->next)
            x->next->prev = x->prev;
        s->n_pending--;
        if (c)
            c->n_pending--;
    }
    free(x->msg);
    free(x->sandbox);
    free(x->workspace);
    free(x);
    if (c) {
        dns_tcp_maybe_resume(c);
        dns_tcp_check_done(c);
    }
}

/* Sends len bytes of response to the exchange's client: a datagram (from the address the query
 * reached, so a DNATed reply un-NATs correctly) or a framed TCP message. Returns false if the
 * message could not be sent (UDP: the socket buffer is full; DNS is lossy, the client retries). */
static bool dns_exchange_send(struct dns_exchange *x, const uint8_t *resp, size_t len)
{
    struct dns_server *s = x->s;
    if (x->conn) {
        uint8_t prefix[2];
        if (dns_tcp_prefix(len, prefix) == -1)
            return false;
        struct evbuffer *out = bufferevent_get_output(x->conn->bev);
        return evbuffer_add(out, prefix, 2) == 0 && evbuffer_add(out, resp, len) == 0;
    }
    struct iovec iov = {.iov_base = (void *)resp, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } control;
    struct msghdr mh = {
        .msg_name = &x->peer,
        .msg_namelen = x->peer_len,
        .msg_iov = &iov,
        .msg_iovlen = 1,
    };
    if (x->has_pktinfo) {
        memset(&control, 0, sizeof(control));
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof(control.buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = IPPROTO_IP;
        cm->cmsg_type = IP_PKTINFO;
        cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo pi = {.ipi_spec_dst = x->pktinfo.ipi_addr};
        memcpy(CMSG_DATA(cm), &pi, sizeof(pi));
    }
    ssize_t n;
    do
        n = sendmsg(s->udp_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n == -1 && errno == EINTR);
    return n == (ssize_t)len;
}

/* Answers the exchange (rcode and, for NOERROR A answers, addrs[0..n)), writes its audit line
 * and releases it. decision is "allowed" or "denied"; error a short reason or NULL. */
static void dns_exchange_answer(struct dns_exchange *x, enum dns_rcode rcode,
                                const struct dns_addr *addrs, size_t n, uint32_t ttl,
                                const char *decision, const char *error)
{
    uint8_t resp[DNS_SERVER_RESP_MAX];
    int len;
    if (x->parsed) {
        size_t limit = x->conn ? DNS_TCP_MAX_MSG : dns_query_udp_limit(&x->q);
        len = dns_build_response(x->msg, &x->q, rcode, addrs, n, ttl, limit, resp, sizeof(resp));
    } else {
        len = dns_build_error(&x->q, rcode, resp, sizeof(resp));
    }
    bool sent = len > 0 && dns_exchange_send(x, resp, (size_t)len);
    if (!sent)
        log_debug("dns: answer to a query for '%s' not sent", x->parsed ? x->host : "?");

    char client[INET6_ADDRSTRLEN + 16];
    struct audit_record r = {
        .sandbox = x->sandbox,
        .workspace = x->workspace,
        .client = dns_format_peer(&x->peer, client, sizeof(client)),
        .method = "DNS",
        .scheme = "dns",
        .host = x->parsed ? x->q.name : NULL,
        .port = 53,
        .path = x->parsed ? dns_type_name(x->q.qtype) : NULL,
        .decision = decision,
        .decided_by = x->decided_by[0] ? x->decided_by : NULL,
        .status = (int)rcode,
        .bytes_from_client = x->msg_len,
        .bytes_to_client = sent ? (uint64_t)len : 0,
        .duration_us = monotonic_us() - x->start_us,
        .error = error ? error : (sent ? NULL : "answer not sent"),
        .policy_version = x->policy_version,
    };
    audit_write(x->s->cfg.audit, &r);
    dns_exchange_release(x);
}

/* Refuses with REFUSED, decided_by `by`. */
static void dns_exchange_refuse(struct dns_exchange *x, const char *by, const char *error)
{
    snprintf(x->decided_by, sizeof(x->decided_by), "%s", by);
    dns_exchange_answer(x, DNS_RCODE_REFUSED, NULL, 0, 0, "denied", error);
}

/* The evdns answer for an allowed A query: the addresses, screened, become the answer. */
static void dns_upstream_cb(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    struct dns_token *token = arg;
    struct dns_exchange *x = token->x;
    free(token);
    if (x == NULL)
        return; /* cancelled: the exchange is gone */
    x->token = NULL;
    x->req = NULL;

    if (result == DNS_ERR_NOTEXIST) {
        dns_exchange_answer(x, DNS_RCODE_NXDOMAIN, NULL, 0, 0, "allowed", "NXDOMAIN");
        return;
    }
    if (result == DNS_ERR_NODATA || (result == DNS_ERR_NONE && count <= 0)) {
        dns_exchange_answer(x, DNS_RCODE_NOERROR, NULL, 0, 0, "allowed", NULL);
        return;
    }
    if (result != DNS_ERR_NONE || type != DNS_IPv4_A || addresses == NULL) {
        char why[96];
        snprintf(why, sizeof(why), "upstream: %s", evdns_err_to_string(result));
        dns_exchange_answer(x, DNS_RCODE_SERVFAIL, NULL, 0, 0, "allowed", why);
        return;
    }
    struct dns_addr out[DNS_SERVER_MAX_ANSWERS];
    size_t n = 0;
    const uint32_t *in = addresses;
    for (int i = 0; i < count && n < DNS_SERVER_MAX_ANSWERS; i++) {
        struct in_addr a = {.s_addr = in[i]};
        if (dns_addr_forbidden(x->s, a))
            a = dns_server_placeholder(x->host);
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = memcmp(out[j].addr, &a.s_addr, 4) == 0;
        if (dup)
            continue;
        memset(&out[n], 0, sizeof(out[n]));
        out[n].family = 4;
        memcpy(out[n].addr, &a.s_addr, 4);
        n++;
    }
    uint32_t t = ttl < 0 ? 0 : (uint32_t)ttl;
    if (t > DNS_SERVER_TTL_CAP)
        t = DNS_SERVER_TTL_CAP;
    dns_exchange_answer(x, DNS_RCODE_NOERROR, out, n, t, "allowed", NULL);
}

/* Counts exchanges in flight for the client address of x. */
static unsigned dns_pending_for_client(const struct dns_server *s, const struct dns_exchange *x)
{
    unsigned n = 0;
    for (const struct dns_exchange *p = s->pending; p; p = p->next)
        if (dns_same_client(&p->peer, &x->peer))
            n++;
    return n;
}

/* Starts the upstream A lookup of an allowed name, or answers SERVFAIL when the limits say no
 * or evdns refuses. Takes ownership of x. */
static void dns_exchange_resolve(struct dns_exchange *x)
{
    struct dns_server *s = x->s;
    if (s->n_pending >= s->cfg.max_pending ||
        dns_pending_for_client(s, x) >= s->cfg.max_pending_client) {
        dns_exchange_answer(x, DNS_RCODE_SERVFAIL, NULL, 0, 0, "allowed",
                            "too many queries in flight");
        return;
    }
    struct dns_token *token = xcalloc(1, sizeof(*token));
    token->x = x;
    /* NO_SEARCH: the name is sent as asked, never with resolv.conf's search domains appended. */
    struct evdns_request *req = evdns_base_resolve_ipv4(
        s->cfg.upstream, x->host, DNS_QUERY_NO_SEARCH, dns_upstream_cb, token);
    if (req == NULL) {
        free(token); /* evdns never calls back for a request it did not create */
        dns_exchange_answer(x, DNS_RCODE_SERVFAIL, NULL, 0, 0, "allowed", "upstream: cannot query");
        return;
    }
    x->req = req;
    x->token = token;
    x->pending = true;
    x->next = s->pending;
    if (s->pending)
        s->pending->prev = x;
    s->pending = x;
    s->n_pending++;
    if (x->conn)
        x->conn->n_pending++;
}

/* Validates the question's name and writes its normalised form to x->host. Returns NULL, or a
 * short reason the name is refused: only host names the policy can judge are let through. */
static const char *dns_exchange_check_name(struct dns_exchange *x)
{
    const struct dns_query *q = &x->q;
    if (q->labels == 0)
        return "root name";
    if (q->name_unusual)
        return "not a host name";
    if (q->name_len > DNS_SERVER_HOST_MAX)
        return "name too long";
    uint16_t port = 0;
    if (host_normalize(q->name, q->name_len, x->host, sizeof(x->host), &port) == -1 || port != 0)
        return "not a host name";
    struct in_addr a4;
    if (inet_pton(AF_INET, x->host, &a4) == 1 || strchr(x->host, ':') != NULL)
        return "IP literal";
    return NULL;
}

/* Handles one query message from a client: parse, decide, answer or start the lookup. */
static void dns_server_handle(struct dns_server *s, struct dns_tcp_conn *conn,
                              const struct sockaddr_storage *peer, socklen_t peer_len,
                              const struct in_pktinfo *pktinfo, const uint8_t *msg, size_t len)
{
    struct dns_exchange *x = dns_exchange_new(s, conn, peer, peer_len, msg, len);
    if (pktinfo) {
        x->pktinfo = *pktinfo;
        x->has_pktinfo = true;
    }
    int rc = dns_query_parse(x->msg, x->msg_len, &x->q);
    if (rc == DNS_PARSE_DROP) {
        log_debug("dns: dropped a message that is no query (%zu bytes)", len);
        dns_exchange_release(x);
        return;
    }
    if (rc != DNS_PARSE_OK) {
        snprintf(x->decided_by, sizeof(x->decided_by), "dns");
        bool notimp = rc == DNS_PARSE_NOTIMP;
        dns_exchange_answer(x, notimp ? DNS_RCODE_NOTIMP : DNS_RCODE_FORMERR, NULL, 0, 0, "denied",
                            notimp ? "opcode not implemented" : "malformed query");
        return;
    }
    x->parsed = true;

    if (s->cfg.identify) {
        const char *sandbox = NULL, *workspace = NULL;
        s->cfg.identify(s->cfg.policy_ctx, (const struct sockaddr *)peer, &sandbox, &workspace);
        x->sandbox = sandbox ? xstrdup(sandbox) : NULL;
        x->workspace = workspace ? xstrdup(workspace) : NULL;
    }
    const struct policy *p = s->cfg.policy(s->cfg.policy_ctx, (const struct sockaddr *)peer);
    if (p == NULL) {
        dns_exchange_refuse(x, "no policy", "client has no policy");
        return;
    }
    x->policy_version = policy_version(p);
    if (x->q.qclass != DNS_CLASS_IN) {
        dns_exchange_refuse(x, "dns", "class not IN");
        return;
    }
    const char *bad = dns_exchange_check_name(x);
    if (bad) {
        dns_exchange_refuse(x, "dns", bad);
        return;
    }
    struct policy_host_decision d;
    policy_decide_host(p, x->host, &d);
    if (d.verdict == POLICY_HOST_DENY) {
        dns_exchange_refuse(x, d.decided_by ? d.decided_by : "policy", "host denied by policy");
        return;
    }
    snprintf(x->decided_by, sizeof(x->decided_by), "%s", d.decided_by ? d.decided_by : "policy");
    /* p is not used past this point: its reference is only good for this call. */

    switch (x->q.qtype) {
    case DNS_TYPE_A:
        break;
    case DNS_TYPE_ANY:
        dns_exchange_refuse(x, "dns", "ANY not answered");
        return;
    default: /* AAAA, HTTPS, SVCB and the rest: an empty NOERROR, nothing asked upstream */
        dns_exchange_answer(x, DNS_RCODE_NOERROR, NULL, 0, 0, "allowed", NULL);
        return;
    }
    if (s->cfg.is_remapped && s->cfg.is_remapped(s->cfg.policy_ctx, x->host)) {
        struct dns_addr a = {.family = 4};
        struct in_addr ph = dns_server_placeholder(x->host);
        memcpy(a.addr, &ph.s_addr, 4);
        dns_exchange_answer(x, DNS_RCODE_NOERROR, &a, 1, DNS_SERVER_TTL_CAP, "allowed", NULL);
        return;
    }
    dns_exchange_resolve(x);
}

/* ---- UDP ---- */

/* Reads up to a budget of datagrams and handles each. Oversized datagrams are dropped (no
 * query needs DNS_SERVER_MAX_QUERY bytes; answering a truncated one would misread it). */
static void dns_udp_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_server *s = arg;
    (void)what;
    uint8_t buf[DNS_SERVER_MAX_QUERY + 1];
    for (int i = 0; i < DNS_SERVER_UDP_BUDGET; i++) {
        struct sockaddr_storage peer;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
        union {
            char buf[CMSG_SPACE(sizeof(struct in_pktinfo)) + 64];
            struct cmsghdr align;
        } control;
        struct msghdr mh = {
            .msg_name = &peer,
            .msg_namelen = sizeof(peer),
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = control.buf,
            .msg_controllen = sizeof(control.buf),
        };
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN, or an ICMP error queued by an earlier send: nothing to do */
        }
        if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t)n > DNS_SERVER_MAX_QUERY) {
            log_debug("dns: dropped an oversized datagram");
            continue;
        }
        const struct in_pktinfo *pi = NULL;
        struct in_pktinfo pinfo;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
                memcpy(&pinfo, CMSG_DATA(cm), sizeof(pinfo));
                pi = &pinfo;
            }
        dns_server_handle(s, NULL, &peer, mh.msg_namelen, pi, buf, (size_t)n);
    }
}

/* ---- TCP ---- */

/* The one teardown of a TCP connection: cancels its pending exchanges (no answers), frees the
 * bufferevent (closing the socket) and the connection. */
static void dns_tcp_close(struct dns_tcp_conn *c)
{
    struct dns_server *s = c->s;
    struct dns_exchange *x = s->pending;
    while (x) {
        struct dns_exchange *next = x->next;
        if (x->conn == c) {
            x->conn = NULL; /* nothing to answer to; release must not touch c */
            c->n_pending--;
            dns_exchange_release(x);
        }
        x = next;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
    bufferevent_free(c->bev);
    free(c);
}

static void dns_tcp_maybe_resume(struct dns_tcp_conn *c)
{
    if (!c->paused || c->eof)
        return;
    if (c->n_pending >= c->s->cfg.max_pending_conn ||
        evbuffer_get_length(bufferevent_get_output(c->bev)) >= DNS_SERVER_TCP_OUT_LIMIT)
        return;
    c->paused = false;
    bufferevent_enable(c->bev, EV_READ);
    /* Frames may already be buffered: run the read callback from the loop, not from here. */
    bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* After the client's EOF: closes the connection once every answer is written. Deferred to the
 * write callback when output is still queued. */
static void dns_tcp_check_done(struct dns_tcp_conn *c)
{
    if (c->eof && c->n_pending == 0 && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        dns_tcp_close(c);
}

/* Handles every complete frame in the input, within the connection's limits. Closes the
 * connection on a frame that can be no query or is larger than DNS_SERVER_MAX_QUERY. */
static void dns_tcp_read_cb(struct bufferevent *bev, void *arg)
{
    struct dns_tcp_conn *c = arg;
    struct dns_server *s = c->s;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (c->n_pending >= s->cfg.max_pending_conn ||
            evbuffer_get_length(bufferevent_get_output(bev)) >= DNS_SERVER_TCP_OUT_LIMIT) {
            c->paused = true;
            bufferevent_disable(bev, EV_READ);
            return;
        }
        size_t avail = evbuffer_get_length(in);
        size_t look = avail < 2 + DNS_SERVER_MAX_QUERY ? avail : 2 + DNS_SERVER_MAX_QUERY;
        const uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)look);
        const uint8_t *msg = NULL;
        size_t msg_len = 0, frame_len = 0;
        int rc = buf ? dns_tcp_frame(buf, look, &msg, &msg_len, &frame_len) : 0;
        if (rc == 0 && look >= 2 && (size_t)(buf[0] << 8 | buf[1]) > DNS_SERVER_MAX_QUERY)
            rc = -1; /* declared longer than any query: do not buffer it */
        if (rc == -1) {
            log_debug("dns: closing a TCP client that sent no valid frame");
            dns_tcp_close(c);
            return;
        }
        if (rc == 0)
            return;
        dns_server_handle(s, c, &c->peer, c->peer_len, NULL, msg, msg_len);
        evbuffer_drain(in, frame_len);
    }
}

static void dns_tcp_write_cb(struct bufferevent *bev, void *arg)
{
    struct dns_tcp_conn *c = arg;
    (void)bev;
    dns_tcp_maybe_resume(c);
    dns_tcp_check_done(c);
}

/* EOF: answer what was asked, then close (RFC 7766 §6.2.3 lets a client half-close). Errors and
 * the idle timeout close at once. */
static void dns_tcp_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct dns_tcp_conn *c = arg;
    if ((what & BEV_EVENT_EOF) && !(what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))) {
        c->eof = true;
        bufferevent_disable(bev, EV_READ);
        dns_tcp_check_done(c);
        return;
    }
    dns_tcp_close(c);
}

static void dns_tcp_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                              int socklen, void *arg)
{
    struct dns_server *s = arg;
    (void)l;
    if (s->n_conns >= s->cfg.max_tcp_conns || (size_t)socklen > sizeof(struct sockaddr_storage)) {
        log_debug("dns: TCP connection limit reached, closing a new client");
        close(fd);
        return;
    }
    struct bufferevent *bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        close(fd);
        return;
    }
    struct dns_tcp_conn *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->bev = bev;
    memcpy(&c->peer, sa, (size_t)socklen);
    c->peer_len = (socklen_t)socklen;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    struct timeval idle = {.tv_sec = s->cfg.tcp_idle_ms / 1000,
                           .tv_usec = (s->cfg.tcp_idle_ms % 1000) * 1000};
    bufferevent_set_timeouts(bev, &idle, &idle);
    bufferevent_setcb(bev, dns_tcp_read_cb, dns_tcp_write_cb, dns_tcp_event_cb, c);
    bufferevent_enable(bev, EV_READ);
}

/* ---- life cycle ---- */

/* Binds a UDP and a TCP socket on the same address and port (an ephemeral one when the address
 * says 0, retried until TCP can have the port UDP got). Returns 0 with both fds set, or -1 with
 * err written. */
static int dns_server_bind(struct dns_server *s, const char *listen_spec, int *udp_out,
                           int *tcp_out, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    int udp = -1, tcp = -1;
    if (listen_spec == NULL ||
        parse_listen_address(listen_spec, (struct sockaddr *)&ss, &sslen) == -1) {
        snprintf(err, err_len, "invalid DNS listen address '%s' (expected ADDR:PORT)",
                 listen_spec ? listen_spec : "(null)");
        return -1;
    }
    s->family = ss.ss_family;
    in_port_t *portp = ss.ss_family == AF_INET ? &((struct sockaddr_in *)&ss)->sin_port
                                               : &((struct sockaddr_in6 *)&ss)->sin6_port;
    bool ephemeral = *portp == 0;
    for (int attempt = 0; attempt < DNS_SERVER_BIND_TRIES; attempt++) {
        struct sockaddr_storage a = ss;
        in_port_t *ap = a.ss_family == AF_INET ? &((struct sockaddr_in *)&a)->sin_port
                                               : &((struct sockaddr_in6 *)&a)->sin6_port;
        udp = socket(a.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (udp == -1 || bind(udp, (struct sockaddr *)&a, (socklen_t)sslen) == -1) {
            snprintf(err, err_len, "cannot bind DNS (UDP) on %s: %s", listen_spec, strerror(errno));
            goto fail;
        }
        socklen_t alen = (socklen_t)sizeof(a);
        if (getsockname(udp, (struct sockaddr *)&a, &alen) == -1) {
            snprintf(err, err_len, "getsockname: %s", strerror(errno));
            goto fail;
        }
        tcp = socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (tcp == -1 || setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1) {
            snprintf(err, err_len, "cannot create DNS (TCP) socket: %s", strerror(errno));
            goto fail;
        }
        if (bind(tcp, (struct sockaddr *)&a, alen) == 0 && listen(tcp, 64) == 0) {
            if (a.ss_family == AF_INET)
                (void)setsockopt(udp, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
            s->port = ntohs(*ap);
            *udp_out = udp;
            *tcp_out = tcp;
            return 0;
        }
        int e = errno;
        if (!ephemeral || e != EADDRINUSE) {
            snprintf(err, err_len, "cannot bind DNS (TCP) on %s: %s", listen_spec, strerror(e));
            goto fail;
        }
        close(tcp);
        close(udp);
        tcp = udp = -1;
    }
    snprintf(err, err_len, "cannot find a port free for both UDP and TCP on %s", listen_spec);
fail:
    if (tcp != -1)
        close(tcp);
    if (udp != -1)
        close(udp);
    return -1;
}

struct dns_server *dns_server_new(struct event_base *base, const struct dns_server_config *cfg,
                                  char *err, size_t err_len)
{
    struct dns_server *s = xcalloc(1, sizeof(*s));
    int tcp = -1;
    s->base = base;
    s->cfg = *cfg;
    s->cfg.listen = NULL;
    s->udp_fd = -1;
    if (cfg->upstream == NULL || cfg->policy == NULL) {
        snprintf(err, err_len, "DNS server needs an upstream resolver and a policy callback");
        goto fail;
    }
    if (s->cfg.max_tcp_conns == 0)
        s->cfg.max_tcp_conns = 64;
    if (s->cfg.tcp_idle_ms == 0)
        s->cfg.tcp_idle_ms = 10000;
    if (s->cfg.max_pending == 0)
        s->cfg.max_pending = 256;
    if (s->cfg.max_pending_client == 0)
        s->cfg.max_pending_client = 32;
    if (s->cfg.max_pending_conn == 0)
        s->cfg.max_pending_conn = 16;
    if (dns_server_bind(s, cfg->listen, &s->udp_fd, &tcp, err, err_len) == -1)
        goto fail;
    s->udp_ev = event_new(base, s->udp_fd, EV_READ | EV_PERSIST, dns_udp_read_cb, s);
    if (s->udp_ev == NULL || event_add(s->udp_ev, NULL) == -1) {
        snprintf(err, err_len, "cannot watch the DNS UDP socket");
        goto fail;
    }
    s->listener = evconnlistener_new(base, dns_tcp_accept_cb, s,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, tcp);
    if (s->listener == NULL) {
        snprintf(err, err_len, "cannot watch the DNS TCP socket");
        goto fail;
    }
    return s;

fail:
    if (tcp != -1 && s->listener == NULL)
        close(tcp);
    dns_server_free(s);
    return NULL;
}

uint16_t dns_server_port(const struct dns_server *s)
{
    return s->port;
}

void dns_server_free(struct dns_server *s)
{
    if (s == NULL)
        return;
    while (s->conns)
        dns_tcp_close(s->conns); /* also releases their pending exchanges */
    while (s->pending)
        dns_exchange_release(s->pending);
    if (s->listener)
        evconnlistener_free(s->listener);
    if (s->udp_ev)
        event_free(s->udp_ev);
    if (s->udp_fd != -1)
        close(s->udp_fd);
    free(s);
}
