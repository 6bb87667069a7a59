/* Tests for netns: real namespaces, veth pairs and nftables on the running kernel.
 *
 * These need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and a kernel with network namespaces and
 * nftables NAT; without them every kernel test is skipped with a message. They use their own
 * name prefixes ("aptest", "at") and pool (10.213.0.0/16), so they never touch a running
 * authproxy's sandboxes, and nothing they send leaves the machine: every address the sandbox
 * dials is DNATed to the host end, or dropped, before routing. Two runs of this binary at the
 * same time would interfere (each reconciles the "aptest" objects); `make test` runs the release
 * and asan flavours one after the other. */
#include "netns.h"

#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif

static const struct netns_pool_config test_cfg = {
    .pool_cidr = "10.213.0.0/16",
    .name_prefix = "aptest",
    .link_prefix = "at",
};

/* ---- environment ------------------------------------------------------------------- */

static bool kernel_ok(void)
{
    static int cached = -1;
    if (cached != -1)
        return cached == 1;
    cached = 0;
    if (geteuid() != 0)
        return false;
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
    int st;
    if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        cached = 1;
    return cached == 1;
}

#define REQUIRE_KERNEL()                                                                           \
    do {                                                                                           \
        if (!kernel_ok()) {                                                                        \
            print_message("SKIP: needs root and network namespaces (CAP_NET_ADMIN, "               \
                          "CAP_SYS_ADMIN); run as root to test sandbox networking\n");             \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* Counts of this test's objects on the host: namespaces, links, nft tables. */
struct counts {
    int ns, links, tables;
};

static struct counts count_objects(void)
{
    struct counts c = {0, 0, 0};
    DIR *d = opendir(NETNS_RUN_DIR);
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        if (strncmp(e->d_name, "aptest-", 7) == 0)
            c.ns++;
    if (d != NULL)
        closedir(d);
    struct if_nameindex *ifs = if_nameindex();
    for (struct if_nameindex *i = ifs; i != NULL && i->if_index != 0; i++)
        if (strncmp(i->if_name, "at-", 3) == 0)
            c.links++;
    if (ifs != NULL)
        if_freenameindex(ifs);
    FILE *p = popen("nft list tables", "r");
    char line[256];
    while (p != NULL && fgets(line, sizeof(line), p) != NULL)
        if (strstr(line, " aptest_") != NULL)
            c.tables++;
    if (p != NULL)
        pclose(p);
    return c;
}

/* count_objects() once the links of destroyed sandboxes are gone (at most links_want left):
 * netns_destroy sets a veth down and leaves it to go with its namespace, in the background. */
static struct counts count_settled(int links_want)
{
    struct counts c = count_objects();
    for (int i = 0; i < 500 && c.links > links_want; i++) {
        struct timespec ms10 = {0, 10 * 1000 * 1000};
        nanosleep(&ms10, NULL);
        c = count_objects();
    }
    return c;
}

static int sh(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- sockets ----------------------------------------------------------------------- */

/* A socket bound to 0.0.0.0:port (0: any); its port in *port_out. */
static int bound_socket(int type, uint16_t port, uint16_t *port_out)
{
    int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == -1) {
        close(fd);
        return -1;
    }
    if (type == SOCK_STREAM)
        assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port_out = ntohs(a.sin_port);
    return fd;
}

/* DNS listeners: UDP and TCP on one port number, as authproxy's resolver listens. */
static void dns_listeners(int *udp, int *tcp, uint16_t *port)
{
    for (int tries = 0; tries < 50; tries++) {
        *udp = bound_socket(SOCK_DGRAM, 0, port);
        assert_true(*udp >= 0);
        uint16_t same;
        *tcp = bound_socket(SOCK_STREAM, *port, &same);
        if (*tcp >= 0)
            return;
        close(*udp);
    }
    fail_msg("no port free for both UDP and TCP");
}

static bool readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1;
}

/* Accepts one connection within 5 s and returns its fd; the original destination the
 * proxy would recover goes to *orig. */
static int accept_with_orig(int lfd, struct sockaddr_in *peer, struct sockaddr_in *orig)
{
    assert_true(readable(lfd, 5000));
    socklen_t plen = sizeof(*peer);
    int c = accept(lfd, (struct sockaddr *)peer, &plen);
    assert_true(c >= 0);
    socklen_t olen = sizeof(*orig);
    memset(orig, 0, sizeof(*orig));
    if (getsockopt(c, SOL_IP, SO_ORIGINAL_DST, orig, &olen) == -1)
        fail_msg("SO_ORIGINAL_DST on the accepted socket: %s", strerror(errno));
    return c;
}

static void assert_addr(const struct sockaddr_in *a, const char *ip, uint16_t port)
{
    char got[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, got, sizeof(got));
    assert_string_equal(got, ip);
    assert_int_equal(ntohs(a->sin_port), port);
}

/* ---- children inside the sandbox ---------------------------------------------------- */

/* Forks a child that enters h's namespace and runs fn(arg); returns its pid. The child
 * reports through its exit code only (no cmocka in the child). */
static pid_t spawn_inside(const struct netns_handle *h, int (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (netns_enter(h) == -1)
            _exit(100);
        _exit(fn(arg));
    }
    return pid;
}

static int wait_exit(pid_t pid)
{
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 200;
}

static struct sockaddr_in sin_of(const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

struct dial {
    const char *ip;
    uint16_t port;
};

/* Connects to ip:port, sends "hello", waits for one byte back. 0 on success. */
static int child_tcp_dial(void *arg)
{
    const struct dial *d = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = sin_of(d->ip, d->port);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == -1)
        return 1;
    if (write(fd, "hello", 5) != 5)
        return 2;
    char c;
    if (read(fd, &c, 1) != 1 || c != 'x')
        return 3;
    return 0;
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_pool_config_validation(void **state)
{
    (void)state;
    char *err = NULL;
    struct netns_pool_config bad_cidr = {.pool_cidr = "10.200.0.1/16"};
    assert_null(netns_pool_new(&bad_cidr, &err));
    assert_non_null(strstr(err, "pool_cidr"));
    free(err);
    struct netns_pool_config tiny = {.pool_cidr = "10.200.0.0/31"};
    assert_null(netns_pool_new(&tiny, NULL));
    struct netns_pool_config bad_link = {.link_prefix = "toolong"};
    assert_null(netns_pool_new(&bad_link, &err));
    assert_non_null(strstr(err, "link_prefix"));
    free(err);
    struct netns_pool_config bad_name = {.name_prefix = "Auth-proxy"};
    assert_null(netns_pool_new(&bad_name, &err));
    assert_non_null(strstr(err, "name_prefix"));
    free(err);

    struct netns_pool *p = netns_pool_new(NULL, NULL);
    assert_non_null(p);
    struct in_addr in, out;
    inet_pton(AF_INET, "10.200.255.2", &in);
    inet_pton(AF_INET, "10.201.0.2", &out);
    assert_true(netns_pool_contains(p, in));
    assert_false(netns_pool_contains(p, out));
    netns_pool_free(p);
}

/* The central result: every TCP connection, to any address and port, lands on the
 * transparent listener and SO_ORIGINAL_DST gives back what the sandbox dialled. */
static void test_tcp_captured_with_original_dst(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    uint16_t tport, dport;
    int lfd = bound_socket(SOCK_STREAM, 0, &tport);
    int udns, tdns;
    dns_listeners(&udns, &tdns, &dport);
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    struct netns_handle *h =
        netns_create(pool, "0b6e3c52-aaaa-4bbb-8ccc-000000000001", tport, dport);
    assert_non_null(h);
    assert_string_equal(h->name, "aptest-0b6e3c52aaaa");
    assert_string_equal(h->host_ifname, "at-0b6e3c52aaaa");
    assert_true(netns_pool_contains(pool, h->sandbox_addr));
    char host_ip[INET_ADDRSTRLEN], sb_ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &h->host_addr, host_ip, sizeof(host_ip));
    inet_ntop(AF_INET, &h->sandbox_addr, sb_ip, sizeof(sb_ip));

    struct dial dials[] = {
        {"203.0.113.7", 443}, /* anywhere on the internet */
        {"192.0.2.1", 80},
        {host_ip, 22}, /* the host's own other ports are not reachable either */
    };
    for (size_t i = 0; i < ARRAY_LEN(dials); i++) {
        pid_t pid = spawn_inside(h, child_tcp_dial, &dials[i]);
        struct sockaddr_in peer, orig;
        int c = accept_with_orig(lfd, &peer, &orig);
        assert_addr(&orig, dials[i].ip, dials[i].port);
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
        assert_string_equal(ip, sb_ip); /* the proxy identifies the sandbox by this */
        char buf[5];
        assert_int_equal(read(c, buf, 5), 5);
        assert_memory_equal(buf, "hello", 5);
        assert_int_equal(write(c, "x", 1), 1);
        assert_int_equal(wait_exit(pid), 0);
        close(c);
    }

    /* TCP to port 53 (DNS over TCP) goes to the resolver, not the transparent listener. */
    struct dial dns_tcp = {"8.8.8.8", 53};
    pid_t pid = spawn_inside(h, child_tcp_dial, &dns_tcp);
    struct sockaddr_in peer, orig;
    int c = accept_with_orig(tdns, &peer, &orig);
    assert_addr(&orig, "8.8.8.8", 53);
    char buf[5];
    assert_int_equal(read(c, buf, 5), 5);
    assert_int_equal(write(c, "x", 1), 1);
    assert_int_equal(wait_exit(pid), 0);
    close(c);
    assert_false(readable(lfd, 0));

    assert_int_equal(netns_destroy(h), 0);
    netns_free(h);
    netns_pool_free(pool);
    close(lfd);
    close(udns);
    close(tdns);
}

struct udp_args {
    const char *host_ip;
    uint16_t drop_port;
};

/* Sends datagrams that must be dropped, then a DNS query that must come back as if from
 * 8.8.8.8:53. 0 on success. */
static int child_udp(void *arg)
{
    const struct udp_args *u = arg;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = sin_of("198.51.100.1", u->drop_port);
    sendto(fd, "drop1", 5, 0, (struct sockaddr *)&a, sizeof(a));
    a = sin_of(u->host_ip, u->drop_port);
    sendto(fd, "drop2", 5, 0, (struct sockaddr *)&a, sizeof(a));
    a = sin_of("8.8.8.8", 53);
    if (sendto(fd, "dnsq", 4, 0, (struct sockaddr *)&a, sizeof(a)) != 4)
        return 1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[16];
    struct sockaddr_in from;
    socklen_t flen = sizeof(from);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
    if (n != 4 || memcmp(buf, "dnsa", 4) != 0)
        return 2;
    struct sockaddr_in want = sin_of("8.8.8.8", 53);
    if (from.sin_addr.s_addr != want.sin_addr.s_addr || from.sin_port != want.sin_port)
        return 3;
    return 0;
}

static void test_udp_dns_only(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    uint16_t tport, dport, uport;
    int lfd = bound_socket(SOCK_STREAM, 0, &tport);
    int udns, tdns;
    dns_listeners(&udns, &tdns, &dport);
    int other = bound_socket(SOCK_DGRAM, 0, &uport); /* a host UDP service on 0.0.0.0 */
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    struct netns_handle *h = netns_create(pool, "udp-test-0001", tport, dport);
    assert_non_null(h);
    char host_ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &h->host_addr, host_ip, sizeof(host_ip));

    struct udp_args u = {host_ip, uport};
    /* Pass 0 with both tables; pass 1 after removing the sandbox's own table, as a sandbox
     * that somehow held CAP_NET_ADMIN could: the host table alone must still hold. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            char *cmd = xasprintf("ip netns exec %s nft delete table inet authproxy", h->name);
            assert_int_equal(sh(cmd), 0);
            free(cmd);
        }
        pid_t pid = spawn_inside(h, child_udp, &u);
        assert_true(readable(udns, 5000));
        char buf[16];
        struct sockaddr_in from;
        socklen_t flen = sizeof(from);
        assert_int_equal(recvfrom(udns, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen), 4);
        assert_memory_equal(buf, "dnsq", 4);
        assert_int_equal(from.sin_addr.s_addr, h->sandbox_addr.s_addr);
        assert_int_equal(sendto(udns, "dnsa", 4, 0, (struct sockaddr *)&from, flen), 4);
        assert_int_equal(wait_exit(pid), 0);
        /* The datagrams sent before the query, to the internet and to the host end, never
         * arrived at the host service (the query arriving proves they were sent first). */
        assert_false(readable(other, 300));
    }

    netns_free(h);
    netns_pool_free(pool);
    close(lfd);
    close(udns);
    close(tdns);
    close(other);
}

