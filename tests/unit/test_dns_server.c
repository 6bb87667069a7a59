/* Unit tests for dns_server: the sandboxes' resolver, over real UDP and TCP sockets on
 * 127.0.0.1, with a real event loop and a fake upstream DNS server (in the same loop) that
 * records every name it is asked. The security properties are what is asserted: a refused name
 * never reaches the upstream, loopback answers never reach the client, answers respect the
 * client's UDP limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>

#include "audit.h"
#include "dns_msg.h"
#include "dns_server.h"
#include "policy.h"
#include "util.h"

#define POLICY_JSON                                                                                \
    "{\"access_control\": {\"allow_list\": [\"*.example.test\"],"                                  \
    " \"deny_list\": [\"evil.example.test\", \"*.evil.example.test\"]},"                           \
    " \"no_proxy\": [\"bypass.example.test\"]}"

/* ---- fixture: loop, fake upstream, evdns base, server ---- */

#define MAX_SEEN 256

struct fx {
    struct event_base *base;
    int up_fd; /* the fake upstream's UDP socket */
    struct event *up_ev;
    char *seen[MAX_SEEN]; /* names the upstream was asked, in order */
    size_t n_seen;
    struct evdns_base *dns;
    struct policy *policy;
    bool no_policy; /* the policy callback returns NULL */
    struct dns_server *srv;
    uint16_t port;
    char audit_path[64];
    struct audit_log *audit;
};

static bool seen(const struct fx *f, const char *name)
{
    for (size_t i = 0; i < f->n_seen; i++)
        if (strcmp(f->seen[i], name) == 0)
            return true;
    return false;
}

/* The long name whose upstream answer has 16 addresses (too many for 512 bytes). */
static const char *many_name(void)
{
    static char name[256];
    if (name[0] == '\0') {
        /* 3 labels of 63, one of 40, "many.example.test": 250 characters, so 16 answers
         * (16 x 16 bytes) and the question (256 bytes) exceed 512 */
        char l[64], m[41];
        memset(l, 'm', 63);
        l[63] = '\0';
        memset(m, 'n', 40);
        m[40] = '\0';
        snprintf(name, sizeof(name), "%s.%s.%s.%s.many.example.test", l, l, l, m);
    }
    return name;
}

/* The fake upstream: answers by name, records every name. */
static void upstream_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fx *f = arg;
    (void)what;
    uint8_t buf[2048], out[2048];
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
    if (n <= 0)
        return;
    struct dns_query q;
    if (dns_query_parse(buf, (size_t)n, &q) != DNS_PARSE_OK)
        return;
    if (f->n_seen < MAX_SEEN)
        f->seen[f->n_seen++] = xstrdup(q.name);
    struct dns_addr a[20];
    size_t na = 0;
    enum dns_rcode rc = DNS_RCODE_NOERROR;
    uint32_t v4[20];
    if (strcmp(q.name, "www.example.test") == 0) {
        v4[na++] = 0xcb007105; /* 203.0.113.5 */
    } else if (strcmp(q.name, "loop.example.test") == 0) {
        v4[na++] = 0x7f000001;
    } else if (strcmp(q.name, "mixed.example.test") == 0) {
        v4[na++] = 0xcb007107; /* 203.0.113.7 */
        v4[na++] = 0x7f000002; /* loopback */
        v4[na++] = 0xa9fe0101; /* link-local */
        v4[na++] = 0x0ac80002; /* 10.200.0.2: the test's "sandbox pool" */
        v4[na++] = 0x0a000001; /* 10.0.0.1: private but fine */
    } else if (strcmp(q.name, "nx.example.test") == 0) {
        rc = DNS_RCODE_NXDOMAIN;
    } else if (strcmp(q.name, "silent.example.test") == 0 || strncmp(q.name, "silent", 6) == 0) {
        return; /* never answers */
    } else if (strcmp(q.name, many_name()) == 0) {
        for (uint32_t i = 0; i < 16; i++)
            v4[na++] = 0xcb007100 + 10 + i;
    } else {
        v4[na++] = 0xcb007109; /* 203.0.113.9 */
    }
    for (size_t i = 0; i < na; i++) {
        a[i].family = 4;
        uint32_t be = htonl(v4[i]);
        memcpy(a[i].addr, &be, 4);
    }
    int len = dns_build_response(buf, &q, rc, a, rc == DNS_RCODE_NOERROR ? na : 0, 3600, 65535, out,
                                 sizeof(out));
    if (len > 0)
        (void)sendto(fd, out, (size_t)len, 0, (struct sockaddr *)&peer, plen);
}

