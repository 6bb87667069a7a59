/* audit: one JSON line per request, refusal or tunnel (SPEC §7), to a file or stdout.
 *
 * A record names what was decided and why, the names of injected headers and never their
 * values. Writes are serialised with a mutex and issued as one write(2) of a whole line to a
 * file opened O_APPEND, so lines from different threads never interleave and a crash loses at
 * most the line being written. */
#ifndef AUTHPROXY_AUDIT_H
#define AUTHPROXY_AUDIT_H

#include <stddef.h>
#include <stdint.h>

struct audit_log;

struct audit_record {
    const char *sandbox;   /* NULL: the standalone config's clients */
    const char *workspace; /* NULL likewise */
    const char *client;    /* client address "ip:port" */
    const char *method;    /* NULL for a tunnel or a refused connection */
    const char *scheme;    /* "http", "https", or "tunnel" */
    const char *host;
    uint16_t port;
    const char *path;       /* without query */
    const char *decision;   /* "allowed", "denied", "bypassed", "error" */
    const char *decided_by; /* rule name, "deny_list", "allow_list", "no_proxy", "callback", ... */
    const char *const *injected; /* names of injected headers */
    size_t n_injected;
    int status;          /* status sent to the client (0 if none) */
    int upstream_status; /* status from the upstream (0 if none) */
    uint64_t bytes_from_client;
    uint64_t bytes_to_client;
    uint64_t duration_us;
    const char *error; /* a short reason for errors/refusals, or NULL */
    uint64_t policy_version;
};

/* path "-" writes to stdout; NULL disables auditing. Returns NULL with errno on failure. */
struct audit_log *audit_open(const char *path);
void audit_close(struct audit_log *a);
/* Thread-safe. a may be NULL (no-op). */
void audit_write(struct audit_log *a, const struct audit_record *r);

#endif
