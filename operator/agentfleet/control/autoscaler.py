"""The ModelFleet autoscaler's edge: a kopf timer per ModelFleet reads the fleet's vLLM metrics from Prometheus
(prometheus-api-client), computes goodput (requests per second whose TTFT, and end-to-end latency when a latency
SLO is set, met the SLO), asks the pure `scaling.decide` what to do, writes spec.replicas only through the /scale
subresource under its own field manager, and records the decision, the metrics and its memory in status. The
StatefulSet follows spec.replicas through the normal reconcile (one writer per field)."""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import kopf

from .. import metrics_names as mn
from .. import scaling
from .. import status as status_view
from ..api import ModelFleet, parse
from ..errors import SpecError, UpstreamError
from ..names import API_VERSION, GROUP, SCALER_FIELD_MANAGER, VERSION, engine_name
from ..render.cluster import LEADER_WORKER_SET
from ..render.modelfleet import engine_workload_kind
from .kube import REQUEST_TIMEOUT, Kube

__all__ = ["autoscale", "read_window", "fleet_selector", "evaluate", "WINDOW_KEEP"]

log = logging.getLogger(__name__)

TICK_S = 5  # the timer's period; each fleet is evaluated every spec.autoscaling.intervalSeconds
WINDOW_KEEP = 6  # metric windows kept in status.autoscaler.window
MIN_RANGE_S = 30  # PromQL range: rate() wants several scrapes inside it
PROM_TIMEOUT_S = 5
_LAST_EVALUATED: dict[str, float] = {}  # fleet uid -> epoch s; in memory: a restart evaluates at once (harmless)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def fleet_selector(fleet: ModelFleet) -> str:
    """The replicas' series. Both discovery paths label them with `namespace` and `pod`: the Prometheus
    Operator's PodMonitor (it also sets container, endpoint=<port name> and job=<namespace>/<PodMonitor>) and the
    usual annotation-driven kubernetes_sd pod job (relabelled from __meta_kubernetes_namespace / _pod_name).
    StatefulSet pods are <engine>-<ordinal>; a LeaderWorkerSet's leaders (the only pods serving /metrics) are
    <engine>-<group>, its workers <engine>-<group>-<index> and so never match."""
    return f'namespace="{fleet.namespace}",pod=~"{engine_name(fleet.name)}-[0-9]+"'


def _scalar(prom: Any, query: str) -> float | None:
    result = prom.custom_query(query, params={"timeout": f"{PROM_TIMEOUT_S}s"})
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def _good_fraction(prom: Any, histogram: str, sel: str, rng: str, slo_s: float) -> tuple[float | None, float]:
    """(share of observations <= the SLO, observations in the range). The SLO is rounded down to a bucket
    boundary: the conservative reading of a histogram."""
    rows = prom.custom_query(f"sum by (le) (increase({histogram}_bucket{{{sel}}}[{rng}]))",
                             params={"timeout": f"{PROM_TIMEOUT_S}s"})
    buckets = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in rows if "le" in r.get("metric", {}))
    if not buckets:
        return None, 0.0
    total = buckets[-1][1]
    if total <= 0:
        return None, 0.0
    within = max((count for le, count in buckets if le <= slo_s), default=0.0)
    return min(1.0, within / total), total


def read_window(prom: Any, fleet: ModelFleet, *, range_s: int) -> scaling.Window:
    sel = fleet_selector(fleet)
    rng = f"{range_s}s"
    a = fleet.spec.autoscaling

    def any_name(names: tuple[str, ...]) -> str:
        return f'{{__name__=~"{mn.promql_name_regex(names)}",{sel}}}'

    waiting = _scalar(prom, f"sum(avg_over_time({any_name(mn.WAITING)}[{rng}]))")
    running = _scalar(prom, f"sum(avg_over_time({any_name(mn.RUNNING)}[{rng}]))")
    kv = _scalar(prom, f"avg(avg_over_time({any_name(mn.KV_CACHE_USAGE)}[{rng}]))")
    ttft_p95 = _scalar(prom, f"histogram_quantile(0.95, sum by (le) "
                             f"(rate({mn.TTFT_HISTOGRAM}_bucket{{{sel}}}[{rng}])))")
    good, total = _good_fraction(prom, mn.TTFT_HISTOGRAM, sel, rng, a.ttft_p95_slo_seconds)
    if a.latency_slo_seconds is not None:
        good_e2e, _ = _good_fraction(prom, mn.E2E_LATENCY_HISTOGRAM, sel, rng, a.latency_slo_seconds)
        if good_e2e is not None:
            # Two histograms cannot be joined per request: min() is the upper bound of the joint share.
            good = good_e2e if good is None else min(good, good_e2e)
    return scaling.Window(waiting=waiting, running=running, kv_cache_usage=kv, ttft_p95_s=ttft_p95,
                          good_fraction=good, request_rate=total / range_s)


