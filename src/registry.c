#include "registry.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

static int box_cmp(const void *a, const void *b)
{
    const struct registry_box *x = a, *y = b;
    return memcmp(x->token_hash, y->token_hash, REGISTRY_HASH_LEN);
}

struct registry *registry_new(struct registry_box *boxes, size_t n)
{
    struct registry *r = xcalloc(1, sizeof(*r));
    atomic_init(&r->refs, 1);
    r->boxes = boxes;
    r->n = n;
    if (n > 1)
        qsort(r->boxes, n, sizeof(*r->boxes), box_cmp);
    return r;
}

struct registry *registry_ref(struct registry *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

void registry_unref(struct registry *r)
{
    if (r == NULL || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->boxes[i].workspace_id);
        free(r->boxes[i].box_id);
        free(r->boxes[i].name);
        policy_unref(r->boxes[i].policy);
    }
    free(r->boxes);
    free(r);
}

const struct registry_box *registry_find(const struct registry *r,
                                         const uint8_t hash[REGISTRY_HASH_LEN])
{
    if (r == NULL || r->n == 0)
        return NULL;
    struct registry_box key;
    memcpy(key.token_hash, hash, REGISTRY_HASH_LEN);
    return bsearch(&key, r->boxes, r->n, sizeof(*r->boxes), box_cmp);
}
