/* Unit tests for store (SQLite backend, real files in a temporary directory): what the control
 * plane relies on — migrations, data surviving a reopen and a kill -9, workspace isolation,
 * distinct "exists" errors, credentials, re-sealing under a rotated key, and no plaintext
 * secret anywhere in the database files. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "seal.h"
#include "store.h"
#include "util.h"

#define CANARY        "sk-CANARY-9f8e7d6c5b4a-plaintext-must-not-be-stored"
#define OPAQUE_CANARY "opaque-CANARY-31415926-never-on-disk"

struct fixture {
    char *dir;
    struct seal_keyring *kr;
    struct store *st;
};

static struct store *open_store(struct fixture *f)
{
    char *err = NULL;
    struct store *st = store_open(f->dir, f->kr, &err);
    if (st == NULL)
        fail_msg("store_open: %s", err);
    return st;
}

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    char *err = NULL;
    unsetenv(SEAL_ENV_VAR);
    f->dir = xstrdup("/tmp/test_store.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->kr = seal_keyring_open(f->dir, NULL, &err);
    if (f->kr == NULL)
        return -1;
    f->st = open_store(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->st);
    seal_keyring_free(f->kr);
    char *cmd = xasprintf("rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(cmd);
    free(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* Creates a workspace; returns its id (heap). The API key is freed unless key != NULL. */
static char *make_ws(struct store *st, const char *name, char **key)
{
    struct store_workspace ws = {0};
    char *k = NULL;
    assert_int_equal(store_workspace_create(st, name, &ws, &k), STORE_OK);
    char *id = ws.id;
    ws.id = NULL;
    store_workspace_free(&ws);
    if (key != NULL)
        *key = k;
    else
        secret_free(k);
    return id;
}

/* A proxy_config JSON text with one opaque header sealed for box (ws, box_id). */
static char *config_with_opaque(struct store *st, const char *ws, const char *box_id,
                                const char *value)
{
    char *aad = store_aad_box(ws, box_id), *sealed = NULL;
    assert_int_equal(store_seal_value(st, aad, value, &sealed), STORE_OK);
    char *doc =
        xasprintf("{\"rules\":[{\"name\":\"r\",\"match_hosts\":[\"api.example.com\"],"
                  "\"headers\":[{\"name\":\"X-Key\",\"type\":\"opaque\",\"value\":\"%s\"}]}]}",
                  sealed);
    free(sealed);
    free(aad);
    return doc;
}

/* Creates box name in ws with a caller-chosen id and one opaque value; returns the id. */
static char *make_box(struct store *st, const char *ws, const char *name, const char *opaque)
{
    char id[STORE_ID_LEN + 1];
    store_new_id(id);
    char *cfg = config_with_opaque(st, ws, id, opaque);
    struct store_box b = {.id = id,
                          .name = (char *)name,
                          .proxy_config = cfg,
                          .env_vars = "{\"GH_TOKEN\":\"placeholder\"}",
                          .mem_bytes = 1 << 30,
                          .idle_ttl_seconds = 600};
    char *got = NULL, *token = NULL;
    assert_int_equal(store_box_create(st, ws, &b, &got, &token), STORE_OK);
    assert_string_equal(got, id);
    assert_non_null(token);
    secret_free(token);
    free(cfg);
    return got;
}

static int64_t sql_int(const char *db_path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *stmt;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return v;
}

static void sql_exec(const char *db_path, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_migrations_from_empty(void **state)
{
    struct fixture *f = *state;
    char *db = xasprintf("%s/%s", f->dir, STORE_DB_FILE);
    struct stat st;
    assert_int_equal(stat(db, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(sql_int(db, "SELECT version FROM schema_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM schema_version"), 1);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                                 "name IN ('workspaces','api_keys','secrets','boxes','templates')"),
                     5);
    sqlite3 *h;
    sqlite3_stmt *stmt;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &stmt, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(stmt, 0), "wal");
    sqlite3_finalize(stmt);
    sqlite3_close(h);
    /* Reopening an up-to-date database migrates nothing and keeps one version row. */
    store_close(f->st);
    f->st = open_store(f);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM schema_version"), 1);
    free(db);
}

static void test_newer_schema_refused(void **state)
{
    struct fixture *f = *state;
    char *db = xasprintf("%s/%s", f->dir, STORE_DB_FILE), *err = NULL;
    store_close(f->st);
    f->st = NULL;
    sql_exec(db, "UPDATE schema_version SET version = 99");
    assert_null(store_open(f->dir, f->kr, &err));
    assert_non_null(strstr(err, "newer"));
    assert_non_null(strstr(err, "99"));
    free(err);
    err = NULL;
    /* Nothing was changed by the refused open. */
    assert_int_equal(sql_int(db, "SELECT version FROM schema_version"), 99);

    /* A database that is not ours is refused rather than having tables added. */
    char *other = xasprintf("%s/other.db", f->dir);
    sql_exec(other, "CREATE TABLE t (x)");
    assert_null(store_open_sqlite(other, f->kr, &err));
    assert_non_null(strstr(err, "not an authproxy database"));
    free(err);
    free(other);
    sql_exec(db, "UPDATE schema_version SET version = 1");
    f->st = open_store(f);
    free(db);
}

