/* seal: AES-256-GCM sealing and the master-key keyring. Format and policies: seal.h. */
#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "util.h"

/* Largest key file we read: a keyring of a few hundred keys. */
#define KEYFILE_MAX (64 * 1024)

struct seal_key {
    uint8_t key[SEAL_KEY_LEN];
    uint8_t id[SEAL_KEY_ID_LEN];
    char id_hex[SEAL_KEY_ID_HEX_LEN + 1];
};

struct seal_keyring {
    struct seal_key *keys; /* keys[0] is current; mmap'ed, see keys_map */
    size_t n;
    size_t cap;     /* entries that fit in the mapping */
    size_t map_len; /* bytes mapped */
    char *path;     /* the file behind the keyring, or NULL */
};

const char *seal_strerror(int status)
{
    switch (status) {
    case SEAL_OK:
        return "ok";
    case SEAL_ERR_FORMAT:
        return "not a sealed value (malformed, truncated or unknown version)";
    case SEAL_ERR_UNKNOWN_KEY:
        return "sealed under a key id the keyring does not hold";
    case SEAL_ERR_AUTH:
        return "authentication failed (tampered, bound to another row, or wrong key)";
    case SEAL_ERR_TOO_LARGE:
        return "value too large to seal";
    case SEAL_ERR_INTERNAL:
        return "internal cryptographic failure";
    default:
        return "unknown seal error";
    }
}

/* ---- encoding helpers --------------------------------------------------------------------- */

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes exactly 2*n hex characters into out; -1 on any non-hex character. */
static int hex_decode(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(s[2 * i]), lo = hex_val(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Decodes base64 (standard or URL-safe alphabet, padding optional) of s[0..len) into out, which
 * has room for cap bytes. 0 and *out_len on success; -1 on a bad character, bad length, or
 * overflow of cap. */
static int b64_decode(const char *s, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_val(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out_len = o;
    return 0;
}

/* Parses one key token (64 hex characters, or base64 of exactly 32 bytes) into out.
 * 0 on success, -1 otherwise; out is zeroed on failure. */
static int parse_key_token(const char *s, size_t len, uint8_t out[SEAL_KEY_LEN])
{
    size_t n = 0;
    if (len == 2 * SEAL_KEY_LEN && hex_decode(s, out, SEAL_KEY_LEN) == 0)
        return 0;
    uint8_t tmp[SEAL_KEY_LEN + 3];
    int rc = -1;
    if (b64_decode(s, len, tmp, sizeof(tmp), &n) == 0 && n == SEAL_KEY_LEN) {
        memcpy(out, tmp, SEAL_KEY_LEN);
        rc = 0;
    } else {
        secure_zero(out, SEAL_KEY_LEN);
    }
    secure_zero(tmp, sizeof(tmp));
    return rc;
}

/* ---- key storage -------------------------------------------------------------------------- */

/* Maps room for at least cap keys in anonymous pages kept out of core dumps and, when the
 * memlock limit allows, out of swap. Aborts on failure, like every allocation (util.h). */
static struct seal_key *keys_map(size_t cap, size_t *map_len)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pg = page > 0 ? (size_t)page : 4096;
    size_t len = (cap * sizeof(struct seal_key) + pg - 1) / pg * pg;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        static const char msg[] = "authproxy: out of memory (key pages), aborting\n";
        (void)!write(2, msg, sizeof(msg) - 1);
        abort();
    }
#ifdef MADV_DONTDUMP
    (void)madvise(p, len, MADV_DONTDUMP); /* best effort: an old kernel just dumps zeros later */
#endif
    (void)mlock(p, len); /* best effort: RLIMIT_MEMLOCK may be too small */
    *map_len = len;
    return p;
}

/* Zeroes and unmaps a mapping from keys_map. NULL is allowed. */
static void keys_unmap(struct seal_key *keys, size_t map_len)
{
    if (keys == NULL)
        return;
    secure_zero(keys, map_len);
    (void)munlock(keys, map_len);
    munmap(keys, map_len);
}

static struct seal_keyring *kr_new(void)
{
    struct seal_keyring *kr = xcalloc(1, sizeof(*kr));
    kr->cap = 4;
    kr->keys = keys_map(kr->cap, &kr->map_len);
    kr->cap = kr->map_len / sizeof(struct seal_key);
    return kr;
}

void seal_keyring_free(struct seal_keyring *kr)
{
    if (kr == NULL)
        return;
    keys_unmap(kr->keys, kr->map_len);
    free(kr->path);
    free(kr);
}

static const struct seal_key *kr_find(const struct seal_keyring *kr, const uint8_t *id)
{
    for (size_t i = 0; i < kr->n; i++)
        if (memcmp(kr->keys[i].id, id, SEAL_KEY_ID_LEN) == 0)
            return &kr->keys[i];
    return NULL;
}

/* Appends a key (computing its id). A key already present is skipped, so merged key lists
 * stay duplicate-free. Two different keys with one id (a 64-bit collision, or a forged file)
 * are refused: -1 with *err. */
static int kr_add(struct seal_keyring *kr, const uint8_t key[SEAL_KEY_LEN], char **err)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256(key, SEAL_KEY_LEN, digest);
    const struct seal_key *dup = kr_find(kr, digest);
    if (dup != NULL) {
        secure_zero(digest, sizeof(digest));
        if (CRYPTO_memcmp(dup->key, key, SEAL_KEY_LEN) == 0)
            return 0;
        *err = xasprintf("two different keys share the key id %s", dup->id_hex);
        return -1;
    }
    if (kr->n == kr->cap) {
        size_t len;
        struct seal_key *bigger = keys_map(kr->cap * 2, &len);
        memcpy(bigger, kr->keys, kr->n * sizeof(struct seal_key));
        keys_unmap(kr->keys, kr->map_len);
        kr->keys = bigger;
        kr->map_len = len;
        kr->cap = len / sizeof(struct seal_key);
    }
    struct seal_key *k = &kr->keys[kr->n++];
    memcpy(k->key, key, SEAL_KEY_LEN);
    memcpy(k->id, digest, SEAL_KEY_ID_LEN);
    hex_encode(k->id, SEAL_KEY_ID_LEN, k->id_hex);
    secure_zero(digest, sizeof(digest));
    return 0;
}

