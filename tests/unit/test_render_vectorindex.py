"""render.vectorindex: the indexed ingestion Job (named by a hash of its whole spec), the vector store (an embedded
Milvus standalone or a managed `Milvus`), and `connection()`, the URI readers use."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from agentfleet import render
from agentfleet.api.vectorindex import MilvusSpec
from agentfleet.errors import DependencyMissing
from agentfleet.names import fleet_url, milvus_uri
from agentfleet.render.meta import stable_hash
from agentfleet.render.vectorindex import (
    EMBED_ETCD, MILVUS_APP, MILVUS_TOKEN_ENV, REINGEST_ANNOTATION, SOURCE_MOUNT, client_env,
)


def _job(kit, children):
    job = kit.one(children, "Job")
    assert children[-1] is job, "the Job comes last (control reads its name from there)"
    return job


# --- the Job ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, spec, workers, collection",
    [
        pytest.param("docs", {}, 2, "docs", id="defaults"),
        pytest.param("team-docs", {"ingestion": {"workers": 1}}, 1, "team_docs", id="one-worker-dashes"),
        pytest.param("docs", {"ingestion": {"workers": 16}, "milvus": {"collection": "Corpus_v2"}}, 16, "Corpus_v2",
                     id="sixteen-named-collection"),
    ],
)
def test_ingest_job_is_indexed(kit, name, spec, workers, collection):
    index = kit.index(name, spec)
    job = _job(kit, render.vectorindex(index, kit.defaults))
    c = kit.container(job)

    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == workers
    assert job["spec"]["parallelism"] == workers
    assert job["spec"]["backoffLimit"] == index.spec.ingestion.backoff_limit
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert c["command"] == ["agentfleet", "ingest"]
    assert c["image"] == kit.defaults.agentfleet_image
    assert kit.flag(c["args"], "--workers") == str(workers)
    assert kit.flag(c["args"], "--collection") == collection
    assert kit.flag(c["args"], "--index") == render.connection(index).uri
    assert kit.flag(c["args"], "--shards") == str(index.spec.milvus.shards)
    assert re.fullmatch(rf"{name}-ingest-[0-9a-f]{{10}}", job["metadata"]["name"])
    assert job == render.ingest_job(index, kit.defaults)
    assert kit.volume(job, "index") is None and kit.mount(c, "index") is None
    assert kit.volume(job, "tmp") == {"name": "tmp", "emptyDir": {}}
    assert kit.mount(c, "tmp") == {"name": "tmp", "mountPath": "/tmp"}


_BASE = {"chunking": {"sizeTokens": 256, "overlapTokens": 32}, "access": {"defaultGroups": ["all"]},
         "ingestion": {"workers": 2, "resources": {"cpu": "1", "memory": "2Gi"}}}
_NEXT_IMAGE = {"agentfleet_image": "registry.test/agentfleet:next"}


def _variant_job(kit, spec=None, *, annotations=None, labels=None, defaults=None, embedder=False, **meta):
    """The Job rendered for _BASE changed by `spec`, the metadata given and `defaults` changes."""
    index = kit.index("docs", kit.merge(_BASE, spec), annotations=annotations, labels=labels, **meta)
    d = kit.defaults.model_copy(update=defaults or {})
    related = kit.related(kit.fleet("embed"), kit.app("other"), kit.fleet("unrelated")) if embedder else {}
    return _job(kit, render.render(index, related=related, defaults=d))


# (spec change, annotations, labels, defaults change, other metadata, renamed). A Job's spec is immutable, so
# every change to it must rename the Job; nothing else may.
_JOB_CHANGES = [
    pytest.param({}, {}, {}, {}, {}, False, id="unchanged"),
    pytest.param({"chunking": {"sizeTokens": 512}}, {}, {}, {}, {}, True, id="chunk-size"),
    pytest.param({"chunking": {"overlapTokens": 0}}, {}, {}, {}, {}, True, id="chunk-overlap"),
    pytest.param({"source": {"configMap": {"name": "corpus-v2"}}}, {}, {}, {}, {}, True, id="source-configmap"),
    pytest.param({"source": {"configMap": None, "url": "s3://bucket/docs"}}, {}, {}, {}, {}, True, id="source-url"),
    pytest.param({"access": {"defaultGroups": ["eng"]}}, {}, {}, {}, {}, True, id="access-groups"),
    pytest.param({"access": {"defaultTenant": "acme"}}, {}, {}, {}, {}, True, id="access-tenant"),
    pytest.param({"access": {"allowPublic": True}}, {}, {}, {}, {}, True, id="access-public"),
    pytest.param({"milvus": {"shards": 4}}, {}, {}, {}, {}, True, id="shards"),
    pytest.param({"milvus": {"collection": "kb"}}, {}, {}, {}, {}, True, id="collection"),
    pytest.param({"milvus": {"tokenSecretRef": {"name": "milvus", "key": "token"}}}, {}, {}, {}, {}, True,
                 id="milvus-token"),
    pytest.param({"ingestion": {"workers": 3}}, {}, {}, {}, {}, True, id="workers"),
    pytest.param({"ingestion": {"backoffLimit": 9}}, {}, {}, {}, {}, True, id="backoff"),
    # Former bug: the name hashed only what is ingested, so these reused a name with a new (immutable) template
    # and the apply was rejected (422) on every reconcile.
    pytest.param({"ingestion": {"resources": {"cpu": "4", "memory": "8Gi"}}}, {}, {}, {}, {}, True,
                 id="resources"),
    pytest.param({"ingestion": {"image": "registry.test/ingest:custom"}}, {}, {}, {}, {}, True, id="image"),
    pytest.param({}, {}, {}, _NEXT_IMAGE, {}, True, id="operator-upgrade-image"),
    pytest.param({}, {}, {}, {"image_pull_policy": "Always"}, {}, True, id="pull-policy"),
    pytest.param({}, {REINGEST_ANNOTATION: "2025-01-01"}, {}, {}, {}, True, id="reingest-annotation"),
    # Not part of the Job's spec: the same name.
    pytest.param({}, {"note": "hello"}, {"team": "search"}, {}, {}, False, id="owner-labels-annotations"),
    pytest.param({}, {}, {}, {}, {"generation": 7, "uid": "other-uid"}, False, id="generation-uid"),
    pytest.param({"milvus": {"storageSize": "50Gi"}}, {}, {}, {}, {}, False, id="embedded-storage-size"),
    pytest.param({"milvus": {"deletionPolicy": "Retain"}}, {}, {}, {}, {}, False, id="deletion-policy"),
    pytest.param({}, {}, {}, {"milvus_image": "registry.test/milvus:next", "vllm_image": "x"}, {}, False,
                 id="other-images"),
]


@pytest.mark.parametrize("spec, annotations, labels, defaults, meta, renamed", _JOB_CHANGES)
def test_job_is_renamed_exactly_when_its_spec_changes(kit, spec, annotations, labels, defaults, meta, renamed):
    before = _variant_job(kit)
    after = _variant_job(kit, spec, annotations=annotations, labels=labels, defaults=defaults, **meta)

    assert (before["metadata"]["name"] != after["metadata"]["name"]) is renamed
    assert (before["spec"] != after["spec"]) is (renamed and not annotations)


def test_same_job_name_means_same_spec(kit):
    """The invariant behind the name: over every variant above (and each with a fleet embedder), one name never
    stands for two specs."""
    specs: dict[str, set[str]] = {}
    for row in _JOB_CHANGES:
        spec, annotations, labels, defaults, meta, _ = row.values
        for embedder in (False, True):
            extra = {"embedding": {"fleetRef": {"name": "embed"}}} if embedder else {}
            job = _variant_job(kit, kit.merge(spec, extra), annotations=annotations, labels=labels,
                               defaults=defaults, embedder=embedder, **meta)
            specs.setdefault(job["metadata"]["name"], set()).add(stable_hash(job["spec"], 64))

    assert {name: len(hashes) for name, hashes in specs.items() if len(hashes) > 1} == {}
    assert len(specs) == 2 * sum(1 for row in _JOB_CHANGES if row.values[-1]) + 2


def test_other_resources_do_not_rename_the_job(kit):
    index = kit.index("docs", {"embedding": {"fleetRef": {"name": "embed"}}})
    alone = kit.related(kit.fleet("embed"))
    crowded = kit.related(kit.fleet("embed"), kit.fleet("large"), kit.app("assistant"), kit.app("other"),
                          kit.budget("spend"), kit.index("other-docs"))

    assert _job(kit, render.render(index, related=alone, defaults=kit.defaults)) == _job(
        kit, render.render(index, related=crowded, defaults=kit.defaults))


@pytest.mark.parametrize(
    "first, second, renamed",
    [
        pytest.param("1", "2", True, id="value-changed"),
        pytest.param("1", "1", False, id="value-same"),
        pytest.param(None, "1", True, id="added"),
        pytest.param("1", None, True, id="removed"),
    ],
)
def test_reingest_annotation_value_names_the_job(kit, first, second, renamed):
    a = kit.index("docs", annotations={REINGEST_ANNOTATION: first} if first else None)
    b = kit.index("docs", annotations={REINGEST_ANNOTATION: second} if second else None)
    job_a, job_b = render.ingest_job(a, kit.defaults), render.ingest_job(b, kit.defaults)

    assert (job_a["metadata"]["name"] != job_b["metadata"]["name"]) is renamed
    assert job_a["spec"] == job_b["spec"]




@pytest.mark.parametrize(
    "first, second",
    [
        pytest.param({"mode": "embedded"}, {"mode": "managed"}, id="embedded-to-managed"),
        pytest.param({"mode": "managed"}, {"mode": "embedded"}, id="managed-to-embedded"),
        pytest.param({"mode": "embedded"}, {"mode": "external", "uri": "http://milvus.test:19530"},
                     id="embedded-to-external"),
        pytest.param({"mode": "external", "uri": "http://a.test:19530"},
                     {"mode": "external", "uri": "http://b.test:19530"}, id="external-uri"),
    ],
)
def test_a_new_vector_store_is_ingested_again(kit, first, second):
    before = _job(kit, render.vectorindex(kit.index("docs", {"milvus": first}), kit.defaults))
    after = _job(kit, render.vectorindex(kit.index("docs", {"milvus": second}), kit.defaults))

    assert before["metadata"]["name"] != after["metadata"]["name"]


@pytest.mark.parametrize(
    "source, arg, volume, mount",
    [
        pytest.param({"configMap": {"name": "corpus"}}, SOURCE_MOUNT,
                     {"name": "source", "configMap": {"name": "corpus"}},
                     {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True}, id="configmap-read-only"),
        pytest.param({"configMap": None, "persistentVolumeClaim": {"claimName": "docs-pvc", "path": "/kb/"}},
                     SOURCE_MOUNT, {"name": "source", "persistentVolumeClaim": {"claimName": "docs-pvc",
                                                                                "readOnly": True}},
                     {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True, "subPath": "kb"},
                     id="pvc-subpath"),
        pytest.param({"configMap": None, "persistentVolumeClaim": {"claimName": "docs-pvc"}}, SOURCE_MOUNT,
                     {"name": "source", "persistentVolumeClaim": {"claimName": "docs-pvc", "readOnly": True}},
                     {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True}, id="pvc-root"),
        pytest.param({"configMap": None, "url": "https://example.test/docs.tar.gz"},
                     "https://example.test/docs.tar.gz", None, None, id="url-no-volume"),
    ],
)
def test_source_mount(kit, source, arg, volume, mount):
    index = kit.make("VectorIndex", "docs", {"source": {k: v for k, v in source.items() if v is not None}})
    job = _job(kit, render.vectorindex(index, kit.defaults))
    c = kit.container(job)

    assert kit.flag(c["args"], "--source") == arg
    assert kit.volume(job, "source") == volume
    assert kit.mount(c, "source") == mount
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["source"] * bool(volume) + ["tmp"]
    assert [m["name"] for m in c["volumeMounts"]] == ["source"] * bool(mount) + ["tmp"]


@pytest.mark.parametrize(
    "milvus, kinds, uri, token",
    [
        pytest.param({}, ["ConfigMap", "Service", "StatefulSet", "NetworkPolicy", "Job"],
                     milvus_uri("docs", "team-a"), None, id="embedded-default"),
        pytest.param({"mode": "embedded", "collection": "kb", "tokenSecretRef": {"name": "milvus", "key": "t"}},
                     ["ConfigMap", "Service", "StatefulSet", "NetworkPolicy", "Job"], milvus_uri("docs", "team-a"),
                     {"name": "milvus", "key": "t"}, id="embedded-named-collection-token"),
        pytest.param({"mode": "external", "uri": "https://milvus.example.test:19530",
                      "tokenSecretRef": {"name": "milvus", "key": "token"}},
                     ["Job"], "https://milvus.example.test:19530", {"name": "milvus", "key": "token"},
                     id="external-with-token"),
        pytest.param({"mode": "external", "uri": "grpc://milvus:19530"}, ["Job"], "grpc://milvus:19530", None,
                     id="external-no-token"),
        pytest.param({"mode": "managed"}, ["Milvus", "Job"], milvus_uri("docs", "team-a"), None, id="managed"),
    ],
)
def test_milvus_modes(kit, milvus, kinds, uri, token):
    index = kit.index("docs", {"milvus": milvus})
    children = render.vectorindex(index, kit.defaults)
    job = _job(kit, children)
    c = kit.container(job)

    assert [ch["kind"] for ch in children] == kinds
    assert render.connection(index).uri == uri
    assert kit.flag(c["args"], "--index") == uri
    assert (kit.env(c, MILVUS_TOKEN_ENV) or {}).get("valueFrom") == ({"secretKeyRef": token} if token else None)
    assert c["env"] == ([{"name": MILVUS_TOKEN_ENV, "valueFrom": {"secretKeyRef": token}}] if token else [])
    assert render.connection(index).token_env == (MILVUS_TOKEN_ENV if token else None)
    assert "PersistentVolumeClaim" not in kinds and kit.volume(job, "index") is None


def test_embedded_and_managed_share_the_service_name_the_milvus_operator_uses(kit):
    assert milvus_uri("docs", "team-a") == "http://docs-milvus.team-a.svc:19530"
    assert render.connection(kit.index("docs", namespace="prod")).uri == "http://docs-milvus.prod.svc:19530"


@pytest.mark.parametrize(
    "name, milvus, storage, when_deleted",
    [
        pytest.param("docs", {}, "10Gi", "Delete", id="defaults"),
        pytest.param("team-docs", {"storageSize": "200Gi", "deletionPolicy": "Retain"}, "200Gi", "Retain",
                     id="sized-retained"),
        pytest.param("n" * 38 + "-z", {"storageSize": "1Ti"}, "1Ti", "Delete", id="longest-name"),
    ],
)
def test_embedded_milvus_standalone(kit, name, milvus, storage, when_deleted):
    index = kit.index(name, {"milvus": milvus})
    children = render.vectorindex(index, kit.defaults)
    full = f"{name}-milvus"
    cm = kit.one(children, "ConfigMap", full)
    svc = kit.one(children, "Service", full)
    sts = kit.one(children, "StatefulSet", full)
    c = kit.container(sts)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]

    # readers reach it through its Service
    assert render.connection(index).uri == f"http://{svc['metadata']['name']}.{kit.ns}.svc:19530"
    assert svc["spec"]["ports"] == [
        {"name": "grpc", "port": 19530, "targetPort": "grpc", "protocol": "TCP"},
        {"name": "metrics", "port": 9091, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["metadata"]["labels"]["app.kubernetes.io/name"] == MILVUS_APP
    # one standalone pod with embedded etcd and local storage
    assert sts["spec"]["serviceName"] == full
    assert sts["spec"]["replicas"] == 1
    assert c["image"] == kit.defaults.milvus_image
    assert c["command"] == ["milvus", "run", "standalone"]
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "ETCD_USE_EMBED": "true", "ETCD_DATA_DIR": "/var/lib/milvus/etcd",
        "ETCD_CONFIG_PATH": "/milvus/configs/embedEtcd.yaml", "COMMON_STORAGETYPE": "local",
        "DEPLOY_MODE": "STANDALONE"}
    assert c["ports"] == [{"name": "grpc", "containerPort": 19530, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9091, "protocol": "TCP"}]
    assert {p: c[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        p: {"path": "/healthz", "port": "metrics"} for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    # its etcd configuration comes from the ConfigMap, at the path ETCD_CONFIG_PATH names
    assert cm["data"] == {"embedEtcd.yaml": EMBED_ETCD}
    assert yaml.safe_load(cm["data"]["embedEtcd.yaml"])["listen-client-urls"] == "http://0.0.0.0:2379"
    assert kit.volume(sts, "config") == {"name": "config", "configMap": {"name": cm["metadata"]["name"]}}
    assert kit.mount(c, "config") == {"name": "config", "mountPath": "/milvus/configs/embedEtcd.yaml",
                                      "subPath": "embedEtcd.yaml", "readOnly": True}
    # its data lives on a claim per pod, sized by spec.milvus.storageSize, kept or deleted with the index
    assert kit.mount(c, "data") == {"name": "data", "mountPath": "/var/lib/milvus"}
    assert sts["spec"]["volumeClaimTemplates"] == [{
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}}]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": when_deleted,
                                                                   "whenScaled": "Retain"}
    assert len(f"data-{full}-0") <= 63


def test_milvus_and_ingest_selectors_do_not_overlap(kit):
    children = render.vectorindex(kit.index("docs"), kit.defaults)
    svc = kit.one(children, "Service")
    job_pods = _job(kit, children)["spec"]["template"]["metadata"]["labels"]
    milvus_pods = kit.one(children, "StatefulSet")["spec"]["template"]["metadata"]["labels"]

    assert svc["spec"]["selector"].items() <= milvus_pods.items()
    assert not svc["spec"]["selector"].items() <= job_pods.items()


# Everything in a StatefulSet's spec but these is immutable.
_STS_MUTABLE = {"replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds"}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"milvus": {"deletionPolicy": "Retain"}}, id="deletion-policy"),
        pytest.param({"milvus": {"shards": 8, "collection": "kb"}}, id="collection"),
        pytest.param({"chunking": {"sizeTokens": 512}, "ingestion": {"workers": 9}}, id="ingestion"),
        pytest.param({"milvus": {"storageSize": "50Gi"}}, id="storage-size"),
    ],
)
def test_spec_changes_leave_immutable_statefulset_fields_alone_or_are_refused(kit, spec):
    before = kit.one(render.vectorindex(kit.index("docs"), kit.defaults), "StatefulSet")
    after = kit.one(render.vectorindex(kit.index("docs", spec, labels=kit.owner_labels), kit.defaults),
                    "StatefulSet")
    changed = {k for k in before["spec"].keys() | after["spec"].keys()
               if k not in _STS_MUTABLE and before["spec"].get(k) != after["spec"].get(k)}
    refused = {r.field for r in MilvusSpec.__rules__ if "oldSelf" in r.cel}

    assert changed == set() or (changed == {"volumeClaimTemplates"} and "storageSize" in refused)


@pytest.mark.parametrize(
    "managed, components",
    [
        pytest.param({}, None, id="standalone"),
        pytest.param({"mode": "cluster", "queryNodeReplicas": 3, "dataNodeReplicas": 2},
                     {"queryNode": {"replicas": 3}, "dataNode": {"replicas": 2}}, id="cluster"),
    ],
)
def test_managed_milvus_resource(kit, managed, components):
    index = kit.index("docs", {"milvus": {"mode": "managed", "managed": managed}})
    milvus = kit.one(render.vectorindex(index, kit.defaults), "Milvus")

    assert milvus["apiVersion"] == "milvus.io/v1beta1"
    assert milvus["metadata"]["name"] == "docs"
    # The Milvus operator names the Service `<name>-milvus`: the URI must point at it.
    assert render.connection(index).uri == f"http://{milvus['metadata']['name']}-milvus.team-a.svc:19530"
    assert milvus["spec"]["mode"] == index.spec.milvus.managed.mode
    assert milvus["spec"].get("components") == components


@pytest.mark.parametrize(
    "access",
    [
        pytest.param({"defaultTenant": 'acme "inc", ltd', "defaultGroups": ['eng"ops', "a,b", "[x]", "{y}"]},
                     id="quotes-commas-brackets"),
        pytest.param({"defaultTenant": "Ünïcødé テナント", "defaultGroups": ["spaces in name", "back\\slash"]},
                     id="unicode-backslash"),
        pytest.param({"defaultGroups": ["'single'", "$(whoami)", "--workers", ""]}, id="shell-looking"),
        pytest.param({}, id="empty"),
    ],
)
def test_access_survives_json_argument(kit, access):
    index = kit.index("docs", {"access": access})
    args = kit.container(_job(kit, render.vectorindex(index, kit.defaults)))["args"]

    decoded = json.loads(kit.flag(args, "--access"))
    assert decoded == index.spec.access.wire()
    assert decoded.get("defaultTenant") == access.get("defaultTenant")
    assert decoded["defaultGroups"] == access.get("defaultGroups", [])


@pytest.mark.parametrize(
    "embedding, embedder",
    [
        pytest.param({}, "all-minilm-l6-v2", id="default"),
        pytest.param({"local": {"model": "all-minilm-l6-v2"}}, "all-minilm-l6-v2", id="local"),
        pytest.param({"fleetRef": {"name": "embed"}}, fleet_url("embed", "team-a"), id="fleet"),
    ],
)
def test_embedder_argument(kit, embedding, embedder):
    index = kit.index("docs", {"embedding": embedding})
    related = kit.related(kit.fleet("embed"))
    args = kit.container(_job(kit, render.render(index, related=related, defaults=kit.defaults)))["args"]

    assert kit.flag(args, "--embedder") == embedder


def test_missing_embedding_fleet_is_a_dependency(kit):
    index = kit.index("docs", {"embedding": {"fleetRef": {"name": "embed"}}})

    with pytest.raises(DependencyMissing) as err:
        render.render(index, related={}, defaults=kit.defaults)
    assert err.value.missing == ["ModelFleet/embed"]
    assert err.value.ref == "VectorIndex team-a/docs"


# --- what every child carries ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["embedded", "managed", "external"])
@pytest.mark.parametrize(
    "name, uid, has_owner",
    [
        pytest.param("docs", "6f1c2a9e-0d3b-4c1e-9a7f-2b8d5e4c3a10", True, id="with-uid"),
        pytest.param("docs", None, False, id="offline-no-uid"),
        pytest.param("n" * 38 + "-z", "u-1", True, id="longest-name"),
    ],
)
def test_every_child_is_owned_labelled_and_named(kit, mode, name, uid, has_owner):
    milvus = {"mode": mode, **({"uri": "http://milvus:19530"} if mode == "external" else {})}
    index = kit.index(name, {"milvus": milvus}, uid=uid, labels=kit.owner_labels)
    children = render.vectorindex(index, kit.defaults)
    job = _job(kit, children)

    assert kit.child_problems(children, index) == []
    assert all(("ownerReferences" in c["metadata"]) is has_owner for c in children)
    assert {(c["apiVersion"], c["kind"]) for c in children} <= set(render.CHILD_KINDS["VectorIndex"])
    assert len({(c["kind"], c["metadata"]["name"]) for c in children}) == len(children)
    assert job["metadata"]["labels"] == {**kit.owner_labels, **job["spec"]["template"]["metadata"]["labels"]}
    assert not kit.owner_labels.keys() & job["spec"]["template"]["metadata"]["labels"].keys()




@pytest.mark.parametrize("mode", [pytest.param("embedded"), "managed", "external"])
def test_children_share_no_mutable_objects(kit, mode):
    """Former bug: _job() used meta['labels'] as the pod template's labels (YAML anchors in `agentfleet render`)."""
    milvus = {"mode": mode, **({"uri": "http://milvus:19530"} if mode == "external" else {})}

    assert kit.aliased(render.vectorindex(kit.index(spec={"milvus": milvus}, labels=kit.owner_labels),
                                          kit.defaults)) == []