def _memory(body: dict[str, Any]) -> scaling.Memory:
    m = ((body.get("status") or {}).get("autoscaler") or {})
    peaks = tuple((float(p["t"]), int(p["replicas"])) for p in (m.get("peaks") or [])
                  if isinstance(p, dict) and "t" in p and "replicas" in p)
    last = m.get("lastSample") or {}
    sample = ((float(last["t"]), float(last["waiting"]), float(last["demand"]),
               float(last.get("demandBefore", last["demand"])))
              if all(k in last for k in ("t", "waiting", "demand")) else None)
    return scaling.Memory(pressure_since=_epoch(m.get("aboveTargetSince")),
                          calm_since=_epoch(m.get("belowTargetSince")),
                          last_scale_at=_epoch(m.get("lastScaleTime")), peaks=peaks, last_sample=sample)


def _ready(kube: Kube, fleet: ModelFleet) -> int:
    api_version, kind = (LEADER_WORKER_SET if engine_workload_kind(fleet) == "LeaderWorkerSet"
                         else ("apps/v1", "StatefulSet"))
    try:
        sts = kube.get(api_version, kind, engine_name(fleet.name), fleet.namespace)
    except UpstreamError:
        sts = None  # LeaderWorkerSet not installed: nothing runs (status says so)
    return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)


