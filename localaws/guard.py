"""What every request must pass before moto sees it.

* Host names a loopback address or localhost (a web page cannot reach the endpoint through a DNS
  name that it rebinds to 127.0.0.1);
* no browser cross-origin request: an `Origin` header, a `Sec-Fetch-Site` other than same-origin
  or none, and every OPTIONS preflight are refused; no `Access-Control-*` header is ever sent;
* moto's own routes (/moto-api/: reset, data, dashboard) are not served;
* a SigV4 `Authorization` header with one of this start's access keys and a signature that
  botocore's signer computes the same from the request as received; the job key pair may call
  only what a Batch job role may (S3, CloudWatch Logs, STS), never Batch.

`/_localaws/ready` answers "ready" once the endpoint is provisioned, and nothing else.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import io
import ipaddress
import json
import re
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import botocore.exceptions
import botocore.session
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials as BotocoreCredentials

from localaws.credentials import READY_PATH, Credentials

HIDDEN_PREFIXES = ("/moto-api", "/favicon.ico")
#: what the job key pair may call: the services a Batch job role grants on AWS (see the job role in
#: config/batch_resources.json), by the name moto routes them under
JOB_SERVICES = frozenset({"s3", "logs", "sts"})
MAX_CLOCK_SKEW_S = 15 * 60
_AUTH_FIELDS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")

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
    """Sign exactly the headers the client says it signed (botocore would drop some by name)."""

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

    def __init__(self, app: Any, credentials: Credentials):
        self.app = app
        self.credentials = credentials
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
                routed = self.app.get_application(environ).service
                if routed not in JOB_SERVICES:
                    raise Refusal(403, "AccessDeniedException",
                                  f"the Batch job role's key may call only {', '.join(sorted(JOB_SERVICES))}, "
                                  f"not {routed}: a job cannot submit, terminate or change Batch resources")
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
        body = _read_body(environ)
        content_sha = environ.get("HTTP_X_AMZ_CONTENT_SHA256", "")
        if _HEX_SHA256.match(content_sha) and content_sha != hashlib.sha256(body).hexdigest():
            raise Refusal(400, "XAmzContentSHA256Mismatch",
                          "the x-amz-content-sha256 header does not match the request body")
        expected = _signature(environ, body, signed, timestamp, access_key, secret, region, service)
        if not hmac.compare_digest(expected, fields["Signature"]):
            raise Refusal(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature you provided: check "
                          "the secret access key and the signing method")
        return access_key


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


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, read once; moto then reads the same bytes."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Refusal(400, "InvalidRequest", "Content-Length is not a number") from None
        body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _signature(environ: dict[str, Any], body: bytes, signed: list[str], timestamp: str,
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
                         url=f"http://{environ.get('HTTP_HOST', '')}{raw_target}", headers=headers, data=body)
    request.context["timestamp"] = timestamp
    signer_class = _S3Signer if service == "s3" else _ServiceSigner
    signer = signer_class(BotocoreCredentials(access_key, secret), service, region)
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


# -- responses ----------------------------------------------------------------------------------

def _without_cors(start_response: StartResponse) -> StartResponse:
    def filtered(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        kept = [(name, value) for name, value in headers if not name.lower().startswith("access-control-")]
        return start_response(status, kept, *args)
    return filtered


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}


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