# --- issue 13: URL sources, Retain, storageSize, the store wait, Milvus auth, NetworkPolicy, restricted pods ------

@pytest.mark.parametrize(
    "source, ingestion, args, env, env_from, volume, sa",
    [
        pytest.param({"url": "s3://corpus/docs"}, {}, {"--max-object-mb": "64", "--max-total-mb": "4096"}, {},
                     None, None, None, id="s3-default-chain"),
        pytest.param({"url": "s3://corpus/docs", "endpoint": "http://minio.storage.svc:9000", "region": "eu-west-1",
                      "credentialsSecretRef": {"name": "s3-keys"}, "maxObjectMib": 8, "maxTotalMib": 100}, {},
                     {"--endpoint-url": "http://minio.storage.svc:9000", "--region": "eu-west-1",
                      "--max-object-mb": "8", "--max-total-mb": "100"}, {}, [{"secretRef": {"name": "s3-keys"}}],
                     None, None, id="s3-compatible-with-keys"),
        pytest.param({"url": "s3://corpus/docs"}, {"serviceAccountName": "ingest-irsa"}, {}, {}, None, None,
                     "ingest-irsa", id="s3-irsa"),
        pytest.param({"url": "gs://kb/docs", "credentialsSecretRef": {"name": "gcs-key"}}, {}, {},
                     {"GOOGLE_APPLICATION_CREDENTIALS": "/var/run/agentfleet/source-credentials/credentials.json"},
                     None, {"name": "source-credentials", "secret": {"secretName": "gcs-key", "items": [
                         {"key": "credentials.json", "path": "credentials.json"}]}}, None, id="gs-key-file"),
        pytest.param({"url": "gs://kb/docs"}, {"serviceAccountName": "ingest-wi"}, {}, {}, None, None, "ingest-wi",
                     id="gs-workload-identity"),
        pytest.param({"url": "https://files.example/corpus.tar.gz", "credentialsSecretRef": {"name": "web"}}, {},
                     {}, {}, [{"secretRef": {"name": "web"}}], None, None, id="https-archive-header-secret"),
        pytest.param({"configMap": {"name": "corpus"}}, {}, {"--max-object-mb": None, "--endpoint-url": None}, {},
                     None, None, None, id="configmap-no-url-flags"),
    ],
)
def test_url_source_reaches_the_ingest_job(kit, source, ingestion, args, env, env_from, volume, sa):
    index = kit.index("docs", {"source": {"configMap": None, **source}, "ingestion": ingestion})
    job = _job(kit, render.vectorindex(index, kit.defaults))
    pod = job["spec"]["template"]["spec"]
    c = kit.container(job)

    assert kit.flag(c["args"], "--source") == (source.get("url") or SOURCE_MOUNT)
    for flag, value in args.items():
        assert kit.flag(c["args"], flag) == value, flag
    for name, value in env.items():
        assert kit.env(c, name) == {"name": name, "value": value}
    assert c.get("envFrom") == env_from
    assert kit.volume(job, "source-credentials") == volume
    if volume:
        assert kit.mount(c, "source-credentials") == {"name": "source-credentials", "readOnly": True,
                                                      "mountPath": "/var/run/agentfleet/source-credentials"}
    assert pod.get("serviceAccountName") == sa


