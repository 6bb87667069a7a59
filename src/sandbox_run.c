#include "sandbox_run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "box_runtime.h"
#include "cgroup.h"
#include "config.h"
#include "jail.h"
#include "log.h"
#include "netns.h"
#include "serve.h"
#include "util.h"

/* Every running `sandbox run` holds an flock on SANDBOX_RUN_LOCK_DIR/<id>.lock; the kernel
 * drops it however the process ends. A run that was killed or crashed leaves its lock file
 * unlocked, and the next `sandbox run` removes what it left (reap_dead_runs): the network
 * (netns_forget), the cgroup and SANDBOX_RUN_TMP_PREFIX<id>. */
#define SANDBOX_RUN_LOCK_DIR   "/run/authproxy/sandbox-run"
#define SANDBOX_RUN_TMP_PREFIX "/tmp/authproxy-sandbox-"
#define SANDBOX_RUN_ID_LEN     24 /* hex characters */

static void *server_thread(void *arg)
{
    server_run(arg);
    return NULL;
}

/* mkdir -p of SANDBOX_RUN_LOCK_DIR, mode 0700. */
static int lock_dir_prepare(void)
{
    if (mkdir("/run/authproxy", 0700) == -1 && errno != EEXIST)
        return -1;
    if (mkdir(SANDBOX_RUN_LOCK_DIR, 0700) == -1 && errno != EEXIST)
        return -1;
    return 0;
}

/* Takes this run's lock file for id and holds its flock. The file is checked to be the one at
 * the path once locked: a reaper may have unlinked it between our open and our lock (it saw
 * it unlocked), and a lock on an unlinked file would make this run invisible. The fd, or -1
 * (logged). */
static int run_lock_take(const char *id)
{
    char path[sizeof(SANDBOX_RUN_LOCK_DIR) + SANDBOX_RUN_ID_LEN + 8];
    snprintf(path, sizeof(path), "%s/%s.lock", SANDBOX_RUN_LOCK_DIR, id);
    if (lock_dir_prepare() == -1) {
        log_error("sandbox run: cannot create %s: %s", SANDBOX_RUN_LOCK_DIR, strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd == -1)
            break;
        struct stat held, at_path;
        if (flock(fd, LOCK_EX) == 0 && fstat(fd, &held) == 0 && stat(path, &at_path) == 0 &&
            held.st_dev == at_path.st_dev && held.st_ino == at_path.st_ino)
            return fd;
        close(fd);
    }
    log_error("sandbox run: cannot take the lock file %s: %s", path, strerror(errno));
    return -1;
}

/* True when name is "<SANDBOX_RUN_ID_LEN lower-case hex>.lock"; copies the id into id. */
static bool lock_name_id(const char *name, char id[SANDBOX_RUN_ID_LEN + 1])
{
    if (strlen(name) != SANDBOX_RUN_ID_LEN + 5 || strcmp(name + SANDBOX_RUN_ID_LEN, ".lock") != 0)
        return false;
    for (size_t i = 0; i < SANDBOX_RUN_ID_LEN; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    memcpy(id, name, SANDBOX_RUN_ID_LEN);
    id[SANDBOX_RUN_ID_LEN] = '\0';
    return true;
}

/* Removes what dead `sandbox run`s left (see SANDBOX_RUN_LOCK_DIR): for each lock file nobody
 * holds, its network, cgroup and temporary directory, then the lock file itself (while holding
 * it, so two reapers never work on one). A lock that is held belongs to a live run (or to a
 * process of its sandbox that outlived it) and is left alone. Best effort: failures are
 * logged, and the lock file stays for the next run to retry. */
static void reap_dead_runs(struct netns_pool *pool, struct cgroup_tree *tree)
{
    DIR *d = opendir(SANDBOX_RUN_LOCK_DIR);
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char id[SANDBOX_RUN_ID_LEN + 1];
        if (!lock_name_id(e->d_name, id))
            continue;
        char path[sizeof(SANDBOX_RUN_LOCK_DIR) + SANDBOX_RUN_ID_LEN + 8];
        snprintf(path, sizeof(path), "%s/%s.lock", SANDBOX_RUN_LOCK_DIR, id);
        int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd == -1)
            continue;
        struct stat st;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, &st) == 0 && st.st_nlink > 0) {
            log_info("sandbox run: sandbox %s was left by a run that did not finish; removing it",
                     id);
            char tmp[sizeof(SANDBOX_RUN_TMP_PREFIX) + SANDBOX_RUN_ID_LEN];
            snprintf(tmp, sizeof(tmp), "%s%s", SANDBOX_RUN_TMP_PREFIX, id);
            int rc = netns_forget(pool, id);
            if (cgroup_forget(tree, id) == -1)
                rc = -1;
            if (box_runtime_remove_tree(tmp) == -1) {
                log_error("sandbox run: removing %s: %s", tmp, strerror(errno));
                rc = -1;
            }
            if (rc == 0)
                (void)unlink(path);
        }
        close(fd);
    }
    closedir(d);
}

