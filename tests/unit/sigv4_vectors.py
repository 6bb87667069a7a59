#!/usr/bin/python3
"""Cross-check of src/sigv4.c against botocore (tests/e2e/helpers/aws_verify.py).

Builds a small driver around the real sigv4.c (cc, with the same warnings as the Makefile), has it
sign a set of varied AWS requests the way the proxy will (scope from the host, the client's own
signature fields dropped, the returned fields set), then has botocore sign each forwarded request
and compares the Authorization values. Also checks that the scope the C code derives from the host
is the one the request is expected to carry.

Not a cmocka test, so `make unit` does not run it: run it after changing sigv4.c,
    /usr/bin/python3 tests/unit/sigv4_vectors.py
Exit status 0 when every case agrees. Needs Debian's python3-botocore.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from helpers.aws_verify import expected_authorization, parse_authorization  # noqa: E402

DRIVER = r"""
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sigv4.h"

/* stdin: a JSON array of requests; stdout: a JSON array of results. */
int main(void)
{
    json_error_t jerr;
    json_t *cases = json_loadf(stdin, 0, &jerr), *results = json_array();
    size_t i;
    json_t *c;
    if (cases == NULL)
        return 2;
    json_array_foreach(cases, i, c) {
        struct http1_header h[HTTP1_MAX_HEADERS];
        json_t *hs = json_object_get(c, "headers"), *pair;
        size_t k, n = 0;
        json_array_foreach(hs, k, pair) {
            const char *name = json_string_value(json_array_get(pair, 0));
            const char *value = json_string_value(json_array_get(pair, 1));
            h[n].name = name; h[n].name_len = strlen(name);
            h[n].value = value; h[n].value_len = strlen(value);
            n++;
        }
        const char *host = json_string_value(json_object_get(c, "host"));
        const char *method = json_string_value(json_object_get(c, "method"));
        const char *target = json_string_value(json_object_get(c, "target"));
        struct sigv4_request r = {0};
        r.method = method; r.method_len = strlen(method);
        r.target = target; r.target_len = strlen(target);
        r.headers = h; r.n_headers = n;
        r.payload_hash = json_string_value(json_object_get(c, "payload_hash"));
        r.now = (time_t)json_integer_value(json_object_get(c, "now"));
        struct sigv4_credentials cred = {
            json_string_value(json_object_get(c, "akid")),
            json_string_value(json_object_get(c, "secret")),
            json_string_value(json_object_get(c, "token"))};
        struct sigv4_scope scope;
        struct sigv4_signed s;
        const char *err = NULL;
        json_t *res = json_object();
        if (sigv4_scope_from_host(host, strlen(host), &scope, &err) != 0 ||
            sigv4_sign(&r, &scope, &cred, &s, &err) != 0) {
            json_object_set_new(res, "error", json_string(err));
        } else {
            struct http1_header_override ov[SIGV4_MAX_OVERRIDES];
            size_t nov = sigv4_signed_overrides(&s, ov);
            json_t *set = json_array();
            for (k = 0; k < nov; k++)
                json_array_append_new(set, json_pack("[ss]", ov[k].name, ov[k].value));
            json_object_set_new(res, "set", set);
            json_object_set_new(res, "region", json_string(scope.region));
            json_object_set_new(res, "service", json_string(scope.service));
            sigv4_signed_free(&s);
        }
        json_array_append_new(results, res);
    }
    json_dumpf(results, stdout, 0);
    json_decref(results);
    json_decref(cases);
    return 0;
}
"""

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEHoaCXVzLWVhc3QtMSJHMEUCIQD//example+token/=="
NOW = 1718900000  # 2024-06-20T16:13:20Z
UNSIGNED = "UNSIGNED-PAYLOAD"
TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# What a sandbox that believes it holds credentials sends; the proxy must discard all of it.
PLACEHOLDER = [
    ("Authorization", "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/20000101/x/y/aws4_request, "
                      "SignedHeaders=host, Signature=00"),
    ("X-Amz-Date", "20000101T000000Z"),
    ("X-Amz-Security-Token", "placeholder-token"),
    ("X-Amz-Content-Sha256", "0" * 64),
]


def case(name, method, host, target, headers=(), body=b"", payload=None, token=None,
         scope=None, placeholders=True):
    """payload: None = SHA-256 of body; else the literal payload hash to sign with."""
    hs = [("Host", host)] + list(headers) + (PLACEHOLDER if placeholders else [])
    return {
        "name": name, "method": method, "host": host, "target": target, "headers": hs,
        "body": body, "payload_hash": payload or hashlib.sha256(body).hexdigest(),
        "token": token, "scope": scope,
    }


CASES = [
    case("s3 get, odd key 'a b+c%2F/é'", "GET", "my-bucket.s3.us-west-2.amazonaws.com",
         "/a%20b%2Bc%252F/%C3%A9", scope=("us-west-2", "s3")),
    case("s3 key with raw sub-delims and dot segments", "GET",
         "my-bucket.s3.us-west-2.amazonaws.com", "/dir/./x/../it's=(ok)!*;@$,", scope=("us-west-2", "s3")),
    case("s3 list objects v2", "GET", "my-bucket.s3.eu-central-1.amazonaws.com",
         "/?list-type=2&prefix=photos%2F2024%2F&delimiter=%2F&encoding-type=url&max-keys=10",
         scope=("eu-central-1", "s3")),
    case("s3 no-value keys", "GET", "my-bucket.s3.amazonaws.com", "/obj?versionId=3/L4kq&tagging&acl",
         scope=("us-east-1", "s3")),
    case("repeated keys and empty pieces", "GET", "s3.us-east-2.amazonaws.com",
         "/bucket?a=2&a=1&b&&a=10&A=0&a=", scope=("us-east-2", "s3")),
    case("query decoding: + and lower-case escapes", "GET", "lambda.us-east-1.amazonaws.com",
         "/2015-03-31/functions?q=a+b&r=%e2%82%ac&s=~&t=%7E&u=*&v=%2B&w=a%3Db",
         scope=("us-east-1", "lambda")),
    case("s3 put, unsigned payload, metadata", "PUT", "my-bucket.s3.us-west-2.amazonaws.com",
         "/uploads/big%20file.bin",
         [("Content-Type", "application/octet-stream"), ("x-amz-meta-owner", "  team   a "),
          ("X-Amz-Storage-Class", "STANDARD_IA"), ("x-amz-meta-owner", "team b"),
          ("User-Agent", "aws-cli/2.15"), ("Content-Length", "5")],
         body=b"hello", payload=UNSIGNED, scope=("us-west-2", "s3")),
    case("s3 put, hashed payload", "PUT", "my-bucket.s3.us-west-2.amazonaws.com", "/k.txt",
         [("Content-Type", "text/plain"), ("Content-MD5", "XUFAKrxLKna5cZ2REBfFkg==")],
         body=b"hello", scope=("us-west-2", "s3")),
    case("s3 aws-chunked upload with unsigned trailer", "PUT", "bkt.s3.us-east-1.amazonaws.com",
         "/k", [("Content-Encoding", "aws-chunked"), ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-decoded-content-length", "5"), ("x-amz-sdk-checksum-algorithm", "CRC32")],
         body=b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n", payload=TRAILER,
         scope=("us-east-1", "s3")),
    case("dynamodb json post", "POST", "dynamodb.eu-west-1.amazonaws.com", "/",
         [("Content-Type", "application/x-amz-json-1.0"),
          ("X-Amz-Target", "DynamoDB_20120810.GetItem"), ("Accept-Encoding", "identity")],
         body=b'{"TableName": "t", "Key": {"pk": {"S": "a b"}}}', scope=("eu-west-1", "dynamodb")),
    case("bedrock-runtime invoke, encoded model id", "POST",
         "bedrock-runtime.us-east-1.amazonaws.com",
         "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke",
         [("Content-Type", "application/json"), ("Accept", "application/json")],
         body=b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}',
         scope=("us-east-1", "bedrock")),
    case("bedrock-runtime converse, raw ':' in path", "POST",
         "bedrock-runtime.us-west-2.amazonaws.com", "/model/us.anthropic.claude-v2:1/converse",
         [("Content-Type", "application/json")], body=b"{}", scope=("us-west-2", "bedrock")),
    case("bedrock-agent-runtime", "POST", "bedrock-agent-runtime.us-east-1.amazonaws.com",
         "/agents/AGENT123/agentAliases/ALIAS/sessions/s-1/text",
         [("Content-Type", "application/json")], body=b'{"inputText":"hi"}',
         scope=("us-east-1", "bedrock")),
    case("sts post with session token", "POST", "sts.amazonaws.com", "/",
         [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
         body=b"Action=GetCallerIdentity&Version=2011-06-15", token=TOKEN,
         scope=("us-east-1", "sts")),
    case("sts get with query and token", "GET", "sts.us-west-2.amazonaws.com",
         "/?Version=2011-06-15&Action=GetCallerIdentity", token=TOKEN, scope=("us-west-2", "sts")),
    case("execute-api, dot segments and double slashes", "GET",
         "abc123.execute-api.us-east-1.amazonaws.com", "/prod/./items/../items/a%20b//c/",
         [("x-amz-meta-flag", "1")], scope=("us-east-1", "execute-api")),
    case("lambda invoke, arn in path", "POST", "lambda.us-east-1.amazonaws.com",
         "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Afoo"
         "/invocations?Qualifier=%24LATEST",
         [("X-Amz-Invocation-Type", "RequestResponse"), ("X-Amz-Log-Type", "Tail"),
          ("X-Amz-Client-Context", "eyJhIjoxfQ==")],
         body=b'{"k": "v"}', scope=("us-east-1", "lambda")),
    case("sagemaker runtime", "POST", "runtime.sagemaker.eu-west-1.amazonaws.com",
         "/endpoints/my-endpoint/invocations", [("Content-Type", "text/csv")], body=b"1,2,3",
         scope=("eu-west-1", "sagemaker")),
    case("ses via email host", "POST", "email.us-east-1.amazonaws.com", "/v2/email/outbound-emails",
         [("Content-Type", "application/json")], body=b"{}", scope=("us-east-1", "ses")),
    case("china s3, fips and dualstack hosts", "GET", "bkt.s3.cn-north-1.amazonaws.com.cn", "/k",
         scope=("cn-north-1", "s3")),
    case("s3 fips dualstack", "HEAD", "s3-fips.dualstack.us-east-1.amazonaws.com", "/bkt/k",
         scope=("us-east-1", "s3")),
    case("Host with port and upper case", "GET", "sts.amazonaws.com",
         "/?Action=GetCallerIdentity&Version=2011-06-15",
         scope=("us-east-1", "sts"), placeholders=False),
    case("header named by Connection is neither signed nor forwarded", "GET",
         "dynamodb.us-east-1.amazonaws.com", "/",
         [("X-Amz-Hop", "x"), ("Connection", "keep-alive, X-Amz-Hop"), ("x-amz-kept", "y")],
         scope=("us-east-1", "dynamodb")),
    case("iam global with token", "POST", "iam.amazonaws.com", "/",
         [("Content-Type", "application/x-www-form-urlencoded")],
         body=b"Action=ListUsers&Version=2010-05-08", token=TOKEN, scope=("us-east-1", "iam")),
]
# The case above whose name says so sends its Host in another spelling.
for c in CASES:
    if c["name"].startswith("Host with port"):
        c["headers"][0] = ("Host", "STS.amazonaws.com:443")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade"}


def forwarded_headers(client, overrides):
    """What the proxy sends upstream: the client's fields minus hop-by-hop ones, the ones
    Connection names and the signature fields, then the signed fields."""
    named = set()
    for n, v in client:
        if n.lower() == "connection":
            named |= {t.strip().lower() for t in v.split(",")}
    out = []
    for n, v in client:
        ln = n.lower()
        if ln in HOP_BY_HOP or (ln in named and ln != "host") or ln in (
                "authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"):
            continue
        out.append((n, v))
    return out + [tuple(o) for o in overrides]


def build_driver(tmp):
    exe = os.path.join(tmp, "sigv4_driver")
    src = os.path.join(tmp, "driver.c")
    with open(src, "w") as f:
        f.write(DRIVER)
    flags = subprocess.check_output(
        ["pkg-config", "--cflags", "--libs", "openssl", "jansson", "libevent"], text=True).split()
    subprocess.check_call(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-O0", "-g",
         "-fsanitize=address,undefined", "-I" + os.path.join(ROOT, "src"), "-o", exe, src]
        + [os.path.join(ROOT, "src", f) for f in ("sigv4.c", "util.c", "http1.c", "glob.c")] + flags)
    return exe


def main():
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_driver(tmp)
        payload = [
            {"method": c["method"], "host": c["host"], "target": c["target"],
             "headers": [list(h) for h in c["headers"]], "payload_hash": c["payload_hash"],
             "now": NOW, "akid": AKID, "secret": SECRET, "token": c["token"]}
            for c in CASES
        ]
        out = subprocess.run([exe], input=json.dumps(payload), capture_output=True, text=True,
                             check=True)
        results = json.loads(out.stdout)
    failures = 0
    for c, r in zip(CASES, results):
        if "error" in r:
            print("FAIL %s: the C code refused it: %s" % (c["name"], r["error"]))
            failures += 1
            continue
        fwd = forwarded_headers(c["headers"], r["set"])
        got = dict((n.lower(), v) for n, v in r["set"])["authorization"]
        # Impose the list AWS wants signed rather than the one the C code chose: host,
        # content-type and every x-amz-* field that goes upstream.
        must_sign = sorted({n.lower() for n, _ in fwd
                            if n.lower() in ("host", "content-type")
                            or n.lower().startswith("x-amz-")})
        want = expected_authorization(c["method"], "https://%s%s" % (c["host"], c["target"]),
                                      fwd, c["body"], AKID, SECRET, c["token"],
                                      signed_headers=must_sign)
        scope_ok = c["scope"] is None or (r["region"], r["service"]) == c["scope"]
        if got != want or not scope_ok or "PLACEHOLDER" in json.dumps(fwd):
            print("FAIL %s\n  C:        %s (%s/%s)\n  botocore: %s" % (
                c["name"], got, r["region"], r["service"], want))
            failures += 1
        else:
            print("ok   %-60s %s" % (c["name"], ";".join(parse_authorization(got)["signed_headers"])))
    print("%d of %d cases agree with botocore" % (len(CASES) - failures, len(CASES)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
