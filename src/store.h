/* store: the control plane's persistent state — workspaces, API keys, secrets, boxes, templates.
 *
 * Layers. Callers use the store_* functions below. They validate, mint keys and tokens, hash,
 * seal and verify, then call a backend through struct store_ops (bottom of this file). A backend
 * (store_sqlite.c today, PostgreSQL later) only ever sees hashes and sealed text, never a
 * plaintext secret or API key, and keeps its SQL dialect to itself.
 *
 * Isolation by construction: every operation on workspace data takes the workspace id, and
 * backends put it in every WHERE clause, so one workspace's names resolve to nothing (NOT_FOUND)
 * in another. The only lookups across workspaces are by secret credential (API key, proxy token)
 * and the workspace listing the daemon needs at start.
 *
 * Sealed values. Secret values and opaque values inside JSON documents are stored as sealed
 * text (seal.h: SEAL_TEXT_PREFIX + base64). Each is bound (GCM aad) to its row:
 *     secret value           store_aad_secret(ws, name)
 *     box proxy_config       store_aad_box(ws, box id)       (every sealed string in the doc)
 *     template body          store_aad_template(ws, template id)
 * In box proxy_config and template body, any JSON string starting with SEAL_TEXT_PREFIX is a
 * sealed value: store_reseal_all re-seals them wherever they are, so the store needs no
 * knowledge of the proxy_config schema. Consequently the API layer must refuse user strings
 * that start with SEAL_TEXT_PREFIX; the store also refuses (STORE_INVALID) a document holding
 * a sealed string that does not unseal under the row's binding, so nothing un-resealable is ever
 * stored. To seal opaque values of a new box/template before creating it, generate its id first
 * (store_new_id), seal with store_seal_value(.., store_aad_box(ws, id), ..) and pass the id in.
 *
 * Credentials. API keys are "apk_" + base64url(32 random bytes), proxy tokens "apt_" + the same;
 * only SHA-256 of the whole key string is stored, plus a short display prefix for API keys.
 * Both are returned exactly once, at creation.
 *
 * Change counter. Every successful write increments one global counter in the same transaction
 * (store_change_seq); the daemon compares it to the value its policies were built from. It also
 * moves on store_reseal_all, which is the daemon's cue to seal_keyring_reload.
 *
 * Schema, version 1 (SQLite types; the PostgreSQL backend maps them):
 *   schema_version(version)                          one row; migrations move it forward
 *   change_seq(id = 1, seq)                          the change counter
 *   workspaces(id PK, name UNIQUE, created_at)
 *   api_keys(key_hash BLOB PK, workspace_id FK, prefix, created_at)
 *   secrets(workspace_id FK, name, sealed, key_id, hosts JSON|NULL, created_at, updated_at,
 *           PK (workspace_id, name))
 *   boxes(id PK, workspace_id FK, name, status, template_name, image, proxy_config JSON,
 *         env_vars JSON, cpu_millicores, mem_bytes, fs_capacity_bytes, idle_ttl_seconds,
 *         ttl_seconds, proxy_token_hash BLOB UNIQUE, revision, created_at, updated_at,
 *         UNIQUE (workspace_id, name))
 *   templates(id PK, workspace_id FK, name, body JSON, created_at, updated_at,
 *             UNIQUE (workspace_id, name))
 * Foreign keys cascade on workspace deletion. Times are Unix seconds (UTC).
 *
 * Durability: a function returning STORE_OK has committed (SQLite: WAL, synchronous=FULL), so
 * the write survives kill -9 and power loss.
 *
 * Threads: a store handle may be used from several threads; the backend serialises calls.
 * Several processes may open the same database (the daemon and a CLI command). */
#ifndef AUTHPROXY_STORE_H
#define AUTHPROXY_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "seal.h"

