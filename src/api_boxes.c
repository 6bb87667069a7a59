/* api_boxes: /v2/sandboxes/boxes — create, list, get, status, PATCH, delete.
 *
 * A box's proxy_config is stored in the current format with every opaque value sealed to the
 * box's row (store_aad_box(ws, id)); reads mask them. A write goes: validate the request shape,
 * build the config (upgrade legacy rules, keep stored opaque values a PATCH repeats without
 * value), validate the plaintext view with control_check_proxy_config, seal, store, publish.
 * Nothing is written unless all of it validates.
 *
 * With sandbox runtimes (control_runtime), a box's lifecycle follows its runtime (api.h "Boxes
 * and runtimes"), and POST .../dataplane/{id}/execute runs commands in it asynchronously: the
 * handler starts the command and returns; the evhttp request is answered from the command's
 * completion callback on the same loop. */
#include "api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "box_runtime.h"
#include "control.h"
#include "log.h"
#include "policy.h"

/* Idle stop the hosted API applies when the create request gives none (its SDK documents 600). */
#define DEFAULT_IDLE_TTL_SECONDS 600

struct seal_ctx {
    struct store *st;
    const char *aad;
};

/* api_seal_fn over the store's keyring. */
static int api_boxes_seal(void *ctx, const char *plaintext, char **sealed)
{
    struct seal_ctx *s = ctx;
    return store_seal_value(s->st, s->aad, plaintext, sealed);
}

/* Validates doc (sealed under aad, plaintext elsewhere) as the data plane would apply it: a
 * plaintext copy is checked with control_check_proxy_config and zeroed afterwards. Returns 0,
 * 400 (errs filled) or 500 (a stored value failed to unseal, logged). */
static int api_boxes_check(struct api_call *c, const json_t *doc, const char *aad,
                           struct errlist *errs)
{
    json_t *plain = json_deep_copy(doc);
    int status = 0;
    if (plain == NULL)
        abort(); /* out of memory: util.h */
    if (store_json_unseal(c->api->st, plain, aad) != STORE_OK) {
        log_error("api: a stored opaque value of workspace %s does not unseal", c->ws_id);
        status = 500;
    } else if (control_check_proxy_config(c->api->ctl, c->ws_id, plain, errs) != 0) {
        status = 400;
    }
    policy_json_zero_strings(plain);
    json_decref(plain);
    return status;
}

/* Builds the stored form of a requested proxy_config: legacy format upgraded, opaque values a
 * PATCH omits taken from old (the stored, sealed config; NULL on create), validated, new opaque
 * values sealed under aad. *out (new reference) on 0; else 400 with errs or 500. */
static int api_boxes_build_config(struct api_call *c, const json_t *requested, const json_t *old,
                                  const char *aad, json_t **out, struct errlist *errs)
{
    json_t *cfg = policy_config_upgrade(requested);
    struct seal_ctx sc = {c->api->st, aad};
    int status;
    *out = NULL;
    if (!api_json_opaque_keep(cfg, old, errs)) {
        status = 400;
        goto fail;
    }
    status = api_boxes_check(c, cfg, aad, errs);
    if (status != 0)
        goto fail;
    if (api_json_seal_opaque(cfg, api_boxes_seal, &sc) != 0) {
        log_error("api: sealing an opaque value failed");
        status = 500;
        goto fail;
    }
    *out = cfg;
    return 0;
fail:
    json_decref(cfg);
    return status;
}

/* Answers a failed build/check (400 with the messages, or 500). */
static void api_boxes_reply_invalid(struct api_call *c, int status, const struct errlist *errs)
{
    if (status == 400)
        api_reply_errlist(c, 400, errs);
    else
        api_reply_error(c, 500,
                        "internal error: a stored value could not be processed (see "
                        "the daemon log)");
}

/* Finds the template a create request names (by name or by id). 0, or answers 404/500 and
 * returns -1. */
static int api_boxes_template(struct api_call *c, const struct api_box_req *r,
                              struct store_template *t)
{
    int rc;
    if (r->template_name != NULL) {
        rc = store_template_get(c->api->st, c->ws_id, r->template_name, t);
        if (rc != STORE_OK) {
            api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "template",
                            r->template_name);
            return -1;
        }
        return 0;
    }
    struct store_template_list l = {0};
    rc = store_template_list(c->api->st, c->ws_id, &l);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "template", r->template_id);
        return -1;
    }
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.items[i].id, r->template_id) == 0) {
            *t = l.items[i];
            memset(&l.items[i], 0, sizeof(l.items[i]));
            store_template_list_free(&l);
            return 0;
        }
    store_template_list_free(&l);
    api_reply_store(c, STORE_NOT_FOUND, "template", r->template_id);
    return -1;
}