/* Adds a fresh random key. -1 with *err if the RNG fails. */
static int kr_add_random(struct seal_keyring *kr, char **err)
{
    uint8_t key[SEAL_KEY_LEN];
    int rc = -1;
    if (RAND_priv_bytes(key, sizeof(key)) != 1) {
        *err = xasprintf("cannot generate a key: random number generator failure");
        goto out;
    }
    rc = kr_add(kr, key, err);
out:
    secure_zero(key, sizeof(key));
    return rc;
}

/* Exchanges the key sets of two keyrings (not their paths). */
static void kr_swap_keys(struct seal_keyring *a, struct seal_keyring *b)
{
    struct seal_keyring t = *a;
    a->keys = b->keys;
    a->n = b->n;
    a->cap = b->cap;
    a->map_len = b->map_len;
    b->keys = t.keys;
    b->n = t.n;
    b->cap = t.cap;
    b->map_len = t.map_len;
}

/* Parses separator-delimited key tokens from text into kr. sep is ',' (environment) or '\n'
 * (file; '#' comment lines allowed). source names the origin in errors; tokens never appear in
 * messages. At least one key is required. 0, or -1 with *err. */
static int kr_parse(struct seal_keyring *kr, const char *text, size_t len, char sep,
                    const char *source, char **err)
{
    size_t item = 0;
    const char *p = text, *end = text + len;
    while (p <= end) {
        const char *e = memchr(p, sep, (size_t)(end - p));
        if (e == NULL)
            e = end;
        item++;
        const char *a = p, *b = e;
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\r' || *a == '\n'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r' || b[-1] == '\n'))
            b--;
        if (a < b && !(sep == '\n' && *a == '#')) {
            uint8_t key[SEAL_KEY_LEN];
            if (parse_key_token(a, (size_t)(b - a), key) != 0) {
                *err = xasprintf("%s: %s %zu is not a 32-byte key (expected 64 hex characters "
                                 "or base64 of 32 bytes)",
                                 source, sep == '\n' ? "line" : "key", item);
                return -1;
            }
            int rc = kr_add(kr, key, err);
            secure_zero(key, sizeof(key));
            if (rc != 0)
                return -1;
        }
        p = e + 1;
    }
    if (kr->n == 0) {
        *err = xasprintf("%s: holds no key", source);
        return -1;
    }
    return 0;
}

