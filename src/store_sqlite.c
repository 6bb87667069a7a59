/* store_sqlite: the embedded SQLite backend of the store (store.h: schema, contracts).
 *
 * One connection per store handle, serialised by a mutex (a transaction spans several
 * statements). WAL journal with synchronous=FULL: a commit has reached the disk when it returns,
 * so every acknowledged write survives kill -9 and power loss; readers in other processes (a CLI
 * command beside the daemon) never block the writer. busy_timeout makes a second process wait
 * for the write lock instead of failing. secure_delete overwrites freed pages, so deleted or
 * re-sealed values do not linger in the file. Prepared statements are cached per handle (SQL
 * parsing was a tenth of a PATCH's CPU): a statement is reset and its bindings cleared as soon
 * as its caller is done, so a cached one never holds a read transaction open. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "log.h"
#include "util.h"

#define BUSY_TIMEOUT_MS 5000
#define STMT_CACHE_MAX  64 /* more than the distinct statements below */

/* A prepared statement kept for reuse; in_use while a caller holds it (a statement needed
 * again meanwhile, e.g. nested, gets a fresh uncached one). */
struct cached_stmt {
    sqlite3_stmt *stmt;
    bool in_use;
};

struct store_sqlite {
    struct store base; /* first: a struct store * is a struct store_sqlite * */
    sqlite3 *db;
    pthread_mutex_t mu; /* guards db and the statement cache */
    struct cached_stmt cache[STMT_CACHE_MAX];
    size_t n_cache;
};

/* Migration i (0-based) moves the schema from version i to i + 1. Append only: never edit a
 * released migration, add the next one. */
static const char *const migrations[] = {
    /* 1: the initial schema */
    "CREATE TABLE change_seq ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  seq INTEGER NOT NULL);"
    "INSERT INTO change_seq (id, seq) VALUES (1, 0);"
    "CREATE TABLE workspaces ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE api_keys ("
    "  key_hash BLOB PRIMARY KEY,"
    "  workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  prefix TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX api_keys_workspace ON api_keys (workspace_id);"
    "CREATE TABLE secrets ("
    "  workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  sealed TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  hosts TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  PRIMARY KEY (workspace_id, name));"
    "CREATE TABLE boxes ("
    "  id TEXT PRIMARY KEY,"
    "  workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  template_name TEXT,"
    "  image TEXT,"
    "  proxy_config TEXT NOT NULL,"
    "  env_vars TEXT NOT NULL,"
    "  cpu_millicores INTEGER NOT NULL,"
    "  mem_bytes INTEGER NOT NULL,"
    "  fs_capacity_bytes INTEGER NOT NULL,"
    "  idle_ttl_seconds INTEGER NOT NULL,"
    "  ttl_seconds INTEGER NOT NULL,"
    "  proxy_token_hash BLOB NOT NULL UNIQUE,"
    "  revision INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  UNIQUE (workspace_id, name));"
    "CREATE TABLE templates ("
    "  id TEXT PRIMARY KEY,"
    "  workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  body TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  UNIQUE (workspace_id, name));",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == STORE_SCHEMA_VERSION,
               "one migration per schema version");

static struct store_sqlite *sq(struct store *st)
{
    return (struct store_sqlite *)st;
}

/* ---- statement helpers -------------------------------------------------------------------- */

/* Maps an SQLite result to a store_rc: unique/primary-key violations are STORE_EXISTS, a
 * foreign-key violation (no such workspace) STORE_NOT_FOUND; anything else is logged with
 * what was being done (SQLite's messages name tables and columns, never values). */
static int map_rc(struct store_sqlite *s, int rc, const char *what)
{
    switch (rc) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return STORE_OK;
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return STORE_EXISTS;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return STORE_NOT_FOUND;
    default:
        log_error("store: sqlite: %s: %s", what, sqlite3_errmsg(s->db));
        return STORE_ERR;
    }
}

/* The statement for sql (one statement), from the cache when a free one is there; the caller
 * hands it back with release(). Under s->mu. */
static int prepare(struct store_sqlite *s, const char *sql, sqlite3_stmt **stmt)
{
    for (size_t i = 0; i < s->n_cache; i++) {
        struct cached_stmt *c = &s->cache[i];
        if (!c->in_use && strcmp(sqlite3_sql(c->stmt), sql) == 0) {
            c->in_use = true;
            *stmt = c->stmt;
            return STORE_OK;
        }
    }
    int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL);
    if (rc != SQLITE_OK) {
        log_error("store: sqlite: cannot prepare a statement: %s", sqlite3_errmsg(s->db));
        *stmt = NULL;
        return STORE_ERR;
    }
    if (s->n_cache < STMT_CACHE_MAX)
        s->cache[s->n_cache++] = (struct cached_stmt){*stmt, true};
    return STORE_OK;
}

/* Gives back a statement from prepare(): a cached one is reset (ending its read, dropping the
 * values of its last row) and unbound, any other finalized. NULL is allowed. */
