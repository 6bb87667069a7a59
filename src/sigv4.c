/* sigv4: AWS Signature Version 4 (see sigv4.h for the contract).
 *
 * References: AWS "Create a canonical request for Signature Version 4" and botocore's
 * auth.SigV4Auth / S3SigV4Auth, whose output the tests compare against. Where the AWS text is
 * vague, botocore's behaviour is what we follow, since it is what AWS services accept from the
 * most widely used client: non-S3 paths are normalised (RFC 3986 dot segments, empty segments
 * dropped) and encoded a second time; S3 paths are signed as sent.
 *
 * Secret handling: the secret access key only ever enters the HMAC chain through a heap buffer
 * "AWS4" + secret that is zeroed before it is freed, and every derived key (kDate, kRegion,
 * kService, kSigning) lives in one stack array zeroed on the single exit path. The canonical
 * request holds the session token, so the buffer it is built in is zeroed whenever it grows
 * and when it is freed. */
#include "sigv4.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SIGV4_HOST_MAX  253
#define SIGV4_LABEL_MAX 63
#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"

/* ---- A growable string whose old storage is zeroed (it may hold the session token). ---- */

struct sv_buf {
    char *p;
    size_t len;
    size_t cap;
};

static void sv_put(struct sv_buf *b, const void *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = xmalloc(cap);
        if (b->p != NULL) {
            memcpy(p, b->p, b->len);
            secure_zero(b->p, b->cap);
            free(b->p);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sv_puts(struct sv_buf *b, const char *s)
{
    sv_put(b, s, strlen(s));
}

static void sv_putc(struct sv_buf *b, char c)
{
    sv_put(b, &c, 1);
}

static void sv_free(struct sv_buf *b)
{
    if (b->p != NULL) {
        secure_zero(b->p, b->cap);
        free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- Host → credential scope ---- */

/* Endpoint prefixes (the labels left of the region, matched at a label boundary, longest match
 * first) whose signing name is not simply the label next to the region. From the "metadata"
 * (endpointPrefix, signingName) of botocore's service models, plus S3 access points / control and
 * DynamoDB account endpoints, which come from endpoint rules. */
static const struct {
    const char *prefix;
    const char *signing_name;
} sigv4_signing_names[] = {
    {"agreement-marketplace", "aws-marketplace"},
    {"api.fleethub.iot", "iotfleethub"},
    {"api.tunneling.iot", "IoTSecuredTunneling"},
    {"appconfigdata", "appconfig"},
    {"appstream2", "appstream"},
    {"backupstorage", "backup-storage"},
    {"bedrock-agent", "bedrock"},
    {"bedrock-agent-runtime", "bedrock"},
    {"bedrock-agentcore-control", "bedrock-agentcore"},
    {"bedrock-data-automation", "bedrock"},
    {"bedrock-data-automation-runtime", "bedrock"},
    {"bedrock-runtime", "bedrock"},
    {"cassandra-streams", "cassandra"},
    {"cloudhsmv2", "cloudhsm"},
    {"cloudsearchdomain", "cloudsearch"},
    {"contact-lens", "connect"},
    {"data-ats.iot", "iotdata"},
    {"data-signer", "signer"},
    {"data.iot", "iotdata"},
    {"data.iotevents", "ioteventsdata"},
    {"data.jobs.iot", "iot-jobs-data"},
    {"ddb", "dynamodb"},
    {"deployment-marketplace", "aws-marketplace"},
    {"discovery-marketplace", "aws-marketplace"},
    {"email", "ses"},
    {"forecastquery", "forecast"},
    {"identity-chime", "chime"},
    {"ivsrealtime", "ivs"},
    {"mail-manager", "ses"},
    {"marketplace", "aws-marketplace"},
    {"media-pipelines-chime", "chime"},
    {"meetings-chime", "chime"},
    {"memory-db", "memorydb"},
    {"messaging-chime", "chime"},
    {"migrationhub-config", "mgh"},
    {"models-v2-lex", "lex"},
    {"oidc", "sso-oauth"},
    {"participant.connect", "execute-api"},
    {"personalize-events", "personalize"},
    {"personalize-runtime", "personalize"},
    {"pinpoint", "mobiletargeting"},
    {"portal.sso", "awsssoportal"},
    {"reporting-marketplace", "aws-marketplace"},
    {"runtime-v2-lex", "lex"},
    {"s3-accesspoint", "s3"},
    {"s3-control", "s3"},
    {"servicecatalog-appregistry", "servicecatalog"},
    {"sms-voice.pinpoint", "sms-voice"},
    {"voice-chime", "chime"},
};

/* Global endpoints: "<label>.<suffix>" with a credential scope AWS fixes (botocore's
 * endpoints.json, partitionEndpoint credentialScope). */
static const struct {
    const char *label;
    bool china; /* ".amazonaws.com.cn" rather than ".amazonaws.com" */
    const char *region;
    const char *service;
} sigv4_global_endpoints[] = {
    {"budgets", false, "us-east-1", "budgets"},
    {"cloudfront", false, "us-east-1", "cloudfront"},
    {"iam", false, "us-east-1", "iam"},
    {"route53", false, "us-east-1", "route53"},
    {"s3", false, "us-east-1", "s3"},
    {"s3-external-1", false, "us-east-1", "s3"},
    {"savingsplans", false, "us-east-1", "savingsplans"},
    {"sts", false, "us-east-1", "sts"},
    {"waf", false, "us-east-1", "waf"},
    {"budgets", true, "cn-northwest-1", "budgets"},
    {"route53", true, "cn-northwest-1", "route53"},
};

struct sv_label {
    const char *s;
    size_t len;
};

static bool sv_is_lower(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool sv_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool sv_label_is(const struct sv_label *l, const char *lit)
{
    return l->len == strlen(lit) && memcmp(l->s, lit, l->len) == 0;
}

/* A region name: two letters, one or more letter groups, a number ("us-east-1",
 * "us-gov-west-1", "cn-northwest-1", "eu-isoe-west-1"). */
static bool sv_region_valid(const char *s, size_t len)
{
    size_t i = 0, groups = 0;
    if (len < 6 || len >= SIGV4_REGION_MAX || !sv_is_lower(s[0]) || !sv_is_lower(s[1]) ||
        s[2] != '-')
        return false;
    i = 3;
    for (;;) {
        size_t start = i;
        while (i < len && sv_is_lower(s[i]))
            i++;
        if (i == start)
            break;
        groups++;
        if (i >= len || s[i] != '-')
            return false;
        i++;
    }
    if (groups == 0 || i >= len)
        return false;
    for (; i < len; i++)
        if (!sv_is_digit(s[i]))
            return false;
    return true;
}

static void sv_set_scope(struct sigv4_scope *out, const char *region, size_t region_len,
                         const char *service, size_t service_len)
{
    memcpy(out->region, region, region_len);
    out->region[region_len] = '\0';
    memcpy(out->service, service, service_len);
    out->service[service_len] = '\0';
}

/* The signing name of the endpoint prefix labels[0..n) (n >= 1; the last label already stripped
 * of "-fips"), into *name / *name_len. */
static void sv_signing_name(const struct sv_label *labels, size_t n, const char **name,
                            size_t *name_len)
{
    /* The labels are consecutive in the host string, so the prefix is one span of it. */
    const char *span = labels[0].s;
    size_t span_len = (size_t)(labels[n - 1].s - labels[0].s) + labels[n - 1].len;
    size_t best_len = 0;
    *name = labels[n - 1].s;
    *name_len = labels[n - 1].len;
    for (size_t i = 0; i < ARRAY_LEN(sigv4_signing_names); i++) {
        const char *p = sigv4_signing_names[i].prefix;
        size_t plen = strlen(p);
        if (plen > span_len || plen <= best_len)
            continue;
        const char *tail = span + span_len - plen;
        if (memcmp(tail, p, plen) != 0 || (tail != span && tail[-1] != '.'))
            continue;
        best_len = plen;
        *name = sigv4_signing_names[i].signing_name;
        *name_len = strlen(*name);
    }
}

/* Exported: see sigv4.h. */
int sigv4_scope_from_host(const char *host, size_t host_len, struct sigv4_scope *out,
                          const char **err)
{
    char h[SIGV4_HOST_MAX + 1];
    struct sv_label labels[SIGV4_HOST_MAX / 2 + 1];
    size_t n = 0;
    bool china = false;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    *err = "host name is empty, too long or not a DNS name";
    if (host == NULL || host_len == 0 || host_len > SIGV4_HOST_MAX)
        goto out;
    for (size_t i = 0; i < host_len; i++) {
        char c = ascii_lower(host[i]);
        if (!sv_is_lower(c) && !sv_is_digit(c) && c != '-' && c != '_' && c != '.')
            goto out;
        h[i] = c;
    }
    h[host_len] = '\0';

    /* Split into labels; an empty label (leading, trailing or doubled dot) is refused. */
    for (size_t start = 0;;) {
        const char *dot = memchr(h + start, '.', host_len - start);
        size_t end = dot ? (size_t)(dot - h) : host_len;
        if (end == start || end - start > SIGV4_LABEL_MAX)
            goto out;
        labels[n].s = h + start;
        labels[n].len = end - start;
        n++;
        if (dot == NULL)
            break;
        start = end + 1;
    }

    *err = "host is not an AWS endpoint (amazonaws.com or amazonaws.com.cn)";
    if (n >= 3 && sv_label_is(&labels[n - 1], "cn") && sv_label_is(&labels[n - 2], "com") &&
        sv_label_is(&labels[n - 3], "amazonaws")) {
        china = true;
        n -= 3;
    } else if (n >= 2 && sv_label_is(&labels[n - 1], "com") &&
               sv_label_is(&labels[n - 2], "amazonaws")) {
        n -= 2;
    } else {
        goto out;
    }
    if (n == 0)
        goto out;
    /* VPC endpoint names: "vpce-….<service>.<region>.vpce.amazonaws.com". */
    if (n >= 3 && sv_label_is(&labels[n - 1], "vpce"))
        n--;

    *err = "cannot tell the AWS region and service from the host name";
    const struct sv_label *last = &labels[n - 1];
    if (sv_region_valid(last->s, last->len)) {
        bool cn_region = last->len > 3 && memcmp(last->s, "cn-", 3) == 0;
        if (cn_region != china) {
            *err = "the region in the host name does not belong to its AWS partition";
            goto out;
        }
        size_t k = n - 1; /* labels[0..k) are the endpoint prefix */
        if (k >= 2 && sv_label_is(&labels[k - 1], "dualstack"))
            k--;
        if (k == 0 || sv_label_is(&labels[k - 1], "dualstack"))
            goto out;
        struct sv_label svc[SIGV4_HOST_MAX / 2 + 1];
        memcpy(svc, labels, k * sizeof(*svc));
        if (svc[k - 1].len > 5 && memcmp(svc[k - 1].s + svc[k - 1].len - 5, "-fips", 5) == 0)
            svc[k - 1].len -= 5;
        const char *name;
        size_t name_len;
        sv_signing_name(svc, k, &name, &name_len);
        if (name_len >= SIGV4_SERVICE_MAX)
            goto out;
        sv_set_scope(out, last->s, last->len, name, name_len);
        rc = 0;
        goto out;
    }

    /* No region label: a global endpoint (one label), or S3 without a region, with or without
     * a bucket in front. */
    if (n == 1) {
        struct sv_label l = *last;
        if (l.len > 5 && memcmp(l.s + l.len - 5, "-fips", 5) == 0)
            l.len -= 5;
        for (size_t i = 0; i < ARRAY_LEN(sigv4_global_endpoints); i++) {
            if (sigv4_global_endpoints[i].china != china ||
                !sv_label_is(&l, sigv4_global_endpoints[i].label))
                continue;
            const char *r = sigv4_global_endpoints[i].region;
            const char *s = sigv4_global_endpoints[i].service;
            sv_set_scope(out, r, strlen(r), s, strlen(s));
            rc = 0;
            goto out;
        }
    }
    if (!china && (sv_label_is(last, "s3") || sv_label_is(last, "s3-external-1"))) {
        sv_set_scope(out, "us-east-1", 9, "s3", 2); /* "<bucket>.s3.amazonaws.com" */
        rc = 0;
        goto out;
    }
    /* Legacy S3 names: "s3-us-west-2.amazonaws.com", "<bucket>.s3-us-west-2.amazonaws.com". */
    if (!china && last->len > 3 && memcmp(last->s, "s3-", 3) == 0 &&
        sv_region_valid(last->s + 3, last->len - 3) && memcmp(last->s + 3, "cn-", 3) != 0) {
        sv_set_scope(out, last->s + 3, last->len - 3, "s3", 2);
        rc = 0;
        goto out;
    }
out:
    if (rc == 0)
        *err = NULL;
    return rc;
}

/* Exported: see sigv4.h. */
bool sigv4_unsigned_payload_allowed(const char *service)
{
    return service != NULL &&
           (strcmp(service, "s3") == 0 || strcmp(service, "s3-object-lambda") == 0 ||
            strcmp(service, "s3-outposts") == 0);
}

/* Exported: see sigv4.h. */
bool sigv4_is_signature_header(const char *name, size_t len)
{
    static const char *const names[] = {"authorization", "x-amz-date", "x-amz-security-token",
                                        "x-amz-content-sha256"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (ascii_case_eq(name, len, names[i], strlen(names[i])))
            return true;
    return false;
}

/* ---- Crypto (OpenSSL) ---- */

/* Exported: see sigv4.h. */
int sigv4_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;
    if (EVP_Digest(data, len, md, &md_len, sha256_md(), NULL) != 1 || md_len != sizeof(md))
        return -1;
    hex_encode(md, sizeof(md), out);
    return 0;
}

/* HMAC-SHA256(key, msg) into out[32]. 0, or -1 if OpenSSL fails. */
static int sv_hmac(const unsigned char *key, size_t key_len, const void *msg, size_t msg_len,
                   unsigned char out[32])
{
    size_t out_len = 0;
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, msg, msg_len, out, 32,
                  &out_len) == NULL ||
        out_len != 32)
        return -1;
    return 0;
}

/* ---- Canonical request ---- */

static bool sv_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

/* Appends s[0..n) percent-encoded: unreserved bytes (and '/' when keep_slash) bare, every
 * other byte as %XX with upper-case hex. */
static void sv_put_encoded(struct sv_buf *b, const unsigned char *s, size_t n, bool keep_slash)
{
    static const char digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        if (sv_unreserved(s[i]) || (keep_slash && s[i] == '/')) {
            sv_putc(b, (char)s[i]);
        } else {
            char esc[3] = {'%', digits[s[i] >> 4], digits[s[i] & 0xf]};
            sv_put(b, esc, 3);
        }
    }
}

/* The canonical URI of a non-S3 service: dot segments resolved and empty segments dropped on the
 * path as sent (botocore's remove_dot_segments), then the result percent-encoded once more. */
static void sv_put_normalized_path(struct sv_buf *b, const char *path, size_t len)
{
    struct sv_label *segs = xcalloc(len + 1, sizeof(*segs));
    size_t n = 0;
    for (size_t start = 0; start <= len;) {
        const char *slash = memchr(path + start, '/', len - start);
        size_t end = slash ? (size_t)(slash - path) : len;
        size_t sl = end - start;
        if (sl == 2 && path[start] == '.' && path[start + 1] == '.') {
            if (n > 0)
                n--;
        } else if (sl > 0 && !(sl == 1 && path[start] == '.')) {
            segs[n].s = path + start;
            segs[n].len = sl;
            n++;
        }
        start = end + 1;
    }
    sv_putc(b, '/'); /* the path always starts with '/' here */
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            sv_putc(b, '/');
        sv_put_encoded(b, (const unsigned char *)segs[i].s, segs[i].len, false);
    }
    if (n > 0 && path[len - 1] == '/')
        sv_putc(b, '/');
    free(segs);
}

static int sv_hex_value(char c)
{
    if (sv_is_digit(c))
        return c - '0';
    c = ascii_lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes s[0..n) ('+' is a space, %XX a byte) and appends it re-encoded with AWS's rules to b.
 * -1 on a malformed escape. */
static int sv_put_query_part(struct sv_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi = i + 2 < n ? sv_hex_value(s[i + 1]) : -1;
            int lo = i + 2 < n ? sv_hex_value(s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        sv_put_encoded(b, &c, 1, false);
    }
    return 0;
}

struct sv_pair {
    struct sv_buf key; /* encoded */
    struct sv_buf value;
};

static int sv_pair_cmp(const void *a, const void *b)
{
    const struct sv_pair *x = a, *y = b;
    int c = strcmp(x->key.p, y->key.p);
    return c != 0 ? c : strcmp(x->value.p, y->value.p);
}

/* Appends the canonical query string of query[0..len). -1 on malformed percent-encoding. */
static int sv_put_canonical_query(struct sv_buf *b, const char *query, size_t len)
{
    struct sv_pair *pairs = xcalloc(len / 2 + 1, sizeof(*pairs));
    size_t n = 0;
    int rc = -1;
    for (size_t start = 0; start < len;) {
        const char *amp = memchr(query + start, '&', len - start);
        size_t end = amp ? (size_t)(amp - query) : len;
        if (end > start) {
            const char *piece = query + start;
            const char *eq = memchr(piece, '=', end - start);
            size_t klen = eq ? (size_t)(eq - piece) : end - start;
            struct sv_pair *p = &pairs[n++];
            sv_puts(&p->key, "");
            sv_puts(&p->value, "");
            if (sv_put_query_part(&p->key, piece, klen) != 0 ||
                (eq && sv_put_query_part(&p->value, eq + 1, end - start - klen - 1) != 0))
                goto out;
        }
        start = end + 1;
    }
    qsort(pairs, n, sizeof(*pairs), sv_pair_cmp);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            sv_putc(b, '&');
        sv_put(b, pairs[i].key.p, pairs[i].key.len);
        sv_putc(b, '=');
        sv_put(b, pairs[i].value.p, pairs[i].value.len);
    }
    rc = 0;
out:
    for (size_t i = 0; i < n; i++) {
        sv_free(&pairs[i].key);
        sv_free(&pairs[i].value);
    }
    free(pairs);
    return rc;
}

/* One signed header: lower-cased name and trimmed value, both heap, plus its position so that
 * repeated fields keep their order after sorting. */
struct sv_header {
    char *name;
    char *value;
    size_t order;
};

static int sv_header_cmp(const void *a, const void *b)
{
    const struct sv_header *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

static void sv_add_header(struct sv_header *h, size_t *n, const char *name, size_t name_len,
                          const char *value, size_t value_len)
{
    struct sv_header *e = &h[*n];
    e->name = xstrndup(name, name_len);
    ascii_lower_str(e->name);
    /* Trimall: no leading or trailing blanks, each run of spaces/tabs becomes one space. */
    e->value = xmalloc(value_len + 1);
    size_t o = 0;
    bool blank = false;
    for (size_t i = 0; i < value_len; i++) {
        char c = value[i];
        if (c == ' ' || c == '\t') {
            blank = true;
            continue;
        }
        if (blank && o > 0)
            e->value[o++] = ' ';
        blank = false;
        e->value[o++] = c;
    }
    e->value[o] = '\0';
    e->order = *n;
    (*n)++;
}

static bool sv_name_has_prefix(const char *name, size_t len, const char *prefix)
{
    size_t plen = strlen(prefix);
    return len >= plen && ascii_case_eq(name, plen, prefix, plen);
}

/* True if some Connection field of the request lists name: the proxy drops such a field, so it
 * must not be signed. */
static bool sv_named_by_connection(const struct sigv4_request *req, const char *name, size_t len)
{
    bool named = false;
    char *token = NULL;
    for (size_t i = 0; i < req->n_headers && !named; i++) {
        const struct http1_header *c = &req->headers[i];
        if (!ascii_case_eq(c->name, c->name_len, "connection", 10))
            continue;
        if (token == NULL)
            token = xstrndup(name, len);
        named = http1_list_has_token(c->value, c->value_len, token);
    }
    free(token);
    return named;
}

static bool sv_payload_hash_valid(const char *p, const struct sigv4_scope *scope)
{
    if (p == NULL)
        return false;
    if (strcmp(p, SIGV4_UNSIGNED_PAYLOAD) == 0 || strcmp(p, SIGV4_STREAMING_UNSIGNED_TRAILER) == 0)
        return sigv4_unsigned_payload_allowed(scope->service);
    if (strlen(p) != 64)
        return false;
    for (size_t i = 0; i < 64; i++)
        if (!sv_is_digit(p[i]) && !(p[i] >= 'a' && p[i] <= 'f'))
            return false;
    return true;
}

static bool sv_visible_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static bool sv_access_key_valid(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > 128)
        return false;
    for (; *s; s++)
        if (!sv_is_lower(ascii_lower(*s)) && !sv_is_digit(*s) && *s != '_')
            return false;
    return true;
}

static bool sv_has_token(const struct sigv4_credentials *cred)
{
    return cred->session_token != NULL && cred->session_token[0] != '\0';
}

/* Formats t as YYYYMMDDTHHMMSSZ (UTC). -1 if the year does not have four digits. */
static int sv_amz_date(time_t t, char out[17])
{
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 < 1000 || tm.tm_year + 1900 > 9999)
        return -1;
    return strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) == 16 ? 0 : -1;
}

