/* sandbox_run: `authproxy sandbox run` — one command in a fresh sandbox whose only network path
 * is authproxy (SPEC §5, §8).
 *
 * Self-contained: it starts the proxy it needs inside this process (a transparent listener on
 * the sandbox network's host side, no control API), creates the sandbox's network namespace
 * (netns), cgroup (cgroup) and jail (jail), runs the command, relays its output and exit status,
 * and removes everything afterwards — also when the command fails or times out. The policy is
 * the --config file's proxy_config (without one, every connection is refused: fail closed). */
#ifndef AUTHPROXY_SANDBOX_RUN_H
#define AUTHPROXY_SANDBOX_RUN_H

#include <stdint.h>

struct sandbox_run_options {
    const char *config_path; /* may be NULL */
    const char *state_dir;
    const char *name;         /* NULL: generated */
    const char *upstream_dns; /* resolver for the proxy itself, or NULL */
    unsigned vcpus;           /* 0: no CPU limit */
    uint64_t mem_bytes;       /* 0: no memory limit */
    unsigned timeout_s;       /* 0: none */
    char *const *argv;        /* NULL-terminated command */
};

/* Runs the command; returns the exit status for the process: the command's, 128 + signal if it
 * was killed, 124 on timeout, 125 if the sandbox could not be set up (reason on stderr). */
int sandbox_run(const struct sandbox_run_options *o);

#endif
