/* jail: isolated process trees for sandbox commands. See jail.h for the model and the choices. */
#include "jail.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cgroup.h"
#include "log.h"
#include "util.h"

#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define JAIL_MOUNT_ATTR_RDONLY 0x00000001ull
#define JAIL_MOUNT_ATTR_NOSUID 0x00000002ull
#define JAIL_MOUNT_ATTR_NODEV  0x00000004ull
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

/* The kernel's struct mount_attr, declared here because <linux/mount.h> and glibc's
 * <sys/mount.h> cannot both be included on Debian 12. */
struct jail_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

/* Staging point for the new root inside the child's private mount namespace. Covering the
 * host's /tmp there is harmless (the host never sees it), and bind sources that live under
 * /tmp are opened by the parent beforehand and mounted through /proc/self/fd/N. */
#define JAIL_STAGE "/tmp"

/* ---- mount plan: prepared by the parent, executed by the child with system calls only ---- */

enum jail_op_kind {
    OP_TMPFS,   /* mount tmpfs at dst with data and flags */
    OP_BIND,    /* bind src at dst (flags may add MS_REC) */
    OP_RO,      /* make dst read-only, nosuid, nodev (recursively when possible) */
    OP_REMOUNT, /* remount dst with flags (MS_REMOUNT added) */
    OP_MKDIR,   /* mkdir dst (existing is fine) */
    OP_MKFILE,  /* create empty file dst (existing is fine) */
    OP_SYMLINK, /* symlink src at dst */
    OP_DEVPTS,  /* a private devpts instance at dst */
    OP_PIVOT,   /* pivot_root into dst, old root detached */
    OP_PROC,    /* procfs at dst */
};

struct jail_op {
    enum jail_op_kind kind;
    char *src;  /* heap, or NULL */
    char *dst;  /* heap */
    char *data; /* heap, or NULL */
    unsigned long flags;
    bool optional; /* ENOENT on the target is not an error (hidden paths, /proc masks) */
};

struct jail_plan {
    struct jail_op *ops;
    size_t n;
};

/* Appends an op; takes ownership of nothing (strings are copied). */
static void plan_add(struct jail_plan *p, enum jail_op_kind kind, const char *src, const char *dst,
                     const char *data, unsigned long flags, bool optional)
{
    struct jail_op *op;

    p->ops = xrealloc(p->ops, (p->n + 1) * sizeof(*p->ops));
    op = &p->ops[p->n++];
    op->kind = kind;
    op->src = src != NULL ? xstrdup(src) : NULL;
    op->dst = xstrdup(dst);
    op->data = data != NULL ? xstrdup(data) : NULL;
    op->flags = flags;
    op->optional = optional;
}

static void plan_free(struct jail_plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->ops[i].src);
        free(p->ops[i].dst);
        free(p->ops[i].data);
    }
    free(p->ops);
    p->ops = NULL;
    p->n = 0;
}

/* ---- everything the child needs, prepared before clone ---- */

#define JAIL_MAX_FDS 64

struct jail_prep {
    struct jail_plan plan;
    char **envp; /* heap NULL-terminated, strings heap */
    size_t envn;
    char **argv; /* heap copy, NULL-terminated */
    char *path;  /* PATH used to look argv[0] up */
    char *cwd;
    char *hostname;
    struct sock_filter filter[160];
    unsigned short filter_len;
    int last_cap;
    int keep_fds[JAIL_MAX_FDS]; /* fds the child must keep (sources, pipes, netns) */
    size_t n_keep;
    int src_fds[JAIL_MAX_FDS];     /* O_PATH sources opened by the parent, closed after clone */
    char *src_paths[JAIL_MAX_FDS]; /* their paths, reopened by the child (see prep_source) */
    size_t n_src;
};

/* Which step of the child failed, for the parent's message. */
enum jail_stage {
    ST_SYNC = 1,
    ST_SETNS,
    ST_LOOPBACK,
    ST_HOSTNAME,
    ST_PRIVATE,
    ST_SOURCE,
    ST_MOUNT,
    ST_FORK,
    ST_SETSID,
    ST_STDIO,
    ST_CAPS,
    ST_IDS,
    ST_NNP,
    ST_SECCOMP,
    ST_CHDIR,
    ST_EXEC,
};
static const char *const jail_stage_names[] = {
    [ST_SYNC] = "waiting for the parent",
    [ST_SETNS] = "joining the network namespace",
    [ST_LOOPBACK] = "bringing loopback up",
    [ST_HOSTNAME] = "setting the hostname",
    [ST_PRIVATE] = "making mounts private",
    [ST_SOURCE] = "opening a bind source",
    [ST_MOUNT] = "building the filesystem view",
    [ST_FORK] = "forking the command",
    [ST_SETSID] = "starting a session",
    [ST_STDIO] = "setting up stdio",
    [ST_CAPS] = "dropping capabilities",
    [ST_IDS] = "switching uid/gid",
    [ST_NNP] = "setting no_new_privs",
    [ST_SECCOMP] = "installing the seccomp filter",
    [ST_CHDIR] = "entering the working directory",
    [ST_EXEC] = "executing the command",
};

struct jail_child_err {
    int stage;
    int op; /* index in the mount plan for ST_MOUNT, else -1 */
    int errnum;
};

/* The fds the child works with (numbers valid in the child). */
struct jail_child_fds {
    int sync_r, err_w, status_w, stdin_r, stdout_w, stderr_w, netns;
};

static void jf_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void jf_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- seccomp ---- */

#if defined(__x86_64__)
#define JAIL_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define JAIL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#define JAIL_AUDIT_ARCH 0
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define JAIL_ARG_LO(i) ((uint32_t)(offsetof(struct seccomp_data, args) + 8 * (i)))
#else
#define JAIL_ARG_LO(i) ((uint32_t)(offsetof(struct seccomp_data, args) + 8 * (i) + 4))
#endif

static void bpf_emit(struct jail_prep *pr, struct sock_filter ins)
{
    if (pr->filter_len < ARRAY_LEN(pr->filter))
        pr->filter[pr->filter_len] = ins;
    pr->filter_len++; /* overflow is detected by the caller */
}

/* "if nr == n: return errno e" (the accumulator holds the syscall number). */
static void bpf_deny(struct jail_prep *pr, int nr, int e)
{
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, 1));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(
                     BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t)e & SECCOMP_RET_DATA)));
}