/* Builds the canonical request into *cr and the signed-header list into *signed_names (both
 * zeroed on failure). amz_date and content_sha256 are the values the proxy sets. */
static int sv_build(const struct sigv4_request *req, const struct sigv4_scope *scope,
                    const struct sigv4_credentials *cred, const char *amz_date,
                    const char *content_sha256, struct sv_buf *cr, struct sv_buf *signed_names,
                    const char **err)
{
    struct sv_header *h = NULL;
    size_t n = 0;
    int rc = -1;
    const char *host_value = req->host_field;
    size_t host_len = host_value ? strlen(host_value) : 0;

    *err = "the request target is not origin-form";
    if (req->target == NULL || req->target_len == 0 || req->target[0] != '/')
        goto out;
    *err = "the request method is empty";
    if (req->method == NULL || req->method_len == 0)
        goto out;
    *err = "the request has no Host field";
    if (host_value == NULL) {
        const struct http1_header *hf = http1_find_header(req->headers, req->n_headers, "host");
        if (hf == NULL)
            goto out;
        host_value = hf->value;
        host_len = hf->value_len;
    }

    /* Method, canonical URI, canonical query. */
    sv_put(cr, req->method, req->method_len);
    sv_putc(cr, '\n');
    const char *q = memchr(req->target, '?', req->target_len);
    size_t path_len = q ? (size_t)(q - req->target) : req->target_len;
    if (sigv4_unsigned_payload_allowed(scope->service))
        sv_put(cr, req->target, path_len); /* S3: the path as sent */
    else
        sv_put_normalized_path(cr, req->target, path_len);
    sv_putc(cr, '\n');
    if (q != NULL && sv_put_canonical_query(cr, q + 1, req->target_len - path_len - 1) != 0) {
        *err = "malformed percent-encoding in the query string";
        goto out;
    }
    sv_putc(cr, '\n');

    /* Headers: ours first, then the client's content-type and x-amz-* fields. */
    h = xcalloc(req->n_headers + 4, sizeof(*h));
    sv_add_header(h, &n, "host", 4, host_value, host_len);
    sv_add_header(h, &n, "x-amz-date", 10, amz_date, strlen(amz_date));
    if (content_sha256[0] != '\0')
        sv_add_header(h, &n, "x-amz-content-sha256", 20, content_sha256, strlen(content_sha256));
    if (sv_has_token(cred))
        sv_add_header(h, &n, "x-amz-security-token", 20, cred->session_token,
                      strlen(cred->session_token));
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct http1_header *f = &req->headers[i];
        bool wanted = ascii_case_eq(f->name, f->name_len, "content-type", 12) ||
                      sv_name_has_prefix(f->name, f->name_len, "x-amz-");
        if (!wanted || sigv4_is_signature_header(f->name, f->name_len) ||
            sv_named_by_connection(req, f->name, f->name_len))
            continue;
        sv_add_header(h, &n, f->name, f->name_len, f->value, f->value_len);
    }
    qsort(h, n, sizeof(*h), sv_header_cmp);
    for (size_t i = 0; i < n; i++) {
        bool same_as_prev = i > 0 && strcmp(h[i].name, h[i - 1].name) == 0;
        if (same_as_prev) {
            sv_putc(cr, ',');
        } else {
            if (i > 0) {
                sv_putc(cr, '\n');
                sv_putc(signed_names, ';');
            }
            sv_puts(cr, h[i].name);
            sv_putc(cr, ':');
            sv_puts(signed_names, h[i].name);
        }
        sv_puts(cr, h[i].value);
    }
    sv_puts(cr, "\n\n");
    sv_put(cr, signed_names->p, signed_names->len);
    sv_putc(cr, '\n');
    sv_puts(cr, req->payload_hash);
    rc = 0;