static void release(struct store_sqlite *s, sqlite3_stmt *stmt)
{
    if (stmt == NULL)
        return;
    for (size_t i = 0; i < s->n_cache; i++) {
        if (s->cache[i].stmt == stmt) {
            (void)sqlite3_reset(stmt); /* its result is the last step's, already handled */
            (void)sqlite3_clear_bindings(stmt);
            s->cache[i].in_use = false;
            return;
        }
    }
    sqlite3_finalize(stmt);
}

/* Binds NULL for a NULL string. Strings are copied by SQLite (SQLITE_TRANSIENT). */
static void bind_text(sqlite3_stmt *stmt, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(stmt, i);
    else
        sqlite3_bind_text(stmt, i, v, -1, SQLITE_TRANSIENT);
}

static void bind_hash(sqlite3_stmt *stmt, int i, const uint8_t *hash)
{
    sqlite3_bind_blob(stmt, i, hash, STORE_HASH_LEN, SQLITE_TRANSIENT);
}

/* A heap copy of a text column, or NULL for SQL NULL. */
static char *col_text(sqlite3_stmt *stmt, int i)
{
    const unsigned char *v = sqlite3_column_text(stmt, i);
    return v != NULL ? xstrdup((const char *)v) : NULL;
}

/* Copies a hash column into out (zeros when the column is not a 32-byte blob). */
static void col_hash(sqlite3_stmt *stmt, int i, uint8_t out[STORE_HASH_LEN])
{
    const void *v = sqlite3_column_blob(stmt, i);
    if (v != NULL && sqlite3_column_bytes(stmt, i) == STORE_HASH_LEN)
        memcpy(out, v, STORE_HASH_LEN);
    else
        memset(out, 0, STORE_HASH_LEN);
}

/* Runs one statement to completion, returning a store_rc. */
static int step_done(struct store_sqlite *s, sqlite3_stmt *stmt, const char *what)
{
    int rc = sqlite3_step(stmt);
    return rc == SQLITE_DONE ? STORE_OK : map_rc(s, sqlite3_extended_errcode(s->db), what);
}

/* Runs one statement without parameters or results (transaction control, the counter). */
static int exec_sql(struct store_sqlite *s, const char *sql, const char *what)
{
    sqlite3_stmt *stmt = NULL;
    int rc = prepare(s, sql, &stmt);
    if (rc == STORE_OK)
        rc = step_done(s, stmt, what);
    release(s, stmt);
    return rc;
}

/* Starts a write: takes the handle's mutex, then SQLite's write lock (BEGIN IMMEDIATE, waiting
 * up to busy_timeout for another process). On failure the mutex is released again. */
