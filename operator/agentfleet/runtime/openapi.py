"""The OpenAPI 3.1 descriptions of the runtime's and the router's HTTP endpoints, generated from one source: the
wire models in protocol.py (request bodies and the error body) and the routes each server registers. The runtime
serves its own at `GET /openapi.json`; the router (a lower layer, which cannot import this) serves the committed
copy, `router/openapi.json`. `python -m agentfleet.runtime.openapi` rewrites both committed files
(`runtime/web/openapi.json` and `router/openapi.json`); a unit test fails when either is stale. The fuzzer
(tests/unit/fuzz) draws its requests from these documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from ..router.proxy import ADMIN_TOKEN_HEADER, MAX_BODY_BYTES as ROUTER_MAX_BODY_BYTES, PROXIED
from .protocol import ChatRequest, ErrorBody, ResponseRequest, RunRequest

__all__ = ["runtime_openapi", "router_openapi", "RUNTIME_FILE", "ROUTER_FILE", "write_files"]

RUNTIME_FILE = Path(__file__).with_name("web") / "openapi.json"
ROUTER_FILE = Path(__file__).parent.parent / "router" / "openapi.json"
_REF = "#/components/schemas/{model}"
_ERROR_STATUSES = {"400": "The request is wrong (the message and `param` say what).",
                   "401": "No API key, or one the key store does not hold.",
                   "404": "No such route, run or source (someone else's looks the same as none).",
                   "405": "The route does not take this method.",
                   "408": "The body did not arrive in time.",
                   "413": "The body is larger than the endpoint takes.",
                   "415": "The body's charset is not UTF-8.",
                   "429": "Over a limit: a Budget, failed authentication (Retry-After) or runs in progress."}


def _schemas(*, with_responses: bool = True) -> dict[str, Any]:
    models = [ChatRequest, RunRequest, ErrorBody] + ([ResponseRequest] if with_responses else [])
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return top.get("$defs", {})


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"description": _ERROR_STATUSES[s], "content": _json_content(_ref("ErrorBody"))} for s in statuses}


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        parameters: list[dict[str, Any]] | None = None, secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(body)}
    if parameters:
        op["parameters"] = parameters
    if not secured:
        op["security"] = []
    return op


_OBJECT = {"type": "object"}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
_RESPONSE_ID = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 70}}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 256}}
_DOC_ID = {"name": "doc_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_A2A_VERSION = {"name": "A2A-Version", "in": "header", "required": False,
                "schema": {"type": "string", "enum": ["1.0", "0.3"]}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}


def runtime_openapi() -> dict[str, Any]:
    ok_json = {"description": "OK", "content": _json_content(_OBJECT)}
    run_errors = _errors("401", "404", "429")
    paths: dict[str, Any] = {
        "/v1/chat/completions": {"post": _op(
            "An OpenAI chat completion answered by the agent (SSE when `stream` is true).",
            {"200": {"description": "The completion, or its SSE chunks",
                     "content": {**_json_content(_OBJECT), "text/event-stream": {"schema": {"type": "string"}}}},
             **_errors("400", "401", "408", "413", "415", "429")},
            body=_ref("ChatRequest"), parameters=[_IDEMPOTENCY])},
        "/v1/models": {"get": _op("OpenAI's model list: the AgentApp, by its name.",
                                  {"200": ok_json, **_errors("401", "429")})},
        "/v1/models/{model}": {"get": _op("One model of the list.", {"200": ok_json, **_errors("401", "404", "429")},
                                          parameters=[_MODEL])},
        "/v1/responses": {"post": _op(
            "An OpenAI Responses API response answered by the agent (SSE with the documented event types when "
            "`stream` is true); `previous_response_id` continues a stored response of the caller's.",
            {"200": {"description": "The response, or its SSE events",
                     "content": {**_json_content(_OBJECT), "text/event-stream": {"schema": {"type": "string"}}}},
             **_errors("400", "401", "404", "408", "413", "415", "429")},
            body=_ref("ResponseRequest"), parameters=[_IDEMPOTENCY])},
        "/v1/responses/{response_id}": {"get": _op(
            "A stored response of the caller's (someone else's, or one made with `store: false`, is a 404).",
            {"200": ok_json, **run_errors}, parameters=[_RESPONSE_ID])},
        "/v1/runs": {"post": _op(
            "Start a run (an agent task that outlives the request).",
            {"202": {"description": "Accepted", "content": _json_content(_OBJECT)},
             "200": {"description": "The run this Idempotency-Key started before", "content": _json_content(_OBJECT)},
             **_errors("400", "401", "408", "413", "415", "429")},
            body=_ref("RunRequest"), parameters=[_IDEMPOTENCY])},
        "/v1/runs/{run_id}": {
            "get": _op("A run of the caller's, with its steps.", {"200": ok_json, **run_errors},
                       parameters=[_RUN_ID]),
            "delete": _op("Cancel a run of the caller's.", {"200": ok_json, **run_errors}, parameters=[_RUN_ID])},
        "/v1/runs/{run_id}/cancel": {"post": _op("Cancel a run of the caller's.", {"200": ok_json, **run_errors},
                                                 parameters=[_RUN_ID])},
        "/v1/runs/{run_id}/events": {"get": _op(
            "Server-sent events of a run from a cursor.",
            {"200": {"description": "SSE", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             **_errors("400", "401", "404", "429")},
            parameters=[_RUN_ID, {"name": "after", "in": "query", "required": False,
                                  "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string"}}])},
        "/v1/sources/{doc_id}": {"get": _op(
            "A cited document (a citation's `url`): its chunks that the caller's tenant and groups may read, as JSON "
            "or, with `Accept: text/plain`, as text. A document the caller may read nothing of is a 404, as none.",
            {"200": {"description": "The readable chunks", "content": {**_json_content(_OBJECT), **_TEXT}},
             **_errors("401", "404", "429")},
            parameters=[_DOC_ID])},
        "/a2a": {"post": _op(
            "A2A JSON-RPC 2.0, protocols 1.0 and 0.3 (the A2A-Version header picks one; none is 0.3): SendMessage, "
            "SendStreamingMessage (SSE), GetTask, ListTasks, CancelTask and SubscribeToTask (SSE), or message/send, "
            "message/stream (SSE), tasks/get and tasks/cancel, each task a run of the caller's. After "
            "authentication every answer is 200 with a JSON-RPC result or error.",
            {"200": {"description": "A JSON-RPC response, or SSE of JSON-RPC responses for the streaming methods",
                     "content": {**_json_content(_OBJECT), "text/event-stream": {"schema": {"type": "string"}}}},
             **_errors("401", "408", "413", "415", "429")},
            body=_OBJECT, parameters=[_A2A_VERSION])},
        "/.well-known/agent-card.json": {"get": _op("The A2A agent card (public: names, skills, auth scheme).",
                                                    {"200": ok_json}, secured=False)},
        "/.well-known/agent.json": {"get": _op("The A2A agent card at its A2A 0.2 path.", {"200": ok_json},
                                               secured=False)},
        "/healthz": {"get": _op("Liveness.", {"200": ok_json}, secured=False)},
        "/readyz": {"get": _op("Readiness of this process (the kubelet's probe: no credential).",
                               {"200": ok_json, "503": {"description": "Not ready",
                                                        "content": _json_content(_OBJECT)}}, secured=False)},
        "/metrics": {"get": _op("Prometheus metrics.", {"200": {"description": "OK", "content": _TEXT}},
                                secured=False)},
        "/openapi.json": {"get": _op("This document.", {"200": ok_json}, secured=False)},
        "/": {"get": _op("The chat page.", {"200": {"description": "HTML",
                                                    "content": {"text/html": {"schema": {"type": "string"}}}}},
                         secured=False)},
    }
    return {"openapi": "3.1.0",
            "info": {"title": "agentfleet AgentApp runtime", "version": "v1alpha1",
                     "description": "OpenAI-compatible chat completions, responses and models, and runs. Every 4xx "
                                    "is an ErrorBody."},
            "paths": paths,
            "components": {"schemas": _schemas(),
                           "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}]}


def router_openapi() -> dict[str, Any]:
    ok_json = {"description": "OK", "content": _json_content(_OBJECT)}
    proxied_errors = {**_errors("400", "408", "413", "415", "429"),
                      "503": {"description": "No replica could take the request",
                              "content": _json_content(_ref("ErrorBody"))}}
    paths: dict[str, Any] = {
        path: {"post": _op(f"Proxied to a replica of the fleet (at most {ROUTER_MAX_BODY_BYTES} bytes).",
                           {"200": {"description": "The replica's answer", "content": _json_content(_OBJECT)},
                            **proxied_errors},
                           body=_ref("ChatRequest") if path == "/v1/chat/completions" else _OBJECT, secured=False)}
        for path in PROXIED}
    paths["/v1/models"] = {"get": _op("Proxied to a replica.", {"200": ok_json, **proxied_errors}, secured=False)}
    paths["/v1/sessions/end"] = {"post": _op(
        "The runs behind these sessions ended (the AgentApp runtime sends it): their claims on the replicas go now.",
        {"200": ok_json, **_errors("400", "408", "413", "415", "429")},
        body={"type": "object", "required": ["sessions"], "additionalProperties": False, "properties": {
            "sessions": {"type": "array", "maxItems": 1000, "items": {"type": "string"}}}}, secured=False)}
    paths["/admin/drain"] = {"post": _op(
        "Mark a replica draining (or not, with off=1). Needs the admin token.",
        {"200": ok_json, **_errors("401", "404", "429")},
        parameters=[{"name": "replica", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "off", "in": "query", "required": False, "schema": {"type": "string", "enum": ["1"]}}])}
    for path, summary in (("/healthz", "Liveness."), ("/readyz", "At least one replica is ready."),
                          ("/metrics", "Prometheus metrics.")):
        paths[path] = {"get": _op(summary, {"200": {"description": "OK", "content": _TEXT},
                                            "503": {"description": "Not ready", "content": _TEXT}}, secured=False)}
    paths["/openapi.json"] = {"get": _op("This document.", {"200": ok_json}, secured=False)}
    return {"openapi": "3.1.0",
            "info": {"title": "agentfleet ModelFleet router", "version": "v1alpha1",
                     "description": "An OpenAI-compatible reverse proxy. Every 4xx/503 it answers itself is an "
                                    "ErrorBody."},
            "paths": paths,
            "components": {"schemas": _schemas(with_responses=False), "securitySchemes": {
                "adminToken": {"type": "apiKey", "in": "header", "name": ADMIN_TOKEN_HEADER}}},
            "security": [{"adminToken": []}]}


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def write_files() -> list[Path]:
    out = []
    for path, doc in ((RUNTIME_FILE, runtime_openapi()), (ROUTER_FILE, router_openapi())):
        path.write_text(_dump(doc), encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_files():
        sys.stdout.write(f"wrote {p}\n")
