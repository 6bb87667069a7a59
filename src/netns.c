/* netns: per-sandbox network namespaces, veth pairs, addresses and nft capture rules.
 * The contract and the design choices are in netns.h. Links, addresses and routes go through
 * rtnetlink directly (a few small messages; no library needed), rules through libnftables. */
#include "netns.h"

#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <nftables/libnftables.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOT_BITS 2u /* one /30 per sandbox: network, host end (.1), sandbox end (.2), broadcast   \
                      */

struct netns_pool {
    uint32_t base;   /* host byte order, aligned to the prefix */
    unsigned plen;   /* pool prefix length */
    uint32_t nslots; /* number of /30s in the pool */
    char *name_prefix;
    char *link_prefix;
    char *lock_path;
    pthread_mutex_t mu; /* serialises allocation inside this process (the flock does across) */
};

/* libnftables keeps some process-global state; every use goes through this lock. */
static pthread_mutex_t nft_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---------------------------------------------------------------------------------------
 * Configuration */

static bool name_chars_ok(const char *s, bool allow_underscore)
{
    for (; *s != '\0'; s++) {
        bool ok =
            (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || (allow_underscore && *s == '_');
        if (!ok)
            return false;
    }
    return true;
}

/* Parses "a.b.c.d/n" into a host-order base and a prefix length; false if malformed, if n is
 * outside 8..30, or if host bits are set (a pool must be named by its network address). */
static bool parse_cidr(const char *s, uint32_t *base, unsigned *plen)
{
    const char *slash = strchr(s, '/');
    if (slash == NULL || slash - s >= 16)
        return false;
    char ip[16];
    memcpy(ip, s, (size_t)(slash - s));
    ip[slash - s] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1)
        return false;
    char *end;
    errno = 0;
    long n = strtol(slash + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == slash + 1 || n < 8 || n > 30)
        return false;
    uint32_t b = ntohl(a.s_addr);
    uint32_t mask = (uint32_t)(0xffffffffu << (32 - n));
    if ((b & ~mask) != 0)
        return false;
    *base = b;
    *plen = (unsigned)n;
    return true;
}

/* See netns.h. Validation messages name the config field. */
struct netns_pool *netns_pool_new(const struct netns_pool_config *cfg, char **err)
{
    static const struct netns_pool_config defaults;
    if (cfg == NULL)
        cfg = &defaults;
    const char *cidr = cfg->pool_cidr != NULL ? cfg->pool_cidr : NETNS_DEFAULT_POOL;
    const char *np = cfg->name_prefix != NULL ? cfg->name_prefix : NETNS_DEFAULT_PREFIX;
    const char *lp = cfg->link_prefix != NULL ? cfg->link_prefix : NETNS_DEFAULT_LINK_PREFIX;
    const char *lock = cfg->lock_path != NULL ? cfg->lock_path : NETNS_DEFAULT_LOCK_PATH;
    uint32_t base = 0;
    unsigned plen = 0;
    char *msg = NULL;

    if (!parse_cidr(cidr, &base, &plen))
        msg = xasprintf("netns pool_cidr: expected an IPv4 network a.b.c.d/8..30 with no host "
                        "bits set, found \"%s\"",
                        cidr);
    else if (np[0] < 'a' || np[0] > 'z' || strlen(np) > 24 || !name_chars_ok(np, true))
        msg = xasprintf("netns name_prefix: expected 1-24 characters [a-z0-9_] starting with a "
                        "letter, found \"%s\"",
                        np);
    else if (lp[0] == '\0' || strlen(lp) > 4 || !name_chars_ok(lp, false))
        msg = xasprintf("netns link_prefix: expected 1-4 characters [a-z0-9], found \"%s\"", lp);
    else if (lock[0] != '/')
        msg = xasprintf("netns lock_path: expected an absolute path, found \"%s\"", lock);
    if (msg != NULL) {
        if (err != NULL)
            *err = msg;
        else
            free(msg);
        return NULL;
    }
    struct netns_pool *p = xcalloc(1, sizeof(*p));
    p->base = base;
    p->plen = plen;
    p->nslots = 1u << (32 - plen - SLOT_BITS);
    p->name_prefix = xstrdup(np);
    p->link_prefix = xstrdup(lp);
    p->lock_path = xstrdup(lock);
    pthread_mutex_init(&p->mu, NULL);
    return p;
}

void netns_pool_free(struct netns_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_destroy(&pool->mu);
    free(pool->name_prefix);
    free(pool->link_prefix);
    free(pool->lock_path);
    free(pool);
}

bool netns_pool_contains(const struct netns_pool *pool, struct in_addr addr)
{
    uint32_t mask = (uint32_t)(0xffffffffu << (32 - pool->plen));
    return (ntohl(addr.s_addr) & mask) == pool->base;
}

/* ---------------------------------------------------------------------------------------
 * rtnetlink: just the requests this module needs, one socket per namespace. */

struct nlmsg {
    union {
        struct nlmsghdr h;
        char buf[1024];
    } u;
};

static void nl_init(struct nlmsg *m, uint16_t type, uint16_t flags)
{
    memset(m, 0, sizeof(*m));
    m->u.h.nlmsg_len = NLMSG_LENGTH(0);
    m->u.h.nlmsg_type = type;
    m->u.h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
}

/* Appends len bytes (a family header or an attribute payload) at the aligned end of m and
 * returns where they went. Our messages are small and fixed in shape: overflowing the buffer
 * is a programming error, hence abort. */
static void *nl_put(struct nlmsg *m, const void *data, size_t len)
{
    size_t off = NLMSG_ALIGN(m->u.h.nlmsg_len);
    if (off + len > sizeof(m->u.buf))
        abort();
    void *dst = m->u.buf + off;
    if (data != NULL)
        memcpy(dst, data, len);
    else
        memset(dst, 0, len);
    m->u.h.nlmsg_len = (uint32_t)(off + len);
    return dst;
}

static struct rtattr *nl_attr(struct nlmsg *m, unsigned short type, const void *data, size_t len)
{
    struct rtattr rta = {.rta_len = (unsigned short)RTA_LENGTH(len), .rta_type = type};
    struct rtattr *a = nl_put(m, &rta, sizeof(rta));
    if (len > 0)
        nl_put(m, data, len);
    return a;
}

/* Closes a nested attribute opened with nl_attr(m, type, NULL, 0). */
static void nl_nest_end(struct nlmsg *m, struct rtattr *a)
{
    a->rta_len = (unsigned short)((char *)m->u.buf + m->u.h.nlmsg_len - (char *)a);
}