struct seal_keyring *seal_keyring_from_string(const char *keys, char **err)
{
    struct seal_keyring *kr = kr_new();
    if (kr_parse(kr, keys, strlen(keys), ',', SEAL_ENV_VAR, err) != 0) {
        seal_keyring_free(kr);
        return NULL;
    }
    return kr;
}

/* ---- key files ---------------------------------------------------------------------------- */

/* Reads the key file at path into the empty keyring kr after checking, on the opened
 * descriptor, that it is a regular file without group/world permissions. 0 on success; -1 with
 * *err, and *missing set when the file does not exist. */
static int kr_read_file(struct seal_keyring *kr, const char *path, bool *missing, char **err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = -1;
    struct stat st;
    *missing = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        *missing = errno == ENOENT;
        *err = xasprintf("cannot open key file %s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) == -1) {
        *err = xasprintf("cannot stat key file %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        *err = xasprintf("key file %s is not a regular file", path);
        goto out;
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        *err = xasprintf("key file %s has mode %04o: it must not be accessible to group or others "
                         "(chmod 600 %s)",
                         path, (unsigned)(st.st_mode & 07777), path);
        goto out;
    }
    if (st.st_size > KEYFILE_MAX) {
        *err = xasprintf("key file %s is too large to be a keyring", path);
        goto out;
    }
    buf = xmalloc(KEYFILE_MAX + 1);
    for (;;) {
        ssize_t n = read(fd, buf + len, KEYFILE_MAX + 1 - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            *err = xasprintf("cannot read key file %s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > KEYFILE_MAX) {
            *err = xasprintf("key file %s is too large to be a keyring", path);
            goto out;
        }
    }
    if (len == SEAL_KEY_LEN) { /* raw 32 bytes; no text keyring is ever exactly 32 bytes */
        if (kr_add(kr, (const uint8_t *)buf, err) != 0)
            goto out;
    } else if (kr_parse(kr, buf, len, '\n', path, err) != 0) {
        goto out;
    }
    rc = 0;
out:
    if (buf != NULL) {
        secure_zero(buf, KEYFILE_MAX + 1);
        free(buf);
    }
    if (fd != -1)
        close(fd);
    return rc;
}

/* Writes the keyring's keys to path atomically (write_file_atomic: a 0600 temporary, fsync,
 * rename() over path when replace, else link() for a first creation that never overwrites).
 * Returns 0 on success, 1 when !replace and path already exists (nothing written), -1 with *err.
 * The serialised text is zeroed before it is freed. */
static int kr_write_file(const struct seal_keyring *kr, const char *path, bool replace, char **err)
{
    size_t cap = 128 + kr->n * 128, len = 0;
    char *text = xmalloc(cap);
    len += (size_t)snprintf(text + len, cap - len,
                            "# authproxy keyring: the first key is current (seals); later keys "
                            "only unseal.\n");
    for (size_t i = 0; i < kr->n; i++) {
        len += (size_t)snprintf(text + len, cap - len, "# id %s%s\n", kr->keys[i].id_hex,
                                i == 0 ? " (current)" : "");
        hex_encode(kr->keys[i].key, SEAL_KEY_LEN, text + len);
        len += 2 * SEAL_KEY_LEN;
        text[len++] = '\n';
    }
    int rc = write_file_atomic(path, text, len, replace, err);
    secure_zero(text, cap);
    free(text);
    return rc;
}

struct seal_keyring *seal_keyring_load_file(const char *path, bool create, char **err)
{
    struct seal_keyring *kr = kr_new();
    bool missing = false;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *read_err = NULL;
        if (kr_read_file(kr, path, &missing, &read_err) == 0)
            goto ok;
        if (!missing || !create) {
            *err = read_err;
            goto fail;
        }
        free(read_err);
        /* First use: one key, created atomically; if another process won the race, read its. */
        struct seal_keyring *fresh = kr_new();
        if (kr_add_random(fresh, err) != 0) {
            seal_keyring_free(fresh);
            goto fail;
        }
        int w = kr_write_file(fresh, path, false, err);
        if (w == -1) {
            seal_keyring_free(fresh);
            goto fail;
        }
        if (w == 0) {
            kr_swap_keys(kr, fresh);
            seal_keyring_free(fresh);
            goto ok;
        }
        seal_keyring_free(fresh); /* w == 1: exists now; read it */
    }
    *err = xasprintf("cannot create or read key file %s", path);
fail:
    seal_keyring_free(kr);
    return NULL;
ok:
    kr->path = xstrdup(path);
    return kr;
}

struct seal_keyring *seal_keyring_open(const char *state_dir, const char *key_file, char **err)
{
    const char *env = getenv(SEAL_ENV_VAR);
    if (env != NULL && env[0] != '\0')
        return seal_keyring_from_string(env, err);
    if (key_file != NULL)
        return seal_keyring_load_file(key_file, false, err);
    if (mkdir_p(state_dir, err) != 0)
        return NULL;
    char *path = xasprintf("%s/%s", state_dir, SEAL_KEYRING_FILE);
    struct seal_keyring *kr = seal_keyring_load_file(path, true, err);
    free(path);
    return kr;
}

size_t seal_keyring_count(const struct seal_keyring *kr)
{
    return kr->n;
}

const char *seal_keyring_current_id(const struct seal_keyring *kr)
{
    return kr->keys[0].id_hex;
}

const char *seal_keyring_id_at(const struct seal_keyring *kr, size_t i)
{
    return i < kr->n ? kr->keys[i].id_hex : NULL;
}

bool seal_keyring_has(const struct seal_keyring *kr, const char *key_id_hex)
{
    uint8_t id[SEAL_KEY_ID_LEN];
    if (strlen(key_id_hex) != SEAL_KEY_ID_HEX_LEN || hex_decode(key_id_hex, id, sizeof(id)) != 0)
        return false;
    return kr_find(kr, id) != NULL;
}

const char *seal_keyring_path(const struct seal_keyring *kr)
{
    return kr->path;
}

/* Takes the exclusive lock serialising writers of a key file. Returns the lock descriptor
 * (closing it releases the lock) or -1 with *err. */
static int keyfile_lock(const char *path, char **err)
{
    char *lock = xasprintf("%s.lock", path);
    int fd = lock_file_open(lock, LOCK_EX, err);
    free(lock);
    return fd;
}

int seal_keyring_rotate(struct seal_keyring *kr, char **err)
{
    struct seal_keyring *on_disk = NULL, *next = NULL;
    bool missing;
    int rc = -1, lock = -1;
    if (kr->path == NULL) {
        *err = xasprintf("the keyring comes from %s and cannot be rotated here: put a new key "
                         "first in the variable, keeping the old ones after it",
                         SEAL_ENV_VAR);
        goto out;
    }
    if ((lock = keyfile_lock(kr->path, err)) == -1)
        goto out;
    on_disk = kr_new();
    if (kr_read_file(on_disk, kr->path, &missing, err) != 0)
        goto out;
    next = kr_new();
    if (kr_add_random(next, err) != 0)
        goto out;
    for (size_t i = 0; i < on_disk->n; i++)
        if (kr_add(next, on_disk->keys[i].key, err) != 0)
            goto out;
    for (size_t i = 0; i < kr->n; i++)
        if (kr_add(next, kr->keys[i].key, err) != 0)
            goto out;
    if (kr_write_file(next, kr->path, true, err) != 0)
        goto out;
    kr_swap_keys(kr, next);
    rc = 0;
out:
    if (lock != -1)
        close(lock);
    seal_keyring_free(on_disk);
    seal_keyring_free(next);
    return rc;
}

int seal_keyring_retire(struct seal_keyring *kr, char **err)
{
    struct seal_keyring *on_disk = NULL, *next = NULL;
    bool missing;
    int rc = -1, lock = -1;
    if (kr->path == NULL) {
        *err = xasprintf("the keyring comes from %s: retire old keys by removing them from the "
                         "variable",
                         SEAL_ENV_VAR);
        goto out;
    }
    if ((lock = keyfile_lock(kr->path, err)) == -1)
        goto out;
    on_disk = kr_new();
    if (kr_read_file(on_disk, kr->path, &missing, err) != 0)
        goto out;
    if (memcmp(on_disk->keys[0].id, kr->keys[0].id, SEAL_KEY_ID_LEN) != 0) {
        *err = xasprintf("key file %s changed since it was loaded (current key is now %s): "
                         "reload and check again before retiring",
                         kr->path, on_disk->keys[0].id_hex);
        goto out;
    }
    next = kr_new();
    if (kr_add(next, kr->keys[0].key, err) != 0 || kr_write_file(next, kr->path, true, err) != 0)
        goto out;
    kr_swap_keys(kr, next);
    rc = 0;
out:
    if (lock != -1)
        close(lock);
    seal_keyring_free(on_disk);
    seal_keyring_free(next);
    return rc;
}

int seal_keyring_reload(struct seal_keyring *kr, char **err)
{
    bool missing;
    if (kr->path == NULL)
        return 0;
    struct seal_keyring *on_disk = kr_new();
    int rc = kr_read_file(on_disk, kr->path, &missing, err);
    if (rc == 0)
        kr_swap_keys(kr, on_disk);
    seal_keyring_free(on_disk);
    return rc;
}

/* ---- sealing ------------------------------------------------------------------------------ */

/* Feeds the GCM additional data: the blob header, then the caller's aad string. */
static int gcm_aad(EVP_CIPHER_CTX *ctx, const uint8_t *header, const char *aad, bool encrypt)
{
    int outl;
    size_t aad_len = aad ? strlen(aad) : 0;
    if (aad_len > INT_MAX)
        return -1;
    int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int) =
        encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate;
    if (update(ctx, NULL, &outl, header, SEAL_HEADER_LEN) != 1)
        return -1;
    if (aad_len > 0 && update(ctx, NULL, &outl, (const unsigned char *)aad, (int)aad_len) != 1)
        return -1;
    return 0;
}