/* Answers 200/201 with the box as stored now (by id: a PATCH may have renamed it). extra (stolen,
 * may be NULL) is merged into the object (the create response's credential). */
static void api_boxes_reply_box(struct api_call *c, int code, const char *id, json_t *extra)
{
    struct store_box b = {0};
    int rc = store_box_get_by_id(c->api->st, c->ws_id, id, &b);
    if (rc != STORE_OK) {
        json_decref(extra);
        api_reply_store(c, rc, "sandbox", id);
        return;
    }
    char *dp = api_dataplane_base(c);
    json_t *o = api_json_box(&b, dp);
    free(dp);
    if (extra != NULL) {
        json_object_update(o, extra);
        json_decref(extra);
    }
    store_box_free(&b);
    api_reply(c, code, o);
}

/* POST /v2/sandboxes/boxes. 201 with the box, its proxy_token (only ever returned here) and a
 * ready-to-use proxy_url. A name is generated when none is given (the hosted SDKs leave it to the
 * server). 404 for an unknown template, 409 for a taken name, 400 for anything invalid. */
void api_boxes_create(struct api_call *c)
{
    struct api_box_req r;
    struct errlist errs = {0};
    struct store_template t = {0};
    json_t *tbody = NULL, *cfg = NULL;
    char id[STORE_ID_LEN + 1], gen[STORE_ID_LEN + 1], name_buf[32];
    char *aad = NULL, *taad = NULL, *pc_text = NULL, *env_text = NULL, *token = NULL;
    const char *name;
    int status, rc;

    if (!api_json_box_request(c->body, true, &r, &errs)) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    store_new_id(id);
    name = r.name;
    if (name == NULL) {
        store_new_id(gen);
        snprintf(name_buf, sizeof(name_buf), "box-%.8s", gen);
        name = name_buf;
    }
    aad = store_aad_box(c->ws_id, id);
    if (r.template_name != NULL || r.template_id != NULL) {
        if (api_boxes_template(c, &r, &t) != 0)
            goto out;
        tbody = json_loads(t.body, 0, NULL);
        if (tbody == NULL) {
            api_reply_error(c, 500, "internal error: template %s is unreadable", t.name);
            goto out;
        }
    }

    if (r.proxy_config != NULL) {
        status = api_boxes_build_config(c, r.proxy_config, NULL, aad, &cfg, &errs);
    } else if (json_is_object(json_object_get(tbody, "proxy_config"))) {
        /* The template's config, its sealed values re-bound from the template's row to the
         * box's, validated again: secrets may have changed since the template was made. */
        cfg = json_deep_copy(json_object_get(tbody, "proxy_config"));
        taad = store_aad_template(c->ws_id, t.id);
        status = store_json_reseal(c->api->st, cfg, taad, aad, NULL) == STORE_OK ? 0 : 500;
        if (status == 0)
            status = api_boxes_check(c, cfg, aad, &errs);
    } else {
        cfg = json_object();
        status = 0;
    }
    if (status != 0) {
        api_boxes_reply_invalid(c, status, &errs);
        goto out;
    }

    struct store_box box = {0};
    box.id = id;
    box.name = (char *)name;
    box.status = CONTROL_STATUS_READY;
    box.template_name = t.name;
    box.image = (char *)(r.image ? r.image : json_string_value(json_object_get(tbody, "image")));
    pc_text = json_dumps(cfg, JSON_COMPACT);
    box.proxy_config = pc_text;
    const json_t *env = r.env_vars ? r.env_vars : json_object_get(tbody, "env_vars");
    if (env != NULL)
        env_text = json_dumps(env, JSON_COMPACT);
    box.env_vars = env_text;
    api_json_template_resources(tbody, &box.cpu_millicores, &box.mem_bytes, &box.fs_capacity_bytes);
    if (r.has_cpu)
        box.cpu_millicores = r.cpu_millicores;
    if (r.has_mem)
        box.mem_bytes = r.mem_bytes;
    if (r.has_fs)
        box.fs_capacity_bytes = r.fs_capacity_bytes;
    box.idle_ttl_seconds = r.has_idle_ttl ? r.idle_ttl_seconds : DEFAULT_IDLE_TTL_SECONDS;
    box.ttl_seconds = r.has_ttl ? r.ttl_seconds : 0;

    rc = store_box_create(c->api->st, c->ws_id, &box, NULL, &token);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "sandbox", name);
        goto out;
    }
    /* The runtime (if this daemon runs sandboxes) and the publish: afterwards the data plane
     * knows the box's credential and, when running, its address. */
    char why[512];
    if (control_box_start(c->api->ctl, c->ws_id, &box, why, sizeof(why)) != 0) {
        /* Undo, so that a retry can use the name: the token was never shown to anyone. */
        control_box_remove(c->api->ctl, id);
        (void)store_box_delete(c->api->st, c->ws_id, name);
        (void)control_publish(c->api->ctl);
        api_reply_error(c, 503, "the sandbox could not be started: %s; nothing was created", why);
        goto out;
    }
    json_t *extra = json_pack("{s:s}", "proxy_token", token);
    if (c->api->hooks.proxy_address != NULL) {
        char *url = xasprintf("http://%s:%s@%s", name, token, c->api->hooks.proxy_address);
        json_object_set_new(extra, "proxy_url", json_string(url));
        secret_free(url);
    }
    api_boxes_reply_box(c, 201, id, extra);
