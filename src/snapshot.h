/* snapshot: the immutable runtime configuration a request is served under.
 *
 * A snapshot bundles what a reload replaces as one unit: the loaded config (policy, dns_remap,
 * limits) and the upstream TLS context built from its upstream_ca_file. It is never modified
 * after snapshot_new; workers hold a reference to the current one and every request takes its
 * own reference when it starts, so a reload (SIGHUP) swaps versions atomically per request and
 * the old version is freed when its last request finishes. */
#ifndef AUTHPROXY_SNAPSHOT_H
#define AUTHPROXY_SNAPSHOT_H

#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "tls_upstream.h"

struct snapshot {
    atomic_int refs;
    uint64_t version;
    struct config *config;             /* owned */
    struct tls_upstream *upstream_tls; /* owned */
};

/* Takes ownership of config (also on failure, when it is freed). Returns NULL with a message in
 * err if the upstream TLS context cannot be built (e.g. unreadable upstream_ca_file). */
struct snapshot *snapshot_new(struct config *config, char *err, size_t err_len);
struct snapshot *snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);

#endif
