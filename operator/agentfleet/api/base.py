"""The shared vocabulary of the four resources: camelCase models, cross-field rules that become both CEL
(`x-kubernetes-validations`) and Python checks, object metadata, conditions and references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

__all__ = [
    "Rule", "Model", "StatusModel", "ObjectMeta", "Condition", "LocalRef", "SecretKeyRef", "PrinterColumn",
    "CRDInfo", "Resource", "DNS1123_LABEL", "RFC1035_LABEL", "MAX_NAME_LENGTH",
]

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Our names become Service names, which must be RFC 1035 labels (start with a letter). Kubernetes accepts any
# DNS subdomain as an object name, so the operator (not the schema) rejects the rest with InvalidSpec.
RFC1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Children append suffixes such as "-ingest-0123456789" and pod ordinals; 40 keeps every child name under 63.
MAX_NAME_LENGTH = 40


@dataclass(frozen=True)
class Rule:
    """One cross-field constraint, stated once: `cel` is enforced by the API server, `check` by `validate` and by
    the operator's parse. `field` names the camelCase field (relative to the model) that the message is about.
    A transition rule (one reading `oldSelf`) has no `check`: only the API server sees the old object."""

    cel: str
    message: str
    check: Callable[[Any], bool] | None
    field: str | None = None

    def to_k8s(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
            out["reason"] = "FieldValueInvalid"
        return out


class Model(BaseModel):
    """A spec fragment: camelCase on the wire, unknown fields are errors, rules checked after parsing."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              validate_default=True)
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        for rule in type(self).__dict__.get("__rules__", ()):
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("rule", rule.message, {"field": rule.field or ""})
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        schema = handler(core_schema)
        rules = cls.__dict__.get("__rules__", ())
        if rules:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = [r.to_k8s() for r in rules]
        return schema

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(Model):
    """Status is written by agentfleet; tolerate fields a newer operator version wrote."""

    model_config = ConfigDict(extra="ignore")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(pattern=RFC1035_LABEL, max_length=MAX_NAME_LENGTH)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition) so `kubectl wait` and Argo CD health checks read it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class LocalRef(Model):
    """A reference to an object in the same namespace."""

    name: str = Field(pattern=DNS1123_LABEL, max_length=253)


class SecretKeyRef(Model):
    """A key of a Secret in the same namespace."""

    name: str = Field(pattern=DNS1123_LABEL, max_length=253)
    key: str = Field(min_length=1)


class PodOptions(Model):
    """What platform teams set on every pod: scheduling, identity, pull secrets, metadata, environment and extra
    volumes. Lists and objects are Kubernetes' own (core/v1) and passed through as written."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = Field(default=None, max_length=253)
    image_pull_secrets: list[LocalRef] = Field(default_factory=list)
    service_account_name: str | None = Field(
        default=None, pattern=DNS1123_LABEL,
        description="ModelFleet engine: an existing ServiceAccount (IRSA / Workload Identity for s3:// and "
                    "gs://). Ignored elsewhere: the router, the runtime and the index's Jobs run under accounts "
                    "the operator binds to exactly what they call (VectorIndex: ingestion.serviceAccountName).")
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict, description="Added to the pods; ours win on conflict.")
    env: list[dict[str, Any]] = Field(default_factory=list)
    env_from: list[dict[str, Any]] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] | None = Field(
        default=None, description="Laid over the pod securityContext we set (non-root uid 1000 for vLLM, 10001 "
                                  "for agentfleet, seccomp RuntimeDefault), e.g. runAsUser for an image built for "
                                  "another uid.")


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class CRDInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    scale: bool = False


class Resource(BaseModel):
    """A whole custom resource. Subclasses pin apiVersion/kind and declare `spec`, `status` and `__crd__`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)
    __crd__: ClassVar[CRDInfo]

    api_version: str
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    def ref(self) -> str:
        """How errors and events name this object: `ModelFleet default/llama`."""
        return f"{self.kind} {self.namespace}/{self.name}"
