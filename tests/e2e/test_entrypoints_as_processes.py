"""The image's entry points, run as the rendered pods would run them: `agentfleet router`, `agentfleet ingest` and
`agentfleet serve`, each with the exact command, args, env and mounts of the container the operator's own renderer
produces for examples/agentapp.yaml, and one chat completion through runtime -> router -> engine.

Why processes and not pods: kwok fakes the pods of this tier (nothing runs in them). A real kubelet does run pods on
these machines (issue 13's closing note), but only with `failCgroupV1: false`, containerd's
`restrict_oom_score_adj` and locally imported images; until that node is part of the tier, this test checks what a
kubelet would otherwise be the first to notice: a flag the entry point does not take, a config path that is not
where the volume is mounted, an env var or key that does not resolve, a Role that does not grant what the process
calls (routers and runtime run under tokens of their rendered ServiceAccounts).

Stand-ins, each explicit (see pod_process.py): the engines are llm-d-inference-sim processes (vLLM needs a GPU; the
simulator is a third-party OpenAI-compatible stand-in), published to the routers as EndpointSlices of the rendered
engine Services, which is what the EndpointSlice controller does for a ready engine pod; the Milvus the index renders
(a third-party image) is milvus-lite, the same pymilvus client API on a local file, as `agentfleet up` does; Service
DNS names map to the host ports of the processes standing in for them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from agentfleet import render
from agentfleet.api import parse
from agentfleet.bench import simulator
from e2e_kit import EXAMPLE, MANIFESTS, OPERATOR_NS, Kubectl, post_json, server_and_ca, wait_for
from pod_process import PodProcess, PodSpecError, find, pod_template

pytestmark = pytest.mark.e2e

VENV_BIN = Path(sys.executable).parent
KEY = "demo-key-alice"


def rendered_example(namespace: str) -> tuple[list[dict], list[dict]]:
    """(the example's plain objects, every child the operator renders for its resources) in `namespace`."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    ours = [parse(d) for d in docs if str(d["apiVersion"]).startswith("agentfleet.io/")]
    related = {(o.kind, o.name): o for o in ours}
    children = [c for o in ours for c in render.render(o, related=related, defaults=render.Defaults())]
    for c in children:
        c["metadata"].setdefault("namespace", namespace)
    return [d for d in docs if not str(d["apiVersion"]).startswith("agentfleet.io/")], children


def _strip_owner(obj: dict) -> dict:
    # The owners (the CRs) are not applied here: owner references to them would be garbage-collected.
    obj = json.loads(json.dumps(obj))
    obj["metadata"].pop("ownerReferences", None)
    return obj


def _host_address() -> str:
    """This machine's own non-loopback IPv4 address: EndpointSlices refuse 127.0.0.0/8 ("may not be in the
    loopback range"), so the simulators (which listen on every interface) are published at this address;
    the traffic never leaves the machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
        addr = s.getsockname()[0]
    if addr.startswith("127."):
        pytest.skip("no non-loopback IPv4 address to publish the engine stand-ins at")
    return addr


def _engine_slice(service: dict, url: str) -> dict:
    port = url.rsplit(":", 1)[1]
    host = _host_address()
    name = service["metadata"]["name"]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-sim",
                         "labels": {"kubernetes.io/service-name": name,
                                    # not the EndpointSlice controller's: it leaves this slice alone
                                    "endpointslice.kubernetes.io/managed-by": "e2e.agentfleet.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True, "serving": True, "terminating": False},
                           "targetRef": {"kind": "Pod", "name": f"{name}-0"}}],
            "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}]}


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    return post_json(url, body, key=KEY, timeout=timeout)


def _sim_requests(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.fixture(scope="module", autouse=True)
def mount_namespaces() -> None:
    """The processes get their mounts in a private mount namespace: root and util-linux's unshare."""
    try:
        ok = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                            capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("needs `unshare --mount` (root) to mount the rendered volumes at their mountPaths")


@pytest.fixture(scope="module")
def sim_bin() -> Path:
    try:
        return simulator.binary()
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"llm-d-inference-sim unavailable: {err}")


