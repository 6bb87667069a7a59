/* config: the standalone configuration file (SPEC §8). See config.h for the contract.
 *
 * Loading is one pass over a parsed JSON tree that collects every problem into a local list;
 * only when the list is empty is a config returned, and each message is then re-issued with
 * the file name in front. Secrets live only as long as loading takes: they are resolved into
 * the compiled policy, and every copy this module made (the file text, the JSON strings, the
 * secret table) is zeroed before it is freed. */
#include "config.h"
#include "secret_set.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define CONFIG_MAX_FILE_BYTES   (16u << 20)
#define CONFIG_MIN_HEADER_BYTES 1024
#define CONFIG_MAX_HEADER_BYTES 1048576
#define CONFIG_MAX_TIMEOUT_MS   86400000 /* one day: anything longer is a typo */

void config_limits_default(struct config_limits *l)
{
    l->max_header_bytes = 65536;
    l->header_timeout_ms = 30000;
    l->idle_timeout_ms = 300000;
    l->connect_timeout_ms = 10000;
    l->callback_timeout_ms = 10000;
    l->max_connections_per_sandbox = 1024;
    l->requests_per_second_per_sandbox = 0;
    l->request_burst_per_sandbox = 0;
}

/* Parses "secrets": name -> "value" | {"value": "...", "configs": [{"host": "..."}]}. A secret
 * without configs gets the well-known default binding (SPEC §6). No message names a value. A
 * secret whose value is unusable still answers with an empty value, so rules using it are not
 * also reported as naming an unknown secret. */
static void config_secrets_parse(const json_t *obj, struct secret_set *out, struct errlist *errs)
{
    static const char *const keys[] = {"value", "configs", NULL};
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) {
        errlist_add(errs, "secrets: expected an object of secret name to value, found %s",
                    policy_json_kind(obj));
        return;
    }
    json_object_foreach((json_t *)obj, key, v)
    {
        char *path = policy_path_key("secrets", key);
        const json_t *value = v;
        const json_t *configs = NULL;
        if (json_is_object(v)) {
            policy_check_keys(v, path, keys, errs);
            value = json_object_get(v, "value");
            configs = json_object_get(v, "configs");
            if (value == NULL) {
                errlist_add(errs, "%s.value: required: the secret's value", path);
                value = NULL;
            } else if (!json_is_string(value)) {
                errlist_add(errs, "%s.value: expected a string, found %s", path,
                            policy_json_kind(value));
                value = NULL;
            }
        } else if (!json_is_string(v)) {
            errlist_add(errs,
                        "%s: expected a string or an object {\"value\", \"configs\"}, found %s",
                        path, policy_json_kind(v));
            value = NULL;
        }
        if (value != NULL && (json_string_length(value) == 0 ||
                              strlen(json_string_value(value)) != json_string_length(value))) {
            errlist_add(errs, "%s: the value is empty or contains a NUL character", path);
            value = NULL;
        }
        if (configs != NULL && json_is_null(configs))
            configs = NULL;
        secret_set_add(out, key, value ? json_string_value(value) : NULL, configs, path, errs);
        free(path);
    }
}

/* Parses "dns_remap": name -> "host" | "host:port" | "[v6]:port". */
static void config_remaps_parse(const json_t *obj, struct config *c, struct errlist *errs)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj)) {
        errlist_add(errs, "dns_remap: expected an object of host name to \"host[:port]\", found %s",
                    policy_json_kind(obj));
        return;
    }
    c->remaps = xcalloc(json_object_size(obj), sizeof(*c->remaps));
    json_object_foreach((json_t *)obj, key, v)
    {
        char name[256], host[256];
        uint16_t name_port = 0, port = 0;
        char *path = policy_path_key("dns_remap", key);
        const char *target = json_string_value(v);
        if (host_normalize(key, strlen(key), name, sizeof(name), &name_port) == -1 ||
            name_port != 0) {
            errlist_add(errs, "%s: the key must be a host name without port or wildcard", path);
        } else if (config_find_remap(c, name) != NULL) {
            errlist_add(errs, "%s: %s is remapped twice (names are case-insensitive)", path, name);
        } else if (!json_is_string(v)) {
            errlist_add(errs,
                        "%s: expected a string \"host\", \"host:port\" or \"[v6]:port\", found %s",
                        path, policy_json_kind(v));
        } else if (strlen(target) != json_string_length(v) ||
                   host_normalize(target, strlen(target), host, sizeof(host), &port) == -1) {
            char q[80];
            errlist_add(errs,
                        "%s: expected \"host\", \"host:port\" or \"[v6]:port\" with a port from 1 "
                        "to 65535, found %s",
                        path, policy_quote(target, q, sizeof(q)));
        } else {
            struct dns_remap_entry *e = &c->remaps[c->n_remaps++];
            e->name = xstrdup(name);
            e->host = xstrdup(host);
            e->port = port;
        }
        free(path);
    }
}

