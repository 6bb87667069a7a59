/* seal: encryption at rest (AES-256-GCM) and the master-key keyring.
 *
 * Sealed value format (binary "blob"; every field fixed-size except the ciphertext):
 *
 *     version (1 byte, SEAL_VERSION) | key id (8 bytes) | nonce (12 random bytes) |
 *     ciphertext (as long as the plaintext) | GCM tag (16 bytes)
 *
 * The GCM additional data is the 21-byte header (version | key id | nonce) followed by the
 * caller's aad string, so neither the header nor the binding can be altered. The aad names the
 * row the value belongs to (e.g. "authproxy/v1/workspace/<id>/secret/<name>"): a ciphertext
 * copied into another row fails to unseal. Nonces are random; with 96-bit random nonces one key
 * must not seal more than 2^32 values, far beyond a control plane's needs between rotations.
 *
 * Text form (what the store keeps, what JSON documents carry): SEAL_TEXT_PREFIX followed by the
 * blob in standard base64 with padding, no line breaks, e.g. "apseal:AQ3x...". Any JSON string
 * that starts with SEAL_TEXT_PREFIX is a sealed value to the store (see store.h).
 *
 * Keys. A key is 32 random bytes. Its id is the first 8 bytes of SHA-256(key), written as 16
 * lower-case hex characters. The keyring holds one current key (seals) and any number of older
 * keys (unseal only), so rotation never makes stored values unreadable.
 *
 * Key sources, in the order seal_keyring_open() tries them:
 *   1. Environment variable AUTHPROXY_MASTER_KEY (when set and non-empty): one or more keys
 *      separated by ',', the first being current. Each key is 64 hex characters, or base64 of the
 * 32 bytes (standard or URL-safe alphabet, padding optional). E.g. AUTHPROXY_MASTER_KEY=$(openssl
 * rand -hex 32). Such a keyring is read-only: rotate by putting a new key first in the variable.
 *   2. A key file given by path (--master-key-file): either exactly 32 raw bytes
 *      (head -c 32 /dev/urandom > f) or the keyring text format below. It must exist.
 *   3. <state_dir>/master.key (SEAL_KEYRING_FILE), created at first use.
 *
 * Keyring text format: one key per line (64 hex characters, or base64 as above); the first key
 * line is the current key, later ones are older keys kept for unsealing. Blank lines and lines
 * starting with '#' are ignored; the writer puts "# id <key id>" comments for operators.
 *
 * File safety: key files must be regular files without any group or world permission bits
 * (mode 0600 or stricter); anything else is refused with an error naming the file and its mode.
 * A new file is written to a temporary file created 0600 with O_EXCL (mkstemp), fsync'ed and then
 * link()ed into place (first creation: two processes starting at once agree on one key) or
 * rename()d over the old one (rotation), and the directory is fsync'ed. Rotation and retirement
 * take an exclusive flock on "<file>.lock" and re-read the file under it, so two concurrent
 * rotations never lose a key.
 *
 * Memory: key bytes live in anonymous mmap'ed pages marked MADV_DONTDUMP (not in core dumps) and
 * mlock'ed when RLIMIT_MEMLOCK allows (not swapped; best effort, silently skipped otherwise).
 * They are zeroed before the pages are unmapped. OpenSSL copies the key into its cipher context
 * for the length of one operation; that context is cleansed by EVP_CIPHER_CTX_free.
 *
 * Errors never contain key bytes or plaintext.
 *
 * Threads: seal/unseal only read the keyring and may run concurrently. seal_keyring_rotate,
 * _retire and _reload modify it and must not run concurrently with any other use of the same
 * keyring (the daemon reloads from its control thread, or builds a fresh keyring and swaps). */
#ifndef AUTHPROXY_SEAL_H
#define AUTHPROXY_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEAL_VERSION        1
#define SEAL_KEY_LEN        32
#define SEAL_KEY_ID_LEN     8
#define SEAL_KEY_ID_HEX_LEN (2 * SEAL_KEY_ID_LEN)
#define SEAL_NONCE_LEN      12
#define SEAL_TAG_LEN        16
#define SEAL_HEADER_LEN     (1 + SEAL_KEY_ID_LEN + SEAL_NONCE_LEN)
#define SEAL_OVERHEAD       (SEAL_HEADER_LEN + SEAL_TAG_LEN)
/* Largest plaintext seal() accepts: secrets and opaque header values are small. */
#define SEAL_MAX_PLAINTEXT (1u << 20)

#define SEAL_TEXT_PREFIX  "apseal:"
#define SEAL_ENV_VAR      "AUTHPROXY_MASTER_KEY"
#define SEAL_KEYRING_FILE "master.key"

enum seal_status {
    SEAL_OK = 0,
    SEAL_ERR_FORMAT = -1,      /* not a sealed value of a known version (truncated, bad base64) */
    SEAL_ERR_UNKNOWN_KEY = -2, /* sealed under a key id this keyring does not hold */
    SEAL_ERR_AUTH = -3,        /* authentication failed: tampered, wrong aad (row), or wrong key */
    SEAL_ERR_TOO_LARGE = -4,   /* plaintext above SEAL_MAX_PLAINTEXT */
    SEAL_ERR_INTERNAL = -5,    /* OpenSSL or random number generator failure */
};