static void test_reopen_keeps_data(void **state)
{
    struct fixture *f = *state;
    char *key = NULL, *ws = make_ws(f->st, "default", &key);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", CANARY,
                                      "[{\"host\":\"api.openai.com\"}]", NULL),
                     STORE_OK);
    char *box_id = make_box(f->st, ws, "demo", OPAQUE_CANARY);
    struct store_template t = {.name = "py", .body = "{\"image\":\"python:3.12\"}"};
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_OK);
    uint64_t seq_before;
    assert_int_equal(store_change_seq(f->st, &seq_before), STORE_OK);

    store_close(f->st);
    f->st = open_store(f);

    char *got_ws = NULL, *value = NULL;
    assert_int_equal(store_api_key_authenticate(f->st, key, &got_ws), STORE_OK);
    assert_string_equal(got_ws, ws);
    assert_int_equal(store_secret_reveal(f->st, ws, "OPENAI_API_KEY", &value), STORE_OK);
    assert_string_equal(value, CANARY);
    struct store_box b = {0};
    assert_int_equal(store_box_get(f->st, ws, "demo", &b), STORE_OK);
    assert_string_equal(b.id, box_id);
    assert_string_equal(b.status, "pending");
    assert_int_equal(b.mem_bytes, 1 << 30);
    assert_int_equal(b.idle_ttl_seconds, 600);
    assert_int_equal(b.revision, 1);
    assert_string_equal(b.env_vars, "{\"GH_TOKEN\":\"placeholder\"}");
    /* The stored opaque value unseals under the box's binding after the reopen. */
    json_t *cfg = json_loads(b.proxy_config, 0, NULL);
    char *aad = store_aad_box(ws, box_id);
    assert_int_equal(store_json_unseal(f->st, cfg, aad), STORE_OK);
    json_t *hdr = json_array_get(
        json_object_get(json_array_get(json_object_get(cfg, "rules"), 0), "headers"), 0);
    assert_string_equal(json_string_value(json_object_get(hdr, "value")), OPAQUE_CANARY);
    json_decref(cfg);
    struct store_template tg = {0};
    assert_int_equal(store_template_get(f->st, ws, "py", &tg), STORE_OK);
    assert_string_equal(tg.body, "{\"image\":\"python:3.12\"}");
    uint64_t seq_after;
    assert_int_equal(store_change_seq(f->st, &seq_after), STORE_OK);
    assert_int_equal(seq_after, seq_before);

    store_template_free(&tg);
    free(aad);
    store_box_free(&b);
    secret_free(value);
    free(got_ws);
    free(box_id);
    secret_free(key);
    free(ws);
}

/* Workspace B can neither see nor change anything of A's, by name or by id. */
static void test_workspace_isolation(void **state)
{
    struct fixture *f = *state;
    char *a = make_ws(f->st, "team-a", NULL), *b = make_ws(f->st, "team-b", NULL);
    assert_int_equal(store_secret_put(f->st, a, "OPENAI_API_KEY", CANARY, NULL, NULL), STORE_OK);
    char *box_id = make_box(f->st, a, "demo", OPAQUE_CANARY);
    struct store_template t = {.name = "py", .body = "{}"};
    assert_int_equal(store_template_create(f->st, a, &t, NULL), STORE_OK);

    char *sealed = NULL, *value = NULL;
    struct store_box box = {0};
    struct store_template tg = {0};
    assert_int_equal(store_secret_get_sealed(f->st, b, "OPENAI_API_KEY", &sealed, NULL),
                     STORE_NOT_FOUND);
    assert_int_equal(store_secret_reveal(f->st, b, "OPENAI_API_KEY", &value), STORE_NOT_FOUND);
    assert_int_equal(store_secret_put(f->st, b, "OPENAI_API_KEY", NULL, "[]", NULL),
                     STORE_NOT_FOUND);
    assert_int_equal(store_box_get(f->st, b, "demo", &box), STORE_NOT_FOUND);
    assert_int_equal(store_box_get_by_id(f->st, b, box_id, &box), STORE_NOT_FOUND);
    assert_int_equal(store_template_get(f->st, b, "py", &tg), STORE_NOT_FOUND);
    struct store_box upd = {.id = box_id, .name = "stolen"};
    assert_int_equal(store_box_update(f->st, b, &upd), STORE_NOT_FOUND);
    assert_int_equal(store_secret_delete(f->st, b, "OPENAI_API_KEY"), STORE_NOT_FOUND);
    assert_int_equal(store_box_delete(f->st, b, "demo"), STORE_NOT_FOUND);
    assert_int_equal(store_template_delete(f->st, b, "py"), STORE_NOT_FOUND);

    struct store_secret_list sl = {0};
    struct store_box_list bl = {0};
    struct store_template_list tl = {0};
    assert_int_equal(store_secret_list(f->st, b, &sl), STORE_OK);
    assert_int_equal(sl.n, 0);
    assert_int_equal(store_box_list(f->st, b, &bl), STORE_OK);
    assert_int_equal(bl.n, 0);
    assert_int_equal(store_template_list(f->st, b, &tl), STORE_OK);
    assert_int_equal(tl.n, 0);

    /* B may use the same names for its own things; A's are untouched. */
    assert_int_equal(store_secret_put(f->st, b, "OPENAI_API_KEY", "b-value", NULL, NULL), STORE_OK);
    char *b_box = make_box(f->st, b, "demo", "b-opaque");
    assert_int_equal(store_secret_reveal(f->st, a, "OPENAI_API_KEY", &value), STORE_OK);
    assert_string_equal(value, CANARY);
    secret_free(value);
    assert_int_equal(store_box_get(f->st, a, "demo", &box), STORE_OK);
    assert_string_equal(box.id, box_id);
    store_box_free(&box);

    /* A sealed value copied from A's row into B's row does not unseal there. */
    assert_int_equal(store_secret_get_sealed(f->st, a, "OPENAI_API_KEY", &sealed, NULL), STORE_OK);
    char *aad_b = store_aad_secret(b, "OPENAI_API_KEY");
    assert_int_equal(store_unseal_value(f->st, aad_b, sealed, &value), STORE_INVALID);
    free(aad_b);
    free(sealed);

    free(b_box);
    free(box_id);
    free(a);
    free(b);
}