out:
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        secret_free(h[i].value);
    }
    free(h);
    if (rc != 0) {
        sv_free(cr);
        sv_free(signed_names);
    }
    return rc;
}

/* Checks what both sigv4_sign and sigv4_canonical_request need and fills the date and payload
 * values. */
static int sv_check(const struct sigv4_request *req, const struct sigv4_scope *scope,
                    const struct sigv4_credentials *cred, char amz_date[17],
                    char content_sha256[72], const char **err)
{
    if (req == NULL || scope == NULL || cred == NULL || scope->region[0] == '\0' ||
        scope->service[0] == '\0') {
        *err = "missing request, scope or credentials";
        return -1;
    }
    if (!sv_access_key_valid(cred->access_key_id) || cred->secret_access_key == NULL ||
        cred->secret_access_key[0] == '\0') {
        *err = "the AWS access key id or secret access key is missing or malformed";
        return -1;
    }
    if (sv_has_token(cred) && !sv_visible_ascii(cred->session_token)) {
        *err = "the AWS session token contains characters not allowed in a header";
        return -1;
    }
    if (!sv_payload_hash_valid(req->payload_hash, scope)) {
        *err = "the payload hash is not a SHA-256 hex digest, or an unsigned payload is not "
               "accepted by this service";
        return -1;
    }
    if (sv_amz_date(req->now, amz_date) != 0) {
        *err = "the signing time cannot be formatted";
        return -1;
    }
    content_sha256[0] = '\0';
    if (!(req->flags & SIGV4_NO_CONTENT_SHA256))
        snprintf(content_sha256, 72, "%s", req->payload_hash);
    return 0;
}