static const struct policy *fx_policy(void *ctx, const struct sockaddr *client)
{
    struct fx *f = ctx;
    assert_non_null(client);
    return f->no_policy ? NULL : f->policy;
}

static void quiet_evdns_log(int severity, const char *msg)
{
    (void)severity;
    (void)msg; /* "nameserver failed" after the deliberate timeouts: expected */
}

static bool fx_remapped(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "remapped.example.test") == 0;
}

static bool fx_local(void *ctx, struct in_addr a)
{
    (void)ctx;
    return (ntohl(a.s_addr) & 0xffff0000u) == 0x0ac80000u; /* 10.200.0.0/16 */
}

static void fx_identify(void *ctx, const struct sockaddr *client, const char **sandbox,
                        const char **workspace)
{
    (void)ctx;
    (void)client;
    *sandbox = "box-1";
    *workspace = "ws-1";
}

/* Starts everything; cfg_tweak (may be NULL) adjusts the server config before it starts. */
static struct fx *fx_start(void (*cfg_tweak)(struct dns_server_config *))
{
    struct fx *f = xcalloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);

    f->up_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(f->up_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->up_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(f->up_fd, (struct sockaddr *)&sin, &sl), 0);
    f->up_ev = event_new(f->base, f->up_fd, EV_READ | EV_PERSIST, upstream_cb, f);
    event_add(f->up_ev, NULL);

    evdns_set_log_fn(quiet_evdns_log);
    f->dns = evdns_base_new(f->base, 0);
    assert_non_null(f->dns);
    char ns[32];
    snprintf(ns, sizeof(ns), "127.0.0.1:%u", ntohs(sin.sin_port));
    assert_int_equal(evdns_base_nameserver_ip_add(f->dns, ns), 0);
    evdns_base_set_option(f->dns, "timeout:", "0.3");
    evdns_base_set_option(f->dns, "attempts:", "1");

    json_error_t jerr;
    json_t *j = json_loads(POLICY_JSON, 0, &jerr);
    assert_non_null(j);
    struct errlist errs = {0};
    f->policy = policy_compile(j, NULL, "proxy_config", 42, &errs);
    json_decref(j);
    assert_int_equal(errs.n, 0);
    assert_non_null(f->policy);

    snprintf(f->audit_path, sizeof(f->audit_path), "/tmp/test_dns_server_audit_%d", getpid());
    unlink(f->audit_path);
    f->audit = audit_open(f->audit_path);
    assert_non_null(f->audit);

    struct dns_server_config cfg = {
        .listen = "127.0.0.1:0",
        .upstream = f->dns,
        .policy = fx_policy,
        .policy_ctx = f,
        .is_remapped = fx_remapped,
        .audit = f->audit,
        .is_local_addr = fx_local,
        .identify = fx_identify,
    };
    if (cfg_tweak)
        cfg_tweak(&cfg);
    char err[256] = "";
    f->srv = dns_server_new(f->base, &cfg, err, sizeof(err));
    if (f->srv == NULL)
        fail_msg("dns_server_new: %s", err);
    f->port = dns_server_port(f->srv);
    assert_true(f->port != 0);
    return f;
}

/* Runs the loop for a while without a goal (lets deferred callbacks run). */
static void fx_spin(struct fx *f, int ms)
{
    uint64_t end = monotonic_us() + (uint64_t)ms * 1000;
    while (monotonic_us() < end) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
}

static void fx_stop(struct fx *f)
{
    dns_server_free(f->srv);
    fx_spin(f, 20); /* cancelled lookups' callbacks run and free their tokens */
    evdns_base_free(f->dns, 1);
    event_free(f->up_ev);
    close(f->up_fd);
    audit_close(f->audit);
    unlink(f->audit_path);
    policy_unref(f->policy);
    event_base_free(f->base);
    for (size_t i = 0; i < f->n_seen; i++)
        free(f->seen[i]);
    free(f);
}

