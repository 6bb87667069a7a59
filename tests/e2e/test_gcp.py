"""GCP service-account credentials ("type": "gcp" rules, SPEC §2; issue 5).

The proxy signs a JWT (RS256) with the service account's private key, exchanges it at the
token endpoint for an access token, caches the token until shortly before it expires, and
injects it as `Authorization: Bearer` into requests to *.googleapis.com. A local stand-in for
oauth2.googleapis.com (reached through dns_remap, certificate from the test root) verifies the
assertion's signature against the service account's public key and its claims, as Google
does, and counts the exchanges."""
import base64
import json
import os
import threading
import time
import urllib.parse

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import SESSION_SECRETS
from helpers.origin import Origin

TOKEN_HOST = "oauth2.googleapis.com"
API_HOST = "storage.googleapis.com"
EMAIL = "e2e-sa@authproxy-test.iam.gserviceaccount.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


@pytest.fixture(scope="module")
def gcp_leaf(pki):
    return pki.root.issue("gcp", [TOKEN_HOST, API_HOST, "bigquery.googleapis.com"])


@pytest.fixture(scope="module")
def sa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sa_json(key):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    SESSION_SECRETS.add(pem.splitlines()[1])  # a line of the key: must never be logged
    return json.dumps({"type": "service_account", "project_id": "authproxy-test",
                       "private_key_id": "kid-e2e-1", "private_key": pem, "client_email": EMAIL,
                       "token_uri": "https://%s/token" % TOKEN_HOST})


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class TokenEndpoint:
    """Google's token endpoint, as far as the jwt-bearer grant goes: verifies the assertion
    (RS256 signature with the service account's public key, iss/aud/scope/iat/exp) and hands out
    a fresh access token per exchange."""

    def __init__(self, stack, leaf, public_key):
        self.public_key = public_key
        self.lock = threading.Lock()
        self.tokens = []
        self.problems = []
        self.expires_in = 3600
        self.fail_status = None
        self.delay = 0.0
        self.origin = Origin(leaf[0], leaf[1], name=TOKEN_HOST)
        stack.servers.append(self.origin)
        stack.remaps[TOKEN_HOST] = "127.0.0.1:%d" % self.origin.port
        self.origin.route("/token", self._token)

    def _check(self, req):
        form = urllib.parse.parse_qs(req.body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return "grant_type %r" % form.get("grant_type")
        if req.header("Content-Type") != "application/x-www-form-urlencoded":
            return "content type %r" % req.header("Content-Type")
        h64, c64, s64 = form["assertion"][0].split(".")
        header, claims = json.loads(b64url_decode(h64)), json.loads(b64url_decode(c64))
        try:
            self.public_key.verify(b64url_decode(s64), ("%s.%s" % (h64, c64)).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad signature"
        if header.get("alg") != "RS256" or header.get("kid") != "kid-e2e-1":
            return "header %r" % header
        now = time.time()
        if claims.get("iss") != EMAIL or claims.get("aud") != "https://%s/token" % TOKEN_HOST:
            return "claims %r" % claims
        if claims.get("scope") != SCOPE:
            return "scope %r" % claims.get("scope")
        if not (abs(claims["iat"] - now) < 60 and claims["exp"] - claims["iat"] == 3600):
            return "times %r" % claims
        return None

    def _token(self, origin, conn, req, keep):
        if self.delay:
            time.sleep(self.delay)
        problem = self._check(req)
        if problem or self.fail_status:
            with self.lock:
                if problem:
                    self.problems.append(problem)
                self.tokens.append(None)
            body = b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
            return Origin.send(conn, self.fail_status or 400,
                               [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))], body, keep)
        token = "ya29.e2e-" + os.urandom(16).hex()
        SESSION_SECRETS.add(token)
        with self.lock:
            self.tokens.append(token)
        body = json.dumps({"access_token": token, "expires_in": self.expires_in,
                           "token_type": "Bearer"}).encode()
        # chunked, as Google's front ends answer: the proxy's client must decode it
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        return Origin.send(conn, 200, [("Content-Type", "application/json; charset=utf-8"),
                                       ("Transfer-Encoding", "chunked")], chunked, keep)

    def count(self):
        with self.lock:
            return len(self.tokens)


