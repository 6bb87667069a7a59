/* api_secrets: /v1/workspaces/current/secrets — list, get, PUT, DELETE, and the hosted bulk
 * form (POST [{"key", "value"}]).
 *
 * Values are write-only: sealed by the store, never returned, logged or echoed in an error.
 * configs is the secret's host binding ([{"host": "<pattern>"}]; SPEC §6), stored verbatim.
 *
 * A secret change must not silently break a box: before anything is written, every box of the
 * workspace that compiles with the current secrets is compiled against the secrets as they would
 * be after the change (deleted, re-valued, re-bound). If one would no longer compile — it uses a
 * deleted secret, or a narrowed binding no longer covers its rule's hosts — the change is refused
 * with 409 naming the box and the reason. Then the change is stored and published, so boxes pick
 * up a new value for the next request (resolution is repeated, no re-apply needed). */
#include "api.h"

#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "policy.h"
#include "secret_set.h"

/* One secret as it should be after the request. */
struct api_secret_change {
    const char *name;
    bool remove;
    const char *value;     /* NULL: keep the stored value */
    bool has_configs;      /* false: keep the stored binding (default for a new secret) */
    const json_t *configs; /* with has_configs: the array, or NULL for the default */
};

static const struct api_secret_change *find_change(const struct api_secret_change *ch, size_t n,
                                                   const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(ch[i].name, name) == 0)
            return &ch[i];
    return NULL;
}

/* The workspace's secrets with changes applied, as a policy secret source. NULL on a store
 * failure (logged). Problems with a binding go to errs. The caller frees the set. */
static struct secret_set *api_secrets_set(struct api_call *c, const struct api_secret_change *ch,
                                          size_t n, struct errlist *errs)
{
    struct store_secret_list l = {0};
    struct secret_set *set = NULL;
    int rc = store_secret_list(c->api->st, c->ws_id, &l);
    if (rc != STORE_OK)
        goto fail;
    set = secret_set_new();
    for (size_t i = 0; i < l.n; i++) {
        const struct store_secret *s = &l.items[i];
        const struct api_secret_change *chg = find_change(ch, n, s->name);
        char *value = NULL;
        json_t *stored_configs = NULL;
        const json_t *configs;
        if (chg != NULL && chg->remove)
            continue;
        if (chg != NULL && chg->value != NULL)
            value = xstrdup(chg->value);
        else if ((rc = store_secret_reveal(c->api->st, c->ws_id, s->name, &value)) != STORE_OK)
            goto fail;
        if (chg != NULL && chg->has_configs) {
            configs = chg->configs;
        } else {
            stored_configs = s->hosts_json ? json_loads(s->hosts_json, 0, NULL) : NULL;
            configs = stored_configs;
        }
        char *path = xasprintf("secrets.%s", s->name);
        secret_set_add(set, s->name, value, configs, path, errs);
        free(path);
        secret_free(value);
        json_decref(stored_configs);
    }
    for (size_t i = 0; i < n; i++) {
        bool stored = false;
        for (size_t j = 0; j < l.n && !stored; j++)
            stored = strcmp(l.items[j].name, ch[i].name) == 0;
        if (stored || ch[i].remove || ch[i].value == NULL)
            continue;
        char *path = xasprintf("secrets.%s", ch[i].name);
        secret_set_add(set, ch[i].name, ch[i].value, ch[i].has_configs ? ch[i].configs : NULL, path,
                       errs);
        free(path);
    }
    store_secret_list_free(&l);
    return set;
fail:
    log_error("api: reading the secrets of workspace %s failed: %s", c->ws_id, store_strerror(rc));
    secret_set_free(set);
    store_secret_list_free(&l);
    return NULL;
}

/* Whether proxy_config text of box b compiles against set; the reason goes to why. */
static bool api_secrets_box_compiles(struct api_call *c, const struct store_box *b,
                                     struct secret_set *set, struct errlist *why)
{
    json_t *doc = json_loads(b->proxy_config ? b->proxy_config : "{}", 0, NULL);
    char *aad = store_aad_box(c->ws_id, b->id);
    bool ok = false;
    if (doc == NULL || store_json_unseal(c->api->st, doc, aad) != STORE_OK) {
        errlist_add(why, "its stored proxy_config is unreadable");
    } else {
        struct secret_source src = secret_set_source(set);
        struct policy *p = policy_compile(doc, &src, "proxy_config", 0, why);
        ok = p != NULL;
        policy_unref(p);
    }
    policy_json_zero_strings(doc);
    json_decref(doc);
    free(aad);
    return ok;
}