/* Builds the filter (contract in jail.h). A deny-list, deliberately: sandboxes run arbitrary
 * toolchains, and what matters is closing the routes out of the namespaces and into the kernel's
 * riskier surfaces. Syscall arguments are compared on their low 32 bits, which is what the
 * kernel itself uses for int-typed arguments (socket domain/type, clone flags below 2^32, ioctl
 * request). Other architectures' syscalls (x32 on x86_64, a foreign audit arch) kill the process.
 * 0, or -1 if the architecture is unsupported. */
static int jail_build_filter(struct jail_prep *pr)
{
    static const int denied[] = {
        __NR_unshare,
        __NR_setns,
        __NR_mount,
        __NR_umount2,
        __NR_pivot_root,
        __NR_chroot,
        __NR_ptrace,
        __NR_bpf,
        __NR_perf_event_open,
        __NR_keyctl,
        __NR_add_key,
        __NR_request_key,
        __NR_kexec_load,
        __NR_init_module,
        __NR_finit_module,
        __NR_delete_module,
        __NR_open_by_handle_at,
        __NR_name_to_handle_at,
        __NR_swapon,
        __NR_swapoff,
        __NR_reboot,
        __NR_acct,
        __NR_settimeofday,
        __NR_clock_settime,
        __NR_clock_adjtime,
        __NR_adjtimex,
        __NR_process_vm_writev,
        __NR_process_vm_readv,
        __NR_userfaultfd,
#ifdef __NR_kexec_file_load
        __NR_kexec_file_load,
#endif
#ifdef __NR_fsopen
        __NR_fsopen,
        __NR_fsconfig,
        __NR_fsmount,
        __NR_fspick,
        __NR_move_mount,
        __NR_open_tree,
#endif
        __NR_mount_setattr,
#ifdef __NR_iopl
        __NR_iopl,
        __NR_ioperm,
#endif
#ifdef __NR_umount
        __NR_umount,
#endif
    };
    const uint32_t ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                              CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;
    const uint32_t eperm = SECCOMP_RET_ERRNO | EPERM;

    if (JAIL_AUDIT_ARCH == 0)
        return -1;
    pr->filter_len = 0;
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                              offsetof(struct seccomp_data, arch)));
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, JAIL_AUDIT_ARCH, 1, 0));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                              offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* x32 ABI: same numbers with bit 30 set, would bypass every rule below. */
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x40000000u, 0, 1));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
    for (size_t i = 0; i < ARRAY_LEN(denied); i++)
        bpf_deny(pr, denied[i], EPERM);
#ifdef __NR_clone3
    /* clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc use clone. */
    bpf_deny(pr, __NR_clone3, ENOSYS);
#endif
    /* clone: refuse any namespace flag (the new-namespace route around every rule here). */
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, JAIL_ARG_LO(0)));
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, ns_flags, 0, 1));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, eperm));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    /* socket: no AF_PACKET, no SOCK_RAW in any family. */
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 7));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, JAIL_ARG_LO(0)));
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_PACKET, 3, 0));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, JAIL_ARG_LO(1)));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xf)); /* SOCK_TYPE_MASK */
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOCK_RAW, 0, 1));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, eperm));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    /* ioctl: no TIOCSTI (typing into a terminal the sandbox might share). */
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 4));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, JAIL_ARG_LO(1)));
    bpf_emit(pr, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 0, 1));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, eperm));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    bpf_emit(pr, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    return pr->filter_len <= ARRAY_LEN(pr->filter) ? 0 : -1;
}

/* ---- preparation in the parent ---- */

static void prep_keep_fd(struct jail_prep *pr, int fd)
{
    if (fd >= 0 && pr->n_keep < JAIL_MAX_FDS)
        pr->keep_fds[pr->n_keep++] = fd;
}

/* Opens a bind source (O_PATH, so even unreadable files work) and returns "/proc/self/fd/N" as
 * the mount source (heap). The staging tmpfs covers /tmp before binds happen, so a source under
 * /tmp would otherwise be unreachable. The parent's open validates the path and reserves the
 * number N; the child reopens the path onto N in its own mount namespace, because the kernel
 * refuses to bind from a mount that belongs to another namespace (EINVAL). NULL with a message
 * on failure. */
static char *prep_source(struct jail_prep *pr, const char *path, bool want_dir, char *err,
                         size_t errlen)
{
    struct stat st;
    int fd;

    if (path[0] != '/') {
        jf_err(err, errlen, "%s: must be an absolute path", path);
        return NULL;
    }
    if (pr->n_src >= JAIL_MAX_FDS || pr->n_keep >= JAIL_MAX_FDS) {
        jf_err(err, errlen, "too many bind mounts");
        return NULL;
    }
    fd = open(path, O_PATH | O_CLOEXEC);
    if (fd == -1) {
        jf_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) == -1 || (want_dir && !S_ISDIR(st.st_mode))) {
        jf_err(err, errlen, "%s: not a directory", path);
        close(fd);
        return NULL;
    }
    pr->src_paths[pr->n_src] = xstrdup(path);
    pr->src_fds[pr->n_src++] = fd;
    prep_keep_fd(pr, fd);
    return xasprintf("/proc/self/fd/%d", fd);
}

/* True if path is "/name" (one component below the root). */
static bool is_top_level(const char *path)
{
    return path[0] == '/' && path[1] != '\0' && strchr(path + 1, '/') == NULL;
}

/* Adds a bind of src at inside-path dst (staged under JAIL_STAGE). A missing top-level target is
 * created on the staging root; deeper targets must exist in the host's (read-only) view. */
