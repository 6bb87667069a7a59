/* box_runtime: the running part of sandboxes (SPEC §5, §6; issue 4) — the host-side resources
 * of one sandbox, and the daemon's manager of API-created boxes' runtimes with their commands.
 *
 * One sandbox's host side (struct box_host, also used by `authproxy sandbox run`):
 *   - a network namespace from the address pool whose only path is the proxy (netns);
 *   - a cgroup with the box's CPU, memory and pids limits (cgroup);
 *   - files in a host directory of its own: resolv.conf naming the proxy's resolver, and the
 *     sandbox's writable space. With a disk size, that space is an ext4 image <dir>/disk.img of
 *     exactly fs_capacity_bytes (sparse; made once per box as a copy of a pristine image of
 *     that size, which mkfs.ext4 made once and <state_dir>/boxes keeps; loop-mounted at <dir>/mnt
 *     while the runtime runs) holding /workspace and /tmp: both persist across commands and
 *     across stops, and a box can never write more than its capacity (ext4's own metadata takes
 *     a few percent of it). Without one (sandbox run, or a host without loop devices or
 *     mkfs.ext4) /workspace is the plain directory <dir>/workspace and every command gets a fresh
 *     /tmp tmpfs of the capacity (jail.h): the workspace is then not capped.
 * Every command is then a jail (jail.h) joined to that network namespace and cgroup, running as
 * an unprivileged uid, seeing the CA bundle, with the daemon's state dir and config hidden.
 *
 * The manager (struct box_runtime; the daemon's main thread only) keeps the runtimes of
 * API-created boxes by box id:
 *   - box_runtime_start creates a box's host side (0 at once when it is already running);
 *     box_runtime_stop releases it (commands killed, namespace and cgroup removed, the disk
 *     unmounted; the box's files stay); box_runtime_remove also deletes the files.
 *   - box_runtime_exec runs one command asynchronously on the main event loop: its pipes, its
 *     exit (pidfd) and its wall-clock deadline are events, so the loop (and the control API on
 *     it) never waits for a command, and any number of commands run at once, in one box or in
 *     several (at most BOX_RUNTIME_EXEC_MAX per box). stdout and stderr are each kept up to
 *     BOX_RUNTIME_OUTPUT_MAX bytes; the rest is read and discarded, and the result says so. At
 *     the deadline the command's whole process tree is killed (SIGKILL to its PID namespace's
 *     init, which no process can leave) and exit_code is 124, as timeout(1) reports.
 *   - idle: a box with no command running for idle_ttl_seconds (0: never) is stopped, and the
 *     hooks' idle_stopped tells the control plane (which records status "stopped"); the next
 *     start brings it back with the same files.
 *   - box_runtime_new reconciles first: network namespaces, veth links and nft tables named
 *     with this deployment's prefixes, its cgroups, and disks still mounted under the state dir
 *     are what a crashed daemon left behind, and are removed.
 * Names: the prefixes are derived from the state dir's real path (a hash), so each daemon's
 * reconcile only ever touches its own objects, never another daemon's or a running
 * `sandbox run` (which uses netns.h's and cgroup "authproxy" defaults): netns
 * "apbox<8 hex>-<10 of the box id>", nft table "apbox<8 hex>_<...>", host link "<4>-<...>",
 * cgroup "<controller>/apbox<8 hex>/<box id>".
 *
 * Needs root (namespaces, nftables, cgroups, mounts). */
#ifndef AUTHPROXY_BOX_RUNTIME_H
#define AUTHPROXY_BOX_RUNTIME_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cgroup.h"
#include "jail.h"

struct event_base;
struct netns_pool;
struct policy;

#define BOX_RUNTIME_UID          65534 /* nobody: root-owned 0600 files stay out of reach */
#define BOX_RUNTIME_PIDS_MAX     512
#define BOX_RUNTIME_SYSTEM_CA    "/etc/ssl/certs/ca-certificates.crt"
#define BOX_RUNTIME_DISK_DEFAULT (1ull << 30)  /* fs_capacity_bytes 0 */
#define BOX_RUNTIME_DISK_MIN     (16ull << 20) /* smaller requests get this (ext4 needs room) */
#define BOX_RUNTIME_OUTPUT_MAX   (1u << 20)    /* per stream and command */
#define BOX_RUNTIME_EXEC_MAX     16            /* commands running at once in one box */
#define BOX_RUNTIME_TIMEOUT_EXIT 124

