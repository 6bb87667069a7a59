/* signkeys: the deployment's Ed25519 keys that sign callback requests (SPEC §4), and the JWKS
 * document that publishes their public halves at GET /.well-known/jwks.json.
 *
 * Every callback POST carries X-LangSmith-Signature-JWT: a compact JWS (jws.h) with header
 * {"alg": "EdDSA", "kid", "typ": "JWT"} and claims, in this order, {"sub":
 * "langsmith-sandbox-callback", "iss": <control API origin>, "aud": <callback url>, "iat": now,
 * "exp": now + 300, "body_sha256": <lower-case hex SHA-256 of the exact body bytes>}. The key id
 * is the key's RFC 7638 JWK thumbprint, so a kid names exactly one public key.
 *
 * On disk, <state_dir>/callback-signing/ (mode 0700; refused if group or others have access):
 *   keys.json        the manifest, the single commit point of every change (generation
 *                    counts the writes, for operators):
 *                    {"generation": n, "current": "<kid>",
 *                     "retired": [{"kid": "<kid>", "retired_at": <unix time>}, ...]}
 *                    newest retired key first. Replaced atomically (write_file_atomic).
 *   key-<kid>.pem    one Ed25519 private key each (PKCS#8 PEM, unencrypted, mode 0600; refused
 *                    when it is not a regular file, has group/other bits, does not parse as an
 *                    Ed25519 key, or holds another key than its kid says). Created before the
 *                    manifest names it; deleted only after the manifest stopped naming it.
 *   keys.lock        flock: writers (first creation, pruning, rotation) hold it exclusively,
 *                    readers (reload) shared, so a reader never sees a key file vanish between
 *                    reading the manifest and reading the keys.
 * Files that the manifest does not name (a key created by a rotation that crashed before its
 * manifest was written, stale temporaries) are removed by the next signkeys_open or
 * signkeys_rotate, under the exclusive lock. Nothing is ever created silently in place of a key
 * that exists but cannot be read: a damaged file is an error naming the file (never its
 * contents), and the operator decides (restore it, or remove the directory to start afresh).
 *
 * Rotation and retirement. signkeys_rotate (the `authproxy keys rotate-signing` command) makes
 * a new current key; the previous one is kept as retired with its retirement time. A callback
 * signed just before the rotation stays valid for SIGNKEYS_TOKEN_LIFETIME seconds, so a retired
 * key stays in the JWKS until retired_at + SIGNKEYS_TOKEN_LIFETIME + SIGNKEYS_CLOCK_SKEW has
 * passed, and is deleted from disk by the first open or rotation after that. A running daemon
 * picks a rotation up through signkeys_reload (cheap: one stat() when nothing changed), which it
 * calls before signing and before rendering the JWKS.
 *
 * Memory and secrets: private keys live only in EVP_PKEYs (OpenSSL cleanses them when freed);
 * the PEM text read from a file is zeroed as soon as it is parsed, and the PEM written for a new
 * key sits in OpenSSL secure memory. Private keys are never printed, logged, or put in errors.
 *
 * Threads: a struct signkeys may be used from any number of threads at once. It holds a
 * reference-counted, immutable key set; signing and rendering take a reference under a mutex
 * held for a pointer copy only, and work outside it, so they never wait for one another.
 * signkeys_reload loads a changed key set outside that mutex and swaps the pointer under it; a
 * signature in progress finishes with the set it started with. Reloads are serialised among
 * themselves by a second mutex (signers never take it), so an older state never replaces a
 * newer one; a thread that waited there finds the work done. */
#ifndef AUTHPROXY_SIGNKEYS_H
#define AUTHPROXY_SIGNKEYS_H

#include <stddef.h>
#include <time.h>

#include <jansson.h>

#define SIGNKEYS_DIR           "callback-signing"
#define SIGNKEYS_MANIFEST_FILE "keys.json"
#define SIGNKEYS_LOCK_FILE     "keys.lock"
/* The request header that carries the signature (SPEC §4). */
#define SIGNKEYS_HEADER "X-LangSmith-Signature-JWT"
/* The "sub" claim of every callback signature. */
#define SIGNKEYS_SUBJECT "langsmith-sandbox-callback"
/* exp - iat of a callback signature, seconds. */
#define SIGNKEYS_TOKEN_LIFETIME 300
/* Extra time a retired key stays published, for verifiers whose clock runs behind ours. */
#define SIGNKEYS_CLOCK_SKEW 60

struct signkeys;

/* Opens the keyring of state_dir: creates state_dir and <state_dir>/callback-signing (0700)
 * when missing, and on first start one key and the manifest (two processes starting at once
 * agree on one key: creation happens under the exclusive lock). Deletes retired keys whose
 * publication window has passed (by the wall clock) and files the manifest does not name.
 * Returns NULL with *err (heap, caller frees) when anything is unreadable or malformed. The
 * caller releases the keyring with signkeys_free. */
struct signkeys *signkeys_open(const char *state_dir, char **err);

/* Frees the keyring and, once no signature in progress holds them, its keys. NULL is allowed. */
void signkeys_free(struct signkeys *kr);

/* Picks up a change made by another process (signkeys_rotate): stats the manifest and, only when
 * it changed since the last load, reads manifest and keys again under the shared lock and swaps
 * the key set in. 0 on success or when nothing changed; -1 with *err (heap) when the new state
 * cannot be read, and then the keyring keeps signing and publishing with the keys it had (the
 * next call tries again). Safe to call from any thread, concurrently with everything else. */
int signkeys_reload(struct signkeys *kr, char **err);

/* Signs a callback request: *jwt (heap, the caller frees it) is the value of SIGNKEYS_HEADER for
 * a POST of body[0..body_len) to audience (the callback url) made at time now by the control API
 * whose origin is issuer. Claims and header as described at the top; signed with the current
 * key. Returns JWS_OK (0), or a negative jws_status (jws.h) with *jwt NULL — an OpenSSL failure,
 * after which the caller fails the callback closed. body may be NULL when body_len is 0. */
int signkeys_sign_callback(struct signkeys *kr, const char *issuer, const char *audience,
                           const unsigned char *body, size_t body_len, time_t now, char **jwt);

/* The JWKS document at time now: {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid", "x",
 * "use": "sig", "alg": "EdDSA"}, ...]} with the current key first, then every retired key still
 * inside its publication window (newest first). New reference; the caller json_decref's it.
 * Holds no private material. */
json_t *signkeys_jwks(struct signkeys *kr, time_t now);

/* The kid of the current key (heap, the caller frees it): for logs and `keys` commands. */
char *signkeys_current_kid(struct signkeys *kr);

/* Makes a new current key for state_dir's keyring (creating the keyring if there is none yet),
 * retiring the current one at time now; also deletes retired keys whose window has passed at
 * now. Works on the files only, under the exclusive lock, so it may run in any process while a
 * daemon uses the keyring (the daemon sees it on its next signkeys_reload). When new_kid is not
 * NULL, *new_kid is the new key's kid (heap, caller frees). 0, or -1 with *err (heap) and
 * nothing committed. */
int signkeys_rotate(const char *state_dir, time_t now, char **new_kid, char **err);

#endif
