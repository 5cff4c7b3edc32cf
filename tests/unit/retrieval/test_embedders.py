"""Embedders: the built-in MiniLM (real weights from the package, vendored tokenizer) and the OpenAI-compatible
client against a real local HTTP server, including its timeout and malformed answers."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from agentfleet.retrieval.embedders import EmbedderError, LocalMiniLM, OpenAIEmbedder, make_embedder


@pytest.fixture(scope="module")
def minilm():
    return LocalMiniLM(batch_size=4)


def test_minilm_is_normalised_and_semantic(minilm):
    v = minilm.embed(["How many vacation days do I get?", "Employees earn 25 days of paid vacation a year.",
                      "The release train leaves every second Tuesday.", "x " * 400])
    assert v.shape == (4, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # Order and batching do not change a text's vector.
    assert np.allclose(minilm.embed(["The release train leaves every second Tuesday."])[0], v[2], atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


class Handler(BaseHTTPRequestHandler):
    mode = "ok"

    def log_message(self, *args):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"data": [{"id": "embed-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Handler.mode == "slow":
            import time
            time.sleep(1.0)
        if Handler.mode == "bad":
            return self._send({"nope": 1})
        assert body["model"] == "embed-model"
        self._send({"data": [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]}
                             for i, t in reversed(list(enumerate(body["input"])))]})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    Handler.mode = "ok"
    srv.shutdown()


def test_openai_embedder(server):
    e = make_embedder(server, batch_size=2)
    assert (e.model, e.dimension) == ("embed-model", 3)
    v = e.embed(["a", "bbb", "cc"])
    assert v.shape == (3, 3) and np.allclose(np.linalg.norm(v, axis=1), 1)
    assert v[1][0] > v[2][0] > v[0][0]  # answers re-ordered by index


@pytest.mark.parametrize("mode", ["bad", "slow"])
def test_openai_embedder_errors(server, mode):
    e = OpenAIEmbedder(server, model="embed-model", dimension=3, timeout_s=0.3)
    Handler.mode = mode
    with pytest.raises(EmbedderError):
        e.embed(["a"])


def test_unknown_embedder():
    with pytest.raises(EmbedderError):
        make_embedder("bert-large")
