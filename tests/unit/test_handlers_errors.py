"""The reconcile handler's reading of API errors: a namespace being deleted refuses every create with 403
NamespaceTerminating, which is the end of the resource, not a permission problem to retry and log as one."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ForbiddenError

from agentfleet.control.handlers import namespace_terminating


def _api(status: int, cause: str, *, as_bytes: bool = False) -> ApiException:
    e = ApiException(status=status, reason="Forbidden")
    body = json.dumps({"kind": "Status", "reason": "Forbidden", "code": status,
                       "details": {"causes": [{"reason": cause, "message": "namespace x is being terminated"}]}})
    e.body = body.encode() if as_bytes else body
    return e


@pytest.mark.parametrize("err, expected", [
    (_api(403, "NamespaceTerminating"), True),
    (_api(403, "NamespaceTerminating", as_bytes=True), True),
    (ForbiddenError(_api(403, "NamespaceTerminating")), True),
    (_api(403, "FieldValueForbidden"), False),       # RBAC or admission: a real 403, reported and retried
    (ForbiddenError(_api(403, "")), False),
    (_api(409, "NamespaceTerminating"), False),
    (RuntimeError("NamespaceTerminating"), False),
])
def test_namespace_terminating(err: BaseException, expected: bool) -> None:
    assert namespace_terminating(err) is expected
