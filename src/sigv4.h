/* sigv4: AWS Signature Version 4 signing of proxied requests ("type": "aws" rules, SPEC §2).
 *
 * The sandbox sends an AWS request signed with placeholder credentials (or not signed at all);
 * the proxy strips whatever signature it carries and signs it again with the rule's real
 * credentials, so the secret access key never enters the sandbox. This module is the pure part
 * of that: it derives the credential scope (region, signing name) from the host the request
 * goes to, builds the canonical request exactly as AWS and botocore do, and returns the header
 * values the proxy sets. No I/O; crypto is OpenSSL 3 (EVP_MAC HMAC, EVP_Digest SHA-256).
 *
 * How the data path uses it, per request to a host matched by an "aws" rule:
 *   1. sigv4_scope_from_host(host): refuse the request (fail closed) if it fails.
 *   2. Decide the payload hash: the hex SHA-256 of the whole body when it is buffered
 *      (SIGV4_EMPTY_SHA256 without a body), else SIGV4_UNSIGNED_PAYLOAD, which only services for
 *      which sigv4_unsigned_payload_allowed() is true accept (S3); elsewhere a streamed body
 *      cannot be signed and the request must be refused.
 *   3. sigv4_sign() with the client's fields as parsed by http1; it ignores the client's own
 *      signature fields (sigv4_is_signature_header) and signs host, content-type and x-amz-*.
 *   4. Forward the request without any client field for which sigv4_is_signature_header() is
 *      true, plus the overrides from sigv4_signed_overrides(). The overrides alone are not
 *      enough: a client's X-Amz-Security-Token must also go when the rule has no session token.
 *   5. sigv4_signed_free().
 *
 * Limits, on purpose: only header-based signing (no presigned query signing); the S3 chunked
 * signed-payload upload mode (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD) signs
 * every chunk with the client's key and cannot be re-signed here, so the caller should refuse
 * it; SigV4a (multi-region access points) is not supported. */
#ifndef AUTHPROXY_SIGV4_H
#define AUTHPROXY_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "http1.h"

/* Hex SHA-256 of the empty string: the payload hash of a request without a body. */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* Payload hash of a body that is not hashed (streamed); S3 only. */
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* What current S3 SDKs send for an aws-chunked upload with an unsigned trailing checksum
 * (Content-Encoding: aws-chunked, x-amz-trailer). The body is not hashed either, so it can be
 * passed through as the payload hash; S3 only. */
#define SIGV4_STREAMING_UNSIGNED_TRAILER "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

#define SIGV4_REGION_MAX  32 /* buffer sizes, NUL included */
#define SIGV4_SERVICE_MAX 48

/* The credential scope of a host: where and as what the request is signed. */
struct sigv4_scope {
    char region[SIGV4_REGION_MAX];   /* "us-east-1", "cn-north-1" */
    char service[SIGV4_SERVICE_MAX]; /* the signing name: "s3", "bedrock", "execute-api" */
};

/* Derives the scope from the host a request goes to (a name without port; case does not
 * matter). Understood: "<service>.<region>.amazonaws.com" with any prefix labels (bucket,
 * account id, API id: "abc123.execute-api.us-east-1.amazonaws.com"), "-fips" service labels, a
 * "dualstack" label before the region, VPC endpoint names ending in ".vpce.amazonaws.com", the
 * ".amazonaws.com.cn" partition (region must then be a cn- region, and the other way round),
 * S3's forms without a region ("s3.amazonaws.com", "<bucket>.s3.amazonaws.com",
 * "s3-external-1": us-east-1; legacy "s3-<region>"), the global endpoints whose scope AWS fixes
 * (sts, iam, route53, cloudfront, waf, budgets, savingsplans: us-east-1; route53 and budgets in
 * China: cn-northwest-1), and the endpoint prefixes whose signing name differs from the host
 * label ("bedrock-runtime" → "bedrock", "runtime.sagemaker" → "sagemaker", "email" → "ses",
 * "data-ats.iot" → "iotdata", ...; table in sigv4.c, from botocore's service models).
 * Returns 0, or -1 with *err (static text) for a host it cannot place — not under
 * amazonaws.com[.cn], empty or invalid labels, no recognisable region where one is needed
 * ("s3-accelerate.amazonaws.com", "foo.amazonaws.com"). It never guesses a region. */
int sigv4_scope_from_host(const char *host, size_t host_len, struct sigv4_scope *out,
                          const char **err);

/* True if the service (a signing name) accepts SIGV4_UNSIGNED_PAYLOAD and
 * SIGV4_STREAMING_UNSIGNED_TRAILER: S3 and its variants (s3-object-lambda, s3-outposts). The same
 * services take the path as sent into the canonical request (no normalisation, no second
 * encoding). */
