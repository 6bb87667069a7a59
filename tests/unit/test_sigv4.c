/* Unit tests for sigv4: AWS Signature Version 4 signing (SPEC §2, "type": "aws" rules).
 *
 * Known-answer vectors: the AWS SigV4 test suite (docs.aws.amazon.com/general/latest/gr/
 * signature-v4-test-suite.html, files "<case>.authz" / "<case>.creq"; credentials AKIDEXAMPLE /
 * wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, region us-east-1, service "service", time
 * 20150830T123600Z). Those vectors sign neither X-Amz-Content-Sha256 nor anything but the headers
 * the request has, hence SIGV4_NO_CONTENT_SHA256. The rest of the behaviour (S3 paths, query
 * decoding, the proxy's header set) is cross-checked against botocore by
 * tests/unit/sigv4_vectors.py; the tests here pin the rules themselves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "sigv4.h"
#include "util.h"

#define SUITE_TIME   ((time_t)1440938160) /* 2015-08-30T12:36:00Z */
#define SUITE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define SUITE_TOKEN                                                                                \
    "AQoDYXdzEPT//////////"                                                                        \
    "wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPf"                     \
    "IeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/"                                                         \
    "kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7W"                                    \
    "Z0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+"          \
    "scqKmlzm8F"                                                                                   \
    "DrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
#define SUITE_AUTH_PREFIX                                                                          \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "

static const struct sigv4_scope suite_scope = {"us-east-1", "service"};
static const struct sigv4_credentials suite_cred = {"AKIDEXAMPLE", SUITE_SECRET, NULL};

static struct http1_header hdr(const char *name, const char *value)
{
    struct http1_header h = {name, strlen(name), value, strlen(value)};
    return h;
}

static struct sigv4_request request(const char *method, const char *target,
                                    const struct http1_header *h, size_t n, const char *payload)
{
    struct sigv4_request r = {0};
    r.method = method;
    r.method_len = strlen(method);
    r.target = target;
    r.target_len = strlen(target);
    r.headers = h;
    r.n_headers = n;
    r.payload_hash = payload;
    r.now = SUITE_TIME;
    return r;
}

/* Signs with the suite's scope and credentials and compares the Authorization value. */
static void assert_suite_vector(const char *method, const char *target,
                                const struct http1_header *extra, size_t n_extra,
                                const char *payload, const char *want_authz)
{
    struct http1_header h[8];
    size_t n = 0;
    h[n++] = hdr("Host", "example.amazonaws.com");
    h[n++] = hdr("X-Amz-Date", "20150830T123600Z");
    for (size_t i = 0; i < n_extra; i++)
        h[n++] = extra[i];
    struct sigv4_request r = request(method, target, h, n, payload);
    r.flags = SIGV4_NO_CONTENT_SHA256;
    struct sigv4_signed s;
    const char *err = NULL;
    if (sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err) != 0)
        fail_msg("signing %s %s failed: %s", method, target, err);
    assert_string_equal(s.authorization, want_authz);
    assert_string_equal(s.amz_date, "20150830T123600Z");
    sigv4_signed_free(&s);
}

static void test_suite_get_vanilla(void **state)
{
    (void)state;
    assert_suite_vector("GET", "/", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a22609"
                                          "56d9b8aae1d763fbf31");
}

static void test_suite_query_order_key_case(void **state)
{
    (void)state;
    assert_suite_vector("GET", "/?Param2=value2&Param1=value1", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646ef"
                                          "d99d3219ec94cdf2500");
}

static void test_suite_post_form_urlencoded(void **state)
{
    (void)state;
    char body_hash[65];
    assert_int_equal(sigv4_sha256_hex("Param1=value1", 13, body_hash), 0);
    /* The payload line of the suite's .creq. */
    assert_string_equal(body_hash,
                        "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e");
    struct http1_header ct = hdr("Content-Type", "application/x-www-form-urlencoded");
    assert_suite_vector("POST", "/", &ct, 1, body_hash,
                        SUITE_AUTH_PREFIX "SignedHeaders=content-type;host;x-amz-date, "
                                          "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1"
                                          "da7b9d196a0fe09473a");
}

static void test_suite_get_utf8(void **state)
{
    (void)state;
    assert_suite_vector("GET", "/\xe1\x88\xb4", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f2"
                                          "55a891fd03141be5d85");
}