/* ---- pieces shared with `sandbox run` -------------------------------------------------------- */

/* A NULL-terminated environment list being built ("NAME=value" heap strings). */
struct box_runtime_env {
    char **v;
    size_t n;
};
/* Appends "name=value". */
void box_runtime_env_add(struct box_runtime_env *e, const char *name, const char *value);
/* Appends the env_vars placeholders of p's enabled rules (SPEC §2), in rule order. p NULL adds
 * nothing. */
void box_runtime_env_add_policy(struct box_runtime_env *e, const struct policy *p);
/* The list for jail_spec.env (never NULL). Valid until the next add or free. */
const char *const *box_runtime_env_list(struct box_runtime_env *e);
void box_runtime_env_free(struct box_runtime_env *e);

/* Writes the sandbox CA bundle to path (mode 0644, replaced atomically): the system roots plus
 * authproxy's CA (<state_dir>/ca.crt), so every client in the sandbox trusts what the proxy
 * mints. 0, or -1 with a message in err. */
int box_runtime_write_ca_bundle(const char *path, const char *state_dir, char *err, size_t errlen);

/* rm -rf path: never follows a symlink, never crosses into another filesystem (a disk still
 * mounted below is left alone). 0 (also when path does not exist), or -1 with errno. */
int box_runtime_remove_tree(const char *path);

/* What one sandbox's host side is made of. Borrowed during box_runtime_host_start only, except
 * pool and cgroups, which must outlive the host. */
struct box_host_config {
    const char *id;       /* names the namespace and the cgroup: letters, digits, '-' */
    const char *dir;      /* host directory for the sandbox's files; created if missing */
    const char *hostname; /* NULL: "sandbox" */
    struct netns_pool *pool;
    uint16_t transparent_port, dns_port; /* the proxy's listeners the capture leads to */
    struct cgroup_tree *cgroups;
    struct cgroup_limits limits;
    uint64_t disk_bytes;        /* > 0: the ext4 disk image (see the top); 0: plain directory */
    const char *disk_cache_dir; /* where a pristine image per size is kept and new disks are
                                   copied from (a copy costs far less than mkfs.ext4); NULL:
                                   mkfs.ext4 for every new disk */
    uint64_t fs_capacity_bytes; /* size of /dev/shm and of a fresh /tmp; 0: jail's default */
    const char *ca_bundle;      /* host path of the CA bundle, bound read-only */
    const char *const *hidden;  /* NULL-terminated host paths hidden from commands (state dir,
                                   config file) */
};

struct box_host;

/* Creates the namespace, cgroup, files and (with disk_bytes) the mounted disk. NULL with a
 * message in err on failure; nothing is left running then (files stay). The caller owns the
 * host and ends it with box_runtime_host_stop. */
struct box_host *box_runtime_host_start(const struct box_host_config *c, char *err, size_t errlen);
/* Fills the sandbox part of a jail spec: netns_fd, cgroup, workspace, tmp_dir, binds (the
 * resolv.conf), ca_bundle, hidden_paths, fs_capacity_bytes, hostname, uid/gid. Everything
 * points into h: valid while h lives. */
void box_runtime_host_spec(const struct box_host *h, struct jail_spec *spec);
/* The sandbox's source address (eth0 inside its namespace). */
struct in_addr box_runtime_host_addr(const struct box_host *h);
/* Kills every process of the sandbox (its cgroup), removes the cgroup and the network, and
 * unmounts the disk; the directory's files stay. NULL allowed. */
void box_runtime_host_stop(struct box_host *h);

/* ---- the daemon's runtimes ------------------------------------------------------------------- */

struct box_runtime_hooks {
    /* A box's runtime was stopped because it sat idle for its idle_ttl_seconds. Called on the
     * main loop after the runtime is gone. */
    void (*idle_stopped)(void *ctx, const char *ws_id, const char *box_id);
    void *ctx;
};

struct box_runtime_config {
    struct event_base *base;   /* the main loop: commands' events live here */
    const char *state_dir;     /* boxes' files go to <state_dir>/boxes/<box id> */
    const char *config_path;   /* hidden from sandboxes like the state dir; may be NULL */
    uint16_t transparent_port; /* the daemon's transparent listener and resolver (bound where */
    uint16_t dns_port;         /* the sandboxes' host ends reach them, e.g. 0.0.0.0) */
    struct box_runtime_hooks hooks;
};

