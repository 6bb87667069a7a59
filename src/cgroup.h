/* cgroup: one control group per sandbox, with CPU, memory and pids limits, on cgroup v1 and v2.
 *
 * The host's layout is detected at run time (cgroup_tree_open):
 *   v2 (unified, modern hosts): <cgroup2 mount>/<name>/<id>. <name> (default "authproxy") is the
 *      group delegated to authproxy: it never holds processes itself, so the "no internal
 *      processes" rule lets us enable +cpu +memory +pids in its cgroup.subtree_control.
 *   v1 (this Debian 12 machine): one directory per controller, <cpu mount>/<name>/<id>,
 *      <memory mount>/<name>/<id>, <pids mount>/<name>/<id> (as Docker's cgroupfs driver does).
 * v2 is chosen when a cgroup2 mount has the cpu, memory and pids controllers available; otherwise
 * v1 when the three v1 controllers are mounted; otherwise cgroup_tree_open fails.
 *
 * Lifetime: a sandbox's cgroup is created before its first process (cgroup_create), processes are
 * placed into it by their parent before they exec (cgroup_attach, see jail.c), and it is removed
 * after the sandbox ends (cgroup_destroy kills what is left and rmdirs). After a daemon crash,
 * cgroup_reconcile removes every per-sandbox group that is not in the live set.
 *
 * Not thread-safe per object; distinct cgroups may be used from distinct threads. Needs root (or
 * a delegated, writable tree). */
#ifndef AUTHPROXY_CGROUP_H
#define AUTHPROXY_CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum cgroup_version { CGROUP_V1 = 1, CGROUP_V2 = 2 };

/* Resource limits of one sandbox. 0 in a field means "no limit" for that resource. */
struct cgroup_limits {
    uint32_t cpu_millicores; /* 1000 = one full CPU; vcpus N maps to N * 1000 */
    uint64_t mem_bytes; /* memory limit; swap is disabled for the group where the host allows */
    uint32_t pids_max;  /* maximum number of tasks (processes and threads) in the group */
};

/* The host's cgroup layout plus the name of authproxy's subtree. Owned by the caller
 * (cgroup_tree_free); must outlive every struct cgroup created from it. */
struct cgroup_tree;
/* One sandbox's group (one directory per controller on v1). Owned by the caller
 * (cgroup_destroy or cgroup_free). */
struct cgroup;

/* Detects the host's cgroup version and mount points (from /proc/self/mountinfo) and makes sure
 * the subtree <name> exists (creating it, and on v2 enabling the cpu, memory and pids controllers
 * for its children). name is a single path component, e.g. "authproxy". NULL on failure with a
 * message in err (may be NULL). */
struct cgroup_tree *cgroup_tree_open(const char *name, char *err, size_t errlen);
/* Same with an explicit layout, for tests and unusual hosts: version and the directory where the
 * hierarchy is mounted. For v1, mount_root is the directory that holds the per-controller mounts
 * (e.g. "/sys/fs/cgroup", expecting "cpu", "memory", "pids" below it); for v2 the cgroup2 mount
 * itself. With require_controllers false, a v2 tree whose cpu/memory/pids controllers are not
 * available is still accepted, and cgroup_create then refuses any non-zero limit. */
struct cgroup_tree *cgroup_tree_open_at(enum cgroup_version version, const char *mount_root,
                                        const char *name, bool require_controllers, char *err,
                                        size_t errlen);
enum cgroup_version cgroup_tree_version(const struct cgroup_tree *t);
/* Removes the subtree's own directories if no sandbox group is left in them (uninstall, test
 * cleanup). 0, or -1 with errno (EBUSY while sandbox groups remain). t stays usable only for
 * cgroup_tree_free. */
int cgroup_tree_remove(struct cgroup_tree *t);
void cgroup_tree_free(struct cgroup_tree *t);

/* Creates the group for sandbox id (a single path component: letters, digits, '-', '_', '.';
 * not starting with '.') and writes the limits. A leftover group with the same id (crash) is
 * destroyed first. NULL on failure (nothing left behind) with a message in err. */
struct cgroup *cgroup_create(struct cgroup_tree *t, const char *id, const struct cgroup_limits *lim,
                             char *err, size_t errlen);
/* Moves process pid (all its threads) into the group, in every controller. The jail's parent
 * calls this between clone and the child's exec, so the command never runs unconfined.
 * 0, or -1 with errno. */
int cgroup_attach(struct cgroup *cg, pid_t pid);
/* SIGKILLs every process in the group and waits (up to about 2 s) until it is empty.
 * Uses cgroup.kill where the kernel has it (v2, 5.14+), else repeated scans of cgroup.procs.
 * 0 when the group is empty, -1 otherwise. */
int cgroup_kill(struct cgroup *cg);
/* Number of OOM kills in the group so far (memory.events on v2, memory.oom_control on v1);
 * 0 if the host does not report it. */
uint64_t cgroup_oom_kills(const struct cgroup *cg);
/* Number of processes currently in the group; -1 on error. */
int cgroup_nprocs(const struct cgroup *cg);
/* The group's directory for controller ("cpu", "memory", "pids"; on v2 the controller is
 * ignored). Borrowed; valid until the cgroup is freed. For diagnostics and tests. */
const char *cgroup_path(const struct cgroup *cg, const char *controller);
/* Kills what is left, removes the group's directories and frees cg (even on failure, when a
 * directory could not be removed it is logged and left for cgroup_reconcile). NULL is allowed.
 * 0, or -1 if something was left behind. */
int cgroup_destroy(struct cgroup *cg);
/* Frees cg without touching the kernel objects (e.g. in a child after fork). NULL allowed. */
void cgroup_free(struct cgroup *cg);

/* Removes every per-sandbox group under the tree whose id is not among live_ids[0..n_live)
 * (after a crash: pass n_live 0 to remove them all). Returns how many groups were removed, or
 * -1 if some could not be removed. */
int cgroup_reconcile(struct cgroup_tree *t, const char *const *live_ids, size_t n_live);
/* Removes sandbox group id (every controller, its processes killed), if it exists: what a
 * sandbox whose owner died left. 0, or -1 when some part could not be removed (logged). */
int cgroup_forget(struct cgroup_tree *t, const char *id);
/* Number of per-sandbox groups currently under the tree (all controllers counted once, by
 * id); -1 on error. Used by leak checks. */
int cgroup_count(struct cgroup_tree *t);

#endif