static void test_suite_get_space(void **state)
{
    (void)state;
    /* normalize-path/get-space */
    assert_suite_vector("GET", "/example space/", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=652487583200325589f1fba4c7e578f72c47cb61beeca"
                                          "81406b39ddec1366741");
}

static void test_suite_get_slash_dot_slash(void **state)
{
    (void)state;
    /* normalize-path/get-slash-dot-slash: "/./" signs as "/", the same signature as get-vanilla */
    assert_suite_vector("GET", "/./", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a22609"
                                          "56d9b8aae1d763fbf31");
}

static void test_suite_unreserved(void **state)
{
    (void)state;
    assert_suite_vector(
        "GET",
        "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
        "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        NULL, 0, SIGV4_EMPTY_SHA256,
        SUITE_AUTH_PREFIX
        "SignedHeaders=host;x-amz-date, "
        "Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197");
    assert_suite_vector(
        "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", NULL, 0,
        SIGV4_EMPTY_SHA256,
        SUITE_AUTH_PREFIX
        "SignedHeaders=host;x-amz-date, "
        "Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f");
}

static void test_suite_utf8_query(void **state)
{
    (void)state;
    assert_suite_vector("GET", "/?\xe1\x88\xb4=bar", NULL, 0, SIGV4_EMPTY_SHA256,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date, "
                                          "Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a"
                                          "1d91e12c9027818dd04");
}

/* post-sts-token/post-sts-header-before: the session token is signed. The sandbox's own
 * (placeholder) token is dropped and the credentials' token set instead. */
static void test_suite_session_token(void **state)
{
    (void)state;
    struct http1_header h[] = {hdr("Host", "example.amazonaws.com"),
                               hdr("X-Amz-Security-Token", "placeholder-from-the-sandbox")};
    struct sigv4_request r = request("POST", "/", h, 2, SIGV4_EMPTY_SHA256);
    r.flags = SIGV4_NO_CONTENT_SHA256;
    struct sigv4_credentials cred = {"AKIDEXAMPLE", SUITE_SECRET, SUITE_TOKEN};
    struct sigv4_signed s;
    const char *err = NULL;
    assert_int_equal(sigv4_sign(&r, &suite_scope, &cred, &s, &err), 0);
    assert_string_equal(s.authorization,
                        SUITE_AUTH_PREFIX "SignedHeaders=host;x-amz-date;x-amz-security-token, "
                                          "Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041"
                                          "836c64533a82be05ead");
    struct http1_header_override ov[SIGV4_MAX_OVERRIDES];
    size_t n = sigv4_signed_overrides(&s, ov);
    assert_int_equal(n, 3); /* no X-Amz-Content-Sha256 with the flag */
    assert_string_equal(ov[0].name, "Authorization");
    assert_string_equal(ov[1].name, "X-Amz-Date");
    assert_string_equal(ov[1].value, "20150830T123600Z");
    assert_string_equal(ov[2].name, "X-Amz-Security-Token");
    assert_string_equal(ov[2].value, SUITE_TOKEN);
    sigv4_signed_free(&s);
}

/* The suite's canonical requests, line for line (get-vanilla-query-order-key-case, get-utf8). */
static void test_suite_canonical_requests(void **state)
{
    (void)state;
    struct http1_header h[] = {hdr("Host", "example.amazonaws.com")};
    const char *err = NULL;
    struct sigv4_request r =
        request("GET", "/?Param2=value2&Param1=value1", h, 1, SIGV4_EMPTY_SHA256);
    r.flags = SIGV4_NO_CONTENT_SHA256;
    char *cr = sigv4_canonical_request(&r, &suite_scope, &suite_cred, &err);
    assert_non_null(cr);
    assert_string_equal(cr, "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\n"
                            "x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" SIGV4_EMPTY_SHA256);
    secret_free(cr);

    r = request("GET", "/\xe1\x88\xb4", h, 1, SIGV4_EMPTY_SHA256);
    r.flags = SIGV4_NO_CONTENT_SHA256;
    cr = sigv4_canonical_request(&r, &suite_scope, &suite_cred, &err);
    assert_non_null(cr);
    assert_string_equal(cr, "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\n"
                            "x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" SIGV4_EMPTY_SHA256);
    secret_free(cr);
}

/* ---- Region and service from the host ---- */

