/* jail: runs one command in an isolated process tree (a sandbox's process jail).
 *
 * A jailed command runs in new mount, PID, UTS and IPC namespaces, in the sandbox's network
 * namespace (joined with setns before exec) or, for tests, a new empty one; it sees:
 *   /             the host's root, read-only, nosuid, nodev (recursively, submounts included)
 *   /tmp          a private tmpfs of fs_capacity_bytes (or a given host dir, for a /tmp that
 *                 persists across the commands of one sandbox)
 *   /workspace    the given host directory, writable
 *   /proc         its own procfs (only the sandbox's processes); /proc/sys, /proc/sysrq-trigger
 *                 and friends read-only or masked, as container runtimes do
 *   /dev          a minimal tmpfs: null zero full random urandom tty, fd links, pts, shm
 *   /run          an empty tmpfs (host sockets such as a container runtime's are not reachable)
 *   the CA bundle read-only over /etc/ssl/certs/ca-certificates.crt, extra binds as asked, and
 *   every "hidden" host path covered (directories by an empty read-only tmpfs, files by
 *   /dev/null), so reading the daemon's state dir or config files from inside shows nothing.
 * The environment is built from scratch (PATH, HOME, the CA trust variables, the given pairs);
 * nothing is inherited from the daemon. Before exec: all capabilities dropped (bounding,
 * ambient, inheritable, permitted, effective; securebits locked), optional uid/gid switch,
 * no_new_privs, and a seccomp filter that refuses namespace and mount syscalls, ptrace, bpf,
 * perf_event_open, keyrings, kexec, module loading, AF_PACKET and SOCK_RAW sockets, clone with
 * namespace flags (EPERM), and clone3 (ENOSYS, so libc falls back to clone, whose flags can be
 * inspected).
 *
 * Process tree: the jail's parent (the daemon thread calling jail_spawn) clones the sandbox
 * init, pid 1 of the new PID namespace. Init builds the filesystem view, forks the command
 * (pid 2, in its own session and process group), reaps everything, and when the command ends
 * reports its wait status on a pipe and exits, which makes the kernel kill whatever else is left
 * in the namespace. The parent places init into the sandbox's cgroup before init does anything,
 * so the command is confined from its first instruction.
 *
 * Why not bubblewrap: it would be one more root-level dependency and process per command, and
 * still need our code for what it does not do (joining a netns fd before exec, placing the
 * process into a cgroup before exec, reporting a killed command's signal instead of an exit
 * code 128+n, our seccomp policy). What we need from it is ~300 lines of mount(2) calls.
 *
 * Threads: jail_spawn may be called from any thread, concurrently. The child side between clone
 * and exec uses only system calls (no malloc, no stdio, no locks): the mount plan, environment
 * and seccomp program are all prepared by the parent. */
#ifndef AUTHPROXY_JAIL_H
#define AUTHPROXY_JAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cgroup;

/* Where the CA bundle appears inside, and what the trust variables point at. */
#define JAIL_CA_BUNDLE_PATH          "/etc/ssl/certs/ca-certificates.crt"
#define JAIL_DEFAULT_PATH            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define JAIL_DEFAULT_WORKSPACE_MOUNT "/workspace"
/* /tmp size when fs_capacity_bytes is 0. */
#define JAIL_DEFAULT_TMP_BYTES (256ull << 20)

/* An extra bind mount: host path src appears at dst inside (dst must exist in the host view or
 * be a top-level name). Read-only unless writable. */
struct jail_bind {
    const char *src;
    const char *dst;
    bool writable;
};

/* What to run and how. Everything is borrowed for the duration of jail_spawn only. */
struct jail_spec {
    const char *const *argv;     /* NULL-terminated, argv[0] looked up in the built PATH */
    const char *const *env;      /* NULL-terminated "NAME=value" list, or NULL; later entries
                                    replace earlier ones and the built-in PATH/HOME/CA variables */
    const char *path;            /* PATH inside; NULL = JAIL_DEFAULT_PATH */
    const char *home;            /* HOME inside; NULL = the workspace mount (or /tmp without one) */
    const char *cwd;             /* working directory inside; NULL = HOME */
    const char *ca_bundle;       /* host path of the CA bundle (system roots + authproxy's CA);
                                    NULL = no bundle and no trust variables */
    const char *workspace;       /* host directory bound writable; NULL = none */
    const char *workspace_mount; /* where it appears; NULL = JAIL_DEFAULT_WORKSPACE_MOUNT */
    const char *tmp_dir;        /* host directory bound at /tmp instead of a fresh tmpfs, or NULL */
    uint64_t fs_capacity_bytes; /* size of the private /tmp and /dev/shm; 0 = default */
    const char *const *hidden_paths; /* NULL-terminated host paths to hide, or NULL; paths
                                        that do not exist are ignored */
    const struct jail_bind *binds;   /* n_binds extra binds */
    size_t n_binds;
    int netns_fd;          /* network namespace to join; -1 = a new one (loopback up only) */
    struct cgroup *cgroup; /* placed into before anything runs; NULL = none. Borrowed: must
                              outlive the jail_proc. */
    const char *hostname;  /* NULL = "sandbox" */
    uid_t uid;             /* ids the command runs as. 0/0 keeps uid 0 (without any
                              capability); an unprivileged id is stronger (root-owned 0600
                              files and unix sockets stay out of reach) */
    gid_t gid;
    bool want_stdin;     /* give the parent a pipe to the command's stdin; else /dev/null */
    unsigned timeout_ms; /* wall-clock limit, 0 = none (enforced by jail_wait/jail_run) */
};