/* ---- wire helpers ---- */

/* A query for a dotted name (labels taken literally between dots). */
static size_t build_query(uint8_t *out, uint16_t id, const char *name, uint16_t qtype,
                          uint16_t qclass, uint16_t edns_size)
{
    size_t o = 0;
    out[o++] = (uint8_t)(id >> 8);
    out[o++] = (uint8_t)id;
    out[o++] = 0x01; /* RD */
    out[o++] = 0;
    const uint8_t hdr[] = {0, 1, 0, 0, 0, 0, 0, (uint8_t)(edns_size ? 1 : 0)};
    memcpy(out + o, hdr, sizeof(hdr));
    o += sizeof(hdr);
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        out[o++] = (uint8_t)l;
        memcpy(out + o, p, l);
        o += l;
        p += l;
        if (*p == '.')
            p++;
    }
    out[o++] = 0;
    out[o++] = (uint8_t)(qtype >> 8);
    out[o++] = (uint8_t)qtype;
    out[o++] = (uint8_t)(qclass >> 8);
    out[o++] = (uint8_t)qclass;
    if (edns_size) {
        const uint8_t opt[] = {0, 0, 41, (uint8_t)(edns_size >> 8), (uint8_t)edns_size, 0, 0, 0,
                               0, 0, 0};
        memcpy(out + o, opt, sizeof(opt));
        o += sizeof(opt);
    }
    return o;
}

struct tresp {
    uint16_t id;
    int rcode;
    bool tc;
    int qd, an;
    uint32_t addrs[32]; /* host byte order */
    uint32_t ttls[32];
    size_t len;
};

/* Parses a response as this server writes it (question copied verbatim, answers pointing to
 * it). Fails the test on anything else. */
static void parse_resp(const uint8_t *m, size_t len, struct tresp *r)
{
    memset(r, 0, sizeof(*r));
    assert_true(len >= 12);
    r->len = len;
    r->id = (uint16_t)(m[0] << 8 | m[1]);
    assert_true(m[2] & 0x80); /* QR */
    r->tc = (m[2] & 0x02) != 0;
    r->rcode = m[3] & 0x0f;
    r->qd = m[4] << 8 | m[5];
    r->an = m[6] << 8 | m[7];
    size_t o = 12;
    if (r->qd == 1) {
        while (m[o] != 0)
            o += 1 + m[o];
        o += 5;
    }
    for (int i = 0; i < r->an; i++) {
        assert_true(o + 16 <= len);
        assert_int_equal(m[o], 0xc0);
        assert_int_equal(m[o + 2] << 8 | m[o + 3], DNS_TYPE_A);
        r->ttls[i] = (uint32_t)m[o + 6] << 24 | (uint32_t)m[o + 7] << 16 | (uint32_t)m[o + 8] << 8 |
                     m[o + 9];
        assert_int_equal(m[o + 10] << 8 | m[o + 11], 4);
        r->addrs[i] = (uint32_t)m[o + 12] << 24 | (uint32_t)m[o + 13] << 16 |
                      (uint32_t)m[o + 14] << 8 | m[o + 15];
        o += 16;
    }
}