static int write_begin(struct store_sqlite *s)
{
    pthread_mutex_lock(&s->mu);
    int rc = exec_sql(s, "BEGIN IMMEDIATE", "begin");
    if (rc != STORE_OK)
        pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Ends a write begun by write_begin: when rc is STORE_OK, bumps the change counter (if bump)
 * and commits; otherwise, or if that fails, rolls back. Releases the mutex. Returns the final
 * store_rc. */
static int write_end(struct store_sqlite *s, int rc, bool bump)
{
    if (rc == STORE_OK && bump)
        rc = exec_sql(s, "UPDATE change_seq SET seq = seq + 1 WHERE id = 1", "change counter");
    if (rc == STORE_OK)
        rc = exec_sql(s, "COMMIT", "commit");
    if (rc != STORE_OK)
        (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL); /* no-op if none is open */
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- open, migrate, close ----------------------------------------------------------------- */

/* Applies the pending migrations in one IMMEDIATE transaction (two processes starting at once
 * migrate once). Refuses a database of a newer schema, and a database with tables but no
 * schema_version (not ours). 0, or -1 with *err. */
static int migrate(struct store_sqlite *s, const char *path, char **err)
{
    sqlite3_stmt *stmt = NULL;
    int version = 0, foreign_tables = 0, rc = -1;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        *err = xasprintf("%s: cannot lock the database: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    if (sqlite3_prepare_v2(s->db,
                           "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                           "name NOT LIKE 'sqlite_%' AND name <> 'schema_version'",
                           -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW)
        goto sqlfail;
    foreign_tables = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (sqlite3_exec(s->db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "SELECT max(version) FROM schema_version", -1, &stmt, NULL) !=
            SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW)
        goto sqlfail;
    version = sqlite3_column_int(stmt, 0); /* NULL (empty table) reads as 0 */
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (version == 0 && foreign_tables > 0) {
        *err = xasprintf("%s is not an authproxy database (it has tables but no schema version)",
                         path);
        goto out;
    }
    if (version > STORE_SCHEMA_VERSION) {
        *err = xasprintf("%s has schema version %d, newer than this authproxy supports (%d): "
                         "run a newer authproxy, or restore a backup made before the upgrade",
                         path, version, STORE_SCHEMA_VERSION);
        goto out;
    }
    for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
        if (sqlite3_exec(s->db, migrations[v], NULL, NULL, NULL) != SQLITE_OK) {
            *err = xasprintf("%s: migration to schema version %d failed: %s", path, v + 1,
                             sqlite3_errmsg(s->db));
            goto out;
        }
    }
    if (version < STORE_SCHEMA_VERSION) {
        char *sql = xasprintf("DELETE FROM schema_version; INSERT INTO schema_version (version) "
                              "VALUES (%d)",
                              STORE_SCHEMA_VERSION);
        int erc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
        free(sql);
        if (erc != SQLITE_OK)
            goto sqlfail;
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto sqlfail;
    if (version < STORE_SCHEMA_VERSION)
        log_info("store: %s migrated from schema version %d to %d", path, version,
                 STORE_SCHEMA_VERSION);
    return 0;
sqlfail:
    *err = xasprintf("%s: %s", path, sqlite3_errmsg(s->db));
out:
    sqlite3_finalize(stmt);
    (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static const struct store_ops sqlite_ops;

struct store *store_open_sqlite(const char *db_path, struct seal_keyring *kr, char **err)
{
    struct store_sqlite *s = xcalloc(1, sizeof(*s));
    sqlite3_stmt *stmt = NULL;
    s->base.ops = &sqlite_ops;
    s->base.kr = kr;
    pthread_mutex_init(&s->mu, NULL);
    /* Create the file ourselves so it is 0600 from the start; SQLite gives the -wal and -shm
     * files the database file's permissions. */
    int fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1) {
        *err = xasprintf("cannot open database %s: %s", db_path, strerror(errno));
        goto fail;
    }
    close(fd);
    if (fsync_parent_dir(db_path) == -1) {
        *err = xasprintf("cannot sync the directory of %s: %s", db_path, strerror(errno));
        goto fail;
    }
    if (sqlite3_open_v2(db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        *err = xasprintf("cannot open database %s: %s", db_path,
                         s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    /* journal_mode answers with the mode in force; anything but "wal" (e.g. a file system
     * without shared memory) would silently weaken the durability and concurrency promises. */
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW) {
        *err = xasprintf("%s: cannot enable WAL: %s", db_path, sqlite3_errmsg(s->db));
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(stmt, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        *err = xasprintf("%s: the file system does not support WAL mode (journal mode is %s)",
                         db_path, mode ? mode : "unknown");
        goto fail;
    }
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (sqlite3_exec(s->db,
                     "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; "
                     "PRAGMA secure_delete = ON;",
                     NULL, NULL, NULL) != SQLITE_OK) {
        *err = xasprintf("%s: %s", db_path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (migrate(s, db_path, err) != 0)
        goto fail;
    return &s->base;
fail:
    sqlite3_finalize(stmt);
    sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return NULL;
}

static void sq_close(struct store *st)
{
    struct store_sqlite *s = sq(st);
    for (size_t i = 0; i < s->n_cache; i++)
        sqlite3_finalize(s->cache[i].stmt);
    s->n_cache = 0;
    if (sqlite3_close_v2(s->db) != SQLITE_OK)
        log_error("store: sqlite: close: %s", sqlite3_errmsg(s->db));
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int sq_change_seq(struct store *st, uint64_t *seq)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s, "SELECT seq FROM change_seq WHERE id = 1", &stmt);
    if (rc == STORE_OK) {
        if (sqlite3_step(stmt) == SQLITE_ROW)
            *seq = (uint64_t)sqlite3_column_int64(stmt, 0);
        else
            rc = map_rc(s, sqlite3_extended_errcode(s->db), "change counter");
    }
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- workspaces and API keys -------------------------------------------------------------- */

/* Inserts an API key row; inside a write transaction. */
static int insert_api_key(struct store_sqlite *s, const char *ws_id, const uint8_t *hash,
                          const char *prefix, int64_t now)
{
    sqlite3_stmt *stmt = NULL;
    int rc = prepare(s,
                     "INSERT INTO api_keys (key_hash, workspace_id, prefix, created_at) "
                     "VALUES (?, ?, ?, ?)",
                     &stmt);
    if (rc == STORE_OK) {
        bind_hash(stmt, 1, hash);
        bind_text(stmt, 2, ws_id);
        bind_text(stmt, 3, prefix);
        sqlite3_bind_int64(stmt, 4, now);
        rc = step_done(s, stmt, "insert api key");
    }
    release(s, stmt);
    return rc;
}

static int sq_workspace_create(struct store *st, const struct store_workspace *ws,
                               const uint8_t key_hash[STORE_HASH_LEN], const char *key_prefix)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = prepare(s, "INSERT INTO workspaces (id, name, created_at) VALUES (?, ?, ?)", &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, ws->id);
        bind_text(stmt, 2, ws->name);
        sqlite3_bind_int64(stmt, 3, ws->created_at);
        rc = step_done(s, stmt, "insert workspace");
    }
    release(s, stmt);
    if (rc == STORE_OK)
        rc = insert_api_key(s, ws->id, key_hash, key_prefix, ws->created_at);
    return write_end(s, rc, true);
}

static int sq_workspace_get(struct store *st, const char *ws_id, const char *name,
                            struct store_workspace *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s,
                     ws_id != NULL ? "SELECT id, name, created_at FROM workspaces WHERE id = ?"
                                   : "SELECT id, name, created_at FROM workspaces WHERE name = ?",
                     &stmt);
    if (rc != STORE_OK)
        goto out;
    bind_text(stmt, 1, ws_id != NULL ? ws_id : name);
    int r = sqlite3_step(stmt);
    if (r == SQLITE_ROW) {
        out->id = col_text(stmt, 0);
        out->name = col_text(stmt, 1);
        out->created_at = sqlite3_column_int64(stmt, 2);
    } else {
        rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                              : map_rc(s, sqlite3_extended_errcode(s->db), "get workspace");
    }
out:
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int sq_workspace_list(struct store *st, struct store_workspace_list *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    struct store_workspace_list l = {0};
    int r;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s, "SELECT id, name, created_at FROM workspaces ORDER BY name", &stmt);
    while (rc == STORE_OK && (r = sqlite3_step(stmt)) == SQLITE_ROW) {
        l.items = xrealloc(l.items, (l.n + 1) * sizeof(*l.items));
        struct store_workspace *w = &l.items[l.n++];
        w->id = col_text(stmt, 0);
        w->name = col_text(stmt, 1);
        w->created_at = sqlite3_column_int64(stmt, 2);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = map_rc(s, sqlite3_extended_errcode(s->db), "list workspaces");
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_OK)
        *out = l;
    else
        store_workspace_list_free(&l);
    return rc;
}

static int sq_api_key_add(struct store *st, const char *ws_id,
                          const uint8_t key_hash[STORE_HASH_LEN], const char *key_prefix,
                          int64_t now)
{
    struct store_sqlite *s = sq(st);
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = insert_api_key(s, ws_id, key_hash, key_prefix, now);
    return write_end(s, rc, true);
}

static int sq_api_key_lookup(struct store *st, const uint8_t key_hash[STORE_HASH_LEN], char **ws_id,
                             uint8_t stored_hash[STORE_HASH_LEN])
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s, "SELECT workspace_id, key_hash FROM api_keys WHERE key_hash = ?", &stmt);
    if (rc == STORE_OK) {
        bind_hash(stmt, 1, key_hash);
        int r = sqlite3_step(stmt);
        if (r == SQLITE_ROW) {
            *ws_id = col_text(stmt, 0);
            col_hash(stmt, 1, stored_hash);
        } else {
            rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                                  : map_rc(s, sqlite3_extended_errcode(s->db), "api key");
        }
    }
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- secrets ------------------------------------------------------------------------------ */

/* Whether a row exists for a query with two text parameters; inside the caller's lock. */
static int row_exists(struct store_sqlite *s, const char *sql, const char *a, const char *b,
                      bool *exists)
{
    sqlite3_stmt *stmt = NULL;
    int rc = prepare(s, sql, &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, a);
        bind_text(stmt, 2, b);
        int r = sqlite3_step(stmt);
        if (r == SQLITE_ROW || r == SQLITE_DONE)
            *exists = r == SQLITE_ROW;
        else
            rc = map_rc(s, sqlite3_extended_errcode(s->db), "lookup");
    }
    release(s, stmt);
    return rc;
}

static int sq_secret_put(struct store *st, const char *ws_id, const struct store_secret_row *row,
                         bool *created)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    bool exists = false;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = row_exists(s, "SELECT 1 FROM secrets WHERE workspace_id = ? AND name = ?", ws_id,
                    row->name, &exists);
    if (rc != STORE_OK)
        goto out;
    if (!exists && row->sealed == NULL) {
        rc = STORE_NOT_FOUND; /* "keep the current value" of a secret that has none */
        goto out;
    }
    if (!exists) {
        rc = prepare(s,
                     "INSERT INTO secrets (workspace_id, name, hosts, updated_at, sealed, key_id, "
                     "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4)",
                     &stmt);
    } else if (row->sealed != NULL) {
        rc = prepare(s,
                     "UPDATE secrets SET hosts = ?3, updated_at = ?4, sealed = ?5, key_id = ?6 "
                     "WHERE workspace_id = ?1 AND name = ?2",
                     &stmt);
    } else {
        rc = prepare(s,
                     "UPDATE secrets SET hosts = ?3, updated_at = ?4 "
                     "WHERE workspace_id = ?1 AND name = ?2",
                     &stmt);
    }
    if (rc != STORE_OK)
        goto out;
    bind_text(stmt, 1, ws_id);
    bind_text(stmt, 2, row->name);
    bind_text(stmt, 3, row->hosts_json);
    sqlite3_bind_int64(stmt, 4, row->now);
    if (row->sealed != NULL) {
        bind_text(stmt, 5, row->sealed);
        bind_text(stmt, 6, row->key_id);
    }
    rc = step_done(s, stmt, exists ? "update secret" : "insert secret");
    if (rc == STORE_OK)
        *created = !exists;
out:
    release(s, stmt);
    return write_end(s, rc, true);
}

static int sq_secret_list(struct store *st, const char *ws_id, struct store_secret_list *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    struct store_secret_list l = {0};
    int r = SQLITE_DONE;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s,
                     "SELECT name, hosts, key_id, created_at, updated_at, sealed FROM secrets "
                     "WHERE workspace_id = ? ORDER BY name",
                     &stmt);
    if (rc == STORE_OK)
        bind_text(stmt, 1, ws_id);
    while (rc == STORE_OK && (r = sqlite3_step(stmt)) == SQLITE_ROW) {
        l.items = xrealloc(l.items, (l.n + 1) * sizeof(*l.items));
        struct store_secret *x = &l.items[l.n++];
        x->name = col_text(stmt, 0);
        x->hosts_json = col_text(stmt, 1);
        x->key_id = col_text(stmt, 2);
        x->created_at = sqlite3_column_int64(stmt, 3);
        x->updated_at = sqlite3_column_int64(stmt, 4);
        const char *sealed = (const char *)sqlite3_column_text(stmt, 5);
        store_secret_version_of(sealed ? sealed : "", x->hosts_json, x->version);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = map_rc(s, sqlite3_extended_errcode(s->db), "list secrets");
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_OK)
        *out = l;
    else
        store_secret_list_free(&l);
    return rc;
}

static int sq_secret_get(struct store *st, const char *ws_id, const char *name, char **sealed,
                         struct store_secret *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s,
                     "SELECT sealed, name, hosts, key_id, created_at, updated_at FROM secrets "
                     "WHERE workspace_id = ? AND name = ?",
                     &stmt);
    if (rc != STORE_OK)
        goto out;
    bind_text(stmt, 1, ws_id);
    bind_text(stmt, 2, name);
    int r = sqlite3_step(stmt);
    if (r != SQLITE_ROW) {
        rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                              : map_rc(s, sqlite3_extended_errcode(s->db), "get secret");
        goto out;
    }
    if (sealed != NULL)
        *sealed = col_text(stmt, 0);
    if (out != NULL) {
        out->name = col_text(stmt, 1);
        out->hosts_json = col_text(stmt, 2);
        out->key_id = col_text(stmt, 3);
        out->created_at = sqlite3_column_int64(stmt, 4);
        out->updated_at = sqlite3_column_int64(stmt, 5);
        const char *text = (const char *)sqlite3_column_text(stmt, 0);
        store_secret_version_of(text ? text : "", out->hosts_json, out->version);
    }
out:
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Deletes by (workspace, name) with sql taking those two parameters; STORE_NOT_FOUND when no
 * row went away (and then nothing is committed or counted). */
static int delete_by_name(struct store_sqlite *s, const char *sql, const char *ws_id,
                          const char *name, const char *what)
{
    sqlite3_stmt *stmt = NULL;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = prepare(s, sql, &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, ws_id);
        bind_text(stmt, 2, name);
        rc = step_done(s, stmt, what);
        if (rc == STORE_OK && sqlite3_changes(s->db) == 0)
            rc = STORE_NOT_FOUND;
    }
    release(s, stmt);
    return write_end(s, rc, true);
}

