#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "policy.h"
#include "registry.h"
#include "secret_set.h"
#include "seal.h"

#define BOOTSTRAP_KEY_FILE "bootstrap.key"
#define DEFAULT_WORKSPACE  "default"

struct control {
    char *state_dir;
    struct seal_keyring *keyring;
    struct store *store;
    uint64_t published_seq; /* store change counter the published registry was built from */
    control_publish_fn publish;
    void *publish_ctx;
    struct box_runtime *runtime; /* borrowed; NULL: no sandboxes */
    struct registry *published;  /* reference to the last registry published */
    char *unavailable;           /* why runtime is NULL, or NULL */
};

/* Writes the bootstrap API key to <state_dir>/bootstrap.key (mode 0600, replaced atomically). */
static int write_bootstrap_key(const char *state_dir, const char *key, char *err, size_t err_len)
{
    char *tmp = xasprintf("%s/%s.tmp", state_dir, BOOTSTRAP_KEY_FILE);
    char *path = xasprintf("%s/%s", state_dir, BOOTSTRAP_KEY_FILE);
    int rc = -1;
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd == -1) {
        snprintf(err, err_len, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, key, strlen(key)) == -1 || write_all(fd, "\n", 1) == -1 || fsync(fd) == -1) {
        snprintf(err, err_len, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        (void)unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) == -1) {
        snprintf(err, err_len, "cannot rename %s: %s", tmp, strerror(errno));
        (void)unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    free(tmp);
    free(path);
    return rc;
}

struct control *control_open(const char *state_dir, char *err, size_t err_len)
{
    struct control *c = xcalloc(1, sizeof(*c));
    char *msg = NULL;
    char *api_key = NULL;
    c->state_dir = xstrdup(state_dir);
    c->keyring = seal_keyring_open(state_dir, NULL, &msg);
    if (c->keyring == NULL) {
        snprintf(err, err_len, "master key: %s", msg ? msg : "cannot open");
        goto fail;
    }
    c->store = store_open(state_dir, c->keyring, &msg);
    if (c->store == NULL) {
        snprintf(err, err_len, "store: %s", msg ? msg : "cannot open");
        goto fail;
    }
    struct store_workspace ws = {0};
    int rc = store_workspace_find(c->store, DEFAULT_WORKSPACE, &ws);
    if (rc == STORE_NOT_FOUND) {
        rc = store_workspace_create(c->store, DEFAULT_WORKSPACE, NULL, &api_key);
        if (rc != STORE_OK) {
            snprintf(err, err_len, "cannot create the default workspace: %s", store_strerror(rc));
            goto fail;
        }
        if (write_bootstrap_key(state_dir, api_key, err, err_len) == -1)
            goto fail;
        log_info("created workspace \"%s\"; its API key is in %s/%s", DEFAULT_WORKSPACE, state_dir,
                 BOOTSTRAP_KEY_FILE);
    } else if (rc != STORE_OK) {
        snprintf(err, err_len, "cannot read workspaces: %s", store_strerror(rc));
        goto fail;
    }
    store_workspace_free(&ws);
    secret_free(api_key);
    return c;
fail:
    free(msg);
    secret_free(api_key);
    control_close(c);
    return NULL;
}

void control_close(struct control *c)
{
    if (c == NULL)
        return;
    registry_unref(c->published);
    free(c->unavailable);
    if (c->store)
        store_close(c->store);
    seal_keyring_free(c->keyring);
    free(c->state_dir);
    free(c);
}

struct store *control_store(struct control *c)
{
    return c->store;
}

void control_set_publisher(struct control *c, control_publish_fn fn, void *ctx)
{
    c->publish = fn;
    c->publish_ctx = ctx;
}

/* Gathers the plaintext secrets of workspace ws_id for the policy compiler. NULL if the store
 * cannot be read. The caller frees the set (which zeroes the values). */
static struct secret_set *workspace_secrets(struct control *c, const char *ws_id)
{
    struct store_secret_list list = {0};
    if (store_secret_list(c->store, ws_id, &list) != STORE_OK)
        return NULL;
    struct secret_set *set = secret_set_new();
    struct errlist errs = {0};
    for (size_t i = 0; i < list.n; i++) {
        const struct store_secret *s = &list.items[i];
        char *value = NULL;
        json_t *configs = NULL;
        if (store_secret_reveal(c->store, ws_id, s->name, &value) != STORE_OK) {
            /* Logged by the store; rules using it will name it as unknown: refused. */
            continue;
        }
        if (s->hosts_json != NULL)
            configs = json_loads(s->hosts_json, 0, NULL);
        char *path = xasprintf("secrets.%s", s->name);
        secret_set_add(set, s->name, value, configs, path, &errs);
        free(path);
        json_decref(configs);
        secret_free(value);
    }
    for (size_t i = 0; i < errs.n; i++)
        log_warn("workspace %s: stored secret binding ignored: %s", ws_id, errs.msgs[i]);
    errlist_free(&errs);
    store_secret_list_free(&list);
    return set;
}

