"""pydantic JSON schema -> CustomResourceDefinitions. Kubernetes wants a structural schema: every $ref inlined,
Optional written as "may be absent" rather than anyOf-with-null, no titles, booleans for exclusive bounds,
defaults the API server can apply, and list/map markers. The CEL rules come from each model's `Rule`s."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from .api import KINDS, Resource
from .api.base import MAX_NAME_LENGTH
from .names import CATEGORY, GROUP, VERSION

__all__ = ["crd", "all_crds", "structural", "dump", "file_name"]

_DROP = {"title", "discriminator"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def structural(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool = True) -> dict[str, Any]:
    """One JSON schema node -> its structural form (recursively). `defaults` adds `default: {}` to optional
    object fields so that the API server applies the defaults nested inside them."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a union of {len(options)} types is not structural: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            del rest["default"]
        node = {**options[0], **rest}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "additionalProperties" and value is False:
            continue  # the API server prunes unknown fields; false next to properties is not structural
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "properties":
            required = set(node.get("required", ()))
            props = {}
            for name, sub in value.items():
                was_optional = "anyOf" in sub and any(o.get("type") == "null" for o in sub["anyOf"])
                props[name] = structural(sub, defs, defaults=defaults)
                p = props[name]
                if (defaults and name not in required and not was_optional and p.get("type") == "object"
                        and "properties" in p and not p.get("required") and "default" not in p):
                    # The API server checks a default against the CEL rules as written, without defaulting
                    # inside it first, so the default is the fully defaulted object, not {}.
                    p["default"] = _materialize(p)
                if name == "conditions" and p.get("type") == "array":
                    p["x-kubernetes-list-type"] = "map"
                    p["x-kubernetes-list-map-keys"] = ["type"]
            out[key] = props
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs, defaults=defaults)
            continue
        out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _materialize(node: dict[str, Any]) -> dict[str, Any]:
    """The object an empty `{}` becomes once the API server has applied every nested default."""
    out = {}
    for name, sub in node.get("properties", {}).items():
        if "default" in sub:
            out[name] = sub["default"]
    return out


def _schema_of(model: type[Resource]) -> dict[str, Any]:
    full = model.model_json_schema(by_alias=True, mode="validation")
    defs = full.get("$defs", {})
    props = full["properties"]
    spec = structural(props["spec"], defs)
    status = structural(props["status"], defs, defaults=False)
    status.pop("default", None)
    return {
        "type": "object",
        "description": (sys.modules[model.__module__].__doc__ or "").strip().replace("\n", " "),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [{
            "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
            "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: child names append suffixes",
        }],
    }


def crd(model: type[Resource]) -> dict[str, Any]:
    info = model.__crd__
    singular = info.kind.lower()
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": _schema_of(model)},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            {"name": c.name, "type": c.type, "jsonPath": c.json_path,
             **({"priority": c.priority} if c.priority else {}),
             **({"description": c.description} if c.description else {})}
            for c in info.columns
        ],
    }
    if info.scale:
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "agentfleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """file name -> CRD, for every kind."""
    return {file_name(model): crd(model) for model in KINDS.values()}


def file_name(model: type[Resource]) -> str:
    return f"{GROUP}_{model.__crd__.plural}.yaml"


def dump(obj: dict[str, Any]) -> str:
    header = "# Generated by `agentfleet crds` from the pydantic models in operator/agentfleet/api. Do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)
