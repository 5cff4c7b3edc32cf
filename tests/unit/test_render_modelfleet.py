"""render.modelfleet: the vLLM StatefulSet, its headless Service and PDB, and the router with its RBAC."""

from __future__ import annotations

import pytest

from agentfleet import render
from agentfleet.errors import SpecError
from agentfleet.names import ENGINE_PORT, ROUTER_PORT, engine_name, router_name
from agentfleet.render.modelfleet import STARTUP_PERIOD_S, engine_args


def _children(kit, spec=None, **meta):
    fleet = kit.fleet(spec=spec, **meta)
    return fleet, render.modelfleet(fleet, kit.defaults)


def _engine(kit, spec=None, **meta):
    fleet, children = _children(kit, spec, **meta)
    return fleet, kit.one(children, "StatefulSet", engine_name(fleet.name))


# --- engine arguments ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "spec, tp, served, prefix_flag, max_num_seqs, max_model_len, tail",
    [
        pytest.param({}, "1", "llm", "--enable-prefix-caching", None, None, [], id="defaults"),
        pytest.param({"model": {"servedModelName": "chat-7b"}, "engine": {"tensorParallelSize": 4}},
                     "4", "chat-7b", "--enable-prefix-caching", None, None, [], id="tp4-served-name"),
        pytest.param({"engine": {"enablePrefixCaching": False}},
                     "1", "llm", "--no-enable-prefix-caching", None, None, [], id="prefix-caching-off"),
        pytest.param({"engine": {"maxNumSeqs": 128}}, "1", "llm", "--enable-prefix-caching", "128", None, [],
                     id="max-num-seqs-only"),
        pytest.param({"engine": {"maxModelLen": 8192}}, "1", "llm", "--enable-prefix-caching", None, "8192", [],
                     id="max-model-len-only"),
        pytest.param({"engine": {"tensorParallelSize": 2, "maxNumSeqs": 64, "maxModelLen": 4096,
                                 "extraArgs": ["--enforce-eager", "--seed", "7"]}},
                     "2", "llm", "--enable-prefix-caching", "64", "4096", ["--enforce-eager", "--seed", "7"],
                     id="all-set-extra-args-last"),
        pytest.param({"engine": {"enablePrefixCaching": False, "extraArgs": ["--max-num-seqs", "9"]}},
                     "1", "llm", "--no-enable-prefix-caching", None, None, ["--max-num-seqs", "9"],
                     id="extra-args-verbatim"),
    ],
)
def test_engine_args(kit, spec, tp, served, prefix_flag, max_num_seqs, max_model_len, tail):
    fleet, sts = _engine(kit, spec)
    c = kit.container(sts)
    args = c["args"]
    ours = args[:len(args) - len(tail)]
    other_prefix = ({"--enable-prefix-caching", "--no-enable-prefix-caching"} - {prefix_flag}).pop()

    assert c["command"] == ["vllm", "serve"]
    assert args == engine_args(fleet)
    assert args[len(ours):] == tail
    assert kit.flag(ours, "--tensor-parallel-size") == tp
    assert kit.flag(ours, "--served-model-name") == served
    assert kit.flag(ours, "--port") == str(ENGINE_PORT)
    assert prefix_flag in ours and other_prefix not in ours
    assert kit.flag(ours, "--max-num-seqs") == max_num_seqs
    assert kit.flag(ours, "--max-model-len") == max_model_len


