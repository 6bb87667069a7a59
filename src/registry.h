/* registry: the sandboxes the data plane knows, as one immutable, reference-counted table.
 *
 * Built by control from the store (every box with its compiled policy) and swapped into the
 * data plane as part of a snapshot. The explicit proxy identifies a sandbox by the token in
 * Proxy-Authorization; the table is keyed by the token's SHA-256, sorted for binary search, so
 * a lookup never touches the store or takes a lock. A box whose runtime is running also has the
 * address of its network namespace's end of the veth pair: the transparent listener and the
 * sandbox resolver identify the sandbox by the connection's source address. */
#ifndef AUTHPROXY_REGISTRY_H
#define AUTHPROXY_REGISTRY_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

#define REGISTRY_HASH_LEN 32

struct registry_box {
    char *workspace_id;
    char *box_id;
    char *name;
    uint8_t token_hash[REGISTRY_HASH_LEN];
    struct policy *policy; /* one reference; NULL when the box's config does not compile now
                              (e.g. a secret it uses is gone): its requests are refused */
    struct in_addr sandbox_addr; /* its runtime's address; INADDR_ANY (0): not running */
};

struct registry {
    atomic_int refs;
    struct registry_box *boxes; /* sorted by token_hash */
    size_t n;
    const struct registry_box **by_addr; /* the running ones, sorted by sandbox_addr */
    size_t n_by_addr;
};

/* Takes ownership of boxes[0..n) (the array and what each entry holds) and sorts them. Two
 * boxes must not share a sandbox_addr (the address pool guarantees it). */
struct registry *registry_new(struct registry_box *boxes, size_t n);
struct registry *registry_ref(struct registry *r);
void registry_unref(struct registry *r);

/* The box whose proxy token hashes to hash, or NULL. r may be NULL. */
const struct registry_box *registry_find(const struct registry *r,
                                         const uint8_t hash[REGISTRY_HASH_LEN]);

/* The running box whose sandbox address is addr, or NULL. r may be NULL. */
const struct registry_box *registry_find_by_addr(const struct registry *r, struct in_addr addr);

#endif