/* A running jail, owned by the caller: jail_wait until it returns 1, then jail_proc_close
 * (which also kills and reaps if needed). */
struct jail_proc {
    pid_t pid;     /* host pid of the sandbox init */
    int pidfd;     /* readable (poll) once init has exited; -1 if the kernel lacks pidfd */
    int stdin_fd;  /* write end of the command's stdin, -1 unless want_stdin */
    int stdout_fd; /* read ends of the command's stdout and stderr (blocking, CLOEXEC) */
    int stderr_fd;
    int status_fd;         /* internal: init reports the command's wait status here */
    uint64_t deadline_us;  /* monotonic_us() deadline, 0 = none */
    struct cgroup *cgroup; /* borrowed from the spec */
    uint64_t oom_before;   /* cgroup OOM kills before the command started */
    bool timed_out;
    bool reaped;
};

/* How a jailed command ended. */
struct jail_status {
    int exit_code;   /* exit status, or -1 when killed by a signal */
    int signal;      /* the signal that killed the command, 0 if it exited */
    bool timed_out;  /* the wall-clock limit was hit and the jail was killed */
    bool oom_killed; /* the sandbox's cgroup recorded an OOM kill during this command */
};

/* Result of jail_run. Buffers are heap, NUL-terminated for convenience (they may contain NULs
 * and arbitrary bytes; use the lengths); freed by jail_result_free. */
struct jail_result {
    struct jail_status status;
    char *out;
    size_t out_len;
    char *err;
    size_t err_len;
    bool out_truncated; /* output beyond max_output was read and discarded */
    bool err_truncated;
};

/* jail_spawn's return when the sandbox was built but the command itself could not start: its
 * program cannot be executed or its working directory entered (the caller's input, e.g. a 400
 * for an API request, rather than a failure of the host). */
#define JAIL_SPAWN_COMMAND_ERROR (-2)

/* Starts spec->argv in a new jail. Returns once the command has been exec'd (so a missing
 * program, a bad workspace or a mount failure is reported here, not as an exit code), 0 with
 * *proc filled, or -1 / JAIL_SPAWN_COMMAND_ERROR with a message in err (nothing left running,
 * no fd leaked). */
int jail_spawn(const struct jail_spec *spec, struct jail_proc *proc, char *err, size_t errlen);
/* Kills the whole jail now: SIGKILL to init; the kernel then kills every process of its PID
 * namespace, which no process can leave (setns/unshare are filtered). The cgroup is left alone:
 * other commands of the same sandbox may share it. Idempotent; 0 or -1 with errno. */
int jail_kill(struct jail_proc *proc);
/* Reaps the jail. With block, waits until it ends, killing it at the deadline (then
 * st->timed_out); without, returns 0 at once if it is still running (and kills it if the
 * deadline has passed). 1 with *st filled when it has ended, -1 on error. */
int jail_wait(struct jail_proc *proc, bool block, struct jail_status *st);
/* Releases the jail: kills and reaps it if still running, closes every fd. Safe to call twice. */
void jail_proc_close(struct jail_proc *proc);

/* Runs spec to completion: feeds stdin_data (if spec->want_stdin; the pipe is closed after it),
 * collects stdout and stderr (up to max_output bytes each; 0 = 16 MiB), enforces the timeout.
 * Blocking: call it from a thread that may block (e.g. not an event loop). 0 with *res filled
 * (whatever the command's exit status), or jail_spawn's error with a message in err if it could
 * not start. */
int jail_run(const struct jail_spec *spec, const void *stdin_data, size_t stdin_len,
             size_t max_output, struct jail_result *res, char *err, size_t errlen);
void jail_result_free(struct jail_result *res);

#endif
