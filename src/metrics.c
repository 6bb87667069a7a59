#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "util.h"

/* Upper bounds (seconds) of the latency histogram buckets; the last is +Inf. */
static const double latency_bounds[METRICS_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 1e300,
};

static const char *const decision_names[METRICS_N_DECISIONS] = {"allowed", "denied", "bypassed",
                                                                "error"};

void metrics_init(struct metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
}

void metrics_destroy(struct metrics *m)
{
    for (size_t i = 0; i < m->n_rules; i++)
        free(m->rules[i].rule);
    pthread_mutex_destroy(&m->lock);
}

static enum metrics_decision decision_index(const char *decision)
{
    for (int i = 0; i < METRICS_N_DECISIONS; i++)
        if (decision && strcmp(decision, decision_names[i]) == 0)
            return (enum metrics_decision)i;
    return METRICS_ERROR;
}

void metrics_record_request(struct metrics *m, const char *decision, const char *rule,
                            size_t n_injected, uint64_t duration_us, int upstream_error)
{
    double seconds = (double)duration_us / 1e6;
    pthread_mutex_lock(&m->lock);
    m->requests[decision_index(decision)]++;
    if (upstream_error)
        m->upstream_errors++;
    for (int i = 0; i < METRICS_LATENCY_BUCKETS; i++)
        if (seconds <= latency_bounds[i]) {
            m->latency_buckets[i]++;
            break;
        }
    m->latency_count++;
    m->latency_sum_seconds += seconds;
    if (rule != NULL && n_injected > 0) {
        size_t i;
        for (i = 0; i < m->n_rules; i++)
            if (strcmp(m->rules[i].rule, rule) == 0)
                break;
        if (i == m->n_rules && m->n_rules < METRICS_MAX_RULES)
            m->rules[m->n_rules++].rule = xstrdup(rule);
        if (i < m->n_rules)
            m->rules[i].injections += n_injected;
        else
            m->other_rule_injections += n_injected;
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_connection_delta(struct metrics *m, int delta)
{
    pthread_mutex_lock(&m->lock);
    m->active_connections += delta;
    pthread_mutex_unlock(&m->lock);
}

/* Writes s as a Prometheus label value (backslash, quote and newline escaped). */
static void add_label_value(struct evbuffer *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(out, "\\%c", *s);
        else if (*s == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, s, 1);
    }
}

void metrics_render(struct evbuffer *out, struct metrics *const *blocks, size_t n,
                    const struct metrics_globals *g)
{
    uint64_t requests[METRICS_N_DECISIONS] = {0};
    uint64_t buckets[METRICS_LATENCY_BUCKETS] = {0};
    uint64_t upstream_errors = 0, count = 0, other = 0;
    int64_t active = 0;
    int64_t per_worker[METRICS_MAX_BLOCKS];
    double sum = 0;
    struct metrics_rule_count rules[METRICS_MAX_RULES];
    size_t n_rules = 0;

    for (size_t b = 0; b < n; b++) {
        struct metrics *m = blocks[b];
        pthread_mutex_lock(&m->lock);
        for (int i = 0; i < METRICS_N_DECISIONS; i++)
            requests[i] += m->requests[i];
        for (int i = 0; i < METRICS_LATENCY_BUCKETS; i++)
            buckets[i] += m->latency_buckets[i];
        upstream_errors += m->upstream_errors;
        count += m->latency_count;
        sum += m->latency_sum_seconds;
        active += m->active_connections;
        if (b < METRICS_MAX_BLOCKS)
            per_worker[b] = m->active_connections;
        other += m->other_rule_injections;
        for (size_t i = 0; i < m->n_rules; i++) {
            size_t j;
            for (j = 0; j < n_rules; j++)
                if (strcmp(rules[j].rule, m->rules[i].rule) == 0)
                    break;
            if (j == n_rules) {
                if (n_rules == METRICS_MAX_RULES) {
                    other += m->rules[i].injections;
                    continue;
                }
                rules[n_rules].rule = xstrdup(m->rules[i].rule);
                rules[n_rules++].injections = 0;
            }
            rules[j].injections += m->rules[i].injections;
        }
        pthread_mutex_unlock(&m->lock);
    }

    evbuffer_add_printf(out, "# HELP authproxy_requests_total Requests and refused connections "
                             "by decision.\n# TYPE authproxy_requests_total counter\n");
    for (int i = 0; i < METRICS_N_DECISIONS; i++)
        evbuffer_add_printf(out, "authproxy_requests_total{decision=\"%s\"} %llu\n",
                            decision_names[i], (unsigned long long)requests[i]);
    evbuffer_add_printf(out, "# HELP authproxy_injected_credentials_total Headers injected, by "
                             "rule.\n# TYPE authproxy_injected_credentials_total counter\n");
    for (size_t i = 0; i < n_rules; i++) {
        evbuffer_add_printf(out, "authproxy_injected_credentials_total{rule=\"");
        add_label_value(out, rules[i].rule);
        evbuffer_add_printf(out, "\"} %llu\n", (unsigned long long)rules[i].injections);
        free(rules[i].rule);
    }
    if (other)
        evbuffer_add_printf(out, "authproxy_injected_credentials_total{rule=\"_other\"} %llu\n",
                            (unsigned long long)other);
    evbuffer_add_printf(out,
                        "# HELP authproxy_upstream_errors_total Upstream DNS, connect, TLS and "
                        "protocol failures.\n# TYPE authproxy_upstream_errors_total counter\n"
                        "authproxy_upstream_errors_total %llu\n",
                        (unsigned long long)upstream_errors);
    evbuffer_add_printf(out, "# HELP authproxy_request_duration_seconds Time from request head "
                             "to the end of the exchange.\n# TYPE "
                             "authproxy_request_duration_seconds histogram\n");
    uint64_t cumulative = 0;
    for (int i = 0; i < METRICS_LATENCY_BUCKETS; i++) {
        cumulative += buckets[i];
        if (i == METRICS_LATENCY_BUCKETS - 1)
            evbuffer_add_printf(out,
                                "authproxy_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                                (unsigned long long)cumulative);
        else
            evbuffer_add_printf(out, "authproxy_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                                latency_bounds[i], (unsigned long long)cumulative);
    }
    evbuffer_add_printf(out,
                        "authproxy_request_duration_seconds_sum %.6f\n"
                        "authproxy_request_duration_seconds_count %llu\n",
                        sum, (unsigned long long)count);
    evbuffer_add_printf(out,
                        "# HELP authproxy_active_connections Client connections open now.\n"
                        "# TYPE authproxy_active_connections gauge\n"
                        "authproxy_active_connections %lld\n",
                        (long long)active);
    evbuffer_add_printf(out, "# HELP authproxy_worker_connections Client connections open now, "
                             "by worker thread.\n# TYPE authproxy_worker_connections gauge\n");
    for (size_t b = 0; b < n && b < METRICS_MAX_BLOCKS; b++)
        evbuffer_add_printf(out, "authproxy_worker_connections{worker=\"%zu\"} %lld\n", b,
                            (long long)per_worker[b]);
    evbuffer_add_printf(out,
                        "# HELP authproxy_cert_cache_hits_total Leaf certificates served from "
                        "the cache.\n# TYPE authproxy_cert_cache_hits_total counter\n"
                        "authproxy_cert_cache_hits_total %llu\n"
                        "# HELP authproxy_cert_cache_misses_total Leaf certificate cache "
                        "misses.\n# TYPE authproxy_cert_cache_misses_total counter\n"
                        "authproxy_cert_cache_misses_total %llu\n"
                        "# HELP authproxy_cert_mints_total Leaf certificates signed.\n"
                        "# TYPE authproxy_cert_mints_total counter\n"
                        "authproxy_cert_mints_total %llu\n"
                        "# HELP authproxy_cert_cache_size Leaf certificates cached now.\n"
                        "# TYPE authproxy_cert_cache_size gauge\n"
                        "authproxy_cert_cache_size %llu\n"
                        "# HELP authproxy_config_version Version of the policy in use.\n"
                        "# TYPE authproxy_config_version gauge\n"
                        "authproxy_config_version %llu\n",
                        (unsigned long long)g->cert_cache_hits,
                        (unsigned long long)g->cert_cache_misses, (unsigned long long)g->cert_mints,
                        (unsigned long long)g->cert_cache_size,
                        (unsigned long long)g->config_version);
}