@pytest.mark.parametrize(
    "source, field, message",
    [
        pytest.param({"configMap": {"name": "c"}, "endpoint": "http://minio:9000"}, "spec.source",
                     "apply to a url source only", id="endpoint-without-url"),
        pytest.param({"url": "gs://kb/docs", "region": "eu-west-1"}, "spec.source.region", "s3:// url only",
                     id="region-on-gs"),
        pytest.param({"url": "s3://kb/docs", "maxObjectMib": 500, "maxTotalMib": 100}, "spec.source.maxObjectMib",
                     "must not exceed", id="object-over-total"),
    ],
)
def test_url_source_fields_are_checked(kit, source, field, message):
    from agentfleet.errors import SpecError

    with pytest.raises(SpecError) as info:
        kit.index("docs", {"source": {"configMap": None, **source}})
    assert any(p.path == field and message in p.message for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "milvus, ingestion, wait",
    [
        pytest.param({}, {}, "900", id="embedded-waits"),
        pytest.param({"mode": "managed"}, {"storeWaitSeconds": 1800}, "1800", id="managed-waits-longer"),
        pytest.param({"mode": "external", "uri": "http://milvus:19530"}, {}, None, id="external-does-not"),
        pytest.param({}, {"storeWaitSeconds": 0}, None, id="turned-off"),
    ],
)
def test_ingest_job_waits_for_the_store_it_created(kit, milvus, ingestion, wait):
    index = kit.index("docs", {"milvus": milvus, "ingestion": ingestion})
    c = kit.container(_job(kit, render.vectorindex(index, kit.defaults)))
    assert kit.flag(c["args"], "--wait-for-store") == wait


