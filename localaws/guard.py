"""What every request must pass before moto sees it.

* Host names a loopback address or localhost (a web page cannot reach the endpoint through a DNS
  name that it rebinds to 127.0.0.1);
* no browser cross-origin request: an `Origin` header, a `Sec-Fetch-Site` other than same-origin
  or none, and every OPTIONS preflight are refused; no `Access-Control-*` header is ever sent;
* moto's own routes (/moto-api/: reset, data, dashboard) are not served;
* a SigV4 `Authorization` header with one of this start's access keys and a signature that
  botocore's signer computes the same from the request as received; the job key pair may call
  only what a Batch job role may (S3, CloudWatch Logs, STS), never Batch;
* a body bound to the signature: `x-amz-content-sha256`, when sent, is the hex SHA-256 of the body
  (`UNSIGNED-PAYLOAD` and the streaming forms are refused: over plain HTTP they would let a captured
  request be replayed with any body), and no body over LOCALAWS_MAX_BODY_BYTES.

The body is read only after the key, the signed headers, the date and the declared length passed,
and, when the signature covers `x-amz-content-sha256`, after the signature itself: a request with
a wrong signature is refused before its body is read. A body is read once, hashed as it comes and
kept in memory up to SPOOL_IN_MEMORY_BYTES, in a temporary file beyond; moto reads that copy.
(After a refusal werkzeug reads and drops what the client still sends, 10 MB at a time, so that a
client still sending its body reads the refusal instead of a reset connection.)

`/_localaws/ready` answers "ready" once the endpoint is provisioned, and nothing else.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
import tempfile
import threading
from datetime import datetime, timezone
from typing import IO, Any, Callable, Iterable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import botocore.exceptions
import botocore.session
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials as BotocoreCredentials

from localaws import policy
from localaws.credentials import READY_PATH, Credentials

HIDDEN_PREFIXES = ("/moto-api", "/favicon.ico")
#: what the job key pair may call: the services a Batch job role grants on AWS (see the job role in
#: config/batch_resources.json), by the name moto routes them under
JOB_SERVICES = frozenset({"s3", "logs", "sts"})
MAX_CLOCK_SKEW_S = 15 * 60
_AUTH_FIELDS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

#: The largest request body the endpoint reads, in bytes (read when the endpoint starts).
MAX_BODY_ENV = "LOCALAWS_MAX_BODY_BYTES"
#: 1 GiB: ten times the largest single request the project's clients send (s3fs puts an object of up to
#: twice its 50 MiB block in one request and larger ones in 50 MiB parts; boto3's upload_file uses 8 MiB
#: parts), while moto keeps a whole body in memory as it handles it. S3 itself takes up to 5 GiB in one PUT.
DEFAULT_MAX_BODY_BYTES = 1 << 30
#: S3's own limit for one PUT: a larger setting would accept what AWS refuses.
S3_MAX_PUT_BYTES = 5 << 30
#: A body up to this size is held in memory while it is checked; a larger one in a temporary file.
SPOOL_IN_MEMORY_BYTES = 8 << 20
#: The largest body read before its signature can be checked: one whose hash no signed
#: x-amz-content-sha256 declares (the JSON and query APIs: Batch, CloudWatch Logs, SNS, IAM, Athena,
#: whose largest requests on AWS are about 1 MiB). S3 clients sign the header, so S3 bodies are
#: checked against their signature before they are read and only LOCALAWS_MAX_BODY_BYTES limits them.
UNDECLARED_HASH_MAX_BYTES = 16 << 20
_READ_CHUNK = 1 << 20
#: What a client sets so that its body is signed (the error for UNSIGNED-PAYLOAD says it).
_SIGN_THE_BODY = ("send the body's hex SHA-256 in a signed x-amz-content-sha256 header: botocore, boto3 and s3fs do "
                  "over http:// unless payload signing was turned off (with boto3, "
                  "botocore.config.Config(s3={'payload_signing_enabled': True}); with s3fs, "
                  "config_kwargs={'s3': {'payload_signing_enabled': True}})")


def max_body_setting(value: str | int | None) -> int:
    """The body limit a setting gives (None or "": DEFAULT_MAX_BODY_BYTES); ValueError unless 1 MiB to 5 GiB."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MAX_BODY_BYTES
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MAX_BODY_ENV} must be a whole number of bytes, not {value!r}") from None
    if not 1 << 20 <= limit <= S3_MAX_PUT_BYTES:
        raise ValueError(f"{MAX_BODY_ENV} must be from {1 << 20} (1 MiB) to {S3_MAX_PUT_BYTES} (5 GiB, S3's limit "
                         f"for one PUT), not {value!r}")
    return limit

