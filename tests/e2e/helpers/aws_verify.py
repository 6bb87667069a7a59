"""Independent check of authproxy's AWS SigV4 signatures with botocore (Debian python3-botocore).

An origin standing in for an AWS endpoint receives the request the proxy signed. Given that
request and the real credentials, `expected_authorization` has botocore sign the same request
and returns the Authorization value botocore computes; the test compares it with the one the
proxy sent. What is taken from the received request rather than recomputed:

  * region and service: the credential scope in the received Authorization (deriving them from
    the host is tested in tests/unit/test_sigv4.c);
  * the signing time: the received X-Amz-Date;
  * which headers are signed: the received SignedHeaders list (pass `signed_headers` to impose
    another list). botocore itself always adds x-amz-date, x-amz-security-token when there is a
    session token and, for S3, x-amz-content-sha256, so a proxy that forgets those is caught.

What is recomputed: the payload hash (SHA-256 of `body`, unless the received
X-Amz-Content-Sha256 says the payload is unsigned), the canonical URI (botocore's
S3SigV4Auth / SigV4Auth rules), the canonical headers, the string to sign and the HMAC chain.

Query strings: botocore signs the query of a URL as it finds it (its own clients always send it
canonically encoded), whereas AWS decodes what it receives and re-encodes it. So the query is
decoded here the way AWS reads it ('+' is a space, %XX a byte, a key without '=' has an empty
value, empty pieces are ignored), re-encoded with urllib's quote (only A-Z a-z 0-9 - _ . ~ bare)
and handed to botocore, which sorts it.
"""
import hashlib
import re
import types
import urllib.parse

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
S3_SERVICES = ("s3", "s3-object-lambda", "s3-outposts")

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def parse_authorization(value):
    """Splits a SigV4 Authorization value into a dict (akid, date, region, service,
    signed_headers as a list, signature); ValueError if it is not one."""
    m = _AUTHORIZATION.fullmatch(value)
    if m is None:
        raise ValueError("not a SigV4 Authorization value: %r" % value)
    d = m.groupdict()
    d["signed_headers"] = d.pop("signed").split(";")
    return d


def _header_items(headers):
    return list(headers.items()) if hasattr(headers, "items") else list(headers)


def _get(items, name):
    for k, v in items:
        if k.lower() == name:
            return v
    return None


def _aws_query(query):
    """The query as AWS reads it, re-encoded canonically (unsorted: botocore sorts)."""
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        enc = [
            urllib.parse.quote_from_bytes(
                urllib.parse.unquote_to_bytes(part.replace("+", " ")), safe="-_.~"
            )
            for part in (key, value)
        ]
        pairs.append("%s=%s" % tuple(enc))
    return "&".join(pairs)


def _at_time(signer_class, timestamp):
    """signer_class whose add_auth signs at `timestamp` (YYYYMMDDTHHMMSSZ) instead of now: the
    steps of botocore's own add_auth, with the clock taken out."""

    class FixedTime(signer_class):
        def add_auth(self, request):
            request.context["timestamp"] = timestamp
            self._modify_request_before_signing(request)
            canonical_request = self.canonical_request(request)
            string_to_sign = self.string_to_sign(request, canonical_request)
            signature = self.signature(string_to_sign, request)
            self._inject_signature_to_request(request, signature)

    return FixedTime


def expected_authorization(
    method, url, headers, body, access_key, secret_key, session_token=None, signed_headers=None
):
    """The Authorization value botocore computes for the request an origin received.

    method: "GET"; url: "https://<Host>/<path>?<query>" with path and query exactly as received;
    headers: the received headers, a dict or a list of (name, value) pairs (repeated names are
    joined as SigV4 wants); body: the received body bytes. The received headers must include
    Authorization (for the scope and SignedHeaders) and X-Amz-Date."""
    items = _header_items(headers)
    received = _get(items, "authorization")
    amz_date = _get(items, "x-amz-date")
    if received is None or amz_date is None:
        raise ValueError("the request has no Authorization or no X-Amz-Date header")
    scope = parse_authorization(received)
    signed = [h.lower() for h in (signed_headers or scope["signed_headers"])]

    parts = urllib.parse.urlsplit(url)
    canonical_url = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path or "/", _aws_query(parts.query), "")
    )
    is_s3 = scope["service"] in S3_SERVICES
    content_sha256 = _get(items, "x-amz-content-sha256")
    unsigned = content_sha256 in UNSIGNED_PAYLOADS

    request = AWSRequest(method=method, url=canonical_url, data=body or b"")
    for name, value in items:
        lname = name.lower()
        if lname not in signed or lname in ("authorization", "x-amz-date",
                                             "x-amz-security-token", "x-amz-content-sha256"):
            continue
        request.headers[name] = value
    if "x-amz-content-sha256" in signed and not is_s3:
        # SigV4Auth takes a present X-Amz-Content-SHA256 as the payload hash; give it the real
        # one so that a proxy hashing the wrong bytes is caught.
        request.headers["X-Amz-Content-SHA256"] = (
            content_sha256 if unsigned else hashlib.sha256(body or b"").hexdigest()
        )
    if is_s3 and content_sha256 == "UNSIGNED-PAYLOAD":
        request.context["client_config"] = types.SimpleNamespace(
            s3={"payload_signing_enabled": False}
        )
    if is_s3 and content_sha256 == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
        request.context["checksum"] = {
            "request_algorithm": {"in": "trailer", "name": "x-amz-checksum-crc32"}
        }

    signer_class = _at_time(S3SigV4Auth if is_s3 else SigV4Auth, amz_date)
    credentials = Credentials(access_key, secret_key, session_token)
    signer_class(credentials, scope["service"], scope["region"]).add_auth(request)
    return request.headers["Authorization"]
