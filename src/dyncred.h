/* dyncred: credentials resolved at request time — a user's callback (SPEC §4) or a GCP
 * service account's access token (SPEC §2, type "gcp") — cached in the shared credcache.
 *
 * The data path asks for a key's headers; a cache hit answers at once. On a miss the first
 * asker's worker makes the one HTTP exchange for that key (httpc: dns_remap, verified TLS) and
 * every asker, on any worker, is called back in its own thread with the outcome. Anything but a
 * well-formed success fails closed: the askers get NULL (the data path answers 502 "callback
 * resolution failed"), nothing is cached, the next request asks again.
 *
 * Callback requests are signed (X-LangSmith-Signature-JWT, signkeys) so the callback endpoint
 * can check that they come from this deployment and that the body was not altered. */
#ifndef AUTHPROXY_DYNCRED_H
#define AUTHPROXY_DYNCRED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "credcache.h"
#include "http1.h"
#include "policy.h"
#include "worker.h"

/* Bodies of full_request callbacks are cut at this size (body_truncated: true). */
#define DYNCRED_CALLBACK_BODY_MAX (64 * 1024)
/* A callback or token endpoint answer longer than this fails. */
#define DYNCRED_RESPONSE_MAX (64 * 1024)
/* At most this many headers from one callback answer. */
#define DYNCRED_MAX_HEADERS 32

/* The request a callback is asked about (the sandbox's request, SPEC §4). */
struct dyncred_request {
    const char *host; /* normalised */
    uint16_t port;
    const char *tenant_id;  /* workspace id; NULL (sent as "") for the config file's clients */
    const char *sandbox_id; /* box id, likewise */
    /* Used only with full_request: */
    const char *method;
    const char *scheme; /* "http" / "https" */
    const char *target; /* origin-form path and query as sent */
    size_t target_len;
    const struct http1_header *headers;
    size_t n_headers;
    const void *body; /* the first body bytes (at most DYNCRED_CALLBACK_BODY_MAX) */
    size_t body_len;
    bool body_truncated;
};

/* The cache key of a callback answer: sandbox, the callback (url, ttl, full_request, its
 * request_headers), host and port, and with full_request also method and path (SPEC §4). */
void dyncred_callback_key(const struct policy_callback *cb, const struct dyncred_request *rq,
                          uint8_t key[CREDCACHE_KEY_LEN]);

/* The cache key of a GCP rule's token: the service account and the scopes. */
void dyncred_gcp_key(const struct policy_rule *rule, uint8_t key[CREDCACHE_KEY_LEN]);

/* Looks key up; on a miss registers (done, arg) as a waiter in w's thread and, if no exchange
 * for key is under way, starts one on w with snap's settings. Returns as credcache_lookup. */
enum credcache_result
dyncred_callback_resolve(struct worker *w, struct snapshot *snap, const struct policy_callback *cb,
                         const struct dyncred_request *rq, const uint8_t key[CREDCACHE_KEY_LEN],
                         credcache_cb done, void *arg, struct cred_headers **hit,
                         struct credcache_waiter **waiter);

enum credcache_result dyncred_gcp_resolve(struct worker *w, struct snapshot *snap,
                                          const struct policy_rule *rule,
                                          const uint8_t key[CREDCACHE_KEY_LEN], credcache_cb done,
                                          void *arg, struct cred_headers **hit,
                                          struct credcache_waiter **waiter);

/* Ends every exchange still running on w (the worker is shutting down): their waiters get a
 * failure. Called in w's thread. */
void dyncred_worker_shutdown(struct worker *w);

/* Parses a callback's answer: a JSON object whose "headers" member is an object of string
 * values, each a sendable header (http1_override_valid), at most DYNCRED_MAX_HEADERS. Returns
 * the set, or NULL when the answer is not exactly that. Exposed for tests and fuzzing. */
struct cred_headers *dyncred_parse_callback_answer(const char *body, size_t len);

#endif