int seal_seal(const struct seal_keyring *kr, const void *pt, size_t pt_len, const char *aad,
              uint8_t **blob, size_t *blob_len)
{
    const struct seal_key *k = &kr->keys[0];
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *b = NULL;
    int rc = SEAL_ERR_INTERNAL, outl = 0, finl = 0;
    if (pt_len > SEAL_MAX_PLAINTEXT)
        return SEAL_ERR_TOO_LARGE;
    size_t len = SEAL_OVERHEAD + pt_len;
    b = xmalloc(len);
    b[0] = SEAL_VERSION;
    memcpy(b + 1, k->id, SEAL_KEY_ID_LEN);
    uint8_t *nonce = b + 1 + SEAL_KEY_ID_LEN, *ct = b + SEAL_HEADER_LEN, *tag = ct + pt_len;
    if (RAND_bytes(nonce, SEAL_NONCE_LEN) != 1)
        goto out;
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
        goto out;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, k->key, nonce) != 1 || gcm_aad(ctx, b, aad, true))
        goto out;
    if (pt_len > 0 && EVP_EncryptUpdate(ctx, ct, &outl, pt, (int)pt_len) != 1)
        goto out;
    if (EVP_EncryptFinal_ex(ctx, ct + outl, &finl) != 1 || (size_t)(outl + finl) != pt_len ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto out;
    *blob = b;
    *blob_len = len;
    b = NULL;
    rc = SEAL_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(b);
    return rc;
}

