"""The shipped YAML is part of the product: every example parses with the same models the operator uses, its
references resolve inside the file, its corpus carries access metadata, and the kustomize base renders with
least-privilege RBAC and all four CRDs."""

from __future__ import annotations

import base64
import fnmatch
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.api import KINDS, is_ours, parse
from agentfleet.names import GROUP

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MANIFESTS = ROOT / "manifests"
ARGOCD = MANIFESTS / "argocd"
SYNC_WAVE = "argocd.argoproj.io/sync-wave"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def secret_value(secret: dict[str, Any], key: str) -> str | None:
    """A Secret key from stringData (plain) or data (base64)."""
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML between a leading `---` line and the next `---` line, or None."""
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    if end < 0:
        return None
    meta = yaml.safe_load(text[4:end])
    return meta if isinstance(meta, dict) else None


def apps(path: Path) -> list[dict[str, Any]]:
    found = list(by_kind(load(path), "AgentApp").values())
    if not found:
        pytest.skip(f"{path.name} has no AgentApp")
    return found


def corpora(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(ConfigMap name, data) of every ConfigMap a VectorIndex in the file ingests."""
    docs = load(path)
    maps = by_kind(docs, "ConfigMap")
    out = []
    for index in by_kind(docs, "VectorIndex").values():
        source = index["spec"]["source"].get("configMap")
        if source and source["name"] in maps:
            out.append((source["name"], maps[source["name"]].get("data") or {}))
    if not out:
        pytest.skip(f"{path.name} has no VectorIndex reading a ConfigMap in the same file")
    return out


def good_groups(groups: Any) -> bool:
    return isinstance(groups, list) and bool(groups) and all(isinstance(g, str) and g for g in groups)


examples = pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])


@examples
def test_every_document_names_itself_and_no_namespace(path):
    for i, doc in enumerate(load(path)):
        where = f"{path.name} document {i}"
        assert doc.get("apiVersion"), f"{where}: apiVersion missing"
        assert doc.get("kind"), f"{where}: kind missing"
        assert (doc.get("metadata") or {}).get("name"), f"{where}: metadata.name missing"
        # Examples apply to whatever namespace the user picks (kubectl -n, agentfleet up).
        assert "namespace" not in doc["metadata"], f"{where}: examples carry no metadata.namespace"


@examples
def test_agentfleet_documents_parse(path):
    ours = [d for d in load(path) if is_ours(d)]
    assert ours, f"{path.name} holds no agentfleet.io resource"
    for doc in ours:
        resource = parse(doc)  # raises SpecError naming each bad field
        assert resource.kind == doc["kind"]
        assert resource.name == doc["metadata"]["name"]


@examples
def test_agentfleet_documents_use_known_group_and_kind(path):
    for doc in load(path):
        if str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
            assert doc["kind"] in KINDS, f"{path.name}: unknown kind {doc['kind']!r} in {GROUP}"


@examples
def test_agentapp_references_resolve_in_the_same_file(path):
    docs = load(path)
    fleets, indexes = by_kind(docs, "ModelFleet"), by_kind(docs, "VectorIndex")
    budgets, secrets = by_kind(docs, "Budget"), by_kind(docs, "Secret")
    for app in apps(path):
        spec, name = app["spec"], app["metadata"]["name"]
        for role in ("large", "small", "embedder"):
            fleet = spec["fleets"].get(role)
            if fleet:
                assert fleet in fleets, f"AgentApp {name}: spec.fleets.{role} {fleet!r} is not a ModelFleet here"
        if spec.get("index"):
            assert spec["index"]["name"] in indexes, f"AgentApp {name}: spec.index names no VectorIndex here"
        if spec.get("budgetRef"):
            assert spec["budgetRef"]["name"] in budgets, f"AgentApp {name}: spec.budgetRef names no Budget here"
        ref = spec["auth"]["apiKeysSecretRef"]
        assert ref["name"] in secrets, f"AgentApp {name}: spec.auth.apiKeysSecretRef names no Secret here"
        assert secret_value(secrets[ref["name"]], ref["key"]) is not None, \
            f"Secret {ref['name']} has no key {ref['key']!r}"


@examples
def test_other_references_resolve_in_the_same_file(path):
    docs = load(path)
    app_names, fleets = set(by_kind(docs, "AgentApp")), set(by_kind(docs, "ModelFleet"))
    for name, index in by_kind(docs, "VectorIndex").items():
        source = index["spec"]["source"]
        if "configMap" in source:
            assert source["configMap"]["name"] in by_kind(docs, "ConfigMap"), \
                f"VectorIndex {name}: spec.source.configMap names no ConfigMap here"
        fleet_ref = (index["spec"].get("embedding") or {}).get("fleetRef")
        if fleet_ref:
            assert fleet_ref["name"] in fleets, f"VectorIndex {name}: spec.embedding.fleetRef names no ModelFleet"
    for name, budget in by_kind(docs, "Budget").items():
        scoped_app = (budget["spec"].get("scope") or {}).get("app")
        if scoped_app:
            assert scoped_app in app_names, f"Budget {name}: spec.scope.app {scoped_app!r} is no AgentApp here"


