"""Small images for the real node, written as docker-archive tarballs that `ctr images import` takes: one static
binary each (CoreDNS, llm-d-inference-sim) and the sandbox ("pause") image from Debian's busybox-static. No Docker
and no registry: nothing can be pulled here. Archives are cached under $AGENTFLEET_CACHE/images/, keyed by the
binary's content; ``<archive>.ref`` names the image, so an import that is already done is skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet")) / "images"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


def _dir(t: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, mode
    t.addfile(ti)


def _archive(ref: str, layer: bytes, config: dict, out: Path) -> Path:
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as t:
        for name, data in (("layer.tar", layer), (cfg_name, cfg),
                           ("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [ref],
                                                          "Layers": ["layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    tmp.rename(out)
    # containerd lists a docker.io-less ref as given (localhost/...): that is what the pod spec names
    out.with_suffix(out.suffix + ".ref").write_text(ref + "\n")
    return out


def _key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def single_binary(ref: str, binary: Path, path: str, *, user: str = "65532:65532") -> Path:
    """An image holding one static binary at ``path`` as its entrypoint, run as a non-root UID."""
    data = binary.read_bytes()
    out = CACHE / f"{ref.replace('/', '_').replace(':', '_')}-{_key(data, path.encode(), user.encode())}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in ("tmp", "etc"):
            _dir(t, d, 0o1777 if d == "tmp" else 0o755)
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.size, ti.mode = len(data), 0o755
        t.addfile(ti, io.BytesIO(data))
    return _archive(ref, buf.getvalue(), {"Entrypoint": [path], "User": user, "Env": ["PATH=/"]}, out)


def pause(ref: str = "localhost/pause:local") -> Path:
    """The sandbox image: busybox's sh waiting for SIGTERM, as the real pause binary does."""
    data = BUSYBOX.read_bytes()
    out = CACHE / f"pause-{_key(data)}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        _dir(t, "bin")
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        t.addfile(ti, io.BytesIO(data))
        for applet in ("sh", "sleep"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    return _archive(ref, buf.getvalue(), {
        "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"],
        "User": "65535:65535", "Env": ["PATH=/bin"]}, out)


def busybox(ref: str = "localhost/busybox:local") -> Path:
    """A shell with nslookup and wget, for probing the node's networking from inside a pod."""
    data = BUSYBOX.read_bytes()
    out = CACHE / f"busybox-{_key(data)}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in ("bin", "tmp", "etc"):
            _dir(t, d, 0o1777 if d == "tmp" else 0o755)
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        t.addfile(ti, io.BytesIO(data))
        for applet in ("sh", "sleep", "nslookup", "wget", "cat", "echo"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    return _archive(ref, buf.getvalue(), {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]}, out)


# `vllm serve MODEL FLAGS...` as the rendered engine container runs it, handed to llm-d-inference-sim: the flags the
# two share pass through, vLLM's GPU-only flags (and their values) are dropped, anything else passes through too, so
# a flag neither knows still fails the pod as it would fail vLLM. The model is never downloaded (a dummy tokenizer).
VLLM_ADAPTER = r"""#!/bin/sh
# Stand-in for vLLM's CLI in the real-pod tier: the engine needs a GPU, llm-d-inference-sim does not.
[ "$1" = serve ] || { echo "vllm stand-in: only 'vllm serve MODEL ...' is supported, got: $*" >&2; exit 2; }
shift
model="$1"; shift
n=$#
while [ "$n" -gt 0 ]; do
  a="$1"; shift; n=$((n - 1))
  case "$a" in
    --host|--tensor-parallel-size|--pipeline-parallel-size|--gpu-memory-utilization|--dtype|--shutdown-timeout|\
--otlp-traces-endpoint|--collect-detailed-traces|--download-dir|--load-format|--distributed-executor-backend|\
--max-lora-rank)
      shift; n=$((n - 1)) ;;
    --host=*|--tensor-parallel-size=*|--pipeline-parallel-size=*|--gpu-memory-utilization=*|--dtype=*|\
--shutdown-timeout=*|--enable-lora|--trust-remote-code|--disable-log-requests) ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec /llm-d-inference-sim --model "$model" --force-dummy-tokenizer "$@"
"""


def engine_sim(sim: Path, ref: str = "localhost/vllm-sim:v0.10.2") -> Path:
    """The engine stand-in: llm-d-inference-sim behind a `vllm` command that takes the rendered args, plus
    busybox's sh and sleep (the rendered preStop runs `sleep`)."""
    data, bb = sim.read_bytes(), BUSYBOX.read_bytes()
    out = CACHE / f"vllm-sim-{_key(data, bb, VLLM_ADAPTER.encode())}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in ("bin", "tmp", "etc", "usr", "usr/local", "usr/local/bin"):
            _dir(t, d, 0o1777 if d == "tmp" else 0o755)
        for name, blob in (("bin/busybox", bb), ("llm-d-inference-sim", data),
                           ("usr/local/bin/vllm", VLLM_ADAPTER.encode())):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(blob), 0o755
            t.addfile(ti, io.BytesIO(blob))
        for applet in ("sh", "sleep"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    return _archive(ref, buf.getvalue(), {"Entrypoint": ["/usr/local/bin/vllm"],
                                          "Env": ["PATH=/usr/local/bin:/bin"]}, out)