static int sq_secret_delete(struct store *st, const char *ws_id, const char *name, int64_t now)
{
    (void)now;
    return delete_by_name(sq(st), "DELETE FROM secrets WHERE workspace_id = ? AND name = ?", ws_id,
                          name, "delete secret");
}

/* ---- boxes -------------------------------------------------------------------------------- */

#define BOX_COLS                                                                                   \
    "id, name, status, template_name, image, proxy_config, env_vars, cpu_millicores, "             \
    "mem_bytes, fs_capacity_bytes, idle_ttl_seconds, ttl_seconds, revision, created_at, "          \
    "updated_at, proxy_token_hash"

/* Reads the BOX_COLS columns starting at column first into *b (heap strings). */
static void read_box(sqlite3_stmt *stmt, int first, struct store_box *b)
{
    int c = first;
    b->id = col_text(stmt, c++);
    b->name = col_text(stmt, c++);
    b->status = col_text(stmt, c++);
    b->template_name = col_text(stmt, c++);
    b->image = col_text(stmt, c++);
    b->proxy_config = col_text(stmt, c++);
    b->env_vars = col_text(stmt, c++);
    b->cpu_millicores = sqlite3_column_int64(stmt, c++);
    b->mem_bytes = sqlite3_column_int64(stmt, c++);
    b->fs_capacity_bytes = sqlite3_column_int64(stmt, c++);
    b->idle_ttl_seconds = sqlite3_column_int64(stmt, c++);
    b->ttl_seconds = sqlite3_column_int64(stmt, c++);
    b->revision = sqlite3_column_int64(stmt, c++);
    b->created_at = sqlite3_column_int64(stmt, c++);
    b->updated_at = sqlite3_column_int64(stmt, c++);
    col_hash(stmt, c, b->proxy_token_hash);
}