@pytest.fixture
def gcp(stack, gcp_leaf, sa_key):
    tokens = TokenEndpoint(stack, gcp_leaf, sa_key.public_key())
    api = Origin(gcp_leaf[0], gcp_leaf[1], name=API_HOST)
    stack.servers.append(api)
    stack.remaps[API_HOST] = "127.0.0.1:%d" % api.port
    stack.remaps["bigquery.googleapis.com"] = "127.0.0.1:%d" % api.port
    return tokens, api


def start(stack, sa_key, **kw):
    rule = {"name": "gcp", "type": "gcp",
            "gcp": {"service_account_json": {"type": "workspace_secret", "value": "{GCP_SA}"},
                    "scopes": [SCOPE]}}
    return stack.start({"rules": [rule]}, secrets={"GCP_SA": sa_json(sa_key)}, **kw)


def get(stack, d, host=API_HOST, path="/storage/v1/b/bucket/o"):
    with requests.Session() as s:
        s.trust_env = False
        return s.get("https://%s%s" % (host, path), proxies=d.proxies, verify=stack.ca,
                     headers={"Authorization": "Bearer sandbox-placeholder"}, timeout=30)


def test_access_token_is_minted_injected_and_reused(stack, gcp, sa_key):
    tokens, api = gcp
    d = start(stack, sa_key)
    for host in (API_HOST, API_HOST, "bigquery.googleapis.com"):
        r = get(stack, d, host)
        assert r.status_code == 200, r.text
    assert tokens.problems == []
    assert tokens.count() == 1, "one token for every request until it nears expiry"
    [token] = tokens.tokens
    assert [q.values("Authorization") for q in api.snapshot()] == [["Bearer " + token]] * 3
    [rec, *_] = d.wait_audit(lambda a: a.get("host") == API_HOST)
    assert rec["decided_by"] == "gcp" and rec["injected_headers"] == ["Authorization"]


def test_concurrent_cold_requests_make_one_exchange(stack, gcp, sa_key):
    tokens, api = gcp
    tokens.delay = 0.5
    d = start(stack, sa_key)
    results = []

    def one():
        results.append(get(stack, d).status_code)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 40
    assert tokens.count() == 1


def test_token_is_refreshed_before_it_expires(stack, gcp, sa_key):
    """A token valid for 4 s is used for at most half its life (the refresh margin is
    min(300 s, expires_in / 2)), then exchanged again."""
    tokens, api = gcp
    tokens.expires_in = 4
    d = start(stack, sa_key)
    assert get(stack, d).status_code == 200
    assert get(stack, d).status_code == 200
    assert tokens.count() == 1
    time.sleep(2.5)
    assert get(stack, d).status_code == 200
    assert tokens.count() == 2
    first, second = tokens.tokens
    assert api.snapshot()[-1].values("Authorization") == ["Bearer " + second]


@pytest.mark.parametrize("status", [400, 500])
def test_token_endpoint_failure_gives_502_and_is_not_cached(stack, gcp, sa_key, status):
    tokens, api = gcp
    tokens.fail_status = status
    d = start(stack, sa_key)
    for _ in range(2):
        r = get(stack, d)
        assert r.status_code == 502
    assert tokens.count() == 2, "a failure is not cached"
    assert api.snapshot() == [], "nothing is forwarded without its credential"
    tokens.fail_status = None
    assert get(stack, d).status_code == 200


def test_a_key_the_endpoint_does_not_know_is_refused_there(stack, gcp, sa_key):
    """The stand-in really checks signatures: an assertion signed with another key fails, and
    so does the request (fail closed)."""
    tokens, api = gcp
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    d = start(stack, other)
    assert get(stack, d).status_code == 502
    assert tokens.problems == ["bad signature"]
    assert api.snapshot() == []