static int prep_bind(struct jail_prep *pr, const char *src, const char *dst, bool writable,
                     char *err, size_t errlen)
{
    struct stat st;
    char *s = NULL, *target = NULL;
    int rc = -1;

    if (dst[0] != '/' || strstr(dst, "..") != NULL || strcmp(dst, "/") == 0) {
        jf_err(err, errlen, "bind target '%s' must be an absolute path below /, without '..'", dst);
        goto out;
    }
    if (stat(src, &st) == -1) {
        jf_err(err, errlen, "bind source %s: %s", src, strerror(errno));
        goto out;
    }
    s = prep_source(pr, src, false, err, errlen);
    if (s == NULL)
        goto out;
    target = xasprintf("%s%s", JAIL_STAGE, dst);
    if (is_top_level(dst))
        plan_add(&pr->plan, S_ISDIR(st.st_mode) ? OP_MKDIR : OP_MKFILE, NULL, target, NULL, 0,
                 false);
    plan_add(&pr->plan, OP_BIND, s, target, NULL, S_ISDIR(st.st_mode) ? MS_REC : 0, false);
    if (writable)
        plan_add(&pr->plan, OP_REMOUNT, NULL, target, NULL, MS_BIND | MS_NOSUID | MS_NODEV, false);
    else
        plan_add(&pr->plan, OP_RO, NULL, target, NULL, 0, false);
    rc = 0;
out:
    free(s);
    free(target);
    return rc;
}

/* Builds the mount plan (the filesystem view described in jail.h). 0, or -1 with a message. */
static int prep_mounts(struct jail_prep *pr, const struct jail_spec *spec, char *err, size_t errlen)
{
    static const char *const devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
    static const char *const proc_ro[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq",
                                          "/proc/bus", "/proc/fs"};
    static const char *const proc_null[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list",
                                            "/proc/sched_debug"};
    static const char *const proc_empty[] = {"/proc/acpi", "/proc/scsi"};
    struct jail_plan *p = &pr->plan;
    uint64_t cap = spec->fs_capacity_bytes != 0 ? spec->fs_capacity_bytes : JAIL_DEFAULT_TMP_BYTES;
    const char *ws_mount =
        spec->workspace_mount != NULL ? spec->workspace_mount : JAIL_DEFAULT_WORKSPACE_MOUNT;
    DIR *d = NULL;
    struct dirent *de;
    char *t = NULL, *opt = NULL;
    int rc = -1;

    plan_add(p, OP_TMPFS, NULL, JAIL_STAGE, "mode=0755,size=1m", MS_NOSUID | MS_NODEV, false);
    /* The host root, entry by entry, so the new root (a tmpfs) can also hold mount points the
     * host lacks (/workspace) without writing to the host. */
    d = opendir("/");
    if (d == NULL) {
        jf_err(err, errlen, "cannot list /: %s", strerror(errno));
        goto out;
    }
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        struct stat st;
        char *host = xasprintf("/%s", n);
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, "proc") == 0 ||
            strcmp(n, "dev") == 0 || strcmp(n, "tmp") == 0 || strcmp(n, "run") == 0 ||
            lstat(host, &st) == -1) {
            free(host);
            continue;
        }
        t = xasprintf("%s/%s", JAIL_STAGE, n);
        if (S_ISLNK(st.st_mode)) {
            char link[4096];
            ssize_t l = readlink(host, link, sizeof(link) - 1);
            if (l > 0) {
                link[l] = '\0';
                plan_add(p, OP_SYMLINK, link, t, NULL, 0, false);
            }
        } else if (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)) {
            plan_add(p, S_ISDIR(st.st_mode) ? OP_MKDIR : OP_MKFILE, NULL, t, NULL, 0, false);
            plan_add(p, OP_BIND, host, t, NULL, MS_REC, false);
            plan_add(p, OP_RO, NULL, t, NULL, 0, false);
        }
        free(host);
        free(t);
        t = NULL;
    }
    closedir(d);
    d = NULL;
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/proc", NULL, 0, false);
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/run", NULL, 0, false);
    plan_add(p, OP_TMPFS, NULL, JAIL_STAGE "/run", "mode=0755,size=1m", MS_NOSUID | MS_NODEV,
             false);
    /* /dev: a tmpfs with the harmless device nodes bound from the host. */
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/dev", NULL, 0, false);
    plan_add(p, OP_TMPFS, NULL, JAIL_STAGE "/dev", "mode=0755,size=64k", MS_NOSUID | MS_NOEXEC,
             false);
    for (size_t i = 0; i < ARRAY_LEN(devs); i++) {
        char *host = xasprintf("/dev/%s", devs[i]);
        t = xasprintf("%s/dev/%s", JAIL_STAGE, devs[i]);
        plan_add(p, OP_MKFILE, NULL, t, NULL, 0, false);
        plan_add(p, OP_BIND, host, t, NULL, 0, false);
        free(host);
        free(t);
        t = NULL;
    }
    plan_add(p, OP_SYMLINK, "/proc/self/fd", JAIL_STAGE "/dev/fd", NULL, 0, false);
    plan_add(p, OP_SYMLINK, "/proc/self/fd/0", JAIL_STAGE "/dev/stdin", NULL, 0, false);
    plan_add(p, OP_SYMLINK, "/proc/self/fd/1", JAIL_STAGE "/dev/stdout", NULL, 0, false);
    plan_add(p, OP_SYMLINK, "/proc/self/fd/2", JAIL_STAGE "/dev/stderr", NULL, 0, false);
    plan_add(p, OP_SYMLINK, "pts/ptmx", JAIL_STAGE "/dev/ptmx", NULL, 0, false);
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/dev/pts", NULL, 0, false);
    plan_add(p, OP_DEVPTS, NULL, JAIL_STAGE "/dev/pts", "newinstance,ptmxmode=0666,mode=620", 0,
             true);
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/dev/shm", NULL, 0, false);
    opt = xasprintf("mode=1777,size=%llu", (unsigned long long)cap);
    plan_add(p, OP_TMPFS, NULL, JAIL_STAGE "/dev/shm", opt, MS_NOSUID | MS_NODEV, false);
    plan_add(p, OP_REMOUNT, NULL, JAIL_STAGE "/dev", NULL, MS_RDONLY | MS_NOSUID | MS_NOEXEC,
             false);
    /* /tmp */
    plan_add(p, OP_MKDIR, NULL, JAIL_STAGE "/tmp", NULL, 0, false);
    if (spec->tmp_dir != NULL) {
        if (prep_bind(pr, spec->tmp_dir, "/tmp", true, err, errlen) == -1)
            goto out;
    } else {
        plan_add(p, OP_TMPFS, NULL, JAIL_STAGE "/tmp", opt, MS_NOSUID | MS_NODEV, false);
    }
    if (spec->workspace != NULL &&
        prep_bind(pr, spec->workspace, ws_mount, true, err, errlen) == -1)
        goto out;
    if (spec->ca_bundle != NULL &&
        prep_bind(pr, spec->ca_bundle, JAIL_CA_BUNDLE_PATH, false, err, errlen) == -1)
        goto out;
    for (size_t i = 0; i < spec->n_binds; i++)
        if (prep_bind(pr, spec->binds[i].src, spec->binds[i].dst, spec->binds[i].writable, err,
                      errlen) == -1)
            goto out;
    plan_add(p, OP_REMOUNT, NULL, JAIL_STAGE, NULL, MS_RDONLY | MS_NOSUID | MS_NODEV, false);
    plan_add(p, OP_PIVOT, NULL, JAIL_STAGE, NULL, 0, false);
    /* From here on, paths are as seen inside. */
    plan_add(p, OP_PROC, NULL, "/proc", NULL, MS_NOSUID | MS_NODEV | MS_NOEXEC, false);
    for (size_t i = 0; i < ARRAY_LEN(proc_ro); i++) {
        plan_add(p, OP_BIND, proc_ro[i], proc_ro[i], NULL, MS_REC, true);
        plan_add(p, OP_RO, NULL, proc_ro[i], NULL, 0, true);
    }
    for (size_t i = 0; i < ARRAY_LEN(proc_null); i++)
        plan_add(p, OP_BIND, "/dev/null", proc_null[i], NULL, 0, true);
    for (size_t i = 0; i < ARRAY_LEN(proc_empty); i++)
        plan_add(p, OP_TMPFS, NULL, proc_empty[i], "mode=0555,size=4k",
                 MS_RDONLY | MS_NOSUID | MS_NODEV, true);
    /* Hidden paths last, so they cover whatever view the binds above produced. Resolved on the
     * host (symlinks followed): the inside view of those paths is the same tree. */
    for (size_t i = 0; spec->hidden_paths != NULL && spec->hidden_paths[i] != NULL; i++) {
        char *real = realpath(spec->hidden_paths[i], NULL);
        struct stat st;
        if (real == NULL || stat(real, &st) == -1) {
            free(real);
            continue;
        }
        if (S_ISDIR(st.st_mode))
            plan_add(p, OP_TMPFS, NULL, real, "mode=0755,size=4k",
                     MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, true);
        else
            plan_add(p, OP_BIND, "/dev/null", real, NULL, 0, true);
        free(real);
    }
    rc = 0;
