#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "policy.h"
#include "registry.h"
#include "secret_set.h"
#include "seal.h"

#define BOOTSTRAP_KEY_FILE "bootstrap.key"
#define DEFAULT_WORKSPACE  "default"

/* A workspace secret a box's compilation asked for, and what it was then. */
struct used_secret {
    char *name;
    bool present;                    /* false: there was no such secret */
    uint8_t version[STORE_HASH_LEN]; /* store_secret.version, when present */
};

/* A box as last compiled. Its policy depends on nothing but the box's stored row (whose
 * revision moves on every write, re-seals included) and the secrets it asked for, so it is
 * reused for as long as the revision and every used secret's version are what they were. */
struct compiled_box {
    char *ws_id;
    char *box_id;
    char *name;
    int64_t revision;
    uint8_t token_hash[REGISTRY_HASH_LEN];
    struct policy *policy; /* one reference; NULL: the config does not compile (refused) */
    struct used_secret *used;
    size_t n_used;
    bool reusable; /* false: a stored value could not be unsealed; compile again next time */
};

struct control {
    char *state_dir;
    struct seal_keyring *keyring;
    struct store *store;
    uint64_t published_seq; /* store change counter the published registry was built from */
    control_publish_fn publish;
    void *publish_ctx;
    struct box_runtime *runtime;   /* borrowed; NULL: no sandboxes */
    struct registry *published;    /* reference to the last registry published */
    char *unavailable;             /* why runtime is NULL, or NULL */
    struct compiled_box *compiled; /* the boxes of the last publish, sorted by box_id */
    size_t n_compiled;
    struct stat key_file; /* the key file as of the last (re)load; st_ino 0: load next time */
};

static void compiled_box_free(struct compiled_box *cb)
{
    free(cb->ws_id);
    free(cb->box_id);
    free(cb->name);
    policy_unref(cb->policy);
    for (size_t i = 0; i < cb->n_used; i++)
        free(cb->used[i].name);
    free(cb->used);
    memset(cb, 0, sizeof(*cb));
}

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
    for (size_t i = 0; i < c->n_compiled; i++)
        compiled_box_free(&c->compiled[i]);
    free(c->compiled);
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

/* A policy_compile secret source that reads each workspace secret from the store when the
 * config first names it (one row, one unseal), so a compilation costs what its config uses,
 * not what the workspace holds, and records what it asked for (struct used_secret). */
struct lazy_secrets {
    struct control *c;
    const char *ws_id;
    struct secret_set *set; /* the secrets read so far; zeroed when freed */
    struct used_secret *used;
    size_t n_used;
    bool store_failed; /* the store could not be read: the compilation means nothing */
    bool unreadable;   /* a secret did not unseal (logged): compile again next time */
};

/* secret_source.get over the store (struct lazy_secrets). */
static const char *lazy_secrets_get(void *ctx, const char *key, const struct host_pattern **hosts,
                                    size_t *n_hosts)
{
    struct lazy_secrets *ls = ctx;
    struct secret_source inner = secret_set_source(ls->set);
    const char *value = inner.get(inner.ctx, key, hosts, n_hosts);
    char *sealed = NULL, *plain = NULL, *aad = NULL;
    struct store_secret meta = {0};
    json_t *configs = NULL;
    struct errlist errs = {0};
    if (value != NULL)
        return value;
    for (size_t i = 0; i < ls->n_used; i++)
        if (strcmp(ls->used[i].name, key) == 0)
            return NULL; /* asked before: absent or unusable */
    ls->used = xrealloc(ls->used, (ls->n_used + 1) * sizeof(*ls->used));
    struct used_secret *u = &ls->used[ls->n_used++];
    memset(u, 0, sizeof(*u));
    u->name = xstrdup(key);
    int rc = store_secret_get_sealed(ls->c->store, ls->ws_id, key, &sealed, &meta);
    if (rc == STORE_NOT_FOUND)
        goto out; /* the compiler reports it as unknown */
    if (rc != STORE_OK) {
        ls->store_failed = true;
        goto out;
    }
    u->present = true;
    memcpy(u->version, meta.version, sizeof(u->version));
    aad = store_aad_secret(ls->ws_id, key);
    if (store_unseal_value(ls->c->store, aad, sealed, &plain) != STORE_OK) {
        log_error("workspace %s: secret %s cannot be unsealed; rules using it are refused",
                  ls->ws_id, key);
        ls->unreadable = true;
        goto out;
    }
    if (meta.hosts_json != NULL)
        configs = json_loads(meta.hosts_json, 0, NULL);
    char *path = xasprintf("secrets.%s", key);
    secret_set_add(ls->set, key, plain, configs, path, &errs);
    free(path);
    for (size_t i = 0; i < errs.n; i++)
        log_warn("workspace %s: stored secret binding ignored: %s", ls->ws_id, errs.msgs[i]);
    value = inner.get(inner.ctx, key, hosts, n_hosts);
out:
    errlist_free(&errs);
    json_decref(configs);
    secret_free(plain);
    free(aad);
    free(sealed);
    store_secret_free(&meta);
    return value;
}