@pytest.mark.parametrize(
    "uri, model_arg, claim, load_format",
    [
        pytest.param("hf://Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", None, None, id="hf"),
        pytest.param("pvc://weights/llama/8b", "/mnt/models/llama/8b", "weights", None, id="pvc-with-path"),
        pytest.param("pvc://weights", "/mnt/models", "weights", None, id="pvc-bare-claim"),
        pytest.param("pvc://weights/", "/mnt/models", "weights", None, id="pvc-trailing-slash"),
        pytest.param("s3://bucket/llama-8b", "s3://bucket/llama-8b", None, "runai_streamer", id="s3"),
        pytest.param("gs://bucket/llama-8b", "gs://bucket/llama-8b", None, "runai_streamer", id="gs"),
    ],
)
def test_model_source(kit, uri, model_arg, claim, load_format):
    _, sts = _engine(kit, {"model": {"uri": uri}})
    c = kit.container(sts)
    volume = kit.volume(sts, "models")
    mount = kit.mount(c, "models")

    assert c["args"][0] == model_arg
    assert kit.flag(c["args"], "--load-format") == load_format
    if claim:
        assert volume == {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        assert mount == {"name": "models", "mountPath": "/mnt/models", "readOnly": True}
    else:
        assert volume is None and mount is None


@pytest.mark.parametrize(
    "engine, resource_name, gpus, absent",
    [
        pytest.param({}, "nvidia.com/gpu", "1", None, id="default-tp1"),
        pytest.param({"tensorParallelSize": 4}, "nvidia.com/gpu", "4", None, id="tp4"),
        pytest.param({"tensorParallelSize": 2, "gpu": {"count": 4}}, "nvidia.com/gpu", "4", None,
                     id="count-over-tp"),
        pytest.param({"tensorParallelSize": 2, "gpu": {"resourceName": "amd.com/gpu"}}, "amd.com/gpu", "2",
                     "nvidia.com/gpu", id="custom-resource-name"),
    ],
)
def test_gpu_resources(kit, engine, resource_name, gpus, absent):
    fleet, sts = _engine(kit, {"engine": engine})
    res = kit.container(sts)["resources"]

    assert res["limits"][resource_name] == gpus
    assert res["requests"][resource_name] == gpus
    assert str(fleet.gpus_per_replica) == gpus
    assert absent is None or (absent not in res["limits"] and absent not in res["requests"])
    assert sts["spec"]["template"]["spec"]["tolerations"] == [
        {"key": resource_name, "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize(
    "engine, size",
    [pytest.param({}, "8Gi", id="default"), pytest.param({"shmSize": "16Gi"}, "16Gi", id="16Gi")],
)
def test_dev_shm_is_memory_backed(kit, engine, size):
    _, sts = _engine(kit, {"engine": engine})

    assert kit.volume(sts, "dshm") == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}
    assert kit.mount(kit.container(sts), "dshm") == {"name": "dshm", "mountPath": "/dev/shm"}


@pytest.mark.parametrize(
    "timeout_s, failure_threshold",
    [
        pytest.param(60, 6, id="minimum"),
        pytest.param(1800, 180, id="default"),
        pytest.param(86400, 8640, id="maximum"),
        # Former bug (floor division): 65 s got 6 probes, 60 s of budget; the threshold is now rounded up.
        pytest.param(65, 7, id="not-multiple-of-period"),
        pytest.param(61, 7, id="one-past-a-period"),
        pytest.param(1805, 181, id="default-plus-5"),
        pytest.param(1809, 181, id="default-plus-9"),
    ],
)
def test_startup_probe_covers_startup_timeout(kit, timeout_s, failure_threshold):
    _, sts = _engine(kit, {"engine": {"startupTimeoutSeconds": timeout_s}})
    probe = kit.container(sts)["startupProbe"]
    budget_s = probe["failureThreshold"] * probe["periodSeconds"]

    assert probe == {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": STARTUP_PERIOD_S,
                     "failureThreshold": failure_threshold, "timeoutSeconds": 5}
    assert STARTUP_PERIOD_S == 10
    assert timeout_s <= budget_s < timeout_s + probe["periodSeconds"]


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_readiness_and_liveness_probe_health(kit, probe):
    _, sts = _engine(kit)
    c = kit.container(sts)

    assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"} in c["ports"]


def test_engine_pods_are_scraped_by_prometheus(kit):
    _, sts = _engine(kit)

    assert sts["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(ENGINE_PORT), "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize("replicas", [pytest.param(0, id="zero"), pytest.param(1, id="one"),
                                      pytest.param(7, id="seven")])
def test_statefulset_replicas_follow_spec(kit, replicas):
    _, sts = _engine(kit, {"replicas": replicas})

    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["podManagementPolicy"] == "Parallel"




@pytest.mark.parametrize(
    "model, hf_token, env_from",
    [
        pytest.param({"uri": "hf://acme/gated", "tokenSecretRef": {"name": "hf", "key": "token"}},
                     {"name": "hf", "key": "token"}, None, id="hf-with-token"),
        pytest.param({"uri": "hf://acme/open"}, None, None, id="hf-without-token"),
        pytest.param({"uri": "s3://bucket/m", "tokenSecretRef": {"name": "s3", "key": "creds"}},
                     None, [{"secretRef": {"name": "s3"}}], id="s3-with-token-whole-secret"),
        pytest.param({"uri": "gs://bucket/m", "tokenSecretRef": {"name": "gcs", "key": "sa.json"}},
                     None, [{"secretRef": {"name": "gcs"}}], id="gs-with-token-whole-secret"),
        pytest.param({"uri": "s3://bucket/m"}, None, None, id="s3-without-token"),
        pytest.param({"uri": "pvc://weights/m"}, None, None, id="pvc-without-token"),
        pytest.param({"uri": "pvc://weights/m", "tokenSecretRef": {"name": "unused", "key": "k"}}, None, None,
                     id="pvc-with-token-ignored"),
    ],
)
def test_model_credentials(kit, model, hf_token, env_from):
    _, sts = _engine(kit, {"model": model})
    c = kit.container(sts)

    assert kit.env(c, "HF_TOKEN") == (
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": hf_token}} if hf_token else None)
    assert c.get("envFrom") == env_from
    assert kit.env(c, "MODEL_STORE_TOKEN") is None
    assert kit.env(c, "HF_HOME") == {"name": "HF_HOME", "value": "/cache/huggingface"}
    assert [e["name"] for e in c["env"] if e["name"].startswith("HF_")] == [
        "HF_HOME", *(["HF_TOKEN"] if hf_token else [])]


def test_headless_service_selects_the_statefulset_pods(kit):
    fleet, children = _children(kit)
    sts = kit.one(children, "StatefulSet")
    svc = kit.one(children, "Service", engine_name(fleet.name))
    template_labels = sts["spec"]["template"]["metadata"]["labels"]

    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= template_labels.items()
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["ports"] == [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}]


def test_pdb_covers_the_engine_pods(kit):
    fleet, children = _children(kit)
    sts = kit.one(children, "StatefulSet")
    pdb = kit.one(children, "PodDisruptionBudget")

    assert pdb["metadata"]["name"] == engine_name(fleet.name)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]}}