static void assert_scope(const char *host, const char *region, const char *service)
{
    struct sigv4_scope sc;
    const char *err = NULL;
    if (sigv4_scope_from_host(host, strlen(host), &sc, &err) != 0)
        fail_msg("\"%s\" refused: %s", host, err);
    if (strcmp(sc.region, region) != 0 || strcmp(sc.service, service) != 0)
        fail_msg("\"%s\": got %s/%s, want %s/%s", host, sc.region, sc.service, region, service);
}

static void assert_scope_refused(const char *host)
{
    struct sigv4_scope sc;
    const char *err = NULL;
    if (sigv4_scope_from_host(host, strlen(host), &sc, &err) != -1)
        fail_msg("\"%s\" accepted as %s/%s", host, sc.region, sc.service);
    assert_non_null(err);
    assert_string_equal(sc.region, "");
}

static void test_scope_regional(void **state)
{
    (void)state;
    assert_scope("dynamodb.eu-west-1.amazonaws.com", "eu-west-1", "dynamodb");
    assert_scope("lambda.us-east-1.amazonaws.com", "us-east-1", "lambda");
    assert_scope("sts.us-west-2.amazonaws.com", "us-west-2", "sts");
    assert_scope("Lambda.US-East-1.AmazonAWS.com", "us-east-1", "lambda");
    assert_scope("ec2.us-gov-west-1.amazonaws.com", "us-gov-west-1", "ec2");
    assert_scope("ec2.ap-southeast-4.amazonaws.com", "ap-southeast-4", "ec2");
}

