"""The job key pair holds the job role's permissions: the policy provisioning gives that role, enforced here.

On AWS a Batch job's calls are signed with its job role's credentials and IAM allows each only where the
role's policy does. Locally every job signs with the endpoint's job key pair; the guard asks this module
whether the role's policy allows the request, reading the policy from the endpoint's own IAM (as
provisioning wrote it from config/batch_resources.json, `operators.kit.provisioning.job_role_policy`): one
source for AWS and for the local endpoint.

What is evaluated, as IAM does for the subset the project uses: Allow statements whose Action and
Resource patterns (`*` and `?`) match and whose `StringLike` / `StringEquals` conditions hold; a Deny
that matches wins; anything not allowed is denied. S3 requests are mapped to their actions the way the
S3 authorisation documentation lists them (GetObject, PutObject with multipart uploads, DeleteObject
per key of a DeleteObjects body, ListBucket with its `s3:prefix`, CopyObject needing GetObject on the
source). Every other S3 request (bucket configuration, ACLs, tagging, listing all buckets) and every
call to another service is denied, except `sts:GetCallerIdentity`, which AWS answers for any key.

CloudWatch Logs: the role grants none. A job's stdout and stderr reach its own log stream through the
endpoint, as the awslogs driver writes them on AWS with the execution role's permission, so a job
cannot write into another job's stream.
"""
from __future__ import annotations

import functools
import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

#: Always allowed: AWS answers GetCallerIdentity for any valid key, whatever its policies say.
ALWAYS_ALLOWED = frozenset({"sts:GetCallerIdentity"})
#: Query parameters that select an object's data or a multipart step, not a sub-resource such as ?acl.
_OBJECT_QUERY = frozenset({"versionId", "partNumber", "uploadId", "response-content-type", "response-content-disposition",
                           "response-content-encoding", "response-content-language", "response-expires",
                           "response-cache-control", "x-id"})
_LIST_QUERY = frozenset({"list-type", "prefix", "delimiter", "max-keys", "marker", "continuation-token",
                         "start-after", "fetch-owner", "encoding-type", "x-id"})


@dataclass(frozen=True)
class Request:
    """One IAM action the request needs, on one resource, with its condition keys."""

    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.action} on {self.resource}" + "".join(f" ({k}={v!r})" for k, v in self.context.items())


class NotAllowed(Exception):
    """The role's policy does not allow this request; the message names the action and resource."""


def s3_requests(method: str, path: str, query: str, headers: dict[str, str], body: Callable[[], bytes]) -> list[Request]:
    """The IAM actions a path-style S3 request needs (`path` percent-decoded already, as WSGI gives it)."""
    params = parse_qs(query, keep_blank_values=True)
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return [Request("s3:ListAllMyBuckets", "*")]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method in ("GET", "HEAD") and set(params) <= _LIST_QUERY:
            return [Request("s3:ListBucket", bucket_arn, {"s3:prefix": (params.get("prefix") or [""])[0]})]
        if method == "POST" and set(params) == {"delete"}:
            keys = _deleted_keys(body())
            return [Request("s3:DeleteObject", f"{bucket_arn}/{name}") for name in keys] or [
                Request("s3:DeleteObject", f"{bucket_arn}/")]
        sub = ",".join(sorted(params)) or "(none)"
        return [Request(f"s3:{method}Bucket?{sub}", bucket_arn)]  # bucket configuration: never a job's
    object_arn = f"{bucket_arn}/{key}"
    if not set(params) <= _OBJECT_QUERY | {"uploads"}:
        sub = ",".join(sorted(set(params) - _OBJECT_QUERY))
        return [Request(f"s3:{method}Object?{sub}", object_arn)]  # ACLs, tagging, retention...
    if method in ("GET", "HEAD"):
        return [Request("s3:GetObject", object_arn)]
    if method in ("PUT", "POST"):
        needed = [Request("s3:PutObject", object_arn)]
        source = headers.get("x-amz-copy-source")
        if source:
            source_path = unquote(source.split("?", 1)[0]).lstrip("/")
            needed.append(Request("s3:GetObject", f"arn:aws:s3:::{source_path}"))
        return needed
    if method == "DELETE":
        return [Request("s3:AbortMultipartUpload" if "uploadId" in params else "s3:DeleteObject", object_arn)]
    return [Request(f"s3:{method}Object", object_arn)]


def _deleted_keys(body: bytes) -> list[str]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise NotAllowed("the DeleteObjects body is not XML: the keys it deletes cannot be checked") from None
    return [element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Key"]


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text), re.DOTALL)


def _matches(patterns: Any, value: str, case_sensitive: bool = True) -> bool:
    for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
        flags = 0 if case_sensitive else re.IGNORECASE
        if re.fullmatch(_pattern(str(pattern)).pattern, value, flags):
            return True
    return False


def _conditions_hold(conditions: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, tests in (conditions or {}).items():
        for key, expected in tests.items():
            value = context.get(key)
            if value is None:
                return False
            if operator == "StringLike":
                if not _matches(expected, value):
                    return False
            elif operator == "StringEquals":
                if value not in ([expected] if isinstance(expected, str) else expected):
                    return False
            else:  # an operator this evaluator does not know never grants anything
                return False
    return True


def _statement_matches(statement: dict[str, Any], request: Request) -> bool:
    if "NotAction" in statement or "NotResource" in statement:
        return False  # not used by the project's policies: never read as a grant
    return (_matches(statement.get("Action"), request.action, case_sensitive=False)
            and _matches(statement.get("Resource"), request.resource)
            and _conditions_hold(statement.get("Condition") or {}, request.context))


def allowed(document: dict[str, Any] | None, request: Request) -> bool:
    if request.action in ALWAYS_ALLOWED:
        return True
    statements = (document or {}).get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    if any(s.get("Effect") == "Deny" and _statement_matches(s, request) for s in statements):
        return False
    return any(s.get("Effect") == "Allow" and _statement_matches(s, request) for s in statements)


def check(document: dict[str, Any] | None, requests: list[Request], role: str) -> None:
    for request in requests:
        if not allowed(document, request):
            raise NotAllowed(f"the Batch job role {role} does not allow {request.describe()}: a job may read the "
                             "batches, worklists and published models and write outputs/ under DATA_ROOT "
                             "(config/batch_resources.json, job_role), nothing else")


def role_policy(role_name: str, policy_name: str) -> dict[str, Any] | None:
    """The role's inline policy as this endpoint's IAM holds it; None when it has none (a local DATA_ROOT)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    try:
        role = iam_backends[DEFAULT_ACCOUNT_ID]["global"].get_role(role_name)
    except Exception:  # no such role: nothing is granted
        return None
    text = role.policies.get(policy_name)
    if not text:
        return None
    return json.loads(unquote(text) if text.lstrip().startswith("%") else text)


@functools.lru_cache(maxsize=1)
def job_role_names() -> tuple[str, str]:
    """(role name, inline policy name) of the job role, from the code and spec that provision it."""
    import sys

    from localaws.repo import REPO

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from operators.kit.provisioning import JOB_ROLE_POLICY_NAME, load_spec

    return load_spec()["job_role"]["name"], JOB_ROLE_POLICY_NAME