static void lazy_secrets_free(struct lazy_secrets *ls)
{
    secret_set_free(ls->set);
    for (size_t i = 0; i < ls->n_used; i++)
        free(ls->used[i].name);
    free(ls->used);
}

int control_check_proxy_config(struct control *c, const char *ws_id, const json_t *proxy_config,
                               struct errlist *errs)
{
    struct lazy_secrets ls = {.c = c, .ws_id = ws_id, .set = secret_set_new()};
    struct secret_source src = {lazy_secrets_get, &ls};
    struct errlist local = {0};
    struct policy *p = policy_compile(proxy_config, &src, "proxy_config", 0, &local);
    int rc = p != NULL && local.n == 0 ? 0 : -1;
    if (ls.store_failed) {
        errlist_add(errs, "the workspace's secrets cannot be read");
        rc = -1;
    } else {
        for (size_t i = 0; i < local.n; i++)
            errlist_add(errs, "%s", local.msgs[i]);
    }
    policy_unref(p);
    errlist_free(&local);
    lazy_secrets_free(&ls);
    return rc;
}

/* Compiles stored box b of workspace ws_id into *out. The entry has no policy (requests
 * refused) when the stored config does not compile (now); why is logged, naming fields, never
 * values. Returns 0, or -1 if the store could not be read (*out is then freed). */
static int compile_box(struct control *c, const char *ws_id, const struct store_box *b,
                       uint64_t version, struct compiled_box *out)
{
    struct lazy_secrets ls = {.c = c, .ws_id = ws_id, .set = secret_set_new()};
    struct secret_source src = {lazy_secrets_get, &ls};
    struct errlist errs = {0};
    int rc = 0;
    memset(out, 0, sizeof(*out));
    out->ws_id = xstrdup(ws_id);
    out->box_id = xstrdup(b->id);
    out->name = xstrdup(b->name);
    out->revision = b->revision;
    memcpy(out->token_hash, b->proxy_token_hash, REGISTRY_HASH_LEN);
    out->reusable = true;
    json_t *doc = b->proxy_config ? json_loads(b->proxy_config, 0, NULL) : json_object();
    char *aad = store_aad_box(ws_id, b->id);
    if (doc == NULL || store_json_unseal(c->store, doc, aad) != STORE_OK) {
        log_error("sandbox %s (workspace %s): stored proxy_config cannot be read; its requests "
                  "are refused",
                  b->name, ws_id);
        out->reusable = false;
        goto out;
    }
    out->policy = policy_compile(doc, &src, "proxy_config", version, &errs);
    if (ls.store_failed) {
        rc = -1;
        goto out;
    }
    if (out->policy == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("sandbox %s (workspace %s): %s; its requests are refused", b->name, ws_id,
                      errs.msgs[i]);
    }
    if (ls.unreadable)
        out->reusable = false;
    out->used = ls.used; /* moved */
    out->n_used = ls.n_used;
    ls.used = NULL;
    ls.n_used = 0;
out:
    if (rc != 0)
        compiled_box_free(out);
    lazy_secrets_free(&ls);
    errlist_free(&errs);
    free(aad);
    if (doc) {
        policy_json_zero_strings(doc);
        json_decref(doc);
    }
    return rc;
}

