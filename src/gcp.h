/* gcp: the pure parts of the Google service-account flow behind `type: "gcp"` rules (SPEC §2):
 * parse the service-account JSON, build the signed JWT assertion, the token request body, and
 * parse the token endpoint's answer. The HTTP exchange, caching and refresh-before-expiry are
 * the caller's.
 *
 * The flow (Google's "OAuth 2.0 for server to server applications", RFC 7523):
 *   1. gcp_sa_parse(service_account_json)                      once per config
 *   2. gcp_build_assertion(sa, scopes, now)                     an RS256 JWT: iss = client_email,
 *      scope = the scopes joined by ' ', aud = token_uri, iat = now, exp = now + 3600;
 *      header {"alg": "RS256", "kid": private_key_id, "typ": "JWT"}
 *   3. POST gcp_token_request_body(jwt) to gcp_sa_token_uri(sa) with
 *      Content-Type: application/x-www-form-urlencoded
 *   4. gcp_parse_token_response(body) -> access_token, expires_in; inject
 *      "Authorization: Bearer <access_token>" into *.googleapis.com requests until shortly before
 *      expiry.
 *
 * Secrets: the private key lives only in an EVP_PKEY (cleansed by OpenSSL when freed). The
 * service-account JSON text, the assertion (a bearer credential for an hour at the token
 * endpoint), the request body and the access token are secrets: release the strings this module
 * returns with secret_free (util.h); the JSON parser's copies are zeroed when the daemon runs
 * with util_install_zeroing_json_allocator. Error messages never contain the key, the
 * assertion or the token — only field names and non-secret values.
 *
 * Threads: a parsed struct gcp_sa is immutable; any number of threads may build assertions from
 * it at once. */
#ifndef AUTHPROXY_GCP_H
#define AUTHPROXY_GCP_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define GCP_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"
/* exp - iat of an assertion: Google accepts at most one hour. */
#define GCP_ASSERTION_LIFETIME 3600
/* Smallest RSA modulus accepted for a service-account key (Google issues 2048-bit keys). */
#define GCP_MIN_RSA_BITS 2048
/* Longest access token accepted from the token endpoint. */
#define GCP_MAX_TOKEN_LEN 8192

struct gcp_sa;

/* Parses a Google service-account key file (JSON). Required: "client_email" (non-empty) and
 * "private_key" (PEM RSA private key, PKCS#8 as Google issues it, or PKCS#1; unencrypted; at
 * least GCP_MIN_RSA_BITS). Optional: "token_uri" (an https:// URL; default
 * GCP_DEFAULT_TOKEN_URI), "private_key_id" (becomes the JWT header's kid), "type" (if present it
 * must be "service_account": other Google credential files, e.g. "authorized_user", are refused
 * by name). Other members are ignored. On success returns 0 and *out (free with gcp_sa_free);
 * otherwise -1 and *err (heap, caller frees) naming the field, never containing key material. */
int gcp_sa_parse(const char *json, struct gcp_sa **out, char **err);

/* Frees a parsed service account (the key is cleansed). NULL is allowed. */
void gcp_sa_free(struct gcp_sa *sa);

/* The account's fields. Strings live as long as sa; private_key_id may be NULL. */
const char *gcp_sa_client_email(const struct gcp_sa *sa);
const char *gcp_sa_token_uri(const struct gcp_sa *sa);
const char *gcp_sa_private_key_id(const struct gcp_sa *sa);

/* Whether s is a valid OAuth 2.0 scope token (RFC 6749 §3.3: one or more printable ASCII
 * characters other than space, '"' and '\'), e.g. for validating a rule's scopes when its
 * config is applied. */
bool gcp_scope_valid(const char *s);

/* Builds the signed assertion for scopes[0..n) (n >= 1, each gcp_scope_valid) at time now.
 * 0 with *jwt (heap; a credential: release with secret_free), or -1 with *err (heap) for bad
 * scopes or a signing failure. */
int gcp_build_assertion(const struct gcp_sa *sa, const char *const *scopes, size_t n, time_t now,
                        char **jwt, char **err);

/* The application/x-www-form-urlencoded body of the token request:
 * "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=<jwt>". A compact
 * JWS consists of form-safe characters only, so jwt goes in as is; NULL if jwt has any other
 * character (not an assertion from gcp_build_assertion). Heap; release with secret_free. */
char *gcp_token_request_body(const char *jwt);

/* Parses a token endpoint response body strictly: a JSON object with "access_token" a non-empty
 * token68 string (RFC 7235: letters, digits, "-._~+/", then optional "=" padding; at most
 * GCP_MAX_TOKEN_LEN), "expires_in" a positive integer that fits an unsigned, and "token_type",
 * when present, "Bearer" in any case. An error response ({"error": "invalid_grant",
 * "error_description": "..."}) is reported with its (sanitised, shortened) error code and
 * description. 0 with *access_token (heap; release with secret_free) and *expires_in, or -1 with
 * *err (heap) and nothing else set. */
int gcp_parse_token_response(const char *body, size_t len, char **access_token,
                             unsigned *expires_in, char **err);

#endif