/* Binds the mutable box fields to parameters 1..11 in the order of the INSERT/UPDATE below. */
static void bind_box_fields(sqlite3_stmt *stmt, const struct store_box *b)
{
    bind_text(stmt, 1, b->name);
    bind_text(stmt, 2, b->status);
    bind_text(stmt, 3, b->template_name);
    bind_text(stmt, 4, b->image);
    bind_text(stmt, 5, b->proxy_config);
    bind_text(stmt, 6, b->env_vars);
    sqlite3_bind_int64(stmt, 7, b->cpu_millicores);
    sqlite3_bind_int64(stmt, 8, b->mem_bytes);
    sqlite3_bind_int64(stmt, 9, b->fs_capacity_bytes);
    sqlite3_bind_int64(stmt, 10, b->idle_ttl_seconds);
    sqlite3_bind_int64(stmt, 11, b->ttl_seconds);
}

static int sq_box_create(struct store *st, const char *ws_id, const struct store_box *box)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = prepare(s,
                 "INSERT INTO boxes (name, status, template_name, image, proxy_config, env_vars, "
                 "cpu_millicores, mem_bytes, fs_capacity_bytes, idle_ttl_seconds, ttl_seconds, "
                 "revision, updated_at, id, workspace_id, created_at, proxy_token_hash) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, "
                 "?17)",
                 &stmt);
    if (rc == STORE_OK) {
        bind_box_fields(stmt, box);
        sqlite3_bind_int64(stmt, 12, box->revision);
        sqlite3_bind_int64(stmt, 13, box->updated_at);
        bind_text(stmt, 14, box->id);
        bind_text(stmt, 15, ws_id);
        sqlite3_bind_int64(stmt, 16, box->created_at);
        bind_hash(stmt, 17, box->proxy_token_hash);
        rc = step_done(s, stmt, "insert box");
    }
    release(s, stmt);
    return write_end(s, rc, true);
}