out:
    if (d != NULL)
        closedir(d);
    free(t);
    free(opt);
    return rc;
}

/* Sets or replaces NAME=value in the env vector (heap strings; the vector owns them). */
static void prep_setenv(struct jail_prep *pr, const char *name, size_t nlen, const char *entry)
{
    for (size_t i = 0; i < pr->envn; i++) {
        if (strncmp(pr->envp[i], name, nlen) == 0 && pr->envp[i][nlen] == '=') {
            free(pr->envp[i]);
            pr->envp[i] = xstrdup(entry);
            return;
        }
    }
    pr->envp = xrealloc(pr->envp, (pr->envn + 2) * sizeof(*pr->envp));
    pr->envp[pr->envn++] = xstrdup(entry);
    pr->envp[pr->envn] = NULL;
}

static void prep_setenv2(struct jail_prep *pr, const char *name, const char *value)
{
    char *e = xasprintf("%s=%s", name, value);
    prep_setenv(pr, name, strlen(name), e);
    free(e);
}

/* Builds the environment from scratch (never from environ). 0, or -1 on a malformed pair. */
static int prep_env(struct jail_prep *pr, const struct jail_spec *spec, char *err, size_t errlen)
{
    static const char *const ca_vars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                                          "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                                          "CURL_CA_BUNDLE"};
    const char *ws =
        spec->workspace_mount != NULL ? spec->workspace_mount : JAIL_DEFAULT_WORKSPACE_MOUNT;
    const char *home = spec->home != NULL ? spec->home : spec->workspace != NULL ? ws : "/tmp";

    pr->envp = xcalloc(1, sizeof(*pr->envp));
    pr->path = xstrdup(spec->path != NULL ? spec->path : JAIL_DEFAULT_PATH);
    prep_setenv2(pr, "PATH", pr->path);
    prep_setenv2(pr, "HOME", home);
    if (spec->ca_bundle != NULL)
        for (size_t i = 0; i < ARRAY_LEN(ca_vars); i++)
            prep_setenv2(pr, ca_vars[i], JAIL_CA_BUNDLE_PATH);
    for (size_t i = 0; spec->env != NULL && spec->env[i] != NULL; i++) {
        const char *eq = strchr(spec->env[i], '=');
        if (eq == NULL || eq == spec->env[i]) {
            jf_err(err, errlen, "environment entry %zu is not NAME=value", i);
            return -1;
        }
        prep_setenv(pr, spec->env[i], (size_t)(eq - spec->env[i]), spec->env[i]);
        if ((size_t)(eq - spec->env[i]) == 4 && strncmp(spec->env[i], "PATH", 4) == 0) {
            free(pr->path);
            pr->path = xstrdup(eq + 1);
        }
    }
    pr->cwd = xstrdup(spec->cwd != NULL ? spec->cwd : home);
    return 0;
}

static void prep_free(struct jail_prep *pr)
{
    plan_free(&pr->plan);
    for (size_t i = 0; i < pr->envn; i++)
        free(pr->envp[i]);
    free(pr->envp);
    for (size_t i = 0; pr->argv != NULL && pr->argv[i] != NULL; i++)
        free(pr->argv[i]);
    free(pr->argv);
    free(pr->path);
    free(pr->cwd);
    free(pr->hostname);
    for (size_t i = 0; i < pr->n_src; i++) {
        close(pr->src_fds[i]);
        free(pr->src_paths[i]);
    }
    memset(pr, 0, sizeof(*pr));
}

/* Reads the highest capability number; falls back to the compile-time one. */
static int prep_last_cap(void)
{
    char *s = read_file("/proc/sys/kernel/cap_last_cap", 64, NULL);
    int n = CAP_LAST_CAP;

    if (s != NULL) {
        n = atoi(s);
        free(s);
    }
    return n > 0 && n < 128 ? n : CAP_LAST_CAP;
}

/* ---- the child side: system calls only (see jail.h on threads) ---- */