def test_router_ingest_and_runtime_run_as_rendered(installed, ns: Kubectl, tmp_path: Path, sim_bin: Path) -> None:
    namespace = ns.ns
    plain, children = rendered_example(namespace)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in [*plain, *children]}
    root_ca = ns.json("get", "configmap", "kube-root-ca.crt")  # what the projected volume reads
    objects[("ConfigMap", "kube-root-ca.crt")] = root_ca
    server, _ = server_and_ca(ns.cluster.kubeconfig)
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    kubelet_env = {"KUBERNETES_SERVICE_HOST": api_host, "KUBERNETES_SERVICE_PORT": api_port}

    # What the routers and the runtime call in the API server: their rendered ServiceAccounts, Roles and
    # RoleBindings, the engine Services, and the Budget the runtime writes status to.
    rbac_kinds = ("ServiceAccount", "Role", "RoleBinding", "Service")
    ns.apply(*[_strip_owner(c) for c in children if c["kind"] in rbac_kinds])
    ns.apply(*[d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "Budget"])

    routers = [c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"].endswith("-router")]
    runtime_dep = find(children, "Deployment", "assistant")
    ingest_job = next(c for c in children if c["kind"] == "Job" and "-ingest-" in c["metadata"]["name"])
    assert len(routers) == 2, [r["metadata"]["name"] for r in routers]

    procs: list[PodProcess] = []
    sims = []
    try:
        # ---- engines: one simulator per fleet, serving the fleet's --served-model-name ----------------------
        services: dict[str, str] = {}
        sim_urls = []
        for fleet in ("small", "large"):
            engine = find(children, "StatefulSet", f"{fleet}-engine")
            eargs = pod_template(engine)["containers"][0]["args"]
            model = eargs[eargs.index("--served-model-name") + 1]
            sim = simulator.start(1, simulator.SimSettings(model=model), log_dir=tmp_path)
            sims.append(sim)
            sim_urls.append(sim.urls[0])
            svc = find(children, "Service", f"{fleet}-engine")
            ns.apply(_engine_slice(svc, sim.urls[0]))

        # ---- routers: exact container, under their ServiceAccount's token --------------------------------------
        for dep in routers:
            name = dep["metadata"]["name"]
            pod = pod_template(dep)
            (c,) = pod["containers"]
            sa = pod["serviceAccountName"]
            token = ns("create", "token", sa, "--duration=1h").stdout.strip()
            port = simulator.free_port()
            # The token is automounted (the rendered pod does not opt out) and the API server is where the
            # kubelet's KUBERNETES_SERVICE_* variables say: load_incluster_config, as in a pod.
            p = PodProcess(c, pod, objects, tmp_path / name, namespace=namespace, ports={8000: port},
                           tokens={sa: token}, extra_env=kubelet_env)
            procs.append(p)
            p.start(tmp_path / f"{name}.log", VENV_BIN)
            p.wait_http(f"http://127.0.0.1:{port}/readyz", tmp_path / f"{name}.log", timeout_s=30)
            svc = find(children, "Service", name)
            svc_port = svc["spec"]["ports"][0]["port"]
            services[f"{name}.{namespace}.svc:{svc_port}"] = f"http://127.0.0.1:{port}"

        # ---- ingest: the VectorIndex Job's container, into milvus-lite standing in for the Milvus Service -------
        index_dir = tmp_path / "milvus-lite"
        index_dir.mkdir()
        milvus = find(children, "Service", "docs-milvus")
        grpc = next(p["port"] for p in milvus["spec"]["ports"] if p["name"] == "grpc")
        services[f"docs-milvus.{namespace}.svc:{grpc}"] = str(index_dir / "docs.db")
        ipod = pod_template(ingest_job)
        isa = ipod.get("serviceAccountName", "default")
        ingest = PodProcess(ipod["containers"][0], ipod, objects, tmp_path / "ingest", namespace=namespace,
                            services=services, extra_binds=(index_dir,), extra_env=kubelet_env,
                            tokens={isa: ns("create", "token", isa, "--duration=1h").stdout.strip()})
        procs.append(ingest)
        ingest.start(tmp_path / "ingest.log", VENV_BIN)
        assert ingest.proc is not None
        rc = ingest.proc.wait(180)
        assert rc == 0, (tmp_path / "ingest.log").read_text()[-3000:]

        # ---- runtime: the AgentApp Deployment's container --------------------------------------------------------
        rpod = pod_template(runtime_dep)
        (rc_container,) = rpod["containers"]
        rt_token = ns("create", "token", rpod["serviceAccountName"], "--duration=1h").stdout.strip()
        http_port, metrics_port = simulator.free_port(), simulator.free_port()
        runtime = PodProcess(
            rc_container, rpod, objects, tmp_path / "runtime", namespace=namespace,
            ports={8080: http_port, 9090: metrics_port}, services=services,
            field_values={"metadata.name": "assistant-6d5f7c9b8-x2x4q"},
            tokens={rpod["serviceAccountName"]: rt_token},
            extra_env=kubelet_env,
            extra_binds=(index_dir,))
        procs.append(runtime)
        m = runtime.start(tmp_path / "runtime.log", VENV_BIN)
        rendered = [*rc_container["command"], *rc_container["args"]]
        rendered[rendered.index("--port") + 1] = str(http_port)
        assert m.argv == rendered, "only the port may differ from the rendered command and args"
        runtime.wait_http(f"http://127.0.0.1:{http_port}/readyz", tmp_path / "runtime.log", timeout_s=60)

        # ---- one chat completion: runtime -> router -> simulator -------------------------------------------------
        before = sum(_sim_requests(u) for u in sim_urls)
        status, body = _post(f"http://127.0.0.1:{http_port}/v1/chat/completions",
                             {"model": "assistant", "stream": False,
                              "messages": [{"role": "user", "content": "How many vacation days do I get?"}]},
                             timeout=120)
        assert status == 200, (body, (tmp_path / "runtime.log").read_text()[-3000:])
        assert body["choices"][0]["message"]["content"], body
        assert sum(_sim_requests(u) for u in sim_urls) > before, "no request reached an engine"
        # The runtime's projected token, CA and Role at work: it patches its Budget's status (every 10 s).
        wait_for("the runtime to publish demo-budget's status",
                 lambda: (ns.get("budget", "demo-budget") or {}).get("status", {}).get("windowStart"), timeout=30)
    finally:
        for p in reversed(procs):
            p.stop()
        for s in sims:
            s.stop()


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c["args"].__setitem__(1, "/etc/agentfleet/conf/runtime.yaml"), "not under any volumeMount"),
    (lambda c: c["volumeMounts"].__setitem__(0, {**c["volumeMounts"][0], "name": "nope"}), "volume nope"),
    (lambda c: c["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}),
     "Secret gone key k"),
], ids=["config-path-outside-mounts", "mount-of-missing-volume", "env-from-missing-secret"])
def test_a_wrong_rendered_container_is_refused(tmp_path: Path, mutate, error) -> None:
    """The harness itself: a rendered container that a kubelet would not start (or that would not find its
    config) fails before anything runs. A flag the entry point does not take fails in the test above, as the
    process exits before /readyz answers."""
    _, children = rendered_example("demo")
    objects = {(o["kind"], o["metadata"]["name"]): o for o in children}
    pod = pod_template(find(children, "Deployment", "assistant"))
    container = json.loads(json.dumps(pod["containers"][0]))
    mutate(container)
    p = PodProcess(container, pod, objects, tmp_path, namespace="demo", ports={8080: 1, 9090: 2},
                   field_values={"metadata.name": "x"}, tokens={"assistant": "t"},
                   services={"small-router.demo.svc:8000": "http://127.0.0.1:1",
                             "large-router.demo.svc:8000": "http://127.0.0.1:2",
                             "docs-milvus.demo.svc:19530": "/nowhere.db"})
    objects[("ConfigMap", "kube-root-ca.crt")] = {"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
                                                  "data": {"ca.crt": "x"}}
    objects[("Secret", "agentfleet-demo-keys")] = {"kind": "Secret", "metadata": {"name": "agentfleet-demo-keys"},
                                                   "stringData": {"keys.yaml": "{}"}}
    with pytest.raises(PodSpecError, match=error):
        p.materialise()