@pytest.mark.parametrize(
    "router, policy, replicas",
    [
        pytest.param({}, "prefix-aware", 1, id="default"),
        pytest.param({"policy": "session", "replicas": 2}, "session", 2, id="session"),
        pytest.param({"policy": "least-load"}, "least-load", 1, id="least-load"),
        pytest.param({"policy": "round-robin", "loadBoundFactor": 2.0, "prefixTokens": 64}, "round-robin", 1,
                     id="round-robin"),
    ],
)
def test_router(kit, router, policy, replicas):
    fleet, children = _children(kit, {"router": router})
    name = router_name(fleet.name)
    dep = kit.one(children, "Deployment", name)
    svc = kit.one(children, "Service", name)
    c = kit.container(dep)

    assert c["command"] == ["agentfleet", "router"]
    assert c["image"] == kit.defaults.agentfleet_image
    assert kit.flag(c["args"], "--policy") == policy
    assert kit.flag(c["args"], "--fleet") == fleet.name
    assert kit.flag(c["args"], "--namespace") == fleet.namespace
    assert kit.flag(c["args"], "--service") == engine_name(fleet.name)
    assert kit.flag(c["args"], "--port") == str(ROUTER_PORT)
    assert kit.flag(c["args"], "--load-bound-factor") == str(fleet.spec.router.load_bound_factor)
    assert kit.flag(c["args"], "--prefix-tokens") == str(fleet.spec.router.prefix_tokens)
    assert dep["spec"]["replicas"] == replicas
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"].get("clusterIP") is None
    assert svc["spec"]["ports"] == [{"name": "http", "port": ROUTER_PORT, "targetPort": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(("router", "placement"), [
    pytest.param({}, "local", id="one-router-local"),
    pytest.param({"replicas": 3}, "shared", id="replicas-agree-by-default"),
    pytest.param({"replicas": 3, "placement": "local"}, "local", id="local-asked-for"),
    pytest.param({"placement": "shared"}, "shared", id="shared-asked-for"),
])
def test_router_placement(kit, router, placement):
    """More than one router replica places by what every replica sees alike (`--placement shared`), so a session
    is not split between engines by whichever router the Service picked."""
    fleet, children = _children(kit, {"router": router})
    args = kit.container(kit.one(children, "Deployment", router_name(fleet.name)))["args"]
    assert kit.flag(args, "--placement") == placement


@pytest.mark.parametrize(("spec", "flag"), [
    pytest.param({}, None, id="off-by-default"),
    pytest.param({"engine": {"maxNumSeqs": 64}, "router": {"fairQueue": True}}, "64", id="one-router-all-slots"),
    pytest.param({"engine": {"maxNumSeqs": 64}, "router": {"fairQueue": True, "replicas": 3}}, "21",
                 id="slots-shared-by-router-replicas"),
])
def test_router_fair_queue(kit, spec, flag):
    fleet, children = _children(kit, spec)
    args = kit.container(kit.one(children, "Deployment", router_name(fleet.name)))["args"]
    assert kit.flag(args, "--fair-queue") == flag
    assert kit.flag(args, "--fair-queue-order") is None  # least-served, the router's default


def test_router_fair_queue_order_most_served_reaches_the_router(kit):
    fleet, children = _children(kit, {"engine": {"maxNumSeqs": 8},
                                      "router": {"fairQueue": True, "fairQueueOrder": "most-served"}})
    args = kit.container(kit.one(children, "Deployment", router_name(fleet.name)))["args"]
    assert kit.flag(args, "--fair-queue-order") == "most-served"
    from agentfleet.cli import build_parser

    assert build_parser().parse_args(["router", *args]).fair_queue_order == "most-served"


def test_router_fair_queue_needs_the_engines_slot_count():
    from agentfleet.api import parse

    doc = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": "llm"},
           "spec": {"model": {"uri": "hf://acme/chat-7b"}, "router": {"fairQueue": True}}}
    with pytest.raises(SpecError) as err:
        parse(doc)
    assert any(p.path == "spec.router.fairQueue" and "maxNumSeqs" in p.message for p in err.value.problems)


def test_router_has_a_writable_tmp_on_a_read_only_root(kit):
    fleet, children = _children(kit)
    dep = kit.one(children, "Deployment", router_name(fleet.name))
    c = kit.container(dep)

    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert kit.volume(dep, "tmp") == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    assert kit.mount(c, "tmp") == {"name": "tmp", "mountPath": "/tmp"}
    assert dep["spec"]["template"]["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_router_rbac_reads_only_endpointslices(kit):
    fleet, children = _children(kit)
    name = router_name(fleet.name)
    sa = kit.one(children, "ServiceAccount", name)
    role = kit.one(children, "Role", name)
    binding = kit.one(children, "RoleBinding", name)

    assert sa["metadata"]["name"] == name
    assert role["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": fleet.namespace}]


def test_engine_and_router_selectors_do_not_overlap(kit):
    _, children = _children(kit)
    engine_pods = kit.one(children, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    router_svc = kit.one(children, "Service", router_name("llm"))
    engine_svc = kit.one(children, "Service", engine_name("llm"))
    router_pods = kit.one(children, "Deployment")["spec"]["template"]["metadata"]["labels"]

    assert not router_svc["spec"]["selector"].items() <= engine_pods.items()
    assert not engine_svc["spec"]["selector"].items() <= router_pods.items()


# --- what every child carries ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, uid, has_owner",
    [
        pytest.param("llm", "6f1c2a9e-0d3b-4c1e-9a7f-2b8d5e4c3a10", True, id="with-uid"),
        pytest.param("llm", None, False, id="offline-no-uid"),
        pytest.param("n" * 38 + "-z", "u-1", True, id="longest-name"),
    ],
)
def test_every_child_is_owned_labelled_and_named(kit, name, uid, has_owner):
    fleet = kit.fleet(name, uid=uid, labels=kit.owner_labels)
    children = render.modelfleet(fleet, kit.defaults)

    assert kit.child_problems(children, fleet) == []
    assert all(("ownerReferences" in c["metadata"]) is has_owner for c in children)
    assert {(c["apiVersion"], c["kind"]) for c in children} <= set(render.CHILD_KINDS["ModelFleet"])
    assert len({(c["kind"], c["metadata"]["name"]) for c in children}) == len(children)


def test_render_dispatches_modelfleet(kit):
    fleet = kit.fleet()

    assert render.render(fleet, related={}, defaults=kit.defaults) == render.modelfleet(fleet, kit.defaults)


def test_pod_templates_do_not_follow_the_owner_labels(kit):
    """Relabelling a ModelFleet must not restart its vLLM pods (minutes of model loading each)."""
    plain = render.modelfleet(kit.fleet(), kit.defaults)
    labelled = render.modelfleet(kit.fleet(labels=kit.owner_labels), kit.defaults)
    templates = [(c["kind"], c["spec"]["template"]) for c in plain if "template" in c.get("spec", {})]

    assert [k for k, _ in templates] == ["StatefulSet", "Deployment"]
    assert templates == [(c["kind"], c["spec"]["template"]) for c in labelled if "template" in c.get("spec", {})]
    assert all(kit.owner_labels.items() <= c["metadata"]["labels"].items() for c in labelled)


# Everything in a StatefulSet's spec but these is immutable: a change there makes every apply fail (422).
_STS_MUTABLE = {"replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds"}


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"replicas": 5}, id="replicas"),
        pytest.param({"model": {"uri": "pvc://weights/other"}}, id="model-uri"),
        pytest.param({"engine": {"tensorParallelSize": 4, "shmSize": "32Gi", "image": "registry.test/vllm:next"}},
                     id="engine"),
        pytest.param({"engine": {"nodeSelector": {"gpu": "h100"}, "startupTimeoutSeconds": 65}}, id="scheduling"),
        pytest.param({"router": {"policy": "session", "replicas": 3}}, id="router"),
    ],
)
def test_spec_changes_leave_immutable_statefulset_fields_alone(kit, spec):
    before = kit.one(render.modelfleet(kit.fleet(), kit.defaults), "StatefulSet")
    after = kit.one(render.modelfleet(kit.fleet(spec=spec, labels=kit.owner_labels), kit.defaults), "StatefulSet")

    assert {k: v for k, v in before["spec"].items() if k not in _STS_MUTABLE} == {
        k: v for k, v in after["spec"].items() if k not in _STS_MUTABLE}


