/* netns: one network namespace per sandbox whose only path leads to authproxy (SPEC §5).
 *
 * What a sandbox gets from netns_create():
 *   - a network namespace, bind-mounted at /run/netns/<prefix>-<short> (so `ip netns` lists it
 *     and an operator can `ip netns exec` into it) and held open as an fd in the handle;
 *   - a veth pair: host end <link_prefix>-<short> (default "ap-<short>") in the host namespace,
 *     sandbox end "eth0" inside; one /30 of the pool per sandbox (host end .1, sandbox .2);
 *   - inside: lo and eth0 up, a default route via the host end and no other route, IPv6
 *     disabled (net.ipv6.conf.{all,default}.disable_ipv6=1 in that namespace), and an nft table
 *     `inet authproxy` that only lets out TCP, UDP/TCP to port 53 and ICMP echo (defence in
 *     depth: a sandbox holding no CAP_NET_ADMIN cannot change it, one that did would still meet
 *     the host table);
 *   - on the host: an nft table `inet <prefix>_<short>` hooked on the host end that DNATs every
 *     TCP connection (any address, any port) to host_addr:transparent_port, UDP and TCP to port
 *     53 to host_addr:dns_port, drops every other UDP, all IPv6, ICMP except echo to host_addr,
 *     and forwards nothing from or to the sandbox.
 *
 * Why the DNAT is on the host side: the proxy recovers the original destination with
 * getsockopt(SO_ORIGINAL_DST), which reads the conntrack entry of the *listening socket's*
 * namespace. A DNAT done inside the sandbox namespace lives in that namespace's conntrack; the
 * host sees a plain connection to host_addr:port and SO_ORIGINAL_DST fails with ENOENT (verified
 * on this kernel, and by tests/unit/test_netns.c). Done at host prerouting on the veth,
 * SO_ORIGINAL_DST returns the address the sandbox dialled. The DNAT happens before routing, so
 * nothing the sandbox sends is ever routed off the machine.
 *
 * What the data path must do (integrator):
 *   - bind the transparent TCP listener and the DNS listeners (UDP and TCP) where host_addr
 *     reaches them: 0.0.0.0:port (or each host end). Not 127.0.0.1: a DNAT to loopback from
 *     another interface is a martian. Since 0.0.0.0 is also reachable from the host's other
 *     interfaces, accept only peers inside the pool (netns_pool_contains()) and identify the
 *     sandbox by the peer address (handle->sandbox_addr), never by anything the client sends.
 *   - SO_ORIGINAL_DST may name host_addr itself (the sandbox dialled the host end directly);
 *     treat that as a connection to authproxy and refuse it.
 *
 * Addresses: the allocator takes the lowest /30 of the pool that overlaps no IPv4 address (with
 * its prefix) configured on any host interface, scanned at each create under an flock on
 * lock_path. Sandboxes of a crashed run, another authproxy process, or an operator's network in
 * the same range are therefore never handed out twice, and releasing an address is simply
 * deleting the link. Creates in one process are serialised by a mutex as well.
 *
 * Threads: netns_create() does the work inside the new namespace on a short-lived helper
 * thread, so the calling thread never changes namespace; the caller must itself be in the host
 * namespace (the host end and the host table go where the caller is). libnftables calls are
 * serialised process-wide. All functions need CAP_NET_ADMIN and CAP_SYS_ADMIN (root).
 *
 * Names: <short> is the first 12 [a-z0-9] characters of the sandbox id (a UUID gives 48 random
 * bits), fewer when link_prefix is longer than 2 characters (interface names are at most 15). */
#ifndef AUTHPROXY_NETNS_H
#define AUTHPROXY_NETNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#define NETNS_DEFAULT_POOL        "10.200.0.0/16"
#define NETNS_DEFAULT_PREFIX      "authproxy"
#define NETNS_DEFAULT_LINK_PREFIX "ap"
#define NETNS_DEFAULT_LOCK_PATH   "/run/authproxy-netns.lock"
#define NETNS_RUN_DIR             "/run/netns"
#define NETNS_SHORT_MAX           12
#define NETNS_SANDBOX_IFNAME      "eth0"

