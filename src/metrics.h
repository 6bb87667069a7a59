/* metrics: counters and a latency histogram for the Prometheus endpoint.
 *
 * Each worker owns one struct metrics and is its only writer; its mutex is uncontended except
 * while a scrape reads it, so recording stays off any global lock. metrics_render sums every
 * worker's block. Labels are bounded: decisions are a fixed set, rule names come from the
 * policy (a per-worker map capped at METRICS_MAX_RULES; beyond it counts go to "_other"). */
#ifndef AUTHPROXY_METRICS_H
#define AUTHPROXY_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define METRICS_MAX_RULES       256
#define METRICS_LATENCY_BUCKETS 14
#define METRICS_MAX_BLOCKS      64 /* one block per worker: --workers is at most 64 */

enum metrics_decision {
    METRICS_ALLOWED = 0,
    METRICS_DENIED,
    METRICS_BYPASSED,
    METRICS_ERROR,
    METRICS_N_DECISIONS,
};

struct metrics_rule_count {
    char *rule; /* owned */
    uint64_t injections;
};

struct metrics {
    pthread_mutex_t lock;
    uint64_t requests[METRICS_N_DECISIONS];
    uint64_t upstream_errors;
    uint64_t latency_buckets[METRICS_LATENCY_BUCKETS]; /* cumulative upper bounds, see .c */
    uint64_t latency_count;
    double latency_sum_seconds;
    int64_t active_connections;
    struct metrics_rule_count rules[METRICS_MAX_RULES];
    size_t n_rules;
    uint64_t other_rule_injections;
};

void metrics_init(struct metrics *m);
void metrics_destroy(struct metrics *m);

/* One finished request or refusal. decision is the audit decision string; rule the rule that
 * injected headers (NULL if none); duration in microseconds. */
void metrics_record_request(struct metrics *m, const char *decision, const char *rule,
                            size_t n_injected, uint64_t duration_us, int upstream_error);
void metrics_connection_delta(struct metrics *m, int delta);

/* Facts the renderer adds that no worker owns. */
struct metrics_globals {
    uint64_t config_version;
    uint64_t cert_cache_hits;
    uint64_t cert_cache_misses;
    uint64_t cert_mints;
    uint64_t cert_cache_size;
};

/* Appends the Prometheus text exposition of the n blocks (one per worker, in worker order)
 * plus globals to out. */
void metrics_render(struct evbuffer *out, struct metrics *const *blocks, size_t n,
                    const struct metrics_globals *g);

#endif