def evaluate(kube: Kube, prom: Any, body: dict[str, Any], *, now: dt.datetime,
             prometheus_url: str | None = None) -> scaling.Decision | None:
    """One evaluation of one fleet; None when autoscaling is off or it is not yet due. `prometheus_url` names
    where `prom` reads, for the MetricsAvailable condition's message."""
    fleet = parse(body)
    assert isinstance(fleet, ModelFleet)
    a = fleet.spec.autoscaling
    if not a.enabled or fleet.spec.base_url:
        return None  # off, or served elsewhere (spec.baseUrl): nothing of ours to scale
    old = (body.get("status") or {}).get("autoscaler") or {}
    uid = fleet.metadata.uid or fleet.ref()
    last = _LAST_EVALUATED.get(uid)
    if last is not None and now.timestamp() - last < a.interval_seconds - 0.5:
        return None
    _LAST_EVALUATED[uid] = now.timestamp()
    policy = scaling.ScalingPolicy.from_spec(a, max_num_seqs=fleet.spec.engine.max_num_seqs)
    try:
        window: scaling.Window | None = read_window(prom, fleet, range_s=max(MIN_RANGE_S, a.interval_seconds))
    except Exception as err:  # noqa: BLE001 - any Prometheus failure is a missing window, never a scale-down
        log.warning("prometheus read failed for %s: %s", fleet.ref(), err)
        window = None
    current = fleet.spec.replicas
    decision, memory = scaling.decide(window, current, _ready(kube, fleet), policy, _memory(body),
                                      now.timestamp())
    if decision.is_change:
        res = kube.resource(API_VERSION, "ModelFleet")
        res.scale.patch(body={"spec": {"replicas": decision.to_replicas}}, name=fleet.name,
                        namespace=fleet.namespace, content_type="application/merge-patch+json",
                        field_manager=SCALER_FIELD_MANAGER, _request_timeout=REQUEST_TIMEOUT)

    def stamp(t: float | None) -> str | None:
        return None if t is None else _stamp(dt.datetime.fromtimestamp(t, dt.timezone.utc))

    samples = list(old.get("window") or [])
    if window is not None and window.is_complete:
        samples = [*samples[-(WINDOW_KEEP - 1):], {k: round(v, 4) for k, v in {
        "t": now.timestamp(), "waiting": window and window.waiting, "running": window and window.running,
        "goodFraction": window and window.good_fraction, "ttftP95": window and window.ttft_p95_s,
        }.items() if isinstance(v, (int, float))}]
    memo_status = {
        "window": samples, "belowTargetSince": stamp(memory.calm_since),
        "aboveTargetSince": stamp(memory.pressure_since), "lastScaleTime": stamp(memory.last_scale_at),
        "peaks": [{"t": round(t, 3), "replicas": r} for t, r in memory.peaks],
        "lastSample": None if memory.last_sample is None else dict(zip(
            ("t", "waiting", "demand", "demandBefore"), (round(v, 4) for v in memory.last_sample))),
        "lastReason": decision.reason, "lastMessage": decision.message[:500],
    }
    # Only a changed view is written: an idle fleet (or an unreachable Prometheus) causes no status churn.
    same = all(old.get(k) == v for k, v in memo_status.items())
    status: dict[str, Any] = {} if same else {"autoscaler": {**memo_status, "lastEvaluated": _stamp(now)}}
    if window is not None:
        status.update({"queueDepth": window.waiting, "runningRequests": window.running,
                       "ttftP95Seconds": window.ttft_p95_s, "goodputFraction": window.good_fraction,
                       "goodput": None if window.goodput_rps is None else round(window.goodput_rps, 4)})
    if decision.is_change:
        status["lastScale"] = {"fromReplicas": decision.from_replicas, "toReplicas": decision.to_replicas,
                               "reason": f"{decision.reason}: {decision.message}"[:500], "time": _stamp(now)}
    current_status = body.get("status") or {}
    if "autoscaler" in status:  # the condition it implies goes in the same write
        status["conditions"] = status_view.metrics_conditions(
            fleet, last_reason=decision.reason, prometheus_url=prometheus_url, now=_stamp(now))
    status = {k: v for k, v in status.items() if k == "autoscaler" or current_status.get(k) != v}
    if status:
        kube.patch_status("ModelFleet", fleet.name, fleet.namespace, status)
    return decision


def _plain(body: Any) -> Any:
    """kopf's Body is a read-only view; the pure code wants plain dicts."""
    if hasattr(body, "items"):
        return {k: _plain(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_plain(v) for v in body]
    return body


def _prometheus(memo: kopf.Memo, url: str) -> Any:
    cache = memo.setdefault("prometheus", {}) if hasattr(memo, "setdefault") else {}
    if url not in cache:
        from prometheus_api_client import PrometheusConnect

        from urllib3.util.retry import Retry

        # No retries inside one evaluation (the next tick is the retry); every call bounded.
        cache[url] = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=PROM_TIMEOUT_S)
    return cache[url]


@kopf.timer(GROUP, VERSION, "modelfleets", id="autoscaler", interval=TICK_S, initial_delay=TICK_S,
            sharp=False)
def autoscale(body: Any, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Sync on purpose: kopf runs it in a thread, and both the kubernetes and the Prometheus clients block."""
    plain = _plain(body)
    try:
        spec = (plain.get("spec") or {}).get("autoscaling") or {}
        url = spec.get("prometheusUrl") or memo.defaults.prometheus_url
        decision = evaluate(memo.kube, _prometheus(memo, url), plain,
                            now=dt.datetime.now(dt.timezone.utc), prometheus_url=url)
    except SpecError:
        return  # the reconcile handler reports spec errors
    if decision is not None and decision.is_change:
        logger.info("scaled %d -> %d: %s (%s)", decision.from_replicas, decision.to_replicas, decision.reason,
                    decision.message)
        kopf.info(body, reason="Scaled", message=f"{decision.from_replicas} -> {decision.to_replicas}: "
                                                 f"{decision.reason}: {decision.message}"[:1000])