def test_a_flag_the_entry_point_does_not_take_fails_before_ready(tmp_path: Path) -> None:
    """A rendered arg the entry point rejects ends the process (argparse: exit 2) before its probe answers."""
    _, children = rendered_example("demo")
    objects = {(o["kind"], o["metadata"]["name"]): o for o in children}
    pod = pod_template(find(children, "Deployment", "small-router"))
    container = json.loads(json.dumps(pod["containers"][0]))
    container["args"] += ["--no-such-flag", "1"]
    port = simulator.free_port()
    p = PodProcess(container, pod, objects, tmp_path, namespace="demo", ports={8000: port},
                   tokens={pod["serviceAccountName"]: "t"})
    objects[("ConfigMap", "kube-root-ca.crt")] = {"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
                                                  "data": {"ca.crt": "x"}}
    p.start(tmp_path / "router.log", VENV_BIN)
    try:
        with pytest.raises(AssertionError, match="exited with 2"):
            p.wait_http(f"http://127.0.0.1:{port}/readyz", tmp_path / "router.log", timeout_s=30)
        assert "unrecognized arguments: --no-such-flag" in (tmp_path / "router.log").read_text()
    finally:
        p.stop()


@pytest.mark.e2e_last  # a second operator on all namespaces: only after the other tests have finished
def test_operator_runs_as_its_deployment_runs_it(installed, ns: Kubectl, tmp_path: Path) -> None:
    """`agentfleet operator` with manifests/deployment.yaml's exact command and env, in-cluster config from the
    automounted token of its ServiceAccount (manifests/rbac.yaml): it comes up live, reconciles a Budget and logs
    no denied call. (The other e2e tests run the operator through e2e_kit.OperatorProcess: same flags, a
    kubeconfig instead.)"""
    dep = next(d for d in yaml.safe_load_all((MANIFESTS / "deployment.yaml").read_text())
               if d and d["kind"] == "Deployment")
    pod = pod_template(dep)
    (c,) = pod["containers"]
    k = installed.in_ns(OPERATOR_NS)
    sa = pod.get("serviceAccountName", "default")
    objects = {("ConfigMap", "kube-root-ca.crt"): k.json("get", "configmap", "kube-root-ca.crt")}
    server, _ = server_and_ca(k.cluster.kubeconfig)
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    port = simulator.free_port()
    p = PodProcess(c, pod, objects, tmp_path / "operator", namespace=OPERATOR_NS, ports={8080: port},
                   tokens={sa: k("create", "token", sa, "--duration=1h").stdout.strip()},
                   extra_env={"KUBERNETES_SERVICE_HOST": api_host, "KUBERNETES_SERVICE_PORT": api_port})
    log = tmp_path / "operator.log"
    m = p.start(log, VENV_BIN)
    try:
        assert f"--liveness=http://0.0.0.0:{port}/healthz" in m.argv, m.argv
        p.wait_http(f"http://127.0.0.1:{port}/healthz", log, timeout_s=60)
        budget = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "Budget")
        ns.apply(budget)
        name = budget["metadata"]["name"]
        # This operator's own log (not the session operator's): it listed, watched and handled the Budget.
        wait_for(f"the operator to handle Budget {ns.ns}/{name}",
                 lambda: any(ns.ns in line and name in line and "succeeded" in line
                             for line in log.read_text().splitlines()), timeout=90)
    finally:
        rc = p.stop(timeout=30)
    text = log.read_text()
    assert "403" not in text and "Forbidden" not in text, text[-3000:]
    assert rc == 0, (rc, text[-3000:])