StartResponse = Callable[..., Any]


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: A Host header as RFC 9110 has it here: a name or IPv4 address, or a bracketed IPv6 address, then an
#: optional port of digits. Nothing else may follow ("localhost:4612@evil.com" is not a loopback host).
_HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?")


def is_loopback_host(host_header: str) -> bool:
    """True for `localhost`, `127.x.y.z`, `[::1]`, each with or without a port, and nothing more."""
    match = _HOST_HEADER.fullmatch(host_header.strip().lower())
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        return False
    if match["name"] == "localhost":
        return True
    try:
        return ipaddress.ip_address(match["v6"] or match["name"]).is_loopback
    except ValueError:
        return False


class _ExactHeaders:
    """Sign exactly the headers the client says it signed (botocore would drop some by name), with the
    payload hash given (the body itself is not at hand: it may not have been read yet)."""

    payload_hash = ""

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name, value in request.headers.items():
            headers[name.lower()] = value
        return headers


class _ServiceSigner(_ExactHeaders, SigV4Auth):
    pass


class _S3Signer(_ExactHeaders, S3SigV4Auth):
    pass


class RequestGuard:
    """WSGI middleware in front of moto's DomainDispatcherApplication."""

    def __init__(self, app: Any, credentials: Credentials, max_body_bytes: int | None = None):
        self.app = app
        self.credentials = credentials
        self.max_body_bytes = max_body_setting(os.environ.get(MAX_BODY_ENV) if max_body_bytes is None
                                               else max_body_bytes)
        self.ready = threading.Event()
        self._conditional_writes = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        service = _signing_service(environ.get("HTTP_AUTHORIZATION", ""))
        try:
            self._check_browser_and_host(environ)
            path = environ.get("PATH_INFO", "")
            if path == READY_PATH:
                answer = _plain(start_response, 200 if self.ready.is_set() else 503,
                                "ready" if self.ready.is_set() else "starting")
                return [] if environ.get("REQUEST_METHOD") == "HEAD" else answer
            if path.startswith(HIDDEN_PREFIXES):
                raise Refusal(404, "NotFound", f"{path} is not served by the local AWS endpoint")
            access_key = self._authenticate(environ)
            if self.credentials.is_job_key(access_key):
                self._check_job_role(environ)
        except Refusal as refusal:
            answer = _error(start_response, service, refusal)
            # A reply to HEAD has headers only: body bytes after them break the client's next read.
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else answer
        if _is_conditional_write(environ):
            # moto checks If-Match / If-None-Match and then writes, with no lock between: two
            # writers could both pass. S3 admits one, so these writes run one at a time.
            with self._conditional_writes:
                return self.app(environ, _without_cors(start_response))
        return self.app(environ, _without_cors(start_response))

    # -- checks ---------------------------------------------------------------------------------

    def _check_job_role(self, environ: dict[str, Any]) -> None:
        """The job key may do what the job role's policy allows (localaws/policy.py), nothing else."""
        routed = self.app.get_application(environ).service
        if routed not in JOB_SERVICES:
            raise Refusal(403, "AccessDeniedException",
                          f"the Batch job role's key may call only {', '.join(sorted(JOB_SERVICES))}, "
                          f"not {routed}: a job cannot submit, terminate or change Batch resources")
        role, policy_name = policy.job_role_names()
        if routed == "s3":
            headers = {name[5:].lower().replace("_", "-"): value for name, value in environ.items()
                       if name.startswith("HTTP_")}
            needed = policy.s3_requests(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""),
                                        environ.get("QUERY_STRING", ""), headers, lambda: _body_again(environ))
        else:
            needed = [policy.Request(f"{routed}:{_json_target(environ)}", "*")]
        try:
            policy.check(policy.role_policy(role, policy_name), needed, role)
        except policy.NotAllowed as exc:
            raise Refusal(403, "AccessDenied" if routed == "s3" else "AccessDeniedException", str(exc)) from None

    @staticmethod
    def _check_browser_and_host(environ: dict[str, Any]) -> None:
        host = environ.get("HTTP_HOST", "")
        if not is_loopback_host(host):
            raise Refusal(403, "AccessDenied",
                          f"Host header {host!r} is not a loopback address: the local AWS endpoint answers only "
                          "requests addressed to 127.0.0.1, [::1] or localhost")
        if "HTTP_ORIGIN" in environ or environ.get("HTTP_SEC_FETCH_SITE", "none") not in ("same-origin", "none"):
            raise Refusal(403, "AccessDenied", "cross-origin browser requests are refused by the local AWS endpoint")
        if environ.get("REQUEST_METHOD") == "OPTIONS":
            raise Refusal(403, "AccessDenied", "CORS preflight requests are refused by the local AWS endpoint")

    def _authenticate(self, environ: dict[str, Any]) -> str:
        """The access key of a correctly signed request, else Refusal."""
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
            raise Refusal(403, "AccessDenied", "the local AWS endpoint does not accept presigned URLs: "
                                               "sign requests with an Authorization header")
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise Refusal(403, "MissingAuthenticationToken",
                          "Request is missing Authentication Token: sign it with the credentials the local AWS "
                          "endpoint generated (the aws_default connection, or the file given to "
                          "`python -m localaws serve --credentials`)")
        scheme, _, rest = header.partition(" ")
        fields = dict(_AUTH_FIELDS.findall(rest))
        if scheme != "AWS4-HMAC-SHA256" or set(fields) != {"Credential", "SignedHeaders", "Signature"}:
            raise Refusal(403, "IncompleteSignature",
                          "the Authorization header must be AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature")
        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise Refusal(403, "IncompleteSignature", f"malformed Credential scope {fields['Credential']!r}")
        access_key, date, region, service, _ = scope
        secret = self.credentials.secret_for(access_key)
        if secret is None:
            code = "InvalidAccessKeyId" if service == "s3" else "InvalidClientTokenId"
            raise Refusal(403, code,
                          f"access key {access_key} is not one of this local AWS endpoint's: it generates new "
                          "credentials at each start (make up and make demo put them in the aws_default "
                          "connection; `python -m localaws serve --credentials FILE` keeps them in FILE)")
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed:
            raise Refusal(403, "SignatureDoesNotMatch", "the signature must cover the Host header")
        timestamp = environ.get("HTTP_X_AMZ_DATE", "")
        _check_clock(timestamp, date)
        declared = _declared_payload_hash(environ)
        # A signed x-amz-content-sha256 is the payload hash of the signature: the signature is checked
        # before a byte of the body is read. Without it the signature covers the body's own hash, so the
        # body must be read first, and only a small one is.
        hash_is_signed = declared is not None and "x-amz-content-sha256" in signed
        limit = self.max_body_bytes if hash_is_signed else min(self.max_body_bytes, UNDECLARED_HASH_MAX_BYTES)
        _check_length(environ, limit, hash_is_signed)

        def check_signature(payload_hash: str) -> None:
            expected = _signature(environ, payload_hash, signed, timestamp, access_key, secret, region, service)
            if not hmac.compare_digest(expected, fields["Signature"]):
                raise Refusal(403, "SignatureDoesNotMatch",
                              "The request signature we calculated does not match the signature you provided: "
                              "check the secret access key and the signing method")

        if hash_is_signed:
            check_signature(declared)
        actual = _read_body(environ, limit, hash_is_signed)
        if declared is not None and declared.lower() != actual:
            raise Refusal(400, "XAmzContentSHA256Mismatch",
                          "the x-amz-content-sha256 header does not match the request body")
        if not hash_is_signed:
            check_signature(actual)
        return access_key