def test_children_share_no_mutable_objects(kit):
    """Former bug: _router() gave one `meta` dict to five children (YAML anchors in `agentfleet render`)."""
    _, children = _children(kit, labels=kit.owner_labels)

    assert kit.aliased(children) == []


@pytest.mark.parametrize(
    "name, accepted",
    [
        pytest.param("llm", True, id="letters"),
        pytest.param("l", True, id="one-letter"),
        pytest.param("llm-7b", True, id="dash-digit"),
        pytest.param("n" * 38 + "-z", True, id="forty-longest"),
        # Former bug: a leading digit parsed (DNS-1123) and the API server rejected `1llm-engine` at apply time.
        pytest.param("1llm", False, id="leading-digit"),
        pytest.param("7", False, id="all-digits"),
        pytest.param("n" * 41, False, id="forty-one"),
        pytest.param("llm-", False, id="trailing-dash"),
        pytest.param("Llm", False, id="upper-case"),
        pytest.param("llm.v2", False, id="dot"),
    ],
)
def test_fleet_names_are_rfc1035_labels_that_fit(kit, name, accepted):
    if not accepted:
        with pytest.raises(SpecError) as err:
            kit.fleet(name)
        assert [p.path for p in err.value.problems] == ["metadata.name"]
        return
    fleet = kit.fleet(name)
    children = render.modelfleet(fleet, kit.defaults)

    assert [c["metadata"]["name"] for c in children if not kit.dns1035.match(c["metadata"]["name"])] == []
    assert kit.child_problems(children, fleet) == []


