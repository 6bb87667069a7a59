/* snapshot: the immutable runtime configuration a request is served under.
 *
 * Two parts change independently and are shared between successive snapshots:
 *   - the base: the loaded config file (policy for anonymous clients, dns_remap, limits) and
 *     the upstream TLS context built from its upstream_ca_file — replaced on SIGHUP;
 *   - the registry: every sandbox and its compiled policy — replaced on each control-plane
 *     write.
 * A snapshot is never modified after it is made; workers hold a reference to the current one
 * and every request takes its own reference when it starts, so a swap is atomic per request
 * and the old version is freed when its last request finishes. */
#ifndef AUTHPROXY_SNAPSHOT_H
#define AUTHPROXY_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "registry.h"
#include "tls_upstream.h"

struct snapshot_base {
    atomic_int refs;
    struct config *config;             /* owned */
    struct tls_upstream *upstream_tls; /* owned */
    bool anonymous_allowed;            /* the --config file has a proxy_config: clients without a
                                          sandbox credential get its policy (else 407) */
};

struct snapshot {
    atomic_int refs;
    uint64_t version;
    struct snapshot_base *base; /* reference */
    struct registry *registry;  /* reference, or NULL without a control plane */
    /* Borrowed from base, for brevity on the data path. */
    struct config *config;
    struct tls_upstream *upstream_tls;
};

/* Takes ownership of config (also on failure, when it is freed). Returns NULL with a message in
 * err if the upstream TLS context cannot be built (e.g. unreadable upstream_ca_file). */
struct snapshot_base *snapshot_base_new(struct config *config, bool from_file, char *err,
                                        size_t err_len);
void snapshot_base_unref(struct snapshot_base *b);

/* A snapshot of base and registry (either may be shared with other snapshots; both get a new
 * reference; registry may be NULL). */
struct snapshot *snapshot_new(uint64_t version, struct snapshot_base *base, struct registry *reg);
struct snapshot *snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);

#endif
