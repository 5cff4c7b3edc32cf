"""The one module that talks to the Kubernetes API (the official client, synchronous: call it from sync kopf
handlers or `asyncio.to_thread`). Server-side apply with agentfleet's field manager, reads that return None for
"not there", and status patches through the status subresource."""

from __future__ import annotations

import threading
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError, UnprocessibleEntityError

from ..errors import CRDNotServed
from ..names import API_VERSION, FIELD_MANAGER

__all__ = ["Kube", "new_api_client"]

# Every call to the API server is bounded: (connect, read) seconds.
REQUEST_TIMEOUT = (5, 30)


def new_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return client.ApiClient(configuration=cfg)


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self._api = api_client or new_api_client()
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}

    def connection_info(self) -> kopf.ConnectionInfo:
        """This client's server and credentials, for kopf's own API calls."""
        cfg = self._api.configuration
        if cfg.refresh_api_key_hook is not None:  # in a pod: the ServiceAccount token, re-read (it rotates)
            cfg.refresh_api_key_hook(cfg)
        keys = cfg.api_key or {}
        auth = keys.get("BearerToken") or keys.get("authorization") or ""  # the name differs between versions
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
        return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                                   token=token or None, certificate_path=cfg.cert_file,
                                   private_key_path=cfg.key_file)

    @property
    def dyn(self) -> DynamicClient:
        with self._lock:  # discovery runs once, on first use, not at import
            if self._dyn is None:
                self._dyn = DynamicClient(self._api)
            return self._dyn

    def resource(self, api_version: str, kind: str):
        """The discovered API resource. The client's discovery cache is not thread-safe (kopf runs sync
        handlers in a thread pool: concurrent lookups raised KeyError 'apis'), so lookups are serialised and
        remembered."""
        key = (api_version, kind)
        dyn = self.dyn
        with self._lock:
            if key in self._resources:
                return self._resources[key]
            try:
                res = dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                dyn.resources.invalidate_cache()  # a CRD installed after we started
                try:
                    res = dyn.resources.get(api_version=api_version, kind=kind)
                except ResourceNotFoundError:
                    raise CRDNotServed(kind, api_version) from None
            self._resources[key] = res
            return res

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply. A controller owns what it renders, so conflicts are forced."""
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace")

        def apply_once() -> Any:
            return self.dyn.server_side_apply(res, body=manifest, name=name, namespace=namespace,
                                              field_manager=FIELD_MANAGER, force_conflicts=True,
                                              _request_timeout=REQUEST_TIMEOUT)
        try:
            out = apply_once()
        except UnprocessibleEntityError as err:
            if not _needs_recreate_migration(manifest, err):
                raise
            # Apply cannot remove what defaulting filled in and no manager owns: a Deployment first applied without
            # a strategy keeps the defaulted rollingUpdate, which type Recreate forbids (422). Clear it once.
            res.patch(body={"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}, name=name,
                      namespace=namespace, content_type="application/merge-patch+json",
                      field_manager=FIELD_MANAGER, _request_timeout=REQUEST_TIMEOUT)
            out = apply_once()
        return out.to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            res = self.resource(api_version, kind)
            return res.get(name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT).to_dict()
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None, *,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        res = self.resource(api_version, kind)
        out = res.get(namespace=namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT)
        return [item.to_dict() for item in out.items]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        res = self.resource(api_version, kind)
        try:
            res.delete(name=name, namespace=namespace, propagation_policy="Background",
                       _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError:
            pass

    def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of our own resource's status (lists such as conditions are replaced whole)."""
        res = self.resource(API_VERSION, kind)
        try:
            res.status.patch(body={"status": status}, name=name, namespace=namespace,
                             content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError:
            pass  # deleted while we reconciled it


def _needs_recreate_migration(manifest: dict[str, Any], err: Exception) -> bool:
    strategy = ((manifest.get("spec") or {}).get("strategy") or {}).get("type")
    return (manifest.get("kind") == "Deployment" and strategy == "Recreate"
            and "spec.strategy.rollingUpdate" in str(getattr(err, "body", "") or err))
