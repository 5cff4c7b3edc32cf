"""The real-pod tier's own images (e2e/node/images.py): the engine stand-in takes exactly the command and args the
renderer gives a vLLM container, and the archives are docker-archives whose digests hold."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from agentfleet import render
from agentfleet.api import parse
from agentfleet.bench import simulator
from e2e.node import images

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agentapp.yaml"


def _engine_container(name: str) -> dict:
    doc = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "ModelFleet"
               and d["metadata"]["name"] == name)
    doc["metadata"]["namespace"] = "demo"
    sts = next(c for c in render.render(parse(doc), related={}, defaults=render.Defaults())
               if c["kind"] == "StatefulSet")
    return sts["spec"]["template"]["spec"]["containers"][0]


def _run_adapter(tmp_path: Path, argv: list[str]) -> subprocess.Popen:
    try:
        sim = simulator.binary()
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"llm-d-inference-sim unavailable: {err}")
    script = tmp_path / "vllm"
    script.write_text(images.VLLM_ADAPTER.replace("exec /llm-d-inference-sim ", f"exec {sim} "))
    script.chmod(0o755)
    assert argv[0] == "vllm"
    return subprocess.Popen([str(script), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.parametrize("fleet", ["small", "large"])
def test_the_engine_stand_in_serves_the_rendered_vllm_command(tmp_path: Path, fleet: str) -> None:
    c = _engine_container(fleet)
    argv = [*c["command"], *c["args"]]
    port = simulator.free_port()
    argv[argv.index("--port") + 1] = str(port)
    served = argv[argv.index("--served-model-name") + 1]
    proc = _run_adapter(tmp_path, argv)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"the stand-in did not serve {argv}: {proc.communicate()[0][-2000:]}")
                time.sleep(0.2)
        assert [m["id"] for m in body["data"]] == [served]
    finally:
        proc.kill()
        proc.wait()


def test_a_flag_neither_knows_still_ends_the_engine(tmp_path: Path) -> None:
    c = _engine_container("small")
    argv = [*c["command"], *c["args"], "--no-such-flag", "1"]
    argv[argv.index("--port") + 1] = str(simulator.free_port())
    proc = _run_adapter(tmp_path, argv)
    out, _ = proc.communicate(timeout=20)
    # llm-d-inference-sim exits (with 0, unlike vLLM's 2) before serving: the pod never turns Ready and restarts
    assert "unknown flag: --no-such-flag" in out, out


def test_only_vllm_serve_is_taken(tmp_path: Path) -> None:
    proc = _run_adapter(tmp_path, ["vllm", "bench", "x"])
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 2 and "only 'vllm serve" in out, out


def test_archives_are_docker_archives_with_true_digests(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(images, "CACHE", tmp_path / "cache")
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    out = images.single_binary("localhost/tool:1", binary, "/tool")
    assert out.with_suffix(".tar.ref").read_text().strip() == "localhost/tool:1"
    with tarfile.open(out) as t:
        (manifest,) = json.loads(t.extractfile("manifest.json").read())
        assert manifest["RepoTags"] == ["localhost/tool:1"]
        cfg_bytes = t.extractfile(manifest["Config"]).read()
        assert manifest["Config"] == hashlib.sha256(cfg_bytes).hexdigest() + ".json"
        layer = t.extractfile(manifest["Layers"][0]).read()
    cfg = json.loads(cfg_bytes)
    assert cfg["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert cfg["config"]["Entrypoint"] == ["/tool"] and cfg["config"]["User"] == "65532:65532"
    import io

    with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
        member = lt.getmember("tool")
        assert member.mode == 0o755 and lt.extractfile(member).read() == binary.read_bytes()
    # the same input is the same archive: a second call builds nothing
    mtime = out.stat().st_mtime_ns
    assert images.single_binary("localhost/tool:1", binary, "/tool") == out and out.stat().st_mtime_ns == mtime