int control_check_proxy_config(struct control *c, const char *ws_id, const json_t *proxy_config,
                               struct errlist *errs)
{
    struct secret_set *set = workspace_secrets(c, ws_id);
    if (set == NULL) {
        errlist_add(errs, "the workspace's secrets cannot be read");
        return -1;
    }
    struct secret_source src = secret_set_source(set);
    size_t before = errs->n;
    struct policy *p = policy_compile(proxy_config, &src, "proxy_config", 0, errs);
    policy_unref(p);
    secret_set_free(set);
    return (p != NULL && errs->n == before) ? 0 : -1;
}

/* Compiles one stored box into a registry entry. The entry has no policy (requests refused)
 * when the stored config no longer compiles; why is logged, naming fields, never values. */
static void compile_box(struct control *c, const char *ws_id, const struct store_box *b,
                        const struct secret_source *src, uint64_t version, struct registry_box *out)
{
    out->workspace_id = xstrdup(ws_id);
    out->box_id = xstrdup(b->id);
    out->name = xstrdup(b->name);
    memcpy(out->token_hash, b->proxy_token_hash, REGISTRY_HASH_LEN);
    out->sandbox_addr = box_runtime_addr(c->runtime, b->id);
    json_t *doc = b->proxy_config ? json_loads(b->proxy_config, 0, NULL) : json_object();
    char *aad = store_aad_box(ws_id, b->id);
    struct errlist errs = {0};
    if (doc == NULL || store_json_unseal(c->store, doc, aad) != STORE_OK) {
        log_error("sandbox %s (workspace %s): stored proxy_config cannot be read; its requests "
                  "are refused",
                  b->name, ws_id);
        goto out;
    }
    out->policy = policy_compile(doc, src, "proxy_config", version, &errs);
    if (out->policy == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("sandbox %s (workspace %s): %s; its requests are refused", b->name, ws_id,
                      errs.msgs[i]);
    }
out:
    errlist_free(&errs);
    free(aad);
    if (doc) {
        policy_json_zero_strings(doc);
        json_decref(doc);
    }
}

int control_publish(struct control *c)
{
    struct store_workspace_list wss = {0};
    struct registry_box *boxes = NULL;
    size_t n = 0;
    uint64_t seq = 0;
    int rc = -1;
    char *msg = NULL;

    /* Another process (authproxy keys rotate) may have re-sealed under a new key. */
    if (seal_keyring_reload(c->keyring, &msg) == -1) {
        log_warn("master key reload failed: %s", msg ? msg : "?");
        free(msg);
    }
    if (store_change_seq(c->store, &seq) != STORE_OK ||
        store_workspace_list(c->store, &wss) != STORE_OK)
        goto out;
    for (size_t w = 0; w < wss.n; w++) {
        const char *ws_id = wss.items[w].id;
        struct store_box_list list = {0};
        if (store_box_list(c->store, ws_id, &list) != STORE_OK)
            goto out;
        struct secret_set *set = list.n ? workspace_secrets(c, ws_id) : NULL;
        if (list.n && set == NULL) {
            store_box_list_free(&list);
            goto out;
        }
        struct secret_source src = set ? secret_set_source(set) : (struct secret_source){0};
        boxes = xrealloc(boxes, (n + list.n) * sizeof(*boxes));
        for (size_t i = 0; i < list.n; i++) {
            memset(&boxes[n], 0, sizeof(boxes[n]));
            compile_box(c, ws_id, &list.items[i], &src, seq, &boxes[n]);
            n++;
        }
        secret_set_free(set);
        store_box_list_free(&list);
    }
    struct registry *reg = registry_new(boxes, n);
    boxes = NULL;
    n = 0;
    if (c->publish)
        c->publish(c->publish_ctx, reg);
    registry_unref(c->published);
    c->published = reg; /* our reference */
    c->published_seq = seq;
    rc = 0;
out:
    if (rc != 0)
        log_error("control: cannot read the store; the data plane keeps its current sandboxes");
    if (boxes) {
        struct registry *partial = registry_new(boxes, n); /* frees the entries */
        registry_unref(partial);
    }
    store_workspace_list_free(&wss);
    return rc;
}

int control_sync(struct control *c)
{
    uint64_t seq = 0;
    if (store_change_seq(c->store, &seq) != STORE_OK)
        return -1;
    if (seq == c->published_seq)
        return 0;
    return control_publish(c);
}

/* ---- box runtimes ---------------------------------------------------------------------------- */

void control_set_runtime(struct control *c, struct box_runtime *rt, const char *unavailable)
{
    c->runtime = rt;
    free(c->unavailable);
    c->unavailable = rt == NULL && unavailable != NULL ? xstrdup(unavailable) : NULL;
}