/* One box_runtime_host_start run on a thread of its own (host_start_thread). */
struct host_start_job {
    const struct box_host_config *config;
    struct box_host *host; /* the result; NULL and err set on failure */
    char err[512];
};

/* The host side of the sandbox (network namespace, veth, nft rules, cgroup: most of a run's
 * start) runs here while the caller writes the CA bundle, which the host side only names. */
static void *host_start_thread(void *arg)
{
    struct host_start_job *job = arg;
    job->host = box_runtime_host_start(job->config, job->err, sizeof(job->err));
    return NULL;
}

#define HEAP_RESERVE (12u << 20) /* heap grown at once at start: more than a run uses */
#define HUGE_PAGE    (2u << 20)

/* Grows the heap by HEAP_RESERVE at once, asks for transparent huge pages on its 2 MiB-aligned
 * part, and gives it back to malloc, which keeps it as free space at the top of the heap (the
 * trim threshold is above it). What the run allocates later comes from there and faults in one
 * 2 MiB page at a time instead of 512 pages of 4 KiB; on this VM a page fault costs about
 * 20 us. The part below the first 2 MiB boundary cannot be a huge page, so a block that stays
 * allocated (returned; the caller frees it at the end) fills it and the run's allocations
 * start at the boundary; untouched, it costs no memory. Best effort: with THP off ("never")
 * or when the heap cannot grow, nothing changes. Raises M_MMAP_THRESHOLD for its own blocks;
 * the caller sets its own value afterwards. Needs sandbox_run's one arena and trim threshold. */
static void *heap_reserve_huge(void)
{
    void *head = NULL;
    (void)mallopt(M_MMAP_THRESHOLD, (int)(2 * HEAP_RESERVE)); /* from the heap, not an mmap */
    char *p = malloc(HEAP_RESERVE);
    if (p != NULL) {
        uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
        uintptr_t end = ((uintptr_t)p + HEAP_RESERVE) & ~(uintptr_t)(HUGE_PAGE - 1);
        bool huge = end > start && madvise((void *)start, end - start, MADV_HUGEPAGE) == 0;
        free(p);
        /* Still under the raised threshold, so from the heap, where p was; malloc's chunk
         * header (16 bytes) comes before the next block's own. */
        if (huge && start - (uintptr_t)p > 64)
            head = malloc(start - (uintptr_t)p - 32);
    }
    return head;
}

