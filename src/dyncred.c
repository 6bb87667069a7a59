#include "dyncred.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "gcp.h"
#include "httpc.h"
#include "jws.h"
#include "log.h"
#include "signkeys.h"
#include "util.h"

/* Token endpoint answers are cached until this long before they expire (or half their life,
 * when shorter), so a token is never used in its last moments. */
#define GCP_REFRESH_MARGIN_S 300

enum fetch_kind { FETCH_CALLBACK = 1, FETCH_GCP };

/* One exchange in flight for one cache key, on the worker that started it. It belongs to no
 * connection: the askers may go away, the answer is still cached for the next ones. */
struct dyncred_fetch {
    LIST_ENTRY(dyncred_fetch) link; /* in w->fetches */
    struct worker *w;
    enum fetch_kind kind;
    uint8_t key[CREDCACHE_KEY_LEN];
    unsigned ttl_seconds; /* callbacks */
    struct httpc *http;
    char *what; /* for the log: the callback URL or the token endpoint (no secret) */
};

/* ---- keys ---- */

static void hash_str(EVP_MD_CTX *sha, const char *s)
{
    const char *v = s ? s : "";
    EVP_DigestUpdate(sha, v, strlen(v) + 1); /* with the NUL: fields cannot run into each other */
}

/* A SHA-256 context; OpenSSL failing here is out of memory (util.h policy: abort). */
static EVP_MD_CTX *sha256_begin(void)
{
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    if (sha == NULL || EVP_DigestInit_ex(sha, sha256_md(), NULL) != 1)
        abort();
    return sha;
}

static void sha256_end(EVP_MD_CTX *sha, uint8_t key[CREDCACHE_KEY_LEN])
{
    unsigned len = 0;
    if (EVP_DigestFinal_ex(sha, key, &len) != 1 || len != CREDCACHE_KEY_LEN)
        abort();
    EVP_MD_CTX_free(sha);
}

void dyncred_callback_key(const struct policy_callback *cb, const struct dyncred_request *rq,
                          uint8_t key[CREDCACHE_KEY_LEN])
{
    EVP_MD_CTX *sha = sha256_begin();
    /* Numbers as fixed-width bytes (no snprintf on the request path); the key never leaves
     * this process, so its byte layout is free to change. */
    uint8_t num[7] = {(uint8_t)(cb->ttl_seconds >> 24), (uint8_t)(cb->ttl_seconds >> 16),
                      (uint8_t)(cb->ttl_seconds >> 8),  (uint8_t)cb->ttl_seconds,
                      (uint8_t)cb->full_request,        (uint8_t)(rq->port >> 8),
                      (uint8_t)rq->port};
    hash_str(sha, "callback");
    hash_str(sha, rq->tenant_id);
    hash_str(sha, rq->sandbox_id);
    hash_str(sha, cb->url);
    EVP_DigestUpdate(sha, num, 5);
    for (size_t i = 0; i < cb->n_request_headers; i++) {
        hash_str(sha, cb->request_headers[i].name);
        hash_str(sha, cb->request_headers[i].value);
    }
    hash_str(sha, rq->host);
    EVP_DigestUpdate(sha, num + 5, 2);
    if (cb->full_request) {
        size_t path_len = 0;
        while (path_len < rq->target_len && rq->target[path_len] != '?')
            path_len++;
        hash_str(sha, rq->method);
        EVP_DigestUpdate(sha, rq->target, path_len);
    }
    sha256_end(sha, key);
}

void dyncred_gcp_key(const struct policy_rule *rule, uint8_t key[CREDCACHE_KEY_LEN])
{
    EVP_MD_CTX *sha = sha256_begin();
    hash_str(sha, "gcp");
    hash_str(sha, rule->gcp.service_account_json);
    for (size_t i = 0; i < rule->gcp.n_scopes; i++)
        hash_str(sha, rule->gcp.scopes[i]);
    sha256_end(sha, key);
}

/* ---- answers ---- */