#define STORE_DB_FILE            "authproxy.db"
#define STORE_SCHEMA_VERSION     1
#define STORE_ID_LEN             36 /* UUID text, e.g. "0b6e3c52-...", lower case */
#define STORE_HASH_LEN           32 /* SHA-256 */
#define STORE_API_KEY_PREFIX     "apk_"
#define STORE_PROXY_TOKEN_PREFIX "apt_"
#define STORE_NAME_MAX           255        /* longest workspace/secret/box/template name, bytes */
#define STORE_DOC_MAX            (1u << 20) /* longest JSON document, bytes */

enum store_rc {
    STORE_OK = 0,
    STORE_ERR = -1,       /* storage or crypto failure; logged with names only */
    STORE_NOT_FOUND = -2, /* no such row in this workspace (or no such workspace) */
    STORE_EXISTS = -3,    /* the name is taken in this workspace */
    STORE_CONFLICT = -4,  /* optimistic update lost: the row changed since it was read */
    STORE_INVALID = -5,   /* input refused (empty/oversize name, document not JSON, foreign
                             sealed value); the caller should have validated: a 400 */
};

/* A static description of a store_rc, for logs and error details. */
const char *store_strerror(int rc);

struct store;

/* Opens (creating if missing) <state_dir>/authproxy.db with the SQLite backend, creating
 * state_dir (0700) if needed; the database file is created 0600. Applies pending schema
 * migrations in one transaction; refuses a database written by a newer authproxy. kr is
 * borrowed and must outlive the store. NULL with *err (heap, caller frees) on failure. */
struct store *store_open(const char *state_dir, struct seal_keyring *kr, char **err);
/* The same on an explicit database file path. */
struct store *store_open_sqlite(const char *db_path, struct seal_keyring *kr, char **err);
/* Closes the store. NULL is allowed. */
void store_close(struct store *st);

/* A fresh random (v4) UUID, lower case, into out. */
void store_new_id(char out[STORE_ID_LEN + 1]);

/* AAD strings binding sealed values to their row (heap, caller frees). */
char *store_aad_secret(const char *ws_id, const char *name);
char *store_aad_box(const char *ws_id, const char *box_id);
char *store_aad_template(const char *ws_id, const char *template_id);

/* Seal/unseal a value with the store's keyring under the given aad (text form, seal.h).
 * *sealed: heap, free(); *plaintext: heap, secret_free(). STORE_OK, STORE_INVALID (not sealed
 * text / not bound to aad / unknown key) or STORE_ERR. */
int store_seal_value(struct store *st, const char *aad, const char *plaintext, char **sealed);
int store_unseal_value(struct store *st, const char *aad, const char *sealed, char **plaintext);

/* Walks doc (any JSON) and replaces every sealed string: unsealed under from_aad, re-sealed
 * under the current key and to_aad (e.g. copying a template's proxy_config into a new box).
 * Plaintexts are zeroed as soon as re-sealed and never enter jansson. *n_changed (may be NULL)
 * counts replaced strings. STORE_OK, STORE_INVALID (a string fails to unseal) or STORE_ERR;
 * on failure doc may be partly re-sealed, so callers discard it. */
int store_json_reseal(struct store *st, json_t *doc, const char *from_aad, const char *to_aad,
                      size_t *n_changed);

/* Walks doc and replaces every sealed string by its plaintext (for the policy compiler).
 * jansson does not zero strings it frees: the caller owns plaintext inside doc from now on.
 * STORE_OK or STORE_INVALID. */
int store_json_unseal(struct store *st, json_t *doc, const char *aad);

/* The change counter (see above). */
int store_change_seq(struct store *st, uint64_t *seq);

/* ---- workspaces and API keys ------------------------------------------------------------- */

struct store_workspace {
    char *id;
    char *name;
    int64_t created_at;
};

struct store_workspace_list {
    struct store_workspace *items;
    size_t n;
};

/* Creates a workspace named name and mints its first API key. *api_key (heap, the only copy
 * ever; caller releases with secret_free) and, if out != NULL, the new workspace (caller frees
 * with store_workspace_free). STORE_EXISTS when the name is taken. */
int store_workspace_create(struct store *st, const char *name, struct store_workspace *out,
                           char **api_key);
