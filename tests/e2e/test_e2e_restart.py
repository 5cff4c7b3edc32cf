"""Restarting the operator converges: it is killed in the middle of creating the example, started again, and
restarted once more after everything is Ready. The proof is an invariant over a recorded watch of every child
and every CR across both restarts, not a final read:

* each child is created exactly once (one ADDED, no DELETED, one uid per name): no duplicates, no re-creation;
* what the operator owns in a child (its spec, data, rules, labels, owner references, generation) never changes
  after creation, so no reconcile wrote a spurious update, not even the one that resumed after the crash;
* after convergence, a second restart produces no watch event at all: every child's and every CR's
  resourceVersion is where it was.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict

import pytest

from e2e_kit import (
    CHILD_KINDS, CR_KINDS, WatchRecorder, apply_example, child_key, example_crs, expected_children,
    wait_example_ready, wait_for,
)

pytestmark = pytest.mark.e2e

CHILD_KIND_NAMES = {k for _, k in CHILD_KINDS}


def owned_part(obj: dict) -> dict:
    """What the operator renders into a child (everything but status and server/controller-written metadata)."""
    meta = obj["metadata"]
    out = {"generation": meta.get("generation"), "labels": meta.get("labels"),
           "ownerReferences": meta.get("ownerReferences"),
           **{k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}}
    if obj.get("kind") == "PersistentVolumeClaim":  # the volume binder writes spec.volumeName, not the operator
        out["spec"] = {k: v for k, v in (out.get("spec") or {}).items() if k != "volumeName"}
    return out


def changed(events, e) -> str:
    """What differs between `e`'s object and the previous version of the same object (top-level keys of
    metadata, spec and status)."""
    prev = next((p for p in reversed(events[:e.seq]) if (p.kind, p.name) == (e.kind, e.name)), None)
    if prev is None:
        return "(new)"
    out = []
    for part in ("metadata", "spec", "status", "data"):
        a, b = prev.obj.get(part) or {}, e.obj.get(part) or {}
        for key in sorted(set(a) | set(b)):
            if key not in ("resourceVersion", "managedFields") and a.get(key) != b.get(key):
                out.append(f"{part}.{key}: {json.dumps(a.get(key))[:300]} -> {json.dumps(b.get(key))[:300]}")
    return "; ".join(out) or "(no visible change)"


def is_child(e) -> bool:
    """An object the operator rendered (the namespace's default ServiceAccount, kube-root-ca.crt and the
    example's own ConfigMap are of the same kinds but not ours)."""
    return e.kind in CHILD_KIND_NAMES and any(
        str(r.get("apiVersion", "")).startswith("agentfleet.io/") and r.get("controller")
        for r in e.obj["metadata"].get("ownerReferences") or [])


def resumed(operator, namespace: str, since: int, crs: list[tuple[str, str]]) -> bool:
    done = {(r["object"]["kind"], r["object"]["name"]) for r in operator.records(since)
            if "Resuming is processed" in r.get("message", "")
            and (r.get("object") or {}).get("namespace") == namespace}
    return set(crs) <= done


def test_restart_mid_way_converges_without_duplicates_or_spurious_updates(ns, operator, k8s_cluster):
    crs = example_crs()
    expected = expected_children()
    with WatchRecorder(k8s_cluster.kubeconfig, ns.ns, CHILD_KINDS + CR_KINDS) as rec:
        # 1. The example is stored while no operator runs; the operator starts and is killed (SIGKILL: no chance
        #    to finish or clean up) as soon as its first child appears.
        operator.stop()
        apply_example(ns)
        operator.start()
        wait_for("the first child", lambda: any(is_child(e) for e in rec.snapshot()),
                 timeout=60, interval=0.02)
        operator.kill()
        at_kill = {(e.kind, e.name) for e in rec.snapshot() if is_child(e)}
        print(f"[e2e] operator killed with {len(at_kill)}/{len(expected)} children created")

        # 2. Started again, it converges.
        operator.start()
        wait_example_ready(ns)
        # Converged: nothing written for 10 s, longer than the first tick of every timer (the autoscaler's first
        # evaluation records itself in status once; the drift timer's first tick is at 60 s, past this test).
        settled = rec.quiet_for(10)
        converged = {(e.kind, e.name): e.resource_version for e in rec.snapshot()}

        # 3. Restarted once more (graceful), it resumes every CR and writes nothing.
        operator.restart(signal.SIGTERM)
        wait_for("every CR resumed", lambda: resumed(operator, ns.ns, operator.mark, crs), timeout=60)
        # Anything the resume or the first timer ticks (the autoscaler ticks every 5 s) would write arrives
        # well within this.
        time.sleep(7)
    assert not rec.errors, rec.errors
    after_second = rec.since(settled)
    events = rec.snapshot()

    children = [e for e in events if is_child(e)]
    adds = Counter((e.kind, e.name) for e in children if e.type == "ADDED")
    assert not [e for e in children if e.type in ("LISTED", "DELETED")], "a child was deleted or pre-existed"
    assert {k: n for k, n in adds.items() if n != 1} == {}, "a child was created more than once"
    uids = defaultdict(set)
    for e in children:
        uids[(e.kind, e.name)].add(e.uid)
    assert {k: u for k, u in uids.items() if len(u) != 1} == {}, "a child was replaced"
    assert {child_key(*k) for k in adds} == set(expected), "children differ from what the example renders"

    first_seen = {}
    for e in children:
        part = owned_part(e.obj)
        first = first_seen.setdefault((e.kind, e.name), part)
        assert part == first, f"{e.kind}/{e.name} rewritten ({e.type}, resourceVersion {e.resource_version})"

    crs_events = [e for e in events if e.kind not in CHILD_KIND_NAMES]
    assert {(e.kind, e.name) for e in crs_events} == set(crs)
    assert not [e for e in crs_events if e.type == "DELETED"]
    for e in crs_events:
        assert e.obj["metadata"]["generation"] == 1, f"{e.kind}/{e.name}: spec rewritten"

    assert after_second == [], "writes after convergence:\n" + "\n".join(
        f"{e.type} {e.kind}/{e.name} rv={e.resource_version}: {changed(events, e)}" for e in after_second)
    now = {(e.kind, e.name): e.resource_version for e in rec.snapshot()}
    assert now == converged
    assert operator.running
