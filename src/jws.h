/* jws: compact JSON Web Signatures (RFC 7515) for the two tokens authproxy mints — the callback
 * signature (EdDSA over Ed25519, RFC 8037; SPEC §4) and the Google service-account assertion
 * (RS256) — plus the JWK pieces the callback keyring publishes (RFC 7517/7638/8037).
 *
 * All cryptography is OpenSSL's (EVP_DigestSign / EVP_DigestVerify); this module only frames.
 * A token is b64url(header) "." b64url(claims) "." b64url(signature), base64url without padding.
 * The header authproxy writes is {"alg", "kid", "typ": "JWT"} in that member order ("kid" only
 * when given), and both JSON parts are compact (no whitespace), which is what SPEC §4 and the
 * hosted product's verifiers expect.
 *
 * Only two algorithms exist here, each bound to one key type: "EdDSA" needs an Ed25519 key,
 * "RS256" (RSASSA-PKCS1-v1_5 with SHA-256) an RSA key. Verification takes the algorithm from
 * the key, never from the token, and refuses a token whose header names another one (no
 * algorithm confusion, no "none").
 *
 * Threads: every function is reentrant; an EVP_PKEY may be shared by concurrent calls (OpenSSL 3
 * keys are safe for concurrent read-only use). */
#ifndef AUTHPROXY_JWS_H
#define AUTHPROXY_JWS_H

#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>

#define JWS_ALG_EDDSA "EdDSA"
#define JWS_ALG_RS256 "RS256"

/* Length of base64url(SHA-256(...)) without padding: an RFC 7638 thumbprint, an Ed25519 "x". */
#define JWS_B64URL_32_LEN 43

/* Largest token jws_verify_compact looks at: the tokens here are a few hundred bytes. */
#define JWS_MAX_TOKEN (64 * 1024)

enum jws_status {
    JWS_OK = 0,
    JWS_ERR_FORMAT = -1,    /* not a compact JWS: parts, base64url, JSON objects */
    JWS_ERR_ALG = -2,       /* algorithm unknown, or not the one the key is for */
    JWS_ERR_SIGNATURE = -3, /* the signature does not verify under the key */
    JWS_ERR_INTERNAL = -4,  /* OpenSSL failure, or claims that cannot be serialised */
};

/* A static description of a jws_status (never contains token or key bytes). */
const char *jws_strerror(int status);

/* base64url of data[0..len) without padding (RFC 7515 §2). Heap string, the caller frees it
 * (with secret_free if data was secret). */
char *jws_b64url_encode(const void *data, size_t len);

/* Strict base64url decoding of s[0..len): URL-safe alphabet only, no padding, no whitespace,
 * and the unused low bits of the last character must be zero (so each byte string has exactly
 * one encoding). On success returns 0 with *out a heap buffer of *out_len bytes plus a NUL
 * (the caller frees it); -1 otherwise, nothing allocated. */
int jws_b64url_decode(const char *s, size_t len, unsigned char **out, size_t *out_len);

/* Signs claims (a JSON object) as a compact JWS with header {"alg": alg, "kid": kid, "typ":
 * "JWT"}; kid may be NULL (then the member is left out). alg is JWS_ALG_EDDSA or JWS_ALG_RS256
 * and must fit the private key (JWS_ERR_ALG otherwise). On JWS_OK *out is a heap string the
 * caller frees; on failure *out is NULL. Member order of claims is kept as inserted (jansson). */
int jws_sign_compact(EVP_PKEY *key, const char *alg, const char *kid, const json_t *claims,
                     char **out);

/* Verifies a compact JWS under a public (or private) key. The header must be a JSON object
 * whose "alg" is the algorithm of the key (EdDSA for Ed25519, RS256 for RSA) and that has no
 * "crit" member (no extension is understood here). On JWS_OK *claims is the decoded payload,
 * which must be a JSON object (the caller json_decref's it), and, when header is not NULL,
 * *header the decoded header (also the caller's). Time claims (exp, iat, nbf) are NOT checked:
 * that is the caller's policy. On failure nothing is returned. */
int jws_verify_compact(EVP_PKEY *key, const char *token, json_t **claims, json_t **header);

/* The "x" of an Ed25519 key's JWK: base64url of the 32-byte raw public key. Heap string of
 * JWS_B64URL_32_LEN characters, the caller frees it; NULL if key is not an Ed25519 key. */
char *jws_ed25519_x(EVP_PKEY *key);

/* The RFC 7638 thumbprint of an Ed25519 key: base64url(SHA-256 of
 * {"crv":"Ed25519","kty":"OKP","x":"<x>"}), JWS_B64URL_32_LEN characters. authproxy uses it as
 * the key id ("kid"), so a kid names exactly one public key. Heap string, the caller frees it;
 * NULL if key is not an Ed25519 key. */
char *jws_ed25519_thumbprint(EVP_PKEY *key);

/* The public key of an OKP/Ed25519 JWK (an object with "kty": "OKP", "crv": "Ed25519" and a
 * 32-byte "x"), for verifying what was signed with the matching private key. NULL when jwk is
 * not such a key. The caller frees the result with EVP_PKEY_free. */
EVP_PKEY *jws_ed25519_from_jwk(const json_t *jwk);

#endif