/* By id / by name. out is filled on STORE_OK (caller frees with store_workspace_free). */
int store_workspace_get(struct store *st, const char *ws_id, struct store_workspace *out);
int store_workspace_find(struct store *st, const char *name, struct store_workspace *out);
int store_workspace_list(struct store *st, struct store_workspace_list *out);
/* Frees the strings inside w (not w itself) / a whole list. NULL-safe, idempotent. */
void store_workspace_free(struct store_workspace *w);
void store_workspace_list_free(struct store_workspace_list *l);

/* Mints one more API key for a workspace; *api_key as in store_workspace_create. */
int store_api_key_create(struct store *st, const char *ws_id, char **api_key);
/* Maps a presented API key to its workspace id (*ws_id heap, caller frees). STORE_NOT_FOUND
 * for any unknown or malformed key. The digest is compared in constant time. */
int store_api_key_authenticate(struct store *st, const char *api_key, char **ws_id);

/* ---- secrets ----------------------------------------------------------------------------- */

struct store_secret {
    char *name;
    char *hosts_json; /* the JSON array stored for `configs`, or NULL when omitted */
    char *key_id;     /* id of the key the value is sealed under (operators, rotation) */
    int64_t created_at, updated_at;
    /* Identifies the stored value and binding: SHA-256 over the sealed value and hosts_json
     * (store_secret_version_of). Every put that gives a value changes it (each seal draws a
     * fresh nonce), as do a new binding and a re-seal; nothing else does. The daemon keys its
     * compiled policies by it, so it never needs the plaintext to see that nothing changed. */
    uint8_t version[STORE_HASH_LEN];
};

struct store_secret_list {
    struct store_secret *items;
    size_t n;
};

/* Creates or updates secret name. value NULL keeps the current value ("omit value keeps
 * current"); for a secret that does not exist yet that is STORE_NOT_FOUND. hosts_json is stored
 * verbatim as the secret's host binding (a JSON array) and NULL stores "omitted"; the caller
 * decides defaults. *created (may be NULL) says whether the secret is new. */
int store_secret_put(struct store *st, const char *ws_id, const char *name, const char *value,
                     const char *hosts_json, bool *created);
/* Names, hosts, times and versions of every secret of the workspace, sorted by name. Never
 * values. */
int store_secret_list(struct store *st, const char *ws_id, struct store_secret_list *out);
/* The sealed value (*sealed heap, free(); NULL to skip) and metadata (out may be NULL). */
int store_secret_get_sealed(struct store *st, const char *ws_id, const char *name, char **sealed,
                            struct store_secret *out);
/* The plaintext value (*value heap, release with secret_free). */
int store_secret_reveal(struct store *st, const char *ws_id, const char *name, char **value);
int store_secret_delete(struct store *st, const char *ws_id, const char *name);
void store_secret_free(struct store_secret *s);
void store_secret_list_free(struct store_secret_list *l);

/* ---- boxes ------------------------------------------------------------------------------- */

struct store_box {
    char *id;            /* UUID; NULL on create to have one generated */
    char *name;          /* unique per workspace */
    char *status;        /* owned by the sandbox module ("running", ...); NULL on create:
                            "pending" */
    char *template_name; /* template it was made from, or NULL */
    char *image;         /* or NULL */
    char *proxy_config;  /* JSON object text; sealed strings bound to store_aad_box(ws, id) */
    char *env_vars;      /* JSON object text, or NULL for {} */
    int64_t cpu_millicores, mem_bytes, fs_capacity_bytes; /* 0: default */
    int64_t idle_ttl_seconds, ttl_seconds;                /* 0: none */
    int64_t revision;                                     /* 1 at creation, +1 per update */
    int64_t created_at, updated_at;
    uint8_t proxy_token_hash[STORE_HASH_LEN]; /* SHA-256 of the proxy token (read only) */
};

struct store_box_list {
    struct store_box *items;
    size_t n;
};