static int sq_box_get(struct store *st, const char *ws_id, const char *name, const char *id,
                      struct store_box *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc =
        prepare(s,
                name != NULL ? "SELECT " BOX_COLS " FROM boxes WHERE workspace_id = ? AND name = ?"
                             : "SELECT " BOX_COLS " FROM boxes WHERE workspace_id = ? AND id = ?",
                &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, ws_id);
        bind_text(stmt, 2, name != NULL ? name : id);
        int r = sqlite3_step(stmt);
        if (r == SQLITE_ROW)
            read_box(stmt, 0, out);
        else
            rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                                  : map_rc(s, sqlite3_extended_errcode(s->db), "get box");
    }
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Reads the HEAD_COLS columns (a box head: store_box_list_heads) into *b. */
#define HEAD_COLS "id, name, revision, proxy_token_hash"
static void read_head(sqlite3_stmt *stmt, int first, struct store_box *b)
{
    memset(b, 0, sizeof(*b));
    b->id = col_text(stmt, first);
    b->name = col_text(stmt, first + 1);
    b->revision = sqlite3_column_int64(stmt, first + 2);
    col_hash(stmt, first + 3, b->proxy_token_hash);
}

/* The boxes of a workspace: sql takes the workspace id and selects the columns read_row reads. */
static int list_boxes(struct store_sqlite *s, const char *ws_id, const char *sql,
                      void (*read_row)(sqlite3_stmt *, int, struct store_box *),
                      struct store_box_list *out)
{
    sqlite3_stmt *stmt = NULL;
    struct store_box_list l = {0};
    int r = SQLITE_DONE;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s, sql, &stmt);
    if (rc == STORE_OK)
        bind_text(stmt, 1, ws_id);
    while (rc == STORE_OK && (r = sqlite3_step(stmt)) == SQLITE_ROW) {
        l.items = xrealloc(l.items, (l.n + 1) * sizeof(*l.items));
        read_row(stmt, 0, &l.items[l.n++]);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = map_rc(s, sqlite3_extended_errcode(s->db), "list boxes");
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_OK)
        *out = l;
    else
        store_box_list_free(&l);
    return rc;
}

static int sq_box_list(struct store *st, const char *ws_id, struct store_box_list *out)
{
    return list_boxes(sq(st), ws_id,
                      "SELECT " BOX_COLS " FROM boxes WHERE workspace_id = ? ORDER BY name",
                      read_box, out);
}

static int sq_box_heads(struct store *st, const char *ws_id, struct store_box_list *out)
{
    return list_boxes(sq(st), ws_id,
                      "SELECT " HEAD_COLS " FROM boxes WHERE workspace_id = ? ORDER BY id",
                      read_head, out);
}

