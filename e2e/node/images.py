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


def image(ref: str, stem: str, *, files: dict[str, bytes], links: tuple[str, ...] = (),
           dirs: tuple[str, ...] = ("tmp", "etc"), config: dict) -> Path:
    """A one-layer image: ``files`` (path -> content, mode 755), busybox applet ``links`` in bin/ and empty
    ``dirs`` (tmp is 1777); cached under a key of everything that goes in."""
    key = _key(ref.encode(), json.dumps(config, sort_keys=True).encode(), repr((sorted(links), dirs)).encode(),
               *(p.encode() + b"\0" + data for p, data in sorted(files.items())))
    out = CACHE / f"{stem}-{key}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"{stem}-*.tar*"):  # an older key of the same image
        stale.unlink(missing_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        parents = {str(Path(p).parent) for p in [*files, *(f"bin/{a}" for a in links)]} - {"."}
        for d in sorted(set(dirs) | {q for p in parents for q in _ancestors(p)}):
            _dir(t, d, 0o1777 if d == "tmp" else 0o755)
        for name, blob in files.items():
            ti = tarfile.TarInfo(name.lstrip("/"))
            ti.size, ti.mode = len(blob), 0o755
            t.addfile(ti, io.BytesIO(blob))
        for applet in links:
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    return _archive(ref, buf.getvalue(), config, out)


def _ancestors(path: str) -> list[str]:
    parts = Path(path.lstrip("/")).parts
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def single_binary(ref: str, binary: Path, path: str, *, user: str = "65532:65532") -> Path:
    """An image holding one static binary at ``path`` as its entrypoint, run as a non-root UID."""
    return image(ref, ref.replace("/", "_").replace(":", "_"), files={path.lstrip("/"): binary.read_bytes()},
                  config={"Entrypoint": [path], "User": user, "Env": ["PATH=/"]})


def pause(ref: str = "localhost/pause:local") -> Path:
    """The sandbox image: busybox's sh waiting for SIGTERM, as the real pause binary does."""
    return image(ref, "pause", files={"bin/busybox": BUSYBOX.read_bytes()}, links=("sh", "sleep"), dirs=(),
                  config={"Entrypoint": ["/bin/sh", "-c",
                                         "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"],
                          "User": "65535:65535", "Env": ["PATH=/bin"]})


def busybox(ref: str = "localhost/busybox:local") -> Path:
    """A shell with nslookup and wget, for probing the node's networking from inside a pod."""
    return image(ref, "busybox", files={"bin/busybox": BUSYBOX.read_bytes()},
                  links=("sh", "sleep", "nslookup", "wget", "cat", "echo", "timeout"),
                  config={"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]})


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
    return image(ref, "vllm-sim", files={"bin/busybox": BUSYBOX.read_bytes(), "llm-d-inference-sim": sim.read_bytes(),
                                          "usr/local/bin/vllm": VLLM_ADAPTER.encode()},
                  links=("sh", "sleep"), config={"Entrypoint": ["/usr/local/bin/vllm"],
                                                 "Env": ["PATH=/usr/local/bin:/bin"]})
