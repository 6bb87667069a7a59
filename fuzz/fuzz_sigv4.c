// fuzz-sources: src/sigv4.c src/http1.c src/glob.c src/util.c src/log.c
/* libFuzzer harness for sigv4, the signer of AWS requests a sandbox sends (its method, target,
 * Host and header values are attacker-controlled). The input is a raw request head. Properties:
 *
 * - sigv4_scope_from_host never accepts a host outside amazonaws.com[.cn] and fills a region and
 *   service of sane characters when it accepts one;
 * - a signed request's Authorization is "AWS4-HMAC-SHA256 Credential=<our key id>/..." of
 *   printable ASCII, every override it yields is sendable (http1_override_valid), and the
 *   canonical request never contains the secret key (unless the request quotes it);
 * - signing the same request twice gives the same signature (no dependence on stale state).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http1.h"
#include "sigv4.h"
#include "util.h"

static const char SECRET[] = "fuzzSECRETfuzzSECRETfuzzSECRET0123456789";

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http1_request *req = malloc(sizeof(*req));
    size_t head_len = 0;
    if (http1_parse_request((const char *)data, size, 8192, req, &head_len) != HTTP1_OK ||
        req->host == NULL || req->is_connect)
        goto out;
    char host[256];
    size_t hl = req->host->value_len < sizeof(host) - 1 ? req->host->value_len : sizeof(host) - 1;
    memcpy(host, req->host->value, hl);
    host[hl] = '\0';
    char *colon = strchr(host, ':');
    if (colon)
        *colon = '\0';
    struct sigv4_scope scope;
    const char *err = NULL;
    if (sigv4_scope_from_host(host, strlen(host), &scope, &err) != 0) {
        CHECK(err != NULL);
        goto out;
    }
    char lower[256];
    for (size_t i = 0; i <= strlen(host); i++)
        lower[i] = (char)(host[i] >= 'A' && host[i] <= 'Z' ? host[i] + 32 : host[i]);
    CHECK(ends_with(lower, ".amazonaws.com") || ends_with(lower, ".amazonaws.com.cn") ||
          ends_with(lower, ".amazonaws.com.") || ends_with(lower, ".amazonaws.com.cn."));
    CHECK(scope.region[0] != '\0' && scope.service[0] != '\0');
    for (const char *p = scope.region; *p; p++)
        CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-');
    /* (AWS signing names are not all lowercase: secure tunneling's is "IoTSecuredTunneling") */
    for (const char *p = scope.service; *p; p++)
        CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.' || *p == '_');

    struct sigv4_request sr = {
        .method = req->method,
        .method_len = req->method_len,
        .target = req->target,
        .target_len = req->target_len,
        .headers = req->headers,
        .n_headers = req->n_headers,
        .payload_hash = SIGV4_EMPTY_SHA256,
        .now = 1700000000,
    };
    struct sigv4_credentials cred = {"AKIDFUZZ", SECRET, size % 2 ? "fuzz-session-token" : NULL};
    struct sigv4_signed a, b;
    if (sigv4_sign(&sr, &scope, &cred, &a, &err) != 0) {
        CHECK(err != NULL && strstr(err, SECRET) == NULL);
        goto out;
    }
    CHECK(strncmp(a.authorization, "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/", 37) == 0);
    for (const char *p = a.authorization; *p; p++)
        CHECK(*p >= 0x20 && *p < 0x7f);
    struct http1_header_override ov[SIGV4_MAX_OVERRIDES];
    size_t n = sigv4_signed_overrides(&a, ov);
    for (size_t i = 0; i < n; i++)
        CHECK(http1_override_valid(&ov[i]));
    CHECK(sigv4_sign(&sr, &scope, &cred, &b, &err) == 0);
    CHECK(strcmp(a.authorization, b.authorization) == 0);
    char *creq = sigv4_canonical_request(&sr, &scope, &cred, &err);
    CHECK(creq != NULL);
    if (memmem(data, size, SECRET, 10) == NULL) /* (unless the request itself quotes it) */
        CHECK(strstr(creq, SECRET) == NULL);
    secret_free(creq);
    sigv4_signed_free(&a);
    sigv4_signed_free(&b);
out:
    free(req);
    return 0;
}