static void test_unique_names_exist_error(void **state)
{
    struct fixture *f = *state;
    char *key = NULL, *ws = make_ws(f->st, "w", NULL);
    assert_int_equal(store_workspace_create(f->st, "w", NULL, &key), STORE_EXISTS);
    assert_null(key);
    char *b1 = make_box(f->st, ws, "one", "x");
    char *b2 = make_box(f->st, ws, "two", "y");
    struct store_box dup = {.name = "one"};
    assert_int_equal(store_box_create(f->st, ws, &dup, NULL, NULL), STORE_EXISTS);
    /* Renaming "two" to "one" is refused; renaming to a free name works. */
    struct store_box b = {0};
    assert_int_equal(store_box_get(f->st, ws, "two", &b), STORE_OK);
    free(b.name);
    b.name = xstrdup("one");
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_EXISTS);
    free(b.name);
    b.name = xstrdup("three");
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_OK);
    store_box_free(&b);
    assert_int_equal(store_box_get(f->st, ws, "three", &b), STORE_OK);
    assert_int_equal(b.revision, 2);
    store_box_free(&b);

    struct store_template t = {.name = "tpl", .body = "{}"};
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_OK);
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_EXISTS);
    /* Secrets are put, not created: a second put is an update, reported as such. */
    bool created = false;
    assert_int_equal(store_secret_put(f->st, ws, "K", "v1", NULL, &created), STORE_OK);
    assert_true(created);
    assert_int_equal(store_secret_put(f->st, ws, "K", "v2", NULL, &created), STORE_OK);
    assert_false(created);
    free(b1);
    free(b2);
    free(ws);
}

/* PUT semantics: update, "omit value keeps current", list without values, delete. */
static void test_secret_put_list_delete(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *value = NULL;
    bool created;
    assert_int_equal(store_secret_put(f->st, ws, "NEW", NULL, "[]", &created), STORE_NOT_FOUND);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", "v1", NULL, NULL), STORE_OK);
    assert_int_equal(
        store_secret_put(f->st, ws, "GITHUB_TOKEN", "g1", "[{\"host\":\"github.com\"}]", NULL),
        STORE_OK);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", NULL,
                                      "[{\"host\":\"api.openai.com\"}]", &created),
                     STORE_OK);
    assert_false(created);
    assert_int_equal(store_secret_reveal(f->st, ws, "OPENAI_API_KEY", &value), STORE_OK);
    assert_string_equal(value, "v1");
    secret_free(value);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", "v2", NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_reveal(f->st, ws, "OPENAI_API_KEY", &value), STORE_OK);
    assert_string_equal(value, "v2");
    secret_free(value);
    /* hosts must be a JSON array when given. */
    assert_int_equal(store_secret_put(f->st, ws, "X", "v", "{\"host\":1}", NULL), STORE_INVALID);
    assert_int_equal(store_secret_put(f->st, ws, "", "v", NULL, NULL), STORE_INVALID);

    struct store_secret_list l = {0};
    assert_int_equal(store_secret_list(f->st, ws, &l), STORE_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.items[0].name, "GITHUB_TOKEN"); /* sorted */
    assert_string_equal(l.items[0].hosts_json, "[{\"host\":\"github.com\"}]");
    assert_string_equal(l.items[1].name, "OPENAI_API_KEY");
    assert_null(l.items[1].hosts_json); /* the last put omitted configs */
    assert_string_equal(l.items[1].key_id, seal_keyring_current_id(f->kr));
    assert_true(l.items[1].updated_at >= l.items[1].created_at);
    store_secret_list_free(&l);

    assert_int_equal(store_secret_delete(f->st, ws, "OPENAI_API_KEY"), STORE_OK);
    assert_int_equal(store_secret_delete(f->st, ws, "OPENAI_API_KEY"), STORE_NOT_FOUND);
    assert_int_equal(store_secret_reveal(f->st, ws, "OPENAI_API_KEY", &value), STORE_NOT_FOUND);
    free(ws);
}