static int sq_box_update(struct store *st, const char *ws_id, const struct store_box *box)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = prepare(s,
                 "UPDATE boxes SET name = ?1, status = ?2, template_name = ?3, image = ?4, "
                 "proxy_config = ?5, env_vars = ?6, cpu_millicores = ?7, mem_bytes = ?8, "
                 "fs_capacity_bytes = ?9, idle_ttl_seconds = ?10, ttl_seconds = ?11, "
                 "revision = revision + 1, updated_at = ?12 "
                 "WHERE workspace_id = ?13 AND id = ?14 AND (?15 = 0 OR revision = ?15)",
                 &stmt);
    if (rc != STORE_OK)
        goto out;
    bind_box_fields(stmt, box);
    sqlite3_bind_int64(stmt, 12, box->updated_at);
    bind_text(stmt, 13, ws_id);
    bind_text(stmt, 14, box->id);
    sqlite3_bind_int64(stmt, 15, box->revision);
    rc = step_done(s, stmt, "update box");
    if (rc == STORE_OK && sqlite3_changes(s->db) == 0) {
        bool exists = false;
        rc = row_exists(s, "SELECT 1 FROM boxes WHERE workspace_id = ? AND id = ?", ws_id, box->id,
                        &exists);
        if (rc == STORE_OK)
            rc = exists ? STORE_CONFLICT : STORE_NOT_FOUND;
    }
out:
    release(s, stmt);
    return write_end(s, rc, true);
}

static int sq_box_delete(struct store *st, const char *ws_id, const char *name, int64_t now)
{
    (void)now;
    return delete_by_name(sq(st), "DELETE FROM boxes WHERE workspace_id = ? AND name = ?", ws_id,
                          name, "delete box");
}

static int sq_box_by_token(struct store *st, const uint8_t token_hash[STORE_HASH_LEN], char **ws_id,
                           struct store_box *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s, "SELECT workspace_id, " BOX_COLS " FROM boxes WHERE proxy_token_hash = ?",
                     &stmt);
    if (rc == STORE_OK) {
        bind_hash(stmt, 1, token_hash);
        int r = sqlite3_step(stmt);
        if (r == SQLITE_ROW) {
            *ws_id = col_text(stmt, 0);
            read_box(stmt, 1, out);
        } else {
            rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                                  : map_rc(s, sqlite3_extended_errcode(s->db), "box by token");
        }
    }
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- templates ---------------------------------------------------------------------------- */

static int sq_template_create(struct store *st, const char *ws_id, const struct store_template *t)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    rc = prepare(s,
                 "INSERT INTO templates (id, workspace_id, name, body, created_at, updated_at) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, t->id);
        bind_text(stmt, 2, ws_id);
        bind_text(stmt, 3, t->name);
        bind_text(stmt, 4, t->body);
        sqlite3_bind_int64(stmt, 5, t->created_at);
        sqlite3_bind_int64(stmt, 6, t->updated_at);
        rc = step_done(s, stmt, "insert template");
    }
    release(s, stmt);
    return write_end(s, rc, true);
}

static void read_template(sqlite3_stmt *stmt, struct store_template *t)
{
    t->id = col_text(stmt, 0);
    t->name = col_text(stmt, 1);
    t->body = col_text(stmt, 2);
    t->created_at = sqlite3_column_int64(stmt, 3);
    t->updated_at = sqlite3_column_int64(stmt, 4);
}

static int sq_template_get(struct store *st, const char *ws_id, const char *name,
                           struct store_template *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s,
                     "SELECT id, name, body, created_at, updated_at FROM templates "
                     "WHERE workspace_id = ? AND name = ?",
                     &stmt);
    if (rc == STORE_OK) {
        bind_text(stmt, 1, ws_id);
        bind_text(stmt, 2, name);
        int r = sqlite3_step(stmt);
        if (r == SQLITE_ROW)
            read_template(stmt, out);
        else
            rc = r == SQLITE_DONE ? STORE_NOT_FOUND
                                  : map_rc(s, sqlite3_extended_errcode(s->db), "get template");
    }
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int sq_template_list(struct store *st, const char *ws_id, struct store_template_list *out)
{
    struct store_sqlite *s = sq(st);
    sqlite3_stmt *stmt = NULL;
    struct store_template_list l = {0};
    int r = SQLITE_DONE;
    pthread_mutex_lock(&s->mu);
    int rc = prepare(s,
                     "SELECT id, name, body, created_at, updated_at FROM templates "
                     "WHERE workspace_id = ? ORDER BY name",
                     &stmt);
    if (rc == STORE_OK)
        bind_text(stmt, 1, ws_id);
    while (rc == STORE_OK && (r = sqlite3_step(stmt)) == SQLITE_ROW) {
        l.items = xrealloc(l.items, (l.n + 1) * sizeof(*l.items));
        read_template(stmt, &l.items[l.n++]);
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = map_rc(s, sqlite3_extended_errcode(s->db), "list templates");
    release(s, stmt);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_OK)
        *out = l;
    else
        store_template_list_free(&l);
    return rc;
}

static int sq_template_delete(struct store *st, const char *ws_id, const char *name, int64_t now)
{
    (void)now;
    return delete_by_name(sq(st), "DELETE FROM templates WHERE workspace_id = ? AND name = ?",
                          ws_id, name, "delete template");
}

/* ---- rewriting sealed data ---------------------------------------------------------------- */

struct pending {
    char *ws_id, *row_key, *value;
};

/* One table of the rewrite pass. */
struct sealed_table {
    enum store_sealed_kind kind;
    const char *select; /* workspace_id, row key, value */
    const char *update; /* ?1 value, ?2 workspace_id, ?3 row key, ?4 key id (secrets only) */
};