struct cred_headers *dyncred_parse_callback_answer(const char *body, size_t len)
{
    struct cred_headers *out = NULL;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *headers = json_is_object(root) ? json_object_get(root, "headers") : NULL;
    if (!json_is_object(headers) || json_object_size(headers) > DYNCRED_MAX_HEADERS)
        goto out;
    const char *name;
    json_t *value;
    json_object_foreach(headers, name, value)
    {
        struct http1_header_override o = {name, json_string_value(value)};
        if (!json_is_string(value) || strlen(o.value) != json_string_length(value) ||
            !http1_override_valid(&o))
            goto out;
    }
    out = cred_headers_new(json_object_size(headers));
    size_t i = 0;
    json_object_foreach(headers, name, value)
    {
        out->h[i].name = xstrdup(name);
        out->h[i].value = xstrdup(json_string_value(value));
        i++;
    }
out:
    if (root) {
        policy_json_zero_strings(root);
        json_decref(root);
    }
    return out;
}

/* ---- exchanges ---- */

static void fetch_free(struct dyncred_fetch *f)
{
    LIST_REMOVE(f, link);
    httpc_cancel(f->http);
    free(f->what);
    free(f);
}

/* Ends f's flight with h (consumed; NULL: failure) and frees f. */
static void fetch_finish(struct dyncred_fetch *f, struct cred_headers *h, uint64_t expires_us)
{
    f->http = NULL; /* finished (or never started): nothing to cancel */
    credcache_complete(f->w->shared->credcache, f->key, h, expires_us);
    fetch_free(f);
}

static void callback_done(const struct httpc_response *resp, const char *error, void *arg)
{
    struct dyncred_fetch *f = arg;
    struct cred_headers *h = NULL;
    if (resp == NULL) {
        log_warn("callback %s: %s", f->what, error);
    } else if (resp->status < 200 || resp->status > 299) {
        log_warn("callback %s: answered %d", f->what, resp->status);
    } else if ((h = dyncred_parse_callback_answer(resp->body, resp->body_len)) == NULL) {
        log_warn("callback %s: the answer is not {\"headers\": {name: string value, ...}}",
                 f->what);
    }
    fetch_finish(f, h, monotonic_us() + (uint64_t)f->ttl_seconds * 1000000u);
}

static void gcp_done(const struct httpc_response *resp, const char *error, void *arg)
{
    struct dyncred_fetch *f = arg;
    struct cred_headers *h = NULL;
    uint64_t expires_us = 0;
    char *token = NULL, *err = NULL;
    unsigned expires_in = 0;
    if (resp == NULL) {
        log_warn("gcp token endpoint %s: %s", f->what, error);
    } else if (resp->status != 200) {
        /* Google explains a refusal in the body ({"error", "error_description"}) */
        (void)gcp_parse_token_response(resp->body, resp->body_len, &token, &expires_in, &err);
        log_warn("gcp token endpoint %s: answered %d%s%s", f->what, resp->status, err ? ": " : "",
                 err ? err : "");
        secret_free(token);
        token = NULL;
    } else if (gcp_parse_token_response(resp->body, resp->body_len, &token, &expires_in, &err) !=
               0) {
        log_warn("gcp token endpoint %s: %s", f->what, err ? err : "invalid answer");
    } else {
        unsigned margin =
            expires_in / 2 < GCP_REFRESH_MARGIN_S ? expires_in / 2 : GCP_REFRESH_MARGIN_S;
        h = cred_headers_new(1);
        h->h[0].name = xstrdup("Authorization");
        h->h[0].value = xasprintf("Bearer %s", token);
        expires_us = monotonic_us() + (uint64_t)(expires_in - margin) * 1000000u;
    }
    secret_free(token);
    free(err);
    fetch_finish(f, h, expires_us);
}

static struct dyncred_fetch *fetch_new(struct worker *w, enum fetch_kind kind,
                                       const uint8_t key[CREDCACHE_KEY_LEN], const char *what)
{
    struct dyncred_fetch *f = xcalloc(1, sizeof(*f));
    f->w = w;
    f->kind = kind;
    memcpy(f->key, key, CREDCACHE_KEY_LEN);
    f->what = xstrdup(what);
    LIST_INSERT_HEAD(&w->fetches, f, link);
    return f;
}

/* The JSON body of a callback request (SPEC §4). Caller frees (secret_free: it may carry the
 * sandbox's request headers). */
