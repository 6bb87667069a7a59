#include "registry.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static int box_cmp(const void *a, const void *b)
{
    const struct registry_box *x = a, *y = b;
    return memcmp(x->token_hash, y->token_hash, REGISTRY_HASH_LEN);
}

static int addr_cmp(const void *a, const void *b)
{
    uint32_t x = ntohl((*(const struct registry_box *const *)a)->sandbox_addr.s_addr);
    uint32_t y = ntohl((*(const struct registry_box *const *)b)->sandbox_addr.s_addr);
    return x < y ? -1 : x > y;
}

struct registry *registry_new(struct registry_box *boxes, size_t n)
{
    struct registry *r = xcalloc(1, sizeof(*r));
    atomic_init(&r->refs, 1);
    r->boxes = boxes;
    r->n = n;
    if (n > 1)
        qsort(r->boxes, n, sizeof(*r->boxes), box_cmp);
    r->by_addr = xcalloc(n ? n : 1, sizeof(*r->by_addr));
    for (size_t i = 0; i < n; i++)
        if (r->boxes[i].sandbox_addr.s_addr != INADDR_ANY)
            r->by_addr[r->n_by_addr++] = &r->boxes[i];
    if (r->n_by_addr > 1)
        qsort(r->by_addr, r->n_by_addr, sizeof(*r->by_addr), addr_cmp);
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
    free(r->by_addr);
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

const struct registry_box *registry_find_by_addr(const struct registry *r, struct in_addr addr)
{
    if (r == NULL || r->n_by_addr == 0 || addr.s_addr == INADDR_ANY)
        return NULL;
    struct registry_box key = {.sandbox_addr = addr};
    const struct registry_box *kp = &key;
    const struct registry_box *const *hit =
        bsearch(&kp, r->by_addr, r->n_by_addr, sizeof(*r->by_addr), addr_cmp);
    return hit ? *hit : NULL;
}
