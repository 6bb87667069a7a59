"""AWS SigV4 signing by the proxy ("type": "aws" rules, SPEC §2; issue 5).

The sandbox signs with fake credentials (or not at all); the proxy drops the sandbox's
signature fields and signs the request again with the rule's real credentials. Stand-ins for
AWS endpoints (reached through dns_remap, with certificates from the test root) record what
they receive, and botocore (python3-botocore, an independent implementation) recomputes the
signature for the very request the origin got: equal Authorization values mean AWS would
accept it. The real client is botocore itself, pointed at the proxy."""
import hashlib
import os

import pytest
import requests

from conftest import SESSION_SECRETS
from helpers.aws_verify import expected_authorization, parse_authorization

DDB = "dynamodb.us-east-1.amazonaws.com"
S3 = "my-bucket.s3.us-west-2.amazonaws.com"
STS = "sts.amazonaws.com"
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
AWS_NAMES = [DDB, S3, STS, BEDROCK, "s3.us-west-2.amazonaws.com", "foo.amazonaws.com"]

AKID = "AKIDAUTHPROXYE2E"


@pytest.fixture(scope="module")
def aws_leaf(pki):
    return pki.root.issue("aws", AWS_NAMES)


@pytest.fixture
def creds():
    secret = "wJalrXUtnFEMI/K7MDENG+" + os.urandom(9).hex()
    token = "FwoGZXIvYXdzE" + os.urandom(12).hex()
    SESSION_SECRETS.update([secret, token])
    return {"secret": secret, "token": token}


def aws_origin(stack, leaf, *names):
    from helpers.origin import Origin
    o = Origin(leaf[0], leaf[1], name=names[0])
    stack.servers.append(o)
    for n in names:
        stack.remaps[n] = "127.0.0.1:%d" % o.port
    return o


def aws_rule(session=False, hosts=None, secret_type="workspace_secret"):
    aws = {"access_key_id": {"type": "plaintext" if secret_type == "plaintext" else "opaque",
                             "value": AKID},
           "secret_access_key": {"type": secret_type, "value": "{AWS_SECRET_ACCESS_KEY}"}}
    if session:
        aws["session_token"] = {"type": "workspace_secret", "value": "{AWS_SESSION_TOKEN}"}
    rule = {"name": "aws", "type": "aws", "aws": aws}
    if hosts:
        rule["match_hosts"] = hosts
    return rule


def start(stack, creds, session=False, **kw):
    secrets = {"AWS_SECRET_ACCESS_KEY": creds["secret"], "AWS_SESSION_TOKEN": creds["token"]}
    return stack.start({"rules": [aws_rule(session=session, **kw)]}, secrets=secrets)


def send(stack, d, method, url, body=None, headers=None):
    with requests.Session() as s:
        s.trust_env = False
        return s.request(method, url, data=body, headers=headers, proxies=d.proxies,
                         verify=stack.ca, timeout=30)


def check_signed(req, host, creds, session=False):
    """The request the origin received carries a signature botocore agrees with."""
    auth = req.header("Authorization")
    assert auth and auth.startswith("AWS4-HMAC-SHA256 Credential=%s/" % AKID), auth
    scope = parse_authorization(auth)
    for must in ("host", "x-amz-date", "x-amz-content-sha256"):
        assert must in scope["signed_headers"], scope
    if session:
        assert req.values("X-Amz-Security-Token") == [creds["token"]]
        assert "x-amz-security-token" in scope["signed_headers"]
    else:
        assert req.values("X-Amz-Security-Token") == []
    url = "https://%s%s" % (host, req.target)
    want = expected_authorization(req.method, url, req.headers, req.body, AKID, creds["secret"],
                                  creds["token"] if session else None)
    assert auth == want
    return scope


def test_dynamodb_post_is_resigned_and_botocore_agrees(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, DDB)
    d = start(stack, creds)
    body = b'{"TableName": "t1"}'
    r = send(stack, d, "POST", "https://%s/" % DDB, body, headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables",
        # what a sandbox holding only placeholders sends: all of it must go
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDFAKE/20200101/us-east-1/dynamodb/aws4_request, "
                         "SignedHeaders=host, Signature=" + "0" * 64,
        "X-Amz-Date": "20200101T000000Z", "X-Amz-Security-Token": "fake-token",
        "X-Amz-Content-Sha256": "0" * 64})
    assert r.status_code == 200, r.text
    [req] = origin.snapshot()
    scope = check_signed(req, DDB, creds)
    assert scope["region"] == "us-east-1" and scope["service"] == "dynamodb"
    assert "x-amz-target" in scope["signed_headers"] and "content-type" in scope["signed_headers"]
    assert req.header("X-Amz-Content-Sha256") == hashlib.sha256(body).hexdigest()
    assert "AKIDFAKE" not in req.header("Authorization")
    assert len(req.values("X-Amz-Date")) == 1 and req.header("X-Amz-Date") != "20200101T000000Z"
    assert creds["secret"] not in r.text
    [rec] = d.wait_audit(lambda a: a.get("host") == DDB)
    assert rec["decided_by"] == "aws" and "Authorization" in rec["injected_headers"]


