"""`agentfleet router`: run the ModelFleet router. The flags are the ones render/modelfleet.py puts in the router
Deployment, plus `--endpoints` for a static replica list outside a cluster."""

from __future__ import annotations

import argparse
import logging

from .fairness import ORDERS
from .policy import DEFAULT_MOVE_BOUND_FACTOR, PLACEMENTS, POLICIES
from .state import KEY_IDLE_S

__all__ = ["add_parsers"]


def _cmd_router(args: argparse.Namespace) -> int:
    import asyncio
    import threading

    from .discovery import parse_static, watch_endpoint_slices
    from pathlib import Path

    from ..telemetry import DISABLED, TelemetrySettings, start as start_telemetry
    from .proxy import ProxySettings, admin_token_digest, serve
    from .state import FleetState

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='{"time":"%(asctime)s","level":"%(levelname)s","msg":"%(message)s"}')
    fleet = FleetState(policy=args.policy, load_bound_factor=args.load_bound_factor,
                       move_bound_factor=args.move_bound_factor, key_idle_s=args.key_idle,
                       placement=args.placement)
    admin = None
    if args.admin_token_file:  # a mounted Secret; only its digest is kept
        token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise SystemExit("agentfleet router: the admin token must be at least 16 characters")
        admin = admin_token_digest(token)
    settings = ProxySettings(prefix_tokens=args.prefix_tokens, connect_timeout_s=args.connect_timeout,
                             read_timeout_s=args.read_timeout, health_interval_s=args.health_interval,
                             max_body_bytes=args.max_body_bytes, admin_token_sha256=admin,
                             fair_queue=args.fair_queue, fair_queue_max_wait_s=args.fair_queue_max_wait,
                             fair_queue_order=args.fair_queue_order)
    stop = threading.Event()
    on_startup = None
    if args.endpoints:
        fleet.set_endpoints(parse_static(args.endpoints))
    else:
        if not args.service or not args.namespace:
            raise SystemExit("agentfleet router: give --endpoints, or --service and --namespace (EndpointSlices)")

        async def on_startup(_app) -> None:
            watch_endpoint_slices(asyncio.get_running_loop(), fleet.set_endpoints, namespace=args.namespace,
                                  service=args.service, default_port=args.engine_port, stop=stop)
    telemetry = DISABLED  # off: the SDK is never imported
    if args.otlp_endpoint:
        resource = {k: v for k, v in (("service.namespace", args.namespace), ("agentfleet.fleet", args.fleet)) if v}
        telemetry = start_telemetry(TelemetrySettings(
            otlp_endpoint=args.otlp_endpoint, service_name=args.service_name or f"{args.fleet or 'agentfleet'}-router",
            sample_ratio=args.trace_sample_ratio, resource=resource, metrics=False))  # spans only: no GenAI metrics
    try:
        serve(fleet, settings, host=args.host, port=args.port, on_startup=on_startup, telemetry=telemetry)
    finally:
        stop.set()
        telemetry.shutdown()
    return 0


def _ratio(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{raw} is not between 0 and 1")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("router", help="run a ModelFleet's prefix- and session-aware router (OpenAI-compatible)")
    p.add_argument("--fleet", help="the ModelFleet's name (for logs)")
    p.add_argument("--namespace", help="namespace of the engine Service")
    p.add_argument("--service", help="headless engine Service whose EndpointSlices list the replicas")
    p.add_argument("--endpoints", help="static replicas instead: name=http://host:port,... or bare URLs")
    p.add_argument("--engine-port", type=int, default=8000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--policy", choices=POLICIES, default="prefix-aware")
    p.add_argument("--load-bound-factor", type=float, default=1.25,
                   help="a replica takes at most this times the mean in-flight load (bounded-load hashing)")
    p.add_argument("--move-bound-factor", type=float, default=DEFAULT_MOVE_BOUND_FACTOR,
                   help="a session (or prefix) leaves the replica holding its history only when that replica "
                   "carries more than this times the mean in-flight load (a move re-prefills the history)")
    p.add_argument("--placement", choices=PLACEMENTS, default="local",
                   help="for sessions that do not say where they live (the runtime's runs do): local places by this "
                   "router's own counts (the best spread with one router); shared by the hash ring only, so router "
                   "replicas agree on every session")
    p.add_argument("--fair-queue", type=int, default=0, metavar="N",
                   help="per-run fair queueing at saturation: at most N requests in flight per replica from this "
                   "router (the engine's max_num_seqs over the router replicas); the rest wait here and a freed slot "
                   "goes to the run with the fewest calls served (0: off)")
    p.add_argument("--fair-queue-order", choices=ORDERS, default="least-served",
                   help="which waiter a freed slot goes to: the run with the fewest calls served (short runs first) "
                   "or the most (runs near their end first, so their history leaves the cache sooner)")
    p.add_argument("--fair-queue-max-wait", type=float, default=2.0, metavar="SECONDS",
                   help="a request that has waited this long goes first, however much its run has been served")
    p.add_argument("--key-idle", type=float, default=KEY_IDLE_S,
                   help="seconds after its last request a session stops counting as live on its replica")
    p.add_argument("--prefix-tokens", type=int, default=256,
                   help="words of the first non-system message hashed for prefix affinity")
    p.add_argument("--connect-timeout", type=float, default=2.0, help="seconds, per attempt")
    p.add_argument("--read-timeout", type=float, default=300.0,
                   help="seconds to the first byte and between chunks, per attempt")
    p.add_argument("--health-interval", type=float, default=2.0)
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body taken (413 above)")
    p.add_argument("--admin-token-file",
                   help="file holding the token /admin/* requires (Authorization: Bearer); without it they are off")
    p.add_argument("--otlp-endpoint",
                   help="trace each proxied request: OTLP/HTTP base URL of a collector (/v1/traces is appended); "
                   "unset, tracing is off and the caller's traceparent is passed through as sent")
    p.add_argument("--service-name", help="service.name of the router's spans (default: <fleet>-router)")
    p.add_argument("--trace-sample-ratio", type=_ratio, default=1.0,
                   help="share of new traces recorded; a caller's sampled traceparent is always followed")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_router)