/* A netlink socket of the protocol (NETLINK_ROUTE, NETLINK_NETFILTER) in the calling
 * thread's namespace; -1 (logged) on failure. */
static int nl_open_proto(int protocol)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (fd == -1)
        log_error("netns: netlink socket (protocol %d): %s", protocol, strerror(errno));
    return fd;
}

static int nl_open(void)
{
    return nl_open_proto(NETLINK_ROUTE);
}

static uint32_t nl_next_seq(void)
{
    static _Atomic uint32_t seq = 1;
    return seq++;
}

/* Receives into buf; -1 with errno on error. */
static ssize_t nl_recv(int fd, char *buf, size_t cap)
{
    ssize_t n;
    do
        n = recv(fd, buf, cap, 0);
    while (n == -1 && errno == EINTR);
    return n;
}

typedef void (*nl_dump_cb)(const struct nlmsghdr *h, void *arg);

/* Sends m with NLM_F_ACK and waits for the kernel's answer. 0, or -1 with errno set to the
 * kernel's error. Messages of the answer other than the acknowledgement (the reply to a GET)
 * are passed to cb when it is not NULL. */
static int nl_talk(int fd, struct nlmsg *m, nl_dump_cb cb, void *arg)
{
    uint32_t seq = nl_next_seq();
    m->u.h.nlmsg_seq = seq;
    m->u.h.nlmsg_flags |= NLM_F_ACK;
    if (send(fd, m->u.buf, m->u.h.nlmsg_len, 0) == -1)
        return -1;
    char buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
    for (;;) {
        ssize_t n = nl_recv(fd, buf, sizeof(buf));
        if (n == -1)
            return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (e->error == 0)
                    return 0;
                errno = -e->error;
                return -1;
            }
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (cb != NULL)
                cb(h, arg);
        }
    }
}

/* Sends the dump request m and calls cb for every message of the answer. 0, or -1 with errno. */
static int nl_dump(int fd, struct nlmsg *m, nl_dump_cb cb, void *arg)
{
    uint32_t seq = nl_next_seq();
    m->u.h.nlmsg_seq = seq;
    m->u.h.nlmsg_flags |= NLM_F_DUMP;
    if (send(fd, m->u.buf, m->u.h.nlmsg_len, 0) == -1)
        return -1;
    size_t cap = 65536;
    char *buf = xmalloc(cap);
    int rc = -1;
    for (;;) {
        ssize_t n = nl_recv(fd, buf, cap);
        if (n == -1)
            goto out;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n);
             h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_seq != seq)
                continue;
            if (h->nlmsg_type == NLMSG_DONE) {
                rc = 0;
                goto out;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                errno = e->error != 0 ? -e->error : EIO;
                goto out;
            }
            cb(h, arg);
        }
    }
out:
    free(buf);
    return rc;
}

static void ifindex_cb(const struct nlmsghdr *h, void *arg)
{
    if (h->nlmsg_type == RTM_NEWLINK)
        *(int *)arg = ((const struct ifinfomsg *)NLMSG_DATA(h))->ifi_index;
}

/* Interface index of name in the socket's namespace; 0 with errno if there is none. */
static int nl_ifindex(int fd, const char *name)
{
    struct nlmsg m;
    nl_init(&m, RTM_GETLINK, 0);
    nl_put(&m, NULL, sizeof(struct ifinfomsg));
    nl_attr(&m, IFLA_IFNAME, name, strlen(name) + 1);
    int idx = 0;
    if (nl_talk(fd, &m, ifindex_cb, &idx) == -1)
        return 0;
    if (idx == 0)
        errno = ENODEV;
    return idx;
}

static int nl_link_up(int fd, int ifindex)
{
    struct nlmsg m;
    nl_init(&m, RTM_NEWLINK, 0);
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC, .ifi_index = ifindex, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    nl_put(&m, &ifi, sizeof(ifi));
    return nl_talk(fd, &m, NULL, NULL);
}

