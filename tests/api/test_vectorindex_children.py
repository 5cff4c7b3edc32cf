"""API tier, VectorIndex children (issue 13): every child the renderer produces for a VectorIndex is accepted by a
real kube-apiserver (server-side dry-run) in a namespace labelled `pod-security.kubernetes.io/enforce=restricted`,
and every pod it would run is admitted there by the PodSecurity admission plugin (a Pod built from each template,
dry-run created: `enforce` judges Pods, only `warn` judges templates, so both are checked). The managed `Milvus`
resource is dry-run against the Milvus operator's own CRD, taken from its Go module
(github.com/milvus-io/milvus-operator, config/crd/bases) and cached under ~/.cache/agentfleet/crds: a field the
operator does not know is rejected (strict field validation) or would be pruned, and both fail here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agentfleet import render
from agentfleet.api import parse
from agentfleet.render import Defaults

pytestmark = pytest.mark.api

MILVUS_OPERATOR_MODULE = "github.com/milvus-io/milvus-operator"
MILVUS_OPERATOR_VERSION = "v1.3.7"
MILVUS_CRD = "config/crd/bases/milvus.io_milvuses.yaml"
AUTH = {"name": "milvus-auth", "key": "password"}

# (id, VectorIndex spec): every mode and every source kind the renderer handles.
SPECS = [
    ("embedded", {"source": {"configMap": {"name": "corpus"}}}),
    ("embedded-auth-retain-pvc", {"source": {"persistentVolumeClaim": {"claimName": "docs", "path": "kb"}},
                                  "milvus": {"authSecretRef": AUTH, "deletionPolicy": "Retain",
                                             "storageSize": "5Gi"}}),
    ("managed-s3", {"source": {"url": "s3://corpus/docs", "endpoint": "http://minio.storage.svc:9000",
                               "region": "eu-west-1", "credentialsSecretRef": {"name": "s3-keys"}},
                    "milvus": {"mode": "managed", "authSecretRef": AUTH},
                    "ingestion": {"serviceAccountName": "ingest"}}),
    ("managed-cluster-retain-gs", {"source": {"url": "gs://kb/docs", "credentialsSecretRef": {"name": "gcs-key"}},
                                   "milvus": {"mode": "managed", "deletionPolicy": "Retain",
                                              "managed": {"mode": "cluster", "storageSize": "50Gi",
                                                          "queryNodeReplicas": 2}}}),
    ("external-https", {"source": {"url": "https://files.example/corpus.tar.gz"},
                        "milvus": {"mode": "external", "uri": "https://milvus.example:19530",
                                   "tokenSecretRef": {"name": "milvus", "key": "token"}}}),
]


def index(name: str, namespace: str, spec: dict):
    return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": "VectorIndex",
                  "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def dry_run(kubectl, manifest: dict) -> subprocess.CompletedProcess:
    return kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=agentfleet", "-o", "json",
                   "-f", "-", input=json.dumps(manifest), check=False)


def pods_of(manifest: dict) -> list[dict]:
    if manifest["kind"] not in ("Job", "StatefulSet", "Deployment"):
        return []
    template = manifest["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    # What the StatefulSet controller adds: each claim template as the volume of the pod's own claim.
    for claim in manifest["spec"].get("volumeClaimTemplates") or ():
        name = claim["metadata"]["name"]
        spec.setdefault("volumes", []).append(
            {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{manifest['metadata']['name']}-0"}})
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"{manifest['metadata']['name'][:50]}-probe",
                          "labels": template["metadata"].get("labels", {})},
             "spec": spec}]


@pytest.fixture(scope="module")
def cluster():
    """A control plane without agentfleet's CRDs: what is dry-run here are a VectorIndex's children (core kinds and
    the Milvus operator's), so this module does not depend on the other kinds' CRDs being loadable."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from e2e.cluster import launcher

    if not launcher.can_build():
        pytest.skip("the Kubernetes control plane is not built and Go is not installed")
    with launcher.running_cluster(os.environ.get("AGENTFLEET_API_CLUSTER", "agentfleet-api")) as c:
        yield c


@pytest.fixture
def restricted(kubectl):
    kubectl("label", "namespace", kubectl.ns, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest", "pod-security.kubernetes.io/warn=restricted",
            "--overwrite")
    return kubectl


@pytest.mark.parametrize("spec", [s for _, s in SPECS], ids=[i for i, _ in SPECS])
def test_every_child_and_pod_is_admitted_in_a_restricted_namespace(restricted, spec):
    idx = index("docs", restricted.ns, spec)
    children = [c for c in render.vectorindex(idx, Defaults()) if c["kind"] != "Milvus"]
    children.append(render.drop_job(idx, Defaults()))
    if idx.spec.ingestion.service_account_name:  # a pod naming a missing ServiceAccount is refused before PSA
        restricted("create", "serviceaccount", idx.spec.ingestion.service_account_name)

    for child in children:
        out = dry_run(restricted, child)
        what = f"{child['kind']}/{child['metadata']['name']}"
        assert out.returncode == 0, f"{what}: {out.stderr}"
        assert "would violate PodSecurity" not in out.stderr, f"{what}: {out.stderr}"
        for pod in pods_of(child):
            created = restricted("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod),
                                 check=False)
            assert created.returncode == 0, f"pod of {what}: {created.stderr}"


def _milvus_crd() -> Path:
    """The Milvus operator's CRD from its Go module, cached; skip (naming why) when it cannot be had."""
    cache = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
    path = cache / "crds" / "milvus-operator" / MILVUS_OPERATOR_VERSION / "milvus.io_milvuses.yaml"
    if path.exists():
        return path
    if shutil.which("go") is None:
        pytest.skip("the Milvus operator's CRD is not cached and Go is not installed to download its module")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["go", "mod", "init", "crdfetch"], cwd=tmp, capture_output=True, check=True)
        got = subprocess.run(["go", "mod", "download", "-json", f"{MILVUS_OPERATOR_MODULE}@{MILVUS_OPERATOR_VERSION}"],
                             cwd=tmp, capture_output=True, text=True, timeout=600)
    try:
        src = Path(json.loads(got.stdout)["Dir"]) / MILVUS_CRD
    except (ValueError, KeyError):
        pytest.skip(f"cannot download {MILVUS_OPERATOR_MODULE}@{MILVUS_OPERATOR_VERSION}: "
                    f"{(got.stdout + got.stderr).strip()[-300:]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, path)
    return path


@pytest.fixture(scope="module")
def milvus_crd(cluster):
    crd = _milvus_crd()
    cluster.kubectl("apply", "--server-side", "-f", str(crd), timeout=120)
    cluster.kubectl("wait", "--for=condition=Established", "crd/milvuses.milvus.io", "--timeout=60s")
    return crd


@pytest.mark.parametrize(
    "milvus, owned, policy, size",
    [
        pytest.param({"mode": "managed"}, True, "Delete", "20Gi", id="delete"),
        pytest.param({"mode": "managed", "deletionPolicy": "Retain", "managed": {"storageSize": "200Gi"},
                      "authSecretRef": AUTH}, False, "Retain", "200Gi", id="retain-sized-auth"),
        pytest.param({"mode": "managed", "managed": {"mode": "cluster", "queryNodeReplicas": 3}}, True, "Delete",
                     "20Gi", id="cluster"),
    ],
)
def test_managed_milvus_against_the_milvus_operators_crd(restricted, milvus_crd, milvus, owned, policy, size):
    idx = index("docs", restricted.ns, {"source": {"configMap": {"name": "c"}}, "milvus": milvus})
    cr = next(c for c in render.vectorindex(idx, Defaults()) if c["kind"] == "Milvus")
    out = dry_run(restricted, cr)
    assert out.returncode == 0, out.stderr
    stored = json.loads(out.stdout)
    deps = stored["spec"]["dependencies"]

    # What we set survived the CRD's pruning: a misspelt field would be gone (or rejected above).
    assert deps["storage"]["inCluster"]["deletionPolicy"] == policy
    assert deps["storage"]["inCluster"].get("pvcDeletion", False) is (policy == "Delete")
    assert deps["etcd"]["inCluster"]["deletionPolicy"] == policy
    assert deps["storage"]["inCluster"]["values"]["persistence"]["size"] == size
    assert stored["spec"]["mode"] == idx.spec.milvus.managed.mode
    if idx.spec.milvus.auth_secret_ref:
        assert stored["spec"]["config"]["common"]["security"]["authorizationEnabled"] is True
        assert stored["spec"]["components"]["env"][0]["valueFrom"]["secretKeyRef"] == AUTH
    if idx.spec.milvus.managed.mode == "cluster":
        assert stored["spec"]["components"]["queryNode"]["replicas"] == 3
    assert ("ownerReferences" in cr["metadata"]) is (owned and bool(idx.metadata.uid))


@pytest.fixture(scope="module")
def vectorindex_crd(cluster):
    root = Path(__file__).resolve().parents[2]
    cluster.kubectl("apply", "--server-side", "-f", str(root / "crds" / "agentfleet.io_vectorindexes.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/vectorindexes.agentfleet.io", "--timeout=60s")


@pytest.mark.parametrize(
    "spec, message",
    [
        pytest.param(SPECS[2][1], None, id="url-source-managed-auth"),
        pytest.param(SPECS[3][1], None, id="gs-cluster-retain"),
        pytest.param({"source": {"configMap": {"name": "c"}, "region": "eu-west-1"}},
                     "spec.source.region: Invalid value: region applies to an s3:// url only", id="region-no-url"),
        pytest.param({"source": {"url": "gs://b/p", "region": "eu-west-1"}},
                     "spec.source.region: Invalid value: region applies to an s3:// url only", id="region-on-gs"),
        pytest.param({"source": {"configMap": {"name": "c"}, "endpoint": "http://m:9000"}},
                     "spec.source: Invalid value: endpoint, region and credentialsSecretRef apply to a url source",
                     id="endpoint-no-url"),
        pytest.param({"source": {"url": "s3://b/p", "maxObjectMib": 5000}},
                     "spec.source.maxObjectMib: Invalid value: maxObjectMib must not exceed maxTotalMib",
                     id="object-over-default-total"),
        pytest.param({"source": {"url": "s3://b/p"}, "milvus": {"mode": "external", "uri": "http://m:19530",
                                                                "authSecretRef": AUTH}},
                     "spec.milvus.authSecretRef: Invalid value: authSecretRef configures an embedded or managed",
                     id="auth-on-external"),
        pytest.param({"source": {"url": "s3://b/p"}, "milvus": {"authSecretRef": AUTH, "tokenSecretRef": AUTH}},
                     "spec.milvus.tokenSecretRef: Invalid value: set at most one", id="auth-and-token"),
    ],
)
def test_vectorindex_crd_accepts_and_rejects_naming_the_field(kubectl, vectorindex_crd, spec, message):
    doc = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "VectorIndex",
           "metadata": {"name": "x", "namespace": kubectl.ns}, "spec": spec}
    out = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    if message is None:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode == 1 and message in out.stderr, out.stderr


def test_every_pod_of_an_app_and_its_evaluation_is_admitted_in_a_restricted_namespace(restricted):
    """The AgentApp's runtime and its evaluation Job and CronJob, with spec.pod options set, as the operator
    renders them for the example: each child applies (server-side dry-run) and each pod is admitted at the
    restricted Pod Security level."""
    import yaml

    example = Path(__file__).resolve().parents[2] / "examples" / "agentapp.yaml"
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d and d["apiVersion"].startswith("agentfleet.io/")]
    for d in docs:
        d["metadata"]["namespace"] = restricted.ns
        if d["kind"] == "AgentApp":
            d["spec"]["evaluation"]["schedule"] = "0 3 * * *"
            d["spec"]["pod"] = {"tolerations": [{"key": "dedicated", "operator": "Exists"}],
                                "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                                "securityContext": {"runAsUser": 10001}}
    objs = [parse(d) for d in docs]
    related = {(o.kind, o.name): o for o in objs}
    app = next(o for o in objs if o.kind == "AgentApp")
    children = render.render(app, related=related, defaults=Defaults(), suite={"data": {"suite.yaml": "cases: []"}})
    kinds = {c["kind"] for c in children}
    assert {"Deployment", "Job", "CronJob"} <= kinds, kinds
    for sa in (c for c in children if c["kind"] == "ServiceAccount"):  # pods naming it must find it
        restricted("apply", "-f", "-", input=json.dumps({**sa, "metadata": {"name": sa["metadata"]["name"]}}))
    for child in children:
        out = dry_run(restricted, child)
        what = f"{child['kind']}/{child['metadata']['name']}"
        assert out.returncode == 0, f"{what}: {out.stderr}"
        assert "would violate PodSecurity" not in out.stderr, f"{what}: {out.stderr}"
        if child["kind"] == "CronJob":
            child = {"kind": "Job", "metadata": child["metadata"], "spec": child["spec"]["jobTemplate"]["spec"]}
        for pod in pods_of(child):
            created = restricted("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod),
                                 check=False)
            assert created.returncode == 0, f"pod of {what}: {created.stderr}"