bool sigv4_unsigned_payload_allowed(const char *service);

/* True if a client field named name[0..len) (any case) is one the proxy owns when it signs:
 * Authorization, X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-Sha256. The caller removes
 * every such field the client sent before adding the signed ones. */
bool sigv4_is_signature_header(const char *name, size_t len);

/* Hex SHA-256 of data[0..len) into out (64 characters and a NUL). 0, or -1 if OpenSSL fails. */
int sigv4_sha256_hex(const void *data, size_t len, char out[65]);

/* Resolved credentials; secret material the caller owns (the compiled policy). */
struct sigv4_credentials {
    const char *access_key_id;     /* letters, digits and '_' */
    const char *secret_access_key; /* non-empty */
    const char *session_token;     /* NULL or "" when none; visible ASCII */
};

/* Flags for sigv4_request.flags. SIGV4_NO_CONTENT_SHA256: neither set nor sign
 * X-Amz-Content-Sha256 (the AWS test suite's vectors were made that way); the data path never
 * uses it. */
#define SIGV4_NO_CONTENT_SHA256 0x1u

/* The request as the proxy will forward it. Pointers are borrowed for the call only. */
struct sigv4_request {
    const char *method; /* as sent ("GET") */
    size_t method_len;
    const char *target; /* origin-form "/path?query", exactly as sent on the wire */
    size_t target_len;
    const struct http1_header *headers; /* the client's fields, as parsed by http1 */
    size_t n_headers;
    /* The Host field value the forwarded request carries; NULL means the client's Host field,
     * which must then be among headers (an HTTP/1.0 request without Host gets the value the
     * proxy adds for it). */
    const char *host_field;
    /* 64 lower-case hex characters (the body's SHA-256), SIGV4_UNSIGNED_PAYLOAD or
     * SIGV4_STREAMING_UNSIGNED_TRAILER (the last two only where sigv4_unsigned_payload_allowed). */
    const char *payload_hash;
    time_t now; /* signing time; X-Amz-Date is this in UTC */
    unsigned flags;
};

/* The result of signing. Holds no secret: the session token is only referenced. */
struct sigv4_signed {
    char *authorization; /* "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..." */
    char amz_date[17];   /* "20150830T123600Z" */
    char content_sha256[72];    /* X-Amz-Content-Sha256 value; "" with SIGV4_NO_CONTENT_SHA256 */
    const char *security_token; /* the credentials' session token, or NULL */
};

/* Signs req for scope with cred. Signed headers: host, x-amz-date, x-amz-content-sha256 (unless
 * SIGV4_NO_CONTENT_SHA256), x-amz-security-token when there is a session token, and every
 * content-type and x-amz-* field the client sent (except the signature fields, and except fields
 * its Connection field names, which the proxy does not forward); values trimmed, runs of spaces
 * and tabs collapsed to one space, repeated fields joined with ','. Canonical URI: S3-style
 * services take the path as sent; others get it with dot segments and empty segments removed and
 * percent-encoded once more (botocore's quote(normalize_url_path(path), safe='/~')). Canonical
 * query: the pairs split at '&' (empty pieces dropped), at the first '=' (a key without one gets
 * an empty value), percent- and '+'-decoded, re-encoded with only A-Z a-z 0-9 - _ . ~ left bare,
 * sorted by key then value. Returns 0 and fills *out (release with sigv4_signed_free), or -1 with
 * *err (static text that never contains credential material) and *out zeroed: malformed
 * percent-encoding in the query, a target not starting with '/', a bad payload hash, no Host,
 * credentials missing or not header-safe, a time that does not fit YYYY. The derived signing keys
 * are zeroed before return. */
int sigv4_sign(const struct sigv4_request *req, const struct sigv4_scope *scope,
               const struct sigv4_credentials *cred, struct sigv4_signed *out, const char **err);

#define SIGV4_MAX_OVERRIDES 4

/* Fills out[] with the fields to set on the forwarded request (Authorization, X-Amz-Date,
 * X-Amz-Content-Sha256 unless omitted, X-Amz-Security-Token when there is a session token) and
 * returns how many. The values point into s (and into the credentials for the token): use them
 * while both are alive and s is not moved. */
size_t sigv4_signed_overrides(const struct sigv4_signed *s,
                              struct http1_header_override out[SIGV4_MAX_OVERRIDES]);

void sigv4_signed_free(struct sigv4_signed *s);

/* The canonical request sigv4_sign signs, as a heap string: for tests and debugging. It contains
 * the session token: free it with secret_free and never log it. NULL with *err on the same
 * errors as sigv4_sign (the credentials are checked the same way; only the session token is
 * used). */
char *sigv4_canonical_request(const struct sigv4_request *req, const struct sigv4_scope *scope,
                              const struct sigv4_credentials *cred, const char **err);

#endif
