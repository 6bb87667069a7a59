/* store: the backend-independent half — validation, credentials, sealing, re-sealing.
 * Contracts and the sealed-value conventions: store.h. */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "log.h"
#include "util.h"

/* Random bytes in an API key or proxy token: 256 bits, 43 base64url characters. */
#define TOKEN_RANDOM_LEN 32
#define TOKEN_B64_LEN    43
/* API-key characters kept for display ("apk_" + 4): 24 bits of 256 revealed. */
#define API_KEY_DISPLAY_LEN 8

const char *store_strerror(int rc)
{
    switch (rc) {
    case STORE_OK:
        return "ok";
    case STORE_ERR:
        return "storage failure";
    case STORE_NOT_FOUND:
        return "not found";
    case STORE_EXISTS:
        return "name already exists";
    case STORE_CONFLICT:
        return "changed concurrently";
    case STORE_INVALID:
        return "invalid input";
    default:
        return "unknown store error";
    }
}

struct store *store_open(const char *state_dir, struct seal_keyring *kr, char **err)
{
    if (mkdir_p(state_dir, err) != 0)
        return NULL;
    char *path = xasprintf("%s/%s", state_dir, STORE_DB_FILE);
    struct store *st = store_open_sqlite(path, kr, err);
    free(path);
    return st;
}

void store_close(struct store *st)
{
    if (st != NULL)
        st->ops->close(st);
}

