/* signkeys: the callback-signing keyring (Ed25519) and its JWKS. Layout, rotation, threads:
 * signkeys.h. */
#include "signkeys.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "jws.h"
#include "util.h"

#define KID_LEN JWS_B64URL_32_LEN
/* A PEM Ed25519 key is ~120 bytes; anything much larger is not one. */
#define KEY_FILE_MAX (16 * 1024)
#define MANIFEST_MAX (1024 * 1024)
/* How long after its retirement a key stays published (and on disk). */
#define PUBLISH_WINDOW (SIGNKEYS_TOKEN_LIFETIME + SIGNKEYS_CLOCK_SKEW)

struct sk_paths {
    char *dir;      /* <state_dir>/callback-signing */
    char *manifest; /* <dir>/keys.json */
    char *lock;     /* <dir>/keys.lock */
};

struct manifest_retired {
    char kid[KID_LEN + 1];
    long long retired_at;
};

struct manifest {
    long long generation;
    char current[KID_LEN + 1];
    struct manifest_retired *retired; /* newest first */
    size_t n_retired;
};

struct sk_key {
    char kid[KID_LEN + 1];
    char x[KID_LEN + 1];
    EVP_PKEY *pkey;
    bool retired;
    long long retired_at;
};

/* An immutable key set: keys[0] is current. Shared by reference between the keyring and any
 * signature in progress. */
struct sk_set {
    atomic_uint refs;
    struct sk_key *keys;
    size_t n;
};

/* What identifies one version of the manifest file: it is always replaced by rename(), so a new
 * version has a new inode and new times. */
struct file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
};

struct signkeys {
    pthread_mutex_t mu;        /* guards set and id (pointer copies only) */
    pthread_mutex_t reload_mu; /* serialises reloads */
    struct sk_set *set;        /* current key set, one reference owned here */
    struct file_id id;         /* the manifest version set was loaded from */
    struct sk_paths p;         /* immutable after open */
};

/* ---- paths, directory, small helpers ------------------------------------------------------ */

static void paths_init(struct sk_paths *p, const char *state_dir)
{
    p->dir = xasprintf("%s/%s", state_dir, SIGNKEYS_DIR);
    p->manifest = xasprintf("%s/%s", p->dir, SIGNKEYS_MANIFEST_FILE);
    p->lock = xasprintf("%s/%s", p->dir, SIGNKEYS_LOCK_FILE);
}

static void paths_free(struct sk_paths *p)
{
    free(p->dir);
    free(p->manifest);
    free(p->lock);
}

static char *key_path(const struct sk_paths *p, const char *kid)
{
    return xasprintf("%s/key-%s.pem", p->dir, kid);
}

/* A kid as this module writes them: 43 base64url characters. Checked before a kid from the
 * manifest becomes part of a file name. */
static bool kid_valid(const char *s)
{
    if (s == NULL || strlen(s) != KID_LEN)
        return false;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_'))
            return false;
    return true;
}

/* Creates the key directory (and state_dir) if missing and refuses one that is not a directory
 * of ours closed to group and others. 0 or -1 with *err. */