static void test_scope_s3(void **state)
{
    (void)state;
    assert_scope("my-bucket.s3.us-west-2.amazonaws.com", "us-west-2", "s3");
    assert_scope("my.dotted.bucket.s3.eu-central-1.amazonaws.com", "eu-central-1", "s3");
    assert_scope("s3.us-west-2.amazonaws.com", "us-west-2", "s3");
    assert_scope("s3.amazonaws.com", "us-east-1", "s3");
    assert_scope("my-bucket.s3.amazonaws.com", "us-east-1", "s3");
    assert_scope("s3-external-1.amazonaws.com", "us-east-1", "s3");
    assert_scope("my-bucket.s3-external-1.amazonaws.com", "us-east-1", "s3");
    assert_scope("s3-us-west-2.amazonaws.com", "us-west-2", "s3"); /* legacy dash form */
    assert_scope("my-bucket.s3-eu-west-1.amazonaws.com", "eu-west-1", "s3");
    assert_scope("my-bucket.s3.dualstack.us-east-2.amazonaws.com", "us-east-2", "s3");
    assert_scope("s3-fips.dualstack.us-east-1.amazonaws.com", "us-east-1", "s3");
    assert_scope("my-bucket.s3-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", "s3");
    assert_scope("ap-123456789012.s3-accesspoint.us-west-2.amazonaws.com", "us-west-2", "s3");
    assert_scope("123456789012.s3-control.us-west-2.amazonaws.com", "us-west-2", "s3");
    assert_scope("bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "us-east-1", "s3");
}

static void test_scope_global_endpoints(void **state)
{
    (void)state;
    assert_scope("sts.amazonaws.com", "us-east-1", "sts");
    assert_scope("iam.amazonaws.com", "us-east-1", "iam");
    assert_scope("iam-fips.amazonaws.com", "us-east-1", "iam");
    assert_scope("route53.amazonaws.com", "us-east-1", "route53");
    assert_scope("cloudfront.amazonaws.com", "us-east-1", "cloudfront");
    assert_scope("route53.amazonaws.com.cn", "cn-northwest-1", "route53");
}

static void test_scope_variants_and_china(void **state)
{
    (void)state;
    assert_scope("dynamodb-fips.us-east-1.amazonaws.com", "us-east-1", "dynamodb");
    assert_scope("sts-fips.us-east-2.amazonaws.com", "us-east-2", "sts");
    assert_scope("ec2.dualstack.eu-west-1.amazonaws.com", "eu-west-1", "ec2");
    assert_scope("s3.cn-north-1.amazonaws.com.cn", "cn-north-1", "s3");
    assert_scope("my-bucket.s3.cn-northwest-1.amazonaws.com.cn", "cn-northwest-1", "s3");
    assert_scope("iam.cn-north-1.amazonaws.com.cn", "cn-north-1", "iam");
    assert_scope("sts.cn-north-1.amazonaws.com.cn", "cn-north-1", "sts");
}

static void test_scope_signing_names(void **state)
{
    (void)state;
    assert_scope("bedrock-runtime.us-east-1.amazonaws.com", "us-east-1", "bedrock");
    assert_scope("bedrock-agent-runtime.us-west-2.amazonaws.com", "us-west-2", "bedrock");
    assert_scope("bedrock-runtime-fips.us-east-1.amazonaws.com", "us-east-1", "bedrock");
    assert_scope("bedrock.us-east-1.amazonaws.com", "us-east-1", "bedrock");
    assert_scope("abc123.execute-api.us-east-1.amazonaws.com", "us-east-1", "execute-api");
    assert_scope("runtime.sagemaker.eu-west-1.amazonaws.com", "eu-west-1", "sagemaker");
    assert_scope("api.sagemaker.eu-west-1.amazonaws.com", "eu-west-1", "sagemaker");
    assert_scope("email.us-east-1.amazonaws.com", "us-east-1", "ses");
    assert_scope("data-ats.iot.us-east-1.amazonaws.com", "us-east-1", "iotdata");
    assert_scope("iot.us-east-1.amazonaws.com", "us-east-1", "iot");
    assert_scope("sms-voice.pinpoint.us-east-1.amazonaws.com", "us-east-1", "sms-voice");
    assert_scope("pinpoint.us-east-1.amazonaws.com", "us-east-1", "mobiletargeting");
    assert_scope("123456789012.ddb.us-east-1.amazonaws.com", "us-east-1", "dynamodb");
    assert_scope("streams.dynamodb.us-east-1.amazonaws.com", "us-east-1", "dynamodb");
    assert_scope("runtime.lex.us-east-1.amazonaws.com", "us-east-1", "lex");
    assert_scope("entitlement.marketplace.us-east-1.amazonaws.com", "us-east-1", "aws-marketplace");
    /* A prefix entry only matches at a label boundary. */
    assert_scope("xemail.us-east-1.amazonaws.com", "us-east-1", "xemail");
}

static void test_scope_refusals(void **state)
{
    (void)state;
    assert_scope_refused("");
    assert_scope_refused("example.com");
    assert_scope_refused("amazonaws.com");
    assert_scope_refused("amazonaws.com.cn");
    assert_scope_refused("notamazonaws.com");
    assert_scope_refused("s3.amazonaws.com.evil.example");
    assert_scope_refused("sts.amazonaws.com."); /* empty last label */
    assert_scope_refused(".sts.amazonaws.com");
    assert_scope_refused("s3..us-east-1.amazonaws.com");
    assert_scope_refused("10.0.0.1");
    assert_scope_refused("[::1]");
    assert_scope_refused("sts.amazonaws.com:443");
    /* No region where one is needed: never guessed. */
    assert_scope_refused("dynamodb.amazonaws.com");
    assert_scope_refused("my-bucket.s3-accelerate.amazonaws.com");
    assert_scope_refused("foo.sts.amazonaws.com");
    assert_scope_refused("us-east-1.amazonaws.com");
    assert_scope_refused("dualstack.us-east-1.amazonaws.com");
    assert_scope_refused("lambda.useast1.amazonaws.com");
    assert_scope_refused("s3.amazonaws.com.cn"); /* no global S3 endpoint in China */
    /* Region and partition must agree. */
    assert_scope_refused("lambda.cn-north-1.amazonaws.com");
    assert_scope_refused("lambda.us-east-1.amazonaws.com.cn");
    assert_scope_refused("my-bucket.s3-cn-north-1.amazonaws.com");
}

/* ---- Header handling ---- */

static void test_is_signature_header(void **state)
{
    (void)state;
    const char *yes[] = {"Authorization",       "authorization",        "X-Amz-Date",
                         "x-amz-date",          "X-AMZ-SECURITY-TOKEN", "X-Amz-Content-Sha256",
                         "x-amz-content-sha256"};
    const char *no[] = {"Host",
                        "Date",
                        "X-Amz-Target",
                        "X-Amz-Date-Extra",
                        "Authorizatio",
                        "Proxy-Authorization",
                        "x-amz-meta-authorization",
                        "Content-Type"};
    for (size_t i = 0; i < ARRAY_LEN(yes); i++)
        assert_true(sigv4_is_signature_header(yes[i], strlen(yes[i])));
    for (size_t i = 0; i < ARRAY_LEN(no); i++)
        if (sigv4_is_signature_header(no[i], strlen(no[i])))
            fail_msg("%s taken for a signature header", no[i]);
}

static char *canonical(const char *method, const char *target, const struct http1_header *h,
                       size_t n, const struct sigv4_scope *scope, const char *payload)
{
    const char *err = NULL;
    struct sigv4_request r = request(method, target, h, n, payload);
    char *cr = sigv4_canonical_request(&r, scope, &suite_cred, &err);
    if (cr == NULL)
        fail_msg("canonical request for %s failed: %s", target, err);
    return cr;
}

/* Which client fields are signed and how their values are canonicalised. */
static void test_signed_header_set(void **state)
{
    (void)state;
    static const struct sigv4_scope ddb = {"eu-west-1", "dynamodb"};
    struct http1_header h[] = {
        hdr("Host", "dynamodb.eu-west-1.amazonaws.com"),
        hdr("Authorization", "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/..."),
        hdr("X-Amz-Date", "19990101T000000Z"),
        hdr("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
        hdr("User-Agent", "aws-cli/2"),
        hdr("Content-Type", "application/x-amz-json-1.0"),
        hdr("X-Amz-Target", "DynamoDB_20120810.GetItem"),
        hdr("x-amz-meta-note", "a  b \t c"),
        hdr("X-Amz-Meta-Note", "second"),
        hdr("X-Amz-Dropped", "named by Connection"),
        hdr("Connection", "keep-alive, x-amz-dropped"),
    };
    char *cr = canonical("POST", "/", h, ARRAY_LEN(h), &ddb, SIGV4_EMPTY_SHA256);
    assert_string_equal(cr, "POST\n/\n\n"
                            "content-type:application/x-amz-json-1.0\n"
                            "host:dynamodb.eu-west-1.amazonaws.com\n"
                            "x-amz-content-sha256:" SIGV4_EMPTY_SHA256 "\n"
                            "x-amz-date:20150830T123600Z\n"
                            "x-amz-meta-note:a b c,second\n"
                            "x-amz-target:DynamoDB_20120810.GetItem\n\n"
                            "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-note;"
                            "x-amz-target\n" SIGV4_EMPTY_SHA256);
    assert_null(strstr(cr, "PLACEHOLDER"));
    secret_free(cr);
}

/* host_field replaces the client's Host (an HTTP/1.0 request without one); no Host at all is an
 * error. */
static void test_host_field(void **state)
{
    (void)state;
    struct http1_header h[] = {hdr("Accept", "*/*")};
    struct sigv4_request r = request("GET", "/", h, 1, SIGV4_EMPTY_SHA256);
    struct sigv4_signed s;
    const char *err = NULL;
    assert_int_equal(sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err), -1);
    assert_non_null(err);
    assert_null(s.authorization);
    r.host_field = "example.amazonaws.com";
    r.flags = SIGV4_NO_CONTENT_SHA256;
    assert_int_equal(sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err), 0);
    /* Same as get-vanilla. */
    assert_string_equal(
        s.authorization, SUITE_AUTH_PREFIX
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    sigv4_signed_free(&s);
}

/* ---- Canonical URI and query ---- */

static void assert_cr_line(const char *method, const char *target, const struct sigv4_scope *scope,
                           const char *payload, int line, const char *want)
{
    struct http1_header h[] = {hdr("Host", "x.amazonaws.com")};
    char *cr = canonical(method, target, h, 1, scope, payload);
    const char *p = cr;
    for (int i = 0; i < line; i++)
        p = strchr(p, '\n') + 1;
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len != strlen(want) || memcmp(p, want, len) != 0)
        fail_msg("%s: line %d is \"%.*s\", want \"%s\"", target, line, (int)len, p, want);
    secret_free(cr);
}