out:
    secret_free(token);
    free(pc_text);
    free(env_text);
    free(aad);
    free(taad);
    json_decref(cfg);
    json_decref(tbody);
    store_template_free(&t);
    errlist_free(&errs);
}

/* GET /v2/sandboxes/boxes: {"sandboxes": [...]}, the hosted list shape. */
void api_boxes_list(struct api_call *c)
{
    struct store_box_list l = {0};
    int rc = store_box_list(c->api->st, c->ws_id, &l);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "sandbox", "");
        return;
    }
    json_t *arr = json_array();
    char *dp = api_dataplane_base(c);
    for (size_t i = 0; i < l.n; i++)
        json_array_append_new(arr, api_json_box(&l.items[i], dp));
    free(dp);
    store_box_list_free(&l);
    api_reply(c, 200, json_pack("{s:o}", "sandboxes", arr));
}

/* Reads the box named by the path into *b; answers 404/500 and returns false on failure. A name
 * that could never have been created is simply not found. */
static bool api_boxes_load(struct api_call *c, struct store_box *b)
{
    int rc = api_json_name_problem(c->arg) == NULL ? store_box_get(c->api->st, c->ws_id, c->arg, b)
                                                   : STORE_NOT_FOUND;
    if (rc != STORE_OK) {
        api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "sandbox", c->arg);
        return false;
    }
    return true;
}

/* GET /v2/sandboxes/boxes/{name}. */
void api_boxes_get(struct api_call *c)
{
    struct store_box b = {0};
    if (!api_boxes_load(c, &b))
        return;
    char *dp = api_dataplane_base(c);
    api_reply(c, 200, api_json_box(&b, dp));
    free(dp);
    store_box_free(&b);
}

/* GET /v2/sandboxes/boxes/{name}/status: the SDKs' light polling endpoint. */
void api_boxes_status(struct api_call *c)
{
    struct store_box b = {0};
    if (!api_boxes_load(c, &b))
        return;
    api_reply(c, 200,
              json_pack("{s:s, s:n}", "status", b.status ? b.status : CONTROL_STATUS_READY,
                        "status_message"));
    store_box_free(&b);
}

/* PATCH /v2/sandboxes/boxes/{name}: name, idle_ttl_seconds, ttl_seconds, env_vars and
 * proxy_config (replaced whole; null resets it to {}; opaque values repeated without "value"
 * keep the stored ones). Written with the revision read, so a concurrent change is a 409, never
 * a lost update. Published before the 200. */