/* Reads one optional integer limit within [min, max] into *out. */
static void config_limit(const json_t *limits, const char *key, long long min, long long max,
                         long long *out, struct errlist *errs)
{
    const json_t *v = json_object_get(limits, key);
    if (v == NULL || json_is_null(v))
        return;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char found[64];
        if (json_is_integer(v))
            snprintf(found, sizeof(found), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else
            snprintf(found, sizeof(found), "%s", policy_json_kind(v));
        errlist_add(errs, "limits.%s: expected an integer from %lld to %lld, found %s", key, min,
                    max, found);
        return;
    }
    *out = json_integer_value(v);
}

/* Parses "limits" over the defaults already in *l. */
static void config_limits_parse(const json_t *obj, struct config_limits *l, struct errlist *errs)
{
    static const char *const keys[] = {"max_header_bytes", "header_timeout_ms", "idle_timeout_ms",
                                       "connect_timeout_ms", "callback_timeout_ms",
                                       "max_connections_per_sandbox",
                                       "requests_per_second_per_sandbox",
                                       "request_burst_per_sandbox", NULL};
    long long v;
    if (!json_is_object(obj)) {
        errlist_add(errs, "limits: expected an object, found %s", policy_json_kind(obj));
        return;
    }
    policy_check_keys(obj, "limits", keys, errs);
    v = (long long)l->max_header_bytes;
    config_limit(obj, "max_header_bytes", CONFIG_MIN_HEADER_BYTES, CONFIG_MAX_HEADER_BYTES, &v,
                 errs);
    l->max_header_bytes = (size_t)v;
    v = l->header_timeout_ms;
    config_limit(obj, "header_timeout_ms", 1, CONFIG_MAX_TIMEOUT_MS, &v, errs);
    l->header_timeout_ms = (unsigned)v;
    v = l->idle_timeout_ms;
    config_limit(obj, "idle_timeout_ms", 1, CONFIG_MAX_TIMEOUT_MS, &v, errs);
    l->idle_timeout_ms = (unsigned)v;
    v = l->connect_timeout_ms;
    config_limit(obj, "connect_timeout_ms", 1, CONFIG_MAX_TIMEOUT_MS, &v, errs);
    l->connect_timeout_ms = (unsigned)v;
    v = l->callback_timeout_ms;
    config_limit(obj, "callback_timeout_ms", 1, CONFIG_MAX_TIMEOUT_MS, &v, errs);
    l->callback_timeout_ms = (unsigned)v;
    v = l->max_connections_per_sandbox;
    config_limit(obj, "max_connections_per_sandbox", 0, 1000000, &v, errs);
    l->max_connections_per_sandbox = (unsigned)v;
    v = l->requests_per_second_per_sandbox;
    config_limit(obj, "requests_per_second_per_sandbox", 0, 1000000, &v, errs);
    l->requests_per_second_per_sandbox = (unsigned)v;
    v = l->request_burst_per_sandbox;
    config_limit(obj, "request_burst_per_sandbox", 0, 1000000, &v, errs);
    l->request_burst_per_sandbox = (unsigned)v;
}

/* Cuts jansson's " near '<token>'" suffix off a parse error: the token may be part of a
 * secret. */
static void config_strip_near(char *text)
{
    char *near = strstr(text, " near '");
    if (near != NULL)
        *near = '\0';
}

/* The body of config_parse; also tells whether the file holds any secret (for the permission
 * warning of config_load_file), even when it fails validation. */