def test_session_token_is_signed_and_sent(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, STS)
    d = start(stack, creds, session=True)
    r = send(stack, d, "POST", "https://%s/" % STS, b"Action=GetCallerIdentity&Version=2011-06-15",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    [req] = origin.snapshot()
    scope = check_signed(req, STS, creds, session=True)
    assert scope["region"] == "us-east-1" and scope["service"] == "sts"


def test_s3_odd_keys_and_queries_are_signed_as_s3_does(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, S3)
    d = start(stack, creds)
    targets = ["/a%20b%2Bc/%C3%A9t%C3%A9.txt?x-id=PutObject",
               "/dir//double/dot?list-type=2&prefix=a%2Fb&delimiter=%2F&empty=&flag",
               "/?versions&max-keys=5&key-marker=z"]
    for t in targets:
        assert send(stack, d, "PUT" if "PutObject" in t else "GET", "https://%s%s" % (S3, t),
                    b"hello s3" if "PutObject" in t else None).status_code == 200
    reqs = origin.snapshot()
    assert [r.target for r in reqs] == targets, "forwarded exactly as sent"
    for req in reqs:
        scope = check_signed(req, S3, creds)
        assert scope["service"] == "s3" and scope["region"] == "us-west-2"


def test_bedrock_runtime_signs_as_bedrock(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, BEDROCK)
    d = start(stack, creds)
    r = send(stack, d, "POST", "https://%s/model/anthropic.claude-v2%%3A1/invoke" % BEDROCK,
             b'{"prompt": "hi"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    [req] = origin.snapshot()
    assert check_signed(req, BEDROCK, creds)["service"] == "bedrock"


def test_large_s3_upload_is_signed_unsigned_payload(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, S3)
    d = start(stack, creds)
    big = os.urandom(9 * 1024 * 1024)
    r = send(stack, d, "PUT", "https://%s/big.bin" % S3, big)
    assert r.status_code == 200
    [req] = origin.snapshot()
    assert req.header("X-Amz-Content-Sha256") == "UNSIGNED-PAYLOAD"
    assert req.body == big
    check_signed(req, S3, creds)


def test_large_body_for_a_service_that_needs_its_hash_is_refused(stack, aws_leaf, creds, tmp_path):
    """curl sends Expect: 100-continue for a big upload, so it sees the 413 before the body."""
    import subprocess
    from conftest import client_env
    origin = aws_origin(stack, aws_leaf, DDB)
    d = start(stack, creds)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                        "--proxy", d.url, "--cacert", stack.ca, "--data-binary", "@%s" % big,
                        "https://%s/" % DDB], capture_output=True, env=client_env(str(tmp_path)),
                       timeout=30)
    assert p.stdout == b"413", (p.stdout, p.stderr)
    assert origin.snapshot() == []


def test_chunk_signed_s3_upload_is_refused(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, S3)
    d = start(stack, creds)
    r = send(stack, d, "PUT", "https://%s/k" % S3, b"x",
             headers={"X-Amz-Content-Sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"})
    assert r.status_code == 400
    assert origin.snapshot() == []


def test_an_amazonaws_host_without_a_region_is_refused_not_guessed(stack, aws_leaf, creds):
    origin = aws_origin(stack, aws_leaf, "foo.amazonaws.com")
    d = start(stack, creds)
    r = send(stack, d, "GET", "https://foo.amazonaws.com/")
    assert r.status_code == 502
    assert origin.snapshot() == []


def test_plaintext_aws_credentials_are_refused_by_config_check(stack, tmp_path, creds):
    import json
    import subprocess
    cfg = stack.config({"rules": [aws_rule(secret_type="plaintext")]},
                       secrets={"AWS_SECRET_ACCESS_KEY": creds["secret"]})
    path = tmp_path / "aws.json"
    path.write_text(json.dumps(cfg))
    p = subprocess.run([stack.binary, "config", "check", str(path)], capture_output=True,
                       timeout=20)
    assert p.returncode != 0
    assert b"plaintext" in p.stderr and creds["secret"].encode() not in p.stderr


def test_botocore_client_through_the_proxy(stack, aws_leaf, creds):
    """A real AWS SDK in the sandbox, with placeholder credentials: S3 PutObject arrives signed
    with the rule's real ones."""
    import botocore.session
    from botocore.config import Config
    origin = aws_origin(stack, aws_leaf, S3)
    origin.route("/reports/q1%202026.csv", lambda o, conn, req, keep: o.send(
        conn, 200, [("ETag", '"abc"'), ("Content-Length", "0")], b"", keep))
    d = start(stack, creds)
    session = botocore.session.Session()
    client = session.create_client(
        "s3", region_name="us-west-2", aws_access_key_id="AKIDPLACEHOLDER",
        aws_secret_access_key="placeholder", verify=stack.ca,
        config=Config(proxies={"https": d.url}, s3={"addressing_style": "virtual"},
                      retries={"max_attempts": 1}))
    client.put_object(Bucket="my-bucket", Key="reports/q1 2026.csv", Body=b"a,b\n1,2\n")
    [req] = origin.snapshot()
    assert req.method == "PUT" and req.body == b"a,b\n1,2\n"
    assert "AKIDPLACEHOLDER" not in req.header("Authorization")
    check_signed(req, S3, creds)