int seal_unseal(const struct seal_keyring *kr, const uint8_t *blob, size_t blob_len,
                const char *aad, uint8_t **pt, size_t *pt_len)
{
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *out = NULL;
    int rc = SEAL_ERR_INTERNAL, outl = 0, finl = 0;
    if (blob_len < SEAL_OVERHEAD || blob[0] != SEAL_VERSION)
        return SEAL_ERR_FORMAT;
    size_t len = blob_len - SEAL_OVERHEAD;
    if (len > SEAL_MAX_PLAINTEXT)
        return SEAL_ERR_FORMAT;
    const struct seal_key *k = kr_find(kr, blob + 1);
    if (k == NULL)
        return SEAL_ERR_UNKNOWN_KEY;
    const uint8_t *nonce = blob + 1 + SEAL_KEY_ID_LEN, *ct = blob + SEAL_HEADER_LEN;
    uint8_t tag[SEAL_TAG_LEN];
    memcpy(tag, ct + len, SEAL_TAG_LEN); /* the ctrl takes a non-const pointer */
    out = xmalloc(len + 1);
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
        goto out;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, k->key, nonce) != 1 || gcm_aad(ctx, blob, aad, false))
        goto out;
    if (len > 0 && EVP_DecryptUpdate(ctx, out, &outl, ct, (int)len) != 1)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_DecryptFinal_ex(ctx, out + outl, &finl) != 1) {
        rc = SEAL_ERR_AUTH;
        goto out;
    }
    if ((size_t)(outl + finl) != len)
        goto out;
    out[len] = '\0';
    *pt = out;
    *pt_len = len;
    out = NULL;
    rc = SEAL_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (out != NULL) {
        secure_zero(out, len + 1); /* unauthenticated plaintext never escapes */
        free(out);
    }
    return rc;
}