static void test_api_key_auth(void **state)
{
    struct fixture *f = *state;
    char *ka = NULL, *kb = NULL, *k2 = NULL, *got = NULL;
    char *a = make_ws(f->st, "a", &ka), *b = make_ws(f->st, "b", &kb);
    assert_true(strncmp(ka, STORE_API_KEY_PREFIX, strlen(STORE_API_KEY_PREFIX)) == 0);
    assert_int_equal(store_api_key_authenticate(f->st, ka, &got), STORE_OK);
    assert_string_equal(got, a);
    free(got);
    assert_int_equal(store_api_key_authenticate(f->st, kb, &got), STORE_OK);
    assert_string_equal(got, b);
    free(got);
    got = NULL;

    char *wrong = xstrdup(ka);
    wrong[10] = wrong[10] == 'A' ? 'B' : 'A';
    assert_int_equal(store_api_key_authenticate(f->st, wrong, &got), STORE_NOT_FOUND);
    wrong[strlen(wrong) - 1] = '\0';
    assert_int_equal(store_api_key_authenticate(f->st, wrong, &got), STORE_NOT_FOUND);
    assert_int_equal(store_api_key_authenticate(f->st, "", &got), STORE_NOT_FOUND);
    assert_int_equal(store_api_key_authenticate(f->st, NULL, &got), STORE_NOT_FOUND);
    assert_null(got);
    free(wrong);

    assert_int_equal(store_api_key_create(f->st, a, &k2), STORE_OK);
    assert_string_not_equal(k2, ka);
    assert_int_equal(store_api_key_authenticate(f->st, k2, &got), STORE_OK);
    assert_string_equal(got, a);
    free(got);
    assert_int_equal(store_api_key_create(f->st, "no-such-workspace", &got), STORE_NOT_FOUND);

    /* Only the digest is stored: the key text is nowhere in the database. */
    char *db = xasprintf("%s/%s", f->dir, STORE_DB_FILE);
    assert_int_equal(sql_int(db, "SELECT count(*) FROM api_keys"), 3);
    char *q = xasprintf("SELECT count(*) FROM api_keys WHERE CAST(key_hash AS TEXT) = '%s' OR "
                        "prefix = '%s'",
                        ka, ka);
    assert_int_equal(sql_int(db, q), 0);
    free(q);
    free(db);
    secret_free(ka);
    secret_free(kb);
    secret_free(k2);
    free(a);
    free(b);
}

static void test_box_token_and_update(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *token = NULL, *id = NULL, *got_ws = NULL;
    struct store_box in = {.name = "demo", .status = "running", .cpu_millicores = 500};
    assert_int_equal(store_box_create(f->st, ws, &in, &id, &token), STORE_OK);
    assert_int_equal(strlen(id), STORE_ID_LEN);
    assert_true(strncmp(token, STORE_PROXY_TOKEN_PREFIX, 4) == 0);
    struct store_box b = {0};
    assert_int_equal(store_box_authenticate_token(f->st, token, &got_ws, &b), STORE_OK);
    assert_string_equal(got_ws, ws);
    assert_string_equal(b.name, "demo");
    assert_string_equal(b.proxy_config, "{}");
    free(got_ws);
    token[8] = token[8] == 'x' ? 'y' : 'x';
    struct store_box none = {0};
    assert_int_equal(store_box_authenticate_token(f->st, token, &got_ws, &none), STORE_NOT_FOUND);

    /* Optimistic update: a writer holding an old revision gets CONFLICT, nothing is lost. */
    struct store_box stale = b;
    stale.status = "stale-writer";
    free(b.status);
    b.status = xstrdup("stopped");
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_OK);
    assert_int_equal(store_box_update(f->st, ws, &stale), STORE_CONFLICT);
    store_box_free(&b);
    assert_int_equal(store_box_get(f->st, ws, "demo", &b), STORE_OK);
    assert_string_equal(b.status, "stopped");
    assert_int_equal(b.revision, 2);
    assert_int_equal(b.cpu_millicores, 500);
    /* Malformed documents are refused before reaching the database. */
    char *saved = b.proxy_config;
    b.proxy_config = "{not json";
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_INVALID);
    b.proxy_config = "[1,2]";
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_INVALID);
    b.proxy_config = saved;

    struct store_box_list l = {0};
    assert_int_equal(store_box_list(f->st, ws, &l), STORE_OK);
    assert_int_equal(l.n, 1);
    store_box_list_free(&l);
    assert_int_equal(store_box_delete(f->st, ws, "demo"), STORE_OK);
    assert_int_equal(store_box_get(f->st, ws, "demo", &none), STORE_NOT_FOUND);
    assert_int_equal(store_box_update(f->st, ws, &b), STORE_NOT_FOUND);
    store_box_free(&b);
    secret_free(token);
    free(id);
    free(ws);
}