static int compiled_box_cmp(const void *a, const void *b)
{
    return strcmp(((const struct compiled_box *)a)->box_id,
                  ((const struct compiled_box *)b)->box_id);
}

static int secret_name_cmp(const void *key, const void *item)
{
    return strcmp(key, ((const struct store_secret *)item)->name);
}

/* The index in c->compiled of the entry of box head h (of workspace ws_id, whose secrets are now
 * secrets, sorted by name) if it still stands: same workspace, revision and proxy token (a box
 * re-created under the same id is another box), and every secret it asked for is as it was.
 * Else -1. */
static ptrdiff_t reusable_entry(const struct control *c, const char *ws_id,
                                const struct store_box *h, const struct store_secret_list *secrets)
{
    struct compiled_box key = {.box_id = h->id};
    const struct compiled_box *cb = c->n_compiled ? bsearch(&key, c->compiled, c->n_compiled,
                                                            sizeof(*c->compiled), compiled_box_cmp)
                                                  : NULL;
    if (cb == NULL || !cb->reusable || cb->revision != h->revision ||
        strcmp(cb->ws_id, ws_id) != 0 ||
        memcmp(cb->token_hash, h->proxy_token_hash, REGISTRY_HASH_LEN) != 0)
        return -1;
    for (size_t i = 0; i < cb->n_used; i++) {
        const struct used_secret *u = &cb->used[i];
        const struct store_secret *now = secrets->n
                                             ? bsearch(u->name, secrets->items, secrets->n,
                                                       sizeof(*secrets->items), secret_name_cmp)
                                             : NULL;
        if ((now != NULL) != u->present ||
            (now != NULL && memcmp(now->version, u->version, sizeof(u->version)) != 0))
            return -1;
    }
    return cb - c->compiled;
}

/* One box of the registry being built: a fresh compilation, or the index of the entry of the
 * last publish that still stands (reuse >= 0). */
struct publish_item {
    ptrdiff_t reuse;
    struct compiled_box fresh;
};

/* Reads which boxes exist and compiles those that changed since the last publish (a PATCH
 * compiles one box; a secret's change, the boxes that use it). Returns 0 with *items and *n set, or
 * -1 if the store could not be read. */
static int plan_publish(struct control *c, uint64_t seq, struct publish_item **items, size_t *n)
{
    struct store_workspace_list wss = {0};
    struct publish_item *v = NULL;
    size_t nv = 0;
    int rc = -1;
    if (store_workspace_list(c->store, &wss) != STORE_OK)
        goto out;
    for (size_t w = 0; w < wss.n; w++) {
        const char *ws_id = wss.items[w].id;
        struct store_box_list heads = {0};
        struct store_secret_list secrets = {0};
        if (store_box_list_heads(c->store, ws_id, &heads) != STORE_OK)
            goto out;
        if (heads.n > 0 && store_secret_list(c->store, ws_id, &secrets) != STORE_OK) {
            store_box_list_free(&heads);
            goto out;
        }
        v = xrealloc(v, (nv + heads.n) * sizeof(*v));
        int wrc = 0;
        for (size_t i = 0; i < heads.n && wrc == 0; i++) {
            struct publish_item *it = &v[nv];
            memset(it, 0, sizeof(*it));
            it->reuse = reusable_entry(c, ws_id, &heads.items[i], &secrets);
            if (it->reuse >= 0) {
                nv++;
                continue;
            }
            struct store_box b = {0};
            int grc = store_box_get_by_id(c->store, ws_id, heads.items[i].id, &b);
            if (grc == STORE_OK)
                wrc = compile_box(c, ws_id, &b, seq, &it->fresh);
            else if (grc != STORE_NOT_FOUND) /* not found: deleted meanwhile */
                wrc = -1;
            if (grc == STORE_OK && wrc == 0)
                nv++;
            store_box_free(&b);
        }
        store_secret_list_free(&secrets);
        store_box_list_free(&heads);
        if (wrc != 0)
            goto out;
    }
    rc = 0;
out:
    if (rc != 0) {
        for (size_t i = 0; i < nv; i++)
            if (v[i].reuse < 0)
                compiled_box_free(&v[i].fresh);
        free(v);
        v = NULL;
        nv = 0;
    }
    store_workspace_list_free(&wss);
    *items = v;
    *n = nv;
    return rc;
}