@pytest.mark.parametrize(
    "milvus, owned, policy, pvc_deletion, size",
    [
        pytest.param({}, True, "Delete", True, "20Gi", id="delete-default"),
        pytest.param({"deletionPolicy": "Retain"}, False, "Retain", False, "20Gi", id="retain"),
        pytest.param({"deletionPolicy": "Retain", "managed": {"storageSize": "500Gi"}}, False, "Retain", False,
                     "500Gi", id="retain-sized"),
        pytest.param({"managed": {"mode": "cluster", "storageSize": "2Ti"}}, True, "Delete", True, "2Ti",
                     id="cluster-delete-sized"),
    ],
)
def test_managed_milvus_honours_deletion_policy_and_storage_size(kit, milvus, owned, policy, pvc_deletion, size):
    index = kit.index("docs", {"milvus": {"mode": "managed", **milvus}})
    cr = kit.one(render.vectorindex(index, kit.defaults), "Milvus")
    deps = cr["spec"]["dependencies"]
    expected_deps = {"storage", "etcd"} | ({"pulsar"} if index.spec.milvus.managed.mode == "cluster" else set())

    assert ("ownerReferences" in cr["metadata"]) is owned
    if owned:
        assert cr["metadata"]["ownerReferences"][0]["uid"] == kit.uid
    assert set(deps) == expected_deps
    for name in expected_deps:
        assert deps[name]["inCluster"]["deletionPolicy"] == policy, name
        assert deps[name]["inCluster"]["pvcDeletion"] is pvc_deletion, name
    assert deps["storage"]["inCluster"]["values"] == {"persistence": {"size": size}}


