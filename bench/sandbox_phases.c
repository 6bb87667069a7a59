/* bench/sandbox_phases.c — where a sandbox's start goes, phase by phase (issue 4 "Performance").
 *
 * Times the host-side pieces a sandbox is made of, each through the same public functions the
 * daemon and `authproxy sandbox run` call, over N rounds, and prints one line per phase:
 *
 *   PHASE <name> n=<runs> median_ms=<..> p90_ms=<..> min_ms=<..> max_ms=<..>
 *
 * Phases, in the order a sandbox meets them:
 *   netns_create     network namespace + veth + addresses + route + both nft tables (libnftables)
 *   cgroup_create    the cgroup directories and limits (cpu, memory, pids)
 *   jail_spawn       clone of the sandbox init, its mounts (the read-only host view, /dev, /proc,
 *                    /tmp, binds), fork of the command, capability drop, seccomp, until execve
 *                    of the command has succeeded (jail_spawn returns)
 *   jail_exit        from there until `true` has exited and init is reaped
 *   cgroup_destroy, netns_destroy   the teardown
 *   host_start       box_runtime_host_start as `sandbox run` calls it (no disk)
 *   host_start_disk  the same with the disk image of an API box (-d BYTES, default 1 GiB) as
 *                    the daemon makes it: a copy of the pristine image of that size kept in a
 *                    cache dir (made by mkfs.ext4 in round 0, before the timed rounds), loop
 *                    device, mount
 *   host_start_mkfs  the same with mkfs.ext4 run for the new image (no cache dir): what the copy
 *                    saves
 *   host_remount     host_start again on an existing image (a stopped box that starts again)
 *   host_stop        box_runtime_host_stop
 *   jail_spawn_nonet jail_spawn in a fresh empty network namespace and no cgroup (the jail
 *                    alone, for comparison)
 *
 * With -k K, K other sandbox networks stay up meanwhile (a host that runs K boxes): their host
 * nft tables are what libnftables reads into its cache on every change of the host's ruleset.
 *
 * Usage: sandbox_phases [-n RUNS] [-d DISK_BYTES] [-c COMMAND] [-k K]   (root; scratch in /tmp)
 * The objects are named "apbench..." so they never collide with a daemon's; everything is
 * removed after each round. Built by bench/sandbox.sh against build/libauthproxy.a. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "box_runtime.h"
#include "cgroup.h"
#include "jail.h"
#include "log.h"
#include "netns.h"
#include "util.h"

enum phase {
    P_NETNS,
    P_CGROUP,
    P_SPAWN,
    P_EXIT,
    P_CGROUP_DEL,
    P_NETNS_DEL,
    P_HOST,
    P_HOST_DISK,
    P_HOST_MKFS,
    P_HOST_REMOUNT,
    P_HOST_STOP,
    P_SPAWN_NONET,
    P_COUNT
};

static const char *const phase_names[P_COUNT] = {
    "netns_create",    "cgroup_create", "jail_spawn", "jail_exit",
    "cgroup_destroy",  "netns_destroy", "host_start", "host_start_disk",
    "host_start_mkfs", "host_remount",  "host_stop",  "jail_spawn_nonet",
};

struct samples {
    double *v;
    size_t n;
};

static void add(struct samples *s, enum phase p, uint64_t t0, uint64_t t1)
{
    s[p].v[s[p].n++] = (double)(t1 - t0) / 1000.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v. */
static double pct(const double *v, size_t n, double q)
{
    size_t i = (size_t)(q * (double)n + 0.999999);
    return v[(i == 0 ? 1 : i > n ? n : i) - 1];
}

/* Runs argv once in a jail (netns fd or a fresh one, cgroup or none), timing spawn and exit. */
static int run_jail(const char *const *argv, int netns_fd, struct cgroup *cg, const char *ws,
                    uint64_t *t_spawned, uint64_t *t_exited, char *err, size_t errlen)
{
    struct jail_spec spec;
    struct jail_proc proc;
    struct jail_status st;
    memset(&spec, 0, sizeof(spec));
    spec.argv = argv;
    spec.netns_fd = netns_fd;
    spec.cgroup = cg;
    spec.workspace = ws;
    spec.uid = spec.gid = BOX_RUNTIME_UID;
    if (jail_spawn(&spec, &proc, err, errlen) != 0)
        return -1;
    *t_spawned = monotonic_us();
    while (jail_wait(&proc, true, &st) == 0)
        ;
    *t_exited = monotonic_us();
    jail_proc_close(&proc);
    if (st.exit_code != 0) {
        snprintf(err, errlen, "the command exited with %d (signal %d)", st.exit_code, st.signal);
        return -1;
    }
    return 0;
}