/* A static, human-readable description of a seal_status (never contains key or data bytes). */
const char *seal_strerror(int status);

struct seal_keyring;

/* Opens the deployment's keyring from the first source that applies (see above):
 * $AUTHPROXY_MASTER_KEY, else key_file when non-NULL, else <state_dir>/master.key, which is
 * created (and state_dir with mode 0700, if missing) at first use. Returns NULL and sets *err to
 * a heap message (caller frees) on failure. The caller frees the keyring with
 * seal_keyring_free. */
struct seal_keyring *seal_keyring_open(const char *state_dir, const char *key_file, char **err);

/* Loads a key file (raw 32 bytes or the text format). create: when the file does not exist,
 * generate one key and create the file atomically (see above). The keyring remembers the path
 * for rotate/retire/reload. NULL with *err (heap, caller frees) on failure. */
struct seal_keyring *seal_keyring_load_file(const char *path, bool create, char **err);

/* Parses keys from a string in the AUTHPROXY_MASTER_KEY syntax (comma-separated, first current).
 * The result is read-only (no file behind it). NULL with *err on failure. */
struct seal_keyring *seal_keyring_from_string(const char *keys, char **err);

/* Zeroes all key material and frees the keyring. NULL is allowed. */
void seal_keyring_free(struct seal_keyring *kr);

/* Number of keys (>= 1), the current key's id, and the id of key i (0 = current), as 16 hex
 * characters. The returned strings live as long as the keyring is not modified. */
size_t seal_keyring_count(const struct seal_keyring *kr);
const char *seal_keyring_current_id(const struct seal_keyring *kr);
const char *seal_keyring_id_at(const struct seal_keyring *kr, size_t i);
/* Whether the keyring holds a key with this id (hex). */
bool seal_keyring_has(const struct seal_keyring *kr, const char *key_id_hex);
/* The file behind the keyring, or NULL when it came from a string / the environment. */
const char *seal_keyring_path(const struct seal_keyring *kr);

/* Generates a new random key and makes it current; every older key stays for unsealing. The
 * file is rewritten (under its lock, merging keys another process added meanwhile) before the
 * in-memory keyring changes, so a crash leaves either the old or the new file. Fails, changing
 * nothing, for a keyring without a file. 0 on success, -1 with *err otherwise.
 * After a successful rotate, re-seal stored values (store_reseal_all) and only then retire. */
int seal_keyring_rotate(struct seal_keyring *kr, char **err);

/* Drops every key but the current one, in the file and in memory. Refuses (-1, *err) when the
 * file's current key is no longer this keyring's current key (someone rotated meanwhile), or for
 * a keyring without a file. The caller must first make sure no stored value still uses an old
 * key (store_sealed_key_ids): values sealed under a retired key are lost for good. */
int seal_keyring_retire(struct seal_keyring *kr, char **err);

/* Re-reads the keyring's file (after another process rotated it). A keyring without a file is
 * left unchanged. 0 on success; -1 with *err, keyring unchanged, on failure. */
int seal_keyring_reload(struct seal_keyring *kr, char **err);

/* Seals pt[0..pt_len) under the current key, bound to aad (NUL-terminated; NULL means "").
 * On SEAL_OK *blob (heap, caller frees with free(); it holds no secret) and *blob_len are set. */
int seal_seal(const struct seal_keyring *kr, const void *pt, size_t pt_len, const char *aad,
              uint8_t **blob, size_t *blob_len);

/* Verifies and decrypts a blob sealed with the same aad under a key of this keyring. On SEAL_OK
 * *pt is a heap buffer of *pt_len bytes plus a NUL terminator, which the caller releases with
 * seal_plaintext_free. On failure nothing is allocated and no partial plaintext is left. */
int seal_unseal(const struct seal_keyring *kr, const uint8_t *blob, size_t blob_len,
                const char *aad, uint8_t **pt, size_t *pt_len);

/* Zeroes and frees a plaintext returned by seal_unseal. NULL is allowed. */
void seal_plaintext_free(uint8_t *pt, size_t pt_len);

/* Text form of seal_seal for a NUL-terminated plaintext: *out = SEAL_TEXT_PREFIX + base64(blob),
 * heap, caller frees with free(). */
int seal_seal_text(const struct seal_keyring *kr, const char *plaintext, const char *aad,
                   char **out);

/* Text form of seal_unseal: *plaintext is a NUL-terminated heap string the caller releases with
 * secret_free (util.h). A plaintext containing a NUL byte is refused (SEAL_ERR_FORMAT) so that
 * secret_free zeroes all of it. */
int seal_unseal_text(const struct seal_keyring *kr, const char *sealed, const char *aad,
                     char **plaintext);

/* Whether s starts with SEAL_TEXT_PREFIX (says nothing about validity). */
bool seal_is_sealed_text(const char *s);

/* The key id (16 hex characters + NUL into out) of a sealed blob / sealed text, without any key.
 * SEAL_OK or SEAL_ERR_FORMAT. */
int seal_blob_key_id(const uint8_t *blob, size_t blob_len, char out[SEAL_KEY_ID_HEX_LEN + 1]);
int seal_text_key_id(const char *sealed, char out[SEAL_KEY_ID_HEX_LEN + 1]);

#endif