static char *callback_body(const struct policy_callback *cb, const struct dyncred_request *rq)
{
    json_t *o = json_object();
    json_object_set_new(o, "host", json_string(rq->host));
    json_object_set_new(o, "port", json_integer(rq->port));
    json_t *id = json_object();
    /* Strings always (the hosted SDK's verifier requires them): "" for the config file's
     * clients, which belong to no workspace or box. */
    json_object_set_new(id, "tenant_id", json_string(rq->tenant_id ? rq->tenant_id : ""));
    json_object_set_new(id, "sandbox_id", json_string(rq->sandbox_id ? rq->sandbox_id : ""));
    json_object_set_new(o, "identity", id);
    if (cb->full_request) {
        size_t path_len = 0;
        while (path_len < rq->target_len && rq->target[path_len] != '?')
            path_len++;
        const char *query = path_len < rq->target_len ? rq->target + path_len + 1 : "";
        size_t query_len = path_len < rq->target_len ? rq->target_len - path_len - 1 : 0;
        bool default_port = rq->port == (strcmp(rq->scheme, "https") == 0 ? 443 : 80);
        bool v6 = strchr(rq->host, ':') != NULL;
        char authority[300];
        snprintf(authority, sizeof(authority), v6 ? "[%s]" : "%s", rq->host);
        if (!default_port)
            snprintf(authority + strlen(authority), sizeof(authority) - strlen(authority), ":%u",
                     rq->port);
        json_t *r = json_object();
        json_object_set_new(r, "method", json_string(rq->method));
        json_object_set_new(
            r, "url",
            json_sprintf("%s://%s%.*s", rq->scheme, authority, (int)rq->target_len, rq->target));
        json_object_set_new(r, "scheme", json_string(rq->scheme));
        json_object_set_new(r, "host", json_string(rq->host));
        json_object_set_new(r, "path", json_stringn(rq->target, path_len));
        json_object_set_new(r, "query", json_stringn(query, query_len));
        json_t *hs = json_object();
        for (size_t i = 0; i < rq->n_headers; i++) {
            char *name = ascii_lower_str(xstrndup(rq->headers[i].name, rq->headers[i].name_len));
            if (strcmp(name, "proxy-authorization") != 0) {
                json_t *list = json_object_get(hs, name);
                if (list == NULL) {
                    list = json_array();
                    json_object_set_new(hs, name, list);
                }
                json_array_append_new(list,
                                      json_stringn(rq->headers[i].value, rq->headers[i].value_len));
            }
            free(name);
        }
        json_object_set_new(r, "headers", hs);
        char *b64 = xmalloc(4 * ((rq->body_len + 2) / 3) + 1);
        EVP_EncodeBlock((unsigned char *)b64, rq->body, (int)rq->body_len);
        json_object_set_new(r, "body_base64", json_string(b64));
        secret_free(b64);
        json_object_set_new(r, "body_truncated", json_boolean(rq->body_truncated));
        json_object_set_new(o, "request", r);
    }
    char *text = json_dumps(o, JSON_COMPACT);
    policy_json_zero_strings(o);
    json_decref(o);
    if (text == NULL)
        abort(); /* jansson only fails on allocation: the documented OOM policy */
    return text;
}