def _body_again(environ: dict[str, Any]) -> bytes:
    """The request body, already read and checked by `_authenticate`, read again and left for moto to read."""
    stream = environ["wsgi.input"]
    body = stream.read()
    stream.seek(0)
    return body


def _json_target(environ: dict[str, Any]) -> str:
    """The operation of a JSON or query protocol call (X-Amz-Target `Service.Operation`, or the Action parameter)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    body = _body_again(environ).decode("utf-8", "replace")
    for text in (environ.get("QUERY_STRING", ""), body):
        for pair in text.split("&"):
            name, _, value = pair.partition("=")
            if name == "Action":
                return value
    return "(unknown operation)"


def _is_conditional_write(environ: dict[str, Any]) -> bool:
    return environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE") and (
        "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ)


def _signing_service(header: str) -> str:
    match = re.search(r"Credential=[^/,\s]+/[^/]+/[^/]+/([^/,\s]+)/", header)
    return match.group(1) if match else ""


def _check_clock(timestamp: str, scope_date: str) -> None:
    try:
        signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise Refusal(403, "IncompleteSignature", "the X-Amz-Date header is missing or not YYYYMMDDTHHMMSSZ") from None
    if timestamp[:8] != scope_date:
        raise Refusal(403, "SignatureDoesNotMatch", "the Credential scope date is not the X-Amz-Date day")
    skew = abs((datetime.now(timezone.utc) - signed_at).total_seconds())
    if skew > MAX_CLOCK_SKEW_S:
        raise Refusal(403, "RequestTimeTooSkewed",
                      f"the request was signed {skew:.0f} s away from the endpoint's clock (at most {MAX_CLOCK_SKEW_S} s)")


def _declared_payload_hash(environ: dict[str, Any]) -> str | None:
    """The x-amz-content-sha256 header (None when absent); Refusal unless it is a hex SHA-256.

    `UNSIGNED-PAYLOAD` and the streaming forms (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`,
    `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, whose chunk signatures are not checked here) leave the body
    out of the signature: over plain HTTP anyone who sees a request could send it again with another body.
    """
    value = environ.get("HTTP_X_AMZ_CONTENT_SHA256")
    if value is None or _HEX_SHA256.fullmatch(value):
        return value
    raise Refusal(400, "InvalidRequest",
                  f"x-amz-content-sha256 is {value[:80]!r}: the local AWS endpoint is plain HTTP and takes only "
                  f"bodies covered by the signature; {_SIGN_THE_BODY}")


def _declared_length(environ: dict[str, Any]) -> int | None:
    """Content-Length as a number (0 when absent); None for a chunked body, whose length is known once read."""
    if environ.get("wsgi.input_terminated"):
        return None
    text = (environ.get("CONTENT_LENGTH") or "0").strip()
    if not text.isdigit():
        raise Refusal(400, "InvalidRequest", f"Content-Length {text[:40]!r} is not a number of bytes")
    return int(text)


def _too_large(size: str, limit: int, hash_is_signed: bool) -> Refusal:
    if not hash_is_signed and limit == UNDECLARED_HASH_MAX_BYTES:
        return Refusal(413, "EntityTooLarge",
                       f"the request body ({size}) is over {limit} bytes and no signed x-amz-content-sha256 header "
                       "declares its hash: the local AWS endpoint reads a body that large only once the signature "
                       f"has been checked; {_SIGN_THE_BODY}")
    return Refusal(413, "EntityTooLarge",
                   f"the request body ({size}) is larger than the local AWS endpoint takes in one request "
                   f"({limit} bytes, {MAX_BODY_ENV}): upload it in parts (multipart upload; s3fs and boto3's "
                   "upload_file do so by themselves) or start the endpoint with a larger "
                   f"{MAX_BODY_ENV} (at most {S3_MAX_PUT_BYTES}, S3's limit for one PUT)")


def _check_length(environ: dict[str, Any], limit: int, hash_is_signed: bool) -> None:
    """Refuse a declared Content-Length over `limit` before anything of the body is read."""
    length = _declared_length(environ)
    if length is not None and length > limit:
        raise _too_large(f"Content-Length {length}", limit, hash_is_signed)


def _read_body(environ: dict[str, Any], limit: int, hash_is_signed: bool) -> str:
    """Read the body once, hashing it as it comes; moto then reads the copy. Returns its hex SHA-256.

    The copy stays in memory up to SPOOL_IN_MEMORY_BYTES and goes to a temporary file beyond, so a
    large body is never held twice. A chunked body (`wsgi.input_terminated`: werkzeug removes the
    chunking) is read to its end, and refused as soon as it passes `limit`.
    """
    stream = environ["wsgi.input"]
    declared = _declared_length(environ)
    remaining = limit + 1 if declared is None else declared
    copy: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, prefix="localaws-body-")
    digest = hashlib.sha256()
    size = 0
    try:
        while remaining > 0:
            try:
                chunk = stream.read(min(_READ_CHUNK, remaining))
            except (OSError, ValueError) as error:  # werkzeug's DechunkedInput: "Invalid chunk header"
                raise Refusal(400, "IncompleteBody", f"the request body could not be read after {size} bytes: "
                                                     f"{error}") from None
            if not chunk:
                break
            size += len(chunk)
            remaining -= len(chunk)
            if size > limit:
                raise _too_large(f"more than {limit} bytes, chunked", limit, hash_is_signed)
            digest.update(chunk)
            copy.write(chunk)
        if declared is not None and size < declared:
            raise Refusal(400, "IncompleteBody",
                          f"the request ended after {size} of the {declared} bytes its Content-Length announced")
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    environ["wsgi.input"] = copy
    return digest.hexdigest()


def _signature(environ: dict[str, Any], payload_hash: str, signed: list[str], timestamp: str,
               access_key: str, secret: str, region: str, service: str) -> str:
    raw_target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if "://" in raw_target:  # absolute form
        parts = urlsplit(raw_target)
        raw_target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {}
    for name in signed:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        value = environ.get(key)
        if value is None:
            raise Refusal(403, "SignatureDoesNotMatch", f"the signed header {name!r} is not in the request")
        headers[name] = value
    request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"),
                         url=f"http://{environ.get('HTTP_HOST', '')}{raw_target}", headers=headers)
    request.context["timestamp"] = timestamp
    signer_class = _S3Signer if service == "s3" else _ServiceSigner
    signer = signer_class(BotocoreCredentials(access_key, secret), service, region)
    signer.payload_hash = payload_hash
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


# -- responses ----------------------------------------------------------------------------------

def _without_cors(start_response: StartResponse) -> StartResponse:
    def filtered(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        kept = [(name, value) for name, value in headers if not name.lower().startswith("access-control-")]
        return start_response(status, kept, *args)
    return filtered


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
            503: "Service Unavailable"}


def _plain(start_response: StartResponse, status: int, text: str) -> list[bytes]:
    body = text.encode()
    start_response(f"{status} {_REASONS[status]}", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _error(start_response: StartResponse, service: str, refusal: Refusal) -> list[bytes]:
    """An error body in the signing service's protocol, so that SDKs report the code and message."""
    code, message = escape(refusal.code), escape(refusal.message)
    protocol = _protocol(service)
    if protocol in ("rest-xml", "query", "ec2"):
        content_type = "text/xml"
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                "<RequestId>0</RequestId></ErrorResponse>")
        if protocol == "rest-xml":
            body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    else:
        content_type = "application/x-amz-json-1.1"
        body = json.dumps({"__type": refusal.code, "message": refusal.message, "Message": refusal.message})
    data = body.encode()
    start_response(f"{refusal.status} {_REASONS[refusal.status]}", [
        ("Content-Type", content_type), ("Content-Length", str(len(data))), ("x-amzn-ErrorType", refusal.code)])
    return [data]


@functools.lru_cache(maxsize=64)
def _protocol(signing_name: str) -> str:
    """The API protocol of the service signed for (S3's XML for requests that name none)."""
    if not signing_name:
        return "rest-xml"
    try:
        return botocore.session.get_session().get_service_model(signing_name).metadata["protocol"]
    except botocore.exceptions.UnknownServiceError:
        return "json"