static void test_canonical_uri(void **state)
{
    (void)state;
    static const struct sigv4_scope s3 = {"us-east-1", "s3"};
    static const struct sigv4_scope lambda = {"us-east-1", "lambda"};
    /* Non-S3: normalised, then encoded once more (what the client encoded is encoded again). */
    assert_cr_line("GET", "/2015-03-31/functions/my%3Afn/invocations", &lambda, SIGV4_EMPTY_SHA256,
                   1, "/2015-03-31/functions/my%253Afn/invocations");
    assert_cr_line("GET", "//a/./b/../c//", &lambda, SIGV4_EMPTY_SHA256, 1, "/a/c/");
    assert_cr_line("GET", "/..", &lambda, SIGV4_EMPTY_SHA256, 1, "/");
    assert_cr_line("GET", "/a:b", &lambda, SIGV4_EMPTY_SHA256, 1, "/a%3Ab");
    /* S3: exactly as sent. */
    assert_cr_line("GET", "/a%20b%2Bc%252F/%C3%A9", &s3, SIGV4_EMPTY_SHA256, 1,
                   "/a%20b%2Bc%252F/%C3%A9");
    assert_cr_line("GET", "//a/./b/../", &s3, SIGV4_EMPTY_SHA256, 1, "//a/./b/../");
}