@examples
def test_api_keys_map_at_least_two_principals_with_different_groups(path):
    secrets = by_kind(load(path), "Secret")
    for app in apps(path):
        ref = app["spec"]["auth"]["apiKeysSecretRef"]
        keys = yaml.safe_load(secret_value(secrets[ref["name"]], ref["key"]))
        assert isinstance(keys, dict) and len(keys) >= 2, f"Secret {ref['name']}: want >= 2 API keys"
        for key, who in keys.items():
            assert isinstance(who, dict), f"API key {key}: want a mapping {{user, tenant, groups}}"
            assert who.get("user") and who.get("tenant"), f"API key {key}: user and tenant are required"
            assert good_groups(who.get("groups")), f"API key {key}: groups must be a non-empty list of names"
        assert len({w["user"] for w in keys.values()}) >= 2
        assert len({frozenset(w["groups"]) for w in keys.values()}) >= 2, "every principal has the same groups"


@examples
def test_every_corpus_document_has_access_metadata(path):
    for cm_name, data in corpora(path):
        rules = yaml.safe_load(data["_access.yaml"]) if "_access.yaml" in data else []
        assert isinstance(rules, list), f"ConfigMap {cm_name}: _access.yaml must be a list"
        for i, rule in enumerate(rules):
            assert set(rule) == {"pattern", "tenant", "groups"}, f"_access.yaml[{i}]: want pattern, tenant, groups"
            assert rule["tenant"] and good_groups(rule["groups"]), f"_access.yaml[{i}]: tenant and groups"
        documents = {k: v for k, v in data.items() if k.endswith(".md")}
        assert documents, f"ConfigMap {cm_name} holds no Markdown documents"
        for key, text in documents.items():
            meta = front_matter(text)
            if meta is not None:
                assert isinstance(meta.get("tenant"), str) and meta["tenant"], f"{key}: front matter lacks tenant"
                assert good_groups(meta.get("groups")), f"{key}: front matter lacks groups"
            else:
                assert any(fnmatch.fnmatchcase(key, r["pattern"]) for r in rules), \
                    f"{key}: no front matter and no _access.yaml pattern covers it (it would be skipped)"


@examples
def test_corpus_spans_two_tenants_for_cross_tenant_checks(path):
    for cm_name, data in corpora(path):
        tenants = {(front_matter(v) or {}).get("tenant") for k, v in data.items() if k.endswith(".md")}
        tenants |= {r["tenant"] for r in yaml.safe_load(data.get("_access.yaml", "[]")) or []}
        assert len(tenants - {None}) >= 2, f"ConfigMap {cm_name}: the corpus needs a second tenant"


# --- manifests/ (kustomize) ---------------------------------------------------------------------------------

def kubectl_or_skip(directory: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH: install kubectl >= 1.27 (it bundles kustomize v5) to render "
                    f"{directory.relative_to(ROOT)}/")
    return kubectl


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = kubectl_or_skip(directory)
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl_or_skip(MANIFESTS)
    missing = [f"{GROUP}_{cls.__crd__.plural}.yaml" for cls in KINDS.values()
               if not (ROOT / "crds" / f"{GROUP}_{cls.__crd__.plural}.yaml").exists()]
    assert not missing, f"crds/ lacks {', '.join(missing)}: run `agentfleet crds --out crds/`"
    return kustomize(MANIFESTS)


def test_manifests_render_the_operator(rendered):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for wanted in [("Namespace", "agentfleet-system"), ("ServiceAccount", "agentfleet-operator"),
                   ("ClusterRole", "agentfleet-operator"), ("ClusterRoleBinding", "agentfleet-operator"),
                   ("Deployment", "agentfleet-operator")]:
        assert wanted in kinds
    for doc in rendered:
        if doc["kind"] in ("ServiceAccount", "Deployment"):
            assert doc["metadata"]["namespace"] == "agentfleet-system"


def test_manifests_include_all_four_crds_in_the_first_sync_wave_never_pruned(rendered):
    crds = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {f"{cls.__crd__.plural}.{GROUP}" for cls in KINDS.values()}
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"][SYNC_WAVE] == "-1", name
        # Neither a sync that no longer finds a CRD nor deleting the Argo CD Application deletes it (and with it
        # every custom resource of its kind).
        options = crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"].split(",")
        assert {"Prune=false", "Delete=false"} <= set(options), name
    for doc in rendered:
        if doc["kind"] != "CustomResourceDefinition":
            assert doc["metadata"]["annotations"][SYNC_WAVE] == "0", doc["metadata"]["name"]


