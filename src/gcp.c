/* gcp: service-account JSON, JWT assertion, token request and response. Contracts: gcp.h. */
#include "gcp.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "jws.h"
#include "util.h"

/* Longest error code / description of a token endpoint that goes into an error message. */
#define GCP_ERR_TEXT_MAX 200

struct gcp_sa {
    char *client_email;
    char *token_uri;
    char *private_key_id; /* NULL when absent */
    EVP_PKEY *key;        /* RSA */
};

/* Whether s[0..len) is non-empty printable ASCII without spaces: what an e-mail address, a key id
 * or a URL may hold here (they go into JWT claims, headers and request lines). */
static bool printable_word(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return false;
    return true;
}

/* The string member name of obj. 0 with *out (NULL when absent and !required); -1 with *err when
 * present but not a printable word, or absent and required. */
static int sa_string(const json_t *obj, const char *name, bool required, const char **out,
                     char **err)
{
    const json_t *v = json_object_get(obj, name);
    *out = NULL;
    if (v == NULL && !required)
        return 0;
    if (v == NULL) {
        *err = xasprintf("service account JSON: \"%s\" is missing", name);
        return -1;
    }
    if (!json_is_string(v) || !printable_word(json_string_value(v), json_string_length(v))) {
        *err = xasprintf("service account JSON: \"%s\" must be a non-empty string without spaces "
                         "or control characters",
                         name);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

/* Parses the PEM private key of the "private_key" member. 0 with *out, or -1 with *err. */
static int sa_key(const json_t *root, EVP_PKEY **out, char **err)
{
    const json_t *v = json_object_get(root, "private_key");
    EVP_PKEY *key = NULL;
    int rc = -1;
    if (!json_is_string(v)) {
        *err = xasprintf("service account JSON: \"private_key\" is missing or not a string");
        goto out;
    }
    BIO *bio = BIO_new_mem_buf(json_string_value(v), (int)json_string_length(v));
    /* An empty passphrase rather than a callback: an encrypted key fails instead of prompting. */
    key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"") : NULL;
    BIO_free(bio);
    if (key == NULL) {
        *err = xasprintf("service account JSON: \"private_key\" is not an unencrypted PEM "
                         "private key");
        goto out;
    }
    if (!EVP_PKEY_is_a(key, "RSA")) {
        *err = xasprintf("service account JSON: \"private_key\" is not an RSA key (RS256 needs "
                         "one)");
        goto out;
    }
    if (EVP_PKEY_get_bits(key) < GCP_MIN_RSA_BITS) {
        *err = xasprintf("service account JSON: \"private_key\" is a %d-bit RSA key; at least "
                         "%d bits are required",
                         EVP_PKEY_get_bits(key), GCP_MIN_RSA_BITS);
        goto out;
    }
    *out = key;
    key = NULL;
    rc = 0;
out:
    ERR_clear_error();
    EVP_PKEY_free(key);
    return rc;
}

int gcp_sa_parse(const char *json, struct gcp_sa **out, char **err)
{
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    const char *type = NULL, *email = NULL, *uri = NULL, *kid = NULL;
    EVP_PKEY *key = NULL;
    int rc = -1;
    *out = NULL;
    if (root == NULL) {
        /* Position only: jansson's message quotes the text near the error, which may be key. */
        *err = xasprintf("service account JSON is not valid JSON (line %d, column %d)", jerr.line,
                         jerr.column);
        goto out;
    }
    if (!json_is_object(root)) {
        *err = xasprintf("service account JSON must be an object");
        goto out;
    }
    if (sa_string(root, "type", false, &type, err) != 0)
        goto out;
    if (type != NULL && strcmp(type, "service_account") != 0) {
        *err = xasprintf("service account JSON: \"type\" is \"%s\"; only \"service_account\" "
                         "key files are supported",
                         type);
        goto out;
    }
    if (sa_string(root, "client_email", true, &email, err) != 0 ||
        sa_string(root, "token_uri", false, &uri, err) != 0 ||
        sa_string(root, "private_key_id", false, &kid, err) != 0)
        goto out;
    if (uri != NULL && (strncmp(uri, "https://", 8) != 0 || uri[8] == '\0' || uri[8] == '/')) {
        *err = xasprintf("service account JSON: \"token_uri\" must be an https:// URL");
        goto out;
    }
    if (sa_key(root, &key, err) != 0)
        goto out;
    struct gcp_sa *sa = xcalloc(1, sizeof(*sa));
    sa->client_email = xstrdup(email);
    sa->token_uri = xstrdup(uri ? uri : GCP_DEFAULT_TOKEN_URI);
    sa->private_key_id = kid ? xstrdup(kid) : NULL;
    sa->key = key;
    *out = sa;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

void gcp_sa_free(struct gcp_sa *sa)
{
    if (sa == NULL)
        return;
    EVP_PKEY_free(sa->key);
    free(sa->client_email);
    free(sa->token_uri);
    free(sa->private_key_id);
    free(sa);
}

const char *gcp_sa_client_email(const struct gcp_sa *sa)
{
    return sa->client_email;
}

const char *gcp_sa_token_uri(const struct gcp_sa *sa)
{
    return sa->token_uri;
}

const char *gcp_sa_private_key_id(const struct gcp_sa *sa)
{
    return sa->private_key_id;
}

bool gcp_scope_valid(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x21 || *c > 0x7e || *c == '"' || *c == '\\')
            return false;
    return true;
}

int gcp_build_assertion(const struct gcp_sa *sa, const char *const *scopes, size_t n, time_t now,
                        char **jwt, char **err)
{
    json_t *claims = NULL;
    char *scope = NULL;
    int rc = -1;
    *jwt = NULL;
    if (n == 0) {
        *err = xasprintf("gcp: at least one scope is required");
        goto out;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (!gcp_scope_valid(scopes[i])) {
            *err = xasprintf("gcp: scope %zu is not a valid OAuth scope (printable characters, "
                             "no spaces or quotes)",
                             i);
            goto out;
        }
        len += strlen(scopes[i]) + 1;
    }
    scope = xmalloc(len);
    scope[0] = '\0';
    for (size_t i = 0, o = 0; i < n; i++) {
        size_t l = strlen(scopes[i]);
        if (i > 0)
            scope[o++] = ' ';
        memcpy(scope + o, scopes[i], l + 1);
        o += l;
    }
    claims = json_object();
    json_object_set_new(claims, "iss", json_string(sa->client_email));
    json_object_set_new(claims, "scope", json_string(scope));
    json_object_set_new(claims, "aud", json_string(sa->token_uri));
    json_object_set_new(claims, "iat", json_integer((json_int_t)now));
    json_object_set_new(claims, "exp", json_integer((json_int_t)now + GCP_ASSERTION_LIFETIME));
    int s = jws_sign_compact(sa->key, JWS_ALG_RS256, sa->private_key_id, claims, jwt);
    if (s != JWS_OK) {
        *err = xasprintf("gcp: cannot sign the assertion: %s", jws_strerror(s));
        goto out;
    }
    rc = 0;
out:
    json_decref(claims);
    free(scope);
    return rc;
}

char *gcp_token_request_body(const char *jwt)
{
    for (const char *c = jwt; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            return NULL;
    return xasprintf("grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer"
                     "&assertion=%s",
                     jwt);
}

/* Whether s[0..len) is a token68 (RFC 7235 §2.1): token characters, then optional '=' padding. */
static bool token68(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len &&
           (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
            (s[i] != '\0' && strchr("-._~+/", s[i]) != NULL)))
        i++;
    if (i == 0)
        return false;
    while (i < len && s[i] == '=')
        i++;
    return i == len;
}

/* A copy of a string from the token endpoint fit for an error message: printable ASCII only
 * (others become '?'), at most GCP_ERR_TEXT_MAX characters. Heap. */
static char *sanitised(const char *s)
{
    size_t n = strnlen(s, GCP_ERR_TEXT_MAX);
    char *out = xstrndup(s, n);
    for (size_t i = 0; i < n; i++)
        if (out[i] < 0x20 || out[i] >= 0x7f)
            out[i] = '?';
    return out;
}

int gcp_parse_token_response(const char *body, size_t len, char **access_token,
                             unsigned *expires_in, char **err)
{
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    int rc = -1;
    if (!json_is_object(root)) {
        /* No parser message: it would quote the body, which may hold the token. */
        *err = xasprintf("gcp token response is not a JSON object");
        goto out;
    }
    const char *error = json_string_value(json_object_get(root, "error"));
    if (error != NULL) {
        const char *desc = json_string_value(json_object_get(root, "error_description"));
        char *e = sanitised(error), *d = desc ? sanitised(desc) : NULL;
        *err = xasprintf("gcp token endpoint refused: %s%s%s", e, d ? ": " : "", d ? d : "");
        free(e);
        free(d);
        goto out;
    }
    const json_t *tok = json_object_get(root, "access_token");
    if (!json_is_string(tok) || json_string_length(tok) > GCP_MAX_TOKEN_LEN ||
        !token68(json_string_value(tok), json_string_length(tok))) {
        *err = xasprintf("gcp token response: \"access_token\" is missing or not a non-empty "
                         "token68 string");
        goto out;
    }
    const json_t *exp = json_object_get(root, "expires_in");
    if (!json_is_integer(exp) || json_integer_value(exp) <= 0 ||
        json_integer_value(exp) > (json_int_t)UINT_MAX) {
        *err = xasprintf("gcp token response: \"expires_in\" is missing or not a positive "
                         "integer");
        goto out;
    }
    const json_t *type = json_object_get(root, "token_type");
    if (type != NULL &&
        (!json_is_string(type) ||
         !ascii_case_eq(json_string_value(type), json_string_length(type), "Bearer", 6))) {
        char *t = json_is_string(type) ? sanitised(json_string_value(type)) : xstrdup("non-string");
        *err = xasprintf("gcp token response: \"token_type\" is %s, not Bearer", t);
        free(t);
        goto out;
    }
    *access_token = xstrdup(json_string_value(tok));
    *expires_in = (unsigned)json_integer_value(exp);
    rc = 0;
out:
    json_decref(root);
    return rc;
}
