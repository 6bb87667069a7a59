#include "secret_set.h"

#include <stdlib.h>
#include <string.h>

#include "glob.h"

#define DEFAULT_HOSTS_MAX 4

/* One secret, kept only while a policy is compiled. */
struct secret_entry {
    char *name;
    char *value; /* secret material: secret_free() */
    struct host_pattern *hosts;
    size_t n_hosts; /* 0: unrestricted */
};

struct secret_set {
    struct secret_entry *v;
    size_t n;
};

/* secret_source.get over the set. */
static const char *secret_set_get(void *ctx, const char *key, const struct host_pattern **hosts,
                                  size_t *n_hosts)
{
    const struct secret_set *s = ctx;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].name != NULL && strcmp(s->v[i].name, key) == 0) {
            *hosts = s->v[i].hosts;
            *n_hosts = s->v[i].n_hosts;
            return s->v[i].value;
        }
    return NULL;
}

static void secret_set_clear(struct secret_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].name);
        secret_free(s->v[i].value);
        for (size_t j = 0; j < s->v[i].n_hosts; j++)
            host_pattern_free(&s->v[i].hosts[j]);
        free(s->v[i].hosts);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* Compiles a secret's "configs" ([{"host": "..."}]) into its host binding. On a problem the
 * binding is left empty, so the policy does not report the same problem again as a binding
 * violation (the config fails anyway). */
static void secret_set_binding(const json_t *configs, const char *path, struct secret_entry *out,
                               struct errlist *errs)
{
    static const char *const keys[] = {"host", NULL};
    char q[80];
    if (!json_is_array(configs) || json_array_size(configs) == 0) {
        errlist_add(errs,
                    "%s: expected a non-empty array of {\"host\": \"...\"} (use [{\"host\": "
                    "\"*\"}] for no restriction), found %s",
                    path, json_is_array(configs) ? "an empty array" : policy_json_kind(configs));
        return;
    }
    size_t errs_before = errs->n;
    out->n_hosts = json_array_size(configs);
    out->hosts = xcalloc(out->n_hosts, sizeof(*out->hosts));
    for (size_t i = 0; i < out->n_hosts; i++) {
        const json_t *item = json_array_get(configs, i);
        const json_t *host = json_object_get(item, "host");
        const char *why;
        char *ip = xasprintf("%s[%zu]", path, i);
        if (!json_is_object(item)) {
            errlist_add(errs, "%s: expected an object {\"host\": \"...\"}, found %s", ip,
                        policy_json_kind(item));
        } else if (policy_check_keys(item, ip, keys, errs) && !json_is_string(host)) {
            errlist_add(errs, "%s.host: expected a host pattern string, found %s", ip,
                        policy_json_kind(host));
        } else if (json_is_string(host) &&
                   host_pattern_compile(json_string_value(host), &out->hosts[i], &why) == -1) {
            errlist_add(errs, "%s.host: invalid host pattern %s: %s", ip,
                        policy_quote(json_string_value(host), q, sizeof(q)), why);
        }
        free(ip);
    }
    if (errs->n != errs_before) {
        for (size_t i = 0; i < out->n_hosts; i++)
            host_pattern_free(&out->hosts[i]);
        free(out->hosts);
        out->hosts = NULL;
        out->n_hosts = 0;
    }
}

struct secret_set *secret_set_new(void)
{
    return xcalloc(1, sizeof(struct secret_set));
}

void secret_set_free(struct secret_set *s)
{
    if (s == NULL)
        return;
    secret_set_clear(s);
    free(s);
}

void secret_set_add(struct secret_set *s, const char *name, const char *value,
                    const json_t *configs, const char *path, struct errlist *errs)
{
    if (!policy_valid_secret_name(name)) {
        errlist_add(errs,
                    "%s: invalid secret name: letters, digits and '_', not starting with a digit",
                    path);
        return;
    }
    s->v = xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
    struct secret_entry *e = &s->v[s->n++];
    memset(e, 0, sizeof(*e));
    e->name = xstrdup(name);
    e->value = xstrdup(value ? value : "");
    if (configs != NULL) {
        char *cp = xasprintf("%s.configs", path);
        secret_set_binding(configs, cp, e, errs);
        free(cp);
        return;
    }
    const char *def[DEFAULT_HOSTS_MAX];
    const char *why;
    e->n_hosts = policy_default_secret_hosts(name, def, ARRAY_LEN(def));
    e->hosts = xcalloc(e->n_hosts, sizeof(*e->hosts));
    for (size_t j = 0; j < e->n_hosts; j++)
        if (host_pattern_compile(def[j], &e->hosts[j], &why) == -1)
            abort(); /* the built-in table is valid */
}

struct secret_source secret_set_source(struct secret_set *s)
{
    struct secret_source src = {secret_set_get, s};
    return src;
}