def test_one_clusterrole_without_wildcards_secrets_or_peering(rendered):
    roles = [d for d in rendered if d["kind"] == "ClusterRole"]
    assert len(roles) == 1
    rules = roles[0]["rules"]
    assert rules
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert all("*" not in value for value in rule.get(field, [])), f"wildcard in {field}: {rule}"
        assert "secrets" not in rule["resources"], f"the operator reads no Secrets: {rule}"
        assert "kopf.dev" not in rule["apiGroups"] and "zalando.org" not in rule["apiGroups"], \
            "--standalone needs no kopf peering resources"


NEEDS = [
    ("apiextensions.k8s.io", "customresourcedefinitions", {"get", "list", "watch"}),
    ("", "events", {"create", "patch"}),
    ("events.k8s.io", "events", {"create", "patch"}),
    (GROUP, "modelfleets", {"get", "list", "watch", "patch", "update"}),
    (GROUP, "budgets/status", {"get", "patch", "update"}),
    (GROUP, "modelfleets/scale", {"get", "patch", "update"}),
    ("apps", "statefulsets", {"get", "list", "watch", "create", "patch", "delete"}),
    ("batch", "jobs", {"get", "list", "watch", "create", "patch", "delete"}),
    # spec.evaluation.schedule: the eval CronJob is applied and pruned, never read back.
    ("batch", "cronjobs", {"list", "create", "patch", "delete"}),
    ("rbac.authorization.k8s.io", "roles", {"get", "list", "watch", "create", "patch", "delete"}),
    # The router's Role grants these, and RBAC forbids granting what the operator does not hold.
    ("discovery.k8s.io", "endpointslices", {"get", "list", "watch"}),
    ("milvus.io", "milvuses", {"get", "list", "watch", "create", "patch", "delete"}),
    # ModelFleet: multi-node replicas, PodMonitor discovery, InferencePool, NetworkPolicies, GPU capacity per node.
    ("leaderworkerset.x-k8s.io", "leaderworkersets", {"get", "list", "watch", "create", "patch", "delete"}),
    ("monitoring.coreos.com", "podmonitors", {"get", "list", "watch", "create", "patch", "delete"}),
    ("inference.networking.k8s.io", "inferencepools", {"get", "list", "watch", "create", "patch", "delete"}),
    ("networking.k8s.io", "networkpolicies", {"get", "list", "watch", "create", "patch", "delete"}),
    ("", "nodes", {"list"}),
]


@pytest.mark.parametrize(("group", "resource", "verbs"), NEEDS, ids=[f"{g or 'core'}/{r}" for g, r, _ in NEEDS])
def test_clusterrole_grants_what_the_operator_needs(rendered, group, resource, verbs):
    (role,) = [d for d in rendered if d["kind"] == "ClusterRole"]
    granted = set()
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            granted |= set(rule["verbs"])
    assert verbs <= granted, f"{group or 'core'}/{resource}: missing {sorted(verbs - granted)}"


def test_every_rbac_rule_says_whose_need_it_is():
    lines = (MANIFESTS / "rbac.yaml").read_text().splitlines()
    rule_starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rule_starts
    for i in rule_starts:
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith(
                ("# framework (kopf):", "# application:")):
            j -= 1  # a comment may run over several lines; its first line names the owner
        assert lines[j].strip().startswith(("# framework (kopf):", "# application:")), \
            f"rbac.yaml line {i + 1}: comment the rule with '# framework (kopf): why' or '# application: why'"


def test_clusterrolebinding_binds_the_operator_serviceaccount(rendered):
    (binding,) = [d for d in rendered if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "agentfleet-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "agentfleet-operator",
                                    "namespace": "agentfleet-system"}]


def test_operator_runs_once_standalone_non_root_with_kopf_liveness(rendered):
    (deploy,) = [d for d in rendered if d["kind"] == "Deployment"]
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "agentfleet-operator"
    (container,) = pod["containers"]
    command = container["command"] + container.get("args", [])
    assert command[:2] == ["agentfleet", "operator"]
    assert "--standalone" in command and "--all-namespaces" in command
    assert "--liveness=http://0.0.0.0:8080/healthz" in command
    probe = container["livenessProbe"]["httpGet"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}.get(probe["port"], probe["port"])
    assert (probe["path"], port) == ("/healthz", 8080)
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_argocd_health_checks_come_from_one_lua_source():
    docs = kustomize(ARGOCD)
    (app,) = [d for d in docs if d["kind"] == "Application"]
    assert app["spec"]["source"]["path"] == "manifests"
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(app["spec"]["syncPolicy"]["syncOptions"])
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    lua = (ARGOCD / "health.lua").read_text()
    assert cm["data"] == {f"resource.customizations.health.{GROUP}_{kind}": lua for kind in KINDS}