/* A document holding a sealed value that is not bound to its row (copied from another box, or
 * user text that merely looks sealed) is refused, so reseal_all can never be blocked by it. */
static void test_foreign_sealed_value_refused(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL);
    char other[STORE_ID_LEN + 1], mine[STORE_ID_LEN + 1];
    store_new_id(other);
    store_new_id(mine);
    char *cfg = config_with_opaque(f->st, ws, other, "v");
    struct store_box b = {.id = mine, .name = "b", .proxy_config = cfg};
    assert_int_equal(store_box_create(f->st, ws, &b, NULL, NULL), STORE_INVALID);
    b.proxy_config = "{\"x\":\"" SEAL_TEXT_PREFIX "AAAA\"}";
    assert_int_equal(store_box_create(f->st, ws, &b, NULL, NULL), STORE_INVALID);
    struct store_template t = {.name = "t", .body = cfg};
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_INVALID);
    free(cfg);

    /* Copying a template's sealed values into a box goes through store_json_reseal. */
    char tid[STORE_ID_LEN + 1];
    store_new_id(tid);
    char *taad = store_aad_template(ws, tid), *sealed = NULL;
    assert_int_equal(store_seal_value(f->st, taad, OPAQUE_CANARY, &sealed), STORE_OK);
    json_t *body = json_pack("{s:{s:s}}", "proxy_config", "x", sealed);
    char *text = json_dumps(body, JSON_COMPACT);
    t = (struct store_template){.id = tid, .name = "t", .body = text};
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_OK);
    json_t *pc = json_deep_copy(json_object_get(body, "proxy_config"));
    char *baad = store_aad_box(ws, mine);
    size_t n = 0;
    assert_int_equal(store_json_reseal(f->st, pc, taad, baad, &n), STORE_OK);
    assert_int_equal(n, 1);
    char *pc_text = json_dumps(pc, JSON_COMPACT);
    b = (struct store_box){.id = mine, .name = "b", .proxy_config = pc_text};
    assert_int_equal(store_box_create(f->st, ws, &b, NULL, NULL), STORE_OK);
    free(pc_text);
    free(baad);
    json_decref(pc);
    free(text);
    json_decref(body);
    free(sealed);
    free(taad);
    free(ws);
}

/* Rotation end to end: everything sealed under k1 is re-sealed under k2 in one pass, stays
 * readable, and k1 can then be retired without losing anything. */
static void test_reseal_all_under_new_key(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *value = NULL, **ids = NULL;
    size_t n_ids = 0, n = 0;
    char k1[SEAL_KEY_ID_HEX_LEN + 1], *err = NULL;
    strcpy(k1, seal_keyring_current_id(f->kr));
    assert_int_equal(store_secret_put(f->st, ws, "A", CANARY, NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_put(f->st, ws, "B", "b-value", NULL, NULL), STORE_OK);
    char *box_id = make_box(f->st, ws, "demo", OPAQUE_CANARY);
    char tid[STORE_ID_LEN + 1];
    store_new_id(tid);
    char *taad = store_aad_template(ws, tid), *tsealed = NULL;
    assert_int_equal(store_seal_value(f->st, taad, "tpl-opaque", &tsealed), STORE_OK);
    char *tbody = xasprintf("{\"proxy_config\":{\"rules\":[{\"v\":\"%s\"}]},\"n\":1}", tsealed);
    struct store_template t = {.id = tid, .name = "t", .body = tbody};
    assert_int_equal(store_template_create(f->st, ws, &t, NULL), STORE_OK);
    struct store_box before = {0};
    assert_int_equal(store_box_get(f->st, ws, "demo", &before), STORE_OK);

    assert_int_equal(store_sealed_key_ids(f->st, &ids, &n_ids), STORE_OK);
    assert_int_equal(n_ids, 1);
    assert_string_equal(ids[0], k1);
    store_key_ids_free(ids, n_ids);

    uint64_t seq0, seq1;
    assert_int_equal(store_change_seq(f->st, &seq0), STORE_OK);
    assert_int_equal(seal_keyring_rotate(f->kr, &err), 0);
    assert_int_equal(store_reseal_all(f->st, &n), STORE_OK);
    assert_int_equal(n, 4); /* two secrets, one box value, one template value */
    assert_int_equal(store_change_seq(f->st, &seq1), STORE_OK);
    assert_true(seq1 > seq0);
    /* A second pass has nothing left to do and changes nothing. */
    assert_int_equal(store_reseal_all(f->st, &n), STORE_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_change_seq(f->st, &seq0), STORE_OK);
    assert_int_equal(seq0, seq1);

    assert_int_equal(store_sealed_key_ids(f->st, &ids, &n_ids), STORE_OK);
    assert_int_equal(n_ids, 1);
    assert_string_equal(ids[0], seal_keyring_current_id(f->kr));
    store_key_ids_free(ids, n_ids);
    struct store_secret meta = {0};
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    assert_string_equal(meta.key_id, seal_keyring_current_id(f->kr));
    store_secret_free(&meta);

    /* The box's revision moved, so a PATCH that read before the pass cannot write back old
     * ciphertexts; the template keeps its other fields. */
    struct store_box after = {0};
    assert_int_equal(store_box_get(f->st, ws, "demo", &after), STORE_OK);
    assert_int_equal(after.revision, before.revision + 1);
    assert_string_not_equal(after.proxy_config, before.proxy_config);
    assert_int_equal(store_box_update(f->st, ws, &before), STORE_CONFLICT);

    /* Retire k1: everything still reads. */
    assert_int_equal(seal_keyring_retire(f->kr, &err), 0);
    assert_false(seal_keyring_has(f->kr, k1));
    assert_int_equal(store_secret_reveal(f->st, ws, "A", &value), STORE_OK);
    assert_string_equal(value, CANARY);
    secret_free(value);
    json_t *cfg = json_loads(after.proxy_config, 0, NULL);
    char *baad = store_aad_box(ws, box_id);
    assert_int_equal(store_json_unseal(f->st, cfg, baad), STORE_OK);
    json_decref(cfg);
    struct store_template tg = {0};
    assert_int_equal(store_template_get(f->st, ws, "t", &tg), STORE_OK);
    json_t *body = json_loads(tg.body, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(body, "n")), 1);
    assert_int_equal(store_json_unseal(f->st, body, taad), STORE_OK);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(json_object_get(body, "proxy_config"), "rules"), 0),
            "v")),
        "tpl-opaque");
    json_decref(body);
    store_template_free(&tg);
    free(baad);
    store_box_free(&after);
    store_box_free(&before);
    free(tbody);
    free(tsealed);
    free(taad);
    free(box_id);
    free(ws);
}