static struct config *config_parse_internal(const char *text, size_t len, const char *source,
                                            uint64_t version, struct errlist *errs,
                                            bool *holds_secrets)
{
    static const char *const keys[] = {"secrets",          "proxy_config", "dns_remap",
                                       "upstream_ca_file", "limits",       NULL};
    struct errlist local = {0};
    struct secret_set *secrets = secret_set_new();
    struct secret_source src = secret_set_source(secrets);
    struct config *c = xcalloc(1, sizeof(*c));
    json_error_t jerr;
    const json_t *v;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);

    *holds_secrets = false;
    config_limits_default(&c->limits);
    if (root == NULL) {
        config_strip_near(jerr.text);
        errlist_add(&local, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
                    jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        errlist_add(&local, "expected a JSON object at the top level, found %s",
                    policy_json_kind(root));
        goto out;
    }
    policy_check_keys(root, "", keys, &local);

    v = json_object_get(root, "secrets");
    if (v != NULL && !json_is_null(v)) {
        *holds_secrets = json_object_size(v) > 0;
        config_secrets_parse(v, secrets, &local);
    }
    c->has_proxy_config = json_object_get(root, "proxy_config") != NULL;
    c->policy = policy_compile(json_object_get(root, "proxy_config"), &src, "proxy_config", version,
                               &local);

    v = json_object_get(root, "dns_remap");
    if (v != NULL && !json_is_null(v))
        config_remaps_parse(v, c, &local);

    v = json_object_get(root, "upstream_ca_file");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0)
            errlist_add(&local, "upstream_ca_file: expected a non-empty path string, found %s",
                        json_is_string(v) ? "an empty string" : policy_json_kind(v));
        else if (access(json_string_value(v), R_OK) == -1)
            errlist_add(&local, "upstream_ca_file: cannot read %s: %s", json_string_value(v),
                        strerror(errno));
        else
            c->upstream_ca_file = xstrdup(json_string_value(v));
    }

    v = json_object_get(root, "limits");
    if (v != NULL && !json_is_null(v))
        config_limits_parse(v, &c->limits, &local);

out:
    for (size_t i = 0; i < local.n; i++)
        errlist_add(errs, "%s: %s", source ? source : "config", local.msgs[i]);
    if (local.n > 0) {
        config_free(c);
        c = NULL;
    }
    errlist_free(&local);
    secret_set_free(secrets);
    /* The tree held the secrets and any opaque header values. */
    policy_json_zero_strings(root);
    json_decref(root);
    return c;
}

struct config *config_parse(const char *text, size_t len, const char *source_name, uint64_t version,
                            struct errlist *errs)
{
    bool holds_secrets;
    return config_parse_internal(text, len, source_name, version, errs, &holds_secrets);
}

struct config *config_load_file(const char *path, uint64_t version, struct errlist *errs)
{
    size_t len = 0;
    bool holds_secrets = false;
    struct stat st;
    char *text = read_file(path, CONFIG_MAX_FILE_BYTES, &len);
    if (text == NULL) {
        errlist_add(errs, "%s: cannot read: %s", path,
                    errno == EFBIG ? "file larger than 16 MiB" : strerror(errno));
        return NULL;
    }
    struct config *c = config_parse_internal(text, len, path, version, errs, &holds_secrets);
    secure_zero(text, len);
    free(text);
    if (holds_secrets && stat(path, &st) == 0 && (st.st_mode & 077) != 0)
        log_warn("%s holds secrets but is accessible by group or others (mode %03o); "
                 "chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
    return c;
}

struct config *config_new_default(uint64_t version)
{
    struct config *c = xcalloc(1, sizeof(*c));
    c->policy = policy_new_empty(version);
    config_limits_default(&c->limits);
    return c;
}

void config_free(struct config *c)
{
    if (c == NULL)
        return;
    policy_unref(c->policy);
    for (size_t i = 0; i < c->n_remaps; i++) {
        free(c->remaps[i].name);
        free(c->remaps[i].host);
    }
    free(c->remaps);
    free(c->upstream_ca_file);
    free(c);
}

const struct dns_remap_entry *config_find_remap(const struct config *c, const char *host)
{
    for (size_t i = 0; i < c->n_remaps; i++)
        if (strcmp(c->remaps[i].name, host) == 0)
            return &c->remaps[i];
    return NULL;
}
