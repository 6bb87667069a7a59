/* policy: a compiled proxy_config (SPEC §2, §3), immutable and reference-counted.
 *
 * A policy is built once when a config is applied, never modified afterwards, and shared by
 * every worker thread: a request takes a reference when it starts and uses that one version to
 * the end, so a reload can never show it half of an old policy and half of a new one.
 *
 * Decisions follow SPEC §3 exactly:
 *   1. access_control (deny_list, then a non-empty allow_list)  -> policy_decide_host
 *   2. no_proxy                                                -> policy_decide_host
 *   3. rules in order, first enabled match on host and path     -> policy_decide_request
 *   4. callbacks, only if no rule's host pattern matches        -> policy_decide_request
 *   5. forward unchanged
 *
 * A compiled policy holds resolved secret values (injected header values). They are zeroed when
 * the last reference goes away and are never logged. */
#ifndef AUTHPROXY_POLICY_H
#define AUTHPROXY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "glob.h"
#include "scrub.h"
#include "util.h"

enum policy_rule_type {
    POLICY_RULE_HEADERS = 1,
    POLICY_RULE_AWS,
    POLICY_RULE_GCP,
};

struct policy_header {
    char *name;  /* as configured, e.g. "Authorization" */
    char *value; /* fully resolved; secret material */
    bool secret; /* from a workspace secret or opaque (not plaintext): scrubbed from responses */
};

/* A rule's env_vars placeholder (SPEC §2): plaintext, for the sandbox environment only. */
struct policy_env_var {
    char *name;
    char *value;
};

/* Provider credentials of an "aws" rule, resolved; secret material (zeroed on free). */
struct policy_aws {
    char *access_key_id;
    char *secret_access_key;
    char *session_token; /* NULL when not configured */
};

/* Provider credentials of a "gcp" rule. service_account_json is resolved secret material and is
 * known to be a JSON object with "client_email" and "private_key" strings. */
struct policy_gcp {
    char *service_account_json;
    char **scopes; /* default: https://www.googleapis.com/auth/cloud-platform */
    size_t n_scopes;
};

struct policy_rule {
    char *name;
    enum policy_rule_type type;
    bool enabled;
    bool allow_plaintext;
    struct host_pattern *hosts; /* for AWS/GCP rules without match_hosts: the built-in hosts */
    size_t n_hosts;
    char **paths; /* path globs; n_paths == 0 matches every path */
    size_t n_paths;
    struct policy_header *headers; /* POLICY_RULE_HEADERS */
    size_t n_headers;
    struct policy_env_var *env_vars;
    size_t n_env_vars;
    struct policy_aws aws; /* POLICY_RULE_AWS */
    struct policy_gcp gcp; /* POLICY_RULE_GCP */
    struct scrub *scrub;   /* the secret header values, redacted from responses; NULL if none */
};

struct policy_callback {
    struct host_pattern *hosts;
    size_t n_hosts;
    char *url;
    unsigned ttl_seconds;
    bool full_request;
    struct policy_header *request_headers;
    size_t n_request_headers;
    bool allow_plaintext; /* authproxy extension, default false: as a rule's allow_plaintext */
};

enum policy_host_verdict {
    POLICY_HOST_DENY = 1, /* refused by access_control */
    POLICY_HOST_BYPASS,   /* no_proxy: tunnel untouched, no TLS termination */
    POLICY_HOST_INSPECT,  /* terminate TLS / parse HTTP and decide per request */
};

struct policy_host_decision {
    enum policy_host_verdict verdict;
    const char
        *decided_by; /* "deny_list", "allow_list", "no_proxy" or NULL: for 403 bodies and audit */
};

enum policy_request_action {
    POLICY_FORWARD = 1,      /* no rule or callback applies: forward unchanged */
    POLICY_INJECT,           /* rule matched: inject rule->headers */
    POLICY_CALLBACK,         /* no rule host matched; callback resolves the headers */
    POLICY_REFUSE_PLAINTEXT, /* rule matched but the request would leave in plain text */
};

/* Callback credentials are held to the same TLS-only rule as a rule's: a plain-HTTP request
 * that a callback would serve is REFUSE_PLAINTEXT unless the callback sets allow_plaintext. rule
 * is never NULL for REFUSE_PLAINTEXT: when a callback refused, rule is a stand-in named
 * "callbacks" (no hosts, no headers) and callback is set, so callers can always name
 * rule->name as what decided. */
struct policy_request_decision {
    enum policy_request_action action;
    const struct policy_rule *rule;         /* INJECT, REFUSE_PLAINTEXT */
    const struct policy_callback *callback; /* CALLBACK, REFUSE_PLAINTEXT from a callback */
};

struct policy;