static int nl_addr_add(int fd, int ifindex, struct in_addr addr, unsigned plen)
{
    struct nlmsg m;
    nl_init(&m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    struct ifaddrmsg ifa = {.ifa_family = AF_INET,
                            .ifa_prefixlen = (unsigned char)plen,
                            .ifa_scope = RT_SCOPE_UNIVERSE,
                            .ifa_index = (unsigned)ifindex};
    nl_put(&m, &ifa, sizeof(ifa));
    nl_attr(&m, IFA_LOCAL, &addr, sizeof(addr));
    nl_attr(&m, IFA_ADDRESS, &addr, sizeof(addr));
    return nl_talk(fd, &m, NULL, NULL);
}

static int nl_default_route(int fd, int ifindex, struct in_addr gw)
{
    struct nlmsg m;
    nl_init(&m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    struct rtmsg rt = {.rtm_family = AF_INET,
                       .rtm_table = RT_TABLE_MAIN,
                       .rtm_protocol = RTPROT_BOOT,
                       .rtm_scope = RT_SCOPE_UNIVERSE,
                       .rtm_type = RTN_UNICAST};
    nl_put(&m, &rt, sizeof(rt));
    nl_attr(&m, RTA_GATEWAY, &gw, sizeof(gw));
    uint32_t oif = (uint32_t)ifindex;
    nl_attr(&m, RTA_OIF, &oif, sizeof(oif));
    return nl_talk(fd, &m, NULL, NULL);
}

/* Creates the veth pair name <-> peer, with peer created directly inside the namespace
 * peer_nsfd (no moment where the sandbox end exists on the host). */
static int nl_veth_add(int fd, const char *name, const char *peer, int peer_nsfd)
{
    struct nlmsg m;
    nl_init(&m, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    nl_put(&m, NULL, sizeof(struct ifinfomsg));
    nl_attr(&m, IFLA_IFNAME, name, strlen(name) + 1);
    struct rtattr *linkinfo = nl_attr(&m, IFLA_LINKINFO, NULL, 0);
    nl_attr(&m, IFLA_INFO_KIND, "veth", 5);
    struct rtattr *data = nl_attr(&m, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peerinfo = nl_attr(&m, VETH_INFO_PEER, NULL, 0);
    nl_put(&m, NULL, sizeof(struct ifinfomsg));
    nl_attr(&m, IFLA_IFNAME, peer, strlen(peer) + 1);
    uint32_t nsfd = (uint32_t)peer_nsfd;
    nl_attr(&m, IFLA_NET_NS_FD, &nsfd, sizeof(nsfd));
    nl_nest_end(&m, peerinfo);
    nl_nest_end(&m, data);
    nl_nest_end(&m, linkinfo);
    return nl_talk(fd, &m, NULL, NULL);
}

/* Deletes the link called name; a link that does not exist counts as deleted. */
static int nl_link_del(int fd, const char *name)
{
    struct nlmsg m;
    nl_init(&m, RTM_DELLINK, 0);
    nl_put(&m, NULL, sizeof(struct ifinfomsg));
    nl_attr(&m, IFLA_IFNAME, name, strlen(name) + 1);
    if (nl_talk(fd, &m, NULL, NULL) == -1 && errno != ENODEV)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Small system helpers */

/* Writes value to a /proc/sys file as seen from the calling thread's network namespace.
 * A missing file (kernel without IPv6) is not an error when missing_ok. */
static int write_sysctl(const char *path, const char *value, bool missing_ok)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd == -1) {
        if (missing_ok && errno == ENOENT)
            return 0;
        log_error("netns: open %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = write_all(fd, value, strlen(value));
    if (rc == -1)
        log_error("netns: write %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

/* Runs an nft script through libnftables. 0, or -1 with errno = EIO and the parser's or
 * kernel's message logged (unless quiet). *out, when out is not NULL, receives the command's
 * output (caller frees). The context is created here, in the calling thread, so its netlink
 * socket belongs to the thread's current network namespace. */
static int nft_run(const char *script, char **out, bool quiet)
{
    int rc = -1;
    pthread_mutex_lock(&nft_mu);
    struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (ctx == NULL) {
        log_error("netns: nft_ctx_new failed");
        goto out;
    }
    nft_ctx_buffer_error(ctx);
    if (out != NULL)
        nft_ctx_buffer_output(ctx);
    if (nft_run_cmd_from_buffer(ctx, script) != 0) {
        if (!quiet)
            log_error("netns: nft: %s", nft_ctx_get_error_buffer(ctx));
        goto out;
    }
    if (out != NULL) {
        const char *o = nft_ctx_get_output_buffer(ctx);
        *out = xstrdup(o != NULL ? o : "");
    }
    rc = 0;
out:
    if (ctx != NULL)
        nft_ctx_free(ctx);
    pthread_mutex_unlock(&nft_mu);
    if (rc == -1)
        errno = EIO;
    return rc;
}

/* Deletes an nft table in the calling thread's namespace; a missing table counts as deleted
 * (the "add" first makes the batch succeed either way: nft 1.0.6 has no "destroy"). */
static int nft_table_del(const char *family, const char *table)
{
    char *script = xasprintf("add table %s %s\ndelete table %s %s\n", family, table, family, table);
    int rc = nft_run(script, NULL, false);
    free(script);
    return rc;
}

/* Makes NETNS_RUN_DIR a shared mount point (as `ip netns add` does), so that unmounting a
 * namespace there also unmounts the copies other mount namespaces took of it; otherwise a
 * sandbox's mount namespace could pin a deleted sandbox's network namespace. */
static int run_dir_prepare(void)
{
    if (mkdir(NETNS_RUN_DIR, 0755) == -1 && errno != EEXIST) {
        log_error("netns: mkdir %s: %s", NETNS_RUN_DIR, strerror(errno));
        return -1;
    }
    if (mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC, NULL) == 0)
        return 0;
    if (errno == EINVAL &&
        mount(NETNS_RUN_DIR, NETNS_RUN_DIR, "none", MS_BIND | MS_REC, NULL) == 0 &&
        mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC, NULL) == 0)
        return 0;
    log_error("netns: making %s a shared mount: %s", NETNS_RUN_DIR, strerror(errno));
    return -1;
}

/* Removes a namespace's bind mount and its file; absent ones count as removed. */
static int netns_unmount(const char *path)
{
    if (umount2(path, MNT_DETACH) == -1 && errno != EINVAL && errno != ENOENT) {
        log_error("netns: umount %s: %s", path, strerror(errno));
        return -1;
    }
    if (unlink(path) == -1 && errno != ENOENT) {
        log_error("netns: unlink %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Address allocation */

struct addr_scan {
    const struct netns_pool *pool;
    uint8_t *used; /* bitmap of slots */
};

/* Marks every slot that the IPv4 network of one host address overlaps. */
static void addr_scan_cb(const struct nlmsghdr *h, void *arg)
{
    struct addr_scan *s = arg;
    if (h->nlmsg_type != RTM_NEWADDR)
        return;
    const struct ifaddrmsg *ifa = NLMSG_DATA(h);
    if (ifa->ifa_family != AF_INET)
        return;
    int len = (int)IFA_PAYLOAD(h);
    struct in_addr a = {0};
    bool have = false;
    for (const struct rtattr *rta = IFA_RTA(ifa); RTA_OK(rta, len); rta = RTA_NEXT(rta, len)) {
        if ((rta->rta_type == IFA_LOCAL || (rta->rta_type == IFA_ADDRESS && !have)) &&
            RTA_PAYLOAD(rta) == sizeof(a)) {
            memcpy(&a, RTA_DATA(rta), sizeof(a));
            have = true;
        }
    }
    if (!have)
        return;
    unsigned plen = ifa->ifa_prefixlen > 32 ? 32 : ifa->ifa_prefixlen;
    uint64_t mask = plen == 0 ? 0 : (uint32_t)(0xffffffffu << (32 - plen));
    uint64_t lo = ntohl(a.s_addr) & mask;
    uint64_t hi = lo + ((uint64_t)1 << (32 - plen)) - 1;
    uint64_t pool_lo = s->pool->base;
    uint64_t pool_hi = pool_lo + ((uint64_t)s->pool->nslots << SLOT_BITS) - 1;
    if (hi < pool_lo || lo > pool_hi)
        return;
    if (lo < pool_lo)
        lo = pool_lo;
    if (hi > pool_hi)
        hi = pool_hi;
    for (uint64_t slot = (lo - pool_lo) >> SLOT_BITS; slot <= (hi - pool_lo) >> SLOT_BITS; slot++)
        s->used[slot / 8] |= (uint8_t)(1u << (slot % 8));
}

/* Picks the lowest slot no host address overlaps. Must run under the allocator lock, and
 * the chosen address must be configured before the lock is released. */
static int pick_slot(int host_nl, const struct netns_pool *pool, uint32_t *slot_out)
{
    struct addr_scan s = {.pool = pool, .used = xcalloc(pool->nslots / 8 + 1, 1)};
    int rc = -1;
    struct nlmsg m;
    nl_init(&m, RTM_GETADDR, 0);
    struct ifaddrmsg ifa = {.ifa_family = AF_INET};
    nl_put(&m, &ifa, sizeof(ifa));
    if (nl_dump(host_nl, &m, addr_scan_cb, &s) == -1) {
        log_error("netns: listing host addresses: %s", strerror(errno));
        goto out;
    }
    for (uint32_t slot = 0; slot < pool->nslots; slot++) {
        if ((s.used[slot / 8] & (1u << (slot % 8))) == 0) {
            *slot_out = slot;
            rc = 0;
            goto out;
        }
    }
    log_error("netns: address pool exhausted (%u sandboxes)", pool->nslots);
    errno = ENOSPC;
out:
    free(s.used);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Create */

struct create_job {
    struct netns_pool *pool;
    struct netns_handle *h;
    bool made_mount; /* what this create made, so a failure undoes only that */
    bool made_link;
    int err; /* errno of the failure, 0 on success */
};

static char *inner_ruleset(const struct netns_handle *h)
{
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &h->host_addr, host, sizeof(host));
    return xasprintf("table inet authproxy {\n"
                     "  chain output {\n"
                     "    type filter hook output priority 0; policy drop;\n"
                     "    oifname \"lo\" accept\n"
                     "    meta nfproto ipv6 drop\n"
                     "    ct state established,related accept\n"
                     "    meta l4proto tcp accept\n"
                     "    udp dport 53 accept\n"
                     "    ip daddr %s icmp type echo-request accept\n"
                     "  }\n"
                     "  chain input {\n"
                     "    type filter hook input priority 0; policy drop;\n"
                     "    iifname \"lo\" accept\n"
                     "    meta nfproto ipv6 drop\n"
                     "    ct state established,related accept\n"
                     "  }\n"
                     "}\n",
                     host);
}

static char *host_ruleset(const struct netns_handle *h)
{
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &h->host_addr, host, sizeof(host));
    const char *l = h->host_ifname;
    unsigned t = h->transparent_port, d = h->dns_port;
    return xasprintf("table inet %s {\n"
                     "  chain prerouting_filter {\n"
                     "    type filter hook prerouting priority -150; policy accept;\n"
                     "    iifname \"%s\" jump from_sandbox\n"
                     "  }\n"
                     "  chain from_sandbox {\n"
                     "    meta nfproto ipv6 drop\n"
                     "    ct state established,related accept\n"
                     "    meta l4proto tcp accept\n"
                     "    udp dport 53 accept\n"
                     "    ip daddr %s icmp type echo-request accept\n"
                     "    drop\n"
                     "  }\n"
                     "  chain prerouting_nat {\n"
                     "    type nat hook prerouting priority -100; policy accept;\n"
                     "    iifname \"%s\" tcp dport 53 dnat ip to %s:%u\n"
                     "    iifname \"%s\" udp dport 53 dnat ip to %s:%u\n"
                     "    iifname \"%s\" meta l4proto tcp dnat ip to %s:%u\n"
                     "  }\n"
                     "  chain input {\n"
                     "    type filter hook input priority 0; policy accept;\n"
                     "    iifname \"%s\" jump to_host\n"
                     "  }\n"
                     "  chain to_host {\n"
                     "    ct state established,related accept\n"
                     "    ip daddr %s tcp dport %u accept\n"
                     "    ip daddr %s tcp dport %u accept\n"
                     "    ip daddr %s udp dport %u accept\n"
                     "    ip daddr %s icmp type echo-request accept\n"
                     "    drop\n"
                     "  }\n"
                     "  chain forward {\n"
                     "    type filter hook forward priority 0; policy accept;\n"
                     "    iifname \"%s\" drop\n"
                     "    oifname \"%s\" drop\n"
                     "  }\n"
                     "}\n",
                     h->host_table, l, host, l, host, d, l, host, d, l, host, t, l, host, t, host,
                     d, host, d, host, l, l);
}

/* How long allocation waits for another authproxy process to release the allocator lock. A
 * holder keeps it for milliseconds; one that keeps it longer is stuck (stopped, or hung in the
 * kernel), and a sandbox start should then fail with a reason rather than hang with it. */
#define NETNS_LOCK_WAIT_MS 10000
#define NETNS_LOCK_POLL_MS 2

/* Takes the allocator locks (in-process mutex, then the cross-process flock, waiting at most
 * NETNS_LOCK_WAIT_MS for it). Returns the lock file fd for alloc_unlock(), or -1 (logged). */
static int alloc_lock(struct netns_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    int fd = open(pool->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1) {
        log_error("netns: open %s: %s", pool->lock_path, strerror(errno));
        goto fail;
    }
    int rc;
    uint64_t deadline_us = monotonic_us() + (uint64_t)NETNS_LOCK_WAIT_MS * 1000;
    while ((rc = flock(fd, LOCK_EX | LOCK_NB)) == -1 && (errno == EWOULDBLOCK || errno == EINTR) &&
           monotonic_us() < deadline_us) {
        struct timespec pause = {0, NETNS_LOCK_POLL_MS * 1000000L};
        nanosleep(&pause, NULL);
    }
    if (rc == -1) {
        int err = errno == EWOULDBLOCK ? ETIMEDOUT : errno;
        if (err == ETIMEDOUT)
            log_error("netns: another process has held the sandbox network allocator lock %s "
                      "for %d s; not waiting longer (a stopped or hung authproxy?)",
                      pool->lock_path, NETNS_LOCK_WAIT_MS / 1000);
        else
            log_error("netns: flock %s: %s", pool->lock_path, strerror(err));
        close(fd);
        errno = err;
        goto fail;
    }
    return fd;
fail:
    pthread_mutex_unlock(&pool->mu);
    return -1;
}

static void alloc_unlock(struct netns_pool *pool, int fd)
{
    close(fd); /* releases the flock */
    pthread_mutex_unlock(&pool->mu);
}

/* Helper thread body: everything that must happen inside the new namespace. The thread
 * unshares its own network namespace, so the caller's thread never leaves the host's; the
 * thread ends right after, so nothing else ever runs in the sandbox namespace by accident.
 * Sockets opened before the unshare stay bound to the host namespace. */
static void *create_thread(void *arg)
{
    struct create_job *job = arg;
    struct netns_handle *h = job->h;
    int host_nl = -1, in_nl = -1, lockfd = -1;
    char *rules = NULL;

    host_nl = nl_open();
    if (host_nl == -1)
        goto fail;
    if (unshare(CLONE_NEWNET) == -1) {
        log_error("netns: unshare(CLONE_NEWNET): %s", strerror(errno));
        goto fail;
    }
    int mfd = open(h->path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (mfd == -1) {
        log_error("netns: create %s: %s", h->path, strerror(errno));
        goto fail;
    }
    close(mfd);
    if (mount("/proc/thread-self/ns/net", h->path, "none", MS_BIND, NULL) == -1) {
        log_error("netns: bind-mount %s: %s", h->path, strerror(errno));
        int e = errno;
        unlink(h->path);
        errno = e;
        goto fail;
    }
    job->made_mount = true;
    h->fd = open(h->path, O_RDONLY | O_CLOEXEC);
    if (h->fd == -1) {
        log_error("netns: open %s: %s", h->path, strerror(errno));
        goto fail;
    }
    /* IPv6 off before eth0 arrives: new interfaces take "default", existing ones "all". */
    if (write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1", true) == -1 ||
        write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1", true) == -1)
        goto fail;
    in_nl = nl_open();
    if (in_nl == -1)
        goto fail;

    lockfd = alloc_lock(job->pool);
    if (lockfd == -1)
        goto fail;
    uint32_t slot;
    if (pick_slot(host_nl, job->pool, &slot) == -1)
        goto fail;
    uint32_t net = job->pool->base + (slot << SLOT_BITS);
    h->host_addr.s_addr = htonl(net + 1);
    h->sandbox_addr.s_addr = htonl(net + 2);
    h->prefix_len = 32 - SLOT_BITS;
    int vrc = nl_veth_add(host_nl, h->host_ifname, NETNS_SANDBOX_IFNAME, h->fd);
    if (vrc == -1 && errno == EEXIST) {
        /* The same sandbox id just torn down: its veth goes with its old namespace in the
         * background (teardown) and may still be there. No live sandbox owns the name (this
         * create made the namespace path with O_EXCL), so delete the leftover and try again. */
        if (nl_link_del(host_nl, h->host_ifname) == 0 || errno == ENODEV)
            vrc = nl_veth_add(host_nl, h->host_ifname, NETNS_SANDBOX_IFNAME, h->fd);
        else
            errno = EEXIST;
    }
    if (vrc == -1) {
        log_error("netns: creating veth %s: %s", h->host_ifname, strerror(errno));
        goto fail;
    }
    job->made_link = true;
    /* The host end gets its address here (it reserves the /30 for the allocator) but comes up
     * in netns_create, after its IPv6 is off: turning IPv6 off on an interface that is up
     * tears down its link-local address and routes, which costs milliseconds. */
    int host_idx = nl_ifindex(host_nl, h->host_ifname);
    if (host_idx == 0 || nl_addr_add(host_nl, host_idx, h->host_addr, h->prefix_len) == -1) {
        log_error("netns: configuring %s: %s", h->host_ifname, strerror(errno));
        goto fail;
    }
    alloc_unlock(job->pool, lockfd);
    lockfd = -1;

    int lo_idx = nl_ifindex(in_nl, "lo");
    int eth_idx = nl_ifindex(in_nl, NETNS_SANDBOX_IFNAME);
    if (lo_idx == 0 || eth_idx == 0 || nl_link_up(in_nl, lo_idx) == -1 ||
        nl_addr_add(in_nl, eth_idx, h->sandbox_addr, h->prefix_len) == -1 ||
        nl_link_up(in_nl, eth_idx) == -1 || nl_default_route(in_nl, eth_idx, h->host_addr) == -1) {
        log_error("netns: configuring %s inside %s: %s", NETNS_SANDBOX_IFNAME, h->name,
                  strerror(errno));
        goto fail;
    }
    rules = inner_ruleset(h);
    if (nft_run(rules, NULL, false) == -1)
        goto fail;
    job->err = 0;
    goto out;
fail:
    job->err = errno != 0 ? errno : EIO;
out:
    if (lockfd != -1)
        alloc_unlock(job->pool, lockfd);
    free(rules);
    if (in_nl != -1)
        close(in_nl);
    if (host_nl != -1)
        close(host_nl);
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Conntrack: forgetting what an earlier sandbox at the same address left behind */

#define CT_FORGET_BATCH 256 /* entries collected per dump; more means another round */

struct ct_scan {
    struct in_addr src;  /* the sandbox address whose entries go */
    struct nlmsg *dels;  /* ready-made delete requests */
    size_t n;
    bool more;           /* the batch filled up: dump again after deleting */
};

/* The IPv4 source of a CTA_TUPLE_ORIG attribute, or false if it has none. */
static bool ct_tuple_src(const struct rtattr *tuple, struct in_addr *src)
{
    int len = (int)RTA_PAYLOAD(tuple);
    for (const struct rtattr *a = RTA_DATA(tuple); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if ((a->rta_type & NLA_TYPE_MASK) != CTA_TUPLE_IP)
            continue;
        int ilen = (int)RTA_PAYLOAD(a);
        for (const struct rtattr *ip = RTA_DATA(a); RTA_OK(ip, ilen); ip = RTA_NEXT(ip, ilen))
            if ((ip->rta_type & NLA_TYPE_MASK) == CTA_IP_V4_SRC && RTA_PAYLOAD(ip) == 4) {
                memcpy(src, RTA_DATA(ip), 4);
                return true;
            }
    }
    return false;
}

/* For each dumped entry whose original source is s->src, prepares a delete request naming it
 * by its original tuple (and zone, when it has one). */
static void ct_scan_cb(const struct nlmsghdr *h, void *arg)
{
    struct ct_scan *s = arg;
    if (NFNL_MSG_TYPE(h->nlmsg_type) != IPCTNL_MSG_CT_NEW)
        return;
    const struct rtattr *tuple = NULL, *zone = NULL;
    int len = (int)(h->nlmsg_len - NLMSG_SPACE(sizeof(struct nfgenmsg)));
    const struct rtattr *a =
        (const struct rtattr *)((const char *)NLMSG_DATA(h) + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
    for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if ((a->rta_type & NLA_TYPE_MASK) == CTA_TUPLE_ORIG)
            tuple = a;
        if ((a->rta_type & NLA_TYPE_MASK) == CTA_ZONE && RTA_PAYLOAD(a) == 2)
            zone = a;
    }
    struct in_addr src;
    if (tuple == NULL || !ct_tuple_src(tuple, &src) || src.s_addr != s->src.s_addr)
        return;
    if (RTA_ALIGN(tuple->rta_len) + (zone ? RTA_ALIGN(zone->rta_len) : 0) + 64 >
        sizeof(s->dels[0].u.buf))
        return; /* no tuple is this large; skip rather than overflow */
    if (s->n == CT_FORGET_BATCH) {
        s->more = true; /* deleted in the next round */
        return;
    }
    struct nlmsg *m = &s->dels[s->n++];
    nl_init(m, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, 0);
    struct nfgenmsg g = {.nfgen_family = AF_INET, .version = NFNETLINK_V0};
    nl_put(m, &g, sizeof(g));
    nl_put(m, tuple, tuple->rta_len);
    if (zone)
        nl_put(m, zone, zone->rta_len);
}

/* Kernel-side tuple filter flag for the original source address (CTA_FILTER_F_CTA_IP_SRC in
 * the kernel's nf_internals.h, which uapi does not export). */
#define CT_FILTER_IP_SRC (1u << 0)

/* Builds the dump request for IPv4 entries; with filtered, the kernel (5.11 and later) sends
 * only those whose original source is addr, which keeps a busy host's table off the wire. */
static void ct_dump_request(struct nlmsg *m, struct in_addr addr, bool filtered)
{
    nl_init(m, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, 0);
    struct nfgenmsg g = {.nfgen_family = AF_INET, .version = NFNETLINK_V0};
    nl_put(m, &g, sizeof(g));
    if (!filtered)
        return;
    struct rtattr *tuple = nl_attr(m, CTA_TUPLE_ORIG | NLA_F_NESTED, NULL, 0);
    struct rtattr *ip = nl_attr(m, CTA_TUPLE_IP | NLA_F_NESTED, NULL, 0);
    nl_attr(m, CTA_IP_V4_SRC, &addr.s_addr, 4);
    nl_nest_end(m, ip);
    nl_nest_end(m, tuple);
    struct rtattr *filter = nl_attr(m, CTA_FILTER | NLA_F_NESTED, NULL, 0);
    uint32_t orig = CT_FILTER_IP_SRC, reply = 0;
    nl_attr(m, CTA_FILTER_ORIG_FLAGS, &orig, sizeof(orig));
    nl_attr(m, CTA_FILTER_REPLY_FLAGS, &reply, sizeof(reply));
    nl_nest_end(m, filter);
}

/* Deletes the host's connection-tracking entries whose original source is addr. Why: the
 * host table DNATs the sandbox's DNS (UDP 53) to the daemon's resolver port, and UDP entries
 * outlive a sandbox by 30-120 s. A new sandbox given the same address that picks a source port
 * an old entry still holds is NATed to the old daemon's (closed) port, and its query vanishes.
 * TCP needs no help (conntrack re-opens closed tuples), but one dump covers both. 0, or -1
 * with errno; the caller's sandbox has sent nothing yet, so no live entry is lost. */
static int conntrack_forget(struct in_addr addr)
{
    int fd = nl_open_proto(NETLINK_NETFILTER), rc = -1;
    struct ct_scan s = {.src = addr, .dels = xcalloc(CT_FORGET_BATCH, sizeof(struct nlmsg))};
    bool filtered = true;
    if (fd == -1)
        goto out;
    do {
        s.n = 0;
        s.more = false;
        struct nlmsg m;
        ct_dump_request(&m, addr, filtered);
        if (nl_dump(fd, &m, ct_scan_cb, &s) == -1) {
            if (!filtered || (errno != EINVAL && errno != EOPNOTSUPP))
                goto out;
            filtered = false; /* a kernel before 5.11: dump everything, match here */
            s.more = true;
            continue;
        }
        for (size_t i = 0; i < s.n; i++)
            if (nl_talk(fd, &s.dels[i], NULL, NULL) == -1 && errno != ENOENT)
                goto out; /* ENOENT: it expired between the dump and now */
    } while (s.more);
    rc = 0;
out:;
    int e = errno;
    free(s.dels);
    if (fd != -1)
        close(fd);
    errno = e;
    return rc;
}

/* conntrack_forget run in a thread of its own (netns_create overlaps it with the host side's
 * set-up). */
struct conntrack_job {
    struct in_addr addr;
    int rc;
    int err;
};

static void *conntrack_thread(void *arg)
{
    struct conntrack_job *job = arg;
    job->rc = conntrack_forget(job->addr);
    job->err = errno;
    return NULL;
}

/* Builds "<short>" from the sandbox id: its [a-z0-9] characters, lower-cased, at most max. */
static size_t make_short(const char *id, char *out, size_t max)
{
    size_t n = 0;
    for (; *id != '\0' && n < max; id++) {
        char c = ascii_lower(*id);
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            out[n++] = c;
    }
    out[n] = '\0';
    return n;
}

/* Sets the host link name up, from the calling thread's (host) namespace. 0, or -1 with errno. */
static int host_link_up(const char *name)
{
    int nl = nl_open(), rc = -1;
    if (nl == -1)
        return -1;
    int idx = nl_ifindex(nl, name); /* 0 with errno ENODEV */
    if (idx != 0)
        rc = nl_link_up(nl, idx);
    int e = errno;
    close(nl);
    errno = e;
    return rc;
}

/* Deletes the host link h->host_ifname (del), or sets it down and removes its address, which
 * frees the sandbox's slot in the pool at once. From the calling thread's (host) namespace. 0,
 * or -1 with errno (ENODEV: there is no such link). */
static int host_link_retire(const struct netns_handle *h, bool del)
{
    int nl = nl_open(), rc = -1;
    if (nl == -1)
        return -1;
    if (del) {
        rc = nl_link_del(nl, h->host_ifname);
        goto out;
    }
    int idx = nl_ifindex(nl, h->host_ifname);
    if (idx == 0)
        goto out;
    struct nlmsg m;
    nl_init(&m, RTM_NEWLINK, 0);
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC, .ifi_index = idx, .ifi_flags = 0, .ifi_change = IFF_UP};
    nl_put(&m, &ifi, sizeof(ifi));
    if (nl_talk(nl, &m, NULL, NULL) == -1)
        goto out;
    nl_init(&m, RTM_DELADDR, 0);
    struct ifaddrmsg ifa = {.ifa_family = AF_INET,
                            .ifa_prefixlen = (unsigned char)h->prefix_len,
                            .ifa_index = (unsigned)idx};
    nl_put(&m, &ifa, sizeof(ifa));
    nl_attr(&m, IFA_LOCAL, &h->host_addr, sizeof(h->host_addr));
    rc = nl_talk(nl, &m, NULL, NULL) == -1 && errno != EADDRNOTAVAIL ? -1 : 0;
out:;
    int e = errno;
    close(nl);
    errno = e;
    return rc;
}

/* Removes h's host link, host table and namespace mount, each only when its flag is set (a
 * failed create passes what it made itself, so it never removes a same-named sandbox that was
 * there first), and closes the namespace fd. Runs in the caller's thread (host namespace).
 *
 * The veth pair is not deleted here but set down, stripped of its address (the slot is free
 * again at once) and left to the kernel: once the namespace's last reference (the mount, h->fd;
 * callers have stopped every process in it) is gone, the kernel dismantles it in the
 * background, veth pair included. Deleting the link ourselves waits for RCU grace periods,
 * 20-30 ms of every sandbox's teardown. Down comes first and is synchronous, so from here on
 * nothing passes between the namespace and the host, even if something we do not know of keeps
 * the namespace alive; if the mount cannot be removed the link is deleted after all. */
static int teardown(struct netns_handle *h, bool link, bool table, bool mnt)
{
    int rc = 0;
    bool link_left = link;
    if (link && mnt && host_link_retire(h, false) == 0)
        link_left = false; /* down; goes with the namespace unless the unmount fails below */
    if (h->fd != -1) {
        close(h->fd);
        h->fd = -1;
    }
    if (mnt && netns_unmount(h->path) == -1) {
        rc = -1;
        link_left = link;
    }
    if (link_left && host_link_retire(h, true) == -1 && errno != ENODEV) {
        log_error("netns: deleting link %s: %s", h->host_ifname, strerror(errno));
        rc = -1;
    }
    if (table && nft_table_del("inet", h->host_table) == -1)
        rc = -1;
    return rc;
}

/* Fills h's names (short id, namespace, mount path, host link, host table) for sandbox_id, the
 * same for netns_create and netns_forget. False (logged) when the id has nothing to name it by. */
static bool handle_names(const struct netns_pool *pool, const char *sandbox_id,
                         struct netns_handle *h)
{
    size_t max = 15 - strlen(pool->link_prefix) - 1;
    if (max > NETNS_SHORT_MAX)
        max = NETNS_SHORT_MAX;
    if (make_short(sandbox_id, h->short_id, max) == 0) {
        log_error("netns: sandbox id \"%s\" has no [a-z0-9] characters to name it by", sandbox_id);
        return false;
    }
    snprintf(h->name, sizeof(h->name), "%s-%s", pool->name_prefix, h->short_id);
    snprintf(h->path, sizeof(h->path), "%s/%s", NETNS_RUN_DIR, h->name);
    snprintf(h->host_ifname, sizeof(h->host_ifname), "%s-%s", pool->link_prefix, h->short_id);
    snprintf(h->host_table, sizeof(h->host_table), "%s_%s", pool->name_prefix, h->short_id);
    return true;
}

/* See netns.h. */
struct netns_handle *netns_create(struct netns_pool *pool, const char *sandbox_id,
                                  uint16_t transparent_port, uint16_t dns_port)
{
    struct netns_handle *h = NULL;
    char *rules = NULL;
    int err = 0;
    struct conntrack_job ct_job = {.rc = 0};
    pthread_t ct_tid;
    bool ct_running = false;
    if (pool == NULL || sandbox_id == NULL || transparent_port == 0 || dns_port == 0 ||
        transparent_port == dns_port) {
        err = EINVAL;
        goto fail;
    }
    h = xcalloc(1, sizeof(*h));
    h->fd = -1;
    if (!handle_names(pool, sandbox_id, h)) {
        err = EINVAL;
        goto fail;
    }
    h->transparent_port = transparent_port;
    h->dns_port = dns_port;
    if (run_dir_prepare() == -1) {
        err = errno;
        goto fail;
    }

    struct create_job job = {.pool = pool, .h = h};
    pthread_t tid;
    int prc = pthread_create(&tid, NULL, create_thread, &job);
    if (prc != 0) {
        log_error("netns: pthread_create: %s", strerror(prc));
        err = prc;
        goto fail;
    }
    pthread_join(tid, NULL);
    if (job.err != 0) {
        err = job.err;
        teardown(h, job.made_link, false, job.made_mount);
        goto fail;
    }
    /* Stale connection tracking for the sandbox's address is cleared meanwhile, in a thread:
     * the kernel walks its whole table for it (milliseconds on a busy host) while the host end
     * comes up and the host table loads. Nothing runs in the sandbox yet, so nothing new can be
     * tracked for its address before the join below. */
    ct_job.addr = h->sandbox_addr;
    ct_running = pthread_create(&ct_tid, NULL, conntrack_thread, &ct_job) == 0;
    if (!ct_running)
        conntrack_thread(&ct_job);
    /* The host end needs no IPv6 either (no router solicitations towards the sandbox); off
     * while it is still down, then up. */
    char *sysctl = xasprintf("/proc/sys/net/ipv6/conf/%s/disable_ipv6", h->host_ifname);
    if (write_sysctl(sysctl, "1", true) == -1)
        log_warn("netns: IPv6 stays enabled on %s (the host table drops it anyway)",
                 h->host_ifname);
    free(sysctl);
    if (host_link_up(h->host_ifname) == -1) {
        err = errno;
        log_error("netns: bringing %s up: %s", h->host_ifname, strerror(errno));
        teardown(h, true, false, true);
        goto fail;
    }
    rules = host_ruleset(h);
    if (nft_run(rules, NULL, false) == -1) {
        err = EIO;
        teardown(h, true, true, true);
        goto fail;
    }
    free(rules);
    if (ct_running)
        pthread_join(ct_tid, NULL);
    if (ct_job.rc == -1)
        log_warn("netns: clearing stale connection tracking for %s: %s (its first UDP "
                 "packets may be lost)", h->name, strerror(ct_job.err));
    char sb[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &h->sandbox_addr, sb, sizeof(sb));
    log_debug("netns: created %s (%s), sandbox address %s", h->name, h->host_ifname, sb);
    return h;
fail:
    if (ct_running)
        pthread_join(ct_tid, NULL);
    free(rules);
    free(h);
    errno = err;
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Destroy, enter, reconcile */

/* See netns.h. */
int netns_destroy(struct netns_handle *h)
{
    if (h == NULL || h->destroyed)
        return 0;
    if (teardown(h, true, true, true) == -1)
        return -1;
    h->destroyed = true;
    log_debug("netns: destroyed %s", h->name);
    return 0;
}

/* See netns.h. Each object only if present; the link is deleted outright (no address to keep). */
int netns_forget(struct netns_pool *pool, const char *sandbox_id)
{
    struct netns_handle h = {.fd = -1};
    if (pool == NULL || sandbox_id == NULL || !handle_names(pool, sandbox_id, &h))
        return -1;
    int rc = 0;
    if (netns_unmount(h.path) == -1)
        rc = -1;
    if (host_link_retire(&h, true) == -1 && errno != ENODEV) {
        log_error("netns: deleting link %s: %s", h.host_ifname, strerror(errno));
        rc = -1;
    }
    if (nft_table_del("inet", h.host_table) == -1)
        rc = -1;
    if (rc == 0)
        log_info("netns: removed what sandbox %s left (%s)", sandbox_id, h.name);
    return rc;
}

void netns_free(struct netns_handle *h)
{
    if (h == NULL)
        return;
    netns_destroy(h);
    if (h->fd != -1)
        close(h->fd);
    free(h);
}

/* See netns.h. Only setns(): nothing here allocates or logs, so it is safe after fork(). */
int netns_enter(const struct netns_handle *h)
{
    if (h == NULL || h->fd == -1) {
        errno = EBADF;
        return -1;
    }
    return setns(h->fd, CLONE_NEWNET);
}

struct link_scan {
    const char *prefix; /* "<link_prefix>-" */
    char **names;
    size_t n;
};

/* Collects veth links whose name starts with the prefix. */
static void link_scan_cb(const struct nlmsghdr *h, void *arg)
{
    struct link_scan *s = arg;
    if (h->nlmsg_type != RTM_NEWLINK)
        return;
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    int len = (int)IFLA_PAYLOAD(h);
    const char *name = NULL;
    bool veth = false;
    for (const struct rtattr *rta = IFLA_RTA(ifi); RTA_OK(rta, len); rta = RTA_NEXT(rta, len)) {
        if (rta->rta_type == IFLA_IFNAME && RTA_PAYLOAD(rta) > 0)
            name = RTA_DATA(rta);
        if (rta->rta_type == IFLA_LINKINFO) {
            int ilen = (int)RTA_PAYLOAD(rta);
            for (const struct rtattr *in = RTA_DATA(rta); RTA_OK(in, ilen); in = RTA_NEXT(in, ilen))
                if (in->rta_type == IFLA_INFO_KIND && RTA_PAYLOAD(in) >= 5 &&
                    memcmp(RTA_DATA(in), "veth", 5) == 0)
                    veth = true;
        }
    }
    if (name == NULL || !veth || strnlen(name, IFNAMSIZ) >= IFNAMSIZ ||
        strncmp(name, s->prefix, strlen(s->prefix)) != 0)
        return;
    s->names = xrealloc(s->names, (s->n + 1) * sizeof(*s->names));
    s->names[s->n++] = xstrdup(name);
}

/* See netns.h. Best effort over all three kinds of object: one failure does not stop the rest. */
int netns_reconcile(const struct netns_pool_config *cfg)
{
    char *err = NULL;
    struct netns_pool *pool = netns_pool_new(cfg, &err);
    if (pool == NULL) {
        log_error("%s", err);
        free(err);
        return -1;
    }
    int removed = 0;
    bool failed = false;
    int nl = -1;
    char *ns_prefix = xasprintf("%s-", pool->name_prefix);
    char *table_prefix = xasprintf("%s_", pool->name_prefix);
    struct link_scan ls = {.prefix = xasprintf("%s-", pool->link_prefix)};
    char *tables = NULL;

    DIR *d = opendir(NETNS_RUN_DIR);
    if (d == NULL && errno != ENOENT) {
        log_error("netns: opendir %s: %s", NETNS_RUN_DIR, strerror(errno));
        failed = true;
    }
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, ns_prefix, strlen(ns_prefix)) != 0)
            continue;
        char *path = xasprintf("%s/%s", NETNS_RUN_DIR, e->d_name);
        if (netns_unmount(path) == 0) {
            removed++;
            log_info("netns: reconcile removed namespace %s", e->d_name);
        } else {
            failed = true;
        }
        free(path);
    }
    if (d != NULL)
        closedir(d);

    nl = nl_open();
    struct nlmsg m;
    nl_init(&m, RTM_GETLINK, 0);
    nl_put(&m, NULL, sizeof(struct ifinfomsg));
    if (nl == -1 || nl_dump(nl, &m, link_scan_cb, &ls) == -1) {
        log_error("netns: listing links: %s", strerror(errno));
        failed = true;
    }
    for (size_t i = 0; i < ls.n; i++) {
        if (nl_link_del(nl, ls.names[i]) == 0) {
            removed++;
            log_info("netns: reconcile removed link %s", ls.names[i]);
        } else {
            log_error("netns: deleting link %s: %s", ls.names[i], strerror(errno));
            failed = true;
        }
    }

    if (nft_run("list tables\n", &tables, false) == -1) {
        failed = true;
    } else {
        /* Lines look like "table inet authproxy_0b6e3c52a1f4". */
        char *save = NULL;
        for (char *line = strtok_r(tables, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            char family[16], name[256];
            if (sscanf(line, "table %15s %255s", family, name) != 2 ||
                strncmp(name, table_prefix, strlen(table_prefix)) != 0)
                continue;
            if (nft_table_del(family, name) == 0) {
                removed++;
                log_info("netns: reconcile removed nft table %s %s", family, name);
            } else {
                failed = true;
            }
        }
    }

    if (nl != -1)
        close(nl);
    for (size_t i = 0; i < ls.n; i++)
        free(ls.names[i]);
    free(ls.names);
    free((char *)ls.prefix);
    free(tables);
    free(ns_prefix);
    free(table_prefix);
    netns_pool_free(pool);
    return failed ? -1 : removed;
}