/* Reports a failure to the parent and exits; never returns. */
__attribute__((noreturn)) static void child_fail(int err_w, int stage, int op)
{
    struct jail_child_err e = {stage, op, errno};
    ssize_t w = write(err_w, &e, sizeof(e));
    (void)w;
    _exit(127);
}

/* Closes every fd except the listed ones (the daemon's sockets and files must not reach the
 * sandbox, nor be kept open by it). */
static void child_close_others(const int *keep, size_t n)
{
    int sorted[JAIL_MAX_FDS + 8];
    int lo = 0;

    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0 && sorted[j - 1] > keep[i]) {
            sorted[j] = sorted[j - 1];
            j--;
        }
        sorted[j] = keep[i];
    }
    for (size_t i = 0; i < n; i++) {
        if (sorted[i] > lo)
            syscall(__NR_close_range, (unsigned)lo, (unsigned)sorted[i] - 1, 0u);
        lo = sorted[i] + 1;
    }
    syscall(__NR_close_range, (unsigned)lo, ~0u, 0u);
}

/* Makes target read-only, nosuid and nodev, with all its submounts when the kernel has
 * mount_setattr (5.12+); otherwise the top mount only. */
static int child_make_ro(const char *target)
{
    struct jail_mount_attr attr = {
        JAIL_MOUNT_ATTR_RDONLY | JAIL_MOUNT_ATTR_NOSUID | JAIL_MOUNT_ATTR_NODEV, 0, 0, 0};

    if (syscall(__NR_mount_setattr, AT_FDCWD, target, AT_RECURSIVE, &attr, sizeof(attr)) == 0)
        return 0;
    if (errno != ENOSYS)
        return -1;
    return mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
}

static int child_run_op(const struct jail_op *op)
{
    int fd;

    switch (op->kind) {
    case OP_TMPFS:
        return mount("tmpfs", op->dst, "tmpfs", op->flags, op->data);
    case OP_BIND:
        return mount(op->src, op->dst, NULL, MS_BIND | op->flags, NULL);
    case OP_RO:
        return child_make_ro(op->dst);
    case OP_REMOUNT:
        return mount(NULL, op->dst, NULL, MS_REMOUNT | op->flags, NULL);
    case OP_MKDIR:
        return mkdir(op->dst, 0755) == -1 && errno != EEXIST ? -1 : 0;
    case OP_MKFILE:
        fd = open(op->dst, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd == -1)
            return errno == EEXIST || errno == EISDIR ? 0 : -1;
        close(fd);
        return 0;
    case OP_SYMLINK:
        return symlink(op->src, op->dst) == -1 && errno != EEXIST ? -1 : 0;
    case OP_DEVPTS:
        return mount("devpts", op->dst, "devpts", MS_NOSUID | MS_NOEXEC, op->data);
    case OP_PIVOT:
        /* pivot_root(".", "."): the old root ends up stacked under the new one, then detached. */
        if (chdir(op->dst) == -1 || syscall(SYS_pivot_root, ".", ".") == -1 ||
            umount2(".", MNT_DETACH) == -1)
            return -1;
        return chdir("/");
    case OP_PROC:
        return mount("proc", op->dst, "proc", op->flags, NULL);
    }
    errno = EINVAL;
    return -1;
}

/* Brings "lo" up in a fresh network namespace (tests, one-shot runs without networking). */
static int child_loopback_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int rc = -1;

    if (s == -1)
        return -1;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return rc;
}

/* Drops every capability for good (bounding set, ambient, securebits locked so uid 0 never
 * regains any at exec), switches ids if asked, sets no_new_privs and installs the filter.
 * Raw syscalls for the id changes: glibc's setuid family would try to signal the parent's other
 * threads, which do not exist in this child. 0, or -1 with *stage set. */
static int child_lockdown(const struct jail_prep *pr, uid_t uid, gid_t gid, bool change_ids,
                          int *stage)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    struct sock_fprog prog = {pr->filter_len, (struct sock_filter *)pr->filter};

    *stage = ST_CAPS;
    for (int c = 0; c <= pr->last_cap; c++)
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) == -1 && errno != EINVAL)
            return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == -1 && errno != EINVAL)
        return -1;
    if (prctl(PR_SET_SECUREBITS,
              SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                  SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED,
              0, 0, 0) == -1)
        return -1;
    if (change_ids) {
        *stage = ST_IDS;
        if (syscall(SYS_setgroups, 0, NULL) == -1 || syscall(SYS_setresgid, gid, gid, gid) == -1 ||
            syscall(SYS_setresuid, uid, uid, uid) == -1)
            return -1;
    }
    *stage = ST_CAPS;
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) == -1)
        return -1;
    *stage = ST_NNP;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1)
        return -1;
    *stage = ST_SECCOMP;
    /* prctl rather than seccomp(2): the same filter with no flags, and valgrind (make valgrind)
     * knows prctl but not seccomp(2) and would fail every sandbox with ENOSYS. */
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == -1)
        return -1;
    return 0;
}

/* The command process (pid 2): stdio, session, lockdown, exec. Never returns. */
__attribute__((noreturn)) static void child_command(const struct jail_prep *pr,
                                                    const struct jail_spec *spec,
                                                    const struct jail_child_fds *f)
{
    struct sigaction sa;
    sigset_t none;
    int stage = ST_STDIO, null_fd = -1;
    int saved_errno = ENOENT;
    char buf[4096];

    if (setsid() == -1)
        child_fail(f->err_w, ST_SETSID, -1);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        (void)sigaction(s, &sa, NULL);
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    if (f->stdin_r == -1) {
        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd == -1)
            child_fail(f->err_w, ST_STDIO, -1);
    }
    if (dup2(f->stdin_r != -1 ? f->stdin_r : null_fd, 0) == -1 || dup2(f->stdout_w, 1) == -1 ||
        dup2(f->stderr_w, 2) == -1)
        child_fail(f->err_w, ST_STDIO, -1);
    /* Everything but stdio and the (close-on-exec) error pipe goes at exec. */
    syscall(__NR_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
    if (chdir(pr->cwd) == -1)
        child_fail(f->err_w, ST_CHDIR, -1);
    if (child_lockdown(pr, spec->uid, spec->gid, spec->uid != 0 || spec->gid != 0, &stage) == -1)
        child_fail(f->err_w, stage, -1);
    /* PATH lookup in the built PATH (execvpe would consult the daemon's environ). */
    if (strchr(pr->argv[0], '/') != NULL) {
        execve(pr->argv[0], pr->argv, pr->envp);
        child_fail(f->err_w, ST_EXEC, -1);
    }
    for (const char *p = pr->path; *p != '\0';) {
        size_t n = strcspn(p, ":");
        size_t an = strlen(pr->argv[0]);
        if (n > 0 && n + 1 + an + 1 <= sizeof(buf)) {
            memcpy(buf, p, n);
            buf[n] = '/';
            memcpy(buf + n + 1, pr->argv[0], an + 1);
            execve(buf, pr->argv, pr->envp);
            if (errno != ENOENT && errno != ENOTDIR)
                saved_errno = errno;
        }
        p += n;
        if (*p == ':')
            p++;
    }
    errno = saved_errno;
    child_fail(f->err_w, ST_EXEC, -1);
}

