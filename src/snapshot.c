#include "snapshot.h"

#include <stdlib.h>

#include "util.h"

struct snapshot_base *snapshot_base_new(struct config *config, bool from_file, char *err,
                                        size_t err_len)
{
    struct tls_upstream *tls = tls_upstream_new(config->upstream_ca_file, err, err_len);
    if (tls == NULL) {
        config_free(config);
        return NULL;
    }
    struct snapshot_base *b = xcalloc(1, sizeof(*b));
    atomic_init(&b->refs, 1);
    b->config = config;
    b->upstream_tls = tls;
    b->anonymous_allowed = from_file && config->has_proxy_config;
    return b;
}

void snapshot_base_unref(struct snapshot_base *b)
{
    if (b == NULL || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
        return;
    tls_upstream_free(b->upstream_tls);
    config_free(b->config);
    free(b);
}

struct snapshot *snapshot_new(uint64_t version, struct snapshot_base *base, struct registry *reg)
{
    struct snapshot *s = xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->version = version;
    atomic_fetch_add_explicit(&base->refs, 1, memory_order_relaxed);
    s->base = base;
    s->registry = reg ? registry_ref(reg) : NULL;
    s->config = base->config;
    s->upstream_tls = base->upstream_tls;
    return s;
}

struct snapshot *snapshot_ref(struct snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void snapshot_unref(struct snapshot *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    registry_unref(s->registry);
    snapshot_base_unref(s->base);
    free(s);
}