static int client_socket(struct fx *f, int type)
{
    int fd = socket(AF_INET, type, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                              .sin_port = htons(f->port)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

/* Sends a datagram and runs the loop until an answer arrives or timeout_ms passes. Returns the
 * answer's length, or -1 if none came. */
static ssize_t udp_raw(struct fx *f, const uint8_t *q, size_t qlen, uint8_t *resp, size_t cap,
                       int timeout_ms)
{
    int fd = client_socket(f, SOCK_DGRAM);
    assert_int_equal(send(fd, q, qlen, 0), (ssize_t)qlen);
    ssize_t n = -1;
    uint64_t end = monotonic_us() + (uint64_t)timeout_ms * 1000;
    while (monotonic_us() < end) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        n = recv(fd, resp, cap, MSG_DONTWAIT);
        if (n >= 0)
            break;
        usleep(500);
    }
    close(fd);
    return n;
}

/* One UDP query, parsed answer. Fails the test when no answer comes. */
static void udp_query(struct fx *f, const char *name, uint16_t qtype, uint16_t edns,
                      struct tresp *r)
{
    uint8_t q[600], resp[4096];
    size_t qlen = build_query(q, 0x1234, name, qtype, DNS_CLASS_IN, edns);
    ssize_t n = udp_raw(f, q, qlen, resp, sizeof(resp), 2000);
    if (n < 0)
        fail_msg("no answer for %s", name);
    parse_resp(resp, (size_t)n, r);
    assert_int_equal(r->id, 0x1234);
}

/* Reads n framed responses from a TCP socket while running the loop. Returns how many came
 * (fewer on timeout); *closed says whether the server closed the connection. */
static int tcp_read(struct fx *f, int fd, struct tresp *r, int n, int timeout_ms, bool *closed)
{
    uint8_t buf[70000];
    size_t have = 0;
    int got = 0;
    *closed = false;
    uint64_t end = monotonic_us() + (uint64_t)timeout_ms * 1000;
    while (got < n && monotonic_us() < end) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        ssize_t k = recv(fd, buf + have, sizeof(buf) - have, MSG_DONTWAIT);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            *closed = true;
            break;
        }
        if (k > 0)
            have += (size_t)k;
        while (got < n && have >= 2) {
            size_t l = (size_t)(buf[0] << 8 | buf[1]);
            if (have < 2 + l)
                break;
            parse_resp(buf + 2, l, &r[got++]);
            memmove(buf, buf + 2 + l, have - 2 - l);
            have -= 2 + l;
        }
        if (k < 0)
            usleep(500);
    }
    return got;
}

/* Waits until the server closes fd (recv returns 0 or an error); true if it did in time. */
static bool tcp_wait_closed(struct fx *f, int fd, int timeout_ms)
{
    struct tresp r;
    bool closed = false;
    (void)tcp_read(f, fd, &r, 1, timeout_ms, &closed);
    return closed;
}

static void tcp_send_query(int fd, uint16_t id, const char *name, uint16_t qtype)
{
    uint8_t q[600];
    size_t qlen = build_query(q + 2, id, name, qtype, DNS_CLASS_IN, 0);
    q[0] = (uint8_t)(qlen >> 8);
    q[1] = (uint8_t)qlen;
    assert_int_equal(send(fd, q, qlen + 2, 0), (ssize_t)(qlen + 2));
}

/* ---- tests ---- */