/* The sandbox init (pid 1 of the new PID namespace). Never returns. */
__attribute__((noreturn)) static void
child_init(const struct jail_prep *pr, const struct jail_spec *spec, const struct jail_child_fds *f)
{
    char c;
    int stage = 0;
    pid_t cmd;
    const char *host = pr->hostname;

    child_close_others(pr->keep_fds, pr->n_keep);
    /* Nothing runs before the parent has put us into the cgroup. */
    if (read(f->sync_r, &c, 1) != 1)
        _exit(127);
    close(f->sync_r);
    if (f->netns != -1) {
        if (setns(f->netns, CLONE_NEWNET) == -1)
            child_fail(f->err_w, ST_SETNS, -1);
        close(f->netns);
    } else if (child_loopback_up() == -1) {
        child_fail(f->err_w, ST_LOOPBACK, -1);
    }
    if (sethostname(host, strlen(host)) == -1)
        child_fail(f->err_w, ST_HOSTNAME, -1);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == -1)
        child_fail(f->err_w, ST_PRIVATE, -1);
    for (size_t i = 0; i < pr->n_src; i++) {
        int fd = open(pr->src_paths[i], O_PATH | O_CLOEXEC);
        if (fd == -1 || dup2(fd, pr->src_fds[i]) == -1)
            child_fail(f->err_w, ST_SOURCE, (int)i);
        close(fd);
    }
    for (size_t i = 0; i < pr->plan.n; i++) {
        if (child_run_op(&pr->plan.ops[i]) == -1 && !(pr->plan.ops[i].optional && errno == ENOENT))
            child_fail(f->err_w, ST_MOUNT, (int)i);
    }
    /* vfork: init is a copy of the whole daemon, and copying its page tables again for a
     * child that only makes system calls and then execs costs milliseconds per command. The
     * child shares init's memory until its exec (or its _exit on failure) and writes none of
     * it but its own stack frames (and errno); init waits meanwhile. */
    cmd = vfork();
    if (cmd == -1)
        child_fail(f->err_w, ST_FORK, -1);
    if (cmd == 0)
        child_command(pr, spec, f);
    /* Init keeps only the status pipe; the command's exec closes the last error-pipe writer. */
    for (int fd = 0; fd < 3; fd++)
        close(fd);
    if (f->stdin_r != -1)
        close(f->stdin_r);
    close(f->stdout_w);
    close(f->stderr_w);
    close(f->err_w);
    for (size_t i = 0; i < pr->n_src; i++)
        close(pr->src_fds[i]);
    if (child_lockdown(pr, 0, 0, false, &stage) == -1)
        _exit(127);
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, 0);
        if (w == cmd) {
            ssize_t n = write(f->status_w, &st, sizeof(st));
            (void)n;
            _exit(0); /* the kernel kills what is left in the namespace */
        }
        if (w == -1 && errno != EINTR)
            _exit(127);
    }
}