/* Refuses (answers 409/500, returns false) a change that would leave a box of the workspace no
 * longer valid; boxes already broken before the change are not held against it. */
static bool api_secrets_check_boxes(struct api_call *c, const struct api_secret_change *ch,
                                    size_t n)
{
    struct errlist errs = {0}, scratch = {0};
    struct store_box_list boxes = {0};
    struct secret_set *future = NULL, *now = NULL;
    bool ok = false;
    char q[80];
    int rc = store_box_list(c->api->st, c->ws_id, &boxes);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "sandbox", "");
        goto out;
    }
    if (boxes.n == 0) {
        ok = true;
        goto out;
    }
    future = api_secrets_set(c, ch, n, &errs);
    if (future == NULL)
        goto store_failed;
    if (errs.n > 0) { /* a new binding that does not compile: validated earlier, so a bug */
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    for (size_t i = 0; i < boxes.n; i++) {
        struct errlist why = {0};
        if (!api_secrets_box_compiles(c, &boxes.items[i], future, &why)) {
            if (now == NULL && (now = api_secrets_set(c, NULL, 0, &scratch)) == NULL) {
                errlist_free(&why);
                goto store_failed;
            }
            struct errlist before = {0};
            if (api_secrets_box_compiles(c, &boxes.items[i], now, &before)) {
                char *d = api_json_join(&why);
                errlist_add(&errs, "sandbox %s would no longer be valid: %s",
                            policy_quote(boxes.items[i].name, q, sizeof(q)), d);
                free(d);
            }
            errlist_free(&before);
        }
        errlist_free(&why);
    }
    if (errs.n > 0) {
        char *d = api_json_join(&errs);
        api_reply_error(c, 409, "secret change refused: %s", d);
        free(d);
        goto out;
    }
    ok = true;
    goto out;
store_failed:
    api_reply_error(c, 500, "internal error: the state store failed (see the daemon log)");
out:
    secret_set_free(future);
    secret_set_free(now);
    store_box_list_free(&boxes);
    errlist_free(&errs);
    errlist_free(&scratch);
    return ok;
}

/* The stored metadata of secret key; rc as store_secret_get_sealed. */
static int api_secrets_meta(struct api_call *c, const char *key, struct store_secret *out)
{
    return store_secret_get_sealed(c->api->st, c->ws_id, key, NULL, out);
}

/* Validates the {key} path parameter; answers 400 and returns false when invalid. */
static bool api_secrets_key_ok(struct api_call *c)
{
    const char *why = api_json_secret_key_problem(c->arg);
    char q[80];
    if (why == NULL)
        return true;
    api_reply_error(c, 400, "key %s: %s", policy_quote(c->arg, q, sizeof(q)), why);
    return false;
}

/* Writes one change (after checks). STORE_OK or a store rc. */
static int api_secrets_apply(struct api_call *c, const struct api_secret_change *chg,
                             const struct store_secret *current, bool *created)
{
    if (chg->remove)
        return store_secret_delete(c->api->st, c->ws_id, chg->name);
    char *hosts = NULL;
    if (chg->has_configs)
        hosts = chg->configs ? json_dumps(chg->configs, JSON_COMPACT) : NULL;
    else if (current != NULL && current->hosts_json != NULL)
        hosts = xstrdup(current->hosts_json);
    int rc = store_secret_put(c->api->st, c->ws_id, chg->name, chg->value, hosts, created);
    free(hosts);
    return rc;
}

/* A value-less rebind (PUT of only configs) may narrow the binding, never move it: otherwise
 * a stolen API key could point a stored secret at any host without knowing it (SPEC §2).
 * Answers 400 and returns false when configs leaves the stored binding. */