static int prepare_dir(const struct sk_paths *p, char **err)
{
    struct stat st;
    if (mkdir_p(p->dir, err) != 0)
        return -1;
    if (stat(p->dir, &st) == -1) {
        *err = xasprintf("cannot stat %s: %s", p->dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        *err = xasprintf("%s is not a directory owned by this user", p->dir);
        return -1;
    }
    if ((st.st_mode & 077) != 0) {
        *err = xasprintf("%s has mode %04o: the callback-signing keys must not be accessible to "
                         "group or others (chmod 700 %s)",
                         p->dir, (unsigned)(st.st_mode & 07777), p->dir);
        return -1;
    }
    return 0;
}

static int file_id_of(const char *path, struct file_id *id)
{
    struct stat st;
    if (stat(path, &st) == -1)
        return -1;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtim = st.st_mtim;
    id->ctim = st.st_ctim;
    return 0;
}

static bool file_id_eq(const struct file_id *a, const struct file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* ---- the manifest ------------------------------------------------------------------------- */

static void manifest_free(struct manifest *m)
{
    free(m->retired);
    memset(m, 0, sizeof(*m));
}

static bool manifest_names(const struct manifest *m, const char *kid)
{
    if (strcmp(m->current, kid) == 0)
        return true;
    for (size_t i = 0; i < m->n_retired; i++)
        if (strcmp(m->retired[i].kid, kid) == 0)
            return true;
    return false;
}

/* Parses the manifest text. 0, or -1 with *err naming path and what is wrong. */
static int manifest_parse(const char *text, size_t len, const char *path, struct manifest *m,
                          char **err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *gen = json_object_get(root, "generation"), *retired = json_object_get(root, "retired");
    const char *cur = json_string_value(json_object_get(root, "current"));
    int rc = -1;
    memset(m, 0, sizeof(*m));
    if (root == NULL) {
        *err = xasprintf("%s is not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
        goto out;
    }
    if (!json_is_integer(gen) || json_integer_value(gen) < 1 || !kid_valid(cur) ||
        !json_is_array(retired)) {
        *err = xasprintf("%s: expected {\"generation\": n >= 1, \"current\": \"<kid>\", "
                         "\"retired\": [...]}",
                         path);
        goto out;
    }
    m->generation = json_integer_value(gen);
    memcpy(m->current, cur, KID_LEN + 1);
    m->retired = xcalloc(json_array_size(retired) + 1, sizeof(*m->retired));
    size_t i;
    json_t *r;
    json_array_foreach(retired, i, r)
    {
        const char *kid = json_string_value(json_object_get(r, "kid"));
        json_t *at = json_object_get(r, "retired_at");
        if (!kid_valid(kid) || !json_is_integer(at) || manifest_names(m, kid)) {
            *err = xasprintf("%s: retired[%zu] is not {\"kid\": \"<kid>\", \"retired_at\": "
                             "<unix time>} with a kid not listed before",
                             path, i);
            goto out;
        }
        memcpy(m->retired[m->n_retired].kid, kid, KID_LEN + 1);
        m->retired[m->n_retired++].retired_at = json_integer_value(at);
    }
    rc = 0;
out:
    if (rc != 0)
        manifest_free(m);
    json_decref(root);
    return rc;
}

/* Reads the manifest. 0; 1 when it does not exist (nothing set); -1 with *err. */
static int manifest_read(const struct sk_paths *p, struct manifest *m, char **err)
{
    size_t len = 0;
    char *text = read_file(p->manifest, MANIFEST_MAX, &len);
    if (text == NULL && errno == ENOENT)
        return 1;
    if (text == NULL) {
        *err = xasprintf("cannot read %s: %s", p->manifest, strerror(errno));
        return -1;
    }
    int rc = manifest_parse(text, len, p->manifest, m, err);
    free(text);
    return rc;
}

static int manifest_write(const struct sk_paths *p, const struct manifest *m, char **err)
{
    json_t *retired = json_array();
    for (size_t i = 0; i < m->n_retired; i++)
        json_array_append_new(retired,
                              json_pack("{s:s, s:I}", "kid", m->retired[i].kid, "retired_at",
                                        (json_int_t)m->retired[i].retired_at));
    json_t *root = json_pack("{s:I, s:s, s:o}", "generation", (json_int_t)m->generation, "current",
                             m->current, "retired", retired);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    int rc = -1;
    if (text == NULL) {
        *err = xasprintf("cannot serialise %s", p->manifest);
        goto out;
    }
    char *with_nl = xasprintf("%s\n", text);
    rc = write_file_atomic(p->manifest, with_nl, strlen(with_nl), true, err);
    free(with_nl);
out:
    free(text);
    json_decref(root);
    return rc;
}

/* Drops retired keys whose publication window has passed at now. Whether anything changed. */
static bool manifest_prune(struct manifest *m, time_t now)
{
    size_t kept = 0;
    for (size_t i = 0; i < m->n_retired; i++)
        if ((long long)now < m->retired[i].retired_at + PUBLISH_WINDOW)
            m->retired[kept++] = m->retired[i];
    bool changed = kept != m->n_retired;
    m->n_retired = kept;
    return changed;
}

/* ---- key files ---------------------------------------------------------------------------- */

/* Loads key-<kid>.pem after checking that it is a private regular file of ours, that it holds an
 * Ed25519 key, and that the key's thumbprint is kid. The PEM text is zeroed once parsed.
 * 0 with *out (caller frees), or -1 with *err. */
static int key_load(const struct sk_paths *p, const char *kid, EVP_PKEY **out, char **err)
{
    char *path = key_path(p, kid), *text = NULL, *tp = NULL;
    size_t len = 0;
    EVP_PKEY *key = NULL;
    int rc = -1;
    struct stat st;
    if (lstat(path, &st) == -1) {
        *err = xasprintf("cannot read callback-signing key %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        *err = xasprintf("callback-signing key %s is not a regular file owned by this user", path);
        goto out;
    }
    if ((st.st_mode & 077) != 0) {
        *err = xasprintf("callback-signing key %s has mode %04o: it must not be accessible to "
                         "group or others (chmod 600 %s)",
                         path, (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if ((text = read_file(path, KEY_FILE_MAX, &len)) == NULL) {
        *err = xasprintf("cannot read callback-signing key %s: %s", path, strerror(errno));
        goto out;
    }
    BIO *bio = BIO_new_mem_buf(text, (int)len);
    /* An empty passphrase rather than a callback: an encrypted key fails instead of prompting. */
    key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"") : NULL;
    BIO_free(bio);
    if (key == NULL) {
        *err = xasprintf("callback-signing key %s is damaged: not an unencrypted PEM private key",
                         path);
        goto out;
    }
    if (!EVP_PKEY_is_a(key, "ED25519")) {
        *err = xasprintf("callback-signing key %s is not an Ed25519 key", path);
        goto out;
    }
    tp = jws_ed25519_thumbprint(key);
    if (tp == NULL || strcmp(tp, kid) != 0) {
        *err = xasprintf("callback-signing key %s holds another key than its name says (its "
                         "thumbprint is %s)",
                         path, tp ? tp : "unknown");
        goto out;
    }
    *out = key;
    key = NULL;
    rc = 0;
out:
    ERR_clear_error();
    if (text != NULL) {
        secure_zero(text, len);
        free(text);
    }
    EVP_PKEY_free(key);
    free(tp);
    free(path);
    return rc;
}

/* Generates a key and writes key-<kid>.pem (0600, atomically, never overwriting). The caller
 * holds the exclusive lock and commits the key by naming it in the manifest.
 * 0 with kid set, or -1 with *err. */
static int key_create(const struct sk_paths *p, char kid[KID_LEN + 1], char **err)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *bio = BIO_new(BIO_s_secmem()); /* cleansed when freed */
    char *tp = NULL, *path = NULL, *pem = NULL;
    int rc = -1;
    if (key == NULL || bio == NULL ||
        PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        (tp = jws_ed25519_thumbprint(key)) == NULL) {
        *err = xasprintf("cannot generate an Ed25519 callback-signing key (OpenSSL failure)");
        goto out;
    }
    long pem_len = BIO_get_mem_data(bio, &pem);
    path = key_path(p, tp);
    int w = write_file_atomic(path, pem, (size_t)pem_len, false, err);
    if (w == 1)
        *err = xasprintf("%s already exists", path);
    if (w != 0)
        goto out;
    memcpy(kid, tp, KID_LEN + 1);
    rc = 0;
out:
    ERR_clear_error();
    BIO_free(bio);
    EVP_PKEY_free(key);
    free(tp);
    free(path);
    return rc;
}

/* Removes, best effort, what the manifest does not name: key files of keys pruned or never
 * committed, and temporaries left by a crash. Only under the exclusive lock. */
static void remove_unnamed(const struct sk_paths *p, const struct manifest *m)
{
    DIR *d = opendir(p->dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        bool stale_tmp = strstr(n, ".tmp.") != NULL;
        bool key_file = len == 4 + KID_LEN + 4 && strncmp(n, "key-", 4) == 0 &&
                        strcmp(n + len - 4, ".pem") == 0;
        if (key_file) {
            char kid[KID_LEN + 1];
            memcpy(kid, n + 4, KID_LEN);
            kid[KID_LEN] = '\0';
            key_file = !manifest_names(m, kid);
        }
        if (stale_tmp || key_file) {
            char *path = xasprintf("%s/%s", p->dir, n);
            (void)unlink(path);
            free(path);
        }
    }
    closedir(d);
}

/* ---- key sets ----------------------------------------------------------------------------- */

static void set_unref(struct sk_set *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->n; i++)
        EVP_PKEY_free(s->keys[i].pkey);
    free(s->keys);
    free(s);
}

/* Loads every key the manifest names into a new set (one reference). 0 or -1 with *err. */
static int set_load(const struct sk_paths *p, const struct manifest *m, struct sk_set **out,
                    char **err)
{
    struct sk_set *s = xcalloc(1, sizeof(*s));
    atomic_init(&s->refs, 1);
    s->keys = xcalloc(1 + m->n_retired, sizeof(*s->keys));
    for (size_t i = 0; i <= m->n_retired; i++) {
        struct sk_key *k = &s->keys[i];
        const char *kid = i == 0 ? m->current : m->retired[i - 1].kid;
        if (key_load(p, kid, &k->pkey, err) != 0) {
            set_unref(s);
            return -1;
        }
        s->n++;
        char *x = jws_ed25519_x(k->pkey); /* cannot fail: key_load checked the type */
        memcpy(k->x, x, KID_LEN + 1);
        free(x);
        memcpy(k->kid, kid, KID_LEN + 1);
        k->retired = i > 0;
        k->retired_at = i > 0 ? m->retired[i - 1].retired_at : 0;
    }
    *out = s;
    return 0;
}

/* Reads manifest and keys (the caller holds a lock) and the manifest's identity.
 * 0 or -1 with *err; a missing manifest is an error here. */
static int state_load(const struct sk_paths *p, struct sk_set **out, struct file_id *id, char **err)
{
    struct manifest m;
    int r = manifest_read(p, &m, err);
    if (r == 1)
        *err = xasprintf("%s does not exist", p->manifest);
    if (r != 0)
        return -1;
    r = set_load(p, &m, out, err);
    manifest_free(&m);
    if (r == 0 && file_id_of(p->manifest, id) == -1) {
        *err = xasprintf("cannot stat %s: %s", p->manifest, strerror(errno));
        set_unref(*out);
        *out = NULL;
        r = -1;
    }
    return r;
}

static struct sk_set *set_acquire(struct signkeys *kr)
{
    pthread_mutex_lock(&kr->mu);
    struct sk_set *s = kr->set;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&kr->mu);
    return s;
}

/* ---- public API --------------------------------------------------------------------------- */

struct signkeys *signkeys_open(const char *state_dir, char **err)
{
    struct sk_paths p;
    struct manifest m = {0};
    struct sk_set *set = NULL;
    struct signkeys *kr = NULL;
    struct file_id id;
    int lock = -1;
    paths_init(&p, state_dir);
    if (prepare_dir(&p, err) != 0 || (lock = lock_file_open(p.lock, LOCK_EX, err)) == -1)
        goto out;
    int r = manifest_read(&p, &m, err);
    if (r == -1)
        goto out;
    if (r == 1) { /* first start: one key, committed by the first manifest */
        m.generation = 1;
        if (key_create(&p, m.current, err) != 0 || manifest_write(&p, &m, err) != 0)
            goto out;
    }
    bool pruned = manifest_prune(&m, time(NULL));
    if (set_load(&p, &m, &set, err) != 0)
        goto out;
    if (pruned) {
        m.generation++;
        if (manifest_write(&p, &m, err) != 0)
            goto out;
    }
    remove_unnamed(&p, &m);
    if (file_id_of(p.manifest, &id) == -1) {
        *err = xasprintf("cannot stat %s: %s", p.manifest, strerror(errno));
        goto out;
    }
    kr = xcalloc(1, sizeof(*kr));
    pthread_mutex_init(&kr->mu, NULL);
    pthread_mutex_init(&kr->reload_mu, NULL);
    kr->set = set;
    kr->id = id;
    kr->p = p;
    set = NULL;
    memset(&p, 0, sizeof(p));
out:
    if (lock != -1)
        close(lock); /* releases the flock */
    set_unref(set);
    manifest_free(&m);
    paths_free(&p);
    return kr;
}

void signkeys_free(struct signkeys *kr)
{
    if (kr == NULL)
        return;
    set_unref(kr->set);
    pthread_mutex_destroy(&kr->mu);
    pthread_mutex_destroy(&kr->reload_mu);
    paths_free(&kr->p);
    free(kr);
}

/* Whether the manifest on disk is still the version kr's key set was loaded from. */
static bool manifest_unchanged(struct signkeys *kr, const struct file_id *on_disk)
{
    pthread_mutex_lock(&kr->mu);
    bool same = file_id_eq(on_disk, &kr->id);
    pthread_mutex_unlock(&kr->mu);
    return same;
}

int signkeys_reload(struct signkeys *kr, char **err)
{
    struct file_id on_disk, loaded_id;
    struct sk_set *fresh = NULL;
    int lock = -1, rc = -1;
    bool reloading = false;
    if (file_id_of(kr->p.manifest, &on_disk) == -1) {
        *err = xasprintf("cannot stat %s: %s", kr->p.manifest, strerror(errno));
        goto out;
    }
    if (manifest_unchanged(kr, &on_disk)) {
        rc = 0;
        goto out;
    }
    /* One reload at a time, so an older state never replaces a newer one; whoever waited here
     * finds the work done. Signers do not take this mutex. */
    pthread_mutex_lock(&kr->reload_mu);
    reloading = true;
    if (file_id_of(kr->p.manifest, &on_disk) == 0 && manifest_unchanged(kr, &on_disk)) {
        rc = 0;
        goto out;
    }
    if ((lock = lock_file_open(kr->p.lock, LOCK_SH, err)) == -1 ||
        state_load(&kr->p, &fresh, &loaded_id, err) != 0)
        goto out;
    pthread_mutex_lock(&kr->mu);
    struct sk_set *old = kr->set;
    kr->set = fresh;
    kr->id = loaded_id;
    fresh = old;
    pthread_mutex_unlock(&kr->mu);
    rc = 0;
out:
    if (lock != -1)
        close(lock);
    if (reloading)
        pthread_mutex_unlock(&kr->reload_mu);
    set_unref(fresh);
    return rc;
}

/* Lower-case hex SHA-256 of data[0..len) into out. */
static void sha256_hex(const unsigned char *data, size_t len,
                       char out[2 * SHA256_DIGEST_LENGTH + 1])
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(data != NULL ? data : (const unsigned char *)"", len, digest);
    /* No separator gives plain upper-case hex. */
    OPENSSL_buf2hexstr_ex(out, 2 * SHA256_DIGEST_LENGTH + 1, NULL, digest, sizeof(digest), '\0');
    ascii_lower_str(out);
}

int signkeys_sign_callback(struct signkeys *kr, const char *issuer, const char *audience,
                           const unsigned char *body, size_t body_len, time_t now, char **jwt)
{
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    *jwt = NULL;
    if (issuer == NULL || audience == NULL)
        return JWS_ERR_INTERNAL;
    sha256_hex(body, body_len, hex);
    json_t *claims = json_object();
    json_object_set_new(claims, "sub", json_string(SIGNKEYS_SUBJECT));
    json_object_set_new(claims, "iss", json_string(issuer));
    json_object_set_new(claims, "aud", json_string(audience));
    json_object_set_new(claims, "iat", json_integer((json_int_t)now));
    json_object_set_new(claims, "exp", json_integer((json_int_t)now + SIGNKEYS_TOKEN_LIFETIME));
    json_object_set_new(claims, "body_sha256", json_string(hex));
    struct sk_set *s = set_acquire(kr);
    int rc = jws_sign_compact(s->keys[0].pkey, JWS_ALG_EDDSA, s->keys[0].kid, claims, jwt);
    set_unref(s);
    json_decref(claims);
    return rc;
}

json_t *signkeys_jwks(struct signkeys *kr, time_t now)
{
    struct sk_set *s = set_acquire(kr);
    json_t *keys = json_array();
    for (size_t i = 0; i < s->n; i++) {
        const struct sk_key *k = &s->keys[i];
        if (k->retired && (long long)now >= k->retired_at + PUBLISH_WINDOW)
            continue;
        json_array_append_new(keys, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "OKP", "crv",
                                              "Ed25519", "kid", k->kid, "x", k->x, "use", "sig",
                                              "alg", JWS_ALG_EDDSA));
    }
    set_unref(s);
    return json_pack("{s:o}", "keys", keys);
}

char *signkeys_current_kid(struct signkeys *kr)
{
    struct sk_set *s = set_acquire(kr);
    char *kid = xstrdup(s->keys[0].kid);
    set_unref(s);
    return kid;
}

int signkeys_rotate(const char *state_dir, time_t now, char **new_kid, char **err)
{
    struct sk_paths p;
    struct manifest old = {0}, next = {0};
    int lock = -1, rc = -1;
    paths_init(&p, state_dir);
    if (prepare_dir(&p, err) != 0 || (lock = lock_file_open(p.lock, LOCK_EX, err)) == -1)
        goto out;
    int r = manifest_read(&p, &old, err);
    if (r == -1)
        goto out;
    bool first = r == 1;
    next.generation = first ? 1 : old.generation + 1;
    next.retired = xcalloc(old.n_retired + 1, sizeof(*next.retired));
    if (!first) {
        memcpy(next.retired[0].kid, old.current, KID_LEN + 1);
        next.retired[0].retired_at = (long long)now;
        memcpy(next.retired + 1, old.retired, old.n_retired * sizeof(*old.retired));
        next.n_retired = 1 + old.n_retired;
    }
    manifest_prune(&next, now);
    if (key_create(&p, next.current, err) != 0 || manifest_write(&p, &next, err) != 0)
        goto out;
    remove_unnamed(&p, &next);
    if (new_kid != NULL)
        *new_kid = xstrdup(next.current);
    rc = 0;
out:
    if (lock != -1)
        close(lock);
    manifest_free(&old);
    manifest_free(&next);
    paths_free(&p);
    return rc;
}