/* A value that cannot be unsealed (its key is gone) aborts the whole pass: nothing re-sealed. */
static void test_reseal_all_is_all_or_nothing(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *err = NULL, *db = NULL;
    size_t n = 99;
    assert_int_equal(store_secret_put(f->st, ws, "A", "a", NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_put(f->st, ws, "B", "b", NULL, NULL), STORE_OK);
    /* Corrupt B's row as an attacker with file access might: A's ciphertext under B's name. */
    db = xasprintf("%s/%s", f->dir, STORE_DB_FILE);
    sql_exec(db, "UPDATE secrets SET sealed = (SELECT sealed FROM secrets WHERE name = 'A') "
                 "WHERE name = 'B'");
    char *value = NULL;
    assert_int_equal(store_secret_reveal(f->st, ws, "B", &value), STORE_ERR);
    assert_null(value);
    assert_int_equal(seal_keyring_rotate(f->kr, &err), 0);
    assert_int_equal(store_reseal_all(f->st, &n), STORE_INVALID);
    assert_int_equal(n, 0);
    struct store_secret meta = {0};
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    assert_string_equal(meta.key_id, seal_keyring_id_at(f->kr, 1)); /* still the old key */
    store_secret_free(&meta);
    free(db);
    free(ws);
}

/* Reads a whole file into a heap buffer (empty if it does not exist). */
static uint8_t *slurp(const char *path, size_t *len)
{
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return xmalloc(1);
    uint8_t *buf = NULL;
    size_t cap = 0, n;
    do {
        buf = xrealloc(buf, cap + 65536);
        n = fread(buf + cap, 1, 65536, fp);
        cap += n;
    } while (n == 65536);
    fclose(fp);
    *len = cap;
    return buf;
}

static void assert_file_lacks(const char *path, const char *needle)
{
    size_t len;
    uint8_t *buf = slurp(path, &len);
    if (memmem(buf, len, needle, strlen(needle)) != NULL)
        fail_msg("%s contains plaintext %s", path, needle);
    free(buf);
}

static void test_db_files_hold_no_plaintext(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", CANARY, NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_put(f->st, ws, "OPENAI_API_KEY", CANARY "-v2", NULL, NULL),
                     STORE_OK);
    char *box_id = make_box(f->st, ws, "demo", OPAQUE_CANARY);
    char *db = xasprintf("%s/%s", f->dir, STORE_DB_FILE);
    char *wal = xasprintf("%s-wal", db);
    struct stat st;
    assert_int_equal(stat(wal, &st), 0); /* the writes are in the WAL now */
    assert_true(st.st_size > 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    const char *needles[] = {CANARY, "sk-CANARY", OPAQUE_CANARY};
    for (size_t i = 0; i < ARRAY_LEN(needles); i++) {
        assert_file_lacks(db, needles[i]);
        assert_file_lacks(wal, needles[i]);
    }
    /* And after a checkpoint folds the WAL into the main file. */
    store_close(f->st);
    f->st = open_store(f);
    for (size_t i = 0; i < ARRAY_LEN(needles); i++) {
        assert_file_lacks(db, needles[i]);
        assert_file_lacks(wal, needles[i]);
    }
    /* The names are stored (they are listed), which proves the search would find text. */
    size_t len;
    uint8_t *buf = slurp(db, &len);
    assert_non_null(memmem(buf, len, "OPENAI_API_KEY", 14));
    free(buf);
    free(wal);
    free(db);
    free(box_id);
    free(ws);
}

/* Every write acknowledged before a kill -9 is there after reopening. */
static void test_acknowledged_writes_survive_kill(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        close(fds[0]);
        char *err = NULL;
        struct store *st = store_open(f->dir, f->kr, &err);
        if (st == NULL)
            _exit(4);
        for (int i = 0;; i++) {
            char name[32];
            snprintf(name, sizeof(name), "S%06d", i);
            if (store_secret_put(st, ws, name, "v", NULL, NULL) != STORE_OK)
                _exit(2);
            if (write(fds[1], &i, sizeof(i)) != (ssize_t)sizeof(i)) /* acknowledged */
                _exit(3);
        }
    }
    close(fds[1]);
    int last = -1, got;
    while (last < 40 && read(fds[0], &got, sizeof(got)) == (ssize_t)sizeof(got))
        last = got;
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* Drain acknowledgements written before the kill landed. */
    while (read(fds[0], &got, sizeof(got)) == (ssize_t)sizeof(got))
        last = got;
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    close(fds[0]);
    assert_true(last >= 40);

    store_close(f->st);
    f->st = open_store(f);
    struct store_secret_list l = {0};
    assert_int_equal(store_secret_list(f->st, ws, &l), STORE_OK);
    assert_true(l.n >= (size_t)last + 1);
    for (int i = 0; i <= last; i++) {
        char name[32];
        snprintf(name, sizeof(name), "S%06d", i);
        assert_string_equal(l.items[i].name, name);
    }
    store_secret_list_free(&l);
    free(ws);
}