/* Every field may be NULL/0 for its default. Strings are copied by netns_pool_new(). */
struct netns_pool_config {
    const char *pool_cidr;   /* IPv4 CIDR, prefix length 8..30; default NETNS_DEFAULT_POOL */
    const char *name_prefix; /* netns "<p>-<short>", host table "<p>_<short>"; [a-z0-9_], <= 24 */
    const char *link_prefix; /* host link "<p>-<short>"; [a-z0-9], 1..4 characters */
    const char *lock_path;   /* allocator lock file shared by every authproxy process */
};

struct netns_pool; /* opaque: the parsed configuration and the in-process allocator lock */

/* One sandbox's network. Every field is filled by netns_create() and read-only for callers. */
struct netns_handle {
    char short_id[NETNS_SHORT_MAX + 1];
    char name[48];               /* namespace name, as `ip netns` shows it */
    char path[80];               /* NETNS_RUN_DIR "/" name: the bind mount */
    char host_ifname[16];        /* host end of the veth */
    char host_table[48];         /* host nft table (family inet) */
    int fd;                      /* namespace fd, O_CLOEXEC; -1 once destroyed */
    struct in_addr host_addr;    /* host end: the proxy's address as the sandbox sees it */
    struct in_addr sandbox_addr; /* eth0 inside: the source address of the sandbox's traffic */
    unsigned prefix_len;         /* 30 */
    uint16_t transparent_port;   /* every TCP connection lands here (host byte order) */
    uint16_t dns_port;           /* UDP and TCP port 53 land here (host byte order) */
    bool destroyed;
};

/* Parses cfg (NULL means all defaults). NULL on an invalid configuration, with a message naming
 * the field in *err (caller frees) when err is not NULL. The caller owns the pool and frees it
 * with netns_pool_free(), which may happen while handles are alive (they hold copies). */
struct netns_pool *netns_pool_new(const struct netns_pool_config *cfg, char **err);
void netns_pool_free(struct netns_pool *pool);

/* True when addr (network byte order) lies inside the pool: a peer of the transparent or DNS
 * listener that is a sandbox. */
bool netns_pool_contains(const struct netns_pool *pool, struct in_addr addr);

/* Creates the namespace, veth pair, addresses, route and nft tables of one sandbox (see the
 * top of this file). Returns a handle owned by the caller (release with netns_free()), or NULL
 * with errno set and the reason logged; nothing is left behind on failure. EEXIST: a sandbox
 * with the same short id exists; ENOSPC: the pool is exhausted. Thread-safe. */
struct netns_handle *netns_create(struct netns_pool *pool, const char *sandbox_id,
                                  uint16_t transparent_port, uint16_t dns_port);

/* Removes the host link (which takes eth0 with it), the host nft table and the namespace's
 * bind mount, closes the fd, and so releases the address. Idempotent: a second call, or a call
 * on parts already gone, succeeds. 0, or -1 if some part could not be removed (logged; the
 * next call or netns_reconcile() retries). The handle stays allocated. */
int netns_destroy(struct netns_handle *h);

/* Removes what a sandbox of this id left when its owner died without netns_destroy (a killed
 * `sandbox run`): the namespace mount, the host link and the host nft table, each if there.
 * The caller makes sure nobody alive owns the id. 0, or -1 when something could not be removed
 * (logged). */
int netns_forget(struct netns_pool *pool, const char *sandbox_id);
/* netns_destroy() when not done yet, then frees h. NULL is allowed. */
void netns_free(struct netns_handle *h);

/* Moves the calling thread into the sandbox's namespace (setns(fd, CLONE_NEWNET)): for a child
 * process between fork() and exec(), or a thread that will never serve the host again.
 * 0, or -1 with errno. Async-signal-safe. */
int netns_enter(const struct netns_handle *h);

/* Crash recovery, called by the daemon at start-up before any netns_create(): removes every
 * namespace named <name_prefix>-*, veth link named <link_prefix>-* and nft table named
 * <name_prefix>_* left on the host. cfg NULL means the defaults. Everything with those names is
 * assumed to be this deployment's: two daemons on one host must use different prefixes.
 * Returns the number of objects removed, or -1 if some could not be (logged). */
int netns_reconcile(const struct netns_pool_config *cfg);

#endif
