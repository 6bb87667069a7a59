// fuzz-sources: src/dns_server.c src/dns_msg.c src/policy.c src/glob.c src/audit.c src/jsonw.c src/util.c
// fuzz-sources: src/log.c src/http1.c src/scrub.c src/gcp.c src/jws.c
/* libFuzzer harness for dns_server: the whole resolver, over real loopback sockets, with a fake
 * upstream in the same event loop. The first input byte picks the transport (even: one UDP
 * datagram, odd: a TCP byte stream); the rest is sent as is. Besides memory safety it checks the
 * security properties, aborting when one fails:
 *
 * - the upstream is only ever asked names the policy allows (under "example.test", never under
 *   the denied "evil.example.test"), as plain lower-case host names;
 * - a UDP answer is never larger than the query's UDP limit (and never larger than 12 bytes for
 *   a message dns_query_parse refuses);
 * - no answer hands out a loopback, unspecified or link-local address (the fake upstream answers
 *   every name with 127.0.0.1, 0.0.0.0, 169.254.1.1 and 203.0.113.5).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>

#include "fuzz.h"
#include "dns_msg.h"
#include "dns_server.h"
#include "policy.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static struct evdns_base *dns;
static struct policy *policy;
static struct dns_server *srv;
static int up_fd;
static struct sockaddr_in srv_addr;

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The fake upstream: checks the name it is asked, answers with good and bad addresses. */
static void upstream_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    uint8_t buf[2048], out[2048];
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
    if (n <= 0)
        return;
    struct dns_query q;
    CHECK(dns_query_parse(buf, (size_t)n, &q) == DNS_PARSE_OK);
    CHECK(!q.name_unusual);
    CHECK(q.qtype == DNS_TYPE_A);
    CHECK(ends_with(q.name, ".example.test"));
    CHECK(strcmp(q.name, "evil.example.test") != 0 && !ends_with(q.name, ".evil.example.test"));
    const uint32_t v4[] = {0x7f000001, 0, 0xa9fe0101, 0xcb007105};
    struct dns_addr a[4];
    for (size_t i = 0; i < 4; i++) {
        a[i].family = 4;
        uint32_t be = htonl(v4[i]);
        memcpy(a[i].addr, &be, 4);
    }
    int len = dns_build_response(buf, &q, DNS_RCODE_NOERROR, a, 4, 30, 65535, out, sizeof(out));
    if (len > 0)
        (void)sendto(fd, out, (size_t)len, 0, (struct sockaddr *)&peer, plen);
}

static const struct policy *fuzz_policy(void *ctx, const struct sockaddr *client)
{
    (void)ctx;
    (void)client;
    return policy;
}

static bool fuzz_remapped(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "remapped.example.test") == 0;
}

static void quiet_log(int severity, const char *msg)
{
    (void)severity;
    (void)msg;
}

static void fuzz_init(void)
{
    base = event_base_new();
    CHECK(base != NULL);
    up_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(up_fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    socklen_t sl = sizeof(sin);
    CHECK(getsockname(up_fd, (struct sockaddr *)&sin, &sl) == 0);
    struct event *ev = event_new(base, up_fd, EV_READ | EV_PERSIST, upstream_cb, NULL);
    event_add(ev, NULL);
    evdns_set_log_fn(quiet_log);
    dns = evdns_base_new(base, 0);
    char ns[32];
    snprintf(ns, sizeof(ns), "127.0.0.1:%u", ntohs(sin.sin_port));
    CHECK(evdns_base_nameserver_ip_add(dns, ns) == 0);
    evdns_base_set_option(dns, "timeout:", "0.2");
    evdns_base_set_option(dns, "attempts:", "1");
    json_error_t jerr;
    json_t *j = json_loads("{\"access_control\": {\"allow_list\": [\"*.example.test\"],"
                           " \"deny_list\": [\"evil.example.test\", \"*.evil.example.test\"]}}",
                           0, &jerr);
    struct errlist errs = {0};
    policy = policy_compile(j, NULL, NULL, 1, &errs);
    json_decref(j);
    CHECK(policy != NULL);
    struct dns_server_config cfg = {
        .listen = "127.0.0.1:0",
        .upstream = dns,
        .policy = fuzz_policy,
        .is_remapped = fuzz_remapped,
        .tcp_idle_ms = 200,
    };
    char err[256];
    srv = dns_server_new(base, &cfg, err, sizeof(err));
    CHECK(srv != NULL);
    srv_addr.sin_family = AF_INET;
    srv_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv_addr.sin_port = htons(dns_server_port(srv));
}

/* No A answer may carry a forbidden address. */
static void check_answer(const uint8_t *m, size_t len)
{
    CHECK(len >= DNS_HEADER_LEN);
    size_t qd = (size_t)(m[4] << 8 | m[5]), an = (size_t)(m[6] << 8 | m[7]);
    size_t o = DNS_HEADER_LEN;
    if (qd == 0)
        return;
    while (o < len && m[o] != 0)
        o += 1 + m[o];
    o += 5;
    for (size_t i = 0; i < an; i++) {
        CHECK(o + 16 <= len);
        uint32_t a = (uint32_t)m[o + 12] << 24 | (uint32_t)m[o + 13] << 16 |
                     (uint32_t)m[o + 14] << 8 | m[o + 15];
        CHECK((a >> 24) != 127 && (a >> 24) != 0 && (a >> 16) != 0xa9fe);
        o += 16;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (base == NULL)
        fuzz_init();
    if (size < 1 || size > 8192)
        return 0;
    bool tcp = data[0] & 1;
    data++;
    size--;
    int fd = socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM), 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (struct sockaddr *)&srv_addr, sizeof(srv_addr)) == 0);
    if (size > 0)
        (void)send(fd, data, size, MSG_NOSIGNAL);
    uint8_t buf[70000];
    size_t have = 0;
    /* Enough loop turns for accept, read, the upstream round trip and evdns' deferred callback. */
    for (int i = 0; i < 40; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ssize_t k = recv(fd, buf + have, sizeof(buf) - have, MSG_DONTWAIT);
        if (k <= 0)
            continue;
        if (!tcp) {
            struct dns_query q;
            int rc = dns_query_parse(data, size, &q);
            size_t limit = rc == DNS_PARSE_OK ? dns_query_udp_limit(&q) : DNS_HEADER_LEN;
            CHECK((size_t)k <= limit);
            check_answer(buf, (size_t)k);
            break;
        }
        have += (size_t)k;
        while (have >= 2 && have >= 2 + (size_t)(buf[0] << 8 | buf[1])) {
            size_t l = (size_t)(buf[0] << 8 | buf[1]);
            check_answer(buf + 2, l);
            memmove(buf, buf + 2 + l, have - 2 - l);
            have -= 2 + l;
        }
    }
    close(fd);
    event_base_loop(base, EVLOOP_NONBLOCK); /* the server sees the close */
    return 0;
}