static const struct sealed_table sealed_tables[] = {
    {STORE_SEALED_SECRET, "SELECT workspace_id, name, sealed FROM secrets",
     "UPDATE secrets SET sealed = ?1, key_id = ?4 WHERE workspace_id = ?2 AND name = ?3"},
    {STORE_SEALED_BOX, "SELECT workspace_id, id, proxy_config FROM boxes",
     "UPDATE boxes SET proxy_config = ?1, revision = revision + 1 "
     "WHERE workspace_id = ?2 AND id = ?3"},
    {STORE_SEALED_TEMPLATE, "SELECT workspace_id, id, body FROM templates",
     "UPDATE templates SET body = ?1 WHERE workspace_id = ?2 AND id = ?3"},
};

/* Runs fn over one table, collecting replacements into *p (rows are written after the scan, so
 * the SELECT never sees its own updates). */
static int scan_table(struct store_sqlite *s, const struct sealed_table *t, store_rewrite_fn fn,
                      void *ctx, struct pending **p, size_t *np)
{
    sqlite3_stmt *stmt = NULL;
    int r = SQLITE_DONE;
    int rc = prepare(s, t->select, &stmt);
    while (rc == STORE_OK && (r = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *ws = (const char *)sqlite3_column_text(stmt, 0);
        const char *key = (const char *)sqlite3_column_text(stmt, 1);
        const char *val = (const char *)sqlite3_column_text(stmt, 2);
        char *repl = NULL;
        if (ws == NULL || key == NULL || val == NULL) {
            rc = STORE_ERR;
            break;
        }
        rc = fn(ctx, t->kind, ws, key, val, &repl);
        if (rc == STORE_OK && repl != NULL) {
            *p = xrealloc(*p, (*np + 1) * sizeof(**p));
            (*p)[(*np)++] = (struct pending){xstrdup(ws), xstrdup(key), repl};
        } else {
            free(repl);
        }
    }
    if (rc == STORE_OK && r != SQLITE_DONE)
        rc = map_rc(s, sqlite3_extended_errcode(s->db), "scan sealed values");
    release(s, stmt);
    return rc;
}

/* Writes the replacements collected for one table. */
static int apply_pending(struct store_sqlite *s, const struct sealed_table *t,
                         const struct pending *p, size_t np)
{
    sqlite3_stmt *stmt = NULL;
    int rc = prepare(s, t->update, &stmt);
    for (size_t i = 0; rc == STORE_OK && i < np; i++) {
        char key_id[SEAL_KEY_ID_HEX_LEN + 1] = "";
        if (t->kind == STORE_SEALED_SECRET && seal_text_key_id(p[i].value, key_id) != SEAL_OK) {
            rc = STORE_INVALID;
            break;
        }
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
        bind_text(stmt, 1, p[i].value);
        bind_text(stmt, 2, p[i].ws_id);
        bind_text(stmt, 3, p[i].row_key);
        if (t->kind == STORE_SEALED_SECRET)
            bind_text(stmt, 4, key_id);
        rc = step_done(s, stmt, "rewrite sealed value");
    }
    release(s, stmt);
    return rc;
}

static void pending_free(struct pending *p, size_t np)
{
    for (size_t i = 0; i < np; i++) {
        free(p[i].ws_id);
        free(p[i].row_key);
        free(p[i].value);
    }
    free(p);
}

static int sq_rewrite_sealed(struct store *st, store_rewrite_fn fn, void *ctx)
{
    struct store_sqlite *s = sq(st);
    size_t changed = 0;
    int rc = write_begin(s);
    if (rc != STORE_OK)
        return rc;
    for (size_t i = 0; rc == STORE_OK && i < ARRAY_LEN(sealed_tables); i++) {
        struct pending *p = NULL;
        size_t np = 0;
        rc = scan_table(s, &sealed_tables[i], fn, ctx, &p, &np);
        if (rc == STORE_OK)
            rc = apply_pending(s, &sealed_tables[i], p, np);
        changed += np;
        pending_free(p, np);
    }
    return write_end(s, rc, changed > 0);
}

static const struct store_ops sqlite_ops = {
    .close = sq_close,
    .change_seq = sq_change_seq,
    .workspace_create = sq_workspace_create,
    .workspace_get = sq_workspace_get,
    .workspace_list = sq_workspace_list,
    .api_key_add = sq_api_key_add,
    .api_key_lookup = sq_api_key_lookup,
    .secret_put = sq_secret_put,
    .secret_list = sq_secret_list,
    .secret_get = sq_secret_get,
    .secret_delete = sq_secret_delete,
    .box_create = sq_box_create,
    .box_get = sq_box_get,
    .box_list = sq_box_list,
    .box_heads = sq_box_heads,
    .box_update = sq_box_update,
    .box_delete = sq_box_delete,
    .box_by_token = sq_box_by_token,
    .template_create = sq_template_create,
    .template_get = sq_template_get,
    .template_list = sq_template_list,
    .template_delete = sq_template_delete,
    .rewrite_sealed = sq_rewrite_sealed,
};