void seal_plaintext_free(uint8_t *pt, size_t pt_len)
{
    if (pt == NULL)
        return;
    secure_zero(pt, pt_len);
    free(pt);
}

int seal_seal_text(const struct seal_keyring *kr, const char *plaintext, const char *aad,
                   char **out)
{
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    int rc = seal_seal(kr, plaintext, strlen(plaintext), aad, &blob, &blob_len);
    if (rc != SEAL_OK)
        return rc;
    size_t plen = strlen(SEAL_TEXT_PREFIX);
    char *s = xmalloc(plen + 4 * ((blob_len + 2) / 3) + 1);
    memcpy(s, SEAL_TEXT_PREFIX, plen);
    EVP_EncodeBlock((unsigned char *)s + plen, blob, (int)blob_len);
    free(blob);
    *out = s;
    return SEAL_OK;
}

/* Decodes sealed text into a heap blob (caller frees). SEAL_OK or SEAL_ERR_FORMAT. */
static int text_to_blob(const char *sealed, uint8_t **blob, size_t *blob_len)
{
    if (!seal_is_sealed_text(sealed))
        return SEAL_ERR_FORMAT;
    const char *b64 = sealed + strlen(SEAL_TEXT_PREFIX);
    size_t len = strlen(b64);
    if (len > 4 * ((SEAL_MAX_PLAINTEXT + SEAL_OVERHEAD + 2) / 3))
        return SEAL_ERR_FORMAT;
    size_t cap = len / 4 * 3 + 3, n = 0;
    uint8_t *b = xmalloc(cap);
    if (b64_decode(b64, len, b, cap, &n) != 0) {
        free(b);
        return SEAL_ERR_FORMAT;
    }
    *blob = b;
    *blob_len = n;
    return SEAL_OK;
}

int seal_unseal_text(const struct seal_keyring *kr, const char *sealed, const char *aad,
                     char **plaintext)
{
    uint8_t *blob = NULL, *pt = NULL;
    size_t blob_len = 0, pt_len = 0;
    int rc = text_to_blob(sealed, &blob, &blob_len);
    if (rc != SEAL_OK)
        return rc;
    rc = seal_unseal(kr, blob, blob_len, aad, &pt, &pt_len);
    free(blob);
    if (rc != SEAL_OK)
        return rc;
    if (memchr(pt, '\0', pt_len) != NULL) {
        seal_plaintext_free(pt, pt_len);
        return SEAL_ERR_FORMAT;
    }
    *plaintext = (char *)pt; /* NUL-terminated by seal_unseal */
    return SEAL_OK;
}

bool seal_is_sealed_text(const char *s)
{
    return s != NULL && strncmp(s, SEAL_TEXT_PREFIX, strlen(SEAL_TEXT_PREFIX)) == 0;
}

int seal_blob_key_id(const uint8_t *blob, size_t blob_len, char out[SEAL_KEY_ID_HEX_LEN + 1])
{
    if (blob_len < SEAL_OVERHEAD || blob[0] != SEAL_VERSION)
        return SEAL_ERR_FORMAT;
    hex_encode(blob + 1, SEAL_KEY_ID_LEN, out);
    return SEAL_OK;
}

int seal_text_key_id(const char *sealed, char out[SEAL_KEY_ID_HEX_LEN + 1])
{
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    int rc = text_to_blob(sealed, &blob, &blob_len);
    if (rc != SEAL_OK)
        return rc;
    rc = seal_blob_key_id(blob, blob_len, out);
    free(blob);
    return rc;
}