/* A sandbox's host side as the harness makes it (ports where nothing listens: no traffic). */
static struct box_host_config host_config(const char *id, const char *dir, struct netns_pool *pool,
                                          struct cgroup_tree *tree, const struct cgroup_limits *lim,
                                          uint64_t disk, const char *cache)
{
    struct box_host_config hc = {
        .id = id,
        .dir = dir,
        .pool = pool,
        .transparent_port = 40001,
        .dns_port = 40002,
        .cgroups = tree,
        .limits = *lim,
        .disk_bytes = disk,
        .disk_cache_dir = cache,
    };
    return hc;
}

int main(int argc, char **argv)
{
    int runs = 30, opt, rc = 1, keep = 0;
    struct netns_handle **bg = NULL;
    uint64_t disk = 1ull << 30;
    const char *cmd = "true";
    char err[512], dir[] = "/tmp/apbench-phases-XXXXXX";
    struct netns_pool *pool = NULL;
    struct cgroup_tree *tree = NULL;
    struct samples s[P_COUNT];
    char *pool_err = NULL, *ws = NULL, *cache = NULL;
    bool have_dir = false;

    memset(s, 0, sizeof(s));
    while ((opt = getopt(argc, argv, "n:d:c:k:")) != -1) {
        if (opt == 'n')
            runs = atoi(optarg);
        else if (opt == 'k')
            keep = atoi(optarg) > 0 ? atoi(optarg) : 0;
        else if (opt == 'd')
            disk = strtoull(optarg, NULL, 10);
        else if (opt == 'c')
            cmd = optarg;
        else {
            fprintf(stderr, "usage: %s [-n RUNS] [-d DISK_BYTES] [-c COMMAND] [-k K]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1)
        runs = 1;
    const char *const cmd_argv[] = {cmd, NULL};
    for (int p = 0; p < P_COUNT; p++)
        s[p].v = xcalloc((size_t)runs, sizeof(double));

    struct netns_pool_config pc = {.name_prefix = "apbench", .link_prefix = "apb"};
    pool = netns_pool_new(&pc, &pool_err);
    if (pool == NULL) {
        fprintf(stderr, "netns pool: %s\n", pool_err != NULL ? pool_err : "?");
        goto out;
    }
    (void)netns_reconcile(&pc);
    tree = cgroup_tree_open("apbench", err, sizeof(err));
    if (tree == NULL) {
        fprintf(stderr, "cgroups: %s\n", err);
        goto out;
    }
    (void)cgroup_reconcile(tree, NULL, 0);
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        goto out;
    }
    have_dir = true;
    chmod(dir, 0755);
    ws = xasprintf("%s/ws", dir);
    if (mkdir(ws, 0777) == -1 || chmod(ws, 0777) == -1) {
        perror("mkdir");
        goto out;
    }
    struct cgroup_limits lim = {
        .cpu_millicores = 1000, .mem_bytes = 512u << 20, .pids_max = BOX_RUNTIME_PIDS_MAX};
    cache = xasprintf("%s/cache", dir);
    if (mkdir(cache, 0700) == -1) {
        perror("mkdir");
        goto out;
    }
    { /* round 0: the daemon's first box of this size makes the template */
        char *hdir = xasprintf("%s/warm", dir);
        struct box_host_config hc = host_config("phwarm", hdir, pool, tree, &lim, disk, cache);
        struct box_host *h = box_runtime_host_start(&hc, err, sizeof(err));
        if (h == NULL) {
            fprintf(stderr, "host_start: %s\n", err);
            free(hdir);
            goto out;
        }
        box_runtime_host_stop(h);
        (void)box_runtime_remove_tree(hdir);
        free(hdir);
    }

    bg = xcalloc((size_t)keep + 1, sizeof(*bg));
    for (int i = 0; i < keep; i++) {
        char id[32];
        snprintf(id, sizeof(id), "bg%08d", i);
        bg[i] = netns_create(pool, id, 40001, 40002);
        if (bg[i] == NULL) {
            fprintf(stderr, "netns_create (background %d): %s\n", i, strerror(errno));
            goto out;
        }
    }

    for (int i = 0; i < runs; i++) {
        char id[32];
        uint64_t t0, t1, t2, t3;

        /* The pieces one by one. */
        snprintf(id, sizeof(id), "ph%08d", i);
        t0 = monotonic_us();
        struct netns_handle *net = netns_create(pool, id, 40001, 40002);
        t1 = monotonic_us();
        if (net == NULL) {
            fprintf(stderr, "netns_create: %s\n", strerror(errno));
            goto out;
        }
        add(s, P_NETNS, t0, t1);
        t0 = monotonic_us();
        struct cgroup *cg = cgroup_create(tree, id, &lim, err, sizeof(err));
        t1 = monotonic_us();
        if (cg == NULL) {
            fprintf(stderr, "cgroup_create: %s\n", err);
            netns_free(net);
            goto out;
        }
        add(s, P_CGROUP, t0, t1);
        t0 = monotonic_us();
        if (run_jail(cmd_argv, net->fd, cg, ws, &t2, &t3, err, sizeof(err)) == -1) {
            fprintf(stderr, "jail: %s\n", err);
            cgroup_destroy(cg);
            netns_free(net);
            goto out;
        }
        add(s, P_SPAWN, t0, t2);
        add(s, P_EXIT, t2, t3);
        t0 = monotonic_us();
        cgroup_destroy(cg);
        t1 = monotonic_us();
        netns_free(net);
        t2 = monotonic_us();
        add(s, P_CGROUP_DEL, t0, t1);
        add(s, P_NETNS_DEL, t1, t2);

        /* box_runtime_host_start as sandbox run (no disk) and the daemon (a disk copied from
         * the cache; then again on that image) call it, and with mkfs.ext4 per disk. */
        for (int kind = 0; kind < 3; kind++) {
            char *hdir = xasprintf("%s/h%d-%d", dir, i, kind);
            char hid[32];
            struct box_host_config hc = host_config(hid, hdir, pool, tree, &lim, kind > 0 ? disk : 0,
                                                    kind == 1 ? cache : NULL);
            for (int again = 0; again < (kind == 1 ? 2 : 1); again++) {
                /* An id of its own for every start, as every sandbox run and box has: reusing
                 * one would meet the previous start's veth still going away with its namespace
                 * and time its synchronous removal (netns.c) instead of a start. */
                snprintf(hid, sizeof(hid), "h%06dk%da%d", i, kind, again);
                t0 = monotonic_us();
                struct box_host *h = box_runtime_host_start(&hc, err, sizeof(err));
                t1 = monotonic_us();
                if (h == NULL) {
                    fprintf(stderr, "host_start: %s\n", err);
                    free(hdir);
                    goto out;
                }
                add(s,
                    kind == 0   ? P_HOST
                    : kind == 2 ? P_HOST_MKFS
                    : again     ? P_HOST_REMOUNT
                                : P_HOST_DISK,
                    t0, t1);
                t0 = monotonic_us();
                box_runtime_host_stop(h);
                t1 = monotonic_us();
                if (kind == 0)
                    add(s, P_HOST_STOP, t0, t1);
            }
            (void)box_runtime_remove_tree(hdir);
            free(hdir);
        }
    }

    /* The jail alone, in rounds of its own: the kernel tears each one's fresh network
     * namespace down in the background, which slows a namespace created right after. */
    for (int i = 0; i < runs; i++) {
        uint64_t t0 = monotonic_us(), t2, t3;
        if (run_jail(cmd_argv, -1, NULL, ws, &t2, &t3, err, sizeof(err)) == -1) {
            fprintf(stderr, "jail: %s\n", err);
            goto out;
        }
        add(s, P_SPAWN_NONET, t0, t2);
    }

    for (int p = 0; p < P_COUNT; p++) {
        if (s[p].n == 0)
            continue;
        qsort(s[p].v, s[p].n, sizeof(double), cmp_double);
        printf("PHASE %s n=%zu median_ms=%.2f p90_ms=%.2f min_ms=%.2f max_ms=%.2f\n",
               phase_names[p], s[p].n, pct(s[p].v, s[p].n, 0.5), pct(s[p].v, s[p].n, 0.9),
               s[p].v[0], s[p].v[s[p].n - 1]);
    }
    rc = 0;
out:
    for (int i = 0; bg != NULL && i < keep; i++)
        netns_free(bg[i]);
    free(bg);
    for (int p = 0; p < P_COUNT; p++)
        free(s[p].v);
    if (have_dir)
        (void)box_runtime_remove_tree(dir);
    free(ws);
    free(cache);
    free(pool_err);
    if (tree != NULL) {
        (void)cgroup_reconcile(tree, NULL, 0);
        (void)cgroup_tree_remove(tree);
    }
    cgroup_tree_free(tree);
    netns_pool_free(pool);
    return rc;
}