/* Creates a box from *box (borrowed; id, revision, times and token hash are ignored or
 * generated except a caller-chosen id). Mints the box's proxy token: *proxy_token (heap, the
 * only copy; secret_free) when proxy_token != NULL. *id_out (heap, may be NULL) gets the id.
 * STORE_EXISTS (name taken), STORE_INVALID (bad JSON, foreign sealed value). */
int store_box_create(struct store *st, const char *ws_id, const struct store_box *box,
                     char **id_out, char **proxy_token);
/* By name / by id; *out filled on STORE_OK (store_box_free). */
int store_box_get(struct store *st, const char *ws_id, const char *name, struct store_box *out);
int store_box_get_by_id(struct store *st, const char *ws_id, const char *id, struct store_box *out);
/* Every box of the workspace, sorted by name. */
int store_box_list(struct store *st, const char *ws_id, struct store_box_list *out);
/* Every box of the workspace, sorted by id, with only id, name, revision and proxy_token_hash
 * filled (the rest NULL/0): what the daemon needs to see which boxes changed since it last
 * compiled them, without reading every document on each write. */
int store_box_list_heads(struct store *st, const char *ws_id, struct store_box_list *out);
/* Replaces the mutable fields (name, status, template_name, image, proxy_config, env_vars,
 * resources, TTLs) of box->id. When box->revision != 0 it must equal the stored revision
 * (read-modify-write without lost updates), else STORE_CONFLICT. STORE_EXISTS on a rename to
 * a taken name. */
int store_box_update(struct store *st, const char *ws_id, const struct store_box *box);
int store_box_delete(struct store *st, const char *ws_id, const char *name);
/* Maps a presented proxy token to its box (the explicit proxy's identity). *ws_id heap and
 * *out filled on STORE_OK; STORE_NOT_FOUND otherwise. */
int store_box_authenticate_token(struct store *st, const char *token, char **ws_id,
                                 struct store_box *out);
void store_box_free(struct store_box *b);
void store_box_list_free(struct store_box_list *l);

/* ---- templates --------------------------------------------------------------------------- */

struct store_template {
    char *id;   /* UUID; NULL on create to have one generated */
    char *name; /* unique per workspace */
    char *body; /* JSON object text; sealed strings bound to store_aad_template(ws, id) */
    int64_t created_at, updated_at;
};

struct store_template_list {
    struct store_template *items;
    size_t n;
};

int store_template_create(struct store *st, const char *ws_id, const struct store_template *t,
                          char **id_out);
int store_template_get(struct store *st, const char *ws_id, const char *name,
                       struct store_template *out);
int store_template_list(struct store *st, const char *ws_id, struct store_template_list *out);
int store_template_delete(struct store *st, const char *ws_id, const char *name);
void store_template_free(struct store_template *t);
void store_template_list_free(struct store_template_list *l);

/* ---- key rotation ------------------------------------------------------------------------ */

/* Re-seals, in one transaction, every sealed value not already under the keyring's current
 * key (secrets, box proxy_configs, template bodies). All or nothing: a value that fails to
 * unseal aborts and rolls back (STORE_INVALID, logged with the row's name). *n_resealed (may be
 * NULL) counts re-sealed values. */
int store_reseal_all(struct store *st, size_t *n_resealed);

/* The distinct key ids (hex, sorted) that stored values are sealed under; a key not listed can
 * be retired. *ids: heap array of heap strings, free with store_key_ids_free. */
int store_sealed_key_ids(struct store *st, char ***ids, size_t *n);
void store_key_ids_free(char **ids, size_t n);

/* ---- backend interface (for store_*.c only) ---------------------------------------------- */

/* Which column a rewrite callback sees. */
enum store_sealed_kind {
    STORE_SEALED_SECRET,   /* secrets.sealed: one sealed text */
    STORE_SEALED_BOX,      /* boxes.proxy_config: a JSON document */
    STORE_SEALED_TEMPLATE, /* templates.body: a JSON document */
};

/* Called once per row holding sealed data, inside one write transaction. row_key is the
 * secret name or the box/template id. Sets *replacement to a heap string to store instead
 * (the backend frees it) or leaves it NULL for "unchanged". Non-zero return (a store_rc)
 * aborts and rolls back the whole pass. */