def test_embedded_retain_keeps_the_claim(kit):
    sts = kit.one(render.vectorindex(kit.index("docs", {"milvus": {"deletionPolicy": "Retain"}}), kit.defaults),
                  "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


AUTH = {"name": "milvus-auth", "key": "password"}


@pytest.mark.parametrize("mode", ["embedded", "managed"])
def test_milvus_auth_from_a_secret(kit, mode):
    index = kit.index("docs", {"milvus": {"mode": mode, "authSecretRef": AUTH}})
    children = render.vectorindex(index, kit.defaults)
    job = _job(kit, children)
    c = kit.container(job)
    secret = {"secretKeyRef": AUTH}
    client = [{"name": "MILVUS_ROOT_PASSWORD", "valueFrom": secret},
              {"name": MILVUS_TOKEN_ENV, "value": "root:$(MILVUS_ROOT_PASSWORD)"}]

    # Clients: the token is built from the password by the kubelet; $(VAR) needs VAR defined before it.
    assert c["env"][:2] == client
    assert client_env(index) == client
    assert render.connection(index).token_env == MILVUS_TOKEN_ENV
    assert kit.container(render.drop_job(index, kit.defaults))["env"] == client
    if mode == "embedded":
        env = kit.container(kit.one(children, "StatefulSet"))["env"]
        assert {"name": "COMMON_SECURITY_AUTHORIZATIONENABLED", "value": "true"} in env
        assert {"name": "COMMON_SECURITY_DEFAULTROOTPASSWORD", "valueFrom": secret} in env
    else:
        cr = kit.one(children, "Milvus")
        assert cr["spec"]["config"] == {"common": {"security": {"authorizationEnabled": True}}}
        assert cr["spec"]["components"]["env"] == [{"name": "COMMON_SECURITY_DEFAULTROOTPASSWORD",
                                                    "valueFrom": secret}]
        assert "password" not in json.dumps(cr["spec"]["config"])


@pytest.mark.parametrize(
    "milvus, field",
    [
        pytest.param({"mode": "external", "uri": "http://m:19530", "authSecretRef": AUTH}, "spec.milvus.authSecretRef",
                     id="external-takes-a-token"),
        pytest.param({"authSecretRef": AUTH, "tokenSecretRef": AUTH}, "spec.milvus.tokenSecretRef", id="both"),
    ],
)
def test_milvus_auth_rules(kit, milvus, field):
    from agentfleet.errors import SpecError

    with pytest.raises(SpecError) as info:
        kit.index("docs", {"milvus": milvus})
    assert any(p.path == field for p in info.value.problems), info.value.problems


def test_network_policy_admits_only_runtimes_and_this_indexs_ingestion(kit):
    index = kit.index("docs")
    children = render.vectorindex(index, kit.defaults)
    pol = kit.one(children, "NetworkPolicy", "docs-milvus")
    milvus_pods = kit.one(children, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    ingest_pods = _job(kit, children)["spec"]["template"]["metadata"]["labels"]
    drop_pods = render.drop_job(index, kit.defaults)["spec"]["template"]["metadata"]["labels"]
    other_ingest = _job(kit, render.vectorindex(kit.index("other"), kit.defaults))["spec"]["template"]["metadata"][
        "labels"]
    app_children = render.render(kit.app("assistant", {"fleets": {"large": "llm"}}),
                                 related=kit.related(kit.fleet("llm"), index), defaults=kit.defaults)
    runtime_pods = kit.one(app_children, "Deployment", "assistant")["spec"]["template"]["metadata"]["labels"]

    def admitted(labels, port):
        return any(any(p["port"] == port for p in rule["ports"]) and any(
            "namespaceSelector" not in peer and peer["podSelector"]["matchLabels"].items() <= labels.items()
            for peer in rule["from"]) for rule in pol["spec"]["ingress"])

    assert pol["spec"]["podSelector"]["matchLabels"].items() <= milvus_pods.items()
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    assert admitted(ingest_pods, 19530) and admitted(drop_pods, 19530) and admitted(runtime_pods, 19530)
    assert not admitted(other_ingest, 19530), "another index's ingestion pods"
    assert not admitted(milvus_pods, 19530) and not admitted({"app": "anything"}, 19530)
    assert not admitted(runtime_pods, 9091), "metrics: Prometheus only"


_PSS_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """The `restricted` Pod Security Standard's checks (as the API server's PodSecurity admission applies them)."""
    out = []
    psc = pod.get("securityContext") or {}
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= _PSS_VOLUMES:
            out.append(f"volume {v['name']}: {kinds}")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    for c in (pod.get("initContainers") or []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{name}: capabilities.drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities.add")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
    return out


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({}, id="embedded"),
        pytest.param({"milvus": {"authSecretRef": AUTH, "deletionPolicy": "Retain"}}, id="embedded-auth-retain"),
        pytest.param({"milvus": {"mode": "managed"}}, id="managed"),
        pytest.param({"milvus": {"mode": "external", "uri": "http://m:19530"}}, id="external"),
        pytest.param({"source": {"configMap": None, "url": "gs://kb/d", "credentialsSecretRef": {"name": "k"}}},
                     id="gs-source"),
        pytest.param({"source": {"configMap": None, "persistentVolumeClaim": {"claimName": "docs", "path": "a"}}},
                     id="pvc-source"),
    ],
)
def test_every_pod_passes_the_restricted_pod_security_standard(kit, spec):
    index = kit.index("docs", spec)
    children = render.vectorindex(index, kit.defaults) + [render.drop_job(index, kit.defaults)]
    pods = [(c["kind"], c["spec"]["template"]["spec"]) for c in children if c["kind"] in ("Job", "StatefulSet")]

    assert pods, "every mode renders at least the ingestion Job"
    assert {kind: restricted_violations(pod) for kind, pod in pods} == {kind: [] for kind, _ in pods}
    sts = [pod for kind, pod in pods if kind == "StatefulSet"]
    for pod in sts:
        # Milvus's image runs as root unless told otherwise: a numeric non-root UID that owns the volume.
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] != 0