static void test_canonical_query(void **state)
{
    (void)state;
    static const struct sigv4_scope s3 = {"us-east-1", "s3"};
    /* Sorted by key then value; a key without '=' gets an empty value; empty pieces dropped. */
    assert_cr_line("GET", "/?b=2&a=2&a=1&acl&&x=", &s3, SIGV4_EMPTY_SHA256, 2,
                   "a=1&a=2&acl=&b=2&x=");
    /* Decoded, then re-encoded with only the unreserved set bare: '+' is a space. */
    assert_cr_line("GET", "/?prefix=a+b%2fc%7e&k%3D=%e2%82%ac!", &s3, SIGV4_EMPTY_SHA256, 2,
                   "k%3D=%E2%82%AC%21&prefix=a%20b%2Fc~");
    /* Only the first '=' splits. */
    assert_cr_line("GET", "/?a=b=c", &s3, SIGV4_EMPTY_SHA256, 2, "a=b%3Dc");
    /* Sorting is on the encoded bytes: upper case before lower case. */
    assert_cr_line("GET", "/?b=1&B=2&_=3", &s3, SIGV4_EMPTY_SHA256, 2, "B=2&_=3&b=1");
    assert_cr_line("GET", "/?", &s3, SIGV4_EMPTY_SHA256, 2, "");
}

static void test_malformed_query_refused(void **state)
{
    (void)state;
    const char *bad[] = {"/?a=%", "/?a=%4", "/?a=%zz", "/?%g1=x", "/?a=b%"};
    struct http1_header h[] = {hdr("Host", "example.amazonaws.com")};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct sigv4_request r = request("GET", bad[i], h, 1, SIGV4_EMPTY_SHA256);
        struct sigv4_signed s;
        const char *err = NULL;
        if (sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err) != -1)
            fail_msg("%s signed", bad[i]);
        assert_non_null(strstr(err, "percent-encoding"));
    }
}

/* ---- Payload, time, credentials ---- */