static bool api_secrets_may_rebind(struct api_call *c, const struct store_secret *cur,
                                   const json_t *configs)
{
    json_t *stored = cur->hosts_json ? json_loads(cur->hosts_json, 0, NULL) : NULL;
    bool ok = api_json_binding_within(cur->name, configs, stored);
    json_decref(stored);
    if (!ok)
        api_reply_error(c, 400,
                        "configs: these hosts go beyond the current binding of secret %s; "
                        "changing it that way needs the secret's value: send \"value\" with "
                        "\"configs\"",
                        cur->name);
    return ok;
}

/* GET /v1/workspaces/current/secrets: [{"key", "configs", "hosts", "created_at",
 * "updated_at"}], the hosted list shape (a bare array of objects with "key"). */
void api_secrets_list(struct api_call *c)
{
    struct store_secret_list l = {0};
    int rc = store_secret_list(c->api->st, c->ws_id, &l);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", "");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++)
        json_array_append_new(arr, api_json_secret(&l.items[i]));
    store_secret_list_free(&l);
    api_reply(c, 200, arr);
}

/* GET /v1/workspaces/current/secrets/{key}: metadata only. */
void api_secrets_get(struct api_call *c)
{
    struct store_secret s = {0};
    if (!api_secrets_key_ok(c))
        return;
    int rc = api_secrets_meta(c, c->arg, &s);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", c->arg);
        return;
    }
    api_reply(c, 200, api_json_secret(&s));
    store_secret_free(&s);
}

/* PUT /v1/workspaces/current/secrets/{key} {"value", "configs"}. Omitting value keeps the
 * stored one (a new secret needs one); omitting configs keeps the stored binding (a value
 * rotation never widens it) and "configs": null resets it to the default of SPEC §6. 201 when
 * created, 200 when updated, 409 when a box would break. */
void api_secrets_put(struct api_call *c)
{
    struct api_secret_req r;
    struct errlist errs = {0};
    struct store_secret cur = {0}, after = {0};
    bool exists, created = false;
    int rc;

    if (!api_secrets_key_ok(c))
        goto out;
    if (!api_json_secret_request(c->body, &r, &errs)) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    rc = api_secrets_meta(c, c->arg, &cur);
    if (rc != STORE_OK && rc != STORE_NOT_FOUND) {
        api_reply_store(c, rc, "secret", c->arg);
        goto out;
    }
    exists = rc == STORE_OK;
    if (!exists && r.value == NULL) {
        api_reply_error(c, 400, "value: required to create secret %s", c->arg);
        goto out;
    }
    if (exists && r.value == NULL && r.has_configs && !api_secrets_may_rebind(c, &cur, r.configs))
        goto out;
    struct api_secret_change chg = {
        .name = c->arg, .value = r.value, .has_configs = r.has_configs, .configs = r.configs};
    if (!api_secrets_check_boxes(c, &chg, 1))
        goto out;
    rc = api_secrets_apply(c, &chg, exists ? &cur : NULL, &created);
    if (rc == STORE_OK)
        rc = api_secrets_meta(c, c->arg, &after);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", c->arg);
        goto out;
    }
    if (!api_publish(c))
        goto out;
    api_reply(c, created ? 201 : 200, api_json_secret(&after));
out:
    store_secret_free(&cur);
    store_secret_free(&after);
    errlist_free(&errs);
}

/* DELETE /v1/workspaces/current/secrets/{key}: 204; 409 while a box uses it. */
void api_secrets_delete(struct api_call *c)
{
    struct store_secret cur = {0};
    if (!api_secrets_key_ok(c))
        return;
    int rc = api_secrets_meta(c, c->arg, &cur);
    store_secret_free(&cur);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", c->arg);
        return;
    }
    struct api_secret_change chg = {.name = c->arg, .remove = true};
    if (!api_secrets_check_boxes(c, &chg, 1))
        return;
    rc = store_secret_delete(c->api->st, c->ws_id, c->arg);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", c->arg);
        return;
    }
    if (!api_publish(c))
        return;
    api_reply(c, 204, NULL);
}

/* POST /v1/workspaces/current/secrets [{"key", "value", "configs"?}, ...]: the hosted API's
 * upsert, where "value": null deletes. All items are validated and checked against the boxes
 * together before any is written. 200 with the resulting list. */
