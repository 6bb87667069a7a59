/* config: the standalone configuration file of `authproxy serve --config FILE` (SPEC §8).
 *
 *   {"secrets": {...}, "proxy_config": {...}, "dns_remap": {...}, "upstream_ca_file": "...",
 *    "limits": {...}}
 *
 * A loaded config is immutable. Loading validates everything and reports every error with the
 * file name and the JSON path; a config that fails validation is never partly applied. */
#ifndef AUTHPROXY_CONFIG_H
#define AUTHPROXY_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"
#include "util.h"

/* dns_remap: connections for `name` go to host:port instead (port 0: the request's own port).
 * The original name is still used for SNI, certificate verification and Host. */
struct dns_remap_entry {
    char *name; /* normalised (lower-case, no trailing dot) */
    char *host; /* canonical (glob.h host_normalize): a lower-case name, dotted-quad IPv4, or an
                 * IPv6 literal without brackets */
    uint16_t port;
};

/* Operational limits (an authproxy extension to SPEC §8's file, all optional). Accepted ranges:
 * max_header_bytes 1024..1048576, each timeout 1..86400000 ms. */
struct config_limits {
    size_t max_header_bytes;     /* request/response head size; over it: 431. Default 65536 */
    unsigned header_timeout_ms;  /* a head must arrive within this. Default 30000 */
    unsigned idle_timeout_ms;    /* idle keep-alive / tunnel connections close. Default 300000 */
    unsigned connect_timeout_ms; /* upstream TCP+TLS connect. Default 10000 */
    unsigned callback_timeout_ms; /* a whole credential callback or token exchange. Default 10000 */
    /* Per sandbox (sandbox_limits.h): open connections (default 1024; 0: no limit) and requests
     * per second with a burst (defaults 0: no rate limit; burst 0 = the rate). Over: 429. */
    unsigned max_connections_per_sandbox;
    unsigned requests_per_second_per_sandbox;
    unsigned request_burst_per_sandbox;
};

struct config {
    struct policy *policy; /* one reference, owned */
    bool has_proxy_config; /* the file has a "proxy_config" (else policy is empty and clients
                              without a sandbox credential are refused) */
    struct dns_remap_entry *remaps;
    size_t n_remaps;
    char *upstream_ca_file; /* NULL if unset; as written in the file (relative to the cwd) */
    struct config_limits limits;
};

/* Reads and validates FILE. On failure returns NULL and appends to errs one message per problem,
 * each starting with "FILE: " and naming the JSON path (invalid JSON: line and column). A file
 * holding secrets that group or others may access only draws a log_warn. Every copy of the
 * secrets made while loading is zeroed; the config itself keeps none (they are resolved into
 * the policy). Unknown keys are errors; JSON null for an optional key means absent. */
struct config *config_load_file(const char *path, uint64_t version, struct errlist *errs);

/* Same for a JSON text in memory; source_name prefixes the messages. */
struct config *config_parse(const char *text, size_t len, const char *source_name, uint64_t version,
                            struct errlist *errs);

/* A config with an empty policy and default limits (serve without --config). */
struct config *config_new_default(uint64_t version);

void config_free(struct config *c);

/* The remap entry for a normalised host, or NULL. */
const struct dns_remap_entry *config_find_remap(const struct config *c, const char *host);

void config_limits_default(struct config_limits *l);

#endif