/* Checks from inside: IPv6 sockets reach nothing, the sysctl says disabled, and the route
 * table holds the default route via the host end and the /30 and nothing else. */
static int child_ipv6_and_routes(void *arg)
{
    const struct netns_handle *h = arg;
    const char *targets[] = {"2001:db8::1", "::1", "::ffff:203.0.113.7"};
    for (size_t i = 0; i < ARRAY_LEN(targets); i++) {
        int fd = socket(AF_INET6, SOCK_STREAM, 0);
        if (fd == -1)
            continue; /* no IPv6 at all is fine */
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
        inet_pton(AF_INET6, targets[i], &a.sin6_addr);
        struct timeval tv = {.tv_sec = 2};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        /* A v4-mapped address is IPv4 traffic and gets captured like any TCP: only the real
         * IPv6 destinations must fail. */
        int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
        close(fd);
        if (i < 2 && rc == 0)
            return 10 + (int)i;
    }
    char *v = read_file("/proc/sys/net/ipv6/conf/all/disable_ipv6", 16, NULL);
    bool off = v != NULL && v[0] == '1';
    free(v);
    if (!off)
        return 20;
    char *routes = read_file("/proc/net/route", 65536, NULL);
    if (routes == NULL)
        return 30;
    int n = 0;
    bool have_default = false;
    char *save = NULL;
    for (char *line = strtok_r(routes, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char ifname[32];
        unsigned dst, gw;
        if (sscanf(line, "%31s %x %x", ifname, &dst, &gw) != 3)
            continue; /* header */
        n++;
        if (dst == 0 && gw == h->host_addr.s_addr && strcmp(ifname, "eth0") == 0)
            have_default = true;
    }
    free(routes);
    return (n == 2 && have_default) ? 0 : 31;
}

static void test_ipv6_disabled_single_route(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    char *host_before = read_file("/proc/sys/net/ipv6/conf/all/disable_ipv6", 16, NULL);
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    struct netns_handle *h = netns_create(pool, "ipv6-test-0001", 40001, 40002);
    assert_non_null(h);
    assert_int_equal(wait_exit(spawn_inside(h, child_ipv6_and_routes, h)), 0);
    /* Disabling IPv6 in the sandbox must not have touched the host's setting. */
    char *host_after = read_file("/proc/sys/net/ipv6/conf/all/disable_ipv6", 16, NULL);
    if (host_before != NULL)
        assert_string_equal(host_before, host_after);
    free(host_before);
    free(host_after);
    netns_free(h);
    netns_pool_free(pool);
}

/* Addresses: never one already on a host interface, lowest free first, reused after
 * destroy, and a fresh pool (a restarted daemon) sees the sandboxes of the old one. */
static void test_address_allocation(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    /* An operator's network occupying the first two /30s of the pool. */
    assert_int_equal(sh("ip link add atd-test type veth peer name atd-testp && "
                        "ip addr add 10.213.0.1/29 dev atd-test"),
                     0);
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    struct netns_handle *a = netns_create(pool, "alloc-a", 40001, 40002);
    assert_non_null(a);
    assert_string_equal(inet_ntoa(a->host_addr), "10.213.0.9");
    assert_string_equal(inet_ntoa(a->sandbox_addr), "10.213.0.10");
    assert_int_equal(a->prefix_len, 30);

    struct netns_pool *restarted = netns_pool_new(&test_cfg, NULL);
    struct netns_handle *b = netns_create(restarted, "alloc-b", 40001, 40002);
    assert_non_null(b);
    assert_string_equal(inet_ntoa(b->host_addr), "10.213.0.13");

    /* The same short id twice is refused, and the refusal leaves the first one working. */
    errno = 0;
    assert_null(netns_create(pool, "alloc-b", 40001, 40002));
    assert_int_equal(errno, EEXIST);
    assert_true(access(b->path, F_OK) == 0);
    assert_true(if_nametoindex(b->host_ifname) != 0);

    netns_free(a);
    struct netns_handle *c = netns_create(pool, "alloc-c", 40001, 40002);
    assert_non_null(c);
    assert_string_equal(inet_ntoa(c->host_addr), "10.213.0.9");
    netns_free(b);
    netns_free(c);
    netns_pool_free(pool);
    netns_pool_free(restarted);
    assert_int_equal(sh("ip link del atd-test"), 0);
}

struct conc {
    struct netns_pool *pool;
    char id[32];
    struct netns_handle *h;
};

static void *conc_create(void *arg)
{
    struct conc *c = arg;
    c->h = netns_create(c->pool, c->id, 40001, 40002);
    return NULL;
}

static void test_concurrent_creates_distinct(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    struct counts before = count_settled(0); /* an earlier test's veths may still be going */
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    struct conc cs[8];
    pthread_t tids[8];
    for (int i = 0; i < 8; i++) {
        cs[i].pool = pool;
        snprintf(cs[i].id, sizeof(cs[i].id), "conc%02d", i);
        assert_int_equal(pthread_create(&tids[i], NULL, conc_create, &cs[i]), 0);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(tids[i], NULL);
    for (int i = 0; i < 8; i++) {
        assert_non_null(cs[i].h);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(cs[i].h->host_addr.s_addr, cs[j].h->host_addr.s_addr);
    }
    for (int i = 0; i < 8; i++)
        netns_free(cs[i].h);
    netns_pool_free(pool);
    struct counts after = count_settled(before.links);
    assert_memory_equal(&before, &after, sizeof(before));
}

static void test_create_destroy_cycles_leave_nothing(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    struct counts before = count_settled(0); /* an earlier test's veths may still be going */
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    for (int i = 0; i < 20; i++) {
        char id[64];
        snprintf(id, sizeof(id), "cycle%03d-0000-4000-8000-000000000000", i);
        struct netns_handle *h = netns_create(pool, id, 40001, 40002);
        assert_non_null(h);
        struct counts during = count_objects();
        assert_int_equal(during.ns, before.ns + 1);
        assert_int_equal(during.links, before.links + 1);
        assert_int_equal(during.tables, before.tables + 1);
        assert_int_equal(netns_destroy(h), 0);
        assert_int_equal(netns_destroy(h), 0); /* idempotent */
        assert_int_equal(netns_enter(h), -1);  /* nothing left to enter */
        netns_free(h);
        assert_int_equal(count_settled(before.links).links, before.links);
    }
    netns_pool_free(pool);
    struct counts after = count_objects();
    assert_int_equal(after.ns, before.ns);
    assert_int_equal(after.links, before.links);
    assert_int_equal(after.tables, before.tables);
}

/* A box stopped and started again gets the same names at once: its old veth, still going away
 * with its old namespace in the background, must not make the new one fail. */
static void test_same_id_again_right_after_destroy(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    struct counts before = count_settled(0); /* an earlier test's veths may still be going */
    struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
    for (int i = 0; i < 5; i++) {
        struct netns_handle *h = netns_create(pool, "again-0000-4000-8000", 40001, 40002);
        assert_non_null(h);
        assert_int_equal(netns_destroy(h), 0);
        netns_free(h);
    }
    netns_pool_free(pool);
    struct counts after = count_settled(before.links);
    assert_memory_equal(&before, &after, sizeof(before));
}

static void test_reconcile_after_crash(void **state)
{
    (void)state;
    REQUIRE_KERNEL();
    assert_true(netns_reconcile(&test_cfg) >= 0);
    struct counts before = count_settled(0); /* an earlier test's veths may still be going */
    assert_int_equal(before.ns + before.links + before.tables, 0);

    /* A daemon that created three sandboxes and died without cleaning up. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct netns_pool *pool = netns_pool_new(&test_cfg, NULL);
        for (int i = 0; i < 3; i++) {
            char id[32];
            snprintf(id, sizeof(id), "crash%d", i);
            if (netns_create(pool, id, 40001, 40002) == NULL)
                _exit(1);
        }
        _exit(0);
    }
    assert_int_equal(wait_exit(pid), 0);
    /* A create that died half-way: a link and a table without a namespace. */
    assert_int_equal(sh("ip link add at-half type veth peer name at-halfp"), 0);
    assert_int_equal(sh("nft add table inet aptest_half"), 0);
    /* Someone else's table with a similar name must survive. */
    assert_int_equal(sh("nft add table inet aptestx_keep"), 0);

    struct counts crashed = count_objects();
    assert_int_equal(crashed.ns, 3);
    assert_int_equal(crashed.links, 5);
    assert_int_equal(crashed.tables, 4);

    int removed = netns_reconcile(&test_cfg);
    assert_true(removed >= 3 + 1 + 4);
    struct counts after = count_objects();
    assert_int_equal(after.ns, 0);
    assert_int_equal(after.links, 0);
    assert_int_equal(after.tables, 0);
    assert_int_equal(sh("nft list table inet aptestx_keep >/dev/null"), 0);
    assert_int_equal(sh("nft delete table inet aptestx_keep"), 0);
    assert_int_equal(netns_reconcile(&test_cfg), 0); /* nothing left: idempotent */
}

static int group_setup(void **state)
{
    (void)state;
    if (kernel_ok())
        netns_reconcile(&test_cfg); /* leftovers of an interrupted earlier run */
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_config_validation),
        cmocka_unit_test(test_tcp_captured_with_original_dst),
        cmocka_unit_test(test_udp_dns_only),
        cmocka_unit_test(test_ipv6_disabled_single_route),
        cmocka_unit_test(test_address_allocation),
        cmocka_unit_test(test_concurrent_creates_distinct),
        cmocka_unit_test(test_create_destroy_cycles_leave_nothing),
        cmocka_unit_test(test_same_id_again_right_after_destroy),
        cmocka_unit_test(test_reconcile_after_crash),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