int sandbox_run(const struct sandbox_run_options *o)
{
    int status = 125;
    char id[SANDBOX_RUN_ID_LEN + 1];
    char err[512];
    char tmpdir[sizeof(SANDBOX_RUN_TMP_PREFIX) + SANDBOX_RUN_ID_LEN];
    bool have_tmpdir = false;
    int lock_fd = -1;
    char *ca_bundle = NULL, *abs_state = NULL, *abs_config = NULL;
    struct box_runtime_env env = {0};
    struct server *srv = NULL;
    pthread_t thread;
    bool thread_started = false;
    struct cgroup_tree *tree = NULL;
    struct box_host *host = NULL;
    struct jail_result res = {0};

    /* This process is one command's proxy and lives for seconds. Freed memory is kept for
     * reuse (one arena for all threads, no trimming, blocks under 1 MiB from the heap): each
     * libnftables call initialises 512 KiB of fresh hash tables for its cache, and on this
     * VM first-touch page faults made that 2.5-3.5 ms per call, several calls per start.
     * Measured: start to the command 44.6-49.2 ms median against 45.3-53.2 ms, in 10 of 10
     * alternating rounds (docs/BENCHMARKS.md, "Sandboxes"). The heap is then reserved on huge
     * pages (heap_reserve_huge): 871 page faults per run instead of about 1,280, and start to
     * the command 5 ms sooner (six of six alternating rounds of 15).
     * Before any thread exists, as M_ARENA_MAX requires. */
    (void)mallopt(M_ARENA_MAX, 1);
    (void)mallopt(M_TRIM_THRESHOLD, 16 << 20);
    void *heap_head = heap_reserve_huge();
    (void)mallopt(M_MMAP_THRESHOLD, 1 << 20);

    unsigned char rnd[12];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(id + 2 * i, 3, "%02x", rnd[i]);
    lock_fd = run_lock_take(id); /* before anything of this run exists on the host */
    if (lock_fd == -1)
        goto out;

    struct serve_options so = {
        .config_path = o->config_path,
        .state_dir = o->state_dir,
        .listen_proxy = "127.0.0.1:0",
        .listen_control = NULL,
        .listen_transparent = "0.0.0.0:0",
        .listen_dns = "0.0.0.0:0",
        .upstream_dns = o->upstream_dns,
        .workers = 1,
    };
    srv = server_start(&so);
    if (srv == NULL)
        goto out; /* logged */
    if (!server_config(srv)->has_proxy_config)
        log_warn("sandbox run: no proxy_config (--config FILE): every connection is refused");
    if (pthread_create(&thread, NULL, server_thread, srv) != 0)
        goto out;
    thread_started = true;

    abs_state = realpath(o->state_dir, NULL);
    abs_config = o->config_path ? realpath(o->config_path, NULL) : NULL;
    /* Named by the id (a reaper finds it from the lock file's name); 96 random bits, and mkdir
     * fails on anything already there, as mkdtemp would. */
    snprintf(tmpdir, sizeof(tmpdir), "%s%s", SANDBOX_RUN_TMP_PREFIX, id);
    if (mkdir(tmpdir, 0700) == -1) {
        log_error("sandbox run: cannot create a temporary directory: %s", strerror(errno));
        goto out;
    }
    have_tmpdir = true;
    ca_bundle = xasprintf("%s/ca-bundle.pem", tmpdir);
    tree = cgroup_tree_open("authproxy", err, sizeof(err));
    if (tree == NULL) {
        log_error("sandbox run: cgroups: %s", err);
        goto out;
    }
    reap_dead_runs(server_netns_pool(srv), tree);

    const char *hidden[] = {abs_state, abs_config, NULL};
    if (abs_state == NULL)
        hidden[0] = abs_config, hidden[1] = NULL;
    struct box_host_config hc = {
        .id = id,
        .dir = tmpdir,
        .hostname = o->name,
        .pool = server_netns_pool(srv),
        .transparent_port = server_transparent_port(srv),
        .dns_port = server_dns_port(srv),
        .cgroups = tree,
        .limits = {.cpu_millicores = o->vcpus * 1000,
                   .mem_bytes = o->mem_bytes,
                   .pids_max = BOX_RUNTIME_PIDS_MAX},
        .disk_bytes = 0, /* one command: a plain workspace and a fresh /tmp are enough */
        .ca_bundle = ca_bundle,
        .hidden = hidden,
    };
    /* The host side on a thread and the CA bundle here meanwhile (the host side only names the
     * bundle; the jail reads it): the bundle's write no longer adds to the start. Without a
     * thread, one after the other. */
    struct host_start_job job = {.config = &hc};
    pthread_t host_thread;
    bool host_threaded = pthread_create(&host_thread, NULL, host_start_thread, &job) == 0;
    int bundle_rc = box_runtime_write_ca_bundle(ca_bundle, o->state_dir, err, sizeof(err));
    if (host_threaded)
        pthread_join(host_thread, NULL);
    else
        host_start_thread(&job);
    host = job.host; /* owned here from now on, whatever failed */
    if (bundle_rc == -1) {
        log_error("sandbox run: %s", err);
        goto out;
    }
    if (host == NULL) {
        log_error("sandbox run: %s", job.err);
        goto out;
    }

    /* The environment is built from scratch (jail.h): the placeholders of enabled rules only. */
    box_runtime_env_add_policy(&env, server_config(srv)->policy);
    struct jail_spec spec;
    memset(&spec, 0, sizeof(spec));
    box_runtime_host_spec(host, &spec);
    spec.argv = (const char *const *)o->argv;
    spec.env = box_runtime_env_list(&env);
    spec.timeout_ms = o->timeout_s * 1000u;
    if (jail_run(&spec, NULL, 0, 0, &res, err, sizeof(err)) != 0) {
        log_error("sandbox run: %s", err);
        goto out;
    }
    (void)write_all(1, res.out, res.out_len);
    (void)write_all(2, res.err, res.err_len);
    if (res.status.timed_out) {
        log_error("sandbox run: the command timed out after %u s and was killed", o->timeout_s);
        status = BOX_RUNTIME_TIMEOUT_EXIT;
    } else if (res.status.signal != 0) {
        if (res.status.oom_killed)
            log_error("sandbox run: the command ran out of memory and was killed");
        status = 128 + res.status.signal;
    } else {
        status = res.status.exit_code;
    }
out:
    jail_result_free(&res);
    box_runtime_env_free(&env);
    box_runtime_host_stop(host); /* kills what is left, removes the network and the cgroup */
    cgroup_tree_free(tree);
    if (have_tmpdir)
        (void)box_runtime_remove_tree(tmpdir);
    if (thread_started) {
        server_stop(srv);
        pthread_join(thread, NULL);
    }
    server_free(srv);
    if (lock_fd != -1) { /* everything of this run is gone: nothing for a reaper to find */
        char lock_path[sizeof(SANDBOX_RUN_LOCK_DIR) + SANDBOX_RUN_ID_LEN + 8];
        snprintf(lock_path, sizeof(lock_path), "%s/%s.lock", SANDBOX_RUN_LOCK_DIR, id);
        (void)unlink(lock_path);
        close(lock_fd);
    }
    free(ca_bundle);
    free(abs_state);
    free(abs_config);
    free(heap_head);
    return status;
}