enum credcache_result
dyncred_callback_resolve(struct worker *w, struct snapshot *snap, const struct policy_callback *cb,
                         const struct dyncred_request *rq, const uint8_t key[CREDCACHE_KEY_LEN],
                         credcache_cb done, void *arg, struct cred_headers **hit,
                         struct credcache_waiter **waiter)
{
    enum credcache_result res = credcache_lookup(w->shared->credcache, key, monotonic_us(), w->base,
                                                 done, arg, hit, waiter);
    if (res != CREDCACHE_LEAD)
        return res;
    struct dyncred_fetch *f = fetch_new(w, FETCH_CALLBACK, key, cb->url);
    f->ttl_seconds = cb->ttl_seconds;
    char *body = callback_body(cb, rq);
    char *jwt = NULL;
    char *err = NULL;
    struct httpc_header *hs = xcalloc(cb->n_request_headers + 3, sizeof(*hs));
    size_t n = 0;
    struct signkeys *keys = w->shared->signkeys;
    if (keys == NULL) {
        log_warn("callback %s: no signing keys in this process: refused", cb->url);
        goto fail;
    }
    if (signkeys_reload(keys, &err) != 0) { /* a rotation by another process; cheap otherwise */
        log_warn("callback signing keys: %s (signing with the keys loaded before)", err);
        free(err);
        err = NULL;
    }
    int rc = signkeys_sign_callback(keys, w->shared->callback_issuer, cb->url,
                                    (const unsigned char *)body, strlen(body), time(NULL), &jwt);
    if (rc != 0) {
        log_warn("callback %s: cannot sign the request: %s", cb->url, jws_strerror(rc));
        goto fail;
    }
    hs[n++] = (struct httpc_header){"Content-Type", "application/json"};
    hs[n++] = (struct httpc_header){"User-Agent", "authproxy/" AUTHPROXY_VERSION};
    hs[n++] = (struct httpc_header){SIGNKEYS_HEADER, jwt};
    for (size_t i = 0; i < cb->n_request_headers; i++)
        hs[n++] = (struct httpc_header){cb->request_headers[i].name, cb->request_headers[i].value};
    struct httpc_request hr = {.method = "POST",
                               .url = cb->url,
                               .headers = hs,
                               .n_headers = n,
                               .body = body,
                               .body_len = strlen(body),
                               .timeout_ms = snap->config->limits.callback_timeout_ms,
                               .max_body = DYNCRED_RESPONSE_MAX};
    f->http = httpc_start(w, snap, &hr, callback_done, f);
    if (f->http == NULL)
        log_warn("callback %s: not a usable URL or request header", cb->url);
fail:
    free(hs);
    free(jwt);
    free(err);
    secret_free(body);
    if (f->http == NULL)
        fetch_finish(f, NULL, 0); /* fail closed: every waiter, ours included, hears it */
    return res;
}

enum credcache_result dyncred_gcp_resolve(struct worker *w, struct snapshot *snap,
                                          const struct policy_rule *rule,
                                          const uint8_t key[CREDCACHE_KEY_LEN], credcache_cb done,
                                          void *arg, struct cred_headers **hit,
                                          struct credcache_waiter **waiter)
{
    enum credcache_result res = credcache_lookup(w->shared->credcache, key, monotonic_us(), w->base,
                                                 done, arg, hit, waiter);
    if (res != CREDCACHE_LEAD)
        return res;
    struct gcp_sa *sa = NULL;
    char *err = NULL, *jwt = NULL, *body = NULL;
    struct dyncred_fetch *f = fetch_new(w, FETCH_GCP, key, "(service account)");
    if (gcp_sa_parse(rule->gcp.service_account_json, &sa, &err) != 0) {
        log_warn("gcp rule %s: %s", rule->name, err ? err : "invalid service account");
        goto out;
    }
    free(f->what);
    f->what = xstrdup(gcp_sa_token_uri(sa));
    if (gcp_build_assertion(sa, (const char *const *)rule->gcp.scopes, rule->gcp.n_scopes,
                            time(NULL), &jwt, &err) != 0) {
        log_warn("gcp rule %s: cannot sign the assertion: %s", rule->name, err ? err : "?");
        goto out;
    }
    body = gcp_token_request_body(jwt);
    struct httpc_header hs[] = {{"Content-Type", "application/x-www-form-urlencoded"},
                                {"User-Agent", "authproxy/" AUTHPROXY_VERSION}};
    struct httpc_request hr = {.method = "POST",
                               .url = gcp_sa_token_uri(sa),
                               .headers = hs,
                               .n_headers = 2,
                               .body = body,
                               .body_len = strlen(body),
                               .timeout_ms = snap->config->limits.callback_timeout_ms,
                               .max_body = DYNCRED_RESPONSE_MAX};
    f->http = httpc_start(w, snap, &hr, gcp_done, f);
    if (f->http == NULL)
        log_warn("gcp rule %s: token_uri is not a usable URL", rule->name);
out:
    if (f->http == NULL)
        fetch_finish(f, NULL, 0);
    gcp_sa_free(sa);
    secret_free(jwt);
    secret_free(body);
    free(err);
    return res;
}

void dyncred_worker_shutdown(struct worker *w)
{
    struct dyncred_fetch *f;
    while ((f = LIST_FIRST(&w->fetches)) != NULL) {
        httpc_cancel(f->http);
        fetch_finish(f, NULL, 0);
    }
}