/* An allowed name is resolved upstream and answered with the upstream's address, TTL capped. */
static void test_allowed_name_resolved(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    udp_query(f, "www.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    assert_int_equal(r.an, 1);
    assert_int_equal(r.addrs[0], 0xcb007105);
    assert_true(r.ttls[0] <= DNS_SERVER_TTL_CAP);
    assert_true(seen(f, "www.example.test"));

    /* A no_proxy (BYPASS) name inside the allow list resolves too; case is folded. */
    udp_query(f, "ByPass.Example.TEST", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    assert_int_equal(r.an, 1);
    assert_int_equal(r.addrs[0], 0xcb007109);
    assert_true(seen(f, "bypass.example.test"));
    fx_stop(f);
}

/* Loopback, link-local and sandbox-pool answers become the name's placeholder in 198.18/15. */
static void test_local_answers_replaced(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    udp_query(f, "loop.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    assert_int_equal(r.an, 1);
    struct in_addr ph = dns_server_placeholder("loop.example.test");
    assert_int_equal(r.addrs[0], ntohl(ph.s_addr));
    assert_int_equal(r.addrs[0] & 0xfffe0000u, 0xc6120000u);
    assert_true(dns_server_is_placeholder(ph));

    udp_query(f, "mixed.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    /* 203.0.113.7, one placeholder (three bad addresses, deduplicated), 10.0.0.1 */
    assert_int_equal(r.an, 3);
    ph = dns_server_placeholder("mixed.example.test");
    assert_int_equal(r.addrs[0], 0xcb007107);
    assert_int_equal(r.addrs[1], ntohl(ph.s_addr));
    assert_int_equal(r.addrs[2], 0x0a000001);
    for (int i = 0; i < r.an; i++) {
        assert_true((r.addrs[i] >> 24) != 127);
        assert_true((r.addrs[i] >> 16) != 0xa9fe);
        assert_true((r.addrs[i] >> 16) != 0x0ac8);
    }
    fx_stop(f);
}

/* Denied names get REFUSED and are never sent upstream, whatever their type or shape. */
static void test_denied_never_forwarded(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    const char *denied[] = {"evil.example.test",     "EVIL.example.test",
                            "a.b.evil.example.test", "outside.test",
                            "example.test",          "x.example.test.attacker.net"};
    for (size_t i = 0; i < ARRAY_LEN(denied); i++) {
        udp_query(f, denied[i], DNS_TYPE_A, 0, &r);
        assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
        assert_int_equal(r.an, 0);
        udp_query(f, denied[i], DNS_TYPE_AAAA, 0, &r);
        assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    }

    /* Exfiltration attempt: long random labels under a denied suffix and outside the allow
     * list, over UDP and TCP. */
    srand(7);
    int fd = client_socket(f, SOCK_STREAM);
    for (int i = 0; i < 20; i++) {
        char name[300], label[64];
        for (int k = 0; k < 63; k++)
            label[k] = "abcdefghijklmnopqrstuvwxyz0123456789"[rand() % 36];
        label[63] = '\0';
        snprintf(name, sizeof(name), "%s.%s.%s", label, label,
                 i % 2 ? "evil.example.test" : "attacker.test");
        udp_query(f, name, DNS_TYPE_A, 0, &r);
        assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
        tcp_send_query(fd, (uint16_t)i, name, DNS_TYPE_TXT);
        bool closed;
        assert_int_equal(tcp_read(f, fd, &r, 1, 2000, &closed), 1);
        assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    }
    close(fd);
    fx_spin(f, 50);
    assert_int_equal(f->n_seen, 0);
    fx_stop(f);
}

/* A dns_remap'd name is answered with a placeholder and never asked upstream. */
static void test_remapped_not_asked(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    udp_query(f, "remapped.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    assert_int_equal(r.an, 1);
    assert_int_equal(r.addrs[0], ntohl(dns_server_placeholder("remapped.example.test").s_addr));
    assert_true(r.ttls[0] <= DNS_SERVER_TTL_CAP);
    fx_spin(f, 20);
    assert_int_equal(f->n_seen, 0);
    fx_stop(f);
}

/* AAAA, HTTPS, SVCB and other types are empty NOERROR without asking upstream; ANY is refused. */
static void test_other_types(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    const uint16_t types[] = {DNS_TYPE_AAAA, DNS_TYPE_HTTPS, DNS_TYPE_SVCB,
                              DNS_TYPE_TXT,  DNS_TYPE_MX,    99};
    for (size_t i = 0; i < ARRAY_LEN(types); i++) {
        udp_query(f, "www.example.test", types[i], 0, &r);
        assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
        assert_int_equal(r.an, 0);
        assert_int_equal(r.qd, 1);
    }
    udp_query(f, "www.example.test", DNS_TYPE_ANY, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    fx_spin(f, 20);
    assert_int_equal(f->n_seen, 0);
    fx_stop(f);
}

/* Malformed messages: no crash, FORMERR or silence, never an answer larger than the query's
 * UDP limit, and nothing forwarded; the server keeps working afterwards. */
static void test_malformed(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    uint8_t q[600], resp[4096];
    ssize_t n;

    /* Shorter than a header: dropped. */
    n = udp_raw(f, (const uint8_t *)"\x12\x34\x01", 3, resp, sizeof(resp), 100);
    assert_int_equal(n, -1);
    /* A response (QR set): dropped, so two resolvers cannot loop. */
    size_t qlen = build_query(q, 1, "www.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    q[2] |= 0x80;
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 100);
    assert_int_equal(n, -1);
    /* Two questions: FORMERR, header only. */
    qlen = build_query(q, 2, "www.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    q[5] = 2;
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    assert_int_equal(n, 12);
    assert_int_equal(resp[3] & 0xf, DNS_RCODE_FORMERR);
    /* Trailing garbage after the question: FORMERR. */
    qlen = build_query(q, 3, "www.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    memcpy(q + qlen, "exfil", 5);
    n = udp_raw(f, q, qlen + 5, resp, sizeof(resp), 1000);
    assert_int_equal(n, 12);
    assert_int_equal(resp[3] & 0xf, DNS_RCODE_FORMERR);
    /* Opcode 2 (STATUS): NOTIMP. */
    qlen = build_query(q, 4, "www.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    q[2] |= 2 << 3;
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    assert_int_equal(n, 12);
    assert_int_equal(resp[3] & 0xf, DNS_RCODE_NOTIMP);

    /* Well-formed but not a host name: a byte outside [a-z0-9_-] in a label, the root, an IP
     * literal, class CH. REFUSED and never forwarded. */
    struct tresp r;
    qlen = build_query(q, 5, "a.b.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    q[13] = '.'; /* the label "a" becomes "." : "\046.b.example.test" */
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    parse_resp(resp, (size_t)n, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    qlen = build_query(q, 6, "a.b.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    q[13] = 0; /* NUL in a label */
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    parse_resp(resp, (size_t)n, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    udp_query(f, "", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    udp_query(f, "203.0.113.5", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    qlen = build_query(q, 7, "version.bind", DNS_TYPE_TXT, 3 /* CH */, 0);
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    parse_resp(resp, (size_t)n, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    qlen = build_query(q, 8, "www.example.test", DNS_TYPE_A, 3 /* CH */, 0);
    n = udp_raw(f, q, qlen, resp, sizeof(resp), 1000);
    parse_resp(resp, (size_t)n, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);

    /* Random mutations of a valid query: whatever comes back is no larger than 512 bytes and
     * no name is invented upstream beyond the allowed ones. */
    srand(11);
    for (int i = 0; i < 300; i++) {
        qlen = build_query(q, (uint16_t)i, "www.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
        int flips = 1 + rand() % 4;
        for (int k = 0; k < flips; k++)
            q[(size_t)rand() % qlen] = (uint8_t)rand();
        size_t l = (size_t)rand() % (qlen + 8);
        n = udp_raw(f, q, l, resp, sizeof(resp), 5);
        assert_true(n <= 512);
    }
    fx_spin(f, 400); /* let lookups started by mutated-but-valid allowed names finish */
    for (size_t i = 0; i < f->n_seen; i++) {
        size_t sl = strlen(f->seen[i]);
        const char *suffix = ".example.test";
        assert_true(sl > strlen(suffix) && strcmp(f->seen[i] + sl - strlen(suffix), suffix) == 0);
        assert_true(strstr(f->seen[i], "evil") == NULL);
    }

    udp_query(f, "www.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NOERROR);
    assert_int_equal(r.an, 1);
    fx_stop(f);
}

/* NXDOMAIN passes through; an upstream that never answers gives SERVFAIL. */
static void test_nxdomain_and_servfail(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    udp_query(f, "nx.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_NXDOMAIN);
    assert_int_equal(r.an, 0);
    udp_query(f, "silent.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_SERVFAIL);
    assert_true(seen(f, "silent.example.test"));
    fx_stop(f);
}

/* Over TCP: several queries in one connection; an answer too big for UDP's 512 bytes is
 * truncated (TC, no answers) over UDP and complete over TCP. */
static void test_tcp_and_truncation(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    int fd = client_socket(f, SOCK_STREAM);
    tcp_send_query(fd, 101, "www.example.test", DNS_TYPE_A);
    tcp_send_query(fd, 102, "www.example.test", DNS_TYPE_AAAA);
    tcp_send_query(fd, 103, "evil.example.test", DNS_TYPE_A);
    struct tresp r[3];
    bool closed;
    assert_int_equal(tcp_read(f, fd, r, 3, 2000, &closed), 3);
    int found = 0;
    for (int i = 0; i < 3; i++) {
        if (r[i].id == 101) {
            assert_int_equal(r[i].rcode, DNS_RCODE_NOERROR);
            assert_int_equal(r[i].an, 1);
            assert_int_equal(r[i].addrs[0], 0xcb007105);
            found |= 1;
        } else if (r[i].id == 102) {
            assert_int_equal(r[i].rcode, DNS_RCODE_NOERROR);
            assert_int_equal(r[i].an, 0);
            found |= 2;
        } else if (r[i].id == 103) {
            assert_int_equal(r[i].rcode, DNS_RCODE_REFUSED);
            found |= 4;
        }
    }
    assert_int_equal(found, 7);

    struct tresp u;
    udp_query(f, many_name(), DNS_TYPE_A, 0, &u);
    assert_true(u.len <= 512);
    assert_true(u.tc);
    assert_int_equal(u.an, 0);
    /* With an EDNS size of 4096 the answer fits in our 1232. */
    udp_query(f, many_name(), DNS_TYPE_A, 4096, &u);
    assert_true(u.len <= 1232);
    assert_false(u.tc);
    assert_int_equal(u.an, 16);

    tcp_send_query(fd, 104, many_name(), DNS_TYPE_A);
    assert_int_equal(tcp_read(f, fd, r, 1, 2000, &closed), 1);
    assert_int_equal(r[0].id, 104);
    assert_false(r[0].tc);
    assert_int_equal(r[0].an, 16);
    assert_true(r[0].len > 512);
    close(fd);
    fx_stop(f);
}

static void tweak_limits(struct dns_server_config *cfg)
{
    cfg->max_tcp_conns = 2;
    cfg->tcp_idle_ms = 300;
    cfg->max_pending_client = 2;
}

/* Bounded TCP: the connection over the limit is closed, a frame longer than any query closes
 * the connection, idle connections close; pending lookups per client are bounded. */
static void test_limits(void **state)
{
    (void)state;
    struct fx *f = fx_start(tweak_limits);
    int a = client_socket(f, SOCK_STREAM), b = client_socket(f, SOCK_STREAM);
    fx_spin(f, 20); /* both accepted */
    int c = client_socket(f, SOCK_STREAM);
    assert_true(tcp_wait_closed(f, c, 1000));
    close(c);

    /* A declared frame length of 65535: closed without waiting for the bytes. */
    assert_int_equal(send(a, "\xff\xff\0\0", 4, 0), 4);
    assert_true(tcp_wait_closed(f, a, 1000));
    close(a);

    /* b is still usable, then idles out after 300 ms. */
    tcp_send_query(b, 7, "www.example.test", DNS_TYPE_A);
    struct tresp r[3];
    bool closed;
    assert_int_equal(tcp_read(f, b, r, 1, 2000, &closed), 1);
    assert_int_equal(r[0].rcode, DNS_RCODE_NOERROR);
    uint64_t t0 = monotonic_us();
    assert_true(tcp_wait_closed(f, b, 2000));
    assert_true(monotonic_us() - t0 >= 200 * 1000);
    close(b);

    /* Per-client pending bound: the third lookup in flight gets SERVFAIL at once. */
    int d = client_socket(f, SOCK_STREAM);
    tcp_send_query(d, 1, "silent1.example.test", DNS_TYPE_A);
    tcp_send_query(d, 2, "silent2.example.test", DNS_TYPE_A);
    tcp_send_query(d, 3, "silent3.example.test", DNS_TYPE_A);
    assert_int_equal(tcp_read(f, d, r, 1, 200, &closed), 1);
    assert_int_equal(r[0].id, 3);
    assert_int_equal(r[0].rcode, DNS_RCODE_SERVFAIL);
    assert_false(seen(f, "silent3.example.test"));
    close(d);
    fx_stop(f);
}

/* No policy for the client: everything refused, nothing forwarded. */
static void test_no_policy(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    f->no_policy = true;
    struct tresp r;
    udp_query(f, "www.example.test", DNS_TYPE_A, 0, &r);
    assert_int_equal(r.rcode, DNS_RCODE_REFUSED);
    fx_spin(f, 20);
    assert_int_equal(f->n_seen, 0);
    fx_stop(f);
}

/* Freeing the server with lookups in flight (UDP and TCP) cancels them safely (ASan checks the
 * late evdns callbacks touch nothing freed). */
static void test_free_with_pending(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    uint8_t q[600];
    size_t qlen = build_query(q, 9, "silent.example.test", DNS_TYPE_A, DNS_CLASS_IN, 0);
    int u = client_socket(f, SOCK_DGRAM);
    assert_int_equal(send(u, q, qlen, 0), (ssize_t)qlen);
    int t = client_socket(f, SOCK_STREAM);
    tcp_send_query(t, 10, "silent.example.test", DNS_TYPE_A);
    for (int i = 0; i < 200 && f->n_seen < 2; i++)
        fx_spin(f, 2);
    assert_int_equal(f->n_seen, 2);
    fx_stop(f);
    close(u);
    close(t);
}

/* A TCP client that half-closes after its query still gets the answer. */
static void test_tcp_half_close(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    int fd = client_socket(f, SOCK_STREAM);
    tcp_send_query(fd, 55, "www.example.test", DNS_TYPE_A);
    shutdown(fd, SHUT_WR);
    struct tresp r;
    bool closed;
    assert_int_equal(tcp_read(f, fd, &r, 1, 2000, &closed), 1);
    assert_int_equal(r.id, 55);
    assert_int_equal(r.an, 1);
    assert_true(tcp_wait_closed(f, fd, 1000));
    close(fd);
    fx_stop(f);
}

/* One audit line per query: method DNS, the name, the type, the decision and who decided. */
static void test_audit(void **state)
{
    (void)state;
    struct fx *f = fx_start(NULL);
    struct tresp r;
    udp_query(f, "www.example.test", DNS_TYPE_A, 0, &r);
    udp_query(f, "evil.example.test", DNS_TYPE_A, 0, &r);
    udp_query(f, "nx.example.test", DNS_TYPE_HTTPS, 0, &r);
    char *text = read_file(f->audit_path, 1 << 20, NULL);
    assert_non_null(text);
    int lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        assert_non_null(j);
        lines++;
        assert_string_equal(json_string_value(json_object_get(j, "method")), "DNS");
        assert_string_equal(json_string_value(json_object_get(j, "sandbox")), "box-1");
        const char *host = json_string_value(json_object_get(j, "host"));
        const char *decision = json_string_value(json_object_get(j, "decision"));
        const char *path = json_string_value(json_object_get(j, "path"));
        const char *by = json_string_value(json_object_get(j, "decided_by"));
        assert_non_null(host);
        if (strcmp(host, "evil.example.test") == 0) {
            assert_string_equal(decision, "denied");
            assert_string_equal(by, "deny_list");
            assert_string_equal(path, "A");
        } else if (strcmp(host, "www.example.test") == 0) {
            assert_string_equal(decision, "allowed");
            assert_string_equal(by, "policy");
        } else {
            assert_string_equal(host, "nx.example.test");
            assert_string_equal(path, "HTTPS");
        }
        json_decref(j);
    }
    assert_int_equal(lines, 3);
    free(text);
    fx_stop(f);
}

/* Placeholders: stable, in 198.18.0.0/15, never .0 or .255, different names spread out. */
static void test_placeholder(void **state)
{
    (void)state;
    struct in_addr a = dns_server_placeholder("api.openai.com");
    struct in_addr b = dns_server_placeholder("api.openai.com");
    struct in_addr c = dns_server_placeholder("github.com");
    assert_int_equal(a.s_addr, b.s_addr);
    assert_int_not_equal(a.s_addr, c.s_addr);
    char name[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof(name), "h%d.example", i);
        uint32_t h = ntohl(dns_server_placeholder(name).s_addr);
        assert_int_equal(h & 0xfffe0000u, 0xc6120000u);
        assert_true((h & 0xff) != 0 && (h & 0xff) != 255);
    }
    struct in_addr out = {.s_addr = htonl(0xc6140001)}; /* 198.20.0.1 */
    assert_false(dns_server_is_placeholder(out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed_name_resolved),
        cmocka_unit_test(test_local_answers_replaced),
        cmocka_unit_test(test_denied_never_forwarded),
        cmocka_unit_test(test_remapped_not_asked),
        cmocka_unit_test(test_other_types),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_nxdomain_and_servfail),
        cmocka_unit_test(test_tcp_and_truncation),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_no_policy),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_tcp_half_close),
        cmocka_unit_test(test_audit),
        cmocka_unit_test(test_placeholder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