const char *control_runtime_unavailable(const struct control *c)
{
    return c->unavailable != NULL ? c->unavailable : "this daemon runs no sandboxes";
}

struct box_runtime *control_runtime(struct control *c)
{
    return c->runtime;
}

/* Records a box's status (no-op when it is that already). 0, or -1 (logged). */
static int set_status(struct control *c, const char *ws_id, const char *box_id, const char *status)
{
    struct store_box b = {0};
    int rc = store_box_get_by_id(c->store, ws_id, box_id, &b);
    if (rc == STORE_OK && (b.status == NULL || strcmp(b.status, status) != 0)) {
        free(b.status);
        b.status = xstrdup(status);
        rc = store_box_update(c->store, ws_id, &b);
    }
    store_box_free(&b);
    if (rc != STORE_OK && rc != STORE_NOT_FOUND) {
        log_error("control: cannot record status %s of sandbox %s: %s", status, box_id,
                  store_strerror(rc));
        return -1;
    }
    return 0;
}

/* The runtime limits of a stored box. */
static struct box_runtime_limits box_limits(const struct store_box *b)
{
    struct box_runtime_limits lim = {
        .name = b->name,
        .cpu_millicores = b->cpu_millicores,
        .mem_bytes = b->mem_bytes,
        .fs_capacity_bytes = b->fs_capacity_bytes,
        .idle_ttl_seconds = b->idle_ttl_seconds,
    };
    return lim;
}

int control_box_start(struct control *c, const char *ws_id, const struct store_box *b, char *err,
                      size_t errlen)
{
    if (c->runtime != NULL) {
        bool was_running = box_runtime_running(c->runtime, b->id);
        struct box_runtime_limits lim = box_limits(b);
        if (box_runtime_start(c->runtime, ws_id, b->id, &lim, err, errlen) != 0)
            return -1;
        if (was_running && b->status != NULL && strcmp(b->status, CONTROL_STATUS_READY) == 0)
            return 0;
        /* A failed status write is logged; the runtime runs all the same. */
        (void)set_status(c, ws_id, b->id, CONTROL_STATUS_READY);
    }
    if (control_publish(c) != 0) {
        if (c->runtime != NULL)
            box_runtime_stop(c->runtime, b->id, BOX_EXEC_STOPPED);
        snprintf(err, errlen,
                 "the sandbox could not be applied to the data plane (see the "
                 "daemon log)");
        return -1;
    }
    return 0;
}

int control_box_stop(struct control *c, const char *ws_id, const struct store_box *b,
                     enum box_exec_end why)
{
    if (c->runtime != NULL)
        box_runtime_stop(c->runtime, b->id, why);
    int rc = set_status(c, ws_id, b->id, CONTROL_STATUS_STOPPED);
    (void)control_publish(c);
    return rc;
}

void control_box_idle_stopped(void *ctx, const char *ws_id, const char *box_id)
{
    struct control *c = ctx;
    (void)set_status(c, ws_id, box_id, CONTROL_STATUS_STOPPED);
    (void)control_publish(c);
}

void control_box_remove(struct control *c, const char *box_id)
{
    if (c->runtime != NULL)
        (void)box_runtime_remove(c->runtime, box_id);
}

void control_restore_runtimes(struct control *c)
{
    struct store_workspace_list wss = {0};
    char err[512];
    int started = 0, failed = 0;
    if (c->runtime == NULL)
        return;
    if (store_workspace_list(c->store, &wss) != STORE_OK) {
        log_error("control: cannot read the store: no sandbox restarted");
        return;
    }
    for (size_t w = 0; w < wss.n; w++) {
        struct store_box_list list = {0};
        if (store_box_list(c->store, wss.items[w].id, &list) != STORE_OK)
            continue;
        for (size_t i = 0; i < list.n; i++) {
            const struct store_box *b = &list.items[i];
            if (b->status != NULL && strcmp(b->status, CONTROL_STATUS_READY) != 0)
                continue;
            struct box_runtime_limits lim = box_limits(b);
            if (box_runtime_start(c->runtime, wss.items[w].id, b->id, &lim, err, sizeof(err)) ==
                0) {
                started++;
            } else {
                failed++;
                log_error("control: sandbox %s: %s; it starts at its next command", b->name, err);
            }
        }
        store_box_list_free(&list);
    }
    store_workspace_list_free(&wss);
    if (started + failed > 0)
        log_info("control: %d sandbox runtimes restarted, %d failed", started, failed);
    (void)control_publish(c);
}

void control_box_env(struct control *c, const char *box_id, struct box_runtime_env *env)
{
    const struct registry *r = c->published;
    for (size_t i = 0; r != NULL && i < r->n; i++) {
        if (strcmp(r->boxes[i].box_id, box_id) == 0) {
            box_runtime_env_add_policy(env, r->boxes[i].policy);
            return;
        }
    }
}