static void test_workspace_lookup_and_list(void **state)
{
    struct fixture *f = *state;
    char *a = make_ws(f->st, "zeta", NULL), *b = make_ws(f->st, "alpha", NULL);
    struct store_workspace w = {0};
    assert_int_equal(store_workspace_find(f->st, "zeta", &w), STORE_OK);
    assert_string_equal(w.id, a);
    store_workspace_free(&w);
    assert_int_equal(store_workspace_get(f->st, b, &w), STORE_OK);
    assert_string_equal(w.name, "alpha");
    store_workspace_free(&w);
    assert_int_equal(store_workspace_find(f->st, "nope", &w), STORE_NOT_FOUND);
    struct store_workspace_list l = {0};
    assert_int_equal(store_workspace_list(f->st, &l), STORE_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.items[0].name, "alpha");
    store_workspace_list_free(&l);
    free(a);
    free(b);
}

/* A secret's version moves with its value (each put seals afresh), its binding and a re-seal,
 * and with nothing else: the daemon reuses compiled policies while the versions they used hold. */
static void test_secret_versions(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *err = NULL;
    uint8_t v[6][STORE_HASH_LEN];
    struct store_secret meta = {0};
    struct store_secret_list l = {0};
    assert_int_equal(store_secret_put(f->st, ws, "A", "a1", NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_put(f->st, ws, "B", "b1", NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_list(f->st, ws, &l), STORE_OK);
    memcpy(v[0], l.items[0].version, STORE_HASH_LEN); /* A */
    memcpy(v[1], l.items[1].version, STORE_HASH_LEN); /* B */
    store_secret_list_free(&l);
    assert_memory_not_equal(v[0], v[1], STORE_HASH_LEN);
    /* get_sealed and list agree; reading changes nothing. */
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    assert_memory_equal(meta.version, v[0], STORE_HASH_LEN);
    store_secret_free(&meta);

    /* The same value put again is a new version (a fresh seal); B is untouched. */
    assert_int_equal(store_secret_put(f->st, ws, "A", "a1", NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_list(f->st, ws, &l), STORE_OK);
    memcpy(v[2], l.items[0].version, STORE_HASH_LEN);
    assert_memory_equal(l.items[1].version, v[1], STORE_HASH_LEN);
    store_secret_list_free(&l);
    assert_memory_not_equal(v[2], v[0], STORE_HASH_LEN);

    /* A new binding without a value moves it; the same binding again does not. */
    assert_int_equal(store_secret_put(f->st, ws, "A", NULL, "[{\"host\":\"x.test\"}]", NULL),
                     STORE_OK);
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    memcpy(v[3], meta.version, STORE_HASH_LEN);
    store_secret_free(&meta);
    assert_memory_not_equal(v[3], v[2], STORE_HASH_LEN);
    assert_int_equal(store_secret_put(f->st, ws, "A", NULL, "[{\"host\":\"x.test\"}]", NULL),
                     STORE_OK);
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    assert_memory_equal(meta.version, v[3], STORE_HASH_LEN);
    store_secret_free(&meta);
    /* Binding omitted again: differs from every explicit binding. */
    assert_int_equal(store_secret_put(f->st, ws, "A", NULL, NULL, NULL), STORE_OK);
    assert_int_equal(store_secret_get_sealed(f->st, ws, "A", NULL, &meta), STORE_OK);
    memcpy(v[4], meta.version, STORE_HASH_LEN);
    store_secret_free(&meta);
    assert_memory_not_equal(v[4], v[3], STORE_HASH_LEN);

    /* A re-seal under a new key moves every version. */
    assert_int_equal(seal_keyring_rotate(f->kr, &err), 0);
    assert_int_equal(store_reseal_all(f->st, NULL), STORE_OK);
    assert_int_equal(store_secret_list(f->st, ws, &l), STORE_OK);
    assert_memory_not_equal(l.items[0].version, v[4], STORE_HASH_LEN);
    assert_memory_not_equal(l.items[1].version, v[1], STORE_HASH_LEN);
    store_secret_list_free(&l);
    free(ws);
}

/* Box heads: every box of the workspace (no other's), by id, with id, name, revision and token
 * hash and no documents; the revision moves with every update. */
static void test_box_heads(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *other = make_ws(f->st, "o", NULL);
    char *a = make_box(f->st, ws, "a", "x"), *b = make_box(f->st, ws, "b", "y");
    char *o = make_box(f->st, other, "a", "z");
    struct store_box_list h = {0};
    struct store_box full = {0};
    assert_int_equal(store_box_list_heads(f->st, ws, &h), STORE_OK);
    assert_int_equal(h.n, 2);
    assert_true(strcmp(h.items[0].id, h.items[1].id) < 0);
    for (size_t i = 0; i < h.n; i++) {
        assert_int_equal(store_box_get_by_id(f->st, ws, h.items[i].id, &full), STORE_OK);
        assert_string_equal(h.items[i].name, full.name);
        assert_int_equal(h.items[i].revision, 1);
        assert_memory_equal(h.items[i].proxy_token_hash, full.proxy_token_hash, STORE_HASH_LEN);
        assert_null(h.items[i].proxy_config);
        assert_null(h.items[i].status);
        assert_true(strcmp(h.items[i].id, o) != 0);
        if (strcmp(full.name, "b") == 0) {
            free(full.status);
            full.status = xstrdup("stopped");
            assert_int_equal(store_box_update(f->st, ws, &full), STORE_OK);
        }
        store_box_free(&full);
    }
    store_box_list_free(&h);
    assert_int_equal(store_box_delete(f->st, ws, "a"), STORE_OK);
    assert_int_equal(store_box_list_heads(f->st, ws, &h), STORE_OK);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.items[0].id, b);
    assert_int_equal(h.items[0].revision, 2);
    store_box_list_free(&h);
    free(a);
    free(b);
    free(o);
    free(other);
    free(ws);
}

/* Statements are cached, but none keeps a read transaction open once its call returned: another
 * connection can truncate the WAL, and the store sees another process's writes at once. */
static void test_cached_statements_hold_no_transaction(void **state)
{
    struct fixture *f = *state;
    char *ws = make_ws(f->st, "w", NULL), *id = make_box(f->st, ws, "a", "x");
    char *db = xasprintf("%s/" STORE_DB_FILE, f->dir);
    for (int round = 0; round < 3; round++) {
        struct store_box_list l = {0};
        struct store_secret_list sl = {0};
        struct store_box b = {0};
        uint64_t seq = 0;
        assert_int_equal(store_secret_put(f->st, ws, "S", "v", NULL, NULL), STORE_OK);
        assert_int_equal(store_box_list(f->st, ws, &l), STORE_OK);
        store_box_list_free(&l);
        assert_int_equal(store_box_list_heads(f->st, ws, &l), STORE_OK);
        store_box_list_free(&l);
        assert_int_equal(store_secret_list(f->st, ws, &sl), STORE_OK);
        store_secret_list_free(&sl);
        assert_int_equal(store_box_get_by_id(f->st, ws, id, &b), STORE_OK);
        store_box_free(&b);
        /* Another connection: a TRUNCATE checkpoint needs every reader gone (busy = 0). */
        assert_int_equal(sql_int(db, "PRAGMA wal_checkpoint(TRUNCATE)"), 0);
        assert_int_equal(store_change_seq(f->st, &seq), STORE_OK);
        sql_exec(db, "UPDATE change_seq SET seq = seq + 1000 WHERE id = 1");
        uint64_t seq2 = 0;
        assert_int_equal(store_change_seq(f->st, &seq2), STORE_OK);
        assert_int_equal(seq2, seq + 1000);
    }
    free(db);
    free(id);
    free(ws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrations_from_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_workspace_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unique_names_exist_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_put_list_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_key_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_box_token_and_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_sealed_value_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reseal_all_under_new_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reseal_all_is_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_files_hold_no_plaintext, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acknowledged_writes_survive_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_workspace_lookup_and_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secret_versions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_box_heads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cached_statements_hold_no_transaction, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
