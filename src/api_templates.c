/* api_templates: /v2/sandboxes/templates — create, list, get, delete.
 *
 * A template is a stored JSON body (api_json_template_body): image, resources and a
 * proxy_config in the current format — the legacy "inject_headers" / "${KEY}" form of the seed
 * documents is converted on the way in — with opaque values sealed to the template's row. Boxes
 * created from a template copy its config (re-sealed to the box), so deleting a template never
 * changes a box and needs no publish. */
#include "api.h"

#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "policy.h"

struct tseal_ctx {
    struct store *st;
    const char *aad;
};

static int api_templates_seal(void *ctx, const char *plaintext, char **sealed)
{
    struct tseal_ctx *s = ctx;
    return store_seal_value(s->st, s->aad, plaintext, sealed);
}

/* Answers 200/201 with template t. */
static void api_templates_reply(struct api_call *c, int code, const struct store_template *t)
{
    json_t *tbody = json_loads(t->body, 0, NULL);
    if (tbody == NULL) {
        api_reply_error(c, 500, "internal error: template is unreadable");
        return;
    }
    api_reply(c, code, api_json_template(t, tbody));
    json_decref(tbody);
}

/* POST /v2/sandboxes/templates: {"name", "image", "resources", "proxy_config", ...}. The
 * proxy_config is validated as a box's would be (its workspace secrets must exist, SPEC §2), so
 * a box made from it works. 201 with the template, 409 for a taken name. */
void api_templates_create(struct api_call *c)
{
    struct errlist errs = {0};
    struct store_template t = {0}, got = {0};
    const char *name = NULL;
    char id[STORE_ID_LEN + 1];
    char *aad = NULL, *text = NULL;
    json_t *body = api_json_template_body(c->body, &name, &errs);
    json_t *pc;
    int rc;

    if (body == NULL) {
        api_reply_errlist(c, 400, &errs);
        goto out;
    }
    pc = json_object_get(body, "proxy_config");
    if (pc != NULL) {
        /* A template has no stored values to keep: an opaque entry without value is an error
         * named here rather than as a missing field further down. */
        if (!api_json_opaque_keep(pc, NULL, &errs) ||
            control_check_proxy_config(c->api->ctl, c->ws_id, pc, &errs) != 0) {
            api_reply_errlist(c, 400, &errs);
            goto out;
        }
    }
    store_new_id(id);
    aad = store_aad_template(c->ws_id, id);
    struct tseal_ctx sc = {c->api->st, aad};
    if (api_json_seal_opaque(body, api_templates_seal, &sc) != 0) {
        log_error("api: sealing an opaque value of a template failed");
        api_reply_error(c, 500, "internal error: sealing failed (see the daemon log)");
        goto out;
    }
    text = json_dumps(body, JSON_COMPACT);
    t.id = id;
    t.name = (char *)name;
    t.body = text;
    rc = store_template_create(c->api->st, c->ws_id, &t, NULL);
    if (rc == STORE_OK)
        rc = store_template_get(c->api->st, c->ws_id, name, &got);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "template", name);
        goto out;
    }
    api_templates_reply(c, 201, &got);
out:
    free(text);
    free(aad);
    json_decref(body);
    store_template_free(&got);
    errlist_free(&errs);
}

/* GET /v2/sandboxes/templates: {"templates": [...]}. */
void api_templates_list(struct api_call *c)
{
    struct store_template_list l = {0};
    int rc = store_template_list(c->api->st, c->ws_id, &l);
    if (rc != STORE_OK) {
        api_reply_store(c, rc, "template", "");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) {
        json_t *tbody = json_loads(l.items[i].body, 0, NULL);
        json_array_append_new(arr, api_json_template(&l.items[i], tbody));
        json_decref(tbody);
    }
    store_template_list_free(&l);
    api_reply(c, 200, json_pack("{s:o}", "templates", arr));
}

/* GET /v2/sandboxes/templates/{name}. */
void api_templates_get(struct api_call *c)
{
    struct store_template t = {0};
    int rc = api_json_name_problem(c->arg) == NULL
                 ? store_template_get(c->api->st, c->ws_id, c->arg, &t)
                 : STORE_NOT_FOUND;
    if (rc != STORE_OK) {
        api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "template", c->arg);
        return;
    }
    api_templates_reply(c, 200, &t);
    store_template_free(&t);
}

/* DELETE /v2/sandboxes/templates/{name}: 204. Boxes made from it keep their copy. */
void api_templates_delete(struct api_call *c)
{
    int rc = api_json_name_problem(c->arg) == NULL
                 ? store_template_delete(c->api->st, c->ws_id, c->arg)
                 : STORE_NOT_FOUND;
    if (rc != STORE_OK) {
        api_reply_store(c, rc == STORE_INVALID ? STORE_NOT_FOUND : rc, "template", c->arg);
        return;
    }
    api_reply(c, 204, NULL);
}