static void test_payload_hash_rules(void **state)
{
    (void)state;
    static const struct sigv4_scope s3 = {"us-west-2", "s3"};
    static const struct sigv4_scope bedrock = {"us-east-1", "bedrock"};
    struct http1_header h[] = {hdr("Host", "b.s3.us-west-2.amazonaws.com")};
    struct sigv4_signed s;
    const char *err = NULL;

    assert_true(sigv4_unsigned_payload_allowed("s3"));
    assert_false(sigv4_unsigned_payload_allowed("bedrock"));
    assert_false(sigv4_unsigned_payload_allowed("sts"));

    struct sigv4_request r = request("PUT", "/key", h, 1, SIGV4_UNSIGNED_PAYLOAD);
    assert_int_equal(sigv4_sign(&r, &s3, &suite_cred, &s, &err), 0);
    struct http1_header_override ov[SIGV4_MAX_OVERRIDES];
    assert_int_equal(sigv4_signed_overrides(&s, ov), 3);
    assert_string_equal(ov[2].name, "X-Amz-Content-Sha256");
    assert_string_equal(ov[2].value, "UNSIGNED-PAYLOAD");
    assert_non_null(strstr(s.authorization, "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
    sigv4_signed_free(&s);

    r.payload_hash = SIGV4_STREAMING_UNSIGNED_TRAILER;
    assert_int_equal(sigv4_sign(&r, &s3, &suite_cred, &s, &err), 0);
    sigv4_signed_free(&s);

    /* Streamed bodies cannot be signed for services that need the hash. */
    r.payload_hash = SIGV4_UNSIGNED_PAYLOAD;
    assert_int_equal(sigv4_sign(&r, &bedrock, &suite_cred, &s, &err), -1);
    assert_null(s.authorization);
    const char *bad[] = {NULL,
                         "",
                         "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
                         "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                         "unsigned-payload"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        r.payload_hash = bad[i];
        if (sigv4_sign(&r, &s3, &suite_cred, &s, &err) != -1)
            fail_msg("payload hash \"%s\" accepted", bad[i] ? bad[i] : "(null)");
    }
}

static void test_amz_date_is_utc(void **state)
{
    (void)state;
    struct http1_header h[] = {hdr("Host", "example.amazonaws.com")};
    struct sigv4_request r = request("GET", "/", h, 1, SIGV4_EMPTY_SHA256);
    struct sigv4_signed s;
    const char *err = NULL;
    /* A zone far from UTC, so that local time used by mistake shows. */
    setenv("TZ", "America/New_York", 1);
    tzset();
    r.now = 0;
    assert_int_equal(sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err), 0);
    assert_string_equal(s.amz_date, "19700101T000000Z");
    assert_non_null(strstr(s.authorization, "Credential=AKIDEXAMPLE/19700101/"));
    sigv4_signed_free(&s);
    r.now = (time_t)1709251199; /* 2024-02-29T23:59:59Z */
    assert_int_equal(sigv4_sign(&r, &suite_scope, &suite_cred, &s, &err), 0);
    assert_string_equal(s.amz_date, "20240229T235959Z");
    sigv4_signed_free(&s);
}

/* Bad credentials are refused without their value appearing in the error. */
static void test_bad_credentials(void **state)
{
    (void)state;
    struct http1_header h[] = {hdr("Host", "example.amazonaws.com")};
    struct sigv4_request r = request("GET", "/", h, 1, SIGV4_EMPTY_SHA256);
    const struct sigv4_credentials bad[] = {
        {"AKID EXAMPLE", SUITE_SECRET, NULL},
        {"AKID\r\nX-Evil: 1", SUITE_SECRET, NULL},
        {"", SUITE_SECRET, NULL},
        {"AKIDEXAMPLE", "", NULL},
        {"AKIDEXAMPLE", NULL, NULL},
        {"AKIDEXAMPLE", SUITE_SECRET, "SeSsIoN\r\nX-Evil: 1"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct sigv4_signed s;
        const char *err = NULL;
        if (sigv4_sign(&r, &suite_scope, &bad[i], &s, &err) != -1)
            fail_msg("credentials %zu accepted", i);
        assert_non_null(err);
        assert_null(strstr(err, "AKID"));
        assert_null(strstr(err, "wJalr"));
        assert_null(strstr(err, "SeSsIoN"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_suite_get_vanilla),
        cmocka_unit_test(test_suite_query_order_key_case),
        cmocka_unit_test(test_suite_post_form_urlencoded),
        cmocka_unit_test(test_suite_get_utf8),
        cmocka_unit_test(test_suite_get_space),
        cmocka_unit_test(test_suite_get_slash_dot_slash),
        cmocka_unit_test(test_suite_unreserved),
        cmocka_unit_test(test_suite_utf8_query),
        cmocka_unit_test(test_suite_session_token),
        cmocka_unit_test(test_suite_canonical_requests),
        cmocka_unit_test(test_scope_regional),
        cmocka_unit_test(test_scope_s3),
        cmocka_unit_test(test_scope_global_endpoints),
        cmocka_unit_test(test_scope_variants_and_china),
        cmocka_unit_test(test_scope_signing_names),
        cmocka_unit_test(test_scope_refusals),
        cmocka_unit_test(test_is_signature_header),
        cmocka_unit_test(test_signed_header_set),
        cmocka_unit_test(test_host_field),
        cmocka_unit_test(test_canonical_uri),
        cmocka_unit_test(test_canonical_query),
        cmocka_unit_test(test_malformed_query_refused),
        cmocka_unit_test(test_payload_hash_rules),
        cmocka_unit_test(test_amz_date_is_utc),
        cmocka_unit_test(test_bad_credentials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