/* Exported: see sigv4.h. */
char *sigv4_canonical_request(const struct sigv4_request *req, const struct sigv4_scope *scope,
                              const struct sigv4_credentials *cred, const char **err)
{
    char amz_date[17], content_sha256[72];
    struct sv_buf cr = {0}, names = {0};
    if (sv_check(req, scope, cred, amz_date, content_sha256, err) != 0 ||
        sv_build(req, scope, cred, amz_date, content_sha256, &cr, &names, err) != 0)
        return NULL;
    sv_free(&names);
    return cr.p;
}

/* Exported: see sigv4.h. */
int sigv4_sign(const struct sigv4_request *req, const struct sigv4_scope *scope,
               const struct sigv4_credentials *cred, struct sigv4_signed *out, const char **err)
{
    struct sv_buf cr = {0}, names = {0}, sts = {0}, secret = {0};
    unsigned char keys[5][32]; /* kDate, kRegion, kService, kSigning, signature */
    char cr_hash[65], sig_hex[65];
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (sv_check(req, scope, cred, out->amz_date, out->content_sha256, err) != 0 ||
        sv_build(req, scope, cred, out->amz_date, out->content_sha256, &cr, &names, err) != 0)
        goto out;

    *err = "OpenSSL failed to compute the signature";
    if (sigv4_sha256_hex(cr.p, cr.len, cr_hash) != 0)
        goto out;
    sv_puts(&sts, SIGV4_ALGORITHM "\n");
    sv_puts(&sts, out->amz_date);
    sv_putc(&sts, '\n');
    sv_put(&sts, out->amz_date, 8);
    sv_putc(&sts, '/');
    sv_puts(&sts, scope->region);
    sv_putc(&sts, '/');
    sv_puts(&sts, scope->service);
    sv_puts(&sts, "/aws4_request\n");
    sv_puts(&sts, cr_hash);

    sv_puts(&secret, "AWS4");
    sv_puts(&secret, cred->secret_access_key);
    if (sv_hmac((unsigned char *)secret.p, secret.len, out->amz_date, 8, keys[0]) != 0 ||
        sv_hmac(keys[0], 32, scope->region, strlen(scope->region), keys[1]) != 0 ||
        sv_hmac(keys[1], 32, scope->service, strlen(scope->service), keys[2]) != 0 ||
        sv_hmac(keys[2], 32, "aws4_request", 12, keys[3]) != 0 ||
        sv_hmac(keys[3], 32, sts.p, sts.len, keys[4]) != 0)
        goto out;
    hex_encode(keys[4], 32, sig_hex);

    out->authorization = xasprintf(SIGV4_ALGORITHM " Credential=%s/%.8s/%s/%s/aws4_request, "
                                                   "SignedHeaders=%s, Signature=%s",
                                   cred->access_key_id, out->amz_date, scope->region,
                                   scope->service, names.p, sig_hex);
    out->security_token = sv_has_token(cred) ? cred->session_token : NULL;
    rc = 0;
    *err = NULL;
out:
    secure_zero(keys, sizeof(keys));
    sv_free(&secret);
    sv_free(&cr);
    sv_free(&names);
    sv_free(&sts);
    if (rc != 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

/* Exported: see sigv4.h. */
size_t sigv4_signed_overrides(const struct sigv4_signed *s,
                              struct http1_header_override out[SIGV4_MAX_OVERRIDES])
{
    size_t n = 0;
    out[n].name = "Authorization";
    out[n++].value = s->authorization;
    out[n].name = "X-Amz-Date";
    out[n++].value = s->amz_date;
    if (s->content_sha256[0] != '\0') {
        out[n].name = "X-Amz-Content-Sha256";
        out[n++].value = s->content_sha256;
    }
    if (s->security_token != NULL) {
        out[n].name = "X-Amz-Security-Token";
        out[n++].value = s->security_token;
    }
    return n;
}

/* Exported: see sigv4.h. */
void sigv4_signed_free(struct sigv4_signed *s)
{
    if (s == NULL)
        return;
    free(s->authorization);
    memset(s, 0, sizeof(*s));
}