/* Where compilation finds workspace secrets. get() returns the secret's value (borrowed, valid
 * for the duration of policy_compile) or NULL if there is no such secret; it sets *hosts and
 * *n_hosts to the secret's host binding (after the well-known defaults of SPEC §6 have been
 * applied; n_hosts == 0 means unrestricted). */
struct secret_source {
    const char *(*get)(void *ctx, const char *key, const struct host_pattern **hosts,
                       size_t *n_hosts);
    void *ctx;
};

/* The host binding a secret gets when its configs are omitted (SPEC §6): OPENAI_API_KEY ->
 * api.openai.com, ANTHROPIC_API_KEY -> api.anthropic.com, GITHUB_TOKEN/GH_TOKEN -> github.com and
 * *.github.com. Returns the number of patterns written to out (0: unrestricted). */
size_t policy_default_secret_hosts(const char *key, const char **out, size_t out_cap);

/* Compiles a proxy_config JSON object (NULL or JSON null: an empty policy). json_path prefixes
 * error messages ("proxy_config.rules[0].headers[1].type: expected one of ..."), and is
 * "proxy_config" when NULL. Every problem found is
 * appended to errs; on any error the result is NULL and nothing is half-built. Legacy rules
 * with "inject_headers" ({"Authorization": "Bearer ${KEY}"}) are accepted. version is an
 * opaque number reported in audit/metrics. The result has one reference. */
struct policy *policy_compile(const json_t *proxy_config, const struct secret_source *secrets,
                              const char *json_path, uint64_t version, struct errlist *errs);

/* An empty policy: forwards everything unchanged. One reference. */
struct policy *policy_new_empty(uint64_t version);

/* Reference counting is atomic: any thread may ref/unref. */
struct policy *policy_ref(struct policy *p);
void policy_unref(struct policy *p);
uint64_t policy_version(const struct policy *p);

/* host is normalised (glob.h host_normalize). Steps 1 and 2 of SPEC §3. */
void policy_decide_host(const struct policy *p, const char *host, struct policy_host_decision *out);

/* True if the policy names host explicitly: an exact pattern (a name or an IP literal, not a
 * wildcard) in allow_list, no_proxy, an enabled rule's or a callback's match_hosts is host.
 * Only such hosts may lead to internal addresses (loopback, link-local, private ranges;
 * upstream.c): a sandbox cannot reach them through a name of its choosing that resolves there
 * (DNS rebinding, even under an allowed "*.example.com") or through "allow everything". */
bool policy_names_host(const struct policy *p, const char *host);

/* Steps 3-5 for a request to an INSPECTed host. path excludes the query string. upstream_tls
 * says whether the request will leave over verified TLS. Disabled rules take no part at all:
 * they neither match nor keep callbacks away from their hosts. */
void policy_decide_request(const struct policy *p, const char *host, const char *path,
                           size_t path_len, bool upstream_tls, struct policy_request_decision *out);

/* The compiled rules and callbacks in config order, borrowed for the life of p (e.g. for the
 * env_vars of enabled rules, or listing). */
const struct policy_rule *policy_rules(const struct policy *p, size_t *n);
const struct policy_callback *policy_callbacks(const struct policy *p, size_t *n);

/* Rewrites legacy rules ("inject_headers": {"Authorization": "Bearer ${KEY}"}) into the current
 * format (a "headers" array; a value holding "${" becomes a workspace_secret "{KEY}" template,
 * any other value plaintext), for storing and returning configs (SPEC §2). Returns a new
 * reference to a deep copy; anything it does not recognise is copied unchanged for
 * policy_compile to report. */
json_t *policy_config_upgrade(const json_t *proxy_config);

/* Helpers shared with config.c's validator, so both report errors the same way. */

/* True if name can be referenced as {NAME}: [A-Za-z_][A-Za-z0-9_]*. */
bool policy_valid_secret_name(const char *name);

/* "a string", "an object", ... for "expected X, found Y" messages. */
const char *policy_json_kind(const json_t *v);
/* parent.key, or parent["key"] when key is not made of [A-Za-z0-9_-]. Caller frees. */
char *policy_path_key(const char *parent, const char *key);
/* Writes s, double-quoted, truncated and with anything unprintable replaced, into buf, for
 * echoing user input that is not secret (host patterns, type names, key names). Returns buf. */
const char *policy_quote(const char *s, char *buf, size_t size);
/* Reports every key of obj not in allowed (NULL-terminated) as an error at path. Returns true
 * if there was none. */
bool policy_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                       struct errlist *errs);
/* Overwrites every string inside v with zeros (jansson frees without zeroing): for JSON trees
 * that held secrets, before json_decref. */
void policy_json_zero_strings(json_t *v);

#endif