void api_secrets_bulk(struct api_call *c)
{
    static const char *const keys[] = {"key", "value", "configs", NULL};
    struct errlist errs = {0};
    struct api_secret_change *ch = NULL;
    struct store_secret_list cur = {0};
    size_t n = 0, i;
    json_t *item;
    char q[80];
    int rc;

    if (!json_is_array(c->body)) {
        api_reply_error(c, 400, "body: expected an array of {\"key\", \"value\"}, found %s",
                        policy_json_kind(c->body));
        goto out;
    }
    rc = store_secret_list(c->api->st, c->ws_id, &cur);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "secret", "");
        goto out;
    }
    ch = xcalloc(json_array_size(c->body) + 1, sizeof(*ch));
    json_array_foreach(c->body, i, item)
    {
        char *ip = xasprintf("body[%zu]", i);
        const char *key = json_string_value(json_object_get(item, "key"));
        const json_t *value = json_object_get(item, "value");
        const json_t *configs = json_object_get(item, "configs");
        const char *why;
        if (!json_is_object(item)) {
            errlist_add(&errs, "%s: expected an object {\"key\", \"value\"}, found %s", ip,
                        policy_json_kind(item));
        } else if (!policy_check_keys(item, ip, keys, &errs)) {
            /* reported */
        } else if (key == NULL) {
            errlist_add(&errs, "%s.key: required: the secret's name", ip);
        } else if ((why = api_json_secret_key_problem(key)) != NULL) {
            errlist_add(&errs, "%s.key %s: %s", ip, policy_quote(key, q, sizeof(q)), why);
        } else if (find_change(ch, n, key) != NULL) {
            errlist_add(&errs, "%s.key: %s is given twice", ip, policy_quote(key, q, sizeof(q)));
        } else if (value != NULL && !json_is_null(value) &&
                   (!json_is_string(value) || json_string_length(value) == 0 ||
                    strlen(json_string_value(value)) != json_string_length(value))) {
            errlist_add(&errs, "%s.value: expected a non-empty string, or null to delete", ip);
        } else if (configs != NULL && !json_is_null(configs) &&
                   !api_json_check_configs(configs, ip, &errs)) {
            /* reported */
        } else {
            const struct store_secret *s = NULL;
            for (size_t j = 0; j < cur.n && s == NULL; j++)
                if (strcmp(cur.items[j].name, key) == 0)
                    s = &cur.items[j];
            bool exists = s != NULL;
            json_t *stored = s && s->hosts_json ? json_loads(s->hosts_json, 0, NULL) : NULL;
            bool narrows =
                value != NULL || s == NULL ||
                api_json_binding_within(key, json_is_null(configs) ? NULL : configs, stored);
            json_decref(stored);
            if (value == NULL && (configs == NULL || !exists)) {
                errlist_add(&errs, "%s.value: required (a string, or null to delete)", ip);
            } else if (!narrows) {
                errlist_add(&errs,
                            "%s.configs: these hosts go beyond the current binding of "
                            "secret %s; changing it that way needs its value",
                            ip, key);
            } else if (json_is_null(value) && !exists) {
                /* deleting what does not exist: nothing to do */
            } else {
                struct api_secret_change *chg = &ch[n++];
                chg->name = key;
                chg->remove = json_is_null(value);
                chg->value = json_string_value(value);
                chg->has_configs = configs != NULL && !chg->remove;
                chg->configs = json_is_null(configs) ? NULL : configs;
            }
        }
        free(ip);
    }
    if (errs.n > 0) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    if (!api_secrets_check_boxes(c, ch, n))
        goto out;
    for (i = 0; i < n; i++) {
        const struct store_secret *s = NULL;
        for (size_t j = 0; j < cur.n && s == NULL; j++)
            if (strcmp(cur.items[j].name, ch[i].name) == 0)
                s = &cur.items[j];
        rc = api_secrets_apply(c, &ch[i], s, NULL);
        if (rc != STORE_OK && !(ch[i].remove && rc == STORE_NOT_FOUND)) {
            /* Earlier items are written: publish them, then report this one. */
            (void)control_publish(c->api->ctl);
            api_reply_store(c, rc, "secret", ch[i].name);
            goto out;
        }
    }
    if (!api_publish(c))
        goto out;
    api_secrets_list(c);
out:
    free(ch);
    store_secret_list_free(&cur);
    errlist_free(&errs);
}