void api_boxes_patch(struct api_call *c)
{
    struct api_box_req r;
    struct errlist errs = {0};
    struct store_box b = {0};
    json_t *old = NULL, *cfg = NULL;
    char *aad = NULL, *pc_text = NULL, *env_text = NULL;
    int rc, status;

    if (!api_json_box_request(c->body, false, &r, &errs)) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    if (!api_boxes_load(c, &b))
        goto out;
    struct store_box upd = b;
    if (r.proxy_config != NULL) {
        if (json_is_null(r.proxy_config)) {
            cfg = json_object();
        } else {
            aad = store_aad_box(c->ws_id, b.id);
            old = json_loads(b.proxy_config ? b.proxy_config : "{}", 0, NULL);
            status = api_boxes_build_config(c, r.proxy_config, old, aad, &cfg, &errs);
            if (status != 0) {
                api_boxes_reply_invalid(c, status, &errs);
                goto out;
            }
        }
        pc_text = json_dumps(cfg, JSON_COMPACT);
        upd.proxy_config = pc_text;
    }
    if (r.env_vars != NULL) {
        env_text = json_dumps(r.env_vars, JSON_COMPACT);
        upd.env_vars = env_text;
    }
    if (r.name != NULL)
        upd.name = (char *)r.name;
    if (r.has_idle_ttl)
        upd.idle_ttl_seconds = r.idle_ttl_seconds;
    if (r.has_ttl)
        upd.ttl_seconds = r.ttl_seconds;
    rc = store_box_update(c->api->st, c->ws_id, &upd);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "sandbox", rc == STORE_EXISTS ? upd.name : c->arg);
        goto out;
    }
    if (!api_publish(c))
        goto out;
    if (r.has_idle_ttl && control_runtime(c->api->ctl) != NULL)
        box_runtime_set_idle_ttl(control_runtime(c->api->ctl), b.id, r.idle_ttl_seconds);
    api_boxes_reply_box(c, 200, b.id, NULL);
out:
    free(pc_text);
    free(env_text);
    free(aad);
    json_decref(old);
    json_decref(cfg);
    store_box_free(&b);
    errlist_free(&errs);
}

/* DELETE /v2/sandboxes/boxes/{name}: 204 once the box's runtime is stopped (its running
 * commands answered 404), its files deleted, and the data plane no longer knows the box (its
 * proxy credential is refused from then on). */
void api_boxes_delete(struct api_call *c)
{
    struct store_box b = {0};
    if (!api_boxes_load(c, &b))
        return;
    control_box_remove(c->api->ctl, b.id);
    int rc = store_box_delete(c->api->st, c->ws_id, b.name);
    store_box_free(&b);
    if (rc != STORE_OK) {
        api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "sandbox", c->arg);
        return;
    }
    if (!api_publish(c))
        return;
    api_reply(c, 204, NULL);
}

/* Answers 501 for a lifecycle or dataplane call on a daemon without sandboxes; true if so. */
static bool api_boxes_no_runtime(struct api_call *c)
{
    if (control_runtime(c->api->ctl) != NULL)
        return false;
    api_reply_error(c, 501,
                    "this authproxy daemon runs no sandboxes (%s): boxes are proxy-only, their "
                    "clients use the explicit proxy with the box's proxy_url",
                    control_runtime_unavailable(c->api->ctl));
    return true;
}

/* POST /v2/sandboxes/boxes/{name}/start: its runtime runs afterwards; 200 with the box. */
void api_boxes_start(struct api_call *c)
{
    struct store_box b = {0};
    char why[512];
    if (api_boxes_no_runtime(c) || !api_boxes_load(c, &b))
        return;
    if (control_box_start(c->api->ctl, c->ws_id, &b, why, sizeof(why)) != 0)
        api_reply_error(c, 503, "the sandbox could not be started: %s", why);
    else
        api_boxes_reply_box(c, 200, b.id, NULL);
    store_box_free(&b);
}

/* POST /v2/sandboxes/boxes/{name}/stop: processes killed (running commands answered 409),
 * network and cgroup released, files kept; status "stopped". 200 with the box. */
void api_boxes_stop(struct api_call *c)
{
    struct store_box b = {0};
    if (api_boxes_no_runtime(c) || !api_boxes_load(c, &b))
        return;
    if (control_box_stop(c->api->ctl, c->ws_id, &b, BOX_EXEC_STOPPED) != 0)
        api_reply_error(c, 500, "internal error: the state store failed (see the daemon log)");
    else
        api_boxes_reply_box(c, 200, b.id, NULL);
    store_box_free(&b);
}

/* ---- execute ------------------------------------------------------------------------------- */

/* An execute whose answer is pending: what the completion needs to answer it. */
struct api_exec_call {
    struct api *api;
    struct evhttp_request *req;
    char *box_name;
};

