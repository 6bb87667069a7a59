#include "snapshot.h"

#include <stdlib.h>

#include "util.h"

struct snapshot *snapshot_new(struct config *config, char *err, size_t err_len)
{
    struct tls_upstream *tls = tls_upstream_new(config->upstream_ca_file, err, err_len);
    if (tls == NULL) {
        config_free(config);
        return NULL;
    }
    struct snapshot *s = xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->version = policy_version(config->policy);
    s->config = config;
    s->upstream_tls = tls;
    return s;
}

struct snapshot *snapshot_ref(struct snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void snapshot_unref(struct snapshot *s)
{
    if (s == NULL)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    tls_upstream_free(s->upstream_tls);
    config_free(s->config);
    free(s);
}