void store_new_id(char out[STORE_ID_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        abort(); /* no RNG: nothing in the control plane can work safely */
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    size_t o = 0;
    for (size_t i = 0; i < sizeof(b); i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = digits[b[i] >> 4];
        out[o++] = digits[b[i] & 15];
    }
    out[o] = '\0';
}

char *store_aad_secret(const char *ws_id, const char *name)
{
    return xasprintf("authproxy/v1/workspace/%s/secret/%s", ws_id, name);
}

char *store_aad_box(const char *ws_id, const char *box_id)
{
    return xasprintf("authproxy/v1/workspace/%s/box/%s/proxy_config", ws_id, box_id);
}

char *store_aad_template(const char *ws_id, const char *template_id)
{
    return xasprintf("authproxy/v1/workspace/%s/template/%s/body", ws_id, template_id);
}

/* ---- validation --------------------------------------------------------------------------- */

/* A name is 1..STORE_NAME_MAX bytes without control characters. */
static bool valid_name(const char *s)
{
    if (s == NULL)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > STORE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* An id is 1..64 characters of [A-Za-z0-9_-] (UUIDs, and ids of other origins). */
static bool valid_id(const char *s)
{
    if (s == NULL)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* Parses text as JSON of the wanted type (JSON_OBJECT or JSON_ARRAY), refusing duplicate keys
 * and oversize documents. New reference or NULL. */
static json_t *parse_doc(const char *text, json_type want)
{
    if (text == NULL || strlen(text) > STORE_DOC_MAX)
        return NULL;
    json_error_t jerr;
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (doc != NULL && json_typeof(doc) != want) {
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

/* Calls fn on every string value inside v (object members and array elements, recursively).
 * Stops at the first non-zero return and returns it. */
static int walk_strings(json_t *v, int (*fn)(json_t *str, void *ctx), void *ctx)
{
    int rc = 0;
    if (json_is_string(v))
        return fn(v, ctx);
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
        {
            if ((rc = walk_strings(m, fn, ctx)) != 0)
                return rc;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            if ((rc = walk_strings(m, fn, ctx)) != 0)
                return rc;
        }
    }
    return 0;
}

/* Maps a seal_status to the store_rc the public functions promise. */
static int seal_to_store(int seal_rc)
{
    switch (seal_rc) {
    case SEAL_OK:
        return STORE_OK;
    case SEAL_ERR_FORMAT:
    case SEAL_ERR_UNKNOWN_KEY:
    case SEAL_ERR_AUTH:
    case SEAL_ERR_TOO_LARGE:
        return STORE_INVALID;
    default:
        return STORE_ERR;
    }
}

int store_seal_value(struct store *st, const char *aad, const char *plaintext, char **sealed)
{
    return seal_to_store(seal_seal_text(st->kr, plaintext, aad, sealed));
}

int store_unseal_value(struct store *st, const char *aad, const char *sealed, char **plaintext)
{
    return seal_to_store(seal_unseal_text(st->kr, sealed, aad, plaintext));
}

struct reseal_ctx {
    struct store *st;
    const char *from_aad, *to_aad;
    bool only_old; /* skip values already under the current key */
    bool verify;   /* only check that each sealed string unseals */
    size_t n;
    int seal_rc; /* the failure, for logging */
};

/* walk_strings callback: re-seals (or verifies) one sealed string. */
static int reseal_string(json_t *str, void *vctx)
{
    struct reseal_ctx *c = vctx;
    const char *s = json_string_value(str);
    char *pt = NULL, *fresh = NULL, id[SEAL_KEY_ID_HEX_LEN + 1];
    if (!seal_is_sealed_text(s))
        return 0;
    if (c->only_old && seal_text_key_id(s, id) == SEAL_OK &&
        strcmp(id, seal_keyring_current_id(c->st->kr)) == 0)
        return 0;
    c->seal_rc = seal_unseal_text(c->st->kr, s, c->from_aad, &pt);
    if (c->seal_rc != SEAL_OK)
        return seal_to_store(c->seal_rc);
    if (!c->verify) {
        c->seal_rc = seal_seal_text(c->st->kr, pt, c->to_aad, &fresh);
        if (c->seal_rc == SEAL_OK)
            json_string_set(str, fresh);
    }
    secret_free(pt);
    free(fresh);
    if (c->seal_rc != SEAL_OK)
        return seal_to_store(c->seal_rc);
    c->n++;
    return 0;
}

int store_json_reseal(struct store *st, json_t *doc, const char *from_aad, const char *to_aad,
                      size_t *n_changed)
{
    struct reseal_ctx c = {.st = st, .from_aad = from_aad, .to_aad = to_aad};
    int rc = walk_strings(doc, reseal_string, &c);
    if (n_changed != NULL)
        *n_changed = c.n;
    return rc;
}

/* walk_strings callback: replaces one sealed string by its plaintext. */
static int unseal_string(json_t *str, void *vctx)
{
    struct reseal_ctx *c = vctx;
    char *pt = NULL;
    if (!seal_is_sealed_text(json_string_value(str)))
        return 0;
    c->seal_rc = seal_unseal_text(c->st->kr, json_string_value(str), c->from_aad, &pt);
    if (c->seal_rc != SEAL_OK)
        return seal_to_store(c->seal_rc);
    int set = json_string_set(str, pt); /* fails on invalid UTF-8 */
    secret_free(pt);
    return set == 0 ? STORE_OK : STORE_INVALID;
}

int store_json_unseal(struct store *st, json_t *doc, const char *aad)
{
    struct reseal_ctx c = {.st = st, .from_aad = aad};
    return walk_strings(doc, unseal_string, &c);
}

/* Checks a document about to be stored: a JSON object (NULL stands for "{}") whose sealed
 * strings all unseal under aad. STORE_OK or STORE_INVALID (logged with what, never values). */
static int check_doc(struct store *st, const char *text, const char *aad, const char *what)
{
    if (text == NULL)
        return STORE_OK;
    json_t *doc = parse_doc(text, JSON_OBJECT);
    if (doc == NULL) {
        log_warn("store: %s is not a JSON object (or exceeds %u bytes)", what, STORE_DOC_MAX);
        return STORE_INVALID;
    }
    struct reseal_ctx c = {.st = st, .from_aad = aad, .verify = true};
    int rc = walk_strings(doc, reseal_string, &c);
    json_decref(doc);
    if (rc != STORE_OK)
        log_warn("store: %s holds a sealed value not bound to it: %s", what,
                 seal_strerror(c.seal_rc));
    return rc;
}

int store_change_seq(struct store *st, uint64_t *seq)
{
    return st->ops->change_seq(st, seq);
}

/* ---- credentials -------------------------------------------------------------------------- */

/* Mints prefix + base64url(32 random bytes) and its SHA-256. Heap string, release with
 * secret_free. */
static char *mint_credential(const char *prefix, uint8_t hash[STORE_HASH_LEN])
{
    uint8_t raw[TOKEN_RANDOM_LEN];
    char b64[4 * ((TOKEN_RANDOM_LEN + 2) / 3) + 1];
    if (RAND_priv_bytes(raw, sizeof(raw)) != 1)
        abort(); /* no RNG: refusing to mint a guessable credential */
    EVP_EncodeBlock((unsigned char *)b64, raw, sizeof(raw));
    for (char *p = b64; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
        else if (*p == '=')
            *p = '\0';
    }
    char *key = xasprintf("%s%s", prefix, b64);
    SHA256((const unsigned char *)key, strlen(key), hash);
    secure_zero(raw, sizeof(raw));
    secure_zero(b64, sizeof(b64));
    return key;
}

/* Hashes a presented credential if it has the shape prefix + 43 base64url characters.
 * false for anything else (no lookup is made for malformed input). */
static bool hash_credential(const char *cred, const char *prefix, uint8_t hash[STORE_HASH_LEN])
{
    size_t plen = strlen(prefix);
    if (cred == NULL || strncmp(cred, prefix, plen) != 0 || strlen(cred) != plen + TOKEN_B64_LEN)
        return false;
    for (const char *p = cred + plen; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    SHA256((const unsigned char *)cred, strlen(cred), hash);
    return true;
}

/* ---- workspaces and API keys -------------------------------------------------------------- */

int store_workspace_create(struct store *st, const char *name, struct store_workspace *out,
                           char **api_key)
{
    char id[STORE_ID_LEN + 1], prefix[API_KEY_DISPLAY_LEN + 1];
    uint8_t hash[STORE_HASH_LEN];
    if (!valid_name(name))
        return STORE_INVALID;
    store_new_id(id);
    char *key = mint_credential(STORE_API_KEY_PREFIX, hash);
    memcpy(prefix, key, API_KEY_DISPLAY_LEN);
    prefix[API_KEY_DISPLAY_LEN] = '\0';
    struct store_workspace ws = {.id = id, .name = (char *)name, .created_at = time(NULL)};
    int rc = st->ops->workspace_create(st, &ws, hash, prefix);
    if (rc != STORE_OK) {
        secret_free(key);
        return rc;
    }
    if (out != NULL) {
        out->id = xstrdup(id);
        out->name = xstrdup(name);
        out->created_at = ws.created_at;
    }
    *api_key = key;
    return STORE_OK;
}

int store_workspace_get(struct store *st, const char *ws_id, struct store_workspace *out)
{
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    return st->ops->workspace_get(st, ws_id, NULL, out);
}

int store_workspace_find(struct store *st, const char *name, struct store_workspace *out)
{
    if (!valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->workspace_get(st, NULL, name, out);
}

int store_workspace_list(struct store *st, struct store_workspace_list *out)
{
    return st->ops->workspace_list(st, out);
}

void store_workspace_free(struct store_workspace *w)
{
    if (w == NULL)
        return;
    free(w->id);
    free(w->name);
    w->id = w->name = NULL;
}

void store_workspace_list_free(struct store_workspace_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        store_workspace_free(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int store_api_key_create(struct store *st, const char *ws_id, char **api_key)
{
    char prefix[API_KEY_DISPLAY_LEN + 1];
    uint8_t hash[STORE_HASH_LEN];
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    char *key = mint_credential(STORE_API_KEY_PREFIX, hash);
    memcpy(prefix, key, API_KEY_DISPLAY_LEN);
    prefix[API_KEY_DISPLAY_LEN] = '\0';
    int rc = st->ops->api_key_add(st, ws_id, hash, prefix, time(NULL));
    if (rc != STORE_OK) {
        secret_free(key);
        return rc;
    }
    *api_key = key;
    return STORE_OK;
}

/* The lookup goes through an index on the SHA-256 digest, so its timing depends only on the
 * digest, which tells an attacker nothing about a valid key; the final comparison is
 * constant-time all the same, so no byte-by-byte compare of secrets exists anywhere. */
int store_api_key_authenticate(struct store *st, const char *api_key, char **ws_id)
{
    uint8_t hash[STORE_HASH_LEN], stored[STORE_HASH_LEN];
    char *ws = NULL;
    if (!hash_credential(api_key, STORE_API_KEY_PREFIX, hash))
        return STORE_NOT_FOUND;
    int rc = st->ops->api_key_lookup(st, hash, &ws, stored);
    if (rc == STORE_OK && CRYPTO_memcmp(hash, stored, STORE_HASH_LEN) != 0)
        rc = STORE_NOT_FOUND;
    if (rc == STORE_OK)
        *ws_id = ws;
    else
        free(ws);
    return rc;
}

/* ---- secrets ------------------------------------------------------------------------------ */

int store_secret_put(struct store *st, const char *ws_id, const char *name, const char *value,
                     const char *hosts_json, bool *created)
{
    char *aad = NULL, *sealed = NULL;
    bool made = false;
    int rc = STORE_INVALID;
    if (!valid_id(ws_id) || !valid_name(name))
        goto out;
    if (hosts_json != NULL) {
        json_t *hosts = parse_doc(hosts_json, JSON_ARRAY);
        if (hosts == NULL)
            goto out;
        json_decref(hosts);
    }
    if (value != NULL) {
        aad = store_aad_secret(ws_id, name);
        if ((rc = store_seal_value(st, aad, value, &sealed)) != STORE_OK)
            goto out;
    }
    struct store_secret_row row = {
        .name = name,
        .sealed = sealed,
        .key_id = seal_keyring_current_id(st->kr),
        .hosts_json = hosts_json,
        .now = time(NULL),
    };
    rc = st->ops->secret_put(st, ws_id, &row, &made);
    if (rc == STORE_OK && created != NULL)
        *created = made;
out:
    free(aad);
    free(sealed);
    return rc;
}

int store_secret_list(struct store *st, const char *ws_id, struct store_secret_list *out)
{
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    return st->ops->secret_list(st, ws_id, out);
}

void store_secret_version_of(const char *sealed, const char *hosts_json,
                             uint8_t out[STORE_HASH_LEN])
{
    /* The NUL after the sealed text (base64, never holds one) separates the two fields; an
     * omitted binding hashes differently from every JSON text (which cannot start with 0x01). */
    static const char omitted[] = "\x01";
    const char *hosts = hosts_json != NULL ? hosts_json : omitted;
    size_t ls = strlen(sealed) + 1, lh = strlen(hosts);
    unsigned char *buf = xmalloc(ls + lh);
    memcpy(buf, sealed, ls);
    memcpy(buf + ls, hosts, lh);
    SHA256(buf, ls + lh, out);
    free(buf);
}

int store_secret_get_sealed(struct store *st, const char *ws_id, const char *name, char **sealed,
                            struct store_secret *out)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->secret_get(st, ws_id, name, sealed, out);
}

int store_secret_reveal(struct store *st, const char *ws_id, const char *name, char **value)
{
    char *sealed = NULL, *aad = NULL;
    int rc = store_secret_get_sealed(st, ws_id, name, &sealed, NULL);
    if (rc != STORE_OK)
        return rc;
    aad = store_aad_secret(ws_id, name);
    int seal_rc = seal_unseal_text(st->kr, sealed, aad, value);
    if (seal_rc != SEAL_OK) {
        /* A stored value that does not unseal: wrong/missing key or tampering. Fail closed. */
        log_error("store: secret %s of workspace %s cannot be unsealed: %s", name, ws_id,
                  seal_strerror(seal_rc));
        rc = STORE_ERR;
    }
    free(aad);
    free(sealed);
    return rc;
}

int store_secret_delete(struct store *st, const char *ws_id, const char *name)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->secret_delete(st, ws_id, name, time(NULL));
}

void store_secret_free(struct store_secret *s)
{
    if (s == NULL)
        return;
    free(s->name);
    free(s->hosts_json);
    free(s->key_id);
    s->name = s->hosts_json = s->key_id = NULL;
}

void store_secret_list_free(struct store_secret_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        store_secret_free(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* ---- boxes -------------------------------------------------------------------------------- */

/* Validates the caller-supplied fields of a box about to be written as box id id. */
static int check_box(struct store *st, const char *ws_id, const char *id,
                     const struct store_box *box)
{
    if (!valid_id(ws_id) || !valid_id(id) || !valid_name(box->name))
        return STORE_INVALID;
    if (box->status != NULL && !valid_name(box->status))
        return STORE_INVALID;
    if (box->template_name != NULL && !valid_name(box->template_name))
        return STORE_INVALID;
    if (box->image != NULL && strlen(box->image) > 4096)
        return STORE_INVALID;
    if (box->cpu_millicores < 0 || box->mem_bytes < 0 || box->fs_capacity_bytes < 0 ||
        box->idle_ttl_seconds < 0 || box->ttl_seconds < 0)
        return STORE_INVALID;
    if (box->env_vars != NULL) {
        json_t *env = parse_doc(box->env_vars, JSON_OBJECT);
        if (env == NULL)
            return STORE_INVALID;
        json_decref(env);
    }
    char *aad = store_aad_box(ws_id, id);
    int rc = check_doc(st, box->proxy_config, aad, "box proxy_config");
    free(aad);
    return rc;
}

int store_box_create(struct store *st, const char *ws_id, const struct store_box *box,
                     char **id_out, char **proxy_token)
{
    char id[STORE_ID_LEN + 1];
    char *token = NULL;
    if (box->id == NULL)
        store_new_id(id);
    const char *bid = box->id != NULL ? box->id : id;
    int rc = check_box(st, ws_id, bid, box);
    if (rc != STORE_OK)
        return rc;
    struct store_box row = *box;
    row.id = (char *)bid;
    if (row.status == NULL)
        row.status = "pending";
    if (row.proxy_config == NULL)
        row.proxy_config = "{}";
    if (row.env_vars == NULL)
        row.env_vars = "{}";
    row.revision = 1;
    row.created_at = row.updated_at = time(NULL);
    token = mint_credential(STORE_PROXY_TOKEN_PREFIX, row.proxy_token_hash);
    rc = st->ops->box_create(st, ws_id, &row);
    if (rc == STORE_OK) {
        if (id_out != NULL)
            *id_out = xstrdup(bid);
        if (proxy_token != NULL) {
            *proxy_token = token;
            token = NULL;
        }
    }
    secret_free(token);
    return rc;
}

int store_box_get(struct store *st, const char *ws_id, const char *name, struct store_box *out)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->box_get(st, ws_id, name, NULL, out);
}

int store_box_get_by_id(struct store *st, const char *ws_id, const char *id, struct store_box *out)
{
    if (!valid_id(ws_id) || !valid_id(id))
        return STORE_NOT_FOUND;
    return st->ops->box_get(st, ws_id, NULL, id, out);
}

int store_box_list(struct store *st, const char *ws_id, struct store_box_list *out)
{
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    return st->ops->box_list(st, ws_id, out);
}

int store_box_list_heads(struct store *st, const char *ws_id, struct store_box_list *out)
{
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    return st->ops->box_heads(st, ws_id, out);
}

int store_box_update(struct store *st, const char *ws_id, const struct store_box *box)
{
    if (box->id == NULL)
        return STORE_INVALID;
    int rc = check_box(st, ws_id, box->id, box);
    if (rc != STORE_OK)
        return rc;
    struct store_box row = *box;
    if (row.status == NULL)
        row.status = "pending";
    if (row.proxy_config == NULL)
        row.proxy_config = "{}";
    if (row.env_vars == NULL)
        row.env_vars = "{}";
    row.updated_at = time(NULL);
    return st->ops->box_update(st, ws_id, &row);
}

int store_box_delete(struct store *st, const char *ws_id, const char *name)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->box_delete(st, ws_id, name, time(NULL));
}

int store_box_authenticate_token(struct store *st, const char *token, char **ws_id,
                                 struct store_box *out)
{
    uint8_t hash[STORE_HASH_LEN];
    struct store_box b = {0};
    char *ws = NULL;
    if (!hash_credential(token, STORE_PROXY_TOKEN_PREFIX, hash))
        return STORE_NOT_FOUND;
    int rc = st->ops->box_by_token(st, hash, &ws, &b);
    if (rc == STORE_OK && CRYPTO_memcmp(hash, b.proxy_token_hash, STORE_HASH_LEN) != 0)
        rc = STORE_NOT_FOUND;
    if (rc == STORE_OK) {
        *ws_id = ws;
        *out = b;
    } else {
        free(ws);
        store_box_free(&b);
    }
    return rc;
}

void store_box_free(struct store_box *b)
{
    if (b == NULL)
        return;
    free(b->id);
    free(b->name);
    free(b->status);
    free(b->template_name);
    free(b->image);
    free(b->proxy_config);
    free(b->env_vars);
    memset(b, 0, sizeof(*b));
}

void store_box_list_free(struct store_box_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        store_box_free(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* ---- templates ---------------------------------------------------------------------------- */

int store_template_create(struct store *st, const char *ws_id, const struct store_template *t,
                          char **id_out)
{
    char id[STORE_ID_LEN + 1];
    if (t->id == NULL)
        store_new_id(id);
    const char *tid = t->id != NULL ? t->id : id;
    if (!valid_id(ws_id) || !valid_id(tid) || !valid_name(t->name) || t->body == NULL)
        return STORE_INVALID;
    char *aad = store_aad_template(ws_id, tid);
    int rc = check_doc(st, t->body, aad, "template body");
    free(aad);
    if (rc != STORE_OK)
        return rc;
    struct store_template row = *t;
    row.id = (char *)tid;
    row.created_at = row.updated_at = time(NULL);
    rc = st->ops->template_create(st, ws_id, &row);
    if (rc == STORE_OK && id_out != NULL)
        *id_out = xstrdup(tid);
    return rc;
}

int store_template_get(struct store *st, const char *ws_id, const char *name,
                       struct store_template *out)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->template_get(st, ws_id, name, out);
}

int store_template_list(struct store *st, const char *ws_id, struct store_template_list *out)
{
    if (!valid_id(ws_id))
        return STORE_NOT_FOUND;
    return st->ops->template_list(st, ws_id, out);
}

int store_template_delete(struct store *st, const char *ws_id, const char *name)
{
    if (!valid_id(ws_id) || !valid_name(name))
        return STORE_NOT_FOUND;
    return st->ops->template_delete(st, ws_id, name, time(NULL));
}

void store_template_free(struct store_template *t)
{
    if (t == NULL)
        return;
    free(t->id);
    free(t->name);
    free(t->body);
    memset(t, 0, sizeof(*t));
}

void store_template_list_free(struct store_template_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        store_template_free(&l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* ---- key rotation ------------------------------------------------------------------------- */

static const char *kind_name(enum store_sealed_kind kind)
{
    switch (kind) {
    case STORE_SEALED_SECRET:
        return "secret";
    case STORE_SEALED_BOX:
        return "box";
    case STORE_SEALED_TEMPLATE:
        return "template";
    }
    return "row";
}

/* The aad of a row handed to a rewrite callback. Heap, caller frees. */
static char *row_aad(enum store_sealed_kind kind, const char *ws_id, const char *row_key)
{
    switch (kind) {
    case STORE_SEALED_SECRET:
        return store_aad_secret(ws_id, row_key);
    case STORE_SEALED_BOX:
        return store_aad_box(ws_id, row_key);
    case STORE_SEALED_TEMPLATE:
        return store_aad_template(ws_id, row_key);
    }
    return xstrdup("");
}

/* A JSON string holding a stored secret's sealed text, or NULL when the column holds anything
 * but sealed text (corruption: the callers fail closed). New reference. */
static json_t *sealed_string(const char *value)
{
    return seal_is_sealed_text(value) ? json_string(value) : NULL;
}

struct reseal_all_ctx {
    struct store *st;
    size_t n;
};

/* store_rewrite_fn for store_reseal_all: re-seals what is not under the current key. */
static int reseal_row(void *vctx, enum store_sealed_kind kind, const char *ws_id,
                      const char *row_key, const char *value, char **replacement)
{
    struct reseal_all_ctx *ac = vctx;
    char *aad = row_aad(kind, ws_id, row_key);
    struct reseal_ctx c = {.st = ac->st, .from_aad = aad, .to_aad = aad, .only_old = true};
    json_t *doc = NULL;
    int rc;
    /* A secret is one sealed string: wrap it to reuse the walker. */
    doc = kind == STORE_SEALED_SECRET ? sealed_string(value) : parse_doc(value, JSON_OBJECT);
    rc = doc != NULL ? walk_strings(doc, reseal_string, &c) : STORE_INVALID;
    if (rc != STORE_OK) {
        log_error("store: cannot re-seal %s %s of workspace %s: %s", kind_name(kind), row_key,
                  ws_id, doc != NULL ? seal_strerror(c.seal_rc) : "stored data is malformed");
        goto out;
    }
    if (c.n > 0) {
        *replacement = kind == STORE_SEALED_SECRET ? xstrdup(json_string_value(doc))
                                                   : json_dumps(doc, JSON_COMPACT);
        if (*replacement == NULL)
            abort(); /* json_dumps fails only on allocation failure: the OOM policy */
        ac->n += c.n;
    }
out:
    json_decref(doc);
    free(aad);
    return rc;
}

int store_reseal_all(struct store *st, size_t *n_resealed)
{
    struct reseal_all_ctx ac = {.st = st};
    int rc = st->ops->rewrite_sealed(st, reseal_row, &ac);
    if (n_resealed != NULL)
        *n_resealed = rc == STORE_OK ? ac.n : 0;
    return rc;
}

struct key_ids_ctx {
    char **ids;
    size_t n;
};

static void key_ids_add(struct key_ids_ctx *c, const char *id)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->ids[i], id) == 0)
            return;
    c->ids = xrealloc(c->ids, (c->n + 1) * sizeof(*c->ids));
    c->ids[c->n++] = xstrdup(id);
}

/* walk_strings callback collecting the key id of each sealed string. */
static int collect_key_id(json_t *str, void *vctx)
{
    char id[SEAL_KEY_ID_HEX_LEN + 1];
    const char *s = json_string_value(str);
    if (!seal_is_sealed_text(s))
        return 0;
    if (seal_text_key_id(s, id) != SEAL_OK)
        return STORE_INVALID;
    key_ids_add(vctx, id);
    return 0;
}

/* store_rewrite_fn for store_sealed_key_ids: reads only, never replaces. */
static int collect_row(void *vctx, enum store_sealed_kind kind, const char *ws_id,
                       const char *row_key, const char *value, char **replacement)
{
    (void)replacement;
    json_t *doc =
        kind == STORE_SEALED_SECRET ? sealed_string(value) : parse_doc(value, JSON_OBJECT);
    int rc = doc != NULL ? walk_strings(doc, collect_key_id, vctx) : STORE_INVALID;
    if (rc != STORE_OK)
        log_error("store: %s %s of workspace %s holds a malformed sealed value", kind_name(kind),
                  row_key, ws_id);
    json_decref(doc);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int store_sealed_key_ids(struct store *st, char ***ids, size_t *n)
{
    struct key_ids_ctx c = {0};
    int rc = st->ops->rewrite_sealed(st, collect_row, &c);
    if (rc != STORE_OK) {
        store_key_ids_free(c.ids, c.n);
        return rc;
    }
    if (c.n > 1)
        qsort(c.ids, c.n, sizeof(*c.ids), cmp_str);
    *ids = c.ids;
    *n = c.n;
    return STORE_OK;
}

void store_key_ids_free(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}