# --- vLLM's own traces ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("telemetry, args, env", [
    (None, [], {}),
    ({"otlpTracesEndpoint": "grpc://otel.obs:4317"}, ["--otlp-traces-endpoint", "grpc://otel.obs:4317"],
     {"OTEL_SERVICE_NAME": "llm-engine", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}),
    ({"otlpTracesEndpoint": "https://otel.example:4318", "serviceName": "gpu-pool", "collectDetailedTraces": "model"},
     ["--otlp-traces-endpoint", "https://otel.example:4318", "--collect-detailed-traces", "model"],
     {"OTEL_SERVICE_NAME": "gpu-pool"}),
])
def test_engine_telemetry(kit, telemetry, args, env):
    """engine.telemetry: vLLM exports a span per request, parented by the traceparent the runtime sends."""
    spec = {"engine": {"telemetry": telemetry}} if telemetry else {}
    fleet, sts = _engine(kit, spec)
    c = kit.container(sts)
    flags = [a for a in c["args"] if a in ("--otlp-traces-endpoint", "--collect-detailed-traces")]
    got = [x for i, a in enumerate(c["args"]) if a in flags for x in (a, c["args"][i + 1])]
    assert got == args
    otel = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("OTEL_")}
    assert otel == env


@pytest.mark.parametrize("telemetry, endpoint, service, ratio", [
    pytest.param(None, None, None, None, id="off"),
    pytest.param({"otlpEndpoint": "http://otel.obs:4318"}, "http://otel.obs:4318", "llm-router", "1.0",
                 id="defaults"),
    pytest.param({"otlpEndpoint": "https://otel.example:4318", "serviceName": "edge", "sampleRatio": 0.25},
                 "https://otel.example:4318", "edge", "0.25", id="named-and-sampled"),
])
def test_router_telemetry(kit, telemetry, endpoint, service, ratio):
    """router.telemetry (the shape of an AgentApp's spec.telemetry): the router traces each proxied request, and
    the flags it is given are ones `agentfleet router` takes."""
    from agentfleet.cli import build_parser

    fleet, children = _children(kit, {"router": {"telemetry": telemetry}} if telemetry else {})
    args = kit.container(kit.one(children, "Deployment", router_name(fleet.name)))["args"]
    got = (kit.flag(args, "--otlp-endpoint"), kit.flag(args, "--service-name"), kit.flag(args, "--trace-sample-ratio"))
    assert got == (endpoint, service, ratio)
    parsed = build_parser().parse_args(["router", *args])
    assert (parsed.otlp_endpoint, parsed.service_name) == (endpoint, service)
    assert parsed.trace_sample_ratio == (float(ratio) if ratio else 1.0)


@pytest.mark.parametrize("endpoint", ["grpc://otel.obs:4317", "otel.obs:4318"])
def test_router_telemetry_takes_an_otlp_http_endpoint(kit, endpoint):
    with pytest.raises(SpecError, match="otlpEndpoint"):
        kit.fleet(spec={"router": {"telemetry": {"otlpEndpoint": endpoint}}})


@pytest.mark.parametrize("extra", [["--otlp-traces-endpoint", "grpc://x:4317"], ["--collect-detailed-traces=all"]])
def test_trace_flags_have_a_field_of_their_own(kit, extra):
    with pytest.raises(SpecError, match="extraArgs"):
        kit.fleet(spec={"engine": {"extraArgs": extra}})