/* Another process (authproxy keys rotate) may have added a key and re-sealed under it: re-reads
 * the key file when it is not the file last read (stat says so: rotation replaces it), so a
 * write does not pay for reading and locking key material it already has. */
static void reload_keyring(struct control *c)
{
    const char *path = seal_keyring_path(c->keyring);
    struct stat now;
    char *msg = NULL;
    if (path == NULL)
        return; /* keys from the environment: nothing to re-read */
    if (stat(path, &now) != 0)
        memset(&now, 0, sizeof(now)); /* reload says why */
    else if (c->key_file.st_ino != 0 && now.st_ino == c->key_file.st_ino &&
             now.st_dev == c->key_file.st_dev && now.st_size == c->key_file.st_size &&
             now.st_mtim.tv_sec == c->key_file.st_mtim.tv_sec &&
             now.st_mtim.tv_nsec == c->key_file.st_mtim.tv_nsec &&
             now.st_ctim.tv_sec == c->key_file.st_ctim.tv_sec &&
             now.st_ctim.tv_nsec == c->key_file.st_ctim.tv_nsec)
        return;
    /* Stat before reading: a change after this stat shows at the next call. */
    if (seal_keyring_reload(c->keyring, &msg) == -1) {
        log_warn("master key reload failed: %s", msg ? msg : "?");
        free(msg);
        memset(&c->key_file, 0, sizeof(c->key_file));
        return;
    }
    c->key_file = now;
}

int control_publish(struct control *c)
{
    struct publish_item *items = NULL;
    size_t n = 0;
    uint64_t seq = 0;

    reload_keyring(c);
    if (store_change_seq(c->store, &seq) != STORE_OK || plan_publish(c, seq, &items, &n) != 0) {
        log_error("control: cannot read the store; the data plane keeps its current sandboxes");
        return -1;
    }
    /* From here nothing fails: the plan becomes the compiled set, the old one's leftovers (boxes
     * deleted or changed) are released. */
    struct compiled_box *next = xcalloc(n ? n : 1, sizeof(*next));
    for (size_t i = 0; i < n; i++) {
        if (items[i].reuse >= 0) {
            next[i] = c->compiled[items[i].reuse];
            memset(&c->compiled[items[i].reuse], 0, sizeof(*c->compiled));
        } else {
            next[i] = items[i].fresh;
        }
    }
    free(items);
    for (size_t i = 0; i < c->n_compiled; i++)
        compiled_box_free(&c->compiled[i]);
    free(c->compiled);
    if (n > 1)
        qsort(next, n, sizeof(*next), compiled_box_cmp);
    c->compiled = next;
    c->n_compiled = n;

    struct registry_box *boxes = xcalloc(n ? n : 1, sizeof(*boxes));
    for (size_t i = 0; i < n; i++) {
        boxes[i].workspace_id = xstrdup(next[i].ws_id);
        boxes[i].box_id = xstrdup(next[i].box_id);
        boxes[i].name = xstrdup(next[i].name);
        memcpy(boxes[i].token_hash, next[i].token_hash, REGISTRY_HASH_LEN);
        boxes[i].policy = next[i].policy ? policy_ref(next[i].policy) : NULL;
        boxes[i].sandbox_addr = box_runtime_addr(c->runtime, next[i].box_id);
    }
    struct registry *reg = registry_new(boxes, n);
    if (c->publish)
        c->publish(c->publish_ctx, reg);
    registry_unref(c->published);
    c->published = reg; /* our reference */
    c->published_seq = seq;
    return 0;
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