typedef int (*store_rewrite_fn)(void *ctx, enum store_sealed_kind kind, const char *ws_id,
                                const char *row_key, const char *value, char **replacement);

/* Rows handed to backends: credentials already hashed, values already sealed. */
struct store_secret_row {
    const char *name;
    const char *sealed; /* NULL: keep the current value (and key_id) */
    const char *key_id;
    const char *hosts_json;
    int64_t now;
};

/* Each op returns a store_rc. Outputs as in the public function of the same name. Every
 * successful write bumps the change counter in its transaction. */
struct store_ops {
    void (*close)(struct store *st);
    int (*change_seq)(struct store *st, uint64_t *seq);
    int (*workspace_create)(struct store *st, const struct store_workspace *ws,
                            const uint8_t key_hash[STORE_HASH_LEN], const char *key_prefix);
    int (*workspace_get)(struct store *st, const char *ws_id, const char *name,
                         struct store_workspace *out); /* exactly one of ws_id / name */
    int (*workspace_list)(struct store *st, struct store_workspace_list *out);
    int (*api_key_add)(struct store *st, const char *ws_id, const uint8_t key_hash[STORE_HASH_LEN],
                       const char *key_prefix, int64_t now);
    /* Candidate workspace for a digest; *stored_hash is the stored digest to compare. */
    int (*api_key_lookup)(struct store *st, const uint8_t key_hash[STORE_HASH_LEN], char **ws_id,
                          uint8_t stored_hash[STORE_HASH_LEN]);
    int (*secret_put)(struct store *st, const char *ws_id, const struct store_secret_row *row,
                      bool *created);
    int (*secret_list)(struct store *st, const char *ws_id, struct store_secret_list *out);
    int (*secret_get)(struct store *st, const char *ws_id, const char *name, char **sealed,
                      struct store_secret *out);
    int (*secret_delete)(struct store *st, const char *ws_id, const char *name, int64_t now);
    int (*box_create)(struct store *st, const char *ws_id, const struct store_box *box);
    int (*box_get)(struct store *st, const char *ws_id, const char *name, const char *id,
                   struct store_box *out); /* exactly one of name / id */
    int (*box_list)(struct store *st, const char *ws_id, struct store_box_list *out);
    int (*box_heads)(struct store *st, const char *ws_id, struct store_box_list *out);
    int (*box_update)(struct store *st, const char *ws_id, const struct store_box *box);
    int (*box_delete)(struct store *st, const char *ws_id, const char *name, int64_t now);
    int (*box_by_token)(struct store *st, const uint8_t token_hash[STORE_HASH_LEN], char **ws_id,
                        struct store_box *out);
    int (*template_create)(struct store *st, const char *ws_id, const struct store_template *t);
    int (*template_get)(struct store *st, const char *ws_id, const char *name,
                        struct store_template *out);
    int (*template_list)(struct store *st, const char *ws_id, struct store_template_list *out);
    int (*template_delete)(struct store *st, const char *ws_id, const char *name, int64_t now);
    /* Calls fn for every row holding sealed data, in one write transaction, then writes the
     * replacements (for secrets also key_id, taken from the replacement; for boxes the
     * revision moves, so a read-modify-write racing the pass gets STORE_CONFLICT). Commits
     * when every call returned 0, rolls back otherwise; bumps the change counter only when
     * something was replaced. */
    int (*rewrite_sealed)(struct store *st, store_rewrite_fn fn, void *ctx);
};

/* The version of a stored secret (struct store_secret.version) from its sealed text and its
 * hosts JSON (NULL: omitted); backends fill version with it wherever they return a secret. */
void store_secret_version_of(const char *sealed, const char *hosts_json,
                             uint8_t out[STORE_HASH_LEN]);

/* The common part of every backend's handle; backends embed it as their first member. */
struct store {
    const struct store_ops *ops;
    struct seal_keyring *kr; /* borrowed */
};

#endif