/* ---- parent API ---- */

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Contract in jail.h. */
int jail_spawn(const struct jail_spec *spec, struct jail_proc *proc, char *err, size_t errlen)
{
    struct jail_prep pr;
    struct jail_child_fds cf = {-1, -1, -1, -1, -1, -1, -1};
    int sync_w = -1, err_r = -1, status_r = -1, stdin_w = -1, stdout_r = -1, stderr_r = -1;
    int p[2];
    pid_t pid = -1;
    size_t argc = 0;
    int rc = -1;
    unsigned long flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;

    memset(&pr, 0, sizeof(pr));
    memset(proc, 0, sizeof(*proc));
    proc->pid = -1;
    proc->pidfd = proc->stdin_fd = proc->stdout_fd = proc->stderr_fd = proc->status_fd = -1;
    if (spec->argv == NULL || spec->argv[0] == NULL || spec->argv[0][0] == '\0') {
        jf_err(err, errlen, "no command to run");
        goto out;
    }
    while (spec->argv[argc] != NULL)
        argc++;
    pr.argv = xcalloc(argc + 1, sizeof(*pr.argv));
    for (size_t i = 0; i < argc; i++)
        pr.argv[i] = xstrdup(spec->argv[i]);
    pr.hostname = xstrdup(spec->hostname != NULL ? spec->hostname : "sandbox");
    pr.last_cap = prep_last_cap();
    if (jail_build_filter(&pr) == -1) {
        jf_err(err, errlen, "seccomp filter not available on this architecture");
        goto out;
    }
    if (prep_env(&pr, spec, err, errlen) == -1 || prep_mounts(&pr, spec, err, errlen) == -1)
        goto out;
    if (spec->netns_fd < 0)
        flags |= CLONE_NEWNET;
    cf.netns = spec->netns_fd >= 0 ? spec->netns_fd : -1;

    /* Pipes: all close-on-exec, so concurrent spawns never leak them into other commands. */
    if (pipe2(p, O_CLOEXEC) == -1)
        goto fail_errno;
    cf.sync_r = p[0], sync_w = p[1];
    if (pipe2(p, O_CLOEXEC) == -1)
        goto fail_errno;
    err_r = p[0], cf.err_w = p[1];
    if (pipe2(p, O_CLOEXEC) == -1)
        goto fail_errno;
    status_r = p[0], cf.status_w = p[1];
    if (pipe2(p, O_CLOEXEC) == -1)
        goto fail_errno;
    stdout_r = p[0], cf.stdout_w = p[1];
    if (pipe2(p, O_CLOEXEC) == -1)
        goto fail_errno;
    stderr_r = p[0], cf.stderr_w = p[1];
    if (spec->want_stdin) {
        if (pipe2(p, O_CLOEXEC) == -1)
            goto fail_errno;
        cf.stdin_r = p[0], stdin_w = p[1];
    }
    prep_keep_fd(&pr, cf.sync_r);
    prep_keep_fd(&pr, cf.err_w);
    prep_keep_fd(&pr, cf.status_w);
    prep_keep_fd(&pr, cf.stdout_w);
    prep_keep_fd(&pr, cf.stderr_w);
    prep_keep_fd(&pr, cf.stdin_r);
    prep_keep_fd(&pr, cf.netns);

    /* A raw clone returns twice like fork but skips glibc's fork handlers; the child only
     * makes system calls on memory prepared above. */
    pid = (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, NULL);
    if (pid == -1)
        goto fail_errno;
    if (pid == 0)
        child_init(&pr, spec, &cf);

    proc->pid = pid;
    close_fd(&cf.sync_r);
    close_fd(&cf.err_w);
    close_fd(&cf.status_w);
    close_fd(&cf.stdout_w);
    close_fd(&cf.stderr_w);
    close_fd(&cf.stdin_r);
    if (spec->cgroup != NULL) {
        proc->oom_before = cgroup_oom_kills(spec->cgroup);
        if (cgroup_attach(spec->cgroup, pid) == -1) {
            jf_err(err, errlen, "cannot place the sandbox into its cgroup: %s", strerror(errno));
            goto fail_kill;
        }
    }
    proc->cgroup = spec->cgroup;
    proc->pidfd = (int)syscall(__NR_pidfd_open, pid, 0);
    if (write(sync_w, "g", 1) != 1) {
        jf_err(err, errlen, "cannot start the sandbox: %s", strerror(errno));
        goto fail_kill;
    }
    close_fd(&sync_w);
    /* EOF on the error pipe = the command was exec'd (or everything died). */
    {
        struct jail_child_err ce;
        ssize_t n;
        do
            n = read(err_r, &ce, sizeof(ce));
        while (n == -1 && errno == EINTR);
        if (n == (ssize_t)sizeof(ce)) {
            const char *what = ce.stage > 0 && ce.stage < (int)ARRAY_LEN(jail_stage_names)
                                   ? jail_stage_names[ce.stage]
                                   : "starting";
            if (ce.stage == ST_MOUNT && ce.op >= 0 && (size_t)ce.op < pr.plan.n)
                jf_err(err, errlen, "sandbox setup failed %s (%s): %s", what,
                       pr.plan.ops[ce.op].dst, strerror(ce.errnum));
            else if (ce.stage == ST_SOURCE && ce.op >= 0 && (size_t)ce.op < pr.n_src)
                jf_err(err, errlen, "sandbox setup failed %s (%s): %s", what, pr.src_paths[ce.op],
                       strerror(ce.errnum));
            else if (ce.stage == ST_EXEC)
                jf_err(err, errlen, "cannot execute '%s': %s", spec->argv[0], strerror(ce.errnum));
            else if (ce.stage == ST_CHDIR)
                jf_err(err, errlen, "cannot enter the working directory '%s': %s", pr.cwd,
                       strerror(ce.errnum));
            else
                jf_err(err, errlen, "sandbox setup failed %s: %s", what, strerror(ce.errnum));
            if (ce.stage == ST_EXEC || ce.stage == ST_CHDIR)
                rc = JAIL_SPAWN_COMMAND_ERROR;
            goto fail_kill;
        }
    }
    proc->stdin_fd = stdin_w;
    proc->stdout_fd = stdout_r;
    proc->stderr_fd = stderr_r;
    proc->status_fd = status_r;
    stdin_w = stdout_r = stderr_r = status_r = -1;
    if (spec->timeout_ms > 0)
        proc->deadline_us = monotonic_us() + (uint64_t)spec->timeout_ms * 1000u;
    rc = 0;
    goto out;

fail_errno:
    jf_err(err, errlen, "cannot start the sandbox: %s", strerror(errno));
    goto out;
fail_kill : {
    int st;
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) == -1 && errno == EINTR)
        ;
    close_fd(&proc->pidfd);
    proc->pid = -1;
}
out:
    close_fd(&cf.sync_r);
    close_fd(&cf.err_w);
    close_fd(&cf.status_w);
    close_fd(&cf.stdout_w);
    close_fd(&cf.stderr_w);
    close_fd(&cf.stdin_r);
    close_fd(&sync_w);
    close_fd(&err_r);
    close_fd(&status_r);
    close_fd(&stdin_w);
    close_fd(&stdout_r);
    close_fd(&stderr_r);
    prep_free(&pr);
    return rc;
}

/* Contract in jail.h. */
int jail_kill(struct jail_proc *proc)
{
    int rc = 0;

    /* Not the cgroup: other commands of the same sandbox may share it (cgroup_destroy empties
     * it when the sandbox goes). Init's death is enough: nothing can leave the PID namespace. */
    if (proc->pid > 0 && !proc->reaped && kill(proc->pid, SIGKILL) == -1 && errno != ESRCH)
        rc = -1;
    return rc;
}

/* Turns init's wait status (and the command's, if init reported it) into a jail_status. */
static void jail_fill_status(struct jail_proc *proc, int init_status, struct jail_status *st)
{
    int cmd_status;
    ssize_t n = -1;
    int status = init_status;

    if (proc->status_fd >= 0) {
        int fl = fcntl(proc->status_fd, F_GETFL);
        if (fl != -1)
            (void)fcntl(proc->status_fd, F_SETFL, fl | O_NONBLOCK);
        n = read(proc->status_fd, &cmd_status, sizeof(cmd_status));
    }
    if (n == (ssize_t)sizeof(cmd_status))
        status = cmd_status;
    memset(st, 0, sizeof(*st));
    if (WIFSIGNALED(status)) {
        st->exit_code = -1;
        st->signal = WTERMSIG(status);
    } else {
        st->exit_code = WEXITSTATUS(status);
    }
    st->timed_out = proc->timed_out;
    if (proc->cgroup != NULL)
        st->oom_killed = cgroup_oom_kills(proc->cgroup) > proc->oom_before;
}

