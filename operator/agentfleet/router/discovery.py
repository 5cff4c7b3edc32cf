"""Where the replicas are: the engine Service's EndpointSlices in a cluster (watched with the official kubernetes
client in a thread of its own, so the proxy's event loop never blocks), or a static list locally. Readiness comes
from the EndpointSlice conditions: ready -> takes requests; serving and terminating -> draining (finishes its
in-flight work, gets nothing new); otherwise -> gone."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["parse_static", "slices_to_endpoints", "watch_endpoint_slices"]

log = logging.getLogger("agentfleet.router.discovery")

Update = Callable[[dict[str, str], set[str]], None]


def parse_static(spec: str) -> dict[str, str]:
    """`name=http://host:port,...` or bare URLs (named replica-0, replica-1, ...)."""
    out: dict[str, str] = {}
    for i, item in enumerate(x.strip() for x in spec.split(",") if x.strip()):
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = f"replica-{i}", item
        out[name] = url.rstrip("/")
    return out


def slices_to_endpoints(slices: Mapping[str, Mapping[str, Any]], *, default_port: int
                        ) -> tuple[dict[str, str], set[str]]:
    """(name -> URL, draining names) from EndpointSlice objects (as dicts, camelCase or snake_case keys)."""
    urls: dict[str, str] = {}
    draining: set[str] = set()
    for sl in slices.values():
        port = default_port
        for p in sl.get("ports") or []:
            if p.get("name") in ("http", None) and p.get("port"):
                port = int(p["port"])
                break
        for ep in sl.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready")
            serving = cond.get("serving", ready)
            terminating = bool(cond.get("terminating"))
            ref = ep.get("targetRef") or ep.get("target_ref") or {}
            name = ref.get("name") or ep.get("hostname") or addresses[0]
            host = addresses[0]
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            if ready is not False and not terminating:
                urls[name] = url
            elif serving and terminating:
                urls[name] = url
                draining.add(name)
    return urls, draining


def watch_endpoint_slices(loop: asyncio.AbstractEventLoop, update: Update, *, namespace: str, service: str,
                          default_port: int, stop: threading.Event) -> threading.Thread:
    """Start a daemon thread that lists and watches the Service's EndpointSlices and hands each new
    membership to `update` on the event loop."""

    def run() -> None:
        from kubernetes import client, config, watch

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.DiscoveryV1Api()
        selector = f"kubernetes.io/service-name={service}"
        while not stop.is_set():
            slices: dict[str, dict[str, Any]] = {}
            try:
                listing = api.list_namespaced_endpoint_slice(namespace, label_selector=selector,
                                                             _request_timeout=(5, 30))
                for item in listing.items:
                    slices[item.metadata.name] = client.ApiClient().sanitize_for_serialization(item)
                loop.call_soon_threadsafe(update, *slices_to_endpoints(slices, default_port=default_port))
                w = watch.Watch()
                for event in w.stream(api.list_namespaced_endpoint_slice, namespace, label_selector=selector,
                                      resource_version=listing.metadata.resource_version, timeout_seconds=240,
                                      _request_timeout=(5, 300)):
                    obj = client.ApiClient().sanitize_for_serialization(event["object"])
                    name = obj["metadata"]["name"]
                    if event["type"] == "DELETED":
                        slices.pop(name, None)
                    else:
                        slices[name] = obj
                    loop.call_soon_threadsafe(update, *slices_to_endpoints(slices, default_port=default_port))
                    if stop.is_set():
                        w.stop()
            except Exception as err:  # noqa: BLE001 - keep watching whatever the API server did
                log.warning("EndpointSlice watch failed; retrying", extra={"error": str(err)})
                time.sleep(2)

    t = threading.Thread(target=run, name="endpointslice-watch", daemon=True)
    t.start()
    return t