struct box_runtime;

/* Checks that this host can run sandboxes (root, nftables, cgroups), reconciles what a crashed
 * daemon left (see the top; counts logged), writes the CA bundle, and returns the manager. NULL
 * with the reason in err (a sentence fit for an API error: "...: boxes are proxy-only"). */
struct box_runtime *box_runtime_new(const struct box_runtime_config *cfg, char *err, size_t errlen);
/* Stops every runtime (files kept, so that a restart finds them) after answering each running
 * command with BOX_EXEC_SHUTDOWN, and frees the manager. NULL allowed. */
void box_runtime_free(struct box_runtime *rt);

/* A box's resources, from its stored fields. */
struct box_runtime_limits {
    const char *name;                                     /* the hostname inside */
    int64_t cpu_millicores, mem_bytes, fs_capacity_bytes; /* 0: no limit / default size */
    int64_t idle_ttl_seconds;                             /* 0: never stopped for idleness */
};

/* Starts the runtime of box_id (of workspace ws_id) unless it runs already (then 0 at once, the
 * limits unchanged). 0, or -1 with a message in err. */
int box_runtime_start(struct box_runtime *rt, const char *ws_id, const char *box_id,
                      const struct box_runtime_limits *lim, char *err, size_t errlen);
bool box_runtime_running(const struct box_runtime *rt, const char *box_id);
/* The running box's sandbox address; INADDR_ANY (0) when it is not running. rt may be NULL. */
struct in_addr box_runtime_addr(const struct box_runtime *rt, const char *box_id);
/* Changes a running box's idle limit (re-armed from now when no command runs). */
void box_runtime_set_idle_ttl(struct box_runtime *rt, const char *box_id, int64_t seconds);

/* How a command's result came about. */
enum box_exec_end {
    BOX_EXEC_EXITED,   /* it ran to its end (or its deadline): exit_code is meaningful */
    BOX_EXEC_STOPPED,  /* the box was stopped while it ran */
    BOX_EXEC_DELETED,  /* the box was deleted while it ran */
    BOX_EXEC_SHUTDOWN, /* the daemon is stopping */
};

/* A finished command. Buffers belong to the runtime and are valid during the callback only. */
struct box_exec_result {
    enum box_exec_end end;
    int exit_code;   /* as a shell reports it: the status, 128 + signal, or 124 on timeout */
    int signal;      /* the signal that ended it (SIGKILL after a timeout), else 0 */
    bool timed_out;  /* the deadline passed and the process tree was killed */
    bool oom_killed; /* the box's cgroup recorded an out-of-memory kill meanwhile */
    const char *out, *err;
    size_t out_len, err_len;
    bool out_truncated, err_truncated; /* more than BOX_RUNTIME_OUTPUT_MAX was written */
    uint64_t duration_ms;
};
typedef void (*box_exec_done_fn)(void *arg, const struct box_exec_result *r);

struct box_exec_request {
    const char *const *argv; /* e.g. {"/bin/bash", "-c", command, NULL} */
    const char *const *env;  /* "NAME=value" (placeholders, box env, request env), or NULL */
    const char *cwd;         /* inside; NULL: /workspace */
    unsigned timeout_ms;     /* 0: none */
};

/* Runs a command in the running box box_id. Returns 0 once it has been exec'd: done(arg, result)
 * is then called exactly once, later, on the main loop. Otherwise nothing runs and done is never
 * called: -1 with errno and a message in err — ENOENT (the box is not running), EAGAIN
 * (BOX_RUNTIME_EXEC_MAX commands run already), EINVAL (the command could not start: its program
 * or working directory; err says which), EIO (the sandbox could not be set up). req is borrowed
 * for the call only. */
int box_runtime_exec(struct box_runtime *rt, const char *box_id, const struct box_exec_request *req,
                     box_exec_done_fn done, void *arg, char *err, size_t errlen);

/* Stops a box's runtime (running commands end with why, which is BOX_EXEC_STOPPED or
 * BOX_EXEC_DELETED); its files stay. Nothing happens when it is not running. */
void box_runtime_stop(struct box_runtime *rt, const char *box_id, enum box_exec_end why);
/* Stops the runtime (commands end BOX_EXEC_DELETED) and deletes the box's files (workspace,
 * disk). 0, or -1 if some could not be removed (logged). */
int box_runtime_remove(struct box_runtime *rt, const char *box_id);

#endif