/* Contract in jail.h. */
int jail_wait(struct jail_proc *proc, bool block, struct jail_status *st)
{
    for (;;) {
        int status;
        pid_t w;
        uint64_t now;

        if (proc->pid <= 0 || proc->reaped) {
            errno = ECHILD;
            return -1;
        }
        w = waitpid(proc->pid, &status, WNOHANG);
        if (w == -1 && errno != EINTR)
            return -1;
        if (w == proc->pid) {
            proc->reaped = true;
            jail_fill_status(proc, status, st);
            return 1;
        }
        now = monotonic_us();
        if (proc->deadline_us != 0 && now >= proc->deadline_us && !proc->timed_out) {
            proc->timed_out = true;
            jail_kill(proc);
            continue;
        }
        if (!block)
            return 0;
        int ms = 50;
        if (proc->deadline_us != 0 && !proc->timed_out) {
            uint64_t left = (proc->deadline_us - now + 999) / 1000;
            ms = left < 50 ? (int)left : 50;
        }
        if (proc->pidfd >= 0) {
            struct pollfd pfd = {proc->pidfd, POLLIN, 0};
            (void)poll(&pfd, 1, ms);
        } else {
            struct timespec ts = {0, (long)ms * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

/* Contract in jail.h. */
void jail_proc_close(struct jail_proc *proc)
{
    if (proc->pid > 0 && !proc->reaped) {
        struct jail_status st;
        jail_kill(proc);
        proc->deadline_us = 0;
        while (jail_wait(proc, true, &st) == 0)
            ;
    }
    close_fd(&proc->pidfd);
    close_fd(&proc->stdin_fd);
    close_fd(&proc->stdout_fd);
    close_fd(&proc->stderr_fd);
    close_fd(&proc->status_fd);
}

/* Appends what is readable on fd to *buf (capped at max, the rest discarded). Returns 0 at EOF,
 * 1 if the fd stays open. */
static int jail_drain(int fd, char **buf, size_t *len, size_t *cap, size_t max, bool *truncated)
{
    char tmp[65536];
    ssize_t n = read(fd, tmp, sizeof(tmp));

    if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN))
        return 0;
    if (n < 0)
        return 1;
    size_t take = (size_t)n;
    if (*len + take > max) {
        take = max - *len;
        *truncated = true;
    }
    if (*len + take + 1 > *cap) {
        *cap = (*len + take + 1) * 2;
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, tmp, take);
    *len += take;
    (*buf)[*len] = '\0';
    return 1;
}

/* Contract in jail.h. Loop: poll stdin (while data is left), stdout, stderr and the deadline;
 * once both output pipes are at EOF (they close when init's exit has taken the namespace down,
 * or when every holder has closed them), reap. */
int jail_run(const struct jail_spec *spec, const void *stdin_data, size_t stdin_len,
             size_t max_output, struct jail_result *res, char *err, size_t errlen)
{
    struct jail_proc proc;
    size_t out_cap = 0, err_cap = 0, fed = 0;
    const char *in = stdin_data;
    sigset_t pipe_set, old_mask;

    memset(res, 0, sizeof(*res));
    if (max_output == 0)
        max_output = 16u << 20;
    int rc = jail_spawn(spec, &proc, err, errlen);
    if (rc != 0)
        return rc;
    /* A command that exits without reading its stdin must not SIGPIPE the daemon: block the
     * signal in this thread while feeding, and swallow one raised here. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    res->out = xcalloc(1, 1);
    res->err = xcalloc(1, 1);
    out_cap = err_cap = 1;
    if (proc.stdin_fd >= 0) {
        int fl = fcntl(proc.stdin_fd, F_GETFL);
        (void)fcntl(proc.stdin_fd, F_SETFL, fl | O_NONBLOCK);
        if (stdin_len == 0)
            close_fd(&proc.stdin_fd);
    }
    while (proc.stdout_fd >= 0 || proc.stderr_fd >= 0) {
        struct pollfd pfd[3];
        int np = 0, ms = -1;
        uint64_t now = monotonic_us();

        if (proc.deadline_us != 0 && !proc.timed_out) {
            if (now >= proc.deadline_us) {
                proc.timed_out = true;
                jail_kill(&proc);
            } else {
                ms = (int)((proc.deadline_us - now + 999) / 1000);
            }
        }
        pfd[np++] = (struct pollfd){proc.stdout_fd, POLLIN, 0};
        pfd[np++] = (struct pollfd){proc.stderr_fd, POLLIN, 0};
        pfd[np++] = (struct pollfd){proc.stdin_fd, POLLOUT, 0};
        if (poll(pfd, (nfds_t)np, ms) == -1 && errno != EINTR)
            break;
        if (proc.stdout_fd >= 0 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
            jail_drain(proc.stdout_fd, &res->out, &res->out_len, &out_cap, max_output,
                       &res->out_truncated) == 0)
            close_fd(&proc.stdout_fd);
        if (proc.stderr_fd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) &&
            jail_drain(proc.stderr_fd, &res->err, &res->err_len, &err_cap, max_output,
                       &res->err_truncated) == 0)
            close_fd(&proc.stderr_fd);
        if (proc.stdin_fd >= 0 && (pfd[2].revents & (POLLOUT | POLLHUP | POLLERR))) {
            ssize_t w = write(proc.stdin_fd, in + fed, stdin_len - fed);
            if (w > 0)
                fed += (size_t)w;
            if ((w == -1 && errno != EAGAIN && errno != EINTR) || fed == stdin_len)
                close_fd(&proc.stdin_fd);
        }
    }
    close_fd(&proc.stdin_fd);
    if (!sigismember(&old_mask, SIGPIPE)) {
        sigset_t pending;
        struct timespec zero = {0, 0};
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
            (void)sigtimedwait(&pipe_set, NULL, &zero);
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    }
    while (jail_wait(&proc, true, &res->status) == 0)
        ;
    jail_proc_close(&proc);
    return 0;
}

/* Frees the buffers of a jail_run result. */
void jail_result_free(struct jail_result *res)
{
    free(res->out);
    free(res->err);
    memset(res, 0, sizeof(*res));
}