/* box_exec_done_fn: answers the pending request (evhttp frees a request whose client left when
 * it is answered, so this is always safe). */
static void api_exec_done(void *arg, const struct box_exec_result *r)
{
    struct api_exec_call *x = arg;
    struct api_call c = {.api = x->api, .req = x->req, .method = "POST"};
    char q[80];
    policy_quote(x->box_name, q, sizeof(q));
    switch (r->end) {
    case BOX_EXEC_EXITED:
        api_reply(&c, 200, api_json_exec_result(r));
        break;
    case BOX_EXEC_STOPPED:
        api_reply_error(&c, 409, "sandbox %s was stopped while the command ran", q);
        break;
    case BOX_EXEC_DELETED:
        api_reply_error(&c, 404, "sandbox %s was deleted while the command ran", q);
        break;
    case BOX_EXEC_SHUTDOWN:
        api_reply_error(&c, 503, "authproxy is shutting down: the command was killed");
        break;
    }
    log_info("api: execute in sandbox %s -> %d (exit %d%s, %llu ms)", q, c.status, r->exit_code,
             r->timed_out ? ", timed out" : "", (unsigned long long)r->duration_ms);
    free(x->box_name);
    free(x);
}

/* Appends the box's stored env_vars (a JSON object of strings) to env. */
static void api_boxes_env_from_json(struct box_runtime_env *env, const json_t *obj)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        if (json_is_string(v))
            box_runtime_env_add(env, k, json_string_value(v));
    }
}

/* POST /v2/sandboxes/dataplane/{id}/execute (api.h "Execute"). The box is named by its id (the
 * dataplane_url's) or, for curl users, by its name. */
void api_boxes_execute(struct api_call *c)
{
    struct store_box b = {0};
    struct api_exec_req r;
    struct errlist errs = {0};
    struct box_runtime_env env = {0};
    json_t *box_env = NULL;
    char why[512];
    int rc = store_box_get_by_id(c->api->st, c->ws_id, c->arg, &b);
    if (rc == STORE_NOT_FOUND || rc == STORE_INVALID)
        rc = api_json_name_problem(c->arg) == NULL ? store_box_get(c->api->st, c->ws_id, c->arg, &b)
                                                   : STORE_NOT_FOUND;
    if (rc != STORE_OK) {
        api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "sandbox", c->arg);
        goto out;
    }
    if (api_boxes_no_runtime(c))
        goto out;
    if (!api_json_exec_request(c->body, &r, &errs)) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    struct box_runtime *rt = control_runtime(c->api->ctl);
    if (!box_runtime_running(rt, b.id) &&
        control_box_start(c->api->ctl, c->ws_id, &b, why, sizeof(why)) != 0) {
        api_reply_error(c, 503, "the sandbox could not be started: %s", why);
        goto out;
    }
    control_box_env(c->api->ctl, b.id, &env);
    box_env = b.env_vars != NULL ? json_loads(b.env_vars, 0, NULL) : NULL;
    if (json_is_object(box_env))
        api_boxes_env_from_json(&env, box_env);
    if (r.env != NULL)
        api_boxes_env_from_json(&env, r.env);
    const char *argv[] = {r.shell, "-c", r.command, NULL};
    struct box_exec_request req = {
        .argv = argv,
        .env = box_runtime_env_list(&env),
        .cwd = r.cwd,
        .timeout_ms = (unsigned)(r.timeout_s * 1000.0 + 0.5),
    };
    struct api_exec_call *x = xcalloc(1, sizeof(*x));
    x->api = c->api;
    x->req = c->req;
    x->box_name = xstrdup(b.name);
    if (box_runtime_exec(rt, b.id, &req, api_exec_done, x, why, sizeof(why)) != 0) {
        int e = errno;
        free(x->box_name);
        free(x);
        if (e == EINVAL)
            api_reply_error(c, 400, "%s: %s",
                            r.cwd != NULL && strstr(why, "working directory") ? "cwd" : "shell",
                            why);
        else if (e == EAGAIN)
            api_reply_error(c, 429, "%s; retry when one has ended", why);
        else
            api_reply_error(c, 500,
                            "internal error: the command could not be started (see the "
                            "daemon log)");
        goto out;
    }
    c->deferred = true;
out:
    json_decref(box_env);
    box_runtime_env_free(&env);
    errlist_free(&errs);
    store_box_free(&b);
}
